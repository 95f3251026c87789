//! Production hardening: timeouts, limits, the upstream fault matrix with
//! file descriptors and memory sampled, retries, draining, and TLS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hyper::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{self, TestProxy};

fn with_top_level(extra: &str, upstream: &str) -> String {
    support::config_toml(upstream, "", "").replace("[admin]", &format!("{extra}\n[admin]"))
}

/// Reads until the peer closes or `limit` passes; returns what was read
/// and whether the connection was closed.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let mut buf = [0u8; 4096];
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (out, false),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_header_client_is_cut_while_others_are_served() {
    let fake = support::fake().await;
    let proxy = Arc::new(
        TestProxy::start(
            &with_top_level("header_timeout_ms = 500", &fake.url()),
            Arc::new(pusher_cutover::SystemClock),
        )
        .await,
    );
    let dripper = {
        let addr = proxy.addr;
        tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            let started = Instant::now();
            for b in b"GET /apps/4242/channels HTTP/1.1\r\nHost: x\r\nX-Slow: ".iter() {
                if stream.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                if started.elapsed() > Duration::from_secs(5) {
                    break;
                }
            }
            let (answer, closed) = read_until_closed(&mut stream, Duration::from_secs(3)).await;
            (started.elapsed(), answer, closed)
        })
    };
    let mut others = Vec::new();
    for i in 0..100 {
        let proxy = proxy.clone();
        others.push(tokio::spawn(async move {
            let uri = support::legacy_trigger_uri("room", &[("name", "ev")], b"x", support::now());
            let a = support::send(Method::POST, &format!("{}{uri}", proxy.url()), &[], "x").await;
            (i, a.status.as_u16())
        }));
    }
    for o in others {
        let (i, status) = o.await.expect("request task");
        assert_eq!(status, 202, "request {i}");
    }
    let (elapsed, answer, closed) = dripper.await.expect("dripper");
    assert!(closed, "the slow client was not cut");
    assert!(
        elapsed < Duration::from_secs(4),
        "cut after {elapsed:?}, limit 500 ms"
    );
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    support::stop_shared(proxy).await;
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let fake = support::fake().await;
    let proxy = TestProxy::start(
        &with_top_level("keepalive_timeout_ms = 300", &fake.url()),
        Arc::new(pusher_cutover::SystemClock),
    )
    .await;
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let a = support::read_response(&mut stream).await;
    assert_eq!(a.status.as_u16(), 401, "the fake's verdict");
    let (_, closed) = read_until_closed(&mut stream, Duration::from_secs(3)).await;
    assert!(closed, "an idle keep-alive connection outlived the timeout");
    proxy.stop().await;
}

#[tokio::test]
async fn hostile_requests_get_4xx_and_reach_nothing() {
    let fake = support::fake().await;
    let proxy = TestProxy::start(
        &with_top_level("max_header_bytes = 8192", &fake.url()),
        Arc::new(pusher_cutover::SystemClock),
    )
    .await;
    let now = support::now();
    let long_channel = "a".repeat(300);
    let raw_cases: Vec<(String, u16)> = vec![
        (
            format!(
                "GET /apps/4242/channels/room/stats HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
                "b".repeat(10_000)
            ),
            431,
        ),
        (
            "GET /apps/4242/channels/a b/stats HTTP/1.1\r\nHost: x\r\n\r\n".into(),
            400,
        ),
        (
            format!(
                "GET {} HTTP/1.1\r\nHost: x\r\n\r\n",
                support::legacy_stats_uri("%ZZ", now)
            ),
            400,
        ),
        (
            format!(
                "GET {} HTTP/1.1\r\nHost: x\r\n\r\n",
                support::legacy_stats_uri(&long_channel, now)
            ),
            400,
        ),
        (
            format!(
                "GET {} HTTP/1.1\r\nHost: x\r\n\r\n",
                support::legacy_stats_uri("caf%C3%A9", now)
            ),
            400,
        ),
        (
            "GET /apps/4242/channels/room/stats HTTP/1.1\r\nHost: x\r\n\r\n".into(),
            401,
        ),
    ];
    for (raw, status) in raw_cases {
        let a = support::raw_exchange(proxy.addr, raw.as_bytes()).await;
        assert_eq!(a.status.as_u16(), status, "{}", &raw[..raw.len().min(80)]);
    }
    assert!(fake.recorded().is_empty(), "nothing reaches the upstream");
    // Still alive.
    let ok = support::send(
        Method::GET,
        &format!("{}{}", proxy.url(), support::legacy_stats_uri("room", now)),
        &[],
        "",
    )
    .await;
    assert_eq!(ok.status.as_u16(), 200);
    proxy.stop().await;
}

