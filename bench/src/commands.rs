//! `redis-commands`: the commands a cluster's relays send their Redis over an interval in which
//! the generator does nothing, so that what idle rooms cost the directory can be compared across
//! room counts (it should not grow with them: leases are per instance, not per room).

use crate::redis_info::{Commands, Redis};
use crate::report::{Report, round};
use anyhow::Result;
use serde_json::json;
use std::time::Duration;
use tokio::time::Instant;

/// The counts over the interval, and its length as measured.
pub struct Outcome {
    /// Commands between the two readings.
    pub commands: Commands,
    /// Time between the two readings.
    pub measured: Duration,
}

/// Reads the counters, waits `duration`, reads them again.
pub async fn measure(redis: &Redis, duration: Duration) -> Result<Outcome> {
    let before = redis.counters().await?;
    let started = Instant::now();
    eprintln!("redis-commands: counting for {duration:?}…");
    tokio::time::sleep(duration).await;
    let after = redis.counters().await?;
    Ok(Outcome {
        commands: before.until(&after),
        measured: started.elapsed(),
    })
}

/// The table and JSON for a run; `label` says what was running (`10000 idle rooms`).
pub fn report(url: &str, label: &str, outcome: &Outcome) -> Report {
    let seconds = outcome.measured.as_secs_f64();
    let commands = &outcome.commands;
    let per_s = |n: u64| n as f64 / seconds;
    let mut report = Report::new(
        format!("redis-commands → {url}: {label}, {seconds:.1} s"),
        json!({
            "command": "redis-commands",
            "url": url,
            "label": label,
            "measured_s": round(seconds, 3),
            "sent": commands.sent,
            "sent_per_s": round(per_s(commands.sent), 3),
            "total": commands.total,
            "total_per_s": round(per_s(commands.total), 3),
            "by_command": commands.by_command,
        }),
    );
    report.row(
        "commands sent per second (a script is one)",
        format!("{:.3} ({} in all)", per_s(commands.sent), commands.sent),
    );
    report.row(
        "commands run per second (inside scripts too)",
        format!("{:.3} ({} in all)", per_s(commands.total), commands.total),
    );
    report.row("by name", commands.breakdown());
    report
}
