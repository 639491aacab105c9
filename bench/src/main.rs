//! `intercessor-bench`: a load generator that drives the relay (or the bare echo server) over real
//! sockets and reports throughput, latency, the target's CPU cost and its memory per peer.
//!
//! Exit codes: 0 when every check held, 1 when one failed (a lost, reordered or corrupted
//! message, a failed set-up, a dropped connection), 2 when the run could not be made at all.

mod commands;
mod connect;
mod fanout;
mod idle;
mod net;
mod pingpong;
mod procfs;
mod redis_info;
mod report;
mod route;
mod tcpstats;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use procfs::{Watched, Watchers};
use redis_info::Redis;
use report::{Report, thousands};
use route::Route;
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "intercessor-bench", version, about)]
/// Load generator for the Intercessor relay, and for the bare echo server it is compared with.
struct Cli {
    /// Generator worker threads [default: the cores this process may run on]
    #[arg(long, global = true, value_name = "N")]
    threads: Option<usize>,
    /// After the table, print every figure as one JSON line (the last line of output)
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

/// Where to connect.
#[derive(Args)]
struct Endpoint {
    /// The relay or echo server: ws://HOST:PORT or wss://HOST:PORT
    #[arg(long)]
    url: String,
    /// CA certificate (PEM) that wss:// servers must chain to; nothing else is trusted
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
}

/// Where client peers connect when not where their servers do, and what else a cluster run reads.
#[derive(Args)]
struct Cluster {
    /// Client peers connect here; server peers still use --url (another instance of a cluster)
    #[arg(long, value_name = "URL", conflicts_with = "fly_proxy")]
    client_url: Option<String>,
    /// Client peers connect through a replaying proxy started in this process, a stand-in for
    /// Fly.io's, in front of instance ID at IP:PORT (repeatable, one per instance; ws:// only)
    #[arg(long, value_name = "ID=IP:PORT", requires = "first_hop")]
    fly_proxy: Vec<String>,
    /// The instance the proxy sends each client's request to before any replay
    #[arg(long, value_name = "ID", requires = "fly_proxy")]
    first_hop: Option<String>,
    /// Redis whose command counters are read around the measured interval (redis://HOST:PORT)
    #[arg(long, value_name = "URL")]
    redis_url: Option<String>,
}

impl Cluster {
    /// The route the pairs take, and the Redis to read.
    async fn open(&self, endpoint: &Endpoint) -> Result<(Route, Option<Redis>)> {
        let ca = endpoint.ca.as_deref();
        let route = match (&self.client_url, &self.first_hop) {
            (Some(client_url), _) => Route::split(&endpoint.url, client_url, ca)?,
            (None, Some(first_hop)) => {
                if ca.is_some() {
                    anyhow::bail!("--fly-proxy speaks ws:// only; drop --ca");
                }
                Route::via_fly_proxy(&endpoint.url, &self.fly_proxy, first_hop).await?
            }
            (None, None) => Route::direct(&endpoint.url, ca)?,
        };
        let redis = self.redis_url.as_deref().map(Redis::new).transpose()?;
        Ok((route, redis))
    }

