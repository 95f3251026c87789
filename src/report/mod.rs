//! Reports built from the usage ledger: a migration progress view of who
//! still makes deprecated calls, how many, when, and how to stop, for
//! `pusher-cutover report` and the admin listener's `/report`.
//!
//! [`build`] (or [`build_for`], with the configured apps) turns a
//! [`Usage`] into a [`Report`] for a time window; the renderers
//! ([`render_json`], [`render_table`], [`render_html`]) only format a
//! report, so all three show the same numbers. [`used_since`] and
//! [`uses_since`] back `--fail-if-used-since`.
//!
//! Each app gets a [`Status`]: `active` (a call in the last 24 hours),
//! `quiet` (none for 24 hours or more, but some in the window), `done` (no
//! call in the whole window, and the ledger recorded all of it) or
//! `unproven` (no call seen in the window, but the ledger started recording
//! inside it, or its start is unknown, or the window is all time, or a
//! ledger read was marked open for writing: it cannot prove that no call
//! was made).
//!
//! Nothing here panics, whatever the ledger holds: times are formatted
//! without fallible steps where possible and with a fallback otherwise,
//! counts saturate, and caller strings (which come from request headers)
//! are sanitised for the terminal and escaped for HTML.

use serde::{Serialize, Serializer};
use std::collections::BTreeMap;
use time::{Duration, OffsetDateTime, PrimitiveDateTime};

use crate::pusher::route::RouteKind;
use crate::telemetry::fingerprint::Library;
use crate::telemetry::usage::{AppUsage, CallSite, Caller, Usage};

mod chart;
pub mod evidence;
mod gate;
mod html;
mod progress;
pub mod prometheus;
pub mod promql;
pub mod sources;
mod table;
pub(crate) mod text;

pub use gate::{AppUse, render_uses, uses_since};
pub use html::render_html;
pub use table::render_table;

use text::{
    coverage_text, ser_opt_time, ser_time, status_text, totals_text, trend_text, window_text,
};

/// The most days [`AppReport::daily`] holds; older days are dropped so a
/// long window cannot make the output unbounded.
pub const MAX_DAYS: usize = 400;

/// The longest window charted by the hour; longer ones are charted by the
/// day.
pub const HOURLY_WINDOW: Duration = Duration::days(3);

/// How long without a call makes an app or a caller `quiet`.
pub const QUIET_AFTER: Duration = Duration::hours(24);

/// A report over a window of the usage ledger.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// When the report was built (the `now` given to [`build`]); RFC 3339
    /// (UTC) in JSON.
    #[serde(serialize_with = "ser_time")]
    pub generated_at: OffsetDateTime,
    /// The window's start, or `None` for all time; RFC 3339 (UTC) or
    /// `null` in JSON. The window ends at `generated_at`.
    #[serde(serialize_with = "ser_opt_time")]
    pub since: Option<OffsetDateTime>,
    /// Since when the ledger recorded every call ([`Usage::recorded_since`]);
    /// `null` when unknown.
    #[serde(serialize_with = "ser_opt_time")]
    pub recorded_since: Option<OffsetDateTime>,
    /// Whether the ledger recorded the whole window (so `done` is
    /// provable): it has a start, at or before the window's, and no
    /// [`Report::ledger_gaps`].
    pub covers_window: bool,
    /// The gaps of the ledgers read, whatever the window: each data
    /// directory whose ledger was marked open for writing
    /// ([`evidence::Gap::LedgerOpen`]), which lacks its writer's calls
    /// since its last write. Empty for a report of `/usage` answers.
    pub ledger_gaps: Vec<prometheus::GapReport>,
    /// The sidecar(s) the ledger came from ([`Usage::instance`]).
    pub instance: String,
    /// Whether the ledger merges several sidecars' (then every caller's
    /// instance is shown).
    pub merged: bool,
    /// How [`AppReport::chart`] is bucketed: by the hour for windows of
    /// [`HOURLY_WINDOW`] or less, by the day otherwise.
    pub resolution: Resolution,
    /// The evidence Prometheus gave, for a report from `--prometheus`
    /// (absent from a ledger's JSON).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<prometheus::FleetEvidence>,
    /// Every app in the ledger or configured: active first, then quiet,
    /// unproven and done, each by most calls in the window, then app id.
    /// Apps without calls in the window are kept (with zeros), so an app
    /// that has stopped shows as such.
    pub apps: Vec<AppReport>,
}

/// The bucket size of a chart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Resolution {
    /// One point per UTC hour.
    Hour,
    /// One point per UTC day.
    Day,
}

/// Where an app (or a caller) is in its migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// A call in the last 24 hours.
    Active,
    /// No call for 24 hours or more, but calls in the window (or, for a
    /// caller, at all).
    Quiet,
    /// No call seen in the window, but the ledger does not cover all of it,
    /// so it cannot prove there was none.
    Unproven,
    /// No call in the whole window, and the ledger recorded all of it.
    Done,
}

