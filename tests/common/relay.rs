//! The relay under test, in this process: on 127.0.0.1:0, shut down when dropped.

use intercessor::relay::resume::ResumePolicy;
use intercessor::{Config, Relay};
use std::net::SocketAddr;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A relay serving in the background; dropping it shuts it down.
pub struct TestRelay {
    pub addr: SocketAddr,
    /// Where `/metrics` is served, when the config asked for it.
    pub metrics_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// A configuration listening on a free loopback port, resuming no session: every test written
/// before resumable sessions runs as it did (`--resume-window 0`); `tests/resume.rs` turns it on.
pub fn config() -> Config {
    let defaults = Config::default();
    Config {
        listen: "127.0.0.1:0".parse().expect("valid address"),
        resume: ResumePolicy {
            window: Duration::ZERO,
            ..defaults.resume
        },
        ..defaults
    }
}

/// [`config`] with the metrics listener on a free loopback port.
pub fn metrics_config() -> Config {
    Config {
        metrics_listen: Some("127.0.0.1:0".parse().expect("valid address")),
        ..config()
    }
}

/// A relay that takes [`TestPeer::overfill`]'s messages and queues them all for a client that
/// does not read: that client is never too slow, only stuck in a write.
pub fn overfill_config() -> Config {
    Config {
        rate_limit: 0,
        max_message_bytes: 64 * 1024,
        send_queue_bytes: 64 * 1024 * 1024,
        ..config()
    }
}

impl TestRelay {
    pub async fn start(config: Config) -> TestRelay {
        let relay = Relay::bind(config).await.expect("relay binds");
        let addr = relay.local_addr();
        let metrics_addr = relay.metrics_addr();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(relay.run(shutdown.clone()));
        TestRelay {
            addr,
            metrics_addr,
            shutdown,
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// Starts shutdown and waits until `run` has returned.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .expect("relay stops within its shutdown timeout")
                .expect("relay task does not panic");
        }
    }
}

impl Drop for TestRelay {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
