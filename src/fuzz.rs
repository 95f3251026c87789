//! Entry points for the fuzz targets in `tests/fuzz` (cargo-fuzz), kept in
//! the library so the corpus, crash seeds included, also replays under
//! `cargo test`. Each takes arbitrary bytes, must never panic, and checks
//! the invariants of what it exercises.

use secrecy::SecretString;

use crate::pipeline::classify::{RouteKind, classify};
use crate::pusher::query::QueryParams;
use crate::pusher::signature::{self, Expected, Signer, Unsigned};
use crate::routes::{self, channel_stats};

/// The query parser and the verifier: the input is split into a raw path,
/// a raw query and a body (by the first two `\n`), parsed and verified as
/// an inbound request; whatever passes must also pass when re-signed by the
/// proxy's own signer.
pub fn query_and_verify(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let path = parts.next().unwrap_or("");
    let raw_query = parts.next().unwrap_or("");
    let body = parts.next().unwrap_or("").as_bytes();
    let Ok(query) = QueryParams::parse(raw_query) else {
        return;
    };
    let keys: Vec<&str> = query.iter().map(|(k, _)| k).collect();
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "sorted and unique");
    let secrets = [SecretString::from("fuzz-secret".to_owned())];
    let expected = Expected {
        app_id: "1",
        key: query.get("auth_key").unwrap_or("k"),
        secrets: &secrets,
        now: query
            .get("auth_timestamp")
            .and_then(|t| t.parse().ok())
            .unwrap_or(0),
        window_secs: 600,
    };
    let _ = signature::verify("POST", path, &query, body, &expected);

    let kept: Vec<(&str, &str)> = query
        .iter()
        .filter(|(k, _)| !signature::is_auth_param(k))
        .collect();
    let wire = Signer::new("k", &secrets[0]).query(&Unsigned {
        method: "POST",
        path,
        timestamp: 1_000,
        body: Some(body),
        params: &kept,
    });
    let reparsed = QueryParams::parse(&wire).expect("the signer's own output parses");
    let again = Expected {
        key: "k",
        now: 1_000,
        ..expected
    };
    signature::verify("POST", path, &reparsed, body, &again).expect("own signature verifies");
}

/// The legacy route parser: classification and channel decoding of an
/// arbitrary path.
pub fn legacy_route(data: &[u8]) {
    let path = String::from_utf8_lossy(data);
    for method in [hyper::Method::GET, hyper::Method::POST] {
        let route = classify(&method, &path);
        if route.kind == RouteKind::Passthrough {
            continue;
        }
        assert!(route.app_id.is_some() && route.channel.is_some());
        if let Ok(channel) = routes::decode_channel(route.channel.unwrap_or("")) {
            assert!(channel.len() <= crate::pusher::channel::MAX_CHANNEL_LEN);
            assert!(!channel.contains(['/', '?', '#', '%']));
            assert!(channel != "." && channel != "..");
        }
    }
}

/// The stats response mapper: an arbitrary upstream body; what it maps to
/// is the legacy shape and nothing else.
pub fn stats_mapper(data: &[u8]) {
    for channel in ["room", "presence-room"] {
        if let Ok(mapped) = channel_stats::map_ok(channel, data) {
            let value: serde_json::Value =
                serde_json::from_slice(&mapped).expect("the mapper writes JSON");
            let object = value.as_object().expect("an object");
            assert!(object.contains_key("occupied"));
            assert!(
                object
                    .keys()
                    .all(|k| ["occupied", "user_count", "connection_count"].contains(&k.as_str()))
            );
            if channel == "room" {
                assert!(!object.contains_key("user_count"));
            }
        }
        let _ = channel_stats::counting_disabled(hyper::StatusCode::BAD_REQUEST, data);
    }
}
