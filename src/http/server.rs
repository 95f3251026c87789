//! The listener: HTTP/1.1 with keep-alive (optionally over TLS), one task
//! per connection, a cap on connections served at once, and a graceful
//! shutdown that stops accepting and lets requests in flight finish.
//!
//! Connections are served by worker threads, one per core by default, each
//! running its own single-threaded tokio runtime. The accept loop hands
//! each new connection to the next worker in turn; from then on the
//! connection, its requests, their upstream exchanges and the pooled
//! upstream connections they use stay on that one thread. Nothing on a
//! request's path wakes another thread, and no task migrates between cores.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use pki_types::pem::PemObject;
use pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

use crate::config::{Config, TlsConfig};
use crate::pipeline::Proxy;

/// Longest a log line written on a worker thread waits to be handed to the
/// log writer.
const LOG_FLUSH_EVERY: Duration = Duration::from_millis(100);

/// Pause after a failed `accept` (e.g. out of file descriptors), so the
/// loop does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// How the listener serves connections.
#[derive(Clone)]
pub struct Settings {
    /// Time a client has to send its request line and headers; idle
    /// keep-alive connections are closed after it too.
    pub header_timeout: Duration,
    /// Largest request line and headers (431 beyond).
    pub max_header_bytes: usize,
    /// Connections served at once; further ones wait in the accept queue.
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
        .header_read_timeout(settings.header_timeout)
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
    loop {
        // Wait for a free slot first: past `max_connections`, new
        // connections stay in the accept queue while open ones are served.
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                // Small request/response exchanges: send each segment at once.
                let _ = stream.set_nodelay(true);
                let stream = match stream.into_std() {
                    Ok(s) => s,
                    Err(error) => {
                        tracing::warn!(%error, %peer, "cannot hand the connection to a worker");
                        continue;
                    }
                };
                // Round robin; a worker whose thread has ended is skipped.
                let mut handoff = Handoff {
                    stream,
                    peer,
                    permit,
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
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }

    drop(listener);
    tracing::info!("shutting down: draining open connections");
    // Closing their channels tells every worker to drain and stop, all at
    // once, so the whole shutdown takes at most one grace period.
    let done: Vec<_> = workers
        .into_iter()
        .map(|Worker { connections, done }| {
            drop(connections);
            done
        })
        .collect();
    for worker in done {
        let _ = worker.await;
    }
}

/// A worker thread: its own single-threaded runtime serving the
/// connections it is handed.
struct Worker {
    connections: tokio::sync::mpsc::UnboundedSender<Handoff>,
    /// Resolves when the thread has drained its connections.
    done: tokio::sync::oneshot::Receiver<()>,
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
        let (http, proxy, settings) = (http.clone(), proxy.clone(), settings.clone());
        std::thread::Builder::new()
            .name(format!("pusher-cutover-worker-{index}"))
            .spawn(move || {
                crate::upstream::set_worker_index(index);
                crate::telemetry::logging::batch_this_thread();
                runtime.block_on(async {
                    let graceful = GracefulShutdown::new();
                    // This thread's log lines go out in batches: when 16 KiB
                    // have gathered, and at least every LOG_FLUSH_EVERY.
                    tokio::spawn(async {
                        let mut tick = tokio::time::interval(LOG_FLUSH_EVERY);
                        loop {
                            tick.tick().await;
                            crate::telemetry::logging::flush_thread();
                        }
                    });
                    while let Some(Handoff {
                        stream,
                        peer,
                        permit,
                    }) = incoming.recv().await
                    {
                        match TcpStream::from_std(stream) {
                            Ok(stream) => {
                                accept(&http, &graceful, &proxy, &settings, stream, peer, permit)
                            }
                            Err(error) => {
                                tracing::warn!(%error, %peer, "cannot register the connection")
                            }
                        }
                    }
                    if tokio::time::timeout(settings.grace, graceful.shutdown())
                        .await
                        .is_err()
                    {
                        tracing::warn!(
                            grace_ms = settings.grace.as_millis() as u64,
                            worker = index,
                            "connections still open after the grace period"
                        );
                    }
                });
                // Dropping the runtime cancels what is left (idle pooled
                // upstream connections).
                drop(runtime);
                crate::telemetry::logging::flush_thread();
                let _ = finished.send(());
            })?;
        Ok(Self { connections, done })
    }
}

fn accept(
    http: &http1::Builder,
    graceful: &GracefulShutdown,
    proxy: &Proxy,
    settings: &Settings,
    stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
) {
    let (http, proxy, watcher) = (http.clone(), proxy.clone(), graceful.watcher());
    // Two tasks, not one with a branch: a task is as large as its largest
    // state, and a plain connection's is a quarter of a TLS one's (both are
    // held for every open connection).
    match settings.tls.clone() {
        None => {
            tokio::spawn(async move {
                serve_connection(&http, watcher, &proxy, stream, peer).await;
                drop(permit);
            });
        }
        Some(acceptor) => {
            let handshake_timeout = settings.header_timeout;
            tokio::spawn(async move {
                match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => serve_connection(&http, watcher, &proxy, tls, peer).await,
                    Ok(Err(error)) => tracing::debug!(%error, %peer, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
                drop(permit);
            });
        }
    }
}

/// Serves one connection (plain or after its TLS handshake) until it ends;
/// graceful shutdown sees it through `watcher`.
async fn serve_connection<I>(
    http: &http1::Builder,
    watcher: Watcher,
    proxy: &Proxy,
    io: I,
    peer: SocketAddr,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = http.serve_connection(TokioIo::new(io), service(proxy, peer));
    if let Err(error) = watcher.watch(conn).await {
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

/// Every [`connection_error_kind`].
pub const CONNECTION_ERROR_KINDS: [&str; 6] = [
    "parse",
    "too_large",
    "header_timeout",
    "incomplete",
    "closed",
    "other",
];

fn service(
    proxy: &Proxy,
    peer: SocketAddr,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = hyper::Response<crate::http::ResponseBody>,
    Error = std::convert::Infallible,
    Future = impl Future<
        Output = Result<hyper::Response<crate::http::ResponseBody>, std::convert::Infallible>,
    > + Send,
> + Clone
+ Send
+ 'static {
    let proxy = proxy.clone();
    service_fn(move |req| proxy.handle(req, peer))
}
