//! Property tests for the relay's four parsers of untrusted input, one file per subject:
//! `envelope` (peers' JSON envelopes and the frames relayed from them), `join_code` (codes as
//! people type them), `handshake` (the WebSocket upgrade check) and `config` (options from the
//! command line and from a file).
//!
//! Each property states what must hold for every input of a kind, so a change that breaks it fails
//! here with a shrunk counterexample. What must hold is written once, in `common/oracles.rs`, and
//! shared with the fuzz targets in `fuzz/`, which drive the same parsers with libFuzzer for much
//! longer runs. Inputs that once broke something are pinned as plain tests beside their subject.

#[path = "../common/mod.rs"]
mod common;

mod config;
mod envelope;
mod handshake;
mod join_code;

use proptest::test_runner::Config as ProptestConfig;

/// `default` cases per property, or `PROPTEST_CASES` when set (for a longer run); moderate by
/// default so the whole suite runs in seconds in a debug build. Failures are pinned as plain tests
/// rather than in proptest's regression files.
fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}
