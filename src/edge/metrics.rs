//! Prometheus metrics, served on their own listener (`--metrics-listen`) so they are never
//! exposed on the public port by accident.

use crate::edge::http::{Body, text};
use crate::edge::session;
use crate::relay::hub::Hub;
use crate::relay::limits::ConnectionSlots;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioTimer;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tracing::{debug, warn};

/// Where the metrics listener serves the Prometheus text.
pub const METRICS_PATH: &str = "/metrics";

/// A scrape that has not sent its request by then is dropped.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Code {
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CloseCode {
    code: u16,
}

/// Every metric the relay keeps. Counters are atomics: counting costs the hot path no lock.
pub struct Metrics {
    registry: Registry,
    servers: Gauge,
    clients: Gauge,
    connections: Gauge,
    messages: Counter,
    bytes: Counter,
    upgrades: Family<Outcome, Counter>,
    errors: Family<Code, Counter>,
    closes: Family<CloseCode, Counter>,
    tls_failures: Counter,
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
            messages: Counter::default(),
            bytes: Counter::default(),
            upgrades: Family::default(),
            errors: Family::default(),
            closes: Family::default(),
            tls_failures: Counter::default(),
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

    /// Counts a failed or timed-out TLS handshake.
    pub fn tls_failure(&self) {
        self.tls_failures.inc();
    }

    /// The OpenMetrics text, with live counts read at scrape time rather than kept on every join.
    pub fn render(&self, hub: &Hub, slots: &ConnectionSlots) -> String {
        let (servers, clients) = hub.counts();
        self.servers.set(servers as i64);
        self.clients.set(clients as i64);
        self.connections.set(slots.live() as i64);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// What the metrics listener needs to answer.
pub struct Scrape {
    /// The metrics, the hub for live peer counts, and the shutdown token for `/readyz`.
    pub sessions: Arc<session::Context>,
    /// For the live session count.
    pub slots: Arc<ConnectionSlots>,
}

/// Serves `/metrics`, `/healthz` and `/readyz` until the task is dropped. It keeps answering
/// during the shutdown drain, so the last figures and the 503 from `/readyz` stay visible.
pub async fn serve(listener: TcpListener, scrape: Arc<Scrape>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                warn!(%error, "metrics accept failed");
                tokio::time::sleep(crate::edge::server::ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let scrape = scrape.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| answer(scrape.clone(), request));
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(SCRAPE_TIMEOUT)
                .serve_connection(crate::edge::server::http_io(stream), service);
            if let Err(error) = connection.await {
                debug!(%error, "metrics connection ended with an error");
            }
        });
    }
}

async fn answer(
    scrape: Arc<Scrape>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "GET only"));
    }
    Ok(match request.uri().path() {
        METRICS_PATH => {
            let sessions = &scrape.sessions;
            let body = sessions.metrics.render(&sessions.hub, &scrape.slots);
            let mut response = Response::new(Body::new(Bytes::from(body)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        }
        crate::edge::http::HEALTH_PATH => text(StatusCode::OK, "ok"),
        crate::edge::http::READY_PATH => crate::edge::http::readiness(&scrape.sessions.shutdown),
        _ => text(StatusCode::NOT_FOUND, "not found"),
    })
}
