//! Legacy stats → channel info (spec E.2, E.5 item 1).

use hyper::Method;

use crate::support::{self, TestProxy, fake::FakeUpstream, oracle};

async fn stats(proxy: &TestProxy, channel_raw: &str) -> support::Answer {
    let uri = support::legacy_stats_uri(channel_raw, support::now());
    support::send(Method::GET, &format!("{}{uri}", proxy.url()), &[], "").await
}

async fn setup(app_extra: &str) -> (FakeUpstream, TestProxy) {
    let fake = support::fake().await;
    let proxy = TestProxy::for_upstream(&fake.url(), "", app_extra).await;
    (fake, proxy)
}

#[tokio::test]
async fn presence_channel_with_counting_on_shows_connection_count() {
    let (fake, proxy) = setup("subscription_count = \"on\"").await;
    let a = stats(&proxy, "presence-room").await;
    assert_eq!(a.status.as_u16(), 200, "{}", a.text());
    assert_eq!(
        a.text(),
        r#"{"occupied":true,"user_count":2,"connection_count":3}"#
    );
    assert_eq!(
        a.headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    let seen = fake.recorded();
    assert_eq!(seen.len(), 1);
    let up = &seen[0];
    assert_eq!(
        (up.method.as_str(), up.path.as_str()),
        ("GET", "/apps/4242/channels/presence-room")
    );
    assert_eq!(
        up.param("info").as_deref(),
        Some("user_count,subscription_count")
    );
    assert_eq!(up.param("body_md5"), None, "never body_md5 on GET");
    assert_eq!(up.signature, Ok(()));
    proxy.stop().await;
}

/// A presence channel is asked for `user_count` alone with counting off,
/// and in `probe` (Pusher's default; spec E.2, E.5 item 3), once, while
/// other channels are still probed for `subscription_count` there.
#[tokio::test]
async fn presence_channel_asks_user_count_only_unless_counting_is_on() {
    for (mode, room_info, room_answer) in [
        ("off", None, r#"{"occupied":true}"#),
        (
            "probe",
            Some("subscription_count"),
            r#"{"occupied":true,"connection_count":3}"#,
        ),
    ] {
        let (fake, proxy) = setup(&format!("subscription_count = \"{mode}\"")).await;
        fake.set(|b| b.presence_subscription_count = false);
        let a = stats(&proxy, "presence-room").await;
        assert_eq!(a.status.as_u16(), 200, "{mode}: {}", a.text());
        assert_eq!(a.text(), r#"{"occupied":true,"user_count":2}"#, "{mode}");
        let seen = fake.recorded();
        assert_eq!(seen.len(), 1, "{mode}: one request");
        assert_eq!(
            seen[0].param("info").as_deref(),
            Some("user_count"),
            "{mode}"
        );
        let c = stats(&proxy, "room").await;
        assert_eq!(c.text(), room_answer, "{mode}");
        assert_eq!(
            fake.recorded()[1].param("info").as_deref(),
            room_info,
            "{mode}"
        );
        proxy.stop().await;
    }
}

/// In `on`, an upstream that refuses `subscription_count` on presence
/// channels (Pusher, with the operator's word that the app counts) makes
/// the call fall back to `user_count`, remembered for presence channels
/// only; other channels keep counting.
#[tokio::test]
async fn presence_counting_falls_back_after_a_400_and_remembers() {
    let (fake, proxy) = setup("subscription_count = \"on\"").await;
    fake.set(|b| b.presence_subscription_count = false);
    let a = stats(&proxy, "presence-room").await;
    assert_eq!(a.status.as_u16(), 200, "{}", a.text());
    assert_eq!(a.text(), r#"{"occupied":true,"user_count":2}"#);
    let seen = fake.recorded();
    assert_eq!(
        seen.len(),
        2,
        "one try with subscription_count, one without"
    );
    assert_eq!(
        seen[0].param("info").as_deref(),
        Some("user_count,subscription_count")
    );
    assert_eq!(seen[1].param("info").as_deref(), Some("user_count"));

    let b = stats(&proxy, "presence-room").await;
    assert_eq!(b.text(), r#"{"occupied":true,"user_count":2}"#);
    let seen = fake.recorded();
    assert_eq!(seen.len(), 3, "the second call does not ask again");
    assert_eq!(seen[2].param("info").as_deref(), Some("user_count"));

    let c = stats(&proxy, "room").await;
    assert_eq!(c.text(), r#"{"occupied":true,"connection_count":3}"#);
    proxy.stop().await;
}

// Pusher's 164-character limit is decided by the upstream's host
// (`*.pusher.com`): it is tested as a unit (src/pusher/channel.rs,
// src/routes/mod.rs), as an integration test would have to name a host off
// this machine.

/// Other upstreams keep the clones' 200.
#[tokio::test]
async fn channel_of_200_is_forwarded_to_other_upstreams() {
    let (fake, proxy) = setup("").await;
    let long = "a".repeat(200);
    let a = stats(&proxy, &long).await;
    assert_eq!(a.status.as_u16(), 200, "{}", a.text());
    assert_eq!(fake.recorded().len(), 1);
    proxy.stop().await;
}

#[tokio::test]
async fn other_channels_map_subscription_count_and_drop_the_rest() {
    let (fake, proxy) = setup("subscription_count = \"on\"").await;
    for channel in ["room", "private-room"] {
        let a = stats(&proxy, channel).await;
        assert_eq!(a.status.as_u16(), 200, "{}", a.text());
        // The fake also sends cache and subscription_count_complete.
        assert_eq!(a.text(), r#"{"occupied":true,"connection_count":3}"#);
    }
    let seen = fake.recorded();
    assert!(
        seen.iter()
            .all(|r| r.param("info").as_deref() == Some("subscription_count"))
    );
    assert!(seen.iter().all(|r| r.signature.is_ok()));
    proxy.stop().await;
}

#[tokio::test]
async fn counting_off_sends_no_info() {
    let (fake, proxy) = setup("subscription_count = \"off\"").await;
    let a = stats(&proxy, "room").await;
    assert_eq!(a.text(), r#"{"occupied":true}"#);
    let up = &fake.recorded()[0];
    assert_eq!(up.param("info"), None);
    let keys: Vec<String> = oracle::parse_query(&up.query)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        keys,
        [
            "auth_key",
            "auth_timestamp",
            "auth_version",
            "auth_signature"
        ],
        "no extra parameters"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn probe_falls_back_when_counting_is_disabled_and_remembers() {
    let (fake, proxy) = setup("subscription_count = \"probe\"").await;
    fake.set(|b| b.counting_enabled = false);
    let a = stats(&proxy, "room").await;
    assert_eq!(a.status.as_u16(), 200, "{}", a.text());
    assert_eq!(a.text(), r#"{"occupied":true}"#);
    let seen = fake.recorded();
    assert_eq!(seen.len(), 2, "one try with info, one retry without");
    assert_eq!(seen[0].param("info").as_deref(), Some("subscription_count"));
    assert_eq!(seen[1].param("info"), None);

    let b = stats(&proxy, "room").await;
    assert_eq!(b.text(), r#"{"occupied":true}"#);
    let seen = fake.recorded();
    assert_eq!(seen.len(), 3, "the second call does not probe again");
    assert_eq!(seen[2].param("info"), None);
    proxy.stop().await;
}

/// What a probe learnt is the upstream's: a reload that keeps the app on
/// the same server keeps it; one that moves the app to another server
/// probes afresh (the new one counts).
#[tokio::test]
async fn a_probes_memory_stays_with_its_upstream_across_reloads() {
    let first = support::fake().await;
    first.set(|b| b.counting_enabled = false);
    let second = support::fake().await;
    let toml = |url: &str| support::config_toml(url, "", "subscription_count = \"probe\"");
    let file = support::ConfigFile::new(&toml(&first.url()));
    let proxy = TestProxy::start_file(file.path()).await;
    assert_eq!(stats(&proxy, "room").await.text(), r#"{"occupied":true}"#);
    assert_eq!(first.recorded().len(), 2, "probed, then asked without info");

    // The same upstream, another setting: remembered.
    file.write(&toml(&first.url()).replace("[[apps]]", "[[apps]]\nmax_data_bytes = 20000"));
    assert_eq!(proxy.reload().await.status.as_u16(), 200);
    assert_eq!(stats(&proxy, "room").await.text(), r#"{"occupied":true}"#);
    assert_eq!(first.recorded().len(), 3, "not probed again");
    assert_eq!(first.recorded()[2].param("info"), None);

    // Another server: probed afresh, and it counts.
    file.write(&toml(&second.url()));
    assert_eq!(proxy.reload().await.status.as_u16(), 200);
    assert_eq!(
        stats(&proxy, "room").await.text(),
        r#"{"occupied":true,"connection_count":3}"#
    );
    let seen = second.recorded();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].param("info").as_deref(), Some("subscription_count"));
    proxy.stop().await;
}

#[tokio::test]
async fn probe_keeps_connection_count_when_counting_works() {
    let (fake, proxy) = setup("subscription_count = \"probe\"").await;
    let a = stats(&proxy, "room").await;
    assert_eq!(a.text(), r#"{"occupied":true,"connection_count":3}"#);
    assert_eq!(fake.recorded().len(), 1);
    proxy.stop().await;
}

#[tokio::test]
async fn counting_on_passes_the_upstream_refusal_through() {
    let (fake, proxy) = setup("subscription_count = \"on\"").await;
    fake.set(|b| b.counting_enabled = false);
    let a = stats(&proxy, "room").await;
    assert_eq!(a.status.as_u16(), 400);
    assert!(
        a.text().contains("subscription counting is not enabled"),
        "{}",
        a.text()
    );
    assert_eq!(fake.recorded().len(), 1, "no retry unless probing");
    proxy.stop().await;
}

/// PyPI `pusher` 0.8 percent-encodes the channel segment and signs that
/// form: verify over the raw path, forward the decoded name raw.
#[tokio::test]
async fn percent_encoded_channel_is_verified_raw_and_forwarded_decoded() {
    let (fake, proxy) = setup("").await;
    let a = stats(&proxy, "private-foo-bar_1234%40%3D%2C.%3B").await;
    assert_eq!(a.status.as_u16(), 200, "{}", a.text());
    let up = &fake.recorded()[0];
    assert_eq!(up.path, "/apps/4242/channels/private-foo-bar_1234@=,.;");
    assert_eq!(up.signature, Ok(()));
    proxy.stop().await;
}

/// PyPI `pusher` ≥ 1.0 signs every GET with the MD5 of the empty body
/// (spec A.4): accepted inbound, never forwarded.
#[tokio::test]
async fn empty_body_md5_on_get_is_accepted_and_dropped() {
    let (fake, proxy) = setup("").await;
    let path = "/apps/4242/channels/presence-room/stats";
    let q = oracle::signed_query(
        support::KEY,
        support::SECRET,
        "GET",
        path,
        support::now(),
        Some(b""),
        &[],
    );
    assert!(q.contains("body_md5=d41d8cd98f00b204e9800998ecf8427e"));
    let a = support::send(Method::GET, &format!("{}{path}?{q}", proxy.url()), &[], "").await;
    assert_eq!(a.status.as_u16(), 200, "{}", a.text());
    let up = &fake.recorded()[0];
    assert_eq!(up.param("body_md5"), None);
    assert_eq!(up.signature, Ok(()));
    proxy.stop().await;
}

/// Packagist 2.1.1–2.1.2 append caller options (e.g. `info=connection_count`)
/// to the stats route: verified, then never forwarded (spec E.5 item 6).
#[tokio::test]
async fn extra_signed_parameters_are_verified_then_dropped() {
    let (fake, proxy) = setup("subscription_count = \"off\"").await;
    let path = "/apps/4242/channels/room/stats";
    let uri = support::signed_uri(
        support::KEY,
        support::SECRET,
        "GET",
        path,
        support::now(),
        None,
        &[("info", "connection_count")],
    );
    let a = support::send(Method::GET, &format!("{}{uri}", proxy.url()), &[], "").await;
    assert_eq!(a.status.as_u16(), 200, "{}", a.text());
    assert_eq!(fake.recorded()[0].param("info"), None);
    proxy.stop().await;
}
