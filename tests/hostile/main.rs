//! Hostile peers and strangers: none of them can crash the relay, starve the peers around it, or
//! grow its memory without bound.
//!
//! Every test keeps ordinary server/client pairs talking before, during and after its attack
//! ([`Bystanders`]), asserting that each of their messages arrives in order, and ends on the close
//! code or HTTP answer the README documents. WebSocket frames a library would refuse to send are
//! written byte by byte over plain TCP, and the relay's answer is parsed from the raw bytes.

#[path = "../common/mod.rs"]
mod common;

use common::*;
use futures_util::SinkExt;
use intercessor::Config;
use intercessor::config::TlsSource;
use intercessor::edge::CLOSE_GRACE;
use rustls::pki_types::ServerName;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// These tests load a 2-core machine on purpose and two of them measure time or memory, so they
/// run one at a time rather than on top of each other.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Panics anywhere in this process. tokio catches a panic in the in-process relay's tasks, and
/// the connection would then look merely dropped, so each test also checks this count.
static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Held for a whole test: no other test runs meanwhile, so any panic counted is this test's.
struct Alone {
    _turn: tokio::sync::MutexGuard<'static, ()>,
    panics_before: usize,
}

impl Alone {
    async fn begin() -> Alone {
        static HOOK: Once = Once::new();
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                PANICS.fetch_add(1, Ordering::SeqCst);
                previous(info);
            }));
        });
        let turn = ONE_AT_A_TIME.lock().await;
        Alone {
            _turn: turn,
            panics_before: PANICS.load(Ordering::SeqCst),
        }
    }

    /// Asserts that nothing panicked during the test: no relay task and no helper task.
    fn no_task_panicked(&self) {
        let panics = PANICS.load(Ordering::SeqCst) - self.panics_before;
        assert_eq!(panics, 0, "{panics} task(s) panicked; see the output above");
    }
}

/// Declares a frame far over the limit and then really streams its payload, as fast as the relay
/// takes it, while reading: the relay must close with 1009 without taking it all.
async fn streaming_oversized_frame(addr: SocketAddr, declared: u64) -> (Ending, u64) {
    let (stream, pending) = raw_websocket(addr, "/server").await;
    let (mut reader, mut writer) = stream.into_split();
    let writing = tokio::spawn(async move {
        let mut sent = 0u64;
        if writer
            .write_all(&frame_header(0x81, declared, true))
            .await
            .is_err()
        {
            return sent;
        }
        let chunk = masked(&[b'x'; 4096]);
        while sent < declared {
            if writer.write_all(&chunk).await.is_err() {
                break;
            }
            sent += chunk.len() as u64;
        }
        sent
    });
    let ending = read_close(&mut reader, pending).await;
    let sent = timeout(PATIENCE, writing)
        .await
        .expect("the writer stops once the relay drops")
        .expect("no panic");
    (ending, sent)
}

