//! The cluster directory's rules, pure: how instances and join codes are named in Redis, who owns
//! a code, and where a client that landed on the wrong instance is sent. The Redis round trips
//! that apply them live in `edge::cluster`.
//!
//! A room lives on one *owner* instance, the one its server registered on. Redis maps each join
//! code to its owner (`instance boot`), and holds one lease per instance whose value is the boot
//! id of the process holding it: a code is live only while its owner's lease carries the same
//! boot id, so a restarted process never revives its predecessor's codes, and no key is renewed
//! per code.
//!
//! With resumable sessions each room also has a *record*: the hashes of its server's and
//! members' resume tokens, and its rules. When its owner dies or drains, the record outlives the
//! code for the resume window, so the server can take the room over on another instance, and
//! its members resume there.

use crate::relay::hub::RoomRules;
use crate::relay::ids::{ClientId, JoinCode};
use crate::relay::resume::TokenHash;
use http::HeaderMap;
use std::fmt;
use std::time::Duration;

/// Longest `--instance-id`.
pub const MAX_INSTANCE_ID: usize = 64;

/// Shortest `--cluster-lease-ttl`: renewals go out every third of it, and a slow Redis round trip
/// must still fit in one.
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(1);

/// The request header Fly's proxy adds to a replayed request.
pub const REPLAY_SOURCE: &str = "fly-replay-src";
/// The request header Fly's proxy adds when a replay failed and came back (`fallback=force_self`).
pub const REPLAY_FAILED: &str = "fly-replay-failed";
/// The response header that asks Fly's proxy to replay the request elsewhere.
pub const REPLAY: &str = "fly-replay";

/// How long Fly's proxy tries to reach the owner before sending the request back here.
pub const REPLAY_TIMEOUT: &str = "2s";

/// How a client that reached an instance other than its room's owner gets to the owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// Answer with `fly-replay: instance=OWNER`; Fly's proxy replays the request there.
    FlyReplay,
    /// Accept the client here and forward its frames to the owner over Redis pub/sub.
    PubSub,
}

/// One process's identity in the directory: the instance id it serves as, and the random boot id
/// of this run of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner {
    /// `--instance-id`: on Fly, the machine id, which `fly-replay: instance=` names.
    pub instance: String,
    /// Fresh per process: fences a restarted instance off from its predecessor's codes.
    pub boot: String,
}

impl Owner {
    /// The value stored under each code this process owns, and its member in the lease index.
    pub fn value(&self) -> String {
        format!("{} {}", self.instance, self.boot)
    }

    /// Reads [`Owner::value`] back.
    pub fn parse(value: &str) -> Option<Owner> {
        let (instance, boot) = value.split_once(' ')?;
        (instance_id_problem(instance).is_none() && !boot.is_empty()).then(|| Owner {
            instance: instance.to_owned(),
            boot: boot.to_owned(),
        })
    }
}

/// Why `id` cannot be an instance id, if it cannot: ids name keys and Fly machines, so they are
/// short, and the space separates an owner's two parts.
pub fn instance_id_problem(id: &str) -> Option<&'static str> {
    if id.is_empty() || id.len() > MAX_INSTANCE_ID {
        return Some("must be 1 to 64 characters");
    }
    (!id.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    .then_some("may hold only letters, digits, '-' and '_'")
}

/// The Redis key names, all under `--cluster-prefix`.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (`intercessor` by default).
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    /// The prefix, for scripts that build the names of other instances' keys themselves.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `PREFIX:code:CODE` → the owner's value.
    pub fn code(&self, code: &JoinCode) -> String {
        format!("{}:code:{}", self.prefix, code.as_str())
    }

    /// `PREFIX:resume:CODE` → the room's record: field [`SERVER_FIELD`] the server's token hash,
    /// [`RULES_FIELD`] its rules, and one field per member, its id → its token hash.
    pub fn record(&self, code: &JoinCode) -> String {
        format!("{}:resume:{}", self.prefix, code.as_str())
    }

    /// `PREFIX:instance:ID` → the boot id holding the instance's lease, expiring with it.
    pub fn instance(&self, instance: &str) -> String {
        format!("{}:instance:{instance}", self.prefix)
    }

    /// `PREFIX:rooms:ID:BOOT` → the set of codes that run of the instance claimed, so whoever
    /// finds its lease lapsed can remove them.
    pub fn rooms(&self, owner: &Owner) -> String {
        format!("{}:rooms:{}:{}", self.prefix, owner.instance, owner.boot)
    }

    /// `PREFIX:link:ID:BOOT`: the pub/sub channel one process hears its links on. Named by the
    /// boot id too, so a message for a predecessor reaches no one, and its publisher learns so.
    pub fn link(&self, owner: &Owner) -> String {
        format!("{}:link:{}:{}", self.prefix, owner.instance, owner.boot)
    }

    /// `PREFIX:links`: the pub/sub channel every process hears, for resets.
    pub fn links(&self) -> String {
        format!("{}:links", self.prefix)
    }

    /// `PREFIX:instances` → every owner, scored by when its lease lapses (Redis time, in ms).
    pub fn instances(&self) -> String {
        format!("{}:instances", self.prefix)
    }
}

