//! Every way the relay tells a peer "no", defined once: the ERROR codes, the WebSocket close codes,
//! and the fixed pairs of them it sends. The README's two tables ("Errors and close codes") mirror
//! this file, and a test below holds them together.

/// The codes an ERROR frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Not a valid envelope, or a binary frame.
    BadMessage,
    /// `to` names no peer this sender may reach.
    UnknownPeer,
    /// Over the message rate, or too many sessions or failed attempts from one address.
    RateLimited,
    /// `/client/{CODE}` for no live server.
    UnknownServer,
    /// The server is at `--max-clients-per-server`.
    ServerFull,
    /// Wrong, missing or repeated passphrase at `/server`.
    Unauthorized,
    /// Refused by the `--message-schema` for its type.
    InvalidMessage,
    /// The relay cannot take the peer now; it may try again later.
    ServerUnavailable,
    /// A frame for an away peer did not fit its queue; it was not queued.
    QueueFull,
    /// A newer connection resumed this peer.
    Superseded,
    /// The resume token is unknown, used or expired.
    ResumeFailed,
    /// A command only the room's server may give.
    Forbidden,
    /// A command the relay does not know, or whose `message` is not the command's.
    BadCommand,
    /// The room's server removed this client.
    Kicked,
    /// The room is locked: no one new may join.
    RoomLocked,
    /// The client waits to be let in; its frames go nowhere meanwhile.
    NotAdmitted,
    /// The room's server did not let this client in.
    Denied,
    /// The room's server did not answer the knock in time.
    KnockTimeout,
}

impl ErrorCode {
    /// Every code, in the README's order.
    pub const ALL: [ErrorCode; 18] = [
        ErrorCode::BadMessage,
        ErrorCode::UnknownPeer,
        ErrorCode::RateLimited,
        ErrorCode::UnknownServer,
        ErrorCode::ServerFull,
        ErrorCode::Unauthorized,
        ErrorCode::InvalidMessage,
        ErrorCode::ServerUnavailable,
        ErrorCode::QueueFull,
        ErrorCode::Superseded,
        ErrorCode::ResumeFailed,
        ErrorCode::Forbidden,
        ErrorCode::BadCommand,
        ErrorCode::Kicked,
        ErrorCode::RoomLocked,
        ErrorCode::NotAdmitted,
        ErrorCode::Denied,
        ErrorCode::KnockTimeout,
    ];

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadMessage => "BAD_MESSAGE",
            ErrorCode::UnknownPeer => "UNKNOWN_PEER",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::UnknownServer => "UNKNOWN_SERVER",
            ErrorCode::ServerFull => "SERVER_FULL",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::InvalidMessage => "INVALID_MESSAGE",
            ErrorCode::ServerUnavailable => "SERVER_UNAVAILABLE",
            ErrorCode::QueueFull => "QUEUE_FULL",
            ErrorCode::Superseded => "SUPERSEDED",
            ErrorCode::ResumeFailed => "RESUME_FAILED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::BadCommand => "BAD_COMMAND",
            ErrorCode::Kicked => "KICKED",
            ErrorCode::RoomLocked => "ROOM_LOCKED",
            ErrorCode::NotAdmitted => "NOT_ADMITTED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::KnockTimeout => "KNOCK_TIMEOUT",
        }
    }
}

/// WebSocket close codes: those the relay sends, and those it records for a peer that left.
pub mod close {
    /// A deliberate leave: the peer's own, or the relay's answer to LEAVE.
    pub const NORMAL: u16 = 1000;
    /// The relay is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// A WebSocket protocol violation.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// Recorded for a close frame that carried no code (RFC 6455 §7.1.5).
    pub const NO_STATUS: u16 = 1005;
    /// Recorded for a connection that dropped without a close frame (RFC 6455 §7.1.5).
    pub const ABNORMAL: u16 = 1006;
    /// Invalid UTF-8 in a text frame.
    pub const NOT_UTF8: u16 = 1007;
    /// The peer broke a rule it was told about: too slow a reader, or a sustained flood.
    pub const POLICY: u16 = 1008;
    /// A frame or message larger than `--max-message-bytes`.
    pub const TOO_BIG: u16 = 1009;
    /// The relay cannot serve the peer now (RFC 6455's "Try Again Later", IANA-registered).
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// Registration at `/server` without the right passphrase.
    pub const UNAUTHORIZED: u16 = 4401;
    /// The room's server removed the client, or did not let it in.
    pub const REMOVED: u16 = 4403;
    /// `/client/{CODE}` names no live server.
    pub const UNKNOWN_SERVER: u16 = 4404;
    /// Nothing, not even a pong, arrived for `--idle-timeout`.
    pub const IDLE: u16 = 4408;
    /// The server already holds `--max-clients-per-server` clients.
    pub const SERVER_FULL: u16 = 4409;
    /// The client's server left.
    pub const SERVER_GONE: u16 = 4410;
    /// A newer connection resumed this peer.
    pub const SUPERSEDED: u16 = 4412;
    /// The room is locked.
    pub const ROOM_LOCKED: u16 = 4423;
    /// Too many connections or failed attempts from the client's address.
    pub const RATE_LIMITED: u16 = 4429;

