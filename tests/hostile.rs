//! Hostile peers and strangers: none of them can crash the relay, starve the peers around it, or
//! grow its memory without bound.
//!
//! Every test keeps ordinary server/client pairs talking before, during and after its attack
//! ([`Bystanders`]), asserting that each of their messages arrives in order, and ends on the close
//! code or HTTP answer the README documents. WebSocket frames a library would refuse to send are
//! written byte by byte over plain TCP, and the relay's answer is parsed from the raw bytes.

mod common;

use common::{
    PATIENCE, RelayProcess, Socket, TestPeer, TestRelay, config, connect_wss, status_of, trusting,
};
use futures_util::{SinkExt, StreamExt};
use intercessor::Config;
use intercessor::config::TlsSource;
use rustls::pki_types::ServerName;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Once;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{sleep, timeout};
use tokio_tungstenite::connect_async_with_config;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// These tests load a 2-core machine on purpose and two of them measure time or memory, so they
/// run one at a time rather than on top of each other.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Panics anywhere in this process. tokio catches a panic in the in-process relay's tasks, and
/// the connection would then look merely dropped, so each test also checks this count.
static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Held for a whole test: no other test runs meanwhile, so any panic counted is this test's.
struct Alone {
    _turn: tokio::sync::MutexGuard<'static, ()>,
    panics_before: usize,
}

impl Alone {
    async fn begin() -> Alone {
        static HOOK: Once = Once::new();
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                PANICS.fetch_add(1, Ordering::SeqCst);
                previous(info);
            }));
        });
        let turn = ONE_AT_A_TIME.lock().await;
        Alone {
            _turn: turn,
            panics_before: PANICS.load(Ordering::SeqCst),
        }
    }

    /// Asserts that nothing panicked during the test: no relay task and no helper task.
    fn no_task_panicked(&self) {
        let panics = PANICS.load(Ordering::SeqCst) - self.panics_before;
        assert_eq!(panics, 0, "{panics} task(s) panicked; see the output above");
    }
}

/// How long the relay lingers after its close frame for the peer's answer (`CLOSE_GRACE` in
/// src/edge/session.rs): a peer that never answers is dropped by then.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Allowance for a busy 2-core machine on top of any deadline the relay promises.
const SLACK: Duration = Duration::from_secs(2);

/// The `--handshake-timeout` the attacks on the handshake run against.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);

/// Longest any one attack may take, all its connections included: a backstop, far above what
/// each needs (the memory test's, the longest, takes about 10 s).
const ATTACK_PATIENCE: Duration = Duration::from_secs(40);

// ---------------------------------------------------------------------------------------------
// Bystanders: well-behaved pairs that must not notice the attack.
// ---------------------------------------------------------------------------------------------

/// Where well-behaved peers connect: plain `ws://`, or `wss://` trusting one CA.
#[derive(Clone)]
enum Endpoint {
    Plain(SocketAddr),
    Tls(SocketAddr, Arc<rustls::ClientConfig>),
}

impl Endpoint {
    async fn open(&self, path: &str) -> Socket {
        match self {
            // Nagle off, as the relay has it: with it on, a client's second message in a row
            // waits for the relay's delayed ACK (40 ms), which would swamp every latency here.
            Endpoint::Plain(addr) => {
                let url = format!("ws://{addr}{path}");
                let connect = connect_async_with_config(url, None, true);
                timeout(PATIENCE, connect)
                    .await
                    .expect("connect in time")
                    .expect("upgrade accepted")
                    .0
            }
            Endpoint::Tls(addr, trust) => connect_wss(*addr, "localhost", path, trust.clone())
                .await
                .expect("wss upgrade accepted"),
        }
    }

    /// Connects and reads HELLO, keeping the id it carries.
    async fn join(&self, path: &str) -> TestPeer {
        TestPeer::greeted(self.open(path).await).await
    }

    /// A server and one client of it, PEER_JOINED consumed.
    async fn pair(&self) -> (TestPeer, TestPeer) {
        let mut server = self.join("/server").await;
        let client = self.join(&format!("/client/{}", server.id)).await;
        server
            .expect_relay("PEER_JOINED", json!({"id": client.id}))
            .await;
        (server, client)
    }
}

/// Messages per round: enough that a reordering would show.
const BURST: u64 = 3;

/// One round: the client sends `BURST` numbered messages, the server checks each arrives in order
/// and echoes it, the client checks the echoes arrive in order.
async fn exchange(server: &mut TestPeer, client: &mut TestPeer, first: u64) {
    for n in first..first + BURST {
        client.send_to(&server.id, "SEQ", json!(n)).await;
    }
    for n in first..first + BURST {
        assert_eq!(
            server.recv().await,
            json!({"from": client.id, "type": "SEQ", "message": n})
        );
        server.send_to(&client.id, "ACK", json!(n)).await;
    }
    for n in first..first + BURST {
        assert_eq!(
            client.recv().await,
            json!({"from": server.id, "type": "ACK", "message": n})
        );
    }
}

/// The client leaves cleanly, its server hears PEER_GONE, then the server leaves.
async fn leave(mut server: TestPeer, mut client: TestPeer) {
    client.ws.close(None).await.expect("the client closes");
    let _ = timeout(PATIENCE, async {
        while let Some(Ok(_)) = client.ws.next().await {}
    })
    .await;
    server
        .expect_relay("PEER_GONE", json!({"id": client.id}))
        .await;
    server.ws.close(None).await.expect("the server closes");
    let _ = timeout(PATIENCE, async {
        while let Some(Ok(_)) = server.ws.next().await {}
    })
    .await;
}

/// A bystander pair's pause between rounds: 3 messages each way per round stay well under the
/// default `--rate-limit` of 50 messages per second, and well inside a 500 ms idle timeout.
const BYSTANDER_PAUSE: Duration = Duration::from_millis(100);

/// Pairs that keep exchanging numbered messages (see [`exchange`]) until [`Bystanders::finish`].
struct Bystanders {
    rounds: Arc<Vec<AtomicU64>>,
    /// Longest round so far, in microseconds.
    worst_round_us: Arc<AtomicU64>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Bystanders {
    async fn start(endpoint: &Endpoint, pairs: usize) -> Bystanders {
        let rounds: Arc<Vec<AtomicU64>> = Arc::new((0..pairs).map(|_| AtomicU64::new(0)).collect());
        let worst_round_us = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        for index in 0..pairs {
            let (mut server, mut client) = endpoint.pair().await;
            let (rounds, worst, stop) = (rounds.clone(), worst_round_us.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut next = 0;
                while !stop.is_cancelled() {
                    let started = Instant::now();
                    exchange(&mut server, &mut client, next).await;
                    worst.fetch_max(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                    next += BURST;
                    rounds[index].fetch_add(1, Ordering::Relaxed);
                    tokio::select! {
                        _ = sleep(BYSTANDER_PAUSE) => {}
                        _ = stop.cancelled() => {}
                    }
                }
                leave(server, client).await;
            }));
        }
        Bystanders {
            rounds,
            worst_round_us,
            stop,
            tasks,
        }
    }

