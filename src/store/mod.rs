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

mod backup;
pub mod block;
mod check;
pub mod codec;
pub mod feed;
pub mod keys;
mod manifest;
mod migrate;
mod read;
mod repair;
mod seal;
mod sorted;
mod write;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use chrono::{DateTime, FixedOffset, Utc};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::record::{Author, CommitRecord, Committer, RepoState};
pub use backup::{restore, BackupReport};
pub use check::{CheckReport, Problem};
pub use keys::{Hash, IndexEntry, Posting, Summary};
pub use manifest::Manifest;
pub use read::{instant, AuthorStats, Entries, Totals};
pub use repair::{RepairReport, Rewound};
use seal::Batch;
pub use sorted::SortedCommit;

/// sled's page cache. Explicit so memory use does not depend on sled's
/// default (1 GiB). Measured over a 1M-commit crawl: 64 MiB gave a 256 MB
/// peak RSS, 16 MiB 142 MB at the same throughput (writes are batched per
/// page and queries read few pages), so the smaller cache it is.
pub const CACHE_BYTES: u64 = 16 * 1024 * 1024;

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
    /// The directory holds no bbcrawl store: a read command never creates
    /// one, and `sync`/`run` create one only in a missing or empty
    /// directory (never among someone else's files).
    #[error("{} is not a bbcrawl store: {why}", path.display())]
    NotAStore {
        /// The directory.
        path: PathBuf,
        /// What it holds instead.
        why: String,
    },
    /// The files are damaged or not a store.
    #[error(
        "the store at {path} is damaged or not a bbcrawl store: {message}; {}",
        crate::panic::DAMAGE_ADVICE
    )]
    Corrupt {
        /// Store directory.
        path: PathBuf,
        /// What sled or the decoder said.
        message: String,
    },
    /// A record that cannot be stored (e.g. a hash that is not 40 hex digits).
    #[error("cannot store {what}: {message}")]
    Invalid {
        /// What was being stored.
        what: String,
        /// Why not.
        message: String,
    },
    /// Too little free disk to start a pass (`min_free_disk_mb`).
    #[error("not starting a pass: {} free on the filesystem of the store at {}, below the floor of {} (`min_free_disk_mb`); free some space, or set `min_free_disk_mb` lower (0 turns the check off)", crate::human::bytes(*free), path.display(), crate::human::bytes(*floor))]
    LowDisk {
        /// Store directory.
        path: PathBuf,
        /// Bytes free to this process.
        free: u64,
        /// The floor.
        floor: u64,
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

impl StoreError {
    /// The exit code: 7 when another process holds the store, else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            StoreError::Locked { .. } => crate::exit::LOCKED,
            _ => crate::exit::RUNTIME,
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
    pub unreachable_since: Option<DateTime<Utc>>,
}

impl StoredCommit {
    /// A record as stored: reachable, its repository left to the key.
    pub fn from_record(r: &CommitRecord) -> StoredCommit {
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
        self.clone().into_record(repo)
    }

    /// The full record, moving this commit's fields into it (queries and
    /// export drop the stored form right after).
    pub fn into_record(self, repo: &RepoState) -> CommitRecord {
        CommitRecord {
            workspace: repo.workspace.clone(),
            repo: repo.slug.clone(),
            repo_uuid: repo.uuid.clone(),
            branch: self.branch,
            hash: self.hash,
            date: self.date,
            author: self.author,
            committer: self.committer,
            message: self.message,
            parents: self.parents,
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

/// The file beside sled's that names the store: a random id written when
/// the store is created (or first opened by `sync`/`run` of a bbcrawl that
/// knows it). It is readable while the store is locked, so the CLI can
/// check that the daemon it asks holds *this* store.
pub const ID_FILE: &str = "store-id";

/// The embedded store.
pub struct Store {
    /// sled; `None` while dropping (see [`Store::settle`]) and after a
    /// reopen failed (see [`Store::reopen`]).
    slot: std::sync::RwLock<Option<sled::Db>>,
    path: PathBuf,
    /// The next repository id to give (persisted with the batch using it).
    next_id: Mutex<u32>,
    /// The store's id ([`ID_FILE`]), when it has one.
    id: Option<String>,
    /// The writer's per-repository hash indexes (see `write`).
    writer: Mutex<write::WriterCache>,
    /// Recently decoded blocks (see `read`).
    blocks: Mutex<read::BlockCache>,
    /// Bumped whenever a stored block is rewritten, so a reader never
    /// caches a block it read before the rewrite.
    generation: AtomicU64,
    /// Whether this handle wrote anything (then dropping it settles sled's
    /// log, see [`Store::settle`]).
    wrote: AtomicBool,
    /// Every batch is applied under a read guard of this; a backup holds
    /// the write guard, so it copies the store between batches (never half
    /// a page).
    write_gate: std::sync::RwLock<()>,
    /// Set when sled fails an I/O (see [`Store::needs_reopen`]).
    io_failed: AtomicBool,
    /// The store's write sequence: the `mseq` of the last batch applied
    /// (see `manifest`). Held while a batch is applied, so the sequences
    /// reach sled in order.
    seq: Mutex<u64>,
    /// The sequence the manifest file records, when it was read or
    /// written by this handle.
    manifest_seq: Mutex<Option<u64>>,
    /// What the manifest check at open found wrong, for a store opened by
    /// `store check` or `store repair` (every other opening fails on it).
    manifest_problem: Option<String>,
    /// Whether values carry seals (schema 3, see `seal`); older stores are
    /// read as they are until migrated.
    sealed: bool,
    /// The next change-feed seq (see `feed`). Held while a batch with feed
    /// entries is built and applied.
    feed: Mutex<u64>,
    /// The last seq on disk (given before the last flush), which is as far
    /// as the feed is served: a change served before it is on disk could
    /// be lost to a crash and its seq given again to another change. Sent
    /// to the daemon's long polls.
    feed_tx: tokio::sync::watch::Sender<u64>,
}

/// How [`Store::open_with`] treats a directory without a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Create {
    /// Create the store in a missing or empty directory (`sync`, `run`).
    IfEmpty,
    /// Never (read commands).
    Never,
    /// Never, and open a store whose manifest disagrees with sled (`store
    /// check` reports it, `store repair` accepts what sled holds).
    Inspect,
}

/// Whether sled's files are in `dir` (its configuration and its log).
fn has_sled_files(dir: &Path) -> bool {
    dir.join("conf").is_file() && dir.join("db").is_file()
}

/// The store id recorded in `dir`, if any.
pub fn read_id(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(ID_FILE)).ok()?;
    let id = text.trim();
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_owned())
}

/// Writes a new random id into `dir`.
fn write_id(dir: &Path) -> std::io::Result<String> {
    use rand::Rng;
    let id = format!("{:032x}", rand::thread_rng().gen::<u128>());
    // Owner-only, like every file of the store.
    write_atomically(&dir.join(ID_FILE), format!("{id}\n").as_bytes(), 0o600)?;
    Ok(id)
}

/// The automatic `min_free_disk_mb`: twice the largest growth of the store
/// in one recent pass, at least this.
pub const MIN_FREE_DISK: u64 = 256 << 20;

/// The free-disk floor for a pass: the configured one, else twice
/// `largest_growth` (the most the store grew in one pass the caller has
/// seen), at least [`MIN_FREE_DISK`].
pub fn disk_floor(configured: Option<u64>, largest_growth: u64) -> u64 {
    configured.unwrap_or_else(|| MIN_FREE_DISK.max(largest_growth.saturating_mul(2)))
}

impl Store {
    /// Bytes free to this process on the store's filesystem.
    pub fn free_bytes(&self) -> Result<u64, StoreError> {
        fs2::available_space(&self.path).map_err(|e| StoreError::Io {
            path: self.path.clone(),
            message: format!("cannot read the free space of its filesystem: {e}"),
        })
    }

    /// The free bytes, or [`StoreError::LowDisk`] below `floor`.
    pub fn check_free(&self, floor: u64) -> Result<u64, StoreError> {
        let free = self.free_bytes()?;
        if free < floor {
            return Err(StoreError::LowDisk {
                path: self.path.clone(),
                free,
                floor,
            });
        }
        Ok(free)
    }
}

/// Creates the store directory `dir` owner-only (0700; its parents as the
/// umask says), or makes the empty directory it is so.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        }
        r => r,
    }
}

