//! `bbcrawl store repair`: keeps every block that can be read, rebuilds
//! everything derived from the blocks (summaries, repository counts, author
//! aggregates, postings and (author, repository) pairs, totals), and for
//! each repository that lost data — an unreadable block, or a saved
//! position that is not stored — forgets its head and walk, so the next
//! `sync` walks it again from its head: what was lost is fetched again
//! (the commits still stored are recognised, not stored twice).
//!
//! In place: one batch per repository for its blocks, summaries and record,
//! then the author data. Interrupted (a kill), it leaves the store for
//! `store check` to find damaged and for `store repair` to finish: every
//! step is rebuilt from the blocks again.

use serde::Serialize;

use super::block::Columns;
use super::keys::{self, Summary, BLOCK};
use super::read::Totals;
use super::seal::Batch;
use super::write::AuthorChanges;
use super::{Store, StoreError};

/// A repository the next `sync` walks again.
#[derive(Debug, Clone, Serialize)]
pub struct Rewound {
    /// `workspace/slug`.
    pub repository: String,
    /// Blocks that could not be read (dropped).
    pub blocks_dropped: u64,
    /// Commits on its default branch as last stored, before the repair.
    pub commits_before: u64,
    /// Commits kept.
    pub commits_kept: u64,
    /// Requests its walk will cost: one per page of the branch as last
    /// seen (the walk starts at the head and pages down to the root).
    pub requests: u64,
}

/// What `store repair` did.
#[derive(Debug, Clone, Serialize, Default)]
pub struct RepairReport {
    /// Repositories read.
    pub repositories: u64,
    /// Blocks kept.
    pub blocks: u64,
    /// Commits kept.
    pub commits: u64,
    /// Repositories the next `sync` walks again.
    pub rewound: Vec<Rewound>,
    /// What the manifest said the database had lost (see `manifest`):
    /// repair accepts the database as it is, and the next `sync` fetches
    /// what the lost writes held as new commits.
    pub lost_writes: Option<String>,
}

impl RepairReport {
    /// Requests the next `sync` spends on the rewound repositories.
    pub fn requests(&self) -> u64 {
        self.rewound.iter().map(|r| r.requests).sum()
    }

    /// For people.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "repaired: {} repositories, {} blocks, {} commits kept; {} repositories to fetch again, about {} requests\n",
            self.repositories,
            self.blocks,
            self.commits,
            self.rewound.len(),
            self.requests()
        );
        if let Some(lost) = &self.lost_writes {
            out.push_str(&format!(
                "  accepted the database as it is, though {lost}; the next sync fetches what those writes held again\n"
            ));
        }
        for r in &self.rewound {
            out.push_str(&format!(
                "  {}: {} blocks dropped, {} of {} commits kept; its next walk costs about {} requests\n",
                r.repository, r.blocks_dropped, r.commits_kept, r.commits_before, r.requests
            ));
        }
        out
    }
}

/// Commits per page of a walk (`page_size` at its maximum, the default).
const PAGE: u64 = 100;

impl Store {
    /// Repairs the store (see the module notes).
    pub fn repair(&self) -> Result<RepairReport, StoreError> {
        let mut report = RepairReport {
            lost_writes: self.manifest_problem().map(str::to_owned),
            ..RepairReport::default()
        };
        // Author data is rebuilt from scratch.
        for prefix in [keys::POSTING, keys::AUTHOR_STATS, keys::AUTHOR_REPO] {
            let mut batch = Batch::default();
            for k in self.db()?.scan_prefix([prefix]).keys() {
                batch.remove(k.map_err(|e| self.err(e))?);
            }
            self.apply(batch)?;
        }
        let mut totals = Totals::default();
        for mut repo in self.repos()? {
            let name = format!("{}/{}", repo.workspace, repo.slug);
            let mut batch = Batch::default();
            for k in self
                .db()?
                .scan_prefix(keys::blocks_prefix(keys::SUMMARY, repo.id))
                .keys()
            {
                batch.remove(k.map_err(|e| self.err(e))?);
            }
            let mut authors = AuthorChanges::default();
            let (mut kept, mut gone, mut dropped) = (0u64, 0u64, 0u64);
            let mut hashes = std::collections::HashSet::new();
            for kv in self.db()?.scan_prefix(keys::blocks_prefix(BLOCK, repo.id)) {
                let (k, v) = kv.map_err(|e| self.err(e))?;
                let cols = self
                    .unseal(&k, v)
                    .ok()
                    .and_then(|v| Columns::decode(&v).ok());
                let cols = match (keys::parse_block(&k), cols) {
                    (Some((_, seq)), Some(cols)) => (seq, cols),
                    _ => {
                        batch.remove(k);
                        dropped += 1;
                        continue;
                    }
                };
                let (seq, cols) = cols;
                let summary = Summary::of(
                    repo.id,
                    seq,
                    cols.hashes(),
                    (0..cols.len()).map(|i| cols.date_ms(i)),
                );
                batch.insert(keys::block(keys::SUMMARY, repo.id, seq), summary.encode());
                authors.add_block(self, &mut batch, repo.id, seq, &cols)?;
                for i in 0..cols.len() {
                    hashes.insert(*cols.hash(i));
                    kept += 1;
                    if !cols.reachable(i) {
                        gone += 1;
                    }
                }
                report.blocks += 1;
                totals.blocks += 1;
            }
            let stored = |h: Option<&str>| {
                h.is_none_or(|h| keys::parse_hash(h).is_some_and(|h| hashes.contains(&h)))
            };
            let cursor_ok = stored(repo.head.as_deref())
                && stored(repo.walk.as_ref().and_then(|w| w.tip.as_deref()));
            if dropped > 0 || !cursor_ok {
                report.rewound.push(Rewound {
                    repository: name,
                    blocks_dropped: dropped,
                    commits_before: repo.commits_stored,
                    commits_kept: kept,
                    requests: repo.commits_stored.max(kept).div_ceil(PAGE).max(1),
                });
                repo.head = None;
                repo.walk = None;
                // The gate compares the listing's `updated_on` with this.
                repo.updated_on = None;
            }
            repo.commits_stored = kept;
            repo.commits_unreachable = gone;
            batch.insert(keys::repo(&repo.workspace, &repo.uuid), self.json(&repo)?);
            authors.write(self, &mut batch, &mut totals)?;
            self.apply(batch)?;
            totals.commits += kept;
            totals.unreachable += gone;
            report.commits += kept;
            report.repositories += 1;
        }
        let mut batch = Batch::default();
        batch.insert(keys::META_TOTALS, totals.encode());
        self.apply(batch)?;
        // Blocks were dropped: what the writer and readers hold is stale.
        self.writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.blocks_rewritten();
        self.flush()?;
        Ok(report)
    }
}
