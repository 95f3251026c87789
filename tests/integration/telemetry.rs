//! Migration telemetry: metrics, deprecation headers, the admin listener,
//! the usage ledger across restarts, the caller cap, and reports.

use std::sync::Arc;
use std::time::Duration;

use hyper::Method;

use crate::support::{self, TestProxy};

const SUNSET: &str = "2027-01-01T00:00:00Z";
const SUNSET_UNIX: u64 = 1_798_761_600;

async fn trigger(proxy: &TestProxy, agent: &str, timestamp: u64) -> support::Answer {
    let uri = support::legacy_trigger_uri("room", &[("name", "ev")], b"{}", timestamp);
    support::send(
        Method::POST,
        &format!("{}{uri}", proxy.url()),
        &[("user-agent", agent)],
        "{}",
    )
    .await
}

async fn stats(proxy: &TestProxy, agent: &str, timestamp: u64) -> support::Answer {
    let uri = support::legacy_stats_uri("room", timestamp);
    support::send(
        Method::GET,
        &format!("{}{uri}", proxy.url()),
        &[("user-agent", agent)],
        "",
    )
    .await
}

async fn admin(proxy: &TestProxy, path: &str) -> support::Answer {
    support::send(
        Method::GET,
        &format!("{}{path}", proxy.admin_url()),
        &[],
        "",
    )
    .await
}

