//! Writes: a page of commits becomes one block, its summary, its authors'
//! postings and aggregates, the totals and the repository record with its
//! saved position — one atomic `apply_batch`. Reachability marking
//! rewrites the blocks whose flags change, with the aggregates, in one
//! batch too. Only the writer (one thread) calls these.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};

use super::block::{self, Columns};
use super::feed;
use super::keys::{self, parse_hash, Hash, Posting, Summary, BLOCK, SUMMARY};
use super::read::{AuthorStats, Totals};
use super::seal::Batch;
use super::{PageOutcome, Store, StoreError, StoredCommit};
use crate::record::{AuthorRecord, CommitRecord, RepoState};

/// Commits per block at most (a page of the API holds up to 100).
pub const BLOCK_COMMITS: usize = 100;

/// Commits the writer keeps hash indexes for, over all repositories it
/// holds; past it, the indexes of other repositories are dropped (and
/// re-read from their blocks when next written).
const MAX_CACHED_COMMITS: usize = 1_000_000;

/// Where each stored commit of one repository is, for the writer: is this
/// commit stored (and reachable) already?
#[derive(Debug, Default)]
pub struct RepoIndex {
    next_seq: u32,
    at: HashMap<Hash, (u32, u8)>,
    unreachable: HashSet<Hash>,
}

/// The writer's indexes, by repository id.
#[derive(Debug, Default)]
pub struct WriterCache {
    repos: HashMap<u32, RepoIndex>,
}

impl WriterCache {
    /// Forgets every index (after the store was reopened).
    pub(super) fn clear(&mut self) {
        self.repos.clear();
    }

    fn forget(&mut self, id: u32) {
        self.repos.remove(&id);
    }

    /// The index of repository `id`, read from its blocks if not held.
    fn index(&mut self, store: &Store, id: u32) -> Result<&mut RepoIndex, StoreError> {
        if !self.repos.contains_key(&id) {
            let index = store.read_index(id)?;
            let held: usize = self.repos.values().map(|r| r.at.len()).sum();
            if held + index.at.len() > MAX_CACHED_COMMITS {
                self.repos.clear();
            }
            self.repos.insert(id, index);
        }
        match self.repos.get_mut(&id) {
            Some(index) => Ok(index),
            None => unreachable!("inserted above"),
        }
    }
}

/// Author aggregates, (author, repository) pairs and author records a
/// batch changes, each read once.
#[derive(Default)]
pub(super) struct AuthorChanges {
    stats: HashMap<String, AuthorStats>,
    pairs: HashSet<(String, u32)>,
    /// Postings chunks this batch writes, by (identity, chunk).
    chunks: HashMap<(String, u32), Vec<u8>>,
    records: HashMap<String, (AuthorRecord, bool)>,
    new_identities: u64,
}

impl AuthorChanges {
    fn stats(&mut self, store: &Store, identity: &str) -> Result<&mut AuthorStats, StoreError> {
        if !self.stats.contains_key(identity) {
            let found = store.author_stats(identity)?;
            if found.is_none() {
                self.new_identities += 1;
            }
            self.stats
                .insert(identity.to_owned(), found.unwrap_or_default());
        }
        match self.stats.get_mut(identity) {
            Some(s) => Ok(s),
            None => unreachable!("inserted above"),
        }
    }

