//! The record stage: one log line and one telemetry observation per
//! request, whatever happens to it — including when the client goes away
//! before the answer (hyper then drops the request future, and the guard
//! records it on drop).

use std::borrow::Cow;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::Either;
use hyper::header::HeaderValue;
use hyper::{Method, Response, StatusCode};

use super::cutover::Path;
use crate::chain::ErrorChain;
use crate::error::{Fault, ProxyError};
use crate::http::{ResponseBody, StreamEnd};
use crate::pipeline::classify::RouteKind;
use crate::telemetry::fingerprint::{FingerprintId, Library};
use crate::telemetry::metrics::AppSeries;
use crate::telemetry::{Observation, Outcome, Telemetry, VerifiedCaller};
use crate::upstream::UpstreamError;

/// Longest caller-supplied value (app id, `auth_key`, user agent) kept for
/// logs and the ledger; longer ones are cut, so hostile input cannot bloat
/// either.
pub const MAX_LOGGED_LEN: usize = 128;

/// The status logged for a request whose client left before the answer
/// (nginx's convention; never sent).
const CLIENT_CLOSED: u16 = 499;

/// The status logged for a request cut by the drain deadline (never sent).
const DRAIN_CUT: u16 = 503;

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

/// A client address as text, formatted at most once per request (for a
/// verified caller, whose ledger entry and log line both name it); IPv4
/// (the common case) without `fmt`'s machinery.
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
            IpAddr::V6(v6) => {
                let mut cursor = std::io::Cursor::new(&mut buf[..]);
                write!(cursor, "{v6}")
                    .expect("invariant: an IPv6 address is at most 45 characters");
                usize::try_from(cursor.position()).expect("invariant: a position within 48 bytes")
            }
        };
        Self { buf, len }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len])
            .expect("invariant: IpText holds the ASCII that `new` wrote")
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
    /// The sending library's family, once classified.
    pub library: Option<Library>,
    /// The short hash of the sender's wire traits, once classified.
    pub fingerprint: Option<FingerprintId>,
    /// The event name of a legacy trigger.
    pub event: Option<String>,
    /// The channel template of a legacy call.
    pub channel: Option<String>,
    /// The cutover path a verified legacy call took.
    pub path: Option<Path>,
}

/// The target of the per-request line, whatever module writes it: what
/// `RUST_LOG` names to filter it (`warn,pusher_cutover::request=info`).
pub const REQUEST_TARGET: &str = "pusher_cutover::request";

impl Record {
    /// Adds time spent waiting on the upstream.
    pub fn add_upstream_time(&mut self, d: Duration) {
        *self.upstream_time.get_or_insert_default() += d;
    }
}

/// Where a [`Recorder`] records: the request's own borrow of the telemetry
/// (and its app's series), or, once the request has handed its streamed
/// answer to hyper, handles of its own on both.
#[derive(Debug)]
enum Sink<'a> {
    Borrowed {
        telemetry: &'a Arc<Telemetry>,
        series: Option<&'a Arc<AppSeries>>,
    },
    Owned {
        telemetry: Arc<Telemetry>,
        series: Option<Arc<AppSeries>>,
    },
}

/// Records a request exactly once: on [`Recorder::finish`]; for a streamed
/// answer once its body has ended ([`Recorder::finish_response`]); or on
/// drop if the request never got that far.
#[derive(Debug)]
pub struct Recorder<'a> {
    sink: Sink<'a>,
    started: Instant,
    now: u64,
    method: Method,
    kind: RouteKind,
    app_id: Option<String>,
    /// The `User-Agent` header as received (a handle on the request's
    /// bytes): made text only where a line or the ledger takes it.
    user_agent: Option<HeaderValue>,
    /// The peer's address, made text only where it is written.
    client_addr: IpAddr,
    /// Filled in by the pipeline.
    pub record: Record,
    /// The status and latency of a streamed answer whose head has gone
    /// out, recorded when its body ends.
    answered: Option<(StatusCode, Duration)>,
    /// Dropped unanswered because the drain deadline passed.
    drain_cut: bool,
    done: bool,
}

