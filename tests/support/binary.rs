//! The `pusher-cutover` binary run as a child process, with JSON logs (or
//! text, [`Served::start_text`]).

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_pusher-cutover");

/// A running `pusher-cutover serve`.
pub struct Served {
    child: Child,
    /// The proxy's `host:port`.
    pub addr: String,
    /// The admin listener's `host:port`.
    pub admin: String,
    drain: tokio::task::JoinHandle<Vec<String>>,
}

impl Served {
    /// Runs `serve --config FILE` with JSON logs and waits (bounded) until
    /// both listeners are up.
    pub async fn start(config: &Path) -> Self {
        Self::start_with_env(config, &HashMap::from([("RUST_LOG", "info")])).await
    }

    /// As [`Served::start`], with extra environment variables.
    pub async fn start_with_env(config: &Path, env: &HashMap<&str, &str>) -> Self {
        Self::spawn(config, env, true).await
    }

    /// As [`Served::start_with_env`], with the default text log format;
    /// read its lines with [`Served::sigterm_text`].
    pub async fn start_text(config: &Path, env: &HashMap<&str, &str>) -> Self {
        Self::spawn(config, env, false).await
    }

    async fn spawn(config: &Path, env: &HashMap<&str, &str>, json: bool) -> Self {
        let format = if json { "json" } else { "text" };
        let mut child = Command::new(BIN)
            .args(["--log-format", format, "serve", "--config"])
            .arg(config)
            .envs(env)
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let mut early = Vec::new();
        let (addr, admin) = tokio::time::timeout(Duration::from_secs(10), async {
            let (mut addr, mut admin) = (None, None);
            while let Some(line) = lines.next_line().await.expect("read stderr") {
                let (message, listening_at) = if json {
                    let entry: serde_json::Value = serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
                    let addr = entry["addr"].as_str().map(str::to_owned);
                    (entry["message"].as_str().map(str::to_owned), addr)
                } else {
                    // `… INFO admin listening addr=127.0.0.1:9090 …`
                    let message = ["admin listening", "listening"]
                        .into_iter()
                        .find(|m| line.contains(&format!(" INFO {m} addr=")));
                    let addr = line
                        .split_once(" addr=")
                        .map(|(_, rest)| rest.split(' ').next().unwrap_or(rest).to_owned());
                    (message.map(str::to_owned), addr)
                };
                match message.as_deref() {
                    Some("listening") => addr = listening_at,
                    Some("admin listening") => admin = listening_at,
                    _ => {}
                }
                early.push(line);
                if let (Some(a), Some(b)) = (&addr, &admin) {
                    return (a.clone(), b.clone());
                }
            }
            panic!("the proxy exited before listening:\n{}", early.join("\n"));
        })
        .await
        .expect("listening within 10 s");
        // Keep draining stderr so the child never blocks on a full pipe.
        let drain = tokio::spawn(async move {
            let mut all = early;
            while let Ok(Some(line)) = lines.next_line().await {
                all.push(line);
            }
            all
        });
        Self {
            child,
            addr,
            admin,
            drain,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Sends a signal (`HUP`, `TERM`, …) to the process.
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().expect("running");
        let killed = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(killed.success());
    }

    /// Sends SIGTERM and waits (bounded) for the exit; returns the exit code
    /// and every log line as written.
    pub async fn sigterm_text(self) -> (Option<i32>, Vec<String>) {
        self.signal("TERM");
        self.wait_text(Duration::from_secs(15)).await
    }

    /// Waits at most `limit` for the exit; returns the exit code and every
    /// log line as written.
    pub async fn wait_text(mut self, limit: Duration) -> (Option<i32>, Vec<String>) {
        let status = tokio::time::timeout(limit, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("exits within {limit:?}"))
            .expect("wait");
        (status.code(), self.drain.await.expect("drain"))
    }

    /// Sends SIGTERM and waits (bounded) for the exit; returns the exit code
    /// and every log line, parsed.
    pub async fn sigterm(self) -> (Option<i32>, Vec<serde_json::Value>) {
        let (code, lines) = self.sigterm_text().await;
        let entries = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        (code, entries)
    }
}
