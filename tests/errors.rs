//! Every ERROR code and close code a peer can run into.

mod common;

use common::{TestPeer, TestRelay, config, overfill_config};
use futures_util::SinkExt;
use intercessor::Config;
use serde_json::json;
use std::time::Duration;
use tokio_tungstenite::tungstenite::{Bytes, Message};

#[tokio::test]
async fn malformed_envelopes_get_bad_message_and_the_session_goes_on() {
    let relay = TestRelay::start(config()).await;
    let mut server = TestPeer::server(&relay).await;
    let mut client = TestPeer::client_of(&relay, &mut server).await;
    for text in [
        "not json",
        "[1,2]",
        "\"text\"",
        r#"{"type":"T"}"#,
        r#"{"to":"x"}"#,
        r#"{"to":5,"type":"T"}"#,
        r#"{"to":"x","type":7}"#,
        r#"{"to":"x","type":""}"#,
    ] {
        client.send_text(text).await;
        client.expect_error("BAD_MESSAGE").await;
    }
    let long_type = "T".repeat(65);
    client.send_to(&server.id, &long_type, json!(1)).await;
    client.expect_error("BAD_MESSAGE").await;
    client
        .ws
        .send(Message::Binary(Bytes::from_static(b"\x00\x01")))
        .await
        .expect("send");
    client.expect_error("BAD_MESSAGE").await;

    client.send_to(&server.id, "STILL_HERE", json!(true)).await;
    assert_eq!(server.recv().await["type"], "STILL_HERE");
}

#[tokio::test]
async fn unknown_peer_names_the_id() {
    let relay = TestRelay::start(config()).await;
    let mut server = TestPeer::server(&relay).await;
    let mut other_server = TestPeer::server(&relay).await;
    let mut client = TestPeer::client_of(&relay, &mut server).await;
    let mut stranger = TestPeer::client_of(&relay, &mut other_server).await;

    client.send_to(&other_server.id, "T", json!(1)).await;
    assert_eq!(
        client.expect_error("UNKNOWN_PEER").await["id"],
        other_server.id.as_str()
    );
    client.send_to(&stranger.id, "T", json!(1)).await;
    assert_eq!(
        client.expect_error("UNKNOWN_PEER").await["id"],
        stranger.id.as_str()
    );
    server.send_to(&stranger.id, "T", json!(1)).await;
    assert_eq!(
        server.expect_error("UNKNOWN_PEER").await["id"],
        stranger.id.as_str()
    );
    // "0" is the relay itself: what is sent to it is a command, and "T" is none.
    server.send_to("0", "T", json!(1)).await;
    server.expect_error("BAD_COMMAND").await;

    stranger.send_to(&other_server.id, "OK", json!(1)).await;
    assert_eq!(other_server.recv().await["type"], "OK");
}

#[tokio::test]
async fn every_message_over_the_rate_gets_its_own_error() {
    let relay = TestRelay::start(Config {
        rate_limit: 5,
        ..config()
    })
    .await;
    let mut server = TestPeer::server(&relay).await;
    let mut client = TestPeer::client_of(&relay, &mut server).await;
    for n in 0..13 {
        client.send_to(&server.id, "N", json!(n)).await;
    }
    // The bucket starts full at twice the rate: ten pass, the three after them are refused.
    let mut passed = Vec::new();
    for _ in 0..10 {
        passed.push(server.recv().await["message"].clone());
    }
    assert_eq!(passed, (0..10).map(|n| json!(n)).collect::<Vec<_>>());
    for _ in 0..3 {
        client.expect_error("RATE_LIMITED").await;
    }
}

