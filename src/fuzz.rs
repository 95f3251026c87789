//! Entry points for the fuzz targets in `tests/fuzz` (cargo-fuzz). Each
//! takes arbitrary bytes, must never panic, and checks the invariants of
//! what it exercises.
//!
//! Compiled with the `fuzzing` feature (which `tests/fuzz` enables) and in
//! this crate's unit tests, never into the release binary. The unit tests
//! below replay the corpus, crash seeds in `artifacts/` included, so
//! `cargo test` checks every input the fuzzer kept without a feature flag:
//! integration tests see only the library as built without `cfg(test)`,
//! hence the replay lives here.

use secrecy::SecretString;

use crate::pipeline::classify::{RouteKind, classify};
use crate::pusher::query::QueryParams;
use crate::pusher::signature::{self, Expected, Signer, SigningKey, Unsigned};
use crate::routes::{self, channel_stats};

/// The query parser and the verifier: the input is split into a raw path,
/// a raw query and a body (by the first two `\n`), parsed and verified as
/// an inbound request; whatever passes must also pass when re-signed by the
/// proxy's own signer.
pub fn query_and_verify(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let path = parts
        .next()
        .expect("invariant: splitn yields at least one part");
    // Inputs without a second or third line have an empty query or body.
    let raw_query = parts.next().unwrap_or("");
    let body = parts.next().unwrap_or("").as_bytes();
    let Ok(query) = QueryParams::parse(raw_query) else {
        return;
    };
    let keys: Vec<&str> = query.iter().map(|(k, _)| k).collect();
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "sorted and unique");
    let secrets = [SigningKey::new(&SecretString::from(
        "fuzz-secret".to_owned(),
    ))];
    let expected = Expected {
        app_id: "1",
        key: query.get("auth_key").unwrap_or("k"),
        keys: &secrets,
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
        assert!(route.app_id.is_some(), "a legacy route names its app");
        let raw = route.channel.expect("a legacy route names its channel");
        if let Ok(channel) = routes::decode_channel(raw) {
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Runs every input of `target`'s corpus and crash seeds through `run`.
    fn replay(target: &str, run: fn(&[u8])) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz");
        let mut replayed = 0;
        for dir in ["corpus", "artifacts"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
                continue;
            };
            for entry in entries {
                let path = entry.expect("corpus entry").path();
                let data = std::fs::read(&path).expect("corpus file");
                run(&data);
                replayed += 1;
            }
        }
        assert!(replayed >= 3, "{target}: only {replayed} corpus inputs");
    }

    #[test]
    fn query_verify_corpus() {
        replay("query_verify", super::query_and_verify);
    }

    #[test]
    fn legacy_route_corpus() {
        replay("legacy_route", super::legacy_route);
    }

    #[test]
    fn stats_mapper_corpus() {
        replay("stats_mapper", super::stats_mapper);
    }
}
