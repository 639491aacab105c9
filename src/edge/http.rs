//! The hyper service: answers each request as [`Door::route`](crate::relay::admission::Door::route)
//! decides, applies the connection bounds, and hands upgraded connections to [`session::run`].

use crate::edge::assets;
use crate::edge::cluster::{Cluster, Takeover};
use crate::edge::framing::Framed;
use crate::edge::redis::Unavailable;
use crate::edge::response::{self, Body};
use crate::edge::session::{self, Arrival};
use crate::edge::state::Shared;
use crate::relay::admission::{Admission, Route, Upgrade};
use crate::relay::directory::{self, Detour, Owner, Placement, Routing};
use crate::relay::hub::{Reclaim, Resuming};
use crate::relay::ids::JoinCode;
use crate::relay::limits::IpVerdict;
use crate::relay::link::{Greet, Resume};
use crate::relay::outbox;
use crate::relay::outcome::{
    DIRECTORY_DOWN, NO_FREE_ID, RESUME_FAILED, ROOM_ORPHANED, ROOM_UNREACHABLE, Refusal,
    TOO_MANY_CONNECTIONS, TOO_MANY_FAILURES,
};
use crate::relay::resume::{Token, TokenHash};
use crate::relay::upgrade::Rejection;
use futures_util::FutureExt as _;
use futures_util::future::Either;
use http::{HeaderMap, Request, Response, StatusCode, header};
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
    Ok(start_session(shared, remote, request.headers(), upgrade, on_upgrade).await)
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
/// once; beyond `--max-connections`, `503` instead; for a room on another instance of a cluster,
/// `307` with `fly-replay`.
async fn start_session(
    shared: Arc<Shared>,
    remote: SocketAddr,
    headers: &HeaderMap,
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
    let mut admission = match verdict {
        IpVerdict::Allowed => upgrade.admission,
        IpVerdict::TooManyConnections => Admission::Refused(TOO_MANY_CONNECTIONS),
        IpVerdict::TooManyFailures => Admission::Refused(TOO_MANY_FAILURES),
    };
    let info = upgrade.info;
    let mut elsewhere = None;
    let mut takeover = None;
    if let (Some(cluster), Some(code)) = (&shared.cluster, room_of(admission)) {
        match place(cluster, &shared, headers, code).await {
            Placed::Here => {}
            Placed::Refused(refusal) => admission = Admission::Refused(refusal),
            Placed::Replay(value) => return response::replay(&value),
            // A server's session lives where its room does: it takes the room over here.
            Placed::Forward(owner) if is_server_resume(admission) => {
                takeover = Some((code, Holder::Live(owner)));
            }
            Placed::Forward(owner) => elsewhere = Some((code, owner, resume_of(admission))),
            Placed::Orphaned(checked) => match admission {
                Admission::Resume {
                    resuming: Resuming::Server(_),
                    token,
                    ..
                } if token.hash().matches(&checked) => {
                    takeover = Some((code, Holder::Gone(checked)));
                }
                Admission::Resume {
                    resuming: Resuming::Server(_),
                    ..
                } => admission = Admission::Refused(RESUME_FAILED),
                _ => admission = Admission::Refused(ROOM_ORPHANED),
            },
        }
    }
    shared.metrics.upgrade("accepted");
    let tracker = shared.tracker.clone();
    // Two stages joined by `then`: what the first holds (the upgrade, the claim, the handshake,
    // and its captured variables) is gone once the session runs. One async block would keep its
    // captures beside the session's future for the peer's whole connection. The first is boxed:
    // it lasts a handshake, and inline it would be larger than the session it makes way for.
    let prepared = async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                debug!(%remote, %error, "upgrade failed");
                return None;
            }
        };
        // Boxed: each lasts a Redis round trip or two, and inline they would grow the first stage.
        let arrival = match (elsewhere, takeover) {
            (Some((code, owner, resume)), _) => {
                Box::pin(join_elsewhere(&shared, code, owner, info, resume)).await
            }
            (None, Some((code, holder))) => {
                Box::pin(take_over(&shared, code, holder, admission)).await
            }
            (None, None) => Arrival::Here {
                admission: Box::pin(claim(&shared, admission)).await,
                info,
            },
        };
        // The session writes first (HELLO or its refusal), and that write carries the 101 (see
        // `coalesce`).
        let io = Framed::new(TokioIo::new(upgraded));
        let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(shared.websocket)).await;
        Some((ws, shared, arrival, slot, remote))
    };
    tracker.spawn(Box::pin(prepared).then(|prepared| match prepared {
        Some((ws, shared, arrival, slot, remote)) => {
            Either::Left(session::run(ws, shared, arrival, slot, remote))
        }
        None => Either::Right(std::future::ready(())),
    }));
    response::switching_protocols(&upgrade.accept_key)
}

/// Whether a server resumes.
fn is_server_resume(admission: Admission) -> bool {
    matches!(
        admission,
        Admission::Resume {
            resuming: Resuming::Server(_),
            ..
        }
    )
}

/// What a client's resume presents, for its room's owner.
fn resume_of(admission: Admission) -> Option<Resume> {
    match admission {
        Admission::Resume {
            token, received, ..
        } => Some((token, received)),
        _ => None,
    }
}

/// The room a client joins or resumes in.
fn room_of(admission: Admission) -> Option<JoinCode> {
    match admission {
        Admission::Client(code)
        | Admission::Resume {
            resuming: Resuming::ClientOf(code) | Resuming::Server(Some(code)),
            ..
        } => Some(code),
        _ => None,
    }
}

