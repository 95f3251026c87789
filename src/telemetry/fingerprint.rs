//! Library fingerprints: which legacy library sent a verified deprecated
//! call, told from the shape of its request, never from its values.
//!
//! The 2012 libraries send no `User-Agent`, and a sidecar sees every caller
//! come from 127.0.0.1, so the ledger cannot tell callers apart by who they
//! say they are. They can be told apart by how they build the request:
//! which headers in which order, the class of a few header values, the
//! order of the query parameters, the JSON spacing of the body, the
//! percent-encoding of path and query, and whether `socket_id` is sent.
//! [`classify`] reads those traits from the head hyper has already parsed
//! (no second parse of the raw bytes) and the body the proxy has already
//! read, and returns a [`Fingerprint`]:
//!
//! - [`Library`]: one of a small fixed set of known families, or
//!   [`Library::Unknown`]; its [`Library::as_str`] is a bounded, stable
//!   label value, with a human [`Library::name`] and a migration
//!   [`Library::recipe`] for the report;
//! - [`FingerprintId`]: 12 hex digits of the SHA-256 of the canonical
//!   trait string ([`Traits::canonical`]), so that different unknown
//!   senders (a vendored PHP copy, a hand-rolled curl call) stay apart.
//!   It holds the sender's traits only (headers, their value classes, the
//!   query's key order), not those that follow the call's values
//!   (whether `socket_id` is sent, the encoding that a channel or event
//!   name calls for, the body's spacing: [`Traits::call_traits`]), so one
//!   sender keeps one id whatever it sends. (The family still reads the
//!   call's traits: npm `node-pusher` is two families by whether a call
//!   sends `socket_id`, so two callers.) The price: unknown senders that
//!   differ only in those traits (JSON spacing, escaping) share an id.
//!   Unbounded in principle: keep it out of metric labels.
//!
//! Header case: hyper lowercases header names, and the original case is
//! not reachable through its public API (`preserve_header_case` stores it
//! in a crate-private extension; there is no server-side header-order
//! option at all). Names are therefore read lower-case, in the order
//! [`HeaderMap`] iterates them, which for a map hyper filled from the wire
//! and nobody changed since is the order each name first appeared in
//! (repeats of a name come together at its first place). `http` documents
//! that order as unspecified; the tests pin it for the locked version,
//! through hyper's own parser. docs/fingerprints.md has the evidence, the
//! canonical format and each family's traits and sources.
//!
//! Privacy: only shapes are read. Header values are reduced to a few
//! classes (the Host header to "a pusherapp.com/pusher.com host" or not),
//! query values to their encoding class, the body to its JSON spacing;
//! no key, secret, channel, event name, socket id or data enters the
//! canonical string, and so none can be recovered from the id.

use std::fmt;

use http::Uri;
use http::header::{self, HeaderMap, HeaderName};
use http::request::Parts;
use sha2::{Digest, Sha256};

use crate::pusher::query::QueryParams;

/// The first field of every canonical trait string; bumped whenever the
/// format changes (which changes every id). `fp1` also hashed the call's
/// traits ([`Traits::call_traits`]), so one sender had several ids.
pub const CANONICAL_VERSION: &str = "fp2";

/// Length of a [`FingerprintId`] in hex digits (48 bits of the SHA-256).
pub const ID_LEN: usize = 12;

/// Header names in the canonical string at most; more are marked `+`.
const MAX_HEADER_NAMES: usize = 32;

/// Query keys in the canonical string (and in the order check) at most.
const MAX_QUERY_KEYS: usize = 16;

/// Bytes of one query key in the canonical string at most.
const MAX_KEY_LEN: usize = 32;

/// Headers whose presence depends on the call rather than the sender,
/// left out of the header list: libcurl adds `Expect: 100-continue` to a
/// POST only when its body is over 1024 bytes.
const VOLATILE_HEADERS: [&str; 1] = ["expect"];