    /// Waits until every pair has completed a few more rounds: they are being served right now.
    async fn keep_talking(&mut self, when: &str) {
        const MORE: u64 = 3;
        let from: Vec<u64> = self
            .rounds
            .iter()
            .map(|r| r.load(Ordering::Relaxed))
            .collect();
        let deadline = Instant::now() + PATIENCE;
        loop {
            let done = self
                .rounds
                .iter()
                .zip(&from)
                .all(|(r, from)| r.load(Ordering::Relaxed) >= from + MORE);
            if done {
                return;
            }
            if let Some(failed) = self.tasks.iter().position(JoinHandle::is_finished) {
                surface(self.tasks.swap_remove(failed).await);
                panic!("a bystander pair stopped {when}");
            }
            assert!(
                Instant::now() < deadline,
                "bystander pairs stalled {when}: rounds {:?} → {:?}",
                from,
                self.rounds
                    .iter()
                    .map(|r| r.load(Ordering::Relaxed))
                    .collect::<Vec<_>>()
            );
            sleep(Duration::from_millis(10)).await;
        }
    }

    /// Keeps checking the pairs until `attack` is over; returns what it returned.
    async fn alongside<T>(&mut self, attack: JoinHandle<T>) -> T {
        let deadline = Instant::now() + ATTACK_PATIENCE;
        while !attack.is_finished() {
            assert!(
                Instant::now() < deadline,
                "the attack outlived {ATTACK_PATIENCE:?}"
            );
            self.keep_talking("during the attack").await;
        }
        surface(attack.await)
    }

    /// Stops the pairs, lets each leave cleanly, and returns (rounds, longest round).
    async fn finish(self) -> (u64, Duration) {
        self.stop.cancel();
        for task in self.tasks {
            surface(
                timeout(PATIENCE * 2, task)
                    .await
                    .expect("bystander pairs leave in time"),
            );
        }
        let rounds = self.rounds.iter().map(|r| r.load(Ordering::Relaxed)).sum();
        let worst = Duration::from_micros(self.worst_round_us.load(Ordering::Relaxed));
        (rounds, worst)
    }
}

/// Re-raises a task's panic in the test.
fn surface<T>(result: Result<T, tokio::task::JoinError>) -> T {
    result.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

// ---------------------------------------------------------------------------------------------
// Strangers at the HTTP and TLS layers.
// ---------------------------------------------------------------------------------------------

/// A small deterministic generator (xorshift64*), so each garbage input is different but
/// reproducible.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut noise = Noise(seed | 1);
        (0..len).map(|_| noise.next() as u8).collect()
    }

    /// Letters only: a "method" that never ends.
    fn letters(seed: u64, len: usize) -> Vec<u8> {
        let mut noise = Noise(seed | 1);
        (0..len).map(|_| b'a' + (noise.next() % 26) as u8).collect()
    }
}

/// Reads until the relay ends the connection (EOF or reset); returns what it sent and when it
/// ended, measured from `since`. Panics if the connection outlives `within`.
async fn read_until_dropped(
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

/// A request head worth 10 s at one byte per 50 ms: far longer than the handshake deadline.
fn slow_request_head() -> Vec<u8> {
    let mut head = b"GET /server HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
                     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Padding: "
        .to_vec();
    head.resize(200, b'a');
    head.extend_from_slice(b"\r\n\r\n");
    head
}

/// A slow-loris: opens a connection (holding a `gate` permit only while connecting) and sends a
/// request head one byte every 50 ms. Returns how long the relay let it live and what it answered.
async fn slow_loris(addr: SocketAddr, gate: Arc<Semaphore>) -> (Duration, Vec<u8>) {
    let permit = gate.acquire_owned().await.expect("gate open");
    let started = Instant::now();
    let stream = TcpStream::connect(addr).await.expect("connect");
    drop(permit);
    let (mut reader, mut writer) = stream.into_split();
    let trickle = async move {
        for byte in slow_request_head() {
            if writer.write_all(&[byte]).await.is_err() {
                break;
            }
            sleep(Duration::from_millis(50)).await;
        }
        // Hold the write half open: only the relay may end this connection.
        std::future::pending::<()>().await;
    };
    let within = HANDSHAKE_TIMEOUT + SLACK * 2;
    tokio::select! {
        (answer, lived) = read_until_dropped(&mut reader, started, within) => (lived, answer),
        () = trickle => unreachable!("the trickle never ends"),
    }
}

/// Opens `count` slow-loris connections, at most 50 connecting at once, and waits for them all.
async fn slow_loris_attack(addr: SocketAddr, count: usize) -> Vec<(Duration, Vec<u8>)> {
    let gate = Arc::new(Semaphore::new(50));
    let mut attackers = JoinSet::new();
    for _ in 0..count {
        attackers.spawn(slow_loris(addr, gate.clone()));
    }
    surface_all(attackers).await
}

async fn surface_all<T: 'static>(mut set: JoinSet<T>) -> Vec<T> {
    let mut results = Vec::new();
    while let Some(result) = set.join_next().await {
        results.push(surface(result));
    }
    results
}

/// What a stranger sends instead of an HTTP request, and what hyper answers it.
struct Garbage {
    what: &'static str,
    bytes: Arc<Vec<u8>>,
    /// The HTTP status hyper answers before closing.
    status: u16,
}

