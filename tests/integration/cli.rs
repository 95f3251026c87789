//! The binary: `--version`, `validate`, and `serve` with a config file in
//! front of a current-API server, stopped by SIGTERM.

use hyper::Method;

use crate::support::recordings::{expected_upstream_body, recordings};
use crate::support::{self, oracle};

use crate::support::binary::{BIN, Served};

#[test]
fn version_and_help() {
    let out = std::process::Command::new(BIN)
        .arg("--version")
        .output()
        .expect("runs");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("pusher-cutover {}", env!("CARGO_PKG_VERSION"))
    );
    let out = std::process::Command::new(BIN)
        .arg("--help")
        .output()
        .expect("runs");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("serve") && help.contains("validate"),
        "{help}"
    );
}

/// What `validate --config CONFIG` (with `--require-env` when asked)
/// says: its exit code, stdout and stderr.
fn validate(config: &std::path::Path, require_env: bool) -> (Option<i32>, String, String) {
    let mut command = std::process::Command::new(BIN);
    command.arg("validate");
    if require_env {
        command.arg("--require-env");
    }
    let out = command.arg("--config").arg(config).output().expect("runs");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn validate_lists_every_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/sockudo-local.toml");
    let (status, _, err) = validate(std::path::Path::new(example), false);
    assert_eq!(status, Some(0), "{err}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "listen = \"x\"\n[upstream]\nurl = \"http://h/path\"\n[[apps]]\nid = \"1\"\nkey = \"\"\n",
    )
    .expect("write");
    let (status, _, err) = validate(&bad, false);
    assert_eq!(status, Some(1));
    for key in ["listen", "upstream.url", "apps[0].key", "apps[0].secret"] {
        assert!(
            err.contains(&format!("- {key}:")),
            "{key} not listed:\n{err}"
        );
    }

    // Settings that work against each other: valid, with a warning each.
    let cautioned = dir.path().join("cautioned.toml");
    std::fs::write(
        &cautioned,
        "shutdown_grace_ms = 5000\n[upstream]\nurl = \"http://h\"\n\
         [[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n",
    )
    .expect("write");
    let (status, out, err) = validate(&cautioned, false);
    assert_eq!(status, Some(0), "{err}");
    assert!(out.contains("1 warning(s)"), "{out}");
    assert!(err.contains("warning: shutdown_grace_ms: 5000 ms"), "{err}");

    // A secret file that is not there: a warning without --require-env
    // (CI linting where the secrets are not), an error with it.
    let file_secret = dir.path().join("file-secret.toml");
    std::fs::write(
        &file_secret,
        format!(
            "[upstream]\nurl = \"http://h\"\n[[apps]]\nid = \"1\"\nkey = \"k\"\n\
             secret_file = {:?}\n",
            dir.path().join("absent").display().to_string()
        ),
    )
    .expect("write");
    for (require, code) in [(false, 0), (true, 1)] {
        let (status, _, err) = validate(&file_secret, require);
        assert_eq!(status, Some(code), "{err}");
        assert!(err.contains("apps[0].secret_file: cannot read"), "{err}");
    }
    // Refused as `serve` refuses them, whether the secrets are there or
    // not: a second source beside the file, and a directory for a file.
    let text = std::fs::read_to_string(&file_secret).expect("read");
    std::fs::write(&file_secret, format!("{text}secret = \"s\"\n")).expect("write");
    let (status, _, err) = validate(&file_secret, false);
    assert_eq!(status, Some(1), "{err}");
    assert!(err.contains("- apps[0].secret: set one of"), "{err}");
    std::fs::write(
        &file_secret,
        text.replace(
            &format!("{:?}", dir.path().join("absent").display().to_string()),
            &format!("{:?}", dir.path().display().to_string()),
        ),
    )
    .expect("write");
    let (status, _, err) = validate(&file_secret, false);
    assert_eq!(status, Some(1), "{err}");
    assert!(err.contains("- apps[0].secret_file: cannot read"), "{err}");

    let unknown = dir.path().join("unknown.toml");
    std::fs::write(&unknown, "[upstream]\nurl = \"http://h\"\nretries = 3\n").expect("write");
    let (status, _, err) = validate(&unknown, false);
    assert_eq!(status, Some(1));
    assert!(err.contains("retries"), "{err}");

    // TLS files are loaded as `serve` loads them: files that are there but
    // hold no certificate or key are invalid, not found out at start.
    let not_pem = dir.path().join("not-pem.txt");
    std::fs::write(&not_pem, "just text\n").expect("write");
    let tls = dir.path().join("tls.toml");
    std::fs::write(
        &tls,
        format!(
            "[tls]\ncert = {p:?}\nkey = {p:?}\n[upstream]\nurl = \"http://h\"\n\
             [[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n",
            p = not_pem.display().to_string()
        ),
    )
    .expect("write");
    let (status, _, err) = validate(&tls, false);
    assert_eq!(status, Some(1), "{err}");
    assert!(err.contains("- tls:"), "{err}");

    // A certificate that ends within 14 days, or has ended, is a warning.
    let now = time::OffsetDateTime::now_utc();
    for (end, said) in [
        (now + time::Duration::days(3), "expires at"),
        (now - time::Duration::days(1), "expired at"),
    ] {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).expect("params");
        params.not_before = now - time::Duration::days(90);
        params.not_after = end;
        let cert = params.self_signed(&key).expect("cert");
        let (cert_file, key_file) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert_file, cert.pem()).expect("write");
        std::fs::write(&key_file, key.serialize_pem()).expect("write");
        std::fs::write(
            &tls,
            format!(
                "[tls]\ncert = {:?}\nkey = {:?}\n[upstream]\nurl = \"http://h\"\n\
                 [[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n",
                cert_file.display().to_string(),
                key_file.display().to_string()
            ),
        )
        .expect("write");
        let (status, out, err) = validate(&tls, false);
        assert_eq!(status, Some(0), "{out}{err}");
        assert!(out.contains("1 warning(s)"), "{out}");
        assert!(err.contains(&format!("warning: tls.cert: {said}")), "{err}");
    }
}

