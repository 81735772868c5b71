//! From a signed push to a walk: which pushes fetch, when, and how often
//! (see the module docs of [`crate::hooks`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use super::{FetchSeen, HookStatus, COALESCE, FETCHES, MIN_GAP, PUSH_TO_STORED};
use crate::actors::{Crawler, HookTarget, HookWalkOptions, StopFlag};
use crate::bitbucket::models::Repository;
use crate::bitbucket::{ApiError, BitbucketClient};
use crate::record::RepoStatus;
use crate::schedule::SlugFilter;
use crate::shard::Shard;
use crate::store::{keys, Store};

/// The store's gauges are refreshed after webhook walks at most this often.
const GAUGES_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Entries idle this long are forgotten (their [`MIN_GAP`] is long past).
const FORGET_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// One branch a signed push moved (created or updated; a deletion is not
/// a move).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchMove {
    /// The branch's name.
    pub branch: String,
    /// Its new tip.
    pub hash: String,
}

/// A signed push, as the receiver read it.
#[derive(Debug, Clone)]
pub struct Push {
    /// The configured workspace it is for (lower case).
    pub workspace: String,
    /// The repository's braced uuid.
    pub uuid: String,
    /// Its slug, from `full_name`.
    pub slug: String,
    /// The branches it moved.
    pub moves: Vec<BranchMove>,
    /// When the delivery arrived.
    pub received: Instant,
}

/// What became of a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// A walk is scheduled (or one already scheduled will cover it).
    Scheduled,
    /// Its default-branch tip is already the stored head: nothing to fetch.
    AlreadyStored,
    /// Nothing to fetch: another branch, or a repository not crawled here.
    Ignored,
}

/// What the scheduler needs besides the crawler.
#[derive(Clone)]
pub struct SchedulerOptions {
    /// Which repositories are crawled, by slug.
    pub slugs: SlugFilter,
    /// This instance's shard, if any.
    pub shard: Option<Shard>,
    /// First crawls skip commits older than this.
    pub since: Option<DateTime<Utc>>,
    /// Set when the daemon stops: walks end, no new ones start.
    pub stop: StopFlag,
    /// Webhook walks running at once (a pass's repository concurrency).
    pub concurrency: usize,
}

/// Schedules webhook walks; cheap to clone.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

struct Inner {
    crawler: Arc<Crawler>,
    store: Arc<Store>,
    client: BitbucketClient,
    opts: SchedulerOptions,
    entries: Mutex<HashMap<String, Entry>>,
    /// Bounds the walks running at once (a push to every repository at
    /// once queues, it does not start thousands of walks).
    walks: tokio::sync::Semaphore,
    wake: Notify,
    status: Arc<Mutex<HookStatus>>,
    gauges_at: Mutex<Option<Instant>>,
}

/// One repository's webhook work.
#[derive(Default)]
struct Entry {
    workspace: String,
    slug: String,
    /// Its listing entry must be read first (new, renamed or deleted).
    listing: bool,
    /// When the next walk starts, if one is scheduled.
    due: Option<Instant>,
    running: bool,
    /// Pushes arrived while a walk ran: another walk follows, unless the
    /// one running stored their tips.
    again: bool,
    /// Arrival times of the deliveries the next walk answers.
    waiting: Vec<Instant>,
    /// The tips they pushed.
    hashes: Vec<String>,
    last_start: Option<Instant>,
    idle_since: Option<Instant>,
}

impl Scheduler {
    /// A scheduler walking through `crawler`; its loop runs until
    /// `opts.stop` is set and [`Scheduler::stop`] is called.
    pub fn start(
        crawler: Arc<Crawler>,
        store: Arc<Store>,
        client: BitbucketClient,
        opts: SchedulerOptions,
        status: Arc<Mutex<HookStatus>>,
    ) -> Scheduler {
        let scheduler = Scheduler {
            inner: Arc::new(Inner {
                crawler,
                store,
                client,
                entries: Mutex::new(HashMap::new()),
                walks: tokio::sync::Semaphore::new(opts.concurrency.max(1)),
                opts,
                wake: Notify::new(),
                status,
                gauges_at: Mutex::new(None),
            }),
        };
        let looping = scheduler.clone();
        tokio::spawn(async move { looping.run().await });
        scheduler
    }