#[tokio::test]
async fn past_max_connections_new_connections_wait_while_all_are_busy() {
    let fake = support::fake().await;
    let proxy = TestProxy::start(
        &with_top_level("max_connections = 2", &fake.url()),
        Arc::new(pusher_cutover::SystemClock),
    )
    .await;
    let request = b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n";
    // Each held connection has a request in flight (its body not sent
    // yet), so none is idle to be closed for the newcomer.
    let busy = b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
        s.write_all(busy).await.expect("write");
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = TcpStream::connect(proxy.addr)
        .await
        .expect("connect (queued)");
    third.write_all(request).await.expect("write");
    let waited = tokio::time::timeout(
        Duration::from_millis(500),
        support::read_response(&mut third),
    )
    .await;
    assert!(
        waited.is_err(),
        "the third connection was served past the cap"
    );
    // The held connections are still served.
    held[0].write_all(b"x").await.expect("write");
    assert_eq!(
        support::read_response(&mut held[0]).await.status.as_u16(),
        401
    );
    drop(held);
    let a = tokio::time::timeout(Duration::from_secs(5), support::read_response(&mut third))
        .await
        .expect("served once a slot is free");
    assert_eq!(a.status.as_u16(), 401);
    proxy.stop().await;
}

/// How a fault upstream misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Reads the request, then resets the connection.
    Reset,
    /// Answers bytes that are not HTTP.
    Malformed,
    /// Announces 100 bytes of body, sends 10, closes.
    Truncated,
    /// Answers after 5 s.
    Slow,
    /// Answers correctly with `Connection: close`.
    Close,
    /// Answers the first request of each connection (keep-alive), then
    /// closes the connection on the second without answering.
    FirstThenDrop,
}

/// A raw TCP upstream that misbehaves as told; counts requests read.
async fn fault_upstream(fault: Fault) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut served = 0;
                loop {
                    if read_request(&mut s).await.is_none() {
                        return;
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    served += 1;
                    let body = r#"{"occupied":true,"user_count":2}"#;
                    let ok = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let ok = ok.as_bytes();
                    match fault {
                        Fault::Reset => {
                            let _ = s.set_zero_linger();
                            return;
                        }
                        Fault::Malformed => {
                            let _ = s.write_all(b"this is not http\r\n\r\n").await;
                            return;
                        }
                        Fault::Truncated => {
                            let _ = s
                                .write_all(
                                    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
                                )
                                .await;
                            return;
                        }
                        Fault::Slow => {
                            tokio::time::sleep(Duration::from_secs(5)).await;
                            let _ = s.write_all(ok).await;
                        }
                        Fault::Close => {
                            let _ = s
                                .write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}")
                                .await;
                            return;
                        }
                        Fault::FirstThenDrop if served == 1 => {
                            let _ = s.write_all(ok).await;
                        }
                        Fault::FirstThenDrop => return,
                    }
                }
            });
        }
    });
    (addr, requests)
}

