//! Starting a real Sockudo 5.2.0 on a free loopback port for one test, and
//! stopping it again. Every wait is bounded.

use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::process::{Child, Command};

// The app Sockudo knows is the support's fixture app; the proxy serves it
// with the same credentials.
use crate::support::{APP_ID, KEY, SECRET};

/// The version the suite is written against.
pub const VERSION: &str = "5.2.0";

/// How to get Sockudo, said whenever it is missing.
const HOW_TO_GET_IT: &str = "install it with tests/install-parts.sh (Debian; elsewhere \
     `cargo install sockudo --version 5.2.0 --locked`, which needs protoc with Google's \
     .proto files, pkg-config and OpenSSL's headers) and put it on PATH, or set SOCKUDO_BIN \
     to its path; `cargo test --locked` without --include-ignored leaves this suite out";

/// How long Sockudo may take to answer its first signed request.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// The Sockudo binary: `SOCKUDO_BIN`, else `sockudo` on `PATH`, checked to
/// be version [`VERSION`] (once per run). Panics, saying how to get it,
/// when it is missing or another version: the suite is `#[ignore]`d, so it
/// runs only when asked for, and then never passes without Sockudo.
pub fn binary() -> PathBuf {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match FOUND.get_or_init(find) {
        Ok(bin) => bin.clone(),
        Err(problem) => panic!("the e2e suite needs Sockudo {VERSION}: {problem}; {HOW_TO_GET_IT}"),
    }
}

fn find() -> Result<PathBuf, String> {
    let bin = match std::env::var_os("SOCKUDO_BIN") {
        Some(bin) => {
            let bin = PathBuf::from(bin);
            if !bin.is_file() {
                return Err(format!("SOCKUDO_BIN={} is not a file", bin.display()));
            }
            bin
        }
        None => {
            let path = std::env::var_os("PATH").unwrap_or_default();
            std::env::split_paths(&path)
                .map(|dir| dir.join("sockudo"))
                .find(|p| p.is_file())
                .ok_or("SOCKUDO_BIN is not set and there is no `sockudo` on PATH")?
        }
    };
    let out = std::process::Command::new(&bin)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{} --version did not run: {e}", bin.display()))?;
    let said = String::from_utf8_lossy(&out.stdout);
    if said.trim() != format!("sockudo {VERSION}") {
        return Err(format!(
            "{} --version says {:?} ({})",
            bin.display(),
            said.trim(),
            out.status
        ));
    }
    Ok(bin)
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

/// The app's limit on events per `batch_events` request
/// (`max_event_batch_size`), read from the example Sockudo config,
/// `config/sockudo-server.toml` (its first app), so that the suite runs
/// Sockudo as the example does: Sockudo refuses a larger batch whole.
pub fn max_event_batch_size() -> usize {
    let server: toml::Value = toml::from_str(include_str!("../../config/sockudo-server.toml"))
        .expect("config/sockudo-server.toml is TOML");
    ["app_manager", "array", "apps"]
        .iter()
        .try_fold(&server, |v, key| v.get(key))
        .and_then(|apps| apps.get(0))
        .and_then(|app| {
            app.get("policy")?
                .get("limits")?
                .get("max_event_batch_size")
        })
        .and_then(toml::Value::as_integer)
        .and_then(|n| usize::try_from(n).ok())
        .expect("config/sockudo-server.toml's first app sets max_event_batch_size")
}

/// The config, `tests/fixtures/sockudo-loopback.toml` (which
/// `bench/throughput.sh` starts Sockudo with too) for this suite's app on
/// `port`.
fn config(port: u16) -> String {
    let config = include_str!("../fixtures/sockudo-loopback.toml")
        .replace("@PORT@", &port.to_string())
        .replace("@APP_ID@", APP_ID)
        .replace("@KEY@", KEY)
        .replace("@SECRET@", SECRET)
        .replace(
            "@MAX_EVENT_BATCH_SIZE@",
            &max_event_batch_size().to_string(),
        );
    assert!(!config.contains('@'), "a field left unfilled:\n{config}");
    config
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
            let uri = crate::signed(&self.url(), "GET", &path, &[], None);
            if let Ok(a) = crate::support::try_send(hyper::Method::GET, &uri, &[], "").await {
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
