//! One WebSocket session, from HELLO to the close frame: the only place that touches both the
//! socket and the hub.
//!
//! A single task owns the socket (no split): it reacts to whichever comes first of frames queued
//! for the peer (or a close, shutdown's included), a frame from the peer, or its ping/idle timer.

use crate::config::Config;
use crate::edge::parking::{Connection, Idleness, WebSocket};
use crate::edge::state::Shared;
use crate::relay::admission::Admission;
use crate::relay::command::{self, Command};
use crate::relay::directory::Owner;
use crate::relay::hub::{CommandError, JoinError, NoFreeId, PeerId, Reclaim, RouteError, Seated};
use crate::relay::ids::ClientId;
use crate::relay::limits::{RateLimiter, Slot, Verdict};
use crate::relay::link::{Guest, Seat};
use crate::relay::outbox::{Inbox, Outbox};
use crate::relay::outcome::{
    BINARY, Closing, DROPPED, ErrorCode, FLOODING, FORBIDDEN, IDLE, LEFT, NO_FREE_ID, NOT_ADMITTED,
    NOT_UTF8, Notice, PROTOCOL_ERROR, QUEUE_FULL, RESUME_FAILED, ROOM_LOCKED, Refusal, SERVER_FULL,
    TOO_BIG, TOO_SLOW, UNKNOWN_SERVER, close,
};
use crate::relay::protocol;
use crate::relay::protocol::Greeting;
use crate::relay::resume;
use futures_util::future::Either;
use futures_util::{SinkExt, StreamExt};
use serde_json::value::RawValue;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, Sleep, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tracing::{debug, info};

/// How long the relay waits for the peer's side of the closing handshake before dropping the
/// socket, so a peer that never answers holds nothing for long.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Most bytes read and thrown away after the relay's close frame while waiting for the peer's
/// close: room for the rest of one large message in flight, not a channel to keep sending on.
const LINGER_BYTES: usize = 256 * 1024;
/// What one read takes while lingering.
const LINGER_CHUNK: usize = 4096;

/// How a session ended, for the log line.
enum End {
    /// The relay closed it with this code.
    Closed(Closing),
    /// The peer closed it with this code, or its connection dropped ([`close::ABNORMAL`]).
    Left(u16),
}

/// What woke the session's loop.
enum Event {
    Ended(End),
    Outgoing(VecDeque<String>),
    Incoming(Message),
    Timer,
}

/// What one write sends: a batch from the peer's queue, or a ping.
enum Outgoing {
    Batch(std::collections::vec_deque::IntoIter<String>),
    /// The ping's payload ([`resume::ping_payload`]) while it is still to be sent.
    Ping(Option<Bytes>),
}

impl Iterator for Outgoing {
    type Item = Message;

    fn next(&mut self) -> Option<Message> {
        match self {
            Outgoing::Batch(batch) => batch.next().map(Message::text),
            Outgoing::Ping(unsent) => unsent.take().map(Message::Ping),
        }
    }
}

/// How a peer arrives at its session.
pub enum Arrival {
    /// To register here as the admission says (or be refused); a joining client's `?name=`.
    Here {
        admission: Admission,
        info: Option<String>,
    },
    /// Already a guest of a room on another instance, its queue filled there.
    Guest {
        guest: Box<Guest>,
        outbox: Outbox,
        inbox: Inbox,
    },
    /// A server taking over its room from an instance that died or drained, or (pubsub) from
    /// the live instance named, which is told once the room is seated here.
    Reclaimed(Box<Reclaim>, Option<Owner>),
}

/// The HELLO a relay running `config` greets a peer with, as the hub describes it.
pub fn hello(config: &Config, greeting: &Greeting<'_>) -> String {
    protocol::hello(&protocol::Hello {
        id: greeting.id,
        server_info: config.server_info.as_deref(),
        ice_servers: &config.ice.for_peer(greeting.id, SystemTime::now()),
        resume: greeting.resume,
        waiting: greeting.waiting,
    })
}

