//! The listener: HTTP/1.1 with keep-alive (optionally over TLS), one task
//! per connection, a cap on connections served at once, and a graceful
//! shutdown that stops accepting and lets requests in flight finish.
//!
//! Each connection's `Tracker` holds where the connection is, and since
//! when: waiting for its first request, receiving a request head, serving
//! a request, or idle between an answer and the next request. The first
//! two are bounded by `header_timeout_ms`, idleness by
//! `keepalive_timeout_ms` (hyper's own `header_read_timeout` runs from the
//! end of the previous answer, so it would bound idleness and the head
//! together; it is off), and serving a request by the time its head, body
//! and upstream exchange may take and a second to write its answer, which
//! only a client that does not read its answer reaches (`Bounds`). Every
//! phase move happens inside the poll of the connection's own task (its
//! reads, its service, its answer's body), so the task reads the tracker
//! after each poll instead of being woken for each move, and it re-arms
//! its one timer only when a deadline comes earlier than the armed one: a
//! keep-alive request costs a few atomic stores, no wake and no timer
//! operation.
//!
//! Each connection is listed once, for its whole life, in its worker's
//! `Registry`: at `max_connections`, the accept loop scans the lists for
//! the connections idle the longest (those between requests and those
//! still waiting for a first byte) and closes them to admit the new one,
//! as nginx reuses connections, rather than leaving the newcomer in the
//! accept queue behind connections that do nothing.
//!
//! Connections are served by worker threads, one per core by default, each
//! running its own single-threaded tokio runtime. The accept loop hands
//! each new connection to the next worker in turn; from then on the
//! connection, its requests, their upstream exchanges and the pooled
//! upstream connections they use stay on that one thread, and no task
//! migrates between cores. The exception is coalescing
//! ([`crate::routes::coalesce`]): an app's queued legacy triggers may
//! come from several workers, and the batch carrying them is sent by the
//! worker whose exchange freed the place, which then wakes the others'
//! callers with their answers (and, at shutdown, waits for the batch:
//! [`drain_hold`]).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError, watch};
use tokio::time::Instant;

use crate::config::Config;
use crate::http::ResponseBody;
use crate::http::tls;
use crate::pipeline::Proxy;

/// Longest a log line written on a worker thread waits to be handed to the
/// log writer.
const LOG_FLUSH_EVERY: Duration = Duration::from_millis(10);

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
    pub tls: Option<tls::Inbound>,
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
            .field("tls", &self.tls)
            .finish()
    }
}

impl Settings {
    /// The settings of `config`, with its TLS files loaded.
    pub fn from_config(config: &Config) -> Result<Self, tls::TlsError> {
        Ok(Self {
            header_timeout: config.header_timeout,
            keepalive_timeout: config.keepalive_timeout,
            max_header_bytes: config.max_header_bytes,
            max_connections: config.max_connections,
            grace: config.shutdown_grace,
            workers: config.workers(),
            tls: config.tls.as_ref().map(tls::Inbound::load).transpose()?,
        })
    }
}

/// A connection handed from the accept loop to a worker.
struct Handoff {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    /// Unique among the process's connections (its key in the registry).
    id: u64,
}

/// Serves `proxy` on `listener` until `shutdown` completes, then waits up
/// to the grace period for open connections to finish their requests.
/// Fails, serving nothing, if no worker thread could be started.
pub async fn serve(
    listener: TcpListener,
    proxy: Proxy,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
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
    let mut failed = None;
    for index in 0..settings.workers.max(1) {
        match Worker::start(index, &http, &proxy, &settings) {
            Ok(worker) => workers.push(worker),
            Err(error) => {
                tracing::error!(%error, index, "cannot start a worker thread");
                failed = Some(error);
            }
        }
    }
    if workers.is_empty()
        && let Some(error) = failed
    {
        return Err(error);
    }
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, tls = settings.tls.is_some(), workers = workers.len(), "listening");
    }
    if let Some(tls) = &settings.tls {
        // The leaf served, as a reload's `TLS certificate reloaded` line
        // gives it.
        // (Its expiry gauge and warning: set before the reloader starts.)
        let served = tls.certificate.current();
        tracing::info!(
            sha256 = %served.fingerprint(),
            not_after = %served.not_after_text(),
            "TLS certificate served"
        );
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
    Ok(())
}

