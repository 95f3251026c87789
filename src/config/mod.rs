//! Configuration: TOML into serde structs, then into a validated [`Config`].
//!
//! Every problem found while validating is collected, so `validate` can list
//! them all at once; each names the key it is about.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper::Uri;
use secrecy::SecretString;
use serde::Deserialize;
use time::OffsetDateTime;

mod raw;
mod validate;

use raw::{RawApp, RawConfig};

/// The configuration used when `serve` is given no `--config`; the
/// `PUSHER_*` environment variables are laid over it (see [`Config::from_env`]).
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/default.toml");

/// Reads an environment variable; injected so tests need not touch the
/// process environment.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Reads the real process environment.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// A configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed, has an unknown key or a value of the wrong
    /// type. Said without the file's text or the value: the line could
    /// hold a secret (see [`ConfigError::syntax`]).
    #[error("config syntax at line {line}, column {column}: {message}")]
    Parse {
        /// The line of the error, from 1 (0: not known).
        line: usize,
        /// The column, from 1 (0: not known).
        column: usize,
        /// What is wrong, with any quoted value left out.
        message: String,
    },
    /// The values are well-formed but invalid; every problem is listed.
    #[error("invalid config: {}", Problems(.0))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    /// A TOML error in `text`, said by its line, column and message alone.
    /// toml's own text quotes the line (an unterminated
    /// `secret = "…` shows the secret) and serde's message the value
    /// (`invalid type: string "…", expected a sequence`), and this text
    /// reaches the log, `POST /reload`'s answer and `validate`: the line
    /// is left out, and so is every double-quoted part of the message.
    pub fn syntax(error: &toml::de::Error, text: &str) -> Self {
        let (line, column) = error.span().map_or((0, 0), |span| {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            (line, column)
        });
        Self::Parse {
            line,
            column,
            message: unquoted(error.message()),
        }
    }

    /// Every problem as one line each, for `validate`.
    pub fn problems(&self) -> Vec<String> {
        match self {
            Self::Invalid(problems) => problems.iter().map(ToString::to_string).collect(),
            other => vec![other.to_string()],
        }
    }
}

/// `message` on one line, with each value in it said as `"…"` or `` `…` ``.
/// serde quotes a string value in double quotes, escaping the quotes
/// within it (`"old\"tail"`), and, in an `invalid type` or `invalid value`
/// message, any other value in backticks (``integer `84736251904857` ``).
/// Elsewhere backticks hold names, kept: keys (``unknown field `secert` ``),
/// a setting's names, and the tokens TOML's grammar expected.
fn unquoted(message: &str) -> String {
    let message = message.trim();
    let values_in_ticks = ["invalid type", "invalid value"]
        .iter()
        .any(|start| message.starts_with(start));
    let mut out = String::with_capacity(message.len());
    let mut chars = message.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                // To the closing quote, past escaped ones; an unclosed
                // quote hides the rest.
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
                out.push_str("\"…\"");
            }
            '`' if values_in_ticks => {
                for c in chars.by_ref() {
                    if c == '`' {
                        break;
                    }
                }
                out.push_str("`…`");
            }
            c => out.push(c),
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// One invalid value, named by its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key, e.g. `apps[0].secret_env`.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

struct Problems<'a>(&'a [Problem]);

/// Collects problems while validating.
#[derive(Debug, Default)]
struct Collected(Vec<Problem>);

impl Collected {
    fn add(&mut self, key: &str, message: String) {
        self.0.push(Problem {
            key: key.into(),
            message,
        });
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn positive(&mut self, key: &str, value: u64) {
        if value == 0 {
            self.add(key, "must be greater than 0".into());
        }
    }
}

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Whether to ask the upstream for `subscription_count` when translating a
/// legacy stats call on a non-presence channel (spec E.2, E.5 item 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubscriptionCounting {
    /// Always ask; the answer carries `connection_count`.
    On,
    /// Never ask; the answer has no `connection_count`.
    Off,
    /// Ask; when the upstream says counting is disabled, retry without it
    /// and stop asking for a while.
    Probe,
}

