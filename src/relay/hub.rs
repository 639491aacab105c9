//! The registry of live peers and the rules of who may send to whom.
//!
//! One `std::sync::Mutex` guards both maps and is taken once per operation. No operation awaits
//! while holding it: whatever must reach another peer is pushed into that peer's bounded
//! [`Outbox`] and written by the peer's own task.

use crate::relay::ids::{ClientId, JoinCode};
use crate::relay::outbox::Outbox;
use crate::relay::outcome::{Closing, Refusal, SERVER_GONE, SHUTTING_DOWN, TOO_SLOW};
use crate::relay::protocol;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

/// A handle to the registry; cheap to clone, one per connection.
#[derive(Clone)]
pub struct Hub {
    state: Arc<Mutex<State>>,
    code_length: usize,
    max_clients_per_server: usize,
}

#[derive(Default)]
struct State {
    servers: HashMap<JoinCode, ServerEntry>,
    clients: HashMap<ClientId, ClientEntry>,
    /// Set by [`Hub::shut_down`]: peers that register later are closed at once.
    shutting_down: bool,
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
}

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

struct ServerEntry {
    outbox: Outbox,
    /// Never longer than `Hub::max_clients_per_server`.
    clients: Vec<ClientId>,
}

struct ClientEntry {
    outbox: Outbox,
    server: JoinCode,
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
    /// The server holds its maximum number of clients.
    #[error("the server is full")]
    ServerFull,
}

/// `to` names no peer the sender may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no such peer, or not one you may send to")]
pub struct UnknownPeer;

/// Live membership in the hub; dropping it removes the peer and tells its counterparts.
///
/// Holding cleanup in `Drop` means PEER_GONE goes out on every exit path, panics included.
pub struct Membership {
    hub: Hub,
    id: PeerId,
    /// Set once the peer has left, so a later drop cannot evict a newer peer given the same code.
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
            self.hub.evict(self.id, None);
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.leave();
    }
}

