//! The supervisor: one pass over every configured workspace.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use actix::{Actor, Addr, Context, Handler, Message, ResponseFuture, SyncArbiter};
use chrono::{DateTime, Utc};
use futures::StreamExt;

use super::repository::{Crawl, RepoActor, RepoJob, RepoOutcome};
use super::writer::{Flush, PutMeta, PutRepo, Writer};
use super::{PassEvent, PassObserver, PassSummary, StopFlag, WriterQueue};
use crate::bitbucket::models::Repository;
use crate::bitbucket::{ApiError, BitbucketClient};
use crate::record::{RepoEventKind, RepoState, RepoStatus};
use crate::schedule::{self, PlanInput, Reason, SlugFilter};
use crate::shard::Shard;
use crate::store::{keys, Store, StoreError};

/// What one pass covers.
#[derive(Debug, Clone, Default)]
pub struct PassOptions {
    /// Workspaces to crawl.
    pub workspaces: Vec<String>,
    /// Which repositories to crawl by slug (the default: all).
    pub slugs: SlugFilter,
    /// Only the repositories of this shard, by uuid (`None`: all).
    pub shard: Option<Shard>,
    /// Only these slugs (`sync --repo`), if any.
    pub only: Vec<String>,
    /// Re-walk every default branch.
    pub full: bool,
    /// First crawls skip commits older than this.
    pub since: Option<DateTime<Utc>>,
    /// Repository actors alive at once.
    pub concurrency: usize,
    /// Every repository's head is checked at least this often (0: every pass).
    pub audit_interval: std::time::Duration,
}

/// Why a pass failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    /// The API refused the credentials or the workspace (401, 403, 404 on
    /// a listing) or could not be reached.
    #[error("workspace {workspace}: {source}")]
    Api {
        /// The workspace being listed or crawled.
        workspace: String,
        /// What the API said.
        #[source]
        source: ApiError,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The actor system failed (a bug).
    #[error("internal error: {0}")]
    Internal(String),
}

impl PassError {
    /// The exit code: the `verify` code of an API error (3, 4, 5, else 1),
    /// the store's for a store error, else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            PassError::Api { source, .. } => source.exit_code(),
            PassError::Store(e) => e.exit_code(),
            PassError::Internal(_) => crate::exit::RUNTIME,
        }
    }
}

impl From<actix::MailboxError> for PassError {
    fn from(e: actix::MailboxError) -> PassError {
        PassError::Internal(e.to_string())
    }
}

/// The crawl machinery of one process: the writer (the single owner of
/// store writes, on its own thread) and the supervisor. `sync` runs one
/// pass with it, `run` one every interval; both flush through it, so only
/// the writer ever writes or flushes the store. Must be built inside an
/// actix `System`.
pub struct Crawler {
    supervisor: Addr<Supervisor>,
    writer: Addr<Writer>,
}

/// One lock per repository, shared by passes and webhook walks: a walk
/// holds its repository's lock and reads the repository's record only once
/// it has it, so two walks of one repository never run at once and none
/// starts from a record another walk has since moved on.
#[derive(Default)]
pub struct RepoLocks {
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl RepoLocks {
    /// Waits for the repository's lock. The map holds one small entry per
    /// repository ever walked (bounded by the workspace).
    pub async fn lock(&self, uuid: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(locks.entry(uuid.to_owned()).or_default())
        };
        lock.lock_owned().await
    }
}

/// What a webhook asks to walk (see [`Crawler::hook_walk`]).
#[derive(Debug, Clone)]
pub enum HookTarget {
    /// A repository the store knows, by uuid: walked from its stored record
    /// (read under its lock), with no listing request.
    Known {
        /// Braced uuid.
        uuid: String,
    },
    /// A repository whose listing entry was just fetched (new to the store,
    /// renamed, or marked deleted): walked with that entry.
    Listed(Repository),
}