/// What the proxy does with an app's deprecated calls (the cutover stages).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Forward them unchanged to an upstream that still serves them (Pusher
    /// does), and record them.
    Observe,
    /// Stats: answer from the unchanged call, also send the translated one
    /// and compare the answers. Triggers: as `observe` (never sent twice).
    Shadow,
    /// Translate them to the current API (the default).
    #[default]
    Translate,
    /// Answer 410 Gone, naming the replacement call.
    Reject,
}

impl Mode {
    /// The name used in the config file and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Observe => "observe",
            Self::Shadow => "shadow",
            Self::Translate => "translate",
            Self::Reject => "reject",
        }
    }
}

/// Where the `Link: <…>; rel="deprecation"` header points by default: the
/// current HTTP API reference.
pub const DEFAULT_DEPRECATION_LINK: &str =
    "https://pusher.com/docs/channels/library_auth_reference/rest-api/";

/// The smallest `max_header_bytes` (a request line with a signed query
/// must fit).
pub const MIN_HEADER_BYTES: usize = 4096;

/// The Unix times an HTTP-date (the `Sunset` header) can say: 1970-01-01
/// to 9999-12-31T23:59:59Z.
pub fn http_date_range() -> std::ops::RangeInclusive<i64> {
    0..=253_402_300_799
}

/// The largest `max_header_bytes`: hyper reads a request head into a
/// buffer of at most 400 KiB (its `max_buf_size`), so a larger setting
/// would not be honoured.
pub const MAX_HEADER_BYTES: usize = 256 * 1024;

/// The largest `max_connections` (tokio's semaphore holds fewer permits
/// than `usize::MAX`; each connection holds a socket besides).
pub const MAX_CONNECTIONS: usize = 1 << 20;

/// Hourly buckets are kept at least this many days (the shortest allowed
/// `retention_days`).
pub const MIN_RETENTION_DAYS: u64 = 30;

/// The ledger is written at least this often (the longest allowed
/// `flush_interval_ms`).
pub const MAX_FLUSH_INTERVAL_MS: u64 = 5_000;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the proxy listens.
    pub listen: SocketAddr,
    /// Inbound `auth_timestamp` must be less than this far from the clock.
    pub timestamp_window_secs: u64,
    /// Largest request body read on a legacy route (413 beyond).
    pub max_body_bytes: usize,
    /// Time a client has to send its request headers.
    pub header_timeout: Duration,
    /// Time a keep-alive connection may stay idle between requests.
    pub keepalive_timeout: Duration,
    /// On shutdown, how long requests in flight may take to finish.
    pub shutdown_grace: Duration,
    /// Time a client has to send a body the proxy reads (408 beyond).
    pub body_timeout: Duration,
    /// The kill switch: every request passes through unchanged.
    pub bypass: bool,
    /// Largest request line and headers (431 beyond).
    pub max_header_bytes: usize,
    /// Connections served at once; further ones wait to be accepted.
    pub max_connections: usize,
    /// Worker threads serving connections; 0 means one per core.
    pub workers: usize,
    /// Inbound TLS, when set.
    pub tls: Option<TlsConfig>,
    /// Where requests go.
    pub upstream: UpstreamConfig,
    /// How legacy triggers are coalesced into `batch_events` requests
    /// (`upstream.batch_in_flight`, `upstream.batch_max`). Kept out of
    /// [`UpstreamConfig`], so that changing them on reload keeps the
    /// upstream's connections.
    pub batching: Batching,
    /// The admin listener.
    pub admin: AdminConfig,
    /// Metrics, ledger and deprecation headers.
    pub telemetry: TelemetryConfig,
    /// The apps whose legacy calls are translated.
    pub apps: Vec<AppConfig>,
    /// A hash of the configuration's source text (16 hex digits), to tell
    /// which configuration a sidecar runs; the values of its inline
    /// secrets (`secret`, `previous_secrets`, `upstream.secret`,
    /// `admin.token`) are left out, as those named by `secret_env` or
    /// `secret_file` are: the hash is published unauthenticated
    /// (`/readyz`, `/metrics`), and a hash of a guessable secret would
    /// let anyone who knows the rest of the file test guesses offline.
    pub hash: String,
}

