//! `idle`: what each connected but silent peer costs the relay in resident memory, and whether
//! idle connections stay up while pings run. With `--servers-only` each pair is a lone server
//! peer, a room nobody joined: what a cluster's directory holds for an idle room.

use crate::net::{self, Ws};
use crate::procfs::{self, Watched};
use crate::report::{Problems, Report, round, thousands};
use crate::route::Route;
use anyhow::{Context as _, Result};
use futures_util::{SinkExt, StreamExt, stream};
use serde_json::json;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message;

/// Pairs being set up at once.
const SETUP_CONCURRENCY: usize = 200;

/// Least time to let the relay's RSS settle before reading it.
const SETTLE: Duration = Duration::from_secs(1);

/// How to run.
pub struct Params {
    /// Pairs to open and hold (two sockets each), or with `servers_only` lone server peers.
    pub pairs: usize,
    /// Open only the server peer of each pair: a room with no client, one socket.
    pub servers_only: bool,
    /// How long to keep them open after measuring, pings running.
    pub hold: Duration,
    /// Open and close a batch first, so the base reading includes warmed-up allocator arenas and
    /// runtime structures rather than charging them to the peers.
    pub base_rss_after_warmup: bool,
    /// Bytes of the one message each pair's client and server send each other before going quiet
    /// (an SDP offer and its answer, as real signaling peers do); `0` sends none.
    pub exchange: usize,
}

/// What a run found.
pub struct Outcome {
    /// Pairs fully set up.
    pub set_up: u64,
    /// Pairs whose set-up failed.
    pub failed: u64,
    /// Time to set up all pairs.
    pub setup_elapsed: Duration,
    /// The relay's RSS before and after, with `--pid`.
    pub rss: Option<(u64, u64)>,
    /// Connections that ended on their own before the end of the hold.
    pub drops: u64,
    /// Text frames that arrived on idle connections.
    pub unexpected: u64,
    /// The first few problems.
    pub samples: Problems,
}

impl Outcome {
    /// Whether every pair came up and stayed up.
    pub fn clean(&self) -> bool {
        self.failed == 0 && self.drops == 0 && self.unexpected == 0
    }
}

/// How one held connection ended.
struct Kept {
    /// Why it ended before being told to, if it did.
    dropped: Option<String>,
    unexpected: u64,
    /// The first unexpected frame, for the report.
    first_unexpected: Option<String>,
}

