//! Query benchmark (issue 4, extended for store v2): a store of
//! `BBCRAWL_BENCH_COMMITS` (default 10,000,000) commits over
//! `BBCRAWL_BENCH_REPOS` (default 2,000) repositories of workspace `acme`,
//! then: the build's write rate, the store's bytes per commit, the first
//! query after the build, store open time and filtered queries in-process,
//! whole processes of the release binary (median wall time and peak RSS;
//! `export` as NDJSON, as the change feed and, when the binary has it, as
//! Parquet into a file, with its bytes per commit, beside NDJSON into a
//! file), `bbcrawl sync` of a small workspace into a copy of the store, and the
//! daemon (`bbcrawl run`) on the store answering the same questions over
//! its API.
//!
//! Run: `cargo bench --bench query`. Every figure is printed twice: in a
//! table for people, and at the end as `key: value unit` lines for
//! `benches/compare.sh`, which runs this file against an older commit in
//! the same run.
//!
//! Only the public API both store layouts keep is used (`Store::open`,
//! `apply_page`, `put_repo`, `flush`, `size_on_disk`, `query::{commits,
//! authors}`), so this file builds against either.
//!
//! **The data.** Commits are spread over repositories Zipf-like (the k-th
//! largest ∝ 1/k, times a random factor 0.5–2; every repository has at
//! least one commit; the total is exact). Each repository has a team of
//! 5–30 people drawn from a workspace pool of `BBCRAWL_BENCH_AUTHORS`
//! (3,000; a cluster of colleagues, first members commit most) plus two
//! bots present in 70 % and 45 % of repositories (7 % and 3 % of their
//! commits). Dates spread over 1–7 years per repository ending at or before
//! 2026-11-01 (a quarter of the repositories went quiet earlier); messages
//! 20–400 bytes (about 45 % with a body, a few long, some unicode); parents
//! the previous commit, 4 % merges with a second parent off the branch. The
//! builder writes each repository's pages newest first (page 1 = the newest
//! 100 commits) through `apply_page` on one thread, flushing every 250 ms
//! like the crawler's writer. Everything is a pure function of the sizes,
//! so a reused store matches the plan.
//!
//! **The store** is `target/bench-store-{commits}-{repos}` (next to it a
//! `.complete` marker written after a finished build); it is reused unless
//! `BBCRAWL_BENCH_REBUILD` is set or either is missing. The daemon step adds
//! workspace `bench-daemon` (20 × 500 commits) to it; on a reused store
//! that pass finds nothing new (the figures say how many commits it wrote).
//!
//! **Peak RSS** of every bbcrawl process but the daemon is `ru_maxrss` from
//! `wait4(2)` (the kernel's high-water mark of the child's resident set,
//! exact, no polling), taken by a reaper: this bench binary re-executed
//! (`common::measure_child_main`), which spawns bbcrawl and reaps it. The
//! reaper is needed because Linux carries into `ru_maxrss` the resident set
//! of the image a child replaced at `exec` — spawned straight from this
//! process (std uses `vfork`), every figure would be at least this
//! process's size; the reaper's own few MB bound what leaks in (printed).
//! The daemon's is its `VmHWM` read from /proc just before SIGTERM. Wall
//! times are the reaper's spawn-to-reap.
//!
//! Other knobs: `BBCRAWL_BENCH_RUNS` (5) runs per whole-process figure
//! (median time, max RSS); `BBCRAWL_BENCH_COPY_MAX_MB` (2,000): `sync` into
//! a throwaway copy only when the store is at most this big (copying a
//! larger one takes more than ~20 s here); `BBCRAWL_BENCH_DAEMON=0` skips
//! the daemon step.

#[path = "common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bbcrawl::demo::BackgroundSimulator;
use bbcrawl::query::{self, CommitFilter};
use bbcrawl::record::{Author, CommitRecord, Committer, RepoState, RepoStatus};
use bbcrawl::simulator::{RepoSpec, SimCredential, SimOptions, Simulator};
use bbcrawl::store::Store;
use chrono::{DateTime, FixedOffset, TimeZone, Utc};
use common::{env_num, Measured, WS};

/// The workspace the daemon crawls, and the one `sync` copies into a copy.
const DAEMON_WS: &str = "bench-daemon";
const SYNC_WS: &str = "bench-sync";
const SIM_TOKEN: &str = "bench-small-world-token";
const SMALL_REPOS: usize = 20;
const SMALL_COMMITS: usize = 500;

/// Bots: share of a repository's commits, and share of repositories.
const BOT_SHARE: [f64; 2] = [0.07, 0.03];
const BOT_PRESENCE: [f64; 2] = [0.70, 0.45];

// ---------------------------------------------------------------- data

/// splitmix64: small, fast, and the same on every build.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn pick<'a>(&mut self, v: &[&'a str]) -> &'a str {
        v[self.below(v.len())]
    }
}

#[rustfmt::skip]
const FIRST: [&str; 60] = [
    "Anna", "Ben", "Carla", "David", "Elena", "Felix", "Grace", "Hiro", "Ines", "Jonas", "Kim",
    "Lena", "Marco", "Nina", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tara", "Umar", "Vera",
    "Wei", "Ximena", "Yusuf", "Zoë", "Aaron", "Bianca", "Chen", "Dana", "Emil", "Fatima", "Gus",
    "Hana", "Ivan", "José", "Kai", "Laura", "Mateo", "Noor", "Olga", "Paul", "Rahul", "Sara",
    "Tomás", "Ulla", "Victor", "Wanda", "Yara", "Łukasz", "Amir", "Britt", "Carlos", "Dmitri",
    "Eva", "Femi", "Giulia", "Hugo", "Ingrid", "Jae",
];
#[rustfmt::skip]
const LAST: [&str; 60] = [
    "Smith", "Müller", "Garcia", "Rossi", "Nguyen", "Kowalski", "Tanaka", "Silva", "Ivanova",
    "Jensen", "Okafor", "Dubois", "Kim", "Patel", "Novak", "Larsen", "Fischer", "Moreau", "Costa",
    "Schmidt", "Cohen", "Wang", "Haddad", "Berg", "Søren", "Lopez", "Meyer", "Romano", "Sato",
    "Walsh", "Brennan", "Horvat", "Andersen", "Yilmaz", "Mendes", "Keller", "Nakamura", "Petrov",
    "Kaur", "Lindqvist", "Oliveira", "Baker", "Vogel", "Ricci", "Suzuki", "Chowdhury", "Evans",
    "Popescu", "Hansen", "Duarte", "Weber", "Morales", "Fernández", "Ito", "Novotný", "Adeyemi",
    "Björk", "Reyes", "Schulz", "O'Neill",
];
const OFFSETS: [i32; 8] = [0, 3600, 7200, -18000, -25200, 19800, 28800, 32400];

