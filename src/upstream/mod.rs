//! The client to the upstream server, over `http://` or `https://` (rustls
//! with the webpki roots), HTTP/1.1 or HTTP/2 (`upstream.protocol`), with
//! every exchange bounded by the configured timeout.
//!
//! Each worker thread (see [`crate::http::server`]) has connections of its
//! own, so a connection's task runs on the runtime of the worker whose
//! exchanges it carries:
//! - HTTP/1.1 only (`http1`, or `auto` on `http://`): hyper's HTTP/1.1
//!   client connections in a pool per worker (`h1`), which keeps at most
//!   the worker's share of `max_connections` idle;
//! - HTTP/2 (`h2c`, or `auto` on `https://`): hyper-util's client
//!   ([`Client`]). Each worker has a few clients, one HTTP/2 connection
//!   each carrying many exchanges at once (streams), taken in turn: one
//!   per [`STREAMS_PER_CONNECTION`] exchanges of `max_connections` (all
//!   of them: one worker may hold every slot). Should ALPN pick HTTP/1.1
//!   on `auto`, the client pools HTTP/1.1 connections like the above.
//!
//! The cap on exchanges in flight (`max_connections`) is shared by all
//! workers: an exchange holds a [`Slot`] from before it is sent until its
//! answer has been read. A free slot is taken at once; an exchange that
//! finds none waits, counted in `pusher_cutover_upstream_slot_waiters`,
//! and a wait that runs out in `pusher_cutover_upstream_slot_timeouts_total`
//! ([`SlotMetrics`]).
//!
//! A request that failed is sent again only when it provably never reached
//! the upstream, so that an event is never delivered twice:
//! - HTTP/2: the upstream refused its stream (`REFUSED_STREAM`), or said
//!   GOAWAY with a last stream id below the request's (h2 fails exactly
//!   those streams with the remote GOAWAY);
//! - HTTP/1.1: its pooled connection was found closed before the request
//!   was written (hyper hands such a request back, and it is sent on
//!   another connection).
//!
//! Every body can be sent again: the proxy builds it, or has read the
//! caller's whole before the exchange ([`OutboundBody`]). A request hyper failed before sending it
//! (canceled, or held at a GOAWAY) is sent again unless it is a bodyless
//! GET or HEAD: any other holds its end back with its body, even an empty
//! one ([`SendBy`]), which the upstream then never got
//! ([`never_processed`]). Besides, a bodyless GET or HEAD whose connection
//! broke under it is sent once more (it changes nothing upstream). Nothing
//! else is retried.

use std::cell::Cell;
use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body as _;
use hyper::body::Incoming;
use hyper::header::{HOST, HeaderValue};
use hyper::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

use crate::config::{UpstreamConfig, UpstreamProtocol};
use crate::telemetry::metrics::SlotMetrics;

mod h1;

/// Body of a request sent upstream: whole in memory (built by the proxy,
/// or the caller's, read within `max_body_bytes` and `body_timeout_ms`
/// before a slot is taken), so it can be sent again after the upstream
/// refused it unprocessed.
pub type OutboundBody = Full<Bytes>;

/// A request for the upstream, boxed: it is handed down through several
/// futures (proxy, exchange, timeout, retry loop), each of which would
/// otherwise hold its own copy of it for as long as the request is in
/// flight.
pub type OutboundRequest = Box<Request<OutboundBody>>;

/// An error from the connector, the connection or a body.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// Largest upstream answer buffered for mapping back to a legacy caller.
const MAX_MAPPED_RESPONSE: usize = 1024 * 1024;

/// The least time an HTTP/2 upstream is given to answer a PING
/// (`upstream.ping_interval_ms`, when shorter): a busy but healthy upstream
/// that answers late does not lose its connection, and with it the
/// exchanges on it.
pub const MIN_PING_ACK_WAIT: Duration = Duration::from_secs(1);

/// Exchanges one HTTP/2 connection is meant to carry at once: the least
/// `SETTINGS_MAX_CONCURRENT_STREAMS` RFC 9113 recommends a server allow,
/// and what h2 assumes before the server's settings arrive.
pub const STREAMS_PER_CONNECTION: usize = 100;

/// Times one request is sent at most (the first time included) when the
/// upstream refuses it unprocessed.
const MAX_ATTEMPTS: usize = 3;

/// The client type: HTTP or HTTPS, HTTP/1.1 or HTTP/2.
type UpstreamClient = Client<Connector, SendBy>;

