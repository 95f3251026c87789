//! `report` as a migration progress view, end to end through the binary:
//! statuses (done only when the ledger covers the window), configured apps
//! without calls, callers by library with recipes, instances and call
//! sites of a merged report, the gate naming callers, and the HTML page
//! rendered by headless Chromium.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::support::{self, binary::BIN};

const HOUR: u64 = 3600;
const DAY: u64 = 86_400;

fn rfc3339(unix: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(unix as i64).expect("a time");
    t.format(&time::format_description::well_known::Rfc3339)
        .expect("formats")
}

/// The start of the hour `unix` is in.
fn hour_of(unix: u64) -> u64 {
    unix - unix % HOUR
}

/// One sidecar's `/usage`: app `active` (called an hour ago by a PyPI
/// pusher 0.6 caller with two call sites), app `stopped` (last called ten
/// days ago), recorded since 30 days ago.
fn usage(instance: &str, now: u64) -> serde_json::Value {
    let recent = now - HOUR;
    let old = now - 10 * DAY;
    serde_json::json!({
        "instance": instance,
        "recorded_since": rfc3339(now - 30 * DAY),
        "apps": [
            {
                "app_id": "active",
                "callers": [{
                    "route": "legacy_trigger", "auth_key": "key-a",
                    "library": "pypi-pusher-0.6-0.8", "fingerprint": "0123456789ab",
                    "user_agent": "Python-urllib/2.7", "client_address": "10.1.0.7",
                    "instance": instance, "calls": 12,
                    "first_seen": rfc3339(old), "last_seen": rfc3339(recent),
                    "call_sites": [
                        {"event": "order-created", "channel": "private-user-{id}", "calls": 9},
                        {"event": "ping", "channel": "presence-lobby", "calls": 3}
                    ]
                }],
                "hourly": [
                    {"route": "legacy_trigger", "hour": rfc3339(hour_of(old)), "calls": 4},
                    {"route": "legacy_trigger", "hour": rfc3339(hour_of(recent)), "calls": 8}
                ]
            },
            {
                "app_id": "stopped",
                "callers": [{
                    "route": "legacy_stats", "auth_key": "key-s", "library": "unknown",
                    "fingerprint": "", "user_agent": "curl/7.29", "client_address": "10.1.0.9",
                    "instance": instance, "calls": 5,
                    "first_seen": rfc3339(old - DAY), "last_seen": rfc3339(old)
                }],
                "hourly": [{"route": "legacy_stats", "hour": rfc3339(hour_of(old)), "calls": 5}]
            }
        ]
    })
}

/// Serves `body` as `/usage` on a loopback port until the test ends.
fn serve_usage(body: serde_json::Value) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    let body = body.to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut buf = [0u8; 4096];
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{addr}/usage")
}