    /// Every code above: the README's close table.
    #[cfg(test)]
    pub const DOCUMENTED: [u16; 18] = [
        NORMAL,
        GOING_AWAY,
        PROTOCOL_ERROR,
        NO_STATUS,
        ABNORMAL,
        NOT_UTF8,
        POLICY,
        TOO_BIG,
        TRY_AGAIN_LATER,
        UNAUTHORIZED,
        REMOVED,
        UNKNOWN_SERVER,
        IDLE,
        SERVER_FULL,
        SERVER_GONE,
        SUPERSEDED,
        ROOM_LOCKED,
        RATE_LIMITED,
    ];
}

/// Why the relay is closing a peer: the close frame it sends once queued frames are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closing {
    /// WebSocket close code, one of [`close`].
    pub code: u16,
    /// Close reason, shown to the peer.
    pub reason: &'static str,
}

/// The peer sent LEAVE: it is gone at once, and may not resume.
pub const LEFT: Closing = Closing {
    code: close::NORMAL,
    reason: "left",
};
/// The peer's queue overflowed: what is still queued for it is abandoned.
pub const TOO_SLOW: Closing = Closing {
    code: close::POLICY,
    reason: "too slow",
};
/// The relay is shutting down.
pub const SHUTTING_DOWN: Closing = Closing {
    code: close::GOING_AWAY,
    reason: "going away",
};
/// A client's server left.
pub const SERVER_GONE: Closing = Closing {
    code: close::SERVER_GONE,
    reason: "server gone",
};
/// The room's server removed the client (after ERROR `KICKED`).
pub const KICKED: Closing = Closing {
    code: close::REMOVED,
    reason: "kicked",
};
/// The room's server did not let the client in (after ERROR `DENIED`).
pub const DENIED: Closing = Closing {
    code: close::REMOVED,
    reason: "denied",
};
/// A knock no one answered within `--knock-timeout` (after ERROR `KNOCK_TIMEOUT`).
pub const KNOCK_TIMEOUT: Closing = Closing {
    code: close::IDLE,
    reason: "knock timeout",
};
/// A newer connection resumed this peer, after [`SUPERSEDED_NOTICE`].
pub const SUPERSEDED: Closing = Closing {
    code: close::SUPERSEDED,
    reason: "superseded",
};
/// Nothing arrived from the peer for `--idle-timeout`.
pub const IDLE: Closing = Closing {
    code: close::IDLE,
    reason: "idle timeout",
};
/// The peer went on exceeding its rate for the whole flood window.
pub const FLOODING: Closing = Closing {
    code: close::POLICY,
    reason: "rate limit exceeded for too long",
};
/// A message over `--max-message-bytes`.
pub const TOO_BIG: Closing = Closing {
    code: close::TOO_BIG,
    reason: "message too big",
};
/// A frame that breaks RFC 6455.
pub const PROTOCOL_ERROR: Closing = Closing {
    code: close::PROTOCOL_ERROR,
    reason: "protocol error",
};
/// A text frame that is not UTF-8.
pub const NOT_UTF8: Closing = Closing {
    code: close::NOT_UTF8,
    reason: "invalid UTF-8",
};

/// An ERROR with a fixed reason, after which the connection stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notice {
    /// The ERROR's code.
    pub code: ErrorCode,
    /// What the peer is told.
    pub reason: &'static str,
}

/// A frame over the peer's rate was dropped.
pub const DROPPED: Notice = Notice {
    code: ErrorCode::RateLimited,
    reason: "too many messages: this one was dropped",
};
/// A frame for an away peer whose resume queue is full; the sender's connection stays open.
pub const QUEUE_FULL: Notice = Notice {
    code: ErrorCode::QueueFull,
    reason: "the peer is away and its queue is full: this message was not queued",
};
/// A room command from a client.
pub const FORBIDDEN: Notice = Notice {
    code: ErrorCode::Forbidden,
    reason: "only the room's server may give this command",
};
/// A frame from a client still waiting to be let in.
pub const NOT_ADMITTED: Notice = Notice {
    code: ErrorCode::NotAdmitted,
    reason: "the host has not let you in yet: this message went nowhere",
};
/// What a knocker is told when no one answered in time.
pub const KNOCK_UNANSWERED: Notice = Notice {
    code: ErrorCode::KnockTimeout,
    reason: "the host did not let you in in time",
};
/// What a superseded connection is told before its close.
pub const SUPERSEDED_NOTICE: Notice = Notice {
    code: ErrorCode::Superseded,
    reason: "a newer connection resumed this session",
};
/// A binary frame, which the protocol does not use.
pub const BINARY: Notice = Notice {
    code: ErrorCode::BadMessage,
    reason: "binary frames are not supported: send JSON text",
};

