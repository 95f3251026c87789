//! Reports built from the usage ledger: who still makes deprecated calls,
//! how many, and when, for `pusher-cutover report` and the admin
//! listener's `/report`.
//!
//! [`build`] turns a [`Usage`] into a [`Report`] for a time window; the
//! renderers ([`render_json`], [`render_table`], [`render_html`]) only
//! format a report, so all three show the same numbers. [`used_since`]
//! backs `--fail-if-used-since`.
//!
//! Nothing here panics, whatever the ledger holds: times are formatted
//! without fallible steps where possible and with a fallback otherwise,
//! counts saturate, and caller strings (which come from request headers)
//! are sanitised for the terminal and escaped for HTML.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::{Date, Duration, OffsetDateTime, PrimitiveDateTime, UtcOffset};

use crate::pusher::route::RouteKind;
use crate::telemetry::usage::{AppUsage, Caller, Usage};

mod html;
pub mod sources;
mod table;

pub use html::render_html;
pub use table::render_table;

/// The most days [`AppReport::daily`] holds; older days are dropped so a
/// long window cannot make the output unbounded.
pub const MAX_DAYS: usize = 400;

/// Days of daily counts the table shows per app.
const TABLE_DAYS: usize = 14;

/// A report over a window of the usage ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// When the report was built (the `now` given to [`build`]); RFC 3339
    /// (UTC) in JSON.
    #[serde(serialize_with = "ser_time")]
    pub generated_at: OffsetDateTime,
    /// The window's start, or `None` for all time; RFC 3339 (UTC) or
    /// `null` in JSON. The window ends at `generated_at`.
    #[serde(serialize_with = "ser_opt_time")]
    pub since: Option<OffsetDateTime>,
    /// Every app in the ledger, most deprecated calls in the window first,
    /// then by app id. Apps without calls in the window are kept (with
    /// zeros), so an app that has stopped shows as such.
    pub apps: Vec<AppReport>,
}

/// One app's part of a [`Report`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppReport {
    /// The app id.
    pub app_id: String,
    /// Calls in the window per route; every route is present, 0 when
    /// unused. Keys are the route labels (`legacy_trigger`, ...) in JSON.
    ///
    /// The ledger counts per hour, so the window is applied to hourly
    /// buckets: a bucket counts when its hour ends after the window's
    /// start, so the bucket straddling the start counts in full (as do
    /// buckets a sidecar with a fast clock stamped after `now`).
    #[serde(serialize_with = "ser_routes")]
    pub deprecated_calls: BTreeMap<RouteKind, u64>,
    /// Calls per UTC day (`YYYY-MM-DD`), bucketed like `deprecated_calls`,
    /// with every day from the window start's day (for all time, the
    /// first day with calls) through the report's day, 0 for days without
    /// calls, so charts have no gaps. At most [`MAX_DAYS`] days, the most
    /// recent; calls on dropped days still count in `deprecated_calls`.
    pub daily: BTreeMap<String, u64>,
    /// The callers last seen in the window, most calls first, then most
    /// recently seen.
    pub callers: Vec<CallerReport>,
}

impl AppReport {
    /// All deprecated calls in the window (saturating).
    pub fn total(&self) -> u64 {
        self.deprecated_calls
            .values()
            .fold(0, |sum, n| sum.saturating_add(*n))
    }
}

/// One caller in an [`AppReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallerReport {
    /// The route.
    pub route: RouteKind,
    /// The `auth_key` the calls were signed with.
    pub auth_key: String,
    /// The `User-Agent` header, or empty when absent.
    pub user_agent: String,
    /// The client's IP address.
    pub client_address: String,
    /// The caller's lifetime total, not its calls in the window: the ledger
    /// keeps no per-caller time series, only totals and first/last seen.
    pub calls: u64,
    /// The caller's first call; RFC 3339 (UTC) in JSON.
    #[serde(serialize_with = "ser_time")]
    pub first_seen: OffsetDateTime,
    /// The caller's latest call; RFC 3339 (UTC) in JSON.
    #[serde(serialize_with = "ser_time")]
    pub last_seen: OffsetDateTime,
}

