//! A TLS connection that holds no buffers while it is idle, on rustls's unbuffered API.
//!
//! rustls's buffered connection (what tokio-rustls drives) keeps a 4 KiB record buffer per
//! connection for the connection's whole life. Here the caller owns the buffers: ciphertext is read
//! into one buffer per thread and decrypted there, ciphertext to send is encrypted into another,
//! and a connection keeps bytes of its own only while it has to: a record that arrived in part,
//! plaintext the reader has not taken yet, and records the socket would not take yet. An idle
//! `wss://` peer then holds only rustls's keys and state.

use rustls::ServerConfig;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, UnbufferedStatus, WriteTraffic,
};
use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::unread::Unread;

/// The most one read from the socket takes: a full record with room to spare, or many small ones.
const GULP: usize = 18 * 1024;

/// The most plaintext encrypted per write: one full TLS record.
const RECORD: usize = 16 * 1024;

/// More than a record adds to its plaintext: header, nonce, content type and tag.
const RECORD_OVERHEAD: usize = 64;

/// The most ciphertext a connection holds between reads: a handshake message split over records
/// (rustls's buffered connection allows 64 KiB of them) and the start of the next record. A peer
/// that sends more without completing a message is cut off.
const MAX_HELD: usize = 72 * 1024;

/// The most the connection queues for a peer that does not read before it stops reading from that
/// peer too: records the reading side made (key updates, alerts) and one write's worth.
const MAX_QUEUED: usize = 64 * 1024;

thread_local! {
    /// Ciphertext being decrypted, shared by every connection this thread serves and only ever
    /// borrowed within one read. It grows past `GULP` only for a peer that splits a large
    /// handshake message.
    static INCOMING: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// Ciphertext just encrypted, shared the same way within one write.
    static OUTGOING: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A server-side TLS connection over TCP, after its handshake.
pub struct TlsSocket {
    tcp: TcpStream,
    tls: UnbufferedServerConnection,
    /// Ciphertext read and not yet decrypted: the start of a record or of a handshake message.
    held: Vec<u8>,
    /// Plaintext decrypted and not yet read.
    plaintext: Unread<Vec<u8>>,
    /// Ciphertext encrypted and not yet written, from `written` on.
    queued: Vec<u8>,
    written: usize,
    /// The peer sent close_notify, or closed the socket: reads return end of file.
    read_closed: bool,
    /// Our close_notify is queued.
    close_queued: bool,
    /// rustls failed: nothing more is read or written.
    failed: bool,
}

/// What a pass over the connection's records should do once the connection may send data.
enum Sending<'a> {
    Nothing,
    /// Encrypt `data` into `out`, setting `length` to the ciphertext's length.
    Data {
        data: &'a [u8],
        out: &'a mut Vec<u8>,
        length: &'a mut usize,
    },
    CloseNotify,
}