impl Status {
    /// `active`, `quiet`, `unproven` or `done`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Quiet => "quiet",
            Self::Unproven => "unproven",
            Self::Done => "done",
        }
    }
}

/// One app's part of a [`Report`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppReport {
    /// The app id.
    pub app_id: String,
    /// Whether the app is in the configuration the report was given.
    pub configured: bool,
    /// Calls in the window per route; every route is present, 0 when
    /// unused. Keys are the route labels (`legacy_trigger`, ...) in JSON.
    ///
    /// The ledger counts per hour, so the window is applied to hourly
    /// buckets: a bucket counts when its hour ends after the window's
    /// start, so the bucket straddling the start counts in full (as do
    /// buckets a sidecar with a fast clock stamped after `now`). The same
    /// holds for `last_24h`, `last_7d` and the trend's windows.
    #[serde(serialize_with = "ser_routes")]
    pub deprecated_calls: BTreeMap<RouteKind, u64>,
    /// All calls in the window (the sum of `deprecated_calls`).
    pub window: u64,
    /// Calls in the last 24 hours.
    pub last_24h: u64,
    /// Calls in the last 7 days.
    pub last_7d: u64,
    /// The latest call known: a caller's last call, or the start of the
    /// latest hour with calls, whichever is later; also before the window.
    #[serde(serialize_with = "ser_opt_time")]
    pub last_call: Option<OffsetDateTime>,
    /// Seconds from `last_call` to the report's time (0 for a call after
    /// it); `null` without a last call.
    pub since_last_call_seconds: Option<u64>,
    /// Where the app is.
    pub status: Status,
    /// This window's calls against the window of the same length just
    /// before it; `null` for all time.
    pub trend: Option<Trend>,
    /// Calls per UTC day (`YYYY-MM-DD`), bucketed like `deprecated_calls`,
    /// with every day from the window start's day (for all time, the
    /// first day with calls) through the report's day, 0 for days without
    /// calls, so charts have no gaps. At most [`MAX_DAYS`] days, the most
    /// recent; calls on dropped days still count in `deprecated_calls`.
    pub daily: BTreeMap<String, u64>,
    /// The UTC day (a key of `daily`) the report was built in, which is
    /// partial.
    pub partial_day: String,
    /// The window's calls per [`Report::resolution`] bucket, oldest first,
    /// with partial buckets marked.
    pub chart: Vec<Point>,
    /// The libraries of the callers in the window, latest last call first.
    pub libraries: Vec<LibraryReport>,
    /// The callers last seen in the window, most recently seen first, then
    /// most calls.
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

/// A window's calls against the previous window's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Trend {
    /// Calls in the window of the same length ending at the window's start.
    pub previous: u64,
    /// `up`, `down` or `flat`.
    pub direction: Direction,
    /// The change in percent of `previous`, rounded towards zero; `null`
    /// when `previous` is 0.
    pub change_percent: Option<i64>,
    /// Whether the ledger recorded all of the previous window (if not, its
    /// count may be low).
    pub previous_covered: bool,
}

/// Which way calls went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// More calls than before.
    Up,
    /// Fewer calls than before.
    Down,
    /// As many.
    Flat,
}

/// One bucket of a chart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Point {
    /// The bucket: `YYYY-MM-DD` for a day, `YYYY-MM-DDTHH:00Z` for an hour.
    pub start: String,
    /// Its calls.
    pub calls: u64,
    /// Whether only part of it is in the window: the bucket the report was
    /// built in (or a later one), or the first one when the window starts
    /// inside it.
    pub partial: bool,
}

/// A library family among an app's callers, with how to migrate off it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LibraryReport {
    /// The family id as recorded (`CallerKey::library`).
    pub library: String,
    /// A human name: the family's, or the id when it is not a known one.
    pub name: String,
    /// The migration recipe, for the families [`Library::from_id`] knows.
    pub recipe: Option<RecipeReport>,
    /// The family's callers in the window.
    pub callers: usize,
    /// Their lifetime calls (saturating).
    pub calls: u64,
    /// The latest of their last calls.
    #[serde(serialize_with = "ser_time")]
    pub last_seen: OffsetDateTime,
    /// `active` when one of them is, else `quiet`.
    pub status: Status,
}

/// How to move a library off the deprecated calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecipeReport {
    /// The first release that uses the current routes, when there is one.
    pub first_current: Option<String>,
    /// The call that replaces the deprecated one.
    pub replacement: String,
}

