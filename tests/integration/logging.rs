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
