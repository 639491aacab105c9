//! Shutdown under attack: connections that never finish their request head do not hold the drain.

use crate::Alone;
use crate::common::*;
use intercessor::Config;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout};

/// `TestRelay::stop` within this bounds a drain that had nothing to wait for: the peers' close
/// handshakes take a round trip, the relay's grace for a silent peer is a second.
const PROMPT_DRAIN: Duration = Duration::from_secs(3);

/// A relay that would wait long for a request head (30 s) and for its drain (8 s): a prompt stop
/// shows the half-sent head did not hold it.
fn patient_config() -> Config {
    Config {
        shutdown_timeout: Duration::from_secs(8),
        handshake_timeout: Duration::from_secs(30),
        ..config()
    }
}

#[tokio::test]
async fn a_half_sent_request_head_does_not_hold_shutdown() {
    let turn = Alone::begin().await;
    let relay = TestRelay::start(patient_config()).await;
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
    let tls = DevTls::new();
    let relay = TestRelay::start(Config {
        tls: Some(tls.source()),
        ..patient_config()
    })
    .await;
    let connector = tokio_rustls::TlsConnector::from(tls.trust());
    let tcp = TcpStream::connect(relay.addr).await.expect("connect");
    let mut half = connector
        .connect(localhost(), tcp)
        .await
        .expect("TLS handshake");
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
