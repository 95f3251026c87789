//! `POST /apps/{app}/channels/{chan}/events?name=N[&socket_id=S]` with the
//! raw event data as the body → `POST /apps/{app}/events` with a JSON body
//! (spec D.2, E.3): the trigger parsed, its JSON body built, the exchange,
//! and the answer mapped back.

use bytes::Bytes;
use hyper::header::HeaderValue;
use hyper::{Method, Response, StatusCode};
use serde::Serialize;
use tokio::sync::oneshot;

use super::coalesce::{self, Pending, Place};
use super::{TranslateError, map_failure};
use crate::error::ProxyError;
use crate::http::{self, ResponseBody, TEXT_PLAIN};
use crate::pipeline::Call;
use crate::pusher::query::QueryParams;
use crate::upstream::{Buffered, UpstreamError};

/// The body every legacy trigger gets on success, with status 202: what the
/// old API sent, and what the pre-2.x PHP clients compare against (spec E.3).
pub const ACCEPTED_BODY: &[u8] = b"202 ACCEPTED\n";

/// The current-API path for triggers of `app_id`.
pub fn upstream_path(app_id: &str) -> String {
    format!("/apps/{app_id}/events")
}

/// A parsed legacy trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trigger<'a> {
    /// The event name (`name`).
    pub name: &'a str,
    /// The connection to exclude; `None` when absent or empty (E.5 item 10).
    pub socket_id: Option<&'a str>,
    /// The event data: the request body, verbatim.
    pub data: &'a str,
}

#[derive(Serialize)]
struct Event<'a> {
    name: &'a str,
    channels: [&'a str; 1],
    data: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    socket_id: Option<&'a str>,
}

impl<'a> Trigger<'a> {
    /// Reads a legacy trigger from its verified query and body.
    ///
    /// `name` must be present and non-empty and the body UTF-8 (the old
    /// API's 400s); data longer than `max_data_bytes` is refused with 413
    /// here, before anything is forwarded.
    pub fn parse(
        query: &'a QueryParams,
        body: &'a [u8],
        max_data_bytes: usize,
    ) -> Result<Self, TranslateError> {
        let name = query
            .get("name")
            .filter(|n| !n.is_empty())
            .ok_or(TranslateError::MissingEventName)?;
        let data = std::str::from_utf8(body).map_err(|_| TranslateError::DataNotUtf8)?;
        if data.len() > max_data_bytes {
            return Err(TranslateError::DataTooLarge {
                limit: max_data_bytes,
            });
        }
        let socket_id = query.get("socket_id").filter(|s| !s.is_empty());
        Ok(Self {
            name,
            socket_id,
            data,
        })
    }

    /// The current-API JSON body: `{"name", "channels": [channel], "data",
    /// "socket_id"?}`, with the data as a JSON string, never parsed.
    pub fn upstream_body(&self, channel: &str) -> Vec<u8> {
        let event = Event {
            name: self.name,
            channels: [channel],
            data: self.data,
            socket_id: self.socket_id,
        };
        serde_json::to_vec(&event)
            .expect("invariant: serialising borrowed strings into a Vec cannot fail")
    }
}

/// How a trigger leaves, decided before anything is awaited.
enum Leaving<'a> {
    /// Alone, now, as `POST /events`: its JSON body, and the place on the
    /// wire it holds when coalescing is on.
    Alone(Bytes, Option<Place<'a>>),
    /// Queued for the next batch (already in the queue): the receiver of
    /// its batch's answer, its ticket and its deadline.
    Queued {
        answer: oneshot::Receiver<coalesce::Answer>,
        ticket: u64,
        deadline: tokio::time::Instant,
    },
}

