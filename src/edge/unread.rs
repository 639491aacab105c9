//! Bytes read from a socket ahead of the caller, handed out as the caller asks for them.

use std::task::{Context, Poll, ready};
use tokio::io::ReadBuf;

/// What was read and not taken yet: `bytes` from `taken` on. Freed once all is taken, so an idle
/// connection holds no allocation here.
#[derive(Default)]
pub struct Unread<B> {
    bytes: B,
    taken: usize,
}

impl<B: AsRef<[u8]> + Default> Unread<B> {
    pub fn new(bytes: B) -> Self {
        Unread { bytes, taken: 0 }
    }

    /// Bytes not taken yet.
    pub fn len(&self) -> usize {
        self.bytes.as_ref().len() - self.taken
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills `buf` from what is held. Served from memory, a read still spends the task's budget
    /// as a socket read does, so a peer that sends without pause cannot keep the thread from the
    /// sessions it feeds.
    pub fn poll_take(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<()> {
        let coop = ready!(tokio::task::coop::poll_proceed(cx));
        let rest = &self.bytes.as_ref()[self.taken..];
        let n = rest.len().min(buf.remaining());
        buf.put_slice(&rest[..n]);
        self.taken += n;
        if self.is_empty() {
            *self = Self::default();
        }
        coop.made_progress();
        Poll::Ready(())
    }
}

impl Unread<Vec<u8>> {
    pub fn extend(&mut self, more: &[u8]) {
        self.bytes.extend_from_slice(more);
    }

    /// Bytes allocated, taken or not.
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.bytes.capacity()
    }
}
