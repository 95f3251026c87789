//! The five-minute walkthrough, offline: `cargo run --example walkthrough`.
//!
//! Starts a **stand-in upstream** (a few lines of Rust below that answer the
//! current Pusher HTTP API and check the proxy's signatures: not Pusher, not
//! Sockudo), starts `pusher-cutover` in front of it with a ledger in a
//! temporary directory, replays legacy triggers as four real 2012 library
//! releases sent them (`tests/fixtures/legacy-requests.txt`, re-signed at
//! the current time, byte for byte otherwise), makes a legacy stats call
//! and a forged one, stops the proxy (which writes its ledger), and prints
//! the report: who still makes deprecated calls, by library family.
//!
//! `tests/integration/walkthrough.rs` runs [`run`], so this cannot rot.

use std::convert::Infallible;
use std::error::Error;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use pusher_cutover::pusher::query::QueryParams;
use pusher_cutover::pusher::signature::{sign, signature_matches};
use pusher_cutover::report::{self, sources::Source};
use pusher_cutover::{Config, Options};
use secrecy::SecretString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The fixture app's credentials (the recordings were signed with them).
const APP_ID: &str = "4242";
const KEY: &str = "legacy-app-key";
const SECRET: &str = "legacy-app-secret";

/// The releases replayed, and how many calls each makes.
const CALLERS: [(&str, usize); 4] = [
    ("PyPI pusher 0.3", 5),
    ("PyPI pusher 0.7", 3),
    ("npm node-pusher 0.0.2", 2),
    ("npm pusher 0.0.4", 1),
];

/// Any error of the walkthrough.
type BoxError = Box<dyn Error + Send + Sync>;

/// What a run did, for the test that runs it.
#[derive(Debug)]
pub struct Walkthrough {
    /// Legacy calls answered as old clients expect (202 or 200).
    pub accepted: usize,
    /// Status of the forged call.
    pub forged_status: u16,
    /// Current-API calls the stand-in upstream received, each with whether
    /// the proxy's signature on it was valid.
    pub upstream_calls: Vec<(String, bool)>,
    /// The report, as `pusher-cutover report` prints it.
    pub report: String,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut out = std::io::stdout();
    run(&mut out).await?;
    Ok(())
}

