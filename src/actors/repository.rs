//! The repository actor: walks one repository's default branch (SPEC
//! section 5) and hands every page to the writer, fetching the next page
//! only after the writer acknowledged the previous one.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix::{Actor, Addr, Context, Handler, Message, ResponseFuture};
use chrono::{DateTime, Utc};

use super::writer::{MarkReachable, PutRepo, WritePage, Writer};
use super::{PassEvent, PassObserver, StopFlag, WriterQueue};
use crate::bitbucket::models::{Commit, Repository};
use crate::bitbucket::{ApiError, BitbucketClient, VisitedPages};
use crate::record::CommitRecord;
use crate::record::{RepoEventKind, RepoState, RepoStatus, Walk};
use crate::schedule::Reason;
use crate::store::StoreError;
use crate::telemetry;

/// Everything one repository's crawl needs.
pub struct RepoJob {
    /// The API client (shared budgets).
    pub client: BitbucketClient,
    /// The writer.
    pub writer: Addr<Writer>,
    /// Workspace name.
    pub workspace: String,
    /// The repository as listed in this pass.
    pub listing: Repository,
    /// Its slug (from the listing, falling back to `full_name`).
    pub slug: String,
    /// What the store knew of it, if anything.
    pub stored: Option<RepoState>,
    /// Re-walk the whole default branch (`sync --full`).
    pub full: bool,
    /// First crawls skip commits older than this.
    pub since: Option<DateTime<Utc>>,
    /// Progress and logs.
    pub observer: Arc<dyn PassObserver>,
    /// Set when the pass must stop (fatal error, shutdown).
    pub stop: StopFlag,
    /// The writer's queue depth, shared by the pass.
    pub queue: Arc<WriterQueue>,
    /// Why this repository is crawled this pass.
    pub reason: Reason,
    /// At most this many commit pages this pass (a backfill's share).
    pub max_pages: Option<u64>,
}

/// How one repository's crawl ended.
#[derive(Debug, Clone)]
pub struct RepoOutcome {
    /// Workspace name.
    pub workspace: String,
    /// `workspace/slug`.
    pub full_name: String,
    /// Repository uuid.
    pub uuid: String,
    /// Status after the crawl.
    pub status: RepoStatus,
    /// Commits stored that were not stored before.
    pub new_commits: u64,
    /// Commit pages fetched.
    pub pages: u64,
    /// Commits found unreachable by a rewrite.
    pub orphaned: u64,
    /// Events noticed this pass.
    pub events: Vec<RepoEventKind>,
    /// Why it failed.
    pub error: Option<String>,
    /// A 401/403 that must stop the whole pass.
    pub fatal: Option<ApiError>,
    /// The pass was stopped before this repository finished.
    pub interrupted: bool,
    /// Why it was crawled.
    pub reason: Reason,
    /// A backfill that used its share of the budget; it continues next pass.
    pub paused: bool,
    /// An audit found changes `updated_on` had not announced.
    pub audit_found: bool,
}

impl RepoOutcome {
    /// A repository that failed before (or without) crawling: nothing done.
    pub fn failed(
        workspace: String,
        full_name: String,
        uuid: String,
        reason: Reason,
        error: String,
    ) -> RepoOutcome {
        RepoOutcome {
            workspace,
            full_name,
            uuid,
            status: RepoStatus::Failed,
            new_commits: 0,
            pages: 0,
            orphaned: 0,
            events: vec![],
            error: Some(error),
            fatal: None,
            interrupted: false,
            reason,
            paused: false,
            audit_found: false,
        }
    }
}

/// Asks the repository actor to crawl; answered when it is done.
#[derive(Message)]
#[rtype(result = "RepoOutcome")]
pub struct Crawl;

/// The repository actor. It handles one [`Crawl`] and is then dropped.
pub struct RepoActor {
    job: Option<RepoJob>,
}

impl RepoActor {
    /// An actor for one job.
    pub fn new(job: RepoJob) -> RepoActor {
        RepoActor { job: Some(job) }
    }
}

impl Actor for RepoActor {
    type Context = Context<Self>;
}

impl Handler<Crawl> for RepoActor {
    type Result = ResponseFuture<RepoOutcome>;

    fn handle(&mut self, _msg: Crawl, _ctx: &mut Self::Context) -> Self::Result {
        match self.job.take() {
            Some(job) => Box::pin(crawl(job)),
            None => Box::pin(async {
                // One actor, one crawl: a second message is a supervisor bug.
                RepoOutcome::failed(
                    String::new(),
                    String::new(),
                    String::new(),
                    Reason::Forced,
                    "repository actor asked to crawl twice".into(),
                )
            }),
        }
    }
}