/// Registers the peer and returns its session, to be awaited until it ends; a refused peer gets
/// its ERROR and close instead. `slot` holds its place under the connection bounds.
///
/// Registration is synchronous and the returned future owns the socket once: a spawned session
/// lives as long as its peer stays connected, so its size is memory every idle peer holds.
pub fn run<S>(
    ws: WebSocket<S>,
    shared: Arc<Shared>,
    arrival: Arrival,
    slot: Slot,
    remote: SocketAddr,
) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let started = Instant::now();
    let registered = match arrival {
        Arrival::Guest {
            guest,
            outbox,
            inbox,
        } => Ok((Seat::Guest(guest), outbox, inbox)),
        Arrival::Here { admission, info } => register(&shared, admission, info.as_deref())
            .map(|(membership, outbox, inbox)| (Seat::Member(membership), outbox, inbox)),
        Arrival::Reclaimed(reclaim, from) => reclaim_room(&shared, *reclaim, from)
            .map(|(membership, outbox, inbox)| (Seat::Member(membership), outbox, inbox)),
    };
    match registered {
        Ok((seat, outbox, inbox)) => {
            let limiter = RateLimiter::new(
                shared.config.rate_limit,
                shared.config.flood_window,
                started.into_std(),
            );
            let session = Session {
                connection: Connection::new(ws, shared.metrics.parked()),
                outbox,
                inbox,
                seat,
                shared,
                limiter,
                _slot: slot,
                remote,
                started,
            };
            Either::Left(session.serve())
        }
        Err(refusal) => {
            if refusal.is_failed_attempt() {
                slot.record_failure(std::time::Instant::now());
            }
            shared.metrics.error(refusal.notice.code.as_str());
            shared.metrics.closed(refusal.closing.code);
            // Boxed: refusals are rare and short, and inline they would set every session's size.
            Either::Right(Box::pin(refuse(ws, refusal, remote)))
        }
    }
}

/// Registers a peer in this instance's hub as `admission` says, with the queue its session
/// drains.
fn register(
    shared: &Arc<Shared>,
    admission: Admission,
    info: Option<&str>,
) -> Result<Seated, Refusal> {
    let hello = |greeting: &Greeting<'_>| hello(&shared.config, greeting);
    let queue_bytes = shared.config.send_queue_bytes;
    if let Admission::Resume {
        resuming,
        token,
        received,
    } = admission
    {
        return shared
            .hub
            .resume(token, resuming, received, queue_bytes, hello);
    }
    let (outbox, inbox) = shared.hub.queue(queue_bytes);
    let membership = match admission {
        Admission::Server(rules) => shared
            .hub
            .register_server(outbox.clone(), rules, hello)
            .map_err(|NoFreeId| NO_FREE_ID),
        Admission::ClaimedServer(code, rules, token) => shared
            .hub
            .register_server_as(code, token, outbox.clone(), rules, hello)
            .map_err(|NoFreeId| NO_FREE_ID),
        Admission::Client(code) => {
            let (membership, waiting) = shared
                .hub
                .join(code, outbox.clone(), info, hello)
                .map_err(|error| match error {
                    JoinError::UnknownServer => UNKNOWN_SERVER,
                    JoinError::ServerFull => SERVER_FULL,
                    JoinError::NoFreeId => NO_FREE_ID,
                    JoinError::Locked => ROOM_LOCKED,
                })?;
            if waiting && let PeerId::Client(id) = membership.id() {
                end_knock_later(shared, id);
            }
            Ok(membership)
        }
        Admission::Refused(refusal) => Err(refusal),
        Admission::Resume { .. } => Err(RESUME_FAILED),
    }?;
    Ok((membership, outbox, inbox))
}

