//! Starting a real Sockudo 5.2.0 on a free loopback port for one test, and
//! stopping it again. Every wait is bounded.

use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::http;

/// The app Sockudo knows; the proxy serves it with the same credentials.
pub const APP_ID: &str = "4242";
pub const KEY: &str = "legacy-app-key";
pub const SECRET: &str = "legacy-app-secret";

/// How long Sockudo may take to answer its first signed request.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Finds the Sockudo binary: `SOCKUDO_BIN`, else `sockudo` on `PATH`.
pub fn binary() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("SOCKUDO_BIN") {
        let bin = PathBuf::from(bin);
        return bin.is_file().then_some(bin);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("sockudo"))
        .find(|p| p.is_file())
}

/// The Sockudo binary, or `None` after printing one line saying the suite is
/// skipped. Under `CI=true` a missing binary fails the test instead.
pub fn binary_or_skip() -> Option<PathBuf> {
    let found = binary();
    if found.is_none() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(
            !ci,
            "CI=true but Sockudo is not installed: set SOCKUDO_BIN or put `sockudo` on PATH \
             (cargo install sockudo --version 5.2.0 --locked)"
        );
        // Once per run, and straight to stderr: libtest captures eprintln!.
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "e2e skipped: Sockudo not found (set SOCKUDO_BIN, or: \
                 cargo install sockudo --version 5.2.0 --locked)"
            );
        });
    }
    found
}

/// A running Sockudo.
pub struct Sockudo {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The config: one app, loopback only, in-memory everything, no rate
/// limiter, no metrics listener, immediate shutdown. Sockudo silently runs
/// on its defaults when its config does not load, so readiness is checked
/// with a signed request for this app.
fn config(port: u16) -> String {
    format!(
        r#"debug = false
host = "127.0.0.1"
port = {port}
shutdown_grace_period = 0
activity_timeout = 120

[adapter]
driver = "local"

[cache]
driver = "memory"

[queue]
driver = "memory"

[rate_limiter]
enabled = false

[metrics]
enabled = false

[app_manager]
driver = "memory"

[app_manager.cache]
enabled = false

[[app_manager.array.apps]]
id = "{APP_ID}"
key = "{KEY}"
secret = "{SECRET}"
enabled = true

[app_manager.array.apps.policy.limits]
max_connections = 0
max_client_events_per_second = 0

[app_manager.array.apps.policy.features]
enable_client_messages = false
enable_user_authentication = false
"#
    )
}

impl Sockudo {
    /// Starts Sockudo and waits until it answers a signed request.
    pub async fn start(bin: &PathBuf) -> Self {
        let mut last_error = String::new();
        // A port found free can be taken before Sockudo binds it; try a few.
        for _ in 0..3 {
            let port = free_port();
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("sockudo.toml");
            std::fs::write(&path, config(port)).expect("write sockudo config");
            let log = std::fs::File::create(dir.path().join("sockudo.log")).expect("log file");
            // A clean environment: Sockudo reads many variables (PORT, HOST,
            // SOCKUDO_DEFAULT_APP_*, …) that override its file.
            let child = Command::new(bin)
                .arg("--config")
                .arg(&path)
                .current_dir(dir.path())
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("RUST_LOG", "warn")
                .env("LOG_COLORS_ENABLED", "false")
                .stdin(Stdio::null())
                .stdout(Stdio::from(log.try_clone().expect("clone log")))
                .stderr(Stdio::from(log))
                .kill_on_drop(true)
                .spawn()
                .expect("spawn sockudo");
            let mut sockudo = Sockudo {
                port,
                child,
                _dir: dir,
            };
            match sockudo.wait_ready().await {
                Ok(()) => return sockudo,
                Err(e) => {
                    last_error = format!("{e}; log: {}", sockudo.log());
                    sockudo.stop().await;
                }
            }
        }
        panic!("Sockudo did not start: {last_error}");
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("sockudo.log")).unwrap_or_default()
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
        let path = format!("/apps/{APP_ID}/channels/readiness-probe");
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("exited with {status}"));
            }
            let uri = http::signed(&self.url(), "GET", &path, &[], None);
            if let Ok(a) = http::try_send(hyper::Method::GET, &uri, &[], Vec::new()).await {
                if a.status.as_u16() == 200 {
                    return Ok(());
                }
                return Err(format!("answered {} {}", a.status, a.text()));
            }
            if tokio::time::Instant::now() > deadline {
                return Err("no answer within the startup timeout".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops Sockudo (SIGKILL; it keeps no state worth a graceful stop) and
    /// reaps it.
    pub async fn stop(&mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}
