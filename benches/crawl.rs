//! End-to-end crawl benchmark (issue 7, items 2 and 4).
//!
//! The simulator is served **in-process on its own thread and tokio runtime**
//! (`BackgroundSimulator`, one worker thread); the crawler is **the release
//! binary** (`bbcrawl -q sync`, a separate process), so its peak RSS
//! (`VmHWM`, polled from /proc every 20 ms) is the crawler's alone.
//!
//! `cargo bench --bench crawl` runs the modes in `BBCRAWL_BENCH_MODE`
//! (comma-separated; default `e2e,latency,python`):
//! - `e2e`: a fresh store, `BBCRAWL_BENCH_REPOS` (1000) × `BBCRAWL_BENCH_COMMITS`
//!   (1000) commits; commits/s, requests vs the minimum, store bytes/commit,
//!   peak RSS; then a no-change pass and a pass after pushes to 3
//!   repositories. Before and after the crawl, the store-write ceiling of the
//!   same run: `Store::apply_page` of real decoded pages
//!   (`BBCRAWL_BENCH_CEILING_REPOS` repositories, default all: the same
//!   commits the crawl writes, since sled slows as its tree outgrows the
//!   cache), one thread, no HTTP, flushed every 250 ms like the writer actor;
//!   the crawl is compared with the higher of the two.
//!
//! In every mode the simulator renders its commit JSON before the clock
//! starts (`Simulator::prerender`, as the issue advises), so serving a page
//! is a copy and costs the crawler's two cores ~4 % of one core.
//! - `latency`: 50 ms added per request, `BBCRAWL_BENCH_LAT_REPOS` (40) × 1000
//!   commits, `max_in_flight` 1, 4, 16 (pass concurrency 2 × max_in_flight).
//! - `python`: `benches/python/crawl.py` (pinned atlassian-python-api in a
//!   virtualenv made by this bench under target/) and bbcrawl on the same
//!   simulator (`BBCRAWL_BENCH_PY_REPOS` (10) × `BBCRAWL_BENCH_PY_COMMITS` (2000)).

#[path = "common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use bbcrawl::bitbucket::models::COMMIT_FIELDS;
use bbcrawl::demo::{minimum_requests, BackgroundSimulator};
use bbcrawl::simulator::{SimOptions, Simulator};
use common::*;

/// `http://host:port` of an API base URL (what the crawler's `Host` names).
fn origin(api_url: &str) -> String {
    api_url.trim_end_matches("/2.0").to_owned()
}

fn statuses(sim: &Simulator) -> (usize, usize) {
    let reqs = sim.requests();
    let bad = reqs.iter().filter(|r| r.status != 200).count();
    (reqs.len(), bad)
}

