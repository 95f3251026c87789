//! The usage ledger's data: who made which deprecated call, how often,
//! and when. This is what `/usage` serves, what the store persists and
//! what `report` merges across sidecars.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::pusher::route::RouteKind;

/// The name of what is aggregated past a bound: the aggregate caller (and
/// its fields) once an app has `max_callers_per_app` distinct callers, and
/// the `app_id` label of calls to apps that are not configured.
pub const OTHER: &str = "other";

/// The `library` of calls recorded before callers were fingerprinted (a
/// ledger written by an earlier release), and of callers no known family
/// matches.
pub const UNKNOWN_LIBRARY: &str = "unknown";

/// Who made a call: the identity a caller is aggregated under.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CallerKey {
    /// The route.
    pub route: RouteKind,
    /// The `auth_key` the call was signed with (public; it names the app's
    /// credentials).
    pub auth_key: String,
    /// The sending library's family id, or [`UNKNOWN_LIBRARY`].
    #[serde(default = "unknown_library")]
    pub library: String,
    /// The short hash of the sender's wire traits (empty for calls recorded
    /// before fingerprinting).
    #[serde(default)]
    pub fingerprint: String,
    /// The `User-Agent` header, or empty when absent.
    pub user_agent: String,
    /// The client's IP address, without the port.
    pub client_address: String,
    /// The sidecar that recorded the calls (`[telemetry] instance`; empty
    /// for calls recorded before instances were named).
    #[serde(default)]
    pub instance: String,
}

fn unknown_library() -> String {
    UNKNOWN_LIBRARY.into()
}

impl CallerKey {
    /// The aggregate caller of `route` recorded by `instance` that absorbs
    /// callers past the cap.
    pub fn other(route: RouteKind, instance: &str) -> Self {
        Self {
            route,
            auth_key: OTHER.into(),
            library: OTHER.into(),
            fingerprint: OTHER.into(),
            user_agent: OTHER.into(),
            client_address: OTHER.into(),
            instance: instance.into(),
        }
    }

    /// Whether this is an aggregate of callers past the cap.
    pub fn is_other(&self) -> bool {
        self.auth_key == OTHER
            && self.library == OTHER
            && self.fingerprint == OTHER
            && self.user_agent == OTHER
            && self.client_address == OTHER
    }
}

/// Calls of one caller with one event name and channel template (a place
/// to grep for in the caller's code).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CallSite {
    /// The event name (empty for stats calls); [`OTHER`] for the sum of the
    /// call sites past the ones kept.
    pub event: String,
    /// The channel template (digit runs, UUIDs and long hex strings as
    /// `{id}`); [`OTHER`] for the sum past the ones kept.
    pub channel: String,
    /// Calls.
    pub calls: u64,
}

/// One caller's totals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    /// Who.
    #[serde(flatten)]
    pub key: CallerKey,
    /// Calls since first seen.
    pub calls: u64,
    /// The first call.
    #[serde(with = "time::serde::rfc3339")]
    pub first_seen: OffsetDateTime,
    /// The latest call.
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen: OffsetDateTime,
    /// Its most frequent call sites, most calls first, at most
    /// [`MAX_CALL_SITES`] and then one [`OTHER`] entry summing the rest.
    #[serde(default)]
    pub call_sites: Vec<CallSite>,
}

/// Call sites listed per caller before the rest are summed as [`OTHER`].
pub const MAX_CALL_SITES: usize = 20;

/// `sites` (event, channel template, calls) as a caller lists them: most
/// calls first (then by event and channel), the top [`MAX_CALL_SITES`] kept
/// and everything else, [`OTHER`] entries included, summed into one
/// [`OTHER`] entry.
pub fn top_call_sites(sites: impl IntoIterator<Item = CallSite>) -> Vec<CallSite> {
    let mut other = 0u64;
    let mut kept: Vec<CallSite> = Vec::new();
    for site in sites {
        if site.event == OTHER && site.channel == OTHER {
            other = other.saturating_add(site.calls);
        } else {
            kept.push(site);
        }
    }
    kept.sort_by(|a, b| {
        b.calls
            .cmp(&a.calls)
            .then_with(|| (&a.event, &a.channel).cmp(&(&b.event, &b.channel)))
    });
    for site in kept.drain(MAX_CALL_SITES.min(kept.len())..) {
        other = other.saturating_add(site.calls);
    }
    if other > 0 {
        kept.push(CallSite {
            event: OTHER.into(),
            channel: OTHER.into(),
            calls: other,
        });
    }
    kept
}

