//! The listener: HTTP/1.1 with keep-alive (optionally over TLS), one task
//! per connection, a cap on connections served at once, and a graceful
//! shutdown that stops accepting and lets requests in flight finish.
//!
//! Each connection's task tracks where the connection is (see [`Tracker`]):
//! waiting for its first request, receiving a request head, serving a
//! request, or idle between an answer and the next request. The first two
//! are bounded by `header_timeout_ms`, idleness by `keepalive_timeout_ms`
//! (hyper's own `header_read_timeout` runs from the end of the previous
//! answer, so it would bound idleness and the head together; it is off).
//! Idle connections, and those still waiting for a first byte, are listed
//! in their worker's [`IdleRegistry`]: at `max_connections`, the accept
//! loop closes the one idle the longest to admit the new one, as nginx
//! reuses connections, rather than leaving the newcomer in the accept
//! queue behind connections that do nothing.
//!
//! Connections are served by worker threads, one per core by default, each
//! running its own single-threaded tokio runtime. The accept loop hands
//! each new connection to the next worker in turn; from then on the
//! connection, its requests, their upstream exchanges and the pooled
//! upstream connections they use stay on that one thread. Nothing on a
//! request's path wakes another thread, and no task migrates between cores.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use pki_types::pem::PemObject;
use pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

use crate::config::{Config, TlsConfig};
use crate::http::ResponseBody;
use crate::pipeline::Proxy;

/// Longest a log line written on a worker thread waits to be handed to the
/// log writer.
const LOG_FLUSH_EVERY: Duration = Duration::from_millis(100);

/// Pause after a failed `accept` (e.g. out of file descriptors), so the
/// loop does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// At the connection cap, how long the accept loop waits for the slot of
/// the connection it asked to close (or, with none idle, for any) before it
/// looks for an idle one again.
const EVICT_RETRY: Duration = Duration::from_millis(100);

/// How the listener serves connections.
#[derive(Clone)]
pub struct Settings {
    /// Time a client has to send its request line and headers: from the
    /// connection's start for its first request, from the first byte for
    /// the next ones.
    pub header_timeout: Duration,
    /// How long a keep-alive connection may stay idle between requests.
    pub keepalive_timeout: Duration,
    /// Largest request line and headers (431 beyond).
    pub max_header_bytes: usize,
    /// Connections served at once; at the cap the longest-idle one is
    /// closed to admit a new one.
    pub max_connections: usize,
    /// On shutdown, how long open connections may take to finish.
    pub grace: Duration,
    /// Worker threads serving connections (at least 1).
    pub workers: usize,
    /// Inbound TLS.
    pub tls: Option<TlsAcceptor>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("header_timeout", &self.header_timeout)
            .field("keepalive_timeout", &self.keepalive_timeout)
            .field("max_header_bytes", &self.max_header_bytes)
            .field("max_connections", &self.max_connections)
            .field("grace", &self.grace)
            .field("workers", &self.workers)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// A TLS certificate or key that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The PEM file could not be read or holds nothing usable.
    #[error("cannot read {what} from {path}")]
    Pem {
        /// `certificate` or `private key`.
        what: &'static str,
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: pki_types::pem::Error,
    },
    /// rustls refused the certificate and key.
    #[error("invalid TLS certificate or key")]
    Rustls(#[source] rustls::Error),
}

/// A TLS acceptor for `tls` (HTTP/1.1 over TLS 1.2 and 1.3).
pub fn tls_acceptor(tls: &TlsConfig) -> Result<TlsAcceptor, TlsError> {
    let pem = |what, path: &Path| {
        let path = path.display().to_string();
        move |source| TlsError::Pem { what, path, source }
    };
    let certs = CertificateDer::pem_file_iter(&tls.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(pem("certificate", &tls.cert))?;
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(pem("private key", &tls.key))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Rustls)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(TlsError::Rustls)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

impl Settings {
    /// The settings of `config`, with its TLS files loaded.
    pub fn from_config(config: &Config) -> Result<Self, TlsError> {
        Ok(Self {
            header_timeout: config.header_timeout,
            keepalive_timeout: config.keepalive_timeout,
            max_header_bytes: config.max_header_bytes,
            max_connections: config.max_connections,
            grace: config.shutdown_grace,
            workers: config.workers(),
            tls: config.tls.as_ref().map(tls_acceptor).transpose()?,
        })
    }
}

/// A connection handed from the accept loop to a worker.
struct Handoff {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    /// Unique among the process's connections (orders the idle registry).
    id: u64,
}

/// Serves `proxy` on `listener` until `shutdown` completes, then waits up
/// to the grace period for open connections to finish their requests.
pub async fn serve(
    listener: TcpListener,
    proxy: Proxy,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .keep_alive(true)
        // While a request is in flight, do not read ahead to notice the
        // client closing its side: that read needs a second buffer per
        // connection while the request still holds the first. A request
        // runs to its end; a client that left is noticed when its answer
        // is written, and the request is recorded with that answer.
        .half_close(true)
        // Off: it would run from the end of each answer, bounding idleness
        // and the next head together. Each connection's task bounds them
        // apart (`header_timeout`, `keepalive_timeout`).
        .header_read_timeout(None)
        .max_header_size(settings.max_header_bytes);
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    tokio::pin!(shutdown);

    let mut workers = Vec::with_capacity(settings.workers.max(1));
    for index in 0..settings.workers.max(1) {
        match Worker::start(index, &http, &proxy, &settings) {
            Ok(worker) => workers.push(worker),
            Err(error) => tracing::error!(%error, index, "cannot start a worker thread"),
        }
    }
    if workers.is_empty() {
        tracing::error!("no worker thread could be started; not serving");
        return;
    }
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, tls = settings.tls.is_some(), workers = workers.len(), "listening");
    }

