//! `report --prometheus URL`: the fleet's report and gate from the
//! Prometheus HTTP API (`/api/v1/query`, `/api/v1/query_range`,
//! `/api/v1/targets`, `/api/v1/status/runtimeinfo`) instead of ledgers.
//!
//! [`fetch`] runs the queries of [`super::promql`] at one evaluation time
//! and turns the answers into a [`Usage`] (hourly buckets per app and
//! route; one caller per app, route, library and sidecar), so the report
//! is built and rendered by the same code as a ledger's, plus the
//! evidence ([`FleetEvidence`]) that decides whether a zero is proven.
//! Parsing and assembly are pure functions, unit-tested with canned
//! answers.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;

use super::evidence::{self, Facts, Gap, Scrapes};
use super::promql::Selector;
use crate::pusher::route::RouteKind;
use crate::telemetry::usage::{AppUsage, Caller, CallerKey, HourlyCount, Usage};

/// Largest answer read from Prometheus.
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// Bound on one request to Prometheus.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Prometheus' limit on points per series in one range query is 11,000;
/// longer ranges are asked in pieces of this many hours.
const MAX_STEPS: i64 = 10_000;

const HOUR: i64 = 3600;

/// What to ask Prometheus.
#[derive(Debug, Clone)]
pub struct FleetQuery {
    /// The Prometheus base URL (`http://prometheus:9090`, or with a path
    /// prefix).
    pub url: Uri,
    /// Job, apps and sidecar label.
    pub selector: Selector,
    /// The report's window.
    pub since: Duration,
    /// The gate's window, when gating.
    pub gate: Option<Duration>,
    /// `--expect-instances`.
    pub expect_instances: Option<usize>,
    /// `--expect-app`.
    pub expect_apps: Vec<String>,
    /// `--scrape-interval`, instead of the targets' own.
    pub scrape_interval: Option<Duration>,
}

/// A gap with its sentence, as the JSON report lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GapReport {
    /// The sentence naming it.
    pub message: String,
    /// Its kind and figures.
    #[serde(flatten)]
    pub gap: Gap,
}

impl From<Gap> for GapReport {
    fn from(gap: Gap) -> Self {
        Self {
            message: gap.to_string(),
            gap,
        }
    }
}

/// What Prometheus says about a window's evidence.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetEvidence {
    /// The Prometheus URL.
    pub prometheus: String,
    /// The scrape job.
    pub job: String,
    /// The target label naming a sidecar.
    pub instance_label: String,
    /// The job's scrape interval in seconds, when known.
    pub scrape_interval_seconds: Option<f64>,
    /// Prometheus' retention time as it says it.
    pub retention: Option<String>,
    /// Each sidecar scraped in the window.
    pub instances: BTreeMap<String, Scrapes>,
    /// Why a zero is not proven; empty when it is.
    pub gaps: Vec<GapReport>,
}

/// Calls one sidecar saw from one library for one app in a window.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FleetUse {
    /// The app id.
    pub app_id: String,
    /// The route label.
    pub route: String,
    /// The library family id.
    pub library: String,
    /// The sidecar.
    pub instance: String,
    /// Calls (rounded `increase()`; at least 1).
    pub calls: u64,
}

/// The gate's answer.
#[derive(Debug, Clone)]
pub struct GateAnswer {
    /// The calls seen in the gate's window, by app, library and sidecar.
    pub uses: Vec<FleetUse>,
    /// The gaps in its evidence.
    pub gaps: Vec<Gap>,
}

/// Everything [`fetch`] learned.
#[derive(Debug, Clone)]
pub struct Fleet {
    /// The evaluation time of every query.
    pub now: OffsetDateTime,
    /// The calls as a ledger: `recorded_since` is the window's start when
    /// its evidence is complete, `None` otherwise.
    pub usage: Usage,
    /// The apps the sidecars serve in the window (listed with zeros).
    pub apps: Vec<String>,
    /// The report window's evidence.
    pub evidence: FleetEvidence,
    /// The gate's answer, when gating.
    pub gate: Option<GateAnswer>,
}

