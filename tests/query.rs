//! `query`, `show` and `export` through the real binary over a store filled by `sync`.
//!
//! One store is crawled once per test binary (two workspaces, a fork and a
//! force push); every test works on its own copy of it, because sled lets
//! only one process open a store at a time.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Output;

use bbcrawl::record::RepoState;
use bbcrawl::record::{Author, CommitRecord, Committer};
use bbcrawl::simulator::{RepoSpec, SimCommit, SimCredential};
use bbcrawl::store::Store;
use chrono::{DateTime, Duration, FixedOffset, Utc};
use tokio::sync::OnceCell;

use crate::util::*;

const WS2: &str = "beta";
const TOKEN2: &str = "tok-beta-secret";

/// A commit as the simulator says it is, with where it lives.
#[derive(Clone, Debug)]
struct Truth {
    ws: String,
    repo: String,
    commit: SimCommit,
    reachable: bool,
}

impl Truth {
    fn at(&self) -> DateTime<Utc> {
        self.commit.date.with_timezone(&Utc)
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: PathBuf,
    truth: Vec<Truth>,
}

static FIXTURE: OnceCell<Fixture> = OnceCell::const_new();

async fn build() -> Fixture {
    let sim = world(0);
    sim.add_repo(WS, RepoSpec::new("svc", 300));
    sim.add_repo(WS, RepoSpec::new("web", 250));
    let mut tools = RepoSpec::new("tools", 120);
    tools.mainbranch = Some("release/2024".into());
    sim.add_repo(WS, tools);
    sim.fork_repo(WS, "svc", "svc-fork").unwrap();
    sim.add_workspace(WS2);
    sim.add_credential(SimCredential::AccessToken {
        token: TOKEN2.into(),
        scopes: vec!["repository".into()],
        workspaces: vec![WS2.into()],
    });
    sim.add_repo(WS2, RepoSpec::new("svc", 200));
    let (server, dir, store) = synced(&sim).await;
    let o = sync(
        &store,
        &server.api_url(),
        &["--workspace", WS2],
        &[("BITBUCKET_ACCESS_TOKEN", TOKEN2)],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));

    // A force push on `web` leaves unreachable commits behind.
    let before = branch_truth(&sim, WS);
    sim.force_push(WS, "web", 5, 3);
    let o = sync(&store, &server.api_url(), &[], &[]).await;
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));

    let mut truth = Vec::new();
    for ws in [WS, WS2] {
        let now = branch_truth(&sim, ws);
        for (repo, commits) in &now {
            let live: HashSet<&str> = commits.iter().map(|c| c.hash.as_str()).collect();
            for c in commits {
                truth.push(Truth {
                    ws: ws.into(),
                    repo: repo.clone(),
                    commit: c.clone(),
                    reachable: true,
                });
            }
            if ws == WS {
                for c in &before[repo] {
                    if !live.contains(c.hash.as_str()) {
                        truth.push(Truth {
                            ws: ws.into(),
                            repo: repo.clone(),
                            commit: c.clone(),
                            reachable: false,
                        });
                    }
                }
            }
        }
    }
    assert!(truth.iter().filter(|t| !t.reachable).count() >= 5);
    Fixture {
        _dir: dir,
        store,
        truth,
    }
}

async fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(build).await
}

/// Copies a directory tree, modes included (like `cp -a`: the store is
/// owner-only, and a copy open to others would be warned about).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    std::fs::set_permissions(to, std::fs::metadata(from).unwrap().permissions()).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// A private copy of the crawled store.
struct Copy {
    dir: tempfile::TempDir,
    store: PathBuf,
}

async fn copy() -> (Copy, &'static [Truth]) {
    let f = fixture().await;
    let (dir, store) = fresh_store();
    copy_dir(&f.store, &store);
    (Copy { dir, store }, &f.truth)
}

impl Copy {
    async fn run(&self, args: &[&str]) -> Output {
        self.run_env(args, &[]).await
    }

    async fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let store = self.store.to_string_lossy().into_owned();
        let mut all = vec!["--store", store.as_str()];
        all.extend_from_slice(args);
        bbcrawl(self.dir.path(), &all, env).await
    }

    /// Runs and expects exit 0 with nothing on stderr; returns stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args).await;
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        assert_eq!(stderr(&o), "", "{args:?}");
        stdout(&o)
    }

    async fn records(&self, args: &[&str]) -> Vec<CommitRecord> {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--format", "ndjson"]);
        parse_ndjson(&self.ok(&all).await)
    }
}

/// The filters of `query commits`, applied to the truth.
#[derive(Default, Clone)]
struct Want<'a> {
    ws: Option<&'a str>,
    repos: Vec<&'a str>,
    author: Option<&'a str>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    grep: Option<&'a str>,
    committer: Option<&'a str>,
    all: bool,
    limit: Option<usize>,
}

