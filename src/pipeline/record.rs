//! The record stage: one log line and one telemetry observation per
//! request, whatever happens to it — including when the client goes away
//! before the answer (hyper then drops the request future, and the guard
//! records it on drop).

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};

use crate::chain::ErrorChain;
use crate::error::{Fault, ProxyError};
use crate::pipeline::classify::RouteKind;
use crate::telemetry::metrics::AppSeries;
use crate::telemetry::usage::UNKNOWN_LIBRARY;
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

/// A client address as text, formatted once per request for both the log
/// line and the ledger; IPv4 (the common case) without `fmt`'s machinery.
#[derive(Clone, Copy)]
pub struct IpText {
    buf: [u8; 48],
    len: usize,
}

impl IpText {
    /// Formats `ip` as `Display` does.
    pub fn new(ip: IpAddr) -> Self {
        let mut buf = [0u8; 48];
        let len = match ip {
            IpAddr::V4(v4) => {
                let mut len = 0;
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        buf[len] = b'.';
                        len += 1;
                    }
                    let mut digits = itoa::Buffer::new();
                    let digits = digits.format(octet).as_bytes();
                    buf[len..len + digits.len()].copy_from_slice(digits);
                    len += digits.len();
                }
                len
            }
            // At most 45 characters.
            IpAddr::V6(v6) => {
                let mut cursor = std::io::Cursor::new(&mut buf[..]);
                let _ = write!(cursor, "{v6}");
                usize::try_from(cursor.position()).unwrap_or(0)
            }
        };
        Self { buf, len }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

impl std::fmt::Debug for IpText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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
    /// The sending library's family id, once classified.
    pub library: Option<&'static str>,
    /// The short hash of the sender's wire traits, once classified.
    pub fingerprint: Option<String>,
    /// The event name of a legacy trigger.
    pub event: Option<String>,
    /// The channel template of a legacy call.
    pub channel: Option<String>,
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
    series: Option<&'a AppSeries>,
    started: Instant,
    now: u64,
    method: Method,
    kind: RouteKind,
    app_id: Option<String>,
    user_agent: Option<String>,
    client_addr: IpText,
    /// Filled in by the pipeline.
    pub record: Record,
    done: bool,
}

impl<'a> Recorder<'a> {
    /// Starts recording a request received at Unix time `now`, counted in
    /// `series` (the configured app its path names; `None` for `other`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        telemetry: &'a Telemetry,
        series: Option<&'a AppSeries>,
        now: u64,
        method: &Method,
        kind: RouteKind,
        app_id: Option<&str>,
        user_agent: Option<&[u8]>,
        peer: SocketAddr,
    ) -> Self {
        Self {
            telemetry,
            series,
            started: Instant::now(),
            now,
            method: method.clone(),
            kind,
            app_id: app_id.map(|a| truncate(a).to_owned()),
            user_agent: user_agent.map(|v| truncate(&String::from_utf8_lossy(v)).to_owned()),
            client_addr: IpText::new(peer.ip()),
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
            series: self.series,
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
                client_address: self.client_addr.as_str(),
                library: record.library.unwrap_or(UNKNOWN_LIBRARY),
                fingerprint: record.fingerprint.as_deref().unwrap_or_default(),
                event: record.event.as_deref().unwrap_or_default(),
                channel: record.channel.as_deref().unwrap_or_default(),
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
    ///
    /// With the text format the line skips `tracing`'s per-field dispatch
    /// ([`crate::logging::direct_lines`]); it is the same line either way
    /// (a test below compares the two).
    fn log(&self, status: u16, error: Option<&ProxyError>, duration: Duration) {
        let fault = error.map(ProxyError::fault);
        let error = error.map(|e| ErrorChain(e).to_string()).or_else(|| {
            (status == CLIENT_CLOSED)
                .then(|| "client closed the connection before the answer".into())
        });
        let line = LineValues {
            status,
            latency_ms: duration.as_secs_f64() * 1000.0,
            error: error.as_deref(),
        };
        let level = match (fault, self.kind.is_legacy()) {
            (Some(Fault::Upstream | Fault::Internal), _) => tracing::Level::ERROR,
            (_, true) => tracing::Level::WARN,
            (_, false) => tracing::Level::INFO,
        };
        if !crate::logging::direct_lines() {
            self.event(level, &line);
        } else if line_enabled(level) {
            crate::logging::write_line(level, |l| self.fields(l, &line));
        }
    }

    fn message(&self) -> &'static str {
        if self.kind.is_legacy() {
            "legacy call"
        } else {
            "request"
        }
    }

    /// The line as a `tracing` event.
    fn event(&self, level: tracing::Level, line: &LineValues<'_>) {
        macro_rules! event {
            ($level:expr) => {
                tracing::event!(
                    $level,
                    method = %self.method,
                    route = self.kind.template(),
                    app_id = self.app_id.as_deref(),
                    status = line.status,
                    upstream_status = self.record.upstream_status,
                    latency_ms = line.latency_ms,
                    auth_key = self.record.auth_key.as_deref(),
                    user_agent = self.user_agent.as_deref(),
                    client_addr = %self.client_addr.as_str(),
                    error = line.error,
                    "{}",
                    self.message()
                )
            };
        }
        match level {
            tracing::Level::ERROR => event!(tracing::Level::ERROR),
            tracing::Level::WARN => event!(tracing::Level::WARN),
            _ => event!(tracing::Level::INFO),
        }
    }

    /// The same fields, in the same order, written straight into a line.
    fn fields(&self, l: &mut crate::logging::Line<'_>, line: &LineValues<'_>) {
        l.message(self.message());
        l.display("method", self.method.as_str());
        l.str("route", Some(self.kind.template()));
        l.str("app_id", self.app_id.as_deref());
        l.u64("status", Some(u64::from(line.status)));
        l.u64(
            "upstream_status",
            self.record.upstream_status.map(u64::from),
        );
        l.f64("latency_ms", line.latency_ms);
        l.str("auth_key", self.record.auth_key.as_deref());
        l.str("user_agent", self.user_agent.as_deref());
        l.display("client_addr", self.client_addr.as_str());
        l.str("error", line.error);
    }
}

