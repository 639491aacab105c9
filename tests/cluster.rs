//! Several relay processes sharing one set of join codes through a real `redis-server`, with
//! clients sent to their room's instance by a Fly-like replaying proxy; and each fault of Redis
//! or of an instance ending in a documented answer, never a hang.

mod common;

use common::cluster::{self, eventually, expect_refused, register, when_available};
use common::fly_proxy::FlyProxy;
use common::redis::{RedisServer, free_port};
use common::{
    PATIENCE, RelayProcess, TestPeer, TestRelay, exchange, raw_http, relay_command, resume_token,
};
use futures_util::future::join_all;
use intercessor::config::ClusterConfig;
use intercessor::options::ClusterRouting;
use serde_json::json;
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// A relay process named `id` in the cluster on `redis`, routing by fly-replay.
fn instance(redis: &str, id: &str, extra: &[&str]) -> RelayProcess {
    cluster::instance(redis, id, "fly-replay", extra)
}

/// Two instances, `a` and `b`, on one Redis, behind a proxy that sends connections to `b` first.
async fn cluster(redis: &RedisServer) -> (RelayProcess, RelayProcess, FlyProxy) {
    let a = instance(&redis.url(), "a", &[]);
    let b = instance(&redis.url(), "b", &[]);
    let proxy = FlyProxy::start(&[("a", a.addr), ("b", b.addr)], "b").await;
    (a, b, proxy)
}

#[tokio::test]
async fn codes_stay_unique_across_instances_where_unshared_ones_would_collide() {
    // 2 × 3,000 servers on 4-character codes (about a million): unshared, about eight codes would
    // be handed out twice (3,000² / 32⁴), and none at all only once in 5,000 runs.
    let redis = RedisServer::start();
    let open = ["--code-length", "4", "--max-connections-per-ip", "0"];
    let a = instance(&redis.url(), "a", &open);
    let b = instance(&redis.url(), "b", &open);

    let urls = [format!("{}/server", a.url), format!("{}/server", b.url)];
    let mut servers = Vec::new();
    for _ in 0..60 {
        let batch = (0..100).map(|i| TestPeer::join(&urls[i % 2]));
        servers.extend(join_all(batch).await);
    }

    let codes: HashSet<&str> = servers.iter().map(|server| server.id.as_str()).collect();
    assert_eq!(
        codes.len(),
        servers.len(),
        "a join code was handed out twice"
    );
}

#[tokio::test]
async fn a_client_on_the_wrong_instance_is_replayed_to_its_room_and_relays_both_ways() {
    let redis = RedisServer::start();
    let (a, _b, proxy) = cluster(&redis).await;
    let mut server = TestPeer::join(&format!("{}/server", a.url)).await;

    let mut client =
        TestPeer::join(&proxy.url(&format!("/client/{}", server.id.to_lowercase()))).await;

    assert_eq!(proxy.replays(), 1);
    server
        .expect_relay("PEER_JOINED", json!({"id": client.id}))
        .await;
    exchange(&mut server, &mut client, 0).await;
    let code = server.id.clone();
    drop(server);
    client.expect_relay("PEER_GONE", json!({"id": code})).await;
    client.expect_close(4410).await;
}

#[tokio::test]
async fn a_replay_that_cannot_reach_the_owner_comes_back_and_is_told_to_try_again() {
    // The proxy knows no address for `a`, as when a's machine is unreachable.
    let redis = RedisServer::start();
    let a = instance(&redis.url(), "a", &[]);
    let b = instance(&redis.url(), "b", &[]);
    let proxy = FlyProxy::start(&[("b", b.addr)], "b").await;
    let server = TestPeer::join(&format!("{}/server", a.url)).await;

    let error = expect_refused(
        &proxy.url(&format!("/client/{}", server.id)),
        "SERVER_UNAVAILABLE",
        1013,
    )
    .await;

    assert_eq!(proxy.failed_replays(), 1);
    assert_eq!(error["retryAfterMs"], 1000, "{error}");
}

#[tokio::test]
async fn a_code_no_instance_owns_is_unknown_everywhere() {
    let redis = RedisServer::start();
    let (_a, _b, proxy) = cluster(&redis).await;

    expect_refused(&proxy.url("/client/ZZZZZZ"), "UNKNOWN_SERVER", 4404).await;

    assert_eq!(proxy.replays(), 0);
}