/// What a webhook walk needs besides its target.
#[derive(Clone)]
pub struct HookWalkOptions {
    /// First crawls skip commits older than this.
    pub since: Option<DateTime<Utc>>,
    /// Set when the daemon stops.
    pub stop: StopFlag,
}

impl Crawler {
    /// Starts the writer and the supervisor for `store`.
    pub fn start(
        client: BitbucketClient,
        store: Arc<Store>,
        observer: Arc<dyn PassObserver>,
    ) -> Crawler {
        let writer_store = Arc::clone(&store);
        let writer = SyncArbiter::start(1, move || Writer::new(Arc::clone(&writer_store)));
        let supervisor = Supervisor {
            client,
            store,
            writer: writer.clone(),
            observer,
            locks: Arc::new(RepoLocks::default()),
        }
        .start();
        Crawler { supervisor, writer }
    }

    /// Walks one repository's default branch for a webhook (SPEC section
    /// 13), through the same client (budget, 429 gate), writer and
    /// repository lock as passes, then flushes. `Ok(None)`: the store does
    /// not know a [`HookTarget::Known`] repository (any more).
    pub async fn hook_walk(
        &self,
        workspace: &str,
        target: HookTarget,
        opts: HookWalkOptions,
    ) -> Result<Option<RepoOutcome>, PassError> {
        // Through the supervisor: repository actors start in its context.
        let outcome = self
            .supervisor
            .send(HookWalk {
                workspace: workspace.to_owned(),
                target,
                opts,
            })
            .await??;
        self.flush().await?;
        Ok(outcome)
    }

    /// One pass; `stop` ends it early (a fatal API error sets it too: a
    /// fresh flag per pass, so a 401 ends that pass only). Whatever
    /// happened, what was stored is flushed before the summary is returned.
    pub async fn pass(&self, opts: PassOptions, stop: StopFlag) -> Result<PassSummary, PassError> {
        let result = self.supervisor.send(RunPass { opts, stop }).await?;
        self.flush().await?;
        result
    }

    /// Saves a meta document through the writer.
    pub async fn put_meta(
        &self,
        key: &'static [u8],
        value: serde_json::Value,
    ) -> Result<(), PassError> {
        Ok(self.writer.send(PutMeta { key, value }).await??)
    }

    /// Asks the writer to flush everything it wrote (after the pages it
    /// was handed before).
    pub async fn flush(&self) -> Result<(), PassError> {
        Ok(self.writer.send(Flush).await??)
    }

    /// One pass that stops when `signal` resolves (SIGTERM, SIGINT): no new
    /// pages are fetched, pages in flight are stored and the writer
    /// flushes, within [`DRAIN_DEADLINE`]. A pass still busy then (a
    /// request stuck behind a 429 pause or a stall) is abandoned after one
    /// last flush through the writer: every stored page is one atomic
    /// write, so the next run resumes from its saved position.
    pub async fn pass_until<S>(
        &self,
        opts: PassOptions,
        signal: impl std::future::Future<Output = S>,
    ) -> PassEnd<S> {
        let stop: StopFlag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let pass = self.pass(opts, Arc::clone(&stop));
        tokio::pin!(pass);
        let signal = tokio::select! {
            result = &mut pass => return PassEnd::Finished(result),
            signal = signal => signal,
        };
        tracing::info!("stopping the pass: in-flight pages finish, the writer flushes");
        stop.store(true, Ordering::Relaxed);
        match tokio::time::timeout(DRAIN_DEADLINE, &mut pass).await {
            Ok(result) => PassEnd::Stopped(signal, result),
            Err(_) => {
                tracing::warn!(
                    "the pass did not stop within {DRAIN_DEADLINE:?}; flushing what was stored and leaving"
                );
                match tokio::time::timeout(FINAL_FLUSH_DEADLINE, self.flush()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "final flush failed"),
                    Err(_) => tracing::error!("final flush did not finish in time"),
                }
                PassEnd::Abandoned(signal)
            }
        }
    }
}

/// How long a stopping pass may take to finish its in-flight pages: what
/// is left of the 10 s SPEC promises once the daemon's server has stopped.
pub const DRAIN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(7);

