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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::{Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::{Date, Duration, OffsetDateTime, PrimitiveDateTime, UtcOffset};

use super::usage::{AppUsage, Caller, LegacyRoute, Usage};

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
    pub deprecated_calls: BTreeMap<LegacyRoute, u64>,
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
    pub route: LegacyRoute,
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

/// The report as plain text for a terminal. Caller strings are shown in
/// printable ASCII only (anything else escaped as `\u{..}`) and truncated
/// with `...`, so hostile or unusual values cannot break the layout.
pub fn render_table(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "pusher-cutover report generated {}; window: {}",
        rfc3339(report.generated_at),
        window_text(report)
    );
    if report.apps.is_empty() {
        out.push_str("\nNo deprecated calls recorded.\n");
        return out;
    }
    for app in &report.apps {
        out.push('\n');
        let _ = writeln!(
            out,
            "app {}: {}",
            terminal_text(&app.app_id, APP_ID_WIDTH),
            totals_text(app)
        );
        table_daily(&mut out, app);
        table_callers(&mut out, &app.callers);
    }
    out
}

/// The report as one self-contained HTML page: inline style and SVG, no
/// scripts, no external assets, deterministic.
pub fn render_html(report: &Report) -> String {
    let mut out = String::with_capacity(16 * 1024);
    out.push_str(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>Deprecated Pusher HTTP API usage</title>\n<style>\n",
    );
    out.push_str(CSS);
    out.push_str("</style>\n</head>\n<body>\n<h1>Deprecated Pusher HTTP API usage</h1>\n");
    let generated = escape_html(&rfc3339(report.generated_at));
    let _ = writeln!(
        out,
        "<p class=\"meta\">Generated <time datetime=\"{generated}\">{generated}</time>; \
         window: {}.</p>",
        escape_html(&window_text(report))
    );
    if report.apps.is_empty() {
        out.push_str("<p>No deprecated calls recorded.</p>\n");
    }
    html_chart(&mut out, &report.apps);
    html_legend(&mut out, &report.apps);
    for app in &report.apps {
        html_app(&mut out, app);
    }
    out.push_str("</body>\n</html>\n");
    out
}

// ---- build ----

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
    let mut deprecated_calls: BTreeMap<LegacyRoute, u64> =
        LegacyRoute::ALL.into_iter().map(|r| (r, 0)).collect();
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

