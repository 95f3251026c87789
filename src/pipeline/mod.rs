//! The request pipeline, once for every request: classify → verify →
//! dispatch → record.
//!
//! - [`classify`](mod@classify): which route a request takes, from its method and path;
//! - verify (`verify.rs`): the body read within its limits and the
//!   signature checked (spec A.6);
//! - [`cutover`]: which path a verified legacy call takes (observe,
//!   shadow, translate, reject);
//! - dispatch: to the route that owns the call, in [`crate::routes`];
//! - record (`record.rs`): metrics, ledger and log line, whatever the
//!   outcome.
//!
//! The configuration lives in a [`State`] swapped atomically on reload:
//! each request takes the state current when it arrives and finishes on it.

pub mod classify;
pub mod cutover;
mod record;
mod verify;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, LINK, USER_AGENT};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response};

pub use record::{MAX_LOGGED_LEN, REQUEST_TARGET, Record, truncate};

use crate::clock::Clock;
use crate::config::{AppConfig, Config, DEFAULT_DEPRECATION_LINK, SubscriptionCounting};
use crate::error::ProxyError;
use crate::http::{self, APPLICATION_JSON, ResponseBody};
use crate::pusher::query::QueryParams;
use crate::pusher::signature::{Expected, Signer, SigningKey, Unsigned};
use crate::routes::channel_stats::OffUntil;
use crate::routes::coalesce::{self, Coalescer};
use crate::routes::single_flight::Flights;
use crate::routes::{self, TranslateError, channel_event, channel_stats, passthrough};
use crate::telemetry::metrics::AppSeries;
use crate::telemetry::{Telemetry, call_site};
use crate::upstream::{self, Buffered, OutboundRequest, Upstream};
use classify::{Route, RouteKind, classify};
use cutover::Path;
use record::Recorder;

/// Headers of a request the proxy builds for the upstream: `Content-Type`,
/// `Host` and `Content-Length`.
const OUTBOUND_HEADERS: usize = 3;

/// An app's settings and the state the proxy keeps for it.
#[derive(Debug)]
pub(crate) struct App {
    /// Its settings.
    pub(crate) config: AppConfig,
    /// The keys of the secrets its callers may sign with, in
    /// `config.secrets`' order, and of its upstream secret: each keyed
    /// once per configuration, not once per request.
    keys: Keys,
    /// The `Sunset` header of its legacy answers, when it has a sunset.
    sunset: Option<HeaderValue>,
    /// `probe` mode's memory of an upstream that does not count
    /// subscriptions.
    pub(crate) counting_off: OffUntil,
    /// The memory (`probe` and `on`) of an upstream that does not count
    /// presence channels' subscriptions.
    pub(crate) presence_counting_off: OffUntil,
    /// Its metric series.
    series: Arc<AppSeries>,
    /// The upstream path its translated triggers go to
    /// (`/apps/{upstream id}/events`), built once.
    pub(crate) events_path: String,
    /// The upstream path its coalesced triggers go to
    /// (`/apps/{upstream id}/batch_events`), built once.
    pub(crate) batch_path: String,
    /// Its trigger queue and places on the wire (`upstream.batch_*`):
    /// fresh for each configuration, see [`coalesce`].
    pub(crate) coalescer: Coalescer,
    /// Its stats queries on the wire (single flight), fresh for each
    /// configuration.
    pub(crate) stats_flights: Flights,
}

impl App {
    /// Whether stats calls ask for `subscription_count` at Unix time `now`.
    pub(crate) fn counting_active(&self, now: u64) -> bool {
        match self.config.subscription_count {
            SubscriptionCounting::On => true,
            SubscriptionCounting::Off => false,
            SubscriptionCounting::Probe => self.counting_off.active(now),
        }
    }

    /// What its callers' requests are verified against.
    fn expected(&self, now: u64, window_secs: u64) -> Expected<'_> {
        Expected {
            app_id: &self.config.id,
            key: &self.config.key,
            keys: &self.keys.callers,
            now,
            window_secs,
        }
    }

    /// The signer of its upstream requests.
    pub(crate) fn upstream_signer(&self) -> Signer<'_> {
        Signer::new(&self.config.upstream.key, &self.keys.upstream)
    }
}

/// An app's [`SigningKey`]s.
#[derive(Debug)]
struct Keys {
    /// Of `config.secrets`, for verifying its callers.
    callers: Vec<SigningKey>,
    /// Of its upstream secret, for signing its upstream requests.
    upstream: SigningKey,
}

