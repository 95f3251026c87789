//! The `pusher-cutover` binary run as a child process, with JSON logs.

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
        let mut child = Command::new(BIN)
            .args(["--log-format", "json", "serve", "--config"])
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
                let entry: serde_json::Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
                let field = || entry["addr"].as_str().map(str::to_owned);
                match entry["message"].as_str() {
                    Some("listening") => addr = field(),
                    Some("admin listening") => admin = field(),
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
    /// and every log line, parsed.
    pub async fn sigterm(mut self) -> (Option<i32>, Vec<serde_json::Value>) {
        self.signal("TERM");
        let status = tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .expect("exits within 15 s")
            .expect("wait");
        let lines = self.drain.await.expect("drain");
        let entries = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        (status.code(), entries)
    }
}
