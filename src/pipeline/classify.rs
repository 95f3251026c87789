//! Request classification: the two deprecated routes, or passthrough
//! (spec E.1). Matching is on the raw path with repeated slashes collapsed
//! ([`canonical_path`]: a base URL with a trailing slash makes
//! `//apps/…`), segment by segment; channel names never contain `/`.

use std::borrow::Cow;

use hyper::Method;

pub use crate::pusher::route::RouteKind;

/// A classified request: the route and, for legacy routes, the raw
/// (undecoded) path segments. Segments may be empty or malformed here;
/// the handlers refuse those with 400 instead of forwarding them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route<'a> {
    /// The handler.
    pub kind: RouteKind,
    /// The `{app_id}` segment of any `/apps/{app_id}/…` path.
    pub app_id: Option<&'a str>,
    /// The raw `{channel}` segment of a legacy route.
    pub channel: Option<&'a str>,
}

/// `path` with every run of `/` collapsed to one; borrowed when there is
/// none to collapse (nearly always).
pub fn canonical_path(path: &str) -> Cow<'_, str> {
    if !path.contains("//") {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    let mut slash = false;
    for c in path.chars() {
        if c == '/' && slash {
            continue;
        }
        slash = c == '/';
        out.push(c);
    }
    Cow::Owned(out)
}

/// Classifies a request by method and (canonical, see [`canonical_path`])
/// path.
pub fn classify<'a>(method: &Method, path: &'a str) -> Route<'a> {
    // `/apps/{app_id}` and what follows it, if anything.
    let Some(after) = path.strip_prefix("/apps/") else {
        return Route {
            kind: RouteKind::Passthrough,
            app_id: None,
            channel: None,
        };
    };
    let (app_id, rest) = match after.split_once('/') {
        Some((app, rest)) => (app, Some(rest)),
        None => (after, None),
    };
    let passthrough = Route {
        kind: RouteKind::Passthrough,
        app_id: Some(app_id),
        channel: None,
    };
    // `channels/{channel}/{action}`: an action with a `/` in it matches
    // neither of the two below.
    let Some((channel, action)) = rest
        .and_then(|r| r.strip_prefix("channels/"))
        .and_then(|r| r.split_once('/'))
    else {
        return passthrough;
    };
    let kind = match (action, method) {
        // HEAD is GET without the body (RFC 9110 9.3.2): an upstream may
        // serve it as the deprecated call, so it is one.
        ("stats", &Method::GET | &Method::HEAD) => RouteKind::LegacyStats,
        ("events", &Method::POST) => RouteKind::LegacyTrigger,
        _ => return passthrough,
    };
    Route {
        kind,
        app_id: Some(app_id),
        channel: Some(channel),
    }
}

/// Whether `method` is `GET`, `HEAD` or `POST` spelt in another case
/// (`post`: to HTTP, whose methods are case-sensitive, an extension
/// method) on a deprecated route's `path` (canonical): an upstream that
/// ignored a method's case could serve it as the deprecated call, past
/// `reject`, the brownouts and the legacy count. It is refused rather than
/// forwarded, as a path in another spelling is ([`near_legacy`]).
pub fn method_near_legacy(method: &Method, path: &str) -> bool {
    let m = method.as_str();
    // Every method a client sends in practice: no work past this.
    if m.bytes().all(|b| b.is_ascii_uppercase()) {
        return false;
    }
    [Method::GET, Method::HEAD, Method::POST]
        .into_iter()
        .find(|standard| standard.as_str().eq_ignore_ascii_case(m))
        .is_some_and(|standard| classify(&standard, path).kind.is_legacy())
}

