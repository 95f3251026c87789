//! Hot reload: re-read the configuration, validate it, and swap it in
//! atomically (on SIGHUP or `POST /reload` on the admin listener). An
//! invalid configuration is refused and the previous one keeps serving.

use std::path::PathBuf;
use std::sync::Arc;

use crate::chain::ErrorChain;
use crate::config::{self, Config, ConfigError};
use crate::http::tls::{Certificate, Files, ServerCertificate, TlsError};
use crate::pipeline::Proxy;
use crate::telemetry::Telemetry;

/// Where the configuration is (re)loaded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// A TOML file.
    File(PathBuf),
    /// The embedded default with the `PUSHER_*` environment variables.
    Env,
}

impl ConfigSource {
    /// Loads and validates the configuration (secrets from the process
    /// environment).
    pub fn load(&self) -> Result<Config, ConfigError> {
        match self {
            Self::File(path) => Config::from_file(path, &config::process_env),
            Self::Env => Config::from_env(&config::process_env),
        }
    }
}

/// Reloads the configuration of a running proxy.
#[derive(Debug, Clone)]
pub struct Reloader {
    source: ConfigSource,
    proxy: Proxy,
    telemetry: Arc<Telemetry>,
    /// The hash of the configuration the process started with: its
    /// restart-only settings stay in force until a restart.
    started: String,
    /// The settings the last applied reload left waiting for a restart.
    pending: Arc<std::sync::Mutex<Vec<&'static str>>>,
    /// The certificate the TLS listener serves, replaced when `[tls]`'s
    /// files change ([`Reloader::with_tls`]).
    tls: Option<Arc<ServerCertificate>>,
    /// Held by each reload from its read to its swap, so that the
    /// telemetry and the proxy always end on the same configuration: a
    /// SIGHUP's reload waits for one running, a `POST /reload` is answered
    /// 409 ([`Reloader::try_reload`]).
    serial: Arc<std::sync::Mutex<()>>,
}

/// A reload that was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// The hash of the configuration now in force: the file's, or, when
    /// some of its settings wait for a restart, one of its own (the file's
    /// with the started configuration's restart-only settings).
    pub hash: String,
    /// The hash of the file as read.
    pub file_hash: String,
    /// The settings whose new values wait for a restart (`listen`,
    /// `workers`, …); empty when the file is in force as a whole.
    pub restart_needed: Vec<&'static str>,
    /// What changed for each app, one line each, as logged (`app 4242:
    /// mode observe → translate, secrets changed`; never a value of a
    /// secret).
    pub app_changes: Vec<String>,
}

impl Reloaded {
    /// The answer's text: `reloaded config=<hash>`, and when settings wait
    /// for a restart `; restart needed for: listen, workers (…)`; then
    /// each app's changes on a line of its own.
    pub fn summary(&self) -> String {
        let mut text = if self.restart_needed.is_empty() {
            format!("reloaded config={}", self.hash)
        } else {
            format!(
                "reloaded config={}; restart needed for: {} (the file's config={} is in force \
                 only after a restart; until then these settings keep their running values)",
                self.hash,
                self.restart_needed.join(", "),
                self.file_hash
            )
        };
        for change in &self.app_changes {
            text.push('\n');
            text.push_str(change);
        }
        text
    }
}

impl Reloader {
    /// A reloader of `proxy` from `source`.
    pub fn new(source: ConfigSource, proxy: Proxy, telemetry: Arc<Telemetry>) -> Self {
        let started = proxy.current().config().hash.clone();
        Self {
            source,
            proxy,
            telemetry,
            started,
            pending: Arc::default(),
            tls: None,
            serial: Arc::default(),
        }
    }

    /// The settings whose new values wait for a restart, as the last
    /// applied reload found them (empty when the file is in force).
    pub fn restart_needed(&self) -> Vec<&'static str> {
        self.pending.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// Serves a renewed TLS certificate through `certificate` when a reload
    /// finds `[tls]`'s files changed (without it, such a change waits for a
    /// restart).
    pub fn with_tls(mut self, certificate: Option<Arc<ServerCertificate>>) -> Self {
        self.tls = certificate;
        self
    }

