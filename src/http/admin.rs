//! The admin listener, separate from the proxy port: `/metrics`,
//! `/healthz`, `/readyz`, `/usage`, `/report` and `POST /reload`.
//!
//! `/usage`, `/report` and `POST /reload` name every caller or change the
//! configuration: with `[admin] token` set they require
//! `Authorization: Bearer <token>` (401 otherwise); without one they are
//! served only when the listener is on a loopback address (403 otherwise).
//! `/metrics`, `/healthz` and `/readyz` are always open, for probes and
//! scrapers.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, HeaderValue,
    WWW_AUTHENTICATE, X_CONTENT_TYPE_OPTIONS,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::clock::Clock;
use crate::pusher::query::QueryParams;
use crate::reload::{ReloadError, Reloader};
use crate::report;
use crate::telemetry::Telemetry;

/// Content type of the metrics exposition.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Connections the admin listener serves at once. Beyond it, further
/// connections wait in the kernel's accept queue until one closes (as the
/// proxy listener's `max_connections` does) rather than being closed at
/// once: a brief burst of probes and scrapes is served a moment later
/// instead of failing, the accept loop never spins on connections it would
/// only drop, and a connection that sends no request is closed after the
/// 10 s header timeout, one that stops reading after
/// [`CONNECTION_LIFETIME`], freeing its place.
pub const MAX_CONNECTIONS: usize = 64;

/// How long an admin connection may stay open, whatever it does: one whose
/// client stops reading its answers (pipelined scrapes) would otherwise
/// hold its place for good, and [`MAX_CONNECTIONS`] of them would shut out
/// the probes. A request is answered in milliseconds, and scrapers come
/// back less often than this, so a live client loses nothing but a
/// connection it would not have reused. A connection whose answer is still
/// being worked out then (a reload reading a slow disk, a report walking a
/// large ledger) gets [`WORK_GRACE`] more to finish and write it.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(10);

/// How much longer than [`CONNECTION_LIFETIME`] a connection may stay open
/// while its answer is being worked out: a reload slower than both still
/// applies, but its answer is lost (its outcome logged and counted).
pub const WORK_GRACE: Duration = Duration::from_secs(50);

/// The admin endpoints: the one list of them, with what each requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Metrics,
    Healthz,
    Readyz,
    Usage,
    Report,
    Reload,
}

impl Endpoint {
    /// Every endpoint.
    const ALL: [Endpoint; 6] = [
        Self::Metrics,
        Self::Healthz,
        Self::Readyz,
        Self::Usage,
        Self::Report,
        Self::Reload,
    ];

    /// The endpoint at `path`, if there is one.
    fn at(path: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.path() == path)
    }

    /// Its path.
    fn path(self) -> &'static str {
        match self {
            Self::Metrics => "/metrics",
            Self::Healthz => "/healthz",
            Self::Readyz => "/readyz",
            Self::Usage => "/usage",
            Self::Report => "/report",
            Self::Reload => "/reload",
        }
    }

    /// Whether it needs a token (or a loopback listener): it names every
    /// caller (`/usage`, `/report`) or changes the configuration
    /// (`/reload`).
    fn guarded(self) -> bool {
        matches!(self, Self::Usage | Self::Report | Self::Reload)
    }

    /// Whether its work ([`answer`]) runs on tokio's blocking pool, not on
    /// the thread that runs this listener (and the proxy's accept loop):
    /// it reads files (a reload: the config, the TLS files) or walks the
    /// whole ledger, which takes milliseconds, or longer on a slow disk.
    /// Refusals and wrong methods ([`checked`]) are answered on the thread.
    fn off_thread(self) -> bool {
        self.guarded()
    }

    /// The methods it takes, as a 405's `Allow` lists them.
    fn allow(self) -> &'static str {
        match self {
            Self::Reload => "POST",
            _ => "GET, HEAD",
        }
    }

    /// Whether it takes `method`.
    fn takes(self, method: &Method) -> bool {
        match self {
            Self::Reload => method == Method::POST,
            _ => method == Method::GET || method == Method::HEAD,
        }
    }
}

/// Who may use the guarded endpoints (`/usage`, `/report`, `POST /reload`).
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// The bearer token they require, when set (`[admin] token`).
    pub token: Option<SecretString>,
    /// Whether the listener is on a non-loopback address; without a token
    /// the guarded endpoints then answer 403.
    pub exposed: bool,
}

