//! The report's tests: building, each rendering, the gate.

use super::*;
use crate::telemetry::usage::{CallSite, CallerKey, HourlyCount};
use proptest::prelude::*;
use time::UtcOffset;
use time::macros::datetime;

pub(super) const DAY: std::time::Duration = std::time::Duration::from_secs(86_400);
pub(super) const NOW: OffsetDateTime = datetime!(2026-11-28 12:00 UTC);

pub(super) fn hourly(route: RouteKind, hour: OffsetDateTime, calls: u64) -> HourlyCount {
    HourlyCount { route, hour, calls }
}

pub(super) fn caller(
    route: RouteKind,
    key: &str,
    agent: &str,
    calls: u64,
    last_seen: OffsetDateTime,
) -> Caller {
    Caller {
        key: CallerKey {
            route,
            auth_key: key.into(),
            library: "unknown".into(),
            fingerprint: "fp".into(),
            user_agent: agent.into(),
            client_address: "10.0.0.1".into(),
            instance: "i-1".into(),
        },
        calls,
        first_seen: datetime!(2026-10-01 08:00 UTC),
        last_seen,
        call_sites: Vec::new(),
    }
}

pub(super) fn app(app_id: &str, callers: Vec<Caller>, hourly: Vec<HourlyCount>) -> AppUsage {
    AppUsage {
        app_id: app_id.into(),
        callers,
        hourly,
    }
}

use RouteKind::{LegacyStats as Stats, LegacyTrigger as Trigger};

/// Window with `since = 7d` at `NOW`: 2026-11-21 12:00 to 2026-11-28 12:00.
pub(super) fn ledger() -> Usage {
    Usage {
        instance: "i-1".into(),
        recorded_since: None,
        apps: vec![
            app(
                "10",
                vec![],
                vec![hourly(Trigger, datetime!(2026-11-01 10:00 UTC), 4)],
            ),
            app(
                "4242",
                vec![
                    caller(
                        Trigger,
                        "k1",
                        "pusher-http-ruby/2.0",
                        1000,
                        datetime!(2026-11-27 10:00 UTC),
                    ),
                    caller(Stats, "k1", "curl/8.0", 3, datetime!(2026-11-25 08:10 UTC)),
                    caller(
                        Trigger,
                        "k2",
                        "old-sdk",
                        1000,
                        datetime!(2026-11-28 11:00 UTC),
                    ),
                    caller(
                        Trigger,
                        "k3",
                        "gone",
                        9999,
                        datetime!(2026-11-21 11:59:59 UTC),
                    ),
                    caller(Stats, "k4", "edge", 1, datetime!(2026-11-21 12:00 UTC)),
                ],
                vec![
                    hourly(Trigger, datetime!(2026-11-20 10:00 UTC), 500),
                    // Ends exactly at the window's start: outside.
                    hourly(Stats, datetime!(2026-11-21 11:00 UTC), 7),
                    hourly(Trigger, datetime!(2026-11-21 12:00 UTC), 100),
                    hourly(Trigger, datetime!(2026-11-23 09:00 UTC), 400),
                    hourly(Trigger, datetime!(2026-11-23 10:00 UTC), 500),
                    hourly(Stats, datetime!(2026-11-25 08:00 UTC), 3),
                ],
            ),
            app(
                "77",
                vec![caller(Stats, "k7", "", 5, datetime!(2026-11-28 00:10 UTC))],
                vec![hourly(Stats, datetime!(2026-11-27 23:00 UTC), 5)],
            ),
            app("9", vec![], vec![]),
        ],
    }
}

fn days(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(d, n)| ((*d).to_owned(), *n)).collect()
}

fn routes(stats: u64, trigger: u64) -> BTreeMap<RouteKind, u64> {
    BTreeMap::from([(Stats, stats), (Trigger, trigger)])
}