/// Spec E.3: a legacy trigger becomes `POST /apps/{id}/events`, or joins
/// the next `POST /apps/{id}/batch_events` while the app's trigger requests
/// are all on the wire ([`super::coalesce`]).
///
/// Takes the verified query and body: both are let go of once the trigger
/// is translated, before the upstream is waited on.
pub(crate) async fn translate(
    call: &mut Call<'_>,
    channel: &str,
    query: QueryParams,
    body: Bytes,
) -> Result<Response<ResponseBody>, ProxyError> {
    super::check_upstream_len(channel, call.state.config.upstream.url.host())?;
    let (state, app) = (call.state, call.app);
    // Translated in a block of its own, which takes the query and body, so
    // that only the JSON body (or the queued event's receiver) is held
    // while the upstream answers: the decoded query's buffers are freed
    // first.
    let leaving = {
        let (query, body) = (query, body);
        let trigger = Trigger::parse(&query, &body, app.config.max_data_bytes)?;
        if channel.starts_with("private-encrypted-") {
            // Old clients never encrypt; subscribers will fail to decrypt
            // (spec E.5 item 12). The proxy has no master key: forward, warn.
            // The channel's template, as elsewhere: a name may hold a
            // user's id or address.
            tracing::warn!(
                app_id = %app.config.id,
                channel = %crate::telemetry::call_site::template(channel),
                "legacy trigger to an end-to-end encrypted channel is sent unencrypted"
            );
        }
        if !app.coalescer.enabled() || !coalesce::batchable(&trigger, channel) {
            // Coalescing off, or an event the upstream could refuse: sent
            // alone, outside the places, as it always was.
            Leaving::Alone(Bytes::from(trigger.upstream_body(channel)), None)
        } else if let Some(place) = Place::reserve(state, app) {
            Leaving::Alone(Bytes::from(trigger.upstream_body(channel)), Some(place))
        } else {
            // Queued here, not in `queued`: the owned event then lives in
            // the queue alone, not also in the waiting future's state.
            let deadline = state.upstream.deadline();
            // Its answer may take the queue's wait and then its batch's.
            crate::http::server::waits_in_a_queue();
            let event = Pending::new(&trigger, channel);
            let (answer, ticket) = app.coalescer.enqueue(state, app, event, deadline);
            Leaving::Queued {
                answer,
                ticket,
                deadline,
            }
        }
    };
    match leaving {
        Leaving::Alone(json, place) => {
            // Boxed: a trigger sent at once keeps its exchange's state in a
            // box of its own, so the request future (allocated for every
            // connection, whatever its request) is sized for the queued
            // trigger's wait, the longest one under load, not for this.
            let answer = Box::pin(alone(call, json)).await;
            // The place is handed on once the answer is in.
            drop(place);
            answer
        }
        Leaving::Queued {
            answer,
            ticket,
            deadline,
        } => queued(call, answer, ticket, deadline).await,
    }
}

/// Sends one trigger as `POST /events` and maps its answer.
async fn alone(call: &mut Call<'_>, json: Bytes) -> Result<Response<ResponseBody>, ProxyError> {
    let state = call.state;
    let path = &call.app.events_path;
    let build = |call: &Call<'_>| {
        // Counted once it holds a slot (see `Call::exchange`).
        state.telemetry.metrics().upstream.trigger_request(1);
        call.signed_request(Method::POST, path, Some(json), None)
    };
    let deadline = state.upstream.deadline();
    let answer = call.exchange(build, deadline).await?;
    answer_caller(&call.app.config.id, &answer)
}

