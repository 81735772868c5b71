//! Helpers shared by the benchmarks (`#[path]`-included, not a crate).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bbcrawl::bitbucket::models::{Commit, Page, COMMIT_FIELDS};
use bbcrawl::record::CommitRecord;
use bbcrawl::record::RepoState;
use bbcrawl::simulator::{RepoSpec, SimCredential, SimOptions, Simulator};
use bbcrawl::store::Store;

pub const WS: &str = "acme";
pub const ACCESS_TOKEN: &str = "bench-access-token";
pub const API_EMAIL: &str = "bench@example.com";
pub const API_TOKEN: &str = "bench-api-token";

/// An env var as a number, or a default.
pub fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A workspace `acme` of `repos` repositories × `commits` commits (linear
/// histories plus merges, as `RepoSpec::new`), an access token and an API
/// token.
pub fn simulator(opts: SimOptions, repos: usize, commits: usize) -> Simulator {
    let sim = Simulator::new(opts);
    sim.add_workspace(WS);
    for i in 0..repos {
        sim.add_repo(WS, RepoSpec::new(&format!("repo-{i:04}"), commits));
    }
    sim.add_credential(SimCredential::AccessToken {
        token: ACCESS_TOKEN.into(),
        scopes: vec!["repository".into()],
        workspaces: vec![WS.into()],
    });
    sim.add_credential(SimCredential::ApiToken {
        email: API_EMAIL.into(),
        token: API_TOKEN.into(),
        scopes: vec!["read:repository:bitbucket".into()],
        workspaces: vec![WS.into()],
    });
    sim
}

/// A fresh directory under `target/bench-tmp/`.
pub fn fresh_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/bench-tmp")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create bench dir");
    dir
}

/// Bytes of every file under `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            match e.metadata() {
                Ok(m) if m.is_dir() => total += dir_bytes(&p),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Which credential the crawler uses.
#[derive(Clone, Copy, Debug)]
pub enum Cred {
    AccessToken,
    ApiToken,
}

/// One run of the release binary's `bbcrawl sync`.
pub struct SyncRun {
    pub wall: Duration,
    /// CPU seconds (user + system) of the crawler process.
    pub cpu: f64,
    pub peak_rss_kb: u64,
    pub exit: i32,
    pub stderr: String,
}

/// User + system CPU seconds of a process (clock ticks of 10 ms).
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