/// Seats a server in the room it took over, times the window of each member away in it, and
/// tells the live instance it was taken from, if any, to let the room go: only now, so that the
/// members that instance closes find the room here when they resume.
fn reclaim_room(
    shared: &Arc<Shared>,
    reclaim: Reclaim,
    from: Option<Owner>,
) -> Result<Seated, Refusal> {
    let hello = |greeting: &Greeting<'_>| hello(&shared.config, greeting);
    let (outbox, inbox) = shared.hub.queue(shared.config.send_queue_bytes);
    let code = reclaim.code;
    let (membership, away) = match shared.hub.reclaim_server(reclaim, outbox.clone(), hello) {
        Ok(seated) => seated,
        Err(NoFreeId) => {
            // The code was claimed for nothing: give it up, unless a room here holds it.
            release(shared, PeerId::Server(code));
            return Err(NO_FREE_ID);
        }
    };
    let pubsub = shared.cluster.as_ref().and_then(|cluster| cluster.pubsub());
    if let (Some(owner), Some(pubsub)) = (from, pubsub) {
        pubsub.taken(owner, code);
    }
    for (id, generation) in away {
        expire_later(shared, PeerId::Client(id), generation);
    }
    Ok((membership, outbox, inbox))
}

/// A registered peer: everything its task holds while the peer is connected.
struct Session<S> {
    connection: Connection<S>,
    /// This peer's own queue, for the relay's replies (ERROR) to go in order with relayed frames.
    outbox: Outbox,
    inbox: Inbox,
    seat: Seat,
    shared: Arc<Shared>,
    limiter: RateLimiter,
    /// Released when the session ends.
    _slot: Slot,
    remote: SocketAddr,
    started: Instant,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// Relays until the session ends, then leaves the hub and closes the socket.
    ///
    /// An `async` block rather than an `async fn`: an `async fn` keeps a second copy of its
    /// by-value `self` for its whole life, and this future lives as long as the peer does.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn would hold `self` twice for the peer's whole connection"
    )]
    fn serve(mut self) -> impl Future<Output = ()> {
        async move {
            let end = self.relay().await;
            // Boxed: it runs once, and inline what it holds would be memory every idle peer holds.
            Box::pin(self.close(end)).await;
        }
    }

    /// Leaves the hub (or steps away), closes the socket as `end` says, and logs the leave.
    async fn close(&mut self, end: End) {
        let id = self.seat.id();
        let (close_code, by_relay) = match end {
            End::Closed(closing) => (closing.code, true),
            End::Left(code) => (code, false),
        };
        // Leave the room (or step away from it) before the closing handshake, so
        // counterparts hear PEER_GONE or PEER_AWAY at once.
        let away = if resume::leaves_away(close_code, by_relay) {
            self.seat.step_away()
        } else {
            self.seat.leave();
            None
        };
        match away {
            Some(generation) => expire_later(&self.shared, id, generation),
            None => release(&self.shared, id),
        }
        let code = match end {
            End::Closed(closing) => {
                if let Ok(ws) = self.connection.opened(&self.shared.websocket).await {
                    close_gracefully(ws, closing).await;
                }
                closing.code
            }
            End::Left(code) => {
                // tungstenite queued the reply to the peer's close frame; reading sends it and
                // then sees the end of the stream, so the peer gets a clean close, not a reset.
                if code != close::ABNORMAL
                    && let Ok(ws) = self.connection.opened(&self.shared.websocket).await
                {
                    let _ = timeout(CLOSE_GRACE, async {
                        while let Some(Ok(_)) = ws.next().await {}
                    })
                    .await;
                }
                code
            }
        };
        self.shared.metrics.closed(code);
        let role = match id {
            PeerId::Server(_) => "server",
            PeerId::Client(_) => "client",
        };
        info!(
            peer = %id,
            role,
            remote = %self.remote,
            close = code,
            away = away.is_some(),
            duration_ms = self.started.elapsed().as_millis() as u64,
            "peer left"
        );
    }

    /// The session's loop: whichever comes first of frames queued for the peer or a close, a frame
    /// from the peer, or the timer: a ping due, the idle timeout, or the time to park.
    async fn relay(&mut self) -> End {
        let mut heard_at = Instant::now();
        let mut ping_at = heard_at + self.shared.config.ping_interval;
        let mut idleness = Idleness::default();
        let timer = tokio::time::sleep_until(ping_at.min(idleness.next_look(heard_at)));
        tokio::pin!(timer);
        loop {
            let idle_timeout = self.shared.config.idle_timeout;
            let parked = self.connection.is_parked();
            // Shutdown arrives as a close in the queue (`Hub::shut_down`), so no branch here polls
            // anything every session shares. One statement from the wake-up to what to write: the
            // event is gone before the write.
            let frames = match tokio::select! {
                biased;
                batch = self.inbox.next_batch() => match batch {
                    Ok(batch) => Event::Outgoing(batch),
                    Err(closing) => Event::Ended(End::Closed(closing)),
                },
                message = poll_fn(|cx| self.connection.poll_next(cx, &self.shared.websocket)) => {
                    match message {
                        Some(Ok(message)) => Event::Incoming(message),
                        Some(Err(error)) => Event::Ended(ended_by(error)),
                        None => Event::Ended(End::Left(close::ABNORMAL)),
                    }
                }
                _ = &mut timer => Event::Timer,
            } {
                Event::Ended(end) => return end,
                Event::Outgoing(batch) => {
                    if !batch.iter().all(|frame| protocol::is_notice(frame)) {
                        idleness.busy();
                    }
                    Outgoing::Batch(batch.into_iter())
                }
                Event::Incoming(message) => {
                    heard_at = Instant::now();
                    // A pong answers the relay's ping, a ping asks for one: neither is a message.
                    if !matches!(message, Message::Ping(_) | Message::Pong(_)) {
                        idleness.busy();
                    }
                    if parked {
                        look_by(timer.as_mut(), idleness.next_look(heard_at));
                    }
                    if let Err(end) = self.on_message(message, heard_at.into_std()) {
                        return end;
                    }
                    continue;
                }
                Event::Timer => {
                    let now = Instant::now();
                    if now >= heard_at + idle_timeout {
                        return End::Closed(IDLE);
                    }
                    let parks = !parked && idleness.look() && self.park().await;
                    let open = !(parked || parks);
                    if !open {
                        idleness.parked();
                    }
                    let due = now >= ping_at;
                    if due {
                        ping_at = now + self.shared.config.ping_interval;
                    }
                    let next = ping_at.min(heard_at + idle_timeout);
                    timer.as_mut().reset(if open {
                        next.min(idleness.next_look(now))
                    } else {
                        next
                    });
                    if !due {
                        continue;
                    }
                    let payload = resume::ping_payload(self.inbox.written());
                    Outgoing::Ping(Some(Bytes::copy_from_slice(&payload)))
                }
            };
            let reopens = self.connection.is_parked();
            let next_check = ping_at.min(heard_at + idle_timeout);
            if let Err(end) = self.send_all(frames, timer.as_mut(), next_check).await {
                return end;
            }
            if reopens {
                look_by(timer.as_mut(), idleness.next_look(Instant::now()));
            }
        }
    }

    /// Parks the connection if nothing is half read or half written; returns whether it did.
    async fn park(&mut self) -> bool {
        poll_fn(|cx| Poll::Ready(self.connection.park(cx))).await
    }

    /// Writes `frames` and flushes once, reopening a parked connection. A peer that stops reading
    /// must not hold its task in a write forever: the write is abandoned when the peer overflows
    /// its queue, when the relay shuts down (both arrive as closes in its queue), or when the
    /// socket has taken nothing for `--idle-timeout`.
    ///
    /// Usually the socket takes everything in one poll, which holds no future at all. Only a
    /// write that has to wait sets up the watch for those three, on the heap: inline it would be
    /// memory every idle peer holds.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn would hold its arguments twice, in every session's future"
    )]
    fn send_all<'a>(
        &'a mut self,
        mut frames: Outgoing,
        timer: Pin<&'a mut Sleep>,
        next_check: Instant,
    ) -> impl Future<Output = Result<(), End>> + 'a {
        async move {
            let config = &self.shared.websocket;
            let connection = &mut self.connection;
            let frames = &mut frames;
            let mut write = move |cx: &mut Context<'_>| match connection.open(cx, config) {
                Ok(ws) => write_all(ws, frames, cx),
                Err(error) => Poll::Ready(Err(error)),
            };
            if let Poll::Ready(result) = poll_fn(|cx| Poll::Ready(write(cx))).await {
                return result.map_err(ended_by);
            }
            let stalled = Stalled {
                inbox: &self.inbox,
                idle_timeout: self.shared.config.idle_timeout,
            };
            Box::pin(stalled.finish(poll_fn(write), timer, next_check)).await
        }
    }

    /// Charges every data frame, text or binary, well-formed or not, against the peer's rate
    /// before anything else is done with it: a peer over its rate costs the relay no parsing, and
    /// at most a rate's worth of replies.
    fn on_message(&mut self, message: Message, now: std::time::Instant) -> Result<(), End> {
        let text = match message {
            Message::Text(text) => Some(text),
            Message::Binary(_) => None,
            Message::Close(frame) => {
                return Err(End::Left(frame.map_or(close::NO_STATUS, |f| f.code.into())));
            }
            Message::Pong(payload) => {
                if let Some(received) = resume::pong_delivered(&payload) {
                    self.inbox.delivered(received);
                }
                return Ok(());
            }
            Message::Ping(_) | Message::Frame(_) => return Ok(()),
        };
        match self.limiter.check(now) {
            Verdict::Allowed => {}
            Verdict::Dropped => return self.reply(DROPPED),
            Verdict::DroppedQuietly => return Ok(()),
            Verdict::Flooding => return Err(End::Closed(FLOODING)),
        }
        match text {
            Some(text) => self.on_text(&text),
            None => self.reply(BINARY),
        }
    }

    fn on_text(&mut self, text: &str) -> Result<(), End> {
        let incoming = match protocol::parse_incoming(text) {
            Ok(incoming) => incoming,
            Err(error) => return self.reply_error(ErrorCode::BadMessage, &error.to_string(), None),
        };
        if incoming.to == protocol::RELAY_ID {
            return self.on_command(&incoming.kind, incoming.message);
        }
        if let Some(schemas) = &self.shared.config.message_schemas
            && let Err(invalid) = schemas.check(&incoming.kind, incoming.message)
        {
            self.shared
                .metrics
                .error(ErrorCode::InvalidMessage.as_str());
            let error = protocol::invalid_message(&incoming.kind, &invalid.path, &invalid.reason);
            return self.answer(error);
        }
        let from = self.seat.id();
        let frame = protocol::relayed(from.as_str(), &incoming.kind, incoming.message);
        let bytes = frame.len();
        match self.seat.route(&self.shared.hub, &incoming.to, frame) {
            Ok(()) => {
                self.shared.metrics.relayed(bytes);
                Ok(())
            }
            Err(error @ RouteError::UnknownPeer) => self.reply_error(
                ErrorCode::UnknownPeer,
                &error.to_string(),
                Some(&incoming.to),
            ),
            Err(RouteError::QueueFull) => {
                self.reply_error(QUEUE_FULL.code, QUEUE_FULL.reason, Some(&incoming.to))
            }
            Err(RouteError::NotAdmitted) => self.reply(NOT_ADMITTED),
        }
    }

    /// Carries out a command to the relay (`"to": "0"`); room commands only from the server.
    fn on_command(&mut self, kind: &str, message: Option<&RawValue>) -> Result<(), End> {
        let command = match command::parse(kind, message) {
            Ok(command) => command,
            Err(bad) => return self.reply_error(ErrorCode::BadCommand, &bad.to_string(), None),
        };
        let code = match self.seat.id() {
            PeerId::Server(code) => Some(code),
            PeerId::Client(_) => None,
        };
        let hub = &self.shared.hub;
        let done = match (command, code) {
            (Command::Leave, _) => return Err(End::Closed(LEFT)),
            (Command::IceRefresh, _) => {
                let id = self.seat.id();
                let servers = self
                    .shared
                    .config
                    .ice
                    .for_peer(id.as_str(), SystemTime::now());
                let fresh = protocol::ice_servers(&servers);
                return self.answer(fresh);
            }
            (command, None) if command.needs_server() => return self.reply(FORBIDDEN),
            (Command::Kick { id, reason }, Some(code)) => hub
                .kick(code, id, reason.as_deref())
                .map_err(|error| (error, id)),
            (Command::Admit { id }, Some(code)) => hub.admit(code, id).map_err(|error| (error, id)),
            (Command::Deny { id, reason }, Some(code)) => hub
                .deny(code, id, reason.as_deref())
                .map_err(|error| (error, id)),
            (Command::Room { locked, knock }, Some(code)) => {
                hub.set_rules(code, locked, knock);
                Ok(())
            }
            (_, None) => return self.reply(FORBIDDEN),
        };
        match done {
            Ok(()) => Ok(()),
            Err((error @ CommandError::UnknownPeer, id)) => self.reply_error(
                ErrorCode::UnknownPeer,
                &error.to_string(),
                Some(id.as_str()),
            ),
            Err((error @ CommandError::ServerFull, id)) => {
                self.reply_error(ErrorCode::ServerFull, &error.to_string(), Some(id.as_str()))
            }
        }
    }

    fn reply(&mut self, notice: Notice) -> Result<(), End> {
        self.reply_error(notice.code, notice.reason, None)
    }

    fn reply_error(&mut self, code: ErrorCode, reason: &str, id: Option<&str>) -> Result<(), End> {
        self.shared.metrics.error(code.as_str());
        self.answer(protocol::error(code, reason, id))
    }

    /// Queues the relay's own answer in order with what the room sends (see [`Seat::answer`]).
    fn answer(&mut self, frame: String) -> Result<(), End> {
        (self.seat.answer(&self.outbox, frame)).map_err(|_| End::Closed(TOO_SLOW))
    }
}

