//! Whether the evidence behind a zero is complete: for Prometheus, every
//! sidecar of the job scraped throughout its existence in the window and
//! counting all along (no kill switch on), the window inside what
//! Prometheus keeps; for ledgers, a ledger recording since before the
//! window and not marked open for writing. Each shortfall is a [`Gap`], named so an
//! operator can go and look. Pure functions over numbers already fetched,
//! so the rules are unit-tested without a Prometheus.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;
use time::OffsetDateTime;

use super::text::rfc3339;

/// Why a window's zero is not proven.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Gap {
    /// No sidecar of the job was scraped in the window.
    NoSidecar {
        /// The scrape job.
        job: String,
    },
    /// No sidecar of the job was scraped around the window's start:
    /// Prometheus' data for the job starts inside the window (it was
    /// started, or the job added, or the data dropped, since).
    NotWatchedAtStart {
        /// The scrape job.
        job: String,
        /// The window's start (Unix seconds).
        start: i64,
    },
    /// The window reaches back further than Prometheus keeps samples.
    Retention {
        /// Prometheus' `storage.tsdb.retention.time`, as it says it.
        retention: String,
        /// The window, in seconds.
        window_seconds: u64,
    },
    /// A sidecar's scrapes failed (`up == 0`) for part of the window.
    ScrapesFailed {
        /// The sidecar (its instance label).
        instance: String,
        /// Scrapes with `up == 0`.
        failed: u64,
        /// All its scrapes in the window.
        scrapes: u64,
    },
    /// A sidecar scraped before the window was not scraped in its first
    /// two scrape intervals: it was down or out of discovery meanwhile,
    /// and a process that started in that time made calls no scrape saw
    /// (its series, known from before, is not taken for a new one whose
    /// calls before its first scrape count).
    LateFirstScrape {
        /// The sidecar.
        instance: String,
        /// Its first scrape in the window (Unix seconds), to the step
        /// first scrapes are known to; `None` when unknown.
        first: Option<i64>,
    },
    /// A sidecar has fewer scrapes than its time in the window and the
    /// scrape interval call for.
    ScrapesMissing {
        /// The sidecar.
        instance: String,
        /// Scrapes seen.
        scrapes: u64,
        /// Scrapes expected between its first and last in the window.
        expected: u64,
    },
    /// Fewer sidecars up at the window's end than `--expect-instances`.
    FewerInstances {
        /// `--expect-instances`.
        expected: usize,
        /// Sidecars whose last scrape in the window succeeded.
        seen: usize,
    },
    /// A sidecar had its kill switch on (`bypass = true`) in the window
    /// (or the two scrape intervals and a second before it), seen at a scrape or by the
    /// time it was last turned off: it passed every call
    /// through, deprecated ones uncounted, so its zero says nothing about
    /// that time.
    Bypassed {
        /// The sidecar.
        instance: String,
    },
    /// An `--expect-app` that a sidecar does not serve (its calls would
    /// pass through that sidecar uncounted), or an `--app` or
    /// `--expect-app` that none does (a mistyped id shows no calls
    /// because it is nobody's, which proves nothing).
    AppNotServed {
        /// The app id.
        app_id: String,
        /// The sidecars without it; empty when there is no sidecar at all.
        instances: Vec<String>,
    },
    /// An `--app` that sidecars served for part of the window only (a
    /// reload added or removed it) and none throughout: its calls in the
    /// rest of the window were refused as an unknown app's, uncounted.
    AppServedPartly {
        /// The app id.
        app_id: String,
    },
    /// The job's scrape interval is unknown (no active target, and no
    /// `--scrape-interval`), so missing scrapes cannot be counted.
    ScrapeIntervalUnknown {
        /// The scrape job.
        job: String,
    },
    /// The ledger started recording inside the window.
    LedgerStartsInWindow {
        /// When it started (Unix seconds).
        recorded_since: i64,
        /// The window's start (Unix seconds).
        start: i64,
    },
    /// The ledger does not say since when it records.
    LedgerStartUnknown,
    /// A ledger was read while marked open for writing ([`OpenLedger`]):
    /// its writer's calls since its last write are not in it.
    LedgerOpen {
        /// Where it was read (the data directory).
        ledger: String,
        /// The sidecar that marked it (empty when unknown).
        instance: String,
        /// When that sidecar opened it (Unix seconds), when known.
        since: Option<i64>,
    },
}

