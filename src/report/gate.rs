//! `--fail-if-used-since`: which apps and callers made calls since a
//! cutoff, and the text naming them.

use std::fmt::Write as _;

use time::OffsetDateTime;

use super::CallerReport;
use super::table::terminal_text;
use super::text::when_text;
use crate::telemetry::usage::Usage;

/// An app that made deprecated calls since a cutoff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppUse {
    /// The app id.
    pub app_id: String,
    /// Its latest call known (a caller's, or the start of an hourly
    /// bucket with calls).
    pub last_call: Option<OffsetDateTime>,
    /// Its callers last seen at or after the cutoff, most recent first.
    pub callers: Vec<CallerReport>,
}

/// Every app with a caller last seen at or after `cutoff`, or a non-empty
/// hourly bucket whose hour ends after it, by app id.
pub fn uses_since(usage: &Usage, cutoff: OffsetDateTime) -> Vec<AppUse> {
    let mut out = Vec::new();
    for app in &usage.apps {
        let mut callers: Vec<CallerReport> = app
            .callers
            .iter()
            .filter(|c| c.last_seen >= cutoff)
            .map(|c| CallerReport::new(c, cutoff))
            .collect();
        let by_bucket = app
            .hourly
            .iter()
            .any(|h| h.calls > 0 && super::bucket_ends_after(h.hour, cutoff));
        if callers.is_empty() && !by_bucket {
            continue;
        }
        callers.sort_by_key(|c| std::cmp::Reverse(c.last_seen));
        out.push(AppUse {
            app_id: app.app_id.clone(),
            last_call: super::progress::last_call(app),
            callers,
        });
    }
    out.sort_by(|a, b| a.app_id.cmp(&b.app_id));
    out
}

/// One line per app and one per caller, for stderr: sanitised like the
/// table, times with their age at `now`.
pub fn render_uses(uses: &[AppUse], now: OffsetDateTime) -> String {
    let mut out = String::new();
    for app in uses {
        let last = app
            .last_call
            .map_or_else(|| "unknown".to_owned(), |t| when_text(t, now));
        let _ = writeln!(
            out,
            "  app {}: last call {last}",
            terminal_text(&app.app_id, 64)
        );
        for c in &app.callers {
            let mut who = format!(
                "{} auth_key {} library {} user agent {} from {}",
                c.route.as_str(),
                or_dash(&c.auth_key),
                or_dash(&c.library),
                or_dash(&c.user_agent),
                or_dash(&c.client_address),
            );
            if !c.instance.is_empty() {
                let _ = write!(who, " (instance {})", c.instance);
            }
            let _ = writeln!(
                out,
                "    caller {}: {} calls, last call {}",
                terminal_text(&who, 200),
                c.calls,
                when_text(c.last_seen, now)
            );
        }
    }
    out
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}
