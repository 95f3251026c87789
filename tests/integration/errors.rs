//! Every error class of spec E.4: the right status, a one-line plain-text
//! body, and nothing forwarded for what failed verification.

use std::sync::Arc;
use std::time::Duration;

use hyper::Method;

use crate::support::{self, TestProxy};

fn assert_one_line(a: &support::Answer) {
    let text = a.text();
    assert!(
        text.ends_with('\n') && text.lines().count() == 1,
        "{text:?}"
    );
    assert_eq!(
        a.headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("text/plain; charset=utf-8")
    );
}

async fn post(proxy: &TestProxy, target: &str, body: impl Into<bytes::Bytes>) -> support::Answer {
    support::send(Method::POST, &format!("{}{target}", proxy.url()), &[], body).await
}

#[tokio::test]
async fn client_errors_are_refused_locally() {
    let fake = support::fake().await;
    let proxy = TestProxy::for_upstream(&fake.url(), "", "max_data_bytes = 100").await;
    let now = support::now();
    let body = b"{\"a\":1}";
    let ok_uri = support::legacy_trigger_uri("room", &[("name", "ev")], body, now);
    let forged = ok_uri.replace(&ok_uri[ok_uri.len() - 8..], "00000000");
    let other_secret = {
        let path = "/apps/4242/channels/room/events";
        support::signed_uri(
            support::KEY,
            "wrong",
            "POST",
            path,
            now,
            Some(body),
            &[("name", "ev")],
        )
    };
    let other_key = {
        let path = "/apps/4242/channels/room/events";
        support::signed_uri(
            "other-key",
            support::SECRET,
            "POST",
            path,
            now,
            Some(body),
            &[("name", "ev")],
        )
    };
    let unknown_app = {
        let path = "/apps/7/channels/room/events";
        support::signed_uri(
            support::KEY,
            support::SECRET,
            "POST",
            path,
            now,
            Some(body),
            &[("name", "ev")],
        )
    };
    let big = vec![b'x'; 101];
    let cases: Vec<(&str, String, Vec<u8>, u16, &str)> = vec![
        ("forged signature", forged, body.to_vec(), 401, "signature"),
        (
            "wrong secret",
            other_secret,
            body.to_vec(),
            401,
            "signature",
        ),
        (
            "key of another app",
            other_key,
            body.to_vec(),
            401,
            "auth_key",
        ),
        (
            "stale timestamp",
            support::legacy_trigger_uri("room", &[("name", "ev")], body, now - 601),
            body.to_vec(),
            401,
            "timestamp",
        ),
        (
            "future timestamp",
            support::legacy_trigger_uri("room", &[("name", "ev")], body, now + 601),
            body.to_vec(),
            401,
            "timestamp",
        ),
        (
            "body changed",
            ok_uri.clone(),
            b"{\"a\":2}".to_vec(),
            401,
            "body_md5",
        ),
        (
            "no auth at all",
            "/apps/4242/channels/room/events?name=ev".into(),
            body.to_vec(),
            401,
            "auth_key",
        ),
        (
            "unknown app",
            unknown_app,
            body.to_vec(),
            404,
            "unknown app",
        ),
        (
            "missing name",
            support::legacy_trigger_uri("room", &[], body, now),
            body.to_vec(),
            400,
            "name",
        ),
        (
            "empty name",
            support::legacy_trigger_uri("room", &[("name", "")], body, now),
            body.to_vec(),
            400,
            "name",
        ),
        (
            "non-UTF-8 data",
            support::legacy_trigger_uri("room", &[("name", "ev")], b"\xff\xfe", now),
            b"\xff\xfe".to_vec(),
            400,
            "UTF-8",
        ),
        (
            "repeated key",
            format!("{ok_uri}&name=again"),
            body.to_vec(),
            400,
            "repeated",
        ),
        (
            "malformed escape",
            format!("{ok_uri}&x=%ZZ"),
            body.to_vec(),
            400,
            "malformed",
        ),
        (
            "bad channel",
            support::legacy_trigger_uri("a%20b", &[("name", "ev")], body, now),
            body.to_vec(),
            400,
            "channel",
        ),
        (
            "dot-dot channel",
            support::legacy_trigger_uri("..", &[("name", "ev")], body, now),
            body.to_vec(),
            400,
            "channel",
        ),
        (
            "empty app",
            "/apps//channels/room/events".into(),
            body.to_vec(),
            400,
            "app id",
        ),
        (
            "data too large",
            support::legacy_trigger_uri("room", &[("name", "ev")], &big, now),
            big.clone(),
            413,
            "100 bytes",
        ),
    ];
    for (what, target, body, status, needle) in cases {
        let a = post(&proxy, &target, body).await;
        assert_eq!(a.status.as_u16(), status, "{what}: {}", a.text());
        assert!(
            a.text().contains(needle),
            "{what}: {:?} lacks {needle:?}",
            a.text()
        );
        assert_one_line(&a);
    }
    let stale_stats = support::legacy_stats_uri("room", now - 700);
    let a = support::send(
        Method::GET,
        &format!("{}{stale_stats}", proxy.url()),
        &[],
        "",
    )
    .await;
    assert_eq!(a.status.as_u16(), 401);
    assert!(
        fake.recorded().is_empty(),
        "nothing that failed is forwarded"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn body_over_the_proxy_limit_is_413() {
    let fake = support::fake().await;
    let proxy = TestProxy::start(
        &support::config_toml(&fake.url(), "", "")
            .replace("[admin]", "max_body_bytes = 1000\n[admin]"),
        std::sync::Arc::new(pusher_cutover::SystemClock),
    )
    .await;
    let body = vec![b'x'; 1001];
    let target = support::legacy_trigger_uri("room", &[("name", "ev")], &body, support::now());
    let a = post(&proxy, &target, body).await;
    assert_eq!(a.status.as_u16(), 413, "{}", a.text());
    assert_one_line(&a);
    assert!(fake.recorded().is_empty());
    proxy.stop().await;
}

#[tokio::test]
async fn upstream_refusing_the_proxy_signature_is_500() {
    // The fake knows a different secret than the proxy is configured with.
    let fake = support::fake::FakeUpstream::start(
        &[(support::APP_ID, support::KEY, "rotated")],
        support::now,
    )
    .await;
    let proxy = TestProxy::for_upstream(&fake.url(), "", "").await;
    let target = support::legacy_trigger_uri("room", &[("name", "ev")], b"x", support::now());
    let a = post(&proxy, &target, "x").await;
    assert_eq!(a.status.as_u16(), 500, "{}", a.text());
    assert!(
        a.text().contains("pusher-cutover's signature"),
        "{}",
        a.text()
    );
    assert_one_line(&a);
    let stats = support::legacy_stats_uri("presence-x", support::now());
    let a = support::send(Method::GET, &format!("{}{stats}", proxy.url()), &[], "").await;
    assert_eq!(a.status.as_u16(), 500, "{}", a.text());
    proxy.stop().await;
}

#[tokio::test]
async fn upstream_server_errors_and_bad_bodies_are_502() {
    let fake = support::fake().await;
    let proxy = TestProxy::for_upstream(&fake.url(), "", "").await;
    let target = support::legacy_trigger_uri("room", &[("name", "ev")], b"x", support::now());
    fake.set(|b| b.fixed = Some((503, "text/plain", "overloaded".into())));
    let a = post(&proxy, &target, "x").await;
    assert_eq!(a.status.as_u16(), 502, "{}", a.text());
    assert!(a.text().contains("503"), "{}", a.text());
    assert_one_line(&a);

    fake.set(|b| b.fixed = Some((200, "application/json", "not json".into())));
    let stats = support::legacy_stats_uri("room", support::now());
    let a = support::send(Method::GET, &format!("{}{stats}", proxy.url()), &[], "").await;
    assert_eq!(a.status.as_u16(), 502, "{}", a.text());
    assert_one_line(&a);
    proxy.stop().await;
}

#[tokio::test]
async fn upstream_down_is_502() {
    // A port that was just free: nothing listens there.
    let addr = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr");
    let proxy = TestProxy::for_upstream(&format!("http://{addr}"), "", "").await;
    let target = support::legacy_trigger_uri("room", &[("name", "ev")], b"x", support::now());
    let a = post(&proxy, &target, "x").await;
    assert_eq!(a.status.as_u16(), 502, "{}", a.text());
    assert!(a.text().contains("unreachable"), "{}", a.text());
    assert_one_line(&a);
    let a = support::send(
        Method::GET,
        &format!("{}/apps/1/channels", proxy.url()),
        &[],
        "",
    )
    .await;
    assert_eq!(a.status.as_u16(), 502, "passthrough: {}", a.text());
    proxy.stop().await;
}

/// Each kind of call, to an upstream slower than `upstream.timeout_ms`, is
/// answered 504 at the timeout: not before it, and long before the
/// upstream would have answered.
#[tokio::test]
async fn upstream_slower_than_the_timeout_is_504() {
    const TIMEOUT: Duration = Duration::from_millis(300);
    const UPSTREAM: Duration = Duration::from_secs(10);
    let fake = support::fake().await;
    fake.set(|b| b.delay = UPSTREAM);
    let proxy = TestProxy::for_upstream(&fake.url(), "timeout_ms = 300", "").await;
    let started = std::time::Instant::now();
    let call = |method: Method, target: String, body: &'static str| {
        let url = format!("{}{target}", proxy.url());
        async move {
            let sent = std::time::Instant::now();
            let a = support::send(method.clone(), &url, &[], body).await;
            let took = sent.elapsed();
            assert!(
                took >= TIMEOUT,
                "{method} {target}: answered {took:?} after sending, before the timeout"
            );
            a
        }
    };
    let target = support::legacy_trigger_uri("room", &[("name", "ev")], b"x", support::now());
    let a = call(Method::POST, target, "x").await;
    assert_eq!(a.status.as_u16(), 504, "{}", a.text());
    assert_one_line(&a);
    let stats = support::legacy_stats_uri("room", support::now());
    let b = call(Method::GET, stats, "").await;
    assert_eq!(b.status.as_u16(), 504);
    let c = call(Method::GET, "/apps/1/channels".into(), "").await;
    assert_eq!(c.status.as_u16(), 504, "passthrough");
    // Three calls in a row, each cut at 300 ms: all three answered before
    // the upstream would have answered the first.
    assert!(
        started.elapsed() < UPSTREAM - Duration::from_secs(1),
        "answered before the upstream"
    );
    proxy.stop().await;
}

/// `upstream.max_connections` caps the exchanges in flight: a legacy call
/// beyond it waits for a slot and is built and signed when it gets one;
/// the call's deadline covers the wait. (Coalescing is off: a queued
/// trigger's batch has a time of its own.)
#[tokio::test]
async fn calls_beyond_the_upstream_cap_wait_for_a_slot_until_their_deadline() {
    /// `upstream.timeout_ms`.
    const DEADLINE: Duration = Duration::from_secs(3);
    let fake = support::fake().await;
    fake.set(|b| b.delay = Duration::from_millis(400));
    let proxy = Arc::new(
        TestProxy::for_upstream(
            &fake.url(),
            "max_connections = 1\ntimeout_ms = 3000\nbatch_max = 1",
            "",
        )
        .await,
    );
    // A call's answer, and when it came.
    let call = |name: &'static str| {
        let proxy = proxy.clone();
        async move {
            let target =
                support::legacy_trigger_uri("room", &[("name", name)], b"{}", support::now());
            let a = post(&proxy, &target, "{}").await;
            (a, std::time::Instant::now())
        }
    };
    // Two calls at once: the second waits for the first's slot, then both
    // reach the upstream, one after the other, correctly signed.
    let started = std::time::Instant::now();
    let ((a, _), (b, _)) = tokio::join!(call("first"), call("second"));
    assert_eq!(a.status.as_u16(), 202, "{}", a.text());
    assert_eq!(b.status.as_u16(), 202, "{}", b.text());
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "the calls were not serialised: {:?}",
        started.elapsed()
    );
    let recorded = fake.recorded();
    assert_eq!(recorded.len(), 2);
    assert!(recorded.iter().all(|r| r.signature == Ok(())));

    // Three at once. The upstream holds the first two it gets 1 s each, the
    // third 2 s: the third gets its slot at 2 s at the earliest, before its
    // deadline at 3 s, and the upstream would answer it at 4 s at the
    // earliest. A deadline counted from the slot (5 s) would let that answer
    // through as 202; counted from the call's arrival it is 504, at the
    // deadline and before the upstream's answer. Each margin is 1 s.
    fake.set(|b| {
        b.next_delays = [1000, 1000, 2000]
            .map(Duration::from_millis)
            .into_iter()
            .collect();
    });
    let started = std::time::Instant::now();
    let (a, b, c) = tokio::join!(call("one"), call("two"), call("three"));
    let mut answers = [a, b, c];
    answers.sort_by_key(|(a, _)| a.status);
    let statuses = answers.each_ref().map(|(a, _)| a.status.as_u16());
    assert_eq!(statuses, [202, 202, 504], "{}", answers[2].0.text());
    let recorded = fake.recorded();
    assert_eq!(recorded.len(), 5, "the third call reached the upstream");
    assert!(recorded.iter().all(|r| r.signature == Ok(())));
    let answered = answers[2].1;
    assert!(
        answered - started >= DEADLINE,
        "answered 504 {:?} after the calls were sent, before the deadline",
        answered - started
    );
    let upstream_answer = recorded[4].received + Duration::from_secs(2);
    assert!(
        answered < upstream_answer,
        "answered 504 {:?} after the upstream answered",
        answered - upstream_answer
    );
    support::stop_shared(proxy).await;
}

