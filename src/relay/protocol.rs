//! The wire protocol: envelopes peers send, frames the relay sends, error and close codes.
//!
//! Everything here is pure: it turns text into typed values and back, and never touches a socket.

use crate::relay::ice::IceServer;
use crate::relay::outcome::{ErrorCode, Notice, RETRY_AFTER_MS};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;

/// The relay's own peer id: frames the relay itself sends come `"from": "0"`.
pub const RELAY_ID: &str = "0";

/// The `type` of the command, sent to [`RELAY_ID`], that leaves a room on purpose: gone at once,
/// no resume.
pub const LEAVE: &str = "LEAVE";

/// Longest `type` a peer may send, in bytes.
pub const MAX_TYPE_BYTES: usize = 64;

/// A message as a peer sends it: `{"to","type","message"}`.
///
/// `message` stays raw JSON: the relay carries it through byte for byte and never rebuilds it.
#[derive(Debug, Deserialize)]
pub struct Incoming<'a> {
    /// The destination peer id (a join code may be spelled forgivingly).
    #[serde(borrow)]
    pub to: Cow<'a, str>,
    /// The application's message type; any non-empty string up to [`MAX_TYPE_BYTES`].
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    /// The payload; absent is relayed as `null`.
    #[serde(borrow, default)]
    pub message: Option<&'a RawValue>,
}

/// Why a text frame is not a valid envelope.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// Not JSON, not an object, or a field missing or of the wrong type.
    #[error("expected a JSON object with string fields \"to\" and \"type\": {0}")]
    Malformed(String),
    /// `type` is the empty string.
    #[error("\"type\" must not be empty")]
    EmptyType,
    /// `type` is longer than [`MAX_TYPE_BYTES`].
    #[error("\"type\" is longer than {MAX_TYPE_BYTES} bytes")]
    TypeTooLong,
}

/// Parses one text frame from a peer. A stray `"from"` field is accepted and ignored.
pub fn parse_incoming(text: &str) -> Result<Incoming<'_>, ProtocolError> {
    // serde's derived structs also read from arrays (`["to","type"]`); the envelope is an object.
    if !text
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .starts_with('{')
    {
        return Err(ProtocolError::Malformed("not a JSON object".to_owned()));
    }
    let incoming: Incoming<'_> =
        serde_json::from_str(text).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    if incoming.kind.is_empty() {
        return Err(ProtocolError::EmptyType);
    }
    if incoming.kind.len() > MAX_TYPE_BYTES {
        return Err(ProtocolError::TypeTooLong);
    }
    Ok(incoming)
}

/// A frame as the relay sends it: `{"from","type","message"}`.
#[derive(Serialize)]
struct Outgoing<'a, M: Serialize + ?Sized> {
    from: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a M,
}

fn frame<M: Serialize + ?Sized>(from: &str, kind: &str, message: &M) -> String {
    serde_json::to_string(&Outgoing {
        from,
        kind,
        message,
    })
    .expect("serialising strings and JSON values cannot fail")
}

