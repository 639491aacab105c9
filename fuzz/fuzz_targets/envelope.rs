//! Fuzz target: a peer's text frame through `parse_incoming`, and what it parsed back out through
//! `relayed`.

#![no_main]

use intercessor::relay::protocol::{MAX_TYPE_BYTES, parse_incoming, relayed};
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde_json::value::RawValue;

/// A relayed frame as a receiver reads it; `message` stays raw so it compares byte for byte (and
/// so numbers like `1e400`, valid JSON but not an f64, are not refused here).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Frame<'a> {
    from: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(borrow)]
    message: &'a RawValue,
}

fuzz_target!(|data: &[u8]| {
    // WebSocket text frames reach the parser as UTF-8; lossy keeps every input useful.
    let text = String::from_utf8_lossy(data);
    let Ok(incoming) = parse_incoming(&text) else {
        return;
    };
    assert!(!incoming.kind.is_empty() && incoming.kind.len() <= MAX_TYPE_BYTES);
    // The documented envelope is a JSON object.
    assert!(
        text.trim_start().starts_with('{'),
        "not an object: {text:?}"
    );

    let frame = relayed("SENDER", &incoming.kind, incoming.message);
    let parsed: Frame<'_> = serde_json::from_str(&frame).expect("a relayed frame is JSON");
    assert_eq!(parsed.from, "SENDER");
    assert_eq!(parsed.kind, incoming.kind);
    let sent = incoming.message.map_or("null", RawValue::get);
    assert_eq!(
        parsed.message.get(),
        sent,
        "the message is carried byte for byte"
    );
});
