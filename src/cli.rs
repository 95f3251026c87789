//! The command line: its arguments and what each subcommand does
//! ([`main`]). `main.rs` only calls [`main`]; the errors are typed and
//! printed with their causes, `a: b: c`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use time::OffsetDateTime;
use tokio::net::TcpListener;

use crate::chain::ErrorChain;
use crate::config::{self, Config, ConfigError};
use crate::reload::ConfigSource;
use crate::report;
use crate::report::sources::{self, Source};
use crate::service::{Options, RunError};
use crate::telemetry::logging;

/// A sidecar that serves Pusher's deprecated HTTP API calls (channel stats,
/// per-channel trigger) in front of a current-API server, and records who
/// still makes them.
#[derive(Debug, Parser)]
#[command(name = "pusher-cutover", version, about, after_help = EXIT_CODES)]
struct Cli {
    /// Log format: human-readable text or one JSON object per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

// No doc comments on the values: clap would show them in `--help`.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy. Without --config, the embedded default is used with
    /// the PUSHER_APP_ID, PUSHER_APP_KEY, PUSHER_APP_SECRET and
    /// PUSHER_CLUSTER (or PUSHER_HOST, PUSHER_PORT, PUSHER_SCHEME)
    /// environment variables.
    #[command(after_help = EXIT_CODES)]
    Serve {
        /// TOML configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Check a configuration file; list every problem and exit 1 if any.
    /// An unset variable named by `secret_env` or `token_env`, or a
    /// `secret_file` or `token_file` that cannot be read, is a warning
    /// (exit 0), so a file can be linted where its secrets are not.
    Validate {
        /// TOML configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Treat an unset `secret_env` or `token_env` variable, or an
        /// unreadable `secret_file` or `token_file`, as an error (as
        /// `serve` does).
        #[arg(long)]
        require_env: bool,
    },
    /// Reload a running `serve` and wait for its answer (POST /reload on
    /// its admin listener): exits 0 once the new configuration is in
    /// force, 1 when the proxy refused it (its reason printed; the
    /// previous configuration keeps serving) or refused the request, 69
    /// when the proxy cannot be reached, 78 when the file is invalid or
    /// enables no admin listener. For systemd's ExecReload: the proxy
    /// itself decides, with its own environment, so a refused reload fails
    /// `systemctl reload` (a SIGHUP is only logged).
    Reload {
        /// The running proxy's configuration file: its [admin] listen
        /// (0.0.0.0 or :: reached on loopback) and token are used.
        #[arg(long)]
        config: PathBuf,
        /// The admin listener's address (a host name or IP address, and
        /// a port), instead of the file's [admin] listen.
        #[arg(long, value_name = "HOST:PORT", value_parser = admin_address)]
        admin: Option<hyper::http::uri::Authority>,
    },
    /// Report who still makes deprecated calls, from one or more ledgers
    /// (merged) or from Prometheus. With --fail-if-used-since: exits 1
    /// when calls were seen in that window, 2 when the evidence is
    /// incomplete (a ledger starting inside the window, a --data-dir
    /// ledger marked open by a running or crashed sidecar, a gap in
    /// Prometheus' scrapes) or cannot be read, 0 only for a proven zero.
    Report {
        /// Read the ledger in this config's [telemetry] data_dir.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Read the ledger in this data directory (repeatable).
        #[arg(long = "data-dir", value_name = "DIR")]
        data_dirs: Vec<PathBuf>,
        /// Read a running sidecar's admin /usage URL (repeatable).
        #[arg(long = "url", value_name = "URL")]
        urls: Vec<hyper::Uri>,
        /// Only calls in this window, e.g. 7d, 24h (default: everything kept;
        /// 7d with --prometheus).
        #[arg(long, value_parser = positive_duration)]
        since: Option<humantime::Duration>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
        format: ReportFormat,
        /// Exit 1 if any deprecated call was seen in this window, e.g. 24h;
        /// 2 if no call was seen but the evidence does not cover the window
        /// (a ledger started inside it, a --data-dir ledger marked open: a
        /// running sidecar's, gate it through --url; a gap in the scrapes);
        /// 0 otherwise.
        #[arg(long, value_name = "WINDOW", value_parser = positive_duration)]
        fail_if_used_since: Option<humantime::Duration>,
        /// Send the token in this environment variable as `Authorization:
        /// Bearer` to every --url (the sidecars' `[admin] token`), or to
        /// --prometheus.
        #[arg(long, value_name = "NAME")]
        token_env: Option<String>,
        #[command(flatten)]
        fleet: Box<FleetArgs>,
    },
}

/// `report --prometheus`: the fleet from Prometheus instead of ledgers.
#[derive(Debug, clap::Args)]
struct FleetArgs {
    /// Read the fleet from this Prometheus (its HTTP API base URL)
    /// instead of ledgers. The gate then exits 2 when the evidence is
    /// incomplete (a sidecar not scraped for part of the window, the
    /// window past retention, no sidecar), naming each gap.
    #[arg(long, value_name = "URL", conflicts_with_all = ["config", "data_dirs", "urls"])]
    prometheus: Option<hyper::Uri>,
    /// The sidecars' scrape job.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "pusher-cutover",
        requires = "prometheus"
    )]
    job: String,
    /// Only this app (repeatable), for the report and the gate.
    #[arg(long = "app", value_name = "ID", requires = "prometheus")]
    apps: Vec<String>,
    /// The target label that names a sidecar (`pod` with the Kubernetes
    /// relabelling in deploy/README.md).
    #[arg(
        long,
        value_name = "LABEL",
        default_value = "instance",
        requires = "prometheus",
        value_parser = label_name
    )]
    instance_label: String,
    /// A gap unless at least N sidecars are up at the window's end.
    #[arg(long, value_name = "N", requires = "prometheus")]
    expect_instances: Option<usize>,
    /// A gap unless every sidecar serves this app (repeatable; also
    /// selects it, like --app).
    #[arg(long = "expect-app", value_name = "ID", requires = "prometheus")]
    expect_apps: Vec<String>,
    /// The job's scrape interval, when Prometheus' targets do not say.
    #[arg(
        long,
        value_name = "DURATION",
        requires = "prometheus",
        value_parser = positive_duration
    )]
    scrape_interval: Option<humantime::Duration>,
}

