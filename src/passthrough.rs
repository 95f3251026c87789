//! Passthrough: every request that is not a deprecated call is forwarded
//! unchanged (method, path, query, headers minus hop-by-hop ones, body
//! streamed both ways). Host and scheme are not signed, so a valid
//! current-API request stays valid (spec E.1).

use bytes::Bytes;
use http_body_util::{Either, Full, Limited};
use hyper::body::Body as _;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response};

use crate::ResponseBody;
use crate::error::ProxyError;
use crate::translate::TranslateError;
use crate::upstream::{self, Guarded, OutboundBody};

/// Headers that describe one connection, not the message (RFC 9110
/// section 7.6.1), and so are never forwarded.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names (comparisons, no
    // hashing) instead of a removal per hop-by-hop name.
    let any = headers
        .keys()
        .any(|name| name == header::UPGRADE || HOP_BY_HOP.contains(name));
    if !any {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

/// The upstream request for a passthrough: same method, path, query and
/// body; the caller's `Host` is replaced by the upstream's (set by
/// [`Upstream`] on every request), so TLS and virtual hosting see the right
/// name.
///
/// `CONNECT` and `TRACE` are refused (405), as are targets that are not a
/// path (`OPTIONS *`, authority form): a Pusher API has no use for them.
///
/// A body declared larger than `max_body` is refused (413); one that turns
/// out larger while streaming is cut.
pub fn upstream_request(
    mut parts: Parts,
    body: Incoming,
    max_body: usize,
) -> Result<Request<OutboundBody>, ProxyError> {
    if parts.method == Method::CONNECT || parts.method == Method::TRACE {
        return Err(ProxyError::MethodNotAllowed(parts.method));
    }
    if !parts.uri.path().starts_with('/') || parts.uri.path_and_query().is_none() {
        return Err(ProxyError::NotAPath);
    }
    let declared = body.size_hint().exact();
    if declared.is_some_and(|n| n > max_body as u64) {
        return Err(TranslateError::BodyTooLarge { limit: max_body }.into());
    }
    // The upstream gets the path and query in origin form (already parsed
    // and validated, so not parsed again).
    parts.uri = upstream::origin_form(&parts.uri);
    prepare_headers(&mut parts);
    // A known-empty GET or HEAD gets an empty body the upstream client can
    // send again after a stale pooled connection.
    let bodyless =
        declared == Some(0) && (parts.method == Method::GET || parts.method == Method::HEAD);
    let body = if bodyless {
        Either::Left(Full::new(Bytes::new()))
    } else {
        Either::Right(Limited::new(body, max_body))
    };
    Ok(Request::from_parts(parts, body))
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
    Response::from_parts(parts, Either::Right(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, X-Private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(
            header::USER_AGENT,
            HeaderValue::from_static("pusher-http-python"),
        );
        strip_hop_by_hop(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, vec!["content-type", "user-agent"]);
    }
}
