//! The configuration file as serde reads it, with its defaults; nothing
//! here is validated (see `validate.rs`).

use std::path::PathBuf;

use serde::Deserialize;

use super::{DEFAULT_DEPRECATION_LINK, Mode, SubscriptionCounting};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default = "default_listen")]
    pub(super) listen: String,
    #[serde(default = "default_window")]
    pub(super) timestamp_window_secs: u64,
    #[serde(default = "default_max_body")]
    pub(super) max_body_bytes: usize,
    #[serde(default = "default_header_timeout")]
    pub(super) header_timeout_ms: u64,
    #[serde(default = "default_keepalive_timeout")]
    pub(super) keepalive_timeout_ms: u64,
    #[serde(default = "default_shutdown_grace")]
    pub(super) shutdown_grace_ms: u64,
    #[serde(default = "default_body_timeout")]
    pub(super) body_timeout_ms: u64,
    #[serde(default)]
    pub(super) bypass: bool,
    #[serde(default = "default_max_header_bytes")]
    pub(super) max_header_bytes: usize,
    #[serde(default = "default_max_connections")]
    pub(super) max_connections: usize,
    #[serde(default)]
    pub(super) workers: usize,
    pub(super) tls: Option<RawTls>,
    pub(super) upstream: RawUpstream,
    #[serde(default)]
    pub(super) admin: RawAdmin,
    #[serde(default)]
    pub(super) telemetry: RawTelemetry,
    #[serde(default)]
    pub(super) apps: Vec<RawApp>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    #[serde(default = "default_true")]
    pub(super) enabled: bool,
    #[serde(default = "default_admin_listen")]
    pub(super) listen: String,
    pub(super) token: Option<String>,
    pub(super) token_env: Option<String>,
    pub(super) token_file: Option<std::path::PathBuf>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: default_admin_listen(),
            token: None,
            token_env: None,
            token_file: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTelemetry {
    pub(super) data_dir: Option<PathBuf>,
    #[serde(default = "default_max_callers")]
    pub(super) max_callers_per_app: usize,
    #[serde(default = "default_flush_interval")]
    pub(super) flush_interval_ms: u64,
    #[serde(default = "default_retention_days")]
    pub(super) retention_days: u64,
    #[serde(default = "default_deprecation_link")]
    pub(super) deprecation_link: String,
    pub(super) instance: Option<String>,
}

impl Default for RawTelemetry {
    fn default() -> Self {
        Self {
            data_dir: None,
            max_callers_per_app: default_max_callers(),
            flush_interval_ms: default_flush_interval(),
            retention_days: default_retention_days(),
            deprecation_link: default_deprecation_link(),
            instance: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub(super) url: String,
    #[serde(default = "default_upstream_timeout")]
    pub(super) timeout_ms: u64,
    #[serde(default = "default_connect_timeout")]
    pub(super) connect_timeout_ms: u64,
    #[serde(default = "default_upstream_connections")]
    pub(super) max_connections: usize,
    #[serde(default = "default_ping_interval")]
    pub(super) ping_interval_ms: u64,
    #[serde(default = "default_upstream_idle_timeout")]
    pub(super) idle_timeout_ms: u64,
    // upstream.protocol
    #[serde(default)]
    pub(super) protocol: super::UpstreamProtocol,
    pub(super) ca_file: Option<std::path::PathBuf>,
    // Coalescing of legacy triggers (see `Batching`).
    #[serde(default = "default_batch_in_flight")]
    pub(super) batch_in_flight: usize,
    #[serde(default = "default_batch_max")]
    pub(super) batch_max: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApp {
    pub(super) id: String,
    pub(super) key: String,
    pub(super) secret: Option<String>,
    pub(super) secret_env: Option<String>,
    pub(super) secret_file: Option<std::path::PathBuf>,
    #[serde(default)]
    pub(super) previous_secrets: Vec<String>,
    pub(super) previous_secrets_file: Option<std::path::PathBuf>,
    pub(super) subscription_count: Option<SubscriptionCounting>,
    pub(super) max_data_bytes: Option<usize>,
    pub(super) sunset: Option<String>,
    #[serde(default)]
    pub(super) mode: Mode,
    pub(super) rollout_percent: Option<u8>,
    #[serde(default)]
    pub(super) brownouts: Vec<RawBrownout>,
    pub(super) upstream: Option<RawAppUpstream>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBrownout {
    pub(super) start: String,
    pub(super) end: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAppUpstream {
    pub(super) id: Option<String>,
    pub(super) key: Option<String>,
    pub(super) secret: Option<String>,
    pub(super) secret_env: Option<String>,
    pub(super) secret_file: Option<std::path::PathBuf>,
}
pub(super) fn default_true() -> bool {
    true
}
pub(super) fn default_admin_listen() -> String {
    "127.0.0.1:9090".into()
}
pub(super) fn default_max_callers() -> usize {
    100
}
pub(super) fn default_flush_interval() -> u64 {
    5_000
}
pub(super) fn default_retention_days() -> u64 {
    35
}
pub(super) fn default_deprecation_link() -> String {
    DEFAULT_DEPRECATION_LINK.into()
}

pub(super) fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
pub(super) fn default_window() -> u64 {
    600
}
pub(super) fn default_max_body() -> usize {
    1024 * 1024
}
pub(super) fn default_header_timeout() -> u64 {
    10_000
}
/// nginx's `keepalive_timeout`.
pub(super) fn default_keepalive_timeout() -> u64 {
    75_000
}
pub(super) fn default_max_header_bytes() -> usize {
    32 * 1024
}
pub(super) fn default_max_connections() -> usize {
    4096
}
pub(super) fn default_body_timeout() -> u64 {
    10_000
}
pub(super) fn default_shutdown_grace() -> u64 {
    30_000
}
pub(super) fn default_upstream_timeout() -> u64 {
    10_000
}
/// 64 exchanges in flight carry ~1,300 calls/s at 50 ms per exchange
/// (Pusher over the internet) and far more on a nearby upstream.
pub(super) fn default_upstream_connections() -> usize {
    64
}
/// Trigger requests an app keeps on the wire before further legacy
/// triggers queue for the next batch.
pub(super) fn default_batch_in_flight() -> usize {
    2
}
/// Pusher's limit on events in one `batch_events` request.
pub(super) fn default_batch_max() -> usize {
    super::PUSHER_MAX_BATCH_EVENTS
}
pub(super) fn default_connect_timeout() -> u64 {
    3_000
}
pub(super) fn default_ping_interval() -> u64 {
    10_000
}
pub(super) fn default_upstream_idle_timeout() -> u64 {
    60_000
}
/// Pusher's largest event data (its multi-tenant clusters' limit): the
/// default `max_data_bytes` of an app behind Pusher.
pub(super) const PUSHER_MAX_DATA: usize = 10_240;