/// Why a peer is turned away after the upgrade: an ERROR frame, then a close, and no HELLO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The ERROR frame.
    pub notice: Notice,
    /// The close that follows.
    pub closing: Closing,
}

impl Refusal {
    /// Whether the refusal is a failed guess, which the per-address failure bound counts.
    pub fn is_failed_attempt(&self) -> bool {
        matches!(
            self.notice.code,
            ErrorCode::UnknownServer | ErrorCode::Unauthorized | ErrorCode::ResumeFailed
        )
    }
}

/// `/client/{CODE}` for a code that names no live server.
pub const UNKNOWN_SERVER: Refusal = Refusal {
    notice: Notice {
        code: ErrorCode::UnknownServer,
        reason: "no server has this code",
    },
    closing: Closing {
        code: close::UNKNOWN_SERVER,
        reason: "unknown server",
    },
};
/// The server holds `--max-clients-per-server` clients.
pub const SERVER_FULL: Refusal = Refusal {
    notice: Notice {
        code: ErrorCode::ServerFull,
        reason: "the server holds its maximum number of clients",
    },
    closing: Closing {
        code: close::SERVER_FULL,
        reason: "server full",
    },
};
/// `/server` without the passphrase exactly once.
pub const UNAUTHORIZED: Refusal = Refusal {
    notice: Notice {
        code: ErrorCode::Unauthorized,
        reason: "registering a server needs the relay's passphrase, given once",
    },
    closing: Closing {
        code: close::UNAUTHORIZED,
        reason: "unauthorized",
    },
};
/// The address holds `--max-connections-per-ip` sessions.
pub const TOO_MANY_CONNECTIONS: Refusal = Refusal {
    notice: Notice {
        code: ErrorCode::RateLimited,
        reason: "too many connections from your address",
    },
    closing: Closing {
        code: close::RATE_LIMITED,
        reason: "too many connections",
    },
};
/// The address failed `--max-failed-attempts-per-minute` times this minute.
pub const TOO_MANY_FAILURES: Refusal = Refusal {
    notice: Notice {
        code: ErrorCode::RateLimited,
        reason: "too many failed attempts from your address: wait a minute",
    },
    closing: Closing {
        code: close::RATE_LIMITED,
        reason: "too many failed attempts",
    },
};

/// `/client/{CODE}` for a locked room.
pub const ROOM_LOCKED: Refusal = Refusal {
    notice: Notice {
        code: ErrorCode::RoomLocked,
        reason: "this room is locked",
    },
    closing: Closing {
        code: close::ROOM_LOCKED,
        reason: "room locked",
    },
};

/// A resume with a token that is unknown, already used, or past its window. It counts as a
/// failed attempt, so tokens cannot be guessed at speed.
pub const RESUME_FAILED: Refusal = Refusal {
    notice: Notice {
        code: ErrorCode::ResumeFailed,
        reason: "this resume token is unknown, used or expired: join or register afresh",
    },
    closing: Closing {
        code: close::UNKNOWN_SERVER,
        reason: "resume failed",
    },
};

/// No free id could be drawn for the newcomer: the code space is exhausted.
pub const NO_FREE_ID: Refusal = Refusal {
    notice: Notice {
        code: ErrorCode::ServerUnavailable,
        reason: "no free join code or client id: try again later",
    },
    closing: Closing {
        code: close::TRY_AGAIN_LATER,
        reason: "try again later",
    },
};

/// The cluster directory (Redis) cannot be reached, or this instance does not hold its lease.
pub const DIRECTORY_DOWN: Refusal = Refusal {
    notice: Notice {
        code: ErrorCode::ServerUnavailable,
        reason: "the cluster directory cannot be reached: try again later",
    },
    closing: Closing {
        code: close::TRY_AGAIN_LATER,
        reason: "try again later",
    },
};

/// The code's room is on another instance that this request could not be brought to: it was
/// replayed once already (the owner could not be reached, or the room moved).
pub const ROOM_UNREACHABLE: Refusal = Refusal {
    notice: Notice {
        code: ErrorCode::ServerUnavailable,
        reason: "this code's room is on another instance that cannot be reached now: try again later",
    },
    closing: Closing {
        code: close::TRY_AGAIN_LATER,
        reason: "try again later",
    },
};