impl TlsSocket {
    /// Runs the server side of the handshake on `tcp`. The caller bounds it in time.
    pub async fn accept(tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<TlsSocket> {
        let tls = UnbufferedServerConnection::new(config).map_err(io::Error::other)?;
        let mut socket = TlsSocket {
            tcp,
            tls,
            held: Vec::new(),
            plaintext: Unread::default(),
            queued: Vec::new(),
            written: 0,
            read_closed: false,
            close_queued: false,
            failed: false,
        };
        poll_fn(|cx| socket.poll_handshake(cx)).await?;
        Ok(socket)
    }

    /// The application protocol agreed by ALPN, if any.
    #[cfg(test)]
    fn alpn_protocol(&self) -> Option<&[u8]> {
        self.tls.alpn_protocol()
    }

    /// Bytes the connection holds on its own behalf, beyond rustls's state.
    #[cfg(test)]
    fn buffered(&self) -> usize {
        self.held.capacity() + self.plaintext.capacity() + self.queued.capacity()
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.poll_write_queued(cx))?;
            if !self.tls.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if !ready!(self.poll_fill(cx))? {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection during the TLS handshake",
                )));
            }
        }
    }

    /// Reads once from the socket and processes every whole record there is; `false` at end of
    /// file.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        if self.held.len() >= MAX_HELD {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS handshake message too large",
            )));
        }
        INCOMING.with_borrow_mut(|incoming| {
            let held = self.held.len();
            if incoming.len() < held + GULP {
                incoming.resize(held + GULP, 0);
            }
            incoming[..held].copy_from_slice(&self.held);
            let mut read = ReadBuf::new(&mut incoming[held..held + GULP]);
            ready!(Pin::new(&mut self.tcp).poll_read(cx, &mut read))?;
            let end = held + read.filled().len();
            if end == held {
                return Poll::Ready(Ok(false));
            }
            let processed = match self.process(&mut incoming[..end], Sending::Nothing) {
                Ok(used) => {
                    self.hold(&incoming[used..end]);
                    Ok(true)
                }
                Err(error) => {
                    self.held = Vec::new();
                    self.send_alert();
                    Err(error)
                }
            };
            // Only what is held is kept: a buffer grown for one peer's split message goes back.
            if incoming.len() > 2 * GULP {
                incoming.truncate(GULP);
                incoming.shrink_to_fit();
            }
            Poll::Ready(processed)
        })
    }

    /// Keeps `rest`, the ciphertext rustls has not finished with, for the next read, releasing the
    /// allocation when there is none.
    fn hold(&mut self, rest: &[u8]) {
        if rest.is_empty() {
            self.held = Vec::new();
        } else {
            self.held.clear();
            self.held.extend_from_slice(rest);
        }
    }

    /// Processes the records in `incoming` until rustls needs more of them, doing `send` once it
    /// may; returns how much of `incoming` rustls is done with. Plaintext goes to `plaintext`,
    /// records rustls makes (handshake, tickets, key updates, alerts) to `queued`.
    fn process(&mut self, incoming: &mut [u8], mut send: Sending<'_>) -> io::Result<usize> {
        if self.failed {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the TLS connection failed earlier",
            ));
        }
        let mut used = 0;
        loop {
            let UnbufferedStatus { discard, state } =
                self.tls.process_tls_records(&mut incoming[used..]);
            let done = match state {
                Err(error) => {
                    self.failed = true;
                    self.queue_alerts()?;
                    return Err(invalid_data(error));
                }
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    while let Some(record) = traffic.next_record() {
                        let record = record.map_err(invalid_data)?;
                        self.plaintext.extend(record.payload);
                    }
                    false
                }
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    queue(&mut self.queued, |out| data.encode(out))?;
                    false
                }
                // Records are written from `queued` in the order they were encoded.
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    transmit.done();
                    false
                }
                Ok(ConnectionState::PeerClosed) => {
                    self.read_closed = true;
                    false
                }
                Ok(ConnectionState::Closed) => {
                    self.read_closed = true;
                    true
                }
                Ok(ConnectionState::BlockedHandshake) => true,
                Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                    match std::mem::replace(&mut send, Sending::Nothing) {
                        Sending::Nothing => {}
                        Sending::Data { data, out, length } => {
                            *length = encrypt(&mut traffic, data, out)?;
                        }
                        Sending::CloseNotify => {
                            queue(&mut self.queued, |out| traffic.queue_close_notify(out))?;
                        }
                    }
                    true
                }
                Ok(_) => {
                    return Err(invalid_data(
                        "unexpected TLS state (early data is not offered)",
                    ));
                }
            };
            used += discard;
            if done {
                return Ok(used);
            }
        }
    }

    /// Queues the alert a failure left in rustls, without letting rustls read any further: once
    /// it has failed it must not be asked to process records again.
    fn queue_alerts(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.process_tls_records(&mut []).state {
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    queue(&mut self.queued, |out| data.encode(out))?;
                }
                _ => break,
            }
        }
        Ok(())
    }

    /// Tries once, without waiting, to send an alert that a failure queued.
    fn send_alert(&mut self) {
        if let Some(alert) = self.queued.get(self.written..) {
            let _ = self.tcp.try_write(alert);
        }
        self.queued = Vec::new();
        self.written = 0;
    }

    /// Writes what is queued, releasing the allocation once all of it is written.
    fn poll_write_queued(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.queued.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.queued[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        if self.queued.capacity() > 0 {
            self.queued = Vec::new();
            self.written = 0;
        }
        Poll::Ready(Ok(()))
    }

    /// Runs a pass over the held records that does `send`.
    fn process_held(&mut self, send: Sending<'_>) -> io::Result<()> {
        let mut held = std::mem::take(&mut self.held);
        let used = self.process(&mut held, send)?;
        self.hold(&held[used..]);
        Ok(())
    }
}

