//! The routes of Pusher's HTTP API as the proxy tells them apart: the two
//! deprecated calls (spec D), and everything else.

use serde::{Deserialize, Serialize};

/// Which handler a request goes to; also the bounded `route` label of logs
/// and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteKind {
    /// `GET /apps/{app_id}/channels/{channel}/stats` (spec D.1).
    LegacyStats,
    /// `POST /apps/{app_id}/channels/{channel}/events` (spec D.2).
    LegacyTrigger,
    /// Everything else, forwarded unchanged.
    Passthrough,
}

impl RouteKind {
    /// The label used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LegacyStats => "legacy_stats",
            Self::LegacyTrigger => "legacy_trigger",
            Self::Passthrough => "passthrough",
        }
    }

    /// The route template, for logs.
    pub fn template(self) -> &'static str {
        match self {
            Self::LegacyStats => "/apps/{app_id}/channels/{channel}/stats",
            Self::LegacyTrigger => "/apps/{app_id}/channels/{channel}/events",
            Self::Passthrough => "passthrough",
        }
    }

    /// The two deprecated routes, in label order.
    pub const LEGACY: [RouteKind; 2] = [RouteKind::LegacyStats, RouteKind::LegacyTrigger];

    /// The deprecated route with label `label` (as the store keeps it).
    pub fn legacy_from_label(label: &str) -> Option<Self> {
        Self::LEGACY.into_iter().find(|r| r.as_str() == label)
    }

    /// Whether this is one of the deprecated routes.
    pub fn is_legacy(self) -> bool {
        !matches!(self, Self::Passthrough)
    }
}
