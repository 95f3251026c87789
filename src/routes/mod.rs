//! The routes a request can take, one file each: the two deprecated calls
//! ([`channel_stats`], [`channel_event`]), each from parsing through
//! translation and the upstream exchange to the answer mapped back (spec
//! E), and everything else ([`passthrough`]).
//!
//! Here: what both legacy routes share — their errors, the channel segment,
//! forwarding a verified call in its legacy form (`observe`), and the
//! mapping of upstream refusals.

pub mod channel_event;
pub mod channel_stats;
pub mod coalesce;
pub mod passthrough;
pub(crate) mod single_flight;

use bytes::Bytes;
use hyper::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::http::request::Parts;
use hyper::{HeaderMap, StatusCode};

use crate::error::ProxyError;
use crate::pipeline::{Call, truncate};
use crate::pusher::channel;
use crate::pusher::query::QueryParams;
use crate::pusher::query::{DecodeError, percent_decode_strict};
use crate::upstream::{self, Buffered, UpstreamError};

/// Why a legacy request cannot be translated: the caller's fault.
#[derive(Debug, thiserror::Error)]
pub enum TranslateError {
    /// The query string cannot be decoded.
    #[error("malformed query string")]
    Query(#[source] DecodeError),
    /// A path segment is empty.
    #[error("malformed path: the {0} segment is empty")]
    EmptySegment(&'static str),
    /// A query key decodes to `&` or `=`, or a value to `&`, which makes
    /// the string to sign ambiguous.
    #[error(
        "query parameter `{0}` decodes to a key containing `&` or `=`, or a value containing `&`: the signed string would be ambiguous, so the proxy does not verify it"
    )]
    AmbiguousQuery(String),
    /// The channel segment cannot be decoded.
    #[error("malformed path")]
    Channel(#[source] DecodeError),
    /// The decoded channel name is not a valid Pusher channel name.
    #[error(
        "invalid channel name: use 1-200 characters of A-Z a-z 0-9 _ - = @ , . ; (not `.` or `..`)"
    )]
    InvalidChannelName,
    /// The channel name is longer than Pusher accepts and the upstream is
    /// Pusher (spec C.1): refused before anything is forwarded.
    #[error(
        "invalid channel name: Pusher accepts at most {limit} characters in a channel name (this one has {len})"
    )]
    ChannelTooLongForUpstream {
        /// The upstream's limit.
        limit: usize,
        /// The name's length.
        len: usize,
    },
    /// `name` is absent or empty on a legacy trigger.
    #[error("missing event name: the `name` query parameter is required")]
    MissingEventName,
    /// The event data is not UTF-8 (the old API's 400, spec D.2).
    #[error("event data must be valid UTF-8")]
    DataNotUtf8,
    /// The event data exceeds the app's `max_data_bytes` (spec B.1's 413).
    #[error("The data content of this event exceeds the allowed maximum ({limit} bytes).")]
    DataTooLarge {
        /// The limit.
        limit: usize,
    },
}

impl TranslateError {
    /// The status the caller gets.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::DataTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Query(_)
            | Self::EmptySegment(_)
            | Self::Channel(_)
            | Self::InvalidChannelName
            | Self::ChannelTooLongForUpstream { .. }
            | Self::MissingEventName
            | Self::DataNotUtf8
            | Self::AmbiguousQuery(_) => StatusCode::BAD_REQUEST,
        }
    }
}

/// Decodes and validates the raw channel segment of a legacy path.
///
/// Called after verification, which signs the raw segment (PyPI `pusher`
/// 0.8 percent-encodes it: spec A.3). The decoded name is what goes into the
/// upstream request, so it is held to the channel alphabet of spec C.1:
/// every character of it is legal in a path, and `.`/`..` are refused so no
/// upstream can read them as path traversal.
pub fn decode_channel(raw: &str) -> Result<String, TranslateError> {
    if raw.is_empty() {
        return Err(TranslateError::EmptySegment("channel"));
    }
    let decoded =
        percent_decode_strict(raw, "the channel segment").map_err(TranslateError::Channel)?;
    if !channel::is_valid_name(&decoded) {
        return Err(TranslateError::InvalidChannelName);
    }
    Ok(decoded.into_owned())
}