/// Runs the walkthrough, narrating on `out`.
pub async fn run(out: &mut dyn Write) -> Result<Walkthrough, BoxError> {
    writeln!(
        out,
        "pusher-cutover walkthrough: everything on 127.0.0.1, nothing to install\n"
    )?;

    // 1. The stand-in upstream.
    let upstream = StandIn::start().await?;
    writeln!(
        out,
        "[1] STAND-IN UPSTREAM on http://{}: NOT Pusher, NOT Sockudo, but a few lines of Rust in \
         examples/walkthrough.rs\n    that answer the current API (POST /apps/{{id}}/events, GET \
         /apps/{{id}}/channels/{{channel}}) and check every signature.",
        upstream.addr
    )?;

    // 2. The proxy in front of it, with a ledger.
    let data_dir = tempfile::tempdir()?;
    let config = Config::from_toml_str(
        &format!(
            "listen = \"127.0.0.1:0\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\
             [telemetry]\ndata_dir = {data_dir:?}\n\
             [upstream]\nurl = \"http://{upstream}\"\n\
             [[apps]]\nid = \"{APP_ID}\"\nkey = \"{KEY}\"\nsecret = \"{SECRET}\"\nmode = \"translate\"\n",
            data_dir = data_dir.path().display().to_string(),
            upstream = upstream.addr,
        ),
        &|_| None,
    )
    .map_err(|e| format!("config: {}", e.problems().join("; ")))?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let proxy = listener.local_addr()?;
    let admin = TcpListener::bind("127.0.0.1:0").await?;
    let admin_addr = admin.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let options = Options {
        admin_listener: Some(admin),
        ..Options::default()
    };
    let served = tokio::spawn(pusher_cutover::run_with(listener, config, options, async {
        let _ = stopped.await;
    }));
    writeln!(
        out,
        "[2] pusher-cutover on http://{proxy} (admin http://{admin_addr}), app {APP_ID} in mode \
         translate,\n    ledger in {}",
        data_dir.path().display()
    )?;

    // 3. Legacy triggers, as the libraries sent them.
    let recordings = recordings()?;
    writeln!(
        out,
        "[3] legacy triggers (POST /apps/{APP_ID}/channels/test-channel/events), replayed as four \
         2012 releases sent them,\n    re-signed now (tests/fixtures/legacy-requests.txt):"
    )?;
    let now = unix_now();
    let mut accepted = 0;
    for (title, calls) in CALLERS {
        let r = recordings
            .iter()
            .find(|r| r.library == title)
            .ok_or_else(|| format!("no recording of {title}"))?;
        let mut statuses = Vec::new();
        for _ in 0..calls {
            let (status, _) = exchange(proxy, &r.resigned_at(now, SECRET)?).await?;
            accepted += usize::from(status == 202);
            statuses.push(status.to_string());
        }
        writeln!(
            out,
            "    {title:<22} {calls} call(s) -> {}",
            statuses.join(" ")
        )?;
    }

    // 4. A legacy stats call, and a forged trigger.
    let stats = legacy_stats(now);
    let (status, body) = exchange(proxy, &stats).await?;
    accepted += usize::from(status == 200);
    writeln!(
        out,
        "[4] legacy stats (GET /apps/{APP_ID}/channels/test-channel/stats) -> {status} {}",
        body.trim()
    )?;
    let forged = recordings
        .first()
        .ok_or("no recording")?
        .resigned_at(now, "not-the-secret")?;
    let (forged_status, body) = exchange(proxy, &forged).await?;
    writeln!(
        out,
        "    a trigger signed with the wrong secret -> {forged_status} {} (nothing forwarded)",
        body.trim()
    )?;

    // 5. What the upstream saw.
    let upstream_calls = upstream.seen();
    let valid = upstream_calls.iter().filter(|(_, ok)| *ok).count();
    writeln!(
        out,
        "[5] the stand-in upstream received {} current-API call(s), {valid} with a valid signature \
         by the proxy, e.g.:",
        upstream_calls.len()
    )?;
    for (call, _) in upstream_calls.iter().take(2) {
        writeln!(out, "    {call}")?;
    }

    // 6. Stop the proxy (as SIGTERM does): it drains and writes its ledger.
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), served)
        .await
        .map_err(|_| "the proxy did not stop within 30 s")???;
    let ledgers =
        report::sources::load(&[Source::DataDir(data_dir.path().to_owned())], None).await?;
    let now = time::OffsetDateTime::now_utc();
    let now = now.replace_nanosecond(0).unwrap_or(now);
    let built = report::build_for_ledgers(&ledgers, now, None, &[APP_ID.to_owned()]);
    let table = report::render_table(&built);
    writeln!(
        out,
        "[6] the proxy stopped and wrote its ledger; the report (`pusher-cutover report --data-dir \
         DIR`):\n\n{table}"
    )?;
    writeln!(
        out,
        "Next: point a real app at the proxy (README, \"Pointing a legacy app at it\"); the \
         upstream above was a stand-in."
    )?;
    Ok(Walkthrough {
        accepted,
        forged_status,
        upstream_calls,
        report: table,
    })
}

/// Now, in Unix seconds.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The stand-in upstream: answers the current API's trigger and channel
/// info calls for the fixture app, and records each call with whether its
/// signature (by the proxy) was valid.
struct StandIn {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<(String, bool)>>>,
}

impl StandIn {
    async fn start() -> Result<Self, BoxError> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let seen: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = log.clone();
                let service = service_fn(move |req| answer(req, log.clone()));
                tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
            }
        });
        Ok(Self { addr, seen })
    }

    fn seen(&self) -> Vec<(String, bool)> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// One stand-in answer.
