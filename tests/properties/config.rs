//! Configuration: durations (`Span`), the command line and options files, each read into a valid
//! `Config` or refused in one line naming the option.

use crate::cases;
use crate::common::oracles;
use intercessor::config::{Config, IntoConfig as _};
use intercessor::options::{self, Options, ParseError, Parsed, Span};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use std::time::Duration;

/// Every relay option's long name, as clap spells it (`--config` has its own tests).
fn option_names() -> Vec<&'static str> {
    static NAMES: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    NAMES
        .get_or_init(|| {
            options::command()
                .get_arguments()
                .filter_map(|arg| arg.get_long())
                .filter(|long| !["help", "version", "config"].contains(long))
                .map(|long| &*Box::leak(long.to_owned().into_boxed_str()))
                .collect()
        })
        .clone()
}

/// `--passphrase-file` values are put under a directory that cannot exist, so no test reads a
/// real file (say /dev/zero) whatever the generated path.
const NO_SUCH_DIR: &str = "/nonexistent-intercessor-properties";

/// Values an option might be given: plausible ones of every kind, and anything at all.
fn option_value() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u64..3_000_000).prop_map(|n| n.to_string()),
        (0u64..4).prop_map(|n| n.to_string()),
        (
            0u64..200,
            prop::sample::select(vec!["", "ms", "s", "m", "h", " s", "us"])
        )
            .prop_map(|(n, unit)| format!("{n}{unit}")),
        prop::sample::select(vec![
            "stun:a:3478",
            "turn:b",
            "turns:c",
            "http://d",
            "",
            "true",
            "false",
            "json",
            "text",
            "127.0.0.1:0",
            "[::1]:9",
            "-1",
            "soon",
        ])
        .prop_map(str::to_owned),
        // Line breaks, which must not split an error message.
        "(stun:|turn:|)[a-z]{0,3}[\r\n][a-z]{0,3}",
        any::<String>(),
    ]
}

/// An argument list: some options, each `--name value` or `--name=value`.
fn arguments() -> impl Strategy<Value = (Vec<String>, Vec<&'static str>)> {
    prop::collection::vec(
        (
            prop::sample::select(option_names()),
            option_value(),
            any::<bool>(),
        ),
        0..6,
    )
    .prop_map(|options| {
        let mut argv = vec!["intercessor".to_owned()];
        let mut named = Vec::new();
        for (name, value, joined) in options {
            let value = if name == "passphrase-file" {
                format!("{NO_SUCH_DIR}/{value}")
            } else {
                value
            };
            if joined {
                argv.push(format!("--{name}={value}"));
            } else {
                argv.push(format!("--{name}"));
                argv.push(value);
            }
            named.push(name);
        }
        (argv, named)
    })
}

/// Checks what `into_config` made of `options`: besides [`oracles::check_config`], an error names
/// an option that was given (or PORT), and a config keeps every value given.
fn check_into_config(
    options: &Options,
    result: anyhow::Result<Config>,
    named: &[&str],
    port: Option<&str>,
) -> Result<(), TestCaseError> {
    let config = match oracles::check_config(result) {
        Err(message) => {
            let names_one = named
                .iter()
                .any(|name| message.contains(&format!("--{name}")))
                || (port.is_some() && message.contains("PORT"));
            prop_assert!(names_one, "{:?} names none of {:?}", message, named);
            return Ok(());
        }
        Ok(config) => config,
    };
    prop_assert_eq!(config.code_length, options.code_length);
    prop_assert_eq!(config.rate_limit, options.rate_limit);
    prop_assert_eq!(config.max_message_bytes, options.max_message_bytes);
    prop_assert_eq!(config.send_queue_bytes, options.send_queue_bytes);
    prop_assert_eq!(config.max_connections, options.max_connections);
    prop_assert_eq!(
        config.max_clients_per_server,
        options.max_clients_per_server
    );
    prop_assert_eq!(config.ping_interval, options.ping_interval.0);
    prop_assert_eq!(config.idle_timeout, options.idle_timeout.0);
    prop_assert_eq!(config.handshake_timeout, options.handshake_timeout.0);
    prop_assert_eq!(config.shutdown_timeout, options.shutdown_timeout.0);
    prop_assert_eq!(config.ice.turn_ttl, options.turn_ttl.0);
    prop_assert_eq!(&config.server_info, &options.server_info);
    prop_assert_eq!(&config.allowed_origins, &options.allowed_origins);
    prop_assert_eq!(&config.ice.urls, &options.ice_servers);
    prop_assert_eq!(config.metrics_listen, options.metrics_listen);
    if let Some(listen) = options.listen {
        prop_assert_eq!(config.listen, listen);
    }
    if options.passphrase.is_some() {
        prop_assert_eq!(&config.passphrase, &options.passphrase);
    }
    Ok(())
}

/// `argv` read as the binary reads it; `None` when clap refuses it (its own errors are tested
/// apart) or it names a subcommand.
fn relay_options<T: Into<std::ffi::OsString> + Clone>(argv: &[T]) -> Option<Options> {
    match options::parse(argv.iter().cloned()) {
        Ok(Parsed::Relay(options)) => Some(*options),
        _ => None,
    }
}

