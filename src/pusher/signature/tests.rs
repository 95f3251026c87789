//! The signer's tests: the worked example, verification's refusals, properties.

use super::*;

fn secret(s: &str) -> SecretString {
    SecretString::from(s.to_owned())
}

fn key(s: &str) -> SigningKey {
    SigningKey::new(&secret(s))
}

/// [`Signer::query`] with its arguments spelled out.
fn signed_query(
    key: &str,
    secret: &SecretString,
    method: &str,
    path: &str,
    timestamp: u64,
    body: Option<&[u8]>,
    params: &[(&str, &str)],
) -> String {
    let req = Unsigned {
        method,
        path,
        timestamp,
        body,
        params,
    };
    Signer::new(key, &SigningKey::new(secret)).query(&req)
}

const SECRET: &str = "7ad3773142a6692b25b8";
const KEY: &str = "278d425bdf160c739803";

/// Both forms give the lower-case hex MD5 (values from `md5sum`).
#[test]
fn body_md5_into_writes_body_md5() {
    assert_eq!(body_md5_into(b"", &mut [0; 32]), EMPTY_BODY_MD5);
    for (body, md5) in [
        (&b"{}"[..], "99914b932bd37a50b983c5e7c90ae93b"),
        (b"hello world", "5eb63bbbe01eeed093cb22bb8f5acdc3"),
    ] {
        assert_eq!(body_md5_into(body, &mut [0; 32]), md5);
        assert_eq!(body_md5(body), md5);
    }
}

/// The official worked example (spec A.2, vector #1).
#[test]
fn worked_example() {
    let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
    let md5 = body_md5(body);
    assert_eq!(md5, "ec365a775a4cd0599faeb73354201b6f");
    let params = [
        ("auth_key", KEY),
        ("auth_timestamp", "1353088179"),
        ("auth_version", "1.0"),
        ("body_md5", md5.as_str()),
    ];
    assert_eq!(
        sign(&secret(SECRET), "POST", "/apps/3/events", params),
        "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
    );
}

fn signed_request(body: &[u8], now: u64) -> (QueryParams, String) {
    let q = signed_query(
        KEY,
        &secret(SECRET),
        "POST",
        "/apps/3/channels/c/events",
        now,
        Some(body),
        &[("name", "ev ent"), ("socket_id", "1.2")],
    );
    (QueryParams::parse(&q).expect("own output parses"), q)
}

fn expected(now: u64, secrets: &[SigningKey]) -> Expected<'_> {
    Expected {
        app_id: "3",
        key: KEY,
        keys: secrets,
        now,
        window_secs: 600,
    }
}

#[test]
fn verify_accepts_what_signed_query_produces() {
    let (q, wire) = signed_request(b"{\"a\":1}", 1000);
    assert!(wire.ends_with(&format!(
        "auth_signature={}",
        q.get("auth_signature").unwrap()
    )));
    assert!(wire.contains("name=ev%20ent"), "{wire}");
    let secrets = [key(SECRET)];
    verify(
        "POST",
        "/apps/3/channels/c/events",
        &q,
        b"{\"a\":1}",
        &expected(1000, &secrets),
    )
    .expect("round trip verifies");
}

#[test]
fn verify_refusals() {
    let body = b"data";
    let (q, _) = signed_request(body, 1000);
    let path = "/apps/3/channels/c/events";
    let good = [key(SECRET)];
    let other = [key("other")];
    let check = |path: &str, body: &[u8], e: &Expected<'_>| verify("POST", path, &q, body, e);

    assert_eq!(
        check(path, body, &expected(1000, &other)),
        Err(SignatureError::SignatureMismatch)
    );
    assert_eq!(
        check("/apps/3/channels/d/events", body, &expected(1000, &good)),
        Err(SignatureError::SignatureMismatch)
    );
    assert_eq!(
        check(path, b"datA", &expected(1000, &good)),
        Err(SignatureError::BodyMd5Mismatch)
    );
    assert!(matches!(
        check(path, body, &expected(1600, &good)),
        Err(SignatureError::TimestampExpired { .. })
    ));
    assert!(check(path, body, &expected(1599, &good)).is_ok());
    assert!(check(path, body, &expected(401, &good)).is_ok());
    assert!(matches!(
        check(path, body, &expected(400, &good)),
        Err(SignatureError::TimestampExpired { .. })
    ));
    let rotated = [key("old"), key(SECRET)];
    assert!(check(path, body, &expected(1000, &rotated)).is_ok());
    let wrong_key = Expected {
        key: "nope",
        ..expected(1000, &good)
    };
    assert_eq!(
        check(path, body, &wrong_key),
        Err(SignatureError::UnknownKey("3".into()))
    );
}