impl From<&Caller> for CallerReport {
    fn from(c: &Caller) -> Self {
        Self {
            route: c.key.route,
            auth_key: c.key.auth_key.clone(),
            user_agent: c.key.user_agent.clone(),
            client_address: c.key.client_address.clone(),
            calls: c.calls,
            first_seen: c.first_seen,
            last_seen: c.last_seen,
        }
    }
}

/// Builds the report for the window from `now - since` to `now` (all time
/// when `since` is `None`).
///
/// Hourly buckets count when their hour ends after the window's start, so
/// the bucket straddling the start counts in full; callers are kept when
/// last seen at or after the start. A `since` reaching before the earliest
/// representable time means all of it.
pub fn build(usage: &Usage, now: OffsetDateTime, since: Option<std::time::Duration>) -> Report {
    let start = since.map(|since| window_start(now, since));
    let mut apps: Vec<AppReport> = usage
        .apps
        .iter()
        .map(|app| app_report(app, now, start))
        .collect();
    apps.sort_by(|a, b| {
        b.total()
            .cmp(&a.total())
            .then_with(|| a.app_id.cmp(&b.app_id))
    });
    Report {
        generated_at: now,
        since: start,
        apps,
    }
}

/// Whether any deprecated call was seen at or after `cutoff`: a caller
/// last seen then, or a non-empty hourly bucket whose hour ends after it.
pub fn used_since(usage: &Usage, cutoff: OffsetDateTime) -> bool {
    usage.apps.iter().any(|app| {
        app.callers.iter().any(|c| c.last_seen >= cutoff)
            || app
                .hourly
                .iter()
                .any(|h| h.calls > 0 && bucket_ends_after(h.hour, cutoff))
    })
}

/// The report as pretty-printed JSON.
pub fn render_json(report: &Report) -> String {
    // The serialisers above cannot fail (string keys, infallible time
    // formatting), but answer with JSON rather than panic if that changes.
    serde_json::to_string_pretty(report).unwrap_or_else(|e| {
        serde_json::json!({ "error": format!("cannot serialise the report: {e}") }).to_string()
    })
}

/// `now - since`, or the earliest representable time when that is out of
/// range (then the window is all of the ledger anyway).
fn window_start(now: OffsetDateTime, since: std::time::Duration) -> OffsetDateTime {
    Duration::try_from(since)
        .ok()
        .and_then(|since| now.checked_sub(since))
        .unwrap_or_else(|| PrimitiveDateTime::MIN.assume_utc())
}

/// Whether the hour starting at `hour` ends after `instant`; an hour too
/// late to have a representable end does.
fn bucket_ends_after(hour: OffsetDateTime, instant: OffsetDateTime) -> bool {
    hour.checked_add(Duration::HOUR)
        .is_none_or(|end| end > instant)
}

fn app_report(app: &AppUsage, now: OffsetDateTime, start: Option<OffsetDateTime>) -> AppReport {
    let mut deprecated_calls: BTreeMap<RouteKind, u64> =
        RouteKind::LEGACY.into_iter().map(|r| (r, 0)).collect();
    let mut by_day: BTreeMap<Date, u64> = BTreeMap::new();
    let in_window = app
        .hourly
        .iter()
        .filter(|h| start.is_none_or(|start| bucket_ends_after(h.hour, start)));
    for h in in_window {
        let route = deprecated_calls.entry(h.route).or_default();
        *route = route.saturating_add(h.calls);
        if h.calls > 0 {
            let day = by_day.entry(utc(h.hour).date()).or_default();
            *day = day.saturating_add(h.calls);
        }
    }
    AppReport {
        app_id: app.app_id.clone(),
        deprecated_calls,
        daily: daily(&by_day, now, start),
        callers: callers(&app.callers, start),
    }
}