/// Waits for the batch answer of a trigger queued with `ticket` (see
/// [`coalesce::Coalescer::enqueue`]) and maps it.
///
/// `deadline`, `upstream.timeout_ms` from its arrival in the queue, bounds
/// its wait there: if it passes while the trigger waits, the trigger is
/// withdrawn, never sent, and answered 504 (as one that found no upstream
/// slot in time). Once a batch has taken it, the batch answers it as a
/// single trigger sent then would be, within `upstream.timeout_ms` of
/// leaving the queue.
async fn queued(
    call: &mut Call<'_>,
    mut answer: oneshot::Receiver<coalesce::Answer>,
    ticket: u64,
    deadline: tokio::time::Instant,
) -> Result<Response<ResponseBody>, ProxyError> {
    let coalescer = &call.app.coalescer;
    // Dropping this future (the caller left) leaves the event queued.
    let answer = match tokio::time::timeout_at(deadline, &mut answer).await {
        Ok(answer) => answer,
        Err(_) if coalescer.withdraw(ticket) => return Err(UpstreamError::Timeout.into()),
        // In a batch, which answers within its own time.
        Err(_) => answer.await,
    };
    let Ok(answer) = answer else {
        return Err(UpstreamError::Aborted.into());
    };
    call.record.add_upstream_time(answer.upstream_time);
    let answer = answer.result?;
    call.record.upstream_status = Some(answer.status.as_u16());
    answer_caller(&call.app.config.id, &answer)
}

/// A trigger's answer from its request's upstream answer: 202 on a 2xx,
/// else the mapped failure (spec E.4). The same for a trigger sent alone
/// and for each of a batch's callers.
fn answer_caller(app_id: &str, answer: &Buffered) -> Result<Response<ResponseBody>, ProxyError> {
    if answer.status.is_success() {
        return Ok(http::respond(
            StatusCode::ACCEPTED,
            HeaderValue::from_static(TEXT_PLAIN),
            Bytes::from_static(ACCEPTED_BODY),
        ));
    }
    let r = map_failure(app_id, answer.status, &answer.headers, answer.body.clone())?;
    Ok(http::respond_with(r.status, r.headers, r.body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(raw: &str) -> QueryParams {
        QueryParams::parse(raw).expect("valid query")
    }

    #[test]
    fn body_shape() {
        let q = query("name=my-event&socket_id=1234.5678");
        let t = Trigger::parse(&q, br#"{"msg": "hi"}"#, 10_240).expect("valid");
        assert_eq!(
            String::from_utf8(t.upstream_body("test-channel"))
                .ok()
                .as_deref(),
            Some(
                r#"{"name":"my-event","channels":["test-channel"],"data":"{\"msg\": \"hi\"}","socket_id":"1234.5678"}"#
            )
        );
    }

    #[test]
    fn socket_id_absent_or_empty_is_omitted() {
        for raw in ["name=e", "name=e&socket_id="] {
            let q = query(raw);
            let t = Trigger::parse(&q, b"x", 10).expect("valid");
            assert_eq!(t.socket_id, None);
            assert_eq!(
                String::from_utf8(t.upstream_body("c")).ok().as_deref(),
                Some(r#"{"name":"e","channels":["c"],"data":"x"}"#)
            );
        }
    }

    #[test]
    fn data_kept_verbatim_including_non_ascii_and_empty() {
        let q = query("name=e");
        let data = "h\u{e9}llo \u{1f600} \"quoted\" \\ \n";
        let t = Trigger::parse(&q, data.as_bytes(), 100).expect("valid");
        let body: serde_json::Value = serde_json::from_slice(&t.upstream_body("c")).expect("json");
        assert_eq!(body["data"].as_str(), Some(data));
        let t = Trigger::parse(&q, b"", 100).expect("empty data is forwarded");
        assert_eq!(t.data, "");
    }

    #[test]
    fn refusals() {
        assert!(matches!(
            Trigger::parse(&query("socket_id=1.1"), b"x", 10),
            Err(TranslateError::MissingEventName)
        ));
        assert!(matches!(
            Trigger::parse(&query("name="), b"x", 10),
            Err(TranslateError::MissingEventName)
        ));
        assert!(matches!(
            Trigger::parse(&query("name=e"), b"\xff\xfe", 10),
            Err(TranslateError::DataNotUtf8)
        ));
        assert!(matches!(
            Trigger::parse(&query("name=e"), b"12345678901", 10),
            Err(TranslateError::DataTooLarge { limit: 10 })
        ));
        assert!(Trigger::parse(&query("name=e"), b"1234567890", 10).is_ok());
    }
}
