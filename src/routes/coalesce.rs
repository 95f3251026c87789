//! Coalescing of legacy triggers, per app, like a database's group commit.
//!
//! While `upstream.batch_in_flight` trigger requests of an app are on the
//! wire, further legacy triggers queue. When one of those requests returns,
//! the queue leaves as the next `POST /apps/{id}/batch_events` of at most
//! `upstream.batch_max` events (one left alone goes as `POST /events`),
//! each event with its own channel, name, data and `socket_id`. There is no
//! timer: a trigger that finds a free place goes at once, alone, in its own
//! task, as it always did.
//!
//! - **Places.** `in_flight` counts the app's trigger requests on the wire
//!   (or about to be). A trigger takes a place with one compare-and-swap
//!   when one is free; nothing else is touched on that path.
//! - **No lost wake-up.** A place is given back only when no trigger
//!   waits, and then the queue is looked at once more; a trigger that found
//!   no place queues and tries for a place once more before it lets go of
//!   the queue's lock (see `Coalescer::release`). So whenever the queue is
//!   not empty, every place is taken, and each of those requests, when it
//!   returns (or its caller's future is dropped: `Place`'s `Drop`), hands
//!   its place to the queue.
//! - **Nothing accepted is lost.** A batch is sent by a task of its own, not
//!   by any caller's: a caller that goes away while queued (hyper drops its
//!   future) drops only its answer's receiver; its event stays queued and
//!   is sent, and its batch's other callers are answered as usual.
//! - **Order.** The queue is FIFO and a batch carries its events in queue
//!   order. A client connection has one request in flight at a time (HTTP/1)
//!   and its caller waits for its own batch's answer, so the triggers of one
//!   connection reach the upstream in the order they were sent.
//! - **Answers.** Each caller gets its 202 only after its batch's 2xx; a
//!   batch's 4xx, 5xx or time-out is answered to each of its callers as a
//!   single trigger's would be ([`super::channel_event`]). A batch is never
//!   re-sent.
//! - **Deadlines.** A queued trigger waits in the queue at most
//!   `upstream.timeout_ms` from its arrival; then it is withdrawn and
//!   answered 504, never sent. The batch that takes it is a single trigger
//!   from then on: `upstream.timeout_ms` for its slot and its exchange,
//!   whatever its events waited, so a queued caller has its answer within
//!   twice that time. Charging the queue's wait to the exchange would cut
//!   batches the upstream has already delivered whenever it is slower than
//!   half the timeout, and tell their callers 504 for events sent.
//!
//! The queue lives with its `App`, in one configuration's state: a reload
//! starts the next state's apps with empty queues and free places, and the
//! previous state's queue is drained by its own requests in flight, signed
//! with the credentials they were accepted under.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;
use prometheus_client::metrics::gauge::Gauge;
use serde::Serialize;
use tokio::sync::oneshot;

use super::channel_event::Trigger;
use crate::config::Batching;
use crate::error::ProxyError;
use crate::pipeline::{App, Call, Record, State};
use crate::upstream::{Buffered, UpstreamError};

/// Longest event name the upstreams accept (Pusher, sockudo: 200 bytes).
pub const MAX_EVENT_NAME_BYTES: usize = 200;

/// Largest event data every known upstream accepts (Pusher's 10 KB; sockudo
/// and soketi allow 100 KB). Larger data (an app whose `max_data_bytes` is
/// raised for a dedicated cluster) is sent alone.
pub const MAX_BATCHED_DATA_BYTES: usize = 10_240;

/// Most body bytes a batch is meant to carry: 768 KiB, under the 1 MiB
/// that nginx and its Kubernetes ingress take by default in front of a
/// self-hosted upstream. A batch stops taking events once the next one's
/// bound (its bytes with every data byte escaped) would go past it; the
/// rest wait for the next batch. At Pusher's `batch_max` of 10, with data
/// up to its 10 KB, a batch never reaches it; a `batch_max` above that
/// with large data does (100 events of 10 KB would be 1 to 6 MiB).
pub const MAX_BATCH_BYTES: usize = 768 * 1024;

/// The prefix of the event names Pusher reserves for itself (see
/// [`batchable`]).
const RESERVED_PREFIX: &[u8] = b"pusher";