/// Why a walk did not finish.
#[derive(Debug, thiserror::Error)]
enum CrawlError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the writer is gone: {0}")]
    Writer(#[from] actix::MailboxError),
    #[error("the pass was stopped")]
    Stopped,
}

/// How a walk ended.
enum WalkEnd {
    /// Finished: the repository's new status.
    Done(RepoStatus),
    /// Stopped at its page share; the saved walk continues next pass.
    Paused,
}

/// Progress of one crawl, reported in the outcome.
#[derive(Default)]
struct Tally {
    new_commits: u64,
    pages: u64,
    orphaned: u64,
    events: Vec<RepoEventKind>,
}

async fn crawl(job: RepoJob) -> RepoOutcome {
    let now = Utc::now();
    let listing = &job.listing;
    let full_name = listing
        .full_name
        .clone()
        .unwrap_or_else(|| format!("{}/{}", job.workspace, job.slug));
    let mut repo = job.stored.clone().unwrap_or_else(|| {
        RepoState::new(&job.workspace, &listing.uuid, &job.slug, &full_name, now)
    });
    let mut tally = Tally::default();

    // What the listing tells before any commits request.
    if repo.slug != job.slug {
        let event = RepoEventKind::Renamed {
            from: repo.slug.clone(),
            to: job.slug.clone(),
        };
        note(&mut repo, &mut tally, event);
        repo.slug = job.slug.clone();
    }
    repo.full_name = full_name.clone();
    if repo.status == RepoStatus::Deleted {
        note(&mut repo, &mut tally, RepoEventKind::Restored);
    }
    let branch = listing.default_branch().map(str::to_owned);
    if repo.default_branch != branch && (repo.default_branch.is_some() || repo.head.is_some()) {
        let event = RepoEventKind::DefaultBranchChanged {
            from: repo.default_branch.clone(),
            to: branch.clone(),
        };
        note(&mut repo, &mut tally, event);
    }
    repo.default_branch = branch;
    repo.last_attempt = Some(now);
    repo.last_decision = Some(job.reason.as_str().to_owned());
    let events_before = tally.events.len();

    let result = walk(&job, &mut repo, &mut tally).await;
    let (mut error, mut fatal, mut interrupted, mut paused, mut audit_found) =
        (None, None, false, false, false);
    match result {
        Ok(end) => {
            let found = tally.new_commits > 0 || tally.events.len() > events_before;
            repo.checked_at = Some(Utc::now());
            if found {
                repo.changed_at = repo.checked_at;
            }
            if job.reason == Reason::Audit && found {
                // `updated_on` did not announce this change: record it, so
                // an operator can see whether the gate ever misses one.
                audit_found = true;
                let event = RepoEventKind::AuditFoundChange {
                    new_commits: tally.new_commits,
                };
                note(&mut repo, &mut tally, event);
                tracing::warn!(repo = %repo.full_name, new_commits = tally.new_commits, "audit found a change the listing's updated_on did not show");
            }
            match end {
                WalkEnd::Done(status) => {
                    repo.status = status;
                    repo.last_sync = repo.checked_at;
                    repo.updated_on = listing.updated_on.map(|d| d.to_rfc3339());
                }
                WalkEnd::Paused => paused = true,
            }
            repo.last_error = None;
            repo.consecutive_failures = 0;
        }
        Err(CrawlError::Stopped) => interrupted = true,
        Err(e) => {
            if let CrawlError::Api(api) = &e {
                if api.is_fatal() {
                    fatal = Some(api.clone());
                }
            }
            repo.status = RepoStatus::Failed;
            repo.last_error = Some(e.to_string());
            repo.consecutive_failures += 1;
            error = Some(e.to_string());
        }
    }
    if let Err(e) = job
        .writer
        .send(PutRepo(repo.clone()))
        .await
        .map_err(CrawlError::from)
        .and_then(|r| r.map_err(CrawlError::from))
    {
        error.get_or_insert_with(|| e.to_string());
        repo.status = RepoStatus::Failed;
    }
    let outcome = RepoOutcome {
        workspace: job.workspace.clone(),
        full_name,
        uuid: repo.uuid.clone(),
        status: repo.status,
        new_commits: tally.new_commits,
        pages: tally.pages,
        orphaned: tally.orphaned,
        events: tally.events,
        error,
        fatal,
        interrupted,
        reason: job.reason,
        paused,
        audit_found,
    };
    job.observer.event(PassEvent::RepoFinished(&outcome));
    outcome
}

fn note(repo: &mut RepoState, tally: &mut Tally, kind: RepoEventKind) {
    repo.record_event(Utc::now(), kind.clone());
    tally.events.push(kind);
}

