//! The HTTP/1.1 pool of plain `http://` upstreams (`upstream.protocol`
//! `http1`, or `auto` on `http://`): hyper's HTTP/1.1 client connections,
//! pooled per worker thread. An exchange takes the most recently used idle
//! connection of its own worker, whose connection task runs on that
//! worker's runtime, or opens one. A connection goes back to its pool once
//! its response has been read to the end. Each worker keeps at most its
//! share of `max_connections` idle.
//!
//! Kept beside hyper-util's client, which carries HTTP/2 and HTTPS, because
//! it costs fewer instructions per exchange on HTTP/1.1 (BENCHMARKS.md,
//! "hyper-util's client against the hand-written pool").

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HOST, HeaderValue};
use hyper::{Response, Uri};
use tower_service::Service as _;

use super::{
    OutboundBody, OutboundRequest, Slot, UpstreamError, is_stale_connection, replayable_copy,
};
use crate::telemetry::metrics::SlotMetrics;

/// Pooled connections tried for one request before opening a new one
/// (each may turn out closed by the upstream meanwhile).
const MAX_REUSE_ATTEMPTS: usize = 3;

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

/// The pools of all workers, and where their connections go.
#[derive(Debug)]
pub(super) struct Pools {
    connector: super::Connector,
    /// Scheme and authority connections are opened to.
    base: Uri,
    /// The `Host` header of every upstream request.
    host: HeaderValue,
    /// How long a connection not yet done with its last exchange is waited
    /// for before it is given up.
    timeout: Duration,
    /// How long an idle connection is kept (`upstream.idle_timeout_ms`).
    idle_timeout: Duration,
    pools: Box<[Pool]>,
    /// Idle connections each pool keeps at most.
    max_idle_per_pool: usize,
}

/// A connection lent to one exchange: back to its pool when the answer
/// has been read to the end, closed if it is dropped before.
#[derive(Debug)]
pub(super) struct Lease {
    pools: Arc<Pools>,
    sender: SendRequest<OutboundBody>,
    pool: usize,
}

impl Lease {
    /// Returns the connection to its pool.
    pub(super) fn release(self) {
        self.pools.put_back(self.pool, self.sender);
    }
}

impl Pools {
    pub(super) fn new(
        connector: super::Connector,
        base: Uri,
        host: HeaderValue,
        timeout: Duration,
        idle_timeout: Duration,
        workers: usize,
        max_idle_per_pool: usize,
    ) -> Self {
        Self {
            connector,
            base,
            host,
            timeout,
            idle_timeout,
            pools: (0..workers.max(1)).map(|_| Pool::default()).collect(),
            max_idle_per_pool,
        }
    }

    /// Sends `req` on a pooled connection of worker `worker`, or a new one.
    ///
    /// A request the pooled connection never started writing (it had been
    /// closed meanwhile) is sent again on another, whatever its method. A
    /// bodyless GET or HEAD (`idempotent`) that fails because its pooled
    /// connection turned out to be closed is sent once more on a fresh one;
    /// nothing else is retried, so a POST can never deliver an event twice.
    /// A second attempt, or a first on a connection opened for it, is sent
    /// only while `slot` is in time ([`UpstreamError::Timeout`] past it).
    ///
    /// Not an `async fn`: the request is prepared before the future is
    /// built, and the future reuses the one box `req` is in for each
    /// attempt.
    pub(super) fn request<'a>(
        self: &'a Arc<Self>,
        mut req: OutboundRequest,
        worker: usize,
        idempotent: bool,
        slot: &'a Slot,
        metrics: &'a SlotMetrics,
    ) -> impl Future<Output = Result<(Response<Incoming>, Lease), UpstreamError>> + Send + 'a {
        req.headers_mut().insert(HOST, self.host.clone());
        let mut retry = idempotent.then(|| replayable_copy(&req));
        let pool = worker % self.pools.len();
        let mut attempts = 0;
        // Why the request is about to be sent again, if it is.
        let mut resend: Option<&'static str> = None;
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
                // A second attempt, or a first on a connection that took
                // its time to open, is sent only while the slot is in time.
                if attempts > 1 || !reused {
                    slot.in_time()?;
                }
                // Counted once it is sent again, in time.
                if let Some(reason) = resend.take() {
                    metrics.resent(reason);
                }
                match sender.try_send_request(*req).await {
                    Ok(resp) => {
                        let lease = Lease {
                            pools: self.clone(),
                            sender,
                            pool,
                        };
                        return Ok((resp, lease));
                    }
                    Err(mut failed) => {
                        if reused && let Some(unsent) = failed.take_message() {
                            tracing::debug!(error = %failed.error(), "pooled upstream connection closed; sending on another");
                            resend = Some("not_processed");
                            *req = unsent;
                            continue;
                        }
                        let error = failed.into_error();
                        if reused
                            && is_stale_connection(&error)
                            && let Some(again) = retry.take()
                        {
                            tracing::debug!(%error, "stale upstream connection; retrying the GET once");
                            resend = Some("stale_connection");
                            req = again;
                            attempts = MAX_REUSE_ATTEMPTS;
                            continue;
                        }
                        return Err(UpstreamError::Request(Box::new(error)));
                    }
                }
            }
        }
    }

    /// The most recently used idle connection of pool `index` that is
    /// still open and ready.
    fn take_idle(&self, index: usize) -> Option<SendRequest<OutboundBody>> {
        let mut idle = self.pools[index].idle.lock().ok()?;
        while let Some(Idle { sender, since }) = idle.pop() {
            if sender.is_ready() && since.elapsed() < self.idle_timeout {
                return Some(sender);
            }
        }
        None
    }

    /// Returns a connection whose exchange is complete to pool `index`. One
    /// that has not yet seen the end of its exchange is waited for in a task
    /// of its own.
    fn put_back(self: &Arc<Self>, index: usize, mut sender: SendRequest<OutboundBody>) {
        if sender.is_closed() {
            return;
        }
        if !sender.is_ready() {
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            let pools = self.clone();
            runtime.spawn(async move {
                let ready = tokio::time::timeout(pools.timeout, sender.ready()).await;
                if let Ok(Ok(())) = ready {
                    pools.put_back(index, sender);
                }
            });
            return;
        }
        let Ok(mut idle) = self.pools[index].idle.lock() else {
            return;
        };
        // Connections idle too long are closed (dropped) here, oldest first.
        let now = Instant::now();
        let expired = idle
            .iter()
            .take_while(|i| now.duration_since(i.since) >= self.idle_timeout)
            .count();
        idle.drain(..expired);
        if idle.len() < self.max_idle_per_pool {
            idle.push(Idle { sender, since: now });
        }
    }

    /// Opens a connection; its task runs on the calling thread's runtime.
    async fn connect(&self) -> Result<SendRequest<OutboundBody>, UpstreamError> {
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(UpstreamError::Connect)?;
        let io = connector
            .call(self.base.clone())
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
}
