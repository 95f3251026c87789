//! Running the proxy: the listeners, the ledger's writer, reloads and the
//! graceful shutdown around [`crate::pipeline::Proxy`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::http::{admin, server};
use crate::pipeline::Proxy;
use crate::reload::{ConfigSource, Reloader};
use crate::telemetry::store::StoreError;
use crate::telemetry::{Persistence, Telemetry};

/// What [`run_with`] takes besides the config.
#[derive(Debug)]
pub struct Options {
    /// The clock (tests pin it).
    pub clock: Arc<dyn Clock>,
    /// An already bound admin listener; when `None`, `[admin] listen` is
    /// bound (unless the admin listener is disabled).
    pub admin_listener: Option<TcpListener>,
    /// Where to reload the configuration from (`POST /reload`, SIGHUP);
    /// `None` disables reloading.
    pub reload: Option<ConfigSource>,
    /// The SIGHUP stream to reload on (the binary's; tests reload through
    /// the admin listener). The binary listens for SIGHUP before it loads
    /// its configuration: until a process listens, SIGHUP ends it, and a
    /// `systemctl reload` soon after a start would stop the service.
    #[cfg(unix)]
    pub sighup: Option<tokio::signal::unix::Signal>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            admin_listener: None,
            reload: None,
            #[cfg(unix)]
            sighup: None,
        }
    }
}

