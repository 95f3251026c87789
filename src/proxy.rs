//! The request pipeline: classify, parse, verify, translate, sign, forward,
//! map back, record. Record runs for every request, whatever its outcome.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, LINK, USER_AGENT};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode};

use crate::ResponseBody;
use crate::clock::Clock;
use crate::config::{AppConfig, Config, SubscriptionCounting};
use crate::error::{ErrorChain, Fault, ProxyError};
use crate::passthrough;
use crate::query::QueryParams;
use crate::route::{Route, RouteKind, classify};
use crate::signature::{self, Expected};
use crate::telemetry::{Observation, Outcome, Telemetry, VerifiedCaller};
use crate::translate::channel_event::{self, Trigger};
use crate::translate::{self, TranslateError, channel_stats};
use crate::upstream::{Buffered, OutboundBody, Upstream};

/// How long a `probe` app stops asking for `subscription_count` after the
/// upstream said counting is disabled (spec E.5 item 1).
const COUNTING_OFF_SECS: u64 = 600;

/// Longest caller-supplied value (app id, `auth_key`, user agent) written
/// to a log line; longer ones are cut, so hostile input cannot bloat logs.
const MAX_LOGGED_LEN: usize = 128;

const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

/// An app's settings and the state the proxy keeps for it.
#[derive(Debug)]
struct App {
    config: AppConfig,
    /// The `Sunset` header of its legacy answers, when it has a sunset.
    sunset: Option<HeaderValue>,
    /// Unix time until which `probe` mode does not ask for
    /// `subscription_count`.
    counting_off_until: AtomicU64,
}

impl App {
    fn counting_active(&self, now: u64) -> bool {
        match self.config.subscription_count {
            SubscriptionCounting::On => true,
            SubscriptionCounting::Off => false,
            SubscriptionCounting::Probe => now >= self.counting_off_until.load(Ordering::Relaxed),
        }
    }
}

/// The proxy: configuration, upstream client and clock. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Proxy {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: Config,
    apps: HashMap<String, App>,
    upstream: Upstream,
    clock: Arc<dyn Clock>,
    telemetry: Arc<Telemetry>,
    /// The `Link: <…>; rel="deprecation"` header of legacy answers.
    deprecation_link: HeaderValue,
}

/// What is logged of each request; filled in as the pipeline goes.
#[derive(Debug, Default)]
struct Record {
    auth_key: Option<String>,
    upstream_status: Option<u16>,
    /// Time spent on upstream exchanges, if any.
    upstream_time: Option<Duration>,
    /// The request passed signature verification.
    verified: bool,
}

impl Record {
    fn add_upstream_time(&mut self, d: Duration) {
        *self.upstream_time.get_or_insert_default() += d;
    }
}

impl Proxy {
    /// A proxy for `config` reading time from `clock` and recording into
    /// `telemetry`.
    pub fn new(config: Config, clock: Arc<dyn Clock>, telemetry: Arc<Telemetry>) -> Self {
        let apps = config
            .apps
            .iter()
            .map(|a| {
                let app = App {
                    config: a.clone(),
                    sunset: a.sunset.and_then(sunset_header),
                    counting_off_until: AtomicU64::new(0),
                };
                (a.id.clone(), app)
            })
            .collect();
        let upstream = Upstream::new(&config.upstream);
        // Validated as an absolute URL without `<`, `>` or `"`.
        let deprecation_link =
            HeaderValue::try_from(format!("<{}>; rel=\"deprecation\"", config.telemetry.deprecation_link))
                .unwrap_or_else(|_| HeaderValue::from_static("<https://pusher.com/docs/channels/library_auth_reference/rest-api/>; rel=\"deprecation\""));
        Self {
            inner: Arc::new(Inner {
                config,
                apps,
                upstream,
                clock,
                telemetry,
                deprecation_link,
            }),
        }
    }

