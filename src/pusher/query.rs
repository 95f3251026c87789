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

/// [`BYTE_CLASS`]: the pair separator.
const AMPERSAND: u8 = 1;
/// [`BYTE_CLASS`]: the key-value separator.
const EQUALS: u8 = 2;
/// [`BYTE_CLASS`]: `%` or `+`, so the text needs form-decoding.
const ESCAPE: u8 = 4;
/// [`BYTE_CLASS`]: an upper-case ASCII letter, so a key needs lower-casing.
const UPPER: u8 = 8;

/// What [`QueryParams::parse`] looks for in each byte of a query.
static BYTE_CLASS: [u8; 256] = {
    let mut table = [0; 256];
    table[b'&' as usize] = AMPERSAND;
    table[b'=' as usize] = EQUALS;
    table[b'%' as usize] = ESCAPE;
    table[b'+' as usize] = ESCAPE;
    let mut b = b'A';
    while b <= b'Z' {
        table[b as usize] = UPPER;
        b += 1;
    }
    table
};

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
///
/// All keys and values are decoded into one buffer, with a sorted index of
/// where each pair lies in it: two allocations per query rather than two
/// per parameter, since every legacy call is parsed on the request path.
#[derive(Clone, Default)]
pub struct QueryParams {
    /// Every decoded key and value, back to back, in the order they came.
    buf: String,
    /// Where each pair lies in `buf`, sorted by key.
    pairs: Vec<Span>,
}

/// A pair in [`QueryParams::buf`]: the key is `start..split`, the value
/// `split..end`.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: usize,
    split: usize,
    end: usize,
}

impl QueryParams {
    /// Parses a raw query (without the leading `?`).
    ///
    /// Pairs are split on `&`, each pair on its first `=`; keys and values
    /// are form-decoded (`+` is a space). Empty pairs (`a=1&&b=2`) are
    /// skipped, as every form decoder does.
    pub fn parse(raw: &str) -> Result<Self, DecodeError> {
        let mut buf = String::with_capacity(raw.len());
        let mut pairs = Vec::with_capacity(8);
        let mut scratch = Vec::new();
        let bytes = raw.as_bytes();
        let mut at = 0;
        // One pass over the bytes finds each pair's `&`, its first `=`, and
        // whether its key or value needs decoding or its key lower-casing;
        // most bytes are of no class and cost one table lookup. The
        // delimiters are ASCII, so every cut is on a character boundary.
        while at < bytes.len() {
            let begin = at;
            let mut eq = None;
            let (mut key_class, mut value_class) = (0, 0);
            while let Some(&b) = bytes.get(at) {
                let class = BYTE_CLASS[usize::from(b)];
                if class != 0 {
                    match (class, eq) {
                        (AMPERSAND, _) => break,
                        (EQUALS, None) => eq = Some(at),
                        (_, None) => key_class |= class,
                        (_, Some(_)) => value_class |= class,
                    }
                }
                at += 1;
            }
            let key_escaped = key_class & ESCAPE != 0;
            let key_upper = key_class & UPPER != 0;
            let value_escaped = value_class & ESCAPE != 0;
            let end = at;
            at += 1;
            if end == begin {
                continue;
            }
            let (key, value) = match eq {
                Some(eq) => (&raw[begin..eq], &raw[eq + 1..end]),
                None => (&raw[begin..end], ""),
            };
            let start = buf.len();
            if key_escaped {
                form_decode_into(&mut buf, &mut scratch, key, "a query key")?;
            } else {
                buf.push_str(key);
            }
            if key_escaped || key_upper {
                buf[start..].make_ascii_lowercase();
            }
            let split = buf.len();
            if value_escaped {
                form_decode_into(&mut buf, &mut scratch, value, "a query value")?;
            } else {
                buf.push_str(value);
            }
            pairs.push(Span {
                start,
                split,
                end: buf.len(),
            });
        }
        let key = |s: &Span| &buf[s.start..s.split];
        pairs.sort_unstable_by(|a, b| key(a).cmp(key(b)));
        if let Some(w) = pairs.windows(2).find(|w| key(&w[0]) == key(&w[1])) {
            // The key is the caller's: bound what is echoed back and logged.
            let key: String = key(&w[0]).chars().take(MAX_ECHOED_KEY).collect();
            return Err(DecodeError::DuplicateKey(key));
        }
        Ok(Self { buf, pairs })
    }

