//! The usage ledger on disk: exact across SIGTERM and restart, a damaged
//! file moved aside without stopping the proxy, the ledger's start after a
//! crash and after the kill switch, and the `report` command over one or
//! several ledgers.

use std::path::Path;
use std::sync::Arc;
use tokio::process::Command;

use hyper::Method;

use crate::support::binary::{BIN, Served};
use crate::support::{self, TestProxy};

/// Callers: (user agent, route, calls).
const CALLERS: [(&str, &str, usize); 3] = [
    ("caller-a/1.0", "legacy_trigger", 500),
    ("caller-b/2.0", "legacy_trigger", 300),
    ("caller-c/3.0", "legacy_stats", 200),
];

fn config(upstream: &str, data_dir: &Path) -> String {
    support::config_toml(upstream, "", "").replace(
        "[upstream]",
        &format!(
            "[telemetry]\ndata_dir = {:?}\n[upstream]",
            data_dir.display().to_string()
        ),
    )
}

/// `dir/proxy.toml` holding [`config`] for `upstream` and `data_dir`; its path.
fn write_config(dir: &Path, upstream: &str, data_dir: &Path) -> std::path::PathBuf {
    let path = dir.join("proxy.toml");
    std::fs::write(&path, config(upstream, data_dir)).expect("write config");
    path
}

async fn calls(addr: &str, agent: &str, route: &str, n: usize) {
    let mut tasks = Vec::new();
    for t in 0..8 {
        let (addr, agent, route) = (addr.to_owned(), agent.to_owned(), route.to_owned());
        tasks.push(tokio::spawn(async move {
            for _ in (t..n).step_by(8) {
                let now = support::now();
                let (method, uri) = if route == "legacy_stats" {
                    (Method::GET, support::legacy_stats_uri("room", now))
                } else {
                    (
                        Method::POST,
                        support::legacy_trigger_uri("room", &[("name", "ev")], b"{}", now),
                    )
                };
                let body = if method == Method::POST { "{}" } else { "" };
                let a = support::send(
                    method,
                    &format!("http://{addr}{uri}"),
                    &[("user-agent", &agent)],
                    body,
                )
                .await;
                assert!(a.status.is_success(), "{}: {}", a.status, a.text());
            }
        }));
    }
    for t in tasks {
        t.await.expect("caller task");
    }
}

async fn usage(admin: &str) -> serde_json::Value {
    support::send(Method::GET, &format!("http://{admin}/usage"), &[], "")
        .await
        .json()
}

fn calls_of(usage: &serde_json::Value, agent: &str) -> u64 {
    usage["apps"][0]["callers"]
        .as_array()
        .expect("callers")
        .iter()
        .filter(|c| c["user_agent"] == agent)
        .map(|c| c["calls"].as_u64().expect("calls"))
        .sum()
}

