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

pub mod codec;
pub mod keys;

use std::collections::{HashMap, HashSet};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, FixedOffset, Utc};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::record::{Author, AuthorRecord, CommitRecord, Committer, RepoState};
use keys::{flag, hash_hex, parse_hash};
pub use keys::{Hash, IndexEntry};

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
    #[error("the store at {path} is damaged or not a bbcrawl store: {message}")]
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
    db: sled::Db,
    path: PathBuf,
    /// The next repository id to give (persisted with the batch using it).
    next_id: Mutex<u32>,
    /// The store's id ([`ID_FILE`]), when it has one.
    id: Option<String>,
}

/// How [`Store::open_with`] treats a directory without a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Create {
    /// Create the store in a missing or empty directory (`sync`, `run`).
    IfEmpty,
    /// Never (read commands).
    Never,
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
    // Not a secret: the CLI of any user who may read the store reads it.
    write_atomically(&dir.join(ID_FILE), format!("{id}\n").as_bytes(), 0o644)?;
    Ok(id)
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

/// A boxed iterator over index entries.
pub type Entries<'a> = Box<dyn Iterator<Item = Result<IndexEntry, StoreError>> + 'a>;

/// The exclusive upper bound of all keys starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    vec![u8::MAX; prefix.len() + 1]
}