    /// Indexes a new block: each commit's posting appended to its
    /// author's last chunk, their aggregates (commits, unreachable, first,
    /// last, repositories).
    pub(super) fn add_block(
        &mut self,
        store: &Store,
        batch: &mut Batch,
        id: u32,
        seq: u32,
        cols: &Columns,
    ) -> Result<(), StoreError> {
        let mut authors: BTreeMap<String, ()> = BTreeMap::new();
        for i in 0..cols.len() {
            let identity = cols.author(i).identity();
            let ms = cols.date_ms(i);
            let s = self.stats(store, &identity)?;
            // This author's postings so far: as many as their commits.
            let n = s.commits;
            s.add(ms);
            if !cols.reachable(i) {
                s.unreachable += 1;
            }
            let chunk =
                u32::try_from(n / keys::POSTINGS_PER_CHUNK).map_err(|_| StoreError::Invalid {
                    what: format!("the commits of {identity}"),
                    message: "too many".into(),
                })?;
            let key = (identity.clone(), chunk);
            if !self.chunks.contains_key(&key) {
                let old = if n % keys::POSTINGS_PER_CHUNK == 0 {
                    Vec::new()
                } else {
                    store
                        .get(&keys::postings(&identity, chunk))?
                        .map(|v| v.to_vec())
                        .unwrap_or_default()
                };
                self.chunks.insert(key.clone(), old);
            }
            if let Some(value) = self.chunks.get_mut(&key) {
                Posting {
                    ms,
                    repo: id,
                    seq,
                    slot: i as u8,
                }
                .encode(value);
            }
            authors.insert(identity, ());
        }
        for identity in authors.into_keys() {
            let pair = (identity, id);
            if !self.pairs.contains(&pair) {
                let key = keys::author_repo(&pair.0, id);
                if !store.db()?.contains_key(&key).map_err(|e| store.err(e))? {
                    batch.insert(key, []);
                    self.stats(store, &pair.0)?.repos += 1;
                }
                self.pairs.insert(pair);
            }
        }
        Ok(())
    }

    pub(super) fn write(
        self,
        store: &Store,
        batch: &mut Batch,
        totals: &mut Totals,
    ) -> Result<(), StoreError> {
        for ((identity, chunk), value) in self.chunks {
            batch.insert(keys::postings(&identity, chunk), value);
        }
        for (identity, stats) in &self.stats {
            batch.insert(keys::author_stats(identity), stats.encode());
        }
        for (identity, (record, dirty)) in &self.records {
            if *dirty {
                batch.insert(keys::author(identity), store.json(record)?);
            }
        }
        totals.authors += self.new_identities;
        Ok(())
    }
}

impl Store {
    fn invalid(&self, what: String, e: block::BlockError) -> StoreError {
        StoreError::Invalid {
            what,
            message: e.to_string(),
        }
    }

    /// Reads repository `id`'s hash index from its blocks.
    fn read_index(&self, id: u32) -> Result<RepoIndex, StoreError> {
        let mut index = RepoIndex::default();
        for kv in self.scan(keys::blocks_prefix(BLOCK, id))? {
            let (k, v) = kv?;
            let (_, seq) = keys::parse_block(&k)
                .ok_or_else(|| self.corrupt("block key", keys::hash_hex(&k)))?;
            let (hashes, reachable) =
                block::decode_head(&v).map_err(|e| self.corrupt("commit block", e))?;
            for (slot, (h, r)) in hashes.into_iter().zip(reachable).enumerate() {
                index.at.insert(h, (seq, slot as u8));
                if !r {
                    index.unreachable.insert(h);
                }
            }
            index.next_seq = seq + 1;
        }
        Ok(index)
    }

