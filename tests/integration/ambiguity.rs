//! Requests whose meaning the signature does not pin down: query pairs
//! that decode to `&` (or keys with `=`), and paths with repeated slashes.

use hyper::Method;

use crate::support::{self, APP_ID, KEY, SECRET, TestProxy, oracle};

/// `name=ev%26socket_id%3D123.456` signs exactly as
/// `name=ev&socket_id=123.456`: whoever saw one signed request could
/// re-split its pairs, e.g. drop the socket_id exclusion. Refused with 400
/// before anything is forwarded, on both legacy routes, whichever pair.
#[tokio::test]
async fn pairs_that_decode_to_separators_are_refused() {
    let fake = support::fake().await;
    let proxy = TestProxy::for_upstream(&fake.url(), "", "").await;
    let now = support::now();
    let body = b"{\"a\":1}";
    let trigger = format!("/apps/{APP_ID}/channels/room/events");
    let stats = format!("/apps/{APP_ID}/channels/room/stats");
    type Case<'a> = (&'a str, &'a str, Option<&'a [u8]>, &'a [(&'a str, &'a str)]);
    let cases: [Case<'_>; 4] = [
        (
            "POST",
            &trigger,
            Some(body),
            &[("name", "ev&socket_id=123.456")],
        ),
        (
            "POST",
            &trigger,
            Some(body),
            &[("name", "ev"), ("socket_id=1", "2")],
        ),
        (
            "POST",
            &trigger,
            Some(body),
            &[("name", "ev"), ("x&y", "1")],
        ),
        ("GET", &stats, None, &[("info", "a&b")]),
    ];
    for (method, path, body, params) in cases {
        let q = oracle::signed_query(KEY, SECRET, method, path, now, body, params);
        // The signature itself is valid: the ambiguity is the refusal.
        assert_eq!(
            oracle::verify_strict(method, path, &q, body.unwrap_or(b""), SECRET, now),
            Ok(())
        );
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let a = support::send(
            method,
            &format!("{}{path}?{q}", proxy.url()),
            &[],
            body.unwrap_or(b"").to_vec(),
        )
        .await;
        assert_eq!(a.status.as_u16(), 400, "{params:?}: {}", a.text());
        assert!(a.text().contains("ambiguous"), "{}", a.text());
    }
    assert!(fake.recorded().is_empty(), "nothing is forwarded");
    // Values without those, and a value's `=`, which each pair's first `=`
    // leaves unambiguous, pass.
    for name in ["ev-1.2", "score=1"] {
        let ok = support::legacy_trigger_uri("room", &[("name", name)], body, now);
        let a = support::send(
            Method::POST,
            &format!("{}{ok}", proxy.url()),
            &[],
            body.to_vec(),
        )
        .await;
        assert_eq!(a.status.as_u16(), 202, "{name}: {}", a.text());
    }
    let names: Vec<String> = fake
        .recorded()
        .iter()
        .filter_map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
        .map(|b| b["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(names, ["ev-1.2", "score=1"]);
    proxy.stop().await;
}

/// A base URL with a trailing slash makes `//apps/…`: still a legacy call,
/// verified over the path as received, translated (the upstream gets the
/// canonical path), and recorded in the ledger.
#[tokio::test]
async fn repeated_slashes_are_still_a_legacy_call() {
    let fake = support::fake().await;
    let proxy = TestProxy::for_upstream(&fake.url(), "", "").await;
    let now = support::now();
    let body = b"{\"a\":1}";
    let raw_path = format!("//apps/{APP_ID}/channels/room/events");
    // The trigger sent to `raw_path`, signed over `signed_path`.
    let post = |signed_path: String| {
        let q = oracle::signed_query(
            KEY,
            SECRET,
            "POST",
            &signed_path,
            now,
            Some(body),
            &[("name", "ev")],
        );
        let url = format!("{}{raw_path}?{q}", proxy.url());
        async move { support::send(Method::POST, &url, &[], body.to_vec()).await }
    };
    let a = post(raw_path.clone()).await;
    assert_eq!(a.status.as_u16(), 202, "{}", a.text());
    assert!(
        a.headers.contains_key("deprecation"),
        "answered as a legacy call"
    );
    let up = fake.recorded().pop().expect("forwarded");
    assert_eq!(up.path, format!("/apps/{APP_ID}/events"));
    assert_eq!(up.signature, Ok(()));

    // Signed over the canonical path instead, it does not verify: the
    // signature covers the path as received.
    let a = post(format!("/apps/{APP_ID}/channels/room/events")).await;
    assert_eq!(a.status.as_u16(), 401, "{}", a.text());
    assert_eq!(fake.recorded().len(), 1, "the forgery is not forwarded");

    let usage = support::send(
        Method::GET,
        &format!("{}/usage", proxy.admin_url()),
        &[],
        "",
    )
    .await
    .json();
    assert_eq!(usage["apps"][0]["callers"][0]["calls"], 1);
    proxy.stop().await;
}