    let mut next = 0usize;
    let mut next_id = 0u64;
    'accepting: loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        // At `max_connections`, the connection idle the longest is asked to
        // close, and its slot goes to the newcomer. With none idle (every
        // connection is serving a request), the newcomer waits for a slot.
        let permit = match slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => break,
            Err(TryAcquireError::NoPermits) => loop {
                let evicted = evict_longest_idle(&workers);
                for _ in 0..evicted {
                    proxy.current().telemetry.connection_error(IDLE_EVICTED);
                }
                tokio::select! {
                    permit = slots.clone().acquire_owned() => match permit {
                        Ok(permit) => break permit,
                        Err(_) => break 'accepting,
                    },
                    () = tokio::time::sleep(EVICT_RETRY) => {}
                    () = &mut shutdown => break 'accepting,
                }
            },
        };
        // Small request/response exchanges: send each segment at once.
        let _ = stream.set_nodelay(true);
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(error) => {
                tracing::warn!(%error, %peer, "cannot hand the connection to a worker");
                continue;
            }
        };
        next_id = next_id.wrapping_add(1);
        // Round robin; a worker whose thread has ended is skipped.
        let mut handoff = Handoff {
            stream,
            peer,
            permit,
            id: next_id,
        };
        for _ in 0..workers.len() {
            let worker = &workers[next % workers.len()];
            next = next.wrapping_add(1);
            match worker.connections.send(handoff) {
                Ok(()) => break,
                Err(returned) => handoff = returned.0,
            }
        }
    }

    drop(listener);
    tracing::info!("shutting down: draining open connections");
    // Closing their channels tells every worker to drain and stop, all at
    // once, so the whole shutdown takes at most one grace period.
    let done: Vec<_> = workers
        .into_iter()
        .map(
            |Worker {
                 connections, done, ..
             }| {
                drop(connections);
                done
            },
        )
        .collect();
    for worker in done {
        let _ = worker.await;
    }
}

/// Asks the connections idle the longest, over all workers, to close: an
/// eighth of the idle ones, at least 1 and at most 32 (nginx's
/// `ngx_drain_connections`), so that a burst of newcomers does not wait
/// for one close after another. How many were asked.
fn evict_longest_idle(workers: &[Worker]) -> usize {
    let idle: usize = workers.iter().map(|w| w.idle.len()).sum();
    let batch = (idle / 8).clamp(1, 32);
    let mut evicted = 0;
    for _ in 0..batch {
        let oldest = workers
            .iter()
            .filter_map(|w| w.idle.oldest().map(|key| (key, &w.idle)))
            .min_by_key(|(key, _)| *key);
        match oldest {
            Some((key, registry)) if registry.evict(key) => evicted += 1,
            Some(_) => {}
            None => break,
        }
    }
    evicted
}

