//! The `pusher-cutover` binary: parses the command line, loads the config,
//! sets up logging and runs the library. Wiring only.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use std::time::Duration;

use pusher_cutover::config::{self, Config, ConfigError};
use pusher_cutover::error::ErrorChain;
use pusher_cutover::logging;
use pusher_cutover::telemetry::report;
use pusher_cutover::telemetry::sources::{self, Source};
use pusher_cutover::{ConfigSource, Options};
use time::OffsetDateTime;
use tokio::net::TcpListener;

/// A sidecar that serves Pusher's deprecated HTTP API calls (channel stats,
/// per-channel trigger) in front of a current-API server, and records who
/// still makes them.
#[derive(Debug, Parser)]
#[command(name = "pusher-cutover", version, about)]
struct Cli {
    /// Log format: human-readable text or one JSON object per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

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
    Serve {
        /// TOML configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Check a configuration file; list every problem and exit 1 if any.
    Validate {
        /// TOML configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Report who still makes deprecated calls, from one or more ledgers
    /// (merged). Exits 1 with --fail-if-used-since when calls were seen in
    /// that window, 2 when a ledger cannot be read.
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
        /// Only calls in this window, e.g. 7d, 24h (default: everything kept).
        #[arg(long)]
        since: Option<humantime::Duration>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
        format: ReportFormat,
        /// Exit 1 if any deprecated call was seen in this window, e.g. 24h.
        #[arg(long, value_name = "WINDOW")]
        fail_if_used_since: Option<humantime::Duration>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ReportFormat {
    Table,
    Json,
    Html,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { config } => validate(&config),
        Command::Report {
            config,
            data_dirs,
            urls,
            since,
            format,
            fail_if_used_since,
        } => {
            let sources = match report_sources(config, data_dirs, urls) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("report: {e:#}");
                    return ExitCode::from(2);
                }
            };
            report(
                &sources,
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
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn load(path: Option<&PathBuf>) -> Result<Config, ConfigError> {
    match path {
        Some(path) => Config::from_file(path, &config::process_env),
        None => Config::from_env(&config::process_env),
    }
}

fn validate(path: &PathBuf) -> ExitCode {
    match load(Some(path)) {
        Ok(config) => {
            println!(
                "{}: valid ({} app(s), upstream {})",
                path.display(),
                config.apps.len(),
                config.upstream.url
            );
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

fn report_sources(
    config: Option<PathBuf>,
    data_dirs: Vec<PathBuf>,
    urls: Vec<hyper::Uri>,
) -> anyhow::Result<Vec<Source>> {
    let mut sources: Vec<Source> = data_dirs.into_iter().map(Source::DataDir).collect();
    sources.extend(urls.into_iter().map(Source::Url));
    if let Some(path) = config {
        let config = load(Some(&path)).with_context(|| format!("loading {}", path.display()))?;
        let dir = config
            .telemetry
            .data_dir
            .with_context(|| format!("{} has no [telemetry] data_dir", path.display()))?;
        sources.push(Source::DataDir(dir));
    }
    anyhow::ensure!(
        !sources.is_empty(),
        "nothing to read: give --config (with [telemetry] data_dir), --data-dir or --url"
    );
    Ok(sources)
}

#[tokio::main(flavor = "current_thread")]
async fn report(
    sources: &[Source],
    since: Option<Duration>,
    format: ReportFormat,
    fail_if_used_since: Option<Duration>,
) -> ExitCode {
    let usage = match sources::load(sources).await {
        Ok(u) => u,
        Err(e) => {
            eprintln!("report: {}", ErrorChain(&e));
            return ExitCode::from(2);
        }
    };
    let now = OffsetDateTime::now_utc();
    let built = report::build(&usage, now, since);
    let text = match format {
        ReportFormat::Table => report::render_table(&built),
        ReportFormat::Json => report::render_json(&built),
        ReportFormat::Html => report::render_html(&built),
    };
    println!("{text}");
    if let Some(window) = fail_if_used_since {
        let cutoff = now - window;
        if report::used_since(&usage, cutoff) {
            eprintln!(
                "deprecated calls were made in the last {}",
                humantime::format_duration(window)
            );
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// The accept loop, admin listener, telemetry flushes and signals run on
/// this one thread; connections are served by the worker threads that
/// [`pusher_cutover::server`] starts.
#[tokio::main(flavor = "current_thread")]
async fn serve(path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = load(path.as_ref()).context("loading configuration")?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    tracing::info!(
        upstream = %config.upstream.url,
        apps = config.apps.len(),
        version = env!("CARGO_PKG_VERSION"),
        "pusher-cutover starting"
    );
    let source = match path {
        Some(path) => ConfigSource::File(path),
        None => ConfigSource::Env,
    };
    let options = Options {
        reload: Some(source),
        reload_on_sighup: true,
        ..Options::default()
    };
    pusher_cutover::run_with(listener, config, options, shutdown_signal())
        .await
        .context("starting")?;
    tracing::info!("stopped");
    Ok(())
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}
