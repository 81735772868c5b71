//! The commands that crawl: `sync` (one pass) and `run` (the daemon).

use std::io::IsTerminal;
use std::sync::Arc;

use bbcrawl::actors::{Crawler, PassEnd, PassObserver, PassOptions};
use bbcrawl::bitbucket::{BitbucketClient, ClientOptions};
use bbcrawl::config::{Config, Overrides};
use bbcrawl::daemon::{self, StopSignal};
use bbcrawl::exit;
use bbcrawl::progress::{ProgressMode, SyncProgress};
use bbcrawl::store::Store;

use super::{load_config, CliError, Global, LogFormat};

/// How `sync` shows progress: a live line on a terminal, log lines
/// otherwise, nothing with `-q`.
fn progress_mode(g: &Global) -> ProgressMode {
    if g.quiet {
        ProgressMode::Silent
    } else if std::io::stderr().is_terminal() && g.log_format == LogFormat::Text {
        ProgressMode::Bar
    } else {
        ProgressMode::Lines
    }
}

/// Commands that talk to Bitbucket need a workspace and a credential.
pub(super) fn require_api_config(cfg: &Config) -> Result<(), CliError> {
    if cfg.workspaces.is_empty() {
        return Err(CliError::Usage(
            "no workspace configured: set `workspaces` in the config file, BBCRAWL_WORKSPACES, or pass --workspace".into(),
        ));
    }
    if cfg.credentials.is_empty() {
        return Err(CliError::Usage(
            "no credentials configured: set BITBUCKET_ACCESS_TOKEN, or BITBUCKET_USERNAME + BITBUCKET_API_TOKEN, or [[credentials]] in the config file".into(),
        ));
    }
    Ok(())
}

/// Logs which shard this instance crawls, when it has one.
fn say_shard(cfg: &Config) {
    if let Some(shard) = cfg.shard {
        tracing::info!(
            shard = %shard,
            "shard {shard}: crawling only the repositories whose uuid hashes to shard {} of {}",
            shard.index(),
            shard.count()
        );
    }
}

/// What a pass covers, from the configuration.
fn pass_options(cfg: &Config, only: Vec<String>, full: bool) -> PassOptions {
    PassOptions {
        workspaces: cfg.workspaces.clone(),
        slugs: cfg.slugs.clone(),
        shard: cfg.shard,
        only,
        full,
        since: cfg.since,
        concurrency: cfg.max_in_flight.saturating_mul(2).max(2),
        audit_interval: cfg.audit_interval,
    }
}

/// `bbcrawl sync`: one pass, then the summary. SIGTERM / SIGINT stop the
/// pass the way they stop the daemon's (no new pages, pages in flight are
/// stored, the writer flushes); the exit code says which signal (SPEC
/// section 9) and the next sync resumes.
pub(super) async fn sync(
    g: &Global,
    workspaces: Vec<String>,
    repos: Vec<String>,
    full: bool,
    shard: Option<String>,
) -> Result<u8, CliError> {
    bbcrawl::store::private_umask();
    let cfg = load_config(
        g,
        Overrides {
            workspaces,
            shard,
            ..Overrides::default()
        },
    )?;
    require_api_config(&cfg)?;
    say_shard(&cfg);
    let signal = daemon::shutdown_signal()?;
    let store = Arc::new(Store::open(&cfg.store)?);
    // This process holds the store: no daemon of it runs.
    daemon::clear_stale_address(&cfg.store);
    // Never start a pass that may fill the disk.
    store.check_free(bbcrawl::store::disk_floor(cfg.min_free_disk, 0))?;
    let client = BitbucketClient::new(ClientOptions::from_config(&cfg))?;
    let progress = SyncProgress::start(progress_mode(g), client.clone());
    let observer: Arc<dyn PassObserver> = progress.clone();
    let crawler = Crawler::start(client, Arc::clone(&store), observer);
    let end = crawler
        .pass_until(pass_options(&cfg, repos, full), signal)
        .await;
    drop(crawler);
    close_store(store).await;
    progress.finish();
    let (result, stopped_by) = match end {
        PassEnd::Finished(r) => (r, None),
        PassEnd::Stopped(which, r) => (r, Some(which)),
        PassEnd::Abandoned(which) => {
            say_stopped(g, which);
            return Ok(which.exit_code());
        }
    };
    let summary = result?;
    if !g.quiet {
        println!("{}", summary.line());
        for f in &summary.failures {
            println!("  failed: {}", bbcrawl::human::printable(f));
        }
    }
    Ok(match stopped_by {
        Some(which) => {
            say_stopped(g, which);
            which.exit_code()
        }
        None if summary.failed > 0 => exit::SOME_FAILED,
        None => exit::SUCCESS,
    })
}