/// Ends the away time of the peer `id` once the resume window has passed, unless it resumed.
fn expire_later(shared: &Arc<Shared>, id: PeerId, generation: u32) {
    let shared = shared.clone();
    // Not tracked with the sessions: a drain must not wait out the window.
    tokio::spawn(async move {
        tokio::time::sleep(shared.config.resume.window).await;
        if shared.hub.expire(id, generation) {
            release(&shared, id);
        }
    });
}

/// Ends a knock no one answered within `--knock-timeout`.
fn end_knock_later(shared: &Arc<Shared>, id: ClientId) {
    let shared = shared.clone();
    tokio::spawn(async move {
        tokio::time::sleep(shared.config.knock_timeout).await;
        shared.hub.knock_expired(id);
    });
}

/// Gives a server's code up in the cluster directory once it is gone.
fn release(shared: &Shared, id: PeerId) {
    if let (PeerId::Server(code), Some(cluster)) = (id, &shared.cluster) {
        cluster.release(code);
    }
}

/// Brings the session's timer forward to `look`, when a reopened connection is to be looked at
/// again, if it was set later.
fn look_by(timer: Pin<&mut Sleep>, look: Instant) {
    if timer.deadline() > look {
        timer.reset(look);
    }
}

/// What a write that could not finish at once watches while it waits.
struct Stalled<'a> {
    inbox: &'a Inbox,
    idle_timeout: Duration,
}