/// Reads one request head and its `Content-Length` body.
async fn read_request(s: &mut TcpStream) -> Option<()> {
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = req.parse(&buf) {
            let len: usize = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                .unwrap_or(0);
            while buf.len() < head + len {
                let n = s.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Some(());
        }
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .expect("the proxy's fds")
}

fn rss_kib(pid: u32) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the proxy's status");
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .expect("VmRSS")
}

async fn legacy_trigger(proxy: &TestProxy) -> support::Answer {
    let uri = support::legacy_trigger_uri("room", &[("name", "ev")], b"x", support::now());
    support::send(Method::POST, &format!("{}{uri}", proxy.url()), &[], "x").await
}

async fn legacy_stats(proxy: &TestProxy) -> support::Answer {
    let uri = support::legacy_stats_uri("presence-room", support::now());
    support::send(Method::GET, &format!("{}{uri}", proxy.url()), &[], "").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_fault_matrix_with_fds_and_memory_flat() {
    let refused = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr");
    let mut targets = vec![("refused", refused, 502u16)];
    for (name, fault, status) in [
        ("reset", Fault::Reset, 502),
        ("malformed", Fault::Malformed, 502),
        ("truncated", Fault::Truncated, 502),
        ("slow", Fault::Slow, 504),
        ("connection: close", Fault::Close, 202),
    ] {
        targets.push((name, fault_upstream(fault).await.0, status));
    }
    for (name, addr, status) in &targets {
        let proxy =
            TestProxy::for_upstream(&format!("http://{addr}"), "timeout_ms = 500", "").await;
        for _ in 0..3 {
            let a = legacy_trigger(&proxy).await;
            assert_eq!(a.status.as_u16(), *status, "{name}: {}", a.text());
            if *status != 202 {
                let text = a.text();
                assert!(
                    text.ends_with('\n') && text.len() > 5,
                    "{name}: body {text:?}"
                );
            }
        }
        proxy.stop().await;
    }

    // 10,000 failures: the proxy's file descriptors and memory stay flat.
    // It runs as its own process, so the figures are its own and not those
    // of the tests running beside this one.
    for (name, addr) in [
        ("reset", targets[1].1),
        ("malformed", targets[2].1),
        ("refused", refused),
    ] {
        fault_run_stays_flat(name, addr).await;
    }
}

/// Drives 1,000 then 10,000 failing legacy calls through a `serve` process
/// in front of `upstream` and checks its fds and RSS.
async fn fault_run_stays_flat(name: &str, upstream: SocketAddr) {
    // A generous timeout: these faults are immediate, and a busy machine
    // must not turn them into 504s.
    let file = support::ConfigFile::new(&support::config_toml(
        &format!("http://{upstream}"),
        "timeout_ms = 10000",
        "",
    ));
    let served = crate::support::binary::Served::start(file.path()).await;
    let pid = served.pid();
    let round = |n: usize| {
        let url = format!("http://{}", served.addr);
        async move {
            let mut tasks = Vec::new();
            for t in 0..16 {
                let url = url.clone();
                tasks.push(tokio::spawn(async move {
                    for _ in (t..n).step_by(16) {
                        let uri = support::legacy_stats_uri("presence-room", support::now());
                        let a = support::send(Method::GET, &format!("{url}{uri}"), &[], "").await;
                        assert_eq!(a.status.as_u16(), 502);
                    }
                }));
            }
            for t in tasks {
                t.await.expect("fault task");
            }
        }
    };
    round(1_000).await; // warm-up: pools, buffers, allocator arenas
    let (fds_before, rss_before) = (open_fds(pid), rss_kib(pid));
    round(10_000).await;
    let (fds_after, rss_after) = (open_fds(pid), rss_kib(pid));
    eprintln!(
        "fault matrix, {name}: proxy fds {fds_before} -> {fds_after}, rss {rss_before} KiB -> {rss_after} KiB over 10,000 failures"
    );
    // Up to 16 client connections come and go; a leak per failure would
    // show thousands.
    assert!(
        fds_after <= fds_before + 20,
        "{name}: fds grew {fds_before} -> {fds_after}"
    );
    assert!(
        rss_after < rss_before + 16 * 1024,
        "{name}: rss grew {rss_before} -> {rss_after} KiB"
    );
    let (code, _) = served.sigterm().await;
    assert_eq!(code, Some(0));
}

/// A GET on a pooled connection the upstream has dropped is sent again on
/// a fresh one; a POST never is (it could deliver an event twice).
#[tokio::test]
async fn stale_pooled_connection_retries_get_never_post() {
    let (addr, requests) = fault_upstream(Fault::FirstThenDrop).await;
    let proxy = TestProxy::for_upstream(&format!("http://{addr}"), "", "").await;
    assert_eq!(legacy_stats(&proxy).await.status.as_u16(), 200);
    let second = legacy_stats(&proxy).await;
    assert_eq!(second.status.as_u16(), 200, "retried: {}", second.text());
    assert_eq!(
        requests.load(Ordering::SeqCst),
        3,
        "first, dropped, retried"
    );
    let stale = r#"pusher_cutover_upstream_resent_total{reason="stale_connection"}"#;
    assert_eq!(support::metric(&proxy.metrics().await, stale), Some(1.0));
    proxy.stop().await;

    let (addr, requests) = fault_upstream(Fault::FirstThenDrop).await;
    let proxy = TestProxy::for_upstream(&format!("http://{addr}"), "", "").await;
    let first = legacy_trigger(&proxy).await;
    assert_eq!(first.status.as_u16(), 202, "{}", first.text());
    let second = legacy_trigger(&proxy).await;
    assert_eq!(second.status.as_u16(), 502, "{}", second.text());
    assert_eq!(
        requests.load(Ordering::SeqCst),
        2,
        "the dropped POST is not sent again"
    );
    let text = proxy.metrics().await;
    assert_eq!(support::metric(&text, stale), Some(0.0));
    let unprocessed = r#"pusher_cutover_upstream_resent_total{reason="not_processed"}"#;
    assert_eq!(support::metric(&text, unprocessed), Some(0.0));
    proxy.stop().await;
}

/// Writes a fresh self-signed certificate for `localhost` and its key to
/// `dir`'s `cert.pem` and `key.pem`; returns the certificate.
fn issue_certificate(dir: &std::path::Path) -> pki_types::CertificateDer<'static> {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("certificate");
    std::fs::write(dir.join("cert.pem"), made.cert.pem()).expect("write cert");
    std::fs::write(dir.join("key.pem"), made.signing_key.serialize_pem()).expect("write key");
    made.cert.der().clone()
}

