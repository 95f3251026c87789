//! Hot reload: re-read the configuration, validate it, and swap it in
//! atomically (on SIGHUP or `POST /reload` on the admin listener). An
//! invalid configuration is refused and the previous one keeps serving.

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{self, Config, ConfigError};
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
}

impl Reloader {
    /// A reloader of `proxy` from `source`.
    pub fn new(source: ConfigSource, proxy: Proxy, telemetry: Arc<Telemetry>) -> Self {
        Self {
            source,
            proxy,
            telemetry,
        }
    }

    /// Re-reads and validates the configuration, then swaps it in for new
    /// requests; returns its hash. On failure the running configuration is
    /// kept and every problem is logged.
    pub fn reload(&self) -> Result<String, ConfigError> {
        match self.source.load() {
            Ok(config) => {
                let current = self.proxy.current();
                let ignored = restart_only_changes(current.config(), &config);
                if !ignored.is_empty() {
                    tracing::warn!(
                        settings = ?ignored,
                        "these settings changed but take effect only after a restart"
                    );
                }
                for change in app_changes(current.config(), &config) {
                    tracing::info!("{change}");
                }
                let hash = config.hash.clone();
                self.telemetry.configure(&config);
                self.proxy.reload(config);
                self.telemetry.reloaded(true);
                tracing::info!(config_hash = %hash, "configuration reloaded");
                Ok(hash)
            }
            Err(e) => {
                self.telemetry.reloaded(false);
                tracing::error!(
                    problems = %e.problems().join("; "),
                    "configuration reload refused; the previous configuration keeps serving"
                );
                Err(e)
            }
        }
    }
}

/// What a reload changes per app, one line each: `app 4242: mode observe →
/// translate`, `app 7: added (mode translate)`, `app 9: removed`. Secrets
/// are never shown, only that they changed.
fn app_changes(old: &Config, new: &Config) -> Vec<String> {
    use crate::config::AppConfig;
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
        let sunset = |a: &AppConfig| a.sunset.map_or("none".into(), |t| t.to_string());
        field("sunset", sunset(&o), sunset(n));
        field(
            "brownouts",
            o.brownouts.len().to_string(),
            n.brownouts.len().to_string(),
        );
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

/// Settings that a reload cannot change (they are bound at start).
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let (o, n) = (&old.telemetry, &new.telemetry);
    [
        ("listen", old.listen != new.listen),
        ("admin.listen", old.admin.listen != new.admin.listen),
        ("admin.token", {
            use secrecy::ExposeSecret;
            let token = |c: &Config| c.admin.token.as_ref().map(|t| t.expose_secret().to_owned());
            token(old) != token(new)
        }),
        ("workers", old.workers != new.workers),
        (
            "header_timeout_ms",
            old.header_timeout != new.header_timeout,
        ),
        (
            "shutdown_grace_ms",
            old.shutdown_grace != new.shutdown_grace,
        ),
        ("telemetry.data_dir", o.data_dir != n.data_dir),
        (
            "telemetry.max_callers_per_app",
            o.max_callers_per_app != n.max_callers_per_app,
        ),
        (
            "telemetry.retention_days",
            o.retention_days != n.retention_days,
        ),
        (
            "telemetry.flush_interval_ms",
            o.flush_interval != n.flush_interval,
        ),
    ]
    .into_iter()
    .filter_map(|(name, changed)| changed.then_some(name))
    .collect()
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
    }
}
