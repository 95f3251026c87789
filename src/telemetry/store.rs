//! The ledger on disk: SQLite (bundled) in `data_dir/ledger.sqlite3`, in
//! WAL mode so `report` can read it while the proxy writes.
//!
//! A process that opens the ledger for writing marks it open, and its last
//! write at a clean shutdown ([`Store::close`]) marks it closed: a ledger
//! found open was left by a run that crashed or was killed, whose calls
//! since its last write are lost, so it vouches for calls from the
//! reopening on only ([`Usage::recorded_since`]). Read while marked open
//! ([`Store::read`]), by `report`, a ledger lacks its writer's calls
//! since its last write, whether that writer still runs or not, so it
//! proves no zero. A file that cannot be
//! read as a ledger is moved aside and a new ledger started
//! ([`Store::open_and_load`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};
use time::OffsetDateTime;

use super::fingerprint::CANONICAL_VERSION;
use super::ledger::{Changes, first_second_after};
use super::usage::{
    AppUsage, CallSite, Caller, CallerKey, HourlyCount, OTHER, Usage, top_call_sites,
};
use crate::chain::ErrorChain;
use crate::pusher::route::RouteKind;

/// The file name of the ledger inside `data_dir`.
pub const FILE_NAME: &str = "ledger.sqlite3";

/// The schema this release writes (`PRAGMA user_version`). Version 1,
/// the first release's, had no version number (0), no library,
/// fingerprint or instance per caller, no call sites and no `meta` table;
/// [`Store::open`] upgrades it in place, and [`Store::load`] reads it as it
/// is (for `report` on a ledger it may not write).
pub const SCHEMA_VERSION: i64 = 2;

/// The caller identity's columns, in key order.
const CALLER_KEY: &str =
    "app_id, route, auth_key, library, fingerprint, user_agent, client_address, instance";

/// The parameters a [`CALLER_KEY`] row value is compared with
/// ([`with_caller_key`]'s).
const KEY_PARAMS: &str = "(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS callers (
    app_id TEXT NOT NULL,
    route TEXT NOT NULL,
    auth_key TEXT NOT NULL,
    library TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    user_agent TEXT NOT NULL,
    client_address TEXT NOT NULL,
    instance TEXT NOT NULL,
    calls INTEGER NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    PRIMARY KEY (app_id, route, auth_key, library, fingerprint, user_agent, client_address, instance)
);
CREATE TABLE IF NOT EXISTS call_sites (
    app_id TEXT NOT NULL,
    route TEXT NOT NULL,
    auth_key TEXT NOT NULL,
    library TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    user_agent TEXT NOT NULL,
    client_address TEXT NOT NULL,
    instance TEXT NOT NULL,
    event TEXT NOT NULL,
    channel TEXT NOT NULL,
    calls INTEGER NOT NULL,
    PRIMARY KEY (app_id, route, auth_key, library, fingerprint, user_agent, client_address, instance, event, channel)
);
CREATE TABLE IF NOT EXISTS hourly (
    app_id TEXT NOT NULL,
    route TEXT NOT NULL,
    hour INTEGER NOT NULL,
    calls INTEGER NOT NULL,
    PRIMARY KEY (app_id, route, hour)
);
";

/// Version 1's callers, moved into version 2's table: no library
/// (`unknown`), fingerprint or instance (empty) was recorded.
const UPGRADE_FROM_1: &str = "
ALTER TABLE callers RENAME TO callers_v1;
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
";

/// The file in `data_dir` a writing store holds locked (`flock`), so that
/// a second `serve` on the same directory is refused.
pub const LOCK_FILE_NAME: &str = "ledger.lock";

