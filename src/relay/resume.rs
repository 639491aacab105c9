//! Resumable sessions, pure: the tokens, which ends leave a peer *away* rather than gone, and the
//! window of frames written to a peer that a resume replays.

use crate::relay::outcome::{IDLE, SHUTTING_DOWN, close};
use rand::RngCore;
use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// Random bytes in a token: 128 bits from the thread's CSPRNG.
pub const TOKEN_BYTES: usize = 16;

/// What resuming costs and allows, from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumePolicy {
    /// `--resume-window`: how long a peer stays away before it is gone.
    pub window: Duration,
    /// `--resume-queue-bytes`: frames queued for an away peer, and the replay window of a live
    /// one, each at most this many bytes.
    pub queue_bytes: usize,
    /// `--max-away-peers`: beyond it a lost connection is a leave.
    pub max_away: usize,
}

/// A resume token, as the peer holds it. Its `Debug` hides it, so it cannot reach a log.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Token([u8; TOKEN_BYTES]);

/// What the relay keeps of a token: its SHA-256, so a memory dump does not hold live tokens.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

impl Token {
    /// A fresh token.
    pub fn generate() -> Token {
        let mut bytes = [0; TOKEN_BYTES];
        rand::rng().fill_bytes(&mut bytes);
        Token(bytes)
    }

    /// Reads a token as [`Token::encode`] writes it; anything else is `None`.
    pub fn parse(text: &[u8]) -> Option<Token> {
        let bytes = data_encoding::BASE64URL_NOPAD.decode(text).ok()?;
        Some(Token(bytes.try_into().ok()?))
    }

    /// URL-safe base64 without padding: 22 characters.
    pub fn encode(&self) -> String {
        data_encoding::BASE64URL_NOPAD.encode(&self.0)
    }

    /// What the relay stores and looks tokens up by.
    pub fn hash(&self) -> TokenHash {
        let digest = ring::digest::digest(&ring::digest::SHA256, &self.0);
        let mut hash = [0; 32];
        hash.copy_from_slice(digest.as_ref());
        TokenHash(hash)
    }
}

impl TokenHash {
    /// Compares in constant time.
    pub fn matches(&self, other: &TokenHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }

    /// URL-safe base64 without padding, as tokens are written: how a room's resume record in the
    /// cluster directory holds it.
    pub fn to_text(&self) -> String {
        data_encoding::BASE64URL_NOPAD.encode(&self.0)
    }

    /// Reads [`TokenHash::to_text`] back; anything else is `None`.
    pub fn from_text(text: &str) -> Option<TokenHash> {
        let bytes = data_encoding::BASE64URL_NOPAD
            .decode(text.as_bytes())
            .ok()?;
        Some(TokenHash(bytes.try_into().ok()?))
    }
}

/// A token travels between instances as [`Token::encode`] writes it.
impl serde::Serialize for Token {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.encode())
    }
}

impl<'de> serde::Deserialize<'de> for Token {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Token, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Token::parse(text.as_bytes()).ok_or_else(|| serde::de::Error::custom("not a resume token"))
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHash(..)")
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(redacted)")
    }
}

/// Whether a session that ended with close `code` leaves its peer away (it may resume) rather
/// than gone. `by_relay` says who closed it.
///
/// Away: the network lost it (`1006`), the peer's own `1001` (a page being left or reloaded),
/// the idle timeout, and the relay's shutdown. Gone: every deliberate close (`1000`, or a close
/// frame without a code), and every close the relay made for the peer's behaviour, so that
/// resuming never undoes a penalty.
pub fn leaves_away(code: u16, by_relay: bool) -> bool {
    if by_relay {
        code == IDLE.code || code == SHUTTING_DOWN.code
    } else {
        code == close::ABNORMAL || code == close::GOING_AWAY
    }
}

