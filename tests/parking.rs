//! Idle sessions park (holding their socket and none of the WebSocket's state, see
//! `src/edge/parking.rs`) about 100–200 ms after their last frame, a new one as soon as it is
//! greeted, and lose nothing by it: not a frame half read, not a message half received, not a ping.

mod common;

use common::{
    DevTls, TestPeer, TestRelay, client_frame, connect_wss, metrics_config, raw_websocket,
    until_sample,
};
use intercessor::Config;
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const PARKED: &str = "intercessor_parked_sessions";

/// Long enough for a session's timer to have found it idle several times over.
const SEVERAL_PARK_CHECKS: Duration = Duration::from_millis(600);

/// A server peer, and a client of it opened by hand so the test writes its bytes; the server has
/// read PEER_JOINED. Returns the client's id too.
async fn server_and_raw_client(relay: &TestRelay) -> (TestPeer, TcpStream, String) {
    let mut server = TestPeer::server(relay).await;
    let (client, _hello) = raw_websocket(relay.addr, &format!("/client/{}", server.id)).await;
    let joined = server.recv().await;
    assert_eq!(joined["type"], "PEER_JOINED", "{joined}");
    let id = joined["message"]["id"].as_str().expect("an id").to_owned();
    (server, client, id)
}

/// A peer at `path` over `wss://`, trusting `tls`'s CA, greeted.
async fn wss_peer(relay: &TestRelay, tls: &DevTls, path: &str) -> TestPeer {
    let ws = connect_wss(relay.addr, "localhost", path, tls.trust()).await;
    TestPeer::greeted(ws.expect("wss")).await
}

/// The text frame a client sends to `to`.
fn envelope(to: &str, text: &str) -> Vec<u8> {
    json!({"to": to, "type": "T", "message": text})
        .to_string()
        .into_bytes()
}

/// Scrapes the metrics and expects `parked` sessions parked, then again after several park
/// checks: a session that must not park has had every chance to.
async fn parked_stays(metrics: SocketAddr, parked: f64) {
    until_sample(metrics, PARKED, parked).await;
    tokio::time::sleep(SEVERAL_PARK_CHECKS).await;
    until_sample(metrics, PARKED, parked).await;
}

#[tokio::test]
async fn an_idle_pair_parks_and_relays_both_ways_when_woken() {
    // Set-up: a pair that exchanged HELLO and PEER_JOINED, then went quiet.
    let relay = TestRelay::start(metrics_config()).await;
    let metrics = relay.metrics_addr.expect("metrics listener");
    let mut server = TestPeer::server(&relay).await;
    let mut client = TestPeer::client_of(&relay, &mut server).await;
    until_sample(metrics, PARKED, 2.0).await;
    // Action: each wakes the other, and both go quiet again.
    client
        .send_to(&server.id, "OFFER", json!({"sdp": "v=0"}))
        .await;
    server
        .expect_from(&client.id, "OFFER", json!({"sdp": "v=0"}))
        .await;
    server.send_to(&client.id, "ANSWER", json!("v=1")).await;
    client.expect_from(&server.id, "ANSWER", json!("v=1")).await;
    // Expectation: both delivered, and both park again.
    until_sample(metrics, PARKED, 2.0).await;
}

#[tokio::test]
async fn a_pair_that_speaks_the_moment_it_is_greeted_loses_nothing() {
    // Set-up: a new pair; a session that has carried no message parks at its first rest, so
    // each may park and reopen between its HELLO and what it is sent next.
    let relay = TestRelay::start(metrics_config()).await;
    let metrics = relay.metrics_addr.expect("metrics listener");
    let mut server = TestPeer::server(&relay).await;
    let mut client = TestPeer::client_of(&relay, &mut server).await;
    // Action: the client offers at once and the server answers at once.
    client.send_to(&server.id, "OFFER", json!("v=0")).await;
    server.expect_from(&client.id, "OFFER", json!("v=0")).await;
    server.send_to(&client.id, "ANSWER", json!("v=1")).await;
    // Expectation: both delivered, and both park once quiet.
    client.expect_from(&server.id, "ANSWER", json!("v=1")).await;
    until_sample(metrics, PARKED, 2.0).await;
}

