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

#[test]
fn validate_lists_every_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = std::process::Command::new(BIN)
        .args([
            "validate",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/sockudo-local.toml"),
        ])
        .output()
        .expect("runs");
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "listen = \"x\"\n[upstream]\nurl = \"http://h/path\"\n[[apps]]\nid = \"1\"\nkey = \"\"\n",
    )
    .expect("write");
    let out = std::process::Command::new(BIN)
        .args(["validate", "--config"])
        .arg(&bad)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in ["listen", "upstream.url", "apps[0].key", "apps[0].secret"] {
        assert!(
            err.contains(&format!("- {key}:")),
            "{key} not listed:\n{err}"
        );
    }

    let unknown = dir.path().join("unknown.toml");
    std::fs::write(&unknown, "[upstream]\nurl = \"http://h\"\nretries = 3\n").expect("write");
    let out = std::process::Command::new(BIN)
        .args(["validate", "--config"])
        .arg(&unknown)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("retries"));
}

/// `serve --config FILE` in front of a current-API server turns each
/// recorded legacy request, freshly signed, into 202 `202 ACCEPTED\n` with
/// the event delivered upstream; SIGTERM stops it with exit 0.
#[tokio::test]
async fn serve_translates_fresh_legacy_requests_and_stops_on_sigterm() {
    let fake = support::fake().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("proxy.toml");
    std::fs::write(&config, support::config_toml(&fake.url(), "", "")).expect("write config");

    let served = Served::start(&config).await;
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
        let q = oracle::signed_query(
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
            &format!("http://{addr}{path}?{q}"),
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

/// SIGHUP reloads the config file: a valid change takes effect, an invalid
/// file is refused (logged) and the previous config keeps serving.
#[tokio::test]
async fn sighup_reloads_the_config_file() {
    let fake = support::fake().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("proxy.toml");
    let base = support::config_toml(&fake.url(), "", "");
    std::fs::write(&config, &base).expect("write config");
    let served = Served::start(&config).await;
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

    std::fs::write(
        &config,
        base.replace("[[apps]]", "[[apps]]\nmode = \"reject\""),
    )
    .expect("write");
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

    std::fs::write(&config, "this is not toml").expect("write");
    served.signal("HUP");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
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
