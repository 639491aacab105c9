//! Load generators: slow-loris connections, passing pairs, floods of oversized frames and of
//! garbage, every attack at once, quiet request/echo pairs and a flooder.

use super::{
    Endpoint, HANDSHAKE_TIMEOUT, PATIENCE, SLACK, TestPeer, assert_garbage_answer,
    attack_websocket, exchange, frame_header, garbage, leave, masked, read_until_dropped,
    send_garbage, surface, surface_all,
};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{sleep, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// A request head worth 10 s at one byte per 50 ms: far longer than the handshake deadline.
pub fn slow_request_head() -> Vec<u8> {
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
pub async fn slow_loris(addr: SocketAddr, gate: Arc<Semaphore>) -> (Duration, Vec<u8>) {
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
pub async fn slow_loris_attack(addr: SocketAddr, count: usize) -> Vec<(Duration, Vec<u8>)> {
    let gate = Arc::new(Semaphore::new(50));
    let mut attackers = JoinSet::new();
    for _ in 0..count {
        attackers.spawn(slow_loris(addr, gate.clone()));
    }
    surface_all(attackers).await
}

/// Pairs that connect, exchange one round, and leave, `concurrency` at a time.
pub async fn passing_pairs(endpoint: Endpoint, count: usize, concurrency: usize) {
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
pub async fn oversized_frames(addr: SocketAddr, count: usize, concurrency: usize) {
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
pub async fn garbage_connections(addr: SocketAddr, count: usize, concurrency: usize) {
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
pub async fn every_attack_at_once(addr: SocketAddr, scale: usize) {
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

/// A client doing request/echo round trips with its server, one request in flight (window 1).
pub struct Quiet {
    pub client: TestPeer,
    pub server_id: String,
    pub echo: JoinHandle<()>,
}

/// `count` quiet pairs, each server echoing whatever its client sends until the client leaves.
pub async fn quiet_pairs(endpoint: &Endpoint, count: usize) -> Vec<Quiet> {
    let mut quiet = Vec::new();
    for _ in 0..count {
        let (mut server, client) = endpoint.pair().await;
        let server_id = server.id.clone();
        let echo = tokio::spawn(async move {
            loop {
                let frame = server.recv().await;
                // A client that drops its connection is away first, on a relay that resumes.
                if frame["type"] == "PEER_GONE" || frame["type"] == "PEER_AWAY" {
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
pub const THINK: Duration = Duration::from_millis(50);

/// Runs every quiet pair's round trips for `span`; returns the pairs and every round trip's time.
pub async fn round_trips(quiet: Vec<Quiet>, span: Duration) -> (Vec<Quiet>, Vec<Duration>) {
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
pub fn percentile(samples: &[Duration], percent: usize) -> Duration {
    assert!(!samples.is_empty());
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted[(sorted.len() * percent).div_ceil(100) - 1]
}

/// A client sending numbered messages to its server as fast as the relay takes them, and the
/// server reading every one, checking the order. Returns how many were sent and received.
pub async fn flood(endpoint: &Endpoint, stop: CancellationToken) -> JoinHandle<(u64, u64)> {
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
pub fn flood_on_its_own_thread(
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
