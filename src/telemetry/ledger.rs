//! The usage ledger in memory: every verified legacy call, aggregated per
//! caller and per hour, bounded by `max_callers_per_app`. Recording takes
//! one short lock and never touches the disk; the store is written from
//! what [`Ledger::take_changes`] hands out, in the background.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use time::OffsetDateTime;

use super::usage::{AppUsage, Caller, CallerKey, HourlyCount, LegacyRoute, Usage};

const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;

/// One caller's running totals, times in Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stats {
    calls: u64,
    first_seen: u64,
    last_seen: u64,
}

#[derive(Debug, Default)]
struct AppLedger {
    callers: HashMap<CallerKey, Stats>,
    /// Callers other than the `other` aggregates, for the cap.
    distinct: usize,
    hourly: BTreeMap<(LegacyRoute, u64), u64>,
}

#[derive(Debug, Default)]
struct State {
    apps: HashMap<String, AppLedger>,
    dirty_callers: HashSet<(String, CallerKey)>,
    dirty_hours: HashSet<(String, LegacyRoute, u64)>,
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
}

impl Changes {
    /// Whether there is nothing to write but the pruning.
    pub fn is_empty(&self) -> bool {
        self.callers.is_empty() && self.hourly.is_empty()
    }
}

/// The aggregated ledger.
#[derive(Debug)]
pub struct Ledger {
    state: Mutex<State>,
    max_callers_per_app: usize,
    retention_secs: u64,
}