/// A new store's files owner-only: 0600 (directories in it 0700). Files
/// sled creates later (snapshots) are created under `sync`'s and `run`'s
/// umask of 077, and inside a 0700 directory in any case.
fn make_private(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let mode = if entry.file_type()?.is_dir() {
            0o700
        } else {
            0o600
        };
        std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// `sync` and `run` create every file owner-only (umask 077): the store's
/// (sled makes new snapshot files as it goes) and the daemon's address
/// file. They write nothing meant for others.
pub fn private_umask() {
    // SAFETY: umask only sets the process's file-creation mask.
    unsafe {
        libc::umask(0o077);
    }
}

/// Warns (like ssh about a key) when the store directory lets group or
/// others in: every commit message and author e-mail is readable there.
fn warn_if_shared(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(dir) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(
            store = %dir.display(),
            mode = format_args!("{mode:04o}"),
            "the store directory is open to group or others: every local user who can read it reads every commit message and author e-mail; make it owner-only with `chmod 700 {}`",
            dir.display()
        );
    }
}

/// Writes a small file beside the store's (its id, the daemon's address)
/// atomically: a temporary file in the same directory, synced, given
/// `mode`, then renamed over `path`, so a reader sees no file or a whole one.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".bbcrawl-")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens the store in `dir`, or creates it there if the directory is
    /// missing or empty (`sync`, `run`); a directory holding anything else
    /// is refused. Checks the schema version.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Store::open_with(dir, Create::IfEmpty, CACHE_BYTES)
    }

    /// Opens the existing store in `dir` for reading commands: a missing
    /// directory, or one without a bbcrawl store in it, is an error and is
    /// left as it was.
    pub fn open_existing(dir: &Path) -> Result<Store, StoreError> {
        Store::open_with(dir, Create::Never, CACHE_BYTES)
    }

    /// Opens the existing store in `dir` for `store check` and `store
    /// repair`: like [`Store::open_existing`], but a manifest that
    /// disagrees with sled is left to [`Store::manifest_problem`].
    pub fn open_to_inspect(dir: &Path) -> Result<Store, StoreError> {
        Store::open_with(dir, Create::Inspect, CACHE_BYTES)
    }

    /// Opens (or creates, as `create` says) the store in `dir` with a sled
    /// cache of `cache` bytes (`CACHE_BYTES` but for a migration's copy).
    fn open_with(dir: &Path, create: Create, cache: u64) -> Result<Store, StoreError> {
        crate::panic::note_store(dir);
        // What an interrupted schema migration left, first.
        migrate::resume(dir, None)?;
        let path = dir.to_path_buf();
        let not_a_store = |why: &str| StoreError::NotAStore {
            path: path.clone(),
            why: why.to_owned(),
        };
        let fresh = match std::fs::read_dir(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if create != Create::IfEmpty {
                    return Err(not_a_store(
                        "there is no such directory (run `bbcrawl sync` first, or pass --store)",
                    ));
                }
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
                return Err(not_a_store("it is not a directory"));
            }
            Err(e) => {
                return Err(StoreError::Io {
                    path,
                    message: e.to_string(),
                })
            }
            Ok(mut entries) => {
                if has_sled_files(dir) {
                    false
                } else if create != Create::IfEmpty {
                    return Err(not_a_store(
                        "it holds no store files (run `bbcrawl sync` first, or pass --store)",
                    ));
                } else if entries.next().is_some() {
                    return Err(not_a_store(
                        "the directory is not empty and holds no store; choose a new or empty directory for the store",
                    ));
                } else {
                    true
                }
            }
        };
        let io = |what: &str, e: std::io::Error| StoreError::Io {
            path: path.clone(),
            message: format!("{what}: {e}"),
        };
        if fresh {
            create_private_dir(dir).map_err(|e| io("cannot create the store directory", e))?;
        } else {
            warn_if_shared(dir);
        }
        let db = open_sled_with(dir, cache).map_err(|e| open_error(&path, e))?;
        if fresh {
            make_private(dir).map_err(|e| io("cannot make the store owner-only", e))?;
        }
        let mut store = Store {
            slot: std::sync::RwLock::new(Some(db)),
            path,
            next_id: Mutex::new(1),
            id: None,
            writer: Mutex::new(write::WriterCache::default()),
            blocks: Mutex::new(read::BlockCache::default()),
            generation: AtomicU64::new(0),
            wrote: AtomicBool::new(false),
            write_gate: std::sync::RwLock::new(()),
            io_failed: AtomicBool::new(false),
            seq: Mutex::new(0),
            manifest_seq: Mutex::new(None),
            manifest_problem: None,
            sealed: true,
            feed: Mutex::new(1),
            feed_tx: tokio::sync::watch::Sender::new(0),
        };
        match store
            .db()?
            .get(keys::META_SCHEMA)
            .map_err(|e| store.err(e))?
        {
            // An empty sled database is what a crash right after creation
            // leaves: still ours to initialise, but never a reader's.
            None if create != Create::IfEmpty || (!fresh && !store.db()?.is_empty()) => {
                return Err(StoreError::NotAStore {
                    path: store.path.clone(),
                    why: "it is a sled database without bbcrawl's schema".into(),
                })
            }
            None => {
                store
                    .db()?
                    .insert(keys::META_SCHEMA, &keys::SCHEMA_VERSION.to_be_bytes())
                    .map_err(|e| store.err(e))?;
                // The schema on disk before the store says it is one.
                store.db()?.flush().map_err(|e| store.err(e))?;
            }
            Some(v) => {
                // The one value without a seal: every bbcrawl, older ones
                // included, reads it as four bytes, and refuses a newer
                // schema by name.
                let found = <[u8; 4]>::try_from(v.as_ref())
                    .map(u32::from_be_bytes)
                    .map_err(|_| store.corrupt("schema version", "unreadable"))?;
                store.sealed = found >= 3;
                if found > keys::SCHEMA_VERSION {
                    return Err(StoreError::NewerSchema {
                        path: store.path.clone(),
                        found,
                        supported: keys::SCHEMA_VERSION,
                    });
                }
                if found == 2 {
                    migrate::seal_in_place(&store)?;
                    store.sealed = true;
                } else if found == 1 {
                    let lock = migrate::run(&store, found)?;
                    drop(store);
                    migrate::resume(dir, Some(lock))?;
                    return Store::open_with(dir, create, cache);
                }
            }
        }
        if let Some(v) = store.get(keys::META_NEXT_ID)? {
            let n = <[u8; 4]>::try_from(v.as_ref())
                .map(u32::from_be_bytes)
                .map_err(|_| store.corrupt("repository id counter", "unreadable"))?;
            store.next_id = Mutex::new(n);
        }
        // Schema 3 and older (and a schema-1 migration's copy) have no
        // feed yet: it is filled in from the blocks, and the store is
        // schema 4.
        let next = store.backfill_feed()?;
        store.feed = Mutex::new(next);
        store.feed_tx.send_replace(next - 1);
        store.check_manifest(create)?;
        store.id = match read_id(&store.path) {
            Some(id) => Some(id),
            // Only a writer names the store: it holds the lock, so no one
            // else writes the file at the same time.
            None if create == Create::IfEmpty => {
                Some(write_id(&store.path).map_err(|e| StoreError::Io {
                    path: store.path.clone(),
                    message: format!("cannot write {ID_FILE}: {e}"),
                })?)
            }
            None => None,
        };
        Ok(store)
    }

    /// sled (a handle: sled's are cheap clones of one database).
    fn db(&self) -> Result<sled::Db, StoreError> {
        match &*self.slot.read().unwrap_or_else(|e| e.into_inner()) {
            Some(db) => Ok(db.clone()),
            // Taken in `drop`, after which nothing calls this, or left
            // empty by a reopen that failed.
            None => Err(StoreError::Io {
                path: self.path.clone(),
                message: "the store is closed after a failed reopen; the next pass tries again"
                    .into(),
            }),
        }
    }

    /// Closes sled and opens it again. sled's I/O errors (a full disk) are
    /// sticky: every later write fails with the same error until the
    /// database is reopened. The daemon calls this before the pass after
    /// one that failed on the store. Readers wait meanwhile; what was not
    /// on disk when the error came is gone, as after a crash, which the
    /// page + cursor batches make safe: the next pass fetches it again.
    pub fn reopen(&self) -> Result<(), StoreError> {
        let mut slot = self.slot.write().unwrap_or_else(|e| e.into_inner());
        drop(slot.take());
        // A query still reading holds a handle for a moment.
        let db = open_sled_waiting(&self.path, std::time::Duration::from_secs(10))
            .map_err(|e| open_error(&self.path, e))?;
        *slot = Some(db);
        drop(slot);
        self.io_failed.store(false, Ordering::Relaxed);
        self.writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.blocks_rewritten();
        tracing::info!(store = %self.path.display(), "store reopened");
        Ok(())
    }

    /// Applies a batch with the next write sequence in it, remembering
    /// that this handle wrote.
    fn apply(&self, mut batch: Batch) -> Result<(), StoreError> {
        let _gate = self.write_gate.read().unwrap_or_else(|e| e.into_inner());
        self.wrote.store(true, Ordering::Relaxed);
        let mut seq = self.seq.lock().unwrap_or_else(|e| e.into_inner());
        batch.insert(keys::META_SEQ, (*seq + 1).to_be_bytes());
        self.db()?.apply_batch(batch.0).map_err(|e| self.err(e))?;
        *seq += 1;
        Ok(())
    }

    /// Applies `batch` with the feed entries `build` adds from the next
    /// seq; the feed moves on only if the batch lands.
    fn apply_with_feed(
        &self,
        mut batch: Batch,
        entries: Vec<feed::Entry>,
    ) -> Result<(), StoreError> {
        let mut guard = self.feed.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = *guard;
        for e in entries {
            feed::push(&mut batch, &mut next, e);
        }
        self.apply(batch)?;
        *guard = next;
        Ok(())
    }

    /// The feed entries for the repository events `repo` has that its
    /// stored record has not.
    fn repo_entries(&self, repo: &RepoState) -> Result<Vec<feed::Entry>, StoreError> {
        let old = self.repo(&repo.workspace, &repo.uuid)?;
        Ok(feed::new_repo_changes(old.as_ref(), repo)
            .into_iter()
            .map(|change| feed::Entry::Repo {
                repo: repo.id,
                change,
            })
            .collect())
    }

    /// Reads the write sequence and compares sled's view with the manifest
    /// (see `manifest`): a disagreement is damage, except for `store check`
    /// and `store repair`, which keep it in `manifest_problem`.
    fn check_manifest(&mut self, create: Create) -> Result<(), StoreError> {
        let seq = match self.get(keys::META_SEQ)? {
            None => 0,
            Some(v) => <[u8; 8]>::try_from(v.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| self.corrupt("write sequence", "unreadable"))?,
        };
        self.seq = Mutex::new(seq);
        let problem = match Manifest::read(&self.path) {
            Err(why) => Some(why),
            Ok(None) => None,
            Ok(Some(m)) => {
                let problem = m.disagreement(seq, &self.totals()?);
                if problem.is_none() {
                    self.manifest_seq = Mutex::new(Some(m.seq));
                }
                problem
            }
        };
        match problem {
            Some(message) if create != Create::Inspect => Err(StoreError::Corrupt {
                path: self.path.clone(),
                message,
            }),
            problem => {
                self.manifest_problem = problem;
                Ok(())
            }
        }
    }

    /// What the manifest check at open found wrong (only a store opened
    /// with [`Store::open_to_inspect`] opens with one).
    pub fn manifest_problem(&self) -> Option<&str> {
        self.manifest_problem.as_deref()
    }

    /// The manifest of the store as it is now (the sequence held, so no
    /// batch lands between reading it and the totals).
    fn manifest_now(&self) -> Result<Manifest, StoreError> {
        let seq = self.seq.lock().unwrap_or_else(|e| e.into_inner());
        Ok(Manifest::new(*seq, &self.totals()?))
    }

    /// Writes `m` as the store's manifest unless it records that already.
    /// Only after a flush that put everything up to `m.seq` on disk.
    ///
    /// A manifest that cannot be written (a full disk) is not an error: what
    /// sled flushed is on disk all the same, and a manifest behind sled is
    /// what a crash leaves anyway; the next flush writes it.
    fn write_manifest(&self, m: &Manifest) -> Result<(), StoreError> {
        let mut written = self.manifest_seq.lock().unwrap_or_else(|e| e.into_inner());
        if *written == Some(m.seq) {
            return Ok(());
        }
        match m.write(&self.path) {
            Ok(()) => *written = Some(m.seq),
            Err(e) => tracing::warn!(
                store = %self.path.display(),
                error = %e,
                "cannot write {} (it stays behind the database until a flush can write it)",
                manifest::FILE
            ),
        }
        Ok(())
    }

    /// Settles sled's log. sled replays everything written since a
    /// database was last *opened* when it is next opened (that is when it
    /// writes its snapshot), so the first query after a big crawl would pay
    /// for the crawl. A handle that wrote therefore closes sled and opens it
    /// once more before it goes away: the writer pays, not the next reader.
    /// Called by `drop`; best effort (another process may take the lock in
    /// between, and then that one settles it).
    fn settle(&mut self) {
        let manifest = match self.wrote.load(Ordering::Relaxed) {
            true => self.manifest_now().ok(),
            false => None,
        };
        let Some(db) = self
            .slot
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        let Some(m) = manifest else {
            return;
        };
        if db.flush().is_err() || self.write_manifest(&m).is_err() {
            return;
        }
        drop(db);
        let started = std::time::Instant::now();
        if open_sled_waiting(&self.path, std::time::Duration::from_secs(1)).is_ok() {
            tracing::debug!(store = %self.path.display(), elapsed = ?started.elapsed(), "store log settled");
        }
    }

    /// Closes the store for a process that exits right after. A handle
    /// that wrote is closed as on drop (flushed, manifest, settled). A
    /// handle that only read is flushed and then left for the exit to
    /// reclaim: tearing sled down frees every node of its page table one
    /// by one and syncs its file, which at 10M commits (55k nodes) took
    /// ~5 ms of a 40 ms query, growing with the store, for memory the exit
    /// gives back anyway. sled's file lock goes with the process.
    pub fn close_at_exit(mut self) {
        if self.wrote.load(Ordering::Relaxed) {
            return;
        }
        let db = self
            .slot
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(db) = db {
            if db.flush().is_ok() {
                std::mem::forget(db);
            }
        }
    }

    /// The store's id (see [`ID_FILE`]), when it has one.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// The store directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: sled::Error) -> StoreError {
        if matches!(e, sled::Error::Io(_)) {
            self.io_failed.store(true, Ordering::Relaxed);
        }
        sled_error(&self.path, e)
    }

    /// Whether sled failed an I/O (a full disk) since the store was opened
    /// or reopened: its error is sticky, so [`Store::reopen`] is due before
    /// the next write.
    pub fn needs_reopen(&self) -> bool {
        self.io_failed.load(Ordering::Relaxed)
    }

    /// A value as written: its seal checked and cut off (schema 3), or as
    /// it is (older stores, read only to migrate them).
    fn unseal(&self, key: &[u8], v: sled::IVec) -> Result<sled::IVec, StoreError> {
        if !self.sealed {
            return Ok(v);
        }
        match seal::payload_len(key, &v) {
            Some(n) => Ok(v.subslice(0, n)),
            None => Err(self.corrupt(&keys::describe(key), "it fails its checksum")),
        }
    }

    /// The value under `key`, its seal checked.
    fn get(&self, key: &[u8]) -> Result<Option<sled::IVec>, StoreError> {
        match self.db()?.get(key).map_err(|e| self.err(e))? {
            None => Ok(None),
            Some(v) => self.unseal(key, v).map(Some),
        }
    }

    /// Every (key, value) under `prefix`, in key order, seals checked.
    fn scan(
        &self,
        prefix: impl AsRef<[u8]>,
    ) -> Result<impl Iterator<Item = Result<(sled::IVec, sled::IVec), StoreError>> + '_, StoreError>
    {
        Ok(self.db()?.scan_prefix(prefix).map(move |kv| {
            let (k, v) = kv.map_err(|e| self.err(e))?;
            let v = self.unseal(&k, v)?;
            Ok((k, v))
        }))
    }

    fn corrupt(&self, what: &str, e: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            message: format!("{what}: {e}"),
        }
    }

    fn json<T: Serialize>(&self, v: &T) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec(v).map_err(|e| self.corrupt("cannot encode", e))
    }

    /// Reads and decodes a JSON record (repositories, authors, meta).
    fn get_json<T: for<'de> Deserialize<'de>>(
        &self,
        key: &[u8],
        what: &str,
    ) -> Result<Option<T>, StoreError> {
        match self.get(key)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| self.corrupt(what, e)),
        }
    }

    /// Decodes every JSON record under a one-byte prefix, in key order.
    fn scan_json<T: for<'de> Deserialize<'de>>(
        &self,
        prefix: u8,
        what: &str,
    ) -> Result<Vec<T>, StoreError> {
        self.scan([prefix])?
            .map(|kv| {
                let (_, v) = kv?;
                serde_json::from_slice(&v).map_err(|e| self.corrupt(what, e))
            })
            .collect()
    }

    /// A repository's record.
    pub fn repo(&self, workspace: &str, uuid: &str) -> Result<Option<RepoState>, StoreError> {
        self.get_json(&keys::repo(workspace, uuid), "repository record")
    }

    /// Every repository record, ordered by workspace then uuid.
    pub fn repos(&self) -> Result<Vec<RepoState>, StoreError> {
        self.scan_json(keys::REPO, "repository record")
    }

    /// Every repository record by id.
    pub fn repos_by_id(&self) -> Result<HashMap<u32, RepoState>, StoreError> {
        Ok(self.repos()?.into_iter().map(|r| (r.id, r)).collect())
    }

    /// Gives `repo` an id if it has none (reusing the stored one), adding
    /// the counter update to `batch`.
    fn assign_id(&self, repo: &mut RepoState, batch: &mut Batch) -> Result<(), StoreError> {
        if repo.id != 0 {
            return Ok(());
        }
        if let Some(existing) = self.repo(&repo.workspace, &repo.uuid)? {
            if existing.id != 0 {
                repo.id = existing.id;
                return Ok(());
            }
        }
        let mut next = self.next_id.lock().unwrap_or_else(|e| e.into_inner());
        repo.id = *next;
        *next += 1;
        batch.insert(keys::META_NEXT_ID, next.to_be_bytes());
        Ok(())
    }

    /// Saves a repository record on its own (listing changes, status);
    /// returns it with its id.
    pub fn put_repo(&self, repo: &RepoState) -> Result<RepoState, StoreError> {
        let mut repo = repo.clone();
        let mut batch = Batch::default();
        self.assign_id(&mut repo, &mut batch)?;
        // The commit counts are the store's: kept in the batches that store
        // and mark commits, never taken from a caller whose copy may be
        // older (a page stored, then its flush failed: the crawler saw an
        // error and still holds the count from before).
        let stored = self.repo(&repo.workspace, &repo.uuid)?;
        if let Some(s) = &stored {
            repo.commits_stored = s.commits_stored;
            repo.commits_unreachable = s.commits_unreachable;
        }
        let entries = feed::new_repo_changes(stored.as_ref(), &repo)
            .into_iter()
            .map(|change| feed::Entry::Repo {
                repo: repo.id,
                change,
            })
            .collect();
        batch.insert(keys::repo(&repo.workspace, &repo.uuid), self.json(&repo)?);
        self.apply_with_feed(batch, entries)?;
        Ok(repo)
    }

    /// Writes everything to disk; returns the bytes flushed. Blocking: call
    /// it from the writer's own thread.
    /// The manifest follows (see `manifest`).
    pub fn flush(&self) -> Result<usize, StoreError> {
        let m = self.manifest_now()?;
        let feed_head = self.feed_head();
        let n = self.db()?.flush().map_err(|e| self.err(e))?;
        self.feed_tx.send_if_modified(|durable| {
            let moved = feed_head > *durable;
            *durable = (*durable).max(feed_head);
            moved
        });
        self.write_manifest(&m)?;
        Ok(n)
    }

    /// Bytes the store occupies on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.db()?.size_on_disk().map_err(|e| self.err(e))
    }

    /// Saves a small JSON document under a meta name (e.g. the last pass).
    pub fn put_meta<T: Serialize>(&self, key: &[u8], value: &T) -> Result<(), StoreError> {
        let mut batch = Batch::default();
        batch.insert(key, self.json(value)?);
        self.apply(batch)
    }

    /// Reads a meta document.
    pub fn meta<T: for<'de> Deserialize<'de>>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        self.get_json(key, "meta record")
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.settle();
    }
}

