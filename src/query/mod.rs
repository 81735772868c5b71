//! Questions about the stored commits: the logic behind `query`, `show` and
//! `export`, shared by the CLI and the daemon's query API. It reads the
//! store's indexes so that filtered queries decode only the commits they
//! return (plus, for `--author` and `--grep`, the candidates they check).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};

mod answer;
pub mod output;
pub mod parquet;
mod request;

pub use answer::{answer, table_from_json};
pub use request::{BadRequest, CommitFilter, Format, Params, Question, Request, API_PREFIX};

use chrono::{DateTime, FixedOffset, Utc};
use serde::{Deserialize, Serialize};

use crate::record::{CommitRecord, RepoTotals};
use crate::record::{RepoEvent, RepoState, RepoStatus};
use crate::store::{keys, Entries, IndexEntry, Store, StoreError, StoredCommit};

/// Why a query could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `show` was given something that is not 7 to 40 hex digits.
    #[error("{0:?} is not a commit hash: give 7 to 40 hex digits")]
    BadHash(String),
    /// No stored commit has this hash or prefix.
    #[error("no stored commit matches {0}")]
    UnknownHash(String),
    /// A prefix matches several different commits.
    #[error("{prefix} is ambiguous: it matches {}", .matches.join(", "))]
    AmbiguousHash {
        /// The prefix given.
        prefix: String,
        /// The full hashes it matches.
        matches: Vec<String>,
    },
}

impl QueryError {
    /// The exit code: 2 for an argument that is not a hash, the store's for
    /// a store error, else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            QueryError::BadHash(_) => crate::exit::USAGE,
            QueryError::Store(e) => e.exit_code(),
            QueryError::UnknownHash(_) | QueryError::AmbiguousHash { .. } => crate::exit::RUNTIME,
        }
    }
}

/// Print order of an index entry (see [`IndexEntry::order_key`]).
type OrderKey = (Reverse<DateTime<Utc>>, keys::Hash, u32);

/// Merges streams that are each newest first into one newest-first stream
/// (ties: hash, then repository id).
struct Merge<'a> {
    streams: Vec<Entries<'a>>,
    /// Smallest print-order key first: (key, stream index).
    heap: BinaryHeap<Reverse<(OrderKey, usize)>>,
    heads: Vec<Option<(IndexEntry, StoredCommit)>>,
    error: Option<StoreError>,
}

impl<'a> Merge<'a> {
    fn new(streams: Vec<Entries<'a>>) -> Merge<'a> {
        let mut m = Merge {
            heads: vec![None; streams.len()],
            streams,
            heap: BinaryHeap::new(),
            error: None,
        };
        for i in 0..m.streams.len() {
            m.pull(i);
        }
        m
    }

    fn pull(&mut self, i: usize) {
        match self.streams[i].next() {
            Some(Ok(e)) => {
                self.heap.push(Reverse((e.0.order_key(), i)));
                self.heads[i] = Some(e);
            }
            Some(Err(e)) => {
                self.error.get_or_insert(e);
            }
            None => self.heads[i] = None,
        }
    }
}

impl Iterator for Merge<'_> {
    type Item = Result<(IndexEntry, StoredCommit), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.error.take() {
            return Some(Err(e));
        }
        let Reverse((_, i)) = self.heap.pop()?;
        let entry = self.heads[i].take()?;
        self.pull(i);
        Some(Ok(entry))
    }
}

/// The repositories a filter selects, by id.
fn selected_repos(repos: &HashMap<u32, RepoState>, f: &CommitFilter) -> HashSet<u32> {
    repos
        .values()
        .filter(|r| f.workspace.as_ref().is_none_or(|w| &r.workspace == w))
        .filter(|r| f.repos.is_empty() || f.repos.iter().any(|s| s == &r.slug))
        .map(|r| r.id)
        .collect()
}

