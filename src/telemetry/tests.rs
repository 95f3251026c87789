//! Telemetry's tests: series, reloads, observations, failed writes, the
//! ledger's start across runs.

use super::*;

fn config(app_ids: &[&str]) -> Config {
    let mut text = String::from("[upstream]\nurl = \"http://127.0.0.1:6001\"\n");
    for id in app_ids {
        text.push_str(&format!(
            "[[apps]]\nid = \"{id}\"\nkey = \"k{id}\"\nsecret = \"s{id}\"\n"
        ));
    }
    Config::from_toml_str(&text, &|_: &str| None).expect("a valid config")
}

fn observation<'a>(
    app_id: &'a str,
    series: Option<&'a AppSeries>,
    route: RouteKind,
) -> Observation<'a> {
    Observation {
        route,
        app_id: Some(app_id),
        series,
        outcome: Outcome::Ok,
        duration: Duration::from_millis(3),
        upstream_duration: Some(Duration::from_millis(2)),
        signature_failure: None,
        caller: Some(VerifiedCaller {
            auth_key: "k1",
            user_agent: "pusher-gem/0.9.2",
            client_address: "10.0.0.1",
            library: Library::Unknown,
            fingerprint: "fp",
            event: "ev",
            channel: "c",
            path: Some(Path::Translate),
        }),
        now: 1_700_000_000,
    }
}

