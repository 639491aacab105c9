//! TLS: dev certificates in a temporary directory, clients that trust only the CA they are
//! given, and a client that stalls its handshake on purpose.

use super::{HANDSHAKE_TIMEOUT, PATIENCE, SLACK, Socket, read_until_dropped};
use intercessor::config::TlsSource;
use intercessor::edge::devcert::{self, DevCertPaths};
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Error as WsError;

/// A CA and a `localhost` leaf, as `--dev-tls` makes them, in a directory removed on drop.
pub struct DevTls {
    pub paths: DevCertPaths,
    _dir: tempfile::TempDir,
}

impl DevTls {
    pub fn new() -> DevTls {
        let dir = tempfile::tempdir().expect("temp dir");
        let (paths, _) = devcert::ensure(dir.path(), &[]).expect("certificates");
        DevTls { paths, _dir: dir }
    }

    /// The relay's `--tls-cert` and `--tls-key`.
    pub fn source(&self) -> TlsSource {
        TlsSource::Files {
            cert: self.paths.cert.clone(),
            key: self.paths.key.clone(),
        }
    }

    /// A client configuration trusting this CA only.
    pub fn trust(&self) -> Arc<rustls::ClientConfig> {
        trusting(&self.paths.ca_cert)
    }
}

/// A client TLS configuration that trusts exactly one CA file: no "insecure" switch anywhere.
pub fn trusting(ca: &std::path::Path) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(cert.expect("CA PEM")).expect("CA is usable");
    }
    client_tls(roots)
}

/// A client TLS configuration with the given trust anchors, on the relay's crypto provider.
pub fn client_tls(roots: rustls::RootCertStore) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
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
    trust: Arc<rustls::ClientConfig>,
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

/// A client TLS configuration that trusts no one: enough to make a ClientHello.
pub fn trusting_nobody() -> Arc<rustls::ClientConfig> {
    client_tls(rustls::RootCertStore::empty())
}

/// The name the dev certificates are made for.
pub fn localhost() -> ServerName<'static> {
    ServerName::try_from("localhost").expect("a valid name")
}

/// The first flight of a TLS client trusting `trust`, for `localhost`.
pub fn client_hello(trust: Arc<rustls::ClientConfig>) -> Vec<u8> {
    let mut hello = Vec::new();
    rustls::ClientConnection::new(trust, localhost())
        .expect("client")
        .write_tls(&mut hello)
        .expect("ClientHello");
    hello
}

/// Where a TLS client stops.
#[derive(Debug, Clone, Copy)]
pub enum Stall {
    /// Connects and sends nothing.
    Silent,
    /// Sends the first half of its ClientHello.
    HalfClientHello,
    /// Sends a record header announcing 16 KiB and nothing of it.
    RecordHeaderOnly,
    /// Sends its ClientHello, reads the relay's flight, never sends its Finished.
    AfterServerFlight,
    /// Completes the handshake, then never sends an HTTP request: the deadline covers both.
    AfterHandshake,
}

impl Stall {
    pub const ALL: [Stall; 5] = [
        Stall::Silent,
        Stall::HalfClientHello,
        Stall::RecordHeaderOnly,
        Stall::AfterServerFlight,
        Stall::AfterHandshake,
    ];
}

/// Stalls a TLS handshake at `stage`; returns what the relay sent and when it dropped us,
/// measured from the TCP connect.
pub async fn stall_tls(
    addr: SocketAddr,
    stage: Stall,
    trust: Arc<rustls::ClientConfig>,
    round: u64,
) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let within = HANDSHAKE_TIMEOUT + SLACK * 2;
    let hello = client_hello(trust.clone());
    match stage {
        Stall::Silent => {}
        Stall::HalfClientHello => {
            let cut = hello.len() / 2 + (round as usize % 7);
            tcp.write_all(&hello[..cut]).await.expect("write");
        }
        Stall::RecordHeaderOnly => {
            tcp.write_all(&[0x16, 0x03, 0x01, 0x40, 0x00])
                .await
                .expect("write");
        }
        Stall::AfterServerFlight => tcp.write_all(&hello).await.expect("write"),
        Stall::AfterHandshake => {
            let connector = tokio_rustls::TlsConnector::from(trust);
            let mut tls = timeout(PATIENCE, connector.connect(localhost(), tcp))
                .await
                .expect("handshake in time")
                .expect("handshake");
            return read_until_dropped(&mut tls, started, within).await;
        }
    }
    read_until_dropped(&mut tcp, started, within).await
}