/// Why an upstream exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made (refused, unreachable, DNS, TLS, connect
    /// timeout).
    #[error("upstream unreachable")]
    Connect(#[source] BoxError),
    /// The connection failed while sending or receiving (reset, malformed
    /// response, HTTP/2 stream or connection error).
    #[error("upstream request failed")]
    Request(#[source] BoxError),
    /// The response body could not be read.
    #[error("upstream response body failed")]
    Body(#[source] BoxError),
    /// The upstream took longer than `upstream.timeout_ms`.
    #[error("upstream timed out")]
    Timeout,
    /// The upstream answered a status the legacy route cannot pass on.
    #[error("upstream answered {0}")]
    Status(StatusCode),
    /// The upstream's success body is not what the current API defines.
    #[error("upstream returned a malformed response body")]
    MalformedResponse(#[source] serde_json::Error),
    /// No exchange slot could be had: only if the slot semaphore were
    /// closed, which the proxy never does; kept so that case is an answer,
    /// not a panic.
    #[error("upstream exchange aborted")]
    Aborted,
}

impl UpstreamError {
    /// The status the caller gets: 504 for a timeout, 502 otherwise.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Connect(_)
            | Self::Request(_)
            | Self::Body(_)
            | Self::Status(_)
            | Self::MalformedResponse(_)
            | Self::Aborted => StatusCode::BAD_GATEWAY,
        }
    }
}

/// A buffered upstream answer.
#[derive(Debug)]
pub struct Buffered {
    /// Its status.
    pub status: StatusCode,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body.
    pub body: Bytes,
}

thread_local! {
    /// The worker thread's index: which clients its exchanges use.
    static WORKER: Cell<usize> = const { Cell::new(0) };
    /// The worker's next HTTP/2 connection, in turn.
    static NEXT: Cell<usize> = const { Cell::new(0) };
}

/// Marks the calling thread as worker `index`, so its exchanges use the
/// clients of worker `index` (modulo the number of workers).
pub fn set_worker_index(index: usize) {
    WORKER.with(|w| w.set(index));
}

/// The connections and where they go. Cheap to clone; clones share the
/// connections.
#[derive(Clone, Debug)]
pub struct Upstream {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    transport: Transport,
    /// Scheme and authority of every upstream request.
    scheme: hyper::http::uri::Scheme,
    authority: hyper::http::uri::Authority,
    timeout: Duration,
    /// One permit per upstream exchange in progress: at most
    /// `max_connections` at once, the rest wait.
    slots: Arc<Semaphore>,
    /// Waits for a slot, and those that ran out of time.
    slot_metrics: SlotMetrics,
}

/// How requests travel.
#[derive(Debug)]
enum Transport {
    /// HTTP/1.1 on `http://`: the pools of [`h1`].
    Pool(Arc<h1::Pools>),
    /// hyper-util's clients.
    Clients {
        /// `workers × per_worker` clients, worker by worker.
        clients: Box<[UpstreamClient]>,
        /// Clients (HTTP/2 connections) of each worker.
        per_worker: usize,
    },
}

/// The right to one upstream exchange: at most `max_connections` are held
/// at once, by all workers together ([`Upstream::slot`]). It is taken, and
/// its request sent (and sent again), only before its last moment to send
/// ([`Upstream::send_by`]).
#[derive(Debug)]
pub struct Slot {
    /// Held for its drop, which frees the slot.
    _permit: OwnedSemaphorePermit,
    /// The last moment its request is sent.
    send_by: tokio::time::Instant,
}

impl Slot {
    /// [`UpstreamError::Timeout`] once the slot's last moment to send has
    /// passed: what was to be sent is not.
    fn in_time(&self) -> Result<(), UpstreamError> {
        in_time(self.send_by)
    }
}

/// [`UpstreamError::Timeout`] once `send_by` has passed.
fn in_time(send_by: tokio::time::Instant) -> Result<(), UpstreamError> {
    if tokio::time::Instant::now() >= send_by {
        Err(UpstreamError::Timeout)
    } else {
        Ok(())
    }
}

/// A request body for hyper-util's client that is sent only before its
/// slot's last moment to send ([`Upstream::send_by`]). hyper asks for a
/// body's first frame once the request's head is on its way: after the
/// waits no slot covers, for a connection (its TCP, TLS and HTTP/2
/// handshakes) and for a stream under the upstream's
/// `SETTINGS_MAX_CONCURRENT_STREAMS`. Past that moment the body fails
/// instead; hyper then resets the HTTP/2 stream (or closes the HTTP/1.1
/// connection) before the request's end, and the upstream never has it
/// whole, so a trigger cut at its deadline is not delivered after its
/// caller was answered 504. An empty body is not said to end before it is
/// asked for (hyper would end the request with its head, and never ask),
/// but for a bodyless GET or HEAD, a read, which is sent without this
/// check.
pub struct SendBy {
    inner: OutboundBody,
    /// The last moment to send, until the first frame was asked for.
    send_by: Option<tokio::time::Instant>,
}

impl hyper::body::Body for SendBy {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        if let Some(send_by) = self.send_by.take()
            && let Err(late) = in_time(send_by)
        {
            return Poll::Ready(Some(Err(late.into())));
        }
        Pin::new(&mut self.inner)
            .poll_frame(cx)
            .map_err(|never| match never {})
    }

    fn is_end_stream(&self) -> bool {
        self.send_by.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// An upstream response body that holds its exchange's slot until it has
/// been read to the end, failed or been dropped; then an HTTP/1.1
/// connection of `h1` returns to its pool (only if read to the end). A
/// body the upstream cut short ends with an error frame (an HTTP/1.1
/// connection closed early, an HTTP/2 stream reset), so the caller's answer
/// is cut too, not completed.
///
/// The exchange's deadline (`upstream.timeout_ms` from its start) covers
/// the body too: a body still not complete then ends with an
/// [`UpstreamError::Timeout`] error frame and lets its slot go, so an
/// upstream that stalls mid-answer cannot hold slots for ever. Its timer is
/// made only when the body is not all there at once (most answers arrive
/// with their head).
#[derive(Debug)]
pub struct Guarded {
    inner: Incoming,
    slot: Option<Slot>,
    lease: Option<h1::Lease>,
    deadline: tokio::time::Instant,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Drop for Guarded {
    /// A body the server stopped reading because it knew it was complete
    /// (its declared length was reached) still returns its connection.
    fn drop(&mut self) {
        if self.inner.is_end_stream()
            && let Some(lease) = self.lease.take()
        {
            lease.release();
        }
    }
}

impl hyper::body::Body for Guarded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                if let Some(lease) = this.lease.take() {
                    lease.release();
                }
                this.slot = None;
                this.timer = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(error))) => {
                this.lease = None;
                this.slot = None;
                this.timer = None;
                Poll::Ready(Some(Err(error.into())))
            }
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Pending => {
                let deadline = this.deadline;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                // Past the exchange's deadline with the body unfinished:
                // the connection is not reused (the lease goes without
                // being released) and the slot is free again.
                this.lease = None;
                this.slot = None;
                this.timer = None;
                Poll::Ready(Some(Err(UpstreamError::Timeout.into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Upstream {
    /// A client for `config`, with clients of its own for each of `workers`
    /// threads, whose exchange slots `slot_metrics` follows from now on.
    pub fn new(config: &UpstreamConfig, workers: usize, slot_metrics: &SlotMetrics) -> Self {
        Self::with_slots(config, workers, slot_metrics, None)
    }

    /// A client for `config` replacing `previous` (a reload that changed
    /// an `upstream.*` setting): while the upstream server and
    /// `max_connections` stay, it takes its slots from the same
    /// `max_connections`, so that the exchanges still in flight on
    /// `previous` count against the one bound.
    pub fn replacing(
        previous: &Self,
        previous_config: &UpstreamConfig,
        config: &UpstreamConfig,
        workers: usize,
        slot_metrics: &SlotMetrics,
    ) -> Self {
        let same_bound = previous_config.url == config.url
            && previous_config.max_connections == config.max_connections;
        let slots = same_bound.then(|| previous.inner.slots.clone());
        Self::with_slots(config, workers, slot_metrics, slots)
    }

    fn with_slots(
        config: &UpstreamConfig,
        workers: usize,
        slot_metrics: &SlotMetrics,
        slots: Option<Arc<Semaphore>>,
    ) -> Self {
        let workers = workers.max(1);
        let https = config.url.scheme_str() == Some("https");
        let protocol = config.protocol;
        let may_be_h2 = match protocol {
            UpstreamProtocol::H2c => true,
            UpstreamProtocol::Auto => https,
            UpstreamProtocol::Http1 => false,
        };
        let share = config.max_connections.div_ceil(workers).max(1);
        // Enough streams on each worker's connections for all the slots,
        // not its share: slots are shared by the workers, and one busy
        // worker may hold them all (a stream over the upstream's limit
        // would wait inside hyper, holding a slot).
        let per_worker = if may_be_h2 {
            config
                .max_connections
                .div_ceil(STREAMS_PER_CONNECTION)
                .max(1)
        } else {
            1
        };
        let connector = connector(config);
        let transport = if !may_be_h2 {
            Transport::Pool(Arc::new(h1::Pools::new(
                connector,
                config.url.clone(),
                host_header(&config.url),
                config.timeout,
                config.idle_timeout,
                workers,
                share,
            )))
        } else {
            let mut builder = Client::builder(TokioExecutor::new());
            builder
                .pool_idle_timeout(config.idle_timeout)
                .pool_timer(TokioTimer::new())
                .pool_max_idle_per_host(share)
                .http2_only(protocol == UpstreamProtocol::H2c)
                .retry_canceled_requests(true)
                .set_host(true);
            // An HTTP/2 connection carries every exchange of its client,
            // and a timed-out exchange resets only its stream: a connection
            // whose peer went silent (host gone, flow dropped by a
            // firewall) is found by an unanswered PING and closed, and the
            // next exchange opens another.
            if let Some(interval) = config.ping_interval {
                builder
                    .timer(TokioTimer::new())
                    .http2_keep_alive_interval(interval)
                    .http2_keep_alive_timeout(interval.max(MIN_PING_ACK_WAIT))
                    .http2_keep_alive_while_idle(true);
            }
            Transport::Clients {
                clients: (0..workers * per_worker)
                    .map(|_| builder.build(connector.clone()))
                    .collect(),
                per_worker,
            }
        };
        let authority = config
            .url
            .authority()
            .cloned()
            .unwrap_or_else(|| hyper::http::uri::Authority::from_static("localhost"));
        let scheme = config
            .url
            .scheme()
            .cloned()
            .unwrap_or(hyper::http::uri::Scheme::HTTP);
        let slots = slots.unwrap_or_else(|| Arc::new(Semaphore::new(config.max_connections)));
        slot_metrics.follow(&slots, config.max_connections);
        Self {
            inner: Arc::new(Inner {
                transport,
                scheme,
                authority,
                timeout: config.timeout,
                slots,
                slot_metrics: slot_metrics.clone(),
            }),
        }
    }

    /// The deadline of an exchange starting now.
    pub fn deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.inner.timeout
    }

    /// Sends `req`; the timeout covers the whole exchange: the wait for a
    /// slot, the response headers and then the body, which streams
    /// ([`Guarded`]), holding the exchange's slot. `sent` runs once the
    /// slot is held, just before the request goes (a request that found no
    /// slot in time is answered 504 and never sent).
    pub async fn send(
        &self,
        req: OutboundRequest,
        sent: impl FnOnce(),
    ) -> Result<Response<Guarded>, UpstreamError> {
        let deadline = self.deadline();
        let send = async {
            let slot = self.slot(deadline).await?;
            sent();
            let (resp, lease) = self.request(req, &slot).await?;
            Ok(resp.map(|inner| Guarded {
                inner,
                slot: Some(slot),
                lease,
                deadline,
                timer: None,
            }))
        };
        tokio::time::timeout_at(deadline, send)
            .await
            .map_err(|_| UpstreamError::Timeout)?
    }

    /// Waits for a free exchange slot for an exchange that ends at
    /// `deadline`, until the last moment it may still be sent
    /// ([`Self::send_by`]); [`UpstreamError::Timeout`] then, and the
    /// request is not sent. A caller that builds its request only once it
    /// holds a slot keeps nothing but what it builds it from while it
    /// waits.
    pub async fn slot(&self, deadline: tokio::time::Instant) -> Result<Slot, UpstreamError> {
        self.slot_by(self.send_by(deadline)).await
    }

    /// Waits for a free exchange slot until `send_by`
    /// ([`UpstreamError::Timeout`] then). Past `send_by` no slot is taken,
    /// free or not: every exchange, whichever route it comes from, is sent
    /// only while it has the least time left ([`Self::send_by`]).
    pub async fn slot_by(&self, send_by: tokio::time::Instant) -> Result<Slot, UpstreamError> {
        in_time(send_by)?;
        // A free slot is taken without a timer or a count.
        let permit = match self.inner.slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => return Err(UpstreamError::Aborted),
            Err(TryAcquireError::NoPermits) => {
                let _waiting = self.inner.slot_metrics.waiting();
                tokio::time::timeout_at(send_by, self.wait_for_slot())
                    .await
                    .unwrap_or_else(|_| {
                        self.inner.slot_metrics.timed_out();
                        Err(UpstreamError::Timeout)
                    })?
            }
        };
        Ok(Slot {
            _permit: permit,
            send_by,
        })
    }

    /// The last moment an exchange that ends at `deadline` is sent: while
    /// a tenth of `upstream.timeout_ms` is left, the least it is sent with.
    /// One that would have less (it waited for a slot for most of its
    /// time) is answered 504 unsent, rather than
    /// sent to be cut at its deadline while the upstream may act on it: a
    /// trigger would then be delivered although its caller was told it
    /// timed out, and again when the caller retries.
    pub fn send_by(&self, deadline: tokio::time::Instant) -> tokio::time::Instant {
        deadline
            .checked_sub(self.inner.timeout / 10)
            .unwrap_or(deadline)
    }

    async fn wait_for_slot(&self) -> Result<OwnedSemaphorePermit, UpstreamError> {
        self.inner
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| UpstreamError::Aborted)
    }

    /// Sends `req` in `slot` on the calling worker's connections, again
    /// while the upstream provably did not process it (see the module's
    /// doc) and the slot is in time ([`Slot::in_time`]; past it,
    /// [`UpstreamError::Timeout`]: the request was not processed); with the
    /// [`h1`] connection to return once the answer has been read.
    async fn request(
        &self,
        req: OutboundRequest,
        slot: &Slot,
    ) -> Result<(Response<Incoming>, Option<h1::Lease>), UpstreamError> {
        let worker = WORKER.with(Cell::get);
        match &self.inner.transport {
            Transport::Pool(pools) => {
                let idempotent = is_bodyless_read(&req);
                let (resp, lease) = pools
                    .request(req, worker, idempotent, slot, &self.inner.slot_metrics)
                    .await?;
                Ok((resp, Some(lease)))
            }
            Transport::Clients {
                clients,
                per_worker,
            } => {
                let client = pick(clients, *per_worker, worker);
                Ok((self.send_with(client, req, slot).await?, None))
            }
        }
    }

    /// Sends `req` with hyper-util's `client`, again while the upstream
    /// provably did not process it (see the module's doc) and `slot` is in
    /// time. (hyper-util's own retry of a request hyper handed back unsent
    /// follows at once, with no such check.)
    ///
    /// Not an `async fn`: the request is prepared before the future is
    /// built, and the future reuses the one box `req` is in for each
    /// attempt.
    fn send_with<'a>(
        &'a self,
        client: &'a UpstreamClient,
        mut req: OutboundRequest,
        slot: &'a Slot,
    ) -> impl Future<Output = Result<Response<Incoming>, UpstreamError>> + Send + 'a {
        let prepared = self.prepare(&mut req);
        let idempotent = is_bodyless_read(&req);
        // Whether the upstream gets the request's end only with its body:
        // any request but a bodyless GET or HEAD, whose head ends it
        // ([`SendBy`] holds an empty body's end back for its check).
        let sends_body = !idempotent;
        async move {
            prepared?;
            let mut attempts = 0;
            loop {
                attempts += 1;
                // Kept until the answer comes, in case the upstream refuses
                // the request unprocessed (only a body the proxy built).
                let again = (attempts < MAX_ATTEMPTS).then(|| replayable_copy(&req));
                let error = match client
                    .request(req.map(|inner| SendBy {
                        inner,
                        send_by: (!idempotent).then_some(slot.send_by),
                    }))
                    .await
                {
                    Ok(resp) => return Ok(resp),
                    Err(error) => error,
                };
                if refused_for_time(&error, slot) {
                    return Err(UpstreamError::Timeout);
                }
                let Some(again) = again else {
                    return Err(upstream_error(error));
                };
                let reason = if never_processed(&error, sends_body) {
                    tracing::debug!(%error, attempts, "the upstream provably did not process the request; sending it again");
                    "not_processed"
                } else if idempotent && attempts == 1 && is_stale_connection(&error) {
                    tracing::debug!(%error, "upstream connection broke under a GET; sending it once more");
                    "stale_connection"
                } else {
                    return Err(upstream_error(error));
                };
                slot.in_time()?;
                self.inner.slot_metrics.resent(reason);
                req = again;
            }
        }
    }

    /// Readies `req` for hyper-util's client: the upstream's scheme and
    /// authority in its target, and not the caller's `Host`.
    fn prepare(&self, req: &mut Request<OutboundBody>) -> Result<(), UpstreamError> {
        let mut parts = hyper::http::uri::Parts::default();
        parts.scheme = Some(self.inner.scheme.clone());
        parts.authority = Some(self.inner.authority.clone());
        parts.path_and_query = Some(
            req.uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| hyper::http::uri::PathAndQuery::from_static("/")),
        );
        *req.uri_mut() = Uri::from_parts(parts).map_err(|e| UpstreamError::Request(Box::new(e)))?;
        // HTTP/2 names the host in `:authority`; on an HTTP/1.1 connection
        // (ALPN) hyper-util adds `Host` from the target itself.
        req.headers_mut().remove(HOST);
        Ok(())
    }

    /// Sends `req` in `slot` and reads the whole answer, all before
    /// `deadline`; the slot is free again when it returns.
    pub async fn exchange(
        &self,
        slot: Slot,
        req: OutboundRequest,
        deadline: tokio::time::Instant,
    ) -> Result<Buffered, UpstreamError> {
        let exchange = async {
            let (resp, lease) = self.request(req, &slot).await?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_MAPPED_RESPONSE)
                .collect()
                .await
                .map_err(UpstreamError::Body)?
                .to_bytes();
            if let Some(lease) = lease {
                lease.release();
            }
            Ok(Buffered {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout_at(deadline, exchange)
            .await
            .unwrap_or(Err(UpstreamError::Timeout))
    }
}

/// Worker `worker`'s client among `clients` (its next one, on HTTP/2).
fn pick(clients: &[UpstreamClient], per_worker: usize, worker: usize) -> &UpstreamClient {
    let workers = clients.len() / per_worker;
    let turn = if per_worker > 1 {
        NEXT.with(|n| {
            let turn = n.get();
            n.set(turn.wrapping_add(1));
            turn % per_worker
        })
    } else {
        0
    };
    &clients[(worker % workers) * per_worker + turn]
}

/// `ping_interval` as a TCP keep-alive idle time Linux accepts: whole
/// seconds, 1 to 32,767.
fn tcp_keepalive_idle(ping_interval: Duration) -> Duration {
    Duration::from_secs(ping_interval.as_secs().clamp(1, 32_767))
}

/// The upstream's connector: TCP, then TLS on `https://`, the whole of it
/// bounded by `upstream.connect_timeout_ms` (hyper-util's TCP connector
/// bounds only the TCP connect, and hyper-rustls's handshake has no bound
/// of its own: an upstream that accepts TCP and stalls its TLS handshake
/// would hold each call until `upstream.timeout_ms`, answered 504, where
/// it is a connection failure, 502).
#[derive(Clone, Debug)]
pub(crate) struct Connector {
    inner: HttpsConnector<HttpConnector>,
    timeout: Duration,
}

/// A connection not made within `upstream.connect_timeout_ms`, TLS
/// handshake included.
#[derive(Debug, thiserror::Error)]
#[error("no connection within upstream.connect_timeout_ms ({} ms): name lookup, TCP connect and any TLS handshake", .0.as_millis())]
pub struct ConnectTimedOut(Duration);

impl tower_service::Service<Uri> for Connector {
    type Response = <HttpsConnector<HttpConnector> as tower_service::Service<Uri>>::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let timeout = self.timeout;
        Box::pin(async move {
            tokio::time::timeout(timeout, connecting)
                .await
                .unwrap_or_else(|_| Err(Box::new(ConnectTimedOut(timeout))))
        })
    }
}

