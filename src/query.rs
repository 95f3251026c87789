//! Query-string parsing for signature verification (spec A.3, A.6 step 1).
//!
//! Servers verify over *decoded* values, so the verifier must decode exactly
//! once and refuse what it cannot decode unambiguously: malformed `%`
//! escapes, bytes that are not UTF-8 after decoding, and repeated keys (the
//! servers disagree on those, spec A.3 "Repeated keys").

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

/// Longest part of a caller's key repeated in an error message.
const MAX_ECHOED_KEY: usize = 64;

/// Why a raw query string or path segment could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A `%` not followed by two hex digits.
    #[error("malformed percent-escape in {0}")]
    MalformedEscape(&'static str),
    /// The decoded bytes are not UTF-8.
    #[error("{0} is not valid UTF-8 once percent-decoded")]
    InvalidUtf8(&'static str),
    /// The same key (compared case-insensitively) appears twice.
    #[error("query parameter `{0}` is repeated")]
    DuplicateKey(String),
}

/// The decoded query of a request: keys lower-cased, sorted by key, unique.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryParams {
    pairs: Vec<(String, String)>,
}

impl QueryParams {
    /// Parses a raw query (without the leading `?`).
    ///
    /// Pairs are split on `&`, each pair on its first `=`; keys and values
    /// are form-decoded (`+` is a space). Empty pairs (`a=1&&b=2`) are
    /// skipped, as every form decoder does.
    pub fn parse(raw: &str) -> Result<Self, DecodeError> {
        let mut pairs = Vec::with_capacity(8);
        for pair in raw.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = form_decode(key, "a query key")?.to_ascii_lowercase();
            let value = form_decode(value, "a query value")?.into_owned();
            pairs.push((key, value));
        }
        pairs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if let Some(w) = pairs.windows(2).find(|w| w[0].0 == w[1].0) {
            // The key is the caller's: bound what is echoed back and logged.
            let key: String = w[0].0.chars().take(MAX_ECHOED_KEY).collect();
            return Err(DecodeError::DuplicateKey(key));
        }
        Ok(Self { pairs })
    }

    /// The decoded value of `key` (a lower-case key), if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|i| self.pairs[i].1.as_str())
    }

    /// All pairs in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// Form-decodes one query key or value: `+` becomes a space, `%XX` a byte.
fn form_decode<'a>(raw: &'a str, what: &'static str) -> Result<Cow<'a, str>, DecodeError> {
    if raw.contains('+') {
        let spaced = raw.replace('+', " ");
        return percent_decode_strict(&spaced, what).map(|s| Cow::Owned(s.into_owned()));
    }
    percent_decode_strict(raw, what)
}

/// Percent-decodes `raw`, refusing malformed escapes and non-UTF-8 results.
///
/// `percent_decode_str` passes malformed escapes such as `%ZZ` through
/// unchanged; a verifier must not, since another parser could read the same
/// bytes differently.
pub fn percent_decode_strict<'a>(
    raw: &'a str,
    what: &'static str,
) -> Result<Cow<'a, str>, DecodeError> {
    let bytes = raw.as_bytes();
    let mut i = 0;
    while let Some(off) = bytes[i..].iter().position(|&b| b == b'%') {
        let at = i + off;
        let well_formed = bytes
            .get(at + 1..at + 3)
            .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
        if !well_formed {
            return Err(DecodeError::MalformedEscape(what));
        }
        i = at + 3;
    }
    percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| DecodeError::InvalidUtf8(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_sorts_and_lowercases() {
        let q = QueryParams::parse("b=2&Name=Something+else&info=user_count%2Csubscription_count")
            .expect("valid query");
        let pairs: Vec<_> = q.iter().collect();
        assert_eq!(
            pairs,
            vec![
                ("b", "2"),
                ("info", "user_count,subscription_count"),
                ("name", "Something else"),
            ]
        );
        assert_eq!(q.get("name"), Some("Something else"));
        assert_eq!(q.get("missing"), None);
    }

    #[test]
    fn literal_commas_and_encoded_commas_agree() {
        let a = QueryParams::parse("info=user_count,subscription_count").expect("valid");
        let b = QueryParams::parse("info=user_count%2Csubscription_count").expect("valid");
        assert_eq!(a, b);
    }

    #[test]
    fn key_without_value_and_empty_pairs() {
        let q = QueryParams::parse("&socket_id=&flag&&x=1").expect("valid");
        assert_eq!(q.get("socket_id"), Some(""));
        assert_eq!(q.get("flag"), Some(""));
        assert_eq!(q.get("x"), Some("1"));
        assert_eq!(q.iter().count(), 3);
    }

    #[test]
    fn value_keeps_later_equals_signs() {
        let q = QueryParams::parse("a=b=c").expect("valid");
        assert_eq!(q.get("a"), Some("b=c"));
    }

    #[test]
    fn rejects_repeated_keys_case_insensitively() {
        assert_eq!(
            QueryParams::parse("a=1&A=2"),
            Err(DecodeError::DuplicateKey("a".into()))
        );
        assert!(QueryParams::parse("name=x&name=x").is_err());
    }

    #[test]
    fn rejects_malformed_escapes() {
        for raw in ["a=%ZZ", "a=%", "a=%4", "%zz=1", "a=100%"] {
            assert!(
                matches!(
                    QueryParams::parse(raw),
                    Err(DecodeError::MalformedEscape(_))
                ),
                "{raw}"
            );
        }
    }

    #[test]
    fn rejects_non_utf8_after_decoding() {
        assert!(matches!(
            QueryParams::parse("a=%FF%FE"),
            Err(DecodeError::InvalidUtf8(_))
        ));
    }

    #[test]
    fn encoded_plus_is_a_plus() {
        let q = QueryParams::parse("a=%2B+b").expect("valid");
        assert_eq!(q.get("a"), Some("+ b"));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(raw in "\\PC*") {
            let _ = QueryParams::parse(&raw);
        }

        #[test]
        fn never_panics_on_escape_soup(raw in "[%a-f0-9A-Z=&+]{0,64}") {
            if let Ok(q) = QueryParams::parse(&raw) {
                let keys: Vec<_> = q.iter().map(|(k, _)| k).collect();
                let mut sorted = keys.clone();
                sorted.sort_unstable();
                sorted.dedup();
                proptest::prop_assert_eq!(keys, sorted);
            }
        }
    }
}