/// `serve --config FILE` in front of a current-API server turns each
/// recorded legacy request, freshly signed, into 202 `202 ACCEPTED\n` with
/// the event delivered upstream; SIGTERM stops it with exit 0.
#[tokio::test]
async fn serve_translates_fresh_legacy_requests_and_stops_on_sigterm() {
    let fake = support::fake().await;
    let (_file, _, served) = serve_file(&fake).await;
    let addr = served.addr.clone();

    let recordings = recordings();
    for r in &recordings {
        let target = r.target();
        let path = target.split_once('?').map_or(target, |(p, _)| p);
        let mut params = vec![("name", r.param("name").expect("name"))];
        if let Some(s) = r.param("socket_id") {
            params.push(("socket_id", s));
        }
        let params: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let uri = support::signed_uri(
            support::KEY,
            support::SECRET,
            "POST",
            path,
            support::now(),
            Some(r.body.as_bytes()),
            &params,
        );
        let a = support::send(
            Method::POST,
            &format!("http://{addr}{uri}"),
            &[],
            r.body.clone(),
        )
        .await;
        assert_eq!(a.status.as_u16(), 202, "{}: {}", r.library, a.text());
        assert_eq!(&a.body[..], b"202 ACCEPTED\n");
    }
    let seen = fake.recorded();
    assert_eq!(seen.len(), recordings.len());
    for (r, up) in recordings.iter().zip(&seen) {
        assert_eq!(
            String::from_utf8_lossy(&up.body),
            expected_upstream_body(r),
            "{}",
            r.library
        );
        assert_eq!(up.signature, Ok(()));
    }

    let (code, entries) = served.sigterm().await;
    assert_eq!(code, Some(0));
    let logs: Vec<String> = entries.iter().map(ToString::to_string).collect();
    let logs = logs.join("\n");
    assert!(
        entries.iter().any(|e| e["message"] == "SIGTERM received"),
        "{logs}"
    );
    // Startup says which apps are served, and at which stage.
    let apps: Vec<&serde_json::Value> = entries
        .iter()
        .filter(|e| e["message"] == "app configured")
        .collect();
    assert_eq!(apps.len(), 1, "{logs}");
    assert_eq!(
        (&apps[0]["app_id"], &apps[0]["mode"]),
        (&serde_json::json!("4242"), &serde_json::json!("translate")),
        "{logs}"
    );
    let legacy: Vec<&serde_json::Value> = entries
        .iter()
        .filter(|e| e["message"] == "legacy call")
        .collect();
    assert_eq!(legacy.len(), recordings.len(), "{logs}");
    for e in legacy {
        assert_eq!(e["level"], "WARN");
        assert_eq!(e["app_id"], "4242");
        assert_eq!(e["auth_key"], support::KEY);
        assert_eq!(e["route"], "/apps/{app_id}/channels/{channel}/events");
        assert_eq!(e["status"], 202);
        assert_eq!(e["upstream_status"], 200);
        assert_eq!(e["client_addr"], "127.0.0.1");
    }
}

