//! Legacy triggers coalesced into `batch_events` while the app's trigger
//! requests are on the wire, and identical concurrent stats sharing one
//! upstream request. The fake upstream holds answers back on demand, so
//! each test builds its queue deterministically: it waits for the proxy's
//! queue gauge, never for a timer.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Method;
use hyper_util::rt::TokioIo;
use tokio::task::JoinHandle;

use crate::support::fake::{FakeUpstream, Recorded};
use crate::support::{self, APP_ID, Answer, TestProxy};

const EVENTS: &str = "/apps/4242/events";
const BATCH: &str = "/apps/4242/batch_events";
const QUEUED: &str = "pusher_cutover_queued_triggers";

/// One legacy trigger, signed now.
struct Trig {
    channel: String,
    name: String,
    socket_id: Option<String>,
    data: String,
}

impl Trig {
    fn new(channel: &str, name: &str, socket_id: Option<&str>, data: &str) -> Self {
        Self {
            channel: channel.into(),
            name: name.into(),
            socket_id: socket_id.map(Into::into),
            data: data.into(),
        }
    }

    /// The `i`th of a series: its own channel, name, data, and a socket id
    /// on every other one.
    fn nth(i: usize) -> Self {
        let socket_id = i.is_multiple_of(2).then(|| format!("{i}.{}", i + 1));
        Self::new(
            &format!("room-{i}"),
            &format!("ev-{i}"),
            socket_id.as_deref(),
            &format!("{{\"i\":{i}}}"),
        )
    }

    fn uri(&self) -> String {
        let mut params = vec![("name", self.name.as_str())];
        if let Some(s) = &self.socket_id {
            params.push(("socket_id", s));
        }
        support::legacy_trigger_uri(&self.channel, &params, self.data.as_bytes(), support::now())
    }

    /// The event as a batch must carry it.
    fn batch_item(&self) -> serde_json::Value {
        let mut e = serde_json::json!({
            "name": self.name, "channel": self.channel, "data": self.data,
        });
        if let Some(s) = &self.socket_id {
            e["socket_id"] = s.clone().into();
        }
        e
    }

    fn spawn(self, proxy: &TestProxy) -> JoinHandle<Answer> {
        let url = format!("{}{}", proxy.url(), self.uri());
        tokio::spawn(
            async move { support::send(Method::POST, &url, support::JSON, self.data).await },
        )
    }
}

