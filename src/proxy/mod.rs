//! The request pipeline: classify, parse, verify, decide the cutover path,
//! translate, sign, forward, map back, record. Record runs for every
//! request, whatever its outcome.
//!
//! The configuration lives in a [`State`] swapped atomically on reload:
//! each request takes the state current when it arrives and finishes on it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{
    CONTENT_LENGTH, CONTENT_TYPE, EXPECT, HeaderMap, HeaderName, HeaderValue, LINK, USER_AGENT,
};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode};

mod record;

use record::Recorder;
pub use record::{MAX_LOGGED_LEN, Record, truncate};

use crate::ResponseBody;
use crate::clock::Clock;
use crate::config::{AppConfig, Config, DEFAULT_DEPRECATION_LINK, SubscriptionCounting};
use crate::cutover::{self, Path};
use crate::error::ProxyError;
use crate::passthrough;
use crate::query::QueryParams;
use crate::route::{Route, RouteKind, classify};
use crate::signature::{self, Expected};
use crate::telemetry::Telemetry;
use crate::telemetry::metrics::AppSeries;
use crate::translate::channel_event::{self, Trigger};
use crate::translate::channel_stats::{self, Stats};
use crate::translate::{self, TranslateError};
use crate::upstream::{self, Buffered, OutboundRequest, Upstream, UpstreamError};

/// How long a `probe` app stops asking for `subscription_count` after the
/// upstream said counting is disabled (spec E.5 item 1).
const COUNTING_OFF_SECS: u64 = 600;

const TEXT_PLAIN: &str = "text/plain; charset=utf-8";
const APPLICATION_JSON: &str = "application/json";

/// Headers of a request the proxy builds for the upstream: `Content-Type`,
/// `Host` and `Content-Length`.
const OUTBOUND_HEADERS: usize = 3;

/// Headers of an answer the proxy builds: `Content-Type`, and on a legacy
/// call `Deprecation`, `Link` and `Sunset`.
const ANSWER_HEADERS: usize = 4;

/// Body allowance of requests that should have none (stats, GETs).
const MAX_BODYLESS_READ: usize = 4096;

/// An app's settings and the state the proxy keeps for it.
#[derive(Debug)]
struct App {
    config: AppConfig,
    /// The `Sunset` header of its legacy answers, when it has a sunset.
    sunset: Option<HeaderValue>,
    /// Unix time until which `probe` mode does not ask for
    /// `subscription_count`.
    counting_off_until: AtomicU64,
    /// Its metric series.
    series: Arc<AppSeries>,
    /// The upstream path its translated triggers go to
    /// (`/apps/{upstream id}/events`), built once.
    events_path: String,
}

impl App {
    fn counting_active(&self, now: u64) -> bool {
        match self.config.subscription_count {
            SubscriptionCounting::On => true,
            SubscriptionCounting::Off => false,
            SubscriptionCounting::Probe => now >= self.counting_off_until.load(Ordering::Relaxed),
        }
    }

    fn expected(&self, now: u64, window_secs: u64) -> Expected<'_> {
        Expected {
            app_id: &self.config.id,
            key: &self.config.key,
            secrets: &self.config.secrets,
            now,
            window_secs,
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
    config: Config,
    apps: HashMap<String, App>,
    upstream: Upstream,
    clock: Arc<dyn Clock>,
    telemetry: Arc<Telemetry>,
    /// The `Link: <…>; rel="deprecation"` header of legacy answers.
    deprecation_link: HeaderValue,
}

impl State {
    /// A state for `config`. Keeps `previous`'s upstream pool when the
    /// upstream settings did not change, and its probe results per app.
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
                let off_until = previous
                    .and_then(|p| p.apps.get(&a.id))
                    .map_or(0, |p| p.counting_off_until.load(Ordering::Relaxed));
                let app = App {
                    config: a.clone(),
                    sunset: a.sunset.and_then(sunset_header),
                    counting_off_until: AtomicU64::new(off_until),
                    series: telemetry.app_series(&a.id),
                    events_path: channel_event::upstream_path(&a.upstream.id),
                };
                (a.id.clone(), app)
            })
            .collect();
        let upstream = match previous {
            Some(p) if p.config.upstream == config.upstream => p.upstream.clone(),
            _ => Upstream::new(&config.upstream, config.workers()),
        };
        // Validated as an absolute URL without `<`, `>` or `"`.
        let link = |url: &str| HeaderValue::try_from(format!("<{url}>; rel=\"deprecation\""));
        let deprecation_link = link(&config.telemetry.deprecation_link)
            .or_else(|_| link(DEFAULT_DEPRECATION_LINK))
            .unwrap_or_else(|_| HeaderValue::from_static("rel=\"deprecation\""));
        Self {
            config,
            apps,
            upstream,
            clock,
            telemetry,
            deprecation_link,
        }
    }

    /// The configuration this state serves.
    pub fn config(&self) -> &Config {
        &self.config
    }
}

