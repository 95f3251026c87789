//! Passthrough: every request that is not a deprecated call is forwarded
//! unchanged (method, path, query, headers minus hop-by-hop ones, body;
//! the caller's body is read whole, within `max_body_bytes` and
//! `body_timeout_ms`, before an upstream slot is taken, and the answer's
//! is streamed back). Host and scheme are not signed, so a valid
//! current-API request stays valid (spec E.1). The exception: a configured
//! app's calls that must be re-signed to be accepted (`resign_target`)
//! are verified, then re-signed.

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Body as _;
use hyper::body::Incoming;
use std::time::{Duration, Instant};

use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, EXPECT, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode};

use crate::error::ProxyError;
use crate::http::headers::strip_hop_by_hop;
use crate::http::{BodyError, ResponseBody, Streamed, read_body};
use crate::pipeline::{App, Call, Record, State};
use crate::pusher::query::QueryParams;
use crate::pusher::route::RouteKind;
use crate::pusher::signature::{self, Unsigned};
use crate::upstream::{self, Guarded, OutboundRequest};

/// The methods passed through (every one but `CONNECT` and `TRACE`), as
/// a 405's `Allow` header lists them.
pub const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS";

/// The upstream request for a passthrough: same method, path, query and
/// body; the caller's `Host` is replaced by the upstream's (set by
/// [`crate::upstream::Upstream`] on every request), so TLS and virtual hosting see the right
/// name.
///
/// `CONNECT` and `TRACE` are refused (405), as are targets that are not a
/// path (`OPTIONS *`, authority form): a Pusher API has no use for them.
///
/// The body is read whole first, within `max_body` bytes (413 beyond; up
/// front when `Content-Length` says so) and `timeout` (408, the caller's
/// fault), and only then is an upstream slot taken (`forward`).
///
/// Why read first rather than give each route class its own share of
/// `upstream.max_connections`: a share only moves the starvation inside
/// the class (64 clients sending a body at 1 byte/s would still hold every
/// passthrough slot until `upstream.timeout_ms`, and each of their 504s
/// would blame the upstream), and its size would be one more setting to
/// get right. Read first, a slot is held only while the upstream itself
/// works, whatever the callers' pace; a slow body is cut by
/// `body_timeout_ms` as on the legacy routes and counted as the client's
/// error; and the buffered body can be sent again (retries over a fresh
/// connection). The cost is memory: at most `max_body_bytes` per request
/// in flight, for an API whose bodies are a few KiB (an event's data is
/// capped at 10 KiB by Pusher, a batch at ten of them).
pub async fn upstream_request(
    mut parts: Parts,
    body: Incoming,
    max_body: usize,
    timeout: Duration,
) -> Result<OutboundRequest, ProxyError> {
    if parts.method == Method::CONNECT || parts.method == Method::TRACE {
        return Err(ProxyError::MethodNotAllowed(parts.method));
    }
    if !parts.uri.path().starts_with('/') || parts.uri.path_and_query().is_none() {
        return Err(ProxyError::NotAPath);
    }
    if body
        .size_hint()
        .exact()
        .is_some_and(|n| n > max_body as u64)
    {
        return Err(BodyError::TooLarge { limit: max_body }.into());
    }
    let body = read_body(body, max_body, timeout).await?;
    // The upstream gets the path and query in origin form (already parsed
    // and validated, so not parsed again).
    parts.uri = upstream::origin_form(&parts.uri);
    prepare_headers(&mut parts);
    // The body is here already: nothing to wait for a `100 Continue` for.
    parts.headers.remove(EXPECT);
    // Its length goes as the body's, plainly written: the caller's header
    // may be spelt in ways hyper takes and stricter upstreams do not
    // (`005`), and hyper writes none for an empty body, which some front
    // ends refuse on a method that carries one (411). One lookup, no
    // formatting: hyper already checked the header against the body, so
    // only a spelling with a leading zero (`005`, or `0` for a body) can
    // differ; the header is rewritten only then, or set for an empty body.
    let sent = parts.headers.get(CONTENT_LENGTH).map(HeaderValue::as_bytes);
    let plain = match sent {
        Some(v) => v.first() != Some(&b'0') || v == b"0" && body.is_empty(),
        None => {
            !(body.is_empty() && matches!(parts.method, Method::POST | Method::PUT | Method::PATCH))
        }
    };
    if !plain {
        parts
            .headers
            .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    Ok(Box::new(Request::from_parts(parts, Full::new(body))))
}

/// A passthrough request the proxy verifies and re-signs rather than
/// forwarding it unchanged, when it is signed with a configured app's key
/// and either:
/// - the upstream knows the app by other credentials (`[apps.upstream]`),
///   so the caller's signature would not verify there, or the app is in a
///   rotation (`previous_secrets`), so a caller may have signed with a
///   secret the upstream no longer knows
///   ([`crate::config::AppConfig::resigns`]); or
/// - it is a GET carrying `body_md5`, which PyPI `pusher` ≥ 1.0 sends and
///   sockudo refuses (spec A.4).
///
/// Anything else (another key, a query that does not decode) passes
/// through untouched for the upstream to judge, and so do `CONNECT` and
/// `TRACE`, which [`upstream_request`] answers 405 whoever signed them.
/// `app` is the configured app the path names, if any.
pub(crate) fn resign_target<'s>(
    app: Option<&'s App>,
    parts: &Parts,
) -> Option<(&'s App, QueryParams)> {
    let app = app?;
    let raw = parts.uri.query()?;
    if parts.method == Method::CONNECT || parts.method == Method::TRACE {
        return None;
    }
    let resigns = app.config.resigns();
    if !resigns {
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
        && (resigns || query.get("body_md5").is_some());
    ours.then_some((app, query))
}

/// Verifies a passthrough request, then forwards it re-signed for the
/// upstream (see [`resign`]) over `canonical`, its path with repeated
/// slashes collapsed (it is verified over the path as received). A query
/// that would verify ambiguously is refused (400), as on the legacy
/// routes: the proxy would vouch for it with its own signature. An
/// upstream 401 refuses the proxy's signature, not the caller's: it
/// becomes the 500 of spec E.4.
pub(crate) async fn resigned(
    call: &mut Call<'_>,
    query: QueryParams,
    parts: &Parts,
    canonical: &str,
    body: Incoming,
) -> Result<Response<ResponseBody>, ProxyError> {
    crate::routes::unambiguous(&query)?;
    let (body, now) = call
        .verified(parts, &query, body, RouteKind::Passthrough)
        .await?;
    let req = resign(call, parts, canonical, &query, body, now)?;
    let resp = forward(call.state, req, call.record).await?;
    if resp.status() == StatusCode::UNAUTHORIZED {
        return Err(ProxyError::RejectedCredentials {
            app_id: call.app.config.id.clone(),
        });
    }
    Ok(resp)
}

/// Forwards a request that is not the proxy's to verify, as it is.
pub(crate) async fn forward_unchanged(
    state: &State,
    parts: Parts,
    body: Incoming,
    record: &mut Record,
) -> Result<Response<ResponseBody>, ProxyError> {
    let config = &state.config;
    let req = upstream_request(parts, body, config.max_body_bytes, config.body_timeout).await?;
    forward(state, req, record).await
}

/// Sends a passthrough request and streams the answer back.
async fn forward(
    state: &State,
    req: OutboundRequest,
    record: &mut Record,
) -> Result<Response<ResponseBody>, ProxyError> {
    let started = Instant::now();
    let counted = crate::telemetry::metrics::UpstreamRoute::Passthrough;
    let count = || state.telemetry.metrics().upstream.request(counted);
    let resp = state.upstream.send(req, count).await;
    record.add_upstream_time(started.elapsed());
    let resp = resp?;
    record.upstream_status = Some(resp.status().as_u16());
    Ok(downstream_response(resp))
}

/// A caller's verified request to `path` re-signed for the upstream: the
/// app id in the path and the credentials are the upstream's, the
/// timestamp `now`, the other parameters kept. A POST keeps its body (and
/// gets its `body_md5`); other methods go without body or `body_md5`.
pub(crate) fn resign(
    call: &Call<'_>,
    head: &Parts,
    path: &str,
    query: &QueryParams,
    body: Bytes,
    now: u64,
) -> Result<OutboundRequest, ProxyError> {
    let app = call.app;
    let up = &app.config.upstream;
    let path = upstream_path(path, &app.config.id, &up.id);
    let kept: Vec<(&str, &str)> = query
        .iter()
        .filter(|(k, _)| !signature::is_auth_param(k))
        .collect();
    let post = head.method == Method::POST;
    let body = if post { body } else { Bytes::new() };
    let signed = app.upstream_signer().target(&Unsigned {
        method: head.method.as_str(),
        path: &path,
        timestamp: now,
        body: post.then_some(&body[..]),
        params: &kept,
    });
    let target = upstream::target(signed).map_err(ProxyError::Internal)?;
    let mut req = outbound(head, target, body);
    if !post {
        req.headers_mut().remove(CONTENT_TYPE);
    }
    Ok(req)
}

/// A buffered request to `target` upstream with the caller's method and
/// headers, minus hop-by-hop ones, `Content-Length` and `Expect` (hyper
/// sets the length from the body; [`crate::upstream::Upstream`] sets
/// `Host`). An empty body on a method that carries one is said to be
/// `Content-Length: 0`, which hyper would not write and some front ends
/// require (411), as [`upstream_request`] does.
pub(crate) fn outbound(head: &Parts, target: hyper::Uri, body: Bytes) -> OutboundRequest {
    let empty = body.is_empty();
    let mut req = Box::new(Request::new(Full::new(body)));
    *req.method_mut() = head.method.clone();
    *req.uri_mut() = target;
    let headers = req.headers_mut();
    *headers = head.headers.clone();
    strip_hop_by_hop(headers);
    headers.remove(EXPECT);
    if empty && matches!(head.method, Method::POST | Method::PUT | Method::PATCH) {
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    } else {
        headers.remove(CONTENT_LENGTH);
    }
    req
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

/// Readies the caller's request head for the upstream: hop-by-hop headers
/// removed, HTTP/1.1 (`Host` is overwritten by [`Upstream`]).
fn prepare_headers(parts: &mut Parts) {
    strip_hop_by_hop(&mut parts.headers);
    parts.version = hyper::Version::HTTP_11;
}

/// The caller's response: the upstream's status, headers minus hop-by-hop
/// ones, and its body streamed.
pub fn downstream_response(resp: Response<Guarded>) -> Response<ResponseBody> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, Either::Right(Streamed::new(body)))
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
