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

/// A child process measured by [`run_measured`]: wall time, peak RSS and CPU
/// time as `wait4(2)` reports them to a small reaper process (see
/// [`measure_child_main`]).
#[derive(Debug, Clone)]
pub struct Measured {
    /// Spawn to exit, as the reaper saw it.
    pub wall: Duration,
    /// `ru_maxrss` of the child, KiB: the kernel's high-water mark of its
    /// resident set (`VmHWM` at exit), exact, no polling.
    pub peak_rss_kb: u64,
    /// `VmHWM` of the reaper when it spawned the child, KiB: an upper bound
    /// of what `ru_maxrss` may hold from before the child's `exec`.
    pub reaper_rss_kb: u64,
    /// User + system CPU seconds of the child.
    pub cpu: f64,
    /// The exit code, or `-signal` when a signal ended it.
    pub code: i32,
    /// Bytes and lines written to stdout (when it was counted).
    pub stdout_bytes: u64,
    pub stdout_lines: u64,
    /// The first 64 KiB of stdout (when it was counted).
    pub stdout_head: Vec<u8>,
    pub stderr: String,
}

/// `struct rusage` of 64-bit Linux: two `timeval`s, then 14 `long`s.
#[repr(C)]
struct RUsage([i64; 18]);

extern "C" {
    fn wait4(pid: i32, status: *mut i32, options: i32, rusage: *mut RUsage) -> i32;
    fn kill(pid: i32, sig: i32) -> i32;
}

/// Sends `sig` to `pid` (15 = SIGTERM, 9 = SIGKILL).
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) with a pid this bench spawned; no memory involved.
    unsafe {
        kill(pid as i32, sig);
    }
}

/// Waits for the child `pid` (spawned by this process and not yet waited
/// for) and returns its exit code (`-signal` if killed), `ru_maxrss` in KiB
/// and CPU seconds. Beware: Linux counts in `ru_maxrss` the resident set of
/// the process image the child replaced at `exec` — with `vfork`/
/// `posix_spawn` (what `std::process` uses) that is the *parent's*. Hence
/// [`run_measured`] spawns through a small reaper.
pub fn wait_rusage(pid: u32) -> (i32, u64, f64) {
    let mut status = 0i32;
    let mut ru = RUsage([0; 18]);
    loop {
        // SAFETY: both pointers are to live, properly sized locals.
        let r = unsafe { wait4(pid as i32, &mut status, 0, &mut ru) };
        if r == pid as i32 {
            break;
        }
        let e = std::io::Error::last_os_error();
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::Interrupted,
            "wait4({pid}): {e}"
        );
    }
    let code = if status & 0x7f == 0 {
        (status >> 8) & 0xff
    } else {
        -(status & 0x7f)
    };
    let cpu = ru.0[0] as f64 + ru.0[1] as f64 / 1e6 + ru.0[2] as f64 + ru.0[3] as f64 / 1e6;
    (code, ru.0[4] as u64, cpu)
}

/// `VmHWM` of a running process, KiB.
pub fn vm_hwm_kb(pid: u32) -> Option<u64> {
    peak_rss_kb(pid)
}

/// The argument that makes a bench binary a reaper (see [`measure_child_main`]).
pub const MEASURE_FLAG: &str = "--bench-measure-child";

/// Call first in a bench's `main`: when started as
/// `BENCH --bench-measure-child RESULT PROGRAM ARGS…` (by [`measured_command`]),
/// this process — a fresh, small image — spawns `PROGRAM ARGS…` with its own
/// environment and stdio, reaps it with `wait4`, writes
/// `code ru_maxrss_kb cpu_s wall_ns own_vmhwm_kb` to RESULT and exits with
/// the child's status. Its own resident set (a few MB) bounds what the
/// child's `ru_maxrss` can inherit, far below any bbcrawl process.
pub fn measure_child_main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let Some(pos) = args.iter().position(|a| a == MEASURE_FLAG) else {
        return;
    };
    let result = PathBuf::from(&args[pos + 1]);
    let own = peak_rss_kb(std::process::id()).unwrap_or(0);
    let t = Instant::now();
    let child = Command::new(&args[pos + 2])
        .args(&args[pos + 3..])
        .spawn()
        .expect("reaper: spawn");
    let (code, rss, cpu) = wait_rusage(child.id());
    let wall = t.elapsed();
    std::fs::write(
        &result,
        format!("{code} {rss} {cpu} {} {own}\n", wall.as_nanos()),
    )
    .expect("reaper: write result");
    std::process::exit(if code >= 0 { code } else { 128 - code });
}