/// An app's trigger queue and its places on the wire.
#[derive(Debug)]
pub(crate) struct Coalescer {
    batching: Batching,
    /// Trigger requests of the app on the wire, at most
    /// `batching.in_flight`.
    in_flight: AtomicUsize,
    /// The queue's length, written under its lock, read without it: a
    /// place is given back without the lock while nothing waits.
    waiting: AtomicUsize,
    /// The next queued trigger's ticket.
    tickets: AtomicU64,
    /// Queued triggers of every app (`pusher_cutover_queued_triggers`).
    gauge: Gauge,
    /// Triggers waiting for the next batch, oldest first. A std mutex: it
    /// is held for a push or a drain, never across an await, and must be
    /// taken in [`Place`]'s `Drop`.
    queue: Mutex<VecDeque<Queued>>,
}

/// One legacy trigger's event, owned, as it waits in the queue.
#[derive(Debug)]
pub(crate) struct Pending {
    /// The (decoded, validated) channel.
    pub(crate) channel: String,
    /// The event name.
    pub(crate) name: String,
    /// The event data, verbatim.
    pub(crate) data: String,
    /// The connection to exclude.
    pub(crate) socket_id: Option<String>,
}

impl Pending {
    /// The owned event of `trigger` on `channel`.
    pub(crate) fn new(trigger: &Trigger<'_>, channel: &str) -> Self {
        Self {
            channel: channel.to_owned(),
            name: trigger.name.to_owned(),
            data: trigger.data.to_owned(),
            socket_id: trigger.socket_id.map(str::to_owned),
        }
    }

    /// An upper bound of its bytes in a `batch_events` body: its data and
    /// name (a decoded query value, control characters allowed) with every
    /// byte escaped (at most 6 bytes, `\u00XX`), the channel and socket id
    /// (of characters their rules allow) at most twice, and the keys and
    /// quotes.
    fn body_bytes(&self) -> usize {
        let socket_id = self.socket_id.as_ref().map_or(0, String::len);
        6 * (self.data.len() + self.name.len()) + 2 * (self.channel.len() + socket_id) + 64
    }

    fn trigger(&self) -> Trigger<'_> {
        Trigger {
            name: &self.name,
            socket_id: self.socket_id.as_deref(),
            data: &self.data,
        }
    }
}

#[derive(Debug)]
struct Queued {
    event: Pending,
    reply: oneshot::Sender<Answer>,
    /// Its caller's deadline, counted from the call's arrival.
    deadline: tokio::time::Instant,
    /// Which caller's, to withdraw it at that deadline.
    ticket: u64,
}

/// What a queued caller learns: its batch's answer (shared by the batch's
/// callers) or failure, and how long the upstream took.
#[derive(Debug)]
pub(crate) struct Answer {
    /// The batch's upstream answer, or why there is none.
    pub(crate) result: Result<Arc<Buffered>, ProxyError>,
    /// The batch's exchange time.
    pub(crate) upstream_time: Duration,
}

/// One event of a `batch_events` body (spec B.2): a single channel.
#[derive(Serialize)]
struct BatchItem<'a> {
    name: &'a str,
    channel: &'a str,
    data: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    socket_id: Option<&'a str>,
}

#[derive(Serialize)]
struct BatchBody<'a> {
    batch: Vec<BatchItem<'a>>,
}

/// The current-API path for batches of `app_id`.
pub fn batch_path(app_id: &str) -> String {
    format!("/apps/{app_id}/batch_events")
}

/// Whether `trigger` may join a batch: every check an upstream makes of an
/// event that the proxy has not made already (the channel's rules and its
/// Pusher length, and `max_data_bytes`, were checked before this). Sockudo
/// validates a batch's events one by one and broadcasts those before a bad
/// one, and soketi refuses a whole batch for one bad event, so an event
/// that could be refused never joins one: it is sent alone, as a single
/// trigger, and its caller gets the upstream's own answer (whose wording
/// and limits differ between upstreams). Refused somewhere, so sent alone:
/// - a name over 200 bytes (Pusher's libraries, sockudo, soketi);
/// - a name that starts with `pusher`, in any case: Pusher answers 400,
///   "the 'pusher' namespace is reserved for internal usage", for
///   `pusher-notification` as for `pusher:x` (spec C.3);
/// - empty data, which soketi refuses (spec E.5 item 9);
/// - data over Pusher's 10,240 bytes;
/// - a `socket_id` that is not `digits.digits`;
/// - a `channel` over Pusher's 164 bytes: the 200 allowed for other
///   upstreams is taken only where the upstream's host names another
///   server, and Pusher behind another name would refuse the whole batch.
pub fn batchable(trigger: &Trigger<'_>, channel: &str) -> bool {
    channel.len() <= crate::pusher::channel::PUSHER_MAX_CHANNEL_LEN
        && trigger.name.len() <= MAX_EVENT_NAME_BYTES
        && !reserved_name(trigger.name)
        && !trigger.data.is_empty()
        && trigger.data.len() <= MAX_BATCHED_DATA_BYTES
        && trigger.socket_id.is_none_or(valid_socket_id)
}