/// Opens the pairs, measures, holds, and closes them.
pub async fn measure(params: &Params, route: &Route, watched: Option<&Watched>) -> Result<Outcome> {
    procfs::check_room_for_sockets(
        params.pairs * params.peers_per_pair(),
        "run several generator processes, each with a share of --pairs",
    )?;
    if params.base_rss_after_warmup {
        let warmup = params.pairs.min(SETUP_CONCURRENCY);
        eprintln!("idle: warm-up with {warmup} pairs…");
        let opened: Vec<_> = stream::iter((0..warmup).map(|_| open(route, params)))
            .buffer_unordered(SETUP_CONCURRENCY)
            .collect()
            .await;
        let closes = opened.into_iter().flatten().map(|sockets| async move {
            for mut ws in sockets {
                net::close(&mut ws).await;
            }
        });
        stream::iter(closes)
            .buffer_unordered(SETUP_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
    }
    let before = match watched {
        Some(watched) => Some(procfs::settled_rss(watched, SETTLE).await?),
        None => None,
    };

    eprintln!(
        "idle: opening {} pairs, {SETUP_CONCURRENCY} at a time…",
        params.pairs
    );
    let (stop, stopped) = watch::channel(false);
    let mut keepers: Vec<JoinHandle<Kept>> =
        Vec::with_capacity(params.pairs * params.peers_per_pair());
    let mut set_up = 0;
    let mut failed = 0;
    let mut samples = Problems::default();
    let started = Instant::now();
    let mut opening =
        stream::iter((0..params.pairs).map(|_| timeout(net::PATIENCE, open(route, params))))
            .buffer_unordered(SETUP_CONCURRENCY);
    while let Some(result) = opening.next().await {
        match result {
            Ok(Ok(sockets)) => {
                set_up += 1;
                for ws in sockets {
                    keepers.push(tokio::spawn(keep(ws, stopped.clone())));
                }
            }
            Ok(Err(error)) => {
                failed += 1;
                samples.note(format!("set-up failed: {error:#}"));
            }
            Err(_) => {
                failed += 1;
                samples.note(format!("set-up took over {:?}", net::PATIENCE));
            }
        }
    }
    drop(opening);
    let setup_elapsed = started.elapsed();
    eprintln!(
        "idle: {set_up} pairs open in {:.2} s; waiting for the relay's RSS to settle…",
        setup_elapsed.as_secs_f64()
    );
    let rss = match (watched, before) {
        (Some(watched), Some(before)) => {
            Some((before, procfs::settled_rss(watched, SETTLE).await?))
        }
        _ => None,
    };
    if !params.hold.is_zero() {
        eprintln!("idle: holding for {:?}…", params.hold);
        tokio::time::sleep(params.hold).await;
    }

    let _ = stop.send(true);
    let mut drops = 0;
    let mut unexpected = 0;
    for keeper in keepers {
        let kept = keeper.await?;
        unexpected += kept.unexpected;
        if let Some(frame) = kept.first_unexpected {
            samples.note(format!("unexpected frame on an idle connection: {frame}"));
        }
        if let Some(why) = kept.dropped {
            drops += 1;
            samples.note(format!("connection dropped: {why}"));
        }
    }
    Ok(Outcome {
        set_up,
        failed,
        setup_elapsed,
        rss,
        drops,
        unexpected,
        samples,
    })
}

impl Params {
    /// Sockets (peers) each pair holds.
    fn peers_per_pair(&self) -> usize {
        if self.servers_only { 1 } else { 2 }
    }
}

/// One pair's sockets, server first, past the exchange if there is one; with `servers_only` the
/// server peer alone, past HELLO.
async fn open(route: &Route, params: &Params) -> Result<Vec<Ws>> {
    if params.servers_only {
        let mut server = route.servers.open("/server").await?;
        net::read_hello(&mut server).await.context("server HELLO")?;
        return Ok(vec![server]);
    }
    let mut pair = net::open_pair(&route.servers, &route.clients).await?;
    if params.exchange > 0 {
        let sdp = "v".repeat(params.exchange);
        let offer = json!({"to": pair.code, "type": "OFFER", "message": sdp});
        pair.client.send(Message::text(offer.to_string())).await?;
        expect_type(&mut pair.server, "OFFER").await?;
        let answer = json!({"to": pair.client_id, "type": "ANSWER", "message": sdp});
        pair.server.send(Message::text(answer.to_string())).await?;
        expect_type(&mut pair.client, "ANSWER").await?;
    }
    Ok(vec![pair.server, pair.client])
}

/// Reads the next frame and checks it is a relayed `kind`.
async fn expect_type(ws: &mut Ws, kind: &str) -> Result<()> {
    let frame = net::next_json(ws).await?;
    anyhow::ensure!(frame["type"] == kind, "expected {kind}, got {frame}");
    Ok(())
}

/// Reads a held connection until told to stop, so the relay's pings get their pongs.
///
/// Once stop is set, whatever arrives is teardown (PEER_GONE as partners close, a `4410` when a
/// client's server went first) and is not held against the relay. The stop flag is read directly
/// as well as awaited: with TLS a frame may already sit decrypted in a buffer while `changed()`
/// yields to tokio's cooperative budget, so the read branch can win after stop was sent.
async fn keep(mut ws: Ws, mut stop: watch::Receiver<bool>) -> Kept {
    let mut kept = Kept {
        dropped: None,
        unexpected: 0,
        first_unexpected: None,
    };
    loop {
        if *stop.borrow() {
            net::close(&mut ws).await;
            return kept;
        }
        tokio::select! {
            biased;
            _ = stop.changed() => {}
            message = ws.next() => {
                if *stop.borrow() {
                    continue;
                }
                match message {
                    Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
                        kept.unexpected += 1;
                        if kept.first_unexpected.is_none() {
                            kept.first_unexpected = Some(format!("{message:?}"));
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        kept.dropped = Some(frame.map_or("closed without a code".to_owned(), |f| {
                            format!("closed {} {}", f.code, f.reason)
                        }));
                        return kept;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(error)) => {
                        kept.dropped = Some(error.to_string());
                        return kept;
                    }
                    None => {
                        kept.dropped = Some("connection ended".to_owned());
                        return kept;
                    }
                }
            }
        }
    }
}

/// The table and JSON for a run.
pub fn report(
    params: &Params,
    url: &str,
    outcome: &Outcome,
    pid: Option<u32>,
    tls: bool,
) -> Report {
    let peers = outcome.set_up * params.peers_per_pair() as u64;
    let rss = outcome.rss.map(|(before, after)| {
        let delta = after as i64 - before as i64;
        (before, after, delta, delta as f64 / peers.max(1) as f64)
    });
    let mut report = Report::new(
        format!(
            "idle → {url}: {} {} ({} peers), held {:?}",
            params.pairs,
            if params.servers_only {
                "lone servers"
            } else {
                "pairs"
            },
            params.pairs * params.peers_per_pair(),
            params.hold
        ),
        json!({
            "command": "idle",
            "url": url,
            "tls": tls,
            "pairs": params.pairs,
            "servers_only": params.servers_only,
            "peers": peers,
            "set_up": outcome.set_up,
            "failed": outcome.failed,
            "setup_s": round(outcome.setup_elapsed.as_secs_f64(), 3),
            "hold_s": params.hold.as_secs_f64(),
            "base_rss_after_warmup": params.base_rss_after_warmup,
            "exchange_bytes": params.exchange,
            "pid": pid,
            "rss_before": rss.map(|r| r.0),
            "rss_after": rss.map(|r| r.1),
            "rss_delta": rss.map(|r| r.2),
            "bytes_per_peer": rss.map(|r| round(r.3, 0)),
            "drops": outcome.drops,
            "unexpected": outcome.unexpected,
            "problems": outcome.samples.as_slice(),
        }),
    );
    report.row(
        "pairs set up / failed",
        format!(
            "{} / {} in {:.2} s",
            outcome.set_up,
            outcome.failed,
            outcome.setup_elapsed.as_secs_f64()
        ),
    );
    match (rss, pid) {
        (Some((before, after, delta, per_peer)), Some(pid)) => {
            report.row(
                format!("RSS of PID {pid} before → after"),
                format!(
                    "{:.1} MiB → {:.1} MiB",
                    before as f64 / 1048576.0,
                    after as f64 / 1048576.0
                ),
            );
            report.row("RSS delta", format!("{:.2} MiB", delta as f64 / 1048576.0));
            report.row("bytes per connected peer", thousands(per_peer));
        }
        _ => report.row("memory", "not measured (give --pid)"),
    }
    report.row(
        "dropped connections / unexpected frames",
        format!("{} / {}", outcome.drops, outcome.unexpected),
    );
    for sample in outcome.samples.as_slice() {
        report.row("problem", sample.clone());
    }
    report.passed = outcome.clean();
    report
}
