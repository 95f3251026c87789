//! The pooled client to the upstream server, over `http://` or `https://`
//! (rustls with the webpki roots), with every exchange bounded by the
//! configured timeout.
//!
//! Each worker thread (see [`crate::server`]) has a pool of its own, so an
//! exchange uses a connection driven by its own thread's runtime; the cap
//! on open connections is shared by all.

use std::cell::Cell;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Body as _;
use hyper::body::Incoming;
use hyper::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::UpstreamConfig;

/// Body of a request sent upstream: built by the proxy, or streamed from
/// the caller (passthrough), held to `max_body_bytes`.
pub type OutboundBody = Either<Full<Bytes>, Limited<Incoming>>;

/// Largest upstream answer buffered for mapping back to a legacy caller.
const MAX_MAPPED_RESPONSE: usize = 1024 * 1024;

/// How long an idle pooled connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why an upstream exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made (refused, unreachable, DNS, TLS, connect
    /// timeout).
    #[error("upstream unreachable")]
    Connect(#[source] hyper_util::client::legacy::Error),
    /// The connection failed while sending or receiving (reset, malformed
    /// response).
    #[error("upstream request failed")]
    Request(#[source] hyper_util::client::legacy::Error),
    /// The response body could not be read.
    #[error("upstream response body failed")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The upstream took longer than `upstream.timeout_ms`.
    #[error("upstream timed out")]
    Timeout,
    /// The upstream refused the proxy's own signature (its 401): the proxy's
    /// credentials for the app are wrong, not the caller's (spec E.4).
    #[error(
        "upstream rejected pusher-cutover's signature for app {app_id}: check the app's key and secret in the proxy's config"
    )]
    RejectedCredentials {
        /// The app.
        app_id: String,
    },
    /// The upstream answered a status the legacy route cannot pass on.
    #[error("upstream answered {0}")]
    Status(StatusCode),
    /// The upstream's success body is not what the current API defines.
    #[error("upstream returned a malformed response body")]
    MalformedResponse(#[source] serde_json::Error),
    /// The exchange's task ended without an answer (runtime shutting down).
    #[error("upstream exchange aborted")]
    Aborted,
}

impl UpstreamError {
    /// The status the caller gets: 504 for a timeout, 500 when the upstream
    /// refused the proxy's credentials, 502 otherwise.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::RejectedCredentials { .. } => StatusCode::INTERNAL_SERVER_ERROR,
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

type PooledClient = Client<HttpsConnector<HttpConnector>, OutboundBody>;

/// The pooled clients and where they point. Cheap to clone; clones share
/// the pools.
#[derive(Clone, Debug)]
pub struct Upstream {
    /// One pool per worker thread.
    clients: Arc<[PooledClient]>,
    base: Uri,
    timeout: Duration,
    /// One permit per upstream exchange in progress: at most
    /// `max_connections` connections are open at once, the rest wait.
    slots: Arc<Semaphore>,
}

/// An upstream response body that holds its exchange's connection slot
/// until it has been read to the end (or dropped).
#[derive(Debug)]
pub struct Guarded {
    inner: Incoming,
    slot: Option<OwnedSemaphorePermit>,
}

impl hyper::body::Body for Guarded {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None | Some(Err(_))) = frame {
            self.slot = None;
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
    /// Clients for `config`, one pool for each of `workers` threads.
    pub fn new(config: &UpstreamConfig, workers: usize) -> Self {
        let clients = (0..workers.max(1)).map(|_| client(config)).collect();
        Self {
            clients,
            base: config.url.clone(),
            timeout: config.timeout,
            slots: Arc::new(Semaphore::new(config.max_connections)),
        }
    }

    /// The calling worker thread's pool.
    fn client(&self) -> &PooledClient {
        let index = WORKER.with(Cell::get) % self.clients.len();
        &self.clients[index]
    }
}

/// One pooled client for `config`.
fn client(config: &UpstreamConfig) -> PooledClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(config.connect_timeout));
    let https = HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .build(https)
}

impl Upstream {
    /// The upstream URI for a path and query (`/apps/…?…`).
    pub fn uri(&self, path_and_query: &str) -> Result<Uri, hyper::http::Error> {
        let mut parts = self.base.clone().into_parts();
        parts.path_and_query = Some(path_and_query.parse()?);
        Ok(Uri::from_parts(parts)?)
    }

    /// The deadline of an exchange starting now.
    pub fn deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.timeout
    }

    /// Sends `req`; the timeout covers everything up to the response
    /// headers. The body then streams.
    pub async fn send(
        &self,
        req: Request<OutboundBody>,
    ) -> Result<Response<Guarded>, UpstreamError> {
        let send = async {
            let slot = self.slot().await?;
            let resp = self.request(req).await?;
            Ok(resp.map(|inner| Guarded {
                inner,
                slot: Some(slot),
            }))
        };
        tokio::time::timeout(self.timeout, send)
            .await
            .map_err(|_| UpstreamError::Timeout)?
    }

    /// Waits for a free connection slot.
    async fn slot(&self) -> Result<OwnedSemaphorePermit, UpstreamError> {
        self.slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| UpstreamError::Aborted)
    }

    /// Sends `req`. A bodyless GET or HEAD that fails because its pooled
    /// connection turned out to be closed is sent once more on a fresh
    /// one; nothing else is retried, so a POST can never deliver an event
    /// twice. (Requests never written at all are retried by the pool
    /// itself, whatever their method.)
    async fn request(
        &self,
        req: Request<OutboundBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let retry = retryable_copy(&req);
        match self.client().request(req).await {
            Err(e) if retry.is_some() && is_stale_connection(&e) => {
                tracing::debug!(error = %e, "stale upstream connection; retrying the GET once");
                let Some(again) = retry else {
                    return Err(classify(e));
                };
                self.client().request(again).await.map_err(classify)
            }
            other => other.map_err(classify),
        }
    }

    /// Sends `req` and reads the whole answer, all before `deadline`.
    pub async fn exchange(
        &self,
        req: Request<OutboundBody>,
        deadline: tokio::time::Instant,
    ) -> Result<Buffered, UpstreamError> {
        let exchange = async {
            let _slot = self.slot().await?;
            let resp = self.request(req).await?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_MAPPED_RESPONSE)
                .collect()
                .await
                .map_err(UpstreamError::Body)?
                .to_bytes();
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

/// A copy of `req` to send again, if it is a GET or HEAD without a body.
fn retryable_copy(req: &Request<OutboundBody>) -> Option<Request<OutboundBody>> {
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
    Some(copy)
}

/// Whether a request failed because the (pooled) connection was closed
/// or reset under it, before any answer.
fn is_stale_connection(e: &hyper_util::client::legacy::Error) -> bool {
    use std::error::Error as _;
    use std::io::ErrorKind;
    if e.is_connect() {
        return false;
    }
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<hyper::Error>()
            && (h.is_incomplete_message() || h.is_canceled())
        {
            return true;
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                ErrorKind::ConnectionReset
                    | ErrorKind::BrokenPipe
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::UnexpectedEof
            )
        {
            return true;
        }
        source = s.source();
    }
    false
}

/// Whether an upstream failure is the caller's body exceeding its limit.
pub fn is_body_limit(e: &UpstreamError) -> bool {
    use std::error::Error as _;
    let mut source = e.source();
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

fn classify(e: hyper_util::client::legacy::Error) -> UpstreamError {
    if e.is_connect() {
        UpstreamError::Connect(e)
    } else {
        UpstreamError::Request(e)
    }
}
