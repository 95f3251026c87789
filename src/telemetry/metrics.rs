//! Prometheus metrics. Names live in [`names`]; labels are bounded: the
//! app id only for configured apps (everything else is `other`), the route
//! label, the outcome, and the signature-failure reason.

use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets, linear_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;

use super::Outcome;
use super::fingerprint::Library;
use crate::config::MAX_BATCH_EVENTS;
use crate::pipeline::cutover::Path;
use crate::pusher::route::RouteKind;
use crate::pusher::signature::SignatureError;

/// Routes and outcomes, as indexes into the per-request handles.
const ROUTES: usize = 3;
const OUTCOMES: usize = 5;
const LIBRARIES: usize = Library::ALL.len();
const PATHS: usize = Path::ALL.len() + 1;
const _: () = assert!(RouteKind::Passthrough as usize + 1 == ROUTES);
const _: () = assert!(Outcome::Rejected as usize + 1 == OUTCOMES);

/// The `path` label of a deprecated call: the cutover path it took, or
/// `invalid` for a verified call refused before one was decided (a
/// malformed channel name).
pub fn path_label(path: Option<Path>) -> &'static str {
    path.map_or("invalid", Path::as_str)
}

fn path_index(path: Option<Path>) -> usize {
    path.map_or(Path::ALL.len(), |p| p as usize)
}

fn library_index(library: Library) -> usize {
    Library::ALL
        .iter()
        .position(|&l| l == library)
        .unwrap_or(LIBRARIES - 1)
}

/// Metric names as exposed (counters gain `_total` when encoded).
pub mod names {
    /// Verified deprecated calls, by app, route, library and path.
    pub const DEPRECATED_CALLS: &str = "pusher_cutover_deprecated_calls";
    /// Every request, by app, route and outcome.
    pub const REQUESTS: &str = "pusher_cutover_requests";
    /// Time from request to answer, by route.
    pub const REQUEST_DURATION: &str = "pusher_cutover_request_duration_seconds";
    /// Time spent waiting on the upstream, by route.
    pub const UPSTREAM_DURATION: &str = "pusher_cutover_upstream_duration_seconds";
    /// Refused signatures, by app and reason.
    pub const SIGNATURE_FAILURES: &str = "pusher_cutover_signature_failures";
    /// Always 1, labelled with the version.
    pub const BUILD_INFO: &str = "pusher_cutover_build_info";
    /// When the process started (Unix seconds): a restart between two
    /// scrapes shows in it when the counters alone cannot tell.
    pub const START_TIME: &str = "pusher_cutover_start_time_seconds";
    /// An app's `sunset`, as a Unix time.
    pub const APP_SUNSET: &str = "pusher_cutover_app_sunset_timestamp_seconds";
    /// 1 while an app is in the configuration in force, 0 once a reload
    /// removed it (until restart).
    pub const APP_CONFIGURED: &str = "pusher_cutover_app_configured";
    /// Shadow-mode stats whose translated answer differed, by field.
    pub const SHADOW_MISMATCHES: &str = "pusher_cutover_shadow_mismatches";
    /// Shadow comparisons not made, by app and reason
    /// ([`super::SHADOW_SKIP_REASONS`]).
    pub const SHADOW_SKIPPED: &str = "pusher_cutover_shadow_skipped";
    /// Configuration reloads, by result.
    pub const CONFIG_RELOADS: &str = "pusher_cutover_config_reloads";
    /// Connections the HTTP layer ended with an error, by kind.
    pub const CONNECTION_ERRORS: &str = "pusher_cutover_connection_errors";
    /// Admin requests refused for their bearer token, by reason.
    pub const ADMIN_REFUSED: &str = "pusher_cutover_admin_refused";
    /// Recorded calls not yet written to the ledger's store.
    pub const LEDGER_UNWRITTEN_CALLS: &str = "pusher_cutover_ledger_unwritten_calls";
    /// 1 while the configuration in force has `bypass = true` (the kill
    /// switch: legacy calls pass through uncounted), else 0.
    pub const BYPASS: &str = "pusher_cutover_bypass";
    /// When the kill switch was last in force, as a Unix time: set when a
    /// reload turns it off (0 while it has not been on and off since
    /// start). Unlike the gauge, which a scrape samples, it tells of a
    /// switch on and off again between two scrapes.
    pub const BYPASS_LAST_ON: &str = "pusher_cutover_bypass_last_on_timestamp_seconds";
    /// The served TLS certificate's notAfter, as a Unix time, labelled by
    /// its leaf's SHA-256 (`sha256`); no series without `[tls]`.
    pub const TLS_CERTIFICATE_EXPIRY: &str =
        "pusher_cutover_tls_certificate_expiry_timestamp_seconds";
}