/// The code's instance died or drained and its server has not taken the room over on another
/// instance yet: it may, within its resume window, so the peer should try again rather than
/// give up.
pub const ROOM_ORPHANED: Refusal = Refusal {
    notice: Notice {
        code: ErrorCode::ServerUnavailable,
        reason: "this code's instance is gone and its server has not come back yet: try again later",
    },
    closing: Closing {
        code: close::TRY_AGAIN_LATER,
        reason: "try again later",
    },
};

/// Sent to a server whose code another instance claimed while this one could not reach the
/// cluster directory: clients can no longer find the room, so it closes.
pub const CODE_LOST: Refusal = Refusal {
    notice: Notice {
        code: ErrorCode::ServerUnavailable,
        reason: "your join code was given to another server while the cluster directory was unreachable: register again",
    },
    closing: Closing {
        code: close::TRY_AGAIN_LATER,
        reason: "try again later",
    },
};

/// Sent to a client whose room is on another instance (`--cluster-routing pubsub`) when a frame
/// between the two may have been lost: a publish failed, a subscription dropped, or the way out to
/// Redis was full. Pub/sub delivers at most once, so the session ends rather than go on with a gap.
pub const LINK_LOST: Refusal = Refusal {
    notice: Notice {
        code: ErrorCode::ServerUnavailable,
        reason: "the link to the instance holding this room was lost: join again",
    },
    closing: Closing {
        code: close::TRY_AGAIN_LATER,
        reason: "try again later",
    },
};

/// What every `SERVER_UNAVAILABLE` tells the peer to wait before trying again, as `retryAfterMs`.
pub const RETRY_AFTER_MS: u64 = 1000;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const README: &str = include_str!("../../README.md");

    /// The rows of the README table whose header row starts with `header`, as their cells.
    fn table(header: &str) -> Vec<Vec<&'static str>> {
        let lines: Vec<&str> = README.lines().collect();
        let start = lines
            .iter()
            .position(|line| line.starts_with(header))
            .unwrap_or_else(|| panic!("the README has a table headed {header:?}"));
        lines[start + 2..]
            .iter()
            .take_while(|line| line.starts_with('|'))
            .map(|line| line.trim_matches('|').split(" | ").map(str::trim).collect())
            .collect()
    }

    /// The backticked words of a cell.
    fn quoted(cell: &str) -> Vec<&str> {
        cell.split('`').skip(1).step_by(2).collect()
    }

    const REFUSALS: [Refusal; 13] = [
        UNKNOWN_SERVER,
        SERVER_FULL,
        UNAUTHORIZED,
        TOO_MANY_CONNECTIONS,
        TOO_MANY_FAILURES,
        NO_FREE_ID,
        DIRECTORY_DOWN,
        ROOM_UNREACHABLE,
        ROOM_ORPHANED,
        CODE_LOST,
        LINK_LOST,
        RESUME_FAILED,
        ROOM_LOCKED,
    ];

    #[test]
    fn the_readme_error_table_lists_every_code_and_each_refusal_with_its_close() {
        let rows = table("| ERROR code |");
        let documented: BTreeSet<&str> = rows.iter().flat_map(|row| quoted(row[0])).collect();
        let defined: BTreeSet<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(documented, defined);
        for refusal in REFUSALS {
            let close = format!("close `{}", refusal.closing.code);
            assert!(
                rows.iter()
                    .any(|row| quoted(row[0]).contains(&refusal.notice.code.as_str())
                        && row[2].contains(&close)),
                "no README row says {} ends with {close}`",
                refusal.notice.code.as_str()
            );
        }
    }

    #[test]
    fn the_readme_close_table_lists_every_code_and_reason() {
        let rows = table("| close code |");
        let documented: BTreeSet<u16> = rows
            .iter()
            .flat_map(|row| quoted(row[0]))
            .map(|code| code.parse().expect("a close code is a number"))
            .collect();
        assert_eq!(documented, close::DOCUMENTED.into_iter().collect());
        let closings = [
            TOO_SLOW,
            SHUTTING_DOWN,
            SERVER_GONE,
            IDLE,
            FLOODING,
            TOO_BIG,
            PROTOCOL_ERROR,
            NOT_UTF8,
            SUPERSEDED,
            LEFT,
            KICKED,
            DENIED,
            KNOCK_TIMEOUT,
        ];
        let refusals = REFUSALS.map(|refusal| refusal.closing);
        for closing in closings.iter().chain(&refusals) {
            let code = closing.code.to_string();
            let row = rows
                .iter()
                .find(|row| quoted(row[0]).contains(&code.as_str()))
                .unwrap_or_else(|| panic!("no README row for close {code}"));
            let said = row[1].contains(closing.reason) || row[1].contains("see the ERROR codes");
            assert!(
                said,
                "the README's row for {code} does not say {:?}",
                closing.reason
            );
        }
    }
}
