//! Rooms shared by relay processes in `--cluster-routing pubsub`: a client connects to any
//! instance, which forwards its frames to its room's instance over a real `redis-server`. To both
//! peers nothing differs from a room on one instance; each fault ends forwarded sessions with a
//! documented close, never a hang or a silent gap.

mod common;

use common::cluster::{self, eventually, expect_refused};
use common::redis::RedisServer;
use common::{PATIENCE, RelayProcess, TestPeer, exchange, resume_token};
use serde_json::json;
use std::time::{Duration, Instant};

/// A relay process named `id` in the cluster on `redis`, forwarding over pub/sub.
fn instance(redis: &RedisServer, id: &str, extra: &[&str]) -> RelayProcess {
    cluster::instance(&redis.url(), id, "pubsub", extra)
}

/// A server registered on `owner` and a client of it that connected to `guest`'s instance.
async fn room_across(owner: &RelayProcess, guest: &RelayProcess) -> (TestPeer, TestPeer) {
    let mut server = TestPeer::join(&format!("{}/server", owner.url)).await;
    let client = TestPeer::join(&format!("{}/client/{}", guest.url, server.id)).await;
    server
        .expect_relay("PEER_JOINED", json!({"id": client.id}))
        .await;
    (server, client)
}

#[tokio::test]
async fn a_client_on_another_instance_relays_both_ways_and_hears_its_server_leave() {
    let redis = RedisServer::start();
    let (a, b) = (instance(&redis, "a", &[]), instance(&redis, "b", &[]));

    let (mut server, mut client) = room_across(&a, &b).await;
    exchange(&mut server, &mut client, 0).await;
    exchange(&mut server, &mut client, 1000).await;
    let code = server.id.clone();
    drop(server);

    client.expect_relay("PEER_GONE", json!({"id": code})).await;
    client.expect_close(4410).await;
}

#[tokio::test]
async fn a_client_leaving_another_instance_is_gone_for_its_server() {
    let redis = RedisServer::start();
    let (a, b) = (instance(&redis, "a", &[]), instance(&redis, "b", &[]));
    let (server, client) = room_across(&a, &b).await;

    common::leave(server, client).await;
}

#[tokio::test]
async fn the_rules_of_who_may_send_to_whom_hold_across_instances() {
    let redis = RedisServer::start();
    let full = ["--max-clients-per-server", "1"];
    let (a, b) = (instance(&redis, "a", &full), instance(&redis, "b", &full));
    let (mut server, mut client) = room_across(&a, &b).await;
    let other = TestPeer::join(&format!("{}/server", a.url)).await;

    client.send_to(&other.id, "OFFER", json!("x")).await;
    client.expect_error("UNKNOWN_PEER").await;
    server.send_to("nobody", "OFFER", json!("x")).await;
    server.expect_error("UNKNOWN_PEER").await;
    let url = format!("{}/client/{}", b.url, server.id);
    expect_refused(&url, "SERVER_FULL", 4409).await;
    expect_refused(&format!("{}/client/ZZZZZZ", b.url), "UNKNOWN_SERVER", 4404).await;

    exchange(&mut server, &mut client, 0).await;
}

#[tokio::test]
async fn a_killed_owners_forwarded_clients_hear_their_server_go_within_its_lease() {
    let redis = RedisServer::start();
    let (mut a, b) = (instance(&redis, "a", &[]), instance(&redis, "b", &[]));
    let (server, mut client) = room_across(&a, &b).await;

    a.child.kill().expect("SIGKILL");
    let killed = Instant::now();

    // Nothing is sent meanwhile, so only a's lapsed lease can tell b.
    client
        .expect_relay("PEER_GONE", json!({"id": server.id}))
        .await;
    client.expect_close(4410).await;
    assert!(killed.elapsed() < Duration::from_secs(2) + PATIENCE);
}

#[tokio::test]
async fn a_killed_guest_instances_clients_are_gone_for_their_server() {
    let redis = RedisServer::start();
    let (a, mut b) = (instance(&redis, "a", &[]), instance(&redis, "b", &[]));
    let (mut server, client) = room_across(&a, &b).await;

    b.child.kill().expect("SIGKILL");

    server
        .expect_relay("PEER_GONE", json!({"id": client.id}))
        .await;
}