/// The `sha256` label alone: a served certificate's fingerprint.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertificateLabel {
    /// [`crate::http::tls::Certificate::fingerprint`].
    pub sha256: String,
}

/// An `app_id` label value: a configured app's id, or `other`. Shared, so
/// labelling a sample allocates nothing.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct AppId(pub Arc<str>);

impl EncodeLabelValue for AppId {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&&*self.0, encoder)
    }
}

/// One app's per-request series (its `app_id` label is a configured app's
/// id, or `other`), each resolved in its family on first use and then
/// kept: counting a request takes no family lock and hashes no labels. A
/// handle shares its value with the family's series, which `/metrics`
/// encodes; the families these come from are never cleared.
#[derive(Debug)]
pub struct AppSeries {
    app_id: AppId,
    requests: [[OnceLock<Counter>; OUTCOMES]; ROUTES],
    deprecated_calls: [[[OnceLock<Counter>; PATHS]; LIBRARIES]; ROUTES],
}

impl AppSeries {
    /// Series labelled `app_id`, none of them created yet.
    pub fn new(app_id: AppId) -> Self {
        Self {
            app_id,
            requests: Default::default(),
            deprecated_calls: Default::default(),
        }
    }

    /// The `app_id` label value.
    pub fn app_id(&self) -> &AppId {
        &self.app_id
    }

    /// `requests_total{app_id, route, outcome}` in `family`.
    pub fn request(
        &self,
        family: &Family<AppRouteOutcome, Counter>,
        route: RouteKind,
        outcome: Outcome,
    ) -> &Counter {
        self.requests[route as usize][outcome as usize].get_or_init(|| {
            family
                .get_or_create(&AppRouteOutcome {
                    app_id: self.app_id.clone(),
                    route: route.as_str(),
                    outcome: outcome.as_str(),
                })
                .clone()
        })
    }

    /// `deprecated_calls_total{app_id, route, library, path}` in `family`.
    pub fn deprecated_call(
        &self,
        family: &Family<DeprecatedCallLabels, Counter>,
        route: RouteKind,
        library: Library,
        path: Option<Path>,
    ) -> &Counter {
        self.deprecated_calls[route as usize][library_index(library)][path_index(path)].get_or_init(
            || {
                family
                    .get_or_create(&DeprecatedCallLabels {
                        app_id: self.app_id.clone(),
                        route: route.as_str(),
                        library: library.as_str(),
                        path: path_label(path),
                    })
                    .clone()
            },
        )
    }

    /// Creates, at 0, every series a configured app can have, so that
    /// `increase()` sees its first call: deprecated calls of both routes
    /// by every library and path (shadowing is for stats only), requests
    /// by route and outcome, signature failures by reason and shadow
    /// mismatches by field.
    pub fn create_all(&self, metrics: &Metrics) {
        for route in RouteKind::LEGACY {
            for library in Library::ALL {
                for path in Path::ALL.into_iter().map(Some).chain([None]) {
                    if route == RouteKind::LegacyTrigger && path == Some(Path::Shadow) {
                        continue;
                    }
                    self.deprecated_call(&metrics.deprecated_calls, route, library, path);
                }
            }
        }
        for route in [
            RouteKind::LegacyStats,
            RouteKind::LegacyTrigger,
            RouteKind::Passthrough,
        ] {
            for outcome in Outcome::ALL {
                self.request(&metrics.requests, route, outcome);
            }
        }
        for reason in SignatureError::REASONS {
            let _ = metrics.signature_failures.get_or_create(&AppReason {
                app_id: self.app_id.clone(),
                reason,
            });
        }
        for field in SHADOW_FIELDS {
            let _ = metrics.shadow_mismatches.get_or_create(&AppField {
                app_id: self.app_id.clone(),
                field,
            });
        }
        for reason in SHADOW_SKIP_REASONS {
            let _ = metrics.shadow_skipped.get_or_create(&AppReason {
                app_id: self.app_id.clone(),
                reason,
            });
        }
    }
}

