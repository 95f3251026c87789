//! Every PromQL query `report --prometheus` sends, in one place (and
//! quoted in docs/migration.md, to paste into Grafana).
//!
//! A [`Selector`] names the scrape job, the apps (none: all) and the
//! target label that names a sidecar (`instance`, or `pod` with the
//! Kubernetes relabelling). Ranges are in whole seconds. A range over the
//! counters is widened: `increase()` only sees steps between samples
//! inside its range, so without it a call between the last scrape before
//! a window's start and the first one in it would count nowhere. The
//! gate's ranges reach back two scrape intervals and a second
//! ([`crate::report::prometheus::reach_back`]), as far as a sidecar's last
//! scrape before the window may be while it counts as watched at the
//! start (one scrape missed): such a call counts in the window (on the
//! side of "used"). The report's hourly buckets reach back one interval,
//! so that with regular scrapes each step counts in one bucket. The
//! ranges over the bypass gauge and the configured-app gauge are widened
//! as the gate's: a kill switch seen on (an app seen removed) at the last
//! scrape before the window may have stayed so into it (on the side of a
//! gap).

use std::fmt::Write as _;

/// The counter of deprecated calls, as Prometheus stores it.
pub const DEPRECATED_CALLS: &str = "pusher_cutover_deprecated_calls_total";

/// The counter used to tell which apps a sidecar serves: one series per
/// configured app, created at 0 at startup.
pub const APP_PRESENCE: &str = "pusher_cutover_requests_total";

/// The gauge of when a sidecar's process started (Unix seconds). Sidecars
/// from before it existed expose no such series.
pub const START_TIME: &str = "pusher_cutover_start_time_seconds";

/// How far back a series must have had no sample to be taken for a new
/// sidecar's (at least): an hour.
pub const NEW_SERIES_LOOKBACK: u64 = 3600;

/// The gauge that is 1 while an app is in a sidecar's configuration and 0
/// once a reload removed it. Sidecars from before it existed expose no
/// such series.
pub const APP_CONFIGURED: &str = "pusher_cutover_app_configured";

/// The gauge that is 1 while a sidecar's configuration has `bypass = true`
/// (its calls then pass through uncounted). Sidecars from before it
/// existed expose no such series.
pub const BYPASS: &str = "pusher_cutover_bypass";

/// The gauge of when the kill switch was last in force (a Unix time, set
/// when it is turned off): it tells of a switch on and off again between
/// two scrapes, which the gauge of its state cannot.
pub const BYPASS_LAST_ON: &str = "pusher_cutover_bypass_last_on_timestamp_seconds";

/// What the queries select.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    /// The scrape job (`job` label).
    pub job: String,
    /// Only these app ids; empty for all.
    pub apps: Vec<String>,
    /// The target label naming a sidecar.
    pub instance_label: String,
}

impl Selector {
    /// `{job="…"}` (with `app_id=~"…"` when apps are selected and
    /// `with_apps`) plus `extra` matchers.
    fn matchers(&self, with_apps: bool, extra: &str) -> String {
        let mut m = format!("job=\"{}\"", escape_string(&self.job));
        if with_apps && !self.apps.is_empty() {
            let alternatives: Vec<String> = self.apps.iter().map(|a| escape_regex(a)).collect();
            let _ = write!(m, ",app_id=~\"{}\"", escape_string(&alternatives.join("|")));
        }
        if !extra.is_empty() {
            m.push(',');
            m.push_str(extra);
        }
        format!("{{{m}}}")
    }

    fn calls(&self) -> String {
        format!("{DEPRECATED_CALLS}{}", self.matchers(true, ""))
    }

    fn up(&self) -> String {
        format!("up{}", self.matchers(false, ""))
    }

    /// The grouping of the per-caller queries.
    fn by_caller(&self) -> String {
        format!("app_id, route, library, {}", self.instance_label)
    }