/// Human `n` of the pool: a unique first/last name pair.
fn human(n: usize) -> (Author, i32) {
    let (a, b) = (n % 60, (n / 60 + n % 60) % 60);
    let name = format!("{} {}", FIRST[a], LAST[b]);
    let email = format!(
        "{}.{}@example.com",
        FIRST[a].to_lowercase(),
        LAST[b].to_lowercase().replace('\'', "")
    );
    let account = n % 10 < 7;
    let author = Author {
        raw: Some(format!("{name} <{email}>")),
        name: Some(name.clone()),
        email: Some(email),
        uuid: account.then(|| format!("{{00000000-0000-4000-8000-{n:012}}}")),
        account_id: account.then(|| format!("5b10a2844c2016570{n:07}")),
        display_name: account.then(|| name.clone()),
    };
    (author, OFFSETS[(n * 7) % OFFSETS.len()])
}

fn bot(b: usize) -> (Author, i32) {
    let (name, email, account) = match b {
        0 => ("Renovate Bot", "bot@renovateapp.com", true),
        _ => ("Jenkins", "jenkins@ci.example.com", false),
    };
    let author = Author {
        raw: Some(format!("{name} <{email}>")),
        name: Some(name.into()),
        email: Some(email.into()),
        uuid: account.then(|| "{00000000-0000-4000-8000-b07000000000}".to_owned()),
        account_id: account.then(|| "5d9e0b7b7d2a0c0c1e2b07".to_owned()),
        display_name: account.then(|| name.to_owned()),
    };
    (author, 0)
}

/// Everyone: the pool's humans, then the bots.
fn people(pool: usize) -> Vec<(Author, i32)> {
    (0..pool).map(human).chain((0..2).map(bot)).collect()
}

/// 2026-11-01T00:00:00Z: no commit is newer.
fn end_of_time() -> i64 {
    Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0)
        .unwrap()
        .timestamp()
}

/// What the store holds, repository by repository.
struct Plan {
    pool: usize,
    sizes: Vec<usize>,
    teams: Vec<Vec<usize>>,
    /// Cumulative commit weights of each team's members.
    cum: Vec<Vec<f64>>,
    bots: Vec<[bool; 2]>,
    /// First and last commit time of each repository (Unix seconds).
    span: Vec<(i64, i64)>,
}

impl Plan {
    fn new(total: usize, repos: usize, pool: usize) -> Plan {
        let mut rng = Rng::new(0x5eed_0001 ^ ((total as u64) << 20) ^ repos as u64);
        // Zipf-like weights over shuffled ranks, each times 0.5–2.
        let mut ranks: Vec<usize> = (0..repos).collect();
        for i in (1..repos).rev() {
            ranks.swap(i, rng.below(i + 1));
        }
        let w: Vec<f64> = ranks
            .iter()
            .map(|k| (0.5 + 1.5 * rng.unit()) / (*k as f64 + 1.0))
            .collect();
        let sum: f64 = w.iter().sum();
        let floor = usize::from(total >= repos);
        let spread = total - floor * repos;
        let mut sizes: Vec<usize> = w
            .iter()
            .map(|x| floor + (spread as f64 * x / sum) as usize)
            .collect();
        let mut by_weight: Vec<usize> = (0..repos).collect();
        by_weight.sort_by(|a, b| w[*b].total_cmp(&w[*a]));
        let mut left = total - sizes.iter().sum::<usize>();
        for r in by_weight.iter().cycle() {
            if left == 0 {
                break;
            }
            sizes[*r] += 1;
            left -= 1;
        }
        assert_eq!(sizes.iter().sum::<usize>(), total);

        let end = end_of_time();
        let (mut teams, mut cum, mut bots, mut span) = (vec![], vec![], vec![], vec![]);
        for size in &sizes {
            let want =
                (5 + (*size as f64).max(1.0).log10() as usize * 4 + rng.below(10)).clamp(5, 30);
            let want = want.min(pool);
            let base = rng.below(pool);
            let mut team: Vec<usize> = Vec::new();
            while team.len() < want {
                let p = (base + rng.below(pool.min(400))) % pool;
                if !team.contains(&p) {
                    team.push(p);
                }
            }
            let mut acc = 0.0;
            cum.push(
                (0..team.len())
                    .map(|j| {
                        acc += 1.0 / (j as f64 + 1.0).powf(0.9);
                        acc
                    })
                    .collect(),
            );
            teams.push(team);
            bots.push([rng.unit() < BOT_PRESENCE[0], rng.unit() < BOT_PRESENCE[1]]);
            let years = 1.0 + 6.0 * rng.unit();
            let start = end - (years * 365.25 * 86_400.0) as i64;
            let last = if rng.unit() < 0.75 {
                end - rng.below(14 * 86_400) as i64
            } else {
                start + ((end - start) as f64 * (0.3 + 0.6 * rng.unit())) as i64
            };
            span.push((start, last.max(start + 3600)));
        }
        Plan {
            pool,
            sizes,
            teams,
            cum,
            bots,
            span,
        }
    }

    fn slug(r: usize) -> String {
        format!("repo-{r:04}")
    }

    fn hash(r: usize, i: usize) -> String {
        common::hash(((r as u64) << 32) | i as u64)
    }

    /// A commit of a branch that was merged (not on the default branch).
    fn side_hash(r: usize, i: usize) -> String {
        common::hash((1 << 63) | ((r as u64) << 32) | i as u64)
    }

    fn time(&self, r: usize, i: usize, jitter: f64) -> i64 {
        let (start, last) = self.span[r];
        let n = self.sizes[r] as f64;
        start + ((last - start) as f64 * ((i as f64 + jitter * 0.999) / n)) as i64
    }

