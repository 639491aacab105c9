//! `pingpong`: timed round trips through the relay (client → server → client) or through the bare
//! echo server, checking that every message comes back in order and intact.

use crate::net::{self, Ws};
use crate::procfs::{GroupSpent, Watchers};
use crate::redis_info::{Commands, Redis};
use crate::report::{self, Problems, Report, clip, latency_json, latency_text, round, thousands};
use crate::route::Route;
use anyhow::{Context as _, Result, bail};
use clap::ValueEnum;
use futures_util::{SinkExt, StreamExt, stream};
use hdrhistogram::Histogram;
use serde_json::json;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::{Instant, sleep_until, timeout, timeout_at};
use tokio_tungstenite::tungstenite::Message;

/// With messages in flight and nothing arriving this long, the rest are counted lost.
const STALL: Duration = Duration::from_secs(5);

/// Connections opened at once while setting up.
const SETUP_CONCURRENCY: usize = 50;

/// `NNNNNN-SSSSSSSSSSSS-`: pair number and sequence number at the start of every payload.
const HEADER_LEN: usize = 20;

/// Largest pair number the payload header can carry.
const MAX_PAIRS: usize = 999_999;

/// A flooder's client flushes after this many frames (its write buffer may flush sooner).
const FLOOD_FLUSH_EVERY: usize = 16;

/// Most messages a flooder has sent that its server peer has not read yet: enough to keep the
/// relay busy, few enough (about 600 KB at 512 B) that a generator slow to read cannot fill the
/// relay's 1 MiB send queue for the server peer and get it closed as too slow.
const FLOOD_WINDOW: u64 = 1024;

/// The code echo frames are addressed to: the same length as the relay's default join code, so
/// an echo frame is as long as the frame a relay client sends.
const ECHO_CODE: &str = "ECHO00";

/// What the round trips go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// Client → relay → server peer → relay → client: two relayed messages per round trip.
    Relay,
    /// Connection → echo server → connection: one echo per round trip.
    Echo,
    /// Connection → echo server → partner connection → echo server → connection: the forwarding
    /// floor (`/pair/KEY`), two forwarded messages per round trip as through the relay.
    Forward,
}

impl Target {
    /// How reports name it.
    pub fn name(self) -> &'static str {
        match self {
            Target::Relay => "relay",
            Target::Echo => "echo",
            Target::Forward => "forward",
        }
    }

    /// Messages the target reads and writes per round trip, the unit CPU cost is divided by.
    fn messages_per_round_trip(self) -> u64 {
        match self {
            Target::Relay | Target::Forward => 2,
            Target::Echo => 1,
        }
    }
}

/// The far end of a measured connection, as set up for the target.
enum Far {
    /// The relay's server peer, with its join code and the client's id.
    Relay(Ws, String, String),
    /// None: the echo server itself answers.
    Echo,
    /// The forwarding pair's other connection.
    Mirror(Ws),
}

/// How to run.
pub struct Params {
    /// Pairs (relay) or connections (echo).
    pub pairs: usize,
    /// Payload bytes per message.
    pub size: usize,
    /// Messages in flight per pair.
    pub window: usize,
    /// Measured interval.
    pub duration: Duration,
    /// Unmeasured interval before it.
    pub warmup: Duration,
    /// Relay, echo server or forwarding floor.
    pub target: Target,
    /// Extra relay pairs whose client sends to its server as fast as it can, unmeasured.
    pub flooders: usize,
}

/// What a run found.
pub struct Outcome {
    /// Round trips completed inside the measured interval.
    pub round_trips: u64,
    /// Length of the measured interval as actually sampled.
    pub measured: Duration,
    /// Round-trip latency of those round trips, µs.
    pub rtt: Histogram<u64>,
    /// Integrity counters over the whole run, warm-up included.
    pub checks: Checks,
    /// The target's CPU time over the measured interval, with `--pid` (summed over several).
    pub cpu: Option<GroupSpent>,
    /// Redis commands over the measured interval, with `--redis-url`.
    pub commands: Option<Commands>,
    /// What the flooders did, with `--flooders`.
    pub flood: Flood,
}

