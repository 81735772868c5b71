//! Push → queryable latency with webhooks (issue 17), against the fastest
//! polling the daemon offers, in one run.
//!
//! Two identical simulated workspaces (50 repositories × 200 commits, the
//! same seed), each crawled by `bbcrawl run` (the release binary):
//! - `hooks`: `hooks_listen` on, the simulator's workspace webhook pointing
//!   at it (signed deliveries), `interval_seconds` 3600;
//! - `poll`: no webhook, `interval_seconds` 1 (the smallest allowed), run
//!   by `BBCRAWL_BENCH_OLD_BIN` when set (main before webhooks, built in a
//!   separate worktree), else by this binary with webhooks off.
//!
//! Then the same BBCRAWL_BENCH_PUSHES pushes (default 200) round-robin
//! over the 50 repositories, one every 50 ms, every tenth over a page; a
//! poller asks the daemon's API for each pushed tip every 10 ms. Output:
//! `key: value unit` lines — latency p50/p90/p99/max, and the requests
//! each used against Σ⌈new/100⌉.
//!
//!   cargo bench --bench hooks

#[path = "common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bbcrawl::demo::BackgroundSimulator;
use bbcrawl::simulator::{SimOptions, Simulator};

const SECRET: &str = "bench-webhook-secret";
const REPOS: usize = 50;

/// A running daemon and its endpoint.
struct Daemon {
    child: Child,
    base: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `binary run` on a fresh store; returns once its first pass is done.
fn start(binary: &Path, name: &str, api_url: &str, hooks: Option<u16>, interval: &str) -> Daemon {
    let dir = common::fresh_dir(name);
    let store = dir.join("store");
    let mut cmd = Command::new(binary);
    cmd.arg("run")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("BBCRAWL_API_URL", api_url)
        .env("BBCRAWL_WORKSPACES", common::WS)
        .env("BITBUCKET_ACCESS_TOKEN", common::ACCESS_TOKEN)
        .env("BBCRAWL_STORE", &store)
        .env("BBCRAWL_LISTEN", "127.0.0.1:0")
        .env("BBCRAWL_INTERVAL_SECONDS", interval)
        .env("BBCRAWL_AUDIT_INTERVAL_SECONDS", "31536000")
        .env("BBCRAWL_REQUESTS_PER_HOUR", "1000000")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("daemon.log")).unwrap());
    if let Some(port) = hooks {
        let secret = dir.join("hook-secret");
        std::fs::write(&secret, SECRET).unwrap();
        cmd.env("BBCRAWL_HOOKS_LISTEN", format!("127.0.0.1:{port}"))
            .env("BBCRAWL_HOOKS_SECRET_FILE", &secret);
    }
    let child = cmd.spawn().expect("spawn bbcrawl run");
    let deadline = Instant::now() + Duration::from_secs(120);
    let base = loop {
        if let Ok(text) = std::fs::read_to_string(store.join("daemon.json")) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                break format!("http://{}", v["addr"].as_str().unwrap());
            }
        }
        assert!(Instant::now() < deadline, "{name}: no daemon.json");
        std::thread::sleep(Duration::from_millis(20));
    };
    let daemon = Daemon { child, base };
    loop {
        let body = get_text(&format!("{}/healthz", daemon.base));
        if body.contains("\"ok\"") {
            return daemon;
        }
        assert!(Instant::now() < deadline, "{name}: first pass not done");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A GET's body ("" on failure), on a runtime of its own (only while
/// waiting for the first pass).
fn get_text(url: &str) -> String {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            match reqwest::get(url).await {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            }
        })
}

/// A pushed tip, when it was pushed, and how long until it was queryable.
type Pending = (String, Instant, Option<Duration>);