    /// Commit `i` (0 = oldest) of repository `r`.
    fn commit(&self, people: &[(Author, i32)], r: usize, i: usize) -> CommitRecord {
        let mut rng = Rng::new(((r as u64) << 32) ^ i as u64 ^ 0xc0ff_ee00_0000_0000);
        let at = self.time(r, i, rng.unit());
        let u = rng.unit();
        let who = if self.bots[r][0] && u < BOT_SHARE[0] {
            Some(self.pool)
        } else if self.bots[r][1] && (BOT_SHARE[0]..BOT_SHARE[0] + BOT_SHARE[1]).contains(&u) {
            Some(self.pool + 1)
        } else {
            None
        };
        let merge = who.is_none() && i > 0 && rng.unit() < 0.04;
        let person = who.unwrap_or_else(|| {
            let cum = &self.cum[r];
            let x = rng.unit() * cum[cum.len() - 1];
            self.teams[r][cum.partition_point(|c| *c < x).min(cum.len() - 1)]
        });
        let (author, tz) = &people[person];
        let message = match who {
            Some(b) => bot_message(&mut rng, b - self.pool),
            None if merge => merge_message(&mut rng, r, i),
            None => message(&mut rng),
        };
        let mut parents = if i == 0 {
            vec![]
        } else {
            vec![Plan::hash(r, i - 1)]
        };
        if merge {
            parents.push(Plan::side_hash(r, i));
        }
        let tz = FixedOffset::east_opt(*tz).unwrap();
        CommitRecord {
            workspace: WS.into(),
            repo: Plan::slug(r),
            repo_uuid: format!("{{repo-{r:04}}}"),
            branch: "main".into(),
            hash: Plan::hash(r, i),
            date: Utc.timestamp_opt(at, 0).unwrap().with_timezone(&tz),
            committer: Some(Committer {
                raw: author.raw.clone(),
                name: author.name.clone(),
                email: author.email.clone(),
            }),
            author: author.clone(),
            message,
            parents,
            reachable: true,
        }
    }

    /// The newest commit's time over the whole store.
    fn newest(&self) -> i64 {
        (0..self.sizes.len())
            .map(|r| {
                let i = self.sizes[r] - 1;
                let mut rng = Rng::new(((r as u64) << 32) ^ i as u64 ^ 0xc0ff_ee00_0000_0000);
                self.time(r, i, rng.unit())
            })
            .max()
            .unwrap_or(0)
    }

    /// The repository of median size.
    fn mid_repo(&self) -> usize {
        let mut order: Vec<usize> = (0..self.sizes.len()).collect();
        order.sort_by_key(|r| (self.sizes[*r], *r));
        order[order.len() / 2]
    }

    /// An active human: the 10th by expected commits.
    fn active_author(&self) -> (usize, f64) {
        let mut expected = vec![0.0f64; self.pool];
        for r in 0..self.sizes.len() {
            let bots: f64 = (0..2)
                .filter(|b| self.bots[r][*b])
                .map(|b| BOT_SHARE[b])
                .sum();
            let humans = self.sizes[r] as f64 * (1.0 - bots);
            let total = self.cum[r][self.cum[r].len() - 1];
            let mut prev = 0.0;
            for (j, p) in self.teams[r].iter().enumerate() {
                expected[*p] += humans * (self.cum[r][j] - prev) / total;
                prev = self.cum[r][j];
            }
        }
        let mut order: Vec<usize> = (0..self.pool).collect();
        order.sort_by(|a, b| expected[*b].total_cmp(&expected[*a]).then(a.cmp(b)));
        let p = order[9.min(order.len() - 1)];
        (p, expected[p])
    }
}

#[rustfmt::skip]
const VERBS: [&str; 20] = [
    "Fix", "Add", "Update", "Remove", "Refactor", "Improve", "Handle", "Bump", "Rename", "Move",
    "Simplify", "Document", "Revert", "Allow", "Use", "Drop", "Support", "Cache", "Retry",
    "Validate",
];
#[rustfmt::skip]
const OBJECTS: [&str; 25] = [
    "null check", "payment retry", "login flow", "user settings page", "cache invalidation",
    "API client", "database migration", "feature flag", "error handling", "logging", "unit tests",
    "integration tests", "build script", "Dockerfile", "CI pipeline", "dependency versions",
    "rate limiter", "search index", "email templates", "timezone handling", "CSV export",
    "webhook handler", "session timeout", "pagination", "translations",
];
#[rustfmt::skip]
const PLACES: [&str; 12] = [
    "in checkout service", "for admin panel", "of the mobile app", "in billing",
    "around auth module", "in the scheduler", "for report generator", "in notification worker",
    "when the importer retries", "in gateway", "for the über-dashboard", "in café locator",
];
const PREFIXES: [&str; 8] = ["", "", "", "feat: ", "fix: ", "chore: ", "PROJ-", "["];
#[rustfmt::skip]
const WORDS: [&str; 48] = [
    "the", "request", "now", "returns", "a", "clear", "error", "when", "token", "expires", "and",
    "we", "retry", "with", "backoff", "instead", "of", "failing", "whole", "batch", "this", "was",
    "reported", "by", "support", "after", "last", "release", "it", "also", "removes", "an", "old",
    "workaround", "that", "is", "no", "longer", "needed", "since", "upstream", "fixed", "naïve",
    "parsing", "→", "see", "ticket", "tests",
];

fn subject(rng: &mut Rng) -> String {
    let mut s = String::new();
    match rng.pick(&PREFIXES) {
        "PROJ-" => s.push_str(&format!("PROJ-{} ", 100 + rng.below(9000))),
        "[" => s.push_str(&format!(
            "[{}] ",
            rng.pick(&["api", "web", "db", "ops", "ui"])
        )),
        p => s.push_str(p),
    }
    s.push_str(rng.pick(&VERBS));
    s.push(' ');
    s.push_str(rng.pick(&OBJECTS));
    if rng.unit() < 0.6 {
        s.push(' ');
        s.push_str(rng.pick(&PLACES));
    }
    if s.len() < 20 {
        s.push_str(&format!(" (#{})", 1000 + rng.below(9000)));
    }
    s
}

/// 20–400 bytes: a subject, and for ~45 % a body wrapped at 72.
fn message(rng: &mut Rng) -> String {
    let mut s = subject(rng);
    let u = rng.unit();
    let target = if u < 0.55 {
        return s;
    } else if u < 0.9 {
        80 + rng.below(140)
    } else {
        220 + rng.below(180)
    };
    s.push_str("\n\n");
    let mut line = 0;
    loop {
        let w = rng.pick(&WORDS);
        if s.len() + w.len() + 1 > target.min(400) {
            break;
        }
        if line + w.len() + 1 > 72 {
            s.push('\n');
            line = 0;
        } else if line > 0 {
            s.push(' ');
            line += 1;
        }
        s.push_str(w);
        line += w.len();
    }
    s.push('.');
    s
}