/// A ledger read while marked open for writing
/// ([`crate::telemetry::store::OpenMark`]): it is being written by a
/// running sidecar, whose calls since its last write (up to
/// `flush_interval_ms`, longer while writes fail) are in its memory only,
/// or was left by one that stopped without its last write, whose calls
/// since then are lost. Either way calls since a moment at or after the
/// mark's time may be missing, and every gate window reaches to now, past
/// that moment: no window's zero is proven from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenLedger {
    /// Where it was read (the data directory).
    pub ledger: String,
    /// The sidecar that marked it ([`crate::telemetry::usage::Usage::instance`]
    /// of the ledger; empty when unknown).
    pub instance: String,
    /// When that sidecar opened it, when the mark says.
    pub since: Option<OffsetDateTime>,
}

impl From<&OpenLedger> for Gap {
    fn from(open: &OpenLedger) -> Self {
        Self::LedgerOpen {
            ledger: open.ledger.clone(),
            instance: open.instance.clone(),
            since: open.since.map(OffsetDateTime::unix_timestamp),
        }
    }
}

fn unix_text(t: i64) -> String {
    OffsetDateTime::from_unix_timestamp(t).map_or_else(|_| t.to_string(), rfc3339)
}

impl fmt::Display for Gap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LateFirstScrape { instance, first } => write!(
                f,
                "sidecar {instance}, scraped before the window, was not scraped in its first \
                 two scrape intervals{}: its calls in that time are unknown",
                first.map_or_else(String::new, |t| format!(
                    " (first scraped about {})",
                    unix_text(t)
                ))
            ),
            Self::NoSidecar { job } => {
                write!(f, "no sidecar of job {job} was scraped in the window")
            }
            Self::NotWatchedAtStart { job, start } => write!(
                f,
                "no sidecar of job {job} was scraped at the window's start ({}): Prometheus' \
                 data for the job begins inside the window",
                unix_text(*start)
            ),
            Self::Retention {
                retention,
                window_seconds,
            } => write!(
                f,
                "the window ({}) is longer than Prometheus keeps samples (retention {retention})",
                humantime::format_duration(std::time::Duration::from_secs(*window_seconds))
            ),
            Self::ScrapesFailed {
                instance,
                failed,
                scrapes,
            } => write!(
                f,
                "sidecar {instance} was not reachable for {failed} of its {scrapes} scrapes \
                 (up == 0)"
            ),
            Self::ScrapesMissing {
                instance,
                scrapes,
                expected,
            } => write!(
                f,
                "sidecar {instance} has {scrapes} scrapes in the window where its time in it \
                 calls for {expected}"
            ),
            Self::Bypassed { instance } => write!(
                f,
                "sidecar {instance} had bypass on (the kill switch) during the window: it \
                 passed calls through uncounted"
            ),
            Self::FewerInstances { expected, seen } => write!(
                f,
                "{seen} sidecar(s) up at the window's end, {expected} expected \
                 (--expect-instances)"
            ),
            Self::AppNotServed { app_id, instances } if instances.is_empty() => write!(
                f,
                "app {app_id} is served by no sidecar in the window (is the id right?): \
                 no sidecar counts its calls"
            ),
            Self::AppNotServed { app_id, instances } => write!(
                f,
                "app {app_id} is not configured on sidecar(s) {} for the whole window \
                 (--expect-app; missing, or removed or added by a reload in it): its calls \
                 there are not counted",
                instances.join(", ")
            ),
            Self::AppServedPartly { app_id } => write!(
                f,
                "app {app_id} was served by no sidecar for the whole window (a reload added or \
                 removed it): its calls in the rest of it were not counted"
            ),
            Self::ScrapeIntervalUnknown { job } => write!(
                f,
                "the scrape interval of job {job} is unknown (no active target; give \
                 --scrape-interval)"
            ),
            Self::LedgerStartsInWindow {
                recorded_since,
                start,
            } => write!(
                f,
                "the ledger records since {}, after the window's start ({}): it cannot prove \
                 there was no call before",
                unix_text(*recorded_since),
                unix_text(*start)
            ),
            Self::LedgerStartUnknown => {
                write!(f, "the ledger does not say since when it records")
            }
            Self::LedgerOpen {
                ledger,
                instance,
                since,
            } => {
                write!(f, "the ledger in {ledger} is marked open")?;
                match (instance.is_empty(), since) {
                    (false, Some(t)) => {
                        write!(f, " (by sidecar {instance} since {})", unix_text(*t))?
                    }
                    (false, None) => write!(f, " (by sidecar {instance})")?,
                    (true, Some(t)) => write!(f, " (since {})", unix_text(*t))?,
                    (true, None) => {}
                }
                write!(
                    f,
                    ": it is being written by a running sidecar, or was left by one that \
                     stopped without its last write, so calls since its last write may be \
                     missing; gate a running sidecar through --url"
                )
            }
        }
    }
}

