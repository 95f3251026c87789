//! Tests of the progress view: statuses, trend, partial buckets, grouping
//! by library, configured apps, call sites, merged reports, the gate.

use super::tests::{DAY, NOW, app, caller, hourly, ledger};
use super::*;
use time::macros::datetime;

use RouteKind::LegacyTrigger as Trigger;

fn find<'a>(r: &'a Report, id: &str) -> &'a AppReport {
    r.apps.iter().find(|a| a.app_id == id).expect("app")
}

fn site(event: &str, channel: &str, calls: u64) -> CallSite {
    CallSite {
        event: event.into(),
        channel: channel.into(),
        calls,
    }
}

/// Four apps: active (a call an hour ago), quiet (two days ago), stopped
/// (ten days ago), never seen; the ledger recorded since 60 days ago.
fn progress_ledger(recorded_since: Option<OffsetDateTime>) -> Usage {
    let hour_ago = datetime!(2026-11-28 11:00 UTC);
    let two_days = datetime!(2026-11-26 09:00 UTC);
    let ten_days = datetime!(2026-11-18 09:00 UTC);
    Usage {
        instance: "i-1".into(),
        recorded_since,
        apps: vec![
            app(
                "active",
                vec![caller(Trigger, "k", "ua", 30, hour_ago)],
                vec![
                    hourly(Trigger, hour_ago, 10),
                    hourly(Trigger, two_days, 10),
                    hourly(Trigger, ten_days, 10),
                ],
            ),
            app(
                "quiet",
                vec![caller(Trigger, "k", "ua", 5, two_days)],
                vec![hourly(Trigger, two_days, 5)],
            ),
            app(
                "stopped",
                vec![caller(Trigger, "k", "ua", 7, ten_days)],
                vec![hourly(Trigger, ten_days, 7)],
            ),
        ],
    }
}

#[test]
fn statuses_and_counts() {
    let covered = Some(datetime!(2026-09-29 00:00 UTC));
    let r = build_for(
        &progress_ledger(covered),
        NOW,
        Some(7 * DAY),
        &["never".into(), "quiet".into()],
    );
    assert!(r.covers_window);
    let ids: Vec<_> = r.apps.iter().map(|a| a.app_id.as_str()).collect();
    assert_eq!(ids, ["active", "quiet", "never", "stopped"]);
    let a = find(&r, "active");
    assert_eq!(a.status, Status::Active);
    assert_eq!((a.last_24h, a.last_7d, a.window), (10, 20, 20));
    assert_eq!(a.last_call, Some(datetime!(2026-11-28 11:00 UTC)));
    assert_eq!(a.since_last_call_seconds, Some(3600));
    let t = a.trend.as_ref().expect("trend");
    assert_eq!(
        (t.previous, t.direction, t.change_percent),
        (10, Direction::Up, Some(100))
    );
    assert!(t.previous_covered);
    assert!(!a.configured);

    let q = find(&r, "quiet");
    assert_eq!(q.status, Status::Quiet);
    assert!(q.configured);
    assert_eq!(status_text(q), "quiet for 2d 3h");

    // Calls stopped ten days ago: done in a 7-day window the ledger covers.
    let s = find(&r, "stopped");
    assert_eq!(s.status, Status::Done);
    assert_eq!(s.window, 0);
    assert_eq!(s.last_call, Some(datetime!(2026-11-18 09:00 UTC)));
    assert_eq!(s.trend.as_ref().map(|t| t.direction), Some(Direction::Down));
    // Configured, never seen: listed with zeros, done too.
    let n = find(&r, "never");
    assert_eq!((n.status, n.window, n.last_call), (Status::Done, 0, None));
    assert!(n.configured && n.callers.is_empty());
    let t = render_table(&r);
    let done = t.split("\napp stopped: ").nth(1).expect("stopped's part");
    assert!(
        done.starts_with(
            "legacy_trigger 0, legacy_stats 0, total 0\nstatus: done; last call \
             2026-11-18T09:00:00Z (10d 3h ago); last 24h 0, last 7d 0, window 0; trend: down \
             from 7 in the previous window (-100%)\nno calls in the window\nno callers in the \
             window\n"
        ),
        "{done}"
    );

    // The same window, but the ledger started inside it: nothing is done.
    for recorded in [None, Some(datetime!(2026-11-25 00:00 UTC))] {
        let r = build_for(
            &progress_ledger(recorded),
            NOW,
            Some(7 * DAY),
            &["never".into()],
        );
        assert!(!r.covers_window);
        assert_eq!(find(&r, "stopped").status, Status::Unproven);
        assert_eq!(find(&r, "never").status, Status::Unproven);
        assert_eq!(find(&r, "quiet").status, Status::Quiet);
        let t = render_table(&r);
        assert!(t.contains("unproven, not done"), "{t}");
    }
    // All time: done cannot be proven either, and there is no trend.
    let r = build(&progress_ledger(covered), NOW, None);
    assert_eq!(find(&r, "stopped").status, Status::Quiet);
    assert!(find(&r, "active").trend.is_none());
    assert_eq!(find(&r, "active").window, 30);
}

