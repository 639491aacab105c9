//! Every option the relay takes, from the command line, `INTERCESSOR_*` variables or a TOML file.
//!
//! [`Options`] is the raw, all-optional form shared by clap and the file parser; [`Config`] is the
//! validated result the library runs on, with every default named here.

use crate::relay::ice::{self, IceConfig};
use crate::relay::schema::MessageSchemas;
use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use serde::Deserialize;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// Default `--listen` when neither it nor `PORT` is set.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default `--handshake-timeout`.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `--code-length`.
pub const DEFAULT_CODE_LENGTH: usize = 6;
/// Default `--rate-limit`, messages per second per peer.
pub const DEFAULT_RATE_LIMIT: u32 = 50;
/// Default `--max-message-bytes`.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Default `--max-clients-per-server`.
pub const DEFAULT_MAX_CLIENTS_PER_SERVER: usize = 256;
/// Default `--max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default `--max-connections-per-ip`.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: u32 = 256;
/// Default `--max-failed-attempts-per-minute`.
pub const DEFAULT_MAX_FAILED_ATTEMPTS_PER_MINUTE: u32 = 30;
/// Default `--send-queue-bytes`.
pub const DEFAULT_SEND_QUEUE_BYTES: usize = 1024 * 1024;
/// Default `--ping-interval`: under the 60 s idle cut of common proxies and load balancers.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(20);
/// Default `--idle-timeout`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `--shutdown-timeout`.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `--certs-dir`, where `--dev-tls` and `gen-certs` keep development certificates.
pub const DEFAULT_CERTS_DIR: &str = "certs";
/// Default `--turn-ttl`: how long TURN credentials handed out in HELLO stay valid.
pub const DEFAULT_TURN_TTL: Duration = Duration::from_secs(3600);
/// How long a peer may exceed the rate limit without pause before it is disconnected.
pub const DEFAULT_FLOOD_WINDOW: Duration = Duration::from_secs(10);
/// Connections served at once before they become sessions; as many as the kernel's accept backlog.
pub const DEFAULT_MAX_PENDING_CONNECTIONS: usize = 1024;

/// The validated configuration the relay runs with.
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
    /// Where TLS certificates come from; `None` serves plain HTTP.
    pub tls: Option<TlsSource>,
    /// ICE servers handed out in HELLO.
    pub ice: IceConfig,
    /// Where to serve Prometheus metrics; `None` serves none.
    pub metrics_listen: Option<SocketAddr>,
    /// Schemas every message must satisfy, by type; `None` checks nothing and costs nothing.
    pub message_schemas: Option<Arc<MessageSchemas>>,
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
        Config {
            listen: DEFAULT_LISTEN
                .parse()
                .expect("the default address is valid"),
            allowed_origins: Vec::new(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            code_length: DEFAULT_CODE_LENGTH,
            server_info: None,
            rate_limit: DEFAULT_RATE_LIMIT,
            flood_window: DEFAULT_FLOOD_WINDOW,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_clients_per_server: DEFAULT_MAX_CLIENTS_PER_SERVER,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_pending_connections: DEFAULT_MAX_PENDING_CONNECTIONS,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            max_failed_attempts_per_minute: DEFAULT_MAX_FAILED_ATTEMPTS_PER_MINUTE,
            client_ip_header: None,
            send_queue_bytes: DEFAULT_SEND_QUEUE_BYTES,
            passphrase: None,
            ping_interval: DEFAULT_PING_INTERVAL,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            tls: None,
            metrics_listen: None,
            message_schemas: None,
            ice: IceConfig {
                turn_ttl: DEFAULT_TURN_TTL,
                ..IceConfig::default()
            },
        }
    }
}

/// A duration written in seconds (`20`) or with a unit (`500ms`, `20s`, `1m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span(pub Duration);

impl FromStr for Span {
    type Err = String;