/// The flooders' figures, kept apart from the measured pairs'.
#[derive(Debug, Default)]
pub struct Flood {
    /// Messages their server peers read inside the measured interval.
    pub delivered: u64,
    /// Messages their clients sent over the whole run.
    pub sent: u64,
    /// Their integrity counters (lost: sent but never read; reordered: read after a later one).
    pub checks: Checks,
}

/// Integrity counters: any non-zero one fails the run.
#[derive(Debug, Default, Clone)]
pub struct Checks {
    /// Messages sent that never came back.
    pub lost: u64,
    /// Messages that came back after a later one.
    pub reordered: u64,
    /// Frames whose payload or envelope was not what was sent.
    pub corrupted: u64,
    /// Frames from the relay itself (ERROR, PEER_GONE...) in the middle of the run.
    pub unexpected: u64,
    /// Connections that failed mid-run.
    pub failed_connections: u64,
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
        self.reordered += other.reordered;
        self.corrupted += other.corrupted;
        self.unexpected += other.unexpected;
        self.failed_connections += other.failed_connections;
        self.close_unanswered += other.close_unanswered;
        self.samples.extend(other.samples);
    }

    /// Whether every check held.
    pub fn clean(&self) -> bool {
        self.lost == 0
            && self.reordered == 0
            && self.corrupted == 0
            && self.unexpected == 0
            && self.failed_connections == 0
    }
}

/// The frames one pair sends and expects back; the payload is a function of (pair, sequence).
struct Frames {
    /// Everything before the payload in what the sender writes.
    out_prefix: String,
    /// Everything before the payload in what comes back.
    in_prefix: String,
    /// The payload's pair-specific tail after the header, fixed for the run.
    filler: String,
    pair: usize,
}

/// Closes the payload string and the envelope.
const SUFFIX: &str = "\"}";

impl Frames {
    fn new(pair: usize, size: usize, out_prefix: String, in_prefix: String) -> Frames {
        let filler = (HEADER_LEN..size)
            .map(|i| char::from(b'a' + ((pair * 7 + i) % 26) as u8))
            .collect();
        Frames {
            out_prefix,
            in_prefix,
            filler,
            pair,
        }
    }

    fn push_payload(&self, buf: &mut String, seq: u64) {
        write!(buf, "{:06}-{seq:012}-", self.pair).expect("writing to a String cannot fail");
        buf.push_str(&self.filler);
    }

    fn outgoing(&self, seq: u64) -> String {
        let mut frame = String::with_capacity(
            self.out_prefix.len() + HEADER_LEN + self.filler.len() + SUFFIX.len(),
        );
        frame.push_str(&self.out_prefix);
        self.push_payload(&mut frame, seq);
        frame.push_str(SUFFIX);
        frame
    }

    fn expected(&self, buf: &mut String, seq: u64) {
        buf.clear();
        buf.push_str(&self.in_prefix);
        self.push_payload(buf, seq);
        buf.push_str(SUFFIX);
    }

    /// The sequence number of a frame that is an intact echo of one of this pair's messages.
    fn sequence_of(&self, frame: &str) -> Option<u64> {
        let payload = frame.strip_prefix(&self.in_prefix)?.strip_suffix(SUFFIX)?;
        let (header, filler) = payload.split_at_checked(HEADER_LEN)?;
        if filler != self.filler {
            return None;
        }
        let (pair, seq) = header.strip_suffix('-')?.split_once('-')?;
        (pair.parse::<usize>().ok()? == self.pair)
            .then(|| seq.parse().ok())
            .flatten()
    }
}

/// When to measure, shared by every task.
#[derive(Clone, Copy)]
struct Schedule {
    start: Instant,
    end: Instant,
}

/// One pair's sender's result.
struct Sent {
    round_trips: u64,
    rtt: Histogram<u64>,
    checks: Checks,
}

