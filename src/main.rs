//! The `bbcrawl` binary: parses the command line, sets up logging, runs a
//! command and maps its outcome to an exit code (SPEC section 9). `anyhow`
//! lives here and nowhere else.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

use std::io::IsTerminal;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use bbcrawl::actors::{run_pass, PassError, PassObserver, PassOptions};
use bbcrawl::bitbucket::{ApiError, BitbucketClient, ClientOptions};
use bbcrawl::config::{Config, ConfigError, Overrides};
use bbcrawl::progress::{ProgressMode, SyncProgress};
use bbcrawl::simulator::SimOptions;
use bbcrawl::store::{Store, StoreError};
use bbcrawl::verify::{self, VerifyReport};

/// Exit codes of SPEC section 9.
mod exit {
    pub const RUNTIME: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const INVALID_CREDENTIALS: u8 = 3;
    pub const INVALID_PERMISSIONS: u8 = 4;
    pub const NO_RESOURCES: u8 = 5;
    pub const SOME_FAILED: u8 = 6;
    pub const LOCKED: u8 = 7;
}

/// Copies the default-branch commit history of a Bitbucket Cloud workspace
/// into an embedded store.
#[derive(Parser, Debug)]
#[command(name = "bbcrawl", version, about, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Options every command takes.
#[derive(Args, Debug, Clone)]
struct Global {
    /// Configuration file (TOML); also BBCRAWL_CONFIG.
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Store directory; also BBCRAWL_STORE (default ./bbcrawl-data).
    #[arg(long, global = true, value_name = "DIR")]
    store: Option<PathBuf>,
    /// More log output (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum ReportFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check the connection the way DX does: list each workspace's
    /// repositories and read one page of default-branch commits.
    Verify {
        /// Workspace to check (repeatable); replaces the configured list.
        #[arg(long = "workspace", value_name = "W")]
        workspaces: Vec<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
        format: ReportFormat,
    },
    /// One pass over every repository (incremental), then exit.
    Sync {
        /// Workspace to crawl (repeatable); replaces the configured list.
        #[arg(long = "workspace", value_name = "W")]
        workspaces: Vec<String>,
        /// Only this repository slug (repeatable).
        #[arg(long = "repo", value_name = "SLUG")]
        repos: Vec<String>,
        /// Re-walk every default branch from the top (idempotent).
        #[arg(long)]
        full: bool,
    },
    /// Crawl the built-in simulator into a fresh store (or --store) and show
    /// the results: no credentials, no network, no configuration.
    Demo,
    /// Serve the Bitbucket API simulator and print how to use it.
    Simulate {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7990")]
        listen: SocketAddr,
        /// Generated repositories in the workspace.
        #[arg(long, default_value_t = 12)]
        repos: usize,
        /// Commits on a typical default branch.
        #[arg(long, default_value_t = 300)]
        commits: usize,
        /// Seed of the generated world.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Rolling one-hour limit per credential (0 = unlimited).
        #[arg(long, default_value_t = 1000)]
        requests_per_hour: u32,
        /// Probability (0..=1) of a random transient fault per request.
        #[arg(long, default_value_t = 0.0)]
        fault_rate: f64,
        /// Latency added to every answer, in milliseconds.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.global);
    // The actor system's runtime (a tokio current-thread runtime) runs
    // every command; the writer actor gets its own thread.
    let system = actix::System::new();
    match system.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(exit_code_for(&err))
        }
    }
}

/// Maps an error to its exit code, in one place.
fn exit_code_for(err: &anyhow::Error) -> u8 {
    if err.downcast_ref::<ConfigError>().is_some() || err.downcast_ref::<UsageError>().is_some() {
        return exit::USAGE;
    }
    if let Some(StoreError::Locked { .. }) = err.downcast_ref::<StoreError>() {
        return exit::LOCKED;
    }
    let api = match err.downcast_ref::<PassError>() {
        Some(PassError::Api { source, .. }) => Some(source),
        Some(PassError::Store(StoreError::Locked { .. })) => return exit::LOCKED,
        Some(PassError::Glob { .. }) => return exit::USAGE,
        _ => err.downcast_ref::<ApiError>(),
    };
    match api {
        Some(ApiError::InvalidCredentials { .. }) => exit::INVALID_CREDENTIALS,
        Some(ApiError::InvalidPermissions { .. }) => exit::INVALID_PERMISSIONS,
        Some(ApiError::NotFound { .. }) | Some(ApiError::Rejected { status: 410, .. }) => {
            exit::NO_RESOURCES
        }
        _ => exit::RUNTIME,
    }
}

/// A command line that parses but cannot be acted on (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