    fn from_str(text: &str) -> Result<Span, String> {
        let text = text.trim();
        if let Ok(seconds) = text.parse::<u64>() {
            return Ok(Span(Duration::from_secs(seconds)));
        }
        humantime::parse_duration(text)
            .map(Span)
            .map_err(|e| format!("expected seconds or a duration like 500ms, 20s, 1m ({e})"))
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Span, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Seconds(u64),
            Text(String),
        }
        match Written::deserialize(deserializer)? {
            Written::Seconds(seconds) => Ok(Span(Duration::from_secs(seconds))),
            Written::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The command line.
#[derive(Debug, Parser)]
#[command(name = "intercessor", version, about)]
pub struct Cli {
    /// A TOML file of options (keys are option names with `_`); the command line and
    /// environment override it.
    #[arg(long, env = "INTERCESSOR_CONFIG", value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,

    /// Relay options.
    #[command(flatten)]
    pub options: Options,

    /// Without a subcommand, the relay runs.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What the binary does besides relaying.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a development CA and a certificate for localhost signed by it, for local wss://
    GenCerts {
        /// Directory to write dev-ca.pem, dev-ca-key.pem, dev-cert.pem and dev-key.pem to
        #[arg(long, default_value = DEFAULT_CERTS_DIR, value_name = "DIR")]
        dir: PathBuf,
        /// Extra name for the certificate, a DNS name or an IP address (repeatable); localhost,
        /// 127.0.0.1 and ::1 are always included
        #[arg(long = "san", value_name = "NAME")]
        sans: Vec<String>,
    },
}

/// Every relay option, all optional so the command line, environment and file can be layered.
#[derive(Debug, Default, Parser, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Options {
    /// Address to listen on [default: 127.0.0.1:8080, or 0.0.0.0:$PORT when PORT is set]
    #[arg(long, env = "INTERCESSOR_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Browser origin allowed to open WebSockets (repeatable; comma-separated in the environment);
    /// when given, upgrades from other origins get 403
    #[arg(
        long = "allowed-origin",
        env = "INTERCESSOR_ALLOWED_ORIGIN",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    #[serde(rename = "allowed_origin")]
    pub allowed_origins: Vec<String>,

    /// Drop connections that have not sent their HTTP request within this time [default: 10s]
    #[arg(long, env = "INTERCESSOR_HANDSHAKE_TIMEOUT", value_name = "DURATION")]
    pub handshake_timeout: Option<Span>,

    /// Characters in a join code, 4 to 16 [default: 6]
    #[arg(long, env = "INTERCESSOR_CODE_LENGTH", value_name = "N")]
    pub code_length: Option<usize>,

    /// Text sent to every peer in HELLO as "serverInfo"
    #[arg(long, env = "INTERCESSOR_SERVER_INFO", value_name = "TEXT")]
    pub server_info: Option<String>,

    /// Messages per second per peer, burst twice that; 0 turns the limit off [default: 50]
    #[arg(long, env = "INTERCESSOR_RATE_LIMIT", value_name = "N")]
    pub rate_limit: Option<u32>,

    /// Largest WebSocket message a peer may send; larger ones close it with 1009 [default: 65536]
    #[arg(long, env = "INTERCESSOR_MAX_MESSAGE_BYTES", value_name = "BYTES")]
    pub max_message_bytes: Option<usize>,

    /// Clients one server may hold [default: 256]
    #[arg(long, env = "INTERCESSOR_MAX_CLIENTS_PER_SERVER", value_name = "N")]
    pub max_clients_per_server: Option<usize>,

    /// Live WebSocket sessions; beyond it upgrades get 503 [default: 10000]
    #[arg(long, env = "INTERCESSOR_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,

    /// Live WebSocket sessions per client address; beyond it ERROR RATE_LIMITED and close 4429;
    /// 0 turns it off [default: 256]
    #[arg(long, env = "INTERCESSOR_MAX_CONNECTIONS_PER_IP", value_name = "N")]
    pub max_connections_per_ip: Option<u32>,

    /// Failed joins (unknown code) and registrations (wrong passphrase) per client address per
    /// minute; beyond it ERROR RATE_LIMITED and close 4429; 0 turns it off [default: 30]
    #[arg(
        long,
        env = "INTERCESSOR_MAX_FAILED_ATTEMPTS_PER_MINUTE",
        value_name = "N"
    )]
    pub max_failed_attempts_per_minute: Option<u32>,

    /// Take the client address from this request header (e.g. Fly-Client-IP), set by a proxy you
    /// trust; without it the socket address is used, which cannot be spoofed
    #[arg(long, env = "INTERCESSOR_CLIENT_IP_HEADER", value_name = "NAME")]
    pub client_ip_header: Option<String>,

    /// Bytes that may wait for one peer before it is closed as too slow [default: 1048576]
    #[arg(long, env = "INTERCESSOR_SEND_QUEUE_BYTES", value_name = "BYTES")]
    pub send_queue_bytes: Option<usize>,

    /// Passphrase required to register at /server
    #[arg(
        long,
        env = "INTERCESSOR_PASSPHRASE",
        value_name = "TEXT",
        hide_env_values = true
    )]
    pub passphrase: Option<String>,

    /// File holding the passphrase (a trailing newline is ignored)
    #[arg(
        long,
        env = "INTERCESSOR_PASSPHRASE_FILE",
        value_name = "FILE",
        conflicts_with = "passphrase"
    )]
    pub passphrase_file: Option<PathBuf>,

    /// How often to ping every peer [default: 20s]
    #[arg(long, env = "INTERCESSOR_PING_INTERVAL", value_name = "DURATION")]
    pub ping_interval: Option<Span>,

    /// Close a peer from which nothing has arrived for this long [default: 60s]
    #[arg(long, env = "INTERCESSOR_IDLE_TIMEOUT", value_name = "DURATION")]
    pub idle_timeout: Option<Span>,

    /// How long shutdown waits for peers to close [default: 10s]
    #[arg(long, env = "INTERCESSOR_SHUTDOWN_TIMEOUT", value_name = "DURATION")]
    pub shutdown_timeout: Option<Span>,

    /// STUN or TURN server handed to peers in HELLO's "iceServers" (repeatable; stun:, turn: or
    /// turns: URLs; comma-separated in the environment)
    #[arg(
        long = "ice-server",
        env = "INTERCESSOR_ICE_SERVER",
        value_name = "URL",
        value_delimiter = ','
    )]
    #[serde(rename = "ice_server")]
    pub ice_servers: Vec<String>,

    /// Secret shared with the TURN server (coturn's static-auth-secret), to sign time-limited
    /// TURN credentials
    #[arg(
        long,
        env = "INTERCESSOR_TURN_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub turn_secret: Option<String>,

    /// How long TURN credentials stay valid [default: 3600]
    #[arg(long, env = "INTERCESSOR_TURN_TTL", value_name = "DURATION")]
    pub turn_ttl: Option<Span>,

    /// Serve HTTPS and WSS with this PEM certificate chain (needs --tls-key)
    #[arg(
        long,
        env = "INTERCESSOR_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert (PKCS#8, PKCS#1 or SEC1)
    #[arg(
        long,
        env = "INTERCESSOR_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// Serve TLS with development certificates from --certs-dir, creating them when missing
    #[arg(
        long,
        env = "INTERCESSOR_DEV_TLS",
        num_args = 0..=1,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new(),
        value_name = "BOOL"
    )]
    pub dev_tls: Option<bool>,

    /// Where --dev-tls keeps its certificates [default: certs]
    #[arg(long, env = "INTERCESSOR_CERTS_DIR", value_name = "DIR")]
    pub certs_dir: Option<PathBuf>,

    /// Serve Prometheus metrics (and /healthz, /readyz) at http://ADDR/metrics [default: off]
    #[arg(long, env = "INTERCESSOR_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,

    /// JSON file mapping message types to JSON Schemas (draft 2020-12) for their "message";
    /// "*" covers types not listed, which are otherwise refused [default: no validation]
    #[arg(long, env = "INTERCESSOR_MESSAGE_SCHEMA", value_name = "FILE")]
    pub message_schema: Option<PathBuf>,

    /// Log line format [default: text]
    #[arg(long, env = "INTERCESSOR_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    /// Threads serving connections; 1 runs the whole relay on one thread [default: the cores this
    /// process may run on]
    #[arg(long, env = "INTERCESSOR_THREADS", value_name = "N")]
    pub threads: Option<NonZeroUsize>,
}

