//! Oracles: what the relay's parsers of untrusted input must say of any input, judged from the
//! documented rules alone.
//!
//! Written once for the property tests (`tests/properties/`) and the fuzz targets
//! (`fuzz/fuzz_targets/`), which include this file by path. So it uses only crates both have
//! (intercessor, http, data-encoding, serde, serde_json, tokio-tungstenite), and it asserts by
//! panicking, which proptest shrinks like any failed property.
#![allow(dead_code)]

use data_encoding::BASE64;
use http::{HeaderName, HeaderValue, Method, Request, StatusCode, Version, header};
use intercessor::config::Config;
use intercessor::options::Span;
use intercessor::relay::ids::{CROCKFORD, JoinCode, MAX_CODE_LENGTH, MIN_CODE_LENGTH};
use intercessor::relay::protocol::{Incoming, MAX_TYPE_BYTES, relayed};
use intercessor::relay::upgrade::Rejection;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::fmt::Display;
use std::time::Duration;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

// ---- Envelopes -------------------------------------------------------------------------------

/// Checks what `parse_incoming` accepted from `text`: the documented envelope is a JSON object
/// whose `type` is 1 to [`MAX_TYPE_BYTES`] bytes.
pub fn check_accepted_envelope(text: &str, incoming: &Incoming<'_>) {
    let kind = &incoming.kind;
    assert!(
        !kind.is_empty() && kind.len() <= MAX_TYPE_BYTES,
        "{kind:?} in {text:?}"
    );
    assert!(
        text.trim_start().starts_with('{'),
        "not an object: {text:?}"
    );
}

/// Checks `relayed(from, kind, message)`: an object of exactly `from`, `type` and `message`, the
/// message carried byte for byte (`null` when there is none).
pub fn check_relayed(from: &str, kind: &str, message: Option<&RawValue>) {
    /// A relayed frame as a receiver reads it; `message` stays raw so it compares byte for byte
    /// (and so numbers like `1e400`, valid JSON but not an f64, are not refused here).
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Frame<'a> {
        from: String,
        #[serde(rename = "type")]
        kind: String,
        #[serde(borrow)]
        message: &'a RawValue,
    }
    let frame = relayed(from, kind, message);
    let parsed: Frame<'_> = serde_json::from_str(&frame).expect("a relayed frame is JSON");
    assert_eq!(parsed.from, from, "{frame}");
    assert_eq!(parsed.kind, kind, "{frame}");
    assert_eq!(
        parsed.message.get(),
        message.map_or("null", RawValue::get),
        "the message is carried byte for byte"
    );
}

// ---- Join codes ------------------------------------------------------------------------------

/// Whether `c` is a character the forgiving reader accepts somewhere in a code.
pub fn forgiving(c: char) -> bool {
    c == '-' || c == ' ' || (c.is_ascii_alphanumeric() && !c.eq_ignore_ascii_case(&'u'))
}

/// The canonical code `input` spells, from the documented rules alone: any case, `-` and space
/// ignored, O→0, I/L→1, no U, 4–16 characters.
pub fn expected_code(input: &str) -> Option<String> {
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

/// Checks that `code` is canonical: 4–16 characters of the alphabet, parsed back to itself.
pub fn check_canonical(code: JoinCode) {
    let text = code.as_str();
    assert!(
        (MIN_CODE_LENGTH..=MAX_CODE_LENGTH).contains(&text.len()),
        "{text:?}"
    );
    assert!(text.chars().all(|c| CROCKFORD.contains(&c)), "{text:?}");
    assert_eq!(JoinCode::parse(text), Some(code), "parsing is idempotent");
}

// ---- The WebSocket handshake -----------------------------------------------------------------

/// Whether any comma-separated item of any `name` header is `token`, ignoring case.
pub fn lists_token<B>(request: &Request<B>, name: &HeaderName, token: &str) -> bool {
    request.headers().get_all(name).iter().any(|value| {
        value.to_str().is_ok_and(|text| {
            text.split(',')
                .any(|item| item.trim().eq_ignore_ascii_case(token))
        })
    })
}

/// Whether `key` is a valid `Sec-WebSocket-Key` (RFC 6455 §4.1): the base64 of 16 bytes, which is
/// exactly 22 characters of the alphabet and `==`. A base64 decoder alone is not the rule: it also
/// reads concatenated padded blocks (`AAAAAAAAAAAAAAAAAAA=AAA=` is 16 bytes too).
pub fn is_valid_key(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && !key[..22].contains(&b'=')
        && BASE64.decode(key).is_ok_and(|bytes| bytes.len() == 16)
}

/// Checks a handshake `upgrade::check` accepted with `accept`: a GET over HTTP/1.1 or later with
/// `Upgrade: websocket`, `Connection: upgrade`, one Host, no body, one version (13), one valid
/// key, and the accept value derived from that key.
pub fn check_accepted_handshake<B>(request: &Request<B>, accept: &str) {
    assert_eq!(request.method(), Method::GET);
    assert!(request.version() >= Version::HTTP_11);
    assert!(lists_token(request, &header::UPGRADE, "websocket"));
    assert!(lists_token(request, &header::CONNECTION, "upgrade"));
    let headers = request.headers();
    let count = |name| headers.get_all(name).iter().count();
    assert_eq!(count(header::HOST), 1);
    assert!(!headers.contains_key(header::TRANSFER_ENCODING));
    assert!(!headers.contains_key(header::CONTENT_LENGTH));
    assert_eq!(count(header::SEC_WEBSOCKET_KEY), 1);
    assert_eq!(count(header::SEC_WEBSOCKET_VERSION), 1);
    let version = headers.get(header::SEC_WEBSOCKET_VERSION);
    assert_eq!(version.map(HeaderValue::as_bytes), Some(&b"13"[..]));
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .expect("an accepted handshake has a key");
    assert!(is_valid_key(key.as_bytes()), "{key:?}");
    assert_eq!(accept, derive_accept_key(key.as_bytes()));
}

/// Checks a refusal: `400 Bad Request` or `426 Upgrade Required`, with a one-line reason.
pub fn check_refusal(rejection: &Rejection) {
    assert!(
        rejection.status == StatusCode::BAD_REQUEST
            || rejection.status == StatusCode::UPGRADE_REQUIRED,
        "{rejection:?}"
    );
    assert!(
        !rejection.reason.is_empty() && !rejection.reason.contains('\n'),
        "{rejection:?}"
    );
}

// ---- Configuration ---------------------------------------------------------------------------

/// Checks what `into_config` made of some options: an error is one line naming an option (`--…`)
/// or `PORT`; a configuration keeps every bound, as `Config::validate` states them. Returns the
/// configuration, or the error's text for the caller's own checks.
pub fn check_config<E: Display>(result: Result<Config, E>) -> Result<Config, String> {
    match result {
        Err(error) => {
            let message = error.to_string();
            assert!(!message.contains(['\n', '\r']), "not one line: {message:?}");
            assert!(
                message.contains("--") || message.contains("PORT"),
                "names no option: {message:?}"
            );
            Err(message)
        }
        Ok(config) => {
            if let Err(error) = config.validate() {
                panic!("into_config returned a config that fails validate: {error}");
            }
            Ok(config)
        }
    }
}

/// Checks `text` read as a [`Span`]: a whole number, alone, is that many seconds.
pub fn check_span(text: &str) {
    if let Ok(Span(span)) = text.parse::<Span>()
        && let Ok(seconds) = text.trim().parse::<u64>()
    {
        assert_eq!(span, Duration::from_secs(seconds), "{text:?}");
    }
}
