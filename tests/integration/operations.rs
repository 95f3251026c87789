//! Operator feedback: `validate` in CI without the secrets, distinct exit
//! codes, log lines in time order and one line each, reloads that say
//! what changed and what needs a restart (and `/readyz` the hash in
//! force), an editor's replace-on-save picked up by a reload, the kill
//! switch's gauge following reloads, and the shadow comparison logged as
//! JSON.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use hyper::Method;

use crate::support::binary::{BIN, Served};
use crate::support::{self, TestProxy};

/// A config whose app's secret comes from `secret_env` (and the admin
/// token from `token_env`), neither of which is set.
fn config_with_env_secrets(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("env.toml");
    std::fs::write(
        &path,
        "[admin]\ntoken_env = \"OPS_TEST_UNSET_TOKEN\"\n\
         [upstream]\nurl = \"http://127.0.0.1:6001\"\n\
         [[apps]]\nid = \"4242\"\nkey = \"k\"\nsecret_env = \"OPS_TEST_UNSET_SECRET\"\n",
    )
    .expect("write");
    path
}

fn run(args: &[&str], config: Option<&std::path::Path>) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("OPS_TEST_UNSET_SECRET")
        .env_remove("OPS_TEST_UNSET_TOKEN");
    if let Some(config) = config {
        cmd.arg(config);
    }
    let out = cmd.output().expect("runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An unset `secret_env` (or `token_env`) is a warning for `validate`
/// (exit 0, naming the key and the variable), and an error with
/// `--require-env`; other problems are still errors either way.
#[test]
fn validate_warns_on_unset_secret_variables_unless_required() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = config_with_env_secrets(dir.path());

    let (code, out, err) = run(&["validate", "--config"], Some(&path));
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("valid (1 app(s)") && out.contains("2 warning(s)"),
        "{out}"
    );
    for (key, var) in [
        ("apps[0].secret_env", "OPS_TEST_UNSET_SECRET"),
        ("admin.token_env", "OPS_TEST_UNSET_TOKEN"),
    ] {
        assert!(
            err.contains(&format!("warning: {key}: environment variable `{var}`")),
            "{key}:\n{err}"
        );
    }

    let (code, _, err) = run(&["validate", "--require-env", "--config"], Some(&path));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("- apps[0].secret_env:"), "{err}");
    assert!(err.contains("- admin.token_env:"), "{err}");

    // Another problem beside the unset variable is still an error.
    let bad = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(&path).expect("read");
    std::fs::write(&bad, text.replace("key = \"k\"", "key = \"\"")).expect("write");
    let (code, _, err) = run(&["validate", "--config"], Some(&bad));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("- apps[0].key:"), "{err}");
    assert!(
        !err.contains("- apps[0].secret_env:"),
        "only a warning: {err}"
    );
}

/// `validate … | head -0`: a closed stdout is no panic, and the verdict
/// (the exit code) stands.
#[test]
fn validate_into_a_closed_pipe_does_not_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = config_with_env_secrets(dir.path());
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = Command::new(BIN)
        .args(["validate", "--config"])
        .arg(&path)
        .env_remove("OPS_TEST_UNSET_SECRET")
        .env_remove("OPS_TEST_UNSET_TOKEN")
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