/// A ledger marked open misses calls from its writer's last write on:
/// the trend's previous window is covered only when every mark is at or
/// after the window's start (the last write is not before the mark).
#[test]
fn an_open_ledger_leaves_the_previous_window_covered_only_after_its_mark() {
    let covered = Some(datetime!(2026-09-29 00:00 UTC));
    let usage = progress_ledger(covered);
    let open = |since| super::evidence::OpenLedger {
        ledger: "d".into(),
        instance: "i-1".into(),
        since,
    };
    let previous_covered = |open: &[super::evidence::OpenLedger]| {
        let r = super::build_over(&usage, open, NOW, Some(7 * DAY), &[]);
        assert_eq!(
            r.covers_window,
            open.is_empty(),
            "an open ledger never covers the window"
        );
        let t = find(&r, "active").trend.clone().expect("trend");
        t.previous_covered
    };
    assert!(previous_covered(&[]));
    // Marked inside the window: what it misses is in the window only.
    assert!(previous_covered(&[open(Some(
        datetime!(2026-11-27 00:00 UTC)
    ))]));
    // Marked before the window's start, or when unknown: not covered.
    assert!(!previous_covered(&[open(Some(
        datetime!(2026-11-20 00:00 UTC)
    ))]));
    assert!(!previous_covered(&[open(None)]));
    assert!(!previous_covered(&[
        open(Some(datetime!(2026-11-27 00:00 UTC))),
        open(Some(datetime!(2026-11-01 00:00 UTC))),
    ]));
}

#[test]
fn short_windows_are_charted_by_the_hour_with_partial_buckets() {
    let now = datetime!(2026-11-28 12:30 UTC);
    let r = build(&progress_ledger(None), now, Some(3 * DAY));
    assert_eq!(r.resolution, Resolution::Hour);
    let a = find(&r, "active");
    // 2026-11-25 12:00 (partial: the window starts inside it) .. 2026-11-28 12:00.
    assert_eq!(a.chart.len(), 73);
    let first = &a.chart[0];
    assert_eq!(
        (first.start.as_str(), first.partial),
        ("2026-11-25T12:00Z", true)
    );
    let last = a.chart.last().expect("points");
    assert_eq!(
        (last.start.as_str(), last.partial),
        ("2026-11-28T12:00Z", true)
    );
    assert!(a.chart[1..72].iter().all(|p| !p.partial));
    let eleven = a.chart.iter().find(|p| p.start == "2026-11-28T11:00Z");
    assert_eq!(eleven.map(|p| p.calls), Some(10));
    let t = render_table(&r);
    assert!(t.contains("hourly calls (UTC):\n"), "{t}");
    assert!(t.contains("\n2026-11-28T12:00Z  0  (partial)\n"), "{t}");
    assert!(t.contains("\n2026-11-28T11:00Z  10\n"), "{t}");
    let h = render_html(&r);
    assert!(h.contains("Deprecated calls per hour (UTC)"));
    assert!(h.contains("class=\"dot partial\""));
    assert!(h.contains("class=\"partial-band\""));

    // Longer windows by the day; today is partial, and so is the first day.
    let r = build(&progress_ledger(None), now, Some(4 * DAY));
    assert_eq!(r.resolution, Resolution::Day);
    let a = find(&r, "active");
    assert_eq!(a.partial_day, "2026-11-28");
    let partial: Vec<_> = a
        .chart
        .iter()
        .filter(|p| p.partial)
        .map(|p| p.start.as_str())
        .collect();
    assert_eq!(partial, ["2026-11-24", "2026-11-28"]);
}

