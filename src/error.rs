//! Errors of the request path and the one table that maps them to statuses
//! (spec E.4).
//!
//! Handlers return `Result<_, ProxyError>`; the outer handler converts with
//! [`ProxyError::status`] and [`ProxyError::fault`] and logs. The conversion
//! has no side effects.

use hyper::StatusCode;

use crate::chain::ErrorChain;
use crate::http::BodyError;
use crate::pusher::route::RouteKind;
use crate::pusher::signature::SignatureError;
use crate::routes::TranslateError;
use crate::upstream::UpstreamError;

/// Who is at fault for a failed request; decides the log level and, later,
/// the metrics outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The caller sent something wrong (4xx).
    Client,
    /// The upstream failed, refused or was unreachable.
    Upstream,
    /// A bug or a misconfiguration in the proxy.
    Internal,
}

/// Every way a request can fail.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A legacy call for an app that is not configured (the old API's 404).
    #[error("unknown app `{0}`: not configured in pusher-cutover")]
    UnknownApp(String),
    /// The request is malformed or too large.
    #[error(transparent)]
    Translate(#[from] TranslateError),
    /// The request body is too large, too slow, or unreadable.
    #[error(transparent)]
    Body(#[from] BodyError),
    /// The request failed authentication.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// The upstream exchange failed.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The app's deprecated calls are refused (mode `reject`, or a brownout).
    #[error("{}", gone_message(*route, app_id, channel))]
    Gone {
        /// The deprecated route called.
        route: RouteKind,
        /// The app.
        app_id: String,
        /// The (decoded, validated) channel.
        channel: String,
    },
    /// A method the proxy does not forward (`CONNECT`, `TRACE`).
    #[error("method {0} is not supported")]
    MethodNotAllowed(hyper::Method),
    /// A request target that is not a path (`*`, an authority).
    #[error("the request target must be a path starting with /")]
    NotAPath,
    /// A path that names a deprecated route in another spelling
    /// ([`crate::pipeline::classify::near_legacy`]).
    #[error(
        "no Pusher route has this path: it spells …/channels/{{channel}}/events or …/stats otherwise (an escape, another case, a trailing /, ;parameters, a dot segment or an encoded /)"
    )]
    NearLegacy,
    /// `GET`, `HEAD` or `POST` in another case on a deprecated route's
    /// path ([`crate::pipeline::classify::method_near_legacy`]).
    #[error(
        "the method {0} is not GET, HEAD or POST: methods are case-sensitive, and no Pusher route on this path takes another"
    )]
    MethodCase(String),
    /// The upstream refused the proxy's own signature (its 401): the
    /// proxy's credentials for the app are wrong, not the caller's (spec
    /// E.4). A fault of the proxy's configuration.
    #[error(
        "upstream rejected pusher-cutover's signature for app {app_id}: check the app's key and secret in the proxy's config"
    )]
    RejectedCredentials {
        /// The app.
        app_id: String,
    },
    /// An upstream request could not be built (a bug).
    #[error("internal error building the upstream request")]
    Internal(#[source] hyper::http::Error),
}

impl ProxyError {
    /// The status the caller gets.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UnknownApp(_) => StatusCode::NOT_FOUND,
            Self::Gone { .. } => StatusCode::GONE,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::NotAPath | Self::NearLegacy | Self::MethodCase(_) => StatusCode::BAD_REQUEST,
            Self::Translate(e) => e.status(),
            Self::Body(e) => e.status(),
            Self::Signature(_) => StatusCode::UNAUTHORIZED,
            Self::Upstream(e) => e.status(),
            Self::RejectedCredentials { .. } | Self::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// Who is at fault.
    pub fn fault(&self) -> Fault {
        match self {
            Self::UnknownApp(_)
            | Self::Gone { .. }
            | Self::Translate(_)
            | Self::Body(_)
            | Self::Signature(_)
            | Self::MethodNotAllowed(_)
            | Self::NotAPath
            | Self::NearLegacy
            | Self::MethodCase(_) => Fault::Client,
            Self::Upstream(_) => Fault::Upstream,
            Self::RejectedCredentials { .. } | Self::Internal(_) => Fault::Internal,
        }
    }

    /// The one-line plain-text body the caller gets (ends with a newline).
    ///
    /// A caller's own fault is explained with the whole chain of causes;
    /// for upstream and internal faults only the top message is given (the
    /// details go to the log). No message includes a secret or a signature.
    pub fn body(&self) -> String {
        match self.fault() {
            Fault::Client => format!("{}\n", ErrorChain(self)),
            Fault::Upstream | Fault::Internal => format!("{self}\n"),
        }
    }
}

/// The 410 body: which call is gone and which current call replaces it.
fn gone_message(route: RouteKind, app_id: &str, channel: &str) -> String {
    match route {
        RouteKind::LegacyStats => format!(
            "GET /apps/{app_id}/channels/{channel}/stats is no longer served: use \
             GET /apps/{app_id}/channels/{channel}?info=user_count,subscription_count \
             (Pusher Channels HTTP API)"
        ),
        _ => format!(
            "POST /apps/{app_id}/channels/{channel}/events is no longer served: use \
             POST /apps/{app_id}/events with a JSON body {{\"name\", \"channels\": [\"{channel}\"], \"data\"}} \
             (Pusher Channels HTTP API)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pusher::query::DecodeError;

    #[test]
    fn status_table() {
        let cases: Vec<(ProxyError, u16, Fault)> = vec![
            (ProxyError::UnknownApp("1".into()), 404, Fault::Client),
            (TranslateError::MissingEventName.into(), 400, Fault::Client),
            (TranslateError::DataNotUtf8.into(), 400, Fault::Client),
            (
                TranslateError::Query(DecodeError::DuplicateKey("a".into())).into(),
                400,
                Fault::Client,
            ),
            (BodyError::TooLarge { limit: 1 }.into(), 413, Fault::Client),
            // A body the caller did not send in time is the caller's fault,
            // whichever route it was sent to.
            (BodyError::Timeout.into(), 408, Fault::Client),
            (
                TranslateError::DataTooLarge { limit: 1 }.into(),
                413,
                Fault::Client,
            ),
            (SignatureError::SignatureMismatch.into(), 401, Fault::Client),
            (UpstreamError::Timeout.into(), 504, Fault::Upstream),
            (
                ProxyError::RejectedCredentials { app_id: "1".into() },
                500,
                Fault::Internal,
            ),
            (
                UpstreamError::Status(StatusCode::SERVICE_UNAVAILABLE).into(),
                502,
                Fault::Upstream,
            ),
        ];
        for (err, status, fault) in cases {
            assert_eq!(err.status().as_u16(), status, "{err}");
            assert_eq!(err.fault(), fault, "{err}");
            let body = err.body();
            assert!(
                body.ends_with('\n') && body.lines().count() == 1,
                "{body:?}"
            );
        }
    }
}
