//! `bbcrawl run` as a real process against the in-process simulator (SPEC
//! sections 3 `run` and 7): metrics that count what really happened,
//! health that follows the credentials, the query API answering what the
//! CLI answers, and a graceful stop in the middle of a crawl that the next
//! sync resumes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use bbcrawl::simulator::{Fault, RepoSpec, RetryAfter, Simulator};

use crate::util::*;

/// A running `bbcrawl run`.
struct Daemon {
    child: tokio::process::Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Daemon {
    /// Starts the daemon on `store` and waits for its address file.
    async fn start(store: &Path, api_url: &str, interval_seconds: &str) -> Daemon {
        Daemon::start_with(store, api_url, interval_seconds, &[]).await
    }

    /// [`Daemon::start`] with more environment.
    async fn start_with(
        store: &Path,
        api_url: &str,
        interval_seconds: &str,
        extra_env: &[(&str, &str)],
    ) -> Daemon {
        let (mut cmd, log) = run_command(store, api_url, interval_seconds, extra_env);
        let mut child = cmd.spawn().expect("cannot start bbcrawl run");
        let file = store.join("daemon.json");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(text) = std::fs::read_to_string(&file) {
                let v: serde_json::Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("daemon.json is not whole JSON ({e}): {text}"));
                assert_eq!(v["pid"].as_u64(), Some(u64::from(child.id().unwrap())));
                let addr: SocketAddr = v["addr"].as_str().unwrap().parse().unwrap();
                assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
                return Daemon { child, addr, log };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "bbcrawl run exited ({status}): {}",
                    std::fs::read_to_string(&log).unwrap()
                );
            }
            assert!(Instant::now() < deadline, "no daemon.json after 15 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// GET `path`: status, content type, body.
    async fn get(&self, path: &str) -> (u16, String, String) {
        let resp = reqwest::get(self.url(path)).await.unwrap();
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, ct, resp.text().await.unwrap())
    }

    async fn health(&self) -> (u16, serde_json::Value) {
        let (status, ct, body) = self.get("/healthz").await;
        assert!(ct.starts_with("application/json"), "{ct}");
        (status, serde_json::from_str(&body).unwrap())
    }

    /// Polls `/healthz` until it answers `want` with `status` = `word`.
    async fn wait_health(&self, want: u16, word: &str, within: Duration) -> serde_json::Value {
        let deadline = Instant::now() + within;
        loop {
            let (status, body) = self.health().await;
            if status == want && body["status"] == word {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "/healthz still {status} {body} after {within:?}; wanted {want} {word}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn scrape(&self) -> Scrape {
        let (status, ct, body) = self.get("/metrics").await;
        assert_eq!(status, 200);
        assert_eq!(ct, "text/plain; version=0.0.4");
        parse_prometheus(&body).unwrap_or_else(|e| panic!("{e}\n{body}"))
    }

    /// Sends SIGTERM and waits for the exit; returns it and how long it took.
    async fn terminate(mut self) -> (ExitStatus, Duration) {
        let pid = self.child.id().unwrap().to_string();
        let sent = Instant::now();
        let kill = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(kill.success());
        let status = tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .expect("bbcrawl run did not exit within 15 s of SIGTERM")
            .unwrap();
        (status, sent.elapsed())
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// One sample line.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed `/metrics` answer.
#[derive(Debug, Default)]
struct Scrape {
    help: HashMap<String, String>,
    types: HashMap<String, String>,
    samples: Vec<Sample>,
}

impl Scrape {
    /// Sum of the samples named `name` whose labels include `with`.
    fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                with.iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// The family a sample belongs to (histogram series carry suffixes).
    fn family<'a>(&self, sample: &'a str) -> &'a str {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(f) = sample.strip_suffix(suffix) {
                if self
                    .types
                    .get(f)
                    .is_some_and(|t| t == "histogram" || t == "summary")
                {
                    return f;
                }
            }
        }
        sample
    }
}