type Key = (Reverse<DateTime<Utc>>, String, String, String);

fn key(at: DateTime<Utc>, hash: &str, ws: &str, repo: &str) -> Key {
    (Reverse(at), hash.into(), ws.into(), repo.into())
}

fn expect(truth: &[Truth], w: &Want) -> Vec<Key> {
    let mut v: Vec<Key> = truth
        .iter()
        .filter(|t| w.all || t.reachable)
        .filter(|t| w.ws.is_none_or(|ws| t.ws == ws))
        .filter(|t| w.repos.is_empty() || w.repos.contains(&t.repo.as_str()))
        .filter(|t| {
            w.author.is_none_or(|a| {
                let a = a.to_lowercase();
                t.commit.author_raw.to_lowercase().contains(&a)
                    || t.commit
                        .author_user
                        .as_ref()
                        .and_then(|u| u.display_name.as_ref())
                        .is_some_and(|d| d.to_lowercase().contains(&a))
            })
        })
        .filter(|t| w.since.is_none_or(|s| t.at() >= s))
        .filter(|t| w.until.is_none_or(|u| t.at() < u))
        .filter(|t| {
            w.grep
                .is_none_or(|g| t.commit.message.to_lowercase().contains(&g.to_lowercase()))
        })
        .filter(|t| {
            w.committer.is_none_or(|x| {
                t.commit
                    .committer_raw
                    .as_ref()
                    .is_some_and(|c| c.to_lowercase().contains(&x.to_lowercase()))
            })
        })
        .map(|t| key(t.at(), &t.commit.hash, &t.ws, &t.repo))
        .collect();
    v.sort();
    if let Some(n) = w.limit {
        v.truncate(n);
    }
    v
}

fn keys_of(records: &[CommitRecord]) -> Vec<Key> {
    records
        .iter()
        .map(|r| key(r.date.with_timezone(&Utc), &r.hash, &r.workspace, &r.repo))
        .collect()
}

/// The printed order is newest first, then by hash; the repository of two
/// records of one commit (forks) may be in either order.
fn assert_matches(got: &[CommitRecord], want: &[Key], what: &str) {
    let got = keys_of(got);
    let instants = |v: &[Key]| -> Vec<(Reverse<DateTime<Utc>>, String)> {
        v.iter().map(|k| (k.0, k.1.clone())).collect()
    };
    assert_eq!(got.len(), want.len(), "{what}: number of commits");
    assert_eq!(instants(&got), instants(want), "{what}: order");
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(sorted, want, "{what}: commits");
}

fn args_for(w: &Want) -> Vec<String> {
    let mut a: Vec<String> = vec!["query".into(), "commits".into()];
    if let Some(ws) = w.ws {
        a.extend(["--workspace".into(), ws.into()]);
    }
    for r in &w.repos {
        a.extend(["--repo".into(), r.to_string()]);
    }
    if let Some(x) = w.author {
        a.extend(["--author".into(), x.into()]);
    }
    if let Some(x) = w.since {
        a.extend(["--since".into(), x.to_rfc3339()]);
    }
    if let Some(x) = w.until {
        a.extend(["--until".into(), x.to_rfc3339()]);
    }
    if let Some(x) = w.grep {
        a.extend(["--grep".into(), x.into()]);
    }
    if let Some(x) = w.committer {
        a.extend(["--committer".into(), x.into()]);
    }
    if w.all {
        a.push("--all".into());
    }
    if let Some(n) = w.limit {
        a.extend(["--limit".into(), n.to_string()]);
    }
    a
}

