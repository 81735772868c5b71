//! Defects found by trying bbcrawl as a hostile server, a crash and a
//! careless user would (issue 11), each pinned through the real binary:
//! pushes during an interrupted first crawl, `next` cycles, endless
//! `Retry-After`, silent retries, stale daemon address files, exports over
//! special files, and read commands on directories that are not stores.

use std::path::Path;
use std::time::{Duration, Instant};

use bbcrawl::simulator::{RepoSpec, Simulator};

use crate::util::*;

/// Commits requests the simulator has answered for `ws/slug` so far.
fn commits_requests(sim: &Simulator, slug: &str) -> usize {
    let path = format!("/2.0/repositories/{WS}/{slug}/commits/");
    sim.requests()
        .iter()
        .filter(|r| r.path.starts_with(&path) && r.status == 200)
        .count()
}

/// Waits until the simulator has answered `n` commits pages of `slug`.
async fn wait_for_pages(sim: &Simulator, slug: &str, n: usize, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while commits_requests(sim, slug) < n {
        assert!(
            Instant::now() < deadline,
            "{slug}: {} of {n} pages served after 30 s\n{}",
            commits_requests(sim, slug),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// How a run is stopped in the middle of a first crawl.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// `kill -9` of `bbcrawl sync`.
    KillSync,
    /// SIGTERM to `bbcrawl sync`: it stops, flushes and exits 143.
    TermSync,
    /// SIGTERM to `bbcrawl run`: it stops, flushes and exits 0.
    TermRun,
}

fn signal(child: &tokio::process::Child, sig: &str) {
    let pid = child.id().expect("child still running").to_string();
    let ok = std::process::Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap();
    assert!(ok.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_pushed_while_a_first_crawl_was_interrupted_are_fetched_by_the_next_pass() {
    // Moments (pages of `big` served before the stop) from a fixed seed.
    let cases = [
        (Stop::KillSync, 2),
        (Stop::KillSync, 7),
        (Stop::KillSync, 13),
        (Stop::TermSync, 3),
        (Stop::TermSync, 11),
        (Stop::TermRun, 5),
    ];
    for (stop, pages) in cases {
        let sim = world(0);
        sim.add_repo(WS, RepoSpec::new("big", 2_500));
        sim.add_repo(WS, RepoSpec::new("small", 140));
        sim.set_latency(Duration::from_millis(3));
        let server = serve(&sim).await;
        let api = server.api_url();
        let (dir, store) = fresh_store();
        let log = dir.path().join("bbcrawl.log");
        let mut env = sync_env(&api, &store);
        let mut child = match stop {
            Stop::KillSync | Stop::TermSync => spawn_sync(&env, &log),
            Stop::TermRun => {
                env.push(("BBCRAWL_LISTEN".into(), "127.0.0.1:0".into()));
                spawn_bbcrawl(&["run"], &env, &log)
            }
        };
        wait_for_pages(&sim, "big", pages, &log).await;
        match stop {
            Stop::KillSync => child.kill().await.unwrap(),
            Stop::TermSync | Stop::TermRun => signal(&child, "-TERM"),
        }
        let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
            .await
            .expect("no exit within 15 s of the signal")
            .unwrap();
        let logs = std::fs::read_to_string(&log).unwrap_or_default();
        match stop {
            Stop::KillSync => {}
            Stop::TermSync => assert_eq!(status.code(), Some(143), "{stop:?}: {logs}"),
            Stop::TermRun => assert_eq!(status.code(), Some(0), "{stop:?}: {logs}"),
        }
        let big = stored_repo(&store, "big");
        assert!(
            big.head.is_none() && big.walk.as_ref().is_some_and(|w| w.pages > 0),
            "{stop:?} after {pages} pages: big is not mid-walk: {big:?}"
        );

        // sled lets go of the store's lock a few milliseconds after the
        // handle `stored_repo` used is dropped.
        tokio::time::sleep(Duration::from_millis(200)).await;
        sim.push(WS, "big", 5);
        sim.push(WS, "small", 2);
        let out = sync(&store, &api, &[], &[]).await;
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}{}",
            stdout(&out),
            stderr(&out)
        );
        // Exactly one more pass: everything, the pushed commits included.
        assert_store_is_truth(&store, &sim);
        eprintln!(
            "{stop:?} after {pages} pages of big, 5 + 2 pushed: one pass made the store exact ({})",
            stdout(&out).trim()
        );
        // And the gate now has them as seen: the next pass skips both.
        let out = sync(&store, &api, &[], RARE_AUDITS).await;
        assert!(
            stdout(&out).contains("2 skipped unchanged"),
            "{}",
            stdout(&out)
        );
        assert_store_is_truth(&store, &sim);
    }
}

/// A broken caching proxy in front of the simulator: it forwards every
/// request, but on a collection page after the first whose path matches
/// `loop_path`, it points `next` back at that collection's first page
/// (A → B → A). Counts the requests it forwards for `loop_path`.
struct LoopingProxy {
    url: String,
    looped: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

async fn looping_proxy(sim_api: &str, loop_path: &str) -> LoopingProxy {
    use axum::extract::{Request, State};
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    #[derive(Clone)]
    struct Proxy {
        sim_origin: String,
        origin: Arc<Mutex<String>>,
        loop_path: String,
        first_page: Arc<Mutex<HashMap<String, String>>>,
        looped: Arc<AtomicUsize>,
        http: reqwest::Client,
    }

    async fn forward(State(p): State<Proxy>, req: Request) -> axum::response::Response {
        let path = req.uri().path().to_owned();
        let query = req.uri().query().map(str::to_owned);
        let origin = p.origin.lock().unwrap().clone();
        let target = match &query {
            Some(q) => format!("{}{path}?{q}", p.sim_origin),
            None => format!("{}{path}", p.sim_origin),
        };
        let mut fwd = p.http.get(&target);
        if let Some(auth) = req.headers().get("authorization") {
            fwd = fwd.header("authorization", auth.clone());
        }
        let resp = fwd.send().await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap().replace(&p.sim_origin, &origin);
        let mut body = body;
        if path == p.loop_path && status == 200 {
            p.looped.fetch_add(1, Ordering::Relaxed);
            let here = format!("{origin}{path}?{}", query.clone().unwrap_or_default());
            let mut first = p.first_page.lock().unwrap();
            let is_first = query.as_deref().is_none_or(|q| !q.contains("page="));
            if is_first {
                first.insert(path.clone(), here);
            } else if let Some(start) = first.get(&path) {
                let mut v: serde_json::Value = serde_json::from_str(&body).unwrap();
                v["next"] = serde_json::Value::String(start.clone());
                body = v.to_string();
            }
        }
        axum::response::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body))
            .unwrap()
    }

    let sim = url::Url::parse(sim_api).unwrap();
    let sim_origin = sim.origin().ascii_serialization();
    let looped = Arc::new(AtomicUsize::new(0));
    let state = Proxy {
        sim_origin,
        origin: Arc::new(Mutex::new(String::new())),
        loop_path: loop_path.to_owned(),
        first_page: Arc::default(),
        looped: Arc::clone(&looped),
        http: reqwest::Client::new(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    *state.origin.lock().unwrap() = origin.clone();
    let app = axum::Router::new().fallback(forward).with_state(state);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app.into_make_service()).await;
    });
    LoopingProxy {
        url: format!("{origin}{}", sim.path()),
        looped,
    }
}

