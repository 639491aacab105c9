//! `connect`: how fast pairs are set up (server HELLO, client HELLO, PEER_JOINED) and torn down.

use crate::net::{self, CloseOutcome, Dialer, Pair};
use crate::procfs::{CpuSpent, Watched};
use crate::report::{self, Problems, Report, latency_json, latency_text, round, thousands};
use anyhow::{Result, bail};
use hdrhistogram::Histogram;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::{Instant, timeout};

/// How to run.
pub struct Params {
    /// Pairs to set up and tear down.
    pub pairs: usize,
    /// Pairs in progress at once.
    pub concurrency: usize,
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

    fn merge(&mut self, other: Tally) {
        self.set_up += other.set_up;
        self.failed += other.failed;
        self.close_unanswered += other.close_unanswered;
        self.peer_gone_missing += other.peer_gone_missing;
        self.samples.extend(other.samples);
    }
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
    /// Wall time for the whole run.
    pub elapsed: Duration,
    /// Set-up latency, µs: from the server's TCP connect to its PEER_JOINED.
    pub setup: Histogram<u64>,
    /// The relay's CPU time over the whole run, with `--pid`.
    pub cpu: Option<CpuSpent>,
}

impl Outcome {
    /// Whether every pair came up and went down as the protocol says.
    pub fn clean(&self) -> bool {
        self.failed == 0 && self.peer_gone_missing == 0
    }
}

/// Sets up and tears down `pairs` pairs, `concurrency` at a time.
pub async fn measure(
    params: &Params,
    dialer: Arc<Dialer>,
    watched: Option<&Watched>,
) -> Result<Outcome> {
    if params.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    eprintln!(
        "connect: {} pairs, {} at a time…",
        params.pairs, params.concurrency
    );
    let next = Arc::new(AtomicUsize::new(0));
    let before = watched.map(Watched::cpu).transpose()?;
    let started = Instant::now();
    let workers: Vec<_> = (0..params.concurrency.min(params.pairs.max(1)))
        .map(|_| {
            let next = next.clone();
            let dialer = dialer.clone();
            let total = params.pairs;
            tokio::spawn(async move {
                let mut tally = Tally::default();
                let mut setup = report::histogram();
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    let began = Instant::now();
                    match timeout(net::PATIENCE, net::open_pair(&dialer)).await {
                        Ok(Ok(pair)) => {
                            let micros = began.elapsed().as_micros();
                            setup.saturating_record(u64::try_from(micros).unwrap_or(u64::MAX));
                            tally.set_up += 1;
                            tear_down(pair, &mut tally).await;
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
                (tally, setup)
            })
        })
        .collect();
    let mut tally = Tally::default();
    let mut setup = report::histogram();
    for worker in workers {
        let (worker_tally, worker_setup) = worker.await?;
        tally.merge(worker_tally);
        setup
            .add(&worker_setup)
            .expect("histograms share their bounds");
    }
    let elapsed = started.elapsed();
    let cpu = match (watched, before) {
        (Some(watched), Some(before)) => Some(before.until(&watched.cpu()?)?),
        _ => None,
    };
    Ok(Outcome {
        set_up: tally.set_up,
        failed: tally.failed,
        close_unanswered: tally.close_unanswered,
        peer_gone_missing: tally.peer_gone_missing,
        samples: tally.samples,
        elapsed,
        setup,
        cpu,
    })
}

/// The client closes first; its server must hear PEER_GONE; then the server closes.
async fn tear_down(pair: Pair, tally: &mut Tally) {
    let Pair {
        mut server,
        mut client,
        client_id,
        ..
    } = pair;
    if net::close(&mut client).await != CloseOutcome::Answered {
        tally.close_unanswered += 1;
    }
    if let Err(error) = net::expect_relay_frame(&mut server, "PEER_GONE", &client_id).await {
        tally.peer_gone_missing += 1;
        tally.note(format!("after the client closed: {error:#}"));
    }
    if net::close(&mut server).await != CloseOutcome::Answered {
        tally.close_unanswered += 1;
    }
}

/// The table and JSON for a run.
pub fn report(params: &Params, url: &str, outcome: &Outcome, pid: Option<u32>) -> Report {
    let seconds = outcome.elapsed.as_secs_f64();
    let pairs_per_s = outcome.set_up as f64 / seconds;
    let cpu_json = outcome.cpu.map(|cpu| {
        json!({
            "pid": pid,
            "ns": cpu.ns,
            "source": cpu.source,
            "stat_ns": cpu.stat_ns,
            "us_per_pair": round(cpu.ns as f64 / 1000.0 / outcome.set_up.max(1) as f64, 2),
            "core_share": round(cpu.ns as f64 / 1e9 / seconds, 3),
        })
    });
    let mut report = Report::new(
        format!(
            "connect → {url}: {} pairs, {} at a time (set up, then torn down)",
            params.pairs, params.concurrency
        ),
        json!({
            "command": "connect",
            "url": url,
            "pairs": params.pairs,
            "concurrency": params.concurrency,
            "set_up": outcome.set_up,
            "failed": outcome.failed,
            "peer_gone_missing": outcome.peer_gone_missing,
            "close_unanswered": outcome.close_unanswered,
            "elapsed_s": round(seconds, 3),
            "pairs_per_s": round(pairs_per_s, 1),
            "setup_latency": latency_json(&outcome.setup),
            "cpu": cpu_json,
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
    report.row("set-up latency", latency_text(&outcome.setup));
    match (outcome.cpu, pid) {
        (Some(cpu), Some(pid)) => {
            report.row(
                format!("CPU of PID {pid} ({})", cpu.source),
                format!(
                    "{:.1} ms ({:.0}% of a core)",
                    cpu.ns as f64 / 1e6,
                    cpu.ns as f64 / 1e9 / seconds * 100.0
                ),
            );
            report.row(
                "CPU-µs per pair (set-up + tear-down)",
                format!(
                    "{:.1}",
                    cpu.ns as f64 / 1000.0 / outcome.set_up.max(1) as f64
                ),
            );
        }
        _ => report.row("CPU per pair", "not measured (give --pid)"),
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
