//! Families established from published source, value classes, and
//! properties of the canonical string.

use super::tests::*;
use super::*;

#[test]
fn families_from_published_source_are_classified() {
    let json = ("Content-Type", "application/json");
    // WWW::Pusher's trigger through LWP, with `socket_id` as given.
    let lwp = |socket_id: &str| {
        head(
            "POST",
            &format!(
                "/apps/1/channels/c/events?auth_key=k&auth_timestamp=1&auth_version=1.0&\
                 body_md5=00&name=e&socket_id={socket_id}&auth_signature=ff"
            ),
            &[
                ("TE", "deflate,gzip;q=0.3"),
                ("Connection", "TE, close"),
                ("Host", "127.0.0.1:8080"),
                ("User-Agent", "libwww-perl/6.05"),
                ("Content-Length", "12"),
                json,
            ],
        )
    };
    let cases: Vec<(Library, Parts, &[u8])> = vec![
        // pusher-php-server 2.1.2 trigger: every key ksorted, signature
        // included; libcurl's Host, Accept, the custom header, length.
        (
            Library::PhpPusher20To21,
            head(
                "POST",
                "/apps/1/channels/c/events?auth_key=k&auth_signature=ff&auth_timestamp=1&\
                 auth_version=1.0&body_md5=00&name=e&socket_id=1.2",
                &[
                    ("Host", "127.0.0.1:8080"),
                    ("Accept", "*/*"),
                    json,
                    ("Content-Length", "12"),
                ],
            ),
            br#"{"msg":"hi"}"#,
        ),
        // … and get_channel_info with options (2.1.1+).
        (
            Library::PhpPusher20To21,
            head(
                "GET",
                "/apps/1/channels/c/stats?auth_key=k&auth_signature=ff&auth_timestamp=1&\
                 auth_version=1.0&info=connection_count",
                &[("Host", "127.0.0.1:8080"), ("Accept", "*/*"), json],
            ),
            b"",
        ),
        // Pusher.php 2010-06 … 2011-10: the docs' order, signature last.
        (
            Library::PhpPusherPre2012,
            head(
                "POST",
                PUSHER_ORDER,
                &[
                    ("Host", "127.0.0.1:8080"),
                    ("Accept", "*/*"),
                    json,
                    ("Content-Length", "12"),
                ],
            ),
            br#"{"msg":"hi"}"#,
        ),
        // … called with $socket_id = '' (`!== null`: sent, empty).
        (
            Library::PhpPusherPre2012,
            head(
                "POST",
                "/apps/1/channels/c/events?auth_key=k&auth_timestamp=1&auth_version=1.0&\
                 body_md5=00&name=e&socket_id=&auth_signature=ff",
                &[
                    ("Host", "127.0.0.1:8080"),
                    ("Accept", "*/*"),
                    json,
                    ("Content-Length", "12"),
                ],
            ),
            br#"{"msg":"hi"}"#,
        ),
        // RubyGems pusher 0.10.0 trigger over Net::HTTP (Ruby 2.x).
        (
            Library::RubygemsPusher04To010,
            head(
                "POST",
                "/apps/1/channels/c/events?name=e&socket_id=1.2&body_md5=00&\
                 auth_version=1.0&auth_key=k&auth_timestamp=1&auth_signature=ff",
                &[
                    json,
                    ("Accept-Encoding", "gzip;q=1.0,deflate;q=0.6,identity;q=0.3"),
                    ("Accept", "*/*"),
                    ("User-Agent", "Ruby"),
                    ("Host", "127.0.0.1:8080"),
                    ("Content-Length", "12"),
                ],
            ),
            br#"{"msg":"hi"}"#,
        ),
        // RubyGems pusher 0.9.4 Channel#stats.
        (
            Library::RubygemsPusher04To010,
            head(
                "GET",
                "/apps/1/channels/c/stats?auth_version=1.0&auth_key=k&auth_timestamp=1&\
                 auth_signature=ff",
                &[
                    json,
                    ("Accept", "*/*"),
                    ("User-Agent", "Ruby"),
                    ("Host", "127.0.0.1:8080"),
                ],
            ),
            b"",
        ),
        // CPAN WWW::Pusher: URI's query_form sends socket_id= when unset.
        (Library::CpanWwwPusher, lwp(""), br#"{"msg":"hi"}"#),
        // WWW::Pusher given a socket id: LWP's default User-Agent.
        (Library::CpanWwwPusher, lwp("1.2"), br#"{"msg":"hi"}"#),
        // PyPI's GoogleAppEngineChannel: the same query (compose_querystring),
        // JSON, and urlfetch's own User-Agent. Not WWW::Pusher, with its
        // socket id or its `{}` data.
        (
            Library::Unknown,
            head(
                "POST",
                "/apps/1/channels/c/events?auth_key=k&auth_timestamp=1&auth_version=1.0&\
                 body_md5=00&name=e&socket_id=1.2&auth_signature=ff",
                &[
                    ("Host", "127.0.0.1:8080"),
                    ("Content-Type", "application/json"),
                    (
                        "User-Agent",
                        "AppEngine-Google; (+http://code.google.com/appengine)",
                    ),
                    ("Content-Length", "2"),
                ],
            ),
            b"{}",
        ),
    ];
    for (expected, parts, body) in cases {
        let query = QueryParams::parse(parts.uri.query().unwrap_or("")).unwrap();
        let traits = Traits::new(&parts.headers, &parts.uri, &query, body);
        assert_eq!(traits.library(), expected, "{}", traits.canonical());
    }
}

#[test]
fn family_ids_are_bounded_stable_label_values() {
    let mut ids: Vec<&str> = Library::ALL.iter().map(|l| l.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), Library::ALL.len());
    for library in Library::ALL {
        let id = library.as_str();
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'),
            "{id}"
        );
        assert_eq!(Library::from_id(id), Some(library));
        assert!(!library.name().is_empty());
        assert!(!library.recipe().replacement.is_empty());
        assert_eq!(library.is_known(), library != Library::Unknown);
    }
    assert_eq!(Library::ALL.last(), Some(&Library::Unknown));
    assert_eq!(Library::from_id("pypi-pusher"), None);
    assert_eq!(
        serde_json::to_string(&recorded("npm node-pusher 0.0.2").fingerprint()).unwrap(),
        format!(
            r#"{{"library":"npm-node-pusher-0.0","id":"{}"}}"#,
            recorded("npm node-pusher 0.0.2").fingerprint().id
        )
    );
}

