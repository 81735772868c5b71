//! Schema 1 → 3 when a schema-1 store is opened: a new store is written
//! beside the old one, inside the store directory, then swapped in. (Schema
//! 2 → 3, the same layout with every value sealed, is done in place:
//! [`seal_in_place`].)
//!
//! Why not in place: sled costs about 10 µs per key written or removed, and
//! schema 1 holds three keys per commit — removing them alone would hold a
//! million-commit store for over half a minute. Reading them in order costs
//! little, and the new layout writes a few keys per hundred commits.
//!
//! 1. Under `<store>/.migration.lock` (held to the end, so no other bbcrawl
//!    touches the store meanwhile) and the old store's own sled lock, a new
//!    sled database is built in `<store>/migrating-v2/`: repository and
//!    author records and the last pass copied as they are, then each
//!    repository's commits, oldest first by its date index, a hundred to a
//!    block. The old store is only read.
//! 2. The new database is flushed and closed, and `migrating-v2/COMPLETE`
//!    is written (and synced).
//! 3. The old store is closed; its sled files at the top of the directory
//!    are removed and `migrating-v2/OLD_REMOVED` written; the new files are
//!    moved up; `migrating-v2/` is removed. The store id and the daemon's
//!    address file stay where they are.
//!
//! A `kill -9` at any moment leaves one of these states, which the next
//! open recognises before it opens sled ([`resume`]): no `COMPLETE` → the
//! half-built copy is removed and the migration starts again from the
//! intact old store; `COMPLETE` → the swap is finished. So every commit ends
//! up stored exactly once, and the old store is removed only after the new
//! one is complete on disk.

use std::collections::HashSet;
use std::fs::File;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::block::Columns;
use super::codec;
use super::keys::{self, Hash};
use super::read::Totals;
use super::seal::{self, Batch};
use super::write::AuthorChanges;
use super::{Create, Store, StoreError, StoredCommit};

/// Test hook: a pause after each batch, so a test can kill the process in
/// the middle of a small store's migration. Not for users.
const PAUSE_ENV: &str = "BBCRAWL_TEST_MIGRATION_PAUSE_MS";

/// Where the new store is built, inside the store directory.
pub const WORK_DIR: &str = "migrating-v2";

/// sled's cache for the copy a migration writes. The copy reads back the
/// postings chunks and summaries it is appending to for every block; with
/// the store's 16 MB it paged them in again and again (BENCHMARKS.md,
/// "Fuller sled leaves": 1M commits migrated in 19.4–20.3 s with 16 MB,
/// 17.9–18.2 s with 48 MB, peak RSS 129 → 145 MB).
const COPY_CACHE_BYTES: u64 = 48 * 1024 * 1024;
/// In [`WORK_DIR`]: the new store is complete.
const COMPLETE: &str = "COMPLETE";
/// In [`WORK_DIR`]: the old store's files are gone.
const OLD_REMOVED: &str = "OLD_REMOVED";
/// Held (locked) for the whole migration and swap.
const LOCK_FILE: &str = ".migration.lock";

/// Commits per block written by the migration.
const BLOCK_COMMITS: usize = super::write::BLOCK_COMMITS;

/// The migration lock of a store directory, held while alive.
pub(super) struct MigrationLock {
    _file: File,
}

fn io_error(dir: &Path, what: &str, e: std::io::Error) -> StoreError {
    StoreError::Io {
        path: dir.to_path_buf(),
        message: format!("migrating to schema 2: {what}: {e}"),
    }
}

/// Takes the migration lock of `dir`, or says the store is locked.
fn lock(dir: &Path) -> Result<MigrationLock, StoreError> {
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| io_error(dir, "cannot open the migration lock", e))?;
    match fs2::FileExt::try_lock_exclusive(&file) {
        Ok(()) => Ok(MigrationLock { _file: file }),
        Err(e) if e.kind() == fs2::lock_contended_error().kind() => Err(StoreError::Locked {
            path: dir.to_path_buf(),
        }),
        Err(e) => Err(io_error(dir, "cannot lock", e)),
    }
}

/// Syncs a directory, so renames and removals in it are durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes an empty marker file durably.
fn mark(dir: &Path, name: &str) -> std::io::Result<()> {
    File::create(dir.join(name))?.sync_all()?;
    sync_dir(dir)
}

