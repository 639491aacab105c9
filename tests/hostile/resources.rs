//! The relay's resources under attack: its memory stays bounded under every attack at once, and
//! a flooder does not starve quiet pairs. Both run the real binary and measure it, so they need
//! the machine to themselves: they are `#[ignore]`d in the default run, and `.ci/run` runs them
//! with `cargo test --locked --test hostile -- --ignored --test-threads=1`.

use crate::Alone;
use crate::common::*;
use std::time::{Duration, Instant};
use tokio::time::{sleep, timeout};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "timing/RSS: run by .ci/run's robustness step"]
async fn the_relays_memory_stays_bounded_under_every_attack_at_once() {
    let turn = Alone::begin().await;
    // All the traffic here comes from 127.0.0.1; the per-address bound (256 sessions) would cap
    // the attack itself, and the point is to measure the relay carrying its full weight.
    let deadline = format!("{}ms", HANDSHAKE_TIMEOUT.as_millis());
    let args = [
        "--handshake-timeout",
        &deadline,
        "--max-connections-per-ip",
        "0",
    ];
    let mut relay = RelayProcess::start(&args, &[]);
    let (addr, pid) = (relay.addr, relay.child.id());
    let (before, after, peak, took) = turn
        .amid_bystanders(Endpoint::Plain(addr), async move {
            // Warm up every path (allocator arenas, hyper and tungstenite buffers, the hub's
            // maps) with a tenth of the attack, so what follows measures growth, not first use.
            every_attack_at_once(addr, 10).await;
            let before = settled_rss(pid).await;
            let started = Instant::now();
            every_attack_at_once(addr, 1).await;
            let took = started.elapsed();
            (before, settled_rss(pid).await, vm_kib(pid, "VmHWM:"), took)
        })
        .await;
    eprintln!(
        "relay RSS: {before} KiB warmed up, {after} KiB after the attack (+{} KiB), peak {peak} \
         KiB; the attack took {took:?}",
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
    relay.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "timing/RSS: run by .ci/run's robustness step"]
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
    relay.assert_running();
    turn.no_task_panicked();
}
