//! A session's connection: the whole WebSocket while its peer is busy, only the socket while the
//! peer is idle.
//!
//! tungstenite's state costs a connection about 400 B when new (its read and write buffers and
//! tokio-tungstenite's two waker proxies), and its buffers keep the size of the largest frame the
//! connection has carried: several KB once a peer has sent an SDP offer. A signaling peer is idle
//! nearly all its life, so an idle session parks: it drops that state, keeps the socket alone,
//! and builds the WebSocket again when the peer sends, a frame is queued for it, or a ping is due.

use crate::edge::framing::Framed;
use crate::edge::net::WS_READ_BUFFER;
use futures_util::{SinkExt, StreamExt};
use prometheus_client::metrics::gauge::Gauge;
use std::future::poll_fn;
use std::io;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

/// How long a session stays open after it last carried a message, at least, before it parks.
/// A signaling exchange comes in bursts (an offer, an answer, a handful of candidates within a
/// second or two) and then nothing for minutes.
pub const PARK_AFTER: Duration = Duration::from_millis(100);

/// The longest wait between two looks at a busy peer: [`PARK_AFTER`] doubled this many times.
const MAX_BACKOFF: u8 = 8;

/// When a session's timer next looks whether its peer has gone idle: [`PARK_AFTER`] after it
/// last carried a message, then twice as long each time it finds the peer was busy, so a peer
/// busy for minutes costs its task a few timer wake-ups rather than ten a second.
///
/// A session that has carried no message since it was set up or reopened is looked at as soon as
/// it comes to rest: the relay's own frames (HELLO, PEER_JOINED, a ping and its pong) start no
/// exchange, and most peers wait minutes for their first message. Held open for [`PARK_AFTER`]
/// instead, the sessions of a burst of arrivals would all be open at once, and what they free
/// when they park would stay behind as holes in the heap. A peer that speaks at once reopens it,
/// which costs one allocation.
#[derive(Debug)]
pub struct Idleness {
    /// A message was read or written since the last look.
    busy: bool,
    backoff: u8,
    /// No message and no look since the session was set up or reopened: look at once.
    fresh: bool,
}

impl Default for Idleness {
    fn default() -> Self {
        Idleness {
            busy: false,
            backoff: 0,
            fresh: true,
        }
    }
}

impl Idleness {
    /// Notes a message read or written: one from the peer (not a ping or a pong), or one relayed
    /// to it.
    pub fn busy(&mut self) {
        self.busy = true;
        self.fresh = false;
    }

    /// Looks whether the peer was idle since the last look, and backs off if it was not.
    pub fn look(&mut self) -> bool {
        self.fresh = false;
        let idle = !std::mem::take(&mut self.busy);
        if !idle {
            self.backoff = (self.backoff + 1).min(MAX_BACKOFF);
        }
        idle
    }

    /// Notes that the connection parked: once opened again, it is looked at soon.
    pub fn parked(&mut self) {
        self.backoff = 0;
        self.fresh = true;
    }

    /// When to look next, from `now`.
    pub fn next_look(&self, now: Instant) -> Instant {
        if self.fresh {
            now
        } else {
            now + PARK_AFTER * (1 << self.backoff)
        }
    }
}

/// The WebSocket a session speaks, over a socket whose reads are followed frame by frame.
pub type WebSocket<S> = WebSocketStream<Framed<S>>;

/// A peer's connection, open or parked.
pub struct Connection<S> {
    state: State<S>,
    /// Parked connections, counted for the metrics.
    parked: Gauge,
}

enum State<S> {
    /// Boxed: while parked the session's task holds only the socket.
    Open(Box<WebSocket<S>>),
    Parked(Framed<S>),
    /// Left behind only if building the WebSocket failed, which tokio-tungstenite never does
    /// today; the socket is gone with it.
    Lost,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    pub fn new(ws: WebSocket<S>, parked: Gauge) -> Self {
        Connection {
            state: State::Open(Box::new(ws)),
            parked,
        }
    }

    pub fn is_parked(&self) -> bool {
        matches!(self.state, State::Parked(_))
    }

    /// The WebSocket, built again from the socket if the connection is parked.
    pub fn open(
        &mut self,
        cx: &mut Context<'_>,
        config: &WebSocketConfig,
    ) -> Result<&mut WebSocket<S>, WsError> {
        if self.is_parked() {
            self.unpark(cx, config, Vec::new());
        }
        self.ws()
    }

    /// [`Self::open`], outside a poll.
    pub async fn opened(&mut self, config: &WebSocketConfig) -> Result<&mut WebSocket<S>, WsError> {
        poll_fn(|cx| Poll::Ready(self.open(cx, config).map(drop))).await?;
        self.ws()
    }

