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
        self.metrics.configure(&config.hash, &sunsets);
        // An app kept across a reload keeps its series (and their handles).
        let previous = self.configured.load();
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

    /// Counts a configuration reload.
    pub fn reloaded(&self, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.metrics
            .config_reloads
            .get_or_create(&metrics::ResultLabel { result })
            .inc();
    }

    /// Counts a connection the HTTP layer ended with an error of `kind`.
    pub fn connection_error(&self, kind: &'static str) {
        self.metrics
            .connection_errors
            .get_or_create(&metrics::KindLabel { kind })
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
    /// it into `telemetry`'s ledger.
    pub fn open(
        dir: &std::path::Path,
        telemetry: &Telemetry,
        now: u64,
    ) -> Result<Self, StoreError> {
        let store = Store::open(dir, now, telemetry.ledger.instance())?;
        telemetry.ledger.load(store.load()?);
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
mod tests {
    use super::*;

    fn config(app_ids: &[&str]) -> Config {
        let mut text = String::from("[upstream]\nurl = \"http://127.0.0.1:6001\"\n");
        for id in app_ids {
            text.push_str(&format!(
                "[[apps]]\nid = \"{id}\"\nkey = \"k{id}\"\nsecret = \"s{id}\"\n"
            ));
        }
        Config::from_toml_str(&text, &|_: &str| None).expect("a valid config")
    }

    fn observation<'a>(
        app_id: &'a str,
        series: Option<&'a AppSeries>,
        route: RouteKind,
    ) -> Observation<'a> {
        Observation {
            route,
            app_id: Some(app_id),
            series,
            outcome: Outcome::Ok,
            duration: Duration::from_millis(3),
            upstream_duration: Some(Duration::from_millis(2)),
            signature_failure: None,
            caller: Some(VerifiedCaller {
                auth_key: "k1",
                user_agent: "pusher-gem/0.9.2",
                client_address: "10.0.0.1",
                library: Library::Unknown,
                fingerprint: "fp",
                event: "ev",
                channel: "c",
                path: Some(Path::Translate),
            }),
            now: 1_700_000_000,
        }
    }

    fn sample(text: &str, series: &str) -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn observations_count_in_the_series_metrics_exposes() {
        let telemetry = Telemetry::new(&config(&["1"]));
        let series = telemetry.app_series("1");
        for _ in 0..3 {
            telemetry.observe(&observation("1", Some(&series), RouteKind::LegacyTrigger));
        }
        // Without series at hand, they are looked up.
        telemetry.observe(&observation("1", None, RouteKind::LegacyTrigger));
        // An unconfigured app, whether or not the caller passes series.
        telemetry.observe(&observation("9", None, RouteKind::Passthrough));
        let other = telemetry.app_series("9");
        telemetry.observe(&observation("9", Some(&other), RouteKind::Passthrough));

        let text = telemetry.metrics_text();
        let requests =
            |labels: &str| sample(&text, &format!("pusher_cutover_requests_total{{{labels}}}"));
        assert_eq!(
            requests(r#"app_id="1",route="legacy_trigger",outcome="ok""#),
            Some(4)
        );
        assert_eq!(
            requests(r#"app_id="other",route="passthrough",outcome="ok""#),
            Some(2)
        );
        assert_eq!(
            sample(
                &text,
                r#"pusher_cutover_deprecated_calls_total{app_id="1",route="legacy_trigger",library="unknown",path="translated"}"#
            ),
            Some(4)
        );
        assert_eq!(
            sample(
                &text,
                r#"pusher_cutover_request_duration_seconds_count{route="legacy_trigger"}"#
            ),
            Some(4)
        );
        assert_eq!(
            sample(
                &text,
                r#"pusher_cutover_upstream_duration_seconds_count{route="passthrough"}"#
            ),
            Some(2)
        );
        // A configured app's series are there at 0 before any call, so
        // increase() sees the first one: every library and path...
        assert_eq!(
            sample(
                &text,
                r#"pusher_cutover_deprecated_calls_total{app_id="1",route="legacy_stats",library="pypi-pusher-0.6-0.8",path="shadowed"}"#
            ),
            Some(0)
        );
        assert_eq!(
            sample(
                &text,
                r#"pusher_cutover_deprecated_calls_total{app_id="1",route="legacy_trigger",library="unknown",path="invalid"}"#
            ),
            Some(0)
        );
        // ... but no shadowed trigger, which cannot happen;
        assert!(
            !text.contains(r#"route="legacy_trigger",library="unknown",path="shadowed""#),
            "{text}"
        );
        // requests by outcome, signature failures by reason, shadow fields.
        assert_eq!(
            requests(r#"app_id="1",route="legacy_stats",outcome="client_error""#),
            Some(0)
        );
        assert_eq!(
            sample(
                &text,
                r#"pusher_cutover_signature_failures_total{app_id="1",reason="timestamp_expired"}"#
            ),
            Some(0)
        );
        assert_eq!(
            sample(
                &text,
                r#"pusher_cutover_shadow_mismatches_total{app_id="1",field="answer"}"#
            ),
            Some(0)
        );
        // Every route's histograms too.
        assert_eq!(
            sample(
                &text,
                r#"pusher_cutover_request_duration_seconds_count{route="legacy_stats"}"#
            ),
            Some(0)
        );
        // The unconfigured apps' series are created when first used only.
        assert!(
            !text.contains(r#"app_id="other",route="legacy_stats""#),
            "{text}"
        );
    }

    #[test]
    fn a_reload_keeps_the_series_of_kept_apps_and_drops_removed_ones() {
        let telemetry = Telemetry::new(&config(&["1", "2"]));
        let one = telemetry.app_series("1");
        telemetry.observe(&observation("1", Some(&one), RouteKind::LegacyStats));
        telemetry.configure(&config(&["1", "3"]));
        assert!(Arc::ptr_eq(&one, &telemetry.app_series("1")));
        assert_eq!(telemetry.app_series("2").app_id().0.as_ref(), OTHER);
        assert_eq!(telemetry.app_series("3").app_id().0.as_ref(), "3");
        // A handle taken before the reload still counts in the same series.
        let again = telemetry.app_series("1");
        telemetry.observe(&observation("1", Some(&again), RouteKind::LegacyStats));
        let text = telemetry.metrics_text();
        assert_eq!(
            sample(
                &text,
                r#"pusher_cutover_requests_total{app_id="1",route="legacy_stats",outcome="ok"}"#
            ),
            Some(2)
        );
    }

    /// A store that stops accepting writes (its callers table dropped
    /// under it): the calls stay pending and counted, the gauge says how
    /// many, and once the store works again they are written.
    #[tokio::test]
    async fn failed_writes_keep_the_calls_and_say_how_many() {
        let dir = tempfile::tempdir().expect("tempdir");
        let telemetry = Telemetry::new(&config(&["1"]));
        let p = Persistence::open(dir.path(), &telemetry, 1_700_000_000).expect("open");
        let series = telemetry.app_series("1");
        for _ in 0..5 {
            telemetry.observe(&observation("1", Some(&series), RouteKind::LegacyTrigger));
        }
        assert_eq!(p.unwritten(&telemetry), 5);
        let db = rusqlite::Connection::open(dir.path().join(store::FILE_NAME)).expect("open");
        db.execute_batch("ALTER TABLE callers RENAME TO callers_away")
            .expect("sabotage");
        assert!(!p.flush(&telemetry, 1_700_000_010).await, "the write fails");
        assert!(!p.flush(&telemetry, 1_700_000_020).await, "and again");
        assert_eq!(p.unwritten(&telemetry), 5, "nothing is lost from memory");
        let gauge =
            |t: &Telemetry| sample(&t.metrics_text(), "pusher_cutover_ledger_unwritten_calls");
        assert_eq!(gauge(&telemetry), Some(5));
        db.execute_batch("ALTER TABLE callers_away RENAME TO callers")
            .expect("repair");
        assert!(p.flush(&telemetry, 1_700_000_030).await, "written again");
        assert_eq!(p.unwritten(&telemetry), 0);
        assert_eq!(gauge(&telemetry), Some(0));
        let stored = store::Store::open_read_only(dir.path())
            .expect("reopen")
            .load()
            .expect("load");
        assert_eq!(stored.apps[0].callers[0].calls, 5);
    }
}
