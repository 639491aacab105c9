//! Machine-wide TCP counters from `/proc/net/netstat` and `/proc/net/snmp`, read around a
//! measured interval: they show whether the kernel pruned, collapsed, dropped or retransmitted
//! anything while the run's figures were taken.

use serde_json::{Map, Value};
use std::collections::HashMap;
use std::fs;

/// The counters a run reports, as (section, name): receive-queue pruning and collapsing, backlog
/// and receive-queue drops, tail-loss probes, out-of-order queueing, timeouts, retransmissions.
pub const COUNTERS: [(&str, &str); 9] = [
    ("TcpExt", "PruneCalled"),
    ("TcpExt", "RcvPruned"),
    ("TcpExt", "TCPRcvCollapsed"),
    ("TcpExt", "TCPBacklogDrop"),
    ("TcpExt", "TCPRcvQDrop"),
    ("TcpExt", "TCPLossProbes"),
    ("TcpExt", "TCPOFOQueue"),
    ("TcpExt", "TCPTimeouts"),
    ("Tcp", "RetransSegs"),
];

/// One reading of [`COUNTERS`], in that order; `None` where this kernel has no such counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpSample(Vec<Option<u64>>);

/// What each of [`COUNTERS`] grew by between two readings; `None` where either lacked it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpDelta(Vec<Option<u64>>);

/// Every counter of a `/proc/net/{netstat,snmp}` text, keyed `Section.Name`.
///
/// Each section is a line of names followed by a line of values, both starting `Section:`.
/// Values that are not unsigned (`Tcp: MaxConn` is `-1`) are skipped, and a names line without
/// its values line is passed over: an odd file loses counters, it does not fail the run.
pub fn parse(text: &str) -> HashMap<String, u64> {
    let mut counters = HashMap::new();
    let mut names: Option<(&str, &str)> = None;
    for line in text.lines() {
        let Some((section, fields)) = line.split_once(':') else {
            names = None;
            continue;
        };
        match names.take() {
            Some((named, names)) if named == section => {
                for (name, value) in names.split_whitespace().zip(fields.split_whitespace()) {
                    if let Ok(value) = value.parse() {
                        counters.insert(format!("{section}.{name}"), value);
                    }
                }
            }
            _ => names = Some((section, fields)),
        }
    }
    counters
}

impl TcpSample {
    /// The counters of the two files' texts.
    pub fn from_texts(netstat: &str, snmp: &str) -> TcpSample {
        let mut all = parse(netstat);
        all.extend(parse(snmp));
        TcpSample(
            COUNTERS
                .iter()
                .map(|(section, name)| all.get(&format!("{section}.{name}")).copied())
                .collect(),
        )
    }

    /// Reads the counters now; a file that cannot be read leaves its counters absent.
    pub fn read() -> TcpSample {
        let netstat = fs::read_to_string("/proc/net/netstat").unwrap_or_default();
        let snmp = fs::read_to_string("/proc/net/snmp").unwrap_or_default();
        TcpSample::from_texts(&netstat, &snmp)
    }

    /// Growth between `self` (earlier) and `later`.
    pub fn until(&self, later: &TcpSample) -> TcpDelta {
        TcpDelta(
            self.0
                .iter()
                .zip(&later.0)
                .map(|(before, after)| Some(after.as_ref()?.saturating_sub(*before.as_ref()?)))
                .collect(),
        )
    }
}

impl TcpDelta {
    /// Counter name and growth, in [`COUNTERS`] order.
    pub fn each(&self) -> impl Iterator<Item = (&'static str, Option<u64>)> + '_ {
        COUNTERS
            .iter()
            .map(|(_, name)| *name)
            .zip(self.0.iter().copied())
    }

    /// `{"PruneCalled": 0, ...}`, `null` for an absent counter.
    pub fn json(&self) -> Value {
        let map: Map<String, Value> = self
            .each()
            .map(|(name, grew)| (name.to_owned(), grew.map_or(Value::Null, Value::from)))
            .collect();
        Value::Object(map)
    }

    /// `PruneCalled 0, RcvPruned 0, ...`, `absent` for an absent counter.
    pub fn text(&self) -> String {
        self.each()
            .map(|(name, grew)| match grew {
                Some(grew) => format!("{name} {grew}"),
                None => format!("{name} absent"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cut from a 6.1 kernel's `/proc/net/netstat` (most TcpExt fields left out).
    const NETSTAT: &str = "\
TcpExt: SyncookiesSent PruneCalled RcvPruned TCPRcvCollapsed TCPBacklogDrop TCPRcvQDrop TCPLossProbes TCPOFOQueue TCPTimeouts
TcpExt: 0 12 1 340 2 0 77 5 9
IpExt: InNoRoutes InTruncatedPkts
IpExt: 0 0
";

    /// A 6.1 kernel's `/proc/net/snmp`, Ip and Tcp only.
    const SNMP: &str = "\
Ip: Forwarding DefaultTTL InReceives
Ip: 1 64 123456
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors
Tcp: 1 200 120000 -1 5000 4990 3 10 20 900000 910000 42 0 15 0
";

    #[test]
    fn every_counter_is_found_in_its_section() {
        let sample = TcpSample::from_texts(NETSTAT, SNMP);
        assert_eq!(
            sample.0,
            [12, 1, 340, 2, 0, 77, 5, 9, 42].map(Some).to_vec()
        );
    }

    #[test]
    fn negative_values_are_skipped_and_other_sections_kept() {
        let counters = parse(SNMP);
        assert_eq!(counters.get("Tcp.MaxConn"), None);
        assert_eq!(counters.get("Tcp.RtoMin"), Some(&200));
        assert_eq!(counters.get("Ip.InReceives"), Some(&123_456));
    }

    #[test]
    fn an_older_kernels_missing_counters_are_absent() {
        let old = "TcpExt: PruneCalled RcvPruned\nTcpExt: 3 4\n";
        let sample = TcpSample::from_texts(old, "");
        assert_eq!(sample.0[..2], [Some(3), Some(4)]);
        assert!(sample.0[2..].iter().all(Option::is_none));
        let delta = sample.until(&TcpSample::from_texts(
            "TcpExt: PruneCalled RcvPruned\nTcpExt: 5 4\n",
            "",
        ));
        assert_eq!(delta.json()["PruneCalled"], 2);
        assert_eq!(delta.json()["RetransSegs"], Value::Null);
        assert!(
            delta
                .text()
                .starts_with("PruneCalled 2, RcvPruned 0, TCPRcvCollapsed absent")
        );
    }

    #[test]
    fn a_names_line_without_values_is_passed_over() {
        let odd = "TcpExt: PruneCalled\nIpExt: InNoRoutes InTruncatedPkts\nIpExt: 1 2\nTcpExt: RcvPruned\n";
        let counters = parse(odd);
        assert_eq!(counters.len(), 2);
        assert_eq!(counters.get("IpExt.InTruncatedPkts"), Some(&2));
    }

    #[test]
    fn deltas_are_taken_counter_by_counter() {
        let before = TcpSample::from_texts(NETSTAT, SNMP);
        let later_snmp = SNMP.replace(" 42 0 15 0", " 50 0 15 0");
        let delta = before.until(&TcpSample::from_texts(NETSTAT, &later_snmp));
        assert_eq!(delta.each().last(), Some(("RetransSegs", Some(8))));
        assert!(delta.each().take(8).all(|(_, grew)| grew == Some(0)));
    }
}
