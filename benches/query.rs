//! Query benchmark (issue 4): a store of 1,000,000 commits over 1,000
//! repositories, then store open time, filtered queries (in-process after
//! open, and as whole processes of the real binary), `query authors` over
//! everything, and `export` throughput.
//!
//! Run: `cargo bench --bench query` (release build of the library and the
//! binary). `BBCRAWL_BENCH_COMMITS` changes the size (default 1,000,000);
//! the store is built once under `target/bench-store-N` and reused.

#[path = "common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bbcrawl::query::{self, CommitFilter};
use bbcrawl::record::RepoState;
use bbcrawl::record::{Author, CommitRecord, Committer};
use bbcrawl::store::Store;
use chrono::{DateTime, FixedOffset, TimeZone, Utc};
use common::{env_num, WS};

const REPOS: usize = 1000;
const AUTHORS: usize = 300;

/// The hash of commit `i` of repository `repo`.
fn commit_hash(repo: usize, i: usize) -> String {
    common::hash(((repo as u64) << 32) | i as u64)
}

fn author(n: usize) -> Author {
    let name = format!("Developer {n:03}");
    let email = format!("dev{n:03}@example.com");
    let account = n % 3 != 0;
    Author {
        raw: Some(format!("{name} <{email}>")),
        name: Some(name.clone()),
        email: Some(email),
        uuid: account.then(|| format!("{{00000000-0000-4000-8000-{n:012}}}")),
        account_id: account.then(|| format!("5b10a2844c20165700ede{n:03}")),
        display_name: account.then(|| format!("Dev {n}")),
    }
}

fn build(dir: &Path, total: usize) {
    let started = Instant::now();
    let store = Store::open(dir).expect("open store");
    let per_repo = total / REPOS;
    let base = Utc.with_ymd_and_hms(2023, 1, 1, 0, 0, 0).unwrap();
    let offsets = [0, 19800, -25200, 3600];
    for r in 0..REPOS {
        let mut repo = RepoState::new(
            WS,
            &format!("{{repo-{r:04}}}"),
            &format!("repo-{r:04}"),
            &format!("{WS}/repo-{r:04}"),
            Utc::now(),
        );
        repo.default_branch = Some("main".into());
        for page in 0..per_repo.div_ceil(100) {
            let commits: Vec<CommitRecord> = (page * 100..((page + 1) * 100).min(per_repo))
                .map(|i| {
                    let at = base + chrono::Duration::seconds((i * 60_000 + r * 97) as i64);
                    let tz = FixedOffset::east_opt(offsets[(i + r) % offsets.len()]).unwrap();
                    let a = author((i * 7 + r * 13) % AUTHORS);
                    CommitRecord {
                        workspace: WS.into(),
                        repo: repo.slug.clone(),
                        repo_uuid: repo.uuid.clone(),
                        branch: "main".into(),
                        hash: commit_hash(r, i),
                        date: at.with_timezone(&tz),
                        committer: Some(Committer {
                            raw: a.raw.clone(),
                            name: a.name.clone(),
                            email: a.email.clone(),
                        }),
                        author: a,
                        message: format!("Change {i} in repo {r}: adjust the widget, fix the frobnicator\n\nLonger explanation of change {i}."),
                        parents: if i == 0 { vec![] } else { vec![commit_hash(r, i - 1)] },
                        reachable: true,
                    }
                })
                .collect();
            repo = store.apply_page(&repo, &commits).expect("apply page").repo;
        }
        repo.head = Some(commit_hash(r, per_repo - 1));
        repo.status = bbcrawl::record::RepoStatus::Ok;
        store.put_repo(&repo).expect("put repo");
        if r % 100 == 99 {
            store.flush().expect("flush");
            eprintln!(
                "  built {} repositories ({:.0} commits/s)",
                r + 1,
                ((r + 1) * per_repo) as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    store.flush().expect("flush");
    eprintln!(
        "built {total} commits in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time_process(bin: &str, store: &Path, args: &[&str]) -> (Duration, usize) {
    let mut times = Vec::new();
    let mut out_len = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let out = Command::new(bin)
            .arg("--store")
            .arg(store)
            .args(args)
            .stderr(Stdio::inherit())
            .output()
            .expect("run bbcrawl");
        times.push(t.elapsed());
        assert!(out.status.success(), "{args:?} failed");
        out_len = out.stdout.len();
    }
    (median(times), out_len)
}

fn main() {
    let total = env_num("BBCRAWL_BENCH_COMMITS", 1_000_000usize);
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target");
    let dir = target.join(format!("bench-store-{total}"));
    if !dir.join("db").exists() || std::env::var_os("BBCRAWL_BENCH_REBUILD").is_some() {
        let _ = std::fs::remove_dir_all(&dir);
        build(&dir, total);
    }
    let since = "2024-06-01";
    let since_t: DateTime<Utc> = Utc.with_ymd_and_hms(2024, 6, 1, 0, 0, 0).unwrap();

    // In-process: open, then queries after open.
    let t = Instant::now();
    let store = Store::open(&dir).expect("open");
    let open = t.elapsed();
    let size = store.size_on_disk().unwrap_or(0);
    let author_filter = CommitFilter {
        author: Some("developer 042".into()),
        since: Some(since_t),
        limit: Some(50),
        ..CommitFilter::default()
    };
    let repo_filter = CommitFilter {
        repos: vec!["repo-0500".into()],
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
    println!("query benchmark: {total} commits over {REPOS} repositories, store {:.1} MB ({:.0} bytes/commit)", size as f64 / 1e6, size as f64 / total as f64);
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

    // Whole processes of the release binary.
    let bin = env!("CARGO_BIN_EXE_bbcrawl");
    let (author_p, _) = time_process(
        bin,
        &dir,
        &[
            "query",
            "commits",
            "--author",
            "Developer 042",
            "--since",
            since,
            "--limit",
            "50",
            "--format",
            "ndjson",
        ],
    );
    let (repo_p, _) = time_process(
        bin,
        &dir,
        &[
            "query",
            "commits",
            "--repo",
            "repo-0500",
            "--limit",
            "50",
            "--format",
            "ndjson",
        ],
    );
    let (authors_p, _) = time_process(bin, &dir, &["query", "authors", "--format", "ndjson"]);
    let t = Instant::now();
    let status = Command::new(bin)
        .arg("--store")
        .arg(&dir)
        .args(["export", "--format", "ndjson"])
        .stdout(Stdio::null())
        .status()
        .expect("export");
    let export = t.elapsed();
    assert!(status.success());

    println!(
        "  process: query commits --author … --limit 50     {:>8.1} ms",
        author_p.as_secs_f64() * 1e3
    );
    println!(
        "  process: query commits --repo … --limit 50       {:>8.1} ms",
        repo_p.as_secs_f64() * 1e3
    );
    println!(
        "  process: query authors                           {:>8.1} ms",
        authors_p.as_secs_f64() * 1e3
    );
    println!(
        "  process: export > /dev/null                      {:>8.1} s   ({:.0} commits/s)",
        export.as_secs_f64(),
        total as f64 / export.as_secs_f64()
    );
}
