//! Verify: the body of a call to a configured app read within its limits,
//! and its signature checked against the app (spec A.6).

use bytes::Bytes;
use hyper::Method;
use hyper::body::Incoming;
use hyper::http::request::Parts;

use super::classify::RouteKind;
use super::{Call, truncate};
use crate::error::ProxyError;
use crate::http::{BodyError, read_body};
use crate::pusher::query::QueryParams;
use crate::pusher::signature;
use crate::routes::TranslateError;
use crate::telemetry::fingerprint;

/// Body allowance of requests that should have none (stats, GETs).
const MAX_BODYLESS_READ: usize = 4096;

impl Call<'_> {
    /// Reads the body and verifies the request against the app, and
    /// classifies a legacy call's sender ([`fingerprint::classify`]).
    /// Returns the body and the time it was checked at.
    ///
    /// Only a trigger carries a body worth reading, and only up to the
    /// app's `max_data_bytes`; a current-API POST up to `max_body_bytes`;
    /// anything else gets a small allowance. The whole body must arrive
    /// within `body_timeout_ms`.
    pub(crate) async fn verified(
        &mut self,
        parts: &Parts,
        query: &QueryParams,
        body: Incoming,
        kind: RouteKind,
    ) -> Result<(Bytes, u64), ProxyError> {
        self.record.auth_key = query.get("auth_key").map(|k| truncate(k).to_owned());
        let config = &self.state.config;
        let max_body = config.max_body_bytes;
        let max_data = self.app.config.max_data_bytes;
        let (limit, data_limit) = match kind {
            RouteKind::LegacyTrigger if max_data < max_body => (max_data, true),
            RouteKind::LegacyTrigger => (max_body, false),
            RouteKind::Passthrough if parts.method == Method::POST => (max_body, false),
            _ => (MAX_BODYLESS_READ.min(max_body), false),
        };
        let body = match read_body(body, limit, config.body_timeout).await {
            Err(BodyError::TooLarge { .. }) if data_limit => {
                return Err(TranslateError::DataTooLarge { limit }.into());
            }
            other => other?,
        };
        let now = self.state.clock.unix_now();
        signature::verify(
            parts.method.as_str(),
            parts.uri.path(),
            query,
            &body,
            &self.app.expected(now, config.timestamp_window_secs),
        )?;
        self.record.verified = true;
        if kind.is_legacy() {
            // From the head as hyper parsed it: nothing has touched it yet.
            let sender = fingerprint::classify(parts, query, &body);
            self.record.library = Some(sender.library);
            self.record.fingerprint = Some(sender.id);
        }
        Ok((body, now))
    }
}
