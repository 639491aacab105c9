//! Intercessor: a WebRTC signaling relay.
//!
//! A *server* peer opens a WebSocket at `/server` and gets a short join code; *client* peers open
//! `/client/{CODE}`; the relay forwards `{"to","type","message"}` envelopes between a server and its
//! clients as `{"from","type","message"}` and tells each side when the other joins or leaves.
//!
//! The modules, from the edge inwards:
//! - [`config`]: every option, from command line, environment and TOML file, validated.
//! - [`edge`]: everything that does I/O: the listener and its [`Relay`], TLS, HTTP, each peer's
//!   WebSocket session, the metrics listener.
//! - [`relay`]: the rules, pure: the wire protocol, join codes, the hub of who may send to whom,
//!   per-peer queues and bounds.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod edge;
pub mod options;
pub mod relay;

pub use config::Config;
pub use edge::server::Relay;
