//! The `intercessor` binary: read the configuration, set up logging, run until SIGTERM or SIGINT.

use anyhow::Context as _;
use intercessor::Relay;
use intercessor::config::IntoConfig as _;
use intercessor::edge::devcert;
use intercessor::edge::net;
use intercessor::edge::tls::TlsFiles;
use intercessor::options::{self, Command, LogFormat, Options, ParseError, Parsed};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

fn main() -> ExitCode {
    let options = match options::parse(std::env::args_os()) {
        Ok(Parsed::Relay(options)) => *options,
        Ok(Parsed::Command(command)) => return finish(run_command(command)),
        // `--help` and `--version` are clap "errors" for stdout.
        Err(ParseError::Clap(error)) if !error.use_stderr() => {
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        // clap's whole message: it names the option, and often the fix (the possible values,
        // the option meant, the one missing).
        Err(ParseError::Clap(error)) => {
            let _ = error.print();
            return ExitCode::from(2);
        }
        Err(ParseError::File(line)) => {
            eprintln!("error: {line}");
            return ExitCode::from(2);
        }
    };
    finish(run(options))
}

fn finish(outcome: anyhow::Result<()>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_command(command: Command) -> anyhow::Result<()> {
    let Command::GenCerts { dir, sans } = command;
    let (paths, outcome) = devcert::ensure(&dir, &sans)?;
    println!("{outcome}");
    println!("CA (trust this once):  {}", paths.ca_cert.display());
    println!("certificate:           {}", paths.cert.display());
    println!("key:                   {}", paths.key.display());
    println!(
        "serve with: intercessor --tls-cert {} --tls-key {}   (or --dev-tls --certs-dir {})",
        paths.cert.display(),
        paths.key.display(),
        dir.display()
    );
    println!(
        "check with: curl --cacert {} https://localhost:8443/healthz   (after --listen 127.0.0.1:8443)",
        paths.ca_cert.display()
    );
    Ok(())
}

fn run(options: Options) -> anyhow::Result<()> {
    let log_format = options.log_format;
    let threads = options.threads.unwrap_or_else(net::available_threads);
    let config = options.into_config(std::env::var("PORT").ok().as_deref())?;
    init_logging(log_format);

    let runtime = net::runtime(threads)?;
    runtime.block_on(async {
        // Signal handlers go in before the listener exists, so that no SIGTERM can arrive while
        // the relay listens but would still die of the default action.
        let stop_signals = StopSignals::install()?;
        let hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        raise_open_file_limit(config.max_connections + config.max_pending_connections);
        let relay = Relay::bind(config).await?;
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_signals.cancel_on_first(shutdown.clone()));
        if let Some(tls) = relay.tls() {
            tokio::spawn(reload_on_hangup(hangup, tls));
        }
        // On a worker like the connections it spawns: with several threads, from `block_on`'s
        // thread every accepted connection would be handed across threads.
        tokio::spawn(relay.run(shutdown))
            .await
            .context("the accept loop panicked")
    })
}

/// Every peer holds a socket, and so does every connection still in its handshake, so
/// `sockets` needs as many open files and a few more. Raise the soft limit to the hard one, and
/// say so if even that is short, rather than failing accepts quietly later.
fn raise_open_file_limit(sockets: usize) {
    let needed = sockets as u64 + 64;
    match rlimit::increase_nofile_limit(needed) {
        Ok(limit) if limit < needed => tracing::warn!(
            limit,
            needed,
            "the open-file limit is below --max-connections and the handshakes beside them: \
             accepts will fail beyond about {limit} sockets; raise `ulimit -n` or lower \
             --max-connections"
        ),
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "cannot read or raise the open-file limit"),
    }
}

/// Caps the libraries whose trace lines print frames and request heads: those hold message
/// contents, passphrases and resume tokens, which the relay never logs, whatever `RUST_LOG` says.
const SECRET_KEEPING: [&str; 2] = ["tungstenite=debug", "hyper=debug"];

fn init_logging(format: LogFormat) {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if filter
        .max_level_hint()
        .is_none_or(|level| level >= LevelFilter::TRACE)
    {
        for directive in SECRET_KEEPING {
            if let Ok(directive) = directive.parse() {
                filter = filter.add_directive(directive);
            }
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The SIGTERM and SIGINT handlers, installed early.
struct StopSignals {
    terminate: Signal,
    interrupt: Signal,
}

impl StopSignals {
    fn install() -> anyhow::Result<StopSignals> {
        Ok(StopSignals {
            terminate: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            interrupt: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    /// Cancels `shutdown` on the first SIGTERM or SIGINT.
    async fn cancel_on_first(mut self, shutdown: CancellationToken) {
        tokio::select! {
            _ = self.terminate.recv() => tracing::info!("SIGTERM received"),
            _ = self.interrupt.recv() => tracing::info!("SIGINT received"),
        }
        shutdown.cancel();
    }
}

/// Reloads the TLS certificate and key on every SIGHUP; a failed reload keeps the old ones.
async fn reload_on_hangup(mut hangup: Signal, tls: Arc<TlsFiles>) {
    while hangup.recv().await.is_some() {
        match tls.reload() {
            Ok(()) => tracing::info!("TLS certificate reloaded"),
            Err(error) => {
                tracing::error!("TLS reload failed, keeping the old certificate: {error:#}")
            }
        }
    }
}