/// A legacy library family, as far as its wire traits tell.
///
/// The set is small and fixed: [`Library::as_str`] is usable as a metric
/// label value. Families that send the same request are one variant (their
/// [`Library::name`] says so).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Library {
    /// PyPI `pusher` 0.1–0.5 (httplib; no `Content-Type`).
    PypiPusher01To05,
    /// PyPI `pusher` 0.6–0.8 (httplib; `Content-Type: application/json`).
    PypiPusher06To08,
    /// npm `node-pusher` 0.0.1–0.0.2, when it sends a `socket_id`.
    NpmNodePusher00,
    /// npm `pusher` 0.0.x, or `node-pusher` 0.0.x called without a
    /// `socket_id`: the two send the same head but for header case.
    NpmPusherOrNodePusher00,
    /// Packagist `pusher/pusher-php-server` 2.0.0–2.1.2, and copies of
    /// `Pusher.php` from 2012-04 on (every query key sorted).
    PhpPusher20To21,
    /// `Pusher.php` before 2012-04, the pre-Composer class often vendored.
    PhpPusherPre2012,
    /// RubyGems `pusher` 0.4.0–0.10.0 on Ruby 1.9 or later.
    RubygemsPusher04To010,
    /// CPAN `WWW::Pusher` 0.07 (LWP).
    CpanWwwPusher,
    /// None of the above.
    Unknown,
}

/// How to move a library family off the deprecated calls, for the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recipe {
    /// The first release of the library (or of its successor) that uses
    /// the current routes; `None` when there is none.
    pub first_current: Option<&'static str>,
    /// The call that replaces the deprecated one.
    pub replacement: &'static str,
}

impl Library {
    /// Every family, [`Library::Unknown`] last.
    pub const ALL: [Library; 9] = [
        Library::PypiPusher01To05,
        Library::PypiPusher06To08,
        Library::NpmNodePusher00,
        Library::NpmPusherOrNodePusher00,
        Library::PhpPusher20To21,
        Library::PhpPusherPre2012,
        Library::RubygemsPusher04To010,
        Library::CpanWwwPusher,
        Library::Unknown,
    ];

    /// The stable id: a label value for metrics, logs and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PypiPusher01To05 => "pypi-pusher-0.1-0.5",
            Self::PypiPusher06To08 => "pypi-pusher-0.6-0.8",
            Self::NpmNodePusher00 => "npm-node-pusher-0.0",
            Self::NpmPusherOrNodePusher00 => "npm-pusher-or-node-pusher-0.0",
            Self::PhpPusher20To21 => "packagist-pusher-php-server-2.0-2.1",
            Self::PhpPusherPre2012 => "php-pusher-pre-2012",
            Self::RubygemsPusher04To010 => "rubygems-pusher-0.4-0.10",
            Self::CpanWwwPusher => "cpan-www-pusher-0.07",
            Self::Unknown => "unknown",
        }
    }

    /// The family with id `id` (as [`Library::as_str`] spells it).
    pub fn from_id(id: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.as_str() == id)
    }

    /// A human name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::PypiPusher01To05 => "PyPI pusher 0.1–0.5",
            Self::PypiPusher06To08 => "PyPI pusher 0.6–0.8",
            Self::NpmNodePusher00 => "npm node-pusher 0.0.1–0.0.2",
            Self::NpmPusherOrNodePusher00 => {
                "npm pusher 0.0.x, or npm node-pusher 0.0.x called without socket_id"
            }
            Self::PhpPusher20To21 => {
                "pusher-php-server 2.0.0–2.1.2 (and Pusher.php copies from April 2012 on)"
            }
            Self::PhpPusherPre2012 => "Pusher.php before April 2012 (pre-Composer copies)",
            Self::RubygemsPusher04To010 => "RubyGems pusher 0.4.0–0.10.0",
            Self::CpanWwwPusher => "CPAN WWW::Pusher 0.07",
            Self::Unknown => "unknown sender",
        }
    }

    /// Whether this is a known family (anything but [`Library::Unknown`]).
    pub fn is_known(self) -> bool {
        self != Self::Unknown
    }

    /// How to migrate it (spec section F).
    pub fn recipe(self) -> &'static Recipe {
        match self {
            Self::PypiPusher01To05 | Self::PypiPusher06To08 => &Recipe {
                first_current: Some("PyPI pusher 1.0.0 (2015-04), a rewrite"),
                replacement: "pusher.Pusher(app_id, key, secret).trigger(channel, event, data, \
                              socket_id) sends POST /apps/{app_id}/events; the 0.x \
                              p[channel].trigger(event, data, socket_id) is gone in 1.x, so \
                              each call site changes",
            },
            Self::NpmNodePusher00 | Self::NpmPusherOrNodePusher00 => &Recipe {
                first_current: Some(
                    "npm pusher 0.1.2 (2012-12-31); node-pusher has none (its code went \
                     into npm pusher)",
                ),
                replacement: "pusher.trigger(channel, event, data, socketId, callback) of npm \
                              pusher >= 0.1.2 sends POST /apps/{app_id}/events, with the same \
                              arguments",
            },
            Self::PhpPusher20To21 => &Recipe {
                first_current: Some("pusher-php-server 2.1.3 (2012-12-22)"),
                replacement: "upgrade: $pusher->trigger($channel, $event, $data, $socket_id) \
                              sends POST /apps/{app_id}/events from 2.1.3 on, with the same \
                              arguments; get_channel_info($channel, $params) sends GET \
                              /apps/{app_id}/channels/{channel}",
            },
            Self::PhpPusherPre2012 => &Recipe {
                first_current: Some("pusher-php-server 2.1.3 (2012-12-22)"),
                replacement: "replace the copied Pusher.php with pusher-php-server >= 2.1.3: \
                              the constructor and trigger($channel, $event, $payload, \
                              $socket_id) keep their arguments (since 2010-09) and send POST \
                              /apps/{app_id}/events",
            },
            Self::RubygemsPusher04To010 => &Recipe {
                first_current: Some(
                    "RubyGems pusher 0.11.0 (2012-11-13); 0.10.0 already has \
                     Channel#info",
                ),
                replacement: "upgrade: from 0.11.0 Pusher[channel].trigger(event, data, \
                              socket_id) sends POST /apps/{app_id}/events (also \
                              Pusher.trigger(channel, event, data, socket_id: id)); \
                              Channel#stats (0.8.4–0.9.4) becomes Pusher.channel_info(channel, \
                              info: 'user_count'), GET /apps/{app_id}/channels/{channel}",
            },
            Self::CpanWwwPusher => &Recipe {
                first_current: None,
                replacement: "no WWW::Pusher release uses the current routes (the last, \
                              0.0701 of 2013, does not): send POST /apps/{app_id}/events with \
                              {\"name\": event, \"channels\": [channel], \"data\": data} \
                              yourself, or keep the proxy translating",
            },
            Self::Unknown => &Recipe {
                first_current: None,
                replacement: "find the sender from its call site (the templated channel and \
                              event names) and move it to a current library: POST \
                              /apps/{app_id}/events, GET /apps/{app_id}/channels/{channel}",
            },
        }
    }
}