/// Why the proxy could not start, or did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The final ledger write failed, retried: calls are lost.
    #[error("the usage ledger could not be written at shutdown: {calls} recorded call(s) are lost")]
    LedgerNotWritten {
        /// The calls recorded since the last write.
        calls: u64,
    },
    /// The usage ledger could not be opened.
    #[error("cannot open the usage ledger")]
    Store(#[from] StoreError),
    /// The TLS certificate or key could not be loaded.
    #[error("cannot set up inbound TLS")]
    Tls(#[from] crate::http::tls::TlsError),
    /// No worker thread could be started: nothing was served.
    #[error("cannot start a worker thread")]
    NoWorkers(#[source] std::io::Error),
    /// The admin listener could not be bound.
    #[error("cannot bind the admin listener on {addr}")]
    BindAdmin {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Serves `config` on `listener` with the system clock until `shutdown`
/// completes; see [`run_with`].
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    run_with(listener, config, Options::default(), shutdown).await
}

/// Serves `config` on `listener` until `shutdown` completes.
///
/// Loads the ledger from `[telemetry] data_dir`, starts the admin listener
/// and the ledger's background writer, serves, and on shutdown: turns
/// `/readyz` to 503, stops accepting, drains open connections for up to the
/// grace period, writes the ledger a last time, and stops the admin
/// listener.
pub async fn run_with(
    listener: TcpListener,
    config: Config,
    options: Options,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let clock = options.clock;
    let telemetry = Arc::new(Telemetry::new(&config));
    // What can fail at start comes before the ledger is opened, which marks
    // it open until the last write (a run that stops here wrote nothing).
    let settings = server::Settings::from_config(&config)?;
    let admin_listener = match (options.admin_listener, config.admin.listen) {
        (Some(l), _) => Some(l),
        (None, Some(addr)) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| RunError::BindAdmin { addr, source })?,
        ),
        (None, None) => None,
    };
    let persistence = match &config.telemetry.data_dir {
        Some(dir) => Some(Persistence::open(dir, &telemetry, clock.unix_now())?),
        None => {
            tracing::warn!("no [telemetry] data_dir: the usage ledger is kept in memory only");
            telemetry.ledger().recording_since(clock.unix_now());
            None
        }
    };

    let ready = Arc::new(AtomicBool::new(false));
    let (stop, stopped) = watch::channel(false);
    let until_stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let flush_every = config.telemetry.flush_interval;
    let grace = config.shutdown_grace;
    let admin_token = config.admin.token.clone();
    let admin_configured = config.admin.listen;
    let proxy = Proxy::new(config, clock.clone(), telemetry.clone());
    let certificate = settings.tls.as_ref().map(|tls| tls.certificate.clone());
    if let Some(served) = &certificate {
        // Before a reload can renew it (the reloader and the admin
        // listener start below).
        let served = served.current();
        served.warn_if_ending(i64::try_from(clock.unix_now()).unwrap_or(i64::MAX));
        telemetry.tls_certificate(&served);
    }
    let reloader = options.reload.map(|source| {
        Reloader::new(source, proxy.clone(), telemetry.clone()).with_tls(certificate)
    });
    let admin = admin_listener.map(|l| {
        // Exposed if either the configured or the bound address is not
        // loopback (a test passes a loopback listener for a configured
        // `0.0.0.0`).
        let addrs: Vec<_> = admin_configured
            .into_iter()
            .chain(l.local_addr().ok())
            .collect();
        let admin = admin::Admin {
            access: admin::Access::new(admin_token, &addrs),
            telemetry: telemetry.clone(),
            ready: ready.clone(),
            clock: clock.clone(),
            reloader: reloader.clone(),
        };
        tokio::spawn(admin::serve(l, admin, until_stopped(stopped.clone())))
    });
    let flusher = persistence.clone().map(|p| {
        let telemetry = telemetry.clone();
        let clock = clock.clone();
        let every = flush_every;
        let stop = until_stopped(stopped.clone());
        tokio::spawn(async move {
            tokio::pin!(stop);
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => { p.flush(&telemetry, clock.unix_now()).await; }
                    () = &mut stop => break,
                }
            }
        })
    });

    #[cfg(unix)]
    let sighup = match (&reloader, options.sighup) {
        (Some(reloader), Some(hup)) => Some(spawn_sighup(
            hup,
            reloader.clone(),
            until_stopped(stopped.clone()),
        )),
        _ => None,
    };
    ready.store(true, Ordering::Release);
    let draining = async {
        shutdown.await;
        ready.store(false, Ordering::Release);
    };
    let served = server::serve(listener, proxy, settings, draining).await;
    if served.is_err() {
        ready.store(false, Ordering::Release);
    }

    let _ = stop.send(true);
    if let Some(flusher) = flusher {
        let _ = flusher.await;
    }
    let mut unwritten = None;
    if let Some(p) = &persistence {
        // The last write, retried for at most FINAL_WRITE_RETRY: nothing
        // recorded may be lost silently. It marks the ledger closed; one
        // left open tells the next run that calls may be missing.
        let until = tokio::time::Instant::now() + FINAL_WRITE_RETRY.min(grace);
        loop {
            if p.close(&telemetry, clock.unix_now()).await {
                tracing::info!("usage ledger written");
                break;
            }
            if tokio::time::Instant::now() >= until {
                let calls = p.unwritten(&telemetry);
                tracing::error!(
                    unwritten_calls = calls,
                    "usage ledger not written: the calls recorded since its last write are lost"
                );
                unwritten = Some(calls);
                break;
            }
            tokio::time::sleep(FINAL_WRITE_PAUSE).await;
        }
    }
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    #[cfg(unix)]
    if let Some(sighup) = sighup {
        let _ = sighup.await;
    }
    served.map_err(RunError::NoWorkers)?;
    match unwritten {
        Some(calls) => Err(RunError::LedgerNotWritten { calls }),
        None => Ok(()),
    }
}

/// How long the final ledger write is retried at most (and never longer
/// than `shutdown_grace_ms`).
pub const FINAL_WRITE_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// The pause between final write attempts.
const FINAL_WRITE_PAUSE: std::time::Duration = std::time::Duration::from_millis(200);

/// Reloads on every SIGHUP `hup` receives (one received before this
/// started included) until `stop` completes.
#[cfg(unix)]
fn spawn_sighup(
    mut hup: tokio::signal::unix::Signal,
    reloader: Reloader,
    stop: impl Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                Some(()) = hup.recv() => {
                    tracing::info!("SIGHUP received: reloading the configuration");
                    // On the blocking pool: a reload reads files, and this
                    // thread also accepts the proxy's connections. A stop
                    // does not wait for a reload stuck on its file.
                    let reloader = reloader.clone();
                    let job = tokio::task::spawn_blocking(move || reloader.reload());
                    tokio::select! {
                        _ = job => {}
                        () = &mut stop => break,
                    }
                }
                () = &mut stop => break,
            }
        }
    })
}