fn peak_rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Runs `bbcrawl sync -q` against `api_url` into `store`, reading the
/// crawler's peak RSS (`VmHWM`) from /proc while it runs.
pub fn sync(
    api_url: &str,
    store: &Path,
    cred: Cred,
    requests_per_hour: u32,
    max_in_flight: usize,
    extra_env: &[(&str, &str)],
) -> SyncRun {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bbcrawl"));
    cmd.args(["-q", "sync"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", std::env::temp_dir())
        .env("BBCRAWL_API_URL", api_url)
        .env("BBCRAWL_WORKSPACES", WS)
        .env("BBCRAWL_STORE", store)
        .env("BBCRAWL_REQUESTS_PER_HOUR", requests_per_hour.to_string())
        .env("BBCRAWL_MAX_IN_FLIGHT", max_in_flight.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    match cred {
        Cred::AccessToken => {
            cmd.env("BITBUCKET_ACCESS_TOKEN", ACCESS_TOKEN);
        }
        Cred::ApiToken => {
            cmd.env("BITBUCKET_USERNAME", API_EMAIL)
                .env("BITBUCKET_API_TOKEN", API_TOKEN);
        }
    }
    // An experiment knob: glibc's per-thread malloc arenas for the crawler.
    if let Ok(v) = std::env::var("BBCRAWL_BENCH_MALLOC_ARENA_MAX") {
        cmd.env("MALLOC_ARENA_MAX", v);
    }
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let t = Instant::now();
    let mut child: Child = cmd.spawn().expect("spawn bbcrawl sync");
    let pid = child.id();
    let mut peak = 0;
    let mut cpu = 0.0f64;
    let stderr = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut e) = stderr {
            use std::io::Read;
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    let status = loop {
        if let Some(kb) = peak_rss_kb(pid) {
            peak = peak.max(kb);
        }
        if let Some(c) = cpu_seconds(&pid.to_string()) {
            cpu = cpu.max(c);
        }
        match child.try_wait().expect("wait bbcrawl") {
            Some(s) => break s,
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let wall = t.elapsed();
    SyncRun {
        wall,
        peak_rss_kb: peak,
        cpu,
        exit: status.code().unwrap_or(-1),
        stderr: reader.join().unwrap_or_default(),
    }
}

/// One HTTP client for every set-up fetch (a client per request would load
/// the system's root certificates and open a connection each time).
static CLIENT: std::sync::LazyLock<reqwest::Client> =
    std::sync::LazyLock::new(reqwest::Client::new);

/// `…/commits/main?pagelen=100&fields=COMMIT_FIELDS` of `repo-NNNN`.
fn trimmed_commits_url(api_url: &str, slug: &str) -> String {
    format!(
        "{api_url}/repositories/{WS}/{slug}/commits/main?pagelen=100&fields={}",
        url::form_urlencoded::byte_serialize(COMMIT_FIELDS.as_bytes()).collect::<String>()
    )
}

/// Sums the simulator's default-branch commits over the workspace.
pub fn total_commits(sim: &Simulator) -> u64 {
    sim.repos(WS)
        .iter()
        .map(|r| sim.branch_commits(WS, &r.slug).len() as u64)
        .sum()
}

/// No rate limit worth the name for the crawler's budget.
pub const UNLIMITED: u32 = 1_000_000_000;
/// Rare audits: an unchanged pass must not audit by chance.
pub const RARE_AUDITS: (&str, &str) = ("BBCRAWL_AUDIT_INTERVAL_SECONDS", "31536000");

/// A blocking GET of one page body from the simulator (bearer token).
pub fn get_body(rt: &tokio::runtime::Runtime, url: &str) -> bytes::Bytes {
    rt.block_on(async {
        CLIENT
            .get(url)
            .bearer_auth(ACCESS_TOKEN)
            .send()
            .await
            .expect("GET")
            .error_for_status()
            .expect("status")
            .bytes()
            .await
            .expect("body")
    })
}

/// The first 100-commit page of `repo-NNNN`, full shape and `fields`-trimmed.
pub fn page_bodies(
    rt: &tokio::runtime::Runtime,
    api_url: &str,
    slug: &str,
) -> (bytes::Bytes, bytes::Bytes) {
    let full = get_body(
        rt,
        &format!("{api_url}/repositories/{WS}/{slug}/commits/main?pagelen=100"),
    );
    let trimmed = get_body(rt, &trimmed_commits_url(api_url, slug));
    (full, trimmed)
}

/// Every commit of the simulator's repositories `0..repos` as the crawler
/// would store them, in 100-commit pages (decoded from trimmed pages served
/// over loopback).
pub fn record_pages(
    rt: &tokio::runtime::Runtime,
    api_url: &str,
    sim: &Simulator,
    repos: usize,
) -> Vec<(RepoState, Vec<Vec<CommitRecord>>)> {
    let sim_repos = sim.repos(WS);
    let mut out = Vec::new();
    for r in sim_repos.iter().take(repos) {
        let mut url = Some(trimmed_commits_url(api_url, &r.slug));
        let mut pages = Vec::new();
        while let Some(u) = url.take() {
            let body = get_body(rt, &u);
            let page: Page<Commit> = serde_json::from_slice(&body).expect("decode page");
            pages.push(
                page.values
                    .iter()
                    .map(|c| c.to_record(WS, &r.slug, &r.uuid, "main"))
                    .collect(),
            );
            url = page.next;
        }
        let state = RepoState::new(WS, &r.uuid, &r.slug, &r.full_name, chrono::Utc::now());
        out.push((state, pages));
    }
    out
}

/// The store-write ceiling: applies every page in order into a fresh store,
/// one atomic batch per page, flushing every 250 ms like the writer actor.
/// Returns commits per second.
pub fn store_write_ceiling(
    dir: &Path,
    pages: &[(RepoState, Vec<Vec<CommitRecord>>)],
) -> (f64, u64) {
    let store = Store::open(dir).expect("open store");
    let t = Instant::now();
    let mut last_flush = Instant::now();
    let mut n = 0u64;
    for (state, repo_pages) in pages {
        let mut state = state.clone();
        for p in repo_pages {
            let out = store.apply_page(&state, p).expect("apply page");
            n += out.new_commits;
            state = out.repo;
            if last_flush.elapsed() >= Duration::from_millis(250) {
                store.flush().expect("flush");
                last_flush = Instant::now();
            }
        }
    }
    store.flush().expect("flush");
    let rate = n as f64 / t.elapsed().as_secs_f64();
    (rate, n)
}

/// A deterministic, well-spread 40-hex commit hash from a seed.
pub fn hash(seed: u64) -> String {
    let mut x = seed;
    let mut out = String::with_capacity(40);
    for _ in 0..5 {
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^= x >> 33;
        out.push_str(&format!("{:08x}", x as u32));
    }
    out
}
