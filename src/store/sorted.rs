//! A repository's commits in hash order (the order `export` prints), with
//! bounded memory whatever its size. Blocks are in write order, so commits
//! are read block by block and sorted in memory a bounded amount at a time;
//! a repository with more is sorted in runs written to an anonymous
//! temporary file, then the runs are merged.
//!
//! Two forms: [`commits_of`] gives [`StoredCommit`]s ([`SORT_AT_ONCE`] in
//! memory; spilled runs hold each commit's compact schema-1 record,
//! `codec`), and [`export_json`] hands over each commit's printed JSON
//! record ([`SORT_BYTES`] of them in memory; runs hold those bytes), so an
//! export renders every commit once, straight from its block, and merging
//! only copies bytes.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::block::Columns;
use super::codec;
use super::keys::{self, Hash, BLOCK};
use super::{Store, StoreError, StoredCommit};
use crate::record::RepoState;

/// Commits sorted in memory at a time by [`commits_of`].
pub const SORT_AT_ONCE: usize = 20_000;

/// Bytes of printed records sorted in memory at a time by [`export_json`]
/// (about 6,000 commits of the simulator's world).
pub const SORT_BYTES: usize = 4 << 20;

/// Bytes read ahead from each run while merging (the largest repository of
/// the 10M bench merges ~200 runs: 3 MB of buffers).
const READ_AHEAD: usize = 16 << 10;

/// Commits of one repository in hash order.
pub type Sorted<'a> = Box<dyn Iterator<Item = Result<StoredCommit, StoreError>> + Send + 'a>;

fn io(store: &Store, e: std::io::Error) -> StoreError {
    StoreError::Io {
        path: store.path().to_path_buf(),
        message: format!("sorting a repository's commits in a temporary file: {e}"),
    }
}

/// Each block of repository `id`, decoded, in write order (read by key from
/// the block summaries: sled holds less than through a range scan).
fn for_each_block(
    store: &Store,
    id: u32,
    mut f: impl FnMut(Columns) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    for summary in store.summaries(id)? {
        let Some(v) = store.get(&keys::block(BLOCK, id, summary.seq))? else {
            return Err(store.corrupt(
                "commit block",
                format!("block {} of repository {id} is missing", summary.seq),
            ));
        };
        f(Columns::decode(&v).map_err(|e| store.corrupt("commit block", e))?)?;
    }
    Ok(())
}

/// Sorted runs written to one anonymous temporary file.
#[derive(Default)]
struct Spill {
    file: Option<Arc<File>>,
    end: u64,
    runs: Vec<Run>,
}

/// One record of a chunk: its hash, and where its bytes are in the chunk.
type Entry = (Hash, u32, u32);

impl Spill {
    /// Sorts `entries` by hash and appends them as a run: per record its
    /// hash, the length of its bytes (u32, little-endian) and the bytes.
    fn write_run(
        &mut self,
        store: &Store,
        entries: &mut [Entry],
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        entries.sort_unstable_by_key(|e| e.0);
        let file = match &self.file {
            Some(f) => Arc::clone(f),
            None => {
                let f = Arc::new(tempfile::tempfile().map_err(|e| io(store, e))?);
                self.file = Some(Arc::clone(&f));
                f
            }
        };
        let start = self.end;
        let mut buf = Vec::with_capacity(READ_AHEAD * 2);
        let mut end = self.end;
        let mut write = |buf: &mut Vec<u8>| -> Result<(), StoreError> {
            file.write_all_at(buf, end).map_err(|e| io(store, e))?;
            end += buf.len() as u64;
            buf.clear();
            Ok(())
        };
        for (hash, at, len) in entries.iter() {
            buf.extend(hash);
            buf.extend(len.to_le_bytes());
            buf.extend(&bytes[*at as usize..(*at + *len) as usize]);
            if buf.len() >= READ_AHEAD {
                write(&mut buf)?;
            }
        }
        write(&mut buf)?;
        self.end = end;
        self.runs.push(Run {
            file,
            pos: start,
            end,
            buf: Vec::new(),
            at: 0,
            head: None,
        });
        Ok(())
    }

