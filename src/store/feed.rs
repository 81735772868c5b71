//! The change feed (issue 16): every change a consumer must see gets a
//! store-wide, strictly increasing sequence number (`seq`, from 1),
//! assigned in the same atomic batch that makes the change — a commit
//! stored, a commit marked unreachable (force push), a commit reachable
//! again, and each repository event (renamed, deleted, restored, default
//! branch changed).
//!
//! Stored compactly, as the rest of schema 4: one key per *entry*, `f` +
//! the entry's first seq (u64, big-endian), and an entry covers the
//! commits of one block that one batch changed (`Commits`: repository,
//! block, slots — seq `first + k` is slot `slots[k]`) or one repository
//! event (`Repo`). A page of 100 new commits is one entry of 100 seqs. The
//! commits themselves are not copied: a change is printed from its block as
//! the block is when it is read, so a consumer applying changes in seq
//! order as upserts ends with the store's state.
//!
//! `META_FEED_NEXT` (the next seq to give) is written in every batch that
//! adds entries. A store without it (schema 3 and older, or a copy the
//! schema-1 migration made) gets its feed at open: one `stored` entry per
//! block, repository by repository in id order, block by block, in batches
//! that record how far they got (`META_FEED_BACKFILL`), so `kill -9`
//! loses nothing and the next open carries on.

use std::io::Write;

use serde::{Deserialize, Serialize};

use super::block::Columns;
use super::keys;
use super::seal::Batch;
use super::{Store, StoreError};
use crate::record::{RepoEvent, RepoEventKind, RepoState};

/// The version of the printed change lines (`"feed"` in each): bumped when
/// a consumer would have to read them differently.
pub const FEED_VERSION: u32 = 1;

/// Key prefix of feed entries.
pub const FEED: u8 = b'f';

/// What happened to the commits of a [`Entry::Commits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommitChange {
    /// Stored for the first time.
    Stored,
    /// No longer reachable from the default branch (force push).
    Unreachable,
    /// Reachable again.
    Reachable,
}

impl CommitChange {
    fn kind(self) -> &'static str {
        match self {
            CommitChange::Stored => "commit_stored",
            CommitChange::Unreachable => "commit_unreachable",
            CommitChange::Reachable => "commit_reachable",
        }
    }
}

/// A repository event the feed carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RepoChange {
    /// The slug changed (same uuid).
    Renamed {
        /// Before.
        from: String,
        /// After.
        to: String,
    },
    /// Gone from the listing (its commits stay).
    Deleted,
    /// Listed again after being deleted.
    Restored,
    /// `mainbranch` changed.
    DefaultBranchChanged {
        /// Before.
        from: Option<String>,
        /// After.
        to: Option<String>,
    },
}

impl RepoChange {
    fn kind(&self) -> &'static str {
        match self {
            RepoChange::Renamed { .. } => "repo_renamed",
            RepoChange::Deleted => "repo_deleted",
            RepoChange::Restored => "repo_restored",
            RepoChange::DefaultBranchChanged { .. } => "repo_default_branch_changed",
        }
    }

    fn of(event: &RepoEvent) -> Option<RepoChange> {
        Some(match &event.kind {
            RepoEventKind::Renamed { from, to } => RepoChange::Renamed {
                from: from.clone(),
                to: to.clone(),
            },
            RepoEventKind::Deleted => RepoChange::Deleted,
            RepoEventKind::Restored => RepoChange::Restored,
            RepoEventKind::DefaultBranchChanged { from, to } => RepoChange::DefaultBranchChanged {
                from: from.clone(),
                to: to.clone(),
            },
            _ => return None,
        })
    }
}

/// One stored feed entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Entry {
    /// Commits of one block.
    Commits {
        /// What happened to them.
        change: CommitChange,
        /// Repository id.
        repo: u32,
        /// Block seq.
        block: u32,
        /// Their slots in the block, one seq each.
        slots: Vec<u8>,
    },
    /// One repository event.
    Repo {
        /// Repository id.
        repo: u32,
        /// What happened.
        change: RepoChange,
    },
}

impl Entry {
    /// Seqs it covers.
    pub fn len(&self) -> u64 {
        match self {
            Entry::Commits { slots, .. } => slots.len() as u64,
            Entry::Repo { .. } => 1,
        }
    }

