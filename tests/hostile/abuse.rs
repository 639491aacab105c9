//! Abuse by peers the relay lets in: guessing passphrases, odd bearer spellings, binary frames
//! against the rate limit, and floods.

use crate::Alone;
use crate::common::*;
use futures_util::SinkExt;
use intercessor::Config;
use serde_json::json;
use std::time::Duration;
use tokio::time::{sleep, timeout};
use tokio_tungstenite::tungstenite::Message;

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