/// Calls of one route in one hour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HourlyCount {
    /// The route.
    pub route: RouteKind,
    /// The start of the hour (UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub hour: OffsetDateTime,
    /// Calls in that hour.
    pub calls: u64,
}

/// One app's ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppUsage {
    /// The app id.
    pub app_id: String,
    /// Its callers, at most `max_callers_per_app` plus one `other` per route.
    pub callers: Vec<Caller>,
    /// Its calls per route and hour, oldest first.
    pub hourly: Vec<HourlyCount>,
}

/// A whole ledger, apps sorted by id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// The sidecar whose ledger this is (`[telemetry] instance`); for a
    /// merge of several, their names joined with `,` in order.
    #[serde(default)]
    pub instance: String,
    /// Since when the ledger has recorded every verified call: the
    /// creation of its store (or the start of the process, without one),
    /// moved forward past every gap in the recording since: a store file
    /// that could not be read and was replaced, a previous run that ended
    /// without its last write (its calls since then are lost), and the
    /// kill switch (`bypass`, which passes calls through unrecorded: while
    /// it is on, and up to the moment it is turned off). Calls before it
    /// are unknown, so it cannot prove that an app made none earlier. For
    /// a merge, the latest of its parts' (the time from which all of them
    /// recorded); `None` when unknown.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub recorded_since: Option<OffsetDateTime>,
    /// The apps with at least one recorded call.
    pub apps: Vec<AppUsage>,
}

impl Usage {
    /// Merges ledgers (e.g. of a fleet of sidecars): hourly counts and
    /// caller calls add up (saturating: a part may be a remote `/usage`
    /// answer); first and last seen take the extremes.
    pub fn merge(parts: impl IntoIterator<Item = Usage>) -> Usage {
        type Apps = BTreeMap<
            String,
            (
                BTreeMap<CallerKey, Caller>,
                BTreeMap<(RouteKind, OffsetDateTime), u64>,
            ),
        >;
        let mut apps: Apps = BTreeMap::new();
        let mut instances: Vec<String> = Vec::new();
        let mut recorded_since: Option<Option<OffsetDateTime>> = None;
        for usage in parts {
            if !usage.instance.is_empty() && !instances.contains(&usage.instance) {
                instances.push(usage.instance);
            }
            recorded_since = Some(match (recorded_since, usage.recorded_since) {
                (None, since) => since,
                (Some(Some(a)), Some(b)) => Some(a.max(b)),
                (Some(_), _) => None,
            });
            for app in usage.apps {
                let (callers, hourly) = apps.entry(app.app_id).or_default();
                for c in app.callers {
                    callers
                        .entry(c.key.clone())
                        .and_modify(|m| {
                            m.calls = m.calls.saturating_add(c.calls);
                            m.first_seen = m.first_seen.min(c.first_seen);
                            m.last_seen = m.last_seen.max(c.last_seen);
                            let sites = std::mem::take(&mut m.call_sites);
                            m.call_sites = merge_call_sites(sites, c.call_sites.clone());
                        })
                        .or_insert(c);
                }
                for h in app.hourly {
                    let calls = hourly.entry((h.route, h.hour)).or_default();
                    *calls = calls.saturating_add(h.calls);
                }
            }
        }
        Usage {
            instance: instances.join(","),
            recorded_since: recorded_since.flatten(),
            apps: apps
                .into_iter()
                .map(|(app_id, (callers, hourly))| AppUsage {
                    app_id,
                    callers: callers.into_values().collect(),
                    hourly: hourly
                        .into_iter()
                        .map(|((route, hour), calls)| HourlyCount { route, hour, calls })
                        .collect(),
                })
                .collect(),
        }
    }
}