#[test]
fn build_counts_the_window() {
    let r = build(&ledger(), NOW, Some(7 * DAY));
    assert_eq!(r.generated_at, NOW);
    assert_eq!(r.since, Some(datetime!(2026-11-21 12:00 UTC)));
    let ids: Vec<_> = r.apps.iter().map(|a| a.app_id.as_str()).collect();
    assert_eq!(ids, ["4242", "77", "10", "9"]);

    let a = &r.apps[0];
    assert_eq!(a.deprecated_calls, routes(3, 1000));
    assert_eq!(a.total(), 1003);
    assert_eq!(
        a.daily,
        days(&[
            ("2026-11-21", 100),
            ("2026-11-22", 0),
            ("2026-11-23", 900),
            ("2026-11-24", 0),
            ("2026-11-25", 3),
            ("2026-11-26", 0),
            ("2026-11-27", 0),
            ("2026-11-28", 0),
        ])
    );
    let order: Vec<_> = a.callers.iter().map(|c| c.auth_key.as_str()).collect();
    assert_eq!(order, ["k2", "k1", "k1", "k4"]);
    assert_eq!(a.callers[1].route, Trigger);
    assert_eq!(a.callers[1].calls, 1000);
    assert_eq!(a.callers[2].route, Stats);
    assert_eq!(a.callers[3].last_seen, datetime!(2026-11-21 12:00 UTC));

    let b = &r.apps[1];
    assert_eq!(b.deprecated_calls, routes(5, 0));
    assert_eq!(b.daily.get("2026-11-27"), Some(&5));
    assert_eq!(b.daily.get("2026-11-28"), Some(&0));
    assert_eq!(b.daily.len(), 8);
    assert_eq!(b.callers.len(), 1);

    for quiet in &r.apps[2..] {
        assert_eq!(quiet.deprecated_calls, routes(0, 0));
        assert!(quiet.callers.is_empty());
        assert_eq!(quiet.daily.len(), 8);
        assert!(quiet.daily.values().all(|n| *n == 0));
    }
}

#[test]
fn build_counts_the_bucket_straddling_the_start() {
    // Start 2026-11-21 12:30: the 12:00 bucket overlaps, 11:00 does not.
    let r = build(
        &ledger(),
        NOW,
        Some(7 * DAY - std::time::Duration::from_secs(1800)),
    );
    let a = r.apps.iter().find(|a| a.app_id == "4242").unwrap();
    assert_eq!(a.deprecated_calls, routes(3, 1000));
    assert_eq!(a.daily.get("2026-11-21"), Some(&100));
}

#[test]
fn build_all_time_starts_at_the_first_day_with_calls() {
    let r = build(&ledger(), NOW, None);
    assert_eq!(r.since, None);
    let a = r.apps.iter().find(|a| a.app_id == "4242").unwrap();
    assert_eq!(a.deprecated_calls, routes(10, 1500));
    assert_eq!(
        a.daily.first_key_value(),
        Some((&"2026-11-20".to_owned(), &500))
    );
    assert_eq!(a.daily.get("2026-11-21"), Some(&107));
    assert_eq!(a.daily.len(), 9);
    assert_eq!(a.callers.len(), 5);
    let empty = r.apps.iter().find(|a| a.app_id == "9").unwrap();
    assert!(empty.daily.is_empty());
    assert_eq!(r.apps[0].app_id, "4242");
}

#[test]
fn build_caps_days_and_survives_extremes() {
    let r = build(&ledger(), NOW, Some(1000 * DAY));
    let a = &r.apps[0];
    assert_eq!(a.daily.len(), MAX_DAYS);
    assert_eq!(a.daily.last_key_value().unwrap().0, "2026-11-28");
    assert_eq!(a.daily.first_key_value().unwrap().0, "2025-10-25");
    assert_eq!(a.total(), 1510);

    let r = build(&ledger(), NOW, Some(std::time::Duration::MAX));
    assert_eq!(r.apps[0].daily.len(), MAX_DAYS);
    assert!(render_json(&r).contains("\"since\""));

    let r = build(&ledger(), NOW, Some(std::time::Duration::ZERO));
    assert_eq!(r.since, Some(NOW));
    assert_eq!(r.apps[0].daily, days(&[("2026-11-28", 0)]));

    let huge = Usage {
        instance: "i-1".into(),
        recorded_since: None,
        apps: vec![app(
            "1",
            vec![],
            vec![
                hourly(Trigger, NOW, u64::MAX),
                hourly(Stats, NOW, u64::MAX),
                hourly(Stats, NOW, 1),
            ],
        )],
    };
    let r = build(&huge, NOW, None);
    assert_eq!(r.apps[0].total(), u64::MAX);
    assert!(render_table(&r).contains(&u64::MAX.to_string()));

    let empty = build(&Usage::default(), NOW, Some(DAY));
    assert!(empty.apps.is_empty());
    assert!(render_table(&empty).contains("No deprecated calls recorded."));
}

