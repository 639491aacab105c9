//! Garbage instead of HTTP: deterministic noise, the kinds of garbage a stranger sends, and the
//! status hyper answers each with.

use super::{
    HANDSHAKE_TIMEOUT, SLACK, client_hello, read_until_dropped, status_of, trusting_nobody,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A small deterministic generator (xorshift64*), so each garbage input is different but
/// reproducible.
pub struct Noise(u64);

impl Noise {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut noise = Noise(seed | 1);
        (0..len).map(|_| noise.next() as u8).collect()
    }

    /// Letters only: a "method" that never ends.
    pub fn letters(seed: u64, len: usize) -> Vec<u8> {
        let mut noise = Noise(seed | 1);
        (0..len).map(|_| b'a' + (noise.next() % 26) as u8).collect()
    }
}

/// What a stranger sends instead of an HTTP request, and what hyper answers it.
pub struct Garbage {
    pub what: &'static str,
    pub bytes: Arc<Vec<u8>>,
    /// The HTTP status hyper answers before closing.
    pub status: u16,
}

/// Garbage of every kind, each different: random bytes, a line that never ends, a TLS
/// ClientHello on the plain port, a head over 8 KiB, and too many headers.
pub fn garbage() -> Vec<Garbage> {
    let mut headers = b"GET /server HTTP/1.1\r\nHost: x\r\n".to_vec();
    while headers.len() < 16 * 1024 {
        headers.extend_from_slice(b"X-Filler: ");
        headers.extend_from_slice(&[b'f'; 100]);
        headers.extend_from_slice(b"\r\n");
    }
    headers.extend_from_slice(b"\r\n");
    let mut many = b"GET /server HTTP/1.1\r\nHost: x\r\n".to_vec();
    for n in 0..150 {
        many.extend_from_slice(format!("X-H{n}: 1\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let mut binary_headers = b"GET /server HTTP/1.1\r\n".to_vec();
    binary_headers.extend(Noise::bytes(4, 2048));
    let hello = client_hello(trusting_nobody());
    let cases = [
        ("64 random bytes", Noise::bytes(1, 64), 400),
        ("4 KiB of random bytes", Noise::bytes(2, 4096), 400),
        ("1 MiB of random bytes", Noise::bytes(3, 1 << 20), 400),
        (
            "a 1 MiB line of letters with no newline",
            Noise::letters(5, 1 << 20),
            431,
        ),
        ("a request line then binary headers", binary_headers, 400),
        ("a TLS ClientHello on the plain port", hello, 400),
        ("16 KiB of headers", headers, 431),
        ("150 small headers", many, 431),
    ];
    cases
        .into_iter()
        .map(|(what, bytes, status)| Garbage {
            what,
            bytes: Arc::new(bytes),
            status,
        })
        .collect()
}

/// Sends `bytes` (while reading, so a relay that answers early is heard) and returns the answer
/// and how long the connection lived.
pub async fn send_garbage(addr: SocketAddr, bytes: Arc<Vec<u8>>) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let writing = tokio::spawn(async move {
        let _ = writer.write_all(&bytes).await;
        // Hold the write half open: only the relay may end this connection.
        std::future::pending::<()>().await;
    });
    let result = read_until_dropped(&mut reader, started, HANDSHAKE_TIMEOUT + SLACK * 2).await;
    writing.abort();
    result
}

/// Checks one garbage answer: exactly the status hyper gives that kind of garbage.
///
/// The relay closes with our bytes unread, so its kernel may answer our writes with a reset; the
/// answer was queued before the reset, and Linux hands queued bytes to `read` before the error.
pub fn assert_garbage_answer(garbage: &Garbage, answer: &[u8]) {
    let text = String::from_utf8_lossy(answer);
    assert!(!answer.is_empty(), "{}: no answer", garbage.what);
    assert_eq!(
        status_of(&text),
        garbage.status,
        "{}: {text:?}",
        garbage.what
    );
}