/// Prometheus could not be asked, or answered something unexpected.
#[derive(Debug, thiserror::Error)]
pub enum PrometheusError {
    /// The request could not be made or sent.
    #[error("asking {0}")]
    Request(String, #[source] Box<dyn std::error::Error + Send + Sync>),
    /// Prometheus answered an error.
    #[error("{0}: Prometheus answered {1}: {2}")]
    Api(String, StatusCode, String),
    /// The answer is not what the API documents.
    #[error("{0}: unexpected answer: {1}")]
    Shape(String, String),
    /// No answer in time.
    #[error("{0}: no answer within {1:?}")]
    Timeout(String, Duration),
    /// Scrapes of the job without the label that names a sidecar: every
    /// such sidecar would count as one, so missing scrapes and
    /// `--expect-instances` could not be judged.
    #[error(
        "scrapes of job {job} have no label `{label}` (--instance-label), so their sidecars \
         cannot be told apart: relabel the targets to give each one, or name a label they have"
    )]
    MissingLabel {
        /// The scrape job.
        job: String,
        /// The label asked for.
        label: String,
    },
}

type ApiClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A Prometheus HTTP API endpoint.
struct Api {
    client: ApiClient,
    base: String,
    token: Option<secrecy::SecretString>,
}

fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                utf8_percent_encode(k, NON_ALPHANUMERIC),
                utf8_percent_encode(v, NON_ALPHANUMERIC)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

impl Api {
    fn new(url: &Uri, token: Option<&secrecy::SecretString>) -> Self {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .build();
        Self {
            client: Client::builder(TokioExecutor::new()).build(https),
            base: url.to_string().trim_end_matches('/').to_owned(),
            token: token.cloned(),
        }
    }

    /// `GET path` (without `form_body`) or `POST path` with `form_body`
    /// urlencoded (the API takes a query's parameters either way; a body
    /// has no URL length limit); the envelope's `data`.
    async fn call(&self, path: &str, form_body: Option<String>) -> Result<Value, PrometheusError> {
        use secrecy::ExposeSecret;
        let url = format!("{}{path}", self.base);
        let name = match &form_body {
            Some(body) => format!("{url}?{body}"),
            None => url.clone(),
        };
        let exchange = async {
            let mut req = match &form_body {
                Some(_) => hyper::Request::post(&url).header(
                    hyper::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                ),
                None => hyper::Request::get(&url),
            };
            if let Some(token) = &self.token {
                req = req.header(
                    hyper::header::AUTHORIZATION,
                    format!("Bearer {}", token.expose_secret()),
                );
            }
            let req = req
                .body(Full::new(Bytes::from(
                    form_body.clone().unwrap_or_default(),
                )))
                .map_err(|e| PrometheusError::Request(name.clone(), Box::new(e)))?;
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| PrometheusError::Request(name.clone(), Box::new(e)))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| PrometheusError::Request(name.clone(), e))?
                .to_bytes();
            envelope(&name, status, &body)
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| Err(PrometheusError::Timeout(name.clone(), REQUEST_TIMEOUT)))
    }

    async fn query(&self, query: &str, at: i64) -> Result<Vec<Sample>, PrometheusError> {
        let at = at.to_string();
        let data = self
            .call(
                "/api/v1/query",
                Some(form(&[("query", query), ("time", &at)])),
            )
            .await?;
        parse_vector(&data).map_err(|e| PrometheusError::Shape(query.to_owned(), e))
    }

    async fn query_range(
        &self,
        query: &str,
        start: i64,
        end: i64,
        step: i64,
    ) -> Result<Vec<Series>, PrometheusError> {
        let (start, end, step) = (start.to_string(), end.to_string(), step.to_string());
        let data = self
            .call(
                "/api/v1/query_range",
                Some(form(&[
                    ("query", query),
                    ("start", &start),
                    ("end", &end),
                    ("step", &step),
                ])),
            )
            .await?;
        parse_matrix(&data).map_err(|e| PrometheusError::Shape(query.to_owned(), e))
    }
}

