//! The store's tests: round trips, pruning, schema upgrades, unreadable
//! ledgers moved aside, runs that left the ledger open.

use super::*;
use crate::telemetry::ledger::tests::rec;
use crate::telemetry::ledger::{Changes, Ledger, LedgerCall};

const T: u64 = 1_795_888_046;

/// One legacy trigger of app 1 (key `k`, agent `ua`, from 10.0.0.1) at `T`.
/// The store's `recorded_since`, Unix seconds.
fn since(store: &Store) -> Option<i64> {
    store
        .load()
        .expect("load")
        .recorded_since
        .map(|t| t.unix_timestamp())
}

fn one_trigger(ledger: &Ledger) {
    rec(
        ledger,
        "1",
        RouteKind::LegacyTrigger,
        "k",
        "ua",
        "10.0.0.1",
        T,
    );
}

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
    assert_eq!(reread, ledger.snapshot(T));
}

/// Pruning deletes the buckets before the retention and moves the
/// ledger's start past them: a gate over a window longer than the
/// retention must not prove a zero over deleted hours. The caller as old
/// is summed into its route's `other`, its call kept.
#[test]
fn prune_deletes_old_buckets() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Not told the store's start: the store moves its own.
    let ledger = Ledger::new(100, 30, "i-1");
    one_trigger(&ledger);
    let mut store = Store::open(dir.path(), T, "i-1").expect("open");
    store.write(&ledger.take_changes(T)).expect("write");
    assert_eq!(since(&store), Some(to_sql(T)));
    let later = T + 31 * 86_400;
    store.write(&ledger.take_changes(later)).expect("prune");
    let u = store.load().expect("load");
    assert!(u.apps[0].hourly.is_empty());
    assert_eq!(u.apps[0].callers.len(), 1);
    assert!(u.apps[0].callers[0].key.is_other());
    assert_eq!(u.apps[0].callers[0].calls, 1);
    let kept = crate::telemetry::ledger::kept_from(later - 30 * 86_400);
    assert_eq!(since(&store), Some(to_sql(kept)));
    assert!(kept > T + 86_400, "past the deleted hours");
}

/// One writer per data directory: a second store opened for writing on
/// it is refused while the first holds it (two writers would write their
/// absolute counts over each other's); a reader is not, and once the
/// first is gone the directory is free.
#[test]
fn a_second_writer_on_one_data_directory_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = Store::open(dir.path(), T, "pod-a").expect("open");
    let second = Store::open(dir.path(), T, "pod-b");
    assert!(
        matches!(second, Err(StoreError::Locked { .. })),
        "{:?}",
        second.map(|_| ())
    );
    let Err(e) = Store::open(dir.path(), T, "pod-b") else {
        panic!("refused")
    };
    assert!(e.to_string().contains(LOCK_FILE_NAME), "{e}");
    Store::open_read_only(dir.path()).expect("a reader is let in");
    drop(first);
    Store::open(dir.path(), T, "pod-b").expect("free once the first is gone");
}