/// The connector for `config`: TCP, TLS on `https://` offering by ALPN
/// what `upstream.protocol` allows, within the connect timeout.
fn connector(config: &UpstreamConfig) -> Connector {
    Connector {
        inner: tcp_and_tls(config),
        timeout: config.connect_timeout,
    }
}

/// [`connector`]'s TCP and TLS, TCP with the connect timeout too.
fn tcp_and_tls(config: &UpstreamConfig) -> HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(config.connect_timeout));
    // Linux takes whole seconds from 1 to 32,767 for the probes' idle
    // time and refuses (silently, to us) anything else, which would leave
    // the system's two hours: the interval is brought into that range.
    http.set_keepalive(config.ping_interval.map(tcp_keepalive_idle));
    let builder = match config.ca_certificates.as_deref() {
        Some(certificates) => {
            HttpsConnectorBuilder::new().with_tls_config(private_roots(certificates))
        }
        None => HttpsConnectorBuilder::new().with_webpki_roots(),
    }
    .https_or_http();
    match config.protocol {
        UpstreamProtocol::Http1 => builder.enable_http1().wrap_connector(http),
        UpstreamProtocol::H2c => builder.enable_http2().wrap_connector(http),
        UpstreamProtocol::Auto => builder.enable_all_versions().wrap_connector(http),
    }
}