/// How long the last flush of an abandoned pass may take.
const FINAL_FLUSH_DEADLINE: std::time::Duration = std::time::Duration::from_secs(1);

/// How a pass that could be stopped ended (see [`Crawler::pass_until`]).
#[derive(Debug)]
pub enum PassEnd<S> {
    /// It ran to its end.
    Finished(Result<PassSummary, PassError>),
    /// `signal` stopped it; its pages in flight were stored and flushed.
    Stopped(S, Result<PassSummary, PassError>),
    /// `signal` stopped it, and it did not finish within the deadline.
    Abandoned(S),
}

/// Runs one pass with a [`Crawler`] of its own: starts the writer and the
/// supervisor, crawls, flushes, and returns the summary. Must be called
/// inside an actix `System`.
pub async fn run_pass(
    client: BitbucketClient,
    store: Arc<Store>,
    opts: PassOptions,
    observer: Arc<dyn PassObserver>,
    stop: StopFlag,
) -> Result<PassSummary, PassError> {
    Crawler::start(client, store, observer)
        .pass(opts, stop)
        .await
}

/// The supervisor actor.
pub struct Supervisor {
    client: BitbucketClient,
    store: Arc<Store>,
    writer: Addr<Writer>,
    observer: Arc<dyn PassObserver>,
    locks: Arc<RepoLocks>,
}

impl Actor for Supervisor {
    type Context = Context<Self>;
}

/// Runs one pass.
#[derive(Message)]
#[rtype(result = "Result<PassSummary, PassError>")]
pub struct RunPass {
    /// What the pass covers.
    pub opts: PassOptions,
    /// Set to end the pass early.
    pub stop: StopFlag,
}

impl Handler<RunPass> for Supervisor {
    type Result = ResponseFuture<Result<PassSummary, PassError>>;

    fn handle(&mut self, msg: RunPass, _ctx: &mut Self::Context) -> Self::Result {
        let pass = Pass {
            client: self.client.clone(),
            store: Arc::clone(&self.store),
            writer: self.writer.clone(),
            observer: Arc::clone(&self.observer),
            locks: Arc::clone(&self.locks),
            stop: msg.stop,
            opts: msg.opts,
        };
        Box::pin(pass.run())
    }
}

/// Walks one repository for a webhook (see [`Crawler::hook_walk`]).
#[derive(Message)]
#[rtype(result = "Result<Option<RepoOutcome>, PassError>")]
pub struct HookWalk {
    /// The repository's workspace.
    pub workspace: String,
    /// Which repository, and whether its listing entry was read.
    pub target: HookTarget,
    /// `since` and the stop flag.
    pub opts: HookWalkOptions,
}

impl Handler<HookWalk> for Supervisor {
    type Result = ResponseFuture<Result<Option<RepoOutcome>, PassError>>;

    fn handle(&mut self, msg: HookWalk, _ctx: &mut Self::Context) -> Self::Result {
        let client = self.client.clone();
        let writer = self.writer.clone();
        let store = Arc::clone(&self.store);
        let observer = Arc::clone(&self.observer);
        let locks = Arc::clone(&self.locks);
        Box::pin(async move {
            let HookWalk {
                workspace,
                target,
                opts,
            } = msg;
            let uuid = match &target {
                HookTarget::Known { uuid } => uuid.clone(),
                HookTarget::Listed(listing) => listing.uuid.clone(),
            };
            let _guard = locks.lock(&uuid).await;
            let stored = store.repo(&workspace, &uuid)?;
            let (listing, slug, reason) = match target {
                HookTarget::Known { .. } => {
                    let Some(repo) = &stored else {
                        return Ok(None);
                    };
                    (listing_of(repo), repo.slug.clone(), Reason::Hook)
                }
                HookTarget::Listed(listing) => {
                    let Some(slug) = listing.slug().map(str::to_owned) else {
                        return Ok(None);
                    };
                    let reason = if stored.is_some() {
                        Reason::Hook
                    } else {
                        Reason::New
                    };
                    (listing, slug, reason)
                }
            };
            let job = RepoJob {
                client,
                writer,
                workspace,
                stored,
                slug,
                listing,
                full: false,
                since: opts.since,
                observer,
                stop: opts.stop,
                queue: Arc::new(WriterQueue::default()),
                reason,
                max_pages: None,
            };
            Ok(Some(crawl_one(job).await))
        })
    }
}

