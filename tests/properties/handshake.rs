//! The WebSocket handshake: `upgrade::check` on handshakes whose every part is valid, mangled or
//! missing.

use crate::cases;
use crate::common::oracles::{check_accepted_handshake, check_refusal, is_valid_key};
use data_encoding::BASE64;
use http::{HeaderName, HeaderValue, Method, Request, StatusCode, Version, header};
use intercessor::relay::upgrade;
use proptest::prelude::*;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

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
            check_accepted_handshake(&request, &accept);
        }
    }

    #[test]
    fn refusals_explain_themselves(handshake in any_handshake()) {
        if let Err(rejection) = upgrade::check(&handshake.request()) {
            check_refusal(&rejection);
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
            // Whole and padded blocks in any order: a base64 decoder reads padded blocks one
            // after another (four of 3 bytes and two of 2 are 16 bytes too), the rule does not.
            "([A-Za-z0-9+/]{4}|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=|[A-Za-z0-9+/][AQgw]==){6}",
        ],
    ) {
        let mut request = handshake.request();
        let value = HeaderValue::from_str(&key).expect("base64 characters are visible ASCII");
        request.headers_mut().insert(header::SEC_WEBSOCKET_KEY, value);
        prop_assert_eq!(upgrade::check(&request).is_ok(), is_valid_key(key.as_bytes()), "{:?}", key);
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