/// One caller in an [`AppReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallerReport {
    /// The route.
    pub route: RouteKind,
    /// The `auth_key` the calls were signed with.
    pub auth_key: String,
    /// The sending library's family id (`unknown` when not recognised).
    pub library: String,
    /// The short hash of the sender's wire traits (empty when not
    /// recorded).
    pub fingerprint: String,
    /// The `User-Agent` header, or empty when absent.
    pub user_agent: String,
    /// The client's IP address.
    pub client_address: String,
    /// The sidecar that recorded the calls (empty when not recorded).
    pub instance: String,
    /// The caller's lifetime total, not its calls in the window: the ledger
    /// keeps no per-caller time series, only totals and first/last seen.
    pub calls: u64,
    /// The caller's first call; RFC 3339 (UTC) in JSON.
    #[serde(serialize_with = "ser_time")]
    pub first_seen: OffsetDateTime,
    /// The caller's latest call; RFC 3339 (UTC) in JSON.
    #[serde(serialize_with = "ser_time")]
    pub last_seen: OffsetDateTime,
    /// `active` when last seen in the last 24 hours, else `quiet`.
    pub status: Status,
    /// Where in its code the calls come from: event name, channel template
    /// and lifetime calls, most calls first (all the ledger keeps).
    pub call_sites: Vec<CallSite>,
}

impl CallerReport {
    fn new(c: &Caller, now: OffsetDateTime) -> Self {
        Self {
            route: c.key.route,
            auth_key: c.key.auth_key.clone(),
            library: c.key.library.clone(),
            fingerprint: c.key.fingerprint.clone(),
            user_agent: c.key.user_agent.clone(),
            client_address: c.key.client_address.clone(),
            instance: c.key.instance.clone(),
            calls: c.calls,
            first_seen: c.first_seen,
            last_seen: c.last_seen,
            status: progress::recency(c.last_seen, now),
            call_sites: c.call_sites.clone(),
        }
    }
}

/// Builds the report for the window from `now - since` to `now` (all time
/// when `since` is `None`) over the apps in the ledger.
pub fn build(usage: &Usage, now: OffsetDateTime, since: Option<std::time::Duration>) -> Report {
    build_for(usage, now, since, &[])
}

/// As [`build`], listing the `configured` app ids too (with zero calls
/// when the ledger has none of theirs).
///
/// Hourly buckets count when their hour ends after the window's start, so
/// the bucket straddling the start counts in full; callers are kept when
/// last seen at or after the start. A `since` reaching before the earliest
/// representable time means all of it.
pub fn build_for(
    usage: &Usage,
    now: OffsetDateTime,
    since: Option<std::time::Duration>,
    configured: &[String],
) -> Report {
    build_over(usage, &[], now, since, configured)
}

/// As [`build_for`], over ledgers read by [`sources::load`]: each one
/// marked open is one of [`Report::ledger_gaps`], and then the report
/// does not cover the window (no app is `done`).
pub fn build_for_ledgers(
    ledgers: &sources::Ledgers,
    now: OffsetDateTime,
    since: Option<std::time::Duration>,
    configured: &[String],
) -> Report {
    build_over(&ledgers.usage, &ledgers.open, now, since, configured)
}

/// [`build_for_ledgers`] of `usage`, with `open` the ledgers marked open.
fn build_over(
    usage: &Usage,
    open: &[evidence::OpenLedger],
    now: OffsetDateTime,
    since: Option<std::time::Duration>,
    configured: &[String],
) -> Report {
    let start = since.map(|since| window_start(now, since));
    let covers_window = open.is_empty()
        && match (start, usage.recorded_since) {
            (Some(start), Some(recorded)) => recorded <= start,
            _ => false,
        };
    let resolution = match start {
        Some(start) if now - start <= HOURLY_WINDOW => Resolution::Hour,
        _ => Resolution::Day,
    };
    // An open ledger misses calls from its writer's last write on, at or
    // after its mark: the previous window (which ends at `start`) is
    // covered only when every mark is at or after `start`.
    let previous_complete = open.iter().all(|o| {
        o.since
            .zip(start)
            .is_some_and(|(since, start)| since >= start)
    });
    let window = progress::Window {
        now,
        start,
        recorded_since: usage.recorded_since.filter(|_| previous_complete),
        covers_window,
        resolution,
    };
    let mut apps: Vec<AppReport> = usage
        .apps
        .iter()
        .map(|app| app_report(app, &window, configured.contains(&app.app_id)))
        .collect();
    for id in configured {
        if !apps.iter().any(|a| &a.app_id == id) {
            let empty = AppUsage {
                app_id: id.clone(),
                callers: Vec::new(),
                hourly: Vec::new(),
            };
            apps.push(app_report(&empty, &window, true));
        }
    }
    apps.sort_by(|a, b| {
        a.status
            .cmp(&b.status)
            .then_with(|| b.total().cmp(&a.total()))
            .then_with(|| a.app_id.cmp(&b.app_id))
    });
    let mut instances: Vec<&str> = usage
        .apps
        .iter()
        .flat_map(|a| a.callers.iter().map(|c| c.key.instance.as_str()))
        .chain(usage.instance.split(','))
        .filter(|i| !i.is_empty())
        .collect();
    instances.sort_unstable();
    instances.dedup();
    Report {
        generated_at: now,
        since: start,
        recorded_since: usage.recorded_since,
        covers_window,
        ledger_gaps: open
            .iter()
            .map(|open| evidence::Gap::from(open).into())
            .collect(),
        instance: usage.instance.clone(),
        merged: instances.len() > 1,
        resolution,
        prometheus: None,
        apps,
    }
}