/// Whether Pusher keeps event names like `name` for itself: those that
/// start with `pusher`, compared without case (Pusher's check is on its
/// server and undocumented, so the proxy assumes the wider one).
fn reserved_name(name: &str) -> bool {
    name.as_bytes()
        .get(..RESERVED_PREFIX.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(RESERVED_PREFIX))
}

/// Pusher's socket id format, `digits.digits` (it answers 400 otherwise;
/// sockudo ignores an id it cannot read).
fn valid_socket_id(id: &str) -> bool {
    id.split_once('.').is_some_and(|(a, b)| {
        !a.is_empty()
            && !b.is_empty()
            && a.bytes().all(|c| c.is_ascii_digit())
            && b.bytes().all(|c| c.is_ascii_digit())
    })
}

/// The `batch_events` body of `events`, in their order.
fn batch_body<'a>(events: impl Iterator<Item = &'a Pending>) -> Vec<u8> {
    let body = BatchBody {
        batch: events
            .map(|e| BatchItem {
                name: &e.name,
                channel: &e.channel,
                data: &e.data,
                socket_id: e.socket_id.as_deref(),
            })
            .collect(),
    };
    serde_json::to_vec(&body)
        .expect("invariant: serialising borrowed strings into a Vec cannot fail")
}

/// A place on the wire held by one trigger request; dropping it (answer
/// read, failed, or the caller's future dropped) hands it to the queue.
#[derive(Debug)]
pub(crate) struct Place<'a> {
    state: &'a Arc<State>,
    app: &'a App,
}

impl<'a> Place<'a> {
    /// A free place for `app`'s next trigger, if there is one: one
    /// compare-and-swap.
    pub(crate) fn reserve(state: &'a Arc<State>, app: &'a App) -> Option<Self> {
        // `then`, not `then_some`: a place built and dropped when none was
        // free would give back a place never taken.
        app.coalescer.try_reserve().then(|| Self { state, app })
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.app.coalescer.release(self.state, self.app);
    }
}

impl Coalescer {
    /// An empty queue with every place free, counting its triggers in
    /// `gauge`.
    pub(crate) fn new(batching: Batching, gauge: Gauge) -> Self {
        Self {
            batching,
            in_flight: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            tickets: AtomicU64::new(0),
            gauge,
            queue: Mutex::new(VecDeque::new()),
        }
    }

