//! The report as plain text for a terminal.

use std::fmt::Write as _;

use super::text::{rfc3339, seconds_text, utc, when_text};
use super::{
    AppReport, CallerReport, LibraryReport, Point, Report, Resolution, coverage_text, status_text,
    totals_text, trend_text, window_text,
};

/// Call sites listed per caller in the table (JSON and HTML list all).
pub const TABLE_CALL_SITES: usize = 3;

/// Above this many days, the table sums the chart's days by seven.
const TABLE_DAYS: usize = 62;

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
    // Its gap sentences carry Prometheus' label values and retention text.
    let _ = writeln!(out, "{}", terminal_line(&coverage_text(report)));
    if report.merged {
        let _ = writeln!(
            out,
            "merged from instances {}",
            terminal_text(&report.instance, 200)
        );
    }
    if report.apps.is_empty() {
        out.push_str("\nNo deprecated calls recorded.\n");
        return out;
    }
    out.push('\n');
    table_summary(&mut out, report);
    for app in &report.apps {
        out.push('\n');
        let _ = writeln!(
            out,
            "app {}: {}",
            terminal_text(&app.app_id, APP_ID_WIDTH),
            totals_text(app)
        );
        let last = app.last_call.map_or_else(
            || "no call recorded".to_owned(),
            |t| format!("last call {}", when_text(t, report.generated_at)),
        );
        let _ = writeln!(
            out,
            "status: {}; {last}; last 24h {}, last 7d {}, window {}; trend: {}",
            status_text(app),
            app.last_24h,
            app.last_7d,
            app.window,
            trend_text(app.trend.as_ref())
        );
        table_chart(&mut out, report.resolution, &app.chart);
        table_libraries(&mut out, report, app);
    }
    out
}

const APP_ID_WIDTH: usize = 64;

/// A table column: its title, the most characters it takes before values
/// are truncated, and whether it is right-aligned.
struct Column {
    title: &'static str,
    max: usize,
    right: bool,
}

const fn col(title: &'static str, max: usize, right: bool) -> Column {
    Column { title, max, right }
}

const SUMMARY: [Column; 7] = [
    col("APP", 32, false),
    col("STATUS", 20, false),
    col("LAST_24H", 20, true),
    col("LAST_7D", 20, true),
    col("WINDOW", 20, true),
    col("TREND", 24, false),
    col("LAST_CALL", 25, false),
];

// u64::MAX has 20 digits, so counts are never truncated.
const CALLERS: [Column; 9] = [
    col("ROUTE", 14, false),
    col("AUTH_KEY", 24, false),
    col("USER_AGENT", 48, false),
    col("CLIENT", 39, false),
    col("INSTANCE", 32, false),
    col("CALLS", 20, true),
    col("FIRST_SEEN", 25, false),
    col("LAST_SEEN", 25, false),
    col("STATUS", 6, false),
];

/// The index of `INSTANCE` in [`CALLERS`], shown for merged reports only.
const INSTANCE: usize = 4;

fn table_summary(out: &mut String, report: &Report) {
    let rows: Vec<Vec<String>> = report
        .apps
        .iter()
        .map(|a| {
            let trend = match &a.trend {
                None => "-".to_owned(),
                Some(t) => match t.change_percent {
                    Some(p) => format!("{p:+}% (was {})", t.previous),
                    None => format!("was {}", t.previous),
                },
            };
            vec![
                a.app_id.clone(),
                status_text(a),
                a.last_24h.to_string(),
                a.last_7d.to_string(),
                a.window.to_string(),
                trend,
                a.last_call
                    .map_or_else(String::new, |t| seconds_text(utc(t))),
            ]
        })
        .collect();
    write_table(out, &SUMMARY, &[], rows, |_, _| {});
}

fn table_chart(out: &mut String, resolution: Resolution, chart: &[Point]) {
    if chart.is_empty() {
        return;
    }
    if chart.iter().all(|p| p.calls == 0) {
        out.push_str("no calls in the window\n");
        return;
    }
    let weekly = resolution == Resolution::Day && chart.len() > TABLE_DAYS;
    let _ = writeln!(
        out,
        "{} calls (UTC):",
        match (resolution, weekly) {
            (Resolution::Hour, _) => "hourly",
            (Resolution::Day, false) => "daily",
            (Resolution::Day, true) => "weekly (7-day)",
        }
    );
    let step = if weekly { 7 } else { 1 };
    // Chunks end at the latest point, so the first one may be short.
    let rem = chart.len() % step;
    let mut chunks: Vec<&[Point]> = Vec::new();
    if rem > 0 {
        chunks.push(&chart[..rem]);
    }
    chunks.extend(chart[rem..].chunks(step));
    for chunk in chunks {
        let (Some(first), Some(last)) = (chunk.first(), chunk.last()) else {
            continue;
        };
        let label = if chunk.len() == 1 {
            first.start.clone()
        } else {
            format!("{}..{}", first.start, last.start)
        };
        let calls = chunk.iter().fold(0u64, |s, p| s.saturating_add(p.calls));
        let partial = if chunk.iter().any(|p| p.partial) {
            "  (partial)"
        } else {
            ""
        };
        let _ = writeln!(out, "{}  {calls}{partial}", terminal_text(&label, 40));
    }
}