impl Keys {
    fn of(app: &AppConfig) -> Self {
        Self {
            callers: app.secrets.iter().map(SigningKey::new).collect(),
            upstream: SigningKey::new(&app.upstream.secret),
        }
    }
}

/// The proxy: the current [`State`], swapped on reload. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Proxy {
    state: Arc<ArcSwap<State>>,
}

/// Everything requests need under one configuration.
#[derive(Debug)]
pub struct State {
    pub(crate) config: Config,
    apps: HashMap<String, App>,
    pub(crate) upstream: Upstream,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) telemetry: Arc<Telemetry>,
    /// The `Link: <…>; rel="deprecation"` header of legacy answers.
    deprecation_link: HeaderValue,
    /// Shadow comparisons in flight at most ([`shadow_slots`]): each
    /// takes an upstream slot that a caller could have had.
    pub(crate) shadow_slots: Arc<tokio::sync::Semaphore>,
}

/// How many shadow comparisons may be in flight: a quarter of the upstream
/// slots (at least one), so that comparing never takes more than that
/// from the calls that answer callers.
pub(crate) fn shadow_slots(upstream_max_connections: usize) -> usize {
    (upstream_max_connections / 4).max(1)
}

impl State {
    /// A state for `config`. Keeps `previous`'s upstream pool when the
    /// upstream settings did not change, and its probe results per app
    /// while the app is the same app on the same upstream server (what
    /// the upstream counts is its own; a reload that moves the app to
    /// another server, or to another of its apps, probes afresh).
    fn new(
        config: Config,
        clock: Arc<dyn Clock>,
        telemetry: Arc<Telemetry>,
        previous: Option<&State>,
    ) -> Self {
        let apps = config
            .apps
            .iter()
            .map(|a| {
                let kept = previous
                    .filter(|p| p.config.upstream.url == config.upstream.url)
                    .and_then(|p| p.apps.get(&a.id))
                    .filter(|p| p.config.upstream.id == a.upstream.id);
                let carried = |memory: fn(&App) -> &OffUntil| {
                    OffUntil::new(kept.map_or(0, |p| memory(p).until()))
                };
                let app = App {
                    config: a.clone(),
                    keys: Keys::of(a),
                    sunset: a.sunset.and_then(sunset_header),
                    counting_off: carried(|p| &p.counting_off),
                    presence_counting_off: carried(|p| &p.presence_counting_off),
                    series: telemetry.app_series(&a.id),
                    events_path: channel_event::upstream_path(&a.upstream.id),
                    batch_path: coalesce::batch_path(&a.upstream.id),
                    coalescer: Coalescer::new(
                        config.batching,
                        telemetry.metrics().upstream.queued().clone(),
                    ),
                    stats_flights: Flights::default(),
                };
                (a.id.clone(), app)
            })
            .collect();
        let upstream = match previous {
            Some(p) if p.config.upstream == config.upstream => p.upstream.clone(),
            Some(p) => Upstream::replacing(
                &p.upstream,
                &p.config.upstream,
                &config.upstream,
                config.workers(),
                telemetry.metrics().upstream.slots(),
            ),
            None => Upstream::new(
                &config.upstream,
                config.workers(),
                telemetry.metrics().upstream.slots(),
            ),
        };
        // Validated as an absolute URL without `<`, `>` or `"`.
        let link = |url: &str| HeaderValue::try_from(format!("<{url}>; rel=\"deprecation\""));
        let deprecation_link = link(&config.telemetry.deprecation_link)
            .or_else(|_| link(DEFAULT_DEPRECATION_LINK))
            .unwrap_or_else(|_| HeaderValue::from_static("rel=\"deprecation\""));
        // Kept across a reload with the pool, so that the comparisons in
        // flight still count against the cap.
        let shadow_slots = match previous {
            Some(p) if p.config.upstream.max_connections == config.upstream.max_connections => {
                p.shadow_slots.clone()
            }
            _ => Arc::new(tokio::sync::Semaphore::new(shadow_slots(
                config.upstream.max_connections,
            ))),
        };
        Self {
            config,
            apps,
            upstream,
            clock,
            telemetry,
            deprecation_link,
            shadow_slots,
        }
    }

    /// The configuration this state serves.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The configured app `id`, if any.
    pub(crate) fn app(&self, id: &str) -> Option<&App> {
        self.apps.get(id)
    }
}

impl Proxy {
    /// A proxy for `config` reading time from `clock` and recording into
    /// `telemetry`.
    pub fn new(config: Config, clock: Arc<dyn Clock>, telemetry: Arc<Telemetry>) -> Self {
        let state = State::new(config, clock, telemetry, None);
        let proxy = Self {
            state: Arc::new(ArcSwap::from_pointee(state)),
        };
        proxy.follow_bypass();
        proxy
    }

