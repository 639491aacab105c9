//! HTTP and WebSocket by hand over plain TCP: requests and frames a library would refuse to send,
//! written byte by byte, and the relay's answer read from the raw bytes.

use super::PATIENCE;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Sends raw bytes over TCP and returns everything the relay answers until it closes.
pub async fn raw_http(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut response))
        .await
        .expect("response in time")
        .expect("read");
    String::from_utf8_lossy(&response).into_owned()
}

/// Status code of an HTTP/1.1 response.
pub fn status_of(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"))
}

/// Reads until the relay ends the connection (EOF or reset); returns what it sent and when it
/// ended, measured from `since`. Panics if the connection outlives `within`.
pub async fn read_until_dropped(
    reader: &mut (impl AsyncReadExt + Unpin),
    since: Instant,
    within: Duration,
) -> (Vec<u8>, Duration) {
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    let ended = timeout(within, async {
        loop {
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the relay kept the connection past {within:?}; it sent {:?}",
        String::from_utf8_lossy(&answer)
    );
    (answer, since.elapsed())
}

pub const MASK_KEY: [u8; 4] = [0x5a, 0x13, 0xc7, 0x8e];

/// A frame header as a client writes it: the FIN/RSV/opcode byte; the mask bit with a 7-bit
/// length, or 126 and a 16-bit length, or 127 and a 64-bit length; then the mask key.
pub fn frame_header(first: u8, len: u64, masked: bool) -> Vec<u8> {
    let mask_bit = if masked { 0x80 } else { 0 };
    let mut header = vec![first];
    match len {
        0..=125 => header.push(mask_bit | len as u8),
        126..=0xffff => {
            header.push(mask_bit | 126);
            header.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            header.push(mask_bit | 127);
            header.extend_from_slice(&len.to_be_bytes());
        }
    }
    if masked {
        header.extend_from_slice(&MASK_KEY);
    }
    header
}

/// `payload` masked with [`MASK_KEY`], as if it started the frame's payload.
pub fn masked(payload: &[u8]) -> Vec<u8> {
    payload
        .iter()
        .enumerate()
        .map(|(i, byte)| byte ^ MASK_KEY[i % 4])
        .collect()
}

/// A whole, properly masked client frame.
pub fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = frame_header(first, payload.len() as u64, true);
    frame.extend(masked(payload));
    frame
}

/// Opens a WebSocket at `path` by hand over TCP. Returns the stream and whatever arrived after
/// the `101` head (usually the start of HELLO).
pub async fn raw_websocket(addr: SocketAddr, path: &str) -> (TcpStream, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write the upgrade");
    let mut buffer = Vec::new();
    let head_len = timeout(PATIENCE, async {
        loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                return end + 4;
            }
            let mut chunk = [0u8; 1024];
            let n = stream.read(&mut chunk).await.expect("read the 101");
            assert!(n > 0, "closed during the upgrade: {buffer:?}");
            buffer.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("the 101 arrives in time");
    let head = String::from_utf8_lossy(&buffer[..head_len]).into_owned();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    // RFC 6455 §1.3's example key and its accept value.
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    (stream, buffer.split_off(head_len))
}

/// A frame the relay sent; servers never mask.
pub struct ServerFrame {
    pub first: u8,
    pub payload: Vec<u8>,
}

/// Parses one whole frame from the front of `buf`, with the bytes it took.
pub fn parse_server_frame(buf: &[u8]) -> Option<(ServerFrame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    assert_eq!(buf[1] & 0x80, 0, "the relay masked a frame: {buf:x?}");
    let (len, at): (usize, usize) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (
            u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")) as usize,
            10,
        ),
        126 | 127 => return None,
        len => (len as usize, 2),
    };
    let end = at.checked_add(len)?;
    (buf.len() >= end).then(|| {
        let frame = ServerFrame {
            first: buf[0],
            payload: buf[at..end].to_vec(),
        };
        (frame, end)
    })
}

/// How the relay ended a hand-made WebSocket.
#[derive(Debug)]
pub struct Ending {
    pub code: u16,
    pub reason: String,
    /// First bytes of the frames before the close (HELLO is `0x81`, a ping `0x89`).
    pub before: Vec<u8>,
    /// From the close frame's arrival to the end of the TCP connection.
    pub close_to_drop: Duration,
}

/// Reads the relay's frames until its close frame, without ever answering (no pong, no close),
/// then until the TCP connection ends. `buffer` holds bytes already read.
pub async fn read_close(stream: &mut (impl AsyncReadExt + Unpin), mut buffer: Vec<u8>) -> Ending {
    let deadline = Instant::now() + PATIENCE;
    let mut before = Vec::new();
    let mut close: Option<(u16, String, Instant)> = None;
    let mut after_close = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while close.is_none() {
            let Some((frame, used)) = parse_server_frame(&buffer) else {
                break;
            };
            buffer.drain(..used);
            if frame.first == 0x88 {
                assert!(frame.payload.len() >= 2, "a close without a code");
                let code = u16::from_be_bytes([frame.payload[0], frame.payload[1]]);
                let reason = String::from_utf8(frame.payload[2..].to_vec()).expect("UTF-8");
                close = Some((code, reason, Instant::now()));
                after_close = std::mem::take(&mut buffer);
            } else {
                before.push(frame.first);
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, stream.read(&mut chunk)).await {
            Err(_) => {
                panic!("the connection outlived {PATIENCE:?}: close {close:?}, frames {before:x?}")
            }
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) if close.is_some() => after_close.extend_from_slice(&chunk[..n]),
            Ok(Ok(n)) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
    let Some((code, reason, at)) = close else {
        panic!("the connection ended without a close frame: frames {before:x?}, rest {buffer:x?}");
    };
    assert!(
        after_close.is_empty(),
        "the relay sent bytes after its close frame: {after_close:x?}"
    );
    Ending {
        code,
        reason,
        before,
        close_to_drop: at.elapsed(),
    }
}

/// Opens a WebSocket by hand at `/server`, writes `attack`, and returns how the relay ended it.
pub async fn attack_websocket(addr: SocketAddr, attack: &[u8]) -> Ending {
    let (mut stream, pending) = raw_websocket(addr, "/server").await;
    stream.write_all(attack).await.expect("write the attack");
    read_close(&mut stream, pending).await
}