/// Wire-level authentication edges (spec A.5, A.6).
#[tokio::test]
async fn authentication_edges() {
    let fake = support::fake().await;
    let proxy = TestProxy::for_upstream(&fake.url(), "", "").await;
    let now = support::now();
    let path = "/apps/4242/channels/room/events";
    let sign = |params: &[(&str, &str)], body: Option<&[u8]>, ts: u64| {
        support::signed_uri(
            support::KEY,
            support::SECRET,
            "POST",
            path,
            ts,
            body,
            params,
        )
    };
    let long_version = "A".repeat(20_000);
    let upper = {
        let uri = sign(&[("name", "ev")], Some(b"x"), now);
        let (head, sig) = uri.rsplit_once("auth_signature=").expect("signed");
        format!("{head}auth_signature={}", sig.to_uppercase())
    };
    let cases: Vec<(&str, String, &str, u16)> = vec![
        (
            "auth_version 2.0",
            sign(&[("name", "ev")], Some(b"x"), now)
                .replace("auth_version=1%2E0", "auth_version=2.0"),
            "x",
            401,
        ),
        (
            "huge auth_version",
            sign(&[("name", "ev")], Some(b"x"), now).replace(
                "auth_version=1%2E0",
                &format!("auth_version={long_version}"),
            ),
            "x",
            401,
        ),
        ("upper-case hex", upper, "x", 401),
        (
            "body without body_md5",
            sign(&[("name", "ev")], None, now),
            "x",
            401,
        ),
        (
            "Name and name",
            format!("{}&Name=y", sign(&[("name", "ev")], Some(b"x"), now)),
            "x",
            400,
        ),
        (
            "exactly 600 s old",
            sign(&[("name", "ev")], Some(b"x"), now - 600),
            "x",
            401,
        ),
    ];
    assert!(cases[0].1.contains("auth_version=2.0") && cases[1].1.contains(&long_version));
    for (what, target, body, status) in cases {
        let a = post(&proxy, &target, body.to_owned()).await;
        assert_eq!(a.status.as_u16(), status, "{what}: {}", a.text());
        assert!(
            a.body.len() < 300,
            "{what}: the answer echoes caller input unbounded ({} bytes)",
            a.body.len()
        );
        assert_one_line(&a);
    }
    assert!(fake.recorded().is_empty());
    // 599 s old is inside the window (a second of slack for the test itself).
    let a = post(&proxy, &sign(&[("name", "ev")], Some(b"x"), now - 598), "x").await;
    assert_eq!(a.status.as_u16(), 202, "{}", a.text());
    proxy.stop().await;
}

