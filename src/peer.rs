//! One WebSocket session, from HELLO to the close frame: the only place that touches both the
//! socket and the hub.
//!
//! A single task owns the socket (no split): it reacts to whichever comes first of shutdown, frames
//! queued for the peer, a frame from the peer, or its ping/idle timer.

use crate::config::Config;
use crate::hub::{Hub, JoinError, Membership, PeerId};
use crate::ids::JoinCode;
use crate::limits::{RateLimiter, Slot, Verdict};
use crate::metrics::Metrics;
use crate::outbox::{self, Closing, Inbox, Outbox, TOO_SLOW};
use crate::protocol::{self, ErrorCode, close};
use futures_util::{SinkExt, StreamExt};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

/// How long the relay waits for the peer's side of the closing handshake before dropping the
/// socket, so a peer that never answers holds nothing for long.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

const SHUTTING_DOWN: Closing = Closing {
    code: close::GOING_AWAY,
    reason: "going away",
};
const IDLE: Closing = Closing {
    code: close::IDLE,
    reason: "idle timeout",
};
const FLOODING: Closing = Closing {
    code: close::POLICY,
    reason: "rate limit exceeded for too long",
};
const TOO_BIG: Closing = Closing {
    code: close::TOO_BIG,
    reason: "message too big",
};
const PROTOCOL_ERROR: Closing = Closing {
    code: 1002,
    reason: "protocol error",
};
const NOT_UTF8: Closing = Closing {
    code: 1007,
    reason: "invalid UTF-8",
};

/// The code recorded for a connection that dropped without a close frame (RFC 6455 §7.1.5).
const ABNORMAL: u16 = 1006;
/// The code recorded for a close frame that carried no code.
const NO_STATUS: u16 = 1005;

/// What the relay shares with every session.
pub struct Context {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// The registry of live peers.
    pub hub: Hub,
    /// Cancelled when the relay shuts down.
    pub shutdown: CancellationToken,
    /// Counters for `/metrics`.
    pub metrics: Metrics,
}

/// What the HTTP layer decided about a connection before upgrading it.
#[derive(Debug)]
pub enum Admission {
    /// Register as a server.
    Server,
    /// Join the server with this code.
    Client(JoinCode),
    /// Upgrade only to say why not.
    Refused(Refusal),
}

/// Why a peer is turned away after the upgrade: an ERROR frame, then a close.
#[derive(Debug, Clone, Copy)]
pub struct Refusal {
    /// The ERROR's code.
    pub code: ErrorCode,
    /// The ERROR's reason.
    pub reason: &'static str,
    /// The close that follows.
    pub closing: Closing,
}

impl Refusal {
    /// Whether the refusal is a failed guess, which the per-address failure bound counts.
    fn is_failed_attempt(&self) -> bool {
        matches!(
            self.code,
            ErrorCode::UnknownServer | ErrorCode::Unauthorized
        )
    }
}

/// The refusal for a code that cannot name a live server.
pub const UNKNOWN_SERVER: Refusal = Refusal {
    code: ErrorCode::UnknownServer,
    reason: "no server has this code",
    closing: Closing {
        code: close::UNKNOWN_SERVER,
        reason: "unknown server",
    },
};

const SERVER_FULL: Refusal = Refusal {
    code: ErrorCode::ServerFull,
    reason: "the server holds its maximum number of clients",
    closing: Closing {
        code: close::SERVER_FULL,
        reason: "server full",
    },
};

/// How a session ended, for the log line.
enum End {
    /// The relay closed it with this code.
    Closed(Closing),
    /// The peer closed it with this code, or its connection dropped ([`ABNORMAL`]).
    Left(u16),
}

enum Event {
    Shutdown,
    Outgoing(Option<Closing>),
    Incoming(Option<Result<Message, WsError>>),
    Timer,
}