/// The `kind` of `connection_errors_total` counting idle connections closed
/// to admit a new one at `max_connections`.
const IDLE_EVICTED: &str = "idle_evicted";

/// The `kind` of `connection_errors_total` counting connections still open
/// when `shutdown_grace_ms` ran out, and cut.
const DRAIN_DEADLINE: &str = "drain_deadline";

thread_local! {
    /// Set on a worker thread once its grace period has run out, just
    /// before what is left of its connections is dropped.
    static DRAIN_DEADLINE_PASSED: Cell<bool> = const { Cell::new(false) };
}

/// Whether the calling worker thread is cutting its remaining connections
/// because `shutdown_grace_ms` ran out: a request dropped now was cut by
/// the proxy's drain deadline, not by its client leaving.
pub fn drain_deadline_passed() -> bool {
    DRAIN_DEADLINE_PASSED.with(Cell::get)
}

/// A worker thread: its own single-threaded runtime serving the
/// connections it is handed.
struct Worker {
    connections: tokio::sync::mpsc::UnboundedSender<Handoff>,
    /// Its idle connections.
    idle: Arc<IdleRegistry>,
    /// Resolves when the thread has drained its connections.
    done: tokio::sync::oneshot::Receiver<()>,
}

/// What every connection task of a worker shares.
struct Shared {
    http: http1::Builder,
    proxy: Proxy,
    settings: Settings,
    idle: Arc<IdleRegistry>,
    /// Changes once, when the worker starts draining.
    drain: watch::Receiver<()>,
}

impl Worker {
    fn start(
        index: usize,
        http: &http1::Builder,
        proxy: &Proxy,
        settings: &Settings,
    ) -> std::io::Result<Self> {
        let (connections, mut incoming) = tokio::sync::mpsc::unbounded_channel::<Handoff>();
        let (finished, done) = tokio::sync::oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let idle = Arc::new(IdleRegistry::default());
        let (drain_tx, drain) = watch::channel(());
        let shared = Arc::new(Shared {
            http: http.clone(),
            proxy: proxy.clone(),
            settings: settings.clone(),
            idle: idle.clone(),
            drain,
        });
        std::thread::Builder::new()
            .name(format!("pusher-cutover-worker-{index}"))
            .spawn(move || {
                crate::upstream::set_worker_index(index);
                crate::telemetry::logging::batch_this_thread();
                let grace = shared.settings.grace;
                runtime.block_on(async {
                    // This thread's log lines go out in batches: when 16 KiB
                    // have gathered, and at least every LOG_FLUSH_EVERY.
                    tokio::spawn(async {
                        let mut tick = tokio::time::interval(LOG_FLUSH_EVERY);
                        loop {
                            tick.tick().await;
                            crate::telemetry::logging::flush_thread();
                        }
                    });
                    while let Some(handoff) = incoming.recv().await {
                        accept(&shared, handoff);
                    }
                    // Every connection holds a receiver: once all are gone,
                    // every connection has ended.
                    let _ = drain_tx.send(());
                    drop(shared);
                    if tokio::time::timeout(grace, drain_tx.closed())
                        .await
                        .is_err()
                    {
                        tracing::warn!(
                            grace_ms = grace.as_millis() as u64,
                            worker = index,
                            "connections still open after the grace period: cutting them"
                        );
                    }
                });
                // Dropping the runtime cancels what is left (connections the
                // grace period was too short for, idle pooled upstream
                // connections); those cut are logged as cut by the deadline.
                DRAIN_DEADLINE_PASSED.with(|passed| passed.set(true));
                drop(runtime);
                crate::telemetry::logging::flush_thread();
                let _ = finished.send(());
            })?;
        Ok(Self {
            connections,
            idle,
            done,
        })
    }
}

