//! The server's say over its room, over real sockets: KICK, ROOM (lock, knock), ADMIT, DENY and
//! ICE_REFRESH, each error and limit, and a knocking room's rules under churn.

mod common;

use common::{TestPeer, TestRelay, config};
use futures_util::future::join_all;
use intercessor::Config;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;

/// Sends a command to the relay.
async fn command(peer: &mut TestPeer, kind: &str, message: Value) {
    peer.send_to("0", kind, message).await;
}

/// A knocking room: its server, and a knocker it heard knock.
async fn knocked(relay: &TestRelay, name: &str) -> (TestPeer, TestPeer) {
    let mut server = TestPeer::join(&relay.url("/server?knock=1")).await;
    let (knocker, hello) =
        TestPeer::hello(&relay.url(&format!("/client/{}?name={name}", server.id))).await;
    assert_eq!(hello["waiting"], true, "{hello}");
    server
        .expect_relay("KNOCK", json!({"id": knocker.id, "info": name}))
        .await;
    (server, knocker)
}

#[tokio::test]
async fn a_kicked_client_is_told_why_and_closed_and_its_server_hears_it_gone() {
    let relay = TestRelay::start(config()).await;
    let mut server = TestPeer::server(&relay).await;
    let mut client = TestPeer::client_of(&relay, &mut server).await;

    let own = json!({"id": client.id});
    command(&mut client, "KICK", own).await;
    client.expect_error("FORBIDDEN").await;
    command(
        &mut server,
        "KICK",
        json!({"id": client.id, "reason": "spam"}),
    )
    .await;

    let error = client.expect_error("KICKED").await;
    assert_eq!(error["reason"], "spam");
    assert_eq!(client.expect_close(4403).await, "kicked");
    server
        .expect_relay("PEER_GONE", json!({"id": client.id, "reason": "kicked"}))
        .await;
    command(&mut server, "KICK", json!({"id": client.id})).await;
    server.expect_error("UNKNOWN_PEER").await;
}

#[tokio::test]
async fn a_locked_room_refuses_newcomers_and_keeps_its_members() {
    let relay = TestRelay::start(config()).await;
    let mut server = TestPeer::server(&relay).await;
    let mut member = TestPeer::client_of(&relay, &mut server).await;

    command(&mut server, "ROOM", json!({"locked": true})).await;
    server
        .expect_relay(
            "ROOM",
            json!({"locked": true, "knock": false, "waiting": []}),
        )
        .await;

    let mut late = TestPeer::unread(&relay.url(&format!("/client/{}", server.id))).await;
    late.expect_error("ROOM_LOCKED").await;
    assert_eq!(late.expect_close(4423).await, "room locked");
    common::exchange(&mut server, &mut member, 0).await;
    command(&mut server, "ROOM", json!({"locked": false})).await;
    server.recv().await;
    TestPeer::client_of(&relay, &mut server).await;
}

#[tokio::test]
async fn a_knocker_waits_unheard_until_admitted_then_is_a_member() {
    let relay = TestRelay::start(config()).await;
    let (mut server, mut knocker) = knocked(&relay, "Ada").await;

    knocker
        .send_to(&server.id, "OFFER", json!("too early"))
        .await;
    knocker.expect_error("NOT_ADMITTED").await;
    server
        .send_to(&knocker.id, "OFFER", json!("too early"))
        .await;
    server.expect_error("UNKNOWN_PEER").await;
    command(&mut server, "ADMIT", json!({"id": knocker.id})).await;

    knocker.expect_relay("ADMITTED", json!({})).await;
    server
        .expect_relay("PEER_JOINED", json!({"id": knocker.id}))
        .await;
    common::exchange(&mut server, &mut knocker, 0).await;
}

#[tokio::test]
async fn a_denied_knocker_is_told_and_closed_and_one_that_leaves_is_gone() {
    let relay = TestRelay::start(config()).await;
    let (mut server, mut denied) = knocked(&relay, "Bob").await;

    command(
        &mut server,
        "DENY",
        json!({"id": denied.id, "reason": "not today"}),
    )
    .await;

    assert_eq!(denied.expect_error("DENIED").await["reason"], "not today");
    assert_eq!(denied.expect_close(4403).await, "denied");
    server
        .expect_relay("KNOCK_GONE", json!({"id": denied.id, "reason": "denied"}))
        .await;
    let (leaver, _) = TestPeer::hello(&relay.url(&format!("/client/{}", server.id))).await;
    server.recv().await;
    let id = leaver.id.clone();
    drop(leaver);
    server
        .expect_relay("KNOCK_GONE", json!({"id": id, "reason": "left"}))
        .await;
}

