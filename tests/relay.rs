//! The relaying itself: HELLO first, messages both ways, forgiving codes, joins and leaves.

mod common;

use common::{TestPeer, TestRelay, config};
use serde_json::json;

#[tokio::test]
async fn hello_comes_first_with_a_join_code_and_server_info() {
    let relay = TestRelay::start(intercessor::Config {
        server_info: Some("relay v1".into()),
        ..config()
    })
    .await;
    let mut server = TestPeer {
        ws: TestPeer::connect_raw(&relay.url("/server")).await,
        id: String::new(),
    };
    let hello = server.recv().await;
    let code = hello["message"]["id"].as_str().expect("id").to_owned();
    assert_eq!(
        hello,
        json!({"from":"0","type":"HELLO","message":{"id": code, "serverInfo":"relay v1"}})
    );
    assert_eq!(code.len(), 6);
    assert!(
        code.chars()
            .all(|c| intercessor::relay::ids::CROCKFORD.contains(&c)),
        "{code}"
    );
}

#[tokio::test]
async fn client_and_server_exchange_messages_both_ways_unchanged() {
    let relay = TestRelay::start(config()).await;
    let mut server = TestPeer::server(&relay).await;
    let mut client = TestPeer::client_of(&relay, &mut server).await;
    assert!(client.id.len() >= 10);
    assert_ne!(client.id, server.id);

    let offer =
        json!({"sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n", "type": "offer", "n": [1, 2.5, null]});
    client.send_to(&server.id, "OFFER", offer.clone()).await;
    assert_eq!(
        server.recv().await,
        json!({"from": client.id, "type": "OFFER", "message": offer})
    );

    server.send_to(&client.id, "ANSWER", json!("text")).await;
    assert_eq!(
        client.recv().await,
        json!({"from": server.id, "type": "ANSWER", "message": "text"})
    );

    server
        .send_json(json!({"to": client.id, "type": "BYE"}))
        .await;
    assert_eq!(
        client.recv().await,
        json!({"from": server.id, "type": "BYE", "message": null})
    );
}

#[tokio::test]
async fn message_is_carried_byte_for_byte() {
    let relay = TestRelay::start(config()).await;
    let mut server = TestPeer::server(&relay).await;
    let mut client = TestPeer::client_of(&relay, &mut server).await;
    let text = format!(
        r#"{{"to":"{}","type":"T","message":{{"b" : 1.50,  "a":"\u00e9"}}}}"#,
        server.id
    );
    client.send_text(&text).await;
    let frame = tokio::time::timeout(
        common::PATIENCE,
        futures_util::StreamExt::next(&mut server.ws),
    )
    .await
    .expect("in time")
    .expect("open")
    .expect("valid");
    assert_eq!(
        frame.to_text().expect("text"),
        format!(
            r#"{{"from":"{}","type":"T","message":{{"b" : 1.50,  "a":"\u00e9"}}}}"#,
            client.id
        )
    );
}

#[tokio::test]
async fn a_stray_from_is_ignored_and_the_relay_sets_it() {
    let relay = TestRelay::start(config()).await;
    let mut server = TestPeer::server(&relay).await;
    let mut client = TestPeer::client_of(&relay, &mut server).await;
    client
        .send_json(json!({"from": "forged", "to": server.id, "type": "T", "message": 1}))
        .await;
    assert_eq!(server.recv().await["from"], client.id.as_str());
}

#[tokio::test]
async fn codes_are_read_forgivingly_in_the_url_and_in_to() {
    let relay = TestRelay::start(config()).await;
    let mut server = TestPeer::server(&relay).await;
    let code = server.id.clone();
    let sloppy = format!("{}-{}", code[..3].to_lowercase(), code[3..].to_lowercase())
        .replace('0', "o")
        .replace('1', "l");
    let mut client = TestPeer::join(&relay.url(&format!("/client/{sloppy}"))).await;
    server
        .expect_relay("PEER_JOINED", json!({"id": client.id}))
        .await;
    let spaced = format!("{} {}", &code[..3], &code[3..]).to_lowercase();
    client.send_to(&spaced, "T", json!(1)).await;
    assert_eq!(server.recv().await["from"], client.id.as_str());
    let encoded = format!("/client/{}%20{}", &code[..3], &code[3..]);
    let other = TestPeer::join(&relay.url(&encoded)).await;
    server
        .expect_relay("PEER_JOINED", json!({"id": other.id}))
        .await;
}

