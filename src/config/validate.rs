//! Validation of the raw configuration into a [`Config`]: every problem
//! is collected, each naming its key.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::Uri;
use secrecy::SecretString;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::raw::{RawApp, RawConfig};
use super::{
    AdminConfig, AppConfig, Batching, Brownout, Collected, Config, ConfigError, Credentials,
    EnvLookup, MAX_BATCH_EVENTS, MAX_FLUSH_INTERVAL_MS, MAX_WORKERS, MIN_HEADER_BYTES,
    MIN_RETENTION_DAYS, Mode, PUSHER_MAX_BATCH_EVENTS, SubscriptionCounting, TelemetryConfig,
    TlsConfig, UpstreamConfig, UpstreamProtocol,
};
use crate::pusher::channel::is_pusher_host;

impl RawConfig {
    pub(super) fn validate(self, env: EnvLookup<'_>) -> Result<Config, ConfigError> {
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
        problems.positive("keepalive_timeout_ms", self.keepalive_timeout_ms);
        problems.positive("shutdown_grace_ms", self.shutdown_grace_ms);
        problems.positive("body_timeout_ms", self.body_timeout_ms);
        problems.positive("max_connections", self.max_connections as u64);
        if self.max_connections > super::MAX_CONNECTIONS {
            problems.add(
                "max_connections",
                format!("must be at most {}", super::MAX_CONNECTIONS),
            );
        }
        if self.workers > MAX_WORKERS {
            problems.add(
                "workers",
                format!("must be at most {MAX_WORKERS} (0: one per core)"),
            );
        }
        if !(MIN_HEADER_BYTES..=super::MAX_HEADER_BYTES).contains(&self.max_header_bytes) {
            problems.add(
                "max_header_bytes",
                format!(
                    "must be between {MIN_HEADER_BYTES} and {}",
                    super::MAX_HEADER_BYTES
                ),
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
        problems.positive("upstream.idle_timeout_ms", self.upstream.idle_timeout_ms);
        if self.upstream.max_connections > super::MAX_UPSTREAM_EXCHANGES {
            problems.add(
                "upstream.max_connections",
                format!(
                    "{} is above the most allowed, {}",
                    self.upstream.max_connections,
                    super::MAX_UPSTREAM_EXCHANGES
                ),
            );
        }
        // Coalescing of legacy triggers.
        problems.positive(
            "upstream.batch_in_flight",
            self.upstream.batch_in_flight as u64,
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
                // One of them on every address of its family (`[::]` of
                // both, as Linux binds it) takes the port on the other's.
                Ok(addr) if addr.port() != 0 && shares_port(addr, listen) => {
                    problems.add(
                        "admin.listen",
                        format!(
                            "`{addr}` and the proxy's `listen` `{listen}` share port {}",
                            addr.port()
                        ),
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
        let admin_token = admin_token(
            SecretSource {
                inline: self.admin.token,
                var: self.admin.token_env,
                file: self.admin.token_file,
            },
            env,
            &mut problems,
        );
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

        let parsed = parse_upstream_url(&self.upstream.url);
        let url_ok = parsed.is_ok();
        let url = match parsed {
            Ok(url) => url,
            Err(message) => {
                problems.add("upstream.url", message);
                Uri::from_static("http://invalid")
            }
        };
        if let Some(message) = own_listen(&url, listen) {
            problems.add("upstream.url", message);
        }
        // upstream.protocol
        if self.upstream.protocol == UpstreamProtocol::H2c && url.scheme_str() == Some("https") {
            problems.add(
                "upstream.protocol",
                "`h2c` is HTTP/2 over cleartext and needs an `http://` url; \
                 over `https://`, `auto` negotiates HTTP/2 by ALPN"
                    .to_owned(),
            );
        }
        let ca_certificates = self
            .upstream
            .ca_file
            .as_deref()
            // (An upstream.url that is no URL has its own problem.)
            .filter(|_| url_ok)
            .and_then(|path| ca_certificates(path, &url, &mut problems));
        let is_pusher = url.host().is_some_and(is_pusher_host);
        // Events per batch_events request: Pusher refuses more than 10;
        // a self-hosted server its app's limit (see MAX_BATCH_EVENTS).
        let (batch_ceiling, other) = if is_pusher {
            (PUSHER_MAX_BATCH_EVENTS, "")
        } else {
            (
                MAX_BATCH_EVENTS,
                ", a self-hosted server its app's limit (Sockudo: `max_event_batch_size`), which must not be exceeded",
            )
        };
        if !(1..=batch_ceiling).contains(&self.upstream.batch_max) {
            problems.add(
                "upstream.batch_max",
                format!(
                    "must be 1 to {batch_ceiling} for this upstream (events per batch_events request; Pusher accepts at most {PUSHER_MAX_BATCH_EVENTS}{other}; 1 turns coalescing off)"
                ),
            );
        }
        let default_counting = if is_pusher {
            SubscriptionCounting::Probe
        } else {
            SubscriptionCounting::On
        };
        // Pusher's limit behind Pusher; elsewhere the upstream's own limit
        // decides (Sockudo and soketi: 100 KB by default; spec E.5 item 13),
        // under the body limit.
        let default_max_data = if is_pusher {
            super::raw::PUSHER_MAX_DATA
        } else {
            self.max_body_bytes
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
            let defaults = AppDefaults {
                counting: default_counting,
                max_data: default_max_data,
            };
            if let Some(app) = validate_app(i, app, env, defaults, &mut problems) {
                apps.push(app);
            }
        }

        let instance = instance_name(self.telemetry.instance, env, &mut problems);
        if problems.len() > 0 {
            return Err(ConfigError::Invalid(problems.0));
        }
        Ok(Config {
            listen,
            timestamp_window_secs: self.timestamp_window_secs,
            max_body_bytes: self.max_body_bytes,
            header_timeout: Duration::from_millis(self.header_timeout_ms),
            keepalive_timeout: Duration::from_millis(self.keepalive_timeout_ms),
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
                protocol: self.upstream.protocol,
                ping_interval: (self.upstream.ping_interval_ms > 0)
                    .then(|| Duration::from_millis(self.upstream.ping_interval_ms)),
                idle_timeout: Duration::from_millis(self.upstream.idle_timeout_ms),
                ca_certificates,
            },
            batching: Batching {
                in_flight: self.upstream.batch_in_flight,
                max: self.upstream.batch_max,
            },
            admin: AdminConfig {
                listen: admin_listen,
                token: admin_token,
            },
            telemetry: TelemetryConfig {
                data_dir: self.telemetry.data_dir,
                max_callers_per_app: self.telemetry.max_callers_per_app,
                flush_interval: Duration::from_millis(self.telemetry.flush_interval_ms),
                retention_days: self.telemetry.retention_days,
                deprecation_link: self.telemetry.deprecation_link,
                instance,
            },
            apps,
            hash: String::new(),
        })
    }
}

/// Longest instance name accepted (a Kubernetes Pod name is at most 253).
const MAX_INSTANCE_LEN: usize = 253;

/// The sidecar's name: `configured` (which must be 1 to
/// [`MAX_INSTANCE_LEN`] printable ASCII characters), else `POD_NAME`, else
/// `HOSTNAME`, else the host's name as the system reports it; a name from
/// the environment or the system is made to fit (other characters as `_`).
fn instance_name(
    configured: Option<String>,
    env: EnvLookup<'_>,
    problems: &mut Collected,
) -> String {
    let fits = |name: &str| {
        !name.is_empty()
            && name.len() <= MAX_INSTANCE_LEN
            && name.chars().all(|c| c.is_ascii_graphic())
    };
    if let Some(name) = configured {
        if !fits(&name) {
            problems.add(
                "telemetry.instance",
                format!("must be 1-{MAX_INSTANCE_LEN} printable ASCII characters without spaces"),
            );
        }
        return name;
    }
    let found = env("POD_NAME")
        .filter(|v| !v.is_empty())
        .or_else(|| env("HOSTNAME").filter(|v| !v.is_empty()))
        .unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned());
    let name: String = found
        .chars()
        .take(MAX_INSTANCE_LEN)
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect();
    if name.is_empty() {
        "unnamed".into()
    } else {
        name
    }
}

/// The text of the file `path` that `key` names; a problem that names
/// the file and why it cannot be read (never what it holds) if it cannot.
fn read_named(path: &std::path::Path, key: &str, problems: &mut Collected) -> Option<String> {
    std::fs::read_to_string(path)
        .inspect_err(|e| {
            problems.add(
                key,
                format!("cannot read `{}`: {}", path.display(), e.kind()),
            );
        })
        .ok()
}

/// `upstream.ca_file`'s certificates (PEM, one or more), for an
/// `https://` upstream; a problem names the key and the file, never what
/// it holds.
fn ca_certificates(
    path: &std::path::Path,
    url: &Uri,
    problems: &mut Collected,
) -> Option<Vec<pki_types::CertificateDer<'static>>> {
    use pki_types::pem::PemObject;
    const KEY: &str = "upstream.ca_file";
    if url.scheme_str() != Some("https") {
        problems.add(
            KEY,
            "is for an `https://` upstream.url: the roots its certificate is checked against"
                .into(),
        );
        return None;
    }
    let pem = read_named(path, KEY, problems)?;
    let certificates: Result<Vec<_>, _> =
        pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    match certificates {
        Ok(certificates) if !certificates.is_empty() => {
            let mut roots = tokio_rustls::rustls::RootCertStore::empty();
            for certificate in &certificates {
                if roots.add(certificate.clone()).is_err() {
                    problems.add(
                        KEY,
                        format!(
                            "`{}` holds a certificate that is not readable X.509",
                            path.display()
                        ),
                    );
                    return None;
                }
            }
            Some(certificates)
        }
        Ok(_) => {
            problems.add(
                KEY,
                format!("`{}` holds no PEM certificate", path.display()),
            );
            None
        }
        Err(_) => {
            problems.add(KEY, format!("`{}` is not valid PEM", path.display()));
            None
        }
    }
}

/// The problem with an upstream `url` that is the proxy's own `listen`
/// ([`points_at`]), if it is.
fn own_listen(url: &Uri, listen: SocketAddr) -> Option<String> {
    points_at(url, listen).then(|| {
        format!(
            "`{url}` is this proxy's own `listen` ({listen}): every call would come \
             back to it until no slot is left (PUSHER_HOST and PUSHER_PORT name the \
             upstream here, not the proxy the app calls)"
        )
    })
}

impl Config {
    /// The problem with this configuration's upstream if it is `listen`,
    /// the address the proxy serves on (after a reload that leaves a new
    /// `listen` to a restart, the running one, which validation did not
    /// see).
    pub fn upstream_is_listen(&self, listen: SocketAddr) -> Option<super::Problem> {
        own_listen(&self.upstream.url, listen).map(|message| super::Problem {
            key: "upstream.url".into(),
            message,
        })
    }
}

/// Whether `url` names the proxy's own `listen` address, on the same port:
/// the same IP; a loopback or unspecified one of its family, for a
/// `listen` on `0.0.0.0` (`::`: both families); `localhost`, for a
/// loopback or unspecified `listen`. (A loopback `listen` takes only its
/// own address: `127.0.0.1` does not answer for `127.0.0.2` or `::1`. The
/// other addresses of a host listening on `0.0.0.0` are not known here.)
fn points_at(url: &Uri, listen: SocketAddr) -> bool {
    let Some(host) = url.host() else {
        return false;
    };
    let port = url
        .port_u16()
        .unwrap_or(if url.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    if listen.port() == 0 || port != listen.port() {
        return false;
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let at = listen.ip();
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => {
            let ip = ip.to_canonical();
            ip == at.to_canonical()
                || (at.is_unspecified()
                    && (ip.is_loopback() || ip.is_unspecified())
                    && (at.is_ipv6() || ip.is_ipv4()))
        }
        Err(_) => {
            host.eq_ignore_ascii_case("localhost") && (at.is_loopback() || at.is_unspecified())
        }
    }
}

/// Whether listeners on `a` and `b` (the same port) would take each
/// other's: one is on every address of the other's family, IPv6's `[::]`
/// counting for both families.
fn shares_port(a: SocketAddr, b: SocketAddr) -> bool {
    let covers = |wide: SocketAddr, other: SocketAddr| {
        wide.ip().is_unspecified() && (wide.is_ipv6() || other.is_ipv4())
    };
    a.port() == b.port() && (covers(a, b) || covers(b, a))
}

/// Refuses a key, secret or token with a character outside printable
/// ASCII or a space, and says whether it passed: signatures are computed
/// over its exact bytes, so a trailing newline (a file read into an
/// environment variable, as a Kubernetes Secret made `--from-file` is)
/// makes every call fail verification. The message names the key, never
/// the value.
fn credential_rule(value: &str, name: &str, problems: &mut Collected) -> bool {
    let passed = value.bytes().all(|b| b.is_ascii_graphic());
    if !passed {
        let what = if value.ends_with(['\n', '\r']) {
            "ends with a line break (a file's last newline?)"
        } else {
            "holds a space, a control character or a non-ASCII one"
        };
        problems.add(
            name,
            format!("{what}: keys, secrets and tokens are printable ASCII without spaces"),
        );
    }
    passed
}

/// Where an app's (or its upstream's) secret, or the admin token, is
/// given: inline, through an environment variable or in a file (`secret`,
/// `secret_env`, `secret_file`; `token`, `token_env`, `token_file`), at
/// most one of them.
struct SecretSource {
    inline: Option<String>,
    var: Option<String>,
    file: Option<std::path::PathBuf>,
}

impl SecretSource {
    fn is_given(&self) -> bool {
        self.inline.is_some() || self.var.is_some() || self.file.is_some()
    }
}

/// The secret `source` gives, its keys named `stem`, `{stem}_env` and
/// `{stem}_file` (`key` makes the full key of each). A file is read whole,
/// less one trailing line break; a problem with it names the file, never
/// what it holds. Exactly one source must be given.
fn secret_from(
    source: SecretSource,
    stem: &str,
    env: EnvLookup<'_>,
    key: &dyn Fn(&str) -> String,
    problems: &mut Collected,
) -> Option<SecretString> {
    let (env_key, file_key) = (format!("{stem}_env"), format!("{stem}_file"));
    let (name, value) = match source {
        SecretSource {
            inline: Some(s),
            var: None,
            file: None,
        } => (stem, Some(s)),
        SecretSource {
            inline: None,
            var: Some(var),
            file: None,
        } => match env(&var).filter(|v| !v.is_empty()) {
            Some(s) => (env_key.as_str(), Some(s)),
            None => {
                problems.add(
                    &key(&env_key),
                    format!("environment variable `{var}` is not set or empty"),
                );
                return None;
            }
        },
        SecretSource {
            inline: None,
            var: None,
            file: Some(path),
        } => {
            let text = read_named(&path, &key(&file_key), problems)?;
            let text = text.strip_suffix('\n').unwrap_or(&text);
            let text = text.strip_suffix('\r').unwrap_or(text);
            (file_key.as_str(), Some(text.to_owned()))
        }
        SecretSource {
            inline: None,
            var: None,
            file: None,
        } => {
            problems.add(
                &key(stem),
                format!("one of `{stem}`, `{env_key}` or `{file_key}` is required"),
            );
            return None;
        }
        _ => {
            problems.add(
                &key(stem),
                format!("set one of `{stem}`, `{env_key}` or `{file_key}`, not more"),
            );
            return None;
        }
    };
    match value {
        Some(s) if !s.is_empty() => {
            credential_rule(&s, &key(name), problems);
            Some(SecretString::from(s))
        }
        _ => {
            problems.add(&key(name), "must not be empty".into());
            None
        }
    }
}

/// The secrets in an app's `previous_secrets_file` (a mounted Secret, for
/// a rotation whose secrets never appear in the config): one per line,
/// blank lines (spaces only, too) skipped, a line's trailing `\r` not
/// part of it. A problem
/// names the key, the file and the line, never what it holds.
fn previous_secrets_file(
    path: &std::path::Path,
    key: &str,
    problems: &mut Collected,
) -> Vec<SecretString> {
    let Some(text) = read_named(path, key, problems) else {
        return Vec::new();
    };
    let mut secrets = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        if line.bytes().all(|b| b.is_ascii_graphic()) {
            secrets.push(SecretString::from(line.to_owned()));
        } else {
            problems.add(
                key,
                format!(
                    "line {} of `{}` holds a space, a control character or a non-ASCII one: \
                     secrets are printable ASCII without spaces",
                    n + 1,
                    path.display()
                ),
            );
        }
    }
    secrets
}

/// The admin bearer token, given inline (`admin.token`), through an
/// environment variable (`admin.token_env`) or in a file
/// (`admin.token_file`: a mounted Kubernetes Secret), or not at all. It
/// must be printable ASCII without spaces, as it is sent in a header (a
/// file's one trailing line break is not part of it).
fn admin_token(
    source: SecretSource,
    env: EnvLookup<'_>,
    problems: &mut Collected,
) -> Option<SecretString> {
    if !source.is_given() {
        return None;
    }
    secret_from(
        source,
        "token",
        env,
        &|field| format!("admin.{field}"),
        problems,
    )
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
/// Whether `t` is within what an HTTP date (the `Sunset` header) and
/// RFC 3339 can say, 1970 to 9999 UTC; if not, a problem for `key`.
fn sayable(t: &OffsetDateTime, key: &str, problems: &mut Collected) -> bool {
    let sayable = super::http_date_range().contains(&t.unix_timestamp());
    if !sayable {
        problems.add(key, "must be between 1970 and 9999 (UTC)".into());
    }
    sayable
}

/// What an app's unset settings take, by upstream.
#[derive(Debug, Clone, Copy)]
struct AppDefaults {
    /// `subscription_count`.
    counting: SubscriptionCounting,
    /// `max_data_bytes`.
    max_data: usize,
}

fn validate_app(
    i: usize,
    app: RawApp,
    env: EnvLookup<'_>,
    defaults: AppDefaults,
    problems: &mut Collected,
) -> Option<AppConfig> {
    let before = problems.len();
    let key = |field: &str| format!("apps[{i}].{field}");
    const ID_RULE: &str =
        "must be 1-64 characters legal in a URL path, without `/`, `?`, `#` or `%`";
    if !valid_app_id(&app.id) {
        problems.add(&key("id"), ID_RULE.into());
    } else if app.id == crate::telemetry::usage::OTHER {
        // Its series would be the ones of requests for unknown apps.
        problems.add(
            &key("id"),
            "must not be `other`: the metrics' `app_id` of requests for apps not configured".into(),
        );
    }
    if app.key.is_empty() {
        problems.add(&key("key"), "must not be empty".into());
    } else {
        credential_rule(&app.key, &key("key"), problems);
    }
    let max_data_bytes = app.max_data_bytes.unwrap_or(defaults.max_data);
    problems.positive(&key("max_data_bytes"), max_data_bytes as u64);
    let sunset = app
        .sunset
        .as_deref()
        .and_then(|t| parse_time(t, &key("sunset"), problems))
        .filter(|t| sayable(t, &key("sunset"), problems));
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
        let start = start.filter(|t| sayable(t, &bkey("start"), problems));
        let end = end.filter(|t| sayable(t, &bkey("end"), problems));
        if let (Some(start), Some(end)) = (start, end) {
            if start < end {
                brownouts.push(Brownout { start, end });
            } else {
                problems.add(&bkey("end"), "must be after `start`".into());
            }
        }
    }
    let secret = secret_from(
        SecretSource {
            inline: app.secret,
            var: app.secret_env,
            file: app.secret_file,
        },
        "secret",
        env,
        &key,
        problems,
    );
    let mut secrets: Vec<SecretString> = secret.iter().cloned().collect();
    for (j, s) in app.previous_secrets.into_iter().enumerate() {
        if s.is_empty() {
            problems.add(
                &key(&format!("previous_secrets[{j}]")),
                "must not be empty".into(),
            );
        } else {
            credential_rule(&s, &key(&format!("previous_secrets[{j}]")), problems);
        }
        secrets.push(SecretString::from(s));
    }
    if let Some(path) = &app.previous_secrets_file {
        secrets.extend(previous_secrets_file(
            path,
            &key("previous_secrets_file"),
            problems,
        ));
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
            } else {
                credential_rule(&up_key, &ukey("key"), problems);
            }
            let source = SecretSource {
                inline: u.secret,
                var: u.secret_env,
                file: u.secret_file,
            };
            let up_secret = if source.is_given() {
                secret_from(source, "secret", env, &ukey, problems)
            } else {
                secret.clone()
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
        subscription_count: app.subscription_count.unwrap_or(defaults.counting),
        max_data_bytes,
        sunset,
        mode: app.mode,
        rollout_percent,
        brownouts,
    })
}

/// Accepts `http://host[:port]` or `https://host[:port]`, with no path
/// beyond `/`, no query and no user info: the signed path must be exactly
/// `/apps/…`, so the upstream cannot live under a prefix.
pub(super) fn parse_upstream_url(text: &str) -> Result<Uri, String> {
    // Messages quote the URL without its user info, which could be a
    // password: they reach the log, `POST /reload`'s answer and `validate`.
    let shown = without_user_info(text);
    let uri: Uri = text
        .parse()
        .map_err(|e| format!("`{shown}` is not a URL ({e})"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("`{shown}` must start with http:// or https://")),
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("`{shown}` has no host"));
    };
    if authority.as_str().contains('@') {
        return Err(format!("`{shown}` must not carry user info"));
    }
    if uri.path_and_query().is_some_and(|pq| pq.as_str() != "/") {
        return Err(format!(
            "`{shown}` must not have a path or query: requests keep their own /apps/… path"
        ));
    }
    Uri::builder()
        .scheme(uri.scheme_str().unwrap_or("http"))
        .authority(authority.clone())
        .path_and_query("/")
        .build()
        .map_err(|e| format!("`{shown}` is not a URL ({e})"))
}

