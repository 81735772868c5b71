//! Reads: blocks (through a small cache of decoded ones), newest-first
//! streams of one repository (from block summaries) and of one author (from
//! postings), hash lookups (through the summaries' prefix filters), and the
//! write-time aggregates. Any thread may call these.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use super::block::Columns;
use super::keys::{self, Hash, IndexEntry, Posting, Summary, BLOCK, SUMMARY};
use super::{Store, StoreError, StoredCommit};
use crate::record::AuthorRecord;

/// A newest-first stream of commits with their index entries.
pub type Entries<'a> =
    Box<dyn Iterator<Item = Result<(IndexEntry, StoredCommit), StoreError>> + 'a>;

/// Decoded blocks kept for reuse.
const CACHED_BLOCKS: usize = 128;

/// Recently decoded blocks, oldest first out.
#[derive(Debug, Default)]
pub struct BlockCache {
    blocks: HashMap<(u32, u32), Arc<Columns>>,
    order: VecDeque<(u32, u32)>,
}

/// Store-wide totals, kept in the same batch as every change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Commits stored.
    pub commits: u64,
    /// Of those, unreachable.
    pub unreachable: u64,
    /// Distinct author identities.
    pub authors: u64,
    /// Blocks written.
    pub blocks: u64,
}

impl Totals {
    /// The stored bytes.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }
}

/// One author identity's aggregate over every stored commit of theirs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorStats {
    /// Commits stored.
    pub commits: u64,
    /// Of those, unreachable.
    pub unreachable: u64,
    /// Oldest commit instant, ms.
    pub first_ms: i64,
    /// Newest commit instant, ms.
    pub last_ms: i64,
    /// Repositories with commits of theirs.
    pub repos: u64,
}

impl AuthorStats {
    /// Counts one more commit (its repository is counted by the caller).
    pub fn add(&mut self, ms: i64) {
        if self.commits == 0 {
            self.first_ms = ms;
            self.last_ms = ms;
        } else {
            self.first_ms = self.first_ms.min(ms);
            self.last_ms = self.last_ms.max(ms);
        }
        self.commits += 1;
    }

    /// The stored bytes.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }
}

/// An instant from index milliseconds.
pub fn instant(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// A commit waiting in a stream, ordered by print order: its block
/// (shared by its neighbours) and slot; built only when given out.
struct Slot {
    entry: IndexEntry,
    block: Arc<Columns>,
    slot: usize,
}

impl Slot {
    /// Slot `slot` of a block of repository `repo`.
    fn new(block: Arc<Columns>, repo: u32, slot: usize) -> Slot {
        Slot {
            entry: IndexEntry {
                at: instant(block.date_ms(slot)),
                hash: *block.hash(slot),
                repo,
                reachable: block.reachable(slot),
            },
            block,
            slot,
        }
    }

    /// Its entry and commit.
    fn take(self) -> (IndexEntry, StoredCommit) {
        let commit = self.block.commit(self.slot);
        (self.entry, commit)
    }
}

impl PartialEq for Slot {
    fn eq(&self, other: &Self) -> bool {
        self.entry.order_key() == other.entry.order_key()
    }
}
impl Eq for Slot {}
impl PartialOrd for Slot {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Slot {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.entry.order_key().cmp(&other.entry.order_key())
    }
}

/// Milliseconds window of a stream: `[since, until)`.
#[derive(Debug, Clone, Copy)]
struct Window {
    since: Option<i64>,
    until: Option<i64>,
}

impl Window {
    fn new(since: Option<DateTime<Utc>>, until: Option<DateTime<Utc>>) -> Window {
        Window {
            since: since.map(|t| t.timestamp_millis()),
            until: until.map(|t| t.timestamp_millis()),
        }
    }

    fn holds(&self, ms: i64) -> bool {
        self.since.is_none_or(|s| ms >= s) && self.until.is_none_or(|u| ms < u)
    }

    fn overlaps(&self, min_ms: i64, max_ms: i64) -> bool {
        self.since.is_none_or(|s| max_ms >= s) && self.until.is_none_or(|u| min_ms < u)
    }
}

/// One repository newest first: blocks are opened newest summary first,
/// and a commit is given out once no unopened block can hold a newer one.
struct RepoStream<'a> {
    store: &'a Store,
    blocks: Vec<Summary>,
    next: usize,
    heap: BinaryHeap<Reverse<Slot>>,
    window: Window,
}

