//! The crawl through the real binary against the simulator (SPEC section 5).

use std::collections::{BTreeSet, HashMap};

use bbcrawl::record::CommitRecord;
use bbcrawl::record::{RepoEventKind, RepoStatus};
use bbcrawl::simulator::{Fault, RepoSpec, Simulator};
use bbcrawl::store::Store;

use crate::util::*;

/// A workspace with merges, a `develop` default branch, a `release/2024`
/// one, an empty repository, a branch without commits and an unmerged
/// feature branch.
fn workspace() -> Simulator {
    let sim = world(0);
    sim.add_repo(WS, RepoSpec::new("payments-api", 450));
    let mut develop = RepoSpec::new("mobile", 150);
    develop.mainbranch = Some("develop".into());
    sim.add_repo(WS, develop);
    let mut release = RepoSpec::new("tools", 40);
    release.mainbranch = Some("release/2024".into());
    sim.add_repo(WS, release);
    let mut empty = RepoSpec::new("empty-repo", 0);
    empty.mainbranch = None;
    sim.add_repo(WS, empty);
    let mut no_commits = RepoSpec::new("no-commits", 0);
    no_commits.mainbranch = Some("main".into());
    sim.add_repo(WS, no_commits);
    sim.add_repo(WS, RepoSpec::new("feature-work", 60));
    sim.add_branch(WS, "feature-work", "feature/unmerged", 5);
    sim
}

fn by_repo(records: &[CommitRecord]) -> HashMap<String, Vec<&CommitRecord>> {
    let mut m: HashMap<String, Vec<&CommitRecord>> = HashMap::new();
    for r in records {
        m.entry(r.repo.clone()).or_default().push(r);
    }
    m
}

fn reachable_hashes(records: &[CommitRecord], repo: &str) -> BTreeSet<String> {
    records
        .iter()
        .filter(|r| r.repo == repo && r.reachable)
        .map(|r| r.hash.clone())
        .collect()
}

fn truth_hashes(sim: &Simulator, repo: &str) -> BTreeSet<String> {
    branch_hashes(sim, WS, repo).into_iter().collect()
}