fn e2e() {
    let repos = env_num("BBCRAWL_BENCH_REPOS", 1000usize);
    let commits = env_num("BBCRAWL_BENCH_COMMITS", 1000usize);
    // The ceiling writes the same commits the crawl will: sled slows down as
    // its tree outgrows the cache, so a smaller store would flatter it.
    let ceiling_repos = env_num("BBCRAWL_BENCH_CEILING_REPOS", repos).min(repos);
    let t = Instant::now();
    let sim = simulator(
        SimOptions {
            requests_per_hour: 0,
            render_cache_bytes: 4 << 30,
            ..SimOptions::default()
        },
        repos,
        commits,
    );
    let total = total_commits(&sim);
    let minimum = minimum_requests(&sim, WS);
    eprintln!(
        "world: {repos} repositories, {total} commits (built in {:.1} s)",
        t.elapsed().as_secs_f64()
    );
    let server = BackgroundSimulator::start(sim.clone()).expect("serve simulator");
    // The simulator renders each commit's JSON before the clock starts (as
    // the crawler will ask for it), so serving costs it little CPU.
    let t = Instant::now();
    let rendered = sim.prerender(&origin(server.api_url()), Some(COMMIT_FIELDS));
    let prerender = t.elapsed();
    let rt = tokio::runtime::Runtime::new().expect("runtime");

    // The store-write ceiling of this run.
    // The store-write ceiling of this run, measured before and after the
    // crawl (the machine is shared); the crawl is compared with the higher.
    let pages = record_pages(&rt, server.api_url(), &sim, ceiling_repos);
    let ceiling_run = |name: &str| {
        let dir = fresh_dir(name);
        let (rate, n) = store_write_ceiling(&dir, &pages);
        let bytes = dir_bytes(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        (rate, n, bytes)
    };
    let (ceiling_before, ceiling_n, ceiling_bytes) = ceiling_run("ceiling-before");
    sim.clear_requests();

    // First sync.
    let store = fresh_dir("crawl-store");
    let sim_cpu0 = cpu_seconds("self").unwrap_or(0.0);
    let run = sync(
        server.api_url(),
        &store,
        Cred::AccessToken,
        UNLIMITED,
        4,
        &[RARE_AUDITS],
    );
    assert_eq!(run.exit, 0, "sync failed: {}", run.stderr);
    // This process is the simulator (the main thread only polls /proc).
    let sim_cpu = cpu_seconds("self").unwrap_or(0.0) - sim_cpu0;
    let (requests, bad) = statuses(&sim);
    let bytes = dir_bytes(&store);
    let rate = total as f64 / run.wall.as_secs_f64();

    // The first question asked of the store after the crawl, as a process
    // (sled writes its recovery snapshot only when opening, so this first
    // open replays the log the crawl wrote).
    let first_query = |store: &std::path::Path| {
        let t = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_bbcrawl"))
            .arg("--store")
            .arg(store)
            .args(["query", "commits", "--repo", "repo-0001", "--limit", "50"])
            .output()
            .expect("run bbcrawl query");
        assert!(out.status.success(), "query failed");
        t.elapsed()
    };
    let first_query_time = first_query(&store);
    let second_query_time = first_query(&store);
    let (ceiling_after, _, _) = ceiling_run("ceiling-after");
    drop(pages);
    let ceiling = ceiling_before.max(ceiling_after);

    // A pass with nothing changed, then one after pushes to three repositories.
    sim.clear_requests();
    let unchanged = sync(
        server.api_url(),
        &store,
        Cred::AccessToken,
        UNLIMITED,
        4,
        &[RARE_AUDITS],
    );
    assert_eq!(unchanged.exit, 0, "{}", unchanged.stderr);
    let (unchanged_requests, _) = statuses(&sim);
    let listing = (repos as u64).div_ceil(100);
    let pushed = [150usize, 30, 250];
    for (i, n) in pushed.iter().enumerate() {
        sim.push(WS, &format!("repo-{:04}", i * 7), *n);
    }
    sim.clear_requests();
    let after = sync(
        server.api_url(),
        &store,
        Cred::AccessToken,
        UNLIMITED,
        4,
        &[RARE_AUDITS],
    );
    assert_eq!(after.exit, 0, "{}", after.stderr);
    let (after_requests, _) = statuses(&sim);
    let after_expected = listing
        + pushed
            .iter()
            .map(|n| (*n as u64).div_ceil(100))
            .sum::<u64>();
    let _ = std::fs::remove_dir_all(&store);

    println!("== crawl e2e: simulator in-process (own thread + 1-worker runtime), crawler = release binary `bbcrawl -q sync`, max_in_flight 4 (8 repository actors)");
    println!("  commits                     {total} in {repos} repositories");
    println!(
        "  simulator pages             pre-rendered before the clock: {:.0} MB of commit JSON in {:.1} s",
        rendered as f64 / 1e6,
        prerender.as_secs_f64()
    );
    println!(
        "  wall time                   {:.1} s  (process start to exit)",
        run.wall.as_secs_f64()
    );
    println!("  throughput                  {rate:.0} commits/s");
    println!(
        "  store-write ceiling         {ceiling:.0} commits/s  (before the crawl {ceiling_before:.0}, after {ceiling_after:.0}; {ceiling_n} commits, apply_page one thread, no HTTP; {:.0} B/commit)",
        ceiling_bytes as f64 / ceiling_n.max(1) as f64
    );
    println!(
        "  throughput / ceiling        {:.0} %  (of the higher ceiling)",
        100.0 * rate / ceiling
    );
    println!(
        "  CPU                         crawler {:.1} s ({:.0} % of one core), simulator {sim_cpu:.1} s ({:.0} %)",
        run.cpu,
        100.0 * run.cpu / run.wall.as_secs_f64(),
        100.0 * sim_cpu / run.wall.as_secs_f64()
    );
    println!("  requests                    {requests} (minimum {minimum}; {bad} not 200)");
    println!(
        "  store                       {:.1} MB = {:.0} bytes/commit",
        bytes as f64 / 1e6,
        bytes as f64 / total as f64
    );
    println!(
        "  peak RSS of the crawler     {:.1} MB (VmHWM)",
        run.peak_rss_kb as f64 / 1024.0
    );
    println!(
        "  first query after the crawl {:.0} ms (process: open + `query commits --repo … --limit 50`; the next one {:.0} ms)",
        first_query_time.as_secs_f64() * 1000.0,
        second_query_time.as_secs_f64() * 1000.0
    );
    println!(
        "  no-change pass              {unchanged_requests} requests (listing pages: {listing}), {:.2} s",
        unchanged.wall.as_secs_f64()
    );
    println!(
        "  pass after pushes {pushed:?}  {after_requests} requests (expected listing + Σ⌈new/100⌉ = {after_expected}), {:.2} s",
        after.wall.as_secs_f64()
    );
}

fn latency() {
    let repos = env_num("BBCRAWL_BENCH_LAT_REPOS", 40usize);
    let commits = env_num("BBCRAWL_BENCH_LAT_COMMITS", 1000usize);
    let ms = env_num("BBCRAWL_BENCH_LATENCY_MS", 50u64);
    let sim = simulator(
        SimOptions {
            requests_per_hour: 0,
            latency: Duration::from_millis(ms),
            render_cache_bytes: 1 << 30,
            ..SimOptions::default()
        },
        repos,
        commits,
    );
    let total = total_commits(&sim);
    let server = BackgroundSimulator::start(sim.clone()).expect("serve simulator");
    sim.prerender(&origin(server.api_url()), Some(COMMIT_FIELDS));
    println!("== crawl with {ms} ms latency per request: {repos} repositories, {total} commits, minimum {} requests", minimum_requests(&sim, WS));
    let mut base = None;
    for mif in [1usize, 4, 16] {
        sim.clear_requests();
        let store = fresh_dir(&format!("lat-{mif}"));
        let run = sync(
            server.api_url(),
            &store,
            Cred::AccessToken,
            UNLIMITED,
            mif,
            &[RARE_AUDITS],
        );
        assert_eq!(run.exit, 0, "{}", run.stderr);
        let (requests, _) = statuses(&sim);
        let rate = total as f64 / run.wall.as_secs_f64();
        let b = *base.get_or_insert(rate);
        println!(
            "  max_in_flight {mif:>2} (concurrency {:>2}): {:>6.1} s  {rate:>8.0} commits/s  {:>5.2}× of max_in_flight 1  ({requests} requests)",
            2 * mif,
            run.wall.as_secs_f64(),
            rate / b
        );
        let _ = std::fs::remove_dir_all(&store);
    }
}

/// The virtualenv with the pinned requirements (made once under target/).
fn python_venv() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let venv = root.join("target/bench-python-venv");
    let py = venv.join("bin/python");
    let req = root.join("benches/python/requirements.txt");
    let stamp = venv.join(".requirements");
    let wanted = std::fs::read_to_string(&req).expect("requirements.txt");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
        eprintln!("creating {} with {}", venv.display(), wanted.trim());
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 -m venv")
            .success();
        assert!(ok, "python3 -m venv failed");
        let ok = Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "-r"])
            .arg(&req)
            .status()
            .expect("pip install")
            .success();
        assert!(ok, "pip install failed");
        std::fs::write(&stamp, wanted).expect("stamp");
    }
    py
}

