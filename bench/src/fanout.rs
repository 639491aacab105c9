//! `fanout`: one server peer sends a message to each of its N clients, round after round, as a
//! host broadcasting to its room does; each round ends when every client has its message.
//!
//! Reports per-delivery latency, round durations and the rounds that stalled, the target's CPU
//! per delivery and the machine's TCP counters over the measured rounds. Checks that every
//! delivery arrives once, intact, and in round order for its client.

use crate::net::{self, Dialer, Ws};
use crate::procfs::{self, GroupSample, GroupSpent, Watchers};
use crate::report::{self, Problems, Report, clip, latency_json, latency_text, round, thousands};
use crate::tcpstats::{TcpDelta, TcpSample};
use anyhow::{Context as _, Result, anyhow, bail};
use clap::ValueEnum;
use futures_util::{SinkExt, StreamExt, TryStreamExt, stream};
use hdrhistogram::Histogram;
use serde_json::json;
use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_tungstenite::tungstenite::{self, Message};

/// `RRRRRR-CCCCCC-TTTTTTTTTTTT-`: round, client index and send time (µs since the rounds began)
/// at the start of every payload.
const HEADER_LEN: usize = 27;

/// Largest client index, and largest round number, the payload header can carry.
const MAX_INDEX: usize = 999_999;

/// Closes the payload string and the envelope.
const SUFFIX: &str = "\"}";

/// The message type the server peer sends.
const TYPE: &str = "P";

/// How the server peer writes a round's frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ServerWrites {
    /// Writes and flushes every frame on its own, as a naive application does.
    Each,
    /// Queues the whole round, then flushes once: few, large writes.
    Batched,
}

impl ServerWrites {
    /// How reports name it.
    fn name(self) -> &'static str {
        match self {
            ServerWrites::Each => "each",
            ServerWrites::Batched => "batched",
        }
    }
}

/// How to run.
pub struct Params {
    /// Clients in the server's room.
    pub clients: usize,
    /// Clients joining at once during set-up.
    pub concurrency: usize,
    /// Measured rounds.
    pub rounds: usize,
    /// Unmeasured rounds before them.
    pub warmup_rounds: usize,
    /// Payload bytes per message.
    pub size: usize,
    /// Longest a round may take; its missing deliveries then count as lost.
    pub round_timeout: Duration,
    /// How the server peer writes.
    pub server_writes: ServerWrites,
    /// A measured round longer than this counts as stalled.
    pub stall_threshold: Duration,
}

impl Params {
    /// Rounds sent, warm-up included.
    fn total_rounds(&self) -> usize {
        self.warmup_rounds + self.rounds
    }
}

/// Integrity counters: any non-zero one but `late` and `close_unanswered` fails the run.
#[derive(Debug, Default)]
pub struct Checks {
    /// Deliveries that never arrived.
    pub lost: u64,
    /// Deliveries that arrived after their round had timed out (those rounds fail the run).
    pub late: u64,
    /// Deliveries that arrived a second time.
    pub duplicated: u64,
    /// Frames whose envelope or payload was not what was sent.
    pub corrupted: u64,
    /// Deliveries that arrived after a later round's, at the same client.
    pub reordered: u64,
    /// Frames from the relay itself (ERROR...) in the middle of the run.
    pub unexpected: u64,
    /// Connections that failed, or went silent, mid-run.
    pub failed_connections: u64,
    /// Rounds not complete within `--round-timeout`.
    pub timed_out_rounds: u64,
    /// Our closes at the end that got no close frame back (reported, not a failure).
    pub close_unanswered: u64,
    /// The first few problems, described.
    pub samples: Problems,
}

impl Checks {
    fn note(&mut self, what: String) {
        self.samples.note(what);
    }

    fn merge(&mut self, other: Checks) {
        self.lost += other.lost;
        self.late += other.late;
        self.duplicated += other.duplicated;
        self.corrupted += other.corrupted;
        self.reordered += other.reordered;
        self.unexpected += other.unexpected;
        self.failed_connections += other.failed_connections;
        self.timed_out_rounds += other.timed_out_rounds;
        self.close_unanswered += other.close_unanswered;
        self.samples.extend(other.samples);
    }

    /// Whether every check held.
    pub fn clean(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.corrupted == 0
            && self.reordered == 0
            && self.unexpected == 0
            && self.failed_connections == 0
            && self.timed_out_rounds == 0
    }
}

