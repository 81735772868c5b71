//! Which repositories a pass crawls, in what order, and how far (issue 6:
//! freshness at scale).
//!
//! First the user's choice: [`SlugFilter`], the `include` / `exclude` globs on
//! repository slugs, compiled when the configuration is loaded (so a bad glob is a
//! configuration error for every command, not a failed pass); with `shard = "I/N"`,
//! only the repositories whose uuid hashes to this instance's shard ([`crate::shard`]),
//! applied beside the slug filter in the supervisor. Then the change gate below, over
//! the repositories both want.
//!
//! Every pass reads the whole listing anyway; the listing's `updated_on`
//! and `mainbranch` tell which repositories changed. A repository gets a
//! commits request only if it is new, changed, has an unfinished walk,
//! failed last time, or its **audit** is due — so a pass over an unchanged
//! workspace costs only the listing pages. Bitbucket moves `updated_on` on
//! pushes in practice but does not document it, so every repository is
//! also checked at least once per `audit_interval`, at a moment spread
//! evenly over the interval by a hash of its uuid.
//!
//! When budget is scarce, fresh changes go first, then backfill pages of
//! first crawls, shared evenly so one huge repository cannot starve the
//! rest (a backfill stops at its share and continues in the next pass from
//! its saved position), then audits — which get budget only when what is
//! left after the changes also lets every backfill make some progress.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::bitbucket::models::Repository;
use crate::record::{RepoState, RepoStatus};

/// Least pages a backfill must be able to make before audits get budget.
const MIN_BACKFILL_PAGES: u64 = 5;

/// Why a repository is crawled this pass, or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// `sync --full` or `--repo`: the gate is bypassed.
    Forced,
    /// Listed for the first time.
    New,
    /// `updated_on` or `mainbranch` differ from the last successful crawl.
    Changed,
    /// The last crawl failed.
    Retry,
    /// A walk is unfinished (killed, or a backfill that used its share).
    Unfinished,
    /// Its periodic audit is due.
    Audit,
    /// Not crawled: nothing changed and no audit is due.
    Unchanged,
    /// Not crawled: its audit is due but the budget is needed elsewhere.
    AuditDeferred,
    /// A signed `repo:push` webhook moved its default branch (section 13):
    /// walked at once, outside any pass.
    Hook,
}

impl Reason {
    /// As recorded on the repository and printed by `query repos`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Forced => "forced",
            Reason::New => "new",
            Reason::Changed => "changed",
            Reason::Retry => "retry after failure",
            Reason::Unfinished => "unfinished walk",
            Reason::Audit => "audit",
            Reason::Unchanged => "skipped: unchanged",
            Reason::AuditDeferred => "skipped: audit deferred (budget)",
            Reason::Hook => "webhook push",
        }
    }

    /// Whether the repository gets a commits request.
    pub fn crawls(self) -> bool {
        !matches!(self, Reason::Unchanged | Reason::AuditDeferred)
    }

    /// Fresh changes (first in line), backfill (next), audits (last); the
    /// pass runs these phases one after the other.
    pub fn phase(self) -> u8 {
        match self {
            Reason::Forced | Reason::Changed | Reason::Retry | Reason::Hook => 0,
            Reason::New | Reason::Unfinished => 1,
            Reason::Audit => 2,
            Reason::Unchanged | Reason::AuditDeferred => 3,
        }
    }

    fn is_backfill(self) -> bool {
        matches!(self, Reason::New | Reason::Unfinished)
    }
}

/// The decision for one listed repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// Index into the listing given to [`plan`].
    pub index: usize,
    /// Why (or why not).
    pub reason: Reason,
    /// At most this many commit pages this pass (backfills under a scarce budget).
    pub max_pages: Option<u64>,
}

/// What the planner needs besides the listing.
#[derive(Debug, Clone)]
pub struct PlanInput<'a> {
    /// Stored repositories by uuid.
    pub stored: &'a HashMap<String, RepoState>,
    /// Now.
    pub now: DateTime<Utc>,
    /// Every repository is checked at least this often.
    pub audit_interval: Duration,
    /// Bypass the gate (`--full`, `--repo`).
    pub forced: bool,
    /// Requests this pass may spend (the budget left in the rolling hour,
    /// after the listing); `None` when unknown.
    pub budget: Option<u64>,
}

