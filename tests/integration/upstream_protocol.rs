//! `upstream.protocol`: HTTP/2 with prior knowledge (h2c) multiplexed over
//! few connections, HTTP/1.1 otherwise on `http://`, and which failed
//! requests are sent again (only those the upstream provably did not
//! process).
//!
//! The upstream here is a front on a loopback port that speaks HTTP/2
//! (the `h2` crate, so it can refuse a stream) or HTTP/1.1, counts its
//! connections, notes each request's HTTP version, and hands every request
//! it serves to the fake upstream of `tests/support/fake.rs`, which checks
//! its signature independently. Some fronts misbehave on purpose (refuse a
//! stream, say GOAWAY, drop a connection after a request was sent).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{self, APP_ID, TestProxy, fake::FakeUpstream};

/// What a front does with a connection, by its number (0 first).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Conduct {
    /// Serve every request (HTTP/2 or HTTP/1.1, as the client speaks).
    Serve,
    /// HTTP/2: refuse the connection's first stream (`REFUSED_STREAM`),
    /// serve the rest.
    RefuseFirstStream,
    /// HTTP/2: refuse the connection's first stream 1.85 s after it came,
    /// serve the rest.
    RefuseFirstStreamLate,
    /// HTTP/2, raw frames: on the first request's HEADERS, say GOAWAY with
    /// last stream id 0 (none processed) and close.
    GoAwayBelow,
    /// HTTP/2, raw frames: on the first request's HEADERS, say GOAWAY
    /// (`INTERNAL_ERROR`) with last stream id 1, the request's own (it may
    /// have been processed), and close.
    GoAwayAtTheStream,
    /// HTTP/2: read the first request whole, then drop the connection
    /// without answering.
    DropAfterRequest,
    /// HTTP/2: serve the first request, then go silent with the connection
    /// open: nothing more is read or answered, PINGs included (a peer gone
    /// behind a firewall that drops the flow).
    SilentAfterFirst,
    /// HTTP/2 with one stream at a time: hold the first request's answer
    /// while the next request waits for a stream, then say GOAWAY
    /// (graceful), answer the first and close.
    GoAwayWithAStreamWaiting,
    /// HTTP/2 in raw frames, one stream at a time: hold the first request
    /// while the next waits for a stream, then drain as load balancers do
    /// (GOAWAY with the largest stream id, no PING), answer the first and
    /// process the next request that arrives whole.
    DrainWithAStreamWaiting,
    /// The same, but the GOAWAY is an error (`ENHANCE_YOUR_CALM`) naming
    /// the first stream as the last processed.
    FailWithAStreamWaiting,
}

#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    /// Requests (streams) that reached the front, served or not.
    requests: AtomicUsize,
    /// Request heads (`HEADERS` frames) the draining front received.
    heads: AtomicUsize,
    versions: Mutex<Vec<Version>>,
    /// Each served request's `Host` (HTTP/1.1) or `:authority` (HTTP/2).
    authorities: Mutex<Vec<String>>,
}