/// The frame that carries a peer's message to its destination, built once per message and at its
/// final size, in one allocation: serde_json would grow it from 128 bytes, copying as it goes.
pub fn relayed(from: &str, kind: &str, message: Option<&RawValue>) -> String {
    let message = message.map_or("null", RawValue::get);
    let skeleton = r#"{"from":"","type":"","message":}"#.len();
    let mut frame = String::with_capacity(skeleton + from.len() + kind.len() + message.len());
    frame.push_str(r#"{"from":"#);
    push_json_string(&mut frame, from);
    frame.push_str(r#","type":"#);
    push_json_string(&mut frame, kind);
    frame.push_str(r#","message":"#);
    frame.push_str(message);
    frame.push('}');
    frame
}

/// Appends `text` as a JSON string. Ids and types rarely hold what JSON must escape (a quote, a
/// backslash, a control character: RFC 8259, section 7), so they are copied between quotes; the
/// rest go through serde_json, and that frame grows past its estimate.
fn push_json_string(frame: &mut String, text: &str) {
    if text
        .bytes()
        .any(|byte| byte < 0x20 || byte == b'"' || byte == b'\\')
    {
        let quoted = serde_json::to_string(text).expect("serialising a string cannot fail");
        frame.push_str(&quoted);
    } else {
        frame.push('"');
        frame.push_str(text);
        frame.push('"');
    }
}

/// Whether `frame` is one the relay sends of its own (HELLO, PEER_JOINED, ERROR, ...) rather than
/// a peer's message: such frames come from [`RELAY_ID`], which is no peer's id.
pub fn is_notice(frame: &str) -> bool {
    frame
        .strip_prefix(r#"{"from":""#)
        .and_then(|rest| rest.strip_prefix(RELAY_ID))
        .is_some_and(|rest| rest.starts_with(r#"","#))
}

/// The first frame every peer receives.
#[derive(Serialize)]
pub struct Hello<'a> {
    /// The peer's own id (a join code for servers).
    pub id: &'a str,
    /// `--server-info`, when configured.
    #[serde(rename = "serverInfo", skip_serializing_if = "Option::is_none")]
    pub server_info: Option<&'a str>,
    /// `--ice-server` entries, ready for `new RTCPeerConnection({iceServers})`.
    #[serde(rename = "iceServers", skip_serializing_if = "<[_]>::is_empty")]
    pub ice_servers: &'a [IceServer],
    /// How to resume this session, when `--resume-window` is not `0`.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub resume: Option<Resumption<'a>>,
    /// Set for a client that knocked: it waits for the server to let it in.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub waiting: bool,
}

/// What the hub says of a new member, for its HELLO.
#[derive(Debug, Clone, Copy)]
pub struct Greeting<'a> {
    /// The member's id.
    pub id: &'a str,
    /// Its resume token and what was resumed, when sessions resume.
    pub resume: Option<Resumption<'a>>,
    /// Whether it waits to be let in.
    pub waiting: bool,
}

/// The resume part of a HELLO; read back too, when a room's owner sends it to the instance
/// holding a forwarded client's socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resumption<'a> {
    /// Single-use: the next resume needs the one the next HELLO carries.
    #[serde(rename = "resumeToken", borrow)]
    pub token: &'a str,
    /// How long after a lost connection the session may be resumed.
    #[serde(rename = "resumeWindowMs")]
    pub window_ms: u64,
    /// Set on the HELLO of a resumed session.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resumed: bool,
    /// On a resumed session: frames sent again because the peer had not received them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed: Option<usize>,
    /// On a resumed session: frames were lost for good, so the application should renegotiate.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gap: bool,
}

/// Builds HELLO for a peer.
pub fn hello(hello: &Hello<'_>) -> String {
    frame(RELAY_ID, "HELLO", hello)
}

#[derive(Serialize)]
struct PeerRef<'a> {
    id: &'a str,
}

/// Tells a peer's counterparts that its connection was lost and it may resume.
pub fn peer_away(id: &str) -> String {
    frame(RELAY_ID, "PEER_AWAY", &PeerRef { id })
}

/// Tells a peer's counterparts that it resumed.
pub fn peer_back(id: &str) -> String {
    frame(RELAY_ID, "PEER_BACK", &PeerRef { id })
}

#[derive(Serialize)]
struct Departure<'a> {
    id: &'a str,
    reason: &'a str,
}

/// Tells a server that the client it removed (`KICK`) is gone.
pub fn peer_kicked(id: &str) -> String {
    frame(
        RELAY_ID,
        "PEER_GONE",
        &Departure {
            id,
            reason: "kicked",
        },
    )
}

#[derive(Serialize)]
struct Knock<'a> {
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    info: Option<&'a str>,
}

/// Tells a server that a client asks to be let in, with the `?name=` it gave.
pub fn knock(id: &str, info: Option<&str>) -> String {
    frame(RELAY_ID, "KNOCK", &Knock { id, info })
}

/// Tells a server that a knocker is no longer waiting: `denied`, `left` or `timeout`.
pub fn knock_gone(id: &str, reason: &str) -> String {
    frame(RELAY_ID, "KNOCK_GONE", &Departure { id, reason })
}

/// Tells a knocker that it was let in.
pub fn admitted() -> String {
    frame(RELAY_ID, "ADMITTED", &serde_json::Map::new())
}

#[derive(Serialize)]
struct RoomState<'a> {
    locked: bool,
    knock: bool,
    waiting: &'a [&'a str],
}

/// A room's settings and its knockers, for its server.
pub fn room(locked: bool, knock: bool, waiting: &[&str]) -> String {
    frame(
        RELAY_ID,
        "ROOM",
        &RoomState {
            locked,
            knock,
            waiting,
        },
    )
}

#[derive(Serialize)]
struct Servers<'a> {
    #[serde(rename = "iceServers")]
    ice_servers: &'a [IceServer],
}

/// Fresh ICE servers (TURN credentials) for a peer that asked with `ICE_REFRESH`.
pub fn ice_servers(ice_servers: &[IceServer]) -> String {
    frame(RELAY_ID, "ICE_SERVERS", &Servers { ice_servers })
}