/// Runs `report` without blocking the runtime (a proxy in this test may
/// have to answer it).
async fn report(args: &[&str]) -> (Option<i32>, String, String) {
    let run = Command::new(BIN).arg("report").args(args).output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), run)
        .await
        .expect("report finishes within 60 s")
        .expect("report runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// 1,000 calls from 3 callers, SIGTERM, restart: every call is there, and
/// counting continues where it stopped.
#[tokio::test]
async fn ledger_is_exact_across_sigterm_and_restart() {
    let fake = support::fake().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let config_path = write_config(dir.path(), &fake.url(), &data);

    let served = Served::start(&config_path).await;
    for (agent, route, n) in CALLERS {
        calls(&served.addr, agent, route, n).await;
    }
    // Stopped right after the last answer: the final flush must carry it.
    let (code, logs) = served.sigterm().await;
    assert_eq!(code, Some(0), "{logs:?}");
    assert!(logs.iter().any(|e| e["message"] == "usage ledger written"));

    let served = Served::start(&config_path).await;
    let before = usage(&served.admin).await;
    for (agent, _, n) in CALLERS {
        assert_eq!(calls_of(&before, agent), n as u64, "{agent} after restart");
    }
    let hourly: u64 = before["apps"][0]["hourly"]
        .as_array()
        .expect("hourly")
        .iter()
        .map(|h| h["calls"].as_u64().expect("calls"))
        .sum();
    assert_eq!(hourly, 1000);
    calls(&served.addr, CALLERS[0].0, CALLERS[0].1, 10).await;
    let (code, _) = served.sigterm().await;
    assert_eq!(code, Some(0));

    // The report reads the ledger the proxy left on disk.
    let data_arg = data.display().to_string();
    let (code, json, err) = report(&["--data-dir", &data_arg, "--format", "json"]).await;
    assert_eq!(code, Some(0), "{err}");
    let json: serde_json::Value = serde_json::from_str(&json).expect("report JSON");
    let app = &json["apps"][0];
    assert_eq!(app["app_id"], "4242");
    assert_eq!(app["deprecated_calls"]["legacy_trigger"], 810);
    assert_eq!(app["deprecated_calls"]["legacy_stats"], 200);
    let daily: u64 = app["daily"]
        .as_object()
        .expect("daily")
        .values()
        .map(|v| v.as_u64().expect("n"))
        .sum();
    assert_eq!(daily, 1010);
    let a = app["callers"]
        .as_array()
        .expect("callers")
        .iter()
        .find(|c| c["user_agent"] == "caller-a/1.0")
        .expect("caller a");
    assert_eq!(a["calls"], 510);
    assert_eq!(a["auth_key"], support::KEY);
    assert_eq!(a["client_address"], "127.0.0.1");
    assert_eq!(a["route"], "legacy_trigger");
    for field in ["first_seen", "last_seen"] {
        let t = a[field].as_str().expect(field);
        assert!(
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).is_ok(),
            "{t}"
        );
    }

    let (code, table, _) = report(&["--data-dir", &data_arg]).await;
    assert_eq!(code, Some(0));
    assert!(
        table.contains("app 4242: legacy_trigger 810, legacy_stats 200, total 1010"),
        "{table}"
    );
    assert!(
        table.contains("caller-b/2.0") && table.contains("300"),
        "{table}"
    );

    let (code, html, _) = report(&["--data-dir", &data_arg, "--format", "html"]).await;
    assert_eq!(code, Some(0));
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert_eq!(
        html.matches(r#"class="series""#).count(),
        1,
        "one series for one app"
    );
    assert!(html.contains(r#"data-app="4242""#));
    for external in ["<script", "<link", "src=", "url("] {
        assert!(
            !html.contains(external),
            "self-contained, but has {external}"
        );
    }

    let (code, _, err) = report(&["--data-dir", &data_arg, "--fail-if-used-since", "24h"]).await;
    assert_eq!(code, Some(1), "calls were made today: {err}");
    assert!(err.contains("deprecated calls"), "{err}");
}

/// The JSON report of the ledgers `sources` name, which hold the ten
/// triggers and the live stats call of
/// `report_gates_on_the_window_and_merges_ledgers` once; and its stderr.
async fn merged(sources: &[&str]) -> (serde_json::Value, String) {
    let args: Vec<&str> = sources
        .iter()
        .copied()
        .chain(["--format", "json"])
        .collect();
    let (code, json, err) = report(&args).await;
    assert_eq!(code, Some(0), "{err}");
    let json: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(json["apps"][0]["deprecated_calls"]["legacy_trigger"], 10);
    assert_eq!(json["apps"][0]["deprecated_calls"]["legacy_stats"], 1);
    (json, err)
}

/// A ledger whose calls are three days old passes a 24 h gate and fails a
/// 7 d one; two ledgers and a live `/usage` merge into one report.
#[tokio::test]
async fn report_gates_on_the_window_and_merges_ledgers() {
    let three_days_ago = support::now() - 3 * 86_400;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut dirs = Vec::new();
    for (i, n) in [(0, 4), (1, 6)] {
        let data = dir.path().join(format!("data-{i}"));
        let clock = support::fixed_clock(three_days_ago);
        let fake = support::fake::FakeUpstream::start(
            &[(support::APP_ID, support::KEY, support::SECRET)],
            move || three_days_ago,
        )
        .await;
        let proxy = TestProxy::start(&config(&fake.url(), &data), clock).await;
        for _ in 0..n {
            let uri = support::legacy_trigger_uri("room", &[("name", "ev")], b"{}", three_days_ago);
            let a = support::send(Method::POST, &format!("{}{uri}", proxy.url()), &[], "{}").await;
            assert_eq!(a.status.as_u16(), 202);
        }
        proxy.stop().await;
        dirs.push(data.display().to_string());
    }
    let (code, _, err) = report(&["--data-dir", &dirs[0], "--fail-if-used-since", "24h"]).await;
    assert_eq!(code, Some(0), "{err}");
    let (code, _, _) = report(&["--data-dir", &dirs[0], "--fail-if-used-since", "7d"]).await;
    assert_eq!(code, Some(1));

    // A running sidecar's /usage joins the two ledgers.
    let fake = support::fake().await;
    let live = TestProxy::start(
        &support::config_toml(&fake.url(), "", ""),
        Arc::new(pusher_cutover::SystemClock),
    )
    .await;
    let uri = support::legacy_stats_uri("room", support::now());
    assert_eq!(
        support::send(Method::GET, &format!("{}{uri}", live.url()), &[], "")
            .await
            .status
            .as_u16(),
        200
    );
    let url = format!("{}/usage", live.admin_url());
    let (json, err) = merged(&[
        "--data-dir",
        &dirs[0],
        "--data-dir",
        &dirs[1],
        "--url",
        &url,
    ])
    .await;
    // Callers are sorted by last seen: the live stats caller comes first.
    let trigger = json["apps"][0]["callers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["route"] == "legacy_trigger"))
        .expect("the trigger caller");
    assert_eq!(trigger["calls"], 10, "one caller, merged");
    assert!(!err.contains("read once"), "{err}");

    // The same ledgers given twice, a directory under another path to it
    // and a URL repeated, are each read once: nothing is counted twice.
    let again = format!("{}/../data-1/.", dirs[1]);
    let (_, err) = merged(&[
        "--data-dir",
        &dirs[0],
        "--data-dir",
        &dirs[1],
        "--data-dir",
        &again,
        "--data-dir",
        &dirs[0],
        "--url",
        &url,
        "--url",
        &url,
    ])
    .await;
    assert!(
        err.contains(&format!(
            "{again} is {}, given twice; it is read once",
            dirs[1]
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("{} was given more than once", dirs[0])),
        "{err}"
    );
    assert!(
        err.contains(&format!("{url} was given more than once")),
        "{err}"
    );

    let (code, json, _) =
        report(&["--data-dir", &dirs[0], "--since", "24h", "--format", "json"]).await;
    assert_eq!(code, Some(0));
    let json: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(
        json["apps"][0]["deprecated_calls"]["legacy_trigger"], 0,
        "outside the window"
    );
    live.stop().await;

    let (code, _, err) = report(&["--data-dir", "/nonexistent/ledger"]).await;
    assert_eq!(code, Some(2), "{err}");
    let (code, _, err) = report(&[]).await;
    assert_eq!(code, Some(2));
    assert!(err.contains("--data-dir"), "{err}");
}

/// The final ledger write at shutdown is retried; when it still fails, the
/// proxy says how many calls are lost and stops with an error instead of
/// exiting as if all were written.
#[tokio::test]
async fn a_failed_final_write_is_an_error_naming_the_lost_calls() {
    let fake = support::fake().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = format!(
        "shutdown_grace_ms = 1000\n{}",
        support::config_toml(&fake.url(), "", "").replace(
            "[upstream]",
            &format!("[telemetry]\ndata_dir = {:?}\n[upstream]", dir.path())
        )
    );
    let config = pusher_cutover::Config::from_toml_str(&toml, &|_| None).expect("config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let options = pusher_cutover::Options {
        admin_listener: None,
        ..pusher_cutover::Options::default()
    };
    let run = tokio::spawn(pusher_cutover::run_with(
        listener,
        config,
        options,
        async move {
            let _ = stopped.await;
        },
    ));
    let body = b"{}";
    for _ in 0..3 {
        let uri = support::legacy_trigger_uri("room", &[("name", "ev")], body, support::now());
        let a = support::send(
            Method::POST,
            &format!("http://{addr}{uri}"),
            &[],
            body.to_vec(),
        )
        .await;
        assert_eq!(a.status.as_u16(), 202, "{}", a.text());
    }
    // The store stops accepting writes before the periodic flush (5 s).
    let db =
        rusqlite::Connection::open(dir.path().join(pusher_cutover::telemetry::store::FILE_NAME))
            .expect("open the ledger");
    db.execute_batch("ALTER TABLE callers RENAME TO callers_away")
        .expect("sabotage");
    let _ = stop.send(());
    let result = tokio::time::timeout(std::time::Duration::from_secs(15), run)
        .await
        .expect("stops within the bounded retry")
        .expect("task");
    match result {
        Err(pusher_cutover::RunError::LedgerNotWritten { calls }) => assert_eq!(calls, 3),
        other => panic!("expected the lost calls, got {other:?}"),
    }
}

/// `recorded_since` of a `/usage` answer, in Unix seconds.
fn recorded_since(usage: &serde_json::Value) -> i64 {
    let text = usage["recorded_since"]
        .as_str()
        .unwrap_or_else(|| panic!("no recorded_since: {usage}"));
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .expect("RFC 3339")
        .unix_timestamp()
}

/// One verified legacy trigger through `addr`: its status.
async fn one_trigger(addr: &str) -> u16 {
    let uri = support::legacy_trigger_uri("room", &[("name", "ev")], b"{}", support::now());
    support::send(Method::POST, &format!("http://{addr}{uri}"), &[], "{}")
        .await
        .status
        .as_u16()
}

/// A `ledger.sqlite3` that is not a SQLite file (and a `-wal` beside it)
/// does not stop `serve`: both are moved aside, one ERROR line names
/// where to and why, and the proxy serves and records into a new ledger
/// that vouches for calls from its start only.
#[tokio::test]
async fn a_corrupt_ledger_is_moved_aside_and_the_proxy_serves() {
    let fake = support::fake().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let garbage = b"this is no SQLite database, just a damaged file\n".repeat(100);
    std::fs::write(data.join("ledger.sqlite3"), &garbage).expect("garbage");
    std::fs::write(data.join("ledger.sqlite3-wal"), b"garbage wal").expect("wal");
    let config_path = write_config(dir.path(), &fake.url(), &data);

    let started = support::now();
    let served = Served::start(&config_path).await;
    assert_eq!(one_trigger(&served.addr).await, 202);
    let live = usage(&served.admin).await;
    assert_eq!(calls_of(&live, ""), 1, "{live}");
    assert!(recorded_since(&live) > started as i64, "{live}");
    let (code, logs) = served.sigterm().await;
    assert_eq!(code, Some(0), "{logs:?}");

    let errors: Vec<_> = logs.iter().filter(|e| e["level"] == "ERROR").collect();
    assert_eq!(errors.len(), 1, "{logs:?}");
    let moved = errors[0]["moved_to"]
        .as_str()
        .unwrap_or_else(|| panic!("{:?}", errors[0]));
    let name = Path::new(moved)
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a file name");
    let seconds = name
        .strip_prefix("ledger.sqlite3.corrupt-")
        .unwrap_or_else(|| panic!("{name}"));
    assert!(seconds.parse::<u64>().is_ok_and(|s| s >= started), "{name}");
    assert_eq!(std::fs::read(moved).expect("moved aside"), garbage);
    assert_eq!(
        std::fs::read(format!("{moved}-wal")).expect("its -wal too"),
        b"garbage wal"
    );
    let reason = errors[0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("not a SQLite database"), "{:?}", errors[0]);

    // The new ledger holds the call, and `report` reads it.
    let data_arg = data.display().to_string();
    let (code, json, err) = report(&["--data-dir", &data_arg, "--format", "json"]).await;
    assert_eq!(code, Some(0), "{err}");
    let json: serde_json::Value = serde_json::from_str(&json).expect("report JSON");
    assert_eq!(json["apps"][0]["deprecated_calls"]["legacy_trigger"], 1);
}

/// A proxy killed without its last write: the next run warns that the
/// calls since the last write may be missing, and its ledger vouches for
/// calls from the restart on only; a clean stop moves nothing.
#[tokio::test]
async fn after_a_crash_the_ledger_vouches_from_the_restart_on() {
    let fake = support::fake().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let config_path = write_config(dir.path(), &fake.url(), &data);

    let served = Served::start(&config_path).await;
    assert_eq!(one_trigger(&served.addr).await, 202);
    let first = recorded_since(&usage(&served.admin).await);
    let (code, _) = served.sigterm().await;
    assert_eq!(code, Some(0));

    // A clean stop: the restart keeps the ledger's start.
    let served = Served::start(&config_path).await;
    assert_eq!(recorded_since(&usage(&served.admin).await), first);
    assert_eq!(one_trigger(&served.addr).await, 202);
    served.signal("KILL");
    let (code, _) = served.wait_text(std::time::Duration::from_secs(10)).await;
    assert_eq!(code, None, "killed");

    let restarted = support::now();
    let served = Served::start(&config_path).await;
    let after = usage(&served.admin).await;
    assert!(
        recorded_since(&after) > restarted as i64,
        "{after} (restarted at {restarted})"
    );
    // The first run's call was written at its SIGTERM; the killed run's
    // is there only if a periodic flush caught it.
    assert!(
        calls_of(&after, "") >= 1,
        "what was written is kept: {after}"
    );
    let (code, logs) = served.sigterm().await;
    assert_eq!(code, Some(0));
    assert!(
        logs.iter().any(|e| e["level"] == "WARN"
            && e["message"]
                .as_str()
                .is_some_and(|m| m.contains("did not close the usage ledger"))),
        "{logs:?}"
    );
}

/// The kill switch passes legacy calls through unrecorded: while it is
/// on, and once it is turned off by a reload, the ledger vouches for no
/// call before that moment, in `/usage` and in the ledger on disk.
#[tokio::test]
async fn the_kill_switch_moves_recorded_since() {
    let fake = support::fake().await;
    let file = support::ConfigFile::new("");
    let data = file.dir().join("data");
    let recording = config(&fake.url(), &data);
    let bypassed = recording.replace("[admin]", "bypass = true\n[admin]");
    file.write(&recording);
    let proxy = TestProxy::start_file(file.path()).await;
    let admin = proxy.admin.to_string();
    let addr = proxy.addr.to_string();
    let started = recorded_since(&usage(&admin).await);
    assert_eq!(one_trigger(&addr).await, 202);

    file.write(&bypassed);
    assert_eq!(proxy.reload().await.status.as_u16(), 200);
    let unrecorded = support::now();
    assert_eq!(one_trigger(&addr).await, 202, "passed through");
    let during = usage(&admin).await;
    assert_eq!(calls_of(&during, ""), 1, "not recorded: {during}");
    assert!(
        recorded_since(&during) > unrecorded as i64,
        "{during} (a call passed unrecorded at {unrecorded})"
    );

    file.write(&recording);
    let resumed = support::now();
    assert_eq!(proxy.reload().await.status.as_u16(), 200);
    assert_eq!(one_trigger(&addr).await, 202);
    let after = usage(&admin).await;
    assert_eq!(calls_of(&after, ""), 2, "{after}");
    let since = recorded_since(&after);
    assert!(
        since > resumed as i64 && since > started,
        "{after} (recording resumed at {resumed})"
    );
    proxy.stop().await;

    let stored = pusher_cutover::telemetry::store::Store::open_read_only(&data)
        .expect("the ledger")
        .load()
        .expect("load");
    assert_eq!(
        stored.recorded_since.map(|t| t.unix_timestamp()),
        Some(since),
        "written with the ledger"
    );
}

/// The words every gap of a ledger marked open says.
const MARKED_OPEN: &str = "it is being written by a running sidecar, or was left by one that \
                           stopped without its last write, so calls since its last write may \
                           be missing; gate a running sidecar through --url";

/// A ledger whose writer crashed: recording since ten days ago, a caller
/// three days ago written, and then no last write (a call made a second
/// ago was in memory only). The gate cannot prove a zero on it, whatever
/// the window, alone or merged with a closed ledger; the report shows the
/// app `unproven`, not `done`, and lists the gap.
#[tokio::test]
async fn a_ledger_left_open_proves_no_zero() {
    use pusher_cutover::telemetry::ledger::{Ledger, LedgerCall};
    use pusher_cutover::telemetry::store::Store;

    let now = support::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let crashed = dir.path().join("crashed");
    let mut store = Store::open(&crashed, now - 10 * 86_400, "i-crashed").expect("open");
    let ledger = Ledger::new(100, 35, "i-crashed");
    ledger.record(&LedgerCall {
        app_id: support::APP_ID,
        route: pusher_cutover::pusher::route::RouteKind::LegacyTrigger,
        auth_key: support::KEY,
        library: "unknown",
        fingerprint: "",
        user_agent: "caller-a/1.0",
        client_address: "10.0.0.1",
        event: "ev",
        channel: "room",
        now: now - 3 * 86_400,
    });
    store
        .write(&ledger.take_changes(now - 3 * 86_400))
        .expect("written");
    drop(store);
    let closed = dir.path().join("closed");
    let mut store = Store::open(&closed, now - 10 * 86_400, "i-closed").expect("open");
    store
        .close(&pusher_cutover::telemetry::ledger::Changes::default())
        .expect("closed");
    drop(store);
    let (crashed, closed) = (crashed.display().to_string(), closed.display().to_string());

    let (code, _, err) = report(&["--data-dir", &closed, "--fail-if-used-since", "1h"]).await;
    assert_eq!(code, Some(0), "the closed ledger proves the zero: {err}");
    for window in ["1s", "1h", "24h"] {
        let (code, _, err) =
            report(&["--data-dir", &crashed, "--fail-if-used-since", window]).await;
        assert_eq!(code, Some(2), "{window}: {err}");
        assert!(err.contains(MARKED_OPEN), "{err}");
        assert!(
            err.contains(&format!("gap: the ledger in {crashed} is marked open")),
            "{err}"
        );
        assert!(err.contains("sidecar i-crashed"), "{err}");
    }
    let (code, _, err) = report(&[
        "--data-dir",
        &closed,
        "--data-dir",
        &crashed,
        "--fail-if-used-since",
        "1h",
    ])
    .await;
    assert_eq!(code, Some(2), "one part open: {err}");
    assert!(err.contains(MARKED_OPEN), "{err}");
    // Calls outrank the gap.
    let (code, _, err) = report(&["--data-dir", &crashed, "--fail-if-used-since", "7d"]).await;
    assert_eq!(code, Some(1), "{err}");

    let (code, json, err) =
        report(&["--data-dir", &crashed, "--since", "1d", "--format", "json"]).await;
    assert_eq!(code, Some(0), "{err}");
    let json: serde_json::Value = serde_json::from_str(&json).expect("report JSON");
    assert_eq!(json["apps"][0]["status"], "unproven", "{json}");
    assert_eq!(json["covers_window"], false, "{json}");
    let gap = &json["ledger_gaps"][0];
    assert_eq!(gap["kind"], "ledger_open", "{json}");
    assert_eq!(gap["ledger"], crashed.as_str(), "{json}");
    assert_eq!(gap["instance"], "i-crashed", "{json}");
    assert_eq!(gap["since"], now - 10 * 86_400, "{json}");
    assert!(
        gap["message"]
            .as_str()
            .is_some_and(|m| m.contains(MARKED_OPEN)),
        "{json}"
    );
    // The table's coverage line names the gap, as the page's does.
    let (code, table, err) = report(&["--data-dir", &crashed, "--since", "1d"]).await;
    assert_eq!(code, Some(0), "{err}");
    let coverage = table.lines().nth(1).unwrap_or_default();
    assert!(
        coverage.contains("the evidence has gaps") && coverage.contains(MARKED_OPEN),
        "{table}"
    );
    assert!(!coverage.contains("inside the window"), "{table}");
}

/// `report --data-dir` on a running `serve`'s directory: the ledger is
/// marked open, and the calls since its last flush are not in the file,
/// so the gate exits 2 naming the gap; once `serve` stopped on SIGTERM
/// (its last write closes the ledger), the same gate proves the zero.
#[tokio::test]
async fn the_gate_on_a_running_sidecars_ledger_is_not_proven() {
    let fake = support::fake().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    // A ledger recording since ten days ago, closed cleanly: a gate over
    // the last hour is proven on it.
    let mut store = pusher_cutover::telemetry::store::Store::open(
        &data,
        support::now() - 10 * 86_400,
        "earlier",
    )
    .expect("open");
    store
        .close(&pusher_cutover::telemetry::ledger::Changes::default())
        .expect("close");
    drop(store);
    let data_arg = data.display().to_string();
    let gate = ["--data-dir", &data_arg, "--fail-if-used-since", "1h"];
    let (code, _, err) = report(&gate).await;
    assert_eq!(code, Some(0), "{err}");

    let config_path = write_config(dir.path(), &fake.url(), &data);
    let served = Served::start(&config_path).await;
    let (code, _, err) = report(&gate).await;
    assert_eq!(code, Some(2), "a running sidecar's file: {err}");
    assert!(err.contains(MARKED_OPEN), "{err}");
    assert!(err.contains("zero is not proven"), "{err}");
    let (code, _, err) = report(&["--data-dir", &data_arg, "--fail-if-used-since", "1s"]).await;
    assert_eq!(code, Some(2), "{err}");

    let (code, _) = served.sigterm().await;
    assert_eq!(code, Some(0));
    let (code, _, err) = report(&gate).await;
    assert_eq!(code, Some(0), "closed by the last write: {err}");
}