    /// Tells the ledger whether the state in force passes legacy calls
    /// through unrecorded (`bypass`), once it is in force: a kill switch
    /// turned off moves the ledger's start past the last call it let
    /// through ([`crate::telemetry::ledger::Ledger::follow_bypass`]). The
    /// `pusher_cutover_bypass` gauge says the same to Prometheus, whose
    /// fleet gate counts a window with it at 1 as a gap, and
    /// `pusher_cutover_bypass_last_on_timestamp_seconds` says when it was
    /// last turned off, which the gate reads too (a switch on and off
    /// between two scrapes leaves the gauge at 0 at both).
    fn follow_bypass(&self) {
        let state = self.state.load();
        let bypass = state.config.bypass;
        state
            .telemetry
            .ledger()
            .follow_bypass(bypass, state.clock.unix_now());
        let metrics = state.telemetry.metrics();
        // The gauge's previous value tells a switch turned off from one
        // kept off; the moment it goes off is the last it was in force.
        if metrics.bypass.set(i64::from(bypass)) == 1 && !bypass {
            let now = i64::try_from(state.clock.unix_now()).unwrap_or(i64::MAX);
            metrics.bypass_last_on.set(now);
        }
    }

    /// The state requests arriving now are served with.
    pub fn current(&self) -> Arc<State> {
        self.state.load_full()
    }

    /// Swaps in `config` for requests arriving from now on; requests in
    /// flight finish on the state they started with.
    pub fn reload(&self, config: Config) {
        let previous = self.state.load_full();
        let next = State::new(
            config,
            previous.clock.clone(),
            previous.telemetry.clone(),
            Some(&previous),
        );
        self.state.store(Arc::new(next));
        self.follow_bypass();
    }

    /// Handles one request from `peer`. Never fails: errors become answers
    /// (the `Result` is the shape hyper's services return).
    ///
    /// Not an `async fn`: the future is the current state's own, with no
    /// wrapper around it holding a second copy of the request (one such
    /// future is held per request in flight).
    pub fn handle(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> impl Future<Output = Result<Response<ResponseBody>, Infallible>> + Send + use<> {
        self.state.load_full().handle(req, peer)
    }
}

/// One request to a configured app, as the routes see it: the state it is
/// served with, the app, and what is recorded of it.
#[derive(Debug)]
pub(crate) struct Call<'a> {
    /// The state the request is served with.
    pub(crate) state: &'a Arc<State>,
    /// The configured app its path names.
    pub(crate) app: &'a App,
    /// What the recorder learns of the request.
    pub(crate) record: &'a mut Record,
}

impl State {
    /// The future of one request: classify, verify, dispatch, record. Not
    /// an `async fn`: the request is split before the future is built, so
    /// the future holds its parts only, not the parts and the moved-from
    /// request beside them.
    fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> impl Future<Output = Result<Response<ResponseBody>, Infallible>> + Send + use<> {
        let (mut parts, body) = req.into_parts();
        async move {
            // The route borrows a handle on the target's bytes, not `parts`,
            // which a legacy call may then change (see `legacy`).
            let target = parts.uri.clone();
            // Classified as received; a path with repeated slashes that is
            // not a legacy call so (`//apps/…`) is classified collapsed.
            let path = classify::canonical_path(target.path());
            let as_received = classify(&parts.method, target.path());
            let route = if as_received.kind.is_legacy() || path == target.path() {
                as_received
            } else {
                classify(&parts.method, &path)
            };
            let kind = route.kind;
            // Looked up once, for the pipeline, the metrics and the
            // deprecation headers.
            let app = route.app_id.and_then(|id| self.apps.get(id));
            let mut recorder = Recorder::new(
                &self.telemetry,
                app.map(|a| &a.series),
                self.clock.unix_now(),
                &parts.method,
                kind,
                route.app_id,
                parts.headers.get(USER_AGENT),
                peer,
            );
            let record = &mut recorder.record;
            let bypass = self.config.bypass;
            let legacy = kind.is_legacy() && !bypass;
            let result = if legacy {
                self.legacy(route, &path, app, &mut parts, body, record)
                    .await
            } else if !bypass && classify::near_legacy(&path) {
                Err(ProxyError::NearLegacy)
            } else if !bypass && classify::method_near_legacy(&parts.method, &path) {
                Err(ProxyError::MethodCase(
                    truncate(parts.method.as_str()).to_owned(),
                ))
            } else if let Some((app, query)) = (!bypass)
                .then(|| passthrough::resign_target(app, &parts))
                .flatten()
            {
                let mut call = Call {
                    state: &self,
                    app,
                    record,
                };
                // Boxed, as the legacy paths other than a trigger are
                // (see `legacy`).
                Box::pin(passthrough::resigned(&mut call, query, &parts, &path, body)).await
            } else {
                Box::pin(passthrough::forward_unchanged(&self, parts, body, record)).await
            };
            let (mut response, error) = match result {
                Ok(response) => (response, None),
                Err(e) => (error_response(&e), Some(e)),
            };
            if legacy {
                self.deprecation_headers(response.headers_mut(), app);
            }
            recorder.finish_response(&mut response, error.as_ref());
            Ok(response)
        }
    }