/// Pushes, measures, and returns (latencies, Σ⌈new/100⌉).
fn push_and_measure(sim: &Simulator, base: &str, pushes: usize) -> (Vec<Duration>, usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let pending: Arc<Mutex<Vec<Pending>>> = Arc::default();
    let poller = {
        let pending = Arc::clone(&pending);
        let base = base.to_owned();
        rt.spawn(async move {
            let http = reqwest::Client::new();
            loop {
                let open: Vec<(usize, String)> = pending
                    .lock()
                    .unwrap()
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.2.is_none())
                    .map(|(i, p)| (i, p.0.clone()))
                    .collect();
                for (i, hash) in open {
                    let url = format!("{base}/api/v1/show/{hash}");
                    if http.get(url).send().await.is_ok_and(|r| r.status() == 200) {
                        let mut p = pending.lock().unwrap();
                        p[i].2 = Some(p[i].1.elapsed());
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let mut pages = 0;
    for i in 0..pushes {
        let n = if i % 10 == 9 { 101 + i % 50 } else { 1 + i % 5 };
        pages += n.div_ceil(100);
        let at = Instant::now();
        let hashes = sim.push(common::WS, &format!("repo-{:04}", i % REPOS), n);
        pending.lock().unwrap().push((hashes[0].clone(), at, None));
        std::thread::sleep(Duration::from_millis(50));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while pending.lock().unwrap().iter().any(|p| p.2.is_none()) {
        assert!(Instant::now() < deadline, "pushes not stored within 120 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    poller.abort();
    let mut out: Vec<Duration> = pending
        .lock()
        .unwrap()
        .iter()
        .map(|p| p.2.unwrap())
        .collect();
    out.sort();
    (out, pages)
}

fn report(mode: &str, latencies: &[Duration], sim: &Simulator, pages: usize) {
    let q = |p: f64| {
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i].as_secs_f64() * 1e3
    };
    let requests = sim.requests();
    let commits = requests
        .iter()
        .filter(|r| r.path.contains("/commits/"))
        .count();
    let listings = requests.len() - commits;
    println!("{mode}_latency_p50: {:.0} ms", q(0.5));
    println!("{mode}_latency_p90: {:.0} ms", q(0.9));
    println!("{mode}_latency_p99: {:.0} ms", q(0.99));
    println!("{mode}_latency_max: {:.0} ms", q(1.0));
    println!("{mode}_commit_requests: {commits} (Σ⌈new/100⌉ = {pages})");
    println!("{mode}_other_requests: {listings}");
}

/// What the daemon spends while nothing is pushed: requests over
/// BBCRAWL_BENCH_IDLE_SECONDS (default 10), per hour.
fn idle(mode: &str, sim: &Simulator) {
    let seconds: u64 = common::env_num("BBCRAWL_BENCH_IDLE_SECONDS", 10);
    std::thread::sleep(Duration::from_secs(2));
    sim.clear_requests();
    std::thread::sleep(Duration::from_secs(seconds));
    let n = sim.requests().len();
    println!(
        "{mode}_idle_requests_per_hour: {:.0} ({n} in {seconds} s)",
        n as f64 * 3600.0 / seconds as f64
    );
}

/// No rate limit on the simulator: it would announce 1,000 an hour, which
/// the daemon adopts and paces to.
fn unlimited() -> SimOptions {
    SimOptions {
        requests_per_hour: 0,
        ..SimOptions::default()
    }
}

fn main() {
    let pushes: usize = common::env_num("BBCRAWL_BENCH_PUSHES", 200);
    let new_bin = PathBuf::from(env!("CARGO_BIN_EXE_bbcrawl"));
    let old_bin = std::env::var_os("BBCRAWL_BENCH_OLD_BIN").map(PathBuf::from);
    println!("pushes: {pushes} over {REPOS} repositories, one every 50 ms");
    println!(
        "poll_binary: {}",
        old_bin
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "this one, webhooks off".into())
    );

    // Webhooks.
    let sim = common::simulator(unlimited(), REPOS, 200);
    let server = BackgroundSimulator::start(sim.clone()).expect("serve the simulator");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let daemon = start(&new_bin, "hooks", server.api_url(), Some(port), "3600");
    sim.add_hook(
        common::WS,
        &format!("http://127.0.0.1:{port}/hooks/bitbucket"),
        Some(SECRET),
    );
    sim.clear_requests();
    let (latencies, pages) = push_and_measure(&sim, &daemon.base, pushes);
    report("hooks", &latencies, &sim, pages);
    idle("hooks", &sim);
    drop(daemon);
    drop(server);

    // Polling every second.
    let sim = common::simulator(unlimited(), REPOS, 200);
    let server = BackgroundSimulator::start(sim.clone()).expect("serve the simulator");
    let bin = old_bin.unwrap_or(new_bin);
    let daemon = start(&bin, "poll", server.api_url(), None, "1");
    sim.clear_requests();
    let (latencies, pages) = push_and_measure(&sim, &daemon.base, pushes);
    report("poll", &latencies, &sim, pages);
    idle("poll", &sim);
}