    /// Wakes the loop so it sees the stop flag.
    pub fn stop(&self) {
        self.inner.wake.notify_one();
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.inner.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Decides a signed push at once (one store read, no request): a walk
    /// of its repository, or nothing.
    pub fn offer(&self, push: Push) -> Offer {
        let opts = &self.inner.opts;
        if !opts.slugs.wants(&push.slug) || opts.shard.is_some_and(|s| !s.owns(&push.uuid)) {
            return Offer::Ignored;
        }
        let stored = match self.inner.store.repo(&push.workspace, &push.uuid) {
            Ok(r) => r,
            Err(e) => {
                // The walk would fail the same way; the pass reports it.
                tracing::warn!(error = %e, "webhook: cannot read the repository's record");
                return Offer::Ignored;
            }
        };
        // Unknown, renamed, deleted, or without a default branch so far
        // (a first push to an empty repository gives it one): the listing
        // entry says what it is now.
        let listing = stored.as_ref().is_none_or(|r| {
            r.status == RepoStatus::Deleted || r.slug != push.slug || r.default_branch.is_none()
        });
        let hashes: Vec<String> = match &stored {
            // Not known as it is now: any branch it moved means it exists
            // and has commits; its listing entry says which is the default.
            _ if listing => push.moves.iter().map(|m| m.hash.clone()).collect(),
            Some(repo) => push
                .moves
                .iter()
                .filter(|m| repo.default_branch.as_deref() == Some(m.branch.as_str()))
                .map(|m| m.hash.clone())
                .collect(),
            None => Vec::new(),
        };
        if hashes.is_empty() {
            return Offer::Ignored;
        }
        let head = stored.as_ref().and_then(|r| r.head.as_deref());
        let mut entries = self.entries();
        let idle = entries
            .get(&push.uuid)
            .is_none_or(|e| !e.running && e.due.is_none());
        if !listing && idle && hashes.iter().all(|h| Some(h.as_str()) == head) {
            return Offer::AlreadyStored;
        }
        let now = Instant::now();
        let e = entries.entry(push.uuid.clone()).or_default();
        e.workspace = push.workspace;
        e.slug = push.slug;
        e.listing |= listing;
        e.waiting.push(push.received);
        e.hashes.extend(hashes);
        e.idle_since = None;
        if e.running {
            e.again = true;
        } else if e.due.is_none() {
            let gap = e.last_start.map(|t| t + MIN_GAP).unwrap_or(now);
            e.due = Some((push.received + COALESCE).max(gap));
        }
        drop(entries);
        self.inner.wake.notify_one();
        Offer::Scheduled
    }

    async fn run(self) {
        loop {
            if self
                .inner
                .opts
                .stop
                .load(std::sync::atomic::Ordering::Relaxed)
            {
                return;
            }
            let next = self.start_due();
            let sleep = async {
                match next {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.inner.wake.notified() => {}
                _ = sleep => {}
            }
        }
    }

    /// Starts every walk that is due; returns when the next one is.
    fn start_due(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        let mut starting = Vec::new();
        {
            let mut entries = self.entries();
            entries.retain(|_, e| e.idle_since.is_none_or(|t| now - t < FORGET_AFTER));
            for (uuid, e) in entries.iter_mut() {
                match e.due {
                    Some(due) if !e.running && due <= now => {
                        e.running = true;
                        e.due = None;
                        e.last_start = Some(now);
                        let job = Job {
                            uuid: uuid.clone(),
                            workspace: e.workspace.clone(),
                            slug: e.slug.clone(),
                            listing: std::mem::take(&mut e.listing),
                            waiting: std::mem::take(&mut e.waiting),
                        };
                        e.hashes.clear();
                        starting.push(job);
                    }
                    Some(due) if !e.running => next = Some(next.map_or(due, |n| n.min(due))),
                    _ => {}
                }
            }
        }
        for job in starting {
            tracing::info!(repo = %format!("{}/{}", job.workspace, job.slug), deliveries = job.waiting.len(), "webhook: walking the pushed default branch");
            let scheduler = self.clone();
            tokio::spawn(async move { scheduler.walk(job).await });
        }
        next
    }

    /// One webhook walk, then the bookkeeping: metrics, status, and the
    /// walk that follows if pushes came meanwhile.
    async fn walk(&self, job: Job) {
        let inner = &self.inner;
        let full_name = format!("{}/{}", job.workspace, job.slug);
        let result = match inner.walks.acquire().await {
            Ok(_permit) => self.walk_once(&job).await,
            Err(e) => Err(e.to_string()),
        };
        let ended = Instant::now();
        let (ok, new_commits, error) = match result {
            Ok(Some((ok, new_commits, error))) => (ok, new_commits, error),
            Ok(None) => (true, 0, None),
            Err(e) => (false, 0, Some(e)),
        };
        metrics::counter!(FETCHES, "result" => if ok { "ok" } else { "failed" }).increment(1);
        if ok {
            for t in &job.waiting {
                metrics::histogram!(PUSH_TO_STORED).record((ended - *t).as_secs_f64());
            }
        } else {
            tracing::warn!(repo = %full_name, error = error.as_deref().unwrap_or(""), "webhook walk failed; the next pass retries it");
        }
        let first = job.waiting.iter().min().copied().unwrap_or(ended);
        let status = {
            let mut status = inner.status.lock().unwrap_or_else(|e| e.into_inner());
            status.last_fetch = Some(FetchSeen {
                at: Utc::now(),
                repository: full_name,
                result: if ok { "ok" } else { "failed" }.to_owned(),
                new_commits,
                seconds: (ended - first).as_secs_f64(),
                error,
            });
            status.clone()
        };
        persist(&inner.crawler, &status).await;
        if ok {
            self.refresh_gauges();
        }

        // Pushes that came while this walk ran: walked again, unless this
        // walk already stored their tips.
        let head = inner
            .store
            .repo(&job.workspace, &job.uuid)
            .ok()
            .flatten()
            .and_then(|r| r.head);
        let mut entries = self.entries();
        if let Some(e) = entries.get_mut(&job.uuid) {
            e.running = false;
            if e.again {
                e.again = false;
                let covered = !e.listing
                    && !e.hashes.is_empty()
                    && e.hashes.iter().all(|h| Some(h) == head.as_ref());
                if covered && ok {
                    for t in e.waiting.drain(..) {
                        metrics::histogram!(PUSH_TO_STORED).record((ended - t).as_secs_f64());
                    }
                    e.hashes.clear();
                    e.idle_since = Some(ended);
                } else {
                    let gap = e.last_start.map(|t| t + MIN_GAP).unwrap_or(ended);
                    e.due = Some(gap.max(ended));
                }
            } else {
                e.idle_since = Some(ended);
            }
        }
        drop(entries);
        inner.wake.notify_one();
    }

    /// Reads the listing entry if needed, then walks. `Ok(None)`: nothing
    /// to walk (gone, or not crawled here); else whether it went well, the
    /// new commits and the error.
    async fn walk_once(&self, job: &Job) -> Result<Option<(bool, u64, Option<String>)>, String> {
        let inner = &self.inner;
        let target = if job.listing {
            let url = inner
                .client
                .repository_url(&job.workspace, &job.slug)
                .map_err(|e| e.to_string())?;
            match inner.client.get_json::<Repository>(url).await {
                Ok(listing) => {
                    let wanted = listing.slug().is_some_and(|s| inner.opts.slugs.wants(s))
                        && inner.opts.shard.is_none_or(|s| s.owns(&listing.uuid));
                    if !wanted {
                        return Ok(None);
                    }
                    HookTarget::Listed(listing)
                }
                // Deleted (or renamed again) since the push: the next pass
                // sees the listing.
                Err(ApiError::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(e.to_string()),
            }
        } else {
            HookTarget::Known {
                uuid: job.uuid.clone(),
            }
        };
        let opts = HookWalkOptions {
            since: inner.opts.since,
            stop: Arc::clone(&inner.opts.stop),
        };
        let outcome = inner
            .crawler
            .hook_walk(&job.workspace, target, opts)
            .await
            .map_err(|e| e.to_string())?;
        Ok(outcome.map(|o| {
            let ok = o.error.is_none() && !o.interrupted && o.status != RepoStatus::Failed;
            (ok, o.new_commits, o.error)
        }))
    }

    /// `bbcrawl_store_commits` and the repositories by state, as after a
    /// pass (at most every [`GAUGES_EVERY`]: passes may be an hour apart
    /// when webhooks keep the store fresh).
    fn refresh_gauges(&self) {
        {
            let mut last = self
                .inner
                .gauges_at
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < GAUGES_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        match self.inner.store.repos() {
            Ok(repos) => {
                let totals = crate::record::RepoTotals::of(&repos);
                metrics::gauge!(crate::telemetry::STORE_COMMITS).set(totals.commits as f64);
                for status in RepoStatus::ALL {
                    metrics::gauge!(crate::telemetry::REPOS, "state" => status.as_str())
                        .set(totals.count(status) as f64);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the store for its gauges"),
        }
    }
}

struct Job {
    uuid: String,
    workspace: String,
    slug: String,
    listing: bool,
    waiting: Vec<Instant>,
}

/// Keeps the last accepted delivery and walk in the store's meta (after
/// each walk: every scheduled delivery ends in one).
async fn persist(crawler: &Crawler, status: &HookStatus) {
    let kept = HookStatus {
        last_accepted: status.last_accepted.clone(),
        last_fetch: status.last_fetch.clone(),
        ..HookStatus::default()
    };
    let Ok(value) = serde_json::to_value(&kept) else {
        return;
    };
    if let Err(e) = crawler.put_meta(keys::META_HOOKS, value).await {
        tracing::warn!(error = %e, "cannot record the webhook status in the store");
    }
}