/// A duration above zero: a window of nothing proves nothing, and a scrape
/// interval of nothing would count no scrape as missing.
fn positive_duration(text: &str) -> Result<humantime::Duration, String> {
    let d: humantime::Duration = text.parse().map_err(|e| format!("{e}"))?;
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

/// A Prometheus label name (`[a-zA-Z_][a-zA-Z0-9_]*`): it goes into the
/// PromQL as it is, in `by (…)` and `on (…)`.
fn label_name(text: &str) -> Result<String, String> {
    let mut chars = text.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(text.to_owned())
    } else {
        Err("must be a Prometheus label name: a letter or `_`, then letters, digits or `_`".into())
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ReportFormat {
    Table,
    Json,
    Html,
}

impl ReportFormat {
    /// `built` in this format.
    fn render(self, built: &report::Report) -> String {
        match self {
            Self::Table => report::render_table(built),
            Self::Json => report::render_json(built),
            Self::Html => report::render_html(built),
        }
    }
}

/// The exit codes, as `--help` lists them.
const EXIT_CODES: &str = "\
Exit codes of serve:
  0    stopped after SIGTERM or SIGINT, the ledger written
  1    stopped, but the usage ledger could not be written (calls lost)
  64   usage error: unknown subcommand, option or value (every subcommand)
  69   runtime failure: a listener cannot be bound; no worker thread can be started;
       the ledger cannot be opened (its directory or file cannot be created or
       written: disk, permissions, a lock; another serve writes it, holding
       data_dir/ledger.lock; or a newer release wrote it). A ledger file that
       cannot be read as one is moved aside to ledger.sqlite3.corrupt-<unix seconds>
       instead, and serve goes on
  78   configuration error: the file cannot be read or is invalid, TLS files unusable
  130  a second SIGINT during the graceful shutdown, or one while the
       configuration is read (not started)
  143  the same for SIGTERM
validate: 0 valid (warnings allowed), 1 invalid. reload: 0 in force, 1 refused, 69 no
answer, 78 unusable file. report: 0, 1 with --fail-if-used-since when calls were seen,
2 when a source cannot be read or the evidence is incomplete.";

/// The process's exit codes (sysexits.h where one fits), so a supervisor
/// or a script can tell a typo from a bad config from a busy port.
pub mod exit {
    /// A usage error: unknown subcommand, option or value (`EX_USAGE`).
    /// Not clap's default 2, which `report`'s gate means "evidence
    /// incomplete".
    pub const USAGE: u8 = 64;
    /// A runtime failure: a listener cannot be bound, no worker thread
    /// can be started, or the ledger cannot be opened: its directory or
    /// file cannot be created or written (the disk, permissions, a lock),
    /// or a newer release wrote it
    /// (`EX_UNAVAILABLE`). A ledger file that cannot be read as a ledger
    /// is no failure: it is moved aside and a new one started
    /// ([`crate::telemetry::store::Store::open_and_load`]).
    pub const UNAVAILABLE: u8 = 69;
    /// The configuration cannot be read or is invalid (`EX_CONFIG`).
    pub const CONFIG: u8 = 78;
    /// `serve` stopped, but the usage ledger could not be written.
    pub const LEDGER_LOST: u8 = 1;
}

/// The target of the lines `serve` logs itself: the crate root's, as when
/// they were written in `main.rs`, for `RUST_LOG` directives and the JSON
/// format's `target`.
const TARGET: &str = "pusher_cutover";

/// Why `serve` stopped with an error.
#[derive(Debug, thiserror::Error)]
enum ServeError {
    /// The configuration could not be loaded.
    #[error("loading configuration")]
    Config(#[source] ConfigError),
    /// The proxy's listener could not be bound.
    #[error("binding {addr}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The proxy could not start.
    #[error("starting")]
    Run(#[source] RunError),
    /// The runtime could not be built (no threads or file descriptors).
    #[error("starting the runtime")]
    Runtime(#[source] std::io::Error),
    /// A SIGTERM or SIGINT came while the configuration was being read:
    /// the proxy did not start.
    #[error("{} received while reading the configuration: not started", .0.name())]
    Stopped(Signal),
}

impl ServeError {
    /// The process's exit code for this error (see [`exit`]).
    fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_) | Self::Run(RunError::Tls(_)) => exit::CONFIG,
            Self::Bind { .. }
            | Self::Runtime(_)
            | Self::Run(RunError::BindAdmin { .. } | RunError::Store(_) | RunError::NoWorkers(_)) => {
                exit::UNAVAILABLE
            }
            Self::Run(RunError::LedgerNotWritten { .. }) => exit::LEDGER_LOST,
            // 143 or 130: the status the signal's default action gives.
            Self::Stopped(signal) => u8::try_from(signal.exit_status()).unwrap_or(1),
        }
    }
}

/// Why `report` has nothing to read.
#[derive(Debug, thiserror::Error)]
enum SourcesError {
    /// `--config`'s file could not be loaded.
    #[error("loading {}", .path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: ConfigError,
    },
    /// `--config`'s file has no ledger to read.
    #[error("{} has no [telemetry] data_dir", .0.display())]
    NoDataDir(PathBuf),
    /// No source given at all.
    #[error("nothing to read: give --config (with [telemetry] data_dir), --data-dir or --url")]
    Nothing,
}

/// Parses the process's command line and runs it; its exit code is one of
/// `EXIT_CODES`: for `serve` 0, [`exit::USAGE`], [`exit::CONFIG`],
/// [`exit::UNAVAILABLE`] or [`exit::LEDGER_LOST`]; `validate` exits 1 when
/// it finds problems; `reload` 1 when the proxy refuses, [`exit::UNAVAILABLE`]
/// when it cannot be reached, [`exit::CONFIG`] for a file it cannot use;
/// `report` 1 when `--fail-if-used-since` finds calls,
/// 2 when it has nothing it can read or its gate's evidence is
/// incomplete. Logging is set up for `serve` only:
/// `validate`, `reload` and `report` print their results.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // `--help` and `--version` go to stdout and exit 0; a usage
            // error is printed with clap's hint and gets its own code.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(exit::USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Command::Validate {
            config,
            require_env,
        } => validate(&config, require_env),
        Command::Reload { config, admin } => reload_running(&config, admin),
        Command::Report {
            config,
            data_dirs,
            urls,
            since,
            format,
            fail_if_used_since,
            token_env,
            fleet,
        } => {
            let token = match report_token(token_env) {
                Ok(token) => token,
                Err(name) => {
                    eprintln!("report: --token-env {name}: the variable is not set");
                    return ExitCode::from(2);
                }
            };
            if let Some(url) = fleet.prometheus {
                let query = report::prometheus::FleetQuery {
                    url,
                    selector: report::promql::Selector {
                        job: fleet.job,
                        apps: fleet
                            .apps
                            .into_iter()
                            .chain(fleet.expect_apps.iter().cloned())
                            .collect(),
                        instance_label: fleet.instance_label,
                    },
                    since: since.map_or(FLEET_DEFAULT_WINDOW, Into::into),
                    gate: fail_if_used_since.map(Into::into),
                    expect_instances: fleet.expect_instances,
                    expect_apps: fleet.expect_apps,
                    scrape_interval: fleet.scrape_interval.map(Into::into),
                };
                return fleet_report(&query, token.as_ref(), format);
            }
            let (sources, configured) = match report_sources(config, data_dirs, urls) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("report: {}", ErrorChain(&e));
                    return ExitCode::from(2);
                }
            };
            report(
                &sources,
                token.as_ref(),
                &configured,
                since.map(Into::into),
                format,
                fail_if_used_since.map(Into::into),
            )
        }
        Command::Serve { config } => {
            let _flush_on_exit = logging::init(match cli.log_format {
                LogFormat::Text => logging::Format::Text,
                LogFormat::Json => logging::Format::Json,
            });
            match serve(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(target: TARGET, exit_code = e.exit_code(), "{}", ErrorChain(&e));
                    ExitCode::from(e.exit_code())
                }
            }
        }
    }
}

