//! A plain socket read in large gulps through one buffer per thread, so that an idle connection
//! holds no read buffer of its own.
//!
//! tungstenite keeps a read buffer per connection for the connection's whole life, and reads at
//! most its size at a time. Kept small (see `net::websocket_config`) it costs an idle peer little,
//! but read straight from the socket it would take several system calls per message. Here each
//! read from the socket fills the thread's buffer; what the caller had no room for is kept for the
//! connection only until the caller reads it, usually within the same wake-up.

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::unread::Unread;

/// The most one read from the socket takes: a few large messages, or many small ones.
const GULP: usize = 16 * 1024;

thread_local! {
    /// Shared by every connection this thread serves; only ever borrowed within one read.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; GULP].into_boxed_slice());
}

/// A socket whose reads go through the thread's buffer. Writes pass straight through.
pub struct ReadAhead<S> {
    inner: S,
    /// Read from the socket and not taken by the caller yet: empty, and no allocation, except
    /// between the reads of one burst.
    leftover: Unread<Box<[u8]>>,
}

impl<S> ReadAhead<S> {
    pub fn new(inner: S) -> Self {
        ReadAhead {
            inner,
            leftover: Unread::default(),
        }
    }

    /// Bytes held for the caller.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.leftover.len()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    /// Fills `buf` from what is left over, else from one read of the socket, keeping what does not
    /// fit. Not inlined: hyper and tungstenite each read through it, and it is not small.
    #[inline(never)]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.leftover.is_empty() {
            ready!(this.leftover.poll_take(cx, buf));
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() >= GULP {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        SCRATCH.with_borrow_mut(|scratch| {
            let mut gulp = ReadBuf::new(scratch);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut gulp))?;
            let read = gulp.filled();
            let n = read.len().min(buf.remaining());
            buf.put_slice(&read[..n]);
            if n < read.len() {
                this.leftover = Unread::new(read[n..].into());
            }
            Poll::Ready(Ok(()))
        })
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    async fn read(socket: &mut ReadAhead<DuplexStream>, n: usize) -> Vec<u8> {
        let mut space = vec![0; n];
        let read = socket.read(&mut space).await.expect("read");
        space.truncate(read);
        space
    }

    #[tokio::test]
    async fn small_reads_are_served_from_one_gulp_and_keep_nothing_after() {
        let (source, mut peer) = tokio::io::duplex(64 * 1024);
        let mut socket = ReadAhead::new(source);
        let sent: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        peer.write_all(&sent).await.expect("write");

        let mut received = read(&mut socket, 300).await;
        assert_eq!(socket.held(), 700, "the rest of the gulp is kept");
        while received.len() < sent.len() {
            received.extend(read(&mut socket, 300).await);
        }

        assert_eq!(received, sent);
        assert_eq!(socket.held(), 0, "nothing is held once it was all read");
    }

    #[tokio::test]
    async fn large_reads_go_straight_to_the_caller() {
        let (source, mut peer) = tokio::io::duplex(64 * 1024);
        let mut socket = ReadAhead::new(source);
        let sent = vec![7u8; 20_000];
        peer.write_all(&sent).await.expect("write");

        let received = read(&mut socket, 2 * GULP).await;

        assert_eq!(received, sent);
        assert_eq!(socket.held(), 0);
    }

    #[tokio::test]
    async fn reads_served_from_memory_let_other_tasks_run() {
        let (source, mut peer) = tokio::io::duplex(64 * 1024);
        let mut socket = ReadAhead::new(source);
        peer.write_all(&[1; GULP]).await.expect("write");
        let other = tokio::spawn(async {});

        // One byte at a time, the gulp takes far more reads than a task's budget allows at once.
        for _ in 0..GULP {
            assert_eq!(read(&mut socket, 1).await.len(), 1);
        }

        assert!(other.is_finished(), "the reader yielded to the other task");
    }

    #[tokio::test]
    async fn the_end_of_the_stream_reads_as_empty() {
        let (source, peer) = tokio::io::duplex(1024);
        drop(peer);
        let mut socket = ReadAhead::new(source);
        assert!(read(&mut socket, 100).await.is_empty());
    }
}