/// What a run found.
pub struct Outcome {
    /// Measured rounds sent (fewer than asked only when the server peer's connection failed).
    pub rounds_run: usize,
    /// From the first measured round's start to the last one's end.
    pub measured: Duration,
    /// Deliveries of measured rounds.
    pub deliveries: u64,
    /// Their latency, send time to receipt, µs.
    pub latency: Histogram<u64>,
    /// Measured rounds' durations, first send to last receipt, µs.
    pub durations: Histogram<u64>,
    /// Measured rounds longer than the stall threshold.
    pub stalled: u64,
    /// The slowest measured round: its number (from 1) and duration.
    pub slowest: Option<(usize, Duration)>,
    /// The target's CPU time over the measured rounds, with `--pid` (summed over several).
    pub cpu: Option<GroupSpent>,
    /// The machine's TCP counters' growth over the measured rounds.
    pub tcp: TcpDelta,
    /// Integrity counters over the whole run, warm-up included.
    pub checks: Checks,
}

/// One client's messages; its payload is a function of (client, round, send time).
struct Payload {
    client: usize,
    /// The payload's client-specific tail after the header, fixed for the run.
    filler: String,
}

impl Payload {
    fn new(client: usize, size: usize) -> Payload {
        let filler = (HEADER_LEN..size)
            .map(|i| char::from(b'a' + ((client * 7 + i) % 26) as u8))
            .collect();
        Payload { client, filler }
    }

    /// `prefix`, then the payload of `round` sent at `sent_us`, then the suffix.
    fn frame(&self, prefix: &str, round: usize, sent_us: u64) -> String {
        let mut frame =
            String::with_capacity(prefix.len() + HEADER_LEN + self.filler.len() + SUFFIX.len());
        frame.push_str(prefix);
        write!(frame, "{round:06}-{:06}-{sent_us:012}-", self.client)
            .expect("writing to a String cannot fail");
        frame.push_str(&self.filler);
        frame.push_str(SUFFIX);
        frame
    }

    /// Round and send time of a frame that is `prefix` and an intact payload of this client's.
    fn read(&self, prefix: &str, frame: &str) -> Option<(usize, u64)> {
        let payload = frame.strip_prefix(prefix)?.strip_suffix(SUFFIX)?;
        let (header, filler) = payload.split_at_checked(HEADER_LEN)?;
        if filler != self.filler {
            return None;
        }
        let mut fields = header.strip_suffix('-')?.split('-');
        let round = fields.next()?.parse().ok()?;
        let client = fields.next()?.parse::<usize>().ok()?;
        let sent_us = fields.next()?.parse().ok()?;
        (client == self.client && fields.next().is_none()).then_some((round, sent_us))
    }
}

/// How a delivery stands against what its client already has.
#[derive(Debug, PartialEq, Eq)]
enum Arrival {
    /// The first copy, after every earlier round's.
    InOrder,
    /// The first copy, but a later round's came first.
    Reordered,
    /// A second copy.
    Duplicate,
    /// A round that is never sent.
    Unsent,
}

/// The rounds one client has received.
struct Order {
    seen: Vec<bool>,
    latest: Option<usize>,
}

impl Order {
    fn new(rounds: usize) -> Order {
        Order {
            seen: vec![false; rounds],
            latest: None,
        }
    }

    fn record(&mut self, round: usize) -> Arrival {
        match self.seen.get_mut(round) {
            None => Arrival::Unsent,
            Some(true) => Arrival::Duplicate,
            Some(seen) => {
                *seen = true;
                if self.latest.is_some_and(|latest| round < latest) {
                    Arrival::Reordered
                } else {
                    self.latest = Some(round);
                    Arrival::InOrder
                }
            }
        }
    }
}

/// What the client tasks tell the server's round loop; atomics, since every client task writes
/// it and the loop only polls it after a [`Notify`].
struct Progress {
    /// First copies that have arrived, per round.
    arrived: Vec<AtomicUsize>,
    /// When each round's last delivery arrived: µs since `began`, plus one; 0 until then.
    completed_us: Vec<AtomicU64>,
    /// Signalled whenever a round completes (a permit is kept if nobody waits yet).
    completion: Notify,
    clients: usize,
    began: Instant,
}

