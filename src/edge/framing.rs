//! Where the bytes tungstenite has read stand against the WebSocket frames they carry.
//!
//! tungstenite keeps what it read and has not made a message of yet inside its own state, with no
//! way to ask for it. A session may only put that state down (see `edge::parking`) when it holds
//! nothing: when what was read ends on a frame's last byte and no message is half received.
//! [`Framed`] sits under tungstenite and follows the frame headers of everything read through it.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The longest frame header (RFC 6455 §5.2): two bytes, an 8-byte length, a 4-byte mask key.
const MAX_HEADER: usize = 14;

/// Follows the frame boundaries of a stream of bytes read from a peer.
#[derive(Debug, Default)]
pub struct FrameWatch {
    /// The current frame's header, as far as it has arrived.
    header: [u8; MAX_HEADER],
    header_len: u8,
    /// Payload bytes of the current frame still to arrive.
    payload_left: u64,
    /// The last data frame had no FIN bit: its message goes on in a later frame.
    fragmented: bool,
}

impl FrameWatch {
    /// Takes the next bytes read. Malformed headers are followed as they come: tungstenite
    /// rejects them and ends the session, so whatever this concludes about them is never used.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let skipped = bytes
                    .len()
                    .min(usize::try_from(self.payload_left).unwrap_or(usize::MAX));
                self.payload_left -= skipped as u64;
                bytes = &bytes[skipped..];
                continue;
            }
            let have = usize::from(self.header_len);
            let taken = (header_size(&self.header[..have]) - have).min(bytes.len());
            self.header[have..have + taken].copy_from_slice(&bytes[..taken]);
            bytes = &bytes[taken..];
            let have = have + taken;
            self.header_len = have as u8;
            if have == header_size(&self.header[..have]) {
                self.end_header();
            }
        }
    }

    /// Whether everything read so far ends a whole message: no frame or message is half read.
    pub fn at_rest(&self) -> bool {
        self.header_len == 0 && self.payload_left == 0 && !self.fragmented
    }

    /// Reads the payload length and FIN bit of the header just completed.
    fn end_header(&mut self) {
        let header = &self.header[..usize::from(self.header_len)];
        let opcode = header[0] & 0x0F;
        // Control frames (opcodes 8 and up) may come between the fragments of a message.
        if opcode < 8 {
            self.fragmented = header[0] & 0x80 == 0;
        }
        self.payload_left = match header[1] & 0x7F {
            126 => u64::from(u16::from_be_bytes([header[2], header[3]])),
            127 => u64::from_be_bytes(header[2..10].try_into().unwrap_or_default()),
            short => u64::from(short),
        };
        self.header_len = 0;
    }
}

/// How long the header that starts with `start` is, once its first two bytes say so.
fn header_size(start: &[u8]) -> usize {
    let Some(&second) = start.get(1) else {
        return 2;
    };
    let length = match second & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    2 + length + mask
}

/// A socket whose reads a [`FrameWatch`] follows. Writes pass straight through.
pub struct Framed<S> {
    inner: S,
    watch: FrameWatch,
}

impl<S> Framed<S> {
    pub fn new(inner: S) -> Self {
        Framed {
            inner,
            watch: FrameWatch::default(),
        }
    }

    /// Whether everything read through this socket ends a whole message.
    pub fn at_rest(&self) -> bool {
        self.watch.at_rest()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Framed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        this.watch.feed(&buf.filled()[before..]);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Framed<S> {
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

    /// A client's frame: masked, as RFC 6455 requires of clients.
    fn frame(fin: bool, opcode: u8, payload_len: usize) -> Vec<u8> {
        let mut bytes = vec![u8::from(fin) << 7 | opcode];
        match payload_len {
            0..=125 => bytes.push(0x80 | payload_len as u8),
            126..=0xFFFF => {
                bytes.push(0x80 | 126);
                bytes.extend_from_slice(&(payload_len as u16).to_be_bytes());
            }
            _ => {
                bytes.push(0x80 | 127);
                bytes.extend_from_slice(&(payload_len as u64).to_be_bytes());
            }
        }
        bytes.extend_from_slice(&[1, 2, 3, 4]);
        bytes.resize(bytes.len() + payload_len, b'x');
        bytes
    }

    /// Feeds `bytes` in pieces of `step`, recording after each piece whether the watch is at rest.
    fn rests(bytes: &[u8], step: usize) -> Vec<bool> {
        let mut watch = FrameWatch::default();
        bytes
            .chunks(step)
            .map(|piece| {
                watch.feed(piece);
                watch.at_rest()
            })
            .collect()
    }

    #[test]
    fn whole_frames_of_every_length_encoding_leave_it_at_rest() {
        for length in [0, 5, 125, 126, 300, 0xFFFF, 70_000] {
            let bytes = frame(true, 1, length);
            for step in [1, 3, 14, bytes.len()] {
                let rests = rests(&bytes, step);
                // Expectation: at rest after the frame's last byte and at no point before it.
                assert_eq!(rests.last(), Some(&true), "length {length}, step {step}");
                assert!(
                    rests[..rests.len() - 1].iter().all(|rest| !rest),
                    "length {length}, step {step}: at rest inside the frame"
                );
            }
        }
    }

    #[test]
    fn a_message_in_fragments_is_at_rest_only_after_its_last_fragment() {
        // Set-up: a text message in two fragments with a ping between them.
        let first = frame(false, 1, 10);
        let ping = frame(true, 9, 4);
        let last = frame(true, 0, 10);
        let mut watch = FrameWatch::default();
        watch.feed(&first);
        assert!(!watch.at_rest(), "after the first fragment");
        watch.feed(&ping);
        assert!(!watch.at_rest(), "a ping does not end the message");
        watch.feed(&last);
        assert!(watch.at_rest(), "after the last fragment");
    }

    #[test]
    fn several_frames_in_one_read_are_followed_to_the_last() {
        let mut bytes = frame(true, 1, 200);
        bytes.extend(frame(true, 10, 0));
        bytes.extend(frame(true, 2, 3));
        let mut watch = FrameWatch::default();
        watch.feed(&bytes[..bytes.len() - 1]);
        assert!(!watch.at_rest(), "one byte short of the last frame");
        watch.feed(&bytes[bytes.len() - 1..]);
        assert!(watch.at_rest());
    }

    #[test]
    fn a_huge_declared_length_does_not_overflow() {
        // An unmasked header declaring 2^64 - 1 bytes: tungstenite refuses it; the watch must
        // simply not panic and not claim rest.
        let mut header = vec![0x81, 127];
        header.extend_from_slice(&u64::MAX.to_be_bytes());
        let mut watch = FrameWatch::default();
        watch.feed(&header);
        watch.feed(&[0; 4096]);
        assert!(!watch.at_rest());
    }
}