/// The `data` of a Prometheus API answer, or its error. A success with
/// `warnings` is an error too: storage warnings say the answer may be
/// partial (a remote read that failed; Thanos, Cortex or Mimir with a
/// store down), and a partial answer can show no calls where there were
/// some. PromQL's info annotations (`PromQL info: …`, in `warnings` in
/// Prometheus 2.50 and 2.51) are about the query, not the data, and pass.
fn envelope(name: &str, status: StatusCode, body: &[u8]) -> Result<Value, PrometheusError> {
    let parsed: Result<Value, _> = serde_json::from_slice(body);
    match parsed {
        Ok(v) if v["status"] == "success" && status.is_success() => {
            let warnings: Vec<&str> = v["warnings"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|w| w.as_str().unwrap_or("a warning that is not text"))
                .filter(|w| !w.starts_with("PromQL info:"))
                .collect();
            if warnings.is_empty() {
                Ok(v["data"].clone())
            } else {
                Err(PrometheusError::Api(
                    name.to_owned(),
                    status,
                    format!(
                        "the answer may be partial, so it proves nothing: warnings: {}",
                        warnings.join("; ")
                    ),
                ))
            }
        }
        Ok(v) => Err(PrometheusError::Api(
            name.to_owned(),
            status,
            format!(
                "{}: {}",
                v["errorType"].as_str().unwrap_or("error"),
                v["error"].as_str().unwrap_or("no error text")
            ),
        )),
        Err(_) => Err(PrometheusError::Api(
            name.to_owned(),
            status,
            String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
        )),
    }
}

/// One series of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Its labels.
    pub metric: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// One series of a range answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Its labels.
    pub metric: BTreeMap<String, String>,
    /// `(time, value)` pairs.
    pub values: Vec<(f64, f64)>,
}

fn labels(v: &Value) -> Result<BTreeMap<String, String>, String> {
    let obj = v.as_object().ok_or("a series without labels")?;
    Ok(obj
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
        .collect())
}

/// `[time, "value"]`.
fn point(v: &Value) -> Result<(f64, f64), String> {
    let t = v[0].as_f64().ok_or("a point without a time")?;
    let value = v[1]
        .as_str()
        .and_then(|s| s.parse::<f64>().ok())
        .ok_or("a point without a value")?;
    Ok((t, value))
}

/// The series of a `vector` answer's `data`.
pub fn parse_vector(data: &Value) -> Result<Vec<Sample>, String> {
    if data["resultType"] != "vector" {
        return Err(format!("resultType {} is not vector", data["resultType"]));
    }
    data["result"]
        .as_array()
        .ok_or("no result")?
        .iter()
        .map(|s| {
            Ok(Sample {
                metric: labels(&s["metric"])?,
                value: point(&s["value"])?.1,
            })
        })
        .collect()
}

/// The series of a `matrix` answer's `data`.
pub fn parse_matrix(data: &Value) -> Result<Vec<Series>, String> {
    if data["resultType"] != "matrix" {
        return Err(format!("resultType {} is not matrix", data["resultType"]));
    }
    data["result"]
        .as_array()
        .ok_or("no result")?
        .iter()
        .map(|s| {
            Ok(Series {
                metric: labels(&s["metric"])?,
                values: s["values"]
                    .as_array()
                    .ok_or("a series without values")?
                    .iter()
                    .map(point)
                    .collect::<Result<_, _>>()?,
            })
        })
        .collect()
}

/// The scrape interval of `job`'s active targets (`/api/v1/targets`
/// `data`), the longest when they differ.
pub fn scrape_interval_of(targets: &Value, job: &str) -> Option<Duration> {
    targets["activeTargets"]
        .as_array()?
        .iter()
        .filter(|t| t["labels"]["job"] == job || t["scrapePool"] == job)
        .filter_map(|t| t["scrapeInterval"].as_str())
        .filter_map(|s| humantime::parse_duration(s).ok())
        .max()
}

