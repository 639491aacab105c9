//! What two instances say to each other about a room they share (`--cluster-routing pubsub`):
//! one JSON object per Redis pub/sub message, named by its only key.
//!
//! Externally tagged on purpose: serde reads the relayed frames of a `deliver` as borrowed raw
//! JSON, which it cannot do inside an internally tagged enum (it would buffer them first).

use crate::relay::hub::JoinError;
use crate::relay::outcome::{
    Closing, DENIED, KICKED, KNOCK_TIMEOUT, LINK_LOST, NO_FREE_ID, RESUME_FAILED, ROOM_LOCKED,
    ROOM_UNREACHABLE, Refusal, SERVER_FULL, SERVER_GONE, SHUTTING_DOWN, SUPERSEDED, TOO_SLOW,
    UNKNOWN_SERVER,
};
use crate::relay::protocol::{Greeting, Resumption};
use crate::relay::resume::Token;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;

/// A forwarded session's number, drawn by the instance holding the client's socket.
pub type Ticket = u64;

/// One message between instances.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Wire<'a> {
    /// Guest's instance → owner: add a client to the room with `code`; answer on `guest`'s
    /// channel (an [`Owner::value`](crate::relay::directory::Owner::value)).
    Join {
        ticket: Ticket,
        #[serde(borrow)]
        code: Cow<'a, str>,
        #[serde(borrow)]
        guest: Cow<'a, str>,
        /// The client's `?name=`, for a knocking room's server.
        #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
        info: Option<Cow<'a, str>>,
        /// Resume the member with this token rather than add a new one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<Token>,
        /// With `resume`: the frames the client received since its last HELLO.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        received: Option<u64>,
    },
    /// Owner → guest's instance: the join was refused.
    Refused { ticket: Ticket, why: Why },
    /// Either way: relayed frames, in order. The owner's first ever `deliver` for a ticket starts
    /// with an [`id_frame`]; the guest's instance answers it with its own HELLO.
    Deliver {
        ticket: Ticket,
        #[serde(borrow)]
        frames: Vec<&'a RawValue>,
    },
    /// Owner → guest's instance: the relay closed the client's membership, with this close.
    Closed {
        ticket: Ticket,
        code: u16,
        #[serde(borrow)]
        reason: Cow<'a, str>,
    },
    /// Guest's instance → owner: the client's session ended.
    Leave { ticket: Ticket },
    /// Guest's instance → owner: the client's connection was lost; it may resume.
    Away { ticket: Ticket },
    /// Guest's instance → owner: the relay's own answers to the client (ERROR, ICE_SERVERS),
    /// to be queued for it in order with what the owner sends, so the owner numbers every frame
    /// the client receives, as a resume's `received` counts them.
    Answer {
        ticket: Ticket,
        #[serde(borrow)]
        frames: Vec<&'a RawValue>,
    },
    /// New owner → old owner: the room's server took the room with `code` over on the sender
    /// (it resumed there); let it go, and close its members so that they resume there too.
    Taken {
        #[serde(borrow)]
        code: Cow<'a, str>,
    },
    /// To every instance: the sender (an [`Owner::value`](crate::relay::directory::Owner::value)) lost messages and dropped every link
    /// it had; drop yours with it.
    Reset {
        #[serde(borrow)]
        owner: Cow<'a, str>,
    },
}

/// Why the owner refused a join.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Why {
    /// No server has the code (any more).
    UnknownServer,
    /// The server is at `--max-clients-per-server`.
    ServerFull,
    /// No free client id.
    NoFreeId,
    /// The owner holds as many remote members as it takes.
    Unavailable,
    /// The room is locked.
    Locked,
    /// The resume token is unknown, used or expired.
    ResumeFailed,
}

impl From<JoinError> for Why {
    fn from(error: JoinError) -> Why {
        match error {
            JoinError::UnknownServer => Why::UnknownServer,
            JoinError::ServerFull => Why::ServerFull,
            JoinError::NoFreeId => Why::NoFreeId,
            JoinError::Locked => Why::Locked,
        }
    }
}

