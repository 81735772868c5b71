//! Small helpers so tests read like use: a simulator world, a client for
//! it, and the real `bbcrawl` binary run as a user would.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use bbcrawl::bitbucket::{BitbucketClient, ClientOptions, RateLimitBackoff, RetryBackoff};
use bbcrawl::config::{Credential, Secret};
use bbcrawl::record::CommitRecord;
use bbcrawl::record::RepoState;
use bbcrawl::simulator::{SimCommit, SimCredential, SimOptions, SimServer, Simulator};
use bbcrawl::store::Store;

pub const WS: &str = "acme";
pub const TOKEN: &str = "tok-3c1f9a-very-secret";
pub const EMAIL: &str = "jane@example.com";
pub const API_TOKEN: &str = "ATATT-api-9f8e7d-secret";
pub const USERNAME: &str = "jane-bb";
pub const APP_PASSWORD: &str = "app-pw-5b6c-secret";

/// Audits so rare that none falls between two passes of a test (an
/// unchanged repository must be skipped).
pub const RARE_AUDITS: &[(&str, &str)] = &[("BBCRAWL_AUDIT_INTERVAL_SECONDS", "31536000")];

/// An empty world with workspace `acme`, one credential of each kind with
/// the right scopes, and no rate limit unless `requests_per_hour` is set.
pub fn world(requests_per_hour: u32) -> Simulator {
    let sim = Simulator::new(SimOptions {
        requests_per_hour,
        ..SimOptions::default()
    });
    sim.add_workspace(WS);
    let ws = vec![WS.to_owned()];
    sim.add_credential(SimCredential::AccessToken {
        token: TOKEN.into(),
        scopes: vec!["repository".into()],
        workspaces: ws.clone(),
    });
    sim.add_credential(SimCredential::ApiToken {
        email: EMAIL.into(),
        token: API_TOKEN.into(),
        scopes: vec!["read:repository:bitbucket".into()],
        workspaces: ws.clone(),
    });
    sim.add_credential(SimCredential::AppPassword {
        username: USERNAME.into(),
        password: APP_PASSWORD.into(),
        scopes: vec!["repository".into()],
        workspaces: ws,
    });
    sim
}

pub fn access_token() -> Credential {
    Credential::AccessToken {
        token: Secret::new(TOKEN),
    }
}

pub async fn serve(sim: &Simulator) -> SimServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    sim.serve(listener).await.unwrap()
}

/// A port nobody listens on (bound, noted, closed).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Client options for tests: short backoffs so retries take milliseconds.
pub fn options(server: &SimServer, credentials: Vec<Credential>) -> ClientOptions {
    let mut o = ClientOptions::new(url::Url::parse(&server.api_url()).unwrap(), credentials);
    o.retry_backoff = RetryBackoff {
        initial: Duration::from_millis(5),
        max: Duration::from_millis(20),
    };
    o.rate_limit_backoff = RateLimitBackoff {
        initial: Duration::from_secs(60),
        max: Duration::from_secs(600),
    };
    o.request_timeout = Duration::from_secs(5);
    o.requests_per_hour = 1_000_000;
    o
}

pub fn client(server: &SimServer) -> BitbucketClient {
    BitbucketClient::new(options(server, vec![access_token()])).unwrap()
}