/// `serve` of the test config for `fake`, from a file it reloads: the
/// file (removed when dropped), its text and the process.
async fn serve_file(fake: &support::fake::FakeUpstream) -> (support::ConfigFile, String, Served) {
    let base = support::config_toml(&fake.url(), "", "");
    let file = support::ConfigFile::new(&base);
    let served = Served::start(file.path()).await;
    (file, base, served)
}

/// A reload that waits on its file (here a FIFO nobody writes to yet)
/// holds up neither the proxy's listener, whose accept loop shares its
/// thread, nor the admin listener: calls and scrapes on new connections
/// are served meanwhile, `POST /reload` is told one runs, the reload
/// applies once the file comes, and a SIGTERM during such a reload stops
/// the process all the same.
#[tokio::test]
async fn a_reload_waiting_on_its_file_holds_up_no_listener() {
    let fake = support::fake().await;
    let (file, base, served) = serve_file(&fake).await;
    let config = file.path();
    let limit = std::time::Duration::from_secs(5);
    // Each on a connection of its own, which the accept loop must take.
    let fresh = |addr: &str, head: String| {
        let addr: std::net::SocketAddr = addr.parse().expect("addr");
        async move {
            tokio::time::timeout(limit, support::raw_exchange(addr, head.as_bytes()))
                .await
                .map(|answer| answer.status.as_u16())
        }
    };
    let trigger = || {
        let uri = support::legacy_trigger_uri("room", &[("name", "ev")], b"x", support::now());
        fresh(
            &served.addr,
            format!(
                "POST {uri} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\
                 Connection: close\r\n\r\nx"
            ),
        )
    };
    assert_eq!(trigger().await, Ok(202));

    std::fs::remove_file(config).expect("remove");
    let made = std::process::Command::new("mkfifo")
        .arg(config)
        .status()
        .expect("mkfifo");
    assert!(made.success(), "mkfifo");
    served.signal("HUP");
    for _ in 0..3 {
        // The reload is stuck opening the FIFO from the first pause on.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert_eq!(trigger().await, Ok(202), "a call while the reload waits");
        let scrape = fresh(
            &served.admin,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into(),
        );
        assert_eq!(scrape.await, Ok(200), "a scrape meanwhile");
    }
    let reload = fresh(
        &served.admin,
        "POST /reload HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
    );
    assert_eq!(reload.await, Ok(409), "a second reload is told one runs");

    // The writer on a thread of its own, waited for with a bound: were
    // the FIFO never opened, it would stay blocked, and hold up nothing.
    let feed = |text: String| {
        let (done, fed) = std::sync::mpsc::channel();
        let fifo = config.to_path_buf();
        std::thread::spawn(move || {
            let _ = done.send(std::fs::write(fifo, text));
        });
        tokio::task::spawn_blocking(move || fed.recv_timeout(limit))
    };
    let text = base.replace("[[apps]]", "[[apps]]\nmode = \"reject\"");
    feed(text)
        .await
        .expect("join")
        .expect("the reload reads the file within 5 s")
        .expect("write");
    let mut status = Ok(0);
    for _ in 0..50 {
        status = trigger().await;
        if status == Ok(410) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status, Ok(410), "the reload applied once its file came");

    // Stuck again, a SIGTERM still stops the process, and cleanly.
    served.signal("HUP");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (code, entries) = served.sigterm().await;
    assert_eq!(code, Some(0));
    assert!(
        entries.iter().any(|e| e["message"] == "stopped"),
        "{entries:?}"
    );
}