impl<'a> Recorder<'a> {
    /// Starts recording a request received at Unix time `now`, counted in
    /// `series` (the configured app its path names; `None` for `other`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        telemetry: &'a Arc<Telemetry>,
        series: Option<&'a Arc<AppSeries>>,
        now: u64,
        method: &Method,
        kind: RouteKind,
        app_id: Option<&str>,
        user_agent: Option<&HeaderValue>,
        peer: SocketAddr,
    ) -> Self {
        Self {
            sink: Sink::Borrowed { telemetry, series },
            started: Instant::now(),
            now,
            method: method.clone(),
            kind,
            app_id: app_id.map(|a| truncate(a).to_owned()),
            user_agent: user_agent.cloned(),
            client_addr: peer.ip(),
            record: Record::default(),
            answered: None,
            drain_cut: false,
            done: false,
        }
    }

    /// Records the answer.
    pub fn finish(mut self, status: StatusCode, error: Option<&ProxyError>) {
        self.done = true;
        self.emit(status.as_u16(), error, outcome(status, error));
    }

    /// Records `response`, the answer: at once, unless it streams the
    /// upstream's body (passthrough). Then the recorder goes with the body
    /// and records once the body has ended, so that a body the upstream
    /// cut short is recorded as the upstream error it is (the caller got
    /// a truncated answer), not as the status its head announced. The
    /// latency is still the time to the answer's head.
    pub fn finish_response(
        self,
        response: &mut Response<ResponseBody>,
        error: Option<&ProxyError>,
    ) {
        let status = response.status();
        match response.body_mut() {
            Either::Right(streamed) if error.is_none() => {
                streamed.report_to(Box::new(self.detach(status)));
            }
            _ => self.finish(status, error),
        }
    }

    /// This recorder, owning what it records into, for an answer with
    /// `status` whose head is going out now.
    fn detach(mut self, status: StatusCode) -> Recorder<'static> {
        self.done = true;
        let (telemetry, series) = match &self.sink {
            Sink::Borrowed { telemetry, series } => (Arc::clone(telemetry), series.cloned()),
            Sink::Owned { telemetry, series } => (telemetry.clone(), series.clone()),
        };
        Recorder {
            sink: Sink::Owned { telemetry, series },
            started: self.started,
            now: self.now,
            method: std::mem::take(&mut self.method),
            kind: self.kind,
            app_id: self.app_id.take(),
            user_agent: self.user_agent.take(),
            client_addr: self.client_addr,
            record: std::mem::take(&mut self.record),
            answered: Some((status, self.started.elapsed())),
            drain_cut: false,
            done: false,
        }
    }

    fn emit(&self, status: u16, error: Option<&ProxyError>, outcome: Outcome) {
        let duration = self
            .answered
            .map_or_else(|| self.started.elapsed(), |(_, latency)| latency);
        let record = &self.record;
        let (telemetry, series) = match &self.sink {
            Sink::Borrowed { telemetry, series } => (&***telemetry, series.map(|s| &**s)),
            Sink::Owned { telemetry, series } => (&**telemetry, series.as_deref()),
        };
        // Made text once, and only for a verified caller (the ledger and
        // the line share it); any other request's line, if written, makes
        // its own (`event`).
        let texts = record.verified.then(|| CallerText::of(self));
        telemetry.observe(&Observation {
            route: self.kind,
            app_id: self.app_id.as_deref(),
            series,
            outcome,
            duration,
            upstream_duration: record.upstream_time,
            signature_failure: match error {
                Some(ProxyError::Signature(e)) => Some(e.reason()),
                _ => None,
            },
            caller: record.verified.then(|| VerifiedCaller {
                auth_key: record
                    .auth_key
                    .as_deref()
                    .expect("invariant: a verified request names its auth_key"),
                // A request without a User-Agent header: none to record.
                user_agent: texts
                    .as_ref()
                    .and_then(|t| t.agent.as_deref())
                    .unwrap_or_default(),
                client_address: texts.as_ref().map_or("", |t| t.addr.as_str()),
                library: record.library.unwrap_or(Library::Unknown),
                fingerprint: record
                    .fingerprint
                    .as_ref()
                    .map_or("", FingerprintId::as_str),
                event: record.event.as_deref().unwrap_or_default(),
                channel: record.channel.as_deref().unwrap_or_default(),
                path: record.path,
            }),
            now: self.now,
        });
        self.log(status, error, duration, texts.as_ref());
    }

    /// Legacy calls log at WARN with the caller's identity (app, key, user
    /// agent, address), so usage can be tracked from logs alone; upstream
    /// and internal failures at ERROR; other requests at INFO. Neither
    /// secrets nor `auth_signature` are fields of the line, and error
    /// messages never contain them.
    fn log(
        &self,
        status: u16,
        error: Option<&ProxyError>,
        duration: Duration,
        texts: Option<&CallerText<'_>>,
    ) {
        let fault = error.map(ProxyError::fault);
        let error = error.map(|e| ErrorChain(e).to_string()).or_else(|| {
            if self.drain_cut {
                Some(
                    "cut by the drain deadline (shutdown_grace_ms ran out) before the answer"
                        .into(),
                )
            } else {
                (status == CLIENT_CLOSED)
                    .then(|| "client closed the connection before the answer".into())
            }
        });
        let line = LineValues {
            status,
            latency_ms: latency_ms(duration),
            error: error.as_deref(),
            texts,
        };
        let level = match (fault, self.kind.is_legacy()) {
            (Some(Fault::Upstream | Fault::Internal), _) => tracing::Level::ERROR,
            (None, _) if self.drain_cut => tracing::Level::ERROR,
            (_, true) => tracing::Level::WARN,
            (_, false) => tracing::Level::INFO,
        };
        self.event(level, &line);
    }

    /// The `User-Agent` as text: invalid UTF-8 replaced, cut to
    /// [`MAX_LOGGED_LEN`] bytes. Borrowed when it is valid (nearly always).
    fn user_agent_text(&self) -> Option<Cow<'_, str>> {
        self.user_agent
            .as_ref()
            .map(|v| match String::from_utf8_lossy(v.as_bytes()) {
                Cow::Borrowed(s) => Cow::Borrowed(truncate(s)),
                Cow::Owned(s) => Cow::Owned(truncate(&s).to_owned()),
            })
    }

    fn message(&self) -> &'static str {
        if self.kind.is_legacy() {
            "legacy call"
        } else {
            "request"
        }
    }

    /// The line, as a `tracing` event at `level` (ERROR, WARN or INFO;
    /// anything else is INFO). The message is a plain `&str` field, first,
    /// as `"{}", …` would put it, without formatting it through
    /// `fmt::Arguments`.
    fn event(&self, level: tracing::Level, line: &LineValues<'_>) {
        macro_rules! event {
            ($level:expr) => {
                tracing::event!(
                    target: REQUEST_TARGET,
                    $level,
                    message = self.message(),
                    method = %self.method,
                    route = self.kind.template(),
                    app_id = self.app_id.as_deref(),
                    status = line.status,
                    upstream_status = self.record.upstream_status,
                    latency_ms = line.latency_ms,
                    auth_key = self.record.auth_key.as_deref(),
                    user_agent = line.texts.map_or_else(
                        || self.user_agent_text(),
                        |t| t.agent.clone(),
                    )
                    .as_deref(),
                    client_addr = %line
                        .texts
                        .map_or_else(|| IpText::new(self.client_addr), |t| t.addr)
                        .as_str(),
                    library = self.record.library.map(Library::as_str),
                    fingerprint = self.record.fingerprint.as_ref().map(FingerprintId::as_str),
                    event = self.record.event.as_deref(),
                    path = self.record.path.map(Path::as_str),
                    error = line.error,
                )
            };
        }
        match level {
            tracing::Level::ERROR => event!(tracing::Level::ERROR),
            tracing::Level::WARN => event!(tracing::Level::WARN),
            _ => event!(tracing::Level::INFO),
        }
    }
}

