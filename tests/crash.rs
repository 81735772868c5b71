//! Crash safety and hostile conditions through the real binary: SIGKILL at random moments, 429 storms with faults, repeatable full walks, a repository that keeps failing.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bbcrawl::record::{RepoState, RepoStatus};
use bbcrawl::simulator::{
    Fault, RepoSpec, RequestRecord, SimCommit, SimCredential, SimOptions, Simulator,
};

use crate::util::{
    assert_store_is_truth, bbcrawl, branch_truth, fresh_store, open_store, serve, spawn_sync,
    stderr, stdout, store_records, store_repos, sync, sync_env, world, API_TOKEN, EMAIL, WS,
};

/// Page size bbcrawl asks for by default (and the simulator's maximum).
const PAGE: usize = 100;

/// A small deterministic generator (splitmix64) for kill delays.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform-ish in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// Writes a config file (no secrets in it) and returns its path.
fn config_file(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("bbcrawl.toml");
    std::fs::write(&path, body).unwrap();
    path
}

/// A number printed just before `label` in the summary line, e.g.
/// `summary_number(out, " new commits")` for "…; 120 new commits; …".
fn summary_number(out: &str, label: &str) -> u64 {
    let line = out
        .lines()
        .find(|l| l.contains(" new commits;"))
        .unwrap_or_else(|| panic!("no summary line in stdout:\n{out}"));
    let before = &line[..line
        .find(label)
        .unwrap_or_else(|| panic!("no {label:?} in {line:?}"))];
    let digits: String = before
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_digit())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number before {label:?} in {line:?}"))
}

/// Where `big` stood when a run started.
#[derive(Debug, Clone, PartialEq)]
enum Before {
    /// No saved walk and no head: the run must walk from the top.
    NoWalk,
    /// A saved walk with this many pages and this `next` link.
    Walk { pages: u64, next: Option<String> },
    /// Walk finished: `head` set.
    Done,
}

/// The repository `slug` in the store a killed or finished child left
/// behind, if it got that far.
fn repo_by_slug(store: &Path, slug: &str) -> Option<RepoState> {
    store_repos(store).into_iter().find(|r| r.slug == slug)
}

fn before_of(state: Option<RepoState>) -> Before {
    match state {
        Some(RepoState { walk: Some(w), .. }) if w.pages > 0 => Before::Walk {
            pages: w.pages,
            next: w.next,
        },
        Some(RepoState { head: Some(_), .. }) => Before::Done,
        _ => Before::NoWalk,
    }
}

/// After a crash: for every repository, the saved cursor is never ahead of
/// the stored data, the stored count matches the stored commits, and nothing
/// foreign is stored. Returns the saved walk pages of `big` (0 if none).
fn assert_cursor_not_ahead(store: &Path, truth: &BTreeMap<String, Vec<SimCommit>>) -> u64 {
    let s = open_store(store);
    let mut big_pages = 0;
    for repo in s.repos().unwrap() {
        let truth = &truth[&repo.slug];
        let stored: Vec<String> = s
            .repo_commits(&repo.workspace, &repo.uuid)
            .map(|c| c.expect("readable commit").hash)
            .collect();
        let set: HashSet<&str> = stored.iter().map(String::as_str).collect();
        assert_eq!(set.len(), stored.len(), "{}: duplicate keys", repo.slug);
        assert_eq!(
            repo.commits_stored,
            stored.len() as u64,
            "{}: commits_stored disagrees with the commits in the store",
            repo.slug
        );
        let truth_set: HashSet<&str> = truth.iter().map(|c| c.hash.as_str()).collect();
        assert!(
            set.is_subset(&truth_set),
            "{}: commits stored that are not on the branch",
            repo.slug
        );
        if let Some(w) = repo.walk.as_ref().filter(|w| !w.exclude.is_empty()) {
            // An incremental walk of an unchanged branch (killed before it
            // was finished): it excludes the head, and everything is stored.
            assert_eq!(w.exclude, repo.head.iter().cloned().collect::<Vec<_>>());
            assert_eq!(
                repo.head.as_deref(),
                Some(truth[0].hash.as_str()),
                "{}: head",
                repo.slug
            );
            assert_eq!(set.len(), truth.len(), "{}: all stored", repo.slug);
        } else if let Some(w) = &repo.walk {
            let covered = (w.pages as usize * PAGE).min(truth.len());
            let missing: Vec<&str> = truth[..covered]
                .iter()
                .map(|c| c.hash.as_str())
                .filter(|h| !set.contains(h))
                .collect();
            assert!(
                missing.is_empty(),
                "{}: the saved walk says {} pages are stored but {} of their {} commits are missing (first: {:?})",
                repo.slug,
                w.pages,
                missing.len(),
                covered,
                missing.first()
            );
            if w.pages > 0 {
                assert_eq!(
                    w.tip.as_deref(),
                    Some(truth[0].hash.as_str()),
                    "{}: walk tip",
                    repo.slug
                );
                assert_eq!(
                    w.next.is_some(),
                    covered < truth.len(),
                    "{}: a next link is saved exactly while pages remain",
                    repo.slug
                );
            }
            if repo.slug == "big" {
                big_pages = w.pages;
            }
        } else if repo.head.is_some() {
            assert_eq!(
                repo.head.as_deref(),
                Some(truth[0].hash.as_str()),
                "{}: head",
                repo.slug
            );
            assert_eq!(
                set.len(),
                truth.len(),
                "{}: a finished walk has every commit",
                repo.slug
            );
        }
    }
    big_pages
}

