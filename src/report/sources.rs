//! Where `report` reads ledgers from: `data_dir`s of sidecars on this
//! machine, or the `/usage` endpoints of running ones. Several sources are
//! merged into one [`Usage`], so a fleet gives one report; a data
//! directory whose ledger is marked open is named with it ([`Ledgers`]).

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::{StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::evidence::OpenLedger;
use crate::telemetry::store::{Contents, Store, StoreError};
use crate::telemetry::usage::Usage;

/// Largest `/usage` answer read.
const MAX_USAGE_BYTES: usize = 64 * 1024 * 1024;

/// Bound on fetching one `/usage` URL.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// One ledger to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A sidecar's `[telemetry] data_dir`.
    DataDir(PathBuf),
    /// A running sidecar's admin `/usage` URL (`http://` or `https://`).
    Url(Uri),
}

/// A ledger that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The data directory's database could not be read.
    #[error("reading the ledger in {0}")]
    Store(String, #[source] StoreError),
    /// The URL could not be fetched.
    #[error("fetching {0}")]
    Fetch(String, #[source] Box<dyn std::error::Error + Send + Sync>),
    /// The URL answered something other than 200.
    #[error("fetching {0}: answered {1}")]
    Status(String, StatusCode),
    /// The answer is not a ledger.
    #[error("{0} did not return a usage ledger")]
    Parse(String, #[source] serde_json::Error),
    /// Fetching took too long.
    #[error("fetching {0}: timed out")]
    Timeout(String),
}

/// What [`load`] read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ledgers {
    /// Every source's ledger, merged.
    pub usage: Usage,
    /// The data directories whose ledger was marked open for writing, in
    /// the order given: each lacks its writer's calls since its last
    /// write, so it proves no zero. A `/usage` answer is never one: a
    /// running sidecar's holds every call it recorded.
    pub open: Vec<OpenLedger>,
    /// What the reader should know of the sources given, for stderr: a
    /// data directory or URL given more than once, and read once.
    pub notes: Vec<String>,
}

/// The client a sidecar's admin endpoints are called with: `/usage` URLs,
/// and `POST /reload` (`pusher-cutover reload`).
pub(crate) type AdminClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Reads every source and merges them, naming the ledgers found marked
/// open. A data directory given twice (also under another path to it, as
/// `--config`'s and a `--data-dir`) or a URL given twice is read once, so
/// its calls are not counted twice. URLs share one client (and its
/// connections), built only if there is a URL to fetch; `token`, when
/// given, is sent to each as `Authorization: Bearer` (`[admin] token`).
pub async fn load(
    sources: &[Source],
    token: Option<&secrecy::SecretString>,
) -> Result<Ledgers, SourceError> {
    let mut parts = Vec::with_capacity(sources.len());
    let mut open = Vec::new();
    let mut notes = Vec::new();
    let mut client: Option<AdminClient> = None;
    // Each source read: the path or URL that identifies it, and the name
    // given. (One sidecar's data_dir and its /usage URL are one ledger too,
    // but nothing in the two says so for certain: the README asks for one
    // of them, and two sidecars' ledgers are never taken for one, which
    // would hide calls from the gate.)
    let mut read: Vec<(String, String)> = Vec::with_capacity(sources.len());
    for source in sources {
        let (identity, name) = match source {
            Source::DataDir(dir) => (
                std::fs::canonicalize(dir)
                    .unwrap_or_else(|_| dir.clone())
                    .display()
                    .to_string(),
                dir.display().to_string(),
            ),
            Source::Url(uri) => (uri.to_string(), uri.to_string()),
        };
        if let Some((_, first)) = read.iter().find(|(id, _)| *id == identity) {
            notes.push(if *first == name {
                format!("{name} was given more than once; it is read once")
            } else {
                format!("{name} is {first}, given twice; it is read once")
            });
            continue;
        }
        let usage = match source {
            Source::DataDir(dir) => {
                let contents = read_dir(dir.clone()).await?;
                if let Some(mark) = contents.open {
                    open.push(OpenLedger {
                        ledger: dir.display().to_string(),
                        instance: contents.usage.instance.clone(),
                        since: mark.since,
                    });
                }
                contents.usage
            }
            Source::Url(uri) => fetch(client.get_or_insert_with(admin_client), uri, token).await?,
        };
        read.push((identity, name));
        parts.push(usage);
    }
    Ok(Ledgers {
        usage: Usage::merge(parts),
        open,
        notes,
    })
}

/// A client for a sidecar's admin endpoints ([`AdminClient`]), over
/// `http://` or `https://`.
pub(crate) fn admin_client() -> AdminClient {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new()).build(https)
}

async fn read_dir(dir: PathBuf) -> Result<Contents, SourceError> {
    let name = dir.display().to_string();
    let read = tokio::task::spawn_blocking(move || Store::open_read_only(&dir)?.read()).await;
    match read {
        Ok(result) => result.map_err(|e| SourceError::Store(name, e)),
        Err(join) => Err(SourceError::Fetch(name, Box::new(join))),
    }
}

async fn fetch(
    client: &AdminClient,
    uri: &Uri,
    token: Option<&secrecy::SecretString>,
) -> Result<Usage, SourceError> {
    use secrecy::ExposeSecret;
    let name = uri.to_string();
    let exchange = async {
        let mut req = hyper::Request::get(uri.clone());
        if let Some(token) = token {
            req = req.header(
                hyper::header::AUTHORIZATION,
                format!("Bearer {}", token.expose_secret()),
            );
        }
        let req = req
            .body(Empty::new())
            .map_err(|e| SourceError::Fetch(name.clone(), Box::new(e)))?;
        let resp = client
            .request(req)
            .await
            .map_err(|e| SourceError::Fetch(name.clone(), Box::new(e)))?;
        if resp.status() != StatusCode::OK {
            return Err(SourceError::Status(name.clone(), resp.status()));
        }
        let body = Limited::new(resp.into_body(), MAX_USAGE_BYTES)
            .collect()
            .await
            .map_err(|e| SourceError::Fetch(name.clone(), e))?
            .to_bytes();
        serde_json::from_slice(&body).map_err(|e| SourceError::Parse(name.clone(), e))
    };
    tokio::time::timeout(FETCH_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(SourceError::Timeout(name.clone())))
}