    /// Writes one page of commits, their postings, their authors and the
    /// repository record (with its saved position) in one atomic batch.
    /// Commits already stored are not written again (a re-walk is
    /// idempotent), except to mark them reachable again.
    pub fn apply_page(
        &self,
        repo: &RepoState,
        commits: &[CommitRecord],
    ) -> Result<PageOutcome, StoreError> {
        let mut batch = Batch::default();
        let mut repo = repo.clone();
        self.assign_id(&mut repo, &mut batch)?;
        let id = repo.id;
        let mut cache = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let index = cache.index(self, id)?;
        let mut seen = HashSet::with_capacity(commits.len());
        let mut fresh: Vec<(Hash, &CommitRecord)> = Vec::new();
        let mut revive: BTreeMap<u32, Vec<(u8, Hash)>> = BTreeMap::new();
        for c in commits {
            let hash = parse_hash(&c.hash).ok_or_else(|| StoreError::Invalid {
                what: format!("commit {:?}", c.hash),
                message: "the hash is not 40 hex digits".into(),
            })?;
            if !seen.insert(hash) {
                continue;
            }
            match index.at.get(&hash) {
                Some(&(seq, slot)) => {
                    if index.unreachable.contains(&hash) {
                        revive.entry(seq).or_default().push((slot, hash));
                    }
                }
                None => fresh.push((hash, c)),
            }
        }
        let mut authors = AuthorChanges::default();
        let mut totals = self.totals()?;
        let mut revived = 0u64;
        for (seq, slots) in &revive {
            let mut cols = self.read_block(id, *seq)?;
            for (slot, _) in slots {
                let i = *slot as usize;
                cols.set_reachable(i, true, None);
                revived += 1;
                let s = authors.stats(self, &cols.author(i).identity())?;
                s.unreachable = s.unreachable.saturating_sub(1);
            }
            let bytes = cols
                .encode()
                .map_err(|e| self.invalid(format!("block {seq}"), e))?;
            batch.insert(keys::block(BLOCK, id, *seq), bytes);
        }
        let mut entries: Vec<feed::Entry> = revive
            .iter()
            .map(|(seq, slots)| feed::Entry::Commits {
                change: feed::CommitChange::Reachable,
                repo: id,
                block: *seq,
                slots: slots.iter().map(|(s, _)| *s).collect(),
            })
            .collect();
        let mut placed: Vec<(Hash, u32, u8)> = Vec::with_capacity(fresh.len());
        let mut next_seq = index.next_seq;
        for part in fresh.chunks(BLOCK_COMMITS) {
            let seq = next_seq;
            next_seq += 1;
            let stored: Vec<StoredCommit> = part
                .iter()
                .map(|(_, c)| StoredCommit::from_record(c))
                .collect();
            let cols = Columns::of(&stored)
                .map_err(|e| self.invalid(format!("a page of {}", repo.full_name), e))?;
            self.put_block(&mut batch, &mut authors, id, seq, &cols)?;
            entries.push(feed::Entry::Commits {
                change: feed::CommitChange::Stored,
                repo: id,
                block: seq,
                slots: (0..part.len() as u8).collect(),
            });
            for (slot, (hash, c)) in part.iter().enumerate() {
                placed.push((*hash, seq, slot as u8));
                let identity = c.author.identity();
                if !authors.records.contains_key(&identity) {
                    let record = match self.author_record(&identity)? {
                        Some(a) => (a, false),
                        None => (
                            AuthorRecord {
                                identity: identity.clone(),
                                ..AuthorRecord::default()
                            },
                            true,
                        ),
                    };
                    authors.records.insert(identity.clone(), record);
                }
                if let Some((record, dirty)) = authors.records.get_mut(&identity) {
                    *dirty |= record.absorb(&c.author);
                }
            }
        }
        let new_commits = fresh.len() as u64;
        authors.write(self, &mut batch, &mut totals)?;
        totals.commits += new_commits;
        totals.unreachable = totals.unreachable.saturating_sub(revived);
        totals.blocks += u64::from(next_seq - index.next_seq);
        batch.insert(keys::META_TOTALS, totals.encode());
        repo.commits_stored += new_commits;
        repo.commits_unreachable = repo.commits_unreachable.saturating_sub(revived);
        entries.extend(self.repo_entries(&repo)?);
        batch.insert(keys::repo(&repo.workspace, &repo.uuid), self.json(&repo)?);
        if let Err(e) = self.apply_with_feed(batch, entries) {
            cache.forget(id);
            return Err(e);
        }
        index.next_seq = next_seq;
        for (hash, seq, slot) in placed {
            index.at.insert(hash, (seq, slot));
        }
        for (_, hash) in revive.values().flatten() {
            index.unreachable.remove(hash);
        }
        if !revive.is_empty() {
            self.blocks_rewritten();
        }
        Ok(PageOutcome { new_commits, repo })
    }

    /// Adds a new block to `batch`: its bytes, its summary, and its
    /// authors' postings and aggregates (in `authors`).
    pub(super) fn put_block(
        &self,
        batch: &mut Batch,
        authors: &mut AuthorChanges,
        id: u32,
        seq: u32,
        cols: &Columns,
    ) -> Result<(), StoreError> {
        let bytes = cols
            .encode()
            .map_err(|e| self.invalid(format!("block {seq} of repository {id}"), e))?;
        batch.insert(keys::block(BLOCK, id, seq), bytes);
        let summary = Summary::of(
            id,
            seq,
            cols.hashes(),
            (0..cols.len()).map(|i| cols.date_ms(i)),
        );
        batch.insert(keys::block(SUMMARY, id, seq), summary.encode());
        authors.add_block(self, batch, id, seq, cols)
    }

