//! Resumable sessions over real sockets: a peer whose connection is lost is away for the resume
//! window, its counterparts hear PEER_AWAY and what they send it waits; resuming with its token
//! brings it back with everything it missed, in order. Deliberate leaves, penalties and expired
//! windows are gone, as without resuming.

mod common;

use common::{RelayProcess, TestPeer, TestRelay, config, resume_token};
use intercessor::Config;
use intercessor::relay::resume::ResumePolicy;
use serde_json::{Value, json};
use std::time::Duration;

/// A configuration resuming sessions within `window`, with `queue_bytes` queued per away peer.
fn resuming(window: Duration, queue_bytes: usize, max_away: usize) -> Config {
    Config {
        resume: ResumePolicy {
            window,
            queue_bytes,
            max_away,
        },
        ..config()
    }
}

async fn relay_with(window: Duration, queue_bytes: usize, max_away: usize) -> TestRelay {
    TestRelay::start(resuming(window, queue_bytes, max_away)).await
}

async fn relay() -> TestRelay {
    relay_with(Duration::from_secs(30), 256 * 1024, 16).await
}

/// A server and one client, with each one's HELLO.
async fn room(relay: &TestRelay) -> ((TestPeer, Value), (TestPeer, Value)) {
    let (mut server, server_hello) = TestPeer::hello(&relay.url("/server")).await;
    let (client, client_hello) =
        TestPeer::hello(&relay.url(&format!("/client/{}", server.id))).await;
    server
        .expect_relay("PEER_JOINED", json!({"id": client.id}))
        .await;
    ((server, server_hello), (client, client_hello))
}

/// Drops a peer's connection without a close frame, as a network loss does.
fn lose(peer: TestPeer) -> String {
    let id = peer.id.clone();
    drop(peer);
    id
}

#[tokio::test]
async fn every_hello_carries_a_single_use_token_and_the_window() {
    let relay = relay().await;
    let ((_server, server_hello), (_client, client_hello)) = room(&relay).await;

    for hello in [&server_hello, &client_hello] {
        assert_eq!(resume_token(hello).len(), 22, "{hello}");
        assert_eq!(hello["resumeWindowMs"], 30_000, "{hello}");
    }
    assert_ne!(resume_token(&server_hello), resume_token(&client_hello));
}

#[tokio::test]
async fn a_lost_client_is_away_and_resumes_with_what_its_server_sent_meanwhile() {
    let relay = relay().await;
    let ((mut server, _), (client, client_hello)) = room(&relay).await;
    let code = server.id.clone();
    let id = lose(client);
    server.expect_relay("PEER_AWAY", json!({"id": id})).await;

    server.send_to(&id, "OFFER", json!(1)).await;
    server.send_to(&id, "OFFER", json!(2)).await;
    let url = relay.url(&format!(
        "/client/{code}?resume={}",
        resume_token(&client_hello)
    ));
    let (mut client, hello) = TestPeer::hello(&url).await;

    assert_eq!(client.id, id);
    assert_eq!(hello["resumed"], true, "{hello}");
    assert_ne!(
        resume_token(&hello),
        resume_token(&client_hello),
        "a fresh token"
    );
    for n in [1, 2] {
        assert_eq!(
            client.recv().await,
            json!({"from": code, "type": "OFFER", "message": n})
        );
    }
    server.expect_relay("PEER_BACK", json!({"id": id})).await;
    common::exchange(&mut server, &mut client, 0).await;
}

#[tokio::test]
async fn a_lost_server_keeps_its_code_and_clients_and_resumes_without_the_passphrase() {
    let relay = TestRelay::start(Config {
        passphrase: Some("sesame".into()),
        resume: ResumePolicy {
            window: Duration::from_secs(30),
            queue_bytes: 256 * 1024,
            max_away: 16,
        },
        ..config()
    })
    .await;
    let (server, server_hello) = TestPeer::hello(&relay.url("/server?passphrase=sesame")).await;
    let mut client = TestPeer::join(&relay.url(&format!("/client/{}", server.id))).await;
    let code = lose(server);
    client.expect_relay("PEER_AWAY", json!({"id": code})).await;

    client.send_to(&code, "ANSWER", json!("while away")).await;
    let url = relay.url(&format!("/server?resume={}", resume_token(&server_hello)));
    let (mut server, hello) = TestPeer::hello(&url).await;

    assert_eq!(server.id, code);
    assert_eq!(hello["resumed"], true, "{hello}");
    assert_eq!(
        server.recv().await,
        json!({"from": client.id, "type": "ANSWER", "message": "while away"})
    );
    client.expect_relay("PEER_BACK", json!({"id": code})).await;
    common::exchange(&mut server, &mut client, 0).await;
}