/// Appends to `queued` the record `encode` writes, giving it room enough.
fn queue<E: Into<Box<dyn std::error::Error + Send + Sync>> + NeedsRoom>(
    queued: &mut Vec<u8>,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, E>,
) -> io::Result<()> {
    let start = queued.len();
    queued.resize(start + 256, 0);
    let encoded = match encode(&mut queued[start..]) {
        Err(error) => match error.room_needed() {
            Some(room) => {
                queued.resize(start + room, 0);
                encode(&mut queued[start..])
            }
            None => Err(error),
        },
        ok => ok,
    };
    match encoded {
        Ok(length) => {
            queued.truncate(start + length);
            Ok(())
        }
        Err(error) => {
            queued.truncate(start);
            Err(io::Error::other(error))
        }
    }
}

/// rustls's encoding errors, one of which says how much room the record needs.
trait NeedsRoom {
    fn room_needed(&self) -> Option<usize>;
}

impl NeedsRoom for EncodeError {
    fn room_needed(&self) -> Option<usize> {
        match self {
            EncodeError::InsufficientSize(need) => Some(need.required_size),
            _ => None,
        }
    }
}

impl NeedsRoom for EncryptError {
    fn room_needed(&self) -> Option<usize> {
        match self {
            EncryptError::InsufficientSize(need) => Some(need.required_size),
            _ => None,
        }
    }
}

/// Encrypts `data` into `out`, growing it if it is too small (it never shrinks: it is the thread's),
/// and returns the ciphertext's length.
fn encrypt(
    traffic: &mut WriteTraffic<'_, ServerConnectionData>,
    data: &[u8],
    out: &mut Vec<u8>,
) -> io::Result<usize> {
    if out.len() < data.len() + RECORD_OVERHEAD {
        out.resize(data.len() + RECORD_OVERHEAD, 0);
    }
    let encrypted = match traffic.encrypt(data, out) {
        Err(EncryptError::InsufficientSize(need)) => {
            out.resize(need.required_size, 0);
            traffic.encrypt(data, out)
        }
        other => other,
    };
    encrypted.map_err(io::Error::other)
}

fn invalid_data(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

impl AsyncRead for TlsSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.plaintext.is_empty() {
                ready!(this.plaintext.poll_take(cx, buf));
                return Poll::Ready(Ok(()));
            }
            if this.read_closed {
                return Poll::Ready(Ok(()));
            }
            // Records the reading side made go out before more is read; a peer that reads none
            // of them is read no further.
            if let Poll::Ready(Err(error)) = this.poll_write_queued(cx) {
                return Poll::Ready(Err(error));
            }
            if this.queued.len() - this.written > MAX_QUEUED {
                return Poll::Pending;
            }
            if !ready!(this.poll_fill(cx))? {
                this.read_closed = true;
                if !this.held.is_empty() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the peer closed the connection inside a TLS record",
                    )));
                }
            }
        }
    }
}

