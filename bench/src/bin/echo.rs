//! `intercessor-echo`: the cost floor for the relay. A bare WebSocket echo server on the relay's own
//! stack (tokio, hyper 1 HTTP/1 with upgrades, tokio-tungstenite `from_raw_socket`, one task per
//! connection, no split) that writes every text frame back: no JSON, no routing, no queues.
//!
//! A connection to `/pair/KEY` is instead held until a second one opens on the same `KEY`; from then
//! on every text frame read on either is written unchanged on the other, both sockets served by one
//! task. That is the forwarding floor: what moving a frame from one socket to another costs on the
//! same stack, with no JSON, routing, queues or second task, so a relay's gap to it is its own.
//!
//! With `--tls-cert` and `--tls-key` it serves `wss://` on the relay's own TLS set-up (the same
//! rustls configuration, TLS socket and connection type), so a relay over TLS has a floor that
//! pays the same TLS cost per message.

use clap::Parser;
use futures_util::future::{Either, select};
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use intercessor::Config;
use intercessor::edge::net;
use intercessor::edge::response::{self, Body};
use intercessor::edge::stream::Stream;
use intercessor::edge::tls::TlsFiles;
use intercessor::edge::tls_socket::TlsSocket;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

/// The relay's `--handshake-timeout` default, applied the same way: it bounds the TLS handshake and
/// the request head together (the latter with hyper's header read timeout).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most connections waiting on `/pair/KEY` for their partner; beyond it a new one is dropped.
const MAX_WAITING: usize = 20_000;

/// An upgraded connection, as served here.
type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// The first connection of each `/pair/KEY`, until the second arrives.
static WAITING: LazyLock<Mutex<HashMap<String, Ws>>> = LazyLock::new(Mutex::default);

/// Bare WebSocket echo server: the floor the relay's per-message cost is compared with.
#[derive(Parser)]
#[command(name = "intercessor-echo", version)]
struct Cli {
    /// Address to listen on; the port actually bound is printed as `listening on ADDR`
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Threads, as the relay's `--threads`: 1 runs on one thread [default: the cores this process
    /// may run on]
    #[arg(long, value_name = "N")]
    threads: Option<NonZeroUsize>,
    /// Serve `wss://` with this PEM certificate chain, as the relay's --tls-cert (needs
    /// --tls-key)
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert, as the relay's --tls-key
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

/// The relay's own WebSocket buffers and limits, so the comparison is like for like.
fn websocket_config() -> WebSocketConfig {
    static CONFIG: LazyLock<WebSocketConfig> =
        LazyLock::new(|| net::websocket_config(Config::default().max_message_bytes));
    *CONFIG
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `TlsFiles::load` is the relay's `load_server_config`, and its `config` the one the relay
    // takes for each connection.
    let tls = match (&cli.tls_cert, &cli.tls_key) {
        (Some(cert), Some(key)) => match TlsFiles::load(cert, key) {
            Ok(tls) => Some(Arc::new(tls)),
            Err(error) => {
                eprintln!("error: {error:#}");
                return ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    let threads = cli.threads.unwrap_or_else(net::available_threads);
    let runtime = match net::runtime(threads) {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // On a worker, as the relay's accept loop.
    let serving = runtime.block_on(async {
        tokio::spawn(serve(cli.listen, tls))
            .await
            .map_err(std::io::Error::other)?
    });
    match serving {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Accepts connections forever, like the relay's accept loop, on a listener bound the same way;
/// with `tls`, each connection takes the configuration as the relay's does.
async fn serve(listen: SocketAddr, tls: Option<Arc<TlsFiles>>) -> std::io::Result<()> {
    let listener = net::listen(listen)?;
    eprintln!("listening on {}", listener.local_addr()?);
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_connection(stream, tls.clone()));
            }
            Err(error) => {
                eprintln!("accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The TLS handshake first when serving `wss://`, then HTTP, as the relay runs a connection.
async fn serve_connection(stream: TcpStream, tls: Option<Arc<TlsFiles>>) {
    let Some(tls) = tls else {
        return serve_http(stream.into(), HANDSHAKE_TIMEOUT).await;
    };
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    if let Ok(Ok(stream)) =
        timeout(HANDSHAKE_TIMEOUT, TlsSocket::accept(stream, tls.config())).await
    {
        let remaining = deadline.saturating_duration_since(Instant::now());
        serve_http(Stream::Tls(Box::new(stream)), remaining).await;
    }
}

/// HTTP/1 on one connection, with the relay's builder settings and connection type, until it is
/// upgraded or ends. Not through `net::http_io`: that holds the 101 back for the upgraded side's
/// first write, and an echo writes only after it has read.
async fn serve_http(stream: Stream, header_timeout: Duration) {
    let _ = net::http1(header_timeout)
        .serve_connection(TokioIo::new(stream), service_fn(upgrade))
        .with_upgrades()
        .await;
}

/// Answers any WebSocket upgrade: `/pair/KEY` forwards, any other path echoes; anything else
/// gets `400`.
async fn upgrade(mut request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let is_websocket = request
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let key = request.headers().get(header::SEC_WEBSOCKET_KEY).cloned();
    let (true, Some(key)) = (is_websocket, key) else {
        let mut response = Response::new(Body::default());
        *response.status_mut() = StatusCode::BAD_REQUEST;
        return Ok(response);
    };
    let pair_key = request
        .uri()
        .path()
        .strip_prefix("/pair/")
        .map(str::to_owned);
    let on_upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let ws = WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                Role::Server,
                Some(websocket_config()),
            )
            .await;
            match pair_key {
                Some(key) => pair(key, ws).await,
                None => echo(ws).await,
            }
        }
    });
    Ok(response::switching_protocols(&derive_accept_key(
        key.as_bytes(),
    )))
}

/// Writes every text frame back. Pings are answered and a close is returned by tungstenite
/// itself on the next read, which then ends the stream.
async fn echo<S>(mut ws: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(message) = ws.next().await {
        match message {
            Ok(Message::Text(text)) => {
                if ws.send(Message::Text(text)).await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

/// Holds the first connection of `key` until its partner arrives, then forwards between the two.
async fn pair(key: String, ws: Ws) {
    let partner = {
        let mut waiting = WAITING.lock().unwrap_or_else(PoisonError::into_inner);
        match waiting.remove(&key) {
            Some(partner) => partner,
            None => {
                if waiting.len() < MAX_WAITING {
                    waiting.insert(key, ws);
                }
                return;
            }
        }
    };
    forward(partner, ws).await;
}

/// Writes every text frame read on one connection unchanged on the other, until either ends;
/// then closes both. Pings and closes are answered by tungstenite itself, as in [`echo`].
async fn forward(mut first: Ws, mut second: Ws) {
    loop {
        let (text, to) = match select(first.next(), second.next()).await {
            Either::Left((Some(Ok(message)), _)) => (message, &mut second),
            Either::Right((Some(Ok(message)), _)) => (message, &mut first),
            Either::Left(_) | Either::Right(_) => break,
        };
        if let Message::Text(text) = text
            && to.send(Message::Text(text)).await.is_err()
        {
            break;
        }
    }
    let _ = first.close(None).await;
    let _ = second.close(None).await;
}
