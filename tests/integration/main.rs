//! Integration tests: the proxy on an ephemeral loopback port in front of an
//! in-process fake upstream that verifies every signature independently.

mod support;

mod cli;
mod errors;
mod legacy_replay;
mod logging;
mod passthrough;
mod stats;
mod trigger;
mod vectors;
