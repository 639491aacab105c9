//! The metrics listener: Prometheus text with live counts and counters, health and readiness.

mod common;

use common::{TestPeer, TestRelay, metrics_config, metrics_get, raw_http, sample, status_of};
use serde_json::json;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn counts_peers_messages_errors_and_closes() {
    let relay = TestRelay::start(metrics_config()).await;
    let metrics = relay.metrics_addr.expect("metrics listener");
    let mut server = TestPeer::server(&relay).await;
    let mut client = TestPeer::client_of(&relay, &mut server).await;
    client.send_to(&server.id, "T", json!("hello")).await;
    let relayed = server.recv().await.to_string();
    client.send_text("not json").await;
    client.expect_error("BAD_MESSAGE").await;
    let _ = tokio_tungstenite::connect_async(relay.url("/client/ZZZZZZ")).await;
    let plain = raw_http(
        relay.addr,
        "GET /server HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&plain), 426);

    let text = metrics_get(metrics, "/metrics").await;
    assert_eq!(status_of(&text), 200);
    assert!(text.contains("application/openmetrics-text"), "{text}");
    assert_eq!(sample(&text, "intercessor_servers"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "intercessor_clients"), Some(1.0), "{text}");
    assert_eq!(
        sample(&text, "intercessor_messages_relayed_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "intercessor_bytes_relayed_total"),
        Some(relayed.len() as f64),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"intercessor_errors_total{code="BAD_MESSAGE"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"intercessor_errors_total{code="UNKNOWN_SERVER"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"intercessor_upgrades_total{outcome="accepted"}"#),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"intercessor_upgrades_total{outcome="not_websocket"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"intercessor_closes_total{code="4404"}"#),
        Some(1.0),
        "{text}"
    );
    assert!(
        sample(&text, "intercessor_process_start_time_seconds").is_some_and(|t| t > 1.7e9),
        "{text}"
    );
    let version = format!(
        r#"intercessor_build_info{{version="{}"}}"#,
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(sample(&text, &version), Some(1.0), "{text}");

    client
        .ws
        .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: 1000.into(),
            reason: "bye".into(),
        }))
        .await
        .expect("close");
    server.recv().await;
    let other = TestPeer::client_of(&relay, &mut server).await;
    drop(other);
    server.recv().await;
    let text = metrics_get(metrics, "/metrics").await;
    assert_eq!(sample(&text, "intercessor_clients"), Some(0.0), "{text}");
    assert_eq!(
        sample(&text, r#"intercessor_closes_total{code="1000"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"intercessor_closes_total{code="1006"}"#),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test]
async fn metrics_are_not_served_on_the_public_port() {
    let relay = TestRelay::start(metrics_config()).await;
    assert_eq!(status_of(&metrics_get(relay.addr, "/metrics").await), 404);
    assert_eq!(status_of(&metrics_get(relay.addr, "/readyz").await), 200);
}

#[tokio::test]
async fn readyz_turns_503_once_shutdown_begins_while_metrics_stay_up() {
    let relay = TestRelay::start(metrics_config()).await;
    let metrics = relay.metrics_addr.expect("metrics listener");
    assert_eq!(status_of(&metrics_get(metrics, "/readyz").await), 200);
    assert_eq!(status_of(&metrics_get(metrics, "/healthz").await), 200);
    // A peer that never answers the close keeps the drain going for about a second.
    let mut silent = tokio::net::TcpStream::connect(relay.addr)
        .await
        .expect("connect");
    silent
        .write_all(
            b"GET /server HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopping = tokio::spawn(relay.stop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(status_of(&metrics_get(metrics, "/readyz").await), 503);
    assert_eq!(status_of(&metrics_get(metrics, "/metrics").await), 200);
    stopping.await.expect("stops");
}
