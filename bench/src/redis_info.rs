//! Redis's own command counters (`INFO stats` and `INFO commandstats`), read before and after a
//! phase so that a cluster run can say how many commands each set-up or relayed message cost.
//!
//! Redis counts the `INFO` calls that read the counters too; they are taken out of every figure.
//! Redis 7 also counts every command a Lua script runs (`get`, `set`... inside one `evalsha`),
//! both in `total_commands_processed` and under their own names. What a client sent, each script
//! counted once, is therefore read from the names: see [`SENT_ONLY`].

use anyhow::{Context as _, Result, anyhow, bail};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Longest one reading may take; a loopback Redis answers in well under a millisecond.
const PATIENCE: Duration = Duration::from_secs(2);

/// Two readings this far apart with no command between them mean Redis has gone quiet: far
/// shorter than the relays' lease renewals (a third of the TTL, 5 s by default).
const QUIET: Duration = Duration::from_millis(200);

/// Longest [`Redis::settled_counters`] waits for quiet.
const SETTLE_LIMIT: Duration = Duration::from_secs(5);

/// Largest `INFO` reply accepted: a few KiB in practice.
const MAX_REPLY: usize = 1024 * 1024;

/// The command `INFO` is counted under, taken out of every delta.
const INFO: &str = "info";

/// Commands only a client sends, never a script: script calls and loads, pub/sub, connection
/// set-up. `publish` may be run by a script too, but the relay's pub/sub routing sends it itself.
/// Everything else (`get`, `set`, `sadd`...) is what the directory's scripts run inside them.
const SENT_ONLY: &[&str] = &[
    "eval",
    "evalsha",
    "eval_ro",
    "evalsha_ro",
    "fcall",
    "fcall_ro",
    "publish",
    "spublish",
    "subscribe",
    "ssubscribe",
    "psubscribe",
    "unsubscribe",
    "sunsubscribe",
    "punsubscribe",
    "ping",
    "hello",
    "auth",
    "select",
    "multi",
    "exec",
];

/// Whether a `cmdstat_` name is one a client sends itself ([`SENT_ONLY`], `script|…`, `client|…`).
fn sent_by_client(name: &str) -> bool {
    SENT_ONLY.contains(&name) || name.starts_with("script|") || name.starts_with("client|")
}

/// A Redis whose counters are read; plain TCP without a password, as a local benchmark's is.
pub struct Redis {
    /// `host:port`.
    addr: String,
}

/// The counters at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counters {
    /// `total_commands_processed`.
    total: u64,
    /// `calls` of each `cmdstat_NAME` line, by NAME (`evalsha`, `client|setinfo`...).
    calls: BTreeMap<String, u64>,
}

/// Commands processed between two readings, the readings' own `INFO` calls left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Commands {
    /// Every command, those run inside scripts included (`total_commands_processed`).
    pub total: u64,
    /// Commands clients sent, each script one: round trips to Redis.
    pub sent: u64,
    /// By command name, only those called at least once.
    pub by_command: BTreeMap<String, u64>,
}

impl Redis {
    /// Checks a `redis://HOST:PORT` URL (the relay's `--cluster-redis-url` form).
    pub fn new(url: &str) -> Result<Redis> {
        let rest = url
            .strip_prefix("redis://")
            .ok_or_else(|| anyhow!("--redis-url must be redis://HOST:PORT, got {url:?}"))?;
        let addr = rest.split('/').next().unwrap_or(rest);
        if addr.contains('@') {
            bail!("--redis-url: the counters are read without a password; give HOST:PORT only");
        }
        if !addr.contains(':') {
            bail!("--redis-url must name the port: redis://HOST:PORT, got {url:?}");
        }
        Ok(Redis {
            addr: addr.to_owned(),
        })
    }

    /// Reads the counters now.
    pub async fn counters(&self) -> Result<Counters> {
        let reply = timeout(PATIENCE, self.info())
            .await
            .map_err(|_| anyhow!("Redis at {} gave no INFO within {PATIENCE:?}", self.addr))??;
        Counters::parse(&reply)
    }

    /// Reads the counters once Redis has gone quiet (no command between two readings
    /// [`QUIET`] apart), or after [`SETTLE_LIMIT`]: work a phase left queued (the relays release
    /// codes in the background) is then charged to that phase rather than to the next.
    pub async fn settled_counters(&self) -> Result<Counters> {
        let deadline = tokio::time::Instant::now() + SETTLE_LIMIT;
        let mut last = self.counters().await?;
        loop {
            tokio::time::sleep(QUIET).await;
            let now = self.counters().await?;
            if last.until(&now).total == 0 || tokio::time::Instant::now() >= deadline {
                return Ok(now);
            }
            last = now;
        }
    }