impl Why {
    /// What the client is told, as for the same refusal on one instance.
    pub fn refusal(self) -> Refusal {
        match self {
            Why::UnknownServer => UNKNOWN_SERVER,
            Why::ServerFull => SERVER_FULL,
            Why::NoFreeId => NO_FREE_ID,
            Why::Unavailable => ROOM_UNREACHABLE,
            Why::Locked => ROOM_LOCKED,
            Why::ResumeFailed => RESUME_FAILED,
        }
    }
}

/// The closes an owner forwards; anything else read from Redis is taken as a lost link.
const FORWARDED_CLOSES: [Closing; 7] = [
    SERVER_GONE,
    SUPERSEDED,
    TOO_SLOW,
    SHUTTING_DOWN,
    KICKED,
    DENIED,
    KNOCK_TIMEOUT,
];

/// The close a `closed` message names.
pub fn closing(code: u16, reason: &str) -> Closing {
    FORWARDED_CLOSES
        .into_iter()
        .find(|closing| closing.code == code && closing.reason == reason)
        .unwrap_or(LINK_LOST.closing)
}

/// A `deliver` of `frames`, each already a JSON text the relay wrote; written by hand so that
/// frames are copied once and not parsed again.
pub fn deliver<'f>(ticket: Ticket, frames: impl Iterator<Item = &'f str> + Clone) -> String {
    with_frames("deliver", ticket, frames)
}

/// An `answer` of one frame, written as [`deliver`] writes its frames.
pub fn answer(ticket: Ticket, frame: &str) -> String {
    with_frames("answer", ticket, std::iter::once(frame))
}