/// SIGHUP and SIGTERM sent while `serve` is still starting (here, waiting
/// to read its config file from a FIFO) are its own to handle: a SIGHUP
/// does not end it, and reloads the configuration once the proxy runs
/// (`systemctl reload` right after a start); a SIGTERM stops the start at
/// once, with the status its default action gives (143), and says so.
#[tokio::test]
async fn signals_while_starting_are_the_proxys_to_handle() {
    use tokio::io::AsyncBufReadExt as _;
    let fake = support::fake().await;
    let base = support::config_toml(&fake.url(), "", "");
    let limit = std::time::Duration::from_secs(10);
    for signal in ["HUP", "TERM"] {
        let file = support::ConfigFile::new(&base);
        let fifo = file.path().to_path_buf();
        std::fs::remove_file(&fifo).expect("remove");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo");
        assert!(made.success(), "mkfifo");
        // Writes `text` into the FIFO once a reader opens it, on a thread
        // of its own (bounded by the waits below, not by itself).
        let feed = |text: String| {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::write(fifo, text))
        };
        let mut child = tokio::process::Command::new(BIN)
            .args(["--log-format", "json", "serve", "--config"])
            .arg(&fifo)
            .env("RUST_LOG", "info")
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn");
        let pid = child.id().expect("running");
        let (said, mut lines) = tokio::sync::mpsc::unbounded_channel();
        let mut stderr = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                let _ = said.send(line);
            }
        });
        // Blocked opening its config file by now.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let kill = |name: &str| {
            let sent = std::process::Command::new("kill")
                .args([&format!("-{name}"), &pid.to_string()])
                .status()
                .expect("kill runs");
            assert!(sent.success(), "kill -{name}");
        };
        kill(signal);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "SIG{signal} while starting ended the process"
        );
        if signal == "TERM" {
            // Stopped before it started, as the signal's default would:
            // nothing was opened yet, the file is never read.
            let status = tokio::time::timeout(limit, child.wait())
                .await
                .expect("exits")
                .expect("wait");
            assert_eq!(status.code(), Some(143));
            let mut said = Vec::new();
            while let Ok(Some(line)) = tokio::time::timeout(limit, lines.recv()).await {
                said.push(line);
            }
            assert!(
                said.iter()
                    .any(|l| l
                        .contains("SIGTERM received while reading the configuration: not started")),
                "{said:?}"
            );
            continue;
        }
        feed(base.clone());
        // Every message logged until `until` is, or the process ends.
        let mut messages = Vec::new();
        let mut read_until = async |until: &str| {
            tokio::time::timeout(limit, async {
                while let Some(line) = lines.recv().await {
                    let entry: serde_json::Value =
                        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
                    let message = entry["message"].as_str().unwrap_or_default().to_owned();
                    messages.push(message.clone());
                    if message == until {
                        return;
                    }
                }
            })
            .await
            .unwrap_or_else(|_| panic!("{until:?} within {limit:?}: {messages:?}"));
            messages.clone()
        };
        // The reload the SIGHUP asked for reads the file again, once the
        // first read is done.
        read_until("listening").await;
        feed(base.clone());
        read_until("configuration reloaded").await;
        kill("TERM");
        let seen = read_until("stopped").await;
        assert!(seen.iter().any(|m| m == "SIGTERM received"), "{seen:?}");
        let status = tokio::time::timeout(limit, child.wait())
            .await
            .expect("exits")
            .expect("wait");
        assert_eq!(status.code(), Some(0), "{seen:?}");
    }
}

