//! Fingerprints of the twelve recorded releases, replayed from the
//! fixture, and of synthetic senders.

use super::*;

/// One request of tests/fixtures/legacy-requests.txt.
#[derive(Debug, Clone)]
pub(super) struct Recorded {
    pub(super) title: String,
    pub(super) method: String,
    pub(super) target: String,
    /// In wire order, with their case.
    pub(super) headers: Vec<(String, String)>,
    pub(super) body: String,
}

impl Recorded {
    pub(super) fn parts(&self) -> Parts {
        request(&self.method, &self.target, &self.headers)
    }

    pub(super) fn fingerprint(&self) -> Fingerprint {
        fingerprint_of(&self.parts(), self.body.as_bytes())
    }

    pub(super) fn traits_canonical(&self) -> String {
        let parts = self.parts();
        let query = QueryParams::parse(parts.uri.query().unwrap_or("")).unwrap();
        Traits::new(&parts.headers, &parts.uri, &query, self.body.as_bytes()).canonical()
    }

    /// The request as it was on the wire.
    pub(super) fn wire(&self) -> Vec<u8> {
        let mut raw = format!("{} {} HTTP/1.1\r\n", self.method, self.target);
        for (name, value) in &self.headers {
            raw.push_str(&format!("{name}: {value}\r\n"));
        }
        raw.push_str("\r\n");
        raw.push_str(&self.body);
        raw.into_bytes()
    }
}

/// Every quoted string of a `headers: [['Name', 'Value'], …]` line, paired.
pub(super) fn parse_headers(line: &str) -> Vec<(String, String)> {
    let quoted: Vec<&str> = line.split('\'').skip(1).step_by(2).collect();
    assert_eq!(quoted.len() % 2, 0, "unpaired header in {line}");
    quoted
        .chunks(2)
        .map(|pair| (pair[0].to_owned(), pair[1].to_owned()))
        .collect()
}

/// The fixture's blocks: `## title`, request line, `headers:`, `body:`.
pub(super) fn fixture() -> Vec<Recorded> {
    let text = include_str!("../../../tests/fixtures/legacy-requests.txt");
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(title) = line.strip_prefix("## ") else {
            continue;
        };
        let request_line = lines.next().expect("a request line");
        let mut words = request_line.split(' ');
        let (method, target) = (words.next().unwrap(), words.next().unwrap());
        assert_eq!(words.next(), Some("HTTP/1.1"), "{request_line}");
        let headers = lines
            .next()
            .and_then(|l| l.strip_prefix("headers: "))
            .unwrap();
        let body = lines.next().and_then(|l| l.strip_prefix("body: ")).unwrap();
        out.push(Recorded {
            title: title.to_owned(),
            method: method.to_owned(),
            target: target.to_owned(),
            headers: parse_headers(headers),
            body: body.to_owned(),
        });
    }
    out
}

pub(super) fn recorded(title: &str) -> Recorded {
    fixture().into_iter().find(|r| r.title == title).unwrap()
}

/// A request head with `headers` appended in order, as hyper fills it.
pub(super) fn request(
    method: &str,
    target: &str,
    headers: &[(impl AsRef<str>, impl AsRef<str>)],
) -> Parts {
    let mut builder = http::Request::builder().method(method).uri(target);
    for (name, value) in headers {
        builder = builder.header(name.as_ref(), value.as_ref());
    }
    builder.body(()).unwrap().into_parts().0
}

pub(super) fn fingerprint_of(parts: &Parts, body: &[u8]) -> Fingerprint {
    let query = QueryParams::parse(parts.uri.query().unwrap_or("")).unwrap();
    classify(parts, &query, body)
}