/// Every WebSocket-level attack, by name, with the close code the README documents for it, for
/// a relay whose `--max-message-bytes` is `max_message_bytes`.
fn websocket_attacks(max_message_bytes: u64) -> Vec<(&'static str, Vec<u8>, u16)> {
    let over = max_message_bytes + 1;
    let mut header_only = frame_header(0x81, 1 << 30, true);
    header_only.extend(masked(b"{\"to\""));
    let mut just_over = frame_header(0x81, over, true);
    just_over.extend(masked(b"{\"to\""));
    let mut max_length = frame_header(0x82, u64::MAX, true);
    max_length.extend(masked(b"xx"));
    let half = (max_message_bytes / 2 + 10) as usize;
    let mut fragmented = client_frame(0x01, &vec![b'a'; half]);
    fragmented.extend(client_frame(0x00, &vec![b'a'; half]));
    fragmented.extend(client_frame(0x80, b"a"));
    let mut many_fragments = client_frame(0x01, &[b'a'; 100]);
    for _ in 0..max_message_bytes / 100 + 5 {
        many_fragments.extend(client_frame(0x00, &[b'a'; 100]));
    }
    let mut split_utf8 = client_frame(0x01, b"{\"to\":\"\xc3");
    split_utf8.extend(client_frame(0x80, b"\x28\"}"));
    let mut unmasked = frame_header(0x81, 5, false);
    unmasked.extend_from_slice(b"hello");
    let mut interleaved = client_frame(0x01, b"{\"to\":");
    interleaved.extend(client_frame(0x81, b"{}"));
    vec![
        (
            "invalid UTF-8 in a text frame",
            client_frame(0x81, b"{\"to\":\"\xff\xfe\",\"type\":\"X\"}"),
            1007,
        ),
        ("invalid UTF-8 across two fragments", split_utf8, 1007),
        ("a header declaring 1 GiB, then 5 bytes", header_only, 1009),
        ("a header declaring one byte too many", just_over, 1009),
        ("a header declaring 2^64-1 bytes", max_length, 1009),
        ("two fragments over the limit together", fragmented, 1009),
        ("many small fragments over the limit", many_fragments, 1009),
        (
            "a ping with a 126-byte payload",
            client_frame(0x89, &[7; 126]),
            1002,
        ),
        ("a fragmented ping", client_frame(0x09, b"x"), 1002),
        ("an unmasked text frame", unmasked, 1002),
        ("reserved data opcode 0x3", client_frame(0x83, b"{}"), 1002),
        (
            "reserved control opcode 0xB",
            client_frame(0x8b, b"x"),
            1002,
        ),
        ("RSV1 set", client_frame(0xc1, b"{}"), 1002),
        ("RSV2 and RSV3 set", client_frame(0xb1, b"{}"), 1002),
        (
            "a continuation with nothing to continue",
            client_frame(0x80, b"x"),
            1002,
        ),
        ("a new message inside a fragmented one", interleaved, 1002),
    ]
}

