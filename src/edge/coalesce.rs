//! Sends hyper's `101 Switching Protocols` in the same write as the session's first frame.
//!
//! hyper writes and flushes the 101 before it hands the socket over, and every session's first act
//! is to send HELLO (or the ERROR that refuses it). Sent apart, that is two writes and two
//! deliveries to the peer per connection where one does; on loopback most of a connection's set-up
//! cost is such kernel work. hyper has no hook between writing the 101 and handing over, so the
//! 101 is recognised by its status line, the first thing in its write.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How hyper's HTTP/1 server starts a 101 response (an upgrade needs HTTP/1.1).
const SWITCHING_PROTOCOLS: &[u8] = b"HTTP/1.1 101 ";

/// A connection whose 101 response waits for the upgraded protocol's first write.
///
/// Whoever takes the upgraded socket must write before waiting to read: the peer sees the 101
/// only then.
pub struct Coalesce101<S> {
    inner: S,
    state: State,
}

enum State {
    /// HTTP: writes pass through, each checked for a 101.
    Http,
    /// A 101 waits for the next write. Flushes report success without sending it: hyper flushes
    /// before it hands the socket over.
    Held(Vec<u8>),
    /// These bytes go out before anything written after them.
    Sending(Vec<u8>),
    /// Upgraded and nothing pending: writes pass through unchecked.
    Upgraded,
}

impl<S> Coalesce101<S> {
    /// Wraps a connection before hyper serves it.
    pub fn new(inner: S) -> Self {
        Coalesce101 {
            inner,
            state: State::Http,
        }
    }
}

impl<S: AsyncWrite + Unpin> Coalesce101<S> {
    /// Takes `bufs` as a write: holds a 101, joins the held 101 to what follows it, and passes
    /// anything else to `write`.
    fn poll_write_with(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
        write: impl FnOnce(Pin<&mut S>, &mut Context<'_>) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match &mut self.state {
            State::Http => {
                let first = bufs.iter().find(|buf| !buf.is_empty());
                if first.is_some_and(|buf| buf.starts_with(SWITCHING_PROTOCOLS)) {
                    let mut held = Vec::new();
                    let taken = append(&mut held, bufs);
                    self.state = State::Held(held);
                    return Poll::Ready(Ok(taken));
                }
            }
            State::Held(held) => {
                let mut joined = std::mem::take(held);
                let taken = append(&mut joined, bufs);
                self.state = State::Sending(joined);
                // Taken whole, so a caller that retries after `Pending` cannot send it twice; what
                // the socket does not take now goes out on the next write or flush.
                if let Poll::Ready(Err(error)) = self.poll_send_pending(cx) {
                    return Poll::Ready(Err(error));
                }
                return Poll::Ready(Ok(taken));
            }
            State::Sending(_) => ready!(self.poll_send_pending(cx))?,
            State::Upgraded => {}
        }
        write(Pin::new(&mut self.inner), cx)
    }

    /// Sends what [`State::Sending`] holds, then passes writes through.
    fn poll_send_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let State::Sending(pending) = &mut self.state {
            if pending.is_empty() {
                self.state = State::Upgraded;
                break;
            }
            let written = ready!(Pin::new(&mut self.inner).poll_write(cx, pending))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            pending.drain(..written);
        }
        Poll::Ready(Ok(()))
    }
}