/// Tells a server that a client joined.
pub fn peer_joined(id: &str) -> String {
    frame(RELAY_ID, "PEER_JOINED", &PeerRef { id })
}

/// Tells a peer that its counterpart left.
pub fn peer_gone(id: &str) -> String {
    frame(RELAY_ID, "PEER_GONE", &PeerRef { id })
}

/// An ERROR frame's `message`.
#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<&'a str>,
    #[serde(rename = "retryAfterMs", skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u64>,
}

/// Builds an ERROR frame; `id` names the peer concerned, for `UNKNOWN_PEER`. Every
/// `SERVER_UNAVAILABLE` says when to try again (`retryAfterMs`).
pub fn error(code: ErrorCode, reason: &str, id: Option<&str>) -> String {
    frame(
        RELAY_ID,
        "ERROR",
        &ErrorBody {
            code: code.as_str(),
            reason,
            id,
            kind: None,
            path: None,
            retry_after_ms: (code == ErrorCode::ServerUnavailable).then_some(RETRY_AFTER_MS),
        },
    )
}

/// Builds the ERROR for a notice with a fixed reason.
pub fn notice(notice: Notice) -> String {
    error(notice.code, notice.reason, None)
}

/// Builds the ERROR for a message its type's schema refused: `path` is a JSON pointer into it.
pub fn invalid_message(kind: &str, path: &str, reason: &str) -> String {
    frame(
        RELAY_ID,
        "ERROR",
        &ErrorBody {
            code: ErrorCode::InvalidMessage.as_str(),
            reason,
            id: None,
            kind: Some(kind),
            path: Some(path),
            retry_after_ms: None,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn value(text: &str) -> Value {
        serde_json::from_str(text).expect("frames are JSON")
    }

    #[test]
    fn the_relays_own_frames_are_notices_and_relayed_messages_are_not() {
        let hello = hello(&Hello {
            id: "7KQ2MX",
            server_info: None,
            ice_servers: &[],
            resume: None,
            waiting: false,
        });
        for frame in [
            hello,
            peer_joined("c1"),
            peer_gone("c1"),
            error(ErrorCode::ServerUnavailable, "later", None),
        ] {
            assert!(is_notice(&frame), "{frame}");
        }
        for from in ["7KQ2MX", "01", "c0"] {
            let frame = relayed(from, "HELLO", None);
            assert!(!is_notice(&frame), "{frame}");
        }
    }

    #[test]
    fn a_relayed_frame_is_byte_for_byte_what_serde_json_would_write() {
        let raw = |text: &str| RawValue::from_string(text.to_owned()).expect("valid JSON");
        let messages = [
            Some(raw(r#"{"sdp":"v=0\r\n","n":1.50}"#)),
            Some(raw("[]")),
            None,
        ];
        for (from, kind) in [
            ("7KQ2MX", "OFFER"),
            ("V1StGXR8_Z5jdHi6B-myT", "a \"quoted\" \\ type"),
            ("0", "tab\t, nul\u{0}, é, 😀"),
            ("1", "unit separator \u{1f}, delete \u{7f}, space  "),
        ] {
            for message in &messages {
                let message = message.as_deref();
                let relayed = relayed(from, kind, message);
                assert_eq!(relayed, frame(from, kind, &message));
                if kind == "OFFER" {
                    assert_eq!(relayed.capacity(), relayed.len(), "built at its final size");
                }
            }
        }
    }

    #[test]
    fn parses_an_envelope_and_keeps_the_message_raw() {
        let text = r#"{"to":"7KQ2MX","type":"OFFER","message":{"sdp":"v=0\r\n", "n": 1.50}}"#;
        let incoming = parse_incoming(text).expect("valid");
        assert_eq!(incoming.to, "7KQ2MX");
        assert_eq!(incoming.kind, "OFFER");
        assert_eq!(
            incoming.message.map(RawValue::get),
            Some(r#"{"sdp":"v=0\r\n", "n": 1.50}"#)
        );
    }

    #[test]
    fn accepts_and_ignores_a_stray_from() {
        let incoming = parse_incoming(r#"{"from":"x","to":"a","type":"T"}"#).expect("valid");
        assert_eq!(incoming.to, "a");
        assert!(incoming.message.is_none());
    }

    #[test]
    fn unescapes_escaped_fields() {
        let incoming = parse_incoming(r#"{"to":"\u0041BCD","type":"\"q\""}"#).expect("valid");
        assert_eq!(incoming.to, "ABCD");
        assert_eq!(incoming.kind, "\"q\"");
    }

    #[test]
    fn refuses_malformed_envelopes() {
        for text in [
            "",
            "not json",
            "[]",
            r#"["7KQ2MX","OFFER"]"#,
            r#"["7KQ2MX","OFFER",{"sdp":"v=0"}]"#,
            "42",
            "null",
            r#"{"type":"T"}"#,
            r#"{"to":"a"}"#,
            r#"{"to":1,"type":"T"}"#,
            r#"{"to":"a","type":null}"#,
            r#"{"to":"a","type":"T"} trailing"#,
        ] {
            assert!(
                matches!(parse_incoming(text), Err(ProtocolError::Malformed(_))),
                "{text:?} should be malformed"
            );
        }
        assert_eq!(
            parse_incoming(r#"{"to":"a","type":""}"#).err(),
            Some(ProtocolError::EmptyType)
        );
        let long = format!(
            r#"{{"to":"a","type":"{}"}}"#,
            "x".repeat(MAX_TYPE_BYTES + 1)
        );
        assert_eq!(
            parse_incoming(&long).err(),
            Some(ProtocolError::TypeTooLong)
        );
        let longest = format!(r#"{{"to":"a","type":"{}"}}"#, "x".repeat(MAX_TYPE_BYTES));
        assert!(parse_incoming(&longest).is_ok());
    }

    #[test]
    fn relayed_frames_carry_the_message_unchanged() {
        let incoming =
            parse_incoming(r#"{"to":"a","type":"T","message":[1, {"b" :2}]}"#).expect("valid");
        let frame = relayed("SENDER", &incoming.kind, incoming.message);
        assert_eq!(
            frame,
            r#"{"from":"SENDER","type":"T","message":[1, {"b" :2}]}"#
        );
        assert_eq!(
            relayed("S", "T", None),
            r#"{"from":"S","type":"T","message":null}"#
        );
    }

    #[test]
    fn relay_frames_have_the_documented_shape() {
        assert_eq!(
            value(&hello(&Hello {
                id: "7KQ2MX",
                server_info: None,
                ice_servers: &[],
                resume: None,
                waiting: false,
            })),
            json!({"from":"0","type":"HELLO","message":{"id":"7KQ2MX"}})
        );
        let resumed = Resumption {
            token: "T",
            window_ms: 30_000,
            resumed: true,
            replayed: Some(2),
            gap: false,
        };
        assert_eq!(
            value(&hello(&Hello {
                id: "7KQ2MX",
                server_info: None,
                ice_servers: &[],
                resume: Some(resumed),
                waiting: false,
            })),
            json!({"from":"0","type":"HELLO","message":{"id":"7KQ2MX","resumeToken":"T",
                "resumeWindowMs":30000,"resumed":true,"replayed":2}})
        );
        assert_eq!(
            value(&hello(&Hello {
                id: "c",
                server_info: Some("v1"),
                ice_servers: &[IceServer {
                    urls: "stun:s".into(),
                    username: None,
                    credential: None
                }],
                resume: None,
                waiting: false,
            })),
            json!({"from":"0","type":"HELLO","message":{"id":"c","serverInfo":"v1","iceServers":[{"urls":"stun:s"}]}})
        );
        assert_eq!(
            value(&peer_away("c")),
            json!({"from":"0","type":"PEER_AWAY","message":{"id":"c"}})
        );
        assert_eq!(
            value(&peer_back("c")),
            json!({"from":"0","type":"PEER_BACK","message":{"id":"c"}})
        );
        assert_eq!(
            value(&peer_joined("c")),
            json!({"from":"0","type":"PEER_JOINED","message":{"id":"c"}})
        );
        assert_eq!(
            value(&peer_gone("c")),
            json!({"from":"0","type":"PEER_GONE","message":{"id":"c"}})
        );
        assert_eq!(
            value(&error(ErrorCode::UnknownPeer, "gone", Some("c"))),
            json!({"from":"0","type":"ERROR","message":{"code":"UNKNOWN_PEER","reason":"gone","id":"c"}})
        );
        assert_eq!(
            value(&invalid_message("OFFER", "/sdp", "too long")),
            json!({"from":"0","type":"ERROR","message":{"code":"INVALID_MESSAGE","reason":"too long","type":"OFFER","path":"/sdp"}})
        );
        assert_eq!(
            value(&error(ErrorCode::RateLimited, "slow down", None)),
            json!({"from":"0","type":"ERROR","message":{"code":"RATE_LIMITED","reason":"slow down"}})
        );
    }
}
