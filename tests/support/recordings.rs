//! The requests of tests/fixtures/legacy-requests.txt, recorded from twelve
//! real legacy library releases, and what the proxy must make of them.
//! Shared by the integration and end-to-end suites.

use super::oracle;

/// One recorded request.
pub struct Recording {
    pub library: String,
    pub request_line: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Recording {
    /// The exact bytes the library sent.
    pub fn raw(&self) -> Vec<u8> {
        let mut raw = format!("{}\r\n", self.request_line);
        for (k, v) in &self.headers {
            raw.push_str(&format!("{k}: {v}\r\n"));
        }
        raw.push_str("\r\n");
        raw.push_str(&self.body);
        raw.into_bytes()
    }

    /// The request target (path and query).
    pub fn target(&self) -> &str {
        self.request_line
            .split(' ')
            .nth(1)
            .expect("request line has a target")
    }

    /// The recorded bytes with a fresh signature: `auth_timestamp` set to
    /// `timestamp` and `auth_signature` recomputed with `secret`, nothing
    /// else changed (header order and case, query order and encoding, the
    /// body), so its sender's traits survive for a real upstream that
    /// checks the time.
    pub fn resigned_at(&self, timestamp: u64, secret: &str) -> Vec<u8> {
        let (path, query) = self.target().split_once('?').expect("signed target");
        let old_ts = self.param("auth_timestamp").expect("auth_timestamp");
        let old_sig = self.param("auth_signature").expect("auth_signature");
        let pairs: Vec<(String, String)> = oracle::parse_query(query)
            .into_iter()
            .map(|(k, v)| {
                let v = if k == "auth_timestamp" {
                    timestamp.to_string()
                } else {
                    v
                };
                (k, v)
            })
            .collect();
        let method = self.request_line.split(' ').next().expect("method");
        let sig = oracle::hmac_hex(secret, &oracle::string_to_sign(method, path, &pairs));
        let raw = String::from_utf8(self.raw()).expect("recordings are text");
        let raw = raw
            .replacen(
                &format!("auth_timestamp={old_ts}"),
                &format!("auth_timestamp={timestamp}"),
                1,
            )
            .replacen(
                &format!("auth_signature={old_sig}"),
                &format!("auth_signature={sig}"),
                1,
            );
        raw.into_bytes()
    }

    /// A decoded query parameter of the target.
    pub fn param(&self, key: &str) -> Option<String> {
        let query = self.target().split_once('?').map_or("", |(_, q)| q);
        oracle::parse_query(query)
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }
}

/// Parses the fixture file: `## library`, the request line, a `headers:`
/// list of pairs, and a `body:` line.
pub fn recordings() -> Vec<Recording> {
    let text = include_str!("../fixtures/legacy-requests.txt");
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(library) = line.strip_prefix("## ") else {
            continue;
        };
        let request_line = lines.next().expect("request line").to_owned();
        let headers = lines
            .next()
            .and_then(|l| l.strip_prefix("headers: "))
            .expect("headers line");
        let headers: Vec<(String, String)> =
            serde_json::from_str(&headers.replace('\'', "\"")).expect("headers parse");
        let body = lines
            .next()
            .and_then(|l| l.strip_prefix("body: "))
            .expect("body line")
            .to_owned();
        out.push(Recording {
            library: library.to_owned(),
            request_line,
            headers,
            body,
        });
    }
    assert_eq!(out.len(), 12, "twelve recorded releases");
    out
}

/// The current-API body the proxy must send for a recording, built here
/// independently of the crate.
pub fn expected_upstream_body(r: &Recording) -> String {
    let data = serde_json::to_string(&r.body).expect("string");
    match r.param("socket_id") {
        Some(s) => format!(
            r#"{{"name":"my-event","channels":["test-channel"],"data":{data},"socket_id":"{s}"}}"#
        ),
        None => format!(r#"{{"name":"my-event","channels":["test-channel"],"data":{data}}}"#),
    }
}

/// The family a recording's release belongs to, from its title alone (the
/// fixture's `## …` line), written out here independently of the
/// classifier. npm `pusher` 0.0.x sends no `socket_id`, and without one
/// its requests are node-pusher's but for header case, which hyper does
/// not keep: that family is named as the pair.
pub fn expected_family(title: &str) -> &'static str {
    let pypi_minor = title
        .strip_prefix("PyPI pusher 0.")
        .and_then(|m| m.parse::<u8>().ok());
    match pypi_minor {
        Some(1..=5) => "pypi-pusher-0.1-0.5",
        Some(6..=8) => "pypi-pusher-0.6-0.8",
        _ if title.starts_with("npm pusher 0.0.") => "npm-pusher-or-node-pusher-0.0",
        _ if title.starts_with("npm node-pusher 0.0.") => "npm-node-pusher-0.0",
        _ => panic!("no family for {title}"),
    }
}