impl Stalled<'_> {
    /// Waits for `written`, unless the peer overflows its queue, the relay shuts down, or
    /// `--idle-timeout` passes first. The session's `timer` measures the stall (a second timer
    /// would be memory every idle peer holds); if it was used, it is set back to `next_check`.
    async fn finish(
        self,
        written: impl Future<Output = Result<(), WsError>>,
        mut timer: Pin<&mut Sleep>,
        next_check: Instant,
    ) -> Result<(), End> {
        let mut written = pin!(written);
        let deadline = Instant::now() + self.idle_timeout;
        let mut timer_used = false;
        let outcome = loop {
            tokio::select! {
                biased;
                result = written.as_mut() => break result.map_err(ended_by),
                closing = self.inbox.abandoned() => break Err(End::Closed(closing)),
                _ = timer.as_mut() => {
                    if Instant::now() >= deadline {
                        break Err(End::Closed(IDLE));
                    }
                    timer_used = true;
                    timer.as_mut().reset(deadline);
                }
            }
        };
        if timer_used {
            timer.reset(next_check);
        }
        outcome
    }
}

/// Feeds `frames` to the socket and flushes it. A frame is taken from `frames` only once the
/// socket is ready for it, so after `Pending` the next call carries on where this one stopped.
fn write_all<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    frames: &mut Outgoing,
    cx: &mut Context<'_>,
) -> Poll<Result<(), WsError>> {
    loop {
        ready!(ws.poll_ready_unpin(cx))?;
        let Some(frame) = frames.next() else {
            return ws.poll_flush_unpin(cx);
        };
        ws.start_send_unpin(frame)?;
    }
}