/// A ledger's evidence for a window starting at `start` (and ending now):
/// none missing when it records since then or earlier, and none of the
/// ledgers it was read from is marked `open` (each one that is, a gap,
/// whatever the window: see [`OpenLedger`]).
pub fn ledger_gaps(
    recorded_since: Option<OffsetDateTime>,
    open: &[OpenLedger],
    start: OffsetDateTime,
) -> Vec<Gap> {
    let mut out = match recorded_since {
        Some(r) if r <= start => Vec::new(),
        Some(r) => vec![Gap::LedgerStartsInWindow {
            recorded_since: r.unix_timestamp(),
            start: start.unix_timestamp(),
        }],
        None => vec![Gap::LedgerStartUnknown],
    };
    out.extend(open.iter().map(Gap::from));
    out
}

/// One sidecar's scrapes in a window, as Prometheus answered.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Scrapes {
    /// `count_over_time(up[…])`.
    pub scrapes: u64,
    /// `sum_over_time(up[…])`: the successful ones.
    pub up: u64,
    /// Its first scrape in the window (Unix seconds), when known.
    pub first: Option<f64>,
    /// Its last scrape in the window (Unix seconds), when known.
    pub last: Option<f64>,
}

/// What Prometheus answered about a window, for [`gaps`].
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// The scrape job.
    pub job: String,
    /// The window's start and end (Unix seconds).
    pub start: i64,
    /// The window's end.
    pub end: i64,
    /// The job's scrape interval in seconds, when known.
    pub scrape_interval: Option<f64>,
    /// The step (seconds) to which first and last scrapes are known.
    pub timestamp_step: f64,
    /// Prometheus' retention time as it says it, and parsed.
    pub retention: Option<(String, std::time::Duration)>,
    /// Sidecars scraped just before the window's start.
    pub watched_at_start: usize,
    /// Each sidecar scraped in the window.
    pub instances: BTreeMap<String, Scrapes>,
    /// The sidecars scraped in the window's length before its start.
    pub scraped_before: BTreeSet<String>,
    /// The sidecars scraped in the window's first two scrape intervals
    /// (and a second); `None` when not asked (no scrape interval known).
    pub scraped_early: Option<BTreeSet<String>>,
    /// Which apps each sidecar serves in the window, if only for part of
    /// it.
    pub apps_served: BTreeMap<String, BTreeSet<String>>,
    /// Which of those each sidecar served for part of the window only: a
    /// reload removed them, or added them after its first scrape.
    pub apps_partly: BTreeMap<String, BTreeSet<String>>,
    /// The sidecars whose kill switch was on in the window (or the two
    /// scrape intervals and a second before it): `pusher_cutover_bypass` 1 at a scrape, or
    /// `pusher_cutover_bypass_last_on_timestamp_seconds` inside the range
    /// (turned off then). A sidecar from a release
    /// before the gauge has no such series and is not in here: nothing is
    /// known against it, so it is no gap.
    pub bypassed: BTreeSet<String>,
    /// `--expect-instances`.
    pub expect_instances: Option<usize>,
    /// `--expect-app`.
    pub expect_apps: Vec<String>,
    /// `--app`: each must be served by some sidecar.
    pub apps: Vec<String>,
}

