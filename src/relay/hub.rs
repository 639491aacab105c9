//! The registry of live and away peers and the rules of who may send to whom.
//!
//! One `std::sync::Mutex` guards the maps and is taken once per operation. No operation awaits
//! while holding it: whatever must reach another peer is pushed into that peer's bounded
//! [`Outbox`] and written by the peer's own task.
//!
//! With a resume window, a peer whose connection was lost is *away*: it keeps its id, its room
//! and its place in it, and frames for it wait in a bounded queue until it resumes with its token
//! (getting them in order) or the window ends (and it is gone, as on a leave).

use crate::relay::ids::{ClientId, JoinCode};
use crate::relay::outbox::{self, Outbox};
use crate::relay::outcome::{
    Closing, DENIED, ErrorCode, KICKED, KNOCK_TIMEOUT, KNOCK_UNANSWERED, RESUME_FAILED, Refusal,
    SERVER_GONE, SHUTTING_DOWN, SUPERSEDED, SUPERSEDED_NOTICE, TOO_SLOW,
};
use crate::relay::protocol::{self, Greeting, Resumption};
use crate::relay::resume::{Replay, ResumePolicy, Token, TokenHash};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

/// A handle to the registry; cheap to clone, one per connection.
#[derive(Clone)]
pub struct Hub {
    state: Arc<Mutex<State>>,
    /// Shared, not copied: every session's membership holds a handle.
    settings: Arc<Settings>,
}

/// How the registry was set up.
#[derive(Clone, Copy)]
struct Settings {
    code_length: usize,
    max_clients_per_server: usize,
    /// `--max-waiting-per-server`: knockers one server may have waiting.
    max_waiting: usize,
    /// `None` when `--resume-window` is `0`: every loss is a leave, and no token is made.
    resume: Option<ResumePolicy>,
}

#[derive(Default)]
struct State {
    servers: HashMap<JoinCode, ServerEntry>,
    clients: HashMap<ClientId, ClientEntry>,
    /// Every live or away peer's resume token.
    tokens: HashMap<TokenHash, PeerId>,
    /// Peers away now; never above `ResumePolicy::max_away`.
    away: usize,
    /// Set by [`Hub::shut_down`]: peers that register later are closed at once.
    shutting_down: bool,
    /// Where changes to rooms' resume records go, in a cluster.
    recorder: Option<Arc<dyn Recorder>>,
    /// The last seat generation handed out: generations are unique across the hub, so a stale
    /// session of an id that left and came back (a room taken over, given up, taken back) can
    /// never match a newer seat of the same id.
    generations: u32,
}

impl State {
    /// Queues a new member's HELLO and, once shutdown has begun, its close right behind it.
    fn greet(&self, outbox: &Outbox, hello: String) {
        // `Config::validate` makes every send queue big enough for the largest HELLO; a peer
        // whose queue still cannot take it is closed rather than left without one.
        if outbox.push(hello).is_err() {
            outbox.close(TOO_SLOW);
        }
        if self.shutting_down {
            outbox.close(SHUTTING_DOWN);
        }
    }

    fn next_generation(&mut self) -> u32 {
        self.generations = self.generations.wrapping_add(1);
        self.generations
    }

    fn record(&self, change: RecordChange) {
        if let Some(recorder) = &self.recorder {
            recorder.record(change);
        }
    }

    /// Records a member's token in its room's record; knockers have none there (a knocker that
    /// drops is gone).
    fn record_member(&self, code: JoinCode, id: ClientId, entry: &ClientEntry) {
        if let (Some(token), false) = (entry.seat.token, entry.waiting) {
            self.record(RecordChange::Token {
                code,
                peer: PeerId::Client(id),
                token: Some(token),
            });
        }
    }

    fn seat(&mut self, id: PeerId) -> Option<&mut Seat> {
        match id {
            PeerId::Server(code) => self.servers.get_mut(&code).map(|entry| &mut entry.seat),
            PeerId::Client(id) => self.clients.get_mut(&id).map(|entry| &mut entry.seat),
        }
    }

    /// Pushes a notice about `id` to each of its counterparts; those that cannot take it are
    /// evicted as too slow.
    fn tell_counterparts(&mut self, id: PeerId, notice: &str) {
        let counterparts: Vec<PeerId> = match id {
            PeerId::Server(code) => self.servers.get(&code).map_or_else(Vec::new, |server| {
                server.clients.iter().copied().map(PeerId::Client).collect()
            }),
            PeerId::Client(id) => self
                .clients
                .get(&id)
                .map(|client| vec![PeerId::Server(client.server)])
                .unwrap_or_default(),
        };
        for counterpart in counterparts {
            let told = self
                .seat(counterpart)
                .is_some_and(|seat| seat.outbox.push(notice.to_owned()).is_ok());
            if !told {
                Hub::evict_locked(self, counterpart, Some(TOO_SLOW));
            }
        }
    }
}

/// How a server removes one of its clients: a knocker it turns away, or a member it kicks.
struct Removal {
    /// The client is a knocker (else a member).
    knocker: bool,
    error: ErrorCode,
    /// The ERROR's reason when the server gave none.
    default_reason: &'static str,
    closing: Closing,
    /// What the server hears of it.
    because: &'static str,
}

const DENIAL: Removal = Removal {
    knocker: true,
    error: ErrorCode::Denied,
    default_reason: "the host did not let you in",
    closing: DENIED,
    because: "denied",
};

const KICK: Removal = Removal {
    knocker: false,
    error: ErrorCode::Kicked,
    default_reason: "the host removed you",
    closing: KICKED,
    because: "kicked",
};

/// Fresh ids drawn before giving up: with the code space `Config::validate` demands (64 codes
/// per connection), all of them collide with a chance of 2⁻⁹⁶, so giving up means the space is
/// exhausted (or shared far beyond its size), never bad luck. The bound keeps the hub's lock
/// from being held by a search that cannot end.
pub const MAX_DRAWS: usize = 16;

/// Draws ids with `draw` until `taken` says one is free, at most [`MAX_DRAWS`] times.
fn free_id<T: Copy>(mut draw: impl FnMut() -> T, taken: impl Fn(&T) -> bool) -> Option<T> {
    std::iter::repeat_with(&mut draw)
        .take(MAX_DRAWS)
        .find(|id| !taken(id))
}

/// A peer's place, live or away.
struct Seat {
    /// The session's queue while live; the away queue while away.
    outbox: Outbox,
    /// Bumped whenever the seat changes hands (away, resumed), so a stale session or timer
    /// cannot act on the peer's newer state.
    generation: u32,
    token: Option<TokenHash>,
    /// Set while away; boxed, as most peers are never away.
    away: Option<Box<Away>>,
}

/// What an away peer's resume needs besides its queue.
struct Away {
    /// The frames written last before the loss.
    replay: Replay,
    /// Frames queued for it were dropped (more than its queue holds): its resume says `gap`.
    lost: bool,
}

struct ServerEntry {
    seat: Seat,
    /// Members. Never longer than `Hub::max_clients_per_server`.
    clients: Vec<ClientId>,
    /// Knockers not let in yet. Never longer than `Hub::max_waiting`.
    waiting: Vec<ClientId>,
    rules: RoomRules,
}

struct ClientEntry {
    seat: Seat,
    server: JoinCode,
    /// Knocked and not let in yet: its frames go nowhere.
    waiting: bool,
}

/// Where a cluster keeps each room's resume record (its server's and members' token hashes, and
/// its rules), so that the server can take the room over on another instance when this one dies
/// or drains. Called with the hub's lock held: it must neither block nor call back into the hub.
pub trait Recorder: Send + Sync {
    /// Queues `change` for the directory; may drop it when it cannot keep up.
    fn record(&self, change: RecordChange);
}

/// A change to a room's resume record.
#[derive(Clone, Copy)]
pub enum RecordChange {
    /// The token of the room's server or of a member is now `token`; `None` once a member is gone.
    Token {
        code: JoinCode,
        peer: PeerId,
        token: Option<TokenHash>,
    },
    /// The room's rules changed.
    Rules { code: JoinCode, rules: RoomRules },
}

/// A room taken over from an instance that died or drained, as its record in the directory held
/// it.
pub struct Reclaim {
    pub code: JoinCode,
    /// The server's fresh token, whose hash the record now holds.
    pub token: Token,
    pub rules: RoomRules,
    /// The room's members and their tokens' hashes: each is away until it resumes here.
    pub members: Vec<(ClientId, TokenHash)>,
}

