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

impl CpuSpent {
    /// Both figures together; the source is named only when both share it.
    pub fn plus(self, other: CpuSpent) -> CpuSpent {
        CpuSpent {
            ns: self.ns + other.ns,
            source: if self.source == other.source {
                self.source
            } else {
                "mixed"
            },
            stat_ns: self.stat_ns + other.stat_ns,
        }
    }
}

/// Processes whose CPU time is charged together to the same work: a cluster's relays and its
/// Redis, say, since a message crossing instances costs all of them.
pub struct Watchers(Vec<Watched>);

/// One [`CpuSample`] per watched process, in the order they were given.
pub struct GroupSample(Vec<(u32, CpuSample)>);

/// CPU time over an interval, summed over the processes and for each of them.
#[derive(Debug, Clone)]
pub struct GroupSpent {
    /// The sum, the figure work is charged with.
    pub total: CpuSpent,
    /// Each process's share, by PID, in the order given.
    pub each: Vec<(u32, CpuSpent)>,
}

impl Watchers {
    /// Watches `pids`; `None` when there are none.
    pub fn new(pids: &[u32]) -> Result<Option<Watchers>> {
        if pids.is_empty() {
            return Ok(None);
        }
        let watched = pids
            .iter()
            .map(|&pid| Watched::new(pid))
            .collect::<Result<_>>()?;
        Ok(Some(Watchers(watched)))
    }

    /// A note for reports when the tick rate was assumed (the same for every process).
    pub fn clk_tck_note(&self) -> Option<String> {
        self.0.first().and_then(Watched::clk_tck_note)
    }

    /// Reads every process's CPU figures now.
    pub fn cpu(&self) -> Result<GroupSample> {
        let samples = self
            .0
            .iter()
            .map(|watched| Ok((watched.pid, watched.cpu()?)))
            .collect::<Result<_>>()?;
        Ok(GroupSample(samples))
    }
}

impl GroupSample {
    /// CPU time between `self` (earlier) and `later`, each process's fallback chosen on its own.
    pub fn until(&self, later: &GroupSample) -> GroupSpent {
        let each: Vec<(u32, CpuSpent)> = self
            .0
            .iter()
            .zip(&later.0)
            .map(|((pid, before), (_, after))| (*pid, before.until(after)))
            .collect();
        let total = each
            .iter()
            .map(|(_, spent)| *spent)
            .reduce(CpuSpent::plus)
            .unwrap_or(CpuSpent {
                ns: 0,
                source: "stat",
                stat_ns: 0,
            });
        GroupSpent { total, each }
    }
}

impl GroupSpent {
    /// Both intervals together, process by process.
    pub fn plus(&self, other: &GroupSpent) -> GroupSpent {
        GroupSpent {
            total: self.total.plus(other.total),
            each: self
                .each
                .iter()
                .zip(&other.each)
                .map(|((pid, a), (_, b))| (*pid, a.plus(*b)))
                .collect(),
        }
    }

    /// How tables name the processes: `PID 12`, or `PIDs 12 + 13 + 14`.
    pub fn label(&self) -> String {
        let pids: Vec<String> = self.each.iter().map(|(pid, _)| pid.to_string()).collect();
        match pids.as_slice() {
            [one] => format!("PID {one}"),
            _ => format!("PIDs {}", pids.join(" + ")),
        }
    }

    /// A table row for the total over `seconds`: whose CPU, and how much of a core it took.
    pub fn row(&self, seconds: f64) -> (String, String) {
        let total = self.total;
        (
            format!("CPU of {} ({})", self.label(), total.source),
            format!(
                "{:.1} ms ({:.0}% of a core)",
                total.ns as f64 / 1e6,
                total.ns as f64 / 1e9 / seconds * 100.0
            ),
        )
    }

    /// The single PID when there is one (the JSON `pid` field keeps its old meaning), else null.
    pub fn single_pid(&self) -> Option<u32> {
        match self.each.as_slice() {
            [(pid, _)] => Some(*pid),
            _ => None,
        }
    }

    /// Each process's share as JSON: `[{"pid", "ns", "source"}...]`.
    pub fn each_json(&self) -> serde_json::Value {
        self.each
            .iter()
            .map(|(pid, spent)| serde_json::json!({"pid": pid, "ns": spent.ns, "source": spent.source}))
            .collect()
    }
}

/// File descriptors the generator needs beyond its sockets (runtime, stdio, /proc reads).
const SPARE_FDS: u64 = 64;

/// Fails, ending with `advice`, unless this process may hold `sockets` sockets open at once.
pub fn check_room_for_sockets(sockets: usize, advice: &str) -> Result<()> {
    let need = sockets as u64 + SPARE_FDS;
    if let Some(limit) = open_files_limit()
        && need > limit
    {
        bail!(
            "{sockets} sockets held open together need about {need} open files but this process \
             may have {limit}; {advice}"
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

    #[test]
    fn a_group_sums_its_processes_and_names_a_mixed_source() {
        let before = GroupSample(vec![(1, sample(Some(0), 0)), (2, sample(Some(50), 0))]);
        let after = GroupSample(vec![
            (1, sample(Some(100), 10_000_000)),
            (2, sample(Some(10), 20_000_000)),
        ]);
        let spent = before.until(&after);
        assert_eq!((spent.total.ns, spent.total.source), (20_000_100, "mixed"));
        assert_eq!(spent.single_pid(), None);
        assert_eq!(spent.label(), "PIDs 1 + 2");
    }
}