/// Scrapes expected from `first` to `last` at `interval`.
pub fn expected_scrapes(first: f64, last: f64, interval: f64) -> u64 {
    if interval <= 0.0 || last < first {
        return 1;
    }
    // Truncation is the intent: whole intervals between the two.
    ((last - first) / interval).floor() as u64 + 1
}

/// Missing scrapes tolerated before they are a gap: one, and 2 % of the
/// expected, for the jitter of scrape times against the window's edges,
/// plus the scrapes two `step`s of imprecision in first and last hold.
fn tolerance(expected: u64, step: f64, interval: f64) -> u64 {
    let imprecision = if interval > 0.0 && step > interval {
        // Whole scrapes: the intent.
        (2.0 * step / interval).ceil() as u64
    } else {
        0
    };
    1 + expected / 50 + imprecision
}

/// Every gap in `facts`, in a stable order: the job, retention, each
/// sidecar (by name: its scrapes, then its kill switch), the expectations.
pub fn gaps(facts: &Facts) -> Vec<Gap> {
    let mut out = Vec::new();
    if facts.instances.is_empty() {
        out.push(Gap::NoSidecar {
            job: facts.job.clone(),
        });
    } else if facts.watched_at_start == 0 {
        out.push(Gap::NotWatchedAtStart {
            job: facts.job.clone(),
            start: facts.start,
        });
    }
    let window_seconds = u64::try_from(facts.end - facts.start).unwrap_or(0);
    if let Some((text, retention)) = &facts.retention
        && !retention.is_zero()
        && window_seconds > retention.as_secs()
    {
        out.push(Gap::Retention {
            retention: text.clone(),
            window_seconds,
        });
    }
    if facts.scrape_interval.is_none() && !facts.instances.is_empty() {
        out.push(Gap::ScrapeIntervalUnknown {
            job: facts.job.clone(),
        });
    }
    // Every sidecar named, scraped or bypassed (the bypass series comes
    // from the same scrapes as `up`, so the second set is in the first;
    // should it not be, the gap is still named).
    let named: BTreeSet<&String> = facts.instances.keys().chain(&facts.bypassed).collect();
    for instance in named {
        per_sidecar(facts, instance, &mut out);
    }
    if let Some(expected) = facts.expect_instances {
        let seen = facts
            .instances
            .values()
            .filter(|s| up_at_end(s, facts))
            .count();
        if seen < expected {
            out.push(Gap::FewerInstances { expected, seen });
        }
    }
    // Served by a sidecar for the whole window.
    let throughout = |instance: &String, app: &String| {
        facts
            .apps_served
            .get(instance)
            .is_some_and(|apps| apps.contains(app))
            && facts
                .apps_partly
                .get(instance)
                .is_none_or(|apps| !apps.contains(app))
    };
    for app in &facts.expect_apps {
        let without: Vec<String> = facts
            .instances
            .keys()
            .filter(|i| !throughout(i, app))
            .cloned()
            .collect();
        if facts.instances.is_empty() || !without.is_empty() {
            out.push(Gap::AppNotServed {
                app_id: app.clone(),
                instances: without,
            });
        }
    }
    // With no sidecar at all, that is the gap already.
    let served_by_one = |app: &String| facts.apps_served.values().any(|a| a.contains(app));
    for app in &facts.apps {
        if facts.instances.is_empty() || facts.expect_apps.contains(app) {
            continue;
        }
        if !served_by_one(app) {
            out.push(Gap::AppNotServed {
                app_id: app.clone(),
                instances: Vec::new(),
            });
        } else if !facts.apps_served.keys().any(|i| throughout(i, app)) {
            out.push(Gap::AppServedPartly {
                app_id: app.clone(),
            });
        }
    }
    out
}