/// Runs one peer's session until it ends. `slot` holds its place under the connection bounds.
pub async fn run<S>(ws: WebSocketStream<S>, context: Arc<Context>, admission: Admission, slot: Slot)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let (outbox, inbox) = outbox::bounded(context.config.send_queue_bytes);
    let hello = |id: &str| {
        protocol::hello(&protocol::Hello {
            id,
            server_info: context.config.server_info.as_deref(),
            ice_servers: &context.config.ice.for_peer(id, SystemTime::now()),
        })
    };
    let registered = match admission {
        Admission::Server => Ok(context.hub.register_server(outbox.clone(), hello)),
        Admission::Client(code) => context
            .hub
            .join(code, outbox.clone(), hello)
            .map_err(|error| match error {
                JoinError::UnknownServer => UNKNOWN_SERVER,
                JoinError::ServerFull => SERVER_FULL,
            }),
        Admission::Refused(refusal) => Err(refusal),
    };
    let membership = match registered {
        Ok(membership) => membership,
        Err(refusal) => {
            if refusal.is_failed_attempt() {
                slot.record_failure(std::time::Instant::now());
            }
            context.metrics.error(refusal.code.as_str());
            context.metrics.closed(refusal.closing.code);
            refuse(ws, refusal).await;
            return;
        }
    };
    let id = membership.id();
    let role = match id {
        PeerId::Server(_) => "server",
        PeerId::Client(_) => "client",
    };
    let mut session = Session {
        ws,
        outbox,
        inbox,
        membership,
        context: context.clone(),
        limiter: RateLimiter::new(
            context.config.rate_limit,
            context.config.flood_window,
            started.into_std(),
        ),
    };
    let end = session.run().await;
    let Session {
        mut ws, membership, ..
    } = session;
    // Leave the hub before the closing handshake, so counterparts hear PEER_GONE at once.
    drop(membership);
    let code = match end {
        End::Closed(closing) => {
            close_gracefully(&mut ws, closing).await;
            closing.code
        }
        End::Left(code) => {
            // tungstenite queued the reply to the peer's close frame; reading sends it and then
            // sees the end of the stream, so the peer gets a clean close rather than a reset.
            if code != ABNORMAL {
                let _ = timeout(CLOSE_GRACE, async {
                    while let Some(Ok(_)) = ws.next().await {}
                })
                .await;
            }
            code
        }
    };
    context.metrics.closed(code);
    info!(peer = %id, role, close = code, duration_ms = started.elapsed().as_millis() as u64, "peer left");
}

struct Session<S> {
    ws: WebSocketStream<S>,
    /// This peer's own queue, for the relay's replies (ERROR) to go in order with relayed frames.
    outbox: Outbox,
    inbox: Inbox,
    membership: Membership,
    context: Arc<Context>,
    limiter: RateLimiter,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    async fn run(&mut self) -> End {
        let config = self.context.config.clone();
        let mut batch = VecDeque::new();
        let mut heard_at = Instant::now();
        let mut ping_at = heard_at + config.ping_interval;
        let timer = tokio::time::sleep_until(ping_at);
        tokio::pin!(timer);
        loop {
            let event = tokio::select! {
                biased;
                _ = self.context.shutdown.cancelled() => Event::Shutdown,
                closing = self.inbox.next_batch(&mut batch) => Event::Outgoing(closing),
                message = self.ws.next() => Event::Incoming(message),
                _ = &mut timer => Event::Timer,
            };
            match event {
                Event::Shutdown => return End::Closed(SHUTTING_DOWN),
                Event::Outgoing(Some(closing)) => return End::Closed(closing),
                Event::Outgoing(None) => {
                    if let Err(end) = self.send_all(batch.drain(..).map(Message::text)).await {
                        return end;
                    }
                }
                Event::Incoming(Some(Ok(message))) => {
                    heard_at = Instant::now();
                    if let Err(end) = self.on_message(message, heard_at.into_std()) {
                        return end;
                    }
                }
                Event::Incoming(Some(Err(error))) => return ended_by(error),
                Event::Incoming(None) => return End::Left(ABNORMAL),
                Event::Timer => {
                    let now = Instant::now();
                    if now >= heard_at + config.idle_timeout {
                        return End::Closed(IDLE);
                    }
                    if now >= ping_at {
                        ping_at = now + config.ping_interval;
                        let ping = std::iter::once(Message::Ping(Bytes::new()));
                        if let Err(end) = self.send_all(ping).await {
                            return end;
                        }
                    }
                    timer
                        .as_mut()
                        .reset(ping_at.min(heard_at + config.idle_timeout));
                }
            }
        }
    }