    /// Whether triggers are coalesced (`batch_max` > 1).
    pub(crate) fn enabled(&self) -> bool {
        self.batching.enabled()
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Queued>> {
        // Nothing panics under the lock; a poisoned queue is still whole.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn try_reserve(&self) -> bool {
        let limit = self.batching.in_flight;
        self.in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// Records the queue's new length (under its lock).
    fn queued(&self, queue: &VecDeque<Queued>) {
        let before = self.waiting.swap(queue.len(), Ordering::SeqCst);
        self.gauge.inc_by(queue.len() as i64 - before as i64);
    }

    /// Up to `batch_max` of the oldest queued triggers, for the place the
    /// caller holds, and no more than [`MAX_BATCH_BYTES`] of body once
    /// there is one. A trigger past its deadline (its caller left, or is
    /// about to withdraw it) is not sent: it is answered 504, as a trigger
    /// that found no upstream slot before its deadline is.
    fn take_group(&self, queue: &mut VecDeque<Queued>) -> Vec<Queued> {
        let now = tokio::time::Instant::now();
        let mut group = Vec::with_capacity(queue.len().min(self.batching.max));
        let mut bytes = 0;
        while group.len() < self.batching.max
            && let Some(q) = queue.pop_front()
        {
            if q.deadline <= now {
                let _ = q.reply.send(Answer {
                    result: Err(UpstreamError::Timeout.into()),
                    upstream_time: Duration::ZERO,
                });
                continue;
            }
            let size = q.event.body_bytes();
            if !group.is_empty() && bytes + size > MAX_BATCH_BYTES {
                queue.push_front(q);
                break;
            }
            bytes += size;
            group.push(q);
        }
        self.queued(queue);
        group
    }

    /// Takes the trigger of `ticket` out of the queue, if it is still
    /// there (its caller's deadline passed while it waited).
    pub(crate) fn withdraw(&self, ticket: u64) -> bool {
        let mut queue = self.lock();
        let Some(at) = queue.iter().position(|q| q.ticket == ticket) else {
            return false;
        };
        queue.remove(at);
        self.queued(&queue);
        true
    }

    /// Gives a place back: to the queue's next batch if triggers wait, else
    /// free.
    ///
    /// While nothing waits this is two atomic reads and a decrement, no
    /// lock. A trigger that queued meanwhile stored its queue's length
    /// before it tried for a place and found none, so (all sequentially
    /// consistent) the second read sees it, and the place is taken back
    /// for it.
    fn release(&self, state: &Arc<State>, app: &App) {
        // The caller holds a place on every turn of this loop.
        loop {
            if self.waiting.load(Ordering::SeqCst) == 0 {
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
                if self.waiting.load(Ordering::SeqCst) == 0 || !self.try_reserve() {
                    return;
                }
            }
            let group = self.take_group(&mut self.lock());
            if !group.is_empty() {
                spawn_batch(state, app, group);
                return;
            }
            // Another place's holder took the queue first: give this one
            // back.
        }
    }

    /// Queues `event`, whose caller's deadline is `deadline`, for the next
    /// batch; the receiver gets its batch's answer, and the ticket
    /// withdraws it ([`Coalescer::withdraw`]). Dropping the receiver does
    /// not take the event out.
    pub(crate) fn enqueue(
        &self,
        state: &Arc<State>,
        app: &App,
        event: Pending,
        deadline: tokio::time::Instant,
    ) -> (oneshot::Receiver<Answer>, u64) {
        let (reply, answer) = oneshot::channel();
        let ticket = self.tickets.fetch_add(1, Ordering::Relaxed);
        let group = {
            let mut queue = self.lock();
            queue.push_back(Queued {
                event,
                reply,
                deadline,
                ticket,
            });
            self.queued(&queue);
            // A place freed since this trigger looked (its holder saw no
            // queue) is taken now, so the queue never waits with a place
            // free.
            if !self.try_reserve() {
                return (answer, ticket);
            }
            self.take_group(&mut queue)
        };
        if group.is_empty() {
            // Only expired triggers were waiting: the place goes back.
            self.release(state, app);
        } else {
            spawn_batch(state, app, group);
        }
        (answer, ticket)
    }
}

/// The place a batch's task holds, owned by the task from before it is
/// spawned: handed on when the task ends, also when it is dropped without
/// ever running (its runtime shutting down), so no place is lost.
struct BatchPlace {
    state: Arc<State>,
    app_id: String,
}

/// A place to hand on: its state, and its app's id.
type Handed = (Arc<State>, String);

thread_local! {
    /// Places whose drop came while this thread was already handing one on
    /// (`Some`): left here for that outer hand-on to take in turn.
    static HANDED_ON_LATER: RefCell<Option<Vec<Handed>>> = const { RefCell::new(None) };
}

/// Ends this thread's hand-on of places, also if one panicked.
struct HandingOn;

impl Drop for HandingOn {
    fn drop(&mut self) {
        let _ = HANDED_ON_LATER.try_with(|later| later.borrow_mut().take());
    }
}

/// Hands `app_id`'s place on to its queue.
fn hand_on(state: &Arc<State>, app_id: &str) {
    if let Some(app) = state.app(app_id) {
        app.coalescer.release(state, app);
    }
}

impl Drop for BatchPlace {
    /// Hands the place on to the queue. Handing it on spawns the next
    /// batch's task; while a runtime shuts down that task is dropped at
    /// once, which hands its place on in turn, and so on down the queue.
    /// Those nested drops only leave their place for the outermost, which
    /// hands each on in a loop: the stack stays one hand-on deep however
    /// long the queue is.
    fn drop(&mut self) {
        let (state, app_id) = (self.state.clone(), std::mem::take(&mut self.app_id));
        let nested = HANDED_ON_LATER.try_with(|later| {
            let mut later = later.borrow_mut();
            let nested = later.is_some();
            if !nested {
                *later = Some(Vec::new());
            }
            nested
        });
        match nested {
            Ok(true) => {
                let _ = HANDED_ON_LATER.try_with(|later| {
                    if let Some(places) = later.borrow_mut().as_mut() {
                        places.push((state, app_id));
                    }
                });
            }
            Ok(false) => {
                let _handing_on = HandingOn;
                hand_on(&state, &app_id);
                while let Some((state, app_id)) = HANDED_ON_LATER
                    .try_with(|later| later.borrow_mut().as_mut().and_then(Vec::pop))
                    .ok()
                    .flatten()
                {
                    hand_on(&state, &app_id);
                }
            }
            // The thread is ending and its locals are gone.
            Err(_) => hand_on(&state, &app_id),
        }
    }
}

/// Sends `group` in a task of its own, holding the place its caller took.
/// Its time (`upstream.timeout_ms`, as a single trigger's) starts now, as
/// it leaves the queue, not when the task first runs: the server's bound
/// on a queued caller's answer leaves a busy worker no more spare.
fn spawn_batch(state: &Arc<State>, app: &App, group: Vec<Queued>) {
    let deadline = state.upstream.deadline();
    let place = BatchPlace {
        state: state.clone(),
        app_id: app.config.id.clone(),
    };
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        // Only while the runtime shuts down, when no answer can be sent:
        // the callers get 502 (their answers' senders dropped), and the
        // place goes on to the next group, which meets the same.
        tracing::error!(app_id = %app.config.id, events = group.len(), "runtime gone: queued legacy triggers not sent");
        return;
    };
    // The worker's shutdown waits for this batch, which may carry other
    // workers' callers, as for one of its own connections.
    let hold = crate::http::server::drain_hold();
    runtime.spawn(async move {
        let _hold = hold;
        // Dropped before the hold: the next group it may spawn takes a hold
        // of its own first.
        let place = place;
        if let Some(app) = place.state.app(&place.app_id) {
            send_batch(&place.state, app, group, deadline).await;
        }
    });
}

/// Sends one batch by `deadline` and answers each of its callers (the
/// place is the caller's to hand on, when this is done).
async fn send_batch(
    state: &Arc<State>,
    app: &App,
    group: Vec<Queued>,
    deadline: tokio::time::Instant,
) {
    let started = Instant::now();
    // From when it left the queue the batch is one trigger, sent as a
    // single one would be: `upstream.timeout_ms` for its slot and its
    // exchange, whatever its events waited in the queue (their own
    // deadlines bounded that). Were the wait charged to the exchange, an
    // upstream slower than half the timeout would have its batches cut
    // after they were delivered, and their callers told 504 for events
    // sent.
    let slot = match state.upstream.slot(deadline).await {
        Ok(slot) => slot,
        // Never sent: each caller gets the 504 (or 502) of a single
        // trigger that found no slot.
        Err(e) => return answer_each(group, Err(e.into()), started.elapsed()),
    };
    let (path, body) = match group.as_slice() {
        [one] => (
            &app.events_path,
            one.event.trigger().upstream_body(&one.event.channel),
        ),
        _ => (&app.batch_path, batch_body(group.iter().map(|q| &q.event))),
    };
    state
        .telemetry
        .metrics()
        .upstream
        .trigger_request(group.len());
    // Signed when it leaves, as every upstream request is.
    let mut record = Record::default();
    let call = Call::new(state, app, &mut record);
    let result = match call.signed_request(Method::POST, path, Some(Bytes::from(body)), None) {
        Ok(req) => state
            .upstream
            .exchange(slot, req, deadline)
            .await
            .map_err(ProxyError::from),
        Err(e) => Err(e),
    };
    answer_each(group, result, started.elapsed());
}

/// Gives each caller of a batch its answer: the shared upstream answer, or
/// the failure (the first caller gets the error itself, the others copies).
/// A caller that left has dropped its receiver; the send to it fails, and
/// nothing else depends on it.
fn answer_each(group: Vec<Queued>, result: Result<Buffered, ProxyError>, upstream_time: Duration) {
    match result {
        Ok(answer) => {
            let answer = Arc::new(answer);
            for q in group {
                let _ = q.reply.send(Answer {
                    result: Ok(answer.clone()),
                    upstream_time,
                });
            }
        }
        Err(error) => {
            let mut group = group.into_iter();
            let first = group.next();
            for q in group {
                let _ = q.reply.send(Answer {
                    result: Err(copy_error(&error)),
                    upstream_time,
                });
            }
            if let Some(q) = first {
                let _ = q.reply.send(Answer {
                    result: Err(error),
                    upstream_time,
                });
            }
        }
    }
}

/// A copy of an upstream exchange's failure, for another caller that
/// shared the exchange: the same variant, so the same status, body and log
/// level, its causes given by their text ([`SharedCause`]). An exchange
/// fails with a timeout, a status, or a connect, request or body error;
/// anything else (which an exchange does not return) is copied as a body
/// failure, the same 502.
pub(crate) fn copy_error(e: &ProxyError) -> ProxyError {
    let cause = || -> crate::upstream::BoxError { Box::new(SharedCause::of(e)) };
    match e {
        ProxyError::Upstream(u) => ProxyError::Upstream(match u {
            UpstreamError::Timeout => UpstreamError::Timeout,
            UpstreamError::Status(s) => UpstreamError::Status(*s),
            UpstreamError::Aborted => UpstreamError::Aborted,
            UpstreamError::Connect(_) => UpstreamError::Connect(cause()),
            UpstreamError::Request(_) => UpstreamError::Request(cause()),
            _ => UpstreamError::Body(cause()),
        }),
        ProxyError::RejectedCredentials { app_id } => ProxyError::RejectedCredentials {
            app_id: app_id.clone(),
        },
        _ => ProxyError::Upstream(UpstreamError::Body(cause())),
    }
}

/// The causes of one error, shown for another: its first cause's message,
/// then that cause's own causes.
#[derive(Debug)]
struct SharedCause {
    message: String,
    source: Option<String>,
}

impl SharedCause {
    fn of(e: &ProxyError) -> Self {
        use std::error::Error as _;
        let first = e.source();
        let message = first.map_or_else(|| e.to_string(), ToString::to_string);
        let source = first
            .and_then(|f| f.source())
            .map(|s| crate::chain::ErrorChain(s).to_string());
        Self { message, source }
    }
}

impl std::fmt::Display for SharedCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        if let Some(s) = &self.source {
            write!(f, ": {s}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SharedCause {}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(i: usize, socket_id: Option<&str>) -> Pending {
        Pending {
            channel: format!("room-{i}"),
            name: format!("ev-{i}"),
            data: format!("{{\"i\":{i}}}"),
            socket_id: socket_id.map(str::to_owned),
        }
    }

