//! Pusher HTTP API request signatures, `auth_version` 1.0 (spec section A).
//!
//! The string to sign is `METHOD\nPATH\nCANONICAL_QUERY`, where the canonical
//! query is every parameter but `auth_signature`, keys lower-cased, sorted,
//! rendered `key=value` with *decoded*, unescaped values and joined with `&`
//! (spec A.2). The signature is the lower-case hex HMAC-SHA256 of that string
//! keyed with the app secret.

use std::borrow::Cow;

use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest, Md5};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::pusher::query::QueryParams;

type HmacSha256 = Hmac<Sha256>;

/// The only `auth_version` ever defined (spec A.1).
pub const AUTH_VERSION: &str = "1.0";

/// MD5 of the empty body, which PyPI `pusher` sends on every GET (spec A.4).
pub const EMPTY_BODY_MD5: &str = "d41d8cd98f00b204e9800998ecf8427e";

/// RFC 3986 unreserved characters stay literal on the wire; everything else
/// is escaped, in keys and values alike. Servers decode before verifying,
/// so this is always safe (spec A.6, "Outbound signing").
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Whether `key` is one of the authentication parameters, which a re-signed
/// request replaces rather than keeps (`body_md5` included).
pub fn is_auth_param(key: &str) -> bool {
    matches!(
        key,
        "auth_key" | "auth_timestamp" | "auth_version" | "auth_signature" | "body_md5"
    )
}

/// Lower-case hex MD5 of `body`, the value of `body_md5`.
pub fn body_md5(body: &[u8]) -> String {
    body_md5_into(body, &mut [0; 32]).to_owned()
}

/// [`body_md5`] written into `out` instead of a new string (the request
/// path's form: no allocation).
fn body_md5_into<'o>(body: &[u8], out: &'o mut [u8; 32]) -> &'o str {
    base16ct::lower::encode_str(&Md5::digest(body), out)
        .expect("invariant: 16 bytes of MD5 always fit 32 hex digits")
}