/// The newest-first index entries a filter needs to look at, before the
/// per-commit checks (`--author` spelling, `--grep`).
fn candidates<'a>(
    store: &'a Store,
    selected: &HashSet<u32>,
    f: &CommitFilter,
) -> Result<Entries<'a>, StoreError> {
    // The index holds instants rounded down to the millisecond: a bound
    // finer than that is scanned to the end of its millisecond, and
    // `matching` compares the commits' full dates.
    let until = f
        .until
        .map(|u| match u.timestamp_subsec_nanos() % NANOS_PER_MS {
            0 => u,
            _ => u
                .timestamp_millis()
                .checked_add(1)
                .and_then(DateTime::from_timestamp_millis)
                .unwrap_or(u),
        });
    if let Some(needle) = &f.author {
        let needle = needle.to_lowercase();
        let streams: Vec<Entries<'a>> = store
            .authors()?
            .into_iter()
            .filter(|a| a.may_match(&needle))
            .map(|a| store.scan_author(&a.identity, f.since, until))
            .collect();
        return Ok(Box::new(Merge::new(streams)));
    }
    // One newest-first stream per repository, merged.
    let mut ids: Vec<u32> = selected.iter().copied().collect();
    ids.sort_unstable();
    let streams = ids
        .into_iter()
        .map(|id| store.scan_repo(id, f.since, until))
        .collect();
    Ok(Box::new(Merge::new(streams)))
}

/// Nanoseconds in a millisecond, the resolution of the date indexes.
const NANOS_PER_MS: u32 = 1_000_000;

/// Whether a commit dated `date` lies in the filter's `[since, until)`,
/// compared to the nanosecond.
fn in_window(f: &CommitFilter, date: &DateTime<FixedOffset>) -> bool {
    f.since.is_none_or(|s| *date >= s) && f.until.is_none_or(|u| *date < u)
}

/// Where an index entry lies against the filter's window, from its
/// instant rounded down to the millisecond: `None` when that cannot tell
/// (the entry is in the very millisecond of a bound finer than that), and
/// only the commit's full date can.
fn index_in_window(f: &CommitFilter, at: DateTime<Utc>) -> Option<bool> {
    let straddles = |b: DateTime<Utc>| {
        !b.timestamp_subsec_nanos().is_multiple_of(NANOS_PER_MS)
            && b.timestamp_millis() == at.timestamp_millis()
    };
    if f.since.is_some_and(straddles) || f.until.is_some_and(straddles) {
        return None;
    }
    Some(f.since.is_none_or(|s| at >= s) && f.until.is_none_or(|u| at < u))
}

/// Puts the commits of each millisecond in the order of their full
/// dates. The indexes order by millisecond, then hash, then repository
/// ([`IndexEntry::order_key`]); dates finer than a millisecond are rare
/// (git records whole seconds, a few servers add microseconds), so only a
/// run of entries sharing one millisecond is held and sorted.
fn by_full_date(matches: Matches<'_>) -> Matches<'_> {
    let mut matches = matches.peekable();
    let mut run = Vec::new().into_iter();
    Box::new(std::iter::from_fn(move || {
        if let Some(m) = run.next() {
            return Some(Ok(m));
        }
        let mut same: Vec<(IndexEntry, StoredCommit)> = match matches.next()? {
            Ok(m) => vec![m],
            Err(e) => return Some(Err(e)),
        };
        while let Some(Ok((e, _))) = matches.peek() {
            if e.at != same[0].0.at {
                break;
            }
            // Just peeked as `Ok`.
            match matches.next() {
                Some(Ok(m)) => same.push(m),
                _ => break,
            }
        }
        same.sort_by(|(a, ca), (b, cb)| {
            cb.date
                .cmp(&ca.date)
                .then_with(|| a.order_key().cmp(&b.order_key()))
        });
        run = same.into_iter();
        run.next().map(Ok)
    }))
}

/// `--since` / `--until`: RFC 3339 with any offset, or `YYYY-MM-DD`
/// (midnight UTC).
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    crate::config::parse_instant(s).ok_or_else(|| {
        format!(
            "{s:?} is not a date: give RFC 3339 (2024-05-01T12:00:00+02:00) or YYYY-MM-DD (midnight UTC)"
        )
    })
}

/// Commits matching `f`, newest first (by instant, then hash, then
/// repository). Lazy: a `limit` stops the scan early.
pub fn commits<'a>(
    store: &'a Store,
    f: &'a CommitFilter,
) -> Result<Box<dyn Iterator<Item = Result<CommitRecord, QueryError>> + 'a>, QueryError> {
    let repos = store.repos_by_id()?;
    let selected = selected_repos(&repos, f);
    let iter = by_full_date(matching(store, f, selected)?).filter_map(move |m| match m {
        // Every selected repository is one of `repos`.
        Ok((e, c)) => repos.get(&e.repo).map(|repo| Ok(c.into_record(repo))),
        Err(err) => Some(Err(err)),
    });
    Ok(match f.limit {
        Some(n) => Box::new(iter.take(n)),
        None => Box::new(iter),
    })
}