impl Proxy {
    /// A proxy for `config` reading time from `clock` and recording into
    /// `telemetry`.
    pub fn new(config: Config, clock: Arc<dyn Clock>, telemetry: Arc<Telemetry>) -> Self {
        let state = State::new(config, clock, telemetry, None);
        Self {
            state: Arc::new(ArcSwap::from_pointee(state)),
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

impl State {
    /// The future of one request. Not an `async fn`: the request is split
    /// before the future is built, so the future holds its parts only,
    /// not the parts and the moved-from request beside them.
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
            let route = classify(&parts.method, target.path());
            let kind = route.kind;
            // Looked up once, for the pipeline, the metrics and the
            // deprecation headers.
            let app = route.app_id.and_then(|id| self.apps.get(id));
            let mut recorder = Recorder::new(
                &self.telemetry,
                app.map(|a| &*a.series),
                self.clock.unix_now(),
                &parts.method,
                kind,
                route.app_id,
                parts.headers.get(USER_AGENT).map(HeaderValue::as_bytes),
                peer,
            );
            let record = &mut recorder.record;
            let bypass = self.config.bypass;
            let legacy = kind.is_legacy() && !bypass;
            let result = if legacy {
                self.legacy(route, app, &mut parts, body, record).await
            } else if let Some((app, query)) =
                (!bypass).then(|| self.resign_target(app, &parts)).flatten()
            {
                self.resigned(app, query, &parts, body, record).await
            } else {
                self.passthrough(parts, body, record).await
            };
            let (mut response, error) = match result {
                Ok(response) => (response, None),
                Err(e) => (error_response(&e), Some(e)),
            };
            if legacy {
                self.deprecation_headers(response.headers_mut(), app);
            }
            recorder.finish(response.status(), error.as_ref());
            Ok(response)
        }
    }

    /// A legacy call to `app`, the configured app its path names (if any).
    /// `parts` is mutable only so that a translated call can let go of the
    /// caller's headers, which it no longer needs, before it waits on the
    /// upstream.
    async fn legacy(
        self: &Arc<Self>,
        route: Route<'_>,
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
        let (body, now) = self
            .verified(app, parts, &query, body, route.kind, record)
            .await?;
        let channel = translate::decode_channel(route.channel.unwrap_or_default())?;

        let path = cutover::decide(&app.config, route.kind, &channel, now);
        if path == Path::Translate {
            parts.headers = HeaderMap::new();
        }
        match path {
            Path::Reject => Err(ProxyError::Gone {
                route: route.kind,
                app_id: app.config.id.clone(),
                channel,
            }),
            Path::Observe => {
                let answer = self.observe(app, parts, &query, body, now, record).await?;
                Ok(verbatim(answer))
            }
            Path::Shadow => {
                let answer = self.observe(app, parts, &query, body, now, record).await?;
                self.spawn_shadow_compare(app, &channel, now, &answer);
                Ok(verbatim(answer))
            }
            Path::Translate if route.kind == RouteKind::LegacyStats => {
                let (status, headers, body) = self.stats(app, &channel, now, record).await?;
                Ok(respond_with(status, headers, body))
            }
            Path::Translate => self.trigger(app, &channel, &query, &body, record).await,
        }
    }

    /// Reads the body and verifies the request against `app` (spec A.6).
    /// Returns the body and the time it was checked at.
    ///
    /// Only a trigger carries a body worth reading, and only up to the
    /// app's `max_data_bytes`; a current-API POST up to `max_body_bytes`;
    /// anything else gets a small allowance. The whole body must arrive
    /// within `body_timeout_ms`.
    async fn verified(
        &self,
        app: &App,
        parts: &Parts,
        query: &QueryParams,
        body: Incoming,
        kind: RouteKind,
        record: &mut Record,
    ) -> Result<(Bytes, u64), ProxyError> {
        record.auth_key = query.get("auth_key").map(|k| truncate(k).to_owned());
        let max_body = self.config.max_body_bytes;
        let max_data = app.config.max_data_bytes;
        let (limit, data_limit) = match kind {
            RouteKind::LegacyTrigger if max_data < max_body => (max_data, true),
            RouteKind::LegacyTrigger => (max_body, false),
            RouteKind::Passthrough if parts.method == Method::POST => (max_body, false),
            _ => (MAX_BODYLESS_READ.min(max_body), false),
        };
        let body = match read_body(body, limit, self.config.body_timeout).await {
            Err(TranslateError::BodyTooLarge { .. }) if data_limit => {
                return Err(TranslateError::DataTooLarge { limit }.into());
            }
            other => other?,
        };
        let now = self.clock.unix_now();
        signature::verify(
            parts.method.as_str(),
            parts.uri.path(),
            query,
            &body,
            &app.expected(now, self.config.timestamp_window_secs),
        )?;
        record.verified = true;
        Ok((body, now))
    }

    /// A passthrough request the proxy verifies and re-signs rather than
    /// forwarding it unchanged, when it is signed with a configured app's
    /// key and either:
    /// - the upstream knows the app by other credentials (`[apps.upstream]`),
    ///   so the caller's signature would not verify there; or
    /// - it is a GET carrying `body_md5`, which PyPI `pusher` ≥ 1.0 sends
    ///   and sockudo refuses (spec A.4).
    ///
    /// Anything else (another key, a query that does not decode) passes
    /// through untouched for the upstream to judge. `app` is the configured
    /// app the path names, if any.
    fn resign_target<'s>(
        &self,
        app: Option<&'s App>,
        parts: &Parts,
    ) -> Option<(&'s App, QueryParams)> {
        let app = app?;
        let raw = parts.uri.query()?;
        let mapped = app.config.is_mapped();
        if !mapped {
            let may_carry_md5 = parts.method == Method::GET
                && (raw.contains('%')
                    || raw
                        .as_bytes()
                        .windows(3)
                        .any(|w| w.eq_ignore_ascii_case(b"md5")));
            if !may_carry_md5 {
                return None;
            }
        }
        let query = QueryParams::parse(raw).ok()?;
        let ours = query.get("auth_key") == Some(&app.config.key)
            && (mapped || query.get("body_md5").is_some());
        ours.then_some((app, query))
    }