fn sample(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn observations_count_in_the_series_metrics_exposes() {
    let telemetry = Telemetry::new(&config(&["1"]));
    let series = telemetry.app_series("1");
    for _ in 0..3 {
        telemetry.observe(&observation("1", Some(&series), RouteKind::LegacyTrigger));
    }
    // Without series at hand, they are looked up.
    telemetry.observe(&observation("1", None, RouteKind::LegacyTrigger));
    // An unconfigured app, whether or not the caller passes series.
    telemetry.observe(&observation("9", None, RouteKind::Passthrough));
    let other = telemetry.app_series("9");
    telemetry.observe(&observation("9", Some(&other), RouteKind::Passthrough));

    let text = telemetry.metrics_text();
    let requests =
        |labels: &str| sample(&text, &format!("pusher_cutover_requests_total{{{labels}}}"));
    assert_eq!(
        requests(r#"app_id="1",route="legacy_trigger",outcome="ok""#),
        Some(4)
    );
    assert_eq!(
        requests(r#"app_id="other",route="passthrough",outcome="ok""#),
        Some(2)
    );
    assert_eq!(
        sample(
            &text,
            r#"pusher_cutover_deprecated_calls_total{app_id="1",route="legacy_trigger",library="unknown",path="translated"}"#
        ),
        Some(4)
    );
    assert_eq!(
        sample(
            &text,
            r#"pusher_cutover_request_duration_seconds_count{route="legacy_trigger"}"#
        ),
        Some(4)
    );
    assert_eq!(
        sample(
            &text,
            r#"pusher_cutover_upstream_duration_seconds_count{route="passthrough"}"#
        ),
        Some(2)
    );
    // A configured app's series are there at 0 before any call, so
    // increase() sees the first one: every library and path...
    assert_eq!(
        sample(
            &text,
            r#"pusher_cutover_deprecated_calls_total{app_id="1",route="legacy_stats",library="pypi-pusher-0.6-0.8",path="shadowed"}"#
        ),
        Some(0)
    );
    assert_eq!(
        sample(
            &text,
            r#"pusher_cutover_deprecated_calls_total{app_id="1",route="legacy_trigger",library="unknown",path="invalid"}"#
        ),
        Some(0)
    );
    // ... but no shadowed trigger, which cannot happen;
    assert!(
        !text.contains(r#"route="legacy_trigger",library="unknown",path="shadowed""#),
        "{text}"
    );
    // requests by outcome, signature failures by reason, shadow fields.
    assert_eq!(
        requests(r#"app_id="1",route="legacy_stats",outcome="client_error""#),
        Some(0)
    );
    assert_eq!(
        sample(
            &text,
            r#"pusher_cutover_signature_failures_total{app_id="1",reason="timestamp_expired"}"#
        ),
        Some(0)
    );
    assert_eq!(
        sample(
            &text,
            r#"pusher_cutover_shadow_mismatches_total{app_id="1",field="answer"}"#
        ),
        Some(0)
    );
    // Every route's histograms too.
    assert_eq!(
        sample(
            &text,
            r#"pusher_cutover_request_duration_seconds_count{route="legacy_stats"}"#
        ),
        Some(0)
    );
    // The unconfigured apps' series are created when first used only.
    assert!(
        !text.contains(r#"app_id="other",route="legacy_stats""#),
        "{text}"
    );
}

#[test]
fn a_reload_keeps_the_series_of_kept_apps_and_drops_removed_ones() {
    let telemetry = Telemetry::new(&config(&["1", "2"]));
    let one = telemetry.app_series("1");
    telemetry.observe(&observation("1", Some(&one), RouteKind::LegacyStats));
    telemetry.configure(&config(&["1", "3"]));
    assert!(Arc::ptr_eq(&one, &telemetry.app_series("1")));
    assert_eq!(telemetry.app_series("2").app_id().0.as_ref(), OTHER);
    assert_eq!(telemetry.app_series("3").app_id().0.as_ref(), "3");
    // A handle taken before the reload still counts in the same series.
    let again = telemetry.app_series("1");
    telemetry.observe(&observation("1", Some(&again), RouteKind::LegacyStats));
    let text = telemetry.metrics_text();
    assert_eq!(
        sample(
            &text,
            r#"pusher_cutover_requests_total{app_id="1",route="legacy_stats",outcome="ok"}"#
        ),
        Some(2)
    );
}

/// A store that stops accepting writes (its callers table dropped
/// under it): the calls stay pending and counted, the gauge says how
/// many, and once the store works again they are written.
#[tokio::test]
async fn failed_writes_keep_the_calls_and_say_how_many() {
    let dir = tempfile::tempdir().expect("tempdir");
    let telemetry = Telemetry::new(&config(&["1"]));
    let p = Persistence::open(dir.path(), &telemetry, 1_700_000_000).expect("open");
    let series = telemetry.app_series("1");
    for _ in 0..5 {
        telemetry.observe(&observation("1", Some(&series), RouteKind::LegacyTrigger));
    }
    assert_eq!(p.unwritten(&telemetry), 5);
    let db = rusqlite::Connection::open(dir.path().join(store::FILE_NAME)).expect("open");
    db.execute_batch("ALTER TABLE callers RENAME TO callers_away")
        .expect("sabotage");
    assert!(!p.flush(&telemetry, 1_700_000_010).await, "the write fails");
    assert!(!p.flush(&telemetry, 1_700_000_020).await, "and again");
    assert_eq!(p.unwritten(&telemetry), 5, "nothing is lost from memory");
    let gauge = |t: &Telemetry| sample(&t.metrics_text(), "pusher_cutover_ledger_unwritten_calls");
    assert_eq!(gauge(&telemetry), Some(5));
    db.execute_batch("ALTER TABLE callers_away RENAME TO callers")
        .expect("repair");
    assert!(p.flush(&telemetry, 1_700_000_030).await, "written again");
    assert_eq!(p.unwritten(&telemetry), 0);
    assert_eq!(gauge(&telemetry), Some(0));
    let stored = store::Store::open_read_only(dir.path())
        .expect("reopen")
        .load()
        .expect("load");
    assert_eq!(stored.apps[0].callers[0].calls, 5);
}

/// The proxy's store across runs: a clean close keeps the ledger's start;
/// a run that ends without it (a crash) moves the start to the next
/// run's; a kill switch on at a flush moves it too, on disk; an
/// unreadable file is replaced by a new ledger.
#[tokio::test]
async fn the_start_follows_crashes_and_the_kill_switch_on_disk() {
    const T: u64 = 1_700_000_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let stored = || {
        store::Store::open_read_only(dir.path())
            .expect("reopen")
            .load()
            .expect("load")
    };
    let since = |u: &usage::Usage| u.recorded_since.map(|t| t.unix_timestamp() as u64);
    let run = |at: u64| {
        let telemetry = Telemetry::new(&config(&["1"]));
        let p = Persistence::open(dir.path(), &telemetry, at).expect("open");
        (telemetry, p)
    };

    let (telemetry, p) = run(T);
    telemetry.observe(&observation("1", None, RouteKind::LegacyTrigger));
    assert!(p.close(&telemetry, T + 5).await);
    drop((telemetry, p));
    let (telemetry, p) = run(T + 10);
    assert_eq!(
        since(&telemetry.ledger().snapshot(T + 10)),
        Some(T),
        "closed"
    );
    telemetry.observe(&observation("1", None, RouteKind::LegacyTrigger));
    assert!(p.flush(&telemetry, T + 15).await);
    drop((telemetry, p)); // no close: a crash

    let (telemetry, p) = run(T + 20);
    assert_eq!(since(&telemetry.ledger().snapshot(T + 20)), Some(T + 21));
    assert_eq!(
        telemetry.ledger().snapshot(T + 20).apps[0].callers[0].calls,
        2
    );
    telemetry.ledger().follow_bypass(true, T + 30);
    assert!(p.flush(&telemetry, T + 40).await);
    assert_eq!(since(&stored()), Some(T + 41), "written while on");
    telemetry.ledger().follow_bypass(false, T + 50);
    assert!(p.close(&telemetry, T + 60).await);
    assert_eq!(since(&stored()), Some(T + 51), "from the switch-off on");
    drop((telemetry, p));

    std::fs::write(dir.path().join(store::FILE_NAME), b"damaged").expect("damage");
    let (telemetry, _p) = run(T + 70);
    let fresh = telemetry.ledger().snapshot(T + 70);
    assert!(fresh.apps.is_empty());
    assert_eq!(since(&fresh), Some(T + 71));
    assert!(
        dir.path()
            .join(format!("{}.corrupt-{}", store::FILE_NAME, T + 70))
            .exists()
    );
}

/// A reload leaves `build_info` with the new hash only, and a sunset gauge
/// for each app that has a sunset now: the previous configuration's are
/// removed, those set again are kept.
#[test]
fn a_reload_replaces_build_info_and_the_sunset_gauges() {
    let with_sunsets = |ids: &[&str], sunset: &[&str]| {
        let mut config = config(ids);
        for app in &mut config.apps {
            if sunset.contains(&app.id.as_str()) {
                app.sunset = Some(time::macros::datetime!(2030-01-01 0:00 UTC));
            }
        }
        config.hash = format!("hash-{}", ids.join("-"));
        config
    };
    let first = with_sunsets(&["1", "2"], &["1", "2"]);
    let telemetry = Telemetry::new(&first);
    let sunset =
        |id: &str| format!("pusher_cutover_app_sunset_timestamp_seconds{{app_id=\"{id}\"}}");
    let text = telemetry.metrics_text();
    assert!(text.contains("config_hash=\"hash-1-2\""), "{text}");
    assert!(
        text.contains(&sunset("1")) && text.contains(&sunset("2")),
        "{text}"
    );

    telemetry.configure(&with_sunsets(&["2", "3"], &["3"]));
    let text = telemetry.metrics_text();
    assert!(text.contains("config_hash=\"hash-2-3\""), "{text}");
    assert!(!text.contains("config_hash=\"hash-1-2\""), "{text}");
    assert!(!text.contains(&sunset("1")), "app 1 removed: {text}");
    assert!(
        !text.contains(&sunset("2")),
        "app 2's sunset removed: {text}"
    );
    assert!(text.contains(&sunset("3")), "{text}");
    // Which apps are configured: a removed one stays, at 0, so the fleet
    // view sees it was not served for part of its window.
    let configured = |id: &str| format!("pusher_cutover_app_configured{{app_id=\"{id}\"}}");
    for (id, value) in [("1", 0), ("2", 1), ("3", 1)] {
        assert_eq!(sample(&text, &configured(id)), Some(value), "{id}: {text}");
    }

    // The same configuration again keeps its series.
    telemetry.configure(&with_sunsets(&["2", "3"], &["3"]));
    let text = telemetry.metrics_text();
    assert!(
        text.contains("config_hash=\"hash-2-3\"") && text.contains(&sunset("3")),
        "{text}"
    );
}
