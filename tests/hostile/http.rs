//! Strangers at the HTTP layer: slow loris, garbage instead of a request, broken handshakes and
//! idle keep-alive connections.

use crate::common::*;
use crate::{Alone, deadline_config, dropped_at_the_deadline};
use intercessor::Config;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::timeout;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_slow_loris_connections_are_dropped_at_the_deadline_while_pairs_talk_on() {
    let turn = Alone::begin().await;
    let relay = TestRelay::start(deadline_config()).await;
    let attack = slow_loris_attack(relay.addr, 500);
    let lorises = turn
        .amid_bystanders(Endpoint::Plain(relay.addr), attack)
        .await;

    assert_eq!(lorises.len(), 500);
    for (lived, answer) in &lorises {
        dropped_at_the_deadline(*lived, "a slow loris");
        // hyper answers nothing to a head that times out: the connection is just dropped.
        assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(answer));
    }
    let longest = lorises.iter().map(|(lived, _)| *lived).max();
    eprintln!("slow loris: longest lived {longest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_instead_of_http_gets_400_or_431_and_is_dropped_while_pairs_talk_on() {
    let turn = Alone::begin().await;
    let relay = TestRelay::start(deadline_config()).await;
    let addr = relay.addr;
    let (answers, long_head) = turn
        .amid_bystanders(Endpoint::Plain(addr), async move {
            let mut strangers = JoinSet::new();
            for garbage in garbage() {
                strangers.spawn(async move {
                    let (answer, lived) = send_garbage(addr, garbage.bytes.clone()).await;
                    (garbage, answer, lived)
                });
            }
            let answers = surface_all(strangers).await;
            // The over-long head, sent once more on its own: hyper's exact answer.
            let head = garbage()
                .into_iter()
                .find(|g| g.what == "16 KiB of headers");
            let (long_head, _) = send_garbage(addr, head.expect("case").bytes).await;
            (answers, long_head)
        })
        .await;

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
    let long_head = String::from_utf8_lossy(&long_head);
    assert!(
        long_head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{long_head:?}"
    );
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
        let response = raw_http(relay.addr, &request).await;
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
