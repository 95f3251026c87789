//! Parsing and assembly of Prometheus' answers, with canned JSON in the
//! shapes of the HTTP API documentation (and of Prometheus 2.42's).

use super::super::promql::{DEPRECATED_CALLS, START_TIME};
use super::*;
use serde_json::json;

fn vector(result: Value) -> Value {
    json!({"resultType": "vector", "result": result})
}

fn sample(labels: Value, value: &str) -> Value {
    json!({"metric": labels, "value": [1_796_190_125.007, value]})
}

#[test]
fn envelope_gives_data_or_the_error_prometheus_named() {
    let ok = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
    assert_eq!(
        envelope("q", StatusCode::OK, ok).expect("data")["resultType"],
        "vector"
    );
    let bad = br#"{"status":"error","errorType":"bad_data","error":"1:5: parse error"}"#;
    let e = envelope("q", StatusCode::BAD_REQUEST, bad).expect_err("an error");
    assert_eq!(
        e.to_string(),
        "q: Prometheus answered 400 Bad Request: bad_data: 1:5: parse error"
    );
    let html = b"<html>proxy error</html>";
    let e = envelope("q", StatusCode::BAD_GATEWAY, html).expect_err("an error");
    assert!(e.to_string().contains("<html>proxy error"), "{e}");
}

/// A success with storage warnings may be partial (Thanos with a store
/// down answers so): an error, naming them. PromQL's info annotations
/// are not about the data and pass.
#[test]
fn an_answer_with_warnings_may_be_partial_and_is_refused() {
    let partial = br#"{"status":"success","data":{"resultType":"vector","result":[]},
        "warnings":["No StoreAPIs matched for this query","remote read: context deadline exceeded"]}"#;
    let e = envelope("q", StatusCode::OK, partial).expect_err("partial");
    let text = e.to_string();
    assert!(text.contains("may be partial"), "{text}");
    assert!(
        text.contains("No StoreAPIs matched for this query; remote read"),
        "{text}"
    );
    let info = br#"{"status":"success","data":{"resultType":"vector","result":[]},
        "warnings":["PromQL info: metric might not be a counter, name does not end in _total/_sum/_count/_bucket: \"up\""]}"#;
    assert_eq!(
        envelope("q", StatusCode::OK, info).expect("data")["resultType"],
        "vector"
    );
    let empty = br#"{"status":"success","data":{"resultType":"vector","result":[]},"warnings":[]}"#;
    assert!(envelope("q", StatusCode::OK, empty).is_ok());
}

#[test]
fn vectors_and_matrices_parse() {
    let v = parse_vector(&vector(json!([sample(
        json!({"instance": "a:9090"}),
        "2.5"
    )])))
    .expect("vector");
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].value, 2.5);
    assert_eq!(v[0].metric["instance"], "a:9090");
    let m = parse_matrix(&json!({"resultType": "matrix", "result": [
        {"metric": {"app_id": "4242"}, "values": [[3600, "1"], [7200, "4.2"]]}
    ]}))
    .expect("matrix");
    assert_eq!(m[0].values, vec![(3600.0, 1.0), (7200.0, 4.2)]);
    assert!(parse_vector(&json!({"resultType": "matrix", "result": []})).is_err());
    assert!(parse_vector(&vector(json!([{"metric": {}, "value": [1, "x"]}]))).is_err());
}

#[test]
fn scrape_interval_comes_from_the_jobs_active_targets() {
    let targets = json!({"activeTargets": [
        {"labels": {"job": "pusher-cutover", "instance": "a"}, "scrapePool": "pusher-cutover", "scrapeInterval": "15s"},
        {"labels": {"job": "pusher-cutover", "instance": "b"}, "scrapePool": "pusher-cutover", "scrapeInterval": "30s"},
        {"labels": {"job": "other"}, "scrapePool": "other", "scrapeInterval": "1m"}
    ], "droppedTargets": []});
    assert_eq!(
        scrape_interval_of(&targets, "pusher-cutover"),
        Some(Duration::from_secs(30))
    );
    assert_eq!(scrape_interval_of(&targets, "missing"), None);
}

#[test]
fn retention_is_the_time_part_of_storage_retention() {
    assert_eq!(
        retention_of(&json!({"storageRetention": "15d"})),
        Some(("15d".into(), Duration::from_secs(15 * 86_400)))
    );
    assert_eq!(
        retention_of(&json!({"storageRetention": "30d or 10GiB"})),
        Some(("30d".into(), Duration::from_secs(30 * 86_400)))
    );
    assert_eq!(retention_of(&json!({"storageRetention": "10GiB"})), None);
    assert_eq!(retention_of(&json!({})), None);
}