/// sled's configuration for the store in `dir`: what every open uses.
/// Public for tests and tools that look at sled's keys directly (no
/// schema check, no migration).
pub fn sled_config(dir: &Path) -> sled::Config {
    sled::Config::new()
        .path(dir)
        .cache_capacity(CACHE_BYTES)
        // The writer flushes on its own cadence and before reporting a
        // pass done; no background flusher racing it.
        .flush_every_ms(None)
}

/// Opens sled in `dir` with the store's settings.
fn open_sled(dir: &Path) -> sled::Result<sled::Db> {
    open_sled_with(dir, CACHE_BYTES)
}

/// Opens sled in `dir` with the store's settings but a cache of `cache`
/// bytes.
fn open_sled_with(dir: &Path, cache: u64) -> sled::Result<sled::Db> {
    sled_config(dir).cache_capacity(cache).open()
}

fn sled_error(path: &Path, e: sled::Error) -> StoreError {
    match e {
        // sled prints its internal pointer and an empty backtrace here
        // ("at file offset Some(Inline(2389340)) backtrace ()").
        sled::Error::Corruption { at, .. } => StoreError::Corrupt {
            path: path.to_path_buf(),
            message: match at {
                Some(at) => format!("sled read corrupted data at file offset {}", at.lid()),
                None => "sled found corrupted data".to_owned(),
            },
        },
        // sled's only reason for a configuration file it cannot read as
        // text is an old format; in a store bbcrawl wrote, it is damage.
        sled::Error::Unsupported(m) if m.contains("earlier than 0.29") => StoreError::Corrupt {
            path: path.to_path_buf(),
            message: "sled's configuration file (conf) is unreadable".to_owned(),
        },
        sled::Error::Unsupported(_) | sled::Error::ReportableBug(_) => StoreError::Corrupt {
            path: path.to_path_buf(),
            message: e.to_string(),
        },
        // sled's own text is the error's Debug form ("IO error: Os { code:
        // 28, kind: StorageFull, … }").
        sled::Error::Io(io) if io.kind() == std::io::ErrorKind::StorageFull => StoreError::Io {
            path: path.to_path_buf(),
            message: "the disk is full (no space left on device); once there is space again, the next pass (or sync) carries on".into(),
        },
        sled::Error::Io(io) => StoreError::Io {
            path: path.to_path_buf(),
            message: io.to_string(),
        },
        other => StoreError::Io {
            path: path.to_path_buf(),
            message: other.to_string(),
        },
    }
}

