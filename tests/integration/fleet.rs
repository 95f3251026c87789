//! The fleet view on Prometheus: `report --prometheus` against Debian's
//! real `prometheus`, scraping two sidecars (the binary) every second,
//! and each exit code of its gate: 1 with calls (naming app, library and
//! instance), 0 for a zero with full coverage, 2 with a gap (a sidecar
//! stopped, a sidecar's kill switch turned on). Also the ledger's side of
//! the same rule: a ledger that starts inside the gate's window cannot
//! prove zero.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use hyper::Method;
use tokio::process::{Child, Command};

use super::support::{self, binary::BIN, binary::Served};

/// Debian's Prometheus (`tests/install-parts.sh` installs it).
const PROMETHEUS: &str = "/usr/bin/prometheus";

/// The app that is never called.
const QUIET_APP: &str = "7000";

/// The gate's window: short, so that the test can cover it fully.
const WINDOW: &str = "12s";
const WINDOW_SECS: u64 = 12;

fn config(upstream: &str) -> String {
    format!(
        "{}\n[[apps]]\nid = \"{QUIET_APP}\"\nkey = \"quiet-key\"\nsecret = \"quiet-secret\"\n",
        support::config_toml(upstream, "", "")
    )
}

/// A free loopback port (bound, then released for Prometheus).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a loopback port")
        .port()
}

