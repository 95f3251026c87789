//! Configuration: TOML into serde structs, then into a validated [`Config`].
//!
//! Every problem found while validating is collected, so `validate` can list
//! them all at once; each names the key it is about.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper::Uri;
use secrecy::SecretString;
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

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
    /// The TOML is malformed, has an unknown key or a value of the wrong type.
    #[error("config syntax: {0}")]
    Parse(#[from] toml::de::Error),
    /// The values are well-formed but invalid; every problem is listed.
    #[error("invalid config: {}", Problems(.0))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    /// Every problem as one line each, for `validate`.
    pub fn problems(&self) -> Vec<String> {
        match self {
            Self::Invalid(problems) => problems.iter().map(ToString::to_string).collect(),
            other => vec![other.to_string()],
        }
    }
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_listen")]
    listen: String,
    #[serde(default = "default_window")]
    timestamp_window_secs: u64,
    #[serde(default = "default_max_body")]
    max_body_bytes: usize,
    #[serde(default = "default_header_timeout")]
    header_timeout_ms: u64,
    #[serde(default = "default_shutdown_grace")]
    shutdown_grace_ms: u64,
    #[serde(default = "default_body_timeout")]
    body_timeout_ms: u64,
    #[serde(default)]
    bypass: bool,
    #[serde(default = "default_max_header_bytes")]
    max_header_bytes: usize,
    #[serde(default = "default_max_connections")]
    max_connections: usize,
    #[serde(default)]
    workers: usize,
    tls: Option<RawTls>,
    upstream: RawUpstream,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    telemetry: RawTelemetry,
    #[serde(default)]
    apps: Vec<RawApp>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    #[serde(default = "default_true")]
    enabled: bool,
    #[serde(default = "default_admin_listen")]
    listen: String,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: default_admin_listen(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTelemetry {
    data_dir: Option<PathBuf>,
    #[serde(default = "default_max_callers")]
    max_callers_per_app: usize,
    #[serde(default = "default_flush_interval")]
    flush_interval_ms: u64,
    #[serde(default = "default_retention_days")]
    retention_days: u64,
    #[serde(default = "default_deprecation_link")]
    deprecation_link: String,
}

impl Default for RawTelemetry {
    fn default() -> Self {
        Self {
            data_dir: None,
            max_callers_per_app: default_max_callers(),
            flush_interval_ms: default_flush_interval(),
            retention_days: default_retention_days(),
            deprecation_link: default_deprecation_link(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    url: String,
    #[serde(default = "default_upstream_timeout")]
    timeout_ms: u64,
    #[serde(default = "default_connect_timeout")]
    connect_timeout_ms: u64,
    #[serde(default = "default_upstream_connections")]
    max_connections: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    id: String,
    key: String,
    secret: Option<String>,
    secret_env: Option<String>,
    #[serde(default)]
    previous_secrets: Vec<String>,
    subscription_count: Option<SubscriptionCounting>,
    #[serde(default = "default_max_data")]
    max_data_bytes: usize,
    sunset: Option<String>,
    #[serde(default)]
    mode: Mode,
    rollout_percent: Option<u8>,
    #[serde(default)]
    brownouts: Vec<RawBrownout>,
    upstream: Option<RawAppUpstream>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBrownout {
    start: String,
    end: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAppUpstream {
    id: Option<String>,
    key: Option<String>,
    secret: Option<String>,
    secret_env: Option<String>,
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

fn default_true() -> bool {
    true
}
fn default_admin_listen() -> String {
    "127.0.0.1:9090".into()
}
fn default_max_callers() -> usize {
    100
}
fn default_flush_interval() -> u64 {
    5_000
}
fn default_retention_days() -> u64 {
    35
}
fn default_deprecation_link() -> String {
    DEFAULT_DEPRECATION_LINK.into()
}

/// Where the `Link: <…>; rel="deprecation"` header points by default: the
/// current HTTP API reference.
pub const DEFAULT_DEPRECATION_LINK: &str =
    "https://pusher.com/docs/channels/library_auth_reference/rest-api/";

/// The smallest `max_header_bytes` (a request line with a signed query
/// must fit).
pub const MIN_HEADER_BYTES: usize = 4096;

/// Hourly buckets are kept at least this many days (the shortest allowed
/// `retention_days`).
pub const MIN_RETENTION_DAYS: u64 = 30;

/// The ledger is written at least this often (the longest allowed
/// `flush_interval_ms`).
pub const MAX_FLUSH_INTERVAL_MS: u64 = 5_000;

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_window() -> u64 {
    600
}
fn default_max_body() -> usize {
    1024 * 1024
}
fn default_header_timeout() -> u64 {
    10_000
}
fn default_max_header_bytes() -> usize {
    32 * 1024
}
fn default_max_connections() -> usize {
    4096
}
fn default_body_timeout() -> u64 {
    10_000
}
fn default_shutdown_grace() -> u64 {
    30_000
}
fn default_upstream_timeout() -> u64 {
    10_000
}
/// 64 exchanges in flight carry ~1,300 calls/s at 50 ms per exchange
/// (Pusher over the internet) and far more on a nearby upstream.
fn default_upstream_connections() -> usize {
    64
}
fn default_connect_timeout() -> u64 {
    3_000
}
fn default_max_data() -> usize {
    10_240
}

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
    /// The admin listener.
    pub admin: AdminConfig,
    /// Metrics, ledger and deprecation headers.
    pub telemetry: TelemetryConfig,
    /// The apps whose legacy calls are translated.
    pub apps: Vec<AppConfig>,
    /// A hash of the configuration's source text (16 hex digits), to tell
    /// which configuration a sidecar runs.
    pub hash: String,
}

/// The first 16 hex digits of the SHA-256 of `text`.
fn source_hash(text: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(text.as_bytes());
    base16ct::lower::encode_string(&digest[..8])
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
    /// Largest legacy event data accepted (413 beyond, before forwarding).
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
        let raw: RawConfig = toml::from_str(text)?;
        let mut config = raw.validate(env)?;
        config.hash = source_hash(text);
        Ok(config)
    }

    /// The embedded default with the ecosystem's usual variables laid over
    /// it: `PUSHER_APP_ID`, `PUSHER_APP_KEY`, `PUSHER_APP_SECRET` define the
    /// app; `PUSHER_HOST` (with `PUSHER_PORT`, `PUSHER_SCHEME`, default
    /// `https`) names a self-hosted upstream, otherwise `PUSHER_CLUSTER`
    /// (default `mt1`) selects `https://api-CLUSTER.pusher.com`.
    pub fn from_env(env: EnvLookup<'_>) -> Result<Self, ConfigError> {
        let mut raw: RawConfig = toml::from_str(EMBEDDED_DEFAULT)?;
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
                subscription_count: None,
                max_data_bytes: default_max_data(),
                sunset: None,
                previous_secrets: Vec::new(),
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

impl RawConfig {
    fn validate(self, env: EnvLookup<'_>) -> Result<Config, ConfigError> {
        let mut problems = Collected::default();

        let listen = self.listen.parse::<SocketAddr>().unwrap_or_else(|e| {
            problems.add(
                "listen",
                format!("`{}` is not an address:port ({e})", self.listen),
            );
            SocketAddr::from(([127, 0, 0, 1], 0))
        });
        problems.positive("timestamp_window_secs", self.timestamp_window_secs);
        problems.positive("max_body_bytes", self.max_body_bytes as u64);
        problems.positive("header_timeout_ms", self.header_timeout_ms);
        problems.positive("shutdown_grace_ms", self.shutdown_grace_ms);
        problems.positive("body_timeout_ms", self.body_timeout_ms);
        problems.positive("max_connections", self.max_connections as u64);
        if self.workers > MAX_WORKERS {
            problems.add(
                "workers",
                format!("must be at most {MAX_WORKERS} (0: one per core)"),
            );
        }
        if self.max_header_bytes < MIN_HEADER_BYTES {
            problems.add(
                "max_header_bytes",
                format!("must be at least {MIN_HEADER_BYTES}"),
            );
        }
        if let Some(tls) = &self.tls {
            for (name, path) in [("tls.cert", &tls.cert), ("tls.key", &tls.key)] {
                if !path.is_file() {
                    problems.add(name, format!("`{}` is not a readable file", path.display()));
                }
            }
        }
        problems.positive("upstream.timeout_ms", self.upstream.timeout_ms);
        problems.positive(
            "upstream.connect_timeout_ms",
            self.upstream.connect_timeout_ms,
        );
        problems.positive(
            "upstream.max_connections",
            self.upstream.max_connections as u64,
        );

        let admin_listen = if self.admin.enabled {
            match self.admin.listen.parse::<SocketAddr>() {
                Ok(addr) if addr.port() != 0 && addr == listen => {
                    problems.add(
                        "admin.listen",
                        format!("`{addr}` is also the proxy's `listen`"),
                    );
                    None
                }
                Ok(addr) => Some(addr),
                Err(e) => {
                    problems.add(
                        "admin.listen",
                        format!("`{}` is not an address:port ({e})", self.admin.listen),
                    );
                    None
                }
            }
        } else {
            None
        };
        let t = &self.telemetry;
        problems.positive(
            "telemetry.max_callers_per_app",
            t.max_callers_per_app as u64,
        );
        if !(1..=MAX_FLUSH_INTERVAL_MS).contains(&t.flush_interval_ms) {
            problems.add(
                "telemetry.flush_interval_ms",
                format!("must be between 1 and {MAX_FLUSH_INTERVAL_MS}"),
            );
        }
        if t.retention_days < MIN_RETENTION_DAYS {
            problems.add(
                "telemetry.retention_days",
                format!("must be at least {MIN_RETENTION_DAYS}"),
            );
        }
        let link_ok = t
            .deprecation_link
            .parse::<Uri>()
            .is_ok_and(|u| u.scheme().is_some() && u.host().is_some())
            && !t.deprecation_link.contains(['<', '>', '"']);
        if !link_ok {
            problems.add(
                "telemetry.deprecation_link",
                format!("`{}` is not an absolute URL", t.deprecation_link),
            );
        }

        let url = match parse_upstream_url(&self.upstream.url) {
            Ok(url) => url,
            Err(message) => {
                problems.add("upstream.url", message);
                Uri::from_static("http://invalid")
            }
        };
        let is_pusher = url
            .host()
            .is_some_and(|h| h.ends_with(".pusher.com") || h.ends_with(".pusherapp.com"));
        let default_counting = if is_pusher {
            SubscriptionCounting::Probe
        } else {
            SubscriptionCounting::On
        };

        let mut ids = HashSet::new();
        let mut apps = Vec::with_capacity(self.apps.len());
        for (i, app) in self.apps.into_iter().enumerate() {
            if !ids.insert(app.id.clone()) {
                problems.add(
                    &format!("apps[{i}].id"),
                    format!("app `{}` is defined twice", app.id),
                );
                continue;
            }
            if let Some(app) = validate_app(i, app, env, default_counting, &mut problems) {
                apps.push(app);
            }
        }

        if problems.len() > 0 {
            return Err(ConfigError::Invalid(problems.0));
        }
        Ok(Config {
            listen,
            timestamp_window_secs: self.timestamp_window_secs,
            max_body_bytes: self.max_body_bytes,
            header_timeout: Duration::from_millis(self.header_timeout_ms),
            shutdown_grace: Duration::from_millis(self.shutdown_grace_ms),
            body_timeout: Duration::from_millis(self.body_timeout_ms),
            bypass: self.bypass,
            max_header_bytes: self.max_header_bytes,
            max_connections: self.max_connections,
            workers: self.workers,
            tls: self.tls.map(|t| TlsConfig {
                cert: t.cert,
                key: t.key,
            }),
            upstream: UpstreamConfig {
                url,
                timeout: Duration::from_millis(self.upstream.timeout_ms),
                connect_timeout: Duration::from_millis(self.upstream.connect_timeout_ms),
                max_connections: self.upstream.max_connections,
            },
            admin: AdminConfig {
                listen: admin_listen,
            },
            telemetry: TelemetryConfig {
                data_dir: self.telemetry.data_dir,
                max_callers_per_app: self.telemetry.max_callers_per_app,
                flush_interval: Duration::from_millis(self.telemetry.flush_interval_ms),
                retention_days: self.telemetry.retention_days,
                deprecation_link: self.telemetry.deprecation_link,
            },
            apps,
            hash: String::new(),
        })
    }
}

/// A secret given inline or through an environment variable.
fn secret_from(
    inline: Option<String>,
    var: Option<String>,
    env: EnvLookup<'_>,
    key: &dyn Fn(&str) -> String,
    problems: &mut Collected,
) -> Option<SecretString> {
    match (inline, var) {
        (Some(s), None) if !s.is_empty() => Some(SecretString::from(s)),
        (Some(_), None) => {
            problems.add(&key("secret"), "must not be empty".into());
            None
        }
        (None, Some(var)) => match env(&var).filter(|v| !v.is_empty()) {
            Some(s) => Some(SecretString::from(s)),
            None => {
                problems.add(
                    &key("secret_env"),
                    format!("environment variable `{var}` is not set or empty"),
                );
                None
            }
        },
        (Some(_), Some(_)) => {
            problems.add(
                &key("secret"),
                "set `secret` or `secret_env`, not both".into(),
            );
            None
        }
        (None, None) => {
            problems.add(
                &key("secret"),
                "one of `secret` or `secret_env` is required".into(),
            );
            None
        }
    }
}

fn parse_time(text: &str, key: &str, problems: &mut Collected) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339)
        .inspect_err(|e| problems.add(key, format!("`{text}` is not an RFC 3339 date-time ({e})")))
        .ok()
}

fn valid_app_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && !id.contains(['/', '?', '#', '%'])
        && format!("/apps/{id}/events")
            .parse::<hyper::http::uri::PathAndQuery>()
            .is_ok()
}

/// Validates one `[[apps]]` entry; `None` when it has problems.
fn validate_app(
    i: usize,
    app: RawApp,
    env: EnvLookup<'_>,
    default_counting: SubscriptionCounting,
    problems: &mut Collected,
) -> Option<AppConfig> {
    let before = problems.len();
    let key = |field: &str| format!("apps[{i}].{field}");
    const ID_RULE: &str =
        "must be 1-64 characters legal in a URL path, without `/`, `?`, `#` or `%`";
    if !valid_app_id(&app.id) {
        problems.add(&key("id"), ID_RULE.into());
    }
    if app.key.is_empty() {
        problems.add(&key("key"), "must not be empty".into());
    }
    problems.positive(&key("max_data_bytes"), app.max_data_bytes as u64);
    let sunset = app
        .sunset
        .as_deref()
        .and_then(|t| parse_time(t, &key("sunset"), problems));
    let rollout_percent = match (app.rollout_percent, app.mode) {
        (None, _) => 100,
        (Some(n), Mode::Translate) if n <= 100 => n,
        (Some(_), Mode::Translate) => {
            problems.add(&key("rollout_percent"), "must be between 0 and 100".into());
            100
        }
        (Some(_), _) => {
            problems.add(
                &key("rollout_percent"),
                "applies only with mode = \"translate\"".into(),
            );
            100
        }
    };
    let mut brownouts = Vec::with_capacity(app.brownouts.len());
    for (j, b) in app.brownouts.iter().enumerate() {
        let bkey = |f: &str| key(&format!("brownouts[{j}].{f}"));
        let start = parse_time(&b.start, &bkey("start"), problems);
        let end = parse_time(&b.end, &bkey("end"), problems);
        if let (Some(start), Some(end)) = (start, end) {
            if start < end {
                brownouts.push(Brownout { start, end });
            } else {
                problems.add(&bkey("end"), "must be after `start`".into());
            }
        }
    }
    let secret = secret_from(app.secret, app.secret_env, env, &key, problems);
    let mut secrets: Vec<SecretString> = secret.iter().cloned().collect();
    for (j, s) in app.previous_secrets.into_iter().enumerate() {
        if s.is_empty() {
            problems.add(
                &key(&format!("previous_secrets[{j}]")),
                "must not be empty".into(),
            );
        }
        secrets.push(SecretString::from(s));
    }
    let upstream = match app.upstream {
        None => secret.clone().map(|secret| Credentials {
            id: app.id.clone(),
            key: app.key.clone(),
            secret,
        }),
        Some(u) => {
            let ukey = |f: &str| key(&format!("upstream.{f}"));
            let id = u.id.unwrap_or_else(|| app.id.clone());
            if !valid_app_id(&id) {
                problems.add(&ukey("id"), ID_RULE.into());
            }
            let up_key = u.key.unwrap_or_else(|| app.key.clone());
            if up_key.is_empty() {
                problems.add(&ukey("key"), "must not be empty".into());
            }
            let up_secret = if u.secret.is_none() && u.secret_env.is_none() {
                secret.clone()
            } else {
                secret_from(u.secret, u.secret_env, env, &ukey, problems)
            };
            up_secret.map(|secret| Credentials {
                id,
                key: up_key,
                secret,
            })
        }
    };
    if problems.len() > before {
        return None;
    }
    Some(AppConfig {
        id: app.id,
        key: app.key,
        secrets,
        upstream: upstream?,
        subscription_count: app.subscription_count.unwrap_or(default_counting),
        max_data_bytes: app.max_data_bytes,
        sunset,
        mode: app.mode,
        rollout_percent,
        brownouts,
    })
}

/// Accepts `http://host[:port]` or `https://host[:port]`, with no path
/// beyond `/`, no query and no user info: the signed path must be exactly
/// `/apps/…`, so the upstream cannot live under a prefix.
fn parse_upstream_url(text: &str) -> Result<Uri, String> {
    let uri: Uri = text
        .parse()
        .map_err(|e| format!("`{text}` is not a URL ({e})"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("`{text}` must start with http:// or https://")),
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("`{text}` has no host"));
    };
    if authority.as_str().contains('@') {
        return Err(format!("`{text}` must not carry user info"));
    }
    if uri.path_and_query().is_some_and(|pq| pq.as_str() != "/") {
        return Err(format!(
            "`{text}` must not have a path or query: requests keep their own /apps/… path"
        ));
    }
    Uri::builder()
        .scheme(uri.scheme_str().unwrap_or("http"))
        .authority(authority.clone())
        .path_and_query("/")
        .build()
        .map_err(|e| format!("`{text}` is not a URL ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn shipped_examples_are_valid() {
        let vars = env(&[("PUSHER_APP_SECRET", "s")]);
        for (name, text) in [
            ("example.toml", include_str!("../../config/example.toml")),
            (
                "sockudo-local.toml",
                include_str!("../../config/sockudo-local.toml"),
            ),
        ] {
            Config::from_toml_str(text, &vars).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn minimal_config_and_defaults() {
        let c = Config::from_toml_str(
            r#"
            [upstream]
            url = "http://127.0.0.1:6001"
            [[apps]]
            id = "4242"
            key = "k"
            secret = "s"
            "#,
            &env(&[]),
        )
        .expect("valid");
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.timestamp_window_secs, 600);
        assert_eq!(c.upstream.timeout, Duration::from_secs(10));
        assert_eq!(c.upstream.url.to_string(), "http://127.0.0.1:6001/");
        let app = c.apps.iter().find(|a| a.id == "4242").expect("app");
        assert_eq!(app.subscription_count, SubscriptionCounting::On);
        assert_eq!(app.max_data_bytes, 10_240);
        assert_eq!(app.secrets[0].expose_secret(), "s");
        assert!(!app.is_mapped());
        assert_eq!(app.upstream.id, "4242");
        assert!(
            !format!("{c:?}").contains("\"s\""),
            "secret must not be in Debug"
        );
    }

    #[test]
    fn pusher_upstream_probes_by_default() {
        let c = Config::from_toml_str(
            "[upstream]\nurl = \"https://api-eu.pusher.com\"\n[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n",
            &env(&[]),
        )
        .expect("valid");
        assert_eq!(c.apps[0].subscription_count, SubscriptionCounting::Probe);
    }

    #[test]
    fn workers_default_to_one_per_core() {
        let text = |workers: &str| {
            format!(
                "{workers}\n[upstream]\nurl = \"http://127.0.0.1:6001\"\n[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n"
            )
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let default = Config::from_toml_str(&text(""), &env(&[])).expect("valid");
        assert_eq!((default.workers, default.workers()), (0, cores));
        let three = Config::from_toml_str(&text("workers = 3"), &env(&[])).expect("valid");
        assert_eq!(three.workers(), 3);
        let err = Config::from_toml_str(&text("workers = 5000"), &env(&[])).expect_err("too many");
        assert!(err.to_string().contains("workers"), "{err}");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml_str("[upstream]\nurl = \"http://x\"\ntimeout = 5\n", &env(&[]))
            .expect_err("unknown key");
        assert!(err.to_string().contains("timeout"), "{err}");
    }

    #[test]
    fn every_problem_is_listed() {
        let err = Config::from_toml_str(
            r#"
            listen = "nowhere"
            [upstream]
            url = "ftp://x/prefix"
            timeout_ms = 0
            [[apps]]
            id = "1"
            key = ""
            secret_env = "MISSING"
            [[apps]]
            id = "1"
            key = "k"
            secret = "s"
            subscription_count = "probe"
            "#,
            &env(&[]),
        )
        .expect_err("invalid");
        let problems = err.problems();
        let keys: Vec<&str> = problems
            .iter()
            .map(|p| p.split(':').next().unwrap_or(""))
            .collect();
        assert_eq!(
            keys,
            vec![
                "listen",
                "upstream.timeout_ms",
                "upstream.url",
                "apps[0].key",
                "apps[0].secret_env",
                "apps[1].id"
            ],
            "{problems:?}"
        );
    }

    #[test]
    fn invalid_enum_value_is_named() {
        let err = Config::from_toml_str(
            "[upstream]\nurl = \"http://x\"\n[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\nsubscription_count = \"maybe\"\n",
            &env(&[]),
        )
        .expect_err("bad enum");
        assert!(err.to_string().contains("maybe"), "{err}");
    }

    #[test]
    fn upstream_url_rules() {
        assert!(parse_upstream_url("https://api-mt1.pusher.com").is_ok());
        assert!(parse_upstream_url("http://127.0.0.1:6001/").is_ok());
        assert!(parse_upstream_url("http://127.0.0.1:6001/x").is_err());
        assert!(parse_upstream_url("http://127.0.0.1:6001/?a=1").is_err());
        assert!(parse_upstream_url("http://u:p@host").is_err());
        assert!(parse_upstream_url("127.0.0.1:6001").is_err());
    }

    #[test]
    fn env_default_with_cluster_and_app() {
        let c = Config::from_env(&env(&[
            ("PUSHER_APP_ID", "7"),
            ("PUSHER_APP_KEY", "key"),
            ("PUSHER_APP_SECRET", "secret"),
            ("PUSHER_CLUSTER", "eu"),
        ]))
        .expect("valid");
        assert_eq!(c.upstream.url.to_string(), "https://api-eu.pusher.com/");
        assert_eq!(c.apps.len(), 1);
        assert_eq!(c.apps[0].key, "key");
        assert_eq!(c.apps[0].secrets[0].expose_secret(), "secret");
    }

    #[test]
    fn env_default_self_hosted() {
        let c = Config::from_env(&env(&[
            ("PUSHER_HOST", "127.0.0.1"),
            ("PUSHER_PORT", "6001"),
            ("PUSHER_SCHEME", "http"),
        ]))
        .expect("valid");
        assert_eq!(c.upstream.url.to_string(), "http://127.0.0.1:6001/");
        assert!(c.apps.is_empty());
        let d = Config::from_env(&env(&[])).expect("valid");
        assert_eq!(d.upstream.url.to_string(), "https://api-mt1.pusher.com/");
    }

    #[test]
    fn env_default_partial_app_names_missing_vars() {
        let err = Config::from_env(&env(&[("PUSHER_APP_ID", "7")])).expect_err("partial");
        let text = err.to_string();
        assert!(
            text.contains("PUSHER_APP_KEY") && text.contains("PUSHER_APP_SECRET"),
            "{text}"
        );
    }
}
