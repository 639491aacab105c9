//! The validated configuration the relay runs on: [`Config`], made from [`Options`] by
//! [`IntoConfig::into_config`], and every bound on it in one place, [`Config::validate`].

use crate::options::{ClusterRouting, Options, Span};
use crate::relay::directory::{MIN_LEASE_TTL, instance_id_problem};
use crate::relay::ice::{self, IceConfig};
use crate::relay::ids::{CLIENT_ID_LENGTH, CROCKFORD, MAX_CODE_LENGTH, MIN_CODE_LENGTH};
use crate::relay::protocol::{self, Hello, Resumption};
use crate::relay::resume::ResumePolicy;
use crate::relay::schema::MessageSchemas;
use anyhow::{Context, bail};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// `--listen` when neither it nor `PORT` is set.
const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8080);

/// How long a peer may exceed the rate limit without pause before it is disconnected.
const FLOOD_WINDOW: Duration = Duration::from_secs(10);

/// Connections served at once before they become sessions; as many as the kernel's accept backlog.
const MAX_PENDING_CONNECTIONS: usize = 1024;

/// Longest any duration option may be: far beyond any sensible timeout, and far from where
/// `Instant + Duration` overflows.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// Join codes per connection the code space must offer, so that a fresh code is found within a
/// few draws even when every connection is a server: at 1/64 per draw, the hub's 16 draws all
/// collide with a chance of 2⁻⁹⁶.
pub const CODES_PER_CONNECTION: u64 = 64;

/// Smallest `--max-message-bytes`: room for an envelope and a small message.
const MIN_MESSAGE_BYTES: usize = 128;

/// The send queue's room beyond one largest message: the envelope the relay wraps it in.
const ENVELOPE_ROOM: usize = 256;

/// The validated configuration the relay runs with. `Config::default()` is every option at its
/// default; tests and embedders change fields from there, and [`crate::Relay::bind`] validates.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Browser origins allowed to open WebSockets; empty allows all.
    pub allowed_origins: Vec<String>,
    /// Longest a connection may take to deliver its HTTP request.
    pub handshake_timeout: Duration,
    /// Characters in a join code (4–16).
    pub code_length: usize,
    /// Text added to every HELLO as `serverInfo`.
    pub server_info: Option<String>,
    /// Messages per second per peer; `0` turns the limit off.
    pub rate_limit: u32,
    /// How long a peer may flood before it is disconnected.
    pub flood_window: Duration,
    /// Largest WebSocket message a peer may send.
    pub max_message_bytes: usize,
    /// Clients one server may hold.
    pub max_clients_per_server: usize,
    /// Live WebSocket sessions the relay accepts.
    pub max_connections: usize,
    /// Connections that are not sessions (yet): in their TLS handshake, sending an HTTP request,
    /// or idle between requests. Beyond it, new connections wait in the kernel's backlog.
    pub max_pending_connections: usize,
    /// Live WebSocket sessions per client address; `0` turns the bound off.
    pub max_connections_per_ip: u32,
    /// Failed joins and registrations per client address per minute; `0` turns the bound off.
    pub max_failed_attempts_per_minute: u32,
    /// Header holding the client address, set by a trusted proxy; otherwise the socket address.
    pub client_ip_header: Option<http::HeaderName>,
    /// Bytes of frames that may wait for one peer before it is disconnected as too slow.
    pub send_queue_bytes: usize,
    /// Passphrase required to register at `/server`.
    pub passphrase: Option<String>,
    /// How often the relay pings every peer.
    pub ping_interval: Duration,
    /// How long a silent peer is kept.
    pub idle_timeout: Duration,
    /// How long shutdown waits for sessions to close.
    pub shutdown_timeout: Duration,
    /// Resuming sessions after a lost connection; a zero window turns it off.
    pub resume: ResumePolicy,
    /// How long a knocker waits for its server to let it in.
    pub knock_timeout: Duration,
    /// Knockers one server may have waiting at once.
    pub max_waiting_per_server: usize,
    /// Where TLS certificates come from; `None` serves plain HTTP.
    pub tls: Option<TlsSource>,
    /// ICE servers handed out in HELLO.
    pub ice: IceConfig,
    /// Where to serve Prometheus metrics; `None` serves none.
    pub metrics_listen: Option<SocketAddr>,
    /// Schemas every message must satisfy, by type; `None` checks nothing and costs nothing.
    pub message_schemas: Option<Arc<MessageSchemas>>,
    /// The Redis directory shared with other instances; `None` runs a single instance.
    pub cluster: Option<ClusterConfig>,
}

