//! Channel names (spec C.1).

/// Longest channel name accepted: what sockudo, soketi and the official
/// libraries allow. Pusher itself allows 164 and answers 400 beyond; that
/// answer is passed through (spec C.1, E.5 item 8).
pub const MAX_CHANNEL_LEN: usize = 200;

/// Longest channel name Pusher itself accepts (spec C.1): it answers 400
/// beyond, so the proxy refuses such names before forwarding to it.
pub const PUSHER_MAX_CHANNEL_LEN: usize = 164;

/// Whether `host` is Pusher's own service: `pusher.com`, `pusherapp.com`
/// (its older API domain) or any subdomain of either (`api-mt1.pusher.com`).
/// Matched case-insensitively, ignoring a trailing dot.
pub fn is_pusher_host(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host).as_bytes();
    ["pusher.com", "pusherapp.com"].iter().any(|domain| {
        let domain = domain.as_bytes();
        host.eq_ignore_ascii_case(domain)
            || (host.len() > domain.len()
                && host[host.len() - domain.len() - 1] == b'.'
                && host[host.len() - domain.len()..].eq_ignore_ascii_case(domain))
    })
}

/// The longest channel name to forward to an upstream at `host`:
/// [`PUSHER_MAX_CHANNEL_LEN`] for Pusher, [`MAX_CHANNEL_LEN`] for anything
/// else (sockudo, soketi: spec E.5 item 8), including an unknown host.
pub fn max_len_for(host: Option<&str>) -> usize {
    if host.is_some_and(is_pusher_host) {
        PUSHER_MAX_CHANNEL_LEN
    } else {
        MAX_CHANNEL_LEN
    }
}

/// Whether `name` (decoded) is a valid channel name: 1 to
/// [`MAX_CHANNEL_LEN`] characters of `A-Z a-z 0-9 _ - = @ , . ;`, and
/// neither `.` nor `..` (which an upstream could read as path traversal).
/// Every character of a valid name is legal in a path as it is.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CHANNEL_LEN
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_=@,.;".contains(&b))
}

/// Pusher's own hosts in the forms a configuration may spell them (either
/// domain, bare or under it, in any case, with a trailing dot), for the
/// tests of everything that treats Pusher apart.
#[cfg(test)]
pub(crate) const PUSHER_HOSTS: [&str; 9] = [
    "pusher.com",
    "pusherapp.com",
    "api-mt1.pusher.com",
    "api-eu.pusher.com",
    "API-EU.Pusher.com",
    "API-MT1.PUSHER.COM",
    "api.pusherapp.com",
    "api.pusher.com.",
    "API-EU.PUSHER.COM.",
];

/// Hosts that are not Pusher's, some of them close to its names.
#[cfg(test)]
pub(crate) const OTHER_HOSTS: [&str; 6] = [
    "notpusher.com",
    "pusher.com.evil",
    "pusher.com.example.org",
    "127.0.0.1",
    "sockudo.internal",
    "pusher",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in [
            "a",
            "private-foo-bar_1234@=,.;",
            &"a".repeat(MAX_CHANNEL_LEN),
        ] {
            assert!(is_valid_name(good), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "café", "#server-to-user-1"] {
            assert!(!is_valid_name(bad), "{bad}");
        }
        assert!(!is_valid_name(&"a".repeat(MAX_CHANNEL_LEN + 1)));
    }

    #[test]
    fn pusher_hosts_and_limits() {
        for h in PUSHER_HOSTS {
            assert!(is_pusher_host(h), "{h}");
            assert_eq!(max_len_for(Some(h)), PUSHER_MAX_CHANNEL_LEN, "{h}");
        }
        for h in OTHER_HOSTS {
            assert!(!is_pusher_host(h), "{h}");
            assert_eq!(max_len_for(Some(h)), MAX_CHANNEL_LEN, "{h}");
        }
        assert_eq!(max_len_for(None), MAX_CHANNEL_LEN);
    }
}
