//! The ledger's tests: aggregation, the caller cap, changes, call sites,
//! the kill switch.

use super::*;
use crate::telemetry::usage::OTHER;

const T: u64 = 1_795_888_046;

/// Records a trigger-or-stats call of `ua` at `address`, from library
/// `unknown` with fingerprint `fp`, event `ev` on channel `c`.
pub(in crate::telemetry) fn rec(
    l: &Ledger,
    app_id: &str,
    route: RouteKind,
    auth_key: &str,
    user_agent: &str,
    client_address: &str,
    now: u64,
) {
    l.record(&LedgerCall {
        app_id,
        route,
        auth_key,
        library: "unknown",
        fingerprint: "fp",
        user_agent,
        client_address,
        event: "ev",
        channel: "c",
        now,
    });
}

fn total_calls(u: &Usage) -> u64 {
    u.apps
        .iter()
        .flat_map(|a| &a.callers)
        .map(|c| c.calls)
        .sum()
}

#[test]
fn aggregates_per_caller_and_hour() {
    let l = Ledger::new(100, 35, "i-1");
    for i in 0..5 {
        rec(
            &l,
            "1",
            RouteKind::LegacyTrigger,
            "k",
            "ua",
            "10.0.0.1",
            T + i * 1000,
        );
    }
    rec(&l, "1", RouteKind::LegacyStats, "k", "ua", "10.0.0.1", T);
    let u = l.snapshot(T);
    let app = &u.apps[0];
    assert_eq!(app.callers.len(), 2);
    let trig = app
        .callers
        .iter()
        .find(|c| c.key.route == RouteKind::LegacyTrigger)
        .expect("trigger caller");
    assert_eq!(trig.calls, 5);
    assert_eq!(unix(trig.first_seen), T);
    assert_eq!(unix(trig.last_seen), T + 4000);
    let hours: u64 = app.hourly.iter().map(|h| h.calls).sum();
    assert_eq!(hours, 6);
    assert!(app.hourly.iter().all(|h| unix(h.hour).is_multiple_of(HOUR)));
}

#[test]
fn callers_past_the_cap_become_other() {
    let l = Ledger::new(3, 35, "i-1");
    for i in 0..10_000 {
        rec(
            &l,
            "1",
            RouteKind::LegacyTrigger,
            "k",
            &format!("ua-{i}"),
            "10.0.0.1",
            T,
        );
    }
    // A known caller keeps being counted on its own.
    rec(
        &l,
        "1",
        RouteKind::LegacyTrigger,
        "k",
        "ua-0",
        "10.0.0.1",
        T,
    );
    let u = l.snapshot(T);
    let callers = &u.apps[0].callers;
    assert_eq!(callers.len(), 4, "3 distinct + other");
    let other = callers
        .iter()
        .find(|c| c.key.auth_key == OTHER)
        .expect("other");
    assert_eq!(other.calls, 9_997);
    assert_eq!(total_calls(&u), 10_001);
    let first = callers
        .iter()
        .find(|c| c.key.user_agent == "ua-0")
        .expect("ua-0");
    assert_eq!(first.calls, 2);
}

#[test]
fn changes_are_taken_once_and_can_be_restored() {
    let l = Ledger::new(100, 35, "i-1");
    rec(&l, "1", RouteKind::LegacyTrigger, "k", "ua", "10.0.0.1", T);
    rec(&l, "1", RouteKind::LegacyTrigger, "k", "ua", "10.0.0.1", T);
    let c = l.take_changes(T);
    assert_eq!(c.callers.len(), 1);
    assert_eq!(c.callers[0].1.calls, 2, "absolute totals");
    assert_eq!(c.hourly.len(), 1);
    assert!(l.take_changes(T).is_empty());
    l.restore_changes(c.clone());
    assert_eq!(l.take_changes(T), c);
}

#[test]
fn load_then_record_continues_the_counts() {
    let a = Ledger::new(2, 35, "i-1");
    rec(
        &a,
        "1",
        RouteKind::LegacyTrigger,
        "k",
        "ua-1",
        "10.0.0.1",
        T,
    );
    rec(
        &a,
        "1",
        RouteKind::LegacyTrigger,
        "k",
        "ua-2",
        "10.0.0.1",
        T,
    );
    let b = Ledger::new(2, 35, "i-1");
    b.load(a.snapshot(T), 0);
    rec(
        &b,
        "1",
        RouteKind::LegacyTrigger,
        "k",
        "ua-1",
        "10.0.0.1",
        T + 5,
    );
    rec(
        &b,
        "1",
        RouteKind::LegacyTrigger,
        "k",
        "ua-3",
        "10.0.0.1",
        T + 5,
    );
    let u = b.snapshot(T);
    assert_eq!(total_calls(&u), 4);
    assert!(
        u.apps[0].callers.iter().any(|c| c.key.auth_key == OTHER),
        "the cap survives a restart"
    );
}