/// The configuration in `path`, or from the environment when `None`.
fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    match path {
        Some(path) => Config::from_file(path, &config::process_env),
        None => Config::from_env(&config::process_env),
    }
}

/// The TLS files of `config` loaded as `serve` loads them (a file that is
/// there but holds no certificate or key passes the config's own checks):
/// the problem that keeps them from loading, or the warning of a
/// certificate that ends within [`crate::http::tls::EXPIRY_WARNING`] or
/// has ended.
fn tls_check(config: &Config) -> Result<Option<config::Problem>, config::Problem> {
    let Some(tls) = config.tls.as_ref() else {
        return Ok(None);
    };
    let problem = |message| config::Problem {
        key: "tls.cert".into(),
        message,
    };
    let inbound = crate::http::tls::Inbound::load(tls).map_err(|error| config::Problem {
        key: "tls".into(),
        message: ErrorChain(&error).to_string(),
    })?;
    let certificate = inbound.certificate.current();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    Ok(certificate.expiry_problem(now).map(problem))
}

/// `validate`: prints a summary (and any warning, on stderr) and exits 0,
/// or lists every problem on stderr and exits 1. Unless `require_env`, an
/// unset secret variable is a warning ([`Config::lint_file`]).
fn validate(path: &Path, require_env: bool) -> ExitCode {
    let lint = Config::lint_file(path, &config::process_env, require_env).and_then(
        |(config, mut warnings)| match tls_check(&config) {
            Err(problem) => Err(config::ConfigError::Invalid(vec![problem])),
            Ok(ending) => {
                warnings.extend(ending);
                Ok((config, warnings))
            }
        },
    );
    match lint {
        Ok((config, mut warnings)) => {
            warnings.extend(config.cautions());
            // A closed stdout (`validate … | head -0`) is no reason to fail.
            let _ = print_out(&format!(
                "{}: valid ({} app(s), upstream {}){}",
                path.display(),
                config.apps.len(),
                config.upstream.url,
                if warnings.is_empty() {
                    String::new()
                } else {
                    format!(", {} warning(s)", warnings.len())
                }
            ));
            for warning in &warnings {
                eprintln!("  warning: {warning}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: invalid", path.display());
            for problem in e.problems() {
                eprintln!("  - {problem}");
            }
            ExitCode::FAILURE
        }
    }
}

/// How long `reload` waits for the proxy's answer: longer than the admin
/// listener keeps a connection whose answer is being worked out
/// ([`crate::http::admin::CONNECTION_LIFETIME`] and
/// [`crate::http::admin::WORK_GRACE`]).
const RELOAD_WAIT: Duration = Duration::from_secs(65);

/// `reload`: `POST /reload` to the admin listener that the configuration
/// in `path` names (or `admin`), with its token; prints the answer and
/// exits as [`Command::Reload`] says.
#[tokio::main(flavor = "current_thread")]
async fn reload_running(path: &Path, admin: Option<hyper::http::uri::Authority>) -> ExitCode {
    use http_body_util::{BodyExt as _, Empty, Limited};
    use secrecy::ExposeSecret as _;
    let (config, warnings) = match Config::lint_file(path, &config::process_env, false) {
        Ok(linted) => linted,
        Err(e) => {
            eprintln!("{}: invalid, not reloaded", path.display());
            for problem in e.problems() {
                eprintln!("  - {problem}");
            }
            return ExitCode::from(exit::CONFIG);
        }
    };
    let addr = match (admin, config.admin.listen) {
        // An IP address given is reached as the file's would be.
        (Some(given), _) => match given.as_str().parse::<SocketAddr>() {
            Ok(ip) => reachable(ip).to_string(),
            Err(_) => given.to_string(),
        },
        (None, Some(listen)) => reachable(listen).to_string(),
        (None, None) => {
            eprintln!(
                "{}: no admin listener ([admin] enabled = false): send the proxy SIGHUP instead",
                path.display()
            );
            return ExitCode::from(exit::CONFIG);
        }
    };
    // Without it, a placeholder would be sent as the token.
    if let Some(unset) = warnings
        .iter()
        .find(|w| w.key == "admin.token_env" || w.key == "admin.token_file")
    {
        eprintln!("{}: {unset}", path.display());
        return ExitCode::from(exit::CONFIG);
    }
    let mut req = hyper::Request::post(format!("http://{addr}/reload"));
    if let Some(token) = &config.admin.token {
        req = req.header(
            hyper::header::AUTHORIZATION,
            format!("Bearer {}", token.expose_secret()),
        );
    }
    let Ok(req) = req.body(Empty::new()) else {
        eprintln!("reload: cannot build a request for {addr}");
        return ExitCode::from(exit::USAGE);
    };
    let client = sources::admin_client();
    // The admin listener and token in force are the running proxy's: both
    // change only at a restart, while these are the file's.
    const RESTART_ONLY: &str = "admin.listen and admin.token change only at a restart: \
                                if the file changed either, restart the proxy";
    // Failures, and whether the request never left (no connection).
    let exchange = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| (e.is_connect(), ErrorChain(&e).to_string()))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), 64 * 1024)
            .collect()
            .await
            .map_err(|e| (false, ErrorChain(&*e).to_string()))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).trim().to_owned()))
    };
    let no_answer = "the proxy's log says how the reload ended";
    match tokio::time::timeout(RELOAD_WAIT, exchange).await {
        Ok(Ok((status, body))) if status.is_success() => {
            let _ = print_out(&body);
            ExitCode::SUCCESS
        }
        Ok(Ok((status, body))) => {
            eprintln!("reload: the proxy at {addr} answered {status}: {body}");
            if status == hyper::StatusCode::UNAUTHORIZED {
                eprintln!("reload: {RESTART_ONLY}");
            }
            ExitCode::FAILURE
        }
        Ok(Err((true, error))) => {
            eprintln!("reload: cannot reach the proxy's admin listener at {addr}: {error}");
            eprintln!("reload: {RESTART_ONLY}");
            ExitCode::from(exit::UNAVAILABLE)
        }
        Ok(Err((false, error))) => {
            eprintln!("reload: the exchange with {addr} was cut ({error}); {no_answer}");
            ExitCode::from(exit::UNAVAILABLE)
        }
        Err(_) => {
            eprintln!(
                "reload: no answer from {addr} within {} s; {no_answer}",
                RELOAD_WAIT.as_secs()
            );
            ExitCode::from(exit::UNAVAILABLE)
        }
    }
}

