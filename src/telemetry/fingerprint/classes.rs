//! The classes a request's traits are reduced to: a few shapes per
//! header value, the query's order, its encoding, the body's spacing.

use super::{MAX_QUERY_KEYS, is_unreserved};

/// The class of the `Host` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HostClass {
    Absent,
    /// `pusherapp.com`, `pusher.com` or a subdomain, any port.
    Pusher,
    Other,
}

impl HostClass {
    pub(super) fn of(value: Option<&str>) -> Self {
        let Some(value) = value else {
            return Self::Absent;
        };
        let host = if value.starts_with('[') {
            value // an IPv6 literal is no pusher host
        } else {
            value.split(':').next().unwrap_or(value)
        };
        if crate::pusher::channel::is_pusher_host(host) {
            Self::Pusher
        } else {
            Self::Other
        }
    }

    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Absent => "-",
            Self::Pusher => "pusher",
            Self::Other => "other",
        }
    }
}

/// The class of the `Connection` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Connection {
    Absent,
    Close,
    KeepAlive,
    Other,
}

impl Connection {
    pub(super) fn of(value: Option<&str>) -> Self {
        match value {
            None => Self::Absent,
            Some(v) if v.eq_ignore_ascii_case("close") => Self::Close,
            Some(v) if v.eq_ignore_ascii_case("keep-alive") => Self::KeepAlive,
            Some(_) => Self::Other,
        }
    }

    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Absent => "-",
            Self::Close => "close",
            Self::KeepAlive => "keep-alive",
            Self::Other => "other",
        }
    }
}

/// The class of the `Accept-Encoding` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AcceptEncoding {
    Absent,
    Identity,
    Other,
}

impl AcceptEncoding {
    pub(super) fn of(value: Option<&str>) -> Self {
        match value {
            None => Self::Absent,
            Some(v) if v.eq_ignore_ascii_case("identity") => Self::Identity,
            Some(_) => Self::Other,
        }
    }

    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Absent => "-",
            Self::Identity => "identity",
            Self::Other => "other",
        }
    }
}

/// The class of the `Content-Type` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ContentType {
    Absent,
    /// Exactly `application/json`.
    Json,
    /// `application/json` with parameters (`; charset=utf-8`).
    JsonParams,
    /// `application/x-www-form-urlencoded`, with or without parameters.
    Form,
    Other,
}

impl ContentType {
    pub(super) fn of(value: Option<&str>) -> Self {
        let starts = |v: &str, prefix: &str| {
            v.as_bytes()
                .get(..prefix.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(prefix.as_bytes()))
        };
        match value {
            None => Self::Absent,
            Some(v) if v.eq_ignore_ascii_case("application/json") => Self::Json,
            Some(v) if starts(v, "application/json;") => Self::JsonParams,
            Some(v) if starts(v, "application/x-www-form-urlencoded") => Self::Form,
            Some(_) => Self::Other,
        }
    }

    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Absent => "-",
            Self::Json => "json",
            Self::JsonParams => "json+params",
            Self::Form => "form",
            Self::Other => "other",
        }
    }
}

/// The class of the `Accept` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Accept {
    Absent,
    /// `*/*`
    Any,
    Other,
}

impl Accept {
    pub(super) fn of(value: Option<&str>) -> Self {
        match value {
            None => Self::Absent,
            Some("*/*") => Self::Any,
            Some(_) => Self::Other,
        }
    }

    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Absent => "-",
            Self::Any => "any",
            Self::Other => "other",
        }
    }
}

/// The order of the query keys, as far as it names a known builder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Order {
    /// The order Pusher's docs sign in, the signature appended:
    /// `auth_key, auth_timestamp, auth_version, body_md5, name,
    /// [socket_id,] auth_signature`.
    Pusher,
    /// Every key in byte order, the signature among them (PHP's `ksort`).
    Sorted,
    /// Ruby's insertion order: `name, [socket_id,] body_md5, auth_version,
    /// auth_key, auth_timestamp, auth_signature`, or the last four alone.
    Ruby,
    Other,
}

/// [`VALUE_CLASS`]: a `%`, an escape.
const VALUE_ESCAPE: u8 = 1;
/// [`VALUE_CLASS`]: a reserved character, left as it is (`=` in a value is
/// not counted: some senders leave it, and it tells nothing).
const VALUE_RESERVED: u8 = 2;

