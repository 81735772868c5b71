//! Micro-benchmarks (criterion): decode of a full-shape and of a
//! `fields`-trimmed 100-commit page as the simulator serves them, a store
//! write of one 100-commit page of fresh commits (commits + indexes +
//! cursor, one atomic batch), and the filtered queries on a 100k-commit store.
//!
//! Run: `cargo bench --bench micro` (`-- decode` etc. to filter).
//! `BBCRAWL_BENCH_QUERY_COMMITS` sets the query store's size (default 100,000).

#[path = "common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use bbcrawl::bitbucket::models::{Commit, Page};
use bbcrawl::demo::BackgroundSimulator;
use bbcrawl::query::{self, CommitFilter};
use bbcrawl::record::CommitRecord;
use bbcrawl::record::RepoState;
use bbcrawl::simulator::SimOptions;
use bbcrawl::store::Store;
use common::*;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

struct Fixture {
    full: bytes::Bytes,
    trimmed: bytes::Bytes,
    /// A real decoded 100-commit page, used as a template for fresh commits.
    template: Vec<CommitRecord>,
}

/// Built once for every benchmark group of the run.
static FIXTURE: std::sync::LazyLock<Fixture> = std::sync::LazyLock::new(fixture);

fn fixture() -> Fixture {
    let sim = simulator(
        SimOptions {
            requests_per_hour: 0,
            ..SimOptions::default()
        },
        2,
        1000,
    );
    let server = BackgroundSimulator::start(sim.clone()).expect("serve");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (full, trimmed) = page_bodies(&rt, server.api_url(), "repo-0000");
    let r = &sim.repos(WS)[0];
    let page: Page<Commit> = serde_json::from_slice(&trimmed).expect("decode");
    let template = page
        .values
        .iter()
        .map(|c| c.to_record(WS, &r.slug, &r.uuid, "main"))
        .collect();
    eprintln!(
        "page bytes: full {} ({} per commit), trimmed {} ({} per commit)",
        full.len(),
        full.len() / 100,
        trimmed.len(),
        trimmed.len() / 100
    );
    Fixture {
        full,
        trimmed,
        template,
    }
}

/// The template page with fresh hashes (parents chained) for page `n` of a repository.
fn fresh_page(template: &[CommitRecord], repo: &RepoState, n: u64) -> Vec<CommitRecord> {
    template
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let k = n * 1000 + i as u64;
            let mut c = c.clone();
            c.repo = repo.slug.clone();
            c.repo_uuid = repo.uuid.clone();
            c.hash = hash(k ^ (repo.uuid.len() as u64) << 48);
            c.parents = vec![hash(k + 1)];
            c.date += chrono::Duration::seconds(k as i64 * 37);
            c
        })
        .collect()
}

fn decode(c: &mut Criterion) {
    let f = &*FIXTURE;
    let mut g = c.benchmark_group("decode_100_commit_page");
    g.throughput(Throughput::Elements(100));
    g.bench_function("full_shape", |b| {
        b.iter(|| serde_json::from_slice::<Page<Commit>>(&f.full).expect("decode"))
    });
    g.bench_function("fields_trimmed", |b| {
        b.iter(|| serde_json::from_slice::<Page<Commit>>(&f.trimmed).expect("decode"))
    });
    g.finish();
}

fn store_write(c: &mut Criterion) {
    let f = &*FIXTURE;
    let dir = fresh_dir("micro-write");
    let store = Store::open(&dir).expect("open");
    let mut repo = RepoState::new(
        WS,
        "{bench-repo}",
        "bench-repo",
        "acme/bench-repo",
        chrono::Utc::now(),
    );
    let mut n = 0u64;
    let mut g = c.benchmark_group("store_write");
    g.throughput(Throughput::Elements(100));
    g.sample_size(30);
    g.bench_function("apply_page_100_fresh_commits", |b| {
        b.iter_custom(|iters| {
            let pages: Vec<_> = (0..iters)
                .map(|_| {
                    n += 1;
                    fresh_page(&f.template, &repo, n)
                })
                .collect();
            let t = Instant::now();
            for p in &pages {
                let out = store.apply_page(&repo, p).expect("apply");
                debug_assert_eq!(out.new_commits, 100);
                repo = out.repo;
            }
            store.flush().expect("flush");
            t.elapsed()
        })
    });
    g.finish();
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

fn queries(c: &mut Criterion) {
    let f = &*FIXTURE;
    let total = env_num("BBCRAWL_BENCH_QUERY_COMMITS", 100_000u64);
    let repos = 100u64;
    let dir = fresh_dir("micro-query");
    let store = Store::open(&dir).expect("open");
    let t = Instant::now();
    for r in 0..repos {
        let mut state = RepoState::new(
            WS,
            &format!("{{repo-{r:04}}}"),
            &format!("repo-{r:04}"),
            &format!("acme/repo-{r:04}"),
            chrono::Utc::now(),
        );
        for p in 0..(total / repos).div_ceil(100) {
            let page = fresh_page(&f.template, &state, r * 1_000_000 + p);
            state = store.apply_page(&state, &page).expect("apply").repo;
        }
        state.status = bbcrawl::record::RepoStatus::Ok;
        store.put_repo(&state).expect("put repo");
    }
    store.flush().expect("flush");
    eprintln!(
        "query store: {total} commits built in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let author = f.template[0]
        .author
        .name
        .clone()
        .unwrap_or_else(|| "a".into())
        .to_lowercase();
    let by_author = CommitFilter {
        author: Some(author),
        limit: Some(50),
        ..CommitFilter::default()
    };
    let by_repo = CommitFilter {
        repos: vec!["repo-0050".into()],
        limit: Some(50),
        ..CommitFilter::default()
    };
    let mut g = c.benchmark_group(format!("query_{total}_commits"));
    g.measurement_time(Duration::from_secs(5));
    for (name, filter) in [("author_limit_50", &by_author), ("repo_limit_50", &by_repo)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let rows = query::commits(&store, filter)
                    .expect("query")
                    .collect::<Result<Vec<_>, _>>()
                    .expect("rows");
                assert_eq!(rows.len(), 50);
                rows
            })
        });
    }
    g.finish();
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, decode, store_write, queries);
criterion_main!(benches);