fn caller(app: &str, library: &str, instance: &str) -> Value {
    json!({"app_id": app, "route": "legacy_trigger", "library": library, "instance": instance})
}

#[test]
fn uses_name_app_library_and_instance_and_new_sidecars_count_from_zero() {
    let increase = parse_vector(&vector(json!([
        sample(caller("4242", "pypi-pusher-0.6-0.8", "a:9090"), "3.2"),
        sample(caller("4242", "unknown", "b:9090"), "0.4"),
    ])))
    .expect("vector");
    // c:9090 started in the window; its counter reached 2 (one call
    // before its first scrape that increase() cannot see, one after).
    let before = parse_vector(&vector(json!([sample(
        caller("4242", "unknown", "c:9090"),
        "2"
    ),])))
    .expect("vector");
    let increase_c = parse_vector(&vector(json!([sample(
        caller("4242", "unknown", "c:9090"),
        "1"
    ),])))
    .expect("vector");
    let all: Vec<Sample> = increase.into_iter().chain(increase_c).collect();
    let uses = uses_of(&all, &before, "instance");
    let got: Vec<(&str, &str, u64)> = uses
        .iter()
        .map(|u| (u.library.as_str(), u.instance.as_str(), u.calls))
        .collect();
    assert_eq!(
        got,
        vec![
            ("pypi-pusher-0.6-0.8", "a:9090", 3),
            // An estimate below one half is still a call.
            ("unknown", "b:9090", 1),
            ("unknown", "c:9090", 2),
        ]
    );
    assert!(
        uses.iter()
            .all(|u| u.app_id == "4242" && u.route == "legacy_trigger")
    );
}

/// The coverage line of the table quotes Prometheus' values (instance
/// labels, the job, its retention text): a control or bidirectional
/// character among them is escaped, not sent to the terminal.
#[test]
fn the_tables_coverage_line_escapes_what_prometheus_says() {
    let hostile = "pod\u{1b}[2J\u{1b}]0;owned\u{7}\u{202e}x";
    let mut report = crate::report::build_for(
        &Usage::default(),
        time::macros::datetime!(2026-11-28 12:00 UTC),
        Some(Duration::from_secs(3600)),
        &[],
    );
    report.prometheus = Some(FleetEvidence {
        prometheus: "http://127.0.0.1:9090".into(),
        job: "job\u{1b}[31m".into(),
        instance_label: "instance".into(),
        scrape_interval_seconds: Some(15.0),
        retention: None,
        instances: BTreeMap::new(),
        gaps: vec![GapReport::from(Gap::Bypassed {
            instance: hostile.into(),
        })],
    });
    let table = crate::report::render_table(&report);
    for c in ['\u{1b}', '\u{7}', '\u{202e}'] {
        assert!(!table.contains(c), "{c:?} in {table:?}");
    }
    assert!(
        table.contains("sidecar pod\\u{1b}[2J\\u{1b}]0;owned\\u{7}\\u{202e}x had bypass on"),
        "{table}"
    );
    assert!(table.contains("job job\\u{1b}[31m:"), "{table}");
}

#[test]
fn render_gate_names_each_use_then_each_gap() {
    let answer = GateAnswer {
        uses: vec![FleetUse {
            app_id: "4242".into(),
            route: "legacy_trigger".into(),
            library: "unknown".into(),
            instance: "a:9090".into(),
            calls: 3,
        }],
        gaps: vec![Gap::NoSidecar { job: "j".into() }],
    };
    let text = render_gate(&answer, Duration::from_secs(86_400));
    assert_eq!(
        text,
        "deprecated calls were made in the last 1day:\n  \
         app 4242 library unknown instance a:9090: 3 legacy_trigger call(s)\n\
         the evidence for the last 1day is incomplete, so zero is not proven:\n  \
         gap: no sidecar of job j was scraped in the window\n"
    );
    // Every label is Prometheus' word, escaped for the terminal: the
    // route too.
    let odd = GateAnswer {
        uses: vec![FleetUse {
            route: "legacy\u{1b}]0;x\u{7}".into(),
            ..answer.uses[0].clone()
        }],
        gaps: vec![],
    };
    let text = render_gate(&odd, Duration::from_secs(60));
    assert!(text.contains("3 legacy\\u{1b}]0;x\\u{7} call(s)"), "{text}");
    assert!(!text.contains('\u{1b}'), "{text:?}");
    let proven = GateAnswer {
        uses: vec![],
        gaps: vec![],
    };
    assert_eq!(
        render_gate(&proven, Duration::from_secs(20)),
        "no deprecated call in the last 20s, and every sidecar was scraped throughout its \
         time in it: zero is proven\n"
    );
}