/// A restart under another instance name (a container's new `HOSTNAME`)
/// loads the earlier run's callers, and they hold no place under the cap:
/// the new run's callers, the same clients among them, are told apart.
#[test]
fn an_earlier_instances_callers_hold_no_place_under_the_cap() {
    let a = Ledger::new(3, 35, "host-a");
    for ua in ["ua-1", "ua-2", "ua-3"] {
        rec(&a, "1", RouteKind::LegacyTrigger, "k", ua, "10.0.0.1", T);
    }
    let b = Ledger::new(3, 35, "host-b");
    b.load(a.snapshot(T), 0);
    for ua in ["ua-1", "ua-4", "ua-5"] {
        rec(
            &b,
            "1",
            RouteKind::LegacyTrigger,
            "k",
            ua,
            "10.0.0.1",
            T + 5,
        );
    }
    rec(
        &b,
        "1",
        RouteKind::LegacyTrigger,
        "k",
        "ua-6",
        "10.0.0.1",
        T + 5,
    );
    let u = b.snapshot(T + 5);
    let mine: Vec<&str> = u.apps[0]
        .callers
        .iter()
        .filter(|c| c.key.instance == "host-b")
        .map(|c| c.key.user_agent.as_str())
        .collect();
    assert_eq!(
        mine,
        ["ua-1", "ua-4", "ua-5", OTHER],
        "{:#?}",
        u.apps[0].callers
    );
    assert_eq!(u.apps[0].callers.len(), 7, "the earlier run's 3 kept");
    assert_eq!(total_calls(&u), 7);
}

/// This sidecar's callers recorded under an earlier fingerprint format
/// (last seen before the store took up the format in use) are never
/// matched again: like another instance's, they hold no place under the
/// cap, and go with the buckets of their time. Those since are summed
/// into `other` once as old, their calls kept.
#[test]
fn callers_of_an_earlier_fingerprint_format_hold_no_place() {
    let old = Ledger::new(3, 35, "host-a");
    for ua in ["ua-1", "ua-2", "ua-3"] {
        rec(&old, "1", RouteKind::LegacyTrigger, "k", ua, "10.0.0.1", T);
    }
    // The same sidecar after the upgrade, from T + 10 on.
    let l = Ledger::new(3, 35, "host-a");
    l.load(old.snapshot(T), T + 10);
    for ua in ["ua-4", "ua-5", "ua-6"] {
        rec(
            &l,
            "1",
            RouteKind::LegacyTrigger,
            "k",
            ua,
            "10.0.0.1",
            T + 10,
        );
    }
    rec(
        &l,
        "1",
        RouteKind::LegacyTrigger,
        "k",
        "ua-7",
        "10.0.0.1",
        T + 10,
    );
    let agents = |u: &Usage| -> Vec<String> {
        u.apps[0]
            .callers
            .iter()
            .map(|c| c.key.user_agent.clone())
            .collect()
    };
    assert_eq!(
        agents(&l.snapshot(T + 10)),
        ["ua-1", "ua-2", "ua-3", "ua-4", "ua-5", "ua-6", OTHER],
        "three new places, the seventh caller over the cap"
    );
    // Past the retention, the old ones go with their calls; the new ones
    // are summed into `other` with theirs.
    let later = T + 10 + 36 * DAY;
    let u = l.snapshot(later);
    assert_eq!(agents(&u), [OTHER]);
    assert_eq!(total_calls(&u), 4, "ua-4 to ua-7, not ua-1 to ua-3");
}

/// A caller of this sidecar's as old as the buckets kept is summed into
/// its route's `other`, its calls and call sites kept, and its place under
/// the cap goes to the next new sender, whether a write (taking the
/// changes) or a read of the ledger pruned it.
#[test]
fn a_callers_place_is_freed_once_it_is_as_old_as_the_buckets() {
    for stored in [false, true] {
        let l = Ledger::new(1, 30, "i-1");
        for i in 0..3 {
            rec(
                &l,
                "1",
                RouteKind::LegacyTrigger,
                "k",
                "a",
                "10.0.0.1",
                T + i,
            );
        }
        rec(
            &l,
            "1",
            RouteKind::LegacyTrigger,
            "k",
            "b",
            "10.0.0.1",
            T + 5,
        );
        let later = T + 31 * DAY;
        if stored {
            let changes = l.take_changes(later);
            let other = changes
                .callers
                .iter()
                .find(|(_, c)| c.key.is_other())
                .map(|(_, c)| c.calls);
            assert_eq!(other, Some(4), "the new total is written");
        } else {
            // A read of the ledger (`/usage`) prunes it too.
            l.snapshot(later);
        }
        rec(
            &l,
            "1",
            RouteKind::LegacyTrigger,
            "k",
            "c",
            "10.0.0.9",
            later,
        );
        let u = l.snapshot(later);
        let callers: Vec<(&str, u64)> = u.apps[0]
            .callers
            .iter()
            .map(|c| (c.key.user_agent.as_str(), c.calls))
            .collect();
        assert_eq!(callers, [("c", 1), (OTHER, 4)], "stored: {stored}");
        let other = &u.apps[0].callers[1];
        assert_eq!(unix(other.first_seen), T, "stored: {stored}");
        assert_eq!(unix(other.last_seen), T + 5, "stored: {stored}");
        assert_eq!(other.call_sites.len(), 1, "stored: {stored}");
        assert_eq!(other.call_sites[0].calls, 4, "stored: {stored}");
    }
}

