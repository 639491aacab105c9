//! Property tests for the relay's four parsers of untrusted input: envelopes, join codes, the
//! WebSocket handshake and configuration values.
//!
//! Each property states what must hold for every input of a kind, so a change that breaks it fails
//! here with a shrunk counterexample. Inputs that once broke something are pinned as plain tests at
//! the end. `fuzz/` drives the same parsers with libFuzzer for much longer runs.

use data_encoding::BASE64;
use http::{HeaderName, HeaderValue, Method, Request, StatusCode, Version, header};
use intercessor::config::Config;
use intercessor::options::{self, Options, ParseError, Parsed, Span};
use intercessor::relay::ids::{CROCKFORD, JoinCode, MAX_CODE_LENGTH, MIN_CODE_LENGTH};
use intercessor::relay::protocol::{MAX_TYPE_BYTES, ProtocolError, parse_incoming, relayed};
use intercessor::relay::upgrade;
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use serde_json::Value;
use serde_json::value::RawValue;
use std::time::Duration;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Case counts are kept moderate so the whole file runs in seconds in a debug build; failures are
/// pinned as plain tests below rather than in proptest's regression files.
fn cases(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Envelopes
// ---------------------------------------------------------------------------------------------

/// Any JSON value, nested a few levels, with arbitrary strings and numbers.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// A JSON object that often has the envelope's keys, with values of any JSON type.
fn envelope_like() -> impl Strategy<Value = Value> {
    let field = || {
        prop::option::of(prop_oneof![3 => type_text().prop_map(Value::String), 1 => json_value()])
    };
    (
        field(),
        field(),
        prop::option::of(json_value()),
        prop::option::of(json_value()),
        prop::collection::btree_map("[a-z]{1,8}", json_value(), 0..3),
    )
        .prop_map(|(to, kind, message, from, extra)| {
            let mut object: serde_json::Map<String, Value> = extra.into_iter().collect();
            for (key, value) in [
                ("to", to),
                ("type", kind),
                ("message", message),
                ("from", from),
            ] {
                if let Some(value) = value {
                    object.insert(key.to_owned(), value);
                }
            }
            Value::Object(object)
        })
}

/// A `type` near the length limit: empty, short, exactly at it, or just over it in bytes.
fn type_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "\\PC{1,16}",
        "[A-Z_]{60,70}",
        // Multi-byte characters: the limit counts bytes, not characters.
        "[é€😀]{14,24}",
        "[\\x00-\\x1f\"\\\\]{1,70}",
    ]
}

/// A valid `type`: 1 to [`MAX_TYPE_BYTES`] bytes of anything.
fn valid_type() -> impl Strategy<Value = String> {
    type_text().prop_filter("a valid type", |kind| {
        (1..=MAX_TYPE_BYTES).contains(&kind.len())
    })
}

/// An envelope's fields in a JSON array: serde reads structs from sequences too.
fn array_envelope() -> impl Strategy<Value = Value> {
    (valid_type(), valid_type(), prop::option::of(json_value())).prop_map(|(to, kind, message)| {
        let mut fields = vec![Value::String(to), Value::String(kind)];
        fields.extend(message);
        Value::Array(fields)
    })
}

/// What `parse_incoming` must say about `value`, judged from the documented contract alone.
fn expected_verdict(value: &Value) -> Result<(), ProtocolError> {
    let malformed = Err(ProtocolError::Malformed(String::new()));
    let Value::Object(object) = value else {
        return malformed;
    };
    match (object.get("to"), object.get("type")) {
        (Some(Value::String(_)), Some(Value::String(kind))) if kind.is_empty() => {
            Err(ProtocolError::EmptyType)
        }
        (Some(Value::String(_)), Some(Value::String(kind))) if kind.len() > MAX_TYPE_BYTES => {
            Err(ProtocolError::TypeTooLong)
        }
        (Some(Value::String(_)), Some(Value::String(_))) => Ok(()),
        _ => malformed,
    }
}

/// Forgets the detail of a `Malformed` so verdicts compare by kind.
fn verdict<T>(result: &Result<T, ProtocolError>) -> Result<(), ProtocolError> {
    match result {
        Ok(_) => Ok(()),
        Err(ProtocolError::Malformed(_)) => Err(ProtocolError::Malformed(String::new())),
        Err(ProtocolError::EmptyType) => Err(ProtocolError::EmptyType),
        Err(ProtocolError::TypeTooLong) => Err(ProtocolError::TypeTooLong),
    }
}