/// `reload --admin`: a host name or IP address with a port (an IPv6
/// address in brackets), nothing else.
fn admin_address(text: &str) -> Result<hyper::http::uri::Authority, String> {
    let authority: hyper::http::uri::Authority = text
        .parse()
        .map_err(|_| format!("`{text}` is not HOST:PORT"))?;
    if authority.host().is_empty()
        || authority.port_u16().is_none_or(|p| p == 0)
        || authority.as_str().contains('@')
    {
        return Err(format!(
            "`{text}` is not HOST:PORT (a host, a port, no user)"
        ));
    }
    Ok(authority)
}

/// The address to connect to for a listener bound on `addr`: an
/// unspecified one (`0.0.0.0`, `::`) is reached on loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

/// The ledgers `report` reads (the data directories, then the URLs, then
/// `config`'s data directory) and the app ids `config` configures (listed
/// even without calls).
fn report_sources(
    config: Option<PathBuf>,
    data_dirs: Vec<PathBuf>,
    urls: Vec<hyper::Uri>,
) -> Result<(Vec<Source>, Vec<String>), SourcesError> {
    let mut sources: Vec<Source> = data_dirs.into_iter().map(Source::DataDir).collect();
    sources.extend(urls.into_iter().map(Source::Url));
    let mut configured = Vec::new();
    if let Some(path) = config {
        // Read as `validate` reads it: the report needs the apps and the
        // data directory, never a secret, and runs where the secrets'
        // variables are often unset (a workstation; a host whose secrets
        // live in the service's environment). The placeholders a lint
        // puts in their place are not used.
        let config = match Config::lint_file(&path, &config::process_env, false) {
            Ok((config, _unset)) => config,
            Err(source) => return Err(SourcesError::Config { path, source }),
        };
        configured = config.apps.iter().map(|a| a.id.clone()).collect();
        let dir = config
            .telemetry
            .data_dir
            .ok_or(SourcesError::NoDataDir(path))?;
        sources.push(Source::DataDir(dir));
    }
    if sources.is_empty() {
        return Err(SourcesError::Nothing);
    }
    Ok((sources, configured))
}

