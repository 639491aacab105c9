//! The hyper service: routes, plain responses, the checks made before an upgrade, and the hand-off
//! of upgraded connections to [`session::run`].

use crate::edge::demo;
use crate::edge::session::{self, Admission};
use crate::relay::ids::JoinCode;
use crate::relay::limits::{ConnectionSlots, IpVerdict};
use crate::relay::outcome::{
    TOO_MANY_CONNECTIONS, TOO_MANY_FAILURES, UNAUTHORIZED, UNKNOWN_SERVER,
};
use crate::relay::upgrade;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;
use subtle::ConstantTimeEq;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_util::task::TaskTracker;
use tracing::debug;

/// Liveness: answers `200 ok` while the process runs.
pub const HEALTH_PATH: &str = "/healthz";
/// Readiness: `200 ready` until shutdown begins, then `503`, so the edge routes new peers elsewhere.
pub const READY_PATH: &str = "/readyz";

/// The response body type: every response is small and complete.
pub type Body = Full<Bytes>;

/// What the HTTP layer shares across connections.
pub struct App {
    /// Shared with every WebSocket session.
    pub sessions: Arc<session::Context>,
    /// Live WebSocket sessions against `--max-connections`.
    pub slots: Arc<ConnectionSlots>,
    /// Tracks upgraded sessions, which hyper's graceful shutdown does not see.
    pub tracker: TaskTracker,
    /// Buffers and limits for every WebSocket.
    pub websocket: WebSocketConfig,
}

/// Answers one HTTP request.
pub async fn handle(
    app: Arc<App>,
    remote: SocketAddr,
    mut request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = request.uri().path();
    let admission = match (request.method(), path) {
        (&Method::GET | &Method::HEAD, HEALTH_PATH) => return Ok(text(StatusCode::OK, "ok")),
        (&Method::GET | &Method::HEAD, READY_PATH) => return Ok(readiness(&app.sessions.shutdown)),
        (_, "/server") => {
            if app.authorized(&request) {
                Admission::Server
            } else {
                Admission::Refused(UNAUTHORIZED)
            }
        }
        (_, path) => match path.strip_prefix("/client/") {
            Some(code) if !code.contains('/') => {
                let code = percent_encoding::percent_decode_str(code).decode_utf8_lossy();
                JoinCode::parse(&code).map_or(Admission::Refused(UNKNOWN_SERVER), Admission::Client)
            }
            _ if request.method() == Method::GET || request.method() == Method::HEAD => {
                return Ok(
                    demo::asset(path).unwrap_or_else(|| text(StatusCode::NOT_FOUND, "not found"))
                );
            }
            _ => return Ok(text(StatusCode::NOT_FOUND, "not found")),
        },
    };
    let accept_key = match upgrade::check(&request) {
        Ok(key) => key,
        Err(rejection) => {
            app.sessions
                .metrics
                .upgrade(if rejection.status == StatusCode::UPGRADE_REQUIRED {
                    "not_websocket"
                } else {
                    "bad_handshake"
                });
            let mut response = text(rejection.status, rejection.reason);
            if rejection.status == StatusCode::UPGRADE_REQUIRED {
                let headers = response.headers_mut();
                headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                headers.insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
            } else {
                // A broken handshake may be a smuggling attempt: nothing after it is trusted.
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            return Ok(response);
        }
    };
    if !app.origin_allowed(&request) {
        app.sessions.metrics.upgrade("forbidden_origin");
        return Ok(text(
            StatusCode::FORBIDDEN,
            "this origin may not open WebSockets here",
        ));
    }
    let client_ip = app.client_ip(&request, remote);
    let Some((slot, verdict)) = app.slots.admit(client_ip, Instant::now()) else {
        app.sessions.metrics.upgrade("over_capacity");
        return Ok(text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the relay is at its connection limit",
        ));
    };
    let admission = match verdict {
        IpVerdict::Allowed => admission,
        IpVerdict::TooManyConnections => Admission::Refused(TOO_MANY_CONNECTIONS),
        IpVerdict::TooManyFailures => Admission::Refused(TOO_MANY_FAILURES),
    };
    app.sessions.metrics.upgrade("accepted");
    let on_upgrade = hyper::upgrade::on(&mut request);
    let session = {
        let app = app.clone();
        async move {
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(error) => return debug!(%remote, %error, "upgrade failed"),
            };
            // The session writes first (HELLO or its refusal), and that write carries the 101
            // (see `coalesce`).
            let io = TokioIo::new(upgraded);
            let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(app.websocket)).await;
            session::run(ws, app.sessions.clone(), admission, slot, remote).await;
        }
    };
    app.tracker.spawn(session);
    let mut response = Response::new(Body::default());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept_key).expect("an accept key is base64"),
    );
    Ok(response)
}

