//! End to end against a real Pusher-compatible server: Sockudo 5.2.0 on a
//! loopback port, `pusher-cutover` in front of it, and real WebSocket
//! subscribers speaking Pusher protocol 7.
//!
//! Needs the `sockudo` binary, version 5.2.0 (`SOCKUDO_BIN`, else `PATH`),
//! so every test is `#[ignore]`d: `cargo test --locked` lists them as
//! ignored, `cargo test --locked -- --include-ignored` runs them, and there
//! a missing or wrong Sockudo fails each test, saying how to install it.

// Shared with the integration and deploy tests; each uses part of it.
#[path = "../support/mod.rs"]
#[allow(dead_code)]
mod support;

mod coalesce;
mod sockudo;
mod ws;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use hyper::Method;

use crate::sockudo::Sockudo;
use crate::support::{APP_ID, Answer, JSON, KEY, SECRET, TestProxy, now, recordings, send};
use crate::ws::Subscriber;

/// How long a subscriber waits for an event that must arrive.
const DELIVERY: Duration = Duration::from_secs(5);
/// How long a subscriber listens for an event that must not arrive.
const SILENCE: Duration = Duration::from_secs(2);

/// `base` + `path` + a query signed now with the app's credentials (the
/// app Sockudo knows is the fixture app of the shared support).
fn signed(
    base: &str,
    method: &str,
    path: &str,
    params: &[(&str, &str)],
    body: Option<&[u8]>,
) -> String {
    signed_at(base, method, path, params, body, now())
}

/// As [`signed`], at a given time.
fn signed_at(
    base: &str,
    method: &str,
    path: &str,
    params: &[(&str, &str)],
    body: Option<&[u8]>,
    timestamp: u64,
) -> String {
    let target = support::signed_uri(KEY, SECRET, method, path, timestamp, body, params);
    format!("{base}{target}")
}

/// Sockudo, and the proxy in front of it.
struct Env {
    sockudo: Sockudo,
    proxy: TestProxy,
}

impl Env {
    /// Starts both; panics when Sockudo 5.2.0 cannot be found or started.
    async fn start() -> Self {
        Self::start_with("").await
    }

    /// Starts both, with `upstream_extra` added to the proxy's `[upstream]`.
    async fn start_with(upstream_extra: &str) -> Self {
        let sockudo = Sockudo::start(&sockudo::binary()).await;
        let proxy = TestProxy::for_upstream(
            &sockudo.url(),
            &format!("timeout_ms = 10000\nprotocol = \"h2c\"\n{upstream_extra}"),
            "subscription_count = \"on\"",
        )
        .await;
        Self { sockudo, proxy }
    }

    async fn subscriber(&self) -> Subscriber {
        Subscriber::connect(self.sockudo.port).await
    }

    /// A legacy trigger through the proxy, signed now.
    async fn legacy_trigger(
        &self,
        channel: &str,
        name: &str,
        socket_id: Option<&str>,
        data: &str,
    ) -> Answer {
        self.legacy_trigger_at(channel, name, socket_id, data, now())
            .await
    }

    async fn legacy_trigger_at(
        &self,
        channel: &str,
        name: &str,
        socket_id: Option<&str>,
        data: &str,
        timestamp: u64,
    ) -> Answer {
        let path = format!("/apps/{APP_ID}/channels/{channel}/events");
        let mut params = vec![("name", name)];
        if let Some(s) = socket_id {
            params.push(("socket_id", s));
        }
        let uri = signed_at(
            &self.proxy.url(),
            "POST",
            &path,
            &params,
            Some(data.as_bytes()),
            timestamp,
        );
        send(Method::POST, &uri, JSON, data.to_owned()).await
    }

    /// A legacy stats call through the proxy.
    async fn legacy_stats(&self, channel: &str) -> serde_json::Value {
        let path = format!("/apps/{APP_ID}/channels/{channel}/stats");
        let a = send(
            Method::GET,
            &signed(&self.proxy.url(), "GET", &path, &[], None),
            JSON,
            "",
        )
        .await;
        assert_eq!(a.status.as_u16(), 200, "stats {channel}: {}", a.text());
        a.json()
    }

