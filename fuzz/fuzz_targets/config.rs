//! Fuzz target: configuration text through `Span::from_str`, the command line parser with
//! `into_config`, and the TOML file parser with `into_config`.

#![no_main]

use clap::{Command, CommandFactory, FromArgMatches};
use intercessor::config::{Config, Options, Span};
use intercessor::relay::ice;
use intercessor::relay::ids::{MAX_CODE_LENGTH, MIN_CODE_LENGTH};
use libfuzzer_sys::fuzz_target;
use std::ffi::OsString;
use std::sync::OnceLock;
use std::time::Duration;

/// `--passphrase-file` values are moved under a directory that cannot exist, so the fuzzer never
/// reads a real file (`/dev/stdin` would block, `/dev/zero` would never end).
const NO_SUCH_DIR: &str = "/nonexistent-intercessor-fuzz/";

/// Validates `options` and checks the outcome: a one-line error, or a config within every bound.
fn check(mut options: Options) {
    options.passphrase_file = options.passphrase_file.map(|path| {
        let mut moved = OsString::from(NO_SUCH_DIR);
        moved.push(path);
        moved.into()
    });
    match options.into_config(None) {
        Err(error) => {
            let message = error.to_string();
            assert!(!message.contains(['\n', '\r']), "not one line: {message:?}");
            assert!(message.contains("--"), "names no option: {message:?}");
        }
        Ok(config) => check_bounds(&config),
    }
}

/// The command line parser, built (and its definition checked) once: what `Options::try_parse_from`
/// does per call, minus clap's debug-build self-check, which is ten times the cost of a parse.
fn command() -> Command {
    static COMMAND: OnceLock<Command> = OnceLock::new();
    COMMAND
        .get_or_init(|| {
            let mut command = Options::command();
            command.build();
            command
        })
        .clone()
}

/// The bounds `into_config` promises for every config it returns.
fn check_bounds(config: &Config) {
    assert!((MIN_CODE_LENGTH..=MAX_CODE_LENGTH).contains(&config.code_length));
    assert!(config.idle_timeout > config.ping_interval);
    assert!(!config.ping_interval.is_zero() && !config.handshake_timeout.is_zero());
    assert!(!config.ice.turn_ttl.is_zero());
    assert!(config.max_message_bytes >= 128);
    assert!(config.send_queue_bytes >= config.max_message_bytes + 256);
    assert!(config.max_clients_per_server >= 1 && config.max_connections >= 1);
    assert_ne!(config.passphrase.as_deref(), Some(""));
    for url in &config.ice.urls {
        assert!(ice::is_ice_url(url), "{url:?}");
        assert!(
            !ice::is_turn(url) || config.ice.turn_secret.is_some(),
            "{url:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);

    if let Ok(Span(span)) = text.parse::<Span>()
        && let Ok(seconds) = text.trim().parse::<u64>()
    {
        assert_eq!(span, Duration::from_secs(seconds));
    }

    // NUL separates arguments when present, so a value may hold spaces and line breaks.
    let args: Vec<&str> = if text.contains('\0') {
        text.split('\0').collect()
    } else {
        text.split_ascii_whitespace().collect()
    };
    let argv = std::iter::once("intercessor").chain(args);
    if let Ok(mut matches) = command().try_get_matches_from(argv)
        && let Ok(options) = Options::from_arg_matches_mut(&mut matches)
    {
        check(options);
    }

    if let Ok(options) = toml::from_str::<Options>(&text) {
        check(options);
    }
});
