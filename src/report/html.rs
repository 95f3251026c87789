//! The report as one self-contained HTML page.

use std::fmt::Write as _;

use std::collections::BTreeSet;

use super::{AppReport, MAX_DAYS, Report, rfc3339, totals_text, window_text};

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