/// Walks the default branch: resumes a saved walk, or starts a full or an
/// incremental one; stores every page with its cursor; finishes the walk.
async fn walk(
    job: &RepoJob,
    repo: &mut RepoState,
    tally: &mut Tally,
) -> Result<WalkEnd, CrawlError> {
    let Some(branch) = repo.default_branch.clone() else {
        // No mainbranch: nothing to crawl. Stored commits stay.
        repo.walk = None;
        return Ok(WalkEnd::Done(RepoStatus::Empty));
    };
    let branch_changed = repo.head_branch.as_deref().is_some_and(|b| b != branch);
    // What this pass's listing says; a walk begun now is complete up to it.
    let listed = job.listing.updated_on.map(|d| d.to_rfc3339());
    let mut resumed = false;
    let mut walk = match repo.walk.take() {
        // Resume a saved walk of the same branch (a full one even under
        // --full: it is already what --full asks for).
        Some(w) if w.branch == branch && (!job.full || w.exclude.is_empty()) => {
            resumed = true;
            w
        }
        _ => {
            let full = job.full || repo.head.is_none() || branch_changed;
            let since_head = if full { None } else { repo.head.clone() };
            new_walk(&branch, since_head, repo, listed.clone())
        }
    };
    loop {
        if let Some(end) = walk_pages(job, repo, tally, &branch, &listed, &mut walk).await? {
            return Ok(end);
        }
        finish_walk(job, repo, tally, &branch, &walk).await?;
        // A walk begun in an earlier pass (killed, or a backfill spread over
        // passes) read its tip then: commits pushed since are not in it,
        // although this pass's listing already announces them. Fetch them
        // now, before the repository counts as up to date with this listing
        // — otherwise the gate would find it unchanged from then on.
        // (Unknown for a walk saved by an older bbcrawl: followed up too.)
        let behind =
            resumed && (walk.listed_updated_on.is_none() || walk.listed_updated_on != listed);
        match repo.head.clone() {
            Some(head) if behind => {
                tracing::info!(repo = %repo.full_name, "walk from an earlier pass finished; fetching what was pushed since it began");
                resumed = false;
                walk = new_walk(&branch, Some(head), repo, listed.clone());
            }
            _ => break,
        }
    }
    Ok(WalkEnd::Done(if repo.head.is_some() {
        RepoStatus::Ok
    } else {
        RepoStatus::Empty
    }))
}