impl Hub {
    /// An empty registry issuing `code_length`-character codes.
    pub fn new(code_length: usize, max_clients_per_server: usize) -> Hub {
        Hub {
            state: Arc::default(),
            code_length,
            max_clients_per_server,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every operation leaves the maps consistent before it can panic, so poison is ignored.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a server under a fresh unique code; `hello` builds its first frame from the code.
    pub fn register_server(
        &self,
        outbox: Outbox,
        hello: impl FnOnce(&str) -> String,
    ) -> Result<Membership, NoFreeId> {
        let mut state = self.lock();
        let code = self.free_code(&state)?;
        Ok(self.insert_server(&mut state, code, outbox, hello))
    }

    /// A code no live server here holds, for a claim in the cluster directory before
    /// [`Hub::register_server_as`].
    pub fn fresh_code(&self) -> Result<JoinCode, NoFreeId> {
        self.free_code(&self.lock())
    }

    /// Registers a server under `code`, claimed in the cluster directory beforehand; fails if a
    /// server here holds it already.
    pub fn register_server_as(
        &self,
        code: JoinCode,
        outbox: Outbox,
        hello: impl FnOnce(&str) -> String,
    ) -> Result<Membership, NoFreeId> {
        let mut state = self.lock();
        if state.servers.contains_key(&code) {
            return Err(NoFreeId);
        }
        Ok(self.insert_server(&mut state, code, outbox, hello))
    }

    fn free_code(&self, state: &State) -> Result<JoinCode, NoFreeId> {
        free_id(
            || JoinCode::generate(self.code_length),
            |code| state.servers.contains_key(code),
        )
        .ok_or(NoFreeId)
    }

    fn insert_server(
        &self,
        state: &mut State,
        code: JoinCode,
        outbox: Outbox,
        hello: impl FnOnce(&str) -> String,
    ) -> Membership {
        state.greet(&outbox, hello(code.as_str()));
        state.servers.insert(
            code,
            ServerEntry {
                outbox,
                clients: Vec::new(),
            },
        );
        Membership {
            hub: self.clone(),
            id: PeerId::Server(code),
            left: false,
        }
    }

    /// Whether a live server here has `code`.
    pub fn holds(&self, code: &JoinCode) -> bool {
        self.lock().servers.contains_key(code)
    }

    /// The codes of every live server here, for claiming them again in the cluster directory.
    pub fn server_codes(&self) -> Vec<JoinCode> {
        self.lock().servers.keys().copied().collect()
    }

    /// Tells the server with `code` why with the refusal's ERROR, then closes it and its room.
    pub fn close_server(&self, code: JoinCode, refusal: Refusal) {
        let mut state = self.lock();
        if let Some(server) = state.servers.get(&code) {
            let _ = server.outbox.push(protocol::notice(refusal.notice));
            Self::evict_locked(&mut state, PeerId::Server(code), Some(refusal.closing));
        }
    }

    /// Adds a client to the server with `code` and tells that server with PEER_JOINED.
    ///
    /// The client's HELLO is queued before the server can learn its id, so it always comes first.
    pub fn join(
        &self,
        code: JoinCode,
        outbox: Outbox,
        hello: impl FnOnce(&str) -> String,
    ) -> Result<Membership, JoinError> {
        let mut state = self.lock();
        let id = free_id(ClientId::generate, |id| state.clients.contains_key(id))
            .ok_or(JoinError::NoFreeId)?;
        let server = state
            .servers
            .get_mut(&code)
            .ok_or(JoinError::UnknownServer)?;
        if server.clients.len() >= self.max_clients_per_server {
            return Err(JoinError::ServerFull);
        }
        if server
            .outbox
            .push(protocol::peer_joined(id.as_str()))
            .is_err()
        {
            Self::evict_locked(&mut state, PeerId::Server(code), Some(TOO_SLOW));
            return Err(JoinError::UnknownServer);
        }
        server.clients.push(id);
        state.greet(&outbox, hello(id.as_str()));
        state.clients.insert(
            id,
            ClientEntry {
                outbox,
                server: code,
            },
        );
        Ok(Membership {
            hub: self.clone(),
            id: PeerId::Client(id),
            left: false,
        })
    }

    /// Delivers `frame` from `from` to the peer named by `to`, if `from` may reach it.
    ///
    /// A client may reach only its own server (any forgiving spelling of the code); a server only
    /// its own clients. A destination whose queue is full is disconnected as too slow, and the
    /// sender hears PEER_GONE as for any other leave.
    pub fn route(&self, from: PeerId, to: &str, frame: String) -> Result<(), UnknownPeer> {
        let mut state = self.lock();
        let (destination, outbox) = match from {
            PeerId::Client(sender) => {
                let server = state.clients.get(&sender).ok_or(UnknownPeer)?.server;
                if JoinCode::parse(to) != Some(server) {
                    return Err(UnknownPeer);
                }
                let entry = state.servers.get(&server).ok_or(UnknownPeer)?;
                (PeerId::Server(server), &entry.outbox)
            }
            PeerId::Server(sender) => {
                let id = ClientId::parse(to).ok_or(UnknownPeer)?;
                let entry = state.clients.get(&id).ok_or(UnknownPeer)?;
                if entry.server != sender {
                    return Err(UnknownPeer);
                }
                (PeerId::Client(id), &entry.outbox)
            }
        };
        if outbox.push(frame).is_err() {
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
        let servers = state.servers.values().map(|server| &server.outbox);
        for outbox in servers.chain(state.clients.values().map(|client| &client.outbox)) {
            outbox.close(SHUTTING_DOWN);
        }
    }

    /// Numbers of live servers and clients.
    pub fn counts(&self) -> (usize, usize) {
        let state = self.lock();
        (state.servers.len(), state.clients.len())
    }

    fn evict(&self, id: PeerId, closing: Option<Closing>) {
        Self::evict_locked(&mut self.lock(), id, closing);
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
                    if let Some(closing) = closing {
                        server.outbox.close(closing);
                    }
                    let gone = protocol::peer_gone(code.as_str());
                    for client_id in server.clients {
                        if let Some(client) = state.clients.remove(&client_id) {
                            let closing = match client.outbox.push(gone.clone()) {
                                Ok(()) => SERVER_GONE,
                                Err(_) => TOO_SLOW,
                            };
                            client.outbox.close(closing);
                        }
                    }
                }
                PeerId::Client(client_id) => {
                    let Some(client) = state.clients.remove(&client_id) else {
                        continue;
                    };
                    if let Some(closing) = closing {
                        client.outbox.close(closing);
                    }
                    if let Some(server) = state.servers.get_mut(&client.server) {
                        server.clients.retain(|c| *c != client_id);
                        let gone = protocol::peer_gone(client_id.as_str());
                        if server.outbox.push(gone).is_err() {
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

    fn hello(id: &str) -> String {
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
        let membership = hub.register_server(outbox, hello).expect("a free code");
        let PeerId::Server(code) = membership.id() else {
            panic!("a server gets a code")
        };
        (membership, inbox, code)
    }

    fn client(hub: &Hub, code: JoinCode) -> (Membership, Inbox, ClientId) {
        let (outbox, inbox) = outbox::bounded(ROOMY);
        let membership = hub.join(code, outbox, hello).expect("joins");
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
            [hello(code.as_str()), protocol::peer_joined(id.as_str())]
        );
        assert_eq!(drain(&client_inbox).await.0, [hello(id.as_str())]);
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
            Err(UnknownPeer)
        );
        assert_eq!(
            hub.route(a1.id(), b1_id.as_str(), "x".into()),
            Err(UnknownPeer)
        );
        assert_eq!(
            hub.route(a.id(), b1_id.as_str(), "x".into()),
            Err(UnknownPeer)
        );
        assert_eq!(
            hub.route(a.id(), b_code.as_str(), "x".into()),
            Err(UnknownPeer)
        );
        assert_eq!(
            hub.route(b.id(), a1_id.as_str(), "x".into()),
            Err(UnknownPeer)
        );
        assert_eq!(hub.route(b1.id(), "0", "x".into()), Err(UnknownPeer));
    }

    #[tokio::test]
    async fn unknown_and_full_servers_refuse_joins() {
        let hub = Hub::new(6, 1);
        let (_s, _inbox, code) = server(&hub);
        let (_c, _c_inbox, _) = client(&hub, code);
        let (outbox, _) = outbox::bounded(ROOMY);
        assert_eq!(
            hub.join(code, outbox.clone(), hello).err(),
            Some(JoinError::ServerFull)
        );
        let other = JoinCode::parse("ZZZZZZ").expect("valid");
        assert_eq!(
            hub.join(other, outbox, hello).err(),
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
            Err(UnknownPeer)
        );
    }

    #[tokio::test]
    async fn a_full_queue_disconnects_the_slow_peer_not_the_sender() {
        let hub = Hub::new(6, 8);
        let (s, server_inbox, code) = server(&hub);
        let (slow_outbox, slow_inbox) = outbox::bounded(64);
        let slow = hub.join(code, slow_outbox, hello).expect("joins");
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
            Err(UnknownPeer)
        );
    }

    #[tokio::test]
    async fn a_leave_the_server_has_no_room_to_hear_evicts_the_server_and_closes_its_clients() {
        let hub = Hub::new(6, 8);
        // Room for HELLO and two PEER_JOINED, and not a byte more.
        let joined = protocol::peer_joined(&"x".repeat(crate::relay::ids::CLIENT_ID_LENGTH)).len();
        let (_s, server_inbox, code) = server_with_room(&hub, hello("ABCDEF").len() + 2 * joined);
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
                vec![hello(id.as_str()), "last words".into()],
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
            (vec![hello(late_code.as_str())], Some(SHUTTING_DOWN))
        );
    }

    #[test]
    fn codes_are_unique_among_live_servers() {
        let hub = Hub::new(4, 8);
        let memberships: Vec<_> = (0..2000)
            .map(|_| {
                hub.register_server(outbox::bounded(ROOMY).0, hello)
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
                let entry = ServerEntry {
                    outbox: outbox.clone(),
                    clients: Vec::new(),
                };
                state.servers.insert(code, entry);
            }
        }
        let refused = hub.register_server(outbox::bounded(ROOMY).0, hello);
        assert_eq!(refused.err(), Some(NoFreeId));
    }

    #[tokio::test]
    async fn a_hello_that_does_not_fit_closes_the_peer_rather_than_leaving_it_without_one() {
        let hub = Hub::new(6, 8);
        let (outbox, inbox) = outbox::bounded(4);
        let _member = hub.register_server(outbox, hello).expect("a free code");
        assert_eq!(drain(&inbox).await, (vec![], Some(TOO_SLOW)));
    }
}