    /// The telemetry this proxy records into.
    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.inner.telemetry
    }

    /// Handles one request from `peer`. Never fails: errors become answers.
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<ResponseBody> {
        let started = Instant::now();
        let (parts, body) = req.into_parts();
        let route = classify(&parts.method, parts.uri.path());
        let kind = route.kind;
        let app_id = route.app_id.map(|a| truncate(a).to_owned());
        let method = parts.method.clone();
        let user_agent = parts
            .headers
            .get(USER_AGENT)
            .map(|v| truncate(&String::from_utf8_lossy(v.as_bytes())).to_owned());

        let mut record = Record::default();
        let result = if kind.is_legacy() {
            self.legacy(route, &parts, body, &mut record).await
        } else {
            match self.resign_target(&route, &parts) {
                Some(app) => self.resigned_get(app, parts, body, &mut record).await,
                None => self.passthrough(parts, body, &mut record).await,
            }
        };
        let (mut response, error) = match result {
            Ok(response) => (response, None),
            Err(e) => (error_response(&e), Some(e)),
        };
        if kind.is_legacy() {
            let app = app_id.as_deref().and_then(|id| self.inner.apps.get(id));
            self.deprecation_headers(response.headers_mut(), app);
        }
        let duration = started.elapsed();
        self.inner.telemetry.observe(&Observation {
            route: kind,
            app_id: app_id.as_deref(),
            outcome: outcome(response.status(), error.as_ref()),
            duration,
            upstream_duration: record.upstream_time,
            signature_failure: match &error {
                Some(ProxyError::Signature(e)) => Some(e.reason()),
                _ => None,
            },
            caller: record.verified.then(|| VerifiedCaller {
                auth_key: record.auth_key.as_deref().unwrap_or_default(),
                user_agent: user_agent.as_deref().unwrap_or_default(),
                client_address: peer.ip(),
            }),
            now: self.inner.clock.unix_now(),
        });

        let log = LogLine {
            method: &method,
            kind,
            app_id: app_id.as_deref(),
            status: response.status().as_u16(),
            record: &record,
            latency_ms: duration.as_secs_f64() * 1000.0,
            user_agent: user_agent.as_deref(),
            peer,
            error: error.as_ref(),
        };
        log.emit();
        response
    }

    async fn legacy(
        &self,
        route: Route<'_>,
        parts: &Parts,
        body: Incoming,
        record: &mut Record,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let app_id = route.app_id.unwrap_or_default();
        if app_id.is_empty() {
            return Err(TranslateError::EmptySegment("app id").into());
        }
        let app = self
            .inner
            .apps
            .get(app_id)
            .ok_or_else(|| ProxyError::UnknownApp(truncate(app_id).to_owned()))?;
        let (query, body, now) = self.verified(app, parts, body, record).await?;
        let channel = translate::decode_channel(route.channel.unwrap_or_default())?;

        match route.kind {
            RouteKind::LegacyStats => self.stats(app, &channel, now, record).await,
            _ => self.trigger(app, &channel, &query, &body, record).await,
        }
    }

    /// Parses the query, reads the body and verifies the request against
    /// `app` (spec A.6). Returns what was read and the time it was checked at.
    async fn verified(
        &self,
        app: &App,
        parts: &Parts,
        body: Incoming,
        record: &mut Record,
    ) -> Result<(QueryParams, Bytes, u64), ProxyError> {
        let inner = &*self.inner;
        let query =
            QueryParams::parse(parts.uri.query().unwrap_or("")).map_err(TranslateError::Query)?;
        record.auth_key = query.get("auth_key").map(|k| truncate(k).to_owned());
        let body = read_body(body, inner.config.max_body_bytes).await?;
        let now = inner.clock.unix_now();
        signature::verify(
            parts.method.as_str(),
            parts.uri.path(),
            &query,
            &body,
            &Expected {
                app_id: &app.config.id,
                key: &app.config.key,
                secrets: std::slice::from_ref(&app.config.secret),
                now,
                window_secs: inner.config.timestamp_window_secs,
            },
        )?;
        record.verified = true;
        Ok((query, body, now))
    }

    /// A passthrough GET for a configured app that carries `body_md5`: what
    /// PyPI `pusher` ≥ 1.0 sends on every GET, and what sockudo refuses
    /// (spec A.4). Such requests are verified and re-signed without it.
    fn resign_target(&self, route: &Route<'_>, parts: &Parts) -> Option<&App> {
        if parts.method != Method::GET {
            return None;
        }
        let query = parts.uri.query()?;
        if !query.contains("body_md5") {
            return None;
        }
        self.inner.apps.get(route.app_id?)
    }

    /// Verifies a passthrough GET, then forwards it with the same path and
    /// parameters, re-signed with a fresh timestamp and no `body_md5`.
    async fn resigned_get(
        &self,
        app: &App,
        mut parts: Parts,
        body: Incoming,
        record: &mut Record,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let (query, _, now) = self.verified(app, &parts, body, record).await?;
        let kept: Vec<(&str, &str)> = query
            .iter()
            .filter(|(k, _)| !signature::is_auth_param(k))
            .collect();
        let path = parts.uri.path();
        let signed = signature::signed_query(
            &app.config.key,
            &app.config.secret,
            Method::GET.as_str(),
            path,
            now,
            None,
            &kept,
        );
        parts.uri = self
            .inner
            .upstream
            .uri(&format!("{path}?{signed}"))
            .map_err(ProxyError::Internal)?;
        passthrough::prepare_headers(&mut parts);
        let req = Request::from_parts(parts, Either::Left(Full::new(Bytes::new())));
        self.forward(req, record).await
    }

    /// Spec E.2: stats via channel info, with the `probe` fallback of E.5.
    async fn stats(
        &self,
        app: &App,
        channel: &str,
        now: u64,
        record: &mut Record,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let path = channel_stats::upstream_path(&app.config.id, channel);
        let mut info = channel_stats::info_param(channel, app.counting_active(now));
        let mut answer = self
            .signed_exchange(app, Method::GET, &path, None, info, record)
            .await?;
        let probing = app.config.subscription_count == SubscriptionCounting::Probe;
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
            answer = self
                .signed_exchange(app, Method::GET, &path, None, info, record)
                .await?;
        }
        if answer.status == StatusCode::OK {
            let body = channel_stats::map_ok(channel, &answer.body)?;
            return Ok(respond(
                StatusCode::OK,
                HeaderValue::from_static("application/json"),
                body,
            ));
        }
        let (status, content_type, body) =
            translate::map_failure(&app.config.id, answer.status, &answer.headers, answer.body)?;
        Ok(respond(status, content_type, body))
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
        let json = Bytes::from(trigger.upstream_body(channel));
        let path = channel_event::upstream_path(&app.config.id);
        let answer = self
            .signed_exchange(app, Method::POST, &path, Some(json), None, record)
            .await?;
        if answer.status.is_success() {
            return Ok(respond(
                StatusCode::ACCEPTED,
                HeaderValue::from_static(TEXT_PLAIN),
                Bytes::from_static(channel_event::ACCEPTED_BODY),
            ));
        }
        let (status, content_type, body) =
            translate::map_failure(&app.config.id, answer.status, &answer.headers, answer.body)?;
        Ok(respond(status, content_type, body))
    }

    /// Signs a current-API request with the app's credentials and a fresh
    /// timestamp, sends it and reads the answer.
    async fn signed_exchange(
        &self,
        app: &App,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        info: Option<&str>,
        record: &mut Record,
    ) -> Result<Buffered, ProxyError> {
        let inner = &*self.inner;
        let info_param;
        let extra: &[(&str, &str)] = match info {
            Some(v) => {
                info_param = [("info", v)];
                &info_param
            }
            None => &[],
        };
        let query = signature::signed_query(
            &app.config.key,
            &app.config.secret,
            method.as_str(),
            path,
            inner.clock.unix_now(),
            body.as_deref(),
            extra,
        );
        let uri = inner
            .upstream
            .uri(&format!("{path}?{query}"))
            .map_err(ProxyError::Internal)?;
        let mut builder = Request::builder().method(method).uri(uri);
        if body.is_some() {
            builder = builder.header(CONTENT_TYPE, "application/json");
        }
        let req = builder
            .body(Either::Left(Full::new(body.unwrap_or_default())))
            .map_err(ProxyError::Internal)?;
        let started = Instant::now();
        let answer = inner.upstream.exchange(req).await;
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
        let req = passthrough::upstream_request(&self.inner.upstream, parts, body)?;
        self.forward(req, record).await
    }

    /// Sends a passthrough request and streams the answer back.
    async fn forward(
        &self,
        req: Request<OutboundBody>,
        record: &mut Record,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let started = Instant::now();
        let resp = self.inner.upstream.send(req).await;
        record.add_upstream_time(started.elapsed());
        let resp = resp?;
        record.upstream_status = Some(resp.status().as_u16());
        Ok(passthrough::downstream_response(resp))
    }
}

