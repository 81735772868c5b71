//! Everything sled: the key layout ([`keys`]), the schema version, atomic
//! page writes, reachability marking and the reads queries need. The only
//! module that knows sled exists; it knows nothing of HTTP or API payloads,
//! only records.
//!
//! Writes come from one writer (the writer actor) only; reads may come from
//! anywhere. Every page of commits is written in one `apply_batch` together
//! with its index entries and the repository's saved position, so after a
//! crash the store holds either the page and its cursor, or neither: a saved
//! position is never ahead of stored data.

pub mod keys;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use chrono::{DateTime, FixedOffset, Utc};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::record::{Author, CommitRecord, Committer};
pub use keys::CommitAddress;

/// sled's page cache. Explicit so memory use does not depend on sled's
/// default (1 GiB).
pub const CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// Events kept per repository (oldest dropped first).
const MAX_EVENTS: usize = 100;

/// Why the store could not be used.
#[derive(Debug, Error)]
pub enum StoreError {
    /// Another process holds the store (sled allows one).
    #[error("the store at {path} is locked by another process (is `bbcrawl run` or another sync using it?)")]
    Locked {
        /// Store directory.
        path: PathBuf,
    },
    /// The store was written by a newer bbcrawl.
    #[error("the store at {path} has schema version {found}, newer than this bbcrawl supports ({supported}); upgrade bbcrawl")]
    NewerSchema {
        /// Store directory.
        path: PathBuf,
        /// Version found.
        found: u32,
        /// Version this build writes.
        supported: u32,
    },
    /// The files are damaged or not a store.
    #[error("the store at {path} is damaged or not a bbcrawl store: {message}")]
    Corrupt {
        /// Store directory.
        path: PathBuf,
        /// What sled or the decoder said.
        message: String,
    },
    /// An I/O error (disk full, permissions…).
    #[error("store I/O error at {path}: {message}")]
    Io {
        /// Store directory.
        path: PathBuf,
        /// The error.
        message: String,
    },
}

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
}

/// Everything the store keeps about one repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoState {
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

/// A commit as stored: the record minus what the key and the repository
/// record already hold, plus when it stopped being reachable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCommit {
    /// Branch it was found on.
    pub branch: String,
    /// 40 hex digits.
    pub hash: String,
    /// Date with Bitbucket's offset.
    pub date: DateTime<FixedOffset>,
    /// Author.
    pub author: Author,
    /// Committer.
    pub committer: Option<Committer>,
    /// Message.
    pub message: String,
    /// Parent hashes.
    pub parents: Vec<String>,
    /// Reachable from the default branch.
    pub reachable: bool,
    /// When it was found unreachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreachable_since: Option<DateTime<Utc>>,
}

impl StoredCommit {
    fn from_record(r: &CommitRecord) -> StoredCommit {
        StoredCommit {
            branch: r.branch.clone(),
            hash: r.hash.clone(),
            date: r.date,
            author: r.author.clone(),
            committer: r.committer.clone(),
            message: r.message.clone(),
            parents: r.parents.clone(),
            reachable: true,
            unreachable_since: None,
        }
    }

    /// The full record, given the repository it belongs to.
    pub fn to_record(&self, repo: &RepoState) -> CommitRecord {
        CommitRecord {
            workspace: repo.workspace.clone(),
            repo: repo.slug.clone(),
            repo_uuid: repo.uuid.clone(),
            branch: self.branch.clone(),
            hash: self.hash.clone(),
            date: self.date,
            author: self.author.clone(),
            committer: self.committer.clone(),
            message: self.message.clone(),
            parents: self.parents.clone(),
            reachable: self.reachable,
        }
    }
}

/// What a page write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageOutcome {
    /// Commits that were not stored before.
    pub new_commits: u64,
    /// The repository as now stored (counts updated).
    pub repo: RepoState,
}