/// A TLS client that trusts `roots`.
fn trusting(roots: &[pki_types::CertificateDer<'static>]) -> tokio_rustls::TlsConnector {
    use tokio_rustls::rustls;
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(store)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A TLS connection to `proxy` through `connector`, and the certificate
/// the proxy presented.
async fn handshake(
    proxy: &TestProxy,
    connector: &tokio_rustls::TlsConnector,
) -> (
    tokio_rustls::client::TlsStream<TcpStream>,
    pki_types::CertificateDer<'static>,
) {
    let tcp = TcpStream::connect(proxy.addr).await.expect("connect");
    let name = pki_types::ServerName::try_from("localhost").expect("name");
    let tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("a certificate")
        .clone();
    (tls, leaf)
}

/// A proxy serving TLS (a fresh self-signed certificate for `localhost`,
/// `top` as top-level keys) from a config file it reloads on `POST
/// /reload`, and a connector that trusts it; the file's directory also
/// holds the certificate's files.
async fn tls_proxy(
    fake: &support::fake::FakeUpstream,
    top: &str,
) -> (TestProxy, tokio_rustls::TlsConnector, support::ConfigFile) {
    let file = support::ConfigFile::new("");
    let cert = issue_certificate(file.dir());
    let toml = support::config_toml(&fake.url(), "", "").replace(
        "[admin]",
        &format!(
            "[tls]\ncert = {:?}\nkey = {:?}\n[admin]",
            file.dir().join("cert.pem").display().to_string(),
            file.dir().join("key.pem").display().to_string()
        ),
    );
    file.write(&format!("{top}\n{toml}"));
    let proxy = TestProxy::start_file(file.path()).await;
    (proxy, trusting(&[cert]), file)
}

/// Sends an unsigned `GET /x` over `tls` and reads the answer to its end.
async fn get_over(mut tls: tokio_rustls::client::TlsStream<TcpStream>) -> String {
    tls.write_all(b"GET /x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// A renewed certificate is served to new handshakes after a reload,
/// without a restart, while a connection made before it keeps being
/// served; a key that does not match its certificate is refused with the
/// running certificate kept; turning TLS off waits for a restart.
#[tokio::test]
async fn a_reload_serves_a_renewed_certificate() {
    let fake = support::fake().await;
    let (proxy, first_client, file) = tls_proxy(&fake, "").await;
    let (before, first) = handshake(&proxy, &first_client).await;
    // The served certificate's end, by its SHA-256, replaced with it.
    let expiry = |der: &pki_types::CertificateDer<'_>| {
        use sha2::Digest;
        let sha256 = base16ct::lower::encode_string(&sha2::Sha256::digest(der.as_ref()));
        let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref()).expect("X.509");
        (
            format!(
                "pusher_cutover_tls_certificate_expiry_timestamp_seconds{{sha256=\"{sha256}\"}}"
            ),
            parsed.validity().not_after.timestamp() as f64,
        )
    };
    let (first_series, first_end) = expiry(&first);
    let metrics = proxy.metrics().await;
    assert_eq!(
        support::metric(&metrics, &first_series),
        Some(first_end),
        "{metrics}"
    );

    let renewed = issue_certificate(file.dir());
    let client = trusting(&[first.clone(), renewed.clone()]);
    let reload = proxy.reload().await;
    assert_eq!(reload.status.as_u16(), 200, "{}", reload.text());
    assert!(!reload.text().contains("restart"), "{}", reload.text());
    let (renewed_series, renewed_end) = expiry(&renewed);
    let metrics = proxy.metrics().await;
    assert_eq!(
        support::metric(&metrics, &renewed_series),
        Some(renewed_end),
        "{metrics}"
    );
    assert_eq!(support::metric(&metrics, &first_series), None, "{metrics}");
    let (after, leaf) = handshake(&proxy, &client).await;
    assert_eq!(
        leaf, renewed,
        "a new handshake gets the renewed certificate"
    );
    assert!(get_over(after).await.starts_with("HTTP/1.1 401"));
    let old = get_over(before).await;
    assert!(
        old.starts_with("HTTP/1.1 401"),
        "the earlier connection: {old}"
    );

    let stranger = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    std::fs::write(
        file.dir().join("key.pem"),
        stranger.signing_key.serialize_pem(),
    )
    .expect("write key");
    let refused = proxy.reload().await;
    assert_eq!(refused.status.as_u16(), 400, "{}", refused.text());
    assert!(
        refused
            .text()
            .contains("tls: invalid TLS certificate or key"),
        "{}",
        refused.text()
    );
    assert!(
        !refused.text().contains("PRIVATE KEY"),
        "{}",
        refused.text()
    );
    let (_, leaf) = handshake(&proxy, &client).await;
    assert_eq!(leaf, renewed, "the running certificate is kept");

    let text = std::fs::read_to_string(file.path()).expect("read");
    let tls = format!(
        "[tls]\ncert = {:?}\nkey = {:?}\n",
        file.dir().join("cert.pem").display().to_string(),
        file.dir().join("key.pem").display().to_string()
    );
    assert!(text.contains(&tls), "{text}");
    file.write(&text.replace(&tls, ""));
    let off = proxy.reload().await;
    assert_eq!(off.status.as_u16(), 200, "{}", off.text());
    assert!(
        off.text().contains("restart needed for: tls"),
        "{}",
        off.text()
    );
    let (_, leaf) = handshake(&proxy, &client).await;
    assert_eq!(leaf, renewed, "TLS is still served until a restart");
    proxy.stop().await;
}

#[tokio::test]
async fn inbound_tls() {
    let fake = support::fake().await;
    let (proxy, connector, _dir) = tls_proxy(&fake, "").await;
    let (mut tls, _) = handshake(&proxy, &connector).await;
    let uri = support::legacy_trigger_uri("room", &[("name", "ev")], b"x", support::now());
    tls.write_all(format!("POST {uri} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx").as_bytes())
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 202"), "{text}");
    assert!(text.ends_with("202 ACCEPTED\n"), "{text}");
    assert_eq!(fake.recorded().len(), 1);

    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut plain = TcpStream::connect(proxy.addr).await.expect("connect");
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let (bytes, _) = read_until_closed(&mut plain, Duration::from_secs(3)).await;
    assert!(
        !String::from_utf8_lossy(&bytes).starts_with("HTTP/1.1 "),
        "plain HTTP was served"
    );
    // A client that does not trust the certificate ends its handshake.
    let stranger = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let tcp = TcpStream::connect(proxy.addr).await.expect("connect");
    let name = pki_types::ServerName::try_from("localhost").expect("name");
    let distrust = trusting(&[stranger.cert.der().clone()])
        .connect(name, tcp)
        .await;
    assert!(distrust.is_err(), "a certificate the client does not trust");
    // Both counted, once the server side has seen the alert.
    let handshakes = r#"pusher_cutover_connection_errors_total{kind="tls_handshake"}"#;
    assert_eq!(
        proxy.metric_reaching(handshakes, 2.0).await,
        Some(2.0),
        "failed handshakes are counted"
    );
    proxy.stop().await;
}

/// On the TLS port too, connections that have sent nothing make room at
/// the connection cap: a client is not kept waiting for a handshake
/// behind silent sockets until their head time runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_on_the_tls_port_make_room_at_the_cap() {
    let fake = support::fake().await;
    let (proxy, connector, _dir) =
        tls_proxy(&fake, "max_connections = 2\nheader_timeout_ms = 60000").await;
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(TcpStream::connect(proxy.addr).await.expect("connect"));
    }
    // Let the proxy take both up before the client comes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let text = tokio::time::timeout(Duration::from_secs(5), async {
        get_over(handshake(&proxy, &connector).await.0).await
    })
    .await
    .expect("served while the silent connections wait");
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    let [mut a, mut b] = <[TcpStream; 2]>::try_from(silent).expect("two");
    let (a, b) = tokio::join!(
        read_until_closed(&mut a, Duration::from_secs(3)),
        read_until_closed(&mut b, Duration::from_secs(3))
    );
    assert!(
        [a, b]
            .iter()
            .any(|(bytes, closed)| *closed && bytes.is_empty()),
        "a silent connection was closed, unanswered, to make room"
    );
    proxy.stop().await;
}