impl fmt::Display for Library {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Library {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The short hash of a canonical trait string: [`ID_LEN`] lower-case hex
/// digits of its SHA-256. Stable across releases for as long as
/// [`CANONICAL_VERSION`] is.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FingerprintId([u8; ID_LEN]);

impl FingerprintId {
    /// The id of canonical trait string `canonical`.
    pub fn of(canonical: &str) -> Self {
        Self::from_digest(&Sha256::digest(canonical.as_bytes())[..])
    }

    fn from_digest(digest: &[u8]) -> Self {
        let mut hex = [0u8; ID_LEN];
        // ID_LEN / 2 bytes of a 32-byte digest always fit ID_LEN digits.
        let _ = base16ct::lower::encode(&digest[..ID_LEN / 2], &mut hex);
        Self(hex)
    }

    /// The id parsed back from its text ([`ID_LEN`] lower-case hex digits),
    /// as the store keeps it.
    pub fn parse(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        let valid = bytes.len() == ID_LEN
            && bytes
                .iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
        let mut hex = [0u8; ID_LEN];
        hex.copy_from_slice(bytes.get(..ID_LEN).filter(|_| valid)?);
        Some(Self(hex))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("an id is ASCII hex digits")
    }
}

impl fmt::Display for FingerprintId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for FingerprintId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FingerprintId({})", self.as_str())
    }
}

impl serde::Serialize for FingerprintId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// What [`classify`] tells of a sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Fingerprint {
    /// Its library family, or [`Library::Unknown`].
    pub library: Library,
    /// The hash of its canonical trait string.
    pub id: FingerprintId,
}

/// Classifies a verified legacy call from what the proxy holds once it has
/// verified it: the request head as hyper parsed it (`parts`, unchanged
/// since: the header order is read from it), its decoded query, and its
/// body. Allocates nothing.
pub fn classify(parts: &Parts, query: &QueryParams, body: &[u8]) -> Fingerprint {
    Traits::new(&parts.headers, &parts.uri, query, body).fingerprint()
}

/// The wire traits of one request, read once; [`classify`] in parts.
#[derive(Debug, Clone, Copy)]
pub struct Traits<'a> {
    headers: &'a HeaderMap,
    query: RawQuery<'a>,
    host: HostClass,
    connection: Connection,
    accept_encoding: AcceptEncoding,
    content_type: ContentType,
    accept: Accept,
    order: Order,
    socket_id: SocketId,
    path: Encoding,
    query_values: Encoding,
    body: Body,
    /// Whether the `User-Agent` is LWP's default (`libwww-perl/…`).
    lwp_agent: bool,
}

