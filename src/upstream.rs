//! The client to the upstream server, over `http://` or `https://` (rustls
//! with the webpki roots), with every exchange bounded by the configured
//! timeout.
//!
//! Connections are HTTP/1.1 keep-alive connections (`hyper`'s client
//! connections), pooled per worker thread (see [`crate::http::server`]): an
//! exchange takes the most recently used idle connection of its own
//! thread, whose connection task runs on that thread's runtime, or opens
//! one. A connection goes back to its pool once its response has been read
//! to the end. The cap on exchanges in flight is shared by all workers;
//! each worker keeps at most its share of that cap in idle connections.

use std::cell::Cell;
use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Body as _;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HOST, HeaderValue};
use hyper::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_service::Service as _;

use crate::config::UpstreamConfig;

/// Body of a request sent upstream: built by the proxy, or streamed from
/// the caller (passthrough), held to `max_body_bytes`.
pub type OutboundBody = Either<Full<Bytes>, Limited<Incoming>>;

/// A request for the upstream, boxed: it is handed down through several
/// futures (proxy, exchange, timeout, retry loop), each of which would
/// otherwise hold its own copy of it for as long as the request is in
/// flight.
pub type OutboundRequest = Box<Request<OutboundBody>>;

/// An error from the connector, the connection or a body.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// Largest upstream answer buffered for mapping back to a legacy caller.
const MAX_MAPPED_RESPONSE: usize = 1024 * 1024;

/// How long an idle pooled connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Pooled connections tried for one request before opening a new one
/// (each may turn out closed by the upstream meanwhile).
const MAX_REUSE_ATTEMPTS: usize = 3;