/// The upstream URL's scheme picks the transport: `http://` is spoken to
/// in plain HTTP, `https://` over TLS. Pointed with `https://` at a
/// plain-HTTP server, the proxy's TLS handshake fails: 502, and the server
/// never sees an HTTP request.
#[tokio::test]
async fn upstream_scheme_picks_plain_or_tls() {
    let fake = support::fake().await;
    let plain = TestProxy::for_upstream(&fake.url(), "", "").await;
    let a = legacy_trigger(&plain).await;
    assert_eq!(a.status.as_u16(), 202, "{}", a.text());
    assert_eq!(fake.recorded().len(), 1);
    plain.stop().await;

    let tls_url = fake.url().replacen("http://", "https://", 1);
    let tls = TestProxy::for_upstream(&tls_url, "", "").await;
    let b = legacy_trigger(&tls).await;
    assert_eq!(b.status.as_u16(), 502, "{}", b.text());
    assert_eq!(fake.recorded().len(), 1, "no request reached the server");
    tls.stop().await;
}

/// Every worker drains at once on shutdown: with requests stuck upstream on
/// each of three workers, stopping takes one grace period, not three.
/// The requests outlast the test, so a drain one worker after another
/// would take three grace periods (6 s): anything under two is together.
#[tokio::test]
async fn workers_drain_together_within_one_grace_period() {
    let fake = support::fake().await;
    const GRACE: Duration = Duration::from_secs(2);
    fake.set(|b| b.delay = Duration::from_secs(60));
    let proxy = TestProxy::start(
        &with_top_level("workers = 3\nshutdown_grace_ms = 2000", &fake.url()),
        Arc::new(pusher_cutover::SystemClock),
    )
    .await;
    // Connections go to the workers in turn: one stuck request on each.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
        s.write_all(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        held.push(s);
    }
    // Bounded: 5 s.
    for _ in 0..250 {
        if fake.recorded().len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        fake.recorded().len(),
        3,
        "three requests in flight upstream"
    );
    let started = Instant::now();
    proxy.stop().await;
    let took = started.elapsed();
    assert!(
        took >= GRACE && took < 2 * GRACE,
        "shutdown took {took:?} with a grace period of {GRACE:?} ({:?} if drained one by one)",
        3 * GRACE
    );
    drop(held);
}