    /// Every block of a repository, decoded, in seq order.
    fn read_blocks(&self, id: u32) -> Result<Vec<(u32, Columns)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.scan(keys::blocks_prefix(BLOCK, id))? {
            let (k, v) = kv?;
            let (_, seq) = keys::parse_block(&k)
                .ok_or_else(|| self.corrupt("block key", keys::hash_hex(&k)))?;
            out.push((
                seq,
                Columns::decode(&v).map_err(|e| self.corrupt("commit block", e))?,
            ));
        }
        Ok(out)
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
        let mut repo = repo.clone();
        let mut batch = Batch::default();
        self.assign_id(&mut repo, &mut batch)?;
        let id = repo.id;
        let mut cache = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut blocks = self.read_blocks(id)?;
        let mut loc: HashMap<Hash, (usize, usize)> = HashMap::new();
        for (b, (_, cols)) in blocks.iter().enumerate() {
            for i in 0..cols.len() {
                loc.insert(*cols.hash(i), (b, i));
            }
        }
        let mut reached: HashSet<Hash> = HashSet::new();
        let mut stack: Vec<Hash> = parse_hash(head).into_iter().collect();
        while let Some(h) = stack.pop() {
            let Some(&(b, i)) = loc.get(&h) else { continue };
            if reached.insert(h) {
                stack.extend(blocks[b].1.parent_hashes(i));
            }
        }
        let mut authors = AuthorChanges::default();
        let mut totals = self.totals()?;
        let (mut orphaned, mut unreachable, mut revived) = (0u64, 0u64, 0u64);
        let mut flipped: Vec<(Hash, bool)> = Vec::new();
        let mut entries: Vec<feed::Entry> = Vec::new();
        for (seq, cols) in blocks.iter_mut() {
            let mut dirty = false;
            let (mut gone, mut back) = (Vec::new(), Vec::new());
            for i in 0..cols.len() {
                let now = reached.contains(cols.hash(i));
                if !now {
                    unreachable += 1;
                }
                if now != cols.reachable(i) {
                    cols.set_reachable(i, now, Some(at));
                    dirty = true;
                    if now {
                        back.push(i as u8)
                    } else {
                        gone.push(i as u8)
                    }
                    flipped.push((*cols.hash(i), now));
                    let s = authors.stats(self, &cols.author(i).identity())?;
                    if now {
                        revived += 1;
                        s.unreachable = s.unreachable.saturating_sub(1);
                    } else {
                        orphaned += 1;
                        s.unreachable += 1;
                    }
                }
            }
            if dirty {
                let bytes = cols
                    .encode()
                    .map_err(|e| self.invalid(format!("block {seq}"), e))?;
                batch.insert(keys::block(BLOCK, id, *seq), bytes);
            }
            for (change, slots) in [
                (feed::CommitChange::Unreachable, gone),
                (feed::CommitChange::Reachable, back),
            ] {
                entries.push(feed::Entry::Commits {
                    change,
                    repo: id,
                    block: *seq,
                    slots,
                });
            }
        }
        authors.write(self, &mut batch, &mut totals)?;
        totals.unreachable = (totals.unreachable + orphaned).saturating_sub(revived);
        batch.insert(keys::META_TOTALS, totals.encode());
        repo.commits_unreachable = unreachable;
        entries.extend(self.repo_entries(&repo)?);
        batch.insert(keys::repo(&repo.workspace, &repo.uuid), self.json(&repo)?);
        if let Err(e) = self.apply_with_feed(batch, entries) {
            cache.forget(id);
            return Err(e);
        }
        if let Some(index) = cache.repos.get_mut(&id) {
            for (hash, now) in &flipped {
                if *now {
                    index.unreachable.remove(hash);
                } else {
                    index.unreachable.insert(*hash);
                }
            }
        }
        if !flipped.is_empty() {
            self.blocks_rewritten();
        }
        Ok((repo, orphaned))
    }
}
