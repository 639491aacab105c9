//! Intercessor: a WebRTC signaling relay.
//!
//! A *server* peer opens a WebSocket at `/server` and gets a short join code; *client* peers open
//! `/client/{CODE}`; the relay forwards `{"to","type","message"}` envelopes between a server and its
//! clients as `{"from","type","message"}` and tells each side when the other joins or leaves.
//!
//! The modules, from the edge inwards:
//! - [`config`]: every option, from command line, environment and TOML file, validated.
//! - [`server`]: [`Relay`]: the accept loop, hyper's HTTP/1 per connection, graceful shutdown.
//! - [`http`]: routes, pre-upgrade checks (origin, passphrase, connection cap), hand-off to a session.
//! - [`upgrade`]: the WebSocket handshake check, pure.
//! - [`peer`]: one WebSocket session: HELLO, the event loop, rate limit, ping and idle timers.
//! - [`hub`]: the registry of live peers and who may send to whom; no I/O.
//! - [`outbox`]: each peer's bounded send queue, between the hub and the peer's task.
//! - [`limits`]: the connection cap and the per-peer rate limiter.
//! - [`protocol`]: wire types, error and close codes, pure.
//! - [`ids`]: join codes and client ids.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod http;
pub mod hub;
pub mod ids;
pub mod limits;
pub mod outbox;
pub mod peer;
pub mod protocol;
pub mod server;
pub mod upgrade;

pub use config::Config;
pub use server::Relay;