/// Asks the connections idle the longest, over all workers, to close: an
/// eighth of the idle ones, at least 1 and at most 32 (nginx's
/// `ngx_drain_connections`), so that a burst of newcomers does not wait
/// for one close after another. How many were asked.
///
/// One scan of every worker's list per batch: it runs only at the cap.
fn evict_longest_idle(workers: &[Worker]) -> usize {
    let mut idle: Vec<(u64, Arc<Tracker>)> = Vec::new();
    for worker in workers {
        worker.registry.idle_into(&mut idle);
    }
    if idle.is_empty() {
        return 0;
    }
    let batch = (idle.len() / 8).clamp(1, 32);
    if batch < idle.len() {
        idle.select_nth_unstable_by_key(batch - 1, |(since, _)| *since);
        idle.truncate(batch);
    }
    idle.iter()
        .filter(|(_, tracker)| tracker.ask_to_close())
        .count()
}

/// The `kind` of `connection_errors_total` counting idle connections closed
/// to admit a new one at `max_connections`.
const IDLE_EVICTED: &str = "idle_evicted";

/// The `kind` of `connection_errors_total` counting connections still open
/// when `shutdown_grace_ms` ran out, and cut.
const DRAIN_DEADLINE: &str = "drain_deadline";

/// The `kind` of `connection_errors_total` counting connections closed
/// because a request's answer was not taken in time ([`Bounds::busy`]).
const ANSWER_TIMEOUT: &str = "answer_timeout";

/// The `kind` of `connection_errors_total` counting inbound TLS handshakes
/// that failed (a client that does not trust the certificate, or shares
/// no version or cipher suite with the proxy).
const TLS_HANDSHAKE: &str = "tls_handshake";

thread_local! {
    /// Set on a worker thread once its grace period has run out, just
    /// before what is left of its connections is dropped.
    static DRAIN_DEADLINE_PASSED: Cell<bool> = const { Cell::new(false) };
    /// The worker's drain signal, from which [`drain_hold`] takes holds.
    static DRAIN: RefCell<Option<watch::Sender<()>>> = const { RefCell::new(None) };
    /// Set by a request that queues ([`waits_in_a_queue`]) while its
    /// connection's task polls it; taken by that task right after the poll.
    static QUEUED: Cell<bool> = const { Cell::new(false) };
}

/// Tells the connection whose request is being polled on this thread that
/// the request waits in its app's trigger queue: its answer may take one
/// more `upstream.timeout_ms` ([`Bounds::queue`]), the queue's wait before
/// its batch's exchange. Called only from within a connection's poll (a
/// request's handling), which reads it before anything else runs on the
/// thread.
pub(crate) fn waits_in_a_queue() {
    QUEUED.set(true);
}

/// A hold on the calling worker's shutdown, for work of its runtime that
/// is not a connection but must finish before the runtime goes (a
/// coalesced batch's task, which may carry other workers' callers): while
/// a hold lives, the worker's drain waits for it as for a connection,
/// within `shutdown_grace_ms`. `None` off a worker thread.
pub fn drain_hold() -> Option<watch::Receiver<()>> {
    DRAIN.with(|d| d.borrow().as_ref().map(watch::Sender::subscribe))
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
    /// Its open connections.
    registry: Arc<Registry>,
    /// Resolves when the thread has drained its connections.
    done: tokio::sync::oneshot::Receiver<()>,
}