    /// Writes `frames` and flushes once. A peer that stops reading must not hold its task in a
    /// write forever: the write is abandoned when the peer overflows its queue, when the relay
    /// shuts down, or when the socket has taken nothing for `--idle-timeout`.
    async fn send_all(&mut self, frames: impl Iterator<Item = Message>) -> Result<(), End> {
        let ws = &mut self.ws;
        let written = async {
            for frame in frames {
                ws.feed(frame).await?;
            }
            ws.flush().await
        };
        tokio::select! {
            biased;
            result = written => result.map_err(ended_by),
            () = self.inbox.overflowed() => Err(End::Closed(TOO_SLOW)),
            _ = self.context.shutdown.cancelled() => Err(End::Closed(SHUTTING_DOWN)),
            _ = tokio::time::sleep(self.context.config.idle_timeout) => Err(End::Closed(IDLE)),
        }
    }

    fn on_message(&mut self, message: Message, now: std::time::Instant) -> Result<(), End> {
        match message {
            Message::Text(text) => self.on_text(&text, now),
            Message::Binary(_) => self.reply_error(
                ErrorCode::BadMessage,
                "binary frames are not supported: send JSON text",
                None,
            ),
            Message::Close(frame) => Err(End::Left(frame.map_or(NO_STATUS, |f| f.code.into()))),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Ok(()),
        }
    }

    fn on_text(&mut self, text: &str, now: std::time::Instant) -> Result<(), End> {
        match self.limiter.check(now) {
            Verdict::Allowed => {}
            Verdict::Dropped => {
                return self.reply_error(
                    ErrorCode::RateLimited,
                    "too many messages: this one was dropped",
                    None,
                );
            }
            Verdict::Flooding => return Err(End::Closed(FLOODING)),
        }
        let incoming = match protocol::parse_incoming(text) {
            Ok(incoming) => incoming,
            Err(error) => return self.reply_error(ErrorCode::BadMessage, &error.to_string(), None),
        };
        if let Some(schemas) = &self.context.config.message_schemas
            && let Err(invalid) = schemas.check(&incoming.kind, incoming.message)
        {
            self.context
                .metrics
                .error(ErrorCode::InvalidMessage.as_str());
            let error = protocol::invalid_message(&incoming.kind, &invalid.path, &invalid.reason);
            return self.outbox.push(error).map_err(|_| End::Closed(TOO_SLOW));
        }
        let from = self.membership.id();
        let frame = protocol::relayed(from.as_str(), &incoming.kind, incoming.message);
        let bytes = frame.len();
        match self.context.hub.route(from, &incoming.to, frame) {
            Ok(()) => {
                self.context.metrics.relayed(bytes);
                Ok(())
            }
            Err(unknown) => self.reply_error(
                ErrorCode::UnknownPeer,
                &unknown.to_string(),
                Some(&incoming.to),
            ),
        }
    }

    fn reply_error(&mut self, code: ErrorCode, reason: &str, id: Option<&str>) -> Result<(), End> {
        self.context.metrics.error(code.as_str());
        self.outbox
            .push(protocol::error(code, reason, id))
            .map_err(|_| End::Closed(TOO_SLOW))
    }
}

/// Maps a read or write error to how the session ends.
fn ended_by(error: WsError) -> End {
    match error {
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => End::Closed(TOO_BIG),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => End::Left(ABNORMAL),
        WsError::Capacity(_) | WsError::Protocol(_) => End::Closed(PROTOCOL_ERROR),
        WsError::Utf8(_) => End::Closed(NOT_UTF8),
        other => {
            debug!(error = %other, "connection lost");
            End::Left(ABNORMAL)
        }
    }
}

/// Answers a refused upgrade with one ERROR frame and the matching close.
async fn refuse<S>(mut ws: WebSocketStream<S>, refusal: Refusal)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = Message::text(protocol::error(refusal.code, refusal.reason, None));
    if let Ok(Ok(())) = timeout(CLOSE_GRACE, ws.send(frame)).await {
        close_gracefully(&mut ws, refusal.closing).await;
    }
    info!(
        close = refusal.closing.code,
        reason = refusal.reason,
        "peer refused"
    );
}

/// Sends a close frame and waits briefly for the peer's reply; either way the socket is dropped
/// within about [`CLOSE_GRACE`].
async fn close_gracefully<S>(ws: &mut WebSocketStream<S>, closing: Closing)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = CloseFrame {
        code: CloseCode::from(closing.code),
        reason: closing.reason.into(),
    };
    let handshake = async {
        ws.close(Some(frame)).await.ok()?;
        while let Some(Ok(_)) = ws.next().await {}
        Some(())
    };
    let _ = timeout(CLOSE_GRACE, handshake).await;
}