/// A relay that shares its join codes with other instances through Redis.
#[derive(Clone)]
pub struct ClusterConfig {
    /// `redis://…` or `redis+unix://…`; may hold a password, so it is never logged whole.
    pub redis_url: String,
    /// How clients that reached the wrong instance get to their room.
    pub routing: ClusterRouting,
    /// This instance's id; `None` takes `FLY_MACHINE_ID` or a random one at start.
    pub instance_id: Option<String>,
    /// Prefix of every key.
    pub prefix: String,
    /// How long the instance's lease outlives its last renewal.
    pub lease_ttl: Duration,
}

/// Shown without the URL, which may carry the Redis password.
impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("routing", &self.routing)
            .field("instance_id", &self.instance_id)
            .field("prefix", &self.prefix)
            .field("lease_ttl", &self.lease_ttl)
            .finish_non_exhaustive()
    }
}

/// The certificate and key the relay serves TLS with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// PEM files given with `--tls-cert` and `--tls-key`.
    Files {
        /// Certificate chain, leaf first.
        cert: PathBuf,
        /// Private key (PKCS#8, PKCS#1 or SEC1).
        key: PathBuf,
    },
    /// Development certificates in this directory, created when missing (`--dev-tls`).
    Dev {
        /// The `--certs-dir`.
        dir: PathBuf,
    },
}

impl Default for Config {
    fn default() -> Self {
        Options::defaults()
            .into_config(None)
            .expect("the default options are valid")
    }
}

/// Turns the options people gave into a validated configuration. A trait only because the
/// options are their own crate (built for size); [`Options`] is its one implementation.
pub trait IntoConfig {
    /// Turns the options into a configuration and validates it. `port` is the `PORT` variable
    /// edge hosts set.
    fn into_config(self, port: Option<&str>) -> anyhow::Result<Config>;
}

impl IntoConfig for Options {
    fn into_config(self, port: Option<&str>) -> anyhow::Result<Config> {
        let config = Config {
            listen: listen(self.listen, port)?,
            allowed_origins: self.allowed_origins,
            handshake_timeout: self.handshake_timeout.0,
            code_length: self.code_length,
            server_info: self.server_info,
            rate_limit: self.rate_limit,
            flood_window: FLOOD_WINDOW,
            max_message_bytes: self.max_message_bytes,
            max_clients_per_server: self.max_clients_per_server,
            max_connections: self.max_connections,
            max_pending_connections: MAX_PENDING_CONNECTIONS,
            max_connections_per_ip: self.max_connections_per_ip,
            max_failed_attempts_per_minute: self.max_failed_attempts_per_minute,
            client_ip_header: self
                .client_ip_header
                .as_deref()
                .map(header_name)
                .transpose()?,
            send_queue_bytes: self.send_queue_bytes,
            passphrase: passphrase(self.passphrase, self.passphrase_file.as_deref())?,
            ping_interval: self.ping_interval.0,
            idle_timeout: self.idle_timeout.0,
            shutdown_timeout: self.shutdown_timeout.0,
            knock_timeout: self.knock_timeout.0,
            max_waiting_per_server: self.max_waiting_per_server,
            resume: ResumePolicy {
                window: self.resume_window.0,
                queue_bytes: self.resume_queue_bytes,
                max_away: self.max_away_peers,
            },
            tls: tls(self.tls_cert, self.tls_key, self.dev_tls, self.certs_dir)?,
            ice: IceConfig {
                urls: self.ice_servers,
                turn_secret: self.turn_secret,
                turn_ttl: self.turn_ttl.0,
            },
            metrics_listen: self.metrics_listen,
            message_schemas: match &self.message_schema {
                Some(path) => Some(Arc::new(MessageSchemas::load(path)?)),
                None => None,
            },
            cluster: self.cluster_redis_url.map(|redis_url| ClusterConfig {
                redis_url,
                routing: self.cluster_routing,
                instance_id: self.instance_id,
                prefix: self.cluster_prefix,
                lease_ttl: self.cluster_lease_ttl.0,
            }),
        };
        config.validate()?;
        Ok(config)
    }
}

