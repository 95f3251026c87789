//! Call-site templates: a channel or event name with its identifiers
//! replaced by `{id}`, so that `orders-123` and `orders-456` are one call
//! site (`orders-{id}`) that a developer can grep the code base for.
//!
//! [`template`] replaces, left to right:
//!
//! 1. every **e-mail address's local part**: a maximal run of
//!    `[A-Za-z0-9._%+]` right before an `@` that a domain follows (labels
//!    of `[A-Za-z0-9-]` joined by dots, at least two), by `{id}`:
//!    `private-alice.smith@example.com` becomes `private-{id}@example.com`
//!    (the domain is kept, and goes by the rules below);
//! 2. every **UUID**: five runs of ASCII hex digits of lengths 8, 4, 4, 4
//!    and 12 joined by `-`, the first and last not touching another hex
//!    digit (`123e4567-e89b-12d3-a456-426614174000`, either case), by one
//!    `{id}`;
//! 3. every **mixed run** of 8 or more: a maximal run of `[A-Za-z0-9]` at
//!    least 8 long with two digits or more that changes between digits,
//!    upper-case and lower-case letters at least 4 times (ULIDs
//!    `01ARZ3NDEKTSV4RRFFQ69G5FAV`, base62 ids such as Stripe's
//!    `1Mq2RtLkPqAbCdEf` and nanoid pieces `V1StGXR8`, `k3j9x2ab`), by
//!    one `{id}`. A word with a number (`orders2024`, one change;
//!    `reports2024q3`, three; `myEventName2`, one digit) is not one: its
//!    digits go by rule 5;
//! 4. every **hex run** of 8 or more: a maximal run of `[0-9a-fA-F]` at
//!    least 8 long that contains at least one decimal digit
//!    (`5f3a9c2e1b`, `00ff00ff`), by one `{id}`. A run without a digit is
//!    a word (`deadbeef`, `facade`), not an identifier, and is kept;
//! 5. every other **digit run**: a maximal run of `[0-9]` (`123`, the `2`
//!    of `v2`), by `{id}`.
//!
//! "Digit" is the ASCII digit `0`–`9`; other characters are copied as they
//! are. Consequences, all by design:
//!
//! - the output contains no ASCII digit at all, so templating it again
//!   changes nothing (`template(template(s)) == template(s)`);
//! - a shorter mixed run keeps its letters: `ab12cd` becomes `ab{id}cd`,
//!   and a socket id `1234.5678` becomes `{id}.{id}`;
//! - an identifier of letters only (`user-bob`) is kept: a template is a
//!   place in the code, not a bound on cardinality;
//! - a name without digits, UUIDs or `@` comes back borrowed, unallocated.

use std::borrow::Cow;

/// What replaces an identifier.
pub const PLACEHOLDER: &str = "{id}";

/// Shortest hex run taken as one identifier.
pub const MIN_HEX_RUN: usize = 8;

/// Shortest mixed letter-and-digit run taken as one identifier.
pub const MIN_MIXED_RUN: usize = 8;

/// Changes between digits, upper-case and lower-case letters that make a
/// run mixed.
const MIN_MIXED_CHANGES: usize = 4;

/// Lengths of a UUID's five hex groups.
const UUID_GROUPS: [usize; 5] = [8, 4, 4, 4, 12];

/// `s` with every e-mail local part, UUID, mixed run of [`MIN_MIXED_RUN`]
/// or more, hex run of [`MIN_HEX_RUN`] or more with a digit, and other run
/// of digits replaced by [`PLACEHOLDER`] (see the module documentation for
/// the exact rules).
///
/// ```
/// use pusher_cutover::telemetry::call_site::template;
/// assert_eq!(template("orders-123"), "orders-{id}");
/// assert_eq!(template("presence-room-9f8e7d6c5b"), "presence-room-{id}");
/// assert_eq!(template("private-123e4567-e89b-12d3-a456-426614174000"), "private-{id}");
/// assert_eq!(template("chat"), "chat");
/// ```
pub fn template(s: &str) -> Cow<'_, str> {
    let bytes = s.as_bytes();
    // Text with no decimal digit, no dash (no UUID) and no `@` (no
    // address) has nothing to replace.
    if !bytes.iter().any(u8::is_ascii_digit) && !bytes.contains(&b'-') && !bytes.contains(&b'@') {
        return Cow::Borrowed(s);
    }
    let mut out: Option<String> = None;
    // `copied` is where the text not yet copied to `out` starts.
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        // Where a run of `class` starts: after a byte not of it, or right
        // after a replacement (whose last byte may be of it).
        let after = |class: fn(&u8) -> bool| i == copied || !class(&bytes[i - 1]);
        if is_local(&bytes[i]) && after(is_local) {
            let end = run_end(bytes, i, is_local);
            if bytes.get(end) == Some(&b'@') && domain_at(bytes, end + 1) {
                replace(&mut out, s, &mut copied, i, end);
                i = end;
                continue;
            }
        }
        if !bytes[i].is_ascii_alphanumeric() {
            i += 1;
            continue;
        }
        // Here a hex digit starts a maximal hex run: the byte before, if
        // any, is not one (runs are consumed whole below). A UUID goes
        // first, before the mixed run its first group may sit in.
        let hex = bytes[i].is_ascii_hexdigit();
        if hex && let Some(end) = uuid_at(bytes, i) {
            replace(&mut out, s, &mut copied, i, end);
            i = end;
            continue;
        }
        if after(u8::is_ascii_alphanumeric) {
            let end = run_end(bytes, i, u8::is_ascii_alphanumeric);
            if end - i >= MIN_MIXED_RUN && mixed(&bytes[i..end]) {
                replace(&mut out, s, &mut copied, i, end);
                i = end;
                continue;
            }
        }
        if !hex {
            i += 1;
            continue;
        }
        let end = run_end(bytes, i, u8::is_ascii_hexdigit);
        if end - i >= MIN_HEX_RUN && bytes[i..end].iter().any(u8::is_ascii_digit) {
            replace(&mut out, s, &mut copied, i, end);
            i = end;
            continue;
        }
        // A short or digitless hex run: only its digit runs go.
        let mut j = i;
        while j < end {
            if bytes[j].is_ascii_digit() {
                let digits_end = run_end(bytes, j, u8::is_ascii_digit);
                replace(&mut out, s, &mut copied, j, digits_end);
                j = digits_end;
            } else {
                j += 1;
            }
        }
        i = end;
    }
    match out {
        None => Cow::Borrowed(s),
        Some(mut out) => {
            out.push_str(&s[copied..]);
            Cow::Owned(out)
        }
    }
}