/// `d` in milliseconds, rounded to the microsecond, so the JSON number is
/// `0.025`, not `0.025287999999999998`.
fn latency_ms(d: Duration) -> f64 {
    // Micros below 2^53 are exact in an f64; a request of 285 years is not.
    d.as_micros() as f64 / 1000.0
}

/// A verified caller's `User-Agent` and address as text, made once for
/// both its ledger entry and its line.
struct CallerText<'a> {
    agent: Option<Cow<'a, str>>,
    addr: IpText,
}

impl<'a> CallerText<'a> {
    fn of(recorder: &'a Recorder<'_>) -> Self {
        Self {
            agent: recorder.user_agent_text(),
            addr: IpText::new(recorder.client_addr),
        }
    }
}

/// What a request's line says beyond what its [`Recorder`] holds.
struct LineValues<'e> {
    status: u16,
    latency_ms: f64,
    error: Option<&'e str>,
    /// The caller's agent and address as text, when `emit` made them for
    /// the ledger already.
    texts: Option<&'e CallerText<'e>>,
}

impl Drop for Recorder<'_> {
    /// A streamed answer's body ended (or its client left while it
    /// streamed): recorded with the status its head had. A request dropped
    /// before its answer: its client left, or the worker's drain deadline
    /// passed (then it is the proxy's cut, counted with the proxy's faults,
    /// as `upstream_error`).
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Some((status, _)) = self.answered {
            self.emit(status.as_u16(), None, outcome(status, None));
        } else if crate::http::server::drain_deadline_passed() {
            self.drain_cut = true;
            self.emit(DRAIN_CUT, None, Outcome::UpstreamError);
        } else {
            self.emit(CLIENT_CLOSED, None, Outcome::ClientError);
        }
    }
}

