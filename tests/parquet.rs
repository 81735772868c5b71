//! `export --format parquet` (issue 16 §2) read by a real consumer: DuckDB
//! from Python (the `duckdb` package from PyPI, which `.ci/run` installs).
//! A synced store's Parquet export holds, row for row and in the same
//! order, what its NDJSON export holds: every field, nulls where NDJSON
//! has null, `parents` as a list, the UTC timestamp and the offset giving
//! back the `date` Bitbucket sent, `reachable` after a force push; a
//! change-feed batch has `seq` and `kind` and moves the cursor like the
//! NDJSON one; and the file is the same when the daemon holds the store.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bbcrawl::simulator::RepoSpec;
use chrono::{DateTime, FixedOffset, TimeZone, Utc};
use serde_json::Value;

use crate::util::*;

/// Whether python3 can import duckdb. Under CI its absence fails the test
/// (`.ci/run` installs it); elsewhere the test is skipped with a note.
fn duckdb_here(test: &str) -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import duckdb"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let how = "PyPI package `duckdb`: `.ci/run` installs it with python3 -m pip install duckdb";
        assert!(
            !crate::kit::ci_means_ci(&std::env::var("CI").unwrap_or_default()),
            "{test}: python3 cannot import duckdb, and under CI a missing tool fails the test ({how})"
        );
        // Written to stderr itself: libtest captures `eprintln!` of a
        // passing test, and a skip nobody sees is a silent pass.
        let _ = writeln!(
            std::io::stderr(),
            "note: {test} skipped: python3 cannot import duckdb ({how}; under CI=true this fails)"
        );
    }
    ok
}