#[tokio::test]
async fn frames_written_just_before_the_loss_are_replayed_after_those_the_peer_counted() {
    let relay = relay().await;
    let ((mut server, _), (mut client, client_hello)) = room(&relay).await;
    for n in 1..=3 {
        server.send_to(&client.id, "CANDIDATE", json!(n)).await;
    }
    // The client reads one of the three; the other two die with its connection.
    assert_eq!(client.recv().await["message"], 1);
    let id = lose(client);
    server.expect_relay("PEER_AWAY", json!({"id": id})).await;

    let url = relay.url(&format!(
        "/client/{}?resume={}&received=1",
        server.id,
        resume_token(&client_hello)
    ));
    let (mut client, hello) = TestPeer::hello(&url).await;

    assert_eq!(hello["replayed"], 2, "{hello}");
    assert_eq!(hello.get("gap"), None, "{hello}");
    assert_eq!(client.recv().await["message"], 2);
    assert_eq!(client.recv().await["message"], 3);
}

#[tokio::test]
async fn frames_the_peer_answered_a_ping_after_leave_the_replay_window() {
    // Pings every 100 ms; the client reads three frames and answers pings after them.
    let relay = TestRelay::start(Config {
        ping_interval: Duration::from_millis(100),
        ..resuming(Duration::from_secs(30), 256 * 1024, 16)
    })
    .await;
    let ((mut server, _), (mut client, client_hello)) = room(&relay).await;
    for n in 1..=3 {
        server.send_to(&client.id, "CANDIDATE", json!(n)).await;
    }
    for n in 1..=3 {
        assert_eq!(client.recv().await["message"], n);
    }
    // Two pings read: the pong of the first has been written by the time the second is read.
    let mut pings = 0;
    for _ in 0..50 {
        pings += client.count_pings(Duration::from_millis(100)).await;
        if pings >= 2 {
            break;
        }
    }
    assert!(pings >= 2, "only {pings} pings in 5 s at 100 ms");
    server.send_to(&client.id, "CANDIDATE", json!(4)).await;
    let id = lose(client);
    server.expect_relay("PEER_AWAY", json!({"id": id})).await;

    // A resume claiming only two frames: the third was acknowledged and is no longer held.
    let url = relay.url(&format!(
        "/client/{}?resume={}&received=2",
        server.id,
        resume_token(&client_hello)
    ));
    let (mut client, hello) = TestPeer::hello(&url).await;

    assert_eq!(hello["gap"], true, "{hello}");
    assert_eq!(hello["replayed"], 1, "{hello}");
    assert_eq!(client.recv().await["message"], 4);
}

#[tokio::test]
async fn frames_older_than_the_replay_window_are_reported_as_a_gap() {
    // The window holds 64 KiB + 256 bytes: the last of three 30 KB frames only... and a half.
    let relay = relay_with(Duration::from_secs(30), 64 * 1024 + 256, 16).await;
    let ((mut server, _), (mut client, client_hello)) = room(&relay).await;
    let big = "x".repeat(30_000);
    for n in 0..3 {
        server
            .send_to(&client.id, "BULK", json!(format!("{n}{big}")))
            .await;
    }
    for _ in 0..3 {
        client.recv().await;
    }
    lose(client);
    server.recv().await;

    let url = relay.url(&format!(
        "/client/{}?resume={}&received=0",
        server.id,
        resume_token(&client_hello)
    ));
    let (_client, hello) = TestPeer::hello(&url).await;

    assert_eq!(hello["gap"], true, "{hello}");
    assert_eq!(hello["replayed"], 2, "{hello}");
}