/// `serve` exits 64 for a usage error, 78 for a config error and 69 when
/// its listener cannot be bound; none of them is 1 or 2 (`report`'s gate);
/// `--help` lists them.
#[test]
fn serve_exit_codes_tell_usage_config_and_bind_failures_apart() {
    let dir = tempfile::tempdir().expect("tempdir");

    let (code, _, err) = run(&["serve", "--no-such-option"], None);
    assert_eq!(code, Some(64), "usage: {err}");
    let (code, _, err) = run(&["report", "--no-such-option"], None);
    assert_eq!(code, Some(64), "usage, not report's 2: {err}");
    let (code, _, err) = run(&["no-such-subcommand"], None);
    assert_eq!(code, Some(64), "usage: {err}");
    // A window or scrape interval of nothing proves nothing.
    for args in [
        &["report", "--since", "0s"][..],
        &["report", "--fail-if-used-since", "0h"],
        &[
            "report",
            "--prometheus",
            "http://127.0.0.1:9",
            "--scrape-interval",
            "0s",
        ],
    ] {
        let (code, _, err) = run(args, None);
        assert_eq!(code, Some(64), "{args:?}: {err}");
        assert!(err.contains("must be more than zero"), "{args:?}: {err}");
    }

    let invalid = dir.path().join("invalid.toml");
    std::fs::write(&invalid, "[upstream]\nurl = \"not a url\"\n").expect("write");
    let (code, _, err) = run(&["serve", "--config"], Some(&invalid));
    assert_eq!(code, Some(78), "config: {err}");
    let (code, _, err) = run(
        &["serve", "--config"],
        Some(&dir.path().join("missing.toml")),
    );
    assert_eq!(code, Some(78), "unreadable config: {err}");
    let (code, _, err) = run(
        &["serve", "--config"],
        Some(&config_with_env_secrets(dir.path())),
    );
    assert_eq!(code, Some(78), "serve requires the secret: {err}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy = dir.path().join("busy.toml");
    std::fs::write(
        &busy,
        support::config_toml("http://127.0.0.1:6001", "", "").replace(
            "listen = \"127.0.0.1:0\"\n[admin]",
            &format!(
                "listen = \"{}\"\n[admin]",
                taken.local_addr().expect("addr")
            ),
        ),
    )
    .expect("write");
    let (code, _, err) = run(&["serve", "--config"], Some(&busy));
    assert_eq!(code, Some(69), "bind: {err}");
    assert!(err.contains("binding"), "{err}");

    let (code, help, _) = run(&["serve", "--help"], None);
    assert_eq!(code, Some(0));
    for line in [
        "64   usage error",
        "69   runtime failure",
        "78   configuration error",
    ] {
        assert!(help.contains(line), "{line}:\n{help}");
    }
    let (code, _, _) = run(&["--version"], None);
    assert_eq!(code, Some(0));
}

/// The leading timestamp of a text log line (`2026-…Z  INFO …`).
fn stamp(line: &str) -> &str {
    line.split(' ').next().unwrap_or("")
}

/// With two workers, each batching its lines, requests served in turn by
/// both come out in time order, text and JSON, and every line is one
/// event (starts with a timestamp).
#[tokio::test]
async fn log_lines_are_in_time_order_across_workers() {
    let fake = support::fake().await;
    let file = support::ConfigFile::new(&format!(
        "workers = 2\n{}",
        support::config_toml(&fake.url(), "", "")
    ));
    let env = HashMap::from([("RUST_LOG", "info")]);

    for json in [false, true] {
        let served = if json {
            Served::start_with_env(file.path(), &env).await
        } else {
            Served::start_text(file.path(), &env).await
        };
        // A new connection each time: the accept loop hands them to the
        // two workers in turn.
        for i in 0..40 {
            let url = format!("http://{}/apps/4242/channels?n={i}", served.addr);
            support::send(Method::GET, &url, &[("connection", "close")], "").await;
            tokio::time::sleep(Duration::from_millis(4)).await;
        }
        let (code, lines) = served.sigterm_text().await;
        assert_eq!(code, Some(0));
        let stamps: Vec<String> = if json {
            lines
                .iter()
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).expect("JSON line");
                    v["timestamp"].as_str().expect("timestamp").to_owned()
                })
                .collect()
        } else {
            for l in &lines {
                assert!(
                    l.starts_with("20") && l.as_bytes().get(10) == Some(&b'T'),
                    "one event per line: {l}"
                );
            }
            lines.iter().map(|l| stamp(l).to_owned()).collect()
        };
        let requests = lines.iter().filter(|l| l.contains("passthrough")).count();
        assert!(
            requests >= 40,
            "{requests} request lines:\n{}",
            lines.join("\n")
        );
        for pair in stamps.windows(2) {
            assert!(
                pair[0] <= pair[1],
                "json={json}: {} after {}:\n{}",
                pair[1],
                pair[0],
                lines.join("\n")
            );
        }
    }
}

