//! Coalescing against real Sockudo: legacy triggers from many client
//! connections at once leave as `batch_events` (whatever protocol the
//! proxy speaks to Sockudo), and every event reaches a real subscriber
//! exactly once, each connection's in the order it sent them.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use crate::support::{self, APP_ID};
use crate::{Env, SILENCE, channel, signed};

/// Sends `seqs` (the client's share of the triggers, in order) on one
/// client connection of its own, each only after the previous answer, as a
/// legacy client on one keep-alive connection does. Returns the failures.
async fn one_connection(
    proxy: std::net::SocketAddr,
    ch: String,
    client: usize,
    count: usize,
    socket_id: Option<String>,
) -> Vec<String> {
    let stream = tokio::net::TcpStream::connect(proxy)
        .await
        .expect("connect to the proxy");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let path = format!("/apps/{APP_ID}/channels/{ch}/events");
    let mut failures = Vec::new();
    for seq in 0..count {
        let data = format!("{client}:{seq}");
        let mut params = vec![("name", "ordered")];
        if let Some(s) = &socket_id {
            params.push(("socket_id", s));
        }
        let target = signed("", "POST", &path, &params, Some(data.as_bytes()));
        let req = hyper::Request::post(target)
            .header("host", "proxy")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(data)))
            .expect("request");
        let answer = tokio::time::timeout(Duration::from_secs(30), sender.send_request(req))
            .await
            .expect("answered within 30 s")
            .expect("answered");
        let status = answer.status().as_u16();
        let body = answer.into_body().collect().await.expect("body").to_bytes();
        if status != 202 {
            failures.push(format!(
                "{client}:{seq}: {status} {}",
                String::from_utf8_lossy(&body)
            ));
        }
    }
    failures
}

/// What [`deliver_2000_from_32`] saw of the upstream requests.
struct Batches {
    /// Upstream trigger requests (`events` and `batch_events`).
    requests: f64,
    /// Those that carried more than Pusher's 10 events.
    over_10: f64,
    /// Those that carried more than 30.
    over_30: f64,
}

