//! The relay's Prometheus metrics: counters kept as atomics, rendered in the OpenMetrics text
//! format when [`crate::edge::admin`] is scraped.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Code {
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Direction {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CloseCode {
    code: u16,
}

/// Live counts, read when scraped.
#[derive(Debug, Clone, Copy)]
pub struct Live {
    /// Server peers.
    pub servers: usize,
    /// Client peers.
    pub clients: usize,
    /// WebSocket sessions.
    pub connections: usize,
    /// Whether this instance holds its cluster lease; `None` without a cluster.
    pub directory_up: Option<bool>,
}

/// Every metric the relay keeps. Counters are atomics: counting costs the hot path no lock.
pub struct Metrics {
    registry: Registry,
    servers: Gauge,
    clients: Gauge,
    connections: Gauge,
    parked: Gauge,
    messages: Counter,
    bytes: Counter,
    upgrades: Family<Outcome, Counter>,
    errors: Family<Code, Counter>,
    closes: Family<CloseCode, Counter>,
    tls_failures: Counter,
    directory: Family<Outcome, Counter>,
    directory_up: Gauge,
    forwarded: Family<Direction, Counter>,
    forwarding_errors: Family<Reason, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with every metric registered, and the start time and version recorded.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("intercessor");
        let metrics = Metrics {
            servers: Gauge::default(),
            clients: Gauge::default(),
            connections: Gauge::default(),
            parked: Gauge::default(),
            messages: Counter::default(),
            bytes: Counter::default(),
            upgrades: Family::default(),
            errors: Family::default(),
            closes: Family::default(),
            tls_failures: Counter::default(),
            directory: Family::default(),
            directory_up: Gauge::default(),
            forwarded: Family::default(),
            forwarding_errors: Family::default(),
            registry: Registry::default(),
        };
        registry.register("servers", "Live server peers", metrics.servers.clone());
        registry.register("clients", "Live client peers", metrics.clients.clone());
        registry.register(
            "connections",
            "Live WebSocket sessions",
            metrics.connections.clone(),
        );
        registry.register(
            "parked_sessions",
            "WebSocket sessions parked: idle, holding their socket and none of the WebSocket's state",
            metrics.parked.clone(),
        );
        registry.register(
            "messages_relayed",
            "Messages relayed between peers",
            metrics.messages.clone(),
        );
        registry.register(
            "bytes_relayed",
            "Bytes of relayed frames",
            metrics.bytes.clone(),
        );
        registry.register(
            "upgrades",
            "WebSocket upgrade requests by outcome",
            metrics.upgrades.clone(),
        );
        registry.register(
            "errors",
            "ERROR frames sent, by code",
            metrics.errors.clone(),
        );
        registry.register(
            "closes",
            "Sessions ended, by WebSocket close code",
            metrics.closes.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            metrics.tls_failures.clone(),
        );
        registry.register(
            "directory_operations",
            "Cluster directory steps by outcome: claimed, clash, lookup_here, lookup_elsewhere, \
             lookup_orphaned, lookup_nowhere, replayed, gave_up, reclaimed, lost, record_dropped, \
             error",
            metrics.directory.clone(),
        );
        registry.register(
            "directory_up",
            "1 while this instance holds its lease in the cluster directory, else 0 (always 0 \
             without --cluster-redis-url)",
            metrics.directory_up.clone(),
        );
        registry.register(
            "forwarded_frames",
            "Frames forwarded to (out) and from (in) other instances over Redis pub/sub",
            metrics.forwarded.clone(),
        );
        registry.register(
            "forwarding_errors",
            "Losses that closed forwarded sessions, by reason: publish_failed, unheard, \
             subscription_lost, queue_full, directory_lost, owner_gone, unreadable",
            metrics.forwarding_errors.clone(),
        );
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let start_time = Gauge::<f64, AtomicU64>::default();
        start_time.set(started.as_secs_f64());
        registry.register(
            "process_start_time_seconds",
            "Start time, seconds since the Unix epoch",
            start_time,
        );
        let build = Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]);
        registry.register("build", "The running build", build);
        Metrics {
            registry,
            ..metrics
        }
    }

    /// The gauge of parked sessions, which each session's connection moves itself.
    pub fn parked(&self) -> Gauge {
        self.parked.clone()
    }

    /// Counts one relayed message of `bytes` bytes.
    pub fn relayed(&self, bytes: usize) {
        self.messages.inc();
        self.bytes.inc_by(bytes as u64);
    }

    /// Counts an upgrade request's outcome (`accepted`, `forbidden_origin`, …).
    pub fn upgrade(&self, outcome: &'static str) {
        self.upgrades.get_or_create(&Outcome { outcome }).inc();
    }

    /// Counts an ERROR frame.
    pub fn error(&self, code: &'static str) {
        self.errors.get_or_create(&Code { code }).inc();
    }

    /// Counts a session's end.
    pub fn closed(&self, code: u16) {
        self.closes.get_or_create(&CloseCode { code }).inc();
    }

    /// Counts a cluster directory step's outcome.
    pub fn directory(&self, outcome: &'static str) {
        self.directories(outcome, 1);
    }

    /// Counts `count` directory operations that ended as `outcome` at once.
    pub fn directories(&self, outcome: &'static str, count: usize) {
        let counter = self.directory.get_or_create(&Outcome { outcome });
        counter.inc_by(count as u64);
    }

    /// Counts `frames` forwarded between instances, `out` or `in`.
    pub fn forwarded(&self, direction: &'static str, frames: usize) {
        if frames > 0 {
            let counter = self.forwarded.get_or_create(&Direction { direction });
            counter.inc_by(frames as u64);
        }
    }

    /// Counts a loss on the links between instances.
    pub fn forwarding_error(&self, reason: &'static str) {
        self.forwarding_errors
            .get_or_create(&Reason { reason })
            .inc();
    }

    /// Counts a failed or timed-out TLS handshake.
    pub fn tls_failure(&self) {
        self.tls_failures.inc();
    }

    /// The OpenMetrics text, with live counts read at scrape time rather than kept on every join.
    pub fn render(&self, live: Live) -> String {
        self.servers.set(live.servers as i64);
        self.clients.set(live.clients as i64);
        self.connections.set(live.connections as i64);
        self.directory_up
            .set(live.directory_up.map_or(0, i64::from));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
