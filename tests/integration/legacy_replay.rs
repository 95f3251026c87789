//! Every request of tests/fixtures/legacy-requests.txt, recorded from twelve
//! real legacy library releases, replayed byte for byte with the clock fixed
//! at its recording time.

use std::sync::Arc;

use crate::support::recordings::{expected_family, expected_upstream_body, recordings};
use crate::support::{self, APP_ID, TestProxy, fake::FakeUpstream};

/// A fake upstream for the fixture app that reads the time from `clock`
/// (the proxy's), so re-signed requests verify at the recording's time.
async fn fake_on(clock: &Arc<pusher_cutover::FixedClock>) -> FakeUpstream {
    let clock = clock.clone();
    FakeUpstream::start(&[(APP_ID, support::KEY, support::SECRET)], move || {
        pusher_cutover::Clock::unix_now(&*clock)
    })
    .await
}

#[tokio::test]
async fn every_recorded_request_verifies_and_translates() {
    let clock = support::fixed_clock(0);
    let fake = fake_on(&clock).await;
    let proxy = TestProxy::start(&support::config_toml(&fake.url(), "", ""), clock.clone()).await;

    let recordings = recordings();
    for (i, r) in recordings.iter().enumerate() {
        let ts: u64 = r
            .param("auth_timestamp")
            .and_then(|t| t.parse().ok())
            .expect("timestamp");
        // One second after the recording: still valid, and the upstream
        // request must carry the proxy's time, not the client's.
        clock.set(ts + 1);
        let answer = support::raw_exchange(proxy.addr, &r.raw()).await;
        assert_eq!(
            answer.status.as_u16(),
            202,
            "{}: {}",
            r.library,
            answer.text()
        );
        assert_eq!(&answer.body[..], b"202 ACCEPTED\n", "{}", r.library);

        let seen = fake.recorded();
        assert_eq!(
            seen.len(),
            i + 1,
            "{}: exactly one upstream request",
            r.library
        );
        let up = &seen[i];
        assert_eq!(
            (up.method.as_str(), up.path.as_str()),
            ("POST", "/apps/4242/events")
        );
        assert_eq!(up.signature, Ok(()), "{}: upstream signature", r.library);
        assert_eq!(
            String::from_utf8_lossy(&up.body),
            expected_upstream_body(r),
            "{}",
            r.library
        );
        assert_eq!(
            up.param("auth_timestamp"),
            Some((ts + 1).to_string()),
            "fresh timestamp"
        );
        assert_eq!(up.param("name"), None, "name moves into the body");
        assert_eq!(up.param("socket_id"), None, "socket_id moves into the body");
        assert_eq!(
            up.headers.get("content-type").and_then(|v| v.to_str().ok()),
            Some("application/json")
        );
    }
    // Twelve distinct recordings, not one replayed twelve times.
    let distinct: std::collections::HashSet<_> = recordings.iter().map(|r| &r.library).collect();
    assert_eq!(distinct.len(), 12);
    proxy.stop().await;
}

/// A recording replayed outside its time window is refused and not
/// forwarded: the fixed clock is what made the replay pass.
#[tokio::test]
async fn recorded_request_is_refused_once_stale() {
    let r = &recordings()[0];
    let ts: u64 = r
        .param("auth_timestamp")
        .and_then(|t| t.parse().ok())
        .expect("ts");
    let clock = support::fixed_clock(ts + 600);
    let fake = support::fake().await;
    let proxy = TestProxy::start(&support::config_toml(&fake.url(), "", ""), clock).await;
    let answer = support::raw_exchange(proxy.addr, &r.raw()).await;
    assert_eq!(answer.status.as_u16(), 401, "{}", answer.text());
    assert!(answer.text().contains("timestamp"), "{}", answer.text());
    assert!(fake.recorded().is_empty());
    proxy.stop().await;
}

/// The replay also holds with the recorded timestamp pinned in the fake
/// only: the proxy re-signs with its own clock.
#[tokio::test]
async fn translated_request_carries_the_proxy_clock() {
    let r = &recordings()[3];
    let ts: u64 = r
        .param("auth_timestamp")
        .and_then(|t| t.parse().ok())
        .expect("ts");
    let clock = Arc::new(pusher_cutover::FixedClock::new(ts + 100));
    let fake =
        FakeUpstream::start(&[(APP_ID, support::KEY, support::SECRET)], move || ts + 100).await;
    let proxy = TestProxy::start(&support::config_toml(&fake.url(), "", ""), clock).await;
    let answer = support::raw_exchange(proxy.addr, &r.raw()).await;
    assert_eq!(answer.status.as_u16(), 202, "{}", answer.text());
    assert_eq!(
        fake.recorded()[0].param("auth_timestamp"),
        Some((ts + 100).to_string())
    );
    proxy.stop().await;
}

/// Replayed byte for byte, every recorded release is named in the ledger
/// by its library family, with its call site, although none sends a
/// User-Agent and all come from 127.0.0.1.
#[tokio::test]
async fn every_recorded_release_is_named_by_its_family_in_usage() {
    let clock = support::fixed_clock(0);
    let fake = fake_on(&clock).await;
    let toml = support::config_toml(&fake.url(), "", "").replace(
        "[upstream]",
        "[telemetry]\ninstance = \"replay-pod\"\n[upstream]",
    );
    let proxy = TestProxy::start(&toml, clock.clone()).await;
    let recordings = recordings();
    for r in &recordings {
        let ts: u64 = r
            .param("auth_timestamp")
            .and_then(|t| t.parse().ok())
            .expect("timestamp");
        clock.set(ts + 1);
        let answer = support::raw_exchange(proxy.addr, &r.raw()).await;
        assert_eq!(
            answer.status.as_u16(),
            202,
            "{}: {}",
            r.library,
            answer.text()
        );
    }
    let usage = support::send(
        hyper::Method::GET,
        &format!("{}/usage", proxy.admin_url()),
        &[],
        "",
    )
    .await
    .json();
    assert_eq!(usage["instance"], "replay-pod");
    let callers = usage["apps"][0]["callers"].as_array().expect("callers");
    let mut calls_by_library = std::collections::BTreeMap::<String, u64>::new();
    for c in callers {
        assert_eq!(c["client_address"], "127.0.0.1");
        assert_eq!(c["user_agent"], "", "none of them sends a User-Agent");
        assert_eq!(c["instance"], "replay-pod");
        assert_eq!(c["fingerprint"].as_str().map(str::len), Some(12), "{c}");
        assert_eq!(
            c["call_sites"],
            serde_json::json!([{"event": "my-event", "channel": "test-channel", "calls": c["calls"]}]),
            "{c}"
        );
        *calls_by_library
            .entry(c["library"].as_str().expect("library").to_owned())
            .or_default() += c["calls"].as_u64().expect("calls");
    }
    let mut expected = std::collections::BTreeMap::<String, u64>::new();
    for r in &recordings {
        *expected
            .entry(expected_family(&r.library).to_owned())
            .or_default() += 1;
    }
    assert_eq!(calls_by_library, expected);
    proxy.stop().await;
}
