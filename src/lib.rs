//! `pusher-cutover`: a sidecar that serves the two Pusher Channels HTTP API
//! methods deprecated in 2012-09 in front of any current-API server.
//!
//! It verifies each deprecated call's signature, rewrites it into the
//! current form, re-signs it, forwards it, maps the answer back to what old
//! clients expect, passes every other call through unchanged, and logs every
//! deprecated call with the caller's identity.
//!
//! Modules, in pipeline order:
//! - [`route`]: classify a request (legacy stats, legacy trigger, passthrough);
//! - [`query`]: decode a query string strictly;
//! - [`signature`]: sign and verify (`auth_version` 1.0);
//! - [`translate`]: the two translations, one file per legacy route, and
//!   the mapping of upstream answers back;
//! - [`upstream`]: the pooled client and its timeouts;
//! - [`passthrough`]: forwarding everything else unchanged;
//! - [`proxy`]: the pipeline that ties them together and logs each request;
//! - [`server`]: the listener and graceful shutdown;
//! - [`config`], [`clock`], [`error`]: settings, time, and the status table.

pub mod clock;
pub mod config;
pub mod error;
pub mod passthrough;
pub mod proxy;
pub mod query;
pub mod route;
pub mod server;
pub mod signature;
pub mod telemetry;
pub mod translate;
pub mod upstream;

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tokio::net::TcpListener;

pub use crate::clock::{Clock, FixedClock, SystemClock};
pub use crate::config::Config;
pub use crate::proxy::Proxy;

/// Body of every answer the proxy gives: its own, or the upstream's streamed.
pub type ResponseBody = Either<Full<Bytes>, Incoming>;

/// Serves `config` on `listener` with the system clock until `shutdown`
/// completes; then drains open connections for up to the configured grace.
pub async fn run(listener: TcpListener, config: Config, shutdown: impl Future<Output = ()>) {
    run_with_clock(listener, config, Arc::new(SystemClock), shutdown).await;
}

/// [`run`] with an injected clock (tests pin it to verify recorded requests).
pub async fn run_with_clock(
    listener: TcpListener,
    config: Config,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()>,
) {
    let header_timeout = config.header_timeout;
    let grace = config.shutdown_grace;
    let proxy = Proxy::new(config, clock);
    server::serve(listener, proxy, header_timeout, grace, shutdown).await;
}
