//! One log line per request; legacy calls at WARN with the caller's
//! identity; never a secret or an `auth_signature` value.

use hyper::Method;

use crate::support::{self, TestProxy, oracle};

#[tokio::test]
async fn legacy_calls_are_logged_without_secrets() {
    support::capture_logs();
    let fake = support::fake().await;
    let proxy = TestProxy::for_upstream(&fake.url(), "", "").await;
    let agent = "log-probe-agent/1.0";
    let now = support::now();
    let body = b"{\"x\":1}";

    let mut signatures = Vec::new();
    let good = support::legacy_trigger_uri("room", &[("name", "ev")], body, now);
    let forged = good.replace(&good[good.len() - 8..], "00000000");
    let stats = support::legacy_stats_uri("presence-room", now);
    let current = {
        let path = "/apps/4242/channels/room";
        support::signed_uri(support::KEY, support::SECRET, "GET", path, now, None, &[])
    };
    for (method, target, body, status) in [
        (Method::POST, &good, &body[..], 202),
        (Method::POST, &forged, &body[..], 401),
        (Method::GET, &stats, &b""[..], 200),
        (Method::GET, &current, &b""[..], 200),
    ] {
        let sig = oracle::parse_query(target.split_once('?').map_or("", |(_, q)| q))
            .into_iter()
            .find(|(k, _)| k == "auth_signature")
            .map(|(_, v)| v)
            .expect("signed");
        signatures.push(sig);
        let a = support::send(
            method,
            &format!("{}{target}", proxy.url()),
            &[("user-agent", agent)],
            body.to_vec(),
        )
        .await;
        assert_eq!(a.status.as_u16(), status, "{target}: {}", a.text());
    }
    proxy.stop().await;
    // Upstream requests were signed by the proxy: their signatures too.
    signatures.extend(
        fake.recorded()
            .iter()
            .filter_map(|r| r.param("auth_signature")),
    );

    let logs = support::logs();
    let ours: Vec<&str> = logs.lines().filter(|l| l.contains(agent)).collect();
    assert_eq!(ours.len(), 4, "one line per request:\n{}", ours.join("\n"));
    let legacy: Vec<&&str> = ours.iter().filter(|l| l.contains("legacy call")).collect();
    assert_eq!(legacy.len(), 3);
    for line in &legacy {
        assert!(line.contains("WARN"), "{line}");
        for field in [
            "app_id=\"4242\"",
            "auth_key=\"legacy-app-key\"",
            "user_agent=\"log-probe-agent/1.0\"",
            "client_addr=127.0.0.1",
            "latency_ms=",
        ] {
            assert!(line.contains(field), "{field} missing: {line}");
        }
    }
    assert!(legacy.iter().any(
        |l| l.contains("route=\"/apps/{app_id}/channels/{channel}/events\"")
            && l.contains("status=202")
            && l.contains("upstream_status=200")
    ));
    assert!(
        legacy
            .iter()
            .any(|l| l.contains("status=401") && l.contains("invalid signature"))
    );
    assert!(
        legacy
            .iter()
            .any(|l| l.contains("route=\"/apps/{app_id}/channels/{channel}/stats\""))
    );
    assert!(
        ours.iter()
            .any(|l| l.contains("INFO") && l.contains("route=\"passthrough\""))
    );

    assert!(!logs.contains(support::SECRET), "the secret is logged");
    for sig in signatures {
        assert!(!logs.contains(&sig), "an auth_signature value is logged");
    }
}