/// Commits requests in the log, by repository slug.
fn commit_requests(sim: &Simulator) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for r in sim.requests() {
        if let Some(rest) = r.path.strip_prefix("/2.0/repositories/acme/") {
            if let Some((slug, _)) = rest.split_once("/commits") {
                *m.entry(slug.to_owned()).or_insert(0) += 1;
            }
        }
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_stores_every_default_branch_exactly() {
    let sim = workspace();
    let server = serve(&sim).await;
    let (_dir, store) = fresh_store();
    let o = sync(&store, &server.api_url(), &[], &[]).await;
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("0 failed"), "{}", stdout(&o));

    let records = store_records(&store);
    let stored = by_repo(&records);
    let truth = branch_truth(&sim, WS);
    let mut total = 0;
    for (slug, want) in &truth {
        let got = stored.get(slug).cloned().unwrap_or_default();
        assert_eq!(got.len(), want.len(), "{slug}: number of commits");
        let got: HashMap<&str, &&CommitRecord> = got.iter().map(|r| (r.hash.as_str(), r)).collect();
        for c in want {
            let r = got
                .get(c.hash.as_str())
                .unwrap_or_else(|| panic!("{slug}: {} missing", c.hash));
            assert_eq!(r.date, c.date, "{slug} {}: date", c.hash);
            assert_eq!(r.date.offset(), c.date.offset(), "offset kept");
            assert_eq!(r.author.raw.as_deref(), Some(c.author_raw.as_str()));
            assert_eq!(
                r.author.uuid,
                c.author_user.as_ref().and_then(|u| u.uuid.clone())
            );
            assert_eq!(
                r.author.account_id,
                c.author_user.as_ref().and_then(|u| u.account_id.clone())
            );
            assert_eq!(
                r.author.display_name,
                c.author_user.as_ref().and_then(|u| u.display_name.clone())
            );
            assert_eq!(
                r.committer.as_ref().and_then(|x| x.raw.clone()),
                c.committer_raw
            );
            assert_eq!(r.message, c.message);
            assert_eq!(r.parents, c.parents);
            assert!(r.reachable);
            let branch = sim
                .repos(WS)
                .into_iter()
                .find(|x| &x.slug == slug)
                .unwrap()
                .mainbranch
                .unwrap();
            assert_eq!(r.branch, branch);
        }
        total += want.len();
    }
    assert_eq!(
        records.len(),
        total,
        "nothing else stored (no feature-branch commits)"
    );
    // The world really has what the test claims to cover.
    assert!(records.iter().any(|r| r.parents.len() == 2), "merges");
    assert!(
        records.iter().any(|r| r.author.uuid.is_none())
            && records.iter().any(|r| r.author.uuid.is_some())
    );
    assert!(records.iter().any(|r| r.committer.is_none()));
    assert!(
        records.iter().any(|r| r.message.len() > 10_000),
        "long messages"
    );
    assert!(records.iter().any(|r| !r.message.is_ascii()), "unicode");
    assert!(
        records
            .iter()
            .any(|r| r.date.offset().local_minus_utc() != 0),
        "non-UTC offsets"
    );

    let repos = store_repos(&store);
    let status: HashMap<&str, RepoStatus> =
        repos.iter().map(|r| (r.slug.as_str(), r.status)).collect();
    assert_eq!(status["empty-repo"], RepoStatus::Empty);
    assert_eq!(status["no-commits"], RepoStatus::Empty);
    assert_eq!(status["mobile"], RepoStatus::Ok);
    assert_eq!(status["tools"], RepoStatus::Ok);
    for r in &repos {
        assert!(r.walk.is_none(), "{}: walk finished", r.slug);
        if r.status == RepoStatus::Ok {
            assert_eq!(
                r.head.as_deref(),
                Some(sim.branch_commits(WS, &r.slug)[0].hash.as_str())
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_sync_costs_only_the_listing() {
    let sim = workspace();
    let server = serve(&sim).await;
    let (_dir, store) = fresh_store();
    assert_eq!(
        sync(&store, &server.api_url(), &[], RARE_AUDITS)
            .await
            .status
            .code(),
        Some(0)
    );
    let before = store_records(&store);
    sim.clear_requests();

    let o = sync(&store, &server.api_url(), &[], RARE_AUDITS).await;
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains(" 0 new commits"), "{}", stdout(&o));
    assert!(stdout(&o).contains("6 skipped unchanged"), "{}", stdout(&o));
    assert_eq!(listing_requests(&sim), 1);
    assert_eq!(
        commit_requests(&sim),
        HashMap::new(),
        "no commits request for an unchanged workspace"
    );
    assert_eq!(store_records(&store), before);
    let repos = store_repos(&store);
    assert!(
        repos
            .iter()
            .all(|r| r.last_decision.as_deref() == Some("skipped: unchanged")),
        "{repos:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_checks_each_repository_with_one_incremental_request() {
    let sim = workspace();
    let server = serve(&sim).await;
    let (_dir, store) = fresh_store();
    let audit = [("BBCRAWL_AUDIT_INTERVAL_SECONDS", "1")];
    assert_eq!(
        sync(&store, &server.api_url(), &[], &audit)
            .await
            .status
            .code(),
        Some(0)
    );
    let before = store_records(&store);
    // A push Bitbucket does not announce through `updated_on`.
    let quiet = sim.push_quietly(WS, "mobile", 4);
    sim.clear_requests();
    // Every repository's audit slot has passed.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;

    let o = sync(&store, &server.api_url(), &[], &audit).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains(" 4 new commits"), "{}", stdout(&o));
    assert!(stdout(&o).contains("(1 found changes)"), "{}", stdout(&o));
    let with_branch = sim
        .repos(WS)
        .iter()
        .filter(|r| r.mainbranch.is_some())
        .count();
    assert_eq!(listing_requests(&sim), 1);
    let per_repo = commit_requests(&sim);
    assert_eq!(
        per_repo.values().sum::<usize>(),
        with_branch,
        "{per_repo:?}"
    );
    assert!(per_repo.values().all(|n| *n == 1), "{per_repo:?}");
    // Incremental: every repository with a stored head asks only for what
    // came after it (the branch without commits has no head to exclude).
    assert!(sim
        .requests()
        .iter()
        .filter(|r| r.path.contains("/commits/") && !r.path.contains("/no-commits/"))
        .all(|r| r.query.as_deref().unwrap_or("").contains("exclude=")));
    let after = store_records(&store);
    assert_eq!(after.len(), before.len() + 4);
    assert!(quiet.iter().all(|h| after.iter().any(|r| &r.hash == h)));
    let mobile = stored_repo(&store, "mobile");
    assert!(
        mobile
            .events
            .iter()
            .any(|e| e.kind == RepoEventKind::AuditFoundChange { new_commits: 4 }),
        "{:?}",
        mobile.events
    );
    assert_eq!(mobile.last_decision.as_deref(), Some("audit"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_commits_are_fetched_with_one_request_per_hundred() {
    let sim = workspace();
    let (server, _dir, store) = synced(&sim).await;
    let pushed = sim.push(WS, "payments-api", 150);
    sim.push(WS, "mobile", 3);
    sim.clear_requests();

    let o = sync(&store, &server.api_url(), &[], &[]).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains(" 153 new commits"), "{}", stdout(&o));
    let per_repo = commit_requests(&sim);
    assert_eq!(per_repo["payments-api"], 2, "⌈150/100⌉");
    assert_eq!(per_repo["mobile"], 1);
    let records = store_records(&store);
    assert_eq!(
        reachable_hashes(&records, "payments-api"),
        truth_hashes(&sim, "payments-api")
    );
    assert_eq!(
        reachable_hashes(&records, "mobile"),
        truth_hashes(&sim, "mobile")
    );
    let head = stored_repo(&store, "payments-api").head;
    assert_eq!(head.as_deref(), Some(pushed[0].as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_force_push_marks_orphans_unreachable_and_records_the_event() {
    let sim = workspace();
    let (server, _dir, store) = synced(&sim).await;
    let old = truth_hashes(&sim, "payments-api");
    let old_head = sim.branch_commits(WS, "payments-api")[0].hash.clone();
    let added = sim.force_push(WS, "payments-api", 4, 2);
    let new = truth_hashes(&sim, "payments-api");
    let orphaned: BTreeSet<String> = old.difference(&new).cloned().collect();
    assert!(orphaned.len() >= 4);

    let o = sync(&store, &server.api_url(), &[], &[]).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let records = store_records(&store);
    assert_eq!(reachable_hashes(&records, "payments-api"), new);
    let unreachable: BTreeSet<String> = records
        .iter()
        .filter(|r| r.repo == "payments-api" && !r.reachable)
        .map(|r| r.hash.clone())
        .collect();
    assert_eq!(unreachable, orphaned, "orphans kept and marked");
    let s = open_store(&store);
    let repo = repo_named(&s, "payments-api");
    let c = s
        .commit(WS, &repo.uuid, orphaned.iter().next().unwrap())
        .unwrap()
        .unwrap();
    assert!(
        c.unreachable_since.is_some(),
        "the time it was found unreachable"
    );
    assert!(
        repo.events.iter().any(|e| e.kind
            == RepoEventKind::ForcePush {
                old_head: old_head.clone()
            }),
        "{:?}",
        repo.events
    );
    assert_eq!(repo.head.as_deref(), Some(added[0].as_str()));
    assert_eq!(repo.commits_unreachable as usize, orphaned.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branch_renames_repository_renames_and_deletions_are_recorded() {
    let sim = workspace();
    let (server, _dir, store) = synced(&sim).await;
    let before = store_records(&store).len();
    let uuid_of = |slug: &str| {
        sim.repos(WS)
            .into_iter()
            .find(|r| r.slug == slug)
            .unwrap()
            .uuid
    };
    let mobile = uuid_of("mobile");
    let tools = uuid_of("tools");
    let feature = uuid_of("feature-work");
    let feature_commits = sim.branch_commits(WS, "feature-work").len();

    sim.rename_default_branch(WS, "mobile", "main");
    sim.rename_repo(WS, "tools", "dev-tools");
    sim.delete_repo(WS, "feature-work");
    let o = sync(&store, &server.api_url(), &[], &[]).await;
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("1 deleted"), "{}", stdout(&o));

    let repos: HashMap<String, bbcrawl::record::RepoState> = store_repos(&store)
        .into_iter()
        .map(|r| (r.uuid.clone(), r))
        .collect();
    let m = &repos[&mobile];
    assert_eq!(m.default_branch.as_deref(), Some("main"));
    assert!(m.events.iter().any(|e| e.kind
        == RepoEventKind::DefaultBranchChanged {
            from: Some("develop".into()),
            to: Some("main".into())
        }));
    let t = &repos[&tools];
    assert_eq!(t.slug, "dev-tools");
    assert!(t.events.iter().any(|e| e.kind
        == RepoEventKind::Renamed {
            from: "tools".into(),
            to: "dev-tools".into()
        }));
    let f = &repos[&feature];
    assert_eq!(f.status, RepoStatus::Deleted);
    assert!(f.events.iter().any(|e| e.kind == RepoEventKind::Deleted));

    let records = store_records(&store);
    assert_eq!(
        records.len(),
        before,
        "commits kept, none duplicated by the rename"
    );
    assert_eq!(
        reachable_hashes(&records, "dev-tools"),
        truth_hashes(&sim, "dev-tools")
    );
    assert_eq!(
        reachable_hashes(&records, "mobile"),
        truth_hashes(&sim, "mobile")
    );
    assert_eq!(
        records.iter().filter(|r| r.repo_uuid == feature).count(),
        feature_commits,
        "deleted repository's commits kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_skips_older_commits_on_a_first_crawl() {
    let sim = world(0);
    sim.add_repo(WS, RepoSpec::new("old", 1200));
    let server = serve(&sim).await;
    let all = sim.branch_commits(WS, "old");
    // A cut-off a third of the way down the history.
    let since = all[400].date.with_timezone(&chrono::Utc);
    let since_s = since.to_rfc3339();
    let (_dir, store) = fresh_store();
    let o = sync(
        &store,
        &server.api_url(),
        &[],
        &[("BBCRAWL_SINCE", since_s.as_str())],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let records = store_records(&store);
    assert!(!records.is_empty());
    assert!(
        records.iter().all(|r| r.date >= since),
        "an older commit was stored"
    );
    let wanted = all.iter().filter(|c| c.date >= since).count();
    assert!(
        records.len() * 10 >= wanted * 9,
        "{} of {wanted}",
        records.len()
    );
    assert!(
        commit_requests(&sim)["old"] < 12,
        "the walk stopped early: {:?}",
        commit_requests(&sim)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn include_exclude_and_repo_filters_choose_repositories() {
    let sim = workspace();
    let server = serve(&sim).await;
    let (_dir, store) = fresh_store();
    let o = sync(
        &store,
        &server.api_url(),
        &[],
        &[("BBCRAWL_INCLUDE", "p*,m*"), ("BBCRAWL_EXCLUDE", "mob*")],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let slugs: BTreeSet<String> = store_repos(&store).into_iter().map(|r| r.slug).collect();
    assert_eq!(slugs, ["payments-api".to_owned()].into_iter().collect());
    let o = sync(&store, &server.api_url(), &["--repo", "tools"], &[]).await;
    assert_eq!(o.status.code(), Some(0));
    let slugs: BTreeSet<String> = store_repos(&store).into_iter().map(|r| r.slug).collect();
    assert_eq!(
        slugs,
        ["payments-api".to_owned(), "tools".to_owned()]
            .into_iter()
            .collect()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_credentials_stop_the_sync_with_exit_3() {
    let sim = workspace();
    let server = serve(&sim).await;
    let (_dir, store) = fresh_store();
    let o = sync(
        &store,
        &server.api_url(),
        &[],
        &[("BITBUCKET_ACCESS_TOKEN", "revoked")],
    )
    .await;
    assert_eq!(o.status.code(), Some(3), "{}{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains("401"), "{}", stderr(&o));
    let o = sync(
        &store,
        &server.api_url(),
        &[],
        &[("BBCRAWL_WORKSPACES", "nowhere")],
    )
    .await;
    assert_eq!(o.status.code(), Some(5), "{}{}", stdout(&o), stderr(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_store_is_exit_7_with_a_clear_message() {
    let sim = workspace();
    let server = serve(&sim).await;
    let (_dir, store) = fresh_store();
    let _held = Store::open(&store).unwrap();
    let o = sync(&store, &server.api_url(), &[], &[]).await;
    assert_eq!(o.status.code(), Some(7), "{}{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains("locked"), "{}", stderr(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_is_exit_1_not_a_panic() {
    let sim = workspace();
    let server = serve(&sim).await;
    let (_dir, store) = fresh_store();
    std::fs::create_dir_all(&store).unwrap();
    std::fs::write(store.join("conf"), b"\xff\xfe not a sled config").unwrap();
    std::fs::write(store.join("db"), vec![0xAB; 8192]).unwrap();
    let o = sync(&store, &server.api_url(), &[], &[]).await;
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    assert!(stderr(&o).contains("store"), "{}", stderr(&o));
}

/// A walk that stored pages and is then restarted from the top (its saved
/// `next` link rejected: here the repository was renamed, so the link's old
/// path answers 404) after a force push removed commits it had stored: the
/// restarted walk re-marks reachability at its end, so those commits are
/// unreachable, not left reachable forever. (Found by the change feed's
/// loader test: a daemon killed mid-walk, then a rename and a force push.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_walk_re_marks_what_a_force_push_removed() {
    let sim = world(0);
    sim.add_repo(WS, RepoSpec::new("svc", 30));
    let (server, dir, store) = synced(&sim).await;
    // 150 new commits: the first page (the newest 100) is stored, the
    // second fails (no retries): the walk is saved in the middle.
    sim.push(WS, "svc", 150);
    let config = dir.path().join("bbcrawl.toml");
    std::fs::write(&config, "max_retries = 0\n").unwrap();
    let cfg = config.to_str().unwrap();
    sim.inject_after(1, Some("/svc/commits"), vec![Fault::Status(500)]);
    let o = sync(&store, &server.api_url(), &[], &[("BBCRAWL_CONFIG", cfg)]).await;
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    let saved = stored_repo(&store, "svc");
    assert!(
        saved.walk.as_ref().is_some_and(|w| w.pages == 1),
        "{saved:?}"
    );
    // The five newest stored commits are force-pushed away; the repository
    // is renamed, so the saved link's path is gone.
    sim.force_push(WS, "svc", 5, 2);
    sim.rename_repo(WS, "svc", "svc-renamed");
    let o = sync(&store, &server.api_url(), &[], &[]).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(assert_reachable_is_truth(&store, &sim), 5);
    let repo = stored_repo(&store, "svc-renamed");
    assert_eq!(repo.commits_unreachable, 5, "{repo:?}");
}