static MAX_REAPER_KB: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The largest `VmHWM` of a reaper so far, KiB (what a child's `ru_maxrss`
/// could at most have inherited).
pub fn max_reaper_rss_kb() -> u64 {
    MAX_REAPER_KB.load(std::sync::atomic::Ordering::Relaxed)
}

/// A command that runs `program` under this bench's reaper; add the
/// program's arguments, environment and stdio as usual, then
/// [`run_measured`].
pub fn measured_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-tmp");
    std::fs::create_dir_all(&dir).expect("create bench dir");
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let result = dir.join(format!("rusage-{}-{n}", std::process::id()));
    let mut cmd = Command::new(std::env::current_exe().expect("current exe"));
    cmd.arg(MEASURE_FLAG).arg(result).arg(program);
    cmd
}

/// Runs a [`measured_command`] to its end (see [`Measured`]). Stdout is
/// read and counted when `count_stdout` (else set it yourself, e.g.
/// `Stdio::null()`); stderr is collected.
pub fn run_measured(cmd: &mut Command, count_stdout: bool) -> Measured {
    use std::io::Read;
    let args: Vec<&std::ffi::OsStr> = cmd.get_args().collect();
    assert_eq!(
        args.first().copied(),
        Some(std::ffi::OsStr::new(MEASURE_FLAG))
    );
    let result = PathBuf::from(args[1]);
    if count_stdout {
        cmd.stdout(Stdio::piped());
    }
    cmd.stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn the reaper");
    let err = child.stderr.take();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut e) = err {
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    let (mut bytes, mut lines, mut head) = (0u64, 0u64, Vec::new());
    if let Some(mut out) = child.stdout.take() {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = out.read(&mut buf).expect("read stdout");
            if n == 0 {
                break;
            }
            bytes += n as u64;
            lines += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
            if head.len() < 1 << 16 {
                let take = n.min((1 << 16) - head.len());
                head.extend_from_slice(&buf[..take]);
            }
        }
    }
    child.wait().expect("wait for the reaper");
    let stderr = err_reader.join().unwrap_or_default();
    let text = std::fs::read_to_string(&result)
        .unwrap_or_else(|e| panic!("reaper result {}: {e}\n{stderr}", result.display()));
    let _ = std::fs::remove_file(&result);
    let f: Vec<&str> = text.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    MAX_REAPER_KB.fetch_max(num(4) as u64, std::sync::atomic::Ordering::Relaxed);
    Measured {
        wall: Duration::from_nanos(num(3) as u64),
        peak_rss_kb: num(1) as u64,
        reaper_rss_kb: num(4) as u64,
        cpu: num(2),
        code: num(0) as i32,
        stdout_bytes: bytes,
        stdout_lines: lines,
        stdout_head: head,
        stderr,
    }
}

/// Copies a directory tree (regular files and directories only).
pub fn copy_dir(from: &Path, to: &Path) -> std::io::Result<u64> {
    std::fs::create_dir_all(to)?;
    let mut bytes = 0;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let ft = e.file_type()?;
        let dest = to.join(e.file_name());
        if ft.is_dir() {
            bytes += copy_dir(&e.path(), &dest)?;
        } else if ft.is_file() {
            bytes += std::fs::copy(e.path(), dest)?;
        }
    }
    Ok(bytes)
}
