//! An independent implementation of the signing rules of spec A.2, written
//! apart from the crate's signer and checked against the shared vectors
//! (`vectors::oracle_reproduces_every_vector`). The fake upstream verifies
//! with it, so a bug in the crate's signer cannot hide itself.

use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;

/// Lower-case hex of any bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// MD5 of `body`, lower-case hex.
pub fn md5_hex(body: &[u8]) -> String {
    hex(&Md5::digest(body))
}

/// Form-decodes a query key or value (`+` is a space).
pub fn decode(raw: &str) -> String {
    let spaced = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8_lossy()
        .into_owned()
}

/// The decoded pairs of a raw query, keys lower-cased, in wire order.
pub fn parse_query(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k).to_lowercase(), decode(v))
        })
        .collect()
}

/// `METHOD\nPATH\nk=v&…` over every pair but `auth_signature`, sorted.
pub fn string_to_sign(method: &str, path: &str, pairs: &[(String, String)]) -> String {
    let mut sorted: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k != "auth_signature")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    sorted.sort();
    format!("{method}\n{path}\n{}", sorted.join("&"))
}

/// HMAC-SHA256 of `message` keyed with `secret`, lower-case hex.
pub fn hmac_hex(secret: &str, message: &str) -> String {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(message.as_bytes());
    hex(&mac.finalize().into_bytes())
}

/// A signed query string for `method path` with `params`, as the Node
/// library builds it (values unescaped except for what a URL needs), plus
/// `body_md5` when a body is given.
pub fn signed_query(
    key: &str,
    secret: &str,
    method: &str,
    path: &str,
    timestamp: u64,
    body: Option<&[u8]>,
    params: &[(&str, &str)],
) -> String {
    let mut pairs: Vec<(String, String)> = vec![
        ("auth_key".into(), key.into()),
        ("auth_timestamp".into(), timestamp.to_string()),
        ("auth_version".into(), "1.0".into()),
    ];
    if let Some(body) = body {
        pairs.push(("body_md5".into(), md5_hex(body)));
    }
    pairs.extend(params.iter().map(|(k, v)| ((*k).into(), (*v).into())));
    let signature = hmac_hex(secret, &string_to_sign(method, path, &pairs));
    pairs.push(("auth_signature".into(), signature));
    pairs
        .iter()
        .map(|(k, v)| {
            // Keys as the libraries send them (plain), escaped only where a
            // URL needs it; values escaped fully.
            const KEYS: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
                .remove(b'-')
                .remove(b'.')
                .remove(b'_')
                .remove(b'~');
            let k: String = percent_encoding::utf8_percent_encode(k, KEYS).collect();
            let v: String =
                percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)
                    .collect();
            format!("{k}={v}")
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Verifies a request the way sockudo does (spec A.4, A.5): signature over
/// the raw path, `body_md5` required on POST and refused on GET, timestamp
/// within 600 s. Returns the reason on failure.
pub fn verify_strict(
    method: &str,
    raw_path: &str,
    raw_query: &str,
    body: &[u8],
    secret: &str,
    now: u64,
) -> Result<(), String> {
    let pairs = parse_query(raw_query);
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let ts: u64 = get("auth_timestamp")
        .ok_or("auth_timestamp missing")?
        .parse()
        .map_err(|_| "auth_timestamp not a number")?;
    // Sockudo's rule (spec A): exactly 600 s is still accepted upstream;
    // the proxy itself refuses it inbound, like Pusher's gem.
    if ts.abs_diff(now) > 600 {
        return Err(format!("timestamp {ts} not within 600 s of {now}"));
    }
    if get("auth_version") != Some("1.0") {
        return Err("auth_version must be 1.0".into());
    }
    match (method, get("body_md5")) {
        ("GET", Some(_)) => return Err("body_md5 must not be present on GET".into()),
        ("POST", None) => return Err("body_md5 required on POST".into()),
        ("POST", Some(md5)) if md5 != md5_hex(body) => return Err("body_md5 mismatch".into()),
        _ => {}
    }
    let given = get("auth_signature").ok_or("auth_signature missing")?;
    let expected = hmac_hex(secret, &string_to_sign(method, raw_path, &pairs));
    if given == expected {
        Ok(())
    } else {
        Err(format!("invalid signature for {method} {raw_path}"))
    }
}
