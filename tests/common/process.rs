//! The `intercessor` binary as a child process, read through its JSON log.

use super::PATIENCE;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

/// The `intercessor` binary running on a free loopback port; killed on drop if still running.
pub struct RelayProcess {
    pub child: Child,
    /// `ws://` or `wss://` and the address it listens on.
    pub url: String,
    /// The bound address.
    pub addr: SocketAddr,
    /// The fields of the "relay listening" log line.
    pub listening: Value,
    /// Every JSON log line after the "relay listening" one.
    pub log: mpsc::Receiver<Value>,
}

impl RelayProcess {
    /// Starts the binary and reads its JSON log until it says where it listens.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> RelayProcess {
        let tls = args
            .iter()
            .any(|a| a.starts_with("--tls-cert") || a.starts_with("--dev-tls"));
        let mut child = relay_command(args, env)
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let stderr = child.stderr.take().expect("piped");
        let mut lines = BufReader::new(stderr).lines();
        let listening = loop {
            let line = lines
                .next()
                .expect("the relay logs before exiting")
                .expect("utf-8");
            let mut entry: Value =
                serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
            if entry["fields"]["message"] == "relay listening" {
                break entry["fields"].take();
            }
        };
        let listen = listening["listen"].as_str().expect("address").to_owned();
        let (sender, log) = mpsc::channel();
        // Keep draining the log so the relay never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Ok(entry) = serde_json::from_str(&line) {
                    let _ = sender.send(entry);
                }
            }
        });
        RelayProcess {
            child,
            url: format!("{}://{listen}", if tls { "wss" } else { "ws" }),
            addr: listen.parse().expect("a socket address"),
            listening,
            log,
        }
    }

    /// Waits for a log line whose message contains `text`.
    pub fn wait_for_log(&self, text: &str) -> Value {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let entry = self
                .log
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no log line containing {text:?}"));
            if entry["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(text))
            {
                return entry;
            }
        }
    }

    /// Sends a signal to the relay by PID.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binary with a loopback `--listen`, JSON logs, and no inherited `INTERCESSOR_*` settings.
pub fn relay_command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_intercessor"));
    command
        .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
        .args(args)
        .env_remove("PORT")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("INTERCESSOR_")) {
        command.env_remove(key);
    }
    command.envs(env.iter().copied());
    command
}

/// Runs the binary expecting it to refuse to start; returns its error output.
pub fn start_error(args: &[&str], env: &[(&str, &str)]) -> String {
    let output = relay_command(args, env).output().expect("the binary runs");
    assert!(!output.status.success(), "should refuse to start");
    String::from_utf8(output.stderr).expect("utf-8")
}

impl RelayProcess {
    /// Asserts the relay is still running: whatever the test did, it did not bring it down.
    pub fn assert_running(&mut self) {
        let exited = self.child.try_wait().expect("the relay's status");
        assert!(exited.is_none(), "the relay exited: {exited:?}");
    }
}
