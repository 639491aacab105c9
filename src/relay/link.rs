//! Rooms whose peers are on different instances (`--cluster-routing pubsub`): who holds which
//! forwarded session, and what each [`Wire`] message does to it. Pure: messages leave through a
//! [`Courier`] (Redis pub/sub, in `edge::pubsub`), and nothing here waits.
//!
//! A client whose socket is here while its room lives on another instance (the room's *owner*) is
//! a **guest** here. On the owner it is a **remote member**: a hub client like any other, whose
//! queue a forwarder drains into `deliver` messages instead of into a socket. So who may send to
//! whom, PEER_JOINED, PEER_GONE and `4410` all come from the owner's hub unchanged, and the guest's
//! instance applies what it applies to every socket: HELLO, limits, the rate, the schemas.
//!
//! Pub/sub delivers at most once. Whenever a message may have been lost, every link it could
//! concern is closed ([`LINK_LOST`]) rather than left running with a gap.
//!
//! With resume, the owner mints a guest's token like any member's. A guest whose connection is
//! lost is *away* on the owner (`away`), and resumes through any instance (a `join` carrying its
//! token) or on the owner itself. The owner numbers every frame a guest receives, the guest's
//! instance's own answers included (`answer`), so a resume's `received` means the same on every
//! instance. A lost link leaves members away with a gap rather than gone.

use crate::relay::directory::Owner;
use crate::relay::hub::{Hub, Membership, PeerId, Resuming, RouteError};
use crate::relay::ids::{ClientId, JoinCode};
use crate::relay::link_wire::{self as wire, IdFrame, Ticket, Why, Wire};
use crate::relay::outbox::{self, Inbox, Outbox};
use crate::relay::outcome::{
    Closing, LINK_LOST, NOT_ADMITTED, ROOM_UNREACHABLE, Refusal, SERVER_GONE, SHUTTING_DOWN,
    TOO_SLOW,
};
use crate::relay::protocol;
use crate::relay::protocol::Greeting;
use crate::relay::resume::Token;
use serde_json::value::RawValue;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::oneshot;

/// The way out was full: the message was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Jammed;

/// Carries messages to other instances.
pub trait Courier: Send + Sync {
    /// Queues `text`, a [`Wire`] message holding `frames` relayed frames, for the instance `to`,
    /// without waiting. Called with the links' lock held: it must not call back into [`Links`].
    fn send(&self, to: &Arc<Owner>, text: String, frames: usize) -> Result<(), Jammed>;
}

/// Builds a guest's HELLO from what the owner says of it: its id, whether it waits to be let in,
/// and its resume token.
pub type Greet = Box<dyn FnOnce(&Greeting<'_>) -> String + Send>;

/// A guest's resume: the token its last HELLO carried, and the frames it received since.
pub type Resume = (Token, Option<u64>);

/// Links ended at once, and the remote members they left away, whose windows the caller times
/// ([`Hub::expire`]).
pub struct Severed {
    pub links: usize,
    pub away: Vec<(PeerId, u32)>,
}

/// How links end when the other side cannot say so itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severance {
    /// Messages may have been lost: guests get [`LINK_LOST`] (`1013`), so they may join again.
    Lost,
    /// As `Lost`, told by the other instance ([`Wire::Reset`]): joins it has not answered yet
    /// are left waiting for their answer, which comes after the reset.
    Reset,
    /// The other instance is gone (its lease lapsed), and the room's server with it: guests get
    /// PEER_GONE and `4410`, as when a server leaves.
    OwnerGone,
}

/// A message from another instance that is not one.
#[derive(Debug, thiserror::Error)]
#[error("unreadable message from another instance: {0}")]
pub struct Unreadable(String);

/// What a message received asks the caller to do.
#[derive(Debug)]
pub enum Received {
    /// Nothing more; `frames` relayed frames were delivered.
    Delivered { frames: usize },
    /// A remote member joined a room here: drain its queue with [`Links::forward`] until its
    /// queue closes ([`Links::member_closed`]) or `dropped` resolves.
    Forward(Forwarder),
    /// A remote member's connection was lost and it is away: time its window ([`Hub::expire`]).
    Away(PeerId, u32),
}

/// A remote member's queue, for its forwarder.
#[derive(Debug)]
pub struct Forwarder {
    /// The member's session.
    pub ticket: Ticket,
    /// What the hub queued for it.
    pub inbox: Inbox,
    /// Resolves once the member is gone from the links, so its forwarder can stop.
    pub dropped: oneshot::Receiver<()>,
}

/// Every forwarded session of this instance; cheap to clone.
#[derive(Clone)]
pub struct Links(Arc<Inner>);

struct Inner {
    table: Mutex<Table>,
    courier: Arc<dyn Courier>,
    hub: Hub,
    /// This process's [`Owner::value`], named in joins so that owners can answer.
    me: String,
    /// A remote member's send queue, as `--send-queue-bytes` bounds a socket's.
    queue_bytes: usize,
    /// Most remote members this instance holds (`--max-connections`).
    max_members: usize,
    /// Set when a message could not be sent: the other side may hold a link this side ended
    /// (a member forwarding into nothing), so this instance owes a reset ([`Links::take_jammed`]).
    jammed: AtomicBool,
}

