//! The admin listener, separate from the proxy port: `/metrics`,
//! `/healthz`, `/readyz`, `/usage`, `/report` and `POST /reload`.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::clock::Clock;
use crate::pusher::query::QueryParams;
use crate::reload::Reloader;
use crate::report;
use crate::telemetry::Telemetry;

/// Content type of the metrics exposition.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

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
}

/// Serves the admin endpoints on `listener` until `shutdown` completes.
pub async fn serve(listener: TcpListener, admin: Admin, shutdown: impl Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    tokio::pin!(shutdown);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "admin listening");
    }
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let admin = admin.clone();
                let service = service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(handle(&admin, &req)) }
                });
                let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(conn);
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

/// Routes one admin request.
pub fn handle(admin: &Admin, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if path == "/reload" {
        return reload(admin, req.method());
    }
    let known = ["/metrics", "/healthz", "/readyz", "/usage", "/report"];
    if !known.contains(&path) {
        return respond(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "method not allowed\n",
        );
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match path {
        "/metrics" => respond(StatusCode::OK, OPENMETRICS, admin.telemetry.metrics_text()),
        "/healthz" => respond(StatusCode::OK, "text/plain; charset=utf-8", "ok\n"),
        "/readyz" if admin.ready.load(Ordering::Acquire) => respond(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            format!("ready config={}\n", admin.telemetry.config_hash()),
        ),
        "/readyz" => respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain; charset=utf-8",
            "not ready\n",
        ),
        "/usage" => {
            let usage = admin.telemetry.ledger().snapshot();
            match serde_json::to_vec(&usage) {
                Ok(json) => respond(StatusCode::OK, "application/json", json),
                Err(_) => respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain; charset=utf-8",
                    "cannot encode the ledger\n",
                ),
            }
        }
        _ => report_page(admin, req.uri().query().unwrap_or("")),
    }
}

/// `POST /reload`: re-read the configuration; 200 with the new hash, or 400
/// with the problems (the previous configuration keeps serving).
fn reload(admin: &Admin, method: &Method) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != Method::POST {
        let mut resp = respond(StatusCode::METHOD_NOT_ALLOWED, TEXT, "method not allowed\n");
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST"));
        return resp;
    }
    let Some(reloader) = &admin.reloader else {
        return respond(StatusCode::CONFLICT, TEXT, "reloading is not enabled\n");
    };
    match reloader.reload() {
        Ok(hash) => respond(StatusCode::OK, TEXT, format!("reloaded config={hash}\n")),
        Err(e) => respond(
            StatusCode::BAD_REQUEST,
            TEXT,
            format!(
                "reload refused, previous configuration kept: {}\n",
                e.problems().join("; ")
            ),
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
    let now = crate::clock::datetime(admin.clock.unix_now());
    let usage = admin.telemetry.ledger().snapshot();
    let configured = admin.telemetry.configured_app_ids();
    let report = report::build_for(&usage, now, since, &configured);
    respond(
        StatusCode::OK,
        "text/html; charset=utf-8",
        report::render_html(&report),
    )
}
