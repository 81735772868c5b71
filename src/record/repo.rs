//! A repository as bbcrawl tracks it: where it stands, what happened to it,
//! and the walk of its default branch in progress (the saved position).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Events kept per repository (oldest dropped first).
const MAX_EVENTS: usize = 100;

/// Where a repository stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum RepoStatus {
    /// Listed but not crawled successfully yet.
    New,
    /// Its default branch is stored up to `head`.
    Ok,
    /// No default branch or no commits.
    Empty,
    /// The last crawl failed; retried next pass.
    Failed,
    /// Gone from the listing (or 404); its commits stay.
    Deleted,
}

impl RepoStatus {
    /// Every status, in the order reports list them (the `repositories_*`
    /// columns of `query stats`).
    pub const ALL: [RepoStatus; 5] = [
        RepoStatus::Ok,
        RepoStatus::Empty,
        RepoStatus::Failed,
        RepoStatus::Deleted,
        RepoStatus::New,
    ];

    /// As printed.
    pub fn as_str(self) -> &'static str {
        match self {
            RepoStatus::New => "new",
            RepoStatus::Ok => "ok",
            RepoStatus::Empty => "empty",
            RepoStatus::Failed => "failed",
            RepoStatus::Deleted => "deleted",
        }
    }
}

/// Something that happened to a repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RepoEventKind {
    /// The stored head is no longer on the default branch.
    ForcePush {
        /// The head that vanished.
        old_head: String,
    },
    /// `mainbranch` changed.
    DefaultBranchChanged {
        /// Before.
        from: Option<String>,
        /// After.
        to: Option<String>,
    },
    /// The slug changed (same uuid).
    Renamed {
        /// Old slug.
        from: String,
        /// New slug.
        to: String,
    },
    /// The repository disappeared.
    Deleted,
    /// A deleted repository reappeared.
    Restored,
    /// A periodic audit found changes that `updated_on` did not announce.
    AuditFoundChange {
        /// New commits the audit found.
        new_commits: u64,
    },
}

/// An event with its time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoEvent {
    /// When bbcrawl noticed it.
    pub at: DateTime<Utc>,
    /// What happened.
    #[serde(flatten)]
    pub kind: RepoEventKind,
}

/// A walk of a default branch in progress: the saved position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Walk {
    /// Branch being walked.
    pub branch: String,
    /// Commits excluded (the previous head, for an incremental walk).
    pub exclude: Vec<String>,
    /// First commit of the walk's first page: the head once the walk ends.
    /// `None` until the first page is stored.
    pub tip: Option<String>,
    /// The `next` link to fetch; `None` when every page is stored (the walk
    /// only needs finishing).
    pub next: Option<String>,
    /// A full walk after a rewrite: reachability is re-marked at its end.
    pub full: bool,
    /// Pages stored so far.
    pub pages: u64,
    /// When the walk began.
    pub started_at: DateTime<Utc>,
    /// The listing's `updated_on` in the pass that began the walk (and so
    /// read its tip): the state the walk's commits are complete up to. A
    /// walk finished in a later pass records this, not that pass's
    /// `updated_on`, so pushes made while it was interrupted still show as
    /// a change. `None` when the listing gave none, or for a walk saved by
    /// an older bbcrawl (then unknown: the finished walk is followed up).
    #[serde(default)]
    pub listed_updated_on: Option<String>,
}

impl Walk {
    /// Whether this walk is the repository's first crawl (no head yet):
    /// neither an incremental walk (`exclude`) nor a re-walk after a rewrite
    /// (`full`). Kept with the saved walk, so a first crawl that resumes in a
    /// later pass is still one (`since` applies to all of it).
    pub fn is_first_crawl(&self) -> bool {
        self.exclude.is_empty() && !self.full
    }
}