    /// Deprecated calls in the `range` seconds ending at the evaluation
    /// time, by app, route, library and sidecar, only where there were
    /// some: `sum by (app_id, route, library, instance)
    /// (increase(pusher_cutover_deprecated_calls_total{job="…"}[Ns])) > 0`.
    /// With `range` an hour plus a scrape interval, evaluated at every
    /// hour's end by `query_range`, these are the hourly buckets.
    pub fn calls_by_caller(&self, range: u64) -> String {
        format!(
            "sum by ({}) (increase({}[{range}s])) > 0",
            self.by_caller(),
            self.calls()
        )
    }

    /// Calls made by a sidecar before its first scrape inside the window:
    /// series with no sample in the [`NEW_SERIES_LOOKBACK`] (or `range`,
    /// if longer) seconds before it (the sidecar started in the window,
    /// with its counters at 0) whose highest value is above 0.
    /// `increase()` cannot see those, as it starts from the first sample.
    /// "No sample before" is asked of a range (`last_over_time`), not of
    /// the instant `range` seconds ago: one failed scrape there leaves a
    /// staleness marker, which made an old sidecar look new and its
    /// lifetime's calls count as the window's; and of an hour at least,
    /// so that for a short range (the current hour so far) a failed scrape
    /// or two cannot do the same.
    pub fn calls_before_first_scrape(&self, range: u64) -> String {
        let lookback = range.max(NEW_SERIES_LOOKBACK);
        format!(
            "sum by ({by}) (max_over_time({c}[{range}s]) \
             unless last_over_time({c}[{lookback}s] offset {range}s)) > 0",
            by = self.by_caller(),
            c = self.calls()
        )
    }

    /// Calls counted by a sidecar process that started inside the `range`
    /// seconds ending at the evaluation time: its counters' last values,
    /// all made since its start. `increase()` misses those made before its
    /// first scrape when the process restarted between two scrapes and its
    /// counters came back to where the old process's were (one call at
    /// each boot: 1, 1); its series, known from before, is not a new one
    /// either. The [`START_TIME`] gauge tells the restart.
    pub fn calls_since_a_start_in(&self, range: u64) -> String {
        self.where_started_in(
            &format!("last_over_time({}[{range}s])", self.calls()),
            range,
        )
    }

    /// As [`Selector::calls_since_a_start_in`], for the report's hourly
    /// buckets: the counters' values at the evaluation time (an instant
    /// selector), where that one takes their last in the range. A series
    /// the new process has not counted since its start went stale at its
    /// first scrape, and has no value then; taken from the range, it gave
    /// the old process's total, all its calls since its start days before,
    /// as the hour's. (The gate keeps the range: a process that started in
    /// the window and is gone by its end has no value now either, and the
    /// gate errs on the side of "used".)
    pub fn calls_now_since_a_start_in(&self, range: u64) -> String {
        self.where_started_in(&self.calls(), range)
    }

    /// `counters` (by caller) of the sidecars whose process started in the
    /// `range` seconds ending at the evaluation time ([`START_TIME`]),
    /// summed per caller, only where above 0.
    fn where_started_in(&self, counters: &str, range: u64) -> String {
        format!(
            "sum by ({by}) ({counters} and on ({il}) \
             (last_over_time({START_TIME}{m}[{range}s]) > time() - {range})) > 0",
            by = self.by_caller(),
            il = self.instance_label,
            m = self.matchers(false, "")
        )
    }

    /// Each sidecar's scrapes in the window: how many (`count_over_time`).
    pub fn scrapes(&self, range: u64) -> String {
        format!("count_over_time({}[{range}s])", self.up())
    }

    /// Each sidecar's successful scrapes in the window (`up` is 1 or 0).
    pub fn scrapes_up(&self, range: u64) -> String {
        format!("sum_over_time({}[{range}s])", self.up())
    }

    /// Each sidecar's first scrape in the window, to a `step`: the
    /// earliest `timestamp(up)` a subquery sees.
    pub fn first_scrape(&self, range: u64, step: u64) -> String {
        format!("min_over_time(timestamp({})[{range}s:{step}s])", self.up())
    }

    /// Each sidecar's last scrape in the window, to a `step`.
    pub fn last_scrape(&self, range: u64, step: u64) -> String {
        format!("max_over_time(timestamp({})[{range}s:{step}s])", self.up())
    }

