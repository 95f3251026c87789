//! Single flight for translated legacy stats: identical concurrent queries
//! (same app, channel and `info` asked upstream) share one upstream
//! request. The first to ask leads and sends it; those arriving while it is
//! on the wire follow and get a copy of its answer. The flight is forgotten
//! as soon as its answer is in: nothing is cached after it, and the next
//! query asks again.
//!
//! A leader whose future is dropped before its answer (its caller went
//! away) takes its flight with it; its followers then ask again, one of
//! them leading. So do followers whose leader timed out before their own
//! deadlines. Each caller keeps its own record (upstream status and the
//! time it waited) and builds its own answer from the shared one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use hyper::Method;
use tokio::sync::watch;

use super::coalesce::copy_error;
use crate::error::ProxyError;
use crate::pipeline::Call;
use crate::telemetry::metrics::UpstreamRoute;
use crate::upstream::{Buffered, UpstreamError};

/// What a flight is known by within an app: the channel and the `info`
/// asked upstream.
type Key = (String, Option<&'static str>);

/// A flight's outcome as its followers see it.
type Shared = Option<Result<Arc<Buffered>, Arc<ProxyError>>>;

/// An app's stats queries on the wire.
#[derive(Debug, Default)]
pub(crate) struct Flights {
    on_the_wire: Mutex<HashMap<Key, watch::Receiver<Shared>>>,
}

/// The leader's hold on its flight: forgets it when dropped (answer in,
/// or the leader's future dropped).
struct Lead<'a> {
    flights: &'a Flights,
    key: Option<Key>,
    answer: watch::Sender<Shared>,
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.flights.lock().remove(&key);
        }
    }
}

enum Role<'a> {
    Lead(Lead<'a>),
    Follow(watch::Receiver<Shared>),
}

impl Flights {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, watch::Receiver<Shared>>> {
        // Nothing panics under the lock; a poisoned map is still whole.
        self.on_the_wire
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn join(&self, channel: &str, info: Option<&'static str>) -> Role<'_> {
        let key = (channel.to_owned(), info);
        let mut map = self.lock();
        if let Some(answer) = map.get(&key) {
            return Role::Follow(answer.clone());
        }
        let (answer, follow) = watch::channel(None);
        map.insert(key.clone(), follow);
        Role::Lead(Lead {
            flights: self,
            key: Some(key),
            answer,
        })
    }

    /// Queries in flight (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// `GET path?info=…` for `channel` of the call's app, before `deadline`,
/// shared with identical concurrent calls when `share` (a legacy caller's
/// query; a shadow comparison's is its own). The caller's record gets the
/// upstream's status and the time it waited.
pub(crate) async fn exchange(
    call: &mut Call<'_>,
    path: &str,
    channel: &str,
    info: Option<&'static str>,
    deadline: tokio::time::Instant,
    share: bool,
) -> Result<Arc<Buffered>, ProxyError> {
    let flights = &call.app.stats_flights;
    let metrics = &call.state.telemetry.metrics().upstream;
    if !share {
        let build = |call: &Call<'_>| {
            metrics.request(UpstreamRoute::Channel);
            call.signed_request(Method::GET, path, None, info)
        };
        return call.exchange(build, deadline).await.map(Arc::new);
    }
    loop {
        match flights.join(channel, info) {
            Role::Lead(mut lead) => {
                let build = |call: &Call<'_>| {
                    // Counted once it holds a slot (see `Call::exchange`).
                    metrics.request(UpstreamRoute::Channel);
                    call.signed_request(Method::GET, path, None, info)
                };
                let result = call.exchange(build, deadline).await;
                // Forgotten before its answer is given: a query arriving
                // from now on asks again.
                if let Some(key) = lead.key.take() {
                    flights.lock().remove(&key);
                }
                return match result {
                    Ok(answer) => {
                        let answer = Arc::new(answer);
                        lead.answer.send_replace(Some(Ok(answer.clone())));
                        Ok(answer)
                    }
                    Err(e) => {
                        lead.answer
                            .send_replace(Some(Err(Arc::new(copy_error(&e)))));
                        Err(e)
                    }
                };
            }
            Role::Follow(mut follow) => {
                let started = Instant::now();
                let waited =
                    tokio::time::timeout_at(deadline, follow.wait_for(Option::is_some)).await;
                call.record.add_upstream_time(started.elapsed());
                let shared = match waited {
                    Err(_) => return Err(UpstreamError::Timeout.into()),
                    // The leader went away without an answer: ask again.
                    Ok(Err(_)) => continue,
                    Ok(Ok(shared)) => shared.clone(),
                };
                match shared {
                    Some(Ok(answer)) => {
                        metrics.shared_stats();
                        call.record.upstream_status = Some(answer.status.as_u16());
                        return Ok(answer);
                    }
                    // The leader's deadline, earlier than this caller's,
                    // cut the flight: this one asks again with its own time
                    // (a query that has too little left is not sent, and
                    // ends in its own 504).
                    Some(Err(e))
                        if matches!(*e, ProxyError::Upstream(UpstreamError::Timeout))
                            && tokio::time::Instant::now() < deadline =>
                    {
                        continue;
                    }
                    Some(Err(e)) => {
                        metrics.shared_stats();
                        return Err(copy_error(&e));
                    }
                    None => continue,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_queries_follow_and_others_lead() {
        let flights = Flights::default();
        let Role::Lead(first) = flights.join("room", Some("subscription_count")) else {
            panic!("the first query leads");
        };
        assert!(matches!(
            flights.join("room", Some("subscription_count")),
            Role::Follow(_)
        ));
        for (channel, info) in [
            ("room", None),
            ("room", Some("user_count")),
            ("other", Some("subscription_count")),
        ] {
            assert!(
                matches!(flights.join(channel, info), Role::Lead(_)),
                "{channel} {info:?} is another query"
            );
        }
        assert_eq!(flights.len(), 1, "leads dropped are forgotten");
        drop(first);
        assert_eq!(flights.len(), 0, "nothing kept after the flight");
        assert!(matches!(
            flights.join("room", Some("subscription_count")),
            Role::Lead(_)
        ));
    }

    #[tokio::test]
    async fn followers_of_a_leader_that_left_ask_again() {
        let flights = Flights::default();
        let lead = flights.join("room", None);
        let Role::Follow(mut follow) = flights.join("room", None) else {
            panic!("follows");
        };
        drop(lead);
        assert!(follow.wait_for(Option::is_some).await.is_err());
        assert!(matches!(flights.join("room", None), Role::Lead(_)));
    }
}