/// Maps a read or write error to how the session ends.
fn ended_by(error: WsError) -> End {
    match error {
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => End::Closed(TOO_BIG),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            End::Left(close::ABNORMAL)
        }
        WsError::Capacity(_) | WsError::Protocol(_) => End::Closed(PROTOCOL_ERROR),
        WsError::Utf8(_) => End::Closed(NOT_UTF8),
        other => {
            debug!(error = %other, "connection lost");
            End::Left(close::ABNORMAL)
        }
    }
}

/// Answers a refused upgrade with one ERROR frame and the matching close.
async fn refuse<S>(mut ws: WebSocketStream<S>, refusal: Refusal, remote: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = Message::text(protocol::notice(refusal.notice));
    if let Ok(Ok(())) = timeout(CLOSE_GRACE, ws.send(frame)).await {
        close_gracefully(&mut ws, refusal.closing).await;
    }
    info!(
        %remote,
        close = refusal.closing.code,
        reason = refusal.notice.reason,
        "peer refused"
    );
}

/// Sends a close frame, then half-closes the connection and reads whatever the peer still sends
/// until it closes too; either way the socket is dropped within about [`CLOSE_GRACE`].
///
/// Dropping a socket with unread bytes in its receive buffer makes the kernel answer with a reset,
/// which can reach the peer before it has read the close frame: it would then see `1006` and never
/// learn why it was closed. A peer cut off mid-message (`1009`) is exactly one still sending.
async fn close_gracefully<S>(ws: &mut WebSocketStream<S>, closing: Closing)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = CloseFrame {
        code: CloseCode::from(closing.code),
        reason: closing.reason.into(),
    };
    let handshake = async {
        ws.close(Some(frame)).await.ok()?;
        let socket = ws.get_mut();
        socket.shutdown().await.ok()?;
        // On the heap, and only while closing: inline it would be memory every idle peer holds.
        let mut discard = vec![0; LINGER_CHUNK];
        let mut budget = LINGER_BYTES;
        loop {
            let read = socket.read(&mut discard).await.ok()?;
            if read == 0 {
                return Some(());
            }
            budget = budget.checked_sub(read)?;
        }
    };
    let _ = timeout(CLOSE_GRACE, handshake).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::upgrade::Upgraded;
    use hyper_util::rt::TokioIo;

    /// What an upgraded connection's session holds the socket as.
    type UpgradedSocket = WebSocket<TokioIo<Upgraded>>;

    /// The size of the future `make` returns, without calling it.
    fn output_size<F>(
        _make: fn(UpgradedSocket, Arc<Shared>, Arrival, Slot, SocketAddr) -> F,
    ) -> usize {
        size_of::<F>()
    }

    #[test]
    fn a_session_fits_a_task_of_768_bytes() {
        // Set-up: tokio allocates a task in steps of 128 B: its future and 112 B more (header 32,
        // scheduler handle and id 16, the tracker's token and the set-up stage's tag 16, trailer
        // 48). `edge::http` spawns the session as that stage's second half.
        let size = output_size(run::<TokioIo<Upgraded>>);
        // Expectation: the task every idle peer holds is 768 B, not the next step of 896 B (the
        // WebSocket's state is boxed, and dropped while the connection is parked).
        assert!(size + 112 <= 768, "a session's future is {size} B");
    }
}