/// A secret held in a file (`secret_file`) is read again by every reload:
/// a rotated secret is in force without a restart, and the one it replaced
/// is refused.
#[tokio::test]
async fn a_reload_reads_a_secret_file_again() {
    let fake = crate::support::fake::FakeUpstream::start(
        &[("5000", "upstream-key", "upstream-secret")],
        support::now,
    )
    .await;
    let file = support::ConfigFile::new("");
    let secret = file.dir().join("app-secret");
    std::fs::write(&secret, "first-secret\n").expect("write");
    file.write(&format!(
        "listen = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstream]\nurl = \"{}\"\n\
         [[apps]]\nid = \"{}\"\nkey = \"{}\"\nsecret_file = {:?}\nmode = \"translate\"\n\
         [apps.upstream]\nid = \"5000\"\nkey = \"upstream-key\"\nsecret = \"upstream-secret\"\n",
        fake.url(),
        support::APP_ID,
        support::KEY,
        secret.display().to_string()
    ));
    let proxy = TestProxy::start_file(file.path()).await;
    let trigger = |with: &'static str| {
        let path = format!("/apps/{}/channels/room/events", support::APP_ID);
        let uri = support::signed_uri(
            support::KEY,
            with,
            "POST",
            &path,
            support::now(),
            Some(b"x"),
            &[("name", "rotated")],
        );
        let url = format!("{}{uri}", proxy.url());
        async move {
            support::send(Method::POST, &url, &[], "x")
                .await
                .status
                .as_u16()
        }
    };
    assert_eq!(trigger("first-secret").await, 202);
    std::fs::write(&secret, "second-secret\n").expect("write");
    let reloaded = proxy.reload().await;
    assert_eq!(reloaded.status.as_u16(), 200, "{}", reloaded.text());
    assert_eq!(trigger("second-secret").await, 202, "the new secret");
    assert_eq!(trigger("first-secret").await, 401, "the old one");
    assert_eq!(fake.recorded().len(), 2, "the refused call was not sent");
    proxy.stop().await;
}