fn table_libraries(out: &mut String, report: &Report, app: &AppReport) {
    if app.callers.is_empty() {
        out.push_str("no callers in the window\n");
        return;
    }
    for lib in &app.libraries {
        table_library(out, report, lib);
        let callers: Vec<&CallerReport> = app
            .callers
            .iter()
            .filter(|c| c.library == lib.library)
            .collect();
        table_callers(out, report.merged, &callers);
    }
    out.push_str(if report.prometheus.is_some() {
        "(caller calls are in the window: increase() of Prometheus' counters, by library and sidecar)\n"
    } else {
        "(caller calls are lifetime totals)\n"
    });
}

fn table_library(out: &mut String, report: &Report, lib: &LibraryReport) {
    let _ = writeln!(
        out,
        "library {} [{}]: {}, {} caller(s), {} calls, last seen {}",
        terminal_text(&ascii_dashes(&lib.name), 100),
        terminal_text(&lib.library, 48),
        lib.status.as_str(),
        lib.callers,
        lib.calls,
        when_text(lib.last_seen, report.generated_at)
    );
    if let Some(recipe) = &lib.recipe {
        let first = recipe.first_current.as_deref().unwrap_or("none");
        wrap(out, "  first current release: ", first);
        wrap(out, "  migrate: ", &recipe.replacement);
    }
}

fn table_callers(out: &mut String, merged: bool, callers: &[&CallerReport]) {
    let rows: Vec<Vec<String>> = callers
        .iter()
        .map(|c| {
            vec![
                c.route.as_str().to_owned(),
                c.auth_key.clone(),
                c.user_agent.clone(),
                c.client_address.clone(),
                c.instance.clone(),
                c.calls.to_string(),
                seconds_text(utc(c.first_seen)),
                seconds_text(utc(c.last_seen)),
                c.status.as_str().to_owned(),
            ]
        })
        .collect();
    let hidden: &[usize] = if merged { &[] } else { &[INSTANCE] };
    write_table(out, &CALLERS, hidden, rows, |out, i| {
        let Some(c) = callers.get(i) else { return };
        for site in c.call_sites.iter().take(TABLE_CALL_SITES) {
            let event = if site.event.is_empty() {
                "(none)"
            } else {
                &site.event
            };
            let _ = writeln!(
                out,
                "  call site: event {} channel {}: {} calls",
                terminal_text(event, 60),
                terminal_text(&site.channel, 80),
                site.calls
            );
        }
        let more = c.call_sites.len().saturating_sub(TABLE_CALL_SITES);
        if more > 0 {
            let _ = writeln!(
                out,
                "  ... and {more} more call site(s) (see --format json)"
            );
        }
    });
}

/// Writes `rows` under `columns` (but `hidden`), aligned; `after(out, i)`
/// may add lines after row `i`.
fn write_table(
    out: &mut String,
    columns: &[Column],
    hidden: &[usize],
    rows: Vec<Vec<String>>,
    mut after: impl FnMut(&mut String, usize),
) {
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|r| {
            r.into_iter()
                .map(|v| if v.is_empty() { "-".to_owned() } else { v })
                .map(|v| printable_ascii(&v))
                .collect()
        })
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, col)| {
            let longest = rows
                .iter()
                .filter_map(|r| r.get(i).map(String::len))
                .max()
                .unwrap_or(0);
            longest.max(col.title.len()).min(col.max)
        })
        .collect();
    let header: Vec<String> = columns.iter().map(|c| c.title.to_owned()).collect();
    for (n, row) in std::iter::once(&header).chain(&rows).enumerate() {
        let mut line = String::new();
        for (i, ((col, width), value)) in columns.iter().zip(&widths).zip(row).enumerate() {
            if hidden.contains(&i) {
                continue;
            }
            let value = clip(value, *width);
            if col.right {
                let _ = write!(line, "{value:>width$}  ");
            } else {
                let _ = write!(line, "{value:<width$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
        if let Some(i) = n.checked_sub(1) {
            after(out, i);
        }
    }
}

/// `text` after `prefix`, wrapped at about 100 columns with the prefix's
/// indent, sanitised.
fn wrap(out: &mut String, prefix: &str, text: &str) {
    const WIDTH: usize = 100;
    let indent = " ".repeat(prefix.len());
    let mut line = prefix.to_owned();
    for word in printable_ascii(&ascii_dashes(text)).split(' ') {
        if line.len() > indent.len() && line.len() + word.len() > WIDTH {
            out.push_str(line.trim_end());
            out.push('\n');
            line.clone_from(&indent);
        }
        line.push_str(word);
        line.push(' ');
    }
    out.push_str(line.trim_end());
    out.push('\n');
}

/// En dashes (in library names and recipes) as `-`, so they print as
/// ASCII rather than escaped.
fn ascii_dashes(s: &str) -> String {
    s.replace('\u{2013}', "-")
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
fn clip(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_owned();
    }
    let keep = width.saturating_sub(3);
    let mut out: String = s.chars().take(keep).collect();
    out.push_str(&"..."[..width.min(3)]);
    out
}

/// `s` with its control and bidirectional-control characters escaped as
/// `\u{..}` (a terminal would act on them), other text kept as it is: for
/// the report's own sentences, which hold values from elsewhere.
fn terminal_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() || super::text::is_bidi_control(c) {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

/// `s` sanitised like the table's cells and clipped to `width`.
pub(super) fn terminal_text(s: &str, width: usize) -> String {
    clip(&printable_ascii(s), width)
}
