//! The usage ledger in memory: every verified legacy call, aggregated per
//! caller and per hour, bounded by `max_callers_per_app`. Recording takes
//! one short lock and never touches the disk; the store is written from
//! what [`Ledger::take_changes`] hands out, in the background.

use std::collections::BTreeMap;
use std::sync::Mutex;

use hashbrown::{Equivalent, HashMap};
use time::OffsetDateTime;

use crate::clock::datetime;

use super::usage::{
    AppUsage, CallSite, Caller, CallerKey, HourlyCount, OTHER, Usage, top_call_sites,
};
use crate::pusher::route::RouteKind;

const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;

/// Distinct call sites counted apart per caller; calls at further sites
/// are summed as [`OTHER`]. Callers list the top
/// [`super::usage::MAX_CALL_SITES`] of them.
pub const MAX_TRACKED_CALL_SITES: usize = 64;

/// One caller's running totals, times in Unix seconds, its call sites, and
/// whether they changed since the last write.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stats {
    calls: u64,
    first_seen: u64,
    last_seen: u64,
    /// Calls per (event, channel template), at most
    /// [`MAX_TRACKED_CALL_SITES`] of them besides `(OTHER, OTHER)`.
    sites: HashMap<(String, String), u64>,
    dirty: bool,
}

impl Stats {
    fn new(now: u64) -> Self {
        Self {
            calls: 0,
            first_seen: now,
            last_seen: now,
            sites: HashMap::new(),
            dirty: true,
        }
    }

    /// Counts a call at `site`; allocates only for a site not seen before.
    fn count_site(&mut self, event: &str, channel: &str) {
        let site = SiteRef(event, channel);
        if let Some(calls) = self.sites.get_mut(&site) {
            *calls = calls.saturating_add(1);
            return;
        }
        let key = if self.sites.len() < MAX_TRACKED_CALL_SITES {
            (event.to_owned(), channel.to_owned())
        } else {
            (OTHER.to_owned(), OTHER.to_owned())
        };
        let calls = self.sites.entry(key).or_default();
        *calls = calls.saturating_add(1);
    }

    /// Adds `folded`'s calls, times and call sites to these (a caller
    /// summed into its route's `other`), within [`MAX_TRACKED_CALL_SITES`].
    fn absorb(&mut self, folded: Stats) {
        self.calls = self.calls.saturating_add(folded.calls);
        self.first_seen = self.first_seen.min(folded.first_seen);
        self.last_seen = self.last_seen.max(folded.last_seen);
        for (site, calls) in folded.sites {
            let key = if self.sites.contains_key(&site) || self.sites.len() < MAX_TRACKED_CALL_SITES
            {
                site
            } else {
                (OTHER.to_owned(), OTHER.to_owned())
            };
            let sum = self.sites.entry(key).or_default();
            *sum = sum.saturating_add(calls);
        }
        self.dirty = true;
    }
}

/// A call site of borrowed parts, to look a known one up without
/// allocating. Hashes like `(String, String)`.
#[derive(Hash)]
struct SiteRef<'a>(&'a str, &'a str);

impl Equivalent<(String, String)> for SiteRef<'_> {
    fn equivalent(&self, key: &(String, String)) -> bool {
        self.0 == key.0 && self.1 == key.1
    }
}

/// One verified deprecated call, as the ledger records it.
#[derive(Debug, Clone, Copy)]
pub struct LedgerCall<'a> {
    /// The app id of its path.
    pub app_id: &'a str,
    /// Its route.
    pub route: RouteKind,
    /// The `auth_key` it was signed with.
    pub auth_key: &'a str,
    /// The sending library's family id.
    pub library: &'a str,
    /// The short hash of the sender's wire traits.
    pub fingerprint: &'a str,
    /// The `User-Agent` header, or empty.
    pub user_agent: &'a str,
    /// The client's IP address.
    pub client_address: &'a str,
    /// The event name (empty for stats).
    pub event: &'a str,
    /// The channel template.
    pub channel: &'a str,
    /// When it was made, Unix seconds.
    pub now: u64,
}

/// One hour's calls, and whether they changed since the last write.
#[derive(Debug, Clone, Copy, Default)]
struct Hour {
    calls: u64,
    dirty: bool,
}