impl Options {
    /// Reads a TOML options file; errors name the file and the offending key in one line.
    pub fn from_file(path: &Path) -> anyhow::Result<Options> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading --config {}", path.display()))?;
        toml::from_str(&text).map_err(|e| {
            // toml's own rendering spans several lines; name the offending line in one instead.
            let at = e.span().map_or(0, |span| span.start);
            let line_number = text.get(..at).unwrap_or("").matches('\n').count() + 1;
            let line = text.lines().nth(line_number - 1).unwrap_or("").trim();
            anyhow::anyhow!(
                "--config {} line {line_number} `{line}`: {}",
                path.display(),
                e.message().trim()
            )
        })
    }

    /// Fills every option not set here from `lower` (command line and environment over the file).
    pub fn or(self, lower: Options) -> Options {
        Options {
            listen: self.listen.or(lower.listen),
            allowed_origins: if self.allowed_origins.is_empty() {
                lower.allowed_origins
            } else {
                self.allowed_origins
            },
            handshake_timeout: self.handshake_timeout.or(lower.handshake_timeout),
            code_length: self.code_length.or(lower.code_length),
            server_info: self.server_info.or(lower.server_info),
            rate_limit: self.rate_limit.or(lower.rate_limit),
            max_message_bytes: self.max_message_bytes.or(lower.max_message_bytes),
            max_clients_per_server: self.max_clients_per_server.or(lower.max_clients_per_server),
            max_connections: self.max_connections.or(lower.max_connections),
            max_connections_per_ip: self.max_connections_per_ip.or(lower.max_connections_per_ip),
            max_failed_attempts_per_minute: self
                .max_failed_attempts_per_minute
                .or(lower.max_failed_attempts_per_minute),
            client_ip_header: self.client_ip_header.or(lower.client_ip_header),
            send_queue_bytes: self.send_queue_bytes.or(lower.send_queue_bytes),
            // A passphrase given higher up overrides a file given lower down, and vice versa.
            passphrase: self
                .passphrase
                .clone()
                .or(if self.passphrase_file.is_some() {
                    None
                } else {
                    lower.passphrase
                }),
            passphrase_file: self.passphrase_file.or(if self.passphrase.is_some() {
                None
            } else {
                lower.passphrase_file
            }),
            ping_interval: self.ping_interval.or(lower.ping_interval),
            idle_timeout: self.idle_timeout.or(lower.idle_timeout),
            shutdown_timeout: self.shutdown_timeout.or(lower.shutdown_timeout),
            ice_servers: if self.ice_servers.is_empty() {
                lower.ice_servers
            } else {
                self.ice_servers
            },
            turn_secret: self.turn_secret.or(lower.turn_secret),
            turn_ttl: self.turn_ttl.or(lower.turn_ttl),
            tls_cert: self.tls_cert.or(lower.tls_cert),
            tls_key: self.tls_key.or(lower.tls_key),
            dev_tls: self.dev_tls.or(lower.dev_tls),
            certs_dir: self.certs_dir.or(lower.certs_dir),
            metrics_listen: self.metrics_listen.or(lower.metrics_listen),
            message_schema: self.message_schema.or(lower.message_schema),
            log_format: self.log_format.or(lower.log_format),
            threads: self.threads.or(lower.threads),
        }
    }

    /// Validates and fills defaults. `port` is the `PORT` variable edge hosts set.
    pub fn into_config(self, port: Option<&str>) -> anyhow::Result<Config> {
        let defaults = Config::default();
        let listen = match (self.listen, port) {
            (Some(listen), _) => listen,
            (None, Some(port)) => {
                let port: u16 = port
                    .trim()
                    .parse()
                    .with_context(|| format!("PORT must be a port number (got {port:?})"))?;
                SocketAddr::from(([0, 0, 0, 0], port))
            }
            (None, None) => defaults.listen,
        };
        let code_length = self.code_length.unwrap_or(defaults.code_length);
        if !(crate::relay::ids::MIN_CODE_LENGTH..=crate::relay::ids::MAX_CODE_LENGTH)
            .contains(&code_length)
        {
            bail!("--code-length must be between 4 and 16 (got {code_length})");
        }
        let passphrase = match (self.passphrase, self.passphrase_file) {
            (Some(passphrase), _) => Some(passphrase),
            (None, Some(path)) => Some(read_passphrase(&path)?),
            (None, None) => None,
        };
        if passphrase.as_deref() == Some("") {
            bail!("--passphrase must not be empty");
        }
        let tls = match (self.tls_cert, self.tls_key, self.dev_tls.unwrap_or(false)) {
            (Some(_), Some(_), true) => {
                bail!("--dev-tls cannot be combined with --tls-cert/--tls-key")
            }
            (Some(cert), Some(key), false) => Some(TlsSource::Files { cert, key }),
            (Some(_), None, _) => bail!("--tls-cert needs --tls-key"),
            (None, Some(_), _) => bail!("--tls-key needs --tls-cert"),
            (None, None, true) => Some(TlsSource::Dev {
                dir: self.certs_dir.unwrap_or_else(|| DEFAULT_CERTS_DIR.into()),
            }),
            (None, None, false) => None,
        };
        for url in &self.ice_servers {
            if !ice::is_ice_url(url) || url.contains(|c: char| c.is_whitespace() || c.is_control())
            {
                bail!("--ice-server {url:?}: must be a stun:, turn: or turns: URL");
            }
            if ice::is_turn(url) && self.turn_secret.is_none() {
                bail!(
                    "--ice-server {url:?} is a TURN server: give --turn-secret to sign credentials"
                );
            }
        }
        let ice = IceConfig {
            urls: self.ice_servers,
            turn_secret: self.turn_secret,
            turn_ttl: positive("--turn-ttl", self.turn_ttl, defaults.ice.turn_ttl)?,
        };
        let client_ip_header = match self.client_ip_header {
            Some(name) => Some(http::HeaderName::try_from(name.trim()).map_err(|_| {
                anyhow::anyhow!("--client-ip-header {name:?} is not a header name")
            })?),
            None => None,
        };
        let message_schemas = match &self.message_schema {
            Some(path) => Some(Arc::new(MessageSchemas::load(path)?)),
            None => None,
        };
        let config = Config {
            message_schemas,
            max_connections_per_ip: self
                .max_connections_per_ip
                .unwrap_or(defaults.max_connections_per_ip),
            max_failed_attempts_per_minute: self
                .max_failed_attempts_per_minute
                .unwrap_or(defaults.max_failed_attempts_per_minute),
            client_ip_header,
            metrics_listen: self.metrics_listen,
            ice,
            tls,
            listen,
            allowed_origins: self.allowed_origins,
            handshake_timeout: positive(
                "--handshake-timeout",
                self.handshake_timeout,
                defaults.handshake_timeout,
            )?,
            code_length,
            server_info: self.server_info,
            rate_limit: self.rate_limit.unwrap_or(defaults.rate_limit),
            flood_window: defaults.flood_window,
            max_message_bytes: at_least(
                "--max-message-bytes",
                self.max_message_bytes,
                defaults.max_message_bytes,
                128,
            )?,
            max_clients_per_server: at_least(
                "--max-clients-per-server",
                self.max_clients_per_server,
                defaults.max_clients_per_server,
                1,
            )?,
            max_connections: at_least(
                "--max-connections",
                self.max_connections,
                defaults.max_connections,
                1,
            )?,
            max_pending_connections: defaults.max_pending_connections,
            send_queue_bytes: self.send_queue_bytes.unwrap_or(defaults.send_queue_bytes),
            passphrase,
            ping_interval: positive(
                "--ping-interval",
                self.ping_interval,
                defaults.ping_interval,
            )?,
            idle_timeout: positive("--idle-timeout", self.idle_timeout, defaults.idle_timeout)?,
            shutdown_timeout: self
                .shutdown_timeout
                .map_or(defaults.shutdown_timeout, |s| s.0),
        };
        // A queue smaller than one largest relayed frame would evict peers for a single message.
        let smallest_queue = config.max_message_bytes + 256;
        if config.send_queue_bytes < smallest_queue {
            bail!(
                "--send-queue-bytes must be at least --max-message-bytes + 256 ({smallest_queue}), got {}",
                config.send_queue_bytes
            );
        }
        if config.idle_timeout <= config.ping_interval {
            bail!(
                "--idle-timeout ({:?}) must be longer than --ping-interval ({:?}), or every peer times out",
                config.idle_timeout,
                config.ping_interval
            );
        }
        Ok(config)
    }
}