    /// A coalescer with `in_flight` places and batches of at most `max`.
    fn coalescer(in_flight: usize, max: usize) -> Coalescer {
        Coalescer::new(Batching { in_flight, max }, Gauge::default())
    }

    fn later() -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_secs(60)
    }

    fn queued(i: usize, reply: oneshot::Sender<Answer>, deadline: tokio::time::Instant) -> Queued {
        Queued {
            event: pending(i, None),
            reply,
            deadline,
            ticket: i as u64,
        }
    }

    /// Queues a trigger on `c` for each of `ids` (`ev-{id}`, in order),
    /// each shaped by `shape`; the receivers of their answers, kept so
    /// that no answer finds its caller gone.
    fn fill(
        c: &Coalescer,
        ids: std::ops::Range<usize>,
        shape: impl Fn(&mut Queued),
    ) -> Vec<oneshot::Receiver<Answer>> {
        ids.map(|i| {
            let (reply, answer) = oneshot::channel();
            let mut q = queued(i, reply, later());
            shape(&mut q);
            c.lock().push_back(q);
            answer
        })
        .collect()
    }

    /// The event names of a group, in its order.
    fn names(group: Vec<Queued>) -> Vec<String> {
        group.into_iter().map(|q| q.event.name).collect()
    }

    #[test]
    fn expired_triggers_are_answered_504_not_sent_and_withdrawn_ones_leave() {
        let c = coalescer(1, 10);
        let (reply, mut expired) = oneshot::channel();
        c.lock()
            .push_back(queued(0, reply, tokio::time::Instant::now()));
        let _receivers = fill(&c, 1..4, |_| {});
        c.queued(&c.lock());
        assert_eq!(c.gauge.get(), 4);
        assert!(c.withdraw(2));
        assert!(!c.withdraw(2), "withdrawn once");
        let group = c.take_group(&mut c.lock());
        let names: Vec<_> = group.iter().map(|q| q.event.name.as_str()).collect();
        assert_eq!(names, ["ev-1", "ev-3"]);
        let answer = expired.try_recv().expect("answered");
        assert!(matches!(
            answer.result,
            Err(ProxyError::Upstream(UpstreamError::Timeout))
        ));
        assert_eq!(c.gauge.get(), 0);
    }