/// Copies `s[copied..start]` to `out` (created on the first replacement),
/// then the placeholder for `s[start..end]`.
fn replace(out: &mut Option<String>, s: &str, copied: &mut usize, start: usize, end: usize) {
    // Replaced bytes are ASCII, so `start` and `end` are char boundaries.
    let out = out.get_or_insert_with(|| String::with_capacity(s.len()));
    out.push_str(&s[*copied..start]);
    out.push_str(PLACEHOLDER);
    *copied = end;
}

/// Whether `b` may be in an e-mail address's local part (as far as a
/// template needs: the common characters, not RFC 5322's all).
fn is_local(b: &u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+')
}

/// Whether a domain starts at `start`: labels of `[A-Za-z0-9-]` joined by
/// dots, at least two.
fn domain_at(bytes: &[u8], start: usize) -> bool {
    let label = |b: &u8| b.is_ascii_alphanumeric() || *b == b'-';
    let mut at = start;
    let mut labels = 0;
    loop {
        let end = run_end(bytes, at, label);
        if end == at {
            return false;
        }
        labels += 1;
        if bytes.get(end) == Some(&b'.') && bytes.get(end + 1).is_some_and(label) {
            at = end + 1;
        } else {
            return labels >= 2;
        }
    }
}

/// Whether `run` (ASCII alphanumerics) holds two digits or more and
/// changes between digits, upper-case and lower-case letters at least
/// [`MIN_MIXED_CHANGES`] times.
fn mixed(run: &[u8]) -> bool {
    let class = |b: u8| (b.is_ascii_digit(), b.is_ascii_uppercase());
    run.iter().filter(|b| b.is_ascii_digit()).count() >= 2
        && run
            .windows(2)
            .filter(|w| class(w[0]) != class(w[1]))
            .count()
            >= MIN_MIXED_CHANGES
}

/// The end of the run of bytes matching `class` that starts at `start`.
fn run_end(bytes: &[u8], start: usize, class: fn(&u8) -> bool) -> usize {
    bytes[start..]
        .iter()
        .position(|b| !class(b))
        .map_or(bytes.len(), |n| start + n)
}