fn datetime(unix: u64) -> OffsetDateTime {
    i64::try_from(unix)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn unix(t: OffsetDateTime) -> u64 {
    u64::try_from(t.unix_timestamp()).unwrap_or(0)
}

impl Ledger {
    /// An empty ledger keeping `max_callers_per_app` callers apart per app
    /// and hourly buckets for `retention_days`.
    pub fn new(max_callers_per_app: usize, retention_days: u64) -> Self {
        Self {
            state: Mutex::new(State::default()),
            max_callers_per_app,
            retention_secs: retention_days.saturating_mul(DAY),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated
        // in a way that matters for counting; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads what a store holds (at startup). Loaded entries are not dirty.
    pub fn load(&self, usage: Usage) {
        let mut state = self.lock();
        for app in usage.apps {
            let ledger = state.apps.entry(app.app_id).or_default();
            for c in app.callers {
                if c.key != CallerKey::other(c.key.route) {
                    ledger.distinct += 1;
                }
                ledger.callers.insert(
                    c.key,
                    Stats {
                        calls: c.calls,
                        first_seen: unix(c.first_seen),
                        last_seen: unix(c.last_seen),
                    },
                );
            }
            for h in app.hourly {
                ledger.hourly.insert((h.route, unix(h.hour)), h.calls);
            }
        }
    }

    /// Records one verified legacy call made at `now` (Unix seconds).
    pub fn record(
        &self,
        app_id: &str,
        route: LegacyRoute,
        auth_key: &str,
        user_agent: &str,
        client_address: &str,
        now: u64,
    ) {
        let key = CallerKey {
            route,
            auth_key: auth_key.to_owned(),
            user_agent: user_agent.to_owned(),
            client_address: client_address.to_owned(),
        };
        let hour = now - now % HOUR;
        let mut guard = self.lock();
        let state = &mut *guard;
        if !state.apps.contains_key(app_id) {
            state.apps.insert(app_id.to_owned(), AppLedger::default());
        }
        let Some(app) = state.apps.get_mut(app_id) else {
            return;
        };
        let key = if app.callers.contains_key(&key) {
            key
        } else if app.distinct < self.max_callers_per_app {
            app.distinct += 1;
            key
        } else {
            CallerKey::other(route)
        };
        let stats = app.callers.entry(key.clone()).or_insert(Stats {
            calls: 0,
            first_seen: now,
            last_seen: now,
        });
        stats.calls += 1;
        stats.first_seen = stats.first_seen.min(now);
        stats.last_seen = stats.last_seen.max(now);
        *app.hourly.entry((route, hour)).or_default() += 1;
        state.dirty_callers.insert((app_id.to_owned(), key));
        state.dirty_hours.insert((app_id.to_owned(), route, hour));
    }

    /// Takes what changed since the last call, and drops buckets older than
    /// the retention (relative to `now`) from memory.
    pub fn take_changes(&self, now: u64) -> Changes {
        let prune_before = now.saturating_sub(self.retention_secs);
        let mut state = self.lock();
        for app in state.apps.values_mut() {
            app.hourly.retain(|(_, hour), _| *hour >= prune_before);
        }
        let dirty_callers = std::mem::take(&mut state.dirty_callers);
        let dirty_hours = std::mem::take(&mut state.dirty_hours);
        let callers = dirty_callers
            .into_iter()
            .filter_map(|(app_id, key)| {
                let stats = *state.apps.get(&app_id)?.callers.get(&key)?;
                Some((app_id, caller(key, stats)))
            })
            .collect();
        let hourly = dirty_hours
            .into_iter()
            .filter_map(|(app_id, route, hour)| {
                let calls = *state.apps.get(&app_id)?.hourly.get(&(route, hour))?;
                Some((
                    app_id,
                    HourlyCount {
                        route,
                        hour: datetime(hour),
                        calls,
                    },
                ))
            })
            .collect();
        Changes {
            callers,
            hourly,
            prune_before,
        }
    }

    /// Marks changes as not yet written again (after a failed write).
    pub fn restore_changes(&self, changes: Changes) {
        let mut state = self.lock();
        for (app_id, c) in changes.callers {
            state.dirty_callers.insert((app_id, c.key));
        }
        for (app_id, h) in changes.hourly {
            state.dirty_hours.insert((app_id, h.route, unix(h.hour)));
        }
    }

    /// Everything the ledger holds, apps sorted by id, callers by key,
    /// buckets by time.
    pub fn snapshot(&self) -> Usage {
        let state = self.lock();
        let mut apps: Vec<AppUsage> = state
            .apps
            .iter()
            .map(|(app_id, app)| {
                let mut callers: Vec<Caller> = app
                    .callers
                    .iter()
                    .map(|(k, s)| caller(k.clone(), *s))
                    .collect();
                callers.sort_by(|a, b| a.key.cmp(&b.key));
                let mut hourly: Vec<HourlyCount> = app
                    .hourly
                    .iter()
                    .map(|(&(route, hour), &calls)| HourlyCount {
                        route,
                        hour: datetime(hour),
                        calls,
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
        Usage { apps }
    }
}

fn caller(key: CallerKey, s: Stats) -> Caller {
    Caller {
        key,
        calls: s.calls,
        first_seen: datetime(s.first_seen),
        last_seen: datetime(s.last_seen),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::usage::OTHER;

    const T: u64 = 1_795_888_046;

    fn total_calls(u: &Usage) -> u64 {
        u.apps
            .iter()
            .flat_map(|a| &a.callers)
            .map(|c| c.calls)
            .sum()
    }

    #[test]
    fn aggregates_per_caller_and_hour() {
        let l = Ledger::new(100, 35);
        for i in 0..5 {
            l.record(
                "1",
                LegacyRoute::LegacyTrigger,
                "k",
                "ua",
                "10.0.0.1",
                T + i * 1000,
            );
        }
        l.record("1", LegacyRoute::LegacyStats, "k", "ua", "10.0.0.1", T);
        let u = l.snapshot();
        let app = &u.apps[0];
        assert_eq!(app.callers.len(), 2);
        let trig = app
            .callers
            .iter()
            .find(|c| c.key.route == LegacyRoute::LegacyTrigger)
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
        let l = Ledger::new(3, 35);
        for i in 0..10_000 {
            l.record(
                "1",
                LegacyRoute::LegacyTrigger,
                "k",
                &format!("ua-{i}"),
                "10.0.0.1",
                T,
            );
        }
        // A known caller keeps being counted on its own.
        l.record("1", LegacyRoute::LegacyTrigger, "k", "ua-0", "10.0.0.1", T);
        let u = l.snapshot();
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
        let l = Ledger::new(100, 35);
        l.record("1", LegacyRoute::LegacyTrigger, "k", "ua", "a", T);
        l.record("1", LegacyRoute::LegacyTrigger, "k", "ua", "a", T);
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
        let a = Ledger::new(2, 35);
        a.record("1", LegacyRoute::LegacyTrigger, "k", "ua-1", "a", T);
        a.record("1", LegacyRoute::LegacyTrigger, "k", "ua-2", "a", T);
        let b = Ledger::new(2, 35);
        b.load(a.snapshot());
        b.record("1", LegacyRoute::LegacyTrigger, "k", "ua-1", "a", T + 5);
        b.record("1", LegacyRoute::LegacyTrigger, "k", "ua-3", "a", T + 5);
        let u = b.snapshot();
        assert_eq!(total_calls(&u), 4);
        assert!(
            u.apps[0].callers.iter().any(|c| c.key.auth_key == OTHER),
            "the cap survives a restart"
        );
    }

    #[test]
    fn old_buckets_are_pruned() {
        let l = Ledger::new(100, 30);
        l.record("1", LegacyRoute::LegacyTrigger, "k", "ua", "a", T);
        let later = T + 31 * DAY;
        let c = l.take_changes(later);
        assert_eq!(c.prune_before, later - 30 * DAY);
        assert!(l.snapshot().apps[0].hourly.is_empty());
        assert_eq!(l.snapshot().apps[0].callers[0].calls, 1, "callers are kept");
    }
}