    /// The state of a proxy for app "1" with `upstream` lines in its
    /// `[upstream]` table, and a runtime for its batch tasks to be spawned
    /// on (and dropped with, unrun).
    fn state_and_runtime(upstream: &str) -> (Arc<State>, tokio::runtime::Runtime) {
        let text = format!(
            "[upstream]\nurl = \"http://127.0.0.1:9\"\n{upstream}\n\
             [[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n"
        );
        let config = crate::Config::from_toml_str(&text, &|_| None).expect("valid");
        let telemetry = Arc::new(crate::telemetry::Telemetry::new(&config));
        let proxy = crate::pipeline::Proxy::new(config, Arc::new(crate::SystemClock), telemetry);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        (proxy.current(), runtime)
    }

    /// A batch task dropped before it ever runs (its worker's runtime
    /// shutting down) still hands its place on: the app's next trigger is
    /// not left waiting for a place that never comes back.
    #[test]
    fn a_batch_task_that_never_runs_gives_its_place_back() {
        let (state, runtime) = state_and_runtime("batch_in_flight = 1");
        let app = state.app("1").expect("the app");
        let entered = runtime.enter();
        // Every place is free: the trigger takes one, and its batch task is
        // spawned, not yet run.
        let (mut answer, _) = app
            .coalescer
            .enqueue(&state, app, pending(0, None), later());
        drop(entered);
        assert_eq!(app.coalescer.in_flight.load(Ordering::SeqCst), 1);
        drop(runtime);
        assert_eq!(
            app.coalescer.in_flight.load(Ordering::SeqCst),
            0,
            "the place is back"
        );
        assert!(
            matches!(answer.try_recv(), Err(oneshot::error::TryRecvError::Closed)),
            "its caller is told, not kept waiting"
        );
    }