    /// The sidecars scraped in the `range` seconds before the evaluation
    /// time; evaluated at the window's start, it tells whether Prometheus
    /// was watching the job then.
    pub fn scraped_in(&self, range: u64) -> String {
        format!("count_over_time({}[{range}s])", self.up())
    }

    /// The sidecars whose kill switch was on in the `range` seconds ending
    /// at the evaluation time (the window widened as the gate's counters
    /// are: a switch on just before the window may have stayed on into
    /// it), 1 for those, 0 for the others. On, when either:
    /// - the gauge was 1 at a scrape: `max_over_time(pusher_cutover_bypass[Ns])`;
    /// - a scrape in the range read a last-on time inside the range: the
    ///   switch was turned off then, so it was on at some moment of the
    ///   range, even if between two scrapes, or before a new sidecar's
    ///   first one: `max_over_time(`[`BYPASS_LAST_ON`]`[Ns]) >= bool time() - N`.
    ///
    /// The two are told apart by an `evidence` label so that `or` keeps
    /// both, then the highest per sidecar is taken and clamped to 1. A
    /// sidecar from before the gauge has no series, so no answer: nothing
    /// is known against it; one from before the last-on time is judged by
    /// the gauge alone.
    pub fn bypassed(&self, range: u64) -> String {
        let m = self.matchers(false, "");
        format!(
            "clamp_max(max by ({by}) (max_over_time({BYPASS}{m}[{range}s]) \
             or label_replace(max_over_time({BYPASS_LAST_ON}{m}[{range}s]) >= bool (time() - {range}), \
             \"evidence\", \"last_on\", \"\", \"\")), 1)",
            by = self.instance_label,
        )
    }

    /// The apps a sidecar stopped serving in the window: its
    /// [`APP_CONFIGURED`] gauge at 0 at a scrape (a reload removed the app;
    /// its series, which [`Selector::apps_served`] counts, stay until a
    /// restart).
    pub fn apps_dropped(&self, range: u64) -> String {
        format!(
            "count by (app_id, {}) (min_over_time({APP_CONFIGURED}{}[{range}s]) == 0)",
            self.instance_label,
            self.matchers(true, "")
        )
    }

    /// When each sidecar's app presence series ([`APP_PRESENCE`], made
    /// at startup for each configured app, and by a reload for an app it
    /// adds) was first seen in the `range`, to a `step`, as
    /// [`Selector::first_scrape`] tells a sidecar's first scrape: later
    /// than that scrape, the app was added inside the window, and its
    /// calls before were refused as an unknown app's, uncounted.
    pub fn apps_first_served(&self, range: u64, step: u64) -> String {
        format!(
            "min by (app_id, {}) (min_over_time(timestamp({APP_PRESENCE}{})[{range}s:{step}s]))",
            self.instance_label,
            self.matchers(true, "route=\"legacy_trigger\",outcome=\"ok\"")
        )
    }

    /// Which apps each sidecar serves in the window (one series per
    /// configured app, present from startup).
    pub fn apps_served(&self, range: u64) -> String {
        format!(
            "count by (app_id, {}) (count_over_time({APP_PRESENCE}{}[{range}s]))",
            self.instance_label,
            self.matchers(true, "route=\"legacy_trigger\",outcome=\"ok\"")
        )
    }
}