/// Refuses a decoded `channel` longer than the upstream at `host` accepts
/// ([`channel::max_len_for`]: 164 for Pusher). Checked by the translating
/// routes before they forward anything; `decode_channel` already holds every
/// name to the clones' 200.
pub fn check_upstream_len(channel: &str, host: Option<&str>) -> Result<(), TranslateError> {
    let limit = channel::max_len_for(host);
    if channel.len() > limit {
        return Err(TranslateError::ChannelTooLongForUpstream {
            limit,
            len: channel.len(),
        });
    }
    Ok(())
}

/// Refuses a query the proxy would verify ambiguously. The string to sign
/// joins decoded pairs with `&` and `=`: a pair that decodes to an `&`
/// could be split another way under the same signature
/// (`name=ev%26socket_id%3D1` signs as `name=ev&socket_id=1`), and the
/// proxy would then translate, or re-sign with its own credentials, a
/// request the caller never signed. So are keys with an `=`. A value's `=`
/// is not ambiguous (each pair splits at its first `=`, and no key has
/// one): `name=score%3D1`, or `filter_by_prefix=private-a%3D` (`=` is a
/// channel name's character), pass.
pub(crate) fn unambiguous(query: &QueryParams) -> Result<(), TranslateError> {
    match query
        .iter()
        .find(|(k, v)| k.contains(['&', '=']) || v.contains('&'))
    {
        Some((key, _)) => Err(TranslateError::AmbiguousQuery(truncate(key).to_owned())),
        None => Ok(()),
    }
}

/// Forwards a verified legacy call in its legacy form (mode `observe`, and
/// the unchanged half of `shadow`). For an app the upstream knows by the
/// same credentials the call goes byte for byte, and the upstream's answer
/// is the caller's; for a mapped app, an app in a rotation (its caller may
/// have signed with a previous secret, see [`crate::config::AppConfig::resigns`]),
/// or a path that was not canonical (`//apps/…`, verified as received),
/// it is re-signed with the upstream's id and credentials over the
/// `canonical` path, and an upstream 401 then refuses the proxy's
/// signature, not the caller's: it becomes the 500 of spec E.4.
pub(crate) async fn observe(
    call: &mut Call<'_>,
    parts: &Parts,
    canonical: &str,
    query: &QueryParams,
    body: Bytes,
    now: u64,
) -> Result<Buffered, ProxyError> {
    let resigned = call.app.config.resigns() || parts.uri.path() != canonical;
    let build = |call: &Call<'_>| {
        // Counted once it holds a slot (see `Call::exchange`).
        call.state
            .telemetry
            .metrics()
            .upstream
            .request(crate::telemetry::metrics::UpstreamRoute::Legacy);
        if resigned {
            passthrough::resign(call, parts, canonical, query, body, now)
        } else {
            Ok(passthrough::outbound(
                parts,
                upstream::origin_form(&parts.uri),
                body,
            ))
        }
    };
    let deadline = call.state.upstream.deadline();
    let answer = call.exchange(build, deadline).await?;
    if resigned && answer.status == StatusCode::UNAUTHORIZED {
        return Err(ProxyError::RejectedCredentials {
            app_id: call.app.config.id.clone(),
        });
    }
    Ok(answer)
}

/// An upstream refusal passed on to a legacy caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The upstream's status.
    pub status: StatusCode,
    /// The upstream's `Content-Type` (plain text if it sent none) and
    /// `Retry-After`, if any.
    pub headers: HeaderMap,
    /// The upstream's body, verbatim.
    pub body: Bytes,
}

