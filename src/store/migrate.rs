//! Schema 1 → 2, in place, when a schema-1 store is opened.
//!
//! The first batch sets the schema to 2 and a `migrating` mark, so an older
//! bbcrawl refuses the store from then on (it is newer than it knows) and
//! a newer one knows to finish the job. Then, repository by repository, the
//! oldest (at most) 100 commits still in the schema-1 layout become one
//! block: in ONE batch the block, its summary, its authors' postings and
//! aggregates and the totals are written and the commits' schema-1 keys
//! (record and both index entries) removed. A `kill -9` at any moment thus
//! leaves every commit in exactly one of the layouts, and the next open
//! carries on from what is left. Repository records, author records and
//! the last pass are the same in both schemas and are not touched. The
//! last batch counts the authors and removes the mark.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use chrono::Utc;

use super::block::Columns;
use super::codec;
use super::keys::{self, Hash, Summary, BLOCK, SUMMARY};
use super::read::Totals;
use super::write::AuthorChanges;
use super::{Store, StoreError, StoredCommit};

/// Progress of a migration, for a caller that wants to show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigrationProgress {
    /// Commits moved so far.
    pub done: u64,
    /// Commits to move in all (from the repository records).
    pub total: u64,
}

/// Test hook: a pause after each batch, so a test can kill the process in
/// the middle of a small store's migration. Not for users.
const PAUSE_ENV: &str = "BBCRAWL_TEST_MIGRATION_PAUSE_MS";

/// Migrates `store` (schema `found`) to schema 2.
pub(super) fn run(store: &Store, found: u32) -> Result<(), StoreError> {
    let db = store.db();
    if found < keys::SCHEMA_VERSION {
        let mut batch = sled::Batch::default();
        batch.insert(keys::META_SCHEMA, &keys::SCHEMA_VERSION.to_be_bytes());
        batch.insert(keys::META_MIGRATING, &found.to_be_bytes());
        store.apply(batch)?;
        store.flush()?;
    }
    let repos = store.repos()?;
    let total: u64 = repos.iter().map(|r| r.commits_stored).sum();
    let mut done = store.totals()?.commits;
    let started = Instant::now();
    tracing::info!(
        store = %store.path().display(),
        commits = total,
        "migrating the store from schema {found} to schema 2 (blocks of commits): the store is usable when this ends; an interruption loses nothing, the next start carries on"
    );
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(total),
            indicatif::ProgressDrawTarget::stderr(),
        );
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "migrating the store to schema 2: {pos}/{len} commits ({per_sec}, {eta} left)",
        ) {
            bar.set_style(style);
        }
        bar.set_position(done);
        bar
    });
    let pause = std::env::var(PAUSE_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis);
    for repo in &repos {
        // Blocks already written by an interrupted run come first.
        let mut seq = store.summaries(repo.id)?.last().map_or(0, |s| s.seq + 1);
        loop {
            let moved = move_next(store, repo.id, seq)?;
            seq += 1;
            if moved == 0 {
                break;
            }
            done += moved;
            if let Some(bar) = &bar {
                bar.set_position(done);
            }
            if let Some(p) = pause {
                store.flush()?;
                std::thread::sleep(p);
            }
        }
    }
    // Anything of schema 1 no repository record names (none in a store
    // bbcrawl wrote) is dropped, never left to be read as schema 2.
    for prefix in [keys::COMMIT, keys::BY_REPO, keys::BY_AUTHOR] {
        loop {
            let stale: Vec<sled::IVec> = db
                .scan_prefix([prefix])
                .keys()
                .take(1000)
                .collect::<Result<_, _>>()
                .map_err(|e| store.err(e))?;
            if stale.is_empty() {
                break;
            }
            tracing::warn!(
                keys = stale.len(),
                "dropping schema-1 entries of no known repository"
            );
            let mut batch = sled::Batch::default();
            for k in stale {
                batch.remove(k);
            }
            store.apply(batch)?;
        }
    }
    let mut totals = store.totals()?;
    totals.authors = db.scan_prefix([keys::AUTHOR]).count() as u64;
    let mut batch = sled::Batch::default();
    batch.insert(keys::META_TOTALS, totals.encode());
    batch.remove(keys::META_MIGRATING);
    store.apply(batch)?;
    store.flush()?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        store = %store.path().display(),
        commits = done,
        seconds = format_args!("{secs:.1}"),
        "store migrated to schema 2"
    );
    Ok(())
}

