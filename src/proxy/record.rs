//! The record stage: one log line and one telemetry observation per
//! request, whatever happens to it — including when the client goes away
//! before the answer (hyper then drops the request future, and the guard
//! records it on drop).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};

use crate::error::{ErrorChain, Fault, ProxyError};
use crate::route::RouteKind;
use crate::telemetry::{Observation, Outcome, Telemetry, VerifiedCaller};

/// Longest caller-supplied value (app id, `auth_key`, user agent) kept for
/// logs and the ledger; longer ones are cut, so hostile input cannot bloat
/// either.
pub const MAX_LOGGED_LEN: usize = 128;

/// The status logged for a request whose client left before the answer
/// (nginx's convention; never sent).
const CLIENT_CLOSED: u16 = 499;

/// Cuts `s` to at most [`MAX_LOGGED_LEN`] bytes on a character boundary.
pub fn truncate(s: &str) -> &str {
    if s.len() <= MAX_LOGGED_LEN {
        return s;
    }
    let mut end = MAX_LOGGED_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// What the pipeline learns about a request as it goes.
#[derive(Debug, Default)]
pub struct Record {
    /// The `auth_key` it was signed with (cut to [`MAX_LOGGED_LEN`]).
    pub auth_key: Option<String>,
    /// The upstream's status, if it answered.
    pub upstream_status: Option<u16>,
    /// Time spent on upstream exchanges, if any.
    pub upstream_time: Option<Duration>,
    /// The request passed signature verification.
    pub verified: bool,
}

impl Record {
    /// Adds time spent waiting on the upstream.
    pub fn add_upstream_time(&mut self, d: Duration) {
        *self.upstream_time.get_or_insert_default() += d;
    }
}

/// Records a request exactly once: on [`Recorder::finish`], or on drop if
/// the request never got that far.
#[derive(Debug)]
pub struct Recorder<'a> {
    telemetry: &'a Telemetry,
    started: Instant,
    now: u64,
    method: Method,
    kind: RouteKind,
    app_id: Option<String>,
    user_agent: Option<String>,
    peer: SocketAddr,
    /// Filled in by the pipeline.
    pub record: Record,
    done: bool,
}

impl<'a> Recorder<'a> {
    /// Starts recording a request received at Unix time `now`.
    pub fn new(
        telemetry: &'a Telemetry,
        now: u64,
        method: &Method,
        kind: RouteKind,
        app_id: Option<&str>,
        user_agent: Option<&[u8]>,
        peer: SocketAddr,
    ) -> Self {
        Self {
            telemetry,
            started: Instant::now(),
            now,
            method: method.clone(),
            kind,
            app_id: app_id.map(|a| truncate(a).to_owned()),
            user_agent: user_agent.map(|v| truncate(&String::from_utf8_lossy(v)).to_owned()),
            peer,
            record: Record::default(),
            done: false,
        }
    }

    /// Records the answer.
    pub fn finish(mut self, status: StatusCode, error: Option<&ProxyError>) {
        self.done = true;
        self.emit(status.as_u16(), error, outcome(status, error));
    }

    fn emit(&self, status: u16, error: Option<&ProxyError>, outcome: Outcome) {
        let duration = self.started.elapsed();
        let record = &self.record;
        self.telemetry.observe(&Observation {
            route: self.kind,
            app_id: self.app_id.as_deref(),
            outcome,
            duration,
            upstream_duration: record.upstream_time,
            signature_failure: match error {
                Some(ProxyError::Signature(e)) => Some(e.reason()),
                _ => None,
            },
            caller: record.verified.then(|| VerifiedCaller {
                auth_key: record.auth_key.as_deref().unwrap_or_default(),
                user_agent: self.user_agent.as_deref().unwrap_or_default(),
                client_address: self.peer.ip(),
            }),
            now: self.now,
        });
        self.log(status, error, duration);
    }

    /// Legacy calls log at WARN with the caller's identity (app, key, user
    /// agent, address), so usage can be tracked from logs alone; upstream
    /// and internal failures at ERROR; other requests at INFO. Neither
    /// secrets nor `auth_signature` are fields of the line, and error
    /// messages never contain them.
    fn log(&self, status: u16, error: Option<&ProxyError>, duration: Duration) {
        let fault = error.map(ProxyError::fault);
        let error = error.map(|e| ErrorChain(e).to_string()).or_else(|| {
            (status == CLIENT_CLOSED)
                .then(|| "client closed the connection before the answer".into())
        });
        let latency_ms = duration.as_secs_f64() * 1000.0;
        macro_rules! line {
            ($level:expr) => {
                tracing::event!(
                    $level,
                    method = %self.method,
                    route = self.kind.template(),
                    app_id = self.app_id.as_deref(),
                    status,
                    upstream_status = self.record.upstream_status,
                    latency_ms,
                    auth_key = self.record.auth_key.as_deref(),
                    user_agent = self.user_agent.as_deref(),
                    client_addr = %self.peer.ip(),
                    error = error.as_deref(),
                    "{}",
                    if self.kind.is_legacy() { "legacy call" } else { "request" }
                )
            };
        }
        match (fault, self.kind.is_legacy()) {
            (Some(Fault::Upstream | Fault::Internal), _) => line!(tracing::Level::ERROR),
            (_, true) => line!(tracing::Level::WARN),
            (_, false) => line!(tracing::Level::INFO),
        }
    }
}

impl Drop for Recorder<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.emit(CLIENT_CLOSED, None, Outcome::ClientError);
        }
    }
}

/// The metrics outcome of an answer.
fn outcome(status: StatusCode, error: Option<&ProxyError>) -> Outcome {
    if let Some(ProxyError::Gone { .. }) = error {
        return Outcome::Rejected;
    }
    match error.map(ProxyError::fault) {
        Some(Fault::Client) if status == StatusCode::UNAUTHORIZED => Outcome::AuthFailed,
        Some(Fault::Client) => Outcome::ClientError,
        Some(Fault::Upstream | Fault::Internal) => Outcome::UpstreamError,
        None => Outcome::of_status(status.as_u16()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_respects_char_boundaries() {
        let s = "é".repeat(100);
        let t = truncate(&s);
        assert!(t.len() <= MAX_LOGGED_LEN && t.len() >= MAX_LOGGED_LEN - 1);
        assert_eq!(truncate("short"), "short");
    }
}
