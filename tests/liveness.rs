//! Timers and endings: the handshake deadline, pings, the idle cut, and graceful shutdown.

mod common;

use common::{TestPeer, TestRelay, config, overfill_config};
use intercessor::Config;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the relay closes the TCP connection; returns the bytes and how long it took.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut bytes = Vec::new();
    tokio::time::timeout(within, stream.read_to_end(&mut bytes))
        .await
        .expect("the relay drops the connection in time")
        .expect("read");
    (bytes, started.elapsed())
}

/// Opens a WebSocket by hand, so the test decides what the client (never) answers.
async fn silent_websocket(relay: &TestRelay, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(relay.addr).await.expect("connect");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    stream
}

#[tokio::test]
async fn a_silent_connection_is_dropped_at_the_handshake_timeout() {
    let relay = TestRelay::start(Config {
        handshake_timeout: Duration::from_millis(300),
        ..config()
    })
    .await;
    let mut stream = TcpStream::connect(relay.addr).await.expect("connect");
    let (_, took) = read_until_closed(&mut stream, Duration::from_secs(3)).await;
    assert!(
        took >= Duration::from_millis(250),
        "dropped too early: {took:?}"
    );
}

#[tokio::test]
async fn a_slow_loris_is_dropped_even_while_bytes_trickle_in() {
    let relay = TestRelay::start(Config {
        handshake_timeout: Duration::from_millis(400),
        ..config()
    })
    .await;
    let mut stream = TcpStream::connect(relay.addr).await.expect("connect");
    let trickle = async {
        for byte in b"GET /server HTTP/1.1\r\nHost: slow\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
            if stream.write_all(&[*byte]).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    };
    let cut_off = tokio::time::timeout(Duration::from_secs(5), trickle)
        .await
        .expect("bounded");
    assert!(
        cut_off,
        "the relay should have dropped the connection mid-request"
    );
}

#[tokio::test]
async fn the_relay_pings_and_a_ponging_peer_stays() {
    let relay = TestRelay::start(Config {
        ping_interval: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(400),
        ..config()
    })
    .await;
    let mut server = TestPeer::server(&relay).await;
    let pings = server.count_pings(Duration::from_millis(1000)).await;
    assert!(pings >= 5, "only {pings} pings in a second at 100 ms");
    TestPeer::client_of(&relay, &mut server).await;
}

#[tokio::test]
async fn a_peer_that_never_answers_is_closed_with_4408_and_dropped() {
    let relay = TestRelay::start(Config {
        ping_interval: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(500),
        ..config()
    })
    .await;
    let mut stream = silent_websocket(&relay, "/server").await;
    let (bytes, took) = read_until_closed(&mut stream, Duration::from_secs(4)).await;
    assert!(
        took >= Duration::from_millis(450),
        "closed too early: {took:?}"
    );
    assert!(
        took < Duration::from_millis(500) + Duration::from_millis(1500),
        "held too long: {took:?}"
    );
    // A server-sent close frame: FIN + opcode 8, unmasked, 2-byte code 4408 then the reason.
    let close = [0x88, 2 + b"idle timeout".len() as u8, 0x11, 0x38];
    assert!(
        bytes.windows(4).any(|w| w == close),
        "no 4408 close frame in {bytes:?}"
    );
}

#[tokio::test]
async fn shutdown_gives_up_a_write_stuck_on_a_peer_that_stopped_reading() {
    let relay = TestRelay::start(Config {
        // No idle cut within the test: only shutdown can end the write.
        idle_timeout: Duration::from_secs(120),
        shutdown_timeout: Duration::from_secs(60),
        ..overfill_config()
    })
    .await;
    let mut server = TestPeer::server(&relay).await;
    let stuck = TestPeer::client_of(&relay, &mut server).await;
    server.overfill(&stuck.id).await;
    let started = Instant::now();
    relay.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}: it waited on the stuck write",
        started.elapsed()
    );
}

#[tokio::test]
async fn shutdown_sends_going_away_to_every_peer_and_returns() {
    let relay = TestRelay::start(config()).await;
    let mut server = TestPeer::server(&relay).await;
    let mut client = TestPeer::client_of(&relay, &mut server).await;
    let mut silent = silent_websocket(&relay, "/server").await;
    let stopped = tokio::spawn(relay.stop());
    assert_eq!(server.expect_close(1001).await, "going away");
    assert_eq!(client.expect_close(1001).await, "going away");
    read_until_closed(&mut silent, Duration::from_secs(3)).await;
    tokio::time::timeout(Duration::from_secs(3), stopped)
        .await
        .expect("shutdown finishes without waiting for the silent peer")
        .expect("no panic");
}