    /// Polls legacy stats until `check` holds (bounded), returning the last.
    async fn stats_until(
        &self,
        channel: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let mut last = serde_json::Value::Null;
        for _ in 0..50 {
            last = self.legacy_stats(channel).await;
            if check(&last) {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        last
    }

    /// Stops the proxy (bounded, see [`TestProxy::stop`]), then Sockudo.
    async fn stop(self) {
        let Self { mut sockudo, proxy } = self;
        proxy.stop().await;
        sockudo.stop().await;
    }
}

/// A channel name unique within this run.
fn channel(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}e2e-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn assert_accepted(a: &Answer) {
    assert_eq!(a.status.as_u16(), 202, "{}", a.text());
    assert_eq!(&a.body[..], b"202 ACCEPTED\n");
}

#[tokio::test]
#[ignore = "needs Sockudo 5.2.0 (SOCKUDO_BIN or PATH; tests/install-parts.sh installs it); run with -- --include-ignored"]
async fn legacy_trigger_reaches_public_private_and_presence_subscribers() {
    let env = Env::start().await;
    for prefix in ["", "private-", "presence-"] {
        let ch = channel(prefix);
        let mut sub = env.subscriber().await;
        sub.subscribe(&ch, prefix.starts_with("presence-").then_some("user-1"))
            .await;
        let data = format!(r#"{{"msg": "hi", "on": "{ch}"}}"#);
        assert_accepted(&env.legacy_trigger(&ch, "my-event", None, &data).await);
        let got = sub
            .next_event(DELIVERY)
            .await
            .unwrap_or_else(|| panic!("{ch}: not delivered"));
        assert_eq!(
            (got.event.as_str(), got.channel.as_str(), got.data.as_str()),
            ("my-event", ch.as_str(), data.as_str())
        );
        assert_eq!(
            sub.next_event(SILENCE).await,
            None,
            "{ch}: delivered exactly once"
        );
    }
    env.stop().await;
}

#[tokio::test]
#[ignore = "needs Sockudo 5.2.0 (SOCKUDO_BIN or PATH; tests/install-parts.sh installs it); run with -- --include-ignored"]
async fn socket_id_excludes_that_connection_only() {
    let env = Env::start().await;
    let ch = channel("");
    let mut excluded = env.subscriber().await;
    let mut other = env.subscriber().await;
    excluded.subscribe(&ch, None).await;
    other.subscribe(&ch, None).await;
    let socket_id = excluded.socket_id.clone();
    assert_accepted(&env.legacy_trigger(&ch, "ev", Some(&socket_id), "x").await);
    assert_eq!(
        other.next_event(DELIVERY).await.map(|e| e.data),
        Some("x".into())
    );
    assert_eq!(
        excluded.next_event(SILENCE).await,
        None,
        "the excluded connection got the event"
    );
    env.stop().await;
}

#[tokio::test]
#[ignore = "needs Sockudo 5.2.0 (SOCKUDO_BIN or PATH; tests/install-parts.sh installs it); run with -- --include-ignored"]
async fn non_ascii_data_is_intact_and_oversized_data_is_413() {
    let env = Env::start().await;
    let ch = channel("");
    let mut sub = env.subscriber().await;
    sub.subscribe(&ch, None).await;
    let data = "caf\u{e9} \u{1f680} \u{65e5}\u{672c}\u{8a9e} \"quoted\" \\ {not json";
    assert_accepted(&env.legacy_trigger(&ch, "ev", None, data).await);
    assert_eq!(
        sub.next_event(DELIVERY).await.map(|e| e.data),
        Some(data.to_owned())
    );

    let limit = "x".repeat(10_240);
    assert_accepted(&env.legacy_trigger(&ch, "ev", None, &limit).await);
    assert_eq!(
        sub.next_event(DELIVERY).await.map(|e| e.data.len()),
        Some(10_240)
    );

    // Sockudo's own 413 (its app's max_event_payload_in_kb = 10): the
    // proxy leaves the limit to a self-hosted upstream (spec E.5 item 13)
    // and passes its answer on.
    let over = "x".repeat(10_241);
    let a = env.legacy_trigger(&ch, "ev", None, &over).await;
    assert_eq!(a.status.as_u16(), 413, "{}", a.text());
    assert!(
        a.text().contains("exceeds limit"),
        "Sockudo's answer: {}",
        a.text()
    );
    assert_eq!(
        sub.next_event(SILENCE).await,
        None,
        "oversized data must not be delivered"
    );
    env.stop().await;
}

#[tokio::test]
#[ignore = "needs Sockudo 5.2.0 (SOCKUDO_BIN or PATH; tests/install-parts.sh installs it); run with -- --include-ignored"]
async fn stats_follow_real_subscriptions() {
    let env = Env::start().await;
    let public = channel("");
    // Sockudo counts subscriptions, so an empty channel has a count of 0.
    assert_eq!(
        env.legacy_stats(&public).await,
        serde_json::json!({"occupied": false, "connection_count": 0})
    );

    let mut a = env.subscriber().await;
    let mut b = env.subscriber().await;
    a.subscribe(&public, None).await;
    b.subscribe(&public, None).await;
    let stats = env
        .stats_until(&public, |s| s["connection_count"] == 2)
        .await;
    assert_eq!(
        stats,
        serde_json::json!({"occupied": true, "connection_count": 2})
    );

    let presence = channel("presence-");
    let mut members = Vec::new();
    for user in ["alice", "alice", "bob"] {
        let mut s = env.subscriber().await;
        s.subscribe(&presence, Some(user)).await;
        members.push(s);
    }
    let stats = env.stats_until(&presence, |s| s["user_count"] == 2).await;
    // With subscription_count "on", a presence channel's stats carry its
    // connections too (Sockudo answers user_count,subscription_count there).
    assert_eq!(
        stats,
        serde_json::json!({"occupied": true, "user_count": 2, "connection_count": 3}),
        "3 connections of 2 users"
    );

    a.unsubscribe(&public).await;
    b.unsubscribe(&public).await;
    let stats = env.stats_until(&public, |s| s["occupied"] == false).await;
    assert_eq!(
        stats,
        serde_json::json!({"occupied": false, "connection_count": 0})
    );
    for m in &mut members {
        m.unsubscribe(&presence).await;
    }
    let stats = env.stats_until(&presence, |s| s["occupied"] == false).await;
    assert_eq!(stats["occupied"], false, "{stats}");
    env.stop().await;
}

/// Current-API calls return through the proxy what Sockudo returns directly.
#[tokio::test]
#[ignore = "needs Sockudo 5.2.0 (SOCKUDO_BIN or PATH; tests/install-parts.sh installs it); run with -- --include-ignored"]
async fn current_api_calls_pass_through_unchanged() {
    let env = Env::start().await;
    let presence = channel("presence-");
    let mut member = env.subscriber().await;
    member.subscribe(&presence, Some("carol")).await;

    let trigger =
        serde_json::json!({"name": "ev", "channels": [presence], "data": "d"}).to_string();
    let batch = serde_json::json!({"batch": [
        {"name": "a", "channel": presence, "data": "1"},
        {"name": "b", "channel": presence, "data": "2"}
    ]})
    .to_string();
    let channel_path = format!("/apps/{APP_ID}/channels/{presence}");
    type Case<'a> = (Method, String, Vec<(&'a str, &'a str)>, Option<String>);
    let cases: Vec<Case<'_>> = vec![
        (
            Method::POST,
            format!("/apps/{APP_ID}/events"),
            vec![],
            Some(trigger),
        ),
        (
            Method::POST,
            format!("/apps/{APP_ID}/batch_events"),
            vec![],
            Some(batch),
        ),
        (
            Method::GET,
            format!("/apps/{APP_ID}/channels"),
            vec![("filter_by_prefix", "presence-"), ("info", "user_count")],
            None,
        ),
        (
            Method::GET,
            channel_path.clone(),
            vec![("info", "user_count")],
            None,
        ),
        (Method::GET, format!("{channel_path}/users"), vec![], None),
    ];
    for (method, path, params, body) in cases {
        let body_bytes = body.as_deref().map(str::as_bytes);
        // The same signed request, sent to both.
        let query = signed("", method.as_str(), &path, &params, body_bytes);
        let direct = send(
            method.clone(),
            &format!("{}{query}", env.sockudo.url()),
            JSON,
            body.clone().unwrap_or_default(),
        )
        .await;
        let proxied = send(
            method.clone(),
            &format!("{}{query}", env.proxy.url()),
            JSON,
            body.clone().unwrap_or_default(),
        )
        .await;
        assert_eq!(
            direct.status.as_u16(),
            200,
            "{method} {path} direct: {}",
            direct.text()
        );
        assert_eq!(proxied.status, direct.status, "{method} {path}");
        assert_eq!(proxied.json(), direct.json(), "{method} {path}");
    }
    // The triggers above were delivered: one, then the two of the batch.
    let mut names = Vec::new();
    while let Some(e) = member.next_event(Duration::from_millis(1500)).await {
        names.push(e.event);
    }
    assert_eq!(
        names,
        ["ev", "ev", "a", "b", "a", "b"],
        "each trigger sent twice: direct and proxied"
    );
    env.stop().await;
}

/// PyPI `pusher` 3.3.4 signs every GET with the MD5 of the empty body;
/// Sockudo refuses that, the proxy verifies and re-signs it (spec A.4).
#[tokio::test]
#[ignore = "needs Sockudo 5.2.0 (SOCKUDO_BIN or PATH; tests/install-parts.sh installs it); run with -- --include-ignored"]
async fn pypi_style_get_with_body_md5_succeeds_through_the_proxy() {
    let env = Env::start().await;
    let ch = channel("presence-");
    let mut member = env.subscriber().await;
    member.subscribe(&ch, Some("dave")).await;
    let path = format!("/apps/{APP_ID}/channels/{ch}");
    let query = signed("", "GET", &path, &[("info", "user_count")], Some(b""));
    assert!(
        query.contains("body_md5=d41d8cd98f00b204e9800998ecf8427e"),
        "{query}"
    );

    let direct = send(
        Method::GET,
        &format!("{}{query}", env.sockudo.url()),
        JSON,
        "",
    )
    .await;
    assert_eq!(
        direct.status.as_u16(),
        401,
        "Sockudo itself refuses it: {}",
        direct.text()
    );
    let proxied = send(
        Method::GET,
        &format!("{}{query}", env.proxy.url()),
        JSON,
        "",
    )
    .await;
    assert_eq!(proxied.status.as_u16(), 200, "{}", proxied.text());
    assert_eq!(
        proxied.json(),
        serde_json::json!({"occupied": true, "user_count": 1})
    );
    env.stop().await;
}

#[tokio::test]
#[ignore = "needs Sockudo 5.2.0 (SOCKUDO_BIN or PATH; tests/install-parts.sh installs it); run with -- --include-ignored"]
async fn forged_and_stale_requests_are_refused_and_deliver_nothing() {
    let env = Env::start().await;
    let ch = channel("");
    let mut sub = env.subscriber().await;
    sub.subscribe(&ch, None).await;
    let path = format!("/apps/{APP_ID}/channels/{ch}/events");
    let good = signed(
        &env.proxy.url(),
        "POST",
        &path,
        &[("name", "ev")],
        Some(b"x"),
    );
    let forged = format!("{}{}", &good[..good.len() - 4], "0000");
    let a = send(Method::POST, &forged, JSON, "x").await;
    assert_eq!(a.status.as_u16(), 401, "{}", a.text());
    for skew in [-601_i64, 601] {
        let ts = now().saturating_add_signed(skew);
        let a = env.legacy_trigger_at(&ch, "ev", None, "x", ts).await;
        assert_eq!(a.status.as_u16(), 401, "skew {skew}: {}", a.text());
    }
    assert_eq!(
        sub.next_event(SILENCE).await,
        None,
        "a refused call reached a subscriber"
    );
    env.stop().await;
}

/// Each recorded legacy request, freshly signed, is delivered through the
/// proxy with its event name and data intact.
#[tokio::test]
#[ignore = "needs Sockudo 5.2.0 (SOCKUDO_BIN or PATH; tests/install-parts.sh installs it); run with -- --include-ignored"]
async fn recorded_legacy_requests_freshly_signed_are_delivered() {
    let env = Env::start().await;
    let mut sub = env.subscriber().await;
    sub.subscribe("test-channel", None).await;
    for r in recordings::recordings() {
        let name = r.param("name").expect("name");
        let socket_id = r.param("socket_id");
        let a = env
            .legacy_trigger("test-channel", &name, socket_id.as_deref(), &r.body)
            .await;
        assert_accepted(&a);
        let got = sub
            .next_event(DELIVERY)
            .await
            .unwrap_or_else(|| panic!("{}: not delivered", r.library));
        assert_eq!(
            (got.event.as_str(), got.data.as_str()),
            (name.as_str(), r.body.as_str()),
            "{}",
            r.library
        );
    }
    env.stop().await;
}

/// The recorded releases, freshly signed in place (their bytes otherwise
/// as recorded), delivered through real Sockudo and named in the ledger
/// by their library families, as the integration replay names them.
#[tokio::test]
#[ignore = "needs Sockudo 5.2.0 (SOCKUDO_BIN or PATH; tests/install-parts.sh installs it); run with -- --include-ignored"]
async fn recorded_releases_are_classified_against_real_sockudo() {
    let env = Env::start().await;
    let mut sub = env.subscriber().await;
    sub.subscribe("test-channel", None).await;
    let recordings = recordings::recordings();
    for r in &recordings {
        let a = support::raw_exchange(env.proxy.addr, &r.resigned_at(now(), SECRET)).await;
        assert_accepted(&a);
        let got = sub
            .next_event(DELIVERY)
            .await
            .unwrap_or_else(|| panic!("{}: not delivered", r.library));
        assert_eq!(got.data, r.body, "{}", r.library);
    }
    let usage = send(
        Method::GET,
        &format!("{}/usage", env.proxy.admin_url()),
        &[],
        "",
    )
    .await
    .json();
    let mut by_library = std::collections::BTreeMap::<String, u64>::new();
    for c in usage["apps"][0]["callers"].as_array().expect("callers") {
        *by_library
            .entry(c["library"].as_str().expect("library").to_owned())
            .or_default() += c["calls"].as_u64().expect("calls");
    }
    let mut expected = std::collections::BTreeMap::<String, u64>::new();
    for r in &recordings {
        *expected
            .entry(recordings::expected_family(&r.library).to_owned())
            .or_default() += 1;
    }
    assert_eq!(by_library, expected);
    env.stop().await;
}

/// 2,000 legacy triggers from 32 concurrent clients, although Sockudo
/// closes every API connection: all accepted, each delivered exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Sockudo 5.2.0 (SOCKUDO_BIN or PATH; tests/install-parts.sh installs it); run with -- --include-ignored"]
async fn load_smoke_2000_triggers_from_32_clients() {
    const TOTAL: usize = 2000;
    const CLIENTS: usize = 32;
    let env = Arc::new(Env::start().await);
    let ch = channel("");
    let mut sub = env.subscriber().await;
    sub.subscribe(&ch, None).await;

    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let env = env.clone();
        let ch = ch.clone();
        tasks.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            for i in (c..TOTAL).step_by(CLIENTS) {
                let a = env.legacy_trigger(&ch, "load", None, &i.to_string()).await;
                if a.status.as_u16() != 202 {
                    failures.push(format!("{i}: {} {}", a.status, a.text()));
                }
            }
            failures
        }));
    }
    let mut received = HashSet::new();
    let mut duplicates = 0;
    while received.len() < TOTAL {
        match sub.next_event(Duration::from_secs(15)).await {
            Some(e) => {
                if !received.insert(e.data) {
                    duplicates += 1;
                }
            }
            None => break,
        }
    }
    let mut failures = Vec::new();
    for t in tasks {
        failures.extend(t.await.expect("client task"));
    }
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(received.len(), TOTAL, "every event delivered");
    assert_eq!(sub.next_event(SILENCE).await, None, "nothing extra");
    assert_eq!(duplicates, 0, "no event delivered twice");
    let expected: HashSet<String> = (0..TOTAL).map(|i| i.to_string()).collect();
    assert_eq!(received, expected);
    match Arc::try_unwrap(env) {
        Ok(env) => env.stop().await,
        Err(_) => panic!("client tasks still hold the environment"),
    }
}