/// Decides every listed repository, ordered: crawls first (changes, then
/// backfills, then audits), then the skipped ones.
pub fn plan(listing: &[Repository], input: &PlanInput<'_>) -> Vec<Planned> {
    let mut out: Vec<Planned> = listing
        .iter()
        .enumerate()
        .map(|(index, repo)| Planned {
            index,
            reason: decide(repo, input.stored.get(&repo.uuid), input),
            max_pages: None,
        })
        .collect();
    let changes = out.iter().filter(|p| p.reason.phase() == 0).count() as u64;
    let backfills = out.iter().filter(|p| p.reason.is_backfill()).count() as u64;
    let audits = out.iter().filter(|p| p.reason == Reason::Audit).count() as u64;
    if let Some(budget) = input.budget {
        let left = budget.saturating_sub(changes);
        // Audits only with budget that changes and a minimal backfill do not need.
        let audit_ok = left >= audits + backfills * MIN_BACKFILL_PAGES;
        if !audit_ok {
            for p in out.iter_mut().filter(|p| p.reason == Reason::Audit) {
                p.reason = Reason::AuditDeferred;
            }
        }
        let for_backfill = if audit_ok { left - audits } else { left };
        if let Some(share) = for_backfill.checked_div(backfills) {
            for p in out.iter_mut().filter(|p| p.reason.is_backfill()) {
                p.max_pages = Some(share.max(1));
            }
        }
    }
    out.sort_by_key(|p| (p.reason.phase(), p.index));
    out
}

fn decide(repo: &Repository, stored: Option<&RepoState>, input: &PlanInput<'_>) -> Reason {
    if input.forced {
        return Reason::Forced;
    }
    let Some(s) = stored else { return Reason::New };
    if s.walk.is_some() {
        return Reason::Unfinished;
    }
    match s.status {
        RepoStatus::New => return Reason::New,
        RepoStatus::Failed => return Reason::Retry,
        RepoStatus::Deleted => return Reason::Changed,
        RepoStatus::Ok | RepoStatus::Empty => {}
    }
    let updated_on = repo.updated_on.map(|d| d.to_rfc3339());
    // No `updated_on` in the listing (Bitbucket always sends it; other
    // implementations may not): no hint, so it may have changed — check it.
    if updated_on.is_none()
        || s.default_branch.as_deref() != repo.default_branch()
        || s.updated_on != updated_on
    {
        return Reason::Changed;
    }
    if audit_due(&s.uuid, s.checked_at, input.now, input.audit_interval) {
        Reason::Audit
    } else {
        Reason::Unchanged
    }
}

/// Whether a repository last checked at `checked_at` is due for its audit.
///
/// Each repository has a phase φ ∈ [0, 1) from a hash of its uuid; its
/// audit slots start at `k·I + φ·I`. It is due when it has not been checked
/// since the latest slot start — so over any interval `I` every repository
/// is checked at least once, and audits are spread evenly over `I` instead
/// of all falling in one pass.
pub fn audit_due(
    uuid: &str,
    checked_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    interval: Duration,
) -> bool {
    let Some(checked) = checked_at else {
        return true;
    };
    let i = interval.as_millis().max(1) as i64;
    let phase = (fnv1a(uuid) % 1_000_000) as i64 * i / 1_000_000;
    let t = now.timestamp_millis() - phase;
    let slot_start = t.div_euclid(i) * i + phase;
    checked.timestamp_millis() < slot_start
}

fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Which repositories the user wants, by slug: a slug is wanted when `include` is
/// empty or one of its globs matches, and no `exclude` glob matches. The default wants
/// every repository.
#[derive(Clone, Debug, Default)]
pub struct SlugFilter {
    include: SlugGlobs,
    exclude: SlugGlobs,
}

impl SlugFilter {
    /// The filter of an `include` and an `exclude` list.
    pub fn new(include: SlugGlobs, exclude: SlugGlobs) -> SlugFilter {
        SlugFilter { include, exclude }
    }

    /// Whether the repository `slug` is crawled.
    pub fn wants(&self, slug: &str) -> bool {
        (self.include.is_empty() || self.include.matches(slug)) && !self.exclude.matches(slug)
    }

    /// The `include` patterns as configured.
    pub fn include(&self) -> &[String] {
        &self.include.patterns
    }

    /// The `exclude` patterns as configured.
    pub fn exclude(&self) -> &[String] {
        &self.exclude.patterns
    }
}