    /// The runs merged.
    fn merge(self, store: &Store) -> Result<Merge, StoreError> {
        let mut merge = Merge {
            runs: self.runs,
            heap: BinaryHeap::new(),
        };
        for i in 0..merge.runs.len() {
            merge.pull(i).map_err(|e| merge_err(store, e))?;
        }
        Ok(merge)
    }
}

/// Every stored commit of repository `id`, in hash order.
pub(super) fn commits_of(store: &Store, id: u32) -> Sorted<'_> {
    match sort(store, id) {
        Ok(s) => s,
        Err(e) => Box::new(std::iter::once(Err(e))),
    }
}

fn sort(store: &Store, id: u32) -> Result<Sorted<'_>, StoreError> {
    let mut chunk: Vec<(Hash, StoredCommit)> = Vec::new();
    let mut spill = Spill::default();
    let encode = |spill: &mut Spill, chunk: &mut Vec<(Hash, StoredCommit)>| {
        let mut bytes = Vec::new();
        let mut entries = Vec::with_capacity(chunk.len());
        for (hash, c) in chunk.drain(..) {
            let record = codec::encode(&c).map_err(|e| StoreError::Invalid {
                what: format!("commit {}", c.hash),
                message: e.to_string(),
            })?;
            entries.push((hash, bytes.len() as u32, record.len() as u32));
            bytes.extend(record);
        }
        spill.write_run(store, &mut entries, &bytes)
    };
    for_each_block(store, id, |cols| {
        let hashes = cols.hashes().to_vec();
        chunk.extend(hashes.into_iter().zip(cols.into_commits()));
        if chunk.len() >= SORT_AT_ONCE {
            encode(&mut spill, &mut chunk)?;
        }
        Ok(())
    })?;
    if spill.runs.is_empty() {
        chunk.sort_unstable_by_key(|(h, _)| *h);
        return Ok(Box::new(chunk.into_iter().map(|(_, c)| Ok(c))));
    }
    if !chunk.is_empty() {
        encode(&mut spill, &mut chunk)?;
    }
    Ok(Box::new(Decoded {
        store,
        merge: spill.merge(store)?,
        failed: false,
    }))
}