    /// How reports name where the pairs went.
    fn describe(&self, url: &str) -> String {
        match (&self.client_url, &self.first_hop) {
            (Some(client_url), _) => format!("{url} (clients: {client_url})"),
            (None, Some(first_hop)) => {
                format!("{url} (clients: via the replaying proxy, first to {first_hop})")
            }
            (None, None) => url.to_owned(),
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Timed round trips with W messages in flight per pair; checks order and integrity
    Pingpong {
        #[command(flatten)]
        endpoint: Endpoint,
        /// Pairs (relay: a server peer and its client) or connections (echo)
        #[arg(long, default_value_t = 100)]
        pairs: usize,
        /// Payload bytes per message
        #[arg(long, default_value_t = 512)]
        size: usize,
        /// Messages in flight per pair
        #[arg(long, default_value_t = 1)]
        window: usize,
        /// Measured interval
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Unmeasured interval before it
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        warmup: Duration,
        /// The relay (two relayed messages per round trip), the echo server (one echo), or its
        /// forwarding floor (two forwarded messages, socket to socket)
        #[arg(long, value_enum, default_value_t = pingpong::Target::Relay)]
        target: pingpong::Target,
        /// Extra pairs (relay only) whose client sends to its server as fast as it can; their
        /// delivered messages/s and losses are reported apart from the measured pairs'
        #[arg(long, default_value_t = 0, value_name = "N")]
        flooders: usize,
        /// PID of the target process, to charge its CPU time to each message (repeatable: the
        /// CPU time of every one is summed, e.g. both relays of a cluster and its Redis)
        #[arg(long)]
        pid: Vec<u32>,
        #[command(flatten)]
        cluster: Cluster,
    },
    /// Sets up N pairs (HELLO, HELLO, PEER_JOINED) C at a time and holds them, then tears them all
    /// down C at a time; the relay's CPU is read between the two phases
    Connect {
        /// The relay, or the echo server as the floor (a pair is then two bare upgrades)
        #[arg(long, value_enum, default_value_t = pingpong::Target::Relay)]
        target: pingpong::Target,
        #[command(flatten)]
        endpoint: Endpoint,
        /// Pairs to set up, hold open together, and tear down (two sockets each)
        #[arg(long, default_value_t = 2000)]
        pairs: usize,
        /// Pairs being set up, or torn down, at once
        #[arg(long, default_value_t = 50)]
        concurrency: usize,
        /// Unmeasured rounds of the same pairs first, so the figures are the steady state and not
        /// the relay's first growth to that many peers (0 measures that growth)
        #[arg(long, default_value_t = 1)]
        warmup_rounds: usize,
        /// PID of the relay, to charge its CPU time to each pair's set-up and tear-down
        /// (repeatable: summed)
        #[arg(long)]
        pid: Vec<u32>,
        #[command(flatten)]
        cluster: Cluster,
    },
    /// One server peer sends each of its N clients a message per round, round after round, each
    /// round waiting for every delivery; reports delivery latency, round durations and stalls,
    /// and checks every delivery arrives once, intact and in order
    Fanout {
        #[command(flatten)]
        endpoint: Endpoint,
        /// Clients in the server's room (the relay's --max-clients-per-server must allow them)
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        /// Clients joining at once during set-up
        #[arg(long, default_value_t = 50)]
        concurrency: usize,
        /// Measured rounds
        #[arg(long, default_value_t = 200)]
        rounds: usize,
        /// Unmeasured rounds before them
        #[arg(long, default_value_t = 10)]
        warmup_rounds: usize,
        /// Payload bytes per message
        #[arg(long, default_value_t = 512)]
        size: usize,
        /// Longest a round may take; its missing deliveries fail the run
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        round_timeout: Duration,
        /// How the server peer writes a round: each frame written and flushed on its own, or all
        /// queued and flushed once
        #[arg(long, value_enum, default_value_t = fanout::ServerWrites::Each)]
        server_writes: fanout::ServerWrites,
        /// A measured round longer than this counts as stalled
        #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
        stall_threshold: Duration,
        /// PID of the target process, to charge its CPU time to each delivery (repeatable: summed)
        #[arg(long)]
        pid: Vec<u32>,
    },
    /// Opens N idle pairs and reports the relay's resident memory per peer; checks none drop.
    ///
    /// This process needs two file descriptors per pair; with a 20,000 open-file limit one
    /// process holds at most about 9,950 pairs, so spread larger counts over several processes.
    Idle {
        #[command(flatten)]
        endpoint: Endpoint,
        /// Pairs to open in this process (two peers, two sockets each)
        #[arg(long, default_value_t = 4000)]
        pairs: usize,
        /// Open each pair's server peer only: rooms nobody joined, one socket each
        #[arg(long, conflicts_with = "client_url")]
        servers_only: bool,
        /// Client peers connect here; server peers still use --url (another instance of a
        /// cluster, so each room has a client forwarded from elsewhere)
        #[arg(long, value_name = "URL")]
        client_url: Option<String>,
        /// PID of the relay, to read its RSS
        #[arg(long)]
        pid: Option<u32>,
        /// How long to hold the pairs open after measuring, answering the relay's pings
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        hold: Duration,
        /// Open and close a batch of pairs before the base reading, so warm-up costs are not
        /// charged to the peers
        #[arg(long)]
        base_rss_after_warmup: bool,
        /// Bytes of one message each pair's client and server send each other before going
        /// quiet (an SDP offer and its answer, as real peers do); 0 sends none
        #[arg(
            long,
            value_name = "BYTES",
            default_value_t = 0,
            conflicts_with = "servers_only"
        )]
        exchange: usize,
    },
    /// Counts the commands a cluster's relays send their Redis over an interval of doing
    /// nothing: what idle rooms cost the directory (run it while `idle` holds them)
    RedisCommands {
        /// The cluster's Redis: redis://HOST:PORT
        #[arg(long, value_name = "URL")]
        redis_url: String,
        /// How long to count
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// What was running, for the report (e.g. "10000 idle rooms on 2 instances")
        #[arg(long, default_value = "")]
        label: String,
    },
    /// A quick correctness check (10 pairs of pingpong, 200 pairs of connect); never fails on timing
    Smoke {
        #[command(flatten)]
        endpoint: Endpoint,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let threads = cli.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(report) => {
            report.print(cli.json);
            if report.passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// The watched process, when a PID is given.
fn watch_one(pid: Option<u32>) -> Result<Option<Watched>> {
    let watched = pid.map(Watched::new).transpose()?;
    if let Some(note) = watched.as_ref().and_then(Watched::clk_tck_note) {
        eprintln!("note: {note}");
    }
    Ok(watched)
}

/// The processes whose CPU time is charged to the work, when PIDs are given.
fn watch(pids: &[u32]) -> Result<Option<Watchers>> {
    let watched = Watchers::new(pids)?;
    if let Some(note) = watched.as_ref().and_then(Watchers::clk_tck_note) {
        eprintln!("note: {note}");
    }
    Ok(watched)
}

async fn run(command: Command) -> Result<Report> {
    match command {
        Command::Pingpong {
            endpoint,
            pairs,
            size,
            window,
            duration,
            warmup,
            target,
            flooders,
            pid,
            cluster,
        } => {
            let (route, redis) = cluster.open(&endpoint).await?;
            let watched = watch(&pid)?;
            let params = pingpong::Params {
                pairs,
                size,
                window,
                duration,
                warmup,
                target,
                flooders,
            };
            let outcome =
                pingpong::measure(&params, &route, watched.as_ref(), redis.as_ref()).await?;
            Ok(pingpong::report(
                &params,
                &cluster.describe(&endpoint.url),
                &outcome,
            ))
        }
        Command::Connect {
            target,
            endpoint,
            pairs,
            concurrency,
            warmup_rounds,
            pid,
            cluster,
        } => {
            let (route, redis) = cluster.open(&endpoint).await?;
            let watched = watch(&pid)?;
            let params = connect::Params {
                pairs,
                concurrency,
                target,
                warmup_rounds,
            };
            let outcome =
                connect::measure(&params, &route, watched.as_ref(), redis.as_ref()).await?;
            Ok(connect::report(
                &params,
                &cluster.describe(&endpoint.url),
                &outcome,
            ))
        }
        Command::Fanout {
            endpoint,
            clients,
            concurrency,
            rounds,
            warmup_rounds,
            size,
            round_timeout,
            server_writes,
            stall_threshold,
            pid,
        } => {
            let route = Route::direct(&endpoint.url, endpoint.ca.as_deref())?;
            let watched = watch(&pid)?;
            let params = fanout::Params {
                clients,
                concurrency,
                rounds,
                warmup_rounds,
                size,
                round_timeout,
                server_writes,
                stall_threshold,
            };
            let outcome = fanout::measure(&params, &route.servers, watched.as_ref()).await?;
            Ok(fanout::report(&params, &endpoint.url, &outcome))
        }
        Command::Idle {
            endpoint,
            pairs,
            servers_only,
            client_url,
            pid,
            hold,
            base_rss_after_warmup,
            exchange,
        } => {
            let ca = endpoint.ca.as_deref();
            let route = match &client_url {
                Some(client_url) => Route::split(&endpoint.url, client_url, ca)?,
                None => Route::direct(&endpoint.url, ca)?,
            };
            let watched = watch_one(pid)?;
            let tls = route.servers.is_tls();
            let params = idle::Params {
                pairs,
                servers_only,
                hold,
                base_rss_after_warmup,
                exchange,
            };
            let outcome = idle::measure(&params, &route, watched.as_ref()).await?;
            let url = match &client_url {
                Some(client_url) => format!("{} (clients: {client_url})", endpoint.url),
                None => endpoint.url.clone(),
            };
            Ok(idle::report(&params, &url, &outcome, pid, tls))
        }
        Command::RedisCommands {
            redis_url,
            duration,
            label,
        } => {
            let redis = Redis::new(&redis_url)?;
            let outcome = commands::measure(&redis, duration).await?;
            Ok(commands::report(&redis_url, &label, &outcome))
        }
        Command::Smoke { endpoint } => smoke(&endpoint).await,
    }
}

/// Short pingpong and connect runs whose only verdict is correctness.
async fn smoke(endpoint: &Endpoint) -> Result<Report> {
    let route = Route::direct(&endpoint.url, endpoint.ca.as_deref())?;
    let ping = pingpong::Params {
        pairs: 10,
        size: 512,
        window: 4,
        duration: Duration::from_millis(1500),
        warmup: Duration::from_millis(500),
        target: pingpong::Target::Relay,
        flooders: 0,
    };
    let pinged = pingpong::measure(&ping, &route, None, None).await?;
    let conn = connect::Params {
        pairs: 200,
        concurrency: 50,
        target: pingpong::Target::Relay,
        // Correctness only: a fresh relay's first round is the one that matters here.
        warmup_rounds: 0,
    };
    let connected = connect::measure(&conn, &route, None, None).await?;
    let checks = &pinged.checks;
    let passed = checks.clean() && connected.clean();
    let summary = format!(
        "smoke {}: pingpong 10 pairs, window 4: {} round trips, {} lost, {} reordered, {} corrupted, \
         {} unexpected, {} failed connections; connect: {}/{} pairs set up, {} PEER_GONE missing",
        if passed { "PASS" } else { "FAIL" },
        thousands(pinged.round_trips as f64),
        checks.lost,
        checks.reordered,
        checks.corrupted,
        checks.unexpected,
        checks.failed_connections,
        connected.set_up,
        conn.pairs,
        connected.peer_gone_missing,
    );
    let mut report = Report::new(
        summary,
        json!({
            "command": "smoke",
            "url": endpoint.url,
            "pingpong": pingpong::report(&ping, &endpoint.url, &pinged).json,
            "connect": connect::report(&conn, &endpoint.url, &connected).json,
        }),
    );
    for sample in checks
        .samples
        .as_slice()
        .iter()
        .chain(connected.samples.as_slice())
    {
        report.row("problem", sample.clone());
    }
    report.passed = passed;
    report.compact = true;
    Ok(report)
}