    /// Re-reads and validates the configuration, then swaps it in for new
    /// requests: every setting a reload can change takes its new value,
    /// the restart-only ones (`restart_only_changes`) keep theirs, and
    /// the configuration's hash (in `/readyz` and `build_info`) says so.
    /// `[tls]` files that changed are loaded and served to new handshakes.
    /// Logs each app's changes, one line each. On failure the running
    /// configuration is kept and the problems are logged on one line; a
    /// panic inside the reload (a bug) is caught, logged and answered as
    /// [`ReloadError::Internal`], so the reloader keeps working.
    pub fn reload(&self) -> Result<Reloaded, ReloadError> {
        let turn = self
            .serial
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.reload_holding(&turn)
    }

    /// As [`Reloader::reload`], or `None` at once while another reload
    /// runs (`POST /reload` answers 409 then, rather than hold a thread
    /// behind a reload stuck reading its file).
    pub fn try_reload(&self) -> Option<Result<Reloaded, ReloadError>> {
        let turn = match self.serial.try_lock() {
            Ok(turn) => turn,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        Some(self.reload_holding(&turn))
    }

    /// A reload, `_turn` held.
    fn reload_holding(
        &self,
        _turn: &std::sync::MutexGuard<'_, ()>,
    ) -> Result<Reloaded, ReloadError> {
        let outcome = guarded(|| self.source.load().and_then(|config| self.apply(config)));
        match &outcome {
            Ok(_) => self.telemetry.reloaded(true),
            Err(ReloadError::Refused(e)) => {
                self.telemetry.reloaded(false);
                tracing::error!(
                    problems = %one_line(&e.problems().join("; ")),
                    "configuration reload refused; the previous configuration keeps serving"
                );
            }
            Err(ReloadError::Internal(what)) => {
                self.telemetry.reloaded(false);
                tracing::error!(
                    panic = %one_line(what),
                    config_hash = %self.telemetry.config_hash(),
                    "configuration reload failed on an internal error (a bug, please report it): \
                     part of the new configuration may be in force; reload again, or restart"
                );
            }
        }
        outcome
    }

    /// Swaps in `config`, loaded and valid; refused (and nothing changed)
    /// when its TLS files cannot be loaded.
    fn apply(&self, mut config: Config) -> Result<Reloaded, ConfigError> {
        let current = self.proxy.current();
        let running = current.config();
        let mut restart_needed = restart_only_changes(running, &config);
        // Validation saw the file's `listen`; the proxy serves on its own
        // until a restart.
        if let Some(problem) = config.upstream_is_listen(running.listen) {
            return Err(ConfigError::Invalid(vec![problem]));
        }
        let renewed = match self.tls_change(running, &config)? {
            TlsChange::Same => None,
            TlsChange::Renewed(certificate) => Some(certificate),
            TlsChange::Restart => {
                restart_needed.push("tls");
                config.tls.clone_from(&running.tls);
                None
            }
        };
        let changes = app_changes(running, &config);
        for change in &changes {
            tracing::info!("{change}");
        }
        let file_hash = config.hash.clone();
        if !restart_needed.is_empty() {
            keep_restart_only(running, &mut config);
            config.hash =
                Config::derived_hash(&[&file_hash, "restart-only settings of", &self.started]);
            tracing::warn!(
                settings = %restart_needed.join(", "),
                config_hash = %config.hash,
                file_config_hash = %file_hash,
                "configuration reloaded in part: restart needed for these settings, which keep their running values"
            );
        }
        log_cautions(&config);
        let hash = config.hash.clone();
        self.telemetry.configure(&config);
        self.proxy.reload(config);
        if let Some(served) = &self.tls {
            if let Some(certificate) = renewed {
                let sha256 = certificate.fingerprint();
                let not_after = certificate.not_after_text();
                self.telemetry.tls_certificate(&certificate);
                served.replace(certificate);
                tracing::info!(
                    %sha256,
                    %not_after,
                    "TLS certificate reloaded: new connections get it, open ones keep theirs"
                );
            }
            // Renewed or not, a certificate near its end is said again.
            let now = self.proxy.current().clock.unix_now();
            served
                .current()
                .warn_if_ending(i64::try_from(now).unwrap_or(i64::MAX));
        }
        if let Ok(mut pending) = self.pending.lock() {
            pending.clone_from(&restart_needed);
        }
        tracing::info!(config_hash = %hash, "configuration reloaded");
        Ok(Reloaded {
            hash,
            file_hash,
            restart_needed,
            app_changes: changes,
        })
    }

    /// What `new`'s `[tls]` asks of the running listener:
    /// - nothing, when its files hold what is served (read once and
    ///   compared with the certificate served, not with the running
    ///   configuration, so that a reload cut short before the swap is made
    ///   good by the next);
    /// - a certificate to serve from now on, when they changed;
    /// - a restart: TLS turned on (its files checked now, so that a
    ///   restart does not find them broken) or off. A reloader without the
    ///   listener's handle ([`Reloader::with_tls`]; `serve` always gives
    ///   it) compares only the paths.
    ///
    /// Files that do not load refuse the reload.
    fn tls_change(&self, running: &Config, new: &Config) -> Result<TlsChange, ConfigError> {
        let refused = |e: TlsError, then: &str| {
            ConfigError::Invalid(vec![config::Problem {
                key: "tls".into(),
                message: format!("{}; {then}", ErrorChain(&e)),
            }])
        };
        const KEPT: &str = "the running certificate keeps being served";
        match (&running.tls, &new.tls, &self.tls) {
            (None, None, _) => Ok(TlsChange::Same),
            (Some(_), None, _) => Ok(TlsChange::Restart),
            (None, Some(tls), _) => match Certificate::load(tls) {
                Ok(_) => Ok(TlsChange::Restart),
                Err(e) => Err(refused(
                    e,
                    "TLS is turned on at a restart, which would fail",
                )),
            },
            (Some(old), Some(tls), None) if old == tls => Ok(TlsChange::Same),
            (Some(_), Some(_), None) => Ok(TlsChange::Restart),
            (Some(_), Some(tls), Some(served)) => {
                let files = Files::read(tls).map_err(|e| refused(e, KEPT))?;
                if files.digest() == served.current().digest() {
                    Ok(TlsChange::Same)
                } else {
                    files
                        .parse()
                        .map(TlsChange::Renewed)
                        .map_err(|e| refused(e, KEPT))
                }
            }
        }
    }
}

/// What a reload does with `[tls]` ([`Reloader::tls_change`]).
enum TlsChange {
    /// The same files, with the same contents.
    Same,
    /// Changed files, loaded: served to new handshakes once the reload is
    /// applied.
    Renewed(Certificate),
    /// Waits for a restart.
    Restart,
}

/// Why a reload did not apply.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The configuration could not be loaded or is invalid; the previous
    /// one keeps serving.
    #[error(transparent)]
    Refused(#[from] ConfigError),
    /// The reload panicked (a bug): the message. What it had changed
    /// before stays changed, so part of the new configuration may be in
    /// force; the next reload or a restart sets it whole.
    #[error("the reload stopped on an internal error: {0}")]
    Internal(String),
}

/// Runs `reload`, turning a panic into [`ReloadError::Internal`] with its
/// message, so that a bug in one reload neither ends the SIGHUP listener
/// nor drops the admin connection that asked.
fn guarded<T>(reload: impl FnOnce() -> Result<T, ConfigError>) -> Result<T, ReloadError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(reload)) {
        Ok(result) => result.map_err(ReloadError::Refused),
        Err(payload) => Err(ReloadError::Internal(
            crate::telemetry::logging::panic_text(payload.as_ref()),
        )),
    }
}

