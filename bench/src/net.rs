//! Opening WebSockets to the relay or the echo server, plain or TLS, and reading frames from them.

use anyhow::{Context as _, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream, client_async_tls_with_config};

/// One generator-side WebSocket.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Longest the generator waits for any one expected frame during set-up or tear-down.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Small buffers: the generator holds up to 20,000 sockets and its messages are a few hundred
/// bytes, so tungstenite's 128 KiB defaults would only cost memory and cache.
fn websocket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(16 * 1024)
        .max_write_buffer_size(1024 * 1024)
        .max_message_size(Some(1024 * 1024))
        .max_frame_size(Some(1024 * 1024))
}

/// Knows where the target listens and how to reach it; cheap to share between tasks.
pub struct Dialer {
    /// `ws://host:port` or `wss://host:port`, without a trailing slash.
    base: String,
    /// Host and port to open TCP connections to.
    host: String,
    port: u16,
    /// Present for `wss://`: trusts only the CA given with `--ca`.
    tls: Option<Arc<ClientConfig>>,
}

impl Dialer {
    /// Checks the URL and, for `wss://`, loads the CA; fails before any connection is attempted.
    pub fn new(url: &str, ca: Option<&Path>) -> Result<Dialer> {
        let base = url.trim_end_matches('/').to_owned();
        let request = base
            .as_str()
            .into_client_request()
            .with_context(|| format!("invalid --url {url:?}"))?;
        let uri = request.uri();
        let secure = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            _ => bail!("--url must start with ws:// or wss://, got {url:?}"),
        };
        if uri.path() != "/" && !uri.path().is_empty() {
            bail!(
                "--url names the relay's origin only (ws://HOST:PORT), got path {:?}",
                uri.path()
            );
        }
        let host = uri
            .host()
            .ok_or_else(|| anyhow!("--url {url:?} has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let tls = match (secure, ca) {
            (true, Some(ca)) => Some(Arc::new(client_tls(ca)?)),
            (true, None) => bail!("wss:// needs --ca FILE: the generator trusts only that CA"),
            (false, Some(_)) => bail!("--ca is for wss:// URLs; {url:?} is plain ws://"),
            (false, None) => None,
        };
        Ok(Dialer {
            base,
            host,
            port,
            tls,
        })
    }

    /// Whether connections use TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Opens a WebSocket at `path` (e.g. `/server`) with TCP_NODELAY, as a browser peer would.
    pub async fn open(&self, path: &str) -> Result<Ws> {
        let url = format!("{}{path}", self.base);
        let request = url.as_str().into_client_request()?;
        let stream = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .with_context(|| format!("TCP connect to {}:{}", self.host, self.port))?;
        stream.set_nodelay(true)?;
        let connector = match &self.tls {
            Some(config) => Connector::Rustls(config.clone()),
            None => Connector::Plain,
        };
        let (ws, _) = client_async_tls_with_config(
            request,
            stream,
            Some(websocket_config()),
            Some(connector),
        )
        .await
        .with_context(|| format!("WebSocket handshake with {url}"))?;
        Ok(ws)
    }
}

/// A rustls client configuration (ring provider) whose only trust anchors are the PEM file's.
fn client_tls(ca: &Path) -> Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .with_context(|| format!("reading CA file {}", ca.display()))?;
    for cert in certs {
        let cert = cert.with_context(|| format!("parsing CA file {}", ca.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("CA certificate in {}", ca.display()))?;
    }
    if roots.is_empty() {
        bail!("{} holds no certificate", ca.display());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The next text frame; pings and pongs are skipped (tungstenite answers pings by itself).
/// A close, a binary frame or the end of the stream is an error naming what came instead.
pub async fn next_text(ws: &mut Ws) -> Result<Utf8Bytes> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => return Ok(text),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Binary(_))) => bail!("unexpected binary frame"),
            Some(Ok(Message::Close(frame))) => match frame {
                Some(frame) => bail!("closed by the relay: {} {}", frame.code, frame.reason),
                None => bail!("closed by the relay without a code"),
            },
            Some(Err(error)) => return Err(error.into()),
            None => bail!("connection ended"),
        }
    }
}

