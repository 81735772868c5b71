//! A repository's commits in hash order (the order `export` prints), with
//! bounded memory whatever its size. Blocks are in write order, so commits
//! are read block by block and sorted in memory [`SORT_AT_ONCE`] at a time;
//! a repository with more is sorted in runs written to an anonymous
//! temporary file (each commit in the compact schema-1 record form,
//! `codec`), then the runs are merged.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::block::Columns;
use super::codec;
use super::keys::{self, Hash, BLOCK};
use super::{Store, StoreError, StoredCommit};

/// Commits sorted in memory at a time.
pub const SORT_AT_ONCE: usize = 20_000;

/// Bytes read ahead from each run while merging.
const READ_AHEAD: usize = 64 << 10;

/// Commits of one repository in hash order.
pub type Sorted<'a> = Box<dyn Iterator<Item = Result<StoredCommit, StoreError>> + Send + 'a>;

fn io(store: &Store, e: std::io::Error) -> StoreError {
    StoreError::Io {
        path: store.path().to_path_buf(),
        message: format!("sorting a repository's commits in a temporary file: {e}"),
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
    let mut runs: Vec<Run> = Vec::new();
    let mut file: Option<Arc<File>> = None;
    let mut end = 0u64;
    for summary in store.summaries(id)? {
        let Some(v) = store
            .db()
            .get(keys::block(BLOCK, id, summary.seq))
            .map_err(|e| store.err(e))?
        else {
            return Err(store.corrupt(
                "commit block",
                format!("block {} of repository {id} is missing", summary.seq),
            ));
        };
        let cols = Columns::decode(&v).map_err(|e| store.corrupt("commit block", e))?;
        let hashes = cols.hashes().to_vec();
        chunk.extend(hashes.into_iter().zip(cols.into_commits()));
        if chunk.len() >= SORT_AT_ONCE {
            let f = match &file {
                Some(f) => Arc::clone(f),
                None => {
                    let f = Arc::new(tempfile::tempfile().map_err(|e| io(store, e))?);
                    file = Some(Arc::clone(&f));
                    f
                }
            };
            runs.push(spill(store, &f, &mut end, &mut chunk)?);
        }
    }
    chunk.sort_unstable_by_key(|(h, _)| *h);
    let Some(file) = file else {
        return Ok(Box::new(chunk.into_iter().map(|(_, c)| Ok(c))));
    };
    if !chunk.is_empty() {
        runs.push(spill(store, &file, &mut end, &mut chunk)?);
    }
    let mut merge = Merge {
        store,
        runs,
        heap: BinaryHeap::new(),
        failed: false,
    };
    for i in 0..merge.runs.len() {
        merge.pull(i)?;
    }
    Ok(Box::new(merge))
}

/// Sorts `chunk` and appends it to `file` as a run: per commit its hash,
/// the length of its record (u32, little-endian) and the record.
fn spill(
    store: &Store,
    file: &Arc<File>,
    end: &mut u64,
    chunk: &mut Vec<(Hash, StoredCommit)>,
) -> Result<Run, StoreError> {
    chunk.sort_unstable_by_key(|(h, _)| *h);
    let start = *end;
    let mut buf = Vec::with_capacity(READ_AHEAD * 2);
    let write = |buf: &mut Vec<u8>, end: &mut u64| -> Result<(), StoreError> {
        file.write_all_at(buf, *end).map_err(|e| io(store, e))?;
        *end += buf.len() as u64;
        buf.clear();
        Ok(())
    };
    for (hash, c) in chunk.drain(..) {
        let record = codec::encode(&c).map_err(|e| StoreError::Invalid {
            what: format!("commit {}", c.hash),
            message: e.to_string(),
        })?;
        buf.extend(hash);
        buf.extend((record.len() as u32).to_le_bytes());
        buf.extend(record);
        if buf.len() >= READ_AHEAD {
            write(&mut buf, end)?;
        }
    }
    write(&mut buf, end)?;
    Ok(Run {
        file: Arc::clone(file),
        pos: start,
        end: *end,
        buf: Vec::new(),
        at: 0,
        head: None,
    })
}

/// One sorted run in the temporary file, read ahead a buffer at a time.
struct Run {
    file: Arc<File>,
    pos: u64,
    end: u64,
    buf: Vec<u8>,
    at: usize,
    head: Option<StoredCommit>,
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

    /// The next commit of the run.
    fn next(&mut self, store: &Store) -> Result<Option<(Hash, StoredCommit)>, StoreError> {
        if !self.fill(24).map_err(|e| io(store, e))? {
            return Ok(None);
        }
        let mut hash = [0u8; 20];
        hash.copy_from_slice(&self.buf[self.at..self.at + 20]);
        let mut len = [0u8; 4];
        len.copy_from_slice(&self.buf[self.at + 20..self.at + 24]);
        let len = u32::from_le_bytes(len) as usize;
        if !self.fill(24 + len).map_err(|e| io(store, e))? {
            return Err(store.corrupt("sorted run", "cut short"));
        }
        let record = &self.buf[self.at + 24..self.at + 24 + len];
        let c = codec::decode(&hash, record).map_err(|e| store.corrupt("sorted run", e))?;
        self.at += 24 + len;
        Ok(Some((hash, c)))
    }
}

/// The runs merged: smallest hash first.
struct Merge<'a> {
    store: &'a Store,
    runs: Vec<Run>,
    heap: BinaryHeap<Reverse<(Hash, usize)>>,
    failed: bool,
}

impl Merge<'_> {
    fn pull(&mut self, i: usize) -> Result<(), StoreError> {
        if let Some((hash, c)) = self.runs[i].next(self.store)? {
            self.runs[i].head = Some(c);
            self.heap.push(Reverse((hash, i)));
        }
        Ok(())
    }
}

impl Iterator for Merge<'_> {
    type Item = Result<StoredCommit, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let Reverse((_, i)) = self.heap.pop()?;
        let c = self.runs[i].head.take()?;
        if let Err(e) = self.pull(i) {
            self.failed = true;
            return Some(Err(e));
        }
        Some(Ok(c))
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
    }
}
