//! The manifest: what the store looked like the last time its writes were
//! on disk, kept where sled cannot roll it back.
//!
//! Inside sled, every batch a handle applies carries the store's write
//! sequence (`mseq`, one more per batch) next to the totals, the
//! repository records and the schema it changes: sled's own view of the
//! store is always a consistent whole. What sled cannot see is that it
//! lost some of it: recovering from a damaged or shortened log (or a
//! missing snapshot), sled replays up to the damage and stops, and the
//! store reads as it was minutes or days ago — consistent, healthy to
//! every check inside it, and silently missing commits.
//!
//! So after every flush (sled's writes then being on disk) the writer also
//! writes `manifest.json` beside sled's files: the sequence and totals it
//! just made durable, written atomically and owner-only. Opening the store
//! compares the two: sled holding an older sequence than the manifest, or
//! other totals at the same sequence, means sled lost writes it had made
//! durable, and the store refuses to answer (exit 1, what to run) rather
//! than give a stale answer as the truth. A newer sequence in sled is what
//! a crash between sled's flush and the manifest's write leaves, and is
//! fine. A missing manifest (a store from before it, or a crash before the
//! first flush) is written by the next writer.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::read::Totals;

/// The manifest's file name in the store directory.
pub const FILE: &str = "manifest.json";

/// Format of the manifest file.
const FORMAT: u32 = 1;

/// What the manifest records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format of this file.
    pub format: u32,
    /// Store schema.
    pub schema: u32,
    /// The store's write sequence when its writes were last flushed.
    pub seq: u64,
    /// Store totals at that sequence.
    pub commits: u64,
    /// Of those, unreachable.
    pub unreachable: u64,
    /// Distinct authors.
    pub authors: u64,
    /// Blocks.
    pub blocks: u64,
}

impl Manifest {
    /// The manifest of a store at `seq` with `totals`.
    pub fn new(seq: u64, totals: &Totals) -> Manifest {
        Manifest {
            format: FORMAT,
            schema: super::keys::SCHEMA_VERSION,
            seq,
            commits: totals.commits,
            unreachable: totals.unreachable,
            authors: totals.authors,
            blocks: totals.blocks,
        }
    }

    /// The manifest in `dir`: `Ok(None)` when there is none, `Err` with
    /// why when it cannot be read.
    pub fn read(dir: &Path) -> Result<Option<Manifest>, String> {
        match std::fs::read(dir.join(FILE)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {FILE}: {e}")),
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| format!("{FILE} is unreadable: {e}")),
        }
    }

    /// Writes it into `dir`, atomically, owner-only.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let mut bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        super::write_atomically(&dir.join(FILE), &bytes, 0o600)
    }

    /// What is wrong when sled holds `seq` and `totals` and this manifest
    /// was written after a flush: `None` when sled holds at least what the
    /// manifest says reached the disk.
    pub fn disagreement(&self, seq: u64, totals: &Totals) -> Option<String> {
        if seq < self.seq {
            return Some(format!(
                "the database has lost writes that were on disk: {FILE} records write {} (with {} commits) as flushed, the database holds writes up to {} (with {} commits) — a damaged or shortened data file, or files copied from different moments",
                self.seq, self.commits, seq, totals.commits
            ));
        }
        let same = self.commits == totals.commits
            && self.unreachable == totals.unreachable
            && self.authors == totals.authors
            && self.blocks == totals.blocks;
        if seq == self.seq && !same {
            return Some(format!(
                "at write {seq} {FILE} records {} commits in {} blocks, the database's totals say {} in {}",
                self.commits, self.blocks, totals.commits, totals.blocks
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(commits: u64) -> Totals {
        Totals {
            commits,
            unreachable: 0,
            authors: 3,
            blocks: commits.div_ceil(100),
        }
    }

    #[test]
    fn sled_behind_the_manifest_or_disagreeing_with_it_is_damage() {
        let m = Manifest::new(10, &totals(250));
        assert_eq!(m.disagreement(10, &totals(250)), None);
        // A crash after sled's flush, before the manifest's write.
        assert_eq!(m.disagreement(12, &totals(300)), None);
        let behind = m.disagreement(7, &totals(140)).unwrap();
        assert!(
            behind.contains("records write 10 (with 250 commits)")
                && behind.contains("holds writes up to 7 (with 140 commits)"),
            "{behind}"
        );
        let other = m.disagreement(10, &totals(240)).unwrap();
        assert!(other.contains("250 commits in 3 blocks"), "{other}");
    }

    #[test]
    fn it_round_trips_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Manifest::read(dir.path()), Ok(None));
        let m = Manifest::new(4, &totals(99));
        m.write(dir.path()).unwrap();
        assert_eq!(Manifest::read(dir.path()), Ok(Some(m)));
        std::fs::write(dir.path().join(FILE), b"{").unwrap();
        assert!(Manifest::read(dir.path())
            .unwrap_err()
            .contains("manifest.json is unreadable"));
    }
}