/// The last frames written to a peer, up to a byte bound, numbered as the peer counts them: its
/// HELLO is frame 0, the next one frame 1. A peer that resumes saying it received `N` frames
/// is sent again those after `N` the window still holds.
///
/// Frames the peer is known to have received leave the window early: each ping the relay writes
/// carries the number of the next frame ([`ping_payload`]), and the pong that answers it proves
/// every frame before it arrived (a WebSocket is one ordered stream). Without that a peer that
/// was ever busy would hold a full window for the rest of its life, idle or not.
#[derive(Debug, Default)]
pub struct Replay {
    frames: VecDeque<String>,
    bytes: usize,
    limit: usize,
    /// The number the next frame written gets.
    next: u64,
}

impl Replay {
    /// A window of at most `limit` bytes; `0` keeps nothing and costs nothing.
    pub fn new(limit: usize) -> Replay {
        Replay {
            limit,
            ..Replay::default()
        }
    }

    /// The window's bound.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Records a frame just written. Copies it: the original goes to the socket.
    pub fn record(&mut self, frame: &str) {
        let number = self.next;
        self.next += 1;
        if self.limit == 0 || number == 0 {
            return;
        }
        self.frames.push_back(frame.to_owned());
        self.bytes += frame.len();
        while self.bytes > self.limit {
            match self.frames.pop_front() {
                Some(oldest) => self.bytes -= oldest.len(),
                None => break,
            }
        }
    }

    /// The number the next frame written gets: every frame below it has been written.
    pub fn written(&self) -> u64 {
        self.next
    }

    /// Forgets the frames numbered below `received`, which the peer is known to hold. A number
    /// past the last frame written forgets them all.
    pub fn delivered(&mut self, received: u64) {
        let known = self.held_below(received);
        for frame in self.frames.drain(..known) {
            self.bytes -= frame.len();
        }
        if self.frames.is_empty() {
            self.frames = VecDeque::new();
        }
    }

    /// The frames after the first `received`, and whether some of them are no longer held.
    pub fn since(self, received: u64) -> (Vec<String>, bool) {
        let wanted = received.saturating_add(1);
        let gap = wanted < self.first_held();
        let skip = self.held_below(wanted);
        (self.frames.into_iter().skip(skip).collect(), gap)
    }

    /// The number of the oldest frame the window holds (or of the next one, when it is empty).
    fn first_held(&self) -> u64 {
        self.next - self.frames.len() as u64
    }

    /// How many of the frames held are numbered below `number`: the front of the window.
    fn held_below(&self, number: u64) -> usize {
        number
            .saturating_sub(self.first_held())
            .min(self.frames.len() as u64) as usize
    }
}

/// What a ping written after frame `written - 1` carries, for its pong to say so: the number, as
/// 8 big-endian bytes.
pub fn ping_payload(written: u64) -> [u8; 8] {
    written.to_be_bytes()
}