/// A TOML options file: some known keys (and now and then an unknown one) with values of any
/// TOML type.
fn toml_file() -> impl Strategy<Value = (String, Vec<&'static str>)> {
    let value = prop_oneof![
        option_value().prop_map(|v| toml_string(&v)),
        (-5i64..3_000_000).prop_map(|n| n.to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        prop::collection::vec(option_value(), 0..3).prop_map(|items| format!(
            "[{}]",
            items
                .iter()
                .map(|i| toml_string(i))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    ];
    let key = prop_oneof![
        20 => prop::sample::select(option_names()),
        1 => Just("code-lenght"),
    ];
    prop::collection::btree_map(key, value, 0..6).prop_map(|entries| {
        let mut text = String::new();
        let mut named = Vec::new();
        for (name, value) in entries {
            let value = if name == "passphrase-file" {
                toml_string(&format!("{NO_SUCH_DIR}/x"))
            } else {
                value
            };
            text.push_str(&format!("{} = {value}\n", name.replace('-', "_")));
            named.push(name);
        }
        (text, named)
    })
}

/// `text` as a TOML basic string, with every character TOML forbids raw escaped.
fn toml_string(text: &str) -> String {
    let mut quoted = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            c if c.is_control() => quoted.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn span_never_panics(text in any::<String>()) {
        oracles::check_span(&text);
    }

    #[test]
    fn spans_read_seconds_and_milliseconds(n in any::<u64>(), pad in "[ \t]{0,2}") {
        prop_assert_eq!(format!("{pad}{n}{pad}").parse(), Ok(Span(Duration::from_secs(n))));
        prop_assert_eq!(format!("{n}s").parse(), Ok(Span(Duration::from_secs(n))));
        let millis = format!("{n}ms").parse::<Span>();
        // humantime counts sub-second units in u64 nanoseconds, so past ~584 years of
        // milliseconds it refuses (cleanly) what plain seconds still accept.
        if n <= u64::MAX / 1_000_000 {
            prop_assert_eq!(millis, Ok(Span(Duration::from_millis(n))));
        } else {
            prop_assert!(millis.is_err() || millis == Ok(Span(Duration::from_millis(n))));
        }
    }

    #[test]
    fn spans_read_minutes_or_refuse_overflow(n in prop_oneof![0u64..1_000_000, any::<u64>()]) {
        let parsed = format!("{n}m").parse::<Span>();
        match n.checked_mul(60) {
            Some(seconds) => prop_assert_eq!(parsed, Ok(Span(Duration::from_secs(seconds)))),
            None => prop_assert!(parsed.is_err()),
        }
    }

    #[test]
    fn negative_spans_are_refused(
        n in 1u64..u64::MAX,
        unit in prop::sample::select(vec!["", "s", "ms", "m"]),
    ) {
        let negative = format!("-{n}{unit}");
        prop_assert!(negative.parse::<Span>().is_err(), "{:?}", negative);
    }

    #[test]
    fn options_become_a_valid_config_or_a_one_line_error(
        (argv, named) in arguments(),
        port in prop::option::of(prop_oneof!["[0-9]{1,6}", any::<String>()]),
    ) {
        if let Some(options) = relay_options(&argv) {
            let result = options.clone().into_config(port.as_deref());
            check_into_config(&options, result, &named, port.as_deref())?;
        }
    }

    #[test]
    fn any_file_is_read_or_refused_in_one_line_naming_it(
        text in prop_oneof![any::<String>(), "[a-z_ =\"\\[\\]{},.0-9\n#']{0,60}"],
    ) {
        let file = options_file(&text);
        if let Err(ParseError::File(message)) = parse_file(&file) {
            prop_assert!(!message.contains('\n'), "not one line: {:?}", message);
            prop_assert!(message.contains("--config"), "{:?}", message);
        }
    }

    #[test]
    fn file_options_become_a_valid_config_or_a_one_line_error((text, named) in toml_file()) {
        let file = options_file(&text);
        match parse_file(&file) {
            Ok(Parsed::Relay(options)) => {
                prop_assert!(!named.contains(&"code-lenght"), "unknown keys are refused: {}", text);
                let result = options.clone().into_config(None);
                check_into_config(&options, result, &named, None)?;
            }
            Err(ParseError::File(message)) => {
                prop_assert!(!message.contains('\n'), "not one line: {:?}", message);
                prop_assert!(message.contains("--config"), "{:?}", message);
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }
}

/// A temporary options file holding `text`.
fn options_file(text: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), text).expect("write");
    file
}

fn parse_file(file: &tempfile::NamedTempFile) -> Result<Parsed, ParseError> {
    let path = file.path().to_str().expect("utf-8 path");
    options::parse(["intercessor", "--config", path])
}

#[test]
fn option_errors_stay_on_one_line() {
    let cases: [&[&str]; 4] = [
        // fuzz/ config target, minimised: `--server-info\0\0--ice-server\0nx\n`.
        &["intercessor", "--server-info", "", "--ice-server", "nx\n"],
        &["intercessor", "--ice-server", "x\nb"],
        &["intercessor", "--ice-server", "turn:a\nb"],
        &[
            "intercessor",
            "--passphrase-file",
            "/nonexistent-intercessor-properties/a\nb",
        ],
    ];
    for argv in cases {
        let error = relay_options(argv)
            .expect("clap accepts any text as these values")
            .into_config(None)
            .expect_err("each value is refused")
            .to_string();
        assert!(!error.contains('\n'), "{error:?} should be one line");
    }
}