    /// A legacy call to `app`, the configured app its path names (if any):
    /// verified, then dispatched on its cutover path. `parts` is mutable
    /// only so that a translated call can let go of the caller's headers,
    /// which it no longer needs, before it waits on the upstream.
    async fn legacy(
        self: &Arc<Self>,
        route: Route<'_>,
        canonical: &str,
        app: Option<&App>,
        parts: &mut Parts,
        body: Incoming,
        record: &mut Record,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let app_id = route.app_id.unwrap_or_default();
        if app_id.is_empty() {
            return Err(TranslateError::EmptySegment("app id").into());
        }
        let app = app.ok_or_else(|| ProxyError::UnknownApp(truncate(app_id).to_owned()))?;
        let query =
            QueryParams::parse(parts.uri.query().unwrap_or("")).map_err(TranslateError::Query)?;
        routes::unambiguous(&query)?;
        let mut call = Call {
            state: self,
            app,
            record,
        };
        let (body, now) = call.verified(parts, &query, body, route.kind).await?;
        let channel = routes::decode_channel(route.channel.unwrap_or_default())?;
        // Where in the caller's code to look: the event and channel
        // templates (identifiers out, so one call site stays one).
        let record = &mut *call.record;
        record.channel = Some(call_site::template(&channel).into_owned());
        record.event = query
            .get("name")
            .map(|n| call_site::template(truncate(n)).into_owned());

        let path = cutover::decide(&app.config, route.kind, &channel, now);
        call.record.path = Some(path);
        if path == Path::Translate {
            parts.headers = HeaderMap::new();
        }
        let head = parts.method == Method::HEAD;
        match path {
            Path::Reject => Err(ProxyError::Gone {
                route: route.kind,
                app_id: app.config.id.clone(),
                channel,
            }),
            // The paths other than a translated trigger are boxed: the
            // request future is allocated for every connection, sized for
            // its largest branch, and the trigger's is the common one.
            Path::Observe => {
                let observe = routes::observe(&mut call, parts, canonical, &query, body, now);
                let answer = Box::pin(observe).await?;
                Ok(http::verbatim(answer, head))
            }
            Path::Shadow => {
                let observe = routes::observe(&mut call, parts, canonical, &query, body, now);
                let answer = Box::pin(observe).await.inspect_err(|_| {
                    // No legacy answer (a time-out, no connection): nothing
                    // to compare with, counted as one that is no stats JSON.
                    self.telemetry
                        .shadow_skipped(&app.config.id, "not_comparable");
                })?;
                channel_stats::spawn_shadow_compare(&call, &channel, now, &answer);
                Ok(http::verbatim(answer, head))
            }
            Path::Translate if route.kind == RouteKind::LegacyStats => {
                Box::pin(channel_stats::translate(&mut call, &channel, now)).await
            }
            Path::Translate => channel_event::translate(&mut call, &channel, query, body).await,
        }
    }

    /// Marks a legacy answer as deprecated: `Deprecation` (RFC 9745, the
    /// date Pusher deprecated these calls), `Link` to the current API, and
    /// `Sunset` (RFC 8594) when the app has one.
    fn deprecation_headers(&self, headers: &mut HeaderMap, app: Option<&App>) {
        headers.insert(DEPRECATION, HeaderValue::from_static(DEPRECATED_AT));
        headers.append(LINK, self.deprecation_link.clone());
        if let Some(sunset) = app.and_then(|a| a.sunset.clone()) {
            headers.insert(SUNSET, sunset);
        }
    }
}

impl<'a> Call<'a> {
    /// A call to `app` served with `state`, recording into `record` (the
    /// shadow comparison's own call records nowhere).
    pub(crate) fn new(state: &'a Arc<State>, app: &'a App, record: &'a mut Record) -> Self {
        Self { state, app, record }
    }