/// Logs a WARN line for each of `config`'s [`Config::cautions`] (the
/// configuration in force: at start, after a reload).
pub fn log_cautions(config: &Config) {
    for caution in config.cautions() {
        tracing::warn!(
            setting = %caution.key,
            problem = %caution.message,
            "configuration setting works against another"
        );
    }
}

/// `text` on one line: each run of line breaks (and the indentation after
/// it) as ` | `, so a TOML syntax error's excerpt stays one log line.
pub fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, line) in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        if i > 0 {
            out.push_str(" | ");
        }
        out.push_str(line);
    }
    out
}

/// What a reload changes per app, one line each: `app 4242: mode observe →
/// translate`, `app 7: added (mode translate)`, `app 9: removed`. Secrets
/// are never shown, only that they changed.
fn app_changes(old: &Config, new: &Config) -> Vec<String> {
    use crate::config::AppConfig;
    // At UTC, so that the same instant written with another offset reads
    // the same; it cannot fail, whatever the year.
    use crate::report::text::rfc3339;
    use secrecy::ExposeSecret;
    let find = |apps: &[AppConfig], id: &str| apps.iter().find(|a| a.id == id).cloned();
    let mut out = Vec::new();
    for n in &new.apps {
        let Some(o) = find(&old.apps, &n.id) else {
            out.push(format!("app {}: added (mode {})", n.id, n.mode.as_str()));
            continue;
        };
        let mut changed: Vec<String> = Vec::new();
        let mut field = |name: &str, was: String, is: String| {
            if was != is {
                changed.push(format!("{name} {was} → {is}"));
            }
        };
        field("mode", o.mode.as_str().into(), n.mode.as_str().into());
        field(
            "rollout_percent",
            o.rollout_percent.to_string(),
            n.rollout_percent.to_string(),
        );
        field(
            "subscription_count",
            format!("{:?}", o.subscription_count).to_lowercase(),
            format!("{:?}", n.subscription_count).to_lowercase(),
        );
        field(
            "max_data_bytes",
            o.max_data_bytes.to_string(),
            n.max_data_bytes.to_string(),
        );
        let sunset = |a: &AppConfig| a.sunset.map_or("none".into(), rfc3339);
        field("sunset", sunset(&o), sunset(n));
        // The windows themselves: a moved window is a change even when
        // their number stays.
        let windows = |a: &AppConfig| -> String {
            if a.brownouts.is_empty() {
                return "none".into();
            }
            a.brownouts
                .iter()
                .map(|b| format!("{}/{}", rfc3339(b.start), rfc3339(b.end)))
                .collect::<Vec<_>>()
                .join(",")
        };
        field("brownouts", windows(&o), windows(n));
        field("key", o.key.clone(), n.key.clone());
        let secrets = |a: &AppConfig| -> Vec<String> {
            a.secrets
                .iter()
                .map(|s| s.expose_secret().to_owned())
                .collect()
        };
        if secrets(&o) != secrets(n) {
            changed.push("secrets changed".into());
        }
        let upstream = |a: &AppConfig| (a.upstream.id.clone(), a.upstream.key.clone());
        if upstream(&o) != upstream(n)
            || o.upstream.secret.expose_secret() != n.upstream.secret.expose_secret()
        {
            changed.push("upstream credentials changed".into());
        }
        if !changed.is_empty() {
            out.push(format!("app {}: {}", n.id, changed.join(", ")));
        }
    }
    for o in &old.apps {
        if find(&new.apps, &o.id).is_none() {
            out.push(format!("app {}: removed", o.id));
        }
    }
    out
}

