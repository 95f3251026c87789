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

/// Who made a call: the identity a caller is aggregated under.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CallerKey {
    /// The route.
    pub route: RouteKind,
    /// The `auth_key` the call was signed with (public; it names the app's
    /// credentials).
    pub auth_key: String,
    /// The `User-Agent` header, or empty when absent.
    pub user_agent: String,
    /// The client's IP address, without the port.
    pub client_address: String,
}

impl CallerKey {
    /// The aggregate caller of `route` that absorbs callers past the cap.
    pub fn other(route: RouteKind) -> Self {
        Self {
            route,
            auth_key: OTHER.into(),
            user_agent: OTHER.into(),
            client_address: OTHER.into(),
        }
    }
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
    /// The apps with at least one recorded call.
    pub apps: Vec<AppUsage>,
}

impl Usage {
    /// Merges ledgers (e.g. of a fleet of sidecars): hourly counts and
    /// caller calls add up; first and last seen take the extremes.
    pub fn merge(parts: impl IntoIterator<Item = Usage>) -> Usage {
        type Apps = BTreeMap<
            String,
            (
                BTreeMap<CallerKey, Caller>,
                BTreeMap<(RouteKind, OffsetDateTime), u64>,
            ),
        >;
        let mut apps: Apps = BTreeMap::new();
        for usage in parts {
            for app in usage.apps {
                let (callers, hourly) = apps.entry(app.app_id).or_default();
                for c in app.callers {
                    callers
                        .entry(c.key.clone())
                        .and_modify(|m| {
                            m.calls += c.calls;
                            m.first_seen = m.first_seen.min(c.first_seen);
                            m.last_seen = m.last_seen.max(c.last_seen);
                        })
                        .or_insert(c);
                }
                for h in app.hourly {
                    *hourly.entry((h.route, h.hour)).or_default() += h.calls;
                }
            }
        }
        Usage {
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

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn caller(agent: &str, calls: u64, first: OffsetDateTime, last: OffsetDateTime) -> Caller {
        Caller {
            key: CallerKey {
                route: RouteKind::LegacyTrigger,
                auth_key: "k".into(),
                user_agent: agent.into(),
                client_address: "10.0.0.1".into(),
            },
            calls,
            first_seen: first,
            last_seen: last,
        }
    }

    #[test]
    fn merge_adds_and_takes_extremes() {
        let h = datetime!(2026-11-28 10:00 UTC);
        let a = Usage {
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
}
