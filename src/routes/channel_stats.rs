//! `GET /apps/{app}/channels/{chan}/stats` → `GET /apps/{app}/channels/{chan}`
//! (spec D.1, E.2): the `info` asked for, the exchange with the `probe`
//! fallback of E.5, the answer mapped back, and shadow mode's comparison.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use hyper::header::HeaderValue;
use hyper::{Response, StatusCode};
use serde::{Deserialize, Serialize};

use super::map_failure;
use crate::config::SubscriptionCounting;
use crate::error::ProxyError;
use crate::http::{self, APPLICATION_JSON, ResponseBody};
use crate::pipeline::{Call, Record};
use crate::upstream::{Buffered, UpstreamError};

/// How long an app stops asking for `subscription_count` after the
/// upstream refused it: all channels' in `probe` mode when counting is
/// disabled (spec E.5 item 1), presence channels' in `probe` and `on`.
const COUNTING_OFF_SECS: u64 = 600;

/// What a presence channel's stats ask for when counting is active: the
/// legacy `connection_count` comes from `subscription_count` (spec E.2).
pub const PRESENCE_WITH_COUNT: &str = "user_count,subscription_count";

/// A "do not ask for counts" memory: the Unix time until which a kind of
/// count is not asked for, after the upstream refused it. An app keeps
/// two, carried across reloads that keep its upstream: one for every
/// channel (counting disabled, spec E.5 item 1; `probe` mode), one for
/// presence channels only (Pusher: `subscription_count` is not available
/// there; `probe` and `on`).
#[derive(Debug, Default)]
pub(crate) struct OffUntil(AtomicU64);

impl OffUntil {
    /// A memory that starts at `until` (0: asking).
    pub(crate) fn new(until: u64) -> Self {
        Self(AtomicU64::new(until))
    }

    /// Whether to ask at Unix time `now`.
    pub(crate) fn active(&self, now: u64) -> bool {
        now >= self.0.load(Ordering::Relaxed)
    }

    /// Stops asking until `until`.
    pub(crate) fn off(&self, until: u64) {
        self.0.store(until, Ordering::Relaxed);
    }

    /// Until when it does not ask, for the next configuration's app.
    pub(crate) fn until(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The `info` attribute to request upstream, if any.
///
/// `user_count` for presence channels only (anything else is a 400 upstream:
/// spec E.5 item 2), with `subscription_count` when counting is active for
/// them (only in `subscription_count = "on"`), so that presence stats carry
/// `connection_count` too (sockudo answers both; Pusher refuses, and the
/// call falls back to `user_count`: spec E.5 item 3);
/// `subscription_count` for other channels when counting is active (spec
/// E.5 item 1).
pub fn info_param(channel: &str, counting_active: bool) -> Option<&'static str> {
    if channel.starts_with("presence-") {
        Some(if counting_active {
            PRESENCE_WITH_COUNT
        } else {
            "user_count"
        })
    } else if counting_active {
        Some("subscription_count")
    } else {
        None
    }
}

/// The current-API path for `channel` of `app_id`; `channel` is the decoded,
/// validated name, whose characters are all legal in a path.
pub fn upstream_path(app_id: &str, channel: &str) -> String {
    format!("/apps/{app_id}/channels/{channel}")
}

/// Whether an upstream answer is Pusher's "subscription counting is not
/// enabled" 400 (spec B.4, E.5 item 1).
pub fn counting_disabled(status: StatusCode, body: &[u8]) -> bool {
    const NEEDLE: &[u8] = b"subscription count";
    status == StatusCode::BAD_REQUEST
        && body
            .windows(NEEDLE.len())
            .any(|w| w.eq_ignore_ascii_case(NEEDLE))
}

/// Whether an upstream answer refuses `subscription_count` on a presence
/// channel: a 400 that mentions subscriptions (Pusher: not available on
/// presence channels; or counting not enabled at all).
pub fn presence_count_refused(status: StatusCode, body: &[u8]) -> bool {
    const NEEDLE: &[u8] = b"subscription";
    status == StatusCode::BAD_REQUEST
        && body
            .windows(NEEDLE.len())
            .any(|w| w.eq_ignore_ascii_case(NEEDLE))
}

#[derive(Deserialize)]
struct ChannelInfo {
    occupied: bool,
    user_count: Option<u64>,
    subscription_count: Option<u64>,
}

/// The old stats answer: keys in this order, counts only when the upstream
/// supplied them (spec E.2, E.5 item 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Whether anyone is subscribed.
    pub occupied: bool,
    /// Distinct users (presence channels).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_count: Option<u64>,
    /// Subscribed connections.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_count: Option<u64>,
}