#[test]
fn ids_parse_back() {
    let id = FingerprintId::of("anything");
    assert_eq!(id.as_str().len(), ID_LEN);
    assert_eq!(FingerprintId::parse(id.as_str()), Some(id));
    assert_eq!(FingerprintId::parse("0123456789AB"), None);
    assert_eq!(FingerprintId::parse("0123456789a"), None);
    assert_eq!(FingerprintId::parse("0123456789abc"), None);
    assert_eq!(FingerprintId::parse("0123456789ag"), None);
    assert_eq!(format!("{id:?}"), format!("FingerprintId({id})"));
}

#[test]
fn value_classes() {
    assert_eq!(Body::of(b""), Body::Empty);
    assert_eq!(Body::of(b"hello, world"), Body::Text);
    assert_eq!(Body::of(b"  "), Body::Text);
    assert_eq!(Body::of(br#""hi, there: you""#), Body::NoSeparator);
    assert_eq!(Body::of(b"{}"), Body::NoSeparator);
    assert_eq!(Body::of(br#"{"a":1,"b":[1,2]}"#), Body::Compact);
    assert_eq!(Body::of(br#"{"a": 1, "b": [1, 2]}"#), Body::Spaced);
    assert_eq!(Body::of(br#"{"a": 1,"b":2}"#), Body::Mixed);
    assert_eq!(Body::of(b"{\n  \"a\": 1,\n  \"b\": 2\n}"), Body::Pretty);
    assert_eq!(Body::of(br#"{"a\"b:c":"x,y"}"#), Body::Compact);

    assert_eq!(HostClass::of(None), HostClass::Absent);
    for host in [
        "api.pusherapp.com",
        "API.PUSHERAPP.COM:80",
        "api-eu.pusher.com",
        "pusher.com.",
    ] {
        assert_eq!(HostClass::of(Some(host)), HostClass::Pusher, "{host}");
    }
    for host in [
        "127.0.0.1:8080",
        "notpusher.com",
        "pusher.com.evil.example",
        "[::1]:80",
        "",
    ] {
        assert_eq!(HostClass::of(Some(host)), HostClass::Other, "{host}");
    }

    assert_eq!(
        Encoding::of_path("/apps/1/channels/test-channel/events"),
        Encoding::Plain
    );
    assert_eq!(
        Encoding::of_path("/apps/1/channels/a%40b/events"),
        Encoding::Escaped
    );
    assert_eq!(
        Encoding::of_path("/apps/1/channels/a@b/events"),
        Encoding::Raw
    );
    assert_eq!(
        Encoding::of_path("/apps/1/channels/a@b%2C/events"),
        Encoding::Mixed
    );
    assert_eq!(
        Encoding::of_query_values("a=1&name=my-event&s=1.2"),
        Encoding::Plain
    );
    assert_eq!(
        Encoding::of_query_values("name=my%20event"),
        Encoding::Escaped
    );
    assert_eq!(
        Encoding::of_query_values("name=my+event&x=a=b"),
        Encoding::Raw
    );

    assert_eq!(ContentType::of(Some("application/JSON")), ContentType::Json);
    assert_eq!(
        ContentType::of(Some("application/json; charset=utf-8")),
        ContentType::JsonParams
    );
    assert_eq!(
        ContentType::of(Some("application/x-www-form-urlencoded")),
        ContentType::Form
    );
    assert_eq!(ContentType::of(Some("text/plain")), ContentType::Other);
    assert_eq!(Connection::of(Some("Close")), Connection::Close);
    assert_eq!(Connection::of(Some("TE, close")), Connection::Other);
    assert_eq!(
        AcceptEncoding::of(Some("identity")),
        AcceptEncoding::Identity
    );
    assert_eq!(Accept::of(Some("*/*")), Accept::Any);

    assert_eq!(Order::of("name=e&auth_key=k"), Order::Other);
    let many: String = (0..20).map(|i| format!("k{i}=v&")).collect();
    assert_eq!(Order::of(&many), Order::Other);
}

#[test]
fn the_canonical_string_cannot_be_forged_by_keys() {
    let parts = head(
        "POST",
        "/apps/1/channels/c/events?a%2Cb=1&c;d=2&%C3%A9=3",
        &[("Host", "h")],
    );
    let query = QueryParams::parse(parts.uri.query().unwrap_or("")).unwrap();
    let canonical = Traits::new(&parts.headers, &parts.uri, &query, b"").canonical();
    assert!(
        canonical.ends_with(";q=a%252Cb,c%3Bd,%25C3%25A9"),
        "{canonical}"
    );
    let long = format!("/x?{}=1", "k".repeat(100));
    let parts = head("GET", &long, &[("Host", "h")]);
    let query = QueryParams::parse(parts.uri.query().unwrap_or("")).unwrap();
    let canonical = Traits::new(&parts.headers, &parts.uri, &query, b"").canonical();
    assert!(
        canonical.ends_with(&format!(";q={}", "k".repeat(MAX_KEY_LEN))),
        "{canonical}"
    );
}

/// `socket_id`, sent or not by call, takes no place under the cap on
/// query keys: a sender with more keys than the canonical string holds
/// keeps one id with and without it, wherever it sends it.
#[test]
fn socket_id_takes_no_place_under_the_key_cap() {
    let id = |path: &str| {
        let parts = head("POST", path, &[("Host", "h")]);
        let query = QueryParams::parse(parts.uri.query().unwrap_or("")).unwrap();
        let traits = Traits::new(&parts.headers, &parts.uri, &query, b"");
        (traits.id(), traits.canonical())
    };
    for n in [MAX_QUERY_KEYS - 1, MAX_QUERY_KEYS, MAX_QUERY_KEYS + 1] {
        let keys: Vec<String> = (0..n).map(|i| format!("k{i:02}=1")).collect();
        let without = id(&format!("/apps/1/channels/c/events?{}", keys.join("&")));
        assert_eq!(
            without.1.ends_with(",+"),
            n > MAX_QUERY_KEYS,
            "{n} keys: {}",
            without.1
        );
        for at in [0, n / 2, n] {
            let mut with = keys.clone();
            with.insert(at, "socket_id=1.2".into());
            let path = format!("/apps/1/channels/c/events?{}", with.join("&"));
            assert_eq!(id(&path), without, "{n} keys, socket_id at {at}");
        }
    }
}

/// The whole claim: hyper's parser hands over a map whose iteration
/// follows the wire, and classification of what it parsed matches.
#[tokio::test]
async fn what_hyper_parses_classifies_like_the_recording() {
    use http_body_util::BodyExt;
    use tokio::io::AsyncWriteExt;

    for r in fixture() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let service =
            hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let tx = tx.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let body = body.collect().await?.to_bytes();
                    let _ = tx.send((parts, body));
                    Ok::<_, hyper::Error>(hyper::Response::new(
                        http_body_util::Empty::<bytes::Bytes>::new(),
                    ))
                }
            });
        let conn = tokio::spawn(
            hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(hyper_util::rt::TokioIo::new(server), service),
        );
        client.write_all(&r.wire()).await.unwrap();
        let (parts, body) = rx.recv().await.unwrap();
        drop(client);
        let _ = conn.await;

        let names: Vec<&str> = parts.headers.keys().map(HeaderName::as_str).collect();
        let wire: Vec<String> = r
            .headers
            .iter()
            .map(|(n, _)| n.to_ascii_lowercase())
            .collect();
        assert_eq!(names, wire, "{}", r.title);
        assert_eq!(body, r.body.as_bytes());
        let query = QueryParams::parse(parts.uri.query().unwrap_or("")).unwrap();
        assert_eq!(
            classify(&parts, &query, &body),
            r.fingerprint(),
            "{}",
            r.title
        );
    }
}

proptest::proptest! {
    #[test]
    fn classify_never_panics(
        headers in proptest::collection::vec(
            ("[A-Za-z0-9-]{1,20}", proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40)),
            0..40,
        ),
        path in "/[ -~]{0,60}",
        query in "[ -~]{0,200}",
        body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
    ) {
        let Ok(uri) = format!("{path}?{query}").parse::<Uri>() else {
            return Ok(());
        };
        let mut map = HeaderMap::new();
        for (name, value) in &headers {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                http::HeaderValue::from_bytes(value),
            ) {
                map.append(name, value);
            }
        }
        let query = QueryParams::parse(uri.query().unwrap_or("")).unwrap_or_default();
        let traits = Traits::new(&map, &uri, &query, &body);
        let fingerprint = traits.fingerprint();
        proptest::prop_assert_eq!(fingerprint.id, FingerprintId::of(&traits.canonical()));
        proptest::prop_assert!(traits.canonical().is_ascii());
    }
}

proptest::proptest! {
    /// The one-pass reader agrees with reading the query the plain way:
    /// split on `&`, empty pairs skipped, each key up to its first `=`,
    /// `socket_id` kept once and not counted under the cap.
    #[test]
    fn raw_query_reads_keys_and_value_encoding_as_splitting_does(
        raw in "(&socket_id=1|socket_id|[a-c=&%+,@é]|%[0-9A-F]{2}){0,80}",
    ) {
        let all: Vec<&str> = raw
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('=').map_or(p, |(k, _)| k))
            .collect();
        // The first socket_id where it was sent, and the first
        // MAX_QUERY_KEYS of the others.
        let first_sid = all.iter().position(|k| *k == "socket_id");
        let mut others = 0;
        let keys: Vec<&str> = all
            .iter()
            .enumerate()
            .filter(|&(i, k)| {
                if *k == "socket_id" {
                    Some(i) == first_sid
                } else {
                    others += 1;
                    others <= MAX_QUERY_KEYS
                }
            })
            .map(|(_, k)| *k)
            .collect();
        let (escaped, reserved) = raw
            .split('&')
            .filter_map(|p| p.split_once('=').map(|(_, v)| v))
            .map(|v| Encoding::of_bytes(v.as_bytes(), b'='))
            .fold((false, false), |a, b| (a.0 || b.0, a.1 || b.1));
        let read = RawQuery::of(&raw);
        proptest::prop_assert_eq!(read.keys(), &keys[..]);
        proptest::prop_assert_eq!(read.more(), others > MAX_QUERY_KEYS);
        proptest::prop_assert_eq!(read.values(), Encoding::from_flags((escaped, reserved)));
    }
}
