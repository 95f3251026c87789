//! No starvation, every refusal visible: slow clients hold no upstream
//! slot and their time-outs are theirs; at the connection cap the
//! longest-idle connection makes room; idle keep-alive connections have a
//! timeout of their own; a truncated upstream body and a cut by the drain
//! deadline are recorded as what they are.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{self, TestProxy};

/// The fixture config with `top` as top-level keys and `upstream` in
/// `[upstream]`.
fn config(top: &str, upstream_url: &str, upstream: &str) -> String {
    format!(
        "{top}\n{}",
        support::config_toml(upstream_url, upstream, "")
    )
}

/// Reads until the peer closes or `limit` passes: whether it closed.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let mut buf = [0u8; 1024];
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

/// One request on `stream` and its answer, bounded.
async fn exchange(stream: &mut TcpStream, raw: &[u8]) -> support::Answer {
    stream.write_all(raw).await.expect("write");
    tokio::time::timeout(support::REQUEST_TIMEOUT, support::read_response(stream))
        .await
        .expect("answered")
}

const GET: &[u8] = b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n";

/// The head of a passthrough POST announcing a 9-byte body (`{"a":"b"}`).
const SLOW_HEAD: &[u8] =
    b"POST /apps/4242/slow HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n";

fn requests(text: &str, route: &str, outcome: &str) -> f64 {
    let series = format!(
        "pusher_cutover_requests_total{{app_id=\"4242\",route=\"{route}\",outcome=\"{outcome}\"}}"
    );
    support::metric(text, &series).unwrap_or(0.0)
}

/// What [`scripted_upstream`] does with one request.
struct Reply {
    /// How long it waits before answering.
    delay: Duration,
    /// What it writes.
    bytes: bytes::Bytes,
    /// Whether it closes the connection once written.
    close: bool,
}

