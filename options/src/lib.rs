//! The options as people give them: on the command line, as `INTERCESSOR_*` variables, or in a
//! TOML file, layered in that order over the defaults.
//!
//! Each option is written once, as a field of [`Options`] with its help and default. clap does the
//! layering: the environment variable is derived from the long name (`--idle-timeout` →
//! `INTERCESSOR_IDLE_TIMEOUT`), and a file's values become the options' defaults (its key is the
//! long name with `_`), so the command line beats the environment, which beats the file, which
//! beats the built-in default. The relay's `Options::into_config` turns the result into a
//! validated `Config`.
//!
//! A crate of its own so that it can be built for size (`opt-level = "z"`): it runs once, at
//! start, and clap's derived code is large.

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// Where `--dev-tls` and `gen-certs` keep development certificates.
pub const DEFAULT_CERTS_DIR: &str = "certs";

/// Every environment variable is the long option name under this prefix.
const ENV_PREFIX: &str = "INTERCESSOR_";

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

impl std::fmt::Display for Span {
    /// As humantime writes it: `20s`, `1m 30s`, `500ms`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `--cluster-routing`: how a client that reached the wrong instance gets to its room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum ClusterRouting {
    /// fly-replay when FLY_MACHINE_ID is set (on Fly.io), else pubsub.
    #[default]
    Auto,
    /// Ask Fly's proxy to replay the request to the owner (`fly-replay: instance=…`).
    FlyReplay,
    /// Accept the client here and forward its frames to the owner over Redis pub/sub.
    Pubsub,
}

/// The command line.
#[derive(Debug, Parser)]
#[command(name = "intercessor", version, about, args_override_self = true)]
pub struct Cli {
    /// A TOML file of options (keys are option names with `_`); the command line and environment
    /// override it
    #[arg(long, value_name = "FILE")]
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

/// Every relay option. A field's doc comment is its `--help` line; its default is clap's.
#[derive(Debug, Clone, Args)]
pub struct Options {
    /// Address to listen on [default: 127.0.0.1:8080, or 0.0.0.0:$PORT when PORT is set]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Browser origin allowed to open WebSockets (repeatable; comma-separated in the environment);
    /// when given, upgrades from other origins get 403
    #[arg(long = "allowed-origin", value_name = "ORIGIN", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Drop connections that have not sent their HTTP request within this time
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    pub handshake_timeout: Span,

    /// Characters in a join code, 4 to 16
    #[arg(long, value_name = "N", default_value_t = 6)]
    pub code_length: usize,

    /// Text sent to every peer in HELLO as "serverInfo"
    #[arg(long, value_name = "TEXT")]
    pub server_info: Option<String>,

    /// Messages per second per peer, burst twice that; 0 turns the limit off
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub rate_limit: u32,

