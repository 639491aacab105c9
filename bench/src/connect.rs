//! `connect`: what setting up pairs (server HELLO, client HELLO, PEER_JOINED) and tearing them
//! down costs the relay.
//!
//! Against the echo server (`--target echo`) a pair is two bare WebSocket upgrades and closes:
//! the floor under the relay's figures, what accepting, upgrading and closing two sockets costs
//! on the same stack and machine.
//!
//! A run has two phases: every pair is set up and held open, then every pair is torn down. The
//! relay's CPU time is read between them, so the set-up cost is isolated from the tear-down cost
//! rather than blended with it.
//!
//! Unmeasured warm-up rounds of the same size come first: the first time a relay holds that many
//! pairs its heap grows (a system call and page faults per pair), a cost paid once per high-water
//! mark rather than per pair. `--warmup-rounds 0` measures a fresh relay's first rise instead.

use crate::net::{self, CloseOutcome, Dialer, Pair};
use crate::pingpong::Target;
use crate::procfs::{self, GroupSpent, Watchers};
use crate::redis_info::{Commands, Counters, Redis};
use crate::report::{self, Problems, Report, latency_json, latency_text, round, thousands};
use crate::route::{Replays, Route};
use anyhow::{Result, bail};
use hdrhistogram::Histogram;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::time::{Instant, timeout};

/// How to run.
pub struct Params {
    /// Pairs to set up, hold open together, then tear down (two sockets each).
    pub pairs: usize,
    /// Pairs being set up, or torn down, at once.
    pub concurrency: usize,
    /// The relay, or the echo server as the floor.
    pub target: Target,
    /// Unmeasured rounds (set up all, tear down all) before the measured one.
    pub warmup_rounds: usize,
}

/// What one worker (and, merged, the whole run) saw.
#[derive(Default)]
struct Tally {
    set_up: u64,
    failed: u64,
    /// Our close frame got no close frame back (the TCP connection just ended).
    close_unanswered: u64,
    /// The server never heard PEER_GONE after its client closed.
    peer_gone_missing: u64,
    samples: Problems,
}

impl Tally {
    fn note(&mut self, what: String) {
        self.samples.note(what);
    }

    /// A warm-up round's failures fail the run; its counts are not part of the figures.
    fn merge_failures(&mut self, warm_up: Tally) {
        self.failed += warm_up.failed;
        self.peer_gone_missing += warm_up.peer_gone_missing;
        self.samples.extend(warm_up.samples);
    }

    fn merge(&mut self, other: Tally) {
        self.set_up += other.set_up;
        self.close_unanswered += other.close_unanswered;
        self.merge_failures(other);
    }
}

/// What one phase cost, set-up or tear-down: CPU time of the processes watched, Redis commands.
#[derive(Debug, Clone, Default)]
pub struct PhaseCost<T> {
    /// While the pairs were set up.
    pub setup: T,
    /// While they were torn down.
    pub teardown: T,
}

/// CPU time in each phase (of several processes, summed).
pub type PhaseCpu = PhaseCost<GroupSpent>;

impl PhaseCpu {
    /// Both phases together, as one figure for consumers of the whole-run cost.
    pub fn total(&self) -> GroupSpent {
        self.setup.plus(&self.teardown)
    }
}

/// Readings taken between phases (with Redis, once it has gone quiet), compared pairwise.
struct Marks {
    cpu: Option<procfs::GroupSample>,
    commands: Option<Counters>,
    replays: Option<Replays>,
}

impl Marks {
    async fn take(
        watched: Option<&Watchers>,
        redis: Option<&Redis>,
        route: &Route,
    ) -> Result<Marks> {
        // Redis first: its wait for quiet lets the relays finish the phase's background work.
        let commands = match redis {
            Some(redis) => Some(redis.settled_counters().await?),
            None => None,
        };
        Ok(Marks {
            cpu: watched.map(Watchers::cpu).transpose()?,
            commands,
            replays: route.replays(),
        })
    }

    /// What was spent between these readings and `later` ones.
    fn until(&self, later: &Marks) -> Spent {
        Spent {
            cpu: self
                .cpu
                .as_ref()
                .zip(later.cpu.as_ref())
                .map(|(a, b)| a.until(b)),
            commands: self
                .commands
                .as_ref()
                .zip(later.commands.as_ref())
                .map(|(a, b)| a.until(b)),
            replays: self.replays.zip(later.replays).map(|(a, b)| Replays {
                replayed: b.replayed.saturating_sub(a.replayed),
                failed: b.failed.saturating_sub(a.failed),
            }),
        }
    }
}

/// One phase's cost, from two [`Marks`].
struct Spent {
    cpu: Option<GroupSpent>,
    commands: Option<Commands>,
    replays: Option<Replays>,
}