#[test]
fn hourly_points_become_buckets_and_callers() {
    let start = 10 * HOUR + 1800; // the window starts mid-hour
    let series = parse_matrix(&json!({"resultType": "matrix", "result": [
        // Points at hour ends: 10:00 (previous window), 11:00, 13:00.
        {"metric": caller("4242", "unknown", "a:9090"),
         "values": [[10 * HOUR, "2"], [11 * HOUR, "1.1"], [13 * HOUR, "4"]]},
        {"metric": caller("4242", "pypi-pusher-0.6-0.8", "b:9090"),
         "values": [[13 * HOUR, "5"]]},
        {"metric": {"app_id": "4242", "route": "passthrough", "library": "x", "instance": "a"},
         "values": [[13 * HOUR, "5"]]}
    ]}))
    .expect("matrix");
    let mut buckets = BTreeMap::new();
    add_range(&mut buckets, &series, "instance", false);
    let usage = usage_of(&buckets, start, &["a:9090".into(), "b:9090".into()], None);
    assert_eq!(usage.instance, "a:9090,b:9090");
    assert_eq!(usage.apps.len(), 1);
    let app = &usage.apps[0];
    let hourly: Vec<(i64, u64)> = app
        .hourly
        .iter()
        .map(|h| (h.hour.unix_timestamp(), h.calls))
        .collect();
    // The 12:00 hour's two callers share one bucket; passthrough is dropped.
    assert_eq!(hourly, vec![(9 * HOUR, 2), (10 * HOUR, 1), (12 * HOUR, 9)]);
    let a = app
        .callers
        .iter()
        .find(|c| c.key.instance == "a:9090")
        .expect("caller a");
    // The 10:00 bucket straddles the start and counts; 09:00 does not.
    assert_eq!(a.calls, 5);
    assert_eq!(a.first_seen.unix_timestamp(), start);
    assert_eq!(a.last_seen.unix_timestamp(), 12 * HOUR);
    assert_eq!(a.key.library, "unknown");
    let report = crate::report::build_for(
        &usage,
        OffsetDateTime::from_unix_timestamp(13 * HOUR).expect("time"),
        Some(Duration::from_secs(13 * HOUR as u64 - start as u64)),
        &[],
    );
    assert_eq!(report.apps[0].window, 10);
    assert_eq!(report.apps[0].callers.len(), 2);
}

#[test]
fn scrapes_add_up_per_sidecar_label() {
    let pod = |p: &str, i: &str| json!({"pod": p, "instance": i, "job": "j"});
    let count = parse_vector(&vector(json!([
        sample(pod("p1", "10.0.0.1:9090"), "60"),
        sample(pod("p2", "10.0.0.2:9090"), "30")
    ])))
    .expect("v");
    let up = parse_vector(&vector(json!([
        sample(pod("p1", "10.0.0.1:9090"), "60"),
        sample(pod("p2", "10.0.0.2:9090"), "20")
    ])))
    .expect("v");
    let first =
        parse_vector(&vector(json!([sample(pod("p1", "10.0.0.1:9090"), "1000")]))).expect("v");
    let s = scrapes_of(&count, &up, &first, &[], "pod");
    assert_eq!(
        s["p1"],
        Scrapes {
            scrapes: 60,
            up: 60,
            first: Some(1000.0),
            last: None
        }
    );
    assert_eq!(s["p2"].up, 20);
    let both = parse_vector(&vector(json!([
        sample(json!({"pod": "p1", "app_id": "4242"}), "1"),
        sample(json!({"pod": "p1", "app_id": "7000"}), "1")
    ])))
    .expect("v");
    let (served, partly) = apps_served_of(&both, &[], &[], &s, 15.0, "pod");
    assert!(served["p1"].contains("4242") && served["p1"].contains("7000"));
    assert!(partly.is_empty());
    // Both served from p1's first scrape (1000), 7000 known a step late:
    // served throughout. Known later than that, a reload added it in the
    // window: served, but not throughout.
    let first_served = |at: &str| {
        parse_vector(&vector(json!([
            sample(json!({"pod": "p1", "app_id": "4242"}), "1000"),
            sample(json!({"pod": "p1", "app_id": "7000"}), at)
        ])))
        .expect("v")
    };
    let (_, partly) = apps_served_of(&both, &[], &first_served("1015"), &s, 15.0, "pod");
    assert!(partly.is_empty());
    let only_7000: BTreeMap<String, BTreeSet<String>> =
        [("p1".to_owned(), BTreeSet::from(["7000".to_owned()]))].into();
    let (served, partly) = apps_served_of(&both, &[], &first_served("1016"), &s, 15.0, "pod");
    assert_eq!(served["p1"].len(), 2);
    assert_eq!(partly, only_7000);
    // A reload removed 7000 in the window: not served throughout.
    let dropped = parse_vector(&vector(json!([sample(
        json!({"pod": "p1", "app_id": "7000"}),
        "1"
    )])))
    .expect("v");
    let (_, partly) = apps_served_of(&both, &dropped, &[], &s, 15.0, "pod");
    assert_eq!(partly, only_7000);
}

