//! The `bbcrawl` binary: parses the command line, sets up logging, runs a
//! command and maps its outcome to an exit code (SPEC section 9). `anyhow`
//! lives here and nowhere else.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

use bbcrawl::bitbucket::{ApiError, ClientOptions};
use bbcrawl::config::{Config, ConfigError, Overrides};
use bbcrawl::simulator::{SimOptions, Simulator};
use bbcrawl::verify::{self, VerifyReport};

/// Exit codes of SPEC section 9.
mod exit {
    pub const RUNTIME: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const INVALID_CREDENTIALS: u8 = 3;
    pub const INVALID_PERMISSIONS: u8 = 4;
    pub const NO_RESOURCES: u8 = 5;
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
    /// Run against the built-in simulator, with no credentials and no network.
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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::RUNTIME);
        }
    };
    match runtime.block_on(run(cli)) {
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
    match err.downcast_ref::<ApiError>() {
        Some(ApiError::InvalidCredentials { .. }) => exit::INVALID_CREDENTIALS,
        Some(ApiError::InvalidPermissions { .. }) => exit::INVALID_PERMISSIONS,
        Some(ApiError::NotFound { .. }) => exit::NO_RESOURCES,
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
            let report = verify::verify(&ClientOptions::from_config(&cfg), &cfg.workspaces).await;
            print_report(&report, format);
            Ok(report.exit_code())
        }
        Command::Demo => demo().await,
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

/// Until the crawl lands, the demo shows `verify` against the built-in
/// simulator: the connection checks with each credential kind, and what a
/// scope error looks like.
async fn demo() -> anyhow::Result<u8> {
    use bbcrawl::config::{Credential, Secret};
    let sim = Simulator::demo(SimOptions::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot bind the simulator to loopback")?;
    let server = sim
        .serve(listener)
        .await
        .context("cannot start the simulator")?;
    let api = url::Url::parse(&server.api_url()).context("simulator URL")?;
    let workspaces = vec![SimOptions::default().workspace];
    println!("bbcrawl demo: the built-in Bitbucket simulator is serving {api}");
    println!("(the crawl is not built yet; this demo runs `bbcrawl verify` against it)\n");
    let cases = [
        (
            "access token",
            Credential::AccessToken {
                token: Secret::new("sim-access-token"),
            },
        ),
        (
            "API token",
            Credential::ApiToken {
                email: "dev@example.com".into(),
                token: Secret::new("sim-api-token"),
            },
        ),
        (
            "app password (legacy)",
            Credential::AppPassword {
                username: "sim-user".into(),
                password: Secret::new("sim-app-password"),
            },
        ),
        (
            "access token without the repository scope",
            Credential::AccessToken {
                token: Secret::new("sim-noscope-token"),
            },
        ),
    ];
    for (what, cred) in cases {
        println!("$ bbcrawl verify   # with an {what}");
        let report =
            verify::verify(&ClientOptions::new(api.clone(), vec![cred]), &workspaces).await;
        print!("{}", report.to_text());
        println!("(exit code {})\n", report.exit_code());
    }
    server.shutdown().await;
    Ok(0)
}