/// `bbcrawl sync` with `extra` config lines that must end within 20 s.
async fn sync_within_20_s(store: &Path, api: &str, config: &str) -> std::process::Output {
    let dir = store.parent().unwrap();
    let path = dir.join("bbcrawl.toml");
    std::fs::write(&path, config).unwrap();
    let path = path.to_string_lossy().into_owned();
    tokio::time::timeout(
        Duration::from_secs(20),
        sync(store, api, &["--config", &path], &[]),
    )
    .await
    .expect("sync still running after 20 s: it is following the cycle")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commits_next_link_leading_back_fails_that_repository_only() {
    let sim = world(0);
    sim.add_repo(WS, RepoSpec::new("looping", 450));
    sim.add_repo(WS, RepoSpec::new("fine", 120));
    let server = serve(&sim).await;
    let proxy = looping_proxy(
        &server.api_url(),
        &format!("/2.0/repositories/{WS}/looping/commits/main"),
    )
    .await;
    let (_dir, store) = fresh_store();
    let out = sync_within_20_s(&store, &proxy.url, "").await;
    let (text, err) = (stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(6), "{text}{err}");
    assert!(
        text.contains("acme/looping") && text.contains("go round in a circle"),
        "{text}"
    );
    // Page 1, page 2 (whose next leads back to page 1), and nothing more.
    let looped = proxy.looped.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(looped, 2, "requests for the looping branch");
    assert_eq!(stored_repo(&store, "fine").commits_stored, 120);
    assert_eq!(stored_repo(&store, "looping").commits_stored, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_next_link_leading_back_fails_the_pass_with_a_clear_error() {
    let sim = world(0);
    for i in 0..25 {
        sim.add_repo(WS, RepoSpec::new(&format!("svc-{i:02}"), 3));
    }
    let server = serve(&sim).await;
    let proxy = looping_proxy(&server.api_url(), &format!("/2.0/repositories/{WS}")).await;
    let (_dir, store) = fresh_store();
    let out = sync_within_20_s(&store, &proxy.url, "page_size = 10\n").await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{}{err}", stdout(&out));
    assert!(
        err.contains("go round in a circle") && err.contains("/2.0/repositories/acme"),
        "{err}"
    );
    let looped = proxy.looped.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(looped, 2, "listing requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_without_a_web_origin_are_refused_by_their_scheme_not_as_null() {
    for (scheme, named) in [
        ("javascript:", "a javascript: URL"),
        ("file://", "a file: URL"),
    ] {
        let sim = world(0);
        sim.add_repo(WS, RepoSpec::new("web", 250));
        sim.inject(
            Some("/web/commits"),
            vec![bbcrawl::simulator::Fault::ForeignNext(scheme.into())],
        );
        let server = serve(&sim).await;
        let (_dir, store) = fresh_store();
        let out = sync(&store, &server.api_url(), &[], &[]).await;
        let text = stdout(&out);
        assert_eq!(out.status.code(), Some(6), "{text}{}", stderr(&out));
        assert!(
            text.contains(&format!("refused to follow a link to {named}")),
            "{scheme}: {text}"
        );
        assert!(!text.contains("null"), "{text}");
        // Nothing was sent anywhere but the API: one page of `web`.
        assert_eq!(commits_requests(&sim, "web"), 1);
    }
}

/// One sample of `/metrics`.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.split([' ', '{']).next() == Some(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_of_a_billion_seconds_is_capped_at_an_hour_logged_and_shown() {
    use bbcrawl::simulator::{Fault, RetryAfter};
    let sim = world(0);
    sim.add_repo(WS, RepoSpec::new("web", 50));
    sim.inject(
        Some("/web/commits"),
        vec![Fault::RateLimited(Some(RetryAfter::Seconds(1_000_000_000)))],
    );
    let server = serve(&sim).await;
    let (dir, store) = fresh_store();
    let log = dir.path().join("run.log");
    let mut env = sync_env(&server.api_url(), &store);
    env.push(("BBCRAWL_LISTEN".into(), "127.0.0.1:0".into()));
    let mut child = spawn_bbcrawl(&["run", "--log-format", "json"], &env, &log);
    let addr = daemon_addr(&store, &mut child, &log).await;
    let http = reqwest::Client::new();

    // /healthz: 200, the pass waits on the rate limit, for an hour at most.
    let deadline = Instant::now() + Duration::from_secs(15);
    let health = loop {
        let resp = http
            .get(format!("http://{addr}/healthz"))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body: serde_json::Value = resp.json().await.unwrap();
        if body["rate_limit"]["waiting"] == true {
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["status"], "starting", "{body}");
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "/healthz never said the pass waits on the rate limit: {status} {body}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let resume_in = health["rate_limit"]["resume_in_seconds"].as_u64().unwrap();
    assert!((3500..=3600).contains(&resume_in), "{health}");
    assert!(health["rate_limit"]["resume_at"].is_string(), "{health}");

    let text = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let wait = metric(&text, "bbcrawl_ratelimit_wait_seconds").expect("the wait gauge");
    assert!((3500.0..=3600.0).contains(&wait), "{wait}");

    // One WARN line says how long and until when, and that it was capped.
    let logs = std::fs::read_to_string(&log).unwrap();
    let warned: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("rate limited (429)"))
        .collect();
    assert_eq!(warned.len(), 1, "{logs}");
    assert!(
        warned[0].contains("waits 1h00m")
            && warned[0].contains("capped")
            && warned[0].contains("until 20"),
        "{}",
        warned[0]
    );
    let line: serde_json::Value = serde_json::from_str(warned[0]).unwrap();
    assert_eq!(
        line["fields"]["wait_seconds"].as_f64(),
        Some(3600.0),
        "{line}"
    );

    // And it still stops on SIGTERM within the promised 10 s.
    let sent = Instant::now();
    signal(&child, "-TERM");
    let mut child = child;
    let status = tokio::time::timeout(Duration::from_secs(12), child.wait())
        .await
        .expect("bbcrawl run did not stop within 12 s of SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "{:?}",
        sent.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_date_in_2099_stops_sync_for_an_hour_at_most_and_says_so() {
    use bbcrawl::simulator::{Fault, RetryAfter};
    let sim = world(0);
    sim.add_repo(WS, RepoSpec::new("web", 50));
    sim.inject(
        Some("/repositories/acme"),
        vec![Fault::RateLimited(Some(RetryAfter::HttpDate(
            "Thu, 01 Jan 2099 00:00:00 GMT".into(),
        )))],
    );
    let server = serve(&sim).await;
    let (dir, store) = fresh_store();
    let log = dir.path().join("sync.log");
    let mut child = spawn_sync(&sync_env(&server.api_url(), &store), &log);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("rate limited (429)")
    {
        assert!(Instant::now() < deadline, "no rate-limit line after 15 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(
        logs.contains("waits 1h00m") && logs.contains("capped"),
        "{logs}"
    );
    signal(&child, "-INT");
    let status = tokio::time::timeout(Duration::from_secs(12), child.wait())
        .await
        .expect("sync did not stop within 12 s of SIGINT")
        .unwrap();
    assert_eq!(
        status.code(),
        Some(130),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_end_of_a_rate_limit_pause_is_logged() {
    use bbcrawl::simulator::{Fault, RetryAfter};
    let sim = world(0);
    sim.add_repo(WS, RepoSpec::new("web", 50));
    sim.inject(
        Some("/web/commits"),
        vec![Fault::RateLimited(Some(RetryAfter::Seconds(1)))],
    );
    let server = serve(&sim).await;
    let (_dir, store) = fresh_store();
    let out = sync(&store, &server.api_url(), &[], &[]).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{}{err}", stdout(&out));
    let waits = err.find("waits 1.0 s (as Retry-After asks)").expect(&err);
    let over = err.find("rate-limit pause over").expect(&err);
    assert!(waits < over, "{err}");
    assert_store_is_truth(&store, &sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_against_an_address_with_nothing_listening_are_said_once_a_minute() {
    let (dir, store) = fresh_store();
    std::fs::write(dir.path().join("c.toml"), "max_retries = 3\n").unwrap();
    let config = dir.path().join("c.toml").to_string_lossy().into_owned();
    // Nothing listens there: no test binds 127.0.0.2 (the whole of 127/8 is
    // loopback), so no other test's server can take the port meanwhile.
    let port = std::net::TcpListener::bind("127.0.0.2:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let api = format!("http://127.0.0.2:{port}/2.0");
    let started = Instant::now();
    let out = sync(&store, &api, &["--config", &config], &[]).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("retrying in")).collect();
    // Three retries within seconds: said once, with what fails, the attempt
    // count and the next wait.
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains("acme: connection failed")
            && lines[0].contains("attempt 1 of 4 failed, retrying in"),
        "{}",
        lines[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_server_is_said_to_be_retried_and_the_crawl_completes() {
    use bbcrawl::simulator::Fault;
    let sim = world(0);
    sim.add_repo(WS, RepoSpec::new("web", 150));
    sim.inject(
        Some("/web/commits"),
        vec![Fault::Stall(Duration::from_secs(3)); 2],
    );
    let server = serve(&sim).await;
    let (dir, store) = fresh_store();
    std::fs::write(dir.path().join("c.toml"), "request_timeout_seconds = 1\n").unwrap();
    let config = dir.path().join("c.toml").to_string_lossy().into_owned();
    let out = sync(&store, &server.api_url(), &["--config", &config], &[]).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{}{err}", stdout(&out));
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("retrying in")).collect();
    assert_eq!(
        lines.len(),
        1,
        "two timeouts within a minute, one line: {err}"
    );
    assert!(
        lines[0].contains("acme/web: timed out") && lines[0].contains("attempt 1 of 11 failed"),
        "{}",
        lines[0]
    );
    assert_store_is_truth(&store, &sim);
}

/// A store synced from a small world: (server, temp dir guard, store path).
async fn small_store() -> (
    Simulator,
    bbcrawl::simulator::SimServer,
    tempfile::TempDir,
    std::path::PathBuf,
) {
    let sim = world(0);
    sim.add_repo(WS, RepoSpec::new("web", 30));
    let (server, dir, store) = synced(&sim).await;
    (sim, server, dir, store)
}

/// `bbcrawl ARGS --store STORE` with a clean environment.
async fn on_store(store: &Path, args: &[&str]) -> std::process::Output {
    let store_s = store.to_string_lossy().into_owned();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--store", &store_s]);
    bbcrawl(store.parent().unwrap(), &all, &[]).await
}

/// `bbcrawl export [EXTRA] --output PATH --store STORE`.
async fn export_to(store: &Path, path: &Path, extra: &[&str]) -> std::process::Output {
    let path = path.to_string_lossy().into_owned();
    let mut args = vec!["export"];
    args.extend_from_slice(extra);
    args.extend(["--output", &path]);
    on_store(store, &args).await
}

/// Permission bits of `path`.
fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn is_symlink(path: &Path) -> bool {
    std::fs::symlink_metadata(path)
        .unwrap()
        .file_type()
        .is_symlink()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_output_writes_into_special_files_and_through_symlinks_without_replacing_them() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let (_sim, _server, dir, store) = small_store().await;
    let d = dir.path();
    let ok = |out: &std::process::Output| {
        assert_eq!(out.status.code(), Some(0), "{}", stderr(out));
    };

    // A symbolic link to a regular file: the link stays, its target is replaced.
    std::fs::write(d.join("real.ndjson"), "old\n").unwrap();
    std::os::unix::fs::symlink(d.join("real.ndjson"), d.join("link.ndjson")).unwrap();
    ok(&export_to(&store, &d.join("link.ndjson"), &[]).await);
    assert!(
        is_symlink(&d.join("link.ndjson")),
        "the link was replaced by a file"
    );
    let exported = std::fs::read_to_string(d.join("real.ndjson")).unwrap();
    assert_eq!(exported.lines().count(), 30);

    // A link to /dev/null: written into; the link and /dev/null stay.
    std::os::unix::fs::symlink("/dev/null", d.join("null")).unwrap();
    ok(&export_to(&store, &d.join("null"), &[]).await);
    assert!(is_symlink(&d.join("null")));
    assert!(std::fs::metadata("/dev/null")
        .unwrap()
        .file_type()
        .is_char_device());

    // A FIFO: streamed into, still a FIFO afterwards.
    let fifo = d.join("pipe");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read_to_string(fifo).unwrap())
    };
    ok(&export_to(&store, &fifo, &[]).await);
    assert_eq!(reader.join().unwrap().lines().count(), 30);
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());

    // A new file is private; an existing one keeps its mode.
    let new = d.join("new.ndjson");
    ok(&export_to(&store, &new, &[]).await);
    assert_eq!(mode_of(&new), 0o600, "{:o}", mode_of(&new));
    std::fs::set_permissions(&new, std::fs::Permissions::from_mode(0o640)).unwrap();
    ok(&export_to(&store, &new, &["--format", "csv"]).await);
    assert_eq!(mode_of(&new), 0o640, "{:o}", mode_of(&new));

    // A directory or a dangling link: exit 2, nothing touched.
    std::fs::create_dir(d.join("adir")).unwrap();
    std::os::unix::fs::symlink(d.join("missing"), d.join("dangling")).unwrap();
    for bad in ["adir", "dangling"] {
        let out = export_to(&store, &d.join(bad), &[]).await;
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", stderr(&out));
        assert!(stderr(&out).contains("--output"), "{}", stderr(&out));
    }
    assert!(std::fs::metadata(d.join("adir")).unwrap().is_dir());
    assert!(is_symlink(&d.join("dangling")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_commands_never_turn_a_directory_into_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("photos");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("cat.jpg"), b"not a store").unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    for target in [&other, &empty, &dir.path().join("missing")] {
        for args in [
            &["query", "stats"][..],
            &["query", "commits"][..],
            &["export"][..],
            &["show", "0123456789abcdef"][..],
        ] {
            let out = on_store(target, args).await;
            assert_eq!(
                out.status.code(),
                Some(1),
                "{args:?} on {}: {}{}",
                target.display(),
                stdout(&out),
                stderr(&out)
            );
            assert!(
                stderr(&out).contains("is not a bbcrawl store"),
                "{}",
                stderr(&out)
            );
            assert!(stdout(&out).is_empty(), "{}", stdout(&out));
        }
    }
    // Nothing was created anywhere.
    let names: Vec<_> = std::fs::read_dir(&other)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("cat.jpg")]);
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
    assert!(!dir.path().join("missing").exists());

    // sync creates a store in a missing or empty directory, never among other files.
    let sim = world(0);
    sim.add_repo(WS, RepoSpec::new("web", 10));
    let server = serve(&sim).await;
    let out = sync(&other, &server.api_url(), &[], &[]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not empty and holds no store"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_dir(&other).unwrap().count(), 1);
    let out = sync(&empty, &server.api_url(), &[], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = on_store(&empty, &["query", "stats", "--format", "json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("\"commits\":10"), "{}", stdout(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_address_file_never_makes_a_query_answer_from_another_store() {
    let (_sim_a, server_a, dir_a, store_a) = small_store().await;
    let sim_b = world(0);
    sim_b.add_repo(WS, RepoSpec::new("other", 77));
    let (server_b, _dir_b, store_b) = synced(&sim_b).await;

    // Daemon A, killed with -9: its address file stays behind.
    let log_a = dir_a.path().join("a.log");
    let mut env_a = sync_env(&server_a.api_url(), &store_a);
    env_a.push(("BBCRAWL_LISTEN".into(), "127.0.0.1:0".into()));
    let mut a = spawn_bbcrawl(&["run"], &env_a, &log_a);
    let addr = daemon_addr(&store_a, &mut a, &log_a).await;
    a.kill().await.unwrap();
    a.wait().await.unwrap();
    assert!(bbcrawl::daemon::read_address(&store_a).is_some());

    // Daemon B, for store B, takes over A's old port.
    let log_b = store_b.parent().unwrap().join("b.log");
    let mut env_b = sync_env(&server_b.api_url(), &store_b);
    env_b.push(("BBCRAWL_LISTEN".into(), addr.clone()));
    let mut b = spawn_bbcrawl(&["run"], &env_b, &log_b);
    daemon_addr(&store_b, &mut b, &log_b).await;

    // Store A is held (here, by this test) while the CLI asks it: the stale
    // file leads to daemon B, which is not A's. Exit 7, nothing printed.
    let held = open_store(&store_a);
    for args in [&["query", "stats"][..], &["export"][..]] {
        let out = on_store(&store_a, args).await;
        assert_eq!(
            out.status.code(),
            Some(7),
            "{args:?}: {}{}",
            stdout(&out),
            stderr(&out)
        );
        assert!(
            stdout(&out).is_empty(),
            "answered from store B: {}",
            stdout(&out)
        );
        assert!(stderr(&out).contains("stale"), "{}", stderr(&out));
    }
    drop(held);
    // sled lets go of the lock a few milliseconds after the handle is dropped.
    tokio::time::sleep(Duration::from_millis(200)).await;

    // sync replaces the stale file (here: removes it; it runs no server).
    let out = sync(&store_a, &server_a.api_url(), &[], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(bbcrawl::daemon::read_address(&store_a).is_none());
    // And the store answers for itself again.
    let out = on_store(&store_a, &["query", "stats", "--format", "json"]).await;
    assert!(stdout(&out).contains("\"commits\":30"), "{}", stdout(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_is_described_in_plain_words() {
    let (_sim, _server, _dir, store) = small_store().await;
    std::fs::write(store.join("conf"), b"\xff\xfe\x00garbage").unwrap();
    let out = on_store(&store, &["query", "stats"]).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("configuration file (conf) is unreadable"),
        "{err}"
    );
    assert!(
        !err.contains("0.29") && !err.contains("Inline") && !err.contains("backtrace"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_pass_logs_every_repository_it_covered() {
    let sim = world(0);
    for s in ["a", "b", "c"] {
        sim.add_repo(WS, RepoSpec::new(s, 5));
    }
    let server = serve(&sim).await;
    let (dir, store) = fresh_store();
    let log = dir.path().join("run.log");
    let mut env = sync_env(&server.api_url(), &store);
    env.push(("BBCRAWL_LISTEN".into(), "127.0.0.1:0".into()));
    env.push(("BBCRAWL_INTERVAL_SECONDS".into(), "1".into()));
    env.push(("BBCRAWL_AUDIT_INTERVAL_SECONDS".into(), "31536000".into()));
    let child = spawn_bbcrawl(&["run", "--log-format", "json"], &env, &log);
    let deadline = Instant::now() + Duration::from_secs(20);
    let passes = loop {
        let passes: Vec<serde_json::Value> = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["fields"]["message"] == "pass finished")
            .collect();
        if passes.len() >= 2 {
            break passes;
        }
        assert!(Instant::now() < deadline, "fewer than two passes in 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    signal(&child, "-TERM");
    let (first, quiet) = (&passes[0]["fields"], &passes[1]["fields"]);
    assert_eq!(first["repositories"], 3, "{first}");
    assert_eq!(first["crawled"], 3, "{first}");
    assert_eq!(quiet["repositories"], 3, "{quiet}");
    assert_eq!(quiet["crawled"], 0, "{quiet}");
    assert_eq!(quiet["skipped"], 3, "{quiet}");
}

/// A server whose error messages carry terminal escapes: the listing
/// answers with `listing_status` (200 lists one repository, `x`), and that
/// repository's commits answer 400, both with a hostile message.
async fn hostile_messages(listing_status: u16) -> String {
    use axum::extract::Request;
    use axum::response::IntoResponse;
    const MESSAGE: &str = "bad \u{1b}[2J\u{1b}]0;owned\u{7} thing";
    let app = axum::Router::new().fallback(move |req: Request| async move {
        let error = |status: u16| {
            (
                axum::http::StatusCode::from_u16(status).unwrap(),
                [("content-type", "application/json")],
                serde_json::json!({"type": "error", "error": {"message": MESSAGE}}).to_string(),
            )
                .into_response()
        };
        if req.uri().path().contains("/commits") {
            return error(400);
        }
        if listing_status != 200 {
            return error(listing_status);
        }
        let body = serde_json::json!({"values": [{"uuid": "{x}", "slug": "x", "full_name": "acme/x",
            "mainbranch": {"name": "main"}, "updated_on": "2024-01-01T00:00:00+00:00"}]});
        ([("content-type", "application/json")], body.to_string()).into_response()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/2.0", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app.into_make_service()).await;
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_messages_from_the_server_never_reach_the_terminal_raw() {
    let raw = |s: &str| s.contains('\u{1b}') || s.contains('\u{7}');
    let api = hostile_messages(200).await;
    let (_dir, store) = fresh_store();
    let out = sync(&store, &api, &[], &[]).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(6), "{text}{}", stderr(&out));
    assert!(
        text.contains(r"bad \u{1b}[2J\u{1b}]0;owned\u{7} thing"),
        "{text}"
    );
    assert!(!raw(&text), "{text:?}");
    assert!(!raw(&stderr(&out)), "{:?}", stderr(&out));

    let api = hostile_messages(403).await;
    let (dir, _store) = fresh_store();
    let env = [
        ("BBCRAWL_API_URL", api.as_str()),
        ("BBCRAWL_WORKSPACES", WS),
        ("BITBUCKET_ACCESS_TOKEN", TOKEN),
    ];
    let out = bbcrawl(dir.path(), &["verify"], &env).await;
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stdout(&out).contains(r"\u{1b}[2J"), "{}", stdout(&out));
    assert!(
        !raw(&stdout(&out)) && !raw(&stderr(&out)),
        "{:?}",
        stdout(&out)
    );
    let out = sync(&dir.path().join("s"), &api, &[], &[]).await;
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains(r"\u{1b}[2J"), "{}", stderr(&out));
    assert!(!raw(&stderr(&out)), "{:?}", stderr(&out));
}