/// Fetches and stores the pages of `walk` until it has none left (`None`:
/// the walk is complete) or the crawl ends here: the walk used this pass's
/// page share (its position is saved), or the branch turned out empty or
/// gone. Restarts the walk as the API requires (a rewritten branch, a
/// rejected saved link).
async fn walk_pages(
    job: &RepoJob,
    repo: &mut RepoState,
    tally: &mut Tally,
    branch: &str,
    listed: &Option<String>,
    walk: &mut Walk,
) -> Result<Option<WalkEnd>, CrawlError> {
    let mut restarted = false;
    let mut visited = VisitedPages::default();
    loop {
        if job.stop.load(Ordering::Relaxed) {
            repo.walk = Some(walk.clone());
            return Err(CrawlError::Stopped);
        }
        let url = if walk.pages == 0 {
            job.client
                .commits_url(&job.workspace, &repo.slug, branch, &walk.exclude)
        } else if let Some(next) = walk.next.clone() {
            job.client.check_link(&next)
        } else {
            break;
        };
        let fetched = match url.and_then(|url| visited.visit(&url).map(|()| url)) {
            Ok(url) => job.client.get_page::<Commit>(url).await,
            Err(e) => Err(e),
        };
        let page = match fetched {
            Ok(page) => page,
            Err(ApiError::NotFound { .. }) if walk.pages == 0 && !walk.exclude.is_empty() => {
                // The stored head is gone from the branch: a force push.
                // Walk the whole branch again and re-mark reachability.
                let old_head = walk.exclude.first().cloned().unwrap_or_default();
                tracing::info!(repo = %repo.full_name, %old_head, "stored head no longer on the default branch (force push); walking it again");
                note(repo, tally, RepoEventKind::ForcePush { old_head });
                *walk = new_walk(branch, None, repo, listed.clone());
                visited.clear();
                continue;
            }
            Err(ApiError::NotFound { shas, .. }) if walk.pages == 0 && !shas.is_empty() => {
                // The repository is there but says the branch is unknown
                // (`error.data.shas`): a `mainbranch` with no commits yet,
                // as an empty repository may report it. Like no
                // `mainbranch` at all: empty, stored commits stay.
                tracing::info!(repo = %repo.full_name, %branch, "default branch has no commits (404 naming the revision)");
                repo.walk = None;
                return Ok(Some(WalkEnd::Done(RepoStatus::Empty)));
            }
            Err(ApiError::NotFound { .. }) if walk.pages == 0 => {
                // The listed branch (or the repository) vanished since the
                // listing: the next listing tells which.
                note(repo, tally, RepoEventKind::Deleted);
                return Ok(Some(WalkEnd::Done(RepoStatus::Deleted)));
            }
            Err(
                e @ (ApiError::NotFound { .. }
                | ApiError::Rejected { status: 400, .. }
                | ApiError::ForeignOrigin { .. }),
            ) if walk.pages > 0 && !restarted => {
                // Bitbucket rejected the saved `next` link (expired, or not
                // ours): start this walk again from the top; writes are
                // idempotent.
                tracing::warn!(repo = %repo.full_name, error = %e, "saved position rejected; restarting the walk from the top");
                restarted = true;
                // The abandoned walk stored pages of the branch as it was
                // when it began; a force push since may have taken some of
                // them off it, and the new walk (from the new tip) never
                // sees them again: re-mark reachability at its end.
                let remark = walk.pages > 0 || walk.full;
                *walk = new_walk(branch, walk.exclude.first().cloned(), repo, listed.clone());
                walk.full |= remark;
                visited.clear();
                continue;
            }
            Err(e) => {
                repo.walk = Some(walk.clone());
                return Err(e.into());
            }
        };
        tally.pages += 1;
        metrics::counter!(telemetry::PAGES_FETCHED).increment(1);
        metrics::counter!(telemetry::COMMITS_FETCHED).increment(page.values.len() as u64);

        // A `next` link is saved only if it may be followed.
        let mut next = match &page.next {
            Some(n) => {
                if let Err(e) = job.client.check_link(n) {
                    repo.walk = Some(walk.clone());
                    return Err(e.into());
                }
                Some(n.clone())
            }
            None => None,
        };
        let mut records: Vec<CommitRecord> = page
            .values
            .iter()
            .map(|c| c.to_record(&job.workspace, &repo.slug, &repo.uuid, branch))
            .collect();
        if walk.is_first_crawl() {
            if let Some(since) = job.since {
                let before = records.len();
                records.retain(|r| r.date >= since);
                // Dates are not monotonic along the list, so only a page
                // entirely older than `since` ends the walk.
                if before > 0 && records.is_empty() {
                    next = None;
                }
            }
        }
        if walk.tip.is_none() {
            walk.tip = page.values.first().map(|c| c.hash.to_ascii_lowercase());
        }
        walk.pages += 1;
        walk.next = next;
        repo.walk = Some(walk.clone());
        let queued = job.queue.enter();
        let stored = job
            .writer
            .send(WritePage {
                repo: repo.clone(),
                commits: records,
            })
            .await??;
        drop(queued);
        tally.new_commits += stored.new_commits;
        *repo = stored.repo;
        job.observer.event(PassEvent::PageStored {
            full_name: &repo.full_name,
            new_commits: stored.new_commits,
        });
        if walk.next.is_none() {
            break;
        }
        if job.max_pages.is_some_and(|max| tally.pages >= max) {
            // This backfill used its share of the pass's budget; the saved
            // walk continues next pass.
            return Ok(Some(WalkEnd::Paused));
        }
    }

    Ok(None)
}

/// A walk with every page stored: its tip becomes the head, and a full
/// walk re-marks reachability.
async fn finish_walk(
    job: &RepoJob,
    repo: &mut RepoState,
    tally: &mut Tally,
    branch: &str,
    walk: &Walk,
) -> Result<(), CrawlError> {
    repo.walk = None;
    if let Some(tip) = walk.tip.clone() {
        repo.head = Some(tip);
    } else if walk.exclude.is_empty() {
        // A full walk that found no commit: the branch is empty.
        repo.head = None;
    }
    repo.head_branch = Some(branch.to_owned());
    if walk.full {
        if let Some(head) = repo.head.clone() {
            let (saved, orphaned) = job
                .writer
                .send(MarkReachable {
                    repo: repo.clone(),
                    head,
                })
                .await??;
            *repo = saved;
            tally.orphaned += orphaned;
        }
    }
    Ok(())
}

/// A fresh walk of `branch`: incremental from `since_head`, or full. A full
/// walk of a repository that had a head re-marks reachability at its end
/// (on a first crawl there is nothing to orphan, and a `since` cutoff would
/// leave gaps in the parent chains the marking follows).
fn new_walk(
    branch: &str,
    since_head: Option<String>,
    repo: &RepoState,
    listed_updated_on: Option<String>,
) -> Walk {
    let full = since_head.is_none() && repo.head.is_some();
    Walk {
        branch: branch.to_owned(),
        exclude: since_head.into_iter().collect(),
        tip: None,
        next: None,
        full,
        pages: 0,
        started_at: Utc::now(),
        listed_updated_on,
    }
}