/// One histogram per route, resolved in its family on first use and kept.
#[derive(Debug, Default)]
struct RouteHistograms([OnceLock<Histogram>; ROUTES]);

impl RouteHistograms {
    fn get(
        &self,
        family: &Family<RouteLabel, Histogram, fn() -> Histogram>,
        route: RouteKind,
    ) -> &Histogram {
        self.0[route as usize].get_or_init(|| {
            family
                .get_or_create(&RouteLabel {
                    route: route.as_str(),
                })
                .clone()
        })
    }
}

/// The labels of `deprecated_calls_total`: bounded, as `library` is a
/// family id or `unknown` and `path` one of five.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeprecatedCallLabels {
    /// A configured app id, or `other`.
    pub app_id: AppId,
    /// `legacy_stats` or `legacy_trigger`.
    pub route: &'static str,
    /// The sender's library family ([`Library::as_str`]).
    pub library: &'static str,
    /// `translated`, `observed`, `shadowed`, `rejected` (brownouts
    /// included) or `invalid` ([`path_label`]).
    pub path: &'static str,
}

/// The `kind` label alone.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// A [`crate::http::server::connection_error_kind`].
    pub kind: &'static str,
}

/// The `reason` label alone.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// One of the metric's reasons (for `admin_refused`,
    /// [`ADMIN_REFUSED_REASONS`]).
    pub reason: &'static str,
}

/// The reasons of `admin_refused_total`: `token` (401: no bearer token, or
/// not the configured one), `no_token` (403: a non-loopback listener with
/// no token configured).
pub const ADMIN_REFUSED_REASONS: [&str; 2] = ["token", "no_token"];

/// The shadow comparison's `field` label values.
pub const SHADOW_FIELDS: [&str; 4] = ["occupied", "user_count", "connection_count", "answer"];

/// Why a shadow comparison was not made: `busy` (as many comparisons in
/// flight as the proxy allows), `upstream_error` (the translated call
/// failed on the upstream's side: a 5xx, a time-out, no connection or no
/// slot, which says nothing of the translation), `not_comparable` (the
/// legacy answer was not a 200 with the stats JSON: the upstream's error,
/// or a body compressed for the caller).
pub const SHADOW_SKIP_REASONS: [&str; 3] = ["busy", "upstream_error", "not_comparable"];

/// `app_id`, `route` and `outcome`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppRouteOutcome {
    /// A configured app id, or `other`.
    pub app_id: AppId,
    /// The route label.
    pub route: &'static str,
    /// `ok`, `client_error`, `auth_failed`, `upstream_error` or `rejected`.
    pub outcome: &'static str,
}

/// The `route` label alone.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    /// The route label.
    pub route: &'static str,
}

/// `app_id` and `reason`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppReason {
    /// A configured app id, or `other`.
    pub app_id: AppId,
    /// A [`SignatureError::reason`](crate::pusher::signature::SignatureError::reason),
    /// or one of [`SHADOW_SKIP_REASONS`].
    pub reason: &'static str,
}

/// The `app_id` label alone.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppLabel {
    /// A configured app id.
    pub app_id: AppId,
}

/// The `version` and `config_hash` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// The crate version.
    pub version: &'static str,
    /// The loaded configuration's hash.
    pub config_hash: String,
}

/// `app_id` and `field`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppField {
    /// A configured app id.
    pub app_id: AppId,
    /// `occupied`, `user_count`, `connection_count`, or `answer` when the
    /// translated call gave no comparable answer.
    pub field: &'static str,
}

/// The `result` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `success` or `failure`.
    pub result: &'static str,
}