/// A reload to settings that work against each other (here a longer
/// upstream time against the running drain's grace) applies them and
/// warns of each.
/// A reload that takes longer than the admin listener's connection
/// lifetime (here: its file a FIFO nobody writes to until then) still
/// answers on its connection, which stays open while the answer is worked
/// out: `pusher-cutover reload` waits for that answer.
#[tokio::test]
async fn a_reload_slower_than_the_admin_connection_lifetime_still_answers() {
    use tokio::io::AsyncWriteExt as _;
    let fake = support::fake().await;
    let base = support::config_toml(&fake.url(), "", "");
    let file = support::ConfigFile::new(&base);
    let proxy = TestProxy::start_file(file.path()).await;
    std::fs::remove_file(file.path()).expect("remove");
    let made = Command::new("mkfifo")
        .arg(file.path())
        .status()
        .expect("mkfifo");
    assert!(made.success(), "mkfifo");
    let mut stream = tokio::net::TcpStream::connect(proxy.admin)
        .await
        .expect("connect");
    stream
        .write_all(
            b"POST /reload HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await
        .expect("write");
    let answer = tokio::spawn(async move { support::read_response(&mut stream).await });
    tokio::time::sleep(
        pusher_cutover::http::admin::CONNECTION_LIFETIME + Duration::from_millis(500),
    )
    .await;
    // The writer on a thread of its own, waited for with a bound: were the
    // FIFO never opened, it would stay blocked, and hold up nothing.
    let fifo = file.path().to_path_buf();
    let (done, written) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(std::fs::write(fifo, base)));
    tokio::task::spawn_blocking(move || written.recv_timeout(Duration::from_secs(10)))
        .await
        .expect("join")
        .expect("the reload reads the file within 10 s")
        .expect("write");
    // The reload done before the answer is looked at: a test that fails
    // leaves no reload running on its runtime's blocking pool.
    let reloads = r#"pusher_cutover_config_reloads_total{result="success"}"#;
    assert_eq!(proxy.metric_reaching(reloads, 1.0).await, Some(1.0));
    let answer = tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .expect("answered within 10 s of the file coming")
        .expect("the connection stayed open for the answer");
    assert_eq!(answer.status.as_u16(), 200, "{}", answer.text());
    assert!(
        answer.text().starts_with("reloaded config="),
        "{}",
        answer.text()
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_reload_warns_of_settings_that_work_against_each_other() {
    support::capture_logs();
    let fake = support::fake().await;
    let base = support::config_toml(&fake.url(), "", "");
    let file = support::ConfigFile::new(&base);
    let proxy = TestProxy::start_file(file.path()).await;
    let longer = support::config_toml(&fake.url(), "timeout_ms = 23456", "");
    file.write(&longer);
    let reloaded = proxy.reload().await;
    assert_eq!(reloaded.status.as_u16(), 200, "{}", reloaded.text());
    let lines = support::log_lines(&["works against another", "(23456 ms)"]).await;
    let line = lines
        .first()
        .unwrap_or_else(|| panic!("no caution logged:\n{}", support::logs()));
    assert!(
        line.contains("WARN") && line.contains("shutdown_grace_ms"),
        "{line}"
    );
    proxy.stop().await;
}

/// A reload logs each app's change, answers which settings need a restart,
/// and `/readyz` then shows the hash in force, not the file's; once the
/// file again matches what runs, the file's hash is back. A refused reload
/// is answered and logged on one line.
#[tokio::test]
async fn reload_says_what_changed_and_what_needs_a_restart() {
    support::capture_logs();
    let fake = support::fake().await;
    let base = support::config_toml(&fake.url(), "", "mode = \"observe\"");
    let file = support::ConfigFile::new(&base);
    let proxy = TestProxy::start_file(file.path()).await;
    let get = |path: &'static str| {
        let url = format!("{}{path}", proxy.admin_url());
        async move { support::send(Method::GET, &url, &[], "").await.text() }
    };
    let started = get("/readyz").await;

    // Only an app's mode: applied in full.
    let translate = base.replace("mode = \"observe\"", "mode = \"translate\"");
    file.write(&translate);
    let full = proxy.reload().await;
    assert_eq!(full.status.as_u16(), 200, "{}", full.text());
    let answer = full.text();
    let mut lines = answer.lines();
    let file_hash = lines
        .next()
        .and_then(|l| l.strip_prefix("reloaded config="))
        .expect("hash")
        .to_owned();
    assert_eq!(file_hash.len(), 16, "{answer}");
    assert_eq!(
        lines.collect::<Vec<_>>(),
        ["app 4242: mode observe → translate"],
        "the answer names the change"
    );
    assert_eq!(get("/readyz").await, format!("ready config={file_hash}\n"));
    assert_ne!(get("/readyz").await, started);
    assert!(
        support::logs().contains("app 4242: mode observe → translate"),
        "{}",
        support::logs()
    );

    // The listener and the workers too: those need a restart.
    let restart = translate.replacen(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:1\"\nworkers = 3",
        1,
    );
    file.write(&restart);
    let partial = proxy.reload().await;
    let text = partial.text();
    assert_eq!(partial.status.as_u16(), 200, "{text}");
    assert!(
        text.contains("; restart needed for: listen, workers"),
        "{text}"
    );
    let in_force = text
        .strip_prefix("reloaded config=")
        .and_then(|t| t.split(';').next())
        .expect("hash in force")
        .to_owned();
    let file_partial = text
        .split("the file's config=")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .expect("file's hash")
        .to_owned();
    assert_ne!(
        in_force, file_partial,
        "the file is not in force as a whole"
    );
    assert_eq!(
        get("/readyz").await,
        format!("ready config={in_force} restart_needed=listen,workers\n")
    );
    let metrics = get("/metrics").await;
    assert!(
        metrics.contains(&format!("config_hash=\"{in_force}\"")),
        "build_info follows: {metrics}"
    );
    // The proxy keeps serving on its listener, with the new mode.
    let uri = support::legacy_trigger_uri("room", &[("name", "ev")], b"x", support::now());
    let a = support::send(Method::POST, &format!("{}{uri}", proxy.url()), &[], "x").await;
    assert_eq!(a.status.as_u16(), 202, "{}", a.text());

    // The file back to what runs: its own hash, nothing pending.
    file.write(&translate);
    let back = proxy.reload().await;
    assert_eq!(back.text(), format!("reloaded config={file_hash}\n"));
    assert_eq!(get("/readyz").await, format!("ready config={file_hash}\n"));

    // A syntax error is one line of answer and log, naming its place, not
    // quoting the file (whose line could hold a secret).
    file.write("[upstream\nurl = 1\n");
    let refused = proxy.reload().await;
    assert_eq!(refused.status.as_u16(), 400);
    assert_eq!(refused.text().lines().count(), 1, "{}", refused.text());
    // Its own line: the log is the whole test process's, and other tests
    // refuse reloads too.
    let logs = support::logs();
    let line = logs
        .lines()
        .find(|l| l.contains("configuration reload refused") && l.contains("config syntax"))
        .expect("logged");
    assert!(
        line.contains("config syntax at line 1,") && !line.contains("[upstream"),
        "{line}"
    );
    proxy.stop().await;
}

/// `pusher_cutover_bypass` follows the kill switch of the configuration
/// in force: 0 from startup, 1 once a reload turns `bypass` on, 0 again
/// once one turns it off, and 1 from startup when started with it on (the
/// fleet gate counts a window with it at 1 as
/// a gap: the sidecar's calls passed through uncounted).
/// `pusher_cutover_bypass_last_on_timestamp_seconds` is the moment a
/// reload turned it off (0 before), so a switch on and off between two
/// scrapes still shows; a reload that keeps it off does not move it.
#[tokio::test]
async fn the_bypass_gauge_follows_reloads() {
    let fake = support::fake().await;
    let counting = support::config_toml(&fake.url(), "", "");
    let bypassed = counting.replace("[admin]", "bypass = true\n[admin]");
    let file = support::ConfigFile::new(&counting);
    let proxy = TestProxy::start_file(file.path()).await;
    let gauge = || async { support::metric(&proxy.metrics().await, "pusher_cutover_bypass") };
    let last_on = || async {
        support::metric(
            &proxy.metrics().await,
            "pusher_cutover_bypass_last_on_timestamp_seconds",
        )
    };
    let unix_now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs() as f64
    };

    let text = proxy.metrics().await;
    assert!(
        text.contains("# TYPE pusher_cutover_bypass gauge"),
        "{text}"
    );
    assert_eq!(gauge().await, Some(0.0), "at startup");
    assert_eq!(last_on().await, Some(0.0), "never on");

    file.write(&bypassed);
    let on = proxy.reload().await;
    assert_eq!(on.status.as_u16(), 200, "{}", on.text());
    assert_eq!(gauge().await, Some(1.0), "after a reload turning it on");
    assert_eq!(last_on().await, Some(0.0), "on: the gauge says so");

    file.write(&counting);
    let before = unix_now();
    let off = proxy.reload().await;
    let after = unix_now();
    assert_eq!(off.status.as_u16(), 200, "{}", off.text());
    assert_eq!(gauge().await, Some(0.0), "after a reload turning it off");
    let when = last_on().await.expect("set");
    assert!(
        (before..=after).contains(&when),
        "{when} not in {before}..={after}"
    );
    let kept = proxy.reload().await;
    assert_eq!(kept.status.as_u16(), 200, "{}", kept.text());
    assert_eq!(last_on().await, Some(when), "kept off moves nothing");
    proxy.stop().await;

    // Started with it on: 1 from the first scrape.
    file.write(&bypassed);
    let proxy = TestProxy::start_file(file.path()).await;
    assert_eq!(
        support::metric(&proxy.metrics().await, "pusher_cutover_bypass"),
        Some(1.0),
        "started with bypass on"
    );
    proxy.stop().await;
}