    /// Covers no seq (never stored).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The key of the entry whose first seq is `seq`.
pub fn key(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = FEED;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Adds `entry` to `batch` at `*next` and moves `*next` past it (with the
/// new `META_FEED_NEXT`). Empty entries are skipped.
pub(super) fn push(batch: &mut Batch, next: &mut u64, entry: Entry) {
    if entry.is_empty() {
        return;
    }
    let n = entry.len();
    batch.insert(key(*next), postcard::to_stdvec(&entry).unwrap_or_default());
    *next += n;
    batch.insert(keys::META_FEED_NEXT, next.to_be_bytes());
}

/// The repository events of `new` that `old` (the stored record, if any)
/// does not have yet, as feed changes (events are appended, at most 100
/// kept: the ones after `old`'s last).
pub(super) fn new_repo_changes(old: Option<&RepoState>, new: &RepoState) -> Vec<RepoChange> {
    let fresh: &[RepoEvent] = match old.and_then(|o| o.events.last()) {
        None => &new.events,
        Some(last) => match new.events.iter().rposition(|e| e == last) {
            Some(i) => &new.events[i + 1..],
            None => &new.events,
        },
    };
    fresh.iter().filter_map(RepoChange::of).collect()
}

/// One change, as [`Store::for_each_change`] hands it over.
pub enum Change<'a> {
    /// A commit stored, unreachable or reachable again: slot `slot` of
    /// `block`, as the block is now.
    Commit {
        /// Its seq.
        seq: u64,
        /// `commit_stored`, `commit_unreachable` or `commit_reachable`.
        kind: &'static str,
        /// The block holding the commit.
        block: &'a Columns,
        /// The commit's slot in it.
        slot: usize,
        /// Its repository, as it is now.
        repo: &'a RepoState,
    },
    /// A repository event.
    Repo {
        /// Its seq.
        seq: u64,
        /// `repo_renamed`, `repo_deleted`, `repo_restored` or
        /// `repo_default_branch_changed`.
        kind: &'static str,
        /// The repository, as it is now.
        repo: &'a RepoState,
        /// The slug or default branch before (renamed, default branch
        /// changed).
        from: Option<&'a str>,
        /// The slug or default branch after.
        to: Option<&'a str>,
    },
}

/// Why changes could not be printed.
#[derive(Debug, thiserror::Error)]
pub enum ChangesError {
    /// Reading the store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Writing the lines.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

#[derive(Serialize)]
struct RepoLine<'a> {
    feed: u32,
    seq: u64,
    kind: &'static str,
    repository: RepoView<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<&'a str>,
}

#[derive(Serialize)]
struct RepoView<'a> {
    workspace: &'a str,
    uuid: &'a str,
    slug: &'a str,
}

impl Store {
    /// The last seq given (0: none yet), on disk or not.
    pub fn feed_head(&self) -> u64 {
        *self.feed.lock().unwrap_or_else(|e| e.into_inner()) - 1
    }

    /// The last seq on disk: as far as the feed is served.
    pub fn feed_durable(&self) -> u64 {
        *self.feed_tx.borrow()
    }

    /// A receiver of [`Store::feed_durable`], after each flush that moved
    /// it (the daemon's long poll).
    pub fn feed_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.feed_tx.subscribe()
    }

    /// Writes the changes after seq `after` as NDJSON lines (at most
    /// `limit`) into `out`, in seq order, up to the last seq on disk;
    /// returns the last seq written. A change whose block is gone (`store
    /// repair` dropped it) is skipped: its seq is never printed.
    pub fn write_changes(
        &self,
        after: u64,
        limit: Option<u64>,
        out: &mut dyn Write,
    ) -> Result<Option<u64>, ChangesError> {
        let mut line = Vec::with_capacity(4096);
        self.for_each_change(after, limit, &mut |change| {
            line.clear();
            match change {
                Change::Commit {
                    seq,
                    kind,
                    block,
                    slot,
                    repo,
                } => {
                    write!(
                        line,
                        "{{\"feed\":{FEED_VERSION},\"seq\":{seq},\"kind\":\"{kind}\",\"commit\":"
                    )?;
                    block
                        .write_json(slot, repo, &mut line)
                        .map_err(|e| self.corrupt("commit block", e))?;
                    line.extend_from_slice(b"}\n");
                }
                Change::Repo {
                    seq,
                    kind,
                    repo,
                    from,
                    to,
                } => {
                    let rec = RepoLine {
                        feed: FEED_VERSION,
                        seq,
                        kind,
                        repository: RepoView {
                            workspace: &repo.workspace,
                            uuid: &repo.uuid,
                            slug: &repo.slug,
                        },
                        from,
                        to,
                    };
                    serde_json::to_writer(&mut line, &rec)
                        .map_err(|e| self.corrupt("repository record", e))?;
                    line.push(b'\n');
                }
            }
            out.write_all(&line)?;
            Ok(())
        })
    }