#[derive(Default)]
struct Table {
    /// Sessions whose socket is here and whose room is elsewhere.
    guests: HashMap<Ticket, GuestEntry>,
    /// Members of rooms here whose socket is elsewhere.
    members: HashMap<Ticket, MemberEntry>,
    /// Set by [`Links::shut_down`]: guests greeted later are closed at once, as the hub does.
    shutting_down: bool,
}

struct GuestEntry {
    owner: Arc<Owner>,
    code: JoinCode,
    outbox: Outbox,
    /// Its HELLO carried a token: a lost link leaves its member away on the owner.
    resumable: bool,
    /// Until the owner answers the join.
    pending: Option<Pending>,
}

struct Pending {
    greet: Greet,
    /// The guest's id, and whether it may resume.
    answer: oneshot::Sender<Result<(ClientId, bool), Refusal>>,
}

struct MemberEntry {
    guest: Arc<Owner>,
    code: JoinCode,
    membership: Membership,
    /// The queue the hub fills, for the relay's own answers to the client's frames.
    outbox: Outbox,
    /// Dropped with the entry, which tells its forwarder to stop.
    _forwarding: oneshot::Sender<()>,
}

impl Links {
    /// The links of the process `me`, joining rooms in `hub` for remote members.
    pub fn new(
        hub: Hub,
        me: &Owner,
        courier: Arc<dyn Courier>,
        queue_bytes: usize,
        max_members: usize,
    ) -> Links {
        Links(Arc::new(Inner {
            table: Mutex::default(),
            courier,
            hub,
            me: me.value(),
            queue_bytes,
            max_members,
            jammed: AtomicBool::new(false),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // Every operation leaves the maps consistent before it can panic, so poison is ignored.
        self.0
            .table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn send(&self, to: &Arc<Owner>, message: &Wire<'_>) -> Result<(), Jammed> {
        self.courier_send(to, wire::encode(message), 0)
    }

    /// Sends through the courier, noting a jam (see [`Links::take_jammed`]).
    fn courier_send(&self, to: &Arc<Owner>, text: String, frames: usize) -> Result<(), Jammed> {
        let sent = self.0.courier.send(to, text, frames);
        if sent.is_err() {
            self.0.jammed.store(true, Ordering::Relaxed);
        }
        sent
    }

    /// Whether a message could not be sent since the last call: the caller then ends every
    /// link and resets the others, as for any loss.
    pub fn take_jammed(&self) -> bool {
        self.0.jammed.swap(false, Ordering::Relaxed)
    }

    /// Asks `owner` to add a client to its room `code`, or with `resume` to resume one there.
    /// Frames for the client go into `outbox`, the HELLO built by `greet` first; the answer
    /// comes through the returned [`PendingJoin`].
    pub fn join(
        &self,
        code: JoinCode,
        owner: Arc<Owner>,
        info: Option<&str>,
        resume: Option<Resume>,
        outbox: Outbox,
        greet: Greet,
    ) -> Result<PendingJoin, Refusal> {
        let (answer, answered) = oneshot::channel();
        let mut table = self.lock();
        let ticket = std::iter::repeat_with(rand::random::<Ticket>)
            .take(crate::relay::hub::MAX_DRAWS)
            .find(|ticket| {
                !table.guests.contains_key(ticket) && !table.members.contains_key(ticket)
            })
            .ok_or(ROOM_UNREACHABLE)?;
        let join = Wire::Join {
            ticket,
            code: code.as_str().into(),
            guest: self.0.me.as_str().into(),
            info: info.map(Into::into),
            resume: resume.map(|(token, _)| token),
            received: resume.and_then(|(_, received)| received),
        };
        self.send(&owner, &join)
            .map_err(|Jammed| ROOM_UNREACHABLE)?;
        let pending = Some(Pending { greet, answer });
        let entry = GuestEntry {
            owner: owner.clone(),
            code,
            outbox,
            resumable: false,
            pending,
        };
        table.guests.insert(ticket, entry);
        Ok(PendingJoin {
            links: self.clone(),
            ticket,
            code,
            owner,
            answered,
            settled: false,
        })
    }

    /// Tells `owner` that the room with `code` was taken over here by its server.
    pub fn taken(&self, owner: &Arc<Owner>, code: JoinCode) {
        let _ = self.send(
            owner,
            &Wire::Taken {
                code: code.as_str().into(),
            },
        );
    }

    /// Forgets a guest whose session ended and tells its owner.
    fn forget_guest(&self, ticket: Ticket) {
        let mut table = self.lock();
        if let Some(entry) = table.guests.remove(&ticket) {
            let _ = self.send(&entry.owner, &Wire::Leave { ticket });
        }
    }

    /// Acts on one message from another instance.
    pub fn receive(&self, text: &str) -> Result<Received, Unreadable> {
        let message = wire::decode(text).map_err(|error| Unreadable(error.to_string()))?;
        let delivered = |frames| Ok(Received::Delivered { frames });
        match message {
            Wire::Join {
                ticket,
                code,
                guest,
                info,
                resume,
                received,
            } => {
                let resume = resume.map(|token| (token, received));
                self.on_join(ticket, &code, &guest, info.as_deref(), resume)
            }
            Wire::Refused { ticket, why } => {
                self.on_refused(ticket, why);
                delivered(0)
            }
            Wire::Deliver { ticket, frames } => self.on_deliver(ticket, &frames).map(delivered)?,
            Wire::Closed {
                ticket,
                code,
                reason,
            } => {
                self.on_closed(ticket, wire::closing(code, &reason));
                delivered(0)
            }
            Wire::Leave { ticket } => {
                let member = self.lock().members.remove(&ticket);
                drop(member);
                delivered(0)
            }
            Wire::Away { ticket } => {
                let member = self.lock().members.remove(&ticket);
                let away = member.and_then(|mut member| {
                    let generation = member.membership.step_away()?;
                    Some((member.membership.id(), generation))
                });
                Ok(
                    away.map_or(Received::Delivered { frames: 0 }, |(id, generation)| {
                        Received::Away(id, generation)
                    }),
                )
            }
            Wire::Answer { ticket, frames } => {
                let outbox = self.lock().members.get(&ticket).map(|m| m.outbox.clone());
                if let Some(outbox) = outbox
                    && !frames
                        .iter()
                        .all(|frame| outbox.push(frame.get().to_owned()).is_ok())
                {
                    outbox.close(TOO_SLOW);
                }
                delivered(0)
            }
            Wire::Taken { code } => {
                let code = JoinCode::parse(&code).ok_or_else(|| Unreadable(code.into_owned()))?;
                self.0.hub.give_up(code, LINK_LOST.closing);
                delivered(0)
            }
            Wire::Reset { owner } => {
                let owner = Owner::parse(&owner).ok_or_else(|| Unreadable(owner.into_owned()))?;
                if owner.value() != self.0.me {
                    self.sever(&owner, Severance::Reset);
                }
                delivered(0)
            }
        }
    }

    fn on_join(
        &self,
        ticket: Ticket,
        code: &str,
        guest: &str,
        info: Option<&str>,
        resume: Option<Resume>,
    ) -> Result<Received, Unreadable> {
        let (Some(code), Some(guest)) = (JoinCode::parse(code), Owner::parse(guest)) else {
            return Err(Unreadable(format!("a join to {code:?} from {guest:?}")));
        };
        let guest = Arc::new(guest);
        let refuse = |why| {
            let _ = self.send(&guest, &Wire::Refused { ticket, why });
            Ok(Received::Delivered { frames: 0 })
        };
        {
            let table = self.lock();
            let taken = table.members.contains_key(&ticket) || table.guests.contains_key(&ticket);
            if taken || table.members.len() >= self.0.max_members {
                return refuse(Why::Unavailable);
            }
        }
        let hub = &self.0.hub;
        let id_frame = |greeting: &Greeting<'_>| wire::id_frame(greeting);
        let seated = match resume {
            Some((token, received)) => {
                let resuming = Resuming::ClientOf(code);
                match hub.resume(token, resuming, received, self.0.queue_bytes, id_frame) {
                    Ok(seated) => seated,
                    // The room moved on (taken over elsewhere): the client may find it there.
                    Err(_) if !hub.holds(&code) => return refuse(Why::Unavailable),
                    Err(_) => return refuse(Why::ResumeFailed),
                }
            }
            None => {
                let (outbox, inbox) = hub.queue(self.0.queue_bytes);
                match hub.join(code, outbox.clone(), info, id_frame) {
                    Ok((membership, _)) => (membership, outbox, inbox),
                    Err(error) => return refuse(error.into()),
                }
            }
        };
        let (membership, outbox, inbox) = seated;
        let (forwarding, dropped) = oneshot::channel();
        let entry = MemberEntry {
            guest,
            code,
            membership,
            outbox,
            _forwarding: forwarding,
        };
        self.lock().members.insert(ticket, entry);
        Ok(Received::Forward(Forwarder {
            ticket,
            inbox,
            dropped,
        }))
    }

    fn on_refused(&self, ticket: Ticket, why: Why) {
        let mut table = self.lock();
        let pending = table
            .guests
            .get_mut(&ticket)
            .and_then(|entry| entry.pending.take());
        if let Some(pending) = pending {
            table.guests.remove(&ticket);
            let _ = pending.answer.send(Err(why.refusal()));
        }
    }

    fn on_closed(&self, ticket: Ticket, closing: Closing) {
        let Some(entry) = self.lock().guests.remove(&ticket) else {
            return;
        };
        match entry.pending {
            Some(pending) => {
                let _ = pending.answer.send(Err(ROOM_UNREACHABLE));
            }
            None => entry.outbox.close(closing),
        }
    }

    /// Frames for a guest go into its queue; frames from a guest go through the hub as its own.
    fn on_deliver(&self, ticket: Ticket, frames: &[&RawValue]) -> Result<usize, Unreadable> {
        let mut table = self.lock();
        let shutting_down = table.shutting_down;
        if let Some(entry) = table.guests.get_mut(&ticket) {
            let mut frames = frames.iter();
            let mut fits = true;
            if let Some(pending) = entry.pending.take() {
                let frame = frames
                    .next()
                    .and_then(|frame| serde_json::from_str::<IdFrame<'_>>(frame.get()).ok());
                let id = frame.as_ref().and_then(|frame| ClientId::parse(frame.id));
                let (Some(id), Some(frame)) = (id, frame) else {
                    let _ = pending.answer.send(Err(ROOM_UNREACHABLE));
                    let entry = table.guests.remove(&ticket);
                    if let Some(entry) = entry {
                        let _ = self.send(&entry.owner, &Wire::Leave { ticket });
                    }
                    return Err(Unreadable("a join accepted without a client id".into()));
                };
                fits = entry
                    .outbox
                    .push((pending.greet)(&frame.greeting()))
                    .is_ok();
                if shutting_down {
                    entry.outbox.close(SHUTTING_DOWN);
                }
                entry.resumable = frame.resume.is_some();
                if pending.answer.send(Ok((id, entry.resumable))).is_err() {
                    // The session gave up waiting; its owner must forget the member too.
                    fits = false;
                }
            }
            let mut delivered = 0;
            for frame in frames.by_ref() {
                if !fits {
                    break;
                }
                fits = entry.outbox.push(frame.get().to_owned()).is_ok();
                delivered += usize::from(fits);
            }
            if !fits {
                entry.outbox.close(TOO_SLOW);
                if let Some(entry) = table.guests.remove(&ticket) {
                    let _ = self.send(&entry.owner, &Wire::Leave { ticket });
                }
            }
            return Ok(delivered);
        }
        let Some(member) = table.members.get(&ticket) else {
            // Its session ended here a moment ago; the other side hears or heard of it.
            return Ok(0);
        };
        let (from, code, outbox) = (member.membership.id(), member.code, member.outbox.clone());
        drop(table);
        let mut routed = 0;
        for frame in frames {
            match self
                .0
                .hub
                .route(from, code.as_str(), frame.get().to_owned())
            {
                Ok(()) => routed += 1,
                // The client hears it as on one instance; other misses are races with a leave.
                Err(RouteError::NotAdmitted) => {
                    let _ = outbox.push(protocol::notice(NOT_ADMITTED));
                }
                Err(_) => {}
            }
        }
        Ok(routed)
    }

    /// Sends what the hub queued for the remote member `ticket` to its guest's instance. When the
    /// way out is full the member is dropped: its server hears PEER_GONE, and the caller owes the
    /// guest's instance a reset, since it cannot be told.
    pub fn forward(&self, ticket: Ticket, frames: &VecDeque<String>) -> Result<(), Jammed> {
        let mut table = self.lock();
        let Some(member) = table.members.get(&ticket) else {
            return Ok(());
        };
        let text = wire::deliver(ticket, frames.iter().map(String::as_str));
        let sent = self.0.courier.send(&member.guest, text, frames.len());
        if sent.is_err() {
            let member = table.members.remove(&ticket);
            drop(table);
            drop(member);
        }
        sent
    }

    /// The hub closed the remote member `ticket` with `closing`: its guest's instance closes the
    /// client's socket the same way, after the frames forwarded before.
    pub fn member_closed(&self, ticket: Ticket, closing: Closing) {
        let member = self.lock().members.remove(&ticket);
        if let Some(member) = member {
            let closed = Wire::Closed {
                ticket,
                code: closing.code,
                reason: closing.reason.into(),
            };
            let _ = self.send(&member.guest, &closed);
        }
    }

    /// Ends every link with `owner`, on either side.
    pub fn sever(&self, owner: &Owner, how: Severance) -> Severed {
        self.sever_where(|other| other == owner, how)
    }

    /// Ends every link: this instance may have lost messages of any of them.
    pub fn sever_all(&self) -> Severed {
        self.sever_where(|_| true, Severance::Lost)
    }

    /// Guests are closed; a resumable one without the ERROR frame before its close, so that
    /// the frames it counts are the owner's alone. Remote members step away: their clients
    /// may resume, and what was forwarded but lost is replayed then.
    fn sever_where(&self, linked: impl Fn(&Owner) -> bool, how: Severance) -> Severed {
        let (guests, members): (Vec<_>, Vec<_>) = {
            let mut table = self.lock();
            // Joins a resetting owner has not answered yet are answered after its reset, which it
            // published first: they stay.
            let keep = |entry: &GuestEntry| how == Severance::Reset && entry.pending.is_some();
            let guests = (table.guests).extract_if(|_, entry| linked(&entry.owner) && !keep(entry));
            let guests = guests.map(|(_, entry)| entry).collect();
            let members = table.members.extract_if(|_, entry| linked(&entry.guest));
            (guests, members.map(|(_, entry)| entry).collect())
        };
        let severed = guests.len() + members.len();
        for guest in guests {
            match (guest.pending, how) {
                (Some(pending), _) => {
                    let _ = pending.answer.send(Err(ROOM_UNREACHABLE));
                }
                (None, Severance::Lost | Severance::Reset) => {
                    if !guest.resumable {
                        let _ = guest.outbox.push(protocol::notice(LINK_LOST.notice));
                    }
                    guest.outbox.close(LINK_LOST.closing);
                }
                // The room may come back: its server may take it over on another instance.
                (None, Severance::OwnerGone) if guest.resumable => {
                    guest.outbox.close(LINK_LOST.closing);
                }
                (None, Severance::OwnerGone) => {
                    let _ = guest.outbox.push(protocol::peer_gone(guest.code.as_str()));
                    guest.outbox.close(SERVER_GONE);
                }
            }
        }
        let away = members
            .into_iter()
            .filter_map(|mut member| {
                let generation = member.membership.step_away_with_gap()?;
                Some((member.membership.id(), generation))
            })
            .collect();
        Severed {
            links: severed,
            away,
        }
    }

    /// Every other instance this one has a link with, for checking their leases.
    pub fn peers(&self) -> Vec<Arc<Owner>> {
        let table = self.lock();
        let guests = table.guests.values().map(|entry| &entry.owner);
        let members = table.members.values().map(|entry| &entry.guest);
        let peers: HashSet<&Arc<Owner>> = guests.chain(members).collect();
        peers.into_iter().cloned().collect()
    }

    /// Closes every guest with `1001`, now and once greeted; remote members are the hub's.
    pub fn shut_down(&self) {
        let mut table = self.lock();
        table.shutting_down = true;
        for entry in table
            .guests
            .values()
            .filter(|entry| entry.pending.is_none())
        {
            entry.outbox.close(SHUTTING_DOWN);
        }
    }

    /// Numbers of guests here and remote members here.
    pub fn counts(&self) -> (usize, usize) {
        let table = self.lock();
        (table.guests.len(), table.members.len())
    }
}

/// A join sent to the room's owner, not answered yet. Dropped unanswered (the caller gave up
/// waiting), it tells the owner to forget the client.
pub struct PendingJoin {
    links: Links,
    ticket: Ticket,
    code: JoinCode,
    owner: Arc<Owner>,
    answered: oneshot::Receiver<Result<(ClientId, bool), Refusal>>,
    settled: bool,
}

impl PendingJoin {
    /// Waits for the owner's answer: the client's seat, or the refusal it gets.
    pub async fn accepted(mut self) -> Result<Guest, Refusal> {
        let answer = (&mut self.answered).await.unwrap_or(Err(ROOM_UNREACHABLE));
        self.settled = true;
        let (id, resumable) = answer?;
        Ok(Guest {
            links: self.links.clone(),
            ticket: self.ticket,
            id,
            code: self.code,
            owner: self.owner.clone(),
            resumable,
            left: false,
        })
    }
}

impl Drop for PendingJoin {
    fn drop(&mut self) {
        if !self.settled {
            self.links.forget_guest(self.ticket);
        }
    }
}

/// A client here whose room is on another instance. Dropping it ends its link; the owner tells
/// the server with PEER_GONE.
pub struct Guest {
    links: Links,
    ticket: Ticket,
    id: ClientId,
    code: JoinCode,
    owner: Arc<Owner>,
    /// Its HELLO carried a token: a lost connection leaves it away on the owner.
    resumable: bool,
    left: bool,
}

impl Guest {
    /// Sends `frame` (from this client, `from` already set) to its server, if `to` names it.
    /// When the way out is full, the client is closed with [`LINK_LOST`] instead.
    fn route(&self, to: &str, frame: String) -> Result<(), RouteError> {
        if JoinCode::parse(to) != Some(self.code) {
            return Err(RouteError::UnknownPeer);
        }
        let text = wire::deliver(self.ticket, std::iter::once(frame.as_str()));
        if self.links.courier_send(&self.owner, text, 1).is_err() {
            self.cut_off();
        }
        Ok(())
    }

    /// The way out to the owner is full: closes the client with [`LINK_LOST`] (the ERROR
    /// before it only if it cannot resume, as on a severance).
    fn cut_off(&self) {
        let entry = self.links.lock().guests.remove(&self.ticket);
        if let Some(entry) = entry {
            if !entry.resumable {
                let _ = entry.outbox.push(protocol::notice(LINK_LOST.notice));
            }
            entry.outbox.close(LINK_LOST.closing);
        }
    }

    fn leave(&mut self) {
        if !std::mem::replace(&mut self.left, true) {
            self.links.forget_guest(self.ticket);
        }
    }

    /// The connection was lost: a resumable guest's owner keeps its member away.
    fn step_away(&mut self) {
        if !self.resumable || std::mem::replace(&mut self.left, true) {
            return self.leave();
        }
        let entry = self.links.lock().guests.remove(&self.ticket);
        if let Some(entry) = entry {
            let _ = self.links.send(
                &entry.owner,
                &Wire::Away {
                    ticket: self.ticket,
                },
            );
        }
    }

    /// Sends the relay's own answer to this client by way of its owner, which queues it in order
    /// with the room's frames; when the way out is full, the client is closed with
    /// [`LINK_LOST`] instead.
    fn answer(&self, frame: &str) {
        let text = wire::answer(self.ticket, frame);
        if self.links.courier_send(&self.owner, text, 0).is_err() {
            self.cut_off();
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.leave();
    }
}

/// Where a session's peer sits in its room.
pub enum Seat {
    /// In this instance's hub.
    Member(Membership),
    /// In a room on another instance; boxed, so a seat here costs no more than a membership.
    Guest(Box<Guest>),
}

impl Seat {
    /// The peer's id.
    pub fn id(&self) -> PeerId {
        match self {
            Seat::Member(membership) => membership.id(),
            Seat::Guest(guest) => PeerId::Client(guest.id),
        }
    }

    /// Delivers `frame` from this peer to the peer named by `to`, if it may reach it.
    pub fn route(&self, hub: &Hub, to: &str, frame: String) -> Result<(), RouteError> {
        match self {
            Seat::Member(membership) => hub.route(membership.id(), to, frame),
            Seat::Guest(guest) => guest.route(to, frame),
        }
    }

    /// Leaves the room now; its other members hear PEER_GONE.
    pub fn leave(&mut self) {
        match self {
            Seat::Member(membership) => membership.leave(),
            Seat::Guest(guest) => guest.leave(),
        }
    }

    /// The connection was lost: away if the peer may resume (see [`Membership::step_away`]), else
    /// gone. A guest's away time is its owner's to keep and to end: it returns `None` here.
    pub fn step_away(&mut self) -> Option<u32> {
        match self {
            Seat::Member(membership) => membership.step_away(),
            Seat::Guest(guest) => {
                guest.step_away();
                None
            }
        }
    }

    /// Queues the relay's own answer to this peer (ERROR, ICE_SERVERS) in order with what its
    /// room sends it: into `outbox`, or through the owner for a guest that may resume, so that
    /// the owner numbers every frame it gets (see [`Wire::Answer`]).
    pub fn answer(&self, outbox: &Outbox, frame: String) -> Result<(), outbox::QueueFull> {
        match self {
            Seat::Guest(guest) if guest.resumable => {
                guest.answer(&frame);
                Ok(())
            }
            _ => outbox.push(frame),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::hub::RoomRules;
    use crate::relay::outcome::{SERVER_FULL, UNKNOWN_SERVER};
    use std::time::Duration;

    const ROOMY: usize = 1 << 20;

    /// Collects what one instance sends, and refuses it while jammed.
    #[derive(Default)]
    struct Mailbag {
        sent: Mutex<Vec<(Owner, String)>>,
        jammed: std::sync::atomic::AtomicBool,
    }

    impl Courier for Mailbag {
        fn send(&self, to: &Arc<Owner>, text: String, _frames: usize) -> Result<(), Jammed> {
            if self.jammed.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(Jammed);
            }
            self.sent
                .lock()
                .expect("not poisoned")
                .push(((**to).clone(), text));
            Ok(())
        }
    }

    /// One instance: its hub, its links and what it sent.
    struct Instance {
        owner: Owner,
        hub: Hub,
        links: Links,
        mail: Arc<Mailbag>,
        forwarders: Vec<Forwarder>,
    }

    fn instance(name: &str) -> Instance {
        let owner = Owner {
            instance: name.into(),
            boot: format!("{name}-boot"),
        };
        let hub = Hub::new(6, 1);
        let mail = Arc::new(Mailbag::default());
        let links = Links::new(hub.clone(), &owner, mail.clone(), ROOMY, 8);
        Instance {
            owner,
            hub,
            links,
            mail,
            forwarders: Vec::new(),
        }
    }

    /// Delivers everything either instance sent, and runs their forwarders, until all is quiet.
    async fn settle(a: &mut Instance, b: &mut Instance) {
        while pass(a, b).await | pass(b, a).await {}
    }

    /// Delivers what `from` sent to `to` and runs `from`'s forwarders once; whether anything moved.
    async fn pass(from: &mut Instance, to: &mut Instance) -> bool {
        let mut moved = false;
        let sent = std::mem::take(&mut *from.mail.sent.lock().expect("not poisoned"));
        for (owner, text) in sent {
            assert_eq!(owner, to.owner, "sent to the right instance");
            moved = true;
            if let Ok(Received::Forward(forwarder)) = to.links.receive(&text) {
                to.forwarders.push(forwarder);
            }
        }
        for forwarder in &from.forwarders {
            let next = tokio::time::timeout(Duration::ZERO, forwarder.inbox.next_batch());
            match next.await {
                Ok(Ok(frames)) => {
                    moved = true;
                    let _ = from.links.forward(forwarder.ticket, &frames);
                }
                Ok(Err(closing)) => from.links.member_closed(forwarder.ticket, closing),
                Err(_) => {}
            }
        }
        moved
    }

    async fn drain(inbox: &Inbox) -> (Vec<String>, Option<Closing>) {
        let mut frames = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_millis(10), inbox.next_batch()).await {
                Ok(Ok(batch)) => frames.extend(batch),
                Ok(Err(closing)) => return (frames, Some(closing)),
                Err(_) => return (frames, None),
            }
        }
    }

    fn hello(id: &str) -> String {
        format!("HELLO {id}")
    }

    /// A server on `a`, and the start of a join to it from `b`.
    fn server_and_join(
        a: &Instance,
        b: &Instance,
    ) -> (Membership, Inbox, JoinCode, PendingJoin, Inbox) {
        let (outbox, server_inbox) = outbox::bounded(ROOMY);
        let server = a
            .hub
            .register_server(outbox, RoomRules::default(), |g| hello(g.id))
            .expect("a code");
        let PeerId::Server(code) = server.id() else {
            panic!("a server has a code")
        };
        let (outbox, guest_inbox) = outbox::bounded(ROOMY);
        let owner = Arc::new(a.owner.clone());
        let pending = b
            .links
            .join(code, owner, None, None, outbox, Box::new(|g| hello(g.id)))
            .expect("sent");
        (server, server_inbox, code, pending, guest_inbox)
    }

    #[tokio::test]
    async fn a_guest_gets_its_hello_first_and_relays_both_ways_through_its_owners_hub() {
        let (mut a, mut b) = (instance("a"), instance("b"));
        let (server, server_inbox, code, pending, guest_inbox) = server_and_join(&a, &b);
        settle(&mut a, &mut b).await;
        let guest = Seat::Guest(Box::new(pending.accepted().await.expect("accepted")));
        let id = guest.id();

        // Relayed frames are JSON, as the relay writes them.
        let (up, down) = (r#"{"n":"up"}"#.to_owned(), r#"{"n":"down"}"#.to_owned());
        guest
            .route(&b.hub, &code.as_str().to_lowercase(), up.clone())
            .expect("to its server");
        a.hub
            .route(server.id(), id.as_str(), down.clone())
            .expect("to its client");
        settle(&mut a, &mut b).await;

        assert_eq!(
            drain(&server_inbox).await.0,
            [hello(code.as_str()), protocol::peer_joined(id.as_str()), up]
        );
        assert_eq!(drain(&guest_inbox).await.0, [hello(id.as_str()), down]);
        assert_eq!((a.links.counts(), b.links.counts()), ((0, 1), (1, 0)));
    }

    #[tokio::test]
    async fn a_guest_may_reach_only_its_own_server() {
        let (mut a, mut b) = (instance("a"), instance("b"));
        let (_server, _inbox, _code, pending, _guest_inbox) = server_and_join(&a, &b);
        settle(&mut a, &mut b).await;
        let guest = Seat::Guest(Box::new(pending.accepted().await.expect("accepted")));

        assert_eq!(
            guest.route(&b.hub, "ZZZZZZ", "x".into()),
            Err(RouteError::UnknownPeer)
        );
        assert_eq!(
            guest.route(&b.hub, guest.id().as_str(), "x".into()),
            Err(RouteError::UnknownPeer)
        );
    }

    #[tokio::test]
    async fn the_server_leaving_sends_peer_gone_then_4410_to_its_guests() {
        let (mut a, mut b) = (instance("a"), instance("b"));
        let (server, _server_inbox, code, pending, guest_inbox) = server_and_join(&a, &b);
        settle(&mut a, &mut b).await;
        let _guest = pending.accepted().await.expect("accepted");
        drain(&guest_inbox).await;

        drop(server);
        settle(&mut a, &mut b).await;

        assert_eq!(
            drain(&guest_inbox).await,
            (vec![protocol::peer_gone(code.as_str())], Some(SERVER_GONE))
        );
        assert_eq!((a.links.counts(), b.links.counts()), ((0, 0), (0, 0)));
    }

    #[tokio::test]
    async fn a_guest_leaving_is_peer_gone_for_its_server() {
        let (mut a, mut b) = (instance("a"), instance("b"));
        let (_server, server_inbox, _code, pending, _guest_inbox) = server_and_join(&a, &b);
        settle(&mut a, &mut b).await;
        let guest = pending.accepted().await.expect("accepted");
        let id = guest.id;
        drain(&server_inbox).await;

        drop(guest);
        settle(&mut a, &mut b).await;

        assert_eq!(
            drain(&server_inbox).await.0,
            [protocol::peer_gone(id.as_str())]
        );
        assert_eq!(a.hub.counts(), (1, 0));
    }

    #[tokio::test]
    async fn joins_are_refused_as_on_one_instance() {
        let (mut a, mut b) = (instance("a"), instance("b"));
        let (_server, _inbox, code, first, _first_inbox) = server_and_join(&a, &b);
        let owner = Arc::new(a.owner.clone());
        let second = b.links.join(
            code,
            owner.clone(),
            None,
            None,
            outbox::bounded(ROOMY).0,
            Box::new(|g| hello(g.id)),
        );
        let nowhere = JoinCode::parse("ZZZZZZ").expect("a code");
        let third = b.links.join(
            nowhere,
            owner,
            None,
            None,
            outbox::bounded(ROOMY).0,
            Box::new(|g| hello(g.id)),
        );
        settle(&mut a, &mut b).await;

        assert!(first.accepted().await.is_ok());
        assert_eq!(
            second.expect("sent").accepted().await.err(),
            Some(SERVER_FULL)
        );
        assert_eq!(
            third.expect("sent").accepted().await.err(),
            Some(UNKNOWN_SERVER)
        );
    }

    #[tokio::test]
    async fn a_join_given_up_on_is_forgotten_by_the_owner_too() {
        let (mut a, mut b) = (instance("a"), instance("b"));
        let (_server, server_inbox, _code, pending, _guest_inbox) = server_and_join(&a, &b);

        drop(pending);
        settle(&mut a, &mut b).await;

        let (frames, _) = drain(&server_inbox).await;
        assert_eq!(frames.len(), 3, "HELLO, PEER_JOINED, PEER_GONE: {frames:?}");
        assert!(frames[2].contains("PEER_GONE"));
        assert_eq!((a.links.counts(), b.links.counts()), ((0, 0), (0, 0)));
    }

    #[tokio::test]
    async fn a_full_way_out_closes_the_guest_with_link_lost() {
        let (mut a, mut b) = (instance("a"), instance("b"));
        let (_server, _server_inbox, code, pending, guest_inbox) = server_and_join(&a, &b);
        settle(&mut a, &mut b).await;
        let guest = Seat::Guest(Box::new(pending.accepted().await.expect("accepted")));
        drain(&guest_inbox).await;

        b.mail
            .jammed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        guest
            .route(&b.hub, code.as_str(), "lost".into())
            .expect("its server");

        assert_eq!(
            drain(&guest_inbox).await,
            (
                vec![protocol::notice(LINK_LOST.notice)],
                Some(LINK_LOST.closing)
            )
        );
    }

    #[tokio::test]
    async fn severed_links_close_guests_as_lost_or_as_gone_and_drop_remote_members() {
        for (how, expected) in [
            (
                Severance::Lost,
                (protocol::notice(LINK_LOST.notice), LINK_LOST.closing),
            ),
            (
                Severance::Reset,
                (protocol::notice(LINK_LOST.notice), LINK_LOST.closing),
            ),
            (Severance::OwnerGone, (String::new(), SERVER_GONE)),
        ] {
            let (mut a, mut b) = (instance("a"), instance("b"));
            let (_server, server_inbox, code, pending, guest_inbox) = server_and_join(&a, &b);
            settle(&mut a, &mut b).await;
            let guest = pending.accepted().await.expect("accepted");
            let id = guest.id;
            drain(&guest_inbox).await;
            drain(&server_inbox).await;

            assert_eq!(b.links.sever(&a.owner, how).links, 1);
            assert_eq!(a.links.sever(&b.owner, how).links, 1);

            let notice = match how {
                Severance::Lost | Severance::Reset => expected.0.clone(),
                Severance::OwnerGone => protocol::peer_gone(code.as_str()),
            };
            assert_eq!(drain(&guest_inbox).await, (vec![notice], Some(expected.1)));
            assert_eq!(
                drain(&server_inbox).await.0,
                [protocol::peer_gone(id.as_str())]
            );
        }
    }

    #[tokio::test]
    async fn a_leave_that_cannot_be_sent_is_owed_as_a_reset() {
        let (mut a, mut b) = (instance("a"), instance("b"));
        let (_server, _inbox, _code, pending, _guest_inbox) = server_and_join(&a, &b);
        settle(&mut a, &mut b).await;
        let guest = pending.accepted().await.expect("accepted");
        assert!(!b.links.take_jammed());

        b.mail
            .jammed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        drop(guest);

        assert!(b.links.take_jammed(), "the owner still holds the member");
        assert!(!b.links.take_jammed(), "owed once");
    }

    #[tokio::test]
    async fn a_reset_leaves_a_join_the_owner_has_not_answered_waiting_for_its_answer() {
        let (mut a, mut b) = (instance("a"), instance("b"));
        let (_server, _server_inbox, _code, pending, _guest_inbox) = server_and_join(&a, &b);

        assert_eq!(b.links.sever(&a.owner, Severance::Reset).links, 0);
        settle(&mut a, &mut b).await;

        assert!(pending.accepted().await.is_ok(), "answered after the reset");
    }

    #[tokio::test]
    async fn a_reset_from_the_owner_severs_its_links_only() {
        let (mut a, mut b) = (instance("a"), instance("b"));
        let (_server, _server_inbox, _code, pending, guest_inbox) = server_and_join(&a, &b);
        settle(&mut a, &mut b).await;
        let _guest = pending.accepted().await.expect("accepted");
        drain(&guest_inbox).await;

        let from_c = wire::encode(&Wire::Reset {
            owner: "c c-boot".into(),
        });
        b.links.receive(&from_c).expect("readable");
        assert_eq!(b.links.counts(), (1, 0));
        let from_a = wire::encode(&Wire::Reset {
            owner: a.owner.value().into(),
        });
        b.links.receive(&from_a).expect("readable");

        assert_eq!(drain(&guest_inbox).await.1, Some(LINK_LOST.closing));
        assert_eq!(b.links.counts(), (0, 0));
    }

    #[tokio::test]
    async fn shutting_down_closes_guests_with_going_away() {
        let (mut a, mut b) = (instance("a"), instance("b"));
        let (_server, _server_inbox, _code, pending, guest_inbox) = server_and_join(&a, &b);
        settle(&mut a, &mut b).await;
        let _guest = pending.accepted().await.expect("accepted");

        b.links.shut_down();

        assert_eq!(drain(&guest_inbox).await.1, Some(SHUTTING_DOWN));
    }

    #[test]
    fn peers_are_listed_once_each() {
        let (a, b) = (instance("a"), instance("b"));
        let (_s, _i, code, _pending, _g) = server_and_join(&a, &b);
        let owner = Arc::new(a.owner.clone());
        let _again = b.links.join(
            code,
            owner,
            None,
            None,
            outbox::bounded(ROOMY).0,
            Box::new(|g| hello(g.id)),
        );

        assert_eq!(b.links.peers(), [Arc::new(a.owner.clone())]);
    }

    #[test]
    fn unreadable_messages_are_errors() {
        let a = instance("a");
        for text in [
            "",
            "{}",
            r#"{"join":{"ticket":1,"code":"!","guest":"b b"}}"#,
        ] {
            assert!(a.links.receive(text).is_err(), "{text:?}");
        }
    }
}