/// Parses the Prometheus text format (0.0.4): `# HELP`, `# TYPE`, and
/// `name{label="value",…} value` lines.
fn parse_prometheus(text: &str) -> Result<Scrape, String> {
    let mut out = Scrape::default();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest
                .split_once(' ')
                .ok_or(format!("line {n}: HELP without text"))?;
            out.help.insert(name.to_owned(), help.to_owned());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .ok_or(format!("line {n}: TYPE without kind"))?;
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(format!("line {n}: unknown type {kind}"));
            }
            out.types.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .ok_or(format!("line {n}: no value: {line}"))?;
        let name = &line[..name_end];
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        {
            return Err(format!("line {n}: bad metric name {name:?}"));
        }
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(r) = rest.strip_prefix('{') {
            let mut chars = r.char_indices().peekable();
            let mut end = None;
            loop {
                // label name
                let start = match chars.peek() {
                    Some(&(_, '}')) => {
                        end = Some(chars.next().unwrap().0);
                        break;
                    }
                    Some(&(i, _)) => i,
                    None => break,
                };
                let mut key_end = start;
                for (i, c) in chars.by_ref() {
                    if c == '=' {
                        key_end = i;
                        break;
                    }
                }
                let key = r[start..key_end].to_owned();
                if chars.next().map(|(_, c)| c) != Some('"') {
                    return Err(format!("line {n}: label {key} without a quoted value"));
                }
                let mut value = String::new();
                loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => value.push('\n'),
                            Some((_, c)) => value.push(c),
                            None => return Err(format!("line {n}: dangling escape")),
                        },
                        Some((_, '"')) => break,
                        Some((_, c)) => value.push(c),
                        None => return Err(format!("line {n}: unterminated label value")),
                    }
                }
                labels.insert(key, value);
                match chars.next() {
                    Some((_, ',')) => continue,
                    Some((i, '}')) => {
                        end = Some(i);
                        break;
                    }
                    other => return Err(format!("line {n}: unexpected {other:?} after a label")),
                }
            }
            let end = end.ok_or(format!("line {n}: unterminated labels"))?;
            rest = &r[end + 1..];
        }
        let value_text = rest
            .split_whitespace()
            .next()
            .ok_or(format!("line {n}: no value"))?;
        let value = match value_text {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse::<f64>()
                .map_err(|_| format!("line {n}: bad value {v:?}"))?,
        };
        out.samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    Ok(out)
}

/// Every metric name SPEC section 7 lists.
const FAMILIES: [&str; 20] = [
    "bbcrawl_http_requests_total",
    "bbcrawl_http_request_duration_seconds",
    "bbcrawl_rate_limited_total",
    "bbcrawl_retries_total",
    "bbcrawl_backoff_seconds_total",
    "bbcrawl_pages_fetched_total",
    "bbcrawl_commits_fetched_total",
    "bbcrawl_commits_stored_total",
    "bbcrawl_store_write_duration_seconds",
    "bbcrawl_sync_passes_total",
    "bbcrawl_store_commits",
    "bbcrawl_store_size_bytes",
    "bbcrawl_repos",
    "bbcrawl_sync_duration_seconds",
    "bbcrawl_last_sync_success_timestamp_seconds",
    "bbcrawl_last_sync_failed",
    "bbcrawl_ratelimit_limit",
    "bbcrawl_ratelimit_remaining_estimate",
    "bbcrawl_writer_queue_depth",
    "bbcrawl_build_info",
];

/// HELP and TYPE on every family; `_total` exactly on counters.
fn assert_well_formed(s: &Scrape) {
    assert!(!s.samples.is_empty());
    for sample in &s.samples {
        let family = s.family(&sample.name);
        assert!(s.help.contains_key(family), "{family} has no HELP");
        assert!(s.types.contains_key(family), "{family} has no TYPE");
    }
    for (name, kind) in &s.types {
        assert_eq!(
            kind == "counter",
            name.ends_with("_total"),
            "{name} is a {kind}"
        );
        assert!(s.help.contains_key(name), "{name} has no HELP");
    }
}