/// Takes the lock of the ledger in `dir`, or says who has it.
fn lock(dir: &Path) -> Result<std::fs::File, StoreError> {
    let path = dir.join(LOCK_FILE_NAME);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| StoreError::Permissions {
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked {
            dir: dir.to_owned(),
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(StoreError::Permissions { path, source }),
    }
}

/// `meta` key: since when the ledger records every call (Unix seconds).
const RECORDED_SINCE: &str = "recorded_since";

/// `meta` key: the sidecar that last opened the ledger for writing.
const INSTANCE: &str = "instance";

/// `meta` key: the fingerprint format ([`CANONICAL_VERSION`]) of the
/// callers recorded since [`FINGERPRINTS_SINCE`]; none before `fp2`.
const FINGERPRINT_FORMAT: &str = "fingerprint_format";

/// `meta` key: since when (Unix seconds) callers are recorded under
/// [`FINGERPRINT_FORMAT`]'s ids. Callers last seen before it were recorded
/// under an earlier format's, which no call will have again.
const FINGERPRINTS_SINCE: &str = "fingerprints_since";

/// `meta` key: when the process writing the ledger opened it (Unix
/// seconds); removed by its last write at a clean shutdown
/// ([`Store::close`]). Found at [`Store::open`], it says the previous run
/// ended without that write; found by [`Store::read`], that the file may
/// lack calls since its writer's last write ([`OpenMark`]).
const OPEN: &str = "open";

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
    /// The ledger was written by a newer release.
    #[error(
        "ledger database {path} has schema version {found}; this release reads up to {SCHEMA_VERSION}: use a newer pusher-cutover"
    )]
    NewerSchema {
        /// The database file.
        path: PathBuf,
        /// Its version.
        found: i64,
    },
    /// The ledger file could not be created or restricted to its owner.
    #[error("cannot create or restrict the permissions of {path}")]
    Permissions {
        /// The file.
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
    /// The ledger file is not a SQLite database: its first bytes are not
    /// SQLite's.
    #[error("{path} is not a SQLite database (it does not start with SQLite's header)")]
    NotADatabase {
        /// The file.
        path: PathBuf,
    },
    /// Another process writes the ledger in this directory: it holds the
    /// lock file ([`LOCK_FILE_NAME`]). Two writers would each write their
    /// own absolute counts over the other's.
    #[error(
        "another process writes the ledger in {dir} (it holds {LOCK_FILE_NAME}): give each sidecar a data_dir of its own"
    )]
    Locked {
        /// The data directory.
        dir: PathBuf,
    },
    /// A ledger that cannot be read could not be moved aside.
    #[error("cannot move the unreadable ledger {path} aside (unreadable: {reason})")]
    MoveAside {
        /// The ledger file.
        path: PathBuf,
        /// Why it cannot be read, with its causes.
        reason: String,
        /// Why it could not be moved.
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// Whether the ledger file cannot be read as a ledger, whatever the
    /// disk: not a SQLite database, a damaged one, tables of another
    /// shape, values of the wrong type. Not a directory, file or lock that
    /// cannot be had, a disk that fails or is full, or a ledger of a newer
    /// release ([`StoreError::NewerSchema`], which a newer release reads).
    pub fn is_corrupt(&self) -> bool {
        use rusqlite::Error as E;
        use rusqlite::ErrorCode as C;
        let source = match self {
            Self::NotADatabase { .. } => return true,
            Self::Sqlite { source, .. } => source,
            _ => return false,
        };
        // The statements are this module's and fit its schema, so SQLite's
        // generic error in one (no such table or column), a constraint it
        // breaks or a value of the wrong type is the database's doing.
        match source {
            E::SqliteFailure(e, _) => {
                matches!(
                    e.code,
                    C::NotADatabase | C::DatabaseCorrupt | C::TypeMismatch | C::ConstraintViolation
                ) || (e.code == C::Unknown && e.extended_code & 0xff == rusqlite::ffi::SQLITE_ERROR)
            }
            E::SqlInputError { .. }
            | E::InvalidColumnType(..)
            | E::FromSqlConversionFailure(..)
            | E::IntegralValueOutOfRange(..)
            | E::InvalidColumnIndex(_)
            | E::InvalidColumnName(_) => true,
            _ => false,
        }
    }
}

