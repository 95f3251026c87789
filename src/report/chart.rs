//! The report's SVG line chart: one series per app over the window's
//! buckets, partial buckets drawn as hollow points.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::html::{colour, escape_html};
use super::{AppReport, MAX_DAYS, Resolution};

const SVG_WIDTH: f64 = 960.0;
const SVG_HEIGHT: f64 = 320.0;
const SVG_TOP: f64 = 16.0;
const SVG_RIGHT: f64 = 48.0;
const SVG_BOTTOM: f64 = 36.0;
/// Above this many buckets, full points get no markers (the line says
/// enough); partial ones always do.
const MAX_MARKED: usize = 80;

/// What the chart shows, for its title.
pub(super) fn chart_title(resolution: Resolution) -> &'static str {
    match resolution {
        Resolution::Hour => "Deprecated calls per hour (UTC), per app",
        Resolution::Day => "Deprecated calls per day (UTC), per app",
    }
}

/// The line chart, one polyline per app over the union of the apps'
/// buckets (buckets an app has no entry for plot as 0).
pub(super) fn html_chart(out: &mut String, apps: &[AppReport], resolution: Resolution) {
    let title = chart_title(resolution);
    let _ = write!(
        out,
        "<svg class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {SVG_WIDTH} \
         {SVG_HEIGHT}\" role=\"img\" aria-label=\"{title}\">"
    );
    if apps.is_empty() {
        out.push_str("</svg>\n");
        return;
    }
    out.push('\n');
    let all: BTreeSet<&str> = apps
        .iter()
        .flat_map(|a| a.chart.iter().map(|p| p.start.as_str()))
        .collect();
    let skip = all.len().saturating_sub(MAX_DAYS);
    let buckets: Vec<&str> = all.into_iter().skip(skip).collect();
    let partial: BTreeSet<&str> = apps
        .iter()
        .flat_map(|a| a.chart.iter().filter(|p| p.partial))
        .map(|p| p.start.as_str())
        .collect();
    let value = |app: &AppReport, b: &str| {
        app.chart
            .iter()
            .find(|p| p.start == b)
            .map_or(0, |p| p.calls)
    };
    let max = apps
        .iter()
        .flat_map(|a| a.chart.iter().map(|p| p.calls))
        .max()
        .unwrap_or(0);
    let max_label = max.to_string();
    // Room for the max label, right-aligned against the y axis.
    let left = 14.0 + 7.0 * max_label.len() as f64;
    let bottom = SVG_HEIGHT - SVG_BOTTOM;
    let plot_width = SVG_WIDTH - SVG_RIGHT - left;
    let n = buckets.len();
    let x = |i: usize| {
        if n <= 1 {
            left + plot_width / 2.0
        } else {
            left + plot_width * i as f64 / (n - 1) as f64
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
        "<title>{title}</title>\n\
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
    // The partial buckets at the end (the current hour or day) get a band.
    if let Some(first_partial) = (0..n)
        .rev()
        .take_while(|i| partial.contains(buckets[*i]))
        .last()
    {
        let half = if n > 1 {
            plot_width / (n - 1) as f64 / 2.0
        } else {
            8.0
        };
        let x0 = (x(first_partial) - half).max(left);
        let x1 = (x(n - 1) + half).min(SVG_WIDTH - SVG_RIGHT);
        let _ = writeln!(
            out,
            "<rect class=\"partial-band\" x=\"{x0:.1}\" y=\"{SVG_TOP:.1}\" width=\"{:.1}\" \
             height=\"{:.1}\"><title>partial: still in progress</title></rect>",
            (x1 - x0).max(0.0),
            bottom - SVG_TOP
        );
    }
    let labels = if resolution == Resolution::Hour { 6 } else { 8 };
    for i in label_indices(n, labels) {
        let anchor = match i {
            _ if n == 1 => "middle",
            0 => "start",
            i if i + 1 == n => "end",
            _ => "middle",
        };
        let _ = writeln!(
            out,
            "<text class=\"label\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\">{}</text>",
            x(i),
            bottom + 18.0,
            escape_html(buckets.get(i).copied().unwrap_or_default())
        );
    }
    for (index, app) in apps.iter().enumerate() {
        let app_id = escape_html(&app.app_id);
        let stroke = colour(index);
        let values: Vec<u64> = buckets.iter().map(|b| value(app, b)).collect();
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
        for (i, (bucket, v)) in buckets.iter().zip(&values).enumerate() {
            let is_partial = partial.contains(bucket);
            if n > MAX_MARKED && !is_partial {
                continue;
            }
            let (class, fill, note) = if is_partial {
                ("dot partial", "#fff", " (partial)")
            } else {
                ("dot", stroke, "")
            };
            let _ = writeln!(
                out,
                "<circle class=\"{class}\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{fill}\" \
                 stroke=\"{stroke}\" stroke-width=\"1.5\"><title>App {app_id}, {}: \
                 {v}{note}</title></circle>",
                x(i),
                y(*v),
                escape_html(bucket)
            );
        }
    }
    out.push_str("</svg>\n");
}

/// Up to `labels` evenly spread indices, first and last included.
fn label_indices(n: usize, labels: usize) -> Vec<usize> {
    if n <= labels {
        return (0..n).collect();
    }
    let mut out: Vec<usize> = (0..labels).map(|k| k * (n - 1) / (labels - 1)).collect();
    out.dedup();
    out
}