/// What a run found.
pub struct Outcome {
    /// Pairs fully set up.
    pub set_up: u64,
    /// Pairs whose set-up failed or timed out.
    pub failed: u64,
    /// Closes the relay did not answer with a close frame (reported, not a failure).
    pub close_unanswered: u64,
    /// Servers that did not hear PEER_GONE when their client closed (a failure).
    pub peer_gone_missing: u64,
    /// The first few problems.
    pub samples: Problems,
    /// Wall time of the set-up phase.
    pub setup_elapsed: Duration,
    /// Wall time of the tear-down phase.
    pub teardown_elapsed: Duration,
    /// Set-up latency, µs: from the server's TCP connect to its PEER_JOINED.
    pub setup: Histogram<u64>,
    /// The relay's CPU time in each phase, with `--pid` (summed over several).
    pub cpu: Option<PhaseCpu>,
    /// Redis commands in each phase, with `--redis-url`.
    pub commands: Option<PhaseCost<Commands>>,
    /// Requests the in-process proxy replayed during the set-up phase, with `--fly-proxy`.
    pub replays: Option<Replays>,
}

impl Outcome {
    /// Whether every pair came up and went down as the protocol says.
    pub fn clean(&self) -> bool {
        self.failed == 0 && self.peer_gone_missing == 0
    }

    /// Wall time of both phases.
    pub fn elapsed(&self) -> Duration {
        self.setup_elapsed + self.teardown_elapsed
    }
}

/// Sets up `pairs` pairs, `concurrency` at a time, and holds them; then tears them all down,
/// `concurrency` at a time. The relay's CPU is read before, between and after.
///
/// Held pairs are not read until their tear-down, so the set-up phase must end within the relay's
/// `--idle-timeout` (60 s by default) and the pairs fit its `--max-connections` (10,000 sockets).
pub async fn measure(
    params: &Params,
    route: &Route,
    watched: Option<&Watchers>,
    redis: Option<&Redis>,
) -> Result<Outcome> {
    if params.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    if route.is_split() && params.target != Target::Relay {
        bail!("--client-url and --fly-proxy need --target relay");
    }
    // Through the in-process proxy each client holds two more sockets: its side and upstream.
    let sockets = if route.replays().is_some() { 4 } else { 2 };
    procfs::check_room_for_sockets(
        sockets * params.pairs,
        "raise the limit (ulimit -n) or give fewer --pairs",
    )?;

    let mut warm_up = Tally::default();
    for round in 1..=params.warmup_rounds {
        eprintln!(
            "connect: warm-up round {round} of {}: {} pairs, {} at a time…",
            params.warmup_rounds, params.pairs, params.concurrency
        );
        let (pairs, tally, _) = set_up_all(params, route).await?;
        warm_up.merge_failures(tally);
        warm_up.merge_failures(tear_down_all(pairs, params).await?);
    }
    eprintln!(
        "connect: setting up {} pairs, {} at a time…",
        params.pairs, params.concurrency
    );
    let before = Marks::take(watched, redis, route).await?;
    let started = Instant::now();
    let (pairs, mut tally, setup) = set_up_all(params, route).await?;
    let setup_elapsed = started.elapsed();
    let between = Marks::take(watched, redis, route).await?;

    eprintln!(
        "connect: {} pairs open in {:.2} s; tearing them down…",
        pairs.len(),
        setup_elapsed.as_secs_f64()
    );
    let started = Instant::now();
    tally.merge(tear_down_all(pairs, params).await?);
    let teardown_elapsed = started.elapsed();
    tally.merge_failures(warm_up);
    let after = Marks::take(watched, redis, route).await?;
    let (setup_cost, teardown_cost) = (before.until(&between), between.until(&after));
    let cpu = setup_cost
        .cpu
        .zip(teardown_cost.cpu)
        .map(|(setup, teardown)| PhaseCost { setup, teardown });
    let commands = setup_cost
        .commands
        .zip(teardown_cost.commands)
        .map(|(setup, teardown)| PhaseCost { setup, teardown });
    let replays = setup_cost.replays;
    Ok(Outcome {
        set_up: tally.set_up,
        failed: tally.failed,
        close_unanswered: tally.close_unanswered,
        peer_gone_missing: tally.peer_gone_missing,
        samples: tally.samples,
        setup_elapsed,
        teardown_elapsed,
        setup,
        cpu,
        commands,
        replays,
    })
}