#[test]
fn json_has_the_documented_shape() {
    let r = build(&ledger(), NOW, Some(7 * DAY));
    let v: serde_json::Value = serde_json::from_str(&render_json(&r)).unwrap();
    assert_eq!(v["generated_at"], "2026-11-28T12:00:00Z");
    assert_eq!(v["since"], "2026-11-21T12:00:00Z");
    let a = &v["apps"][0];
    assert_eq!(a["app_id"], "4242");
    assert_eq!(
        a["deprecated_calls"],
        serde_json::json!({ "legacy_trigger": 1000, "legacy_stats": 3 })
    );
    assert_eq!(a["daily"]["2026-11-23"], 900);
    assert_eq!(a["daily"]["2026-11-22"], 0);
    let c = &a["callers"][0];
    let mut keys: Vec<_> = c.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "auth_key",
            "call_sites",
            "calls",
            "client_address",
            "fingerprint",
            "first_seen",
            "instance",
            "last_seen",
            "library",
            "route",
            "status",
            "user_agent"
        ]
    );
    assert_eq!(c["library"], "unknown");
    assert_eq!(c["fingerprint"], "fp");
    assert_eq!(c["instance"], "i-1");
    assert_eq!(c["call_sites"], serde_json::json!([]));
    assert_eq!(c["route"], "legacy_trigger");
    assert_eq!(c["auth_key"], "k2");
    assert_eq!(c["user_agent"], "old-sdk");
    assert_eq!(c["client_address"], "10.0.0.1");
    assert_eq!(c["calls"], 1000);
    assert_eq!(c["first_seen"], "2026-10-01T08:00:00Z");
    assert_eq!(c["last_seen"], "2026-11-28T11:00:00Z");

    let all = build(&ledger(), NOW, None);
    let v: serde_json::Value = serde_json::from_str(&render_json(&all)).unwrap();
    assert!(v["since"].is_null());
}

#[test]
fn table_shows_app_lines_days_and_callers() {
    let t = render_table(&build(&ledger(), NOW, Some(7 * DAY)));
    assert!(t.starts_with("pusher-cutover report generated 2026-11-28T12:00:00Z; window: "));
    assert!(t.contains("app 4242: legacy_trigger 1000, legacy_stats 3, total 1003\n"));
    assert!(t.contains("app 9: legacy_trigger 0, legacy_stats 0, total 0\n"));
    assert!(t.contains("\n2026-11-23  900\n"));
    assert!(t.contains("\n2026-11-22  0\n"));
    let row = t.lines().find(|l| l.contains("old-sdk")).unwrap();
    assert!(row.contains("legacy_trigger"));
    assert!(row.contains("k2"));
    assert!(row.contains(" 1000 "));
    assert!(row.contains("2026-11-28T11:00:00Z"));
    // Aligned: CALLS ends at the same column in the header and the rows.
    let header = t.lines().find(|l| l.starts_with("ROUTE")).unwrap();
    let end = header.find("CALLS").unwrap() + "CALLS".len();
    assert_eq!(&row[end - 4..end], "1000");
}

#[test]
fn table_keeps_hostile_strings_in_their_columns() {
    let hostile = "\u{1b}[2J\r\nevil\t\u{202e}\u{4e2d}".repeat(20);
    let usage = Usage {
        instance: "i-1".into(),
        recorded_since: None,
        apps: vec![app(
            "a\nb",
            vec![
                caller(Trigger, &hostile, &hostile, 12, NOW),
                caller(Trigger, "k", "plain", 7, NOW),
            ],
            vec![hourly(Trigger, NOW, 19)],
        )],
    };
    let t = render_table(&build(&usage, NOW, Some(DAY)));
    assert!(
        t.chars()
            .all(|c| c == '\n' || c == ' ' || c.is_ascii_graphic())
    );
    assert!(t.contains("app a\\u{a}b: legacy_trigger 19, legacy_stats 0, total 19\n"));
    let header = t.lines().find(|l| l.starts_with("ROUTE")).unwrap();
    let calls_end = header.find("CALLS").unwrap() + "CALLS".len();
    let rows: Vec<_> = t
        .lines()
        .filter(|l| l.starts_with("legacy_trigger"))
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(&rows[0][calls_end - 2..calls_end], "12");
    assert_eq!(&rows[1][calls_end - 1..calls_end], "7");
    assert!(rows[0].contains("..."));
}