/// The class of each byte of a query value, for [`Encoding`].
static VALUE_CLASS: [u8; 256] = {
    let mut table = [0; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = if b == b'%' as usize {
            VALUE_ESCAPE
        } else if b == b'=' as usize || is_unreserved(b as u8) {
            0
        } else {
            VALUE_RESERVED
        };
        b += 1;
    }
    table
};

/// What the fingerprint reads of the raw query, in one pass over it: its
/// keys as sent, in order (the first [`MAX_QUERY_KEYS`] other than
/// `socket_id`, with the first `socket_id` where it was sent, and whether
/// there were more others), and how its values are encoded. Empty pairs are
/// skipped, as [`crate::pusher::query::QueryParams::parse`] skips them.
/// `socket_id`, sent or not by call, takes no place under the cap, so a
/// sender's keys read the same either way.
#[derive(Debug, Clone, Copy)]
pub(super) struct RawQuery<'a> {
    keys: [&'a str; MAX_QUERY_KEYS + 1],
    len: usize,
    more: bool,
    values: Encoding,
}

impl<'a> RawQuery<'a> {
    pub(super) fn of(raw: &'a str) -> Self {
        let mut keys = [""; MAX_QUERY_KEYS + 1];
        let mut len = 0;
        let mut others = 0;
        let mut socket_id = false;
        let mut more = false;
        let mut value_class = 0;
        // `&` and `=` are ASCII, so every cut is on a character boundary.
        for pair in raw.split('&') {
            if pair.is_empty() {
                continue;
            }
            let key = match pair.bytes().position(|b| b == b'=') {
                Some(eq) => {
                    for &b in &pair.as_bytes()[eq + 1..] {
                        value_class |= VALUE_CLASS[usize::from(b)];
                    }
                    &pair[..eq]
                }
                None => pair,
            };
            if key == "socket_id" {
                // A second one is read past (a query with a key twice is
                // refused before it is fingerprinted).
                if std::mem::replace(&mut socket_id, true) {
                    continue;
                }
            } else {
                others += 1;
                if others > MAX_QUERY_KEYS {
                    more = true;
                    continue;
                }
            }
            // At most MAX_QUERY_KEYS others and one socket_id: in bounds.
            if let Some(slot) = keys.get_mut(len) {
                *slot = key;
                len += 1;
            }
        }
        Self {
            keys,
            len,
            more,
            values: Encoding::from_flags((
                value_class & VALUE_ESCAPE != 0,
                value_class & VALUE_RESERVED != 0,
            )),
        }
    }

    /// The keys kept ([`RawQuery`]), in the order sent.
    pub(super) fn keys(&self) -> &[&'a str] {
        &self.keys[..self.len]
    }

    /// Whether there were more keys than [`RawQuery::keys`] holds.
    pub(super) fn more(&self) -> bool {
        self.more
    }

    /// How the values are encoded (a pair without `=` has none).
    pub(super) fn values(&self) -> Encoding {
        self.values
    }
}

impl Order {
    #[cfg(test)]
    pub(super) fn of(raw_query: &str) -> Self {
        Self::of_keys(&RawQuery::of(raw_query))
    }

    pub(super) fn of_keys(query: &RawQuery<'_>) -> Self {
        const PUSHER: [&str; 6] = [
            "auth_key",
            "auth_timestamp",
            "auth_version",
            "body_md5",
            "name",
            "auth_signature",
        ];
        const PUSHER_SID: [&str; 7] = [
            "auth_key",
            "auth_timestamp",
            "auth_version",
            "body_md5",
            "name",
            "socket_id",
            "auth_signature",
        ];
        const RUBY: [&str; 6] = [
            "name",
            "body_md5",
            "auth_version",
            "auth_key",
            "auth_timestamp",
            "auth_signature",
        ];
        const RUBY_SID: [&str; 7] = [
            "name",
            "socket_id",
            "body_md5",
            "auth_version",
            "auth_key",
            "auth_timestamp",
            "auth_signature",
        ];
        const RUBY_STATS: [&str; 4] = [
            "auth_version",
            "auth_key",
            "auth_timestamp",
            "auth_signature",
        ];
        const AUTH: [&str; 4] = [
            "auth_key",
            "auth_signature",
            "auth_timestamp",
            "auth_version",
        ];

        if query.more() {
            return Self::Other;
        }
        let keys = query.keys();
        if keys == PUSHER || keys == PUSHER_SID {
            Self::Pusher
        } else if keys == RUBY || keys == RUBY_SID || keys == RUBY_STATS {
            Self::Ruby
        } else if keys.windows(2).all(|w| w[0] < w[1]) && AUTH.iter().all(|a| keys.contains(a)) {
            Self::Sorted
        } else {
            Self::Other
        }
    }
}

