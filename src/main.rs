//! The `bbcrawl` binary: parses the command line, sets up logging, runs a
//! command and maps its outcome to an exit code (SPEC section 9). `anyhow`
//! lives here and nowhere else.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand, ValueEnum};

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bbcrawl::actors::{run_pass, PassError, PassObserver, PassOptions};
use bbcrawl::bitbucket::{ApiError, BitbucketClient, ClientOptions};
use bbcrawl::config::{Config, ConfigError, Overrides};
use bbcrawl::daemon;
use bbcrawl::output::{self, Format, OutputError, ShowFormat};
use bbcrawl::progress::{ProgressMode, SyncProgress};
use bbcrawl::query::{self as q, parse_time, CommitFilter, QueryError};
use bbcrawl::record::CommitRecord;
use bbcrawl::remote::{self, Daemon, RemoteError};
use bbcrawl::simulator::SimOptions;
use bbcrawl::store::{Store, StoreError};
use bbcrawl::verify::{self, VerifyReport};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use std::io::Write as _;

/// Exit codes of SPEC section 9; 3, 4 and 5 (`invalid_credentials`,
/// `invalid_permissions`, `no_resources`) are `VerifyCode::exit_code`.
mod exit {
    pub const RUNTIME: u8 = 1;
    pub const USAGE: u8 = 2;
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
    /// The daemon: a sync pass every `interval_seconds`, the HTTP endpoint
    /// on `listen` (/metrics, /healthz, /api/v1/…), graceful stop on
    /// SIGTERM / SIGINT.
    Run {
        /// Workspace to crawl (repeatable); replaces the configured list.
        #[arg(long = "workspace", value_name = "W")]
        workspaces: Vec<String>,
        /// Address of the HTTP endpoint (IP:PORT); also BBCRAWL_LISTEN
        /// (default 127.0.0.1:9490).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },
    /// Crawl the built-in simulator into a fresh store (or --store) and show
    /// the results: no credentials, no network, no configuration.
    Demo,
    /// Questions about the stored commits (no credentials needed).
    Query {
        #[command(subcommand)]
        what: QueryCommand,
    },
    /// The full record of a commit, in every repository that has it.
    Show {
        /// Full hash or a prefix of 7 or more hex digits.
        hash: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ShowFormatArg::Text)]
        format: ShowFormatArg,
    },
    /// Every stored commit, repository by repository.
    Export {
        /// Output format.
        #[arg(long, value_enum, default_value_t = ExportFormat::Ndjson)]
        format: ExportFormat,
        /// Include commits no longer reachable from the default branch.
        #[arg(long)]
        all: bool,
        /// Write to this file (atomically: a temporary file, then rename)
        /// instead of stdout.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
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

#[derive(Subcommand, Debug)]
enum QueryCommand {
    /// Commits, newest first.
    Commits {
        #[command(flatten)]
        filter: FilterArgs,
        #[command(flatten)]
        format: FormatArg,
    },
    /// Repositories with their state and commit counts.
    Repos {
        /// Only this workspace.
        #[arg(long, value_name = "W")]
        workspace: Option<String>,
        #[command(flatten)]
        format: FormatArg,
    },
    /// Authors (account uuid when known, else e-mail) with their commit
    /// counts, most commits first; the filters select the commits counted.
    Authors {
        #[command(flatten)]
        filter: FilterArgs,
        #[command(flatten)]
        format: FormatArg,
    },
    /// Totals of the store.
    Stats {
        #[command(flatten)]
        format: FormatArg,
    },
}

/// The filters of `query commits` and `query authors`.
#[derive(Args, Debug, Clone)]
struct FilterArgs {
    /// Only this workspace.
    #[arg(long, value_name = "W")]
    workspace: Option<String>,
    /// Only this repository slug (repeatable).
    #[arg(long = "repo", value_name = "SLUG")]
    repos: Vec<String>,
    /// Case-insensitive substring of the author's `Name <email>` or display name.
    #[arg(long, value_name = "TEXT")]
    author: Option<String>,
    /// Commits at or after this time (RFC 3339, or YYYY-MM-DD = midnight UTC).
    #[arg(long, value_name = "T", value_parser = parse_time)]
    since: Option<DateTime<Utc>>,
    /// Commits before this time (RFC 3339, or YYYY-MM-DD = midnight UTC).
    #[arg(long, value_name = "T", value_parser = parse_time)]
    until: Option<DateTime<Utc>>,
    /// Case-insensitive substring of the message.
    #[arg(long, value_name = "TEXT")]
    grep: Option<String>,
    /// Include commits no longer reachable from the default branch.
    #[arg(long)]
    all: bool,
    /// At most this many results.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    limit: Option<u64>,
}

impl FilterArgs {
    fn into_filter(self) -> CommitFilter {
        CommitFilter {
            workspace: self.workspace,
            repos: self.repos,
            author: self.author,
            since: self.since,
            until: self.until,
            grep: self.grep,
            all: self.all,
            limit: self.limit.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        }
    }
}

/// `--format` of `query`: table on a terminal, ndjson otherwise.
#[derive(Args, Debug, Clone)]
struct FormatArg {
    /// Output format [default: table on a terminal, else ndjson].
    #[arg(long, value_enum, value_name = "FORMAT")]
    format: Option<QueryFormat>,
}

impl FormatArg {
    fn resolve(&self) -> Format {
        match self.format {
            Some(QueryFormat::Table) => Format::Table,
            Some(QueryFormat::Json) => Format::Json,
            Some(QueryFormat::Ndjson) => Format::Ndjson,
            Some(QueryFormat::Csv) => Format::Csv,
            None if std::io::stdout().is_terminal() => Format::Table,
            None => Format::Ndjson,
        }
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum QueryFormat {
    Table,
    Json,
    Ndjson,
    Csv,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum ShowFormatArg {
    Text,
    Json,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum ExportFormat {
    Ndjson,
    Csv,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.global);
    // The actor system's runtime (a tokio current-thread runtime) runs
    // every command; the writer actor gets its own thread.
    let system = actix::System::new();
    match system.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        // A reader that stopped reading (`| head`) is a normal end.
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            // Error text may quote a server or stored data: never raw to a terminal.
            eprintln!("error: {}", output::printable(&error_text(&err)));
            ExitCode::from(exit_code_for(&err))
        }
    }
}

/// The error and its causes on one line, each cause once: many error types
/// here already name their source in their own message (`"workspace acme:
/// {source}"`), which anyhow's `{:#}` would print a second time.
fn error_text(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// Whether printing stopped because stdout's reader went away.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Maps an error to its exit code, in one place.
fn exit_code_for(err: &anyhow::Error) -> u8 {
    if err.downcast_ref::<ConfigError>().is_some() || err.downcast_ref::<UsageError>().is_some() {
        return exit::USAGE;
    }
    if let Some(StoreError::Locked { .. }) = err.downcast_ref::<StoreError>() {
        return exit::LOCKED;
    }
    match err.downcast_ref::<RemoteError>() {
        Some(RemoteError::NoAnswer { .. }) => return exit::LOCKED,
        Some(RemoteError::BadRequest(_)) => return exit::USAGE,
        Some(_) => return exit::RUNTIME,
        None => {}
    }
    match err.downcast_ref::<QueryError>() {
        Some(QueryError::BadHash(_)) => return exit::USAGE,
        Some(QueryError::Store(StoreError::Locked { .. })) => return exit::LOCKED,
        Some(_) => return exit::RUNTIME,
        None => {}
    }
    let api = match err.downcast_ref::<PassError>() {
        Some(PassError::Api { source, .. }) => Some(source),
        Some(PassError::Store(StoreError::Locked { .. })) => return exit::LOCKED,
        _ => err.downcast_ref::<ApiError>(),
    };
    api.and_then(verify::VerifyCode::of)
        .map_or(exit::RUNTIME, verify::VerifyCode::exit_code)
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
            // sled logs its own view of damage (versions, CRCs) next to
            // the store error bbcrawl reports in plain words: -v shows it.
            0 => "bbcrawl=info,sled=off,warn",
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
    load_config_with(
        g,
        Overrides {
            workspaces,
            ..Overrides::default()
        },
    )
}

/// The configuration with the global flags and a command's own overrides.
fn load_config_with(g: &Global, overrides: Overrides) -> anyhow::Result<Config> {
    let overrides = Overrides {
        config_path: g.config.clone(),
        store: g.store.clone(),
        ..overrides
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
        Command::Run { workspaces, listen } => run_daemon(&cli.global, workspaces, listen).await,
        Command::Demo => demo(&cli.global).await,
        Command::Query { what } => query(&cli.global, what).await,
        Command::Show { hash, format } => show(&cli.global, &hash, format).await,
        Command::Export {
            format,
            all,
            output,
        } => export(&cli.global, format, all, output.as_deref()).await,
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
    // This process holds the store: no daemon of it runs.
    daemon::clear_stale_address(&cfg.store);
    let client = BitbucketClient::new(ClientOptions::from_config(&cfg))?;
    let progress = SyncProgress::start(progress_mode(g), client.clone());
    let observer: Arc<dyn PassObserver> = progress.clone();
    let opts = pass_options(&cfg, repos, full);
    let stop = Arc::new(AtomicBool::new(false));
    // SIGTERM / SIGINT stop the pass the way they stop the daemon's: no new
    // pages, pages in flight are stored, the writer flushes; the exit code
    // says which signal (SPEC section 9) and the next sync resumes.
    let signal = daemon::shutdown_signal()?;
    let pass = run_pass(
        client,
        Arc::clone(&store),
        opts,
        observer,
        Arc::clone(&stop),
    );
    tokio::pin!(pass);
    let (result, stopped_by) = tokio::select! {
        r = &mut pass => (r, None),
        which = signal => {
            stop.store(true, Ordering::Relaxed);
            match tokio::time::timeout(daemon::DRAIN_DEADLINE, &mut pass).await {
                Ok(r) => (r, Some(which)),
                Err(_) => {
                    // A request stuck behind a 429 pause or a stall: every
                    // stored page is atomic, so flush and leave.
                    tracing::warn!("the pass did not stop within {:?}; flushing what was stored and leaving", daemon::DRAIN_DEADLINE);
                    progress.finish();
                    let flushed = tokio::task::spawn_blocking(move || store.flush()).await;
                    if let Ok(Err(e)) = flushed {
                        return Err(e.into());
                    }
                    return Ok(which.exit_code());
                }
            }
        }
    };
    progress.finish();
    let summary = result?;
    if !g.quiet {
        println!("{}", summary.line());
        for f in &summary.failures {
            println!("  failed: {}", output::printable(f));
        }
    }
    Ok(match stopped_by {
        Some(which) => which.exit_code(),
        None if summary.failed > 0 => exit::SOME_FAILED,
        None => 0,
    })
}

/// What a pass covers, from the configuration.
fn pass_options(cfg: &Config, only: Vec<String>, full: bool) -> PassOptions {
    PassOptions {
        workspaces: cfg.workspaces.clone(),
        slugs: cfg.slugs.clone(),
        only,
        full,
        since: cfg.since,
        concurrency: cfg.max_in_flight.saturating_mul(2).max(2),
        audit_interval: cfg.audit_interval,
    }
}

/// `bbcrawl run` (see `bbcrawl::daemon`).
async fn run_daemon(
    g: &Global,
    workspaces: Vec<String>,
    listen: Option<String>,
) -> anyhow::Result<u8> {
    let cfg = load_config_with(
        g,
        Overrides {
            workspaces,
            listen,
            ..Overrides::default()
        },
    )?;
    require_api_config(&cfg)?;
    // Signals first: a SIGTERM during start-up then stops the daemon
    // gracefully instead of killing it.
    let shutdown = daemon::shutdown_signal()?;
    let metrics = bbcrawl::telemetry::install()?;
    let store = Arc::new(Store::open(&cfg.store)?);
    let client = BitbucketClient::new(ClientOptions::from_config(&cfg))?;
    let mode = if g.quiet {
        ProgressMode::Silent
    } else {
        ProgressMode::Lines
    };
    let observer: Arc<dyn PassObserver> = SyncProgress::start(mode, client.clone());
    let opts = daemon::DaemonOptions {
        listen: cfg.listen,
        interval: cfg.interval,
        pass: pass_options(&cfg, Vec::new(), false),
        observer,
    };
    match daemon::run(client, store, opts, metrics, shutdown).await {
        Ok(()) => Ok(0),
        // Unwrapped so that `exit_code_for` sees the pass error itself.
        Err(daemon::DaemonError::Pass(e)) => Err(e.into()),
        Err(e) => Err(e.into()),
    }
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

/// Where a query is answered: the store itself, or the daemon holding it.
enum Source {
    Local(Store),
    Remote(Daemon),
}

/// Opens an existing store for a query (never creates one); when another
/// process holds it, the daemon recorded in it answers instead.
fn open_source(g: &Global) -> anyhow::Result<Source> {
    let cfg = load_config(g, Vec::new())?;
    match Store::open_existing(&cfg.store) {
        Ok(store) => Ok(Source::Local(store)),
        Err(StoreError::Locked { .. }) => Ok(Source::Remote(Daemon::locate(&cfg.store)?)),
        Err(e) => Err(e.into()),
    }
}

fn api_format(f: Format) -> &'static str {
    match f {
        Format::Json | Format::Table => "json",
        Format::Ndjson => "ndjson",
        Format::Csv => "csv",
    }
}

/// Answers a query through the daemon: its bytes for json/ndjson/csv, a
/// table rendered here from its json rows.
async fn remote_rows<
    T: serde::de::DeserializeOwned + output::Tabular + serde::Serialize,
    W: std::io::Write,
>(
    daemon: &Daemon,
    path: &str,
    mut params: Vec<(String, String)>,
    format: Format,
    out: &mut W,
) -> anyhow::Result<()> {
    params.push(("format".into(), api_format(format).into()));
    if format == Format::Table {
        let rows: Vec<T> = daemon.json(path, &params).await?;
        output::write_rows(
            out,
            format,
            output::terminal_width(),
            rows.into_iter().map(Ok),
        )
        .map_err(output_error)?;
    } else {
        daemon.stream_to(path, &params, out).await?;
    }
    Ok(())
}

/// Unwraps a printing error so that `exit_code_for` and `is_broken_pipe`
/// see the io or query error itself.
fn output_error(e: OutputError) -> anyhow::Error {
    match e {
        OutputError::Io(e) => e.into(),
        OutputError::Query(e) => e.into(),
    }
}

async fn query(g: &Global, what: QueryCommand) -> anyhow::Result<u8> {
    let source = open_source(g)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let width = output::terminal_width();
    let store = match source {
        Source::Local(store) => store,
        Source::Remote(daemon) => {
            match what {
                QueryCommand::Commits { filter, format } => {
                    let params = remote::filter_params(&filter.into_filter());
                    remote_rows::<CommitRecord, _>(
                        &daemon,
                        "/api/v1/commits",
                        params,
                        format.resolve(),
                        &mut out,
                    )
                    .await?
                }
                QueryCommand::Repos { workspace, format } => {
                    let params = workspace
                        .into_iter()
                        .map(|w| ("workspace".to_owned(), w))
                        .collect();
                    remote_rows::<q::RepoRow, _>(
                        &daemon,
                        "/api/v1/repos",
                        params,
                        format.resolve(),
                        &mut out,
                    )
                    .await?
                }
                QueryCommand::Authors { filter, format } => {
                    let params = remote::filter_params(&filter.into_filter());
                    remote_rows::<q::AuthorRow, _>(
                        &daemon,
                        "/api/v1/authors",
                        params,
                        format.resolve(),
                        &mut out,
                    )
                    .await?
                }
                QueryCommand::Stats { format } => {
                    let format = format.resolve();
                    let params = vec![("format".to_owned(), api_format(format).to_owned())];
                    if format == Format::Table {
                        let stats: Vec<q::Stats> = daemon.json("/api/v1/stats", &params).await?;
                        for s in stats {
                            output::write_stats(&mut out, format, width, s)
                                .map_err(output_error)?;
                        }
                    } else {
                        daemon.stream_to("/api/v1/stats", &params, &mut out).await?;
                    }
                }
            }
            out.flush()?;
            return Ok(0);
        }
    };
    let printed = match what {
        QueryCommand::Commits { filter, format } => {
            let filter = filter.into_filter();
            let rows = q::commits(&store, &filter)?;
            output::write_rows(&mut out, format.resolve(), width, rows)
        }
        QueryCommand::Repos { workspace, format } => {
            let rows = q::repos(&store, workspace.as_deref())?;
            output::write_rows(&mut out, format.resolve(), width, rows.into_iter().map(Ok))
        }
        QueryCommand::Authors { filter, format } => {
            let rows = q::authors(&store, &filter.into_filter())?;
            output::write_rows(&mut out, format.resolve(), width, rows.into_iter().map(Ok))
        }
        QueryCommand::Stats { format } => {
            let stats = q::stats(&store)?;
            output::write_stats(&mut out, format.resolve(), width, stats)
        }
    };
    printed.map_err(output_error)?;
    Ok(0)
}

async fn show(g: &Global, hash: &str, format: ShowFormatArg) -> anyhow::Result<u8> {
    let store = match open_source(g)? {
        Source::Local(store) => store,
        Source::Remote(daemon) => {
            let format = match format {
                ShowFormatArg::Text => "text",
                ShowFormatArg::Json => "json",
            };
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            // The hash is a path segment: only hex digits get this far on
            // the daemon's side, and anything else is refused there.
            let path = format!(
                "/api/v1/show/{}",
                utf8_percent_encode(hash, NON_ALPHANUMERIC)
            );
            daemon
                .stream_to(&path, &[("format".into(), format.into())], &mut out)
                .await?;
            return Ok(0);
        }
    };
    let records = q::show(&store, hash)?;
    let format = match format {
        ShowFormatArg::Text => ShowFormat::Text,
        ShowFormatArg::Json => ShowFormat::Json,
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    output::write_show(&mut out, format, &records).map_err(output_error)?;
    Ok(0)
}

/// Export writes in large chunks: fewer syscalls for a million records.
const EXPORT_BUFFER: usize = 1 << 16;

async fn export(
    g: &Global,
    format: ExportFormat,
    all: bool,
    path: Option<&std::path::Path>,
) -> anyhow::Result<u8> {
    // Decided before anything is read: a bad --output is a usage error.
    let target = path.map(export_target).transpose()?;
    let source = open_source(g)?;
    let format = match format {
        ExportFormat::Ndjson => Format::Ndjson,
        ExportFormat::Csv => Format::Csv,
    };
    match target {
        None => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::with_capacity(EXPORT_BUFFER, stdout.lock());
            export_rows(&source, all, format, &mut out).await?;
        }
        Some(ExportTarget::Stream(path)) => {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            let mut out = std::io::BufWriter::with_capacity(EXPORT_BUFFER, file);
            export_rows(&source, all, format, &mut out)
                .await
                .and_then(|()| Ok(out.flush()?))
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Some(ExportTarget::Replace { path, mode }) => {
            // A temporary file beside the target, renamed over it when
            // complete: readers see the old file or the new one, never half.
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            };
            let tmp = tempfile::Builder::new()
                .prefix(".bbcrawl-export-")
                .tempfile_in(&dir)
                .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
            let mut out = std::io::BufWriter::with_capacity(EXPORT_BUFFER, tmp);
            export_rows(&source, all, format, &mut out)
                .await
                .with_context(|| format!("cannot write {}", path.display()))?;
            let tmp = out
                .into_inner()
                .map_err(|e| e.into_error())
                .with_context(|| format!("cannot write {}", path.display()))?;
            tmp.as_file()
                .sync_all()
                .with_context(|| format!("cannot write {}", path.display()))?;
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(mode))
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            tmp.persist(&path)
                .map_err(|e| e.error)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    Ok(0)
}

/// Every stored commit, from the store or the daemon holding it, to `out`.
async fn export_rows(
    source: &Source,
    all: bool,
    format: Format,
    mut out: &mut dyn std::io::Write,
) -> anyhow::Result<()> {
    match source {
        Source::Local(store) => {
            let rows = q::export(store, all)?;
            output::write_rows(&mut out, format, usize::MAX, rows).map_err(output_error)?;
        }
        Source::Remote(daemon) => {
            let params = vec![
                ("all".to_owned(), all.to_string()),
                ("format".to_owned(), api_format(format).to_owned()),
            ];
            daemon.stream_to("/api/v1/export", &params, out).await?
        }
    }
    Ok(())
}

/// How `export --output PATH` writes.
enum ExportTarget {
    /// A regular file, or a path that does not exist yet: written to a
    /// temporary file beside it and renamed over it. `path` has symbolic
    /// links resolved, so a link stays a link and its target is replaced.
    Replace {
        /// The file to replace or create.
        path: PathBuf,
        /// Its mode: the existing file's, else 0600 (an export holds the
        /// same data as the store, e-mails included).
        mode: u32,
    },
    /// A FIFO, a character device (`/dev/stdout`, `/dev/null`) or a
    /// socket: written into as it is, never replaced.
    Stream(PathBuf),
}

/// Decides how to write `path`; a directory, a block device or a dangling
/// symbolic link is a usage error (exit 2).
fn export_target(path: &std::path::Path) -> anyhow::Result<ExportTarget> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let shown = path.display();
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(ExportTarget::Replace {
            path: std::fs::canonicalize(path).with_context(|| format!("cannot resolve {shown}"))?,
            mode: m.permissions().mode() & 0o7777,
        }),
        Ok(m) if m.is_dir() => {
            Err(UsageError(format!("--output {shown} is a directory; name a file")).into())
        }
        Ok(m) if m.file_type().is_block_device() => Err(UsageError(format!(
            "--output {shown} is a block device; refusing to write an export over a disk"
        ))
        .into()),
        Ok(_) => Ok(ExportTarget::Stream(path.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if std::fs::symlink_metadata(path).is_ok() {
                return Err(UsageError(format!(
                    "--output {shown} is a symbolic link to nothing; name a file"
                ))
                .into());
            }
            Ok(ExportTarget::Replace {
                path: path.to_path_buf(),
                mode: 0o600,
            })
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("cannot use --output {shown}"))),
    }
}
