//! The HTTP side of the proxy: the listener ([`server`]), the admin
//! listener ([`admin`]), inbound TLS ([`tls`]), hop-by-hop headers
//! ([`headers`]) and the answers the proxy builds itself.

pub mod admin;
pub mod headers;
pub mod server;
pub mod tls;

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};

use crate::upstream::{Buffered, Guarded};

/// Body of every answer the proxy gives: its own, or the upstream's streamed.
pub type ResponseBody = Either<Full<Bytes>, Streamed>;

/// Told how a streamed answer's body ended: the request's recorder, which
/// records the request then (see `Recorder::finish_response`). A body that
/// ends, or that hyper lets go of, drops it; one the upstream cut short
/// calls [`StreamEnd::cut`] first.
pub trait StreamEnd: Send {
    /// The upstream's body failed with `error` while it streamed.
    fn cut(self: Box<Self>, error: &(dyn std::error::Error + 'static));
}

/// An upstream answer's body streamed to the caller, reporting how it
/// ended to whoever [`Streamed::report_to`] names.
pub struct Streamed {
    inner: Guarded,
    report: Option<Box<dyn StreamEnd>>,
}

impl std::fmt::Debug for Streamed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streamed")
            .field("inner", &self.inner)
            .field("report", &self.report.is_some())
            .finish()
    }
}

impl Streamed {
    /// `inner`, streamed, reporting to no one yet.
    pub fn new(inner: Guarded) -> Self {
        Self {
            inner,
            report: None,
        }
    }

    /// Reports how the body ends to `end`.
    pub fn report_to(&mut self, end: Box<dyn StreamEnd>) {
        self.report = Some(end);
    }
}

impl Body for Streamed {
    type Data = Bytes;
    type Error = <Guarded as Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        match &frame {
            Poll::Ready(Some(Err(error))) => {
                if let Some(report) = self.report.take() {
                    report.cut(error.as_ref());
                }
            }
            Poll::Ready(None) => self.report = None,
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `Content-Type` of the proxy's plain-text answers.
pub const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

/// `Content-Type` of JSON bodies.
pub const APPLICATION_JSON: &str = "application/json";

/// Headers of an answer the proxy builds: `Content-Type`, and on a legacy
/// call `Deprecation`, `Link` and `Sunset`.
const ANSWER_HEADERS: usize = 4;

/// An answer with `status`, `content_type` and `body`.
pub fn respond(
    status: StatusCode,
    content_type: HeaderValue,
    body: Bytes,
) -> Response<ResponseBody> {
    respond_with(status, answer_headers(content_type), body)
}

/// The headers of an answer the proxy builds, with room for the
/// deprecation headers, so the map is allocated once.
pub fn answer_headers(content_type: HeaderValue) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(ANSWER_HEADERS);
    headers.insert(CONTENT_TYPE, content_type);
    headers
}

/// An answer with `status`, `headers` and `body`.
pub fn respond_with(status: StatusCode, headers: HeaderMap, body: Bytes) -> Response<ResponseBody> {
    let mut resp = Response::new(Either::Left(Full::new(body)));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

/// An upstream answer passed on as it is (minus hop-by-hop headers). Its
/// `Content-Length` is the body's (hyper writes it), but for an answer to
/// `head`, a HEAD request, whose body is empty: it keeps the upstream's,
/// the length a GET would have had (RFC 9110 9.3.2).
pub fn verbatim(answer: Buffered, head: bool) -> Response<ResponseBody> {
    let mut headers = answer.headers;
    headers::strip_hop_by_hop(&mut headers);
    if !head {
        headers.remove(CONTENT_LENGTH);
    }
    respond_with(answer.status, headers, answer.body)
}

/// Why a request body the proxy reads or forwards was refused: the
/// caller's fault.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The request body exceeds `max_body_bytes`.
    #[error("request body exceeds the proxy's limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// The request body could not be read.
    #[error("could not read the request body")]
    Read(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The request body did not arrive within `body_timeout_ms`.
    #[error("the request body did not arrive in time")]
    Timeout,
}

impl BodyError {
    /// The status the caller gets.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Timeout => StatusCode::REQUEST_TIMEOUT,
            Self::Read(_) => StatusCode::BAD_REQUEST,
        }
    }
}

/// Reads a request body, refusing more than `limit` bytes or a body that
/// takes longer than `timeout` to arrive.
pub async fn read_body(
    body: Incoming,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, BodyError> {
    let read = tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await;
    let Ok(read) = read else {
        return Err(BodyError::Timeout);
    };
    match read {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge { limit }),
        Err(e) => Err(BodyError::Read(e)),
    }
}
