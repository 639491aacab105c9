//! The listening relay: the accept loop, one task per connection running
//! hyper's HTTP/1 server, and the graceful shutdown that drains every session.

use crate::config::{Config, TlsSource};
use crate::edge::admin;
use crate::edge::cluster::{Attachments, Cluster};
use crate::edge::devcert;
use crate::edge::http;
use crate::edge::net;
use crate::edge::state::Shared;
use crate::edge::stream::Stream;
use crate::edge::tls::TlsFiles;
use crate::edge::tls_socket::TlsSocket;
use crate::relay::admission;
use anyhow::Context as _;
use hyper::service::service_fn;
use rustls::ServerConfig;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// A bound relay, ready to [`run`](Relay::run).
pub struct Relay {
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shared: Arc<Shared>,
    tls: Option<Arc<TlsFiles>>,
}

impl Relay {
    /// Binds `config.listen`; port 0 picks a free port (see [`Relay::local_addr`]). The
    /// configuration is validated first: a `Config` built by hand gets the same checks as
    /// one read from the command line.
    pub async fn bind(config: Config) -> anyhow::Result<Relay> {
        config.validate()?;
        for origin in &config.allowed_origins {
            if let Some(mistake) = admission::origin_mistake(origin) {
                warn!("--allowed-origin {origin:?} will never match a browser: {mistake}");
            }
        }
        let listener = net::listen(config.listen)
            .with_context(|| format!("binding --listen {}", config.listen))?;
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(
                net::listen(addr).with_context(|| format!("binding --metrics-listen {addr}"))?,
            ),
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
        let mut shared = Shared::new(config);
        if let Some(cluster) = &shared.config.cluster {
            let attachments = Attachments {
                hub: shared.hub.clone(),
                metrics: shared.metrics.clone(),
                tracker: shared.tracker.clone(),
                shutdown: shared.shutdown.clone(),
                queue_bytes: shared.config.send_queue_bytes,
                max_members: shared.config.max_connections,
                resume_window: shared.config.resume.window,
            };
            let fly_machine_id = std::env::var("FLY_MACHINE_ID").ok();
            shared.cluster = Some(Cluster::start(cluster, fly_machine_id, attachments).await?);
        }
        Ok(Relay {
            listener,
            metrics_listener,
            shared: Arc::new(shared),
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
            shared,
            tls,
        } = self;
        let config = &shared.config;
        let metrics_task =
            metrics_listener.map(|listener| tokio::spawn(admin::serve(listener, shared.clone())));
        let directory_task = shared.cluster.clone().map(|cluster| {
            let maintain = cluster.maintain(
                shared.hub.clone(),
                shared.metrics.clone(),
                shared.shutdown.clone(),
            );
            tokio::spawn(maintain)
        });
        let listen = listener.local_addr().map_or(config.listen, |a| a);
        let scheme = if tls.is_some() { "https" } else { "http" };
        info!(
            %listen,
            url = net::local_url(scheme, listen, "/"),
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
                        let tls = tls.as_ref().map(|tls| tls.config());
                        let connection = serve_connection(shared.clone(), stream, remote, tls);
                        shared.tracker.spawn(async move {
                            connection.await;
                            drop(permit);
                        });
                    }
                    (Err(_), _) => break,
                    (_, Err(error)) => {
                        warn!(%error, "accept failed");
                        tokio::time::sleep(net::ACCEPT_BACKOFF).await;
                    }
                },
            }
        }
        drop(listener);
        info!(live = shared.slots.live(), "shutting down");
        shared.shutdown.cancel();
        // Before the peers hear 1001, so none of them is sent back here by a stale entry.
        if let Some(cluster) = &shared.cluster {
            cluster.drain().await;
        }
        shared.hub.shut_down();
        let pubsub = shared.cluster.as_ref().and_then(|cluster| cluster.pubsub());
        if let Some(pubsub) = pubsub {
            pubsub.links().shut_down();
        }
        shared.tracker.close();
        if tokio::time::timeout(config.shutdown_timeout, shared.tracker.wait())
            .await
            .is_err()
        {
            warn!(
                live = shared.slots.live(),
                "shutdown timeout reached with sessions still open"
            );
        }
        // The sessions' last frames and closes to other instances, forwarded by now, go out.
        if let Some(pubsub) = pubsub {
            pubsub.flush().await;
        }
        for task in [metrics_task, directory_task].into_iter().flatten() {
            task.abort();
        }
    }
}

/// Runs one accepted connection: TLS first when configured, then HTTP.
///
/// `--handshake-timeout` bounds the TLS handshake and the HTTP request together, so a client that
/// stalls in either holds no more than its socket, and not for long.
async fn serve_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    remote: SocketAddr,
    tls: Option<Arc<ServerConfig>>,
) {
    let handshake_timeout = shared.config.handshake_timeout;
    let Some(tls) = tls else {
        return serve_http(shared, stream.into(), remote, handshake_timeout).await;
    };
    let deadline = Instant::now() + handshake_timeout;
    let shutdown = shared.shutdown.clone();
    let handshake = tokio::select! {
        handshake = timeout(handshake_timeout, TlsSocket::accept(stream, tls)) => handshake,
        _ = shutdown.cancelled() => return,
    };
    match handshake {
        Ok(Ok(stream)) => {
            let remaining = deadline.saturating_duration_since(Instant::now());
            serve_http(shared, Stream::Tls(Box::new(stream)), remote, remaining).await;
        }
        Ok(Err(error)) => {
            shared.metrics.tls_failure();
            debug!(%remote, %error, "TLS handshake failed");
        }
        Err(_) => {
            shared.metrics.tls_failure();
            debug!(%remote, "TLS handshake timed out");
        }
    }
}

/// Serves HTTP until the connection ends, is upgraded, or the relay shuts down.
async fn serve_http(
    shared: Arc<Shared>,
    stream: Stream,
    remote: SocketAddr,
    header_timeout: Duration,
) {
    let shutdown = shared.shutdown.clone();
    let service = service_fn(move |request| http::handle(shared.clone(), remote, request));
    let connection = net::http1(header_timeout)
        .serve_connection(net::http_io(stream), service)
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