impl Proxy {
    /// Marks a legacy answer as deprecated: `Deprecation` (RFC 9745, the
    /// date Pusher deprecated these calls), `Link` to the current API, and
    /// `Sunset` (RFC 8594) when the app has one.
    fn deprecation_headers(&self, headers: &mut HeaderMap, app: Option<&App>) {
        headers.insert(DEPRECATION, HeaderValue::from_static(DEPRECATED_AT));
        headers.append(LINK, self.inner.deprecation_link.clone());
        if let Some(sunset) = app.and_then(|a| a.sunset.clone()) {
            headers.insert(SUNSET, sunset);
        }
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

/// The metrics outcome of an answer.
fn outcome(status: StatusCode, error: Option<&ProxyError>) -> Outcome {
    match error.map(ProxyError::fault) {
        Some(Fault::Client) if status == StatusCode::UNAUTHORIZED => Outcome::AuthFailed,
        Some(Fault::Client) => Outcome::ClientError,
        Some(Fault::Upstream | Fault::Internal) => Outcome::UpstreamError,
        None => Outcome::of_status(status.as_u16()),
    }
}

/// Reads a legacy request body, refusing more than `limit` bytes.
async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, TranslateError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(TranslateError::BodyTooLarge { limit })
        }
        Err(e) => Err(TranslateError::BodyRead(e)),
    }
}