/// `s` inside a PromQL double-quoted string.
pub fn escape_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// `s` as a literal in a (RE2) regular expression.
pub fn escape_regex(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(apps: &[&str]) -> Selector {
        Selector {
            job: "pusher-cutover".into(),
            apps: apps.iter().map(|a| (*a).to_owned()).collect(),
            instance_label: "instance".into(),
        }
    }

    #[test]
    fn calls_by_caller_sums_increase_by_app_route_library_and_instance() {
        assert_eq!(
            sel(&[]).calls_by_caller(86_401),
            "sum by (app_id, route, library, instance) \
             (increase(pusher_cutover_deprecated_calls_total{job=\"pusher-cutover\"}[86401s])) > 0"
        );
    }

    #[test]
    fn apps_are_a_regex_of_escaped_literals() {
        let q = sel(&["4242", "a.b"]).calls_by_caller(60);
        assert!(
            q.contains(r#"{job="pusher-cutover",app_id=~"4242|a\\.b"}"#),
            "{q}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let s = Selector {
            job: "we\"ird\\job".into(),
            apps: vec![],
            instance_label: "pod".into(),
        };
        assert_eq!(
            s.scrapes(20),
            r#"count_over_time(up{job="we\"ird\\job"}[20s])"#
        );
        assert!(
            s.calls_by_caller(1)
                .starts_with("sum by (app_id, route, library, pod)")
        );
    }

    #[test]
    fn up_queries_ignore_the_app_selection() {
        let s = sel(&["4242"]);
        assert!(!s.scrapes_up(5).contains("app_id"));
        assert!(!s.first_scrape(5, 1).contains("app_id"));
        assert_eq!(
            s.first_scrape(20, 1),
            "min_over_time(timestamp(up{job=\"pusher-cutover\"})[20s:1s])"
        );
    }

    #[test]
    fn calls_before_first_scrape_needs_no_sample_at_the_start() {
        assert_eq!(
            sel(&[]).calls_before_first_scrape(30),
            "sum by (app_id, route, library, instance) \
             (max_over_time(pusher_cutover_deprecated_calls_total{job=\"pusher-cutover\"}[30s]) \
             unless last_over_time(pusher_cutover_deprecated_calls_total{job=\"pusher-cutover\"}[3600s] offset 30s)) > 0"
        );
        assert!(
            sel(&[])
                .calls_before_first_scrape(7200)
                .contains("[7200s] offset 7200s"),
            "a longer range looks back as far"
        );
    }

    #[test]
    fn bypassed_is_the_highest_bypass_gauge_per_sidecar_whatever_the_apps() {
        assert_eq!(
            sel(&["7"]).bypassed(60),
            "clamp_max(max by (instance) (\
             max_over_time(pusher_cutover_bypass{job=\"pusher-cutover\"}[60s]) \
             or label_replace(max_over_time(pusher_cutover_bypass_last_on_timestamp_seconds{job=\"pusher-cutover\"}[60s]) \
             >= bool (time() - 60), \"evidence\", \"last_on\", \"\", \"\")), 1)"
        );
        let pod = Selector {
            instance_label: "pod".into(),
            ..sel(&[])
        };
        assert!(
            pod.bypassed(5).starts_with("clamp_max(max by (pod) ("),
            "{}",
            pod.bypassed(5)
        );
    }

    /// What the bypass query answers, evaluated by Prometheus' own engine
    /// (`promtool test rules`, on series scraped every 15 s, at 600 s, over
    /// the last 180 s, from 420 s): caught are a switch on and off between
    /// two scrapes (a, off at 475 s), one on and off before a restarted
    /// sidecar's first scrape (r: its gauge reads 0 before and after, and
    /// its last-on time goes from an old one to 475 s), one
    /// before a new sidecar's first scrape (c), and the gauge at 1 at a
    /// scrape (d); not caught, a switch off since 100 s (b, also with a
    /// failed scrape just before the range: f), or never on (e, a sidecar
    /// from before the last-on time).
    #[test]
    #[ignore = "needs promtool (Debian's prometheus package; tests/install-parts.sh installs it)"]
    fn prometheus_finds_each_way_a_switch_was_on() {
        let query = sel(&[]).bypassed(180).replace('\'', "''");
        let series = [
            ("a", "0x40", "0x31 475x8"),
            ("r", "0x40", "100x31 475x8"),
            ("b", "0x40", "100x40"),
            ("f", "0x27 stale 0x11", "100x27 stale 100x11"),
            ("c", "_x30 0x10", "_x30 445x10"),
            ("d", "0x35 1 0x3", "0x36 550x3"),
        ];
        let mut input = String::new();
        for (instance, gauge, last_on) in series {
            let _ = write!(
                input,
                "      - series: '{BYPASS}{{job=\"pusher-cutover\",instance=\"{instance}\"}}'\n\
                 \x20       values: '{gauge}'\n\
                 \x20     - series: '{BYPASS_LAST_ON}{{job=\"pusher-cutover\",instance=\"{instance}\"}}'\n\
                 \x20       values: '{last_on}'\n"
            );
        }
        // A sidecar from before the last-on time: the gauge alone.
        input.push_str(
            "      - series: 'pusher_cutover_bypass{job=\"pusher-cutover\",instance=\"e\"}'\n\
             \x20       values: '0x40'\n",
        );
        let expected: String = [
            ("a", 1),
            ("r", 1),
            ("b", 0),
            ("f", 0),
            ("c", 1),
            ("d", 1),
            ("e", 0),
        ]
        .iter()
        .map(|(i, v)| {
            format!("          - labels: '{{instance=\"{i}\"}}'\n            value: {v}\n")
        })
        .collect();
        promtool_agrees(&query, &input, &expected);
    }

    /// A sidecar new in the range (n) has its calls before its first
    /// scrape counted; an old one whose calls all came long before (o)
    /// has none, nor has it after one failed scrape just before the range
    /// (s: its staleness marker made it look new, and its 7 lifetime
    /// calls count as the window's, under the query this replaced).
    #[test]
    #[ignore = "needs promtool (Debian's prometheus package; tests/install-parts.sh installs it)"]
    fn prometheus_counts_calls_before_a_new_sidecars_first_scrape_only() {
        let query = sel(&[]).calls_before_first_scrape(180).replace('\'', "''");
        let labels = |i: &str| {
            format!("app_id=\"1\",route=\"legacy_trigger\",library=\"x\",instance=\"{i}\"")
        };
        let input: String = [("n", "_x30 2x10"), ("o", "7x40"), ("s", "7x27 stale 7x11")]
            .iter()
            .map(|(i, values)| {
                format!(
                    "      - series: '{DEPRECATED_CALLS}{{job=\"pusher-cutover\",{}}}'\n\
                     \x20       values: '{values}'\n",
                    labels(i)
                )
            })
            .collect();
        let expected = format!(
            "          - labels: '{{{}}}'\n            value: 2\n",
            labels("n")
        );
        promtool_agrees(&query, &input, &expected);
    }

    /// A sidecar that restarted between two scrapes (r: its start time
    /// moves from 100 to 500) with one call at each boot, so its counter
    /// reads 1 before and after: that call is counted. One that did not
    /// restart (o) has none, whatever its counter holds.
    #[test]
    #[ignore = "needs promtool (Debian's prometheus package; tests/install-parts.sh installs it)"]
    fn prometheus_counts_the_calls_of_a_process_started_in_the_range() {
        let query = sel(&[]).calls_since_a_start_in(180).replace('\'', "''");
        let labels = |i: &str| {
            format!("app_id=\"1\",route=\"legacy_trigger\",library=\"x\",instance=\"{i}\"")
        };
        let mut input = String::new();
        for (i, calls, start) in [("r", "1x40", "100x32 500x7"), ("o", "1x40", "100x40")] {
            input.push_str(&format!(
                "      - series: '{DEPRECATED_CALLS}{{job=\"pusher-cutover\",{}}}'\n\
                 \x20       values: '{calls}'\n\
                 \x20     - series: '{START_TIME}{{job=\"pusher-cutover\",instance=\"{i}\"}}'\n\
                 \x20       values: '{start}'\n",
                labels(i)
            ));
        }
        let expected = format!(
            "          - labels: '{{{}}}'\n            value: 1\n",
            labels("r")
        );
        promtool_agrees(&query, &input, &expected);
    }

    /// A call between the last scrape before the window (25 s before it)
    /// and the first in it, with the scrape between them missed (the
    /// sidecar still counts as watched at the start): the gate's range,
    /// reaching back [`reach_back`], counts it. Reaching back one interval
    /// (15 s) saw only the samples after the call: nothing.
    #[test]
    #[ignore = "needs promtool (Debian's prometheus package; tests/install-parts.sh installs it)"]
    fn prometheus_counts_a_call_across_a_scrape_missed_at_the_start() {
        let window = 185;
        let range = window + crate::report::prometheus::reach_back(15);
        let query = format!("round({})", sel(&[]).calls_by_caller(range)).replace('\'', "''");
        let labels = "app_id=\"1\",route=\"legacy_trigger\",library=\"x\",instance=\"a\"";
        let input = format!(
            "      - series: '{DEPRECATED_CALLS}{{job=\"pusher-cutover\",{labels}}}'\n\
             \x20       values: '3x26 _ 4x12'\n"
        );
        let expected = format!("          - labels: '{{{labels}}}'\n            value: 1\n");
        promtool_agrees(&query, &input, &expected);
    }

    /// When an app's presence series was first seen in the window: at the
    /// first scrape in it for a sidecar that served the app throughout
    /// (a), later for one whose reload added it (b, from 465 s).
    #[test]
    #[ignore = "needs promtool (Debian's prometheus package; tests/install-parts.sh installs it)"]
    fn prometheus_tells_when_an_app_was_first_served() {
        let query = sel(&["1"]).apps_first_served(185, 15).replace('\'', "''");
        let mut input = String::new();
        for (i, values) in [("a", "0x40"), ("b", "_x31 0x8")] {
            input.push_str(&format!(
                "      - series: '{APP_PRESENCE}{{job=\"pusher-cutover\",app_id=\"1\",\
                 route=\"legacy_trigger\",outcome=\"ok\",instance=\"{i}\"}}'\n\
                 \x20       values: '{values}'\n"
            ));
        }
        let expected = "          - labels: '{app_id=\"1\",instance=\"a\"}'\n            value: 420\n\
                        \x20         - labels: '{app_id=\"1\",instance=\"b\"}'\n            value: 465\n";
        promtool_agrees(&query, &input, expected);
    }

    /// A sidecar that restarted in the range (its start time moves from
    /// 100 to 500 at 495 s): a library it counted only before (x, 7 calls
    /// over its life, stale since) has no calls in the hour's bucket; one
    /// it counted again (y: one call at each boot, 1 then 1) has 1. Taken
    /// from the range, x gave 7.
    #[test]
    #[ignore = "needs promtool (Debian's prometheus package; tests/install-parts.sh installs it)"]
    fn prometheus_counts_a_restarted_sidecars_current_calls_in_its_hour() {
        let query = sel(&[]).calls_now_since_a_start_in(180).replace('\'', "''");
        let labels = |library: &str| {
            format!("app_id=\"1\",route=\"legacy_trigger\",library=\"{library}\",instance=\"r\"")
        };
        let mut input = String::new();
        for (library, values) in [("x", "7x32 stale"), ("y", "1x40")] {
            input.push_str(&format!(
                "      - series: '{DEPRECATED_CALLS}{{job=\"pusher-cutover\",{}}}'\n\
                 \x20       values: '{values}'\n",
                labels(library)
            ));
        }
        input.push_str(&format!(
            "      - series: '{START_TIME}{{job=\"pusher-cutover\",instance=\"r\"}}'\n\
             \x20       values: '100x32 500x7'\n"
        ));
        let expected = format!(
            "          - labels: '{{{}}}'\n            value: 1\n",
            labels("y")
        );
        promtool_agrees(&query, &input, &expected);
    }

    /// `promtool test rules` on `input_series` scraped every 15 s: `query`
    /// at 600 s gives `exp_samples` (YAML lines, already indented).
    fn promtool_agrees(query: &str, input: &str, expected: &str) {
        let test = format!(
            "evaluation_interval: 15s\ntests:\n  - interval: 15s\n    input_series:\n{input}\
             \x20   promql_expr_test:\n      - expr: '{query}'\n        eval_time: 10m\n\
             \x20       exp_samples:\n{expected}"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("promql_test.yml");
        std::fs::write(&path, &test).expect("write");
        let out = std::process::Command::new("promtool")
            .args(["test", "rules"])
            .arg(&path)
            .output()
            .expect("promtool runs (Debian's prometheus package)");
        assert!(
            out.status.success(),
            "{test}\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn apps_served_counts_one_presence_series_per_app() {
        assert_eq!(
            sel(&["7"]).apps_served(60),
            "count by (app_id, instance) (count_over_time(pusher_cutover_requests_total\
             {job=\"pusher-cutover\",app_id=~\"7\",route=\"legacy_trigger\",outcome=\"ok\"}[60s]))"
        );
    }
}