/// Runs the real binary with a clean environment (no BBCRAWL_* or
/// BITBUCKET_* from the developer's shell), in `dir`.
pub async fn bbcrawl(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_bbcrawl"));
    cmd.current_dir(dir).args(args).env_clear();
    if let Ok(path) = std::env::var("PATH") {
        cmd.env("PATH", path);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("bbcrawl did not finish within 60 s")
        .expect("cannot run bbcrawl")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `bbcrawl sync ARGS` against `api_url` (workspace `acme`, the
/// access token) with the store in `store`.
pub async fn sync(
    store: &Path,
    api_url: &str,
    args: &[&str],
    extra_env: &[(&str, &str)],
) -> Output {
    let mut all = vec!["sync"];
    all.extend_from_slice(args);
    let store_s = store.to_string_lossy().into_owned();
    let mut env: Vec<(&str, &str)> = vec![
        ("BBCRAWL_API_URL", api_url),
        ("BBCRAWL_WORKSPACES", WS),
        ("BITBUCKET_ACCESS_TOKEN", TOKEN),
        ("BBCRAWL_STORE", store_s.as_str()),
        ("BBCRAWL_REQUESTS_PER_HOUR", "1000000"),
    ];
    env.extend_from_slice(extra_env);
    let cwd = store.parent().unwrap_or(store);
    bbcrawl(cwd, &all, &env).await
}

/// Serves `sim` and runs a first `sync` into a fresh store (exit 0); the
/// temporary directory lives as long as the returned guard.
pub async fn synced(sim: &Simulator) -> (SimServer, tempfile::TempDir, PathBuf) {
    let server = serve(sim).await;
    let (dir, store) = fresh_store();
    let o = sync(&store, &server.api_url(), &[], &[]).await;
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    (server, dir, store)
}

/// One value per line of NDJSON output.
pub fn parse_ndjson<T: serde::de::DeserializeOwned>(s: &str) -> Vec<T> {
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The simulator's truth: the default-branch commit hashes of `ws/slug`,
/// in the order the API serves them.
pub fn branch_hashes(sim: &Simulator, ws: &str, slug: &str) -> Vec<String> {
    sim.branch_commits(ws, slug)
        .into_iter()
        .map(|c| c.hash)
        .collect()
}

/// The simulator's truth: every repository's default-branch commits in
/// `ws`, by slug (empty for a repository without a default branch).
pub fn branch_truth(sim: &Simulator, ws: &str) -> BTreeMap<String, Vec<SimCommit>> {
    sim.repos(ws)
        .into_iter()
        .map(|r| {
            let commits = sim.branch_commits(ws, &r.slug);
            (r.slug, commits)
        })
        .collect()
}

/// Repository listing requests for workspace `acme` in the log.
pub fn listing_requests(sim: &Simulator) -> usize {
    let path = format!("/2.0/repositories/{WS}");
    sim.requests().iter().filter(|r| r.path == path).count()
}

/// Every stored commit of every repository, as full records, sorted by
/// (workspace, repository uuid, hash): a store's contents for comparison.
pub fn store_records(store: &Path) -> Vec<bbcrawl::record::CommitRecord> {
    let s = open_store(store);
    let mut out = Vec::new();
    for repo in s.repos().unwrap() {
        for c in s.repo_commits(&repo.workspace, &repo.uuid) {
            out.push(c.unwrap().to_record(&repo));
        }
    }
    out.sort_by(|a, b| {
        (&a.workspace, &a.repo_uuid, &a.hash).cmp(&(&b.workspace, &b.repo_uuid, &b.hash))
    });
    out
}

/// The stored repository records.
pub fn store_repos(store: &Path) -> Vec<RepoState> {
    open_store(store).repos().unwrap()
}

/// The stored repository `slug`; panics naming it if there is none.
pub fn repo_named(store: &Store, slug: &str) -> RepoState {
    store
        .repos()
        .unwrap()
        .into_iter()
        .find(|r| r.slug == slug)
        .unwrap_or_else(|| panic!("no repository {slug:?} in the store"))
}

/// The repository `slug` in the store at `path`; panics naming it if there
/// is none.
pub fn stored_repo(path: &Path, slug: &str) -> RepoState {
    repo_named(&open_store(path), slug)
}

/// Opens a store a moment after another opener let go of it. sled releases
/// its file lock when the last of its internal threads drops the database,
/// which can be a few milliseconds after the owner dropped it (or after a
/// child process exited), so a `Locked` right then is retried briefly.
pub fn open_store(path: &Path) -> Store {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match Store::open(path) {
            Ok(s) => return s,
            Err(bbcrawl::store::StoreError::Locked { .. })
                if std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("cannot open the store at {}: {e}", path.display()),
        }
    }
}

/// A temporary directory and the (not yet existing) store path inside it;
/// the directory lives as long as the returned guard.
pub fn fresh_store() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    (dir, store)
}

/// The environment of a `bbcrawl sync` run against the simulator with the
/// access token (like `util::sync`), for runs this module spawns itself.
pub fn sync_env(api_url: &str, store: &Path) -> Vec<(String, String)> {
    vec![
        ("BBCRAWL_API_URL".into(), api_url.into()),
        ("BBCRAWL_WORKSPACES".into(), WS.into()),
        ("BITBUCKET_ACCESS_TOKEN".into(), TOKEN.into()),
        ("BBCRAWL_STORE".into(), store.to_string_lossy().into_owned()),
        ("BBCRAWL_REQUESTS_PER_HOUR".into(), "1000000".into()),
    ]
}

/// `bbcrawl sync` as a child process this test controls (to SIGKILL it);
/// its output goes to `log` so a failure can be investigated.
pub fn spawn_sync(env: &[(String, String)], log: &Path) -> tokio::process::Child {
    spawn_bbcrawl(&["sync"], env, log)
}

/// `bbcrawl ARGS` as a child process this test controls (to signal it),
/// with only `env` and PATH; stdout and stderr go to `log`.
pub fn spawn_bbcrawl(args: &[&str], env: &[(String, String)], log: &Path) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_bbcrawl"));
    cmd.args(args).env_clear();
    if let Ok(path) = std::env::var("PATH") {
        cmd.env("PATH", path);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open child log");
    let err = out.try_clone().expect("clone child log");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .kill_on_drop(true);
    cmd.spawn().expect("cannot start bbcrawl")
}

/// The store holds exactly the simulator's default-branch commits of every
/// repository: same hashes, no duplicates, and each record's date, author,
/// message and parents as served.
pub fn assert_store_is_truth(store: &Path, sim: &Simulator) {
    assert_truth(store_records(store), sim);
}

/// After force pushes: the store's *reachable* commits are exactly the
/// simulator's default branches (as [`assert_store_is_truth`] checks), and
/// every unreachable one is off its branch; returns how many are
/// unreachable.
pub fn assert_reachable_is_truth(store: &Path, sim: &Simulator) -> usize {
    let (reachable, gone): (Vec<_>, Vec<_>) =
        store_records(store).into_iter().partition(|r| r.reachable);
    for r in &gone {
        let on_branch = sim
            .repos(WS)
            .iter()
            .filter(|repo| repo.uuid == r.repo_uuid)
            .any(|repo| {
                sim.branch_commits(WS, &repo.slug)
                    .iter()
                    .any(|c| c.hash == r.hash)
            });
        assert!(
            !on_branch,
            "{} is marked unreachable but is on its branch",
            r.hash
        );
    }
    assert_truth(reachable, sim);
    gone.len()
}

fn assert_truth(records: Vec<bbcrawl::record::CommitRecord>, sim: &Simulator) {
    let mut by_repo: HashMap<String, Vec<CommitRecord>> = HashMap::new();
    for r in records {
        by_repo.entry(r.repo_uuid.clone()).or_default().push(r);
    }
    for repo in sim.repos(WS) {
        let truth = sim.branch_commits(WS, &repo.slug);
        let got = by_repo.remove(&repo.uuid).unwrap_or_default();
        assert_eq!(
            got.len(),
            truth.len(),
            "{}: {} records stored, {} commits on the default branch",
            repo.slug,
            got.len(),
            truth.len()
        );
        let by_hash: HashMap<&str, &CommitRecord> =
            got.iter().map(|r| (r.hash.as_str(), r)).collect();
        assert_eq!(by_hash.len(), got.len(), "{}: duplicate records", repo.slug);
        for c in &truth {
            let r = by_hash
                .get(c.hash.as_str())
                .unwrap_or_else(|| panic!("{}: commit {} not stored", repo.slug, c.hash));
            assert_eq!(r.repo, repo.slug, "{}", c.hash);
            assert_eq!(r.date, c.date, "{}: date", c.hash);
            assert_eq!(
                r.author.raw.as_deref(),
                Some(c.author_raw.as_str()),
                "{}: author",
                c.hash
            );
            assert_eq!(r.message, c.message, "{}: message", c.hash);
            assert_eq!(r.parents, c.parents, "{}: parents", c.hash);
            assert!(r.reachable, "{}: reachable", c.hash);
        }
    }
    assert!(
        by_repo.values().all(Vec::is_empty),
        "commits stored for repositories the simulator does not have: {:?}",
        by_repo.keys().collect::<Vec<_>>()
    );
}

/// A tmpfs mounted for one test, unmounted when dropped (disk-full and
/// read-only tests; they need root).
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as mount(8) reads it) at `dir`; `None`
    /// when this process may not mount (not root, or no CAP_SYS_ADMIN).
    pub fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }

    /// Grows or shrinks it.
    pub fn resize(&self, size: &str) {
        let ok = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot resize the tmpfs at {}", self.0.display());
    }

    /// Bytes free on it.
    pub fn free(&self) -> u64 {
        fs2::available_space(&self.0).unwrap()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: a daemon killed on a failed assertion may still hold it.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// `bbcrawl run` on `store` against `api_url` (workspace [`WS`], [`TOKEN`],
/// listening on an ephemeral loopback port, a pass every
/// `interval_seconds`, a budget that never binds), `extra_env` after
/// those, no stdin, stderr into `daemon.log` beside the store: the
/// command, ready to spawn, and that log's path.
pub fn run_command(
    store: &Path,
    api_url: &str,
    interval_seconds: &str,
    extra_env: &[(&str, &str)],
) -> (tokio::process::Command, PathBuf) {
    let dir = store.parent().unwrap();
    let log = dir.join("daemon.log");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_bbcrawl"));
    cmd.current_dir(dir)
        .args(["run", "--log-format", "json"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("BBCRAWL_API_URL", api_url)
        .env("BBCRAWL_WORKSPACES", WS)
        .env("BITBUCKET_ACCESS_TOKEN", TOKEN)
        .env("BBCRAWL_STORE", store)
        .env("BBCRAWL_LISTEN", "127.0.0.1:0")
        .env("BBCRAWL_INTERVAL_SECONDS", interval_seconds)
        .env("BBCRAWL_REQUESTS_PER_HOUR", "1000000")
        .envs(extra_env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true);
    (cmd, log)
}

/// The address `bbcrawl run` recorded in `<store>/daemon.json`, once it is
/// written (within 30 s; the child's log if it exits first).
pub async fn daemon_addr(store: &Path, child: &mut tokio::process::Child, log: &Path) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(a) = bbcrawl::daemon::read_address(store) {
            return a.addr.to_string();
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "bbcrawl run exited ({status}):\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no daemon.json after 30 s\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