impl Stats {
    /// The fields in which `translated` differs from this legacy answer
    /// (for shadow mode). A `connection_count` the legacy answer lacks is
    /// not a difference: it was a beta most apps never had (spec D.1),
    /// while the translation adds it whenever the upstream counts
    /// subscriptions, and a client that never saw the key does not read
    /// it. One the legacy answer had and the translation drops or
    /// changes is.
    pub fn differing_fields(&self, translated: &Stats) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.occupied != translated.occupied {
            out.push("occupied");
        }
        if self.user_count != translated.user_count {
            out.push("user_count");
        }
        if self.connection_count.is_some() && self.connection_count != translated.connection_count {
            out.push("connection_count");
        }
        out
    }
}

/// Maps an upstream 200 channel-info body to the legacy stats body.
///
/// `user_count` is kept only on presence channels; `subscription_count`
/// becomes `connection_count`; everything else (`cache`,
/// `subscription_count_complete`, …) is dropped.
pub fn map_ok(channel: &str, body: &[u8]) -> Result<Bytes, UpstreamError> {
    let info: ChannelInfo =
        serde_json::from_slice(body).map_err(UpstreamError::MalformedResponse)?;
    let stats = Stats {
        occupied: info.occupied,
        user_count: info.user_count.filter(|_| channel.starts_with("presence-")),
        connection_count: info.subscription_count,
    };
    serde_json::to_vec(&stats)
        .map(Bytes::from)
        .map_err(UpstreamError::MalformedResponse)
}

/// Spec E.2: stats via channel info, with the `probe` fallback of E.5.
pub(crate) async fn translate(
    call: &mut Call<'_>,
    channel: &str,
    now: u64,
) -> Result<Response<ResponseBody>, ProxyError> {
    super::check_upstream_len(channel, call.state.config.upstream.url.host())?;
    let (status, headers, body) = exchange(call, channel, now, true).await?;
    Ok(http::respond_with(status, headers, body))
}

/// The translated exchange: the legacy caller's status, headers and body;
/// its upstream query shared with identical concurrent ones when `share`
/// (a caller's; a shadow comparison asks for itself, so that it compares
/// an answer asked for after its own legacy call's, and is counted
/// nowhere as a shared answer).
async fn exchange(
    call: &mut Call<'_>,
    channel: &str,
    now: u64,
    share: bool,
) -> Result<(StatusCode, hyper::HeaderMap, Bytes), ProxyError> {
    let app = call.app;
    let path = upstream_path(&app.config.upstream.id, channel);
    let probing = app.config.subscription_count == SubscriptionCounting::Probe;
    // A presence channel is asked for subscription_count only in `on`, the
    // operator's word that the upstream counts there (Sockudo does; Pusher
    // documents it for every channel but presence ones, spec E.5 item 3,
    // and its refusal's wording is not documented): a refusal then falls
    // back to user_count alone and is remembered for presence channels. In
    // `probe` they are asked for user_count alone (spec E.2).
    let counting = app.counting_active(now)
        && (!channel.starts_with("presence-")
            || (!probing && app.presence_counting_off.active(now)));
    let mut info = info_param(channel, counting);
    // One deadline for the call, the probe's retry included.
    let deadline = call.state.upstream.deadline();
    // A loop rather than a second call after the first, so that no answer
    // is held while the next is awaited.
    let answer = loop {
        // Shared with identical concurrent queries (single flight).
        let answer =
            super::single_flight::exchange(call, &path, channel, info, deadline, share).await?;
        if probing
            && info == Some("subscription_count")
            && counting_disabled(answer.status, &answer.body)
        {
            tracing::info!(
                app_id = %app.config.id,
                "upstream has subscription counting disabled; answering stats without connection_count"
            );
            app.counting_off.off(now + COUNTING_OFF_SECS);
            info = None;
            continue;
        }
        if info == Some(PRESENCE_WITH_COUNT) && presence_count_refused(answer.status, &answer.body)
        {
            app.presence_counting_off.off(now + COUNTING_OFF_SECS);
            tracing::info!(
                app_id = %app.config.id,
                "upstream refused subscription_count on a presence channel; answering stats without connection_count"
            );
            info = Some("user_count");
            continue;
        }
        break answer;
    };
    if answer.status == StatusCode::OK {
        let body = map_ok(channel, &answer.body)?;
        let headers = http::answer_headers(HeaderValue::from_static(APPLICATION_JSON));
        return Ok((StatusCode::OK, headers, body));
    }
    let r = map_failure(
        &app.config.id,
        answer.status,
        &answer.headers,
        answer.body.clone(),
    )?;
    Ok((r.status, r.headers, r.body))
}

