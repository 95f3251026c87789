//! The cutover stages: each mode and its metric, sticky rollout,
//! brownouts, secret rotation, credential mapping, the bypass switch, and
//! hot reload under load.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use hyper::Method;

use crate::support::{self, TestProxy, fake::FakeUpstream, oracle};

async fn trigger(proxy: &TestProxy, channel: &str, ts: u64) -> support::Answer {
    let uri = support::legacy_trigger_uri(channel, &[("name", "ev")], b"{\"a\":1}", ts);
    support::send(
        Method::POST,
        &format!("{}{uri}", proxy.url()),
        &[],
        "{\"a\":1}",
    )
    .await
}

/// A proxy to `upstream_url` whose app is in shadow mode with counting
/// on, `upstream` in its `[upstream]`.
async fn shadow_proxy(upstream_url: &str, upstream: &str) -> TestProxy {
    TestProxy::for_upstream(
        upstream_url,
        upstream,
        "mode = \"shadow\"\nsubscription_count = \"on\"",
    )
    .await
}

async fn stats(proxy: &TestProxy, channel: &str, ts: u64) -> support::Answer {
    let uri = support::legacy_stats_uri(channel, ts);
    support::send(Method::GET, &format!("{}{uri}", proxy.url()), &[], "").await
}

#[tokio::test]
async fn observe_forwards_the_legacy_call_unchanged() {
    let fake = support::fake().await;
    let proxy = TestProxy::for_upstream(&fake.url(), "", "mode = \"observe\"").await;
    let now = support::now();
    let uri = support::legacy_trigger_uri("room", &[("name", "ev")], b"{\"a\":1}", now);
    let a = support::send(
        Method::POST,
        &format!("{}{uri}", proxy.url()),
        &[],
        "{\"a\":1}",
    )
    .await;
    assert_eq!(a.status.as_u16(), 202, "{}", a.text());
    assert_eq!(
        a.text(),
        "202 ACCEPTED\n",
        "the upstream's own legacy answer"
    );
    assert!(a.headers.contains_key("deprecation"));
    let up = fake.recorded().pop().expect("forwarded");
    assert_eq!(format!("{}?{}", up.path, up.query), uri, "byte for byte");
    assert_eq!(&up.body[..], b"{\"a\":1}");
    assert_eq!(up.signature, Ok(()), "the caller's own signature");
    // An empty one (the Ruby gem's `""`) goes with `Content-Length: 0`,
    // which hyper would not write and some front ends require.
    let uri = support::legacy_trigger_uri("room", &[("name", "ev")], b"", now);
    let a = support::send(Method::POST, &format!("{}{uri}", proxy.url()), &[], "").await;
    assert_eq!(a.status.as_u16(), 202, "{}", a.text());
    let up = fake.recorded().pop().expect("forwarded");
    assert_eq!(
        up.headers.get("content-length").map(|v| v.as_bytes()),
        Some(&b"0"[..])
    );

    let s = stats(&proxy, "presence-room", now).await;
    assert_eq!(
        s.json(),
        serde_json::json!({"occupied": true, "user_count": 2, "connection_count": 3})
    );
    // HEAD: the upstream's answer, with the length its GET would have.
    let path = "/apps/4242/channels/presence-room/stats";
    let uri = support::signed_uri(support::KEY, support::SECRET, "HEAD", path, now, None, &[]);
    let h = support::send(Method::HEAD, &format!("{}{uri}", proxy.url()), &[], "").await;
    assert_eq!(h.status.as_u16(), 200, "{}", h.text());
    let length = h
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok());
    assert_eq!(length, Some(s.text().len().to_string().as_str()));
    assert_eq!(fake.recorded().pop().expect("forwarded").method, "HEAD");
    assert!(
        fake.recorded()
            .pop()
            .expect("forwarded")
            .path
            .ends_with("/stats")
    );

    let m = proxy.metrics().await;
    for (series, v) in [
        (
            r#"pusher_cutover_deprecated_calls_total{app_id="4242",route="legacy_trigger",library="unknown",path="observed"}"#,
            2.0,
        ),
        (
            r#"pusher_cutover_requests_total{app_id="4242",route="legacy_stats",outcome="ok"}"#,
            2.0,
        ),
    ] {
        assert_eq!(support::metric(&m, series), Some(v), "{series}");
    }
    proxy.stop().await;
}

