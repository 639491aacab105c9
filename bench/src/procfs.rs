//! The measured process's CPU time and resident memory, read from `/proc`.

use anyhow::{Context as _, Result, anyhow, bail};
use std::fs;
use std::process::Command;

/// Ticks per second Linux uses for `/proc/PID/stat` when `getconf` cannot say; 100 on every
/// mainstream architecture.
const ASSUMED_CLK_TCK: u64 = 100;

/// A process watched by PID.
pub struct Watched {
    pid: u32,
    /// `getconf CLK_TCK`, or [`ASSUMED_CLK_TCK`].
    clk_tck: u64,
    /// Whether `clk_tck` was assumed rather than asked for.
    clk_tck_assumed: bool,
}

/// CPU time consumed so far, from two sources that should agree within a tick.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    /// Sum of every live thread's `/proc/PID/task/TID/schedstat` first field (ns on CPU); `None`
    /// without schedstats. Precise, but a thread that exited takes its time with it.
    pub schedstat_ns: Option<u64>,
    /// `utime + stime` from `/proc/PID/stat` (whole process, exited threads included), in ns.
    /// Coarse: a clock tick is 10 ms at 100 Hz.
    pub stat_ns: u64,
}

/// CPU time over an interval, and where it came from.
#[derive(Debug, Clone, Copy)]
pub struct CpuSpent {
    /// The figure to use: schedstat when both samples had it and no thread exited between them,
    /// otherwise `/proc/PID/stat`.
    pub ns: u64,
    /// `"schedstat"` or `"stat"`.
    pub source: &'static str,
    /// The `/proc/PID/stat` figure, for comparison.
    pub stat_ns: u64,
}

impl Watched {
    /// Checks that the process exists and learns the clock tick rate.
    pub fn new(pid: u32) -> Result<Watched> {
        fs::metadata(format!("/proc/{pid}/stat"))
            .with_context(|| format!("no process with PID {pid}"))?;
        let asked = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .filter(|out| out.status.success())
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse::<u64>().ok())
            .filter(|&hz| hz > 0);
        Ok(Watched {
            pid,
            clk_tck: asked.unwrap_or(ASSUMED_CLK_TCK),
            clk_tck_assumed: asked.is_none(),
        })
    }

    /// A note for reports when the tick rate was assumed.
    pub fn clk_tck_note(&self) -> Option<String> {
        self.clk_tck_assumed.then(|| {
            format!("getconf CLK_TCK failed; assumed {ASSUMED_CLK_TCK} ticks/s for /proc/PID/stat")
        })
    }

    /// Reads both CPU figures now.
    pub fn cpu(&self) -> Result<CpuSample> {
        Ok(CpuSample {
            schedstat_ns: self.schedstat_ns(),
            stat_ns: self.stat_ns()?,
        })
    }

    /// `VmRSS` in bytes.
    pub fn rss_bytes(&self) -> Result<u64> {
        let path = format!("/proc/{}/status", self.pid);
        let status = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let line = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .ok_or_else(|| anyhow!("{path} has no VmRSS line"))?;
        let kib: u64 = line
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .with_context(|| format!("VmRSS in {path}: {line:?}"))?;
        Ok(kib * 1024)
    }

    fn stat_ns(&self) -> Result<u64> {
        let path = format!("/proc/{}/stat", self.pid);
        let stat = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        // The command name is in parentheses and may hold spaces; fields after it are plain.
        let after_name = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .ok_or_else(|| anyhow!("unexpected {path}: {stat:?}"))?;
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        // Field 3 (state) is fields[0]; utime is field 14, stime field 15.
        let ticks = |index: usize| -> Result<u64> {
            fields
                .get(index)
                .and_then(|field| field.parse::<u64>().ok())
                .ok_or_else(|| anyhow!("unexpected {path}: {stat:?}"))
        };
        let total = ticks(11)? + ticks(12)?;
        Ok(total * 1_000_000_000 / self.clk_tck)
    }

    /// `/proc/PID/schedstat` alone covers only the main thread, so every thread's is summed.
    fn schedstat_ns(&self) -> Option<u64> {
        let tasks = fs::read_dir(format!("/proc/{}/task", self.pid)).ok()?;
        let mut total = 0u64;
        let mut any = false;
        for task in tasks.flatten() {
            let Ok(text) = fs::read_to_string(task.path().join("schedstat")) else {
                continue; // the thread exited while we looked
            };
            let ns: u64 = text.split_whitespace().next()?.parse().ok()?;
            total += ns;
            any = true;
        }
        any.then_some(total)
    }
}

impl CpuSample {
    /// CPU time between `self` (earlier) and `later`.
    pub fn until(&self, later: &CpuSample) -> CpuSpent {
        let stat_ns = later.stat_ns.saturating_sub(self.stat_ns);
        match (self.schedstat_ns, later.schedstat_ns) {
            (Some(before), Some(after)) if after >= before => CpuSpent {
                ns: after - before,
                source: "schedstat",
                stat_ns,
            },
            // A thread exited mid-run and took its time out of the sum (tokio ends idle blocking
            // threads): only the coarse whole-process figure still holds.
            _ => CpuSpent {
                ns: stat_ns,
                source: "stat",
                stat_ns,
            },
        }
    }
}

/// File descriptors the generator needs beyond its sockets (runtime, stdio, /proc reads).
const SPARE_FDS: u64 = 64;

/// Fails, ending with `advice`, unless this process may hold `pairs` pairs (two sockets each) open
/// at once.
pub fn check_room_for_pairs(pairs: usize, advice: &str) -> Result<()> {
    let need = 2 * pairs as u64 + SPARE_FDS;
    if let Some(limit) = open_files_limit()
        && need > limit
    {
        bail!(
            "{pairs} pairs held open together need about {need} open files but this process may \
             have {limit}; {advice}"
        );
    }
    Ok(())
}

/// The soft limit on this process's open files, from `/proc/self/limits`.
fn open_files_limit() -> Option<u64> {
    let limits = fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Waits until the process's RSS stops moving (two readings 250 ms apart within 64 KiB or 0.5%,
/// twice in a row), at least `min` and at most 10 s; returns the last reading.
pub async fn settled_rss(watched: &Watched, min: std::time::Duration) -> Result<u64> {
    use std::time::Duration;
    let started = tokio::time::Instant::now();
    let mut previous = watched.rss_bytes()?;
    let mut calm = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = watched.rss_bytes()?;
        let tolerance = (previous / 200).max(64 * 1024);
        calm = if now.abs_diff(previous) <= tolerance {
            calm + 1
        } else {
            0
        };
        previous = now;
        let waited = started.elapsed();
        if (calm >= 2 && waited >= min) || waited >= Duration::from_secs(10) {
            return Ok(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(schedstat_ns: Option<u64>, stat_ns: u64) -> CpuSample {
        CpuSample {
            schedstat_ns,
            stat_ns,
        }
    }

    #[test]
    fn schedstat_is_used_while_it_only_grows() {
        let spent = sample(Some(1_000), 0).until(&sample(Some(6_000), 10_000_000));
        assert_eq!((spent.ns, spent.source), (5_000, "schedstat"));
    }

    #[test]
    fn a_thread_that_exits_mid_run_falls_back_to_the_whole_process_figure() {
        let spent = sample(Some(9_000), 10_000_000).until(&sample(Some(2_000), 30_000_000));
        assert_eq!((spent.ns, spent.source), (20_000_000, "stat"));
    }
}