impl Access {
    /// The access rule for a listener configured or bound on `addrs`
    /// (exposed if any of them is not loopback), with `token`.
    pub fn new(token: Option<SecretString>, addrs: &[SocketAddr]) -> Self {
        Self {
            token,
            exposed: addrs.iter().any(|a| is_exposed(*a)),
        }
    }

    /// `None` when a request for `path` with `headers` may be served, else
    /// the 401 or 403 to answer.
    fn refusal(&self, path: &str, headers: &HeaderMap) -> Option<Response<Full<Bytes>>> {
        const TEXT: &str = "text/plain; charset=utf-8";
        match &self.token {
            Some(token) if bearer_matches(headers, token) => None,
            Some(_) => {
                tracing::debug!(path, "admin request without a valid bearer token refused");
                let mut resp = respond(
                    StatusCode::UNAUTHORIZED,
                    TEXT,
                    format!(
                        "a bearer token is required for {path}: send Authorization: Bearer <admin.token>\n"
                    ),
                );
                resp.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"pusher-cutover admin\""),
                );
                Some(resp)
            }
            None if self.exposed => {
                tracing::debug!(
                    path,
                    "admin request refused: no admin.token on a non-loopback listener"
                );
                Some(respond(
                    StatusCode::FORBIDDEN,
                    TEXT,
                    format!(
                        "set admin.token (or admin.token_env) to serve {path} on a non-loopback address\n"
                    ),
                ))
            }
            None => None,
        }
    }
}

/// Whether a listener on `addr` is reachable from beyond this host: its IP
/// (an IPv4-mapped IPv6 one as IPv4) is not a loopback address. The
/// unspecified addresses (`0.0.0.0`, `::`) are exposed.
pub fn is_exposed(addr: SocketAddr) -> bool {
    !addr.ip().to_canonical().is_loopback()
}

/// Whether `headers` carry `Authorization: Bearer <token>` (the scheme in
/// any case). The two are compared through their SHA-256 digests in
/// constant time, so neither the token's bytes nor its length leak
/// through timing.
fn bearer_matches(headers: &HeaderMap, token: &SecretString) -> bool {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return false;
    };
    let value = value.as_bytes();
    let Some((scheme, rest)) = value.split_at_checked(6) else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") || !rest.starts_with(b" ") {
        return false;
    }
    let given = rest.trim_ascii();
    let given = Sha256::digest(given);
    let expected = Sha256::digest(token.expose_secret().as_bytes());
    bool::from(given[..].ct_eq(&expected[..]))
}

/// What the admin endpoints read.
#[derive(Debug, Clone)]
pub struct Admin {
    /// Metrics and ledger.
    pub telemetry: Arc<Telemetry>,
    /// Whether the proxy is serving (config loaded, listener bound, not
    /// draining).
    pub ready: Arc<AtomicBool>,
    /// For the report's "now".
    pub clock: Arc<dyn Clock>,
    /// Serves `POST /reload` when set.
    pub reloader: Option<Reloader>,
    /// Who may use `/usage`, `/report` and `POST /reload`.
    pub access: Access,
}

