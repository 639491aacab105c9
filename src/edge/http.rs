//! The hyper service: answers each request as [`Door::route`](crate::relay::admission::Door::route)
//! decides, applies the connection bounds, and hands upgraded connections to [`session::run`].

use crate::edge::assets;
use crate::edge::response::{self, Body};
use crate::edge::session;
use crate::edge::state::Shared;
use crate::relay::admission::{Admission, Route, Upgrade};
use crate::relay::limits::IpVerdict;
use crate::relay::outcome::{TOO_MANY_CONNECTIONS, TOO_MANY_FAILURES};
use crate::relay::upgrade::Rejection;
use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use tracing::debug;

/// Answers one HTTP request.
pub async fn handle(
    shared: Arc<Shared>,
    remote: SocketAddr,
    mut request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let upgrade = match shared.door.route(&request, remote) {
        Route::Health => return Ok(response::health()),
        Route::Readiness => return Ok(response::readiness(&shared.shutdown)),
        Route::Page(path) => return Ok(assets::asset(path).unwrap_or_else(response::not_found)),
        Route::NotFound => return Ok(response::not_found()),
        Route::Rejected(rejection) => return Ok(reject(&shared, &request, rejection)),
        Route::Upgrade(upgrade) => upgrade,
    };
    let on_upgrade = hyper::upgrade::on(&mut request);
    Ok(start_session(shared, remote, upgrade, on_upgrade))
}

/// Counts and answers a request refused before any upgrade.
fn reject<B>(shared: &Shared, request: &Request<B>, rejection: Rejection) -> Response<Body> {
    let outcome = match rejection.status {
        StatusCode::UPGRADE_REQUIRED => "not_websocket",
        StatusCode::FORBIDDEN => {
            // A wrong --allowed-origin (say, with a trailing slash) shows here and nowhere else.
            debug!(
                origin = ?request.headers().get(header::ORIGIN),
                allowed = ?shared.door.allowed_origins,
                "upgrade refused for its origin"
            );
            "forbidden_origin"
        }
        _ => "bad_handshake",
    };
    shared.metrics.upgrade(outcome);
    response::rejection(rejection)
}

/// Takes a connection slot and spawns the session that awaits the upgrade, answering `101` at
/// once; beyond `--max-connections`, `503` instead.
fn start_session(
    shared: Arc<Shared>,
    remote: SocketAddr,
    upgrade: Upgrade,
    on_upgrade: hyper::upgrade::OnUpgrade,
) -> Response<Body> {
    let Some((slot, verdict)) = shared.slots.admit(upgrade.client_ip, Instant::now()) else {
        shared.metrics.upgrade("over_capacity");
        return response::text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the relay is at its connection limit",
        );
    };
    let admission = match verdict {
        IpVerdict::Allowed => upgrade.admission,
        IpVerdict::TooManyConnections => Admission::Refused(TOO_MANY_CONNECTIONS),
        IpVerdict::TooManyFailures => Admission::Refused(TOO_MANY_FAILURES),
    };
    shared.metrics.upgrade("accepted");
    let tracker = shared.tracker.clone();
    tracker.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(error) => return debug!(%remote, %error, "upgrade failed"),
        };
        // The session writes first (HELLO or its refusal), and that write carries the 101 (see
        // `coalesce`).
        let io = TokioIo::new(upgraded);
        let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(shared.websocket)).await;
        session::run(ws, shared, admission, slot, remote).await;
    });
    response::switching_protocols(&upgrade.accept_key)
}
