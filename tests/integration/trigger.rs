//! Legacy trigger → `POST /apps/{id}/events` (spec E.3).

use hyper::Method;
use tokio::io::AsyncWriteExt;

use crate::support::{self, TestProxy, fake::FakeUpstream};

async fn trigger(
    proxy: &TestProxy,
    channel_raw: &str,
    params: &[(&str, &str)],
    body: &str,
) -> support::Answer {
    let uri = support::legacy_trigger_uri(channel_raw, params, body.as_bytes(), support::now());
    support::send(
        Method::POST,
        &format!("{}{uri}", proxy.url()),
        &[("content-type", "application/json")],
        body.to_owned(),
    )
    .await
}

async fn setup() -> (FakeUpstream, TestProxy) {
    let fake = support::fake().await;
    let proxy = TestProxy::for_upstream(&fake.url(), "", "").await;
    (fake, proxy)
}

#[tokio::test]
async fn socket_id_present_absent_and_empty() {
    let (fake, proxy) = setup().await;
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("name", "ev"), ("socket_id", "123.456")],
            r#"{"name":"ev","channels":["room"],"data":"{\"a\":1}","socket_id":"123.456"}"#,
        ),
        (
            &[("name", "ev")],
            r#"{"name":"ev","channels":["room"],"data":"{\"a\":1}"}"#,
        ),
        (
            &[("name", "ev"), ("socket_id", "")],
            r#"{"name":"ev","channels":["room"],"data":"{\"a\":1}"}"#,
        ),
    ];
    for (i, (params, expected)) in cases.iter().enumerate() {
        let a = trigger(&proxy, "room", params, r#"{"a":1}"#).await;
        assert_eq!(a.status.as_u16(), 202, "{}", a.text());
        assert_eq!(&a.body[..], b"202 ACCEPTED\n");
        assert_eq!(
            a.headers.get("content-type").and_then(|v| v.to_str().ok()),
            Some("text/plain; charset=utf-8")
        );
        let up = &fake.recorded()[i];
        assert_eq!(String::from_utf8_lossy(&up.body), *expected, "{params:?}");
        assert_eq!(up.signature, Ok(()));
    }
    proxy.stop().await;
}

#[tokio::test]
async fn data_is_forwarded_verbatim() {
    let (fake, proxy) = setup().await;
    let data = "caf\u{e9} \u{1f680} \u{65e5}\u{672c} not json at all \" \\ \t";
    let a = trigger(&proxy, "presence-room", &[("name", "ev")], data).await;
    assert_eq!(a.status.as_u16(), 202, "{}", a.text());
    let body = fake.recorded()[0].json();
    assert_eq!(body["data"].as_str(), Some(data));
    assert_eq!(body["channels"], serde_json::json!(["presence-room"]));
    proxy.stop().await;
}

#[tokio::test]
async fn empty_data_is_forwarded_as_an_empty_string() {
    let (fake, proxy) = setup().await;
    let a = trigger(&proxy, "room", &[("name", "ev")], "").await;
    assert_eq!(a.status.as_u16(), 202, "{}", a.text());
    assert_eq!(fake.recorded()[0].json()["data"].as_str(), Some(""));
    proxy.stop().await;
}

/// PyPI `pusher` 0.8 style: the channel segment percent-encoded.
#[tokio::test]
async fn percent_encoded_channel() {
    let (fake, proxy) = setup().await;
    let a = trigger(
        &proxy,
        "private-foo-bar_1234%40%3D%2C.%3B",
        &[("name", "ev")],
        "{}",
    )
    .await;
    assert_eq!(a.status.as_u16(), 202, "{}", a.text());
    let body = fake.recorded()[0].json();
    assert_eq!(
        body["channels"],
        serde_json::json!(["private-foo-bar_1234@=,.;"])
    );
    proxy.stop().await;
}

/// Upstream refusals the old clients can show are passed through verbatim.
#[tokio::test]
async fn upstream_client_errors_pass_through() {
    let (fake, proxy) = setup().await;
    for (status, body) in [
        (
            413,
            r#"{"error":"Payload too large","code":"payload_too_large","status":413}"#,
        ),
        (403, "App disabled"),
        (400, "Invalid channel name"),
    ] {
        fake.set(|b| b.fixed = Some((status, "text/plain", body.into())));
        let a = trigger(&proxy, "room", &[("name", "ev")], "x").await;
        assert_eq!(a.status.as_u16(), status);
        assert_eq!(a.text(), body);
    }
    proxy.stop().await;
}

/// Sockudo answers `Connection: close` on every API response.
#[tokio::test]
async fn upstream_closing_every_connection() {
    let (fake, proxy) = setup().await;
    fake.set(|b| b.connection_close = true);
    for i in 0..20 {
        let a = trigger(&proxy, "room", &[("name", "ev")], &i.to_string()).await;
        assert_eq!(a.status.as_u16(), 202, "call {i}: {}", a.text());
    }
    assert_eq!(fake.recorded().len(), 20);
    assert_eq!(fake.connections(), 20, "one connection per request");
    proxy.stop().await;
}

/// With a keep-alive upstream, sequential calls share one pooled connection.
#[tokio::test]
async fn upstream_connections_are_pooled() {
    let (fake, proxy) = setup().await;
    for i in 0..20 {
        let a = trigger(&proxy, "room", &[("name", "ev")], &i.to_string()).await;
        assert_eq!(a.status.as_u16(), 202, "{}", a.text());
    }
    assert_eq!(fake.recorded().len(), 20);
    assert_eq!(fake.connections(), 1, "all calls on one pooled connection");
    proxy.stop().await;
}

/// Several legacy calls on one inbound keep-alive connection.
#[tokio::test]
async fn inbound_keep_alive() {
    let (fake, proxy) = setup().await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    for i in 0..3 {
        let body = format!("{{\"n\":{i}}}");
        let uri =
            support::legacy_trigger_uri("room", &[("name", "ev")], body.as_bytes(), support::now());
        let raw = format!(
            "POST {uri} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(raw.as_bytes()).await.expect("write");
        let a = tokio::time::timeout(
            support::REQUEST_TIMEOUT,
            support::read_response(&mut stream),
        )
        .await
        .expect("answered");
        assert_eq!(a.status.as_u16(), 202, "{}", a.text());
    }
    assert_eq!(fake.recorded().len(), 3);
    proxy.stop().await;
}