/// Appends every slice of a write to `bytes`; returns how many bytes that took.
fn append(bytes: &mut Vec<u8>, bufs: &[IoSlice<'_>]) -> usize {
    let before = bytes.len();
    bufs.iter().for_each(|buf| bytes.extend_from_slice(buf));
    bytes.len() - before
}

impl<S: AsyncRead + Unpin> AsyncRead for Coalesce101<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalesce101<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_write_with(cx, &[IoSlice::new(buf)], |inner, cx| {
                inner.poll_write(cx, buf)
            })
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_write_with(cx, bufs, |inner, cx| inner.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let State::Held(_) = this.state {
            return Poll::Ready(Ok(()));
        }
        ready!(this.poll_send_pending(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let State::Held(held) = &mut this.state {
            this.state = State::Sending(std::mem::take(held));
        }
        ready!(this.poll_send_pending(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    const RESPONSE: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n";

    /// Everything the peer has received so far, without waiting for more.
    async fn received(peer: &mut DuplexStream) -> Vec<u8> {
        let mut bytes = vec![0; 1024];
        let n = peer
            .read(&mut bytes)
            .now_or_never()
            .map_or(0, |read| read.expect("duplex read"));
        bytes.truncate(n);
        bytes
    }

    /// A wrapped connection over a duplex of `capacity` bytes, its 101 already written.
    async fn holding_a_101(capacity: usize) -> (Coalesce101<DuplexStream>, DuplexStream) {
        let (relay, peer) = tokio::io::duplex(capacity);
        let mut relay = Coalesce101::new(relay);
        relay.write_all(RESPONSE).await.expect("write 101");
        (relay, peer)
    }

    #[tokio::test]
    async fn a_101_waits_for_the_first_frame_and_leaves_with_it() {
        let (mut relay, mut peer) = holding_a_101(4096).await;
        relay.flush().await.expect("flush 101");
        assert!(
            received(&mut peer).await.is_empty(),
            "the 101 went out alone"
        );
        relay
            .write_all(b"\x81\x05HELLO")
            .await
            .expect("write frame");
        relay.flush().await.expect("flush frame");
        assert_eq!(
            received(&mut peer).await,
            [RESPONSE, b"\x81\x05HELLO"].concat()
        );
        relay.write_all(b"next").await.expect("write after");
        assert_eq!(received(&mut peer).await, b"next");
    }

    /// hyper must write the 101 as one write that starts with its status line, and flush it
    /// before handing over, or the 101 leaves alone (or never).
    #[tokio::test]
    async fn hypers_101_waits_for_the_upgraded_sides_first_write() {
        use http::{Request, Response, StatusCode, header};
        use hyper_util::rt::TokioIo;
        use std::sync::{Arc, Mutex};

        let (relay, mut peer) = tokio::io::duplex(4096);
        let upgrade = Arc::new(Mutex::new(None));
        let service = {
            let upgrade = upgrade.clone();
            hyper::service::service_fn(move |mut request: Request<hyper::body::Incoming>| {
                *upgrade.lock().expect("not poisoned") = Some(hyper::upgrade::on(&mut request));
                let mut response = Response::new(http_body_util::Empty::<bytes::Bytes>::new());
                *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                let headers = response.headers_mut();
                headers.insert(header::UPGRADE, "websocket".parse().expect("header"));
                headers.insert(header::CONNECTION, "Upgrade".parse().expect("header"));
                async { Ok::<_, std::convert::Infallible>(response) }
            })
        };
        let request = "GET /server HTTP/1.1\r\nHost: relay\r\nConnection: Upgrade\r\n\
                       Upgrade: websocket\r\n\r\n";
        peer.write_all(request.as_bytes()).await.expect("request");
        hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(Coalesce101::new(relay)), service)
            .with_upgrades()
            .await
            .expect("served until the upgrade");
        assert!(
            received(&mut peer).await.is_empty(),
            "the 101 went out alone"
        );

        let on_upgrade = upgrade.lock().expect("not poisoned").take();
        let upgraded = on_upgrade
            .expect("the service ran")
            .await
            .expect("upgraded");
        let mut upgraded = TokioIo::new(upgraded);
        upgraded.write_all(b"HELLO").await.expect("first write");
        upgraded.flush().await.expect("flush");
        let both = received(&mut peer).await;
        assert!(both.starts_with(b"HTTP/1.1 101 "), "{both:?}");
        assert!(both.ends_with(b"\r\n\r\nHELLO"), "{both:?}");
    }

    #[tokio::test]
    async fn other_responses_pass_straight_through() {
        let (relay, mut peer) = tokio::io::duplex(4096);
        let mut relay = Coalesce101::new(relay);
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        relay.write_all(ok).await.expect("write 200");
        assert_eq!(received(&mut peer).await, ok);
    }

    #[tokio::test]
    async fn a_held_101_is_sent_before_shutdown() {
        let (mut relay, mut peer) = holding_a_101(4096).await;
        relay.shutdown().await.expect("shutdown");
        let mut all = Vec::new();
        peer.read_to_end(&mut all).await.expect("read to end");
        assert_eq!(all, RESPONSE);
    }

    #[tokio::test]
    async fn a_joined_write_larger_than_the_socket_takes_goes_out_whole() {
        let (mut relay, mut peer) = holding_a_101(64).await;
        let frame = vec![b'x'; 1000];
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            peer.read_to_end(&mut all).await.map(|_| all)
        });
        relay.write_all(&frame).await.expect("write frame");
        relay.shutdown().await.expect("shutdown");
        drop(relay);
        let all = reader.await.expect("reader task").expect("read");
        assert_eq!(all, [RESPONSE, &frame].concat());
    }
}