/// Who may join a room, as its server set it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoomRules {
    /// No one new may join.
    pub locked: bool,
    /// Newcomers knock and wait for the server to let them in.
    pub knock: bool,
}

/// Why a command about a client of the room failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The id names no member (or, for ADMIT and DENY, no knocker) of this room.
    #[error("no such client in your room")]
    UnknownPeer,
    /// The room holds `--max-clients-per-server` clients: the knocker keeps waiting.
    #[error("the room holds its maximum number of clients")]
    ServerFull,
}

/// A live peer's id: servers are known by their join code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerId {
    /// A server, by its join code.
    Server(JoinCode),
    /// A client, by its relay-issued id.
    Client(ClientId),
}

impl PeerId {
    /// The id as peers see it on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            PeerId::Server(code) => code.as_str(),
            PeerId::Client(id) => id.as_str(),
        }
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// No free id was found within [`MAX_DRAWS`] draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no free id")]
pub struct NoFreeId;

/// Why a client could not join.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// No free client id was found.
    #[error("no free client id")]
    NoFreeId,
    /// No live server has this code.
    #[error("no server has this code")]
    UnknownServer,
    /// The server holds its maximum number of clients, or of knockers.
    #[error("the server is full")]
    ServerFull,
    /// The room is locked.
    #[error("the room is locked")]
    Locked,
}

/// Why a frame was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// `to` names no peer the sender may reach.
    #[error("no such peer, or not one you may send to")]
    UnknownPeer,
    /// The destination is away and its queue has no room for the frame.
    #[error("the peer is away and its queue is full")]
    QueueFull,
    /// The sender knocked and was not let in yet.
    #[error("not let in yet")]
    NotAdmitted,
}

/// Who resumes: the server at `/server`, or a client of the server with this code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resuming {
    /// At `/server?resume=…`, with the code it held when it says (`&code=`): in a cluster,
    /// that finds the instance holding its room.
    Server(Option<JoinCode>),
    /// At `/client/CODE?resume=…`.
    ClientOf(JoinCode),
}

/// A peer's membership, and the queue its session drains.
pub type Seated = (Membership, Outbox, outbox::Inbox);

/// Live membership in the hub; dropping it removes the peer and tells its counterparts.
///
/// Holding cleanup in `Drop` means PEER_GONE goes out on every exit path, panics included.
pub struct Membership {
    hub: Hub,
    id: PeerId,
    /// The seat's generation when this session took it: once the peer resumed elsewhere (a newer
    /// session holds a newer generation), this one can no longer evict or send it away.
    generation: u32,
    /// Set once the peer has left or gone away, so a later drop does nothing.
    left: bool,
}

impl Membership {
    /// This peer's id.
    pub fn id(&self) -> PeerId {
        self.id
    }

    /// Leaves the hub now rather than on drop; counterparts hear PEER_GONE at once.
    pub fn leave(&mut self) {
        if !std::mem::replace(&mut self.left, true) {
            let mut state = self.hub.lock();
            if state
                .seat(self.id)
                .is_some_and(|seat| seat.generation == self.generation)
            {
                Hub::evict_locked(&mut state, self.id, None);
            }
        }
    }

    /// The connection was lost: keeps the peer away with what its queue held, if the relay
    /// resumes sessions and has room for one more away peer; otherwise leaves. Returns the away
    /// seat's generation, for [`Hub::expire`] once the window has passed.
    ///
    /// The queue is emptied under the hub's lock, so no frame pushed meanwhile can be lost.
    pub fn step_away(&mut self) -> Option<u32> {
        self.step_away_marked(false)
    }

    /// As [`Membership::step_away`], for a forwarded member whose link was lost: frames to or
    /// from it may have been lost on the way, so its resume says `gap`.
    pub fn step_away_with_gap(&mut self) -> Option<u32> {
        self.step_away_marked(true)
    }

    fn step_away_marked(&mut self, lost: bool) -> Option<u32> {
        if std::mem::replace(&mut self.left, true) {
            return None;
        }
        let mut state = self.hub.lock();
        let current = state
            .seat(self.id)
            .is_some_and(|seat| seat.generation == self.generation && seat.away.is_none());
        if !current {
            return None;
        }
        let knocking = match self.id {
            PeerId::Client(id) => state.clients.get(&id).is_some_and(|entry| entry.waiting),
            PeerId::Server(_) => false,
        };
        let room = self
            .hub
            .settings
            .resume
            .filter(|policy| state.away < policy.max_away && !knocking);
        let Some(policy) = room else {
            Hub::evict_locked(&mut state, self.id, None);
            return None;
        };
        let rest = state.seat(self.id)?.outbox.take_rest();
        let (outbox, _) = outbox::bounded(policy.queue_bytes);
        let mut lost = lost;
        for frame in rest.unwritten {
            lost = lost || outbox.push(frame).is_err();
        }
        let generation = state.next_generation();
        let seat = state.seat(self.id)?;
        seat.outbox = outbox;
        seat.generation = generation;
        seat.away = Some(Box::new(Away {
            replay: rest.replay,
            lost,
        }));
        state.away += 1;
        state.tell_counterparts(self.id, &protocol::peer_away(self.id.as_str()));
        Some(generation)
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.leave();
    }
}

impl Hub {
    /// An empty registry issuing `code_length`-character codes, resuming no session.
    pub fn new(code_length: usize, max_clients_per_server: usize) -> Hub {
        Hub {
            state: Arc::default(),
            settings: Arc::new(Settings {
                code_length,
                max_clients_per_server,
                max_waiting: 16,
                resume: None,
            }),
        }
    }

    /// The same registry, with at most `max_waiting` knockers per server.
    pub fn with_max_waiting(self, max_waiting: usize) -> Hub {
        let settings = Settings {
            max_waiting,
            ..*self.settings
        };
        Hub {
            settings: Arc::new(settings),
            ..self
        }
    }

    /// Tells `recorder` what each room's resume record must hold, from now on; every handle to
    /// this registry shares it.
    pub fn set_recorder(&self, recorder: Arc<dyn Recorder>) {
        self.lock().recorder = Some(recorder);
    }

    /// The same registry, resuming sessions as `policy` says (none with a zero window).
    pub fn resumable(self, policy: ResumePolicy) -> Hub {
        let settings = Settings {
            resume: (!policy.window.is_zero()).then_some(policy),
            ..*self.settings
        };
        Hub {
            settings: Arc::new(settings),
            ..self
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every operation leaves the maps consistent before it can panic, so poison is ignored.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A fresh send queue for a session, keeping a replay window when sessions resume.
    pub fn queue(&self, send_queue_bytes: usize) -> (Outbox, outbox::Inbox) {
        let replay = self.settings.resume.map_or(0, |policy| policy.queue_bytes);
        outbox::replayable(send_queue_bytes, replay)
    }

    /// A fresh token for a new peer, if sessions resume.
    fn fresh_token(&self) -> Option<Token> {
        self.settings.resume.map(|_| Token::generate())
    }

    /// A new peer's seat, resumable with `token` if it has one.
    fn new_seat(
        &self,
        state: &mut State,
        id: PeerId,
        outbox: Outbox,
        token: Option<Token>,
    ) -> Seat {
        let hash = token.map(|token| token.hash());
        if let Some(hash) = hash {
            state.tokens.insert(hash, id);
        }
        Seat {
            outbox,
            generation: state.next_generation(),
            token: hash,
            away: None,
        }
    }

    /// The resume part of a HELLO carrying `token`.
    fn resumption<'t>(
        &self,
        token: Option<&'t str>,
        resumed: Option<(usize, bool)>,
    ) -> Option<Resumption<'t>> {
        let (policy, token) = self.settings.resume.zip(token)?;
        Some(Resumption {
            token,
            window_ms: policy.window.as_millis() as u64,
            resumed: resumed.is_some(),
            replayed: resumed.map(|(replayed, _)| replayed),
            gap: resumed.is_some_and(|(_, gap)| gap),
        })
    }