impl Iterator for RepoStream<'_> {
    type Item = Result<(IndexEntry, StoredCommit), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let top = self
                .heap
                .peek()
                .map(|Reverse(p)| p.entry.at.timestamp_millis());
            if let Some(b) = self.blocks.get(self.next) {
                if top.is_none_or(|t| b.max_ms >= t) {
                    self.next += 1;
                    let cols = match self.store.block(b.repo, b.seq) {
                        Ok(c) => c,
                        Err(e) => {
                            self.next = self.blocks.len();
                            return Some(Err(e));
                        }
                    };
                    for i in 0..cols.len() {
                        if self.window.holds(cols.date_ms(i)) {
                            self.heap
                                .push(Reverse(Slot::new(Arc::clone(&cols), b.repo, i)));
                        }
                    }
                    continue;
                }
            }
            return self.heap.pop().map(|Reverse(s)| Ok(s.take()));
        }
    }
}

/// Where a commit is: repository id, block seq, slot.
type Place = (u32, u32, u8);

/// One author identity newest first: every posting of theirs in the
/// window, sorted by instant (newest first); the commits of one
/// millisecond are read together and given out in print order.
struct AuthorStream<'a> {
    store: &'a Store,
    /// (ms, place), newest first.
    postings: Vec<(i64, Place)>,
    pos: usize,
    ready: VecDeque<Slot>,
    failed: bool,
}

impl AuthorStream<'_> {
    /// Reads the commits of the next run of one millisecond into `ready`.
    fn next_run(&mut self) -> Result<(), StoreError> {
        let ms = self.postings[self.pos].0;
        let mut run = Vec::new();
        while let Some(&(m, (repo, seq, slot))) = self.postings.get(self.pos) {
            if m != ms {
                break;
            }
            self.pos += 1;
            run.push(self.store.slot(&Posting {
                ms,
                repo,
                seq,
                slot,
            })?);
        }
        run.sort();
        self.ready.extend(run);
        Ok(())
    }
}

impl Iterator for AuthorStream<'_> {
    type Item = Result<(IndexEntry, StoredCommit), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(x) = self.ready.pop_front() {
                return Some(Ok(x.take()));
            }
            if self.failed || self.pos >= self.postings.len() {
                return None;
            }
            if let Err(e) = self.next_run() {
                self.failed = true;
                return Some(Err(e));
            }
        }
    }
}

/// Each identity's postings, a chunk at a time (`Store::scan_postings`).
pub type PostingChunks<'a> =
    Box<dyn Iterator<Item = Result<(String, Vec<Posting>), StoreError>> + 'a>;

impl Store {
    /// The store totals.
    pub fn totals(&self) -> Result<Totals, StoreError> {
        match self.get(keys::META_TOTALS)? {
            None => Ok(Totals::default()),
            Some(v) => postcard::from_bytes(&v).map_err(|e| self.corrupt("store totals", e)),
        }
    }

    /// One author identity's aggregate.
    pub fn author_stats(&self, identity: &str) -> Result<Option<AuthorStats>, StoreError> {
        match self.get(&keys::author_stats(identity))? {
            None => Ok(None),
            Some(v) => postcard::from_bytes(&v)
                .map(Some)
                .map_err(|e| self.corrupt("author aggregate", e)),
        }
    }

    /// Every author aggregate, by identity.
    pub fn all_author_stats(&self) -> Result<Vec<(String, AuthorStats)>, StoreError> {
        self.scan([keys::AUTHOR_STATS])?
            .map(|kv| {
                let (k, v) = kv?;
                let identity = String::from_utf8_lossy(&k[1..]).into_owned();
                let stats =
                    postcard::from_bytes(&v).map_err(|e| self.corrupt("author aggregate", e))?;
                Ok((identity, stats))
            })
            .collect()
    }

    pub(super) fn author_record(&self, identity: &str) -> Result<Option<AuthorRecord>, StoreError> {
        self.get_json(&keys::author(identity), "author record")
    }

    /// Every author record.
    pub fn authors(&self) -> Result<Vec<AuthorRecord>, StoreError> {
        self.scan_json(keys::AUTHOR, "author record")
    }

    /// A block as stored, decoded (not cached: the writer changes it).
    pub(super) fn read_block(&self, id: u32, seq: u32) -> Result<Columns, StoreError> {
        match self.get(&keys::block(BLOCK, id, seq))? {
            None => Err(self.corrupt(
                "commit block",
                format!("block {seq} of repository {id} is missing"),
            )),
            Some(v) => Columns::decode(&v).map_err(|e| self.corrupt("commit block", e)),
        }
    }