impl App {
    /// The client's address: from `--client-ip-header` when set and parseable (the last entry,
    /// the one the nearest proxy added), else the socket's.
    fn client_ip<B>(&self, request: &Request<B>, remote: SocketAddr) -> IpAddr {
        let from_header = self
            .sessions
            .config
            .client_ip_header
            .as_ref()
            .and_then(|name| request.headers().get(name))
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.rsplit(',').next())
            .and_then(|last| last.trim().parse().ok());
        from_header.unwrap_or(remote.ip())
    }

    /// Whether the request may register a server: no passphrase is configured, or it carries the
    /// right one exactly once, as `Authorization: Bearer …` or `?passphrase=…`. Compared in
    /// constant time.
    fn authorized<B>(&self, request: &Request<B>) -> bool {
        let Some(expected) = self.sessions.config.passphrase.as_deref() else {
            return true;
        };
        match secret(request, "Bearer", "passphrase") {
            Secret::One(given) => bool::from(given.as_slice().ct_eq(expected.as_bytes())),
            Secret::Absent | Secret::Repeated => false,
        }
    }

    /// Browsers always send `Origin`; tools usually do not, and are let through.
    fn origin_allowed<B>(&self, request: &Request<B>) -> bool {
        let allowed = &self.sessions.config.allowed_origins;
        match request.headers().get(header::ORIGIN) {
            Some(origin) if !allowed.is_empty() => {
                allowed.iter().any(|a| a.as_bytes() == origin.as_bytes())
            }
            _ => true,
        }
    }
}

/// A secret as a request carries it.
#[derive(Debug, PartialEq, Eq)]
enum Secret {
    Absent,
    One(Vec<u8>),
    /// Given more than once, in the query or headers or both: refused whatever the values, or
    /// one request could try as many guesses as its head has room for.
    Repeated,
}

/// Finds a secret given as `Authorization: <scheme> SECRET` (the scheme in any case, RFC 9110
/// §11.1) or as `?<key>=SECRET` (URL-encoded, for browsers, which cannot set headers on a
/// WebSocket).
fn secret<B>(request: &Request<B>, scheme: &str, key: &str) -> Secret {
    let in_headers = request
        .headers()
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(|value| {
            let value = value.as_bytes();
            let (given_scheme, rest) = value.split_at_checked(scheme.len())?;
            let credentials = rest.strip_prefix(b" ")?.trim_ascii_start();
            given_scheme
                .eq_ignore_ascii_case(scheme.as_bytes())
                .then(|| credentials.to_vec())
        });
    let in_query = request
        .uri()
        .query()
        .into_iter()
        .flat_map(|query| form_urlencoded::parse(query.as_bytes()))
        .filter(|(name, _)| name == key)
        .map(|(_, value)| value.as_bytes().to_vec());
    let mut given = in_headers.chain(in_query);
    match (given.next(), given.next()) {
        (None, _) => Secret::Absent,
        (Some(secret), None) => Secret::One(secret),
        (Some(_), Some(_)) => Secret::Repeated,
    }
}

/// `/readyz`: ready until shutdown begins.
pub fn readiness(shutdown: &tokio_util::sync::CancellationToken) -> Response<Body> {
    if shutdown.is_cancelled() {
        text(StatusCode::SERVICE_UNAVAILABLE, "shutting down")
    } else {
        text(StatusCode::OK, "ready")
    }
}

/// A plain-text response of one line.
pub fn text(status: StatusCode, line: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::new(Bytes::from_static(line.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
