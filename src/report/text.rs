//! Time and count formatting shared by the renderers; none of it can fail.

use std::fmt::Write as _;

use serde::Serializer;

use super::{AppReport, Direction, Report, Status, Trend};
use time::format_description::well_known::Rfc3339;
use time::{Date, OffsetDateTime, UtcOffset};

/// `t` in UTC, or unchanged when that is out of range.
pub(super) fn utc(t: OffsetDateTime) -> OffsetDateTime {
    t.checked_to_offset(UtcOffset::UTC).unwrap_or(t)
}

/// RFC 3339 in UTC; times RFC 3339 cannot express (years outside
/// 0000-9999) fall back to the same shape without failing.
pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    let t = utc(t);
    t.format(&Rfc3339).unwrap_or_else(|_| seconds_text(t))
}

/// `YYYY-MM-DDTHH:MM:SSZ` (or with the offset when not UTC), formatted by
/// hand so it cannot fail.
pub(super) fn seconds_text(t: OffsetDateTime) -> String {
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
pub(super) fn day_key(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// `YYYY-MM-DDTHH:00Z`, the key of the hour starting at `t` (UTC).
pub(super) fn hour_key(t: OffsetDateTime) -> String {
    let t = utc(t);
    format!("{}T{:02}:00Z", day_key(t.date()), t.hour())
}

/// Whole seconds from `earlier` to `later`, 0 when `later` is not later
/// (saturating).
pub(super) fn seconds_between(earlier: OffsetDateTime, later: OffsetDateTime) -> u64 {
    let d = later - earlier;
    u64::try_from(d.whole_seconds()).unwrap_or(0)
}

/// `3d 4h`, `5h 12m`, `7m`, `under a minute`.
pub(super) fn span_text(seconds: u64) -> String {
    let (d, h, m) = (seconds / 86_400, seconds / 3600 % 24, seconds / 60 % 60);
    match (d, h, m) {
        (0, 0, 0) => "under a minute".into(),
        (0, 0, m) => format!("{m}m"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

/// `2026-11-28T11:00:00Z (1h 0m ago)`; a time after `now` (a sidecar with
/// a fast clock) says so instead of an age.
pub(super) fn when_text(t: OffsetDateTime, now: OffsetDateTime) -> String {
    if t > now {
        format!("{} (after the report's time)", rfc3339(t))
    } else {
        format!(
            "{} ({} ago)",
            rfc3339(t),
            span_text(seconds_between(t, now))
        )
    }
}

pub(super) fn ser_time<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*t))
}

pub(super) fn ser_opt_time<S: Serializer>(
    t: &Option<OffsetDateTime>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => ser_time(t, s),
        None => s.serialize_none(),
    }
}

// ---- shared sentences ----

pub(super) fn window_text(report: &Report) -> String {
    match report.since {
        Some(since) => format!("{} to {}", rfc3339(since), rfc3339(report.generated_at)),
        None => "all time".into(),
    }
}

/// Whether `c` reorders the text around it when displayed (the Unicode
/// bidirectional embeddings, overrides and isolates, and the direction
/// marks): a caller's value could make its own cell, or what follows it,
/// read otherwise.
pub(super) fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// What the ledger's span means for the statuses.
pub(super) fn coverage_text(report: &Report) -> String {
    if let Some(e) = &report.prometheus {
        let head = format!(
            "Prometheus {}, job {}: {} sidecar(s) scraped in the window",
            e.prometheus,
            e.job,
            e.instances.len()
        );
        if e.gaps.is_empty() {
            return format!("{head}, each throughout its time in it: covers the window");
        }
        let gaps: Vec<&str> = e.gaps.iter().map(|g| g.message.as_str()).collect();
        return format!(
            "{head}; the evidence has gaps, so an app without calls shows as unproven, not \
             done: {}",
            gaps.join("; ")
        );
    }
    if !report.ledger_gaps.is_empty() {
        let start = report.recorded_since.map_or_else(
            || "ledger start unknown".to_owned(),
            |r| format!("ledger recorded since {}", rfc3339(r)),
        );
        let gaps: Vec<&str> = report
            .ledger_gaps
            .iter()
            .map(|g| g.message.as_str())
            .collect();
        return format!(
            "{start}; the evidence has gaps, so an app without calls shows as unproven, not \
             done: {}",
            gaps.join("; ")
        );
    }
    match (report.recorded_since, report.since) {
        (Some(r), _) if report.covers_window => {
            format!("ledger recorded since {}: covers the window", rfc3339(r))
        }
        (Some(r), Some(_)) => format!(
            "ledger recorded since {}, inside the window: an app without calls shows as \
             unproven, not done",
            rfc3339(r)
        ),
        (Some(r), None) => format!(
            "ledger recorded since {}; the window is all time, so an app without calls shows \
             as unproven, not done",
            rfc3339(r)
        ),
        (None, _) => {
            "ledger start unknown: an app without calls shows as unproven, not done".to_owned()
        }
    }
}

/// `legacy_trigger 1000, legacy_stats 3, total 1003`.
pub(super) fn totals_text(app: &AppReport) -> String {
    let mut s = String::new();
    // Reverse label order puts `legacy_trigger`, the bulk of traffic,
    // first, as in the example.
    for (route, n) in app.deprecated_calls.iter().rev() {
        let _ = write!(s, "{} {n}, ", route.as_str());
    }
    let _ = write!(s, "total {}", app.total());
    s
}

/// `up from 900 in the previous window (+11%)`, or `no previous window`.
pub(super) fn trend_text(trend: Option<&Trend>) -> String {
    let Some(t) = trend else {
        return "no previous window (all time)".into();
    };
    let direction = match t.direction {
        Direction::Up => "up",
        Direction::Down => "down",
        Direction::Flat => "flat",
    };
    let mut s = format!("{direction} from {} in the previous window", t.previous);
    if let Some(p) = t.change_percent {
        let _ = write!(s, " ({p:+}%)");
    }
    if !t.previous_covered {
        // Source-neutral: a ledger that started late, or Prometheus data that
        // begins inside the previous window.
        s.push_str(", which was not fully recorded");
    }
    s
}

/// `active`, or `quiet for 3d 4h`.
pub(super) fn status_text(app: &AppReport) -> String {
    match (app.status, app.since_last_call_seconds) {
        (Status::Quiet, Some(s)) => format!("quiet for {}", span_text(s)),
        (status, _) => status.as_str().to_owned(),
    }
}