fn merge_message(rng: &mut Rng, r: usize, i: usize) -> String {
    let branch = format!(
        "feature/{}-{}",
        rng.pick(&["login", "billing", "search", "export", "ui"]),
        rng.below(500)
    );
    format!(
        "Merged in {branch} (pull request #{})\n\n{}\n\nApproved-by: {}",
        1 + (i / 25),
        subject(rng),
        human((r * 31 + i) % 60).0.name.unwrap_or_default()
    )
}

fn bot_message(rng: &mut Rng, b: usize) -> String {
    let v = format!("{}.{}.{}", rng.below(20), rng.below(40), rng.below(30));
    if b == 0 {
        let dep = rng.pick(&["serde", "react", "lodash", "spring-boot", "pytest", "axios"]);
        if rng.unit() < 0.5 {
            format!("Update dependency {dep} to v{v}")
        } else {
            format!("Update dependency {dep} to v{v}\n\nThis PR contains the following updates: {dep} minor → v{v}.\n\n---\nConfiguration: 📅 Schedule: at any time.")
        }
    } else {
        format!("Release {v} [skip ci]")
    }
}

// ---------------------------------------------------------------- figures

/// Figures as `key: value unit` lines, printed at the end.
#[derive(Default)]
struct Figures(Vec<(String, String, &'static str)>);

impl Figures {
    fn add(&mut self, key: &str, value: f64, unit: &'static str) {
        let v = if value.abs() >= 100.0 || value.fract() == 0.0 {
            format!("{value:.0}")
        } else if value.abs() >= 1.0 {
            format!("{value:.2}")
        } else {
            format!("{value:.4}")
        };
        self.0.push((key.to_owned(), v, unit));
    }
    fn ms(&mut self, key: &str, d: Duration) {
        self.add(key, d.as_secs_f64() * 1e3, "ms");
    }
    fn mb(&mut self, key: &str, kb: u64) {
        self.add(key, kb as f64 / 1024.0, "MB");
    }
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

// ---------------------------------------------------------------- build

fn build(dir: &Path, plan: &Plan, people: &[(Author, i32)], f: &mut Figures) {
    let total: usize = plan.sizes.iter().sum();
    let store = Store::open(dir).expect("open store");
    let started = Instant::now();
    let mut last_flush = Instant::now();
    let mut written = 0usize;
    let mut tenth_at = [Duration::ZERO; 11];
    let mut tenth_n = [0usize; 11];
    let mut next_tenth = 1;
    for r in 0..plan.sizes.len() {
        let slug = Plan::slug(r);
        let mut repo = RepoState::new(
            WS,
            &format!("{{repo-{r:04}}}"),
            &slug,
            &format!("{WS}/{slug}"),
            Utc::now(),
        );
        repo.default_branch = Some("main".into());
        let n = plan.sizes[r];
        // Newest first, like the crawler: page 1 = the newest 100 commits.
        let mut hi = n;
        while hi > 0 {
            let lo = hi.saturating_sub(100);
            let page: Vec<CommitRecord> =
                (lo..hi).rev().map(|i| plan.commit(people, r, i)).collect();
            let out = store.apply_page(&repo, &page).expect("apply page");
            repo = out.repo;
            written += out.new_commits as usize;
            hi = lo;
            if last_flush.elapsed() >= Duration::from_millis(250) {
                store.flush().expect("flush");
                last_flush = Instant::now();
            }
            while next_tenth <= 10 && written * 10 >= next_tenth * total {
                tenth_at[next_tenth] = started.elapsed();
                tenth_n[next_tenth] = written;
                eprintln!(
                    "  built {}0 % ({written} commits, {:.0} commits/s so far)",
                    next_tenth,
                    written as f64 / started.elapsed().as_secs_f64()
                );
                next_tenth += 1;
            }
        }
        repo.head = Some(Plan::hash(r, n - 1));
        repo.status = RepoStatus::Ok;
        store.put_repo(&repo).expect("put repo");
    }
    store.flush().expect("flush");
    let wall = started.elapsed();
    tenth_at[10] = tenth_at[10].max(wall);
    tenth_n[10] = total;
    assert_eq!(written, total, "the build wrote {written} new commits");
    let size = store.size_on_disk().unwrap_or(0);
    let bytes = common::dir_bytes(dir);
    drop(store);

    println!(
        "build: {total} commits over {} repositories, apply_page one thread, flush every 250 ms",
        plan.sizes.len()
    );
    for t in 1..=10 {
        let secs = (tenth_at[t] - tenth_at[t - 1]).as_secs_f64().max(1e-9);
        let rate = (tenth_n[t] - tenth_n[t - 1]) as f64 / secs;
        println!(
            "  {:>3}–{:>3} %                                      {rate:>8.0} commits/s",
            (t - 1) * 10,
            t * 10
        );
        f.add(
            &format!("build_{:02}_{:03}_pct", (t - 1) * 10, t * 10),
            rate,
            "commits/s",
        );
    }
    let rate = total as f64 / wall.as_secs_f64();
    println!(
        "  overall                                        {rate:>8.0} commits/s  ({:.1} s)",
        wall.as_secs_f64()
    );
    println!(
        "  store: size_on_disk {:.1} MB = {:.0} B/commit; directory {:.1} MB = {:.0} B/commit",
        size as f64 / 1e6,
        size as f64 / total as f64,
        bytes as f64 / 1e6,
        bytes as f64 / total as f64
    );
    f.add("build_commits_per_s", rate, "commits/s");
    f.add("build_s", wall.as_secs_f64(), "s");
    f.add(
        "store_size_on_disk_b_per_commit",
        size as f64 / total as f64,
        "B",
    );
    f.add("store_dir_b_per_commit", bytes as f64 / total as f64, "B");
    f.add("store_dir_mb", bytes as f64 / 1e6, "MB");
}

// ---------------------------------------------------------------- processes

/// The release binary on `store` (environment as inherited; no daemon).
fn bbcrawl(bin: &str, store: &Path, args: &[&str]) -> Command {
    let mut cmd = common::measured_command(bin);
    cmd.arg("--store").arg(store).args(args);
    cmd
}

/// Runs once, retrying while the store is still locked by a process (or
/// an in-process store just dropped: sled lets go a few ms later).
fn run_once(bin: &str, store: &Path, args: &[&str], to_null: bool) -> Measured {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut cmd = bbcrawl(bin, store, args);
        if to_null {
            cmd.stdout(Stdio::null());
        }
        let m = common::run_measured(&mut cmd, !to_null);
        if m.code != 0 && m.stderr.contains("locked") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        assert_eq!(m.code, 0, "bbcrawl {args:?} failed: {}", m.stderr);
        return m;
    }
}

/// `runs` runs: median wall, max peak RSS, and the last run.
fn run_many(
    bin: &str,
    store: &Path,
    args: &[&str],
    runs: usize,
    to_null: bool,
) -> (Duration, u64, Measured) {
    let ms: Vec<Measured> = (0..runs)
        .map(|_| run_once(bin, store, args, to_null))
        .collect();
    let rss = ms.iter().map(|m| m.peak_rss_kb).max().unwrap_or(0);
    let wall = median(ms.iter().map(|m| m.wall).collect());
    (wall, rss, ms.into_iter().last().unwrap())
}

/// `Store::open`, retried while the lock is held.
fn open_store(dir: &Path) -> (Store, Duration) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let t = Instant::now();
        match Store::open(dir) {
            Ok(s) => return (s, t.elapsed()),
            Err(e) if e.to_string().contains("locked") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("open {}: {e}", dir.display()),
        }
    }
}

