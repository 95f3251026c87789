//! The `pusher-cutover` binary: parses the command line, loads the config,
//! sets up logging and runs the library. Wiring only.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use pusher_cutover::config::{self, Config, ConfigError};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { config } => validate(&config),
        Command::Serve { config } => {
            init_logging(cli.log_format);
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

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

#[tokio::main]
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
    pusher_cutover::run(listener, config, shutdown_signal()).await;
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