fn accept(shared: &Arc<Shared>, handoff: Handoff) {
    let Handoff {
        stream,
        peer,
        permit,
        id,
    } = handoff;
    let stream = match TcpStream::from_std(stream) {
        Ok(stream) => stream,
        Err(error) => {
            tracing::warn!(%error, %peer, "cannot register the connection");
            return;
        }
    };
    let shared = shared.clone();
    // Two tasks, not one with a branch: a task is as large as its largest
    // state, and a plain connection's is a quarter of a TLS one's (both are
    // held for every open connection).
    match shared.settings.tls.clone() {
        None => {
            tokio::spawn(async move {
                let tracker = Arc::new(Tracker::new());
                let started = Instant::now();
                if first_byte(&shared, &stream, &tracker, peer, id).await {
                    serve_connection(&shared, stream, peer, id, tracker, started, None).await;
                }
                drop(permit);
            });
        }
        Some(acceptor) => {
            let handshake_timeout = shared.settings.header_timeout;
            tokio::spawn(async move {
                match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let tracker = Arc::new(Tracker::new());
                        let started = Instant::now();
                        let key = (started, id);
                        shared.idle.insert(key, &tracker);
                        let listed = Some(key);
                        serve_connection(&shared, tls, peer, id, tracker, started, listed).await;
                    }
                    Ok(Err(error)) => tracing::debug!(%error, %peer, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
                drop(permit);
            });
        }
    }
}

/// Where a connection is, as its [`Tracker`] holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    /// Open, no byte of its first request received yet.
    Fresh = 0,
    /// A request head is arriving.
    Head = 1,
    /// A request is being served.
    Busy = 2,
    /// Kept alive: its last answer has been handed over, no byte of the
    /// next request has arrived.
    Idle = 3,
}

impl Phase {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Fresh,
            1 => Self::Head,
            2 => Self::Busy,
            _ => Self::Idle,
        }
    }

    /// Whether the connection may be closed without cutting a request.
    fn is_idle(self) -> bool {
        matches!(self, Self::Fresh | Self::Idle)
    }
}

/// One connection's phase, moved on by what its reads ([`TrackedIo`]),
/// its service and its answers' bodies ([`Answer`]) see, and watched by
/// its task, which each move wakes.
#[derive(Debug)]
struct Tracker {
    phase: AtomicU8,
    /// Moves so far: a task that sees the same phase after a wake can tell
    /// whether it is a new one (another request came and went meanwhile).
    moves: AtomicU32,
    /// Set by the accept loop: close if still idle.
    evict: AtomicBool,
    wake: Notify,
}

impl Tracker {
    fn new() -> Self {
        Self {
            phase: AtomicU8::new(Phase::Fresh as u8),
            moves: AtomicU32::new(0),
            evict: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    fn set(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Release);
        self.moves.fetch_add(1, Ordering::Release);
        self.wake.notify_one();
    }

    fn moves(&self) -> u32 {
        self.moves.load(Ordering::Acquire)
    }

    /// Bytes arrived: an idle connection is receiving a request head.
    fn received(&self) {
        if self.phase().is_idle() {
            self.set(Phase::Head);
        }
    }
}

/// One worker's idle connections (and those waiting for their first
/// byte), oldest first: the key is when they became idle, then the
/// connection's id.
#[derive(Debug, Default)]
struct IdleRegistry {
    idle: Mutex<BTreeMap<(Instant, u64), Arc<Tracker>>>,
}

impl IdleRegistry {
    fn insert(&self, key: (Instant, u64), tracker: &Arc<Tracker>) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.insert(key, tracker.clone());
        }
    }

    fn remove(&self, key: (Instant, u64)) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.remove(&key);
        }
    }

    /// How many are listed.
    fn len(&self) -> usize {
        self.idle.lock().map_or(0, |idle| idle.len())
    }

    /// The key of the connection idle the longest.
    fn oldest(&self) -> Option<(Instant, u64)> {
        let idle = self.idle.lock().ok()?;
        idle.first_key_value().map(|(key, _)| *key)
    }

    /// Asks the connection under `key`, if still listed, to close. Whether
    /// it was.
    fn evict(&self, key: (Instant, u64)) -> bool {
        let Some(tracker) = self.idle.lock().ok().and_then(|mut idle| idle.remove(&key)) else {
            return false;
        };
        tracker.evict.store(true, Ordering::Release);
        tracker.wake.notify_one();
        true
    }
}

/// A connection's stream, reporting to its [`Tracker`] when bytes arrive.
struct TrackedIo<I> {
    io: I,
    tracker: Arc<Tracker>,
}

impl<I: AsyncRead + Unpin> AsyncRead for TrackedIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.tracker.received();
        }
        read
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for TrackedIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// An answer's body, which marks its connection idle when hyper lets go of
/// it (the answer has been handed over whole, or abandoned).
struct Answer {
    body: ResponseBody,
    tracker: Arc<Tracker>,
}

