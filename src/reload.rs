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

/// Settings that a reload cannot change (they are bound at start).
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let (o, n) = (&old.telemetry, &new.telemetry);
    [
        ("listen", old.listen != new.listen),
        ("admin.listen", old.admin.listen != new.admin.listen),
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