/// The first 16 hex digits of the SHA-256 of `text`.
fn source_hash(text: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(text.as_bytes());
    base16ct::lower::encode_string(&digest[..8])
}

/// [`source_hash`] of a configuration file's `text` with each inline
/// secret's literal (quotes and all) replaced by `"…"`, so that the hash
/// says which settings and layout a sidecar runs and nothing about its
/// secrets. `text` must already parse as the configuration; should the
/// secrets' reading ever fail where the configuration's did not (a form
/// of a key [`secrets`] does not know), the hash is of nothing of the
/// text rather than of its secrets (and a debug build stops).
fn config_text_hash(text: &str) -> String {
    let Some(mut spans) = secrets::spans(text) else {
        debug_assert!(false, "a configuration whose secrets cannot be read");
        return source_hash("secrets unreadable");
    };
    if spans.is_empty() {
        return source_hash(text);
    }
    spans.sort_unstable_by_key(|s| s.start);
    let mut blanked = String::with_capacity(text.len());
    let mut at = 0;
    for span in spans {
        if span.start < at || span.end > text.len() {
            continue;
        }
        blanked.push_str(&text[at..span.start]);
        blanked.push_str("\"…\"");
        at = span.end;
    }
    blanked.push_str(&text[at..]);
    source_hash(&blanked)
}

/// Where a configuration file's inline secrets are, read by serde with
/// their spans (every other key ignored).
mod secrets {
    use serde::Deserialize;
    use std::ops::Range;
    use toml::Spanned;

    #[derive(Deserialize)]
    struct File {
        #[serde(default)]
        admin: Option<Admin>,
        #[serde(default)]
        apps: Vec<App>,
    }

    #[derive(Deserialize)]
    struct Admin {
        token: Option<Spanned<String>>,
    }

    #[derive(Deserialize)]
    struct App {
        secret: Option<Spanned<String>>,
        #[serde(default)]
        previous_secrets: Vec<Spanned<String>>,
        upstream: Option<Upstream>,
    }

    #[derive(Deserialize)]
    struct Upstream {
        secret: Option<Spanned<String>>,
    }

    /// The byte ranges of `text`'s inline secrets' values; `None` when it
    /// does not parse.
    pub(super) fn spans(text: &str) -> Option<Vec<Range<usize>>> {
        let file = toml::from_str::<File>(text).ok()?;
        let mut spans = Vec::new();
        if let Some(token) = file.admin.and_then(|a| a.token) {
            spans.push(token.span());
        }
        for app in file.apps {
            spans.extend(app.secret.map(|s| s.span()));
            spans.extend(app.previous_secrets.iter().map(Spanned::span));
            spans.extend(app.upstream.and_then(|u| u.secret).map(|s| s.span()));
        }
        Some(spans)
    }
}

/// Inbound TLS: PEM files of the certificate chain and its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// The certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The admin listener (`/metrics`, `/healthz`, `/readyz`, `/usage`, `/report`).
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Where it listens; `None` when disabled.
    pub listen: Option<SocketAddr>,
    /// The bearer token `/usage`, `/report` and `POST /reload` require
    /// (`[admin] token` or the variable named by `token_env`); without one
    /// they are served only on a loopback address.
    pub token: Option<SecretString>,
}

/// Migration telemetry settings.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// Where the usage ledger is stored; `None` keeps it in memory only.
    pub data_dir: Option<PathBuf>,
    /// Distinct callers kept apart per app; the rest are summed as `other`.
    pub max_callers_per_app: usize,
    /// How often the ledger is written to `data_dir`.
    pub flush_interval: Duration,
    /// How long hourly buckets are kept.
    pub retention_days: u64,
    /// The `Link: <…>; rel="deprecation"` target on legacy answers.
    pub deprecation_link: String,
    /// This sidecar's name, recorded with its callers and served in
    /// `/usage`: `[telemetry] instance`, else `POD_NAME`, else `HOSTNAME`,
    /// else the host's name.
    pub instance: String,
}