    /// Verifies a passthrough request, then forwards it re-signed for the
    /// upstream (see [`State::resign`]). An upstream 401 then refuses the
    /// proxy's signature, not the caller's: it becomes the 500 of spec E.4.
    async fn resigned(
        &self,
        app: &App,
        query: QueryParams,
        parts: &Parts,
        body: Incoming,
        record: &mut Record,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let (body, now) = self
            .verified(app, parts, &query, body, RouteKind::Passthrough, record)
            .await?;
        let req = self.resign(app, parts, &query, body, now)?;
        let resp = self.forward(req, record).await?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            return Err(UpstreamError::RejectedCredentials {
                app_id: app.config.id.clone(),
            }
            .into());
        }
        Ok(resp)
    }

    /// Forwards a verified legacy call in its legacy form (mode `observe`,
    /// and the unchanged half of `shadow`). For an app the upstream knows
    /// by the same credentials the call goes byte for byte; for a mapped
    /// app it is re-signed with the upstream's id and credentials.
    async fn observe(
        &self,
        app: &App,
        parts: &Parts,
        query: &QueryParams,
        body: Bytes,
        now: u64,
        record: &mut Record,
    ) -> Result<Buffered, ProxyError> {
        let build = || {
            if app.config.is_mapped() {
                self.resign(app, parts, query, body, now)
            } else {
                self.outbound(parts, upstream::origin_form(&parts.uri), body)
            }
        };
        self.exchange(build, self.upstream.deadline(), record).await
    }

    /// A caller's verified request re-signed for the upstream: the app id in
    /// the path and the credentials are the upstream's, the timestamp
    /// `now`, the other parameters kept. A POST keeps its body (and gets its
    /// `body_md5`); other methods go without body or `body_md5`.
    fn resign(
        &self,
        app: &App,
        head: &Parts,
        query: &QueryParams,
        body: Bytes,
        now: u64,
    ) -> Result<OutboundRequest, ProxyError> {
        let up = &app.config.upstream;
        let path = upstream_path(head.uri.path(), &app.config.id, &up.id);
        let kept: Vec<(&str, &str)> = query
            .iter()
            .filter(|(k, _)| !signature::is_auth_param(k))
            .collect();
        let post = head.method == Method::POST;
        let body = if post { body } else { Bytes::new() };
        let signed = signature::signed_target(
            &up.key,
            &up.secret,
            head.method.as_str(),
            &path,
            now,
            post.then_some(&body[..]),
            &kept,
        );
        let target = upstream::target(signed).map_err(ProxyError::Internal)?;
        let mut req = self.outbound(head, target, body)?;
        if !post {
            req.headers_mut().remove(CONTENT_TYPE);
        }
        Ok(req)
    }

    /// A buffered request to `target` upstream with the caller's method and
    /// headers, minus hop-by-hop ones, `Content-Length` and `Expect` (hyper
    /// sets the length from the body; [`Upstream`] sets `Host`).
    fn outbound(
        &self,
        head: &Parts,
        target: hyper::Uri,
        body: Bytes,
    ) -> Result<OutboundRequest, ProxyError> {
        let mut req = Box::new(Request::new(Either::Left(Full::new(body))));
        *req.method_mut() = head.method.clone();
        *req.uri_mut() = target;
        let headers = req.headers_mut();
        *headers = head.headers.clone();
        passthrough::strip_hop_by_hop(headers);
        for name in [CONTENT_LENGTH, EXPECT] {
            headers.remove(name);
        }
        Ok(req)
    }

    /// Shadow mode: sends the translated stats call in the background and
    /// compares its mapped answer with what the legacy call answered.
    fn spawn_shadow_compare(
        self: &Arc<Self>,
        app: &App,
        channel: &str,
        now: u64,
        observed: &Buffered,
    ) {
        let Some(legacy) = (observed.status == StatusCode::OK)
            .then(|| serde_json::from_slice::<Stats>(&observed.body).ok())
            .flatten()
        else {
            tracing::debug!(app_id = %app.config.id, status = %observed.status, "shadow: legacy answer not comparable");
            return;
        };
        let state = self.clone();
        let app_id = app.config.id.clone();
        let channel = channel.to_owned();
        tokio::spawn(async move {
            let Some(app) = state.apps.get(&app_id) else {
                return;
            };
            let mut record = Record::default();
            let translated = match state.stats(app, &channel, now, &mut record).await {
                Ok((StatusCode::OK, _, body)) => serde_json::from_slice::<Stats>(&body).ok(),
                _ => None,
            };
            let differing = match &translated {
                Some(t) => legacy.differing_fields(t),
                None => vec!["answer"],
            };
            for field in &differing {
                state.telemetry.shadow_mismatch(&app_id, field);
            }
            if !differing.is_empty() {
                tracing::warn!(
                    app_id = %app_id,
                    channel = %channel,
                    fields = ?differing,
                    legacy = ?legacy,
                    translated = ?translated,
                    "shadow: translated stats differ from the legacy answer"
                );
            }
        });
    }

    /// Spec E.2: stats via channel info, with the `probe` fallback of E.5.
    /// Returns the legacy caller's status, headers and body.
    async fn stats(
        &self,
        app: &App,
        channel: &str,
        now: u64,
        record: &mut Record,
    ) -> Result<(StatusCode, HeaderMap, Bytes), ProxyError> {
        let path = channel_stats::upstream_path(&app.config.upstream.id, channel);
        let mut info = channel_stats::info_param(channel, app.counting_active(now));
        // One deadline for the call, the probe's retry included.
        let deadline = self.upstream.deadline();
        let probing = app.config.subscription_count == SubscriptionCounting::Probe;
        // A loop rather than a second call after the first, so that no
        // answer is held while the next is awaited.
        let answer = loop {
            let build = || self.signed_request(app, Method::GET, &path, None, info);
            let answer = self.exchange(build, deadline, record).await?;
            if probing
                && info == Some("subscription_count")
                && channel_stats::counting_disabled(answer.status, &answer.body)
            {
                tracing::info!(
                    app_id = %app.config.id,
                    "upstream has subscription counting disabled; answering stats without connection_count"
                );
                app.counting_off_until
                    .store(now + COUNTING_OFF_SECS, Ordering::Relaxed);
                info = None;
                continue;
            }
            break answer;
        };
        if answer.status == StatusCode::OK {
            let body = channel_stats::map_ok(channel, &answer.body)?;
            let headers = answer_headers(HeaderValue::from_static(APPLICATION_JSON));
            return Ok((StatusCode::OK, headers, body));
        }
        let r =
            translate::map_failure(&app.config.id, answer.status, &answer.headers, answer.body)?;
        Ok((r.status, r.headers, r.body))
    }

    /// Spec E.3: a legacy trigger becomes `POST /apps/{id}/events`.
    async fn trigger(
        &self,
        app: &App,
        channel: &str,
        query: &QueryParams,
        body: &[u8],
        record: &mut Record,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        // Translated in a block of its own, so that only the JSON body and
        // the path are held while the upstream answers.
        let (json, path) = {
            let trigger = Trigger::parse(query, body, app.config.max_data_bytes)?;
            if channel.starts_with("private-encrypted-") {
                // Old clients never encrypt; subscribers will fail to decrypt
                // (spec E.5 item 12). The proxy has no master key: forward, warn.
                tracing::warn!(
                    app_id = %app.config.id,
                    channel,
                    "legacy trigger to an end-to-end encrypted channel is sent unencrypted"
                );
            }
            (
                Bytes::from(trigger.upstream_body(channel)),
                &app.events_path,
            )
        };
        let build = || self.signed_request(app, Method::POST, path, Some(json), None);
        let answer = self
            .exchange(build, self.upstream.deadline(), record)
            .await?;
        if answer.status.is_success() {
            return Ok(respond(
                StatusCode::ACCEPTED,
                HeaderValue::from_static(TEXT_PLAIN),
                Bytes::from_static(channel_event::ACCEPTED_BODY),
            ));
        }
        let r =
            translate::map_failure(&app.config.id, answer.status, &answer.headers, answer.body)?;
        Ok(respond_with(r.status, r.headers, r.body))
    }

    /// A current-API request signed with the upstream's credentials for the
    /// app and a fresh timestamp. Not part of the exchange's future: what
    /// it builds the request from is not held while the upstream answers.
    fn signed_request(
        &self,
        app: &App,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        info: Option<&str>,
    ) -> Result<OutboundRequest, ProxyError> {
        let info_param;
        let extra: &[(&str, &str)] = match info {
            Some(v) => {
                info_param = [("info", v)];
                &info_param
            }
            None => &[],
        };
        let up = &app.config.upstream;
        let target = signature::signed_target(
            &up.key,
            &up.secret,
            method.as_str(),
            path,
            self.clock.unix_now(),
            body.as_deref(),
            extra,
        );
        let uri = upstream::target(target).map_err(ProxyError::Internal)?;
        // Room for what is added on the way out (`Host`, and hyper's
        // `Content-Length`), so the map is allocated once.
        let mut headers = HeaderMap::with_capacity(OUTBOUND_HEADERS);
        if body.is_some() {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(APPLICATION_JSON));
        }
        let mut req = Request::new(Either::Left(Full::new(body.unwrap_or_default())));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        Ok(Box::new(req))
    }

    /// Waits for an upstream slot, builds the request with `build` (so that
    /// a call waiting for a slot holds what the request is built from, not
    /// the request: its headers, target and body), sends it and reads the
    /// whole answer, all before `deadline`.
    ///
    /// It runs in the request's own task: the listener does not read ahead
    /// while a request is in flight (see [`crate::server`]), so a caller
    /// closing its connection does not cut the exchange short, and a
    /// trigger is delivered (or not) once.
    async fn exchange(
        &self,
        build: impl FnOnce() -> Result<OutboundRequest, ProxyError>,
        deadline: tokio::time::Instant,
        record: &mut Record,
    ) -> Result<Buffered, ProxyError> {
        let started = Instant::now();
        let answer = match self.upstream.slot(deadline).await {
            Ok(slot) => {
                let req = build()?;
                self.upstream.exchange(slot, req, deadline).await
            }
            Err(e) => Err(e),
        };
        record.add_upstream_time(started.elapsed());
        let answer = answer?;
        record.upstream_status = Some(answer.status.as_u16());
        Ok(answer)
    }

    async fn passthrough(
        &self,
        parts: Parts,
        body: Incoming,
        record: &mut Record,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let req = passthrough::upstream_request(parts, body, self.config.max_body_bytes)?;
        self.forward(req, record).await
    }

    /// Sends a passthrough request and streams the answer back.
    async fn forward(
        &self,
        req: OutboundRequest,
        record: &mut Record,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let started = Instant::now();
        let resp = self.upstream.send(req).await;
        record.add_upstream_time(started.elapsed());
        let resp = match resp {
            Err(e) if crate::upstream::is_body_limit(&e) => {
                return Err(TranslateError::BodyTooLarge {
                    limit: self.config.max_body_bytes,
                }
                .into());
            }
            other => other?,
        };
        record.upstream_status = Some(resp.status().as_u16());
        Ok(passthrough::downstream_response(resp))
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

/// `raw_path` with its `/apps/{from}` prefix turned into `/apps/{to}`.
fn upstream_path(raw_path: &str, from: &str, to: &str) -> String {
    let prefix = format!("/apps/{from}");
    match raw_path.strip_prefix(&prefix) {
        Some(rest) if from != to && (rest.is_empty() || rest.starts_with('/')) => {
            format!("/apps/{to}{rest}")
        }
        _ => raw_path.to_owned(),
    }
}

/// `Deprecation: @1346457600`: 2012-09-01, when Pusher deprecated both calls.
const DEPRECATED_AT: &str = "@1346457600";
const DEPRECATION: HeaderName = HeaderName::from_static("deprecation");
const SUNSET: HeaderName = HeaderName::from_static("sunset");

/// The `Sunset` value (an HTTP-date) for `at`.
fn sunset_header(at: time::OffsetDateTime) -> Option<HeaderValue> {
    let at = std::time::SystemTime::from(at);
    HeaderValue::try_from(httpdate::fmt_http_date(at)).ok()
}

/// Reads a request body, refusing more than `limit` bytes or a body that
/// takes longer than `timeout` to arrive.
async fn read_body(
    body: Incoming,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, TranslateError> {
    let read = tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await;
    let Ok(read) = read else {
        return Err(TranslateError::BodyTimeout);
    };
    match read {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(TranslateError::BodyTooLarge { limit })
        }
        Err(e) => Err(TranslateError::BodyRead(e)),
    }
}

fn respond(status: StatusCode, content_type: HeaderValue, body: Bytes) -> Response<ResponseBody> {
    respond_with(status, answer_headers(content_type), body)
}

/// The headers of an answer the proxy builds, with room for the
/// deprecation headers, so the map is allocated once.
fn answer_headers(content_type: HeaderValue) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(ANSWER_HEADERS);
    headers.insert(CONTENT_TYPE, content_type);
    headers
}