/// The next text frame parsed as JSON, within [`PATIENCE`].
pub async fn next_json(ws: &mut Ws) -> Result<Value> {
    let text = timeout(PATIENCE, next_text(ws))
        .await
        .map_err(|_| anyhow!("no frame within {PATIENCE:?}"))??;
    serde_json::from_str(&text).with_context(|| format!("frame is not JSON: {text}"))
}

/// Reads the relay's HELLO and returns the id it carries.
pub async fn read_hello(ws: &mut Ws) -> Result<String> {
    let hello = next_json(ws).await?;
    if hello["from"] != "0" || hello["type"] != "HELLO" {
        bail!("expected HELLO, got {hello}");
    }
    hello["message"]["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("HELLO without an id: {hello}"))
}

/// Reads a frame the relay sends about a peer (`PEER_JOINED`, `PEER_GONE`) and checks its id.
pub async fn expect_relay_frame(ws: &mut Ws, kind: &str, id: &str) -> Result<()> {
    let frame = next_json(ws).await?;
    if frame["from"] == "0" && frame["type"] == kind && frame["message"]["id"] == id {
        Ok(())
    } else {
        bail!("expected {kind} for {id}, got {frame}")
    }
}

/// How our side of a closing handshake went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseOutcome {
    /// The other side answered our close frame with its own.
    Answered,
    /// The TCP connection ended without a close frame in reply.
    NoReply,
    /// Nothing ended within the grace period; the socket was dropped.
    TimedOut,
}

/// Starts the closing handshake and waits briefly for the reply, so both ends release the socket.
pub async fn close(ws: &mut Ws) -> CloseOutcome {
    let handshake = async {
        if ws.close(None).await.is_err() {
            return CloseOutcome::NoReply;
        }
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(_))) => {
                    // Let tungstenite finish: the next read ends the stream.
                    let _ = ws.next().await;
                    return CloseOutcome::Answered;
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return CloseOutcome::NoReply,
            }
        }
    };
    match timeout(Duration::from_secs(2), handshake).await {
        Ok(outcome) => outcome,
        Err(_) => {
            let _ = ws.flush().await;
            CloseOutcome::TimedOut
        }
    }
}

/// A fresh `/pair/KEY` path for the echo server's forwarding floor: the process id and a counter,
/// so that no two pairs of any run share a key.
pub fn pair_path() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "/pair/{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A server peer and one client of it, both past HELLO, the server past PEER_JOINED.
pub struct Pair {
    /// The `/server` side.
    pub server: Ws,
    /// The `/client/CODE` side.
    pub client: Ws,
    /// The server's join code, as HELLO gave it.
    pub code: String,
    /// The client's id, as its HELLO gave it.
    pub client_id: String,
}

/// Registers a server through `servers`, joins it with a client through `clients` (the same
/// dialer, or another instance's), and waits for the server to hear of the join.
pub async fn open_pair(servers: &Dialer, clients: &Dialer) -> Result<Pair> {
    let mut server = servers.open("/server").await?;
    let code = read_hello(&mut server).await.context("server HELLO")?;
    let (client, client_id) = join(clients, &code).await?;
    expect_relay_frame(&mut server, "PEER_JOINED", &client_id).await?;
    Ok(Pair {
        server,
        client,
        code,
        client_id,
    })
}

/// Joins the room `code` as a client, through `clients`, and returns it past HELLO with its id.
pub async fn join(clients: &Dialer, code: &str) -> Result<(Ws, String)> {
    let mut client = clients.open(&format!("/client/{code}")).await?;
    let client_id = read_hello(&mut client).await.context("client HELLO")?;
    Ok((client, client_id))
}