/// Prometheus' retention time (`/api/v1/status/runtimeinfo` `data`):
/// `storageRetention` is e.g. `15d`, or `15d or 10GiB` with a size limit
/// too; the time part, as said and parsed.
pub fn retention_of(runtime: &Value) -> Option<(String, Duration)> {
    let text = runtime["storageRetention"].as_str()?;
    let time_part = text.split(" or ").find_map(|part| {
        let part = part.trim();
        humantime::parse_duration(part).ok().map(|d| (part, d))
    })?;
    Some((time_part.0.to_owned(), time_part.1))
}

fn label<'a>(metric: &'a BTreeMap<String, String>, name: &str) -> &'a str {
    metric.get(name).map_or("", String::as_str)
}

/// A series' caller key: app, route, library, sidecar.
type CallerId = (String, String, String, String);

fn caller_id(metric: &BTreeMap<String, String>, instance_label: &str) -> CallerId {
    (
        label(metric, "app_id").to_owned(),
        label(metric, "route").to_owned(),
        label(metric, "library").to_owned(),
        label(metric, instance_label).to_owned(),
    )
}

/// Rounded calls: `increase()` extrapolates, so 0.98 is one call.
fn calls(value: f64) -> u64 {
    if value.is_finite() && value > 0.0 {
        // Saturating float-to-int: the intent.
        (value.round() as u64).max(1)
    } else {
        0
    }
}

/// The hourly buckets (`(hour start, calls)` per caller), as a [`Usage`]
/// for a window starting at `start`, evaluated at `now`. A caller's first
/// and last seen are the starts of its first and last hours with calls,
/// no earlier than the window's start.
pub fn usage_of(
    buckets: &BTreeMap<CallerId, BTreeMap<i64, u64>>,
    start: i64,
    instances: &[String],
    recorded_since: Option<OffsetDateTime>,
) -> Usage {
    let mut apps: BTreeMap<String, AppUsage> = BTreeMap::new();
    for ((app_id, route, library, instance), hours) in buckets {
        let Some(route) = RouteKind::legacy_from_label(route) else {
            continue;
        };
        let app = apps.entry(app_id.clone()).or_insert_with(|| AppUsage {
            app_id: app_id.clone(),
            callers: Vec::new(),
            hourly: Vec::new(),
        });
        let mut in_window = hours.iter().filter(|(h, _)| **h + HOUR > start);
        let mut caller: Option<Caller> = None;
        for (&hour, &n) in hours {
            let Ok(at) = OffsetDateTime::from_unix_timestamp(hour) else {
                continue;
            };
            app.hourly.push(HourlyCount {
                route,
                hour: at,
                calls: n,
            });
        }
        if let Some((&first, _)) = in_window.next() {
            let last = hours.keys().next_back().copied().unwrap_or(first);
            let total = hours
                .iter()
                .filter(|(h, _)| **h + HOUR > start)
                .fold(0u64, |s, (_, n)| s.saturating_add(*n));
            let seen = |t: i64| OffsetDateTime::from_unix_timestamp(t.max(start)).ok();
            if let (Some(first_seen), Some(last_seen)) = (seen(first), seen(last)) {
                caller = Some(Caller {
                    key: CallerKey {
                        route,
                        auth_key: String::new(),
                        library: library.clone(),
                        fingerprint: String::new(),
                        user_agent: String::new(),
                        client_address: String::new(),
                        instance: instance.clone(),
                    },
                    calls: total,
                    first_seen,
                    last_seen,
                    call_sites: Vec::new(),
                });
            }
        }
        app.callers.extend(caller);
    }
    for app in apps.values_mut() {
        app.hourly.sort_by_key(|h| (h.hour, h.route));
        // Several libraries and sidecars share an app's hour: one bucket.
        let mut merged: Vec<HourlyCount> = Vec::with_capacity(app.hourly.len());
        for h in app.hourly.drain(..) {
            match merged.last_mut() {
                Some(m) if m.hour == h.hour && m.route == h.route => {
                    m.calls = m.calls.saturating_add(h.calls);
                }
                _ => merged.push(h),
            }
        }
        app.hourly = merged;
    }
    Usage {
        instance: instances.join(","),
        recorded_since,
        apps: apps.into_values().collect(),
    }
}