/// Serves the admin endpoints on `listener` until `shutdown` completes, at
/// most [`MAX_CONNECTIONS`] connections at once.
pub async fn serve(listener: TcpListener, admin: Admin, shutdown: impl Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    tokio::pin!(shutdown);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "admin listening");
    }
    loop {
        // Wait for a free place before accepting (see MAX_CONNECTIONS).
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let admin = admin.clone();
                // Whether an answer of this connection is being worked out
                // off the thread.
                let working = Arc::new(AtomicBool::new(false));
                let at_work = working.clone();
                let service = service_fn(move |req: Request<Incoming>| {
                    let admin = admin.clone();
                    let working = at_work.clone();
                    async move {
                        let endpoint = match checked(&admin, &req) {
                            Ok(endpoint) => endpoint,
                            Err(refused) => return Ok::<_, Infallible>(*refused),
                        };
                        if !endpoint.off_thread() {
                            return Ok(answer(&admin, endpoint, &req));
                        }
                        working.store(true, Ordering::Release);
                        let answer =
                            tokio::task::spawn_blocking(move || answer(&admin, endpoint, &req))
                            .await
                            .unwrap_or_else(|_| {
                                respond(
                                    StatusCode::INTERNAL_SERVER_ERROR,
                                    "text/plain; charset=utf-8",
                                    "internal error (logged)\n",
                                )
                            });
                        working.store(false, Ordering::Release);
                        Ok(answer)
                    }
                });
                let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    tokio::pin!(conn);
                    if tokio::time::timeout(CONNECTION_LIFETIME, &mut conn).await.is_err()
                        && working.load(Ordering::Acquire)
                    {
                        let _ = tokio::time::timeout(WORK_GRACE, &mut conn).await;
                    }
                    drop(slot);
                });
            }
            () = &mut shutdown => break,
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// The endpoint a request is for, or the answer given before any
/// endpoint's work, cheaply enough to give on the listener's own thread: a
/// refusal, an unknown path, a method the endpoint does not take.
fn checked(admin: &Admin, req: &Request<Incoming>) -> Result<Endpoint, Box<Response<Full<Bytes>>>> {
    let path = req.uri().path();
    let Some(endpoint) = Endpoint::at(path) else {
        return Err(Box::new(respond(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found\n",
        )));
    };
    if endpoint.guarded()
        && let Some(refusal) = admin.access.refusal(path, req.headers())
    {
        admin
            .telemetry
            .admin_refused(if refusal.status() == StatusCode::UNAUTHORIZED {
                "token"
            } else {
                "no_token"
            });
        return Err(Box::new(refusal));
    }
    if endpoint.takes(req.method()) {
        return Ok(endpoint);
    }
    let mut resp = respond(
        StatusCode::METHOD_NOT_ALLOWED,
        "text/plain; charset=utf-8",
        "method not allowed\n",
    );
    resp.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(endpoint.allow()));
    Err(Box::new(resp))
}

/// `endpoint`'s answer to a request [`checked`] let through.
fn answer(admin: &Admin, endpoint: Endpoint, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    match endpoint {
        Endpoint::Reload => reload(admin),
        Endpoint::Metrics => respond(StatusCode::OK, OPENMETRICS, admin.telemetry.metrics_text()),
        Endpoint::Healthz => respond(StatusCode::OK, "text/plain; charset=utf-8", "ok\n"),
        Endpoint::Readyz if admin.ready.load(Ordering::Acquire) => {
            // The hash in force; and the settings a reload could not
            // apply, when there are any.
            let pending = admin
                .reloader
                .as_ref()
                .map(Reloader::restart_needed)
                .unwrap_or_default();
            let pending = if pending.is_empty() {
                String::new()
            } else {
                format!(" restart_needed={}", pending.join(","))
            };
            respond(
                StatusCode::OK,
                "text/plain; charset=utf-8",
                format!("ready config={}{pending}\n", admin.telemetry.config_hash()),
            )
        }
        Endpoint::Readyz => respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain; charset=utf-8",
            "not ready\n",
        ),
        Endpoint::Usage => {
            let usage = admin.telemetry.ledger().snapshot(admin.clock.unix_now());
            match serde_json::to_vec(&usage) {
                Ok(json) => private(respond(StatusCode::OK, "application/json", json)),
                Err(_) => respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain; charset=utf-8",
                    "cannot encode the ledger\n",
                ),
            }
        }
        Endpoint::Report => report_page(admin, req.uri().query().unwrap_or("")),
    }
}

/// `POST /reload`: re-read the configuration; 200 with the hash now in
/// force (and the settings that need a restart, if any), or 400 with the
/// problems on one line (the previous configuration keeps serving), 409
/// while another reload runs, or 500 when the reload stopped on an
/// internal error.
fn reload(admin: &Admin) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    let Some(reloader) = &admin.reloader else {
        return respond(StatusCode::CONFLICT, TEXT, "reloading is not enabled\n");
    };
    let Some(outcome) = reloader.try_reload() else {
        return respond(
            StatusCode::CONFLICT,
            TEXT,
            "a reload is in progress; try again when it has ended\n",
        );
    };
    match outcome {
        Ok(reloaded) => respond(StatusCode::OK, TEXT, format!("{}\n", reloaded.summary())),
        Err(ReloadError::Refused(e)) => respond(
            StatusCode::BAD_REQUEST,
            TEXT,
            format!(
                "reload refused, previous configuration kept: {}\n",
                crate::reload::one_line(&e.problems().join("; "))
            ),
        ),
        Err(ReloadError::Internal(_)) => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            TEXT,
            "reload failed on an internal error (logged): part of the new configuration may be in force; reload again, or restart\n",
        ),
    }
}