impl<'a> Traits<'a> {
    /// Reads the traits of a request: its headers as hyper parsed them, its
    /// URI (raw path and raw query), its decoded query and its body.
    pub fn new(headers: &'a HeaderMap, uri: &'a Uri, query: &QueryParams, body: &[u8]) -> Self {
        let raw_query = uri.query().unwrap_or("");
        // A value that is not visible ASCII matches no class: `other`.
        let value = |name: HeaderName| {
            headers
                .get(name)
                .map(|v| v.to_str().map(str::trim).unwrap_or("\u{0}"))
        };
        let raw = RawQuery::of(raw_query);
        Self {
            headers,
            query: raw,
            host: HostClass::of(value(header::HOST)),
            connection: Connection::of(value(header::CONNECTION)),
            accept_encoding: AcceptEncoding::of(value(header::ACCEPT_ENCODING)),
            content_type: ContentType::of(value(header::CONTENT_TYPE)),
            accept: Accept::of(value(header::ACCEPT)),
            order: Order::of_keys(&raw),
            socket_id: match query.get("socket_id") {
                None => SocketId::Absent,
                Some("") => SocketId::Empty,
                Some(_) => SocketId::Present,
            },
            path: Encoding::of_path(uri.path()),
            query_values: raw.values(),
            body: Body::of(body),
            lwp_agent: value(header::USER_AGENT).is_some_and(|ua| ua.starts_with("libwww-perl/")),
        }
    }

    /// The fingerprint: family and id.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint {
            library: self.library(),
            id: self.id(),
        }
    }

    /// The id: the hash of [`Traits::canonical`], computed without building
    /// the string.
    pub fn id(&self) -> FingerprintId {
        let mut hasher = Sha256::new();
        self.write_canonical(&mut hasher);
        FingerprintId::from_digest(&hasher.finalize()[..])
    }

    /// The canonical trait string the id hashes (docs/fingerprints.md has
    /// its format), e.g. for a debug log of a new unknown sender. Holds no
    /// value of the request, only shapes.
    pub fn canonical(&self) -> String {
        let mut out = String::with_capacity(256);
        self.write_canonical(&mut out);
        out
    }

    /// The traits that follow the call's values rather than the sender,
    /// and so are not in the id but do decide some families: `socket_id`
    /// (absent, empty or present), the encoding of the path and of the
    /// query values, and the body's spacing, as
    /// `sid=<c>;path=<c>;qv=<c>;body=<c>`. With [`Traits::canonical`],
    /// everything classification reads.
    pub fn call_traits(&self) -> String {
        let mut out = String::with_capacity(48);
        for (i, (field, class)) in [
            ("sid=", self.socket_id.as_str()),
            ("path=", self.path.as_str()),
            ("qv=", self.query_values.as_str()),
            ("body=", self.body.as_str()),
        ]
        .into_iter()
        .enumerate()
        {
            if i > 0 {
                out.push(';');
            }
            out.push_str(field);
            out.push_str(class);
        }
        out
    }

    /// The header names that count, lower-case, in map order.
    fn names(&self) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .map(|(name, _)| name.as_str())
            .filter(|name| !VOLATILE_HEADERS.contains(name))
    }

    fn names_are(&self, expected: &[&str]) -> bool {
        self.names().eq(expected.iter().copied())
    }

    fn has_header(&self, name: HeaderName) -> bool {
        self.headers.contains_key(name)
    }

    fn write_canonical(&self, out: &mut impl Sink) {
        out.put(CANONICAL_VERSION);
        out.put(";h=");
        for (i, name) in self.names().enumerate() {
            if i == MAX_HEADER_NAMES {
                out.put(",+");
                break;
            }
            if i > 0 {
                out.put(",");
            }
            out.put(name);
        }
        for (field, class) in [
            (";host=", self.host.as_str()),
            (";conn=", self.connection.as_str()),
            (";ae=", self.accept_encoding.as_str()),
            (";ct=", self.content_type.as_str()),
            (";accept=", self.accept.as_str()),
        ] {
            out.put(field);
            out.put(class);
        }
        // The keys in their order, less `socket_id`, which a sender sends
        // or not by call.
        out.put(";q=");
        let keys = self.query.keys().iter().filter(|k| **k != "socket_id");
        for (i, key) in keys.enumerate() {
            if i > 0 {
                out.put(",");
            }
            put_key(out, key);
        }
        if self.query.more() {
            out.put(",+");
        }
    }

    /// The family: the first rule that matches (docs/fingerprints.md has
    /// each rule's sources).
    pub fn library(&self) -> Library {
        const PYPI_0_1: [&str; 3] = ["host", "accept-encoding", "content-length"];
        const PYPI_0_6: [&str; 4] = ["host", "accept-encoding", "content-length", "content-type"];
        const NPM: [&str; 4] = ["host", "content-type", "content-length", "connection"];
        // libcurl: Host, Accept, the custom headers, then Content-Length.
        const CURL_POST: [&str; 4] = ["host", "accept", "content-type", "content-length"];
        const CURL_GET: [&str; 3] = ["host", "accept", "content-type"];

        let json = self.content_type == ContentType::Json;
        let python_body = matches!(self.body, Body::Spaced | Body::NoSeparator);
        let compact_body = matches!(self.body, Body::Compact | Body::NoSeparator);
        // PyPI appends socket_id `if socket_id:`, node-pusher `if (socketId)`:
        // never empty.
        let identity =
            self.accept_encoding == AcceptEncoding::Identity && self.socket_id != SocketId::Empty;
        let curl = self.accept == Accept::Any && json;
        match self.order {
            Order::Pusher if identity && python_body && self.names_are(&PYPI_0_1) => {
                Library::PypiPusher01To05
            }
            Order::Pusher if identity && python_body && json && self.names_are(&PYPI_0_6) => {
                Library::PypiPusher06To08
            }
            Order::Pusher
                if self.host == HostClass::Pusher
                    && self.connection == Connection::Close
                    && json
                    && compact_body
                    && self.socket_id != SocketId::Empty
                    && self.names_are(&NPM) =>
            {
                if self.socket_id == SocketId::Present {
                    Library::NpmNodePusher00
                } else {
                    Library::NpmPusherOrNodePusher00
                }
            }
            Order::Sorted if curl && (self.names_are(&CURL_POST) || self.names_are(&CURL_GET)) => {
                Library::PhpPusher20To21
            }
            Order::Pusher if curl && self.names_are(&CURL_POST) => Library::PhpPusherPre2012,
            Order::Ruby if json => Library::RubygemsPusher04To010,
            // An empty socket_id is WWW::Pusher's own trait; with a socket id,
            // LWP's default User-Agent tells it from other order-A senders
            // (PyPI's App Engine channel, say, which sends its own agent).
            Order::Pusher
                if json
                    && compact_body
                    && match self.socket_id {
                        SocketId::Empty => self.has_header(header::USER_AGENT),
                        SocketId::Present => self.lwp_agent,
                        SocketId::Absent => false,
                    } =>
            {
                Library::CpanWwwPusher
            }
            _ => Library::Unknown,
        }
    }
}