/// sled's files in a directory: `conf`, `db`, `snap.*`, `blobs`.
fn sled_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == "conf" || name == "db" || name == "blobs" || name.starts_with("snap.") {
            out.push(entry.path());
        }
    }
    Ok(out)
}

fn remove(path: &Path) -> std::io::Result<()> {
    if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
}

/// Before sled is opened in `dir`: finishes what an interrupted migration
/// left (see the module doc). Nothing to do in a store without
/// [`WORK_DIR`]; a held lock (another process migrating) is `Locked`.
pub(super) fn resume(dir: &Path, held: Option<MigrationLock>) -> Result<(), StoreError> {
    let work = dir.join(WORK_DIR);
    if !work.is_dir() {
        return Ok(());
    }
    let _lock = match held {
        Some(l) => l,
        None => lock(dir)?,
    };
    let err = |what: &str, e: std::io::Error| io_error(dir, what, e);
    if !work.join(COMPLETE).exists() {
        tracing::info!(store = %dir.display(), "removing the incomplete schema-2 copy an interrupted migration left; the migration starts again");
        std::fs::remove_dir_all(&work).map_err(|e| err("cannot remove the incomplete copy", e))?;
        sync_dir(dir).map_err(|e| err("cannot sync", e))?;
        return Ok(());
    }
    if !work.join(OLD_REMOVED).exists() {
        for f in sled_files(dir).map_err(|e| err("cannot list the old store", e))? {
            remove(&f).map_err(|e| err("cannot remove the old store", e))?;
        }
        sync_dir(dir).map_err(|e| err("cannot sync", e))?;
        mark(&work, OLD_REMOVED).map_err(|e| err("cannot mark the old store removed", e))?;
    }
    for f in sled_files(&work).map_err(|e| err("cannot list the new store", e))? {
        if let Some(name) = f.file_name() {
            std::fs::rename(&f, dir.join(name))
                .map_err(|e| err("cannot move the new store up", e))?;
        }
    }
    sync_dir(dir).map_err(|e| err("cannot sync", e))?;
    std::fs::remove_dir_all(&work).map_err(|e| err("cannot remove the migration directory", e))?;
    sync_dir(dir).map_err(|e| err("cannot sync", e))?;
    Ok(())
}

