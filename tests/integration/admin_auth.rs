//! The admin listener's access rules: a bearer token for `/usage`,
//! `/report` and `POST /reload`; 403 for them on a non-loopback listener
//! without one; `/metrics`, `/healthz` and `/readyz` always open; and the
//! connection cap. Every listener here is bound on 127.0.0.1; a configured
//! `0.0.0.0` only decides the rule.

use std::time::Duration;

use hyper::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{self, TestProxy};

const TOKEN: &str = "admin-token-0123456789";

/// The fixture config with `[admin]` lines replacing the default ones.
fn config(upstream_url: &str, admin: &str) -> String {
    support::config_toml(upstream_url, "", "").replace(
        "[admin]\nlisten = \"127.0.0.1:0\"\n",
        &format!("[admin]\n{admin}\n"),
    )
}

async fn admin(
    proxy: &TestProxy,
    method: Method,
    path: &str,
    auth: Option<&str>,
) -> support::Answer {
    let header;
    let headers: &[(&str, &str)] = match auth {
        Some(value) => {
            header = [("authorization", value)];
            &header
        }
        None => &[],
    };
    support::send(method, &format!("{}{path}", proxy.admin_url()), headers, "").await
}

/// `admin_refused_total` for `token` and for `no_token`.
async fn refused(proxy: &TestProxy) -> (Option<f64>, Option<f64>) {
    let text = proxy.metrics().await;
    let reason = |r: &str| {
        support::metric(
            &text,
            &format!("pusher_cutover_admin_refused_total{{reason=\"{r}\"}}"),
        )
    };
    (reason("token"), reason("no_token"))
}

const GUARDED: [(&str, &str); 3] = [("GET", "/usage"), ("GET", "/report"), ("POST", "/reload")];

fn method(name: &str) -> Method {
    name.parse().expect("method")
}

#[tokio::test]
async fn with_a_token_the_guarded_endpoints_need_the_bearer() {
    let fake = support::fake().await;
    let file = support::ConfigFile::new(&config(
        &fake.url(),
        &format!("listen = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\""),
    ));
    let proxy = TestProxy::start_file(file.path()).await;

    let right = format!("Bearer {TOKEN}");
    let wrong = format!("Bearer {TOKEN}x");
    for (m, p) in GUARDED {
        for auth in [None, Some(wrong.as_str()), Some("Basic abc"), Some(TOKEN)] {
            let a = admin(&proxy, method(m), p, auth).await;
            assert_eq!(a.status.as_u16(), 401, "{m} {p} {auth:?}: {}", a.text());
            assert!(
                a.text().contains("bearer token is required"),
                "{}",
                a.text()
            );
            let challenge = a.headers.get("www-authenticate").expect("WWW-Authenticate");
            assert!(
                challenge.to_str().is_ok_and(|v| v.starts_with("Bearer")),
                "{challenge:?}"
            );
            assert!(!a.text().contains(TOKEN), "the token is never echoed");
        }
        let a = admin(&proxy, method(m), p, Some(&right)).await;
        assert_eq!(a.status.as_u16(), 200, "{m} {p}: {}", a.text());
    }
    for p in ["/metrics", "/healthz", "/readyz"] {
        let a = admin(&proxy, Method::GET, p, None).await;
        assert_eq!(a.status.as_u16(), 200, "{p}: {}", a.text());
    }
    // Every refusal counted, so that guessing shows.
    assert_eq!(refused(&proxy).await, (Some(12.0), Some(0.0)));
    proxy.stop().await;
}

#[tokio::test]
async fn without_a_token_a_non_loopback_listener_refuses_the_guarded_endpoints() {
    let fake = support::fake().await;
    // Configured on all interfaces; the test harness binds 127.0.0.1 only.
    let exposed = TestProxy::start(
        &config(&fake.url(), "listen = \"0.0.0.0:0\""),
        std::sync::Arc::new(pusher_cutover::SystemClock),
    )
    .await;
    for (m, p) in GUARDED {
        let a = admin(&exposed, method(m), p, None).await;
        assert_eq!(a.status.as_u16(), 403, "{m} {p}: {}", a.text());
        let text = a.text();
        assert!(
            text.contains("admin.token") && text.contains(p) && text.contains("non-loopback"),
            "{text}"
        );
    }
    for p in ["/metrics", "/healthz", "/readyz"] {
        let a = admin(&exposed, Method::GET, p, None).await;
        assert_eq!(a.status.as_u16(), 200, "{p}: {}", a.text());
    }
    assert_eq!(refused(&exposed).await, (Some(0.0), Some(3.0)));
    exposed.stop().await;

    // On loopback without a token, as before.
    let local = TestProxy::for_upstream(&fake.url(), "", "").await;
    for p in ["/usage", "/report"] {
        assert_eq!(
            admin(&local, Method::GET, p, None).await.status.as_u16(),
            200,
            "{p}"
        );
    }
    local.stop().await;
}