/// Two callers' call sites as one list (calls of the same site added).
fn merge_call_sites(a: Vec<CallSite>, b: Vec<CallSite>) -> Vec<CallSite> {
    let mut sum: BTreeMap<(String, String), u64> = BTreeMap::new();
    for site in a.into_iter().chain(b) {
        let calls = sum.entry((site.event, site.channel)).or_default();
        *calls = calls.saturating_add(site.calls);
    }
    top_call_sites(sum.into_iter().map(|((event, channel), calls)| CallSite {
        event,
        channel,
        calls,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn caller(agent: &str, calls: u64, first: OffsetDateTime, last: OffsetDateTime) -> Caller {
        Caller {
            key: CallerKey {
                route: RouteKind::LegacyTrigger,
                auth_key: "k".into(),
                library: "unknown".into(),
                fingerprint: "fp".into(),
                user_agent: agent.into(),
                client_address: "10.0.0.1".into(),
                instance: "i-1".into(),
            },
            calls,
            first_seen: first,
            last_seen: last,
            call_sites: Vec::new(),
        }
    }

    #[test]
    fn merge_adds_and_takes_extremes() {
        let h = datetime!(2026-11-28 10:00 UTC);
        let a = Usage {
            instance: "i-1".into(),
            recorded_since: None,
            apps: vec![AppUsage {
                app_id: "1".into(),
                callers: vec![caller(
                    "ua",
                    3,
                    datetime!(2026-11-01 0:00 UTC),
                    datetime!(2026-11-28 10:05 UTC),
                )],
                hourly: vec![HourlyCount {
                    route: RouteKind::LegacyTrigger,
                    hour: h,
                    calls: 3,
                }],
            }],
        };
        let b = Usage {
            instance: "i-1".into(),
            recorded_since: None,
            apps: vec![
                AppUsage {
                    app_id: "1".into(),
                    callers: vec![
                        caller(
                            "ua",
                            2,
                            datetime!(2026-10-01 0:00 UTC),
                            datetime!(2026-11-28 10:01 UTC),
                        ),
                        caller("other-ua", 1, h, h),
                    ],
                    hourly: vec![HourlyCount {
                        route: RouteKind::LegacyTrigger,
                        hour: h,
                        calls: 3,
                    }],
                },
                AppUsage {
                    app_id: "0".into(),
                    callers: vec![],
                    hourly: vec![],
                },
            ],
        };
        let m = Usage::merge([a, b]);
        assert_eq!(
            m.apps.iter().map(|a| a.app_id.as_str()).collect::<Vec<_>>(),
            ["0", "1"]
        );
        let app = &m.apps[1];
        assert_eq!(
            app.hourly,
            vec![HourlyCount {
                route: RouteKind::LegacyTrigger,
                hour: h,
                calls: 6
            }]
        );
        let ua = app
            .callers
            .iter()
            .find(|c| c.key.user_agent == "ua")
            .expect("merged");
        assert_eq!(ua.calls, 5);
        assert_eq!(ua.first_seen, datetime!(2026-10-01 0:00 UTC));
        assert_eq!(ua.last_seen, datetime!(2026-11-28 10:05 UTC));
        assert_eq!(app.callers.len(), 2);
    }

    #[test]
    fn json_shape() {
        let h = datetime!(2026-11-28 10:00 UTC);
        let u = Usage {
            instance: "i-1".into(),
            recorded_since: None,
            apps: vec![AppUsage {
                app_id: "1".into(),
                callers: vec![caller("ua", 1, h, h)],
                hourly: vec![HourlyCount {
                    route: RouteKind::LegacyStats,
                    hour: h,
                    calls: 1,
                }],
            }],
        };
        let v = serde_json::to_value(&u).expect("serialises");
        assert_eq!(v["apps"][0]["callers"][0]["route"], "legacy_trigger");
        assert_eq!(v["apps"][0]["callers"][0]["client_address"], "10.0.0.1");
        assert_eq!(
            v["apps"][0]["callers"][0]["first_seen"],
            "2026-11-28T10:00:00Z"
        );
        assert_eq!(v["apps"][0]["hourly"][0]["route"], "legacy_stats");
        let back: Usage = serde_json::from_value(v).expect("round trip");
        assert_eq!(back, u);
    }

    #[test]
    fn merge_names_the_instances_and_proves_only_the_common_span() {
        let at = |h| datetime!(2026-11-28 0:00 UTC) + time::Duration::hours(h);
        let part = |instance: &str, since: Option<OffsetDateTime>| Usage {
            instance: instance.into(),
            recorded_since: since,
            apps: vec![],
        };
        let m = Usage::merge([part("a", Some(at(1))), part("b", Some(at(5)))]);
        assert_eq!(m.instance, "a,b");
        assert_eq!(m.recorded_since, Some(at(5)), "from when both recorded");
        let m = Usage::merge([part("a", Some(at(1))), part("b", None)]);
        assert_eq!(m.recorded_since, None, "one part of unknown start: unknown");
    }

    #[test]
    fn callers_of_other_instances_stay_apart_and_call_sites_add_up() {
        let h = datetime!(2026-11-28 10:00 UTC);
        let site = |event: &str, calls| CallSite {
            event: event.into(),
            channel: "orders-{id}".into(),
            calls,
        };
        let of = |instance: &str, sites: Vec<CallSite>| {
            let mut c = caller("ua", sites.iter().map(|s| s.calls).sum(), h, h);
            c.key.instance = instance.into();
            c.call_sites = sites;
            Usage {
                instance: instance.into(),
                recorded_since: None,
                apps: vec![AppUsage {
                    app_id: "1".into(),
                    callers: vec![c],
                    hourly: vec![],
                }],
            }
        };
        let m = Usage::merge([
            of("a", vec![site("x", 2)]),
            of("a", vec![site("x", 1), site("y", 5)]),
            of("b", vec![site("x", 1)]),
        ]);
        let callers = &m.apps[0].callers;
        assert_eq!(callers.len(), 2, "one caller per instance");
        let a = callers.iter().find(|c| c.key.instance == "a").expect("a");
        assert_eq!(a.calls, 8);
        assert_eq!(a.call_sites, vec![site("y", 5), site("x", 3)]);
    }

    /// Counts from remote `/usage` answers can be anything: merging two
    /// at `u64::MAX` saturates instead of panicking (debug) or wrapping to
    /// a small number, or to 0 that the gate would skip (release).
    #[test]
    fn merge_saturates_counts() {
        let h = datetime!(2026-11-28 10:00 UTC);
        let part = || {
            let mut c = caller("ua", u64::MAX, h, h);
            c.call_sites = vec![CallSite {
                event: "ev".into(),
                channel: "room".into(),
                calls: u64::MAX,
            }];
            Usage {
                instance: "i-1".into(),
                recorded_since: None,
                apps: vec![AppUsage {
                    app_id: "1".into(),
                    callers: vec![c],
                    hourly: vec![HourlyCount {
                        route: RouteKind::LegacyTrigger,
                        hour: h,
                        calls: u64::MAX,
                    }],
                }],
            }
        };
        let m = Usage::merge([part(), part()]);
        let app = &m.apps[0];
        assert_eq!(app.callers[0].calls, u64::MAX);
        assert_eq!(app.callers[0].call_sites[0].calls, u64::MAX);
        assert_eq!(app.hourly[0].calls, u64::MAX);
    }

    #[test]
    fn top_call_sites_sums_past_the_limit() {
        let sites = (0..MAX_CALL_SITES as u64 + 5).map(|i| CallSite {
            event: format!("e{i:02}"),
            channel: "c".into(),
            calls: i + 1,
        });
        let top = top_call_sites(sites.chain([CallSite {
            event: OTHER.into(),
            channel: OTHER.into(),
            calls: 100,
        }]));
        assert_eq!(top.len(), MAX_CALL_SITES + 1);
        assert_eq!(top[0].calls, MAX_CALL_SITES as u64 + 5);
        let other = top.last().expect("other");
        assert_eq!(other.event, OTHER);
        assert_eq!(other.calls, 100 + (1..=5).sum::<u64>());
    }
}
