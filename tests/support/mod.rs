//! Test support shared by the integration, end-to-end and deploy tests:
//! the fake upstream, the independent signer, the recorded legacy requests,
//! a proxy on an ephemeral port (in process, or the binary as a child
//! process), an HTTP client, and captured logs.
//!
//! Each test crate includes it with `#[path = "../support/mod.rs"] mod
//! support;` (`tests/deploy.rs`: `#[path = "support/mod.rs"]`); crates that
//! use only part of it allow `dead_code` on that line.

pub mod binary;
pub mod fake;
pub mod oracle;
pub mod recordings;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use pusher_cutover::{Clock, Config, FixedClock, SystemClock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Credentials of the legacy fixtures (tests/fixtures/legacy-requests.txt).
pub const APP_ID: &str = "4242";
pub const KEY: &str = "legacy-app-key";
pub const SECRET: &str = "legacy-app-secret";

/// Bound on every request a test makes.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Seconds since the epoch, from the system clock.
pub fn now() -> u64 {
    SystemClock.unix_now()
}

/// A proxy serving on an ephemeral loopback port.
pub struct TestProxy {
    pub addr: SocketAddr,
    /// The admin listener's address.
    pub admin: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestProxy {
    /// Starts a proxy for `toml` (its `listen` is ignored) with `clock`.
    pub async fn start(toml: &str, clock: Arc<dyn Clock>) -> Self {
        let config = Config::from_toml_str(toml, &|_| None).expect("valid test config");
        Self::start_config(config, clock).await
    }

    /// Starts a proxy for the config file at `path`, reloadable through
    /// `POST /reload` on its admin listener.
    pub async fn start_file(path: &std::path::Path) -> Self {
        let config = Config::from_file(path, &|_| None).expect("valid test config");
        let source = pusher_cutover::ConfigSource::File(path.to_owned());
        Self::start_with(config, Arc::new(SystemClock), Some(source)).await
    }

    /// Starts a proxy for a validated config with `clock`.
    pub async fn start_config(config: Config, clock: Arc<dyn Clock>) -> Self {
        Self::start_with(config, clock, None).await
    }

    async fn start_with(
        config: Config,
        clock: Arc<dyn Clock>,
        reload: Option<pusher_cutover::ConfigSource>,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let admin_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let admin = admin_listener.local_addr().expect("admin addr");
        let (tx, rx) = oneshot::channel();
        let options = pusher_cutover::Options {
            clock,
            admin_listener: Some(admin_listener),
            reload,
            #[cfg(unix)]
            sighup: None,
        };
        let task = tokio::spawn(async move {
            pusher_cutover::run_with(listener, config, options, async move {
                let _ = rx.await;
            })
            .await
            .expect("proxy runs");
        });
        Self {
            addr,
            admin,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Starts a proxy in front of `upstream_url` with the fixture app and
    /// extra TOML lines for `[upstream]` and `[[apps]]`.
    pub async fn for_upstream(upstream_url: &str, upstream_extra: &str, app_extra: &str) -> Self {
        Self::start(
            &config_toml(upstream_url, upstream_extra, app_extra),
            Arc::new(SystemClock),
        )
        .await
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://admin-addr`.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// `method path` on the admin listener, without a body: its answer.
    async fn admin_call(&self, method: Method, path: &str) -> Answer {
        send(method, &format!("{}{path}", self.admin_url()), &[], "").await
    }

    /// `POST /reload` on the admin listener: its answer.
    pub async fn reload(&self) -> Answer {
        self.admin_call(Method::POST, "/reload").await
    }

    /// The text of the admin listener's `/metrics`.
    pub async fn metrics(&self) -> String {
        self.admin_call(Method::GET, "/metrics").await.text()
    }

    /// The value of `series` in `/metrics` once it reads `expected`, read
    /// again every 50 ms for at most 2.5 s (what the proxy counts after it
    /// answers); otherwise the last value read.
    pub async fn metric_reaching(&self, series: &str, expected: f64) -> Option<f64> {
        let mut seen = None;
        for _ in 0..50 {
            seen = metric(&self.metrics().await, series);
            if seen == Some(expected) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        seen
    }

    /// Signals shutdown without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Stops accepting, drains, and waits for the server task (bounded).
    pub async fn stop(mut self) {
        self.begin_shutdown();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("proxy stops within 10 s")
                .expect("proxy task ends cleanly");
        }
    }
}

/// Stops a proxy that tasks shared; they must all have finished.
pub async fn stop_shared(proxy: Arc<TestProxy>) {
    match Arc::try_unwrap(proxy) {
        Ok(p) => p.stop().await,
        Err(_) => panic!("the proxy is still shared"),
    }
}

/// The value of one series in a metrics exposition.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A config for the fixture app in front of `upstream_url`.
pub fn config_toml(upstream_url: &str, upstream_extra: &str, app_extra: &str) -> String {
    format!(
        "listen = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstream]\nurl = \"{upstream_url}\"\n{upstream_extra}\n\
         [[apps]]\nid = \"{APP_ID}\"\nkey = \"{KEY}\"\nsecret = \"{SECRET}\"\n{app_extra}\n"
    )
}

/// A config file, `proxy.toml`, in a temporary directory of its own (gone
/// when this is dropped): for the tests that start a proxy from a file,
/// then rewrite it and reload, or hand it to the binary.
pub struct ConfigFile {
    dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

impl ConfigFile {
    /// `toml`, written to a new directory's `proxy.toml`.
    pub fn new(toml: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("proxy.toml");
        let file = Self { dir, path };
        file.write(toml);
        file
    }

    /// The file's path.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The directory it is in, for files the config names.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Replaces the file's contents with `toml`.
    pub fn write(&self, toml: &str) {
        std::fs::write(&self.path, toml).expect("write config");
    }
}

/// A fake upstream that knows the fixture app and the system clock.
pub async fn fake() -> fake::FakeUpstream {
    fake::FakeUpstream::start(&[(APP_ID, KEY, SECRET)], now).await
}

/// A fixed clock shared by proxy and fake.
pub fn fixed_clock(at: u64) -> Arc<FixedClock> {
    Arc::new(FixedClock::new(at))
}

/// A response as a test sees it.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

fn client() -> &'static Client<HttpConnector, Full<Bytes>> {
    static CLIENT: OnceLock<Client<HttpConnector, Full<Bytes>>> = OnceLock::new();
    CLIENT.get_or_init(|| Client::builder(TokioExecutor::new()).build_http())
}

/// The header of a JSON request body.
pub const JSON: &[(&str, &str)] = &[("content-type", "application/json")];

/// Sends a request through a pooled client and reads the whole answer;
/// panics, naming the request, if it cannot be sent or is not answered
/// within [`REQUEST_TIMEOUT`].
pub async fn send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Answer {
    try_send(method.clone(), url, headers, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

/// As [`send`], with a failure to connect, send or read (or no answer
/// within [`REQUEST_TIMEOUT`]) returned, for polling a server that may not
/// be listening yet.
pub async fn try_send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<Answer, String> {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(body.into()))
        .map_err(|e| format!("invalid request: {e}"))?;
    let exchange = async {
        let resp = client()
            .request(req)
            .await
            .map_err(|e| format!("request not sent: {e:?}"))?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("body not read: {e}"))?
            .to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("not answered within {REQUEST_TIMEOUT:?}"))?
}

/// Writes `raw` bytes to `addr` as they are, and reads one response with a
/// `Content-Length` body.
pub async fn raw_exchange(addr: SocketAddr, raw: &[u8]) -> Answer {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(raw).await.expect("write");
        read_response(&mut stream).await
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .expect("answered within the request timeout")
}

/// Reads one HTTP/1.1 response with a `Content-Length` body.
pub async fn read_response(stream: &mut TcpStream) -> Answer {
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "connection closed before a full response: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(head_len) = resp.parse(&buf).expect("valid response") {
            let mut map = HeaderMap::new();
            for h in resp.headers.iter() {
                map.append(
                    hyper::header::HeaderName::from_bytes(h.name.as_bytes()).expect("name"),
                    hyper::header::HeaderValue::from_bytes(h.value).expect("value"),
                );
            }
            let status = StatusCode::from_u16(resp.code.expect("code")).expect("status");
            let len: usize = map
                .get("content-length")
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .expect("content-length");
            while buf.len() < head_len + len {
                let n = stream.read(&mut chunk).await.expect("read body");
                assert!(n > 0, "connection closed inside the body");
                buf.extend_from_slice(&chunk[..n]);
            }
            return Answer {
                status,
                headers: map,
                body: Bytes::copy_from_slice(&buf[head_len..head_len + len]),
            };
        }
    }
}

/// `path?query`, the query signed by the oracle (see
/// [`oracle::signed_query`] for the arguments).
pub fn signed_uri(
    key: &str,
    secret: &str,
    method: &str,
    path: &str,
    timestamp: u64,
    body: Option<&[u8]>,
    params: &[(&str, &str)],
) -> String {
    let q = oracle::signed_query(key, secret, method, path, timestamp, body, params);
    format!("{path}?{q}")
}

/// The path and signed query of a legacy trigger, signed by the oracle.
pub fn legacy_trigger_uri(
    channel_raw: &str,
    params: &[(&str, &str)],
    body: &[u8],
    timestamp: u64,
) -> String {
    let path = format!("/apps/{APP_ID}/channels/{channel_raw}/events");
    signed_uri(KEY, SECRET, "POST", &path, timestamp, Some(body), params)
}

/// The path and signed query of a current-API trigger (`POST /apps/{APP_ID}/events`), signed by the oracle.
pub fn current_trigger_uri(body: &[u8], timestamp: u64) -> String {
    let path = format!("/apps/{APP_ID}/events");
    signed_uri(KEY, SECRET, "POST", &path, timestamp, Some(body), &[])
}

/// The path and signed query of a legacy stats call, signed by the oracle.
pub fn legacy_stats_uri(channel_raw: &str, timestamp: u64) -> String {
    let path = format!("/apps/{APP_ID}/channels/{channel_raw}/stats");
    signed_uri(KEY, SECRET, "GET", &path, timestamp, None, &[])
}

/// Everything the crate logged in this test binary, at every level.
pub fn logs() -> String {
    let buf = log_buffer().lock().expect("lock");
    String::from_utf8_lossy(&buf).into_owned()
}

fn log_buffer() -> &'static Arc<Mutex<Vec<u8>>> {
    static BUF: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUF.get_or_init(|| Arc::new(Mutex::new(Vec::new())))
}

struct BufWriter(Arc<Mutex<Vec<u8>>>);

impl Write for BufWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The captured log lines containing every one of `needles`, polled
/// until one shows up (worker threads hand their lines over in batches)
/// or 5 s pass.
pub async fn log_lines(needles: &[&str]) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let found: Vec<String> = logs()
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_owned)
            .collect();
        if !found.is_empty() || tokio::time::Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Installs the capturing subscriber (TRACE for everything) once per binary.
pub fn capture_logs() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let buf = log_buffer().clone();
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || BufWriter(buf.clone()))
            .try_init();
    });
}

/// Reads one whole request (head and `content-length` body) into `buf`;
/// its length, or `None` at the end of the connection.
pub async fn read_http_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let body = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + body {
                return Some(end + 4 + body);
            }
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
