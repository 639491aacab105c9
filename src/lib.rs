//! Intercessor: a WebRTC signaling relay.
//!
//! A *server* peer opens a WebSocket at `/server` and gets a short join code; *client* peers open
//! `/client/{CODE}`; the relay forwards `{"to","type","message"}` envelopes between a server and its
//! clients as `{"from","type","message"}` and tells each side when the other joins or leaves.
//!
//! The modules, from the edge inwards:
//! - [`config`]: every option, from command line, environment and TOML file, validated.
//! - [`server`]: the runtime, and [`Relay`]: the accept loop, hyper's HTTP/1 per connection, graceful
//!   shutdown.
//! - [`stream`]: an accepted connection, plain or TLS, as one type for hyper.
//! - [`coalesce`]: sends the 101 response in one write with the first WebSocket frame.
//! - [`tls`]: the rustls server configuration from PEM files, reloadable while serving.
//! - [`devcert`]: a local development CA and the leaf certificate it signs, made with rcgen.
//! - [`http`]: routes, pre-upgrade checks (origin, passphrase, connection cap), hand-off to a session.
//! - [`demo`]: the browser demo's files, compiled in.
//! - [`upgrade`]: the WebSocket handshake check, pure.
//! - [`peer`]: one WebSocket session: HELLO, the event loop, rate limit, ping and idle timers.
//! - [`hub`]: the registry of live peers and who may send to whom; no I/O.
//! - [`outbox`]: each peer's bounded send queue, between the hub and the peer's task.
//! - [`limits`]: the connection cap and the per-peer rate limiter.
//! - [`ice`]: STUN/TURN servers for HELLO, with TURN REST API credentials.
//! - [`metrics`]: Prometheus counters and their own listener.
//! - [`protocol`]: wire types, error and close codes, pure.
//! - [`schema`]: optional JSON Schema checks per message type.
//! - [`ids`]: join codes and client ids.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod coalesce;
pub mod config;
pub mod demo;
pub mod devcert;
pub mod http;
pub mod hub;
pub mod ice;
pub mod ids;
pub mod limits;
pub mod metrics;
pub mod outbox;
pub mod peer;
pub mod protocol;
pub mod schema;
pub mod server;
pub mod stream;
pub mod tls;
pub mod upgrade;

pub use config::Config;
pub use server::Relay;
