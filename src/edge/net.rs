//! The plumbing every listener here shares, the bench's echo floor included: the runtime, how a
//! listener is bound, hyper's HTTP/1 settings, and the WebSocket buffers.

use crate::edge::coalesce::Coalesce101;
use crate::edge::stream::Stream;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket};
use tokio::runtime::Runtime;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// hyper's smallest allowed read buffer: signaling requests are a few hundred bytes of headers.
const HTTP_MAX_BUFFER: usize = 8 * 1024;

/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Connections the kernel queues before they are accepted: room for a burst of reconnects, such
/// as every peer of a relay that has just restarted.
const ACCEPT_BACKLOG: u32 = 1024;

/// Read buffer per WebSocket, and the most tungstenite reads at a time. It is memory every idle
/// peer holds, so it is small; the reads it takes per frame are served from memory (a plain
/// socket is read ahead, see `readahead`; rustls buffers a TLS one). A frame larger than this
/// grows the buffer to its own length, and tungstenite keeps that buffer until the session parks
/// (see `parking`).
pub(crate) const WS_READ_BUFFER: usize = 128;
/// Frames written are collected up to this size before tungstenite writes them out; a flush
/// after each batch sends the rest.
const WS_WRITE_BUFFER: usize = 16 * 1024;

/// A URL a person on this machine can open for a listener bound to `addr`: a wildcard address
/// is reached as `localhost`.
pub fn local_url(scheme: &str, addr: SocketAddr, path: &str) -> String {
    let port = addr.port();
    match addr.ip() {
        ip if ip.is_unspecified() => format!("{scheme}://localhost:{port}{path}"),
        std::net::IpAddr::V6(ip) => format!("{scheme}://[{ip}]:{port}{path}"),
        std::net::IpAddr::V4(ip) => format!("{scheme}://{ip}:{port}{path}"),
    }
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

/// hyper's HTTP/1 server as every listener here runs it: a request head must arrive within
/// `header_timeout` (which also bounds an idle keep-alive), in at most 8 KiB.
pub fn http1(header_timeout: Duration) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(HTTP_MAX_BUFFER);
    builder
}

/// A connection as hyper is given it. The metrics listener uses the same type, so hyper's HTTP/1
/// code is compiled once for both.
pub fn http_io(stream: impl Into<Stream>) -> TokioIo<Coalesce101<Stream>> {
    TokioIo::new(Coalesce101::new(stream.into()))
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpStream;

    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay_from_the_listener() {
        let listener = listen("127.0.0.1:0".parse().expect("address")).expect("listen");
        let address = listener.local_addr().expect("local address");
        let _client = TcpStream::connect(address).await.expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        assert!(accepted.nodelay().expect("read TCP_NODELAY"));
    }
}
