//! A real `redis-server` on a free loopback port, without persistence, ended by PID.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Longest a starting redis-server may take to answer PING.
const START_PATIENCE: Duration = Duration::from_secs(5);

/// A running `redis-server`; dropping it kills it.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
}

/// A loopback port free right now, for a Redis started later.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

impl RedisServer {
    /// Starts one on a free port.
    pub fn start() -> RedisServer {
        RedisServer::start_on(free_port())
    }

    /// Starts one on `port` and waits until it answers PING.
    pub fn start_on(port: u16) -> RedisServer {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts (apt-get install redis-server)");
        let redis = RedisServer {
            port,
            child: Some(child),
        };
        let deadline = Instant::now() + START_PATIENCE;
        while redis.try_command(&["PING"]).as_deref() != Some("PONG") {
            assert!(
                Instant::now() < deadline,
                "redis-server on port {port} did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        redis
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name}");
    }

    /// Stops it answering (SIGSTOP), as a stalled Redis would.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Lets it answer again (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    /// Kills it and starts a fresh, empty one on the same port.
    pub fn restart(&mut self) {
        self.stop();
        *self = RedisServer::start_on(self.port);
    }

    /// Kills it (SIGKILL) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs one command over RESP and returns its reply as text: arrays one element per line,
    /// nil as an empty string.
    pub fn command(&self, args: &[&str]) -> String {
        self.try_command(args)
            .unwrap_or_else(|| panic!("redis {args:?} failed"))
    }

    fn try_command(&self, args: &[&str]) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).ok()?;
        read_reply(&mut BufReader::new(stream))
    }
}

fn read_reply(reader: &mut impl BufRead) -> Option<String> {
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let line = line.trim_end();
    let (kind, rest) = line.split_at_checked(1)?;
    match kind {
        "+" | ":" => Some(rest.to_owned()),
        "-" => Some(format!("ERR {rest}")),
        "$" if rest == "-1" => Some(String::new()),
        "$" => {
            let mut bulk = vec![0; rest.parse::<usize>().ok()? + 2];
            reader.read_exact(&mut bulk).ok()?;
            bulk.truncate(bulk.len() - 2);
            String::from_utf8(bulk).ok()
        }
        "*" => {
            let count: i64 = rest.parse().ok()?;
            let items: Option<Vec<String>> =
                (0..count.max(0)).map(|_| read_reply(reader)).collect();
            Some(items?.join("\n"))
        }
        _ => None,
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if self.child.is_some() {
            // A paused server must be resumed to die of anything but SIGKILL; kill is SIGKILL.
            self.stop();
        }
    }
}
