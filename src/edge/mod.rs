//! Everything that does I/O: the listener, TLS, HTTP, each peer's WebSocket session, and the
//! metrics listener. It calls into [`crate::relay`], never the other way.

pub mod admin;
pub mod assets;
pub mod coalesce;
pub mod devcert;
pub mod http;
pub mod metrics;
pub mod net;
pub mod response;
pub mod server;
pub mod session;
pub mod state;
pub mod stream;
pub mod tls;