/// A workspace of `SMALL_REPOS` × `SMALL_COMMITS` commits in `sim`, readable
/// with `SIM_TOKEN`.
fn small_workspace(sim: &Simulator, ws: &str) {
    sim.add_workspace(ws);
    for i in 0..SMALL_REPOS {
        sim.add_repo(ws, RepoSpec::new(&format!("svc-{i:02}"), SMALL_COMMITS));
    }
}

/// The environment of `bbcrawl sync` / `run` against the small world.
fn crawler_env(cmd: &mut Command, api_url: &str, ws: &str, store: &Path) {
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", std::env::temp_dir())
        .env("BBCRAWL_API_URL", api_url)
        .env("BBCRAWL_WORKSPACES", ws)
        .env("BITBUCKET_ACCESS_TOKEN", SIM_TOKEN)
        .env("BBCRAWL_STORE", store)
        .env("BBCRAWL_REQUESTS_PER_HOUR", "1000000")
        .env("BBCRAWL_AUDIT_INTERVAL_SECONDS", "31536000");
}

/// `query repos --workspace acme` as the binary prints it (to check that
/// the daemon's pass left the other workspace alone).
fn acme_repos(bin: &str, store: &Path) -> Vec<u8> {
    let mut cmd = Command::new(bin);
    cmd.arg("--store")
        .arg(store)
        .args(["query", "repos", "--workspace", WS, "--format", "ndjson"]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let out = cmd.output().expect("query repos");
    assert!(out.status.success(), "query repos failed");
    out.stdout
}

/// A GET on the daemon, streamed: (wall, status, bytes, newlines, first 64 KiB).
fn http_get(rt: &tokio::runtime::Runtime, url: &str) -> (Duration, u16, u64, u64, Vec<u8>) {
    rt.block_on(async {
        let client = reqwest::Client::new();
        let t = Instant::now();
        let mut resp = client.get(url).send().await.expect("GET daemon");
        let status = resp.status().as_u16();
        let (mut bytes, mut lines, mut head) = (0u64, 0u64, Vec::new());
        while let Some(chunk) = resp.chunk().await.expect("daemon body") {
            bytes += chunk.len() as u64;
            lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
            if head.len() < 1 << 16 {
                head.extend_from_slice(&chunk[..chunk.len().min((1 << 16) - head.len())]);
            }
        }
        (t.elapsed(), status, bytes, lines, head)
    })
}

/// Sum of `bbcrawl_sync_passes_total` over its labels, by result.
fn passes(metrics: &str) -> (f64, String) {
    let mut n = 0.0;
    let mut results = Vec::new();
    for l in metrics.lines() {
        if let Some(rest) = l.strip_prefix("bbcrawl_sync_passes_total") {
            let v: f64 = rest
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            if v > 0.0 {
                n += v;
                results.push(rest.to_owned());
            }
        }
    }
    (n, results.join(", "))
}

fn stats_commits(json: &[u8]) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(json).expect("stats json");
    let v = if v.is_array() { v[0].clone() } else { v };
    v["commits"].as_u64().expect("stats: commits")
}

// ---------------------------------------------------------------- main

