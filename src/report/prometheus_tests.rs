//! Parsing and assembly of Prometheus' answers, with canned JSON in the
//! shapes of the HTTP API documentation (and of Prometheus 2.42's).

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
    add_range(&mut buckets, &series, "instance");
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
    let served = apps_served_of(
        &parse_vector(&vector(json!([sample(
            json!({"pod": "p1", "app_id": "4242"}),
            "1"
        )])))
        .expect("v"),
        "pod",
    );
    assert!(served["p1"].contains("4242"));
}