/// Callers of another instance name go once their last call is as old as
/// the buckets kept, with or without a store; this sidecar's are summed
/// into its `other`.
#[test]
fn an_earlier_instances_callers_go_with_the_buckets() {
    let a = Ledger::new(100, 30, "host-a");
    rec(&a, "1", RouteKind::LegacyTrigger, "k", "old", "10.0.0.1", T);
    rec(
        &a,
        "1",
        RouteKind::LegacyTrigger,
        "k",
        "late",
        "10.0.0.1",
        T + 2 * DAY,
    );
    let callers = |l: &Ledger, now: u64| -> Vec<(String, String)> {
        l.snapshot(now).apps[0]
            .callers
            .iter()
            .map(|c| (c.key.instance.clone(), c.key.user_agent.clone()))
            .collect()
    };
    let pair = |i: &str, ua: &str| (i.to_owned(), ua.to_owned());
    for stored in [false, true] {
        let b = Ledger::new(100, 30, "host-b");
        b.load(a.snapshot(T + 2 * DAY), 0);
        rec(
            &b,
            "1",
            RouteKind::LegacyTrigger,
            "k",
            "mine",
            "10.0.0.1",
            T,
        );
        let later = T + 31 * DAY;
        if stored {
            b.take_changes(later);
            assert_eq!(
                callers(&b, T),
                [pair("host-a", "late"), pair("host-b", OTHER)],
                "pruned by a write"
            );
        }
        // This sidecar's caller is as old: summed into its `other`.
        assert_eq!(
            callers(&b, later),
            [pair("host-a", "late"), pair("host-b", OTHER)],
            "stored: {stored}"
        );
        assert_eq!(
            callers(&b, later + 2 * DAY),
            [pair("host-b", OTHER)],
            "stored: {stored}"
        );
        assert!(
            b.snapshot(later + 2 * DAY).apps[0].hourly.is_empty(),
            "stored: {stored}"
        );
    }
}

#[test]
fn old_buckets_are_pruned() {
    let l = Ledger::new(100, 30, "i-1");
    l.recording_since(T);
    rec(&l, "1", RouteKind::LegacyTrigger, "k", "ua", "10.0.0.1", T);
    let later = T + 31 * DAY;
    let c = l.take_changes(later);
    assert_eq!(c.prune_before, later - 30 * DAY);
    assert!(l.snapshot(T).apps[0].hourly.is_empty());
    assert_eq!(
        l.snapshot(T).apps[0].callers[0].calls,
        1,
        "callers are kept"
    );
    // The dropped hours' calls are gone, so the ledger no longer vouches
    // for them: it records from the first hour it keeps whole.
    let kept = kept_from(later - 30 * DAY);
    assert!(
        kept >= later - 30 * DAY && kept.is_multiple_of(HOUR) && kept - (later - 30 * DAY) < HOUR
    );
    assert_eq!(c.recorded_since, Some(kept), "written with the changes");
    assert_eq!(
        l.snapshot(later).recorded_since.map(unix),
        Some(kept),
        "and in /usage"
    );
    assert_eq!(l.take_changes(later).recorded_since, None, "moved once");
    // An unknown start stays unknown: the ledger may have started later.
    let unknown = Ledger::new(100, 30, "i-1");
    assert_eq!(unknown.take_changes(later).recorded_since, None);
    assert_eq!(unknown.snapshot(later).recorded_since, None);
}