#[tokio::test]
async fn an_unanswered_knock_times_out() {
    let relay = TestRelay::start(Config {
        knock_timeout: Duration::from_millis(300),
        ..config()
    })
    .await;
    let (mut server, mut knocker) = knocked(&relay, "Cy").await;

    knocker.expect_error("KNOCK_TIMEOUT").await;
    assert_eq!(knocker.expect_close(4408).await, "knock timeout");
    server
        .expect_relay("KNOCK_GONE", json!({"id": knocker.id, "reason": "timeout"}))
        .await;
}

#[tokio::test]
async fn knockers_and_admissions_respect_the_limits() {
    let relay = TestRelay::start(Config {
        max_waiting_per_server: 1,
        max_clients_per_server: 1,
        ..config()
    })
    .await;
    let (mut server, first) = knocked(&relay, "first").await;
    let mut second = TestPeer::unread(&relay.url(&format!("/client/{}", server.id))).await;
    second.expect_error("SERVER_FULL").await;
    second.expect_close(4409).await;

    command(&mut server, "ADMIT", json!({"id": first.id})).await;
    server.recv().await;
    let (third, _) = TestPeer::hello(&relay.url(&format!("/client/{}", server.id))).await;
    server.recv().await;
    command(&mut server, "ADMIT", json!({"id": third.id})).await;

    let error = server.expect_error("SERVER_FULL").await;
    assert_eq!(error["id"], third.id, "{error}");
    command(&mut server, "ROOM", json!({})).await;
    server
        .expect_relay(
            "ROOM",
            json!({"locked": false, "knock": true, "waiting": [third.id]}),
        )
        .await;
}

#[tokio::test]
async fn ice_refresh_answers_any_peer_with_fresh_credentials() {
    let relay = TestRelay::start(Config {
        ice: intercessor::relay::ice::IceConfig {
            urls: vec!["turn:turn.example:3478".into()],
            turn_secret: Some("s3cret".into()),
            turn_ttl: Duration::from_secs(600),
        },
        ..config()
    })
    .await;
    let mut server = TestPeer::server(&relay).await;
    let mut client = TestPeer::client_of(&relay, &mut server).await;

    for peer in [&mut server, &mut client] {
        command(peer, "ICE_REFRESH", json!({})).await;
        let answer = peer.recv().await;
        assert_eq!(answer["type"], "ICE_SERVERS", "{answer}");
        let servers = &answer["message"]["iceServers"];
        assert_eq!(servers[0]["urls"], "turn:turn.example:3478", "{answer}");
        assert!(servers[0]["credential"].is_string(), "{answer}");
    }
}

#[tokio::test]
async fn unknown_or_malformed_commands_are_bad_commands() {
    let relay = TestRelay::start(config()).await;
    let mut server = TestPeer::server(&relay).await;

    command(&mut server, "SHOUT", json!({})).await;
    server.expect_error("BAD_COMMAND").await;
    command(&mut server, "KICK", json!({"id": 7})).await;
    server.expect_error("BAD_COMMAND").await;
    command(&mut server, "ROOM", json!({"locked": "yes"})).await;
    server.expect_error("BAD_COMMAND").await;
}

#[tokio::test]
async fn under_churn_a_knocking_server_hears_one_knock_and_one_knock_gone_per_client_in_order() {
    let relay = TestRelay::start(Config {
        max_waiting_per_server: 1000,
        max_connections_per_ip: 0,
        ..config()
    })
    .await;
    let mut server = TestPeer::join(&relay.url("/server?knock=1")).await;
    let url = relay.url(&format!("/client/{}", server.id));

    let mut ids = Vec::new();
    for _ in 0..6 {
        let batch = join_all((0..50).map(|_| TestPeer::hello(&url))).await;
        ids.extend(batch.iter().map(|(peer, _)| peer.id.clone()));
        drop(batch);
    }

    let mut heard: HashMap<String, Vec<String>> = HashMap::new();
    for _ in 0..2 * ids.len() {
        let frame = server.recv().await;
        let id = frame["message"]["id"].as_str().expect("an id").to_owned();
        heard
            .entry(id)
            .or_default()
            .push(frame["type"].as_str().unwrap_or("?").to_owned());
    }
    assert_eq!(heard.len(), ids.len());
    for id in &ids {
        assert_eq!(heard[id], ["KNOCK", "KNOCK_GONE"], "{id}");
    }
}
