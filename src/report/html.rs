//! The report as one self-contained HTML page.

use std::fmt::Write as _;

use super::chart::{chart_title, html_chart};
use super::text::{rfc3339, when_text};
use super::{
    AppReport, CallerReport, LibraryReport, Report, Resolution, Status, coverage_text, status_text,
    totals_text, trend_text, window_text,
};

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
         window: {}.<br>{}.</p>",
        escape_html(&window_text(report)),
        escape_html(&coverage_text(report))
    );
    if report.merged {
        let _ = writeln!(
            out,
            "<p class=\"meta\">Merged from instances <code>{}</code>.</p>",
            escape_html(&report.instance)
        );
    }
    if report.apps.is_empty() {
        out.push_str("<p>No deprecated calls recorded.</p>\n");
    } else {
        html_summary(&mut out, report);
    }
    let _ = writeln!(out, "<h2>{}</h2>", chart_title(report.resolution));
    html_chart(&mut out, &report.apps, report.resolution);
    if !report.apps.is_empty() {
        out.push_str(
            "<p class=\"note\">Hollow points and the shaded band are partial: the current \
             hour or day, still in progress (or the first, when the window starts inside \
             it).</p>\n",
        );
    }
    html_legend(&mut out, &report.apps);
    for app in &report.apps {
        html_app(&mut out, report, app);
    }
    out.push_str("</body>\n</html>\n");
    out
}

