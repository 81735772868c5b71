//! The change feed (issue 16 §1) through the real binary: every change in
//! seq order, the cursor contract, the daemon's long poll, and a loader
//! (Python and SQLite, as a warehouse job would be) killed at random
//! moments while the daemon is killed too, ending with its table equal to
//! the store and every change loaded once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bbcrawl::simulator::RepoSpec;
use rand::{Rng, SeedableRng};

use crate::util::*;

/// `bbcrawl --store STORE ARGS…`: exit 0, stdout.
async fn run(store: &Path, args: &[&str]) -> String {
    let s = store.to_str().unwrap();
    let mut all = vec!["--store", s];
    all.extend_from_slice(args);
    let o = bbcrawl(store.parent().unwrap(), &all, &[]).await;
    assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
    stdout(&o)
}

/// The change lines of `text`, parsed.
fn lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// A table as a loader keeps it: (repository uuid, hash) → the record,
/// changes applied in order as upserts; a rename rewrites the slug of the
/// repository's records.
fn apply(table: &mut BTreeMap<(String, String), serde_json::Value>, changes: &[serde_json::Value]) {
    for c in changes {
        assert_eq!(c["feed"], 1, "{c}");
        let kind = c["kind"].as_str().unwrap();
        if let Some(rec) = c.get("commit") {
            let key = (
                rec["repo_uuid"].as_str().unwrap().to_owned(),
                rec["hash"].as_str().unwrap().to_owned(),
            );
            table.insert(key, rec.clone());
        } else if kind == "repo_renamed" {
            let uuid = c["repository"]["uuid"].as_str().unwrap();
            for ((u, _), rec) in table.iter_mut() {
                if u == uuid {
                    rec["repo"] = c["repository"]["slug"].clone();
                }
            }
        }
    }
}

/// The store's `export --all` as the same table.
async fn store_table(store: &Path) -> BTreeMap<(String, String), serde_json::Value> {
    lines(&run(store, &["export", "--all", "--format", "ndjson"]).await)
        .into_iter()
        .map(|r| {
            (
                (
                    r["repo_uuid"].as_str().unwrap().to_owned(),
                    r["hash"].as_str().unwrap().to_owned(),
                ),
                r,
            )
        })
        .collect()
}

/// Every kind of change, in seq order from 1 without a gap; `--after`,
/// `--limit` and `--cursor` give the same lines in slices; applied as
/// upserts, the feed is the store's `export --all`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_carries_every_change_in_order() {
    let sim = world(0);
    for (slug, n) in [("web", 150), ("api", 60), ("tools", 30), ("old", 20)] {
        sim.add_repo(WS, RepoSpec::new(slug, n));
    }
    let (server, _dir, store) = synced(&sim).await;
    sim.push(WS, "web", 5);
    sim.force_push(WS, "api", 3, 2);
    sim.rename_repo(WS, "tools", "dev-tools");
    sim.rename_default_branch(WS, "old", "trunk");
    let o = sync(&store, &server.api_url(), &[], &[]).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    sim.delete_repo(WS, "old");
    let o = sync(&store, &server.api_url(), &[], &[]).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    sim.restore_repo(WS, "old");
    let o = sync(&store, &server.api_url(), &[], &[]).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    let all = run(&store, &["export", "--changes"]).await;
    let changes = lines(&all);
    let seqs: Vec<u64> = changes.iter().map(|c| c["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &changes {
        *kinds.entry(c["kind"].as_str().unwrap()).or_default() += 1;
    }
    let table = store_table(&store).await;
    assert_eq!(kinds["commit_stored"], table.len(), "{kinds:?}");
    assert_eq!(kinds["commit_unreachable"], 3, "{kinds:?}");
    assert_eq!(kinds["repo_renamed"], 1, "{kinds:?}");
    assert_eq!(kinds["repo_deleted"], 1, "{kinds:?}");
    assert_eq!(kinds["repo_restored"], 1, "{kinds:?}");
    assert_eq!(kinds["repo_default_branch_changed"], 1, "{kinds:?}");
    let renamed = changes
        .iter()
        .find(|c| c["kind"] == "repo_renamed")
        .unwrap();
    assert_eq!(renamed["from"], "tools");
    assert_eq!(renamed["to"], "dev-tools");
    assert_eq!(renamed["repository"]["slug"], "dev-tools");
    let mut loaded = BTreeMap::new();
    apply(&mut loaded, &changes);
    assert_eq!(loaded, table, "the feed applied in order is the store");

    // --after: the suffix; --limit: a prefix of it.
    let after = run(&store, &["export", "--changes", "--after", "100"]).await;
    assert_eq!(
        after.as_bytes(),
        &all.as_bytes()[all.match_indices('\n').nth(99).unwrap().0 + 1..]
    );
    let limited = run(
        &store,
        &["export", "--changes", "--after", "100", "--limit", "7"],
    )
    .await;
    assert_eq!(lines(&limited), changes[100..107]);
    // --cursor in batches: the same lines, once each; the cursor holds the
    // last seq; a run with nothing new leaves it.
    let cursor = store.parent().unwrap().join("cursor");
    let cur = cursor.to_str().unwrap();
    let mut batches = String::new();
    loop {
        let batch = run(
            &store,
            &["export", "--changes", "--cursor", cur, "--limit", "97"],
        )
        .await;
        if batch.is_empty() {
            break;
        }
        batches += &batch;
    }
    assert_eq!(batches, all);
    assert_eq!(
        std::fs::read_to_string(&cursor).unwrap(),
        format!("{}\n", seqs.len())
    );
    // Bad uses: a cursor that is not a number; --after with --cursor.
    std::fs::write(&cursor, "nonsense\n").unwrap();
    let s = store.to_str().unwrap();
    let o = bbcrawl(
        store.parent().unwrap(),
        &["--store", s, "export", "--changes", "--cursor", cur],
        &[],
    )
    .await;
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("does not hold a sequence number"),
        "{}",
        stderr(&o)
    );
    let o = bbcrawl(
        store.parent().unwrap(),
        &[
            "--store",
            s,
            "export",
            "--changes",
            "--cursor",
            cur,
            "--after",
            "3",
        ],
        &[],
    )
    .await;
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

