//! What /proc says of a process's memory.

use std::time::Duration;
use tokio::time::sleep;

/// `VmRSS` (or another `Vm*` line) of a process, in KiB.
pub fn vm_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// The relay's resident memory once the sessions an attack left behind have ended, in KiB.
/// Every attacker waits for the relay to drop it, so half a second is plenty.
pub async fn settled_rss(pid: u32) -> u64 {
    sleep(Duration::from_millis(500)).await;
    vm_kib(pid, "VmRSS:")
}
