//! Migration telemetry: who still makes the deprecated calls.
//!
//! - [`metrics`]: Prometheus counters and histograms with bounded labels;
//! - [`ledger`]: every verified legacy call per caller and per hour, in memory;
//! - [`store`]: the ledger on disk (SQLite), written in the background;
//! - [`usage`]: the ledger's data, as `/usage` serves it;
//! - [`report`]: JSON, table and HTML reports built from it.

pub mod ledger;
pub mod metrics;
pub mod report;
pub mod sources;
pub mod store;
pub mod usage;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use std::time::Duration;

use crate::config::Config;
use crate::error::ErrorChain;
use crate::route::RouteKind;
use ledger::Ledger;
use metrics::{AppId, AppReason, AppRoute, AppRouteOutcome, Metrics, RouteLabel};
use store::{Store, StoreError};
use usage::LegacyRoute;

/// The `app_id` label of every app that is not configured.
pub const OTHER_APP: &str = "other";

/// How a request ended, for `pusher_cutover_requests_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered with 1xx, 2xx or 3xx.
    Ok,
    /// The caller's request was refused (4xx other than 401).
    ClientError,
    /// Authentication failed (401), at the proxy or the upstream.
    AuthFailed,
    /// The upstream failed, timed out, or refused the proxy (5xx).
    UpstreamError,
    /// Refused by policy (reserved for the cutover stages).
    Rejected,
}

impl Outcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::ClientError => "client_error",
            Self::AuthFailed => "auth_failed",
            Self::UpstreamError => "upstream_error",
            Self::Rejected => "rejected",
        }
    }

    /// The outcome of an answer with `status` that no proxy error produced.
    pub fn of_status(status: u16) -> Self {
        match status {
            401 => Self::AuthFailed,
            400..=499 => Self::ClientError,
            500..=599 => Self::UpstreamError,
            _ => Self::Ok,
        }
    }
}

/// A caller whose legacy call passed verification.
#[derive(Debug, Clone, Copy)]
pub struct VerifiedCaller<'a> {
    /// The `auth_key` it signed with.
    pub auth_key: &'a str,
    /// Its `User-Agent`, empty when absent.
    pub user_agent: &'a str,
    /// Its address, as text.
    pub client_address: &'a str,
}

/// What is recorded of one request.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    /// The route.
    pub route: RouteKind,
    /// The app id of the path, if any.
    pub app_id: Option<&'a str>,
    /// How it ended.
    pub outcome: Outcome,
    /// Time to answer.
    pub duration: Duration,
    /// Time spent on the upstream, if it was called.
    pub upstream_duration: Option<Duration>,
    /// The signature-failure reason, if verification failed.
    pub signature_failure: Option<&'static str>,
    /// Set for legacy calls that passed verification: they enter the ledger.
    pub caller: Option<VerifiedCaller<'a>>,
    /// Unix time of the call.
    pub now: u64,
}

/// Metrics and ledger, shared by every request and kept across reloads.
#[derive(Debug)]
pub struct Telemetry {
    metrics: Metrics,
    ledger: Ledger,
    /// The configured app ids, as label values: the only ones but `other`.
    configured: ArcSwap<HashMap<String, AppId>>,
    /// The `other` label value.
    other: AppId,
    /// The loaded configuration's hash.
    config_hash: ArcSwap<String>,
}

impl Telemetry {
    /// Telemetry for `config`, with an empty ledger.
    pub fn new(config: &Config) -> Self {
        let telemetry = Self {
            metrics: Metrics::new(),
            ledger: Ledger::new(
                config.telemetry.max_callers_per_app,
                config.telemetry.retention_days,
            ),
            configured: ArcSwap::default(),
            other: AppId(Arc::from(OTHER_APP)),
            config_hash: ArcSwap::default(),
        };
        telemetry.configure(config);
        telemetry
    }

    /// Follows a (re)loaded configuration: the app labels, the sunset
    /// gauges, and the config hash in `build_info`. The ledger's own
    /// settings (cap, retention) stay those it was started with.
    pub fn configure(&self, config: &Config) {
        let sunsets: Vec<(String, i64)> = config
            .apps
            .iter()
            .filter_map(|a| Some((a.id.clone(), a.sunset?.unix_timestamp())))
            .collect();
        self.metrics.configure(&config.hash, &sunsets);
        let labels = config
            .apps
            .iter()
            .map(|a| (a.id.clone(), AppId(Arc::from(a.id.as_str()))))
            .collect();
        self.configured.store(Arc::new(labels));
        self.config_hash.store(Arc::new(config.hash.clone()));
    }