#[tokio::test]
async fn a_killed_owners_codes_die_within_its_lease() {
    let redis = RedisServer::start();
    let (mut a, _b, proxy) = cluster(&redis).await;
    let server = TestPeer::join(&format!("{}/server", a.url)).await;
    let url = proxy.url(&format!("/client/{}", server.id));

    a.child.kill().expect("SIGKILL");
    let killed = Instant::now();

    // Until the lease lapses the replay to `a` fails and comes back (1013); then 4404.
    let code = eventually(PATIENCE, || async {
        let error = TestPeer::unread(&url).await.recv().await;
        match error["message"]["code"].as_str() {
            Some("UNKNOWN_SERVER") => Some(4404),
            Some("SERVER_UNAVAILABLE") => None,
            other => panic!("unexpected answer {other:?}"),
        }
    })
    .await;
    assert_eq!(code, 4404);
    assert!(killed.elapsed() < Duration::from_secs(2) + PATIENCE);
}

#[tokio::test]
async fn a_draining_instance_releases_its_codes_at_once() {
    let redis = RedisServer::start();
    let (a, b, _proxy) = cluster(&redis).await;
    let mut server = TestPeer::join(&format!("{}/server", a.url)).await;
    let key = format!("intercessor:code:{}", server.id);
    assert_eq!(redis.command(&["EXISTS", &key]), "1");

    a.signal("TERM");
    server.expect_close(1001).await;

    assert_eq!(redis.command(&["EXISTS", &key]), "0");
    assert_eq!(redis.command(&["EXISTS", "intercessor:instance:a"]), "0");
    expect_refused(
        &format!("{}/client/{}", b.url, server.id),
        "UNKNOWN_SERVER",
        4404,
    )
    .await;
}

#[tokio::test]
async fn without_redis_at_start_the_relay_serves_and_registers_once_redis_answers() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let relay = instance(&url, "a", &[]);
    let register_url = format!("{}/server", relay.url);

    let refused = register(&register_url).await.err();
    assert_eq!(refused.as_deref(), Some("SERVER_UNAVAILABLE"));

    let _redis = RedisServer::start_on(port);
    let server = eventually(PATIENCE, || async { register(&register_url).await.ok() }).await;
    assert!(!server.id.is_empty());
}

#[tokio::test]
async fn a_stalled_redis_refuses_registrations_quickly_while_local_rooms_relay_on() {
    let redis = RedisServer::start();
    let a = instance(&redis.url(), "a", &[]);
    let mut server = TestPeer::join(&format!("{}/server", a.url)).await;
    let mut client = TestPeer::join(&format!("{}/client/{}", a.url, server.id)).await;
    server
        .expect_relay("PEER_JOINED", json!({"id": client.id}))
        .await;

    redis.pause();
    let asked = Instant::now();
    let refused = register(&format!("{}/server", a.url)).await.err();
    let waited = asked.elapsed();
    client
        .send_to(&server.id, "OFFER", json!("during the stall"))
        .await;
    let relayed = server.recv().await;
    redis.resume();

    assert_eq!(refused.as_deref(), Some("SERVER_UNAVAILABLE"));
    assert!(waited < PATIENCE, "the refusal took {waited:?}");
    assert_eq!(relayed["message"], "during the stall");
    eventually(PATIENCE, || async {
        register(&format!("{}/server", a.url)).await.ok()
    })
    .await;
}

#[tokio::test]
async fn after_redis_restarts_empty_the_owner_claims_its_live_codes_again() {
    let mut redis = RedisServer::start();
    let (a, _b, proxy) = cluster(&redis).await;
    let mut server = TestPeer::join(&format!("{}/server", a.url)).await;

    redis.restart();

    let url = proxy.url(&format!("/client/{}", server.id));
    let client = eventually(PATIENCE, || async {
        let first = TestPeer::unread(&url).await.recv().await;
        let hello = first["type"] == "HELLO";
        hello.then(|| first["message"]["id"].as_str().map(str::to_owned))?
    })
    .await;
    server
        .expect_relay("PEER_JOINED", json!({"id": client}))
        .await;
}

#[test]
fn two_live_processes_cannot_share_an_instance_id() {
    let redis = RedisServer::start();
    let _first = instance(&redis.url(), "a", &["--cluster-lease-ttl", "1s"]);

    let output = relay_command(
        &[
            "--cluster-redis-url",
            &redis.url(),
            "--cluster-routing",
            "fly-replay",
            "--instance-id",
            "a",
            "--cluster-lease-ttl",
            "1s",
        ],
        &[],
    )
    .output()
    .expect("the binary runs");

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("another live relay holds this instance id"),
        "{stderr}"
    );
}