/// An upstream front on a loopback port, in front of a fake.
struct Front {
    url: String,
    seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Front {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Front {
    /// A front whose connection `n` is handled as `conduct(n)`, serving
    /// through `fake`.
    async fn start(
        fake: &FakeUpstream,
        conduct: impl Fn(usize) -> Conduct + Copy + Send + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind front");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let seen = Arc::new(Seen::default());
        let backend = fake.url();
        let shared = seen.clone();
        let task = tokio::spawn(async move {
            let client: Client<HttpConnector, Full<Bytes>> =
                Client::builder(TokioExecutor::new()).build_http();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let n = shared.connections.fetch_add(1, Ordering::SeqCst);
                let (seen, client, backend) = (shared.clone(), client.clone(), backend.clone());
                tokio::spawn(async move {
                    match conduct(n) {
                        Conduct::GoAwayBelow => go_away_on_head(stream, &seen, go_away(0, 0)).await,
                        Conduct::GoAwayAtTheStream => {
                            go_away_on_head(stream, &seen, go_away(1, 2)).await
                        }
                        Conduct::DrainWithAStreamWaiting => {
                            drain_with_a_stream_waiting(stream, &seen, go_away(0x7fff_ffff, 0))
                                .await
                        }
                        Conduct::FailWithAStreamWaiting => {
                            drain_with_a_stream_waiting(stream, &seen, go_away(1, 0xb)).await
                        }
                        Conduct::GoAwayWithAStreamWaiting => {
                            go_away_with_a_stream_waiting(stream, seen, client, backend).await
                        }
                        conduct if is_h2(&stream).await => {
                            serve_h2(stream, conduct, seen, client, backend).await
                        }
                        _ => serve_h1(stream, seen, client, backend).await,
                    }
                });
            }
        });
        Self { url, seen, task }
    }

    /// A front whose first connection is handled as `first` and every
    /// later one served.
    async fn first_then_serve(fake: &FakeUpstream, first: Conduct) -> Self {
        Self::start(fake, move |n| if n == 0 { first } else { Conduct::Serve }).await
    }

    fn connections(&self) -> usize {
        self.seen.connections.load(Ordering::SeqCst)
    }

    fn requests(&self) -> usize {
        self.seen.requests.load(Ordering::SeqCst)
    }

    fn heads(&self) -> usize {
        self.seen.heads.load(Ordering::SeqCst)
    }

    fn versions(&self) -> Vec<Version> {
        self.seen.versions.lock().expect("lock").clone()
    }

    fn authorities(&self) -> Vec<String> {
        self.seen.authorities.lock().expect("lock").clone()
    }
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether the client opened with the HTTP/2 connection preface.
async fn is_h2(stream: &TcpStream) -> bool {
    let mut head = [0u8; PREFACE.len()];
    for _ in 0..100 {
        match stream.peek(&mut head).await {
            Ok(n) if n >= PREFACE.len() || !PREFACE.starts_with(&head[..n]) => break,
            Ok(0) | Err(_) => return false,
            Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    head == PREFACE
}

/// Passes one request on to the fake (over HTTP/1.1) and returns its
/// answer.
async fn forward(
    client: &Client<HttpConnector, Full<Bytes>>,
    backend: &str,
    parts: hyper::http::request::Parts,
    body: Bytes,
) -> Response<Bytes> {
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = parts.method;
    *req.uri_mut() = format!("{backend}{target}").parse().expect("uri");
    for (name, value) in &parts.headers {
        if name != hyper::header::HOST {
            req.headers_mut().append(name, value.clone());
        }
    }
    let resp = client.request(req).await.expect("fake answers");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("fake body").to_bytes();
    Response::from_parts(parts, body)
}

async fn serve_h1(
    stream: TcpStream,
    seen: Arc<Seen>,
    client: Client<HttpConnector, Full<Bytes>>,
    backend: String,
) {
    let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let (seen, client, backend) = (seen.clone(), client.clone(), backend.clone());
        async move {
            seen.requests.fetch_add(1, Ordering::SeqCst);
            seen.versions.lock().expect("lock").push(req.version());
            let host = req.headers().get(hyper::header::HOST);
            seen.authorities
                .lock()
                .expect("lock")
                .push(host.and_then(|h| h.to_str().ok()).unwrap_or("").to_owned());
            let (parts, body) = req.into_parts();
            let body = body.collect().await?.to_bytes();
            let resp = forward(&client, &backend, parts, body).await;
            Ok::<_, hyper::Error>(resp.map(Full::new))
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), svc)
        .await;
}

async fn serve_h2(
    stream: TcpStream,
    conduct: Conduct,
    seen: Arc<Seen>,
    client: Client<HttpConnector, Full<Bytes>>,
    backend: String,
) {
    let Ok(mut conn) = h2::server::handshake(stream).await else {
        return;
    };
    let mut streams = 0;
    loop {
        let accepted = if conduct == Conduct::SilentAfterFirst && streams == 1 {
            // The first answer goes out while the connection is polled a
            // little longer; then it is held, never polled again.
            let _ = tokio::time::timeout(Duration::from_millis(150), conn.accept()).await;
            tokio::time::sleep(Duration::from_secs(30)).await;
            return;
        } else {
            conn.accept().await
        };
        let Some(Ok((req, mut respond))) = accepted else {
            return;
        };
        streams += 1;
        seen.requests.fetch_add(1, Ordering::SeqCst);
        seen.versions.lock().expect("lock").push(req.version());
        seen.authorities.lock().expect("lock").push(
            req.uri()
                .authority()
                .map_or(String::new(), |a| a.as_str().to_owned()),
        );
        if conduct == Conduct::RefuseFirstStream && streams == 1 {
            respond.send_reset(h2::Reason::REFUSED_STREAM);
            continue;
        }
        if conduct == Conduct::RefuseFirstStreamLate && streams == 1 {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(1850)).await;
                respond.send_reset(h2::Reason::REFUSED_STREAM);
            });
            continue;
        }
        let (parts, mut body) = req.into_parts();
        if conduct == Conduct::DropAfterRequest {
            // The body's frames arrive only while the connection is polled:
            // poll it beside the body, or a body sent after its headers (in
            // a write of its own) never comes.
            loop {
                let got = tokio::select! {
                    chunk = body.data() => chunk.and_then(Result::ok).map(|c| c.len()),
                    _ = std::future::poll_fn(|cx| conn.poll_closed(cx)) => None,
                };
                match got {
                    Some(len) => {
                        let _ = body.flow_control().release_capacity(len);
                    }
                    None => break,
                }
            }
            // The whole request has arrived; the connection goes, unanswered.
            return;
        }
        let req = Request::from_parts(parts, body);
        tokio::spawn(answer_stream(req, respond, client.clone(), backend.clone()));
    }
}

/// Reads an HTTP/2 stream's request whole, passes it on to the fake and
/// sends the fake's answer back on the stream.
async fn answer_stream(
    req: Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    client: Client<HttpConnector, Full<Bytes>>,
    backend: String,
) {
    let (parts, mut body) = req.into_parts();
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let Ok(chunk) = chunk else { return };
        let _ = body.flow_control().release_capacity(chunk.len());
        buf.extend_from_slice(&chunk);
    }
    let resp = forward(&client, &backend, parts, buf.freeze()).await;
    let (parts, body) = resp.into_parts();
    let mut head = Response::new(());
    *head.status_mut() = parts.status;
    if let Some(ct) = parts.headers.get(hyper::header::CONTENT_TYPE) {
        head.headers_mut()
            .insert(hyper::header::CONTENT_TYPE, ct.clone());
    }
    if let Ok(mut send) = respond.send_response(head, body.is_empty())
        && !body.is_empty()
    {
        let _ = send.send_data(body, true);
    }
}