/// One sidecar's gaps: failed scrapes, missing scrapes, the kill switch.
fn per_sidecar(facts: &Facts, instance: &str, out: &mut Vec<Gap>) {
    if let Some(s) = facts.instances.get(instance) {
        if s.up < s.scrapes {
            out.push(Gap::ScrapesFailed {
                instance: instance.to_owned(),
                failed: s.scrapes - s.up,
                scrapes: s.scrapes,
            });
        }
        // Known from before the window, and not scraped in its first two
        // scrape intervals.
        if let Some(early) = &facts.scraped_early
            && facts.scraped_before.contains(instance)
            && !early.contains(instance)
        {
            out.push(Gap::LateFirstScrape {
                instance: instance.to_owned(),
                first: s.first.map(|t| t as i64),
            });
        }
        if let (Some(interval), Some(first), Some(last)) = (facts.scrape_interval, s.first, s.last)
        {
            let expected = expected_scrapes(first, last, interval);
            if s.scrapes + tolerance(expected, facts.timestamp_step, interval) < expected {
                out.push(Gap::ScrapesMissing {
                    instance: instance.to_owned(),
                    scrapes: s.scrapes,
                    expected,
                });
            }
        }
    }
    if facts.bypassed.contains(instance) {
        out.push(Gap::Bypassed {
            instance: instance.to_owned(),
        });
    }
}