/// One commit handed over by [`for_each_sorted`].
pub enum SortedCommit<'a> {
    /// Slot `.1` of a decoded block.
    Slot(&'a Columns, usize),
    /// A commit read back from a sorted run (a repository too large to
    /// sort its blocks in memory).
    Stored(&'a StoredCommit),
}

/// Repository `id`'s commits (reachable ones unless `all`) in hash order,
/// handed to `sink` until it returns false: slots of its decoded blocks,
/// sorted in memory, when it has at most `in_memory` commits; else
/// [`commits_of`]'s commits (bounded memory whatever its size).
pub(super) fn for_each_sorted<E: From<StoreError>>(
    store: &Store,
    id: u32,
    all: bool,
    in_memory: usize,
    sink: &mut dyn FnMut(SortedCommit<'_>) -> Result<bool, E>,
) -> Result<(), E> {
    let summaries = store.summaries(id)?;
    let count: usize = summaries.iter().map(|s| s.count as usize).sum();
    if count > in_memory {
        for c in commits_of(store, id) {
            let c = c?;
            if (all || c.reachable) && !sink(SortedCommit::Stored(&c))? {
                break;
            }
        }
        return Ok(());
    }
    let mut blocks = Vec::with_capacity(summaries.len());
    let mut slots: Vec<(Hash, u32, u32)> = Vec::with_capacity(count);
    for summary in summaries {
        let cols = store.read_block(id, summary.seq)?;
        let b = blocks.len() as u32;
        slots.extend(
            (0..cols.len())
                .filter(|&i| all || cols.reachable(i))
                .map(|i| (*cols.hash(i), b, i as u32)),
        );
        blocks.push(cols);
    }
    slots.sort_unstable_by_key(|s| s.0);
    for (_, b, i) in slots {
        if !sink(SortedCommit::Slot(&blocks[b as usize], i as usize))? {
            break;
        }
    }
    Ok(())
}

/// Repository `repo`'s commits (reachable ones unless `all`) in hash
/// order, each as its JSON record (`Columns::write_json`), handed to
/// `sink` until it returns false.
pub(super) fn export_json(
    store: &Store,
    repo: &RepoState,
    all: bool,
    sink: &mut dyn FnMut(&[u8]) -> bool,
) -> Result<(), StoreError> {
    export_json_sorting(store, repo, all, SORT_BYTES, sink)
}

/// [`export_json`], sorting `sort_bytes` of records in memory at a time.
fn export_json_sorting(
    store: &Store,
    repo: &RepoState,
    all: bool,
    sort_bytes: usize,
    sink: &mut dyn FnMut(&[u8]) -> bool,
) -> Result<(), StoreError> {
    let mut bytes: Vec<u8> = Vec::new();
    let mut entries: Vec<Entry> = Vec::new();
    let mut spill = Spill::default();
    for_each_block(store, repo.id, |cols| {
        for i in 0..cols.len() {
            if !(all || cols.reachable(i)) {
                continue;
            }
            let at = bytes.len();
            cols.write_json(i, repo, &mut bytes)
                .map_err(|e| StoreError::Invalid {
                    what: "a commit record".into(),
                    message: e.to_string(),
                })?;
            entries.push((*cols.hash(i), at as u32, (bytes.len() - at) as u32));
        }
        if bytes.len() >= sort_bytes {
            spill.write_run(store, &mut entries, &bytes)?;
            entries.clear();
            bytes.clear();
        }
        Ok(())
    })?;
    if spill.runs.is_empty() {
        entries.sort_unstable_by_key(|e| e.0);
        for (_, at, len) in entries {
            if !sink(&bytes[at as usize..(at + len) as usize]) {
                break;
            }
        }
        return Ok(());
    }
    if !entries.is_empty() {
        spill.write_run(store, &mut entries, &bytes)?;
    }
    drop((bytes, entries));
    let mut merge = spill.merge(store)?;
    while let Some(go_on) = merge
        .next(|_, b| sink(b))
        .map_err(|e| merge_err(store, e))?
    {
        if !go_on {
            break;
        }
    }
    Ok(())
}

/// A run's failure: its file could not be read, or it is cut short.
fn merge_err(store: &Store, e: std::io::Error) -> StoreError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        store.corrupt("sorted run", "cut short")
    } else {
        io(store, e)
    }
}

/// One sorted run in the temporary file, read ahead a buffer at a time.
struct Run {
    file: Arc<File>,
    pos: u64,
    end: u64,
    buf: Vec<u8>,
    at: usize,
    /// The length of the record at `at` (after its 24-byte header), once
    /// loaded.
    head: Option<usize>,
}

impl Run {
    /// Makes `n` bytes available at `self.at`; false at the end.
    fn fill(&mut self, n: usize) -> std::io::Result<bool> {
        if self.buf.len() - self.at >= n {
            return Ok(true);
        }
        self.buf.drain(..self.at);
        self.at = 0;
        let want = n.max(READ_AHEAD) - self.buf.len();
        let left = (self.end - self.pos) as usize;
        let take = want.min(left);
        if take == 0 {
            return Ok(self.buf.len() >= n);
        }
        let old = self.buf.len();
        self.buf.resize(old + take, 0);
        self.file.read_exact_at(&mut self.buf[old..], self.pos)?;
        self.pos += take as u64;
        Ok(self.buf.len() >= n)
    }

    /// Loads the next record: its hash, or None at the end of the run.
    fn load(&mut self) -> std::io::Result<Option<Hash>> {
        if let Some(len) = self.head.take() {
            self.at += 24 + len;
        }
        if !self.fill(24)? {
            return Ok(None);
        }
        let mut hash = [0u8; 20];
        hash.copy_from_slice(&self.buf[self.at..self.at + 20]);
        let mut len = [0u8; 4];
        len.copy_from_slice(&self.buf[self.at + 20..self.at + 24]);
        let len = u32::from_le_bytes(len) as usize;
        if !self.fill(24 + len)? {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.head = Some(len);
        Ok(Some(hash))
    }

    /// The loaded record's bytes.
    fn head(&self) -> &[u8] {
        let len = self.head.unwrap_or(0);
        &self.buf[self.at + 24..self.at + 24 + len]
    }
}

/// The runs merged: smallest hash first.
struct Merge {
    runs: Vec<Run>,
    heap: BinaryHeap<Reverse<(Hash, usize)>>,
}

impl Merge {
    fn pull(&mut self, i: usize) -> std::io::Result<()> {
        if let Some(hash) = self.runs[i].load()? {
            self.heap.push(Reverse((hash, i)));
        }
        Ok(())
    }

