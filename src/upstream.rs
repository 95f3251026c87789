//! The one pooled client to the upstream server, over `http://` or
//! `https://` (rustls with the webpki roots), with every exchange bounded by
//! the configured timeout.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper::{HeaderMap, Request, Response, StatusCode, Uri};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::UpstreamConfig;

/// Body of a request sent upstream: built by the proxy, or streamed from
/// the caller (passthrough).
pub type OutboundBody = Either<Full<Bytes>, Incoming>;

/// Largest upstream answer buffered for mapping back to a legacy caller.
const MAX_MAPPED_RESPONSE: usize = 1024 * 1024;

/// How long an idle pooled connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why an upstream exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made (refused, unreachable, DNS, TLS, connect
    /// timeout).
    #[error("upstream unreachable")]
    Connect(#[source] hyper_util::client::legacy::Error),
    /// The connection failed while sending or receiving (reset, malformed
    /// response).
    #[error("upstream request failed")]
    Request(#[source] hyper_util::client::legacy::Error),
    /// The response body could not be read.
    #[error("upstream response body failed")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The upstream took longer than `upstream.timeout_ms`.
    #[error("upstream timed out")]
    Timeout,
    /// The upstream refused the proxy's own signature (its 401): the proxy's
    /// credentials for the app are wrong, not the caller's (spec E.4).
    #[error(
        "upstream rejected pusher-cutover's signature for app {app_id}: check the app's key and secret in the proxy's config"
    )]
    RejectedCredentials {
        /// The app.
        app_id: String,
    },
    /// The upstream answered a status the legacy route cannot pass on.
    #[error("upstream answered {0}")]
    Status(StatusCode),
    /// The upstream's success body is not what the current API defines.
    #[error("upstream returned a malformed response body")]
    MalformedResponse(#[source] serde_json::Error),
    /// The exchange's task ended without an answer (runtime shutting down).
    #[error("upstream exchange aborted")]
    Aborted,
}

impl UpstreamError {
    /// The status the caller gets: 504 for a timeout, 500 when the upstream
    /// refused the proxy's credentials, 502 otherwise.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::RejectedCredentials { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Connect(_)
            | Self::Request(_)
            | Self::Body(_)
            | Self::Status(_)
            | Self::MalformedResponse(_)
            | Self::Aborted => StatusCode::BAD_GATEWAY,
        }
    }
}

/// A buffered upstream answer.
#[derive(Debug)]
pub struct Buffered {
    /// Its status.
    pub status: StatusCode,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body.
    pub body: Bytes,
}

/// The pooled client and where it points. Cheap to clone; clones share the
/// pool.
#[derive(Clone, Debug)]
pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, OutboundBody>,
    base: Uri,
    timeout: Duration,
}

impl Upstream {
    /// A client for `config`.
    pub fn new(config: &UpstreamConfig) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        let https = HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(https);
        Self {
            client,
            base: config.url.clone(),
            timeout: config.timeout,
        }
    }

    /// The upstream URI for a path and query (`/apps/…?…`).
    pub fn uri(&self, path_and_query: &str) -> Result<Uri, hyper::http::Error> {
        let mut parts = self.base.clone().into_parts();
        parts.path_and_query = Some(path_and_query.parse()?);
        Ok(Uri::from_parts(parts)?)
    }

    /// The deadline of an exchange starting now.
    pub fn deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.timeout
    }

    /// Sends `req`; the timeout covers everything up to the response
    /// headers. The body then streams.
    pub async fn send(
        &self,
        req: Request<OutboundBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        tokio::time::timeout(self.timeout, self.client.request(req))
            .await
            .map_err(|_| UpstreamError::Timeout)?
            .map_err(classify)
    }

    /// Sends `req` and reads the whole answer, all before `deadline`.
    pub async fn exchange(
        &self,
        req: Request<OutboundBody>,
        deadline: tokio::time::Instant,
    ) -> Result<Buffered, UpstreamError> {
        let exchange = async {
            let resp = self.client.request(req).await.map_err(classify)?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_MAPPED_RESPONSE)
                .collect()
                .await
                .map_err(UpstreamError::Body)?
                .to_bytes();
            Ok(Buffered {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout_at(deadline, exchange)
            .await
            .unwrap_or(Err(UpstreamError::Timeout))
    }
}

fn classify(e: hyper_util::client::legacy::Error) -> UpstreamError {
    if e.is_connect() {
        UpstreamError::Connect(e)
    } else {
        UpstreamError::Request(e)
    }
}