/// Adds a range answer's points to the buckets: a point at `t` is the hour
/// ending at `t`. With `at_least`, a point is a floor for its bucket (the
/// calls of a series new in the hour, before its first scrape included),
/// not an addition.
fn add_range(
    buckets: &mut BTreeMap<CallerId, BTreeMap<i64, u64>>,
    series: &[Series],
    instance_label: &str,
    at_least: bool,
) {
    for s in series {
        let id = caller_id(&s.metric, instance_label);
        for &(t, v) in &s.values {
            let n = calls(v);
            if n > 0 {
                // Points are at whole hours given as whole seconds.
                let hour = t.round() as i64 - HOUR;
                let b = buckets
                    .entry(id.clone())
                    .or_default()
                    .entry(hour)
                    .or_default();
                // A series' calls before its first scrape: the bucket
                // holds at least them (they include its `increase()`).
                *b = if at_least {
                    (*b).max(n)
                } else {
                    b.saturating_add(n)
                };
            }
        }
    }
}

/// The uses in a gate's window, by app, route, library, sidecar: the
/// `increase()` answer, or for a sidecar new in the window the highest
/// value of its counters (which started at 0 in the window), when that
/// is more: it includes the calls before its first scrape.
pub fn uses_of(
    increase: &[Sample],
    before_first: &[Sample],
    instance_label: &str,
) -> Vec<FleetUse> {
    let mut by: BTreeMap<CallerId, f64> = BTreeMap::new();
    for s in increase.iter().chain(before_first) {
        let v = by.entry(caller_id(&s.metric, instance_label)).or_default();
        *v = v.max(s.value);
    }
    by.into_iter()
        .filter_map(|((app_id, route, library, instance), v)| {
            let calls = calls(v);
            (calls > 0).then_some(FleetUse {
                app_id,
                route,
                library,
                instance,
                calls,
            })
        })
        .collect()
}

/// Per sidecar, the sum of a per-target answer (several targets may share
/// a `pod` label).
fn by_instance(samples: &[Sample], instance_label: &str) -> BTreeMap<String, f64> {
    let mut out: BTreeMap<String, f64> = BTreeMap::new();
    for s in samples {
        *out.entry(label(&s.metric, instance_label).to_owned())
            .or_default() += s.value;
    }
    out
}

/// The per-sidecar scrape figures of a window from the four answers.
pub fn scrapes_of(
    count: &[Sample],
    up: &[Sample],
    first: &[Sample],
    last: &[Sample],
    instance_label: &str,
) -> BTreeMap<String, Scrapes> {
    let up = by_instance(up, instance_label);
    let mut firsts: BTreeMap<String, f64> = BTreeMap::new();
    for s in first {
        let e = firsts
            .entry(label(&s.metric, instance_label).to_owned())
            .or_insert(s.value);
        *e = e.min(s.value);
    }
    let mut lasts: BTreeMap<String, f64> = BTreeMap::new();
    for s in last {
        let e = lasts
            .entry(label(&s.metric, instance_label).to_owned())
            .or_insert(s.value);
        *e = e.max(s.value);
    }
    by_instance(count, instance_label)
        .into_iter()
        .map(|(instance, n)| {
            let s = Scrapes {
                scrapes: calls(n),
                up: up
                    .get(&instance)
                    .copied()
                    .map_or(0, |v| v.round().max(0.0) as u64),
                first: firsts.get(&instance).copied(),
                last: lasts.get(&instance).copied(),
            };
            (instance, s)
        })
        .collect()
}