/// Runs `sql` in DuckDB (session time zone UTC); one JSON object per row.
fn duck(sql: &str) -> Vec<Value> {
    const RUN: &str = r#"
import duckdb, json, sys
con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
cur = con.execute(sys.argv[1])
cols = [d[0] for d in cur.description]
for row in cur.fetchall():
    print(json.dumps(dict(zip(cols, row)), default=str))
"#;
    let o = std::process::Command::new("python3")
        .args(["-c", RUN, sql])
        .output()
        .expect("run python3");
    assert!(
        o.status.success(),
        "duckdb: {sql}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `bbcrawl --store STORE ARGS…`: exit 0, stdout.
async fn run(store: &Path, args: &[&str]) -> String {
    let mut all = vec!["--store", store.to_str().unwrap()];
    all.extend_from_slice(args);
    let o = bbcrawl(store.parent().unwrap(), &all, &[]).await;
    assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
    stdout(&o)
}

fn ndjson(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The columns of a commit, selected so that each reads back as its
/// NDJSON value: the date as microseconds since the epoch, and the local
/// wall time and offset DuckDB computes from `date` and
/// `date_offset_minutes`.
const COMMIT_SQL: &str = "workspace, repo, repo_uuid, branch, hash, \
    epoch_us(date) AS date_us, date_nanos, date_offset_minutes, \
    strftime(date + to_minutes(date_offset_minutes), '%Y-%m-%dT%H:%M:%S') AS local_time, \
    (CASE WHEN date_offset_minutes < 0 THEN '-' ELSE '+' END) \
      || lpad((abs(date_offset_minutes) // 60)::VARCHAR, 2, '0') || ':' \
      || lpad((abs(date_offset_minutes) % 60)::VARCHAR, 2, '0') AS offset_text, \
    author_raw, author_name, author_email, author_uuid, author_account_id, author_display_name, \
    committer_raw, committer_name, committer_email, message, parents, reachable";

/// The instant and offset a row's three date columns give.
fn date_of(row: &Value) -> DateTime<FixedOffset> {
    let offset =
        FixedOffset::east_opt(row["date_offset_minutes"].as_i64().unwrap() as i32 * 60).unwrap();
    Utc.timestamp_micros(row["date_us"].as_i64().unwrap())
        .unwrap()
        .with_timezone(&offset)
        + chrono::Duration::nanoseconds(row["date_nanos"].as_i64().unwrap())
}

/// Checks a DuckDB row against the NDJSON record of the same commit,
/// field by field; a committer given without an identity is three nulls.
fn assert_row_is_record(row: &Value, rec: &Value) {
    let hash = rec["hash"].as_str().unwrap();
    for k in [
        "workspace",
        "repo",
        "repo_uuid",
        "branch",
        "hash",
        "message",
        "parents",
        "reachable",
    ] {
        assert_eq!(row[k], rec[k], "{hash}: {k}");
    }
    let sent = rec["date"].as_str().unwrap();
    assert_eq!(
        bbcrawl::record::format_date(&date_of(row)),
        sent,
        "{hash}: date"
    );
    // DuckDB's own timestamp + offset: the wall time and offset sent.
    assert_eq!(
        row["local_time"].as_str().unwrap(),
        &sent[..19],
        "{hash}: local time"
    );
    assert_eq!(
        row["offset_text"].as_str().unwrap(),
        &sent[sent.len() - 6..],
        "{hash}: offset"
    );
    for k in ["raw", "name", "email", "uuid", "account_id", "display_name"] {
        assert_eq!(
            row[format!("author_{k}")],
            rec["author"][k],
            "{hash}: author {k}"
        );
    }
    let committer = &rec["committer"];
    for k in ["raw", "name", "email"] {
        let want = if committer.is_null() {
            &Value::Null
        } else {
            &committer[k]
        };
        assert_eq!(
            &row[format!("committer_{k}")],
            want,
            "{hash}: committer {k}"
        );
    }
}

/// A store with merges, commits in several offsets, commits with and
/// without a committer and an account, and (after a force push) commits
/// no longer reachable.
async fn forced_store() -> (bbcrawl::simulator::SimServer, tempfile::TempDir, PathBuf) {
    let sim = world(0);
    for (slug, n) in [("web", 140), ("api", 90), ("tools", 40), ("empty", 0)] {
        sim.add_repo(WS, RepoSpec::new(slug, n));
    }
    let (server, dir, store) = synced(&sim).await;
    sim.force_push(WS, "api", 4, 3);
    sim.push(WS, "web", 5);
    let o = sync(&store, &server.api_url(), &[], &[]).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    (server, dir, store)
}

/// The Parquet export of a synced store, read by DuckDB, is its NDJSON
/// export: the same rows in the same order, every field, with `--all` the
/// unreachable commits too; the columns have the documented types.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duckdb_reads_the_parquet_export_as_the_ndjson_export() {
    if !duckdb_here("duckdb_reads_the_parquet_export_as_the_ndjson_export") {
        return;
    }
    let (_server, dir, store) = forced_store().await;
    for all in [false, true] {
        let file = dir.path().join(format!("commits-{all}.parquet"));
        let f = file.to_str().unwrap();
        let mut args = vec!["export", "--format", "parquet", "--output", f];
        let mut nd = vec!["export", "--format", "ndjson"];
        if all {
            args.push("--all");
            nd.push("--all");
        }
        assert_eq!(run(&store, &args).await, "", "nothing on stdout");
        let records = ndjson(&run(&store, &nd).await);
        let rows = duck(&format!("SELECT {COMMIT_SQL} FROM '{f}'"));
        assert_eq!(rows.len(), records.len(), "all {all}");
        let count = duck(&format!("SELECT count(*) AS n FROM '{f}'"));
        assert_eq!(count[0]["n"], records.len(), "all {all}");
        for (row, rec) in rows.iter().zip(&records) {
            assert_row_is_record(row, rec);
        }
        // The sample covers what can go wrong.
        let has = |what: &str, p: &dyn Fn(&Value) -> bool| {
            assert!(rows.iter().any(p), "all {all}: no row with {what}");
        };
        has("an offset west of UTC", &|r| {
            r["date_offset_minutes"].as_i64() < Some(0)
        });
        has("an offset east of UTC", &|r| {
            r["date_offset_minutes"].as_i64() > Some(0)
        });
        has("a UTC date", &|r| r["date_offset_minutes"] == 0);
        has("no committer", &|r| r["committer_raw"].is_null());
        has("no account", &|r| r["author_uuid"].is_null());
        has("an account", &|r| r["author_uuid"].is_string());
        has("two parents", &|r| {
            r["parents"].as_array().map(Vec::len) == Some(2)
        });
        has("a root commit", &|r| r["parents"] == serde_json::json!([]));
        let unreachable = rows.iter().filter(|r| r["reachable"] == false).count();
        assert_eq!(unreachable, if all { 4 } else { 0 });
    }

    let f = dir.path().join("commits-true.parquet");
    let types: BTreeMap<String, String> = duck(&format!(
        "SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM '{}')",
        f.display()
    ))
    .into_iter()
    .map(|r| {
        (
            r["column_name"].as_str().unwrap().to_owned(),
            r["column_type"].as_str().unwrap().to_owned(),
        )
    })
    .collect();
    for (column, t) in [
        ("hash", "VARCHAR"),
        ("date", "TIMESTAMP WITH TIME ZONE"),
        ("date_nanos", "INTEGER"),
        ("date_offset_minutes", "INTEGER"),
        ("author_uuid", "VARCHAR"),
        ("parents", "VARCHAR[]"),
        ("reachable", "BOOLEAN"),
    ] {
        assert_eq!(
            types.get(column).map(String::as_str),
            Some(t),
            "{column}: {types:?}"
        );
    }
    assert_eq!(types.len(), 20, "{types:?}");
}

/// Dates Bitbucket sends with more digits than a microsecond, with
/// offsets: DuckDB's timestamp, `date_nanos` and the offset give them back
/// exactly (the precision test's fake API).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_microsecond_dates_round_trip_through_duckdb() {
    if !duckdb_here("sub_microsecond_dates_round_trip_through_duckdb") {
        return;
    }
    let (_api, dir, store) = crate::precision::crawled().await;
    let file = dir.path().join("clock.parquet");
    let f = file.to_str().unwrap();
    run(&store, &["export", "--format", "parquet", "--output", f]).await;
    let records = ndjson(&run(&store, &["export"]).await);
    let rows = duck(&format!("SELECT {COMMIT_SQL} FROM '{f}'"));
    assert_eq!(rows.len(), records.len());
    for (row, rec) in rows.iter().zip(&records) {
        assert_row_is_record(row, rec);
    }
    assert!(
        rows.iter().any(|r| r["date_nanos"].as_i64() > Some(0)),
        "no date finer than a microsecond"
    );
}

/// Change-feed batches as Parquet with `--cursor`: each file holds the
/// next changes with `seq` and `kind`, the cursor moves to the last seq
/// in it, the batches together are `export --changes` (a repository event
/// a row of its repository, the commit's columns null, `event_from` and
/// `event_to` its `from` and `to`), and a batch with nothing new is a
/// file of no rows that leaves the cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_feed_batches_in_parquet_read_in_duckdb_with_seq_and_kind() {
    if !duckdb_here("change_feed_batches_in_parquet_read_in_duckdb_with_seq_and_kind") {
        return;
    }
    let sim = world(0);
    for (slug, n) in [("web", 120), ("tools", 30), ("docs", 20)] {
        sim.add_repo(WS, RepoSpec::new(slug, n));
    }
    let (server, dir, store) = synced(&sim).await;
    sim.force_push(WS, "web", 2, 1);
    sim.rename_repo(WS, "tools", "dev-tools");
    sim.rename_default_branch(WS, "docs", "trunk");
    let o = sync(&store, &server.api_url(), &[], &[]).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let lines = ndjson(&run(&store, &["export", "--changes"]).await);

    let cursor = dir.path().join("cursor");
    let c = cursor.to_str().unwrap();
    let mut batches = Vec::new();
    for n in 0.. {
        let file = dir.path().join(format!("batch-{n:03}.parquet"));
        let f = file.to_str().unwrap();
        let before = std::fs::read_to_string(&cursor).ok();
        run(
            &store,
            &[
                "export",
                "--changes",
                "--format",
                "parquet",
                "--cursor",
                c,
                "--limit",
                "100",
                "--output",
                f,
            ],
        )
        .await;
        let rows = duck(&format!("SELECT seq FROM '{f}'"));
        let after = std::fs::read_to_string(&cursor).ok();
        if rows.is_empty() {
            assert_eq!(after, before, "an empty batch leaves the cursor");
            break;
        }
        assert!(rows.len() <= 100);
        assert_eq!(
            after.as_deref().map(str::trim),
            Some(rows.last().unwrap()["seq"].to_string().as_str()),
            "the cursor holds the batch's last seq"
        );
        batches.push(file);
        assert!(n < 20, "the batches do not end");
    }
    assert_eq!(batches.len(), lines.len().div_ceil(100));
    let glob = dir.path().join("batch-*.parquet");
    let rows = duck(&format!(
        "SELECT feed, seq, kind, event_from, event_to, {COMMIT_SQL} FROM '{}' ORDER BY seq",
        glob.display()
    ));
    assert_eq!(rows.len(), lines.len());
    let mut kinds = BTreeMap::new();
    for (row, line) in rows.iter().zip(&lines) {
        assert_eq!(row["feed"], line["feed"]);
        assert_eq!(row["seq"], line["seq"]);
        assert_eq!(row["kind"], line["kind"]);
        *kinds
            .entry(line["kind"].as_str().unwrap().to_owned())
            .or_insert(0) += 1;
        match line.get("commit") {
            Some(rec) => {
                assert_row_is_record(row, rec);
                assert!(row["event_from"].is_null() && row["event_to"].is_null());
            }
            None => {
                let repo = &line["repository"];
                assert_eq!(row["workspace"], repo["workspace"]);
                assert_eq!(row["repo"], repo["slug"]);
                assert_eq!(row["repo_uuid"], repo["uuid"]);
                assert_eq!(row["event_from"], line["from"]);
                assert_eq!(row["event_to"], line["to"]);
                for k in [
                    "branch",
                    "hash",
                    "date_us",
                    "message",
                    "parents",
                    "reachable",
                    "author_raw",
                ] {
                    assert!(row[k].is_null(), "{}: {k} = {}", line["kind"], row[k]);
                }
            }
        }
    }
    assert_eq!(kinds["commit_unreachable"], 2, "{kinds:?}");
    assert_eq!(kinds["repo_renamed"], 1, "{kinds:?}");
    assert_eq!(kinds["repo_default_branch_changed"], 1, "{kinds:?}");
}