    /// Hands the changes after seq `after` (at most `limit`) to `visit`, in
    /// seq order, up to the last seq on disk; returns the last seq handed
    /// over. A change whose block is gone (`store repair` dropped it) is
    /// skipped: its seq is never given. [`Store::write_changes`] prints
    /// them; the Parquet export writes them as rows.
    pub fn for_each_change(
        &self,
        after: u64,
        limit: Option<u64>,
        visit: &mut dyn FnMut(Change<'_>) -> Result<(), ChangesError>,
    ) -> Result<Option<u64>, ChangesError> {
        let head = self.feed_durable();
        if after >= head {
            return Ok(None);
        }
        let repos = self.repos_by_id()?;
        let db = self.db()?;
        // The entry holding `after + 1`: the last one starting at or before it.
        let start = match db
            .range(key(0)..=key(after + 1))
            .next_back()
            .transpose()
            .map_err(|e| self.err(e))?
        {
            Some((k, _)) if k.first() == Some(&FEED) => k.to_vec(),
            _ => key(1).to_vec(),
        };
        let (mut written, mut last) = (0u64, None);
        for kv in db.range(start..=key(head).to_vec()) {
            let (k, v) = kv.map_err(|e| self.err(e))?;
            let v = self.unseal(&k, v)?;
            let first = u64::from_be_bytes(
                k.get(1..9)
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| self.corrupt("feed key", keys::hash_hex(&k)))?,
            );
            let entry: Entry =
                postcard::from_bytes(&v).map_err(|e| self.corrupt("feed entry", e))?;
            match entry {
                Entry::Commits {
                    change,
                    repo,
                    block,
                    slots,
                } => {
                    let Some(state) = repos.get(&repo) else {
                        continue;
                    };
                    let cols: Columns = match self.read_block(repo, block) {
                        Ok(c) => c,
                        Err(StoreError::Corrupt { message, .. }) if message.contains("missing") => {
                            continue
                        }
                        Err(e) => return Err(e.into()),
                    };
                    for (k, slot) in slots.iter().enumerate() {
                        let seq = first + k as u64;
                        if seq <= after || (*slot as usize) >= cols.len() {
                            continue;
                        }
                        visit(Change::Commit {
                            seq,
                            kind: change.kind(),
                            block: &cols,
                            slot: *slot as usize,
                            repo: state,
                        })?;
                        last = Some(seq);
                        written += 1;
                        if limit.is_some_and(|l| written >= l) {
                            return Ok(last);
                        }
                    }
                }
                Entry::Repo { repo, change } => {
                    if first <= after {
                        continue;
                    }
                    let Some(state) = repos.get(&repo) else {
                        continue;
                    };
                    let (from, to) = match &change {
                        RepoChange::Renamed { from, to } => {
                            (Some(from.as_str()), Some(to.as_str()))
                        }
                        RepoChange::DefaultBranchChanged { from, to } => {
                            (from.as_deref(), to.as_deref())
                        }
                        _ => (None, None),
                    };
                    visit(Change::Repo {
                        seq: first,
                        kind: change.kind(),
                        repo: state,
                        from,
                        to,
                    })?;
                    last = Some(first);
                    written += 1;
                    if limit.is_some_and(|l| written >= l) {
                        return Ok(last);
                    }
                }
            }
        }
        Ok(last)
    }