/// What every connection task of a worker shares.
struct Shared {
    http: http1::Builder,
    proxy: Proxy,
    settings: Settings,
    registry: Arc<Registry>,
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
        let registry = Arc::new(Registry::default());
        let (drain_tx, drain) = watch::channel(());
        let shared = Arc::new(Shared {
            http: http.clone(),
            proxy: proxy.clone(),
            settings: settings.clone(),
            registry: registry.clone(),
            drain,
        });
        std::thread::Builder::new()
            .name(format!("pusher-cutover-worker-{index}"))
            .spawn(move || {
                crate::upstream::set_worker_index(index);
                crate::telemetry::logging::batch_this_thread();
                DRAIN.with(|d| *d.borrow_mut() = Some(drain_tx.clone()));
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
                    // Every connection holds a receiver, and so does every
                    // drain hold: once all are gone, every connection (and
                    // batch task) has ended.
                    let _ = drain_tx.send(());
                    drop(shared);
                    if tokio::time::timeout(grace, drain_tx.closed())
                        .await
                        .is_err()
                    {
                        tracing::warn!(
                            grace_ms = grace.as_millis() as u64,
                            worker = index,
                            "connections (or coalesced batches) still open after the grace period: cutting them"
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
            registry,
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
    match shared.settings.tls.as_ref().map(|tls| tls.acceptor.clone()) {
        None => {
            tokio::spawn(async move {
                let tracker = Arc::new(Tracker::new());
                let _listed = Listed::new(&shared.registry, id, &tracker);
                // Both phases boxed: a task is as large as its largest
                // state, held for as long as the connection is open. Inline,
                // the wait for the first byte (its timer and wake-ups,
                // 616 bytes) would stay in every served connection's task,
                // and hyper's connection (1,360) in every one that has sent
                // nothing yet; boxed, each is freed when its phase ends.
                if Box::pin(first_byte(&shared, &stream, &tracker, peer)).await {
                    Box::pin(serve_connection(&shared, stream, peer, tracker)).await;
                }
                drop(permit);
            });
        }
        Some(acceptor) => {
            let deadline = tokio::time::Instant::now() + shared.settings.header_timeout;
            tokio::spawn(async move {
                let tracker = Arc::new(Tracker::new());
                let _listed = Listed::new(&shared.registry, id, &tracker);
                // Listed from its start, as a plain connection is: one
                // that has sent nothing yet makes room at the cap and ends
                // on a drain. Its handshake, once begun, is its head: it
                // has what is left of `header_timeout_ms` for it.
                if Box::pin(first_byte(&shared, &stream, &tracker, peer)).await {
                    match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => serve_connection(&shared, tls, peer, tracker).await,
                        Ok(Err(error)) => {
                            // Counted, logged at debug only: scanners and
                            // probes fail handshakes all day.
                            shared
                                .proxy
                                .current()
                                .telemetry
                                .connection_error(TLS_HANDSHAKE);
                            tracing::debug!(%error, %peer, "TLS handshake failed");
                        }
                        Err(_) => head_timed_out(&shared.proxy, peer, Phase::Head),
                    }
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

/// The instant trackers count from: their `since` is nanoseconds after
/// it, a form an atomic holds, comparable across workers.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Now, in nanoseconds since [`EPOCH`].
fn now_nanos() -> u64 {
    u64::try_from(EPOCH.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The instant `nanos` (since [`EPOCH`]) stands for; a year after the
/// epoch's for one too far ahead to represent.
fn instant_of(nanos: u64) -> Instant {
    EPOCH
        .checked_add(Duration::from_nanos(nanos))
        .unwrap_or_else(|| *EPOCH + Duration::from_secs(365 * 24 * 3600))
}

/// `d` in nanoseconds, saturating.
fn nanos_of(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// One connection's phase and since when it holds, moved on by what its
/// reads ([`TrackedIo`]), its service and its answers' bodies ([`Answer`])
/// see, all inside the poll of the connection's task; read by that task
/// after each poll, and by the accept loop looking for idle connections.
#[derive(Debug)]
struct Tracker {
    phase: AtomicU8,
    /// When the phase began ([`now_nanos`]); for a first request's head,
    /// when the connection started.
    since: AtomicU64,
    /// Set by the accept loop: close if still idle.
    evict: AtomicBool,
    /// Whether the request being served waited in its app's trigger queue
    /// ([`Bounds::queue`]); cleared when a request begins.
    queued: AtomicBool,
    /// Wakes the connection's task when `evict` is set.
    wake: Notify,
}

impl Tracker {
    fn new() -> Self {
        Self {
            phase: AtomicU8::new(Phase::Fresh as u8),
            since: AtomicU64::new(now_nanos()),
            evict: AtomicBool::new(false),
            queued: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    /// The phase, and since when.
    fn state(&self) -> (Phase, u64) {
        let phase = self.phase();
        (phase, self.since.load(Ordering::Acquire))
    }

    fn set(&self, phase: Phase) {
        if phase == Phase::Busy {
            self.queued.store(false, Ordering::Release);
        } else {
            self.since.store(now_nanos(), Ordering::Release);
        }
        self.phase.store(phase as u8, Ordering::Release);
    }

    /// Bytes arrived: an idle connection is receiving a request head. A
    /// first request's time keeps running from the connection's start.
    fn received(&self) {
        match self.phase() {
            Phase::Fresh => self.phase.store(Phase::Head as u8, Ordering::Release),
            Phase::Idle => self.set(Phase::Head),
            Phase::Head | Phase::Busy => {}
        }
    }

    /// When the current phase must end ([`now_nanos`]): `bounds.head`
    /// after a head began (or the wait for one), `bounds.idle` after the
    /// last answer, `bounds.busy` after a request's head began, while it
    /// is served and its answer written (a request's phase keeps its head's
    /// start), and `bounds.queue` more for one that waited in a trigger
    /// queue. Arithmetic only, no clock read: it runs after every poll.
    fn deadline(&self, bounds: Bounds) -> u64 {
        let (phase, since) = self.state();
        let bound = match phase {
            Phase::Fresh | Phase::Head => bounds.head,
            Phase::Idle => bounds.idle,
            Phase::Busy if self.queued.load(Ordering::Acquire) => {
                bounds.busy.saturating_add(bounds.queue)
            }
            Phase::Busy => bounds.busy,
        };
        since.saturating_add(bound)
    }

    /// The accept loop asks the connection to close if it is still idle.
    /// Whether it was asked now (not already, and idle when asked).
    fn ask_to_close(&self) -> bool {
        if !self.phase().is_idle() || self.evict.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.wake.notify_one();
        true
    }
}

/// How long each phase of a connection may last, in nanoseconds.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    /// A request's head, from its first byte (a first request's from the
    /// connection's start): `header_timeout_ms`.
    head: u64,
    /// Idle between requests: `keepalive_timeout_ms`.
    idle: u64,
    /// A request, from its head's start until its answer is written: the
    /// time its head, its body and its upstream exchange may take, and
    /// [`ANSWER_WRITE_TIME`] to write the answer. Only a caller that does
    /// not read its answer reaches it (a passthrough answer's body is
    /// otherwise cut at the exchange's deadline); its connection is then
    /// closed, which frees the upstream slot the answer's body held.
    busy: u64,
    /// What a legacy trigger that waited in its app's trigger queue has
    /// more than `busy`: the queue's wait before its batch's exchange,
    /// `upstream.timeout_ms`.
    queue: u64,
}

/// The time [`Bounds::busy`] leaves to write an answer once everything
/// before it has had all its time.
const ANSWER_WRITE_TIME: Duration = Duration::from_secs(1);

/// `bounds` with [`Bounds::busy`] and [`Bounds::queue`] of `proxy`'s
/// configuration in force (its `body_timeout_ms` and `upstream.timeout_ms`
/// may be reloaded).
fn serving_bounds(mut bounds: Bounds, settings: &Settings, proxy: &Proxy) -> Bounds {
    let state = proxy.current();
    let config = state.config();
    bounds.busy = nanos_of(
        settings.header_timeout + config.body_timeout + config.upstream.timeout + ANSWER_WRITE_TIME,
    );
    bounds.queue = nanos_of(config.upstream.timeout);
    bounds
}

/// One worker's open connections, each listed once for its life by its
/// [`Listed`] guard, by id.
#[derive(Debug, Default)]
struct Registry {
    connections: Mutex<HashMap<u64, Arc<Tracker>>>,
}

impl Registry {
    /// Adds the connections idle now (not already asked to close) to
    /// `out`, each with since when.
    fn idle_into(&self, out: &mut Vec<(u64, Arc<Tracker>)>) {
        let Ok(connections) = self.connections.lock() else {
            return;
        };
        for tracker in connections.values() {
            let (phase, since) = tracker.state();
            if phase.is_idle() && !tracker.evict.load(Ordering::Acquire) {
                out.push((since, tracker.clone()));
            }
        }
    }
}

/// A connection's entry in its worker's [`Registry`], removed when the
/// connection's task ends (or is dropped).
struct Listed<'a> {
    registry: &'a Registry,
    id: u64,
}

impl<'a> Listed<'a> {
    fn new(registry: &'a Registry, id: u64, tracker: &Arc<Tracker>) -> Self {
        if let Ok(mut connections) = registry.connections.lock() {
            connections.insert(id, tracker.clone());
        }
        Self { registry, id }
    }
}

impl Drop for Listed<'_> {
    fn drop(&mut self) {
        if let Ok(mut connections) = self.registry.connections.lock() {
            connections.remove(&self.id);
        }
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
/// end): a connection that never sends costs its socket and a task, not an
/// HTTP connection's buffers. Whether to serve it; not when it is asked to
/// make room, its head time runs out or the worker drains.
async fn first_byte(
    shared: &Shared,
    stream: &TcpStream,
    tracker: &Arc<Tracker>,
    peer: SocketAddr,
) -> bool {
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
    if serve {
        tracker.received();
    }
    serve
}

/// Serves one connection (plain from its first byte, or after its TLS
/// handshake) until it ends: its phases timed, closed when the accept loop
/// asks while it is idle, or when the worker drains.
///
/// A hand-written poll loop rather than `select!`, so that after every
/// poll of the connection it reads the tracker (which that poll moved) and
/// re-arms its timer only when the phase's deadline comes before the armed
/// one; a later deadline is taken up when the armed one fires.
async fn serve_connection<I>(shared: &Shared, io: I, peer: SocketAddr, tracker: Arc<Tracker>)
where
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
    let drained = drain.changed();
    tokio::pin!(drained);
    let mut drain_listening = false;
    let asked = tracker.wake.notified();
    tokio::pin!(asked);
    let mut bounds = serving_bounds(
        Bounds {
            head: nanos_of(settings.header_timeout),
            idle: nanos_of(settings.keepalive_timeout),
            busy: 0,
            queue: 0,
        },
        settings,
        &shared.proxy,
    );
    // The deadline the timer is armed for ([`now_nanos`]); none once it
    // fired, until it is armed anew.
    let first = tracker.deadline(bounds);
    let mut armed = Some(first);
    let timer = tokio::time::sleep_until(instant_of(first));
    tokio::pin!(timer);
    // Whether `asked` is listed as a waiter of the tracker's Notify: from
    // then on it need not be polled until `evict` is set. (The drain watch
    // and the timer, which are polled once and then only when they have
    // fired, are polled outside tokio's cooperative budget: a poll the
    // budget refused would leave them without a waker.)
    let mut listening = false;
    // Whether the timer was polled since it was last reset: from then on
    // it need not be polled until it has elapsed.
    let mut timer_polled = false;
    // Whether the connection was asked to close once it has answered.
    let mut closing = false;
    // When it was asked to close ([`now_nanos`]). From then, or from its
    // last answer if later, an idle connection has [`ANSWER_WRITE_TIME`]
    // to write what it holds and close: its client may not be reading,
    // hyper cannot finish a close while its write is blocked, and no
    // phase deadline follows the one that asked.
    let mut closing_since = 0;
    let result = std::future::poll_fn(|cx| {
        loop {
            if let Poll::Ready(result) = conn.as_mut().poll(cx) {
                // A request that queued in the poll that ended its
                // connection (a write failed) leaves nothing for the
                // next connection polled on this thread.
                QUEUED.set(false);
                return Poll::Ready(Ended::Served(result));
            }
            if QUEUED.get() {
                QUEUED.set(false);
                tracker.queued.store(true, Ordering::Release);
            }
            if !listening || tracker.evict.load(Ordering::Acquire) {
                if asked.as_mut().poll(cx).is_ready() {
                    asked.set(tracker.wake.notified());
                    listening = false;
                    // Still idle: closed now (hyper closes an idle
                    // connection at once). One that has just started a
                    // request is left to it; the accept loop looks for
                    // another.
                    if tracker.evict.swap(false, Ordering::AcqRel)
                        && tracker.phase().is_idle()
                        && !closing
                    {
                        tracing::debug!(%peer, "idle connection closed to admit a new one (max_connections)");
                        closing = true;
                        closing_since = now_nanos();
                        conn.as_mut().graceful_shutdown();
                    }
                    continue;
                }
                listening = true;
            }
            // `has_changed` on the worker's own receiver (never marked
            // seen) reads a version, without the wait list's lock.
            if !closing && (!drain_listening || !matches!(shared.drain.has_changed(), Ok(false))) {
                if unbudgeted(drained.as_mut(), cx).is_ready() {
                    closing = true;
                    closing_since = now_nanos();
                    conn.as_mut().graceful_shutdown();
                    continue;
                }
                drain_listening = true;
            }
            let due = match tracker.deadline(bounds) {
                due if !closing => due,
                due => match tracker.state() {
                    (Phase::Idle, since) => closing_since
                        .max(since)
                        .saturating_add(nanos_of(ANSWER_WRITE_TIME)),
                    _ => due,
                },
            };
            if armed.is_none_or(|armed| due < armed) {
                timer.as_mut().reset(instant_of(due));
                armed = Some(due);
                timer_polled = false;
            }
            if armed.is_none() || (timer_polled && !timer.is_elapsed()) {
                return Poll::Pending;
            }
            timer_polled = true;
            if unbudgeted(timer.as_mut(), cx).is_pending() {
                return Poll::Pending;
            }
            // The armed deadline passed: is the phase's own one past too?
            // If not (the phase moved on since the timer was armed), it is
            // armed anew on the next round.
            armed = None;
            if due <= now_nanos() {
                match tracker.phase() {
                    Phase::Fresh | Phase::Head => return Poll::Ready(Ended::HeadTimedOut),
                    Phase::Busy => {
                        // Of the configuration in force now: a reload may
                        // have given requests more time since the
                        // connection opened.
                        bounds = serving_bounds(bounds, settings, &shared.proxy);
                        if tracker.deadline(bounds) <= now_nanos() {
                            return Poll::Ready(Ended::AnswerNotTaken);
                        }
                    }
                    Phase::Idle if !closing => {
                        tracing::debug!(%peer, "idle keep-alive connection closed (keepalive_timeout_ms)");
                        closing = true;
                        closing_since = now_nanos();
                        conn.as_mut().graceful_shutdown();
                    }
                    Phase::Idle => return Poll::Ready(Ended::CloseNotTaken),
                }
            }
        }
    })
    .await;
    open.ended = true;
    let proxy = &shared.proxy;
    match result {
        Ended::Served(Ok(())) => {}
        Ended::Served(Err(error)) => {
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
        Ended::HeadTimedOut => head_timed_out(proxy, peer, tracker.phase()),
        Ended::AnswerNotTaken | Ended::CloseNotTaken => {
            let kind = ANSWER_TIMEOUT;
            proxy.current().telemetry.connection_error(kind);
            if matches!(result, Ended::CloseNotTaken) {
                tracing::info!(
                    %peer,
                    kind,
                    "answer not taken by the client within 1 s of its idle connection being asked to close (keepalive_timeout_ms, max_connections or a drain); connection cut"
                );
            } else {
                tracing::info!(
                    %peer,
                    kind,
                    "answer not taken by the client in time (header_timeout_ms + body_timeout_ms + upstream.timeout_ms + 1 s from its request's start); connection closed"
                );
            }
        }
    }
}

/// How a connection's task ended.
enum Ended {
    /// hyper finished with the connection.
    Served(Result<(), hyper::Error>),
    /// A request head did not arrive within `header_timeout_ms`.
    HeadTimedOut,
    /// A request's answer was not taken within [`Bounds::busy`].
    AnswerNotTaken,
    /// Asked to close while idle, the connection still had bytes its
    /// client did not take [`ANSWER_WRITE_TIME`] later.
    CloseNotTaken,
}

/// Polls `future` outside tokio's cooperative budget, so that a `Pending`
/// answer means its waker is registered.
fn unbudgeted<F: Future + Unpin>(future: F, cx: &mut Context<'_>) -> Poll<F::Output> {
    let mut future = tokio::task::coop::unconstrained(future);
    Pin::new(&mut future).poll(cx)
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
/// closed to admit a new one at `max_connections`), `drain_deadline`
/// (open when `shutdown_grace_ms` ran out, and cut), `answer_timeout`
/// (an answer not taken in time) and `tls_handshake` (a failed inbound
/// TLS handshake).
pub const CONNECTION_ERROR_KINDS: [&str; 10] = [
    "parse",
    "too_large",
    "header_timeout",
    "incomplete",
    "closed",
    "other",
    IDLE_EVICTED,
    DRAIN_DEADLINE,
    ANSWER_TIMEOUT,
    TLS_HANDSHAKE,
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
    use futures_util::FutureExt as _;
    let proxy = proxy.clone();
    // `map`, not an `async` block awaiting the answer: such a block holds
    // the request future twice (as its capture and as the awaited state),
    // and hyper allocates the service's future once per connection (a
    // connection's largest piece after hyper's two 8 KiB buffers).
    service_fn(move |req| {
        tracker.set(Phase::Busy);
        let tracker = tracker.clone();
        proxy
            .handle(req, peer)
            .map(move |answer| answer.map(|resp| resp.map(|body| Answer { body, tracker })))
    })
}
