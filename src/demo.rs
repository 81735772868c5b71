//! `bbcrawl demo`: the whole pipeline against the built-in simulator, with
//! no credentials, no network and no configuration. It crawls a generated
//! workspace into a fresh store, pushes a few commits and crawls again (to
//! show an incremental pass), and prints the summaries, the requests used
//! against the minimum possible, and a few example questions answered from
//! the store.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::actors::{run_pass, PassObserver, PassOptions, PassSummary};
use crate::bitbucket::{BitbucketClient, ClientOptions};
use crate::config::{Credential, Secret};
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

/// A few questions answered straight from the store.
fn examples(out: &mut dyn Write, store: &Store) -> Result<(), DemoError> {
    let repos = store.repos()?;
    let mut by_size: Vec<_> = repos.iter().collect();
    by_size.sort_by(|a, b| {
        b.commits_stored
            .cmp(&a.commits_stored)
            .then(a.slug.cmp(&b.slug))
    });
    writeln!(
        out,
        "Which repositories have the most commits on their default branch?"
    )?;
    for r in by_size.iter().take(5) {
        writeln!(
            out,
            "  {} {:>6} commits  (branch {}, status {})",
            crate::human::pad(&r.slug, 24),
            r.commits_stored - r.commits_unreachable,
            r.default_branch.as_deref().unwrap_or("-"),
            r.status.as_str()
        )?;
    }

    let mut authors: HashMap<String, (String, u64)> = HashMap::new();
    let mut latest = Vec::new();
    for r in &repos {
        for c in store.repo_commits(&r.workspace, &r.uuid) {
            let c = c?;
            if !c.reachable {
                continue;
            }
            let name = c
                .author
                .display_name
                .clone()
                .or_else(|| c.author.name.clone())
                .unwrap_or_else(|| c.author.identity());
            authors.entry(c.author.identity()).or_insert((name, 0)).1 += 1;
            latest.push((
                c.date,
                r.slug.clone(),
                c.hash.clone(),
                c.message.lines().next().unwrap_or("").to_owned(),
            ));
        }
    }
    let mut authors: Vec<_> = authors.into_values().collect();
    authors.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    writeln!(out, "\nWho commits the most?")?;
    for (name, n) in authors.iter().take(5) {
        writeln!(out, "  {} {n:>6} commits", crate::human::pad(name, 30))?;
    }
    latest.sort_by(|a, b| b.0.cmp(&a.0).then(b.2.cmp(&a.2)));
    writeln!(out, "\nThe five newest commits:")?;
    for (date, repo, hash, subject) in latest.iter().take(5) {
        let subject = crate::human::truncate(subject, 60);
        writeln!(
            out,
            "  {}  {} {}  {}",
            date.to_rfc3339(),
            crate::human::pad(repo, 16),
            &hash[..10.min(hash.len())],
            subject
        )?;
    }
    Ok(())
}