async fn answer(
    req: Request<hyper::body::Incoming>,
    seen: Arc<Mutex<Vec<(String, bool)>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or("");
    let signed = QueryParams::parse(query).is_ok_and(|q| {
        let secret = SecretString::from(SECRET);
        let params = q.iter().filter(|(k, _)| *k != "auth_signature");
        q.get("auth_signature").is_some_and(|sig| {
            signature_matches(&secret, parts.method.as_str(), &path, params, sig)
        })
    });
    let line = format!("{} {path} {}", parts.method, String::from_utf8_lossy(&body));
    if let Ok(mut s) = seen.lock() {
        s.push((line.trim_end().to_owned(), signed));
    }
    let (status, text) = if !signed {
        (
            StatusCode::UNAUTHORIZED,
            "{\"error\":\"invalid signature\"}",
        )
    } else if parts.method == hyper::Method::POST && path == format!("/apps/{APP_ID}/events") {
        (StatusCode::OK, "{}")
    } else if parts.method == hyper::Method::GET
        && path.starts_with(&format!("/apps/{APP_ID}/channels/"))
    {
        (
            StatusCode::OK,
            "{\"occupied\":true,\"subscription_count\":2}",
        )
    } else {
        (StatusCode::NOT_FOUND, "{\"error\":\"not found\"}")
    };
    let mut resp = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// Writes `raw` to the proxy as it is and reads one answer: its status and
/// body (`Content-Length` framed, as the proxy's answers to legacy calls
/// are).
async fn exchange(proxy: SocketAddr, raw: &[u8]) -> Result<(u16, String), BoxError> {
    let mut stream = TcpStream::connect(proxy).await?;
    stream.write_all(raw).await?;
    let mut buf = Vec::new();
    let read = async {
        loop {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err::<(), BoxError>("connection closed before a whole answer".into());
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + length {
                    buf.truncate(end + 4 + length);
                    return Ok(());
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .map_err(|_| "no answer within 10 s")??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no status line")?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((status, body))
}

/// A legacy stats call, built as the 2012 libraries did (this one by hand:
/// its sender shows as `unknown` in the report).
fn legacy_stats(now: u64) -> Vec<u8> {
    let path = format!("/apps/{APP_ID}/channels/test-channel/stats");
    let timestamp = now.to_string();
    let params = [
        ("auth_key", KEY),
        ("auth_timestamp", timestamp.as_str()),
        ("auth_version", "1.0"),
    ];
    let signature = sign(&SecretString::from(SECRET), "GET", &path, params);
    format!(
        "GET {path}?auth_key={KEY}&auth_timestamp={now}&auth_version=1.0&auth_signature={signature} \
         HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: walkthrough-stats/1.0\r\n\r\n"
    )
    .into_bytes()
}

/// One request recorded from a real library release.
struct Recording {
    library: String,
    request_line: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Recording {
    /// The recorded bytes with `auth_timestamp` set to `now` and
    /// `auth_signature` recomputed with `secret`; nothing else changes
    /// (header order and case, query order and encoding, the body), so the
    /// report still tells the libraries apart.
    fn resigned_at(&self, now: u64, secret: &str) -> Result<Vec<u8>, BoxError> {
        let mut words = self.request_line.split(' ');
        let method = words.next().ok_or("no method")?;
        let target = words.next().ok_or("no target")?;
        let (path, query) = target.split_once('?').ok_or("no query")?;
        let q = QueryParams::parse(query)?;
        let old_ts = q.get("auth_timestamp").ok_or("no auth_timestamp")?;
        let old_sig = q.get("auth_signature").ok_or("no auth_signature")?;
        let now = now.to_string();
        let params = q
            .iter()
            .filter(|(k, _)| *k != "auth_signature")
            .map(|(k, v)| {
                if k == "auth_timestamp" {
                    (k, now.as_str())
                } else {
                    (k, v)
                }
            });
        let signature = sign(&SecretString::from(secret), method, path, params);
        let mut raw = format!("{}\r\n", self.request_line);
        for (k, v) in &self.headers {
            raw.push_str(&format!("{k}: {v}\r\n"));
        }
        raw.push_str("\r\n");
        raw.push_str(&self.body);
        Ok(raw
            .replacen(
                &format!("auth_timestamp={old_ts}"),
                &format!("auth_timestamp={now}"),
                1,
            )
            .replacen(
                &format!("auth_signature={old_sig}"),
                &format!("auth_signature={signature}"),
                1,
            )
            .into_bytes())
    }
}

/// The fixture's recordings: `## library`, the request line, a `headers:`
/// list of pairs, a `body:` line.
fn recordings() -> Result<Vec<Recording>, BoxError> {
    let text = include_str!("../tests/fixtures/legacy-requests.txt");
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(library) = line.strip_prefix("## ") else {
            continue;
        };
        let request_line = lines.next().ok_or("no request line")?.to_owned();
        let headers = lines
            .next()
            .and_then(|l| l.strip_prefix("headers: "))
            .ok_or("no headers line")?;
        let headers: Vec<(String, String)> = serde_json::from_str(&headers.replace('\'', "\""))?;
        let body = lines
            .next()
            .and_then(|l| l.strip_prefix("body: "))
            .ok_or("no body line")?
            .to_owned();
        out.push(Recording {
            library: library.to_owned(),
            request_line,
            headers,
            body,
        });
    }
    Ok(out)
}
