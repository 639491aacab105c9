//! The listening relay: the runtime it runs on, the accept loop, one task per connection running
//! hyper's HTTP/1 server, and the graceful shutdown that drains every session.

use crate::config::{Config, TlsSource};
use crate::edge::coalesce::Coalesce101;
use crate::edge::devcert;
use crate::edge::http::{self, App};
use crate::edge::metrics::{self, Metrics, Scrape};
use crate::edge::session;
use crate::edge::stream::Stream;
use crate::edge::tls::TlsFiles;
use crate::relay::hub::Hub;
use crate::relay::limits::ConnectionSlots;
use anyhow::Context as _;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;
use tokio::time::{Instant, timeout};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

/// hyper's smallest allowed read buffer: signaling requests are a few hundred bytes of headers.
const HTTP_MAX_BUFFER: usize = 8 * 1024;

/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
pub(crate) const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Initial read buffer per WebSocket. tungstenite fills its whole capacity on every read, so this
/// is memory each idle peer really holds; signaling frames are a few hundred bytes, and a larger
/// message grows the buffer for its own length only.
pub const WS_READ_BUFFER: usize = 1024;
/// Frames written are collected up to this size before tungstenite writes them out; a flush
/// after each batch sends the rest.
pub const WS_WRITE_BUFFER: usize = 16 * 1024;

/// WebSocket buffers and limits sized for signaling rather than tungstenite's bulk-transfer
/// defaults (128 KiB buffers, 64 MiB messages).
pub fn websocket_config(max_message_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(WS_WRITE_BUFFER)
        // Past this tungstenite refuses to buffer more; writes wait for the socket long before.
        .max_write_buffer_size(WS_WRITE_BUFFER + 2 * max_message_bytes)
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes))
}

/// The runtime the relay runs on (and the bench's echo server, to compare like for like).
///
/// One thread gets tokio's current-thread scheduler. With no second worker to hand work to, the
/// multi-thread scheduler's bookkeeping buys nothing, yet the relay would pay it on every wake-up
/// (each relayed frame wakes its receiver's task). The relay's heap then also lives on the main
/// thread, which grows it with `brk` rather than a worker arena's page-by-page `mprotect`.
pub fn runtime(threads: NonZeroUsize) -> std::io::Result<Runtime> {
    let mut builder = if threads.get() == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads.get());
        builder
    };
    builder.enable_all().build()
}

/// The default `--threads`: the cores this process may run on, within its CPU affinity and
/// cgroup quota (a one-vCPU VM or container gets one).
pub fn available_threads() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}

/// Connections the kernel queues before they are accepted: room for a burst of reconnects, such
/// as every peer of a relay that has just restarted.
const ACCEPT_BACKLOG: u32 = 1024;

/// Binds a listener (the WebSocket one, and `--metrics-listen`) with `TCP_NODELAY`, which
/// accepted sockets inherit (Linux, the BSDs): one system call here instead of one per
/// connection. Signaling messages are small and latency-bound, so none is held back to coalesce
/// with the next.
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

/// A bound relay, ready to [`run`](Relay::run).
pub struct Relay {
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    app: Arc<App>,
    tls: Option<Arc<TlsFiles>>,
}

impl Relay {
    /// Binds `config.listen`; port 0 picks a free port (see [`Relay::local_addr`]).
    pub async fn bind(config: Config) -> anyhow::Result<Relay> {
        let listener =
            listen(config.listen).with_context(|| format!("binding --listen {}", config.listen))?;
        let metrics_listener = match config.metrics_listen {
            Some(addr) => {
                Some(listen(addr).with_context(|| format!("binding --metrics-listen {addr}"))?)
            }
            None => None,
        };
        let tls = match &config.tls {
            None => None,
            Some(TlsSource::Files { cert, key }) => Some(Arc::new(TlsFiles::load(cert, key)?)),
            Some(TlsSource::Dev { dir }) => {
                let (paths, outcome) = devcert::ensure(dir, &[])?;
                let port = listener
                    .local_addr()
                    .map_or(config.listen.port(), |a| a.port());
                info!(
                    %outcome,
                    "development TLS: trust {ca} once, e.g. `curl --cacert {ca} https://localhost:{port}/healthz`; \
                     in a browser, import {ca} as a certificate authority (see certs/README.md)",
                    ca = paths.ca_cert.display(),
                );
                Some(Arc::new(TlsFiles::load(&paths.cert, &paths.key)?))
            }
        };
        let websocket = websocket_config(config.max_message_bytes);
        let app = App {
            slots: ConnectionSlots::new(
                config.max_connections,
                config.max_connections_per_ip,
                config.max_failed_attempts_per_minute,
            ),
            tracker: TaskTracker::new(),
            websocket,
            sessions: Arc::new(session::Context {
                hub: Hub::new(config.code_length, config.max_clients_per_server),
                config: Arc::new(config),
                shutdown: CancellationToken::new(),
                metrics: Metrics::new(),
            }),
        };
        Ok(Relay {
            listener,
            metrics_listener,
            app: Arc::new(app),
            tls,
        })
    }