/// A ledger takes up the fingerprint format in use when it is created or
/// first opened by a release of another format, and says since when;
/// reopened, it keeps that time. Callers of this sidecar last seen before
/// it are deleted with the buckets of their time.
#[test]
fn a_ledger_notes_since_when_its_fingerprints_are_of_the_format_in_use() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), T, "i-1").expect("open");
    assert_eq!(store.fingerprints_since(), T);
    drop(store);
    let store = Store::open(dir.path(), T + 100, "i-1").expect("reopen");
    assert_eq!(store.fingerprints_since(), T, "kept");
    drop(store);
    // A clock that was ahead when it was noted: brought back to now.
    let store = Store::open(dir.path(), T - 50, "i-1").expect("reopen");
    assert_eq!(store.fingerprints_since(), T - 50, "not in the future");
    drop(store);
    let store = Store::open(dir.path(), T + 100, "i-1").expect("reopen");
    assert_eq!(store.fingerprints_since(), T - 50);
    // An earlier release's ledger: no format noted.
    store
        .conn
        .execute(
            "DELETE FROM meta WHERE key = ?1",
            params![FINGERPRINT_FORMAT],
        )
        .expect("forget the format");
    // A cap of one: a caller and the `other` aggregate.
    let ledger = Ledger::new(1, 30, "i-1");
    for ua in ["ua-1", "ua-2"] {
        rec(
            &ledger,
            "4242",
            RouteKind::LegacyTrigger,
            "k",
            ua,
            "10.0.0.1",
            T,
        );
    }
    let mut store = store;
    store.write(&ledger.take_changes(T)).expect("write");
    drop(store);
    let mut store = Store::open(dir.path(), T + 200, "i-1").expect("upgrade");
    assert_eq!(store.fingerprints_since(), T + 200, "from the upgrade on");
    let agents = |store: &Store| -> Vec<String> {
        let mut s = store
            .conn
            .prepare("SELECT user_agent FROM callers ORDER BY user_agent")
            .expect("prepare");
        s.query_map([], |r| r.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    };
    assert_eq!(agents(&store), ["other", "ua-1"]);
    let later = Ledger::new(1, 30, "i-1");
    later.load(store.load().expect("load"), store.fingerprints_since());
    // The earlier format's caller holds no place: a new one gets it.
    rec(
        &later,
        "4242",
        RouteKind::LegacyTrigger,
        "k",
        "ua-3",
        "10.0.0.1",
        T + 300,
    );
    // Past the retention for ua-1 (last seen at T), not for ua-3.
    store
        .write(&later.take_changes(T + 30 * 86_400 + 200))
        .expect("prune");
    assert_eq!(
        agents(&store),
        ["other", "ua-3"],
        "the earlier format's caller is gone; the aggregate and the new one stay"
    );
    // Past it for ua-3 too: its row goes, its calls in `other`'s.
    store
        .write(&later.take_changes(T + 31 * 86_400))
        .expect("prune");
    assert_eq!(agents(&store), ["other"]);
    let other: i64 = store
        .conn
        .query_row("SELECT calls FROM callers", [], |r| r.get(0))
        .expect("other's calls");
    assert_eq!(other, 2, "ua-2's call and ua-3's, not ua-1's");
    let reopened = Ledger::new(1, 30, "i-1");
    reopened.load(store.load().expect("load"), store.fingerprints_since());
    assert_eq!(reopened.snapshot(T + 31 * 86_400).apps[0].callers.len(), 1);
}

/// A caller summed into `other` by a read of the ledger (`/usage`), whose
/// clock ran ahead of the next write's, and through a write that failed:
/// its row goes when `other`'s new total is written, so the store, and a
/// ledger loaded from it after a restart, count its calls once. (Deleted
/// by the write's own cut-off, its row stayed beside the new total.)
#[test]
fn a_caller_summed_into_other_is_counted_once_on_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = Store::open(dir.path(), T, "i-1").expect("open");
    let ledger = Ledger::new(1, 30, "i-1");
    ledger.load(store.load().expect("load"), store.fingerprints_since());
    for (ua, at) in [("a", T), ("a", T + 1), ("a", T + 2), ("b", T + 5)] {
        rec(
            &ledger,
            "4242",
            RouteKind::LegacyTrigger,
            "k",
            ua,
            "10.0.0.1",
            at,
        );
    }
    store.write(&ledger.take_changes(T + 10)).expect("write");
    let rows = |store: &Store| -> Vec<(String, i64)> {
        let mut s = store
            .conn
            .prepare("SELECT user_agent, calls FROM callers ORDER BY user_agent")
            .expect("prepare");
        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    };
    assert_eq!(rows(&store), [("a".into(), 3), ("other".into(), 1)]);
    // The read folds `a` (last seen T + 2, before its cut-off T + 3); the
    // write's cut-off, T + 1, would not have.
    let day = 86_400;
    ledger.snapshot(T + 30 * day + 3);
    let failed = ledger.take_changes(T + 30 * day + 1);
    ledger.restore_changes(failed);
    store
        .write(&ledger.take_changes(T + 30 * day + 1))
        .expect("write");
    assert_eq!(rows(&store), [("other".into(), 4)]);
    drop(store);
    let store = Store::open(dir.path(), T + 30 * day + 2, "i-1").expect("reopen");
    let restarted = Ledger::new(1, 30, "i-1");
    restarted.load(store.load().expect("load"), store.fingerprints_since());
    let u = restarted.snapshot(T + 30 * day + 2);
    let calls: u64 = u.apps[0].callers.iter().map(|c| c.calls).sum();
    assert_eq!(calls, 4);
}

