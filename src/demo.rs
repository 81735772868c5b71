//! `bbcrawl demo`: the whole pipeline against the built-in simulator, with
//! no credentials, no network and no configuration. It crawls a generated
//! workspace into a fresh store, pushes a few commits and crawls again (to
//! show an incremental pass), and prints the summaries, the requests used
//! against the minimum possible, and a few example questions answered from
//! the store.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::actors::{run_pass, PassObserver, PassOptions, PassSummary};
use crate::bitbucket::{BitbucketClient, ClientOptions};
use crate::config::{Credential, Secret};
use crate::human::{pad, truncate};
use crate::query::{self, CommitFilter};
use crate::record::format_date;
use crate::simulator::{SimOptions, Simulator};
use crate::store::Store;

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The simulator could not start, or output failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The crawl failed.
    #[error(transparent)]
    Pass(#[from] crate::actors::PassError),
    /// The client could not be built.
    #[error(transparent)]
    Api(#[from] crate::bitbucket::ApiError),
    /// A question to the store failed.
    #[error(transparent)]
    Query(#[from] crate::query::QueryError),
}

/// The simulator served from its own thread and runtime, as a separate
/// server would be.
pub struct BackgroundSimulator {
    api_url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BackgroundSimulator {
    /// Serves `sim` on an ephemeral loopback port.
    pub fn start(sim: Simulator) -> std::io::Result<BackgroundSimulator> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::io::Result<String>>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("simulator".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    let served = async {
                        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                        sim.serve(listener).await
                    };
                    match served.await {
                        Ok(server) => {
                            let _ = ready_tx.send(Ok(server.api_url()));
                            let _ = stop_rx.await;
                            server.shutdown().await;
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                });
            })?;
        let api_url = ready_rx
            .recv()
            .map_err(|_| std::io::Error::other("the simulator thread ended before serving"))??;
        Ok(BackgroundSimulator {
            api_url,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT/2.0`.
    pub fn api_url(&self) -> &str {
        &self.api_url
    }
}

impl Drop for BackgroundSimulator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A fresh directory for the demo's store under the system's temp dir.
pub fn fresh_store_dir() -> std::io::Result<PathBuf> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("bbcrawl-demo-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The fewest requests that can copy the simulator's workspace: the
/// listing pages plus, per repository with a default branch, one request
/// per 100 commits (at least one).
pub fn minimum_requests(sim: &Simulator, workspace: &str) -> u64 {
    let repos = sim.repos(workspace);
    let listing = (repos.len() as u64).div_ceil(100).max(1);
    let commits: u64 = repos
        .iter()
        .filter(|r| r.mainbranch.is_some())
        .map(|r| {
            (sim.branch_commits(workspace, &r.slug).len() as u64)
                .div_ceil(100)
                .max(1)
        })
        .sum();
    listing + commits
}

/// Runs the demo, printing to `out`; `observer` shows the crawl's progress.
pub async fn run(
    store_dir: &Path,
    out: &mut dyn Write,
    observer: Arc<dyn PassObserver>,
) -> Result<(), DemoError> {
    let opts = SimOptions {
        repos: 30,
        commits: 1000,
        requests_per_hour: 1_000_000,
        ..SimOptions::default()
    };
    let ws = opts.workspace.clone();
    let sim = Simulator::demo(opts);
    let server = BackgroundSimulator::start(sim.clone())?;
    let truth_commits: usize = sim
        .repos(&ws)
        .iter()
        .map(|r| sim.branch_commits(&ws, &r.slug).len())
        .sum();
    writeln!(
        out,
        "bbcrawl demo: the built-in Bitbucket simulator serves workspace `{ws}` at {}",
        server.api_url()
    )?;
    writeln!(
        out,
        "  {} repositories, {} default-branch commits (merges, unicode, an empty repository, a `release/2024` default branch)",
        sim.repos(&ws).len(),
        truth_commits
    )?;
    writeln!(out, "  store: {}\n", store_dir.display())?;

    let api =
        url::Url::parse(server.api_url()).map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut copts = ClientOptions::new(
        api,
        vec![Credential::AccessToken {
            token: Secret::new("sim-access-token"),
        }],
    );
    copts.requests_per_hour = 1_000_000;
    let client = BitbucketClient::new(copts)?;
    let store = Arc::new(Store::open(store_dir)?);
    let pass = PassOptions {
        workspaces: vec![ws.clone()],
        concurrency: 8,
        audit_interval: std::time::Duration::from_secs(86_400),
        ..PassOptions::default()
    };
    let stop = Arc::new(AtomicBool::new(false));

    writeln!(
        out,
        "$ bbcrawl sync            # first pass: every default branch, page by page"
    )?;
    out.flush()?;
    let first = run_pass(
        client.clone(),
        Arc::clone(&store),
        pass.clone(),
        Arc::clone(&observer),
        Arc::clone(&stop),
    )
    .await?;
    print_summary(out, &first)?;
    let minimum = minimum_requests(&sim, &ws);
    writeln!(
        out,
        "  requests used: {} — the minimum possible is {minimum} (listing pages + one request per 100 commits)\n",
        first.requests
    )?;

    // Changes while it runs: a push and a force push, then an incremental pass.
    let pushed = sim.push(&ws, "payments-api", 7);
    sim.force_push(&ws, "web-app", 3, 2);
    writeln!(out, "(meanwhile: 7 commits pushed to payments-api, web-app force-pushed: 3 commits dropped, 2 added)")?;
    writeln!(
        out,
        "$ bbcrawl sync            # second pass: only what changed"
    )?;
    out.flush()?;
    let second = run_pass(client.clone(), Arc::clone(&store), pass, observer, stop).await?;
    print_summary(out, &second)?;
    writeln!(
        out,
        "  {} new commits (7 pushed + 2 rewritten), {} commits marked unreachable by the force push\n",
        second.new_commits, second.orphaned
    )?;
    debug_assert_eq!(pushed.len(), 7);

    examples(out, &store)?;
    writeln!(out, "\nThe store is kept at {}.", store_dir.display())?;
    Ok(())
}

fn print_summary(out: &mut dyn Write, s: &PassSummary) -> std::io::Result<()> {
    writeln!(out, "  {}", s.line())
}

/// A few questions answered from the store by the query layer, as
/// `bbcrawl query` would.
fn examples(out: &mut dyn Write, store: &Store) -> Result<(), DemoError> {
    let mut repos = query::repos(store, None)?;
    repos.sort_by(|a, b| b.commits.cmp(&a.commits).then(a.slug.cmp(&b.slug)));
    writeln!(
        out,
        "Which repositories have the most commits on their default branch?"
    )?;
    for r in repos.iter().take(5) {
        writeln!(
            out,
            "  {} {:>6} commits  (branch {}, status {})",
            pad(&r.slug, 24),
            r.commits,
            r.default_branch.as_deref().unwrap_or("-"),
            r.status.as_str()
        )?;
    }

    let mut authors: Vec<(String, u64)> = query::authors(store, &CommitFilter::default())?
        .into_iter()
        .map(|a| {
            let name = a.display_name.or(a.name).unwrap_or(a.identity);
            (name, a.commits)
        })
        .collect();
    authors.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    writeln!(out, "\nWho commits the most?")?;
    for (name, n) in authors.iter().take(5) {
        writeln!(out, "  {} {n:>6} commits", pad(name, 30))?;
    }

    let newest = CommitFilter {
        limit: Some(5),
        ..CommitFilter::default()
    };
    writeln!(out, "\nThe five newest commits:")?;
    for c in query::commits(store, &newest)? {
        let c = c?;
        let subject = truncate(c.message.lines().next().unwrap_or(""), 60);
        writeln!(
            out,
            "  {}  {} {}  {}",
            format_date(&c.date),
            pad(&c.repo, 16),
            &c.hash[..10.min(c.hash.len())],
            subject
        )?;
    }
    Ok(())
}
