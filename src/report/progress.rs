//! The progress figures of an app: status, trend, last call, and the
//! buckets its chart is drawn from.

use std::collections::BTreeMap;

use time::{Date, Duration, OffsetDateTime, PrimitiveDateTime, Time};

use super::text::{day_key, hour_key, utc};
use super::{
    Direction, MAX_DAYS, Point, QUIET_AFTER, Resolution, Status, Trend, bucket_ends_after,
};
use crate::telemetry::usage::AppUsage;

/// The most hours an hourly chart holds: three days, the hour straddling
/// the start, and the day a fast clock's buckets may add after `now`.
pub(super) const MAX_HOURS: usize = 3 * 24 + 1 + 24;

/// The report's window and what the ledger says about it.
pub(super) struct Window {
    pub(super) now: OffsetDateTime,
    pub(super) start: Option<OffsetDateTime>,
    /// Since when the ledger holds every call before `start`, for the
    /// trend's previous window (`None`: unknown, or a ledger marked open
    /// before `start` may miss some of them).
    pub(super) recorded_since: Option<OffsetDateTime>,
    pub(super) covers_window: bool,
    pub(super) resolution: Resolution,
}

/// `active` when `last` is within [`QUIET_AFTER`] of `now` (or after it),
/// else `quiet`.
pub(super) fn recency(last: OffsetDateTime, now: OffsetDateTime) -> Status {
    match now.checked_sub(QUIET_AFTER) {
        Some(cutoff) if last <= cutoff => Status::Quiet,
        _ => Status::Active,
    }
}

/// The latest call the ledger knows of: a caller's last call, or the start
/// of the latest hour with calls.
pub(super) fn last_call(app: &AppUsage) -> Option<OffsetDateTime> {
    let by_caller = app.callers.iter().map(|c| c.last_seen);
    let by_bucket = app.hourly.iter().filter(|h| h.calls > 0).map(|h| h.hour);
    by_caller.chain(by_bucket).max()
}

/// Calls in buckets ending after `after` (all of them for `None`).
pub(super) fn calls_after(app: &AppUsage, after: Option<OffsetDateTime>) -> u64 {
    app.hourly
        .iter()
        .filter(|h| after.is_none_or(|a| bucket_ends_after(h.hour, a)))
        .fold(0, |sum, h| sum.saturating_add(h.calls))
}

impl Window {
    /// See [`Status`].
    pub(super) fn status(&self, last_call: Option<OffsetDateTime>, window: u64) -> Status {
        match last_call {
            Some(t) if recency(t, self.now) == Status::Active => Status::Active,
            Some(t) if window > 0 || self.start.is_none_or(|s| t >= s) => Status::Quiet,
            _ if self.covers_window => Status::Done,
            _ => Status::Unproven,
        }
    }

    /// The window's calls against the previous window of the same length.
    pub(super) fn trend(&self, app: &AppUsage, window: u64) -> Option<Trend> {
        let start = self.start?;
        let previous_start = start.checked_sub(self.now - start);
        let previous = app
            .hourly
            .iter()
            .filter(|h| {
                !bucket_ends_after(h.hour, start)
                    && previous_start.is_none_or(|p| bucket_ends_after(h.hour, p))
            })
            .fold(0u64, |sum, h| sum.saturating_add(h.calls));
        let direction = match window.cmp(&previous) {
            std::cmp::Ordering::Greater => Direction::Up,
            std::cmp::Ordering::Less => Direction::Down,
            std::cmp::Ordering::Equal => Direction::Flat,
        };
        let change_percent = (previous > 0).then(|| {
            let change = (i128::from(window) - i128::from(previous)) * 100 / i128::from(previous);
            i64::try_from(change).unwrap_or(i64::MAX)
        });
        let previous_covered = match (previous_start, self.recorded_since) {
            (Some(p), Some(r)) => r <= p,
            _ => false,
        };
        Some(Trend {
            previous,
            direction,
            change_percent,
            previous_covered,
        })
    }

    /// Whether the bucket from `start` to `end` (`None`: unrepresentable)
    /// is only partly in the window.
    fn partial(&self, start: OffsetDateTime, end: Option<OffsetDateTime>) -> bool {
        end.is_none_or(|end| end > self.now) || self.start.is_some_and(|s| s > start)
    }
}