/// `text` with the user info of its authority (`user:password@`) said as
/// `…@`; unchanged when it has none.
fn without_user_info(text: &str) -> std::borrow::Cow<'_, str> {
    let start = text.find("://").map_or(0, |i| i + 3);
    let rest = &text[start..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    match authority.rfind('@') {
        Some(at) => format!("{}…{}", &text[..start], &text[start + at..]).into(),
        None => text.into(),
    }
}

/// What [`Config::lint_file`] stands in for a secret whose environment
/// variable is unset, so the rest of the file is still checked.
const UNSET_PLACEHOLDER: &str = "unset-secret-placeholder";

impl Config {
    /// Loads and validates `path` for `validate`, which may run where the
    /// secrets are not (a CI job linting the file). With `require_env`
    /// false, an unset or empty variable named by `apps[].secret_env`,
    /// `apps[].upstream.secret_env` or `admin.token_env`, and a file named
    /// by `apps[].secret_file`, `apps[].previous_secrets_file`,
    /// `apps[].upstream.secret_file`, `admin.token_file` or
    /// `upstream.ca_file` that cannot
    /// be read, is returned as a
    /// warning (one per key) instead of an error, and every other problem
    /// is still reported; with `require_env` true this is
    /// [`Config::from_file`]. The returned config is for the summary only:
    /// its unset secrets are placeholders.
    pub fn lint_file(
        path: &std::path::Path,
        env: EnvLookup<'_>,
        require_env: bool,
    ) -> Result<(Self, Vec<super::Problem>), ConfigError> {
        if require_env {
            return Self::from_file(path, env).map(|c| (c, Vec::new()));
        }
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut raw: RawConfig =
            toml::from_str(&text).map_err(|e| ConfigError::syntax(&e, &text))?;
        let set = |name: &str| env(name).is_some_and(|v| !v.is_empty());
        let mut warnings = Vec::new();
        let mut unset = HashSet::new();
        let mut named = |key: String, var: &Option<String>| {
            if let Some(var) = var
                && !set(var)
            {
                warnings.push(super::Problem {
                    key,
                    message: format!(
                        "environment variable `{var}` is not set or empty (required by `serve`; \
                         `validate --require-env` makes this an error)"
                    ),
                });
                unset.insert(var.clone());
            }
        };
        named("admin.token_env".into(), &raw.admin.token_env);
        for (i, app) in raw.apps.iter().enumerate() {
            named(format!("apps[{i}].secret_env"), &app.secret_env);
            if let Some(up) = &app.upstream {
                named(format!("apps[{i}].upstream.secret_env"), &up.secret_env);
            }
        }
        // A secret file that is not there or not ours to read (as where
        // the secrets are not) is a warning too, its secret a placeholder,
        // when it is the secret's only source; anything else about it is
        // the problem `serve` would find (two sources, a directory). Only
        // opened here: validation reads it.
        let mut unreadable = |key: String, others: bool, file: &mut Option<std::path::PathBuf>| {
            let path = file.as_ref().filter(|_| !others)?;
            let error = std::fs::File::open(path).err().filter(|e| {
                matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
                )
            })?;
            warnings.push(super::Problem {
                key,
                message: format!(
                    "cannot read `{}`: {} (required by `serve`; `validate --require-env` \
                     makes this an error)",
                    path.display(),
                    error.kind()
                ),
            });
            *file = None;
            Some(UNSET_PLACEHOLDER.to_owned())
        };
        if let Some(placeholder) = unreadable(
            "admin.token_file".into(),
            raw.admin.token.is_some() || raw.admin.token_env.is_some(),
            &mut raw.admin.token_file,
        ) {
            raw.admin.token = Some(placeholder);
        }
        // The upstream's CA file, where the host has it and the linting
        // machine may not: a warning too, and the rest checked.
        let _ = unreadable("upstream.ca_file".into(), false, &mut raw.upstream.ca_file);
        for (i, app) in raw.apps.iter_mut().enumerate() {
            let _ = unreadable(
                format!("apps[{i}].previous_secrets_file"),
                false,
                &mut app.previous_secrets_file,
            );
            let others = app.secret.is_some() || app.secret_env.is_some();
            if let Some(placeholder) = unreadable(
                format!("apps[{i}].secret_file"),
                others,
                &mut app.secret_file,
            ) {
                app.secret = Some(placeholder);
            }
            if let Some(up) = app.upstream.as_mut()
                && let Some(placeholder) = unreadable(
                    format!("apps[{i}].upstream.secret_file"),
                    up.secret.is_some() || up.secret_env.is_some(),
                    &mut up.secret_file,
                )
            {
                up.secret = Some(placeholder);
            }
        }
        let lenient = |name: &str| {
            if unset.contains(name) {
                Some(UNSET_PLACEHOLDER.to_owned())
            } else {
                env(name)
            }
        };
        let mut config = raw.validate(&lenient)?;
        config.hash = super::config_text_hash(&text);
        Ok((config, warnings))
    }
}

impl Config {
    /// A configuration hash (as [`Config::hash`]) derived from `parts`,
    /// for a configuration in force that is no file's as a whole (a reload
    /// that keeps restart-only settings).
    pub fn derived_hash(parts: &[&str]) -> String {
        super::source_hash(&parts.join("\n"))
    }
}