/// A caller identity made of borrowed parts: looking a known caller up
/// allocates nothing. Hashes like [`CallerKey`] (same fields, same order).
#[derive(Hash)]
struct CallerRef<'a> {
    route: RouteKind,
    auth_key: &'a str,
    library: &'a str,
    fingerprint: &'a str,
    user_agent: &'a str,
    client_address: &'a str,
    instance: &'a str,
}

impl Equivalent<CallerKey> for CallerRef<'_> {
    fn equivalent(&self, key: &CallerKey) -> bool {
        self.route == key.route
            && self.auth_key == key.auth_key
            && self.library == key.library
            && self.fingerprint == key.fingerprint
            && self.user_agent == key.user_agent
            && self.client_address == key.client_address
            && self.instance == key.instance
    }
}

// `CallerKey` derives `Hash` over the same fields in the same order, and
// `String` hashes as `str`: the two hash alike, as `Equivalent` requires
// (the tests below find known callers through `CallerRef`).

#[derive(Debug, Default)]
struct AppLedger {
    callers: HashMap<CallerKey, Stats>,
    /// This sidecar's callers other than the `other` aggregates, for the
    /// cap. Callers loaded under another instance name (an earlier run's)
    /// hold no place: no call is counted under that name again.
    distinct: usize,
    hourly: BTreeMap<(RouteKind, u64), Hour>,
}

impl AppLedger {
    /// Drops the buckets of hours before `before` and the callers last
    /// seen before it that are not current ([`is_current`]): no call is
    /// counted for those again, and kept they would grow with every
    /// renamed run or format change. This sidecar's own callers last seen
    /// before it are summed into their route's `other` aggregate, their
    /// totals kept, so that their places under the cap go to new senders
    /// (with the client address in a caller's key, every rollout of a
    /// shared deployment's pods brings new ones).
    ///
    /// Returns the keys of the callers summed: their rows in a store go
    /// when their `other`'s new totals are written ([`Changes::folded`]).
    fn prune(&mut self, before: u64, instance: &str, current_since: u64) -> Vec<CallerKey> {
        self.hourly.retain(|(_, hour), _| *hour >= before);
        let mut folded = Vec::new();
        self.callers.retain(|key, stats| {
            if stats.last_seen >= before || key.is_other() && key.instance == instance {
                return true;
            }
            if is_current(key, stats.last_seen, instance, current_since) {
                folded.push((key.clone(), std::mem::replace(stats, Stats::new(0))));
            }
            false
        });
        folded
            .into_iter()
            .map(|(key, stats)| {
                self.distinct = self.distinct.saturating_sub(1);
                self.callers
                    .entry(CallerKey::other(key.route, instance))
                    .or_insert_with(|| Stats::new(stats.last_seen))
                    .absorb(stats);
                key
            })
            .collect()
    }
}

/// Whether a caller is one that calls can still match: this sidecar's
/// (`instance`), and its `other` aggregate or last seen since
/// `current_since`, from when fingerprint ids are of the format in use
/// ([`crate::telemetry::fingerprint::CANONICAL_VERSION`]). A caller
/// recorded under another instance name, or under an earlier format, is
/// never matched by a call again. Current callers but `other` hold a
/// place under the cap.
fn is_current(key: &CallerKey, last_seen: u64, instance: &str, current_since: u64) -> bool {
    key.instance == instance && (key.is_other() || last_seen >= current_since)
}

#[derive(Debug, Default)]
struct State {
    apps: HashMap<String, AppLedger>,
    /// Calls recorded since the process started.
    recorded: u64,
    /// See [`Usage::recorded_since`], Unix seconds.
    recorded_since: Option<u64>,
    /// Whether `recorded_since` moved since the last write.
    since_moved: bool,
    /// Whether the kill switch is on: legacy calls pass through
    /// unrecorded ([`Ledger::follow_bypass`]).
    bypassed: bool,
    /// From when (Unix seconds) the loaded callers' fingerprint ids are of
    /// the format in use: see [`is_current`].
    current_since: u64,
    /// Whether a store holds this ledger (it was loaded from one, or its
    /// changes were taken): then the callers summed into `other` are kept
    /// in `folded` until written.
    stored: bool,
    /// Callers summed into `other` since the last write: (app id, key).
    folded: Vec<(String, CallerKey)>,
}