fn duration_histogram() -> Histogram {
    // 0.25 ms to about 8 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

/// The registry and every metric in it.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// See [`names::DEPRECATED_CALLS`].
    pub deprecated_calls: Family<DeprecatedCallLabels, Counter>,
    /// See [`names::REQUESTS`].
    pub requests: Family<AppRouteOutcome, Counter>,
    /// See [`names::REQUEST_DURATION`].
    pub request_duration: Family<RouteLabel, Histogram, fn() -> Histogram>,
    /// See [`names::UPSTREAM_DURATION`].
    pub upstream_duration: Family<RouteLabel, Histogram, fn() -> Histogram>,
    /// See [`names::SIGNATURE_FAILURES`].
    pub signature_failures: Family<AppReason, Counter>,
    /// See [`names::APP_SUNSET`].
    pub app_sunset: Family<AppLabel, Gauge>,
    /// See [`names::APP_CONFIGURED`].
    pub app_configured: Family<AppLabel, Gauge>,
    /// See [`names::SHADOW_MISMATCHES`].
    pub shadow_mismatches: Family<AppField, Counter>,
    /// See [`names::SHADOW_SKIPPED`].
    pub shadow_skipped: Family<AppReason, Counter>,
    /// See [`names::CONFIG_RELOADS`].
    pub config_reloads: Family<ResultLabel, Counter>,
    /// See [`names::LEDGER_UNWRITTEN_CALLS`].
    pub ledger_unwritten_calls: Gauge,
    /// See [`names::BYPASS`]; set by the proxy when a configuration comes
    /// into force.
    pub bypass: Gauge,
    /// See [`names::BYPASS_LAST_ON`]; set with [`Metrics::bypass`]'s moves
    /// from 1 to 0.
    pub bypass_last_on: Gauge,
    /// See [`names::CONNECTION_ERRORS`].
    pub connection_errors: Family<KindLabel, Counter>,
    /// See [`names::ADMIN_REFUSED`].
    pub admin_refused: Family<ReasonLabel, Counter>,
    /// See [`names::BUILD_INFO`].
    pub build_info: Family<BuildLabels, Gauge>,
    /// See [`names::TLS_CERTIFICATE_EXPIRY`].
    pub tls_certificate_expiry: Family<CertificateLabel, Gauge>,
    /// The deprecated routes' upstream requests and trigger coalescing.
    pub upstream: UpstreamRequests,
    request_durations: RouteHistograms,
    upstream_durations: RouteHistograms,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric registered; [`Metrics::configure`]
    /// sets the per-configuration gauges.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let deprecated_calls = Family::<DeprecatedCallLabels, Counter>::default();
        let requests = Family::<AppRouteOutcome, Counter>::default();
        let request_duration =
            Family::<RouteLabel, Histogram, fn() -> Histogram>::new_with_constructor(
                duration_histogram,
            );
        let upstream_duration =
            Family::<RouteLabel, Histogram, fn() -> Histogram>::new_with_constructor(
                duration_histogram,
            );
        let signature_failures = Family::<AppReason, Counter>::default();
        let build_info = Family::<BuildLabels, Gauge>::default();
        let app_sunset = Family::<AppLabel, Gauge>::default();
        let app_configured = Family::<AppLabel, Gauge>::default();
        let shadow_mismatches = Family::<AppField, Counter>::default();
        let shadow_skipped = Family::<AppReason, Counter>::default();
        let config_reloads = Family::<ResultLabel, Counter>::default();
        let ledger_unwritten_calls = Gauge::default();
        let bypass = Gauge::default();
        let connection_errors = Family::<KindLabel, Counter>::default();
        let admin_refused = Family::<ReasonLabel, Counter>::default();
        let tls_certificate_expiry = Family::<CertificateLabel, Gauge>::default();
        let upstream = UpstreamRequests::register(&mut registry);
        registry.register(
            names::TLS_CERTIFICATE_EXPIRY,
            "Unix time the served TLS certificate ends (its notAfter), by its SHA-256; no series without [tls]",
            tls_certificate_expiry.clone(),
        );

        registry.register(
            names::DEPRECATED_CALLS,
            "Deprecated Pusher HTTP API calls that passed verification",
            deprecated_calls.clone(),
        );
        registry.register(
            names::REQUESTS,
            "Requests by route and outcome",
            requests.clone(),
        );
        registry.register(
            names::REQUEST_DURATION,
            "Time from receiving a request to answering it",
            request_duration.clone(),
        );
        registry.register(
            names::UPSTREAM_DURATION,
            "Time spent waiting on the upstream",
            upstream_duration.clone(),
        );
        registry.register(
            names::SIGNATURE_FAILURES,
            "Inbound requests refused by signature verification",
            signature_failures.clone(),
        );
        registry.register(names::BUILD_INFO, "Build information", build_info.clone());
        let start_time = Gauge::<i64>::default();
        start_time.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
        );
        registry.register(
            names::START_TIME,
            "When the process started, as a Unix time: a restart between two scrapes shows in it when the counters alone cannot tell",
            start_time,
        );
        registry.register(
            names::APP_SUNSET,
            "When an app's deprecated calls stop being served, as a Unix time",
            app_sunset.clone(),
        );
        registry.register(
            names::APP_CONFIGURED,
            "1 while the app is in the configuration in force; 0 once a reload removed it (until restart): its deprecated calls are then refused as an unknown app's, uncounted",
            app_configured.clone(),
        );
        registry.register(
            names::SHADOW_MISMATCHES,
            "Shadow-mode stats whose translated answer differed from the legacy one",
            shadow_mismatches.clone(),
        );
        registry.register(
            names::SHADOW_SKIPPED,
            "Shadow-mode stats not compared: busy (the comparisons in flight at their cap), upstream_error (the translated call failed on the upstream's side) or not_comparable (the legacy answer was not a 200 with the stats JSON)",
            shadow_skipped.clone(),
        );
        registry.register(
            names::CONFIG_RELOADS,
            "Configuration reloads by result",
            config_reloads.clone(),
        );
        registry.register(
            names::LEDGER_UNWRITTEN_CALLS,
            "Recorded deprecated calls not yet written to the ledger in data_dir (0 without one)",
            ledger_unwritten_calls.clone(),
        );
        registry.register(
            names::BYPASS,
            "1 while the configuration in force has bypass = true: every request passes through unchanged and deprecated calls are not counted",
            bypass.clone(),
        );
        let bypass_last_on = Gauge::default();
        registry.register(
            names::BYPASS_LAST_ON,
            "Unix time the kill switch (bypass = true) was last in force, set when a reload turns it off; 0 if it has not been on and off since start. A switch on and off again between two scrapes still shows",
            bypass_last_on.clone(),
        );
        registry.register(
            names::CONNECTION_ERRORS,
            "Connections the HTTP layer refused or cut (malformed or oversized heads, time-outs), by kind",
            connection_errors.clone(),
        );
        for kind in crate::http::server::CONNECTION_ERROR_KINDS {
            let _ = connection_errors.get_or_create(&KindLabel { kind });
        }
        registry.register(
            names::ADMIN_REFUSED,
            "Admin requests (/usage, /report, POST /reload) refused for their bearer token, by reason",
            admin_refused.clone(),
        );
        for reason in ADMIN_REFUSED_REASONS {
            let _ = admin_refused.get_or_create(&ReasonLabel { reason });
        }
        for result in ["success", "failure"] {
            // Present from the start, so alerts can use increase().
            let _ = config_reloads.get_or_create(&ResultLabel { result });
        }
        // Every route's histograms too, for the dashboard's quantiles.
        for route in [
            RouteKind::LegacyStats,
            RouteKind::LegacyTrigger,
            RouteKind::Passthrough,
        ] {
            let _ = request_duration.get_or_create(&RouteLabel {
                route: route.as_str(),
            });
            let _ = upstream_duration.get_or_create(&RouteLabel {
                route: route.as_str(),
            });
        }
        Self {
            registry,
            deprecated_calls,
            requests,
            request_duration,
            upstream_duration,
            signature_failures,
            app_sunset,
            app_configured,
            shadow_mismatches,
            shadow_skipped,
            config_reloads,
            ledger_unwritten_calls,
            bypass,
            bypass_last_on,
            connection_errors,
            admin_refused,
            build_info,
            tls_certificate_expiry,
            upstream,
            request_durations: RouteHistograms::default(),
            upstream_durations: RouteHistograms::default(),
        }
    }

    /// `request_duration_seconds{route}`.
    pub fn request_duration_of(&self, route: RouteKind) -> &Histogram {
        self.request_durations.get(&self.request_duration, route)
    }

    /// `upstream_duration_seconds{route}`.
    pub fn upstream_duration_of(&self, route: RouteKind) -> &Histogram {
        self.upstream_durations.get(&self.upstream_duration, route)
    }

    /// Sets the gauges that follow the configuration: `build_info` with its
    /// hash, and one sunset gauge per `(app_id, unix_seconds)`. The series
    /// of the previous configuration (its hash, its app ids) are removed
    /// unless set again.
    ///
    /// The new series are set before the old ones go: a reload runs beside
    /// the scrapes, and a scrape between a clear and a refill would find
    /// no `build_info` and no sunset (a blip on the dashboards, and a
    /// missed evaluation of the sunset alert).
    pub fn configure<'a>(
        &self,
        previous_hash: &str,
        previous_apps: impl Iterator<Item = &'a String>,
        config_hash: &str,
        app_ids: &[&str],
        sunsets: &[(String, i64)],
    ) {
        for id in app_ids {
            self.app_configured
                .get_or_create(&AppLabel {
                    app_id: AppId(Arc::from(*id)),
                })
                .set(1);
        }
        let build = BuildLabels {
            version: env!("CARGO_PKG_VERSION"),
            config_hash: config_hash.to_owned(),
        };
        self.build_info.get_or_create(&build).set(1);
        let apps: Vec<AppLabel> = sunsets
            .iter()
            .map(|(app_id, _)| AppLabel {
                app_id: AppId(Arc::from(app_id.as_str())),
            })
            .collect();
        for (label, (_, at)) in apps.iter().zip(sunsets) {
            self.app_sunset.get_or_create(label).set(*at);
        }
        if previous_hash != config_hash {
            self.build_info.remove(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                config_hash: previous_hash.to_owned(),
            });
        }
        for id in previous_apps {
            let old = AppLabel {
                app_id: AppId(Arc::from(id.as_str())),
            };
            // Removing a series that is not there (an app without a
            // sunset) changes nothing.
            if !apps.contains(&old) {
                self.app_sunset.remove(&old);
            }
            // Kept at 0, not removed: the fleet view reads that the app
            // stopped being served in its window.
            if !app_ids.contains(&id.as_str()) {
                self.app_configured.get_or_create(&old).set(0);
            }
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        self.upstream.slots.read_in_use();
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

// ---- Upstream requests of the deprecated routes, and trigger coalescing ----

/// Names of the coalescing block's metrics (counters gain `_total`).
pub mod upstream_names {
    /// Upstream requests, by upstream route (the deprecated calls' routes,
    /// and passthrough).
    pub const UPSTREAM_REQUESTS: &str = "pusher_cutover_upstream_requests";
    /// Events carried by each upstream trigger request (`events`: 1,
    /// `batch_events`: 1 to `batch_max`).
    pub const UPSTREAM_BATCH_EVENTS: &str = "pusher_cutover_upstream_batch_events";
    /// Legacy triggers queued for the next `batch_events` request.
    pub const QUEUED_TRIGGERS: &str = "pusher_cutover_queued_triggers";
    /// Legacy stats calls answered from another identical call's upstream
    /// request (single flight).
    pub const SHARED_STATS: &str = "pusher_cutover_shared_stats_answers";
    /// Upstream exchange slots: `upstream.max_connections` of the
    /// configuration in force.
    pub const UPSTREAM_SLOTS: &str = "pusher_cutover_upstream_slots";
    /// Upstream exchange slots held now (read when scraped).
    pub const UPSTREAM_SLOTS_IN_USE: &str = "pusher_cutover_upstream_slots_in_use";
    /// Upstream exchanges waiting for a slot now.
    pub const UPSTREAM_SLOT_WAITERS: &str = "pusher_cutover_upstream_slot_waiters";
    /// Waits for an upstream slot that ran out of time: the exchange (a
    /// coalesced batch's: each of its callers) answered 504, never sent.
    pub const UPSTREAM_SLOT_TIMEOUTS: &str = "pusher_cutover_upstream_slot_timeouts";
    /// Upstream requests sent again, by reason: `not_processed` (the
    /// upstream provably did not process it: an HTTP/2 stream refused or
    /// above a GOAWAY, a request hyper handed back unsent, an HTTP/1.1
    /// pooled connection found closed before it was written),
    /// `stale_connection` (a bodyless GET or HEAD whose connection broke
    /// under it).
    pub const UPSTREAM_RESENT: &str = "pusher_cutover_upstream_resent";
}

/// The reasons of [`upstream_names::UPSTREAM_RESENT`].
pub const RESENT_REASONS: [&str; 2] = ["not_processed", "stale_connection"];

/// The upstream exchange slots (`upstream.max_connections`), for an
/// operator to tell whether the cap is what holds throughput back: how many
/// there are, how many are held, how many exchanges wait for one and how
/// many waits ran out of time. Clones share their series.
#[derive(Debug, Clone, Default)]
pub struct SlotMetrics {
    size: Gauge,
    in_use: Gauge,
    waiters: Gauge,
    timeouts: Counter,
    resent: Family<ReasonLabel, Counter>,
    /// The semaphore of the upstream in force, whose free permits give
    /// `in_use` when the metrics are read: nothing is counted per exchange.
    current: Arc<Mutex<Weak<Semaphore>>>,
}

impl SlotMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            upstream_names::UPSTREAM_SLOTS,
            "Upstream exchange slots (upstream.max_connections): exchanges in flight at once",
            self.size.clone(),
        );
        registry.register(
            upstream_names::UPSTREAM_SLOTS_IN_USE,
            "Upstream exchange slots held now",
            self.in_use.clone(),
        );
        registry.register(
            upstream_names::UPSTREAM_SLOT_WAITERS,
            "Upstream exchanges waiting for a free slot now",
            self.waiters.clone(),
        );
        registry.register(
            upstream_names::UPSTREAM_SLOT_TIMEOUTS,
            "Waits for an upstream slot that ran out of time: answered 504, never sent",
            self.timeouts.clone(),
        );
        registry.register(
            upstream_names::UPSTREAM_RESENT,
            "Upstream requests sent again: not_processed (refused or handed back unprocessed), stale_connection (a bodyless GET or HEAD whose connection broke)",
            self.resent.clone(),
        );
        for reason in RESENT_REASONS {
            let _ = self.resent.get_or_create(&ReasonLabel { reason });
        }
    }

    /// Follows `slots`, an upstream's semaphore of `size` permits, from
    /// now on (a new configuration's upstream).
    pub fn follow(&self, slots: &Arc<Semaphore>, size: usize) {
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Arc::downgrade(slots);
        self.size.set(i64::try_from(size).unwrap_or(i64::MAX));
    }

    /// Sets `in_use` from the followed semaphore.
    fn read_in_use(&self) {
        let current = self
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .upgrade();
        // None held once the upstream is gone.
        let in_use = current.map_or(0, |s| {
            let free = i64::try_from(s.available_permits()).unwrap_or(i64::MAX);
            (self.size.get() - free).max(0)
        });
        self.in_use.set(in_use);
    }

    /// One exchange waits for a slot until the guard is dropped.
    pub fn waiting(&self) -> Waiting {
        self.waiters.inc();
        Waiting(self.waiters.clone())
    }

    /// Counts a wait for a slot that ran out of time.
    pub fn timed_out(&self) {
        self.timeouts.inc();
    }

    /// Counts an upstream request sent again, for `reason` (one of
    /// [`RESENT_REASONS`]).
    pub fn resent(&self, reason: &'static str) {
        self.resent.get_or_create(&ReasonLabel { reason }).inc();
    }
}