/// Shadow mode: sends the translated stats call in the background and
/// compares its mapped answer with what the legacy call answered.
///
/// At most [`crate::pipeline::shadow_slots`] comparisons are in flight; a
/// call beyond them is not compared (`shadow_skipped{reason="busy"}`), so
/// comparing never takes more upstream slots than that from the calls
/// that answer callers. A translated call that fails on the upstream's
/// side (a 5xx or 429, a time-out, no connection or slot) is no mismatch: it says
/// nothing of the translation (`shadow_skipped{reason="upstream_error"}`).
/// A legacy answer that is not a 200 with the stats JSON has nothing to be
/// compared with (`reason="not_comparable"`).
pub(crate) fn spawn_shadow_compare(call: &Call<'_>, channel: &str, now: u64, observed: &Buffered) {
    let app_id = &call.app.config.id;
    let Some(legacy) = (observed.status == StatusCode::OK)
        .then(|| serde_json::from_slice::<Stats>(&observed.body).ok())
        .flatten()
    else {
        // Not a 200 with the stats JSON (the upstream's error, or a body
        // it compressed for the caller): nothing to compare with.
        call.state
            .telemetry
            .shadow_skipped(app_id, "not_comparable");
        tracing::debug!(app_id = %app_id, status = %observed.status, "shadow: legacy answer not comparable");
        return;
    };
    let state = call.state.clone();
    let Ok(slot) = state.shadow_slots.clone().try_acquire_owned() else {
        state.telemetry.shadow_skipped(app_id, "busy");
        return;
    };
    let app_id = app_id.clone();
    let channel = channel.to_owned();
    tokio::spawn(async move {
        let _slot = slot;
        let Some(app) = state.app(&app_id) else {
            return;
        };
        // The comparison's own exchange is not the caller's: recorded nowhere.
        let mut record = Record::default();
        let mut call = Call::new(&state, app, &mut record);
        let translated = match exchange(&mut call, &channel, now, false).await {
            Ok((StatusCode::OK, _, body)) => serde_json::from_slice::<Stats>(&body).ok(),
            Ok((status, _, _))
                if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS =>
            {
                state.telemetry.shadow_skipped(&app_id, "upstream_error");
                return;
            }
            Err(ProxyError::Upstream(e)) if upstream_trouble(&e) => {
                state.telemetry.shadow_skipped(&app_id, "upstream_error");
                return;
            }
            // Another answer (a 4xx where the legacy call had its 200, a
            // refusal of the proxy's credentials): the translation differs.
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
            // The two answers as the client would see them (JSON), not as
            // Rust debug dumps.
            let json = |s: &Stats| serde_json::to_string(s).unwrap_or_default();
            tracing::warn!(
                app_id = %app_id,
                // Its template: a channel name can hold a user's id or address.
                channel = %crate::telemetry::call_site::template(&channel),
                fields = %differing.join(","),
                legacy = %json(&legacy),
                translated = %translated.as_ref().map_or_else(|| "none".to_owned(), json),
                "shadow: translated stats differ from the legacy answer"
            );
        }
    });
}