fn positive(option: &str, value: Option<Span>, default: Duration) -> anyhow::Result<Duration> {
    let value = value.map_or(default, |s| s.0);
    if value.is_zero() {
        bail!("{option} must be longer than zero");
    }
    Ok(value)
}

fn at_least(
    option: &str,
    value: Option<usize>,
    default: usize,
    min: usize,
) -> anyhow::Result<usize> {
    let value = value.unwrap_or(default);
    if value < min {
        bail!("{option} must be at least {min} (got {value})");
    }
    Ok(value)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Options {
        let mut argv = vec!["intercessor"];
        argv.extend_from_slice(args);
        Options::try_parse_from(argv).expect("valid arguments")
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
        let config = Options::default().into_config(None).expect("valid");
        assert_eq!(config.listen, DEFAULT_LISTEN.parse().expect("valid"));
        assert_eq!(config.code_length, 6);
        assert_eq!(config.rate_limit, 50);
        assert_eq!(config.ping_interval, Duration::from_secs(20));
    }

    #[test]
    fn port_applies_only_without_listen() {
        let config = Options::default().into_config(Some("9000")).expect("valid");
        assert_eq!(config.listen, "0.0.0.0:9000".parse().expect("valid"));
        let config = parse(&["--listen", "127.0.0.1:1"])
            .into_config(Some("9000"))
            .expect("valid");
        assert_eq!(config.listen, "127.0.0.1:1".parse().expect("valid"));
        assert!(Options::default().into_config(Some("http")).is_err());
    }

    #[test]
    fn command_line_wins_over_the_file() {
        let file: Options = toml::from_str(
            "code_length = 8\nrate_limit = 7\nping_interval = \"5s\"\nidle_timeout = 30\nallowed_origin = [\"https://a\"]",
        )
        .expect("valid file");
        let config = parse(&["--code-length", "10"])
            .or(file)
            .into_config(None)
            .expect("valid");
        assert_eq!(config.code_length, 10);
        assert_eq!(config.rate_limit, 7);
        assert_eq!(config.ping_interval, Duration::from_secs(5));
        assert_eq!(config.idle_timeout, Duration::from_secs(30));
        assert_eq!(config.allowed_origins, ["https://a"]);
    }

    #[test]
    fn a_passphrase_given_higher_replaces_a_file_given_lower() {
        let file: Options =
            toml::from_str("passphrase_file = \"/nonexistent\"").expect("valid file");
        let config = parse(&["--passphrase", "p"])
            .or(file)
            .into_config(None)
            .expect("valid");
        assert_eq!(config.passphrase.as_deref(), Some("p"));
    }

    #[test]
    fn passphrase_file_loses_its_trailing_newline() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("pass");
        std::fs::write(&path, "s3cret\n").expect("write");
        let config = parse(&["--passphrase-file", path.to_str().expect("utf-8")])
            .into_config(None)
            .expect("valid");
        assert_eq!(config.passphrase.as_deref(), Some("s3cret"));
    }

    #[test]
    fn invalid_values_name_their_option() {
        let cases: [(&[&str], &str); 5] = [
            (&["--code-length", "3"], "--code-length"),
            (&["--code-length", "17"], "--code-length"),
            (&["--ping-interval", "0"], "--ping-interval"),
            (&["--ping-interval", "2m"], "--idle-timeout"),
            (&["--send-queue-bytes", "10"], "--send-queue-bytes"),
        ];
        for (args, option) in cases {
            let error = parse(args)
                .into_config(None)
                .expect_err("invalid")
                .to_string();
            assert!(error.contains(option), "{error:?} should name {option}");
            assert!(!error.contains('\n'), "{error:?} should be one line");
        }
        assert!(Options::try_parse_from(["intercessor", "--rate-limit", "x"]).is_err());
    }

    #[test]
    fn ice_servers_are_checked() {
        let config = parse(&[
            "--ice-server",
            "stun:a:3478",
            "--ice-server",
            "turn:b",
            "--turn-secret",
            "s",
        ])
        .into_config(None)
        .expect("valid");
        assert_eq!(config.ice.urls, ["stun:a:3478", "turn:b"]);
        assert_eq!(config.ice.turn_ttl, DEFAULT_TURN_TTL);
        let error = parse(&["--ice-server", "turn:b"])
            .into_config(None)
            .expect_err("no secret")
            .to_string();
        assert!(error.contains("--turn-secret"), "{error}");
        let error = parse(&["--ice-server", "http://b"])
            .into_config(None)
            .expect_err("scheme")
            .to_string();
        assert!(error.contains("--ice-server"), "{error}");
    }

    #[test]
    fn tls_sources() {
        let config = parse(&["--dev-tls"]).into_config(None).expect("valid");
        assert_eq!(
            config.tls,
            Some(TlsSource::Dev {
                dir: "certs".into()
            })
        );
        let config = parse(&["--dev-tls", "--certs-dir", "/tmp/c"])
            .into_config(None)
            .expect("valid");
        assert_eq!(
            config.tls,
            Some(TlsSource::Dev {
                dir: "/tmp/c".into()
            })
        );
        let file: Options = toml::from_str("dev_tls = true").expect("valid file");
        let config = parse(&["--dev-tls=false"])
            .or(file)
            .into_config(None)
            .expect("valid");
        assert_eq!(
            config.tls, None,
            "the command line turns off what the file turned on"
        );
        let config = parse(&["--tls-cert", "c.pem", "--tls-key", "k.pem"])
            .into_config(None)
            .expect("valid");
        assert_eq!(
            config.tls,
            Some(TlsSource::Files {
                cert: "c.pem".into(),
                key: "k.pem".into()
            })
        );
        assert!(Options::try_parse_from(["intercessor", "--tls-cert", "c.pem"]).is_err());
        let file: Options = toml::from_str("tls_key = \"k.pem\"").expect("valid file");
        let error = parse(&["--tls-cert", "c.pem", "--tls-key", "k.pem", "--dev-tls"])
            .into_config(None)
            .expect_err("conflict")
            .to_string();
        assert!(error.contains("--dev-tls"), "{error}");
        let error = parse(&[])
            .or(file)
            .into_config(None)
            .expect_err("half")
            .to_string();
        assert!(error.contains("--tls-key needs --tls-cert"), "{error}");
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, "code_lenght = 8\n").expect("write");
        let error = Options::from_file(&path)
            .expect_err("unknown key")
            .to_string();
        assert!(error.contains("code_lenght"), "{error}");
        assert!(!error.contains('\n'), "{error:?}");
    }
}