/// The embedded store.
pub struct Store {
    db: sled::Db,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (or creates) the store in `dir`, checking its schema version.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let path = dir.to_path_buf();
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(CACHE_BYTES)
            // The writer flushes on its own cadence and before reporting a
            // pass done; no background flusher racing it.
            .flush_every_ms(None)
            .open()
            .map_err(|e| open_error(&path, e))?;
        let store = Store { db, path };
        match store.db.get(keys::META_SCHEMA).map_err(|e| store.err(e))? {
            None => {
                store
                    .db
                    .insert(keys::META_SCHEMA, &keys::SCHEMA_VERSION.to_be_bytes())
                    .map_err(|e| store.err(e))?;
            }
            Some(v) => {
                let found = <[u8; 4]>::try_from(v.as_ref())
                    .map(u32::from_be_bytes)
                    .map_err(|_| StoreError::Corrupt {
                        path: store.path.clone(),
                        message: "unreadable schema version".into(),
                    })?;
                if found > keys::SCHEMA_VERSION {
                    return Err(StoreError::NewerSchema {
                        path: store.path.clone(),
                        found,
                        supported: keys::SCHEMA_VERSION,
                    });
                }
            }
        }
        Ok(store)
    }

    /// The store directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: sled::Error) -> StoreError {
        sled_error(&self.path, e)
    }

    fn corrupt(&self, what: &str, e: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            message: format!("{what}: {e}"),
        }
    }

    fn encode<T: Serialize>(&self, v: &T) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec(v).map_err(|e| self.corrupt("cannot encode", e))
    }

    /// A repository's record.
    pub fn repo(&self, workspace: &str, uuid: &str) -> Result<Option<RepoState>, StoreError> {
        match self
            .db
            .get(keys::repo(workspace, uuid))
            .map_err(|e| self.err(e))?
        {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| self.corrupt("repository record", e)),
        }
    }

    /// Every repository record, ordered by workspace then uuid.
    pub fn repos(&self) -> Result<Vec<RepoState>, StoreError> {
        self.db
            .scan_prefix([keys::REPO])
            .map(|kv| {
                let (_, v) = kv.map_err(|e| self.err(e))?;
                serde_json::from_slice(&v).map_err(|e| self.corrupt("repository record", e))
            })
            .collect()
    }

    /// Saves a repository record on its own (listing changes, status).
    pub fn put_repo(&self, repo: &RepoState) -> Result<(), StoreError> {
        self.db
            .insert(keys::repo(&repo.workspace, &repo.uuid), self.encode(repo)?)
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// A stored commit.
    pub fn commit(
        &self,
        workspace: &str,
        uuid: &str,
        hash: &str,
    ) -> Result<Option<StoredCommit>, StoreError> {
        match self
            .db
            .get(keys::commit(workspace, uuid, hash))
            .map_err(|e| self.err(e))?
        {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| self.corrupt("commit record", e)),
        }
    }

    /// Every stored commit of a repository, in hash order.
    pub fn repo_commits<'a>(
        &'a self,
        workspace: &str,
        uuid: &str,
    ) -> impl Iterator<Item = Result<StoredCommit, StoreError>> + 'a {
        self.db
            .scan_prefix(keys::commit_prefix(workspace, uuid))
            .map(move |kv| {
                let (_, v) = kv.map_err(|e| self.err(e))?;
                serde_json::from_slice(&v).map_err(|e| self.corrupt("commit record", e))
            })
    }

    /// Writes one page of commits, their index entries and the repository
    /// record (with its saved position) in one atomic batch. Commits already
    /// stored are not written again (a re-walk is idempotent), except to
    /// mark them reachable again.
    pub fn apply_page(
        &self,
        repo: &RepoState,
        commits: &[CommitRecord],
    ) -> Result<PageOutcome, StoreError> {
        let mut batch = sled::Batch::default();
        let mut seen = HashSet::with_capacity(commits.len());
        let mut new_commits = 0u64;
        let mut revived = 0u64;
        let ws = repo.workspace.as_str();
        let uuid = repo.uuid.as_str();
        for c in commits {
            if !seen.insert(c.hash.as_str()) {
                continue;
            }
            let key = keys::commit(ws, uuid, &c.hash);
            match self.db.get(&key).map_err(|e| self.err(e))? {
                Some(v) => {
                    let mut stored: StoredCommit =
                        serde_json::from_slice(&v).map_err(|e| self.corrupt("commit record", e))?;
                    if !stored.reachable {
                        stored.reachable = true;
                        stored.unreachable_since = None;
                        revived += 1;
                        batch.insert(key, self.encode(&stored)?);
                    }
                }
                None => {
                    new_commits += 1;
                    let at = c.date.with_timezone(&Utc);
                    batch.insert(key, self.encode(&StoredCommit::from_record(c))?);
                    batch.insert(keys::by_repo(ws, uuid, at, &c.hash), &[] as &[u8]);
                    batch.insert(
                        keys::by_author(&c.author.identity(), at, ws, uuid, &c.hash),
                        &[] as &[u8],
                    );
                    batch.insert(keys::by_date(at, ws, uuid, &c.hash), &[] as &[u8]);
                    batch.insert(keys::by_hash(&c.hash, ws, uuid), &[] as &[u8]);
                }
            }
        }
        let mut repo = repo.clone();
        repo.commits_stored += new_commits;
        repo.commits_unreachable = repo.commits_unreachable.saturating_sub(revived);
        batch.insert(keys::repo(ws, uuid), self.encode(&repo)?);
        self.db.apply_batch(batch).map_err(|e| self.err(e))?;
        Ok(PageOutcome { new_commits, repo })
    }

    /// After a full walk that ended at `head`: marks every stored commit of
    /// the repository that `head` no longer reaches (through stored parents)
    /// as unreachable since `at`, marks reached ones reachable, and saves
    /// `repo` with the new count — all in one batch. Returns the repository
    /// as saved and how many commits became unreachable.
    pub fn mark_reachability(
        &self,
        repo: &RepoState,
        head: &str,
        at: DateTime<Utc>,
    ) -> Result<(RepoState, u64), StoreError> {
        let mut all: HashMap<String, StoredCommit> = HashMap::new();
        for c in self.repo_commits(&repo.workspace, &repo.uuid) {
            let c = c?;
            all.insert(c.hash.clone(), c);
        }
        let mut reached: HashSet<&str> = HashSet::new();
        let mut stack: Vec<&str> = vec![head];
        while let Some(h) = stack.pop() {
            let Some(c) = all.get(h) else { continue };
            if reached.insert(c.hash.as_str()) {
                stack.extend(c.parents.iter().map(String::as_str));
            }
        }
        let mut batch = sled::Batch::default();
        let mut orphaned = 0u64;
        let mut unreachable = 0u64;
        for c in all.values() {
            let now_reachable = reached.contains(c.hash.as_str());
            if !now_reachable {
                unreachable += 1;
            }
            if now_reachable != c.reachable {
                let mut c = c.clone();
                c.reachable = now_reachable;
                c.unreachable_since = if now_reachable { None } else { Some(at) };
                if !now_reachable {
                    orphaned += 1;
                }
                batch.insert(
                    keys::commit(&repo.workspace, &repo.uuid, &c.hash),
                    self.encode(&c)?,
                );
            }
        }
        let mut repo = repo.clone();
        repo.commits_unreachable = unreachable;
        batch.insert(keys::repo(&repo.workspace, &repo.uuid), self.encode(&repo)?);
        self.db.apply_batch(batch).map_err(|e| self.err(e))?;
        Ok((repo, orphaned))
    }

    /// Writes everything to disk; returns the bytes flushed. Blocking: call
    /// it from the writer's own thread.
    pub fn flush(&self) -> Result<usize, StoreError> {
        self.db.flush().map_err(|e| self.err(e))
    }

    /// Bytes the store occupies on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.db.size_on_disk().map_err(|e| self.err(e))
    }

    /// Saves a small JSON document under a meta name (e.g. the last pass).
    pub fn put_meta<T: Serialize>(&self, key: &[u8], value: &T) -> Result<(), StoreError> {
        self.db
            .insert(key, self.encode(value)?)
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Reads a meta document.
    pub fn meta<T: for<'de> Deserialize<'de>>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        match self.db.get(key).map_err(|e| self.err(e))? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| self.corrupt("meta record", e)),
        }
    }
}

fn sled_error(path: &Path, e: sled::Error) -> StoreError {
    match e {
        sled::Error::Corruption { .. }
        | sled::Error::Unsupported(_)
        | sled::Error::ReportableBug(_) => StoreError::Corrupt {
            path: path.to_path_buf(),
            message: e.to_string(),
        },
        other => StoreError::Io {
            path: path.to_path_buf(),
            message: other.to_string(),
        },
    }
}

fn open_error(path: &Path, e: sled::Error) -> StoreError {
    if let sled::Error::Io(io) = &e {
        let text = io.to_string();
        if io.kind() == std::io::ErrorKind::WouldBlock || text.contains("could not acquire lock") {
            return StoreError::Locked {
                path: path.to_path_buf(),
            };
        }
    }
    sled_error(path, e)
}
