//! Checks that `deploy/` matches the code it deploys: every metric the
//! Grafana dashboard and the Prometheus alerts query is one the proxy
//! exposes on `/metrics`, with the right type; the container/Kubernetes
//! config parses; the kustomization lists every manifest. The proxy runs
//! in-process on loopback, in front of the shared fake upstream
//! (`tests/support`).
//!
//! `.ci/deploy-checks` checks the rest (promtool, Kubernetes schemas,
//! systemd-analyze).

// Shared with the integration and e2e tests; this file uses part of it.
#[path = "support/mod.rs"]
#[allow(dead_code)]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper::{Method, StatusCode};
use pusher_cutover::pusher::signature::{Signer, SigningKey, Unsigned};
use pusher_cutover::{Config, SystemClock};
use secrecy::SecretString;

use crate::support::TestProxy;

/// Bound on waiting for the shadow comparison (each request is bounded by
/// [`support::REQUEST_TIMEOUT`]).
const TIMEOUT: Duration = Duration::from_secs(10);

/// `up` is written by Prometheus itself, not by the proxy.
const SYNTHETIC: &[&str] = &["up"];

/// Metrics with a series only when `[tls]` is configured: checked against
/// a second proxy that serves TLS.
const TLS_ONLY: &[&str] = &["pusher_cutover_tls_certificate_expiry_timestamp_seconds"];

fn deploy_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(rel)
}

