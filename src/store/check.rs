//! `bbcrawl store check`: reads every block and checks what is derived
//! from the blocks against them — block summaries, each repository's
//! counts, the store totals, each author's aggregate and postings — and
//! that no saved position (a repository's head, its walk's first commit) is
//! ahead of the stored commits. Read only; one pass over the blocks, with
//! memory bounded by the largest repository's hash set and the number of
//! authors (postings are compared per author by count and by an
//! order-independent fingerprint of (repository, block, slot, date), not
//! one by one).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash as _, Hasher};

use serde::Serialize;

use super::block::Columns;
use super::keys::{self, Summary, BLOCK};
use super::{Store, StoreError};

/// One thing found wrong.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Problem {
    /// What kind: `manifest`, `block`, `summary`, `repository`, `cursor`,
    /// `author`, `totals`.
    pub kind: &'static str,
    /// `workspace/slug`, or the author identity, when it concerns one.
    pub of: Option<String>,
    /// What is wrong.
    pub detail: String,
}

/// What `store check` found.
#[derive(Debug, Clone, Serialize, Default)]
pub struct CheckReport {
    /// Repositories checked.
    pub repositories: u64,
    /// Blocks read.
    pub blocks: u64,
    /// Commits read.
    pub commits: u64,
    /// Author identities checked.
    pub authors: u64,
    /// Values whose checksum was verified.
    pub values: u64,
    /// Everything wrong (empty: healthy).
    pub problems: Vec<Problem>,
}

impl CheckReport {
    fn problem(&mut self, kind: &'static str, of: Option<&str>, detail: String) {
        self.problems.push(Problem {
            kind,
            of: of.map(str::to_owned),
            detail,
        });
    }

    /// No problem found.
    pub fn healthy(&self) -> bool {
        self.problems.is_empty()
    }

    /// The report for people: a summary line, then a line per problem.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "{}: {} repositories, {} blocks, {} commits, {} authors, {} checksums checked; {} problems\n",
            if self.healthy() { "healthy" } else { "damaged" },
            self.repositories,
            self.blocks,
            self.commits,
            self.authors,
            self.values,
            self.problems.len()
        );
        for p in &self.problems {
            let of = p.of.as_deref().map(|o| format!(" {o}")).unwrap_or_default();
            out.push_str(&format!("  {}{of}: {}\n", p.kind, p.detail));
        }
        out
    }
}

/// The problem kind of damage to the value under `key`.
fn kind_of(key: &[u8]) -> &'static str {
    match key.first() {
        Some(&BLOCK) => "block",
        Some(&keys::SUMMARY) => "summary",
        Some(&keys::REPO) => "repository",
        Some(b'm') => "totals",
        Some(&super::feed::FEED) => "feed",
        _ => "author",
    }
}

/// An author's commits as the blocks say: count, unreachable, fingerprint.
#[derive(Default)]
struct Seen {
    commits: u64,
    unreachable: u64,
    print: u64,
}

/// The fingerprint of one posting (added up, so order does not matter).
fn posting_print(repo: u32, seq: u32, slot: u8, ms: i64) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (repo, seq, slot, ms).hash(&mut h);
    h.finish()
}

impl Store {
    /// Checks the whole store (see the module notes).
    pub fn check(&self) -> Result<CheckReport, StoreError> {
        let mut report = CheckReport::default();
        if let Some(p) = self.manifest_problem() {
            report.problem("manifest", None, p.to_owned());
        }
        self.check_seals(&mut report)?;
        // Damage the structure cannot be read past (a repository record
        // that fails its checksum) ends the check with what it found.
        match self.check_structure(&mut report) {
            Err(StoreError::Corrupt { message, .. }) => report.problem("store", None, message),
            r => r?,
        }
        Ok(report)
    }

    /// Every value's seal, in one pass over the keys.
    fn check_seals(&self, report: &mut CheckReport) -> Result<(), StoreError> {
        for kv in self.db()?.iter() {
            let (k, v) = kv.map_err(|e| self.err(e))?;
            if k.as_ref() == keys::META_SCHEMA {
                continue;
            }
            report.values += 1;
            if self.unseal(&k, v).is_err() {
                report.problem(
                    kind_of(&k),
                    None,
                    format!("{} fails its checksum", keys::describe(&k)),
                );
            }
        }
        Ok(())
    }