    async fn info(&self) -> Result<String> {
        let mut stream = TcpStream::connect(&self.addr)
            .await
            .with_context(|| format!("connecting to Redis at {}", self.addr))?;
        stream
            .write_all(b"*3\r\n$4\r\nINFO\r\n$5\r\nstats\r\n$12\r\ncommandstats\r\n")
            .await?;
        let mut reader = BufReader::new(stream);
        let mut head = String::new();
        reader.read_line(&mut head).await?;
        let length: usize = head
            .trim_end()
            .strip_prefix('$')
            .and_then(|n| n.parse().ok())
            .filter(|&n| n <= MAX_REPLY)
            .ok_or_else(|| anyhow!("Redis answered INFO with {:?}", head.trim_end()))?;
        let mut body = vec![0; length];
        reader.read_exact(&mut body).await?;
        String::from_utf8(body).context("INFO reply is not UTF-8")
    }
}

impl Counters {
    /// Reads the lines of an `INFO stats commandstats` reply.
    fn parse(reply: &str) -> Result<Counters> {
        let mut total = None;
        let mut calls = BTreeMap::new();
        for line in reply.lines() {
            if let Some(value) = line.strip_prefix("total_commands_processed:") {
                total = value.trim().parse().ok();
            } else if let Some((name, fields)) = line
                .strip_prefix("cmdstat_")
                .and_then(|rest| rest.split_once(':'))
            {
                let count = fields
                    .split(',')
                    .find_map(|field| field.strip_prefix("calls="))
                    .and_then(|n| n.parse().ok());
                if let Some(count) = count {
                    calls.insert(name.to_owned(), count);
                }
            }
        }
        let total = total.ok_or_else(|| anyhow!("INFO reply has no total_commands_processed"))?;
        Ok(Counters { total, calls })
    }

    /// Commands between `self` (earlier) and `later`, without `INFO`.
    pub fn until(&self, later: &Counters) -> Commands {
        let by_command: BTreeMap<String, u64> = later
            .calls
            .iter()
            .filter(|(name, _)| name.as_str() != INFO)
            .map(|(name, &after)| {
                let before = self.calls.get(name).copied().unwrap_or(0);
                (name.clone(), after.saturating_sub(before))
            })
            .filter(|&(_, n)| n > 0)
            .collect();
        let info_calls = |counters: &Counters| counters.calls.get(INFO).copied().unwrap_or(0);
        let infos = info_calls(later).saturating_sub(info_calls(self));
        let sent = by_command
            .iter()
            .filter(|(name, _)| sent_by_client(name))
            .map(|(_, n)| n)
            .sum();
        Commands {
            total: later.total.saturating_sub(self.total).saturating_sub(infos),
            sent,
            by_command,
        }
    }
}

impl Commands {
    /// `evalsha 2000, get 4000` style, for a table cell.
    pub fn breakdown(&self) -> String {
        if self.by_command.is_empty() {
            return "none".to_owned();
        }
        let parts: Vec<String> = self
            .by_command
            .iter()
            .map(|(name, n)| format!("{name} {n}"))
            .collect();
        parts.join(", ")
    }

    /// The counts as JSON, with each divided by `units` (set-ups, messages) as well.
    pub fn json(&self, units: u64) -> serde_json::Value {
        let per = |n: u64| crate::report::round(n as f64 / units.max(1) as f64, 4);
        serde_json::json!({
            "sent": self.sent,
            "sent_per_unit": per(self.sent),
            "total": self.total,
            "total_per_unit": per(self.total),
            "by_command": self.by_command,
            "by_command_per_unit": self
                .by_command
                .iter()
                .map(|(name, &n)| (name.clone(), per(n)))
                .collect::<BTreeMap<_, _>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(total: u64, evalsha: u64, get: u64, info: u64) -> String {
        format!(
            "# Stats\r\ntotal_connections_received:3\r\ntotal_commands_processed:{total}\r\n\
             # Commandstats\r\ncmdstat_evalsha:calls={evalsha},usec=10,usec_per_call=1.00\r\n\
             cmdstat_get:calls={get},usec=10,usec_per_call=1.00\r\n\
             cmdstat_info:calls={info},usec=5,usec_per_call=1.00\r\n"
        )
    }

    #[test]
    fn the_readings_own_info_calls_are_left_out() {
        let before = Counters::parse(&reply(100, 40, 10, 7)).expect("parses");
        let after = Counters::parse(&reply(113, 52, 10, 8)).expect("parses");
        let spent = before.until(&after);
        assert_eq!((spent.total, spent.sent), (12, 12));
        let by_command = BTreeMap::from([("evalsha".to_owned(), 12)]);
        assert_eq!(spent.by_command, by_command);
    }

    #[test]
    fn commands_run_inside_scripts_are_not_counted_as_sent() {
        let before = Counters::parse(&reply(100, 40, 10, 7)).expect("parses");
        let after = Counters::parse(&reply(131, 50, 30, 8)).expect("parses");
        let spent = before.until(&after);
        assert_eq!((spent.total, spent.sent), (30, 10));
    }

    #[test]
    fn urls_name_a_port_and_no_password() {
        assert!(Redis::new("redis://127.0.0.1:6379").is_ok());
        assert!(Redis::new("redis://127.0.0.1:6379/0").is_ok());
        assert!(Redis::new("redis://127.0.0.1").is_err());
        assert!(Redis::new("redis://:secret@127.0.0.1:6379").is_err());
        assert!(Redis::new("http://127.0.0.1:6379").is_err());
    }
}
