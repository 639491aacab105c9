//! TLS for the listener: loads a PEM certificate chain and key into a rustls server
//! configuration, and swaps in a fresh one on reload while open connections keep theirs.
//!
//! rustls runs on the `ring` provider, chosen over aws-lc-rs for build time and binary size.

use anyhow::{Context as _, anyhow, bail};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject as _};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{InconsistentKeys, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

/// The one application protocol offered: the relay serves HTTP/1.1 and its WebSocket upgrades
/// only. A client that offers ALPN without it is refused during the handshake.
const ALPN_HTTP_1_1: &[u8] = b"http/1.1";

/// Loads the certificate chain in `cert` (leaf first) and the private key in `key` (PKCS#8,
/// PKCS#1 or SEC1 PEM) into a server configuration that offers ALPN `http/1.1`.
///
/// Fails, naming the file, if either is unreadable, holds no certificate or no key, the key is
/// not usable, or the key does not belong to the leaf certificate.
pub fn load_server_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let chain = read_certificates(cert)?;
    let key_der = read_private_key(key)?;
    let provider = provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .with_context(|| format!("{}: not a usable private key", key.display()))?;

    // Checked here, rather than left to `with_single_cert`, to tell a key that does not fit
    // apart from a certificate that does not parse.
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // `Unknown` means the key cannot name its public half; rustls accepts that too.
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => bail!(
            "{}: the private key does not match the certificate in {}",
            key.display(),
            cert.display()
        ),
        Err(error) => {
            return Err(error).with_context(|| format!("{}: unusable certificate", cert.display()));
        }
    }

    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("the ring provider supports no safe TLS version")?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
    config.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
    Ok(Arc::new(config))
}

/// The TLS state of a listener: the certificate and key files and the configuration last loaded
/// from them, which [`reload`](TlsFiles::reload) replaces.
#[derive(Debug)]
pub struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<ServerConfig>>,
}

impl TlsFiles {
    /// Loads `cert` and `key` as [`load_server_config`] does, remembering the paths for reloads.
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<TlsFiles> {
        let config = load_server_config(cert, key)?;
        Ok(TlsFiles {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(config),
        })
    }

    /// The configuration loaded last: take it per connection so each new connection gets the
    /// newest certificate.
    pub fn config(&self) -> Arc<ServerConfig> {
        // The lock only guards swapping an `Arc`, which a panic cannot leave half done.
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(&current)
    }

    /// Loads both files again and, if they are good, serves them to new connections.
    ///
    /// On error the previous configuration stays in use and the error is returned for the caller
    /// to log; connections already open are never affected.
    pub fn reload(&self) -> anyhow::Result<()> {
        let config = load_server_config(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = config;
        Ok(())
    }
}

/// The crypto provider every TLS configuration in the relay uses.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in the PEM file at `path`, in order; an error if there is none.
pub(crate) fn read_certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|sections| sections.collect::<Result<Vec<_>, _>>())
        .map_err(|error| pem_error(error, path))?;
    if chain.is_empty() {
        bail!("no PEM certificate in {}", path.display());
    }
    Ok(chain)
}

/// The first private key in the PEM file at `path`; other sections, such as certificates of a
/// combined file, are skipped.
fn read_private_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|error| match error {
        pem::Error::NoItemsFound => anyhow!(
            "no PEM private key in {} (PKCS#8, PKCS#1 or SEC1; encrypted keys are not supported)",
            path.display()
        ),
        other => pem_error(other, path),
    })
}