fn respond(status: StatusCode, content_type: HeaderValue, body: Bytes) -> Response<ResponseBody> {
    let mut resp = Response::new(Either::Left(Full::new(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, content_type);
    resp
}

/// The caller's answer for an error: its status and a one-line plain-text
/// body. No side effects; logging happens in [`Proxy::handle`].
fn error_response(e: &ProxyError) -> Response<ResponseBody> {
    respond(
        e.status(),
        HeaderValue::from_static(TEXT_PLAIN),
        Bytes::from(e.body()),
    )
}

/// Cuts `s` to at most [`MAX_LOGGED_LEN`] bytes on a character boundary.
fn truncate(s: &str) -> &str {
    if s.len() <= MAX_LOGGED_LEN {
        return s;
    }
    let mut end = MAX_LOGGED_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// One log line per request.
struct LogLine<'a> {
    method: &'a Method,
    kind: RouteKind,
    app_id: Option<&'a str>,
    status: u16,
    record: &'a Record,
    latency_ms: f64,
    user_agent: Option<&'a str>,
    peer: SocketAddr,
    error: Option<&'a ProxyError>,
}

impl LogLine<'_> {
    /// Legacy calls log at WARN with the caller's identity (app, key, user
    /// agent, address), so usage can be tracked from logs alone; upstream
    /// and internal failures at ERROR; other requests at INFO. Neither
    /// secrets nor `auth_signature` are fields of the line, and error
    /// messages never contain them.
    fn emit(&self) {
        let error = self.error.map(|e| ErrorChain(e));
        let fault = self.error.map(|e| e.fault());
        macro_rules! line {
            ($level:expr) => {
                tracing::event!(
                    $level,
                    method = %self.method,
                    route = self.kind.template(),
                    app_id = self.app_id,
                    status = self.status,
                    upstream_status = self.record.upstream_status,
                    latency_ms = format_args!("{:.3}", self.latency_ms),
                    auth_key = self.record.auth_key.as_deref(),
                    user_agent = self.user_agent,
                    client_addr = %self.peer.ip(),
                    error = error.as_ref().map(tracing::field::display),
                    "{}",
                    if self.kind.is_legacy() { "legacy call" } else { "request" }
                )
            };
        }
        match (fault, self.kind.is_legacy()) {
            (Some(Fault::Upstream | Fault::Internal), _) => line!(tracing::Level::ERROR),
            (_, true) => line!(tracing::Level::WARN),
            (_, false) => line!(tracing::Level::INFO),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_respects_char_boundaries() {
        let s = "é".repeat(100);
        let t = truncate(&s);
        assert!(t.len() <= MAX_LOGGED_LEN && t.len() >= MAX_LOGGED_LEN - 1);
        assert_eq!(truncate("short"), "short");
    }
}