impl StreamEnd for Recorder<'static> {
    /// The upstream's body failed while it streamed: the caller got a
    /// truncated answer; recorded as the upstream's error.
    fn cut(mut self: Box<Self>, error: &(dyn std::error::Error + 'static)) {
        self.done = true;
        let status = self.answered.map_or(StatusCode::OK, |(status, _)| status);
        let error = ProxyError::Upstream(UpstreamError::Body(ErrorChain(error).to_string().into()));
        self.emit(status.as_u16(), Some(&error), outcome(status, Some(&error)));
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

    /// The telemetry of a config with nothing but an upstream.
    fn telemetry() -> Arc<Telemetry> {
        let config = crate::config::Config::from_toml_str(
            "[upstream]\nurl = \"http://127.0.0.1:6001\"\n",
            &|_: &str| None,
        )
        .expect("a valid config");
        Arc::new(Telemetry::new(&config))
    }

    #[test]
    fn the_user_agent_is_cut_at_a_character_boundary() {
        let telemetry = telemetry();
        let peer: SocketAddr = "127.0.0.1:4000".parse().expect("an address");
        let text = |agent: &[u8]| {
            let agent = HeaderValue::from_bytes(agent).expect("a header value");
            let mut rec = Recorder::new(
                &telemetry,
                None,
                0,
                &Method::POST,
                RouteKind::LegacyTrigger,
                None,
                Some(&agent),
                peer,
            );
            rec.done = true; // not recorded on drop
            rec.user_agent_text().map(Cow::into_owned)
        };
        let long = "a".repeat(MAX_LOGGED_LEN - 1) + "é and more";
        assert_eq!(text(long.as_bytes()), Some("a".repeat(MAX_LOGGED_LEN - 1)));
        assert_eq!(text(b"ok/1.0"), Some("ok/1.0".to_owned()));
        assert_eq!(text(b"bad \xff"), Some("bad \u{fffd}".to_owned()));
        // Replaced first, then cut: U+FFFD (3 bytes) does not fit in the
        // last byte, so it goes whole.
        let mut invalid = vec![b'a'; MAX_LOGGED_LEN - 1];
        invalid.extend_from_slice(b"\xff and more");
        assert_eq!(text(&invalid), Some("a".repeat(MAX_LOGGED_LEN - 1)));
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

    /// The request's line, as [`crate::telemetry::logging::LineFormat`] writes it,
    /// for every route, with and without the optional fields, escaping
    /// included; and the same event as a JSON log line.
    #[test]
    fn the_line_is_the_expected_text() {
        use crate::telemetry::logging::tests::{event_at, json_of};
        let telemetry = telemetry();
        let at = std::time::UNIX_EPOCH + Duration::new(1_764_000_000, 5_000);
        let peer: SocketAddr = "[2001:db8::1]:4000".parse().expect("an address");
        for (kind, method, app_id, agent, auth_key, upstream, error, expected) in [
            (
                RouteKind::LegacyTrigger,
                Method::POST,
                Some("4242"),
                Some(HeaderValue::from_static("pusher-php-server/2.1.2")),
                Some("key"),
                Some(200),
                None,
                "legacy call method=POST route=\"/apps/{app_id}/channels/{channel}/events\" \
                 app_id=\"4242\" status=401 upstream_status=200 latency_ms=0.250 \
                 auth_key=\"key\" user_agent=\"pusher-php-server/2.1.2\" client_addr=2001:db8::1",
            ),
            (
                RouteKind::LegacyStats,
                Method::GET,
                Some("app \"x\""),
                Some(HeaderValue::from_bytes(b"ua \"q\"\xff").expect("a header value")),
                None,
                None,
                Some("invalid signature:\n \"quoted\""),
                "legacy call method=GET route=\"/apps/{app_id}/channels/{channel}/stats\" \
                 app_id=\"app \\\"x\\\"\" status=401 latency_ms=0.250 \
                 user_agent=\"ua \\\"q\\\"\u{fffd}\" client_addr=2001:db8::1 \
                 error=\"invalid signature:\\n \\\"quoted\\\"\"",
            ),
            (
                RouteKind::Passthrough,
                Method::DELETE,
                None,
                None,
                None,
                Some(503),
                Some("e"),
                "request method=DELETE route=\"passthrough\" status=401 upstream_status=503 \
                 latency_ms=0.250 client_addr=2001:db8::1 error=\"e\"",
            ),
        ] {
            let mut rec = Recorder::new(
                &telemetry,
                None,
                0,
                &method,
                kind,
                app_id,
                agent.as_ref(),
                peer,
            );
            rec.record.auth_key = auth_key.map(str::to_owned);
            rec.record.upstream_status = upstream;
            rec.done = true; // not recorded on drop
            let line = LineValues {
                status: 401,
                latency_ms: 0.25,
                error,
                texts: None,
            };
            for (level, shown) in [
                (tracing::Level::ERROR, "ERROR"),
                (tracing::Level::WARN, " WARN"),
                (tracing::Level::INFO, " INFO"),
            ] {
                assert_eq!(
                    event_at(at, || rec.event(level, &line)),
                    format!("2025-11-24T16:00:00.000005Z {shown} {expected}\n")
                );
            }

            // The texts `emit` made for a verified caller's ledger entry
            // give the same line.
            let texts = CallerText::of(&rec);
            let shared = LineValues {
                texts: Some(&texts),
                ..line
            };
            assert_eq!(
                event_at(at, || rec.event(tracing::Level::WARN, &shared)),
                format!("2025-11-24T16:00:00.000005Z  WARN {expected}\n")
            );

            let json = json_of(|| rec.event(tracing::Level::WARN, &line));
            let text = |key: &str| json[key].as_str().map(str::to_owned);
            assert_eq!(json["level"], "WARN", "{json}");
            assert_eq!(text("message").as_deref(), Some(rec.message()), "{json}");
            assert_eq!(text("method").as_deref(), Some(method.as_str()), "{json}");
            assert_eq!(text("route").as_deref(), Some(kind.template()), "{json}");
            assert_eq!(text("app_id").as_deref(), app_id, "{json}");
            assert_eq!(json["status"], 401, "{json}");
            assert_eq!(json["upstream_status"].as_u64(), upstream.map(u64::from));
            assert_eq!(json["latency_ms"], 0.25, "{json}");
            assert_eq!(text("auth_key").as_deref(), auth_key, "{json}");
            assert_eq!(
                text("user_agent"),
                agent.map(|a| String::from_utf8_lossy(a.as_bytes()).into())
            );
            assert_eq!(
                text("client_addr").as_deref(),
                Some("2001:db8::1"),
                "{json}"
            );
            assert_eq!(text("error").as_deref(), error, "{json}");
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

    #[test]
    fn latency_is_rounded_to_microseconds() {
        let d = Duration::from_nanos(25_288);
        assert_eq!(latency_ms(d), 0.025);
        assert_eq!(serde_json::json!(latency_ms(d)).to_string(), "0.025");
        assert_eq!(latency_ms(Duration::from_micros(1_393_123)), 1_393.123);
        assert_eq!(latency_ms(Duration::ZERO), 0.0);
    }
}