/// An exchange waiting for a slot ([`SlotMetrics::waiting`]): counted in
/// `slot_waiters` while it lives.
#[derive(Debug)]
pub struct Waiting(Gauge);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The upstream route a deprecated call's request took: its `route` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamRoute {
    /// `POST /apps/{id}/events`: one translated trigger.
    Events,
    /// `POST /apps/{id}/batch_events`: coalesced triggers.
    BatchEvents,
    /// `GET /apps/{id}/channels/{channel}`: translated stats.
    Channel,
    /// A deprecated call forwarded in its legacy form (`observe`, `shadow`).
    Legacy,
    /// Any other request, passed through.
    Passthrough,
}

impl UpstreamRoute {
    /// Every route, in label order.
    pub const ALL: [Self; 5] = [
        Self::Events,
        Self::BatchEvents,
        Self::Channel,
        Self::Legacy,
        Self::Passthrough,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Events => "events",
            Self::BatchEvents => "batch_events",
            Self::Channel => "channel",
            Self::Legacy => "legacy",
            Self::Passthrough => "passthrough",
        }
    }
}

/// The coalescing block: counters resolved once, so counting a request
/// hashes no labels.
#[derive(Debug)]
pub struct UpstreamRequests {
    by_route: [Counter; UpstreamRoute::ALL.len()],
    batch_events: Histogram,
    queued: Gauge,
    shared_stats: Counter,
    slots: SlotMetrics,
}

