//! An in-process fake of a current-API Pusher server on a loopback port.
//! It records every request, checks each signature with the independent
//! [`oracle`](super::oracle) as strictly as sockudo does, and answers like
//! sockudo (JSON bodies, `{"ok":true}` for triggers). It also serves the two
//! deprecated routes the way Pusher still does, for `observe` mode.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONNECTION, CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::oracle;

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The oracle's verdict on the signature.
    pub signature: Result<(), String>,
    /// When the request had been read, body included.
    pub received: std::time::Instant,
}

impl Recorded {
    /// A decoded query parameter.
    pub fn param(&self, key: &str) -> Option<String> {
        oracle::parse_query(&self.query)
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("upstream body is JSON")
    }
}

/// How the fake answers; change it at any time.
#[derive(Debug, Clone)]
pub struct Behaviour {
    /// Answer `Connection: close` on every response, as sockudo does.
    pub connection_close: bool,
    /// Wait this long before answering.
    pub delay: Duration,
    /// Waits for the next requests, one each in the order they arrive,
    /// instead of `delay`; once used up, `delay` applies again.
    pub next_delays: VecDeque<Duration>,
    /// Whether `info=subscription_count` is allowed (Pusher's per-app switch).
    pub counting_enabled: bool,
    /// Whether `info=subscription_count` is answered on presence channels
    /// (sockudo: yes; Pusher: a 400).
    pub presence_subscription_count: bool,
    /// Answer this status, content type and body to everything.
    pub fixed: Option<(u16, &'static str, String)>,
    /// Answer this status, content type and body to the current channel
    /// info route (`GET /apps/{id}/channels/{channel}`) only; the
    /// deprecated routes answer as usual.
    pub channel_info_fixed: Option<(u16, &'static str, String)>,
    /// The `connection_count` the emulated legacy stats route answers
    /// (`None`: the key left out, as for apps without the beta).
    pub legacy_connection_count: Option<u64>,
    /// Hold every request, once recorded, until [`FakeUpstream::release`]
    /// lets it go (how it is answered is decided after that): a test can
    /// keep requests on the wire and build a queue behind them.
    pub hold: bool,
    /// The most events a `batch_events` request may carry: Pusher's 10 by
    /// default (a Sockudo app's is its `max_event_batch_size`).
    pub batch_limit: usize,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            connection_close: false,
            delay: Duration::ZERO,
            next_delays: VecDeque::new(),
            counting_enabled: true,
            presence_subscription_count: true,
            fixed: None,
            channel_info_fixed: None,
            legacy_connection_count: Some(3),
            hold: false,
            batch_limit: 10,
        }
    }
}

struct State {
    /// app id → (key, secret)
    apps: HashMap<String, (String, String)>,
    now: Box<dyn Fn() -> u64 + Send + Sync>,
    behaviour: Mutex<Behaviour>,
    recorded: Mutex<Vec<Recorded>>,
    connections: AtomicUsize,
    /// Permits for held requests ([`Behaviour::hold`]).
    gate: tokio::sync::Semaphore,
}