impl Config {
    /// Checks every bound; the error is one line naming the option.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(MIN_CODE_LENGTH..=MAX_CODE_LENGTH).contains(&self.code_length) {
            bail!(
                "--code-length must be between {MIN_CODE_LENGTH} and {MAX_CODE_LENGTH} (got {})",
                self.code_length
            );
        }
        for (option, duration) in [
            ("--handshake-timeout", self.handshake_timeout),
            ("--ping-interval", self.ping_interval),
            ("--idle-timeout", self.idle_timeout),
            ("--turn-ttl", self.ice.turn_ttl),
        ] {
            if duration.is_zero() {
                bail!("{option} must be longer than zero");
            }
        }
        for (option, duration) in [
            ("--handshake-timeout", self.handshake_timeout),
            ("--ping-interval", self.ping_interval),
            ("--idle-timeout", self.idle_timeout),
            ("--shutdown-timeout", self.shutdown_timeout),
            ("--resume-window", self.resume.window),
            ("--knock-timeout", self.knock_timeout),
            ("--turn-ttl", self.ice.turn_ttl),
            ("flood window", self.flood_window),
        ] {
            if duration > MAX_DURATION {
                bail!("{option} must be at most 24h (got {})", Span(duration));
            }
        }
        for (option, value, min) in [
            (
                "--max-message-bytes",
                self.max_message_bytes,
                MIN_MESSAGE_BYTES,
            ),
            ("--max-clients-per-server", self.max_clients_per_server, 1),
            ("--max-connections", self.max_connections, 1),
            ("max pending connections", self.max_pending_connections, 1),
        ] {
            if value < min {
                bail!("{option} must be at least {min} (got {value})");
            }
        }
        // A queue smaller than one largest relayed frame would evict peers for a single message.
        let smallest_queue = self.max_message_bytes.saturating_add(ENVELOPE_ROOM);
        if self.send_queue_bytes < smallest_queue {
            bail!(
                "--send-queue-bytes must be at least --max-message-bytes + {ENVELOPE_ROOM} \
                 ({smallest_queue}), got {}",
                self.send_queue_bytes
            );
        }
        if !self.resume.window.is_zero() && self.resume.queue_bytes < smallest_queue {
            bail!(
                "--resume-queue-bytes must be at least --max-message-bytes + {ENVELOPE_ROOM} \
                 ({smallest_queue}), got {}",
                self.resume.queue_bytes
            );
        }
        let hello = self.largest_hello();
        if hello > self.send_queue_bytes {
            bail!(
                "--server-info and --ice-server make a HELLO of up to {hello} bytes, more than \
                 --send-queue-bytes ({}): shorten them or raise --send-queue-bytes",
                self.send_queue_bytes
            );
        }
        let codes = (CROCKFORD.len() as u64).saturating_pow(self.code_length as u32);
        let needed = (self.max_connections as u64).saturating_mul(CODES_PER_CONNECTION);
        if codes < needed {
            bail!(
                "--code-length {} gives {codes} join codes, too few for --max-connections {} \
                 ({CODES_PER_CONNECTION} per connection): raise --code-length or lower \
                 --max-connections",
                self.code_length,
                self.max_connections
            );
        }
        if self.idle_timeout <= self.ping_interval {
            bail!(
                "--idle-timeout ({}) must be longer than --ping-interval ({}), or every peer \
                 times out",
                Span(self.idle_timeout),
                Span(self.ping_interval)
            );
        }
        if self.passphrase.as_deref() == Some("") {
            bail!("--passphrase must not be empty");
        }
        if let Some(cluster) = &self.cluster {
            cluster.validate()?;
        }
        for url in &self.ice.urls {
            if !ice::is_ice_url(url) || url.contains(|c: char| c.is_whitespace() || c.is_control())
            {
                bail!("--ice-server {url:?}: must be a stun:, turn: or turns: URL");
            }
            if ice::is_turn(url) && self.ice.turn_secret.is_none() {
                bail!(
                    "--ice-server {url:?} is a TURN server: give --turn-secret to sign credentials"
                );
            }
        }
        Ok(())
    }

    /// The most bytes a HELLO can take: the longest id, the server info, TURN credentials whose
    /// expiry has more digits than it will have for three thousand years, and a resumed
    /// session's fields at their longest.
    fn largest_hello(&self) -> usize {
        let id = "x".repeat(CLIENT_ID_LENGTH.max(MAX_CODE_LENGTH));
        let far_future = SystemTime::UNIX_EPOCH + Duration::from_secs(99_999_999_999);
        let token = "x".repeat(22);
        let resume = Resumption {
            token: &token,
            window_ms: u64::MAX,
            resumed: true,
            replayed: Some(usize::MAX),
            gap: true,
        };
        protocol::hello(&Hello {
            id: &id,
            server_info: self.server_info.as_deref(),
            ice_servers: &self.ice.for_peer(&id, far_future),
            resume: Some(resume),
            waiting: true,
        })
        .len()
    }
}