#[tokio::test]
async fn a_stalled_redis_closes_forwarded_sessions_with_try_again_while_local_rooms_relay_on() {
    let redis = RedisServer::start();
    let (a, b) = (instance(&redis, "a", &[]), instance(&redis, "b", &[]));
    let (mut server, mut client) = room_across(&a, &b).await;
    let mut local_server = TestPeer::join(&format!("{}/server", a.url)).await;
    let mut local_client = TestPeer::join(&format!("{}/client/{}", a.url, local_server.id)).await;
    local_server
        .expect_relay("PEER_JOINED", json!({"id": local_client.id}))
        .await;

    redis.pause();
    client
        .send_to(&server.id, "OFFER", json!("into the stall"))
        .await;
    let error = client.expect_error("SERVER_UNAVAILABLE").await;
    client.expect_close(1013).await;
    server
        .expect_relay("PEER_GONE", json!({"id": client.id}))
        .await;
    exchange(&mut local_server, &mut local_client, 0).await;
    redis.resume();

    assert_eq!(error["retryAfterMs"], 1000, "{error}");
    let url = format!("{}/client/{}", b.url, server.id);
    let rejoined = eventually(PATIENCE, || async {
        let first = TestPeer::unread(&url).await.recv().await;
        (first["type"] == "HELLO").then_some(first)
    })
    .await;
    let id = rejoined["message"]["id"].as_str().expect("an id");
    // Attempts while Redis came back may have joined and left before this one.
    loop {
        let frame = server.recv().await;
        assert!(
            frame["type"] == "PEER_JOINED" || frame["type"] == "PEER_GONE",
            "{frame}"
        );
        if frame["type"] == "PEER_JOINED" && frame["message"]["id"] == id {
            break;
        }
    }
}

#[tokio::test]
async fn a_restarted_redis_ends_forwarded_sessions_and_the_room_can_be_joined_again() {
    let mut redis = RedisServer::start();
    let (a, b) = (instance(&redis, "a", &[]), instance(&redis, "b", &[]));
    let (mut server, mut client) = room_across(&a, &b).await;

    redis.restart();

    client.expect_error("SERVER_UNAVAILABLE").await;
    client.expect_close(1013).await;
    server
        .expect_relay("PEER_GONE", json!({"id": client.id}))
        .await;
    let url = format!("{}/client/{}", b.url, server.id);
    let mut client = eventually(PATIENCE, || async {
        let mut peer = TestPeer::unread(&url).await;
        let first = peer.recv().await;
        peer.id = first["message"]["id"].as_str()?.to_owned();
        (first["type"] == "HELLO").then_some(peer)
    })
    .await;
    server
        .expect_relay("PEER_JOINED", json!({"id": client.id}))
        .await;
    exchange(&mut server, &mut client, 0).await;
}

#[tokio::test]
async fn a_draining_owner_closes_its_forwarded_clients_with_going_away() {
    let redis = RedisServer::start();
    let (a, b) = (instance(&redis, "a", &[]), instance(&redis, "b", &[]));
    let (mut server, mut client) = room_across(&a, &b).await;

    a.signal("TERM");

    server.expect_close(1001).await;
    client.expect_close(1001).await;
}

#[tokio::test]
async fn a_draining_guest_instance_closes_its_clients_and_their_server_hears_them_go() {
    let redis = RedisServer::start();
    let (a, b) = (instance(&redis, "a", &[]), instance(&redis, "b", &[]));
    let (mut server, mut client) = room_across(&a, &b).await;

    b.signal("TERM");

    client.expect_close(1001).await;
    server
        .expect_relay("PEER_GONE", json!({"id": client.id}))
        .await;
}

