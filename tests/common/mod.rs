//! Test harness shared by every integration test, one file per subject:
//!
//! - `relay`: [`TestRelay`], the relay in this process on 127.0.0.1:0;
//! - `peer`: [`TestPeer`], a typed WebSocket client;
//! - `process`: [`RelayProcess`], the built binary as a child process;
//! - `tls`: dev certificates, clients trusting one CA, `wss://`, a client that stalls its handshake;
//! - `raw`: HTTP and WebSocket frames by hand over plain TCP, and the relay's raw answers;
//! - `bystanders`: [`Bystanders`], well-behaved pairs that talk on while a test attacks;
//! - `garbage`: what a stranger sends instead of HTTP, and hyper's answer to each;
//! - `load`: load generators (slow loris, passing pairs, floods, quiet request/echo pairs);
//! - `procfs`: a process's memory as /proc reports it; `metrics`: the metrics as scraped;
//! - `oracles`: what the parsers must say of any input, shared with the fuzz targets in `fuzz/`;
//! - `redis`: a real `redis-server` on a free loopback port; `fly_proxy`: a stand-in for Fly's
//!   replaying proxy in front of several relay instances; `cluster`: relay processes sharing one
//!   Redis (used by `cluster.rs` and `pubsub.rs`).
//!
//! Each test binary uses a part of it, so what one leaves unused is allowed.
#![allow(dead_code)]

pub mod bystanders;
pub mod cluster;
pub mod fly_proxy;
pub mod garbage;
pub mod load;
pub mod metrics;
pub mod oracles;
pub mod peer;
pub mod process;
pub mod procfs;
pub mod raw;
pub mod redis;
pub mod relay;
pub mod tls;

// Flat, so a test names `common::TestPeer` without knowing which file holds it.
#[allow(unused_imports)]
pub use bystanders::*;
#[allow(unused_imports)]
pub use garbage::*;
#[allow(unused_imports)]
pub use load::*;
#[allow(unused_imports)]
pub use metrics::*;
#[allow(unused_imports)]
pub use peer::*;
#[allow(unused_imports)]
pub use process::*;
#[allow(unused_imports)]
pub use procfs::*;
#[allow(unused_imports)]
pub use raw::*;
#[allow(unused_imports)]
pub use relay::*;
#[allow(unused_imports)]
pub use tls::*;

use std::time::Duration;
use tokio::task::{JoinError, JoinSet};

/// Longest any single expectation may wait: a bug fails fast instead of hanging.
pub const PATIENCE: Duration = Duration::from_secs(5);

/// Allowance for a busy 2-core machine on top of any deadline the relay promises.
pub const SLACK: Duration = Duration::from_secs(2);

/// The `--handshake-timeout` of a relay that strangers attack: a stranger here (slow loris,
/// garbage, stalled TLS) gives the relay this and twice [`SLACK`] to drop it.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);

/// Re-raises a task's panic in the test.
pub fn surface<T>(result: Result<T, JoinError>) -> T {
    result.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// Waits for every task of `set`, re-raising the first panic.
pub async fn surface_all<T: 'static>(mut set: JoinSet<T>) -> Vec<T> {
    let mut results = Vec::new();
    while let Some(result) = set.join_next().await {
        results.push(surface(result));
    }
    results
}
