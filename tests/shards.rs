//! Shards (issue 16): several instances split one workspace by a hash of
//! each repository's uuid — every repository crawled by exactly one of
//! them, each with its own store and credential, a crash of one not
//! touching the others — through the real binary against the simulator.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bbcrawl::record::RepoStatus;
use bbcrawl::shard::shard_of;
use bbcrawl::simulator::{RepoSpec, RequestRecord, SimCredential, SimOptions, Simulator};

use crate::util::{
    assert_store_is_truth, bbcrawl, branch_hashes, fresh_store, open_store, serve, spawn_bbcrawl,
    stderr, stdout, store_repos, sync, TOKEN, WS,
};

/// Shards in these tests.
const SHARDS: u32 = 4;
/// Repositories in the simulated workspace.
const REPOS: usize = 40;
/// bbcrawl's default page size (and the simulator's largest).
const PAGE: usize = 100;

/// The access token of shard `i`: each shard has its own credential (and
/// so its own hourly budget at Bitbucket).
fn token(i: u32) -> String {
    format!("shard-{i}-token-5e1f")
}

/// A workspace of 40 repositories of `commits(i)` commits each, and one
/// access token per shard. The simulator's seed is fixed, so the uuids,
/// and with them the split, are the same on every run.
fn workspace(commits: impl Fn(usize) -> usize) -> Simulator {
    // No limit: with one, the simulator announces X-RateLimit-Limit and
    // bbcrawl paces itself to it.
    let sim = Simulator::new(SimOptions {
        requests_per_hour: 0,
        ..SimOptions::default()
    });
    sim.add_workspace(WS);
    for i in 0..SHARDS {
        sim.add_credential(SimCredential::AccessToken {
            token: token(i),
            scopes: vec!["repository".into()],
            workspaces: vec![WS.into()],
        });
    }
    // And the tests' usual token, for an unsharded crawl to compare with.
    sim.add_credential(SimCredential::AccessToken {
        token: TOKEN.into(),
        scopes: vec!["repository".into()],
        workspaces: vec![WS.into()],
    });
    for i in 0..REPOS {
        sim.add_repo(WS, RepoSpec::new(&format!("repo-{i:02}"), commits(i)));
    }
    sim
}

/// The slugs of the repositories shard `i` owns, by the documented hash.
fn owned(sim: &Simulator, i: u32) -> BTreeSet<String> {
    sim.repos(WS)
        .into_iter()
        .filter(|r| shard_of(&r.uuid, SHARDS) == i)
        .map(|r| r.slug)
        .collect()
}

/// The fewest commits requests that fetch `slugs` from nothing: one per
/// page of each default branch.
fn minimum_requests(sim: &Simulator, slugs: &BTreeSet<String>) -> usize {
    slugs
        .iter()
        .map(|s| sim.branch_commits(WS, s).len().div_ceil(PAGE).max(1))
        .sum()
}

/// The environment of shard `i`'s bbcrawl: its shard, its token, its store.
fn shard_env(api_url: &str, store: &Path, i: u32) -> Vec<(String, String)> {
    vec![
        ("BBCRAWL_API_URL".into(), api_url.into()),
        ("BBCRAWL_WORKSPACES".into(), WS.into()),
        ("BITBUCKET_ACCESS_TOKEN".into(), token(i)),
        ("BBCRAWL_STORE".into(), store.to_string_lossy().into_owned()),
        ("BBCRAWL_REQUESTS_PER_HOUR".into(), "1000000".into()),
        ("BBCRAWL_SHARD".into(), format!("{i}/{SHARDS}")),
    ]
}

fn pairs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// `bbcrawl ARGS` as shard `i`, to the end.
async fn as_shard(api_url: &str, store: &Path, i: u32, args: &[&str]) -> std::process::Output {
    let env = shard_env(api_url, store, i);
    bbcrawl(store.parent().unwrap(), args, &pairs(&env)).await
}

/// Commits requests in `log` by credential.
fn commits_requests_by_credential(log: &[RequestRecord]) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for r in log.iter().filter(|r| r.path.contains("/commits/")) {
        *out.entry(r.credential.clone().unwrap_or_default())
            .or_insert(0) += 1;
    }
    out
}