    /// The address metrics are served on, when `--metrics-listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The TLS certificate in use, for reloading it (on SIGHUP); `None` when serving plain HTTP.
    pub fn tls(&self) -> Option<Arc<TlsFiles>> {
        self.tls.clone()
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has a local address")
    }

    /// Serves until `shutdown` is cancelled, then closes every session with `1001` and waits for
    /// them, at most `--shutdown-timeout`.
    pub async fn run(self, shutdown: CancellationToken) {
        let Relay {
            listener,
            metrics_listener,
            app,
            tls,
        } = self;
        let config = app.sessions.config.clone();
        let metrics_task = metrics_listener.map(|listener| {
            let scrape = Arc::new(Scrape {
                sessions: app.sessions.clone(),
                slots: app.slots.clone(),
            });
            tokio::spawn(metrics::serve(listener, scrape))
        });
        info!(
            listen = %listener.local_addr().map_or(config.listen, |a| a),
            threads = tokio::runtime::Handle::current().metrics().num_workers(),
            "relay listening"
        );
        let pending = Arc::new(Semaphore::new(config.max_pending_connections));
        loop {
            // A connection is accepted only once there is room for it: beyond the bound, new
            // ones wait in the kernel's backlog rather than in the relay's memory.
            let accepted = async {
                let permit = pending.clone().acquire_owned().await;
                (permit, listener.accept().await)
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                (permit, accepted) = accepted => match (permit, accepted) {
                    (Ok(permit), Ok((stream, remote))) => {
                        let acceptor = tls.as_ref().map(|tls| tls.acceptor());
                        let connection = serve_connection(app.clone(), stream, remote, acceptor);
                        app.tracker.spawn(async move {
                            connection.await;
                            drop(permit);
                        });
                    }
                    (Err(_), _) => break,
                    (_, Err(error)) => {
                        warn!(%error, "accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                },
            }
        }
        drop(listener);
        info!(live = app.slots.live(), "shutting down");
        app.sessions.shutdown.cancel();
        app.sessions.hub.shut_down();
        app.tracker.close();
        if tokio::time::timeout(config.shutdown_timeout, app.tracker.wait())
            .await
            .is_err()
        {
            warn!(
                live = app.slots.live(),
                "shutdown timeout reached with sessions still open"
            );
        }
        if let Some(task) = metrics_task {
            task.abort();
        }
    }
}

/// Runs one accepted connection: TLS first when configured, then HTTP.
///
/// `--handshake-timeout` bounds the TLS handshake and the HTTP request together, so a client that
/// stalls in either holds no more than its socket, and not for long.
async fn serve_connection(
    app: Arc<App>,
    stream: TcpStream,
    remote: SocketAddr,
    tls: Option<TlsAcceptor>,
) {
    let handshake_timeout = app.sessions.config.handshake_timeout;
    let Some(acceptor) = tls else {
        return serve_http(app, Stream::Plain(stream), remote, handshake_timeout).await;
    };
    let deadline = Instant::now() + handshake_timeout;
    let shutdown = app.sessions.shutdown.clone();
    let handshake = tokio::select! {
        handshake = timeout(handshake_timeout, acceptor.accept(stream)) => handshake,
        _ = shutdown.cancelled() => return,
    };
    match handshake {
        Ok(Ok(stream)) => {
            let remaining = deadline.saturating_duration_since(Instant::now());
            serve_http(app, Stream::Tls(Box::new(stream)), remote, remaining).await;
        }
        Ok(Err(error)) => {
            app.sessions.metrics.tls_failure();
            debug!(%remote, %error, "TLS handshake failed");
        }
        Err(_) => {
            app.sessions.metrics.tls_failure();
            debug!(%remote, "TLS handshake timed out");
        }
    }
}

/// A connection as hyper is given it. The metrics listener uses the same type, so hyper's HTTP/1
/// code is compiled once for both.
pub(crate) fn http_io(stream: impl Into<Stream>) -> TokioIo<Coalesce101<Stream>> {
    TokioIo::new(Coalesce101::new(stream.into()))
}

/// Serves HTTP until the connection ends, is upgraded, or the relay shuts down.
async fn serve_http(app: Arc<App>, stream: Stream, remote: SocketAddr, header_timeout: Duration) {
    let shutdown = app.sessions.shutdown.clone();
    let service = service_fn(move |request| http::handle(app.clone(), remote, request));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(HTTP_MAX_BUFFER);
    let connection = builder
        .serve_connection(http_io(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = shutdown.cancelled() => {
            // Not a session (an upgrade ends this future), so nothing waits on it: a response
            // that can finish at once does, and a half-sent request head is dropped rather than
            // holding the drain for the whole --shutdown-timeout.
            connection.as_mut().graceful_shutdown();
            match std::future::poll_fn(|cx| Poll::Ready(connection.as_mut().poll(cx))).await {
                Poll::Ready(result) => result,
                Poll::Pending => return debug!(%remote, "connection dropped at shutdown"),
            }
        }
    };
    if let Err(error) = result {
        debug!(%remote, %error, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay_from_the_listener() {
        let listener = listen("127.0.0.1:0".parse().expect("address")).expect("listen");
        let address = listener.local_addr().expect("local address");
        let _client = TcpStream::connect(address).await.expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        assert!(accepted.nodelay().expect("read TCP_NODELAY"));
    }
}
