//! The cutover stages: what happens to an app's deprecated call, given its
//! mode, rollout share and brownout windows.

use sha2::{Digest, Sha256};

use crate::config::{AppConfig, Mode};
use crate::pusher::route::RouteKind;

/// The path a verified deprecated call takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Forwarded in its legacy form to an upstream that still serves it.
    Observe,
    /// Stats: answered from the legacy call, the translation compared.
    Shadow,
    /// Translated to the current API.
    Translate,
    /// Refused with 410 Gone (mode `reject`, or a brownout window).
    Reject,
}

impl Path {
    /// Every path, in label order.
    pub const ALL: [Path; 4] = [Path::Observe, Path::Shadow, Path::Translate, Path::Reject];

    /// The label in logs and metrics (`path`): `observed`, `shadowed`,
    /// `translated`, `rejected`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Observe => "observed",
            Self::Shadow => "shadowed",
            Self::Translate => "translated",
            Self::Reject => "rejected",
        }
    }
}

/// Decides the path of a call to `channel` (decoded) of `app` at Unix time
/// `now`. Brownouts win over every mode; `shadow` applies to stats only
/// (triggers are never sent twice, so they are observed); with `translate`,
/// `rollout_percent` picks the channels translated, the rest observed.
pub fn decide(app: &AppConfig, kind: RouteKind, channel: &str, now: u64) -> Path {
    if app.in_brownout(now) {
        return Path::Reject;
    }
    match app.mode {
        Mode::Reject => Path::Reject,
        Mode::Observe => Path::Observe,
        Mode::Shadow if kind == RouteKind::LegacyStats => Path::Shadow,
        Mode::Shadow => Path::Observe,
        Mode::Translate if in_rollout(&app.id, channel, app.rollout_percent) => Path::Translate,
        Mode::Translate => Path::Observe,
    }
}

/// The channel's rollout bucket, 0-99: a hash of (app id, channel), the
/// same on every sidecar and across restarts, so one channel's calls never
/// split across two paths.
pub fn rollout_bucket(app_id: &str, channel: &str) -> u8 {
    let digest = Sha256::new()
        .chain_update(app_id.as_bytes())
        .chain_update([0u8])
        .chain_update(channel.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // `% 100` of a u64 fits a u8.
    (u64::from_be_bytes(first) % 100) as u8
}

/// Whether `channel` of `app_id` is in the translated share.
pub fn in_rollout(app_id: &str, channel: &str, percent: u8) -> bool {
    // Every bucket is below 100: no hash needed for the whole app.
    percent >= 100 || rollout_bucket(app_id, channel) < percent
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn app(extra: &str) -> AppConfig {
        let toml = format!(
            "[upstream]\nurl = \"http://x\"\n[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n{extra}\n"
        );
        Config::from_toml_str(&toml, &|_| None)
            .expect("valid")
            .apps
            .remove(0)
    }

    #[test]
    fn modes() {
        use RouteKind::{LegacyStats as S, LegacyTrigger as T};
        let cases = [
            ("", S, Path::Translate),
            ("", T, Path::Translate),
            ("mode = \"observe\"", S, Path::Observe),
            ("mode = \"observe\"", T, Path::Observe),
            ("mode = \"shadow\"", S, Path::Shadow),
            ("mode = \"shadow\"", T, Path::Observe),
            ("mode = \"reject\"", T, Path::Reject),
            ("rollout_percent = 0", T, Path::Observe),
            ("rollout_percent = 100", T, Path::Translate),
        ];
        for (extra, kind, path) in cases {
            assert_eq!(
                decide(&app(extra), kind, "room", 0),
                path,
                "{extra} {kind:?}"
            );
        }
    }

    #[test]
    fn brownouts_win_inside_their_window_only() {
        let a = app(
            "brownouts = [{ start = \"2026-12-01T10:00:00Z\", end = \"2026-12-01T11:00:00Z\" }]",
        );
        let start = 1_796_119_200; // 2026-12-01T10:00:00Z
        assert_eq!(
            decide(&a, RouteKind::LegacyTrigger, "c", start - 1),
            Path::Translate
        );
        assert_eq!(
            decide(&a, RouteKind::LegacyTrigger, "c", start),
            Path::Reject
        );
        assert_eq!(
            decide(&a, RouteKind::LegacyTrigger, "c", start + 3599),
            Path::Reject
        );
        assert_eq!(
            decide(&a, RouteKind::LegacyTrigger, "c", start + 3600),
            Path::Translate
        );
    }

    #[test]
    fn rollout_is_sticky_and_proportional() {
        for percent in [0u8, 10, 25, 50, 90, 100] {
            let translated = (0..1000)
                .filter(|i| in_rollout("4242", &format!("channel-{i}"), percent))
                .count();
            let expected = usize::from(percent) * 10;
            assert!(
                translated.abs_diff(expected) <= 50,
                "{percent}%: {translated} of 1000 translated"
            );
        }
        // Sticky across sidecars, restarts and versions: the bucket is a
        // fixed function of (app id, channel). Known answers, computed with
        // `printf '4242\0channel-0' | sha256sum` (first 8 bytes, mod 100).
        for (channel, bucket) in [
            ("channel-0", 77),
            ("channel-1", 76),
            ("room", 43),
            ("presence-lobby", 30),
        ] {
            assert_eq!(rollout_bucket("4242", channel), bucket, "{channel}");
            assert!(
                in_rollout("4242", channel, bucket + 1) && !in_rollout("4242", channel, bucket)
            );
        }
        // Raising the share only adds channels: none flips back.
        for i in 0..1000 {
            let ch = format!("channel-{i}");
            if in_rollout("4242", &ch, 30) {
                assert!(in_rollout("4242", &ch, 60), "{ch}");
            }
        }
        // The app id is part of the hash: two apps split channels differently.
        let differ = (0..1000)
            .filter(|i| {
                let ch = format!("channel-{i}");
                rollout_bucket("1", &ch) != rollout_bucket("2", &ch)
            })
            .count();
        assert!(differ > 900, "{differ}");
    }
}