impl Store {
    /// Opens the store in `dir`, or creates it there if the directory is
    /// missing or empty (`sync`, `run`); a directory holding anything else
    /// is refused. Checks the schema version.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Store::open_with(dir, Create::IfEmpty)
    }

    /// Opens the existing store in `dir` for reading commands: a missing
    /// directory, or one without a bbcrawl store in it, is an error and is
    /// left as it was.
    pub fn open_existing(dir: &Path) -> Result<Store, StoreError> {
        Store::open_with(dir, Create::Never)
    }

    fn open_with(dir: &Path, create: Create) -> Result<Store, StoreError> {
        let path = dir.to_path_buf();
        let not_a_store = |why: &str| StoreError::NotAStore {
            path: path.clone(),
            why: why.to_owned(),
        };
        let fresh = match std::fs::read_dir(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if create == Create::Never {
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
                } else if create == Create::Never {
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
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(CACHE_BYTES)
            // The writer flushes on its own cadence and before reporting a
            // pass done; no background flusher racing it.
            .flush_every_ms(None)
            .open()
            .map_err(|e| open_error(&path, e))?;
        let mut store = Store {
            db,
            path,
            next_id: Mutex::new(1),
            id: None,
        };
        match store.db.get(keys::META_SCHEMA).map_err(|e| store.err(e))? {
            // An empty sled database is what a crash right after creation
            // leaves: still ours to initialise, but never a reader's.
            None if create == Create::Never || (!fresh && !store.db.is_empty()) => {
                return Err(StoreError::NotAStore {
                    path: store.path.clone(),
                    why: "it is a sled database without bbcrawl's schema".into(),
                })
            }
            None => {
                store
                    .db
                    .insert(keys::META_SCHEMA, &keys::SCHEMA_VERSION.to_be_bytes())
                    .map_err(|e| store.err(e))?;
                // The schema on disk before the store says it is one.
                store.db.flush().map_err(|e| store.err(e))?;
            }
            Some(v) => {
                let found = <[u8; 4]>::try_from(v.as_ref())
                    .map(u32::from_be_bytes)
                    .map_err(|_| store.corrupt("schema version", "unreadable"))?;
                if found > keys::SCHEMA_VERSION {
                    return Err(StoreError::NewerSchema {
                        path: store.path.clone(),
                        found,
                        supported: keys::SCHEMA_VERSION,
                    });
                }
            }
        }
        if let Some(v) = store.db.get(keys::META_NEXT_ID).map_err(|e| store.err(e))? {
            let n = <[u8; 4]>::try_from(v.as_ref())
                .map(u32::from_be_bytes)
                .map_err(|_| store.corrupt("repository id counter", "unreadable"))?;
            store.next_id = Mutex::new(n);
        }
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

    /// The store's id (see [`ID_FILE`]), when it has one.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// The store directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: sled::Error) -> StoreError {
        sled_error(&self.path, e)
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

    fn encode_commit(&self, c: &StoredCommit) -> Result<Vec<u8>, StoreError> {
        codec::encode(c).map_err(|e| StoreError::Invalid {
            what: format!("commit {}", c.hash),
            message: e.to_string(),
        })
    }

    /// Reads and decodes a JSON record (repositories, authors, meta).
    fn get_json<T: for<'de> Deserialize<'de>>(
        &self,
        key: &[u8],
        what: &str,
    ) -> Result<Option<T>, StoreError> {
        match self.db.get(key).map_err(|e| self.err(e))? {
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
        self.db
            .scan_prefix([prefix])
            .map(|kv| {
                let (_, v) = kv.map_err(|e| self.err(e))?;
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
    fn assign_id(&self, repo: &mut RepoState, batch: &mut sled::Batch) -> Result<(), StoreError> {
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
        batch.insert(keys::META_NEXT_ID, &next.to_be_bytes());
        Ok(())
    }

    /// Saves a repository record on its own (listing changes, status);
    /// returns it with its id.
    pub fn put_repo(&self, repo: &RepoState) -> Result<RepoState, StoreError> {
        let mut repo = repo.clone();
        let mut batch = sled::Batch::default();
        self.assign_id(&mut repo, &mut batch)?;
        batch.insert(keys::repo(&repo.workspace, &repo.uuid), self.json(&repo)?);
        self.db.apply_batch(batch).map_err(|e| self.err(e))?;
        Ok(repo)
    }

    /// A stored commit by repository id and hash.
    pub fn commit_by_id(&self, repo: u32, hash: &Hash) -> Result<Option<StoredCommit>, StoreError> {
        match self
            .db
            .get(keys::commit(repo, hash))
            .map_err(|e| self.err(e))?
        {
            None => Ok(None),
            Some(v) => codec::decode(hash, &v)
                .map(Some)
                .map_err(|e| self.corrupt("commit record", e)),
        }
    }

    /// A stored commit.
    pub fn commit(
        &self,
        workspace: &str,
        uuid: &str,
        hash: &str,
    ) -> Result<Option<StoredCommit>, StoreError> {
        let (Some(repo), Some(hash)) = (self.repo(workspace, uuid)?, parse_hash(hash)) else {
            return Ok(None);
        };
        self.commit_by_id(repo.id, &hash)
    }

    /// Every stored commit of a repository, in hash order.
    pub fn repo_commits<'a>(
        &'a self,
        workspace: &str,
        uuid: &str,
    ) -> Box<dyn Iterator<Item = Result<StoredCommit, StoreError>> + 'a> {
        match self.repo(workspace, uuid) {
            Ok(Some(repo)) => self.commits_of(repo.id),
            Ok(None) => Box::new(std::iter::empty()),
            Err(e) => Box::new(std::iter::once(Err(e))),
        }
    }

    /// Every stored commit of a repository id, in hash order.
    pub fn commits_of<'a>(
        &'a self,
        id: u32,
    ) -> Box<dyn Iterator<Item = Result<StoredCommit, StoreError>> + 'a> {
        let prefix = keys::commit_prefix(id);
        let skip = prefix.len();
        Box::new(self.db.scan_prefix(prefix).map(move |kv| {
            let (k, v) = kv.map_err(|e| self.err(e))?;
            codec::decode(&k[skip..], &v).map_err(|e| self.corrupt("commit record", e))
        }))
    }

    fn author_record(&self, identity: &str) -> Result<Option<AuthorRecord>, StoreError> {
        self.get_json(&keys::author(identity), "author record")
    }

    /// Every author record.
    pub fn authors(&self) -> Result<Vec<AuthorRecord>, StoreError> {
        self.scan_json(keys::AUTHOR, "author record")
    }

    /// Writes one page of commits, their index entries, their authors and
    /// the repository record (with its saved position) in one atomic batch.
    /// Commits already stored are not written again (a re-walk is
    /// idempotent), except to mark them reachable again.
    pub fn apply_page(
        &self,
        repo: &RepoState,
        commits: &[CommitRecord],
    ) -> Result<PageOutcome, StoreError> {
        let mut batch = sled::Batch::default();
        let mut repo = repo.clone();
        self.assign_id(&mut repo, &mut batch)?;
        let id = repo.id;
        let mut seen = HashSet::with_capacity(commits.len());
        let mut authors: HashMap<String, (AuthorRecord, bool)> = HashMap::new();
        let mut new_commits = 0u64;
        let mut revived = 0u64;
        for c in commits {
            let hash = parse_hash(&c.hash).ok_or_else(|| StoreError::Invalid {
                what: format!("commit {:?}", c.hash),
                message: "the hash is not 40 hex digits".into(),
            })?;
            if !seen.insert(hash) {
                continue;
            }
            let key = keys::commit(id, &hash);
            let identity = c.author.identity();
            let at = c.date.with_timezone(&Utc);
            match self.db.get(&key).map_err(|e| self.err(e))? {
                Some(v) => {
                    let mut stored =
                        codec::decode(&hash, &v).map_err(|e| self.corrupt("commit record", e))?;
                    if !stored.reachable {
                        stored.reachable = true;
                        stored.unreachable_since = None;
                        revived += 1;
                        batch.insert(key, self.encode_commit(&stored)?);
                        self.set_flags(&mut batch, id, &stored, &hash, true);
                    }
                }
                None => {
                    new_commits += 1;
                    batch.insert(key, self.encode_commit(&StoredCommit::from_record(c))?);
                    batch.insert(keys::by_repo(id, at, &hash), &flag(true));
                    batch.insert(keys::by_author(&identity, at, &hash, id), &flag(true));
                    let entry = match authors.remove(&identity) {
                        Some(e) => e,
                        None => match self.author_record(&identity)? {
                            Some(a) => (a, false),
                            None => (
                                AuthorRecord {
                                    identity: identity.clone(),
                                    ..AuthorRecord::default()
                                },
                                true,
                            ),
                        },
                    };
                    let (mut record, mut dirty) = entry;
                    dirty |= record.absorb(&c.author);
                    authors.insert(identity, (record, dirty));
                }
            }
        }
        for (identity, (record, dirty)) in &authors {
            if *dirty {
                batch.insert(keys::author(identity), self.json(record)?);
            }
        }
        repo.commits_stored += new_commits;
        repo.commits_unreachable = repo.commits_unreachable.saturating_sub(revived);
        batch.insert(keys::repo(&repo.workspace, &repo.uuid), self.json(&repo)?);
        self.db.apply_batch(batch).map_err(|e| self.err(e))?;
        Ok(PageOutcome { new_commits, repo })
    }

    /// Sets the reachable flag of a commit's three date indexes.
    fn set_flags(
        &self,
        batch: &mut sled::Batch,
        id: u32,
        c: &StoredCommit,
        hash: &Hash,
        reachable: bool,
    ) {
        let at = c.date.with_timezone(&Utc);
        batch.insert(keys::by_repo(id, at, hash), &flag(reachable));
        batch.insert(
            keys::by_author(&c.author.identity(), at, hash, id),
            &flag(reachable),
        );
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
        let mut batch = sled::Batch::default();
        self.assign_id(&mut repo, &mut batch)?;
        let mut all: HashMap<String, StoredCommit> = HashMap::new();
        for c in self.commits_of(repo.id) {
            let c = c?;
            all.insert(c.hash.clone(), c);
        }
        let mut reached: HashSet<&str> = HashSet::new();
        let mut stack: Vec<&str> = vec![head];
        while let Some(h) = stack.pop() {
            let Some(c) = all.get(h) else { continue };
            if reached.insert(c.hash.as_str()) {
                stack.extend(c.parents.iter().map(String::as_str));
            }
        }
        let mut orphaned = 0u64;
        let mut unreachable = 0u64;
        for c in all.values() {
            let now_reachable = reached.contains(c.hash.as_str());
            if !now_reachable {
                unreachable += 1;
            }
            if now_reachable != c.reachable {
                let Some(hash) = parse_hash(&c.hash) else {
                    continue;
                };
                let mut c = c.clone();
                c.reachable = now_reachable;
                c.unreachable_since = if now_reachable { None } else { Some(at) };
                if !now_reachable {
                    orphaned += 1;
                }
                batch.insert(keys::commit(repo.id, &hash), self.encode_commit(&c)?);
                self.set_flags(&mut batch, repo.id, &c, &hash, now_reachable);
            }
        }
        repo.commits_unreachable = unreachable;
        batch.insert(keys::repo(&repo.workspace, &repo.uuid), self.json(&repo)?);
        self.db.apply_batch(batch).map_err(|e| self.err(e))?;
        Ok((repo, orphaned))
    }

    fn range<'a>(
        &'a self,
        prefix: Vec<u8>,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
        parse: impl Fn(&[u8], &[u8]) -> Option<IndexEntry> + 'a,
    ) -> Entries<'a> {
        let start = match since {
            Some(t) => [prefix.as_slice(), &keys::date8(t)].concat(),
            None => prefix.clone(),
        };
        let end = match until {
            Some(t) => [prefix.as_slice(), &keys::date8(t)].concat(),
            None => prefix_end(&prefix),
        };
        if start >= end {
            return Box::new(std::iter::empty());
        }
        Box::new(
            self.db
                .range::<Vec<u8>, _>((Bound::Included(start), Bound::Excluded(end)))
                .rev()
                .map(move |kv| {
                    let (k, v) = kv.map_err(|e| self.err(e))?;
                    parse(&k, &v).ok_or_else(|| self.corrupt("index entry", hash_hex(&k)))
                }),
        )
    }

    /// One repository's commits, newest first, within `[since, until)`.
    pub fn scan_repo(
        &self,
        id: u32,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
    ) -> Entries<'_> {
        self.range(keys::by_repo_prefix(id), since, until, keys::parse_by_repo)
    }

    /// One author identity's commits, newest first, within `[since, until)`.
    pub fn scan_author(
        &self,
        identity: &str,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
    ) -> Entries<'_> {
        let prefix = keys::by_author_prefix(identity);
        let len = prefix.len();
        self.range(prefix, since, until, move |k, v| {
            keys::parse_by_author(k, len, v)
        })
    }

    /// Every (identity, commit) pair of the author index, in key order.
    pub fn scan_author_index(
        &self,
    ) -> impl Iterator<Item = Result<(String, IndexEntry), StoreError>> + '_ {
        self.db.scan_prefix([keys::BY_AUTHOR]).map(move |kv| {
            let (k, v) = kv.map_err(|e| self.err(e))?;
            keys::split_by_author(&k, &v)
                .ok_or_else(|| self.corrupt("author index entry", hash_hex(&k)))
        })
    }

    /// Commits whose hash starts with `prefix` (hex), across repositories:
    /// (hash, repository id) pairs. One short range scan per repository.
    pub fn find_hash_prefix(&self, prefix: &str) -> Result<Vec<(Hash, u32)>, StoreError> {
        // The hashes it can name: from the prefix padded with 0s to it
        // padded with fs (nothing when it is not hex, or too long).
        let (Some(lo), Some(hi)) = (
            keys::parse_hash(&format!("{prefix:0<40}")),
            keys::parse_hash(&format!("{prefix:f<40}")),
        ) else {
            return Ok(vec![]);
        };
        let mut out = Vec::new();
        for repo in self.repos()? {
            let skip = keys::commit_prefix(repo.id).len();
            for kv in self
                .db
                .range(keys::commit(repo.id, &lo)..=keys::commit(repo.id, &hi))
            {
                let (k, _) = kv.map_err(|e| self.err(e))?;
                if let Ok(hash) = Hash::try_from(&k[skip..]) {
                    out.push((hash, repo.id));
                }
            }
        }
        Ok(out)
    }

    /// Writes everything to disk; returns the bytes flushed. Blocking: call
    /// it from the writer's own thread.
    pub fn flush(&self) -> Result<usize, StoreError> {
        self.db.flush().map_err(|e| self.err(e))
    }

    /// Bytes the store occupies on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.db.size_on_disk().map_err(|e| self.err(e))
    }

    /// Saves a small JSON document under a meta name (e.g. the last pass).
    pub fn put_meta<T: Serialize>(&self, key: &[u8], value: &T) -> Result<(), StoreError> {
        self.db
            .insert(key, self.json(value)?)
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Reads a meta document.
    pub fn meta<T: for<'de> Deserialize<'de>>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        self.get_json(key, "meta record")
    }
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
        other => StoreError::Io {
            path: path.to_path_buf(),
            message: other.to_string(),
        },
    }
}

fn open_error(path: &Path, e: sled::Error) -> StoreError {
    if let sled::Error::Io(io) = &e {
        let text = io.to_string();
        if io.kind() == std::io::ErrorKind::WouldBlock || text.contains("could not acquire lock") {
            return StoreError::Locked {
                path: path.to_path_buf(),
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
            text.ends_with("sled read corrupted data at file offset 2389340"),
            "{text}"
        );
        assert!(
            !text.contains("Inline") && !text.contains("backtrace"),
            "{text}"
        );
        let e = sled_error(path, sled::Error::Corruption { at: None, bt: () });
        assert!(e.to_string().ends_with("sled found corrupted data"), "{e}");
    }
}