/// `/report[?since=7d]`: the HTML report of this sidecar's ledger.
fn report_page(admin: &Admin, query: &str) -> Response<Full<Bytes>> {
    let since = match QueryParams::parse(query)
        .ok()
        .and_then(|q| q.get("since").map(humantime::parse_duration))
    {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => {
            return respond(
                StatusCode::BAD_REQUEST,
                "text/plain; charset=utf-8",
                format!("invalid `since` (e.g. 7d, 24h): {e}\n"),
            );
        }
    };
    let unix_now = admin.clock.unix_now();
    let now = crate::clock::datetime(unix_now);
    let usage = admin.telemetry.ledger().snapshot(unix_now);
    let configured = admin.telemetry.configured_app_ids();
    let report = report::build_for(&usage, now, since, &configured);
    let mut page = private(respond(
        StatusCode::OK,
        "text/html; charset=utf-8",
        report::render_html(&report),
    ));
    page.headers_mut().insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(REPORT_CSP),
    );
    page
}

/// The report page's `Content-Security-Policy`: it is one document with its
/// own `<style>` and inline SVG, no script, image, font or frame, and it is
/// framed by nothing. Its values are escaped; this holds should one not be.
const REPORT_CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `resp` marked as naming callers: never cached (`Cache-Control:
/// no-store`), and read only as the type it says (`nosniff`).
fn private(mut resp: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    let headers = resp.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = authorization {
            h.insert(AUTHORIZATION, HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("address")
    }

    #[test]
    fn exposure_is_decided_by_the_address() {
        for loopback in [
            "127.0.0.1:9090",
            "127.0.0.2:0",
            "[::1]:9090",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(!is_exposed(addr(loopback)), "{loopback}");
        }
        for exposed in [
            "0.0.0.0:9090",
            "0.0.0.0:0",
            "[::]:9090",
            "10.0.0.5:9090",
            "[fd00::1]:1",
        ] {
            assert!(is_exposed(addr(exposed)), "{exposed}");
        }
        assert!(!Access::new(None, &[addr("127.0.0.1:9090")]).exposed);
        assert!(Access::new(None, &[addr("0.0.0.0:9090"), addr("127.0.0.1:9090")]).exposed);
    }

    #[test]
    fn each_endpoint_is_found_at_its_path_and_nothing_else_is() {
        for endpoint in Endpoint::ALL {
            assert_eq!(Endpoint::at(endpoint.path()), Some(endpoint));
            let takes_get = endpoint.takes(&Method::GET);
            assert_eq!(takes_get, endpoint != Endpoint::Reload, "{endpoint:?}");
            assert_eq!(endpoint.takes(&Method::POST), !takes_get, "{endpoint:?}");
        }
        for path in ["/", "/metrics/", "/Usage", "/reload/x", ""] {
            assert_eq!(Endpoint::at(path), None, "{path}");
        }
    }

    #[test]
    fn without_a_token_only_a_loopback_listener_serves() {
        let open = Access::new(None, &[addr("127.0.0.1:9090")]);
        assert!(open.refusal("/usage", &headers(None)).is_none());
        let exposed = Access::new(None, &[addr("0.0.0.0:9090")]);
        for endpoint in Endpoint::ALL.into_iter().filter(|e| e.guarded()) {
            let path = endpoint.path();
            let resp = exposed.refusal(path, &headers(None)).expect("refused");
            assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        }
    }

    #[test]
    fn with_a_token_only_the_right_bearer_serves() {
        let token = Some(SecretString::from("s3cret-token"));
        for addrs in [[addr("127.0.0.1:9090")], [addr("0.0.0.0:9090")]] {
            let access = Access::new(token.clone(), &addrs);
            for ok in [
                "Bearer s3cret-token",
                "bearer s3cret-token",
                "BEARER  s3cret-token ",
            ] {
                assert!(
                    access.refusal("/usage", &headers(Some(ok))).is_none(),
                    "{ok}"
                );
            }
            for bad in [
                None,
                Some("Bearer wrong"),
                Some("Bearer s3cret-token2"),
                Some("Bearer s3cret-toke"),
                Some("Bearer "),
                Some("Bearers3cret-token"),
                Some("Basic s3cret-token"),
                Some("s3cret-token"),
            ] {
                let resp = access.refusal("/report", &headers(bad)).expect("refused");
                assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{bad:?}");
                assert!(
                    resp.headers()[WWW_AUTHENTICATE]
                        .to_str()
                        .is_ok_and(|v| v.starts_with("Bearer")),
                    "{bad:?}"
                );
            }
        }
    }
}
