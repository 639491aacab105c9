//! Fuzz target: join codes as people type them, through `JoinCode::parse`.

#![no_main]

#[path = "../../tests/common/oracles.rs"]
mod oracles;

use intercessor::relay::ids::JoinCode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let parsed = JoinCode::parse(&text);
    if let Some(code) = parsed {
        oracles::check_canonical(code);
    }
    assert_eq!(
        parsed.map(|c| c.to_string()),
        oracles::expected_code(&text),
        "{text:?}"
    );
});