#[tokio::test]
async fn a_send_to_an_away_peer_beyond_its_queue_gets_queue_full_and_the_sender_stays() {
    let queue = 64 * 1024 + 256;
    let relay = relay_with(Duration::from_secs(30), queue, 16).await;
    let ((mut server, _), (client, _)) = room(&relay).await;
    let id = lose(client);
    server.expect_relay("PEER_AWAY", json!({"id": id})).await;

    let big = "x".repeat(40_000);
    server.send_to(&id, "BULK", json!(big)).await;
    server.send_to(&id, "BULK", json!(big)).await;

    let error = server.expect_error("QUEUE_FULL").await;
    assert_eq!(error["id"], id, "{error}");
    server.send_to(&id, "SMALL", json!(1)).await;
    server.send_to("nobody", "SMALL", json!(1)).await;
    server.expect_error("UNKNOWN_PEER").await;
}

#[tokio::test]
async fn when_the_window_ends_the_away_peer_is_gone_and_its_token_dead() {
    let relay = relay_with(Duration::from_millis(500), 256 * 1024, 16).await;
    let ((mut server, _), (client, client_hello)) = room(&relay).await;
    let id = lose(client);
    server.expect_relay("PEER_AWAY", json!({"id": id})).await;

    server.expect_relay("PEER_GONE", json!({"id": id})).await;
    let url = relay.url(&format!(
        "/client/{}?resume={}",
        server.id,
        resume_token(&client_hello)
    ));
    let mut late = TestPeer {
        ws: TestPeer::connect_raw(&url).await,
        id: String::new(),
    };
    late.expect_error("RESUME_FAILED").await;
    late.expect_close(4404).await;
}

#[tokio::test]
async fn an_away_server_whose_window_ends_closes_its_clients_as_server_gone() {
    let relay = relay_with(Duration::from_millis(500), 256 * 1024, 16).await;
    let ((server, _), (mut client, _)) = room(&relay).await;
    let code = lose(server);

    client.expect_relay("PEER_AWAY", json!({"id": code})).await;
    client.expect_relay("PEER_GONE", json!({"id": code})).await;
    client.expect_close(4410).await;
}

#[tokio::test]
async fn a_deliberate_leave_is_gone_at_once_and_cannot_be_resumed() {
    let relay = relay().await;
    let ((mut server, _), (mut client, client_hello)) = room(&relay).await;

    client.send_to("0", "LEAVE", json!(null)).await;

    assert_eq!(client.expect_close(1000).await, "left");
    server
        .expect_relay("PEER_GONE", json!({"id": client.id}))
        .await;
    let url = relay.url(&format!(
        "/client/{}?resume={}",
        server.id,
        resume_token(&client_hello)
    ));
    let mut again = TestPeer {
        ws: TestPeer::connect_raw(&url).await,
        id: String::new(),
    };
    again.expect_error("RESUME_FAILED").await;
    again.expect_close(4404).await;

    let mut other = TestPeer::join(&relay.url(&format!("/client/{}", server.id))).await;
    server.recv().await;
    other
        .ws
        .close(None)
        .await
        .expect("closes with 1000... or no code");
    server
        .expect_relay("PEER_GONE", json!({"id": other.id}))
        .await;
}

#[tokio::test]
async fn a_peer_cut_off_for_its_behaviour_is_gone_not_away() {
    let relay = TestRelay::start(Config {
        max_message_bytes: 1024,
        send_queue_bytes: 64 * 1024,
        resume: ResumePolicy {
            window: Duration::from_secs(30),
            queue_bytes: 64 * 1024,
            max_away: 16,
        },
        ..config()
    })
    .await;
    let ((mut server, _), (mut client, _)) = room(&relay).await;

    client
        .send_to(&server.id, "BULK", json!("x".repeat(2000)))
        .await;

    client.expect_close(1009).await;
    server
        .expect_relay("PEER_GONE", json!({"id": client.id}))
        .await;
}

#[tokio::test]
async fn resuming_while_the_old_connection_is_still_open_supersedes_it() {
    let relay = relay().await;
    let ((mut server, _), (mut old, client_hello)) = room(&relay).await;

    let url = relay.url(&format!(
        "/client/{}?resume={}",
        server.id,
        resume_token(&client_hello)
    ));
    let (mut new, hello) = TestPeer::hello(&url).await;

    assert_eq!(new.id, old.id);
    assert_eq!(hello["resumed"], true);
    old.expect_error("SUPERSEDED").await;
    old.expect_close(4412).await;
    common::exchange(&mut server, &mut new, 0).await;
}