/// Every day from the window start's day (or the first day with calls)
/// through `now`'s day, most recent [`MAX_DAYS`] only. Days with calls
/// outside that span (buckets not aligned to the hour, or stamped after
/// `now` by a sidecar with a fast clock) widen it rather than vanish.
fn daily(
    by_day: &BTreeMap<Date, u64>,
    now: OffsetDateTime,
    start: Option<OffsetDateTime>,
) -> BTreeMap<String, u64> {
    let mut first = start.map(|s| utc(s).date());
    let mut last = utc(now).date();
    if let Some((&day, _)) = by_day.first_key_value() {
        first = Some(first.map_or(day, |f| f.min(day)));
    }
    if let Some((&day, _)) = by_day.last_key_value() {
        last = last.max(day);
    }
    let mut out = BTreeMap::new();
    let Some(first) = first else {
        return out;
    };
    // Walk back from the last day so the cap keeps the most recent days
    // without ever iterating a huge span.
    let mut day = last;
    while day >= first && out.len() < MAX_DAYS {
        out.insert(day_key(day), by_day.get(&day).copied().unwrap_or(0));
        match day.previous_day() {
            Some(previous) => day = previous,
            None => break,
        }
    }
    out
}

fn callers(callers: &[Caller], start: Option<OffsetDateTime>) -> Vec<CallerReport> {
    let mut out: Vec<CallerReport> = callers
        .iter()
        .filter(|c| start.is_none_or(|start| c.last_seen >= start))
        .map(CallerReport::from)
        .collect();
    // The identity breaks remaining ties so the order does not depend on
    // the ledger's.
    out.sort_by(|a, b| {
        b.calls
            .cmp(&a.calls)
            .then_with(|| b.last_seen.cmp(&a.last_seen))
            .then_with(|| {
                (a.route, &a.auth_key, &a.user_agent, &a.client_address).cmp(&(
                    b.route,
                    &b.auth_key,
                    &b.user_agent,
                    &b.client_address,
                ))
            })
    });
    out
}

// ---- time formatting ----

/// `t` in UTC, or unchanged when that is out of range.
fn utc(t: OffsetDateTime) -> OffsetDateTime {
    t.checked_to_offset(UtcOffset::UTC).unwrap_or(t)
}

/// RFC 3339 in UTC; times RFC 3339 cannot express (years outside
/// 0000-9999) fall back to the same shape without failing.
fn rfc3339(t: OffsetDateTime) -> String {
    let t = utc(t);
    t.format(&Rfc3339).unwrap_or_else(|_| seconds_text(t))
}

/// `YYYY-MM-DDTHH:MM:SSZ` (or with the offset when not UTC), formatted by
/// hand so it cannot fail.
fn seconds_text(t: OffsetDateTime) -> String {
    let mut s = format!(
        "{}T{:02}:{:02}:{:02}",
        day_key(t.date()),
        t.hour(),
        t.minute(),
        t.second()
    );
    let offset = t.offset();
    if offset.is_utc() {
        s.push('Z');
    } else {
        let (h, m, _) = offset.as_hms();
        let sign = if offset.is_negative() { '-' } else { '+' };
        let _ = write!(s, "{sign}{:02}:{:02}", h.unsigned_abs(), m.unsigned_abs());
    }
    s
}

/// `YYYY-MM-DD`.
fn day_key(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

fn ser_time<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*t))
}

fn ser_opt_time<S: Serializer>(t: &Option<OffsetDateTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => ser_time(t, s),
        None => s.serialize_none(),
    }
}

fn ser_routes<S: Serializer>(m: &BTreeMap<RouteKind, u64>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(m.iter().map(|(route, n)| (route.as_str(), n)))
}

// ---- shared text ----

fn window_text(report: &Report) -> String {
    match report.since {
        Some(since) => format!("{} to {}", rfc3339(since), rfc3339(report.generated_at)),
        None => "all time".into(),
    }
}

/// `legacy_trigger 1000, legacy_stats 3, total 1003`.
fn totals_text(app: &AppReport) -> String {
    let mut s = String::new();
    // Reverse label order puts `legacy_trigger`, the bulk of traffic,
    // first, as in the example.
    for (route, n) in app.deprecated_calls.iter().rev() {
        let _ = write!(s, "{} {n}, ", route.as_str());
    }
    let _ = write!(s, "total {}", app.total());
    s
}

#[cfg(test)]
mod tests;