/// Calls per UTC day in the window, by day.
fn by_day(app: &AppUsage, w: &Window) -> BTreeMap<Date, u64> {
    let mut by_day: BTreeMap<Date, u64> = BTreeMap::new();
    for h in app
        .hourly
        .iter()
        .filter(|h| h.calls > 0 && w.start.is_none_or(|s| bucket_ends_after(h.hour, s)))
    {
        let day = by_day.entry(utc(h.hour).date()).or_default();
        *day = day.saturating_add(h.calls);
    }
    by_day
}

/// Every day from the window start's day (or the first day with calls)
/// through `now`'s day, most recent [`MAX_DAYS`] only, oldest first. Days
/// with calls outside that span (buckets not aligned to the hour, or
/// stamped after `now` by a sidecar with a fast clock) widen it rather
/// than vanish, up to the day after `now`'s, as in the hourly chart: a
/// bucket stamped years ahead would otherwise push the whole window out
/// of the [`MAX_DAYS`] kept. Calls stamped later are left out of the
/// charts, not of the window's totals.
fn days(app: &AppUsage, w: &Window) -> Vec<(Date, u64)> {
    let by_day = by_day(app, w);
    let mut first = w.start.map(|s| utc(s).date());
    let today = utc(w.now).date();
    let horizon = today.next_day().unwrap_or(today);
    let mut last = today;
    if let Some((&day, _)) = by_day.first_key_value() {
        first = Some(first.map_or(day, |f| f.min(day)));
    }
    if let Some((&day, _)) = by_day.range(..=horizon).next_back() {
        last = last.max(day);
    }
    let mut out = Vec::new();
    let Some(first) = first else {
        return out;
    };
    // Walk back from the last day so the cap keeps the most recent days
    // without ever iterating a huge span.
    let mut day = last;
    while day >= first && out.len() < MAX_DAYS {
        out.push((day, by_day.get(&day).copied().unwrap_or(0)));
        match day.previous_day() {
            Some(previous) => day = previous,
            None => break,
        }
    }
    out.reverse();
    out
}

/// [`super::AppReport::daily`].
pub(super) fn daily(app: &AppUsage, w: &Window) -> BTreeMap<String, u64> {
    days(app, w)
        .into_iter()
        .map(|(d, n)| (day_key(d), n))
        .collect()
}

/// [`super::AppReport::chart`].
pub(super) fn chart(app: &AppUsage, w: &Window) -> Vec<Point> {
    match w.resolution {
        Resolution::Day => days(app, w)
            .into_iter()
            .map(|(day, calls)| {
                let start = day.midnight().assume_utc();
                let end = day.next_day().map(|d| d.midnight().assume_utc());
                Point {
                    start: day_key(day),
                    calls,
                    partial: w.partial(start, end),
                }
            })
            .collect(),
        Resolution::Hour => hours(app, w),
    }
}

/// The start of `t`'s UTC hour.
fn floor_hour(t: OffsetDateTime) -> OffsetDateTime {
    let t = utc(t);
    let hour = Time::from_hms(t.hour(), 0, 0).unwrap_or(Time::MIDNIGHT);
    PrimitiveDateTime::new(t.date(), hour).assume_utc()
}

/// Every UTC hour from the window start's through `now`'s (widened by
/// buckets stamped later), most recent [`MAX_HOURS`] only, oldest first.
fn hours(app: &AppUsage, w: &Window) -> Vec<Point> {
    let mut by_hour: BTreeMap<OffsetDateTime, u64> = BTreeMap::new();
    for h in app
        .hourly
        .iter()
        .filter(|h| h.calls > 0 && w.start.is_none_or(|s| bucket_ends_after(h.hour, s)))
    {
        let n = by_hour.entry(floor_hour(h.hour)).or_default();
        *n = n.saturating_add(h.calls);
    }
    let first = floor_hour(w.start.unwrap_or(w.now));
    let mut hour = floor_hour(w.now);
    // A fast clock's buckets widen the chart by a day at most.
    let horizon = w.now.checked_add(Duration::DAY).map_or(hour, floor_hour);
    if let Some((&latest, _)) = by_hour.range(..=horizon).next_back() {
        hour = hour.max(latest);
    }
    let mut out = Vec::new();
    while hour >= first && out.len() < MAX_HOURS {
        let end = hour.checked_add(Duration::HOUR);
        out.push(Point {
            start: hour_key(hour),
            calls: by_hour.get(&hour).copied().unwrap_or(0),
            partial: w.partial(hour, end),
        });
        match hour.checked_sub(Duration::HOUR) {
            Some(previous) => hour = previous,
            None => break,
        }
    }
    out.reverse();
    out
}