/// A TLS client configuration that trusts `certificates` alone
/// (`upstream.ca_file`, checked when the configuration was loaded), with
/// rustls's safe defaults and *ring*, as the Mozilla-roots one has.
fn private_roots(
    certificates: &[pki_types::CertificateDer<'static>],
) -> tokio_rustls::rustls::ClientConfig {
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    let _ = roots.add_parsable_certificates(certificates.iter().cloned());
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        // Fails only for a provider without TLS 1.2 and 1.3 suites; *ring*
        // has both (and there is no fallback to other roots: it fails
        // closed).
        .expect("invariant: ring's provider supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// The upstream request target for a path and query the proxy built
/// (`/apps/…?…`); the string becomes the URI's storage without a copy.
pub fn target(path_and_query: String) -> Result<Uri, hyper::http::Error> {
    Ok(Uri::try_from(path_and_query)?)
}

/// The origin form (`/path?query`) of a request target the server has
/// parsed already (also when it came in absolute form): not parsed again.
pub fn origin_form(uri: &Uri) -> Uri {
    let mut parts = hyper::http::uri::Parts::default();
    parts.path_and_query = uri.path_and_query().cloned();
    Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"))
}

/// `Host` for `url`: its host, and its port unless the scheme's default.
fn host_header(url: &Uri) -> HeaderValue {
    let host = url.host().unwrap_or("localhost");
    let default_port = match url.scheme_str() {
        Some("https") => 443,
        _ => 80,
    };
    let text = match url.port_u16() {
        Some(port) if port != default_port => format!("{host}:{port}"),
        _ => host.to_owned(),
    };
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static("localhost"))
}

/// The client's error as the proxy's.
fn upstream_error(error: hyper_util::client::legacy::Error) -> UpstreamError {
    if error.is_connect() {
        UpstreamError::Connect(Box::new(error))
    } else {
        UpstreamError::Request(Box::new(error))
    }
}

/// Whether a request failed because its body was refused for its time
/// ([`SendBy`]): past the slot's last moment to send, the body's own
/// error in the chain (HTTP/1.1), or a reset of the stream by the proxy's
/// user side (HTTP/2: hyper fails the request with the reset it sent, not
/// with the body's error; h2's own resets, of a malformed answer, are
/// not). Such a request was not processed.
fn refused_for_time(error: &(dyn StdError + 'static), slot: &Slot) -> bool {
    slot.in_time().is_err()
        && chain(error).any(|e| {
            matches!(
                e.downcast_ref::<UpstreamError>(),
                Some(UpstreamError::Timeout)
            ) || e
                .downcast_ref::<h2::Error>()
                .is_some_and(|h2| h2.is_reset() && !h2.is_remote() && !h2.is_library())
        })
}

/// Whether `req` is a GET or HEAD without a body.
fn is_bodyless_read(req: &Request<OutboundBody>) -> bool {
    (req.method() == Method::GET || req.method() == Method::HEAD)
        && req.body().size_hint().exact() == Some(0)
}

/// A copy of `req` to send again (its body is shared, not copied); boxed,
/// like the request.
fn replayable_copy(req: &Request<OutboundBody>) -> OutboundRequest {
    let mut copy = Request::new(req.body().clone());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Box::new(copy)
}

/// Whether a request failed in a way that proves the upstream did not
/// process it:
/// - on HTTP/2, its stream was refused (`REFUSED_STREAM`, RFC 9113 §8.7),
///   or the upstream's GOAWAY named a last stream below it (h2 fails
///   exactly those streams, and the requests not yet sent on that
///   connection, with the remote GOAWAY; a stream at or below the last one
///   that is cut afterwards fails with the connection's I/O error
///   instead). Both only as the upstream's own word (`is_remote`), not
///   h2's;
/// - with `sends_body` (the request's end goes with its body, even an
///   empty one: any but a bodyless GET or HEAD, see [`SendBy`]), hyper
///   failed it before it started sending its body, so the upstream never
///   had it whole: hyper canceled it ([`hyper::Error::is_canceled`]), or
///   failed it with an h2 error made of a reason alone (`held_by_hyper`).
///   On HTTP/1.1 hyper
///   cancels a request it never started writing. On HTTP/2 (since hyper
///   1.13) a request that was waiting for its stream to open (the
///   upstream's `SETTINGS_MAX_CONCURRENT_STREAMS` reached) when the
///   upstream said GOAWAY fails so: canceled for a graceful GOAWAY, with
///   the GOAWAY's reason otherwise. That is whether or not the stream
///   opened meanwhile: h2 still opens a waiting stream after a GOAWAY with
///   the largest stream id (how load balancers and Google's front ends
///   drain a connection), and the upstream gets its head, then
///   `RST_STREAM`, never its body. A bodyless GET's or HEAD's head ends
///   its stream, so such a one may have been processed: not proof.
///
/// On HTTP/1.1 a request the connection never started writing is handed
/// back by hyper and sent again by hyper-util's client before it fails;
/// should it fail all the same (its connection was not a reused one), it
/// fails as canceled.
pub fn never_processed(error: &(dyn StdError + 'static), sends_body: bool) -> bool {
    chain(error).any(|e| {
        e.downcast_ref::<h2::Error>().is_some_and(|h2| {
            h2.is_remote()
                && (h2.is_go_away()
                    || (h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM)))
        }) || (sends_body
            && (e
                .downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_canceled)
                || e.downcast_ref::<h2::Error>().is_some_and(held_by_hyper)))
    })
}

/// Whether an h2 error is hyper's own failure of a request it still held,
/// unsent: made of a reason alone, not a stream's reset, a GOAWAY or an
/// I/O error (which h2 reports for the streams it sent). hyper's HTTP/2
/// client makes such an error for a request waiting for its stream to
/// open when the upstream says GOAWAY with an error, from the GOAWAY's
/// reason (and for a `CONNECT`, which the proxy never sends).
fn held_by_hyper(h2: &h2::Error) -> bool {
    h2.reason().is_some() && !h2.is_reset() && !h2.is_go_away() && !h2.is_io()
}

/// Whether a request failed because its connection was closed or reset
/// under it, before any answer.
fn is_stale_connection(e: &(dyn StdError + 'static)) -> bool {
    use std::io::ErrorKind;
    chain(e).any(|s| {
        s.downcast_ref::<hyper::Error>()
            .is_some_and(|h| h.is_incomplete_message() || h.is_canceled())
            || s.downcast_ref::<std::io::Error>().is_some_and(|io| {
                matches!(
                    io.kind(),
                    ErrorKind::ConnectionReset
                        | ErrorKind::BrokenPipe
                        | ErrorKind::ConnectionAborted
                        | ErrorKind::UnexpectedEof
                )
            })
    })
}

/// `e` and the errors beneath it, nearest first.
fn chain<'a>(
    e: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(e), |&s| s.source())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A configuration with one app and one upstream slot, whose
    /// `[upstream]` section is `upstream` and `max_connections = 1`.
    fn one_slot_config(upstream: &str) -> crate::Config {
        crate::Config::from_toml_str(
            &format!(
                "[upstream]\n{upstream}\nmax_connections = 1\n\
                 [[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n"
            ),
            &|_| None,
        )
        .expect("valid")
    }

    /// No slot is taken past the moment an exchange may still be sent,
    /// even a free one; before it, a free slot is taken at once.
    #[tokio::test]
    async fn no_slot_is_taken_past_the_last_moment_to_send() {
        let config = one_slot_config("url = \"http://127.0.0.1:9\"");
        let metrics = SlotMetrics::default();
        let upstream = Upstream::new(&config.upstream, 1, &metrics);
        let now = tokio::time::Instant::now();
        assert!(matches!(
            upstream.slot_by(now).await,
            Err(UpstreamError::Timeout)
        ));
        // A deadline with less than a tenth of the timeout (10 s) left.
        assert!(matches!(
            upstream.slot(now + Duration::from_millis(900)).await,
            Err(UpstreamError::Timeout)
        ));
        let slot = upstream
            .slot(now + Duration::from_secs(5))
            .await
            .expect("a free slot, in time");
        drop(slot);
    }

    /// A client that replaces another on a reload takes its slots from the
    /// same bound while the server and `max_connections` stay (here only
    /// the timeout changed): the old client's exchange in flight holds
    /// the one slot. A new server or bound starts a bound of its own.
    #[tokio::test]
    async fn a_replacing_client_shares_the_bound_of_the_one_it_replaces() {
        let metrics = SlotMetrics::default();
        let old = one_slot_config("url = \"http://127.0.0.1:9\"").upstream;
        let previous = Upstream::new(&old, 1, &metrics);
        let in_flight = previous
            .slot(tokio::time::Instant::now() + Duration::from_secs(5))
            .await
            .expect("the one slot");
        let soon = || tokio::time::Instant::now() + Duration::from_millis(100);
        let same = one_slot_config("url = \"http://127.0.0.1:9\"\ntimeout_ms = 20000").upstream;
        let replacing = Upstream::replacing(&previous, &old, &same, 1, &metrics);
        assert!(
            matches!(replacing.slot_by(soon()).await, Err(UpstreamError::Timeout)),
            "the slot is the old exchange's"
        );
        let other_server = one_slot_config("url = \"http://127.0.0.1:10\"").upstream;
        let own = Upstream::replacing(&previous, &old, &other_server, 1, &metrics);
        assert!(own.slot_by(soon()).await.is_ok(), "another server's bound");
        let mut wider = one_slot_config("url = \"http://127.0.0.1:9\"").upstream;
        wider.max_connections = 2;
        let own = Upstream::replacing(&previous, &old, &wider, 1, &metrics);
        assert!(own.slot_by(soon()).await.is_ok(), "a new bound");
        drop(in_flight);
        assert!(
            replacing.slot_by(soon()).await.is_ok(),
            "freed by the old client"
        );
    }

    /// Over HTTP/1.1, a request whose last moment to send passes after its
    /// slot was taken (here: before its connection is opened) is answered
    /// [`UpstreamError::Timeout`] and not written on the new connection.
    #[tokio::test]
    async fn a_request_past_its_last_moment_is_not_sent_on_a_new_http1_connection() {
        use tokio::io::AsyncReadExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("its address");
        let config = one_slot_config(&format!("url = \"http://{addr}\"\nprotocol = \"http1\""));
        let metrics = SlotMetrics::default();
        let upstream = Upstream::new(&config.upstream, 1, &metrics);
        let slot = upstream
            .slot_by(tokio::time::Instant::now() + Duration::from_millis(50))
            .await
            .expect("a free slot, in time");
        tokio::time::sleep(Duration::from_millis(80)).await;
        let mut req = Request::new(Full::new(Bytes::from_static(b"{}")));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = Uri::from_static("/apps/1/events");
        // The listener never answers: a request sent would wait here.
        let sent = tokio::time::timeout(
            Duration::from_secs(5),
            upstream.request(Box::new(req), &slot),
        )
        .await
        .expect("refused at once, not sent and waited for");
        assert!(matches!(sent, Err(UpstreamError::Timeout)), "{sent:?}");
        // The connection was opened for it, then closed with nothing on it.
        let (mut conn, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
            .await
            .expect("the connection opened for the request")
            .expect("accepted");
        let mut written = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut written))
            .await
            .expect("closed by the proxy")
            .expect("read");
        assert!(
            written.is_empty(),
            "written: {:?}",
            String::from_utf8_lossy(&written)
        );
    }

    /// Over HTTP/2, a request that waited inside hyper for a stream (the
    /// upstream takes one at a time) until past its last moment to send
    /// is answered [`UpstreamError::Timeout`], and the upstream never gets
    /// it whole: its stream is reset before its end. A POST without a body
    /// too, whose head would otherwise end it.
    #[tokio::test]
    async fn a_request_waiting_for_a_stream_past_its_last_moment_is_not_sent_whole() {
        for late_body in [&b"{}"[..], b""] {
            waiting_for_a_stream_past_the_last_moment(late_body).await;
        }
    }

    async fn waiting_for_a_stream_past_the_last_moment(late_body: &'static [u8]) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("its address");
        let config = crate::Config::from_toml_str(
            &format!(
                "[upstream]\nurl = \"http://{addr}\"\nprotocol = \"h2c\"\n\
                 max_connections = 2\n[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n"
            ),
            &|_| None,
        )
        .expect("valid");
        // Requests the upstream got to their end; the first is answered
        // only once `release` fires, holding the one stream till then.
        let whole = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let server = {
            let whole = whole.clone();
            tokio::spawn(async move {
                let (stream, _) = listener.accept().await.expect("accepted");
                let mut conn = h2::server::Builder::new()
                    .max_concurrent_streams(1)
                    .handshake::<_, Bytes>(stream)
                    .await
                    .expect("h2 handshake");
                let mut released = Some(released);
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let whole = whole.clone();
                    let hold = released.take();
                    tokio::spawn(async move {
                        let mut body = req.into_body();
                        while let Some(chunk) = body.data().await {
                            let Ok(chunk) = chunk else { return };
                            let _ = body.flow_control().release_capacity(chunk.len());
                        }
                        whole.fetch_add(1, Ordering::SeqCst);
                        if let Some(hold) = hold {
                            let _ = hold.await;
                        }
                        let _ = respond.send_response(Response::new(()), true);
                    });
                }
            })
        };
        let upstream = Upstream::new(&config.upstream, 1, &SlotMetrics::default());
        let now = tokio::time::Instant::now();
        let first_slot = upstream
            .slot_by(now + Duration::from_secs(5))
            .await
            .expect("a slot");
        let late_slot = upstream
            .slot_by(now + Duration::from_millis(200))
            .await
            .expect("a slot");
        let post = |body: &'static [u8]| {
            let mut req = Request::new(Full::new(Bytes::from_static(body)));
            *req.method_mut() = Method::POST;
            *req.uri_mut() = Uri::from_static("/apps/1/events");
            Box::new(req)
        };
        let bounded = Duration::from_secs(5);
        let (first, late, ()) = tokio::join!(
            tokio::time::timeout(bounded, upstream.request(post(b"{}"), &first_slot)),
            tokio::time::timeout(bounded, async {
                // After the first has taken the one stream.
                tokio::time::sleep(Duration::from_millis(50)).await;
                upstream.request(post(late_body), &late_slot).await
            }),
            async {
                tokio::time::sleep(Duration::from_millis(400)).await;
                let _ = release.send(());
            },
        );
        let (resp, _) = first
            .expect("answered in time")
            .expect("the first is served");
        assert_eq!(resp.status(), StatusCode::OK);
        let late = late.expect("answered in time");
        assert!(
            matches!(late, Err(UpstreamError::Timeout)),
            "{late_body:?}: {late:?}"
        );
        // Time for a body sent anyway to arrive.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            whole.load(Ordering::SeqCst),
            1,
            "{late_body:?}: only the first arrived whole"
        );
        server.abort();
    }

    fn h2_error(reason: h2::Reason) -> h2::Error {
        h2::Error::from(reason)
    }

    #[test]
    fn the_tcp_keepalive_idle_time_is_one_linux_accepts() {
        for (ping_ms, secs) in [(100, 1), (1_500, 1), (10_000, 10), (40_000_000, 32_767)] {
            assert_eq!(
                tcp_keepalive_idle(Duration::from_millis(ping_ms)),
                Duration::from_secs(secs),
                "{ping_ms} ms"
            );
        }
    }

    #[test]
    fn only_the_upstreams_refusal_proves_a_bodyless_request_unprocessed() {
        // Not the upstream's word: a reason alone (as made locally), or a
        // connection's I/O error.
        assert!(!never_processed(
            &h2_error(h2::Reason::REFUSED_STREAM),
            false
        ));
        assert!(!never_processed(&h2_error(h2::Reason::NO_ERROR), false));
        for sends_body in [false, true] {
            let io = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "cut");
            assert!(!never_processed(&io, sends_body));
        }
    }

    #[test]
    fn a_bare_reason_is_hyper_failing_a_request_it_held() {
        // What hyper makes of an error GOAWAY for a request it still held
        // (`Error::new_h2(reason.into())`): an h2 error of a reason alone.
        let held = h2_error(h2::Reason::ENHANCE_YOUR_CALM);
        assert!(held_by_hyper(&held));
        assert!(never_processed(&held, true), "its body was never sent");
        assert!(!never_processed(&held, false), "its head ended its stream");
    }

    #[test]
    fn a_bodyless_get_is_a_read_a_post_is_not() {
        let get = Request::new(Full::new(Bytes::new()));
        assert!(is_bodyless_read(&get));
        let mut post = Request::new(Full::new(Bytes::new()));
        *post.method_mut() = Method::POST;
        assert!(!is_bodyless_read(&post));
        let with_body = Request::new(Full::new(Bytes::from_static(b"x")));
        assert!(!is_bodyless_read(&with_body));
    }

    #[test]
    fn a_built_body_is_copied_to_send_again() {
        let mut req = Request::new(Full::new(Bytes::from_static(b"{}")));
        *req.method_mut() = Method::POST;
        req.headers_mut()
            .insert("x-a", HeaderValue::from_static("1"));
        let copy = replayable_copy(&req);
        assert_eq!(copy.method(), Method::POST);
        assert_eq!(copy.headers()["x-a"], "1");
        assert_eq!(copy.body().size_hint().exact(), Some(2));
    }
}
