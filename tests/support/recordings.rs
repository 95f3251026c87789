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