impl ClusterConfig {
    fn validate(&self) -> anyhow::Result<()> {
        let scheme = self.redis_url.split_once("://").map(|(scheme, _)| scheme);
        match scheme {
            Some("redis" | "redis+unix" | "unix") => {}
            Some("rediss") => bail!(
                "--cluster-redis-url: rediss:// (TLS) is not supported yet; reach Redis over a \
                 private network (Fly's Upstash is redis:// on it) or a TLS tunnel"
            ),
            _ => bail!("--cluster-redis-url must be a redis:// or redis+unix:// URL"),
        }
        if let Some(problem) = self.instance_id.as_deref().and_then(instance_id_problem) {
            bail!("--instance-id {problem}");
        }
        if self.prefix.is_empty() || self.prefix.contains(char::is_whitespace) {
            bail!("--cluster-prefix must be non-empty, without white space");
        }
        if self.lease_ttl < MIN_LEASE_TTL || self.lease_ttl > MAX_DURATION {
            bail!(
                "--cluster-lease-ttl must be between {} and 24h (got {})",
                Span(MIN_LEASE_TTL),
                Span(self.lease_ttl)
            );
        }
        Ok(())
    }
}

fn listen(listen: Option<SocketAddr>, port: Option<&str>) -> anyhow::Result<SocketAddr> {
    Ok(match (listen, port) {
        (Some(listen), _) => listen,
        (None, Some(port)) => {
            let port: u16 = port
                .trim()
                .parse()
                .with_context(|| format!("PORT must be a port number (got {port:?})"))?;
            SocketAddr::from(([0, 0, 0, 0], port))
        }
        (None, None) => DEFAULT_LISTEN,
    })
}

fn header_name(name: &str) -> anyhow::Result<http::HeaderName> {
    http::HeaderName::try_from(name.trim())
        .map_err(|_| anyhow::anyhow!("--client-ip-header {name:?} is not a header name"))
}

fn passphrase(text: Option<String>, file: Option<&Path>) -> anyhow::Result<Option<String>> {
    Ok(match (text, file) {
        (Some(passphrase), _) => Some(passphrase),
        (None, Some(path)) => Some(read_passphrase(path)?),
        (None, None) => None,
    })
}

fn read_passphrase(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading --passphrase-file {path:?}"))?;
    let passphrase = text.strip_suffix('\n').unwrap_or(&text);
    Ok(passphrase
        .strip_suffix('\r')
        .unwrap_or(passphrase)
        .to_owned())
}