pub(super) fn family(title: &str) -> Library {
    match title {
        t if t.starts_with("PyPI pusher 0.")
            && matches!(&t["PyPI pusher 0.".len()..], "1" | "2" | "3" | "4" | "5") =>
        {
            Library::PypiPusher01To05
        }
        t if t.starts_with("PyPI pusher 0.") => Library::PypiPusher06To08,
        t if t.starts_with("npm pusher 0.0.") => Library::NpmPusherOrNodePusher00,
        t if t.starts_with("npm node-pusher 0.0.") => Library::NpmNodePusher00,
        t => panic!("no family for {t}"),
    }
}

#[test]
fn every_recorded_release_is_classified_into_its_family() {
    let recorded = fixture();
    assert_eq!(recorded.len(), 12, "twelve releases are recorded");
    for r in &recorded {
        let fp = r.fingerprint();
        assert_eq!(
            fp.library,
            family(&r.title),
            "{}: {}",
            r.title,
            r.traits_canonical()
        );
    }
}

#[test]
fn releases_of_one_shape_share_an_id_and_shapes_differ() {
    let id = |title: &str| recorded(title).fingerprint().id;
    let call = |title: &str| {
        let r = recorded(title);
        let parts = r.parts();
        let query = QueryParams::parse(parts.uri.query().unwrap_or("")).expect("query");
        Traits::new(&parts.headers, &parts.uri, &query, r.body.as_bytes()).call_traits()
    };
    // 0.1–0.3 cannot send socket_id; 0.4 and 0.5 sent one here. Whether
    // a call carries one is the call's trait, not the sender's: one id.
    assert_eq!(id("PyPI pusher 0.1"), id("PyPI pusher 0.3"));
    assert_eq!(id("PyPI pusher 0.3"), id("PyPI pusher 0.4"));
    assert_eq!(id("PyPI pusher 0.4"), id("PyPI pusher 0.5"));
    assert_ne!(call("PyPI pusher 0.3"), call("PyPI pusher 0.4"));
    assert_eq!(id("PyPI pusher 0.6"), id("PyPI pusher 0.8"));
    assert_ne!(id("PyPI pusher 0.5"), id("PyPI pusher 0.6"));
    assert_eq!(id("npm pusher 0.0.2"), id("npm pusher 0.0.4"));
    // Only the case of two header names tells npm pusher from
    // node-pusher, and hyper does not keep it: one id, and the families
    // differ by socket_id alone.
    assert_eq!(id("npm node-pusher 0.0.1"), id("npm node-pusher 0.0.2"));
    assert_eq!(id("npm pusher 0.0.2"), id("npm node-pusher 0.0.1"));
    assert_eq!(
        call("npm pusher 0.0.2"),
        "sid=-;path=plain;qv=plain;body=compact"
    );
    assert_eq!(
        call("npm node-pusher 0.0.1"),
        "sid=present;path=plain;qv=plain;body=compact"
    );
    assert_ne!(id("npm pusher 0.0.2"), id("PyPI pusher 0.6"));
}