fn pem_error(error: pem::Error, path: &Path) -> anyhow::Error {
    match error {
        pem::Error::Io(error) => anyhow!(error).context(format!("reading {}", path.display())),
        other => anyhow!("{}: malformed PEM: {other}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::devcert::{self, DevCertPaths};
    use crate::edge::tls_socket::TlsSocket;
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, RootCertStore};
    use std::fs;
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::TlsConnector;

    fn dev_certs(dir: &Path, extra: &[&str]) -> DevCertPaths {
        let extra: Vec<String> = extra.iter().map(|name| name.to_string()).collect();
        devcert::ensure(dir, &extra)
            .expect("development certificates")
            .0
    }

    fn error_text(result: anyhow::Result<impl std::fmt::Debug>) -> String {
        format!("{:#}", result.expect_err("should fail"))
    }

    #[test]
    fn loads_development_certificate_with_http_1_1_alpn() {
        let dir = tempfile::tempdir().expect("temp dir");
        let paths = dev_certs(dir.path(), &[]);
        let config = load_server_config(&paths.cert, &paths.key).expect("loads");
        assert_eq!(config.alpn_protocols, [b"http/1.1".to_vec()]);
    }

    #[test]
    fn key_of_another_certificate_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let paths = dev_certs(dir.path(), &[]);
        let message = error_text(load_server_config(&paths.cert, &paths.ca_key));
        assert!(
            message.contains(&paths.ca_key.display().to_string()),
            "{message}"
        );
        assert!(message.contains("does not match"), "{message}");
        assert!(!message.contains('\n'), "{message}");
    }

    #[test]
    fn file_without_a_key_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let paths = dev_certs(dir.path(), &[]);
        let empty = dir.path().join("empty.pem");
        fs::write(&empty, "").expect("writable");
        for key in [&empty, &paths.cert] {
            let message = error_text(load_server_config(&paths.cert, key));
            assert!(message.contains(&key.display().to_string()), "{message}");
            assert!(message.contains("no PEM private key"), "{message}");
        }
    }

    #[test]
    fn file_without_a_certificate_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let paths = dev_certs(dir.path(), &[]);
        let empty = dir.path().join("empty.pem");
        fs::write(&empty, "").expect("writable");
        for cert in [&empty, &paths.key] {
            let message = error_text(load_server_config(cert, &paths.key));
            assert!(message.contains(&cert.display().to_string()), "{message}");
            assert!(message.contains("no PEM certificate"), "{message}");
        }
    }

    #[test]
    fn missing_files_are_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let paths = dev_certs(dir.path(), &[]);
        let missing = dir.path().join("missing.pem");
        for (cert, key) in [(&missing, &paths.key), (&paths.cert, &missing)] {
            let message = error_text(load_server_config(cert, key));
            assert!(message.starts_with("reading "), "{message}");
            assert!(
                message.contains(&missing.display().to_string()),
                "{message}"
            );
        }
    }

    #[test]
    fn garbage_key_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let paths = dev_certs(dir.path(), &[]);
        let garbage = dir.path().join("garbage.pem");
        fs::write(
            &garbage,
            "-----BEGIN PRIVATE KEY-----\nAAECAwQFBgcICQ==\n-----END PRIVATE KEY-----\n",
        )
        .expect("writable");
        let message = error_text(load_server_config(&paths.cert, &garbage));
        assert!(message.contains("not a usable private key"), "{message}");
        assert!(
            message.contains(&garbage.display().to_string()),
            "{message}"
        );
    }

    #[test]
    fn failed_reload_keeps_the_old_configuration() {
        let dir = tempfile::tempdir().expect("temp dir");
        let paths = dev_certs(dir.path(), &[]);
        let tls = TlsFiles::load(&paths.cert, &paths.key).expect("loads");
        let before = tls.config();
        fs::write(&paths.cert, "").expect("writable");
        let message = error_text(tls.reload());
        assert!(
            message.contains(&paths.cert.display().to_string()),
            "{message}"
        );
        assert!(Arc::ptr_eq(&before, &tls.config()));
    }

    /// Connects to a one-shot listener served with `config` as a client that trusts only the CA
    /// in `ca` and asks for `name`; returns the leaf certificate and the protocol agreed.
    async fn handshake(
        config: Arc<ServerConfig>,
        ca: &Path,
        name: &str,
    ) -> std::io::Result<(CertificateDer<'static>, Option<Vec<u8>>)> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await?;
            // The client's verdict is what the test reads; the server side only has to run.
            let _ = TlsSocket::accept(stream, config).await;
            std::io::Result::Ok(())
        });

        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(ca).expect("a CA certificate"))
            .expect("a usable CA");
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports TLS 1.2 and 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let name = ServerName::try_from(name.to_owned()).expect("a valid name");
        let stream = TcpStream::connect(address).await?;
        let result = TlsConnector::from(Arc::new(config))
            .connect(name, stream)
            .await;
        server.await.expect("server task")?;
        let stream = result?;
        let connection = stream.get_ref().1;
        let leaf = connection
            .peer_certificates()
            .and_then(|chain| chain.first())
            .expect("the server sent a certificate")
            .clone()
            .into_owned();
        Ok((leaf, connection.alpn_protocol().map(<[u8]>::to_vec)))
    }

    #[tokio::test]
    async fn reload_serves_the_new_certificate_to_new_connections() {
        let dir = tempfile::tempdir().expect("temp dir");
        let paths = dev_certs(dir.path(), &[]);
        let tls = TlsFiles::load(&paths.cert, &paths.key).expect("loads");
        let old = CertificateDer::from_pem_file(&paths.cert).expect("a certificate");

        let (leaf, alpn) = handshake(tls.config(), &paths.ca_cert, "localhost")
            .await
            .expect("handshake for localhost");
        assert_eq!(leaf, old);
        assert_eq!(alpn.as_deref(), Some(b"http/1.1".as_slice()));
        handshake(tls.config(), &paths.ca_cert, "relay.test")
            .await
            .expect_err("relay.test is not covered yet");

        dev_certs(dir.path(), &["relay.test"]);
        let new = CertificateDer::from_pem_file(&paths.cert).expect("a certificate");
        assert_ne!(new, old);
        let before_reload = tls.config();
        tls.reload().expect("reloads");

        let (leaf, _) = handshake(tls.config(), &paths.ca_cert, "relay.test")
            .await
            .expect("handshake for relay.test");
        assert_eq!(leaf, new);
        // A configuration taken before the reload goes on with the old certificate.
        let (leaf, _) = handshake(before_reload, &paths.ca_cert, "localhost")
            .await
            .expect("handshake with the old configuration");
        assert_eq!(leaf, old);
    }
}