/// The string to sign for `method`, `path` and already-canonical `params`
/// (lower-case keys, sorted, without `auth_signature`).
///
/// Used for diagnostics and tests; signing streams the same bytes into the
/// MAC without building the string.
pub fn string_to_sign<'a>(
    method: &str,
    path: &str,
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> String {
    let mut out = format!("{method}\n{path}\n");
    for (i, (k, v)) in params.into_iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// A secret made ready to sign and verify with: the HMAC-SHA256 state
/// after the secret's two key blocks (inner and outer pad), hashed once
/// here instead of for every signature, so a signature hashes its message
/// only (two SHA-256 blocks fewer each). Derived from the secret and as
/// good as it for signing, so it is kept like it: never printed (its
/// `Debug` shows nothing of it), never logged.
#[derive(Clone)]
pub struct SigningKey(HmacSha256);

impl SigningKey {
    /// The key of `secret`.
    pub fn new(secret: &SecretString) -> Self {
        // HMAC takes keys of any length, so this constructor cannot fail.
        let mac = <HmacSha256 as KeyInit>::new_from_slice(secret.expose_secret().as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        Self(mac)
    }
}

impl From<&SecretString> for SigningKey {
    fn from(secret: &SecretString) -> Self {
        Self::new(secret)
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

/// Raw HMAC-SHA256 over the string to sign.
fn mac<'a>(
    key: &SigningKey,
    method: &str,
    path: &str,
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> [u8; 32] {
    let mut mac = key.0.clone();
    mac.update(method.as_bytes());
    mac.update(b"\n");
    mac.update(path.as_bytes());
    mac.update(b"\n");
    for (i, (k, v)) in params.into_iter().enumerate() {
        if i > 0 {
            mac.update(b"&");
        }
        mac.update(k.as_bytes());
        mac.update(b"=");
        mac.update(v.as_bytes());
    }
    mac.finalize().into_bytes().into()
}

/// Lower-case hex signature of `method`, `path` and canonical `params`.
pub fn sign<'a>(
    secret: &SecretString,
    method: &str,
    path: &str,
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> String {
    base16ct::lower::encode_string(&mac(&SigningKey::new(secret), method, path, params))
}

/// Whether `candidate` is the lower-case hex signature of the request.
///
/// The comparison runs in constant time over the hex text, so upper-case
/// hex is refused, as Pusher and sockudo refuse it (spec A.2).
pub fn signature_matches<'a>(
    secret: &SecretString,
    method: &str,
    path: &str,
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
    candidate: &str,
) -> bool {
    key_matches(&SigningKey::new(secret), method, path, params, candidate)
}

/// [`signature_matches`] with the secret's [`SigningKey`].
fn key_matches<'a>(
    key: &SigningKey,
    method: &str,
    path: &str,
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
    candidate: &str,
) -> bool {
    let mut expected = [0u8; 64];
    let Ok(expected) = base16ct::lower::encode(&mac(key, method, path, params), &mut expected)
    else {
        return false;
    };
    expected.ct_eq(candidate.as_bytes()).into()
}

/// Why an inbound request failed authentication (spec A.5, A.6).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// A required auth parameter is absent.
    #[error("missing required query parameter `{0}`")]
    Missing(&'static str),
    /// `auth_version` is not `1.0`.
    #[error("auth_version is not supported (only 1.0)")]
    UnsupportedVersion,
    /// `auth_key` is not the key of the app in the path.
    #[error("auth_key does not belong to app {0}")]
    UnknownKey(String),
    /// `auth_timestamp` is not a decimal integer.
    #[error("auth_timestamp is not a Unix time in seconds")]
    InvalidTimestamp,
    /// `auth_timestamp` is too far from the proxy's clock.
    #[error("timestamp expired: given {given}, not within {window}s of server time {now}")]
    TimestampExpired {
        /// The client's timestamp.
        given: u64,
        /// The proxy's time.
        now: u64,
        /// The accepted window in seconds.
        window: u64,
    },
    /// The body is not empty but `body_md5` is absent.
    #[error("body_md5 is required for a request with a body")]
    BodyMd5Missing,
    /// `body_md5` does not match the bytes received.
    #[error("body_md5 does not match the request body")]
    BodyMd5Mismatch,
    /// The HMAC does not match.
    #[error("invalid signature")]
    SignatureMismatch,
}

impl SignatureError {
    /// Every [`SignatureError::reason`].
    pub const REASONS: [&'static str; 8] = [
        "missing_parameter",
        "unsupported_version",
        "unknown_key",
        "invalid_timestamp",
        "timestamp_expired",
        "body_md5_missing",
        "body_md5_mismatch",
        "signature_mismatch",
    ];

    /// A short, bounded label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing(_) => "missing_parameter",
            Self::UnsupportedVersion => "unsupported_version",
            Self::UnknownKey(_) => "unknown_key",
            Self::InvalidTimestamp => "invalid_timestamp",
            Self::TimestampExpired { .. } => "timestamp_expired",
            Self::BodyMd5Missing => "body_md5_missing",
            Self::BodyMd5Mismatch => "body_md5_mismatch",
            Self::SignatureMismatch => "signature_mismatch",
        }
    }
}

/// What an inbound request must be checked against.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The app id in the path, for error messages.
    pub app_id: &'a str,
    /// The app's key; `auth_key` must equal it.
    pub key: &'a str,
    /// The keys of the secrets accepted for the app (more than one during
    /// a rotation).
    pub keys: &'a [SigningKey],
    /// The proxy's current Unix time in seconds.
    pub now: u64,
    /// Timestamps at or beyond this many seconds from `now` are refused.
    pub window_secs: u64,
}

/// Verifies an inbound request per spec A.6: required parameters, key,
/// timestamp window, `body_md5`, then the signature over the raw path.
///
/// `raw_path` must be the path exactly as it appeared in the request line
/// (spec A.3). A timestamp is refused when `|now - ts| >= window`, like
/// Pusher's own signature gem (spec A.5).
pub fn verify(
    method: &str,
    raw_path: &str,
    query: &QueryParams,
    body: &[u8],
    expected: &Expected<'_>,
) -> Result<(), SignatureError> {
    let param = |k: &'static str| query.get(k).ok_or(SignatureError::Missing(k));
    let key = param("auth_key")?;
    let timestamp = param("auth_timestamp")?;
    let version = param("auth_version")?;
    let signature = param("auth_signature")?;

    if version != AUTH_VERSION {
        return Err(SignatureError::UnsupportedVersion);
    }
    if !bool::from(key.as_bytes().ct_eq(expected.key.as_bytes())) {
        return Err(SignatureError::UnknownKey(expected.app_id.to_owned()));
    }
    let given: u64 = timestamp
        .parse()
        .map_err(|_| SignatureError::InvalidTimestamp)?;
    if given.abs_diff(expected.now) >= expected.window_secs {
        return Err(SignatureError::TimestampExpired {
            given,
            now: expected.now,
            window: expected.window_secs,
        });
    }
    match query.get("body_md5") {
        None if !body.is_empty() => return Err(SignatureError::BodyMd5Missing),
        None => {}
        Some(md5) if md5 != body_md5_into(body, &mut [0; 32]) => {
            return Err(SignatureError::BodyMd5Mismatch);
        }
        Some(_) => {}
    }

    let signed = || query.iter().filter(|(k, _)| *k != "auth_signature");
    let ok = expected
        .keys
        .iter()
        .any(|key| key_matches(key, method, raw_path, signed(), signature));
    if ok {
        Ok(())
    } else {
        Err(SignatureError::SignatureMismatch)
    }
}

