//! What the whole relay shares: one [`Shared`], created by `Relay::bind` and handed by `Arc` to
//! every connection, every session and the metrics listener.

use crate::config::Config;
use crate::edge::cluster::Cluster;
use crate::edge::metrics::Metrics;
use crate::edge::net;
use crate::relay::admission::Door;
use crate::relay::hub::Hub;
use crate::relay::limits::ConnectionSlots;
use std::sync::Arc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The relay-wide handles.
pub struct Shared {
    /// The validated configuration.
    pub config: Config,
    /// The checks made before an upgrade, from the configuration.
    pub door: Door,
    /// The registry of live peers.
    pub hub: Hub,
    /// Live WebSocket sessions against `--max-connections` and the per-address bounds.
    pub slots: Arc<ConnectionSlots>,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The directory shared with other instances, with `--cluster-redis-url`.
    pub cluster: Option<Arc<Cluster>>,
    /// Cancelled when the relay shuts down.
    pub shutdown: CancellationToken,
    /// Tracks every connection and session, which hyper's graceful shutdown does not see.
    pub tracker: TaskTracker,
    /// Buffers and limits for every WebSocket.
    pub websocket: WebSocketConfig,
}

impl Shared {
    /// The shared state for a relay running `config`; [`Shared::cluster`] is set by the caller
    /// once the cluster is joined, with this state's hub.
    pub fn new(config: Config) -> Shared {
        Shared {
            door: Door {
                allowed_origins: config.allowed_origins.clone(),
                passphrase: config.passphrase.clone(),
                client_ip_header: config.client_ip_header.clone(),
            },
            hub: Hub::new(config.code_length, config.max_clients_per_server)
                .resumable(config.resume),
            slots: ConnectionSlots::new(
                config.max_connections,
                config.max_connections_per_ip,
                config.max_failed_attempts_per_minute,
            ),
            metrics: Arc::new(Metrics::new()),
            cluster: None,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            websocket: net::websocket_config(config.max_message_bytes),
            config,
        }
    }
}