// ---------------------------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_slow_loris_connections_are_dropped_at_the_deadline_while_pairs_talk_on() {
    let turn = Alone::begin().await;
    let relay = TestRelay::start(Config {
        handshake_timeout: HANDSHAKE_TIMEOUT,
        ..config()
    })
    .await;
    let mut bystanders = Bystanders::start(&Endpoint::Plain(relay.addr), 4).await;
    bystanders.keep_talking("before the attack").await;

    let attack = tokio::spawn(slow_loris_attack(relay.addr, 500));
    let lorises = bystanders.alongside(attack).await;
    bystanders.keep_talking("after the attack").await;

    assert_eq!(lorises.len(), 500);
    for (lived, answer) in &lorises {
        assert!(
            *lived >= HANDSHAKE_TIMEOUT - Duration::from_millis(50),
            "dropped before the deadline: {lived:?}"
        );
        assert!(
            *lived < HANDSHAKE_TIMEOUT + SLACK,
            "held past the deadline: {lived:?}"
        );
        // hyper answers nothing to a head that times out: the connection is just dropped.
        assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(answer));
    }
    let longest = lorises.iter().map(|(lived, _)| *lived).max();
    let (rounds, worst) = bystanders.finish().await;
    eprintln!(
        "slow loris: longest lived {longest:?}; bystanders: {rounds} rounds, worst {worst:?}"
    );
    // A newcomer is served as usual.
    let (mut server, mut client) = Endpoint::Plain(relay.addr).pair().await;
    exchange(&mut server, &mut client, 0).await;
    turn.no_task_panicked();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_instead_of_http_gets_400_or_431_and_is_dropped_while_pairs_talk_on() {
    let turn = Alone::begin().await;
    let relay = TestRelay::start(Config {
        handshake_timeout: HANDSHAKE_TIMEOUT,
        ..config()
    })
    .await;
    let mut bystanders = Bystanders::start(&Endpoint::Plain(relay.addr), 4).await;
    bystanders.keep_talking("before the attack").await;

    let addr = relay.addr;
    let attack = tokio::spawn(async move {
        let mut strangers = JoinSet::new();
        for garbage in garbage() {
            strangers.spawn(async move {
                let (answer, lived) = send_garbage(addr, garbage.bytes.clone()).await;
                (garbage, answer, lived)
            });
        }
        surface_all(strangers).await
    });
    let answers = bystanders.alongside(attack).await;
    bystanders.keep_talking("after the attack").await;

    for (garbage, answer, lived) in &answers {
        let first_line = String::from_utf8_lossy(answer)
            .lines()
            .next()
            .unwrap_or("(nothing)")
            .to_owned();
        eprintln!("{}: {first_line} after {lived:?}", garbage.what);
        assert_garbage_answer(garbage, answer);
        // Garbage is refused as soon as it is read, not at the handshake deadline.
        assert!(
            *lived < HANDSHAKE_TIMEOUT,
            "{}: held for {lived:?}",
            garbage.what
        );
    }
    // The over-long head, sent once more on its own: hyper's exact answer.
    let head = garbage()
        .into_iter()
        .find(|g| g.what == "16 KiB of headers")
        .expect("case");
    let (answer, _) = send_garbage(relay.addr, head.bytes).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{answer:?}"
    );
    let (rounds, worst) = bystanders.finish().await;
    eprintln!("bystanders: {rounds} rounds, worst {worst:?}");
    turn.no_task_panicked();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_that_stalls_mid_handshake_is_dropped_at_the_deadline_while_wss_pairs_talk_on()
{
    let turn = Alone::begin().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (paths, _) = intercessor::edge::devcert::ensure(dir.path(), &[]).expect("certificates");
    let relay = TestRelay::start(Config {
        handshake_timeout: HANDSHAKE_TIMEOUT,
        tls: Some(TlsSource::Files {
            cert: paths.cert.clone(),
            key: paths.key.clone(),
        }),
        ..config()
    })
    .await;
    let trust = trusting(&paths.ca_cert);
    let mut bystanders = Bystanders::start(&Endpoint::Tls(relay.addr, trust.clone()), 4).await;
    bystanders.keep_talking("before the attack").await;

    let addr = relay.addr;
    let attack = tokio::spawn(async move {
        let mut stallers = JoinSet::new();
        for round in 0..10 {
            for stage in Stall::ALL {
                let trust = trust.clone();
                stallers.spawn(async move {
                    let (answer, lived) = stall_tls(addr, stage, trust, round).await;
                    (stage, answer, lived)
                });
            }
        }
        surface_all(stallers).await
    });
    let stalled = bystanders.alongside(attack).await;
    bystanders.keep_talking("after the attack").await;

    for (stage, answer, lived) in &stalled {
        assert!(
            *lived >= HANDSHAKE_TIMEOUT - Duration::from_millis(50),
            "{stage:?}: dropped before the deadline, after {lived:?}"
        );
        assert!(
            *lived < HANDSHAKE_TIMEOUT + SLACK,
            "{stage:?}: held past the deadline: {lived:?}"
        );
        match stage {
            // The relay answered the ClientHello with its own flight, then waited for ours.
            Stall::AfterServerFlight => assert_eq!(answer.first(), Some(&0x16), "{answer:x?}"),
            // No alert, no HTTP: the socket is just closed.
            _ => assert!(answer.is_empty(), "{stage:?}: {answer:x?}"),
        }
    }
    let (rounds, worst) = bystanders.finish().await;
    eprintln!("bystanders over wss: {rounds} rounds, worst {worst:?}");
    turn.no_task_panicked();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_protocol_violations_get_their_documented_close_and_lose_the_connection() {
    let turn = Alone::begin().await;
    const LIMIT: usize = 1024;
    let relay = TestRelay::start(Config {
        max_message_bytes: LIMIT,
        ..config()
    })
    .await;
    let mut bystanders = Bystanders::start(&Endpoint::Plain(relay.addr), 4).await;
    bystanders.keep_talking("before the attacks").await;

    let addr = relay.addr;
    let attack = tokio::spawn(async move {
        let mut attackers = JoinSet::new();
        for (what, bytes, code) in websocket_attacks(LIMIT as u64) {
            attackers.spawn(async move { (what, code, attack_websocket(addr, &bytes).await) });
        }
        let streamed = tokio::spawn(streaming_oversized_frame(addr, 64 << 20));
        (surface_all(attackers).await, surface(streamed.await))
    });
    let (endings, (streamed, streamed_bytes)) = bystanders.alongside(attack).await;
    bystanders.keep_talking("after the attacks").await;

    for (what, code, ending) in &endings {
        eprintln!("{what}: {ending:?}");
        assert_eq!(ending.code, *code, "{what}: {ending:?}");
        assert!(!ending.reason.is_empty(), "{what}: {ending:?}");
        assert_eq!(ending.before, [0x81], "{what}: HELLO, then the close");
        assert!(
            ending.close_to_drop < CLOSE_GRACE + SLACK,
            "{what}: the TCP connection outlived the close by {:?}",
            ending.close_to_drop
        );
    }
    eprintln!("streamed 64 MiB frame: {streamed:?}, {streamed_bytes} bytes written");
    assert_eq!(streamed.code, 1009, "{streamed:?}");
    assert!(
        streamed_bytes < 64 << 20,
        "the relay took the whole oversized frame"
    );
    assert!(streamed.close_to_drop < CLOSE_GRACE + SLACK, "{streamed:?}");
    let (rounds, worst) = bystanders.finish().await;
    eprintln!("bystanders: {rounds} rounds, worst {worst:?}");
    turn.no_task_panicked();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_answers_pings_is_closed_4408_and_dropped_within_a_second() {
    let turn = Alone::begin().await;
    let idle_timeout = Duration::from_millis(500);
    let relay = TestRelay::start(Config {
        ping_interval: Duration::from_millis(100),
        idle_timeout,
        ..config()
    })
    .await;
    // Bystanders read (and so answer pings) and send every 100 ms or so: they are never idle.
    let mut bystanders = Bystanders::start(&Endpoint::Plain(relay.addr), 4).await;
    bystanders.keep_talking("before the silent peers").await;

    let addr = relay.addr;
    let attack = tokio::spawn(async move {
        let mut silent = JoinSet::new();
        for _ in 0..20 {
            silent.spawn(async move {
                // Before the upgrade: the relay's idle clock starts at it.
                let opened = Instant::now();
                let (mut stream, pending) = raw_websocket(addr, "/server").await;
                let ending = read_close(&mut stream, pending).await;
                (opened.elapsed(), ending)
            });
        }
        surface_all(silent).await
    });
    let endings = bystanders.alongside(attack).await;
    bystanders.keep_talking("after the silent peers").await;

    for (lived, ending) in &endings {
        assert_eq!(
            (ending.code, ending.reason.as_str()),
            (4408, "idle timeout")
        );
        assert_eq!(ending.before.first(), Some(&0x81), "HELLO first");
        assert!(
            ending.before[1..].iter().all(|&first| first == 0x89),
            "only pings between HELLO and the close: {:x?}",
            ending.before
        );
        assert!(ending.before.len() >= 4, "pinged every 100 ms: {ending:?}");
        assert!(*lived >= idle_timeout, "closed before the idle timeout");
        // README: "the TCP connection is dropped within a second of the close frame even if the
        // peer never answers"; the slack is for a loaded machine.
        assert!(
            ending.close_to_drop < CLOSE_GRACE + Duration::from_millis(500),
            "dropped {:?} after the close",
            ending.close_to_drop
        );
    }
    let slowest = endings.iter().map(|(_, e)| e.close_to_drop).max();
    let (rounds, worst) = bystanders.finish().await;
    eprintln!(
        "4408: slowest drop after close {slowest:?}; bystanders {rounds} rounds, worst {worst:?}"
    );
    turn.no_task_panicked();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relays_memory_stays_bounded_under_every_attack_at_once() {
    let turn = Alone::begin().await;
    // All the traffic here comes from 127.0.0.1; the per-address bound (256 sessions) would cap
    // the attack itself, and the point is to measure the relay carrying its full weight.
    let mut relay = RelayProcess::start(
        &["--handshake-timeout", "1s", "--max-connections-per-ip", "0"],
        &[],
    );
    let pid = relay.child.id();
    let addr = relay.addr;
    let mut bystanders = Bystanders::start(&Endpoint::Plain(addr), 4).await;
    bystanders.keep_talking("before the attack").await;

    // Warm up every path (allocator arenas, hyper and tungstenite buffers, the hub's maps) with a
    // tenth of the attack, so what follows measures growth rather than first use.
    let warm_up = tokio::spawn(every_attack_at_once(addr, 10));
    bystanders.alongside(warm_up).await;
    let before = settled_rss(pid).await;

    let started = Instant::now();
    let attack = tokio::spawn(every_attack_at_once(addr, 1));
    bystanders.alongside(attack).await;
    let took = started.elapsed();
    let after = settled_rss(pid).await;
    let peak = vm_kib(pid, "VmHWM:");
    bystanders.keep_talking("after the attack").await;
    let (rounds, worst) = bystanders.finish().await;
    eprintln!(
        "relay RSS: {before} KiB warmed up, {after} KiB after the attack (+{} KiB), peak {peak} \
         KiB; the attack took {took:?}; bystanders {rounds} rounds, worst {worst:?}",
        after.saturating_sub(before)
    );

    // Measured on a 2-core machine, debug build: 17–19 MiB warmed up, +6 to +8 MiB after 500
    // slow-loris connections, 200 oversized frames, 200 garbage connections and 2,000 pairs at
    // once, peak about 27 MiB. Repeating the slow-loris round alone 16 times levels off at
    // about 27 MiB: what stays is allocator fragmentation, not a leak. 32 MiB is 4× what was
    // measured; a leak of 10 KiB per connection (about 5,000 here) would still exceed it.
    const BOUND_KIB: u64 = 32 * 1024;
    assert!(
        after.saturating_sub(before) < BOUND_KIB,
        "RSS grew from {before} KiB to {after} KiB under attack"
    );
    // And the relay serves a newcomer as usual.
    let (mut server, mut client) = Endpoint::Plain(addr).pair().await;
    exchange(&mut server, &mut client, 0).await;
    leave(server, client).await;
    let exited = relay.child.try_wait().expect("the relay's status");
    assert!(exited.is_none(), "the relay exited: {exited:?}");
    turn.no_task_panicked();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooder_does_not_starve_quiet_pairs() {
    let turn = Alone::begin().await;
    // The real binary, so the relay's scheduling is measured rather than this test's: in process,
    // the relay's tasks would queue behind the flooder's client tasks on the same two workers.
    let mut relay = RelayProcess::start(&["--rate-limit", "0"], &[]);
    let endpoint = Endpoint::Plain(relay.addr);
    let span = Duration::from_secs(2);
    let quiet = quiet_pairs(&endpoint, 50).await;
    // A short first run warms up every path, then the two measured runs.
    let (quiet, _) = round_trips(quiet, Duration::from_millis(200)).await;
    let (quiet, alone) = round_trips(quiet, span).await;

    let stop = CancellationToken::new();
    let flooder = flood_on_its_own_thread(endpoint.clone(), stop.clone());
    sleep(Duration::from_millis(300)).await;
    let (quiet, flooded) = round_trips(quiet, span).await;
    stop.cancel();
    let flooder = tokio::task::spawn_blocking(move || flooder.join());
    let (sent, received) = timeout(PATIENCE * 2, flooder)
        .await
        .expect("the flood drains in time")
        .expect("joined")
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));

    let (p99_alone, p99_flooded) = (percentile(&alone, 99), percentile(&flooded, 99));
    let ratio = p99_flooded.as_secs_f64() / p99_alone.as_secs_f64();
    eprintln!(
        "quiet round trips alone: p50 {:?}, p99 {p99_alone:?} ({} trips); with the flooder: p50 \
         {:?}, p99 {p99_flooded:?} ({} trips); p99 ratio {ratio:.1}×; the flooder sent {sent} \
         messages, {received} received in order",
        percentile(&alone, 50),
        alone.len(),
        percentile(&flooded, 50),
        flooded.len()
    );
    assert_eq!(sent, received);
    assert!(sent > 1000, "the flooder hardly flooded: {sent} messages");
    // The issue asks for 5× in the benchmark (release build, quiet machine). Here a debug relay,
    // 101 clients and the flooder share two cores, and a p99 of ~10 ms moves by whole scheduler
    // slices: measured 4–6× on an idle 2-core machine. So the bound is the looser of 20× and
    // 5× + 50 ms, which CI noise cannot reach, while a relay that served the flood ahead of the
    // quiet pairs would put their round trips at seconds and fail it every time.
    let bound = (p99_alone * 20).max(p99_alone * 5 + Duration::from_millis(50));
    assert!(
        p99_flooded < bound,
        "quiet pairs starved: p99 {p99_alone:?} alone, {p99_flooded:?} with a flooder"
    );
    for pair in quiet {
        drop(pair.client);
        surface(timeout(PATIENCE, pair.echo).await.expect("the echo ends"));
    }
    let exited = relay.child.try_wait().expect("the relay's status");
    assert!(exited.is_none(), "the relay exited: {exited:?}");
    turn.no_task_panicked();
}

// ---------------------------------------------------------------------------------------------
// Holes found by an independent hostile battery (issue 15), each with the attack that found it.
// ---------------------------------------------------------------------------------------------

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

#[tokio::test]
async fn a_peer_cut_off_mid_message_reads_its_1009_and_a_clean_end_not_a_reset() {
    let turn = Alone::begin().await;
    let relay = TestRelay::start(Config {
        max_message_bytes: 4096,
        ..config()
    })
    .await;
    let (stream, pending) = raw_websocket(relay.addr, "/server").await;
    let (mut reader, mut writer) = stream.into_split();
    // A 10 KB message in 1 KB fragments, in one write: most of it is still unread when the
    // relay refuses the message.
    let mut message = Vec::new();
    for n in 0..10u8 {
        let first = match n {
            0 => 0x01,
            9 => 0x80,
            _ => 0x00,
        };
        message.extend(client_frame(first, &[b'a'; 1024]));
    }
    writer.write_all(&message).await.expect("write the message");
    let mut buffer = pending;
    let mut chunk = [0u8; 4096];
    let close = timeout(PATIENCE, async {
        loop {
            if let Some((frame, used)) = parse_server_frame(&buffer) {
                buffer.drain(..used);
                if frame.first == 0x88 {
                    return frame.payload;
                }
                continue;
            }
            let n = reader
                .read(&mut chunk)
                .await
                .expect("read before the close");
            assert!(n > 0, "ended before the close frame");
            buffer.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("the close arrives");
    assert_eq!(u16::from_be_bytes([close[0], close[1]]), 1009);
    assert_eq!(&close[2..], b"message too big");
    // The relay half-closes and reads on: its end arrives as EOF, not as a reset.
    let end = timeout(PATIENCE, reader.read(&mut chunk))
        .await
        .expect("the end arrives");
    assert!(
        matches!(end, Ok(0)),
        "expected EOF after the close, got {end:?}"
    );
    drop(writer);
    turn.no_task_panicked();
}

/// `TestRelay::stop` within this bounds a drain that had nothing to wait for: the peers' close
/// handshakes take a round trip, the relay's grace for a silent peer is a second.
const PROMPT_DRAIN: Duration = Duration::from_secs(3);

#[tokio::test]
async fn a_half_sent_request_head_does_not_hold_shutdown() {
    let turn = Alone::begin().await;
    let relay = TestRelay::start(Config {
        shutdown_timeout: Duration::from_secs(8),
        handshake_timeout: Duration::from_secs(30),
        ..config()
    })
    .await;
    let mut server = TestPeer::server(&relay).await;
    let mut half = TcpStream::connect(relay.addr).await.expect("connect");
    half.write_all(b"GET /server HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let stopping = tokio::spawn(relay.stop());
    server.expect_close(1001).await;
    timeout(PATIENCE, stopping)
        .await
        .expect("stops")
        .expect("no panic");
    assert!(
        started.elapsed() < PROMPT_DRAIN,
        "shutdown took {:?}",
        started.elapsed()
    );
    let mut rest = Vec::new();
    let _ = timeout(PATIENCE, half.read_to_end(&mut rest))
        .await
        .expect("dropped");
    turn.no_task_panicked();
}

#[tokio::test]
async fn a_half_sent_request_head_inside_tls_does_not_hold_shutdown() {
    let turn = Alone::begin().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (paths, _) = intercessor::edge::devcert::ensure(dir.path(), &[]).expect("certificates");
    let relay = TestRelay::start(Config {
        shutdown_timeout: Duration::from_secs(8),
        handshake_timeout: Duration::from_secs(30),
        tls: Some(TlsSource::Files {
            cert: paths.cert.clone(),
            key: paths.key.clone(),
        }),
        ..config()
    })
    .await;
    let connector = tokio_rustls::TlsConnector::from(trusting(&paths.ca_cert));
    let tcp = TcpStream::connect(relay.addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let mut half = connector.connect(name, tcp).await.expect("TLS handshake");
    half.write_all(b"GET /server HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    half.flush().await.expect("flush");
    sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    timeout(PATIENCE * 2, relay.stop()).await.expect("stops");
    assert!(
        started.elapsed() < PROMPT_DRAIN,
        "shutdown took {:?}",
        started.elapsed()
    );
    turn.no_task_panicked();
}

/// A handshake written by hand: `headers` after the request line, then a blank line.
fn handshake_with(headers: &str) -> String {
    format!(
        "GET /server HTTP/1.1\r\n{headers}Upgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

#[tokio::test]
async fn broken_handshakes_and_smuggled_bodies_get_400_and_lose_the_connection() {
    let relay = TestRelay::start(config()).await;
    let cases = [
        ("no Host", handshake_with("")),
        ("two Hosts", handshake_with("Host: a\r\nHost: b\r\n")),
        (
            "two keys",
            handshake_with("Host: a\r\nSec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==\r\n"),
        ),
        (
            "chunked and a length",
            handshake_with("Host: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n")
                + "0\r\n\r\n",
        ),
        (
            "a length",
            handshake_with("Host: a\r\nContent-Length: 0\r\n"),
        ),
    ];
    for (what, request) in cases {
        // raw_http reads to the end: the relay must close the connection after its answer.
        let response = common::raw_http(relay.addr, &request).await;
        assert_eq!(status_of(&response), 400, "{what}: {response}");
        assert!(!response.contains("\"HELLO\""), "{what}: {response}");
    }
}

/// Sends `GET /healthz` on a kept-alive connection and reads the one answer.
async fn keep_alive_health(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let mut chunk = [0u8; 512];
    while !answer.ends_with(b"\r\n\r\nok") {
        let n = stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "closed before answering: {answer:?}");
        answer.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn idle_keep_alive_connections_are_bounded_in_number_and_time() {
    let turn = Alone::begin().await;
    const CAP: usize = 50;
    let idle_for = Duration::from_secs(1);
    let relay = TestRelay::start(Config {
        max_pending_connections: CAP,
        handshake_timeout: idle_for,
        ..config()
    })
    .await;
    let addr = relay.addr;
    let mut holders = JoinSet::new();
    for _ in 0..2 * CAP {
        holders.spawn(async move {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            let asked = Instant::now();
            let answer = timeout(PATIENCE, keep_alive_health(&mut stream))
                .await
                .expect("answered");
            assert_eq!(status_of(&answer), 200, "{answer}");
            let waited = asked.elapsed();
            let idle = Instant::now();
            let mut rest = Vec::new();
            timeout(PATIENCE, stream.read_to_end(&mut rest))
                .await
                .expect("the relay closes an idle keep-alive connection")
                .expect("a clean close");
            (waited, idle.elapsed())
        });
    }
    let results = surface_all(holders).await;
    let waited_for_room = results
        .iter()
        .filter(|(waited, _)| *waited >= idle_for / 2)
        .count();
    assert!(
        waited_for_room >= CAP,
        "only {CAP} connections are served at once; {waited_for_room} of {} waited",
        2 * CAP
    );
    for (_, idle) in &results {
        assert!(*idle < idle_for + SLACK, "kept idle for {idle:?}");
    }
    let (mut server, mut client) = Endpoint::Plain(relay.addr).pair().await;
    exchange(&mut server, &mut client, 0).await;
    turn.no_task_panicked();
}