    /// A long queue whose batch tasks are each dropped as soon as they
    /// are spawned (their runtime shutting down) is handed on in a loop,
    /// not in a recursion as deep as the queue is long, which would
    /// overflow the thread's stack: every caller is told, and the place
    /// comes back.
    #[test]
    fn a_long_queue_dropped_at_shutdown_is_handed_on_without_recursing() {
        const QUEUED: usize = 20_000;
        let (state, runtime) = state_and_runtime("batch_in_flight = 1\nbatch_max = 2");
        let app = state.app("1").expect("the app");
        let entered = runtime.enter();
        // The first takes the only place; the rest queue behind it.
        let mut answers: Vec<_> = (0..=QUEUED)
            .map(|i| {
                app.coalescer
                    .enqueue(&state, app, pending(i, None), later())
                    .0
            })
            .collect();
        assert_eq!(app.coalescer.lock().len(), QUEUED);
        drop(entered);
        drop(runtime);
        assert_eq!(
            app.coalescer.lock().len(),
            0,
            "the queue is handed on whole"
        );
        assert_eq!(
            app.coalescer.in_flight.load(Ordering::SeqCst),
            0,
            "the place is back"
        );
        assert!(
            answers
                .iter_mut()
                .all(|a| matches!(a.try_recv(), Err(oneshot::error::TryRecvError::Closed))),
            "every caller is told, none kept waiting"
        );
    }

    #[test]
    fn batch_body_carries_each_event_with_its_own_fields_in_order() {
        let events = [pending(0, Some("1.2")), pending(1, None)];
        let body = batch_body(events.iter());
        assert_eq!(
            String::from_utf8(body).ok().as_deref(),
            Some(
                r#"{"batch":[{"name":"ev-0","channel":"room-0","data":"{\"i\":0}","socket_id":"1.2"},{"name":"ev-1","channel":"room-1","data":"{\"i\":1}"}]}"#
            )
        );
    }