    /// A block, decoded, from the cache when there.
    pub fn block(&self, id: u32, seq: u32) -> Result<Arc<Columns>, StoreError> {
        let generation = self.generation.load(Ordering::Acquire);
        {
            let cache = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(b) = cache.blocks.get(&(id, seq)) {
                return Ok(b.clone());
            }
        }
        let b = Arc::new(self.read_block(id, seq)?);
        let mut cache = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
        if self.generation.load(Ordering::Acquire) == generation
            && !cache.blocks.contains_key(&(id, seq))
        {
            if cache.order.len() >= CACHED_BLOCKS {
                if let Some(old) = cache.order.pop_front() {
                    cache.blocks.remove(&old);
                }
            }
            cache.blocks.insert((id, seq), b.clone());
            cache.order.push_back((id, seq));
        }
        Ok(b)
    }

    /// After blocks were rewritten: no reader may reuse what it decoded.
    pub(super) fn blocks_rewritten(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        let mut cache = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
        cache.blocks.clear();
        cache.order.clear();
    }

    /// A repository's block summaries, in seq order.
    pub fn summaries(&self, id: u32) -> Result<Vec<Summary>, StoreError> {
        self.scan(keys::blocks_prefix(SUMMARY, id))?
            .map(|kv| {
                let (k, v) = kv?;
                Summary::decode(&k, &v)
                    .ok_or_else(|| self.corrupt("block summary", keys::hash_hex(&k)))
            })
            .collect()
    }