/// The number a pong's payload carries, if it answers one of the relay's pings; an unsolicited
/// pong, or one with any other payload, says nothing.
pub fn pong_delivered(payload: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(payload.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::outcome::{FLOODING, SERVER_GONE, TOO_BIG, TOO_SLOW};
    use rstest::rstest;

    #[test]
    fn tokens_are_url_safe_unguessable_and_read_back() {
        let token = Token::generate();
        let text = token.encode();
        assert_eq!(text.len(), 22);
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(Token::parse(text.as_bytes()), Some(token));
        assert_ne!(Token::generate(), token);
        assert!(token.hash().matches(&token.hash()));
        assert!(!token.hash().matches(&Token::generate().hash()));
        assert_eq!(format!("{token:?}"), "Token(redacted)");
    }

    #[test]
    fn a_token_hash_survives_its_round_trip_through_the_directory() {
        let hash = Token::generate().hash();
        let text = hash.to_text();
        assert_eq!(text.len(), 43);
        assert!(TokenHash::from_text(&text).is_some_and(|back| back.matches(&hash)));
        assert!(TokenHash::from_text(&text[..42]).is_none());
        assert!(TokenHash::from_text(&format!("{text}=")).is_none());
    }

    #[rstest]
    #[case(b"")]
    #[case(b"short")]
    #[case(b"AAAAAAAAAAAAAAAAAAAAAAAA")]
    #[case(b"AAAAAAAAAAAAAAAAAAAA==")]
    #[case(b"AAAAAAAAAAAAAAAAAAAA+/")]
    fn what_is_not_a_token_is_refused(#[case] text: &[u8]) {
        assert_eq!(Token::parse(text), None);
    }

    #[rstest]
    #[case(close::ABNORMAL, false, true)]
    #[case(close::GOING_AWAY, false, true)]
    #[case(1000, false, false)]
    #[case(close::NO_STATUS, false, false)]
    #[case(4000, false, false)]
    #[case(IDLE.code, true, true)]
    #[case(SHUTTING_DOWN.code, true, true)]
    #[case(TOO_SLOW.code, true, false)]
    #[case(FLOODING.code, true, false)]
    #[case(TOO_BIG.code, true, false)]
    #[case(close::PROTOCOL_ERROR, true, false)]
    #[case(close::NOT_UTF8, true, false)]
    #[case(SERVER_GONE.code, true, false)]
    fn losses_leave_a_peer_away_and_deliberate_or_penalised_ends_do_not(
        #[case] code: u16,
        #[case] by_relay: bool,
        #[case] away: bool,
    ) {
        assert_eq!(leaves_away(code, by_relay), away);
    }

    fn window(limit: usize, frames: &[&str]) -> Replay {
        let mut replay = Replay::new(limit);
        replay.record("HELLO");
        for frame in frames {
            replay.record(frame);
        }
        replay
    }

    #[test]
    fn a_resume_gets_the_frames_after_those_it_received() {
        let frames = ["a", "b", "c"];
        assert_eq!(
            window(100, &frames).since(1),
            (vec!["b".into(), "c".into()], false)
        );
        assert_eq!(window(100, &frames).since(0).0.len(), 3);
        assert_eq!(window(100, &frames).since(3), (vec![], false));
        assert_eq!(window(100, &frames).since(99), (vec![], false));
    }

    #[test]
    fn frames_a_pong_acknowledged_leave_the_window_and_later_ones_stay() {
        let mut replay = window(100, &["a", "b"]);
        let acknowledged = pong_delivered(&ping_payload(replay.written()));
        assert_eq!(acknowledged, Some(3));
        replay.record("c");
        replay.delivered(3);
        assert_eq!(replay.bytes, 1);
        assert_eq!(replay.since(2), (vec!["c".into()], false));
    }

    #[test]
    fn a_resume_from_before_the_acknowledged_frames_is_a_gap() {
        let mut replay = window(100, &["a", "b", "c"]);
        replay.delivered(3);
        assert_eq!(replay.since(1), (vec!["c".into()], true));
    }

    #[rstest]
    #[case(0, 3)]
    #[case(1, 3)]
    #[case(2, 2)]
    #[case(4, 0)]
    #[case(u64::MAX, 0)]
    fn delivered_forgets_only_frames_below_the_number(#[case] below: u64, #[case] kept: usize) {
        let mut replay = window(100, &["a", "b", "c"]);
        replay.delivered(below);
        assert_eq!(replay.frames.len(), kept);
        assert_eq!(replay.bytes, kept);
        assert_eq!(replay.written(), 4, "numbering goes on");
    }

    #[rstest]
    #[case(b"")]
    #[case(b"1234567")]
    #[case(b"123456789")]
    fn a_pong_that_answers_no_ping_of_the_relays_says_nothing(#[case] payload: &[u8]) {
        assert_eq!(pong_delivered(payload), None);
    }

    #[test]
    fn frames_beyond_the_window_are_a_gap() {
        // 2 bytes hold the last two frames only.
        assert_eq!(
            window(2, &["a", "b", "c"]).since(0),
            (vec!["b".into(), "c".into()], true)
        );
        assert_eq!(
            window(2, &["a", "b", "c"]).since(1),
            (vec!["b".into(), "c".into()], false)
        );
        assert_eq!(window(0, &["a"]).since(0), (vec![], true));
        assert_eq!(window(1, &["toolong"]).since(0), (vec![], true));
    }
}
