//! The store's tests: round trips, pruning, schema upgrades.

use super::*;
use crate::telemetry::ledger::tests::rec;
use crate::telemetry::ledger::{Ledger, LedgerCall};

const T: u64 = 1_795_888_046;

#[test]
fn round_trip_through_the_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = Ledger::new(100, 35, "i-1");
    for i in 0..7 {
        rec(
            &ledger,
            "4242",
            RouteKind::LegacyTrigger,
            "k",
            "ua",
            "10.0.0.1",
            T + i * 600,
        );
    }
    rec(
        &ledger,
        "4242",
        RouteKind::LegacyStats,
        "k",
        "ua\u{e9}'\"",
        "::1",
        T,
    );
    rec(
        &ledger,
        "7",
        RouteKind::LegacyStats,
        "k7",
        "",
        "10.0.0.2",
        T,
    );
    let mut store = Store::open(dir.path(), T, "i-1").expect("open");
    store.write(&ledger.take_changes(T)).expect("write");
    rec(
        &ledger,
        "4242",
        RouteKind::LegacyTrigger,
        "k",
        "ua",
        "10.0.0.1",
        T + 7200,
    );
    store
        .write(&ledger.take_changes(T + 7200))
        .expect("second write");
    drop(store);

    let reread = Store::open_read_only(dir.path())
        .expect("reopen")
        .load()
        .expect("load");
    ledger.recording_since(T);
    assert_eq!(reread, ledger.snapshot());
}

#[test]
fn prune_deletes_old_buckets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = Ledger::new(100, 30, "i-1");
    rec(
        &ledger,
        "1",
        RouteKind::LegacyTrigger,
        "k",
        "ua",
        "10.0.0.1",
        T,
    );
    let mut store = Store::open(dir.path(), T, "i-1").expect("open");
    store.write(&ledger.take_changes(T)).expect("write");
    store
        .write(&ledger.take_changes(T + 31 * 86_400))
        .expect("prune");
    let u = store.load().expect("load");
    assert!(u.apps[0].hourly.is_empty());
    assert_eq!(u.apps[0].callers.len(), 1);
}

#[test]
fn missing_database_is_an_error_for_readers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = Store::open_read_only(dir.path()).expect_err("no file");
    assert!(err.to_string().contains(FILE_NAME), "{err}");
}

/// The first release's schema, verbatim.
const V1_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS callers (
app_id TEXT NOT NULL,
route TEXT NOT NULL,
auth_key TEXT NOT NULL,
user_agent TEXT NOT NULL,
client_address TEXT NOT NULL,
calls INTEGER NOT NULL,
first_seen INTEGER NOT NULL,
last_seen INTEGER NOT NULL,
PRIMARY KEY (app_id, route, auth_key, user_agent, client_address)
);
CREATE TABLE IF NOT EXISTS hourly (
app_id TEXT NOT NULL,
route TEXT NOT NULL,
hour INTEGER NOT NULL,
calls INTEGER NOT NULL,
PRIMARY KEY (app_id, route, hour)
);
";

/// A ledger as the first release wrote it: two callers, one bucket.
fn v1_ledger(dir: &Path) {
    let conn = Connection::open(dir.join(FILE_NAME)).expect("create");
    conn.execute_batch(V1_SCHEMA).expect("v1 schema");
    conn.execute_batch(
        "INSERT INTO callers VALUES ('4242', 'legacy_trigger', 'k', 'ua', '10.0.0.1', 7, 1795880000, 1795888000);
         INSERT INTO callers VALUES ('4242', 'legacy_stats', 'k', '', '127.0.0.1', 2, 1795870000, 1795871000);
         INSERT INTO hourly VALUES ('4242', 'legacy_trigger', 1795885200, 7);",
    )
    .expect("v1 rows");
}

fn v1_expectations(u: &Usage) {
    let app = &u.apps[0];
    assert_eq!(app.app_id, "4242");
    assert_eq!(app.callers.len(), 2);
    let trigger = app
        .callers
        .iter()
        .find(|c| c.key.route == RouteKind::LegacyTrigger)
        .expect("trigger caller kept");
    assert_eq!((trigger.calls, trigger.key.user_agent.as_str()), (7, "ua"));
    assert_eq!(trigger.key.library, "unknown");
    assert_eq!(trigger.key.fingerprint, "");
    assert!(trigger.call_sites.is_empty());
    assert_eq!(app.hourly.len(), 1);
    assert_eq!(app.hourly[0].calls, 7);
}