/// The upstream Pusher-compatible server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// Scheme and authority only, e.g. `https://api-mt1.pusher.com`.
    pub url: Uri,
    /// Bound on a whole upstream exchange (504 beyond).
    pub timeout: Duration,
    /// Bound on establishing a connection (502 beyond).
    pub connect_timeout: Duration,
    /// Upstream exchanges in flight at once; further ones wait (within
    /// `timeout`). Each worker keeps at most its share of this many idle
    /// connections.
    pub max_connections: usize,
    /// The HTTP version spoken to the upstream (`upstream.protocol`).
    pub protocol: UpstreamProtocol,
    /// `upstream.ping_interval_ms`: an HTTP/2 connection from which
    /// nothing has been read for this long is sent a PING, and closed when
    /// the PING is not answered within as long again (at least
    /// [`crate::upstream::MIN_PING_ACK_WAIT`]); also the idle time
    /// after which TCP keep-alive probes start on every upstream
    /// connection. `None` (0 in the file): neither.
    pub ping_interval: Option<Duration>,
    /// `upstream.idle_timeout_ms`: how long an upstream connection with
    /// no exchange on it is kept for the next one. Meant to be shorter
    /// than the upstream's own keep-alive timeout, so that a request is
    /// not sent on a connection the upstream is closing.
    pub idle_timeout: Duration,
    /// `upstream.ca_file`'s certificates (DER), read at load: on
    /// `https://`, the only roots the upstream's certificate is checked
    /// against (a self-hosted server under a private CA); `None`: the
    /// Mozilla roots (webpki-roots).
    pub ca_certificates: Option<Vec<pki_types::CertificateDer<'static>>>,
}

/// The most `upstream.max_connections` may be: far above any upstream's
/// appetite, and low enough that the exchange slots and the per-worker
/// HTTP/2 clients built for it stay small.
pub const MAX_UPSTREAM_EXCHANGES: usize = 65_536;

/// The HTTP version spoken to the upstream (`upstream.protocol`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/2 when TLS negotiates it (ALPN) on `https://`, HTTP/1.1 on
    /// `http://` (the default).
    #[default]
    Auto,
    /// HTTP/2 with prior knowledge over cleartext `http://` (h2c): for
    /// servers such as Sockudo that close every HTTP/1 connection after one
    /// answer but keep an HTTP/2 one open.
    H2c,
    /// HTTP/1.1 only, also on `https://`.
    Http1,
}

impl UpstreamProtocol {
    /// The name used in the config file and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::H2c => "h2c",
            Self::Http1 => "http1",
        }
    }
}

/// Pusher's limit on events in one `POST /apps/{id}/batch_events`, and
/// `upstream.batch_max`'s default and its ceiling when the upstream is
/// Pusher's own service.
pub const PUSHER_MAX_BATCH_EVENTS: usize = 10;

/// The ceiling of `upstream.batch_max` for any other upstream: the limit
/// of the app Sockudo builds from its environment (`max_event_batch_size`,
/// 100; an app from its config file has none unless set; soketi's default
/// is 10). The operator sets `batch_max` no higher than the upstream app's
/// limit, which refuses a larger batch whole.
///
/// Batched events carry at most 10 KiB of data each
/// (`routes::coalesce::MAX_BATCHED_DATA_BYTES`) and names of at most 200
/// bytes, and a batch stops taking events before its body could pass
/// 768 KiB (`routes::coalesce::MAX_BATCH_BYTES`): under the 1 MiB that
/// nginx and its ingress take by default in front of an upstream, and
/// Sockudo's own limit (`request_limit_in_mb`, 10).
pub const MAX_BATCH_EVENTS: usize = 100;

/// Coalescing of legacy triggers, per app, like a database's group commit:
/// while `in_flight` trigger requests are on the wire, further triggers
/// queue, and the queue leaves as one `batch_events` request of at most
/// `max` events when one of them returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Trigger requests on the wire per app before triggers queue (≥ 1).
    pub in_flight: usize,
    /// Events in one batch, 1 to [`PUSHER_MAX_BATCH_EVENTS`] on Pusher,
    /// to [`MAX_BATCH_EVENTS`] on any other upstream; 1 turns coalescing
    /// off.
    pub max: usize,
}

