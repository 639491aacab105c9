//! Commands to the relay: frames a peer addresses `"to": "0"`. Pure: reading them and who may
//! give them; the hub carries them out.

use crate::relay::ids::ClientId;
use serde::Deserialize;
use serde_json::value::RawValue;

/// Longest reason a host may give with `KICK` or `DENY`: what a WebSocket close reason holds.
pub const MAX_REASON_BYTES: usize = 123;

/// What a peer asks of the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Leave the room on purpose: gone at once, no resume. Any peer.
    Leave,
    /// Fresh ICE servers (TURN credentials). Any peer.
    IceRefresh,
    /// Remove a client from the room. The server only.
    Kick {
        /// The member.
        id: ClientId,
        /// Told to the client with its ERROR.
        reason: Option<String>,
    },
    /// Change the room's settings; `None` keeps one as it is. The server only.
    Room {
        /// No one new may join.
        locked: Option<bool>,
        /// Newcomers knock and wait.
        knock: Option<bool>,
    },
    /// Let a knocker in. The server only.
    Admit {
        /// The knocker.
        id: ClientId,
    },
    /// Turn a knocker away. The server only.
    Deny {
        /// The knocker.
        id: ClientId,
        /// Told to the client with its ERROR.
        reason: Option<String>,
    },
}

impl Command {
    /// Whether only the room's server may give it.
    pub fn needs_server(&self) -> bool {
        !matches!(self, Command::Leave | Command::IceRefresh)
    }
}

/// Why a command could not be read; the peer gets it as ERROR `BAD_COMMAND`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadCommand {
    /// Not a command the relay knows.
    #[error("unknown command {0:?}: LEAVE, ICE_REFRESH, KICK, ROOM, ADMIT or DENY")]
    Unknown(String),
    /// Its `message` is not what the command takes.
    #[error("{0} takes {1}")]
    Malformed(&'static str, &'static str),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Target<'a> {
    #[serde(borrow)]
    id: &'a str,
    reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    locked: Option<bool>,
    knock: Option<bool>,
}

const TARGET: &str =
    r#"{"id": CLIENT_ID} (and for KICK and DENY an optional "reason" of at most 123 bytes)"#;

/// Reads the command `kind` with its `message`.
pub fn parse(kind: &str, message: Option<&RawValue>) -> Result<Command, BadCommand> {
    let text = message.map_or("{}", RawValue::get);
    let target = |name: &'static str| {
        let target: Target<'_> =
            serde_json::from_str(text).map_err(|_| BadCommand::Malformed(name, TARGET))?;
        let id = ClientId::parse(target.id).ok_or(BadCommand::Malformed(name, TARGET))?;
        if target
            .reason
            .as_ref()
            .is_some_and(|r| r.len() > MAX_REASON_BYTES)
        {
            return Err(BadCommand::Malformed(name, TARGET));
        }
        Ok((id, target.reason))
    };
    match kind {
        "LEAVE" => Ok(Command::Leave),
        "ICE_REFRESH" => Ok(Command::IceRefresh),
        "KICK" => target("KICK").map(|(id, reason)| Command::Kick { id, reason }),
        "DENY" => target("DENY").map(|(id, reason)| Command::Deny { id, reason }),
        "ADMIT" => match target("ADMIT")? {
            (id, None) => Ok(Command::Admit { id }),
            (_, Some(_)) => Err(BadCommand::Malformed("ADMIT", r#"{"id": CLIENT_ID}"#)),
        },
        "ROOM" => {
            let settings: Settings = serde_json::from_str(text).map_err(|_| {
                BadCommand::Malformed("ROOM", r#"{"locked"?: true|false, "knock"?: true|false}"#)
            })?;
            Ok(Command::Room {
                locked: settings.locked,
                knock: settings.knock,
            })
        }
        other => Err(BadCommand::Unknown(other.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const ID: &str = "V1StGXR8_Z5jdHi6B-myT";

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).expect("JSON")
    }

    fn id() -> ClientId {
        ClientId::parse(ID).expect("an id")
    }

    #[test]
    fn every_command_is_read() {
        let target = raw(&format!(r#"{{"id":"{ID}"}}"#));
        let with_reason = raw(&format!(r#"{{"id":"{ID}","reason":"spam"}}"#));
        assert_eq!(parse("LEAVE", None), Ok(Command::Leave));
        assert_eq!(
            parse("ICE_REFRESH", Some(&raw("{}"))),
            Ok(Command::IceRefresh)
        );
        assert_eq!(
            parse("KICK", Some(&with_reason)),
            Ok(Command::Kick {
                id: id(),
                reason: Some("spam".into())
            })
        );
        assert_eq!(
            parse("ADMIT", Some(&target)),
            Ok(Command::Admit { id: id() })
        );
        assert_eq!(
            parse("DENY", Some(&target)),
            Ok(Command::Deny {
                id: id(),
                reason: None
            })
        );
        assert_eq!(
            parse("ROOM", Some(&raw(r#"{"locked":true}"#))),
            Ok(Command::Room {
                locked: Some(true),
                knock: None
            })
        );
    }

    #[rstest]
    #[case("KICK", None)]
    #[case("KICK", Some(r#"{"id":"nope"}"#))]
    #[case("KICK", Some(r#"{"id":"V1StGXR8_Z5jdHi6B-myT","extra":1}"#))]
    #[case("ADMIT", Some(r#"{"id":"V1StGXR8_Z5jdHi6B-myT","reason":"x"}"#))]
    #[case("ROOM", Some(r#"{"locked":"yes"}"#))]
    #[case("ROOM", Some("[]"))]
    fn malformed_commands_are_refused(#[case] kind: &str, #[case] message: Option<&str>) {
        let message = message.map(raw);
        assert!(matches!(
            parse(kind, message.as_deref()),
            Err(BadCommand::Malformed(..))
        ));
    }

    #[test]
    fn a_reason_longer_than_a_close_reason_is_refused() {
        let long = raw(&format!(
            r#"{{"id":"{ID}","reason":"{}"}}"#,
            "x".repeat(124)
        ));
        assert!(parse("KICK", Some(&long)).is_err());
        let fits = raw(&format!(
            r#"{{"id":"{ID}","reason":"{}"}}"#,
            "x".repeat(123)
        ));
        assert!(parse("KICK", Some(&fits)).is_ok());
    }

    #[test]
    fn unknown_commands_are_named_and_only_room_commands_need_the_server() {
        assert_eq!(
            parse("SHOUT", None),
            Err(BadCommand::Unknown("SHOUT".into()))
        );
        assert!(!Command::Leave.needs_server());
        assert!(!Command::IceRefresh.needs_server());
        assert!(Command::Admit { id: id() }.needs_server());
    }
}
