//! Test harness: a relay on 127.0.0.1:0 in this process, and a typed WebSocket peer.
#![allow(dead_code)]

pub mod fly_proxy;
pub mod redis;

use futures_util::{SinkExt, StreamExt};
use intercessor::{Config, Relay};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async_with_config};
use tokio_util::sync::CancellationToken;

/// Longest any single expectation may wait: a bug fails fast instead of hanging.
pub const PATIENCE: Duration = Duration::from_secs(5);

/// A relay serving in the background; dropping it shuts it down.
pub struct TestRelay {
    pub addr: SocketAddr,
    /// Where `/metrics` is served, when the config asked for it.
    pub metrics_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// A configuration listening on a free loopback port.
pub fn config() -> Config {
    Config {
        listen: "127.0.0.1:0".parse().expect("valid address"),
        ..Config::default()
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

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket peer with expectations that time out instead of hanging.
pub struct TestPeer {
    pub ws: Socket,
    pub id: String,
}

impl TestPeer {
    /// Connects without reading HELLO.
    pub async fn connect_raw(url: &str) -> Socket {
        let (ws, _) = tokio::time::timeout(PATIENCE, connect_async_with_config(url, None, true))
            .await
            .expect("connect in time")
            .expect("upgrade accepted");
        ws
    }

    /// Connects with extra request headers.
    pub async fn connect_with(
        url: &str,
        headers: &[(&'static str, &str)],
    ) -> Result<Socket, WsError> {
        let mut request = url.into_client_request().expect("valid url");
        for (name, value) in headers {
            request
                .headers_mut()
                .insert(*name, value.parse().expect("valid header"));
        }
        let (ws, _) =
            tokio::time::timeout(PATIENCE, connect_async_with_config(request, None, true))
                .await
                .expect("connect in time")?;
        Ok(ws)
    }

    /// Connects from a chosen loopback address (all of 127.0.0.0/8 is local), with extra headers.
    pub async fn connect_from(source: &str, url: &str, headers: &[(&'static str, &str)]) -> Socket {
        let mut request = url.into_client_request().expect("valid url");
        for (name, value) in headers {
            request
                .headers_mut()
                .insert(*name, value.parse().expect("valid header"));
        }
        let host = request
            .uri()
            .authority()
            .expect("url has a host")
            .as_str()
            .to_owned();
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(format!("{source}:0").parse().expect("valid source"))
            .expect("bind source address");
        let stream = socket
            .connect(host.parse().expect("ip:port"))
            .await
            .expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let (ws, _) = tokio::time::timeout(
            PATIENCE,
            tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream)),
        )
        .await
        .expect("connect in time")
        .expect("upgrade accepted");
        ws
    }

    /// Connects and reads HELLO, keeping the id it carries.
    pub async fn join(url: &str) -> TestPeer {
        TestPeer::greeted(TestPeer::connect_raw(url).await).await
    }

    /// Reads HELLO on an open socket, keeping the id it carries.
    pub async fn greeted(ws: Socket) -> TestPeer {
        let mut peer = TestPeer {
            ws,
            id: String::new(),
        };
        let hello = peer.recv().await;
        assert_eq!(hello["from"], "0", "{hello}");
        assert_eq!(hello["type"], "HELLO", "{hello}");
        peer.id = hello["message"]["id"]
            .as_str()
            .expect("HELLO carries an id")
            .to_owned();
        peer
    }

    /// Registers a server on `relay`.
    pub async fn server(relay: &TestRelay) -> TestPeer {
        TestPeer::join(&relay.url("/server")).await
    }

    /// Joins `server` as a client and consumes the server's PEER_JOINED.
    pub async fn client_of(relay: &TestRelay, server: &mut TestPeer) -> TestPeer {
        let client = TestPeer::join(&relay.url(&format!("/client/{}", server.id))).await;
        server
            .expect_relay("PEER_JOINED", json!({"id": client.id}))
            .await;
        client
    }

    pub async fn send_json(&mut self, value: Value) {
        self.send_text(&value.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::text(text))
            .await
            .expect("send succeeds");
    }

    pub async fn send_to(&mut self, to: &str, kind: &str, message: Value) {
        self.send_json(json!({"to": to, "type": kind, "message": message}))
            .await;
    }

    /// Sends the client `to` more than loopback's socket buffers hold (160 messages of 60 KiB), so
    /// the relay's write to it blocks if it never reads. The relay needs [`overfill_config`]'s
    /// message and queue sizes.
    pub async fn overfill(&mut self, to: &str) {
        let chunk = "x".repeat(60 * 1024);
        for _ in 0..160 {
            self.send_to(to, "BULK", json!(chunk)).await;
        }
    }

    /// The next text frame, parsed; pings and pongs are skipped.
    pub async fn recv(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("a frame arrives in time")
                .expect("connection still open")
                .expect("frame is valid");
            match message {
                Message::Text(text) => {
                    return serde_json::from_str(&text).expect("frames are JSON");
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Expects a frame from the relay itself.
    pub async fn expect_relay(&mut self, kind: &str, message: Value) {
        let frame = self.recv().await;
        assert_eq!(
            frame,
            json!({"from": "0", "type": kind, "message": message})
        );
    }

    /// Expects an ERROR with `code`, returning its whole `message`.
    pub async fn expect_error(&mut self, code: &str) -> Value {
        let frame = self.recv().await;
        assert_eq!(frame["from"], "0", "{frame}");
        assert_eq!(frame["type"], "ERROR", "{frame}");
        assert_eq!(frame["message"]["code"], code, "{frame}");
        assert!(
            frame["message"]["reason"]
                .as_str()
                .is_some_and(|r| !r.is_empty()),
            "{frame}"
        );
        frame["message"].clone()
    }

    /// Expects the relay to close with `code`, skipping other frames, and then the connection to end.
    pub async fn expect_close(&mut self, code: u16) -> String {
        expect_close(&mut self.ws, code).await
    }
}

/// Reads until a close frame, asserts its code, and returns its reason.
pub async fn expect_close(ws: &mut Socket, code: u16) -> String {
    loop {
        let message = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("the close arrives in time");
        match message {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(
                    frame.code,
                    CloseCode::from(code),
                    "close reason: {}",
                    frame.reason
                );
                return frame.reason.to_string();
            }
            Some(Ok(Message::Close(None))) => panic!("closed without a code, expected {code}"),
            Some(Ok(_)) => continue,
            Some(Err(error)) => panic!("connection failed before close {code}: {error}"),
            None => panic!("connection ended without a close frame, expected {code}"),
        }
    }
}

/// Sends raw bytes over TCP and returns everything the relay answers until it closes.
pub async fn raw_http(addr: SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut response))
        .await
        .expect("response in time")
        .expect("read");
    String::from_utf8_lossy(&response).into_owned()
}

/// Status code of an HTTP/1.1 response.
pub fn status_of(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"))
}

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

/// A client TLS configuration that trusts exactly one CA file: no "insecure" switch anywhere.
pub fn trusting(ca: &std::path::Path) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(cert.expect("CA PEM")).expect("CA is usable");
    }
    client_tls(roots)
}

/// A client TLS configuration with the given trust anchors, on the relay's crypto provider.
pub fn client_tls(roots: rustls::RootCertStore) -> std::sync::Arc<rustls::ClientConfig> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Opens `wss://{host}{path}` over a TCP connection to `addr`, verifying the relay as `host`.
pub async fn connect_wss(
    addr: SocketAddr,
    host: &str,
    path: &str,
    trust: std::sync::Arc<rustls::ClientConfig>,
) -> Result<Socket, WsError> {
    let tcp = TcpStream::connect(addr).await.expect("tcp connect");
    tcp.set_nodelay(true).expect("nodelay");
    let url = format!("wss://{host}:{}{path}", addr.port());
    let connect = tokio_tungstenite::client_async_tls_with_config(
        url,
        tcp,
        None,
        Some(tokio_tungstenite::Connector::Rustls(trust)),
    );
    let (ws, _) = tokio::time::timeout(PATIENCE, connect)
        .await
        .expect("in time")?;
    Ok(ws)
}