/// Migrates the schema-`found` store `old` (open, its sled lock held) into
/// a complete schema-2 copy in [`WORK_DIR`]; the caller closes `old` and
/// calls [`resume`] with the returned lock to swap it in.
pub(super) fn run(old: &Store, found: u32) -> Result<MigrationLock, StoreError> {
    let dir = old.path().to_path_buf();
    let held = lock(&dir)?;
    let work = dir.join(WORK_DIR);
    if work.exists() {
        std::fs::remove_dir_all(&work)
            .map_err(|e| io_error(&dir, "cannot remove an old copy", e))?;
    }
    std::fs::create_dir(&work)
        .map_err(|e| io_error(&dir, "cannot create the copy's directory", e))?;
    let repos = old.repos()?;
    let total: u64 = repos.iter().map(|r| r.commits_stored).sum();
    let started = Instant::now();
    tracing::info!(
        store = %dir.display(),
        commits = total,
        "migrating the store from schema {found} to schema {} (blocks of commits): a new copy is written beside the old one, then replaces it; the store is usable when this ends; an interruption loses nothing (the old store is removed only once the copy is complete)",
        keys::SCHEMA_VERSION
    );
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(total),
            indicatif::ProgressDrawTarget::stderr(),
        );
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "migrating the store to schema 3: {pos}/{len} commits ({per_sec}, {eta} left)",
        ) {
            bar.set_style(style);
        }
        bar
    });
    let pause = std::env::var(PAUSE_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis);
    let new = Store::open_with(&work, Create::IfEmpty, COPY_CACHE_BYTES)?;
    // The copy's own id file: the store keeps the one it has.
    let _ = std::fs::remove_file(work.join(super::ID_FILE));
    copy_records(old, &new)?;
    let mut done = 0u64;
    for repo in &repos {
        let id = repo.id;
        let mut seq = 0u32;
        let mut seen: HashSet<Hash> = HashSet::new();
        // Oldest first by the repository's date index: blocks then hold
        // neighbouring dates, as a crawl's do.
        let mut index = old.db()?.scan_prefix(keys::by_repo_prefix(id)).keys();
        let mut moved_any =
            |commits: Vec<(Hash, StoredCommit)>, seq: &mut u32| -> Result<(), StoreError> {
                if commits.is_empty() {
                    return Ok(());
                }
                let mut batch = Batch::default();
                write_block(&new, &mut batch, id, *seq, &commits)?;
                let stored = super::feed::Entry::Commits {
                    change: super::feed::CommitChange::Stored,
                    repo: id,
                    block: *seq,
                    slots: (0..commits.len() as u8).collect(),
                };
                new.apply_with_feed(batch, vec![stored])?;
                *seq += 1;
                done += commits.len() as u64;
                if let Some(bar) = &bar {
                    bar.set_position(done);
                }
                if let Some(p) = pause {
                    new.flush()?;
                    std::thread::sleep(p);
                }
                Ok(())
            };
        loop {
            let chunk: Vec<sled::IVec> = index
                .by_ref()
                .take(BLOCK_COMMITS)
                .collect::<Result<_, _>>()
                .map_err(|e| old.err(e))?;
            if chunk.is_empty() {
                break;
            }
            let mut commits = Vec::with_capacity(chunk.len());
            for k in &chunk {
                let Some(entry) = keys::parse_by_repo(k, &[1]) else {
                    continue;
                };
                if !seen.insert(entry.hash) {
                    continue;
                }
                if let Some(c) = old_commit(old, id, &entry.hash)? {
                    commits.push((entry.hash, c));
                }
            }
            moved_any(commits, &mut seq)?;
        }
        // Records without an index entry: none in a store bbcrawl wrote,
        // where the index holds as many as the repository record counts.
        if seen.len() as u64 >= repo.commits_stored {
            continue;
        }
        let prefix = keys::commit_prefix(id);
        let skip = prefix.len();
        let mut rest = Vec::new();
        for kv in old.db()?.scan_prefix(prefix) {
            let (k, v) = kv.map_err(|e| old.err(e))?;
            let hash = Hash::try_from(&k[skip..])
                .map_err(|_| old.corrupt("commit key", keys::hash_hex(&k)))?;
            if seen.contains(&hash) {
                continue;
            }
            rest.push((
                hash,
                codec::decode(&hash, &v).map_err(|e| old.corrupt("commit record", e))?,
            ));
            if rest.len() == BLOCK_COMMITS {
                moved_any(std::mem::take(&mut rest), &mut seq)?;
            }
        }
        moved_any(rest, &mut seq)?;
    }
    let mut totals = new.totals()?;
    totals.authors = new.db()?.scan_prefix([keys::AUTHOR]).count() as u64;
    let mut batch = Batch::default();
    batch.insert(keys::META_TOTALS, totals.encode());
    new.apply(batch)?;
    new.flush()?;
    // Dropping the copy settles its log, so the first open after the swap
    // is quick.
    drop(new);
    mark(&work, COMPLETE).map_err(|e| io_error(&dir, "cannot mark the copy complete", e))?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        store = %dir.display(),
        commits = done,
        seconds = format_args!("{secs:.1}"),
        "store migrated to schema {}",
        keys::SCHEMA_VERSION
    );
    Ok(held)
}

/// Copies repository records, author records and meta (but the schema
/// version) as they are.
fn copy_records(old: &Store, new: &Store) -> Result<(), StoreError> {
    for prefix in [keys::REPO, keys::AUTHOR, b'm'] {
        let mut batch = Batch::default();
        let mut n = 0;
        for kv in old.db()?.scan_prefix([prefix]) {
            let (k, v) = kv.map_err(|e| old.err(e))?;
            if k.as_ref() == keys::META_SCHEMA || k.as_ref() == keys::META_TOTALS {
                continue;
            }
            batch.insert(k, v);
            n += 1;
            if n == 1000 {
                new.apply(std::mem::take(&mut batch))?;
                n = 0;
            }
        }
        new.apply(batch)?;
    }
    Ok(())
}