fn ser_routes<S: Serializer>(m: &BTreeMap<LegacyRoute, u64>, s: S) -> Result<S::Ok, S::Error> {
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

// ---- table ----

const APP_ID_WIDTH: usize = 64;

/// A callers table column: its title, the most characters it takes before
/// values are truncated, and whether it is right-aligned.
struct Column {
    title: &'static str,
    max: usize,
    right: bool,
}

const COLUMNS: [Column; 7] = [
    Column {
        title: "ROUTE",
        max: 14,
        right: false,
    },
    Column {
        title: "AUTH_KEY",
        max: 24,
        right: false,
    },
    Column {
        title: "USER_AGENT",
        max: 48,
        right: false,
    },
    Column {
        title: "CLIENT",
        max: 39,
        right: false,
    },
    // u64::MAX has 20 digits, so counts are never truncated.
    Column {
        title: "CALLS",
        max: 20,
        right: true,
    },
    Column {
        title: "FIRST_SEEN",
        max: 25,
        right: false,
    },
    Column {
        title: "LAST_SEEN",
        max: 25,
        right: false,
    },
];

fn table_daily(out: &mut String, app: &AppReport) {
    if app.daily.is_empty() {
        return;
    }
    out.push_str("daily calls (UTC):\n");
    let skip = app.daily.len().saturating_sub(TABLE_DAYS);
    for (day, n) in app.daily.iter().skip(skip) {
        let _ = writeln!(out, "{}  {n}", terminal_text(day, 10));
    }
}

fn table_callers(out: &mut String, callers: &[CallerReport]) {
    if callers.is_empty() {
        out.push_str("no callers in the window\n");
        return;
    }
    out.push_str("callers (calls are lifetime totals):\n");
    let rows: Vec<[String; 7]> = callers
        .iter()
        .map(|c| {
            [
                c.route.as_str().to_owned(),
                c.auth_key.clone(),
                c.user_agent.clone(),
                c.client_address.clone(),
                c.calls.to_string(),
                seconds_text(utc(c.first_seen)),
                seconds_text(utc(c.last_seen)),
            ]
            .map(|v| if v.is_empty() { "-".to_owned() } else { v })
            .map(|v| printable_ascii(&v))
        })
        .collect();
    let widths: Vec<usize> = COLUMNS
        .iter()
        .enumerate()
        .map(|(i, col)| {
            let longest = rows.iter().map(|r| r[i].len()).max().unwrap_or(0);
            longest.max(col.title.len()).min(col.max)
        })
        .collect();
    let header = COLUMNS.each_ref().map(|c| c.title.to_owned());
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for ((col, width), value) in COLUMNS.iter().zip(&widths).zip(row) {
            let value = truncate(value, *width);
            if col.right {
                let _ = write!(line, "{value:>width$}  ");
            } else {
                let _ = write!(line, "{value:<width$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

/// Printable ASCII as is; anything else (control characters, bidi
/// overrides, wide or combining characters) as `\u{..}`, so every character
/// takes one column and the terminal interprets none of them.
fn printable_ascii(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == ' ' || c.is_ascii_graphic() {
            out.push(c);
        } else {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
    }
    out
}

/// At most `width` characters, the last three `...` when cut.
fn truncate(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_owned();
    }
    let keep = width.saturating_sub(3);
    let mut out: String = s.chars().take(keep).collect();
    out.push_str(&"..."[..width.min(3)]);
    out
}

fn terminal_text(s: &str, width: usize) -> String {
    truncate(&printable_ascii(s), width)
}

// ---- HTML ----

const CSS: &str = "\
body{font:14px/1.4 system-ui,sans-serif;color:#222;max-width:1100px;margin:2em auto;padding:0 1em}
h1{font-size:1.5em}
h2{font-size:1.2em;margin-top:2em}
.meta,.note{color:#555}
svg.chart{display:block;width:100%;max-width:960px;height:auto;border:1px solid #eee}
.axis{stroke:#444;stroke-width:1}
.grid{stroke:#ccc;stroke-dasharray:4 4}
.label{font:11px sans-serif;fill:#444}
.legend{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:.4em 1.5em}
.swatch{display:inline-block;width:.9em;height:.9em;margin-right:.4em;vertical-align:middle}
table{border-collapse:collapse;margin:.5em 0}
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:left;vertical-align:top}
td{overflow-wrap:anywhere;max-width:28em}
.num{text-align:right;font-variant-numeric:tabular-nums}
.none{color:#888;font-style:italic}
";

/// Series colours, by app index.
const PALETTE: [&str; 10] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

const SVG_WIDTH: f64 = 960.0;
const SVG_HEIGHT: f64 = 320.0;
const SVG_TOP: f64 = 16.0;
const SVG_RIGHT: f64 = 48.0;
const SVG_BOTTOM: f64 = 36.0;
/// Above this many days, points get no markers (the line says enough).
const MAX_MARKED_DAYS: usize = 62;
/// The most date labels on the x axis.
const X_LABELS: usize = 8;

fn colour(index: usize) -> &'static str {
    PALETTE[index % PALETTE.len()]
}

/// Text safe in HTML content and in double- or single-quoted attributes;
/// control characters, which HTML does not allow, become U+FFFD.
fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// An escaped value, or a marker for an empty one.
fn html_value(s: &str) -> String {
    if s.is_empty() {
        "<span class=\"none\">none</span>".into()
    } else {
        escape_html(s)
    }
}

/// The line chart of daily calls, one polyline per app over the union of
/// the apps' days (days an app has no entry for plot as 0).
fn html_chart(out: &mut String, apps: &[AppReport]) {
    let _ = write!(
        out,
        "<svg class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {SVG_WIDTH} \
         {SVG_HEIGHT}\" role=\"img\" aria-label=\"Deprecated calls per day (UTC), per app\">"
    );
    if apps.is_empty() {
        out.push_str("</svg>\n");
        return;
    }
    out.push('\n');
    let all_days: BTreeSet<&str> = apps
        .iter()
        .flat_map(|a| a.daily.keys().map(String::as_str))
        .collect();
    let skip = all_days.len().saturating_sub(MAX_DAYS);
    let days: Vec<&str> = all_days.into_iter().skip(skip).collect();
    let max = apps
        .iter()
        .flat_map(|a| days.iter().filter_map(|d| a.daily.get(*d)))
        .copied()
        .max()
        .unwrap_or(0);
    let max_label = max.to_string();
    // Room for the max label, right-aligned against the y axis.
    let left = 14.0 + 7.0 * max_label.len() as f64;
    let bottom = SVG_HEIGHT - SVG_BOTTOM;
    let plot_width = SVG_WIDTH - SVG_RIGHT - left;
    let x = |i: usize| {
        if days.len() <= 1 {
            left + plot_width / 2.0
        } else {
            left + plot_width * i as f64 / (days.len() - 1) as f64
        }
    };
    let y = |v: u64| {
        if max == 0 {
            bottom
        } else {
            bottom - (bottom - SVG_TOP) * (v as f64 / max as f64)
        }
    };

    let _ = writeln!(
        out,
        "<title>Deprecated calls per day (UTC), per app</title>\n\
         <line class=\"grid\" x1=\"{left:.1}\" y1=\"{SVG_TOP:.1}\" x2=\"{right:.1}\" y2=\"{SVG_TOP:.1}\"/>\n\
         <line class=\"axis\" x1=\"{left:.1}\" y1=\"{SVG_TOP:.1}\" x2=\"{left:.1}\" y2=\"{bottom:.1}\"/>\n\
         <line class=\"axis\" x1=\"{left:.1}\" y1=\"{bottom:.1}\" x2=\"{right:.1}\" y2=\"{bottom:.1}\"/>\n\
         <text class=\"label\" x=\"{lx:.1}\" y=\"{ty:.1}\" text-anchor=\"end\">{max_label}</text>\n\
         <text class=\"label\" x=\"{lx:.1}\" y=\"{by:.1}\" text-anchor=\"end\">0</text>",
        right = SVG_WIDTH - SVG_RIGHT,
        lx = left - 6.0,
        ty = SVG_TOP + 4.0,
        by = bottom + 4.0,
    );
    for i in label_indices(days.len()) {
        let anchor = match i {
            _ if days.len() == 1 => "middle",
            0 => "start",
            i if i + 1 == days.len() => "end",
            _ => "middle",
        };
        let _ = writeln!(
            out,
            "<text class=\"label\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\">{}</text>",
            x(i),
            bottom + 18.0,
            escape_html(days.get(i).copied().unwrap_or_default())
        );
    }
    for (index, app) in apps.iter().enumerate() {
        let app_id = escape_html(&app.app_id);
        let stroke = colour(index);
        let values: Vec<u64> = days
            .iter()
            .map(|d| app.daily.get(*d).copied().unwrap_or(0))
            .collect();
        let points: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{:.1},{:.1}", x(i), y(*v)))
            .collect();
        let _ = writeln!(
            out,
            "<polyline class=\"series\" data-app=\"{app_id}\" fill=\"none\" stroke=\"{stroke}\" \
             stroke-width=\"2\" points=\"{}\"><title>App {app_id}</title></polyline>",
            points.join(" ")
        );
        if days.len() <= MAX_MARKED_DAYS {
            for (i, (day, v)) in days.iter().zip(&values).enumerate() {
                let _ = writeln!(
                    out,
                    "<circle class=\"dot\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"{stroke}\">\
                     <title>App {app_id}, {}: {v}</title></circle>",
                    x(i),
                    y(*v),
                    escape_html(day)
                );
            }
        }
    }
    out.push_str("</svg>\n");
}

/// Up to [`X_LABELS`] evenly spread indices, first and last included.
fn label_indices(n: usize) -> Vec<usize> {
    if n <= X_LABELS {
        return (0..n).collect();
    }
    let mut out: Vec<usize> = (0..X_LABELS)
        .map(|k| k * (n - 1) / (X_LABELS - 1))
        .collect();
    out.dedup();
    out
}

fn html_legend(out: &mut String, apps: &[AppReport]) {
    if apps.is_empty() {
        return;
    }
    out.push_str("<ul class=\"legend\">\n");
    for (index, app) in apps.iter().enumerate() {
        let _ = writeln!(
            out,
            "<li><span class=\"swatch\" style=\"background:{}\"></span>App <code>{}</code>: {} calls</li>",
            colour(index),
            escape_html(&app.app_id),
            app.total()
        );
    }
    out.push_str("</ul>\n");
}

fn html_app(out: &mut String, app: &AppReport) {
    let _ = writeln!(
        out,
        "<section class=\"app\">\n<h2>App <code>{}</code></h2>\n<p class=\"totals\">{}</p>",
        escape_html(&app.app_id),
        escape_html(&totals_text(app))
    );
    if app.callers.is_empty() {
        out.push_str("<p class=\"note\">No callers in the window.</p>\n");
    } else {
        out.push_str(
            "<table class=\"callers\">\n<thead><tr><th>Route</th><th>auth_key</th>\
             <th>User agent</th><th>Client</th><th class=\"num\">Calls</th><th>First seen</th>\
             <th>Last seen</th></tr></thead>\n<tbody>\n",
        );
        for c in &app.callers {
            let first = escape_html(&rfc3339(c.first_seen));
            let last = escape_html(&rfc3339(c.last_seen));
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td>\
                 <td><time datetime=\"{first}\">{first}</time></td>\
                 <td><time datetime=\"{last}\">{last}</time></td></tr>",
                c.route.as_str(),
                html_value(&c.auth_key),
                html_value(&c.user_agent),
                html_value(&c.client_address),
                c.calls
            );
        }
        out.push_str(
            "</tbody>\n</table>\n<p class=\"note\">Calls are lifetime totals of the callers \
             seen in the window.</p>\n",
        );
    }
    if !app.daily.is_empty() {
        out.push_str(
            "<details><summary>Daily calls (UTC)</summary>\n<table class=\"daily\">\n\
             <thead><tr><th>Day</th><th class=\"num\">Calls</th></tr></thead>\n<tbody>\n",
        );
        for (day, n) in &app.daily {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td class=\"num\">{n}</td></tr>",
                escape_html(day)
            );
        }
        out.push_str("</tbody>\n</table>\n</details>\n");
    }
    out.push_str("</section>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::usage::{CallerKey, HourlyCount};
    use proptest::prelude::*;
    use time::macros::datetime;

    const DAY: std::time::Duration = std::time::Duration::from_secs(86_400);
    const NOW: OffsetDateTime = datetime!(2026-11-28 12:00 UTC);

    fn hourly(route: LegacyRoute, hour: OffsetDateTime, calls: u64) -> HourlyCount {
        HourlyCount { route, hour, calls }
    }

    fn caller(
        route: LegacyRoute,
        key: &str,
        agent: &str,
        calls: u64,
        last_seen: OffsetDateTime,
    ) -> Caller {
        Caller {
            key: CallerKey {
                route,
                auth_key: key.into(),
                user_agent: agent.into(),
                client_address: "10.0.0.1".into(),
            },
            calls,
            first_seen: datetime!(2026-10-01 08:00 UTC),
            last_seen,
        }
    }

    fn app(app_id: &str, callers: Vec<Caller>, hourly: Vec<HourlyCount>) -> AppUsage {
        AppUsage {
            app_id: app_id.into(),
            callers,
            hourly,
        }
    }

    use LegacyRoute::{LegacyStats as Stats, LegacyTrigger as Trigger};

    /// Window with `since = 7d` at `NOW`: 2026-11-21 12:00 to 2026-11-28 12:00.
    fn ledger() -> Usage {
        Usage {
            apps: vec![
                app(
                    "10",
                    vec![],
                    vec![hourly(Trigger, datetime!(2026-11-01 10:00 UTC), 4)],
                ),
                app(
                    "4242",
                    vec![
                        caller(
                            Trigger,
                            "k1",
                            "pusher-http-ruby/2.0",
                            1000,
                            datetime!(2026-11-27 10:00 UTC),
                        ),
                        caller(Stats, "k1", "curl/8.0", 3, datetime!(2026-11-25 08:10 UTC)),
                        caller(
                            Trigger,
                            "k2",
                            "old-sdk",
                            1000,
                            datetime!(2026-11-28 11:00 UTC),
                        ),
                        caller(
                            Trigger,
                            "k3",
                            "gone",
                            9999,
                            datetime!(2026-11-21 11:59:59 UTC),
                        ),
                        caller(Stats, "k4", "edge", 1, datetime!(2026-11-21 12:00 UTC)),
                    ],
                    vec![
                        hourly(Trigger, datetime!(2026-11-20 10:00 UTC), 500),
                        // Ends exactly at the window's start: outside.
                        hourly(Stats, datetime!(2026-11-21 11:00 UTC), 7),
                        hourly(Trigger, datetime!(2026-11-21 12:00 UTC), 100),
                        hourly(Trigger, datetime!(2026-11-23 09:00 UTC), 400),
                        hourly(Trigger, datetime!(2026-11-23 10:00 UTC), 500),
                        hourly(Stats, datetime!(2026-11-25 08:00 UTC), 3),
                    ],
                ),
                app(
                    "77",
                    vec![caller(Stats, "k7", "", 5, datetime!(2026-11-28 00:10 UTC))],
                    vec![hourly(Stats, datetime!(2026-11-27 23:00 UTC), 5)],
                ),
                app("9", vec![], vec![]),
            ],
        }
    }

    fn days(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(d, n)| ((*d).to_owned(), *n)).collect()
    }

    fn routes(stats: u64, trigger: u64) -> BTreeMap<LegacyRoute, u64> {
        BTreeMap::from([(Stats, stats), (Trigger, trigger)])
    }

    #[test]
    fn build_counts_the_window() {
        let r = build(&ledger(), NOW, Some(7 * DAY));
        assert_eq!(r.generated_at, NOW);
        assert_eq!(r.since, Some(datetime!(2026-11-21 12:00 UTC)));
        let ids: Vec<_> = r.apps.iter().map(|a| a.app_id.as_str()).collect();
        assert_eq!(ids, ["4242", "77", "10", "9"]);

        let a = &r.apps[0];
        assert_eq!(a.deprecated_calls, routes(3, 1000));
        assert_eq!(a.total(), 1003);
        assert_eq!(
            a.daily,
            days(&[
                ("2026-11-21", 100),
                ("2026-11-22", 0),
                ("2026-11-23", 900),
                ("2026-11-24", 0),
                ("2026-11-25", 3),
                ("2026-11-26", 0),
                ("2026-11-27", 0),
                ("2026-11-28", 0),
            ])
        );
        let order: Vec<_> = a.callers.iter().map(|c| c.auth_key.as_str()).collect();
        assert_eq!(order, ["k2", "k1", "k1", "k4"]);
        assert_eq!(a.callers[1].route, Trigger);
        assert_eq!(a.callers[1].calls, 1000);
        assert_eq!(a.callers[2].route, Stats);
        assert_eq!(a.callers[3].last_seen, datetime!(2026-11-21 12:00 UTC));

        let b = &r.apps[1];
        assert_eq!(b.deprecated_calls, routes(5, 0));
        assert_eq!(b.daily.get("2026-11-27"), Some(&5));
        assert_eq!(b.daily.get("2026-11-28"), Some(&0));
        assert_eq!(b.daily.len(), 8);
        assert_eq!(b.callers.len(), 1);

        for quiet in &r.apps[2..] {
            assert_eq!(quiet.deprecated_calls, routes(0, 0));
            assert!(quiet.callers.is_empty());
            assert_eq!(quiet.daily.len(), 8);
            assert!(quiet.daily.values().all(|n| *n == 0));
        }
    }

    #[test]
    fn build_counts_the_bucket_straddling_the_start() {
        // Start 2026-11-21 12:30: the 12:00 bucket overlaps, 11:00 does not.
        let r = build(
            &ledger(),
            NOW,
            Some(7 * DAY - std::time::Duration::from_secs(1800)),
        );
        let a = r.apps.iter().find(|a| a.app_id == "4242").unwrap();
        assert_eq!(a.deprecated_calls, routes(3, 1000));
        assert_eq!(a.daily.get("2026-11-21"), Some(&100));
    }

    #[test]
    fn build_all_time_starts_at_the_first_day_with_calls() {
        let r = build(&ledger(), NOW, None);
        assert_eq!(r.since, None);
        let a = r.apps.iter().find(|a| a.app_id == "4242").unwrap();
        assert_eq!(a.deprecated_calls, routes(10, 1500));
        assert_eq!(
            a.daily.first_key_value(),
            Some((&"2026-11-20".to_owned(), &500))
        );
        assert_eq!(a.daily.get("2026-11-21"), Some(&107));
        assert_eq!(a.daily.len(), 9);
        assert_eq!(a.callers.len(), 5);
        let empty = r.apps.iter().find(|a| a.app_id == "9").unwrap();
        assert!(empty.daily.is_empty());
        assert_eq!(r.apps[0].app_id, "4242");
    }

    #[test]
    fn build_caps_days_and_survives_extremes() {
        let r = build(&ledger(), NOW, Some(1000 * DAY));
        let a = &r.apps[0];
        assert_eq!(a.daily.len(), MAX_DAYS);
        assert_eq!(a.daily.last_key_value().unwrap().0, "2026-11-28");
        assert_eq!(a.daily.first_key_value().unwrap().0, "2025-10-25");
        assert_eq!(a.total(), 1510);

        let r = build(&ledger(), NOW, Some(std::time::Duration::MAX));
        assert_eq!(r.apps[0].daily.len(), MAX_DAYS);
        assert!(render_json(&r).contains("\"since\""));

        let r = build(&ledger(), NOW, Some(std::time::Duration::ZERO));
        assert_eq!(r.since, Some(NOW));
        assert_eq!(r.apps[0].daily, days(&[("2026-11-28", 0)]));

        let huge = Usage {
            apps: vec![app(
                "1",
                vec![],
                vec![
                    hourly(Trigger, NOW, u64::MAX),
                    hourly(Stats, NOW, u64::MAX),
                    hourly(Stats, NOW, 1),
                ],
            )],
        };
        let r = build(&huge, NOW, None);
        assert_eq!(r.apps[0].total(), u64::MAX);
        assert!(render_table(&r).contains(&u64::MAX.to_string()));

        let empty = build(&Usage::default(), NOW, Some(DAY));
        assert!(empty.apps.is_empty());
        assert!(render_table(&empty).contains("No deprecated calls recorded."));
    }

    #[test]
    fn json_has_the_documented_shape() {
        let r = build(&ledger(), NOW, Some(7 * DAY));
        let v: serde_json::Value = serde_json::from_str(&render_json(&r)).unwrap();
        assert_eq!(v["generated_at"], "2026-11-28T12:00:00Z");
        assert_eq!(v["since"], "2026-11-21T12:00:00Z");
        let a = &v["apps"][0];
        assert_eq!(a["app_id"], "4242");
        assert_eq!(
            a["deprecated_calls"],
            serde_json::json!({ "legacy_trigger": 1000, "legacy_stats": 3 })
        );
        assert_eq!(a["daily"]["2026-11-23"], 900);
        assert_eq!(a["daily"]["2026-11-22"], 0);
        let c = &a["callers"][0];
        let mut keys: Vec<_> = c.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "auth_key",
                "calls",
                "client_address",
                "first_seen",
                "last_seen",
                "route",
                "user_agent"
            ]
        );
        assert_eq!(c["route"], "legacy_trigger");
        assert_eq!(c["auth_key"], "k2");
        assert_eq!(c["user_agent"], "old-sdk");
        assert_eq!(c["client_address"], "10.0.0.1");
        assert_eq!(c["calls"], 1000);
        assert_eq!(c["first_seen"], "2026-10-01T08:00:00Z");
        assert_eq!(c["last_seen"], "2026-11-28T11:00:00Z");

        let all = build(&ledger(), NOW, None);
        let v: serde_json::Value = serde_json::from_str(&render_json(&all)).unwrap();
        assert!(v["since"].is_null());
    }

    #[test]
    fn table_shows_app_lines_days_and_callers() {
        let t = render_table(&build(&ledger(), NOW, Some(7 * DAY)));
        assert!(t.starts_with("pusher-cutover report generated 2026-11-28T12:00:00Z; window: "));
        assert!(t.contains("app 4242: legacy_trigger 1000, legacy_stats 3, total 1003\n"));
        assert!(t.contains("app 9: legacy_trigger 0, legacy_stats 0, total 0\n"));
        assert!(t.contains("\n2026-11-23  900\n"));
        assert!(t.contains("\n2026-11-22  0\n"));
        let row = t.lines().find(|l| l.contains("old-sdk")).unwrap();
        assert!(row.contains("legacy_trigger"));
        assert!(row.contains("k2"));
        assert!(row.contains(" 1000 "));
        assert!(row.contains("2026-11-28T11:00:00Z"));
        // Aligned: CALLS ends at the same column in the header and the rows.
        let header = t.lines().find(|l| l.starts_with("ROUTE")).unwrap();
        let end = header.find("CALLS").unwrap() + "CALLS".len();
        assert_eq!(&row[end - 4..end], "1000");
    }

    #[test]
    fn table_keeps_hostile_strings_in_their_columns() {
        let hostile = "\u{1b}[2J\r\nevil\t\u{202e}\u{4e2d}".repeat(20);
        let usage = Usage {
            apps: vec![app(
                "a\nb",
                vec![
                    caller(Trigger, &hostile, &hostile, 12, NOW),
                    caller(Trigger, "k", "plain", 7, NOW),
                ],
                vec![hourly(Trigger, NOW, 19)],
            )],
        };
        let t = render_table(&build(&usage, NOW, Some(DAY)));
        assert!(
            t.chars()
                .all(|c| c == '\n' || c == ' ' || c.is_ascii_graphic())
        );
        assert!(t.contains("app a\\u{a}b: legacy_trigger 19, legacy_stats 0, total 19\n"));
        let header = t.lines().find(|l| l.starts_with("ROUTE")).unwrap();
        let calls_end = header.find("CALLS").unwrap() + "CALLS".len();
        let rows: Vec<_> = t
            .lines()
            .filter(|l| l.starts_with("legacy_trigger"))
            .collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(&rows[0][calls_end - 2..calls_end], "12");
        assert_eq!(&rows[1][calls_end - 1..calls_end], "7");
        assert!(rows[0].contains("..."));
    }

    #[test]
    fn html_draws_one_series_per_app_and_escapes() {
        let mut usage = ledger();
        usage.apps[1].callers[0].key.user_agent = "<script>alert(1)</script> \"quotes\"".into();
        usage.apps[2].app_id = "\"><b>77".into();
        let h = render_html(&build(&usage, NOW, Some(7 * DAY)));
        assert!(h.starts_with("<!DOCTYPE html>"));
        assert_eq!(h.matches("class=\"series\"").count(), 4);
        assert_eq!(h.matches("<polyline ").count(), 4);
        assert!(h.contains("<polyline class=\"series\" data-app=\"4242\""));
        assert!(h.contains("<polyline class=\"series\" data-app=\"&quot;&gt;&lt;b&gt;77\""));
        assert!(!h.contains("<script"));
        assert!(!h.contains("\"quotes\""));
        assert!(h.contains("&lt;script&gt;alert(1)&lt;/script&gt; &quot;quotes&quot;"));
        assert!(!h.contains("<b>"));
        assert_eq!(h.matches("<li>").count(), 4);
        assert!(h.contains(">1000<"));
        assert!(h.contains("legacy_trigger 1000, legacy_stats 3, total 1003"));
        assert!(h.contains(">2026-11-21<"));
        assert!(h.contains(">2026-11-28<"));
        assert!(!h.contains("src=") && !h.contains("href="));
        assert_eq!(h, render_html(&build(&usage, NOW, Some(7 * DAY))));
    }

    #[test]
    fn html_without_apps_is_still_a_page() {
        let h = render_html(&build(&Usage::default(), NOW, None));
        assert!(h.starts_with("<!DOCTYPE html>"));
        assert!(h.contains("No deprecated calls recorded."));
        assert!(h.contains("</svg>"));
        assert!(!h.contains("<polyline"));
        assert!(h.trim_end().ends_with("</html>"));
    }

    #[test]
    fn used_since_boundaries() {
        let last = datetime!(2026-11-28 10:15 UTC);
        let by_caller = Usage {
            apps: vec![app("1", vec![caller(Trigger, "k", "ua", 1, last)], vec![])],
        };
        assert!(used_since(&by_caller, last));
        assert!(!used_since(&by_caller, last + Duration::NANOSECOND));

        let hour = datetime!(2026-11-28 10:00 UTC);
        let by_bucket = Usage {
            apps: vec![app("1", vec![], vec![hourly(Stats, hour, 1)])],
        };
        assert!(used_since(
            &by_bucket,
            hour + Duration::HOUR - Duration::NANOSECOND
        ));
        assert!(!used_since(&by_bucket, hour + Duration::HOUR));
        let zero = Usage {
            apps: vec![app("1", vec![], vec![hourly(Stats, hour, 0)])],
        };
        assert!(!used_since(&zero, hour));
        assert!(!used_since(
            &Usage::default(),
            PrimitiveDateTime::MIN.assume_utc()
        ));
    }

    fn any_time() -> impl Strategy<Value = OffsetDateTime> {
        let near = NOW.unix_timestamp();
        (
            prop_oneof![
                (near - 40 * 86_400..near + 86_400),
                (-377_705_116_800i64..=253_402_300_799),
            ],
            -23i8..=23,
        )
            .prop_map(|(secs, h)| {
                let t = OffsetDateTime::from_unix_timestamp(secs).unwrap_or(NOW);
                UtcOffset::from_hms(h, 0, 0)
                    .ok()
                    .and_then(|o| t.checked_to_offset(o))
                    .unwrap_or(t)
            })
    }

    fn any_route() -> impl Strategy<Value = LegacyRoute> {
        prop_oneof![Just(Stats), Just(Trigger)]
    }

    fn any_usage() -> impl Strategy<Value = Usage> {
        let caller = (
            any_route(),
            any::<String>(),
            any::<String>(),
            any::<String>(),
            any::<u64>(),
            any_time(),
            any_time(),
        )
            .prop_map(
                |(route, auth_key, user_agent, client_address, calls, first_seen, last_seen)| {
                    Caller {
                        key: CallerKey {
                            route,
                            auth_key,
                            user_agent,
                            client_address,
                        },
                        calls,
                        first_seen,
                        last_seen,
                    }
                },
            );
        let bucket = (any_route(), any_time(), any::<u64>())
            .prop_map(|(route, hour, calls)| HourlyCount { route, hour, calls });
        let app = (
            any::<String>(),
            proptest::collection::vec(caller, 0..4),
            proptest::collection::vec(bucket, 0..6),
        )
            .prop_map(|(app_id, callers, hourly)| AppUsage {
                app_id,
                callers,
                hourly,
            });
        proptest::collection::vec(app, 0..4).prop_map(|apps| Usage { apps })
    }

    proptest! {
        #[test]
        fn never_panics(
            usage in any_usage(),
            now in any_time(),
            since in proptest::option::of(prop_oneof![
                (0u64..60 * 86_400).prop_map(std::time::Duration::from_secs),
                any::<u64>().prop_map(std::time::Duration::from_secs),
            ]),
        ) {
            let report = build(&usage, now, since);
            prop_assert_eq!(report.apps.len(), usage.apps.len());
            for app in &report.apps {
                prop_assert!(app.daily.len() <= MAX_DAYS);
                prop_assert_eq!(app.deprecated_calls.len(), LegacyRoute::ALL.len());
            }
            let json: Result<serde_json::Value, _> = serde_json::from_str(&render_json(&report));
            prop_assert!(json.is_ok());
            let table = render_table(&report);
            prop_assert!(table.chars().all(|c| c == '\n' || c == ' ' || c.is_ascii_graphic()));
            let html = render_html(&report);
            prop_assert_eq!(html.matches("class=\"series\"").count(), report.apps.len());
            prop_assert!(!html.contains("<script"));
            prop_assert!(html.chars().all(|c| c == '\n' || !c.is_control()));
            let _ = used_since(&usage, now);
        }
    }
}