/// One list of glob patterns on repository slugs (`include` or `exclude`), compiled.
/// Globs use `globset`'s defaults: case-sensitive, and `*` also crosses `/` (slugs
/// have none).
#[derive(Clone, Default)]
pub struct SlugGlobs {
    patterns: Vec<String>,
    set: GlobSet,
}

impl SlugGlobs {
    /// Compiles `patterns`; an invalid one is reported with its position.
    pub fn new(patterns: Vec<String>) -> Result<SlugGlobs, GlobError> {
        let mut builder = GlobSetBuilder::new();
        for (index, pattern) in patterns.iter().enumerate() {
            let glob = Glob::new(pattern).map_err(|e| GlobError::Invalid {
                index,
                pattern: pattern.clone(),
                reason: e.kind().to_string(),
            })?;
            builder.add(glob);
        }
        let set = builder.build().map_err(|e| GlobError::Compile {
            reason: e.to_string(),
        })?;
        Ok(SlugGlobs { patterns, set })
    }

    /// No patterns.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether any pattern matches `slug`.
    pub fn matches(&self, slug: &str) -> bool {
        self.set.is_match(slug)
    }
}

impl std::fmt::Debug for SlugGlobs {
    // The patterns say it all; the compiled set would print every regex.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.patterns).finish()
    }
}

/// Why a list of slug globs could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum GlobError {
    /// A pattern is not a valid glob.
    #[error("not a valid glob: {reason} (got {pattern:?})")]
    Invalid {
        /// Its position in the list (0-based).
        index: usize,
        /// The pattern.
        pattern: String,
        /// What is wrong with it, as `globset` says.
        reason: String,
    },
    /// Every pattern is valid, but together they could not be compiled (the matcher
    /// grew beyond `globset`'s size limit).
    #[error("cannot compile the globs: {reason}")]
    Compile {
        /// As `globset` says.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn audits_are_spread_over_the_interval_and_each_repository_is_checked_once() {
        let interval = Duration::from_secs(86_400);
        let start = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap();
        let uuids: Vec<String> = (0..2000).map(|i| format!("{{repo-{i}}}")).collect();
        let mut checked: Vec<DateTime<Utc>> = vec![start; uuids.len()];
        let mut per_pass = Vec::new();
        // Passes every 15 minutes for two days.
        for pass in 1..=192 {
            let now = start + chrono::Duration::minutes(15 * pass);
            let mut n = 0;
            for (u, c) in uuids.iter().zip(checked.iter_mut()) {
                if audit_due(u, Some(*c), now, interval) {
                    *c = now;
                    n += 1;
                }
            }
            per_pass.push(n);
        }
        // Never all at once: about 2000 / 96 ≈ 21 per pass.
        assert!(per_pass.iter().all(|n| *n < 60), "{per_pass:?}");
        // Within every interval each repository is audited exactly once.
        assert_eq!(per_pass[96..].iter().sum::<usize>(), 2000);
        assert!(checked
            .iter()
            .all(|c| *c > start + chrono::Duration::hours(24)));
    }

    fn globs(patterns: &[&str]) -> SlugGlobs {
        SlugGlobs::new(patterns.iter().map(|p| p.to_string()).collect()).unwrap()
    }

    #[test]
    fn slug_filter_wants_included_slugs_that_are_not_excluded() {
        let filter = SlugFilter::new(globs(&["api-*", "web"]), globs(&["*-archive"]));
        assert!(filter.wants("api-gateway"));
        assert!(filter.wants("web"));
        assert!(!filter.wants("api-archive"));
        assert!(!filter.wants("website"));
        assert!(!filter.wants("API-gateway"), "globs are case-sensitive");
        assert_eq!(filter.include(), ["api-*", "web"]);
        assert_eq!(filter.exclude(), ["*-archive"]);
    }

    #[test]
    fn default_slug_filter_wants_everything() {
        let filter = SlugFilter::default();
        assert!(filter.wants("anything"));
        assert!(filter.include().is_empty() && filter.exclude().is_empty());
        let only_excluded = SlugFilter::new(SlugGlobs::default(), globs(&["old-*"]));
        assert!(only_excluded.wants("new"));
        assert!(!only_excluded.wants("old-one"));
    }

    #[test]
    fn an_invalid_glob_names_its_position() {
        let err = SlugGlobs::new(vec!["ok".into(), "api-[".into()]).unwrap_err();
        assert!(
            matches!(err, GlobError::Invalid { index: 1, .. }),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "not a valid glob: unclosed character class; missing ']' (got \"api-[\")"
        );
    }
}
