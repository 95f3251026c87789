//! Sends deprecated calls the way a 2012-era Pusher server library did,
//! freshly signed: to smoke-test a deployment, or to fill a ledger for a
//! demo report.
//!
//! ```sh
//! cargo run --example legacy_traffic -- --calls 20 --user-agent "pusher-php-server/2.1.2"
//! cargo run --example legacy_traffic -- --route stats --channel presence-lobby
//! ```

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use pusher_cutover::pusher::signature::{Signer, SigningKey, Unsigned};
use secrecy::SecretString;

#[derive(Debug, Parser)]
struct Args {
    /// The proxy's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    proxy: String,
    #[arg(long, default_value = "4242")]
    app_id: String,
    #[arg(long, default_value = "legacy-app-key")]
    key: String,
    #[arg(long, default_value = "legacy-app-secret")]
    secret: String,
    #[arg(long, default_value = "test-channel")]
    channel: String,
    #[arg(long, value_enum, default_value_t = Route::Trigger)]
    route: Route,
    /// How many calls to make.
    #[arg(long, default_value_t = 1)]
    calls: u32,
    /// The User-Agent to send (the 2012 libraries sent none).
    #[arg(long)]
    user_agent: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Route {
    Trigger,
    Stats,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let secret = SigningKey::new(&SecretString::from(args.secret.clone()));
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    for i in 0..args.calls {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let (method, path, body, extra) = match args.route {
            Route::Trigger => (
                Method::POST,
                format!("/apps/{}/channels/{}/events", args.app_id, args.channel),
                format!("{{\"n\": {i}}}"),
                vec![("name", "legacy-event")],
            ),
            Route::Stats => (
                Method::GET,
                format!("/apps/{}/channels/{}/stats", args.app_id, args.channel),
                String::new(),
                vec![],
            ),
        };
        let md5_body = (method == Method::POST).then_some(body.as_bytes());
        let query = Signer::new(&args.key, &secret).query(&Unsigned {
            method: method.as_str(),
            path: &path,
            timestamp: now,
            body: md5_body,
            params: &extra,
        });
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}?{query}", args.proxy))
            .header("content-type", "application/json");
        if let Some(ua) = &args.user_agent {
            req = req.header("user-agent", ua);
        }
        let resp = client
            .request(req.body(Full::new(Bytes::from(body)))?)
            .await?;
        let status = resp.status();
        let text = resp.into_body().collect().await?.to_bytes();
        println!("{status} {}", String::from_utf8_lossy(&text).trim_end());
    }
    Ok(())
}
