//! Migration telemetry: who still makes the deprecated calls.
//!
//! - [`metrics`]: Prometheus counters and histograms with bounded labels;
//! - [`ledger`]: every verified legacy call per caller and per hour, in memory;
//! - [`store`]: the ledger on disk (SQLite), written in the background;
//! - [`usage`]: the ledger's data, as `/usage` serves it;
//! - [`fingerprint`]: which library sent a verified deprecated call, from
//!   the shape of its request; [`call_site`]: the event and channel
//!   template a developer can grep for;
//! - [`logging`]: the text log format and the batching of log lines.
//!
//! Reports built from the ledger are in [`crate::report`].

pub mod call_site;
pub mod fingerprint;
pub mod ledger;
pub mod logging;
pub mod metrics;
pub mod store;
pub mod usage;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use std::time::Duration;

use crate::chain::ErrorChain;
use crate::config::Config;
use crate::pipeline::cutover::Path;
use crate::pusher::route::RouteKind;
use fingerprint::Library;
use ledger::{Ledger, LedgerCall};
use metrics::{AppId, AppReason, AppSeries, Metrics};
use store::{Store, StoreError};
use usage::OTHER;

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
    /// Every outcome, in label order.
    pub const ALL: [Outcome; 5] = [
        Outcome::Ok,
        Outcome::ClientError,
        Outcome::AuthFailed,
        Outcome::UpstreamError,
        Outcome::Rejected,
    ];

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
    /// Its library's family.
    pub library: Library,
    /// The short hash of its wire traits.
    pub fingerprint: &'a str,
    /// The event name (empty for stats).
    pub event: &'a str,
    /// The channel template.
    pub channel: &'a str,
    /// The cutover path it took; `None` when it was refused before one
    /// was decided.
    pub path: Option<Path>,
}