#[test]
fn a_first_release_ledger_is_upgraded_in_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    v1_ledger(dir.path());

    // `report` reads it as it is, without writing.
    let read = Store::open_read_only(dir.path())
        .expect("read-only")
        .load()
        .expect("load v1");
    v1_expectations(&read);
    assert_eq!(
        read.recorded_since, None,
        "a v1 ledger says nothing of its start"
    );

    let mut store = Store::open(dir.path(), T, "pod-a").expect("upgrade");
    let version: i64 = store
        .conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .expect("version");
    assert_eq!(version, SCHEMA_VERSION);
    let upgraded = store.load().expect("load upgraded");
    v1_expectations(&upgraded);
    assert_eq!(upgraded.instance, "pod-a");
    assert_eq!(
        upgraded.recorded_since.map(|t| t.unix_timestamp()),
        Some(1_795_870_000),
        "recorded since its first call, no earlier"
    );

    // It goes on counting the same callers, and opens again as is.
    let ledger = Ledger::new(100, 35, "pod-a");
    ledger.load(upgraded);
    rec(
        &ledger,
        "4242",
        RouteKind::LegacyTrigger,
        "k",
        "ua",
        "10.0.0.1",
        T,
    );
    store.write(&ledger.take_changes(T)).expect("write");
    drop(store);
    let again = Store::open(dir.path(), T + 60, "pod-a")
        .expect("reopen")
        .load()
        .expect("load");
    assert_eq!(
        again.apps[0].callers.len(),
        3,
        "the new call's caller has a fingerprint"
    );
    assert_eq!(
        again.recorded_since.map(|t| t.unix_timestamp()),
        Some(1_795_870_000)
    );
}

#[test]
fn a_newer_ledger_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(Store::open(dir.path(), T, "i-1").expect("create"));
    let conn = Connection::open(dir.path().join(FILE_NAME)).expect("open");
    conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .expect("stamp");
    drop(conn);
    let err = Store::open(dir.path(), T, "i-1").expect_err("newer");
    assert!(
        matches!(err, StoreError::NewerSchema { found, .. } if found == SCHEMA_VERSION + 1),
        "{err}"
    );
    let err = Store::open_read_only(dir.path())
        .and_then(|s| s.load())
        .expect_err("newer, read-only");
    assert!(err.to_string().contains("newer pusher-cutover"), "{err}");
}

#[test]
fn call_sites_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = Ledger::new(100, 35, "i-1");
    for (event, channel, n) in [("created", "orders-{id}", 3), ("paid", "orders-{id}", 1)] {
        for _ in 0..n {
            ledger.record(&LedgerCall {
                app_id: "1",
                route: RouteKind::LegacyTrigger,
                auth_key: "k",
                library: "pypi-pusher-0.6-0.8",
                fingerprint: "0123abcd",
                user_agent: "",
                client_address: "127.0.0.1",
                event,
                channel,
                now: T,
            });
        }
    }
    let mut store = Store::open(dir.path(), T, "i-1").expect("open");
    store.write(&ledger.take_changes(T)).expect("write");
    let u = store.load().expect("load");
    let sites = &u.apps[0].callers[0].call_sites;
    assert_eq!(
        sites
            .iter()
            .map(|s| (s.event.as_str(), s.channel.as_str(), s.calls))
            .collect::<Vec<_>>(),
        [("created", "orders-{id}", 3), ("paid", "orders-{id}", 1)]
    );
    assert_eq!(u.apps[0].callers[0].key.library, "pypi-pusher-0.6-0.8");
}

/// A call site written on its own row, then pushed out of a caller's top
/// ones into `other`, is not counted twice when the ledger is loaded again,
/// however often the proxy restarts: each write replaces the caller's list.
#[test]
fn call_sites_add_up_to_the_calls_across_restarts() {
    use crate::telemetry::usage::MAX_CALL_SITES;
    let dir = tempfile::tempdir().expect("tempdir");
    let call = |ledger: &Ledger, event: &str| {
        ledger.record(&LedgerCall {
            app_id: "1",
            route: RouteKind::LegacyTrigger,
            auth_key: "k",
            library: "unknown",
            fingerprint: "fp",
            user_agent: "",
            client_address: "127.0.0.1",
            event,
            channel: "c",
            now: T,
        });
    };
    let check = |store: &Store| {
        let u = store.load().expect("load");
        let caller = &u.apps[0].callers[0];
        let sites: u64 = caller.call_sites.iter().map(|s| s.calls).sum();
        assert_eq!(sites, caller.calls, "{:?}", caller.call_sites);
        caller.calls
    };
    let mut store = Store::open(dir.path(), T, "i-1").expect("open");
    let ledger = Ledger::new(100, 35, "i-1");
    call(&ledger, "late");
    store.write(&ledger.take_changes(T)).expect("write");
    // `late` falls out of the top ones.
    for i in 0..MAX_CALL_SITES {
        for _ in 0..2 {
            call(&ledger, &format!("ev-{i}"));
        }
    }
    store.write(&ledger.take_changes(T)).expect("write");
    let mut calls = check(&store);
    for _ in 0..3 {
        // A restart: the ledger is loaded from the store, one call more.
        let ledger = Ledger::new(100, 35, "i-1");
        ledger.load(store.load().expect("load"));
        call(&ledger, "ev-0");
        store.write(&ledger.take_changes(T)).expect("write");
        calls += 1;
        assert_eq!(check(&store), calls);
    }
}