/// Garbage of every kind, each different: random bytes, a line that never ends, a TLS
/// ClientHello on the plain port, a head over 8 KiB, and too many headers.
fn garbage() -> Vec<Garbage> {
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
    let mut hello = Vec::new();
    rustls::ClientConnection::new(
        trusting_nobody(),
        ServerName::try_from("localhost").expect("name"),
    )
    .expect("client")
    .write_tls(&mut hello)
    .expect("ClientHello");
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
async fn send_garbage(addr: SocketAddr, bytes: Arc<Vec<u8>>) -> (Vec<u8>, Duration) {
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
fn assert_garbage_answer(garbage: &Garbage, answer: &[u8]) {
    let text = String::from_utf8_lossy(answer);
    assert!(!answer.is_empty(), "{}: no answer", garbage.what);
    assert_eq!(
        status_of(&text),
        garbage.status,
        "{}: {text:?}",
        garbage.what
    );
}

/// A client TLS configuration that trusts no one: enough to make a ClientHello.
fn trusting_nobody() -> Arc<rustls::ClientConfig> {
    common::client_tls(rustls::RootCertStore::empty())
}

// ---------------------------------------------------------------------------------------------
// WebSocket frames by hand.
// ---------------------------------------------------------------------------------------------

const MASK_KEY: [u8; 4] = [0x5a, 0x13, 0xc7, 0x8e];

/// A frame header as a client writes it: the FIN/RSV/opcode byte; the mask bit with a 7-bit
/// length, or 126 and a 16-bit length, or 127 and a 64-bit length; then the mask key.
fn frame_header(first: u8, len: u64, masked: bool) -> Vec<u8> {
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
fn masked(payload: &[u8]) -> Vec<u8> {
    payload
        .iter()
        .enumerate()
        .map(|(i, byte)| byte ^ MASK_KEY[i % 4])
        .collect()
}

/// A whole, properly masked client frame.
fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = frame_header(first, payload.len() as u64, true);
    frame.extend(masked(payload));
    frame
}

/// Opens a WebSocket at `path` by hand over TCP. Returns the stream and whatever arrived after
/// the `101` head (usually the start of HELLO).
async fn raw_websocket(addr: SocketAddr, path: &str) -> (TcpStream, Vec<u8>) {
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
struct ServerFrame {
    first: u8,
    payload: Vec<u8>,
}

/// Parses one whole frame from the front of `buf`, with the bytes it took.
fn parse_server_frame(buf: &[u8]) -> Option<(ServerFrame, usize)> {
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
struct Ending {
    code: u16,
    reason: String,
    /// First bytes of the frames before the close (HELLO is `0x81`, a ping `0x89`).
    before: Vec<u8>,
    /// From the close frame's arrival to the end of the TCP connection.
    close_to_drop: Duration,
}

/// Reads the relay's frames until its close frame, without ever answering (no pong, no close),
/// then until the TCP connection ends. `buffer` holds bytes already read.
async fn read_close(stream: &mut (impl AsyncReadExt + Unpin), mut buffer: Vec<u8>) -> Ending {
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
async fn attack_websocket(addr: SocketAddr, attack: &[u8]) -> Ending {
    let (mut stream, pending) = raw_websocket(addr, "/server").await;
    stream.write_all(attack).await.expect("write the attack");
    read_close(&mut stream, pending).await
}

/// Declares a frame far over the limit and then really streams its payload, as fast as the relay
/// takes it, while reading: the relay must close with 1009 without taking it all.
async fn streaming_oversized_frame(addr: SocketAddr, declared: u64) -> (Ending, u64) {
    let (stream, pending) = raw_websocket(addr, "/server").await;
    let (mut reader, mut writer) = stream.into_split();
    let writing = tokio::spawn(async move {
        let mut sent = 0u64;
        if writer
            .write_all(&frame_header(0x81, declared, true))
            .await
            .is_err()
        {
            return sent;
        }
        let chunk = masked(&[b'x'; 4096]);
        while sent < declared {
            if writer.write_all(&chunk).await.is_err() {
                break;
            }
            sent += chunk.len() as u64;
        }
        sent
    });
    let ending = read_close(&mut reader, pending).await;
    let sent = timeout(PATIENCE, writing)
        .await
        .expect("the writer stops once the relay drops")
        .expect("no panic");
    (ending, sent)
}

/// Every WebSocket-level attack, by name, with the close code the README documents for it, for
/// a relay whose `--max-message-bytes` is `max_message_bytes`.
fn websocket_attacks(max_message_bytes: u64) -> Vec<(&'static str, Vec<u8>, u16)> {
    let over = max_message_bytes + 1;
    let mut header_only = frame_header(0x81, 1 << 30, true);
    header_only.extend(masked(b"{\"to\""));
    let mut just_over = frame_header(0x81, over, true);
    just_over.extend(masked(b"{\"to\""));
    let mut max_length = frame_header(0x82, u64::MAX, true);
    max_length.extend(masked(b"xx"));
    let half = (max_message_bytes / 2 + 10) as usize;
    let mut fragmented = client_frame(0x01, &vec![b'a'; half]);
    fragmented.extend(client_frame(0x00, &vec![b'a'; half]));
    fragmented.extend(client_frame(0x80, b"a"));
    let mut many_fragments = client_frame(0x01, &[b'a'; 100]);
    for _ in 0..max_message_bytes / 100 + 5 {
        many_fragments.extend(client_frame(0x00, &[b'a'; 100]));
    }
    let mut split_utf8 = client_frame(0x01, b"{\"to\":\"\xc3");
    split_utf8.extend(client_frame(0x80, b"\x28\"}"));
    let mut unmasked = frame_header(0x81, 5, false);
    unmasked.extend_from_slice(b"hello");
    let mut interleaved = client_frame(0x01, b"{\"to\":");
    interleaved.extend(client_frame(0x81, b"{}"));
    vec![
        (
            "invalid UTF-8 in a text frame",
            client_frame(0x81, b"{\"to\":\"\xff\xfe\",\"type\":\"X\"}"),
            1007,
        ),
        ("invalid UTF-8 across two fragments", split_utf8, 1007),
        ("a header declaring 1 GiB, then 5 bytes", header_only, 1009),
        ("a header declaring one byte too many", just_over, 1009),
        ("a header declaring 2^64-1 bytes", max_length, 1009),
        ("two fragments over the limit together", fragmented, 1009),
        ("many small fragments over the limit", many_fragments, 1009),
        (
            "a ping with a 126-byte payload",
            client_frame(0x89, &[7; 126]),
            1002,
        ),
        ("a fragmented ping", client_frame(0x09, b"x"), 1002),
        ("an unmasked text frame", unmasked, 1002),
        ("reserved data opcode 0x3", client_frame(0x83, b"{}"), 1002),
        (
            "reserved control opcode 0xB",
            client_frame(0x8b, b"x"),
            1002,
        ),
        ("RSV1 set", client_frame(0xc1, b"{}"), 1002),
        ("RSV2 and RSV3 set", client_frame(0xb1, b"{}"), 1002),
        (
            "a continuation with nothing to continue",
            client_frame(0x80, b"x"),
            1002,
        ),
        ("a new message inside a fragmented one", interleaved, 1002),
    ]
}

// ---------------------------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_slow_loris_connections_are_dropped_at_the_deadline_while_pairs_talk_on() {
    let turn = Alone::begin().await;
    let relay = TestRelay::start(Config {
        handshake_timeout: HANDSHAKE_TIMEOUT,
        ..config()
    })
    .await;
    let mut bystanders = Bystanders::start(&Endpoint::Plain(relay.addr), 4).await;
    bystanders.keep_talking("before the attack").await;

    let attack = tokio::spawn(slow_loris_attack(relay.addr, 500));
    let lorises = bystanders.alongside(attack).await;
    bystanders.keep_talking("after the attack").await;

    assert_eq!(lorises.len(), 500);
    for (lived, answer) in &lorises {
        assert!(
            *lived >= HANDSHAKE_TIMEOUT - Duration::from_millis(50),
            "dropped before the deadline: {lived:?}"
        );
        assert!(
            *lived < HANDSHAKE_TIMEOUT + SLACK,
            "held past the deadline: {lived:?}"
        );
        // hyper answers nothing to a head that times out: the connection is just dropped.
        assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(answer));
    }
    let longest = lorises.iter().map(|(lived, _)| *lived).max();
    let (rounds, worst) = bystanders.finish().await;
    eprintln!(
        "slow loris: longest lived {longest:?}; bystanders: {rounds} rounds, worst {worst:?}"
    );
    // A newcomer is served as usual.
    let (mut server, mut client) = Endpoint::Plain(relay.addr).pair().await;
    exchange(&mut server, &mut client, 0).await;
    turn.no_task_panicked();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_instead_of_http_gets_400_or_431_and_is_dropped_while_pairs_talk_on() {
    let turn = Alone::begin().await;
    let relay = TestRelay::start(Config {
        handshake_timeout: HANDSHAKE_TIMEOUT,
        ..config()
    })
    .await;
    let mut bystanders = Bystanders::start(&Endpoint::Plain(relay.addr), 4).await;
    bystanders.keep_talking("before the attack").await;

    let addr = relay.addr;
    let attack = tokio::spawn(async move {
        let mut strangers = JoinSet::new();
        for garbage in garbage() {
            strangers.spawn(async move {
                let (answer, lived) = send_garbage(addr, garbage.bytes.clone()).await;
                (garbage, answer, lived)
            });
        }
        surface_all(strangers).await
    });
    let answers = bystanders.alongside(attack).await;
    bystanders.keep_talking("after the attack").await;

    for (garbage, answer, lived) in &answers {
        let first_line = String::from_utf8_lossy(answer)
            .lines()
            .next()
            .unwrap_or("(nothing)")
            .to_owned();
        eprintln!("{}: {first_line} after {lived:?}", garbage.what);
        assert_garbage_answer(garbage, answer);
        // Garbage is refused as soon as it is read, not at the handshake deadline.
        assert!(
            *lived < HANDSHAKE_TIMEOUT,
            "{}: held for {lived:?}",
            garbage.what
        );
    }
    // The over-long head, sent once more on its own: hyper's exact answer.
    let head = garbage()
        .into_iter()
        .find(|g| g.what == "16 KiB of headers")
        .expect("case");
    let (answer, _) = send_garbage(relay.addr, head.bytes).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{answer:?}"
    );
    let (rounds, worst) = bystanders.finish().await;
    eprintln!("bystanders: {rounds} rounds, worst {worst:?}");
    turn.no_task_panicked();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_that_stalls_mid_handshake_is_dropped_at_the_deadline_while_wss_pairs_talk_on()
{
    let turn = Alone::begin().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (paths, _) = intercessor::edge::devcert::ensure(dir.path(), &[]).expect("certificates");
    let relay = TestRelay::start(Config {
        handshake_timeout: HANDSHAKE_TIMEOUT,
        tls: Some(TlsSource::Files {
            cert: paths.cert.clone(),
            key: paths.key.clone(),
        }),
        ..config()
    })
    .await;
    let trust = trusting(&paths.ca_cert);
    let mut bystanders = Bystanders::start(&Endpoint::Tls(relay.addr, trust.clone()), 4).await;
    bystanders.keep_talking("before the attack").await;

    let addr = relay.addr;
    let attack = tokio::spawn(async move {
        let mut stallers = JoinSet::new();
        for round in 0..10 {
            for stage in Stall::ALL {
                let trust = trust.clone();
                stallers.spawn(async move {
                    let (answer, lived) = stall_tls(addr, stage, trust, round).await;
                    (stage, answer, lived)
                });
            }
        }
        surface_all(stallers).await
    });
    let stalled = bystanders.alongside(attack).await;
    bystanders.keep_talking("after the attack").await;

    for (stage, answer, lived) in &stalled {
        assert!(
            *lived >= HANDSHAKE_TIMEOUT - Duration::from_millis(50),
            "{stage:?}: dropped before the deadline, after {lived:?}"
        );
        assert!(
            *lived < HANDSHAKE_TIMEOUT + SLACK,
            "{stage:?}: held past the deadline: {lived:?}"
        );
        match stage {
            // The relay answered the ClientHello with its own flight, then waited for ours.
            Stall::AfterServerFlight => assert_eq!(answer.first(), Some(&0x16), "{answer:x?}"),
            // No alert, no HTTP: the socket is just closed.
            _ => assert!(answer.is_empty(), "{stage:?}: {answer:x?}"),
        }
    }
    let (rounds, worst) = bystanders.finish().await;
    eprintln!("bystanders over wss: {rounds} rounds, worst {worst:?}");
    turn.no_task_panicked();
}

/// Where a TLS client stops.
#[derive(Debug, Clone, Copy)]
enum Stall {
    /// Connects and sends nothing.
    Silent,
    /// Sends the first half of its ClientHello.
    HalfClientHello,
    /// Sends a record header announcing 16 KiB and nothing of it.
    RecordHeaderOnly,
    /// Sends its ClientHello, reads the relay's flight, never sends its Finished.
    AfterServerFlight,
    /// Completes the handshake, then never sends an HTTP request: the deadline covers both.
    AfterHandshake,
}

impl Stall {
    const ALL: [Stall; 5] = [
        Stall::Silent,
        Stall::HalfClientHello,
        Stall::RecordHeaderOnly,
        Stall::AfterServerFlight,
        Stall::AfterHandshake,
    ];
}

/// Stalls a TLS handshake at `stage`; returns what the relay sent and when it dropped us,
/// measured from the TCP connect.
async fn stall_tls(
    addr: SocketAddr,
    stage: Stall,
    trust: Arc<rustls::ClientConfig>,
    round: u64,
) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let within = HANDSHAKE_TIMEOUT + SLACK * 2;
    let name = ServerName::try_from("localhost").expect("name");
    let mut hello = Vec::new();
    rustls::ClientConnection::new(trust.clone(), name.clone())
        .expect("client")
        .write_tls(&mut hello)
        .expect("ClientHello");
    match stage {
        Stall::Silent => {}
        Stall::HalfClientHello => {
            let cut = hello.len() / 2 + (round as usize % 7);
            tcp.write_all(&hello[..cut]).await.expect("write");
        }
        Stall::RecordHeaderOnly => {
            tcp.write_all(&[0x16, 0x03, 0x01, 0x40, 0x00])
                .await
                .expect("write");
        }
        Stall::AfterServerFlight => tcp.write_all(&hello).await.expect("write"),
        Stall::AfterHandshake => {
            let connector = tokio_rustls::TlsConnector::from(trust);
            let mut tls = timeout(PATIENCE, connector.connect(name, tcp))
                .await
                .expect("handshake in time")
                .expect("handshake");
            return read_until_dropped(&mut tls, started, within).await;
        }
    }
    read_until_dropped(&mut tcp, started, within).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_protocol_violations_get_their_documented_close_and_lose_the_connection() {
    let turn = Alone::begin().await;
    const LIMIT: usize = 1024;
    let relay = TestRelay::start(Config {
        max_message_bytes: LIMIT,
        ..config()
    })
    .await;
    let mut bystanders = Bystanders::start(&Endpoint::Plain(relay.addr), 4).await;
    bystanders.keep_talking("before the attacks").await;

    let addr = relay.addr;
    let attack = tokio::spawn(async move {
        let mut attackers = JoinSet::new();
        for (what, bytes, code) in websocket_attacks(LIMIT as u64) {
            attackers.spawn(async move { (what, code, attack_websocket(addr, &bytes).await) });
        }
        let streamed = tokio::spawn(streaming_oversized_frame(addr, 64 << 20));
        (surface_all(attackers).await, surface(streamed.await))
    });
    let (endings, (streamed, streamed_bytes)) = bystanders.alongside(attack).await;
    bystanders.keep_talking("after the attacks").await;

    for (what, code, ending) in &endings {
        eprintln!("{what}: {ending:?}");
        assert_eq!(ending.code, *code, "{what}: {ending:?}");
        assert!(!ending.reason.is_empty(), "{what}: {ending:?}");
        assert_eq!(ending.before, [0x81], "{what}: HELLO, then the close");
        assert!(
            ending.close_to_drop < CLOSE_GRACE + SLACK,
            "{what}: the TCP connection outlived the close by {:?}",
            ending.close_to_drop
        );
    }
    eprintln!("streamed 64 MiB frame: {streamed:?}, {streamed_bytes} bytes written");
    assert_eq!(streamed.code, 1009, "{streamed:?}");
    assert!(
        streamed_bytes < 64 << 20,
        "the relay took the whole oversized frame"
    );
    assert!(streamed.close_to_drop < CLOSE_GRACE + SLACK, "{streamed:?}");
    let (rounds, worst) = bystanders.finish().await;
    eprintln!("bystanders: {rounds} rounds, worst {worst:?}");
    turn.no_task_panicked();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_answers_pings_is_closed_4408_and_dropped_within_a_second() {
    let turn = Alone::begin().await;
    let idle_timeout = Duration::from_millis(500);
    let relay = TestRelay::start(Config {
        ping_interval: Duration::from_millis(100),
        idle_timeout,
        ..config()
    })
    .await;
    // Bystanders read (and so answer pings) and send every 100 ms or so: they are never idle.
    let mut bystanders = Bystanders::start(&Endpoint::Plain(relay.addr), 4).await;
    bystanders.keep_talking("before the silent peers").await;

    let addr = relay.addr;
    let attack = tokio::spawn(async move {
        let mut silent = JoinSet::new();
        for _ in 0..20 {
            silent.spawn(async move {
                // Before the upgrade: the relay's idle clock starts at it.
                let opened = Instant::now();
                let (mut stream, pending) = raw_websocket(addr, "/server").await;
                let ending = read_close(&mut stream, pending).await;
                (opened.elapsed(), ending)
            });
        }
        surface_all(silent).await
    });
    let endings = bystanders.alongside(attack).await;
    bystanders.keep_talking("after the silent peers").await;

    for (lived, ending) in &endings {
        assert_eq!(
            (ending.code, ending.reason.as_str()),
            (4408, "idle timeout")
        );
        assert_eq!(ending.before.first(), Some(&0x81), "HELLO first");
        assert!(
            ending.before[1..].iter().all(|&first| first == 0x89),
            "only pings between HELLO and the close: {:x?}",
            ending.before
        );
        assert!(ending.before.len() >= 4, "pinged every 100 ms: {ending:?}");
        assert!(*lived >= idle_timeout, "closed before the idle timeout");
        // README: "the TCP connection is dropped within a second of the close frame even if the
        // peer never answers"; the slack is for a loaded machine.
        assert!(
            ending.close_to_drop < CLOSE_GRACE + Duration::from_millis(500),
            "dropped {:?} after the close",
            ending.close_to_drop
        );
    }
    let slowest = endings.iter().map(|(_, e)| e.close_to_drop).max();
    let (rounds, worst) = bystanders.finish().await;
    eprintln!(
        "4408: slowest drop after close {slowest:?}; bystanders {rounds} rounds, worst {worst:?}"
    );
    turn.no_task_panicked();
}

/// `VmRSS` (or another `Vm*` line) of a process, in KiB.
fn vm_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Pairs that connect, exchange one round, and leave, `concurrency` at a time.
async fn passing_pairs(endpoint: Endpoint, count: usize, concurrency: usize) {
    let gate = Arc::new(Semaphore::new(concurrency));
    let mut pairs = JoinSet::new();
    for _ in 0..count {
        let (gate, endpoint) = (gate.clone(), endpoint.clone());
        pairs.spawn(async move {
            let _permit = gate.acquire_owned().await.expect("gate open");
            let (mut server, mut client) = endpoint.pair().await;
            exchange(&mut server, &mut client, 0).await;
            leave(server, client).await;
        });
    }
    surface_all(pairs).await;
}

/// Hand-made WebSockets that each declare a frame far over the default 64 KiB limit.
async fn oversized_frames(addr: SocketAddr, count: usize, concurrency: usize) {
    let gate = Arc::new(Semaphore::new(concurrency));
    let mut attackers = JoinSet::new();
    for n in 0..count {
        let gate = gate.clone();
        attackers.spawn(async move {
            let _permit = gate.acquire_owned().await.expect("gate open");
            let mut attack = frame_header(0x81, (1 << 30) + n as u64, true);
            attack.extend(masked(b"{\"to\":"));
            let ending = attack_websocket(addr, &attack).await;
            assert_eq!(ending.code, 1009, "{ending:?}");
        });
    }
    surface_all(attackers).await;
}

/// Garbage connections, cycling through every kind of [`garbage`].
async fn garbage_connections(addr: SocketAddr, count: usize, concurrency: usize) {
    let kinds = Arc::new(garbage());
    let gate = Arc::new(Semaphore::new(concurrency));
    let mut strangers = JoinSet::new();
    for n in 0..count {
        let (gate, kinds) = (gate.clone(), kinds.clone());
        strangers.spawn(async move {
            let _permit = gate.acquire_owned().await.expect("gate open");
            let garbage = &kinds[n % kinds.len()];
            let (answer, _) = send_garbage(addr, garbage.bytes.clone()).await;
            assert_garbage_answer(garbage, &answer);
        });
    }
    surface_all(strangers).await;
}

/// One round of every attack at once against the real binary, as the memory test runs it.
async fn every_attack_at_once(addr: SocketAddr, scale: usize) {
    let endpoint = Endpoint::Plain(addr);
    let lorises = tokio::spawn(slow_loris_attack(addr, 500 / scale));
    let frames = tokio::spawn(oversized_frames(addr, 200 / scale, 50));
    let garbage = tokio::spawn(garbage_connections(addr, 200 / scale, 50));
    let pairs = tokio::spawn(passing_pairs(endpoint, 2000 / scale, 20));
    surface(pairs.await);
    surface(garbage.await);
    surface(frames.await);
    for (lived, _) in surface(lorises.await) {
        assert!(
            lived < HANDSHAKE_TIMEOUT + SLACK,
            "a slow loris lived {lived:?}"
        );
    }
}

/// The relay's resident memory once the sessions an attack left behind have ended, in KiB.
/// Every attacker waits for the relay to drop it, so half a second is plenty.
async fn settled_rss(pid: u32) -> u64 {
    sleep(Duration::from_millis(500)).await;
    vm_kib(pid, "VmRSS:")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relays_memory_stays_bounded_under_every_attack_at_once() {
    let turn = Alone::begin().await;
    // All the traffic here comes from 127.0.0.1; the per-address bound (256 sessions) would cap
    // the attack itself, and the point is to measure the relay carrying its full weight.
    let mut relay = RelayProcess::start(
        &["--handshake-timeout", "1s", "--max-connections-per-ip", "0"],
        &[],
    );
    let pid = relay.child.id();
    let addr = relay.addr;
    let mut bystanders = Bystanders::start(&Endpoint::Plain(addr), 4).await;
    bystanders.keep_talking("before the attack").await;

    // Warm up every path (allocator arenas, hyper and tungstenite buffers, the hub's maps) with a
    // tenth of the attack, so what follows measures growth rather than first use.
    let warm_up = tokio::spawn(every_attack_at_once(addr, 10));
    bystanders.alongside(warm_up).await;
    let before = settled_rss(pid).await;

    let started = Instant::now();
    let attack = tokio::spawn(every_attack_at_once(addr, 1));
    bystanders.alongside(attack).await;
    let took = started.elapsed();
    let after = settled_rss(pid).await;
    let peak = vm_kib(pid, "VmHWM:");
    bystanders.keep_talking("after the attack").await;
    let (rounds, worst) = bystanders.finish().await;
    eprintln!(
        "relay RSS: {before} KiB warmed up, {after} KiB after the attack (+{} KiB), peak {peak} \
         KiB; the attack took {took:?}; bystanders {rounds} rounds, worst {worst:?}",
        after.saturating_sub(before)
    );

    // Measured on a 2-core machine, debug build: 17–19 MiB warmed up, +6 to +8 MiB after 500
    // slow-loris connections, 200 oversized frames, 200 garbage connections and 2,000 pairs at
    // once, peak about 27 MiB. Repeating the slow-loris round alone 16 times levels off at
    // about 27 MiB: what stays is allocator fragmentation, not a leak. 32 MiB is 4× what was
    // measured; a leak of 10 KiB per connection (about 5,000 here) would still exceed it.
    const BOUND_KIB: u64 = 32 * 1024;
    assert!(
        after.saturating_sub(before) < BOUND_KIB,
        "RSS grew from {before} KiB to {after} KiB under attack"
    );
    // And the relay serves a newcomer as usual.
    let (mut server, mut client) = Endpoint::Plain(addr).pair().await;
    exchange(&mut server, &mut client, 0).await;
    leave(server, client).await;
    let exited = relay.child.try_wait().expect("the relay's status");
    assert!(exited.is_none(), "the relay exited: {exited:?}");
    turn.no_task_panicked();
}

/// A client doing request/echo round trips with its server, one request in flight (window 1).
struct Quiet {
    client: TestPeer,
    server_id: String,
    echo: JoinHandle<()>,
}

/// `count` quiet pairs, each server echoing whatever its client sends until the client leaves.
async fn quiet_pairs(endpoint: &Endpoint, count: usize) -> Vec<Quiet> {
    let mut quiet = Vec::new();
    for _ in 0..count {
        let (mut server, client) = endpoint.pair().await;
        let server_id = server.id.clone();
        let echo = tokio::spawn(async move {
            loop {
                let frame = server.recv().await;
                if frame["type"] == "PEER_GONE" {
                    return;
                }
                assert_eq!(frame["type"], "REQUEST", "{frame}");
                let from = frame["from"].as_str().expect("from").to_owned();
                server
                    .send_to(&from, "ECHO", frame["message"].clone())
                    .await;
            }
        });
        quiet.push(Quiet {
            client,
            server_id,
            echo,
        });
    }
    quiet
}

/// A quiet pair's pause between round trips. Without it 50 pairs at window 1 saturate a debug
/// build on 2 cores by themselves, and the p99 measures their own queueing instead of latency.
const THINK: Duration = Duration::from_millis(50);

/// Runs every quiet pair's round trips for `span`; returns the pairs and every round trip's time.
async fn round_trips(quiet: Vec<Quiet>, span: Duration) -> (Vec<Quiet>, Vec<Duration>) {
    let mut tasks = JoinSet::new();
    let count = quiet.len() as u32;
    for (index, mut pair) in quiet.into_iter().enumerate() {
        tasks.spawn(async move {
            let mut trips = Vec::new();
            let until = Instant::now() + span;
            // Staggered, so the pairs do not all ask at the same instant.
            sleep(THINK * index as u32 / count).await;
            let mut n = 0u64;
            while Instant::now() < until {
                let sent = Instant::now();
                pair.client
                    .send_to(&pair.server_id, "REQUEST", json!(n))
                    .await;
                let reply = pair.client.recv().await;
                trips.push(sent.elapsed());
                assert_eq!(
                    reply,
                    json!({"from": pair.server_id, "type": "ECHO", "message": n})
                );
                n += 1;
                sleep(THINK).await;
            }
            (index, pair, trips)
        });
    }
    let mut done = surface_all(tasks).await;
    done.sort_by_key(|(index, _, _)| *index);
    let trips = done
        .iter()
        .flat_map(|(_, _, t)| t.iter().copied())
        .collect();
    (done.into_iter().map(|(_, pair, _)| pair).collect(), trips)
}

/// The `percent`th percentile (nearest rank).
fn percentile(samples: &[Duration], percent: usize) -> Duration {
    assert!(!samples.is_empty());
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted[(sorted.len() * percent).div_ceil(100) - 1]
}

/// A client sending numbered messages to its server as fast as the relay takes them, and the
/// server reading every one, checking the order. Returns how many were sent and received.
async fn flood(endpoint: &Endpoint, stop: CancellationToken) -> JoinHandle<(u64, u64)> {
    let (mut server, mut client) = endpoint.pair().await;
    let to = server.id.clone();
    let sender = tokio::spawn(async move {
        let pad = "x".repeat(200);
        let mut n = 0u64;
        while !stop.is_cancelled() {
            for _ in 0..64 {
                let text = format!(
                    r#"{{"to":"{to}","type":"FLOOD","message":{{"n":{n},"pad":"{pad}"}}}}"#
                );
                client.ws.feed(Message::text(text)).await.expect("feed");
                n += 1;
            }
            client.ws.flush().await.expect("flush");
        }
        client.send_to(&to, "END", json!(n)).await;
        (client, n)
    });
    tokio::spawn(async move {
        // Checked without parsing JSON, so the reader keeps up and costs the quiet pairs little.
        let mut received = 0u64;
        loop {
            let message = timeout(PATIENCE, server.ws.next())
                .await
                .expect("the flood keeps arriving")
                .expect("the server's connection stays open")
                .expect("a valid frame");
            let Message::Text(text) = message else {
                continue;
            };
            if text.contains(r#""type":"END""#) {
                let end: serde_json::Value = serde_json::from_str(&text).expect("JSON");
                assert_eq!(end["message"], json!(received), "messages lost");
                break;
            }
            let expected = format!(r#""type":"FLOOD","message":{{"n":{received},"pad""#);
            assert!(
                text.contains(&expected),
                "out of order: {received} expected, got {text}"
            );
            received += 1;
        }
        let (client, sent) = surface(sender.await);
        leave(server, client).await;
        (sent, received)
    })
}

/// Runs [`flood`] on a thread and runtime of its own, so the flooder competes with the quiet
/// pairs only inside the relay (and for the CPU), not in this test's task queues.
fn flood_on_its_own_thread(
    endpoint: Endpoint,
    stop: CancellationToken,
) -> std::thread::JoinHandle<(u64, u64)> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(async move { surface(flood(&endpoint, stop).await.await) })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooder_does_not_starve_quiet_pairs() {
    let turn = Alone::begin().await;
    // The real binary, so the relay's scheduling is measured rather than this test's: in process,
    // the relay's tasks would queue behind the flooder's client tasks on the same two workers.
    let mut relay = RelayProcess::start(&["--rate-limit", "0"], &[]);
    let endpoint = Endpoint::Plain(relay.addr);
    let span = Duration::from_secs(2);
    let quiet = quiet_pairs(&endpoint, 50).await;
    // A short first run warms up every path, then the two measured runs.
    let (quiet, _) = round_trips(quiet, Duration::from_millis(200)).await;
    let (quiet, alone) = round_trips(quiet, span).await;

    let stop = CancellationToken::new();
    let flooder = flood_on_its_own_thread(endpoint.clone(), stop.clone());
    sleep(Duration::from_millis(300)).await;
    let (quiet, flooded) = round_trips(quiet, span).await;
    stop.cancel();
    let flooder = tokio::task::spawn_blocking(move || flooder.join());
    let (sent, received) = timeout(PATIENCE * 2, flooder)
        .await
        .expect("the flood drains in time")
        .expect("joined")
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));

    let (p99_alone, p99_flooded) = (percentile(&alone, 99), percentile(&flooded, 99));
    let ratio = p99_flooded.as_secs_f64() / p99_alone.as_secs_f64();
    eprintln!(
        "quiet round trips alone: p50 {:?}, p99 {p99_alone:?} ({} trips); with the flooder: p50 \
         {:?}, p99 {p99_flooded:?} ({} trips); p99 ratio {ratio:.1}×; the flooder sent {sent} \
         messages, {received} received in order",
        percentile(&alone, 50),
        alone.len(),
        percentile(&flooded, 50),
        flooded.len()
    );
    assert_eq!(sent, received);
    assert!(sent > 1000, "the flooder hardly flooded: {sent} messages");
    // The issue asks for 5× in the benchmark (release build, quiet machine). Here a debug relay,
    // 101 clients and the flooder share two cores, and a p99 of ~10 ms moves by whole scheduler
    // slices: measured 4–6× on an idle 2-core machine. So the bound is the looser of 20× and
    // 5× + 50 ms, which CI noise cannot reach, while a relay that served the flood ahead of the
    // quiet pairs would put their round trips at seconds and fail it every time.
    let bound = (p99_alone * 20).max(p99_alone * 5 + Duration::from_millis(50));
    assert!(
        p99_flooded < bound,
        "quiet pairs starved: p99 {p99_alone:?} alone, {p99_flooded:?} with a flooder"
    );
    for pair in quiet {
        drop(pair.client);
        surface(timeout(PATIENCE, pair.echo).await.expect("the echo ends"));
    }
    let exited = relay.child.try_wait().expect("the relay's status");
    assert!(exited.is_none(), "the relay exited: {exited:?}");
    turn.no_task_panicked();
}

// ---------------------------------------------------------------------------------------------
// Holes found by an independent hostile battery (issue 15), each with the attack that found it.
// ---------------------------------------------------------------------------------------------

/// A relay guarding registration with `correct-horse`, allowing 3 failed attempts a minute.
async fn guarded_relay() -> TestRelay {
    TestRelay::start(Config {
        passphrase: Some("correct-horse".into()),
        max_failed_attempts_per_minute: 3,
        ..config()
    })
    .await
}

/// Opens `/server…` with `headers` and expects the ERROR code and close it is refused with.
async fn expect_refused(
    relay: &TestRelay,
    path: &str,
    headers: &[(&'static str, &str)],
    code: (&str, u16),
) {
    let ws = TestPeer::connect_with(&relay.url(path), headers)
        .await
        .expect("upgraded to be refused");
    let mut peer = TestPeer {
        ws,
        id: String::new(),
    };
    peer.expect_error(code.0).await;
    peer.expect_close(code.1).await;
}

#[tokio::test]
async fn one_request_cannot_try_many_passphrases() {
    let turn = Alone::begin().await;
    let relay = guarded_relay().await;
    let mut guesses: Vec<String> = (0..299)
        .map(|n| format!("passphrase=guess{n:03}"))
        .collect();
    guesses.push("passphrase=correct-horse".into());
    let many = format!("/server?{}", guesses.join("&"));
    expect_refused(&relay, &many, &[], ("UNAUTHORIZED", 4401)).await;
    let header = [("authorization", "Bearer correct-horse")];
    expect_refused(
        &relay,
        "/server?passphrase=guess",
        &header,
        ("UNAUTHORIZED", 4401),
    )
    .await;
    expect_refused(
        &relay,
        "/server?passphrase=correct-horse&passphrase=correct-horse",
        &[],
        ("UNAUTHORIZED", 4401),
    )
    .await;
    // Each of those was one failed attempt: the right passphrase now finds the address locked out.
    expect_refused(
        &relay,
        "/server?passphrase=correct-horse",
        &[],
        ("RATE_LIMITED", 4429),
    )
    .await;
    turn.no_task_panicked();
}

#[tokio::test]
async fn the_bearer_scheme_is_read_in_any_case() {
    let relay = guarded_relay().await;
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let header = format!("{scheme} correct-horse");
        let ws = TestPeer::connect_with(&relay.url("/server"), &[("authorization", &header)])
            .await
            .expect("upgraded");
        TestPeer::greeted(ws).await;
    }
}

#[tokio::test]
async fn binary_frames_count_against_the_rate_and_replies_stay_within_it() {
    let turn = Alone::begin().await;
    let relay = TestRelay::start(Config {
        rate_limit: 5,
        ..config()
    })
    .await;
    let mut server = TestPeer::server(&relay).await;
    let mut client = TestPeer::client_of(&relay, &mut server).await;
    for _ in 0..300 {
        client
            .ws
            .feed(Message::binary(vec![7u8]))
            .await
            .expect("fed");
    }
    client.ws.flush().await.expect("flushed");
    client.send_to(&server.id, "AFTER", json!(1)).await;
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    while let Ok(frame) = timeout(Duration::from_millis(300), client.recv()).await {
        let code = frame["message"]["code"]
            .as_str()
            .expect("an ERROR")
            .to_owned();
        *codes.entry(code).or_default() += 1;
    }
    // The burst of ten passes and is refused as binary; ten drops are told (a burst's worth of
    // notices) and the other 280, like the text frame after them, are dropped without a word.
    assert_eq!(
        codes,
        [
            ("BAD_MESSAGE".to_owned(), 10),
            ("RATE_LIMITED".to_owned(), 10)
        ]
        .into()
    );
    turn.no_task_panicked();
}

#[tokio::test]
async fn a_binary_flood_is_closed_with_1008() {
    let relay = TestRelay::start(Config {
        rate_limit: 5,
        flood_window: Duration::from_millis(500),
        ..config()
    })
    .await;
    let mut server = TestPeer::server(&relay).await;
    let mut client = TestPeer::client_of(&relay, &mut server).await;
    let flood = async {
        while client.ws.send(Message::binary(vec![7u8; 7])).await.is_ok() {
            sleep(Duration::from_millis(5)).await;
        }
        client
    };
    let mut client = timeout(PATIENCE, flood)
        .await
        .expect("the relay stops the flood");
    let reason = client.expect_close(1008).await;
    assert!(reason.contains("rate"), "{reason}");
}

#[tokio::test]
async fn a_peer_cut_off_mid_message_reads_its_1009_and_a_clean_end_not_a_reset() {
    let turn = Alone::begin().await;
    let relay = TestRelay::start(Config {
        max_message_bytes: 4096,
        ..config()
    })
    .await;
    let (stream, pending) = raw_websocket(relay.addr, "/server").await;
    let (mut reader, mut writer) = stream.into_split();
    // A 10 KB message in 1 KB fragments, in one write: most of it is still unread when the
    // relay refuses the message.
    let mut message = Vec::new();
    for n in 0..10u8 {
        let first = match n {
            0 => 0x01,
            9 => 0x80,
            _ => 0x00,
        };
        message.extend(client_frame(first, &[b'a'; 1024]));
    }
    writer.write_all(&message).await.expect("write the message");
    let mut buffer = pending;
    let mut chunk = [0u8; 4096];
    let close = timeout(PATIENCE, async {
        loop {
            if let Some((frame, used)) = parse_server_frame(&buffer) {
                buffer.drain(..used);
                if frame.first == 0x88 {
                    return frame.payload;
                }
                continue;
            }
            let n = reader
                .read(&mut chunk)
                .await
                .expect("read before the close");
            assert!(n > 0, "ended before the close frame");
            buffer.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("the close arrives");
    assert_eq!(u16::from_be_bytes([close[0], close[1]]), 1009);
    assert_eq!(&close[2..], b"message too big");
    // The relay half-closes and reads on: its end arrives as EOF, not as a reset.
    let end = timeout(PATIENCE, reader.read(&mut chunk))
        .await
        .expect("the end arrives");
    assert!(
        matches!(end, Ok(0)),
        "expected EOF after the close, got {end:?}"
    );
    drop(writer);
    turn.no_task_panicked();
}

/// `TestRelay::stop` within this bounds a drain that had nothing to wait for: the peers' close
/// handshakes take a round trip, the relay's grace for a silent peer is a second.
const PROMPT_DRAIN: Duration = Duration::from_secs(3);

#[tokio::test]
async fn a_half_sent_request_head_does_not_hold_shutdown() {
    let turn = Alone::begin().await;
    let relay = TestRelay::start(Config {
        shutdown_timeout: Duration::from_secs(8),
        handshake_timeout: Duration::from_secs(30),
        ..config()
    })
    .await;
    let mut server = TestPeer::server(&relay).await;
    let mut half = TcpStream::connect(relay.addr).await.expect("connect");
    half.write_all(b"GET /server HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let stopping = tokio::spawn(relay.stop());
    server.expect_close(1001).await;
    timeout(PATIENCE, stopping)
        .await
        .expect("stops")
        .expect("no panic");
    assert!(
        started.elapsed() < PROMPT_DRAIN,
        "shutdown took {:?}",
        started.elapsed()
    );
    let mut rest = Vec::new();
    let _ = timeout(PATIENCE, half.read_to_end(&mut rest))
        .await
        .expect("dropped");
    turn.no_task_panicked();
}

#[tokio::test]
async fn a_half_sent_request_head_inside_tls_does_not_hold_shutdown() {
    let turn = Alone::begin().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (paths, _) = intercessor::edge::devcert::ensure(dir.path(), &[]).expect("certificates");
    let relay = TestRelay::start(Config {
        shutdown_timeout: Duration::from_secs(8),
        handshake_timeout: Duration::from_secs(30),
        tls: Some(TlsSource::Files {
            cert: paths.cert.clone(),
            key: paths.key.clone(),
        }),
        ..config()
    })
    .await;
    let connector = tokio_rustls::TlsConnector::from(trusting(&paths.ca_cert));
    let tcp = TcpStream::connect(relay.addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let mut half = connector.connect(name, tcp).await.expect("TLS handshake");
    half.write_all(b"GET /server HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    half.flush().await.expect("flush");
    sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    timeout(PATIENCE * 2, relay.stop()).await.expect("stops");
    assert!(
        started.elapsed() < PROMPT_DRAIN,
        "shutdown took {:?}",
        started.elapsed()
    );
    turn.no_task_panicked();
}

/// A handshake written by hand: `headers` after the request line, then a blank line.
fn handshake_with(headers: &str) -> String {
    format!(
        "GET /server HTTP/1.1\r\n{headers}Upgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

#[tokio::test]
async fn broken_handshakes_and_smuggled_bodies_get_400_and_lose_the_connection() {
    let relay = TestRelay::start(config()).await;
    let cases = [
        ("no Host", handshake_with("")),
        ("two Hosts", handshake_with("Host: a\r\nHost: b\r\n")),
        (
            "two keys",
            handshake_with("Host: a\r\nSec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==\r\n"),
        ),
        (
            "chunked and a length",
            handshake_with("Host: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n")
                + "0\r\n\r\n",
        ),
        (
            "a length",
            handshake_with("Host: a\r\nContent-Length: 0\r\n"),
        ),
    ];
    for (what, request) in cases {
        // raw_http reads to the end: the relay must close the connection after its answer.
        let response = common::raw_http(relay.addr, &request).await;
        assert_eq!(status_of(&response), 400, "{what}: {response}");
        assert!(!response.contains("\"HELLO\""), "{what}: {response}");
    }
}

/// Sends `GET /healthz` on a kept-alive connection and reads the one answer.
async fn keep_alive_health(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let mut chunk = [0u8; 512];
    while !answer.ends_with(b"\r\n\r\nok") {
        let n = stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "closed before answering: {answer:?}");
        answer.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn idle_keep_alive_connections_are_bounded_in_number_and_time() {
    let turn = Alone::begin().await;
    const CAP: usize = 50;
    let idle_for = Duration::from_secs(1);
    let relay = TestRelay::start(Config {
        max_pending_connections: CAP,
        handshake_timeout: idle_for,
        ..config()
    })
    .await;
    let addr = relay.addr;
    let mut holders = JoinSet::new();
    for _ in 0..2 * CAP {
        holders.spawn(async move {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            let asked = Instant::now();
            let answer = timeout(PATIENCE, keep_alive_health(&mut stream))
                .await
                .expect("answered");
            assert_eq!(status_of(&answer), 200, "{answer}");
            let waited = asked.elapsed();
            let idle = Instant::now();
            let mut rest = Vec::new();
            timeout(PATIENCE, stream.read_to_end(&mut rest))
                .await
                .expect("the relay closes an idle keep-alive connection")
                .expect("a clean close");
            (waited, idle.elapsed())
        });
    }
    let results = surface_all(holders).await;
    let waited_for_room = results
        .iter()
        .filter(|(waited, _)| *waited >= idle_for / 2)
        .count();
    assert!(
        waited_for_room >= CAP,
        "only {CAP} connections are served at once; {waited_for_room} of {} waited",
        2 * CAP
    );
    for (_, idle) in &results {
        assert!(*idle < idle_for + SLACK, "kept idle for {idle:?}");
    }
    let (mut server, mut client) = Endpoint::Plain(relay.addr).pair().await;
    exchange(&mut server, &mut client, 0).await;
    turn.no_task_panicked();
}