/// A running `bbcrawl run` (killed when dropped).
struct Daemon {
    child: tokio::process::Child,
    log: PathBuf,
}

impl Daemon {
    async fn start(store: &Path, api_url: &str) -> Daemon {
        let dir = store.parent().unwrap();
        let log = dir.join(format!("daemon-{}.log", rand::random::<u32>()));
        let _ = std::fs::remove_file(store.join("daemon.json"));
        let (mut cmd, _) = run_command(store, api_url, "1", &[]);
        // Each daemon of a test keeps its own log.
        let child = cmd
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Daemon { child, log }
    }

    /// Its address, once it has written it.
    async fn addr(&mut self, store: &Path) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(text) = std::fs::read_to_string(store.join("daemon.json")) {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                if v["pid"].as_u64() == self.child.id().map(u64::from) {
                    return v["addr"].as_str().unwrap().to_owned();
                }
            }
            if let Ok(Some(s)) = self.child.try_wait() {
                panic!(
                    "bbcrawl run exited {s}: {}",
                    std::fs::read_to_string(&self.log).unwrap()
                );
            }
            assert!(Instant::now() < deadline, "no daemon.json");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// `GET /api/v1/changes?after=HEAD&wait=30` answers as soon as a pushed
/// commit is stored (the daemon's pass every second), with exactly the
/// pushed commits; with nothing new, `wait=1` answers empty after a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_long_polls_for_changes() {
    let sim = world(0);
    sim.add_repo(WS, RepoSpec::new("web", 40));
    let (server, _dir, store) = synced(&sim).await;
    let head = lines(&run(&store, &["export", "--changes"]).await).len();
    let mut daemon = Daemon::start(&store, &server.api_url()).await;
    let addr = daemon.addr(&store).await;
    let http = reqwest::Client::new();
    let t = Instant::now();
    let empty = http
        .get(format!("http://{addr}/api/v1/changes?after={head}&wait=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(empty.status(), 200);
    assert_eq!(empty.text().await.unwrap(), "");
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    let poll = tokio::spawn({
        let url = format!("http://{addr}/api/v1/changes?after={head}&wait=30");
        async move {
            let t = Instant::now();
            let body = reqwest::get(url).await.unwrap().text().await.unwrap();
            (body, t.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pushed: BTreeSet<String> = sim.push(WS, "web", 4).into_iter().collect();
    let (body, waited) = poll.await.unwrap();
    let got: BTreeSet<String> = lines(&body)
        .iter()
        .map(|c| {
            assert_eq!(c["kind"], "commit_stored");
            c["commit"]["hash"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(got, pushed, "{body}");
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    eprintln!("long poll answered {waited:?} after it began (push 0.3 s in, a pass every 1 s)");
    daemon.child.kill().await.unwrap();
}

/// The loader: each round, unless a batch is waiting from a round that was
/// killed, `bbcrawl export --changes --cursor cursor --output batch --limit
/// 300`; then, in one SQLite transaction, the batch's changes with a seq
/// above the loaded high-water mark are applied (commit records upserted,
/// a rename rewriting the repository's slug) and recorded in `seen` (a
/// primary key: a change loaded twice fails the transaction), with the new
/// mark; then the batch file is removed. Exits after `rounds` rounds, or
/// with `drain=HEAD` once it has loaded up to seq HEAD (a round that finds
/// nothing before that is said on stderr, with the cursor, and retried).
const LOADER: &str = r#"
import json, os, sqlite3, subprocess, sys, time
bbcrawl, store, work, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
drain = int(sys.argv[5][6:]) if sys.argv[5].startswith("drain=") else None
db = sqlite3.connect(os.path.join(work, "warehouse.db"))
db.execute("create table if not exists commits (repo_uuid text, hash text, record text, primary key (repo_uuid, hash))")
db.execute("create table if not exists seen (seq integer primary key)")
db.execute("create table if not exists mark (id integer primary key check (id = 0), seq integer)")
db.commit()
batch, cursor = os.path.join(work, "batch.ndjson"), os.path.join(work, "cursor")
for _ in range(rounds):
    if not os.path.exists(batch):
        r = subprocess.run([bbcrawl, "--store", store, "export", "--changes", "--cursor", cursor,
                            "--output", batch, "--limit", "300"], capture_output=True, text=True)
        if r.returncode != 0:
            print("export failed:", r.returncode, r.stderr, file=sys.stderr)
            time.sleep(0.2)
            continue
    with open(batch) as f:
        lines = [json.loads(l) for l in f if l.strip()]
    row = db.execute("select seq from mark where id = 0").fetchone()
    mark = row[0] if row else 0
    with db:
        for c in lines:
            if c["seq"] <= mark:
                continue
            db.execute("insert into seen (seq) values (?)", (c["seq"],))
            if "commit" in c:
                rec = c["commit"]
                db.execute("insert or replace into commits values (?, ?, ?)",
                           (rec["repo_uuid"], rec["hash"], json.dumps(rec)))
            elif c["kind"] == "repo_renamed":
                uuid, slug = c["repository"]["uuid"], c["repository"]["slug"]
                for (h, text) in db.execute("select hash, record from commits where repo_uuid = ?", (uuid,)).fetchall():
                    rec = json.loads(text)
                    rec["repo"] = slug
                    db.execute("update commits set record = ? where repo_uuid = ? and hash = ?",
                               (json.dumps(rec), uuid, h))
            mark = c["seq"]
        db.execute("insert or replace into mark values (0, ?)", (mark,))
    os.remove(batch)
    if drain is not None:
        if mark >= drain:
            break
        if not lines:
            print("empty batch before the head: mark", mark, "cursor",
                  open(cursor).read().strip() if os.path.exists(cursor) else None, file=sys.stderr)
            time.sleep(0.2)
    time.sleep(0.05)
"#;

/// The acceptance loop: a loader (`LOADER`) running in rounds while the
/// simulator changes (pushes, force pushes, renames, deletions and
/// restorations) and the daemon crawls every second; both the daemon and
/// the loader are killed with SIGKILL at random moments and started again.
/// Then the changes stop, a `sync` settles the store, the loader drains
/// the feed: its table equals the store's `export --all`, and it loaded
/// every seq from 1 to the last exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loader_killed_at_random_loads_every_change_once() {
    if std::process::Command::new("python3")
        .arg("-c")
        .arg("import sqlite3")
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        panic!("python3 with sqlite3 is needed (Debian: python3)");
    }
    let seconds: u64 = std::env::var("BBCRAWL_FEED_SOAK_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let sim = world(0);
    let mut slugs: Vec<String> = (0..8).map(|i| format!("svc-{i}")).collect();
    for s in &slugs {
        sim.add_repo(WS, RepoSpec::new(s, 120));
    }
    let (server, dir, store) = synced(&sim).await;
    let work = dir.path().join("loader");
    std::fs::create_dir_all(&work).unwrap();
    let script = work.join("loader.py");
    std::fs::write(&script, LOADER).unwrap();
    let loader = |rounds: u32, drain: Option<u64>| {
        tokio::process::Command::new("python3")
            .arg(&script)
            .arg(env!("CARGO_BIN_EXE_bbcrawl"))
            .arg(&store)
            .arg(&work)
            .arg(rounds.to_string())
            .arg(drain.map_or("loop".to_owned(), |h| format!("drain={h}")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(16);
    let mut daemon = Daemon::start(&store, &server.api_url()).await;
    let mut load = loader(1_000_000, None);
    let (mut daemon_kills, mut loader_kills, mut changes) = (0, 0, 0);
    let mut deleted: Vec<String> = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(100..400))).await;
        let slug = slugs[rng.gen_range(0..slugs.len())].clone();
        match rng.gen_range(0..20) {
            0..=11 => {
                sim.push(WS, &slug, rng.gen_range(1..30));
            }
            12..=13 => {
                sim.force_push(WS, &slug, rng.gen_range(1..4), rng.gen_range(1..4));
            }
            14 => {
                let new = format!("{slug}-r{changes}");
                sim.rename_repo(WS, &slug, &new);
                slugs.retain(|s| *s != slug);
                slugs.push(new);
            }
            15 if slugs.len() > 4 => {
                sim.delete_repo(WS, &slug);
                slugs.retain(|s| *s != slug);
                deleted.push(slug);
            }
            16 if !deleted.is_empty() => {
                let back = deleted.remove(0);
                sim.restore_repo(WS, &back);
                slugs.push(back);
            }
            17 => {
                // (It may have exited already: a killed loader's `export`
                // held the store when it started.)
                let _ = daemon.child.start_kill();
                let _ = daemon.child.wait().await;
                daemon = Daemon::start(&store, &server.api_url()).await;
                daemon_kills += 1;
            }
            18 => {
                let _ = load.start_kill();
                let _ = load.wait().await;
                load = loader(1_000_000, None);
                loader_kills += 1;
            }
            _ => {}
        }
        changes += 1;
    }
    let _ = load.start_kill();
    let _ = load.wait().await;
    let _ = daemon.child.start_kill();
    let _ = daemon.child.wait().await;
    // A deleted repository's commits stay in the store: bring them back
    // so that the store can be compared with the simulator's branches.
    for slug in deleted {
        sim.restore_repo(WS, &slug);
    }
    // An `export` the killed loader had started may still hold the store
    // for a moment (a SIGKILL does not reach the loader's children).
    let deadline = Instant::now() + Duration::from_secs(30);
    let o = loop {
        let o = sync(&store, &server.api_url(), &[], &[]).await;
        if o.status.code() != Some(7) || Instant::now() > deadline {
            break o;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let unreachable = assert_reachable_is_truth(&store, &sim);
    let head = lines(&run(&store, &["export", "--changes"]).await).len() as u64;
    // The loader drains to the head, within 300 rounds.
    let status = loader(300, Some(head)).wait().await.unwrap();
    assert!(status.success());

    let db = work.join("warehouse.db");
    let query = |sql: &str| {
        let o = std::process::Command::new("python3")
            .arg("-c")
            .arg(format!(
                "import sqlite3, sys\nfor row in sqlite3.connect(sys.argv[1]).execute(\"{sql}\"): print(row[0])"
            ))
            .arg(&db)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let seen: Vec<u64> = query("select seq from seen order by seq")
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(
        seen,
        (1..=head).collect::<Vec<_>>(),
        "every change loaded once"
    );
    let mut loaded: BTreeMap<(String, String), serde_json::Value> = BTreeMap::new();
    for text in query("select record from commits").lines() {
        let r: serde_json::Value = serde_json::from_str(text).unwrap();
        loaded.insert(
            (
                r["repo_uuid"].as_str().unwrap().to_owned(),
                r["hash"].as_str().unwrap().to_owned(),
            ),
            r,
        );
    }
    let table = store_table(&store).await;
    assert_eq!(loaded.len(), table.len());
    assert!(loaded == table, "the loader's table differs from the store");
    eprintln!(
        "{seconds} s: {changes} simulator steps, {daemon_kills} daemon kills, {loader_kills} loader kills; {head} changes loaded once; {} commits ({unreachable} unreachable)",
        table.len()
    );
}