impl Drop for Answer {
    fn drop(&mut self) {
        self.tracker.set(Phase::Idle);
    }
}

impl Body for Answer {
    type Data = Bytes;
    type Error = <ResponseBody as Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Takes a connection cut by the drain deadline, i.e. dropped before it
/// ended, to the log and the `drain_deadline` counter.
struct OpenConnection<'a> {
    proxy: &'a Proxy,
    peer: SocketAddr,
    ended: bool,
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        if !self.ended && drain_deadline_passed() {
            self.proxy
                .current()
                .telemetry
                .connection_error(DRAIN_DEADLINE);
            tracing::warn!(
                peer = %self.peer,
                kind = DRAIN_DEADLINE,
                "connection cut by the drain deadline (shutdown_grace_ms ran out)"
            );
        }
    }
}

/// Waits, without a buffer, for a plain connection's first byte (or its
/// end), listed as idle meanwhile: a connection that never sends costs its
/// socket and a task, not an HTTP connection's buffers. Whether to serve
/// it; not when it is asked to make room, its head time runs out or the
/// worker drains.
async fn first_byte(
    shared: &Shared,
    stream: &TcpStream,
    tracker: &Arc<Tracker>,
    peer: SocketAddr,
    id: u64,
) -> bool {
    let key = (Instant::now(), id);
    shared.idle.insert(key, tracker);
    let mut drain = shared.drain.clone();
    let deadline = tokio::time::sleep(shared.settings.header_timeout);
    tokio::pin!(deadline);
    let serve = loop {
        tokio::select! {
            biased;
            readable = stream.readable() => break readable.is_ok(),
            () = tracker.wake.notified() => {
                if tracker.evict.swap(false, Ordering::AcqRel) {
                    tracing::debug!(%peer, "idle connection closed to admit a new one (max_connections)");
                    return false;
                }
            }
            () = &mut deadline => {
                head_timed_out(&shared.proxy, peer, Phase::Fresh);
                break false;
            }
            _ = drain.changed() => break false,
        }
    };
    shared.idle.remove(key);
    if serve {
        tracker.set(Phase::Head);
    }
    serve
}