/// Everything the store keeps about one repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoState {
    /// The store's short id for the repository (0 until first stored).
    #[serde(default)]
    pub id: u32,
    /// Workspace name.
    pub workspace: String,
    /// Braced uuid: the identity.
    pub uuid: String,
    /// Current slug.
    pub slug: String,
    /// `workspace/slug`.
    pub full_name: String,
    /// Default branch as last listed.
    pub default_branch: Option<String>,
    /// Tip of the last finished walk.
    pub head: Option<String>,
    /// Branch `head` was read from.
    pub head_branch: Option<String>,
    /// A walk in progress.
    pub walk: Option<Walk>,
    /// Where it stands.
    pub status: RepoStatus,
    /// Commits stored (reachable or not).
    pub commits_stored: u64,
    /// Of those, no longer reachable from the default branch.
    pub commits_unreachable: u64,
    /// `updated_on` from the listing at the last successful crawl.
    pub updated_on: Option<String>,
    /// When bbcrawl first listed it.
    pub first_seen: DateTime<Utc>,
    /// End of the last successful crawl.
    pub last_sync: Option<DateTime<Utc>>,
    /// Start of the last crawl attempt.
    pub last_attempt: Option<DateTime<Utc>>,
    /// Why the last crawl failed.
    pub last_error: Option<String>,
    /// Failures in a row.
    pub consecutive_failures: u32,
    /// Recent events, oldest first.
    pub events: Vec<RepoEvent>,
    /// Last time its default branch was checked (any successful commits request).
    #[serde(default)]
    pub checked_at: Option<DateTime<Utc>>,
    /// Last time a check found something new (commits, a rewrite, a branch change).
    #[serde(default)]
    pub changed_at: Option<DateTime<Utc>>,
    /// Why it was, or was not, crawled in the last pass (see `schedule::Reason`).
    #[serde(default)]
    pub last_decision: Option<String>,
}

impl RepoState {
    /// A repository seen for the first time.
    pub fn new(
        workspace: &str,
        uuid: &str,
        slug: &str,
        full_name: &str,
        now: DateTime<Utc>,
    ) -> RepoState {
        RepoState {
            id: 0,
            workspace: workspace.to_owned(),
            uuid: uuid.to_owned(),
            slug: slug.to_owned(),
            full_name: full_name.to_owned(),
            default_branch: None,
            head: None,
            head_branch: None,
            walk: None,
            status: RepoStatus::New,
            commits_stored: 0,
            commits_unreachable: 0,
            updated_on: None,
            first_seen: now,
            last_sync: None,
            last_attempt: None,
            last_error: None,
            consecutive_failures: 0,
            events: Vec::new(),
            checked_at: None,
            changed_at: None,
            last_decision: None,
        }
    }

    /// Records an event, keeping the list bounded.
    pub fn record_event(&mut self, at: DateTime<Utc>, kind: RepoEventKind) {
        self.events.push(RepoEvent { at, kind });
        if self.events.len() > MAX_EVENTS {
            let excess = self.events.len() - MAX_EVENTS;
            self.events.drain(..excess);
        }
    }
}

/// Repositories by status and the commit totals of a set of repositories:
/// what `query stats`, the daemon's gauges and the demo report, counted
/// once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepoTotals {
    /// Repositories by status.
    pub by_status: std::collections::HashMap<RepoStatus, u64>,
    /// Commits stored (reachable or not).
    pub commits: u64,
    /// Of those, reachable from their default branch.
    pub reachable: u64,
    /// Repositories whose first crawl is not finished.
    pub backfilling: u64,
    /// Pages those first crawls are guessed to still need: Bitbucket does
    /// not say how long a branch is, so a walk that took N pages is assumed
    /// to need about N more.
    pub backfill_pages: u64,
}

impl RepoTotals {
    /// The totals of `repos`.
    pub fn of<'a>(repos: impl IntoIterator<Item = &'a RepoState>) -> RepoTotals {
        let mut t = RepoTotals::default();
        for r in repos {
            *t.by_status.entry(r.status).or_insert(0) += 1;
            t.commits += r.commits_stored;
            t.reachable += r.commits_stored.saturating_sub(r.commits_unreachable);
            if let (Some(walk), None) = (&r.walk, &r.head) {
                t.backfilling += 1;
                t.backfill_pages += walk.pages.max(1);
            }
        }
        t
    }

    /// Repositories with `status`.
    pub fn count(&self, status: RepoStatus) -> u64 {
        self.by_status.get(&status).copied().unwrap_or(0)
    }
}