fn respond_with(status: StatusCode, headers: HeaderMap, body: Bytes) -> Response<ResponseBody> {
    let mut resp = Response::new(Either::Left(Full::new(body)));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

/// An upstream answer passed on as it is (minus hop-by-hop headers).
fn verbatim(answer: Buffered) -> Response<ResponseBody> {
    let mut headers = answer.headers;
    passthrough::strip_hop_by_hop(&mut headers);
    headers.remove(CONTENT_LENGTH);
    respond_with(answer.status, headers, answer.body)
}

/// The caller's answer for an error: its status and a one-line plain-text
/// body. No side effects; logging happens in the recorder.
fn error_response(e: &ProxyError) -> Response<ResponseBody> {
    respond(
        e.status(),
        HeaderValue::from_static(TEXT_PLAIN),
        Bytes::from(e.body()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_path_replaces_the_app_id_only() {
        assert_eq!(upstream_path("/apps/1/events", "1", "9"), "/apps/9/events");
        assert_eq!(upstream_path("/apps/1", "1", "9"), "/apps/9");
        assert_eq!(
            upstream_path("/apps/12/events", "1", "9"),
            "/apps/12/events"
        );
        assert_eq!(upstream_path("/apps/1/events", "1", "1"), "/apps/1/events");
        assert_eq!(upstream_path("/other/1", "1", "9"), "/other/1");
    }
}