/// An in-process stand-in for Prometheus' HTTP API on loopback: job
/// `pusher-cutover` has one active target scraped every 15 s, retention
/// is 15d, and each instant query is answered by `answer` (its PromQL →
/// the vector's series), each range query by `answer` of `range PROMQL`,
/// every series as one point at the range's end. Returns its
/// URL and the PromQL of every instant query it received, and of every
/// range query as `range START END PROMQL`.
fn fake_prometheus(
    answer: impl Fn(&str) -> Value + Send + 'static,
) -> (Uri, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut req = Vec::new();
            let mut buf = [0u8; 8192];
            // The head, then the body its content-length announces.
            let (head, body) = loop {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break (String::new(), String::new()),
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
                let text = String::from_utf8_lossy(&req).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .and_then(|n| n.trim().parse::<usize>().ok())
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        break (head.to_owned(), body.to_owned());
                    }
                }
            };
            let line = head.lines().next().unwrap_or_default();
            let data = if line.contains("/api/v1/targets") {
                json!({"activeTargets": [{"labels": {"job": "pusher-cutover", "instance": "a:9090"},
                    "scrapePool": "pusher-cutover", "scrapeInterval": "15s"}], "droppedTargets": []})
            } else if line.contains("/api/v1/status/runtimeinfo") {
                json!({"storageRetention": "15d"})
            } else {
                let param = |name: &str| {
                    body.split('&')
                        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                        .map(|q| {
                            percent_encoding::percent_decode_str(q)
                                .decode_utf8_lossy()
                                .into_owned()
                        })
                        .unwrap_or_default()
                };
                let query = param("query");
                if line.contains("/api/v1/query_range") {
                    log.lock().expect("lock").push(format!(
                        "range {} {} {query}",
                        param("start"),
                        param("end")
                    ));
                    // `answer` of "range PROMQL", each series one point
                    // at the range's end.
                    let end: f64 = param("end").parse().unwrap_or(0.0);
                    let result: Vec<Value> = answer(&format!("range {query}"))
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|s| json!({"metric": s["metric"], "values": [[end, s["value"][1]]]}))
                        .collect();
                    json!({"resultType": "matrix", "result": result})
                } else {
                    log.lock().expect("lock").push(query.clone());
                    vector(answer(&query))
                }
            };
            let body = json!({"status": "success", "data": data}).to_string();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (format!("http://{addr}").parse().expect("a URL"), seen)
}

/// The evaluation time of the fake's answers.
const NOW: i64 = 1_800_000_000;