    fn ws(&mut self) -> Result<&mut WebSocket<S>, WsError> {
        match &mut self.state {
            State::Open(ws) => Ok(ws),
            State::Parked(_) | State::Lost => Err(lost()),
        }
    }

    /// The peer's next message. Parked, it waits for the socket to be readable holding no buffer,
    /// and builds the WebSocket around the first bytes read.
    pub fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        config: &WebSocketConfig,
    ) -> Poll<Option<Result<Message, WsError>>> {
        if let State::Parked(socket) = &mut self.state {
            let mut first = [0; WS_READ_BUFFER];
            let mut read = ReadBuf::new(&mut first);
            if let Err(error) = ready!(Pin::new(socket).poll_read(cx, &mut read)) {
                return Poll::Ready(Some(Err(WsError::Io(error))));
            }
            if read.filled().is_empty() {
                return Poll::Ready(None);
            }
            let part = read.filled().to_vec();
            self.unpark(cx, config, part);
        }
        match self.ws() {
            Ok(ws) => ws.poll_next_unpin(cx),
            Err(lost) => Poll::Ready(Some(Err(lost))),
        }
    }

    /// Parks the connection, unless part of a frame or message has been read or something is
    /// still to be written (a pong tungstenite queued, a write the socket has not taken).
    /// Returns whether it is parked.
    pub fn park(&mut self, cx: &mut Context<'_>) -> bool {
        let State::Open(ws) = &mut self.state else {
            return self.is_parked();
        };
        if !ws.get_ref().at_rest() || !matches!(ws.poll_flush_unpin(cx), Poll::Ready(Ok(()))) {
            return false;
        }
        let State::Open(ws) = std::mem::replace(&mut self.state, State::Lost) else {
            return false;
        };
        self.state = State::Parked(ws.into_inner());
        self.parked.inc();
        true
    }

    /// Builds the WebSocket around the parked socket and the bytes already read from it.
    fn unpark(&mut self, cx: &mut Context<'_>, config: &WebSocketConfig, part: Vec<u8>) {
        let State::Parked(socket) = std::mem::replace(&mut self.state, State::Lost) else {
            return;
        };
        self.parked.dec();
        let opening = pin!(WebSocketStream::from_partially_read(
            socket,
            part,
            Role::Server,
            Some(*config),
        ));
        // It completes at its first poll: it only wraps the socket.
        if let Poll::Ready(ws) = opening.poll(cx) {
            self.state = State::Open(Box::new(ws));
        }
    }
}

impl<S> Drop for Connection<S> {
    fn drop(&mut self) {
        if let State::Parked(_) = self.state {
            self.parked.dec();
        }
    }
}

/// What a session sees if the WebSocket could not be built again.
fn lost() -> WsError {
    WsError::Io(io::Error::other(
        "the parked connection could not be reopened",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_peer_is_looked_at_less_and_less_often_and_soon_again_once_parked() {
        let now = Instant::now();
        let mut idleness = Idleness::default();
        // Set-up and action: a peer busy between each of ten looks.
        let mut waits = Vec::new();
        for _ in 0..10 {
            idleness.busy();
            assert!(!idleness.look(), "busy since the last look");
            waits.push(idleness.next_look(now) - now);
        }
        // Expectation: 200 ms, 400 ms, ... doubling up to 25.6 s, and no further.
        assert_eq!(waits[0], PARK_AFTER * 2);
        assert_eq!(waits[7], PARK_AFTER * 256);
        assert_eq!(waits[9], PARK_AFTER * 256);
        // Once idle it parks; reopened by a message, it is looked at after PARK_AFTER.
        assert!(idleness.look(), "idle since the last look");
        idleness.parked();
        idleness.busy();
        assert_eq!(idleness.next_look(now) - now, PARK_AFTER);
    }

    #[test]
    fn a_session_that_carried_no_message_is_looked_at_once_at_rest() {
        // Set-up: a new session (its HELLO written), and one reopened for a relay notice.
        let now = Instant::now();
        let mut new = Idleness::default();
        let mut reopened = Idleness::default();
        reopened.busy();
        assert!(!reopened.look());
        reopened.parked();
        for idleness in [&mut new, &mut reopened] {
            // Action and expectation: looked at at once, and found idle.
            assert_eq!(idleness.next_look(now), now);
            assert!(idleness.look(), "nothing carried");
            // If it could not park (a frame half read), the next look waits PARK_AFTER: a
            // session that cannot park is not looked at again and again.
            assert_eq!(idleness.next_look(now) - now, PARK_AFTER);
        }
    }
}