impl Progress {
    fn new(params: &Params, began: Instant) -> Progress {
        let rounds = params.total_rounds();
        Progress {
            arrived: (0..rounds).map(|_| AtomicUsize::new(0)).collect(),
            completed_us: (0..rounds).map(|_| AtomicU64::new(0)).collect(),
            completion: Notify::new(),
            clients: params.clients,
            began,
        }
    }

    /// A first copy of `round` arrived `at`.
    fn arrive(&self, round: usize, at: Instant) {
        if self.arrived[round].fetch_add(1, Ordering::AcqRel) + 1 == self.clients {
            let us = micros_since(self.began, at);
            self.completed_us[round].store(us.saturating_add(1), Ordering::Release);
            self.completion.notify_one();
        }
    }

    fn arrived(&self, round: usize) -> usize {
        self.arrived[round].load(Ordering::Acquire)
    }

    fn completed(&self, round: usize) -> Option<Instant> {
        let us = self.completed_us[round].load(Ordering::Acquire);
        (us > 0).then(|| self.began + Duration::from_micros(us - 1))
    }

    /// When `round` completed, or `None` if it has not by `deadline`.
    async fn wait(&self, round: usize, deadline: Instant) -> Option<Instant> {
        loop {
            if let Some(at) = self.completed(round) {
                return Some(at);
            }
            if timeout_at(deadline, self.completion.notified())
                .await
                .is_err()
            {
                return self.completed(round);
            }
        }
    }
}

/// µs from `began` to `at`.
fn micros_since(began: Instant, at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(began).as_micros()).unwrap_or(u64::MAX)
}

/// A client as the server peer addresses it.
struct Member {
    /// `{"to":"ID","type":"P","message":"`.
    prefix: String,
    payload: Arc<Payload>,
}

/// Sets up the room, runs the rounds and gathers the figures.
pub async fn measure(
    params: &Params,
    dialer: &Dialer,
    watched: Option<&Watchers>,
) -> Result<Outcome> {
    validate(params)?;
    procfs::check_room_for_sockets(
        params.clients + 1,
        "raise the limit (ulimit -n) or give fewer --clients",
    )?;
    eprintln!(
        "fanout: setting up 1 server and {} clients, {} at a time…",
        params.clients, params.concurrency
    );
    let mut server = dialer.open("/server").await?;
    let code = net::read_hello(&mut server).await.context("server HELLO")?;
    let (mut clients, joined) = tokio::try_join!(
        join_all(dialer, &code, params),
        hear_joins(&mut server, params.clients)
    )?;
    if let Some((_, _, id)) = clients.iter().find(|(_, _, id)| !joined.contains(id)) {
        bail!("the server heard no PEER_JOINED for client {id}");
    }
    clients.sort_unstable_by_key(|(index, _, _)| *index);

    let progress = Arc::new(Progress::new(params, Instant::now()));
    let (members, receivers) = spawn_clients(clients, &code, params, &progress);

    eprintln!(
        "fanout: {} warm-up + {} measured rounds…",
        params.warmup_rounds, params.rounds
    );
    let mut ran = run_rounds(params, &mut server, &members, &progress, watched).await?;
    // Closing the server ends the clients: the relay sends each PEER_GONE, then closes it.
    if net::close(&mut server).await != net::CloseOutcome::Answered {
        ran.checks.close_unanswered += 1;
    }
    let mut latency = report::histogram();
    for receiver in receivers {
        let received = receiver.await.context("a client task failed")?;
        for &us in &received.latencies {
            latency.saturating_record(u64::from(us));
        }
        ran.checks.merge(received.checks);
    }
    ran.checks
        .merge(losses(&progress, ran.rounds_sent, &ran.timed_out));
    let spent = ran.before.until(&ran.after);
    Ok(Outcome {
        rounds_run: ran.rounds_sent.saturating_sub(params.warmup_rounds),
        measured: spent.elapsed,
        deliveries: latency.len(),
        latency,
        durations: ran.durations,
        stalled: ran.stalled,
        slowest: ran.slowest,
        cpu: spent.cpu,
        tcp: spent.tcp,
        checks: ran.checks,
    })
}