#[test]
fn call_sites_keep_the_top_and_sum_the_rest() {
    use crate::telemetry::usage::MAX_CALL_SITES;
    let l = Ledger::new(100, 35, "i-1");
    let call = |event: &str, channel: &str| {
        l.record(&LedgerCall {
            app_id: "1",
            route: RouteKind::LegacyTrigger,
            auth_key: "k",
            library: "unknown",
            fingerprint: "fp",
            user_agent: "",
            client_address: "127.0.0.1",
            event,
            channel,
            now: T,
        });
    };
    // Site i gets i + 1 calls, for more sites than are tracked.
    let sites = MAX_TRACKED_CALL_SITES + 10;
    for i in 0..sites {
        for _ in 0..=i {
            call(&format!("ev-{i}"), "c");
        }
    }
    let u = l.snapshot(T);
    let caller = &u.apps[0].callers[0];
    let listed = &caller.call_sites;
    assert_eq!(listed.len(), MAX_CALL_SITES + 1, "the top ones and `other`");
    let last = listed.last().expect("other");
    assert_eq!((last.event.as_str(), last.channel.as_str()), (OTHER, OTHER));
    // Nothing is lost: the sites add up to the caller's calls.
    assert_eq!(listed.iter().map(|s| s.calls).sum::<u64>(), caller.calls);
    // The tracked sites are the first ones seen; of those the busiest
    // are listed, busiest first.
    let top = MAX_TRACKED_CALL_SITES - 1;
    assert_eq!(listed[0].event, format!("ev-{top}"));
    assert_eq!(listed[0].calls, top as u64 + 1);
    assert!(
        listed[..MAX_CALL_SITES]
            .windows(2)
            .all(|w| w[0].calls >= w[1].calls)
    );
}

#[test]
fn the_instance_and_the_start_are_in_the_snapshot() {
    let l = Ledger::new(100, 35, "pod-7");
    assert_eq!(l.snapshot(T).recorded_since, None);
    l.recording_since(T + 10);
    l.recording_since(T);
    l.recording_since(T + 20);
    rec(&l, "1", RouteKind::LegacyTrigger, "k", "ua", "10.0.0.1", T);
    let u = l.snapshot(T);
    assert_eq!(u.instance, "pod-7");
    assert_eq!(u.recorded_since.map(unix), Some(T), "the earliest start");
    assert_eq!(u.apps[0].callers[0].key.instance, "pod-7");
}

/// While the kill switch is on, calls pass through unrecorded: the ledger
/// vouches for calls from the first second after it was last seen on
/// (its snapshots and writes while on, the moment it is turned off), and
/// each move is handed to the store once.
#[test]
fn the_kill_switch_moves_the_start_past_the_calls_it_let_through() {
    let l = Ledger::new(100, 35, "i-1");
    l.recording_since(T);
    let since = |u: Usage| u.recorded_since.map(unix);
    l.follow_bypass(false, T + 5);
    assert_eq!(since(l.snapshot(T + 5)), Some(T), "a switch that stays off");
    assert_eq!(l.take_changes(T + 5).recorded_since, None);

    l.follow_bypass(true, T + 10);
    assert_eq!(since(l.snapshot(T + 10)), Some(T + 11));
    assert_eq!(since(l.snapshot(T + 50)), Some(T + 51), "while it is on");
    let changes = l.take_changes(T + 60);
    assert_eq!(changes.recorded_since, Some(T + 61));
    assert!(!changes.is_empty(), "written even without calls");
    // A write that fails hands it out again.
    l.restore_changes(changes);
    assert_eq!(l.take_changes(T + 60).recorded_since, Some(T + 61));

    l.follow_bypass(false, T + 70);
    assert_eq!(
        since(l.snapshot(T + 100)),
        Some(T + 71),
        "from the switch-off on"
    );
    assert_eq!(l.take_changes(T + 100).recorded_since, Some(T + 71));
    assert_eq!(l.take_changes(T + 110).recorded_since, None, "written once");
    l.follow_bypass(false, T + 120);
    assert_eq!(since(l.snapshot(T + 120)), Some(T + 71), "stays off");
}

/// Counts loaded at `u64::MAX` (a ledger merged from remote `/usage`
/// answers, or written by a bug) stay there when a call is recorded:
/// neither a panic nor a wrap to 0.
#[test]
fn recording_saturates_counts() {
    let l = Ledger::new(100, 35, "i-1");
    rec(&l, "1", RouteKind::LegacyTrigger, "k", "ua", "10.0.0.1", T);
    let mut full = l.snapshot(T);
    let app = &mut full.apps[0];
    app.callers[0].calls = u64::MAX;
    for site in &mut app.callers[0].call_sites {
        site.calls = u64::MAX;
    }
    app.hourly[0].calls = u64::MAX;
    let l = Ledger::new(100, 35, "i-1");
    l.load(full, 0);
    rec(&l, "1", RouteKind::LegacyTrigger, "k", "ua", "10.0.0.1", T);
    let u = l.snapshot(T);
    let app = &u.apps[0];
    assert_eq!(app.callers[0].calls, u64::MAX);
    assert_eq!(app.callers[0].call_sites[0].calls, u64::MAX);
    assert_eq!(app.hourly[0].calls, u64::MAX);
}
