//! Fuzz target: a peer's text frame through `parse_incoming`, and what it parsed back out through
//! `relayed`.

#![no_main]

#[path = "../../tests/common/oracles.rs"]
mod oracles;

use intercessor::relay::protocol::parse_incoming;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // WebSocket text frames reach the parser as UTF-8; lossy keeps every input useful.
    let text = String::from_utf8_lossy(data);
    let Ok(incoming) = parse_incoming(&text) else {
        return;
    };
    oracles::check_accepted_envelope(&text, &incoming);
    oracles::check_relayed("SENDER", &incoming.kind, incoming.message);
});
