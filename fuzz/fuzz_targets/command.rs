//! Fuzz target: what a peer sends to the relay itself (`"to": "0"`) through `command::parse`, and
//! a resume token from a URL through `Token::parse`. Neither may panic; what they accept keeps
//! its bounds.

#![no_main]

use intercessor::relay::command::{self, Command, MAX_REASON_BYTES};
use intercessor::relay::protocol::parse_incoming;
use intercessor::relay::resume::Token;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(token) = Token::parse(data) {
        assert_eq!(
            token.encode().as_bytes(),
            data,
            "a token reads back as it was written"
        );
    }
    let text = String::from_utf8_lossy(data);
    let Ok(incoming) = parse_incoming(&text) else {
        return;
    };
    match command::parse(&incoming.kind, incoming.message) {
        Ok(Command::Kick { reason, .. } | Command::Deny { reason, .. }) => {
            assert!(reason.is_none_or(|reason| reason.len() <= MAX_REASON_BYTES));
        }
        Ok(_) | Err(_) => {}
    }
});