#[tokio::test]
async fn a_frame_half_sent_before_a_pause_is_relayed_whole_after_it() {
    // Set-up: the client sends the first half of a text frame, header and part of the payload.
    let relay = TestRelay::start(metrics_config()).await;
    let metrics = relay.metrics_addr.expect("metrics listener");
    let (mut server, mut client, client_id) = server_and_raw_client(&relay).await;
    let text = "x".repeat(300);
    let frame = client_frame(0x81, &envelope(&server.id, &text));
    let (head, tail) = frame.split_at(frame.len() / 2);
    client.write_all(head).await.expect("write");
    // Action: a pause in which the server parks and the client, half read, must not.
    parked_stays(metrics, 1.0).await;
    client.write_all(tail).await.expect("write");
    // Expectation: the message arrives whole.
    server.expect_from(&client_id, "T", json!(text)).await;
}

#[tokio::test]
async fn a_message_whose_fragments_straddle_a_pause_is_relayed_whole() {
    // Set-up: the first fragment of a text message (no FIN), then a ping between fragments.
    let relay = TestRelay::start(metrics_config()).await;
    let metrics = relay.metrics_addr.expect("metrics listener");
    let (mut server, mut client, client_id) = server_and_raw_client(&relay).await;
    let message = envelope(&server.id, "in two parts");
    let (first, last) = message.split_at(10);
    client
        .write_all(&client_frame(0x01, first))
        .await
        .expect("write");
    client
        .write_all(&client_frame(0x89, b"between"))
        .await
        .expect("write");
    // Action: a pause in which the client, its message half received, must not park.
    parked_stays(metrics, 1.0).await;
    client
        .write_all(&client_frame(0x80, last))
        .await
        .expect("write");
    // Expectation: the message arrives whole.
    server
        .expect_from(&client_id, "T", json!("in two parts"))
        .await;
}

#[tokio::test]
async fn a_parked_peer_is_pinged_and_its_pongs_keep_it() {
    // Set-up: pings every 400 ms, and a cut after 1.2 s without a frame from the peer.
    let relay = TestRelay::start(Config {
        ping_interval: Duration::from_millis(400),
        idle_timeout: Duration::from_millis(1200),
        ..metrics_config()
    })
    .await;
    let metrics = relay.metrics_addr.expect("metrics listener");
    let mut server = TestPeer::server(&relay).await;
    until_sample(metrics, PARKED, 1.0).await;
    // Action: the peer reads for 2.5 s, its client answering each ping with a pong.
    let pings = server.count_pings(Duration::from_millis(2500)).await;
    // Expectation: pinged from parked throughout, never cut, and parked again at the end.
    assert!(pings >= 4, "only {pings} pings in 2.5 s at 400 ms");
    until_sample(metrics, PARKED, 1.0).await;
    TestPeer::client_of(&relay, &mut server).await;
}

#[tokio::test]
async fn over_wss_an_idle_pair_parks_and_relays_when_woken() {
    // Set-up: a pair over wss:// that went quiet after PEER_JOINED.
    let tls = DevTls::new();
    let relay = TestRelay::start(Config {
        tls: Some(tls.source()),
        ..metrics_config()
    })
    .await;
    let metrics = relay.metrics_addr.expect("metrics listener");
    let mut server = wss_peer(&relay, &tls, "/server").await;
    let mut client = wss_peer(&relay, &tls, &format!("/client/{}", server.id)).await;
    server
        .expect_relay("PEER_JOINED", json!({"id": client.id}))
        .await;
    until_sample(metrics, PARKED, 2.0).await;
    // Action: a 4 KB offer and its answer, as in a real exchange.
    let sdp = "a".repeat(4000);
    client.send_to(&server.id, "OFFER", json!(sdp)).await;
    server.expect_from(&client.id, "OFFER", json!(sdp)).await;
    server.send_to(&client.id, "ANSWER", json!("v=1")).await;
    client.expect_from(&server.id, "ANSWER", json!("v=1")).await;
    // Expectation: delivered, and both park again.
    until_sample(metrics, PARKED, 2.0).await;
}