/// Serves one connection (plain from its first byte, or after its TLS
/// handshake) until it ends: its phases timed, listed in the idle registry while idle, closed when
/// the accept loop asks or the worker drains.
async fn serve_connection<I>(
    shared: &Shared,
    io: I,
    peer: SocketAddr,
    id: u64,
    tracker: Arc<Tracker>,
    started: Instant,
    mut listed: Option<(Instant, u64)>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let settings = &shared.settings;
    let mut open = OpenConnection {
        proxy: &shared.proxy,
        peer,
        ended: false,
    };
    let io = TrackedIo {
        io,
        tracker: tracker.clone(),
    };
    let conn = shared.http.serve_connection(
        TokioIo::new(io),
        service(&shared.proxy, peer, tracker.clone()),
    );
    tokio::pin!(conn);
    let mut drain = shared.drain.clone();
    let mut draining = false;
    // A connection that has sent nothing yet is as idle as one between
    // requests (nginx reuses both): listed by the caller (under `listed`,
    // or no longer). Its first head's time runs from `started`.
    let deadline = tokio::time::sleep_until(started + settings.header_timeout);
    tokio::pin!(deadline);
    let mut armed = true;
    let mut phase = Phase::Fresh;
    let mut moves = 0;
    let result = loop {
        tokio::select! {
            biased;
            result = conn.as_mut() => break Some(result),
            () = tracker.wake.notified() => {}
            () = &mut deadline, if armed => {
                armed = false;
                match tracker.phase() {
                    Phase::Fresh | Phase::Head => break None,
                    Phase::Idle => {
                        tracing::debug!(%peer, "idle keep-alive connection closed (keepalive_timeout_ms)");
                        conn.as_mut().graceful_shutdown();
                    }
                    Phase::Busy => {}
                }
            }
            _ = drain.changed(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
        // The count before the phase: a move between the two reads is
        // counted anew on the next wake, and handled then.
        let moved = tracker.moves();
        let now = tracker.phase();
        if tracker.evict.swap(false, Ordering::AcqRel) {
            // Still idle: closed now (hyper closes an idle connection at
            // once). One that has just started a request is left to it;
            // the accept loop looks for another.
            listed = None;
            if now.is_idle() {
                tracing::debug!(%peer, "idle connection closed to admit a new one (max_connections)");
                conn.as_mut().graceful_shutdown();
            }
        }
        if moved == moves {
            continue;
        }
        moves = moved;
        let since = Instant::now();
        match now {
            Phase::Idle => {
                deadline.as_mut().reset(since + settings.keepalive_timeout);
                armed = true;
            }
            // A first request's time runs from the connection's start; a
            // later one's from its first byte (seen now, also when the
            // answer before it and that byte came in one go).
            Phase::Head if phase != Phase::Fresh => {
                deadline.as_mut().reset(since + settings.header_timeout);
                armed = true;
            }
            Phase::Head | Phase::Fresh => {}
            Phase::Busy => armed = false,
        }
        // Listed anew from the start of each idle spell (a connection that
        // moves is never `Fresh` again).
        if let Some(key) = listed.take() {
            shared.idle.remove(key);
        }
        if now == Phase::Idle && !draining {
            let key = (since, id);
            shared.idle.insert(key, &tracker);
            listed = Some(key);
        }
        phase = now;
    };
    if let Some(key) = listed {
        shared.idle.remove(key);
    }
    open.ended = true;
    let proxy = &shared.proxy;
    match result {
        Some(Ok(())) => {}
        Some(Err(error)) => {
            let kind = connection_error_kind(&error);
            proxy.current().telemetry.connection_error(kind);
            if kind == "closed" {
                tracing::debug!(%error, %peer, kind, "connection ended with an error");
            } else {
                // A request hyper refused for its framing never reaches the
                // pipeline: this is its only trace.
                tracing::info!(%error, %peer, kind, "connection refused or cut by the HTTP layer");
            }
        }
        None => head_timed_out(proxy, peer, phase),
    }
}

/// Counts and logs a connection closed because its request head did not
/// arrive within `header_timeout_ms` (while waiting for its first byte,
/// or in `phase`).
fn head_timed_out(proxy: &Proxy, peer: SocketAddr, phase: Phase) {
    let kind = "header_timeout";
    proxy.current().telemetry.connection_error(kind);
    tracing::info!(
        %peer,
        kind,
        phase = ?phase,
        "request head not received within header_timeout_ms; connection closed"
    );
}

/// The `kind` label of a connection hyper ended with an error: `parse`
/// (malformed request line or headers), `too_large` (head over
/// `max_header_bytes`), `header_timeout` (head not read within
/// `header_timeout_ms`), `incomplete` (the client closed mid-message),
/// `closed` (the connection failed under an answer, e.g. reset), `other`.
pub fn connection_error_kind(error: &hyper::Error) -> &'static str {
    if error.is_parse_too_large() {
        "too_large"
    } else if error.is_parse() || error.is_parse_status() {
        "parse"
    } else if error.is_timeout() {
        "header_timeout"
    } else if error.is_incomplete_message() {
        "incomplete"
    } else if error.is_closed() || error.is_canceled() || error.is_body_write_aborted() {
        "closed"
    } else {
        "other"
    }
}

/// Every `kind` of `connection_errors_total`: each
/// [`connection_error_kind`], plus `idle_evicted` (an idle connection
/// closed to admit a new one at `max_connections`) and `drain_deadline`
/// (open when `shutdown_grace_ms` ran out, and cut).
pub const CONNECTION_ERROR_KINDS: [&str; 8] = [
    "parse",
    "too_large",
    "header_timeout",
    "incomplete",
    "closed",
    "other",
    IDLE_EVICTED,
    DRAIN_DEADLINE,
];

/// The connection's service: the proxy, with the connection marked busy
/// from the moment a request is handed over until its answer's body is let
/// go of.
fn service(
    proxy: &Proxy,
    peer: SocketAddr,
    tracker: Arc<Tracker>,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = hyper::Response<Answer>,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<hyper::Response<Answer>, std::convert::Infallible>> + Send,
> + Send
+ 'static {
    let proxy = proxy.clone();
    service_fn(move |req| {
        tracker.set(Phase::Busy);
        let answer = proxy.handle(req, peer);
        let tracker = tracker.clone();
        async move {
            let resp = answer.await?;
            Ok(resp.map(|body| Answer { body, tracker }))
        }
    })
}