/// Every line of `bbcrawl export --all` of `store`, sorted.
async fn export_lines(store: &Path) -> Vec<String> {
    let o = bbcrawl(
        store.parent().unwrap(),
        &["export", "--all"],
        &[("BBCRAWL_STORE", store.to_str().unwrap())],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let mut lines: Vec<String> = stdout(&o).lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

/// Shard `i`'s store holds exactly its repositories, each with exactly the
/// simulator's default-branch commits, and nothing of another shard.
fn assert_shard_store_is_truth(store: &Path, sim: &Simulator, i: u32) {
    let s = open_store(store);
    let repos = s.repos().unwrap();
    let slugs: BTreeSet<String> = repos.iter().map(|r| r.slug.clone()).collect();
    assert_eq!(
        slugs,
        owned(sim, i),
        "shard {i}: the repositories in its store"
    );
    for repo in &repos {
        assert_eq!(shard_of(&repo.uuid, SHARDS), i, "{}", repo.slug);
        assert_eq!(repo.status, RepoStatus::Ok, "shard {i}: {}", repo.slug);
        assert!(
            repo.walk.is_none(),
            "shard {i}: {} walk unfinished",
            repo.slug
        );
        let stored: Vec<String> = s
            .repo_commits(&repo.workspace, &repo.uuid)
            .map(|c| c.unwrap().hash)
            .collect();
        let unique: HashSet<&String> = stored.iter().collect();
        assert_eq!(unique.len(), stored.len(), "{}: duplicates", repo.slug);
        let truth: HashSet<String> = branch_hashes(sim, WS, &repo.slug).into_iter().collect();
        assert_eq!(
            unique,
            truth.iter().collect(),
            "shard {i}: {} holds other commits than its branch",
            repo.slug
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_shards_with_four_credentials_crawl_every_repository_exactly_once() {
    let sim = workspace(|i| 40 + (i * 97) % 460);
    let server = serve(&sim).await;
    let api = server.api_url();
    let dir = tempfile::tempdir().unwrap();
    let stores: Vec<PathBuf> = (0..SHARDS)
        .map(|i| dir.path().join(format!("shard-{i}")))
        .collect();

    // The four shards at once, as four pods would run.
    let runs = futures::future::join_all(
        (0..SHARDS).map(|i| as_shard(&api, &stores[i as usize], i, &["sync"])),
    )
    .await;
    for (i, o) in runs.iter().enumerate() {
        assert_eq!(
            o.status.code(),
            Some(0),
            "shard {i}: {}{}",
            stdout(o),
            stderr(o)
        );
        let mine = owned(&sim, i as u32).len();
        let line = stdout(o);
        let want = format!(
            "shard {i}/4: {mine} repositories ({} listed for other shards): {mine} ok, 0 empty, 0 failed, 0 deleted, 0 skipped unchanged;",
            REPOS - mine
        );
        assert!(line.starts_with(&want), "shard {i}:\n{line}\nwant {want}");
    }

    // The split: each shard's commits requests are the pages its own
    // repositories need, no more, and about a quarter of all of them.
    let log = sim.requests();
    let by_credential = commits_requests_by_credential(&log);
    let total: usize = by_credential.values().sum();
    let all: BTreeSet<String> = sim.repos(WS).into_iter().map(|r| r.slug).collect();
    assert_eq!(total, minimum_requests(&sim, &all));
    let mut split = Vec::new();
    for i in 0..SHARDS {
        let mine = owned(&sim, i);
        let requests = by_credential.get(&token(i)).copied().unwrap_or(0);
        assert_eq!(requests, minimum_requests(&sim, &mine), "shard {i}");
        let share = requests as f64 / total as f64;
        split.push(format!(
            "shard {i}: {} repositories, {requests} commits requests ({:.1} %)",
            mine.len(),
            share * 100.0
        ));
        // A uniform hash over 40 repositories: a quarter each, give or
        // take; the uuids are fixed, so this is the same split every run.
        assert!((0.10..=0.40).contains(&share), "{split:?}");
        // Every shard read the listing itself (one page of 40).
        let listings = log
            .iter()
            .filter(|r| r.path == format!("/2.0/repositories/{WS}"))
            .filter(|r| r.credential.as_deref() == Some(token(i).as_str()))
            .count();
        assert_eq!(listings, 1, "shard {i}");
    }
    eprintln!("split of {total} commits requests: {}", split.join("; "));

    // No repository in two stores, none missing, each store only its own.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (i, store) in stores.iter().enumerate() {
        assert_shard_store_is_truth(store, &sim, i as u32);
        for r in store_repos(store) {
            if let Some(other) = seen.insert(r.uuid.clone(), i) {
                panic!("{} is in the stores of shards {other} and {i}", r.slug);
            }
        }
    }
    assert_eq!(seen.len(), REPOS);

    // The union of the four exports is, line for line, the export of one
    // unsharded store of the same workspace — which is the simulator's truth.
    let (_whole_dir, whole) = fresh_store();
    let o = sync(&whole, &api, &[], &[]).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_store_is_truth(&whole, &sim);
    let mut union = Vec::new();
    for store in &stores {
        union.extend(export_lines(store).await);
    }
    union.sort();
    let whole_lines = export_lines(&whole).await;
    assert_eq!(union.len(), whole_lines.len());
    assert!(
        union == whole_lines,
        "the shards' exports differ from the whole's"
    );

    // `query repos` of a shard shows its own repositories only.
    let o = as_shard(
        &api,
        &stores[1],
        1,
        &["query", "repos", "--format", "ndjson"],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let listed: BTreeSet<String> = stdout(&o)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["slug"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(listed, owned(&sim, 1));

    // A second pass of each shard: the change gate per shard, so only the
    // listing; another shard's repositories are not new to it.
    sim.clear_requests();
    sim.push(WS, "repo-07", 3);
    let pushed = sim
        .repos(WS)
        .into_iter()
        .find(|r| r.slug == "repo-07")
        .unwrap();
    let pushed_to = shard_of(&pushed.uuid, SHARDS);
    for i in 0..SHARDS {
        let o = as_shard(&api, &stores[i as usize], i, &["sync"]).await;
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let new = if i == pushed_to { 3 } else { 0 };
        assert!(
            stdout(&o).contains(&format!("; {new} new commits;")),
            "shard {i}: {}",
            stdout(&o)
        );
    }
    let by_credential = commits_requests_by_credential(&sim.requests());
    assert_eq!(
        by_credential,
        HashMap::from([(token(pushed_to), 1)]),
        "only the shard of the pushed repository asks for commits"
    );
    assert_shard_store_is_truth(&stores[pushed_to as usize], &sim, pushed_to);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_killed_mid_crawl_leaves_the_others_exact_and_resumes_on_rerun() {
    let sim = workspace(|i| 300 + (i * 211) % 900);
    sim.set_latency(Duration::from_millis(2));
    let server = serve(&sim).await;
    let api = server.api_url();
    let dir = tempfile::tempdir().unwrap();
    let stores: Vec<PathBuf> = (0..SHARDS)
        .map(|i| dir.path().join(format!("shard-{i}")))
        .collect();
    let victim = 0u32;
    let victim_minimum = minimum_requests(&sim, &owned(&sim, victim));

    let mut children: Vec<tokio::process::Child> = (0..SHARDS)
        .map(|i| {
            let log = dir.path().join(format!("shard-{i}.log"));
            spawn_bbcrawl(&["sync"], &shard_env(&api, &stores[i as usize], i), &log)
        })
        .collect();

    // kill -9 the victim a third of the way through its crawl.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let sent = commits_requests_by_credential(&sim.requests())
            .get(&token(victim))
            .copied()
            .unwrap_or(0);
        if sent >= victim_minimum / 3 {
            break;
        }
        assert!(
            children[victim as usize].try_wait().unwrap().is_none(),
            "shard {victim} finished before it could be killed"
        );
        assert!(
            Instant::now() < deadline,
            "shard {victim} sent only {sent} requests"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    children[victim as usize].kill().await.unwrap();
    let killed_at = Instant::now();

    // The others finish, exactly, with no request beyond their minimum.
    for i in (0..SHARDS).filter(|i| *i != victim) {
        let status = tokio::time::timeout(Duration::from_secs(120), children[i as usize].wait())
            .await
            .expect("a shard did not finish")
            .unwrap();
        let log = std::fs::read_to_string(dir.path().join(format!("shard-{i}.log"))).unwrap();
        assert_eq!(status.code(), Some(0), "shard {i}:\n{log}");
        assert_shard_store_is_truth(&stores[i as usize], &sim, i);
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    let log = sim.requests();
    let by_credential = commits_requests_by_credential(&log);
    for i in (0..SHARDS).filter(|i| *i != victim) {
        assert_eq!(
            by_credential.get(&token(i)).copied().unwrap_or(0),
            minimum_requests(&sim, &owned(&sim, i)),
            "shard {i}"
        );
    }
    let killed_run = by_credential[&token(victim)];

    // What the victim left: some walks saved mid-way.
    let victim_store = &stores[victim as usize];
    let saved: BTreeMap<String, u64> = store_repos(victim_store)
        .into_iter()
        .filter_map(|r| Some((r.slug, r.walk?.pages)))
        .filter(|(_, pages)| *pages > 0)
        .collect();
    assert!(
        !saved.is_empty(),
        "the kill left no walk half-done: the test did not test resuming"
    );

    // The rerun resumes: no saved walk starts again from its first page,
    // and together the two runs cost the minimum plus what was in flight.
    sim.clear_requests();
    let o = as_shard(&api, victim_store, victim, &["sync"]).await;
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert_shard_store_is_truth(victim_store, &sim, victim);
    let rerun: Vec<RequestRecord> = sim
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/commits/"))
        .collect();
    for (slug, pages) in &saved {
        let path = format!("/2.0/repositories/{WS}/{slug}/commits/main");
        let from_top = rerun.iter().filter(|r| r.path == path).any(|r| {
            let q = r.query.as_deref().unwrap_or("");
            !q.contains("page=") && !q.contains("exclude=")
        });
        assert!(
            !from_top,
            "{slug} had {pages} pages saved but was walked again from the top"
        );
    }
    // In flight at the kill: a page per repository actor (8) fetched but not
    // stored, and per resumed walk one `exclude=` request for what was
    // pushed meanwhile.
    let in_flight = 8 + saved.len();
    eprintln!(
        "shard {victim} killed after {killed_run} of its {victim_minimum} commits requests ({} ms ago), {} walks saved mid-way; the rerun sent {}",
        killed_at.elapsed().as_millis(),
        saved.len(),
        rerun.len()
    );
    assert!(rerun.len() < victim_minimum, "the rerun started over");
    assert!(
        killed_run + rerun.len() <= victim_minimum + in_flight,
        "{killed_run} + {} requests for a minimum of {victim_minimum}",
        rerun.len()
    );
}

/// A `bbcrawl run` child and its endpoint.
struct RunningShard {
    child: tokio::process::Child,
    addr: String,
}

impl RunningShard {
    /// Starts `bbcrawl run` with `env` and waits for its address file.
    async fn start(store: &Path, env: &[(String, String)]) -> RunningShard {
        let log = store.parent().unwrap().join("run.log");
        let mut child = spawn_bbcrawl(&["run"], env, &log);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(store.join("daemon.json")) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                    let addr = v["addr"].as_str().unwrap().to_owned();
                    return RunningShard { child, addr };
                }
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "bbcrawl run exited ({status}): {}",
                    std::fs::read_to_string(&log).unwrap()
                );
            }
            assert!(Instant::now() < deadline, "no daemon.json within 30 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn get(&self, path: &str) -> String {
        reqwest::get(format!("http://{}{path}", self.addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statefulset_pod_takes_its_shard_from_kubernetes_and_reports_it() {
    let sim = workspace(|i| 5 + i);
    let server = serve(&sim).await;
    let (_dir, store) = fresh_store();
    let index = 2u32;
    // What config/kubernetes/statefulset.yaml gives each pod.
    let mut env = shard_env(&server.api_url(), &store, index);
    env.retain(|(k, _)| k != "BBCRAWL_SHARD");
    env.extend([
        ("BBCRAWL_SHARDS".to_owned(), SHARDS.to_string()),
        ("BBCRAWL_SHARD_INDEX".to_owned(), index.to_string()),
        ("BBCRAWL_LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
        ("BBCRAWL_INTERVAL_SECONDS".to_owned(), "3600".to_owned()),
    ]);
    let daemon = RunningShard::start(&store, &env).await;
    let mine = owned(&sim, index);

    let deadline = Instant::now() + Duration::from_secs(30);
    let health = loop {
        let h: serde_json::Value = serde_json::from_str(&daemon.get("/healthz").await).unwrap();
        if h["status"] == "ok" {
            break h;
        }
        assert!(Instant::now() < deadline, "{h}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(health["last_pass"]["shard"], "2/4", "{health}");
    assert_eq!(
        health["last_pass"]["other_shards"],
        REPOS - mine.len(),
        "{health}"
    );
    assert_eq!(health["last_pass"]["ok"], mine.len(), "{health}");

    let metrics = daemon.get("/metrics").await;
    assert!(
        metrics.contains("bbcrawl_shard_info{shard=\"2\",shards=\"4\"} 1\n"),
        "{metrics}"
    );
    assert_eq!(
        metrics.matches("bbcrawl_shard_info{").count(),
        1,
        "{metrics}"
    );
    // The per-state gauges count this shard's repositories only.
    let repos: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("bbcrawl_repos{state="))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(repos, mine.len() as f64, "{metrics}");
    let ok = metrics
        .lines()
        .find(|l| l.starts_with("bbcrawl_repos{state=\"ok\"}"))
        .unwrap();
    assert_eq!(ok, format!("bbcrawl_repos{{state=\"ok\"}} {}", mine.len()));

    // The query API (and so `query repos` while it runs) shows its own.
    let api: Vec<serde_json::Value> =
        serde_json::from_str(&daemon.get("/api/v1/repos?format=json").await).unwrap();
    let slugs: BTreeSet<String> = api
        .iter()
        .map(|r| r["slug"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(slugs, mine);
    drop(daemon.child);
}

#[tokio::test]
async fn a_bad_shard_is_a_configuration_error_naming_where_it_was_set() {
    let (dir, store) = fresh_store();
    let base = [
        ("BBCRAWL_API_URL", "http://127.0.0.1:9"),
        ("BBCRAWL_WORKSPACES", WS),
        ("BITBUCKET_ACCESS_TOKEN", "t"),
        ("BBCRAWL_STORE", store.to_str().unwrap()),
    ];
    // Arguments, more environment, and the start of the error.
    type Case = (
        &'static [&'static str],
        &'static [(&'static str, &'static str)],
        &'static str,
    );
    let cases: [Case; 3] = [
        (
            &["sync", "--shard", "4/4"],
            &[],
            "invalid value for `shard` (from --shard): the shard index must be below the number of shards, 4",
        ),
        (
            &["run"],
            &[("BBCRAWL_SHARDS", "3")],
            "invalid value for `shard` (from BBCRAWL_SHARDS): BBCRAWL_SHARDS is set but no shard index is",
        ),
        (
            &["sync"],
            &[("BBCRAWL_SHARD", "two of four")],
            "invalid value for `shard` (from BBCRAWL_SHARD): must be I/N",
        ),
    ];
    for (args, extra, want) in cases {
        let mut env = base.to_vec();
        env.extend_from_slice(extra);
        let o = bbcrawl(dir.path(), args, &env).await;
        assert_eq!(
            o.status.code(),
            Some(2),
            "{args:?} {extra:?}: {}",
            stderr(&o)
        );
        assert!(
            stderr(&o).contains(want),
            "{args:?} {extra:?}: {}",
            stderr(&o)
        );
        assert!(!store.exists(), "a refused configuration created the store");
    }
}

/// A manifest of `config/kubernetes/` as JSON.
fn manifest(name: &str) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config/kubernetes")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The Kubernetes manifests and bbcrawl agree: the ConfigMap's bbcrawl.toml,
/// with the environment the StatefulSet gives pod 2, loads as shard 2 of
/// `replicas` with that pod's credential file, and the daemon accepts its
/// endpoint; ports, paths and the hardening are where they should be.
/// (`.ci/run` checks the manifests against Kubernetes' schemas.)
#[test]
fn kubernetes_manifests_run_one_shard_per_replica() {
    let sts = manifest("statefulset.yaml");
    let replicas = sts["spec"]["replicas"].as_u64().unwrap();
    let pod = &sts["spec"]["template"]["spec"];
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let env: HashMap<&str, &serde_json::Value> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e))
        .collect();
    assert_eq!(env["BBCRAWL_SHARDS"]["value"], replicas.to_string());
    assert_eq!(
        env["BBCRAWL_SHARD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.labels['apps.kubernetes.io/pod-index']"
    );

    // The pod's environment as the kubelet makes it for pod 2, with the
    // Secret mounted where the StatefulSet says.
    let dir = tempfile::tempdir().unwrap();
    let mounts: HashMap<&str, &str> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap(),
                m["mountPath"].as_str().unwrap(),
            )
        })
        .collect();
    let local = |path: &str| dir.path().join(path.trim_start_matches('/'));
    let secret_dir = local(mounts["credentials"]);
    std::fs::create_dir_all(&secret_dir).unwrap();
    std::fs::write(secret_dir.join("access-token-2"), "token-of-shard-2\n").unwrap();
    let token_file = env["BITBUCKET_ACCESS_TOKEN_FILE"]["value"]
        .as_str()
        .unwrap()
        .replace("$(BBCRAWL_SHARD_INDEX)", "2");
    let config_file = env["BBCRAWL_CONFIG"]["value"].as_str().unwrap();
    assert!(config_file.starts_with(mounts["config"]), "{config_file}");
    let cm = manifest("configmap.yaml");
    let file_name = Path::new(config_file)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    let toml = cm["data"][file_name].as_str().unwrap();
    std::fs::create_dir_all(local(mounts["config"])).unwrap();
    std::fs::write(local(config_file), toml).unwrap();
    let pod_env: HashMap<String, String> = HashMap::from([
        (
            "BBCRAWL_CONFIG".into(),
            local(config_file).display().to_string(),
        ),
        ("BBCRAWL_SHARDS".into(), replicas.to_string()),
        ("BBCRAWL_SHARD_INDEX".into(), "2".into()),
        (
            "BITBUCKET_ACCESS_TOKEN_FILE".into(),
            local(&token_file).display().to_string(),
        ),
    ]);
    let cfg = bbcrawl::config::Config::load_with_env(
        &bbcrawl::config::Overrides::default(),
        &|k: &str| pod_env.get(k).cloned(),
    )
    .unwrap();
    assert_eq!(
        cfg.shard.map(|s| s.to_string()),
        Some(format!("2/{replicas}"))
    );
    assert_eq!(cfg.credentials.len(), 1);
    assert!(
        cfg.store.starts_with(mounts["data"]) && cfg.store != Path::new(mounts["data"]),
        "the store is a directory on the volume: {}",
        cfg.store.display()
    );
    assert!(!cfg.api, "the query API stays off the network");
    bbcrawl::web::Endpoint::prepare(&bbcrawl::web::EndpointConfig {
        listen: cfg.listen,
        web_config_file: cfg.web_config_file.as_deref(),
        insecure_listen: cfg.insecure_listen,
        api: cfg.api,
        health_without_auth: cfg.health_without_auth,
    })
    .expect("the daemon accepts the endpoint");

    // Scraped where it listens.
    let port = cfg.listen.port();
    assert!(cfg.listen.ip().is_unspecified());
    assert_eq!(c["ports"][0]["containerPort"], port);
    let svc = manifest("service.yaml");
    assert_eq!(svc["spec"]["clusterIP"], "None");
    assert_eq!(svc["spec"]["ports"][0]["port"], port);
    for annotations in [
        &sts["spec"]["template"]["metadata"]["annotations"],
        &svc["metadata"]["annotations"],
    ] {
        assert_eq!(annotations["prometheus.io/scrape"], "true");
        assert_eq!(annotations["prometheus.io/port"], port.to_string());
        assert_eq!(annotations["prometheus.io/path"], "/metrics");
    }
    let np = manifest("networkpolicy.yaml");
    assert_eq!(np["spec"]["ingress"][0]["ports"][0]["port"], port);

    // One volume per replica, and a hardened pod.
    assert_eq!(
        sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
        "data"
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(pod["automountServiceAccountToken"], false);
    let secret = manifest("secret.yaml");
    for i in 0..replicas {
        assert!(
            secret["stringData"][format!("access-token-{i}")].is_string(),
            "no credential for shard {i}"
        );
    }
}