#[tokio::test]
async fn metrics_after_a_known_sequence() {
    let fake = support::fake().await;
    let proxy = TestProxy::for_upstream(&fake.url(), "", &format!("sunset = \"{SUNSET}\"")).await;
    let now = support::now();
    for _ in 0..3 {
        assert_eq!(trigger(&proxy, "a", now).await.status.as_u16(), 202);
    }
    assert_eq!(stats(&proxy, "a", now).await.status.as_u16(), 200);
    let forged = support::legacy_trigger_uri("room", &[("name", "ev")], b"{}", now)
        .replace("auth_signature=", "auth_signature=f");
    let a = support::send(Method::POST, &format!("{}{forged}", proxy.url()), &[], "{}").await;
    assert_eq!(a.status.as_u16(), 401);
    assert_eq!(trigger(&proxy, "a", now - 1000).await.status.as_u16(), 401);
    let current = {
        let body = br#"{"name":"e","channels":["c"],"data":"d"}"#;
        let uri = support::current_trigger_uri(body, now);
        support::send(
            Method::POST,
            &format!("{}{uri}", proxy.url()),
            &[],
            &body[..],
        )
        .await
    };
    assert_eq!(current.status.as_u16(), 200);
    let unknown = support::send(
        Method::POST,
        &format!("{}/apps/9/channels/c/events?name=e", proxy.url()),
        &[],
        "x",
    )
    .await;
    assert_eq!(unknown.status.as_u16(), 404);

    let ready = admin(&proxy, "/readyz").await.text();
    let hash = ready
        .trim()
        .strip_prefix("ready config=")
        .expect("hash in /readyz")
        .to_owned();
    assert_eq!(hash.len(), 16, "{ready}");
    let m = admin(&proxy, "/metrics").await;
    assert_eq!(m.status.as_u16(), 200);
    let text = m.text();
    let expect = [
        (
            r#"pusher_cutover_deprecated_calls_total{app_id="4242",route="legacy_trigger",library="unknown",path="translated"}"#,
            3.0,
        ),
        (
            r#"pusher_cutover_deprecated_calls_total{app_id="4242",route="legacy_stats",library="unknown",path="translated"}"#,
            1.0,
        ),
        (
            r#"pusher_cutover_requests_total{app_id="4242",route="legacy_trigger",outcome="ok"}"#,
            3.0,
        ),
        (
            r#"pusher_cutover_requests_total{app_id="4242",route="legacy_trigger",outcome="auth_failed"}"#,
            2.0,
        ),
        (
            r#"pusher_cutover_requests_total{app_id="4242",route="legacy_stats",outcome="ok"}"#,
            1.0,
        ),
        (
            r#"pusher_cutover_requests_total{app_id="4242",route="passthrough",outcome="ok"}"#,
            1.0,
        ),
        (
            r#"pusher_cutover_requests_total{app_id="other",route="legacy_trigger",outcome="client_error"}"#,
            1.0,
        ),
        (
            r#"pusher_cutover_signature_failures_total{app_id="4242",reason="signature_mismatch"}"#,
            1.0,
        ),
        (
            r#"pusher_cutover_signature_failures_total{app_id="4242",reason="timestamp_expired"}"#,
            1.0,
        ),
        (
            r#"pusher_cutover_request_duration_seconds_count{route="legacy_trigger"}"#,
            6.0,
        ),
        (
            r#"pusher_cutover_upstream_duration_seconds_count{route="legacy_trigger"}"#,
            3.0,
        ),
        (
            r#"pusher_cutover_upstream_duration_seconds_count{route="passthrough"}"#,
            1.0,
        ),
        (
            &format!(
                r#"pusher_cutover_build_info{{version="{}",config_hash="{hash}"}}"#,
                env!("CARGO_PKG_VERSION")
            ),
            1.0,
        ),
        (
            r#"pusher_cutover_app_sunset_timestamp_seconds{app_id="4242"}"#,
            SUNSET_UNIX as f64,
        ),
    ];
    for (series, value) in expect {
        assert_eq!(
            support::metric(&text, series),
            Some(value),
            "{series} in:\n{text}"
        );
    }
    assert!(
        !text.contains(r#"app_id="9""#),
        "unconfigured apps are labelled other"
    );
    // Forged and stale calls do not enter the ledger.
    let usage = admin(&proxy, "/usage").await.json();
    let calls: u64 = usage["apps"][0]["callers"]
        .as_array()
        .expect("callers")
        .iter()
        .map(|c| c["calls"].as_u64().expect("calls"))
        .sum();
    assert_eq!(calls, 4);
    proxy.stop().await;
}

/// A call site is its event and channel templates: triggers whose event
/// and channel names differ only by identifiers are one call site, with
/// no identifier kept, in `/usage` and in the WARN line.
#[tokio::test]
async fn identifiers_in_event_and_channel_names_make_one_call_site() {
    support::capture_logs();
    let fake = support::fake().await;
    let proxy = TestProxy::for_upstream(&fake.url(), "", "").await;
    for (channel, event) in [
        ("orders-123", "order-123-paid"),
        ("orders-456", "order-456-paid"),
        ("orders-9f8e7d6c5b", "order-9f8e7d6c5b-paid"),
    ] {
        let uri = support::legacy_trigger_uri(channel, &[("name", event)], b"{}", support::now());
        let a = support::send(Method::POST, &format!("{}{uri}", proxy.url()), &[], "{}").await;
        assert_eq!(a.status.as_u16(), 202, "{}", a.text());
    }
    let usage = admin(&proxy, "/usage").await.json();
    let callers = usage["apps"][0]["callers"].as_array().expect("callers");
    assert_eq!(callers.len(), 1, "{usage}");
    assert_eq!(
        callers[0]["call_sites"],
        serde_json::json!([{"event": "order-{id}-paid", "channel": "orders-{id}", "calls": 3}]),
    );
    let lines = || {
        support::logs()
            .lines()
            .filter(|l| l.contains("legacy call") && l.contains("order-{id}-paid"))
            .count()
    };
    for _ in 0..50 {
        if lines() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(lines(), 3, "{}", support::logs());
    let logs = support::logs();
    for id in ["123", "456", "9f8e7d6c5b"] {
        assert!(!logs.contains(&format!("order-{id}-paid")), "{logs}");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn deprecation_headers_on_legacy_answers_only() {
    let fake = support::fake().await;
    let proxy = TestProxy::for_upstream(&fake.url(), "", &format!("sunset = \"{SUNSET}\"")).await;
    let now = support::now();
    let header = |a: &support::Answer, k: &str| {
        a.headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    for a in [
        trigger(&proxy, "a", now).await,
        stats(&proxy, "a", now).await,
        trigger(&proxy, "a", 0).await,
    ] {
        assert_eq!(
            header(&a, "deprecation").as_deref(),
            Some("@1346457600"),
            "{}",
            a.status
        );
        assert_eq!(
            header(&a, "link").as_deref(),
            Some(
                r#"<https://pusher.com/docs/channels/library_auth_reference/rest-api/>; rel="deprecation""#
            )
        );
        assert_eq!(
            header(&a, "sunset").as_deref(),
            Some("Fri, 01 Jan 2027 00:00:00 GMT")
        );
    }
    let unknown = support::send(
        Method::GET,
        &format!("{}/apps/9/channels/c/stats", proxy.url()),
        &[],
        "",
    )
    .await;
    assert_eq!(unknown.status.as_u16(), 404);
    assert!(header(&unknown, "deprecation").is_some());
    assert_eq!(
        header(&unknown, "sunset"),
        None,
        "no sunset for an unknown app"
    );

    let passthrough = support::send(
        Method::GET,
        &format!("{}/apps/4242/channels", proxy.url()),
        &[],
        "",
    )
    .await;
    for k in ["deprecation", "link", "sunset"] {
        assert_eq!(header(&passthrough, k), None, "{k} on passthrough");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn admin_endpoints_and_readiness_while_draining() {
    let fake = support::fake().await;
    let mut proxy = TestProxy::for_upstream(&fake.url(), "", "").await;
    let cases = [
        ("/healthz", 200, "text/plain; charset=utf-8"),
        ("/readyz", 200, "text/plain; charset=utf-8"),
        (
            "/metrics",
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        ("/usage", 200, "application/json"),
        ("/report", 200, "text/html; charset=utf-8"),
        ("/report?since=7d", 200, "text/html; charset=utf-8"),
        ("/report?since=soon", 400, "text/plain; charset=utf-8"),
        ("/nope", 404, "text/plain; charset=utf-8"),
    ];
    for (path, status, content_type) in cases {
        let a = admin(&proxy, path).await;
        assert_eq!(a.status.as_u16(), status, "{path}: {}", a.text());
        assert_eq!(
            a.headers.get("content-type").and_then(|v| v.to_str().ok()),
            Some(content_type),
            "{path}"
        );
        // What names callers is never cached nor read as another type,
        // and the page runs nothing and is framed by nothing.
        let header = |name: &str| a.headers.get(name).and_then(|v| v.to_str().ok());
        let names_callers = status == 200 && (path == "/usage" || path.starts_with("/report"));
        if names_callers {
            assert_eq!(header("cache-control"), Some("no-store"), "{path}");
            assert_eq!(header("x-content-type-options"), Some("nosniff"), "{path}");
        }
        let csp = header("content-security-policy");
        if names_callers && path.starts_with("/report") {
            let csp = csp.unwrap_or_default();
            for part in ["default-src 'none'", "frame-ancestors 'none'"] {
                assert!(csp.contains(part), "{path}: {csp}");
            }
            assert!(!csp.contains("script-src"), "{csp}");
        } else {
            assert_eq!(csp, None, "{path}");
        }
    }
    let post = support::send(
        Method::POST,
        &format!("{}/metrics", proxy.admin_url()),
        &[],
        "",
    )
    .await;
    assert_eq!(post.status.as_u16(), 405);

    // A request in flight when shutdown begins: /readyz turns 503 while it
    // drains, and the request still completes. The upstream holds it 3 s;
    // shutdown begins once it is there, and /readyz is asked (bounded)
    // until it turns 503.
    fake.set(|b| b.delay = Duration::from_secs(3));
    let url = proxy.url();
    let in_flight = tokio::spawn(async move {
        let uri = support::legacy_trigger_uri("room", &[("name", "ev")], b"{}", support::now());
        support::send(Method::POST, &format!("{url}{uri}"), &[], "{}").await
    });
    for _ in 0..250 {
        if !fake.recorded().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        fake.recorded().len(),
        1,
        "the request is in flight upstream"
    );
    proxy.begin_shutdown();
    let mut ready = admin(&proxy, "/readyz").await;
    for _ in 0..50 {
        if ready.status.as_u16() == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        ready = admin(&proxy, "/readyz").await;
    }
    assert_eq!(ready.status.as_u16(), 503, "{}", ready.text());
    assert!(
        !in_flight.is_finished(),
        "/readyz was asked while the request drained"
    );
    let done = in_flight.await.expect("request task");
    assert_eq!(done.status.as_u16(), 202, "{}", done.text());
    proxy.stop().await;
}

#[tokio::test]
async fn caller_cap_holds_with_10000_user_agents() {
    let fake = support::fake().await;
    let toml = support::config_toml(&fake.url(), "", "").replace(
        "[upstream]",
        "[telemetry]\nmax_callers_per_app = 100\n[upstream]",
    );
    let proxy = Arc::new(TestProxy::start(&toml, Arc::new(pusher_cutover::SystemClock)).await);
    let now = support::now();
    let mut tasks = Vec::new();
    for t in 0..16 {
        let proxy = proxy.clone();
        tasks.push(tokio::spawn(async move {
            for i in (t..10_000).step_by(16) {
                let a = stats(&proxy, &format!("agent-{i}"), now).await;
                assert_eq!(a.status.as_u16(), 200);
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let usage = admin(&proxy, "/usage").await.json();
    let callers = usage["apps"][0]["callers"]
        .as_array()
        .expect("callers")
        .clone();
    assert_eq!(callers.len(), 101, "100 callers apart, plus other");
    let total: u64 = callers
        .iter()
        .map(|c| c["calls"].as_u64().expect("calls"))
        .sum();
    assert_eq!(total, 10_000);
    let other = callers
        .iter()
        .find(|c| c["user_agent"] == "other")
        .expect("other caller");
    assert_eq!(other["calls"], 9_900);
    assert_eq!(other["auth_key"], "other");
    support::stop_shared(proxy).await;
}