/// The apps each sidecar serves, from [`Selector::apps_served`]'s answer,
/// and those of them it served for part of the window only: removed by a
/// reload (`dropped`, [`Selector::apps_dropped`]'s answer), or added by
/// one after its first scrape (`first_served`,
/// [`Selector::apps_first_served`]'s, later than the sidecar's first
/// scrape in `instances` by more than `step`).
pub fn apps_served_of(
    samples: &[Sample],
    dropped: &[Sample],
    first_served: &[Sample],
    instances: &BTreeMap<String, Scrapes>,
    step: f64,
    instance_label: &str,
) -> (
    BTreeMap<String, BTreeSet<String>>,
    BTreeMap<String, BTreeSet<String>>,
) {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in samples {
        out.entry(label(&s.metric, instance_label).to_owned())
            .or_default()
            .insert(label(&s.metric, "app_id").to_owned());
    }
    let mut partly: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    // An app a reload added was not served for part of the window: its
    // series came later than the sidecar's first scrape (beyond the step
    // both are known to), and its calls before were refused as an unknown
    // app's, uncounted.
    let added = first_served.iter().filter(|s| {
        instances
            .get(label(&s.metric, instance_label))
            .and_then(|i| i.first)
            .is_some_and(|first| s.value > first + step)
    });
    // Nor was one a reload removed: its calls since were refused alike.
    for s in added.chain(dropped) {
        let instance = label(&s.metric, instance_label);
        let app = label(&s.metric, "app_id");
        if out.get(instance).is_some_and(|apps| apps.contains(app)) {
            partly
                .entry(instance.to_owned())
                .or_default()
                .insert(app.to_owned());
        }
    }
    (out, partly)
}

/// The sidecars whose kill switch was on in the window, from
/// [`Selector::bypassed`]'s answer: those with a value above 0. A sidecar
/// from before the `pusher_cutover_bypass` gauge has no series and is
/// not named: absent is not a gap (nothing is known against it).
pub fn bypassed_of(samples: &[Sample], instance_label: &str) -> BTreeSet<String> {
    samples
        .iter()
        .filter(|s| s.value > 0.0)
        .map(|s| label(&s.metric, instance_label).to_owned())
        .collect()
}

/// Whole seconds, at least 1.
fn secs(d: Duration) -> u64 {
    d.as_secs().max(1)
}

/// The job-wide answers needed for any window's evidence.
struct JobFacts {
    scrape_interval: Option<Duration>,
    retention: Option<(String, Duration)>,
}

impl JobFacts {
    /// One scrape interval in whole seconds (60 when unknown, then a gap).
    fn reach(&self) -> u64 {
        self.scrape_interval
            .map_or(60, |i| i.as_secs_f64().ceil() as u64)
            .max(1)
    }

    /// [`reach_back`] of this job's scrape interval.
    fn reach_back(&self) -> u64 {
        reach_back(self.reach())
    }
}

/// How far before a window a sidecar's last scrape may be while it counts
/// as watched at the window's start (one scrape missed, and a second of
/// jitter): two scrape intervals of `reach` seconds and a second. The
/// gate's ranges reach back as far, so that a call between that scrape and
/// the first one in the window counts (on the side of "used"), as a
/// switch or a removal seen then does (on the side of a gap); reaching
/// back one interval only, a missed scrape at the start hid such a call.
pub fn reach_back(reach: u64) -> u64 {
    2 * reach + 1
}