/// The set-up phase: workers take pair numbers from a shared counter and keep what they open.
async fn set_up_all(params: &Params, route: &Route) -> Result<(Vec<Pair>, Tally, Histogram<u64>)> {
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..params.concurrency.min(params.pairs.max(1)))
        .map(|_| {
            let next = next.clone();
            let servers = route.servers.clone();
            let clients = route.clients.clone();
            let total = params.pairs;
            let target = params.target;
            tokio::spawn(async move {
                let mut tally = Tally::default();
                let mut setup = report::histogram();
                let mut pairs = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    let began = Instant::now();
                    match timeout(net::PATIENCE, open(target, &servers, &clients)).await {
                        Ok(Ok(pair)) => {
                            let micros = began.elapsed().as_micros();
                            setup.saturating_record(u64::try_from(micros).unwrap_or(u64::MAX));
                            tally.set_up += 1;
                            pairs.push(pair);
                        }
                        Ok(Err(error)) => {
                            tally.failed += 1;
                            tally.note(format!("set-up failed: {error:#}"));
                        }
                        Err(_) => {
                            tally.failed += 1;
                            tally.note(format!("set-up took over {:?}", net::PATIENCE));
                        }
                    }
                }
                (pairs, tally, setup)
            })
        })
        .collect();
    let mut pairs = Vec::with_capacity(params.pairs);
    let mut tally = Tally::default();
    let mut setup = report::histogram();
    for worker in workers {
        let (worker_pairs, worker_tally, worker_setup) = worker.await?;
        pairs.extend(worker_pairs);
        tally.merge(worker_tally);
        setup
            .add(&worker_setup)
            .expect("histograms share their bounds");
    }
    Ok((pairs, tally, setup))
}

/// One pair's set-up: against the echo floor, just the two upgrades.
async fn open(target: Target, servers: &Dialer, clients: &Dialer) -> Result<Pair> {
    match target {
        Target::Relay => net::open_pair(servers, clients).await,
        Target::Echo => Ok(Pair {
            server: servers.open("/echo").await?,
            client: servers.open("/echo").await?,
            code: String::new(),
            client_id: String::new(),
        }),
        Target::Forward => {
            bail!(
                "--target forward is for pingpong: a forwarding pair's set-up is the echo floor's"
            )
        }
    }
}

/// The tear-down phase: workers take pairs from a shared list until it is empty.
async fn tear_down_all(pairs: Vec<Pair>, params: &Params) -> Result<Tally> {
    let count = params.concurrency.min(pairs.len().max(1));
    let queue = Arc::new(Mutex::new(pairs));
    let workers: Vec<_> = (0..count)
        .map(|_| {
            let queue = queue.clone();
            let target = params.target;
            tokio::spawn(async move {
                let mut tally = Tally::default();
                loop {
                    // Its own statement, so the lock is released before the pair is torn down.
                    // A worker that panicked cannot have left the list half-popped.
                    let pair = queue.lock().unwrap_or_else(PoisonError::into_inner).pop();
                    let Some(pair) = pair else { break };
                    tear_down(pair, target, &mut tally).await;
                }
                tally
            })
        })
        .collect();
    let mut tally = Tally::default();
    for worker in workers {
        tally.merge(worker.await?);
    }
    Ok(tally)
}

/// The client closes first; its server must hear PEER_GONE (from the relay); then the server
/// closes.
async fn tear_down(pair: Pair, target: Target, tally: &mut Tally) {
    let Pair {
        mut server,
        mut client,
        client_id,
        ..
    } = pair;
    if net::close(&mut client).await != CloseOutcome::Answered {
        tally.close_unanswered += 1;
    }
    if target == Target::Relay
        && let Err(error) = net::expect_relay_frame(&mut server, "PEER_GONE", &client_id).await
    {
        tally.peer_gone_missing += 1;
        tally.note(format!("after the client closed: {error:#}"));
    }
    if net::close(&mut server).await != CloseOutcome::Answered {
        tally.close_unanswered += 1;
    }
}

/// CPU-µs per pair, for `ns` spent on `pairs` pairs.
fn us_per_pair(ns: u64, pairs: u64) -> f64 {
    ns as f64 / 1000.0 / pairs.max(1) as f64
}