/// A ledger reopened under another instance name: the earlier name's
/// callers and their call sites are deleted with the buckets of their
/// time; the writing sidecar's own are summed into its `other`.
#[test]
fn prune_deletes_an_earlier_instances_old_callers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let earlier = Ledger::new(100, 30, "host-a");
    one_trigger(&earlier);
    let mut store = Store::open(dir.path(), T, "host-a").expect("open");
    store.close(&earlier.take_changes(T)).expect("write");
    drop(store);

    let mut store = Store::open(dir.path(), T, "host-b").expect("reopen");
    let ledger = Ledger::new(100, 30, "host-b");
    ledger.load(store.load().expect("load"), 0);
    one_trigger(&ledger);
    store.write(&ledger.take_changes(T)).expect("write");
    let count = |store: &Store, table: &str| -> i64 {
        store
            .conn
            .query_row(
                &format!("SELECT count(*) FROM {table} WHERE instance = 'host-a'"),
                [],
                |r| r.get(0),
            )
            .expect("count")
    };
    assert_eq!(
        (count(&store, "callers"), count(&store, "call_sites")),
        (1, 1)
    );
    store
        .write(&ledger.take_changes(T + 31 * 86_400))
        .expect("prune");
    assert_eq!(
        (count(&store, "callers"), count(&store, "call_sites")),
        (0, 0)
    );
    let u = store.load().expect("load");
    let left: Vec<&str> = u.apps[0]
        .callers
        .iter()
        .map(|c| c.key.instance.as_str())
        .collect();
    assert_eq!(left, ["host-b"]);
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
        Some(to_sql(T + 1)),
        "recorded from the upgrade on: the first release could not say \
         whether a run of it lost calls"
    );

    // It goes on counting the same callers, and opens again as is.
    let ledger = Ledger::new(100, 35, "pod-a");
    ledger.load(upgraded, 0);
    rec(
        &ledger,
        "4242",
        RouteKind::LegacyTrigger,
        "k",
        "ua",
        "10.0.0.1",
        T,
    );
    // The run ends cleanly: its last write closes the ledger.
    store.close(&ledger.take_changes(T)).expect("write");
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
        Some(to_sql(T + 1)),
        "from the upgrade on, still"
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
        ledger.load(store.load().expect("load"), 0);
        call(&ledger, "ev-0");
        store.write(&ledger.take_changes(T)).expect("write");
        calls += 1;
        assert_eq!(check(&store), calls);
    }
}

/// Where the files of the ledger in `dir` are, by name, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A ledger of one caller at `T`, written and closed.
fn one_caller(dir: &Path) {
    let ledger = Ledger::new(100, 35, "i-1");
    one_trigger(&ledger);
    let mut store = Store::open(dir, T, "i-1").expect("open");
    store.close(&ledger.take_changes(T)).expect("write");
}

/// Runs `sql` on the ledger in `dir`, as another program could.
fn tamper(dir: &Path, sql: &str) {
    Connection::open(dir.join(FILE_NAME))
        .expect("open")
        .execute_batch(sql)
        .expect("tamper");
}

/// A ledger file that is not a database, a damaged database, tables of
/// another shape, a value of the wrong type: each is moved aside with its
/// `-wal` and `-shm` files, and a new ledger started that holds nothing
/// and records since the first second after now.
#[test]
fn an_unreadable_ledger_is_moved_aside_and_a_new_one_started() {
    type Damage = fn(&Path);
    let cases: [(&str, Damage); 6] = [
        ("not a database", |dir| {
            std::fs::write(dir.join(FILE_NAME), b"not a ledger\n".repeat(400)).expect("write");
            std::fs::write(dir.join("ledger.sqlite3-wal"), b"old wal").expect("wal");
            std::fs::write(dir.join("ledger.sqlite3-shm"), b"old shm").expect("shm");
        }),
        ("shorter than a header", |dir| {
            std::fs::write(dir.join(FILE_NAME), b"SQLite").expect("write");
        }),
        ("its schema page overwritten", |dir| {
            one_caller(dir);
            let path = dir.join(FILE_NAME);
            let mut bytes = std::fs::read(&path).expect("read");
            let page = bytes.len().min(4096);
            bytes[100..page].fill(0xa5);
            std::fs::write(&path, bytes).expect("write");
        }),
        ("a table missing", |dir| {
            one_caller(dir);
            tamper(dir, "DROP TABLE call_sites");
        }),
        ("a column missing", |dir| {
            one_caller(dir);
            tamper(
                dir,
                "ALTER TABLE hourly RENAME TO h; CREATE TABLE hourly (app_id TEXT); DROP TABLE h",
            );
        }),
        ("a count of the wrong type", |dir| {
            one_caller(dir);
            tamper(dir, "UPDATE callers SET calls = 'many'");
        }),
    ];
    for (case, damage) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        damage(dir.path());
        let before = std::fs::read(dir.path().join(FILE_NAME)).expect("read");
        let Opened {
            store,
            usage,
            moved_aside,
        } = Store::open_and_load(dir.path(), T + 50, "i-1")
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        let aside = moved_aside.unwrap_or_else(|| panic!("{case}: not moved aside"));
        assert!(aside.reason.is_corrupt(), "{case}: {}", aside.reason);
        assert_eq!(
            aside.path,
            dir.path().join(format!("{FILE_NAME}.corrupt-{}", T + 50)),
            "{case}"
        );
        assert!(aside.path.exists(), "{case}");
        assert!(usage.apps.is_empty(), "{case}: {usage:?}");
        assert_eq!(
            usage.recorded_since.map(|t| t.unix_timestamp()),
            Some(T as i64 + 51),
            "{case}: the new ledger vouches for no call of now's second"
        );
        assert!(!store.left_open_by_previous_run(), "{case}");
        drop(store);
        // The new ledger reads as one, by `report` too.
        let reread = Store::open_read_only(dir.path())
            .and_then(|s| s.load())
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        assert!(reread.apps.is_empty(), "{case}");
        if case == "not a database" {
            let moved = std::fs::read(&aside.path).expect("moved");
            assert_eq!(moved, before, "moved as it was");
            for (suffix, text) in [("-wal", b"old wal"), ("-shm", b"old shm")] {
                let moved = std::fs::read(with_suffix(&aside.path, suffix)).expect("moved");
                assert_eq!(moved, text, "{suffix}");
            }
        }
    }
}

