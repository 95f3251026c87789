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
use crate::config::{AppConfig, Config, SubscriptionCounting};
use crate::error::ProxyError;
use crate::passthrough;
use crate::query::QueryParams;
use crate::route::{Route, RouteKind, classify};
use crate::signature::{self, Expected};
use crate::telemetry::Telemetry;
use crate::translate::channel_event::{self, Trigger};
use crate::translate::{self, TranslateError, channel_stats};
use crate::upstream::{Buffered, OutboundBody, Upstream, UpstreamError};

/// How long a `probe` app stops asking for `subscription_count` after the
/// upstream said counting is disabled (spec E.5 item 1).
const COUNTING_OFF_SECS: u64 = 600;

const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

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
        let inner = &*self.inner;
        let (parts, body) = req.into_parts();
        let route = classify(&parts.method, parts.uri.path());
        let kind = route.kind;
        let mut recorder = Recorder::new(
            &inner.telemetry,
            inner.clock.unix_now(),
            &parts.method,
            kind,
            route.app_id,
            parts.headers.get(USER_AGENT).map(HeaderValue::as_bytes),
            peer,
        );
        let record = &mut recorder.record;
        let result = if kind.is_legacy() {
            self.legacy(route, &parts, body, record).await
        } else if let Some((app, query)) = self.resign_target(&route, &parts) {
            self.resigned_get(app, query, parts, body, record).await
        } else {
            self.passthrough(parts, body, record).await
        };
        let (mut response, error) = match result {
            Ok(response) => (response, None),
            Err(e) => (error_response(&e), Some(e)),
        };
        if kind.is_legacy() {
            let app = recorder.app_id().and_then(|id| inner.apps.get(id));
            self.deprecation_headers(response.headers_mut(), app);
        }
        recorder.finish(response.status(), error.as_ref());
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
        let query =
            QueryParams::parse(parts.uri.query().unwrap_or("")).map_err(TranslateError::Query)?;
        let (body, now) = self
            .verified(app, parts, &query, body, route.kind, record)
            .await?;
        let channel = translate::decode_channel(route.channel.unwrap_or_default())?;

        match route.kind {
            RouteKind::LegacyStats => self.stats(app, &channel, now, record).await,
            _ => self.trigger(app, &channel, &query, &body, record).await,
        }
    }

    /// Reads the body and verifies the request against `app` (spec A.6).
    /// Returns the body and the time it was checked at.
    ///
    /// Only a trigger carries a body worth reading, and only up to the
    /// app's `max_data_bytes`; other requests get a small allowance. The
    /// whole body must arrive within `body_timeout_ms`.
    async fn verified(
        &self,
        app: &App,
        parts: &Parts,
        query: &QueryParams,
        body: Incoming,
        kind: RouteKind,
        record: &mut Record,
    ) -> Result<(Bytes, u64), ProxyError> {
        let inner = &*self.inner;
        record.auth_key = query.get("auth_key").map(|k| truncate(k).to_owned());
        let max_body = inner.config.max_body_bytes;
        let max_data = app.config.max_data_bytes;
        let (limit, data_limit) = match kind {
            RouteKind::LegacyTrigger if max_data < max_body => (max_data, true),
            RouteKind::LegacyTrigger => (max_body, false),
            _ => (MAX_BODYLESS_READ.min(max_body), false),
        };
        let body = match read_body(body, limit, inner.config.body_timeout).await {
            Err(TranslateError::BodyTooLarge { .. }) if data_limit => {
                return Err(TranslateError::DataTooLarge { limit }.into());
            }
            other => other?,
        };
        let now = inner.clock.unix_now();
        signature::verify(
            parts.method.as_str(),
            parts.uri.path(),
            query,
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
        Ok((body, now))
    }

    /// A passthrough GET signed for a configured app's key that carries
    /// `body_md5`: what PyPI `pusher` ≥ 1.0 sends on every GET, and what
    /// sockudo refuses (spec A.4). Such requests are verified and re-signed
    /// without it; anything else (another key, a query that does not
    /// decode) passes through untouched for the upstream to judge.
    fn resign_target(&self, route: &Route<'_>, parts: &Parts) -> Option<(&App, QueryParams)> {
        if parts.method != Method::GET {
            return None;
        }
        let raw = parts.uri.query()?;
        let may_carry = raw.contains('%')
            || raw
                .as_bytes()
                .windows(3)
                .any(|w| w.eq_ignore_ascii_case(b"md5"));
        if !may_carry {
            return None;
        }
        let app = self.inner.apps.get(route.app_id?)?;
        let query = QueryParams::parse(raw).ok()?;
        let ours =
            query.get("body_md5").is_some() && query.get("auth_key") == Some(&app.config.key);
        ours.then_some((app, query))
    }

    /// Verifies a passthrough GET, then forwards it with the same path and
    /// parameters, re-signed with a fresh timestamp, no `body_md5` and no
    /// body. An upstream 401 then refuses the proxy's signature, not the
    /// caller's: it becomes the 500 of spec E.4.
    async fn resigned_get(
        &self,
        app: &App,
        query: QueryParams,
        mut parts: Parts,
        body: Incoming,
        record: &mut Record,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let (_, now) = self
            .verified(app, &parts, &query, body, RouteKind::Passthrough, record)
            .await?;
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
        for name in [CONTENT_LENGTH, CONTENT_TYPE, EXPECT] {
            parts.headers.remove(name);
        }
        let req = Request::from_parts(parts, Either::Left(Full::new(Bytes::new())));
        let resp = self.forward(req, record).await?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            return Err(UpstreamError::RejectedCredentials {
                app_id: app.config.id.clone(),
            }
            .into());
        }
        Ok(resp)
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
        // One deadline for the call, the probe's retry included.
        let deadline = self.inner.upstream.deadline();
        let mut answer = self
            .signed_exchange(app, Method::GET, &path, None, info, deadline, record)
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
                .signed_exchange(app, Method::GET, &path, None, info, deadline, record)
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
        let refusal =
            translate::map_failure(&app.config.id, answer.status, &answer.headers, answer.body)?;
        Ok(refused(refusal))
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
            .signed_exchange(
                app,
                Method::POST,
                &path,
                Some(json),
                None,
                self.inner.upstream.deadline(),
                record,
            )
            .await?;
        if answer.status.is_success() {
            return Ok(respond(
                StatusCode::ACCEPTED,
                HeaderValue::from_static(TEXT_PLAIN),
                Bytes::from_static(channel_event::ACCEPTED_BODY),
            ));
        }
        let refusal =
            translate::map_failure(&app.config.id, answer.status, &answer.headers, answer.body)?;
        Ok(refused(refusal))
    }

    /// Signs a current-API request with the app's credentials and a fresh
    /// timestamp, sends it and reads the answer.
    ///
    /// The exchange runs in its own task, so it completes (and a trigger is
    /// delivered or not, once) even if the caller disconnects meanwhile.
    #[allow(clippy::too_many_arguments)]
    async fn signed_exchange(
        &self,
        app: &App,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        info: Option<&str>,
        deadline: tokio::time::Instant,
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
        let upstream = inner.upstream.clone();
        let exchange = tokio::spawn(async move {
            let started = Instant::now();
            let answer = upstream.exchange(req, deadline).await;
            (answer, started.elapsed())
        });
        let (answer, elapsed) = exchange.await.map_err(|_| UpstreamError::Aborted)?;
        record.add_upstream_time(elapsed);
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
    let mut resp = Response::new(Either::Left(Full::new(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, content_type);
    resp
}

/// A legacy caller's answer carrying an upstream refusal.
fn refused(r: translate::Refusal) -> Response<ResponseBody> {
    let mut resp = Response::new(Either::Left(Full::new(r.body)));
    *resp.status_mut() = r.status;
    *resp.headers_mut() = r.headers;
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