impl Batching {
    /// Whether triggers are coalesced at all.
    pub fn enabled(&self) -> bool {
        self.max > 1
    }
}

/// One app's credentials and translation settings.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// The app id legacy callers use, as it appears in the path.
    pub id: String,
    /// The app key legacy callers sign with (public; `auth_key`).
    pub key: String,
    /// Secrets accepted from callers: the current one first, then
    /// `previous_secrets` (during a rotation).
    pub secrets: Vec<SecretString>,
    /// What the upstream knows the app as; the proxy signs with these.
    pub upstream: Credentials,
    /// Whether stats translation asks for `subscription_count`.
    pub subscription_count: SubscriptionCounting,
    /// Largest legacy event data accepted (413 beyond, before forwarding):
    /// set, or Pusher's 10,240 behind Pusher, or else `max_body_bytes`
    /// (the upstream's own limit decides, spec E.5 item 13).
    pub max_data_bytes: usize,
    /// When the app's legacy calls stop being served (`Sunset` header).
    pub sunset: Option<OffsetDateTime>,
    /// The cutover stage.
    pub mode: Mode,
    /// With `translate`: the share of channels translated (the rest are
    /// observed), 0-100.
    pub rollout_percent: u8,
    /// Windows in which legacy calls get the 410 of `reject`.
    pub brownouts: Vec<Brownout>,
}

impl AppConfig {
    /// Whether the upstream knows the app by other credentials than its
    /// callers use; then passthrough requests are re-signed too.
    pub fn is_mapped(&self) -> bool {
        use secrecy::ExposeSecret;
        self.upstream.id != self.id
            || self.upstream.key != self.key
            || self
                .secrets
                .first()
                .is_none_or(|s| s.expose_secret() != self.upstream.secret.expose_secret())
    }

    /// Whether the proxy re-signs the app's calls it forwards in their own
    /// form (legacy calls in `observe` and `shadow`; current-API calls
    /// signed with its key, verified first): when the upstream knows the
    /// app by other credentials ([`AppConfig::is_mapped`]), and during a
    /// rotation (`previous_secrets`), since the upstream knows only the
    /// current secret and would refuse a call signed with an older one
    /// that the proxy accepted.
    pub fn resigns(&self) -> bool {
        self.is_mapped() || self.secrets.len() > 1
    }

    /// Whether Unix time `now` falls in a brownout window.
    pub fn in_brownout(&self, now: u64) -> bool {
        let now = i64::try_from(now).unwrap_or(i64::MAX);
        self.brownouts
            .iter()
            .any(|b| b.start.unix_timestamp() <= now && now < b.end.unix_timestamp())
    }
}

/// An app id, key and secret.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The app id.
    pub id: String,
    /// The key.
    pub key: String,
    /// The secret.
    pub secret: SecretString,
}

/// A window `[start, end)` in which legacy calls are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Brownout {
    /// Its start.
    pub start: OffsetDateTime,
    /// Its end (excluded).
    pub end: OffsetDateTime,
}

/// Most worker threads `workers` may ask for.
const MAX_WORKERS: usize = 1024;