/// A running fake upstream.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeUpstream {
    /// Starts a fake knowing `apps` as (id, key, secret), checking
    /// timestamps against `now`.
    pub async fn start(
        apps: &[(&str, &str, &str)],
        now: impl Fn() -> u64 + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind fake");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State {
            apps: apps
                .iter()
                .map(|(id, key, secret)| ((*id).into(), ((*key).into(), (*secret).into())))
                .collect(),
            now: Box::new(now),
            behaviour: Mutex::new(Behaviour::default()),
            recorded: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
            gate: tokio::sync::Semaphore::new(0),
        });
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                shared.connections.fetch_add(1, Ordering::SeqCst);
                let state = shared.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, hyper::Error>(answer(&state, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, state, task }
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Changes how the fake answers.
    pub fn set(&self, f: impl FnOnce(&mut Behaviour)) {
        f(&mut self.state.behaviour.lock().expect("lock"));
    }

    /// Every request received so far.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.state.recorded.lock().expect("lock").clone()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Lets `n` held requests (or the next `n` to be held) be answered,
    /// oldest waiter first.
    pub fn release(&self, n: usize) {
        self.state.gate.add_permits(n);
    }

    /// Stops holding, and answers every request held so far.
    pub fn release_all(&self) {
        self.set(|b| b.hold = false);
        self.state
            .gate
            .add_permits(tokio::sync::Semaphore::MAX_PERMITS / 2);
    }

    /// Waits (at most 10 s) until `n` requests have been received, and
    /// returns them.
    pub async fn wait_for_requests(&self, n: usize) -> Vec<Recorded> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let recorded = self.recorded();
            if recorded.len() >= n {
                return recorded;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the fake received {} requests, not {n}: {:?}",
                recorded.len(),
                recorded.iter().map(|r| &r.path).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn json(status: u16, body: serde_json::Value) -> (u16, &'static str, String) {
    (status, "application/json", body.to_string())
}

async fn answer(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or("").to_owned();
    let segments: Vec<&str> = path.split('/').collect();
    let app_id = match segments.as_slice() {
        ["", "apps", id, ..] => Some((*id).to_owned()),
        _ => None,
    };
    let signature = match app_id.as_ref().and_then(|id| state.apps.get(id)) {
        None => Err("unknown app".to_owned()),
        Some((key, secret)) => {
            let given_key = oracle::parse_query(&query)
                .into_iter()
                .find(|(k, _)| k == "auth_key")
                .map(|(_, v)| v);
            if given_key.as_deref() != Some(key.as_str()) {
                Err("auth_key does not belong to the app".to_owned())
            } else {
                oracle::verify_strict(
                    parts.method.as_str(),
                    &path,
                    &query,
                    &body,
                    secret,
                    (state.now)(),
                )
            }
        }
    };
    let recorded = Recorded {
        method: parts.method.to_string(),
        path: path.clone(),
        query,
        headers: parts.headers,
        body,
        signature: signature.clone(),
        received: std::time::Instant::now(),
    };
    state.recorded.lock().expect("lock").push(recorded.clone());
    let hold = state.behaviour.lock().expect("lock").hold;
    if hold && let Ok(permit) = state.gate.acquire().await {
        permit.forget();
    }
    let (behaviour, delay) = {
        let mut behaviour = state.behaviour.lock().expect("lock");
        let delay = behaviour.next_delays.pop_front().unwrap_or(behaviour.delay);
        (behaviour.clone(), delay)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    let channel_info =
        recorded.method == "GET" && matches!(segments.as_slice(), ["", "apps", _, "channels", _]);
    let (status, content_type, text) = if let Some(fixed) = behaviour.fixed {
        fixed
    } else if let Some(fixed) = behaviour
        .channel_info_fixed
        .clone()
        .filter(|_| channel_info)
    {
        fixed
    } else if let Err(reason) = signature {
        json(
            401,
            serde_json::json!({"error": reason, "code": "unauthorized", "status": 401}),
        )
    } else {
        route(&recorded, &segments, &behaviour)
    };

    let mut resp = Response::new(Full::new(Bytes::from(text)));
    *resp.status_mut() = StatusCode::from_u16(status).expect("valid status");
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut()
        .insert("x-fake-upstream", HeaderValue::from_static("1"));
    if behaviour.connection_close {
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

fn route(req: &Recorded, segments: &[&str], behaviour: &Behaviour) -> (u16, &'static str, String) {
    match (req.method.as_str(), segments) {
        ("POST", ["", "apps", _, "events"]) => {
            let body: serde_json::Value = match serde_json::from_slice(&req.body) {
                Ok(v) => v,
                Err(_) => return json(400, serde_json::json!({"error": "invalid JSON"})),
            };
            if !body["name"].is_string() || !body["data"].is_string() {
                return json(
                    400,
                    serde_json::json!({"error": "name and data are required"}),
                );
            }
            json(200, serde_json::json!({"ok": true}))
        }
        // Spec B.2, as sockudo answers it: each event with one channel, at
        // most `batch_limit`, `{}` on success.
        ("POST", ["", "apps", _, "batch_events"]) => {
            let body: serde_json::Value = match serde_json::from_slice(&req.body) {
                Ok(v) => v,
                Err(_) => return json(400, serde_json::json!({"error": "invalid JSON"})),
            };
            let Some(batch) = body["batch"].as_array() else {
                return json(400, serde_json::json!({"error": "batch is required"}));
            };
            let limit = behaviour.batch_limit;
            if batch.len() > limit {
                return json(
                    400,
                    serde_json::json!({"error": format!("Batch size ({}) exceeds limit ({limit})", batch.len()), "code": "limit_exceeded", "status": 400}),
                );
            }
            let valid = |e: &serde_json::Value| {
                e["name"].is_string() && e["data"].is_string() && e["channel"].is_string()
            };
            if !batch.iter().all(valid) {
                return json(
                    400,
                    serde_json::json!({"error": "each event needs name, channel and data"}),
                );
            }
            json(200, serde_json::json!({}))
        }
        ("GET", ["", "apps", _, "channels", channel]) => {
            let info = req.param("info").unwrap_or_default();
            let wants = |a: &str| info.split(',').any(|x| x == a);
            let presence = channel.starts_with("presence-");
            if wants("user_count") && !presence {
                return (
                    400,
                    "text/plain",
                    "user_count is only available for presence channels".into(),
                );
            }
            if wants("subscription_count") && presence && !behaviour.presence_subscription_count {
                return (
                    400,
                    "text/plain",
                    "subscription_count is not available for presence channels".into(),
                );
            }
            if wants("subscription_count") && !behaviour.counting_enabled {
                return (
                    400,
                    "text/plain",
                    "Cannot retrieve the subscription count because subscription counting is not enabled".into(),
                );
            }
            let mut body = serde_json::json!({"occupied": true, "cache": null});
            if wants("subscription_count") {
                body["subscription_count"] = 3.into();
                body["subscription_count_complete"] = true.into();
            }
            if wants("user_count") {
                body["user_count"] = 2.into();
            }
            json(200, body)
        }
        // The deprecated routes, as Pusher still serves them (for `observe`).
        ("POST", ["", "apps", _, "channels", _, "events"]) => {
            (202, "text/plain", "202 ACCEPTED\n".into())
        }
        ("GET" | "HEAD", ["", "apps", _, "channels", channel, "stats"]) => {
            let mut body = serde_json::json!({"occupied": true});
            if channel.starts_with("presence-") {
                body["user_count"] = 2.into();
            }
            if let Some(count) = behaviour.legacy_connection_count {
                body["connection_count"] = count.into();
            }
            json(200, body)
        }
        _ => json(
            200,
            serde_json::json!({"echo": req.path, "method": req.method}),
        ),
    }
}
