//! Relay processes in a cluster on a real `redis-server`, and what tests of it wait for.

use super::{RelayProcess, TestPeer};
use std::time::{Duration, Instant};

/// Short, so that lapses and renewals happen within a test.
pub const LEASE_TTL: &str = "2s";

/// A relay process named `id` in the cluster on `redis`, routing clients of other instances'
/// rooms by `routing`, with `extra` arguments. Sessions do not resume: a dropped socket is a
/// leave at once, as these tests of rooms across instances expect.
pub fn instance(redis: &str, id: &str, routing: &str, extra: &[&str]) -> RelayProcess {
    let mut args = vec![
        "--resume-window",
        "0",
        "--cluster-redis-url",
        redis,
        "--cluster-routing",
        routing,
        "--instance-id",
        id,
        "--cluster-lease-ttl",
        LEASE_TTL,
    ];
    args.extend_from_slice(extra);
    RelayProcess::start(&args, &[])
}

/// Expects the relay to refuse with `code` and close with `close`.
pub async fn expect_refused(url: &str, code: &str, close: u16) -> serde_json::Value {
    let mut peer = TestPeer::unread(url).await;
    let error = peer.expect_error(code).await;
    peer.expect_close(close).await;
    error
}

/// Retries `attempt` until it returns `Some`, for at most `within`.
pub async fn eventually<T, F: Future<Output = Option<T>>>(
    within: Duration,
    attempt: impl Fn() -> F,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = attempt().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "did not happen within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a fresh registration at `url` gets: its code, or the ERROR code it was refused with.
pub async fn register(url: &str) -> Result<TestPeer, String> {
    let mut peer = TestPeer::unread(url).await;
    let first = peer.recv().await;
    match first["type"].as_str() {
        Some("HELLO") => {
            peer.id = first["message"]["id"].as_str().expect("an id").to_owned();
            Ok(peer)
        }
        _ => Err(first["message"]["code"].as_str().unwrap_or("?").to_owned()),
    }
}

/// Connects to `url` until it answers HELLO rather than `SERVER_UNAVAILABLE` (the room's dead
/// owner still holds its lease, its server has not taken it over yet, or the links are coming
/// back after a Redis stall); returns the peer and HELLO's message. Patient: what it waits for
/// spans a lease lapse, or a missed subscription ping, a resubscription and a join timeout.
pub async fn when_available(url: &str) -> (TestPeer, serde_json::Value) {
    eventually(3 * super::PATIENCE, || async {
        let mut peer = TestPeer::unread(url).await;
        let first = peer.recv().await;
        match (first["type"].as_str(), first["message"]["code"].as_str()) {
            (Some("HELLO"), _) => {
                peer.id = first["message"]["id"].as_str().expect("an id").to_owned();
                Some((peer, first["message"].clone()))
            }
            (Some("ERROR"), Some("SERVER_UNAVAILABLE")) => None,
            _ => panic!("unexpected answer {first}"),
        }
    })
    .await
}