/// Where a client's room is, seen from this instance of a cluster.
enum Placed {
    /// Here, or nowhere: the hub decides (joins, or `UNKNOWN_SERVER`).
    Here,
    /// Refused before it joins anything.
    Refused(Refusal),
    /// On another instance: answer `307` with this `fly-replay` value.
    Replay(String),
    /// On another instance: accept the client here and forward its frames to this owner.
    Forward(Owner),
    /// Its instance died or drained; its server, whose token has this hash, may take it over.
    Orphaned(TokenHash),
}

/// Finds the room with `code`: a room here needs no round trip; for any other the directory
/// says which instance owns it.
async fn place(cluster: &Cluster, shared: &Shared, headers: &HeaderMap, code: JoinCode) -> Placed {
    if shared.hub.holds(&code) {
        return Placed::Here;
    }
    match cluster.lookup(&code, &shared.metrics).await {
        Ok(Placement::Elsewhere(owner)) if cluster.routing() == Routing::PubSub => {
            Placed::Forward(owner)
        }
        Ok(Placement::Elsewhere(owner)) => match directory::detour(headers, &owner.instance) {
            Detour::Replay(value) => {
                shared.metrics.directory("replayed");
                Placed::Replay(value)
            }
            Detour::GiveUp => {
                shared.metrics.directory("gave_up");
                Placed::Refused(ROOM_UNREACHABLE)
            }
        },
        Ok(Placement::Orphaned(server)) => Placed::Orphaned(server),
        Ok(Placement::Here | Placement::Nowhere) => Placed::Here,
        Err(error) => {
            debug!(%error, "join refused: the cluster directory is unreachable");
            Placed::Refused(DIRECTORY_DOWN)
        }
    }
}

/// Joins (or resumes in) a room on another instance through the links, for a client whose
/// socket stays here.
async fn join_elsewhere(
    shared: &Arc<Shared>,
    code: JoinCode,
    owner: Owner,
    info: Option<String>,
    resume: Option<Resume>,
) -> Arrival {
    let Some(pubsub) = shared.cluster.as_ref().and_then(|cluster| cluster.pubsub()) else {
        return refused(ROOM_UNREACHABLE);
    };
    let (outbox, inbox) = outbox::bounded(shared.config.send_queue_bytes);
    let greeter = shared.clone();
    let greet: Greet = Box::new(move |greeting| session::hello(&greeter.config, greeting));
    match pubsub
        .join(code, owner, info, resume, outbox.clone(), greet)
        .await
    {
        Ok(guest) => Arrival::Guest {
            guest: Box::new(guest),
            outbox,
            inbox,
        },
        Err(refusal) => refused(refusal),
    }
}

/// Who holds a room a resuming server takes over here.
enum Holder {
    /// No live instance: its owner died or drained. The record's server token hash, checked.
    Gone(TokenHash),
    /// This live instance, in pubsub routing: the server landed here rather than there.
    Live(Owner),
}

/// A connection refused here, before its session starts.
fn refused(refusal: Refusal) -> Arrival {
    Arrival::Here {
        admission: Admission::Refused(refusal),
        info: None,
    }
}

/// A takeover refused because the cluster directory could not be asked who holds the room.
fn takeover_directory_down(error: Unavailable) -> Arrival {
    debug!(%error, "takeover refused");
    refused(DIRECTORY_DOWN)
}

/// Takes over, for its resuming server, a room whose instance died or drained, or (in pubsub
/// routing) one held by the live instance the server did not reconnect to: its code becomes
/// this instance's, and its members are away here until they resume.
async fn take_over(
    shared: &Shared,
    code: JoinCode,
    holder: Holder,
    admission: Admission,
) -> Arrival {
    let (Some(cluster), Admission::Resume { token, .. }) = (&shared.cluster, admission) else {
        return refused(RESUME_FAILED);
    };
    let (checked, from) = match holder {
        Holder::Gone(checked) => (checked, None),
        // The record may not hold the server's latest token yet (written in the background):
        // a mismatch here is "try again", and the owner itself is the final judge of a token.
        Holder::Live(owner) => match cluster.server_token(&code).await {
            Ok(Some(held)) if token.hash().matches(&held) => (held, Some(owner)),
            Ok(_) => return refused(ROOM_UNREACHABLE),
            Err(error) => return takeover_directory_down(error),
        },
    };
    let fresh = Token::generate();
    let max_members = shared.config.max_clients_per_server;
    let hashes = (checked, fresh.hash());
    let taken = cluster.take_over(&code, hashes, from.as_ref(), max_members, &shared.metrics);
    match taken.await {
        Ok(Takeover::Taken(rules, members)) => {
            let reclaim = Reclaim {
                code,
                token: fresh,
                rules,
                members,
            };
            Arrival::Reclaimed(Box::new(reclaim), from)
        }
        Ok(Takeover::Live) => refused(ROOM_UNREACHABLE),
        Ok(Takeover::Gone) => refused(RESUME_FAILED),
        Err(error) => takeover_directory_down(error),
    }
}

/// In a cluster, a registering server's code is claimed in the directory first, with its
/// room's record when sessions resume.
async fn claim(shared: &Shared, admission: Admission) -> Admission {
    let (Some(cluster), Admission::Server(rules)) = (&shared.cluster, admission) else {
        return admission;
    };
    let token = (!shared.config.resume.window.is_zero()).then(Token::generate);
    let record = token.map(|token| token.hash());
    match cluster
        .claim_code(&shared.hub, &shared.metrics, record, rules)
        .await
    {
        Ok(Some(code)) => Admission::ClaimedServer(code, rules, token),
        Ok(None) => Admission::Refused(NO_FREE_ID),
        Err(error) => {
            debug!(%error, "registration refused: the cluster directory is unreachable");
            Admission::Refused(DIRECTORY_DOWN)
        }
    }
}