#[tokio::test]
async fn a_sustained_flood_is_closed_with_1008() {
    let relay = TestRelay::start(Config {
        rate_limit: 5,
        flood_window: Duration::from_millis(500),
        ..config()
    })
    .await;
    let mut server = TestPeer::server(&relay).await;
    let mut client = TestPeer::client_of(&relay, &mut server).await;
    let to = server.id.clone();
    let flood = async {
        loop {
            let frame = json!({"to": to, "type": "F"}).to_string();
            if client.ws.send(Message::text(frame)).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        client
    };
    let mut client = tokio::time::timeout(Duration::from_secs(5), flood)
        .await
        .expect("the relay stops the flood");
    let reason = client.expect_close(1008).await;
    assert!(reason.contains("rate"), "{reason}");
}

#[tokio::test]
async fn an_oversized_message_closes_with_1009() {
    let relay = TestRelay::start(Config {
        max_message_bytes: 1024,
        ..config()
    })
    .await;
    let mut server = TestPeer::server(&relay).await;
    let mut client = TestPeer::client_of(&relay, &mut server).await;
    client
        .send_to(&server.id, "BIG", json!("x".repeat(2000)))
        .await;
    client.expect_close(1009).await;
    server
        .expect_relay("PEER_GONE", json!({"id": client.id}))
        .await;
}

#[tokio::test]
async fn an_unknown_code_gets_unknown_server_then_4404() {
    let relay = TestRelay::start(config()).await;
    for code in ["ZZZZZZ", "not-a-code!", "ab"] {
        let mut peer = TestPeer {
            ws: TestPeer::connect_raw(&relay.url(&format!("/client/{code}"))).await,
            id: String::new(),
        };
        peer.expect_error("UNKNOWN_SERVER").await;
        assert_eq!(peer.expect_close(4404).await, "unknown server");
    }
}

#[tokio::test]
async fn a_full_server_refuses_the_newcomer_with_4409() {
    let relay = TestRelay::start(Config {
        max_clients_per_server: 2,
        ..config()
    })
    .await;
    let mut server = TestPeer::server(&relay).await;
    let _first = TestPeer::client_of(&relay, &mut server).await;
    let second = TestPeer::client_of(&relay, &mut server).await;
    let mut third = TestPeer {
        ws: TestPeer::connect_raw(&relay.url(&format!("/client/{}", server.id))).await,
        id: String::new(),
    };
    third.expect_error("SERVER_FULL").await;
    third.expect_close(4409).await;

    drop(second);
    server.recv().await;
    let _fourth = TestPeer::client_of(&relay, &mut server).await;
}

#[tokio::test]
async fn beyond_max_connections_upgrades_get_503() {
    let relay = TestRelay::start(Config {
        max_connections: 2,
        ..config()
    })
    .await;
    let mut server = TestPeer::server(&relay).await;
    let client = TestPeer::client_of(&relay, &mut server).await;
    let refused = TestPeer::connect_with(&relay.url("/server"), &[]).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503)
        }
        other => panic!("expected 503, got {other:?}"),
    }
    let health = common::raw_http(
        relay.addr,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(common::status_of(&health), 200, "plain HTTP is not capped");

    drop(client);
    server.recv().await;
    TestPeer::server(&relay).await;
}

#[tokio::test]
async fn a_peer_that_stops_reading_is_closed_too_slow_and_its_server_hears_peer_gone() {
    let relay = TestRelay::start(Config {
        rate_limit: 0,
        max_message_bytes: 16 * 1024,
        send_queue_bytes: 64 * 1024,
        ..config()
    })
    .await;
    let mut server = TestPeer::server(&relay).await;
    let stalled = TestPeer::client_of(&relay, &mut server).await;
    let mut reader = TestPeer::client_of(&relay, &mut server).await;
    let chunk = "x".repeat(15 * 1024);
    // The stalled client never reads: its socket buffers fill, then its queue, and it is cut off.
    let mut gone = None;
    for n in 0..10_000 {
        server.send_to(&stalled.id, "BULK", json!(chunk)).await;
        if n % 16 == 0 {
            server.send_to(&reader.id, "N", json!(n)).await;
            assert_eq!(
                reader.recv().await["message"],
                json!(n),
                "the reading client is served throughout"
            );
        }
        if let Ok(Some(Ok(Message::Text(text)))) = tokio::time::timeout(
            Duration::from_millis(1),
            futures_util::StreamExt::next(&mut server.ws),
        )
        .await
        {
            gone = Some(serde_json::from_str::<serde_json::Value>(&text).expect("json"));
            break;
        }
    }
    let gone = gone.expect("the relay gave up on the stalled client");
    assert_eq!(
        gone,
        json!({"from": "0", "type": "PEER_GONE", "message": {"id": stalled.id}})
    );
    server.send_to(&stalled.id, "LATE", json!(1)).await;
    server.expect_error("UNKNOWN_PEER").await;

    // The close frame queues behind megabytes the client never read: it gets through only if
    // the client drains them within the relay's one-second close grace. Either way the
    // connection ends.
    let mut stalled = stalled;
    let ending = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(message)) = futures_util::StreamExt::next(&mut stalled.ws).await {
            if let Message::Close(frame) = message {
                return frame.map(|f| (u16::from(f.code), f.reason.to_string()));
            }
        }
        None
    })
    .await
    .expect("the relay ends the stalled connection");
    if let Some(close) = ending {
        assert_eq!(close, (1008, "too slow".to_owned()));
    }
}

#[tokio::test]
async fn a_write_to_a_peer_that_stops_reading_is_abandoned_at_the_idle_timeout() {
    let relay = TestRelay::start(Config {
        ping_interval: Duration::from_millis(300),
        idle_timeout: Duration::from_secs(1),
        ..overfill_config()
    })
    .await;
    let mut server = TestPeer::server(&relay).await;
    let stalled = TestPeer::client_of(&relay, &mut server).await;
    // The relay's write to this client blocks; only the stall deadline can end the session now.
    server.overfill(&stalled.id).await;
    server
        .expect_relay("PEER_GONE", json!({"id": stalled.id}))
        .await;

    let mut stalled = stalled;
    let ending = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(message)) = futures_util::StreamExt::next(&mut stalled.ws).await {
            if let Message::Close(frame) = message {
                return frame.map(|f| u16::from(f.code));
            }
        }
        None
    })
    .await
    .expect("the relay ends the stuck connection");
    if let Some(code) = ending {
        assert_eq!(code, 4408, "a stuck write ends as an idle timeout");
    }
}