async fn check(c: &Copy, truth: &[Truth], w: Want<'_>, what: &str) -> Vec<CommitRecord> {
    let args = args_for(&w);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let got = c.records(&args).await;
    let want = expect(truth, &w);
    assert_matches(&got, &want, what);
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_filter_returns_exactly_what_the_truth_predicts() {
    let (c, truth) = copy().await;
    let all = check(&c, truth, Want::default(), "no filter").await;
    assert!(all.len() > 900, "{}", all.len());
    assert!(all.iter().all(|r| r.reachable));

    let svc = check(
        &c,
        truth,
        Want {
            repos: vec!["svc"],
            ..Want::default()
        },
        "--repo svc",
    )
    .await;
    assert!(svc.iter().any(|r| r.workspace == WS2) && svc.iter().any(|r| r.workspace == WS));
    check(
        &c,
        truth,
        Want {
            repos: vec!["web", "tools"],
            ..Want::default()
        },
        "two repos",
    )
    .await;
    let beta = check(
        &c,
        truth,
        Want {
            ws: Some(WS2),
            ..Want::default()
        },
        "--workspace",
    )
    .await;
    assert!(!beta.is_empty());
    check(
        &c,
        truth,
        Want {
            ws: Some(WS),
            repos: vec!["svc"],
            ..Want::default()
        },
        "--workspace --repo",
    )
    .await;
    check(
        &c,
        truth,
        Want {
            repos: vec!["nope"],
            ..Want::default()
        },
        "unknown repo",
    )
    .await;

    // --author: a substring of the raw identity, in another case.
    let raw = check(
        &c,
        truth,
        Want {
            author: Some("RAJ.PATEL@Gmail"),
            ..Want::default()
        },
        "--author raw",
    )
    .await;
    assert!(!raw.is_empty());
    // … and of a display name that is not in the raw identity.
    let by_display = check(
        &c,
        truth,
        Want {
            author: Some("søren k."),
            ..Want::default()
        },
        "--author display",
    )
    .await;
    assert!(!by_display.is_empty());
    assert!(by_display.iter().all(|r| !r
        .author
        .raw
        .as_deref()
        .unwrap_or("")
        .to_lowercase()
        .contains("søren k.")));
    check(
        &c,
        truth,
        Want {
            author: Some("JOSÉ N."),
            ..Want::default()
        },
        "--author display upper",
    )
    .await;

    // --grep, case-insensitive, with non-ASCII.
    let g = check(
        &c,
        truth,
        Want {
            grep: Some("GRÜSSE"),
            ..Want::default()
        },
        "--grep no match",
    )
    .await;
    let _ = g;
    let g = check(
        &c,
        truth,
        Want {
            grep: Some("grüße"),
            ..Want::default()
        },
        "--grep",
    )
    .await;
    assert!(!g.is_empty());
    check(
        &c,
        truth,
        Want {
            grep: Some("REVERT \""),
            ..Want::default()
        },
        "--grep upper",
    )
    .await;

    // --since inclusive, --until exclusive: bounds exactly at a commit.
    let mid = &all[all.len() / 2];
    let t = mid.date.with_timezone(&Utc);
    let since = check(
        &c,
        truth,
        Want {
            since: Some(t),
            ..Want::default()
        },
        "--since",
    )
    .await;
    assert!(
        since.iter().any(|r| r.hash == mid.hash),
        "--since is inclusive"
    );
    let until = check(
        &c,
        truth,
        Want {
            until: Some(t),
            ..Want::default()
        },
        "--until",
    )
    .await;
    assert!(
        until.iter().all(|r| r.hash != mid.hash),
        "--until is exclusive"
    );
    assert_eq!(since.len() + until.len(), all.len());
    check(
        &c,
        truth,
        Want {
            since: Some(t - Duration::days(20)),
            until: Some(t),
            repos: vec!["svc", "web"],
            ..Want::default()
        },
        "window and repos",
    )
    .await;

    // Combinations.
    check(
        &c,
        truth,
        Want {
            ws: Some(WS),
            author: Some("acme.io"),
            grep: Some("fix"),
            since: Some(t - Duration::days(60)),
            ..Want::default()
        },
        "combined",
    )
    .await;
    // --committer: the committer's raw identity (commits without one never
    // match), alone and with the author's.
    let landed = check(
        &c,
        truth,
        Want {
            committer: Some("JANE@ACME"),
            ..Want::default()
        },
        "--committer",
    )
    .await;
    assert!(!landed.is_empty());
    let by_others = check(
        &c,
        truth,
        Want {
            committer: Some("jane@acme.io"),
            author: Some("zoe@"),
            ..Want::default()
        },
        "--committer --author",
    )
    .await;
    assert!(by_others.len() < landed.len());
    let lim = check(
        &c,
        truth,
        Want {
            limit: Some(7),
            ..Want::default()
        },
        "--limit",
    )
    .await;
    assert_eq!(lim.len(), 7);
    check(
        &c,
        truth,
        Want {
            author: Some("ana"),
            grep: Some("\n- "),
            limit: Some(5),
            ..Want::default()
        },
        "limit after filters",
    )
    .await;

    // --all adds the commits the force push orphaned.
    let everything = check(
        &c,
        truth,
        Want {
            all: true,
            ..Want::default()
        },
        "--all",
    )
    .await;
    let orphans: Vec<&CommitRecord> = everything.iter().filter(|r| !r.reachable).collect();
    assert!(orphans.len() >= 5);
    assert!(orphans.iter().all(|r| r.repo == "web"));
    check(
        &c,
        truth,
        Want {
            all: true,
            repos: vec!["web"],
            limit: Some(20),
            ..Want::default()
        },
        "--all --repo --limit",
    )
    .await;
    check(
        &c,
        truth,
        Want {
            all: true,
            author: Some("a"),
            ..Want::default()
        },
        "--all --author",
    )
    .await;

    // Stable across runs.
    let again = c
        .ok(&["query", "commits", "--all", "--format", "ndjson"])
        .await;
    let again2 = c
        .ok(&["query", "commits", "--all", "--format", "ndjson"])
        .await;
    assert_eq!(again, again2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn date_bounds_respect_the_commit_offset() {
    let (c, truth) = copy().await;
    // A commit whose own calendar date differs from its UTC date.
    let t = truth
        .iter()
        .filter(|t| t.reachable && t.commit.date.offset().local_minus_utc() != 0)
        .find(|t| t.commit.date.date_naive() != t.at().date_naive())
        .expect("a commit with an offset across midnight UTC");
    let local_day = t.commit.date.date_naive().format("%Y-%m-%d").to_string();
    let ahead = t.commit.date.offset().local_minus_utc() > 0;
    let got = c
        .records(&[
            "query",
            "commits",
            "--since",
            &local_day,
            "--repo",
            &t.repo,
            "--workspace",
            &t.ws,
        ])
        .await;
    let hit = got.iter().any(|r| r.hash == t.commit.hash);
    // East of UTC the local date is later: the commit is before its own
    // local midnight taken as UTC; west of UTC it is after.
    assert_eq!(hit, !ahead, "{} --since {local_day}", t.commit.date);
    let day = chrono::NaiveDate::parse_from_str(&local_day, "%Y-%m-%d")
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    assert_matches(
        &got,
        &expect(
            truth,
            &Want {
                since: Some(day),
                repos: vec![&t.repo],
                ws: Some(&t.ws),
                ..Want::default()
            },
        ),
        "--since YYYY-MM-DD",
    );

    // The stored spelling, with its offset, as both bounds.
    let stored = t.commit.date.to_rfc3339();
    let later = (t.commit.date + Duration::seconds(1)).to_rfc3339();
    let got = c
        .records(&["query", "commits", "--since", &stored, "--until", &later])
        .await;
    assert!(got.iter().any(|r| r.hash == t.commit.hash), "{stored}");
    assert_matches(
        &got,
        &expect(
            truth,
            &Want {
                since: Some(t.at()),
                until: Some(t.at() + Duration::seconds(1)),
                ..Want::default()
            },
        ),
        "one-second window",
    );
    let got = c.records(&["query", "commits", "--until", &stored]).await;
    assert!(
        got.iter().all(|r| r.hash != t.commit.hash),
        "--until {stored}"
    );

    // Its wall-clock time read as UTC is a different instant.
    let wall = format!(
        "{}Z",
        t.commit.date.naive_local().format("%Y-%m-%dT%H:%M:%S")
    );
    let got = c
        .records(&["query", "commits", "--since", &wall, "--repo", &t.repo])
        .await;
    assert_eq!(
        got.iter().any(|r| r.hash == t.commit.hash),
        !ahead,
        "--since {wall}"
    );
}

fn field(rec: &csv::StringRecord, header: &csv::StringRecord, name: &str) -> String {
    let i = header
        .iter()
        .position(|h| h == name)
        .unwrap_or_else(|| panic!("no column {name}"));
    rec[i].to_owned()
}

fn opt(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// A commit record rebuilt from one csv row.
fn from_csv(rec: &csv::StringRecord, h: &csv::StringRecord) -> CommitRecord {
    let f = |n: &str| field(rec, h, n);
    let committer = [
        f("committer_raw"),
        f("committer_name"),
        f("committer_email"),
    ];
    CommitRecord {
        workspace: f("workspace"),
        repo: f("repo"),
        repo_uuid: f("repo_uuid"),
        branch: f("branch"),
        hash: f("hash"),
        date: DateTime::<FixedOffset>::parse_from_rfc3339(&f("date")).unwrap(),
        author: Author {
            raw: opt(f("author_raw")),
            name: opt(f("author_name")),
            email: opt(f("author_email")),
            uuid: opt(f("author_uuid")),
            account_id: opt(f("author_account_id")),
            display_name: opt(f("author_display_name")),
        },
        committer: committer.iter().any(|s| !s.is_empty()).then(|| Committer {
            raw: opt(committer[0].clone()),
            name: opt(committer[1].clone()),
            email: opt(committer[2].clone()),
        }),
        message: f("message"),
        parents: f("parents").split_whitespace().map(str::to_owned).collect(),
        reachable: f("reachable").parse().unwrap(),
    }
}

fn parse_csv(s: &str) -> (csv::StringRecord, Vec<csv::StringRecord>) {
    let mut r = csv::Reader::from_reader(s.as_bytes());
    let header = r.headers().unwrap().clone();
    let rows = r.records().map(|x| x.unwrap()).collect();
    (header, rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_four_formats_round_trip() {
    let (c, _) = copy().await;
    let args = ["query", "commits", "--all", "--format"];
    let json: Vec<CommitRecord> =
        serde_json::from_str(&c.ok(&[&args[..], &["json"]].concat()).await).unwrap();
    let ndjson: Vec<CommitRecord> = parse_ndjson(&c.ok(&[&args[..], &["ndjson"]].concat()).await);
    assert_eq!(ndjson, json);
    let (header, rows) = parse_csv(&c.ok(&[&args[..], &["csv"]].concat()).await);
    assert_eq!(
        header.iter().collect::<Vec<_>>(),
        "workspace,repo,repo_uuid,branch,hash,date,author_raw,author_name,author_email,author_uuid,author_account_id,author_display_name,committer_raw,committer_name,committer_email,message,parents,reachable"
            .split(',')
            .collect::<Vec<_>>()
    );
    let csv: Vec<CommitRecord> = rows.iter().map(|r| from_csv(r, &header)).collect();
    assert_eq!(csv, json);
    // The json agrees with the store, field by field.
    let mut stored = store_records(&c.store);
    let mut sorted = json.clone();
    let k = |r: &CommitRecord| (r.workspace.clone(), r.repo_uuid.clone(), r.hash.clone());
    stored.sort_by_key(k);
    sorted.sort_by_key(k);
    assert_eq!(sorted, stored);

    // The awkward messages are really there and survived.
    let has = |p: &dyn Fn(&str) -> bool| json.iter().any(|r| p(&r.message));
    assert!(has(&|m| m.contains(',')), "comma");
    assert!(has(&|m| m.contains('"')), "quote");
    assert!(has(&|m| m.trim_end().contains('\n')), "newline");
    assert!(has(&|m| m.contains('\t')), "tab");
    assert!(has(&|m| m.chars().any(|c| c as u32 >= 0x1F300)), "emoji");
    assert!(
        has(&|m| m.chars().any(|c| ('\u{4E00}'..='\u{9FFF}').contains(&c))),
        "CJK"
    );
    assert!(
        json.iter().any(|r| r.committer.is_none()),
        "a null committer"
    );
    assert!(json.iter().any(|r| r.author.uuid.is_none()), "a null uuid");
    assert!(json.iter().any(|r| r.parents.len() == 2), "a merge");

    // The table: a header, one line per commit, within COLUMNS, subjects only.
    let o = c
        .run_env(
            &["query", "commits", "--all", "--format", "table"],
            &[("COLUMNS", "80")],
        )
        .await;
    assert_eq!(o.status.code(), Some(0));
    let table = stdout(&o);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), json.len() + 1);
    assert!(
        lines[0].starts_with("DATE") && lines[0].contains("SUBJECT"),
        "{}",
        lines[0]
    );
    assert!(
        lines.iter().all(|l| l.chars().count() <= 80),
        "cut to 80 columns"
    );
    assert!(lines.iter().all(|l| !l.contains('\t')));
    let first = &json[0];
    assert!(lines[1].starts_with(&first.date.to_rfc3339()));
    assert!(lines[1].contains(&first.hash[..10]) && !lines[1].contains(&first.hash[..11]));
    let wide = c
        .run_env(
            &["query", "commits", "--limit", "3", "--format", "table"],
            &[("COLUMNS", "300")],
        )
        .await;
    let subject = json[0].message.lines().next().unwrap().replace('\t', " ");
    assert!(stdout(&wide)
        .lines()
        .nth(1)
        .unwrap()
        .ends_with(subject.trim_end()));

    // Empty results.
    let none = ["query", "commits", "--repo", "nope", "--format"];
    assert_eq!(c.ok(&[&none[..], &["json"]].concat()).await, "[]\n");
    assert_eq!(c.ok(&[&none[..], &["ndjson"]].concat()).await, "");
    assert_eq!(c.ok(&[&none[..], &["table"]].concat()).await, "");
    // Not a terminal: ndjson by default.
    assert_eq!(
        parse_ndjson::<CommitRecord>(&c.ok(&["query", "commits", "--limit", "4"]).await),
        json.iter()
            .filter(|r| r.reachable)
            .take(4)
            .cloned()
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_finds_full_hashes_prefixes_and_forks() {
    let (c, truth) = copy().await;
    let one = truth
        .iter()
        .find(|t| t.repo == "web" && t.reachable)
        .unwrap();
    let h = one.commit.hash.as_str();
    let full: Vec<CommitRecord> =
        serde_json::from_str(&c.ok(&["show", h, "--format", "json"]).await).unwrap();
    assert_eq!(full.len(), 1);
    assert_eq!(full[0].hash, h);
    assert_eq!(full[0].message, one.commit.message);
    assert_eq!(full[0].date, one.commit.date);
    let prefix: Vec<CommitRecord> = serde_json::from_str(
        &c.ok(&["show", &h[..7].to_uppercase(), "--format", "json"])
            .await,
    )
    .unwrap();
    assert_eq!(prefix, full);

    let text = c.ok(&["show", &h[..9]]).await;
    assert!(text.contains(h) && text.contains("web"), "{text}");
    for line in one.commit.message.lines().filter(|l| !l.is_empty()) {
        assert!(text.contains(line), "whole message: {line:?} in {text}");
    }

    // The same commit in a repository and its fork: both records.
    let shared = truth.iter().find(|t| t.repo == "svc-fork").unwrap();
    let both: Vec<CommitRecord> = serde_json::from_str(
        &c.ok(&["show", &shared.commit.hash[..8], "--format", "json"])
            .await,
    )
    .unwrap();
    let mut repos: Vec<&str> = both.iter().map(|r| r.repo.as_str()).collect();
    repos.sort();
    assert_eq!(repos, ["svc", "svc-fork"]);
    assert!(both.iter().all(|r| r.hash == shared.commit.hash));
    let text = c.ok(&["show", &shared.commit.hash]).await;
    assert_eq!(text.matches(&shared.commit.hash).count(), 2, "{text}");

    // Unknown: exit 1 with a message; garbage: exit 2.
    let unknown = (0..16u8)
        .map(|d| format!("{d:x}").repeat(7))
        .find(|p| !truth.iter().any(|t| t.commit.hash.starts_with(p.as_str())))
        .unwrap();
    let o = c.run(&["show", &unknown]).await;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no stored commit matches"),
        "{}",
        stderr(&o)
    );
    assert_eq!(stdout(&o), "");
    for bad in ["xyz1234", "abc12", &"a".repeat(41)] {
        let o = c.run(&["show", bad]).await;
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", stderr(&o));
        assert!(stderr(&o).contains("not a commit hash"), "{}", stderr(&o));
    }
}

/// Two different commits sharing a 7-digit prefix are too rare to occur in
/// the simulator's data: this store is written directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ambiguous_prefix_is_refused_with_its_matches() {
    let (dir, path) = fresh_store();
    {
        let store = open_store(&path);
        let repo = RepoState::new("acme", "{r1}", "svc", "acme/svc", Utc::now());
        let commit = |hash: String| CommitRecord {
            workspace: "acme".into(),
            repo: "svc".into(),
            repo_uuid: "{r1}".into(),
            branch: "main".into(),
            hash,
            date: DateTime::parse_from_rfc3339("2024-03-01T01:00:00+05:30").unwrap(),
            author: Author {
                raw: Some("Jane <jane@acme.io>".into()),
                name: Some("Jane".into()),
                email: Some("jane@acme.io".into()),
                uuid: None,
                account_id: None,
                display_name: None,
            },
            committer: None,
            message: "m\n".into(),
            parents: vec![],
            reachable: true,
        };
        let a = format!("abcdef1{}", "0".repeat(33));
        let b = format!("abcdef1{}", "1".repeat(33));
        store.apply_page(&repo, &[commit(a), commit(b)]).unwrap();
        store.flush().unwrap();
    }
    let c = Copy { dir, store: path };
    let o = c.run(&["show", "abcdef1"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("ambiguous"), "{err}");
    assert!(err.contains(&format!("abcdef1{}", "0".repeat(33))), "{err}");
    assert!(err.contains(&format!("abcdef1{}", "1".repeat(33))), "{err}");
    assert_eq!(
        c.ok(&["show", "abcdef10"]).await.matches("commit:").count(),
        1
    );
    // 2024-03-01T01:00:00+05:30 is 2024-02-29T19:30Z: before 2024-03-01 UTC.
    assert_eq!(
        c.ok(&["query", "commits", "--since", "2024-03-01"]).await,
        ""
    );
    assert_eq!(
        c.ok(&["query", "commits", "--until", "2024-03-01"])
            .await
            .lines()
            .count(),
        2
    );
    assert_eq!(
        c.ok(&[
            "query",
            "commits",
            "--since",
            "2024-02-29T19:30:00Z",
            "--until",
            "2024-02-29T19:30:01Z"
        ])
        .await
        .lines()
        .count(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_streams_every_commit_to_stdout_or_a_file() {
    let (c, truth) = copy().await;
    let reachable = truth.iter().filter(|t| t.reachable).count();
    let out = c.ok(&["export"]).await;
    assert_eq!(out.lines().count(), reachable);
    let records: Vec<CommitRecord> = parse_ndjson(&out);
    assert!(records.iter().all(|r| r.reachable));
    let all = c.ok(&["export", "--all"]).await;
    assert_eq!(all.lines().count(), truth.len());
    assert!(truth.len() > reachable);
    let got: HashSet<(String, String, String)> = parse_ndjson::<CommitRecord>(&all)
        .into_iter()
        .map(|r| (r.workspace, r.repo, r.hash))
        .collect();
    let want: HashSet<(String, String, String)> = truth
        .iter()
        .map(|t| (t.ws.clone(), t.repo.clone(), t.commit.hash.clone()))
        .collect();
    assert_eq!(got, want);

    let csv_out = c.ok(&["export", "--all", "--format", "csv"]).await;
    let (header, rows) = parse_csv(&csv_out);
    assert_eq!(header.len(), 18);
    assert_eq!(rows.len(), truth.len());
    let from_csv: Vec<CommitRecord> = rows.iter().map(|r| from_csv(r, &header)).collect();
    assert_eq!(from_csv, parse_ndjson::<CommitRecord>(&all));

    // --output: the same bytes, written through a temporary file.
    let exports = c.dir.path().join("exports");
    std::fs::create_dir(&exports).unwrap();
    let file = exports.join("all.csv");
    std::fs::write(&file, "old contents").unwrap();
    let o = c
        .run(&[
            "export",
            "--all",
            "--format",
            "csv",
            "--output",
            file.to_str().unwrap(),
        ])
        .await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), csv_out);
    let file2 = exports.join("reachable.ndjson");
    c.ok(&["export", "--output", file2.to_str().unwrap()]).await;
    assert_eq!(std::fs::read_to_string(&file2).unwrap(), out);
    let mut left: Vec<String> = std::fs::read_dir(&exports)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["all.csv", "reachable.ndjson"],
        "no temporary file left"
    );
    // A directory that does not exist: an error, exit 1, nothing created.
    let o = c
        .run(&[
            "export",
            "--output",
            exports.join("no/such/dir.ndjson").to_str().unwrap(),
        ])
        .await;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(!exports.join("no").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repos_authors_and_stats_match_the_truth() {
    let (c, truth) = copy().await;
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&c.ok(&["query", "repos", "--format", "json"]).await).unwrap();
    let mut want: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for t in truth {
        let e = want.entry((t.ws.clone(), t.repo.clone())).or_default();
        if t.reachable {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }
    let got: BTreeMap<(String, String), (u64, u64)> = rows
        .iter()
        .map(|r| {
            (
                (
                    r["workspace"].as_str().unwrap().into(),
                    r["slug"].as_str().unwrap().into(),
                ),
                (
                    r["commits"].as_u64().unwrap(),
                    r["unreachable"].as_u64().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(got, want);
    assert!(rows.iter().all(|r| r["status"] == "ok"));
    let web = rows.iter().find(|r| r["slug"] == "web").unwrap();
    assert!(
        web["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e.to_string().contains("force")),
        "{web}"
    );
    let beta: Vec<serde_json::Value> =
        parse_ndjson(&c.ok(&["query", "repos", "--workspace", WS2]).await);
    assert_eq!(beta.len(), 1);
    let (h, csv_rows) = parse_csv(&c.ok(&["query", "repos", "--format", "csv"]).await);
    assert_eq!(csv_rows.len(), rows.len());
    let web_csv = csv_rows
        .iter()
        .find(|r| field(r, &h, "slug") == "web")
        .unwrap();
    let events: serde_json::Value = serde_json::from_str(&field(web_csv, &h, "events")).unwrap();
    assert_eq!(events, web["events"]);

    // Authors: identities (uuid, else e-mail) with their commit counts.
    let authors: Vec<serde_json::Value> =
        serde_json::from_str(&c.ok(&["query", "authors", "--format", "json"]).await).unwrap();
    let mut want: HashMap<String, u64> = HashMap::new();
    for t in truth.iter().filter(|t| t.reachable) {
        let id = t
            .commit
            .author_user
            .as_ref()
            .and_then(|u| u.uuid.clone())
            .unwrap_or_else(|| {
                bbcrawl::record::parse_raw(&t.commit.author_raw)
                    .1
                    .unwrap()
                    .to_lowercase()
            });
        *want.entry(id).or_default() += 1;
    }
    let got: HashMap<String, u64> = authors
        .iter()
        .map(|a| {
            (
                a["identity"].as_str().unwrap().to_owned(),
                a["commits"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, want);
    assert_eq!(
        got.values().sum::<u64>() as usize,
        truth.iter().filter(|t| t.reachable).count()
    );
    let counts: Vec<u64> = authors
        .iter()
        .map(|a| a["commits"].as_u64().unwrap())
        .collect();
    assert!(
        counts.windows(2).all(|w| w[0] >= w[1]),
        "most commits first"
    );
    // Filters apply: one repository, --all, --limit.
    let web_authors: Vec<serde_json::Value> = parse_ndjson(
        &c.ok(&[
            "query", "authors", "--repo", "web", "--all", "--format", "ndjson",
        ])
        .await,
    );
    let total: u64 = web_authors
        .iter()
        .map(|a| a["commits"].as_u64().unwrap())
        .sum();
    assert_eq!(
        total as usize,
        truth.iter().filter(|t| t.repo == "web").count()
    );
    assert!(web_authors.iter().all(|a| a["repositories"] == 1));
    let top: Vec<serde_json::Value> =
        parse_ndjson(&c.ok(&["query", "authors", "--limit", "2"]).await);
    assert_eq!(top, authors[..2].to_vec());
    let grep: Vec<serde_json::Value> =
        parse_ndjson(&c.ok(&["query", "authors", "--grep", "bump version"]).await);
    let grep_total: u64 = grep.iter().map(|a| a["commits"].as_u64().unwrap()).sum();
    assert_eq!(
        grep_total as usize,
        expect(
            truth,
            &Want {
                grep: Some("bump version"),
                ..Want::default()
            }
        )
        .len()
    );

    // Stats.
    let stats: Vec<serde_json::Value> =
        serde_json::from_str(&c.ok(&["query", "stats", "--format", "json"]).await).unwrap();
    assert_eq!(stats.len(), 1);
    let s = &stats[0];
    assert_eq!(s["commits"].as_u64().unwrap() as usize, truth.len());
    assert_eq!(
        s["reachable_commits"].as_u64().unwrap() as usize,
        truth.iter().filter(|t| t.reachable).count()
    );
    assert_eq!(s["authors"].as_u64().unwrap() as usize, want.len());
    assert_eq!(s["repositories"]["ok"], 5);
    assert!(s["store_size_bytes"].as_u64().unwrap() > 0);
    let (h, rows) = parse_csv(&c.ok(&["query", "stats", "--format", "csv"]).await);
    assert_eq!(rows.len(), 1);
    assert_eq!(field(&rows[0], &h, "commits"), truth.len().to_string());
    assert_eq!(field(&rows[0], &h, "repositories_ok"), "5");
    let table = c.ok(&["query", "stats", "--format", "table"]).await;
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("commits") && l.ends_with(&truth.len().to_string())),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_broken_pipes_and_missing_stores() {
    let (c, _) = copy().await;
    for (flag, value) in [
        ("--since", "yesterday"),
        ("--until", "2024-13-01"),
        ("--since", "2024-05-01 12:00"),
    ] {
        let o = c.run(&["query", "commits", flag, value]).await;
        assert_eq!(o.status.code(), Some(2), "{flag} {value}");
        assert!(stderr(&o).contains(flag), "{}", stderr(&o));
        assert_eq!(stdout(&o), "");
    }
    for limit in ["0", "-1", "many"] {
        let arg = format!("--limit={limit}");
        let o = c.run(&["query", "commits", &arg]).await;
        assert_eq!(o.status.code(), Some(2), "--limit {limit}");
        assert!(stderr(&o).contains("--limit"), "{}", stderr(&o));
    }
    let o = c.run(&["query", "commits", "--format", "xml"]).await;
    assert_eq!(o.status.code(), Some(2));

    // A reader that stops early: bbcrawl ends quietly with 0.
    let bin = env!("CARGO_BIN_EXE_bbcrawl");
    let store = c.store.to_str().unwrap();
    for cmd in [
        format!("'{bin}' --store '{store}' query commits --all --format ndjson | head -n 1"),
        format!("'{bin}' --store '{store}' query commits --format csv | head -n 1"),
        format!("'{bin}' --store '{store}' query commits --format table | head -n 1"),
        format!("'{bin}' --store '{store}' export --all | head -n 1"),
    ] {
        let o = tokio::process::Command::new("bash")
            .arg("-c")
            .arg(format!("set -o pipefail; {cmd}"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .output()
            .await
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{cmd}: {}", stderr(&o));
        assert_eq!(stderr(&o), "", "{cmd}");
        assert_eq!(stdout(&o).lines().count(), 1, "{cmd}");
    }

    // No store: exit 1, a hint, and no directory created.
    let missing = c.dir.path().join("missing");
    for args in [
        vec!["query", "commits"],
        vec!["query", "stats"],
        vec!["show", "abcdef1"],
        vec!["export"],
    ] {
        let mut all = vec!["--store", missing.to_str().unwrap()];
        all.extend(args.iter());
        let o = bbcrawl(c.dir.path(), &all, &[]).await;
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(
            stderr(&o).contains("run `bbcrawl sync` first"),
            "{}",
            stderr(&o)
        );
        assert!(stderr(&o).contains("missing"), "{}", stderr(&o));
        assert!(!missing.exists(), "{args:?} created the store");
    }
    // The default store (./bbcrawl-data) is not created either.
    let o = bbcrawl(c.dir.path(), &["query", "repos"], &[]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(!c.dir.path().join("bbcrawl-data").exists());

    // A store held by another process: exit 7.
    let held = Store::open(&c.store).unwrap();
    let o = c.run(&["query", "commits"]).await;
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    drop(held);
    assert_eq!(c.run(&["query", "stats"]).await.status.code(), Some(0));
}