#[test]
fn the_table_covers_the_whole_window() {
    let r = build(&ledger(), NOW, Some(30 * DAY));
    let t = render_table(&r);
    for day in [
        "2026-10-29  0  (partial)",
        "2026-11-01  4",
        "2026-11-28  0  (partial)",
    ] {
        assert!(t.contains(&format!("\n{day}\n")), "{day}: {t}");
    }
    // Over 62 days, days are summed by seven, ending with today.
    let t = render_table(&build(&ledger(), NOW, Some(100 * DAY)));
    assert!(t.contains("weekly (7-day) calls (UTC):\n"), "{t}");
    assert!(
        t.contains("\n2026-11-22..2026-11-28  903  (partial)\n"),
        "{t}"
    );
    assert!(t.contains("\n2026-11-15..2026-11-21  607\n"), "{t}");
    assert!(t.contains("\n2026-11-01..2026-11-07  4\n"), "{t}");
    assert!(
        t.contains("\n2026-08-20..2026-08-22  0  (partial)\n"),
        "{t}"
    );
}

/// A bucket stamped far after `now` (a sidecar with a badly wrong clock)
/// widens the charts by a day at most: the window's own days and hours
/// are all still there, and the far bucket counts in the totals only.
#[test]
fn a_bucket_stamped_far_ahead_does_not_push_the_window_out() {
    let far = datetime!(2028-11-28 10:00 UTC);
    let usage = Usage {
        instance: "i-1".into(),
        recorded_since: None,
        apps: vec![app(
            "7",
            vec![caller(
                Trigger,
                "k",
                "agent",
                501,
                datetime!(2026-11-27 10:30 UTC),
            )],
            vec![
                hourly(Trigger, datetime!(2026-11-27 10:00 UTC), 500),
                hourly(Trigger, far, 1),
            ],
        )],
    };
    // App 7's daily keys over 30 days, and its first and last hourly
    // points over 3.
    let daily = |usage: &Usage| find(&build(usage, NOW, Some(30 * DAY)), "7").daily.clone();
    let hours = |usage: &Usage| {
        let r = build(usage, NOW, Some(3 * DAY));
        let chart = &find(&r, "7").chart;
        let start = |p: Option<&Point>| p.map(|p| p.start.clone());
        (start(chart.first()), start(chart.last()))
    };
    let first_last =
        |d: &BTreeMap<String, u64>| (d.keys().next().cloned(), d.keys().last().cloned());
    let some = |s: &str| Some(s.to_owned());

    let d = daily(&usage);
    assert_eq!(d.get("2026-11-27"), Some(&500), "{d:?}");
    assert_eq!(first_last(&d), (some("2026-10-29"), some("2026-11-28")));
    assert_eq!(d.values().sum::<u64>(), 500);
    // By the hour: the whole three days from the window's start, now's hour last.
    assert_eq!(
        hours(&usage),
        (some("2026-11-25T12:00Z"), some("2026-11-28T12:00Z"))
    );

    // One day ahead still shows, as the day after today.
    let mut near = usage.clone();
    near.apps[0].hourly[1].hour = datetime!(2026-11-29 02:00 UTC);
    let d = daily(&near);
    assert_eq!(d.get("2026-11-29"), Some(&1));
    assert_eq!(first_last(&d).0, some("2026-10-29"));
    assert_eq!(
        hours(&near),
        (some("2026-11-25T12:00Z"), some("2026-11-29T02:00Z"))
    );
}