/// Whether `socket_id` is sent, and empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SocketId {
    Absent,
    Empty,
    Present,
}

impl SocketId {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Absent => "-",
            Self::Empty => "empty",
            Self::Present => "present",
        }
    }
}

/// How a raw path or the raw query values are percent-encoded. A sender
/// shows its encoding only when a value has a character outside the
/// unreserved set: until then it is `plain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Encoding {
    /// Unreserved characters only: nothing to tell.
    Plain,
    /// `%XX` escapes, no other reserved character.
    Escaped,
    /// Reserved characters (`@`, `,`, `+`, …) left as they are, no escape.
    Raw,
    /// Both.
    Mixed,
}

impl Encoding {
    pub(super) fn of_bytes(bytes: &[u8], separator: u8) -> (bool, bool) {
        let escaped = bytes.contains(&b'%');
        let raw = bytes
            .iter()
            .any(|&b| b != b'%' && b != separator && !is_unreserved(b));
        (escaped, raw)
    }

    pub(super) fn from_flags((escaped, raw): (bool, bool)) -> Self {
        match (escaped, raw) {
            (false, false) => Self::Plain,
            (true, false) => Self::Escaped,
            (false, true) => Self::Raw,
            (true, true) => Self::Mixed,
        }
    }

    pub(super) fn of_path(path: &str) -> Self {
        Self::from_flags(Self::of_bytes(path.as_bytes(), b'/'))
    }

    #[cfg(test)]
    pub(super) fn of_query_values(raw_query: &str) -> Self {
        RawQuery::of(raw_query).values()
    }

    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Escaped => "escaped",
            Self::Raw => "raw",
            Self::Mixed => "mixed",
        }
    }
}

/// The JSON spacing of the body: what follows each `:` and `,` outside
/// strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Body {
    Empty,
    /// Does not start like JSON (`{`, `[`, `"`, a number, `true`, `false`,
    /// `null`), or is only whitespace.
    Text,
    /// JSON-like without a separator (`"hi"`, `{}`, `42`): nothing to tell.
    NoSeparator,
    /// Every separator followed directly by a value (`{"msg":"hi"}`).
    Compact,
    /// Every separator followed by one space (`{"msg": "hi"}`).
    Spaced,
    /// A separator followed by a line break or tab (pretty-printed).
    Pretty,
    /// Both compact and spaced separators.
    Mixed,
}

impl Body {
    pub(super) fn of(body: &[u8]) -> Self {
        if body.is_empty() {
            return Self::Empty;
        }
        let Some(start) = body.iter().position(|b| !b.is_ascii_whitespace()) else {
            return Self::Text;
        };
        if !matches!(
            body[start],
            b'{' | b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n'
        ) {
            return Self::Text;
        }
        let (mut compact, mut spaced, mut pretty) = (false, false, false);
        let (mut in_string, mut escaped) = (false, false);
        for (i, &b) in body.iter().enumerate().skip(start) {
            if in_string {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_string = false;
                }
                continue;
            }
            match b {
                b'"' => in_string = true,
                b':' | b',' => match body.get(i + 1) {
                    Some(b' ') => spaced = true,
                    Some(b'\n' | b'\r' | b'\t') => pretty = true,
                    _ => compact = true,
                },
                _ => {}
            }
        }
        match (compact, spaced, pretty) {
            (_, _, true) => Self::Pretty,
            (true, true, false) => Self::Mixed,
            (false, true, false) => Self::Spaced,
            (true, false, false) => Self::Compact,
            (false, false, false) => Self::NoSeparator,
        }
    }

    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::Text => "text",
            Self::NoSeparator => "none",
            Self::Compact => "compact",
            Self::Spaced => "spaced",
            Self::Pretty => "pretty",
            Self::Mixed => "mixed",
        }
    }
}
