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
/// format changes (which changes every id).
pub const CANONICAL_VERSION: &str = "fp1";

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
    raw_query: &'a str,
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
        Self {
            headers,
            raw_query,
            host: HostClass::of(value(header::HOST)),
            connection: Connection::of(value(header::CONNECTION)),
            accept_encoding: AcceptEncoding::of(value(header::ACCEPT_ENCODING)),
            content_type: ContentType::of(value(header::CONTENT_TYPE)),
            accept: Accept::of(value(header::ACCEPT)),
            order: Order::of(raw_query),
            socket_id: match query.get("socket_id") {
                None => SocketId::Absent,
                Some("") => SocketId::Empty,
                Some(_) => SocketId::Present,
            },
            path: Encoding::of_path(uri.path()),
            query_values: Encoding::of_query_values(raw_query),
            body: Body::of(body),
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
        out.put(";q=");
        for (i, key) in raw_keys(self.raw_query).enumerate() {
            if i == MAX_QUERY_KEYS {
                out.put(",+");
                break;
            }
            if i > 0 {
                out.put(",");
            }
            put_key(out, key);
        }
        for (field, class) in [
            (";sid=", self.socket_id.as_str()),
            (";path=", self.path.as_str()),
            (";qv=", self.query_values.as_str()),
            (";body=", self.body.as_str()),
        ] {
            out.put(field);
            out.put(class);
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
            Order::Pusher
                if json
                    && compact_body
                    && self.socket_id != SocketId::Absent
                    && self.has_header(header::USER_AGENT) =>
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
    /// An ASCII byte.
    fn put_byte(&mut self, b: u8);
}

impl Sink for String {
    fn put(&mut self, s: &str) {
        self.push_str(s);
    }

    fn put_byte(&mut self, b: u8) {
        self.push(char::from(b));
    }
}

impl Sink for Sha256 {
    fn put(&mut self, s: &str) {
        self.update(s.as_bytes());
    }

    fn put_byte(&mut self, b: u8) {
        self.update([b]);
    }
}

/// A query key as the canonical string holds it: at most [`MAX_KEY_LEN`]
/// bytes, anything but `[A-Za-z0-9_.~-]` as `%XX`, so that no key can
/// forge the string's `,`, `;` and `=`.
fn put_key(out: &mut impl Sink, key: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in key.as_bytes().iter().take(MAX_KEY_LEN) {
        if is_unreserved(b) {
            out.put_byte(b);
        } else {
            out.put_byte(b'%');
            out.put_byte(HEX[usize::from(b >> 4)]);
            out.put_byte(HEX[usize::from(b & 0xf)]);
        }
    }
}

/// The raw keys of a raw query, in order; empty pairs are skipped, as
/// [`QueryParams::parse`] skips them.
fn raw_keys(raw: &str) -> impl Iterator<Item = &str> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').map_or(p, |(k, _)| k))
}

/// RFC 3986 unreserved characters.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// The class of the `Host` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostClass {
    Absent,
    /// `pusherapp.com`, `pusher.com` or a subdomain, any port.
    Pusher,
    Other,
}

impl HostClass {
    fn of(value: Option<&str>) -> Self {
        let Some(value) = value else {
            return Self::Absent;
        };
        let host = if value.starts_with('[') {
            value // an IPv6 literal is no pusher host
        } else {
            value.split(':').next().unwrap_or(value)
        };
        let host = host.strip_suffix('.').unwrap_or(host).as_bytes();
        let under = |domain: &str| {
            let domain = domain.as_bytes();
            host.eq_ignore_ascii_case(domain)
                || (host.len() > domain.len()
                    && host[host.len() - domain.len() - 1] == b'.'
                    && host[host.len() - domain.len()..].eq_ignore_ascii_case(domain))
        };
        if under("pusherapp.com") || under("pusher.com") {
            Self::Pusher
        } else {
            Self::Other
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Absent => "-",
            Self::Pusher => "pusher",
            Self::Other => "other",
        }
    }
}

/// The class of the `Connection` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Connection {
    Absent,
    Close,
    KeepAlive,
    Other,
}