/// HTTP/2 allowing one stream at a time (`SETTINGS_MAX_CONCURRENT_STREAMS`
/// 1): holds the first request's answer for 400 ms, in which the next
/// request on the connection waits for a stream and is not sent; then
/// says GOAWAY gracefully (NO_ERROR; h2 names the first stream as the last
/// one processed once its PING comes back), answers the first request
/// and closes. A stream opened all the same is counted and refused.
async fn go_away_with_a_stream_waiting(
    stream: TcpStream,
    seen: Arc<Seen>,
    client: Client<HttpConnector, Full<Bytes>>,
    backend: String,
) {
    let handshake = h2::server::Builder::new()
        .max_concurrent_streams(1)
        .handshake(stream)
        .await;
    let Ok(mut conn) = handshake else {
        return;
    };
    let Some(Ok((req, respond))) = conn.accept().await else {
        return;
    };
    seen.requests.fetch_add(1, Ordering::SeqCst);
    seen.versions.lock().expect("lock").push(req.version());
    // The connection is polled meanwhile, so that the next request finds
    // the one stream taken.
    if let Ok(Some(Ok((_, mut refused)))) =
        tokio::time::timeout(Duration::from_millis(400), conn.accept()).await
    {
        seen.requests.fetch_add(1, Ordering::SeqCst);
        refused.send_reset(h2::Reason::REFUSED_STREAM);
    }
    conn.graceful_shutdown();
    let answer = tokio::spawn(async move {
        // After the final GOAWAY (one PING's round trip on loopback).
        tokio::time::sleep(Duration::from_millis(100)).await;
        answer_stream(req, respond, client, backend).await;
    });
    while let Some(next) = conn.accept().await {
        if let Ok((_, mut refused)) = next {
            seen.requests.fetch_add(1, Ordering::SeqCst);
            refused.send_reset(h2::Reason::REFUSED_STREAM);
        }
    }
    let _ = answer.await;
}

/// An HTTP/2 server in raw frames: settles the settings, and on the first
/// HEADERS frame says `goaway` (last stream id 0: the stream was not
/// processed; its own id: it may have been). Then closes.
async fn go_away_on_head(mut stream: TcpStream, seen: &Seen, goaway: Vec<u8>) {
    let mut preface = [0u8; PREFACE.len()];
    if stream.read_exact(&mut preface).await.is_err() || preface != PREFACE {
        return;
    }
    // Our (empty) SETTINGS.
    let _ = stream.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await;
    loop {
        let mut header = [0u8; 9];
        if stream.read_exact(&mut header).await.is_err() {
            return;
        }
        let len =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let mut payload = vec![0u8; len];
        if stream.read_exact(&mut payload).await.is_err() {
            return;
        }
        match (header[3], header[4] & 1) {
            // SETTINGS, not an ACK: acknowledge it.
            (4, 0) => {
                let _ = stream.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0]).await;
            }
            // HEADERS: the GOAWAY, then close.
            (1, _) => {
                seen.requests.fetch_add(1, Ordering::SeqCst);
                let _ = stream.write_all(&goaway).await;
                let _ = stream.flush().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                return;
            }
            _ => {}
        }
    }
}

/// One HTTP/2 frame: its type, flags and stream id (its payload, when
/// the front needs it).
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

async fn read_frame(stream: &mut TcpStream) -> Option<Frame> {
    let mut header = [0u8; 9];
    stream.read_exact(&mut header).await.ok()?;
    let len = usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await.ok()?;
    let id = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
    Some(Frame {
        kind: header[3],
        flags: header[4],
        stream: id,
        payload,
    })
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len())
        .expect("short payload")
        .to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// `HEADERS` that end stream `stream`: `:status: 200` (HPACK static
/// index 8).
fn ok_answer(stream: u32) -> Vec<u8> {
    frame(1, 0x1 | 0x4, stream, &[0x88])
}

/// `GOAWAY` naming `last` as the last stream processed, with error code
/// `code` (0: `NO_ERROR`).
fn go_away(last: u32, code: u32) -> Vec<u8> {
    let mut payload = last.to_be_bytes().to_vec();
    payload.extend_from_slice(&code.to_be_bytes());
    frame(7, 0, 0, &payload)
}