/// The binary's text lines (`logging::LineFormat`): one per request with
/// the caller's identity, `RUST_LOG` deciding which are written (by level
/// and target, and by field: `[{route}]`), and never a secret or an
/// `auth_signature` value.
#[tokio::test]
async fn the_binarys_text_lines_follow_rust_log() {
    use std::collections::HashMap;

    use crate::support::binary::Served;

    let fake = support::fake().await;
    let config = support::ConfigFile::new(&support::config_toml(&fake.url(), "", ""));
    let agent = "text-line-agent/2.0";
    let body = b"{\"x\":1}";
    // The listening lines (INFO, other modules) tell the test the ports.
    let warn = "warn,pusher_cutover::http::server=info,pusher_cutover::http::admin=info";
    // The per-request line has a target of its own.
    let by_target = format!("{warn},pusher_cutover::request=info");
    // A directive naming one of the line's fields enables it (INFO); one
    // naming a field it does not have does not.
    let by_field = format!("{warn},[{{route}}]=info");
    let by_other_field = format!("{warn},[{{no_such_field}}]=info");
    for (rust_log, passthrough_lines) in [
        ("info", 1),
        (warn, 0),
        (&by_target, 1),
        (&by_field, 1),
        (&by_other_field, 0),
    ] {
        let served =
            Served::start_text(config.path(), &HashMap::from([("RUST_LOG", rust_log)])).await;
        let now = support::now();
        let legacy = support::legacy_trigger_uri("room", &[("name", "ev")], body, now);
        let current_body = br#"{"name":"e","channels":["c"],"data":"d"}"#;
        let current = support::current_trigger_uri(current_body, now);
        let mut signatures = Vec::new();
        for (target, body, status) in [
            (&legacy, &body[..], 202),
            (&current, &current_body[..], 200),
        ] {
            let a = support::send(
                Method::POST,
                &format!("http://{}{target}", served.addr),
                &[("user-agent", agent)],
                body.to_vec(),
            )
            .await;
            assert_eq!(a.status.as_u16(), status, "{target}: {}", a.text());
            let query = target.split_once('?').map_or("", |(_, q)| q);
            let sig = oracle::parse_query(query)
                .into_iter()
                .find(|(k, _)| k == "auth_signature")
                .map(|(_, v)| v)
                .expect("signed");
            signatures.push(sig);
        }
        let (code, lines) = served.sigterm_text().await;
        assert_eq!(code, Some(0), "{lines:?}");
        let ours: Vec<&String> = lines.iter().filter(|l| l.contains(agent)).collect();
        let legacy_lines: Vec<&&String> = ours
            .iter()
            .filter(|l| l.contains("  WARN legacy call method=POST route="))
            .collect();
        assert_eq!(legacy_lines.len(), 1, "RUST_LOG={rust_log}: {ours:?}");
        let line = legacy_lines[0];
        for field in [
            "route=\"/apps/{app_id}/channels/{channel}/events\"",
            "app_id=\"4242\"",
            "status=202",
            "upstream_status=200",
            "auth_key=\"legacy-app-key\"",
            "user_agent=\"text-line-agent/2.0\"",
            "client_addr=127.0.0.1",
            // Who sent it (a synthetic sender: no known family), what it
            // sent, and the cutover path it took.
            "library=\"unknown\"",
            "fingerprint=\"",
            "event=\"ev\"",
            "path=\"translated\"",
        ] {
            assert!(line.contains(field), "{field} missing: {line}");
        }
        let passthrough_line = ours.iter().find(|l| l.contains("INFO request"));
        if let Some(l) = passthrough_line {
            for absent in ["library=", "fingerprint=", "path="] {
                assert!(!l.contains(absent), "{absent} on a passthrough line: {l}");
            }
        }
        let passthrough: Vec<&&String> = ours
            .iter()
            .filter(|l| l.contains("  INFO request method=POST route=\"passthrough\""))
            .collect();
        assert_eq!(
            passthrough.len(),
            passthrough_lines,
            "RUST_LOG={rust_log}: {ours:?}"
        );
        assert_eq!(ours.len(), 1 + passthrough_lines, "{ours:?}");
        let all = lines.join("\n");
        assert!(!all.contains(support::SECRET), "the secret is logged");
        for sig in &signatures {
            assert!(
                !all.contains(sig.as_str()),
                "an auth_signature value is logged"
            );
        }
    }
}
