//! Channel names (spec C.1).

/// Longest channel name accepted: what sockudo, soketi and the official
/// libraries allow. Pusher itself allows 164 and answers 400 beyond; that
/// answer is passed through (spec C.1, E.5 item 8).
pub const MAX_CHANNEL_LEN: usize = 200;

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
}