async fn window_facts(
    api: &Api,
    q: &FleetQuery,
    job: &JobFacts,
    now: i64,
    window: Duration,
) -> Result<Facts, PrometheusError> {
    let sel = &q.selector;
    let il = sel.instance_label.as_str();
    let w = secs(window);
    let reach = job.reach();
    let start = now - i64::try_from(w).unwrap_or(i64::MAX / 2);
    // The subqueries finding first and last scrapes evaluate at most
    // about 1,000 steps: finer than a scrape interval is no use, and a
    // coarser step is allowed for in the tolerance of missing scrapes.
    let step = reach.max(w.div_ceil(1000));
    let count = api.query(&sel.scrapes(w), now).await?;
    if count.iter().any(|s| label(&s.metric, il).is_empty()) {
        return Err(PrometheusError::MissingLabel {
            job: sel.job.clone(),
            label: il.to_owned(),
        });
    }
    let up = api.query(&sel.scrapes_up(w), now).await?;
    let first = api.query(&sel.first_scrape(w, step), now).await?;
    let last = api.query(&sel.last_scrape(w, step), now).await?;
    let back = job.reach_back();
    let at_start = api.query(&sel.scraped_in(back), start).await?;
    let before = api.query(&sel.scraped_in(w), start).await?;
    // Scraped in the window's first two intervals (evaluated then), when
    // the interval is known; with none known that is a gap already.
    let early_end = start + i64::try_from(back).unwrap_or(i64::MAX / 4);
    let early = match job.scrape_interval {
        Some(_) if early_end <= now => Some(
            api.query(&sel.scraped_in(back), early_end)
                .await?
                .iter()
                .map(|s| label(&s.metric, il).to_owned())
                .collect(),
        ),
        _ => None,
    };
    let served = api.query(&sel.apps_served(w), now).await?;
    let first_served = api.query(&sel.apps_first_served(w, step), now).await?;
    // Widened as the gate's counters ([`reach_back`]): a removal seen at
    // the last scrape before the window held into it.
    let dropped = api.query(&sel.apps_dropped(w + back), now).await?;
    // Likewise: a switch seen on at the last scrape before the window may
    // have stayed on into it.
    let bypassed = api.query(&sel.bypassed(w + back), now).await?;
    let instances = scrapes_of(&count, &up, &first, &last, il);
    let (apps_served, apps_partly) = apps_served_of(
        &served,
        &dropped,
        &first_served,
        &instances,
        step as f64,
        il,
    );
    Ok(Facts {
        job: sel.job.clone(),
        start,
        end: now,
        scrape_interval: job.scrape_interval.map(|d| d.as_secs_f64()),
        timestamp_step: step as f64,
        retention: job.retention.clone(),
        watched_at_start: at_start.len(),
        instances,
        scraped_before: before
            .iter()
            .map(|s| label(&s.metric, il).to_owned())
            .collect(),
        scraped_early: early,
        apps_served,
        apps_partly,
        bypassed: bypassed_of(&bypassed, il),
        expect_instances: q.expect_instances,
        expect_apps: q.expect_apps.clone(),
        apps: sel.apps.clone(),
    })
}

