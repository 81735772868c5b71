//! The crawl's actors (actix 0.13) — the only place actix appears.
//!
//! - [`supervisor`]: lists each workspace's repositories, starts one
//!   repository actor per repository (a bounded number at a time), records
//!   repositories that disappeared, collects outcomes into a [`PassSummary`].
//! - [`repository`]: walks one default branch page by page (SPEC section 5)
//!   and sends each page to the writer with `send(...).await`, fetching the
//!   next page only after the acknowledgement. Never `do_send` for data: it
//!   ignores mailbox bounds and drops silently on a closed mailbox.
//! - [`writer`]: the single owner of store writes, on its own thread.
//!
//! Backpressure: each repository actor has at most one page waiting at the
//! writer, so the writer's queue never holds more than one page per actor.

pub mod repository;
pub mod supervisor;
pub mod writer;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::telemetry;

pub use repository::RepoOutcome;
pub use supervisor::{
    run_pass, Crawler, HookTarget, HookWalkOptions, PassEnd, PassError, PassOptions, RepoLocks,
    DRAIN_DEADLINE,
};

/// Set to stop a pass: repository actors check it before every page.
pub type StopFlag = Arc<AtomicBool>;

/// Pages handed to the writer and not yet acknowledged: the writer's
/// queue. Each repository actor waits for its acknowledgement before it
/// fetches again, so the depth never exceeds the actors alive.
#[derive(Debug, Default)]
pub struct WriterQueue {
    depth: AtomicUsize,
    peak: AtomicUsize,
}

impl WriterQueue {
    /// Pages waiting now.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    /// The most pages that ever waited at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// Counts one page until the guard is dropped.
    pub fn enter(self: &Arc<Self>) -> QueuedPage {
        let now = self.depth.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(now, Ordering::Relaxed);
        metrics::gauge!(telemetry::WRITER_QUEUE_DEPTH).increment(1.0);
        QueuedPage(Arc::clone(self))
    }
}

/// A page in the writer's queue (see [`WriterQueue::enter`]).
pub struct QueuedPage(Arc<WriterQueue>);

impl Drop for QueuedPage {
    fn drop(&mut self) {
        self.0.depth.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!(telemetry::WRITER_QUEUE_DEPTH).decrement(1.0);
    }
}

/// What a pass reports as it goes (progress bars, log lines).
pub enum PassEvent<'a> {
    /// A workspace's listing was read.
    Listed {
        /// Workspace.
        workspace: &'a str,
        /// Repositories that will be crawled this pass.
        repos: usize,
    },
    /// A page was stored.
    PageStored {
        /// `workspace/slug`.
        full_name: &'a str,
        /// Commits new to the store.
        new_commits: u64,
    },
    /// A repository is done (ok, empty, failed, deleted or interrupted).
    RepoFinished(&'a RepoOutcome),
}

/// Receives [`PassEvent`]s; must be cheap (called on the crawl's thread).
pub trait PassObserver: Send + Sync {
    /// One event.
    fn event(&self, event: PassEvent<'_>);
}

/// An observer that ignores everything.
pub struct Quiet;

impl PassObserver for Quiet {
    fn event(&self, _event: PassEvent<'_>) {}
}

/// The result of one pass.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PassSummary {
    /// When it started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Wall time.
    pub duration_seconds: f64,
    /// Repositories crawled this pass.
    pub repos: u64,
    /// Of those, ok.
    pub ok: u64,
    /// Of those, empty.
    pub empty: u64,
    /// Of those, failed.
    pub failed: u64,
    /// Repositories found deleted this pass.
    pub deleted: u64,
    /// Commits stored that were not stored before.
    pub new_commits: u64,
    /// Commit pages fetched.
    pub pages: u64,
    /// Commits a rewrite made unreachable.
    pub orphaned: u64,
    /// HTTP requests sent.
    pub requests: u64,
    /// 429 answers.
    pub rate_limited: u64,
    /// The pass was stopped before it finished.
    pub interrupted: bool,
    /// The most pages that waited at the writer at once.
    pub writer_queue_peak: u64,
    /// Repositories skipped: unchanged and no audit due.
    pub skipped: u64,
    /// Repositories checked because their audit was due.
    pub audited: u64,
    /// Audits that found a change the listing had not announced.
    pub audit_found: u64,
    /// Audits postponed because the budget was needed for changes and backfill.
    pub audits_deferred: u64,
    /// First crawls that used their share of this pass and continue next pass.
    pub backfilling: u64,
    /// `workspace/slug: error` for each failed repository.
    pub failures: Vec<String>,
    /// The shard this instance crawls (`I/N`), when one is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    /// Listed repositories that belong to other shards (not crawled, not
    /// stored, not counted above).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub other_shards: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl PassSummary {
    /// The closing summary line.
    pub fn line(&self) -> String {
        let (shard, others) = match &self.shard {
            Some(shard) => (
                format!("shard {shard}: "),
                format!(" ({} listed for other shards)", self.other_shards),
            ),
            None => (String::new(), String::new()),
        };
        format!(
            "{shard}{} repositories{others}: {} ok, {} empty, {} failed, {} deleted, {} skipped unchanged{}{}; {} new commits; {} requests, {} rate limited (429); {}",
            self.repos + self.skipped + self.audits_deferred,
            self.ok,
            self.empty,
            self.failed,
            self.deleted,
            self.skipped + self.audits_deferred,
            if self.audited > 0 {
                format!(", {} audited ({} found changes)", self.audited, self.audit_found)
            } else {
                String::new()
            },
            if self.backfilling > 0 {
                format!(", {} still backfilling", self.backfilling)
            } else {
                String::new()
            },
            self.new_commits,
            self.requests,
            self.rate_limited,
            crate::human::duration(Duration::from_secs_f64(self.duration_seconds.max(0.0)))
        )
    }
}