/// What [`matching`] yields.
type Matches<'a> = Box<dyn Iterator<Item = Result<(IndexEntry, StoredCommit), QueryError>> + 'a>;

/// The index entries and stored commits of the `selected` repositories
/// that pass every check of `f` but its limit, newest first.
fn matching<'a>(
    store: &'a Store,
    f: &CommitFilter,
    selected: HashSet<u32>,
) -> Result<Matches<'a>, QueryError> {
    if selected.is_empty() {
        return Ok(Box::new(std::iter::empty()));
    }
    let entries = candidates(store, &selected, f)?;
    let author = f.author.as_ref().map(|a| a.to_lowercase());
    let grep = f.grep.as_ref().map(|g| g.to_lowercase());
    let committer = f.committer.as_ref().map(|c| c.to_lowercase());
    let all = f.all;
    // The bounds, for the commits' full dates.
    let window = f.clone();
    Ok(Box::new(
        entries
            .filter(move |e| match e {
                Ok((e, _)) => (all || e.reachable) && selected.contains(&e.repo),
                Err(_) => true,
            })
            .filter_map(move |e| {
                let (e, c) = match e {
                    Ok(e) => e,
                    Err(err) => return Some(Err(QueryError::from(err))),
                };
                if !in_window(&window, &c.date) {
                    return None;
                }
                if let Some(needle) = &author {
                    let hit = |s: &Option<String>| {
                        s.as_ref()
                            .is_some_and(|s| s.to_lowercase().contains(needle))
                    };
                    if !hit(&c.author.raw) && !hit(&c.author.display_name) {
                        return None;
                    }
                }
                if let Some(needle) = &grep {
                    if !c.message.to_lowercase().contains(needle) {
                        return None;
                    }
                }
                if let Some(needle) = &committer {
                    let raw = c.committer.as_ref().and_then(|c| c.raw.as_ref());
                    if !raw.is_some_and(|r| r.to_lowercase().contains(needle)) {
                        return None;
                    }
                }
                Some(Ok((e, c)))
            }),
    ))
}

/// Every stored commit (reachable ones unless `all`), repository by
/// repository in hash order: a streaming dump for `export`.
pub fn export<'a>(
    store: &'a Store,
    all: bool,
) -> Result<impl Iterator<Item = Result<CommitRecord, QueryError>> + 'a, QueryError> {
    let repos = export_order(store)?;
    Ok(repos.into_iter().flat_map(move |repo| {
        let id = repo.id;
        store.commits_of(id).filter_map(move |c| match c {
            Ok(c) if all || c.reachable => Some(Ok(c.into_record(&repo))),
            Ok(_) => None,
            Err(e) => Some(Err(e.into())),
        })
    }))
}

/// The repositories in `export` order: by workspace, slug, uuid.
pub fn export_order(store: &Store) -> Result<Vec<RepoState>, QueryError> {
    let mut repos = store.repos()?;
    repos.sort_by(|a, b| (&a.workspace, &a.slug, &a.uuid).cmp(&(&b.workspace, &b.slug, &b.uuid)));
    Ok(repos)
}

/// `show`: every stored commit (across repositories) whose hash is `hash`
/// or starts with it.
pub fn show(store: &Store, hash: &str) -> Result<Vec<CommitRecord>, QueryError> {
    let h = hash.trim().to_ascii_lowercase();
    if h.len() < 7 || h.len() > 40 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(QueryError::BadHash(hash.to_owned()));
    }
    let found = store.find_hash_prefix(&h)?;
    let distinct: std::collections::BTreeSet<String> =
        found.iter().map(|(x, _)| keys::hash_hex(x)).collect();
    if distinct.is_empty() {
        return Err(QueryError::UnknownHash(h));
    }
    if distinct.len() > 1 {
        return Err(QueryError::AmbiguousHash {
            prefix: h,
            matches: distinct.into_iter().collect(),
        });
    }
    let repos = store.repos_by_id()?;
    let mut out = Vec::new();
    for (hash, id) in found {
        if let (Some(repo), Some(c)) = (repos.get(&id), store.commit_by_id(id, &hash)?) {
            out.push(c.into_record(repo));
        }
    }
    out.sort_by(|a, b| (&a.workspace, &a.repo).cmp(&(&b.workspace, &b.repo)));
    Ok(out)
}