impl UpstreamRequests {
    /// Registers the block's metrics in `registry`, every series at 0.
    fn register(registry: &mut Registry) -> Self {
        let family = Family::<RouteLabel, Counter>::default();
        let by_route = UpstreamRoute::ALL.map(|r| {
            family
                .get_or_create(&RouteLabel { route: r.as_str() })
                .clone()
        });
        registry.register(
            upstream_names::UPSTREAM_REQUESTS,
            "Upstream requests by upstream route: events, batch_events (coalesced legacy triggers), channel (legacy stats), legacy (observe, shadow), passthrough",
            family,
        );
        // One bucket per size up to Pusher's 10, coarser up to the
        // ceiling a self-hosted upstream allows.
        let batch_events = Histogram::new(linear_buckets(1.0, 1.0, 10).chain([
            15.0,
            20.0,
            30.0,
            50.0,
            75.0,
            MAX_BATCH_EVENTS as f64,
        ]));
        registry.register(
            upstream_names::UPSTREAM_BATCH_EVENTS,
            "Events per upstream trigger request (events: 1; batch_events: up to upstream.batch_max)",
            batch_events.clone(),
        );
        let queued = Gauge::default();
        registry.register(
            upstream_names::QUEUED_TRIGGERS,
            "Legacy triggers waiting for the next batch_events request",
            queued.clone(),
        );
        let shared_stats = Counter::default();
        registry.register(
            upstream_names::SHARED_STATS,
            "Legacy stats calls answered from an identical concurrent call's upstream request",
            shared_stats.clone(),
        );
        let slots = SlotMetrics::default();
        slots.register(registry);
        Self {
            by_route,
            batch_events,
            queued,
            shared_stats,
            slots,
        }
    }