/// Asks Prometheus everything the report and the gate need, at `now`.
pub async fn fetch(
    q: &FleetQuery,
    token: Option<&secrecy::SecretString>,
    now: OffsetDateTime,
) -> Result<Fleet, PrometheusError> {
    let api = Api::new(&q.url, token);
    let sel = &q.selector;
    let il = sel.instance_label.as_str();
    let at = now.unix_timestamp();
    let scrape_interval = match q.scrape_interval {
        Some(i) => Some(i),
        None => scrape_interval_of(
            &api.call("/api/v1/targets?state=active", None).await?,
            &sel.job,
        ),
    };
    let retention = retention_of(&api.call("/api/v1/status/runtimeinfo", None).await?);
    let job = JobFacts {
        scrape_interval,
        retention,
    };
    let reach = job.reach();

    // The report's evidence, and the gate's (the same when the windows are).
    let facts = window_facts(&api, q, &job, at, q.since).await?;
    let report_gaps = evidence::gaps(&facts);
    let gate = match q.gate {
        None => None,
        Some(window) => {
            let gaps = if secs(window) == secs(q.since) {
                report_gaps.clone()
            } else {
                evidence::gaps(&window_facts(&api, q, &job, at, window).await?)
            };
            let range = secs(window) + job.reach_back();
            let increase = api.query(&sel.calls_by_caller(range), at).await?;
            let mut before = api.query(&sel.calls_before_first_scrape(range), at).await?;
            before.extend(api.query(&sel.calls_since_a_start_in(range), at).await?);
            Some(GateAnswer {
                uses: uses_of(&increase, &before, il),
                gaps,
            })
        }
    };

    // Hourly buckets over this window and the one before (the trend), and
    // at least the last 7 days (the report's last 24 hours, last 7 days
    // and last call, whatever the window), as range queries at every
    // hour's end, and the current hour so far.
    let max_span = super::MAX_DAYS as i64 * 86_400;
    let span = i64::try_from(secs(q.since))
        .unwrap_or(i64::MAX / 4)
        .min(max_span);
    let report_start = at - span;
    let fetched = (2 * span).max(7 * 86_400);
    let first_hour = (at - fetched).div_euclid(HOUR) * HOUR;
    let current_hour = at.div_euclid(HOUR) * HOUR;
    // A sidecar's calls before its first scrape are in no `increase()`:
    // for a series new in an hour, its highest value (it started at 0),
    // and for a process started in the hour (a restart between two
    // scrapes can leave its counters where the old one's were), its value
    // at the hour's end, are the hour's count when that is more, as in
    // the gate (`uses_of`).
    let hour_range = 3600 + reach;
    let mut buckets = BTreeMap::new();
    let mut from = first_hour + HOUR;
    while from <= current_hour {
        let to = (from + (MAX_STEPS - 1) * HOUR).min(current_hour);
        let series = api
            .query_range(&sel.calls_by_caller(hour_range), from, to, HOUR)
            .await?;
        add_range(&mut buckets, &series, il, false);
        for query in [
            sel.calls_before_first_scrape(hour_range),
            sel.calls_now_since_a_start_in(hour_range),
        ] {
            let series = api.query_range(&query, from, to, HOUR).await?;
            add_range(&mut buckets, &series, il, true);
        }
        from = to + HOUR;
    }
    if at > current_hour {
        let partial = u64::try_from(at - current_hour).unwrap_or(0) + reach;
        let in_the_hour = |samples: Vec<Sample>| -> Vec<Series> {
            samples
                .into_iter()
                .map(|s| Series {
                    metric: s.metric,
                    values: vec![((current_hour + HOUR) as f64, s.value)],
                })
                .collect()
        };
        let samples = api.query(&sel.calls_by_caller(partial), at).await?;
        add_range(&mut buckets, &in_the_hour(samples), il, false);
        for query in [
            sel.calls_before_first_scrape(partial),
            sel.calls_now_since_a_start_in(partial),
        ] {
            let samples = api.query(&query, at).await?;
            add_range(&mut buckets, &in_the_hour(samples), il, true);
        }
    }

    let instances: Vec<String> = facts.instances.keys().cloned().collect();
    let mut apps: BTreeSet<String> = facts.apps_served.values().flatten().cloned().collect();
    apps.extend(q.selector.apps.iter().cloned());
    let recorded_since = if report_gaps.is_empty() {
        OffsetDateTime::from_unix_timestamp(report_start).ok()
    } else {
        None
    };
    let usage = usage_of(&buckets, report_start, &instances, recorded_since);
    Ok(Fleet {
        now,
        usage,
        apps: apps.into_iter().collect(),
        evidence: FleetEvidence {
            prometheus: api.base.clone(),
            job: sel.job.clone(),
            instance_label: sel.instance_label.clone(),
            scrape_interval_seconds: facts.scrape_interval,
            retention: job.retention.map(|(text, _)| text),
            instances: facts.instances,
            gaps: report_gaps.into_iter().map(GapReport::from).collect(),
        },
        gate,
    })
}

/// The gate's lines for stderr: each use (app, library, sidecar, route,
/// calls), then each gap; or that zero is proven.
pub fn render_gate(answer: &GateAnswer, window: Duration) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let window = humantime::format_duration(window);
    if !answer.uses.is_empty() {
        let _ = writeln!(out, "deprecated calls were made in the last {window}:");
        for u in &answer.uses {
            let _ = writeln!(
                out,
                "  app {} library {} instance {}: {} {} call(s)",
                super::table::terminal_text(&u.app_id, 64),
                super::table::terminal_text(&u.library, 64),
                super::table::terminal_text(&u.instance, 200),
                u.calls,
                super::table::terminal_text(&u.route, 64)
            );
        }
    }
    if answer.uses.is_empty() && answer.gaps.is_empty() {
        let _ = writeln!(
            out,
            "no deprecated call in the last {window}, and every sidecar was scraped \
             throughout its time in it: zero is proven"
        );
    }
    if !answer.gaps.is_empty() {
        let _ = writeln!(
            out,
            "the evidence for the last {window} is incomplete, so zero is not proven:"
        );
        for g in &answer.gaps {
            let _ = writeln!(
                out,
                "  gap: {}",
                super::table::terminal_text(&g.to_string(), 400)
            );
        }
    }
    out
}

#[cfg(test)]
#[path = "prometheus_tests.rs"]
mod tests;
