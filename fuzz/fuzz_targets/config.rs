//! Fuzz target: configuration text through `Span::from_str`, the command line parser with
//! `into_config`, and the options file parser with `into_config`.

#![no_main]

use intercessor::options::{self, Parsed, Span};
use libfuzzer_sys::fuzz_target;
use std::ffi::OsString;
use std::time::Duration;

/// `--passphrase-file` and `--message-schema` values are moved under a directory that cannot
/// exist, so the fuzzer never reads a real file (`/dev/stdin` would block, `/dev/zero` would
/// never end).
const NO_SUCH_DIR: &str = "/nonexistent-intercessor-fuzz/";

/// Reads `args`; a relay configuration that comes out must keep every bound, and an error of
/// the relay's own is one line naming an option.
fn check<I: IntoIterator<Item = OsString>>(args: I) {
    let Ok(Parsed::Relay(mut options)) = options::parse(args) else {
        return;
    };
    let away = |path: std::path::PathBuf| {
        let mut moved = OsString::from(NO_SUCH_DIR);
        moved.push(path);
        std::path::PathBuf::from(moved)
    };
    options.passphrase_file = options.passphrase_file.map(away);
    options.message_schema = options.message_schema.map(away);
    match options.into_config(None) {
        Err(error) => {
            let message = error.to_string();
            assert!(!message.contains(['\n', '\r']), "not one line: {message:?}");
            assert!(message.contains("--"), "names no option: {message:?}");
        }
        Ok(config) => {
            if let Err(error) = config.validate() {
                panic!("into_config returned a config that fails validate: {error}");
            }
        }
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
    check(
        std::iter::once("intercessor")
            .chain(args)
            .filter(|arg| !arg.starts_with("--config"))
            .map(OsString::from),
    );

    // The same text as an options file.
    let path = std::env::temp_dir().join(format!("intercessor-fuzz-{}.toml", std::process::id()));
    if std::fs::write(&path, text.as_bytes()).is_ok() {
        let argv = [
            "intercessor".into(),
            "--config".into(),
            path.into_os_string(),
        ];
        check(argv);
    }
});
