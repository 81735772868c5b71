//! The simulator at scale (formerly an ignored test in tests/simulator.rs):
//! how long `Simulator::demo` takes to build a world of
//! `BBCRAWL_BENCH_SIM_REPOS` (1000) repositories of about
//! `BBCRAWL_BENCH_SIM_COMMITS` (1000) commits each (sizes vary ×0.1 to ×3, so
//! about 1.2M commits), and how fast it serves commit pages: the first
//! `BBCRAWL_BENCH_SIM_PAGED` (100) repositories paged through the HTTP API
//! (100 commits a page, `fields`-trimmed, one client, one request at a time),
//! cold and then again, then every default branch walked in-process.
//!
//! Unlike the crawl benchmarks nothing is pre-rendered: the cold pass is what
//! a crawl of a fresh simulator costs it. The paged commits are checked
//! against the simulator's own history.
//!
//! Run: `cargo bench --bench simulator`, e.g.
//! `BBCRAWL_BENCH_SIM_REPOS=50 BBCRAWL_BENCH_SIM_COMMITS=200 cargo bench --bench simulator`.

#[path = "common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use bbcrawl::bitbucket::models::COMMIT_FIELDS;
use bbcrawl::demo::BackgroundSimulator;
use bbcrawl::simulator::{SimOptions, Simulator};
use common::env_num;
use serde_json::Value;

/// The access token `Simulator::demo` registers.
const DEMO_TOKEN: &str = "sim-access-token";

/// Repositories, pages and commits fetched, and the time it took.
struct Paged {
    repos: usize,
    pages: usize,
    commits: usize,
    wall: Duration,
}

/// Pages every default-branch commit of the first `n` repositories of `ws`,
/// one request at a time.
fn page_repos(
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    api_url: &str,
    sim: &Simulator,
    ws: &str,
    n: usize,
) -> Paged {
    let fields = url::form_urlencoded::byte_serialize(COMMIT_FIELDS.as_bytes()).collect::<String>();
    let t = Instant::now();
    let (mut pages, mut commits) = (0, 0);
    let repos = sim.repos(ws);
    for r in repos.iter().take(n) {
        let Some(branch) = &r.mainbranch else {
            continue;
        };
        let mut next = Some(format!(
            "{api_url}/repositories/{ws}/{}/commits/{}?pagelen=100&fields={fields}",
            r.slug,
            branch.replace('/', "%2F"),
        ));
        let mut repo_commits = 0;
        while let Some(url) = next.take() {
            let page: Value = rt.block_on(async {
                client
                    .get(&url)
                    .bearer_auth(DEMO_TOKEN)
                    .send()
                    .await
                    .expect("GET a commit page")
                    .error_for_status()
                    .expect("status of a commit page")
                    .json()
                    .await
                    .expect("a JSON commit page")
            });
            pages += 1;
            repo_commits += page["values"].as_array().map_or(0, Vec::len);
            next = page["next"].as_str().map(str::to_owned);
        }
        assert_eq!(
            repo_commits,
            sim.branch_commits(ws, &r.slug).len(),
            "commits paged from {}",
            r.slug
        );
        commits += repo_commits;
    }
    Paged {
        repos: n.min(repos.len()),
        pages,
        commits,
        wall: t.elapsed(),
    }
}

fn report(label: &str, p: &Paged) {
    let s = p.wall.as_secs_f64();
    println!(
        "  {label:<27} {} commits of {} repositories in {} pages: {s:.2} s = {:.0} commits/s, {:.0} pages/s",
        p.commits,
        p.repos,
        p.pages,
        p.commits as f64 / s,
        p.pages as f64 / s
    );
}

fn main() {
    let repos = env_num("BBCRAWL_BENCH_SIM_REPOS", 1000usize);
    let commits = env_num("BBCRAWL_BENCH_SIM_COMMITS", 1000usize);
    let paged = env_num("BBCRAWL_BENCH_SIM_PAGED", 100usize);
    println!(
        "machine: {} cores (shared; compare ratios within one run)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );

    let t = Instant::now();
    let opts = SimOptions {
        repos,
        commits,
        requests_per_hour: 0,
        ..SimOptions::default()
    };
    let ws = opts.workspace.clone();
    let sim = Simulator::demo(opts);
    let generated = t.elapsed();

    let server = BackgroundSimulator::start(sim.clone()).expect("serve simulator");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = reqwest::Client::new();
    let cold = page_repos(&rt, &client, server.api_url(), &sim, &ws, paged);
    let again = page_repos(&rt, &client, server.api_url(), &sim, &ws, paged);

    let t = Instant::now();
    let all = sim.repos(&ws);
    let total: usize = all
        .iter()
        .map(|r| sim.branch_commits(&ws, &r.slug).len())
        .sum();
    let walked = t.elapsed();

    println!(
        "== simulator at scale: Simulator::demo, {repos} repositories × ~{commits} commits; pages served by its own thread (1-worker runtime), nothing pre-rendered"
    );
    println!(
        "  world generated             {} repositories (with the demo's special ones) in {:.2} s",
        all.len(),
        generated.as_secs_f64()
    );
    report("paged, cold", &cold);
    report("paged again", &again);
    println!(
        "  every default branch walked {total} commits in {:.2} s (in-process, after the paging)",
        walked.as_secs_f64()
    );
}