fn tls(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    dev: bool,
    certs_dir: PathBuf,
) -> anyhow::Result<Option<TlsSource>> {
    Ok(match (cert, key, dev) {
        (Some(_), Some(_), true) => bail!("--dev-tls cannot be combined with --tls-cert/--tls-key"),
        (Some(cert), Some(key), false) => Some(TlsSource::Files { cert, key }),
        (Some(_), None, _) => bail!("--tls-cert needs --tls-key, the certificate's private key"),
        (None, Some(_), _) => bail!("--tls-key needs --tls-cert, the certificate chain"),
        (None, None, true) => Some(TlsSource::Dev { dir: certs_dir }),
        (None, None, false) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::{Parsed, parse};

    /// `args` read as the binary reads them, with no file and no environment of ours.
    fn options(args: &[&str]) -> Options {
        let argv = std::iter::once("intercessor").chain(args.iter().copied());
        match parse(argv) {
            Ok(Parsed::Relay(options)) => *options,
            other => panic!("{args:?} should be relay options, got {other:?}"),
        }
    }

    fn config(args: &[&str]) -> anyhow::Result<Config> {
        options(args).into_config(None)
    }

    #[test]
    fn durations_in_seconds_or_with_units() {
        assert_eq!("20".parse(), Ok(Span(Duration::from_secs(20))));
        assert_eq!("500ms".parse(), Ok(Span(Duration::from_millis(500))));
        assert_eq!("20s".parse(), Ok(Span(Duration::from_secs(20))));
        assert_eq!("1m".parse(), Ok(Span(Duration::from_secs(60))));
        assert!("soon".parse::<Span>().is_err());
        assert!("-1".parse::<Span>().is_err());
    }

    #[test]
    fn defaults_when_nothing_is_given() {
        let config = Config::default();
        assert_eq!(config.listen, DEFAULT_LISTEN);
        assert_eq!(config.code_length, 6);
        assert_eq!(config.rate_limit, 50);
        assert_eq!(config.ping_interval, Duration::from_secs(20));
        assert_eq!(config.ice.turn_ttl, Duration::from_secs(3600));
    }

    #[test]
    fn port_applies_only_without_listen() {
        let config = options(&[]).into_config(Some("9000")).expect("valid");
        assert_eq!(config.listen, "0.0.0.0:9000".parse().expect("valid"));
        let config = options(&["--listen", "127.0.0.1:1"])
            .into_config(Some("9000"))
            .expect("valid");
        assert_eq!(config.listen, "127.0.0.1:1".parse().expect("valid"));
        assert!(options(&[]).into_config(Some("http")).is_err());
    }

    #[test]
    fn passphrase_file_loses_its_trailing_newline() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("pass");
        std::fs::write(&path, "s3cret\n").expect("write");
        let config = config(&["--passphrase-file", path.to_str().expect("utf-8")]).expect("valid");
        assert_eq!(config.passphrase.as_deref(), Some("s3cret"));
    }

    #[test]
    fn invalid_values_name_their_option() {
        let cases: [(&[&str], &str); 9] = [
            (&["--code-length", "3"], "--code-length"),
            (&["--code-length", "17"], "--code-length"),
            (&["--ping-interval", "0"], "--ping-interval"),
            (&["--ping-interval", "2m"], "--idle-timeout"),
            (&["--send-queue-bytes", "10"], "--send-queue-bytes"),
            (
                &["--idle-timeout", "18446744073709551615"],
                "--idle-timeout",
            ),
            (&["--shutdown-timeout", "2d"], "--shutdown-timeout"),
            (&["--tls-cert", "c.pem"], "--tls-key"),
            (
                &["--code-length", "4", "--max-connections", "20000"],
                "--code-length",
            ),
        ];
        for (args, option) in cases {
            let error = config(args).expect_err("invalid").to_string();
            assert!(error.contains(option), "{error:?} should name {option}");
            assert!(!error.contains('\n'), "{error:?} should be one line");
        }
    }

    #[test]
    fn a_hello_that_cannot_fit_the_send_queue_is_refused_at_start() {
        let info = "i".repeat(1_100_000);
        let error = config(&["--server-info", &info])
            .expect_err("too big")
            .to_string();
        assert!(error.contains("--send-queue-bytes"), "{error}");
        let roomy = config(&["--server-info", &info, "--send-queue-bytes", "2000000"]);
        assert!(roomy.is_ok(), "{roomy:?}");
    }

    #[test]
    fn every_option_at_its_limit_is_valid() {
        let config = config(&[
            "--code-length",
            "4",
            "--max-connections",
            "16384",
            "--idle-timeout",
            "24h",
            "--shutdown-timeout",
            "0",
        ]);
        assert!(config.is_ok(), "{config:?}");
    }

    #[test]
    fn ice_servers_are_checked() {
        let ice = config(&[
            "--ice-server",
            "stun:a:3478",
            "--ice-server",
            "turn:b",
            "--turn-secret",
            "s",
        ])
        .expect("valid")
        .ice;
        assert_eq!(ice.urls, ["stun:a:3478", "turn:b"]);
        let error = config(&["--ice-server", "turn:b"])
            .expect_err("no secret")
            .to_string();
        assert!(error.contains("--turn-secret"), "{error}");
        let error = config(&["--ice-server", "http://b"])
            .expect_err("scheme")
            .to_string();
        assert!(error.contains("--ice-server"), "{error}");
    }

    #[test]
    fn tls_sources() {
        let dev = |args: &[&str]| config(args).expect("valid").tls;
        assert_eq!(
            dev(&["--dev-tls"]),
            Some(TlsSource::Dev {
                dir: "certs".into()
            })
        );
        assert_eq!(
            dev(&["--dev-tls", "--certs-dir", "/tmp/c"]),
            Some(TlsSource::Dev {
                dir: "/tmp/c".into()
            })
        );
        assert_eq!(dev(&["--dev-tls=false"]), None);
        assert_eq!(
            dev(&["--tls-cert", "c.pem", "--tls-key", "k.pem"]),
            Some(TlsSource::Files {
                cert: "c.pem".into(),
                key: "k.pem".into()
            })
        );
        let error = config(&["--tls-cert", "c.pem", "--tls-key", "k.pem", "--dev-tls"])
            .expect_err("conflict")
            .to_string();
        assert!(error.contains("--dev-tls"), "{error}");
    }
}