/// Moves the oldest (at most 100) schema-1 commits of repository `id` (by
/// its date index: forward, as sled 0.34's reverse scans can panic on keys
/// rich in `0xff` bytes) into block `seq`, in one batch. Returns how many
/// moved (0: none left).
fn move_next(store: &Store, id: u32, seq: u32) -> Result<u64, StoreError> {
    let db = store.db();
    let mut batch = sled::Batch::default();
    let mut commits: Vec<(Hash, StoredCommit)> = Vec::new();
    let index_keys: Vec<sled::IVec> = db
        .scan_prefix(keys::by_repo_prefix(id))
        .keys()
        .take(super::write::BLOCK_COMMITS)
        .collect::<Result<_, _>>()
        .map_err(|e| store.err(e))?;
    for k in &index_keys {
        batch.remove(k.clone());
        let Some(entry) = keys::parse_by_repo(k, &[1]) else {
            continue;
        };
        if let Some(c) = old_commit(store, id, &entry.hash)? {
            commits.push((entry.hash, c));
        }
    }
    if index_keys.is_empty() {
        // Records without an index entry (none in a store bbcrawl wrote).
        let prefix = keys::commit_prefix(id);
        let skip = prefix.len();
        for kv in db.scan_prefix(prefix).take(super::write::BLOCK_COMMITS) {
            let (k, v) = kv.map_err(|e| store.err(e))?;
            let hash = Hash::try_from(&k[skip..])
                .map_err(|_| store.corrupt("commit key", keys::hash_hex(&k)))?;
            let c = codec::decode(&hash, &v).map_err(|e| store.corrupt("commit record", e))?;
            commits.push((hash, c));
        }
        if commits.is_empty() {
            return Ok(0);
        }
    }
    let moved = index_keys.len().max(commits.len()) as u64;
    if !commits.is_empty() {
        write_block(store, &mut batch, id, seq, &commits)?;
    }
    store.apply(batch)?;
    Ok(moved)
}

/// A schema-1 commit record.
fn old_commit(store: &Store, id: u32, hash: &Hash) -> Result<Option<StoredCommit>, StoreError> {
    match store
        .db()
        .get(keys::commit(id, hash))
        .map_err(|e| store.err(e))?
    {
        None => Ok(None),
        Some(v) => codec::decode(hash, &v)
            .map(Some)
            .map_err(|e| store.corrupt("commit record", e)),
    }
}

/// Adds to `batch`: the block of `commits`, its summary, postings,
/// aggregates and totals, and the removal of their schema-1 keys.
fn write_block(
    store: &Store,
    batch: &mut sled::Batch,
    id: u32,
    seq: u32,
    commits: &[(Hash, StoredCommit)],
) -> Result<(), StoreError> {
    let stored: Vec<StoredCommit> = commits.iter().map(|(_, c)| c.clone()).collect();
    let cols = Columns::of(&stored).map_err(|e| store.corrupt("commit record", e))?;
    let bytes = cols
        .encode()
        .map_err(|e| store.corrupt("commit record", e))?;
    batch.insert(&keys::block(BLOCK, id, seq), bytes);
    let summary = Summary::of(
        id,
        seq,
        cols.hashes(),
        (0..cols.len()).map(|i| cols.date_ms(i)),
    );
    batch.insert(&keys::block(SUMMARY, id, seq), summary.encode());
    let mut authors = AuthorChanges::new();
    authors.add_block(store, batch, id, seq, &cols)?;
    let mut totals: Totals = store.totals()?;
    for (hash, c) in commits {
        totals.commits += 1;
        if !c.reachable {
            totals.unreachable += 1;
        }
        let at = c.date.with_timezone(&Utc);
        batch.remove(keys::commit(id, hash));
        batch.remove(keys::by_author(&c.author.identity(), at, hash, id));
    }
    authors.write(store, batch, &mut totals)?;
    totals.blocks += 1;
    batch.insert(keys::META_TOTALS, totals.encode());
    Ok(())
}