/// Where the canonical string goes: a `String`, or straight into the hash.
trait Sink {
    fn put(&mut self, s: &str);
    /// ASCII bytes.
    fn put_bytes(&mut self, b: &[u8]);
}

impl Sink for String {
    fn put(&mut self, s: &str) {
        self.push_str(s);
    }

    fn put_bytes(&mut self, b: &[u8]) {
        self.extend(b.iter().copied().map(char::from));
    }
}

impl Sink for Sha256 {
    fn put(&mut self, s: &str) {
        self.update(s.as_bytes());
    }

    fn put_bytes(&mut self, b: &[u8]) {
        self.update(b);
    }
}

/// A query key as the canonical string holds it: at most [`MAX_KEY_LEN`]
/// bytes, anything but `[A-Za-z0-9_.~-]` as `%XX`, so that no key can
/// forge the string's `,`, `;` and `=`.
///
/// Runs of unreserved bytes go to the sink in one piece (the hash takes
/// a slice per call, not a byte).
fn put_key(out: &mut impl Sink, key: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let bytes = &key.as_bytes()[..key.len().min(MAX_KEY_LEN)];
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if is_unreserved(b) {
            continue;
        }
        out.put_bytes(&bytes[run..i]);
        out.put_bytes(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
        run = i + 1;
    }
    out.put_bytes(&bytes[run..]);
}

/// RFC 3986 unreserved characters.
const fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

mod classes;
use classes::{
    Accept, AcceptEncoding, Body, Connection, ContentType, Encoding, HostClass, Order, RawQuery,
    SocketId,
};

#[cfg(test)]
mod source_tests;
#[cfg(test)]
mod tests;