    /// Largest WebSocket message a peer may send; larger ones close it with 1009
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024)]
    pub max_message_bytes: usize,

    /// Clients one server may hold
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub max_clients_per_server: usize,

    /// Live WebSocket sessions; beyond it upgrades get 503
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Live WebSocket sessions per client address; beyond it ERROR RATE_LIMITED and close 4429;
    /// 0 turns it off
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub max_connections_per_ip: u32,

    /// Failed joins (unknown code) and registrations (wrong passphrase) per client address per
    /// minute; beyond it ERROR RATE_LIMITED and close 4429; 0 turns it off
    #[arg(long, value_name = "N", default_value_t = 30)]
    pub max_failed_attempts_per_minute: u32,

    /// Take the client address from this request header (e.g. Fly-Client-IP), set by a proxy you
    /// trust; without it the socket address is used, which cannot be spoofed
    #[arg(long, value_name = "NAME")]
    pub client_ip_header: Option<String>,

    /// Bytes that may wait for one peer before it is closed as too slow; at least
    /// --max-message-bytes + 256
    #[arg(long, value_name = "BYTES", default_value_t = 1024 * 1024)]
    pub send_queue_bytes: usize,

    /// Passphrase required to register at /server
    #[arg(long, value_name = "TEXT", hide_env_values = true)]
    pub passphrase: Option<String>,

    /// File holding the passphrase (a trailing newline is ignored)
    #[arg(long, value_name = "FILE", conflicts_with = "passphrase")]
    pub passphrase_file: Option<PathBuf>,

    /// How often to ping every peer
    #[arg(long, value_name = "DURATION", default_value = "20s")]
    pub ping_interval: Span,

    /// Close a peer from which nothing has arrived for this long
    #[arg(long, value_name = "DURATION", default_value = "60s")]
    pub idle_timeout: Span,

    /// How long a peer whose connection was lost stays away, able to resume its session with its
    /// token, before it is gone; 0 turns resuming off
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    pub resume_window: Span,

    /// Bytes queued for an away peer, and kept of what was last written to each peer for a
    /// resume to replay; at least --max-message-bytes + 256
    #[arg(long, value_name = "BYTES", default_value_t = 256 * 1024)]
    pub resume_queue_bytes: usize,

    /// Peers that may be away at once; beyond it a lost connection is a leave
    #[arg(long, value_name = "N", default_value_t = 2048)]
    pub max_away_peers: usize,

    /// How long a client that knocks at a room waits for its server to let it in
    #[arg(long, value_name = "DURATION", default_value = "2m")]
    pub knock_timeout: Span,

    /// Clients that may wait at one server's door at once; beyond it SERVER_FULL and close 4409
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub max_waiting_per_server: usize,

    /// How long shutdown waits for peers to close
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    pub shutdown_timeout: Span,

    /// STUN or TURN server handed to peers in HELLO's "iceServers" (repeatable; stun:, turn: or
    /// turns: URLs; comma-separated in the environment)
    #[arg(long = "ice-server", value_name = "URL", value_delimiter = ',')]
    pub ice_servers: Vec<String>,

    /// Secret shared with the TURN server (coturn's static-auth-secret), to sign time-limited
    /// TURN credentials
    #[arg(long, value_name = "SECRET", hide_env_values = true)]
    pub turn_secret: Option<String>,

    /// How long TURN credentials stay valid
    #[arg(long, value_name = "DURATION", default_value = "1h")]
    pub turn_ttl: Span,

    /// Serve HTTPS and WSS with this PEM certificate chain (needs --tls-key)
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert (PKCS#8, PKCS#1 or SEC1)
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// Serve TLS with development certificates from --certs-dir, creating them when missing
    #[arg(
        long,
        value_name = "BOOL",
        num_args = 0..=1,
        default_value = "false",
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new(),
    )]
    pub dev_tls: bool,

    /// Where --dev-tls keeps its certificates
    #[arg(long, value_name = "DIR", default_value = DEFAULT_CERTS_DIR)]
    pub certs_dir: PathBuf,

    /// Serve Prometheus metrics (and /healthz, /readyz) at http://ADDR/metrics [default: off]
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,

    /// JSON file mapping message types to JSON Schemas (draft 2020-12) for their "message";
    /// "*" covers types not listed, which are otherwise refused [default: no validation]
    #[arg(long, value_name = "FILE")]
    pub message_schema: Option<PathBuf>,

    /// Log line format
    #[arg(long, value_name = "FORMAT", default_value = "text")]
    pub log_format: LogFormat,

    /// Threads serving connections; 1 runs the whole relay on one thread [default: the cores this
    /// process may run on]
    #[arg(long, value_name = "N")]
    pub threads: Option<NonZeroUsize>,

    /// Redis holding the cluster directory (redis:// or redis+unix://): relays sharing it share
    /// one set of join codes [default: off, a single instance]
    #[arg(long, value_name = "URL", hide_env_values = true)]
    pub cluster_redis_url: Option<String>,

    /// How a client that reached another instance than its room's gets there
    #[arg(long, value_name = "MODE", default_value = "auto")]
    pub cluster_routing: ClusterRouting,

    /// This instance's id in the cluster (fly-replay names it) [default: $FLY_MACHINE_ID, else
    /// random]
    #[arg(long, value_name = "ID")]
    pub instance_id: Option<String>,

    /// Prefix of every Redis key the cluster uses
    #[arg(long, value_name = "PREFIX", default_value = "intercessor")]
    pub cluster_prefix: String,

    /// How long an instance's lease in Redis outlives its last renewal; its join codes die with it
    #[arg(long, value_name = "DURATION", default_value = "15s")]
    pub cluster_lease_ttl: Span,
}