impl Connection {
    fn of(value: Option<&str>) -> Self {
        match value {
            None => Self::Absent,
            Some(v) if v.eq_ignore_ascii_case("close") => Self::Close,
            Some(v) if v.eq_ignore_ascii_case("keep-alive") => Self::KeepAlive,
            Some(_) => Self::Other,
        }
    }

    fn as_str(self) -> &'static str {
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
enum AcceptEncoding {
    Absent,
    Identity,
    Other,
}

impl AcceptEncoding {
    fn of(value: Option<&str>) -> Self {
        match value {
            None => Self::Absent,
            Some(v) if v.eq_ignore_ascii_case("identity") => Self::Identity,
            Some(_) => Self::Other,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Absent => "-",
            Self::Identity => "identity",
            Self::Other => "other",
        }
    }
}

/// The class of the `Content-Type` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ContentType {
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
    fn of(value: Option<&str>) -> Self {
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

    fn as_str(self) -> &'static str {
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
enum Accept {
    Absent,
    /// `*/*`
    Any,
    Other,
}

impl Accept {
    fn of(value: Option<&str>) -> Self {
        match value {
            None => Self::Absent,
            Some("*/*") => Self::Any,
            Some(_) => Self::Other,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Absent => "-",
            Self::Any => "any",
            Self::Other => "other",
        }
    }
}

/// The order of the query keys, as far as it names a known builder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
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

impl Order {
    fn of(raw_query: &str) -> Self {
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

        let mut keys = [""; MAX_QUERY_KEYS];
        let mut n = 0;
        for key in raw_keys(raw_query) {
            let Some(slot) = keys.get_mut(n) else {
                return Self::Other;
            };
            *slot = key;
            n += 1;
        }
        let keys = &keys[..n];
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
enum SocketId {
    Absent,
    Empty,
    Present,
}

impl SocketId {
    fn as_str(self) -> &'static str {
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
enum Encoding {
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
    fn of_bytes(bytes: &[u8], separator: u8) -> (bool, bool) {
        let escaped = bytes.contains(&b'%');
        let raw = bytes
            .iter()
            .any(|&b| b != b'%' && b != separator && !is_unreserved(b));
        (escaped, raw)
    }

    fn from_flags((escaped, raw): (bool, bool)) -> Self {
        match (escaped, raw) {
            (false, false) => Self::Plain,
            (true, false) => Self::Escaped,
            (false, true) => Self::Raw,
            (true, true) => Self::Mixed,
        }
    }

    fn of_path(path: &str) -> Self {
        Self::from_flags(Self::of_bytes(path.as_bytes(), b'/'))
    }

    fn of_query_values(raw_query: &str) -> Self {
        let flags = raw_query
            .split('&')
            .filter_map(|p| p.split_once('=').map(|(_, v)| v))
            .map(|v| Self::of_bytes(v.as_bytes(), b'='))
            .fold((false, false), |a, b| (a.0 || b.0, a.1 || b.1));
        Self::from_flags(flags)
    }

    fn as_str(self) -> &'static str {
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
enum Body {
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
    fn of(body: &[u8]) -> Self {
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

    fn as_str(self) -> &'static str {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// One request of tests/fixtures/legacy-requests.txt.
    #[derive(Debug, Clone)]
    struct Recorded {
        title: String,
        method: String,
        target: String,
        /// In wire order, with their case.
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Recorded {
        fn parts(&self) -> Parts {
            request(&self.method, &self.target, &self.headers)
        }

        fn fingerprint(&self) -> Fingerprint {
            fingerprint_of(&self.parts(), self.body.as_bytes())
        }

        fn traits_canonical(&self) -> String {
            let parts = self.parts();
            let query = QueryParams::parse(parts.uri.query().unwrap_or("")).unwrap();
            Traits::new(&parts.headers, &parts.uri, &query, self.body.as_bytes()).canonical()
        }

        /// The request as it was on the wire.
        fn wire(&self) -> Vec<u8> {
            let mut raw = format!("{} {} HTTP/1.1\r\n", self.method, self.target);
            for (name, value) in &self.headers {
                raw.push_str(&format!("{name}: {value}\r\n"));
            }
            raw.push_str("\r\n");
            raw.push_str(&self.body);
            raw.into_bytes()
        }
    }

    /// Every quoted string of a `headers: [['Name', 'Value'], …]` line, paired.
    fn parse_headers(line: &str) -> Vec<(String, String)> {
        let quoted: Vec<&str> = line.split('\'').skip(1).step_by(2).collect();
        assert_eq!(quoted.len() % 2, 0, "unpaired header in {line}");
        quoted
            .chunks(2)
            .map(|pair| (pair[0].to_owned(), pair[1].to_owned()))
            .collect()
    }

    /// The fixture's blocks: `## title`, request line, `headers:`, `body:`.
    fn fixture() -> Vec<Recorded> {
        let text = include_str!("../../tests/fixtures/legacy-requests.txt");
        let mut out = Vec::new();
        let mut lines = text.lines().peekable();
        while let Some(line) = lines.next() {
            let Some(title) = line.strip_prefix("## ") else {
                continue;
            };
            let request_line = lines.next().expect("a request line");
            let mut words = request_line.split(' ');
            let (method, target) = (words.next().unwrap(), words.next().unwrap());
            assert_eq!(words.next(), Some("HTTP/1.1"), "{request_line}");
            let headers = lines
                .next()
                .and_then(|l| l.strip_prefix("headers: "))
                .unwrap();
            let body = lines.next().and_then(|l| l.strip_prefix("body: ")).unwrap();
            out.push(Recorded {
                title: title.to_owned(),
                method: method.to_owned(),
                target: target.to_owned(),
                headers: parse_headers(headers),
                body: body.to_owned(),
            });
        }
        out
    }

    fn recorded(title: &str) -> Recorded {
        fixture().into_iter().find(|r| r.title == title).unwrap()
    }

    /// A request head with `headers` appended in order, as hyper fills it.
    fn request(
        method: &str,
        target: &str,
        headers: &[(impl AsRef<str>, impl AsRef<str>)],
    ) -> Parts {
        let mut builder = http::Request::builder().method(method).uri(target);
        for (name, value) in headers {
            builder = builder.header(name.as_ref(), value.as_ref());
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn fingerprint_of(parts: &Parts, body: &[u8]) -> Fingerprint {
        let query = QueryParams::parse(parts.uri.query().unwrap_or("")).unwrap();
        classify(parts, &query, body)
    }

    fn family(title: &str) -> Library {
        match title {
            t if t.starts_with("PyPI pusher 0.")
                && matches!(&t["PyPI pusher 0.".len()..], "1" | "2" | "3" | "4" | "5") =>
            {
                Library::PypiPusher01To05
            }
            t if t.starts_with("PyPI pusher 0.") => Library::PypiPusher06To08,
            t if t.starts_with("npm pusher 0.0.") => Library::NpmPusherOrNodePusher00,
            t if t.starts_with("npm node-pusher 0.0.") => Library::NpmNodePusher00,
            t => panic!("no family for {t}"),
        }
    }

    #[test]
    fn every_recorded_release_is_classified_into_its_family() {
        let recorded = fixture();
        assert_eq!(recorded.len(), 12, "twelve releases are recorded");
        for r in &recorded {
            let fp = r.fingerprint();
            assert_eq!(
                fp.library,
                family(&r.title),
                "{}: {}",
                r.title,
                r.traits_canonical()
            );
        }
    }

    #[test]
    fn releases_of_one_shape_share_an_id_and_shapes_differ() {
        let id = |title: &str| recorded(title).fingerprint().id;
        // 0.1–0.3 cannot send socket_id; 0.4 and 0.5 sent one here.
        assert_eq!(id("PyPI pusher 0.1"), id("PyPI pusher 0.3"));
        assert_eq!(id("PyPI pusher 0.4"), id("PyPI pusher 0.5"));
        assert_ne!(id("PyPI pusher 0.3"), id("PyPI pusher 0.4"));
        assert_eq!(id("PyPI pusher 0.6"), id("PyPI pusher 0.8"));
        assert_eq!(id("npm pusher 0.0.2"), id("npm pusher 0.0.4"));
        // Only the case of two header names tells npm pusher from
        // node-pusher, and hyper does not keep it: the ids differ by
        // socket_id alone.
        assert_eq!(id("npm node-pusher 0.0.1"), id("npm node-pusher 0.0.2"));
        assert_ne!(id("npm pusher 0.0.2"), id("npm node-pusher 0.0.1"));
        let npm = recorded("npm pusher 0.0.2").traits_canonical();
        let node = recorded("npm node-pusher 0.0.1").traits_canonical();
        assert_eq!(
            npm.replace(",name,auth_signature", ",name,socket_id,auth_signature")
                .replace("sid=-", "sid=present"),
            node
        );
    }

    /// A change of the canonical format changes every id stored so far:
    /// this test notices it (bump CANONICAL_VERSION with it).
    #[test]
    fn the_canonical_string_and_id_are_stable() {
        let pypi = recorded("PyPI pusher 0.1");
        let canonical = pypi.traits_canonical();
        assert_eq!(
            canonical,
            "fp1;h=host,accept-encoding,content-length;host=other;conn=-;ae=identity;ct=-;\
             accept=-;q=auth_key,auth_timestamp,auth_version,body_md5,name,auth_signature;\
             sid=-;path=plain;qv=plain;body=spaced"
        );
        let id = pypi.fingerprint().id;
        assert_eq!(
            id,
            FingerprintId::of(&canonical),
            "the id hashes the canonical string"
        );
        // printf %s "$canonical" | sha256sum | cut -c1-12
        assert_eq!(id.as_str(), "1b84963150d4");
        // Every recorded release (docs/fingerprints.md lists these ids).
        for (title, id) in [
            ("PyPI pusher 0.1", "1b84963150d4"),
            ("PyPI pusher 0.2", "1b84963150d4"),
            ("PyPI pusher 0.3", "1b84963150d4"),
            ("PyPI pusher 0.4", "a4a8c3d8ab6a"),
            ("PyPI pusher 0.5", "a4a8c3d8ab6a"),
            ("PyPI pusher 0.6", "195c02a5c8eb"),
            ("PyPI pusher 0.7", "195c02a5c8eb"),
            ("PyPI pusher 0.8", "195c02a5c8eb"),
            ("npm pusher 0.0.2", "96fe68352634"),
            ("npm pusher 0.0.4", "96fe68352634"),
            ("npm node-pusher 0.0.1", "ed1b097fe1b9"),
            ("npm node-pusher 0.0.2", "ed1b097fe1b9"),
        ] {
            assert_eq!(recorded(title).fingerprint().id.as_str(), id, "{title}");
        }
        let npm = recorded("npm pusher 0.0.2");
        assert_eq!(
            npm.traits_canonical(),
            "fp1;h=host,content-type,content-length,connection;host=pusher;conn=close;ae=-;\
             ct=json;accept=-;q=auth_key,auth_timestamp,auth_version,body_md5,name,\
             auth_signature;sid=-;path=plain;qv=plain;body=compact"
        );
    }

    /// `r` with every value changed and every shape kept.
    fn with_other_values(r: &Recorded) -> Recorded {
        let (path, query) = r.target.split_once('?').unwrap();
        let query: Vec<String> = query
            .split('&')
            .map(|pair| {
                let (key, _) = pair.split_once('=').unwrap();
                let value = match key {
                    "auth_key" => "k-3f9a-other",
                    "auth_timestamp" => "1700000123",
                    "body_md5" => "0123456789abcdef0123456789abcdef",
                    "auth_signature" => {
                        "ffffeeee0000111122223333444455556666777788889999aaaabbbbccccdddd"
                    }
                    "name" => "order_created",
                    "socket_id" => "98765.4321",
                    "auth_version" => "1.0",
                    other => panic!("unexpected key {other}"),
                };
                format!("{key}={value}")
            })
            .collect();
        let path = path
            .replace("/4242/", "/77/")
            .replace("test-channel", "private-orders-123");
        let body = r
            .body
            .replace("\"msg\"", "\"order_id\"")
            .replace("\"hi\"", "\"a longer text, with: punctuation\"");
        let headers = r
            .headers
            .iter()
            .map(|(name, value)| {
                let value = match value.as_str() {
                    _ if name.eq_ignore_ascii_case("content-length") => body.len().to_string(),
                    "127.0.0.1:8080" => "localhost:9000".to_owned(),
                    "api.pusherapp.com" => "api-eu.pusher.com".to_owned(),
                    v => v.to_owned(),
                };
                (name.clone(), value)
            })
            .collect();
        Recorded {
            title: r.title.clone(),
            method: r.method.clone(),
            target: format!("{path}?{}", query.join("&")),
            headers,
            body,
        }
    }

    #[test]
    fn values_do_not_change_the_fingerprint() {
        for r in fixture() {
            let other = with_other_values(&r);
            assert_ne!(other.target, r.target);
            assert_eq!(other.fingerprint(), r.fingerprint(), "{}", r.title);
        }
        // Other data of the same shape.
        let r = recorded("PyPI pusher 0.6");
        for data in [
            r#"{"a": [1, 2], "b": {"c": null}}"#,
            r#""a string""#,
            "42",
            "{}",
        ] {
            let other = Recorded {
                body: data.to_owned(),
                ..r.clone()
            };
            assert_eq!(
                other.fingerprint().library,
                Library::PypiPusher06To08,
                "{data}"
            );
        }
    }

    /// A head with the given header names (values made up) and query.
    fn head(method: &str, target: &str, headers: &[(&str, &str)]) -> Parts {
        request(method, target, headers)
    }

    const PUSHER_ORDER: &str = "/apps/1/channels/c/events?auth_key=k&auth_timestamp=1&\
                                auth_version=1.0&body_md5=00&name=e&auth_signature=ff";

    #[test]
    fn synthetic_senders_are_unknown_and_apart() {
        // A hand-rolled curl call: curl's own User-Agent.
        let curl = head(
            "POST",
            PUSHER_ORDER,
            &[
                ("Host", "127.0.0.1:8080"),
                ("User-Agent", "curl/8.5.0"),
                ("Accept", "*/*"),
                ("Content-Type", "application/json"),
                ("Content-Length", "12"),
            ],
        );
        // A vendored PHP copy that someone taught a header.
        let vendored = head(
            "POST",
            PUSHER_ORDER,
            &[
                ("Host", "127.0.0.1:8080"),
                ("Accept", "*/*"),
                ("Content-Type", "application/json"),
                ("X-Requested-With", "billing"),
                ("Content-Length", "12"),
            ],
        );
        let body = br#"{"msg":"hi"}"#;
        let (a, b) = (fingerprint_of(&curl, body), fingerprint_of(&vendored, body));
        assert_eq!(a.library, Library::Unknown);
        assert_eq!(b.library, Library::Unknown);
        assert_ne!(a.id, b.id);
        for r in fixture() {
            assert_ne!(r.fingerprint().id, a.id);
            assert_ne!(r.fingerprint().id, b.id);
        }
    }

    #[test]
    fn header_order_and_query_order_are_traits() {
        let r = recorded("PyPI pusher 0.6");
        let mut swapped = r.clone();
        swapped.headers.swap(2, 3);
        assert_ne!(swapped.fingerprint().id, r.fingerprint().id);
        assert_eq!(swapped.fingerprint().library, Library::Unknown);

        let mut reordered = r.clone();
        let (path, query) = r.target.split_once('?').unwrap();
        let mut pairs: Vec<&str> = query.split('&').collect();
        pairs.sort_unstable();
        reordered.target = format!("{path}?{}", pairs.join("&"));
        assert_ne!(reordered.fingerprint().id, r.fingerprint().id);
        assert_eq!(reordered.fingerprint().library, Library::Unknown);

        // PyPI never sends an empty socket_id (`if socket_id:`).
        let mut empty_sid = r.clone();
        empty_sid.target = r.target.replace("socket_id=1234.5678", "socket_id=");
        assert_ne!(empty_sid.target, r.target);
        assert_eq!(empty_sid.fingerprint().library, Library::Unknown);

        // `expect` depends on the body's size (libcurl), not the sender.
        let mut expecting = r.clone();
        expecting
            .headers
            .push(("Expect".into(), "100-continue".into()));
        assert_eq!(expecting.fingerprint(), r.fingerprint());
    }

    #[test]
    fn families_from_published_source_are_classified() {
        let json = ("Content-Type", "application/json");
        let cases: Vec<(Library, Parts, &[u8])> = vec![
            // pusher-php-server 2.1.2 trigger: every key ksorted, signature
            // included; libcurl's Host, Accept, the custom header, length.
            (
                Library::PhpPusher20To21,
                head(
                    "POST",
                    "/apps/1/channels/c/events?auth_key=k&auth_signature=ff&auth_timestamp=1&\
                     auth_version=1.0&body_md5=00&name=e&socket_id=1.2",
                    &[
                        ("Host", "127.0.0.1:8080"),
                        ("Accept", "*/*"),
                        json,
                        ("Content-Length", "12"),
                    ],
                ),
                br#"{"msg":"hi"}"#,
            ),
            // … and get_channel_info with options (2.1.1+).
            (
                Library::PhpPusher20To21,
                head(
                    "GET",
                    "/apps/1/channels/c/stats?auth_key=k&auth_signature=ff&auth_timestamp=1&\
                     auth_version=1.0&info=connection_count",
                    &[("Host", "127.0.0.1:8080"), ("Accept", "*/*"), json],
                ),
                b"",
            ),
            // Pusher.php 2010-06 … 2011-10: the docs' order, signature last.
            (
                Library::PhpPusherPre2012,
                head(
                    "POST",
                    PUSHER_ORDER,
                    &[
                        ("Host", "127.0.0.1:8080"),
                        ("Accept", "*/*"),
                        json,
                        ("Content-Length", "12"),
                    ],
                ),
                br#"{"msg":"hi"}"#,
            ),
            // … called with $socket_id = '' (`!== null`: sent, empty).
            (
                Library::PhpPusherPre2012,
                head(
                    "POST",
                    "/apps/1/channels/c/events?auth_key=k&auth_timestamp=1&auth_version=1.0&\
                     body_md5=00&name=e&socket_id=&auth_signature=ff",
                    &[
                        ("Host", "127.0.0.1:8080"),
                        ("Accept", "*/*"),
                        json,
                        ("Content-Length", "12"),
                    ],
                ),
                br#"{"msg":"hi"}"#,
            ),
            // RubyGems pusher 0.10.0 trigger over Net::HTTP (Ruby 2.x).
            (
                Library::RubygemsPusher04To010,
                head(
                    "POST",
                    "/apps/1/channels/c/events?name=e&socket_id=1.2&body_md5=00&\
                     auth_version=1.0&auth_key=k&auth_timestamp=1&auth_signature=ff",
                    &[
                        json,
                        ("Accept-Encoding", "gzip;q=1.0,deflate;q=0.6,identity;q=0.3"),
                        ("Accept", "*/*"),
                        ("User-Agent", "Ruby"),
                        ("Host", "127.0.0.1:8080"),
                        ("Content-Length", "12"),
                    ],
                ),
                br#"{"msg":"hi"}"#,
            ),
            // RubyGems pusher 0.9.4 Channel#stats.
            (
                Library::RubygemsPusher04To010,
                head(
                    "GET",
                    "/apps/1/channels/c/stats?auth_version=1.0&auth_key=k&auth_timestamp=1&\
                     auth_signature=ff",
                    &[
                        json,
                        ("Accept", "*/*"),
                        ("User-Agent", "Ruby"),
                        ("Host", "127.0.0.1:8080"),
                    ],
                ),
                b"",
            ),
            // CPAN WWW::Pusher: URI's query_form sends socket_id= when unset.
            (
                Library::CpanWwwPusher,
                head(
                    "POST",
                    "/apps/1/channels/c/events?auth_key=k&auth_timestamp=1&auth_version=1.0&\
                     body_md5=00&name=e&socket_id=&auth_signature=ff",
                    &[
                        ("TE", "deflate,gzip;q=0.3"),
                        ("Connection", "TE, close"),
                        ("Host", "127.0.0.1:8080"),
                        ("User-Agent", "libwww-perl/6.05"),
                        ("Content-Length", "12"),
                        json,
                    ],
                ),
                br#"{"msg":"hi"}"#,
            ),
        ];
        for (expected, parts, body) in cases {
            let query = QueryParams::parse(parts.uri.query().unwrap_or("")).unwrap();
            let traits = Traits::new(&parts.headers, &parts.uri, &query, body);
            assert_eq!(traits.library(), expected, "{}", traits.canonical());
        }
    }

    #[test]
    fn family_ids_are_bounded_stable_label_values() {
        let mut ids: Vec<&str> = Library::ALL.iter().map(|l| l.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), Library::ALL.len());
        for library in Library::ALL {
            let id = library.as_str();
            assert!(
                id.bytes().all(|b| b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || b == b'-'
                    || b == b'.'),
                "{id}"
            );
            assert_eq!(Library::from_id(id), Some(library));
            assert!(!library.name().is_empty());
            assert!(!library.recipe().replacement.is_empty());
            assert_eq!(library.is_known(), library != Library::Unknown);
        }
        assert_eq!(Library::ALL.last(), Some(&Library::Unknown));
        assert_eq!(Library::from_id("pypi-pusher"), None);
        assert_eq!(
            serde_json::to_string(&recorded("npm node-pusher 0.0.2").fingerprint()).unwrap(),
            format!(
                r#"{{"library":"npm-node-pusher-0.0","id":"{}"}}"#,
                recorded("npm node-pusher 0.0.2").fingerprint().id
            )
        );
    }

    #[test]
    fn ids_parse_back() {
        let id = FingerprintId::of("anything");
        assert_eq!(id.as_str().len(), ID_LEN);
        assert_eq!(FingerprintId::parse(id.as_str()), Some(id));
        assert_eq!(FingerprintId::parse("0123456789AB"), None);
        assert_eq!(FingerprintId::parse("0123456789a"), None);
        assert_eq!(FingerprintId::parse("0123456789abc"), None);
        assert_eq!(FingerprintId::parse("0123456789ag"), None);
        assert_eq!(format!("{id:?}"), format!("FingerprintId({id})"));
    }

    #[test]
    fn value_classes() {
        assert_eq!(Body::of(b""), Body::Empty);
        assert_eq!(Body::of(b"hello, world"), Body::Text);
        assert_eq!(Body::of(b"  "), Body::Text);
        assert_eq!(Body::of(br#""hi, there: you""#), Body::NoSeparator);
        assert_eq!(Body::of(b"{}"), Body::NoSeparator);
        assert_eq!(Body::of(br#"{"a":1,"b":[1,2]}"#), Body::Compact);
        assert_eq!(Body::of(br#"{"a": 1, "b": [1, 2]}"#), Body::Spaced);
        assert_eq!(Body::of(br#"{"a": 1,"b":2}"#), Body::Mixed);
        assert_eq!(Body::of(b"{\n  \"a\": 1,\n  \"b\": 2\n}"), Body::Pretty);
        assert_eq!(Body::of(br#"{"a\"b:c":"x,y"}"#), Body::Compact);

        assert_eq!(HostClass::of(None), HostClass::Absent);
        for host in [
            "api.pusherapp.com",
            "API.PUSHERAPP.COM:80",
            "api-eu.pusher.com",
            "pusher.com.",
        ] {
            assert_eq!(HostClass::of(Some(host)), HostClass::Pusher, "{host}");
        }
        for host in [
            "127.0.0.1:8080",
            "notpusher.com",
            "pusher.com.evil.example",
            "[::1]:80",
            "",
        ] {
            assert_eq!(HostClass::of(Some(host)), HostClass::Other, "{host}");
        }

        assert_eq!(
            Encoding::of_path("/apps/1/channels/test-channel/events"),
            Encoding::Plain
        );
        assert_eq!(
            Encoding::of_path("/apps/1/channels/a%40b/events"),
            Encoding::Escaped
        );
        assert_eq!(
            Encoding::of_path("/apps/1/channels/a@b/events"),
            Encoding::Raw
        );
        assert_eq!(
            Encoding::of_path("/apps/1/channels/a@b%2C/events"),
            Encoding::Mixed
        );
        assert_eq!(
            Encoding::of_query_values("a=1&name=my-event&s=1.2"),
            Encoding::Plain
        );
        assert_eq!(
            Encoding::of_query_values("name=my%20event"),
            Encoding::Escaped
        );
        assert_eq!(
            Encoding::of_query_values("name=my+event&x=a=b"),
            Encoding::Raw
        );

        assert_eq!(ContentType::of(Some("application/JSON")), ContentType::Json);
        assert_eq!(
            ContentType::of(Some("application/json; charset=utf-8")),
            ContentType::JsonParams
        );
        assert_eq!(
            ContentType::of(Some("application/x-www-form-urlencoded")),
            ContentType::Form
        );
        assert_eq!(ContentType::of(Some("text/plain")), ContentType::Other);
        assert_eq!(Connection::of(Some("Close")), Connection::Close);
        assert_eq!(Connection::of(Some("TE, close")), Connection::Other);
        assert_eq!(
            AcceptEncoding::of(Some("identity")),
            AcceptEncoding::Identity
        );
        assert_eq!(Accept::of(Some("*/*")), Accept::Any);

        assert_eq!(Order::of("name=e&auth_key=k"), Order::Other);
        let many: String = (0..20).map(|i| format!("k{i}=v&")).collect();
        assert_eq!(Order::of(&many), Order::Other);
    }

    #[test]
    fn the_canonical_string_cannot_be_forged_by_keys() {
        let parts = head(
            "POST",
            "/apps/1/channels/c/events?a%2Cb=1&c;d=2&%C3%A9=3",
            &[("Host", "h")],
        );
        let query = QueryParams::parse(parts.uri.query().unwrap_or("")).unwrap();
        let canonical = Traits::new(&parts.headers, &parts.uri, &query, b"").canonical();
        assert!(
            canonical.contains(";q=a%252Cb,c%3Bd,%25C3%25A9;"),
            "{canonical}"
        );
        let long = format!("/x?{}=1", "k".repeat(100));
        let parts = head("GET", &long, &[("Host", "h")]);
        let query = QueryParams::parse(parts.uri.query().unwrap_or("")).unwrap();
        let canonical = Traits::new(&parts.headers, &parts.uri, &query, b"").canonical();
        assert!(
            canonical.contains(&format!(";q={};", "k".repeat(MAX_KEY_LEN))),
            "{canonical}"
        );
    }

    /// The whole claim: hyper's parser hands over a map whose iteration
    /// follows the wire, and classification of what it parsed matches.
    #[tokio::test]
    async fn what_hyper_parses_classifies_like_the_recording() {
        use http_body_util::BodyExt;
        use tokio::io::AsyncWriteExt;

        for r in fixture() {
            let (mut client, server) = tokio::io::duplex(64 * 1024);
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await?.to_bytes();
                        let _ = tx.send((parts, body));
                        Ok::<_, hyper::Error>(hyper::Response::new(http_body_util::Empty::<
                            bytes::Bytes,
                        >::new(
                        )))
                    }
                });
            let conn = tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(server), service),
            );
            client.write_all(&r.wire()).await.unwrap();
            let (parts, body) = rx.recv().await.unwrap();
            drop(client);
            let _ = conn.await;

            let names: Vec<&str> = parts.headers.keys().map(HeaderName::as_str).collect();
            let wire: Vec<String> = r
                .headers
                .iter()
                .map(|(n, _)| n.to_ascii_lowercase())
                .collect();
            assert_eq!(names, wire, "{}", r.title);
            assert_eq!(body, r.body.as_bytes());
            let query = QueryParams::parse(parts.uri.query().unwrap_or("")).unwrap();
            assert_eq!(
                classify(&parts, &query, &body),
                r.fingerprint(),
                "{}",
                r.title
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn classify_never_panics(
            headers in proptest::collection::vec(
                ("[A-Za-z0-9-]{1,20}", proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40)),
                0..40,
            ),
            path in "/[ -~]{0,60}",
            query in "[ -~]{0,200}",
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
        ) {
            let Ok(uri) = format!("{path}?{query}").parse::<Uri>() else {
                return Ok(());
            };
            let mut map = HeaderMap::new();
            for (name, value) in &headers {
                if let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    http::HeaderValue::from_bytes(value),
                ) {
                    map.append(name, value);
                }
            }
            let query = QueryParams::parse(uri.query().unwrap_or("")).unwrap_or_default();
            let traits = Traits::new(&map, &uri, &query, &body);
            let fingerprint = traits.fingerprint();
            proptest::prop_assert_eq!(fingerprint.id, FingerprintId::of(&traits.canonical()));
            proptest::prop_assert!(traits.canonical().is_ascii());
        }
    }
}