/// One line of `query repos`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepoRow {
    /// Workspace.
    pub workspace: String,
    /// Slug.
    pub slug: String,
    /// Braced uuid.
    pub uuid: String,
    /// Default branch.
    pub default_branch: Option<String>,
    /// ok / empty / failed / deleted / new.
    pub status: RepoStatus,
    /// Reachable commits stored.
    pub commits: u64,
    /// Commits stored that a rewrite orphaned.
    pub unreachable: u64,
    /// Tip of the last finished walk.
    pub head: Option<String>,
    /// End of the last successful crawl.
    pub last_sync: Option<DateTime<Utc>>,
    /// Why the last crawl failed.
    pub last_error: Option<String>,
    /// Recent events (force pushes, branch changes, renames, deletions).
    pub events: Vec<RepoEvent>,
    /// Last time its default branch was checked.
    pub last_checked: Option<DateTime<Utc>>,
    /// Last time a check found something new.
    pub last_changed: Option<DateTime<Utc>>,
    /// Why it was, or was not, crawled in the last pass.
    pub last_decision: Option<String>,
}

/// `query repos`: every repository (of one workspace), by workspace and slug.
pub fn repos(store: &Store, workspace: Option<&str>) -> Result<Vec<RepoRow>, QueryError> {
    let mut rows: Vec<RepoRow> = store
        .repos()?
        .into_iter()
        .filter(|r| workspace.is_none_or(|w| r.workspace == w))
        .map(|r| RepoRow {
            commits: r.commits_stored.saturating_sub(r.commits_unreachable),
            unreachable: r.commits_unreachable,
            workspace: r.workspace,
            slug: r.slug,
            uuid: r.uuid,
            default_branch: r.default_branch,
            status: r.status,
            head: r.head,
            last_sync: r.last_sync,
            last_error: r.last_error,
            events: r.events,
            last_checked: r.checked_at,
            last_changed: r.changed_at,
            last_decision: r.last_decision,
        })
        .collect();
    rows.sort_by(|a, b| (&a.workspace, &a.slug).cmp(&(&b.workspace, &b.slug)));
    Ok(rows)
}

/// One line of `query authors`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuthorRow {
    /// Account uuid when known, else lower-cased e-mail.
    pub identity: String,
    /// Latest name.
    pub name: Option<String>,
    /// Latest e-mail.
    pub email: Option<String>,
    /// Bitbucket display name.
    pub display_name: Option<String>,
    /// Matching commits.
    pub commits: u64,
    /// Oldest matching commit.
    pub first: DateTime<Utc>,
    /// Newest matching commit.
    pub last: DateTime<Utc>,
    /// Repositories with matching commits.
    pub repositories: u64,
}