/// Whether `path` (canonical, see [`canonical_path`]) names one of the
/// deprecated routes in another spelling, one an upstream that normalised
/// paths could serve as the deprecated call, past `reject`, the brownouts
/// and the legacy count (and re-signed by the proxy for a mapped app).
/// Percent-decoded, each segment without its `;parameters` and compared
/// in any case, such a path either
/// - has a `.` or `..` segment (`..;x` too) and an `apps`, a `channels`
///   and an `events` or `stats` segment anywhere, which resolving the dots
///   could line up (`/apps/1/./channels/c/events`,
///   `/apps/1/channels/c/x/../events`, `/apps/1/x/..;/channels/c/stats`),
///   or
/// - is `/apps/{id}/channels/…/{events|stats}` with at least one segment
///   between `channels` and the last one, otherwise than the deprecated
///   route's own spelling: a trailing `/`, `%65vents`, `events;x`,
///   `CHANNELS`, `%63hannels`, `channels;x`, `room%2Fevents`.
///
/// No Pusher route, current or deprecated, has such a path (but for a
/// channel named `.` or `..`): it is refused rather than forwarded.
pub fn near_legacy(path: &str) -> bool {
    // A deprecated route's own spelling (with another method: passthrough).
    // A `char` search, not one for "/channels/", whose searcher costs more
    // to set up than the rest: this runs on every passthrough call.
    if let Some((channel, action)) = path
        .strip_prefix("/apps/")
        .and_then(|r| r.split_once('/'))
        .and_then(|(_, rest)| rest.strip_prefix("channels/"))
        .and_then(|r| r.split_once('/'))
        && (action == "events" || action == "stats")
    {
        let channel = percent_encoding::percent_decode_str(channel).decode_utf8_lossy();
        if !channel.contains('/') && channel != "." && channel != ".." {
            return false;
        }
    }
    // Borrowed, with no allocation, when there is no escape.
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    let action = |s: &str| s.eq_ignore_ascii_case("events") || s.eq_ignore_ascii_case("stats");
    // Whether there is a dot segment, and an `apps`, a `channels` and an
    // action segment anywhere: resolving dots only takes segments away.
    let (mut dot, mut apps, mut channels, mut acts) = (false, false, false, false);
    // The segments that are neither empty nor dots: how many, the first,
    // the third and the last.
    let (mut count, mut first, mut third, mut last) = (0, "", "", "");
    for segment in decoded.split('/') {
        // `..;x` is a dot segment to a server that drops parameters first.
        let segment = segment.split_once(';').map_or(segment, |(s, _)| s);
        if segment == "." || segment == ".." {
            dot = true;
            continue;
        }
        if segment.is_empty() {
            continue;
        }
        apps |= segment.eq_ignore_ascii_case("apps");
        channels |= segment.eq_ignore_ascii_case("channels");
        acts |= action(segment);
        count += 1;
        match count {
            1 => first = segment,
            3 => third = segment,
            _ => {}
        }
        last = segment;
    }
    if dot {
        return apps && channels && acts;
    }
    count >= 5
        && first.eq_ignore_ascii_case("apps")
        && third.eq_ignore_ascii_case("channels")
        && action(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_legacy_paths() {
        for path in [
            "/apps/1/channels/c/events/",
            "/apps/1/channels/c/stats/",
            "/apps/1/channels/c/%65vents",
            "/apps/1/channels/c/%73tats",
            "/apps/1/channels/c/EVENTS",
            "/apps/1/channels/c/events;x",
            "/apps/1/channels/c/x/../events",
            "/apps/1/channels/c/./stats",
            "/apps/1/channels/c%2Fevents",
            // Before `channels`, and `channels` itself spelt otherwise.
            "/apps/1/./channels/c/events",
            "/apps/1/x/../channels/c/events",
            "/apps/1/%63hannels/c/events",
            "/apps/1/CHANNELS/c/stats",
            "/apps/1/channels;x/c/events",
            "/apps/./1/channels/c/events",
            "/%61pps/1/channels/c/events",
            "/APPS/1/channels/c/events",
            "/./apps/1/channels/c/events",
            "/apps/1/channels/c/events/%2e",
            // A dot segment with parameters, to a server that drops them
            // first.
            "/apps/1/x/..;/channels/c/events",
            "/apps/1/.;/channels/c/stats",
            "/apps/..;/apps/1/channels/c/events",
            "/apps/1/channels/c/events/.;",
            "/apps/1/x/%2e%2e;a/channels/c/events",
        ] {
            assert!(near_legacy(path), "{path}");
        }
        for path in [
            // The deprecated routes themselves (classified as such, or,
            // with another method, passed through).
            "/apps/1/channels/c/events",
            "/apps/1/channels/c/stats",
            "/apps/1/channels/a%40b/events",
            // Current routes, channels named like the actions included.
            "/apps/1/channels",
            "/apps/1/channels/",
            "/apps/1/channels/c",
            "/apps/1/channels/events",
            "/apps/1/channels/stats/",
            "/apps/1/channels/c/users",
            "/apps/1/channels/presence-c/users",
            "/apps/1/events",
            "/apps/1/batch_events",
            "/apps/1/users/u/terminate_connections",
            "/apps/1/channels/c.d/users",
            "/apps/1/channels/a;b/events",
            "/apps/1/x/channels/c/events",
            "/apps/1/events/",
            "/healthz",
            "/healthz/.",
            // Dot segments no resolving could turn into a deprecated
            // route: no `channels`, or no action, in the path.
            "/apps/1/users/../terminate_connections",
            "/apps/1/channels/../users",
            "/apps/1/channels/c/%2e%2e/x",
            "/",
        ] {
            assert!(!near_legacy(path), "{path}");
        }
    }

    #[test]
    fn route_table() {
        type Case<'a> = (Method, &'a str, RouteKind, Option<&'a str>, Option<&'a str>);
        let cases: &[Case<'_>] = &[
            (
                Method::GET,
                "/apps/1/channels/c/stats",
                RouteKind::LegacyStats,
                Some("1"),
                Some("c"),
            ),
            (
                Method::HEAD,
                "/apps/1/channels/c/stats",
                RouteKind::LegacyStats,
                Some("1"),
                Some("c"),
            ),
            (
                Method::POST,
                "/apps/1/channels/c/events",
                RouteKind::LegacyTrigger,
                Some("1"),
                Some("c"),
            ),
            (
                Method::POST,
                "/apps/1/channels/a%40b/events",
                RouteKind::LegacyTrigger,
                Some("1"),
                Some("a%40b"),
            ),
            (
                Method::GET,
                "/apps//channels//stats",
                RouteKind::LegacyStats,
                Some(""),
                Some(""),
            ),
            (
                Method::POST,
                "/apps/1/channels/c/stats",
                RouteKind::Passthrough,
                Some("1"),
                None,
            ),
            (
                Method::GET,
                "/apps/1/channels/c/events",
                RouteKind::Passthrough,
                Some("1"),
                None,
            ),
            (
                Method::GET,
                "/apps/1/channels/c",
                RouteKind::Passthrough,
                Some("1"),
                None,
            ),
            (
                Method::GET,
                "/apps/1/channels/c/stats/",
                RouteKind::Passthrough,
                Some("1"),
                None,
            ),
            (
                Method::GET,
                "/apps/1/channels/c/users",
                RouteKind::Passthrough,
                Some("1"),
                None,
            ),
            (
                Method::POST,
                "/apps/1/events",
                RouteKind::Passthrough,
                Some("1"),
                None,
            ),
            (
                Method::POST,
                "/apps/1/batch_events",
                RouteKind::Passthrough,
                Some("1"),
                None,
            ),
            (Method::GET, "/", RouteKind::Passthrough, None, None),
            (Method::GET, "", RouteKind::Passthrough, None, None),
            (
                Method::GET,
                "/app/1/channels/c/stats",
                RouteKind::Passthrough,
                None,
                None,
            ),
            (
                Method::GET,
                "apps/1/channels/c/stats",
                RouteKind::Passthrough,
                None,
                None,
            ),
        ];
        for (method, path, kind, app, chan) in cases {
            let r = classify(method, path);
            assert_eq!(
                (r.kind, r.app_id, r.channel),
                (*kind, *app, *chan),
                "{method} {path}"
            );
        }
    }

    #[test]
    fn repeated_slashes_collapse() {
        assert!(matches!(
            canonical_path("/apps/1/channels/c/events"),
            Cow::Borrowed(_)
        ));
        assert_eq!(
            canonical_path("//apps//1/channels/c///events"),
            "/apps/1/channels/c/events"
        );
        assert_eq!(canonical_path("//"), "/");
        let path = canonical_path("//apps/1/channels/c/events");
        assert_eq!(
            classify(&Method::POST, &path).kind,
            RouteKind::LegacyTrigger
        );
    }

    /// `exact` in half the draws, one of `near` in the other half.
    fn part(
        exact: &'static str,
        near: &'static [&'static str],
    ) -> impl proptest::strategy::Strategy<Value = &'static str> {
        proptest::prop_oneof![
            proptest::strategy::Just(exact),
            proptest::sample::select(near),
        ]
    }

    /// The route as a split at every `/` reads it: the reference the
    /// prefix matching of [`classify`] is held to.
    fn by_segments<'a>(method: &Method, path: &'a str) -> Route<'a> {
        let mut segments = path.split('/');
        let app_id = match (segments.next(), segments.next(), segments.next()) {
            (Some(""), Some("apps"), Some(app)) => Some(app),
            _ => None,
        };
        let passthrough = Route {
            kind: RouteKind::Passthrough,
            app_id,
            channel: None,
        };
        let rest: Vec<&str> = segments.collect();
        let kind = match (app_id, rest.as_slice(), method) {
            (Some(_), ["channels", _, "stats"], &Method::GET) => RouteKind::LegacyStats,
            (Some(_), ["channels", _, "events"], &Method::POST) => RouteKind::LegacyTrigger,
            _ => return passthrough,
        };
        Route {
            kind,
            app_id,
            channel: Some(rest[1]),
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1024))]

        #[test]
        fn matches_the_segment_reading(
            parts in [
                part("/apps/", &["/apps", "/appsx/", "apps/", "//apps/", "", "/"]),
                part("1", &["", "a%2Fb", "1/"]),
                part("/channels/", &["/channels", "/channelsx/", "/", "", "//channels/"]),
                part("c", &["", "a%40b", "c/x"]),
                part("/stats", &["/events", "/statsx", "/stats/", "/events/x", "", "/", "//stats"]),
            ],
            post in proptest::bool::ANY,
        ) {
            // Built from a legacy route's parts, each one as it is in half
            // the draws and a near miss in the other half: about 1 draw in
            // 60 is a legacy route (a stats call; a trigger when `/events`
            // is the action's near miss and the method POST), some 17 of
            // the 1,024, and the rest are its neighbours.
            let method = if post { Method::POST } else { Method::GET };
            let path = parts.concat();
            proptest::prop_assert_eq!(classify(&method, &path), by_segments(&method, &path), "{}", path);
        }

        #[test]
        fn never_panics(path in "\\PC*", post in proptest::bool::ANY) {
            let method = if post { Method::POST } else { Method::GET };
            let r = classify(&method, &path);
            if r.kind.is_legacy() {
                proptest::prop_assert!(r.channel.is_some() && r.app_id.is_some());
            }
        }
    }
}