fn main() {
    common::measure_child_main();
    let total = env_num("BBCRAWL_BENCH_COMMITS", 10_000_000usize);
    let repos = env_num("BBCRAWL_BENCH_REPOS", 2_000usize).max(1);
    let pool = env_num("BBCRAWL_BENCH_AUTHORS", 3_000usize).clamp(30, 3_600);
    let runs = env_num("BBCRAWL_BENCH_RUNS", 5usize).max(1);
    let copy_max_mb = env_num("BBCRAWL_BENCH_COPY_MAX_MB", 2_000u64);
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target");
    let dir = target.join(format!("bench-store-{total}-{repos}"));
    let complete = target.join(format!("bench-store-{total}-{repos}.complete"));
    let bin = env!("CARGO_BIN_EXE_bbcrawl");
    let mut f = Figures::default();

    let t = Instant::now();
    let plan = Plan::new(total, repos, pool);
    let people = people(pool);
    let mid = plan.mid_repo();
    let mid_slug = Plan::slug(mid);
    let (active, active_expected) = plan.active_author();
    let active_author = people[active].0.clone();
    // `<email>`: a substring of this author's `Name <email>` and no one else's.
    let author_needle = format!("<{}>", active_author.email.clone().unwrap());
    let newest = plan.newest();
    let since_t = Utc.timestamp_opt(newest - 365 * 86_400, 0).unwrap();
    let since = since_t.format("%Y-%m-%d").to_string();
    let since_t: DateTime<Utc> = query::parse_time(&since).expect("since");
    let show_hash = Plan::hash(mid, plan.sizes[mid] / 2);
    let show_prefix = &show_hash[..7];
    let biggest = plan.sizes.iter().max().copied().unwrap_or(0);
    println!("binary: {bin}");
    println!("store: {}", dir.display());
    println!(
        "data: {total} commits over {repos} repositories (largest {biggest}, median {} = {mid_slug}, smallest {}), {pool} people + 2 bots, newest commit {}; plan made in {:.1} s",
        plan.sizes[mid],
        plan.sizes.iter().min().copied().unwrap_or(0),
        Utc.timestamp_opt(newest, 0).unwrap().format("%Y-%m-%d"),
        t.elapsed().as_secs_f64()
    );
    println!(
        "questions: --repo {mid_slug} ({} commits); --author {author_needle:?} ({}, ~{active_expected:.0} commits) --since {since}; show {show_prefix}",
        plan.sizes[mid],
        active_author.name.as_deref().unwrap_or("")
    );

    // A stale address file of a killed daemon would send the CLI to it.
    let _ = std::fs::remove_file(dir.join("daemon.json"));
    let rebuild =
        !dir.exists() || !complete.exists() || std::env::var_os("BBCRAWL_BENCH_REBUILD").is_some();
    if rebuild {
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_file(&complete);
        build(&dir, &plan, &people, &mut f);
        std::fs::write(&complete, b"built\n").expect("write marker");
        // The first question after the build, as a process: sled replays
        // the log the build wrote on this first open.
        let first = run_once(
            bin,
            &dir,
            &[
                "query", "commits", "--repo", &mid_slug, "--limit", "50", "--format", "ndjson",
            ],
            false,
        );
        println!(
            "  first open after build: query commits --repo R --limit 50   {:>8.1} ms  (peak RSS {:.1} MB)",
            first.wall.as_secs_f64() * 1e3,
            mb(first.peak_rss_kb)
        );
        f.ms("first_query_ms", first.wall);
        f.mb("first_query_rss_mb", first.peak_rss_kb);
    } else {
        println!("build: store reused (BBCRAWL_BENCH_REBUILD=1 to build it again); no build or first-open figures");
    }

    // In-process: open, then queries after open.
    let (store, open) = open_store(&dir);
    let size = store.size_on_disk().unwrap_or(0);
    let author_filter = CommitFilter {
        author: Some(author_needle.clone()),
        since: Some(since_t),
        limit: Some(50),
        ..CommitFilter::default()
    };
    let repo_filter = CommitFilter {
        repos: vec![mid_slug.clone()],
        limit: Some(50),
        ..CommitFilter::default()
    };
    let run = |f: &CommitFilter| {
        let mut times = Vec::new();
        let mut n = 0;
        for _ in 0..7 {
            let t = Instant::now();
            n = query::commits(&store, f)
                .expect("query")
                .collect::<Result<Vec<_>, _>>()
                .expect("records")
                .len();
            times.push(t.elapsed());
        }
        (median(times), n)
    };
    let (author_q, author_n) = run(&author_filter);
    let (repo_q, repo_n) = run(&repo_filter);
    let t = Instant::now();
    let authors = query::authors(&store, &CommitFilter::default()).expect("authors");
    let authors_q = t.elapsed();
    drop(store);
    assert!(author_n > 0 && repo_n > 0, "a filtered query found nothing");
    println!("query benchmark: {total} commits over {repos} repositories, store {:.1} MB ({:.0} bytes/commit)", size as f64 / 1e6, size as f64 / total as f64);
    println!(
        "  store open (in-process)                          {:>8.1} ms",
        open.as_secs_f64() * 1e3
    );
    println!(
        "  --author X --since D --limit 50, after open      {:>8.2} ms  ({author_n} rows)",
        author_q.as_secs_f64() * 1e3
    );
    println!(
        "  --repo R --limit 50, after open                  {:>8.2} ms  ({repo_n} rows)",
        repo_q.as_secs_f64() * 1e3
    );
    println!(
        "  query authors (everything), after open           {:>8.1} ms  ({} authors)",
        authors_q.as_secs_f64() * 1e3,
        authors.len()
    );
    f.ms("open_ms", open);
    f.ms("inproc_author_query_ms", author_q);
    f.ms("inproc_repo_query_ms", repo_q);
    f.ms("inproc_authors_ms", authors_q);

    // Whole processes of the release binary: median of `runs`, max RSS.
    let author_args = [
        "query",
        "commits",
        "--author",
        &author_needle,
        "--since",
        &since,
        "--limit",
        "50",
        "--format",
        "ndjson",
    ];
    let repo_args = [
        "query", "commits", "--repo", &mid_slug, "--limit", "50", "--format", "ndjson",
    ];
    let (author_p, author_rss, _) = run_many(bin, &dir, &author_args, runs, false);
    let (repo_p, repo_rss, _) = run_many(bin, &dir, &repo_args, runs, false);
    let (authors_p, authors_rss, _) = run_many(
        bin,
        &dir,
        &["query", "authors", "--format", "ndjson"],
        runs,
        false,
    );
    let (stats_p, stats_rss, stats_out) = run_many(
        bin,
        &dir,
        &["query", "stats", "--format", "json"],
        runs,
        false,
    );
    let commits = stats_commits(&stats_out.stdout_head);
    let (show_p, show_rss, show_out) = run_many(bin, &dir, &["show", show_prefix], runs, false);
    assert!(show_out.stdout_bytes > 0, "show printed nothing");
    let (export_p, export_rss, _) =
        run_many(bin, &dir, &["export", "--format", "ndjson"], runs, true);
    let export_rate = commits as f64 / export_p.as_secs_f64();

    println!(
        "  process: query commits --author … --limit 50     {:>8.1} ms  (peak RSS {:.1} MB)",
        author_p.as_secs_f64() * 1e3,
        mb(author_rss)
    );
    println!(
        "  process: query commits --repo … --limit 50       {:>8.1} ms  (peak RSS {:.1} MB)",
        repo_p.as_secs_f64() * 1e3,
        mb(repo_rss)
    );
    println!(
        "  process: query authors                           {:>8.1} ms  (peak RSS {:.1} MB)",
        authors_p.as_secs_f64() * 1e3,
        mb(authors_rss)
    );
    println!(
        "  process: query stats                             {:>8.1} ms  (peak RSS {:.1} MB; {commits} commits)",
        stats_p.as_secs_f64() * 1e3,
        mb(stats_rss)
    );
    println!(
        "  process: show <7-hex prefix>                     {:>8.1} ms  (peak RSS {:.1} MB)",
        show_p.as_secs_f64() * 1e3,
        mb(show_rss)
    );
    println!(
        "  process: export > /dev/null                      {:>8.1} s   ({export_rate:.0} commits/s; peak RSS {:.1} MB)",
        export_p.as_secs_f64(),
        mb(export_rss)
    );
    println!(
        "  (whole processes: median of {runs} runs, peak RSS = max ru_maxrss of the runs; reaper {:.1} MB)",
        mb(common::max_reaper_rss_kb())
    );
    f.ms("proc_author_query_ms", author_p);
    f.mb("proc_author_query_rss_mb", author_rss);
    f.ms("proc_repo_query_ms", repo_p);
    f.mb("proc_repo_query_rss_mb", repo_rss);
    f.ms("proc_authors_ms", authors_p);
    f.mb("proc_authors_rss_mb", authors_rss);
    f.ms("proc_stats_ms", stats_p);
    f.mb("proc_stats_rss_mb", stats_rss);
    f.ms("proc_show_ms", show_p);
    f.mb("proc_show_rss_mb", show_rss);
    f.add("proc_export_s", export_p.as_secs_f64(), "s");
    f.add("proc_export_commits_per_s", export_rate, "commits/s");
    f.mb("proc_export_rss_mb", export_rss);
    f.add("store_commits", commits as f64, "commits");

    // The change feed (issue 16), when the binary has it: every commit is
    // one `commit_stored` change here (the bench store has no force push).
    let help = Command::new(bin)
        .args(["export", "--help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if help.contains("--changes") {
        let (changes_p, changes_rss, _) = run_many(bin, &dir, &["export", "--changes"], runs, true);
        let rate = commits as f64 / changes_p.as_secs_f64();
        println!(
            "  process: export --changes > /dev/null            {:>8.1} s   ({rate:.0} changes/s; peak RSS {:.1} MB)",
            changes_p.as_secs_f64(),
            mb(changes_rss)
        );
        f.add("proc_changes_s", changes_p.as_secs_f64(), "s");
        f.add("proc_changes_per_s", rate, "changes/s");
        f.mb("proc_changes_rss_mb", changes_rss);
    }

    // Parquet (issue 16 §2), when the binary has it: every commit into a
    // file (written beside it, synced, renamed), against NDJSON into a
    // file the same way in the same run.
    if help.contains("parquet") {
        let out = common::fresh_dir("query-parquet");
        let (pq_path, nd_path) = (out.join("commits.parquet"), out.join("commits.ndjson"));
        let (pq, pq_rss, _) = run_many(
            bin,
            &dir,
            &[
                "export",
                "--format",
                "parquet",
                "--output",
                pq_path.to_str().unwrap(),
            ],
            runs,
            true,
        );
        let (nd, nd_rss, _) = run_many(
            bin,
            &dir,
            &[
                "export",
                "--format",
                "ndjson",
                "--output",
                nd_path.to_str().unwrap(),
            ],
            runs,
            true,
        );
        let bytes = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0) as f64;
        let (pq_bytes, nd_bytes) = (bytes(&pq_path), bytes(&nd_path));
        let _ = std::fs::remove_dir_all(&out);
        let per = |b: f64| b / commits.max(1) as f64;
        let (pq_rate, nd_rate) = (
            commits as f64 / pq.as_secs_f64(),
            commits as f64 / nd.as_secs_f64(),
        );
        println!(
            "  process: export --format parquet --output F      {:>8.1} s   ({pq_rate:.0} commits/s; {:.1} bytes/commit; peak RSS {:.1} MB)",
            pq.as_secs_f64(),
            per(pq_bytes),
            mb(pq_rss)
        );
        println!(
            "  process: export --format ndjson --output F       {:>8.1} s   ({nd_rate:.0} commits/s; {:.1} bytes/commit; peak RSS {:.1} MB)",
            nd.as_secs_f64(),
            per(nd_bytes),
            mb(nd_rss)
        );
        f.add("proc_parquet_s", pq.as_secs_f64(), "s");
        f.add("proc_parquet_commits_per_s", pq_rate, "commits/s");
        f.add("parquet_bytes_per_commit", per(pq_bytes), "bytes");
        f.mb("proc_parquet_rss_mb", pq_rss);
        f.add("proc_ndjson_file_commits_per_s", nd_rate, "commits/s");
        f.add("ndjson_bytes_per_commit", per(nd_bytes), "bytes");
    }

    if std::env::var("BBCRAWL_BENCH_DAEMON").as_deref() != Ok("0") {
        small_worlds(bin, &dir, copy_max_mb, &mid_slug, &author_filter, &mut f);
    }

    println!("figures:");
    for (k, v, unit) in &f.0 {
        println!("{k}: {v} {unit}");
    }
}