fn with_frames<'f>(
    tag: &str,
    ticket: Ticket,
    frames: impl Iterator<Item = &'f str> + Clone,
) -> String {
    let length: usize = frames.clone().map(|frame| frame.len() + 1).sum();
    let mut text = String::with_capacity(48 + length);
    text.push_str(r#"{""#);
    text.push_str(tag);
    text.push_str(r#"":{"ticket":"#);
    text.push_str(&ticket.to_string());
    text.push_str(r#","frames":["#);
    for (n, frame) in frames.enumerate() {
        if n > 0 {
            text.push(',');
        }
        text.push_str(frame);
    }
    text.push_str("]}}");
    text
}

/// Any other message.
pub fn encode(wire: &Wire<'_>) -> String {
    serde_json::to_string(wire).expect("a Wire message always serializes")
}

/// The first frame an owner queues for a remote member: what its HELLO says of it, which the
/// guest's instance writes.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdFrame<'a> {
    #[serde(borrow)]
    pub id: &'a str,
    pub waiting: bool,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<Resumption<'a>>,
}

impl<'a> IdFrame<'a> {
    /// The greeting the guest's HELLO is written from.
    pub fn greeting(&self) -> Greeting<'a> {
        Greeting {
            id: self.id,
            resume: self.resume,
            waiting: self.waiting,
        }
    }
}

/// Writes an [`IdFrame`] for what the hub says of a new or resumed member.
pub fn id_frame(greeting: &Greeting<'_>) -> String {
    let frame = IdFrame {
        id: greeting.id,
        waiting: greeting.waiting,
        resume: greeting.resume,
    };
    serde_json::to_string(&frame).expect("an id frame always serializes")
}

/// Reads a message.
pub fn decode(text: &str) -> Result<Wire<'_>, serde_json::Error> {
    serde_json::from_str(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::protocol;

    #[test]
    fn a_deliver_carries_frames_verbatim_and_in_order() {
        let frames = [protocol::peer_joined("abc"), r#"{"a": [1, 2]}"#.to_owned()];
        let text = deliver(7, frames.iter().map(String::as_str));
        let Ok(Wire::Deliver {
            ticket,
            frames: read,
        }) = decode(&text)
        else {
            panic!("reads back: {text}")
        };
        assert_eq!(ticket, 7);
        let read: Vec<&str> = read.iter().map(|frame| frame.get()).collect();
        assert_eq!(read, frames);
        let text = answer(8, &frames[0]);
        let Ok(Wire::Answer {
            ticket: 8,
            frames: read,
        }) = decode(&text)
        else {
            panic!("reads back: {text}")
        };
        assert_eq!(read[0].get(), frames[0]);
    }

    #[test]
    fn every_other_message_survives_its_round_trip() {
        let messages = [
            Wire::Join {
                ticket: u64::MAX,
                code: "7KQ2MX".into(),
                guest: "b 1x".into(),
                info: Some("Ada".into()),
                resume: None,
                received: None,
            },
            Wire::Join {
                ticket: 9,
                code: "7KQ2MX".into(),
                guest: "b 1x".into(),
                info: None,
                resume: Some(Token::generate()),
                received: Some(12),
            },
            Wire::Away { ticket: 4 },
            Wire::Taken {
                code: "7KQ2MX".into(),
            },
            Wire::Refused {
                ticket: 1,
                why: Why::ServerFull,
            },
            Wire::Closed {
                ticket: 2,
                code: 4410,
                reason: "server gone".into(),
            },
            Wire::Leave { ticket: 3 },
            Wire::Reset {
                owner: "a \"quoted\" boot".into(),
            },
        ];
        for message in messages {
            let text = encode(&message);
            let read = decode(&text).expect("reads back");
            assert_eq!(encode(&read), text);
        }
    }

    #[test]
    fn an_id_frame_carries_the_resume_part_of_the_guests_hello() {
        let resume = Resumption {
            token: "AAAAAAAAAAAAAAAAAAAAAA",
            window_ms: 30_000,
            resumed: true,
            replayed: Some(2),
            gap: false,
        };
        let greeting = Greeting {
            id: "V1StGXR8_Z5jdHi6B-myT",
            resume: Some(resume),
            waiting: false,
        };
        let text = id_frame(&greeting);
        let read: IdFrame<'_> = serde_json::from_str(&text).expect("reads back");
        assert_eq!(read.greeting().resume, Some(resume));
        assert_eq!(read.id, greeting.id);
        let plain = id_frame(&Greeting {
            resume: None,
            ..greeting
        });
        let read: IdFrame<'_> = serde_json::from_str(&plain).expect("reads back");
        assert_eq!(read.resume, None);
    }

    #[test]
    fn what_is_not_a_message_is_an_error_not_a_panic() {
        for text in [
            "",
            "{}",
            r#"{"leave":{}}"#,
            r#"{"leave":{"ticket":-1}}"#,
            r#"{"deliver":{"ticket":1,"frames":[nope]}}"#,
            r#"{"leave":{"ticket":1},"reset":{"owner":"x"}}"#,
            r#"{"leave":{"ticket":1,"extra":true}}"#,
        ] {
            assert!(decode(text).is_err(), "{text:?} was read");
        }
    }

    #[test]
    fn forwarded_closes_are_read_back_and_anything_else_is_a_lost_link() {
        assert_eq!(closing(4410, "server gone"), SERVER_GONE);
        assert_eq!(closing(1001, "going away"), SHUTTING_DOWN);
        assert_eq!(closing(4410, "made up"), LINK_LOST.closing);
        assert_eq!(closing(1000, "normal"), LINK_LOST.closing);
    }

    #[test]
    fn refusals_mirror_the_single_instance_ones() {
        assert_eq!(
            Why::from(JoinError::UnknownServer).refusal(),
            UNKNOWN_SERVER
        );
        assert_eq!(Why::from(JoinError::ServerFull).refusal(), SERVER_FULL);
        assert_eq!(Why::Unavailable.refusal(), ROOM_UNREACHABLE);
    }
}
