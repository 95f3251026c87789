//! The listener: HTTP/1.1 with keep-alive, one task per connection, and a
//! graceful shutdown that stops accepting and lets requests in flight finish.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};

use crate::proxy::Proxy;

/// Pause after a failed `accept` (e.g. out of file descriptors), so the
/// loop does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `proxy` on `listener` until `shutdown` completes, then waits up
/// to `grace` for open connections to finish their requests.
pub async fn serve(
    listener: TcpListener,
    proxy: Proxy,
    header_timeout: Duration,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(header_timeout);
    tokio::pin!(shutdown);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "listening");
    }

    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => serve_connection(&http, &graceful, &proxy, stream, peer),
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            () = &mut shutdown => break,
        }
    }

    drop(listener);
    tracing::info!("shutting down: draining open connections");
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_ms = grace.as_millis() as u64,
            "connections still open after the grace period"
        );
    }
}

fn serve_connection(
    http: &http1::Builder,
    graceful: &GracefulShutdown,
    proxy: &Proxy,
    stream: TcpStream,
    peer: SocketAddr,
) {
    // Small request/response exchanges: send each segment at once.
    let _ = stream.set_nodelay(true);
    let proxy = proxy.clone();
    let service = service_fn(move |req| {
        let proxy = proxy.clone();
        async move { Ok::<_, std::convert::Infallible>(proxy.handle(req, peer).await) }
    });
    let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
    tokio::spawn(async move {
        if let Err(error) = conn.await {
            tracing::debug!(%error, %peer, "connection ended with an error");
        }
    });
}