/// A second unreadable ledger within the same second does not replace the
/// first one moved aside.
#[test]
fn a_file_moved_aside_is_never_replaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    for text in ["first", "second"] {
        drop(Store::open_and_load(dir.path(), T, "i-1").expect("a new ledger"));
        std::fs::write(dir.path().join(FILE_NAME), text.repeat(10)).expect("damage");
        let opened = Store::open_and_load(dir.path(), T, "i-1").expect("moved aside");
        let path = opened.moved_aside.expect("moved aside").path;
        assert_eq!(
            std::fs::read_to_string(&path).expect("moved"),
            text.repeat(10)
        );
    }
    let stem = format!("{FILE_NAME}.corrupt-{T}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join(&stem)).expect("first"),
        "first".repeat(10)
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join(format!("{stem}.1"))).expect("second"),
        "second".repeat(10)
    );
}

/// What cannot be had (a directory or file that cannot be created or
/// opened, a disk that fails) and a ledger of a newer release stay
/// errors: nothing is moved aside.
#[test]
fn failures_other_than_an_unreadable_ledger_stay_errors() {
    use rusqlite::ffi;
    let dir = tempfile::tempdir().expect("tempdir");
    // The data directory is a file.
    let file = dir.path().join("data");
    std::fs::write(&file, b"x").expect("write");
    let err = Store::open_and_load(&file, T, "i-1").expect_err("not a directory");
    assert!(matches!(err, StoreError::CreateDir { .. }), "{err}");
    assert!(!err.is_corrupt());
    // The ledger is a directory.
    let data = dir.path().join("d");
    std::fs::create_dir_all(data.join(FILE_NAME)).expect("mkdir");
    let err = Store::open_and_load(&data, T, "i-1").expect_err("a directory");
    assert!(!err.is_corrupt(), "{err}");
    assert_eq!(
        files(&data),
        [LOCK_FILE_NAME, FILE_NAME],
        "nothing moved aside"
    );
    // A newer release's ledger.
    let newer = dir.path().join("newer");
    drop(Store::open(&newer, T, "i-1").expect("create"));
    tamper(
        &newer,
        &format!("PRAGMA user_version = {}", SCHEMA_VERSION + 1),
    );
    let before = files(&newer);
    let err = Store::open_and_load(&newer, T, "i-1").expect_err("newer");
    assert!(matches!(err, StoreError::NewerSchema { .. }), "{err}");
    assert!(!err.is_corrupt());
    assert_eq!(files(&newer), before, "nothing moved");

    let sqlite = |code| StoreError::Sqlite {
        path: PathBuf::from(FILE_NAME),
        source: rusqlite::Error::SqliteFailure(ffi::Error::new(code), None),
    };
    for code in [
        ffi::SQLITE_IOERR,
        ffi::SQLITE_IOERR_WRITE,
        ffi::SQLITE_CANTOPEN,
        ffi::SQLITE_FULL,
        ffi::SQLITE_READONLY,
        ffi::SQLITE_PERM,
        ffi::SQLITE_BUSY,
        ffi::SQLITE_LOCKED,
        ffi::SQLITE_NOMEM,
        ffi::SQLITE_PROTOCOL,
    ] {
        assert!(!sqlite(code).is_corrupt(), "{code}");
    }
    for code in [
        ffi::SQLITE_NOTADB,
        ffi::SQLITE_CORRUPT,
        ffi::SQLITE_ERROR,
        ffi::SQLITE_MISMATCH,
    ] {
        assert!(sqlite(code).is_corrupt(), "{code}");
    }
    let permissions = StoreError::Permissions {
        path: PathBuf::from(FILE_NAME),
        source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
    };
    assert!(!permissions.is_corrupt());
}