/// A Parquet file is written whole and renamed into place: without
/// `--output`, or to a FIFO, it is a usage error (exit 2) that writes
/// nothing and leaves the cursor; `--changes` takes ndjson or parquet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_needs_a_file_to_replace() {
    let sim = world(0);
    sim.add_repo(WS, RepoSpec::new("web", 10));
    let (_server, dir, store) = synced(&sim).await;
    let s = store.to_str().unwrap();
    let fifo = dir.path().join("fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    assert!(made.is_ok_and(|s| s.success()), "mkfifo");
    let cursor = dir.path().join("cursor");
    std::fs::write(&cursor, "3\n").unwrap();
    let (f, c) = (fifo.to_str().unwrap(), cursor.to_str().unwrap());
    for args in [
        vec!["export", "--format", "parquet"],
        vec!["export", "--format", "parquet", "--output", f],
        vec!["export", "--changes", "--format", "parquet", "--cursor", c],
        vec![
            "export",
            "--changes",
            "--format",
            "parquet",
            "--cursor",
            c,
            "--output",
            f,
        ],
        vec!["export", "--changes", "--format", "csv", "--cursor", c],
    ] {
        let mut all = vec!["--store", s];
        all.extend_from_slice(&args);
        let o = bbcrawl(dir.path(), &all, &[]).await;
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(o.stdout.is_empty(), "{args:?}");
        assert!(stderr(&o).contains("error: "), "{args:?}: {}", stderr(&o));
    }
    assert_eq!(std::fs::read_to_string(&cursor).unwrap(), "3\n");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".bbcrawl-export-")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// While `bbcrawl run` holds the store, the CLI asks it for NDJSON and