fn value(text: &str, series: &str) -> f64 {
    support::metric(text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

/// Upstream requests of `route` (`pusher_cutover_upstream_requests_total`).
fn upstream_requests(m: &str, route: &str) -> f64 {
    value(
        m,
        &format!("pusher_cutover_upstream_requests_total{{route=\"{route}\"}}"),
    )
}

/// The fixture app's calls of `route` that ended as `outcome`
/// (`pusher_cutover_requests_total`).
fn calls(m: &str, route: &str, outcome: &str) -> f64 {
    value(
        m,
        &format!(
            "pusher_cutover_requests_total{{app_id=\"{APP_ID}\",route=\"{route}\",outcome=\"{outcome}\"}}"
        ),
    )
}

/// Trigger requests of at most `le` events (a bucket of
/// `pusher_cutover_upstream_batch_events`).
fn batch_bucket(m: &str, le: &str) -> f64 {
    value(
        m,
        &format!("pusher_cutover_upstream_batch_events_bucket{{le=\"{le}\"}}"),
    )
}

/// Waits (bounded) until the proxy's trigger queue holds `n`.
async fn wait_queued(proxy: &TestProxy, n: usize) {
    for _ in 0..1000 {
        if support::metric(&proxy.metrics().await, QUEUED) == Some(n as f64) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!(
        "the queue never held {n}: {:?}",
        support::metric(&proxy.metrics().await, QUEUED)
    );
}

async fn answered(handle: JoinHandle<Answer>) -> Answer {
    tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .expect("answered within 10 s")
        .expect("client task")
}

fn assert_accepted(a: &Answer) {
    assert_eq!(a.status.as_u16(), 202, "{}", a.text());
    assert_eq!(&a.body[..], b"202 ACCEPTED\n");
}

fn batch_of(r: &Recorded) -> Vec<serde_json::Value> {
    assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", BATCH));
    assert_eq!(r.signature, Ok(()), "a batch is signed like every request");
    r.json()["batch"].as_array().expect("a batch").clone()
}

async fn setup(upstream_extra: &str) -> (FakeUpstream, TestProxy) {
    let fake = support::fake().await;
    let proxy = TestProxy::for_upstream(&fake.url(), upstream_extra, "").await;
    (fake, proxy)
}

/// Starts one trigger and waits until the fake holds it: the app's only
/// place (`batch_in_flight = 1`) is then on the wire.
async fn occupy(fake: &FakeUpstream, proxy: &TestProxy, seen: usize) -> JoinHandle<Answer> {
    let first = Trig::new("first", "first", None, "first").spawn(proxy);
    fake.wait_for_requests(seen + 1).await;
    first
}

/// Queues `trigs` one after the other, each only once the one before is in
/// the queue, so the queue's order is theirs.
async fn queue(proxy: &TestProxy, trigs: Vec<Trig>, already: usize) -> Vec<JoinHandle<Answer>> {
    let mut handles = Vec::new();
    for (i, t) in trigs.into_iter().enumerate() {
        handles.push(t.spawn(proxy));
        wait_queued(proxy, already + i + 1).await;
    }
    handles
}

/// Holds one trigger on the wire (`seen` upstream requests before it),
/// queues `trigs` behind it, then lets it go and checks its 202. Returns
/// the queued callers and what the upstream has received once their first
/// batch is on the wire (held).
async fn first_batch_behind_one(
    fake: &FakeUpstream,
    proxy: &TestProxy,
    seen: usize,
    trigs: Vec<Trig>,
) -> (Vec<JoinHandle<Answer>>, Vec<Recorded>) {
    fake.set(|b| b.hold = true);
    let first = occupy(fake, proxy, seen).await;
    let callers = queue(proxy, trigs, 0).await;
    // The first answer frees the place: the oldest queued leave as one batch.
    fake.release(1);
    assert_accepted(&answered(first).await);
    (callers, fake.wait_for_requests(seen + 2).await)
}

#[tokio::test]
async fn at_low_load_each_trigger_goes_alone_at_once() {
    let (fake, proxy) = setup("").await;
    for i in 0..5 {
        let t = Trig::nth(i);
        let expected = t.batch_item();
        assert_accepted(&answered(t.spawn(&proxy)).await);
        let r = &fake.recorded()[i];
        assert_eq!(r.path, EVENTS, "alone, as POST /events");
        let body = r.json();
        assert_eq!(body["channels"], serde_json::json!([expected["channel"]]));
        assert_eq!(body["name"], expected["name"]);
    }
    let m = proxy.metrics().await;
    let requests = |route: &str| upstream_requests(&m, route);
    assert_eq!(requests("events"), 5.0);
    assert_eq!(requests("batch_events"), 0.0);
    assert_eq!(value(&m, "pusher_cutover_upstream_batch_events_count"), 5.0);
    assert_eq!(value(&m, "pusher_cutover_upstream_batch_events_sum"), 5.0);
    proxy.stop().await;
}

#[tokio::test]
async fn queued_triggers_leave_as_batches_and_are_answered_after_their_2xx() {
    let (fake, proxy) = setup("batch_in_flight = 1\nbatch_max = 10").await;
    let trigs: Vec<Trig> = (0..12).map(Trig::nth).collect();
    let expected: Vec<serde_json::Value> = trigs.iter().map(Trig::batch_item).collect();
    // The first answer frees the place: the 10 oldest leave as one batch.
    let (mut callers, recorded) = first_batch_behind_one(&fake, &proxy, 0, trigs).await;
    assert_eq!(batch_of(&recorded[1]), expected[..10]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        callers.iter().all(|c| !c.is_finished()),
        "no caller is answered before its batch's 2xx"
    );
    assert_eq!(support::metric(&proxy.metrics().await, QUEUED), Some(2.0));

    // Its 2xx answers its 10 callers, and the other 2 leave.
    fake.release(1);
    let rest = callers.split_off(10);
    for c in callers {
        assert_accepted(&answered(c).await);
    }
    let recorded = fake.wait_for_requests(3).await;
    assert_eq!(batch_of(&recorded[2]), expected[10..]);
    assert!(rest.iter().all(|c| !c.is_finished()));
    fake.release(1);
    for c in rest {
        assert_accepted(&answered(c).await);
    }

    assert_eq!(fake.recorded().len(), 3, "13 triggers, 3 upstream requests");
    let m = proxy.metrics().await;
    assert_eq!(upstream_requests(&m, "batch_events"), 2.0);
    assert_eq!(upstream_requests(&m, "events"), 1.0);
    assert_eq!(value(&m, "pusher_cutover_upstream_batch_events_sum"), 13.0);
    assert_eq!(value(&m, "pusher_cutover_upstream_batch_events_count"), 3.0);
    assert_eq!(value(&m, QUEUED), 0.0);
    assert_eq!(
        calls(&m, "legacy_trigger", "ok"),
        13.0,
        "each caller recorded"
    );
    fake.release_all();
    proxy.stop().await;
}

/// A self-hosted upstream's batches may be larger than Pusher's 10
/// (`batch_max` up to 100 off Pusher): 30 queued triggers leave as one
/// batch of 25, in queue order, then one of 5, and every caller gets its
/// 202 after its own batch's 2xx.
#[tokio::test]
async fn batches_larger_than_pushers_10_leave_whole_to_a_self_hosted_upstream() {
    let (fake, proxy) = setup("batch_in_flight = 1\nbatch_max = 25").await;
    fake.set(|b| b.batch_limit = 100);
    let trigs: Vec<Trig> = (0..30).map(Trig::nth).collect();
    let expected: Vec<serde_json::Value> = trigs.iter().map(Trig::batch_item).collect();
    let (mut callers, recorded) = first_batch_behind_one(&fake, &proxy, 0, trigs).await;
    assert_eq!(batch_of(&recorded[1]), expected[..25], "25 in one request");
    fake.release(1);
    let rest = callers.split_off(25);
    for c in callers {
        assert_accepted(&answered(c).await);
    }
    let recorded = fake.wait_for_requests(3).await;
    assert_eq!(batch_of(&recorded[2]), expected[25..]);
    fake.release(1);
    for c in rest {
        assert_accepted(&answered(c).await);
    }
    assert_eq!(fake.recorded().len(), 3, "31 triggers, 3 upstream requests");
    let m = proxy.metrics().await;
    assert_eq!(value(&m, "pusher_cutover_upstream_batch_events_sum"), 31.0);
    assert_eq!(
        batch_bucket(&m, "20.0"),
        2.0,
        "the lone first trigger and the batch of 5"
    );
    assert_eq!(batch_bucket(&m, "30.0"), 3.0, "and the batch of 25");
    fake.release_all();
    proxy.stop().await;
}

/// `batch_max` above the upstream's own limit (the fake keeps Pusher's
/// 10): at low load triggers go alone and succeed, but a full batch is
/// refused whole, each of its callers gets the upstream's 400, and it is
/// not sent again.
#[tokio::test]
async fn a_batch_above_the_upstreams_limit_fails_each_of_its_callers() {
    let (fake, proxy) = setup("batch_in_flight = 1\nbatch_max = 25").await;
    assert_accepted(&answered(Trig::nth(99).spawn(&proxy)).await);
    let trigs = (0..12).map(Trig::nth).collect();
    let (callers, recorded) = first_batch_behind_one(&fake, &proxy, 1, trigs).await;
    assert_eq!(batch_of(&recorded[2]).len(), 12, "one batch of 12");
    fake.release(1);
    for c in callers {
        let (status, _, body) = seen(&answered(c).await);
        assert_eq!(status, 400, "{body}");
        assert!(
            body.contains("Batch size (12) exceeds limit (10)"),
            "the upstream's reason reaches the caller: {body}"
        );
    }
    assert_eq!(fake.recorded().len(), 3, "never re-sent");
    let m = proxy.metrics().await;
    assert_eq!(calls(&m, "legacy_trigger", "client_error"), 12.0);
    fake.release_all();
    proxy.stop().await;
}

/// What a caller sees of an answer: status, content type, body.
fn seen(a: &Answer) -> (u16, Option<String>, String) {
    let ct = a
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (a.status.as_u16(), ct, a.text())
}

#[tokio::test]
async fn a_batch_failure_reaches_each_caller_as_a_single_triggers_would() {
    let (fake, proxy) = setup("batch_in_flight = 1").await;
    let cases: [(u16, &'static str, &str); 5] = [
        (400, "text/plain", "Invalid channel name"),
        (
            403,
            "application/json",
            r#"{"error":"App disabled","code":"forbidden","status":403}"#,
        ),
        (
            413,
            "text/plain",
            "The data content of this event exceeds the allowed maximum (10240 bytes).",
        ),
        (503, "application/json", r#"{"error":"busy"}"#),
        (401, "application/json", r#"{"error":"Invalid signature"}"#),
    ];
    let mut upstream_requests = 0;
    for (status, content_type, body) in cases {
        fake.set(|b| {
            b.hold = false;
            b.fixed = Some((status, content_type, body.into()));
        });
        // A single trigger's answer, for reference.
        let single = seen(&answered(Trig::nth(99).spawn(&proxy)).await);
        upstream_requests += 1;
        assert_ne!(single.0, 202, "{status}");

        fake.set(|b| b.hold = true);
        let first = occupy(&fake, &proxy, upstream_requests).await;
        let callers = queue(&proxy, (0..3).map(Trig::nth).collect(), 0).await;
        fake.release(1);
        assert_eq!(seen(&answered(first).await), single);
        let recorded = fake.wait_for_requests(upstream_requests + 2).await;
        assert_eq!(batch_of(&recorded[upstream_requests + 1]).len(), 3);
        fake.release(1);
        for c in callers {
            assert_eq!(seen(&answered(c).await), single, "upstream {status}");
        }
        upstream_requests += 2;
        assert_eq!(fake.recorded().len(), upstream_requests, "never re-sent");
    }
    // Every caller recorded as its answer says: 4xx the callers' (but the
    // 401, the proxy's), the others the upstream's.
    let m = proxy.metrics().await;
    let outcome = |o: &str| calls(&m, "legacy_trigger", o);
    assert_eq!(outcome("client_error"), 3.0 * 5.0);
    assert_eq!(outcome("upstream_error"), 2.0 * 5.0);
    fake.release_all();
    proxy.stop().await;
}

#[tokio::test]
async fn a_batch_time_out_reaches_each_caller_and_the_batch_is_never_resent() {
    let (fake, proxy) = setup("batch_in_flight = 1\ntimeout_ms = 400").await;
    fake.set(|b| b.hold = true);
    let single = seen(&answered(Trig::nth(99).spawn(&proxy)).await);
    assert_eq!(single.0, 504, "{single:?}");

    let first = occupy(&fake, &proxy, 1).await;
    let callers = queue(&proxy, (0..4).map(Trig::nth).collect(), 0).await;
    // The first is answered; the batch leaves and is held past its
    // callers' deadlines.
    fake.release(1);
    assert_accepted(&answered(first).await);
    let recorded = fake.wait_for_requests(3).await;
    assert_eq!(batch_of(&recorded[2]).len(), 4);
    for c in callers {
        assert_eq!(seen(&answered(c).await), single);
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(fake.recorded().len(), 3, "the batch is never re-sent");
    let m = proxy.metrics().await;
    assert_eq!(
        calls(&m, "legacy_trigger", "upstream_error"),
        5.0,
        "each caller recorded"
    );
    fake.release_all();
    proxy.stop().await;
}

/// A batch has the time a single trigger sent when it leaves would have,
/// whatever its events waited in the queue: one taken with little of its
/// caller's queue time left is sent, and an upstream that takes most of
/// `upstream.timeout_ms` to answer has its batch answered, not cut after
/// it delivered the events (its callers told 504 for events sent).
#[tokio::test]
async fn a_batch_has_a_single_triggers_time_whatever_its_events_waited() {
    let fake = support::fake().await;
    // 300 ms for a head and a body: the older caller's wait (6.2 s) is
    // longer than head, body, one upstream time and a second to write
    // (5.6 s), so its connection lives only because a queued trigger's
    // request has the upstream's time once more.
    let toml = support::config_toml(&fake.url(), "batch_in_flight = 1\ntimeout_ms = 4000", "");
    let proxy = TestProxy::start(
        &format!("header_timeout_ms = 300\nbody_timeout_ms = 300\n{toml}"),
        Arc::new(pusher_cutover::SystemClock),
    )
    .await;
    fake.set(|b| b.hold = true);
    let first = occupy(&fake, &proxy, 0).await;
    let started = std::time::Instant::now();
    let trigs = vec![Trig::nth(0), Trig::nth(1)];
    let expected: Vec<serde_json::Value> = trigs.iter().map(Trig::batch_item).collect();
    let mut trigs = trigs.into_iter();
    let older = queue(&proxy, trigs.by_ref().take(1).collect(), 0).await;
    tokio::time::sleep(Duration::from_millis(3700).saturating_sub(started.elapsed())).await;
    let newer = queue(&proxy, trigs.collect(), 1).await;
    // The place comes back with about 300 ms left of the older caller's
    // time in the queue: both leave, as one batch.
    fake.release(1);
    assert_accepted(&answered(first).await);
    let recorded = fake.wait_for_requests(2).await;
    assert_eq!(recorded[1].path, BATCH);
    assert_eq!(batch_of(&recorded[1]), expected);
    // The upstream answers 2.5 s later: 6.2 s after the older caller came,
    // within the 4 s the batch has had since it left.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    fake.release(1);
    for c in older.into_iter().chain(newer) {
        assert_accepted(&answered(c).await);
    }
    assert_eq!(fake.recorded().len(), 2, "nothing sent twice");
    proxy.stop().await;
}

/// A queued trigger still in the queue `upstream.timeout_ms` after its
/// arrival is withdrawn, answered 504 and never sent.
#[tokio::test]
async fn a_trigger_that_waits_its_whole_time_in_the_queue_is_never_sent() {
    let (fake, proxy) = setup("batch_in_flight = 1\nbatch_max = 2\ntimeout_ms = 1000").await;
    fake.set(|b| b.hold = true);
    let trigs: Vec<Trig> = (0..3).map(Trig::nth).collect();
    let expected: Vec<serde_json::Value> = trigs.iter().map(Trig::batch_item).collect();
    let first = occupy(&fake, &proxy, 0).await;
    // Queued well after the first: the two oldest are still in time when
    // its place comes back.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut queued = queue(&proxy, trigs, 0).await;
    // The first is held past its time; its place takes the two oldest as
    // a batch (held too), and the third waits until its own time is up.
    assert_eq!(answered(first).await.status.as_u16(), 504);
    let late = queued.pop().expect("the third");
    let a = answered(late).await;
    assert_eq!(a.status.as_u16(), 504, "{}", a.text());
    assert_eq!(support::metric(&proxy.metrics().await, QUEUED), Some(0.0));
    for c in queued {
        assert_eq!(answered(c).await.status.as_u16(), 504, "the batch held");
    }
    fake.release_all();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let recorded = fake.recorded();
    assert_eq!(recorded.len(), 2, "the late trigger was never sent");
    assert_eq!(batch_of(&recorded[1]), expected[..2]);
    proxy.stop().await;
}

/// A batch sent by one worker for a caller of another is finished before
/// the first worker's runtime goes at shutdown: the worker's drain waits
/// for the batch as for a connection, and its caller gets its 202 (not a
/// 502 for an event the upstream may have delivered).
#[tokio::test]
async fn a_batch_on_the_wire_at_shutdown_is_finished_before_its_worker_stops() {
    let fake = support::fake().await;
    // Two workers, handed connections in turn: the first to the first.
    let mut proxy = TestProxy::start(
        &format!(
            "listen = \"127.0.0.1:0\"\nworkers = 2\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [upstream]\nurl = \"{}\"\nbatch_in_flight = 1\n\
             [[apps]]\nid = \"{APP_ID}\"\nkey = \"{}\"\nsecret = \"{}\"\n",
            fake.url(),
            support::KEY,
            support::SECRET
        ),
        std::sync::Arc::new(pusher_cutover::SystemClock),
    )
    .await;
    let raw = |t: &Trig| {
        format!(
            "POST {} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Connection: close\r\nContent-Length: {}\r\n\r\n{}",
            t.uri(),
            t.data.len(),
            t.data
        )
    };
    let addr = proxy.addr;
    fake.set(|b| b.hold = true);
    // The first worker's only connection holds the app's one place.
    let first = raw(&Trig::nth(0));
    let first = tokio::spawn(async move { support::raw_exchange(addr, first.as_bytes()).await });
    fake.wait_for_requests(1).await;
    // The second worker's caller queues behind it.
    let second = raw(&Trig::nth(1));
    let second = tokio::spawn(async move { support::raw_exchange(addr, second.as_bytes()).await });
    wait_queued(&proxy, 1).await;
    proxy.begin_shutdown();
    // The first answer frees the place: its worker sends the queued trigger
    // and closes its last connection (the caller asked to), then drains.
    fake.release(1);
    assert_accepted(&answered(first).await);
    fake.wait_for_requests(2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    fake.release(1);
    assert_accepted(&answered(second).await);
    assert_eq!(fake.recorded().len(), 2);
    proxy.stop().await;
}

#[tokio::test]
async fn an_event_the_upstream_could_refuse_never_joins_a_batch() {
    let (fake, proxy) = setup("batch_in_flight = 1").await;
    fake.set(|b| b.hold = true);
    let first = occupy(&fake, &proxy, 0).await;
    let ok: Vec<Trig> = (0..2).map(Trig::nth).collect();
    let expected: Vec<serde_json::Value> = ok.iter().map(Trig::batch_item).collect();
    let mut ok = ok.into_iter();
    let mut callers = queue(&proxy, vec![ok.next().expect("0")], 0).await;

    // Over a limit, or refused by one upstream or another: each goes alone
    // at once, although the place is taken, and its caller gets the
    // upstream's own answer.
    let long_name = "n".repeat(201);
    let refusable = [
        Trig::new("room", &long_name, None, "x"),
        Trig::new("room", "ev", Some("not-a-socket-id"), "x"),
        // Pusher reserves every name that starts with `pusher`.
        Trig::new("room", "pusher-notification", None, "x"),
        // soketi refuses empty data.
        Trig::new("room", "ev", None, ""),
    ];
    let alone_count = refusable.len();
    let mut alone = Vec::new();
    for (i, t) in refusable.into_iter().enumerate() {
        let name = t.name.clone();
        alone.push(t.spawn(&proxy));
        let r = fake.wait_for_requests(2 + i).await;
        assert_eq!(r[1 + i].path, EVENTS);
        assert_eq!(r[1 + i].json()["name"].as_str(), Some(name.as_str()));
    }
    callers.extend(queue(&proxy, vec![ok.next().expect("1")], 1).await);
    fake.release_all();
    assert_accepted(&answered(first).await);
    for c in callers.into_iter().chain(alone) {
        assert_accepted(&answered(c).await);
    }
    let recorded = fake.recorded();
    assert_eq!(recorded.len(), 2 + alone_count);
    assert_eq!(
        batch_of(&recorded[1 + alone_count]),
        expected,
        "only the checked events"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn batch_max_1_never_batches_nor_queues() {
    let (fake, proxy) = setup("batch_in_flight = 1\nbatch_max = 1").await;
    fake.set(|b| b.hold = true);
    let callers: Vec<_> = (0..4).map(|i| Trig::nth(i).spawn(&proxy)).collect();
    // All four on the wire at once: none waited for a place.
    let recorded = fake.wait_for_requests(4).await;
    assert!(recorded.iter().all(|r| r.path == EVENTS));
    fake.release_all();
    for c in callers {
        assert_accepted(&answered(c).await);
    }
    let m = proxy.metrics().await;
    assert_eq!(upstream_requests(&m, "events"), 4.0);
    assert_eq!(upstream_requests(&m, "batch_events"), 0.0);
    proxy.stop().await;
}

/// Sends `n` triggers one after the other on one connection of its own.
async fn one_connection(proxy: std::net::SocketAddr, client: usize, n: usize) -> Vec<u16> {
    let stream = tokio::net::TcpStream::connect(proxy)
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut statuses = Vec::new();
    for i in 0..n {
        let t = Trig::new("order", "seq", None, &format!("{client}:{i}"));
        let req = hyper::Request::post(t.uri())
            .header("host", "proxy")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(t.data)))
            .expect("request");
        let resp = sender.send_request(req).await.expect("answered");
        statuses.push(resp.status().as_u16());
        let _ = resp.into_body().collect().await.expect("body");
    }
    statuses
}

#[tokio::test]
async fn the_triggers_of_one_connection_keep_their_order() {
    const CLIENTS: usize = 8;
    const EACH: usize = 25;
    let (fake, proxy) = setup("batch_in_flight = 1").await;
    fake.set(|b| b.delay = Duration::from_millis(5));
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|c| tokio::spawn(one_connection(proxy.addr, c, EACH)))
        .collect();
    for t in tasks {
        let statuses = t.await.expect("client");
        assert!(statuses.iter().all(|&s| s == 202), "{statuses:?}");
    }
    // One trigger request on the wire at a time: the fake's order is the
    // upstream's.
    let mut seen: Vec<Vec<usize>> = vec![Vec::new(); CLIENTS];
    let mut batches = 0;
    for r in fake.recorded() {
        let data: Vec<String> = match r.path.as_str() {
            EVENTS => vec![r.json()["data"].as_str().expect("data").to_owned()],
            _ => {
                batches += 1;
                batch_of(&r)
                    .iter()
                    .map(|e| e["data"].as_str().expect("data").to_owned())
                    .collect()
            }
        };
        for d in data {
            let (c, i) = d.split_once(':').expect("c:i");
            seen[c.parse::<usize>().expect("c")].push(i.parse().expect("i"));
        }
    }
    for (c, got) in seen.iter().enumerate() {
        assert_eq!(
            *got,
            (0..EACH).collect::<Vec<_>>(),
            "client {c}: once each, in order"
        );
    }
    assert!(batches > 0, "the load was coalesced");
    proxy.stop().await;
}

fn spawn_stats(proxy: &TestProxy, channel: &str) -> JoinHandle<Answer> {
    let url = format!(
        "{}{}",
        proxy.url(),
        support::legacy_stats_uri(channel, support::now())
    );
    tokio::spawn(async move { support::send(Method::GET, &url, &[], "").await })
}

#[tokio::test]
async fn identical_concurrent_stats_share_one_upstream_request() {
    let (fake, proxy) = setup("").await;
    fake.set(|b| b.hold = true);
    let mut callers = vec![spawn_stats(&proxy, "room")];
    fake.wait_for_requests(1).await;
    callers.extend((0..4).map(|_| spawn_stats(&proxy, "room")));
    // Other queries are flights of their own.
    let others = [
        spawn_stats(&proxy, "other"),
        spawn_stats(&proxy, "presence-room"),
    ];
    fake.wait_for_requests(3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fake.recorded().len(), 3, "5 identical queries, 1 request");
    fake.release_all();
    for c in callers {
        let a = answered(c).await;
        assert_eq!(a.status.as_u16(), 200);
        assert_eq!(
            a.json(),
            serde_json::json!({"occupied": true, "connection_count": 3})
        );
    }
    for c in others {
        assert_eq!(answered(c).await.status.as_u16(), 200);
    }
    // Nothing is kept after the answer.
    assert_eq!(
        answered(spawn_stats(&proxy, "room")).await.status.as_u16(),
        200
    );
    assert_eq!(fake.recorded().len(), 4);
    let m = proxy.metrics().await;
    assert_eq!(value(&m, "pusher_cutover_shared_stats_answers_total"), 4.0);
    assert_eq!(calls(&m, "legacy_stats", "ok"), 8.0, "each caller recorded");
    proxy.stop().await;
}

/// A stats caller that joined a flight whose leader timed out asks again
/// with its own time, instead of taking the leader's 504.
#[tokio::test]
async fn a_stats_follower_outlives_its_leaders_time_out() {
    let (fake, proxy) = setup("timeout_ms = 1000").await;
    fake.set(|b| b.hold = true);
    let leader = spawn_stats(&proxy, "room");
    fake.wait_for_requests(1).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let follower = spawn_stats(&proxy, "room");
    let a = answered(leader).await;
    assert_eq!(a.status.as_u16(), 504, "{}", a.text());
    // The follower, with about 600 ms of its own left, asks again.
    fake.wait_for_requests(2).await;
    fake.release_all();
    let a = answered(follower).await;
    assert_eq!(a.status.as_u16(), 200, "{}", a.text());
    assert_eq!(
        a.json(),
        serde_json::json!({"occupied": true, "connection_count": 3})
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_queued_trigger_whose_caller_left_is_still_sent_and_the_queue_moves_on() {
    let (fake, proxy) = setup("batch_in_flight = 1").await;
    fake.set(|b| b.hold = true);
    let first = occupy(&fake, &proxy, 0).await;
    let trigs: Vec<Trig> = (0..3).map(Trig::nth).collect();
    let expected: Vec<serde_json::Value> = trigs.iter().map(Trig::batch_item).collect();
    let mut callers = queue(&proxy, trigs, 0).await;
    // The middle caller goes away while queued: its connection closes.
    let gone = callers.remove(1);
    gone.abort();
    assert!(gone.await.is_err_and(|e| e.is_cancelled()));
    fake.release_all();
    assert_accepted(&answered(first).await);
    for c in callers {
        assert_accepted(&answered(c).await);
    }
    let recorded = fake.wait_for_requests(2).await;
    assert_eq!(batch_of(&recorded[1]), expected, "accepted, so sent");
    // The queue is not stalled: the next trigger goes at once.
    assert_accepted(&answered(Trig::nth(7).spawn(&proxy)).await);
    assert_eq!(fake.recorded().len(), 3);
    assert_eq!(value(&proxy.metrics().await, QUEUED), 0.0);
    proxy.stop().await;
}

#[tokio::test]
async fn upstream_requests_are_counted_by_route() {
    let fake = support::fake().await;
    let observed = TestProxy::for_upstream(&fake.url(), "", "mode = \"observe\"").await;
    assert_eq!(
        answered(Trig::nth(0).spawn(&observed))
            .await
            .status
            .as_u16(),
        202
    );
    let m = observed.metrics().await;
    assert_eq!(
        upstream_requests(&m, "legacy"),
        1.0,
        "observe forwards in the legacy form"
    );
    assert_eq!(upstream_requests(&m, "events"), 0.0);
    observed.stop().await;

    let proxy = TestProxy::for_upstream(&fake.url(), "", "").await;
    assert_eq!(
        answered(spawn_stats(&proxy, "room")).await.status.as_u16(),
        200
    );
    let body = br#"{"name":"e","channels":["c"],"data":"d"}"#;
    let url = format!(
        "{}{}",
        proxy.url(),
        support::current_trigger_uri(body, support::now())
    );
    let a = support::send(Method::POST, &url, support::JSON, &body[..]).await;
    assert_eq!(a.status.as_u16(), 200);
    let m = proxy.metrics().await;
    assert_eq!(upstream_requests(&m, "channel"), 1.0);
    assert_eq!(upstream_requests(&m, "passthrough"), 1.0);
    assert_eq!(
        upstream_requests(&m, "legacy") + upstream_requests(&m, "events"),
        0.0
    );
    proxy.stop().await;
}

/// A request that found no upstream slot in time is answered 504 and never
/// sent, so it is not counted as an upstream request, whatever its route:
/// the counts are what the upstream received.
#[tokio::test]
async fn a_request_that_never_got_a_slot_is_not_counted() {
    let (fake, proxy) = setup("max_connections = 1\ntimeout_ms = 1000\nbatch_max = 1").await;
    fake.set(|b| b.hold = true);
    let held = Trig::nth(0).spawn(&proxy);
    fake.wait_for_requests(1).await;
    // Each waits for the only slot, held until its exchange times out, and
    // runs out of time first.
    let trigger = Trig::nth(1).spawn(&proxy);
    let stats = spawn_stats(&proxy, "room");
    let body = br#"{"name":"e","channels":["c"],"data":"d"}"#;
    let url = format!(
        "{}{}",
        proxy.url(),
        support::current_trigger_uri(body, support::now())
    );
    let passthrough = support::send(Method::POST, &url, support::JSON, &body[..]).await;
    for (what, status) in [
        ("trigger", answered(trigger).await.status),
        ("stats", answered(stats).await.status),
        ("passthrough", passthrough.status),
    ] {
        assert_eq!(status.as_u16(), 504, "{what}");
    }
    assert_eq!(answered(held).await.status.as_u16(), 504);
    assert_eq!(fake.recorded().len(), 1, "only the held trigger was sent");
    let m = proxy.metrics().await;
    assert_eq!(upstream_requests(&m, "events"), 1.0);
    for route in ["batch_events", "channel", "passthrough", "legacy"] {
        assert_eq!(upstream_requests(&m, route), 0.0, "{route}");
    }
    proxy.stop().await;
}