fn commits_requests(sim: &Simulator) -> usize {
    sim.requests()
        .iter()
        .filter(|r| r.path.contains("/commits/"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_the_simulator_saw() {
    let sim = world(0);
    sim.add_repo(WS, RepoSpec::new("payments-api", 450));
    sim.add_repo(WS, RepoSpec::new("web-app", 120));
    sim.add_repo(WS, RepoSpec::new("tools", 40));
    sim.set_latency(Duration::from_millis(2));
    sim.inject(
        Some("/commits/"),
        vec![
            Fault::RateLimited(Some(RetryAfter::Seconds(1))),
            Fault::RateLimited(Some(RetryAfter::Seconds(1))),
        ],
    );
    let server = serve(&sim).await;
    let (_dir, store) = fresh_store();
    let daemon = Daemon::start(&store, &server.api_url(), "1").await;

    // During the first pass (the 429s hold it for a second).
    let during = daemon.scrape().await;
    eprintln!(
        "first scrape: {} requests, {} commits stored",
        during.sum("bbcrawl_http_requests_total", &[]),
        during.sum("bbcrawl_commits_stored_total", &[])
    );
    assert_well_formed(&during);
    let (status, early) = daemon.health().await;
    assert_eq!(status, 200, "{early}");
    assert!(
        early["status"] == "starting" || early["status"] == "ok",
        "{early}"
    );

    let health = daemon.wait_health(200, "ok", Duration::from_secs(20)).await;
    assert_eq!(health["last_pass"]["failed"], 0, "{health}");
    assert!(health["last_success"].is_string(), "{health}");

    // Later passes keep sending requests: compare when nothing is in flight.
    let mut scrape = None;
    for _ in 0..100 {
        let before = sim.requests().len();
        let s = daemon.scrape().await;
        let after = sim.requests().len();
        if before == after && s.sum("bbcrawl_http_requests_total", &[]) == before as f64 {
            scrape = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let s = scrape.unwrap_or_else(|| {
        panic!(
            "bbcrawl_http_requests_total never matched the simulator's {} requests",
            sim.requests().len()
        )
    });
    assert_well_formed(&s);
    for family in FAMILIES {
        assert!(s.types.contains_key(family), "{family} missing");
    }

    let log = sim.requests();
    let truth: usize = ["payments-api", "web-app", "tools"]
        .iter()
        .map(|r| sim.branch_commits(WS, r).len())
        .sum();
    assert_eq!(truth, 610);
    let throttled = log.iter().filter(|r| r.status == 429).count();
    assert_eq!(throttled, 2);
    assert_eq!(s.sum("bbcrawl_rate_limited_total", &[]), throttled as f64);
    assert_eq!(
        s.sum("bbcrawl_retries_total", &[("reason", "rate_limited")]),
        2.0
    );
    assert_eq!(s.sum("bbcrawl_retries_total", &[]), 2.0);
    assert!(
        s.sum("bbcrawl_backoff_seconds_total", &[]) >= 1.0,
        "Retry-After: 1 was waited"
    );
    assert_eq!(s.sum("bbcrawl_commits_stored_total", &[]), truth as f64);
    assert_eq!(s.sum("bbcrawl_commits_fetched_total", &[]), truth as f64);
    assert_eq!(
        s.sum("bbcrawl_http_requests_total", &[("endpoint", "commits")]),
        log.iter().filter(|r| r.path.contains("/commits/")).count() as f64
    );
    assert_eq!(
        s.sum("bbcrawl_http_requests_total", &[("code", "429")]),
        throttled as f64
    );
    // 5 + 2 + 1 pages on the first pass, one (empty) per repository after.
    assert!(s.sum("bbcrawl_pages_fetched_total", &[]) >= 8.0);
    assert_eq!(
        s.sum("bbcrawl_http_request_duration_seconds_count", &[]),
        log.len() as f64
    );
    assert_eq!(s.sum("bbcrawl_store_commits", &[]), truth as f64);
    assert_eq!(s.sum("bbcrawl_repos", &[("state", "ok")]), 3.0);
    assert_eq!(s.sum("bbcrawl_repos", &[]), 3.0);
    assert!(s.sum("bbcrawl_store_size_bytes", &[]) > 0.0);
    assert!(s.sum("bbcrawl_store_free_bytes", &[]) > 0.0);
    assert!(s.sum("bbcrawl_sync_passes_total", &[("result", "ok")]) >= 1.0);
    assert_eq!(
        s.sum("bbcrawl_sync_passes_total", &[("result", "failed")]),
        0.0
    );
    assert_eq!(s.sum("bbcrawl_last_sync_failed", &[]), 0.0);
    let now = chrono::Utc::now().timestamp() as f64;
    let last = s.sum("bbcrawl_last_sync_success_timestamp_seconds", &[]);
    assert!((now - 60.0..=now + 1.0).contains(&last), "{last} vs {now}");
    assert_eq!(s.sum("bbcrawl_ratelimit_limit", &[]), 1_000_000.0);
    let remaining = s.sum("bbcrawl_ratelimit_remaining_estimate", &[]);
    assert_eq!(remaining, 1_000_000.0 - log.len() as f64);
    assert_eq!(s.sum("bbcrawl_writer_queue_depth", &[]), 0.0);
    assert_eq!(
        s.sum(
            "bbcrawl_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );

    // Bounded labels: no repository, hash, author, URL, secret or error text.
    let mut forbidden: BTreeSet<String> = BTreeSet::new();
    for r in ["payments-api", "web-app", "tools"] {
        forbidden.insert(r.to_owned());
        for c in sim.branch_commits(WS, r) {
            forbidden.insert(c.hash[..7].to_owned());
            forbidden.insert(c.hash.clone());
            forbidden.insert(c.author_raw.clone());
        }
    }
    forbidden.insert(server.api_url());
    forbidden.insert(TOKEN.to_owned());
    let allowed_keys = [
        "endpoint", "code", "reason", "result", "state", "version", "shard", "shards", "le",
        "outcome",
    ];
    for sample in &s.samples {
        for (k, v) in &sample.labels {
            assert!(
                allowed_keys.contains(&k.as_str()),
                "label {k} on {}",
                sample.name
            );
            assert!(!forbidden.contains(v), "{}: label {k}={v:?}", sample.name);
            assert!(
                forbidden
                    .iter()
                    .all(|f| f.len() < 7 || !v.contains(f.as_str())),
                "{}: label {k}={v:?}",
                sample.name
            );
            assert!(
                v.len() <= 20 && !v.contains(['/', '@', ' ', ':']),
                "{}: label {k}={v:?} looks unbounded",
                sample.name
            );
        }
        if let Some(code) = sample.labels.get("code") {
            assert!(code == "error" || code.parse::<u16>().is_ok(), "{code}");
        }
        if let Some(o) = sample.labels.get("outcome") {
            assert!(bbcrawl::hooks::OUTCOMES.contains(&o.as_str()), "{o}");
        }
        if let Some(e) = sample.labels.get("endpoint") {
            assert!(e == "commits" || e == "repositories", "{e}");
        }
    }

    let (status, took) = daemon.terminate().await;
    assert_eq!(status.code(), Some(0));
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(!store.join("daemon.json").exists());
}

/// Below the free-disk floor (`min_free_disk_mb`, here 1 PiB) the daemon
/// starts no pass: not a request to Bitbucket; `/healthz` answers 503 with
/// `low_disk`, the pass counts as failed, and `bbcrawl_store_free_bytes`
/// says what is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_pass_starts_below_the_free_disk_floor() {
    let sim = world(0);
    sim.add_repo(WS, RepoSpec::new("payments-api", 50));
    let server = serve(&sim).await;
    let (_dir, store) = fresh_store();
    let floor = [("BBCRAWL_MIN_FREE_DISK_MB", "1073741824")];
    let daemon = Daemon::start_with(&store, &server.api_url(), "1", &floor).await;
    let failed = daemon
        .wait_health(503, "failed", Duration::from_secs(15))
        .await;
    assert_eq!(failed["error"]["code"], "low_disk", "{failed}");
    let message = failed["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("below the floor of 1.0 PiB") && message.contains("min_free_disk_mb"),
        "{failed}"
    );
    let s = daemon.scrape().await;
    assert!(s.sum("bbcrawl_store_free_bytes", &[]) > 0.0);
    assert_eq!(s.sum("bbcrawl_last_sync_failed", &[]), 1.0);
    assert!(s.sum("bbcrawl_sync_passes_total", &[("result", "failed")]) >= 1.0);
    assert_eq!(sim.requests().len(), 0, "a pass started");
    let (status, _) = daemon.terminate().await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_turns_503_while_credentials_are_invalid_and_recovers() {
    let sim = world(0);
    sim.add_repo(WS, RepoSpec::new("payments-api", 50));
    let server = serve(&sim).await;
    let (_dir, store) = fresh_store();
    let daemon = Daemon::start(&store, &server.api_url(), "1").await;
    daemon.wait_health(200, "ok", Duration::from_secs(15)).await;

    sim.set_credential_valid(TOKEN, false);
    let failed = daemon
        .wait_health(503, "failed", Duration::from_secs(5))
        .await;
    assert_eq!(failed["error"]["code"], "invalid_credentials", "{failed}");
    assert!(!failed.to_string().contains(TOKEN));
    assert!(
        failed["last_success"].is_string(),
        "the earlier success is kept: {failed}"
    );
    let s = daemon.scrape().await;
    assert_eq!(s.sum("bbcrawl_last_sync_failed", &[]), 1.0);
    assert!(s.sum("bbcrawl_sync_passes_total", &[("result", "failed")]) >= 1.0);
    assert!(s.sum("bbcrawl_http_requests_total", &[("code", "401")]) >= 1.0);

    sim.set_credential_valid(TOKEN, true);
    let ok = daemon.wait_health(200, "ok", Duration::from_secs(5)).await;
    assert!(ok.get("error").is_none(), "{ok}");
    assert_eq!(
        daemon.scrape().await.sum("bbcrawl_last_sync_failed", &[]),
        0.0
    );

    let logs = daemon.logs();
    assert!(!logs.contains(TOKEN), "a secret in the logs");
    // --log-format json: every log line is one JSON object.
    for line in logs.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(v["level"].is_string(), "{line}");
    }
    assert!(
        logs.contains("invalid_credentials"),
        "the failure is logged"
    );
    let (status, _) = daemon.terminate().await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_api_answers_what_the_cli_prints() {
    let sim = world(0);
    sim.add_repo(WS, RepoSpec::new("payments-api", 230));
    sim.add_repo(WS, RepoSpec::new("tools", 40));
    let server = serve(&sim).await;
    let (dir, store) = fresh_store();
    // One pass only, so the store does not move under the comparison.
    let daemon = Daemon::start(&store, &server.api_url(), "3600").await;
    daemon.wait_health(200, "ok", Duration::from_secs(15)).await;

    let hash = sim.branch_commits(WS, "tools")[3].hash.clone();
    let author = sim.branch_commits(WS, "payments-api")[0].author_raw.clone();
    let name = author.split(" <").next().unwrap().to_owned();
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    // (API path, CLI arguments, content type)
    let cases: Vec<(String, Vec<String>, &str)> = vec![
        (
            "/api/v1/commits?repo=payments-api&limit=5&format=ndjson".into(),
            vec!["query", "commits", "--repo", "payments-api", "--limit", "5", "--format", "ndjson"]
                .into_iter()
                .map(String::from)
                .collect(),
            "application/x-ndjson",
        ),
        (
            format!("/api/v1/commits?repo=payments-api&repo=tools&author={}&since=2000-01-01&format=csv", enc(&name)),
            vec!["query", "commits", "--repo", "payments-api", "--repo", "tools", "--author", &name, "--since", "2000-01-01", "--format", "csv"]
                .into_iter()
                .map(String::from)
                .collect(),
            "text/csv; charset=utf-8",
        ),
        (
            "/api/v1/commits?grep=e&limit=50".into(),
            ["query", "commits", "--grep", "e", "--limit", "50", "--format", "json"]
                .into_iter()
                .map(String::from)
                .collect(),
            "application/json",
        ),
        (
            "/api/v1/authors?workspace=acme&format=json".into(),
            ["query", "authors", "--workspace", "acme", "--format", "json"]
                .into_iter()
                .map(String::from)
                .collect(),
            "application/json",
        ),
        (
            "/api/v1/repos?format=ndjson".into(),
            ["query", "repos", "--format", "ndjson"].into_iter().map(String::from).collect(),
            "application/x-ndjson",
        ),
        (
            "/api/v1/export".into(),
            ["export"].into_iter().map(String::from).collect(),
            "application/x-ndjson",
        ),
        (
            "/api/v1/export?all&format=csv".into(),
            ["export", "--all", "--format", "csv"].into_iter().map(String::from).collect(),
            "text/csv; charset=utf-8",
        ),
        (
            format!("/api/v1/show/{}", &hash[..9]),
            vec!["show".to_owned(), hash[..9].to_owned(), "--format".into(), "json".into()],
            "application/json",
        ),
        (
            "/api/v1/commits?committer=acme.io&limit=20&format=ndjson".into(),
            ["query", "commits", "--committer", "acme.io", "--limit", "20", "--format", "ndjson"]
                .into_iter()
                .map(String::from)
                .collect(),
            "application/x-ndjson",
        ),
    ];
    let mut answers = Vec::new();
    for (path, _, ct) in &cases {
        let (status, got_ct, body) = daemon.get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(&got_ct, ct, "{path}");
        assert!(!body.is_empty(), "{path}");
        answers.push(body);
    }
    assert_eq!(answers[0].lines().count(), 5);
    assert_eq!(answers[5].lines().count(), 270);

    for (path, status, code) in [
        ("/api/v1/commits?limit=0", 400, "bad_request"),
        ("/api/v1/commits?limit=many", 400, "bad_request"),
        ("/api/v1/commits?since=yesterday", 400, "bad_request"),
        ("/api/v1/commits?format=table", 400, "bad_request"),
        ("/api/v1/commits?colour=blue", 400, "bad_request"),
        ("/api/v1/commits?author=a&author=b", 400, "bad_request"),
        ("/api/v1/export?format=json", 400, "bad_request"),
        ("/api/v1/show/xyz", 400, "bad_hash"),
        ("/api/v1/show/0000000", 404, "unknown_hash"),
        ("/api/v1/nothing", 404, "not_found"),
    ] {
        let (got, ct, body) = daemon.get(path).await;
        assert_eq!(got, status, "{path}: {body}");
        assert_eq!(ct, "application/json", "{path}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["code"], code, "{path}: {body}");
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{path}: {body}"
        );
    }

    let (status, _) = daemon.terminate().await;
    assert_eq!(status.code(), Some(0));
    let store_s = store.to_string_lossy().into_owned();
    for ((path, args, _), api) in cases.iter().zip(&answers) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = bbcrawl(dir.path(), &args, &[("BBCRAWL_STORE", &store_s)]).await;
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        assert_eq!(&stdout(&o), api, "{path} differs from bbcrawl {args:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_crawl_exits_cleanly_and_sync_resumes() {
    let sim = world(0);
    sim.add_repo(WS, RepoSpec::new("monorepo", 20_000));
    sim.set_latency(Duration::from_millis(5));
    let server = serve(&sim).await;
    let (_dir, store) = fresh_store();
    let daemon = Daemon::start(&store, &server.api_url(), "1").await;

    let deadline = Instant::now() + Duration::from_secs(30);
    while commits_requests(&sim) < 10 {
        assert!(Instant::now() < deadline, "the crawl did not get going");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let logs_path = daemon.log.clone();
    let (status, took) = daemon.terminate().await;
    let logs = std::fs::read_to_string(&logs_path).unwrap();
    assert_eq!(status.code(), Some(0), "{logs}");
    assert!(took < Duration::from_secs(10), "stopped in {took:?}");
    assert!(!store.join("daemon.json").exists());
    let fetched = commits_requests(&sim);
    eprintln!("SIGTERM after {fetched} commits pages: exited in {took:?}");
    assert!(
        fetched < 200,
        "the crawl finished before the signal ({fetched} pages)"
    );

    // Stopped mid-walk: the saved position is there, no head yet.
    let repos = store_repos(&store);
    assert_eq!(repos.len(), 1);
    assert!(
        repos[0].walk.is_some() && repos[0].head.is_none(),
        "{:?}",
        repos[0]
    );

    sim.clear_requests();
    sim.set_latency(Duration::ZERO);
    let o = sync(&store, &server.api_url(), &[], &[]).await;
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let first = sim
        .requests()
        .into_iter()
        .find(|r| r.path.contains("/monorepo/commits/"))
        .expect("sync sent no commits request");
    assert!(
        first.query.as_deref().unwrap_or("").contains("page="),
        "sync started over instead of resuming: {first:?}"
    );
    let stored: BTreeSet<String> = store_records(&store).into_iter().map(|r| r.hash).collect();
    let truth: BTreeSet<String> = branch_hashes(&sim, WS, "monorepo").into_iter().collect();
    assert_eq!(stored.len(), 20_000);
    assert_eq!(stored, truth);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_stalled_request_still_exits_within_10_s() {
    let sim = world(0);
    sim.add_repo(WS, RepoSpec::new("payments-api", 50));
    // Longer than the drain deadline, shorter than the request timeout.
    sim.inject(
        Some("/commits/"),
        vec![Fault::Stall(Duration::from_secs(30))],
    );
    let server = serve(&sim).await;
    let (_dir, store) = fresh_store();
    let daemon = Daemon::start(&store, &server.api_url(), "1").await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while commits_requests(&sim) < 1 {
        assert!(Instant::now() < deadline, "no commits request");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let logs_path = daemon.log.clone();
    let (status, took) = daemon.terminate().await;
    let logs = std::fs::read_to_string(&logs_path).unwrap();
    eprintln!("SIGTERM during a stalled request: exited in {took:?}");
    assert_eq!(status.code(), Some(0), "{logs}");
    assert!(took < Duration::from_secs(10), "stopped in {took:?}");
    assert!(logs.contains("did not stop within"), "{logs}");
    assert!(!store.join("daemon.json").exists());
}

/// `query`, `show` and `export` while the daemon holds the store: they ask
/// its API, and print what they print after it stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_queries_during_a_running_daemon_equal_those_after_it_stopped() {
    let sim = world(0);
    sim.add_repo(WS, RepoSpec::new("payments-api", 230));
    sim.add_repo(WS, RepoSpec::new("tools", 40));
    let server = serve(&sim).await;
    let (dir, store) = fresh_store();
    let daemon = Daemon::start(&store, &server.api_url(), "3600").await;
    daemon.wait_health(200, "ok", Duration::from_secs(15)).await;
    let hash = sim.branch_commits(WS, "tools")[3].hash.clone();
    let store_s = store.to_string_lossy().into_owned();
    let questions: Vec<Vec<&str>> = vec![
        vec![
            "query",
            "commits",
            "--repo",
            "payments-api",
            "--limit",
            "5",
            "--format",
            "ndjson",
        ],
        vec![
            "query",
            "commits",
            "--since",
            "2000-01-01",
            "--format",
            "json",
        ],
        vec!["query", "commits", "--grep", "e", "--format", "csv"],
        vec!["query", "commits", "--limit", "20", "--format", "table"],
        vec!["query", "repos", "--format", "table"],
        vec!["query", "authors", "--format", "csv"],
        vec!["show", &hash[..9]],
        vec!["show", &hash, "--format", "json"],
        vec!["export"],
        vec!["export", "--all", "--format", "csv"],
    ];
    let cwd = dir.path().to_path_buf();
    let ask = |args: Vec<String>| {
        let store_s = store_s.clone();
        let cwd = cwd.clone();
        async move {
            let mut all = vec!["--store".to_owned(), store_s];
            all.extend(args);
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            bbcrawl(&cwd, &all, &[("COLUMNS", "120")]).await
        }
    };
    let owned = |q: &Vec<&str>| q.iter().map(|s| s.to_string()).collect::<Vec<String>>();
    let mut during = Vec::new();
    for q in &questions {
        let o = ask(owned(q)).await;
        assert_eq!(
            o.status.code(),
            Some(0),
            "{q:?} while running: {}",
            stderr(&o)
        );
        assert!(!o.stdout.is_empty(), "{q:?} printed nothing");
        during.push(o.stdout);
    }
    // An unknown hash is still exit 1 through the daemon.
    let o = ask(owned(&vec!["show", "0000000"])).await;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let (status, _) = daemon.terminate().await;
    assert!(status.success());
    for (q, before) in questions.iter().zip(during) {
        let o = ask(owned(q)).await;
        assert_eq!(o.status.code(), Some(0), "{q:?} after: {}", stderr(&o));
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&before),
            "{q:?} differs"
        );
    }
}

/// A store held by a process that does not answer: exit 7 with a clear message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_store_whose_holder_does_not_answer_is_exit_7() {
    let sim = world(0);
    sim.add_repo(WS, RepoSpec::new("tools", 10));
    let server = serve(&sim).await;
    let (dir, store) = fresh_store();
    assert_eq!(
        sync(&store, &server.api_url(), &[], &[])
            .await
            .status
            .code(),
        Some(0)
    );
    let held = open_store(&store);
    let store_s = store.to_string_lossy().into_owned();
    // No address file: a sync (or anything else) holds it.
    let o = bbcrawl(dir.path(), &["--store", &store_s, "query", "commits"], &[]).await;
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    assert!(stderr(&o).contains("locked"), "{}", stderr(&o));
    // An address file left by a daemon that is gone.
    let port = free_port();
    std::fs::write(
        store.join("daemon.json"),
        format!("{{\"addr\":\"127.0.0.1:{port}\",\"pid\":999999}}"),
    )
    .unwrap();
    for args in [
        vec!["query", "repos"],
        vec!["show", "abcdef1"],
        vec!["export"],
    ] {
        let mut all = vec!["--store", store_s.as_str()];
        all.extend(args.clone());
        let o = bbcrawl(dir.path(), &all, &[]).await;
        assert_eq!(o.status.code(), Some(7), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("does not answer"), "{}", stderr(&o));
    }
    drop(held);
}

/// Resident memory of `pid` in KiB (`VmRSS` of `/proc/<pid>/status`). A
/// reading that fails panics: a memory check that cannot see the memory
/// must fail, not compare zeros.
fn rss_kib(pid: u32) -> u64 {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {path} for the resident memory: {e}"));
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in {path}:\n{status}"));
    assert!(kib > 0, "{path} reports VmRSS 0 kB");
    kib
}

#[test]
fn rss_reading_sees_a_live_process() {
    assert!(rss_kib(std::process::id()) > 1024);
}

#[test]
#[should_panic(expected = "cannot read /proc/")]
fn rss_reading_fails_for_a_process_it_cannot_see() {
    // Above any pid_max the kernel allows (2^22), so never a live process.
    rss_kib(u32::MAX);
}

/// Ten minutes of `bbcrawl run` with pushes every few seconds: resident
/// memory stays flat. Long: run with `cargo test --test integration -- --ignored soak_memory`
/// (`BBCRAWL_SOAK_SECONDS` shortens or lengthens it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long soak test (10 minutes): cargo test --test integration -- --ignored soak_memory"]
async fn soak_memory_stays_flat_over_ten_minutes_of_passes_and_pushes() {
    let seconds: u64 = std::env::var("BBCRAWL_SOAK_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    let sim = world(0);
    for i in 0..20 {
        sim.add_repo(WS, RepoSpec::new(&format!("svc-{i:02}"), 500));
    }
    let server = serve(&sim).await;
    let (_dir, store) = fresh_store();
    let daemon = Daemon::start(&store, &server.api_url(), "2").await;
    daemon.wait_health(200, "ok", Duration::from_secs(30)).await;
    let pid = daemon.child.id().unwrap();
    let start = Instant::now();
    let mut samples: Vec<(u64, u64)> = Vec::new();
    let mut pushed = 0;
    while start.elapsed() < Duration::from_secs(seconds) {
        for k in 0..3 {
            sim.push(WS, &format!("svc-{:02}", (pushed * 7 + k) % 20), 3);
        }
        pushed += 1;
        tokio::time::sleep(Duration::from_secs(5)).await;
        samples.push((start.elapsed().as_secs(), rss_kib(pid)));
    }
    daemon.wait_health(200, "ok", Duration::from_secs(30)).await;
    let (status, _) = daemon.terminate().await;
    assert!(status.success());
    let n = samples.len();
    assert!(n >= 5, "{n} RSS samples in {seconds} s: too few to compare");
    let first: u64 = samples[..n / 5].iter().map(|s| s.1).max().unwrap();
    let last: u64 = samples[n - n / 5..].iter().map(|s| s.1).max().unwrap();
    eprintln!("soak: {seconds} s, {pushed} push rounds; RSS first fifth max {first} KiB, last fifth max {last} KiB; samples {samples:?}");
    assert!(
        last <= first + first / 5 + 8 * 1024,
        "RSS grew from {first} KiB to {last} KiB"
    );
    assert_eq!(
        store_records(&store).iter().filter(|r| r.reachable).count(),
        sim.repos(WS)
            .iter()
            .map(|r| sim.branch_commits(WS, &r.slug).len())
            .sum::<usize>()
    );
}

/// `store backup` while the daemon crawls with pushes arriving: the CLI
/// asks the daemon (the store is locked), which copies it between pages;
/// a request without the address file's token is refused. The backup
/// passes `store check`; restored elsewhere and synced, it is exactly the
/// simulator's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_the_daemon_crawls_restores_exactly() {
    let sim = world(0);
    for slug in ["web", "api", "docs"] {
        sim.add_repo(WS, RepoSpec::new(slug, 150));
    }
    let server = serve(&sim).await;
    let (dir, store) = fresh_store();
    let daemon = Daemon::start(&store, &server.api_url(), "1").await;
    daemon.wait_health(200, "ok", Duration::from_secs(15)).await;
    // Pushes keep arriving while the backups are taken.
    let pusher = {
        let sim = sim.clone();
        tokio::spawn(async move {
            for i in 0..30 {
                sim.push(WS, ["web", "api", "docs"][i % 3], 3);
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
        })
    };
    let s = store.to_str().unwrap().to_owned();
    let mut backups = Vec::new();
    for k in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let dest = dir.path().join(format!("backup-{k}"));
        let d = dest.to_str().unwrap().to_owned();
        let o = bbcrawl(dir.path(), &["--store", &s, "store", "backup", &d], &[]).await;
        assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
        assert!(stdout(&o).starts_with("backed up "), "{}", stdout(&o));
        backups.push(dest);
    }
    pusher.await.unwrap();
    // Without the token: refused.
    let resp = reqwest::Client::new()
        .post(daemon.url("/admin/backup"))
        .json(&serde_json::json!({"dest": dir.path().join("x").to_str().unwrap()}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert!(!dir.path().join("x").exists());
    let (status, _) = daemon.terminate().await;
    assert_eq!(status.code(), Some(0));

    for (k, backup) in backups.iter().enumerate() {
        let b = backup.to_str().unwrap();
        let o = bbcrawl(dir.path(), &["--store", b, "store", "check"], &[]).await;
        assert_eq!(
            o.status.code(),
            Some(0),
            "backup {k}: {}{}",
            stdout(&o),
            stderr(&o)
        );
        let restored = dir.path().join(format!("restored-{k}"));
        let r = restored.to_str().unwrap();
        let o = bbcrawl(dir.path(), &["--store", r, "store", "restore", b], &[]).await;
        assert_eq!(o.status.code(), Some(0), "restore {k}: {}", stderr(&o));
        let o = sync(&restored, &server.api_url(), &[], &[]).await;
        assert_eq!(o.status.code(), Some(0), "sync {k}: {}", stderr(&o));
        assert_store_is_truth(&restored, &sim);
    }
}