/// An outbound request to sign: what [`Signer`] adds the auth parameters to.
#[derive(Debug, Clone, Copy)]
pub struct Unsigned<'a> {
    /// The method, upper case.
    pub method: &'a str,
    /// The path, exactly as it will be sent.
    pub path: &'a str,
    /// `auth_timestamp`, Unix seconds.
    pub timestamp: u64,
    /// The body, when one is sent (then `body_md5` is added). Outbound
    /// bodies are only ever sent on POST, and sockudo refuses `body_md5` on
    /// GET (spec A.4).
    pub body: Option<&'a [u8]>,
    /// The parameters besides the auth ones (decoded values), in any order.
    pub params: &'a [(&'a str, &'a str)],
}

/// Signs outbound requests with one app's key and secret.
#[derive(Clone, Copy)]
pub struct Signer<'a> {
    key: &'a str,
    signing_key: &'a SigningKey,
}

impl std::fmt::Debug for Signer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl<'a> Signer<'a> {
    /// A signer for the app with `key` and the [`SigningKey`] of its
    /// secret.
    pub fn new(key: &'a str, signing_key: &'a SigningKey) -> Self {
        Self { key, signing_key }
    }

    /// The signed query string of `req`: the part of [`Signer::target`]
    /// after the `?`.
    pub fn query(&self, req: &Unsigned<'_>) -> String {
        let target = self.target(req);
        target[req.path.len() + 1..].to_owned()
    }

    /// The target of `req`, `path?query`, built in one buffer.
    ///
    /// The query adds `auth_key`, `auth_timestamp`, `auth_version`, and
    /// `body_md5` when a body is given, signs, and renders every value
    /// percent-encoded, `auth_signature` last.
    pub fn target(&self, req: &Unsigned<'_>) -> String {
        let mut digits = itoa::Buffer::new();
        let timestamp = digits.format(req.timestamp);
        let mut hex = [0; 32];
        let md5 = req.body.map(|body| body_md5_into(body, &mut hex));
        let mut params: Vec<(&str, &str)> = Vec::with_capacity(5 + req.params.len());
        params.push(("auth_key", self.key));
        params.push(("auth_timestamp", timestamp));
        params.push(("auth_version", AUTH_VERSION));
        if let Some(md5) = md5 {
            params.push(("body_md5", md5));
        }
        params.extend_from_slice(req.params);
        params.sort_unstable_by(|a, b| a.0.cmp(b.0));

        let mut signature = [0u8; 64];
        let mac = mac(
            self.signing_key,
            req.method,
            req.path,
            params.iter().copied(),
        );
        let signature = base16ct::lower::encode_str(&mac, &mut signature)
            .expect("invariant: 32 bytes of HMAC-SHA256 always fit 64 hex digits");
        let mut out = String::with_capacity(req.path.len() + 257);
        out.push_str(req.path);
        out.push('?');
        for (i, (k, v)) in params
            .iter()
            .copied()
            .chain(std::iter::once(("auth_signature", signature)))
            .enumerate()
        {
            if i > 0 {
                out.push('&');
            }
            // Borrowed, so copied in one piece, when there is nothing to
            // escape (every auth parameter).
            out.push_str(&Cow::from(utf8_percent_encode(k, QUERY_VALUE)));
            out.push('=');
            out.push_str(&Cow::from(utf8_percent_encode(v, QUERY_VALUE)));
        }
        out
    }
}

#[cfg(test)]
mod tests;