fn report(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .arg("report")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("report runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn report_shows_progress_of_a_merged_fleet() {
    let now = support::now();
    let a = serve_usage(usage("pod-a", now));
    let b = serve_usage(usage("pod-b", now));
    let (code, json, err) = report(&[
        "--url", &a, "--url", &b, "--since", "7d", "--format", "json",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(v["merged"], true);
    assert_eq!(v["covers_window"], true);
    let active = &v["apps"][0];
    assert_eq!(active["app_id"], "active");
    assert_eq!(active["status"], "active");
    assert_eq!(active["last_24h"], 16);
    assert_eq!(active["window"], 16);
    assert_eq!(active["trend"]["previous"], 8);
    assert_eq!(active["trend"]["direction"], "up");
    let callers = active["callers"].as_array().expect("callers");
    assert_eq!(callers.len(), 2, "one per instance");
    let instances: Vec<_> = callers.iter().map(|c| c["instance"].as_str()).collect();
    assert!(instances.contains(&Some("pod-a")) && instances.contains(&Some("pod-b")));
    assert_eq!(callers[0]["library"], "pypi-pusher-0.6-0.8");
    assert_eq!(callers[0]["fingerprint"], "0123456789ab");
    assert_eq!(callers[0]["call_sites"][0]["event"], "order-created");
    assert_eq!(callers[0]["call_sites"][0]["channel"], "private-user-{id}");
    assert_eq!(
        active["libraries"][0]["recipe"]["first_current"],
        "PyPI pusher 1.0.0 (2015-04), a rewrite"
    );
    // Stopped ten days ago: done in 7 days the ledgers recorded whole.
    let stopped = &v["apps"][1];
    assert_eq!(stopped["app_id"], "stopped");
    assert_eq!(stopped["status"], "done");
    assert_eq!(stopped["window"], 0);
    assert!(stopped["last_call"].is_string());

    let (code, table, _) = report(&["--url", &a, "--url", &b, "--since", "3d"]);
    assert_eq!(code, Some(0));
    assert!(table.contains("hourly calls (UTC):"), "{table}");
    assert!(table.contains("  (partial)\n"), "{table}");
    assert!(
        table.contains("INSTANCE") && table.contains("pod-b"),
        "{table}"
    );
    assert!(table.contains("  call site: event order-created channel private-user-{id}: 9 calls"));
    assert!(table.contains("library PyPI pusher 0.6-0.8 [pypi-pusher-0.6-0.8]: active"));
    let row = table
        .lines()
        .find(|l| l.starts_with("stopped "))
        .expect("summary row");
    assert!(row.contains(" done "), "{row}");

    // The gate names each app and caller that made calls, with the last.
    let (code, _, err) = report(&["--url", &a, "--url", &b, "--fail-if-used-since", "24h"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("deprecated calls were made in the last 1day:"),
        "{err}"
    );
    assert!(err.contains("  app active: last call "), "{err}");
    assert!(
        err.contains("auth_key key-a library pypi-pusher-0.6-0.8"),
        "{err}"
    );
    assert!(
        err.contains("(instance pod-a)") && err.contains("(instance pod-b)"),
        "{err}"
    );
    assert!(!err.contains("app stopped"), "{err}");
}

#[test]
fn report_lists_configured_apps_without_calls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    // A fresh ledger: recording since now, so nothing is provably done.
    drop(
        pusher_cutover::telemetry::store::Store::open(&data, support::now(), "pod-c")
            .expect("new ledger"),
    );
    let config = dir.path().join("config.toml");
    let toml = support::config_toml("http://127.0.0.1:9", "", "").replace(
        "[upstream]",
        &format!(
            "[telemetry]\ndata_dir = {:?}\n[upstream]",
            data.display().to_string()
        ),
    );
    std::fs::write(&config, toml).expect("write config");
    let config = config.display().to_string();
    let (code, json, err) = report(&["--config", &config, "--since", "7d", "--format", "json"]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    let app = &v["apps"][0];
    assert_eq!(app["app_id"], support::APP_ID);
    assert_eq!(app["configured"], true);
    assert_eq!(app["window"], 0);
    assert_eq!(
        app["status"], "unproven",
        "the ledger started inside the window"
    );
    let (code, table, _) = report(&["--config", &config, "--since", "7d"]);
    assert_eq!(code, Some(0));
    assert!(table.contains("unproven, not done"), "{table}");
    assert!(table.contains(&format!(
        "app {}: legacy_trigger 0, legacy_stats 0, total 0",
        support::APP_ID
    )));

    // The report needs the apps and the data directory, not the secrets:
    // a config naming them by variables unset where it runs (a workstation,
    // a host whose secrets live in the service's environment) still serves.
    let with_env = dir.path().join("with-env.toml");
    let toml = std::fs::read_to_string(dir.path().join("config.toml"))
        .expect("config")
        .replace(
            &format!("secret = \"{}\"", support::SECRET),
            "secret_env = \"PUSHER_CUTOVER_TEST_UNSET_SECRET\"",
        )
        .replace(
            "[admin]",
            "[admin]\ntoken_env = \"PUSHER_CUTOVER_TEST_UNSET_TOKEN\"",
        );
    assert!(
        toml.contains("secret_env") && toml.contains("token_env"),
        "{toml}"
    );
    std::fs::write(&with_env, toml).expect("write config");
    let with_env = with_env.display().to_string();
    let (code, json, err) = report(&["--config", &with_env, "--since", "7d", "--format", "json"]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(v["apps"][0]["app_id"], support::APP_ID, "{v}");
    assert_eq!(v["apps"][0]["configured"], true, "{v}");
}

const HOW_TO_GET_CHROMIUM: &str = "install Debian's chromium (tests/install-parts.sh does, or \
    `apt-get install -y --no-install-recommends chromium`), or set CHROMIUM_BIN";

/// Chromium, from CHROMIUM_BIN or PATH; panics saying how to get it (the
/// test is ignored unless asked for, and then must not pass without it).
fn chromium() -> PathBuf {
    if let Some(bin) = std::env::var_os("CHROMIUM_BIN") {
        let bin = PathBuf::from(bin);
        assert!(
            bin.is_file(),
            "CHROMIUM_BIN={} is not a file; {HOW_TO_GET_CHROMIUM}",
            bin.display()
        );
        return bin;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("chromium"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("no `chromium` on PATH; {HOW_TO_GET_CHROMIUM}"))
}

/// Runs headless Chromium on `page` with `args`, bounded; its stdout.
fn headless(page: &Path, profile: &Path, args: &[&str]) -> String {
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1200,1800",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("chromium does not start: {e}; {HOW_TO_GET_CHROMIUM}"));
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(status.success(), "chromium {args:?}: {status}");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium {args:?} did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    reader.join().expect("reader")
}

#[test]
#[ignore = "needs Debian's chromium: tests/install-parts.sh installs it"]
fn html_report_renders_in_headless_chromium() {
    let now = support::now();
    let a = serve_usage(usage("pod-a", now));
    let b = serve_usage(usage("pod-b", now));
    let (code, html, err) = report(&[
        "--url", &a, "--url", &b, "--since", "14d", "--format", "html",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let dir = tempfile::tempdir().expect("tempdir");
    let page = dir.path().join("report.html");
    std::fs::write(&page, &html).expect("write page");

    let dom = headless(&page, &dir.path().join("profile-dom"), &["--dump-dom"]);
    assert!(
        dom.contains("<h1>Deprecated Pusher HTTP API usage</h1>"),
        "{dom}"
    );
    assert!(dom.contains("<svg class=\"chart\""), "{dom}");
    assert_eq!(
        dom.matches("<polyline class=\"series\"").count(),
        2,
        "{dom}"
    );
    assert!(
        dom.contains("class=\"dot partial\""),
        "the partial day is marked"
    );
    assert!(dom.contains("class=\"partial-band\""));
    assert!(dom.contains("<table class=\"progress\">"));
    assert!(dom.contains("status-done"));
    assert_eq!(
        dom.matches("<li class=\"site\">").count(),
        4,
        "all call sites"
    );

    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("report-chromium.png");
    let _ = std::fs::remove_file(&shot);
    headless(
        &page,
        &dir.path().join("profile-shot"),
        &[&format!("--screenshot={}", shot.display())],
    );
    let png = std::fs::read(&shot).expect("chromium wrote the screenshot");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    let width = u32::from_be_bytes(png[16..20].try_into().expect("IHDR"));
    let height = u32::from_be_bytes(png[20..24].try_into().expect("IHDR"));
    assert_eq!((width, height), (1200, 1800));
    // A blank page compresses to a few kB; text, tables and a chart do not.
    assert!(
        png.len() > 40_000,
        "screenshot of {} bytes: blank?",
        png.len()
    );
    println!("screenshot: {}", shot.display());
}

/// The admin listener's `/report` lists every configured app, even one
/// that never made a deprecated call.
#[tokio::test]
async fn admin_report_lists_configured_apps_without_calls() {
    let fake = crate::support::fake().await;
    let proxy = crate::support::TestProxy::for_upstream(&fake.url(), "", "").await;
    let page = crate::support::send(
        hyper::Method::GET,
        &format!("{}/report?since=3d", proxy.admin_url()),
        &[],
        "",
    )
    .await;
    assert_eq!(page.status.as_u16(), 200);
    let html = page.text();
    assert!(html.contains(crate::support::APP_ID), "{html}");
    assert!(!html.contains("No deprecated calls recorded"), "{html}");
    proxy.stop().await;
}
