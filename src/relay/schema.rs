//! Optional validation of what peers send: a JSON Schema (draft 2020-12) per message `type`,
//! loaded from `--message-schema` and compiled once at start.

use anyhow::{Context as _, bail};
use engine::Validator;
use serde_json::Value;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::path::Path;

/// The key whose schema applies to every type not listed.
pub const ANY_TYPE: &str = "*";

/// Longest `reason` an INVALID_MESSAGE carries; validator messages can quote whole values.
const MAX_REASON_CHARS: usize = 200;

/// One compiled schema per message type, and optionally one for all other types.
pub struct MessageSchemas {
    by_type: HashMap<String, Validator>,
    others: Option<Validator>,
}

impl std::fmt::Debug for MessageSchemas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut types: Vec<_> = self.by_type.keys().collect();
        types.sort();
        f.debug_struct("MessageSchemas")
            .field("types", &types)
            .field("others", &self.others.is_some())
            .finish()
    }
}

/// Why a message was refused; becomes an ERROR `INVALID_MESSAGE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// JSON pointer into `message` of the first failing location (`""` for the whole message).
    pub path: String,
    /// What is wrong, in a short sentence.
    pub reason: String,
}

impl MessageSchemas {
    /// Reads and compiles the schema file; errors name the file and, for a bad schema, the type.
    pub fn load(path: &Path) -> anyhow::Result<MessageSchemas> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading --message-schema {path:?}"))?;
        let document: Value = serde_json::from_str(&text)
            .with_context(|| format!("--message-schema {path:?}: not JSON"))?;
        MessageSchemas::compile(&document).with_context(|| format!("--message-schema {path:?}"))
    }

    /// Compiles a document `{TYPE: SCHEMA, ...}`. Remote `$ref`s are refused: the relay never
    /// fetches anything.
    pub fn compile(document: &Value) -> anyhow::Result<MessageSchemas> {
        let Some(entries) = document.as_object() else {
            bail!("expected an object whose keys are message types and values JSON Schemas");
        };
        let mut by_type = HashMap::new();
        let mut others = None;
        for (kind, schema) in entries {
            let validator = engine::compile(schema)
                .map_err(|error| anyhow::anyhow!("type {kind:?}: invalid schema: {error}"))?;
            if kind == ANY_TYPE {
                others = Some(validator);
            } else {
                by_type.insert(kind.clone(), validator);
            }
        }
        Ok(MessageSchemas { by_type, others })
    }

    /// Checks one message (absent counts as `null`) against the schema for its type.
    pub fn check(&self, kind: &str, message: Option<&RawValue>) -> Result<(), Invalid> {
        let Some(validator) = self.by_type.get(kind).or(self.others.as_ref()) else {
            return Err(Invalid {
                path: String::new(),
                reason: format!("type {kind:?} is not allowed on this relay"),
            });
        };
        let instance: Value = match message {
            Some(raw) => serde_json::from_str(raw.get()).map_err(|error| Invalid {
                path: String::new(),
                reason: one_line(&error.to_string()),
            })?,
            None => Value::Null,
        };
        engine::validate(validator, &instance)
    }
}

/// The validator itself: the `jsonschema` crate, or, in a build without the `schema` feature, an
/// engine that refuses every schema at start so that nothing is silently left unchecked.
#[cfg(feature = "schema")]
mod engine {
    use super::{Invalid, one_line};
    use serde_json::Value;

    pub use jsonschema::Validator;

    pub fn compile(schema: &Value) -> Result<Validator, String> {
        jsonschema::draft202012::new(schema).map_err(|error| one_line(&error.to_string()))
    }

    pub fn validate(validator: &Validator, instance: &Value) -> Result<(), Invalid> {
        validator.validate(instance).map_err(|error| Invalid {
            path: error.instance_path().as_str().to_owned(),
            // Masked: the reason must not echo a peer's (possibly huge) value back at it.
            reason: one_line(&error.masked().to_string()),
        })
    }
}

#[cfg(not(feature = "schema"))]
mod engine {
    use super::Invalid;
    use serde_json::Value;

    pub enum Validator {}

    pub fn compile(_: &Value) -> Result<Validator, String> {
        Err("this build has no JSON Schema support (cargo feature `schema`)".to_owned())
    }

    pub fn validate(validator: &Validator, _: &Value) -> Result<(), Invalid> {
        match *validator {}
    }
}

/// The first line of `text`, cut to [`MAX_REASON_CHARS`].
fn one_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    match line.char_indices().nth(MAX_REASON_CHARS) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_owned(),
    }
}

#[cfg(all(test, feature = "schema"))]
mod tests {
    use super::*;
    use serde_json::json;

    fn raw(value: Value) -> Box<RawValue> {
        RawValue::from_string(value.to_string()).expect("valid JSON")
    }

    fn schemas(document: Value) -> MessageSchemas {
        MessageSchemas::compile(&document).expect("valid schemas")
    }

    #[test]
    fn checks_the_schema_of_the_type_and_points_at_the_failure() {
        let schemas = schemas(json!({
            "OFFER": {"type": "object", "required": ["sdp"], "properties": {"sdp": {"type": "string", "maxLength": 10}}}
        }));
        assert_eq!(
            schemas.check("OFFER", Some(&raw(json!({"sdp": "v=0"})))),
            Ok(())
        );
        let invalid = schemas
            .check("OFFER", Some(&raw(json!({"sdp": "x".repeat(11)}))))
            .expect_err("too long");
        assert_eq!(invalid.path, "/sdp");
        assert!(
            !invalid.reason.contains("xxxxxxxxxxx"),
            "{}",
            invalid.reason
        );
        let invalid = schemas
            .check("OFFER", None)
            .expect_err("null is not an object");
        assert_eq!(invalid.path, "");
    }

    #[test]
    fn types_not_listed_are_refused_unless_a_star_schema_exists() {
        let strict = schemas(json!({"BYE": {}}));
        let refused = strict
            .check("CHAT", Some(&raw(json!("hi"))))
            .expect_err("not listed");
        assert!(refused.reason.contains("not allowed"), "{}", refused.reason);
        let lenient = schemas(json!({"BYE": {}, "*": {"type": "string"}}));
        assert_eq!(lenient.check("CHAT", Some(&raw(json!("hi")))), Ok(()));
        assert!(lenient.check("CHAT", Some(&raw(json!(1)))).is_err());
    }

    #[test]
    fn bad_schemas_fail_naming_the_type() {
        let error = MessageSchemas::compile(&json!({"OFFER": {"type": "strin"}}))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("\"OFFER\""), "{error}");
        assert!(!error.contains('\n'), "{error}");
        assert!(MessageSchemas::compile(&json!([1])).is_err());
    }

    #[test]
    fn remote_refs_are_refused() {
        let error =
            MessageSchemas::compile(&json!({"T": {"$ref": "https://example.com/schema.json"}}))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
        assert!(error.contains("\"T\""), "{error}");
    }

    #[test]
    fn the_shipped_example_compiles() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/webrtc-signaling.schema.json");
        MessageSchemas::load(&path).expect("the example schema is valid");
    }
}