    /// Gives a store without a feed (`META_FEED_NEXT` missing) its feed:
    /// a `stored` entry per block, repository by repository (see the module
    /// notes). Resumes after a kill.
    pub(super) fn backfill_feed(&self) -> Result<u64, StoreError> {
        let db = self.db()?;
        if let Some(v) = self.get(keys::META_FEED_NEXT)? {
            return <[u8; 8]>::try_from(v.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| self.corrupt("feed counter", "unreadable"));
        }
        // (repository id, block seq) last done, and the next seq.
        let mut at: Option<(u32, u32, u64)> = match self.get(keys::META_FEED_BACKFILL)? {
            Some(v) => {
                Some(postcard::from_bytes(&v).map_err(|e| self.corrupt("feed backfill", e))?)
            }
            None => None,
        };
        let mut next = at.map_or(1, |(_, _, n)| n);
        let mut repos: Vec<RepoState> = self.repos()?;
        repos.sort_by_key(|r| r.id);
        let started = std::time::Instant::now();
        let mut batch = Batch::default();
        let mut in_batch = 0;
        for repo in repos.iter().filter(|r| r.id != 0) {
            if at.is_some_and(|(id, _, _)| repo.id < id) {
                continue;
            }
            for summary in self.summaries(repo.id)? {
                if at.is_some_and(|(id, seq, _)| repo.id == id && summary.seq <= seq) {
                    continue;
                }
                let slots: Vec<u8> = (0..summary.count.min(256) as usize)
                    .map(|s| s as u8)
                    .collect();
                push(
                    &mut batch,
                    &mut next,
                    Entry::Commits {
                        change: CommitChange::Stored,
                        repo: repo.id,
                        block: summary.seq,
                        slots,
                    },
                );
                in_batch += 1;
                if in_batch == 1000 {
                    batch.insert(
                        keys::META_FEED_BACKFILL,
                        postcard::to_stdvec(&(repo.id, summary.seq, next)).unwrap_or_default(),
                    );
                    // Not through `apply`: no write sequence of its own.
                    db.apply_batch(std::mem::take(&mut batch).0)
                        .map_err(|e| self.err(e))?;
                    in_batch = 0;
                    at = Some((repo.id, summary.seq, next));
                }
            }
        }
        batch.remove(keys::META_FEED_BACKFILL);
        batch.insert(keys::META_FEED_NEXT, next.to_be_bytes());
        batch
            .0
            .insert(keys::META_SCHEMA, &keys::SCHEMA_VERSION.to_be_bytes());
        db.apply_batch(batch.0).map_err(|e| self.err(e))?;
        db.flush().map_err(|e| self.err(e))?;
        if next > 1 {
            tracing::info!(
                store = %self.path.display(),
                changes = next - 1,
                seconds = format_args!("{:.1}", started.elapsed().as_secs_f64()),
                "the store's change feed now starts with every stored commit"
            );
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn event(kind: RepoEventKind, minute: u32) -> RepoEvent {
        RepoEvent {
            at: chrono::Utc
                .with_ymd_and_hms(2026, 1, 1, 0, minute, 0)
                .unwrap(),
            kind,
        }
    }

    #[test]
    fn only_the_events_after_the_stored_ones_are_new() {
        let mut old = RepoState::new("ws", "{u}", "a", "ws/a", chrono::Utc::now());
        old.events.push(event(RepoEventKind::Deleted, 1));
        let mut new = old.clone();
        new.events.push(event(RepoEventKind::Restored, 2));
        new.events.push(event(
            RepoEventKind::Renamed {
                from: "a".into(),
                to: "b".into(),
            },
            3,
        ));
        new.events.push(event(
            RepoEventKind::ForcePush {
                old_head: "x".into(),
            },
            4,
        ));
        assert_eq!(
            new_repo_changes(Some(&old), &new),
            [
                RepoChange::Restored,
                RepoChange::Renamed {
                    from: "a".into(),
                    to: "b".into()
                }
            ]
        );
        assert_eq!(new_repo_changes(Some(&new), &new), []);
        assert_eq!(new_repo_changes(None, &old), [RepoChange::Deleted]);
    }

    #[test]
    fn entries_round_trip_and_count_their_seqs() {
        let e = Entry::Commits {
            change: CommitChange::Unreachable,
            repo: 3,
            block: 9,
            slots: vec![0, 5, 7],
        };
        let bytes = postcard::to_stdvec(&e).unwrap();
        assert_eq!(postcard::from_bytes::<Entry>(&bytes).unwrap(), e);
        assert_eq!(e.len(), 3);
        let mut batch = Batch::default();
        let mut next = 10;
        push(&mut batch, &mut next, e);
        assert_eq!(next, 13);
        push(
            &mut batch,
            &mut next,
            Entry::Commits {
                change: CommitChange::Stored,
                repo: 1,
                block: 1,
                slots: vec![],
            },
        );
        assert_eq!(next, 13, "an empty entry takes no seq");
    }
}
