//! The report as plain text for a terminal.

use std::fmt::Write as _;

use super::{
    AppReport, CallerReport, Report, TABLE_DAYS, rfc3339, seconds_text, totals_text, utc,
    window_text,
};

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
            let value = clip(value, *width);
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
fn clip(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_owned();
    }
    let keep = width.saturating_sub(3);
    let mut out: String = s.chars().take(keep).collect();
    out.push_str(&"..."[..width.min(3)]);
    out
}

fn terminal_text(s: &str, width: usize) -> String {
    clip(&printable_ascii(s), width)
}