/// `report`: prints the report of `sources` (listing the `configured`
/// apps too); exits 1 when `fail_if_used_since` finds calls, naming each
/// app and caller that made them on stderr, 2 when a ledger cannot be read
/// or the gate's evidence is incomplete (naming each gap: a ledger
/// starting inside the window, a ledger marked open).
#[tokio::main(flavor = "current_thread")]
async fn report(
    sources: &[Source],
    token: Option<&secrecy::SecretString>,
    configured: &[String],
    since: Option<Duration>,
    format: ReportFormat,
    fail_if_used_since: Option<Duration>,
) -> ExitCode {
    let ledgers = match sources::load(sources, token).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("report: {}", ErrorChain(&e));
            return ExitCode::from(2);
        }
    };
    for note in &ledgers.notes {
        eprintln!("report: {note}");
    }
    // Whole seconds: the report shows times to the second.
    let now = OffsetDateTime::now_utc();
    let now = now.replace_nanosecond(0).unwrap_or(now);
    let usage = &ledgers.usage;
    let built = report::build_for_ledgers(&ledgers, now, since, configured);
    if let Err(e) = print_out(&format.render(&built)) {
        eprintln!("report: cannot write the report: {e}");
        return ExitCode::from(2);
    }
    if let Some(window) = fail_if_used_since {
        let cutoff = time::Duration::try_from(window)
            .ok()
            .and_then(|w| now.checked_sub(w))
            .unwrap_or(time::PrimitiveDateTime::MIN.assume_utc());
        let uses = report::uses_since(usage, cutoff);
        if !uses.is_empty() {
            eprint!(
                "deprecated calls were made in the last {}:\n{}",
                humantime::format_duration(window),
                report::render_uses(&uses, now)
            );
            return ExitCode::FAILURE;
        }
        let gaps = report::evidence::ledger_gaps(usage.recorded_since, &ledgers.open, cutoff);
        if !gaps.is_empty() {
            eprintln!(
                "no deprecated call was seen in the last {}, but the evidence is incomplete, \
                 so zero is not proven:",
                humantime::format_duration(window)
            );
            for gap in &gaps {
                eprintln!("  gap: {gap}");
            }
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}

/// The report window of `report --prometheus` without `--since`.
const FLEET_DEFAULT_WINDOW: Duration = Duration::from_secs(7 * 86_400);

/// The token `--token-env` names, or that name when it is not set.
fn report_token(token_env: Option<String>) -> Result<Option<secrecy::SecretString>, String> {
    match token_env {
        None => Ok(None),
        Some(name) => std::env::var(&name)
            .ok()
            .filter(|t| !t.is_empty())
            .map(|t| Some(secrecy::SecretString::from(t)))
            .ok_or(name),
    }
}

/// `report --prometheus`: prints the fleet's report; with a gate, exits 1
/// when calls were seen (naming app, library and sidecar), else 2 when
/// its evidence has gaps (naming each) or Prometheus cannot be asked, 0
/// for a proven zero.
#[tokio::main(flavor = "current_thread")]
async fn fleet_report(
    query: &report::prometheus::FleetQuery,
    token: Option<&secrecy::SecretString>,
    format: ReportFormat,
) -> ExitCode {
    let now = OffsetDateTime::now_utc();
    let now = now.replace_nanosecond(0).unwrap_or(now);
    let fleet = match report::prometheus::fetch(query, token, now).await {
        Ok(f) => f,
        Err(e) => {
            eprintln!("report: {}", ErrorChain(&e));
            return ExitCode::from(2);
        }
    };
    let mut built = report::build_for(&fleet.usage, now, Some(query.since), &fleet.apps);
    built.prometheus = Some(fleet.evidence);
    if let Err(e) = print_out(&format.render(&built)) {
        eprintln!("report: cannot write the report: {e}");
        return ExitCode::from(2);
    }
    match (&fleet.gate, query.gate) {
        (Some(answer), Some(window)) => {
            eprint!("{}", report::prometheus::render_gate(answer, window));
            if !answer.uses.is_empty() {
                ExitCode::FAILURE
            } else if !answer.gaps.is_empty() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        _ => ExitCode::SUCCESS,
    }
}

/// Logs each configured app with its cutover stage, and warns when there
/// is none (then every request passes through unchanged); and warns of
/// each of the configuration's [`Config::cautions`].
fn log_apps(config: &Config) {
    crate::reload::log_cautions(config);
    if config.apps.is_empty() {
        tracing::warn!(
            target: TARGET,
            "no app is configured: every request passes through unchanged, and no deprecated call is translated or recorded"
        );
    }
    for app in &config.apps {
        let sunset = app.sunset.and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        });
        tracing::info!(
            target: TARGET,
            app_id = %app.id,
            mode = app.mode.as_str(),
            rollout_percent = app.rollout_percent,
            brownouts = app.brownouts.len(),
            sunset = sunset.as_deref(),
            "app configured"
        );
    }
}