/// Whether a sidecar was scraped at the window's end (within two scrape
/// intervals) and its scrapes all succeeded.
fn up_at_end(s: &Scrapes, facts: &Facts) -> bool {
    let interval = facts.scrape_interval.unwrap_or(60.0);
    let recent = s
        .last
        .is_some_and(|last| last >= facts.end as f64 - 2.0 * interval - 1.0);
    recent && s.up == s.scrapes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrapes(n: u64, up: u64, first: f64, last: f64) -> Scrapes {
        Scrapes {
            scrapes: n,
            up,
            first: Some(first),
            last: Some(last),
        }
    }

    /// Two sidecars scraped every second through a 60 s window.
    fn full() -> Facts {
        let mut instances = BTreeMap::new();
        instances.insert("a:9090".into(), scrapes(60, 60, 1000.5, 1059.5));
        instances.insert("b:9090".into(), scrapes(61, 61, 1000.0, 1060.0));
        let apps: BTreeSet<String> = ["4242".to_owned()].into();
        Facts {
            job: "pusher-cutover".into(),
            start: 1000,
            end: 1060,
            scrape_interval: Some(1.0),
            timestamp_step: 1.0,
            retention: Some(("15d".into(), std::time::Duration::from_secs(15 * 86_400))),
            watched_at_start: 2,
            apps_served: [
                ("a:9090".to_owned(), apps.clone()),
                ("b:9090".to_owned(), apps),
            ]
            .into(),
            apps_partly: BTreeMap::new(),
            scraped_before: instances.keys().cloned().collect(),
            scraped_early: Some(instances.keys().cloned().collect()),
            instances,
            // Sidecars from before the bypass gauge have no series: none
            // listed, no gap.
            bypassed: BTreeSet::new(),
            expect_instances: None,
            expect_apps: Vec::new(),
            apps: Vec::new(),
        }
    }

    #[test]
    fn full_coverage_has_no_gap() {
        assert_eq!(gaps(&full()), vec![]);
    }

    /// A sidecar scraped before the window whose first scrape in it comes
    /// more than two intervals after its start was away meanwhile (its
    /// calls then unknown); a sidecar new in the window is not.
    #[test]
    fn a_known_sidecar_first_scraped_late_in_the_window_is_a_gap() {
        let mut f = full();
        // b: away from the start (1000) until 1020, scraped each second since.
        f.instances
            .insert("b:9090".into(), scrapes(41, 41, 1020.0, 1060.0));
        f.scraped_early.as_mut().expect("asked").remove("b:9090");
        assert_eq!(
            gaps(&f),
            vec![Gap::LateFirstScrape {
                instance: "b:9090".into(),
                first: Some(1020)
            }]
        );
        let said = gaps(&f)[0].to_string();
        assert!(said.contains("first two scrape intervals"), "{said}");
        // A sidecar new in the window (not scraped before it): no gap.
        f.scraped_before.remove("b:9090");
        assert_eq!(gaps(&f), vec![]);
        // Unknown (no scrape interval to ask with): no such gap.
        f.scraped_before.insert("b:9090".into());
        f.scraped_early = None;
        assert_eq!(gaps(&f), vec![]);
    }

    #[test]
    fn no_sidecar_is_a_gap() {
        let mut f = full();
        f.instances.clear();
        assert_eq!(
            gaps(&f),
            vec![Gap::NoSidecar {
                job: "pusher-cutover".into()
            }]
        );
        assert_eq!(
            gaps(&f)[0].to_string(),
            "no sidecar of job pusher-cutover was scraped in the window"
        );
    }

    #[test]
    fn failed_scrapes_name_the_sidecar() {
        let mut f = full();
        f.instances
            .insert("b:9090".into(), scrapes(61, 50, 1000.0, 1060.0));
        let g = gaps(&f);
        assert_eq!(
            g,
            vec![Gap::ScrapesFailed {
                instance: "b:9090".into(),
                failed: 11,
                scrapes: 61
            }]
        );
        assert_eq!(
            g[0].to_string(),
            "sidecar b:9090 was not reachable for 11 of its 61 scrapes (up == 0)"
        );
    }

    #[test]
    fn missing_scrapes_beyond_the_tolerance_are_a_gap() {
        let mut f = full();
        // 59 of 61: within one and 2 %.
        f.instances
            .insert("b:9090".into(), scrapes(59, 59, 1000.0, 1060.0));
        assert_eq!(gaps(&f), vec![]);
        f.instances
            .insert("b:9090".into(), scrapes(40, 40, 1000.0, 1060.0));
        assert_eq!(
            gaps(&f),
            vec![Gap::ScrapesMissing {
                instance: "b:9090".into(),
                scrapes: 40,
                expected: 61
            }]
        );
    }

    #[test]
    fn a_coarse_timestamp_step_widens_the_tolerance() {
        let mut f = full();
        f.instances
            .insert("b:9090".into(), scrapes(50, 50, 1000.0, 1060.0));
        assert_eq!(gaps(&f).len(), 1, "11 missing of 61 at a 1 s step");
        f.timestamp_step = 5.0;
        assert_eq!(
            gaps(&f),
            vec![],
            "first and last known to 5 s: 10 more allowed"
        );
    }

    #[test]
    fn a_sidecar_that_started_or_ended_inside_the_window_is_covered_for_its_time() {
        let mut f = full();
        // Replaced at 1030: the old one scraped until then, the new one since.
        f.instances
            .insert("a:9090".into(), scrapes(31, 31, 1000.0, 1030.0));
        f.instances
            .insert("c:9090".into(), scrapes(30, 30, 1031.0, 1060.0));
        assert_eq!(gaps(&f), vec![]);
    }

    #[test]
    fn data_starting_inside_the_window_is_a_gap() {
        let mut f = full();
        f.watched_at_start = 0;
        assert_eq!(
            gaps(&f),
            vec![Gap::NotWatchedAtStart {
                job: "pusher-cutover".into(),
                start: 1000
            }]
        );
    }

    #[test]
    fn a_window_longer_than_retention_is_a_gap() {
        let mut f = full();
        f.retention = Some(("30s".into(), std::time::Duration::from_secs(30)));
        let g = gaps(&f);
        assert_eq!(
            g,
            vec![Gap::Retention {
                retention: "30s".into(),
                window_seconds: 60
            }]
        );
        assert!(g[0].to_string().contains("retention 30s"), "{}", g[0]);
        // 0s: no time-based retention (size only) says nothing.
        f.retention = Some(("0s".into(), std::time::Duration::ZERO));
        assert_eq!(gaps(&f), vec![]);
    }

    #[test]
    fn expected_instances_count_those_up_at_the_end() {
        let mut f = full();
        f.expect_instances = Some(2);
        assert_eq!(gaps(&f), vec![]);
        f.expect_instances = Some(3);
        assert_eq!(
            gaps(&f),
            vec![Gap::FewerInstances {
                expected: 3,
                seen: 2
            }]
        );
        // One gone at 1030 is not up at the end.
        f.expect_instances = Some(2);
        f.instances
            .insert("a:9090".into(), scrapes(31, 31, 1000.0, 1030.0));
        assert_eq!(
            gaps(&f),
            vec![Gap::FewerInstances {
                expected: 2,
                seen: 1
            }]
        );
    }

    #[test]
    fn an_expected_app_must_be_served_by_every_sidecar() {
        let mut f = full();
        f.expect_apps = vec!["4242".into()];
        assert_eq!(gaps(&f), vec![]);
        f.expect_apps = vec!["7000".into()];
        let g = gaps(&f);
        assert_eq!(
            g,
            vec![Gap::AppNotServed {
                app_id: "7000".into(),
                instances: vec!["a:9090".into(), "b:9090".into()]
            }]
        );
        assert!(g[0].to_string().contains("a:9090, b:9090"), "{}", g[0]);
    }

    /// An `--app` no sidecar serves (a mistyped id) is a gap; one that a
    /// single sidecar serves is not (sidecars front different apps).
    #[test]
    fn an_app_asked_for_must_be_served_by_some_sidecar() {
        let mut f = full();
        f.apps = vec!["4242".into()];
        assert_eq!(gaps(&f), vec![]);
        f.apps_served.get_mut("b:9090").expect("b").remove("4242");
        assert_eq!(gaps(&f), vec![], "served by a:9090");
        f.apps = vec!["4424".into(), "4242".into()];
        let g = gaps(&f);
        assert_eq!(
            g,
            vec![Gap::AppNotServed {
                app_id: "4424".into(),
                instances: Vec::new()
            }]
        );
        assert!(
            g[0].to_string().contains("served by no sidecar"),
            "{}",
            g[0]
        );
        // Named by both flags: one gap, --expect-app's.
        f.expect_apps = vec!["4424".into()];
        assert_eq!(gaps(&f).len(), 1);
    }

    #[test]
    fn a_sidecar_with_bypass_on_in_the_window_is_a_gap_after_its_scrapes() {
        let mut f = full();
        f.bypassed.insert("b:9090".into());
        let g = gaps(&f);
        assert_eq!(
            g,
            vec![Gap::Bypassed {
                instance: "b:9090".into()
            }]
        );
        assert_eq!(
            g[0].to_string(),
            "sidecar b:9090 had bypass on (the kill switch) during the window: it passed \
             calls through uncounted"
        );
        assert_eq!(
            serde_json::to_value(&g[0]).expect("json"),
            serde_json::json!({"kind": "bypassed", "instance": "b:9090"})
        );
        // In the sidecars' order, each one's scrapes first; before the
        // expectations.
        f.bypassed.insert("a:9090".into());
        f.instances
            .insert("b:9090".into(), scrapes(61, 60, 1000.0, 1060.0));
        f.expect_instances = Some(3);
        assert_eq!(
            gaps(&f),
            vec![
                Gap::Bypassed {
                    instance: "a:9090".into()
                },
                Gap::ScrapesFailed {
                    instance: "b:9090".into(),
                    failed: 1,
                    scrapes: 61
                },
                Gap::Bypassed {
                    instance: "b:9090".into()
                },
                Gap::FewerInstances {
                    expected: 3,
                    seen: 1
                },
            ]
        );
    }

    #[test]
    fn an_unknown_scrape_interval_is_a_gap() {
        let mut f = full();
        f.scrape_interval = None;
        assert_eq!(
            gaps(&f),
            vec![Gap::ScrapeIntervalUnknown {
                job: "pusher-cutover".into()
            }]
        );
    }

    #[test]
    fn a_ledger_proves_zero_only_from_before_the_window() {
        let t = |s| OffsetDateTime::from_unix_timestamp(s).expect("time");
        assert_eq!(ledger_gaps(Some(t(900)), &[], t(1000)), vec![]);
        assert_eq!(ledger_gaps(Some(t(1000)), &[], t(1000)), vec![]);
        let g = ledger_gaps(Some(t(1001)), &[], t(1000));
        assert_eq!(
            g,
            vec![Gap::LedgerStartsInWindow {
                recorded_since: 1001,
                start: 1000
            }]
        );
        assert!(
            g[0].to_string().contains("1970-01-01T00:16:41Z"),
            "{}",
            g[0]
        );
        assert_eq!(
            ledger_gaps(None, &[], t(1000)),
            vec![Gap::LedgerStartUnknown]
        );
    }

    #[test]
    fn a_ledger_marked_open_is_a_gap_whatever_the_window() {
        let t = |s| OffsetDateTime::from_unix_timestamp(s).expect("time");
        let open = OpenLedger {
            ledger: "/var/lib/pusher-cutover".into(),
            instance: "i-1".into(),
            since: Some(t(5000)),
        };
        let gap = Gap::LedgerOpen {
            ledger: "/var/lib/pusher-cutover".into(),
            instance: "i-1".into(),
            since: Some(5000),
        };
        // A window from long before the mark, and one from after it.
        for start in [t(900), t(6000)] {
            assert_eq!(
                ledger_gaps(Some(t(100)), std::slice::from_ref(&open), start),
                vec![gap.clone()]
            );
        }
        assert_eq!(
            ledger_gaps(Some(t(1001)), &[open.clone(), open.clone()], t(1000)).len(),
            3,
            "the start, and each ledger marked open"
        );
        assert_eq!(
            gap.to_string(),
            "the ledger in /var/lib/pusher-cutover is marked open (by sidecar i-1 since \
             1970-01-01T01:23:20Z): it is being written by a running sidecar, or was left by \
             one that stopped without its last write, so calls since its last write may be \
             missing; gate a running sidecar through --url"
        );
        let unknown = Gap::from(&OpenLedger {
            instance: String::new(),
            since: None,
            ..open
        });
        assert!(
            unknown
                .to_string()
                .starts_with("the ledger in /var/lib/pusher-cutover is marked open: it is"),
            "{unknown}"
        );
        assert_eq!(
            serde_json::to_value(&gap).expect("json"),
            serde_json::json!({
                "kind": "ledger_open",
                "ledger": "/var/lib/pusher-cutover",
                "instance": "i-1",
                "since": 5000
            })
        );
    }

    #[test]
    fn expected_scrapes_counts_both_ends() {
        assert_eq!(expected_scrapes(0.0, 60.0, 15.0), 5);
        assert_eq!(expected_scrapes(0.0, 59.0, 15.0), 4);
        assert_eq!(expected_scrapes(10.0, 10.0, 15.0), 1);
    }
}