#[tokio::test]
async fn failed_resumes_count_as_failed_attempts() {
    let relay = TestRelay::start(Config {
        max_failed_attempts_per_minute: 2,
        resume: ResumePolicy {
            window: Duration::from_secs(30),
            queue_bytes: 256 * 1024,
            max_away: 16,
        },
        ..config()
    })
    .await;
    let made_up = "AAAAAAAAAAAAAAAAAAAAAA";

    for token in [made_up, "not-a-token"] {
        let mut peer = TestPeer {
            ws: TestPeer::connect_raw(&relay.url(&format!("/server?resume={token}"))).await,
            id: String::new(),
        };
        peer.expect_error("RESUME_FAILED").await;
        peer.expect_close(4404).await;
    }

    let mut third = TestPeer {
        ws: TestPeer::connect_raw(&relay.url(&format!("/server?resume={made_up}"))).await,
        id: String::new(),
    };
    third.expect_error("RATE_LIMITED").await;
    third.expect_close(4429).await;
}

#[tokio::test]
async fn beyond_max_away_peers_a_loss_is_a_leave() {
    let relay = relay_with(Duration::from_secs(30), 256 * 1024, 1).await;
    let ((mut server, _), (first, _)) = room(&relay).await;
    let second = TestPeer::client_of(&relay, &mut server).await;

    let first = lose(first);
    server.expect_relay("PEER_AWAY", json!({"id": first})).await;
    let second = lose(second);

    server
        .expect_relay("PEER_GONE", json!({"id": second}))
        .await;
}

#[tokio::test]
async fn with_a_zero_window_nothing_resumes_and_a_loss_is_a_leave() {
    let relay = relay_with(Duration::ZERO, 256 * 1024, 16).await;
    let ((mut server, server_hello), (client, _)) = room(&relay).await;

    assert_eq!(server_hello.get("resumeToken"), None, "{server_hello}");
    let id = lose(client);
    server.expect_relay("PEER_GONE", json!({"id": id})).await;
}

#[test]
fn tokens_never_reach_the_logs() {
    let relay = RelayProcess::start(&[], &[("RUST_LOG", "trace")]);
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let secret = runtime.block_on(async {
        let (server, hello) = TestPeer::hello(&format!("{}/server", relay.url)).await;
        let secret = resume_token(&hello);
        lose(server);
        let url = format!("{}/server?resume={secret}", relay.url);
        let (resumed, hello) = TestPeer::hello(&url).await;
        assert_eq!(hello["resumed"], true);
        drop(resumed);
        secret
    });
    relay.signal("TERM");
    let mut lines = Vec::new();
    while let Ok(line) = relay.log.recv_timeout(Duration::from_secs(5)) {
        lines.push(line.to_string());
    }
    assert!(
        lines.iter().any(|line| line.contains("peer left")),
        "the log was read"
    );
    let leaks: Vec<&String> = lines.iter().filter(|line| line.contains(&secret)).collect();
    assert!(leaks.is_empty(), "a token was logged: {leaks:#?}");
}

#[tokio::test]
async fn a_rooms_rules_and_knockers_survive_its_servers_resume() {
    let relay = relay().await;
    let (mut server, server_hello) = TestPeer::hello(&relay.url("/server?knock=1&locked=0")).await;
    let (knocker, _) = TestPeer::hello(&relay.url(&format!("/client/{}", server.id))).await;
    server.recv().await;
    let code = lose(server);

    let url = relay.url(&format!("/server?resume={}", resume_token(&server_hello)));
    let (mut server, hello) = TestPeer::hello(&url).await;
    server.send_to("0", "ROOM", json!({"locked": true})).await;

    assert_eq!(hello["resumed"], true, "{hello}");
    assert_eq!(server.id, code);
    server
        .expect_relay(
            "ROOM",
            json!({"locked": true, "knock": true, "waiting": [knocker.id]}),
        )
        .await;
}