/// A schema-1 commit record.
fn old_commit(store: &Store, id: u32, hash: &Hash) -> Result<Option<StoredCommit>, StoreError> {
    match store
        .db()?
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
/// aggregates and totals.
fn write_block(
    store: &Store,
    batch: &mut Batch,
    id: u32,
    seq: u32,
    commits: &[(Hash, StoredCommit)],
) -> Result<(), StoreError> {
    let stored: Vec<StoredCommit> = commits.iter().map(|(_, c)| c.clone()).collect();
    let cols = Columns::of(&stored).map_err(|e| store.corrupt("commit record", e))?;
    let mut authors = AuthorChanges::default();
    store.put_block(batch, &mut authors, id, seq, &cols)?;
    let mut totals: Totals = store.totals()?;
    for (_, c) in commits {
        totals.commits += 1;
        if !c.reachable {
            totals.unreachable += 1;
        }
    }
    authors.write(store, batch, &mut totals)?;
    totals.blocks += 1;
    batch.insert(keys::META_TOTALS, totals.encode());
    Ok(())
}

/// Keys sealed per batch by [`seal_in_place`].
const SEAL_BATCH_KEYS: usize = 2_000;

/// Schema 2 → 3: every value gets its seal (see `seal`), in place — the
/// layout is the same, so each value is rewritten under its own key, in key
/// order, a batch at a time. Each batch also records the last key it
/// sealed (`META_SEALED_UPTO`), so a `kill -9` leaves values up to that
/// key sealed and the rest not, and the next open carries on after it. The
/// last batch writes schema 3 and removes the marker: from then on every
/// value is read sealed. Nothing is read through the store meanwhile (the
/// open that migrates holds sled's lock).
pub(super) fn seal_in_place(store: &Store) -> Result<(), StoreError> {
    let db = store.db()?;
    let dir = store.path();
    let upto = db
        .get(keys::META_SEALED_UPTO)
        .map_err(|e| store.err(e))?
        .map(|v| v.to_vec());
    let started = Instant::now();
    tracing::info!(
        store = %dir.display(),
        resumed = upto.is_some(),
        "migrating the store from schema 2 to schema 3 (a checksum on every value), in place; an interruption loses nothing"
    );
    let pause = std::env::var(PAUSE_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis);
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(db.len() as u64),
            indicatif::ProgressDrawTarget::stderr(),
        );
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "migrating the store to schema 3: {pos}/{len} values ({per_sec}, {eta} left)",
        ) {
            bar.set_style(style);
        }
        bar
    });
    let from = match &upto {
        Some(k) => std::ops::Bound::Excluded(k.clone()),
        None => std::ops::Bound::Unbounded,
    };
    let mut keys = db.range::<Vec<u8>, _>((from, std::ops::Bound::Unbounded));
    let mut done = 0u64;
    loop {
        let mut batch = sled::Batch::default();
        let mut last = None;
        let mut n = 0;
        // Small batches when a test pauses between them, to kill it in
        // the middle.
        let per_batch = if pause.is_some() { 10 } else { SEAL_BATCH_KEYS };
        for kv in keys.by_ref() {
            let (k, v) = kv.map_err(|e| store.err(e))?;
            if k.as_ref() == keys::META_SCHEMA || k.as_ref() == keys::META_SEALED_UPTO {
                continue;
            }
            batch.insert(k.clone(), seal::seal(&k, &v));
            last = Some(k);
            n += 1;
            if n == per_batch {
                break;
            }
        }
        let Some(last) = last else { break };
        batch.insert(keys::META_SEALED_UPTO, last);
        db.apply_batch(batch).map_err(|e| store.err(e))?;
        done += n as u64;
        if let Some(bar) = &bar {
            bar.set_position(done);
        }
        if let Some(p) = pause {
            db.flush().map_err(|e| store.err(e))?;
            std::thread::sleep(p);
        }
    }
    let mut batch = sled::Batch::default();
    batch.remove(keys::META_SEALED_UPTO);
    batch.insert(keys::META_SCHEMA, &3u32.to_be_bytes());
    db.apply_batch(batch).map_err(|e| store.err(e))?;
    db.flush().map_err(|e| store.err(e))?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    tracing::info!(
        store = %dir.display(),
        values = done,
        seconds = format_args!("{:.1}", started.elapsed().as_secs_f64()),
        "store migrated to schema 3"
    );
    Ok(())
}