/// How the command line was read.
#[derive(Debug)]
pub enum Parsed {
    /// Run the relay with these options (boxed: they are large, and read once).
    Relay(Box<Options>),
    /// Run a subcommand.
    Command(Command),
}

/// An option's environment variable: `--idle-timeout` → `INTERCESSOR_IDLE_TIMEOUT`.
pub fn env_name(long: &str) -> String {
    format!("{ENV_PREFIX}{}", long.replace('-', "_").to_uppercase())
}

/// An option's key in the TOML file: `--idle-timeout` → `idle_timeout`.
pub fn file_key(long: &str) -> String {
    long.replace('-', "_")
}

impl Options {
    /// Every option at its default, ignoring the environment.
    pub fn defaults() -> Options {
        let matches = Options::command_for_relay()
            .try_get_matches_from(["intercessor"])
            .expect("the defaults parse");
        Options::from_arg_matches(&matches).expect("the defaults are options")
    }

    /// The options alone as a clap command, without environment variables.
    fn command_for_relay() -> clap::Command {
        Options::augment_args(clap::Command::new("intercessor"))
    }
}

/// The command line with every relay option also read from its `INTERCESSOR_*` variable.
pub fn command() -> clap::Command {
    with_environment(Cli::command())
}

fn with_environment(command: clap::Command) -> clap::Command {
    command.mut_args(|arg| match arg.get_long() {
        Some(long) if long != "help" && long != "version" => {
            let name = env_name(long);
            arg.env(name)
        }
        _ => arg,
    })
}

/// Reads the command line `args` over the environment over the `--config` file (named on the
/// command line or by `INTERCESSOR_CONFIG`) over the defaults.
///
/// clap's own errors (an unknown option, a value that does not parse) come back as they are, to
/// be printed whole; errors in the file name the file and its line.
pub fn parse<I, T>(args: I) -> Result<Parsed, ParseError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let matches = command()
        .try_get_matches_from(&args)
        .map_err(ParseError::Clap)?;
    let cli = Cli::from_arg_matches(&matches).map_err(ParseError::Clap)?;
    if let Some(command) = cli.command {
        return Ok(Parsed::Command(command));
    }
    let Some(path) = cli.config else {
        return Ok(Parsed::Relay(Box::new(options(&matches)?)));
    };
    let file = ConfigFile::read(&path).map_err(ParseError::File)?;
    // The command line parsed without the file, so what fails now is one of the file's values.
    let in_file = |error: clap::Error| ParseError::File(file.explain(&error));
    let matches = file
        .under(command())
        .try_get_matches_from(&args)
        .map_err(in_file)?;
    Ok(Parsed::Relay(Box::new(options(&matches)?)))
}

/// The relay options from `matches`. Where both the passphrase and its file are given, the one
/// given higher up (command line over environment over file) wins; clap refuses both at one level.
fn options(matches: &ArgMatches) -> Result<Options, ParseError> {
    let mut options = Options::from_arg_matches(matches).map_err(ParseError::Clap)?;
    let source = |id| {
        matches
            .value_source(id)
            .filter(|s| *s != ValueSource::DefaultValue)
    };
    let from_file = |id| matches.value_source(id) == Some(ValueSource::DefaultValue);
    match (source("passphrase"), source("passphrase_file")) {
        (Some(_), None) if from_file("passphrase_file") => options.passphrase_file = None,
        (None, Some(_)) if from_file("passphrase") => options.passphrase = None,
        (Some(text), Some(file)) if text > file => options.passphrase_file = None,
        (Some(text), Some(file)) if file > text => options.passphrase = None,
        _ => {}
    }
    Ok(options)
}