impl Config {
    /// Worker threads to start: `workers`, or one per core when it is 0.
    pub fn workers(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// Settings that are valid each on its own but work against each
    /// other: logged at start and at each reload, printed by `validate`.
    /// None refuses the configuration: each only narrows what a setting
    /// does, and refusing would stop a proxy that ran before.
    pub fn cautions(&self) -> Vec<Problem> {
        let mut cautions = Vec::new();
        let up = &self.upstream;
        if self.shutdown_grace < up.timeout * 2 {
            cautions.push(Problem {
                key: "shutdown_grace_ms".into(),
                message: format!(
                    "{} ms is less than twice upstream.timeout_ms ({} ms): a legacy trigger \
                     queued when a drain begins may take that long (its wait in the queue, then \
                     its batch's exchange), and its batch may be cut after the upstream took it",
                    self.shutdown_grace.as_millis(),
                    up.timeout.as_millis()
                ),
            });
        }
        if up.connect_timeout >= up.timeout {
            cautions.push(Problem {
                key: "upstream.connect_timeout_ms".into(),
                message: format!(
                    "{} ms is not less than upstream.timeout_ms ({} ms), which bounds the whole \
                     exchange, connect included: a connect that stalls is answered 504, never 502",
                    up.connect_timeout.as_millis(),
                    up.timeout.as_millis()
                ),
            });
        }
        cautions
    }

    /// Loads and validates a TOML file.
    pub fn from_file(path: &Path, env: EnvLookup<'_>) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml_str(&text, env)
    }

    /// Parses and validates TOML text.
    pub fn from_toml_str(text: &str, env: EnvLookup<'_>) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::syntax(&e, text))?;
        let mut config = raw.validate(env)?;
        config.hash = config_text_hash(text);
        Ok(config)
    }

    /// The embedded default with the ecosystem's usual variables laid over
    /// it: `PUSHER_APP_ID`, `PUSHER_APP_KEY`, `PUSHER_APP_SECRET` define the
    /// app; `PUSHER_HOST` (with `PUSHER_PORT`, `PUSHER_SCHEME`, default
    /// `https`) names a self-hosted upstream, otherwise `PUSHER_CLUSTER`
    /// (default `mt1`) selects `https://api-CLUSTER.pusher.com`.
    pub fn from_env(env: EnvLookup<'_>) -> Result<Self, ConfigError> {
        let mut raw: RawConfig = toml::from_str(EMBEDDED_DEFAULT)
            .map_err(|e| ConfigError::syntax(&e, EMBEDDED_DEFAULT))?;
        let mut problems = Vec::new();
        let var = |name: &str| env(name).filter(|v| !v.is_empty());
        if let Some(host) = var("PUSHER_HOST") {
            let scheme = var("PUSHER_SCHEME").unwrap_or_else(|| "https".into());
            raw.upstream.url = match var("PUSHER_PORT") {
                Some(port) => format!("{scheme}://{host}:{port}"),
                None => format!("{scheme}://{host}"),
            };
        } else if let Some(cluster) = var("PUSHER_CLUSTER") {
            raw.upstream.url = format!("https://api-{cluster}.pusher.com");
        }
        let app_vars = ["PUSHER_APP_ID", "PUSHER_APP_KEY", "PUSHER_APP_SECRET"];
        let values: Vec<Option<String>> = app_vars.iter().map(|v| var(v)).collect();
        match values.as_slice() {
            [Some(id), Some(key), Some(_)] => raw.apps.push(RawApp {
                id: id.clone(),
                key: key.clone(),
                secret: None,
                secret_env: Some("PUSHER_APP_SECRET".into()),
                secret_file: None,
                subscription_count: None,
                max_data_bytes: None,
                sunset: None,
                previous_secrets: Vec::new(),
                previous_secrets_file: None,
                mode: Mode::default(),
                rollout_percent: None,
                brownouts: Vec::new(),
                upstream: None,
            }),
            [None, None, None] => {}
            _ => {
                for (name, value) in app_vars.iter().zip(&values) {
                    if value.is_none() {
                        problems.push(Problem {
                            key: (*name).into(),
                            message: "must be set when any of PUSHER_APP_ID, PUSHER_APP_KEY, \
                                      PUSHER_APP_SECRET is"
                                .into(),
                        });
                    }
                }
            }
        }
        let mut source = EMBEDDED_DEFAULT.to_owned();
        for name in [
            "PUSHER_APP_ID",
            "PUSHER_APP_KEY",
            "PUSHER_HOST",
            "PUSHER_PORT",
            "PUSHER_SCHEME",
            "PUSHER_CLUSTER",
        ] {
            source.push_str(&format!("\n{name}={}", var(name).unwrap_or_default()));
        }
        match raw.validate(env) {
            Ok(mut config) if problems.is_empty() => {
                config.hash = source_hash(&source);
                Ok(config)
            }
            Ok(_) => Err(ConfigError::Invalid(problems)),
            Err(ConfigError::Invalid(more)) => {
                problems.extend(more);
                Err(ConfigError::Invalid(problems))
            }
            Err(other) => Err(other),
        }
    }
}

#[cfg(test)]
mod tests;