    /// Registers a server under a fresh unique code; `hello` builds its first frame from the code.
    pub fn register_server(
        &self,
        outbox: Outbox,
        rules: RoomRules,
        hello: impl FnOnce(&Greeting<'_>) -> String,
    ) -> Result<Membership, NoFreeId> {
        let mut state = self.lock();
        let code = self.free_code(&state)?;
        let token = self.fresh_token();
        Ok(self.insert_server(&mut state, code, outbox, rules, token, hello))
    }

    /// A code no live server here holds, for a claim in the cluster directory before
    /// [`Hub::register_server_as`].
    pub fn fresh_code(&self) -> Result<JoinCode, NoFreeId> {
        self.free_code(&self.lock())
    }

    /// Registers a server under `code`, claimed in the cluster directory beforehand with the
    /// hash of `token`, its resume token when sessions resume; fails if a server here holds the
    /// code already.
    pub fn register_server_as(
        &self,
        code: JoinCode,
        token: Option<Token>,
        outbox: Outbox,
        rules: RoomRules,
        hello: impl FnOnce(&Greeting<'_>) -> String,
    ) -> Result<Membership, NoFreeId> {
        let mut state = self.lock();
        if state.servers.contains_key(&code) {
            return Err(NoFreeId);
        }
        let token = token.filter(|_| self.settings.resume.is_some());
        Ok(self.insert_server(&mut state, code, outbox, rules, token, hello))
    }

    /// Takes over a room whose instance died or drained, its code claimed here in the directory
    /// beforehand. The server's HELLO says `resumed` and `gap` (what was queued there is lost),
    /// then PEER_AWAY for each member, which stays away here until it resumes or its window
    /// ends. Members beyond this relay's bounds get PEER_GONE instead. Returns the away members
    /// and their seats' generations, whose windows the caller times ([`Hub::expire`]).
    pub fn reclaim_server(
        &self,
        reclaim: Reclaim,
        outbox: Outbox,
        hello: impl FnOnce(&Greeting<'_>) -> String,
    ) -> Result<(Membership, Vec<(ClientId, u32)>), NoFreeId> {
        let policy = self.settings.resume.ok_or(NoFreeId)?;
        let mut state = self.lock();
        let code = reclaim.code;
        if state.servers.contains_key(&code) {
            return Err(NoFreeId);
        }
        let id = PeerId::Server(code);
        let seat = self.new_seat(&mut state, id, outbox, Some(reclaim.token));
        let encoded = reclaim.token.encode();
        let greeting = Greeting {
            id: code.as_str(),
            resume: self.resumption(Some(&encoded), Some((0, true))),
            waiting: false,
        };
        state.greet(&seat.outbox, hello(&greeting));
        let mut clients = Vec::new();
        let mut told = true;
        for (client, hash) in reclaim.members {
            let fits = clients.len() < self.settings.max_clients_per_server
                && state.away < policy.max_away
                && !state.clients.contains_key(&client)
                && !state.tokens.contains_key(&hash);
            let notice = if fits {
                state.tokens.insert(hash, PeerId::Client(client));
                let generation = state.next_generation();
                let (queue, _) = outbox::bounded(policy.queue_bytes);
                let away = Away {
                    replay: Replay::new(0),
                    lost: true,
                };
                let entry = ClientEntry {
                    seat: Seat {
                        outbox: queue,
                        generation,
                        token: Some(hash),
                        away: Some(Box::new(away)),
                    },
                    server: code,
                    waiting: false,
                };
                state.clients.insert(client, entry);
                state.away += 1;
                clients.push((client, generation));
                protocol::peer_away(client.as_str())
            } else {
                state.record(RecordChange::Token {
                    code,
                    peer: PeerId::Client(client),
                    token: None,
                });
                protocol::peer_gone(client.as_str())
            };
            told = told && seat.outbox.push(notice).is_ok();
        }
        let generation = seat.generation;
        let entry = ServerEntry {
            seat,
            clients: clients.iter().map(|(client, _)| *client).collect(),
            waiting: Vec::new(),
            rules: reclaim.rules,
        };
        state.servers.insert(code, entry);
        if !told {
            Self::evict_locked(&mut state, id, Some(TOO_SLOW));
        }
        Ok((self.membership(id, generation), clients))
    }

    fn free_code(&self, state: &State) -> Result<JoinCode, NoFreeId> {
        free_id(
            || JoinCode::generate(self.settings.code_length),
            |code| state.servers.contains_key(code),
        )
        .ok_or(NoFreeId)
    }

    fn insert_server(
        &self,
        state: &mut State,
        code: JoinCode,
        outbox: Outbox,
        rules: RoomRules,
        token: Option<Token>,
        hello: impl FnOnce(&Greeting<'_>) -> String,
    ) -> Membership {
        let id = PeerId::Server(code);
        let seat = self.new_seat(state, id, outbox, token);
        let token = token.map(|token| token.encode());
        let greeting = Greeting {
            id: code.as_str(),
            resume: self.resumption(token.as_deref(), None),
            waiting: false,
        };
        state.greet(&seat.outbox, hello(&greeting));
        let entry = ServerEntry {
            seat,
            clients: Vec::new(),
            waiting: Vec::new(),
            rules,
        };
        let generation = entry.seat.generation;
        state.servers.insert(code, entry);
        self.membership(id, generation)
    }

    fn membership(&self, id: PeerId, generation: u32) -> Membership {
        Membership {
            hub: self.clone(),
            id,
            generation,
            left: false,
        }
    }

    /// Whether a live or away server here has `code`.
    pub fn holds(&self, code: &JoinCode) -> bool {
        self.lock().servers.contains_key(code)
    }

    /// The codes of every live or away server here, for claiming them again in the cluster
    /// directory.
    pub fn server_codes(&self) -> Vec<JoinCode> {
        self.lock().servers.keys().copied().collect()
    }

    /// Lets the room with `code` go, its server having taken it over on another instance: no one
    /// hears PEER_GONE, and every member is closed with `closing` (no ERROR before it, so the
    /// frames a resuming member counts are the room's own) to resume there. A server session
    /// still holding it is superseded.
    pub fn give_up(&self, code: JoinCode, closing: Closing) {
        let mut state = self.lock();
        let Some(server) = state.servers.remove(&code) else {
            return;
        };
        Self::vacate(&mut state, &server.seat);
        if server.seat.away.is_none() {
            let _ = server.seat.outbox.push(protocol::notice(SUPERSEDED_NOTICE));
            server.seat.outbox.close(SUPERSEDED);
        }
        for id in server.clients.into_iter().chain(server.waiting) {
            if let Some(client) = state.clients.remove(&id) {
                Self::vacate(&mut state, &client.seat);
                client.seat.outbox.close(closing);
            }
        }
    }

    /// Tells the server with `code` why with the refusal's ERROR, then closes it and its room.
    pub fn close_server(&self, code: JoinCode, refusal: Refusal) {
        let mut state = self.lock();
        if let Some(server) = state.servers.get(&code) {
            let _ = server.seat.outbox.push(protocol::notice(refusal.notice));
            Self::evict_locked(&mut state, PeerId::Server(code), Some(refusal.closing));
        }
    }

    /// Adds a client to the server with `code` and tells that server with PEER_JOINED; in a
    /// knocking room, adds it as a knocker instead (its HELLO says `waiting`) and tells the
    /// server with KNOCK and the `info` it gave. Returns whether it waits.
    ///
    /// The client's HELLO is queued before the server can learn its id, so it always comes first.
    pub fn join(
        &self,
        code: JoinCode,
        outbox: Outbox,
        info: Option<&str>,
        hello: impl FnOnce(&Greeting<'_>) -> String,
    ) -> Result<(Membership, bool), JoinError> {
        let mut state = self.lock();
        let id = free_id(ClientId::generate, |id| state.clients.contains_key(id))
            .ok_or(JoinError::NoFreeId)?;
        let server = state
            .servers
            .get_mut(&code)
            .ok_or(JoinError::UnknownServer)?;
        let waiting = server.rules.knock;
        if server.rules.locked {
            return Err(JoinError::Locked);
        }
        let (line, bound, notice) = if waiting {
            let notice = protocol::knock(id.as_str(), info);
            (&mut server.waiting, self.settings.max_waiting, notice)
        } else {
            let notice = protocol::peer_joined(id.as_str());
            (
                &mut server.clients,
                self.settings.max_clients_per_server,
                notice,
            )
        };
        if line.len() >= bound {
            return Err(JoinError::ServerFull);
        }
        line.push(id);
        if server.seat.outbox.push(notice).is_err() {
            Self::evict_locked(&mut state, PeerId::Server(code), Some(TOO_SLOW));
            return Err(JoinError::UnknownServer);
        }
        let token = self.fresh_token();
        let seat = self.new_seat(&mut state, PeerId::Client(id), outbox, token);
        let token = token.map(|token| token.encode());
        let greeting = Greeting {
            id: id.as_str(),
            resume: self.resumption(token.as_deref(), None),
            waiting,
        };
        state.greet(&seat.outbox, hello(&greeting));
        let entry = ClientEntry {
            seat,
            server: code,
            waiting,
        };
        state.record_member(code, id, &entry);
        let generation = entry.seat.generation;
        state.clients.insert(id, entry);
        Ok((self.membership(PeerId::Client(id), generation), waiting))
    }

    /// The server `code` lets the knocker `id` in: it hears ADMITTED, the server PEER_JOINED.
    pub fn admit(&self, code: JoinCode, id: ClientId) -> Result<(), CommandError> {
        let mut state = self.lock();
        let server = state
            .servers
            .get_mut(&code)
            .ok_or(CommandError::UnknownPeer)?;
        let place = server.waiting.iter().position(|knocker| *knocker == id);
        let place = place.ok_or(CommandError::UnknownPeer)?;
        if server.clients.len() >= self.settings.max_clients_per_server {
            return Err(CommandError::ServerFull);
        }
        server.waiting.remove(place);
        server.clients.push(id);
        let joined = server.seat.outbox.push(protocol::peer_joined(id.as_str()));
        if let Some(client) = state.clients.get_mut(&id) {
            client.waiting = false;
            let admitted = client.seat.outbox.push(protocol::admitted());
            if let Some(token) = client.seat.token {
                let (peer, token) = (PeerId::Client(id), Some(token));
                state.record(RecordChange::Token { code, peer, token });
            }
            if admitted.is_err() {
                Self::evict_locked(&mut state, PeerId::Client(id), Some(TOO_SLOW));
            }
        }
        if joined.is_err() {
            Self::evict_locked(&mut state, PeerId::Server(code), Some(TOO_SLOW));
        }
        Ok(())
    }

    /// The server `code` turns the knocker `id` away (ERROR `DENIED`, close `4403`); the server
    /// hears KNOCK_GONE `denied`.
    pub fn deny(
        &self,
        code: JoinCode,
        id: ClientId,
        reason: Option<&str>,
    ) -> Result<(), CommandError> {
        self.remove_for_server(code, id, reason, &DENIAL)
    }

    /// The server `code` removes its member `id` (ERROR `KICKED`, close `4403`); the server
    /// hears PEER_GONE with `"reason": "kicked"`.
    pub fn kick(
        &self,
        code: JoinCode,
        id: ClientId,
        reason: Option<&str>,
    ) -> Result<(), CommandError> {
        self.remove_for_server(code, id, reason, &KICK)
    }

    fn remove_for_server(
        &self,
        code: JoinCode,
        id: ClientId,
        reason: Option<&str>,
        removal: &Removal,
    ) -> Result<(), CommandError> {
        let mut state = self.lock();
        let listed = state.servers.get(&code).is_some_and(|server| {
            let line = if removal.knocker {
                &server.waiting
            } else {
                &server.clients
            };
            line.contains(&id)
        });
        if !listed {
            return Err(CommandError::UnknownPeer);
        }
        let reason = reason.unwrap_or(removal.default_reason);
        let (error, closing, because) = (removal.error, removal.closing, removal.because);
        Self::remove_client(&mut state, id, error, reason, closing, because);
        Ok(())
    }

    /// Ends the knock of `id` if it still waits after `--knock-timeout`.
    pub fn knock_expired(&self, id: ClientId) {
        let mut state = self.lock();
        if state.clients.get(&id).is_some_and(|client| client.waiting) {
            let (code, reason) = (KNOCK_UNANSWERED.code, KNOCK_UNANSWERED.reason);
            Self::remove_client(&mut state, id, code, reason, KNOCK_TIMEOUT, "timeout");
        }
    }

    /// Removes a member or a knocker the relay closes with `closing` after an ERROR, and tells
    /// its server why (`because`).
    fn remove_client(
        state: &mut State,
        id: ClientId,
        error: ErrorCode,
        reason: &str,
        closing: Closing,
        because: &str,
    ) {
        let Some(client) = state.clients.remove(&id) else {
            return;
        };
        Self::forget_client(state, id, &client);
        let _ = client
            .seat
            .outbox
            .push(protocol::error(error, reason, None));
        client.seat.outbox.close(closing);
        let Some(server) = state.servers.get_mut(&client.server) else {
            return;
        };
        let told = if client.waiting {
            server.waiting.retain(|knocker| *knocker != id);
            server
                .seat
                .outbox
                .push(protocol::knock_gone(id.as_str(), because))
        } else {
            server.clients.retain(|member| *member != id);
            server.seat.outbox.push(protocol::peer_kicked(id.as_str()))
        };
        if told.is_err() {
            Self::evict_locked(state, PeerId::Server(client.server), Some(TOO_SLOW));
        }
    }

    /// Changes the room's settings where `locked` or `knock` is given, and sends its server the
    /// whole state (ROOM). Knockers keep waiting when knocking is turned off: letting them in is
    /// the server's to decide.
    pub fn set_rules(&self, code: JoinCode, locked: Option<bool>, knock: Option<bool>) {
        let mut state = self.lock();
        let Some(server) = state.servers.get_mut(&code) else {
            return;
        };
        server.rules.locked = locked.unwrap_or(server.rules.locked);
        server.rules.knock = knock.unwrap_or(server.rules.knock);
        let waiting: Vec<&str> = server.waiting.iter().map(ClientId::as_str).collect();
        let room = protocol::room(server.rules.locked, server.rules.knock, &waiting);
        let told = server.seat.outbox.push(room);
        let rules = server.rules;
        state.record(RecordChange::Rules { code, rules });
        if told.is_err() {
            Self::evict_locked(&mut state, PeerId::Server(code), Some(TOO_SLOW));
        }
    }

    /// Resumes the peer holding `token` for a new session whose queue holds at most
    /// `send_queue_bytes`: its HELLO (old id, `resumed`, a fresh token), then the frames it did
    /// not receive (after the first `received` of its last session, when it says), then those
    /// queued while it was away. A session still holding the peer is superseded (`4412`).
    pub fn resume(
        &self,
        token: Token,
        resuming: Resuming,
        received: Option<u64>,
        send_queue_bytes: usize,
        hello: impl FnOnce(&Greeting<'_>) -> String,
    ) -> Result<Seated, Refusal> {
        let policy = self.settings.resume.ok_or(RESUME_FAILED)?;
        let mut state = self.lock();
        let hash = token.hash();
        let id = *state.tokens.get(&hash).ok_or(RESUME_FAILED)?;
        let role_matches = match (id, resuming) {
            (PeerId::Server(code), Resuming::Server(said)) => said.is_none_or(|said| said == code),
            (PeerId::Client(client), Resuming::ClientOf(code)) => state
                .clients
                .get(&client)
                .is_some_and(|entry| entry.server == code),
            _ => false,
        };
        let waiting = match id {
            PeerId::Client(client) => state.clients.get(&client).is_some_and(|c| c.waiting),
            PeerId::Server(_) => false,
        };
        let generation = state.next_generation();
        let seat = state.seat(id).ok_or(RESUME_FAILED)?;
        if !role_matches || !seat.token.is_some_and(|held| held.matches(&hash)) {
            return Err(RESUME_FAILED);
        }
        let was_away = seat.away.is_some();
        let rest = seat.outbox.take_rest();
        let (replay, lost) = match seat.away.take() {
            Some(away) => (away.replay, away.lost),
            None => {
                let _ = seat.outbox.push(protocol::notice(SUPERSEDED_NOTICE));
                seat.outbox.close(SUPERSEDED);
                (rest.replay, false)
            }
        };
        let (replayed, gap) =
            received.map_or((Vec::new(), false), |received| replay.since(received));
        let fresh = Token::generate();
        let fresh_hash = fresh.hash();
        let encoded = fresh.encode();
        let resumption = self.resumption(Some(&encoded), Some((replayed.len(), gap || lost)));
        let greeting = Greeting {
            id: id.as_str(),
            resume: resumption,
            waiting,
        };
        let mut frames = VecDeque::with_capacity(1 + replayed.len() + rest.unwritten.len());
        frames.push_back(hello(&greeting));
        frames.extend(replayed);
        frames.extend(rest.unwritten);
        let (outbox, inbox) = outbox::preloaded(send_queue_bytes, policy.queue_bytes, frames);
        seat.outbox = outbox.clone();
        seat.token = Some(fresh_hash);
        seat.generation = generation;
        state.tokens.remove(&hash);
        state.tokens.insert(fresh_hash, id);
        let room = match id {
            PeerId::Server(code) => Some(code),
            PeerId::Client(client) => state
                .clients
                .get(&client)
                .filter(|c| !c.waiting)
                .map(|c| c.server),
        };
        if let Some(code) = room {
            let token = Some(fresh_hash);
            state.record(RecordChange::Token {
                code,
                peer: id,
                token,
            });
        }
        if was_away {
            state.away -= 1;
            state.tell_counterparts(id, &protocol::peer_back(id.as_str()));
        }
        if state.shutting_down {
            outbox.close(SHUTTING_DOWN);
        }
        Ok((self.membership(id, generation), outbox, inbox))
    }

    /// Ends the away time of the peer `id` if it is still away in the `generation`
    /// [`Membership::step_away`] returned: its counterparts hear PEER_GONE, as on a leave.
    /// Returns whether it was (a server's code is then free).
    pub fn expire(&self, id: PeerId, generation: u32) -> bool {
        let mut state = self.lock();
        let due = state
            .seat(id)
            .is_some_and(|seat| seat.away.is_some() && seat.generation == generation);
        if due {
            Self::evict_locked(&mut state, id, None);
        }
        due
    }

    /// Delivers `frame` from `from` to the peer named by `to`, if `from` may reach it.
    ///
    /// A client may reach only its own server (any forgiving spelling of the code); a server only
    /// its own clients. A live destination whose queue is full is disconnected as too slow, and
    /// the sender hears PEER_GONE as for any other leave; an away one's full queue refuses the
    /// frame.
    pub fn route(&self, from: PeerId, to: &str, frame: String) -> Result<(), RouteError> {
        let mut state = self.lock();
        let (destination, seat) = match from {
            PeerId::Client(sender) => {
                let entry = state.clients.get(&sender).ok_or(RouteError::UnknownPeer)?;
                if entry.waiting {
                    return Err(RouteError::NotAdmitted);
                }
                let server = entry.server;
                if JoinCode::parse(to) != Some(server) {
                    return Err(RouteError::UnknownPeer);
                }
                let entry = state.servers.get(&server).ok_or(RouteError::UnknownPeer)?;
                (PeerId::Server(server), &entry.seat)
            }
            PeerId::Server(sender) => {
                let id = ClientId::parse(to).ok_or(RouteError::UnknownPeer)?;
                let entry = state.clients.get(&id).ok_or(RouteError::UnknownPeer)?;
                if entry.server != sender || entry.waiting {
                    return Err(RouteError::UnknownPeer);
                }
                (PeerId::Client(id), &entry.seat)
            }
        };
        if seat.outbox.push(frame).is_err() {
            if seat.away.is_some() {
                return Err(RouteError::QueueFull);
            }
            Self::evict_locked(&mut state, destination, Some(TOO_SLOW));
        }
        Ok(())
    }

    /// Asks every peer, and any that registers later, to close with `1001` once what is queued for
    /// it is written. Sessions learn of it through their queues, so their loops watch nothing
    /// shared for shutdown.
    pub fn shut_down(&self) {
        let mut state = self.lock();
        state.shutting_down = true;
        let servers = state.servers.values().map(|server| &server.seat.outbox);
        for outbox in servers.chain(state.clients.values().map(|client| &client.seat.outbox)) {
            outbox.close(SHUTTING_DOWN);
        }
    }

    /// Numbers of live or away servers and clients.
    pub fn counts(&self) -> (usize, usize) {
        let state = self.lock();
        (state.servers.len(), state.clients.len())
    }

    /// Number of away peers.
    pub fn away_count(&self) -> usize {
        self.lock().away
    }

    /// Removes a peer's seat bookkeeping: its token, and its place among the away.
    fn vacate(state: &mut State, seat: &Seat) {
        if let Some(hash) = &seat.token {
            state.tokens.remove(hash);
        }
        if seat.away.is_some() {
            state.away -= 1;
        }
    }

    /// Removes a client's seat bookkeeping, and its token from its room's record.
    fn forget_client(state: &mut State, id: ClientId, client: &ClientEntry) {
        Self::vacate(state, &client.seat);
        if client.seat.token.is_some() && !client.waiting {
            let (code, peer) = (client.server, PeerId::Client(id));
            state.record(RecordChange::Token {
                code,
                peer,
                token: None,
            });
        }
    }

    /// Removes a peer and tells its counterparts; with `closing`, also asks the peer to close.
    ///
    /// A counterpart whose queue cannot take PEER_GONE is too slow. A server is evicted in turn,
    /// which only closes its clients; a client is closed at once. So a leave takes at most two
    /// steps, and the loop needs no queue: a leave allocates nothing.
    fn evict_locked(state: &mut State, id: PeerId, closing: Option<Closing>) {
        let mut next = Some((id, closing));
        while let Some((id, closing)) = next.take() {
            match id {
                PeerId::Server(code) => {
                    let Some(server) = state.servers.remove(&code) else {
                        continue;
                    };
                    Self::vacate(state, &server.seat);
                    if let Some(closing) = closing {
                        server.seat.outbox.close(closing);
                    }
                    let gone = protocol::peer_gone(code.as_str());
                    for client_id in server.clients.into_iter().chain(server.waiting) {
                        if let Some(client) = state.clients.remove(&client_id) {
                            Self::vacate(state, &client.seat);
                            let closing = match client.seat.outbox.push(gone.clone()) {
                                Ok(()) => SERVER_GONE,
                                Err(_) => TOO_SLOW,
                            };
                            client.seat.outbox.close(closing);
                        }
                    }
                }
                PeerId::Client(client_id) => {
                    let Some(client) = state.clients.remove(&client_id) else {
                        continue;
                    };
                    Self::forget_client(state, client_id, &client);
                    if let Some(closing) = closing {
                        client.seat.outbox.close(closing);
                    }
                    if let Some(server) = state.servers.get_mut(&client.server) {
                        let gone = if client.waiting {
                            server.waiting.retain(|c| *c != client_id);
                            protocol::knock_gone(client_id.as_str(), "left")
                        } else {
                            server.clients.retain(|c| *c != client_id);
                            protocol::peer_gone(client_id.as_str())
                        };
                        if server.seat.outbox.push(gone).is_err() {
                            next = Some((PeerId::Server(client.server), Some(TOO_SLOW)));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::outbox::{self, Inbox};

    const ROOMY: usize = 1 << 20;

    fn hello(greeting: &Greeting<'_>) -> String {
        greeted(greeting.id)
    }

    /// The HELLO [`hello`] builds for `id`.
    fn greeted(id: &str) -> String {
        format!("HELLO {id}")
    }

    /// Everything queued for a peer, and the close it was asked for, without waiting.
    async fn drain(inbox: &Inbox) -> (Vec<String>, Option<Closing>) {
        let mut frames = Vec::new();
        loop {
            let next =
                tokio::time::timeout(std::time::Duration::from_millis(10), inbox.next_batch())
                    .await;
            match next {
                Ok(Ok(batch)) => frames.extend(batch),
                Ok(Err(closing)) => return (frames, Some(closing)),
                Err(_) => return (frames, None),
            }
        }
    }

    fn server(hub: &Hub) -> (Membership, Inbox, JoinCode) {
        server_with_room(hub, ROOMY)
    }

    /// A server whose queue holds at most `limit_bytes`.
    fn server_with_room(hub: &Hub, limit_bytes: usize) -> (Membership, Inbox, JoinCode) {
        let (outbox, inbox) = outbox::bounded(limit_bytes);
        let membership = hub
            .register_server(outbox, RoomRules::default(), hello)
            .expect("a free code");
        let PeerId::Server(code) = membership.id() else {
            panic!("a server gets a code")
        };
        (membership, inbox, code)
    }

    fn client(hub: &Hub, code: JoinCode) -> (Membership, Inbox, ClientId) {
        let (outbox, inbox) = outbox::bounded(ROOMY);
        let membership = hub
            .join(code, outbox, None, hello)
            .map(|(m, _)| m)
            .expect("joins");
        let PeerId::Client(id) = membership.id() else {
            panic!("a client gets a client id")
        };
        (membership, inbox, id)
    }

    #[tokio::test]
    async fn hello_first_then_peer_joined() {
        let hub = Hub::new(6, 8);
        let (_s, server_inbox, code) = server(&hub);
        let (_c, client_inbox, id) = client(&hub, code);
        assert_eq!(
            drain(&server_inbox).await.0,
            [greeted(code.as_str()), protocol::peer_joined(id.as_str())]
        );
        assert_eq!(drain(&client_inbox).await.0, [greeted(id.as_str())]);
        assert_eq!(hub.counts(), (1, 1));
    }

    #[tokio::test]
    async fn routing_matrix() {
        let hub = Hub::new(6, 8);
        let (a, a_inbox, a_code) = server(&hub);
        let (b, _b_inbox, b_code) = server(&hub);
        let (a1, _a1_inbox, a1_id) = client(&hub, a_code);
        let (b1, _b1_inbox, b1_id) = client(&hub, b_code);
        drain(&a_inbox).await;

        let lower = a_code.as_str().to_lowercase();
        assert_eq!(hub.route(a1.id(), &lower, "to a".into()), Ok(()));
        assert_eq!(drain(&a_inbox).await.0, ["to a"]);
        assert_eq!(hub.route(a.id(), a1_id.as_str(), "to a1".into()), Ok(()));

        assert_eq!(
            hub.route(a1.id(), b_code.as_str(), "x".into()),
            Err(RouteError::UnknownPeer)
        );
        assert_eq!(
            hub.route(a1.id(), b1_id.as_str(), "x".into()),
            Err(RouteError::UnknownPeer)
        );
        assert_eq!(
            hub.route(a.id(), b1_id.as_str(), "x".into()),
            Err(RouteError::UnknownPeer)
        );
        assert_eq!(
            hub.route(a.id(), b_code.as_str(), "x".into()),
            Err(RouteError::UnknownPeer)
        );
        assert_eq!(
            hub.route(b.id(), a1_id.as_str(), "x".into()),
            Err(RouteError::UnknownPeer)
        );
        assert_eq!(
            hub.route(b1.id(), "0", "x".into()),
            Err(RouteError::UnknownPeer)
        );
    }

    #[tokio::test]
    async fn unknown_and_full_servers_refuse_joins() {
        let hub = Hub::new(6, 1);
        let (_s, _inbox, code) = server(&hub);
        let (_c, _c_inbox, _) = client(&hub, code);
        let (outbox, _) = outbox::bounded(ROOMY);
        assert_eq!(
            hub.join(code, outbox.clone(), None, hello)
                .map(|(m, _)| m)
                .err(),
            Some(JoinError::ServerFull)
        );
        let other = JoinCode::parse("ZZZZZZ").expect("valid");
        assert_eq!(
            hub.join(other, outbox, None, hello).map(|(m, _)| m).err(),
            Some(JoinError::UnknownServer)
        );
    }

    #[tokio::test]
    async fn client_leaving_tells_its_server() {
        let hub = Hub::new(6, 8);
        let (_s, server_inbox, code) = server(&hub);
        let (c, _c_inbox, id) = client(&hub, code);
        drain(&server_inbox).await;
        drop(c);
        assert_eq!(
            drain(&server_inbox).await,
            (vec![protocol::peer_gone(id.as_str())], None)
        );
        assert_eq!(hub.counts(), (1, 0));
    }

    #[tokio::test]
    async fn server_leaving_tells_and_closes_its_clients() {
        let hub = Hub::new(6, 8);
        let (s, _inbox, code) = server(&hub);
        let (c1, c1_inbox, _) = client(&hub, code);
        let (_c2, c2_inbox, _) = client(&hub, code);
        drain(&c1_inbox).await;
        drain(&c2_inbox).await;
        drop(s);
        for inbox in [&c1_inbox, &c2_inbox] {
            assert_eq!(
                drain(inbox).await,
                (vec![protocol::peer_gone(code.as_str())], Some(SERVER_GONE))
            );
        }
        assert_eq!(hub.counts(), (0, 0));
        assert_eq!(
            hub.route(c1.id(), code.as_str(), "x".into()),
            Err(RouteError::UnknownPeer)
        );
    }

    #[tokio::test]
    async fn a_full_queue_disconnects_the_slow_peer_not_the_sender() {
        let hub = Hub::new(6, 8);
        let (s, server_inbox, code) = server(&hub);
        let (slow_outbox, slow_inbox) = outbox::bounded(64);
        let slow = hub
            .join(code, slow_outbox, None, hello)
            .map(|(m, _)| m)
            .expect("joins");
        drain(&server_inbox).await;
        let mut delivered = 0;
        while hub.counts().1 == 1 {
            hub.route(s.id(), slow.id().as_str(), "x".repeat(20))
                .expect("routable until evicted");
            delivered += 1;
        }
        assert_eq!(
            delivered, 2,
            "64 bytes hold the 27-byte HELLO and one 20-byte frame"
        );
        let (frames, closing) = drain(&slow_inbox).await;
        assert_eq!(frames.len(), 2);
        assert_eq!(closing, Some(TOO_SLOW));
        assert_eq!(
            drain(&server_inbox).await.0,
            [protocol::peer_gone(slow.id().as_str())]
        );
        assert_eq!(
            hub.route(s.id(), slow.id().as_str(), "x".into()),
            Err(RouteError::UnknownPeer)
        );
    }

    #[tokio::test]
    async fn a_leave_the_server_has_no_room_to_hear_evicts_the_server_and_closes_its_clients() {
        let hub = Hub::new(6, 8);
        // Room for HELLO and two PEER_JOINED, and not a byte more.
        let joined = protocol::peer_joined(&"x".repeat(crate::relay::ids::CLIENT_ID_LENGTH)).len();
        let (_s, server_inbox, code) = server_with_room(&hub, greeted("ABCDEF").len() + 2 * joined);
        let (leaving, _leaving_inbox, _) = client(&hub, code);
        let (_staying, staying_inbox, _) = client(&hub, code);
        drain(&staying_inbox).await;
        drop(leaving);
        assert_eq!(drain(&server_inbox).await.1, Some(TOO_SLOW));
        assert_eq!(
            drain(&staying_inbox).await,
            (vec![protocol::peer_gone(code.as_str())], Some(SERVER_GONE))
        );
        assert_eq!(hub.counts(), (0, 0));
    }

    #[tokio::test]
    async fn shutting_down_closes_every_peer_after_what_is_queued_and_any_that_registers_later() {
        let hub = Hub::new(6, 8);
        let (s, server_inbox, code) = server(&hub);
        let (c, client_inbox, id) = client(&hub, code);
        drain(&server_inbox).await;
        hub.route(s.id(), id.as_str(), "last words".into())
            .expect("routable");
        hub.shut_down();
        assert_eq!(
            drain(&client_inbox).await,
            (
                vec![greeted(id.as_str()), "last words".into()],
                Some(SHUTTING_DOWN)
            )
        );
        assert_eq!(drain(&server_inbox).await, (vec![], Some(SHUTTING_DOWN)));
        drop(c);
        assert_eq!(
            drain(&server_inbox).await,
            (vec![], Some(SHUTTING_DOWN)),
            "PEER_GONE is not queued behind a close"
        );
        let (_late, late_inbox, late_code) = server(&hub);
        assert_eq!(
            drain(&late_inbox).await,
            (vec![greeted(late_code.as_str())], Some(SHUTTING_DOWN))
        );
    }

    #[test]
    fn codes_are_unique_among_live_servers() {
        let hub = Hub::new(4, 8);
        let memberships: Vec<_> = (0..2000)
            .map(|_| {
                hub.register_server(outbox::bounded(ROOMY).0, RoomRules::default(), hello)
                    .expect("a free code")
            })
            .collect();
        let mut codes: Vec<_> = memberships.iter().map(|m| m.id().to_string()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), 2000);
    }

    #[test]
    fn an_exhausted_code_space_refuses_the_newcomer_after_a_bounded_search() {
        // 4-character codes number 32⁴ = 1,048,576: fill every one of them.
        let hub = Hub::new(4, 8);
        {
            let mut state = hub.lock();
            let (outbox, _) = outbox::bounded(ROOMY);
            for n in 0..32u32.pow(4) {
                let text: String = (0..4)
                    .map(|place| crate::relay::ids::CROCKFORD[(n >> (5 * place)) as usize % 32])
                    .collect();
                let code = JoinCode::parse(&text).expect("a code");
                let seat = Seat {
                    outbox: outbox.clone(),
                    generation: 0,
                    token: None,
                    away: None,
                };
                let entry = ServerEntry {
                    seat,
                    clients: Vec::new(),
                    waiting: Vec::new(),
                    rules: RoomRules::default(),
                };
                state.servers.insert(code, entry);
            }
        }
        let refused = hub.register_server(outbox::bounded(ROOMY).0, RoomRules::default(), hello);
        assert_eq!(refused.err(), Some(NoFreeId));
    }

    #[tokio::test]
    async fn a_hello_that_does_not_fit_closes_the_peer_rather_than_leaving_it_without_one() {
        let hub = Hub::new(6, 8);
        let (outbox, inbox) = outbox::bounded(4);
        let _member = hub
            .register_server(outbox, RoomRules::default(), hello)
            .expect("a free code");
        assert_eq!(drain(&inbox).await, (vec![], Some(TOO_SLOW)));
    }

    fn resumable_hub(max_away: usize) -> Hub {
        Hub::new(6, 8).resumable(ResumePolicy {
            window: std::time::Duration::from_secs(30),
            queue_bytes: 1024,
            max_away,
        })
    }

    /// Registers with `hub`'s own queue, keeping the token its HELLO carried.
    fn seated(hub: &Hub, code: Option<JoinCode>) -> (Membership, Inbox, Token) {
        let (outbox, inbox) = hub.queue(ROOMY);
        let token = std::cell::Cell::new(None);
        let keep = |greeting: &Greeting<'_>| {
            let resume = greeting.resume;
            token.set(resume.and_then(|r| Token::parse(r.token.as_bytes())));
            "HELLO".to_owned()
        };
        let membership = match code {
            None => hub
                .register_server(outbox, RoomRules::default(), keep)
                .expect("a code"),
            Some(code) => hub
                .join(code, outbox, None, keep)
                .map(|(m, _)| m)
                .expect("joins"),
        };
        (membership, inbox, token.get().expect("a token"))
    }

    /// A server registered as [`seated`] does, with its code.
    fn seated_server(hub: &Hub) -> (Membership, Inbox, Token, JoinCode) {
        let (membership, inbox, token) = seated(hub, None);
        let PeerId::Server(code) = membership.id() else {
            panic!("a server")
        };
        (membership, inbox, token, code)
    }

    fn resumed_hello(greeting: &Greeting<'_>) -> String {
        let (id, resume) = (greeting.id, greeting.resume.expect("resume fields"));
        format!(
            "HELLO {id} resumed={} replayed={:?} gap={}",
            resume.resumed, resume.replayed, resume.gap
        )
    }

    #[tokio::test]
    async fn an_away_client_keeps_its_place_and_resumes_with_what_was_sent_meanwhile() {
        let hub = resumable_hub(8);
        let (server, server_inbox, _, code) = seated_server(&hub);
        let (mut client, client_inbox, token) = seated(&hub, Some(code));
        let id = client.id();
        drain(&client_inbox).await;
        drain(&server_inbox).await;

        assert!(client.step_away().is_some(), "away");
        hub.route(server.id(), id.as_str(), "while away".into())
            .expect("queued");
        let (back, _, inbox) = hub
            .resume(token, Resuming::ClientOf(code), None, ROOMY, resumed_hello)
            .expect("resumes");

        assert_eq!(back.id(), id);
        assert_eq!(
            drain(&inbox).await.0,
            [
                format!(
                    "HELLO {} resumed=true replayed=Some(0) gap=false",
                    id.as_str()
                ),
                "while away".into()
            ]
        );
        assert_eq!(
            drain(&server_inbox).await.0,
            [
                protocol::peer_away(id.as_str()),
                protocol::peer_back(id.as_str())
            ]
        );
        assert_eq!(hub.away_count(), 0);
    }

    #[tokio::test]
    async fn a_token_is_single_use_and_a_stale_timer_expires_nothing() {
        let hub = resumable_hub(8);
        let (mut server, _inbox, token) = seated(&hub, None);
        let id = server.id();
        let away = server.step_away().expect("away");
        let (mut back, _, _) = hub
            .resume(token, Resuming::Server(None), None, ROOMY, resumed_hello)
            .expect("resumes");

        assert_eq!(
            hub.resume(token, Resuming::Server(None), None, ROOMY, resumed_hello)
                .err(),
            Some(RESUME_FAILED)
        );
        assert!(!hub.expire(id, away), "the resumed seat is newer");
        let again = back.step_away().expect("away again");
        assert!(hub.expire(id, again));
        assert_eq!(hub.counts(), (0, 0));
    }

    #[tokio::test]
    async fn a_resume_of_a_live_peer_supersedes_its_session() {
        let hub = resumable_hub(8);
        let (mut old, old_inbox, token) = seated(&hub, None);
        drain(&old_inbox).await;

        let (_new, _, _) = hub
            .resume(token, Resuming::Server(None), None, ROOMY, resumed_hello)
            .expect("resumes");

        assert_eq!(
            drain(&old_inbox).await,
            (vec![protocol::notice(SUPERSEDED_NOTICE)], Some(SUPERSEDED))
        );
        old.leave();
        assert_eq!(
            hub.counts(),
            (1, 0),
            "the old session cannot evict the new one"
        );
    }

    #[tokio::test]
    async fn a_token_resumes_only_its_own_role_and_room() {
        let hub = resumable_hub(8);
        let (_server, _, server_token, code) = seated_server(&hub);
        let (_client, _, client_token) = seated(&hub, Some(code));
        let other = JoinCode::parse("ZZZZZZ").expect("a code");

        for (token, resuming) in [
            (server_token, Resuming::ClientOf(code)),
            (client_token, Resuming::Server(None)),
            (client_token, Resuming::ClientOf(other)),
        ] {
            let refused = hub.resume(token, resuming, None, ROOMY, resumed_hello);
            assert_eq!(refused.err(), Some(RESUME_FAILED));
        }
    }

    #[tokio::test]
    async fn beyond_max_away_a_loss_is_a_leave() {
        let hub = resumable_hub(0);
        let (_server, server_inbox, _, code) = seated_server(&hub);
        let (mut client, _, _) = seated(&hub, Some(code));
        let id = client.id();
        drain(&server_inbox).await;

        assert_eq!(client.step_away(), None);
        assert_eq!(
            drain(&server_inbox).await.0,
            [protocol::peer_gone(id.as_str())]
        );
    }

    /// A server of `hub` with `rules`, its queue and code.
    fn room_with(hub: &Hub, rules: RoomRules) -> (Membership, Inbox, JoinCode) {
        let (outbox, inbox) = outbox::bounded(ROOMY);
        let server = hub.register_server(outbox, rules, hello).expect("a code");
        let PeerId::Server(code) = server.id() else {
            panic!("a server")
        };
        (server, inbox, code)
    }

    #[tokio::test]
    async fn a_knocker_is_no_member_until_admitted() {
        let hub = Hub::new(6, 8);
        let knocking = RoomRules {
            locked: false,
            knock: true,
        };
        let (server, server_inbox, code) = room_with(&hub, knocking);
        let (outbox, inbox) = outbox::bounded(ROOMY);
        let (knocker, waiting) = hub.join(code, outbox, Some("Ada"), hello).expect("knocks");
        let PeerId::Client(id) = knocker.id() else {
            panic!("a client")
        };

        assert!(waiting);
        assert_eq!(
            hub.route(knocker.id(), code.as_str(), "x".into()),
            Err(RouteError::NotAdmitted)
        );
        assert_eq!(
            hub.route(server.id(), id.as_str(), "x".into()),
            Err(RouteError::UnknownPeer)
        );
        hub.admit(code, id).expect("admitted");
        hub.route(knocker.id(), code.as_str(), "hi".into())
            .expect("a member now");

        assert_eq!(
            drain(&server_inbox).await.0,
            [
                greeted(code.as_str()),
                protocol::knock(id.as_str(), Some("Ada")),
                protocol::peer_joined(id.as_str()),
                "hi".into()
            ]
        );
        assert_eq!(
            drain(&inbox).await.0,
            [greeted(id.as_str()), protocol::admitted()]
        );
    }

    #[tokio::test]
    async fn kick_and_deny_close_with_4403_and_tell_the_server_why() {
        let hub = Hub::new(6, 8);
        let (_server, server_inbox, code) = room_with(&hub, RoomRules::default());
        let (member, member_inbox, member_id) = client(&hub, code);
        hub.set_rules(code, None, Some(true));
        let (outbox, knocker_inbox) = outbox::bounded(ROOMY);
        let (knocker, _) = hub.join(code, outbox, None, hello).expect("knocks");
        let PeerId::Client(knocker_id) = knocker.id() else {
            panic!("a client")
        };
        drain(&server_inbox).await;

        hub.kick(code, member_id, None).expect("a member");
        hub.deny(code, knocker_id, Some("no")).expect("a knocker");

        assert_eq!(drain(&member_inbox).await.1, Some(KICKED));
        assert_eq!(drain(&knocker_inbox).await.1, Some(DENIED));
        assert_eq!(
            drain(&server_inbox).await.0,
            [
                protocol::peer_kicked(member_id.as_str()),
                protocol::knock_gone(knocker_id.as_str(), "denied")
            ]
        );
        assert_eq!(
            hub.kick(code, member_id, None),
            Err(CommandError::UnknownPeer)
        );
        drop(member);
        assert_eq!(hub.counts(), (1, 0));
    }

    #[tokio::test]
    async fn a_locked_room_refuses_joins_and_reports_its_state() {
        let hub = Hub::new(6, 8);
        let (_server, server_inbox, code) = room_with(&hub, RoomRules::default());
        drain(&server_inbox).await;

        hub.set_rules(code, Some(true), None);

        assert_eq!(
            drain(&server_inbox).await.0,
            [protocol::room(true, false, &[])]
        );
        let refused = hub.join(code, outbox::bounded(ROOMY).0, None, hello);
        assert_eq!(refused.err(), Some(JoinError::Locked));
    }

    /// Keeps every record change the hub makes, as (code, field, value) like the directory's.
    #[derive(Default)]
    struct Changes(Mutex<Vec<(String, String, String)>>);

    impl Recorder for Changes {
        fn record(&self, change: RecordChange) {
            let row = match change {
                RecordChange::Token { code, peer, token } => (
                    code.as_str().to_owned(),
                    peer.as_str().to_owned(),
                    token.map_or_else(String::new, |token| token.to_text()),
                ),
                RecordChange::Rules { code, rules } => (
                    code.as_str().to_owned(),
                    "rules".to_owned(),
                    format!("{}{}", rules.locked, rules.knock),
                ),
            };
            self.0.lock().expect("not poisoned").push(row);
        }
    }

    impl Changes {
        fn take(&self) -> Vec<(String, String, String)> {
            std::mem::take(&mut self.0.lock().expect("not poisoned"))
        }
    }

    #[tokio::test]
    async fn the_record_follows_each_members_token_and_the_rules() {
        let changes = Arc::new(Changes::default());
        let hub = resumable_hub(8);
        hub.set_recorder(changes.clone());
        let (_server, _server_inbox, _, code) = seated_server(&hub);
        let room = code.as_str().to_owned();

        let (mut client, _inbox, token) = seated(&hub, Some(code));
        let id = client.id().as_str().to_owned();
        assert_eq!(
            changes.take(),
            [(room.clone(), id.clone(), token.hash().to_text())]
        );

        client.step_away().expect("away");
        let (mut back, _, _) = hub
            .resume(token, Resuming::ClientOf(code), None, ROOMY, resumed_hello)
            .expect("resumes");
        let fresh = changes.take();
        assert_eq!(fresh.len(), 1);
        assert_eq!((&fresh[0].0, &fresh[0].1), (&room, &id));
        assert_ne!(fresh[0].2, token.hash().to_text(), "the fresh token's hash");

        back.leave();
        hub.set_rules(code, Some(true), None);
        assert_eq!(
            changes.take(),
            [
                (room.clone(), id, String::new()),
                (room, "rules".into(), "truefalse".into())
            ]
        );
    }

    #[tokio::test]
    async fn a_reclaimed_room_greets_its_server_as_resumed_and_keeps_its_members_away() {
        let hub = resumable_hub(8);
        let code = JoinCode::generate(6);
        let (ada, bob) = (ClientId::generate(), ClientId::generate());
        let ada_token = Token::generate();
        let reclaim = Reclaim {
            code,
            token: Token::generate(),
            rules: RoomRules {
                locked: true,
                knock: false,
            },
            members: vec![(ada, ada_token.hash()), (bob, Token::generate().hash())],
        };
        let (outbox, server_inbox) = outbox::bounded(ROOMY);

        let (_server, away) = hub
            .reclaim_server(reclaim, outbox, resumed_hello)
            .expect("reclaimed");

        let ids: Vec<ClientId> = away.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [ada, bob]);
        assert_eq!(hub.away_count(), 2);
        assert_eq!(
            drain(&server_inbox).await.0,
            [
                format!(
                    "HELLO {} resumed=true replayed=Some(0) gap=true",
                    code.as_str()
                ),
                protocol::peer_away(ada.as_str()),
                protocol::peer_away(bob.as_str()),
            ]
        );
        let refused = hub.join(code, outbox::bounded(ROOMY).0, None, hello);
        assert_eq!(
            refused.err(),
            Some(JoinError::Locked),
            "the rules came back"
        );

        let (_ada, _, ada_inbox) = hub
            .resume(
                ada_token,
                Resuming::ClientOf(code),
                Some(3),
                ROOMY,
                resumed_hello,
            )
            .expect("ada resumes");
        assert!(
            hub.expire(PeerId::Client(bob), away[1].1),
            "bob never came back"
        );

        assert_eq!(
            drain(&ada_inbox).await.0,
            [format!(
                "HELLO {} resumed=true replayed=Some(0) gap=true",
                ada.as_str()
            )]
        );
        assert_eq!(
            drain(&server_inbox).await.0,
            [
                protocol::peer_back(ada.as_str()),
                protocol::peer_gone(bob.as_str())
            ]
        );
    }

    #[tokio::test]
    async fn a_stale_session_of_a_room_given_up_and_taken_back_cannot_touch_the_new_seats() {
        let hub = resumable_hub(8);
        let (mut stale, _inbox, token, code) = seated_server(&hub);
        hub.give_up(code, SHUTTING_DOWN);
        let reclaim = Reclaim {
            code,
            token,
            rules: RoomRules::default(),
            members: Vec::new(),
        };
        let (outbox, _server_inbox) = outbox::bounded(ROOMY);
        let (_taken_back, _) = hub
            .reclaim_server(reclaim, outbox, resumed_hello)
            .expect("reclaimed");

        assert_eq!(stale.step_away(), None, "an older generation");
        stale.leave();

        assert_eq!(hub.counts(), (1, 0), "the room taken back stays");
        assert_eq!(hub.away_count(), 0);
    }

    #[tokio::test]
    async fn a_room_given_up_closes_its_members_quietly_and_forgets_every_token() {
        let hub = resumable_hub(8);
        let (_server, server_inbox, _, code) = seated_server(&hub);
        let (_client, client_inbox, token) = seated(&hub, Some(code));
        drain(&client_inbox).await;
        drain(&server_inbox).await;

        hub.give_up(code, SHUTTING_DOWN);

        assert_eq!(drain(&client_inbox).await, (vec![], Some(SHUTTING_DOWN)));
        let (frames, closing) = drain(&server_inbox).await;
        assert_eq!(frames, [protocol::notice(SUPERSEDED_NOTICE)]);
        assert_eq!(closing, Some(SUPERSEDED));
        assert_eq!(hub.counts(), (0, 0));
        let resumed = hub.resume(token, Resuming::ClientOf(code), None, ROOMY, resumed_hello);
        assert!(resumed.is_err(), "its tokens go with it");
    }

    #[tokio::test]
    async fn a_reclaimed_room_tells_its_server_of_members_beyond_the_bounds_as_gone() {
        let hub = resumable_hub(1);
        let (ada, bob) = (ClientId::generate(), ClientId::generate());
        let reclaim = Reclaim {
            code: JoinCode::generate(6),
            token: Token::generate(),
            rules: RoomRules::default(),
            members: vec![
                (ada, Token::generate().hash()),
                (bob, Token::generate().hash()),
            ],
        };
        let (outbox, server_inbox) = outbox::bounded(ROOMY);

        let (_server, away) = hub
            .reclaim_server(reclaim, outbox, resumed_hello)
            .expect("reclaimed");

        assert_eq!(away.len(), 1, "at most --max-away-peers");
        assert_eq!(away[0].0, ada);
        let frames = drain(&server_inbox).await.0;
        assert_eq!(
            frames[1..],
            [
                protocol::peer_away(ada.as_str()),
                protocol::peer_gone(bob.as_str())
            ]
        );
    }
}