/// Tells the user a signal stopped `sync` and that nothing is lost.
fn say_stopped(g: &Global, which: StopSignal) {
    if !g.quiet {
        eprintln!(
            "stopped by {}: every page fetched is stored; the next sync resumes where this one stopped",
            which.name()
        );
    }
}

/// `bbcrawl run` (see `bbcrawl::daemon`).
pub(super) async fn run_daemon(
    g: &Global,
    workspaces: Vec<String>,
    listen: Option<String>,
    web_config_file: Option<std::path::PathBuf>,
    shard: Option<String>,
) -> Result<u8, CliError> {
    bbcrawl::store::private_umask();
    let cfg = load_config(
        g,
        Overrides {
            workspaces,
            listen,
            web_config_file,
            shard,
            ..Overrides::default()
        },
    )?;
    require_api_config(&cfg)?;
    say_shard(&cfg);
    // Every mistake in the endpoint's security is exit 2, before anything
    // starts.
    let endpoint = bbcrawl::web::Endpoint::prepare(&bbcrawl::web::EndpointConfig {
        listen: cfg.listen,
        web_config_file: cfg.web_config_file.as_deref(),
        insecure_listen: cfg.insecure_listen,
        api: cfg.api,
        health_without_auth: cfg.health_without_auth,
    })?;
    // Signals first: a SIGTERM during start-up then stops the daemon
    // gracefully instead of killing it.
    let shutdown = daemon::shutdown_signal()?;
    let metrics = bbcrawl::telemetry::install()?;
    bbcrawl::telemetry::shard_info(cfg.shard);
    let store = Arc::new(Store::open(&cfg.store)?);
    let client = BitbucketClient::new(ClientOptions::from_config(&cfg))?;
    let mode = if g.quiet {
        ProgressMode::Silent
    } else {
        ProgressMode::Lines
    };
    let observer: Arc<dyn PassObserver> = SyncProgress::start(mode, client.clone());
    let hooks = hooks_options(&cfg)?;
    let opts = daemon::DaemonOptions {
        listen: cfg.listen,
        interval: cfg.interval,
        pass: pass_options(&cfg, Vec::new(), false),
        min_free_disk: cfg.min_free_disk,
        observer,
        endpoint,
        hooks,
    };
    let ran = daemon::run(client, Arc::clone(&store), opts, metrics, shutdown).await;
    close_store(store).await;
    ran?;
    Ok(exit::SUCCESS)
}

/// The webhook receiver, when `hooks_listen` is set: its secret must be
/// readable and non-empty (exit 2 otherwise).
fn hooks_options(cfg: &Config) -> Result<Option<daemon::HooksOptions>, CliError> {
    let (Some(listen), Some(path)) = (cfg.hooks_listen, cfg.hooks_secret_file.as_deref()) else {
        return Ok(None);
    };
    let secret =
        bbcrawl::hooks::HookSecret::load(path).map_err(|e| CliError::Usage(e.to_string()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        if std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
            tracing::warn!(path = %path.display(), "hooks_secret_file is readable by group or others: chmod 600 it");
        }
    }
    if !listen.ip().is_loopback() {
        tracing::info!(%listen, "the webhook receiver listens beyond loopback (as intended for Bitbucket): it serves only POST /hooks/bitbucket, signed deliveries");
    }
    Ok(Some(daemon::HooksOptions {
        listen,
        secret: Arc::new(secret),
    }))
}

/// Lets go of the store once the actors have (the writer's last flush
/// done), on a blocking thread: dropping the last handle of a store that
/// was written settles sled's log (`Store::settle`), so the next process to
/// open it does not replay this one's writes. Best effort: after a few
/// two seconds of an actor still holding it (a request stalled past the
/// drain deadline), the process exits anyway (and the
/// next open settles instead).
async fn close_store(store: Arc<Store>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let mut store = store;
    loop {
        match Arc::try_unwrap(store) {
            Ok(store) => {
                let _ = tokio::task::spawn_blocking(move || drop(store)).await;
                return;
            }
            Err(shared) if std::time::Instant::now() < deadline => {
                store = shared;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(_) => return,
        }
    }
}