/// The value a message's JSON text stands for, as the relay's receiver would read it.
fn reread(text: &str) -> Value {
    serde_json::from_str(text).expect("the relay only ever holds valid JSON")
}

/// Text near valid envelopes: a serialised envelope with one byte range cut out or replaced.
fn mangled_envelope() -> impl Strategy<Value = String> {
    (
        envelope_like(),
        any::<prop::sample::Index>(),
        0usize..4,
        "[\\[\\]{}\",:\\\\ 0-9a-z]{0,3}",
    )
        .prop_map(|(value, at, cut, insert)| {
            let text = value.to_string();
            let mut start = at.index(text.len() + 1);
            while !text.is_char_boundary(start) {
                start -= 1;
            }
            let mut end = (start + cut).min(text.len());
            while !text.is_char_boundary(end) {
                end += 1;
            }
            format!("{}{insert}{}", &text[..start], &text[end..])
        })
}

proptest! {
    #![proptest_config(cases(512))]

    #[test]
    fn parse_incoming_never_panics(text in prop_oneof![
        any::<String>(),
        "[\\[\\]{}\",:\\\\ 0-9a-z.eE+-]{0,40}",
        mangled_envelope(),
    ]) {
        let _ = parse_incoming(&text);
    }

    #[test]
    fn parse_incoming_follows_the_contract_on_any_json(
        value in prop_oneof![json_value(), envelope_like(), array_envelope()],
    ) {
        let text = value.to_string();
        let result = parse_incoming(&text);
        prop_assert_eq!(verdict(&result), expected_verdict(&value), "{}", text);
        if let (Ok(incoming), Value::Object(object)) = (&result, &value) {
            prop_assert_eq!(Some(&Value::String(incoming.to.to_string())), object.get("to"));
            prop_assert_eq!(Some(&Value::String(incoming.kind.to_string())), object.get("type"));
        }
    }

    #[test]
    fn envelopes_round_trip(
        to in any::<String>(),
        kind in valid_type(),
        message in prop::option::of(json_value()),
        pretty in any::<bool>(),
    ) {
        let mut envelope = serde_json::json!({ "to": to, "type": kind });
        if let Some(message) = &message {
            envelope["message"] = message.clone();
        }
        let text = if pretty {
            serde_json::to_string_pretty(&envelope).expect("a Value always serialises")
        } else {
            envelope.to_string()
        };
        let incoming = parse_incoming(&text).expect("a valid envelope parses");
        prop_assert_eq!(&incoming.to, &to);
        prop_assert_eq!(&incoming.kind, &kind);
        // Compared as re-read text: serde_json's default float parsing may differ from the
        // original f64 by an ulp, the same way for both sides.
        let expected = message.as_ref().map_or(Value::Null, |m| reread(&m.to_string()));
        let got = incoming.message.map_or(Value::Null, |raw| reread(raw.get()));
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn relayed_frames_carry_what_they_are_given(
        from in any::<String>(),
        kind in any::<String>(),
        message in prop::option::of(json_value()),
        pretty in any::<bool>(),
    ) {
        let raw = message.as_ref().map(|m| {
            let text = if pretty {
                serde_json::to_string_pretty(m).expect("a Value always serialises")
            } else {
                m.to_string()
            };
            RawValue::from_string(text).expect("serde_json's output is valid JSON")
        });
        let frame = relayed(&from, &kind, raw.as_deref());
        let value: Value = serde_json::from_str(&frame).expect("a relayed frame is JSON");
        let object = value.as_object().expect("a relayed frame is an object");
        prop_assert_eq!(object.len(), 3, "{}", frame);
        prop_assert_eq!(&object["from"], &Value::String(from));
        prop_assert_eq!(&object["type"], &Value::String(kind));
        let expected = raw.as_deref().map_or(Value::Null, |r| reread(r.get()));
        prop_assert_eq!(&object["message"], &expected);
        // The message is carried byte for byte, never rebuilt.
        let raw_text = raw.as_deref().map_or("null", RawValue::get);
        prop_assert!(frame.ends_with(&format!("\"message\":{raw_text}}}")), "{}", frame);
    }

    #[test]
    fn types_outside_the_limit_are_refused(
        kind in prop_oneof![Just(String::new()), "\\PC{17,80}", "[a-z]{65,100}"],
        to in any::<String>(),
    ) {
        let text = serde_json::json!({ "to": to, "type": kind, "message": 1 }).to_string();
        let result = parse_incoming(&text);
        if kind.is_empty() {
            prop_assert_eq!(result.err(), Some(ProtocolError::EmptyType));
        } else if kind.len() > MAX_TYPE_BYTES {
            prop_assert_eq!(result.err(), Some(ProtocolError::TypeTooLong));
        } else {
            prop_assert!(result.is_ok());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Join codes
// ---------------------------------------------------------------------------------------------

/// A canonical code: 4 to 16 characters of the alphabet.
fn canonical_code() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(CROCKFORD.to_vec()),
        MIN_CODE_LENGTH..=MAX_CODE_LENGTH,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

/// Runs of the separators a reader may type.
fn separators() -> impl Strategy<Value = String> {
    "[ -]{0,2}"
}

/// A canonical code and one way a person might type it.
fn respelled_code() -> impl Strategy<Value = (String, String)> {
    canonical_code()
        .prop_flat_map(|code| {
            let choices =
                prop::collection::vec((0usize..5, any::<bool>(), separators()), code.len());
            (Just(code), separators(), choices)
        })
        .prop_map(|(code, lead, choices)| {
            let mut typed = lead;
            for (c, (variant, lower, separator)) in code.chars().zip(choices) {
                match c {
                    '0' => typed.push_str(["0", "O", "o"][variant % 3]),
                    '1' => typed.push_str(["1", "I", "i", "L", "l"][variant]),
                    c if lower => typed.push(c.to_ascii_lowercase()),
                    c => typed.push(c),
                }
                typed.push_str(&separator);
            }
            (code, typed)
        })
}

/// Whether `c` is a character the forgiving reader accepts somewhere in a code.
fn forgiving(c: char) -> bool {
    c == '-' || c == ' ' || (c.is_ascii_alphanumeric() && !c.eq_ignore_ascii_case(&'u'))
}

/// The canonical code `input` spells, from the documented rules alone.
fn expected_code(input: &str) -> Option<String> {
    let mut code = String::new();
    for c in input.chars() {
        match c.to_ascii_uppercase() {
            '-' | ' ' => {}
            'O' => code.push('0'),
            'I' | 'L' => code.push('1'),
            c if forgiving(c) => code.push(c),
            _ => return None,
        }
    }
    (MIN_CODE_LENGTH..=MAX_CODE_LENGTH)
        .contains(&code.len())
        .then_some(code)
}

proptest! {
    #![proptest_config(cases(512))]

    #[test]
    fn join_code_parse_matches_the_rules(input in prop_oneof![
        any::<String>(),
        "[0-9A-Za-z \\-]{0,20}",
        "[0-9A-Za-z \\-_.éÜ\t]{2,20}",
    ]) {
        let parsed = JoinCode::parse(&input);
        prop_assert_eq!(parsed.map(|c| c.to_string()), expected_code(&input), "{:?}", input);
    }

    #[test]
    fn parsed_codes_are_canonical_and_idempotent(input in prop_oneof![
        any::<String>(),
        "[0-9A-Za-z \\-]{0,20}",
        respelled_code().prop_map(|(_, typed)| typed),
    ]) {
        if let Some(code) = JoinCode::parse(&input) {
            let text = code.as_str();
            prop_assert!((MIN_CODE_LENGTH..=MAX_CODE_LENGTH).contains(&text.len()), "{:?}", text);
            prop_assert!(text.chars().all(|c| CROCKFORD.contains(&c)), "{:?}", text);
            prop_assert_eq!(JoinCode::parse(text), Some(code));
        }
    }

    #[test]
    fn every_forgiving_spelling_reads_back((code, typed) in respelled_code()) {
        let parsed = JoinCode::parse(&typed);
        prop_assert_eq!(parsed.map(|c| c.to_string()), Some(code), "{:?}", typed);
    }

    #[test]
    fn a_character_outside_the_forgiving_set_is_refused(
        (_, typed) in respelled_code(),
        stranger in any::<char>().prop_filter("outside the forgiving set", |c| !forgiving(*c)),
        at in any::<prop::sample::Index>(),
    ) {
        let mut chars: Vec<char> = typed.chars().collect();
        chars.insert(at.index(chars.len() + 1), stranger);
        let input: String = chars.into_iter().collect();
        prop_assert_eq!(JoinCode::parse(&input), None, "{:?}", input);
    }

    #[test]
    fn generated_codes_are_canonical(length in 0usize..40) {
        let code = JoinCode::generate(length);
        let text = code.as_str();
        prop_assert_eq!(text.len(), length.clamp(MIN_CODE_LENGTH, MAX_CODE_LENGTH));
        prop_assert!(text.chars().all(|c| CROCKFORD.contains(&c)), "{:?}", text);
        prop_assert_eq!(JoinCode::parse(text), Some(code));
    }
}

// ---------------------------------------------------------------------------------------------
// The WebSocket handshake
// ---------------------------------------------------------------------------------------------

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        4 => Just(Method::GET),
        1 => prop::sample::select(vec![
            Method::POST,
            Method::HEAD,
            Method::CONNECT,
            Method::OPTIONS,
        ]),
        1 => "[A-Za-z]{1,8}"
            .prop_filter_map("a method token", |m| Method::from_bytes(m.as_bytes()).ok()),
    ]
}

fn version() -> impl Strategy<Value = Version> {
    prop_oneof![
        4 => Just(Version::HTTP_11),
        1 => prop::sample::select(vec![
            Version::HTTP_09,
            Version::HTTP_10,
            Version::HTTP_2,
            Version::HTTP_3,
        ]),
    ]
}

/// Any byte a header value may hold: visible ASCII, tab, and obs-text (not UTF-8 on its own).
fn header_value() -> impl Strategy<Value = HeaderValue> {
    prop::collection::vec(
        prop_oneof![0x20u8..=0x7e, Just(b'\t'), 0x80u8..=0xff],
        0..32,
    )
    .prop_map(|bytes| HeaderValue::from_bytes(&bytes).expect("only bytes a header value may hold"))
}

/// `text` with each ASCII letter's case flipped where `flips` says so.
fn recased(text: &str, flips: &[bool]) -> String {
    text.chars()
        .zip(flips.iter().chain(std::iter::repeat(&false)))
        .map(|(c, flip)| {
            if *flip {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

/// A header value holding `token` in any case among other comma-separated tokens.
fn token_list(token: &'static str) -> impl Strategy<Value = HeaderValue> {
    (
        prop::collection::vec(any::<bool>(), token.len()),
        prop::collection::vec("[a-z-]{1,10}", 0..3),
        any::<prop::sample::Index>(),
        "[ \t]{0,2}",
    )
        .prop_map(move |(flips, mut others, at, pad)| {
            others.insert(
                at.index(others.len() + 1),
                format!("{pad}{}{pad}", recased(token, &flips)),
            );
            HeaderValue::from_str(&others.join(",")).expect("tokens are visible ASCII")
        })
}

/// A valid key: the base64 of 16 random bytes.
fn valid_key() -> impl Strategy<Value = String> {
    any::<[u8; 16]>().prop_map(|bytes| BASE64.encode(&bytes))
}

/// Headers a browser sends beside the handshake's own.
fn noise() -> impl Strategy<Value = Vec<(HeaderName, HeaderValue)>> {
    let name = prop_oneof![
        prop::sample::select(vec![
            header::ACCEPT,
            header::ORIGIN,
            header::USER_AGENT,
            header::SEC_WEBSOCKET_PROTOCOL,
            header::SEC_WEBSOCKET_EXTENSIONS,
        ]),
        "x-[a-z]{1,8}".prop_map(|n| HeaderName::from_bytes(n.as_bytes()).expect("a token")),
    ];
    prop::collection::vec((name, header_value()), 0..4)
}

/// The parts of a handshake, each either valid or mangled.
#[derive(Debug, Clone)]
struct Handshake {
    method: Method,
    version: Version,
    upgrade: Option<HeaderValue>,
    connection: Option<HeaderValue>,
    ws_version: Option<HeaderValue>,
    key: Option<HeaderValue>,
    noise: Vec<(HeaderName, HeaderValue)>,
}

impl Handshake {
    fn request(&self) -> Request<()> {
        let mut request = Request::builder()
            .method(self.method.clone())
            .version(self.version)
            .uri("/server")
            .header(header::HOST, "relay.example")
            .body(())
            .expect("method, version and a fixed path always build");
        let headers = request.headers_mut();
        for (name, value) in [
            (header::UPGRADE, &self.upgrade),
            (header::CONNECTION, &self.connection),
            (header::SEC_WEBSOCKET_VERSION, &self.ws_version),
            (header::SEC_WEBSOCKET_KEY, &self.key),
        ] {
            if let Some(value) = value {
                headers.append(name, value.clone());
            }
        }
        for (name, value) in &self.noise {
            headers.append(name.clone(), value.clone());
        }
        request
    }
}

/// A handshake whose required parts are all valid, in varied spellings, among other headers.
fn valid_handshake() -> impl Strategy<Value = Handshake> {
    (
        token_list("websocket"),
        token_list("upgrade"),
        valid_key(),
        noise(),
    )
        .prop_map(|(upgrade, connection, key, noise)| Handshake {
            method: Method::GET,
            version: Version::HTTP_11,
            upgrade: Some(upgrade),
            connection: Some(connection),
            ws_version: Some(HeaderValue::from_static("13")),
            key: Some(HeaderValue::from_str(&key).expect("base64 is visible ASCII")),
            noise,
        })
}

/// A handshake with every part drawn from valid, mangled or missing.
fn any_handshake() -> impl Strategy<Value = Handshake> {
    let part = |valid: BoxedStrategy<HeaderValue>| {
        prop_oneof![
            3 => valid.prop_map(Some),
            1 => header_value().prop_map(Some),
            1 => Just(None),
        ]
    };
    let key = prop_oneof![
        valid_key().prop_map(|k| HeaderValue::from_str(&k).expect("base64 is visible ASCII")),
        "[A-Za-z0-9+/=]{20,26}".prop_map(|k| HeaderValue::from_str(&k).expect("visible ASCII")),
    ];
    (
        method(),
        version(),
        part(token_list("websocket").boxed()),
        part(token_list("upgrade").boxed()),
        part(
            prop_oneof![
                Just(HeaderValue::from_static("13")),
                "1[0-9]".prop_map(|v| HeaderValue::from_str(&v).expect("digits"))
            ]
            .boxed(),
        ),
        part(key.boxed()),
        noise(),
    )
        .prop_map(
            |(method, version, upgrade, connection, ws_version, key, noise)| Handshake {
                method,
                version,
                upgrade,
                connection,
                ws_version,
                key,
                noise,
            },
        )
}

/// Whether any comma-separated item of any `name` header is `token`, ignoring case.
fn lists_token(request: &Request<()>, name: &HeaderName, token: &str) -> bool {
    request.headers().get_all(name).iter().any(|value| {
        value.to_str().is_ok_and(|text| {
            text.split(',')
                .any(|item| item.trim().eq_ignore_ascii_case(token))
        })
    })
}

/// One required part a valid handshake can lose, and the status its absence earns.
#[derive(Debug, Clone, Copy)]
enum Removal {
    Upgrade,
    Connection,
    WsVersion,
    Key,
    Method,
    Version,
}

proptest! {
    #![proptest_config(cases(512))]

    #[test]
    fn accepted_handshakes_are_valid(handshake in any_handshake()) {
        let request = handshake.request();
        if let Ok(accept) = upgrade::check(&request) {
            prop_assert_eq!(request.method(), Method::GET);
            prop_assert!(request.version() >= Version::HTTP_11);
            prop_assert!(lists_token(&request, &header::UPGRADE, "websocket"));
            prop_assert!(lists_token(&request, &header::CONNECTION, "upgrade"));
            let headers = request.headers();
            prop_assert_eq!(headers.get_all(header::HOST).iter().count(), 1);
            prop_assert!(!headers.contains_key(header::TRANSFER_ENCODING));
            prop_assert!(!headers.contains_key(header::CONTENT_LENGTH));
            prop_assert_eq!(headers.get_all(header::SEC_WEBSOCKET_KEY).iter().count(), 1);
            prop_assert_eq!(headers.get_all(header::SEC_WEBSOCKET_VERSION).iter().count(), 1);
            let ws_version = headers.get(header::SEC_WEBSOCKET_VERSION);
            prop_assert_eq!(ws_version.map(HeaderValue::as_bytes), Some(&b"13"[..]));
            let key = headers
                .get(header::SEC_WEBSOCKET_KEY)
                .expect("an accepted handshake has a key");
            prop_assert_eq!(BASE64.decode(key.as_bytes()).map(|k| k.len()), Ok(16), "{:?}", key);
            prop_assert_eq!(accept, derive_accept_key(key.as_bytes()));
        }
    }

    #[test]
    fn refusals_explain_themselves(handshake in any_handshake()) {
        if let Err(rejection) = upgrade::check(&handshake.request()) {
            prop_assert!(
                rejection.status == StatusCode::BAD_REQUEST
                    || rejection.status == StatusCode::UPGRADE_REQUIRED,
                "{:?}", rejection
            );
            prop_assert!(!rejection.reason.is_empty() && !rejection.reason.contains('\n'));
        }
    }

    #[test]
    fn valid_handshakes_are_accepted(handshake in valid_handshake()) {
        let request = handshake.request();
        let key = handshake.key.as_ref().expect("a valid handshake has a key");
        prop_assert_eq!(upgrade::check(&request), Ok(derive_accept_key(key.as_bytes())));
    }

    #[test]
    fn a_key_is_valid_exactly_when_it_is_16_bytes_in_base64(
        handshake in valid_handshake(),
        key in prop_oneof![
            "[A-Za-z0-9+/]{21}[AQgw]==",
            "[A-Za-z0-9+/=]{22,25}",
            "[A-Za-z0-9+/]{22}[A-Za-z0-9+/=]=",
        ],
    ) {
        let mut request = handshake.request();
        let value = HeaderValue::from_str(&key).expect("base64 characters are visible ASCII");
        request.headers_mut().insert(header::SEC_WEBSOCKET_KEY, value);
        let is_valid = BASE64.decode(key.as_bytes()).is_ok_and(|k| k.len() == 16);
        prop_assert_eq!(upgrade::check(&request).is_ok(), is_valid, "{:?}", key);
    }

    #[test]
    fn a_valid_handshake_missing_any_part_is_refused(
        handshake in valid_handshake(),
        removal in prop::sample::select(vec![
            Removal::Upgrade,
            Removal::Connection,
            Removal::WsVersion,
            Removal::Key,
            Removal::Method,
            Removal::Version,
        ]),
        method in prop::sample::select(vec![
            Method::POST,
            Method::HEAD,
            Method::PUT,
            Method::CONNECT,
        ]),
        version in prop::sample::select(vec![Version::HTTP_09, Version::HTTP_10]),
    ) {
        let mut handshake = handshake;
        let status = match removal {
            Removal::Upgrade => { handshake.upgrade = None; StatusCode::UPGRADE_REQUIRED }
            Removal::Connection => { handshake.connection = None; StatusCode::BAD_REQUEST }
            Removal::WsVersion => { handshake.ws_version = None; StatusCode::UPGRADE_REQUIRED }
            Removal::Key => { handshake.key = None; StatusCode::BAD_REQUEST }
            Removal::Method => { handshake.method = method; StatusCode::BAD_REQUEST }
            Removal::Version => { handshake.version = version; StatusCode::BAD_REQUEST }
        };
        // Noise must not stand in for what was removed.
        handshake.noise.retain(|(name, _)| {
            ![
                header::UPGRADE,
                header::CONNECTION,
                header::SEC_WEBSOCKET_VERSION,
                header::SEC_WEBSOCKET_KEY,
            ]
            .contains(name)
        });
        prop_assert_eq!(upgrade::check(&handshake.request()).map_err(|r| r.status), Err(status));
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

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

/// Checks what `into_config` made of `options`: an error is one line naming an option that was
/// given (or PORT), and a config keeps every bound (`Config::validate`) and every value given.
fn check_config(
    options: &Options,
    result: anyhow::Result<Config>,
    named: &[&str],
    port: Option<&str>,
) -> Result<(), TestCaseError> {
    let config = match result {
        Err(error) => {
            let message = error.to_string();
            prop_assert!(
                !message.contains('\n') && !message.contains('\r'),
                "not one line: {:?}",
                message
            );
            let names_one = named
                .iter()
                .any(|name| message.contains(&format!("--{name}")))
                || (port.is_some() && message.contains("PORT"));
            prop_assert!(names_one, "{:?} names none of {:?}", message, named);
            return Ok(());
        }
        Ok(config) => config,
    };
    prop_assert!(config.validate().is_ok(), "{:?}", config);
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
        let _ = text.parse::<Span>();
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
            check_config(&options, result, &named, port.as_deref())?;
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
                check_config(&options, result, &named, None)?;
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

// ---------------------------------------------------------------------------------------------
// Inputs that once broke something, pinned
// ---------------------------------------------------------------------------------------------

#[test]
fn an_array_is_not_an_envelope() {
    for text in [
        r#"["7KQ2MX","OFFER"]"#,
        r#"["7KQ2MX","OFFER",{"sdp":"v=0"}]"#,
    ] {
        assert!(
            matches!(parse_incoming(text), Err(ProtocolError::Malformed(_))),
            "{text} should be malformed: {:?}",
            parse_incoming(text)
        );
    }
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