/// Two sidecars, a and b, each scraped every 15 s through the window (8
/// scrapes from 115 s before the evaluation time, also before it) and
/// serving app 4242, with no deprecated call; each one's bypass gauge
/// (`None`: no such series, a sidecar from before it) at its highest in
/// the window.
fn two_quiet_sidecars(bypass: [Option<f64>; 2]) -> impl Fn(&str) -> Value + Send + 'static {
    move |query: &str| {
        let each = |value: &dyn Fn(usize) -> Option<String>| -> Value {
            let series: Vec<Value> = ["a:9090", "b:9090"]
                .iter()
                .enumerate()
                .filter_map(|(i, instance)| {
                    value(i).map(|v| sample(json!({"instance": instance}), &v))
                })
                .collect();
            Value::Array(series)
        };
        if query.contains("pusher_cutover_app_configured") {
            // No app removed by a reload.
            json!([])
        } else if query.contains("pusher_cutover_bypass") {
            each(&|i| bypass[i].map(|v| v.to_string()))
        } else if query.starts_with("count_over_time(up") || query.starts_with("sum_over_time(up") {
            each(&|_| Some("8".into()))
        } else if query.starts_with("min_over_time(timestamp(up") {
            each(&|_| Some((NOW - 115).to_string()))
        } else if query.starts_with("max_over_time(timestamp(up") {
            each(&|_| Some((NOW - 10).to_string()))
        } else if query.starts_with("count by (app_id") {
            json!([
                sample(json!({"app_id": "4242", "instance": "a:9090"}), "1"),
                sample(json!({"app_id": "4242", "instance": "b:9090"}), "1")
            ])
        } else {
            // The deprecated calls: none.
            json!([])
        }
    }
}

/// The report's window (2 min) and the gate's (1 min) for app 4242, both
/// sidecars expected, against the fake at `url`.
fn query_of(url: Uri) -> FleetQuery {
    FleetQuery {
        url,
        selector: Selector {
            job: "pusher-cutover".into(),
            apps: vec!["4242".into()],
            instance_label: "instance".into(),
        },
        since: Duration::from_secs(120),
        gate: Some(Duration::from_secs(60)),
        expect_instances: Some(2),
        expect_apps: vec!["4242".into()],
        scrape_interval: None,
    }
}

/// What [`fetch`] makes of the fake's answers to `q`, at [`NOW`].
async fn fetch_at_now(q: &FleetQuery) -> Result<Fleet, PrometheusError> {
    let now = OffsetDateTime::from_unix_timestamp(NOW).expect("time");
    fetch(q, None, now).await
}

/// [`query_of`]`(url)` fetched.
async fn fetch_from(url: Uri) -> Fleet {
    fetch_at_now(&query_of(url))
        .await
        .expect("the fake answers")
}

/// A sidecar whose kill switch was on in the window passed calls through
/// uncounted: the gate refuses its zero (the gap named, in the report's
/// window and the gate's); with the switch off throughout, or on sidecars
/// from before the gauge, the same zero is proven.
#[tokio::test]
async fn the_gate_refuses_a_zero_over_a_sidecar_with_bypass_on() {
    let (url, queries) = fake_prometheus(two_quiet_sidecars([Some(0.0), Some(1.0)]));
    let fleet = fetch_from(url).await;
    let gate = fleet.gate.expect("gating");
    assert!(gate.uses.is_empty(), "{:?}", gate.uses);
    let bypassed = Gap::Bypassed {
        instance: "b:9090".into(),
    };
    assert_eq!(gate.gaps, vec![bypassed.clone()]);
    let text = render_gate(&gate, Duration::from_secs(60));
    assert!(text.contains("zero is not proven"), "{text}");
    assert!(
        text.contains(
            "gap: sidecar b:9090 had bypass on (the kill switch) during the window: it passed \
             calls through uncounted"
        ),
        "{text}"
    );
    // The report's window too: its apps without calls are unproven.
    assert_eq!(fleet.evidence.gaps, vec![GapReport::from(bypassed)]);
    assert_eq!(fleet.usage.recorded_since, None);
    // Rendered as the other gaps are: in the coverage line of the table
    // and the page, and listed in the JSON with its kind.
    let mut report = crate::report::build_for(
        &fleet.usage,
        fleet.now,
        Some(Duration::from_secs(120)),
        &fleet.apps,
    );
    report.prometheus = Some(fleet.evidence.clone());
    let said = "sidecar b:9090 had bypass on (the kill switch) during the window";
    let table = crate::report::render_table(&report);
    assert!(table.contains("the evidence has gaps"), "{table}");
    assert!(table.contains(said), "{table}");
    assert!(
        crate::report::render_html(&report).contains(said),
        "the page"
    );
    let json: Value = serde_json::from_str(&crate::report::render_json(&report)).expect("JSON");
    assert_eq!(json["prometheus"]["gaps"][0]["kind"], "bypassed", "{json}");
    assert_eq!(json["prometheus"]["gaps"][0]["instance"], "b:9090");
    // Asked for each window, widened by two 15 s scrape intervals and a
    // second, as the gate's counters.
    let asked = queries.lock().expect("lock").clone();
    for range in ["[151s]", "[91s]"] {
        let q = format!("max_over_time(pusher_cutover_bypass{{job=\"pusher-cutover\"}}{range})");
        let switched = format!(
            "max_over_time(pusher_cutover_bypass_last_on_timestamp_seconds{{job=\"pusher-cutover\"}}{range})"
        );
        assert!(
            asked
                .iter()
                .any(|a| a.starts_with("clamp_max(max by (instance) (")
                    && a.contains(&q)
                    && a.contains(&switched)),
            "{q} and {switched} not in {asked:#?}"
        );
    }

    for (bypass, what) in [
        ([Some(0.0), Some(0.0)], "bypass off throughout"),
        ([None, None], "sidecars from before the gauge"),
    ] {
        let (url, _) = fake_prometheus(two_quiet_sidecars(bypass));
        let fleet = fetch_from(url).await;
        let gate = fleet.gate.expect("gating");
        assert_eq!(
            (gate.uses.len(), gate.gaps.len()),
            (0, 0),
            "{what}: {gate:?}"
        );
        assert!(
            render_gate(&gate, Duration::from_secs(60)).contains("zero is proven"),
            "{what}"
        );
        assert!(fleet.evidence.gaps.is_empty(), "{what}");
        assert!(fleet.usage.recorded_since.is_some(), "{what}");
    }
}