/// A legacy body that drips in slower than `body_timeout_ms` is cut with
/// 408, and nothing is forwarded.
#[tokio::test]
async fn slow_legacy_body_is_408() {
    use tokio::io::AsyncWriteExt;
    let fake = support::fake().await;
    let proxy = TestProxy::start(
        &support::config_toml(&fake.url(), "", "")
            .replace("[admin]", "body_timeout_ms = 300\n[admin]"),
        std::sync::Arc::new(pusher_cutover::SystemClock),
    )
    .await;
    let body = b"{\"a\":1}";
    let uri = support::legacy_trigger_uri("room", &[("name", "ev")], body, support::now());
    let mut stream = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    let head = format!(
        "POST {uri} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{{",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("write head");
    let a = tokio::time::timeout(Duration::from_secs(5), support::read_response(&mut stream))
        .await
        .expect("answered before the body completes");
    assert_eq!(a.status.as_u16(), 408, "{}", a.text());
    assert!(fake.recorded().is_empty());
    proxy.stop().await;
}

/// CONNECT, TRACE and non-path targets are not forwarded.
#[tokio::test]
async fn connect_trace_and_non_path_targets_are_refused() {
    let fake = support::fake().await;
    let proxy = TestProxy::for_upstream(&fake.url(), "", "").await;
    for (raw, status) in [
        (
            "CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n",
            405,
        ),
        ("TRACE / HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        ("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ] {
        let a = support::raw_exchange(proxy.addr, raw.as_bytes()).await;
        assert_eq!(a.status.as_u16(), status, "{raw:?}: {}", a.text());
        // A 405 lists what is allowed (RFC 9110 §15.5.6).
        let allow = a.headers.get("allow").and_then(|v| v.to_str().ok());
        if status == 405 {
            assert_eq!(
                allow,
                Some("GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS"),
                "{raw:?}"
            );
        } else {
            assert_eq!(allow, None, "{raw:?}");
        }
    }
    assert!(fake.recorded().is_empty());
    proxy.stop().await;

    // Signed by an app whose calls the proxy re-signs (a rotation), a
    // TRACE is refused all the same, not signed anew and sent.
    let proxy =
        TestProxy::for_upstream(&fake.url(), "", "previous_secrets = [\"old-secret\"]").await;
    let path = "/apps/4242/channels";
    let now = support::now();
    let uri = support::signed_uri(support::KEY, support::SECRET, "TRACE", path, now, None, &[]);
    let raw = format!("TRACE {uri} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let a = support::raw_exchange(proxy.addr, raw.as_bytes()).await;
    assert_eq!(a.status.as_u16(), 405, "{}", a.text());
    assert!(fake.recorded().is_empty(), "nothing forwarded");
    proxy.stop().await;
}

/// `GET`, `HEAD` or `POST` spelt in another case is an extension method to
/// HTTP; on a deprecated route's path it would pass `reject` by as a
/// passthrough call, so it is refused (400), signed or not, and other
/// paths and methods pass as before.
#[tokio::test]
async fn a_deprecated_routes_method_in_another_case_is_refused() {
    let fake = support::fake().await;
    let proxy = TestProxy::for_upstream(&fake.url(), "", "mode = \"reject\"").await;
    let now = support::now();
    let trigger = support::legacy_trigger_uri("room", &[("name", "ev")], b"{}", now);
    let stats = support::legacy_stats_uri("room", now);
    for (method, uri) in [
        ("post", &trigger),
        ("Post", &trigger),
        ("get", &stats),
        ("head", &stats),
    ] {
        let raw = format!(
            "{method} {uri} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        );
        let a = support::raw_exchange(proxy.addr, raw.as_bytes()).await;
        assert_eq!(a.status.as_u16(), 400, "{method}: {}", a.text());
        assert!(
            a.text().contains("case-sensitive"),
            "{method}: {}",
            a.text()
        );
    }
    assert!(fake.recorded().is_empty(), "nothing forwarded");
    // The same methods elsewhere, and another extension method on the
    // route, go through.
    for (method, path) in [
        ("post", "/apps/4242/events"),
        ("PURGE", "/apps/4242/channels/room/events"),
    ] {
        let raw = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let a = support::raw_exchange(proxy.addr, raw.as_bytes()).await;
        assert!(
            a.headers.contains_key("x-fake-upstream"),
            "{method} {path}: {}",
            a.text()
        );
    }
    proxy.stop().await;
}

/// A client that leaves while its trigger waits on the upstream: the
/// trigger still completes upstream, and the request is recorded with the
/// answer it was given (the proxy does not read ahead while a request is in
/// flight, so it learns of the close only when it writes that answer).
#[tokio::test]
async fn client_leaving_mid_request_is_recorded() {
    use tokio::io::AsyncWriteExt;
    support::capture_logs();
    let fake = support::fake().await;
    fake.set(|b| b.delay = Duration::from_millis(800));
    let proxy = TestProxy::for_upstream(&fake.url(), "", "").await;
    let body = b"{}";
    let uri = support::legacy_trigger_uri("room", &[("name", "ev")], body, support::now());
    let agent = "leaves-early/1.0";
    let raw = format!(
        "POST {uri} HTTP/1.1\r\nHost: x\r\nUser-Agent: {agent}\r\nContent-Length: 2\r\n\r\n{{}}"
    );
    let mut stream = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    stream.write_all(raw.as_bytes()).await.expect("write");
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(stream);
    // Bounded wait for the upstream to have answered the spawned exchange.
    for _ in 0..30 {
        if support::logs().lines().any(|l| l.contains(agent)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(fake.recorded().len(), 1, "the trigger reached the upstream");
    let logs = support::logs();
    let line = logs
        .lines()
        .find(|l| l.contains(agent))
        .expect("the request was logged");
    assert!(
        line.contains("status=202") && line.contains("upstream_status=200"),
        "{line}"
    );
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains(
            r#"pusher_cutover_deprecated_calls_total{app_id="4242",route="legacy_trigger",library="unknown",path="translated"} 1"#
        ),
        "a verified call counts even if its client left:\n{metrics}"
    );
    proxy.stop().await;
}

/// The four slot series of a metrics exposition: slots, held, waiting,
/// waits that ran out.
fn slots(m: &str) -> [Option<f64>; 4] {
    [
        "pusher_cutover_upstream_slots",
        "pusher_cutover_upstream_slots_in_use",
        "pusher_cutover_upstream_slot_waiters",
        "pusher_cutover_upstream_slot_timeouts_total",
    ]
    .map(|series| support::metric(m, series))
}

/// Polls (bounded) until the proxy's slot series read `want`.
async fn wait_slots(proxy: &TestProxy, want: [f64; 4]) {
    let mut seen = [None; 4];
    for _ in 0..500 {
        seen = slots(&proxy.metrics().await);
        if seen == want.map(Some) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("slot metrics {seen:?}, not {want:?}");
}

/// A passthrough trigger to `channel`, freshly signed.
async fn current_trigger(proxy: &TestProxy, channel: &str) -> support::Answer {
    let body = format!(r#"{{"name":"ev","channels":["{channel}"],"data":"{{}}"}}"#);
    post(
        proxy,
        &support::current_trigger_uri(body.as_bytes(), support::now()),
        body,
    )
    .await
}

/// The slot metrics tell an operator whether `upstream.max_connections`
/// holds calls back: the slots, those held, the exchanges waiting for one,
/// and the waits that ran out of time (answered 504, never sent).
#[tokio::test]
async fn slot_metrics_show_exchanges_held_waiting_and_timed_out() {
    let fake = support::fake().await;
    fake.set(|b| b.hold = true);
    let proxy = Arc::new(
        TestProxy::for_upstream(&fake.url(), "max_connections = 2\ntimeout_ms = 5000", "").await,
    );
    assert_eq!(
        slots(&proxy.metrics().await),
        [Some(2.0), Some(0.0), Some(0.0), Some(0.0)]
    );
    // Three exchanges for two slots: two held by the upstream, one waiting.
    let calls: Vec<_> = (0..3)
        .map(|i| {
            let proxy = proxy.clone();
            tokio::spawn(async move { current_trigger(&proxy, &format!("room-{i}")).await })
        })
        .collect();
    fake.wait_for_requests(2).await;
    wait_slots(&proxy, [2.0, 2.0, 1.0, 0.0]).await;
    fake.release_all();
    for call in calls {
        let a = call.await.expect("call task");
        assert_eq!(a.status.as_u16(), 200, "{}", a.text());
    }
    assert_eq!(fake.recorded().len(), 3);
    wait_slots(&proxy, [2.0, 0.0, 0.0, 0.0]).await;
    support::stop_shared(proxy).await;

    // One slot, held until its exchange times out: the call waiting for
    // it runs out of time first (a tenth of the timeout before its
    // deadline), is answered 504 and never sent.
    let fake = support::fake().await;
    fake.set(|b| b.hold = true);
    let proxy = Arc::new(
        TestProxy::for_upstream(&fake.url(), "max_connections = 1\ntimeout_ms = 1000", "").await,
    );
    let first = tokio::spawn({
        let proxy = proxy.clone();
        async move { current_trigger(&proxy, "held").await }
    });
    fake.wait_for_requests(1).await;
    let waiting = current_trigger(&proxy, "waiting").await;
    assert_eq!(waiting.status.as_u16(), 504, "{}", waiting.text());
    let first = first.await.expect("call task");
    assert_eq!(first.status.as_u16(), 504, "{}", first.text());
    assert_eq!(fake.recorded().len(), 1, "the waiting call was never sent");
    wait_slots(&proxy, [1.0, 0.0, 0.0, 1.0]).await;
    support::stop_shared(proxy).await;
}