/// The record's field holding the server's token hash; client ids are longer, so no member's
/// field can be it.
pub const SERVER_FIELD: &str = "server";
/// The record's field holding the room's rules, as [`rules_value`] writes them.
pub const RULES_FIELD: &str = "rules";

/// A room's rules as its record holds them: `1` locked, `2` knocking, summed.
pub fn rules_value(rules: RoomRules) -> &'static str {
    match (rules.locked, rules.knock) {
        (false, false) => "0",
        (true, false) => "1",
        (false, true) => "2",
        (true, true) => "3",
    }
}

/// What a room's record, read back whole (`HGETALL`, as field, value, field, value…), says of
/// its rules and of at most `max_members` members; unreadable fields are skipped.
pub fn read_record(
    fields: &[String],
    max_members: usize,
) -> (RoomRules, Vec<(ClientId, TokenHash)>) {
    let mut rules = RoomRules::default();
    let mut members = Vec::new();
    for pair in fields.chunks_exact(2) {
        let (field, value) = (pair[0].as_str(), pair[1].as_str());
        if field == RULES_FIELD {
            let bits = value.parse::<u8>().unwrap_or(0);
            rules = RoomRules {
                locked: bits & 1 != 0,
                knock: bits & 2 != 0,
            };
        } else if let (Some(id), Some(hash), true) = (
            ClientId::parse(field),
            TokenHash::from_text(value),
            members.len() < max_members,
        ) {
            members.push((id, hash));
        }
    }
    (rules, members)
}

/// Where the directory says a room lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// On this instance (or nowhere, if its server has just left).
    Here,
    /// On this other live process.
    Elsewhere(Owner),
    /// No live instance owns the code, but its room's record outlives its dead or drained
    /// owner: its server, whose token has this hash, may take it over, and its members then
    /// resume.
    Orphaned(TokenHash),
    /// Nowhere: no live instance owns the code.
    Nowhere,
}

impl Placement {
    /// The answer of the lookup script (the live owner's [`Owner::value`], if any) seen from
    /// the instance `me`.
    pub fn of(owner: Option<&str>, me: &str) -> Placement {
        match owner.and_then(Owner::parse) {
            None => Placement::Nowhere,
            Some(owner) if owner.instance == me => Placement::Here,
            Some(owner) => Placement::Elsewhere(owner),
        }
    }
}

/// What to do with a client whose room lives on another instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detour {
    /// Answer `307` with this `fly-replay` header value, without upgrading.
    Replay(String),
    /// The request was replayed once already and still missed its room (it moved, or the owner
    /// could not be reached): refuse it with "try again later" rather than replay in a loop.
    GiveUp,
}

/// The detour for a request reaching a room owned by `owner`, in fly-replay routing.
pub fn detour(headers: &HeaderMap, owner: &str) -> Detour {
    if headers.contains_key(REPLAY_SOURCE) || headers.contains_key(REPLAY_FAILED) {
        return Detour::GiveUp;
    }
    Detour::Replay(format!(
        "instance={owner};timeout={REPLAY_TIMEOUT};fallback=force_self"
    ))
}

/// Whether a lease last renewed `since_renewal` ago may have lapsed, so that other instances
/// may already treat this one's codes as dead.
pub fn lease_lapsed(since_renewal: Duration, ttl: Duration) -> bool {
    since_renewal >= ttl
}

/// How often the lease is renewed: three tries fit in one TTL.
pub fn renewal_interval(ttl: Duration) -> Duration {
    ttl / 3
}

/// What the lease script found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// Renewed: it was ours.
    Renewed,
    /// Taken afresh: there was none (the first start, a Redis that restarted empty, or one that
    /// lapsed). Every live code must be claimed again.
    Acquired,
    /// Another live process holds this instance id.
    HeldByAnother,
}

impl Lease {
    /// The lease script's reply: 1, 2 or 0.
    pub fn from_reply(reply: i64) -> Lease {
        match reply {
            1 => Lease::Renewed,
            2 => Lease::Acquired,
            _ => Lease::HeldByAnother,
        }
    }
}