    /// The loaded configuration's hash.
    pub fn config_hash(&self) -> Arc<String> {
        self.config_hash.load_full()
    }

    /// Counts a configuration reload.
    pub fn reloaded(&self, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.metrics
            .config_reloads
            .get_or_create(&metrics::ResultLabel { result })
            .inc();
    }

    /// Counts a shadow-mode field that differed.
    pub fn shadow_mismatch(&self, app_id: &str, field: &'static str) {
        self.metrics
            .shadow_mismatches
            .get_or_create(&metrics::AppField {
                app_id: self.app_label(Some(app_id)),
                field,
            })
            .inc();
    }

    /// The bounded `app_id` label.
    fn app_label(&self, app_id: Option<&str>) -> AppId {
        app_id
            .and_then(|id| self.configured.load().get(id).cloned())
            .unwrap_or_else(|| self.other.clone())
    }

    /// Records one request: metrics always, the ledger for verified legacy
    /// calls only (so forged traffic cannot fill it).
    pub fn observe(&self, o: &Observation<'_>) {
        let app_id = self.app_label(o.app_id);
        let route = o.route.as_str();
        let m = &self.metrics;
        m.requests
            .get_or_create(&AppRouteOutcome {
                app_id: app_id.clone(),
                route,
                outcome: o.outcome.as_str(),
            })
            .inc();
        m.request_duration
            .get_or_create(&RouteLabel { route })
            .observe(o.duration.as_secs_f64());
        if let Some(d) = o.upstream_duration {
            m.upstream_duration
                .get_or_create(&RouteLabel { route })
                .observe(d.as_secs_f64());
        }
        if let Some(reason) = o.signature_failure {
            m.signature_failures
                .get_or_create(&AppReason {
                    app_id: app_id.clone(),
                    reason,
                })
                .inc();
        }
        let Some(legacy) = LegacyRoute::of(o.route) else {
            return;
        };
        if let (Some(caller), Some(id)) = (o.caller, o.app_id) {
            m.deprecated_calls
                .get_or_create(&AppRoute { app_id, route })
                .inc();
            self.ledger.record(
                id,
                legacy,
                caller.auth_key,
                caller.user_agent,
                caller.client_address,
                o.now,
            );
        }
    }

    /// The metrics in the OpenMetrics text format.
    pub fn metrics_text(&self) -> String {
        self.metrics.encode()
    }

    /// The ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }
}

/// The ledger's store, shared between the flusher and the final flush.
#[derive(Debug, Clone)]
pub struct Persistence {
    store: Arc<Mutex<Store>>,
    /// The hour (Unix time / 3600) of the retention cut-off last written:
    /// an idle flush in the same hour has nothing to prune either.
    pruned_hour: Arc<std::sync::atomic::AtomicU64>,
}

impl Persistence {
    /// Opens the store in `dir` and loads it into `telemetry`'s ledger.
    pub fn open(dir: &std::path::Path, telemetry: &Telemetry) -> Result<Self, StoreError> {
        let store = Store::open(dir)?;
        telemetry.ledger.load(store.load()?);
        Ok(Self {
            store: Arc::new(Mutex::new(store)),
            pruned_hour: Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX)),
        })
    }

    /// Writes what changed in the ledger since the last flush, off the
    /// async threads. On failure the changes stay pending for the next
    /// flush; returns whether they were written.
    pub async fn flush(&self, telemetry: &Telemetry, now: u64) -> bool {
        use std::sync::atomic::Ordering;
        let changes = telemetry.ledger.take_changes(now);
        let hour = changes.prune_before / 3600;
        if changes.is_empty() && self.pruned_hour.load(Ordering::Relaxed) == hour {
            // Nothing new, and old hours were pruned already: no write.
            return true;
        }
        let store = self.store.clone();
        let pending = changes.clone();
        let written = tokio::task::spawn_blocking(move || {
            let mut store = store.lock().unwrap_or_else(|p| p.into_inner());
            store.write(&pending)
        })
        .await;
        let ok = match written {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::error!(error = %ErrorChain(&e), "ledger write failed; will retry");
                false
            }
            Err(e) => {
                tracing::error!(error = %e, "ledger write task failed; will retry");
                false
            }
        };
        if ok {
            self.pruned_hour.store(hour, Ordering::Relaxed);
        } else {
            telemetry.ledger.restore_changes(changes);
        }
        ok
    }
}