/// What is recorded of one request.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    /// The route.
    pub route: RouteKind,
    /// The app id of the path, if any.
    pub app_id: Option<&'a str>,
    /// The series of the app the path names ([`Telemetry::app_series`]),
    /// when the caller has them at hand; otherwise they are looked up.
    pub series: Option<&'a AppSeries>,
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
    /// The configured apps' series, by app id: the only `app_id` labels
    /// but `other`.
    configured: ArcSwap<HashMap<String, Arc<AppSeries>>>,
    /// The series of every app that is not configured.
    other: Arc<AppSeries>,
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
                &config.telemetry.instance,
            ),
            configured: ArcSwap::default(),
            other: Arc::new(AppSeries::new(AppId(Arc::from(OTHER)))),
            config_hash: ArcSwap::default(),
        };
        telemetry.configure(config);
        telemetry
    }

    /// Follows a (re)loaded configuration: the app labels, the sunset
    /// gauges, and the config hash in `build_info`. The ledger's own
    /// settings (cap, retention) stay those it was started with. Called
    /// before the proxy takes the configuration, so that its apps find
    /// their series ([`Telemetry::app_series`]).
    pub fn configure(&self, config: &Config) {
        let sunsets: Vec<(String, i64)> = config
            .apps
            .iter()
            .filter_map(|a| Some((a.id.clone(), a.sunset?.unix_timestamp())))
            .collect();
        // An app kept across a reload keeps its series (and their handles).
        let previous = self.configured.load();
        let app_ids: Vec<&str> = config.apps.iter().map(|a| a.id.as_str()).collect();
        self.metrics.configure(
            &self.config_hash.load(),
            previous.keys(),
            &config.hash,
            &app_ids,
            &sunsets,
        );
        let series = config
            .apps
            .iter()
            .map(|a| {
                let series = previous
                    .get(&a.id)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(AppSeries::new(AppId(Arc::from(a.id.as_str())))));
                // At 0 from now on, so increase() sees the first call.
                series.create_all(&self.metrics);
                (a.id.clone(), series)
            })
            .collect();
        self.configured.store(Arc::new(series));
        self.config_hash.store(Arc::new(config.hash.clone()));
    }

    /// The configured apps' ids, sorted (for reports that list them with
    /// zero calls).
    pub fn configured_app_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.configured.load().keys().cloned().collect();
        ids.sort();
        ids
    }

    /// The loaded configuration's hash.
    pub fn config_hash(&self) -> Arc<String> {
        self.config_hash.load_full()
    }

    /// Follows the TLS certificate served from now on
    /// ([`metrics::names::TLS_CERTIFICATE_EXPIRY`]): its series replaces
    /// the previous certificate's.
    pub fn tls_certificate(&self, certificate: &crate::http::tls::Certificate) {
        let family = &self.metrics.tls_certificate_expiry;
        family.clear();
        if let Some(end) = certificate.not_after() {
            family
                .get_or_create(&metrics::CertificateLabel {
                    sha256: certificate.fingerprint(),
                })
                .set(end);
        }
    }

    /// Counts a configuration reload.
    pub fn reloaded(&self, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.metrics
            .config_reloads
            .get_or_create(&metrics::ResultLabel { result })
            .inc();
    }

    /// Counts an admin request refused for its bearer token, for `reason`
    /// (one of [`metrics::ADMIN_REFUSED_REASONS`]).
    pub fn admin_refused(&self, reason: &'static str) {
        self.metrics
            .admin_refused
            .get_or_create(&metrics::ReasonLabel { reason })
            .inc();
    }

    /// Counts a connection the HTTP layer ended with an error of `kind`.
    pub fn connection_error(&self, kind: &'static str) {
        self.metrics
            .connection_errors
            .get_or_create(&metrics::KindLabel { kind })
            .inc();
    }

    /// Counts a shadow comparison not made, for `reason` (one of
    /// [`metrics::SHADOW_SKIP_REASONS`]).
    pub fn shadow_skipped(&self, app_id: &str, reason: &'static str) {
        self.metrics
            .shadow_skipped
            .get_or_create(&metrics::AppReason {
                app_id: self.app_series(app_id).app_id().clone(),
                reason,
            })
            .inc();
    }

    /// Counts a shadow-mode field that differed.
    pub fn shadow_mismatch(&self, app_id: &str, field: &'static str) {
        self.metrics
            .shadow_mismatches
            .get_or_create(&metrics::AppField {
                app_id: self.app_series(app_id).app_id().clone(),
                field,
            })
            .inc();
    }

    /// The series of configured app `app_id`, or those of `other` when it
    /// is not configured (the `app_id` label stays bounded).
    pub fn app_series(&self, app_id: &str) -> Arc<AppSeries> {
        self.configured
            .load()
            .get(app_id)
            .cloned()
            .unwrap_or_else(|| self.other.clone())
    }

    /// Records one request: metrics always, the ledger for verified legacy
    /// calls only (so forged traffic cannot fill it).
    pub fn observe(&self, o: &Observation<'_>) {
        let looked_up;
        let series = match (o.series, o.app_id) {
            (Some(series), _) => series,
            (None, Some(id)) => {
                looked_up = self.app_series(id);
                &looked_up
            }
            (None, None) => &self.other,
        };
        let m = &self.metrics;
        series.request(&m.requests, o.route, o.outcome).inc();
        m.request_duration_of(o.route)
            .observe(o.duration.as_secs_f64());
        if let Some(d) = o.upstream_duration {
            m.upstream_duration_of(o.route).observe(d.as_secs_f64());
        }
        if let Some(reason) = o.signature_failure {
            m.signature_failures
                .get_or_create(&AppReason {
                    app_id: series.app_id().clone(),
                    reason,
                })
                .inc();
        }
        if !o.route.is_legacy() {
            return;
        }
        if let (Some(caller), Some(id)) = (o.caller, o.app_id) {
            series
                .deprecated_call(&m.deprecated_calls, o.route, caller.library, caller.path)
                .inc();
            self.ledger.record(&LedgerCall {
                app_id: id,
                route: o.route,
                auth_key: caller.auth_key,
                library: caller.library.as_str(),
                fingerprint: caller.fingerprint,
                user_agent: caller.user_agent,
                client_address: caller.client_address,
                event: caller.event,
                channel: caller.channel,
                now: o.now,
            });
        }
    }

    /// The metrics, for the routes that count their own (the coalescing
    /// block, [`metrics::UpstreamRequests`]).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
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
    /// The ledger's count of recorded calls up to which all are written.
    written_upto: Arc<std::sync::atomic::AtomicU64>,
    /// Failed writes since the last one that worked, for quiet logging.
    failures: Arc<Mutex<Failures>>,
}

/// Failed ledger writes since the last one that worked: logged at the
/// first, then at most once per [`FAILURE_LOG_EVERY`], and once more when
/// writing works again.
#[derive(Debug, Default)]
struct Failures {
    /// Failed attempts in a row.
    count: u64,
    /// When a failure was last logged.
    logged: Option<std::time::Instant>,
}

/// How often a ledger that keeps failing to be written is logged again.
pub const FAILURE_LOG_EVERY: Duration = Duration::from_secs(60);