/// The Docker example mounts the config's directory: an editor saves by
/// writing a new file and renaming it over the old one, and a SIGHUP
/// reload then serves the new file's settings (a reload reads the path
/// afresh, so it sees the new inode).
#[tokio::test]
async fn sighup_reload_picks_up_a_config_replaced_by_rename() {
    let fake = support::fake().await;
    let base = support::config_toml(&fake.url(), "", "");
    let file = support::ConfigFile::new(&base);
    let config = file.path();
    let served = Served::start(config).await;
    let trigger = || {
        let url = format!(
            "http://{}{}",
            served.addr,
            support::legacy_trigger_uri("room", &[("name", "ev")], b"x", support::now())
        );
        async move {
            support::send(Method::POST, &url, &[], "x")
                .await
                .status
                .as_u16()
        }
    };
    assert_eq!(trigger().await, 202);
    let inode = |p: &std::path::Path| {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(p).expect("metadata").ino()
    };
    let before = inode(config);

    // Editor-style save: a temporary file in the same directory, renamed
    // over the config.
    let tmp = file.dir().join(".proxy.toml.swp");
    std::fs::write(
        &tmp,
        base.replace("[[apps]]", "[[apps]]\nmode = \"reject\""),
    )
    .expect("write");
    std::fs::rename(&tmp, config).expect("rename");
    assert_ne!(
        inode(config),
        before,
        "a new file, not the old one rewritten"
    );

    served.signal("HUP");
    let mut status = 0;
    for _ in 0..50 {
        status = trigger().await;
        if status == 410 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 410, "the renamed-over file is in force");
    let (code, entries) = served.sigterm().await;
    assert_eq!(code, Some(0));
    assert!(
        entries
            .iter()
            .any(|e| e["message"] == "app 4242: mode translate → reject"),
        "{entries:?}"
    );
}