/// `query authors`: per author identity, the commits matching `f` (limit
/// applies to authors), most commits first.
pub fn authors(store: &Store, f: &CommitFilter) -> Result<Vec<AuthorRow>, QueryError> {
    struct Acc {
        commits: u64,
        first: DateTime<Utc>,
        last: DateTime<Utc>,
        repos: HashSet<u32>,
        /// Counted at write time (the aggregates), else `repos.len()`.
        repo_count: Option<u64>,
    }
    fn add(acc: &mut HashMap<String, Acc>, identity: &str, at: DateTime<Utc>, repo: u32) {
        let a = acc.entry(identity.to_owned()).or_insert_with(|| Acc {
            commits: 0,
            first: at,
            last: at,
            repos: HashSet::new(),
            repo_count: None,
        });
        a.commits += 1;
        a.first = a.first.min(at);
        a.last = a.last.max(at);
        a.repos.insert(repo);
    }
    let mut acc: HashMap<String, Acc> = HashMap::new();
    let repos = store.repos_by_id()?;
    let selected = selected_repos(&repos, f);
    if f.checks_each_commit() {
        // Per-commit checks: the commit query's matching, without a limit.
        for m in matching(store, f, selected)? {
            let (e, c) = m?;
            add(&mut acc, &c.author.identity(), e.at, e.repo);
        }
    } else if f.since.is_none() && f.until.is_none() && selected.len() == repos.len() {
        // Everything: the aggregates kept at write time. An author with
        // unreachable commits is counted from their postings instead
        // (unless --all), as first/last/repositories may then differ.
        for (identity, s) in store.all_author_stats()? {
            if s.commits == 0 {
                continue;
            }
            if f.all || s.unreachable == 0 {
                acc.insert(
                    identity,
                    Acc {
                        commits: s.commits,
                        first: crate::store::instant(s.first_ms),
                        last: crate::store::instant(s.last_ms),
                        repos: HashSet::new(),
                        repo_count: Some(s.repos),
                    },
                );
            } else {
                for item in store.scan_author(&identity, None, None) {
                    let (e, _) = item?;
                    if e.reachable {
                        add(&mut acc, &identity, e.at, e.repo);
                    }
                }
            }
        }
    } else {
        // A window or some repositories: every author's postings. A
        // commit is read only when its author has unreachable commits, or
        // it lies in the very millisecond of a bound finer than that.
        let unreachable: HashSet<String> = store
            .all_author_stats()?
            .into_iter()
            .filter(|(_, s)| s.unreachable > 0)
            .map(|(identity, _)| identity)
            .collect();
        for item in store.scan_postings() {
            let (identity, postings) = item?;
            let check_reachable = !f.all && unreachable.contains(&identity);
            for p in postings {
                if !selected.contains(&p.repo) {
                    continue;
                }
                let at = crate::store::instant(p.ms);
                let window = index_in_window(f, at);
                if window == Some(false) {
                    continue;
                }
                let within = if check_reachable || window.is_none() {
                    let (e, c) = store.posted(&p)?;
                    (f.all || e.reachable) && in_window(f, &c.date)
                } else {
                    true
                };
                if within {
                    add(&mut acc, &identity, at, p.repo);
                }
            }
        }
    }
    let records: HashMap<String, crate::record::AuthorRecord> = store
        .authors()?
        .into_iter()
        .map(|a| (a.identity.clone(), a))
        .collect();
    let mut rows: Vec<AuthorRow> = acc
        .into_iter()
        .map(|(identity, a)| {
            let r = records.get(&identity);
            AuthorRow {
                name: r.and_then(|r| r.name.clone()),
                email: r.and_then(|r| r.email.clone()),
                display_name: r.and_then(|r| r.display_name.clone()),
                identity,
                commits: a.commits,
                first: a.first,
                last: a.last,
                repositories: a.repo_count.unwrap_or(a.repos.len() as u64),
            }
        })
        .collect();
    rows.sort_by(|a, b| {
        b.commits
            .cmp(&a.commits)
            .then_with(|| a.identity.cmp(&b.identity))
    });
    if let Some(n) = f.limit {
        rows.truncate(n);
    }
    Ok(rows)
}

/// `query stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Repositories by status.
    pub repositories: HashMap<String, u64>,
    /// Commits stored.
    pub commits: u64,
    /// Of those, reachable from their default branch.
    pub reachable_commits: u64,
    /// Distinct author identities.
    pub authors: u64,
    /// Bytes on disk.
    pub store_size_bytes: u64,
    /// The last pass (start, end, requests, 429s, …), if any.
    pub last_pass: Option<serde_json::Value>,
}

/// `query stats`.
pub fn stats(store: &Store) -> Result<Stats, QueryError> {
    let totals = RepoTotals::of(&store.repos()?);
    Ok(Stats {
        repositories: totals
            .by_status
            .iter()
            .map(|(s, n)| (s.as_str().to_owned(), *n))
            .collect(),
        commits: totals.commits,
        reachable_commits: totals.reachable,
        authors: store.totals()?.authors,
        store_size_bytes: store.size_on_disk()?,
        last_pass: store.meta(keys::META_LAST_PASS)?,
    })
}

/// For the tests of this module's answers: a store of repositories
/// (`(commits, slug)`, each of workspace `ws` and uuid `{slug}`) filled
/// page by page with `record(repo, i)`; an empty one is saved as it is;
/// repository `k` has its commits before the tenth orphaned (a force
/// push).
#[cfg(test)]
pub(crate) fn test_store(
    sizes: &[(usize, &str)],
    record: fn(&crate::record::RepoState, usize) -> crate::record::CommitRecord,
) -> (tempfile::TempDir, Store) {
    use crate::record::RepoState;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for (n, slug) in sizes {
        let mut repo = RepoState::new(
            "ws",
            &format!("{{{slug}}}"),
            slug,
            &format!("ws/{slug}"),
            chrono::Utc::now(),
        );
        let commits: Vec<_> = (0..*n).map(|i| record(&repo, i)).collect();
        for page in commits.chunks(100) {
            repo = store.apply_page(&repo, page).unwrap().repo;
        }
        if *n == 0 {
            store.put_repo(&repo).unwrap();
        }
        if *slug == "k" {
            let head = record(&repo, 10).hash;
            store
                .mark_reachability(&repo, &head, chrono::Utc::now())
                .unwrap();
        }
    }
    (dir, store)
}