#[test]
fn html_draws_one_series_per_app_and_escapes() {
    let mut usage = ledger();
    usage.apps[1].callers[0].key.user_agent =
        "<script>alert(1)</script> \"quotes\" \u{202e}reversed\u{2066}".into();
    usage.apps[2].app_id = "\"><b>77".into();
    let h = render_html(&build(&usage, NOW, Some(7 * DAY)));
    assert!(h.starts_with("<!DOCTYPE html>"));
    assert_eq!(h.matches("class=\"series\"").count(), 4);
    assert_eq!(h.matches("<polyline ").count(), 4);
    assert!(h.contains("<polyline class=\"series\" data-app=\"4242\""));
    assert!(h.contains("<polyline class=\"series\" data-app=\"&quot;&gt;&lt;b&gt;77\""));
    assert!(!h.contains("<script"));
    assert!(!h.contains("\"quotes\""));
    assert!(h.contains("&lt;script&gt;alert(1)&lt;/script&gt; &quot;quotes&quot;"));
    // Bidirectional controls would reorder the cell: replaced.
    assert!(!h.contains('\u{202e}') && !h.contains('\u{2066}'));
    assert!(h.contains("\u{fffd}reversed\u{fffd}"));
    assert!(!h.contains("<b>"));
    assert_eq!(h.matches("<li>").count(), 4);
    assert!(h.contains(">1000<"));
    assert!(h.contains("legacy_trigger 1000, legacy_stats 3, total 1003"));
    assert!(h.contains(">2026-11-21<"));
    assert!(h.contains(">2026-11-28<"));
    assert!(!h.contains("src=") && !h.contains("href="));
    assert_eq!(h, render_html(&build(&usage, NOW, Some(7 * DAY))));
}

#[test]
fn html_without_apps_is_still_a_page() {
    let h = render_html(&build(&Usage::default(), NOW, None));
    assert!(h.starts_with("<!DOCTYPE html>"));
    assert!(h.contains("No deprecated calls recorded."));
    assert!(h.contains("</svg>"));
    assert!(!h.contains("<polyline"));
    assert!(h.trim_end().ends_with("</html>"));
}

#[test]
fn used_since_boundaries() {
    let last = datetime!(2026-11-28 10:15 UTC);
    let by_caller = Usage {
        instance: "i-1".into(),
        recorded_since: None,
        apps: vec![app("1", vec![caller(Trigger, "k", "ua", 1, last)], vec![])],
    };
    assert!(used_since(&by_caller, last));
    assert!(!used_since(&by_caller, last + Duration::NANOSECOND));

    let hour = datetime!(2026-11-28 10:00 UTC);
    let by_bucket = Usage {
        instance: "i-1".into(),
        recorded_since: None,
        apps: vec![app("1", vec![], vec![hourly(Stats, hour, 1)])],
    };
    assert!(used_since(
        &by_bucket,
        hour + Duration::HOUR - Duration::NANOSECOND
    ));
    assert!(!used_since(&by_bucket, hour + Duration::HOUR));
    let zero = Usage {
        instance: "i-1".into(),
        recorded_since: None,
        apps: vec![app("1", vec![], vec![hourly(Stats, hour, 0)])],
    };
    assert!(!used_since(&zero, hour));
    assert!(!used_since(
        &Usage::default(),
        PrimitiveDateTime::MIN.assume_utc()
    ));
}