fn read_deploy(rel: &str) -> String {
    let path = deploy_path(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------
// Metric names in PromQL

/// PromQL words that are not metric names even when not followed by `(`.
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// Words followed by a parenthesised list of label names.
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Index just past the closing `close` that matches the `open` at `start`,
/// skipping quoted strings.
fn skip_balanced(s: &[char], start: usize, open: char, close: char) -> usize {
    let mut depth = 0usize;
    let mut i = start;
    while i < s.len() {
        let c = s[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(s, i);
            continue;
        }
        if c == open {
            depth += 1;
        } else if c == close {
            depth -= 1;
            if depth == 0 {
                return i + 1;
            }
        }
        i += 1;
    }
    panic!(
        "unbalanced {open}{close} in {:?}",
        s.iter().collect::<String>()
    );
}

/// Index just past the string literal starting at `start`.
fn skip_string(s: &[char], start: usize) -> usize {
    let quote = s[start];
    let mut i = start + 1;
    while i < s.len() {
        if s[i] == '\\' && quote != '`' {
            i += 2;
            continue;
        }
        if s[i] == quote {
            return i + 1;
        }
        i += 1;
    }
    panic!("unterminated string in {:?}", s.iter().collect::<String>());
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The metric names a PromQL expression selects: every identifier that is
/// not a keyword, a function, or a label name (in `{…}`, `by (…)`, …).
/// Grafana's `$variables` are treated like the values they stand for.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let s: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&s, i);
        } else if c == '{' {
            i = skip_balanced(&s, i, '{', '}');
        } else if c == '[' {
            i = skip_balanced(&s, i, '[', ']');
        } else if c == '#' {
            while i < s.len() && s[i] != '\n' {
                i += 1;
            }
        } else if c.is_ascii_digit()
            || c == '$'
            || (c == '.' && s.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // A number, a duration, or a Grafana variable.
            i += 1;
            while i < s.len() && (is_ident(s[i]) || s[i] == '.' || s[i] == '$') {
                i += 1;
            }
        } else if is_ident_start(c) {
            let start = i;
            while i < s.len() && is_ident(s[i]) {
                i += 1;
            }
            let word: String = s[start..i].iter().collect();
            let mut next = i;
            while next < s.len() && s[next].is_whitespace() {
                next += 1;
            }
            let lower = word.to_ascii_lowercase();
            if GROUPING.contains(&lower.as_str()) {
                if s.get(next) == Some(&'(') {
                    i = skip_balanced(&s, next, '(', ')');
                }
            } else if KEYWORDS.contains(&lower.as_str()) || s.get(next) == Some(&'(') {
                // A keyword, an aggregation or a function.
            } else {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The metric a Grafana variable query reads, e.g.
/// `label_values(metric{…}, label)`; other queries are PromQL.
fn variable_query_names(query: &str) -> BTreeSet<String> {
    match query.trim().strip_prefix("label_values(") {
        Some(rest) => {
            let args = rest.trim_end().strip_suffix(')').unwrap_or(rest);
            match args.rfind(',') {
                Some(comma) => metric_names(&args[..comma]),
                // `label_values(label)`: no metric.
                None => BTreeSet::new(),
            }
        }
        None => metric_names(query),
    }
}

#[test]
fn promql_metric_names_are_extracted() {
    let cases: &[(&str, &[&str])] = &[
        (
            r#"sum by (app_id, route) (rate(a_total{app_id=~"$app_id", x="}"}[$__rate_interval]))"#,
            &["a_total"],
        ),
        (
            "histogram_quantile(0.99, sum by (le) (rate(b_bucket[5m] offset 1h)))",
            &["b_bucket"],
        ),
        (
            "x > 0 and on (app_id) (time() > y) or vector(0) unless ignoring(k) z",
            &["x", "y", "z"],
        ),
        (
            "sum without (instance) (c) / on (a) group_left (b) d * 1e3 + 0x1f",
            &["c", "d"],
        ),
        ("count(count by (h) (e))", &["e"]),
        (r#"up{job="pusher-cutover"} == 0"#, &["up"]),
        (r#"{__name__="hidden"}"#, &[]),
    ];
    for (expr, expected) in cases {
        let got = metric_names(expr);
        let expected: BTreeSet<String> = expected.iter().map(|s| (*s).to_owned()).collect();
        assert_eq!(got, expected, "in {expr}");
    }
    assert_eq!(
        variable_query_names("label_values(f_total{a=\"1\"}, app_id)"),
        BTreeSet::from(["f_total".to_owned()])
    );
    assert!(variable_query_names("label_values(app_id)").is_empty());
}

// ---------------------------------------------------------------------------
// The queries in deploy/

/// Every PromQL expression of the dashboard (panel targets and variable
/// queries), by where it was found.
fn dashboard_queries() -> Vec<(String, BTreeSet<String>)> {
    let text = read_deploy("grafana/dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&text).expect("deploy/grafana/dashboard.json is JSON");
    let mut out = Vec::new();
    let mut panels_with_queries = 0;
    let mut stack: Vec<&serde_json::Value> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .collect();
    while let Some(panel) = stack.pop() {
        if let Some(inner) = panel["panels"].as_array() {
            stack.extend(inner);
        }
        let kind = panel["type"].as_str().unwrap_or_default();
        if kind == "row" || kind == "text" {
            continue;
        }
        let title = panel["title"].as_str().unwrap_or("?");
        let targets = panel["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("panel {title:?} has no targets"));
        assert!(!targets.is_empty(), "panel {title:?} has no targets");
        for target in targets {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("a target of panel {title:?} has no expr"));
            out.push((format!("panel {title:?}"), metric_names(expr)));
        }
        panels_with_queries += 1;
    }
    assert!(
        panels_with_queries >= 8,
        "only {panels_with_queries} panels with queries"
    );
    for var in dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list")
    {
        if var["type"] != "query" {
            continue;
        }
        let query = var["query"]
            .as_str()
            .or_else(|| var["query"]["query"].as_str())
            .expect("a query variable has a query");
        out.push((
            format!("variable {}", var["name"]),
            variable_query_names(query),
        ));
    }
    out
}

/// The `expr` of every alert in alerts.yml (single-line or `|` block).
fn alert_queries() -> Vec<(String, BTreeSet<String>)> {
    let text = read_deploy("prometheus/alerts.yml");
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut alert = String::new();
    let mut alerts = 0;
    for (n, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        if let Some(name) = trimmed.strip_prefix("- alert:") {
            alert = name.trim().to_owned();
            alerts += 1;
        }
        let Some(value) = trimmed.strip_prefix("expr:") else {
            continue;
        };
        let value = value.trim();
        let expr = if value.starts_with('|') || value.starts_with('>') {
            let indent = line.len() - trimmed.len();
            lines[n + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
                .copied()
                .collect::<Vec<_>>()
                .join("\n")
        } else {
            value.trim_matches(|c| c == '\'' || c == '"').to_owned()
        };
        assert!(!expr.trim().is_empty(), "alert {alert} has an empty expr");
        out.push((format!("alert {alert}"), metric_names(&expr)));
    }
    assert!(alerts >= 5, "only {alerts} alerts found in alerts.yml");
    assert_eq!(out.len(), alerts, "one expr per alert");
    out
}

// ---------------------------------------------------------------------------
// The proxy and a fake upstream

/// The shared fake upstream, knowing both apps. Its legacy stats route
/// answers a `connection_count` the translated call does not, so that the
/// shadow app's comparison differs and every family has a series.
async fn fake_upstream() -> support::fake::FakeUpstream {
    let fake = support::fake::FakeUpstream::start(
        &[
            ("4242", "deploy-key", "deploy-secret"),
            ("4343", "shadow-key", "shadow-secret"),
        ],
        support::now,
    )
    .await;
    fake.set(|b| b.legacy_connection_count = Some(7));
    fake
}

async fn start_proxy(upstream_url: &str) -> TestProxy {
    let toml = format!(
        r#"
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[upstream]
url = "{upstream_url}"
timeout_ms = 5000
[[apps]]
id = "4242"
key = "deploy-key"
secret = "deploy-secret"
sunset = "2030-01-01T00:00:00Z"
[[apps]]
id = "4343"
key = "shadow-key"
secret = "shadow-secret"
mode = "shadow"
"#
    );
    TestProxy::start(&toml, Arc::new(SystemClock)).await
}

/// The status and body text of a request (bounded by the support's
/// request timeout).
async fn send(method: Method, url: &str, body: &'static str) -> (StatusCode, String) {
    let a = support::send(method, url, &[("user-agent", "deploy-test/1.0")], body).await;
    (a.status, a.text())
}

/// A metric family from the exposition: its type and the sample names seen.
#[derive(Debug, Default)]
struct Exposition {
    /// `# TYPE` of each family.
    types: BTreeMap<String, String>,
    /// Names of the samples present.
    samples: BTreeSet<String>,
}

fn parse_exposition(text: &str) -> Exposition {
    let mut out = Exposition::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                panic!("malformed TYPE line: {line}");
            };
            out.types.insert(name.to_owned(), kind.to_owned());
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            out.samples.insert(line[..end].to_owned());
        }
    }
    out
}

/// Why `name` is not a sample the exposition would give Prometheus, or
/// `None` when it is: `_total` of a counter, `_bucket`/`_sum`/`_count` of a
/// histogram, the bare name of a gauge.
fn problem_with(name: &str, exposition: &Exposition) -> Option<String> {
    let family_type = |base: &str| exposition.types.get(base).map(String::as_str);
    let expected = if let Some(base) = name.strip_suffix("_total") {
        (base, "counter")
    } else if let Some(base) = ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .filter(|base| family_type(base) == Some("histogram"))
    {
        (base, "histogram")
    } else {
        (name, "gauge")
    };
    match family_type(expected.0) {
        None => Some(format!("no metric family {} is exposed", expected.0)),
        Some(kind) if kind != expected.1 => Some(format!(
            "{} is a {kind}, queried as a {} ({name})",
            expected.0, expected.1
        )),
        Some(_) if !exposition.samples.contains(name) => {
            Some(format!("no {name} sample in /metrics"))
        }
        Some(_) => None,
    }
}

#[tokio::test]
async fn every_metric_queried_in_deploy_is_exposed() {
    let queries: Vec<(String, BTreeSet<String>)> = dashboard_queries()
        .into_iter()
        .chain(alert_queries())
        .collect();
    let queried: BTreeSet<&String> = queries.iter().flat_map(|(_, names)| names).collect();
    assert!(
        queried.len() >= 9,
        "too few metric names found in deploy/: {queried:?}"
    );

    let upstream = fake_upstream().await;
    let running = start_proxy(&upstream.url()).await;
    let base = running.url();
    let now = support::now();

    // A legacy trigger, translated: deprecated calls, requests, both
    // latency histograms.
    let path = "/apps/4242/channels/room/events";
    let secret = SigningKey::new(&SecretString::from("deploy-secret"));
    let q = Signer::new("deploy-key", &secret).query(&Unsigned {
        method: "POST",
        path,
        timestamp: now,
        body: Some(b"{}"),
        params: &[("name", "ev")],
    });
    let (status, body) = send(Method::POST, &format!("{base}{path}?{q}"), "{}").await;
    assert_eq!(status, StatusCode::ACCEPTED, "legacy trigger: {body}");

    // A forged one: signature failures.
    let forged = q.replace("auth_signature=", "auth_signature=0");
    let (status, _) = send(Method::POST, &format!("{base}{path}?{forged}"), "{}").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // A legacy stats call of the shadow app: the translated answer differs.
    let path = "/apps/4343/channels/room/stats";
    let secret = SigningKey::new(&SecretString::from("shadow-secret"));
    let q = Signer::new("shadow-key", &secret).query(&Unsigned {
        method: "GET",
        path,
        timestamp: now,
        body: None,
        params: &[],
    });
    let (status, body) = send(Method::GET, &format!("{base}{path}?{q}"), "").await;
    assert_eq!(status, StatusCode::OK, "shadow stats: {body}");

    // The shadow comparison runs in the background: wait for it.
    let metrics_url = format!("{}/metrics", running.admin_url());
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let text = loop {
        let (status, text) = send(Method::GET, &metrics_url, "").await;
        assert_eq!(status, StatusCode::OK);
        if text.contains("pusher_cutover_shadow_mismatches_total{")
            || tokio::time::Instant::now() >= deadline
        {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let exposition = parse_exposition(&text);
    assert!(
        exposition.types.len() >= 9,
        "too few families in /metrics:\n{text}"
    );

    // The same proxy serving TLS, for the series only [tls] has.
    let tls_exposition = {
        let dir = tempfile::tempdir().expect("tempdir");
        let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert, made.cert.pem()).expect("write");
        std::fs::write(&key, made.signing_key.serialize_pem()).expect("write");
        let toml = format!(
            "[tls]\ncert = {:?}\nkey = {:?}\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [upstream]\nurl = \"{}\"\n\
             [[apps]]\nid = \"4242\"\nkey = \"deploy-key\"\nsecret = \"deploy-secret\"\n",
            cert.display().to_string(),
            key.display().to_string(),
            upstream.url()
        );
        let tls = TestProxy::start(
            &format!("listen = \"127.0.0.1:0\"\n{toml}"),
            Arc::new(SystemClock),
        )
        .await;
        let (status, text) = send(Method::GET, &format!("{}/metrics", tls.admin_url()), "").await;
        assert_eq!(status, StatusCode::OK);
        tls.stop().await;
        parse_exposition(&text)
    };

    let mut problems = BTreeSet::new();
    for (place, names) in &queries {
        for name in names {
            if SYNTHETIC.contains(&name.as_str()) {
                assert!(
                    place.starts_with("alert "),
                    "{place} queries {name}, which only Prometheus writes"
                );
                continue;
            }
            if TLS_ONLY.contains(&name.as_str()) {
                if let Some(problem) = problem_with(name, &tls_exposition) {
                    problems.insert(format!("{place} (with [tls]): {problem}"));
                }
                continue;
            }
            if let Some(problem) = problem_with(name, &exposition) {
                problems.insert(format!("{place}: {problem}"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "queries in deploy/ that /metrics cannot answer:\n  {}\n\n/metrics:\n{text}",
        Vec::from_iter(problems).join("\n  ")
    );

    // Stops within 10 s and the task ends cleanly, or this panics.
    running.stop().await;
}

#[test]
fn type_checking_catches_wrong_names() {
    let exposition = parse_exposition(
        "# TYPE c counter\nc_total 1\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n\
         # TYPE g gauge\ng 1\n# TYPE lazy counter\n",
    );
    for ok in ["c_total", "h_bucket", "h_sum", "h_count", "g"] {
        assert_eq!(problem_with(ok, &exposition), None, "{ok}");
    }
    for bad in [
        "c",
        "g_total",
        "h",
        "missing_total",
        "lazy_total",
        "c_bucket",
    ] {
        assert!(problem_with(bad, &exposition).is_some(), "{bad}");
    }
}

// ---------------------------------------------------------------------------
// The shipped config and the kustomization

#[test]
fn container_config_parses_and_binds_for_a_container() {
    let text = read_deploy("config.toml");
    let asked = std::sync::Mutex::new(BTreeSet::new());
    let env = |name: &str| {
        asked.lock().expect("lock").insert(name.to_owned());
        Some(format!("fake-{name}"))
    };
    let config = Config::from_toml_str(&text, &env)
        .unwrap_or_else(|e| panic!("deploy/config.toml: {:?}", e.problems()));
    assert_eq!(
        config.listen.to_string(),
        "127.0.0.1:8080",
        "the proxy is for the app in the same Pod only"
    );
    assert_eq!(
        config.admin.listen.map(|a| a.to_string()).as_deref(),
        Some("0.0.0.0:9090"),
        "probes and Prometheus reach the admin listener on the Pod's address"
    );
    assert_eq!(
        config.telemetry.data_dir.as_deref(),
        Some(Path::new("/var/lib/pusher-cutover"))
    );
    assert!(!config.apps.is_empty(), "no app in deploy/config.toml");

    // Secrets come from the environment, never from the file, and the Pod
    // sets every variable the config reads.
    let asked = asked.into_inner().expect("lock");
    assert!(!asked.is_empty(), "deploy/config.toml reads no secret_env");
    assert!(
        Config::from_toml_str(&text, &|_| None).is_err(),
        "deploy/config.toml starts without its secrets"
    );
    let deployment = read_deploy("kubernetes/deployment.yaml");
    for name in &asked {
        assert!(
            deployment
                .lines()
                .any(|l| l.trim() == format!("- name: {name}")),
            "deploy/kubernetes/deployment.yaml sets no {name}"
        );
    }
}

/// The file names listed under `resources:` in the kustomization.
fn kustomization_resources(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if !line.starts_with(' ') && !line.starts_with('-') {
            inside = line.trim_end() == "resources:";
            continue;
        }
        if inside && let Some(item) = line.trim().strip_prefix("- ") {
            out.push(
                item.trim()
                    .trim_matches(|c| c == '"' || c == '\'')
                    .to_owned(),
            );
        }
    }
    out
}

#[test]
fn kustomization_lists_every_manifest() {
    let dir = deploy_path("kubernetes");
    let mut on_disk = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).expect("deploy/kubernetes") {
        let name = entry
            .expect("dir entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        // `*.example.yaml` are shown, not applied (the Secret: a
        // placeholder applied would replace the real values).
        if (name.ends_with(".yaml") || name.ends_with(".yml"))
            && name != "kustomization.yaml"
            && !name.ends_with(".example.yaml")
        {
            on_disk.insert(name);
        }
    }
    assert!(on_disk.len() >= 3, "manifests: {on_disk:?}");
    assert!(
        dir.join("secret.example.yaml").is_file(),
        "the example Secret is shown beside the manifests"
    );
    let listed = kustomization_resources(&read_deploy("kubernetes/kustomization.yaml"));
    let unique: BTreeSet<String> = listed.iter().cloned().collect();
    assert_eq!(unique.len(), listed.len(), "listed twice: {listed:?}");
    assert_eq!(
        unique, on_disk,
        "kustomization.yaml resources vs files in deploy/kubernetes/"
    );
}

#[test]
fn kustomization_resources_are_read_from_the_resources_key() {
    let text = "# c\napiVersion: v1\nresources:\n  - a.yaml\n  # skipped\n  - \"b.yaml\"\nimages:\n  - name: x\n";
    assert_eq!(kustomization_resources(text), ["a.yaml", "b.yaml"]);
}

/// The `port:` values of the NetworkPolicy's ingress rules that are not
/// commented out.
fn policy_ports(text: &str) -> Vec<u16> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            l.strip_prefix("port:")
                .or_else(|| l.strip_prefix("- port:"))
        })
        .filter_map(|p| p.trim().parse().ok())
        .collect()
}

/// The NetworkPolicy selects the Pod, restricts ingress, and admits only
/// to the admin port of the shipped config, never to the proxy port (the
/// full structural check, peers included, is in `.ci/deploy-checks`).
#[test]
fn network_policy_admits_only_to_the_admin_port() {
    let config = Config::from_toml_str(&read_deploy("config.toml"), &|n| Some(format!("x-{n}")))
        .expect("deploy/config.toml");
    let admin = config.admin.listen.expect("admin listener").port();
    let policy = read_deploy("kubernetes/networkpolicy.yaml");
    assert!(policy.contains("kind: NetworkPolicy"), "{policy}");
    assert!(policy.contains("policyTypes:\n    - Ingress"), "{policy}");
    assert!(
        policy.contains("podSelector:\n    matchLabels:\n      app.kubernetes.io/name: legacy-app"),
        "selects the Pod"
    );
    assert!(
        read_deploy("kubernetes/deployment.yaml")
            .contains("    metadata:\n      labels:\n        app.kubernetes.io/name: legacy-app"),
        "the Pod carries the label the policy selects"
    );
    assert!(
        policy.contains("app.kubernetes.io/name: prometheus"),
        "the scraper"
    );
    assert_eq!(policy_ports(&policy), [admin], "only the admin port");
    assert!(!policy_ports(&policy).contains(&config.listen.port()));
    assert!(!policy.contains("ipBlock"), "peers by labels only");
}

#[test]
fn policy_ports_skip_comments() {
    let text = "      ports:\n        - protocol: TCP\n          port: 9090\n    #   port: 8000\n        - port: 7\n";
    assert_eq!(policy_ports(text), [9090, 7]);
}