/// `bbcrawl sync` of a small workspace into a copy of the store (when
/// copying is cheap), then `bbcrawl run` on the store itself crawling
/// another small workspace, asked over its API.
fn small_worlds(
    bin: &str,
    dir: &Path,
    copy_max_mb: u64,
    mid_slug: &str,
    author_filter: &CommitFilter,
    f: &mut Figures,
) {
    let sim = Simulator::new(SimOptions {
        requests_per_hour: 0,
        ..SimOptions::default()
    });
    small_workspace(&sim, DAEMON_WS);
    small_workspace(&sim, SYNC_WS);
    sim.add_credential(SimCredential::AccessToken {
        token: SIM_TOKEN.into(),
        scopes: vec!["repository".into()],
        workspaces: vec![DAEMON_WS.into(), SYNC_WS.into()],
    });
    let server = BackgroundSimulator::start(sim).expect("serve simulator");
    let api_url = server.api_url().to_owned();
    let small = SMALL_REPOS * SMALL_COMMITS;

    // `bbcrawl sync` into a throwaway copy, if the copy is cheap.
    let bytes = common::dir_bytes(dir);
    if bytes / 1_000_000 <= copy_max_mb {
        let copy = common::fresh_dir("query-sync-copy");
        let t = Instant::now();
        common::copy_dir(dir, &copy).expect("copy the store");
        let copy_time = t.elapsed();
        let mut cmd = common::measured_command(bin);
        cmd.args(["-q", "sync"]);
        crawler_env(&mut cmd, &api_url, SYNC_WS, &copy);
        cmd.stdout(Stdio::null());
        let m = common::run_measured(&mut cmd, false);
        assert_eq!(m.code, 0, "sync failed: {}", m.stderr);
        let _ = std::fs::remove_dir_all(&copy);
        println!(
            "sync: `bbcrawl -q sync` of {SMALL_REPOS} × {SMALL_COMMITS} commits (workspace {SYNC_WS}) into a copy of the store ({:.1} GB copied in {:.1} s)",
            bytes as f64 / 1e9,
            copy_time.as_secs_f64()
        );
        println!(
            "  wall {:.2} s, CPU {:.2} s, peak RSS {:.1} MB",
            m.wall.as_secs_f64(),
            m.cpu,
            mb(m.peak_rss_kb)
        );
        f.add("sync_s", m.wall.as_secs_f64(), "s");
        f.add(
            "sync_commits_per_s",
            small as f64 / m.wall.as_secs_f64(),
            "commits/s",
        );
        f.mb("sync_rss_mb", m.peak_rss_kb);
    } else {
        println!(
            "sync: skipped, the store ({:.1} GB) is above BBCRAWL_BENCH_COPY_MAX_MB={copy_max_mb}: see the daemon's pass below",
            bytes as f64 / 1e9
        );
    }

    // The daemon on the store itself: a pass over another workspace never
    // touches `acme` (checked below).
    let before = acme_repos(bin, dir);
    let log = common::fresh_dir("query-daemon").join("daemon.log");
    let mut cmd = Command::new(bin);
    cmd.arg("run");
    crawler_env(&mut cmd, &api_url, DAEMON_WS, dir);
    cmd.env("BBCRAWL_LISTEN", "127.0.0.1:0")
        .env("BBCRAWL_INTERVAL_SECONDS", "86400")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("daemon log"));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let t = Instant::now();
    let mut child = cmd.spawn().expect("spawn bbcrawl run");
    let pid = child.id();
    let fail = |why: &str| -> ! {
        panic!(
            "daemon: {why}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    };
    let deadline = Instant::now() + Duration::from_secs(3600);
    let base = loop {
        if let Ok(text) = std::fs::read_to_string(dir.join("daemon.json")) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                if let Some(addr) = v["addr"].as_str() {
                    break format!("http://{addr}");
                }
            }
        }
        if let Ok(Some(s)) = child.try_wait() {
            fail(&format!("exited {s}"));
        }
        if Instant::now() > deadline {
            fail("no daemon.json");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let listening = t.elapsed();
    let (pass_done, results) = loop {
        let (_, status, _, _, body) = http_get(&rt, &format!("{base}/metrics"));
        let (n, results) = passes(&String::from_utf8_lossy(&body));
        if status == 200 && n >= 1.0 {
            break (t.elapsed(), results);
        }
        if let Ok(Some(s)) = child.try_wait() {
            fail(&format!("exited {s}"));
        }
        if Instant::now() > deadline {
            fail("no pass within an hour");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (_, _, _, _, repos_body) = http_get(
        &rt,
        &format!("{base}/api/v1/repos?workspace={DAEMON_WS}&format=ndjson"),
    );
    let ws_commits: u64 = String::from_utf8_lossy(&repos_body)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["commits"].as_u64())
        .sum();

    let mut params = url::form_urlencoded::Serializer::new(String::new());
    params
        .append_pair("author", author_filter.author.as_deref().unwrap())
        .append_pair("since", &author_filter.since.unwrap().to_rfc3339())
        .append_pair("limit", "50")
        .append_pair("format", "ndjson");
    let author_url = format!("{base}/api/v1/commits?{}", params.finish());
    let repo_url = format!("{base}/api/v1/commits?repo={mid_slug}&limit=50&format=ndjson");
    let runs = env_num("BBCRAWL_BENCH_RUNS", 5usize).max(1);
    let api = |url: &str| {
        let mut times = Vec::new();
        let mut rows = 0;
        for _ in 0..runs {
            let (d, status, _, lines, head) = http_get(&rt, url);
            assert_eq!(status, 200, "{url}: {}", String::from_utf8_lossy(&head));
            times.push(d);
            rows = lines;
        }
        (median(times), rows)
    };
    let (author_a, author_rows) = api(&author_url);
    let (repo_a, repo_rows) = api(&repo_url);
    let (authors_a, _) = api(&format!("{base}/api/v1/authors?format=ndjson"));
    let (stats_a, _) = api(&format!("{base}/api/v1/stats?format=json"));
    // Before the export: the pass and the queries alone.
    let hwm_before_export = common::vm_hwm_kb(pid).unwrap_or(0);
    let (export_a, status, export_bytes, export_lines, _) =
        http_get(&rt, &format!("{base}/api/v1/export?format=ndjson"));
    assert_eq!(status, 200, "export over the API");
    let hwm = common::vm_hwm_kb(pid).unwrap_or(0);
    common::signal(pid, 15);
    // Its own VmHWM, read before it stops: `ru_maxrss` of a child spawned
    // straight from this (large) process would include this one's.
    let (code, _, cpu) = common::wait_rusage(pid);
    drop(child);
    let daemon_rss = hwm;
    let after = acme_repos(bin, dir);
    let unchanged = before == after;
    drop(server);

    println!(
        "daemon: `bbcrawl run` on the store, crawling {DAEMON_WS} ({SMALL_REPOS} × {SMALL_COMMITS} commits) from the simulator"
    );
    println!(
        "  listening after {:.2} s; first pass done after {:.2} s ({results}); {DAEMON_WS} holds {ws_commits} commits",
        listening.as_secs_f64(),
        pass_done.as_secs_f64()
    );
    println!(
        "  api: commits --author … --limit 50               {:>8.1} ms  ({author_rows} rows)",
        author_a.as_secs_f64() * 1e3
    );
    println!(
        "  api: commits --repo … --limit 50                 {:>8.1} ms  ({repo_rows} rows)",
        repo_a.as_secs_f64() * 1e3
    );
    println!(
        "  api: authors                                     {:>8.1} ms",
        authors_a.as_secs_f64() * 1e3
    );
    println!(
        "  api: stats                                       {:>8.1} ms",
        stats_a.as_secs_f64() * 1e3
    );
    println!(
        "  api: export                                      {:>8.1} s   ({:.0} commits/s, {:.1} MB)",
        export_a.as_secs_f64(),
        export_lines as f64 / export_a.as_secs_f64(),
        export_bytes as f64 / 1e6
    );
    println!(
        "  peak RSS {:.1} MB (VmHWM before SIGTERM), CPU {cpu:.1} s, exit {code}; acme's repository records {}",
        mb(daemon_rss),
        if unchanged { "unchanged" } else { "CHANGED" }
    );
    f.add("daemon_listening_s", listening.as_secs_f64(), "s");
    f.add("daemon_first_pass_s", pass_done.as_secs_f64(), "s");
    f.add("daemon_workspace_commits", ws_commits as f64, "commits");
    f.ms("daemon_api_author_query_ms", author_a);
    f.ms("daemon_api_repo_query_ms", repo_a);
    f.ms("daemon_api_authors_ms", authors_a);
    f.ms("daemon_api_stats_ms", stats_a);
    f.add("daemon_api_export_s", export_a.as_secs_f64(), "s");
    f.add(
        "daemon_api_export_commits_per_s",
        export_lines as f64 / export_a.as_secs_f64(),
        "commits/s",
    );
    f.mb("daemon_rss_before_export_mb", hwm_before_export);
    f.mb("daemon_rss_mb", daemon_rss);
    f.add("daemon_cpu_s", cpu, "s");
    f.add(
        "daemon_other_workspace_unchanged",
        f64::from(u8::from(unchanged)),
        "bool",
    );
}