impl State {
    /// Calls up to the moment `now` may be missing: `recorded_since` moves
    /// to the first whole second after it ([`first_second_after`]), unless
    /// it is later already.
    fn missed_until(&mut self, now: u64) {
        let from = first_second_after(now);
        if self.recorded_since.is_none_or(|since| since < from) {
            self.recorded_since = Some(from);
            self.since_moved = true;
        }
    }

    /// Drops the buckets of hours before `before` and the other instances'
    /// callers last seen before it (see [`AppLedger::prune`]). The calls of
    /// the dropped hours are no longer held, so a known `recorded_since`
    /// moves to [`kept_from`]`(before)`; an unknown one stays unknown.
    fn prune(&mut self, before: u64, instance: &str) {
        let current_since = self.current_since;
        for (app_id, app) in self.apps.iter_mut() {
            let folded = app.prune(before, instance, current_since);
            if self.stored {
                self.folded
                    .extend(folded.into_iter().map(|key| (app_id.clone(), key)));
            }
        }
        let from = kept_from(before);
        if self.recorded_since.is_some_and(|since| since < from) {
            self.recorded_since = Some(from);
            self.since_moved = true;
        }
    }
}

/// From when a ledger pruned before `before` holds every call: the start
/// of the first hour it keeps whole (buckets of hours starting before
/// `before` are dropped).
pub fn kept_from(before: u64) -> u64 {
    before.div_ceil(HOUR).saturating_mul(HOUR)
}

/// The first whole second after the moment a clock read as `now` (Unix
/// seconds, rounded down): after a gap in the recording that ended at that
/// moment, the earliest time from which every call is recorded. Calls are
/// timestamped in whole seconds, so one made during second `now`, before
/// the moment, may be missing: `now` itself cannot be vouched for.
pub fn first_second_after(now: u64) -> u64 {
    now.saturating_add(1)
}

/// What changed since the last write: absolute values, so writing them
/// twice is harmless.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Callers whose totals changed: (app id, caller).
    pub callers: Vec<(String, Caller)>,
    /// Hourly buckets that changed: (app id, bucket).
    pub hourly: Vec<(String, HourlyCount)>,
    /// Buckets of hours before this Unix time are to be dropped.
    pub prune_before: u64,
    /// The ledger's count of recorded calls when these were taken: once
    /// written, every call up to it is on disk.
    pub recorded_upto: u64,
    /// The new [`Usage::recorded_since`] (Unix seconds), when it moved
    /// since the last write.
    pub recorded_since: Option<u64>,
    /// Callers summed into their route's `other` (last seen before the
    /// retention): (app id, key). Their rows go, before `callers` are
    /// written (which hold the `other`'s new totals, and may hold a caller
    /// of the same key seen again since, counted from its new call).
    pub folded: Vec<(String, CallerKey)>,
}

impl Changes {
    /// Whether there is nothing to write but the pruning.
    pub fn is_empty(&self) -> bool {
        self.callers.is_empty()
            && self.hourly.is_empty()
            && self.recorded_since.is_none()
            && self.folded.is_empty()
    }
}

/// The aggregated ledger.
#[derive(Debug)]
pub struct Ledger {
    state: Mutex<State>,
    max_callers_per_app: usize,
    retention_secs: u64,
    /// The sidecar's name, recorded with its callers.
    instance: String,
}

fn unix(t: OffsetDateTime) -> u64 {
    u64::try_from(t.unix_timestamp()).unwrap_or(0)
}

impl Ledger {
    /// An empty ledger of the sidecar `instance`, keeping
    /// `max_callers_per_app` callers apart per app and hourly buckets for
    /// `retention_days`.
    pub fn new(max_callers_per_app: usize, retention_days: u64, instance: &str) -> Self {
        Self {
            state: Mutex::new(State::default()),
            max_callers_per_app,
            retention_secs: retention_days.saturating_mul(DAY),
            instance: instance.to_owned(),
        }
    }

    /// The sidecar's name.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Marks the ledger as recording every call since Unix time `since`
    /// (the start of an in-memory ledger; a store's creation), unless it
    /// already records since earlier.
    pub fn recording_since(&self, since: u64) {
        let mut state = self.lock();
        state.recorded_since = Some(state.recorded_since.map_or(since, |s| s.min(since)));
    }