    /// Counts one upstream request on `route`.
    pub fn request(&self, route: UpstreamRoute) {
        self.by_route[route as usize].inc();
    }

    /// Counts one upstream trigger request carrying `events` events.
    pub fn trigger_request(&self, events: usize) {
        let route = if events > 1 {
            UpstreamRoute::BatchEvents
        } else {
            UpstreamRoute::Events
        };
        self.request(route);
        self.batch_events.observe(events as f64);
    }

    /// Legacy triggers queued now.
    pub fn queued(&self) -> &Gauge {
        &self.queued
    }

    /// Counts a stats call answered from another call's request.
    pub fn shared_stats(&self) {
        self.shared_stats.inc();
    }

    /// The upstream exchange slots' metrics.
    pub fn slots(&self) -> &SlotMetrics {
        &self.slots
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `slots_in_use` follows the upstream in force: a new configuration's
    /// upstream replaces the one before, and one dropped reads as none held.
    #[test]
    fn slots_in_use_follow_the_upstream_in_force() {
        let metrics = Metrics::new();
        let slots = metrics.upstream.slots();
        let read = |m: &Metrics| {
            let text = m.encode();
            [
                "pusher_cutover_upstream_slots ",
                "pusher_cutover_upstream_slots_in_use ",
            ]
            .map(|series| {
                text.lines()
                    .find_map(|l| l.strip_prefix(series))
                    .map(str::to_owned)
            })
        };
        let first = Arc::new(Semaphore::new(4));
        slots.follow(&first, 4);
        let _held = first.clone().try_acquire_many_owned(3).expect("permits");
        assert_eq!(read(&metrics), [Some("4".into()), Some("3".into())]);
        let second = Arc::new(Semaphore::new(8));
        slots.follow(&second, 8);
        let _one = second.clone().try_acquire_owned().expect("permit");
        assert_eq!(read(&metrics), [Some("8".into()), Some("1".into())]);
        drop(_one);
        drop(second);
        assert_eq!(read(&metrics), [Some("8".into()), Some("0".into())]);
    }
}