    /// The decoded value of `key` (a lower-case key), if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .binary_search_by(|s| self.buf[s.start..s.split].cmp(key))
            .ok()
            .map(|i| self.value(self.pairs[i]))
    }

    /// All pairs in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs
            .iter()
            .map(|&s| (&self.buf[s.start..s.split], self.value(s)))
    }

    fn value(&self, s: Span) -> &str {
        &self.buf[s.split..s.end]
    }
}

impl PartialEq for QueryParams {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for QueryParams {}

impl std::fmt::Debug for QueryParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Form-decodes one query key or value onto `out`: `+` becomes a space,
/// `%XX` a byte. Text with neither is copied as it is; `scratch` holds the
/// bytes of text that has escapes until they are checked to be UTF-8.
fn form_decode_into(
    out: &mut String,
    scratch: &mut Vec<u8>,
    raw: &str,
    what: &'static str,
) -> Result<(), DecodeError> {
    if !raw.bytes().any(|b| b == b'%' || b == b'+') {
        out.push_str(raw);
        return Ok(());
    }
    check_escapes(raw, what)?;
    scratch.clear();
    // Escapes are `%` and two hex digits, so none spans a `+`: each piece
    // decodes alone, and an escaped `%2B` stays a plus.
    for (i, piece) in raw.split('+').enumerate() {
        if i > 0 {
            scratch.push(b' ');
        }
        scratch.extend(percent_decode_str(piece));
    }
    let decoded = std::str::from_utf8(scratch).map_err(|_| DecodeError::InvalidUtf8(what))?;
    out.push_str(decoded);
    Ok(())
}

/// Refuses a `%` not followed by two hex digits.
///
/// `percent_decode_str` passes malformed escapes such as `%ZZ` through
/// unchanged; a verifier must not, since another parser could read the same
/// bytes differently.
fn check_escapes(raw: &str, what: &'static str) -> Result<(), DecodeError> {
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
    Ok(())
}

/// Percent-decodes `raw`, refusing malformed escapes and non-UTF-8 results.
pub fn percent_decode_strict<'a>(
    raw: &'a str,
    what: &'static str,
) -> Result<Cow<'a, str>, DecodeError> {
    check_escapes(raw, what)?;
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

    #[test]
    fn equal_whatever_the_order() {
        let a = QueryParams::parse("b=2&a=1").expect("valid");
        let b = QueryParams::parse("a=1&b=2").expect("valid");
        assert_eq!(a, b);
        assert_ne!(a, QueryParams::parse("a=1&b=3").expect("valid"));
        assert_eq!(format!("{a:?}"), r#"{"a": "1", "b": "2"}"#);
    }

    #[test]
    fn escaped_keys_are_lower_cased_after_decoding() {
        let q = QueryParams::parse("%41uth_Key=x%20y&n=%E2%9C%93").expect("valid");
        assert_eq!(q.get("auth_key"), Some("x y"));
        assert_eq!(q.get("n"), Some("\u{2713}"));
    }

    proptest::proptest! {
        /// Whatever the parser accepts, it decodes as the WHATWG form
        /// decoder (`form_urlencoded`, from rust-url) does, keys lower-cased.
        #[test]
        fn decodes_as_form_urlencoded(raw in "([a-cA-C%+=&.~ ]|%[0-9a-fA-F]{2}|%E2%9C%93){0,24}") {
            if let Ok(q) = QueryParams::parse(&raw) {
                let mut expected: Vec<(String, String)> = form_urlencoded::parse(raw.as_bytes())
                    .map(|(k, v)| (k.to_ascii_lowercase(), v.into_owned()))
                    .collect();
                expected.sort();
                let got: Vec<(String, String)> =
                    q.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
                proptest::prop_assert_eq!(got, expected);
            }
        }

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