    /// One repository's commits, newest first, within `[since, until)`
    /// (instants rounded down to the millisecond).
    pub fn scan_repo(
        &self,
        id: u32,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
    ) -> Entries<'_> {
        let window = Window::new(since, until);
        let mut blocks = match self.summaries(id) {
            Ok(b) => b,
            Err(e) => return Box::new(std::iter::once(Err(e))),
        };
        blocks.retain(|b| b.count > 0 && window.overlaps(b.min_ms, b.max_ms));
        blocks.sort_by(|a, b| b.max_ms.cmp(&a.max_ms).then(a.seq.cmp(&b.seq)));
        Box::new(RepoStream {
            store: self,
            blocks,
            next: 0,
            heap: BinaryHeap::new(),
            window,
        })
    }

    /// One author identity's commits, newest first, within `[since, until)`
    /// (instants rounded down to the millisecond).
    pub fn scan_author(
        &self,
        identity: &str,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
    ) -> Entries<'_> {
        let window = Window::new(since, until);
        let mut postings: Vec<(i64, Place)> = Vec::new();
        let scan = match self.scan(keys::postings_prefix(identity)) {
            Ok(scan) => scan,
            Err(e) => return Box::new(std::iter::once(Err(e))),
        };
        for kv in scan {
            let read = kv.and_then(|(k, v)| {
                Posting::decode_all(&k, &v)
                    .ok_or_else(|| self.corrupt("postings", keys::hash_hex(&k)))
            });
            match read {
                Ok((_, ps)) => postings.extend(
                    ps.into_iter()
                        .filter(|p| window.holds(p.ms))
                        .map(|p| (p.ms, (p.repo, p.seq, p.slot))),
                ),
                Err(e) => return Box::new(std::iter::once(Err(e))),
            }
        }
        postings.sort_unstable_by_key(|(ms, place)| (Reverse(*ms), *place));
        Box::new(AuthorStream {
            store: self,
            postings,
            pos: 0,
            ready: VecDeque::new(),
            failed: false,
        })
    }

    /// Every identity's postings, a chunk at a time, in key order.
    pub fn scan_postings(&self) -> PostingChunks<'_> {
        let scan = match self.scan([keys::POSTING]) {
            Ok(scan) => scan,
            Err(e) => return Box::new(std::iter::once(Err(e))),
        };
        Box::new(scan.map(move |kv| {
            let (k, v) = kv?;
            Posting::decode_all(&k, &v).ok_or_else(|| self.corrupt("postings", keys::hash_hex(&k)))
        }))
    }

    /// Where a posting points.
    fn slot(&self, p: &Posting) -> Result<Slot, StoreError> {
        let block = self.block(p.repo, p.seq)?;
        let i = p.slot as usize;
        if i >= block.len() {
            return Err(self.corrupt(
                "postings",
                format!("slot {i} of a block of {}", block.len()),
            ));
        }
        Ok(Slot::new(block, p.repo, i))
    }

    /// The commit a posting points at.
    pub fn posted(&self, p: &Posting) -> Result<(IndexEntry, StoredCommit), StoreError> {
        Ok(self.slot(p)?.take())
    }

    /// A stored commit by repository id and hash.
    pub fn commit_by_id(&self, repo: u32, hash: &Hash) -> Result<Option<StoredCommit>, StoreError> {
        let bit = keys::filter_bit([hash[0], hash[1]]);
        for s in self.summaries(repo)? {
            if !s.may_hold(bit) {
                continue;
            }
            let cols = self.block(repo, s.seq)?;
            if let Some(i) = cols.hashes().iter().position(|h| h == hash) {
                return Ok(Some(cols.commit(i)));
            }
        }
        Ok(None)
    }

    /// A stored commit.
    pub fn commit(
        &self,
        workspace: &str,
        uuid: &str,
        hash: &str,
    ) -> Result<Option<StoredCommit>, StoreError> {
        let (Some(repo), Some(hash)) = (self.repo(workspace, uuid)?, keys::parse_hash(hash)) else {
            return Ok(None);
        };
        self.commit_by_id(repo.id, &hash)
    }

    /// Every stored commit of a repository, in hash order.
    pub fn repo_commits<'a>(
        &'a self,
        workspace: &str,
        uuid: &str,
    ) -> Box<dyn Iterator<Item = Result<StoredCommit, StoreError>> + Send + 'a> {
        match self.repo(workspace, uuid) {
            Ok(Some(repo)) => self.commits_of(repo.id),
            Ok(None) => Box::new(std::iter::empty()),
            Err(e) => Box::new(std::iter::once(Err(e))),
        }
    }

    /// Every stored commit of a repository id, in hash order (see
    /// `sorted`: bounded memory whatever the repository's size).
    pub fn commits_of<'a>(
        &'a self,
        id: u32,
    ) -> Box<dyn Iterator<Item = Result<StoredCommit, StoreError>> + Send + 'a> {
        super::sorted::commits_of(self, id)
    }

    /// Repository `id`'s commits (reachable ones unless `all`) in hash
    /// order (the order `export` prints), handed to `sink` until it returns
    /// false: slots of its blocks, decoded and sorted in memory, when it
    /// has at most `in_memory` commits, else whole commits read back from
    /// sorted runs (see `sorted`).
    pub fn for_each_sorted<E: From<StoreError>>(
        &self,
        id: u32,
        all: bool,
        in_memory: usize,
        sink: &mut dyn FnMut(super::sorted::SortedCommit<'_>) -> Result<bool, E>,
    ) -> Result<(), E> {
        super::sorted::for_each_sorted(self, id, all, in_memory, sink)
    }

    /// Repository `repo`'s commits (reachable ones unless `all`) in hash
    /// order, each as its JSON record (SPEC section 4, the bytes
    /// `serde_json` prints for [`StoredCommit::into_record`]), handed to
    /// `sink` until it returns false; bounded memory whatever the
    /// repository's size (see `sorted`).
    pub fn export_json(
        &self,
        repo: &crate::record::RepoState,
        all: bool,
        sink: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<(), StoreError> {
        super::sorted::export_json(self, repo, all, sink)
    }

    /// Commits whose hash starts with `prefix` (hex, at least 3 digits),
    /// across repositories: (hash, repository id) pairs, from the blocks
    /// whose summaries' filters admit the prefix.
    pub fn find_hash_prefix(&self, prefix: &str) -> Result<Vec<(Hash, u32)>, StoreError> {
        let (Some(lo), Some(hi)) = (
            keys::parse_hash(&format!("{prefix:0<40}")),
            keys::parse_hash(&format!("{prefix:f<40}")),
        ) else {
            return Ok(vec![]);
        };
        if prefix.len() < 3 || lo[0] != hi[0] || lo[1] >> 4 != hi[1] >> 4 {
            return Err(StoreError::Invalid {
                what: format!("hash prefix {prefix:?}"),
                message: "give at least 3 hex digits".into(),
            });
        }
        let bit = keys::filter_bit([lo[0], lo[1]]);
        let mut out = Vec::new();
        for kv in self.scan([SUMMARY])? {
            let (k, v) = kv?;
            let s = Summary::decode(&k, &v)
                .ok_or_else(|| self.corrupt("block summary", keys::hash_hex(&k)))?;
            if !s.may_hold(bit) {
                continue;
            }
            let cols = self.block(s.repo, s.seq)?;
            out.extend(
                cols.hashes()
                    .iter()
                    .filter(|h| **h >= lo && **h <= hi)
                    .map(|h| (*h, s.repo)),
            );
        }
        Ok(out)
    }
}