#[tokio::test]
async fn a_client_of_another_instance_knocks_waits_and_is_admitted_like_a_local_one() {
    let redis = RedisServer::start();
    let (a, b) = (instance(&redis, "a", &[]), instance(&redis, "b", &[]));
    let mut server = TestPeer::join(&format!("{}/server?knock=1", a.url)).await;
    let mut guest = TestPeer::unread(&format!("{}/client/{}?name=Ada", b.url, server.id)).await;
    let hello = guest.recv().await;
    guest.id = hello["message"]["id"].as_str().expect("an id").to_owned();

    assert_eq!(hello["message"]["waiting"], true, "{hello}");
    server
        .expect_relay("KNOCK", json!({"id": guest.id, "info": "Ada"}))
        .await;
    guest.send_to(&server.id, "OFFER", json!("early")).await;
    guest.expect_error("NOT_ADMITTED").await;
    server.send_to("0", "ADMIT", json!({"id": guest.id})).await;
    guest.expect_relay("ADMITTED", json!({})).await;
    server
        .expect_relay("PEER_JOINED", json!({"id": guest.id}))
        .await;
    exchange(&mut server, &mut guest, 0).await;
    server.send_to("0", "KICK", json!({"id": guest.id})).await;
    guest.expect_error("KICKED").await;
    guest.expect_close(4403).await;
}

/// Two instances forwarding over pub/sub that resume sessions, and a room on `a` whose client
/// is on `b`; with the client's HELLO.
async fn resuming_room_across(
    redis: &RedisServer,
) -> (
    RelayProcess,
    RelayProcess,
    TestPeer,
    TestPeer,
    serde_json::Value,
) {
    let resuming = ["--resume-window", "10s"];
    let (a, b) = (
        instance(redis, "a", &resuming),
        instance(redis, "b", &resuming),
    );
    let mut server = TestPeer::join(&format!("{}/server", a.url)).await;
    let (client, hello) = TestPeer::hello(&format!("{}/client/{}", b.url, server.id)).await;
    server
        .expect_relay("PEER_JOINED", json!({"id": client.id}))
        .await;
    (a, b, server, client, hello)
}

#[tokio::test]
async fn a_forwarded_client_resumes_through_its_instance_with_what_it_missed_in_order() {
    let redis = RedisServer::start();
    let (_a, b, mut server, mut client, hello) = resuming_room_across(&redis).await;
    let (code, id) = (server.id.clone(), client.id.clone());
    // Frame 1 is the relay's own answer, made on b; frame 2 comes from the server on a.
    client.send_to("nobody", "OFFER", json!("x")).await;
    client.expect_error("UNKNOWN_PEER").await;
    server.send_to(&id, "OFFER", json!(1)).await;
    client.expect_from(&code, "OFFER", json!(1)).await;

    drop(client);
    server.expect_relay("PEER_AWAY", json!({ "id": id })).await;
    server.send_to(&id, "OFFER", json!(2)).await;
    // Resume saying only frame 1 arrived, as if frame 2 died in the kernel's buffers.
    let token = resume_token(&hello);
    let url = format!("{}/client/{code}?resume={token}&received=1", b.url);
    let (mut client, hello) = TestPeer::hello(&url).await;

    assert_eq!(
        (hello["id"].as_str(), hello["resumed"].as_bool()),
        (Some(id.as_str()), Some(true))
    );
    assert_eq!(
        (hello["replayed"].as_u64(), hello.get("gap")),
        (Some(1), None),
        "{hello}"
    );
    client.expect_from(&code, "OFFER", json!(1)).await;
    client.expect_from(&code, "OFFER", json!(2)).await;
    server.expect_relay("PEER_BACK", json!({ "id": id })).await;
    exchange(&mut server, &mut client, 0).await;
}

#[tokio::test]
async fn a_forwarded_client_resumes_on_its_rooms_own_instance_and_supersedes_the_old_link() {
    let redis = RedisServer::start();
    let (a, _b, mut server, mut old, hello) = resuming_room_across(&redis).await;
    let (code, id) = (server.id.clone(), old.id.clone());

    // The old connection still looks open: the resume on a wins.
    let token = resume_token(&hello);
    let url = format!("{}/client/{code}?resume={token}&received=0", a.url);
    let (mut client, hello) = TestPeer::hello(&url).await;

    assert_eq!(hello["resumed"], true, "{hello}");
    old.expect_error("SUPERSEDED").await;
    old.expect_close(4412).await;
    exchange(&mut server, &mut client, 0).await;
    assert_eq!(client.id, id);
}