/// Sends a bare `GET /healthz` on a new connection and reads the status
/// line, or `None` when nothing is answered within `wait`.
async fn healthz_raw(stream: &mut TcpStream, wait: Duration) -> Option<String> {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut buf = vec![0; 256];
    match tokio::time::timeout(wait, stream.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        _ => None,
    }
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_free_place() {
    let fake = support::fake().await;
    let proxy = TestProxy::for_upstream(&fake.url(), "", "").await;
    let cap = pusher_cutover::http::admin::MAX_CONNECTIONS;
    let mut held = Vec::with_capacity(cap);
    for _ in 0..cap {
        held.push(TcpStream::connect(proxy.admin).await.expect("connect"));
    }
    // Let the listener accept all of them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut extra = TcpStream::connect(proxy.admin).await.expect("connect");
    assert_eq!(
        healthz_raw(&mut extra, Duration::from_millis(700)).await,
        None,
        "a connection beyond {cap} is served"
    );
    drop(held.pop());
    let mut buf = vec![0; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut buf))
        .await
        .expect("answered once a place is free")
        .expect("read");
    let status = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    drop(held);
    proxy.stop().await;
}

/// An admin connection whose client pipelines scrapes and stops reading
/// is closed once its time is up, freeing its place: the probes cannot be
/// shut out by such clients for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_connection_that_stops_reading_is_closed_in_time() {
    let fake = support::fake().await;
    let proxy = TestProxy::for_upstream(&fake.url(), "", "").await;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(2048).expect("buffer size");
    let mut stalled = socket.connect(proxy.admin).await.expect("connect");
    // Far more answers than the sockets between the two hold.
    let scrapes = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(2000);
    let (mut read, mut write) = stalled.split();
    // The requests fit the sockets' buffers; their answers back up, as
    // nothing is read (bounded, should the requests back up too).
    let _ = tokio::time::timeout(Duration::from_secs(3), write.write_all(&scrapes)).await;
    tokio::time::sleep(
        pusher_cutover::http::admin::CONNECTION_LIFETIME + Duration::from_millis(500),
    )
    .await;
    // Closed: what it had written before is read, then its end, at once.
    // Open, it would go on answering the rest, then wait for more.
    let mut buf = vec![0; 1 << 16];
    let closed = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the stalled admin connection is still open");
    proxy.stop().await;
}

/// `report --url` against a sidecar with a token: refused without it (exit
/// 2, the 401 named), read with `--token-env`; an unset variable is a
/// usage error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_sends_the_token_from_token_env() {
    let fake = support::fake().await;
    let toml = config(
        &fake.url(),
        &format!("listen = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\""),
    );
    let proxy = TestProxy::start(&toml, std::sync::Arc::new(pusher_cutover::SystemClock)).await;
    let url = format!("{}/usage", proxy.admin_url());
    let run = |envs: &[(&str, &str)], token_env: Option<&str>| {
        let mut cmd = std::process::Command::new(support::binary::BIN);
        cmd.args(["report", "--url", &url]);
        if let Some(name) = token_env {
            cmd.args(["--token-env", name]);
        }
        cmd.env_remove("ADMIN_TOKEN_FOR_TEST");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd.output().expect("runs")
    };
    let out = tokio::task::block_in_place(|| run(&[], None));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{out:?}"
    );
    let out = tokio::task::block_in_place(|| {
        run(
            &[("ADMIN_TOKEN_FOR_TEST", TOKEN)],
            Some("ADMIN_TOKEN_FOR_TEST"),
        )
    });
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("pusher-cutover report"));
    let out = tokio::task::block_in_place(|| run(&[], Some("ADMIN_TOKEN_FOR_TEST")));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not set"),
        "{out:?}"
    );
    proxy.stop().await;
}