struct Pass {
    client: BitbucketClient,
    store: Arc<Store>,
    writer: Addr<Writer>,
    observer: Arc<dyn PassObserver>,
    locks: Arc<RepoLocks>,
    stop: StopFlag,
    opts: PassOptions,
}

impl Pass {
    /// Changes a stored repository's record under its lock, from the record
    /// as stored now (a webhook walk may have moved it since the pass read
    /// it), and saves it.
    async fn update_repo(
        &self,
        workspace: &str,
        uuid: &str,
        f: impl FnOnce(&mut RepoState),
    ) -> Result<(), PassError> {
        let _guard = self.locks.lock(uuid).await;
        let Some(mut repo) = self.store.repo(workspace, uuid)? else {
            return Ok(());
        };
        f(&mut repo);
        self.writer.send(PutRepo(repo)).await??;
        Ok(())
    }

    async fn run(self) -> Result<PassSummary, PassError> {
        let started = Instant::now();
        let before = self.client.stats();
        let mut summary = PassSummary {
            started_at: Some(Utc::now()),
            shard: self.opts.shard.map(|s| s.to_string()),
            ..PassSummary::default()
        };
        let only: HashSet<&str> = self.opts.only.iter().map(String::as_str).collect();
        let queue = Arc::new(WriterQueue::default());

        // Every wanted repository of every workspace, then one plan over
        // all of them: the budget is shared.
        let mut wanted_repos: Vec<(String, String, Repository)> = Vec::new();
        let mut stored_all: HashMap<String, RepoState> = HashMap::new();
        for ws in &self.opts.workspaces {
            let listing = self
                .client
                .repositories(ws)
                .map_err(|e| PassError::Api {
                    workspace: ws.clone(),
                    source: e,
                })?
                .collect_all()
                .await
                .map_err(|e| PassError::Api {
                    workspace: ws.clone(),
                    source: e,
                })?;
            let stored: HashMap<String, RepoState> = self
                .store
                .repos()?
                .into_iter()
                .filter(|r| &r.workspace == ws)
                .map(|r| (r.uuid.clone(), r))
                .collect();
            let listed: HashSet<&str> = listing.iter().map(|r| r.uuid.as_str()).collect();
            if let Some(shard) = self.opts.shard {
                // Only after the number of shards changed (or a store
                // crawled unsharded got a shard): those stay as they were.
                let foreign = stored.values().filter(|r| !shard.owns(&r.uuid)).count();
                if foreign > 0 {
                    tracing::warn!(
                        workspace = %ws,
                        shard = %shard,
                        "the store holds {foreign} repositories of other shards (was the number of shards changed?): they are no longer crawled here and keep their last state; start this shard with a fresh store to drop them"
                    );
                }
            }

            // Repositories gone from the listing: deleted, commits kept.
            for repo in stored.values() {
                if !listed.contains(repo.uuid.as_str()) && repo.status != RepoStatus::Deleted {
                    self.update_repo(ws, &repo.uuid, |repo| {
                        repo.status = RepoStatus::Deleted;
                        repo.record_event(Utc::now(), RepoEventKind::Deleted);
                        tracing::info!(repo = %repo.full_name, "repository no longer listed: marked deleted");
                    })
                    .await?;
                    summary.deleted += 1;
                }
            }

            for listing in listing {
                let Some(slug) = listing.slug().map(str::to_owned) else {
                    tracing::warn!(uuid = %listing.uuid, "repository without a slug or full_name skipped");
                    continue;
                };
                if slug == "." || slug == ".." || slug.contains('/') {
                    tracing::warn!(slug = %slug, "repository with an unusable slug skipped");
                    continue;
                }
                // Another shard's repository is not this instance's business
                // at all: not crawled, stored, counted or audited.
                if let Some(shard) = self.opts.shard.filter(|s| !s.owns(&listing.uuid)) {
                    summary.other_shards += 1;
                    if only.contains(slug.as_str()) {
                        tracing::warn!(
                            repo = %slug,
                            "--repo {slug}: the repository belongs to shard {}/{}, not to this instance's {shard}: not crawled",
                            crate::shard::shard_of(&listing.uuid, shard.count()),
                            shard.count()
                        );
                    }
                    continue;
                }
                let wanted = (only.is_empty() || only.contains(slug.as_str()))
                    && self.opts.slugs.wants(&slug);
                if wanted {
                    wanted_repos.push((ws.clone(), slug, listing));
                }
            }
            stored_all.extend(stored);
        }

        // The change gate and the order of work (see `schedule`).
        let budget = self.client.budget_totals().remaining;
        let listings: Vec<Repository> = wanted_repos.iter().map(|(_, _, r)| r.clone()).collect();
        let planned = schedule::plan(
            &listings,
            &PlanInput {
                stored: &stored_all,
                now: Utc::now(),
                audit_interval: self.opts.audit_interval,
                forced: self.opts.full || !only.is_empty(),
                budget: Some(budget),
            },
        );
        let mut jobs = Vec::new();
        for p in planned {
            let (ws, slug, listing) = wanted_repos[p.index].clone();
            let stored = stored_all.get(&listing.uuid).cloned();
            if !p.reason.crawls() {
                match p.reason {
                    Reason::AuditDeferred => summary.audits_deferred += 1,
                    _ => summary.skipped += 1,
                }
                // Record why it was skipped (only when that changed: an
                // unchanged pass should not rewrite every record).
                if let Some(repo) = stored {
                    if repo.last_decision.as_deref() != Some(p.reason.as_str()) {
                        self.update_repo(&ws, &repo.uuid, |repo| {
                            repo.last_decision = Some(p.reason.as_str().to_owned());
                        })
                        .await?;
                    }
                }
                continue;
            }
            jobs.push(RepoJob {
                client: self.client.clone(),
                writer: self.writer.clone(),
                workspace: ws,
                stored,
                slug,
                listing,
                full: self.opts.full,
                since: self.opts.since,
                observer: Arc::clone(&self.observer),
                stop: Arc::clone(&self.stop),
                queue: Arc::clone(&queue),
                reason: p.reason,
                max_pages: p.max_pages,
            });
        }
        self.observer.event(PassEvent::Listed {
            workspace: &self.opts.workspaces.join(","),
            repos: jobs.len(),
        });

        // Phases run one after the other — fresh changes, then backfill,
        // then audits — each with up to `concurrency` repository actors, so
        // the request log shows changed repositories served first.
        let concurrency = self.opts.concurrency.max(1);
        let mut phases: Vec<Vec<RepoJob>> = Vec::new();
        for job in jobs {
            let phase = job.reason.phase() as usize;
            if phases.len() <= phase {
                phases.resize_with(phase + 1, Vec::new);
            }
            phases[phase].push(job);
        }
        let mut outcomes = futures::stream::iter(phases).flat_map(move |jobs| {
            let (locks, store) = (Arc::clone(&self.locks), Arc::clone(&self.store));
            futures::stream::iter(jobs)
                .map(move |job| crawl_locked(job, Arc::clone(&locks), Arc::clone(&store)))
                .buffer_unordered(concurrency)
        });

        let mut fatal: Option<(String, ApiError)> = None;
        while let Some(outcome) = outcomes.next().await {
            summary.repos += 1;
            summary.new_commits += outcome.new_commits;
            summary.pages += outcome.pages;
            summary.orphaned += outcome.orphaned;
            summary.interrupted |= outcome.interrupted;
            summary.audited += u64::from(outcome.reason == Reason::Audit);
            summary.audit_found += u64::from(outcome.audit_found);
            summary.backfilling += u64::from(outcome.paused);
            match outcome.status {
                _ if outcome.paused => {}
                RepoStatus::Ok => summary.ok += 1,
                RepoStatus::Empty => summary.empty += 1,
                RepoStatus::Deleted => summary.deleted += 1,
                RepoStatus::Failed => {
                    summary.failed += 1;
                    summary.failures.push(format!(
                        "{}: {}",
                        outcome.full_name,
                        outcome.error.clone().unwrap_or_default()
                    ));
                }
                RepoStatus::New => {}
            }
            if let Some(e) = outcome.fatal {
                // 401/403: every other request would fail the same way.
                self.stop.store(true, Ordering::Relaxed);
                fatal.get_or_insert((outcome.workspace, e));
            }
        }

        let after = self.client.stats();
        summary.requests = after.requests - before.requests;
        summary.rate_limited = after.rate_limited - before.rate_limited;
        summary.writer_queue_peak = queue.peak() as u64;
        metrics::counter!(crate::telemetry::REPOS_SKIPPED)
            .increment(summary.skipped + summary.audits_deferred);
        metrics::counter!(crate::telemetry::AUDITS).increment(summary.audited);
        metrics::counter!(crate::telemetry::AUDIT_FOUND).increment(summary.audit_found);
        summary.finished_at = Some(Utc::now());
        summary.duration_seconds = started.elapsed().as_secs_f64();
        if let Some((workspace, source)) = fatal {
            return Err(PassError::Api { workspace, source });
        }
        let value =
            serde_json::to_value(&summary).map_err(|e| PassError::Internal(e.to_string()))?;
        self.writer
            .send(PutMeta {
                key: keys::META_LAST_PASS,
                value,
            })
            .await??;
        Ok(summary)
    }
}

