//! Pacing benchmark (issue 7, item 3): the simulator enforces a rolling
//! limit of `BBCRAWL_BENCH_LIMIT` (120) requests per `BBCRAWL_BENCH_WINDOW_S`
//! (20) s per credential; bbcrawl (the release binary, `bbcrawl -q sync`,
//! max_in_flight 4) crawls a workspace big enough to last over a minute.
//!
//! Three runs, each on a fresh simulator and store:
//! - known: access token; the simulator sends `X-RateLimit-Limit` as the
//!   per-hour equivalent of its window (120 / 20 s = 21,600); bbcrawl is left
//!   at its default 1,000/h and must adopt the header;
//! - unknown: API token (no headers); `BBCRAWL_REQUESTS_PER_HOUR=21600`;
//! - too high: API token, config 2× the real limit (43,200/h): the first 429
//!   must close the gate; checked from the simulator's log.
//!
//! Utilisation = requests answered 200 / (limit per window × crawl span /
//! window), the span being first to last request arrival at the simulator.
//!
//! Run: `cargo bench --bench pacing` (`BBCRAWL_BENCH_PACING=known,unknown,high`).

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use bbcrawl::demo::{minimum_requests, BackgroundSimulator};
use bbcrawl::simulator::{SimOptions, Simulator};
use bbcrawl::store::Store;
use common::*;

struct Report {
    requests: usize,
    ok: usize,
    limited: usize,
    span: f64,
    wall: f64,
    exact: bool,
}

fn crawl(
    limit: u32,
    window: Duration,
    repos: usize,
    commits: usize,
    cred: Cred,
    config_rph: u32,
) -> (Report, Simulator) {
    let sim = simulator(
        SimOptions {
            requests_per_hour: limit,
            rate_window: window,
            ..SimOptions::default()
        },
        repos,
        commits,
    );
    let server = BackgroundSimulator::start(sim.clone()).expect("serve");
    let store_dir = fresh_dir("pacing");
    let run = sync(
        server.api_url(),
        &store_dir,
        cred,
        config_rph,
        4,
        &[RARE_AUDITS],
    );
    assert_eq!(run.exit, 0, "sync failed: {}", run.stderr);
    let reqs = sim.requests();
    let first = reqs.first().map(|r| r.at).expect("requests");
    let last = reqs.last().map(|r| r.at).expect("requests");
    let store = Store::open(&store_dir).expect("open store");
    let stored: u64 = store
        .repos()
        .expect("repos")
        .iter()
        .map(|r| r.commits_stored)
        .sum();
    let truth = total_commits(&sim);
    drop(store);
    let _ = std::fs::remove_dir_all(&store_dir);
    (
        Report {
            requests: reqs.len(),
            ok: reqs.iter().filter(|r| r.status == 200).count(),
            limited: reqs.iter().filter(|r| r.status == 429).count(),
            span: (last - first).as_secs_f64(),
            wall: run.wall.as_secs_f64(),
            exact: stored == truth,
        },
        sim,
    )
}

fn print(name: &str, r: &Report, sim: &Simulator, limit: u32, window: Duration) {
    let allowed = limit as f64 * r.span / window.as_secs_f64();
    println!(
        "  {name:<44} {:>4} requests ({} ok, min {}), {:>3} × 429, span {:>5.1} s (wall {:.1} s), utilisation {:>5.1} %, store exact: {}",
        r.requests,
        r.ok,
        minimum_requests(sim, WS),
        r.limited,
        r.span,
        r.wall,
        100.0 * r.ok as f64 / allowed,
        r.exact
    );
}

/// After each gate closure (a 429), what arrived: requests already in
/// flight (arriving within 1 s), then the silence, then the probe.
fn gate_check(sim: &Simulator) {
    let reqs = sim.requests();
    let mut i = 0;
    let mut closures = 0;
    let mut violations = 0;
    while i < reqs.len() {
        if reqs[i].status != 429 {
            i += 1;
            continue;
        }
        closures += 1;
        let t = reqs[i].at;
        let mut j = i + 1;
        let mut in_flight = 0;
        let mut late429 = 0;
        while j < reqs.len() && reqs[j].at.duration_since(t) <= Duration::from_secs(1) {
            in_flight += 1;
            if reqs[j].status == 429 {
                late429 += 1;
            }
            j += 1;
        }
        if j >= reqs.len() {
            println!(
                "    closure {closures}: {in_flight} in-flight arrivals, then the end of the log"
            );
            break;
        }
        let probe = &reqs[j];
        let gap = probe.at.duration_since(reqs[j - 1].at).as_secs_f64();
        // The probe's answer comes back before anything else may be sent.
        let next_gap = reqs
            .get(j + 1)
            .map(|n| n.at.duration_since(probe.at).as_secs_f64())
            .unwrap_or(f64::NAN);
        let silent = gap >= 5.0;
        if !silent {
            violations += 1;
        }
        println!(
            "    closure {closures}: {in_flight} arrivals within 1 s of the 429 (sent before the gate closed; {late429} of them 429), then {gap:.1} s of silence, then the probe → {} (next request {next_gap:.3} s after it)",
            probe.status
        );
        i = j;
    }
    println!("    gate closures: {closures}; requests sent while the gate was closed (other than probes): {violations}");
}

fn main() {
    let limit = env_num("BBCRAWL_BENCH_LIMIT", 120u32);
    let window = Duration::from_secs(env_num("BBCRAWL_BENCH_WINDOW_S", 20u64));
    let per_hour = (limit as u64 * 3600 / window.as_secs()) as u32;
    let repos = env_num("BBCRAWL_BENCH_PACING_REPOS", 4usize);
    let commits = env_num("BBCRAWL_BENCH_PACING_COMMITS", 11_000usize);
    let which =
        std::env::var("BBCRAWL_BENCH_PACING").unwrap_or_else(|_| "known,unknown,high".into());
    println!(
        "== pacing: simulator limit {limit} requests per {} s rolling window (= {per_hour}/h), crawler = release binary, max_in_flight 4; {} cores shared",
        window.as_secs(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    for run in which.split(',') {
        match run.trim() {
            "known" => {
                let (r, sim) = crawl(limit, window, repos, commits, Cred::AccessToken, 1000);
                print(
                    &format!("known (access token, X-RateLimit-Limit {per_hour})"),
                    &r,
                    &sim,
                    limit,
                    window,
                );
                gate_check(&sim);
            }
            "unknown" => {
                let (r, sim) = crawl(limit, window, repos, commits, Cred::ApiToken, per_hour);
                print(
                    &format!("unknown (API token, config {per_hour}/h)"),
                    &r,
                    &sim,
                    limit,
                    window,
                );
                gate_check(&sim);
            }
            "high" => {
                let (r, sim) = crawl(limit, window, 2, 10_000, Cred::ApiToken, 2 * per_hour);
                print(
                    &format!("2× too high (API token, config {}/h)", 2 * per_hour),
                    &r,
                    &sim,
                    limit,
                    window,
                );
                gate_check(&sim);
            }
            "" => {}
            other => panic!("unknown pacing run {other:?}"),
        }
    }
}