struct Prometheus {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` as job `pusher-cutover` every
    /// second, its storage in `dir`; waits (bounded) until it is ready.
    async fn start(dir: &Path, targets: &[&str]) -> Self {
        let port = free_port();
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: pusher-cutover\n    static_configs:\n      - targets: [{}]\n",
                list.join(", ")
            ),
        )
        .expect("write prometheus.yml");
        let log = dir.join("prometheus.log");
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{PROMETHEUS} does not start ({e}): run tests/install-parts.sh")
            });
        let p = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        };
        p.wait_for("Prometheus ready", || async {
            support::try_send(Method::GET, &format!("{}/-/ready", p.url), &[], "")
                .await
                .is_ok_and(|a| a.status.is_success())
        })
        .await;
        p
    }

    /// The value of an instant query's first series, if any.
    async fn value(&self, query: &str) -> Option<f64> {
        let q: String = form_urlencoded::byte_serialize(query.as_bytes()).collect();
        let a = support::try_send(
            Method::GET,
            &format!("{}/api/v1/query?query={q}", self.url),
            &[],
            "",
        )
        .await
        .ok()?;
        let v = a.json();
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    /// Polls `check` every 200 ms for at most 60 s.
    async fn wait_for<F, Fut>(&self, what: &str, check: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !check().await {
            assert!(
                Instant::now() < deadline,
                "{what}: not within 60 s; Prometheus log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// `report --prometheus URL --app APP --fail-if-used-since WINDOW`.
async fn gate(url: &str, app: &str, window: &str) -> (Option<i32>, String, String) {
    report(&[
        "--prometheus",
        url,
        "--app",
        app,
        "--fail-if-used-since",
        window,
    ])
    .await
}

async fn report(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .arg("report")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("report runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
#[ignore = "needs Debian's prometheus"]
async fn prometheus_fleet_report_and_each_exit_code_of_its_gate() {
    let fake = support::fake().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config_path = dir.path().join("config.toml");
    std::fs::write(&config_path, config(&fake.url())).expect("write config");
    let a = Served::start(&config_path).await;
    let b = Served::start(&config_path).await;
    let prom = Prometheus::start(dir.path(), &[&a.admin, &b.admin]).await;
    prom.wait_for("both sidecars scraped", || async {
        prom.value(r#"count(up{job="pusher-cutover"} == 1)"#).await == Some(2.0)
    })
    .await;
    let started = Instant::now();

    // 0: the quiet app, once Prometheus has watched both sidecars for
    // longer than the window. (The calls come after: `increase()`
    // extrapolates from the samples it has, and with many samples at 0
    // before the calls its estimate rounds to the calls made.)
    let covered = Duration::from_secs(WINDOW_SECS + 3);
    if let Some(rest) = covered.checked_sub(started.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    // On a loaded machine (the rest of the suite runs beside this test) a
    // scrape can come late or be missed, which the gate rightly names as a
    // gap (exit 2). Such a gap leaves the window after WINDOW_SECS, so the
    // check is asked again, at most three times; anything but 0 or 2 fails
    // at once, and so does a third gap.
    let mut attempt = 0;
    let err = loop {
        attempt += 1;
        let (code, _, err) = report(&[
            "--prometheus",
            &prom.url,
            "--app",
            QUIET_APP,
            "--expect-app",
            QUIET_APP,
            "--expect-instances",
            "2",
            "--fail-if-used-since",
            WINDOW,
        ])
        .await;
        match code {
            Some(0) => break err,
            Some(2) if attempt < 3 => {
                println!("attempt {attempt}: a gap, asking again after the window:\n{err}");
                tokio::time::sleep(Duration::from_secs(WINDOW_SECS / 2)).await;
            }
            _ => panic!("zero, with full coverage: exit {code:?}: {err}"),
        }
    };
    println!(
        "report --prometheus URL --app {QUIET_APP} --fail-if-used-since {WINDOW}: exit 0\n{err}"
    );
    assert!(err.contains("zero is proven"), "{err}");
    // Expecting a third sidecar makes its absence a gap.
    let (code, _, err) = report(&[
        "--prometheus",
        &prom.url,
        "--app",
        QUIET_APP,
        "--expect-instances",
        "3",
        "--fail-if-used-since",
        WINDOW,
    ])
    .await;
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("2 sidecar(s) up at the window's end, 3 expected"),
        "{err}"
    );

    // Three deprecated calls through sidecar a, once Prometheus has seen
    // its counters at 0.
    for _ in 0..3 {
        let uri = support::legacy_trigger_uri("room", &[("name", "ev")], b"{}", support::now());
        let answer =
            support::send(Method::POST, &format!("http://{}{uri}", a.addr), &[], "{}").await;
        assert_eq!(answer.status.as_u16(), 202, "{}", answer.text());
    }
    let seen = format!(
        r#"sum(pusher_cutover_deprecated_calls_total{{job="pusher-cutover",app_id="{}"}})"#,
        support::APP_ID
    );
    prom.wait_for("the calls scraped", || async {
        prom.value(&seen).await == Some(3.0)
    })
    .await;
    // The report evaluates at its start, in whole seconds: past that scrape.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // The report: the calls by library and instance, the quiet app with zero.
    let (code, json, err) = report(&[
        "--prometheus",
        &prom.url,
        "--since",
        "1h",
        "--format",
        "json",
    ])
    .await;
    assert_eq!(code, Some(0), "no gate, no failure: {err}");
    let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    let apps = v["apps"].as_array().expect("apps");
    let called = apps
        .iter()
        .find(|x| x["app_id"] == support::APP_ID)
        .unwrap_or_else(|| panic!("app {} listed: {json}", support::APP_ID));
    assert_eq!(called["window"], 3, "{json}");
    assert_eq!(called["last_24h"], 3, "{json}");
    assert_eq!(called["status"], "active");
    assert_eq!(called["deprecated_calls"]["legacy_trigger"], 3);
    let callers = called["callers"].as_array().expect("callers");
    assert_eq!(callers.len(), 1, "one library on one sidecar: {json}");
    assert_eq!(callers[0]["instance"], a.admin.as_str());
    let library = callers[0]["library"].as_str().expect("library").to_owned();
    assert!(!library.is_empty());
    let quiet = apps
        .iter()
        .find(|x| x["app_id"] == QUIET_APP)
        .unwrap_or_else(|| panic!("configured app {QUIET_APP} listed with zero: {json}"));
    assert_eq!(quiet["window"], 0);
    // Prometheus has scraped for seconds, not the hour: not proven.
    assert_eq!(quiet["status"], "unproven", "{json}");
    let gaps = v["prometheus"]["gaps"].as_array().expect("gaps");
    assert!(
        gaps.iter().any(|g| g["kind"] == "not_watched_at_start"),
        "{json}"
    );
    assert_eq!(v["prometheus"]["scrape_interval_seconds"], 1.0);
    assert_eq!(
        v["prometheus"]["instances"].as_object().map(|o| o.len()),
        Some(2)
    );
    let (code, table, err) = report(&["--prometheus", &prom.url, "--since", "1h"]).await;
    assert_eq!(code, Some(0), "{err}");
    // Shown with --nocapture (the README's sample is such a run).
    println!("report --prometheus URL --since 1h:\n{table}");
    assert!(
        table.contains(&format!("Prometheus {}", prom.url)),
        "{table}"
    );
    assert!(table.contains(&a.admin), "the caller's instance: {table}");

    // 1: calls were seen, named by app, library and instance.
    let (code, _, err) = gate(&prom.url, support::APP_ID, WINDOW).await;
    assert_eq!(code, Some(1), "{err}");
    println!("report --prometheus URL --app 4242 --fail-if-used-since {WINDOW}: exit 1\n{err}");
    let named = format!(
        "app {} library {library} instance {}: 3 legacy_trigger call(s)",
        support::APP_ID,
        a.admin
    );
    assert!(err.contains(&named), "{named} in: {err}");

    // 2: sidecar b stopped; Prometheus' failed scrapes are a gap, named.
    let b_admin = b.admin.clone();
    b.signal("KILL");
    let (stopped, _) = b.wait_text(Duration::from_secs(10)).await;
    assert_eq!(stopped, None, "killed by the signal");
    let down = format!(r#"up{{job="pusher-cutover",instance="{b_admin}"}}"#);
    prom.wait_for("sidecar b seen down", || async {
        prom.value(&down).await == Some(0.0)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (code, _, err) = gate(&prom.url, QUIET_APP, WINDOW).await;
    assert_eq!(code, Some(2), "{err}");
    println!(
        "report --prometheus URL --app {QUIET_APP} --fail-if-used-since {WINDOW}: exit 2\n{err}"
    );
    assert!(
        err.contains(&format!("gap: sidecar {b_admin} was not reachable for")),
        "{err}"
    );
    // Calls seen still win over gaps: exit 1.
    let (code, _, err) = gate(&prom.url, support::APP_ID, "10m").await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("gap: sidecar"), "{err}");

    // 2: sidecar a's kill switch turned on by SIGHUP; once Prometheus has
    // scraped its bypass gauge at 1, that too is a gap, named. (Its 0 in
    // the exit-0 run above was no gap.)
    std::fs::write(
        &config_path,
        config(&fake.url()).replace("[admin]", "bypass = true\n[admin]"),
    )
    .expect("bypass on");
    a.signal("HUP");
    let bypassed = format!(
        r#"pusher_cutover_bypass{{job="pusher-cutover",instance="{}"}}"#,
        a.admin
    );
    prom.wait_for("sidecar a seen with bypass on", || async {
        prom.value(&bypassed).await == Some(1.0)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (code, _, err) = gate(&prom.url, QUIET_APP, WINDOW).await;
    assert_eq!(code, Some(2), "{err}");
    let named = format!(
        "gap: sidecar {} had bypass on (the kill switch) during the window",
        a.admin
    );
    assert!(err.contains(&named), "{named} in: {err}");

    // 2: a reload removes the quiet app from sidecar a. Its series stay
    // until a restart, but its `pusher_cutover_app_configured` gauge goes
    // to 0: --expect-app names the sidecar that stopped serving it.
    std::fs::write(&config_path, support::config_toml(&fake.url(), "", "")).expect("app removed");
    a.signal("HUP");
    let dropped = format!(
        r#"pusher_cutover_app_configured{{job="pusher-cutover",instance="{}",app_id="{QUIET_APP}"}}"#,
        a.admin
    );
    prom.wait_for("sidecar a seen without the quiet app", || async {
        prom.value(&dropped).await == Some(0.0)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (code, _, err) = report(&[
        "--prometheus",
        &prom.url,
        "--app",
        QUIET_APP,
        "--expect-app",
        QUIET_APP,
        "--fail-if-used-since",
        WINDOW,
    ])
    .await;
    assert_eq!(code, Some(2), "{err}");
    let named = format!("app {QUIET_APP} is not configured on sidecar(s) ");
    assert!(
        err.lines()
            .any(|l| l.contains(&named) && l.contains(a.admin.as_str())),
        "{named}… {} in: {err}",
        a.admin
    );
    drop(a);
}

/// A Prometheus that cannot be reached: exit 2, naming it.
#[tokio::test]
async fn an_unreachable_prometheus_is_exit_2() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let (code, _, err) = report(&["--prometheus", &url, "--fail-if-used-since", "1h"]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&url), "{err}");
}

/// The ledger's side of the rule: a ledger that began recording a moment
/// ago has no call in the last 24 h, but cannot prove it (exit 2, the gap
/// named); its 1 s window is covered (exit 0).
#[tokio::test]
async fn a_ledger_starting_inside_the_window_cannot_prove_zero() {
    let fake = support::fake().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let toml = format!(
        "{}\n[telemetry]\ndata_dir = \"{}\"\n",
        support::config_toml(&fake.url(), "", ""),
        data.display()
    );
    let proxy =
        support::TestProxy::start(&toml, std::sync::Arc::new(pusher_cutover::SystemClock)).await;
    proxy.stop().await;
    let data_arg = data.display().to_string();
    let (code, _, err) = report(&["--data-dir", &data_arg, "--fail-if-used-since", "24h"]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("gap: the ledger records since"), "{err}");
    assert!(err.contains("after the window's start"), "{err}");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (code, _, err) = report(&["--data-dir", &data_arg, "--fail-if-used-since", "1s"]).await;
    assert_eq!(code, Some(0), "{err}");
}

/// An in-process stand-in for Prometheus' HTTP API: every query answers
/// an empty result, the job has one active target scraped every 15 s;
/// with `token`, anything without `Authorization: Bearer <token>` gets
/// 401. Returns its URL and the request lines it received.
fn fake_prometheus(
    token: Option<&'static str>,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut buf = [0u8; 8192];
            let mut req = Vec::new();
            // Head, then the body its content-length announces.
            loop {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
                let text = String::from_utf8_lossy(&req).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(str::to_owned)
                        })
                        .and_then(|n| n.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if body.len() >= len {
                        break;
                    }
                }
            }
            let text = String::from_utf8_lossy(&req).to_string();
            let line = text.lines().next().unwrap_or_default().to_owned();
            log.lock().expect("lock").push(text.clone());
            let authorised = token.is_none_or(|t| {
                text.lines()
                    .any(|l| l.eq_ignore_ascii_case(&format!("authorization: Bearer {t}")))
            });
            let (status, body) = if !authorised {
                (
                    "401 Unauthorized",
                    r#"{"status":"error","errorType":"unauthorized","error":"no token"}"#
                        .to_owned(),
                )
            } else if line.contains("/api/v1/targets") {
                ("200 OK", r#"{"status":"success","data":{"activeTargets":[{"labels":{"job":"pusher-cutover","instance":"a:9090"},"scrapePool":"pusher-cutover","scrapeInterval":"15s"}],"droppedTargets":[]}}"#.to_owned())
            } else if line.contains("/api/v1/status/runtimeinfo") {
                (
                    "200 OK",
                    r#"{"status":"success","data":{"storageRetention":"15d"}}"#.to_owned(),
                )
            } else if line.contains("/api/v1/query_range") {
                (
                    "200 OK",
                    r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#.to_owned(),
                )
            } else {
                (
                    "200 OK",
                    r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#.to_owned(),
                )
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (format!("http://{addr}"), seen)
}

/// No sidecar at all is a gap (exit 2), and `--token-env` sends the
/// bearer token to Prometheus (without it: 401, exit 2 naming it). The
/// PromQL goes in the urlencoded body of POST /api/v1/query.
#[tokio::test]
async fn no_sidecar_is_a_gap_and_the_token_is_sent() {
    let (url, seen) = fake_prometheus(Some("s3cret"));
    let out = Command::new(BIN)
        .args([
            "report",
            "--prometheus",
            &url,
            "--token-env",
            "FLEET_TEST_TOKEN",
        ])
        .args([
            "--job",
            "pusher-cutover",
            "--app",
            "4242",
            "--fail-if-used-since",
            "24h",
        ])
        .env("FLEET_TEST_TOKEN", "s3cret")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("report runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("gap: no sidecar of job pusher-cutover was scraped in the window"),
        "{err}"
    );
    // A label name is checked before anything is asked: it goes into the
    // PromQL as it is.
    for label in ["pod) or vector(1", "9pod", ""] {
        let out = Command::new(BIN)
            .args(["report", "--prometheus", &url, "--instance-label", label])
            .stdin(Stdio::null())
            .output()
            .await
            .expect("report runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{label:?}: {err}");
        assert!(err.contains("Prometheus label name"), "{label:?}: {err}");
    }
    let requests = seen.lock().expect("lock").clone();
    // The decoded query of each POST, and among them one of the
    // deprecated calls' increase().
    let queries: Vec<String> = requests
        .iter()
        .filter(|r| r.starts_with("POST /api/v1/query "))
        .filter_map(|r| {
            let body = r.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
            form_urlencoded::parse(body.as_bytes())
                .into_owned()
                .find(|(k, _)| k == "query")
                .map(|(_, q)| q)
        })
        .collect();
    let query = queries
        .iter()
        .find(|q| q.contains("increase(pusher_cutover_deprecated_calls_total"))
        .unwrap_or_else(|| panic!("an increase() query of the deprecated calls in {queries:#?}"));
    assert!(
        query.contains(
            r#"pusher_cutover_deprecated_calls_total{job="pusher-cutover",app_id=~"4242"}"#
        ),
        "{query}"
    );
    // 24 h plus two 15 s scrape intervals and a second.
    assert!(query.contains("[86431s]"), "{query}");

    let (code, _, err) = report(&["--prometheus", &url, "--fail-if-used-since", "24h"]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("401 Unauthorized") && err.contains("no token"),
        "{err}"
    );
}