/// One sender's calls differ in what their values call for: a channel or
/// event name that needs escaping, a `socket_id` or none, data of another
/// shape. The call's traits follow them; the id does not, so the sender
/// stays one caller in the ledger. (Under `fp1` these sixteen calls of
/// one PyPI 0.8 process had sixteen ids.)
#[test]
fn one_senders_calls_share_an_id_whatever_their_values() {
    let r = recorded("PyPI pusher 0.8");
    let mut ids = std::collections::BTreeSet::new();
    let mut calls = std::collections::BTreeSet::new();
    for channel in ["test-channel", "a@b"] {
        for event in ["my-event", "a:b"] {
            for socket_id in ["&socket_id=1234.5678", ""] {
                for body in [r#"{"msg": "hi"}"#, r#""hi""#] {
                    let call = Recorded {
                        target: r
                            .target
                            .replace("test-channel", channel)
                            .replace("name=my-event", &format!("name={event}"))
                            .replace("&socket_id=1234.5678", socket_id),
                        body: body.to_owned(),
                        ..r.clone()
                    };
                    let fp = call.fingerprint();
                    assert_eq!(fp.library, Library::PypiPusher06To08, "{}", call.target);
                    ids.insert(fp.id);
                    let parts = call.parts();
                    let query = QueryParams::parse(parts.uri.query().unwrap_or("")).expect("q");
                    calls.insert(
                        Traits::new(&parts.headers, &parts.uri, &query, body.as_bytes())
                            .call_traits(),
                    );
                }
            }
        }
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(calls.len(), 16, "the call's traits do differ: {calls:?}");
}

/// A change of the canonical format changes every id stored so far:
/// this test notices it (bump CANONICAL_VERSION with it).
#[test]
fn the_canonical_string_and_id_are_stable() {
    let pypi = recorded("PyPI pusher 0.1");
    let canonical = pypi.traits_canonical();
    assert_eq!(
        canonical,
        "fp2;h=host,accept-encoding,content-length;host=other;conn=-;ae=identity;ct=-;\
         accept=-;q=auth_key,auth_timestamp,auth_version,body_md5,name,auth_signature"
    );
    let id = pypi.fingerprint().id;
    assert_eq!(
        id,
        FingerprintId::of(&canonical),
        "the id hashes the canonical string"
    );
    // printf %s "$canonical" | sha256sum | cut -c1-12
    assert_eq!(id.as_str(), "580a59a63882");
    // Every recorded release (docs/fingerprints.md lists these ids).
    for (title, id) in [
        ("PyPI pusher 0.1", "580a59a63882"),
        ("PyPI pusher 0.2", "580a59a63882"),
        ("PyPI pusher 0.3", "580a59a63882"),
        ("PyPI pusher 0.4", "580a59a63882"),
        ("PyPI pusher 0.5", "580a59a63882"),
        ("PyPI pusher 0.6", "b637e1489316"),
        ("PyPI pusher 0.7", "b637e1489316"),
        ("PyPI pusher 0.8", "b637e1489316"),
        ("npm pusher 0.0.2", "585ac6cf7187"),
        ("npm pusher 0.0.4", "585ac6cf7187"),
        ("npm node-pusher 0.0.1", "585ac6cf7187"),
        ("npm node-pusher 0.0.2", "585ac6cf7187"),
    ] {
        assert_eq!(recorded(title).fingerprint().id.as_str(), id, "{title}");
    }
    let npm = recorded("npm pusher 0.0.2");
    assert_eq!(
        npm.traits_canonical(),
        "fp2;h=host,content-type,content-length,connection;host=pusher;conn=close;ae=-;\
         ct=json;accept=-;q=auth_key,auth_timestamp,auth_version,body_md5,name,\
         auth_signature"
    );
}

/// `r` with every value changed and every shape kept.
pub(super) fn with_other_values(r: &Recorded) -> Recorded {
    let (path, query) = r.target.split_once('?').unwrap();
    let query: Vec<String> = query
        .split('&')
        .map(|pair| {
            let (key, _) = pair.split_once('=').unwrap();
            let value = match key {
                "auth_key" => "k-3f9a-other",
                "auth_timestamp" => "1700000123",
                "body_md5" => "0123456789abcdef0123456789abcdef",
                "auth_signature" => {
                    "ffffeeee0000111122223333444455556666777788889999aaaabbbbccccdddd"
                }
                "name" => "order_created",
                "socket_id" => "98765.4321",
                "auth_version" => "1.0",
                other => panic!("unexpected key {other}"),
            };
            format!("{key}={value}")
        })
        .collect();
    let path = path
        .replace("/4242/", "/77/")
        .replace("test-channel", "private-orders-123");
    let body = r
        .body
        .replace("\"msg\"", "\"order_id\"")
        .replace("\"hi\"", "\"a longer text, with: punctuation\"");
    let headers = r
        .headers
        .iter()
        .map(|(name, value)| {
            let value = match value.as_str() {
                _ if name.eq_ignore_ascii_case("content-length") => body.len().to_string(),
                "127.0.0.1:8080" => "localhost:9000".to_owned(),
                "api.pusherapp.com" => "api-eu.pusher.com".to_owned(),
                v => v.to_owned(),
            };
            (name.clone(), value)
        })
        .collect();
    Recorded {
        title: r.title.clone(),
        method: r.method.clone(),
        target: format!("{path}?{}", query.join("&")),
        headers,
        body,
    }
}

#[test]
fn values_do_not_change_the_fingerprint() {
    for r in fixture() {
        let other = with_other_values(&r);
        assert_ne!(other.target, r.target);
        assert_eq!(other.fingerprint(), r.fingerprint(), "{}", r.title);
    }
    // Other data of the same shape.
    let r = recorded("PyPI pusher 0.6");
    for data in [
        r#"{"a": [1, 2], "b": {"c": null}}"#,
        r#""a string""#,
        "42",
        "{}",
    ] {
        let other = Recorded {
            body: data.to_owned(),
            ..r.clone()
        };
        assert_eq!(
            other.fingerprint().library,
            Library::PypiPusher06To08,
            "{data}"
        );
    }
}

/// A head with the given header names (values made up) and query.
pub(super) fn head(method: &str, target: &str, headers: &[(&str, &str)]) -> Parts {
    request(method, target, headers)
}

pub(super) const PUSHER_ORDER: &str = "/apps/1/channels/c/events?auth_key=k&auth_timestamp=1&\
                            auth_version=1.0&body_md5=00&name=e&auth_signature=ff";

#[test]
fn synthetic_senders_are_unknown_and_apart() {
    // A hand-rolled curl call: curl's own User-Agent.
    let curl = head(
        "POST",
        PUSHER_ORDER,
        &[
            ("Host", "127.0.0.1:8080"),
            ("User-Agent", "curl/8.5.0"),
            ("Accept", "*/*"),
            ("Content-Type", "application/json"),
            ("Content-Length", "12"),
        ],
    );
    // A vendored PHP copy that someone taught a header.
    let vendored = head(
        "POST",
        PUSHER_ORDER,
        &[
            ("Host", "127.0.0.1:8080"),
            ("Accept", "*/*"),
            ("Content-Type", "application/json"),
            ("X-Requested-With", "billing"),
            ("Content-Length", "12"),
        ],
    );
    let body = br#"{"msg":"hi"}"#;
    let (a, b) = (fingerprint_of(&curl, body), fingerprint_of(&vendored, body));
    assert_eq!(a.library, Library::Unknown);
    assert_eq!(b.library, Library::Unknown);
    assert_ne!(a.id, b.id);
    for r in fixture() {
        assert_ne!(r.fingerprint().id, a.id);
        assert_ne!(r.fingerprint().id, b.id);
    }
}

#[test]
fn header_order_and_query_order_are_traits() {
    let r = recorded("PyPI pusher 0.6");
    let mut swapped = r.clone();
    swapped.headers.swap(2, 3);
    assert_ne!(swapped.fingerprint().id, r.fingerprint().id);
    assert_eq!(swapped.fingerprint().library, Library::Unknown);

    let mut reordered = r.clone();
    let (path, query) = r.target.split_once('?').unwrap();
    let mut pairs: Vec<&str> = query.split('&').collect();
    pairs.sort_unstable();
    reordered.target = format!("{path}?{}", pairs.join("&"));
    assert_ne!(reordered.fingerprint().id, r.fingerprint().id);
    assert_eq!(reordered.fingerprint().library, Library::Unknown);

    // PyPI never sends an empty socket_id (`if socket_id:`).
    let mut empty_sid = r.clone();
    empty_sid.target = r.target.replace("socket_id=1234.5678", "socket_id=");
    assert_ne!(empty_sid.target, r.target);
    assert_eq!(empty_sid.fingerprint().library, Library::Unknown);

    // `expect` depends on the body's size (libcurl), not the sender.
    let mut expecting = r.clone();
    expecting
        .headers
        .push(("Expect".into(), "100-continue".into()));
    assert_eq!(expecting.fingerprint(), r.fingerprint());
}
