//! The command line: clap's types, one function per command, and the one
//! error type whose `exit_code` the binary exits with. Each command builds
//! what the library needs and calls it; nothing here knows HTTP, sled or
//! actix.

mod ask;
mod crawl;
mod hooks;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use bbcrawl::actors::PassError;
use bbcrawl::bitbucket::{ApiError, ClientOptions};
use bbcrawl::config::{Config, ConfigError, Overrides};
use bbcrawl::daemon::DaemonError;
use bbcrawl::exit;
use bbcrawl::query::{CommitFilter, Format};
use bbcrawl::simulator::SimOptions;
use bbcrawl::source::SourceError;
use bbcrawl::store::StoreError;
use bbcrawl::telemetry::TelemetryError;
use bbcrawl::verify;

/// Copies the default-branch commit history of a Bitbucket Cloud workspace
/// into an embedded store.
#[derive(Parser, Debug)]
#[command(name = "bbcrawl", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Options every command takes.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Configuration file (TOML); also BBCRAWL_CONFIG.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Store directory; also BBCRAWL_STORE (default ./bbcrawl-data).
    #[arg(long, global = true, value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// More log output (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum ReportFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum StoreCommand {
    /// Read every block and check what is derived from them (summaries,
    /// repository counts, totals, author aggregates and postings) and that
    /// no saved position is ahead of the stored commits; exit 0 healthy,
    /// 1 damaged.
    Check {
        /// Report format.
        #[arg(long, value_name = "FORMAT", default_value = "text")]
        format: ReportFormat,
    },
    /// Keep every readable block, rebuild summaries, counts, author data
    /// and totals from the blocks, and make the next `sync` fetch again
    /// what was lost (it says which repositories, and the requests).
    Repair {
        /// Report format.
        #[arg(long, value_name = "FORMAT", default_value = "text")]
        format: ReportFormat,
    },
    /// A consistent point-in-time copy of the store in DEST (a new or
    /// empty directory), made between pages (by the daemon when `bbcrawl
    /// run` holds the store).
    Backup {
        /// Directory for the copy (new or empty).
        dest: PathBuf,
    },
    /// Makes the backup in SRC the store (`--store`, which must be new or
    /// empty: no store is overwritten); a restored store resumes crawling
    /// where the backup was taken.
    Restore {
        /// A directory `bbcrawl store backup` wrote.
        src: PathBuf,
    },
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
        /// Crawl only the repositories of shard I of N (I from 0), by a hash
        /// of their uuid; also BBCRAWL_SHARD or `shard`.
        #[arg(long, value_name = "I/N")]
        shard: Option<String>,
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
        /// The endpoint's TLS and basic auth, in the Prometheus exporter
        /// toolkit's web-config format (YAML); also BBCRAWL_WEB_CONFIG_FILE
        /// or `web_config_file`.
        #[arg(long = "web.config.file", value_name = "FILE")]
        web_config_file: Option<std::path::PathBuf>,
        /// Crawl only the repositories of shard I of N (I from 0), by a hash
        /// of their uuid; also BBCRAWL_SHARD (or BBCRAWL_SHARDS with
        /// BBCRAWL_SHARD_INDEX or JOB_COMPLETION_INDEX) or `shard`.
        #[arg(long, value_name = "I/N")]
        shard: Option<String>,
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
        #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = FormatChoice(&[Format::Text, Format::Json]))]
        format: Format,
    },
    /// Every stored commit, repository by repository (each in hash order).
    ///
    /// `--format parquet` writes typed columns to `--output FILE` (never to
    /// stdout or a pipe): workspace, repo, repo_uuid, branch, hash (STRING);
    /// date (TIMESTAMP in microseconds, UTC), date_nanos and
    /// date_offset_minutes (INT32: the offset Bitbucket sent); author_raw,
    /// author_name, author_email, author_uuid, author_account_id,
    /// author_display_name, committer_raw, committer_name, committer_email
    /// (STRING, null when absent); message (STRING); parents
    /// (LIST<STRING>); reachable (BOOLEAN). With --changes, each row starts
    /// with feed, seq (INT64) and kind, and a repository event is a row
    /// with workspace, repo and repo_uuid, event_from and event_to, and the
    /// commit columns null. README, "Parquet", has the details.
    Export {
        /// Output format (`parquet`: with --output FILE).
        #[arg(long, value_name = "FORMAT", default_value = "ndjson", value_parser = FormatChoice(&[Format::Ndjson, Format::Csv, Format::Parquet]))]
        format: Format,
        /// Include commits no longer reachable from the default branch.
        #[arg(long)]
        all: bool,
        /// Write to this file (atomically: a temporary file, then rename)
        /// instead of stdout.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
        /// The change feed instead: every change (commit stored, unreachable,
        /// reachable again; repository renamed, deleted, restored, default
        /// branch changed) after a sequence number, in order, as NDJSON (with
        /// --format parquet, as one Parquet file per batch).
        #[arg(long, conflicts_with = "all")]
        changes: bool,
        /// With --changes: the changes after this sequence number (default 0:
        /// all).
        #[arg(
            long,
            value_name = "SEQ",
            requires = "changes",
            conflicts_with = "cursor"
        )]
        after: Option<u64>,
        /// With --changes: read the last sequence number loaded from FILE,
        /// and once every line is written and flushed, replace FILE with the
        /// new one (atomically). Missing: from the start.
        #[arg(long, value_name = "FILE", requires = "changes")]
        cursor: Option<PathBuf>,
        /// With --changes: at most N changes.
        #[arg(long, value_name = "N", requires = "changes", value_parser = clap::value_parser!(u64).range(1..))]
        limit: Option<u64>,
    },
    /// The store itself: check it, repair it, back it up, restore a backup.
    Store {
        #[command(subcommand)]
        what: StoreCommand,
    },
    /// Bitbucket `repo:push` webhooks: commits in the store seconds after
    /// a push (the daemon's `hooks_listen` receives them).
    Hooks {
        #[command(subcommand)]
        what: HooksCommand,
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
pub enum HooksCommand {
    /// Create (or update: one per URL) the workspace webhook for
    /// `repo:push` with a fresh secret, written to `hooks_secret_file`
    /// (0600). Needs a credential with the webhook scope.
    Install {
        /// The workspace (default: the only configured one).
        #[arg(long, value_name = "W")]
        workspace: Option<String>,
        /// Where Bitbucket sends deliveries: the public URL of the daemon's
        /// `hooks_listen`, ending in /hooks/bitbucket.
        #[arg(long, value_name = "URL")]
        url: String,
    },
    /// The workspace webhooks Bitbucket has, and the last delivery and
    /// webhook walk the daemon saw.
    Status {
        /// Only this workspace (default: every configured one).
        #[arg(long, value_name = "W")]
        workspace: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum QueryCommand {
    /// Commits, newest first.
    Commits {
        #[command(flatten)]
        filter: CommitFilter,
        #[command(flatten)]
        format: QueryFormat,
    },
    /// Repositories with their state and commit counts.
    Repos {
        /// Only this workspace.
        #[arg(long, value_name = "W")]
        workspace: Option<String>,
        #[command(flatten)]
        format: QueryFormat,
    },
    /// Authors (account uuid when known, else e-mail) with their commit
    /// counts, most commits first; the filters select the commits counted.
    Authors {
        #[command(flatten)]
        filter: CommitFilter,
        #[command(flatten)]
        format: QueryFormat,
    },
    /// Totals of the store.
    Stats {
        #[command(flatten)]
        format: QueryFormat,
    },
}

/// `--format` of `query`: table on a terminal, ndjson otherwise.
#[derive(Args, Debug, Clone)]
pub struct QueryFormat {
    /// Output format [default: table on a terminal, else ndjson].
    #[arg(long, value_name = "FORMAT", value_parser = FormatChoice(&[Format::Table, Format::Json, Format::Ndjson, Format::Csv]))]
    format: Option<Format>,
}

impl QueryFormat {
    fn resolve(&self) -> Format {
        use std::io::IsTerminal;
        match self.format {
            Some(f) => f,
            None if std::io::stdout().is_terminal() => Format::Table,
            None => Format::Ndjson,
        }
    }
}

/// Parses `--format` among a command's formats, by their one name
/// ([`Format::name`]).
#[derive(Clone, Copy)]
struct FormatChoice(&'static [Format]);

impl clap::builder::TypedValueParser for FormatChoice {
    type Value = Format;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Format, clap::Error> {
        let names: Vec<&'static str> = self.0.iter().map(|f| f.name()).collect();
        let name = clap::builder::PossibleValuesParser::new(names).parse_ref(cmd, arg, value)?;
        Format::from_name(&name)
            .ok_or_else(|| clap::Error::new(clap::error::ErrorKind::InvalidValue))
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(
            self.0
                .iter()
                .map(|f| clap::builder::PossibleValue::new(f.name())),
        ))
    }
}

/// Why a command failed. Every variant knows its exit code (SPEC section 9).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A command line that parses but cannot be acted on (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The configuration (exit 2).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A question to the store or its daemon.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A sync pass.
    #[error(transparent)]
    Pass(#[from] PassError),
    /// The Bitbucket API.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The daemon.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    /// The daemon's endpoint settings (exit 2).
    #[error(transparent)]
    Endpoint(#[from] bbcrawl::web::EndpointError),
    /// `hooks install` / `hooks status`.
    #[error(transparent)]
    Hooks(#[from] bbcrawl::hooks::install::InstallError),
    /// The metrics recorder.
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    /// The demo.
    #[error(transparent)]
    Demo(#[from] bbcrawl::demo::DemoError),
    /// A file or the terminal (exit 1; a closed pipe ends quietly).
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

impl CliError {
    /// The exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => exit::USAGE,
            CliError::Config(e) => e.exit_code(),
            CliError::Store(e) => e.exit_code(),
            CliError::Source(e) => e.exit_code(),
            CliError::Pass(e) => e.exit_code(),
            CliError::Api(e) => e.exit_code(),
            CliError::Daemon(e) => e.exit_code(),
            CliError::Endpoint(e) => e.exit_code(),
            CliError::Hooks(e) => e.exit_code(),
            CliError::Telemetry(_) | CliError::Demo(_) | CliError::Io { .. } => exit::RUNTIME,
        }
    }

    /// Whether printing stopped because stdout's reader went away (`| head`):
    /// a normal end.
    pub fn is_broken_pipe(&self) -> bool {
        match self {
            CliError::Source(e) => e.is_broken_pipe(),
            CliError::Io { source, .. } => source.kind() == std::io::ErrorKind::BrokenPipe,
            _ => false,
        }
    }

    /// The error and its causes on one line, each cause once: many error
    /// types here already name their source in their own message
    /// (`"workspace acme: {source}"`).
    pub fn text(&self) -> String {
        let mut text = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(e) = cause {
            let line = e.to_string();
            if !text.contains(&line) {
                text.push_str(": ");
                text.push_str(&line);
            }
            cause = e.source();
        }
        text
    }
}

/// Attaches what was being done to an io error.
fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CliError {
    let what = what.into();
    move |source| CliError::Io { what, source }
}

/// Sets up logging on stderr.
pub fn init_logging(g: &Global) {
    use std::io::IsTerminal;
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

/// The configuration with the global flags and a command's own overrides.
fn load_config(g: &Global, overrides: Overrides) -> Result<Config, CliError> {
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

/// Runs the command; `Ok` carries the exit code of a command that ran.
pub async fn run(cli: Cli) -> Result<u8, CliError> {
    let g = &cli.global;
    match cli.command {
        Command::Verify { workspaces, format } => {
            let cfg = load_config(
                g,
                Overrides {
                    workspaces,
                    ..Overrides::default()
                },
            )?;
            crawl::require_api_config(&cfg)?;
            let report = verify::verify(&ClientOptions::from_config(&cfg), &cfg.workspaces).await;
            match format {
                ReportFormat::Json => println!("{}", report.to_json()),
                ReportFormat::Text => print!("{}", report.to_text()),
            }
            Ok(report.exit_code())
        }
        Command::Sync {
            workspaces,
            repos,
            full,
            shard,
        } => crawl::sync(g, workspaces, repos, full, shard).await,
        Command::Run {
            workspaces,
            listen,
            web_config_file,
            shard,
        } => crawl::run_daemon(g, workspaces, listen, web_config_file, shard).await,
        Command::Demo => demo(g).await,
        Command::Hooks { what } => hooks::run(g, what).await,
        Command::Store {
            what: StoreCommand::Backup { dest },
        } => {
            let cfg = load_config(g, Overrides::default())?;
            let r = match bbcrawl::store::Store::open_existing(&cfg.store) {
                Ok(store) => store.backup_to(&dest)?,
                // The daemon holds it: it makes the copy, between pages.
                Err(bbcrawl::store::StoreError::Locked { .. }) => {
                    let dest = std::path::absolute(&dest)
                        .map_err(|e| CliError::Usage(format!("{}: {e}", dest.display())))?;
                    bbcrawl::source::Daemon::locate(&cfg.store)
                        .map_err(bbcrawl::source::SourceError::from)?
                        .backup(&dest)
                        .await
                        .map_err(bbcrawl::source::SourceError::from)?
                }
                Err(e) => return Err(e.into()),
            };
            if !g.quiet {
                println!(
                    "backed up {} to {}: {} keys, {} in {}",
                    cfg.store.display(),
                    dest.display(),
                    r.keys,
                    bbcrawl::human::bytes(r.bytes),
                    bbcrawl::human::duration(std::time::Duration::from_secs_f64(r.seconds))
                );
            }
            Ok(exit::SUCCESS)
        }
        Command::Store {
            what: StoreCommand::Restore { src },
        } => {
            let cfg = load_config(g, Overrides::default())?;
            let r = bbcrawl::store::restore(&src, &cfg.store)?;
            if !g.quiet {
                println!(
                    "restored {} as the store {}: {} keys, {}",
                    src.display(),
                    cfg.store.display(),
                    r.keys,
                    bbcrawl::human::bytes(r.bytes)
                );
            }
            Ok(exit::SUCCESS)
        }
        Command::Store {
            what: StoreCommand::Repair { format },
        } => {
            let cfg = load_config(g, Overrides::default())?;
            let store = bbcrawl::store::Store::open_to_inspect(&cfg.store)?;
            let report = store.repair()?;
            print_report(format, &report, &report.to_text());
            Ok(exit::SUCCESS)
        }
        Command::Store {
            what: StoreCommand::Check { format },
        } => {
            let cfg = load_config(g, Overrides::default())?;
            let store = bbcrawl::store::Store::open_to_inspect(&cfg.store)?;
            let report = store.check()?;
            print_report(format, &report, &report.to_text());
            Ok(if report.healthy() {
                exit::SUCCESS
            } else {
                exit::RUNTIME
            })
        }
        Command::Query { what } => ask::query(g, what).await,
        Command::Show { hash, format } => ask::show(g, hash, format).await,
        Command::Export {
            format,
            output,
            changes: true,
            after,
            cursor,
            limit,
            ..
        } => {
            if !matches!(
                format,
                bbcrawl::query::Format::Ndjson | bbcrawl::query::Format::Parquet
            ) {
                return Err(CliError::Usage(
                    "--changes writes NDJSON or Parquet (--format ndjson|parquet)".into(),
                ));
            }
            ask::changes(
                g,
                format,
                after,
                cursor.as_deref(),
                limit,
                output.as_deref(),
            )
            .await
        }
        Command::Export {
            format,
            all,
            output,
            ..
        } => ask::export(g, format, all, output.as_deref()).await,
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
                return Err(CliError::Usage(format!(
                    "--fault-rate must be between 0 and 1 (got {fault_rate})"
                )));
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
                .map_err(io(format!("cannot serve the simulator on {listen}")))?;
            Ok(exit::SUCCESS)
        }
    }
}

/// The whole pipeline against the built-in simulator (see `bbcrawl::demo`).
async fn demo(g: &Global) -> Result<u8, CliError> {
    let dir = match &g.store {
        Some(d) => d.clone(),
        None => bbcrawl::demo::fresh_store_dir()
            .map_err(io("cannot create a temporary store directory"))?,
    };
    let observer: std::sync::Arc<dyn bbcrawl::actors::PassObserver> =
        std::sync::Arc::new(bbcrawl::actors::Quiet);
    let mut out = std::io::stdout();
    bbcrawl::demo::run(&dir, &mut out, observer).await?;
    Ok(exit::SUCCESS)
}

/// Prints a store report: its JSON, or its text line by line, terminal-safe.
fn print_report(format: ReportFormat, report: &impl serde::Serialize, text: &str) {
    match format {
        ReportFormat::Json => println!("{}", serde_json::to_string(report).unwrap_or_default()),
        ReportFormat::Text => {
            for line in text.lines() {
                println!("{}", bbcrawl::human::printable(line));
            }
        }
    }
}