fn any_time() -> impl Strategy<Value = OffsetDateTime> {
    let near = NOW.unix_timestamp();
    (
        prop_oneof![
            (near - 40 * 86_400..near + 86_400),
            (-377_705_116_800i64..=253_402_300_799),
        ],
        -23i8..=23,
    )
        .prop_map(|(secs, h)| {
            let t = OffsetDateTime::from_unix_timestamp(secs).unwrap_or(NOW);
            UtcOffset::from_hms(h, 0, 0)
                .ok()
                .and_then(|o| t.checked_to_offset(o))
                .unwrap_or(t)
        })
}

fn any_route() -> impl Strategy<Value = RouteKind> {
    prop_oneof![Just(Stats), Just(Trigger)]
}

fn any_library() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(
            crate::telemetry::fingerprint::Library::ALL
                .map(|l| l.as_str().to_owned())
                .to_vec()
        ),
        any::<String>(),
    ]
}

fn any_usage() -> impl Strategy<Value = Usage> {
    let site =
        (any::<String>(), any::<String>(), any::<u64>()).prop_map(|(event, channel, calls)| {
            CallSite {
                event,
                channel,
                calls,
            }
        });
    let caller = (
        (any_route(), any::<String>(), any_library(), any::<String>()),
        (any::<String>(), any::<String>(), any::<String>()),
        (any::<u64>(), any_time(), any_time()),
        proptest::collection::vec(site, 0..4),
    )
        .prop_map(
            |(
                (route, auth_key, library, fingerprint),
                (user_agent, client_address, instance),
                (calls, first_seen, last_seen),
                call_sites,
            )| Caller {
                key: CallerKey {
                    route,
                    auth_key,
                    library,
                    fingerprint,
                    user_agent,
                    client_address,
                    instance,
                },
                calls,
                first_seen,
                last_seen,
                call_sites,
            },
        );
    let bucket = (any_route(), any_time(), any::<u64>())
        .prop_map(|(route, hour, calls)| HourlyCount { route, hour, calls });
    let app = (
        any::<String>(),
        proptest::collection::vec(caller, 0..4),
        proptest::collection::vec(bucket, 0..6),
    )
        .prop_map(|(app_id, callers, hourly)| AppUsage {
            app_id,
            callers,
            hourly,
        });
    (
        proptest::collection::vec(app, 0..4),
        proptest::option::of(any_time()),
        any::<String>(),
    )
        .prop_map(|(apps, recorded_since, instance)| Usage {
            instance,
            recorded_since,
            apps,
        })
}

proptest! {
    #[test]
    fn never_panics(
        usage in any_usage(),
        now in any_time(),
        since in proptest::option::of(prop_oneof![
            (0u64..60 * 86_400).prop_map(std::time::Duration::from_secs),
            any::<u64>().prop_map(std::time::Duration::from_secs),
        ]),
        configured in proptest::collection::vec(any::<String>(), 0..3),
    ) {
        let report = build_for(&usage, now, since, &configured);
        let mut ids: Vec<&String> = usage.apps.iter().map(|a| &a.app_id).chain(&configured).collect();
        ids.sort();
        ids.dedup();
        prop_assert!(report.apps.len() >= ids.len().min(usage.apps.len()));
        prop_assert!(report.apps.len() <= usage.apps.len() + configured.len());
        for app in &report.apps {
            prop_assert!(app.daily.len() <= MAX_DAYS);
            prop_assert_eq!(app.deprecated_calls.len(), RouteKind::LEGACY.len());
            prop_assert!(app.chart.len() <= MAX_DAYS);
        }
        let json: Result<serde_json::Value, _> = serde_json::from_str(&render_json(&report));
        prop_assert!(json.is_ok());
        let table = render_table(&report);
        prop_assert!(table.chars().all(|c| c == '\n' || c == ' ' || c.is_ascii_graphic()));
        let html = render_html(&report);
        prop_assert_eq!(html.matches("class=\"series\"").count(), report.apps.len());
        prop_assert!(!html.contains("<script"));
        prop_assert!(html.chars().all(|c| c == '\n' || !c.is_control()));
        let _ = used_since(&usage, now);
        let gate = render_uses(&uses_since(&usage, now), now);
        prop_assert!(gate.chars().all(|c| c == '\n' || c == ' ' || c.is_ascii_graphic()));
    }
}
