//! Freshness at scale (issue 6): a pass costs requests only for
//! repositories that changed; audits catch what `updated_on` misses; a big
//! backfill cannot delay a small push by more than one pass.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use bbcrawl::actors::{run_pass, PassOptions, PassSummary, Quiet};
use bbcrawl::bitbucket::BitbucketClient;
use bbcrawl::record::RepoEventKind;
use bbcrawl::simulator::{RepoSpec, Simulator};
use bbcrawl::store::Store;
use chrono::{DateTime, Utc};

use crate::util::*;

/// Commits requests by slug, in arrival order.
fn commit_requests(sim: &Simulator) -> Vec<String> {
    sim.requests()
        .iter()
        .filter_map(|r| {
            let rest = r.path.strip_prefix("/2.0/repositories/acme/")?;
            rest.split_once("/commits").map(|(slug, _)| slug.to_owned())
        })
        .collect()
}

fn stored_hashes(store: &std::path::Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in store_records(store) {
        m.entry(r.repo).or_default().insert(r.hash);
    }
    m
}

fn truth(sim: &Simulator) -> BTreeMap<String, BTreeSet<String>> {
    branch_truth(sim, WS)
        .into_iter()
        .map(|(slug, commits)| (slug, commits.into_iter().map(|c| c.hash).collect()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_pass_over_2000_repositories_costs_only_the_listing() {
    // An audit slot falling between two passes would add a request; with
    // audits once a year that chance is negligible here (and the daily
    // default is covered by the audit test).
    let sim = world(0);
    for i in 0..2000 {
        let mut spec = RepoSpec::new(&format!("svc-{i:04}"), 3);
        spec.merges = false;
        sim.add_repo(WS, spec);
    }
    let server = serve(&sim).await;
    let (_dir, store) = fresh_store();
    let o = sync(&store, &server.api_url(), &[], RARE_AUDITS).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(listing_requests(&sim), 20);
    assert_eq!(
        commit_requests(&sim).len(),
        2000,
        "a first sync asks every repository once"
    );

    sim.clear_requests();
    let o = sync(&store, &server.api_url(), &[], RARE_AUDITS).await;
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        sim.requests().len(),
        20,
        "an unchanged pass is the 20 listing pages"
    );
    assert!(
        stdout(&o).contains("2000 skipped unchanged"),
        "{}",
        stdout(&o)
    );

    let pushed: Vec<Vec<String>> = ["svc-0007", "svc-1234", "svc-1999"]
        .iter()
        .map(|s| sim.push(WS, s, 2))
        .collect();
    sim.clear_requests();
    let o = sync(&store, &server.api_url(), &[], RARE_AUDITS).await;
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains(" 6 new commits"), "{}", stdout(&o));
    assert_eq!(listing_requests(&sim), 20);
    let asked: BTreeSet<String> = commit_requests(&sim).into_iter().collect();
    assert_eq!(
        asked,
        ["svc-0007", "svc-1234", "svc-1999"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    assert_eq!(sim.requests().len(), 23);
    assert_eq!(
        stored_hashes(&store),
        truth(&sim),
        "the store equals the truth"
    );
    assert!(pushed.iter().flatten().count() == 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audits_find_quiet_pushes_within_the_interval_and_changes_go_first() {
    let sim = world(0);
    for i in 0..40 {
        sim.add_repo(WS, RepoSpec::new(&format!("r{i:02}"), 5));
    }
    let server = serve(&sim).await;
    let (_dir, store) = fresh_store();
    let interval = Duration::from_secs(4);
    let audit = [("BBCRAWL_AUDIT_INTERVAL_SECONDS", "4")];
    assert_eq!(
        sync(&store, &server.api_url(), &[], &audit)
            .await
            .status
            .code(),
        Some(0)
    );

    // A push that does not move `updated_on`, and two ordinary pushes.
    let quiet = sim.push_quietly(WS, "r17", 3);
    let started = std::time::Instant::now();
    sim.push(WS, "r03", 1);
    sim.push(WS, "r29", 1);
    sim.clear_requests();

    let mut checked: BTreeSet<String> = BTreeSet::new();
    let mut per_pass = Vec::new();
    let mut found_after = None;
    let mut first_pass = true;
    while started.elapsed() < interval + Duration::from_millis(1500) {
        let before = sim.requests().len();
        let o = sync(&store, &server.api_url(), &[], &audit).await;
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let asked: Vec<String> = sim.requests()[before..]
            .iter()
            .filter_map(|r| {
                r.path
                    .strip_prefix("/2.0/repositories/acme/")
                    .and_then(|p| p.split_once("/commits"))
                    .map(|(s, _)| s.to_owned())
            })
            .collect();
        if first_pass {
            // The announced changes are served before any audit.
            let changed: BTreeSet<&str> = asked.iter().take(2).map(String::as_str).collect();
            assert_eq!(changed, ["r03", "r29"].into_iter().collect(), "{asked:?}");
            first_pass = false;
        }
        per_pass.push(asked.len());
        checked.extend(asked);
        if found_after.is_none() && store_records(&store).iter().any(|r| r.hash == quiet[0]) {
            found_after = Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let found_after = found_after.expect("the audit never found the quiet push");
    assert!(
        found_after <= interval + Duration::from_millis(1500),
        "found after {found_after:?}"
    );
    // Every repository was checked within the interval, never all in one pass.
    assert_eq!(checked.len(), 40, "{checked:?}");
    assert!(per_pass.iter().all(|n| *n < 30), "{per_pass:?}");
    let r17 = stored_repo(&store, "r17");
    assert!(
        r17.events
            .iter()
            .any(|e| e.kind == RepoEventKind::AuditFoundChange { new_commits: 3 }),
        "{:?}",
        r17.events
    );
    assert_eq!(stored_hashes(&store), truth(&sim));
}

/// An actor system whose tokio clock is paused (time jumps to the next
/// timer), so hour-long budgets pass in milliseconds.
fn paused_system() -> actix::SystemRunner {
    actix::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
    })
}

/// Runs one pass on a paused clock, the simulator served on the same runtime.
async fn paced_pass(
    api: &str,
    store: &Arc<Store>,
    requests_per_hour: u32,
    since: Option<DateTime<Utc>>,
) -> PassSummary {
    let mut opts =
        bbcrawl::bitbucket::ClientOptions::new(url::Url::parse(api).unwrap(), vec![access_token()]);
    opts.requests_per_hour = requests_per_hour;
    opts.request_timeout = Duration::from_secs(86_400);
    let client = BitbucketClient::new(opts).unwrap();
    run_pass(
        client,
        Arc::clone(store),
        PassOptions {
            workspaces: vec![WS.into()],
            concurrency: 4,
            since,
            audit_interval: Duration::from_secs(86_400),
            ..PassOptions::default()
        },
        Arc::new(Quiet),
        Arc::new(AtomicBool::new(false)),
    )
    .await
    .unwrap()
}

/// A first crawl that the budget spreads over several passes stays a
/// first crawl: `since` keeps older commits out of every part of it.
#[test]
fn since_applies_to_a_first_crawl_resumed_in_later_passes() {
    paused_system().block_on(async {
        let sim = world(0);
        sim.add_repo(WS, RepoSpec::new("old", 1200));
        let all = sim.branch_commits(WS, "old");
        let since = all[400].date.with_timezone(&Utc);
        let server = serve(&sim).await;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let mut backfilled = 0;
        for _ in 0..4 {
            // 4 requests an hour: a pass gets a listing and a few pages.
            let pass = paced_pass(&server.api_url(), &store, 4, Some(since)).await;
            backfilled += pass.backfilling;
        }
        assert!(backfilled > 0, "the crawl never spanned passes");
        let repo = repo_named(&store, "old");
        let dates: Vec<_> = store
            .repo_commits(WS, &repo.uuid)
            .map(|c| c.unwrap().date)
            .collect();
        assert!(dates.len() >= 401, "{} stored", dates.len());
        let older = dates.iter().filter(|d| **d < since).count();
        assert_eq!(older, 0, "commits older than since were stored");
    });
}

#[test]
fn a_big_backfill_does_not_delay_a_small_push_by_more_than_one_pass() {
    paused_system().block_on(async {
        let sim = world(0);
        for i in 0..5 {
            sim.add_repo(WS, RepoSpec::new(&format!("small-{i}"), 20));
        }
        let server = serve(&sim).await;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        // A tight budget: 300 requests an hour.
        let first = paced_pass(&server.api_url(), &store, 300, None).await;
        assert_eq!(first.ok, 5);

        // A new 100,000-commit repository (1,000 pages) arrives.
        sim.add_repo(WS, RepoSpec::new("monorepo", 100_000));
        let second = paced_pass(&server.api_url(), &store, 300, None).await;
        assert_eq!(second.backfilling, 1, "{second:?}");
        let big = repo_named(&store, "monorepo");
        assert!(big.walk.is_some() && big.commits_stored > 0 && big.commits_stored < 100_000);

        // A small push elsewhere is in the store after the next pass.
        let pushed = sim.push(WS, "small-3", 3);
        sim.clear_requests();
        let third = paced_pass(&server.api_url(), &store, 300, None).await;
        let small = repo_named(&store, "small-3");
        for h in &pushed {
            assert!(
                store.commit(WS, &small.uuid, h).unwrap().is_some(),
                "pushed commit {h} missing"
            );
        }
        // ...and it was served before the backfill continued.
        let first_commits = sim
            .requests()
            .into_iter()
            .find(|r| r.path.contains("/commits/"))
            .unwrap();
        assert!(
            first_commits.path.contains("/small-3/"),
            "{}",
            first_commits.path
        );
        assert!(third.new_commits >= 3);
        let after = repo_named(&store, "monorepo");
        assert!(
            after.commits_stored > big.commits_stored,
            "the backfill went on"
        );
    });
}