/// Writes `text` and a newline to stdout. A reader that has gone away
/// (`report … | head`) is no error: what it wanted is written.
fn print_out(text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// `serve`: loads the configuration, binds its listener and serves until
/// SIGTERM or SIGINT, reloading on SIGHUP. The accept loop, admin
/// listener, telemetry flushes and signals run on this one thread (reloads,
/// `/usage` and `/report` on tokio's blocking pool); connections are served
/// by the worker threads that [`crate::http::server`] starts.
///
/// At the end the runtime waits at most [`BLOCKING_GRACE`] for work still
/// on its blocking pool (a reload stuck reading a file): the ledger is
/// written by then, and the process exits rather than hang.
fn serve(path: Option<PathBuf>) -> Result<(), ServeError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    let result = runtime.block_on(serve_on(path));
    runtime.shutdown_timeout(BLOCKING_GRACE);
    result
}

/// How long a stopping `serve` waits for its blocking pool's work.
const BLOCKING_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// [`serve`] on its runtime. It listens for the signals first: until a
/// process listens for SIGHUP, SIGTERM or SIGINT, each ends it at once, and
/// loading, binding and opening the ledger take a while (a `systemctl
/// reload` right after a start would stop the service). A SIGTERM or
/// SIGINT while the configuration is read stops the start
/// ([`ServeError::Stopped`]); one after that, once the proxy runs, stops
/// it cleanly, the ledger written.
async fn serve_on(path: Option<PathBuf>) -> Result<(), ServeError> {
    let mut shutdown = Shutdown::listen();
    #[cfg(unix)]
    let sighup = listen(
        tokio::signal::unix::SignalKind::hangup(),
        "SIGHUP: reload with POST /reload",
    );
    // Read on the blocking pool, so that a SIGTERM or SIGINT while the file
    // cannot be read (a FIFO, a hung network mount) stops the start.
    let loading = tokio::task::spawn_blocking({
        let path = path.clone();
        move || load(path.as_deref())
    });
    let config = tokio::select! {
        loaded = loading => loaded
            .map_err(|e| ServeError::Runtime(std::io::Error::other(e)))?
            .map_err(ServeError::Config)?,
        signal = shutdown.next() => return Err(ServeError::Stopped(signal)),
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
    tracing::info!(
        target: TARGET,
        upstream = %config.upstream.url,
        apps = config.apps.len(),
        version = env!("CARGO_PKG_VERSION"),
        "pusher-cutover starting"
    );
    log_apps(&config);
    let source = match path {
        Some(path) => ConfigSource::File(path),
        None => ConfigSource::Env,
    };
    let options = Options {
        reload: Some(source),
        #[cfg(unix)]
        sighup,
        ..Options::default()
    };
    crate::service::run_with(listener, config, options, shutdown.first())
        .await
        .map_err(ServeError::Run)?;
    tracing::info!(target: TARGET, "stopped");
    Ok(())
}

/// A stream of the signal `kind`; `None`, logged as "cannot listen for
/// `name`", if it cannot be listened for.
#[cfg(unix)]
fn listen(
    kind: tokio::signal::unix::SignalKind,
    name: &str,
) -> Option<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(kind)
        .inspect_err(|e| {
            tracing::error!(target: TARGET, error = %e, "cannot listen for {name}");
        })
        .ok()
}

