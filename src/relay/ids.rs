//! Peer identities: short join codes for servers, long random ids for clients.

use rand::RngCore;
use std::fmt;

/// Crockford's base32 alphabet: no I, L, O or U, so a code read aloud is never ambiguous.
pub const CROCKFORD: [char; 32] = [
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', 'A', 'B', 'C', 'D', 'E', 'F', 'G', 'H', 'J',
    'K', 'M', 'N', 'P', 'Q', 'R', 'S', 'T', 'V', 'W', 'X', 'Y', 'Z',
];

/// Shortest join code `--code-length` accepts.
pub const MIN_CODE_LENGTH: usize = 4;
/// Longest join code `--code-length` accepts.
pub const MAX_CODE_LENGTH: usize = 16;
/// Client ids are longer than any join code, so the two can never be equal.
pub const CLIENT_ID_LENGTH: usize = 21;

/// Random bytes for nanoid from the thread's cryptographically secure generator (ChaCha, seeded
/// from the OS and reseeded by rand). nanoid's own default seeds a new generator from the OS for
/// every id: a system call per connection.
fn random_bytes(size: usize) -> Vec<u8> {
    let mut bytes = vec![0; size];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

/// The id of a server peer: a short code people read aloud and type.
///
/// Stored inline (no heap) because every client entry holds a copy.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct JoinCode {
    len: u8,
    bytes: [u8; MAX_CODE_LENGTH],
}

impl JoinCode {
    /// Draws a fresh random code of `length` characters (4–16) with nanoid.
    pub fn generate(length: usize) -> JoinCode {
        let length = length.clamp(MIN_CODE_LENGTH, MAX_CODE_LENGTH);
        let text = nanoid::nanoid!(length, &CROCKFORD, random_bytes);
        JoinCode::from_canonical(text.as_bytes())
    }

    /// Reads a code forgivingly: any case, `-` and spaces ignored, `O`→`0`, `I`/`L`→`1`.
    ///
    /// Returns `None` when a character is outside the alphabet or the length is out of range.
    pub fn parse(input: &str) -> Option<JoinCode> {
        let mut bytes = [0u8; MAX_CODE_LENGTH];
        let mut len = 0;
        for byte in input.bytes() {
            let canonical = match byte.to_ascii_uppercase() {
                b'-' | b' ' => continue,
                b'O' => b'0',
                b'I' | b'L' => b'1',
                b'U' => return None,
                c @ (b'0'..=b'9' | b'A'..=b'Z') => c,
                _ => return None,
            };
            *bytes.get_mut(len)? = canonical;
            len += 1;
        }
        (len >= MIN_CODE_LENGTH).then_some(JoinCode {
            len: len as u8,
            bytes,
        })
    }

    fn from_canonical(text: &[u8]) -> JoinCode {
        let mut bytes = [0u8; MAX_CODE_LENGTH];
        bytes[..text.len()].copy_from_slice(text);
        JoinCode {
            len: text.len() as u8,
            bytes,
        }
    }

    /// The canonical spelling (upper case, alphabet characters only).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)])
            .expect("a join code holds only ASCII alphabet characters")
    }
}

impl fmt::Display for JoinCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for JoinCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JoinCode({})", self.as_str())
    }
}

/// The id of a client peer: a URL-safe nanoid, stored inline.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientId([u8; CLIENT_ID_LENGTH]);

impl ClientId {
    /// Draws a fresh random id (21 URL-safe characters, about 126 bits).
    pub fn generate() -> ClientId {
        let text = nanoid::nanoid!(CLIENT_ID_LENGTH, &nanoid::alphabet::SAFE, random_bytes);
        let mut bytes = [0u8; CLIENT_ID_LENGTH];
        bytes.copy_from_slice(text.as_bytes());
        ClientId(bytes)
    }

    /// Reads an id exactly as the relay issued it; anything else is `None`.
    pub fn parse(input: &str) -> Option<ClientId> {
        let bytes: [u8; CLIENT_ID_LENGTH] = input.as_bytes().try_into().ok()?;
        bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-')
            .then_some(ClientId(bytes))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("a client id holds only URL-safe ASCII")
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientId({})", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("7KQ2MX", "7KQ2MX")]
    #[case("7kq2mx", "7KQ2MX")]
    #[case("7kq-2mx", "7KQ2MX")]
    #[case(" 7kq 2mx ", "7KQ2MX")]
    #[case("OIL0", "0110")]
    #[case("oil-0", "0110")]
    #[case("ABCDEFGHJKMNPQRS", "ABCDEFGHJKMNPQRS")]
    fn forgiving_spellings_read_back(#[case] input: &str, #[case] canonical: &str) {
        assert_eq!(
            JoinCode::parse(input).map(|c| c.to_string()),
            Some(canonical.to_owned())
        );
    }

    #[rstest]
    #[case("")]
    #[case("ABC")]
    #[case("---")]
    #[case("ABCU")]
    #[case("AB_CD")]
    #[case("ABCDÉ")]
    #[case("ABCDEFGHJKMNPQRST")]
    fn malformed_codes_are_refused(#[case] input: &str) {
        assert_eq!(JoinCode::parse(input), None);
    }

    #[test]
    fn generated_codes_use_the_alphabet_and_length() {
        for length in MIN_CODE_LENGTH..=MAX_CODE_LENGTH {
            let code = JoinCode::generate(length);
            assert_eq!(code.as_str().len(), length);
            assert!(code.as_str().chars().all(|c| CROCKFORD.contains(&c)));
            assert_eq!(JoinCode::parse(code.as_str()), Some(code));
        }
    }

    #[test]
    fn client_ids_round_trip_and_never_parse_as_codes() {
        let id = ClientId::generate();
        assert_eq!(ClientId::parse(id.as_str()), Some(id));
        assert_eq!(JoinCode::parse(id.as_str()), None, "too long to be a code");
        assert_eq!(ClientId::parse("short"), None);
        assert_eq!(ClientId::parse("!!!!!!!!!!!!!!!!!!!!!"), None);
    }
}