/// Starts a task per client, reading its deliveries; returns the clients as the server peer
/// addresses them, in index order, and the tasks.
fn spawn_clients(
    clients: Vec<(usize, Ws, String)>,
    code: &str,
    params: &Params,
    progress: &Arc<Progress>,
) -> (Vec<Member>, Vec<JoinHandle<Received>>) {
    let from = format!(r#"{{"from":"{code}","type":"{TYPE}","message":""#);
    let gone = format!(r#"{{"from":"0","type":"PEER_GONE","message":{{"id":"{code}"}}}}"#);
    let mut members = Vec::with_capacity(clients.len());
    let mut receivers = Vec::with_capacity(clients.len());
    for (index, ws, id) in clients {
        let payload = Arc::new(Payload::new(index, params.size));
        members.push(Member {
            prefix: format!(r#"{{"to":"{id}","type":"{TYPE}","message":""#),
            payload: payload.clone(),
        });
        let client = Client {
            payload,
            from: from.clone(),
            gone: gone.clone(),
            warmup_rounds: params.warmup_rounds,
            progress: progress.clone(),
            // A round waits at most the timeout, so a live client hears from the relay at
            // least every two of them.
            patience: 2 * params.round_timeout + net::PATIENCE,
        };
        receivers.push(tokio::spawn(client.receive(ws, params.total_rounds())));
    }
    (members, receivers)
}

fn validate(params: &Params) -> Result<()> {
    if params.clients == 0 || params.clients > MAX_INDEX + 1 {
        bail!("--clients must be between 1 and {}", MAX_INDEX + 1);
    }
    if params.rounds == 0 || params.total_rounds() > MAX_INDEX + 1 {
        bail!(
            "--rounds must be at least 1, and with --warmup-rounds at most {}",
            MAX_INDEX + 1
        );
    }
    if params.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    if params.size < HEADER_LEN {
        bail!("--size must be at least {HEADER_LEN} bytes");
    }
    if params.round_timeout.is_zero() {
        bail!("--round-timeout must be more than 0");
    }
    Ok(())
}

/// Joins `clients` clients to the room, `concurrency` at a time: (index, socket, id) each.
async fn join_all(
    dialer: &Dialer,
    code: &str,
    params: &Params,
) -> Result<Vec<(usize, Ws, String)>> {
    let joins = (0..params.clients).map(|index| async move {
        let (ws, id) = timeout(net::PATIENCE, net::join(dialer, code))
            .await
            .map_err(|_| anyhow!("client {index} not set up within {:?}", net::PATIENCE))?
            .with_context(|| format!("setting up client {index}"))?;
        Ok::<_, anyhow::Error>((index, ws, id))
    });
    stream::iter(joins)
        .buffer_unordered(params.concurrency)
        .try_collect()
        .await
}

/// The ids of the first `clients` PEER_JOINED frames the server hears.
async fn hear_joins(server: &mut Ws, clients: usize) -> Result<HashSet<String>> {
    let mut joined = HashSet::with_capacity(clients);
    while joined.len() < clients {
        let frame = net::next_json(server)
            .await
            .with_context(|| format!("server, after {} PEER_JOINED", joined.len()))?;
        match frame["message"]["id"].as_str() {
            Some(id) if frame["from"] == "0" && frame["type"] == "PEER_JOINED" => {
                joined.insert(id.to_owned());
            }
            _ => bail!("the server expected PEER_JOINED, got {frame}"),
        }
    }
    Ok(joined)
}

/// Readings taken around the measured rounds.
struct Marks {
    at: Instant,
    cpu: Option<GroupSample>,
    tcp: TcpSample,
}

impl Marks {
    fn take(watched: Option<&Watchers>) -> Result<Marks> {
        Ok(Marks {
            cpu: watched.map(Watchers::cpu).transpose()?,
            tcp: TcpSample::read(),
            at: Instant::now(),
        })
    }

    fn until(&self, later: &Marks) -> Spent {
        Spent {
            elapsed: later.at.saturating_duration_since(self.at),
            cpu: self
                .cpu
                .as_ref()
                .zip(later.cpu.as_ref())
                .map(|(a, b)| a.until(b)),
            tcp: self.tcp.until(&later.tcp),
        }
    }
}

/// What the measured rounds cost, from two [`Marks`].
struct Spent {
    elapsed: Duration,
    cpu: Option<GroupSpent>,
    tcp: TcpDelta,
}

/// What the server's round loop saw.
struct Ran {
    rounds_sent: usize,
    durations: Histogram<u64>,
    stalled: u64,
    slowest: Option<(usize, Duration)>,
    /// Rounds that timed out, with how many deliveries had arrived by then.
    timed_out: Vec<(usize, usize)>,
    before: Marks,
    after: Marks,
    checks: Checks,
}

/// Sends every round and waits for each to complete; the watched processes and the TCP counters
/// are read just before the first measured round and just after the last.
async fn run_rounds(
    params: &Params,
    server: &mut Ws,
    members: &[Member],
    progress: &Progress,
    watched: Option<&Watchers>,
) -> Result<Ran> {
    let mut checks = Checks::default();
    let mut durations = report::histogram();
    let (mut stalled, mut slowest, mut timed_out) = (0, None, Vec::new());
    let mut before = None;
    let mut rounds_sent = 0;
    for round in 0..params.total_rounds() {
        if round == params.warmup_rounds {
            before = Some(Marks::take(watched)?);
        }
        let started = Instant::now();
        if let Err(error) = send_round(server, members, round, progress.began, params).await {
            checks.failed_connections += 1;
            checks.note(format!("server peer: round {round}: send failed: {error}"));
            break;
        }
        rounds_sent = round + 1;
        let deadline = started + params.round_timeout;
        let ended = match await_round(server, progress, round, deadline, &mut checks).await {
            Ok(Some(at)) => at,
            Ok(None) => {
                let arrived = progress.arrived(round);
                checks.timed_out_rounds += 1;
                checks.note(format!(
                    "round {round}: {arrived} of {} deliveries within {:?}",
                    params.clients, params.round_timeout
                ));
                timed_out.push((round, arrived));
                deadline
            }
            Err(error) => {
                checks.failed_connections += 1;
                checks.note(format!("server peer: round {round}: {error:#}"));
                break;
            }
        };
        if let Some(measured) = round.checked_sub(params.warmup_rounds) {
            let took = ended.saturating_duration_since(started);
            let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
            durations.saturating_record(us);
            stalled += u64::from(took > params.stall_threshold);
            if slowest.is_none_or(|(_, slowest)| took > slowest) {
                slowest = Some((measured + 1, took));
            }
        }
    }
    let after = Marks::take(watched)?;
    Ok(Ran {
        rounds_sent,
        durations,
        stalled,
        slowest,
        timed_out,
        before: before.map_or_else(|| Marks::take(watched), Ok)?,
        after,
        checks,
    })
}

/// One frame to every member, each stamped with its own send time.
async fn send_round(
    server: &mut Ws,
    members: &[Member],
    round: usize,
    began: Instant,
    params: &Params,
) -> Result<(), tungstenite::Error> {
    for member in members {
        let sent_us = micros_since(began, Instant::now());
        let frame = Message::text(member.payload.frame(&member.prefix, round, sent_us));
        match params.server_writes {
            ServerWrites::Each => server.send(frame).await?,
            ServerWrites::Batched => server.feed(frame).await?,
        }
    }
    if params.server_writes == ServerWrites::Batched {
        server.flush().await?;
    }
    Ok(())
}

/// Waits for `round` to complete, reading the server's socket meanwhile so its pings are
/// answered; the server should hear nothing, so any frame is noted as unexpected.
async fn await_round(
    server: &mut Ws,
    progress: &Progress,
    round: usize,
    deadline: Instant,
    checks: &mut Checks,
) -> Result<Option<Instant>> {
    loop {
        // Both are cancel-safe: tungstenite keeps a partly read frame for the next read.
        tokio::select! {
            completed = progress.wait(round, deadline) => return Ok(completed),
            text = net::next_text(server) => {
                let text = text?;
                checks.unexpected += 1;
                checks.note(format!("server peer got {}", clip(&text)));
            }
        }
    }
}

/// Deliveries that never arrived, of the rounds sent, and those that arrived after their round
/// timed out; read once every client task has ended.
fn losses(progress: &Progress, rounds_sent: usize, timed_out: &[(usize, usize)]) -> Checks {
    let mut checks = Checks::default();
    for round in 0..rounds_sent {
        checks.lost += progress.clients.saturating_sub(progress.arrived(round)) as u64;
    }
    for &(round, by_timeout) in timed_out {
        checks.late += progress.arrived(round).saturating_sub(by_timeout) as u64;
    }
    checks
}

/// One client's side: what it expects and whom it tells.
struct Client {
    payload: Arc<Payload>,
    /// `{"from":"CODE","type":"P","message":"`.
    from: String,
    /// The relay's frame saying the server left: the end of the run.
    gone: String,
    warmup_rounds: usize,
    progress: Arc<Progress>,
    /// Longest silence before the client gives up.
    patience: Duration,
}

/// One client's result.
struct Received {
    /// Latency of each measured delivery, µs: at most one per round, so bounded by `--rounds`.
    latencies: Vec<u32>,
    checks: Checks,
}

impl Client {
    /// Reads deliveries until the server leaves, checking each and reporting its arrival.
    async fn receive(self, mut ws: Ws, rounds: usize) -> Received {
        let index = self.payload.client;
        let mut received = Received {
            latencies: Vec::with_capacity(rounds.saturating_sub(self.warmup_rounds)),
            checks: Checks::default(),
        };
        let checks = &mut received.checks;
        let mut order = Order::new(rounds);
        loop {
            let text = match timeout(self.patience, net::next_text(&mut ws)).await {
                Ok(Ok(text)) => text,
                Ok(Err(error)) => {
                    checks.failed_connections += 1;
                    checks.note(format!("client {index}: {error:#}"));
                    return received;
                }
                Err(_) => {
                    checks.failed_connections += 1;
                    checks.note(format!("client {index}: nothing for {:?}", self.patience));
                    break;
                }
            };
            let arrived = Instant::now();
            let Some((round, sent_us)) = self.payload.read(&self.from, &text) else {
                if text.as_str() == self.gone {
                    break;
                } else if text.starts_with(r#"{"from":"0""#) {
                    checks.unexpected += 1;
                    checks.note(format!("client {index}: relay said {}", clip(&text)));
                } else {
                    checks.corrupted += 1;
                    checks.note(format!("client {index}: corrupted frame {}", clip(&text)));
                }
                continue;
            };
            match order.record(round) {
                Arrival::InOrder => {}
                Arrival::Reordered => {
                    checks.reordered += 1;
                    checks.note(format!("client {index}: round {round} after a later one"));
                }
                Arrival::Duplicate => {
                    checks.duplicated += 1;
                    checks.note(format!("client {index}: round {round} arrived twice"));
                    continue;
                }
                Arrival::Unsent => {
                    checks.corrupted += 1;
                    checks.note(format!("client {index}: round {round} was never sent"));
                    continue;
                }
            }
            self.progress.arrive(round, arrived);
            if round >= self.warmup_rounds {
                let us = micros_since(self.progress.began, arrived).saturating_sub(sent_us);
                received
                    .latencies
                    .push(u32::try_from(us).unwrap_or(u32::MAX));
            }
        }
        if net::close(&mut ws).await != net::CloseOutcome::Answered {
            received.checks.close_unanswered += 1;
        }
        received
    }
}

/// The table and JSON for a run.
pub fn report(params: &Params, url: &str, outcome: &Outcome) -> Report {
    let seconds = outcome.measured.as_secs_f64();
    let per_s = outcome.deliveries as f64 / seconds;
    let deliveries = outcome.deliveries.max(1) as f64;
    let cpu_json = outcome.cpu.as_ref().map(|group| {
        let cpu = group.total;
        json!({
            "pid": group.single_pid(),
            "by_pid": group.each_json(),
            "ns": cpu.ns,
            "source": cpu.source,
            "stat_ns": cpu.stat_ns,
            "us_per_delivery": round(cpu.ns as f64 / 1000.0 / deliveries, 3),
            "core_share": round(cpu.ns as f64 / 1e9 / seconds, 3),
        })
    });
    let checks = &outcome.checks;
    let threshold_ms = params.stall_threshold.as_secs_f64() * 1000.0;
    let mut report = Report::new(
        format!(
            "fanout → {url}: 1 server, {} clients (set up {} at a time), {} B payload, {} rounds \
             after {} warm-up, server writes {}",
            params.clients,
            params.concurrency,
            params.size,
            params.rounds,
            params.warmup_rounds,
            params.server_writes.name()
        ),
        json!({
            "command": "fanout",
            "url": url,
            "clients": params.clients,
            "concurrency": params.concurrency,
            "size": params.size,
            "rounds": params.rounds,
            "warmup_rounds": params.warmup_rounds,
            "server_writes": params.server_writes.name(),
            "round_timeout_s": params.round_timeout.as_secs_f64(),
            "stall_threshold_ms": threshold_ms,
            "rounds_run": outcome.rounds_run,
            "measured_s": round(seconds, 3),
            "deliveries": outcome.deliveries,
            "deliveries_per_s": round(per_s, 1),
            "delivery_latency": latency_json(&outcome.latency),
            "round_duration": latency_json(&outcome.durations),
            "stalled_rounds": outcome.stalled,
            "slowest_round": outcome.slowest.map(|(number, took)| json!({
                "round": number,
                "us": u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            })),
            "cpu": cpu_json,
            "tcp": outcome.tcp.json(),
            "lost": checks.lost,
            "late": checks.late,
            "duplicated": checks.duplicated,
            "corrupted": checks.corrupted,
            "reordered": checks.reordered,
            "unexpected": checks.unexpected,
            "failed_connections": checks.failed_connections,
            "timed_out_rounds": checks.timed_out_rounds,
            "close_unanswered": checks.close_unanswered,
            "problems": checks.samples.as_slice(),
        }),
    );
    report.row(
        "deliveries",
        format!(
            "{} in {seconds:.2} s ({}/s)",
            thousands(outcome.deliveries as f64),
            thousands(per_s)
        ),
    );
    report.row(
        "delivery latency (send → receipt)",
        latency_text(&outcome.latency),
    );
    report.row("round duration", latency_text(&outcome.durations));
    report.row(
        format!("stalled rounds (over {threshold_ms} ms)"),
        format!("{} of {}", outcome.stalled, outcome.rounds_run),
    );
    if let Some((number, took)) = outcome.slowest {
        report.row(
            "slowest round",
            format!("#{number}: {:.1} ms", took.as_secs_f64() * 1000.0),
        );
    }
    match &outcome.cpu {
        Some(group) => {
            let (label, value) = group.row(seconds);
            report.row(label, value);
            report.row(
                "CPU-µs per delivery",
                format!("{:.2}", group.total.ns as f64 / 1000.0 / deliveries),
            );
        }
        None => report.row("CPU per delivery", "not measured (give --pid)"),
    }
    report.row("TCP counters, machine-wide (growth)", outcome.tcp.text());
    report.row(
        "lost / late / duplicated / corrupted / reordered",
        format!(
            "{} / {} / {} / {} / {}",
            checks.lost, checks.late, checks.duplicated, checks.corrupted, checks.reordered
        ),
    );
    report.row(
        "unexpected / failed conns / timed-out rounds",
        format!(
            "{} / {} / {}",
            checks.unexpected, checks.failed_connections, checks.timed_out_rounds
        ),
    );
    report.row(
        "closes not answered (not a failure)",
        checks.close_unanswered.to_string(),
    );
    for sample in checks.samples.as_slice() {
        report.row("problem", sample.clone());
    }
    report.passed = checks.clean();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    const TO: &str = r#"{"to":"C7","type":"P","message":""#;

    #[test]
    fn a_frame_reads_back_as_its_round_and_send_time() {
        let payload = Payload::new(42, 64);
        let frame = payload.frame(TO, 7, 1_234_567);
        assert_eq!(frame.len(), TO.len() + 64 + SUFFIX.len());
        assert_eq!(payload.read(TO, &frame), Some((7, 1_234_567)));
    }

    #[test]
    fn another_clients_or_a_damaged_payload_does_not_read() {
        let payload = Payload::new(42, 64);
        let frame = payload.frame(TO, 7, 1);
        assert_eq!(Payload::new(43, 64).read(TO, &frame), None);
        assert_eq!(payload.read(TO, &frame.replacen('a', "b", 1)), None);
        assert_eq!(payload.read(TO, &frame[..frame.len() - 3]), None);
        let from = r#"{"from":"C7","type":"P","message":""#;
        assert_eq!(payload.read(from, &frame), None);
    }

    #[test]
    fn rounds_are_told_apart_as_in_order_reordered_duplicated_or_unsent() {
        let mut order = Order::new(4);
        assert_eq!(order.record(0), Arrival::InOrder);
        assert_eq!(order.record(2), Arrival::InOrder);
        assert_eq!(order.record(1), Arrival::Reordered);
        assert_eq!(order.record(1), Arrival::Duplicate);
        assert_eq!(order.record(3), Arrival::InOrder);
        assert_eq!(order.record(4), Arrival::Unsent);
    }
}