impl fmt::Display for Routing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Routing::FlyReplay => "fly-replay",
            Routing::PubSub => "pubsub",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn owner() -> Owner {
        Owner {
            instance: "e2865013c10089".into(),
            boot: "V1StGXR8_Z5jdHi6B-myT".into(),
        }
    }

    #[test]
    fn an_owner_survives_its_round_trip_through_redis() {
        assert_eq!(Owner::parse(&owner().value()), Some(owner()));
        assert_eq!(Owner::parse("no-boot-id"), None);
        assert_eq!(Owner::parse("bad:id boot"), None);
    }

    #[rstest]
    #[case("e2865013c10089", None)]
    #[case("relay-a_1", None)]
    #[case("", Some("must be 1 to 64 characters"))]
    #[case(&"x".repeat(65), Some("must be 1 to 64 characters"))]
    #[case("a b", Some("may hold only letters, digits, '-' and '_'"))]
    #[case("a:b", Some("may hold only letters, digits, '-' and '_'"))]
    fn instance_ids_are_short_and_plain(#[case] id: &str, #[case] problem: Option<&str>) {
        assert_eq!(instance_id_problem(id), problem);
    }

    #[test]
    fn keys_live_under_the_prefix() {
        let keys = Keys::new("app");
        let code = JoinCode::parse("7kq-2mx").expect("a code");
        assert_eq!(keys.code(&code), "app:code:7KQ2MX");
        assert_eq!(keys.instance("a1"), "app:instance:a1");
        assert_eq!(
            keys.rooms(&owner()),
            "app:rooms:e2865013c10089:V1StGXR8_Z5jdHi6B-myT"
        );
        assert_eq!(keys.instances(), "app:instances");
        assert_eq!(keys.record(&code), "app:resume:7KQ2MX");
        assert_eq!(
            keys.link(&owner()),
            "app:link:e2865013c10089:V1StGXR8_Z5jdHi6B-myT"
        );
        assert_eq!(keys.links(), "app:links");
    }

    #[rstest]
    #[case(None, Placement::Nowhere)]
    #[case(Some("no-boot"), Placement::Nowhere)]
    #[case(Some("me b1"), Placement::Here)]
    #[case(Some("other b2"), Placement::Elsewhere(Owner { instance: "other".into(), boot: "b2".into() }))]
    fn a_lookup_places_the_room(#[case] owner: Option<&str>, #[case] placement: Placement) {
        assert_eq!(Placement::of(owner, "me"), placement);
    }

    #[rstest]
    #[case(&[], Detour::Replay("instance=b1;timeout=2s;fallback=force_self".into()))]
    #[case(&[("fly-replay-src", "instance=a1;region=ams;t=1")], Detour::GiveUp)]
    #[case(&[("fly-replay-failed", "timeout")], Detour::GiveUp)]
    fn a_request_is_replayed_once_at_most(
        #[case] headers: &[(&'static str, &'static str)],
        #[case] expected: Detour,
    ) {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(
                http::HeaderName::from_static(name),
                http::HeaderValue::from_static(value),
            );
        }
        assert_eq!(detour(&map, "b1"), expected);
    }

    #[test]
    fn a_record_gives_back_its_rules_and_members_and_skips_what_it_cannot_read() {
        let (ada, bob) = (ClientId::generate(), ClientId::generate());
        let hash = crate::relay::resume::Token::generate().hash();
        let record: Vec<String> = [
            (SERVER_FIELD, hash.to_text()),
            (
                RULES_FIELD,
                rules_value(RoomRules {
                    locked: true,
                    knock: false,
                })
                .into(),
            ),
            (ada.as_str(), hash.to_text()),
            ("not-a-client-id", hash.to_text()),
            (bob.as_str(), "not base64".into()),
        ]
        .into_iter()
        .flat_map(|(field, value)| [field.to_owned(), value])
        .collect();

        let (rules, members) = read_record(&record, 8);

        assert_eq!(
            rules,
            RoomRules {
                locked: true,
                knock: false
            }
        );
        assert_eq!(members.len(), 1);
        assert_eq!(members[0].0, ada);
        assert!(members[0].1.matches(&hash));
        assert!(read_record(&record, 0).1.is_empty(), "bounded");
    }

    #[rstest]
    #[case(false, false)]
    #[case(true, false)]
    #[case(false, true)]
    #[case(true, true)]
    fn rules_survive_their_round_trip_through_a_record(#[case] locked: bool, #[case] knock: bool) {
        let rules = RoomRules { locked, knock };
        let record = [RULES_FIELD.to_owned(), rules_value(rules).to_owned()];
        assert_eq!(read_record(&record, 0).0, rules);
    }

    #[test]
    fn the_lease_is_renewed_three_times_per_ttl_and_lapses_at_it() {
        let ttl = Duration::from_secs(15);
        assert_eq!(renewal_interval(ttl), Duration::from_secs(5));
        assert!(!lease_lapsed(Duration::from_secs(14), ttl));
        assert!(lease_lapsed(ttl, ttl));
    }

    #[rstest]
    #[case(1, Lease::Renewed)]
    #[case(2, Lease::Acquired)]
    #[case(0, Lease::HeldByAnother)]
    fn the_lease_scripts_replies_are_read(#[case] reply: i64, #[case] lease: Lease) {
        assert_eq!(Lease::from_reply(reply), lease);
    }
}