impl AsyncWrite for TlsSocket {
    /// Encrypts up to one record of `buf` and writes it; what the socket does not take is queued,
    /// and the next write waits until it is written.
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_write_queued(cx))?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let data = &buf[..buf.len().min(RECORD)];
        OUTGOING.with_borrow_mut(|out| {
            let mut length = 0;
            this.process_held(Sending::Data {
                data,
                out,
                length: &mut length,
            })?;
            if length == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "the TLS connection cannot send: its handshake is not complete",
                )));
            }
            let out = &out[..length];
            if !this.queued.is_empty() {
                // Records rustls made on this pass go first.
                this.queued.extend_from_slice(out);
                if let Poll::Ready(Err(error)) = this.poll_write_queued(cx) {
                    return Poll::Ready(Err(error));
                }
                return Poll::Ready(Ok(data.len()));
            }
            match Pin::new(&mut this.tcp).poll_write(cx, out) {
                Poll::Ready(Ok(n)) => this.queued.extend_from_slice(&out[n..]),
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => this.queued.extend_from_slice(out),
            }
            Poll::Ready(Ok(data.len()))
        })
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_queued(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    /// Sends close_notify, then shuts the socket's sending side.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_queued {
            this.close_queued = true;
            this.process_held(Sending::CloseNotify)?;
        }
        ready!(this.poll_write_queued(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::{devcert, tls};
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, ServerName};
    use rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_rustls::TlsConnector;
    use tokio_rustls::client::TlsStream;

    /// A relay-side socket and a tokio-rustls client joined over loopback, speaking `version`.
    async fn pair(version: &'static SupportedProtocolVersion) -> (TlsSocket, TlsStream<TcpStream>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let (paths, _) = devcert::ensure(dir.path(), &[]).expect("development certificates");
        let config = tls::load_server_config(&paths.cert, &paths.key).expect("loads");
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(&paths.ca_cert).expect("a CA certificate"))
            .expect("a usable CA");
        let client = ClientConfig::builder_with_provider(tls::provider())
            .with_protocol_versions(&[version])
            .expect("ring supports it")
            .with_root_certificates(roots)
            .with_no_client_auth();

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            TlsSocket::accept(tcp, config)
                .await
                .expect("server handshake")
        });
        let name = ServerName::try_from("localhost").expect("a valid name");
        let tcp = TcpStream::connect(address).await.expect("connect");
        let client = TlsConnector::from(Arc::new(client))
            .connect(name, tcp)
            .await
            .expect("client handshake");
        (server.await.expect("server task"), client)
    }

    /// 40,000 bytes that do not repeat at any record boundary.
    fn pattern() -> Vec<u8> {
        (0..40_000u32).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// Reads `n` bytes in reads of at most 128, as tungstenite reads a WebSocket.
    async fn read_in_small_pieces(socket: &mut TlsSocket, n: usize) -> Vec<u8> {
        let mut received = Vec::new();
        let mut piece = [0; 128];
        while received.len() < n {
            let read = socket.read(&mut piece).await.expect("read");
            assert_ne!(read, 0, "end of file after {} bytes", received.len());
            received.extend_from_slice(&piece[..read]);
        }
        received
    }

    #[tokio::test]
    async fn data_crosses_both_ways_and_an_idle_socket_holds_no_buffer() {
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let (mut server, mut client) = pair(version).await;
            assert_eq!(server.alpn_protocol(), None);
            let sent = pattern();

            client.write_all(&sent).await.expect("client write");
            client.flush().await.expect("client flush");
            let received = read_in_small_pieces(&mut server, sent.len()).await;
            assert_eq!(received, sent, "{version:?}: client to server");

            server.write_all(&sent).await.expect("server write");
            server.flush().await.expect("server flush");
            let mut received = vec![0; sent.len()];
            client.read_exact(&mut received).await.expect("client read");
            assert_eq!(received, sent, "{version:?}: server to client");

            assert_eq!(server.buffered(), 0, "{version:?}: idle, nothing is held");
        }
    }

    #[tokio::test]
    async fn a_key_update_from_the_peer_is_answered_before_the_next_data() {
        let (mut server, mut client) = pair(&rustls::version::TLS13).await;
        client.write_all(b"before").await.expect("write");
        client
            .get_mut()
            .1
            .refresh_traffic_keys()
            .expect("a key update");
        client.write_all(b" after").await.expect("write");
        client.flush().await.expect("flush");

        let received = read_in_small_pieces(&mut server, 12).await;
        assert_eq!(received, b"before after");

        // The client asked for new keys both ways: what the server sends next must use them.
        server.write_all(b"reply").await.expect("write");
        server.flush().await.expect("flush");
        let mut reply = [0; 5];
        client.read_exact(&mut reply).await.expect("read");
        assert_eq!(&reply, b"reply");
    }

    #[tokio::test]
    async fn each_side_closing_ends_the_other_sides_reads_cleanly() {
        let (mut server, mut client) = pair(&rustls::version::TLS13).await;
        server.shutdown().await.expect("server shutdown");
        let mut rest = Vec::new();
        // tokio-rustls reports an error for an end of file without close_notify.
        client.read_to_end(&mut rest).await.expect("a clean end");
        assert!(rest.is_empty());

        client.shutdown().await.expect("client shutdown");
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.expect("a clean end");
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn a_peer_that_speaks_no_tls_fails_the_handshake() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let dir = tempfile::tempdir().expect("temp dir");
        let (paths, _) = devcert::ensure(dir.path(), &[]).expect("development certificates");
        let config = tls::load_server_config(&paths.cert, &paths.key).expect("loads");
        let mut peer = TcpStream::connect(address).await.expect("connect");
        peer.write_all(b"GET / HTTP/1.1\r\nHost: relay\r\n\r\n")
            .await
            .expect("write");

        let (tcp, _) = listener.accept().await.expect("accept");
        let error = TlsSocket::accept(tcp, config).await.err().expect("not TLS");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
        let mut answer = Vec::new();
        peer.read_to_end(&mut answer).await.expect("read");
        assert_eq!(answer.first(), Some(&21), "an alert record: {answer:?}");
    }

    #[tokio::test]
    async fn a_handshake_message_split_past_the_bound_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let dir = tempfile::tempdir().expect("temp dir");
        let (paths, _) = devcert::ensure(dir.path(), &[]).expect("development certificates");
        let config = tls::load_server_config(&paths.cert, &paths.key).expect("loads");
        let sender = tokio::spawn(async move {
            let mut peer = TcpStream::connect(address).await.expect("connect");
            // A ClientHello of the largest size rustls allows (64 KiB), sent 16 bytes per record:
            // the records' headers take its fragments past `MAX_HELD` before it is whole.
            let mut records = vec![22, 3, 1, 0, 4, 1, 0, 0xff, 0xff];
            while records.len() < MAX_HELD + RECORD {
                records.extend_from_slice(&[22, 3, 1, 0, 16]);
                records.extend_from_slice(&[0; 16]);
            }
            // The relay hangs up part-way through: the write's result is not the point.
            let _ = peer.write_all(&records).await;
        });

        let (tcp, _) = listener.accept().await.expect("accept");
        let error = TlsSocket::accept(tcp, config).await.err().expect("refused");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
        assert!(
            error.to_string().contains("message too large"),
            "our bound: {error}"
        );
        sender.await.expect("sender");
    }

    #[tokio::test]
    async fn a_peer_that_hangs_up_mid_record_is_an_error() {
        let (mut server, client) = pair(&rustls::version::TLS13).await;
        let (mut tcp, _) = client.into_inner();
        // A record header announcing 100 bytes, and 10 of them.
        tcp.write_all(&[23, 3, 3, 0, 100]).await.expect("write");
        tcp.write_all(&[0; 10]).await.expect("write");
        tcp.shutdown().await.expect("shutdown");

        let error = server.read(&mut [0; 128]).await.expect_err("truncated");
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof, "{error}");
    }
}
