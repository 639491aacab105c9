//! Intercessor: a WebRTC signaling relay.
//!
//! A *server* peer opens a WebSocket at `/server` and gets a short join code; *client* peers open
//! `/client/{CODE}`; the relay forwards `{"to","type","message"}` envelopes between a server and its
//! clients as `{"from","type","message"}` and tells each side when the other joins or leaves.
//!
//! The modules, from the edge inwards; every arrow of import points down this list:
//! - [`options`]: the command line, `INTERCESSOR_*` variables and a TOML file, layered by clap.
//! - [`config`]: the validated [`Config`] made from them, and every bound in `Config::validate`.
//! - [`edge`]: everything that does I/O.
//!   - `server`: [`Relay`], the accept loop, TLS then HTTP per connection, the shutdown drain.
//!   - `http`: the hyper service: routes as `relay::admission` decides, connection bounds, and
//!     the hand-off of upgraded connections to `session`.
//!   - `session`: one WebSocket session, from HELLO to the close frame; the only place that
//!     touches both a socket and the hub.
//!   - `parking`: a session's connection, parked as its socket alone while its peer is idle;
//!     `framing`: where what was read stands against the WebSocket frames, so it parks losing
//!     nothing.
//!   - `admin`: the metrics listener; `metrics`: the counters it renders.
//!   - `state`: the relay-wide handles every connection shares.
//!   - `cluster`: the cluster directory in Redis: claiming codes, finding a code's owner, the
//!     instance's lease (with `--cluster-redis-url`); `pubsub`: forwarding frames between
//!     instances over Redis pub/sub (`--cluster-routing pubsub`); `redis`: the time bound every
//!     Redis call of both has.
//!   - `net`, `response`, `stream`, `coalesce`: listening, hyper's settings, responses, the
//!     connection type, the 101 sent with the first frame (`net` and `response` also serve the
//!     bench's echo floor).
//!   - `tls`, `devcert`, `assets`: certificates, development CA, the files served to browsers.
//! - [`relay`]: the rules, pure: no sockets, unit-tested without one.
//!   - `admission`: who may open a WebSocket, decided from the request alone.
//!   - `directory`: the cluster's rules: key names, owners, where a misplaced client is sent.
//!   - `hub`: the registry of live and away peers and who may send to whom; `outbox`: each
//!     peer's bounded queue; `resume`: resume tokens, which ends leave a peer away, the replay
//!     window; `limits`: connection caps and the rate limiter.
//!   - `link`, `link_wire`: rooms whose peers are on different instances, and the messages the
//!     instances exchange about them.
//!   - `protocol`: wire types; `outcome`: every ERROR and close code; `ids`: join codes and
//!     client ids; `upgrade`: the WebSocket handshake check; `ice`: TURN credentials; `schema`:
//!     optional JSON Schema checks.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod edge;
pub mod relay;

/// The options as people give them (their own crate, built for size).
pub use intercessor_options as options;

pub use config::Config;
pub use edge::server::Relay;