/// 2,000 legacy triggers from `clients` concurrent client connections
/// through `env`'s proxy: asserts each was answered 202 and delivered
/// exactly once, each connection's in order, and that the upstream saw
/// batches (more than one event per request on average).
async fn deliver_2000(env: &Env, clients: usize) -> Batches {
    const TOTAL: usize = 2000;
    let ch = channel("");
    let mut sub = env.subscriber().await;
    sub.subscribe(&ch, None).await;

    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            // Client c's share of the 2,000, every `clients`-th.
            let count = (c..TOTAL).step_by(clients).count();
            tokio::spawn(one_connection(env.proxy.addr, ch.clone(), c, count, None))
        })
        .collect();

    // What each connection's events look like on arrival: their sequence
    // numbers, in arrival order.
    let mut arrived: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut received = 0;
    while received < TOTAL {
        let Some(e) = sub.next_event(Duration::from_secs(15)).await else {
            break;
        };
        received += 1;
        assert_eq!(
            (e.event.as_str(), e.channel.as_str()),
            ("ordered", ch.as_str())
        );
        let (c, seq) = e.data.split_once(':').expect("client:seq");
        arrived
            .entry(c.parse().expect("client"))
            .or_default()
            .push(seq.parse().expect("seq"));
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
    assert_eq!(received, TOTAL, "every event delivered");
    assert_eq!(sub.next_event(SILENCE).await, None, "nothing extra");
    for c in 0..clients {
        let count = (c..TOTAL).step_by(clients).count();
        assert_eq!(
            arrived.get(&c).cloned().unwrap_or_default(),
            (0..count).collect::<Vec<_>>(),
            "connection {c}: each event once, in the order sent"
        );
    }

    let metrics = env.proxy.metrics().await;
    let value =
        |series: &str| support::metric(&metrics, series).unwrap_or_else(|| panic!("no {series}"));
    let events = value("pusher_cutover_upstream_batch_events_sum");
    let requests = value("pusher_cutover_upstream_batch_events_count");
    assert_eq!(events, TOTAL as f64, "every trigger counted once");
    assert!(
        value(r#"pusher_cutover_upstream_requests_total{route="batch_events"}"#) > 0.0,
        "batches were sent"
    );
    assert!(
        events / requests > 1.0,
        "{events} events in {requests} upstream requests"
    );
    let over = |n: &str| {
        requests
            - value(&format!(
                r#"pusher_cutover_upstream_batch_events_bucket{{le="{n}"}}"#
            ))
    };
    let (over_10, over_30) = (over("10.0"), over("30.0"));
    println!(
        "{TOTAL} triggers from {clients} connections in {requests} upstream requests ({:.2} events per request; {over_10} with more than 10, {over_30} more than 30)",
        events / requests
    );
    Batches {
        requests,
        over_10,
        over_30,
    }
}

/// 2,000 legacy triggers from 32 concurrent client connections, coalesced
/// with the defaults (Pusher's 10 per batch): each delivered exactly once,
/// each connection's in order, and no batch above 10.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Sockudo 5.2.0 (SOCKUDO_BIN or PATH; tests/install-parts.sh installs it); run with -- --include-ignored"]
async fn coalesced_2000_triggers_from_32_connections_arrive_once_each_in_order() {
    let env = Env::start().await;
    let batches = deliver_2000(&env, 32).await;
    assert_eq!(batches.over_10, 0.0, "batch_max defaults to 10");
    env.stop().await;
}

/// The same with `batch_max` at the Sockudo app's own limit
/// (`max_event_batch_size`, 50 in `config/sockudo-server.toml`, above
/// Pusher's 10), one batch on the wire and 64 connections, so that batches
/// fill up to the limit: Sockudo takes them, and every event still arrives
/// once, in order. A batch above the limit would be refused whole, and its
/// callers' 400s fail the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Sockudo 5.2.0 (SOCKUDO_BIN or PATH; tests/install-parts.sh installs it); run with -- --include-ignored"]
async fn batches_up_to_sockudos_app_limit_arrive_once_each_in_order() {
    let limit = crate::sockudo::max_event_batch_size();
    assert!(
        limit > 30,
        "the example app's limit {limit} leaves no room for batches above 30"
    );
    let env = Env::start_with(&format!("batch_in_flight = 1\nbatch_max = {limit}")).await;
    let batches = deliver_2000(&env, 64).await;
    // 64 connections wait behind one batch on the wire: once the first
    // answer is in, batches of up to 63 form, cut at the limit.
    assert!(
        batches.over_30 > 0.0,
        "no batch above 30 in {} upstream requests",
        batches.requests
    );
    env.stop().await;
}

/// Sockudo honours each batched event's own `socket_id`: triggers that
/// exclude one subscriber, coalesced, reach the other and not it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Sockudo 5.2.0 (SOCKUDO_BIN or PATH; tests/install-parts.sh installs it); run with -- --include-ignored"]
async fn a_batched_events_socket_id_excludes_that_connection_only() {
    const CLIENTS: usize = 32;
    const EACH: usize = 10;
    let env = Env::start().await;
    let ch = channel("");
    let mut excluded = env.subscriber().await;
    excluded.subscribe(&ch, None).await;
    let mut other = env.subscriber().await;
    other.subscribe(&ch, None).await;
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let socket_id = Some(excluded.socket_id.clone());
            tokio::spawn(one_connection(
                env.proxy.addr,
                ch.clone(),
                c,
                EACH,
                socket_id,
            ))
        })
        .collect();
    let mut received = 0;
    while received < CLIENTS * EACH {
        if other.next_event(Duration::from_secs(15)).await.is_none() {
            break;
        }
        received += 1;
    }
    for t in tasks {
        let failures = t.await.expect("client task");
        assert!(failures.is_empty(), "{failures:?}");
    }
    assert_eq!(
        received,
        CLIENTS * EACH,
        "the other subscriber got every event"
    );
    assert_eq!(
        excluded.next_event(SILENCE).await,
        None,
        "the excluded got none"
    );
    let m = env.proxy.metrics().await;
    assert!(
        support::metric(
            &m,
            r#"pusher_cutover_upstream_requests_total{route="batch_events"}"#
        )
        .is_some_and(|n| n > 0.0),
        "the triggers were batched"
    );
    env.stop().await;
}