/// A shadow mismatch is logged with both answers as JSON, not as Rust
/// debug dumps.
#[tokio::test]
async fn shadow_mismatch_logs_both_answers_as_json() {
    support::capture_logs();
    let fake = support::fake().await;
    fake.set(|b| b.legacy_connection_count = Some(5));
    let proxy = TestProxy::for_upstream(
        &fake.url(),
        "",
        "mode = \"shadow\"\nsubscription_count = \"on\"",
    )
    .await;
    let url = format!(
        "{}{}",
        proxy.url(),
        support::legacy_stats_uri("shadow-json-room", support::now())
    );
    let a = support::send(Method::GET, &url, &[], "").await;
    assert_eq!(a.status.as_u16(), 200, "{}", a.text());
    let lines = support::log_lines(&["shadow: translated stats differ", "shadow-json-room"]).await;
    let line = lines.first().expect("the mismatch is logged");
    assert!(
        line.contains(r#"legacy={"occupied":true,"connection_count":5}"#),
        "{line}"
    );
    assert!(
        line.contains(r#"translated={"occupied":true,"connection_count":3}"#),
        "{line}"
    );
    assert!(line.contains("fields=connection_count"), "{line}");
    assert!(
        !line.contains("Stats {") && !line.contains("Some("),
        "{line}"
    );
    proxy.stop().await;
}
