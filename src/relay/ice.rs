//! The ICE servers handed to peers in HELLO, with short-lived TURN credentials.
//!
//! TURN credentials follow the TURN REST API convention that coturn implements as
//! `use-auth-secret`: the username is `<unix expiry>:<peer id>` and the password is
//! base64(HMAC-SHA1(secret, username)), so the TURN server checks them without talking to the relay.

use ring::hmac;
use serde::Serialize;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The `--ice-server` URLs and what is needed to sign TURN credentials.
#[derive(Debug, Clone, Default)]
pub struct IceConfig {
    /// `stun:`, `turn:` and `turns:` URLs, in the order given.
    pub urls: Vec<String>,
    /// Shared secret with the TURN server; required when a TURN URL is given.
    pub turn_secret: Option<String>,
    /// How long TURN credentials stay valid.
    pub turn_ttl: Duration,
}

/// One entry of `RTCConfiguration.iceServers`.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct IceServer {
    /// The server's URL.
    pub urls: String,
    /// TURN only: `<unix expiry>:<peer id>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN only: base64(HMAC-SHA1(secret, username)).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// Whether a URL needs credentials.
pub fn is_turn(url: &str) -> bool {
    url.starts_with("turn:") || url.starts_with("turns:")
}

/// Whether a URL is one `--ice-server` accepts.
pub fn is_ice_url(url: &str) -> bool {
    is_turn(url) || url.starts_with("stun:")
}

/// The TURN REST API password for `username`.
pub fn turn_credential(secret: &str, username: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    data_encoding::BASE64.encode(hmac::sign(&key, username.as_bytes()).as_ref())
}

impl IceConfig {
    /// The `iceServers` for peer `id`, with TURN credentials expiring `turn_ttl` after `now`.
    pub fn for_peer(&self, id: &str, now: SystemTime) -> Vec<IceServer> {
        let turn_login = self.turn_secret.as_deref().map(|secret| {
            let expiry = now.duration_since(UNIX_EPOCH).unwrap_or_default() + self.turn_ttl;
            let username = format!("{}:{id}", expiry.as_secs());
            let credential = turn_credential(secret, &username);
            (username, credential)
        });
        self.urls
            .iter()
            .map(|url| {
                let login = turn_login.as_ref().filter(|_| is_turn(url));
                IceServer {
                    urls: url.clone(),
                    username: login.map(|(username, _)| username.clone()),
                    credential: login.map(|(_, credential)| credential.clone()),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Computed independently:
    /// `echo -n "1700003600:Xq3V9rK_2mPz8LwN4bT1c" | openssl dgst -sha1 -hmac north-wind -binary | base64`
    const OPENSSL_VECTOR: &str = "T3vLyLBN0wW5KlvAiOFqEnvLsBQ=";

    #[test]
    fn credential_matches_openssl() {
        assert_eq!(
            turn_credential("north-wind", "1700003600:Xq3V9rK_2mPz8LwN4bT1c"),
            OPENSSL_VECTOR
        );
    }

    #[test]
    fn turn_entries_get_expiring_credentials_and_stun_entries_none() {
        let config = IceConfig {
            urls: vec![
                "stun:stun.example:3478".into(),
                "turn:turn.example:3478?transport=udp".into(),
                "turns:turn.example:5349".into(),
            ],
            turn_secret: Some("north-wind".into()),
            turn_ttl: Duration::from_secs(3600),
        };
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let servers = config.for_peer("Xq3V9rK_2mPz8LwN4bT1c", now);
        assert_eq!(
            servers[0],
            IceServer {
                urls: "stun:stun.example:3478".into(),
                username: None,
                credential: None
            }
        );
        for turn in &servers[1..] {
            assert_eq!(
                turn.username.as_deref(),
                Some("1700003600:Xq3V9rK_2mPz8LwN4bT1c")
            );
            assert_eq!(turn.credential.as_deref(), Some(OPENSSL_VECTOR));
        }
        assert_eq!(
            serde_json::to_value(&servers[0]).expect("serialises"),
            serde_json::json!({"urls": "stun:stun.example:3478"})
        );
    }

    #[test]
    fn url_schemes() {
        assert!(is_ice_url("stun:a") && is_ice_url("turn:a") && is_ice_url("turns:a"));
        assert!(!is_ice_url("http://a") && !is_ice_url("stuns:a") && !is_ice_url(""));
    }
}