/// Why the options could not be read.
#[derive(Debug)]
pub enum ParseError {
    /// clap's message, which names the option and often the fix; `--help` and `--version` too.
    Clap(clap::Error),
    /// The `--config` file: unreadable, not TOML, an unknown key or a bad value, in one line.
    File(String),
}

/// A TOML options file, read.
struct ConfigFile {
    path: PathBuf,
    text: String,
    /// Each key with its values as text, as they would be written on the command line.
    entries: Vec<(String, Vec<String>)>,
}

impl ConfigFile {
    fn read(path: &Path) -> Result<ConfigFile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| format!("reading --config {path:?}: {error}"))?;
        let table: toml::Table = toml::from_str(&text).map_err(|error| {
            let at = error.span().map_or(0, |span| span.start);
            let line = text.get(..at).unwrap_or("").matches('\n').count() + 1;
            format!(
                "--config {path:?} line {line}: {}",
                one_line(error.message())
            )
        })?;
        // Each key, and whether its option may be given more than once.
        let known: Vec<(String, bool)> = Options::command_for_relay()
            .get_arguments()
            .filter_map(|arg| {
                let repeatable = matches!(arg.get_action(), clap::ArgAction::Append);
                arg.get_long().map(|long| (file_key(long), repeatable))
            })
            .collect();
        let mut file = ConfigFile {
            path: path.to_owned(),
            text,
            entries: Vec::new(),
        };
        for (key, value) in table {
            let Some(&(_, repeatable)) = known.iter().find(|(known, _)| *known == key) else {
                return Err(file.at(&key, &format!("unknown option `{key}`")));
            };
            let values = match value {
                toml::Value::Array(items) if repeatable => items.into_iter().map(scalar).collect(),
                toml::Value::Array(_) => {
                    return Err(file.at(&key, "expected one value, not a list"));
                }
                value => vec![scalar(value)],
            };
            match values.into_iter().collect::<Option<Vec<_>>>() {
                Some(values) => file.entries.push((key, values)),
                None => return Err(file.at(&key, "expected a string, number or boolean")),
            }
        }
        Ok(file)
    }

    /// `command` with this file's values as its options' defaults.
    fn under(&self, command: clap::Command) -> clap::Command {
        command.mut_args(|arg| {
            let Some(key) = arg.get_long().map(file_key) else {
                return arg;
            };
            match self.entries.iter().find(|(k, _)| *k == key) {
                // An empty list is what the option's default already is: nothing.
                Some((_, values)) if !values.is_empty() => arg.default_values(values.clone()),
                _ => arg,
            }
        })
    }

    /// One line for a clap error caused by one of this file's values.
    fn explain(&self, error: &clap::Error) -> String {
        use clap::error::{ContextKind, ContextValue};
        let long = match error.get(ContextKind::InvalidArg) {
            Some(ContextValue::String(arg)) => arg
                .trim_start_matches("--")
                .split([' ', '<', '='])
                .next()
                .unwrap_or_default()
                .to_owned(),
            _ => String::new(),
        };
        let rendered = error.render().to_string();
        let first = rendered.lines().next().unwrap_or("invalid value");
        self.at(&file_key(&long), first.trim_start_matches("error: "))
    }

    /// A one-line message about `key`, naming the file and the line it is on.
    fn at(&self, key: &str, message: &str) -> String {
        let path = &self.path;
        let found = self.text.lines().enumerate().find(|(_, line)| {
            line.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        });
        match found {
            Some((index, line)) => {
                format!(
                    "--config {path:?} line {} `{}`: {message}",
                    index + 1,
                    line.trim()
                )
            }
            None => format!("--config {path:?}: {message}"),
        }
    }
}

/// A TOML value as it would be written on the command line; `None` for tables and dates.
fn scalar(value: toml::Value) -> Option<String> {
    match value {
        toml::Value::String(text) => Some(text),
        toml::Value::Integer(n) => Some(n.to_string()),
        toml::Value::Float(x) => Some(x.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        toml::Value::Datetime(_) | toml::Value::Array(_) | toml::Value::Table(_) => None,
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