    /// `f` of the next record (smallest hash), or None when every run is
    /// done.
    fn next<R>(&mut self, f: impl FnOnce(&Hash, &[u8]) -> R) -> std::io::Result<Option<R>> {
        let Some(Reverse((hash, i))) = self.heap.pop() else {
            return Ok(None);
        };
        let r = f(&hash, self.runs[i].head());
        self.pull(i)?;
        Ok(Some(r))
    }
}

/// [`commits_of`]'s merge: each record decoded.
struct Decoded<'a> {
    store: &'a Store,
    merge: Merge,
    failed: bool,
}

impl Iterator for Decoded<'_> {
    type Item = Result<StoredCommit, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let store = self.store;
        let r = match self
            .merge
            .next(|h, b| codec::decode(h, b).map_err(|e| store.corrupt("sorted run", e)))
        {
            Ok(r) => r?,
            Err(e) => Err(merge_err(store, e)),
        };
        self.failed = r.is_err();
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Author, CommitRecord, RepoState};
    use chrono::{DateTime, Utc};

    /// Past [`SORT_AT_ONCE`], the merged runs give what one sort gives.
    #[test]
    fn runs_merged_give_hash_order_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut repo = RepoState::new("ws", "{r}", "r", "ws/r", Utc::now());
        let n = SORT_AT_ONCE * 2 + 777;
        let base = DateTime::parse_from_rfc3339("2024-05-01T11:37:07.123456+02:00").unwrap();
        let mut expected = Vec::new();
        let commits: Vec<CommitRecord> = (0..n)
            .map(|i| {
                let h = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                let c = CommitRecord {
                    workspace: "ws".into(),
                    repo: "r".into(),
                    repo_uuid: "{r}".into(),
                    branch: "main".into(),
                    hash: format!("{h:016x}{:024x}", i),
                    date: base + chrono::Duration::seconds(i as i64),
                    author: Author {
                        raw: Some(format!("A{} <a{}@x>", i % 7, i % 7)),
                        name: Some(format!("A{}", i % 7)),
                        email: Some(format!("a{}@x", i % 7)),
                        uuid: None,
                        account_id: None,
                        display_name: None,
                    },
                    committer: None,
                    message: format!("m{i}"),
                    parents: vec![],
                    reachable: true,
                };
                expected.push(StoredCommit::from_record(&c));
                c
            })
            .collect();
        for page in commits.chunks(100) {
            repo = store.apply_page(&repo, page).unwrap().repo;
        }
        expected.sort_by(|a, b| a.hash.cmp(&b.hash));
        let got: Vec<StoredCommit> = commits_of(&store, repo.id).map(|c| c.unwrap()).collect();
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "the merged runs differ from one sort");

        // The printed records, sorted in memory or in runs of any size,
        // are those commits' records, each once; `all` or not; a sink that
        // stops is not called again.
        let repo = store.repo("ws", "{r}").unwrap().unwrap();
        for all in [true, false] {
            let mut printed = Vec::new();
            for c in &expected {
                if all || c.reachable {
                    serde_json::to_writer(&mut printed, &c.clone().into_record(&repo)).unwrap();
                    printed.push(b'\n');
                }
            }
            for sort_bytes in [usize::MAX, SORT_BYTES, 1 << 16, 1] {
                let mut got = Vec::new();
                export_json_sorting(&store, &repo, all, sort_bytes, &mut |r| {
                    got.extend_from_slice(r);
                    got.push(b'\n');
                    true
                })
                .unwrap();
                assert!(
                    got == printed,
                    "sorting {sort_bytes} bytes at a time, all {all}"
                );
            }
            let mut calls = 0;
            export_json_sorting(&store, &repo, all, 1 << 16, &mut |_| {
                calls += 1;
                calls < 10
            })
            .unwrap();
            assert_eq!(calls, 10);
        }
    }
}