/// Why an upstream exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made (refused, unreachable, DNS, TLS, connect
    /// timeout).
    #[error("upstream unreachable")]
    Connect(#[source] BoxError),
    /// The connection failed while sending or receiving (reset, malformed
    /// response).
    #[error("upstream request failed")]
    Request(#[source] hyper::Error),
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
    /// The worker thread's index: which pool its exchanges use.
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// Marks the calling thread as worker `index`, so its exchanges use pool
/// `index` (modulo the number of pools).
pub fn set_worker_index(index: usize) {
    WORKER.with(|w| w.set(index));
}

/// An idle connection in a pool.
#[derive(Debug)]
struct Idle {
    sender: SendRequest<OutboundBody>,
    since: Instant,
}

/// One worker's idle connections, most recently used last.
#[derive(Debug, Default)]
struct Pool {
    idle: Mutex<Vec<Idle>>,
}

/// The connector, the pools and where they point. Cheap to clone; clones
/// share the pools.
#[derive(Clone, Debug)]
pub struct Upstream {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    connector: HttpsConnector<HttpConnector>,
    /// Scheme and authority connections are opened to.
    base: Uri,
    /// The `Host` header of every upstream request.
    host: HeaderValue,
    timeout: Duration,
    /// One permit per upstream exchange in progress: at most
    /// `max_connections` at once, the rest wait.
    slots: Arc<Semaphore>,
    /// One pool per worker thread.
    pools: Box<[Pool]>,
    /// Idle connections each pool keeps at most.
    max_idle_per_pool: usize,
}

/// A connection lent to one exchange: back to its pool when the answer
/// has been read to the end, closed if it is dropped before.
#[derive(Debug)]
struct Lease {
    upstream: Upstream,
    sender: SendRequest<OutboundBody>,
    pool: usize,
}

impl Lease {
    fn release(self) {
        self.upstream.put_back(self.pool, self.sender);
    }
}

/// The right to one upstream exchange: at most `max_connections` are held
/// at once, by all workers together ([`Upstream::slot`]).
#[derive(Debug)]
pub struct Slot {
    /// Held for its drop, which frees the slot.
    _permit: OwnedSemaphorePermit,
}

/// An upstream response body that holds its exchange's connection slot
/// until it has been read to the end (or dropped), and then returns the
/// connection to its pool.
#[derive(Debug)]
pub struct Guarded {
    inner: Incoming,
    slot: Option<Slot>,
    lease: Option<Lease>,
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
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        match &frame {
            Poll::Ready(None) => {
                if let Some(lease) = self.lease.take() {
                    lease.release();
                }
                self.slot = None;
            }
            Poll::Ready(Some(Err(_))) => {
                self.lease = None;
                self.slot = None;
            }
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Upstream {
    /// A client for `config`, with one pool for each of `workers` threads.
    pub fn new(config: &UpstreamConfig, workers: usize) -> Self {
        let workers = workers.max(1);
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        let connector = HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Self {
            inner: Arc::new(Inner {
                connector,
                base: config.url.clone(),
                host: host_header(&config.url),
                timeout: config.timeout,
                slots: Arc::new(Semaphore::new(config.max_connections)),
                pools: (0..workers).map(|_| Pool::default()).collect(),
                max_idle_per_pool: config.max_connections.div_ceil(workers),
            }),
        }
    }

    /// The deadline of an exchange starting now.
    pub fn deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.inner.timeout
    }

    /// Sends `req`; the timeout covers everything up to the response
    /// headers. The body then streams.
    pub async fn send(&self, req: OutboundRequest) -> Result<Response<Guarded>, UpstreamError> {
        let send = async {
            let slot = self.wait_for_slot().await?;
            let (resp, lease) = self.request(req).await?;
            Ok(resp.map(|inner| Guarded {
                inner,
                slot: Some(slot),
                lease: Some(lease),
            }))
        };
        tokio::time::timeout(self.inner.timeout, send)
            .await
            .map_err(|_| UpstreamError::Timeout)?
    }

    /// Waits for a free exchange slot until `deadline`
    /// ([`UpstreamError::Timeout`] then). A caller that builds its request
    /// only once it holds a slot keeps nothing but what it builds it from
    /// while it waits.
    pub async fn slot(&self, deadline: tokio::time::Instant) -> Result<Slot, UpstreamError> {
        tokio::time::timeout_at(deadline, self.wait_for_slot())
            .await
            .unwrap_or(Err(UpstreamError::Timeout))
    }

    async fn wait_for_slot(&self) -> Result<Slot, UpstreamError> {
        self.inner
            .slots
            .clone()
            .acquire_owned()
            .await
            .map(|permit| Slot { _permit: permit })
            .map_err(|_| UpstreamError::Aborted)
    }

    /// Sends `req` on a pooled connection or a new one.
    ///
    /// A request the pooled connection never started writing (it had been
    /// closed meanwhile) is sent again on another, whatever its method. A
    /// bodyless GET or HEAD that fails because its pooled connection turned
    /// out to be closed is sent once more on a fresh one; nothing else is
    /// retried, so a POST can never deliver an event twice.
    ///
    /// Not an `async fn`: the request is prepared before the future is
    /// built, and the future reuses the one slot `req` is captured in for
    /// each attempt (an `async fn` would hold the argument and a mutable
    /// copy of it side by side, in every request in flight).
    fn request(
        &self,
        mut req: OutboundRequest,
    ) -> impl Future<Output = Result<(Response<Incoming>, Lease), UpstreamError>> + Send + '_ {
        req.headers_mut().insert(HOST, self.inner.host.clone());
        let mut retry = retryable_copy(&req);
        let pool = self.pool_index();
        let mut attempts = 0;
        async move {
            loop {
                attempts += 1;
                let pooled = if attempts <= MAX_REUSE_ATTEMPTS {
                    self.take_idle(pool)
                } else {
                    None
                };
                let reused = pooled.is_some();
                let mut sender = match pooled {
                    Some(sender) => sender,
                    // Boxed: opening a connection is rare, and its future is
                    // large; every request's future would otherwise carry it.
                    None => Box::pin(self.connect()).await?,
                };
                match sender.try_send_request(*req).await {
                    Ok(resp) => {
                        let lease = Lease {
                            upstream: self.clone(),
                            sender,
                            pool,
                        };
                        return Ok((resp, lease));
                    }
                    Err(mut failed) => {
                        if reused && let Some(unsent) = failed.take_message() {
                            tracing::debug!(error = %failed.error(), "pooled upstream connection closed; sending on another");
                            *req = unsent;
                            continue;
                        }
                        let error = failed.into_error();
                        if reused
                            && is_stale_connection(&error)
                            && let Some(again) = retry.take()
                        {
                            tracing::debug!(%error, "stale upstream connection; retrying the GET once");
                            req = again;
                            attempts = MAX_REUSE_ATTEMPTS;
                            continue;
                        }
                        return Err(UpstreamError::Request(error));
                    }
                }
            }
        }
    }

    /// The calling worker thread's pool.
    fn pool_index(&self) -> usize {
        WORKER.with(Cell::get) % self.inner.pools.len()
    }

    /// The most recently used idle connection of pool `index` that is
    /// still open and ready.
    fn take_idle(&self, index: usize) -> Option<SendRequest<OutboundBody>> {
        let mut idle = self.inner.pools[index].idle.lock().ok()?;
        while let Some(Idle { sender, since }) = idle.pop() {
            if sender.is_ready() && since.elapsed() < POOL_IDLE_TIMEOUT {
                return Some(sender);
            }
        }
        None
    }

    /// Returns a connection whose exchange is complete to pool `index`. One
    /// that has not yet seen the end of its exchange is waited for in a task
    /// of its own.
    fn put_back(&self, index: usize, mut sender: SendRequest<OutboundBody>) {
        if sender.is_closed() {
            return;
        }
        if !sender.is_ready() {
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            let upstream = self.clone();
            runtime.spawn(async move {
                let ready = tokio::time::timeout(upstream.inner.timeout, sender.ready()).await;
                if let Ok(Ok(())) = ready {
                    upstream.put_back(index, sender);
                }
            });
            return;
        }
        let Ok(mut idle) = self.inner.pools[index].idle.lock() else {
            return;
        };
        // Connections idle too long are closed (dropped) here, oldest first.
        let now = Instant::now();
        let expired = idle
            .iter()
            .take_while(|i| now.duration_since(i.since) >= POOL_IDLE_TIMEOUT)
            .count();
        idle.drain(..expired);
        if idle.len() < self.inner.max_idle_per_pool {
            idle.push(Idle { sender, since: now });
        }
    }

    /// Opens a connection; its task runs on the calling thread's runtime.
    async fn connect(&self) -> Result<SendRequest<OutboundBody>, UpstreamError> {
        let mut connector = self.inner.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(UpstreamError::Connect)?;
        let io = connector
            .call(self.inner.base.clone())
            .await
            .map_err(UpstreamError::Connect)?;
        let (sender, connection) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| UpstreamError::Connect(Box::new(e)))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "upstream connection ended with an error");
            }
        });
        Ok(sender)
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
            let _slot = slot;
            let (resp, lease) = self.request(req).await?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_MAPPED_RESPONSE)
                .collect()
                .await
                .map_err(UpstreamError::Body)?
                .to_bytes();
            lease.release();
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

/// A copy of `req` to send again, if it is a GET or HEAD without a body
/// (boxed: most requests have none, and their futures need not carry room
/// for one).
fn retryable_copy(req: &Request<OutboundBody>) -> Option<Box<Request<OutboundBody>>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return None;
    }
    if !matches!(req.body(), Either::Left(full) if full.size_hint().exact() == Some(0)) {
        return None;
    }
    let mut copy = Request::new(Either::Left(Full::new(Bytes::new())));
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(Box::new(copy))
}

/// Whether a request failed because the (pooled) connection was closed
/// or reset under it, before any answer.
fn is_stale_connection(e: &hyper::Error) -> bool {
    use std::io::ErrorKind;
    if e.is_incomplete_message() || e.is_canceled() {
        return true;
    }
    sources(e).any(|s| {
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

/// The errors beneath `e`, nearest first.
fn sources<'a>(
    e: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(e.source(), |&s| s.source())
}

/// Whether an upstream failure is the caller's body exceeding its limit.
pub fn is_body_limit(e: &UpstreamError) -> bool {
    sources(e).any(|s| s.is::<http_body_util::LengthLimitError>())
}