/// Whether any deprecated call was seen at or after `cutoff`: a caller
/// last seen then, or a non-empty hourly bucket whose hour ends after it.
pub fn used_since(usage: &Usage, cutoff: OffsetDateTime) -> bool {
    !uses_since(usage, cutoff).is_empty()
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

fn app_report(app: &AppUsage, w: &progress::Window, configured: bool) -> AppReport {
    let mut deprecated_calls: BTreeMap<RouteKind, u64> =
        RouteKind::LEGACY.into_iter().map(|r| (r, 0)).collect();
    for h in app
        .hourly
        .iter()
        .filter(|h| w.start.is_none_or(|start| bucket_ends_after(h.hour, start)))
    {
        let route = deprecated_calls.entry(h.route).or_default();
        *route = route.saturating_add(h.calls);
    }
    let window = deprecated_calls
        .values()
        .fold(0u64, |sum, n| sum.saturating_add(*n));
    let last_call = progress::last_call(app);
    let callers = callers(&app.callers, w);
    AppReport {
        app_id: app.app_id.clone(),
        configured,
        deprecated_calls,
        window,
        last_24h: progress::calls_after(app, w.now.checked_sub(QUIET_AFTER)),
        last_7d: progress::calls_after(app, w.now.checked_sub(Duration::days(7))),
        last_call,
        since_last_call_seconds: last_call.map(|t| text::seconds_between(t, w.now)),
        status: w.status(last_call, window),
        trend: w.trend(app, window),
        daily: progress::daily(app, w),
        partial_day: text::day_key(text::utc(w.now).date()),
        chart: progress::chart(app, w),
        libraries: libraries(&callers, w.now),
        callers,
    }
}

fn callers(callers: &[Caller], w: &progress::Window) -> Vec<CallerReport> {
    let mut out: Vec<CallerReport> = callers
        .iter()
        .filter(|c| w.start.is_none_or(|start| c.last_seen >= start))
        .map(|c| CallerReport::new(c, w.now))
        .collect();
    // The identity breaks remaining ties so the order does not depend on
    // the ledger's.
    out.sort_by(|a, b| {
        b.last_seen
            .cmp(&a.last_seen)
            .then_with(|| b.calls.cmp(&a.calls))
            .then_with(|| {
                (
                    a.route,
                    &a.auth_key,
                    &a.library,
                    &a.fingerprint,
                    &a.user_agent,
                    &a.client_address,
                    &a.instance,
                )
                    .cmp(&(
                        b.route,
                        &b.auth_key,
                        &b.library,
                        &b.fingerprint,
                        &b.user_agent,
                        &b.client_address,
                        &b.instance,
                    ))
            })
    });
    out
}

/// The libraries of `callers` (sorted by last seen), in the order of their
/// latest caller.
fn libraries(callers: &[CallerReport], now: OffsetDateTime) -> Vec<LibraryReport> {
    let mut out: Vec<LibraryReport> = Vec::new();
    for c in callers {
        if let Some(lib) = out.iter_mut().find(|l| l.library == c.library) {
            lib.callers += 1;
            lib.calls = lib.calls.saturating_add(c.calls);
            lib.last_seen = lib.last_seen.max(c.last_seen);
            continue;
        }
        let known = Library::from_id(&c.library);
        out.push(LibraryReport {
            library: c.library.clone(),
            name: known.map_or_else(|| c.library.clone(), |l| l.name().to_owned()),
            recipe: known.map(|l| {
                let r = l.recipe();
                RecipeReport {
                    first_current: r.first_current.map(str::to_owned),
                    replacement: r.replacement.to_owned(),
                }
            }),
            callers: 1,
            calls: c.calls,
            last_seen: c.last_seen,
            status: Status::Quiet,
        });
    }
    for lib in &mut out {
        lib.status = progress::recency(lib.last_seen, now);
    }
    out
}

fn ser_routes<S: Serializer>(m: &BTreeMap<RouteKind, u64>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(m.iter().map(|(route, n)| (route.as_str(), n)))
}

#[cfg(test)]
mod progress_tests;
#[cfg(test)]
mod tests;