/// Whether opening failed because another handle holds sled's file lock.
fn lock_busy(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io)
        if io.kind() == std::io::ErrorKind::WouldBlock
            || io.to_string().contains("could not acquire lock"))
}

/// Opens sled, waiting up to `limit` while another handle of this process
/// still holds its file lock (sled lets go a few milliseconds after the
/// last handle is dropped).
fn open_sled_waiting(dir: &Path, limit: std::time::Duration) -> sled::Result<sled::Db> {
    let started = std::time::Instant::now();
    loop {
        match open_sled(dir) {
            Err(e) if lock_busy(&e) && started.elapsed() < limit => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            r => return r,
        }
    }
}

fn open_error(path: &Path, e: sled::Error) -> StoreError {
    if lock_busy(&e) {
        return StoreError::Locked {
            path: path.to_path_buf(),
        };
    }
    if let sled::Error::Io(io) = &e {
        // sled opens its files for writing, even to read (it writes a
        // snapshot on open): say so, and what to do.
        let copy = "copy the directory somewhere writable (`cp -a`) and pass that with --store";
        let why = match io.kind() {
            std::io::ErrorKind::ReadOnlyFilesystem => {
                Some(("it is on a read-only filesystem", copy.to_owned()))
            }
            std::io::ErrorKind::PermissionDenied => Some((
                "this user may not write its files",
                format!("run bbcrawl as the store's owner, or {copy}"),
            )),
            _ => None,
        };
        if let Some((why, what)) = why {
            return StoreError::Io {
                path: path.to_path_buf(),
                message: format!(
                    "{why} ({io}), and sled (the store's database) opens a store for writing even to read it: {what}"
                ),
            };
        }
    }
    sled_error(path, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sled_damage_reads_in_plain_words() {
        let path = Path::new("/var/lib/bbcrawl");
        let e = sled_error(
            path,
            sled::Error::Corruption {
                at: Some(sled::DiskPtr::Inline(2_389_340)),
                bt: (),
            },
        );
        let text = e.to_string();
        assert!(
            text.contains("sled read corrupted data at file offset 2389340; `bbcrawl store check`"),
            "{text}"
        );
        assert!(
            !text.contains("Inline") && !text.contains("backtrace"),
            "{text}"
        );
        let e = sled_error(path, sled::Error::Corruption { at: None, bt: () });
        assert!(e.to_string().contains("sled found corrupted data; "), "{e}");
    }
}