#[tokio::test]
async fn a_server_holds_several_clients_and_messages_stay_in_order() {
    let relay = TestRelay::start(intercessor::Config {
        rate_limit: 0,
        ..config()
    })
    .await;
    let mut server = TestPeer::server(&relay).await;
    let mut first = TestPeer::client_of(&relay, &mut server).await;
    let mut second = TestPeer::client_of(&relay, &mut server).await;
    for n in 0..200 {
        server.send_to(&first.id, "N", json!(n)).await;
        server.send_to(&second.id, "N", json!(-n)).await;
    }
    for n in 0..200 {
        assert_eq!(first.recv().await["message"], json!(n));
        assert_eq!(second.recv().await["message"], json!(-n));
    }
}

#[tokio::test]
async fn client_leaving_tells_the_server() {
    let relay = TestRelay::start(config()).await;
    let mut server = TestPeer::server(&relay).await;
    let client = TestPeer::client_of(&relay, &mut server).await;
    let id = client.id.clone();
    drop(client);
    server.expect_relay("PEER_GONE", json!({"id": id})).await;
    server.send_to(&id, "T", json!(1)).await;
    assert_eq!(server.expect_error("UNKNOWN_PEER").await["id"], id.as_str());
}

#[tokio::test]
async fn server_leaving_tells_each_client_then_closes_it() {
    let relay = TestRelay::start(config()).await;
    let mut server = TestPeer::server(&relay).await;
    let mut first = TestPeer::client_of(&relay, &mut server).await;
    let mut second = TestPeer::client_of(&relay, &mut server).await;
    let code = server.id.clone();
    server.ws.close(None).await.expect("close");
    for client in [&mut first, &mut second] {
        client.expect_relay("PEER_GONE", json!({"id": code})).await;
        assert_eq!(client.expect_close(4410).await, "server gone");
    }
}

#[tokio::test]
async fn healthz_answers_ok_and_other_paths_404() {
    let relay = TestRelay::start(config()).await;
    let ok = common::raw_http(
        relay.addr,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(common::status_of(&ok), 200);
    assert!(ok.ends_with("ok"), "{ok}");
    for path in ["/nope", "/client", "/client/ABCDEF/x", "/server/x"] {
        let response = common::raw_http(
            relay.addr,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(common::status_of(&response), 404, "{path}");
    }
}

#[tokio::test]
async fn hello_hands_out_ice_servers_with_expiring_turn_credentials() {
    let relay = TestRelay::start(intercessor::Config {
        ice: intercessor::relay::ice::IceConfig {
            urls: vec![
                "stun:stun.example:3478".into(),
                "turns:turn.example:5349".into(),
            ],
            turn_secret: Some("north-wind".into()),
            turn_ttl: std::time::Duration::from_secs(600),
        },
        ..config()
    })
    .await;
    let server = TestPeer::server(&relay).await;
    let mut client = TestPeer {
        ws: TestPeer::connect_raw(&relay.url(&format!("/client/{}", server.id))).await,
        id: String::new(),
    };
    let hello = client.recv().await;
    let id = hello["message"]["id"].as_str().expect("id").to_owned();
    let servers = hello["message"]["iceServers"]
        .as_array()
        .expect("iceServers")
        .clone();
    assert_eq!(servers[0], json!({"urls": "stun:stun.example:3478"}));
    let turn = &servers[1];
    assert_eq!(turn["urls"], "turns:turn.example:5349");
    let username = turn["username"].as_str().expect("username");
    let (expiry, peer_id) = username.split_once(':').expect("expiry:id");
    assert_eq!(peer_id, id);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let expiry: u64 = expiry.parse().expect("unix time");
    assert!(
        (now + 590..=now + 610).contains(&expiry),
        "{expiry} vs {now}"
    );
    assert_eq!(
        turn["credential"],
        intercessor::relay::ice::turn_credential("north-wind", username).as_str()
    );
}

#[tokio::test]
async fn a_peer_closing_gets_the_close_frame_answered() {
    let relay = TestRelay::start(config()).await;
    let mut server = TestPeer::server(&relay).await;
    let mut client = TestPeer::client_of(&relay, &mut server).await;
    futures_util::SinkExt::send(
        &mut client.ws,
        tokio_tungstenite::tungstenite::Message::Close(Some(
            tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: 1000.into(),
                reason: "bye".into(),
            },
        )),
    )
    .await
    .expect("close sent");
    // The relay echoes the close (RFC 6455 §5.5.1), so the client sees a clean close, not a reset.
    assert_eq!(client.expect_close(1000).await, "bye");
    server
        .expect_relay("PEER_GONE", json!({"id": client.id}))
        .await;
}
