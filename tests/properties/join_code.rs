//! Join codes: `JoinCode::parse` on any text and on every way a person might type a code, and
//! `JoinCode::generate`.

use crate::cases;
use crate::common::oracles::{check_canonical, expected_code, forgiving};
use intercessor::relay::ids::{CROCKFORD, JoinCode, MAX_CODE_LENGTH, MIN_CODE_LENGTH};
use proptest::prelude::*;

/// A canonical code: 4 to 16 characters of the alphabet.
fn canonical_code() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(CROCKFORD.to_vec()),
        MIN_CODE_LENGTH..=MAX_CODE_LENGTH,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

/// Runs of the separators a reader may type.
fn separators() -> impl Strategy<Value = String> {
    "[ -]{0,2}"
}

/// A canonical code and one way a person might type it.
fn respelled_code() -> impl Strategy<Value = (String, String)> {
    canonical_code()
        .prop_flat_map(|code| {
            let choices =
                prop::collection::vec((0usize..5, any::<bool>(), separators()), code.len());
            (Just(code), separators(), choices)
        })
        .prop_map(|(code, lead, choices)| {
            let mut typed = lead;
            for (c, (variant, lower, separator)) in code.chars().zip(choices) {
                match c {
                    '0' => typed.push_str(["0", "O", "o"][variant % 3]),
                    '1' => typed.push_str(["1", "I", "i", "L", "l"][variant]),
                    c if lower => typed.push(c.to_ascii_lowercase()),
                    c => typed.push(c),
                }
                typed.push_str(&separator);
            }
            (code, typed)
        })
}

proptest! {
    #![proptest_config(cases(512))]

    #[test]
    fn join_code_parse_matches_the_rules(input in prop_oneof![
        any::<String>(),
        "[0-9A-Za-z \\-]{0,20}",
        "[0-9A-Za-z \\-_.éÜ\t]{2,20}",
    ]) {
        let parsed = JoinCode::parse(&input);
        prop_assert_eq!(parsed.map(|c| c.to_string()), expected_code(&input), "{:?}", input);
    }

    #[test]
    fn parsed_codes_are_canonical_and_idempotent(input in prop_oneof![
        any::<String>(),
        "[0-9A-Za-z \\-]{0,20}",
        respelled_code().prop_map(|(_, typed)| typed),
    ]) {
        if let Some(code) = JoinCode::parse(&input) {
            check_canonical(code);
        }
    }

    #[test]
    fn every_forgiving_spelling_reads_back((code, typed) in respelled_code()) {
        let parsed = JoinCode::parse(&typed);
        prop_assert_eq!(parsed.map(|c| c.to_string()), Some(code), "{:?}", typed);
    }

    #[test]
    fn a_character_outside_the_forgiving_set_is_refused(
        (_, typed) in respelled_code(),
        stranger in any::<char>().prop_filter("outside the forgiving set", |c| !forgiving(*c)),
        at in any::<prop::sample::Index>(),
    ) {
        let mut chars: Vec<char> = typed.chars().collect();
        chars.insert(at.index(chars.len() + 1), stranger);
        let input: String = chars.into_iter().collect();
        prop_assert_eq!(JoinCode::parse(&input), None, "{:?}", input);
    }

    #[test]
    fn generated_codes_are_canonical(length in 0usize..40) {
        let code = JoinCode::generate(length);
        let expected = length.clamp(MIN_CODE_LENGTH, MAX_CODE_LENGTH);
        prop_assert_eq!(code.as_str().len(), expected);
        check_canonical(code);
    }
}