/// An HTTP/2 server in raw frames that allows one stream at a time and
/// drains as load balancers do. It holds the first request for 400 ms (the
/// next one waits for a stream meanwhile). Then it says `goaway` (to drain:
/// GOAWAY with the largest stream id and no PING; RFC 9113 section 6.8:
/// streams on their way are still processed), and answers the first
/// request. The next request that arrives whole (its stream ended) is
/// processed and answered, and a final GOAWAY follows. Every request head
/// is counted (`heads`), every whole request too (`requests`).
async fn drain_with_a_stream_waiting(mut stream: TcpStream, seen: &Seen, goaway: Vec<u8>) {
    let mut preface = [0u8; PREFACE.len()];
    if stream.read_exact(&mut preface).await.is_err() || preface != PREFACE {
        return;
    }
    // SETTINGS_MAX_CONCURRENT_STREAMS = 1.
    let _ = stream.write_all(&frame(4, 0, 0, &[0, 3, 0, 0, 0, 1])).await;
    let mut drain_at = None;
    let mut whole = 0;
    loop {
        let next = match drain_at {
            Some(at) => match tokio::time::timeout_at(at, read_frame(&mut stream)).await {
                Ok(next) => next,
                Err(_) => {
                    drain_at = None;
                    let mut out = goaway.clone();
                    out.extend(ok_answer(1));
                    let _ = stream.write_all(&out).await;
                    continue;
                }
            },
            None => read_frame(&mut stream).await,
        };
        let Some(f) = next else { return };
        match (f.kind, f.flags & 0x1) {
            // SETTINGS or PING, not an ACK: acknowledge it.
            (4, 0) => {
                let _ = stream.write_all(&frame(4, 1, 0, &[])).await;
            }
            (6, 0) => {
                let _ = stream.write_all(&frame(6, 1, 0, &f.payload)).await;
            }
            _ => {}
        }
        if f.kind == 1 {
            seen.heads.fetch_add(1, Ordering::SeqCst);
        }
        // A request is whole when its HEADERS or DATA end the stream.
        if !matches!(f.kind, 0 | 1) || f.flags & 0x1 == 0 {
            continue;
        }
        seen.requests.fetch_add(1, Ordering::SeqCst);
        whole += 1;
        if whole == 1 {
            drain_at = Some(tokio::time::Instant::now() + Duration::from_millis(400));
        } else {
            let mut out = ok_answer(f.stream);
            out.extend(go_away(f.stream, 0));
            let _ = stream.write_all(&out).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            return;
        }
    }
}

/// A proxy for the fixture app in front of `url` with two workers and
/// `protocol` (none: the default).
/// A proxy to `url` speaking `protocol`, with coalescing off
/// (`batch_max = 1`): these tests count one upstream request per trigger.
/// Coalesced triggers over h2c are the e2e suite's (tests/e2e/coalesce.rs).
async fn proxy(url: &str, protocol: Option<&str>) -> TestProxy {
    let protocol = protocol.map_or(String::new(), |p| format!("protocol = \"{p}\"\n"));
    let toml = format!(
        "listen = \"127.0.0.1:0\"\nworkers = 2\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstream]\nurl = \"{url}\"\nmax_connections = 64\nbatch_max = 1\n{protocol}\
         [[apps]]\nid = \"{APP_ID}\"\nkey = \"{}\"\nsecret = \"{}\"\n",
        support::KEY,
        support::SECRET,
    );
    TestProxy::start(&toml, Arc::new(pusher_cutover::SystemClock)).await
}

/// A proxy to `url` with one worker (so every exchange takes the same
/// upstream pool, and over HTTP/2 the same connection) and `upstream`'s
/// lines in `[upstream]`.
async fn one_worker_proxy(url: &str, upstream: &str) -> TestProxy {
    let toml = format!(
        "listen = \"127.0.0.1:0\"\nworkers = 1\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstream]\nurl = \"{url}\"\n{upstream}\n\
         [[apps]]\nid = \"{APP_ID}\"\nkey = \"{}\"\nsecret = \"{}\"\n",
        support::KEY,
        support::SECRET,
    );
    TestProxy::start(&toml, Arc::new(pusher_cutover::SystemClock)).await
}

async fn legacy_trigger(proxy: &TestProxy, channel: &str, data: &str) -> support::Answer {
    let uri =
        support::legacy_trigger_uri(channel, &[("name", "ev")], data.as_bytes(), support::now());
    support::send(
        Method::POST,
        &format!("{}{uri}", proxy.url()),
        support::JSON,
        data.to_owned(),
    )
    .await
}