/// The end of the UUID starting at `start`, if one does: groups of exactly
/// [`UUID_GROUPS`] hex digits joined by `-`, the last not followed by a
/// hex digit. (The caller guarantees no hex digit precedes `start`.)
fn uuid_at(bytes: &[u8], start: usize) -> Option<usize> {
    let mut at = start;
    for (n, &len) in UUID_GROUPS.iter().enumerate() {
        if n > 0 {
            if bytes.get(at) != Some(&b'-') {
                return None;
            }
            at += 1;
        }
        if run_end(bytes, at, u8::is_ascii_hexdigit) - at != len {
            return None;
        }
        at += len;
    }
    Some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples() {
        let cases = [
            ("orders-123", "orders-{id}"),
            ("orders-456", "orders-{id}"),
            ("test-channel", "test-channel"),
            ("my-event", "my-event"),
            ("private-user-42", "private-user-{id}"),
            ("presence-room-9f8e7d6c5b", "presence-room-{id}"),
            ("user_5F3A9C2E", "user_{id}"),
            ("order.42.updated", "order.{id}.updated"),
            ("1234.5678", "{id}.{id}"),
            ("v2-chat", "v{id}-chat"),
            // A digitless hex run is a word, not an identifier.
            ("deadbeef-cafebabe", "deadbeef-cafebabe"),
            // Short mixed runs keep their letters.
            ("ab12cd", "ab{id}cd"),
            ("x-1a2b3c", "x-{id}a{id}b{id}c"),
            // Eight hex digits with a digit: one identifier.
            ("x-1a2b3c4d", "x-{id}"),
            // A run touching other letters still starts at a hex digit.
            ("room-xyz12345678", "room-xyz{id}"),
            // Unless letters and digits alternate through the whole run.
            ("room-z00ff00ff", "room-{id}"),
            // Mixed runs: ULIDs, base62 and nanoid-style ids.
            ("presence-01ARZ3NDEKTSV4RRFFQ69G5FAV", "presence-{id}"),
            ("private-user-k3j9x2ab", "private-user-{id}"),
            ("private-user-k3j9x2ab-orders", "private-user-{id}-orders"),
            // A word with a number is not mixed: one change.
            ("orders2024", "orders{id}"),
            ("reports2024q3", "reports{id}q{id}"),
            ("myEventName2", "myEventName{id}"),
            // nanoid's own example; a Stripe-style id.
            ("V1StGXR8_Z5jdHi6B-myT", "{id}_{id}-myT"),
            ("cus_1Mq2RtLkPqAbCdEf", "cus_{id}"),
            // An address right after a UUID: its local part still goes,
            // so templating again changes nothing.
            (
                "private-123e4567-e89b-12d3-a456-426614174000_bob@example.com",
                "private-{id}{id}@example.com",
            ),
            // E-mail addresses: the local part goes, the domain stays.
            (
                "private-alice.smith@example.com",
                "private-{id}@example.com",
            ),
            ("alice+news@mail.example.co.uk", "{id}@mail.example.co.uk"),
            ("a@x1.com", "{id}@x{id}.com"),
            // `@` without a domain after it is no address.
            ("user@home", "user@home"),
            ("private-user@123", "private-user@{id}"),
            ("@example.com", "@example.com"),
            ("a-123e4567-e89b-12d3-a456-426614174000", "a-{id}"),
            ("123E4567-E89B-12D3-A456-426614174000", "{id}"),
            (
                "123e4567-e89b-12d3-a456-426614174000-123e4567-e89b-12d3-a456-426614174000",
                "{id}-{id}",
            ),
            // Not a UUID: a group of the wrong length; its hex runs go by
            // the other rules.
            (
                "123e4567-e89b-12d3-a456-42661417400",
                "{id}-e{id}b-{id}d{id}-a{id}-{id}",
            ),
            (
                "123e45678-e89b-12d3-a456-426614174000",
                "{id}-e{id}b-{id}d{id}-a{id}-{id}",
            ),
            // A digitless UUID is still a UUID.
            ("abcdefab-abcd-abcd-abcd-abcdefabcdef", "{id}"),
            ("", ""),
            ("ünïcode-7-チャンネル", "ünïcode-{id}-チャンネル"),
            ("{id}", "{id}"),
        ];
        for (input, expected) in cases {
            assert_eq!(template(input), expected, "{input}");
            assert_eq!(template(expected), expected, "{input}: templated again");
        }
    }

    #[test]
    fn names_without_identifiers_are_borrowed() {
        assert!(matches!(template("test-channel"), Cow::Borrowed(_)));
        assert!(matches!(template("presence-lobby"), Cow::Borrowed(_)));
        assert!(matches!(template("deadbeef-cafe"), Cow::Borrowed(_)));
        assert!(matches!(template("user@home"), Cow::Borrowed(_)));
        assert!(matches!(template("orders-1"), Cow::Owned(_)));
    }

    proptest::proptest! {
        #[test]
        fn idempotent_and_digit_free(s in proptest::prelude::any::<String>()) {
            let once = template(&s);
            proptest::prop_assert!(!once.bytes().any(|b| b.is_ascii_digit()), "{once:?}");
            let twice = template(&once);
            proptest::prop_assert_eq!(&twice, &once);
        }

        #[test]
        fn idempotent_on_identifier_like_names(
            s in "[a-f0-9{}_.-]{0,40}|[a-z]{1,8}-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[a-zA-Z0-9@.+_{}-]{0,40}|[a-z]{0,4}-?[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}[a-zA-Z0-9@.+_-]{0,20}(@[a-z0-9]{1,5}\\.[a-z]{2,3})?"
        ) {
            let once = template(&s);
            proptest::prop_assert!(!once.bytes().any(|b| b.is_ascii_digit()), "{once:?}");
            proptest::prop_assert_eq!(template(&once), once.clone());
        }

        #[test]
        fn the_same_site_with_other_ids_is_one_template(
            a in proptest::prelude::any::<u64>(),
            b in proptest::prelude::any::<u64>(),
        ) {
            let (a, b) = (format!("orders-{a}-items"), format!("orders-{b}-items"));
            proptest::prop_assert_eq!(template(&a), template(&b));
        }
    }
}