fn python() {
    let repos = env_num("BBCRAWL_BENCH_PY_REPOS", 10usize);
    let commits = env_num("BBCRAWL_BENCH_PY_COMMITS", 2000usize);
    let py = python_venv();
    let sim = simulator(
        SimOptions {
            requests_per_hour: 0,
            render_cache_bytes: 1 << 30,
            ..SimOptions::default()
        },
        repos,
        commits,
    );
    let total = total_commits(&sim);
    let server = BackgroundSimulator::start(sim.clone()).expect("serve simulator");
    // Both clients' pages: the library asks without `fields`.
    sim.prerender(&origin(server.api_url()), Some(COMMIT_FIELDS));
    sim.prerender(&origin(server.api_url()), None);
    let dir = fresh_dir("python");

    sim.clear_requests();
    let t = Instant::now();
    let out = Command::new(&py)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/python/crawl.py"))
        .args([server.api_url(), WS, ACCESS_TOKEN])
        .arg(dir.join("commits.sqlite"))
        .output()
        .expect("run python");
    let py_wall = t.elapsed();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(out.stdout.trim_ascii()).expect("python report");
    let py_commits = report["commits"].as_u64().unwrap_or(0);
    let (py_requests, _) = statuses(&sim);
    let py_rate = py_commits as f64 / py_wall.as_secs_f64();

    sim.clear_requests();
    let run = sync(
        server.api_url(),
        &dir.join("store"),
        Cred::AccessToken,
        UNLIMITED,
        4,
        &[RARE_AUDITS],
    );
    assert_eq!(run.exit, 0, "{}", run.stderr);
    let (rs_requests, _) = statuses(&sim);
    let rs_rate = total as f64 / run.wall.as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);

    println!("== against atlassian-python-api (benches/python, sequential, SQLite) on the same simulator: {repos} repositories, {total} commits, minimum {} requests", minimum_requests(&sim, WS));
    println!(
        "  python   {py_commits:>7} commits  {:>6.2} s  {py_rate:>8.0} commits/s  {py_requests:>5} requests",
        py_wall.as_secs_f64()
    );
    println!(
        "  bbcrawl  {total:>7} commits  {:>6.2} s  {rs_rate:>8.0} commits/s  {rs_requests:>5} requests",
        run.wall.as_secs_f64()
    );
    println!(
        "  ratio    {:.1}× the commits/s, {:.2} of the requests (1/{:.1})",
        rs_rate / py_rate,
        rs_requests as f64 / py_requests as f64,
        py_requests as f64 / rs_requests as f64
    );
}

fn main() {
    let modes = std::env::var("BBCRAWL_BENCH_MODE").unwrap_or_else(|_| "e2e,latency,python".into());
    println!(
        "machine: {} cores (shared; compare ratios within one run)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    for mode in modes.split(',') {
        match mode.trim() {
            "e2e" => e2e(),
            "latency" => latency(),
            "python" => python(),
            "" => {}
            other => panic!("unknown mode {other:?} (e2e, latency, python)"),
        }
    }
}