/// An in-process relay in the cluster on `redis`, serving metrics.
async fn in_process(redis: &RedisServer, id: &str) -> TestRelay {
    TestRelay::start(intercessor::Config {
        metrics_listen: Some("127.0.0.1:0".parse().expect("an address")),
        cluster: Some(ClusterConfig {
            redis_url: redis.url(),
            routing: ClusterRouting::FlyReplay,
            instance_id: Some(id.to_owned()),
            prefix: "test".to_owned(),
            lease_ttl: Duration::from_secs(2),
        }),
        ..common::config()
    })
    .await
}

#[tokio::test]
async fn a_server_that_leaves_gives_its_code_up() {
    let redis = RedisServer::start();
    let relay = in_process(&redis, "a").await;
    let server = TestPeer::server(&relay).await;
    let key = format!("test:code:{}", server.id);
    assert_eq!(redis.command(&["GET", &key]).split(' ').next(), Some("a"));

    drop(server);

    eventually(PATIENCE, || async {
        (redis.command(&["EXISTS", &key]) == "0").then_some(())
    })
    .await;
}

#[tokio::test]
async fn metrics_show_the_lease_and_each_directory_step() {
    let redis = RedisServer::start();
    let relay = in_process(&redis, "a").await;
    let _server = TestPeer::server(&relay).await;
    let _ = tokio_tungstenite::connect_async(relay.url("/client/ZZZZZZ")).await;

    let metrics = relay.metrics_addr.expect("metrics listener");
    let text = raw_http(
        metrics,
        "GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n",
    )
    .await;

    for series in [
        "intercessor_directory_up 1",
        "intercessor_directory_operations_total{outcome=\"claimed\"} 1",
        "intercessor_directory_operations_total{outcome=\"lookup_nowhere\"} 1",
    ] {
        assert!(
            text.lines().any(|line| line == series),
            "no {series:?} in {text}"
        );
    }
}

#[tokio::test]
async fn a_server_resuming_on_the_wrong_instance_is_replayed_to_its_room_with_its_code() {
    let redis = RedisServer::start();
    let resuming = ["--resume-window", "30s"];
    let a = instance(&redis.url(), "a", &resuming);
    let b = instance(&redis.url(), "b", &resuming);
    let proxy = FlyProxy::start(&[("a", a.addr), ("b", b.addr)], "a").await;
    let mut server = TestPeer::unread(&proxy.url("/server")).await;
    let hello = server.recv().await;
    let code = hello["message"]["id"].as_str().expect("a code").to_owned();
    let token = hello["message"]["resumeToken"]
        .as_str()
        .expect("a token")
        .to_owned();
    drop(server);

    proxy.route_to("b");
    let mut resumed =
        TestPeer::unread(&proxy.url(&format!("/server?resume={token}&code={code}"))).await;
    let hello = resumed.recv().await;

    assert_eq!(proxy.replays(), 1);
    assert_eq!(hello["message"]["id"], code.as_str(), "{hello}");
    assert_eq!(hello["message"]["resumed"], true, "{hello}");
}

/// Two instances that resume sessions for `window`, behind a proxy that sends every connection
/// to `a` until told otherwise; and a room on `a` with one client, whose token the room's record
/// holds.
async fn resuming_room(
    redis: &RedisServer,
    window: &str,
) -> (
    RelayProcess,
    RelayProcess,
    FlyProxy,
    (TestPeer, String),
    (TestPeer, String),
) {
    let resuming = ["--resume-window", window];
    let a = instance(&redis.url(), "a", &resuming);
    let b = instance(&redis.url(), "b", &resuming);
    let proxy = FlyProxy::start(&[("a", a.addr), ("b", b.addr)], "a").await;
    let (mut server, hello) = TestPeer::hello(&proxy.url("/server")).await;
    let server_token = resume_token(&hello);
    let (mut client, hello) = TestPeer::hello(&proxy.url(&format!("/client/{}", server.id))).await;
    let client_token = resume_token(&hello);
    server
        .expect_relay("PEER_JOINED", json!({"id": client.id}))
        .await;
    exchange(&mut server, &mut client, 0).await;
    let record = format!("intercessor:resume:{}", server.id);
    eventually(PATIENCE, || async {
        (redis.command(&["HEXISTS", &record, &client.id]) == "1").then_some(())
    })
    .await;
    (a, b, proxy, (server, server_token), (client, client_token))
}