/// Shadow comparisons take upstream slots that callers could have had, so
/// at most a quarter of `upstream.max_connections` are in flight; the
/// others are skipped and counted (`busy`). A translated call failing on
/// the upstream's side is skipped too (`upstream_error`), not counted as
/// a mismatch: it says nothing of the translation.
#[tokio::test]
async fn shadow_comparisons_are_capped_and_upstream_failures_are_no_mismatch() {
    let fake = support::fake().await;
    let proxy = shadow_proxy(&fake.url(), "max_connections = 8").await;
    let now = support::now();
    let metric = |text: &str, series: &str| support::metric(text, series).unwrap_or(-1.0);
    let skipped = |reason: &str| {
        format!(r#"pusher_cutover_shadow_skipped_total{{app_id="4242",reason="{reason}"}}"#)
    };
    let answer_mismatch = r#"pusher_cutover_shadow_mismatches_total{app_id="4242",field="answer"}"#;

    // The current API's answer fails on the upstream's side.
    fake.set(|b| {
        b.channel_info_fixed = Some((503, "application/json", r#"{"error":"busy"}"#.into()))
    });
    let a = stats(&proxy, "room", now).await;
    assert_eq!(a.status.as_u16(), 200, "answered from the legacy call");
    let mut text = String::new();
    for _ in 0..50 {
        text = proxy.metrics().await;
        if metric(&text, &skipped("upstream_error")) == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric(&text, &skipped("upstream_error")), 1.0, "{text}");
    assert_eq!(metric(&text, answer_mismatch), 0.0);

    // A 4xx where the legacy call had its 200: the translation differs.
    fake.set(|b| {
        b.channel_info_fixed = Some((404, "application/json", r#"{"error":"no"}"#.into()))
    });
    stats(&proxy, "room", now).await;
    for _ in 0..50 {
        text = proxy.metrics().await;
        if metric(&text, answer_mismatch) == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric(&text, answer_mismatch), 1.0, "{text}");
    // A 200 whose body does not map is the translation's too.
    fake.set(|b| b.channel_info_fixed = Some((200, "application/json", "[1]".into())));
    stats(&proxy, "room", now).await;
    for _ in 0..50 {
        text = proxy.metrics().await;
        if metric(&text, answer_mismatch) == 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric(&text, answer_mismatch), 2.0, "{text}");
    assert_eq!(metric(&text, &skipped("upstream_error")), 1.0, "{text}");
    // A legacy answer that is no stats JSON: nothing to compare, counted.
    assert_eq!(metric(&text, &skipped("not_comparable")), 0.0, "{text}");
    fake.set(|b| b.fixed = Some((503, "text/plain", "busy".into())));
    stats(&proxy, "room", now).await;
    fake.set(|b| b.fixed = None);
    let text = proxy.metrics().await;
    assert_eq!(metric(&text, &skipped("not_comparable")), 1.0, "{text}");
    assert_eq!(metric(&text, answer_mismatch), 2.0, "{text}");
    // No legacy answer at all (the upstream gone): counted too.
    let gone = shadow_proxy("http://127.0.0.1:9", "").await;
    let a = stats(&gone, "room", now).await;
    assert_eq!(a.status.as_u16(), 502, "{}", a.text());
    let text = gone.metrics().await;
    assert_eq!(metric(&text, &skipped("not_comparable")), 1.0, "{text}");
    gone.stop().await;

    // Every answer held: eight legacy calls, one per upstream slot, all
    // on the wire before any is let go. Then they go one at a time, each
    // once the one before is answered; the fake lets held requests go in
    // the order they came, so every legacy request goes before any
    // comparison's. Two comparisons (8 / 4) are in flight, held; the other
    // six are skipped as busy.
    let before = fake.recorded().len();
    fake.set(|b| {
        b.channel_info_fixed = None;
        b.hold = true;
    });
    let mut calls = Vec::new();
    for i in 0..8 {
        let url = format!(
            "{}{}",
            proxy.url(),
            support::legacy_stats_uri(&format!("c{i}"), now)
        );
        calls.push(tokio::spawn(async move {
            support::send(Method::GET, &url, &[], "").await
        }));
    }
    assert_eq!(fake.wait_for_requests(before + 8).await.len(), before + 8);
    for k in 1..=8 {
        fake.release(1);
        let mut answered = 0;
        for _ in 0..500 {
            answered = calls.iter().filter(|c| c.is_finished()).count();
            if answered >= k {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(answered, k, "caller {k} answered");
    }
    for c in calls {
        assert_eq!(c.await.expect("call").status.as_u16(), 200);
    }
    let text = proxy.metrics().await;
    assert_eq!(metric(&text, &skipped("busy")), 6.0, "{text}");
    fake.release_all();
    proxy.stop().await;
}

/// A shadow comparison asks the upstream for itself: it does not follow
/// another comparison's (or a caller's) identical query in flight, which
/// was asked before its own legacy call was answered, and it is no
/// shared answer in the metrics.
#[tokio::test]
async fn shadow_comparisons_do_not_share_queries_in_flight() {
    let fake = support::fake().await;
    let proxy = shadow_proxy(&fake.url(), "").await;
    let now = support::now();
    fake.set(|b| b.hold = true);
    let spawn = || {
        let url = format!("{}{}", proxy.url(), support::legacy_stats_uri("room", now));
        tokio::spawn(async move { support::send(Method::GET, &url, &[], "").await })
    };
    let (a, b) = (spawn(), spawn());
    // Both legacy calls held; A's goes first, and A's comparison asks
    // (held); then B's, whose comparison must ask too.
    assert_eq!(fake.wait_for_requests(2).await.len(), 2);
    fake.release(1);
    assert_eq!(
        fake.wait_for_requests(3).await.len(),
        3,
        "A's comparison asks"
    );
    fake.release(1);
    assert_eq!(
        fake.wait_for_requests(4).await.len(),
        4,
        "B's comparison asks for itself"
    );
    fake.release_all();
    for call in [a, b] {
        assert_eq!(call.await.expect("call").status.as_u16(), 200);
    }
    let translated = fake
        .recorded()
        .iter()
        .filter(|r| !r.path.ends_with("/stats"))
        .count();
    assert_eq!(translated, 2, "one translated query per comparison");
    let text = proxy.metrics().await;
    assert_eq!(
        support::metric(&text, "pusher_cutover_shared_stats_answers_total"),
        Some(0.0),
        "{text}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn shadow_answers_from_the_legacy_call_and_counts_mismatches() {
    let fake = support::fake().await;
    let proxy = shadow_proxy(&fake.url(), "").await;
    let now = support::now();
    let series =
        r#"pusher_cutover_shadow_mismatches_total{app_id="4242",field="connection_count"}"#;

    // Agreeing answers: legacy 3 connections, current API 3 subscriptions.
    let a = stats(&proxy, "room", now).await;
    assert_eq!(
        a.json(),
        serde_json::json!({"occupied": true, "connection_count": 3})
    );
    // Disagreeing: the legacy route now says 5.
    fake.set(|b| b.legacy_connection_count = Some(5));
    let b = stats(&proxy, "room", now).await;
    assert_eq!(
        b.json()["connection_count"],
        5,
        "answered from the legacy call"
    );
    assert_eq!(
        proxy.metric_reaching(series, 1.0).await,
        Some(1.0),
        "one mismatch, on connection_count"
    );
    let paths: Vec<String> = fake.recorded().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths.iter().filter(|p| p.ends_with("/stats")).count(), 2);
    assert_eq!(
        paths
            .iter()
            .filter(|p| *p == "/apps/4242/channels/room")
            .count(),
        2,
        "{paths:?}"
    );
    let m = proxy.metrics().await;
    assert_eq!(
        support::metric(
            &m,
            r#"pusher_cutover_shadow_mismatches_total{app_id="4242",field="occupied"}"#
        ),
        Some(0.0),
        "there from the start, never counted"
    );

    // A legacy answer without connection_count (the beta most apps never
    // had) against a translation that counts: the client loses nothing,
    // so no mismatch.
    fake.set(|b| b.legacy_connection_count = None);
    let c = stats(&proxy, "room", now).await;
    assert_eq!(c.json(), serde_json::json!({"occupied": true}));
    let translated = || {
        fake.recorded()
            .iter()
            .filter(|r| r.path == "/apps/4242/channels/room")
            .count()
    };
    for _ in 0..50 {
        if translated() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(translated(), 3, "the comparison's call was sent");
    // Its answer is compared as soon as it arrives; give it time to count.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        support::metric(&proxy.metrics().await, series),
        Some(1.0),
        "still the one mismatch"
    );

    // Triggers are never sent twice: observed only.
    let before = fake.recorded().len();
    assert_eq!(trigger(&proxy, "room", now).await.status.as_u16(), 202);
    let after = fake.recorded();
    assert_eq!(after.len(), before + 1);
    assert_eq!(after[before].path, "/apps/4242/channels/room/events");
    proxy.stop().await;
}

#[tokio::test]
async fn reject_answers_410_naming_the_replacement() {
    let fake = support::fake().await;
    let proxy = TestProxy::for_upstream(&fake.url(), "", "mode = \"reject\"").await;
    let now = support::now();
    let a = trigger(&proxy, "room", now).await;
    assert_eq!(a.status.as_u16(), 410);
    let text = a.text();
    assert!(
        text.ends_with('\n') && text.lines().count() == 1,
        "{text:?}"
    );
    assert!(text.contains("POST /apps/4242/events"), "{text}");
    let s = stats(&proxy, "presence-room", now).await;
    assert_eq!(s.status.as_u16(), 410);
    assert!(
        s.text()
            .contains("GET /apps/4242/channels/presence-room?info="),
        "{}",
        s.text()
    );
    // HEAD, which an upstream may serve as GET, is the same call.
    let path = "/apps/4242/channels/room/stats";
    let uri = support::signed_uri(support::KEY, support::SECRET, "HEAD", path, now, None, &[]);
    let h = support::send(Method::HEAD, &format!("{}{uri}", proxy.url()), &[], "").await;
    assert_eq!(h.status.as_u16(), 410);
    assert!(fake.recorded().is_empty(), "nothing forwarded");
    // A forged call is still a 401, not a 410.
    assert_eq!(trigger(&proxy, "room", 0).await.status.as_u16(), 401);
    let m = proxy.metrics().await;
    assert_eq!(
        support::metric(
            &m,
            r#"pusher_cutover_requests_total{app_id="4242",route="legacy_trigger",outcome="rejected"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        support::metric(
            &m,
            r#"pusher_cutover_deprecated_calls_total{app_id="4242",route="legacy_trigger",library="unknown",path="rejected"}"#
        ),
        Some(1.0),
        "rejected callers still show in the ledger"
    );
    proxy.stop().await;
}

/// About N % of 1,000 channels are translated, exactly those the hash
/// picks, and a channel always takes the same path.
#[tokio::test]
async fn rollout_is_sticky_per_channel() {
    let fake = support::fake().await;
    let proxy = Arc::new(TestProxy::for_upstream(&fake.url(), "", "rollout_percent = 30").await);
    let now = support::now();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let proxy = proxy.clone();
        tasks.push(tokio::spawn(async move {
            for i in (t..1000).step_by(8) {
                let a = trigger(&proxy, &format!("ch-{i}"), now).await;
                assert_eq!(a.status.as_u16(), 202, "{}", a.text());
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let translated = |recorded: &[support::fake::Recorded]| -> std::collections::HashSet<String> {
        // Concurrent triggers may leave coalesced, as batch_events.
        recorded
            .iter()
            .flat_map(|r| match r.path.as_str() {
                "/apps/4242/events" => vec![r.json()["channels"][0].clone()],
                "/apps/4242/batch_events" => r.json()["batch"]
                    .as_array()
                    .expect("batch")
                    .iter()
                    .map(|e| e["channel"].clone())
                    .collect(),
                _ => Vec::new(),
            })
            .map(|c| c.as_str().expect("channel").to_owned())
            .collect()
    };
    let first = translated(&fake.recorded());
    assert!(
        (250..=350).contains(&first.len()),
        "{} of 1000 translated",
        first.len()
    );
    let expected: std::collections::HashSet<String> = (0..1000)
        .map(|i| format!("ch-{i}"))
        .filter(|c| pusher_cutover::pipeline::cutover::in_rollout("4242", c, 30))
        .collect();
    assert_eq!(first, expected);
    // Again for 100 channels: the same path each time.
    let before = fake.recorded().len();
    for i in 0..100 {
        assert_eq!(
            trigger(&proxy, &format!("ch-{i}"), now)
                .await
                .status
                .as_u16(),
            202
        );
    }
    let again = fake.recorded().split_off(before);
    for r in &again {
        let (channel, was_translated) = if r.path == "/apps/4242/events" {
            (
                r.json()["channels"][0]
                    .as_str()
                    .expect("channel")
                    .to_owned(),
                true,
            )
        } else {
            let ch = r.path.split('/').nth(4).expect("legacy path").to_owned();
            (ch, false)
        };
        assert_eq!(
            first.contains(&channel),
            was_translated,
            "{channel} switched paths"
        );
    }
    support::stop_shared(proxy).await;
}

#[tokio::test]
async fn brownout_windows_follow_the_injected_clock() {
    let start: u64 = 1_796_119_200; // 2026-12-01T10:00:00Z
    let clock = support::fixed_clock(start - 1);
    let fake_clock = clock.clone();
    let fake = FakeUpstream::start(
        &[(support::APP_ID, support::KEY, support::SECRET)],
        move || pusher_cutover::Clock::unix_now(&*fake_clock),
    )
    .await;
    let toml = support::config_toml(
        &fake.url(),
        "",
        "brownouts = [{ start = \"2026-12-01T10:00:00Z\", end = \"2026-12-01T11:00:00Z\" }]",
    );
    let proxy = TestProxy::start(&toml, clock.clone()).await;
    for (at, status) in [
        (start - 1, 202),
        (start, 410),
        (start + 3599, 410),
        (start + 3600, 202),
    ] {
        clock.set(at);
        let a = trigger(&proxy, "room", at).await;
        assert_eq!(a.status.as_u16(), status, "at {at}: {}", a.text());
    }
    assert_eq!(fake.recorded().len(), 2);
    proxy.stop().await;
}

#[tokio::test]
async fn rotation_accepts_old_and_new_secrets() {
    let fake = support::fake().await;
    // The fixture secret is the new one; "old-secret" is still accepted.
    let proxy =
        TestProxy::for_upstream(&fake.url(), "", "previous_secrets = [\"old-secret\"]").await;
    let now = support::now();
    let path = "/apps/4242/channels/room/events";
    for (secret, status) in [
        (support::SECRET, 202),
        ("old-secret", 202),
        ("other-secret", 401),
    ] {
        let uri = support::signed_uri(
            support::KEY,
            secret,
            "POST",
            path,
            now,
            Some(b"x"),
            &[("name", "ev")],
        );
        let a = support::send(Method::POST, &format!("{}{uri}", proxy.url()), &[], "x").await;
        assert_eq!(a.status.as_u16(), status, "{secret}: {}", a.text());
    }
    // Whatever the caller signed with, the upstream gets the current secret.
    assert!(fake.recorded().iter().all(|r| r.signature.is_ok()));
    assert_eq!(fake.recorded().len(), 2);
    proxy.stop().await;
}

/// A rotation whose old secret is in a file (`previous_secrets_file`, a
/// mounted Secret): accepted while the file holds it, refused once a
/// reload finds it gone, and the reload says the secrets changed.
#[tokio::test]
async fn rotation_reads_old_secrets_from_a_file_at_each_reload() {
    let fake = support::fake().await;
    let file = support::ConfigFile::new("");
    let previous = file.dir().join("previous");
    std::fs::write(&previous, "old-secret\n").expect("write");
    file.write(&support::config_toml(
        &fake.url(),
        "",
        &format!(
            "previous_secrets_file = {:?}",
            previous.display().to_string()
        ),
    ));
    let proxy = TestProxy::start_file(file.path()).await;
    let trigger = |secret: &'static str| {
        let uri = support::signed_uri(
            support::KEY,
            secret,
            "POST",
            "/apps/4242/channels/room/events",
            support::now(),
            Some(b"x"),
            &[("name", "ev")],
        );
        let url = format!("{}{uri}", proxy.url());
        async move { support::send(Method::POST, &url, &[], "x").await }
    };
    assert_eq!(trigger("old-secret").await.status.as_u16(), 202);
    std::fs::write(&previous, "").expect("write");
    let reload = proxy.reload().await;
    assert_eq!(reload.status.as_u16(), 200, "{}", reload.text());
    assert!(
        reload.text().contains("secrets changed"),
        "{}",
        reload.text()
    );
    assert_eq!(trigger("old-secret").await.status.as_u16(), 401);
    assert_eq!(trigger(support::SECRET).await.status.as_u16(), 202);
    assert_eq!(fake.recorded().len(), 2);
    proxy.stop().await;
}

/// Legacy app 4242 (legacy-app-key) is served by upstream app 5000, which
/// knows only its own credentials.
/// During a rotation the upstream knows only the current secret, while
/// the proxy still accepts the previous ones: a call signed with one is
/// verified and then signed anew with the current secret wherever it is
/// forwarded (a legacy call in its legacy form under `observe` and
/// `shadow`, a current-API call), so its caller is served in every mode.
/// A call signed with no configured secret is refused and never sent.
#[tokio::test]
async fn a_caller_on_a_previous_secret_is_served_in_every_mode() {
    let fake = support::fake().await;
    let body = r#"{"name":"e","channels":["c"],"data":"d"}"#;
    for mode in ["observe", "shadow", "translate"] {
        let proxy = TestProxy::for_upstream(
            &fake.url(),
            "",
            &format!("mode = \"{mode}\"\nprevious_secrets = [\"old-secret\"]"),
        )
        .await;
        let now = support::now();
        let send = |method: &'static str,
                    path: &str,
                    query: &[(&str, &str)],
                    body: &'static str,
                    secret: &str| {
            let uri = support::signed_uri(
                support::KEY,
                secret,
                method,
                path,
                now,
                (method == "POST").then_some(body.as_bytes()),
                query,
            );
            let method = Method::from_bytes(method.as_bytes()).expect("method");
            let url = format!("{}{uri}", proxy.url());
            async move { support::send(method, &url, &[], body).await }
        };
        let calls = [
            (
                "POST",
                "/apps/4242/channels/room/events",
                &[("name", "ev")][..],
                "x",
                202,
            ),
            ("GET", "/apps/4242/channels/room/stats", &[][..], "", 200),
            ("POST", "/apps/4242/events", &[][..], body, 200),
        ];
        for (method, path, query, body, status) in calls {
            for secret in [support::SECRET, "old-secret"] {
                let before = fake.recorded().len();
                let a = send(method, path, query, body, secret).await;
                assert_eq!(
                    a.status.as_u16(),
                    status,
                    "{mode} {method} {path} {secret}: {}",
                    a.text()
                );
                // Shadowed stats are also sent translated, in the background.
                let shadowed = mode == "shadow" && method == "GET";
                let expected = before + if shadowed { 2 } else { 1 };
                for _ in 0..40 {
                    if fake.recorded().len() >= expected {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let sent = fake.recorded();
                assert_eq!(sent.len(), expected, "{mode} {method} {path}: forwarded");
                for up in &sent[before..] {
                    assert_eq!(
                        up.signature,
                        Ok(()),
                        "{mode} {method} {path} {secret}: {}",
                        up.path
                    );
                }
            }
            let before = fake.recorded().len();
            let a = send(method, path, query, body, "no-such-secret").await;
            assert_eq!(
                a.status.as_u16(),
                401,
                "{mode} {method} {path}: {}",
                a.text()
            );
            assert_eq!(
                fake.recorded().len(),
                before,
                "{mode} {method} {path}: a forgery is never sent"
            );
        }
        proxy.stop().await;
    }
}

/// A deprecated route spelt otherwise (a trailing `/`, an escape,
/// `;parameters`, a dot segment, an encoded `/`, another case, in any
/// segment) is no Pusher route: it is
/// refused, whatever the app and its mode, so that an upstream that
/// normalised it cannot serve a legacy call past `reject` and the legacy
/// count, least of all one the proxy signed for a mapped app.
#[tokio::test]
async fn a_deprecated_route_spelt_otherwise_is_refused_and_never_sent() {
    let fake = FakeUpstream::start(
        &[
            ("5000", "new-key", "new-secret"),
            ("4242", support::KEY, support::SECRET),
        ],
        support::now,
    )
    .await;
    let mapped = "mode = \"reject\"\n[apps.upstream]\nid = \"5000\"\nkey = \"new-key\"\nsecret = \"new-secret\"";
    for extra in [mapped, "mode = \"reject\"", ""] {
        let proxy = TestProxy::for_upstream(&fake.url(), "", extra).await;
        let now = support::now();
        let exact = "/apps/4242/channels/room/events";
        let post = |path: &str| {
            let uri = support::signed_uri(
                support::KEY,
                support::SECRET,
                "POST",
                path,
                now,
                Some(b"x"),
                &[("name", "ev")],
            );
            let url = format!("{}{uri}", proxy.url());
            async move { support::send(Method::POST, &url, &[], "x").await }
        };
        let exact_status = if extra.is_empty() { 202 } else { 410 };
        assert_eq!(post(exact).await.status.as_u16(), exact_status, "{extra}");
        let before = fake.recorded().len();
        for path in [
            "/apps/4242/channels/room/events/",
            "/apps/4242/channels/room/%65vents",
            "/apps/4242/channels/room/events;x",
            "/apps/4242/channels/room/x/../events",
            "/apps/4242/channels/room%2Fevents",
            "/apps/4242/./channels/room/events",
            "/apps/4242/x/../channels/room/events",
            "/apps/4242/%63hannels/room/events",
            "/apps/4242/CHANNELS/room/events",
            "/apps/4242/channels;x/room/events",
            "/APPS/4242/channels/room/events",
            "/./apps/4242/channels/room/events",
            "/apps/4242/x/..;/channels/room/events",
        ] {
            let a = post(path).await;
            assert_eq!(a.status.as_u16(), 400, "{extra} {path}: {}", a.text());
            assert!(a.text().contains("no Pusher route"), "{}", a.text());
        }
        assert_eq!(fake.recorded().len(), before, "{extra}: none was sent");
        proxy.stop().await;
    }
}

#[tokio::test]
async fn mapped_app_is_served_with_the_upstream_credentials() {
    let fake = FakeUpstream::start(&[("5000", "new-key", "new-secret")], support::now).await;
    let mapping = "[apps.upstream]\nid = \"5000\"\nkey = \"new-key\"\nsecret = \"new-secret\"";
    let proxy = TestProxy::for_upstream(&fake.url(), "", mapping).await;
    let now = support::now();

    assert_eq!(trigger(&proxy, "room", now).await.status.as_u16(), 202);
    let up = fake.recorded().pop().expect("translated");
    assert_eq!(up.path, "/apps/5000/events");
    assert_eq!(up.signature, Ok(()));
    assert_eq!(
        stats(&proxy, "presence-room", now).await.status.as_u16(),
        200
    );
    assert_eq!(
        fake.recorded().pop().expect("stats").path,
        "/apps/5000/channels/presence-room"
    );

    // Current-API calls signed with the legacy credentials are re-signed.
    let body = br#"{"name":"e","channels":["c"],"data":"d"}"#;
    let uri = support::current_trigger_uri(body, now);
    let a = support::send(
        Method::POST,
        &format!("{}{uri}", proxy.url()),
        &[],
        &body[..],
    )
    .await;
    assert_eq!(a.status.as_u16(), 200, "{}", a.text());
    let up = fake.recorded().pop().expect("passthrough");
    assert_eq!(
        (up.path.as_str(), &up.body[..]),
        ("/apps/5000/events", &body[..])
    );
    assert_eq!(up.signature, Ok(()));
    let path = "/apps/4242/channels";
    let q = oracle::signed_query(
        support::KEY,
        support::SECRET,
        "GET",
        path,
        now,
        None,
        &[("filter_by_prefix", "presence-")],
    );
    let a = support::send(Method::GET, &format!("{}{path}?{q}", proxy.url()), &[], "").await;
    assert_eq!(a.status.as_u16(), 200, "{}", a.text());
    let up = fake.recorded().pop().expect("passthrough");
    assert_eq!(up.path, "/apps/5000/channels");
    assert_eq!(up.param("filter_by_prefix").as_deref(), Some("presence-"));
    // A forged one is refused by the proxy.
    let forged = q.replace("auth_signature=", "auth_signature=0");
    let a = support::send(
        Method::GET,
        &format!("{}{path}?{forged}", proxy.url()),
        &[],
        "",
    )
    .await;
    assert_eq!(a.status.as_u16(), 401);
    // A path with repeated slashes, verified as received, is re-signed
    // over its collapsed form, with the upstream's app id.
    let raw = "//apps/4242/events";
    let q = oracle::signed_query(
        support::KEY,
        support::SECRET,
        "POST",
        raw,
        now,
        Some(&body[..]),
        &[],
    );
    let a = support::send(
        Method::POST,
        &format!("{}{raw}?{q}", proxy.url()),
        &[],
        &body[..],
    )
    .await;
    assert_eq!(a.status.as_u16(), 200, "{}", a.text());
    let up = fake.recorded().pop().expect("passthrough");
    assert_eq!(up.path, "/apps/5000/events");
    assert_eq!(up.signature, Ok(()));
    // A query whose signed string could be split another way is refused,
    // not re-signed: `filter_by_prefix=presence-%26info%3Duser_count`
    // signs as `filter_by_prefix=presence-&info=user_count`.
    let sent = fake.recorded().len();
    let q = oracle::signed_query(
        support::KEY,
        support::SECRET,
        "GET",
        path,
        now,
        None,
        &[("filter_by_prefix", "presence-&info=user_count")],
    );
    let a = support::send(Method::GET, &format!("{}{path}?{q}", proxy.url()), &[], "").await;
    assert_eq!(a.status.as_u16(), 400, "{}", a.text());
    assert!(a.text().contains("ambiguous"), "{}", a.text());
    assert_eq!(fake.recorded().len(), sent, "nothing forwarded");
    proxy.stop().await;

    // Observe mode re-signs the legacy call for the upstream too.
    let proxy =
        TestProxy::for_upstream(&fake.url(), "", &format!("mode = \"observe\"\n{mapping}")).await;
    assert_eq!(trigger(&proxy, "room", now).await.status.as_u16(), 202);
    let up = fake.recorded().pop().expect("observed");
    assert_eq!(up.path, "/apps/5000/channels/room/events");
    assert_eq!(up.param("name").as_deref(), Some("ev"));
    assert_eq!(up.signature, Ok(()));
    proxy.stop().await;

    // Re-signed with credentials the upstream refuses: its 401 refuses the
    // proxy's signature, not the caller's (spec E.4), in observe mode as
    // when translated.
    let wrong = mapping.replace("new-secret", "not-the-secret");
    let proxy =
        TestProxy::for_upstream(&fake.url(), "", &format!("mode = \"observe\"\n{wrong}")).await;
    let a = trigger(&proxy, "room", now).await;
    assert_eq!(a.status.as_u16(), 500, "{}", a.text());
    assert!(fake.recorded().pop().expect("observed").signature.is_err());
    proxy.stop().await;
}

#[tokio::test]
async fn bypass_passes_everything_through_unchanged() {
    let fake = support::fake().await;
    let toml = support::config_toml(&fake.url(), "", "mode = \"reject\"")
        .replace("[admin]", "bypass = true\n[admin]");
    let proxy = TestProxy::start(&toml, Arc::new(pusher_cutover::SystemClock)).await;
    let now = support::now();
    let uri = support::legacy_trigger_uri("room", &[("name", "ev")], b"x", now);
    let a = support::send(Method::POST, &format!("{}{uri}", proxy.url()), &[], "x").await;
    assert_eq!(a.status.as_u16(), 202, "reject is bypassed: {}", a.text());
    assert!(!a.headers.contains_key("deprecation"));
    let up = fake.recorded().pop().expect("forwarded");
    assert_eq!(format!("{}?{}", up.path, up.query), uri);
    proxy.stop().await;
}

/// Reloading a valid and then an invalid file while requests flow: no
/// request fails, the valid file takes effect, the invalid one is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load() {
    let fake = support::fake().await;
    let base = support::config_toml(&fake.url(), "", "");
    let file = support::ConfigFile::new(&base);
    let proxy = Arc::new(TestProxy::start_file(file.path()).await);
    let hash = |p: &TestProxy| {
        let url = format!("{}/readyz", p.admin_url());
        async move { support::send(Method::GET, &url, &[], "").await.text() }
    };
    let first = hash(&proxy).await;

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for _ in 0..8 {
        let (proxy, stop, sent) = (proxy.clone(), stop.clone(), sent.clone());
        load.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            for _ in 0..10_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let a = trigger(&proxy, "room", support::now()).await;
                sent.fetch_add(1, Ordering::Relaxed);
                if a.status.as_u16() != 202 {
                    failures.push(format!("{} {}", a.status, a.text()));
                }
            }
            failures
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    file.write(&base.replace("[[apps]]", "[[apps]]\nsunset = \"2027-01-01T00:00:00Z\""));
    let ok = proxy.reload().await;
    assert_eq!(ok.status.as_u16(), 200, "{}", ok.text());
    let second = hash(&proxy).await;
    assert_ne!(first, second, "the new config's hash is served");
    assert!(
        ok.text()
            .contains(second.trim().trim_start_matches("ready "))
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    file.write(&base.replace("secret = ", "secretx = "));
    let refused = proxy.reload().await;
    assert_eq!(refused.status.as_u16(), 400, "{}", refused.text());
    assert!(
        refused.text().contains("secretx"),
        "names the problem: {}",
        refused.text()
    );
    assert_eq!(
        hash(&proxy).await,
        second,
        "the previous config keeps serving"
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for t in load {
        failures.extend(t.await.expect("load task"));
    }
    assert!(sent.load(Ordering::Relaxed) > 50, "load was running");
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    let sunset = trigger(&proxy, "room", support::now()).await;
    assert_eq!(
        sunset.headers.get("sunset").and_then(|v| v.to_str().ok()),
        Some("Fri, 01 Jan 2027 00:00:00 GMT"),
        "the reloaded config is in effect"
    );
    let m = proxy.metrics().await;
    assert_eq!(
        support::metric(
            &m,
            r#"pusher_cutover_config_reloads_total{result="success"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        support::metric(
            &m,
            r#"pusher_cutover_config_reloads_total{result="failure"}"#
        ),
        Some(1.0)
    );
    support::stop_shared(proxy).await;
}