/// An `--instance-label` the scrapes do not carry would make every sidecar
/// one (its scrapes summed, compared with one sidecar's due count): the
/// report refuses, naming the label.
#[tokio::test]
async fn an_instance_label_the_scrapes_lack_is_refused() {
    let (url, _) = fake_prometheus(two_quiet_sidecars([None, None]));
    let mut q = query_of(url);
    q.selector.instance_label = "pod".into();
    let e = fetch_at_now(&q).await.expect_err("refused");
    assert!(matches!(e, PrometheusError::MissingLabel { .. }), "{e}");
    assert!(e.to_string().contains("no label `pod`"), "{e}");
}

/// A sidecar new in an hour made calls before its first scrape, which no
/// `increase()` sees: the report's hourly bucket holds them, as the gate
/// counts them (it showed the increase alone, and an app the gate named
/// could show done).
#[tokio::test]
async fn an_hours_calls_before_a_sidecars_first_scrape_are_in_its_bucket() {
    let quiet = two_quiet_sidecars([None, None]);
    let caller = json!({"app_id": "4242", "route": "legacy_trigger", "library": "unknown",
        "instance": "a:9090"});
    let (url, _) = fake_prometheus(move |query: &str| {
        if !query.starts_with("range sum by (app_id, route, library, instance) (") {
            quiet(query)
        } else if query.contains("unless last_over_time") {
            // Its counter's highest value: 5 calls since it started.
            json!([sample(caller.clone(), "5")])
        } else {
            // What increase() sees from its first scrape on.
            json!([sample(caller.clone(), "2")])
        }
    });
    let fleet = fetch_from(url).await;
    let (calls, app) = hourly_calls(&fleet);
    assert_eq!(calls, 5, "{:?}", app.hourly);
}

/// App 4242's calls in all its hourly buckets, and the app.
fn hourly_calls(fleet: &Fleet) -> (u64, &AppUsage) {
    let app = fleet
        .usage
        .apps
        .iter()
        .find(|a| a.app_id == "4242")
        .expect("app 4242");
    (app.hourly.iter().map(|h| h.calls).sum(), app)
}