/// `reload` asks the running proxy, with the file's admin token, and
/// waits for its answer: 0 once the change is in force; 1 when the proxy
/// refuses the file (here: a `secret_env` that the proxy's environment
/// lacks and the command's has), the previous configuration serving on,
/// or the token; 78 for a file it cannot read or whose token variable is
/// unset or token file unreadable, without asking; 69 when nothing answers.
#[tokio::test]
async fn reload_waits_for_the_proxys_own_answer() {
    let fake = support::fake().await;
    let base = support::config_toml(&fake.url(), "", "")
        .replace("[admin]\n", "[admin]\ntoken = \"a-long-admin-token\"\n");
    let file = support::ConfigFile::new(&base);
    let served = Served::start(file.path()).await;
    // `reload --config FILE [--admin ADMIN]`, with `env` added.
    let reload = |admin: Option<String>, env: &[(&str, &str)]| {
        let mut command = tokio::process::Command::new(BIN);
        command
            .args(["reload", "--config"])
            .arg(file.path())
            .args(admin.iter().flat_map(|a| ["--admin", a.as_str()]))
            .envs(env.iter().copied());
        async move {
            let out = tokio::time::timeout(std::time::Duration::from_secs(30), command.output())
                .await
                .expect("reload ends within 30 s")
                .expect("reload runs");
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    let trigger = || async {
        let uri = support::legacy_trigger_uri("room", &[("name", "ev")], b"x", support::now());
        support::send(
            Method::POST,
            &format!("http://{}{uri}", served.addr),
            &[],
            b"x".to_vec(),
        )
        .await
        .status
        .as_u16()
    };
    assert_eq!(trigger().await, 202);

    file.write(&base.replace("[[apps]]", "[[apps]]\nmode = \"reject\""));
    let (code, out, err) = reload(Some(served.admin.clone()), &[]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.starts_with("reloaded config="), "{out}");
    // Each app's changes, as the log gives them.
    assert!(
        out.lines().any(
            |l| l.starts_with(&format!("app {}: mode ", support::APP_ID))
                && l.ends_with("→ reject")
        ),
        "{out}"
    );
    assert_eq!(trigger().await, 410, "in force once reload exits");
    // `--admin` takes a host name too; without a port it is a usage error.
    let port = served.admin.rsplit_once(':').expect("port").1;
    let (code, out, err) = reload(Some(format!("localhost:{port}")), &[]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    // No admin listener to send a token to: that is what is said, even
    // with a token file that cannot be read.
    file.write(&base.replace(
        "token = \"a-long-admin-token\"",
        "enabled = false\ntoken_file = \"/nonexistent/admin-token\"",
    ));
    let (code, _, err) = reload(None, &[]).await;
    assert_eq!(code, Some(78), "{err}");
    assert!(err.contains("no admin listener"), "{err}");
    for no_host_or_port in ["localhost", ":9090"] {
        let (code, _, err) = reload(Some(no_host_or_port.into()), &[]).await;
        assert_eq!(code, Some(64), "{no_host_or_port}: {err}");
        assert!(err.contains("HOST:PORT"), "{err}");
    }

    let lacking = base
        .replace("[[apps]]", "[[apps]]\nmode = \"observe\"")
        .replace(
            &format!("secret = \"{}\"", support::SECRET),
            "secret_env = \"PC_RELOAD_TEST_SECRET\"",
        );
    file.write(&lacking);
    let (code, out, err) = reload(
        Some(served.admin.clone()),
        &[("PC_RELOAD_TEST_SECRET", "x")],
    )
    .await;
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.contains("400") && err.contains("PC_RELOAD_TEST_SECRET"),
        "{err}"
    );
    assert_eq!(trigger().await, 410, "the previous configuration serves on");

    file.write("[upstream\n");
    let (code, _, err) = reload(Some(served.admin.clone()), &[]).await;
    assert_eq!(code, Some(78), "{err}");
    assert!(err.contains("invalid, not reloaded"), "{err}");

    // The token is the running proxy's until a restart: a file with
    // another is refused, and the command says why.
    file.write(&base.replace("a-long-admin-token", "another-admin-token"));
    let (code, _, err) = reload(Some(served.admin.clone()), &[]).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("401") && err.contains("restart"), "{err}");
    assert!(
        !err.contains("another-admin-token"),
        "the token is never printed: {err}"
    );
    // A token variable the command's environment lacks: nothing is sent.
    file.write(&base.replace(
        "token = \"a-long-admin-token\"",
        "token_env = \"PC_RELOAD_TEST_TOKEN\"",
    ));
    let (code, _, err) = reload(Some(served.admin.clone()), &[]).await;
    assert_eq!(code, Some(78), "{err}");
    assert!(err.contains("PC_RELOAD_TEST_TOKEN"), "{err}");
    // A token file (a mounted Secret) is read for the request, its one
    // trailing line break left out; one that cannot be read sends nothing.
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, "a-long-admin-token\n").expect("write");
    let from_file = base.replace(
        "token = \"a-long-admin-token\"",
        &format!("token_file = {:?}", token_file.display().to_string()),
    );
    file.write(&from_file);
    let (code, out, err) = reload(Some(served.admin.clone()), &[]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    std::fs::remove_file(&token_file).expect("remove");
    let (code, _, err) = reload(Some(served.admin.clone()), &[]).await;
    assert_eq!(code, Some(78), "{err}");
    assert!(err.contains("admin.token_file"), "{err}");

    // A port nothing listens on: bound, then let go.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let gone = closed.local_addr().expect("addr").to_string();
    drop(closed);
    file.write(&base);
    let (code, _, err) = reload(Some(gone), &[]).await;
    assert_eq!(code, Some(69), "{err}");
    assert!(err.contains("cannot reach"), "{err}");

    let (code, _) = served.sigterm().await;
    assert_eq!(code, Some(0));
}

/// SIGHUP reloads the config file: a valid change takes effect, an invalid
/// file is refused (logged) and the previous config keeps serving.
#[tokio::test]
async fn sighup_reloads_the_config_file() {
    let fake = support::fake().await;
    let (file, base, served) = serve_file(&fake).await;
    let trigger = || {
        let url = format!(
            "http://{}{}",
            served.addr,
            support::legacy_trigger_uri("room", &[("name", "ev")], b"x", support::now())
        );
        async move {
            support::send(hyper::Method::POST, &url, &[], "x")
                .await
                .status
                .as_u16()
        }
    };
    assert_eq!(trigger().await, 202);

    file.write(&base.replace("[[apps]]", "[[apps]]\nmode = \"reject\""));
    served.signal("HUP");
    let mut status = 0;
    for _ in 0..50 {
        status = trigger().await;
        if status == 410 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status, 410, "the reloaded mode is in effect");

    file.write("this is not toml");
    served.signal("HUP");
    // Bounded wait until the refusal is counted: the reload was tried.
    let failures = r#"pusher_cutover_config_reloads_total{result="failure"}"#;
    let metrics_url = format!("http://{}/metrics", served.admin);
    let mut refused = None;
    for _ in 0..100 {
        let metrics = support::send(Method::GET, &metrics_url, &[], "")
            .await
            .text();
        refused = support::metric(&metrics, failures);
        if refused == Some(1.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(refused, Some(1.0), "{failures}");
    assert_eq!(trigger().await, 410, "the previous config keeps serving");

    let (code, entries) = served.sigterm().await;
    assert_eq!(code, Some(0));
    let messages: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["message"].as_str())
        .collect();
    assert!(messages.contains(&"configuration reloaded"), "{messages:?}");
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("configuration reload refused")),
        "{messages:?}"
    );
}