/// Creates `path` if it does not exist and makes it readable and writable
/// by its owner only (0600 on unix): the ledger names every caller. The
/// file is created with that mode, so it is never readable by others,
/// and an existing one (from an earlier release) is narrowed to it.
fn owner_only(path: &Path) -> Result<(), StoreError> {
    let err = |source| StoreError::Permissions {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        let file = options.open(path).map_err(err)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(err)?;
    }
    #[cfg(not(unix))]
    options.open(path).map_err(err)?;
    Ok(())
}

/// The first bytes of every SQLite 3 database file.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// Whether the file at `path` may be a SQLite database: empty (a new
/// one), or starting with [`SQLITE_HEADER`]. Checked before SQLite opens
/// it: SQLite would delete the `-wal` file beside a file that is not a
/// database when it closes it, and that file is moved aside whole. A file
/// that cannot be read is left to SQLite, which says why.
fn may_be_sqlite(path: &Path) -> bool {
    use std::io::Read as _;
    let mut head = Vec::with_capacity(SQLITE_HEADER.len());
    match std::fs::File::open(path)
        .and_then(|f| f.take(SQLITE_HEADER.len() as u64).read_to_end(&mut head))
    {
        Ok(_) => head.is_empty() || head == SQLITE_HEADER,
        Err(_) => true,
    }
}

/// An open ledger database.
#[derive(Debug)]
pub struct Store {
    /// The lock file, held while this store writes (`None` read-only).
    _lock: Option<std::fs::File>,
    conn: Connection,
    path: PathBuf,
    /// Whether [`Store::open`] found the ledger left open by the previous
    /// run (see [`OPEN`]).
    left_open: bool,
    /// The sidecar writing it: callers of other names are pruned with the
    /// hourly buckets ([`Changes::prune_before`]).
    instance: String,
    /// See [`Store::fingerprints_since`].
    fingerprints_since: u64,
}

/// A ledger opened for writing and read, by [`Store::open_and_load`].
#[derive(Debug)]
pub struct Opened {
    /// The store.
    pub store: Store,
    /// What it holds.
    pub usage: Usage,
    /// The file found unreadable and moved aside, when the store is a new
    /// one that replaces it.
    pub moved_aside: Option<MovedAside>,
}

/// A ledger as [`Store::read`] finds it: what it holds, and whether a
/// writer has it marked open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contents {
    /// What it holds.
    pub usage: Usage,
    /// The mark of the process writing it, when it is marked open.
    pub open: Option<OpenMark>,
}

/// The mark of a ledger open for writing: set by [`Store::open`], cleared
/// by the last write at a clean shutdown ([`Store::close`]). A ledger
/// read with it is being written by a running sidecar, whose calls since
/// its last write are not in the file yet, or was left by one that
/// stopped without its last write, whose calls since then are lost: in
/// either case the file lacks calls since its last write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenMark {
    /// When the writer opened the ledger (the mark's value); `None` when
    /// that is not a Unix time.
    pub since: Option<OffsetDateTime>,
}

/// A ledger file that could not be read, moved aside.
#[derive(Debug)]
pub struct MovedAside {
    /// Where it is now: `ledger.sqlite3.corrupt-<Unix seconds>` in the
    /// same directory (its `-wal` and `-shm` files, if any, beside it with
    /// those suffixes).
    pub path: PathBuf,
    /// Why it could not be read.
    pub reason: StoreError,
}

