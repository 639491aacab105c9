//! `--message-schema`: messages checked against a JSON Schema per type before they are relayed.
#![cfg(feature = "schema")]

mod common;

use common::{TestPeer, TestRelay, config, start_error};
use intercessor::relay::schema::MessageSchemas;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/webrtc-signaling.schema.json")
}

async fn relay_with(schemas: MessageSchemas) -> TestRelay {
    TestRelay::start(intercessor::Config {
        message_schemas: Some(Arc::new(schemas)),
        ..config()
    })
    .await
}

/// Sends `message` of `kind` from client to server; returns `None` if relayed, else the ERROR.
async fn attempt(
    client: &mut TestPeer,
    server: &mut TestPeer,
    kind: &str,
    message: Value,
) -> Option<Value> {
    client.send_to(&server.id, kind, message.clone()).await;
    // A marker that the schema lets through shows whether anything arrived before it.
    client.send_to(&server.id, "BYE", json!({})).await;
    let first = server.recv().await;
    if first["type"] == kind && kind != "BYE" {
        assert_eq!(first["message"], message);
        assert_eq!(server.recv().await["type"], "BYE");
        return None;
    }
    assert_eq!(first["type"], "BYE", "nothing else was relayed");
    if kind == "BYE" && message == json!({}) {
        assert_eq!(server.recv().await["type"], "BYE");
        return None;
    }
    Some(client.expect_error("INVALID_MESSAGE").await)
}

#[tokio::test]
async fn the_webrtc_example_lets_good_messages_through_and_stops_bad_ones() {
    let relay = relay_with(MessageSchemas::load(&example()).expect("example loads")).await;
    let mut server = TestPeer::server(&relay).await;
    let mut client = TestPeer::client_of(&relay, &mut server).await;
    let sdp = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";

    let good = [
        ("OFFER", json!({"type": "offer", "sdp": sdp})),
        ("ANSWER", json!({"type": "answer", "sdp": sdp})),
        (
            "CANDIDATE",
            json!({"candidate": "candidate:1 1 udp 2122260223 127.0.0.1 54321 typ host", "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "abcd"}),
        ),
        (
            "CANDIDATE",
            json!({"candidate": "", "sdpMid": null, "sdpMLineIndex": null}),
        ),
    ];
    for (kind, message) in good {
        assert_eq!(
            attempt(&mut client, &mut server, kind, message.clone()).await,
            None,
            "{kind} {message}"
        );
    }

    let bad = [
        ("OFFER", json!({"type": "answer", "sdp": sdp}), "/type"),
        ("OFFER", json!({"type": "offer"}), ""),
        (
            "OFFER",
            json!({"type": "offer", "sdp": "x".repeat(50_001)}),
            "/sdp",
        ),
        (
            "ANSWER",
            json!({"type": "answer", "sdp": sdp, "extra": 1}),
            "",
        ),
        ("CANDIDATE", json!({"candidate": 7}), "/candidate"),
        (
            "CANDIDATE",
            json!({"candidate": "c", "sdpMLineIndex": -1}),
            "/sdpMLineIndex",
        ),
        ("BYE", json!({"why": "bored"}), ""),
        ("BYE", json!(null), ""),
    ];
    for (kind, message, path) in bad {
        let error = attempt(&mut client, &mut server, kind, message.clone())
            .await
            .unwrap_or_else(|| panic!("{kind} {message} should be refused"));
        assert_eq!(error["type"], kind, "{error}");
        assert_eq!(error["path"], path, "{error}");
        assert!(
            error["reason"]
                .as_str()
                .is_some_and(|r| !r.is_empty() && r.len() < 300),
            "{error}"
        );
    }

    let refused = attempt(&mut client, &mut server, "CHAT", json!("hi"))
        .await
        .expect("not listed");
    assert!(
        refused["reason"]
            .as_str()
            .is_some_and(|r| r.contains("not allowed")),
        "{refused}"
    );

    server
        .send_to(&client.id, "ANSWER", json!({"type": "answer"}))
        .await;
    server.expect_error("INVALID_MESSAGE").await;
}

#[tokio::test]
async fn a_star_schema_covers_types_not_listed() {
    let schemas =
        MessageSchemas::compile(&json!({"BYE": {}, "*": {"type": "string"}})).expect("valid");
    let relay = relay_with(schemas).await;
    let mut server = TestPeer::server(&relay).await;
    let mut client = TestPeer::client_of(&relay, &mut server).await;
    assert_eq!(
        attempt(&mut client, &mut server, "CHAT", json!("hi")).await,
        None
    );
    let error = attempt(&mut client, &mut server, "CHAT", json!(42))
        .await
        .expect("not a string");
    assert_eq!(error["path"], "");
}

#[tokio::test]
async fn without_the_option_anything_is_relayed_unchanged() {
    let relay = TestRelay::start(config()).await;
    let mut server = TestPeer::server(&relay).await;
    let mut client = TestPeer::client_of(&relay, &mut server).await;
    for (kind, message) in [
        ("OFFER", json!({"type": "answer"})),
        ("CHAT", json!(42)),
        ("BYE", json!(null)),
    ] {
        client.send_to(&server.id, kind, message.clone()).await;
        assert_eq!(
            server.recv().await,
            json!({"from": client.id, "type": kind, "message": message})
        );
    }
}

#[test]
fn a_bad_schema_file_stops_the_relay_at_start_naming_file_and_type() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = dir.path().join("bad.schema.json");
    std::fs::write(&bad, r#"{"OFFER": {"type": "objekt"}}"#).expect("write");
    let path = bad.to_str().expect("utf-8");
    let error = start_error(&["--message-schema", path], &[]);
    assert_eq!(error.trim_end().lines().count(), 1, "{error:?}");
    assert!(
        error.contains(path) && error.contains("\"OFFER\""),
        "{error:?}"
    );

    let not_json = dir.path().join("not.json");
    std::fs::write(&not_json, "{").expect("write");
    let error = start_error(
        &["--message-schema", not_json.to_str().expect("utf-8")],
        &[],
    );
    assert!(error.contains("not.json"), "{error:?}");
    let error = start_error(&["--message-schema", "/nonexistent/schema.json"], &[]);
    assert!(error.contains("/nonexistent/schema.json"), "{error:?}");
}