/// SIGTERM and SIGINT (Ctrl-C), listened for from [`Shutdown::listen`] on.
/// The first starts the graceful shutdown; from then on a second ends the
/// process at once ([`Shutdown::exit_on_second`]).
struct Shutdown {
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
}

impl Shutdown {
    /// Listens for SIGTERM and SIGINT from now on.
    fn listen() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::SignalKind;
            Self {
                terminate: listen(SignalKind::terminate(), "SIGTERM"),
                interrupt: listen(SignalKind::interrupt(), "SIGINT"),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Completes on the first SIGTERM or SIGINT (one received before it
    /// was polled included), then waits for a second in the background.
    async fn first(mut self) {
        let first = self.next().await;
        tracing::info!(target: TARGET, "{} received", first.name());
        tokio::spawn(self.exit_on_second());
    }

    /// The next SIGTERM or SIGINT. A signal that cannot be listened for
    /// never arrives.
    async fn next(&mut self) -> Signal {
        #[cfg(unix)]
        {
            async fn recv(signal: Option<&mut tokio::signal::unix::Signal>) {
                match signal {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                () = recv(self.interrupt.as_mut()) => Signal::Interrupt,
                () = recv(self.terminate.as_mut()) => Signal::Terminate,
            }
        }
        #[cfg(not(unix))]
        {
            if let Err(e) = tokio::signal::ctrl_c().await {
                tracing::error!(target: TARGET, error = %e, "cannot listen for Ctrl-C");
                std::future::pending::<()>().await;
            }
            Signal::Interrupt
        }
    }

    /// Waits for a second SIGTERM or SIGINT during the drain and ends the
    /// process at once with 128 + the signal's number, without waiting for
    /// the requests in flight or writing the ledger a last time: what an
    /// operator asks for by signalling twice. Said on stderr directly, as
    /// the log writer is not flushed by an immediate exit.
    async fn exit_on_second(mut self) {
        let second = self.next().await;
        eprintln!(
            "{} received again during the graceful shutdown: exiting now with status {}, \
             without waiting for requests in flight or writing the usage ledger",
            second.name(),
            second.exit_status()
        );
        std::process::exit(second.exit_status());
    }
}

/// A shutdown signal.
#[derive(Debug, Clone, Copy)]
// Only Ctrl-C is listened for off unix.
#[cfg_attr(not(unix), allow(dead_code))]
enum Signal {
    Interrupt,
    Terminate,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Self::Interrupt => "SIGINT",
            Self::Terminate => "SIGTERM",
        }
    }

    /// The shell's status for a process ended by this signal: 128 + its
    /// number (130 for SIGINT, 143 for SIGTERM).
    fn exit_status(self) -> i32 {
        match self {
            Self::Interrupt => 130,
            Self::Terminate => 143,
        }
    }
}