/// 200 requests in flight to a slow upstream when SIGTERM arrives: all 200
/// are answered, then the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_200_requests_in_flight() {
    let fake = support::fake().await;
    fake.set(|b| b.delay = std::time::Duration::from_millis(1500));
    // Coalescing off (`batch_max = 1`): 200 triggers are 200 upstream
    // requests in flight, not 200 callers queued behind two batches.
    let file = support::ConfigFile::new(&support::config_toml(&fake.url(), "batch_max = 1", ""));
    let served = Served::start(file.path()).await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let url = format!(
            "http://{}{}",
            served.addr,
            support::legacy_trigger_uri(
                "room",
                &[("name", "ev")],
                i.to_string().as_bytes(),
                support::now()
            )
        );
        tasks.push(tokio::spawn(async move {
            support::send(hyper::Method::POST, &url, &[], i.to_string())
                .await
                .status
                .as_u16()
        }));
    }
    // Bounded wait until all 200 have reached the (slow) upstream.
    for _ in 0..100 {
        if fake.recorded().len() == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(fake.recorded().len(), 200, "all in flight");
    let (code, _) = served.sigterm().await;
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.expect("request task"));
    }
    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");
    assert_eq!(code, Some(0));
}

/// With every log at TRACE, a run through legacy calls, refusals,
/// passthrough, re-signing and a mapped app never logs a secret or an
/// `auth_signature` value.
#[tokio::test]
async fn no_secret_or_signature_in_trace_logs() {
    let mapped_secret = "upstream-only-secret-5000";
    let fake = support::fake::FakeUpstream::start(
        &[
            (support::APP_ID, support::KEY, support::SECRET),
            ("5000", "new-key", mapped_secret),
        ],
        support::now,
    )
    .await;
    let toml = format!(
        "{}\n[[apps]]\nid = \"77\"\nkey = \"legacy-77\"\nsecret = \"legacy-77-secret\"\n[apps.upstream]\nid = \"5000\"\nkey = \"new-key\"\nsecret = \"{mapped_secret}\"\n",
        support::config_toml(&fake.url(), "", "")
    );
    let file = support::ConfigFile::new(&toml);
    let mut child_env = std::collections::HashMap::new();
    child_env.insert("RUST_LOG", "trace");
    let served = Served::start_with_env(file.path(), &child_env).await;
    let base = format!("http://{}", served.addr);
    let now = support::now();
    let mut sent = Vec::new();
    let legacy = support::legacy_trigger_uri("room", &[("name", "ev")], b"x", now);
    sent.push((hyper::Method::POST, legacy.clone(), "x"));
    sent.push((
        hyper::Method::POST,
        legacy.replace("auth_signature=", "auth_signature=0"),
        "x",
    ));
    sent.push((
        hyper::Method::GET,
        support::legacy_stats_uri("presence-room", now),
        "",
    ));
    let get = "/apps/4242/channels/presence-room";
    sent.push((
        hyper::Method::GET,
        support::signed_uri(
            support::KEY,
            support::SECRET,
            "GET",
            get,
            now,
            Some(b""),
            &[],
        ),
        "",
    ));
    sent.push((
        hyper::Method::GET,
        support::signed_uri(support::KEY, support::SECRET, "GET", get, now, None, &[]),
        "",
    ));
    let mapped = "/apps/77/channels/room/events";
    sent.push((
        hyper::Method::POST,
        support::signed_uri(
            "legacy-77",
            "legacy-77-secret",
            "POST",
            mapped,
            now,
            Some(b"y"),
            &[("name", "ev")],
        ),
        "y",
    ));
    let mut signatures = Vec::new();
    for (method, target, body) in &sent {
        let query = target.split_once('?').map_or("", |(_, q)| q);
        signatures.extend(
            oracle::parse_query(query)
                .into_iter()
                .filter(|(k, _)| k == "auth_signature")
                .map(|(_, v)| v),
        );
        let a = support::send(
            method.clone(),
            &format!("{base}{target}"),
            &[],
            body.to_string(),
        )
        .await;
        assert!(
            a.status.as_u16() < 500,
            "{target}: {} {}",
            a.status,
            a.text()
        );
    }
    signatures.extend(
        fake.recorded()
            .iter()
            .filter_map(|r| r.param("auth_signature")),
    );
    assert!(signatures.len() >= 10, "{signatures:?}");
    let (code, entries) = served.sigterm().await;
    assert_eq!(code, Some(0));
    let logs: String = entries.iter().map(|e| e.to_string() + "\n").collect();
    assert!(
        logs.contains("TRACE") || logs.contains("\"level\":\"TRACE\""),
        "trace logging was on"
    );
    for secret in [support::SECRET, mapped_secret, "legacy-77-secret"] {
        assert!(!logs.contains(secret), "secret {secret} is in the logs");
    }
    for sig in signatures {
        assert!(
            !logs.contains(&sig),
            "an auth_signature value is in the logs"
        );
    }
}

