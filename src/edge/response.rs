//! The relay's own HTTP responses: one-line plain text, health and readiness, and the `101` that
//! switches to WebSocket (shared with the bench's echo floor).

use crate::relay::directory::REPLAY;
use crate::relay::upgrade::Rejection;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use tokio_util::sync::CancellationToken;

/// The response body type: every response is small and complete.
pub type Body = Full<Bytes>;

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

/// `404` for any path the relay does not serve.
pub fn not_found() -> Response<Body> {
    text(StatusCode::NOT_FOUND, "not found")
}

/// `/healthz`.
pub fn health() -> Response<Body> {
    text(StatusCode::OK, "ok")
}

/// `/readyz`: ready until shutdown begins.
pub fn readiness(shutdown: &CancellationToken) -> Response<Body> {
    if shutdown.is_cancelled() {
        text(StatusCode::SERVICE_UNAVAILABLE, "shutting down")
    } else {
        text(StatusCode::OK, "ready")
    }
}

/// The answer to a request refused before any upgrade. A `426` says what to send instead; a
/// `400` may be a smuggling attempt, so nothing after it on the connection is trusted.
pub fn rejection(rejection: Rejection) -> Response<Body> {
    let mut response = text(rejection.status, rejection.reason);
    let headers = response.headers_mut();
    match rejection.status {
        StatusCode::UPGRADE_REQUIRED => {
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            headers.insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        StatusCode::BAD_REQUEST => {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        _ => {}
    }
    response
}

/// `307` with `fly-replay: VALUE` and no body: Fly's proxy replays the request where the value
/// says rather than pass this answer on. The request is not upgraded here.
pub fn replay(value: &str) -> Response<Body> {
    let mut response = Response::new(Body::default());
    *response.status_mut() = StatusCode::TEMPORARY_REDIRECT;
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(REPLAY, value);
    }
    response
}

/// `101 Switching Protocols` with the handshake's `Sec-WebSocket-Accept`.
pub fn switching_protocols(accept_key: &str) -> Response<Body> {
    let mut response = Response::new(Body::default());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(accept_key).expect("an accept key is base64"),
    );
    response
}
