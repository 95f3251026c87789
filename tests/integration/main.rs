//! Integration tests: the proxy on an ephemeral loopback port in front of an
//! in-process fake upstream that verifies every signature independently.

// Shared with the e2e and deploy tests; each uses part of it.
#[path = "../support/mod.rs"]
#[allow(dead_code)]
mod support;

mod admin_auth;
mod ambiguity;
mod cli;
mod coalesce;
mod cutover;
mod errors;
mod fleet;
mod hardening;
mod ledger;
mod legacy_replay;
mod logging;
mod operations;
mod passthrough;
mod report;
mod starvation;
mod stats;
mod telemetry;
mod trigger;
mod upstream_protocol;
mod vectors;
mod walkthrough;
