//! Everything that is not a deprecated call is forwarded unchanged.

use hyper::Method;
use tokio::io::AsyncWriteExt;

use crate::support::{self, TestProxy, oracle};

#[tokio::test]
async fn current_api_trigger_passes_byte_for_byte() {
    let fake = support::fake().await;
    let proxy = TestProxy::for_upstream(&fake.url(), "", "").await;
    let body = r#"{"name":"ev","channels":["a","b"],"data":"{\"x\":1}"}"#;
    let path = "/apps/4242/events";
    let q = oracle::signed_query(
        support::KEY,
        support::SECRET,
        "POST",
        path,
        support::now(),
        Some(body.as_bytes()),
        &[],
    );
    let raw = format!(
        "POST {path}?{q} HTTP/1.1\r\nHost: legacy.example\r\nContent-Type: application/json\r\n\
         X-Custom: kept\r\nUser-Agent: pusher-http-node/5.3.4\r\nConnection: keep-alive, X-Hop\r\n\
         X-Hop: dropped\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let a = support::raw_exchange(proxy.addr, raw.as_bytes()).await;
    assert_eq!(a.status.as_u16(), 200, "{}", a.text());
    assert_eq!(a.text(), r#"{"ok":true}"#);
    assert_eq!(
        a.headers.get("x-fake-upstream").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );

    let up = &fake.recorded()[0];
    assert_eq!(up.path, path);
    assert_eq!(up.query, q, "query forwarded byte for byte");
    assert_eq!(String::from_utf8_lossy(&up.body), body);
    assert_eq!(
        up.signature,
        Ok(()),
        "the client's own signature still verifies"
    );
    let header = |k: &str| {
        up.headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(header("x-custom").as_deref(), Some("kept"));
    assert_eq!(
        header("user-agent").as_deref(),
        Some("pusher-http-node/5.3.4")
    );
    assert_eq!(
        header("x-hop"),
        None,
        "headers named by Connection are hop-by-hop"
    );
    assert_eq!(
        header("host"),
        Some(fake.addr.to_string()),
        "Host is the upstream's"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn unknown_apps_and_unsigned_requests_pass_through() {
    let fake = support::fake().await;
    let proxy = TestProxy::for_upstream(&fake.url(), "", "").await;
    for (method, target) in [
        (Method::GET, "/apps/999/channels?filter_by_prefix=presence-"),
        (Method::DELETE, "/anything/else"),
        (Method::POST, "/apps/4242/channels/room/stats"),
        (Method::GET, "/apps/4242/channels/room/events"),
        (Method::GET, "/"),
    ] {
        let a = support::send(method.clone(), &format!("{}{target}", proxy.url()), &[], "").await;
        let up = fake.recorded().pop().expect("forwarded");
        assert_eq!(
            format!("{}?{}", up.path, up.query).trim_end_matches('?'),
            target
        );
        assert_eq!(up.method, method.as_str());
        // The fake refuses what it cannot verify; that verdict comes back as is.
        assert_eq!(a.status.as_u16(), 401, "{method} {target}: {}", a.text());
        assert!(a.text().contains("\"error\""), "{}", a.text());
    }
    proxy.stop().await;
}

/// Passthrough bodies stream, held to `max_body_bytes` (1 MiB by
/// default); answers are not limited.
#[tokio::test]
async fn passthrough_bodies_are_limited_answers_are_not() {
    let fake = support::fake().await;
    let proxy = TestProxy::for_upstream(&fake.url(), "", "").await;
    let fits = "x".repeat(900 * 1024);
    let a = support::send(
        Method::PUT,
        &format!("{}/upload", proxy.url()),
        &[],
        fits.clone(),
    )
    .await;
    assert_eq!(a.status.as_u16(), 401, "the fake's own verdict");
    assert_eq!(fake.recorded()[0].body.len(), fits.len());

    // A declared length over the limit is refused from the head alone.
    // (Only the head is sent: a client still writing a body the proxy will
    // not read can see its connection reset before it reads the answer.)
    let big = "x".repeat(3 * 1024 * 1024);
    let head = format!(
        "PUT /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        big.len()
    );
    let a = support::raw_exchange(proxy.addr, head.as_bytes()).await;
    assert_eq!(a.status.as_u16(), 413, "{}", a.text());
    assert_eq!(fake.recorded().len(), 1, "not forwarded");

    // Chunked, so no length is declared: cut while streaming.
    let mut stream = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    let head = "POST /apps/4242/events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    stream.write_all(head.as_bytes()).await.expect("head");
    let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "y".repeat(64 * 1024));
    for _ in 0..32 {
        if stream.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let a = tokio::time::timeout(
        support::REQUEST_TIMEOUT,
        support::read_response(&mut stream),
    )
    .await
    .expect("answered");
    assert_eq!(a.status.as_u16(), 413, "{}", a.text());

    fake.set(|b| b.fixed = Some((200, "text/plain", big.clone())));
    let a = support::send(Method::GET, &format!("{}/download", proxy.url()), &[], "").await;
    assert_eq!(a.status.as_u16(), 200);
    assert_eq!(a.body.len(), big.len());
    proxy.stop().await;
}

/// A chunked request body passes through (hyper re-frames it).
#[tokio::test]
async fn chunked_request_body() {
    let fake = support::fake().await;
    let proxy = TestProxy::for_upstream(&fake.url(), "", "").await;
    let raw = "POST /apps/4242/events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
               5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    let a = support::raw_exchange(proxy.addr, raw.as_bytes()).await;
    assert_eq!(a.status.as_u16(), 401);
    assert_eq!(&fake.recorded()[0].body[..], b"hello world");
    proxy.stop().await;
}

/// PyPI `pusher` ≥ 1.0 signs every GET with the MD5 of the empty body,
/// which sockudo (and this fake) refuse. For a configured app the proxy
/// verifies such a GET, drops `body_md5` and re-signs it (spec A.4).
#[tokio::test]
async fn get_with_empty_body_md5_is_verified_and_resigned() {
    let fake = support::fake().await;
    let proxy = TestProxy::for_upstream(&fake.url(), "", "").await;
    let path = "/apps/4242/channels/presence-room";
    let q = oracle::signed_query(
        support::KEY,
        support::SECRET,
        "GET",
        path,
        support::now(),
        Some(b""),
        &[("info", "user_count")],
    );
    let a = support::send(Method::GET, &format!("{}{path}?{q}", proxy.url()), &[], "").await;
    assert_eq!(a.status.as_u16(), 200, "{}", a.text());
    assert_eq!(a.text(), r#"{"cache":null,"occupied":true,"user_count":2}"#);
    let up = &fake.recorded()[0];
    assert_eq!(up.signature, Ok(()));
    assert_eq!(up.param("body_md5"), None);
    assert_eq!(
        up.param("info").as_deref(),
        Some("user_count"),
        "other parameters kept"
    );

    // A forged one is refused by the proxy and not forwarded.
    let forged = q.replace("auth_signature=", "auth_signature=0");
    let a = support::send(
        Method::GET,
        &format!("{}{path}?{forged}", proxy.url()),
        &[],
        "",
    )
    .await;
    assert_eq!(a.status.as_u16(), 401, "{}", a.text());
    assert_eq!(fake.recorded().len(), 1);

    // Unconfigured apps are not touched: the upstream's verdict comes back.
    let other = "/apps/999/channels/presence-room";
    let q = oracle::signed_query("k", "s", "GET", other, support::now(), Some(b""), &[]);
    let a = support::send(Method::GET, &format!("{}{other}?{q}", proxy.url()), &[], "").await;
    assert_eq!(a.status.as_u16(), 401);
    assert_eq!(fake.recorded()[1].query, q, "forwarded unchanged");
    proxy.stop().await;
}

/// A `Content-Length` with leading zeros, which hyper accepts, reaches the
/// upstream as the body's length, plainly written: a strict upstream would
/// refuse the caller's spelling; an empty POST's `0` is kept, as hyper
/// writes none for an empty body. (`5, 5` is refused here, 400.)
#[tokio::test]
async fn a_content_length_in_another_spelling_is_sent_plainly() {
    let fake = support::fake().await;
    let proxy = TestProxy::for_upstream(&fake.url(), "", "").await;
    for length in ["005", "0000000005"] {
        let raw = format!(
            "POST /apps/4242/events?x=1 HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\
             Connection: close\r\n\r\nhello"
        );
        let a = support::raw_exchange(proxy.addr, raw.as_bytes()).await;
        assert!(
            a.headers.contains_key("x-fake-upstream"),
            "{length}: {} {}",
            a.status,
            a.text()
        );
        let up = fake.recorded().pop().expect("forwarded");
        let sent: Vec<&[u8]> = up
            .headers
            .get_all("content-length")
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        assert_eq!(sent, vec![&b"5"[..]], "{length}");
        assert_eq!(&up.body[..], b"hello");
    }
    // An empty POST goes with `Content-Length: 0` (hyper writes none for
    // an empty body), as the caller's did.
    let raw = "POST /apps/4242/events?x=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\
               Connection: close\r\n\r\n";
    let a = support::raw_exchange(proxy.addr, raw.as_bytes()).await;
    assert!(a.headers.contains_key("x-fake-upstream"), "{}", a.text());
    let up = fake.recorded().pop().expect("forwarded");
    assert_eq!(
        up.headers.get("content-length").map(|v| v.as_bytes()),
        Some(&b"0"[..])
    );
    let raw = "POST /apps/4242/events?x=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\
               Connection: close\r\n\r\nhello";
    let a = support::raw_exchange(proxy.addr, raw.as_bytes()).await;
    assert_eq!(a.status.as_u16(), 400, "{}", a.text());
    proxy.stop().await;
}

/// Re-signing edge cases: a GET with a body (its length must not reach the
/// upstream), keys and values that need encoding (one that decodes to `&`
/// or `=` is refused: see `mapped_app_is_served_with_the_upstream_credentials`),
/// another key of the app (untouched), and an upstream refusing the proxy's
/// signature (500, not the caller's 401).
#[tokio::test]
async fn resigned_get_edges() {
    let fake = support::fake().await;
    let proxy = TestProxy::for_upstream(&fake.url(), "", "").await;
    let path = "/apps/4242/channels/presence-room";
    let now = support::now();

    let uri = support::signed_uri(
        support::KEY,
        support::SECRET,
        "GET",
        path,
        now,
        Some(b"hello"),
        &[("info", "user_count")],
    );
    let a = support::send(Method::GET, &format!("{}{uri}", proxy.url()), &[], "hello").await;
    assert_eq!(a.status.as_u16(), 200, "GET with a body: {}", a.text());
    let up = fake.recorded().pop().expect("forwarded");
    let length = up
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok());
    assert!(
        matches!(length, None | Some("0")),
        "content-length {length:?} reached the upstream"
    );
    assert!(up.body.is_empty());

    let uri = support::signed_uri(
        support::KEY,
        support::SECRET,
        "GET",
        path,
        now,
        Some(b""),
        &[("a b/c", "d e+f"), ("info", "user_count")],
    );
    let a = support::send(Method::GET, &format!("{}{uri}", proxy.url()), &[], "").await;
    assert_eq!(a.status.as_u16(), 200, "key needing encoding: {}", a.text());
    let up = fake.recorded().pop().expect("forwarded");
    assert_eq!(up.param("a b/c").as_deref(), Some("d e+f"));
    assert_eq!(up.signature, Ok(()));

    let q = oracle::signed_query(
        "another-key",
        "another-secret",
        "GET",
        path,
        now,
        Some(b""),
        &[],
    );
    let a = support::send(Method::GET, &format!("{}{path}?{q}", proxy.url()), &[], "").await;
    assert_eq!(
        a.status.as_u16(),
        401,
        "the fake refuses the unknown key itself"
    );
    assert_eq!(
        fake.recorded().pop().expect("forwarded").query,
        q,
        "forwarded untouched"
    );
    proxy.stop().await;

    let rotated = support::fake::FakeUpstream::start(
        &[(support::APP_ID, support::KEY, "rotated")],
        support::now,
    )
    .await;
    let proxy = TestProxy::for_upstream(&rotated.url(), "", "").await;
    let uri = support::signed_uri(
        support::KEY,
        support::SECRET,
        "GET",
        path,
        now,
        Some(b""),
        &[],
    );
    let a = support::send(Method::GET, &format!("{}{uri}", proxy.url()), &[], "").await;
    assert_eq!(a.status.as_u16(), 500, "{}", a.text());
    assert!(
        a.text().contains("pusher-cutover's signature"),
        "{}",
        a.text()
    );
    proxy.stop().await;
}

/// An upstream in raw HTTP/1.1 whose first connection sends an answer's
/// head and one byte of its ten, then stalls with the connection open;
/// every later connection answers `{}` whole. Returns its URL.
async fn stalling_first_answer() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let task = tokio::spawn(async move {
        let mut n = 0;
        while let Ok((mut stream, _)) = listener.accept().await {
            n += 1;
            let first = n == 1;
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while support::read_http_request(&mut stream, &mut buf)
                    .await
                    .is_some()
                {
                    buf.clear();
                    if first {
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 10\r\n\r\n{")
                            .await;
                        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                        return;
                    }
                    let answer =
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, task)
}

/// `upstream.timeout_ms` bounds the whole exchange, the streamed answer's
/// body included: an upstream that stalls mid-answer has the caller's
/// answer cut at the deadline, and the exchange's slot is free again, so
/// with `max_connections = 1` the next call is answered instead of waiting
/// for a slot that never comes back.
#[tokio::test]
async fn an_answer_stalled_mid_body_is_cut_at_the_deadline_and_frees_its_slot() {
    let (url, task) = stalling_first_answer().await;
    let proxy = TestProxy::for_upstream(
        &url,
        "max_connections = 1\ntimeout_ms = 500\nprotocol = \"http1\"",
        "",
    )
    .await;
    let body = r#"{"name":"ev","channels":["a"],"data":"{}"}"#;
    let target = |body: &str| {
        format!(
            "{}{}",
            proxy.url(),
            support::current_trigger_uri(body.as_bytes(), support::now())
        )
    };
    let started = std::time::Instant::now();
    let cut = support::try_send(Method::POST, &target(body), support::JSON, body.to_owned()).await;
    let err = cut.expect_err("the answer's body is cut, not completed");
    assert!(err.contains("body not read"), "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "cut at upstream.timeout_ms, not later: {:?}",
        started.elapsed()
    );
    let a = support::send(Method::POST, &target(body), support::JSON, body.to_owned()).await;
    assert_eq!(a.status.as_u16(), 200, "{}", a.text());
    assert_eq!(a.text(), "{}");
    proxy.stop().await;
    task.abort();
}