impl Persistence {
    /// Opens the store in `dir` (a new one records since `now`) and loads
    /// it into `telemetry`'s ledger. A file that cannot be read as a
    /// ledger is moved aside and a new ledger started, with an ERROR line
    /// naming where it went and why; a ledger the previous run left open
    /// is said in a WARN line ([`Store::open_and_load`]).
    pub fn open(
        dir: &std::path::Path,
        telemetry: &Telemetry,
        now: u64,
    ) -> Result<Self, StoreError> {
        let opened = Store::open_and_load(dir, now, telemetry.ledger.instance())?;
        let recorded_since = opened.usage.recorded_since.map(|t| t.unix_timestamp());
        if let Some(aside) = &opened.moved_aside {
            tracing::error!(
                moved_to = %aside.path.display(),
                reason = %ErrorChain(&aside.reason),
                recorded_since,
                "usage ledger unreadable: moved aside and a new one started, which holds none of its calls and records from now on"
            );
        }
        if opened.store.left_open_by_previous_run() {
            tracing::warn!(
                recorded_since,
                "the previous run did not close the usage ledger (a crash, a kill, or a failed last write): the calls it recorded since its last write may be missing, so the ledger vouches for calls from now on only"
            );
        }
        telemetry
            .ledger
            .load(opened.usage, opened.store.fingerprints_since());
        let store = opened.store;
        Ok(Self {
            store: Arc::new(Mutex::new(store)),
            pruned_hour: Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX)),
            written_upto: Arc::new(std::sync::atomic::AtomicU64::new(
                telemetry.ledger.recorded(),
            )),
            failures: Arc::default(),
        })
    }

    /// Writes what changed in the ledger since the last flush, off the
    /// async threads. On failure the changes stay pending for the next
    /// flush; returns whether they were written.
    pub async fn flush(&self, telemetry: &Telemetry, now: u64) -> bool {
        self.write(telemetry, now, false).await
    }

    /// The last flush, at a clean shutdown: as [`Persistence::flush`], and
    /// once everything is written the ledger is marked closed
    /// ([`Store::close`]), so the next run knows that no call is missing.
    /// Returns whether it was written; if not, the ledger stays marked
    /// open.
    pub async fn close(&self, telemetry: &Telemetry, now: u64) -> bool {
        self.write(telemetry, now, true).await
    }

    /// [`Persistence::flush`], and with `close` [`Persistence::close`].
    async fn write(&self, telemetry: &Telemetry, now: u64, close: bool) -> bool {
        use std::sync::atomic::Ordering;
        let changes = telemetry.ledger.take_changes(now);
        let hour = changes.prune_before / 3600;
        if !close && changes.is_empty() && self.pruned_hour.load(Ordering::Relaxed) == hour {
            // Nothing new, and old hours were pruned already: no write.
            return true;
        }
        let store = self.store.clone();
        let pending = changes.clone();
        let written = tokio::task::spawn_blocking(move || {
            let mut store = store.lock().unwrap_or_else(|p| p.into_inner());
            if close {
                store.close(&pending)
            } else {
                store.write(&pending)
            }
        })
        .await;
        let error = match written {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(ErrorChain(&e).to_string()),
            Err(e) => Some(format!("the write task failed: {e}")),
        };
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let ok = error.is_none();
        if let Some(error) = error {
            telemetry.ledger.restore_changes(changes);
            failures.count += 1;
            let due = failures
                .logged
                .is_none_or(|at| at.elapsed() >= FAILURE_LOG_EVERY);
            if due {
                failures.logged = Some(std::time::Instant::now());
                tracing::error!(
                    error = %error,
                    failed_writes = failures.count,
                    unwritten_calls = self.unwritten(telemetry),
                    "usage ledger write failed; retrying at every flush, logging at most once a minute"
                );
            }
        } else {
            self.pruned_hour.store(hour, Ordering::Relaxed);
            self.written_upto
                .fetch_max(changes.recorded_upto, Ordering::Relaxed);
            if failures.count > 0 {
                tracing::info!(
                    failed_writes = failures.count,
                    "usage ledger written again after failed writes"
                );
            }
            *failures = Failures::default();
        }
        telemetry
            .metrics
            .ledger_unwritten_calls
            .set(i64::try_from(self.unwritten(telemetry)).unwrap_or(i64::MAX));
        ok
    }

    /// Calls recorded that are not yet written.
    pub fn unwritten(&self, telemetry: &Telemetry) -> u64 {
        use std::sync::atomic::Ordering;
        telemetry
            .ledger
            .recorded()
            .saturating_sub(self.written_upto.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests;