/// Whether a restart-only setting differs between two configs: `!=` for
/// the plain types, the exposed values for the admin token (a secret, which
/// has no `==`).
trait Differs {
    fn differs(&self, other: &Self) -> bool;
}

macro_rules! differs_by_eq {
    ($($t:ty),*) => {
        $(impl Differs for $t {
            fn differs(&self, other: &Self) -> bool {
                self != other
            }
        })*
    };
}

differs_by_eq!(
    std::net::SocketAddr,
    Option<std::net::SocketAddr>,
    usize,
    u64,
    std::time::Duration,
    Option<std::path::PathBuf>,
    String
);

impl Differs for Option<secrecy::SecretString> {
    fn differs(&self, other: &Self) -> bool {
        use secrecy::ExposeSecret;
        self.as_ref().map(|t| t.expose_secret()) != other.as_ref().map(|t| t.expose_secret())
    }
}

/// The settings a reload cannot change (they are bound at start; `tls`,
/// restart-only only when turned on or off, is [`Reloader::tls_change`]'s),
/// in one list, from which both [`restart_only_changes`] (which of them a new file
/// changes) and [`keep_restart_only`] (the running values put back) are
/// made, so the two cannot drift apart.
macro_rules! restart_only {
    ($($key:literal => $($field:ident).+;)*) => {
        /// Settings that a reload cannot change, by their keys: those that
        /// differ between `old` and `new`.
        fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
            let mut changed = Vec::new();
            $(
                if old.$($field).+.differs(&new.$($field).+) {
                    changed.push($key);
                }
            )*
            changed
        }

        /// Gives `new` the values of `running`'s restart-only settings
        /// (those [`restart_only_changes`] compares), which a reload cannot
        /// change.
        fn keep_restart_only(running: &Config, new: &mut Config) {
            $( new.$($field).+.clone_from(&running.$($field).+); )*
        }
    };
}