    /// Follows the kill switch (`bypass`) of the configuration in force
    /// from Unix time `now` on. While it is on, legacy calls pass through
    /// unrecorded, so the ledger vouches for none of them: its
    /// [`Usage::recorded_since`] moves past `now` when the switch is
    /// turned on, at every write and snapshot while it stays on
    /// ([`Ledger::take_changes`], [`Ledger::snapshot`]), and past the
    /// moment it is turned off. Called once the configuration is in force
    /// for new requests.
    pub fn follow_bypass(&self, bypass: bool, now: u64) {
        let mut state = self.lock();
        if bypass || state.bypassed {
            state.missed_until(now);
        }
        state.bypassed = bypass;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated
        // in a way that matters for counting; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads what a store holds (at startup). Loaded entries are not dirty.
    /// `current_since` is when the store took up the fingerprint format in
    /// use ([`crate::telemetry::store::Store::fingerprints_since`]): this
    /// sidecar's callers last seen before it hold no place under the cap
    /// and go with the buckets, as another instance's do. Its `other`
    /// aggregate stays.
    pub fn load(&self, usage: Usage, current_since: u64) {
        let mut state = self.lock();
        state.stored = true;
        state.current_since = current_since;
        if let Some(since) = usage.recorded_since {
            let since = unix(since);
            state.recorded_since = Some(state.recorded_since.map_or(since, |s| s.min(since)));
        }
        for app in usage.apps {
            let ledger = state.apps.entry(app.app_id).or_default();
            for c in app.callers {
                if !c.key.is_other()
                    && is_current(&c.key, unix(c.last_seen), &self.instance, current_since)
                {
                    ledger.distinct += 1;
                }
                let sites = c
                    .call_sites
                    .into_iter()
                    .map(|s| ((s.event, s.channel), s.calls))
                    .collect();
                ledger.callers.insert(
                    c.key,
                    Stats {
                        calls: c.calls,
                        first_seen: unix(c.first_seen),
                        last_seen: unix(c.last_seen),
                        sites,
                        dirty: false,
                    },
                );
            }
            for h in app.hourly {
                let hour = Hour {
                    calls: h.calls,
                    dirty: false,
                };
                ledger.hourly.insert((h.route, unix(h.hour)), hour);
            }
        }
    }

    /// Records one verified deprecated call. Allocates only for a caller,
    /// a call site or an app seen for the first time.
    pub fn record(&self, call: &LedgerCall<'_>) {
        let caller = CallerRef {
            route: call.route,
            auth_key: call.auth_key,
            library: call.library,
            fingerprint: call.fingerprint,
            user_agent: call.user_agent,
            client_address: call.client_address,
            instance: &self.instance,
        };
        let now = call.now;
        let hour = now - now % HOUR;
        let mut state = self.lock();
        // One lookup; the id is copied only for an app not seen before.
        let app = state.apps.entry_ref(call.app_id).or_default();
        let stats = match app.callers.get_mut(&caller) {
            Some(stats) => stats,
            None => {
                let key = if app.distinct < self.max_callers_per_app {
                    app.distinct += 1;
                    CallerKey {
                        route: call.route,
                        auth_key: call.auth_key.to_owned(),
                        library: call.library.to_owned(),
                        fingerprint: call.fingerprint.to_owned(),
                        user_agent: call.user_agent.to_owned(),
                        client_address: call.client_address.to_owned(),
                        instance: self.instance.clone(),
                    }
                } else {
                    CallerKey::other(call.route, &self.instance)
                };
                app.callers.entry(key).or_insert_with(|| Stats::new(now))
            }
        };
        stats.calls = stats.calls.saturating_add(1);
        stats.first_seen = stats.first_seen.min(now);
        stats.last_seen = stats.last_seen.max(now);
        stats.count_site(call.event, call.channel);
        stats.dirty = true;
        let bucket = app.hourly.entry((call.route, hour)).or_default();
        bucket.calls = bucket.calls.saturating_add(1);
        bucket.dirty = true;
        state.recorded = state.recorded.saturating_add(1);
    }

    /// Calls recorded since the process started (for what is not yet
    /// written: this minus [`Changes::recorded_upto`] of the last write).
    pub fn recorded(&self) -> u64 {
        self.lock().recorded
    }

    /// Takes what changed since the last call, and drops buckets older than
    /// the retention (relative to `now`) from memory, with the callers of
    /// other instance names last seen before them, and sums this sidecar's
    /// callers last seen before them into `other` (their places under the
    /// cap freed); `recorded_since` moves past what was dropped. While the
    /// kill switch is on, `recorded_since` moves past `now` first.
    pub fn take_changes(&self, now: u64) -> Changes {
        let prune_before = now.saturating_sub(self.retention_secs);
        let mut state = self.lock();
        if state.bypassed {
            state.missed_until(now);
        }
        // Changes taken are for a store (loaded or new).
        state.stored = true;
        state.prune(prune_before, &self.instance);
        let recorded_since = if state.since_moved {
            state.since_moved = false;
            state.recorded_since
        } else {
            None
        };
        let mut changes = Changes {
            prune_before,
            recorded_upto: state.recorded,
            recorded_since,
            folded: std::mem::take(&mut state.folded),
            ..Changes::default()
        };
        for (app_id, app) in state.apps.iter_mut() {
            for (key, stats) in app.callers.iter_mut().filter(|(_, s)| s.dirty) {
                stats.dirty = false;
                changes
                    .callers
                    .push((app_id.clone(), caller(key.clone(), stats)));
            }
            for (&(route, hour), bucket) in app.hourly.iter_mut().filter(|(_, h)| h.dirty) {
                bucket.dirty = false;
                let count = HourlyCount {
                    route,
                    hour: datetime(hour),
                    calls: bucket.calls,
                };
                changes.hourly.push((app_id.clone(), count));
            }
        }
        changes
    }

    /// Marks changes as not yet written again (after a failed write).
    pub fn restore_changes(&self, changes: Changes) {
        let mut state = self.lock();
        if changes.recorded_since.is_some() {
            state.since_moved = true;
        }
        state.folded.extend(changes.folded);
        for (app_id, c) in changes.callers {
            if let Some(stats) = state
                .apps
                .get_mut(app_id.as_str())
                .and_then(|a| a.callers.get_mut(&c.key))
            {
                stats.dirty = true;
            }
        }
        for (app_id, h) in changes.hourly {
            if let Some(bucket) = state
                .apps
                .get_mut(app_id.as_str())
                .and_then(|a| a.hourly.get_mut(&(h.route, unix(h.hour))))
            {
                bucket.dirty = true;
            }
        }
    }

    /// Everything the ledger holds at Unix time `now`, apps sorted by id,
    /// callers by key, buckets by time, after pruning as
    /// [`Ledger::take_changes`] does. While the kill switch is on,
    /// `recorded_since` moves past `now` first.
    pub fn snapshot(&self, now: u64) -> Usage {
        let prune_before = now.saturating_sub(self.retention_secs);
        let mut state = self.lock();
        if state.bypassed {
            state.missed_until(now);
        }
        // Without a store, nothing else prunes.
        state.prune(prune_before, &self.instance);
        let mut apps: Vec<AppUsage> = state
            .apps
            .iter()
            .map(|(app_id, app)| {
                let mut callers: Vec<Caller> = app
                    .callers
                    .iter()
                    .map(|(k, s)| caller(k.clone(), s))
                    .collect();
                callers.sort_by(|a, b| a.key.cmp(&b.key));
                let mut hourly: Vec<HourlyCount> = app
                    .hourly
                    .iter()
                    .map(|(&(route, hour), h)| HourlyCount {
                        route,
                        hour: datetime(hour),
                        calls: h.calls,
                    })
                    .collect();
                hourly.sort_by_key(|h| (h.hour, h.route));
                AppUsage {
                    app_id: app_id.clone(),
                    callers,
                    hourly,
                }
            })
            .collect();
        apps.sort_by(|a, b| a.app_id.cmp(&b.app_id));
        Usage {
            instance: self.instance.clone(),
            recorded_since: state.recorded_since.map(datetime),
            apps,
        }
    }
}

fn caller(key: CallerKey, s: &Stats) -> Caller {
    Caller {
        key,
        calls: s.calls,
        first_seen: datetime(s.first_seen),
        last_seen: datetime(s.last_seen),
        call_sites: top_call_sites(s.sites.iter().map(|((event, channel), calls)| CallSite {
            event: event.clone(),
            channel: channel.clone(),
            calls: *calls,
        })),
    }
}

#[cfg(test)]
pub(super) mod tests;