/// A sidecar whose reload added the expected app inside the window (its
/// presence series first seen after the sidecar's first scrape) refused
/// the app's calls before as an unknown app's, uncounted: a gap naming
/// it, where the app counted as served throughout.
#[tokio::test]
async fn an_app_added_inside_the_window_is_not_served_throughout() {
    let quiet = two_quiet_sidecars([None, None]);
    let (url, _) = fake_prometheus(move |query: &str| {
        if query.starts_with("min by (app_id, instance) (min_over_time(timestamp(") {
            json!([
                sample(
                    json!({"app_id": "4242", "instance": "a:9090"}),
                    &(NOW - 115).to_string()
                ),
                sample(
                    json!({"app_id": "4242", "instance": "b:9090"}),
                    &(NOW - 50).to_string()
                )
            ])
        } else {
            quiet(query)
        }
    });
    let fleet = fetch_from(url).await;
    let gate = fleet.gate.expect("gating");
    assert!(gate.uses.is_empty(), "{:?}", gate.uses);
    assert_eq!(
        gate.gaps,
        vec![Gap::AppNotServed {
            app_id: "4242".into(),
            instances: vec!["b:9090".into()]
        }]
    );
    let text = render_gate(&gate, Duration::from_secs(60));
    assert!(text.contains("added by a reload in it"), "{text}");

    // Added on both, and asked for with --app alone: served by no sidecar
    // throughout, a gap of its own (not a mistyped id's), and the app is
    // still listed.
    let (url, _) = fake_prometheus(move |query: &str| {
        if query.starts_with("min by (app_id, instance) (min_over_time(timestamp(") {
            let at = (NOW - 50).to_string();
            json!([
                sample(json!({"app_id": "4242", "instance": "a:9090"}), &at),
                sample(json!({"app_id": "4242", "instance": "b:9090"}), &at)
            ])
        } else {
            two_quiet_sidecars([None, None])(query)
        }
    });
    let q = FleetQuery {
        expect_apps: Vec::new(),
        ..query_of(url)
    };
    let fleet = fetch_at_now(&q).await.expect("the fake answers");
    let gate = fleet.gate.expect("gating");
    assert_eq!(
        gate.gaps,
        vec![Gap::AppServedPartly {
            app_id: "4242".into()
        }]
    );
    let text = render_gate(&gate, Duration::from_secs(60));
    assert!(
        text.contains("app 4242 was served by no sidecar for the whole window"),
        "{text}"
    );
    assert_eq!(fleet.apps, ["4242"]);
}

/// A sidecar process that restarted between two scrapes, with a call
/// before each restart's first scrape, reads 1 before and after: no
/// `increase()`, and its series is not new. Its calls since its start are
/// in the hour's bucket, as the gate counts them (the report showed the
/// app done where the gate said it was used).
#[tokio::test]
async fn an_hours_calls_of_a_restarted_sidecar_are_in_its_bucket() {
    let quiet = two_quiet_sidecars([None, None]);
    let caller = json!({"app_id": "4242", "route": "legacy_trigger", "library": "unknown",
        "instance": "a:9090"});
    let (url, queries) = fake_prometheus(move |query: &str| {
        if query.contains(START_TIME) && query.contains(DEPRECATED_CALLS) {
            json!([sample(caller.clone(), "1")])
        } else {
            quiet(query)
        }
    });
    let fleet = fetch_from(url).await;
    let (calls, app) = hourly_calls(&fleet);
    assert!(calls >= 1, "{:?}", app.hourly);
    let seen = queries.lock().expect("lock").clone();
    assert!(
        seen.iter()
            .any(|q| q.starts_with("range ") && q.contains(START_TIME)),
        "the hourly buckets ask for it: {seen:?}"
    );
}

/// The report's last 24 hours, last 7 days and last call are read from
/// hourly buckets: they are asked for at least 7 days back whatever the
/// window, here 2 minutes (they were asked for twice the window only, so a
/// call 20 hours ago was missed and its app shown `done`).
#[tokio::test]
async fn hourly_buckets_reach_back_7_days_for_a_short_window() {
    let (url, queries) = fake_prometheus(two_quiet_sidecars([None, None]));
    fetch_from(url).await;
    let asked = queries.lock().expect("lock").clone();
    let starts: Vec<i64> = asked
        .iter()
        .filter_map(|q| q.strip_prefix("range "))
        .filter_map(|q| q.split(' ').next()?.parse().ok())
        .collect();
    let first = starts.iter().min().copied().expect("range queries");
    // The first bucket ends an hour after the hour 7 days back starts.
    assert!(first <= NOW - 7 * 86_400 + 3600, "{first} in {asked:#?}");
    assert!(first > NOW - 7 * 86_400 - 3600, "{first}: not further");
}

#[test]
fn bypassed_sidecars_are_those_above_zero() {
    let samples = parse_vector(&vector(json!([
        sample(json!({"pod": "p1"}), "1"),
        sample(json!({"pod": "p2"}), "0")
    ])))
    .expect("v");
    assert_eq!(
        bypassed_of(&samples, "pod"),
        BTreeSet::from(["p1".to_owned()])
    );
    assert!(bypassed_of(&[], "pod").is_empty());
}