    /// Everything derived from the blocks, against them.
    fn check_structure(&self, report: &mut CheckReport) -> Result<(), StoreError> {
        let mut problem = |kind: &'static str, of: Option<&str>, detail: String| {
            report.problems.push(Problem {
                kind,
                of: of.map(str::to_owned),
                detail,
            });
        };
        let mut authors: HashMap<String, Seen> = HashMap::new();
        let (mut commits, mut unreachable, mut blocks) = (0u64, 0u64, 0u64);
        let repos = self.repos()?;
        for repo in &repos {
            let name = format!("{}/{}", repo.workspace, repo.slug);
            let of = Some(name.as_str());
            let summaries: BTreeMap<u32, Summary> = self
                .summaries(repo.id)?
                .into_iter()
                .map(|s| (s.seq, s))
                .collect();
            let mut hashes: HashSet<keys::Hash> = HashSet::new();
            let (mut stored, mut gone) = (0u64, 0u64);
            let mut seqs: HashSet<u32> = HashSet::new();
            for kv in self.db()?.scan_prefix(keys::blocks_prefix(BLOCK, repo.id)) {
                let (k, v) = kv.map_err(|e| self.err(e))?;
                // A block failing its seal is reported by `check_seals`.
                let Ok(v) = self.unseal(&k, v) else {
                    blocks += 1;
                    continue;
                };
                let Some((_, seq)) = keys::parse_block(&k) else {
                    problem(
                        "block",
                        of,
                        format!("a block key that does not parse ({})", keys::hash_hex(&k)),
                    );
                    continue;
                };
                seqs.insert(seq);
                blocks += 1;
                let cols = match Columns::decode(&v) {
                    Ok(c) => c,
                    Err(e) => {
                        problem("block", of, format!("block {seq} cannot be read: {e}"));
                        continue;
                    }
                };
                let expected = Summary::of(
                    repo.id,
                    seq,
                    cols.hashes(),
                    (0..cols.len()).map(|i| cols.date_ms(i)),
                );
                match summaries.get(&seq) {
                    None => problem("summary", of, format!("block {seq} has no summary")),
                    Some(s) if *s != expected => problem(
                        "summary",
                        of,
                        format!("the summary of block {seq} does not match the block"),
                    ),
                    Some(_) => {}
                }
                for i in 0..cols.len() {
                    hashes.insert(*cols.hash(i));
                    stored += 1;
                    let seen = authors.entry(cols.author(i).identity()).or_default();
                    seen.commits += 1;
                    seen.print = seen.print.wrapping_add(posting_print(
                        repo.id,
                        seq,
                        i as u8,
                        cols.date_ms(i),
                    ));
                    if !cols.reachable(i) {
                        gone += 1;
                        seen.unreachable += 1;
                    }
                }
            }
            for seq in summaries.keys().filter(|s| !seqs.contains(s)) {
                problem(
                    "summary",
                    of,
                    format!("a summary of block {seq}, which is missing"),
                );
            }
            if stored != repo.commits_stored || gone != repo.commits_unreachable {
                problem(
                    "repository",
                    of,
                    format!(
                        "its record counts {} commits ({} unreachable), its blocks hold {stored} ({gone})",
                        repo.commits_stored, repo.commits_unreachable
                    ),
                );
            }
            let cursors = [
                ("head", repo.head.as_deref()),
                (
                    "walk's first commit",
                    repo.walk.as_ref().and_then(|w| w.tip.as_deref()),
                ),
            ];
            for (what, hash) in cursors {
                let Some(hash) = hash else { continue };
                if !keys::parse_hash(hash).is_some_and(|h| hashes.contains(&h)) {
                    problem(
                        "cursor",
                        of,
                        format!("its saved {what} {hash} is not stored"),
                    );
                }
            }
            commits += stored;
            unreachable += gone;
            report.repositories += 1;
        }
        // Authors: aggregates and postings against the blocks.
        let mut posted: HashMap<String, Seen> = HashMap::new();
        for chunk in self.scan_postings() {
            let (identity, postings) = match chunk {
                Ok(c) => c,
                Err(e) => {
                    problem("author", None, format!("postings cannot be read: {e}"));
                    continue;
                }
            };
            let seen = posted.entry(identity).or_default();
            for p in postings {
                seen.commits += 1;
                seen.print = seen
                    .print
                    .wrapping_add(posting_print(p.repo, p.seq, p.slot, p.ms));
            }
        }
        let stats: HashMap<String, _> = self.all_author_stats()?.into_iter().collect();
        let mut identities: Vec<&String> = authors.keys().chain(stats.keys()).collect();
        identities.sort();
        identities.dedup();
        for identity in identities {
            let of = Some(identity.as_str());
            let blocks_say = authors.get(identity);
            let (n, gone) = blocks_say.map_or((0, 0), |s| (s.commits, s.unreachable));
            match stats.get(identity) {
                None => problem(
                    "author",
                    of,
                    format!("{n} commits in the blocks, no aggregate"),
                ),
                Some(s) if s.commits != n || s.unreachable != gone => problem(
                    "author",
                    of,
                    format!(
                        "the aggregate counts {} commits ({} unreachable), the blocks {n} ({gone})",
                        s.commits, s.unreachable
                    ),
                ),
                Some(_) => {}
            }
            let p = posted.get(identity);
            if p.map(|p| (p.commits, p.print)) != blocks_say.map(|s| (s.commits, s.print)) {
                problem(
                    "author",
                    of,
                    format!(
                        "{} postings do not point at their {n} commits in the blocks",
                        p.map_or(0, |p| p.commits)
                    ),
                );
            }
        }
        let totals = self.totals()?;
        let found = (commits, unreachable, blocks, authors.len() as u64);
        if (
            totals.commits,
            totals.unreachable,
            totals.blocks,
            totals.authors,
        ) != found
        {
            problem(
                "totals",
                None,
                format!(
                    "the store totals say {} commits ({} unreachable), {} blocks, {} authors; the blocks hold {} ({}), {}, {}",
                    totals.commits, totals.unreachable, totals.blocks, totals.authors,
                    found.0, found.1, found.2, found.3
                ),
            );
        }
        report.blocks = blocks;
        report.commits = commits;
        report.authors = authors.len() as u64;
        Ok(())
    }
}
