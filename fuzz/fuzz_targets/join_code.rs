//! Fuzz target: join codes as people type them, through `JoinCode::parse`.

#![no_main]

use intercessor::relay::ids::{CROCKFORD, JoinCode, MAX_CODE_LENGTH, MIN_CODE_LENGTH};
use libfuzzer_sys::fuzz_target;

/// The canonical code `input` spells, from the documented rules alone: any case, `-` and space
/// ignored, O→0, I/L→1, no U, 4–16 characters.
fn expected(input: &str) -> Option<String> {
    let mut code = String::new();
    for c in input.chars() {
        match c.to_ascii_uppercase() {
            '-' | ' ' => {}
            'O' => code.push('0'),
            'I' | 'L' => code.push('1'),
            c if CROCKFORD.contains(&c) => code.push(c),
            _ => return None,
        }
    }
    (MIN_CODE_LENGTH..=MAX_CODE_LENGTH)
        .contains(&code.len())
        .then_some(code)
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let parsed = JoinCode::parse(&text);
    if let Some(code) = parsed {
        let canonical = code.as_str();
        assert!((MIN_CODE_LENGTH..=MAX_CODE_LENGTH).contains(&canonical.len()));
        assert!(
            canonical.chars().all(|c| CROCKFORD.contains(&c)),
            "{canonical:?}"
        );
        assert_eq!(
            JoinCode::parse(canonical),
            Some(code),
            "parsing is idempotent"
        );
    }
    assert_eq!(parsed.map(|c| c.to_string()), expected(&text), "{text:?}");
});