/// `path` with `suffix` appended to its file name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Moves the ledger in `dir` aside to `ledger.sqlite3.corrupt-<now>` (with
/// `.1`, `.2`, … when that name is taken), its `-wal` and `-shm` files
/// first, so that a new ledger never meets a stale write-ahead log.
/// Returns the new path of the database file.
fn move_aside(dir: &Path, now: u64) -> std::io::Result<PathBuf> {
    let path = dir.join(FILE_NAME);
    let stem = format!("{FILE_NAME}.corrupt-{now}");
    let taken = |p: &Path| {
        std::fs::symlink_metadata(p).is_ok()
            || ["-wal", "-shm"]
                .iter()
                .any(|c| std::fs::symlink_metadata(with_suffix(p, c)).is_ok())
    };
    let mut aside = dir.join(&stem);
    let mut n = 0u32;
    while taken(&aside) {
        n += 1;
        aside = dir.join(format!("{stem}.{n}"));
    }
    for companion in ["-wal", "-shm"] {
        match std::fs::rename(
            with_suffix(&path, companion),
            with_suffix(&aside, companion),
        ) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    std::fs::rename(&path, &aside)?;
    Ok(aside)
}

/// Moves the `meta` row [`RECORDED_SINCE`] forward to `since` (Unix
/// seconds), unless it is later already; it never moves back.
fn recorded_from(conn: &Connection, since: u64) -> rusqlite::Result<()> {
    if stored_since(conn)?.is_none_or(|stored| stored < since) {
        set_meta(conn, RECORDED_SINCE, &since.to_string())?;
    }
    Ok(())
}

/// After pruning the buckets of hours before `before`: a known
/// [`RECORDED_SINCE`] moves forward to the first hour kept whole
/// ([`crate::telemetry::ledger::kept_from`]), since the calls before it are
/// gone; an unknown one stays unknown (the ledger may have started later).
fn pruned_before(conn: &Connection, before: u64) -> rusqlite::Result<()> {
    let from = crate::telemetry::ledger::kept_from(before);
    if stored_since(conn)?.is_some_and(|stored| stored < from) {
        set_meta(conn, RECORDED_SINCE, &from.to_string())?;
    }
    Ok(())
}

/// The `meta` row [`RECORDED_SINCE`], when there is one that reads.
fn stored_since(conn: &Connection) -> rusqlite::Result<Option<u64>> {
    Ok(conn
        .query_row(
            "SELECT value FROM meta WHERE key = ?1",
            params![RECORDED_SINCE],
            |r| r.get::<_, String>(0),
        )
        .optional()?
        .and_then(|v| v.parse().ok()))
}

/// Sets the `meta` row `key` to `value`.
fn set_meta(conn: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )
    .map(drop)
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
    /// Opens (creating if needed) the ledger in `dir` for reading and
    /// writing, upgrading one written by an earlier release in place, for
    /// the sidecar `instance`. A new ledger records since `now` (Unix
    /// seconds).
    pub fn open(dir: &Path, now: u64, instance: &str) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        let lock = lock(dir)?;
        let path = dir.join(FILE_NAME);
        owner_only(&path)?;
        if !may_be_sqlite(&path) {
            return Err(StoreError::NotADatabase { path });
        }
        let sqlite = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(sqlite)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sqlite)?;
        // SQLite creates the `-wal` and `-shm` files with the database's
        // mode; ones left by an earlier release are narrowed too.
        for companion in ["-wal", "-shm"] {
            let mut name = path.clone().into_os_string();
            name.push(companion);
            let companion = PathBuf::from(name);
            if companion.exists() {
                owner_only(&companion)?;
            }
        }
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sqlite)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sqlite)?;
        let mut store = Self {
            _lock: Some(lock),
            conn,
            path,
            left_open: false,
            instance: instance.to_owned(),
            fingerprints_since: 0,
        };
        store.migrate(now)?;
        let path = store.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        // The open mark goes to disk before any call is served: under
        // `synchronous = NORMAL` a WAL commit waits for a checkpoint, and a
        // power loss before one would take the mark back and leave the file
        // looking closed over this run's lost calls.
        store
            .conn
            .pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        let tx = store.conn.transaction().map_err(err)?;
        let left_open = tx
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM meta WHERE key = ?1)",
                params![OPEN],
                |r| r.get::<_, bool>(0),
            )
            .map_err(err)?;
        if left_open {
            // The calls the previous run recorded after its last write are
            // lost, the latest at most up to now.
            recorded_from(&tx, first_second_after(now)).map_err(err)?;
        }
        set_meta(&tx, OPEN, &now.to_string()).map_err(err)?;
        set_meta(&tx, INSTANCE, instance).map_err(err)?;
        let meta = |key: &str| {
            tx.query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
                r.get::<_, String>(0)
            })
            .optional()
        };
        let since = if meta(FINGERPRINT_FORMAT).map_err(err)?.as_deref() == Some(CANONICAL_VERSION)
        {
            let since: u64 = meta(FINGERPRINTS_SINCE)
                .map_err(err)?
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if since > now {
                // Noted by a clock that was ahead: every caller since would
                // count as an earlier format's.
                set_meta(&tx, FINGERPRINTS_SINCE, &now.to_string()).map_err(err)?;
                now
            } else {
                since
            }
        } else {
            // A new ledger, or one an earlier format's ids were written to:
            // from now on, the format in use.
            set_meta(&tx, FINGERPRINT_FORMAT, CANONICAL_VERSION).map_err(err)?;
            set_meta(&tx, FINGERPRINTS_SINCE, &now.to_string()).map_err(err)?;
            now
        };
        tx.commit().map_err(err)?;
        store
            .conn
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        store.left_open = left_open;
        store.fingerprints_since = since;
        Ok(store)
    }

    /// Opens the ledger in `dir` as [`Store::open`] does, and reads it
    /// ([`Store::load`]). A file that cannot be read as a ledger
    /// ([`StoreError::is_corrupt`]) is moved aside (see [`MovedAside`]) and
    /// a new ledger started in its place: it holds none of the old one's
    /// calls, and records since the first whole second after `now`. Any
    /// other error is returned, and nothing is moved.
    pub fn open_and_load(dir: &Path, now: u64, instance: &str) -> Result<Opened, StoreError> {
        let reason = match Self::open(dir, now, instance).and_then(|store| {
            let usage = store.load()?;
            Ok((store, usage))
        }) {
            Ok((store, usage)) => {
                return Ok(Opened {
                    store,
                    usage,
                    moved_aside: None,
                });
            }
            Err(e) if e.is_corrupt() => e,
            Err(e) => return Err(e),
        };
        // The store that failed is closed by now.
        let path = move_aside(dir, now).map_err(|source| StoreError::MoveAside {
            path: dir.join(FILE_NAME),
            reason: ErrorChain(&reason).to_string(),
            source,
        })?;
        let store = Self::open(dir, now, instance)?;
        // The calls of the run that wrote the old ledger, the latest at
        // most up to now, are not in the new one.
        recorded_from(&store.conn, first_second_after(now)).map_err(store.err())?;
        let usage = store.load()?;
        Ok(Opened {
            store,
            usage,
            moved_aside: Some(MovedAside { path, reason }),
        })
    }

    /// Since when (Unix seconds) the ledger's callers are recorded under
    /// the fingerprint format in use: this sidecar's callers last seen
    /// before it hold no place under `max_callers_per_app`, and are
    /// dropped with the buckets of their time (see
    /// [`crate::telemetry::ledger::Ledger::load`]).
    pub fn fingerprints_since(&self) -> u64 {
        self.fingerprints_since
    }

    /// Whether [`Store::open`] found the ledger left open by the previous
    /// run: it ended without its last write (a crash, a kill, a write that
    /// failed), and the calls it recorded since its last write are lost.
    /// The ledger then records since the first whole second after the
    /// reopening.
    pub fn left_open_by_previous_run(&self) -> bool {
        self.left_open
    }

    /// The schema version of the open database: [`SCHEMA_VERSION`], 1 for
    /// the first release's, 0 for an empty database.
    fn version(&self) -> Result<i64, StoreError> {
        let stamped: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(self.err())?;
        if stamped != 0 {
            return Ok(stamped);
        }
        let has_callers: bool = self
            .conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'callers')",
                [],
                |r| r.get(0),
            )
            .map_err(self.err())?;
        Ok(if has_callers { 1 } else { 0 })
    }

    /// [`Store::version`], refused when this release cannot read it.
    fn readable_version(&self) -> Result<i64, StoreError> {
        let version = self.version()?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                path: self.path.clone(),
                found: version,
            });
        }
        Ok(version)
    }

    /// Brings the database to [`SCHEMA_VERSION`] in one transaction.
    fn migrate(&mut self, now: u64) -> Result<(), StoreError> {
        let version = self.readable_version()?;
        if version == SCHEMA_VERSION {
            return Ok(());
        }
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        // A new ledger records from now on. So does an upgraded version 1
        // ledger, from the first second after now: that release had no
        // open mark, so a crash of one of its runs (calls lost since its
        // last write) cannot be seen, and its first call vouches for
        // nothing.
        let mut since = now;
        if version == 1 {
            tx.execute_batch(UPGRADE_FROM_1).map_err(err)?;
            tx.execute_batch(SCHEMA).map_err(err)?;
            tx.execute(
                &format!(
                    "INSERT INTO callers ({CALLER_KEY}, calls, first_seen, last_seen)
                     SELECT app_id, route, auth_key, 'unknown', '', user_agent, client_address, '',
                            calls, first_seen, last_seen
                     FROM callers_v1"
                ),
                [],
            )
            .map_err(err)?;
            since = first_second_after(now);
            tx.execute_batch("DROP TABLE callers_v1").map_err(err)?;
        } else {
            tx.execute_batch(SCHEMA).map_err(err)?;
        }
        tx.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES (?1, ?2)",
            params![RECORDED_SINCE, since.to_string()],
        )
        .map_err(err)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(err)?;
        tx.commit().map_err(err)
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
        // A writer's checkpoint or a crashed writer's recovery holds the
        // file briefly: wait for it, as a writer does.
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|source| StoreError::Sqlite {
                path: path.clone(),
                source,
            })?;
        Ok(Self {
            _lock: None,
            conn,
            path,
            left_open: false,
            // It writes nothing.
            instance: String::new(),
            fingerprints_since: 0,
        })
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        |source| StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Reads the whole ledger (of this release's schema or the first
    /// release's). Rows with an unknown route are skipped. As
    /// [`Store::read`], without the open mark.
    pub fn load(&self) -> Result<Usage, StoreError> {
        self.read().map(|c| c.usage)
    }

    /// Reads the whole ledger as [`Store::load`] does, and whether it is
    /// marked open ([`OpenMark`]; never for the first release's schema,
    /// which had no mark), in one read transaction: a ledger found closed
    /// holds every call its writer recorded. A store opened for writing
    /// finds its own mark.
    pub fn read(&self) -> Result<Contents, StoreError> {
        // Rolled back when dropped: it only reads.
        let _snapshot = self.conn.unchecked_transaction().map_err(self.err())?;
        let version = self.readable_version()?;
        let mut apps: BTreeMap<String, AppUsage> = BTreeMap::new();
        let mut sites: BTreeMap<(String, CallerKey), Vec<CallSite>> = BTreeMap::new();
        let current = version == SCHEMA_VERSION;
        if current {
            let mut stmt = self
                .conn
                .prepare(&format!(
                    "SELECT {CALLER_KEY}, event, channel, calls FROM call_sites"
                ))
                .map_err(self.err())?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        caller_key(r)?,
                        r.get::<_, String>(8)?,
                        r.get::<_, String>(9)?,
                        r.get::<_, i64>(10)?,
                    ))
                })
                .map_err(self.err())?;
            for row in rows {
                let (key, event, channel, calls) = row.map_err(self.err())?;
                let Some((app_id, key)) = key else { continue };
                sites.entry((app_id, key)).or_default().push(CallSite {
                    event,
                    channel,
                    calls: from_sql(calls),
                });
            }
        }
        let callers_query = if current {
            format!(
                "SELECT {CALLER_KEY}, calls, first_seen, last_seen FROM callers ORDER BY {CALLER_KEY}"
            )
        } else {
            "SELECT app_id, route, auth_key, 'unknown', '', user_agent, client_address, '',
                    calls, first_seen, last_seen
             FROM callers ORDER BY app_id, route, auth_key, user_agent, client_address"
                .to_owned()
        };
        let mut stmt = self.conn.prepare(&callers_query).map_err(self.err())?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    caller_key(r)?,
                    r.get::<_, i64>(8)?,
                    r.get::<_, i64>(9)?,
                    r.get::<_, i64>(10)?,
                ))
            })
            .map_err(self.err())?;
        for row in rows {
            let (key, calls, first, last) = row.map_err(self.err())?;
            let Some((app_id, key)) = key else { continue };
            let call_sites = sites
                .remove(&(app_id.clone(), key.clone()))
                .unwrap_or_default();
            entry(&mut apps, app_id).callers.push(Caller {
                key,
                calls: from_sql(calls),
                first_seen: datetime(first),
                last_seen: datetime(last),
                call_sites: top_call_sites(call_sites),
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
        let meta = |key: &str| -> Result<Option<String>, StoreError> {
            if !current {
                return Ok(None);
            }
            self.conn
                .query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
                    r.get::<_, String>(0)
                })
                .optional()
                .map_err(self.err())
        };
        let recorded_since = meta(RECORDED_SINCE)?
            .and_then(|v| v.parse::<u64>().ok())
            .map(crate::clock::datetime);
        let open = meta(OPEN)?.map(|v| OpenMark {
            since: v.parse::<u64>().ok().map(crate::clock::datetime),
        });
        Ok(Contents {
            usage: Usage {
                instance: meta(INSTANCE)?.unwrap_or_default(),
                recorded_since,
                apps: apps.into_values().collect(),
            },
            open,
        })
    }

    /// Writes changes (absolute values) and prunes old buckets, in one
    /// transaction.
    pub fn write(&mut self, changes: &Changes) -> Result<(), StoreError> {
        self.commit(changes, false)
    }

    /// The last write of a run, at a clean shutdown: as [`Store::write`],
    /// and in the same transaction the mark that the run closed the
    /// ledger, every call it recorded written.
    pub fn close(&mut self, changes: &Changes) -> Result<(), StoreError> {
        self.commit(changes, true)
    }

    /// [`Store::write`], and with `close` [`Store::close`].
    fn commit(&mut self, changes: &Changes, close: bool) -> Result<(), StoreError> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        {
            let mut caller = tx
                .prepare_cached(&format!(
                    "INSERT INTO callers ({CALLER_KEY}, calls, first_seen, last_seen)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                     ON CONFLICT ({CALLER_KEY})
                     DO UPDATE SET calls = excluded.calls, first_seen = excluded.first_seen, last_seen = excluded.last_seen"
                ))
                .map_err(err)?;
            let mut site = tx
                .prepare_cached(&format!(
                    "INSERT INTO call_sites ({CALLER_KEY}, event, channel, calls)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                     ON CONFLICT ({CALLER_KEY}, event, channel) DO UPDATE SET calls = excluded.calls"
                ))
                .map_err(err)?;
            // A caller's sites are written whole (its top ones and `other`),
            // so its old rows go first: a site pushed out of the top ones
            // since the last write is in `other` now, and its old row would
            // count it twice.
            let mut forget_sites = tx
                .prepare_cached(&format!(
                    "DELETE FROM call_sites WHERE ({CALLER_KEY}) = {KEY_PARAMS}"
                ))
                .map_err(err)?;
            // Callers summed into `other` go first: a caller of the same
            // key seen since is in `changes.callers`, from its new call.
            let mut forget_caller = tx
                .prepare_cached(&format!(
                    "DELETE FROM callers WHERE ({CALLER_KEY}) = {KEY_PARAMS}"
                ))
                .map_err(err)?;
            for (app_id, k) in &changes.folded {
                with_caller_key(app_id, k, |key| {
                    forget_sites.execute(key)?;
                    forget_caller.execute(key)
                })
                .map_err(err)?;
            }
            for (app_id, c) in &changes.callers {
                with_caller_key(app_id, &c.key, |key| {
                    let totals = params![
                        to_sql(c.calls),
                        c.first_seen.unix_timestamp(),
                        c.last_seen.unix_timestamp(),
                    ];
                    caller.execute(rusqlite::params_from_iter(key.iter().chain(totals)))?;
                    forget_sites.execute(key)?;
                    for s in &c.call_sites {
                        let sums = params![s.event, s.channel, to_sql(s.calls)];
                        site.execute(rusqlite::params_from_iter(key.iter().chain(sums)))?;
                    }
                    Ok(0)
                })
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
            pruned_before(&tx, changes.prune_before).map_err(err)?;
            // Callers recorded under another instance name (an earlier
            // run's, or none, from schema 1), or under an earlier
            // fingerprint format, are never counted again: they go once
            // they are as old as the buckets. This sidecar's `other`
            // aggregate (no fingerprint of its own) stays. (Its own
            // callers as old are summed into `other` by the ledger, and
            // go as `changes.folded`, above.)
            let stale = params![
                to_sql(changes.prune_before),
                self.instance,
                to_sql(self.fingerprints_since),
                OTHER
            ];
            let which =
                "last_seen < ?1 AND (instance <> ?2 OR (last_seen < ?3 AND fingerprint <> ?4))";
            tx.execute(
                &format!(
                    "DELETE FROM call_sites WHERE ({CALLER_KEY}) IN
                     (SELECT {CALLER_KEY} FROM callers WHERE {which})"
                ),
                stale,
            )
            .map_err(err)?;
            tx.execute(&format!("DELETE FROM callers WHERE {which}"), stale)
                .map_err(err)?;
            if let Some(since) = changes.recorded_since {
                recorded_from(&tx, since).map_err(err)?;
            }
            if close {
                tx.execute("DELETE FROM meta WHERE key = ?1", params![OPEN])
                    .map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }
}

/// Runs `f` with the values of the [`CALLER_KEY`] columns of `app_id`'s
/// caller `k`, in their order.
fn with_caller_key<R>(
    app_id: &str,
    k: &CallerKey,
    f: impl FnOnce(&[&dyn rusqlite::ToSql]) -> rusqlite::Result<R>,
) -> rusqlite::Result<R> {
    f(params![
        app_id,
        k.route.as_str(),
        k.auth_key,
        k.library,
        k.fingerprint,
        k.user_agent,
        k.client_address,
        k.instance,
    ])
}

/// The app id and caller key of a row's first eight columns
/// ([`CALLER_KEY`]); `None` for a route this release does not know.
fn caller_key(r: &Row<'_>) -> rusqlite::Result<Option<(String, CallerKey)>> {
    let route: String = r.get(1)?;
    let Some(route) = RouteKind::legacy_from_label(&route) else {
        return Ok(None);
    };
    Ok(Some((
        r.get(0)?,
        CallerKey {
            route,
            auth_key: r.get(2)?,
            library: r.get(3)?,
            fingerprint: r.get(4)?,
            user_agent: r.get(5)?,
            client_address: r.get(6)?,
            instance: r.get(7)?,
        },
    )))
}

fn entry(apps: &mut BTreeMap<String, AppUsage>, app_id: String) -> &mut AppUsage {
    apps.entry(app_id.clone()).or_insert_with(|| AppUsage {
        app_id,
        callers: Vec::new(),
        hourly: Vec::new(),
    })
}

#[cfg(test)]
mod tests;

#[cfg(all(test, unix))]
mod file_mode_tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    }

    #[test]
    fn the_ledger_files_are_owner_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 1_795_888_046, "i-1").expect("open");
        let path = dir.path().join(FILE_NAME);
        assert_eq!(mode(&path), 0o600, "{}", path.display());
        for companion in ["ledger.sqlite3-wal", "ledger.sqlite3-shm"] {
            let path = dir.path().join(companion);
            if path.exists() {
                assert_eq!(mode(&path), 0o600, "{}", path.display());
            }
        }
        drop(store);
    }

    #[test]
    fn an_existing_ledger_is_narrowed() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(Store::open(dir.path(), 1_795_888_046, "i-1").expect("open"));
        let path = dir.path().join(FILE_NAME);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let store = Store::open(dir.path(), 1_795_888_046, "i-1").expect("reopen");
        assert_eq!(mode(&path), 0o600);
        drop(store);
    }
}