#[test]
fn a_signing_key_signs_as_its_secret_and_again_the_same() {
    // A key signs as its secret does, and signs the same again: each
    // signature starts from a copy of the key's state.
    let params = [
        ("auth_key", KEY),
        ("auth_timestamp", "1000"),
        ("auth_version", AUTH_VERSION),
    ];
    let fresh = sign(&secret(SECRET), "GET", "/x", params);
    let k = key(SECRET);
    let signer = Signer::new(KEY, &k);
    let req = Unsigned {
        method: "GET",
        path: "/x",
        timestamp: 1000,
        body: None,
        params: &[],
    };
    let first = signer.query(&req);
    assert!(
        first.ends_with(&format!("auth_signature={fresh}")),
        "{first}"
    );
    assert_eq!(signer.query(&req), first);
    assert!(key_matches(&k, "GET", "/x", params, &fresh));
    assert!(!key_matches(&key("other"), "GET", "/x", params, &fresh));
}

#[test]
fn a_signing_key_prints_nothing_of_its_secret() {
    let k = key(SECRET);
    assert_eq!(format!("{k:?}"), "SigningKey(..)");
    let signer = format!("{:?}", Signer::new(KEY, &k));
    assert!(!signer.contains(SECRET), "{signer}");
}

#[test]
fn upper_case_hex_is_refused() {
    let params = [("auth_key", KEY)];
    let sig = sign(&secret(SECRET), "GET", "/x", params);
    assert!(signature_matches(
        &secret(SECRET),
        "GET",
        "/x",
        params,
        &sig
    ));
    assert!(!signature_matches(
        &secret(SECRET),
        "GET",
        "/x",
        params,
        &sig.to_uppercase()
    ));
    assert!(!signature_matches(
        &secret(SECRET),
        "GET",
        "/x",
        params,
        &sig[..63]
    ));
}

#[test]
fn empty_body_rules() {
    let secrets = [key(SECRET)];
    let e = expected(1000, &secrets);
    let sign_get = |extra: &[(&str, &str)]| {
        let mut params = vec![
            ("auth_key", KEY),
            ("auth_timestamp", "1000"),
            ("auth_version", "1.0"),
        ];
        params.extend_from_slice(extra);
        params.sort_unstable();
        let sig = sign(&secret(SECRET), "GET", "/p", params.iter().copied());
        let mut raw: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        raw.push(format!("auth_signature={sig}"));
        QueryParams::parse(&raw.join("&")).expect("parses")
    };
    // No body_md5 on an empty body: fine (Node, Go, Ruby, PHP).
    assert!(verify("GET", "/p", &sign_get(&[]), b"", &e).is_ok());
    // The empty-body MD5 on GET: fine (PyPI pusher).
    let q = sign_get(&[("body_md5", EMPTY_BODY_MD5)]);
    assert!(verify("GET", "/p", &q, b"", &e).is_ok());
    // Any other MD5 on an empty body: refused.
    let q = sign_get(&[("body_md5", "00000000000000000000000000000000")]);
    assert_eq!(
        verify("GET", "/p", &q, b"", &e),
        Err(SignatureError::BodyMd5Mismatch)
    );
    // A body without body_md5: refused.
    assert_eq!(
        verify("GET", "/p", &sign_get(&[]), b"x", &e),
        Err(SignatureError::BodyMd5Missing)
    );
}