/// A second SIGTERM during the drain ends the process at once, with 143,
/// instead of waiting out the grace period for a request the upstream
/// holds; it says so on stderr.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_exits_at_once() {
    let fake = support::fake().await;
    fake.set(|b| b.delay = std::time::Duration::from_secs(20));
    let toml = format!(
        "shutdown_grace_ms = 30000\n{}",
        support::config_toml(&fake.url(), "timeout_ms = 30000", "")
    );
    let file = support::ConfigFile::new(&toml);
    let served = Served::start(file.path()).await;
    let url = format!(
        "http://{}{}",
        served.addr,
        support::legacy_trigger_uri("room", &[("name", "ev")], b"1", support::now())
    );
    let request = tokio::spawn(async move {
        support::try_send(hyper::Method::POST, &url, &[], "1".to_owned()).await
    });
    for _ in 0..100 {
        if !fake.recorded().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(fake.recorded().len(), 1, "in flight");
    served.signal("TERM");
    // The first starts a drain that would last until the upstream answers
    // (20 s) or the grace period ends (30 s).
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    served.signal("TERM");
    let started = std::time::Instant::now();
    let (code, lines) = served.wait_text(std::time::Duration::from_secs(10)).await;
    assert_eq!(code, Some(143), "{lines:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert!(
        lines.iter().any(|l| l.contains("SIGTERM received again")),
        "{lines:?}"
    );
    request.abort();
}

/// `report … | head`: a reader that closed the pipe gets what it read, and
/// the report ends normally instead of panicking on the broken pipe.
#[test]
fn report_into_a_closed_pipe_does_not_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(
        pusher_cutover::telemetry::store::Store::open(dir.path(), support::now(), "i-1")
            .expect("ledger"),
    );
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = std::process::Command::new(support::binary::BIN)
        .args(["report", "--data-dir"])
        .arg(dir.path())
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

/// A config without apps serves (everything passes through), and startup
/// warns that nothing is translated.
#[tokio::test]
async fn startup_warns_when_no_app_is_configured() {
    let fake = support::fake().await;
    let toml = format!(
        "listen = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"{}\"\n",
        fake.url()
    );
    let file = support::ConfigFile::new(&toml);
    let served = Served::start(file.path()).await;
    let (code, entries) = served.sigterm().await;
    assert_eq!(code, Some(0));
    assert!(
        entries.iter().any(|e| e["level"] == "WARN"
            && e["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("no app is configured"))),
        "{entries:?}"
    );
    assert!(!entries.iter().any(|e| e["message"] == "app configured"));
}