fn init_logging(g: &Global) {
    use tracing_subscriber::EnvFilter;
    let default = if g.quiet {
        "error"
    } else {
        match g.verbose {
            0 => "bbcrawl=info,warn",
            1 => "bbcrawl=debug,info",
            _ => "trace",
        }
    };
    let filter = EnvFilter::try_from_env("BBCRAWL_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match g.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn load_config(g: &Global, workspaces: Vec<String>) -> anyhow::Result<Config> {
    let overrides = Overrides {
        config_path: g.config.clone(),
        store: g.store.clone(),
        workspaces,
        ..Overrides::default()
    };
    let cfg = Config::load(&overrides)?;
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    Ok(cfg)
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Verify { workspaces, format } => {
            let cfg = load_config(&cli.global, workspaces)?;
            require_api_config(&cfg)?;
            let report = verify::verify(&ClientOptions::from_config(&cfg), &cfg.workspaces).await;
            print_report(&report, format);
            Ok(report.exit_code())
        }
        Command::Sync {
            workspaces,
            repos,
            full,
        } => sync(&cli.global, workspaces, repos, full).await,
        Command::Demo => demo(&cli.global).await,
        Command::Simulate {
            listen,
            repos,
            commits,
            seed,
            requests_per_hour,
            fault_rate,
            latency_ms,
        } => {
            if !(0.0..=1.0).contains(&fault_rate) {
                return Err(UsageError(format!(
                    "--fault-rate must be between 0 and 1 (got {fault_rate})"
                ))
                .into());
            }
            let opts = SimOptions {
                seed,
                repos,
                commits,
                requests_per_hour,
                fault_rate,
                latency: Duration::from_millis(latency_ms),
                ..SimOptions::default()
            };
            bbcrawl::simulator::run_simulate(opts, listen)
                .await
                .with_context(|| format!("cannot serve the simulator on {listen}"))?;
            Ok(0)
        }
    }
}

fn print_report(report: &VerifyReport, format: ReportFormat) {
    match format {
        ReportFormat::Json => println!("{}", report.to_json()),
        ReportFormat::Text => print!("{}", report.to_text()),
    }
}

fn progress_mode(g: &Global) -> ProgressMode {
    if g.quiet {
        ProgressMode::Silent
    } else if std::io::stderr().is_terminal() && g.log_format == LogFormat::Text {
        ProgressMode::Bar
    } else {
        ProgressMode::Lines
    }
}

fn require_api_config(cfg: &Config) -> anyhow::Result<()> {
    if cfg.workspaces.is_empty() {
        return Err(UsageError(
            "no workspace configured: set `workspaces` in the config file, BBCRAWL_WORKSPACES, or pass --workspace".into(),
        )
        .into());
    }
    if cfg.credentials.is_empty() {
        return Err(UsageError(
            "no credentials configured: set BITBUCKET_ACCESS_TOKEN, or BITBUCKET_USERNAME + BITBUCKET_API_TOKEN, or [[credentials]] in the config file".into(),
        )
        .into());
    }
    Ok(())
}

async fn sync(
    g: &Global,
    workspaces: Vec<String>,
    repos: Vec<String>,
    full: bool,
) -> anyhow::Result<u8> {
    let cfg = load_config(g, workspaces)?;
    require_api_config(&cfg)?;
    let store = Arc::new(Store::open(&cfg.store)?);
    let client = BitbucketClient::new(ClientOptions::from_config(&cfg))?;
    let progress = Arc::new(SyncProgress::new(progress_mode(g), client.clone()));
    let observer: Arc<dyn PassObserver> = progress.clone();
    let opts = PassOptions {
        workspaces: cfg.workspaces.clone(),
        include: cfg.include.clone(),
        exclude: cfg.exclude.clone(),
        only: repos,
        full,
        since: cfg.since,
        concurrency: cfg.max_in_flight.saturating_mul(2).max(2),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let result = run_pass(client, store, opts, observer, stop).await;
    progress.finish();
    let summary = result?;
    if !g.quiet {
        println!("{}", summary.line());
        for f in &summary.failures {
            println!("  failed: {f}");
        }
    }
    Ok(if summary.failed > 0 {
        exit::SOME_FAILED
    } else {
        0
    })
}

/// The whole pipeline against the built-in simulator (see `bbcrawl::demo`).
async fn demo(g: &Global) -> anyhow::Result<u8> {
    let dir = match &g.store {
        Some(d) => d.clone(),
        None => {
            bbcrawl::demo::fresh_store_dir().context("cannot create a temporary store directory")?
        }
    };
    let observer: Arc<dyn PassObserver> = Arc::new(bbcrawl::actors::Quiet);
    let mut out = std::io::stdout();
    bbcrawl::demo::run(&dir, &mut out, observer).await?;
    Ok(0)
}