/// Requests hyper refuses for their framing never reach the pipeline; they
/// are still counted by kind (and logged).
#[tokio::test]
async fn framing_errors_are_counted() {
    let fake = support::fake().await;
    let proxy = TestProxy::for_upstream(&fake.url(), "", "").await;
    let metric = |text: &str, kind: &str| {
        support::metric(
            text,
            &format!("pusher_cutover_connection_errors_total{{kind=\"{kind}\"}}"),
        )
    };
    let metrics = || async {
        support::send(
            hyper::Method::GET,
            &format!("{}/metrics", proxy.admin_url()),
            &[],
            "",
        )
        .await
        .text()
    };
    let before = metrics().await;
    assert_eq!(metric(&before, "parse"), Some(0.0), "present from startup");
    let a = support::raw_exchange(proxy.addr, b"GARBAGE \x01\r\n\r\n").await;
    assert_eq!(a.status.as_u16(), 400);
    let mut after = String::new();
    for _ in 0..50 {
        after = metrics().await;
        if metric(&after, "parse") == Some(1.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(metric(&after, "parse"), Some(1.0), "{after}");
    assert!(fake.recorded().is_empty());
    proxy.stop().await;
}

/// `upstream.connect_timeout_ms` bounds the TLS handshake too: an upstream
/// that accepts TCP and never answers the handshake is a connection
/// failure (502) within the connect timeout, not a call held until
/// `upstream.timeout_ms` and answered 504; over hyper-util's client
/// (`auto`) and the HTTP/1.1 pool (`http1`) alike.
#[tokio::test]
async fn a_stalled_tls_handshake_is_a_connect_failure() {
    let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = silent.local_addr().expect("addr");
    // Accepts, and holds every connection open without a byte.
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            open.push(stream);
        }
    });
    for protocol in ["auto", "http1"] {
        let proxy = TestProxy::for_upstream(
            &format!("https://{addr}"),
            &format!("protocol = \"{protocol}\"\nconnect_timeout_ms = 300\ntimeout_ms = 20000"),
            "",
        )
        .await;
        let started = Instant::now();
        let answer = legacy_trigger(&proxy).await;
        let took = started.elapsed();
        assert_eq!(answer.status.as_u16(), 502, "{protocol}: {}", answer.text());
        assert!(
            took < Duration::from_secs(10),
            "{protocol}: answered after {took:?}, not bounded by the connect timeout"
        );
        proxy.stop().await;
    }
    held.abort();
}