fn query_has(r: &RequestRecord, key: &str) -> bool {
    r.query
        .as_deref()
        .is_some_and(|q| url::form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k == key))
}

/// A commits request for the first page of a full walk: no `page` token and
/// no `exclude`.
fn is_from_top(r: &RequestRecord) -> bool {
    !query_has(r, "page") && !query_has(r, "exclude")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_from_saved_cursor_after_sigkill() {
    let long = std::env::var("BBCRAWL_LONG_TESTS").is_ok_and(|v| v == "1");
    let kills = if long { 50 } else { 3 };
    let sim = world(0);
    sim.add_repo(WS, RepoSpec::new("big", 20_000));
    sim.add_repo(WS, RepoSpec::new("small-a", 350));
    sim.add_repo(WS, RepoSpec::new("small-b", 42));
    sim.set_latency(Duration::from_millis(3));
    let server = serve(&sim).await;
    let api = server.api_url();
    let dir = tempfile::tempdir().unwrap();
    let mut store = dir.path().join("store-0");
    let log = dir.path().join("bbcrawl.log");
    let mut env = sync_env(&api, &store);
    let truth = branch_truth(&sim, WS);
    let big_path = format!("/2.0/repositories/{WS}/big/commits/main");

    // Requests of each run: (state of big before it, range in the log).
    let mut runs: Vec<(Before, std::ops::Range<usize>)> = Vec::new();
    let mut rng = SplitMix(0x5EED_C0DE);
    let (mut mid_walk, mut finished_early) = (0, 0);
    let started = Instant::now();
    for i in 0..kills {
        let mut before = before_of(repo_by_slug(&store, "big"));
        if before == Before::Done && i + 1 < kills {
            // Big is complete: crash the next walks in a fresh store.
            store = dir.path().join(format!("store-{i}"));
            env = sync_env(&api, &store);
            before = Before::NoWalk;
        }
        let from = sim.requests().len();
        let mut child = spawn_sync(&env, &log);
        let delay = rng.between(150, 1500);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let early = child.try_wait().unwrap();
        if let Some(status) = early {
            finished_early += 1;
            assert_eq!(status.code(), Some(0), "run {i} finished with {status}");
        } else {
            child.kill().await.unwrap();
        }
        // Let anything the dead process had on the wire reach the log.
        tokio::time::sleep(Duration::from_millis(30)).await;
        runs.push((before.clone(), from..sim.requests().len()));
        let pages = assert_cursor_not_ahead(&store, &truth);
        if pages > 0 {
            mid_walk += 1;
        }
        let was = match &before {
            Before::NoWalk => "no walk".to_owned(),
            Before::Walk { pages, .. } => format!("{pages} pages saved"),
            Before::Done => "done".to_owned(),
        };
        eprintln!(
            "kill {i}: after {delay} ms, {}; big before: {was}, saved pages after: {pages}",
            if early.is_some() {
                "already finished"
            } else {
                "SIGKILL"
            },
        );
    }

    let before = before_of(repo_by_slug(&store, "big"));
    let from = sim.requests().len();
    let out = sync(&store, &api, &[], &[]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    runs.push((before, from..sim.requests().len()));
    eprintln!(
        "{kills} kills ({mid_walk} left big mid-walk, {finished_early} runs finished before their kill) and a final sync in {:.1} s; {} requests",
        started.elapsed().as_secs_f64(),
        sim.requests().len()
    );
    assert!(
        mid_walk > 0,
        "no kill landed in the middle of big's walk: the test did not test resuming"
    );

    assert_store_is_truth(&store, &sim);
    let repos = store_repos(&store);
    assert!(repos
        .iter()
        .all(|r| r.status == RepoStatus::Ok && r.walk.is_none()));

    // No run re-walked big from page 1 if a walk was saved; a resumed run's
    // first request for big is the saved `next` link, exactly.
    let log_all = sim.requests();
    let (mut from_top_total, mut runs_from_top) = (0, 0);
    for (n, (before, range)) in runs.iter().enumerate() {
        let big: Vec<&RequestRecord> = log_all[range.clone()]
            .iter()
            .filter(|r| r.path == big_path)
            .collect();
        let from_top = big.iter().filter(|r| is_from_top(r)).count();
        from_top_total += from_top;
        match before {
            Before::NoWalk => {
                // A run killed before it reached big sent nothing for it.
                runs_from_top += usize::from(!big.is_empty());
                assert!(from_top <= 1, "run {n}: {from_top} requests for page 1");
                if let Some(first) = big.first() {
                    assert!(is_from_top(first), "run {n}: a new walk starts at the top");
                }
            }
            Before::Walk { pages, next } => {
                assert_eq!(
                    from_top, 0,
                    "run {n} had a saved walk ({pages} pages) but asked for page 1 again"
                );
                if let Some(first) = big.first() {
                    assert!(query_has(first, "page"), "run {n}: resumed with {first:?}");
                    let next = url::Url::parse(next.as_deref().expect("saved next")).unwrap();
                    assert_eq!(
                        (first.path.as_str(), first.query.as_deref()),
                        (next.path(), next.query()),
                        "run {n}: the first request for big is the saved next link"
                    );
                }
            }
            Before::Done => assert_eq!(from_top, 0, "run {n}: big was finished"),
        }
    }
    eprintln!("page-1 requests for big: {from_top_total}; runs that started without a saved walk and reached big: {runs_from_top}");
    assert_eq!(from_top_total, runs_from_top);
    assert!(from_top_total >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_429_storm_with_faults() {
    const LIMIT: u32 = 25;
    const WINDOW: Duration = Duration::from_secs(3);
    const RETRY_AFTER: u64 = 1;
    const LATENCY: Duration = Duration::from_millis(50);
    // Requests already on the wire when a 429 comes back (loopback).
    const GRACE: Duration = Duration::from_millis(100);
    let sim = Simulator::new(SimOptions {
        seed: 429,
        requests_per_hour: LIMIT,
        rate_window: WINDOW,
        retry_after: Some(RETRY_AFTER),
        fault_rate: 0.05,
        ..SimOptions::default()
    });
    sim.add_workspace(WS);
    // An API token: no X-RateLimit-Limit header, so the client keeps its own
    // (huge) budget and only the simulator's 429s hold it back. With the
    // access token it would adopt the 25 "per hour" and pace for hours.
    sim.add_credential(SimCredential::ApiToken {
        email: EMAIL.into(),
        token: API_TOKEN.into(),
        scopes: vec!["read:repository:bitbucket".into()],
        workspaces: vec![WS.into()],
    });
    for i in 0..6 {
        sim.add_repo(WS, RepoSpec::new(&format!("svc-{i}"), 200 + 20 * i));
    }
    sim.set_latency(LATENCY);
    let server = serve(&sim).await;
    let api = server.api_url();
    let (dir, store) = fresh_store();
    let store_s = store.to_string_lossy().into_owned();
    // Stalls (2 s) are cut off by the 1 s timeout; 429s and faults never
    // exhaust 50 retries.
    let config = config_file(
        dir.path(),
        "page_size = 10\nmax_retries = 50\nrequest_timeout_seconds = 1\n",
    );
    let config_s = config.to_string_lossy().into_owned();
    let started = Instant::now();
    let out = bbcrawl(
        dir.path(),
        &["--config", &config_s, "sync"],
        &[
            ("BBCRAWL_API_URL", api.as_str()),
            ("BBCRAWL_WORKSPACES", WS),
            ("BITBUCKET_USERNAME", EMAIL),
            ("BITBUCKET_API_TOKEN", API_TOKEN),
            ("BBCRAWL_STORE", &store_s),
            ("BBCRAWL_REQUESTS_PER_HOUR", "1000000"),
        ],
    )
    .await;
    let wall = started.elapsed();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert_store_is_truth(&store, &sim);

    let log = sim.requests();
    assert!(log.iter().all(|r| r.credential.as_deref() == Some(EMAIL)));
    let limited: Vec<usize> = (0..log.len()).filter(|&i| log[i].status == 429).collect();
    let faults = log
        .iter()
        .filter(|r| r.status == 0 || r.status >= 500)
        .count();
    let text = stdout(&out);
    eprintln!(
        "429 storm: {} requests, {} answered 429, {} transient faults (5xx or no answer) in {:.1} s; summary: {}",
        log.len(),
        limited.len(),
        faults,
        wall.as_secs_f64(),
        text.trim()
    );
    assert!(
        limited.len() >= 10,
        "the storm was too mild to test anything"
    );
    assert_eq!(
        summary_number(&text, " rate limited (429)"),
        limited.len() as u64,
        "the summary counts every 429 served"
    );

    let retry_after = Duration::from_secs(RETRY_AFTER);
    let (mut probes, mut min_pause, mut min_probe_gap) = (0, Duration::MAX, Duration::MAX);
    for &i in &limited {
        let t = log[i].at;
        // The gate is closed from the 429's arrival (+ latency) for
        // Retry-After: nothing may arrive in between.
        let during: Vec<String> = log
            .iter()
            .filter(|r| r.at > t + GRACE && r.at < t + retry_after - GRACE)
            .map(|r| format!("{:?} after the 429: {}?{:?}", r.at - t, r.path, r.query))
            .collect();
        assert!(
            during.is_empty(),
            "request {i} answered 429 (Retry-After {RETRY_AFTER} s) but {} requests were sent while the gate was closed: {during:#?}",
            during.len()
        );
        // The first request after the pause probes alone: nothing else
        // arrives before its answer (it cannot come back before LATENCY).
        if let Some(p) = (i + 1..log.len()).find(|&j| log[j].at > t + GRACE) {
            min_pause = min_pause.min(log[p].at - t);
            if let Some(next) = log.get(p + 1) {
                let gap = next.at - log[p].at;
                probes += 1;
                min_probe_gap = min_probe_gap.min(gap);
                assert!(
                    gap >= LATENCY - Duration::from_millis(1),
                    "after the pause of 429 #{i}, request {p} probed but request {} followed it {gap:?} later, before the probe's answer",
                    p + 1
                );
            }
        }
    }
    eprintln!(
        "429 storm: {probes} pauses checked; shortest pause from a 429 to the probe {min_pause:?}; shortest gap after a probe {min_probe_gap:?}"
    );
    assert!(probes > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_sync_twice_gives_identical_store_contents() {
    let sim = world(0);
    sim.add_repo(WS, RepoSpec::new("alpha", 450));
    sim.add_repo(WS, RepoSpec::new("beta", 130));
    sim.add_repo(
        WS,
        RepoSpec {
            slug: "empty".into(),
            mainbranch: None,
            commits: 0,
            merges: false,
        },
    );
    let total: usize = branch_truth(&sim, WS).values().map(Vec::len).sum();
    let server = serve(&sim).await;
    let api = server.api_url();
    let (_dir, store) = fresh_store();

    let mut new_commits = Vec::new();
    let mut contents = Vec::new();
    for args in [&[][..], &["--full"][..], &["--full"][..]] {
        let out = sync(&store, &api, args, &[]).await;
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}{}",
            stdout(&out),
            stderr(&out)
        );
        new_commits.push(summary_number(&stdout(&out), " new commits"));
        contents.push(store_records(&store));
    }
    eprintln!("full syncs: new commits per run {new_commits:?} (truth: {total})");
    assert_store_is_truth(&store, &sim);
    assert_eq!(contents[0].len(), total);
    assert!(
        contents[1] == contents[2],
        "the two full syncs left different stores"
    );
    assert!(
        contents[0] == contents[1],
        "a full sync changed the first sync's records"
    );
    assert_eq!(new_commits, vec![total as u64, 0, 0]);
    // Every repository ends in a finished state with its counts right.
    for r in store_repos(&store) {
        assert!(r.walk.is_none(), "{}: walk left over", r.slug);
        assert_eq!(r.commits_unreachable, 0, "{}", r.slug);
        let expected = sim.branch_commits(WS, &r.slug).len() as u64;
        assert_eq!(r.commits_stored, expected, "{}: commits_stored", r.slug);
        let status = if expected == 0 {
            RepoStatus::Empty
        } else {
            RepoStatus::Ok
        };
        assert_eq!(r.status, status, "{}", r.slug);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_that_keeps_failing_is_failed_and_the_others_complete() {
    const MAX_RETRIES: usize = 2;
    let sim = world(0);
    sim.add_repo(WS, RepoSpec::new("good-a", 230));
    sim.add_repo(WS, RepoSpec::new("bad", 150));
    sim.add_repo(WS, RepoSpec::new("good-b", 75));
    let bad_path = format!("/repositories/{WS}/bad/commits");
    // One 500 for every attempt a request gets: the first request and its
    // retries, then nothing more (the next sync sees a healthy repository).
    sim.inject(Some(&bad_path), vec![Fault::Status(500); MAX_RETRIES + 1]);
    let server = serve(&sim).await;
    let api = server.api_url();
    let (dir, store) = fresh_store();
    let config = config_file(dir.path(), &format!("max_retries = {MAX_RETRIES}\n"));
    let config_s = config.to_string_lossy().into_owned();

    let out = sync(&store, &api, &["--config", &config_s], &[]).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(6), "{text}{}", stderr(&out));
    assert_eq!(summary_number(&text, " failed,"), 1, "{text}");
    assert_eq!(summary_number(&text, " ok,"), 2, "{text}");
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("failed:") && l.contains("acme/bad")),
        "stdout names the failed repository:\n{text}"
    );
    let bad_requests = sim
        .requests()
        .iter()
        .filter(|r| r.path.contains(&bad_path))
        .count();
    assert_eq!(
        bad_requests,
        MAX_RETRIES + 1,
        "one request and {MAX_RETRIES} retries"
    );
    let repos = store_repos(&store);
    assert_eq!(repos.len(), 3);
    let records = store_records(&store);
    for r in &repos {
        let stored = records.iter().filter(|c| c.repo_uuid == r.uuid).count();
        if r.slug == "bad" {
            assert_eq!(r.status, RepoStatus::Failed);
            assert!(
                r.last_error.as_deref().is_some_and(|e| !e.is_empty()),
                "{r:?}"
            );
            assert_eq!(r.consecutive_failures, 1);
            assert_eq!(stored, 0);
        } else {
            assert_eq!(r.status, RepoStatus::Ok, "{}: {:?}", r.slug, r.last_error);
            assert_eq!(r.last_error, None);
            assert_eq!(stored, sim.branch_commits(WS, &r.slug).len(), "{}", r.slug);
        }
    }

    // The faults are used up: the next sync completes the failed repository.
    let out = sync(&store, &api, &["--config", &config_s], &[]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(summary_number(&stdout(&out), " failed,"), 0);
    assert_eq!(summary_number(&stdout(&out), " new commits"), 150);
    for r in store_repos(&store) {
        assert_eq!(r.status, RepoStatus::Ok, "{}: {:?}", r.slug, r.last_error);
        assert_eq!(r.last_error, None, "{}", r.slug);
        assert_eq!(r.consecutive_failures, 0, "{}", r.slug);
    }
    assert_store_is_truth(&store, &sim);
}
