//! The ledger on disk: SQLite (bundled) in `data_dir/ledger.sqlite3`, in
//! WAL mode so `report` can read it while the proxy writes.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, params};
use time::OffsetDateTime;

use super::ledger::Changes;
use super::usage::{AppUsage, Caller, CallerKey, HourlyCount, Usage};
use crate::pusher::route::RouteKind;

/// The file name of the ledger inside `data_dir`.
pub const FILE_NAME: &str = "ledger.sqlite3";

const SCHEMA: &str = "
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

/// A ledger store that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `data_dir` could not be created.
    #[error("cannot create the data directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// SQLite failed.
    #[error("ledger database {path}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rusqlite::Error,
    },
}

/// An open ledger database.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

/// A stored Unix time (SQLite's i64) as a date and time.
fn datetime(unix: i64) -> OffsetDateTime {
    crate::clock::datetime(u64::try_from(unix).unwrap_or(0))
}

/// Counts are stored as SQLite integers (i64); beyond that they saturate.
fn to_sql(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn from_sql(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl Store {
    /// Opens (creating if needed) the ledger in `dir` for reading and writing.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        let sqlite = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(sqlite)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sqlite)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sqlite)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sqlite)?;
        conn.execute_batch(SCHEMA).map_err(sqlite)?;
        Ok(Self { conn, path })
    }

    /// Opens the ledger in `dir` read-only (for `report`).
    pub fn open_read_only(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(FILE_NAME);
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| StoreError::Sqlite {
            path: path.clone(),
            source,
        })?;
        Ok(Self { conn, path })
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        |source| StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Reads the whole ledger. Rows with an unknown route are skipped.
    pub fn load(&self) -> Result<Usage, StoreError> {
        let mut apps: std::collections::BTreeMap<String, AppUsage> = Default::default();
        let mut stmt = self
            .conn
            .prepare(
                "SELECT app_id, route, auth_key, user_agent, client_address, calls, first_seen, last_seen
                 FROM callers ORDER BY app_id, route, auth_key, user_agent, client_address",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, i64>(6)?,
                    r.get::<_, i64>(7)?,
                ))
            })
            .map_err(self.err())?;
        for row in rows {
            let (app_id, route, auth_key, user_agent, client_address, calls, first, last) =
                row.map_err(self.err())?;
            let Some(route) = RouteKind::legacy_from_label(&route) else {
                continue;
            };
            entry(&mut apps, app_id).callers.push(Caller {
                key: CallerKey {
                    route,
                    auth_key,
                    user_agent,
                    client_address,
                },
                calls: from_sql(calls),
                first_seen: datetime(first),
                last_seen: datetime(last),
            });
        }

        let mut stmt = self
            .conn
            .prepare("SELECT app_id, route, hour, calls FROM hourly ORDER BY app_id, hour, route")
            .map_err(self.err())?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .map_err(self.err())?;
        for row in rows {
            let (app_id, route, hour, calls) = row.map_err(self.err())?;
            let Some(route) = RouteKind::legacy_from_label(&route) else {
                continue;
            };
            entry(&mut apps, app_id).hourly.push(HourlyCount {
                route,
                hour: datetime(hour),
                calls: from_sql(calls),
            });
        }
        Ok(Usage {
            apps: apps.into_values().collect(),
        })
    }

    /// Writes changes (absolute values) and prunes old buckets, in one
    /// transaction.
    pub fn write(&mut self, changes: &Changes) -> Result<(), StoreError> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        {
            let mut caller = tx
                .prepare_cached(
                    "INSERT INTO callers (app_id, route, auth_key, user_agent, client_address, calls, first_seen, last_seen)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT (app_id, route, auth_key, user_agent, client_address)
                     DO UPDATE SET calls = excluded.calls, first_seen = excluded.first_seen, last_seen = excluded.last_seen",
                )
                .map_err(err)?;
            for (app_id, c) in &changes.callers {
                caller
                    .execute(params![
                        app_id,
                        c.key.route.as_str(),
                        c.key.auth_key,
                        c.key.user_agent,
                        c.key.client_address,
                        to_sql(c.calls),
                        c.first_seen.unix_timestamp(),
                        c.last_seen.unix_timestamp(),
                    ])
                    .map_err(err)?;
            }
            let mut hour = tx
                .prepare_cached(
                    "INSERT INTO hourly (app_id, route, hour, calls) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (app_id, route, hour) DO UPDATE SET calls = excluded.calls",
                )
                .map_err(err)?;
            for (app_id, h) in &changes.hourly {
                hour.execute(params![
                    app_id,
                    h.route.as_str(),
                    h.hour.unix_timestamp(),
                    to_sql(h.calls)
                ])
                .map_err(err)?;
            }
            tx.execute(
                "DELETE FROM hourly WHERE hour < ?1",
                params![to_sql(changes.prune_before)],
            )
            .map_err(err)?;
        }
        tx.commit().map_err(err)
    }
}

fn entry(apps: &mut std::collections::BTreeMap<String, AppUsage>, app_id: String) -> &mut AppUsage {
    apps.entry(app_id.clone()).or_insert_with(|| AppUsage {
        app_id,
        callers: Vec::new(),
        hourly: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::ledger::Ledger;

    const T: u64 = 1_795_888_046;

    #[test]
    fn round_trip_through_the_database() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = Ledger::new(100, 35);
        for i in 0..7 {
            ledger.record(
                "4242",
                RouteKind::LegacyTrigger,
                "k",
                "ua",
                "10.0.0.1",
                T + i * 600,
            );
        }
        ledger.record("4242", RouteKind::LegacyStats, "k", "ua\u{e9}'\"", "::1", T);
        ledger.record("7", RouteKind::LegacyStats, "k7", "", "10.0.0.2", T);
        let mut store = Store::open(dir.path()).expect("open");
        store.write(&ledger.take_changes(T)).expect("write");
        ledger.record(
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
        assert_eq!(reread, ledger.snapshot());
    }

    #[test]
    fn prune_deletes_old_buckets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = Ledger::new(100, 30);
        ledger.record("1", RouteKind::LegacyTrigger, "k", "ua", "10.0.0.1", T);
        let mut store = Store::open(dir.path()).expect("open");
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
}