/// [`crawl_one`] under the repository's lock, from its record as stored
/// once the lock is held (a webhook walk may have moved it since the pass
/// planned).
async fn crawl_locked(mut job: RepoJob, locks: Arc<RepoLocks>, store: Arc<Store>) -> RepoOutcome {
    let _guard = locks.lock(&job.listing.uuid).await;
    match store.repo(&job.workspace, &job.listing.uuid) {
        Ok(stored) => job.stored = stored,
        Err(e) => {
            tracing::warn!(repo = %job.slug, error = %e, "cannot re-read the repository's record; using the pass's copy")
        }
    }
    crawl_one(job).await
}

/// The listing entry a stored repository had when it was last walked, for
/// a webhook walk that makes no listing request: same slug, default branch
/// and `updated_on`, so the walk notices no rename or branch change and the
/// next pass's gate still compares against the last listing it saw.
fn listing_of(repo: &RepoState) -> Repository {
    Repository {
        uuid: repo.uuid.clone(),
        slug: Some(repo.slug.clone()),
        full_name: Some(repo.full_name.clone()),
        name: None,
        mainbranch: repo
            .default_branch
            .clone()
            .map(|name| crate::bitbucket::models::Branch { name }),
        updated_on: repo
            .updated_on
            .as_deref()
            .and_then(|d| chrono::DateTime::parse_from_rfc3339(d).ok()),
        is_private: None,
    }
}

/// Starts a repository actor for `job` and waits for its outcome; an actor
/// that died (a panic in its crawl) is a failed repository, not a failed pass.
async fn crawl_one(job: RepoJob) -> RepoOutcome {
    let uuid = job.listing.uuid.clone();
    let workspace = job.workspace.clone();
    let reason = job.reason;
    let full_name = format!("{}/{}", job.workspace, job.slug);
    let actor = RepoActor::new(job).start();
    match actor.send(Crawl).await {
        Ok(outcome) => outcome,
        Err(e) => RepoOutcome::failed(
            workspace,
            full_name,
            uuid,
            reason,
            format!("repository actor died: {e}"),
        ),
    }
}