#[test]
fn callers_grouped_by_library_with_recipes_and_call_sites() {
    let mut u = ledger();
    let callers = &mut u.apps[1].callers;
    callers[0].key.library = "pypi-pusher-0.6-0.8".into();
    callers[0].key.instance = "pod-b".into();
    callers[0].call_sites = (0..5)
        .map(|i| site(&format!("ev-{i}"), "private-user-{id}", 10 - i))
        .collect();
    callers[4].key.library = "<b>weird</b>".into();
    let r = build(&u, NOW, Some(7 * DAY));
    assert!(r.merged, "callers from two instances");
    let a = find(&r, "4242");
    let libs: Vec<_> = a.libraries.iter().map(|l| l.library.as_str()).collect();
    // By the latest last call: k2 (unknown, 11:00 today), k1 (pypi, yesterday), k4.
    assert_eq!(libs, ["unknown", "pypi-pusher-0.6-0.8", "<b>weird</b>"]);
    let pypi = &a.libraries[1];
    assert_eq!(pypi.name, "PyPI pusher 0.6–0.8");
    assert_eq!(pypi.status, Status::Quiet);
    let recipe = pypi.recipe.as_ref().expect("known families have a recipe");
    assert_eq!(
        recipe.first_current.as_deref(),
        Some("PyPI pusher 1.0.0 (2015-04), a rewrite")
    );
    assert!(a.libraries[0].recipe.is_some(), "unknown has one too");
    assert!(a.libraries[2].recipe.is_none());
    assert_eq!(a.callers[0].status, Status::Active);
    assert_eq!(a.callers[1].status, Status::Quiet);

    let t = render_table(&r);
    assert!(t.contains("library PyPI pusher 0.6-0.8 [pypi-pusher-0.6-0.8]: quiet, 1 caller(s)"));
    assert!(t.contains("  first current release: PyPI pusher 1.0.0 (2015-04), a rewrite\n"));
    assert!(t.contains("  call site: event ev-0 channel private-user-{id}: 10 calls\n"));
    assert!(t.contains("  call site: event ev-2 channel private-user-{id}: 8 calls\n"));
    assert!(!t.contains("ev-3"));
    assert!(t.contains("  ... and 2 more call site(s)"));
    let header = t.lines().find(|l| l.starts_with("ROUTE")).expect("header");
    assert!(header.contains("INSTANCE"), "merged: {header}");
    assert!(
        t.lines()
            .any(|l| l.starts_with("legacy_trigger") && l.contains("pod-b"))
    );

    let v: serde_json::Value = serde_json::from_str(&render_json(&r)).expect("json");
    let c = &v["apps"][0]["callers"][1];
    assert_eq!(c["instance"], "pod-b");
    assert_eq!(c["library"], "pypi-pusher-0.6-0.8");
    assert_eq!(c["call_sites"].as_array().map(Vec::len), Some(5));
    assert_eq!(
        c["call_sites"][4],
        serde_json::json!({"event": "ev-4", "channel": "private-user-{id}", "calls": 6})
    );
    let a = &v["apps"][0];
    for field in [
        "last_24h",
        "last_7d",
        "window",
        "last_call",
        "trend",
        "status",
        "libraries",
        "chart",
    ] {
        assert!(!a[field].is_null(), "{field}");
    }
    assert_eq!(a["status"], "active");
    assert_eq!(
        a["libraries"][1]["recipe"]["first_current"],
        "PyPI pusher 1.0.0 (2015-04), a rewrite"
    );
    assert_eq!(v["merged"], true);
    assert_eq!(v["resolution"], "day");

    let h = render_html(&r);
    assert_eq!(h.matches("<li class=\"site\">").count(), 5);
    assert!(h.contains("<th>Instance</th>") && h.contains("<td>pod-b</td>"));
    assert!(h.contains("&lt;b&gt;weird&lt;/b&gt;") && !h.contains("<b>"));
    assert!(h.contains("PyPI pusher 1.0.0 (2015-04), a rewrite"));

    // One instance: no instance column.
    let t = render_table(&build(&ledger(), NOW, Some(7 * DAY)));
    assert!(!t.contains("INSTANCE"));
}

#[test]
fn the_gate_names_apps_and_callers() {
    let u = ledger();
    let cutoff = NOW - Duration::DAY;
    let uses = uses_since(&u, cutoff);
    let ids: Vec<_> = uses.iter().map(|a| a.app_id.as_str()).collect();
    assert_eq!(ids, ["4242", "77"]);
    assert_eq!(uses[0].callers.len(), 1);
    let text = render_uses(&uses, NOW);
    assert!(
        text.contains("  app 4242: last call 2026-11-28T11:00:00Z (1h 0m ago)\n"),
        "{text}"
    );
    assert!(
        text.contains(
            "    caller legacy_trigger auth_key k2 library unknown user agent old-sdk from \
         10.0.0.1 (instance i-1): 1000 calls, last call 2026-11-28T11:00:00Z (1h 0m ago)\n"
        ),
        "{text}"
    );
    assert!(text.contains("  app 77: "));
    assert!(
        text.chars()
            .all(|c| c == '\n' || c == ' ' || c.is_ascii_graphic())
    );
    assert!(uses_since(&u, NOW).is_empty());
    assert!(!used_since(&u, NOW));
}