/// A legacy caller's answer when the upstream did not succeed (spec E.4):
/// its own 4xx pass through verbatim, except 401, which means the upstream
/// refused the proxy's signature and so must not blame the caller; 5xx and
/// anything else unexpected become errors (502).
pub fn map_failure(
    app_id: &str,
    status: StatusCode,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Refusal, ProxyError> {
    match status {
        StatusCode::UNAUTHORIZED => Err(ProxyError::RejectedCredentials {
            app_id: app_id.to_owned(),
        }),
        s if s.is_client_error() => {
            let mut kept = HeaderMap::with_capacity(2);
            let content_type = headers
                .get(CONTENT_TYPE)
                .cloned()
                .unwrap_or_else(|| HeaderValue::from_static("text/plain; charset=utf-8"));
            kept.insert(CONTENT_TYPE, content_type);
            if let Some(retry) = headers.get(RETRY_AFTER) {
                kept.insert(RETRY_AFTER, retry.clone());
            }
            Ok(Refusal {
                status: s,
                headers: kept,
                body,
            })
        }
        s => Err(UpstreamError::Status(s).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pusher::channel::{MAX_CHANNEL_LEN, OTHER_HOSTS, PUSHER_HOSTS};

    #[test]
    fn channel_segments() {
        assert_eq!(
            decode_channel("test-channel").ok().as_deref(),
            Some("test-channel")
        );
        assert_eq!(
            decode_channel("private-foo-bar_1234%40%3D%2C.%3B")
                .ok()
                .as_deref(),
            Some("private-foo-bar_1234@=,.;")
        );
        assert_eq!(
            decode_channel("private-foo-bar_1234@=,.;").ok().as_deref(),
            Some("private-foo-bar_1234@=,.;")
        );
        let long = "a".repeat(MAX_CHANNEL_LEN);
        assert!(decode_channel(&long).is_ok());
        for bad in [
            "",
            ".",
            "..",
            "%2E%2E",
            "%ZZ",
            "a%2Fb",
            "a b",
            "caf%C3%A9",
            "#server-to-user-1",
            "%FF",
            &"a".repeat(MAX_CHANNEL_LEN + 1),
        ] {
            let err = decode_channel(bad).expect_err(bad);
            assert_eq!(err.status(), StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn pusher_upstreams_hold_names_to_164() {
        let at = |n: usize| "a".repeat(n);
        for host in PUSHER_HOSTS {
            assert!(check_upstream_len(&at(164), Some(host)).is_ok(), "{host}");
            let e = check_upstream_len(&at(165), Some(host)).expect_err(host);
            assert_eq!(e.status(), StatusCode::BAD_REQUEST);
            assert!(e.to_string().contains("164"), "{e}");
        }
        for host in OTHER_HOSTS.map(Some).into_iter().chain([None]) {
            assert!(check_upstream_len(&at(200), host).is_ok(), "{host:?}");
        }
    }

    #[test]
    fn failure_mapping() {
        let json =
            HeaderMap::from_iter([(CONTENT_TYPE, HeaderValue::from_static("application/json"))]);
        let body = Bytes::from_static(br#"{"error":"x"}"#);
        for code in [400, 403, 404, 413, 429] {
            let status = StatusCode::from_u16(code).expect("valid");
            let r = map_failure("1", status, &json, body.clone()).expect("passes through");
            assert_eq!((r.status, r.body.clone()), (status, body.clone()));
            assert_eq!(r.headers.get(CONTENT_TYPE), json.get(CONTENT_TYPE));
        }
        let mut limited = json.clone();
        limited.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        limited.insert("x-other", HeaderValue::from_static("dropped"));
        let r = map_failure("1", StatusCode::TOO_MANY_REQUESTS, &limited, body.clone())
            .expect("429 passes through");
        assert_eq!(
            r.headers.get(RETRY_AFTER).map(|v| v.as_bytes()),
            Some(&b"7"[..])
        );
        assert_eq!(
            r.headers.len(),
            2,
            "only content-type and retry-after are kept"
        );
        assert!(matches!(
            map_failure("1", StatusCode::UNAUTHORIZED, &json, body.clone()),
            Err(ProxyError::RejectedCredentials { .. })
        ));
        for code in [500, 502, 503, 302, 204] {
            let status = StatusCode::from_u16(code).expect("valid");
            assert!(matches!(
                map_failure("1", status, &json, body.clone()),
                Err(ProxyError::Upstream(UpstreamError::Status(s))) if s == status
            ));
        }
    }

    proptest::proptest! {
        #[test]
        fn decode_channel_never_panics(raw in "\\PC*") {
            if let Ok(name) = decode_channel(&raw) {
                proptest::prop_assert!(name.len() <= MAX_CHANNEL_LEN);
                proptest::prop_assert!(!name.contains('/'));
            }
        }
    }
}