/// A run that ends without its last write leaves the ledger open: the next
/// one vouches for calls from its reopening on only (the calls recorded
/// after the last write are lost). A clean close moves nothing.
#[test]
fn a_ledger_left_open_records_from_its_reopening_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = Ledger::new(100, 35, "i-1");
    let mut store = Store::open(dir.path(), T, "i-1").expect("new");
    assert!(!store.left_open_by_previous_run(), "a new ledger");
    one_trigger(&ledger);
    store.write(&ledger.take_changes(T)).expect("write");
    drop(store); // a crash: no close

    let mut store = Store::open(dir.path(), T + 100, "i-1").expect("reopen");
    assert!(store.left_open_by_previous_run());
    let u = store.load().expect("load");
    assert_eq!(
        u.recorded_since.map(|t| t.unix_timestamp()),
        Some(T as i64 + 101)
    );
    assert_eq!(u.apps[0].callers[0].calls, 1, "what was written stays");
    store.close(&Changes::default()).expect("close");
    drop(store);

    let store = Store::open(dir.path(), T + 200, "i-1").expect("reopen");
    assert!(!store.left_open_by_previous_run(), "closed cleanly");
    let u = store.load().expect("load");
    assert_eq!(
        u.recorded_since.map(|t| t.unix_timestamp()),
        Some(T as i64 + 101)
    );
}

/// A `recorded_since` in the changes is written, and never moves the
/// stored one back.
#[test]
fn recorded_since_is_written_forward_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = Store::open(dir.path(), T, "i-1").expect("new");
    assert_eq!(since(&store), Some(T as i64));
    let changes = |at: u64| Changes {
        recorded_since: Some(at),
        ..Changes::default()
    };
    store.write(&changes(T + 300)).expect("write");
    assert_eq!(since(&store), Some(T as i64 + 300));
    store.write(&changes(T + 250)).expect("write");
    assert_eq!(since(&store), Some(T as i64 + 300), "not back");
}

/// `report`'s read-only read tells a ledger marked open (being written,
/// or left by a run without its last write) and since when, while its
/// writer runs and after it crashed, and finds none once it was closed;
/// the first release's ledger has no mark.
#[test]
fn the_read_only_read_reports_the_open_mark() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = Ledger::new(100, 35, "i-1");
    let mut store = Store::open(dir.path(), T, "i-1").expect("new");
    one_trigger(&ledger);
    store.write(&ledger.take_changes(T)).expect("write");
    let read = |what: &str| {
        Store::open_read_only(dir.path())
            .expect("read-only")
            .read()
            .unwrap_or_else(|e| panic!("{what}: {e}"))
    };
    let marked = Some(OpenMark {
        since: Some(crate::clock::datetime(T)),
    });
    let running = read("while written");
    assert_eq!(running.open, marked, "its writer runs");
    assert_eq!(running.usage.apps[0].callers[0].calls, 1);
    drop(store); // a crash: no close
    assert_eq!(read("after a crash").open, marked);

    let mut store = Store::open(dir.path(), T + 100, "i-1").expect("reopen");
    let reopened = Some(OpenMark {
        since: Some(crate::clock::datetime(T + 100)),
    });
    assert_eq!(read("reopened").open, reopened, "the latest writer's time");
    store.close(&Changes::default()).expect("close");
    drop(store);
    let closed = read("closed");
    assert_eq!(closed.open, None, "closed by the last write");
    assert_eq!(closed.usage.apps[0].callers[0].calls, 1);

    let v1 = tempfile::tempdir().expect("tempdir");
    v1_ledger(v1.path());
    let read = Store::open_read_only(v1.path())
        .expect("read-only")
        .read()
        .expect("read v1");
    assert_eq!(read.open, None);
    v1_expectations(&read.usage);
}