    #[test]
    fn only_events_every_upstream_accepts_are_batchable() {
        let name = "e".repeat(MAX_EVENT_NAME_BYTES);
        let long_name = "e".repeat(MAX_EVENT_NAME_BYTES + 1);
        let data = "d".repeat(MAX_BATCHED_DATA_BYTES);
        let long_data = "d".repeat(MAX_BATCHED_DATA_BYTES + 1);
        fn t<'a>(name: &'a str, socket_id: Option<&'a str>, data: &'a str) -> Trigger<'a> {
            Trigger {
                name,
                socket_id,
                data,
            }
        }
        let c = "room";
        assert!(batchable(&t(&name, Some("123.456"), &data), c));
        assert!(!batchable(&t(&long_name, None, "x"), c));
        assert!(!batchable(&t("e", None, &long_data), c));
        assert!(!batchable(&t("e", None, ""), c), "empty data");
        // Pusher's channel limit, whatever the upstream's host says.
        let pusher_max = "c".repeat(crate::pusher::channel::PUSHER_MAX_CHANNEL_LEN);
        assert!(batchable(&t("e", None, "x"), &pusher_max));
        assert!(!batchable(&t("e", None, "x"), &format!("{pusher_max}c")));
        for reserved in [
            "pusher",
            "pusher:x",
            "pusher-notification",
            "Pusher_ev",
            "PUSHERx",
        ] {
            assert!(!batchable(&t(reserved, None, "x"), c), "{reserved}");
        }
        for free in ["pushe", "my-pusher-event", "push", "p"] {
            assert!(batchable(&t(free, None, "x"), c), "{free}");
        }
        for bad in ["1", "1.", ".1", "a.1", "1.2.3", "1 .2", "-1.2"] {
            assert!(!batchable(&t("e", Some(bad), "x"), c), "{bad}");
        }
    }

    #[test]
    fn places_are_bounded_and_kept_for_the_batch() {
        let c = coalescer(2, 10);
        assert!(c.try_reserve());
        assert!(c.try_reserve());
        assert!(!c.try_reserve(), "both places taken");
        let (reply, _answer) = oneshot::channel();
        c.lock().push_back(queued(0, reply, later()));
        let group = c.take_group(&mut c.lock());
        assert_eq!(group.len(), 1);
        assert_eq!(c.in_flight.load(Ordering::Acquire), 2, "kept for the batch");
    }

    #[test]
    fn groups_are_fifo_and_at_most_batch_max() {
        let c = coalescer(1, 3);
        let _receivers = fill(&c, 0..5, |_| {});
        assert_eq!(names(c.take_group(&mut c.lock())), ["ev-0", "ev-1", "ev-2"]);
        assert_eq!(names(c.take_group(&mut c.lock())), ["ev-3", "ev-4"]);
    }

    /// A batch stops taking events before its body would pass
    /// [`MAX_BATCH_BYTES`]; the rest wait, in order, for the next. One
    /// event always goes, whatever its size.
    #[test]
    fn groups_stop_short_of_the_byte_cap() {
        let c = coalescer(1, 100);
        let _receivers = fill(&c, 0..10, |q| q.event.data = "d".repeat(40_000));
        let per_event = c.lock()[0].event.body_bytes();
        let fit = MAX_BATCH_BYTES / per_event;
        assert!((1..10).contains(&fit), "{fit} of 10 fit");
        let first = names(c.take_group(&mut c.lock()));
        assert_eq!(first.len(), fit);
        assert_eq!(first[0], "ev-0");
        let second = names(c.take_group(&mut c.lock()));
        assert_eq!(second[0], format!("ev-{fit}"), "the rest, in order");
        // An event over the cap alone still goes, alone.
        let (reply, _answer) = oneshot::channel();
        let mut huge = queued(99, reply, later());
        huge.event.data = "d".repeat(MAX_BATCH_BYTES);
        let mut queue = c.lock();
        queue.clear();
        queue.push_back(huge);
        drop(queue);
        assert_eq!(c.take_group(&mut c.lock()).len(), 1);
    }

    /// `body_bytes` bounds an event's share of a real `batch_events` body
    /// whatever its strings hold: control characters in the name and data
    /// (6 bytes each, escaped), quotes and backslashes, or plain text.
    #[test]
    fn an_events_byte_bound_holds_for_any_strings() {
        let channel = "c".repeat(crate::pusher::channel::PUSHER_MAX_CHANNEL_LEN);
        for (name, data) in [
            ("\u{1}".repeat(MAX_EVENT_NAME_BYTES), "\u{1f}".repeat(1_000)),
            ("\"\\".repeat(100), "\"".repeat(1_000)),
            ("e".repeat(MAX_EVENT_NAME_BYTES), "d".repeat(1_000)),
        ] {
            let event = Pending {
                channel: channel.clone(),
                name,
                data,
                socket_id: Some("123456789.987654321".to_owned()),
            };
            let alone = batch_body(std::iter::once(&event)).len();
            let two = batch_body([&event, &event].into_iter()).len();
            // What one more event adds to a batch, and the batch's own frame.
            assert!(
                two - alone <= event.body_bytes(),
                "{} > {}",
                two - alone,
                event.body_bytes()
            );
            assert!(
                alone <= event.body_bytes(),
                "{alone} > {}",
                event.body_bytes()
            );
        }
    }

    #[test]
    fn copies_keep_status_and_body() {
        use hyper::StatusCode;
        let cases = [
            ProxyError::Upstream(UpstreamError::Timeout),
            ProxyError::Upstream(UpstreamError::Status(StatusCode::SERVICE_UNAVAILABLE)),
            ProxyError::Upstream(UpstreamError::Connect("refused".into())),
            ProxyError::Upstream(UpstreamError::Body("reset".into())),
            ProxyError::Upstream(UpstreamError::Request("stream reset".into())),
        ];
        for e in &cases {
            let c = copy_error(e);
            assert_eq!((c.status(), c.body()), (e.status(), e.body()), "{e:?}");
            assert_eq!(
                crate::chain::ErrorChain(&c).to_string(),
                crate::chain::ErrorChain(e).to_string()
            );
        }
    }
}