#[tokio::test]
async fn after_its_owner_is_killed_a_server_takes_its_room_over_elsewhere_and_its_client_resumes_there()
 {
    let redis = RedisServer::start();
    let (mut a, _b, proxy, (server, server_token), (client, client_token)) =
        resuming_room(&redis, "20s").await;
    let (code, id) = (server.id.clone(), client.id.clone());

    a.child.kill().expect("SIGKILL");
    proxy.route_to("b");
    let server_url = proxy.url(&format!("/server?resume={server_token}&code={code}"));
    let (mut server, hello) = when_available(&server_url).await;

    assert_eq!(hello["id"], code.as_str(), "{hello}");
    assert_eq!(hello["resumed"], true, "{hello}");
    assert_eq!(
        hello["gap"], true,
        "what a held for the room is lost: {hello}"
    );
    server.expect_relay("PEER_AWAY", json!({ "id": id })).await;
    let client_url = proxy.url(&format!("/client/{code}?resume={client_token}&received=3"));
    let (mut client, hello) = when_available(&client_url).await;
    assert_eq!(hello["id"], id.as_str(), "{hello}");
    assert_eq!(hello["resumed"], true, "{hello}");
    server.expect_relay("PEER_BACK", json!({ "id": id })).await;
    exchange(&mut server, &mut client, 10).await;
    drop((client, server));
}

#[tokio::test]
async fn a_drained_owners_server_takes_its_room_over_at_once_and_a_client_that_never_returns_is_gone()
 {
    let redis = RedisServer::start();
    let (a, _b, proxy, (mut server, server_token), (mut client, _)) =
        resuming_room(&redis, "3s").await;
    let (code, id) = (server.id.clone(), client.id.clone());

    a.signal("TERM");
    server.expect_close(1001).await;
    client.expect_close(1001).await;
    proxy.route_to("b");
    let url = proxy.url(&format!("/server?resume={server_token}&code={code}"));
    let mut resumed = TestPeer::unread(&url).await;

    let hello = resumed.recv().await;
    assert_eq!(hello["type"], "HELLO", "no wait for a lease: {hello}");
    assert_eq!(hello["message"]["resumed"], true, "{hello}");
    resumed.expect_relay("PEER_AWAY", json!({ "id": id })).await;
    resumed.expect_relay("PEER_GONE", json!({ "id": id })).await;
}

#[tokio::test]
async fn an_orphaned_room_tells_newcomers_to_wait_and_only_its_servers_token_takes_it_over() {
    let redis = RedisServer::start();
    let (mut a, _b, proxy, (server, server_token), _client) = resuming_room(&redis, "20s").await;
    let code = server.id.clone();
    a.child.kill().expect("SIGKILL");
    proxy.route_to("b");

    // Once a's lease lapses the room is orphaned: a join waits for its server, not for a.
    let join = proxy.url(&format!("/client/{code}"));
    eventually(PATIENCE, || async {
        let error = TestPeer::unread(&join)
            .await
            .expect_error("SERVER_UNAVAILABLE")
            .await;
        let reason = error["reason"].as_str().unwrap_or_default().to_owned();
        reason.contains("has not come back").then_some(())
    })
    .await;
    let forged = proxy.url(&format!(
        "/server?resume=AAAAAAAAAAAAAAAAAAAAAA&code={code}"
    ));
    expect_refused(&forged, "RESUME_FAILED", 4404).await;

    let url = proxy.url(&format!("/server?resume={server_token}&code={code}"));
    let (_server, hello) = TestPeer::hello(&url).await;
    assert_eq!(hello["id"], code.as_str(), "{hello}");
    assert_eq!(hello["resumed"], true, "{hello}");
}

#[tokio::test]
async fn a_server_superseded_by_its_own_resume_keeps_its_code_and_record() {
    let redis = RedisServer::start();
    let a = instance(&redis.url(), "a", &["--resume-window", "20s"]);
    let (mut old, hello) = TestPeer::hello(&format!("{}/server", a.url)).await;
    let (code, token) = (old.id.clone(), resume_token(&hello));

    let url = format!("{}/server?resume={token}&code={code}", a.url);
    let (_server, _) = TestPeer::hello(&url).await;
    old.expect_error("SUPERSEDED").await;
    old.expect_close(4412).await;

    // A release would run in the background within milliseconds: watch for a second.
    let (key, record) = (
        format!("intercessor:code:{code}"),
        format!("intercessor:resume:{code}"),
    );
    for _ in 0..10 {
        assert_eq!(
            redis.command(&["EXISTS", &key, &record]),
            "2",
            "the room lives on"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