    /// A current-API request signed with the upstream's credentials for the
    /// app and a fresh timestamp. Not part of the exchange's future: what
    /// it builds the request from is not held while the upstream answers.
    pub(crate) fn signed_request(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        info: Option<&str>,
    ) -> Result<OutboundRequest, ProxyError> {
        let info_param;
        let params: &[(&str, &str)] = match info {
            Some(v) => {
                info_param = [("info", v)];
                &info_param
            }
            None => &[],
        };
        let target = self.app.upstream_signer().target(&Unsigned {
            method: method.as_str(),
            path,
            timestamp: self.state.clock.unix_now(),
            body: body.as_deref(),
            params,
        });
        let uri = upstream::target(target).map_err(ProxyError::Internal)?;
        // Room for what is added on the way out (`Host`, and hyper's
        // `Content-Length`), so the map is allocated once.
        let mut headers = HeaderMap::with_capacity(OUTBOUND_HEADERS);
        if body.is_some() {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(APPLICATION_JSON));
        }
        let mut req = Request::new(Full::new(body.unwrap_or_default()));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        Ok(Box::new(req))
    }

    /// Waits for an upstream slot, builds the request with `build` (so that
    /// a call waiting for a slot holds what the request is built from, not
    /// the request: its headers, target and body), sends it and reads the
    /// whole answer, all before `deadline`. The time it took and the
    /// upstream's status are recorded. `build` runs only once the slot is
    /// held, so a caller counts its upstream request there: one answered
    /// 504 for want of a slot was never sent.
    ///
    /// It runs in the request's own task: the listener does not read ahead
    /// while a request is in flight (see [`crate::http::server`]), so a
    /// caller closing its connection does not cut the exchange short, and a
    /// trigger is delivered (or not) once.
    pub(crate) async fn exchange(
        &mut self,
        build: impl FnOnce(&Self) -> Result<OutboundRequest, ProxyError>,
        deadline: tokio::time::Instant,
    ) -> Result<Buffered, ProxyError> {
        let started = Instant::now();
        let upstream = &self.state.upstream;
        let answer = match upstream.slot(deadline).await {
            Ok(slot) => {
                let req = build(self)?;
                upstream.exchange(slot, req, deadline).await
            }
            Err(e) => Err(e),
        };
        self.record.add_upstream_time(started.elapsed());
        let answer = answer?;
        self.record.upstream_status = Some(answer.status.as_u16());
        Ok(answer)
    }
}

/// `Deprecation: @1346457600`: 2012-09-01, when Pusher deprecated both calls.
const DEPRECATED_AT: &str = "@1346457600";
const DEPRECATION: HeaderName = HeaderName::from_static("deprecation");
const SUNSET: HeaderName = HeaderName::from_static("sunset");

/// The `Sunset` value (an HTTP-date) for `at`.
fn sunset_header(at: time::OffsetDateTime) -> Option<HeaderValue> {
    // `fmt_http_date` panics outside 1970-9999 (config validation refuses
    // such a `sunset`; this holds should one get through).
    if !crate::config::http_date_range().contains(&at.unix_timestamp()) {
        return None;
    }
    let at = std::time::SystemTime::from(at);
    HeaderValue::try_from(httpdate::fmt_http_date(at)).ok()
}

/// The caller's answer for an error: its status and a one-line plain-text
/// body. No side effects; logging happens in the recorder.
fn error_response(e: &ProxyError) -> Response<ResponseBody> {
    let mut headers = http::answer_headers(HeaderValue::from_static(http::TEXT_PLAIN));
    if let ProxyError::MethodNotAllowed(_) = e {
        // RFC 9110 §15.5.6: a 405 lists the methods the target supports.
        headers.insert(
            hyper::header::ALLOW,
            HeaderValue::from_static(crate::routes::passthrough::ALLOWED_METHODS),
        );
    }
    http::respond_with(e.status(), headers, Bytes::from(e.body()))
}

#[cfg(test)]
mod tests {
    use super::sunset_header;
    use time::macros::datetime;

    /// `Sunset` is said for any time an HTTP-date holds, and left out
    /// (never a panic) for one it does not.
    #[test]
    fn a_sunset_an_http_date_cannot_say_is_left_out() {
        assert_eq!(
            sunset_header(datetime!(2030-06-30 00:00 UTC))
                .as_ref()
                .map(|v| v.as_bytes()),
            Some(&b"Sun, 30 Jun 2030 00:00:00 GMT"[..])
        );
        assert!(sunset_header(datetime!(1969-12-31 23:59:59 UTC)).is_none());
        assert!(sunset_header(datetime!(9999-12-31 23:59:59 -1)).is_none());
    }
}