const CSS: &str = "\
body{font:14px/1.4 system-ui,sans-serif;color:#222;max-width:1100px;margin:2em auto;padding:0 1em}
h1{font-size:1.5em}
h2{font-size:1.2em;margin-top:2em}
h3{font-size:1.05em;margin:1.2em 0 .3em}
.meta,.note{color:#555}
svg.chart{display:block;width:100%;max-width:960px;height:auto;border:1px solid #eee}
.axis{stroke:#444;stroke-width:1}
.grid{stroke:#ccc;stroke-dasharray:4 4}
.label{font:11px sans-serif;fill:#444}
.partial-band{fill:#f3f3f3}
.legend{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:.4em 1.5em}
.swatch{display:inline-block;width:.9em;height:.9em;margin-right:.4em;vertical-align:middle}
table{border-collapse:collapse;margin:.5em 0}
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:left;vertical-align:top}
td{overflow-wrap:anywhere;max-width:28em}
.num{text-align:right;font-variant-numeric:tabular-nums}
.none{color:#888;font-style:italic}
.status{display:inline-block;padding:0 .5em;border-radius:.6em;font-size:.9em;white-space:nowrap}
.status-active{background:#fde2e1;color:#8a1c13}
.status-quiet{background:#fff3cd;color:#6b4e00}
.status-unproven{background:#e8e8e8;color:#444}
.status-done{background:#d9f2dc;color:#1d5e27}
.recipe dt{font-weight:600}
.recipe dd{margin:0 0 .4em 1.2em}
.sites{margin:0;padding-left:1.2em}
";

/// Series colours, by app index.
const PALETTE: [&str; 10] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

pub(super) fn colour(index: usize) -> &'static str {
    PALETTE[index % PALETTE.len()]
}

/// Text safe in HTML content and in double- or single-quoted attributes;
/// control characters, which HTML does not allow, become U+FFFD.
pub(super) fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() || super::text::is_bidi_control(c) => out.push('\u{FFFD}'),
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

fn badge(status: Status, text: &str) -> String {
    format!(
        "<span class=\"status status-{}\">{}</span>",
        status.as_str(),
        escape_html(text)
    )
}

fn time_html(t: time::OffsetDateTime, now: time::OffsetDateTime) -> String {
    format!(
        "<time datetime=\"{}\">{}</time>",
        escape_html(&rfc3339(t)),
        escape_html(&when_text(t, now))
    )
}

fn html_summary(out: &mut String, report: &Report) {
    out.push_str(
        "<h2>Migration progress</h2>\n<table class=\"progress\">\n<thead><tr><th>App</th>\
         <th>Status</th><th class=\"num\">Last 24 h</th><th class=\"num\">Last 7 d</th>\
         <th class=\"num\">Window</th><th>Trend</th><th>Last call</th></tr></thead>\n<tbody>\n",
    );
    for app in &report.apps {
        let last = app.last_call.map_or_else(
            || "<span class=\"none\">none recorded</span>".to_owned(),
            |t| time_html(t, report.generated_at),
        );
        let _ = writeln!(
            out,
            "<tr data-app=\"{id}\"><td><code>{id}</code></td><td>{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td>{last}</td></tr>",
            badge(app.status, &status_text(app)),
            app.last_24h,
            app.last_7d,
            app.window,
            escape_html(&trend_text(app.trend.as_ref())),
            id = escape_html(&app.app_id),
        );
    }
    out.push_str("</tbody>\n</table>\n");
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

fn html_app(out: &mut String, report: &Report, app: &AppReport) {
    let _ = writeln!(
        out,
        "<section class=\"app\">\n<h2>App <code>{}</code> {}</h2>\n<p class=\"totals\">{}</p>\n\
         <p>Last 24 h: {}; last 7 d: {}; window: {}; trend: {}.</p>",
        escape_html(&app.app_id),
        badge(app.status, &status_text(app)),
        escape_html(&totals_text(app)),
        app.last_24h,
        app.last_7d,
        app.window,
        escape_html(&trend_text(app.trend.as_ref()))
    );
    if app.callers.is_empty() {
        out.push_str("<p class=\"note\">No callers in the window.</p>\n");
    } else {
        for lib in &app.libraries {
            html_library(out, report, lib);
            let callers: Vec<&CallerReport> = app
                .callers
                .iter()
                .filter(|c| c.library == lib.library)
                .collect();
            html_callers(out, report, &callers);
        }
        out.push_str(if report.prometheus.is_some() {
            "<p class=\"note\">Calls are in the window: increase() of Prometheus' counters, \
             by library and sidecar.</p>\n"
        } else {
            "<p class=\"note\">Calls are lifetime totals of the callers seen in the \
             window.</p>\n"
        });
    }
    if !app.chart.is_empty() {
        let _ = writeln!(
            out,
            "<details><summary>{} calls (UTC)</summary>\n<table class=\"daily\">\n\
             <thead><tr><th>{}</th><th class=\"num\">Calls</th></tr></thead>\n<tbody>",
            match report.resolution {
                Resolution::Hour => "Hourly",
                Resolution::Day => "Daily",
            },
            match report.resolution {
                Resolution::Hour => "Hour",
                Resolution::Day => "Day",
            },
        );
        for p in &app.chart {
            let partial = if p.partial { " (partial)" } else { "" };
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td class=\"num\">{}{partial}</td></tr>",
                escape_html(&p.start),
                p.calls
            );
        }
        out.push_str("</tbody>\n</table>\n</details>\n");
    }
    out.push_str("</section>\n");
}

fn html_library(out: &mut String, report: &Report, lib: &LibraryReport) {
    let _ = writeln!(
        out,
        "<h3>{} <code>{}</code> {}</h3>\n<p>{} caller(s), {} calls, last seen {}.</p>",
        escape_html(&lib.name),
        escape_html(&lib.library),
        badge(lib.status, lib.status.as_str()),
        lib.callers,
        lib.calls,
        time_html(lib.last_seen, report.generated_at)
    );
    if let Some(recipe) = &lib.recipe {
        let _ = writeln!(
            out,
            "<dl class=\"recipe\"><dt>First release on the current routes</dt><dd>{}</dd>\
             <dt>Replacement</dt><dd>{}</dd></dl>",
            recipe.first_current.as_deref().map_or_else(
                || "<span class=\"none\">none</span>".to_owned(),
                escape_html
            ),
            escape_html(&recipe.replacement)
        );
    }
}

fn html_callers(out: &mut String, report: &Report, callers: &[&CallerReport]) {
    let instance_th = if report.merged {
        "<th>Instance</th>"
    } else {
        ""
    };
    let _ = writeln!(
        out,
        "<table class=\"callers\">\n<thead><tr><th>Route</th><th>auth_key</th>\
         <th>User agent</th><th>Client</th>{instance_th}<th class=\"num\">Calls</th>\
         <th>First seen</th><th>Last seen</th><th>Status</th><th>Call sites</th></tr></thead>\n\
         <tbody>"
    );
    for c in callers {
        let first = escape_html(&rfc3339(c.first_seen));
        let last = escape_html(&rfc3339(c.last_seen));
        let instance = if report.merged {
            format!("<td>{}</td>", html_value(&c.instance))
        } else {
            String::new()
        };
        let mut sites = String::new();
        if c.call_sites.is_empty() {
            sites.push_str("<span class=\"none\">none recorded</span>");
        } else {
            sites.push_str("<ul class=\"sites\">");
            for s in &c.call_sites {
                let _ = write!(
                    sites,
                    "<li class=\"site\">event <code>{}</code> on <code>{}</code>: {}</li>",
                    html_value(&s.event),
                    html_value(&s.channel),
                    s.calls
                );
            }
            sites.push_str("</ul>");
        }
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td>{instance}<td class=\"num\">{}</td>\
             <td><time datetime=\"{first}\">{first}</time></td>\
             <td><time datetime=\"{last}\">{last}</time></td><td>{}</td><td>{sites}</td></tr>",
            c.route.as_str(),
            html_value(&c.auth_key),
            html_value(&c.user_agent),
            html_value(&c.client_address),
            c.calls,
            badge(c.status, c.status.as_str()),
        );
    }
    out.push_str("</tbody>\n</table>\n");
}