/// Runs the round trips and gathers the figures.
pub async fn measure(
    params: &Params,
    route: &Route,
    watched: Option<&Watchers>,
    redis: Option<&Redis>,
) -> Result<Outcome> {
    if params.size < HEADER_LEN + 4 {
        bail!("--size must be at least {} bytes", HEADER_LEN + 4);
    }
    if params.pairs == 0 || params.pairs > MAX_PAIRS {
        bail!("--pairs must be between 1 and {MAX_PAIRS}");
    }
    if params.window == 0 {
        bail!("--window must be at least 1");
    }
    if params.flooders > 0 && params.target != Target::Relay {
        bail!("--flooders needs --target relay");
    }
    if route.is_split() && params.target != Target::Relay {
        bail!("--client-url and --fly-proxy need --target relay");
    }
    if params.pairs + params.flooders > MAX_PAIRS {
        bail!("--pairs plus --flooders must be at most {MAX_PAIRS}");
    }
    eprintln!(
        "pingpong: setting up {} {}{}…",
        params.pairs,
        if params.target == Target::Relay {
            "pairs"
        } else {
            "connections"
        },
        if params.flooders > 0 {
            format!(" and {} flooder pairs", params.flooders)
        } else {
            String::new()
        }
    );
    // Pair numbers from `params.pairs` on are flooders.
    let setups = (0..params.pairs + params.flooders).map(|pair| async move {
        match params.target {
            Target::Relay => net::open_pair(&route.servers, &route.clients)
                .await
                .map(|p| (pair, p.client, Far::Relay(p.server, p.code, p.client_id))),
            Target::Echo => route
                .servers
                .open("/echo")
                .await
                .map(|ws| (pair, ws, Far::Echo)),
            Target::Forward => {
                let path = net::pair_path();
                let sender = route.servers.open(&path).await?;
                let mirror = route.servers.open(&path).await?;
                Ok((pair, sender, Far::Mirror(mirror)))
            }
        }
    });
    let links: Vec<_> = stream::iter(setups)
        .buffer_unordered(SETUP_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()
        .context("setting up connections")?;

    // A short lead so every task is running before the warm-up clock starts.
    let began = Instant::now() + Duration::from_millis(100);
    let schedule = Schedule {
        start: began + params.warmup,
        end: began + params.warmup + params.duration,
    };
    eprintln!(
        "pingpong: running {:?} warm-up + {:?} measured…",
        params.warmup, params.duration
    );
    let mut senders = Vec::with_capacity(links.len());
    let mut reflectors = Vec::new();
    let mut floods = Vec::new();
    for (pair, sender, server) in links {
        if pair >= params.pairs
            && let Far::Relay(server, code, client_id) = server
        {
            let frames = Arc::new(Frames::new(
                pair,
                params.size,
                format!(r#"{{"to":"{code}","type":"P","message":""#),
                format!(r#"{{"from":"{client_id}","type":"P","message":""#),
            ));
            let progress = Arc::new(Progress::default());
            floods.push((
                tokio::spawn(flood(
                    sender,
                    frames.clone(),
                    progress.clone(),
                    began,
                    schedule,
                )),
                tokio::spawn(drain(server, frames, client_id, progress, schedule)),
            ));
            continue;
        }
        let frames = match &server {
            Far::Relay(_, code, _) => Frames::new(
                pair,
                params.size,
                format!(r#"{{"to":"{code}","type":"P","message":""#),
                format!(r#"{{"from":"{code}","type":"P","message":""#),
            ),
            Far::Echo | Far::Mirror(_) => {
                let prefix = format!(r#"{{"to":"{ECHO_CODE}","type":"P","message":""#);
                Frames::new(pair, params.size, prefix.clone(), prefix)
            }
        };
        let deadline = schedule.end + STALL + Duration::from_secs(5);
        match server {
            Far::Relay(server, _, client_id) => {
                reflectors.push(tokio::spawn(reflect(server, client_id, deadline)));
            }
            Far::Mirror(mirror) => reflectors.push(tokio::spawn(mirror_back(mirror, deadline))),
            Far::Echo => {}
        }
        senders.push(tokio::spawn(drive(
            sender,
            frames,
            params.window,
            began,
            schedule,
        )));
    }

    let (cpu, commands, measured) = if watched.is_some() || redis.is_some() {
        sleep_until(schedule.start).await;
        let before = watched.map(Watchers::cpu).transpose()?;
        let counted = match redis {
            Some(redis) => Some(redis.counters().await?),
            None => None,
        };
        let started = Instant::now();
        sleep_until(schedule.end).await;
        let after = watched.map(Watchers::cpu).transpose()?;
        let commands = match (redis, counted) {
            (Some(redis), Some(counted)) => Some(counted.until(&redis.counters().await?)),
            _ => None,
        };
        let cpu = before
            .zip(after)
            .map(|(before, after)| before.until(&after));
        (cpu, commands, started.elapsed())
    } else {
        (None, None, params.duration)
    };

    let mut rtt = report::histogram();
    let mut round_trips = 0;
    let mut checks = Checks::default();
    for sender in senders {
        let sent = sender.await.context("a sender task failed")?;
        round_trips += sent.round_trips;
        rtt.add(&sent.rtt).expect("histograms share their bounds");
        checks.merge(sent.checks);
    }
    for reflector in reflectors {
        checks.merge(reflector.await.context("a server-peer task failed")?);
    }
    let mut flood = Flood::default();
    for (client, server) in floods {
        let (sent, client_checks) = client.await.context("a flooder task failed")?;
        let drained = server
            .await
            .context("a flooder's server-peer task failed")?;
        flood.sent += sent;
        flood.delivered += drained.delivered;
        flood.checks.merge(client_checks);
        let mut server_checks = drained.checks;
        // Whatever was sent past the last message read never arrived.
        let unread = sent.saturating_sub(drained.next);
        if unread > 0 {
            server_checks.note(format!("flooder: {unread} messages never read"));
        }
        server_checks.lost += unread;
        flood.checks.merge(server_checks);
    }
    Ok(Outcome {
        round_trips,
        measured,
        rtt,
        checks,
        cpu,
        commands,
        flood,
    })
}

/// How far a flooder's server peer has read, shared with its client to bound what is in flight.
#[derive(Default)]
struct Progress {
    /// One past the highest sequence number read.
    read: AtomicU64,
    /// Signalled whenever `read` moves.
    moved: Notify,
}

/// A flooder's client: from `began` until the schedule ends, writes messages as fast as the
/// connection takes them, flushing every few and keeping at most [`FLOOD_WINDOW`] unread; then
/// waits for the server peer to read them all and closes. Returns how many it sent.
async fn flood(
    mut ws: Ws,
    frames: Arc<Frames>,
    progress: Arc<Progress>,
    began: Instant,
    schedule: Schedule,
) -> (u64, Checks) {
    let mut checks = Checks::default();
    let pair = frames.pair;
    sleep_until(began).await;
    let mut next_seq = 0u64;
    let mut unflushed = 0;
    let result: Result<(), String> = async {
        while Instant::now() < schedule.end {
            if next_seq.saturating_sub(progress.read.load(Ordering::Acquire)) >= FLOOD_WINDOW {
                if unflushed > 0 {
                    ws.flush().await.map_err(|e| format!("send failed: {e}"))?;
                    unflushed = 0;
                }
                // A stall shows up as loss at the end; keep the schedule.
                let _ = timeout_at(schedule.end, progress.moved.notified()).await;
                continue;
            }
            ws.feed(Message::text(frames.outgoing(next_seq)))
                .await
                .map_err(|e| format!("send failed: {e}"))?;
            next_seq += 1;
            unflushed += 1;
            if unflushed >= FLOOD_FLUSH_EVERY {
                ws.flush().await.map_err(|e| format!("send failed: {e}"))?;
                unflushed = 0;
            }
        }
        ws.flush().await.map_err(|e| format!("send failed: {e}"))
    }
    .await;
    if let Err(error) = result {
        checks.failed_connections += 1;
        checks.note(format!("flooder pair {pair}: {error}"));
        return (next_seq, checks);
    }
    // Wait for the server peer to read everything, giving up after STALL without progress.
    loop {
        let moved = progress.moved.notified();
        if progress.read.load(Ordering::Acquire) >= next_seq {
            break;
        }
        if timeout(STALL, moved).await.is_err() {
            break;
        }
    }
    if net::close(&mut ws).await != net::CloseOutcome::Answered {
        checks.close_unanswered += 1;
    }
    (next_seq, checks)
}

/// What a flooder's server peer read.
struct Drained {
    /// Messages read inside the measured interval.
    delivered: u64,
    /// One past the highest sequence number read.
    next: u64,
    checks: Checks,
}

/// A flooder's server peer: reads its client's messages and checks each is the next one, intact,
/// until the relay says the client left. Sends nothing back.
async fn drain(
    mut ws: Ws,
    frames: Arc<Frames>,
    client_id: String,
    progress: Arc<Progress>,
    schedule: Schedule,
) -> Drained {
    let mut drained = Drained {
        delivered: 0,
        next: 0,
        checks: Checks::default(),
    };
    let checks = &mut drained.checks;
    let pair = frames.pair;
    let gone = format!(r#"{{"from":"0","type":"PEER_GONE","message":{{"id":"{client_id}"}}}}"#);
    // Sequence numbers skipped over as lost, in case they turn up late.
    let mut missing: VecDeque<u64> = VecDeque::new();
    let mut expected = String::new();
    let mut last = Instant::now();
    loop {
        let limit = (last + 2 * STALL).max(schedule.end + 2 * STALL);
        let text = match timeout_at(limit, net::next_text(&mut ws)).await {
            Ok(Ok(text)) => text,
            Ok(Err(error)) => {
                checks.failed_connections += 1;
                checks.note(format!("flooder server peer {pair}: {error:#}"));
                return drained;
            }
            Err(_) => {
                checks.unexpected += 1;
                checks.note(format!("flooder server peer {pair}: no PEER_GONE in time"));
                break;
            }
        };
        last = Instant::now();
        frames.expected(&mut expected, drained.next);
        let in_order = text.as_str() == expected;
        let seq = if in_order {
            Some(drained.next)
        } else {
            frames.sequence_of(text.as_str())
        };
        match seq {
            Some(seq) if seq >= drained.next && seq - drained.next < FLOOD_WINDOW => {
                if !in_order {
                    checks.lost += seq - drained.next;
                    missing.extend(drained.next..seq);
                }
                drained.next = seq + 1;
                if last >= schedule.start && last < schedule.end {
                    drained.delivered += 1;
                }
                progress.read.store(drained.next, Ordering::Release);
                progress.moved.notify_one();
            }
            Some(seq) if missing.contains(&seq) => {
                missing.retain(|&s| s != seq);
                checks.lost -= 1;
                checks.reordered += 1;
                checks.note(format!("flooder pair {pair}: #{seq} arrived late"));
            }
            Some(seq) => {
                checks.corrupted += 1;
                checks.note(format!("flooder pair {pair}: #{seq} arrived twice"));
            }
            None if text.as_str() == gone => break,
            None => {
                checks.unexpected += 1;
                checks.note(format!("flooder server peer {pair} got {}", clip(&text)));
            }
        }
    }
    if net::close(&mut ws).await != net::CloseOutcome::Answered {
        drained.checks.close_unanswered += 1;
    }
    drained
}

/// Keeps `window` messages in flight from `began` until the schedule ends, then waits for the
/// last ones; checks each echo against what was sent, in order.
async fn drive(
    mut ws: Ws,
    frames: Frames,
    window: usize,
    began: Instant,
    schedule: Schedule,
) -> Sent {
    let mut sent = Sent {
        round_trips: 0,
        rtt: report::histogram(),
        checks: Checks::default(),
    };
    let checks = &mut sent.checks;
    sleep_until(began).await;
    let mut in_flight: VecDeque<(u64, Instant)> = VecDeque::with_capacity(window);
    // Sequence numbers skipped over as lost, in case they turn up late.
    let mut missing: VecDeque<u64> = VecDeque::new();
    let mut next_seq = 0u64;
    let mut expected = String::new();
    loop {
        if Instant::now() < schedule.end && in_flight.len() < window {
            let mut result = Ok(());
            while in_flight.len() < window && result.is_ok() {
                let frame = frames.outgoing(next_seq);
                in_flight.push_back((next_seq, Instant::now()));
                next_seq += 1;
                result = ws.feed(Message::text(frame)).await;
            }
            if let Err(error) = result.and(ws.flush().await) {
                checks.failed_connections += 1;
                checks.lost += in_flight.len() as u64;
                checks.note(format!("pair {}: send failed: {error}", frames.pair));
                return sent;
            }
        }
        let Some(&(oldest, sent_at)) = in_flight.front() else {
            break;
        };
        let text = match timeout(STALL, net::next_text(&mut ws)).await {
            Ok(Ok(text)) => text,
            Ok(Err(error)) => {
                checks.failed_connections += 1;
                checks.lost += in_flight.len() as u64;
                checks.note(format!("pair {}: {error:#}", frames.pair));
                return sent;
            }
            Err(_) => {
                checks.lost += in_flight.len() as u64;
                checks.note(format!(
                    "pair {}: nothing came back for {STALL:?} with {} in flight (oldest #{oldest})",
                    frames.pair,
                    in_flight.len()
                ));
                break;
            }
        };
        let arrived = Instant::now();
        frames.expected(&mut expected, oldest);
        let seq = if text.as_str() == expected {
            in_flight.pop_front();
            Some((oldest, sent_at))
        } else {
            match frames.sequence_of(text.as_str()) {
                Some(seq) if in_flight.iter().any(|&(s, _)| s == seq) => {
                    // Everything older than `seq` was overtaken: lost unless it turns up later.
                    let mut found = None;
                    while let Some((s, at)) = in_flight.pop_front() {
                        if s == seq {
                            found = Some((s, at));
                            break;
                        }
                        checks.lost += 1;
                        missing.push_back(s);
                    }
                    found
                }
                Some(seq) if missing.contains(&seq) => {
                    missing.retain(|&s| s != seq);
                    checks.lost -= 1;
                    checks.reordered += 1;
                    checks.note(format!("pair {}: #{seq} came back late", frames.pair));
                    None
                }
                Some(seq) => {
                    checks.corrupted += 1;
                    checks.note(format!(
                        "pair {}: #{seq} came back twice or unsent",
                        frames.pair
                    ));
                    None
                }
                None if text.starts_with(r#"{"from":"0""#) => {
                    checks.unexpected += 1;
                    checks.note(format!("pair {}: relay said {}", frames.pair, clip(&text)));
                    None
                }
                None => {
                    checks.corrupted += 1;
                    checks.note(format!(
                        "pair {}: corrupted frame {}",
                        frames.pair,
                        clip(&text)
                    ));
                    None
                }
            }
        };
        if let Some((_, at)) = seq
            && arrived >= schedule.start
            && arrived < schedule.end
        {
            sent.round_trips += 1;
            let micros = arrived.saturating_duration_since(at).as_micros();
            sent.rtt
                .saturating_record(u64::try_from(micros).unwrap_or(u64::MAX));
        }
    }
    if net::close(&mut ws).await != net::CloseOutcome::Answered {
        sent.checks.close_unanswered += 1;
    }
    sent
}

/// The far end of a forwarding pair: writes every frame straight back, until the echo server
/// closes it after the sender left.
async fn mirror_back(mut ws: Ws, deadline: Instant) -> Checks {
    let mut checks = Checks::default();
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                if let Err(error) = ws.send(Message::Text(text)).await {
                    checks.failed_connections += 1;
                    checks.note(format!("mirror: send failed: {error}"));
                    return checks;
                }
            }
            Ok(Some(Ok(Message::Close(_)))) => {
                // Let tungstenite send its reply: the next read ends the stream.
                let _ = ws.next().await;
                return checks;
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(error))) => {
                checks.failed_connections += 1;
                checks.note(format!("mirror: {error}"));
                return checks;
            }
            Ok(None) => {
                checks.failed_connections += 1;
                checks.note("mirror: connection ended without a close".to_owned());
                return checks;
            }
            Err(_) => {
                checks.unexpected += 1;
                checks.note("mirror: not closed by the deadline".to_owned());
                return checks;
            }
        }
    }
}

/// The server peer of a relay pair: sends every message from its client straight back, until the
/// relay says the client left.
async fn reflect(mut ws: Ws, client_id: String, deadline: Instant) -> Checks {
    let mut checks = Checks::default();
    let inbound = format!(r#"{{"from":"{client_id}","type":"P","message":"#);
    let outbound = format!(r#"{{"to":"{client_id}","type":"P","message":"#);
    let gone = format!(r#"{{"from":"0","type":"PEER_GONE","message":{{"id":"{client_id}"}}}}"#);
    loop {
        let text = match tokio::time::timeout_at(deadline, net::next_text(&mut ws)).await {
            Ok(Ok(text)) => text,
            Ok(Err(error)) => {
                checks.failed_connections += 1;
                checks.note(format!("server peer of {client_id}: {error:#}"));
                return checks;
            }
            Err(_) => {
                checks.note(format!(
                    "server peer of {client_id}: no PEER_GONE by the deadline"
                ));
                checks.unexpected += 1;
                break;
            }
        };
        if let Some(message) = text
            .strip_prefix(inbound.as_str())
            .and_then(|rest| rest.strip_suffix('}'))
        {
            let mut reply = String::with_capacity(outbound.len() + message.len() + 1);
            reply.push_str(&outbound);
            reply.push_str(message);
            reply.push('}');
            if let Err(error) = ws.send(Message::text(reply)).await {
                checks.failed_connections += 1;
                checks.note(format!("server peer of {client_id}: send failed: {error}"));
                return checks;
            }
        } else if text.as_str() == gone {
            break;
        } else {
            checks.unexpected += 1;
            checks.note(format!("server peer of {client_id} got {}", clip(&text)));
        }
    }
    if net::close(&mut ws).await != net::CloseOutcome::Answered {
        checks.close_unanswered += 1;
    }
    checks
}

/// The table and JSON for a run.
pub fn report(params: &Params, url: &str, outcome: &Outcome) -> Report {
    let target = params.target;
    let seconds = outcome.measured.as_secs_f64();
    let round_trips_per_s = outcome.round_trips as f64 / seconds;
    let per_trip = target.messages_per_round_trip();
    let messages = outcome.round_trips * per_trip;
    let messages_per_s = messages as f64 / seconds;
    // The target's CPU time covers the flooders' messages too: charge it to all of them.
    let charged = messages + outcome.flood.delivered;
    let unit = match target {
        Target::Relay => "relayed message",
        Target::Echo => "echo",
        Target::Forward => "forwarded message",
    };
    let cpu_json = outcome.cpu.as_ref().map(|group| {
        let cpu = group.total;
        json!({
            "pid": group.single_pid(),
            "by_pid": group.each_json(),
            "ns": cpu.ns,
            "source": cpu.source,
            "stat_ns": cpu.stat_ns,
            "us_per_message": round(cpu.ns as f64 / 1000.0 / charged.max(1) as f64, 3),
            "core_share": round(cpu.ns as f64 / 1e9 / seconds, 3),
        })
    });
    let checks = &outcome.checks;
    let flood = &outcome.flood;
    let mut report = Report::new(
        format!(
            "pingpong → {} {url}: {} {}{}, {} B payload, window {}, {:?} measured after {:?} warm-up",
            target.name(),
            params.pairs,
            if target == Target::Relay {
                "pairs"
            } else {
                "connections"
            },
            if params.flooders > 0 {
                format!(" (+ {} flooders, not in the figures)", params.flooders)
            } else {
                String::new()
            },
            params.size,
            params.window,
            params.duration,
            params.warmup
        ),
        json!({
            "command": "pingpong",
            "target": target.name(),
            "url": url,
            "pairs": params.pairs,
            "size": params.size,
            "window": params.window,
            "duration_s": params.duration.as_secs_f64(),
            "warmup_s": params.warmup.as_secs_f64(),
            "measured_s": round(seconds, 3),
            "round_trips": outcome.round_trips,
            "round_trips_per_s": round(round_trips_per_s, 1),
            "messages_per_round_trip": per_trip,
            "messages": messages,
            "messages_per_s": round(messages_per_s, 1),
            "rtt": latency_json(&outcome.rtt),
            "cpu": cpu_json,
            "redis_commands": outcome.commands.as_ref().map(|c| c.json(charged)),
            "lost": checks.lost,
            "reordered": checks.reordered,
            "corrupted": checks.corrupted,
            "unexpected": checks.unexpected,
            "failed_connections": checks.failed_connections,
            "close_unanswered": checks.close_unanswered,
            "problems": checks.samples.as_slice(),
            "flooders": params.flooders,
            "flooder_messages": flood.delivered,
            "flooder_msgs_per_sec": round(flood.delivered as f64 / seconds, 1),
            "flooder_sent": flood.sent,
            "flooder_lost": flood.checks.lost,
            "flooder_reordered": flood.checks.reordered,
            "flooder_corrupted": flood.checks.corrupted,
            "flooder_unexpected": flood.checks.unexpected,
            "flooder_failed_connections": flood.checks.failed_connections,
            "flooder_problems": flood.checks.samples.as_slice(),
        }),
    );
    report.row(
        "round trips",
        format!(
            "{} ({}/s)",
            thousands(outcome.round_trips as f64),
            thousands(round_trips_per_s)
        ),
    );
    report.row(
        match target {
            Target::Relay => "relayed messages/s (2 per round trip)",
            Target::Echo => "echoes/s (1 per round trip)",
            Target::Forward => "forwarded messages/s (2 per round trip)",
        },
        thousands(messages_per_s),
    );
    report.row("round-trip latency", latency_text(&outcome.rtt));
    match &outcome.cpu {
        Some(group) => {
            let cpu = group.total;
            report.row(
                format!("CPU of {} ({})", group.label(), cpu.source),
                format!(
                    "{:.1} ms ({:.0}% of a core; /proc/PID/stat says {:.1} ms)",
                    cpu.ns as f64 / 1e6,
                    cpu.ns as f64 / 1e9 / seconds * 100.0,
                    cpu.stat_ns as f64 / 1e6
                ),
            );
            report.row(
                if params.flooders > 0 {
                    format!("CPU-µs per {unit} (flooders' included)")
                } else {
                    format!("CPU-µs per {unit}")
                },
                format!("{:.2}", cpu.ns as f64 / 1000.0 / charged.max(1) as f64),
            );
            if group.each.len() > 1 {
                for (pid, spent) in &group.each {
                    report.row(
                        format!("  of which PID {pid} ({})", spent.source),
                        format!(
                            "{:.1} ms, {:.2} µs per {unit}",
                            spent.ns as f64 / 1e6,
                            spent.ns as f64 / 1000.0 / charged.max(1) as f64
                        ),
                    );
                }
            }
        }
        None => report.row("CPU per message", "not measured (give --pid)"),
    }
    if let Some(commands) = &outcome.commands {
        report.row(
            format!("Redis commands per {unit}"),
            format!(
                "{:.3} ({} sent; by name, inner ones too: {})",
                commands.sent as f64 / charged.max(1) as f64,
                thousands(commands.sent as f64),
                commands.breakdown()
            ),
        );
    }
    report.row(
        "lost / reordered / corrupted / unexpected / failed conns",
        format!(
            "{} / {} / {} / {} / {}",
            checks.lost,
            checks.reordered,
            checks.corrupted,
            checks.unexpected,
            checks.failed_connections
        ),
    );
    report.row(
        "closes not answered (not a failure)",
        checks.close_unanswered.to_string(),
    );
    if params.flooders > 0 {
        report.row(
            "flooders: delivered messages/s (all flooders)",
            format!(
                "{} ({} sent over the run)",
                thousands(flood.delivered as f64 / seconds),
                thousands(flood.sent as f64)
            ),
        );
        report.row(
            "flooders: lost / reordered / corrupted / unexpected / failed conns",
            format!(
                "{} / {} / {} / {} / {}",
                flood.checks.lost,
                flood.checks.reordered,
                flood.checks.corrupted,
                flood.checks.unexpected,
                flood.checks.failed_connections
            ),
        );
    }
    for sample in checks
        .samples
        .as_slice()
        .iter()
        .chain(flood.checks.samples.as_slice())
    {
        report.row("problem", sample.clone());
    }
    report.passed = checks.clean() && flood.checks.clean();
    report
}