#[tokio::test]
async fn a_forwarded_client_that_never_returns_is_gone_when_its_window_ends() {
    let redis = RedisServer::start();
    let resuming = ["--resume-window", "1s"];
    let (a, b) = (
        instance(&redis, "a", &resuming),
        instance(&redis, "b", &resuming),
    );
    let (mut server, client) = room_across(&a, &b).await;
    let id = client.id.clone();

    drop(client);

    server.expect_relay("PEER_AWAY", json!({ "id": id })).await;
    server.expect_relay("PEER_GONE", json!({ "id": id })).await;
}

#[tokio::test]
async fn with_resume_a_link_lost_in_a_redis_stall_is_resumed_and_said_to_have_a_gap() {
    let redis = RedisServer::start();
    let (_a, b, mut server, mut client, hello) = resuming_room_across(&redis).await;
    let (code, id) = (server.id.clone(), client.id.clone());

    redis.pause();
    client
        .send_to(&code, "OFFER", json!("into the stall"))
        .await;
    // No ERROR before the close: the frames the client counts stay the owner's.
    client.expect_close(1013).await;
    server.expect_relay("PEER_AWAY", json!({ "id": id })).await;
    redis.resume();
    let token = resume_token(&hello);
    let url = format!("{}/client/{code}?resume={token}&received=0", b.url);
    let (mut client, hello) = cluster::when_available(&url).await;

    assert_eq!(hello["resumed"], true, "{hello}");
    assert_eq!(hello["gap"], true, "the stalled frame may be lost: {hello}");
    server.expect_relay("PEER_BACK", json!({ "id": id })).await;
    exchange(&mut server, &mut client, 0).await;
}

#[tokio::test]
async fn a_server_resuming_on_another_instance_takes_its_room_over_and_its_clients_follow() {
    let redis = RedisServer::start();
    let resuming = ["--resume-window", "10s"];
    let (a, b) = (
        instance(&redis, "a", &resuming),
        instance(&redis, "b", &resuming),
    );
    let (mut server, hello) = TestPeer::hello(&format!("{}/server", a.url)).await;
    let code = server.id.clone();
    let (mut local, local_hello) = TestPeer::hello(&format!("{}/client/{code}", a.url)).await;
    let (mut forwarded, forwarded_hello) =
        TestPeer::hello(&format!("{}/client/{code}", b.url)).await;
    for id in [&local.id, &forwarded.id] {
        server
            .expect_relay("PEER_JOINED", json!({ "id": id }))
            .await;
        let record = format!("intercessor:resume:{code}");
        eventually(PATIENCE, || async {
            (redis.command(&["HEXISTS", &record, id]) == "1").then_some(())
        })
        .await;
    }

    drop(server);
    local.expect_relay("PEER_AWAY", json!({ "id": code })).await;
    let token = resume_token(&hello);
    let url = format!("{}/server?resume={token}&code={code}", b.url);
    let (mut server, hello) = TestPeer::hello(&url).await;

    assert_eq!(
        (hello["id"].as_str(), hello["resumed"].as_bool()),
        (Some(code.as_str()), Some(true))
    );
    let mut away =
        [server.recv().await, server.recv().await].map(|frame| frame["message"]["id"].clone());
    away.sort_by_key(|id| id.to_string());
    let mut ids = [json!(local.id), json!(forwarded.id)];
    ids.sort_by_key(|id| id.to_string());
    assert_eq!(away, ids, "both members are away on b");
    // Each member's connection is closed to resume where the room is now.
    local.expect_close(1013).await;
    forwarded.expect_close(1013).await;
    let mut resumed = Vec::new();
    for (peer, hello, at) in [
        (&local, &local_hello, &a),
        (&forwarded, &forwarded_hello, &b),
    ] {
        let token = resume_token(hello);
        let url = format!("{}/client/{code}?resume={token}&received=0", at.url);
        let (mut back, hello) = TestPeer::hello(&url).await;
        assert_eq!(hello["resumed"], true, "{hello}");
        server
            .expect_relay("PEER_BACK", json!({ "id": peer.id }))
            .await;
        exchange(&mut server, &mut back, 0).await;
        // Kept open: a dropped one would be away again.
        resumed.push(back);
    }
}
