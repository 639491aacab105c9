//! Fuzz target: configuration text through `Span::from_str`, the command line parser with
//! `into_config`, and the options file parser with `into_config`.

#![no_main]

#[path = "../../tests/common/oracles.rs"]
mod oracles;

use intercessor::config::IntoConfig as _;
use intercessor::options::{self, Parsed};
use libfuzzer_sys::fuzz_target;
use std::ffi::OsString;

/// `--passphrase-file` and `--message-schema` values are moved under a directory that cannot
/// exist, so the fuzzer never reads a real file (`/dev/stdin` would block, `/dev/zero` would
/// never end).
const NO_SUCH_DIR: &str = "/nonexistent-intercessor-fuzz/";

/// Reads `args`; what `into_config` makes of them must pass [`oracles::check_config`].
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
    let _ = oracles::check_config(options.into_config(None));
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);

    oracles::check_span(&text);

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