/// Whether this module's lines at `level` are wanted: what `tracing`
/// would decide for [`Recorder::event`] (a callsite per level, as
/// `enabled!` takes a constant one).
fn line_enabled(level: tracing::Level) -> bool {
    match level {
        tracing::Level::ERROR => tracing::enabled!(tracing::Level::ERROR),
        tracing::Level::WARN => tracing::enabled!(tracing::Level::WARN),
        _ => tracing::enabled!(tracing::Level::INFO),
    }
}

/// What a request's line says beyond what its [`Recorder`] holds.
struct LineValues<'e> {
    status: u16,
    latency_ms: f64,
    error: Option<&'e str>,
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

    #[test]
    fn ip_text_is_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.200.3.45",
            "255.255.255.255",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:192.168.1.1",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            let ip: IpAddr = ip.parse().expect("an address");
            assert_eq!(IpText::new(ip).as_str(), ip.to_string());
        }
    }

    /// The line written straight ([`Recorder::fields`]) is the line the
    /// `tracing` event ([`Recorder::event`]) gives, for every route, with
    /// and without the optional fields, escaping included.
    #[test]
    fn the_direct_line_is_the_tracing_line() {
        use crate::logging::{format_at, tests::event_at};
        let config = crate::config::Config::from_toml_str(
            "[upstream]\nurl = \"http://127.0.0.1:6001\"\n",
            &|_: &str| None,
        )
        .expect("a valid config");
        let telemetry = Telemetry::new(&config);
        let at = std::time::UNIX_EPOCH + Duration::new(1_764_000_000, 5_000);
        let peer: SocketAddr = "[2001:db8::1]:4000".parse().expect("an address");
        for (kind, method, app_id, agent, auth_key, upstream, error) in [
            (
                RouteKind::LegacyTrigger,
                Method::POST,
                Some("4242"),
                Some(&b"pusher-php-server/2.1.2"[..]),
                Some("key"),
                Some(200),
                None,
            ),
            (
                RouteKind::LegacyStats,
                Method::GET,
                Some("app \"x\""),
                Some(&b"ua\n\xff"[..]),
                None,
                None,
                Some("invalid signature:\n \"quoted\""),
            ),
            (
                RouteKind::Passthrough,
                Method::DELETE,
                None,
                None,
                None,
                Some(503),
                Some("e"),
            ),
        ] {
            let mut rec = Recorder::new(&telemetry, None, 0, &method, kind, app_id, agent, peer);
            rec.record.auth_key = auth_key.map(str::to_owned);
            rec.record.upstream_status = upstream;
            rec.done = true; // not recorded on drop
            let line = LineValues {
                status: 401,
                latency_ms: 0.25,
                error,
            };
            for level in [
                tracing::Level::ERROR,
                tracing::Level::WARN,
                tracing::Level::INFO,
            ] {
                let via_event = event_at(at, || rec.event(level, &line));
                let direct = format_at(at, level, |l| rec.fields(l, &line));
                assert_eq!(direct, via_event);
                assert!(direct.contains(" status=401 "), "{direct}");
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn ipv4_text_is_display(bits: u32) {
            let ip = IpAddr::from(bits.to_be_bytes());
            let text = IpText::new(ip);
            proptest::prop_assert_eq!(text.as_str(), ip.to_string());
        }
    }
}