restart_only! {
    "listen" => listen;
    "admin.listen" => admin.listen;
    "admin.token" => admin.token;
    "workers" => workers;
    "max_header_bytes" => max_header_bytes;
    "max_connections" => max_connections;
    "header_timeout_ms" => header_timeout;
    "keepalive_timeout_ms" => keepalive_timeout;
    "shutdown_grace_ms" => shutdown_grace;
    "telemetry.data_dir" => telemetry.data_dir;
    "telemetry.max_callers_per_app" => telemetry.max_callers_per_app;
    "telemetry.retention_days" => telemetry.retention_days;
    "telemetry.flush_interval_ms" => telemetry.flush_interval;
    "telemetry.instance" => telemetry.instance;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(apps: &str) -> Config {
        let text = format!("[upstream]\nurl = \"http://127.0.0.1:6001\"\n{apps}");
        Config::from_toml_str(&text, &|_: &str| None).expect("valid")
    }

    #[test]
    fn app_changes_name_each_app_and_setting() {
        let old = config(
            "[[apps]]\nid = \"4242\"\nkey = \"k\"\nsecret = \"s\"\nmode = \"observe\"\n\
             [[apps]]\nid = \"9\"\nkey = \"k9\"\nsecret = \"s9\"\n",
        );
        let new = config(
            "[[apps]]\nid = \"4242\"\nkey = \"k\"\nsecret = \"s2\"\nmode = \"translate\"\n\
             [[apps]]\nid = \"7\"\nkey = \"k7\"\nsecret = \"s7\"\nmode = \"reject\"\n",
        );
        let changes = app_changes(&old, &new);
        assert_eq!(
            changes,
            [
                "app 4242: mode observe → translate, secrets changed, upstream credentials changed",
                "app 7: added (mode reject)",
                "app 9: removed",
            ]
        );
        assert!(changes.iter().all(|c| !c.contains("s2")), "no secret shown");
        assert!(app_changes(&new, &new).is_empty());

        let window = |start: &str| {
            config(&format!(
                "[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n\
                 brownouts = [{{ start = \"{start}\", end = \"2027-05-12T15:00:00Z\" }}]\n"
            ))
        };
        let moved = app_changes(
            &window("2027-05-12T14:00:00Z"),
            &window("2027-05-12T14:30:00Z"),
        );
        assert_eq!(
            moved,
            [
                "app 1: brownouts 2027-05-12T14:00:00Z/2027-05-12T15:00:00Z → \
              2027-05-12T14:30:00Z/2027-05-12T15:00:00Z"
            ],
            "a window moved, their number the same"
        );
        assert!(
            app_changes(
                &window("2027-05-12T14:00:00Z"),
                &window("2027-05-12T16:00:00+02:00")
            )
            .is_empty(),
            "the same instant written with another offset"
        );
    }

    /// Every setting `restart_only_changes` names is one
    /// `keep_restart_only` restores, and nothing else is touched.
    #[test]
    fn restart_only_settings_keep_their_running_values() {
        let running = config("[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n");
        let changed = Config::from_toml_str(
            "listen = \"127.0.0.1:1\"\nworkers = 3\nheader_timeout_ms = 7\n\
             max_header_bytes = 9000\nmax_connections = 5\nshutdown_grace_ms = 8\n\
             keepalive_timeout_ms = 11\n\
             [admin]\nlisten = \"127.0.0.1:2\"\ntoken = \"t\"\n\
             [telemetry]\ndata_dir = \"/nowhere\"\nmax_callers_per_app = 3\n\
             retention_days = 40\nflush_interval_ms = 10\ninstance = \"other\"\n\
             [upstream]\nurl = \"http://127.0.0.1:6001\"\n\
             [[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\nmode = \"reject\"\n",
            &|_: &str| None,
        )
        .expect("valid");
        let named = restart_only_changes(&running, &changed);
        assert_eq!(
            named,
            [
                "listen",
                "admin.listen",
                "admin.token",
                "workers",
                "max_header_bytes",
                "max_connections",
                "header_timeout_ms",
                "keepalive_timeout_ms",
                "shutdown_grace_ms",
                "telemetry.data_dir",
                "telemetry.max_callers_per_app",
                "telemetry.retention_days",
                "telemetry.flush_interval_ms",
                "telemetry.instance",
            ]
        );
        let mut kept = changed.clone();
        keep_restart_only(&running, &mut kept);
        assert!(restart_only_changes(&running, &kept).is_empty());
        assert_eq!(kept.apps[0].mode.as_str(), "reject", "the rest is applied");
        assert_eq!(one_line("a\n  b\r\n\nc"), "a | b | c");
    }

    /// A reload that finds `[tls]`'s files changed serves the new
    /// certificate; one whose files cannot be loaded is refused and the
    /// running certificate stays; turning TLS off, or a reloader without
    /// the listener's handle, leaves `tls` to a restart.
    #[tokio::test]
    async fn renewed_tls_files_are_served_and_broken_ones_refused() {
        use crate::http::tls::Inbound;
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let path = dir.path().join("proxy.toml");
        let body = "[upstream]\nurl = \"http://127.0.0.1:6001\"\n\
                    [[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n";
        let with_tls = format!(
            "[tls]\ncert = {:?}\nkey = {:?}\n{body}",
            cert.display().to_string(),
            key.display().to_string()
        );
        let issue = || {
            let (written, _) = crate::http::tls::tests::write_pair(dir.path());
            assert_eq!((&written.cert, &written.key), (&cert, &key));
        };
        issue();
        std::fs::write(&path, &with_tls).expect("write");
        let source = ConfigSource::File(path.clone());
        let config = source.load().expect("valid");
        let served = Inbound::load(config.tls.as_ref().expect("tls"))
            .expect("loads")
            .certificate;
        let before = served.current();
        let started = before.fingerprint();
        let telemetry = Arc::new(Telemetry::new(&config));
        let proxy = Proxy::new(
            config,
            Arc::new(crate::clock::SystemClock),
            telemetry.clone(),
        );
        let reloader =
            Reloader::new(source, proxy.clone(), telemetry.clone()).with_tls(Some(served.clone()));
        let without_handle = Reloader::new(ConfigSource::File(path.clone()), proxy, telemetry);

        let same = reloader.reload().expect("applies");
        assert!(same.restart_needed.is_empty(), "{same:?}");
        assert_eq!(served.current().fingerprint(), started, "unchanged files");

        issue();
        let renewed = reloader.reload().expect("applies");
        assert!(renewed.restart_needed.is_empty(), "{renewed:?}");
        let now = served.current().fingerprint();
        assert_ne!(now, started, "the renewed certificate is served");
        let again = reloader.reload().expect("applies");
        assert!(again.restart_needed.is_empty(), "{again:?}");
        assert_eq!(served.current().fingerprint(), now);
        // A reload cut short after the configuration's swap, before the
        // certificate's (the running configuration holds the files' digest,
        // the listener still the older certificate): the next reload
        // compares the files with what is served, and serves them.
        served.replace(Certificate::clone(&before));
        let healed = reloader.reload().expect("applies");
        assert!(healed.restart_needed.is_empty(), "{healed:?}");
        assert_eq!(served.current().fingerprint(), now, "made good");

        let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        std::fs::write(&key, other.signing_key.serialize_pem()).expect("write");
        let Err(ReloadError::Refused(refused)) = reloader.reload() else {
            panic!("a key that is not the certificate's is refused");
        };
        let problems = refused.problems().join("; ");
        assert!(problems.starts_with("tls: "), "{problems}");
        assert!(!problems.contains("PRIVATE KEY"), "no contents: {problems}");
        assert_eq!(served.current().fingerprint(), now, "still served");
        // A key file on one line: refused, and the answer holds none of it.
        let pem = other.signing_key.serialize_pem();
        std::fs::write(&key, pem.replace('\n', "")).expect("write");
        let Err(ReloadError::Refused(refused)) = reloader.reload() else {
            panic!("a malformed key file is refused");
        };
        let problems = refused.problems().join("; ");
        let base64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(problems.contains("no usable private key"), "{problems}");
        assert!(!problems.contains(&base64[..12]), "no contents: {problems}");
        assert_eq!(served.current().fingerprint(), now, "still served");

        // Without the listener's handle, only the paths are compared: a
        // certificate moved to another file waits for a restart.
        issue();
        let moved = dir.path().join("moved.pem");
        std::fs::copy(&cert, &moved).expect("copy");
        let elsewhere = with_tls.replace(
            &format!("{:?}", cert.display().to_string()),
            &format!("{:?}", moved.display().to_string()),
        );
        assert_ne!(elsewhere, with_tls);
        std::fs::write(&path, &elsewhere).expect("write");
        let not_served = without_handle.reload().expect("applies");
        assert_eq!(not_served.restart_needed, ["tls"]);
        assert_eq!(served.current().fingerprint(), now);

        std::fs::write(&path, body).expect("write");
        let off = reloader.reload().expect("applies");
        assert_eq!(off.restart_needed, ["tls"], "TLS off waits for a restart");
        assert_eq!(served.current().fingerprint(), now);

        // Started without TLS: turning it on waits for a restart, and its
        // files are checked now, not when the restart comes.
        let config = ConfigSource::File(path.clone()).load().expect("valid");
        let telemetry = Arc::new(Telemetry::new(&config));
        let plain = Proxy::new(
            config,
            Arc::new(crate::clock::SystemClock),
            telemetry.clone(),
        );
        let plain = Reloader::new(ConfigSource::File(path.clone()), plain, telemetry);
        std::fs::write(&path, &with_tls).expect("write");
        std::fs::write(&key, other.signing_key.serialize_pem()).expect("write");
        let Err(ReloadError::Refused(refused)) = plain.reload() else {
            panic!("TLS turned on with files that do not load is refused");
        };
        let problems = refused.problems().join("; ");
        assert!(problems.contains("turned on at a restart"), "{problems}");
        issue();
        let on = plain.reload().expect("applies");
        assert_eq!(on.restart_needed, ["tls"], "TLS on waits for a restart");
    }

    /// An upstream at the running `listen` is refused by a reload that
    /// moves `listen` (a restart-only setting, so the proxy still serves
    /// there), where validation saw only the file's new `listen`.
    #[test]
    fn an_upstream_at_the_running_listen_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("proxy.toml");
        let file = |listen: &str, upstream: &str| {
            format!(
                "listen = \"{listen}\"\n[upstream]\nurl = \"{upstream}\"\n\
                 [[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n"
            )
        };
        std::fs::write(&path, file("127.0.0.1:7001", "http://127.0.0.1:6001")).expect("write");
        let source = ConfigSource::File(path.clone());
        let config = source.load().expect("valid");
        let telemetry = Arc::new(Telemetry::new(&config));
        let proxy = Proxy::new(
            config,
            Arc::new(crate::clock::SystemClock),
            telemetry.clone(),
        );
        let reloader = Reloader::new(source, proxy.clone(), telemetry);

        std::fs::write(&path, file("127.0.0.1:7002", "http://localhost:7001")).expect("write");
        let Err(ReloadError::Refused(refused)) = reloader.reload() else {
            panic!("an upstream at the running listen is refused");
        };
        let problems = refused.problems().join("; ");
        assert!(
            problems.starts_with("upstream.url: ") && problems.contains("own `listen`"),
            "{problems}"
        );
        let running = proxy.current();
        assert_eq!(
            running.config().upstream.url.to_string(),
            "http://127.0.0.1:6001/",
            "the previous configuration serves on"
        );

        // Another upstream with the new listen: in force, the listen left
        // to a restart.
        std::fs::write(&path, file("127.0.0.1:7002", "http://127.0.0.1:6002")).expect("write");
        let reloaded = reloader.reload().expect("applies");
        assert_eq!(reloaded.restart_needed, ["listen"]);
    }

    /// A panic inside a reload is an answer, not the end of the reloader;
    /// refusals and successes pass through unchanged.
    #[test]
    fn a_panicking_reload_is_an_internal_error() {
        let panicked = guarded(|| -> Result<(), ConfigError> { panic!("boom at {}", 7) });
        assert!(
            matches!(&panicked, Err(ReloadError::Internal(what)) if what == "boom at 7"),
            "{panicked:?}"
        );
        let literal = guarded(|| -> Result<(), ConfigError> { panic!("literal") });
        assert!(
            matches!(&literal, Err(ReloadError::Internal(what)) if what == "literal"),
            "{literal:?}"
        );
        let refused =
            guarded(|| -> Result<(), ConfigError> { Err(ConfigError::Invalid(Vec::new())) });
        assert!(matches!(refused, Err(ReloadError::Refused(_))));
        assert_eq!(guarded(|| Ok(5)).expect("ok"), 5);
    }
}