#[test]
fn signed_target_is_path_and_signed_query() {
    let s = secret(SECRET);
    let extra = [("info", "user_count,subscription_count"), ("x", "a b~")];
    let body = Some(&b"{}"[..]);
    let target = Signer::new(KEY, &SigningKey::new(&s)).target(&Unsigned {
        method: "POST",
        path: "/apps/3/events",
        timestamp: 7,
        body,
        params: &extra,
    });
    let query = signed_query(KEY, &s, "POST", "/apps/3/events", 7, body, &extra);
    assert_eq!(target, format!("/apps/3/events?{query}"));
    assert!(
        query.contains("&info=user_count%2Csubscription_count&") && query.contains("&x=a%20b~&"),
        "{query}"
    );
    // The signature covers the path that prefixes the target.
    let q = QueryParams::parse(&query).expect("own output parses");
    let secrets = [key(SECRET)];
    verify("POST", "/apps/3/events", &q, b"{}", &expected(7, &secrets))
        .expect("verifies against its own path");
    assert_eq!(
        verify("POST", "/apps/4/events", &q, b"{}", &expected(7, &secrets)),
        Err(SignatureError::SignatureMismatch)
    );
}

proptest::proptest! {
    /// Key order does not matter: the canonical form sorts.
    #[test]
    fn signed_query_is_order_independent(a in "[a-z]{1,8}", b in "[ -~]{0,16}") {
        let extra1 = [("zz", a.as_str()), ("info", b.as_str())];
        let extra2 = [("info", b.as_str()), ("zz", a.as_str())];
        let s = secret(SECRET);
        let q1 = signed_query(KEY, &s, "GET", "/p", 5, None, &extra1);
        let q2 = signed_query(KEY, &s, "GET", "/p", 5, None, &extra2);
        proptest::prop_assert_eq!(q1, q2);
    }

    /// Any change to the method, path, a parameter or the body changes
    /// the signature.
    #[test]
    fn any_change_changes_the_signature(
        method in "[A-Z]{1,7}",
        path in "/[!-~]{0,30}",
        value in "\\PC{0,16}",
        body in proptest::collection::vec(proptest::num::u8::ANY, 0..32),
    ) {
        let s = secret(SECRET);
        let sig = |method: &str, path: &str, value: &str, body: &[u8]| {
            let md5 = body_md5(body);
            let mut params = vec![("auth_key", KEY), ("body_md5", md5.as_str()), ("name", value)];
            params.sort_unstable();
            sign(&s, method, path, params)
        };
        let base = sig(&method, &path, &value, &body);
        let mut longer = body.clone();
        longer.push(0);
        let mut flipped = body.clone();
        if let Some(b) = flipped.first_mut() {
            *b ^= 1;
        } else {
            flipped.push(1);
        }
        for (what, other) in [
            ("method", sig(&format!("{method}X"), &path, &value, &body)),
            ("path", sig(&method, &format!("{path}x"), &value, &body)),
            ("value", sig(&method, &path, &format!("{value}x"), &body)),
            ("body length", sig(&method, &path, &value, &longer)),
            ("body byte", sig(&method, &path, &value, &flipped)),
        ] {
            proptest::prop_assert_ne!(&base, &other, "{} changed", what);
        }
    }

    /// Anything a client could send round-trips through encode, parse, verify.
    #[test]
    fn round_trip(value in "\\PC{0,32}", body in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
        let s = [key(SECRET)];
        let wire = signed_query(KEY, &secret(SECRET), "POST", "/p", 1000, Some(&body), &[("name", value.as_str())]);
        let q = QueryParams::parse(&wire).expect("own output parses");
        proptest::prop_assert_eq!(q.get("name"), Some(value.as_str()));
        proptest::prop_assert!(verify("POST", "/p", &q, &body, &expected(1000, &s)).is_ok());
    }
}
