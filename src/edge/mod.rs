//! Everything that does I/O: the listener, TLS, HTTP, each peer's WebSocket session, and the
//! metrics listener. It calls into [`crate::relay`], never the other way.

pub mod admin;
pub(crate) mod assets;
pub(crate) mod cluster;
pub(crate) mod coalesce;
pub mod devcert;
pub(crate) mod framing;
pub(crate) mod http;
pub(crate) mod metrics;
pub mod net;
pub(crate) mod parking;
pub(crate) mod pubsub;
pub(crate) mod readahead;
pub(crate) mod redis;
pub mod response;
pub mod server;
pub(crate) mod session;
pub(crate) mod state;
pub mod stream;
pub mod tls;
pub mod tls_socket;
pub(crate) mod unread;

pub use session::CLOSE_GRACE;
