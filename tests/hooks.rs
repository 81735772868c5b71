//! Webhooks (SPEC section 13, issue 17) through the real binary: the
//! simulator sends real-shaped signed `repo:push` deliveries to `bbcrawl
//! run`'s `hooks_listen`, and the store follows within seconds with only
//! the commit requests the pushes need; forged deliveries cost nothing;
//! a lost delivery is found by the next pass; `hooks install` is
//! idempotent.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bbcrawl::simulator::{send_delivery, Delivery, RepoSpec, SimCredential, Simulator};

use crate::util::*;

const SECRET: &str = "5f2c0a6f7e-webhook-test-secret";

/// A running `bbcrawl run` with a webhook receiver.
struct Hooked {
    child: tokio::process::Child,
    /// The endpoint (metrics, health, API).
    addr: SocketAddr,
    /// `http://127.0.0.1:PORT/hooks/bitbucket`.
    hook_url: String,
    log: PathBuf,
    http: reqwest::Client,
}

impl Hooked {
    /// Starts `bbcrawl run` on `store` with `hooks_listen` on a free port
    /// and the secret file `secret_file`, and waits for its first pass.
    async fn start(
        store: &Path,
        api_url: &str,
        secret_file: &Path,
        interval_seconds: &str,
        extra_env: &[(&str, &str)],
    ) -> Hooked {
        let port = free_port();
        let hooks_listen = format!("127.0.0.1:{port}");
        let secret_file = secret_file.to_str().unwrap();
        let env: Vec<(&str, &str)> = [
            ("BBCRAWL_AUDIT_INTERVAL_SECONDS", "31536000"),
            ("BBCRAWL_HOOKS_LISTEN", hooks_listen.as_str()),
            ("BBCRAWL_HOOKS_SECRET_FILE", secret_file),
        ]
        .into_iter()
        .chain(extra_env.iter().copied())
        .collect();
        let (mut cmd, log) = run_command(store, api_url, interval_seconds, &env);
        let mut child = cmd.spawn().expect("cannot start bbcrawl run");
        let addr: SocketAddr = daemon_addr(store, &mut child, &log).await.parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let http = reqwest::Client::new();
        let daemon = Hooked {
            child,
            addr,
            hook_url: format!("http://{hooks_listen}/hooks/bitbucket"),
            log,
            http,
        };
        // The first pass is done when /healthz says ok.
        loop {
            let body = daemon.get("/healthz").await.1;
            if body.contains("\"ok\"") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "first pass not done: {}",
                daemon.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        daemon
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let resp = match self
            .http
            .get(format!("http://{}{path}", self.addr))
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => panic!("GET {path}: {e}\n{}", self.logs()),
        };
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// Whether `hash` is queryable through the daemon's API.
    async fn has(&self, hash: &str) -> bool {
        self.get(&format!("/api/v1/show/{hash}")).await.0 == 200
    }

    /// Waits until every hash is queryable.
    async fn wait_for(&self, hashes: &[String], within: Duration) {
        let deadline = Instant::now() + within;
        for h in hashes {
            while !self.has(h).await {
                assert!(
                    Instant::now() < deadline,
                    "{h} not stored within {within:?}\n{}",
                    self.logs()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// The sum of a metric's samples whose labels include `label`.
    async fn metric(&self, name: &str, label: Option<&str>) -> f64 {
        let text = self.get("/metrics").await.1;
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter(|l| label.is_none_or(|want| l.contains(want)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }

    /// Resident memory of the daemon, in KiB.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    async fn stop(mut self) {
        let pid = self.pid().to_string();
        let kill = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(kill.success());
        let status = tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .expect("bbcrawl run did not stop within 15 s")
            .unwrap();
        assert_eq!(status.code(), Some(0), "{}", self.logs());
    }

    fn logs(&self) -> String {
        read(&self.log)
    }
}

/// Sends `d` with a client kept for many deliveries (building one per
/// delivery, as `send_delivery` does, costs more than the delivery).
async fn post(http: &reqwest::Client, url: &str, d: &Delivery) -> u16 {
    let mut req = http.post(url).body(d.body.clone());
    for (k, v) in &d.headers {
        req = req.header(k, v);
    }
    match req.send().await {
        Ok(resp) => resp.status().as_u16(),
        Err(_) => 0,
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// A secret file as `hooks install` would leave it (0600).
fn secret_file(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("hook-secret");
    std::fs::write(&path, format!("{SECRET}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// A world of `repos` repositories `r00`, `r01`, … with `commits` each.
fn hooked_world(repos: usize, commits: usize) -> Simulator {
    let sim = world(0);
    for i in 0..repos {
        sim.add_repo(WS, RepoSpec::new(&format!("r{i:02}"), commits));
    }
    sim
}

fn commit_requests(sim: &Simulator) -> usize {
    sim.requests()
        .iter()
        .filter(|r| r.path.contains("/commits/"))
        .count()
}

fn other_requests(sim: &Simulator) -> Vec<String> {
    sim.requests()
        .iter()
        .filter(|r| !r.path.contains("/commits/"))
        .map(|r| r.path.clone())
        .collect()
}

/// Everything set up: a world, its server, a synced store and a daemon
/// receiving the world's webhooks.
struct Setup {
    sim: Simulator,
    _server: bbcrawl::simulator::SimServer,
    _dir: tempfile::TempDir,
    store: PathBuf,
    daemon: Hooked,
}

async fn setup(sim: Simulator, interval_seconds: &str) -> Setup {
    let server = serve(&sim).await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let secret = secret_file(dir.path());
    let daemon = Hooked::start(&store, &server.api_url(), &secret, interval_seconds, &[]).await;
    sim.add_hook(WS, &daemon.hook_url, Some(SECRET));
    sim.clear_requests();
    Setup {
        sim,
        _server: server,
        _dir: dir,
        store,
        daemon,
    }
}

/// A pushed tip: when it was pushed, and how long until it was queryable.
type Pending = (String, Instant, Option<Duration>);

impl Setup {
    /// Stops the daemon and checks the store is exactly the simulator's.
    async fn stop_and_check_exact(self) {
        let Setup {
            sim, store, daemon, ..
        } = self;
        daemon.stop().await;
        assert_store_is_truth(&store, &sim);
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_are_queryable_within_seconds_with_only_the_commit_requests_they_need() {
    let s = setup(hooked_world(50, 30), "3600").await;
    let (sim, daemon) = (&s.sim, &s.daemon);

    // 200 pushes round-robin over 50 repositories (each repository every
    // 2.5 s), mostly small, every tenth over a page.
    let pending: Arc<Mutex<Vec<Pending>>> = Arc::default();
    let poller = {
        let pending = Arc::clone(&pending);
        let http = daemon.http.clone();
        let base = format!("http://{}", daemon.addr);
        tokio::spawn(async move {
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
    let mut pages = 0usize;
    for i in 0..200usize {
        let n = if i % 10 == 9 { 101 + i % 50 } else { 1 + i % 5 };
        pages += n.div_ceil(100);
        let slug = format!("r{:02}", i % 50);
        let pushed_at = Instant::now();
        let hashes = sim.push(WS, &slug, n);
        assert_eq!(hashes.len(), n);
        pending
            .lock()
            .unwrap()
            .push((hashes[0].clone(), pushed_at, None));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while pending.lock().unwrap().iter().any(|p| p.2.is_none()) {
        assert!(
            Instant::now() < deadline,
            "pushes not stored within 30 s\n{}",
            daemon.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    poller.abort();
    let mut latencies: Vec<Duration> = pending
        .lock()
        .unwrap()
        .iter()
        .map(|p| p.2.unwrap())
        .collect();
    latencies.sort();
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    println!(
        "push -> queryable over 200 pushes to 50 repositories: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        p50.as_secs_f64() * 1000.0,
        p99.as_secs_f64() * 1000.0,
        latencies.last().unwrap().as_secs_f64() * 1000.0
    );
    assert!(p50 <= Duration::from_secs(1), "p50 {p50:?}");
    assert!(p99 <= Duration::from_secs(3), "p99 {p99:?}");

    // Exactly one commit request per page of new commits: no listing, no
    // audit, nothing else.
    assert!(sim.deliveries_settled(Duration::from_secs(10)).await);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(other_requests(sim), Vec::<String>::new());
    assert_eq!(commit_requests(sim), pages, "Σ⌈new/100⌉ = {pages}");
    assert!(sim
        .deliveries()
        .iter()
        .all(|d| d.final_status() == Some(202)));
    assert_eq!(
        daemon
            .metric(
                "bbcrawl_hook_deliveries_total",
                Some("outcome=\"accepted\"")
            )
            .await,
        200.0
    );
    assert_eq!(
        daemon
            .metric("bbcrawl_hook_fetches_total", Some("result=\"ok\""))
            .await,
        200.0
    );
    assert_eq!(
        daemon
            .metric("bbcrawl_hook_push_to_stored_seconds_count", None)
            .await,
        200.0
    );

    s.stop_and_check_exact().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_force_push_by_webhook_marks_orphans_and_stores_the_new_commits() {
    let s = setup(hooked_world(3, 40), "3600").await;
    let (sim, daemon) = (&s.sim, &s.daemon);
    let pushed = sim.push(WS, "r01", 4);
    daemon.wait_for(&pushed[..1], Duration::from_secs(10)).await;
    let added = sim.force_push(WS, "r01", 6, 3);
    daemon.wait_for(&added[..1], Duration::from_secs(10)).await;
    assert!(sim.deliveries_settled(Duration::from_secs(10)).await);
    // Settled: the walk that stored the tip also re-marked reachability.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(other_requests(sim), Vec::<String>::new());
    let Setup {
        sim, store, daemon, ..
    } = s;
    daemon.stop().await;
    let orphans = assert_reachable_is_truth(&store, &sim);
    assert_eq!(orphans, 6, "the six commits the force push dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_branches_tags_deletions_and_repeats_fetch_nothing_and_bursts_fetch_once() {
    let s = setup(hooked_world(2, 20), "3600").await;
    let (sim, daemon) = (&s.sim, &s.daemon);

    sim.push_branch(WS, "r00", "feature/x", 3);
    sim.push_tag(WS, "r00", "v1.0");
    assert!(sim.delete_branch(WS, "r00", "feature/x"));
    assert!(sim.deliveries_settled(Duration::from_secs(10)).await);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(sim.requests().len(), 0, "{:?}", other_requests(sim));
    assert_eq!(
        daemon
            .metric("bbcrawl_hook_deliveries_total", Some("outcome=\"ignored\""))
            .await,
        3.0
    );

    // Five pushes in a burst: one walk, one request.
    let mut last = Vec::new();
    for _ in 0..5 {
        last = sim.push(WS, "r01", 2);
    }
    daemon.wait_for(&last[..1], Duration::from_secs(10)).await;
    assert!(sim.deliveries_settled(Duration::from_secs(10)).await);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(commit_requests(sim), 1, "{:?}", sim.requests());

    // A delivery bbcrawl never got, then sent three times by hand with the
    // same X-Request-UUID: one walk.
    sim.clear_requests();
    sim.lose_next_deliveries(1);
    let pushed = sim.push(WS, "r00", 3);
    assert!(sim.deliveries_settled(Duration::from_secs(10)).await);
    let delivery = sim.push_delivery(WS, "r00").signed(SECRET);
    for _ in 0..3 {
        assert_eq!(send_delivery(&daemon.hook_url, &delivery).await, Ok(202));
    }
    daemon.wait_for(&pushed[..1], Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(commit_requests(sim), 1, "{:?}", sim.requests());
    // The same push again, as a new delivery: its tip is the stored head.
    let again = delivery
        .clone()
        .with_header("X-Request-UUID", "0f6a7a38-5b1e-4d3c-9a61-0c1f2d3e4f50");
    assert_eq!(send_delivery(&daemon.hook_url, &again).await, Ok(202));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(commit_requests(sim), 1, "{:?}", sim.requests());
    assert!(
        daemon
            .metric(
                "bbcrawl_hook_deliveries_total",
                Some("outcome=\"duplicate\"")
            )
            .await
            >= 3.0
    );

    s.stop_and_check_exact().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_repository_is_listed_once_then_crawled_and_the_answer_never_waits_for_the_crawl() {
    let s = setup(hooked_world(1, 10), "3600").await;
    let (sim, daemon) = (&s.sim, &s.daemon);
    sim.add_repo(WS, RepoSpec::new("fresh", 150));
    let pushed = sim.push(WS, "fresh", 2);
    daemon.wait_for(&pushed[..1], Duration::from_secs(10)).await;
    assert!(sim.deliveries_settled(Duration::from_secs(10)).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let others = other_requests(sim);
    assert_eq!(others, vec![format!("/2.0/repositories/{WS}/fresh")]);
    assert_eq!(commit_requests(sim), 2, "152 commits: two pages");

    // A slow API: the delivery is still answered at once.
    sim.set_latency(Duration::from_secs(2));
    sim.lose_next_deliveries(1);
    sim.push(WS, "r00", 1);
    let delivery = sim.push_delivery(WS, "r00").signed(SECRET);
    let sent = Instant::now();
    assert_eq!(send_delivery(&daemon.hook_url, &delivery).await, Ok(202));
    let took = sent.elapsed();
    assert!(took < Duration::from_millis(100), "answered in {took:?}");
    sim.set_latency(Duration::ZERO);

    // A signed delivery for a workspace this instance does not crawl: 404,
    // counted, nothing fetched.
    sim.clear_requests();
    let foreign = sim.push_delivery("elsewhere", "web").signed(SECRET);
    assert_eq!(send_delivery(&daemon.hook_url, &foreign).await, Ok(404));
    assert_eq!(
        daemon
            .metric(
                "bbcrawl_hook_deliveries_total",
                Some("outcome=\"unknown_workspace\"")
            )
            .await,
        1.0
    );

    // The receiver's listener serves nothing else: no metrics, no API.
    let base = daemon
        .hook_url
        .trim_end_matches("/hooks/bitbucket")
        .to_owned();
    for path in [
        "/metrics",
        "/healthz",
        "/api/v1/stats",
        "/api/v1/export",
        "/admin/hooks",
    ] {
        let resp = daemon
            .http
            .get(format!("{base}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "{path}");
        assert!(!resp.text().await.unwrap().contains("bbcrawl_"), "{path}");
    }
    let resp = daemon.http.get(&daemon.hook_url).send().await.unwrap();
    assert_eq!(resp.status(), 405);

    let Setup {
        sim, store, daemon, ..
    } = s;
    tokio::time::sleep(Duration::from_secs(3)).await;
    daemon.stop().await;
    assert_store_is_truth(&store, &sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_forged_deliveries_send_no_request_and_leave_memory_flat() {
    let s = setup(hooked_world(3, 10), "3600").await;
    let (sim, daemon) = (&s.sim, &s.daemon);
    // A real delivery to replay: its request uuid with another body.
    let real = sim.push_delivery(WS, "r00").signed(SECRET);
    let bad_body = {
        let mut b = real.body.clone();
        let text = String::from_utf8(b.clone()).unwrap();
        b = text.replacen("r00", "r01", 1).into_bytes();
        b
    };
    let kinds: Vec<Delivery> = vec![
        real.clone().signed("not-the-secret"),
        real.clone().with_body(bad_body),
        real.clone().without_header("X-Hub-Signature"),
        real.clone().with_body(vec![b'{'; 1 << 20]).signed(SECRET),
    ];
    let before = daemon.rss_kib();
    let url = daemon.hook_url.clone();
    let started = Instant::now();
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    let mut rss = Vec::new();
    for round in 0..10 {
        let mut tasks = Vec::new();
        for lane in 0..8 {
            let kinds = kinds.clone();
            let url = url.clone();
            let http = daemon.http.clone();
            // The receiver answers a 1 MB body 413 without reading it and
            // closes that connection: those go on connections of their own.
            let oneshot = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap();
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                for i in 0..125 {
                    let which = (lane * 125 + i + round) % kinds.len();
                    let client = if which == 3 { &oneshot } else { &http };
                    out.push(post(client, &url, &kinds[which]).await);
                }
                out
            }));
        }
        for t in tasks {
            for st in t.await.unwrap() {
                *statuses.entry(st).or_default() += 1;
            }
        }
        // The daemon keeps serving.
        assert_eq!(daemon.get("/healthz").await.0, 200);
        rss.push(daemon.rss_kib());
    }
    let after = daemon.rss_kib();
    println!(
        "10,000 forged deliveries in {:.1} s: {statuses:?}; RSS {before} KiB before, {after} KiB after, per 1,000: {rss:?}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(statuses.values().sum::<usize>(), 10_000);
    // Every small one answered 401; a 1 MB one 413, or its connection was
    // closed while the body was still being sent.
    assert_eq!(statuses.get(&401), Some(&7500), "{statuses:?}");
    assert_eq!(sim.requests().len(), 0, "a forged delivery made a request");
    assert_eq!(statuses.get(&202), None);
    assert_eq!(
        daemon
            .metric(
                "bbcrawl_hook_deliveries_total",
                Some("outcome=\"bad_signature\"")
            )
            .await,
        5000.0
    );
    assert_eq!(
        daemon
            .metric(
                "bbcrawl_hook_deliveries_total",
                Some("outcome=\"unsigned\"")
            )
            .await,
        2500.0
    );
    assert_eq!(
        daemon
            .metric(
                "bbcrawl_hook_deliveries_total",
                Some("outcome=\"too_large\"")
            )
            .await,
        2500.0
    );
    // Flat: the last thousand cost no more memory than the first.
    let growth = rss[9].saturating_sub(rss[0]);
    assert!(
        growth < 8 * 1024,
        "RSS grew {growth} KiB over 9,000 forged deliveries: {rss:?}"
    );

    // A genuine delivery still works afterwards.
    let pushed = sim.push(WS, "r02", 2);
    daemon.wait_for(&pushed[..1], Duration::from_secs(10)).await;
    let Setup { daemon, .. } = s;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_delivery_is_found_by_the_next_pass() {
    let s = setup(hooked_world(3, 10), "2").await;
    let (sim, daemon) = (&s.sim, &s.daemon);
    sim.lose_next_deliveries(1);
    let pushed = sim.push(WS, "r02", 5);
    assert!(sim.deliveries_settled(Duration::from_secs(10)).await);
    assert!(sim.deliveries().iter().any(|d| d.lost));
    // No delivery: the gated pass (every 2 s) sees updated_on move.
    daemon.wait_for(&pushed[..1], Duration::from_secs(15)).await;
    assert!(listing_requests(sim) >= 1);
    s.stop_and_check_exact().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_install_is_idempotent_rotates_the_secret_and_the_daemon_follows() {
    use std::os::unix::fs::PermissionsExt;
    let sim = hooked_world(2, 10);
    sim.add_credential(SimCredential::AccessToken {
        token: "hook-admin-token".into(),
        scopes: vec!["repository".into(), "webhook".into()],
        workspaces: vec![WS.into()],
    });
    let server = serve(&sim).await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("hook-secret");
    let store = dir.path().join("store");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/hooks/bitbucket");
    let env_with = |token: &str| -> Vec<(String, String)> {
        vec![
            ("BBCRAWL_API_URL".into(), server.api_url()),
            ("BBCRAWL_WORKSPACES".into(), WS.into()),
            ("BITBUCKET_ACCESS_TOKEN".into(), token.into()),
            ("BBCRAWL_STORE".into(), store.display().to_string()),
            (
                "BBCRAWL_HOOKS_SECRET_FILE".into(),
                secret.display().to_string(),
            ),
        ]
    };
    let as_refs = |env: &[(String, String)]| -> Vec<(String, String)> { env.to_vec() };
    let run = |args: Vec<String>, env: Vec<(String, String)>| {
        let dir = dir.path().to_owned();
        async move {
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            bbcrawl(&dir, &args, &env).await
        }
    };
    let install = vec![
        "hooks".to_owned(),
        "install".into(),
        "--workspace".into(),
        WS.into(),
        "--url".into(),
        url.clone(),
    ];

    // Without the webhook scope: refused, nothing written.
    let out = run(install.clone(), as_refs(&env_with(TOKEN))).await;
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(!secret.exists());
    assert!(sim.hooks(WS).is_empty());

    let out = run(install.clone(), env_with("hook-admin-token")).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("created workspace webhook"),
        "{}",
        stdout(&out)
    );
    let hooks = sim.hooks(WS);
    assert_eq!(hooks.len(), 1);
    let first = std::fs::read_to_string(&secret).unwrap();
    assert_eq!(hooks[0].secret.as_deref(), Some(first.trim()));
    assert_eq!(hooks[0].events, vec!["repo:push".to_owned()]);
    assert_eq!(
        std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(!stdout(&out).contains(first.trim()) && !stderr(&out).contains(first.trim()));

    // Again: the same webhook, a new secret.
    let out = run(install.clone(), env_with("hook-admin-token")).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("updated workspace webhook"),
        "{}",
        stdout(&out)
    );
    let hooks = sim.hooks(WS);
    assert_eq!(hooks.len(), 1);
    let second = std::fs::read_to_string(&secret).unwrap();
    assert_ne!(first, second);
    assert_eq!(hooks[0].secret.as_deref(), Some(second.trim()));

    // The daemon verifies with the installed secret; status shows the hook
    // and the last delivery.
    let log = dir.path().join("daemon.log");
    let mut env = env_with("hook-admin-token");
    env.push(("BBCRAWL_LISTEN".into(), "127.0.0.1:0".into()));
    env.push(("BBCRAWL_INTERVAL_SECONDS".into(), "3600".into()));
    env.push(("BBCRAWL_HOOKS_LISTEN".into(), format!("127.0.0.1:{port}")));
    let mut child = spawn_bbcrawl(&["run"], &env, &log);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !store.join("daemon.json").exists()
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
    {
        assert!(Instant::now() < deadline, "{}", read(&log));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Wait for the first pass to store r00's head before pushing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pushed = sim.push(WS, "r00", 2);
    assert!(sim.deliveries_settled(Duration::from_secs(10)).await);
    assert_eq!(sim.deliveries().last().unwrap().final_status(), Some(202));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = run(
            vec!["show".into(), pushed[0].clone()],
            env_with("hook-admin-token"),
        )
        .await;
        if out.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "{}", read(&log));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = run(
        vec!["hooks".into(), "status".into()],
        env_with("hook-admin-token"),
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains(&hooks[0].uuid), "{text}");
    assert!(text.contains(&url), "{text}");
    assert!(
        text.contains("last delivery:") && text.contains("accepted"),
        "{text}"
    );
    assert!(
        text.contains("last webhook walk:") && text.contains(" ok "),
        "{text}"
    );
    assert!(!text.contains(second.trim()), "{text}");
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().unwrap().to_string()])
        .status();
    let _ = tokio::time::timeout(Duration::from_secs(15), child.wait()).await;
}

#[tokio::test]
async fn a_receiver_without_a_usable_secret_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let base = [
        ("BBCRAWL_API_URL", "http://127.0.0.1:9/2.0"),
        ("BBCRAWL_WORKSPACES", WS),
        ("BITBUCKET_ACCESS_TOKEN", TOKEN),
        ("BBCRAWL_STORE", store.to_str().unwrap()),
        ("BBCRAWL_HOOKS_LISTEN", "127.0.0.1:0"),
    ];
    let out = bbcrawl(dir.path(), &["run"], &base).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("hooks_secret_file"),
        "{}",
        stderr(&out)
    );

    let missing = dir.path().join("nope");
    let mut env = base.to_vec();
    env.push(("BBCRAWL_HOOKS_SECRET_FILE", missing.to_str().unwrap()));
    let out = bbcrawl(dir.path(), &["run"], &env).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot read hooks_secret_file"),
        "{}",
        stderr(&out)
    );

    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    env.pop();
    env.push(("BBCRAWL_HOOKS_SECRET_FILE", empty.to_str().unwrap()));
    let out = bbcrawl(dir.path(), &["run"], &env).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("is empty"), "{}", stderr(&out));
    assert!(!store.join("daemon.json").exists());

    // The receiver's address cannot be the endpoint's.
    let mut env = base.to_vec();
    env.pop();
    env.push(("BBCRAWL_HOOKS_LISTEN", "127.0.0.1:9490"));
    env.push(("BBCRAWL_HOOKS_SECRET_FILE", empty.to_str().unwrap()));
    let out = bbcrawl(dir.path(), &["run"], &env).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("its own address"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_walk_killed_mid_way_resumes_where_it_stopped() {
    let s = setup(hooked_world(2, 10), "3600").await;
    let (sim, daemon) = (&s.sim, &s.daemon);
    // A new repository of 30 pages, pushed to: its first crawl is a
    // webhook walk, slowed so that the kill lands in the middle.
    sim.add_repo(WS, RepoSpec::new("big", 2990));
    sim.set_latency(Duration::from_millis(40));
    sim.push(WS, "big", 10);
    let big = |sim: &Simulator| {
        sim.requests()
            .iter()
            .filter(|r| r.path.contains("/big/commits/"))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while big(sim) < 10 {
        assert!(Instant::now() < deadline, "{}", daemon.logs());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let kill = std::process::Command::new("kill")
        .args(["-KILL", &daemon.pid().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let Setup {
        sim,
        _server,
        _dir,
        store,
        mut daemon,
    } = s;
    daemon.child.wait().await.unwrap();
    let before = big(&sim);
    assert!(
        before < 30,
        "the walk finished before the kill ({before} pages)"
    );
    sim.set_latency(Duration::ZERO);

    // The next daemon's first pass resumes the saved walk.
    std::fs::remove_file(store.join("daemon.json")).unwrap();
    let secret = store.parent().unwrap().join("hook-secret");
    let daemon = Hooked::start(&store, &_server.api_url(), &secret, "3600", &[]).await;
    let after = big(&sim) - before;
    assert!(
        after <= 30 - before + 2,
        "{before} pages before the kill, {after} after: the walk started over"
    );
    daemon.stop().await;
    assert_store_is_truth(&store, &sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_walks_and_passes_every_second_together_keep_the_store_exact() {
    let s = setup(hooked_world(5, 60), "1").await;
    let (sim, daemon) = (&s.sim, &s.daemon);
    sim.set_latency(Duration::from_millis(5));
    let mut last = Vec::new();
    for i in 0..40usize {
        let slug = format!("r{:02}", i % 5);
        if i % 10 == 7 {
            last = sim.force_push(WS, &slug, 3, 2);
        } else {
            last = sim.push(WS, &slug, 1 + i % 3);
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    daemon.wait_for(&last[..1], Duration::from_secs(10)).await;
    assert!(sim.deliveries_settled(Duration::from_secs(10)).await);
    // Let the last walks and one more pass end.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        daemon
            .metric("bbcrawl_hook_fetches_total", Some("result=\"ok\""))
            .await
            > 0.0
    );
    assert_eq!(
        daemon
            .metric("bbcrawl_hook_fetches_total", Some("result=\"failed\""))
            .await,
        0.0
    );
    let Setup {
        sim, store, daemon, ..
    } = s;
    daemon.stop().await;
    let orphans = assert_reachable_is_truth(&store, &sim);
    // Four force pushes dropped three commits each; a dropped commit no
    // walk had stored yet is not in the store at all.
    assert!((1..=12).contains(&orphans), "{orphans} unreachable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_delivery_of_a_quiet_push_is_found_by_the_audit() {
    let sim = hooked_world(3, 10);
    let server = serve(&sim).await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let secret = secret_file(dir.path());
    let daemon = Hooked::start(
        &store,
        &server.api_url(),
        &secret,
        "1",
        &[("BBCRAWL_AUDIT_INTERVAL_SECONDS", "3")],
    )
    .await;
    sim.add_hook(WS, &daemon.hook_url, Some(SECRET));
    // A push that moves no `updated_on`, and whose delivery is lost: only
    // the audit can find it.
    sim.lose_next_deliveries(1);
    let pushed = sim.push_quietly(WS, "r01", 4);
    assert!(sim.deliveries_settled(Duration::from_secs(10)).await);
    daemon.wait_for(&pushed[..1], Duration::from_secs(20)).await;
    assert!(
        daemon
            .metric("bbcrawl_audit_found_changes_total", None)
            .await
            >= 1.0
    );
    assert_eq!(daemon.metric("bbcrawl_hook_fetches_total", None).await, 0.0);
    daemon.stop().await;
    assert_store_is_truth(&store, &sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_answers_during_a_webhook_walk_are_retried_and_lose_nothing() {
    let s = setup(hooked_world(2, 10), "3600").await;
    let (sim, daemon) = (&s.sim, &s.daemon);
    // The walk's first answers: a 502, a reset, a cut body, bad JSON; then
    // the real page (retried with the crawl's own backoff).
    sim.inject(
        Some("/r01/commits/"),
        vec![
            bbcrawl::simulator::Fault::Status(502),
            bbcrawl::simulator::Fault::Reset,
            bbcrawl::simulator::Fault::Truncated,
            bbcrawl::simulator::Fault::MalformedJson,
        ],
    );
    let pushed = sim.push(WS, "r01", 120);
    daemon.wait_for(&pushed[..1], Duration::from_secs(30)).await;
    daemon
        .wait_for(&pushed[119..], Duration::from_secs(10))
        .await;
    assert!(sim.deliveries_settled(Duration::from_secs(10)).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        daemon
            .metric("bbcrawl_hook_fetches_total", Some("result=\"ok\""))
            .await,
        1.0
    );
    // Two pages, four of their attempts broken.
    assert_eq!(commit_requests(sim), 2 + 4, "{:?}", sim.requests());
    s.stop_and_check_exact().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_is_never_walked_by_a_pass_and_a_webhook_at_once() {
    // Passes every second and a webhook walk after every push, both wanting
    // the same repository; every answer takes 150 ms. A walk sends its next
    // request only after the previous answer, so while one walk at a time
    // holds the repository, its requests arrive at least 150 ms apart.
    let s = setup(hooked_world(1, 10), "1").await;
    let (sim, daemon) = (&s.sim, &s.daemon);
    let latency = Duration::from_millis(150);
    sim.set_latency(latency);
    let mut last = Vec::new();
    for _ in 0..6 {
        last = sim.push(WS, "r00", 250);
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    daemon.wait_for(&last[..1], Duration::from_secs(30)).await;
    assert!(sim.deliveries_settled(Duration::from_secs(10)).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let at: Vec<tokio::time::Instant> = sim
        .requests()
        .iter()
        .filter(|r| r.path.contains("/r00/commits/"))
        .map(|r| r.at)
        .collect();
    let hooks = daemon
        .metric("bbcrawl_hook_fetches_total", Some("result=\"ok\""))
        .await;
    assert!(hooks >= 1.0, "no webhook walk ran");
    let closest = at
        .windows(2)
        .map(|w| w[1] - w[0])
        .min()
        .expect("commit requests");
    assert!(
        closest >= latency - Duration::from_millis(5),
        "two requests for r00 {closest:?} apart: two walks of it ran at once ({} requests, {hooks} webhook walks)",
        at.len()
    );
    s.stop_and_check_exact().await;
}