/// Whether a translated call failed for the upstream's trouble, not for
/// its answer: a time-out, no connection or slot, a cut exchange, a 5xx.
/// A 3xx, or a 200 whose body does not map, is the translation's to
/// answer for: a shadow mismatch.
fn upstream_trouble(e: &crate::upstream::UpstreamError) -> bool {
    use crate::upstream::UpstreamError as E;
    match e {
        E::Connect(_) | E::Request(_) | E::Body(_) | E::Timeout | E::Aborted => true,
        E::Status(s) => s.is_server_error(),
        E::MalformedResponse(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_count_only_the_translation_has_is_no_difference() {
        let stats = |occupied, connection_count| Stats {
            occupied,
            user_count: None,
            connection_count,
        };
        let counted = stats(true, Some(3));
        let uncounted = stats(true, None);
        assert!(uncounted.differing_fields(&counted).is_empty());
        assert!(counted.differing_fields(&counted).is_empty());
        assert_eq!(counted.differing_fields(&uncounted), ["connection_count"]);
        assert_eq!(
            counted.differing_fields(&stats(true, Some(4))),
            ["connection_count"]
        );
        assert_eq!(
            uncounted.differing_fields(&stats(false, Some(3))),
            ["occupied"]
        );
    }

    #[test]
    fn presence_memory_expires() {
        let memory = OffUntil::default();
        assert!(memory.active(100));
        memory.off(700);
        assert!(!memory.active(699));
        assert!(memory.active(700));
        assert!(OffUntil::default().active(100), "another app's memory");
        assert_eq!(OffUntil::new(memory.until()).until(), 700, "carried over");
    }

    #[test]
    fn recognises_presence_refusals() {
        for body in [
            &b"subscription_count is not available for presence channels"[..],
            b"Cannot retrieve the subscription count because subscription counting is not enabled",
        ] {
            assert!(presence_count_refused(StatusCode::BAD_REQUEST, body));
            assert!(!presence_count_refused(StatusCode::FORBIDDEN, body));
        }
        assert!(!presence_count_refused(
            StatusCode::BAD_REQUEST,
            b"Invalid channel name"
        ));
    }

    #[test]
    fn info_per_channel_type() {
        assert_eq!(
            info_param("presence-room", true),
            Some("user_count,subscription_count")
        );
        assert_eq!(info_param("presence-room", false), Some("user_count"));
        assert_eq!(info_param("private-room", true), Some("subscription_count"));
        assert_eq!(info_param("room", true), Some("subscription_count"));
        assert_eq!(info_param("room", false), None);
        assert_eq!(info_param("presencex", true), Some("subscription_count"));
    }

    #[test]
    fn maps_and_drops() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "room",
                r#"{"occupied":true,"subscription_count":3,"subscription_count_complete":true,"cache":null}"#,
                r#"{"occupied":true,"connection_count":3}"#,
            ),
            (
                "presence-room",
                r#"{"subscription_count":3,"user_count":2,"occupied":true}"#,
                r#"{"occupied":true,"user_count":2,"connection_count":3}"#,
            ),
            ("room", r#"{"occupied":false}"#, r#"{"occupied":false}"#),
            (
                "room",
                r#"{"occupied":false,"user_count":4}"#,
                r#"{"occupied":false}"#,
            ),
        ];
        for (channel, upstream, legacy) in cases {
            let out = map_ok(channel, upstream.as_bytes()).expect("valid");
            assert_eq!(std::str::from_utf8(&out).ok(), Some(*legacy), "{upstream}");
        }
    }

    #[test]
    fn malformed_upstream_bodies_are_errors() {
        for body in ["", "{}", "[]", r#"{"occupied":"yes"}"#, "not json"] {
            assert!(map_ok("room", body.as_bytes()).is_err(), "{body}");
        }
    }

    #[test]
    fn recognises_counting_disabled() {
        let body =
            b"Cannot retrieve the subscription count because subscription counting is not enabled";
        assert!(counting_disabled(StatusCode::BAD_REQUEST, body));
        assert!(!counting_disabled(StatusCode::FORBIDDEN, body));
        assert!(!counting_disabled(
            StatusCode::BAD_REQUEST,
            b"Invalid channel name"
        ));
    }

    proptest::proptest! {
        #[test]
        fn map_ok_never_panics(body in proptest::collection::vec(proptest::num::u8::ANY, 0..128)) {
            let _ = map_ok("room", &body);
        }
    }
}