async fn current_trigger(proxy: &TestProxy, channel: &str) -> support::Answer {
    let body = format!(r#"{{"name":"ev","channels":["{channel}"],"data":"{{}}"}}"#);
    let uri = support::current_trigger_uri(body.as_bytes(), support::now());
    support::send(
        Method::POST,
        &format!("{}{uri}", proxy.url()),
        support::JSON,
        body,
    )
    .await
}

/// The channels of the triggers the fake received.
fn delivered(fake: &FakeUpstream) -> Vec<String> {
    fake.recorded()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/events"))
        .map(|r| {
            assert_eq!(r.signature, Ok(()), "{}", r.query);
            r.json()["channels"][0]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

/// A legacy trigger on channel `first`, and `second` sent 150 ms later,
/// while the first holds the one stream a front allows (through a proxy
/// with one worker, so both take the same connection): both answers.
async fn first_and_waiting(
    proxy: &TestProxy,
    second: impl std::future::Future<Output = support::Answer>,
) -> (support::Answer, support::Answer) {
    let first = legacy_trigger(proxy, "first", r#"{"n":1}"#);
    let second = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        second.await
    };
    tokio::join!(first, second)
}

/// A proxy with one worker speaking h2c to `url`, coalescing off.
async fn one_worker_h2c(url: &str) -> TestProxy {
    one_worker_proxy(url, "protocol = \"h2c\"\nbatch_max = 1").await
}

#[tokio::test]
async fn h2c_multiplexes_legacy_triggers_stats_and_passthrough_over_few_connections() {
    let fake = support::fake().await;
    let front = Front::start(&fake, |_| Conduct::Serve).await;
    let owned = proxy(&front.url, Some("h2c")).await;
    let proxy = &owned;
    let legacy = (0..40).map(|i| async move {
        let a = legacy_trigger(proxy, &format!("legacy-{i}"), r#"{"i":1}"#).await;
        assert_eq!(a.status.as_u16(), 202, "{}", a.text());
    });
    let current = (0..10).map(|i| async move {
        let a = current_trigger(proxy, &format!("current-{i}")).await;
        assert_eq!(a.status.as_u16(), 200, "{}", a.text());
        assert_eq!(a.json(), serde_json::json!({"ok": true}));
    });
    let stats = (0..10).map(|i| async move {
        let uri = support::legacy_stats_uri(&format!("stats-{i}"), support::now());
        let a = support::send(Method::GET, &format!("{}{uri}", proxy.url()), &[], "").await;
        assert_eq!(a.status.as_u16(), 200, "{}", a.text());
        assert_eq!(a.json()["occupied"], true);
    });
    tokio::join!(
        futures_util::future::join_all(legacy),
        futures_util::future::join_all(current),
        futures_util::future::join_all(stats),
    );

    let mut channels = delivered(&fake);
    channels.sort();
    let mut expected: Vec<String> = (0..40)
        .map(|i| format!("legacy-{i}"))
        .chain((0..10).map(|i| format!("current-{i}")))
        .collect();
    expected.sort();
    assert_eq!(channels, expected, "each trigger delivered once");
    assert_eq!(front.requests(), 60);
    assert!(
        front.versions().iter().all(|v| *v == Version::HTTP_2),
        "{:?}",
        front.versions()
    );
    // 60 exchanges, many at once, on at most one connection per worker.
    assert!(
        (1..=2).contains(&front.connections()),
        "{} connections",
        front.connections()
    );
    owned.stop().await;
}

#[tokio::test]
async fn http1_and_auto_on_http_speak_http_1_1() {
    for protocol in [Some("http1"), Some("auto"), None] {
        let fake = support::fake().await;
        let front = Front::start(&fake, |_| Conduct::Serve).await;
        let proxy = proxy(&front.url, protocol).await;
        let a = legacy_trigger(&proxy, "room", "{}").await;
        assert_eq!(a.status.as_u16(), 202, "{protocol:?}: {}", a.text());
        let a = current_trigger(&proxy, "room2").await;
        assert_eq!(a.status.as_u16(), 200, "{protocol:?}: {}", a.text());
        assert_eq!(delivered(&fake), ["room", "room2"], "{protocol:?}");
        assert_eq!(
            front.versions(),
            [Version::HTTP_11, Version::HTTP_11],
            "{protocol:?}"
        );
        proxy.stop().await;
    }
}

/// `upstream_resent_total` for `not_processed` and `stale_connection`.
async fn resent(proxy: &TestProxy) -> (f64, f64) {
    let text = proxy.metrics().await;
    let reason = |r: &str| {
        support::metric(
            &text,
            &format!("pusher_cutover_upstream_resent_total{{reason=\"{r}\"}}"),
        )
        .unwrap_or(-1.0)
    };
    (reason("not_processed"), reason("stale_connection"))
}

#[tokio::test]
async fn a_refused_stream_is_sent_again_and_delivered_once() {
    let fake = support::fake().await;
    let front = Front::start(&fake, |_| Conduct::RefuseFirstStream).await;
    let proxy = proxy(&front.url, Some("h2c")).await;
    let a = legacy_trigger(&proxy, "refused", r#"{"n":1}"#).await;
    assert_eq!(a.status.as_u16(), 202, "{}", a.text());
    assert_eq!(delivered(&fake), ["refused"]);
    // The refused stream, then the one served, counted as sent again.
    assert_eq!(front.requests(), 2);
    assert_eq!(resent(&proxy).await, (1.0, 0.0));
    proxy.stop().await;
}

/// A request refused unprocessed is sent again only while a tenth of
/// `upstream.timeout_ms` is left: refused after 1.85 s of 2 s, it is
/// answered 504 and not sent again, so that it cannot be delivered after
/// its caller was told it timed out.
#[tokio::test]
async fn a_stream_refused_past_the_last_moment_to_send_is_not_sent_again() {
    let fake = support::fake().await;
    let front = Front::first_then_serve(&fake, Conduct::RefuseFirstStreamLate).await;
    let proxy = one_worker_proxy(
        &front.url,
        "protocol = \"h2c\"\nbatch_max = 1\ntimeout_ms = 2000",
    )
    .await;
    let a = legacy_trigger(&proxy, "late", r#"{"n":1}"#).await;
    assert_eq!(a.status.as_u16(), 504, "{}", a.text());
    // Nothing is sent after the answer either.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(front.requests(), 1, "refused, never sent again");
    assert!(delivered(&fake).is_empty());
    proxy.stop().await;
}

#[tokio::test]
async fn a_goaway_below_the_stream_is_sent_again_on_a_new_connection_and_delivered_once() {
    let fake = support::fake().await;
    let front = Front::first_then_serve(&fake, Conduct::GoAwayBelow).await;
    let proxy = proxy(&front.url, Some("h2c")).await;
    let a = legacy_trigger(&proxy, "gone-away", r#"{"n":1}"#).await;
    assert_eq!(a.status.as_u16(), 202, "{}", a.text());
    assert_eq!(delivered(&fake), ["gone-away"]);
    assert_eq!(front.requests(), 2);
    assert_eq!(front.connections(), 2);
    proxy.stop().await;
}

/// A trigger waiting for an HTTP/2 stream (the upstream allows one at a
/// time, and it is taken) when the upstream says GOAWAY was never sent:
/// it is sent again on a new connection and delivered once, not answered
/// 502.
#[tokio::test]
async fn a_trigger_waiting_for_a_stream_at_a_goaway_is_sent_again_and_delivered_once() {
    let fake = support::fake().await;
    let front = Front::first_then_serve(&fake, Conduct::GoAwayWithAStreamWaiting).await;
    let proxy = one_worker_h2c(&front.url).await;
    let (first, second) =
        first_and_waiting(&proxy, legacy_trigger(&proxy, "second", r#"{"n":2}"#)).await;
    assert_eq!(first.status.as_u16(), 202, "{}", first.text());
    assert_eq!(second.status.as_u16(), 202, "{}", second.text());
    let mut channels = delivered(&fake);
    channels.sort();
    assert_eq!(channels, ["first", "second"], "each delivered once");
    // The second reached a front once: on the second connection.
    assert_eq!(front.requests(), 2);
    assert_eq!(front.connections(), 2);
    proxy.stop().await;
}

/// A trigger waiting for an HTTP/2 stream when the upstream begins to
/// drain (GOAWAY with the largest stream id) is failed by hyper as
/// canceled once its stream has opened: the upstream got its head, then
/// `RST_STREAM`, never its body. It was not processed, so it is sent again
/// on a new connection and delivered once.
#[tokio::test]
async fn a_trigger_waiting_for_a_stream_when_a_drain_begins_is_sent_again_and_delivered_once() {
    let fake = support::fake().await;
    let front = Front::first_then_serve(&fake, Conduct::DrainWithAStreamWaiting).await;
    let proxy = one_worker_h2c(&front.url).await;
    let (first, second) =
        first_and_waiting(&proxy, legacy_trigger(&proxy, "second", r#"{"n":2}"#)).await;
    assert_eq!(first.status.as_u16(), 202, "{}", first.text());
    assert_eq!(second.status.as_u16(), 202, "{}", second.text());
    // The draining front processed the first (it does not pass requests
    // on to the fake); the second's head reached it, not its body.
    assert_eq!(front.heads(), 2);
    assert_eq!(delivered(&fake), ["second"]);
    assert_eq!(front.connections(), 2);
    proxy.stop().await;
}

/// A trigger waiting for an HTTP/2 stream when the upstream says GOAWAY
/// with an error is failed by hyper with the GOAWAY's reason alone, before
/// its body was sent: it is sent again on a new connection and delivered
/// once.
#[tokio::test]
async fn a_trigger_waiting_for_a_stream_at_an_error_goaway_is_sent_again_and_delivered_once() {
    let fake = support::fake().await;
    let front = Front::first_then_serve(&fake, Conduct::FailWithAStreamWaiting).await;
    let proxy = one_worker_h2c(&front.url).await;
    let (_, second) =
        first_and_waiting(&proxy, legacy_trigger(&proxy, "second", r#"{"n":2}"#)).await;
    assert_eq!(second.status.as_u16(), 202, "{}", second.text());
    assert_eq!(delivered(&fake), ["second"]);
    assert_eq!(front.connections(), 2);
    proxy.stop().await;
}

/// The same with a bodyless POST (a passthrough call): its end is held
/// back with its (empty) body, so the draining front gets its head, then
/// `RST_STREAM`, and does not process it. It was not processed, so it is
/// sent again on a new connection, and reaches the upstream once.
#[tokio::test]
async fn a_bodyless_post_waiting_for_a_stream_when_a_drain_begins_is_sent_again_once() {
    let fake = support::fake().await;
    let front = Front::first_then_serve(&fake, Conduct::DrainWithAStreamWaiting).await;
    let proxy = one_worker_h2c(&front.url).await;
    let path = format!("/apps/{APP_ID}/users/u1/terminate_connections");
    let url = format!("{}{path}", proxy.url());
    let (first, second) =
        first_and_waiting(&proxy, support::send(Method::POST, &url, &[], "")).await;
    assert_eq!(first.status.as_u16(), 202, "{}", first.text());
    // The fake's own answer to the unsigned call: it got there.
    assert_eq!(second.status.as_u16(), 401, "{}", second.text());
    let sent: Vec<_> = fake
        .recorded()
        .into_iter()
        .filter(|r| r.path == path)
        .collect();
    assert_eq!(sent.len(), 1, "sent again once");
    // Two heads on the draining connection, one whole request there (the
    // first trigger), one on the new connection (the POST sent again).
    assert_eq!(front.heads(), 2);
    assert_eq!(front.requests(), 2);
    assert_eq!(front.connections(), 2);
    proxy.stop().await;
}

/// An HTTP/2 upstream that goes silent with its connection open is found
/// by an unanswered PING (`upstream.ping_interval_ms`) and its connection
/// closed, so the next trigger opens another and is delivered, instead of
/// waiting on the dead one until `upstream.timeout_ms`.
#[tokio::test]
async fn a_silent_h2_connection_is_found_by_ping_and_replaced() {
    let fake = support::fake().await;
    let front = Front::first_then_serve(&fake, Conduct::SilentAfterFirst).await;
    // One worker with one client: every exchange takes the same connection.
    let proxy = one_worker_proxy(
        &front.url,
        "protocol = \"h2c\"\nbatch_max = 1\ntimeout_ms = 1000\nping_interval_ms = 100",
    )
    .await;
    let a = legacy_trigger(&proxy, "before", "{}").await;
    assert_eq!(a.status.as_u16(), 202, "{}", a.text());
    // The front goes silent 150 ms after its answer; the proxy's next
    // PING, sent after 100 ms without a frame, then goes unanswered for the
    // 1 s the proxy waits at least.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let a = legacy_trigger(&proxy, "after", "{}").await;
    assert_eq!(a.status.as_u16(), 202, "{}", a.text());
    assert_eq!(delivered(&fake), ["before", "after"]);
    assert_eq!(front.connections(), 2);
    proxy.stop().await;
}

/// A GOAWAY that names the trigger's own stream as possibly processed,
/// then the connection's end: the upstream may have it, so it is not sent
/// again.
#[tokio::test]
async fn an_h2_post_at_or_below_a_goaways_last_stream_is_not_sent_again() {
    let fake = support::fake().await;
    let front = Front::first_then_serve(&fake, Conduct::GoAwayAtTheStream).await;
    let proxy = proxy(&front.url, Some("h2c")).await;
    let a = legacy_trigger(&proxy, "maybe-processed", r#"{"n":1}"#).await;
    assert_eq!(a.status.as_u16(), 502, "{}", a.text());
    assert_eq!(front.requests(), 1, "sent once, never again");
    assert_eq!(front.connections(), 1);
    assert!(delivered(&fake).is_empty());
    assert_eq!(resent(&proxy).await, (0.0, 0.0));
    proxy.stop().await;
}

#[tokio::test]
async fn an_h2_post_whose_connection_dies_after_it_was_sent_is_not_sent_again() {
    let fake = support::fake().await;
    let front = Front::first_then_serve(&fake, Conduct::DropAfterRequest).await;
    let proxy = proxy(&front.url, Some("h2c")).await;
    let a = legacy_trigger(&proxy, "cut", r#"{"n":1}"#).await;
    assert_eq!(a.status.as_u16(), 502, "{}", a.text());
    assert_eq!(front.requests(), 1, "sent once, never again");
    assert_eq!(front.connections(), 1);
    assert!(delivered(&fake).is_empty());
    proxy.stop().await;
}

/// An HTTP/1.1 upstream in raw bytes that answers its connection's first
/// request (keep-alive) and reads the second whole, then closes without
/// answering. Returns the URL and the count of requests read.
async fn h1_cutting_second_request() -> (String, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let requests = Arc::new(AtomicUsize::new(0));
    let count = requests.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut served = 0;
                loop {
                    let Some(len) = support::read_http_request(&mut stream, &mut buf).await else {
                        return;
                    };
                    buf.drain(..len);
                    count.fetch_add(1, Ordering::SeqCst);
                    served += 1;
                    if served > 1 {
                        return;
                    }
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}";
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, requests, task)
}

#[tokio::test]
async fn an_http1_post_whose_pooled_connection_dies_after_it_was_sent_is_not_sent_again() {
    let (url, requests, task) = h1_cutting_second_request().await;
    // One worker: both triggers take the same pool.
    let proxy = one_worker_proxy(&url, "protocol = \"http1\"").await;
    let a = legacy_trigger(&proxy, "first", "{}").await;
    assert_eq!(a.status.as_u16(), 202, "{}", a.text());
    let a = legacy_trigger(&proxy, "second", "{}").await;
    assert_eq!(a.status.as_u16(), 502, "{}", a.text());
    assert_eq!(requests.load(Ordering::SeqCst), 2, "the second sent once");
    proxy.stop().await;
    task.abort();
}

/// `upstream.idle_timeout_ms`: a pooled upstream connection that has
/// carried no exchange for that long is not used again (the next trigger
/// opens another), over HTTP/1.1 and over h2c; one used sooner is. With
/// the default (60 s) the same pause reuses the connection.
#[tokio::test]
async fn an_upstream_connection_idle_past_idle_timeout_ms_is_not_used_again() {
    for protocol in ["http1", "h2c"] {
        for (idle, pause, connections) in [
            ("idle_timeout_ms = 300\n", 50, 1),
            ("idle_timeout_ms = 300\n", 800, 2),
            ("", 800, 1),
        ] {
            let fake = support::fake().await;
            let front = Front::start(&fake, |_| Conduct::Serve).await;
            // One worker: every exchange takes the same pool.
            let upstream = format!("protocol = \"{protocol}\"\nbatch_max = 1\n{idle}");
            let proxy = one_worker_proxy(&front.url, &upstream).await;
            let case = format!("{protocol}, {idle:?}, {pause} ms");
            let a = legacy_trigger(&proxy, "before", "{}").await;
            assert_eq!(a.status.as_u16(), 202, "{case}: {}", a.text());
            tokio::time::sleep(Duration::from_millis(pause)).await;
            let a = legacy_trigger(&proxy, "after", "{}").await;
            assert_eq!(a.status.as_u16(), 202, "{case}: {}", a.text());
            assert_eq!(delivered(&fake), ["before", "after"], "{case}");
            assert_eq!(front.connections(), connections, "{case}");
            proxy.stop().await;
        }
    }
}

#[test]
fn h2c_needs_an_http_url() {
    let toml = support::config_toml("https://127.0.0.1:6001", "protocol = \"h2c\"", "");
    let err = pusher_cutover::Config::from_toml_str(&toml, &|_| None)
        .expect_err("h2c over https is refused")
        .to_string();
    assert!(err.contains("upstream.protocol"), "{err}");
    assert!(err.contains("http://"), "{err}");
    let toml = support::config_toml("https://127.0.0.1:6001", "protocol = \"h3\"", "");
    let err = pusher_cutover::Config::from_toml_str(&toml, &|_| None)
        .expect_err("an unknown protocol is refused")
        .to_string();
    assert!(err.contains("h2c"), "{err}");
    for protocol in ["auto", "http1"] {
        let toml = support::config_toml(
            "https://127.0.0.1:6001",
            &format!("protocol = \"{protocol}\""),
            "",
        );
        assert!(pusher_cutover::Config::from_toml_str(&toml, &|_| None).is_ok());
    }
}

/// A test CA, and a certificate it signed for `localhost` with its key
/// (PEM): the CA's certificate, the leaf's, the leaf's key.
fn private_ca() -> (
    String,
    pki_types::CertificateDer<'static>,
    pki_types::PrivateKeyDer<'static>,
) {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "pusher-cutover test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key).expect("CA");
    let leaf_key = rcgen::KeyPair::generate().expect("key");
    let leaf = rcgen::CertificateParams::new(vec!["localhost".into()])
        .expect("params")
        .signed_by(&leaf_key, &ca)
        .expect("leaf");
    (
        ca.pem(),
        leaf.der().clone(),
        pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
    )
}

/// A TLS terminator on a loopback port for `localhost` (the certificate
/// `leaf`), offering `alpn` by ALPN, that passes each connection's bytes
/// on to `front` as they are; notes what each handshake negotiated.
async fn tls_in_front_of(
    front: &Front,
    leaf: pki_types::CertificateDer<'static>,
    key: pki_types::PrivateKeyDer<'static>,
    alpn: &[&[u8]],
) -> (
    u16,
    Arc<Mutex<Vec<Option<Vec<u8>>>>>,
    tokio::task::JoinHandle<()>,
) {
    use tokio_rustls::rustls;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![leaf], key)
    .expect("certificate");
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let plain = front.url.trim_start_matches("http://").to_owned();
    let negotiated = Arc::new(Mutex::new(Vec::new()));
    let noted = negotiated.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, plain, noted) = (acceptor.clone(), plain.clone(), noted.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                noted.lock().expect("lock").push(alpn);
                let Ok(mut inner) = TcpStream::connect(&plain).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut inner).await;
            });
        }
    });
    (port, negotiated, task)
}

/// An `https://` upstream under a private CA (`upstream.ca_file`): with
/// `auto`, HTTP/2 when its ALPN offers it and HTTP/1.1 when it offers
/// only that; with `http1`, HTTP/1.1 (nothing offered by ALPN) although
/// it offers h2. Each call is
/// delivered (the fake checks its signature), and `Host` and `:authority`
/// name the upstream. Without the CA file, the Mozilla roots do not trust
/// it: 502, nothing delivered.
#[tokio::test]
async fn https_upstream_negotiates_by_alpn_under_a_private_ca() {
    let fake = support::fake().await;
    let (ca_pem, leaf, key) = private_ca();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca_pem).expect("write");
    let ca_line = format!("ca_file = {:?}", ca_file.display().to_string());
    let both: &[&[u8]] = &[b"h2", b"http/1.1"];
    let h1_only: &[&[u8]] = &[b"http/1.1"];
    for (protocol, alpn, version, said) in [
        ("auto", both, Version::HTTP_2, Some(b"h2".to_vec())),
        (
            "auto",
            h1_only,
            Version::HTTP_11,
            Some(b"http/1.1".to_vec()),
        ),
        // http1 offers nothing by ALPN: the server's default, HTTP/1.1.
        ("http1", both, Version::HTTP_11, None),
    ] {
        let front = Front::start(&fake, |_| Conduct::Serve).await;
        let (port, negotiated, task) =
            tls_in_front_of(&front, leaf.clone(), key.clone_key(), alpn).await;
        let before = fake.recorded().len();
        let proxy = one_worker_proxy(
            &format!("https://localhost:{port}"),
            &format!("protocol = \"{protocol}\"\nbatch_max = 1\n{ca_line}"),
        )
        .await;
        let a = legacy_trigger(&proxy, "room", r#"{"n":1}"#).await;
        assert_eq!(a.status.as_u16(), 202, "{protocol} {alpn:?}: {}", a.text());
        let a = current_trigger(&proxy, "room").await;
        assert_eq!(a.status.as_u16(), 200, "{protocol} {alpn:?}: {}", a.text());
        assert_eq!(front.versions(), [version, version], "{protocol} {alpn:?}");
        assert_eq!(
            negotiated.lock().expect("lock").first().cloned(),
            Some(said),
            "{protocol} {alpn:?}"
        );
        assert_eq!(fake.recorded().len(), before + 2, "{protocol} {alpn:?}");
        let authority = format!("localhost:{port}");
        assert_eq!(
            front.authorities(),
            [authority.clone(), authority],
            "{protocol} {alpn:?}: Host or :authority"
        );
        proxy.stop().await;
        task.abort();
    }

    // The Mozilla roots alone do not trust the private CA.
    let front = Front::start(&fake, |_| Conduct::Serve).await;
    let (port, _, task) = tls_in_front_of(&front, leaf, key, both).await;
    let before = fake.recorded().len();
    let proxy = one_worker_proxy(&format!("https://localhost:{port}"), "batch_max = 1").await;
    let a = legacy_trigger(&proxy, "room", r#"{"n":1}"#).await;
    assert_eq!(a.status.as_u16(), 502, "{}", a.text());
    assert_eq!(fake.recorded().len(), before, "nothing delivered");
    proxy.stop().await;
    task.abort();
}
