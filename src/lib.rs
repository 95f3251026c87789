//! `pusher-cutover`: a sidecar that serves the two Pusher Channels HTTP API
//! methods deprecated in 2012-09 in front of any current-API server.
//!
//! It verifies each deprecated call's signature, rewrites it into the
//! current form, re-signs it, forwards it, maps the answer back to what old
//! clients expect, passes every other call through unchanged, and logs every
//! deprecated call with the caller's identity.
//!
//! Modules, in the order a request meets them, after [`cli`] (the command
//! line and its subcommands) and [`service`] (running the proxy: listeners,
//! the ledger's writer, reloads, graceful shutdown):
//! - [`http`]: the listener and graceful shutdown ([`http::server`]), the
//!   admin listener ([`http::admin`]), hop-by-hop headers, the answers the
//!   proxy builds, request bodies;
//! - [`pipeline`]: classify → verify → dispatch → record, once for every
//!   request, over the configuration in force ([`pipeline::Proxy`]);
//! - [`routes`]: one file per route, each owning its call's whole story:
//!   [`routes::channel_stats`] and [`routes::channel_event`] (the two
//!   deprecated calls: parse → translate → exchange → map back) and
//!   [`routes::passthrough`] (everything else);
//! - [`pusher`]: Pusher's HTTP API apart from any request: signatures (a
//!   [`pusher::signature::Signer`]), strict query decoding, channel names;
//! - [`upstream`]: the pooled client and its timeouts;
//! - [`telemetry`]: metrics, the usage ledger and its store, the log
//!   format, library fingerprints and call sites;
//! - [`report`]: who still makes deprecated calls, as a table, JSON or
//!   HTML, from ledgers or running sidecars;
//! - [`config`], [`reload`], [`clock`]: settings, their reloading, time;
//! - [`error`]: every way a request fails and the one table mapping that
//!   to a status and a fault; [`chain`]: an error with its causes.
#![forbid(unsafe_code)]

pub mod chain;
pub mod cli;
pub mod clock;
pub mod config;
pub mod error;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
pub mod http;
pub mod pipeline;
pub mod pusher;
pub mod reload;
pub mod report;
pub mod routes;
pub mod service;
pub mod telemetry;
pub mod upstream;

pub use crate::clock::{Clock, FixedClock, SystemClock};
pub use crate::config::Config;
pub use crate::pipeline::Proxy;
pub use crate::reload::{ConfigSource, Reloader};
pub use crate::service::{Options, RunError, run, run_with};
