//! Envelopes: `parse_incoming` on any text and any JSON, and `relayed` on what it parsed.

use crate::cases;
use crate::common::oracles::{check_accepted_envelope, check_relayed};
use intercessor::relay::protocol::{MAX_TYPE_BYTES, ProtocolError, parse_incoming};
use proptest::prelude::*;
use serde_json::Value;
use serde_json::value::RawValue;

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
        if let Ok(incoming) = parse_incoming(&text) {
            check_accepted_envelope(&text, &incoming);
        }
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
        check_relayed(&from, &kind, raw.as_deref());
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