/// `{}`, at once, on a connection kept open.
fn empty_object() -> Reply {
    Reply {
        delay: Duration::ZERO,
        bytes: bytes::Bytes::from_static(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"),
        close: false,
    }
}

/// A 200 whose body is `size` bytes of `x`, at once, on a connection kept
/// open.
fn sized(size: usize) -> Reply {
    let mut bytes = format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n").into_bytes();
    bytes.resize(bytes.len() + size, b'x');
    Reply {
        delay: Duration::ZERO,
        bytes: bytes.into(),
        close: false,
    }
}

/// An HTTP/1 upstream on loopback that answers each request as `reply`
/// says, given the number of its connection (from 0, in the order
/// accepted) and the request's bytes. A connection ends when its client
/// closes it, a write fails, or a reply closes it.
async fn scripted_upstream(
    reply: impl Fn(usize, &[u8]) -> Reply + Send + Sync + 'static,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let reply = Arc::new(reply);
    tokio::spawn(async move {
        let mut accepted = 0;
        while let Ok((mut s, _)) = listener.accept().await {
            let (reply, number) = (reply.clone(), accepted);
            accepted += 1;
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(len) = support::read_http_request(&mut s, &mut buf).await {
                    let Reply {
                        delay,
                        bytes,
                        close,
                    } = reply(number, &buf[..len]);
                    buf.drain(..len);
                    tokio::time::sleep(delay).await;
                    if s.write_all(&bytes).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_passthrough_bodies_hold_no_upstream_slot() {
    let fake = support::fake().await;
    // Two upstream slots; a request waiting for one gives up after 2 s.
    let proxy = TestProxy::start(
        &config(
            "body_timeout_ms = 60000",
            &fake.url(),
            "max_connections = 2\ntimeout_ms = 2000",
        ),
        Arc::new(pusher_cutover::SystemClock),
    )
    .await;
    // Two clients that announce a body and send one byte of it.
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
        s.write_all(SLOW_HEAD).await.expect("head");
        s.write_all(b"{").await.expect("first byte");
        slow.push(s);
    }
    // Time for the proxy to take both heads (setup, not a measurement).
    tokio::time::sleep(Duration::from_millis(300)).await;

    let body = br#"{"n":1}"#;
    let uri = support::legacy_trigger_uri("room", &[("name", "ev")], body, support::now());
    let a = support::send(
        Method::POST,
        &format!("{}{uri}", proxy.url()),
        &[],
        &body[..],
    )
    .await;
    assert_eq!(a.status.as_u16(), 202, "{}", a.text());

    // The slow clients are still mid-body: nothing answered them yet, and
    // nothing of theirs went upstream.
    for s in &slow {
        let mut buf = [0u8; 64];
        assert!(
            matches!(s.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "a slow client was answered before its body was complete"
        );
    }
    assert!(
        fake.recorded().iter().all(|r| r.path != "/apps/4242/slow"),
        "a passthrough body went upstream before it was complete"
    );
    // Once their bodies are complete, they are forwarded whole.
    for s in &mut slow {
        s.write_all(br#""a":"b"}"#).await.expect("rest of the body");
        let a = tokio::time::timeout(support::REQUEST_TIMEOUT, support::read_response(s))
            .await
            .expect("answered");
        assert_eq!(a.status.as_u16(), 401, "the fake's verdict: {}", a.text());
    }
    let forwarded: Vec<_> = fake
        .recorded()
        .into_iter()
        .filter(|r| r.path == "/apps/4242/slow")
        .collect();
    assert_eq!(forwarded.len(), 2);
    assert!(forwarded.iter().all(|r| &r.body[..] == br#"{"a":"b"}"#));
    proxy.stop().await;
}

#[tokio::test]
async fn a_slow_body_is_the_clients_408() {
    let fake = support::fake().await;
    let proxy = TestProxy::start(
        &config("body_timeout_ms = 300", &fake.url(), "timeout_ms = 2000"),
        Arc::new(pusher_cutover::SystemClock),
    )
    .await;
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    s.write_all(SLOW_HEAD).await.expect("head");
    s.write_all(b"{").await.expect("first byte");
    let a = tokio::time::timeout(support::REQUEST_TIMEOUT, support::read_response(&mut s))
        .await
        .expect("answered");
    assert_eq!(a.status.as_u16(), 408, "{}", a.text());
    assert!(a.text().contains("did not arrive in time"), "{}", a.text());
    assert!(
        fake.recorded().is_empty(),
        "nothing of an incomplete body goes upstream"
    );
    let text = proxy.metrics().await;
    assert_eq!(
        requests(&text, "passthrough", "client_error"),
        1.0,
        "{text}"
    );
    assert_eq!(requests(&text, "passthrough", "upstream_error"), 0.0);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_the_longest_idle_connection_makes_room() {
    let fake = support::fake().await;
    let proxy = TestProxy::start(
        // A head time-out long enough not to free a slot meanwhile.
        &config(
            "max_connections = 2\nheader_timeout_ms = 60000",
            &fake.url(),
            "",
        ),
        Arc::new(pusher_cutover::SystemClock),
    )
    .await;
    // Two keep-alive connections, idle since their answers: `oldest` first.
    let mut oldest = TcpStream::connect(proxy.addr).await.expect("connect");
    assert_eq!(exchange(&mut oldest, GET).await.status.as_u16(), 401);
    let mut newer = TcpStream::connect(proxy.addr).await.expect("connect");
    assert_eq!(exchange(&mut newer, GET).await.status.as_u16(), 401);

    // A third client is served at once, in the slot of the longest idle.
    let mut third = TcpStream::connect(proxy.addr).await.expect("connect");
    assert_eq!(exchange(&mut third, GET).await.status.as_u16(), 401);
    assert!(
        closed_within(&mut oldest, Duration::from_secs(5)).await,
        "the longest-idle connection was not closed"
    );
    // The newer idle connection was left alone.
    assert_eq!(exchange(&mut newer, GET).await.status.as_u16(), 401);
    let text = proxy.metrics().await;
    assert_eq!(
        support::metric(
            &text,
            r#"pusher_cutover_connection_errors_total{kind="idle_evicted"}"#
        ),
        Some(1.0),
        "{text}"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_have_their_own_timeout() {
    let fake = support::fake().await;
    // A short head time-out does not cut an idle keep-alive connection...
    let proxy = TestProxy::start(
        &config(
            "header_timeout_ms = 200\nkeepalive_timeout_ms = 60000",
            &fake.url(),
            "",
        ),
        Arc::new(pusher_cutover::SystemClock),
    )
    .await;
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    assert_eq!(exchange(&mut s, GET).await.status.as_u16(), 401);
    assert!(
        !closed_within(&mut s, Duration::from_millis(800)).await,
        "an idle connection was cut by header_timeout_ms"
    );
    assert_eq!(exchange(&mut s, GET).await.status.as_u16(), 401);
    // ...while a head that does not arrive in time still is.
    let mut dripper = TcpStream::connect(proxy.addr).await.expect("connect");
    dripper
        .write_all(b"GET /x HTTP/1.1\r\n")
        .await
        .expect("write");
    assert!(
        closed_within(&mut dripper, Duration::from_secs(5)).await,
        "an incomplete head outlived header_timeout_ms"
    );
    // A later request's head on a kept-alive connection is bounded by
    // header_timeout_ms from its first byte, not by the idle time-out.
    let mut kept = TcpStream::connect(proxy.addr).await.expect("connect");
    assert_eq!(exchange(&mut kept, GET).await.status.as_u16(), 401);
    tokio::time::sleep(Duration::from_millis(300)).await;
    kept.write_all(b"GET /x HTTP/1.1\r\n").await.expect("write");
    assert!(
        closed_within(&mut kept, Duration::from_secs(5)).await,
        "a second request's incomplete head outlived header_timeout_ms"
    );
    proxy.stop().await;

    // ...and keepalive_timeout_ms closes it.
    let proxy = TestProxy::start(
        &config(
            "header_timeout_ms = 60000\nkeepalive_timeout_ms = 200",
            &fake.url(),
            "",
        ),
        Arc::new(pusher_cutover::SystemClock),
    )
    .await;
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    assert_eq!(exchange(&mut s, GET).await.status.as_u16(), 401);
    assert!(
        closed_within(&mut s, Duration::from_secs(5)).await,
        "an idle keep-alive connection outlived keepalive_timeout_ms"
    );
    proxy.stop().await;
}

/// A client that never reads its answer holds its upstream slot (through
/// the answer's body) only until its request's time is up: the head's,
/// the body's and the upstream's, and a second to write the answer (not
/// the upstream's time once more, which only a legacy trigger that waited
/// in its app's queue has). Then its connection is closed, counted and
/// logged, and the slot serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_its_answer_holds_no_slot_past_its_time() {
    support::capture_logs();
    // Its first connection's first answer has a 64 MiB body, far more than
    // the sockets and buffers between it and a client can hold; every
    // other answer is `{}`.
    let large = sized(64 << 20).bytes;
    let upstream = scripted_upstream(move |connection, _| match connection {
        0 => Reply {
            delay: Duration::ZERO,
            bytes: large.clone(),
            close: true,
        },
        _ => empty_object(),
    })
    .await;
    // One upstream slot; 300 ms for a head and a body each, 1 s for an
    // exchange: a request's answer must be written 2.6 s after its head
    // began (3.6 s for a queued trigger's).
    let proxy = TestProxy::start(
        &config(
            "header_timeout_ms = 300\nbody_timeout_ms = 300",
            &format!("http://{upstream}"),
            "max_connections = 1\ntimeout_ms = 1000",
        ),
        Arc::new(pusher_cutover::SystemClock),
    )
    .await;
    assert_eq!(
        support::metric(
            &proxy.metrics().await,
            r#"pusher_cutover_connection_errors_total{kind="answer_timeout"}"#
        ),
        Some(0.0),
        "present from startup"
    );
    let started = tokio::time::Instant::now();
    let mut stalled = TcpStream::connect(proxy.addr).await.expect("connect");
    stalled
        .write_all(b"GET /apps/4242/channels HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("request");
    // Its answer's body holds the one slot: another call waits for it, and
    // is answered 504 when its own time is up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let other_url = format!("{}/apps/4242/channels/other", proxy.url());
    let other = || support::send(Method::GET, &other_url, &[], "");
    let a = other().await;
    assert_eq!(a.status.as_u16(), 504, "the slot is held: {}", a.text());
    // Past the stalled request's time, its connection is closed and the
    // slot free.
    tokio::time::sleep_until(started + Duration::from_millis(3100)).await;
    // Cut at 2.6 s, counted by now (not at 3.6 s, a queued trigger's time).
    let metrics = proxy.metrics().await;
    assert_eq!(
        support::metric(
            &metrics,
            r#"pusher_cutover_connection_errors_total{kind="answer_timeout"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
    let a = other().await;
    assert_eq!(
        a.status.as_u16(),
        200,
        "the slot serves again: {}",
        a.text()
    );
    assert_eq!(a.text(), "{}");
    assert!(
        closed_within(&mut stalled, Duration::from_secs(5)).await,
        "the stalled client's connection is closed"
    );
    assert_eq!(
        support::log_lines(&["answer_timeout", "connection closed"])
            .await
            .len(),
        1
    );
    proxy.stop().await;
}

/// A client that pipelines requests and never reads: once an answer is
/// handed to the connection, the connection is idle with its bytes still
/// to write. Asked to close (its keep-alive time is up, or the cap wants
/// its place), it has a second to write them; then it is cut, counted
/// and logged, and its place serves a new client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closing_connection_whose_client_does_not_read_is_cut() {
    support::capture_logs();
    let upstream = scripted_upstream(|_, _| sized(256 << 10)).await;
    let proxy = TestProxy::start(
        &config(
            "max_connections = 1\nkeepalive_timeout_ms = 300\nheader_timeout_ms = 300\nbody_timeout_ms = 300",
            &format!("http://{upstream}"),
            "timeout_ms = 300",
        ),
        Arc::new(pusher_cutover::SystemClock),
    )
    .await;
    // A small receive window, and 16 MiB of answers asked for: far more
    // than the sockets between the proxy and the client hold.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(2048).expect("buffer size");
    let mut stalled = socket.connect(proxy.addr).await.expect("connect");
    let pipelined = b"GET /apps/4242/channels HTTP/1.1\r\nHost: x\r\n\r\n".repeat(64);
    stalled.write_all(&pipelined).await.expect("requests");
    // The only place is held until the stalled connection is cut: a new
    // client is served once it is.
    let url = format!("{}/apps/4242/channels/other", proxy.url());
    let served = tokio::time::timeout(
        Duration::from_secs(8),
        support::send(Method::GET, &url, &[], ""),
    )
    .await;
    let served = served.expect("a new client is served once the stalled connection is cut");
    assert_eq!(served.status.as_u16(), 200, "{}", served.text());
    assert!(
        closed_within(&mut stalled, Duration::from_secs(5)).await,
        "the stalled client's connection is closed"
    );
    assert_eq!(
        support::log_lines(&["answer_timeout", "connection cut"])
            .await
            .len(),
        1
    );
    proxy.stop().await;
}

/// A request's time to have its answer taken is that of the
/// configuration in force: a reload that gives requests more time gives
/// it to connections opened before it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_gives_requests_more_time_gives_it_to_open_connections() {
    // Answers `{}`: at once to a path ending in `/fast`, else after 2.2 s.
    let upstream = scripted_upstream(|_, request| {
        let fast = request.windows(10).any(|w| w == b"/fast HTTP");
        Reply {
            delay: Duration::from_millis(if fast { 0 } else { 2200 }),
            ..empty_object()
        }
    })
    .await;
    let top = "header_timeout_ms = 300\nbody_timeout_ms = 300";
    let url = format!("http://{upstream}");
    // 1.9 s for a request's answer to be taken.
    let file = support::ConfigFile::new(&config(top, &url, "timeout_ms = 300"));
    let proxy = TestProxy::start_file(file.path()).await;
    // A connection served before the reload.
    let mut open = TcpStream::connect(proxy.addr).await.expect("connect");
    let a = exchange(
        &mut open,
        b"GET /apps/4242/channels/fast HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert_eq!(a.status.as_u16(), 200, "{}", a.text());
    // 6.6 s.
    file.write(&config(top, &url, "timeout_ms = 5000"));
    let reloaded = proxy.reload().await;
    assert_eq!(reloaded.status.as_u16(), 200, "{}", reloaded.text());
    let a = exchange(
        &mut open,
        b"GET /apps/4242/channels HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert_eq!(a.status.as_u16(), 200, "{}", a.text());
    assert_eq!(a.text(), "{}");
    proxy.stop().await;
}

#[tokio::test]
async fn a_truncated_upstream_body_is_an_upstream_error() {
    support::capture_logs();
    // A 200 announcing 100 bytes of body, then the connection closed
    // after 10.
    let upstream = scripted_upstream(|_, _| Reply {
        delay: Duration::ZERO,
        bytes: bytes::Bytes::from_static(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
        ),
        close: true,
    })
    .await;
    let proxy = TestProxy::start(
        &config("", &format!("http://{upstream}"), ""),
        Arc::new(pusher_cutover::SystemClock),
    )
    .await;
    let target = "/apps/4242/channels/truncated-marker";
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    // The user agent tells this request's line from other tests'.
    let raw =
        format!("GET {target} HTTP/1.1\r\nHost: x\r\nUser-Agent: truncated-body-test\r\n\r\n");
    s.write_all(raw.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 1024];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(support::REQUEST_TIMEOUT, read)
        .await
        .expect("the connection ends");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.ends_with("0123456789"),
        "the caller got a cut body: {text}"
    );

    // The answer is recorded once hyper has seen its body end, which may
    // come just after the caller read the last byte: wait for it (bounded).
    let mut text = proxy.metrics().await;
    for _ in 0..50 {
        if requests(&text, "passthrough", "upstream_error") >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        text = proxy.metrics().await;
    }
    assert_eq!(
        requests(&text, "passthrough", "upstream_error"),
        1.0,
        "{text}"
    );
    assert_eq!(requests(&text, "passthrough", "ok"), 0.0, "{text}");
    let lines = support::log_lines(&[
        "route=\"passthrough\"",
        "app_id=\"4242\"",
        "status=200",
        "truncated-body-test",
    ])
    .await;
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].contains("ERROR") && lines[0].contains("upstream response body failed"),
        "{}",
        lines[0]
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_by_the_drain_deadline_is_logged_as_such() {
    support::capture_logs();
    let fake = support::fake().await;
    fake.set(|b| b.delay = Duration::from_secs(5));
    let mut proxy = TestProxy::start(
        &config("shutdown_grace_ms = 300", &fake.url(), "timeout_ms = 20000"),
        Arc::new(pusher_cutover::SystemClock),
    )
    .await;
    let body = br#"{"n":1}"#;
    let uri =
        support::legacy_trigger_uri("room", &[("name", "drain-cut-ev")], body, support::now());
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    let peer = s.local_addr().expect("local addr").to_string();
    let raw = format!(
        "POST {uri} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(raw.as_bytes()).await.expect("head");
    s.write_all(body).await.expect("body");
    // The trigger is in flight once the fake has it.
    let deadline = tokio::time::Instant::now() + support::REQUEST_TIMEOUT;
    while fake.recorded().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the trigger never went upstream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.begin_shutdown();
    assert!(
        closed_within(&mut s, Duration::from_secs(5)).await,
        "the connection outlived the grace period"
    );
    proxy.stop().await;

    let lines = support::log_lines(&["event=\"drain-cut-ev\""]).await;
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].contains("cut by the drain deadline") && !lines[0].contains("client closed"),
        "{}",
        lines[0]
    );
    let lines = support::log_lines(&["connection cut by the drain deadline", &peer]).await;
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains("drain_deadline"), "{}", lines[0]);
}