/// writes the Parquet file itself: byte for byte the file the store gave
/// before, for the export and for a change-feed batch (whose cursor moves
/// as without a daemon).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_s_store_exports_the_same_parquet_file() {
    let (server, dir, store) = forced_store().await;
    let file = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let (local, local_batch) = (file("local.parquet"), file("local-batch.parquet"));
    run(
        &store,
        &["export", "--all", "--format", "parquet", "-o", &local],
    )
    .await;
    let cursor = file("cursor");
    std::fs::write(&cursor, "7\n").unwrap();
    let batch = [
        "export",
        "--changes",
        "--format",
        "parquet",
        "--cursor",
        &cursor,
        "--limit",
        "50",
    ];
    run(&store, &[&batch[..], &["-o", &local_batch]].concat()).await;
    let local_cursor = std::fs::read_to_string(&cursor).unwrap();
    assert_eq!(local_cursor, "57\n");

    let log = dir.path().join("daemon.log");
    let mut env = sync_env(&server.api_url(), &store);
    env.push(("BBCRAWL_LISTEN".into(), "127.0.0.1:0".into()));
    env.push(("BBCRAWL_INTERVAL_SECONDS".into(), "3600".into()));
    let mut daemon = spawn_bbcrawl(&["run"], &env, &log);
    // Its first pass finds nothing new; the store stays as exported.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("pass finished")
    {
        if let Ok(Some(s)) = daemon.try_wait() {
            panic!(
                "bbcrawl run exited {s}: {}",
                std::fs::read_to_string(&log).unwrap()
            );
        }
        assert!(
            Instant::now() < deadline,
            "no finished pass: {}",
            std::fs::read_to_string(&log).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (remote, remote_batch) = (file("remote.parquet"), file("remote-batch.parquet"));
    run(
        &store,
        &["export", "--all", "--format", "parquet", "-o", &remote],
    )
    .await;
    std::fs::write(&cursor, "7\n").unwrap();
    run(&store, &[&batch[..], &["-o", &remote_batch]].concat()).await;
    assert_eq!(std::fs::read_to_string(&cursor).unwrap(), local_cursor);
    // It held the store all along (sled lets one process open it), so
    // the CLI asked it.
    assert!(daemon.try_wait().unwrap().is_none(), "bbcrawl run stopped");
    daemon.start_kill().unwrap();
    daemon.wait().await.unwrap();
    assert!(
        std::fs::read(&local).unwrap() == std::fs::read(&remote).unwrap(),
        "the export differs when the daemon answers"
    );
    assert!(
        std::fs::read(&local_batch).unwrap() == std::fs::read(&remote_batch).unwrap(),
        "the batch differs when the daemon answers"
    );
}

/// README's table of the columns is the writer's (every column, in order,
/// with its type and what it holds), and `export --help` names each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_and_the_help_list_every_column() {
    use bbcrawl::query::parquet::{columns, Table};
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section = readme
        .split("### Parquet: `export --format parquet`")
        .nth(1)
        .expect("README has a Parquet section");
    let rows: Vec<&str> = section
        .lines()
        .skip_while(|l| !l.starts_with("| column |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .collect();
    let want: Vec<String> = columns(Table::Changes)
        .iter()
        .map(|c| format!("| `{}` | {} | {} |", c.name, c.parquet, c.meaning))
        .collect();
    assert_eq!(rows, want);
    let dir = tempfile::tempdir().unwrap();
    let o = bbcrawl(dir.path(), &["export", "--help"], &[]).await;
    assert_eq!(o.status.code(), Some(0));
    let help = stdout(&o).split_whitespace().collect::<Vec<_>>().join(" ");
    for c in columns(Table::Changes) {
        assert!(
            help.contains(c.name),
            "export --help does not name {}",
            c.name
        );
    }
}