/// The table and JSON for a run.
pub fn report(params: &Params, url: &str, outcome: &Outcome) -> Report {
    let seconds = outcome.elapsed().as_secs_f64();
    let setup_seconds = outcome.setup_elapsed.as_secs_f64();
    let pairs_per_s = outcome.set_up as f64 / seconds;
    let setup_pairs_per_s = outcome.set_up as f64 / setup_seconds;
    let cpu_json = outcome.cpu.as_ref().map(|cpu| {
        let all = cpu.total();
        let total = all.total;
        json!({
            "pid": all.single_pid(),
            "by_pid": all.each_json(),
            "setup_by_pid": cpu.setup.each_json(),
            "ns": total.ns,
            "source": total.source,
            "stat_ns": total.stat_ns,
            "setup_ns": cpu.setup.total.ns,
            "teardown_ns": cpu.teardown.total.ns,
            "us_per_pair": round(us_per_pair(total.ns, outcome.set_up), 2),
            "us_per_setup": round(us_per_pair(cpu.setup.total.ns, outcome.set_up), 2),
            "us_per_teardown": round(us_per_pair(cpu.teardown.total.ns, outcome.set_up), 2),
            "core_share": round(total.ns as f64 / 1e9 / seconds, 3),
        })
    });
    let mut report = Report::new(
        format!(
            "connect → {url} ({}): {} pairs, {} at a time (all set up and held, then all torn down), \
             after {} warm-up round(s)",
            params.target.name(),
            params.pairs,
            params.concurrency,
            params.warmup_rounds
        ),
        json!({
            "command": "connect",
            "target": params.target.name(),
            "url": url,
            "pairs": params.pairs,
            "concurrency": params.concurrency,
            "warmup_rounds": params.warmup_rounds,
            "set_up": outcome.set_up,
            "failed": outcome.failed,
            "peer_gone_missing": outcome.peer_gone_missing,
            "close_unanswered": outcome.close_unanswered,
            "elapsed_s": round(seconds, 3),
            "setup_s": round(setup_seconds, 3),
            "teardown_s": round(outcome.teardown_elapsed.as_secs_f64(), 3),
            "pairs_per_s": round(pairs_per_s, 1),
            "setup_pairs_per_s": round(setup_pairs_per_s, 1),
            "setup_latency": latency_json(&outcome.setup),
            "cpu": cpu_json,
            "redis_commands": outcome.commands.as_ref().map(|c| json!({
                "setup": c.setup.json(outcome.set_up),
                "teardown": c.teardown.json(outcome.set_up),
            })),
            "replays": outcome.replays.map(|r| json!({
                "replayed": r.replayed,
                "failed": r.failed,
                "per_setup": round(r.replayed as f64 / outcome.set_up.max(1) as f64, 4),
            })),
            "problems": outcome.samples.as_slice(),
        }),
    );
    report.row(
        "pairs set up / failed",
        format!("{} / {}", outcome.set_up, outcome.failed),
    );
    report.row(
        "pairs/s (set up and torn down)",
        format!("{} in {seconds:.2} s", thousands(pairs_per_s)),
    );
    report.row(
        "pairs/s (set-up phase)",
        format!("{} in {setup_seconds:.2} s", thousands(setup_pairs_per_s)),
    );
    report.row("set-up latency", latency_text(&outcome.setup));
    match &outcome.cpu {
        Some(cpu) => {
            let all = cpu.total();
            let (label, value) = all.row(seconds);
            report.row(label, value);
            report.row(
                "CPU-µs per pair set-up",
                format!("{:.1}", us_per_pair(cpu.setup.total.ns, outcome.set_up)),
            );
            if cpu.setup.each.len() > 1 {
                for (pid, spent) in &cpu.setup.each {
                    report.row(
                        format!("  of which PID {pid}"),
                        format!("{:.1}", us_per_pair(spent.ns, outcome.set_up)),
                    );
                }
            }
            report.row(
                "CPU-µs per pair tear-down",
                format!("{:.1}", us_per_pair(cpu.teardown.total.ns, outcome.set_up)),
            );
            report.row(
                "CPU-µs per pair (set-up + tear-down)",
                format!("{:.1}", us_per_pair(all.total.ns, outcome.set_up)),
            );
        }
        None => report.row("CPU per pair", "not measured (give --pid)"),
    }
    if let Some(commands) = &outcome.commands {
        for (phase, spent) in [
            ("set-up", &commands.setup),
            ("tear-down", &commands.teardown),
        ] {
            report.row(
                format!("Redis commands per pair {phase}"),
                format!(
                    "{:.3} ({} sent; by name, inner ones too: {})",
                    spent.sent as f64 / outcome.set_up.max(1) as f64,
                    thousands(spent.sent as f64),
                    spent.breakdown()
                ),
            );
        }
    }
    if let Some(replays) = outcome.replays {
        report.row(
            "proxy replays per pair set-up (failed)",
            format!(
                "{:.3} ({} failed)",
                replays.replayed as f64 / outcome.set_up.max(1) as f64,
                replays.failed
            ),
        );
    }
    report.row(
        "PEER_GONE missing / closes not answered",
        format!(
            "{} / {} (of {} closes)",
            outcome.peer_gone_missing,
            outcome.close_unanswered,
            outcome.set_up * 2
        ),
    );
    for sample in outcome.samples.as_slice() {
        report.row("problem", sample.clone());
    }
    report.passed = outcome.clean();
    report
}
