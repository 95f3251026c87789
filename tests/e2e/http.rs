//! A small HTTP client and request signing (by the independent oracle).

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::oracle;
use crate::sockudo::{KEY, SECRET};

/// Bound on every request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A response.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    #[allow(dead_code)]
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

fn client() -> &'static Client<HttpConnector, Full<Bytes>> {
    static CLIENT: OnceLock<Client<HttpConnector, Full<Bytes>>> = OnceLock::new();
    CLIENT.get_or_init(|| {
        Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(64)
            .build_http()
    })
}

/// Sends a request; errors are returned, not panicked on.
pub async fn try_send(
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<Answer, String> {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(body.into()))
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let resp = client().request(req).await.map_err(|e| format!("{e:?}"))?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| "timed out".to_owned())?
}

/// Sends a request and panics if it cannot be sent.
pub async fn send(method: Method, uri: &str, body: impl Into<Bytes>) -> Answer {
    let headers: &[(&str, &str)] = &[("content-type", "application/json")];
    try_send(method.clone(), uri, headers, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {uri}: {e}"))
}

/// `base` + `path` + a query signed now with the app's credentials.
pub fn signed(
    base: &str,
    method: &str,
    path: &str,
    params: &[(&str, &str)],
    body: Option<&[u8]>,
) -> String {
    signed_at(base, method, path, params, body, now())
}

/// As [`signed`], at a given time.
pub fn signed_at(
    base: &str,
    method: &str,
    path: &str,
    params: &[(&str, &str)],
    body: Option<&[u8]>,
    timestamp: u64,
) -> String {
    let q = oracle::signed_query(KEY, SECRET, method, path, timestamp, body, params);
    format!("{base}{path}?{q}")
}

/// Unix seconds now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}
