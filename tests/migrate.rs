//! A schema-1 store answers exactly as it did: `tests/fixtures/schema1-store`
//! was written by bbcrawl at commit e5e8f50 (store schema 1), and
//! `expected/` holds what that binary printed for each command below. Every
//! test works on a copy of the fixture (the fixture itself is never opened)
//! and runs the real binary, which must exit 0 and print the same bytes;
//! `query stats` is compared as JSON without `store_size_bytes`. Standard
//! error is not looked at (a newer binary may announce a migration there).
//!
//! The fixture must never be regenerated with newer code: see its README.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::util::*;

/// The fixture, as committed.
fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/schema1-store")
}

/// Entries of the fixture directory that are not part of the store.
const NOT_STORE: &[&str] = &["expected", "README.md"];

/// Copies the store files of `src` into `dst` (created), subdirectories
/// (sled's `blobs/`) included, leaving out [`NOT_STORE`] at the top level.
fn copy_store(src: &Path, dst: &Path) {
    copy_tree(src, dst, NOT_STORE);
}

fn copy_tree(src: &Path, dst: &Path, skip: &[&str]) {
    std::fs::create_dir_all(dst).unwrap_or_else(|e| panic!("{}: {e}", dst.display()));
    let entries = std::fs::read_dir(src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    for entry in entries {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if skip.iter().any(|s| name == **s) {
            continue;
        }
        let (from, to) = (entry.path(), dst.join(&name));
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&from, &to, &[]);
        } else {
            std::fs::copy(&from, &to)
                .unwrap_or_else(|e| panic!("{} -> {}: {e}", from.display(), to.display()));
        }
    }
}

/// A copy of the fixture's store in a temporary directory (alive as long
/// as the guard).
fn fixture_copy() -> (tempfile::TempDir, PathBuf) {
    fixture_copy_of(&fixture())
}

/// The schema-2 fixture: the schema-1 one migrated by the schema-2 code
/// of `c86613f` (see its README); it answers with the same `expected/`
/// bytes, read by this code (and its sled build) as it is.
fn fixture2() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/schema2-store")
}

/// Both fixtures: every output test runs on a copy of each.
fn fixtures() -> [PathBuf; 2] {
    [fixture(), fixture2()]
}

/// A copy of the store in fixture directory `fx`.
fn fixture_copy_of(fx: &Path) -> (tempfile::TempDir, PathBuf) {
    let (dir, store) = fresh_store();
    copy_store(fx, &store);
    (dir, store)
}

/// The recorded standard output `expected/NAME`.
fn expected(name: &str) -> Vec<u8> {
    let path = fixture().join("expected").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `bbcrawl --store STORE ARGS…` with a clean environment and `COLUMNS=100`
/// (as recorded): exit 0, and its standard output.
async fn run(store: &Path, args: &[&str]) -> Vec<u8> {
    let mut all = vec!["--store", store.to_str().unwrap()];
    all.extend_from_slice(args);
    let o = bbcrawl(store.parent().unwrap(), &all, &[("COLUMNS", "100")]).await;
    assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
    o.stdout
}

/// Where two outputs first differ, for a readable failure.
fn first_difference(got: &[u8], want: &[u8]) -> String {
    let got_s = String::from_utf8_lossy(got);
    let want_s = String::from_utf8_lossy(want);
    let (mut g, mut w) = (got_s.lines(), want_s.lines());
    for n in 1.. {
        match (g.next(), w.next()) {
            (Some(a), Some(b)) if a == b => continue,
            (None, None) => break,
            (a, b) => return format!("line {n}:\n  got:  {a:?}\n  want: {b:?}"),
        }
    }
    "same lines, different bytes (line endings?)".to_owned()
}

/// Runs `args` on `store` and compares its standard output with
/// `expected/NAME`, byte for byte.
async fn check(store: &Path, name: &str, args: &[&str]) {
    let got = run(store, args).await;
    let want = expected(name);
    assert!(
        got == want,
        "{args:?}: output differs from expected/{name} ({} bytes, {} expected); first difference at {}",
        got.len(),
        want.len(),
        first_difference(&got, &want)
    );
}

#[tokio::test]
async fn export_prints_what_schema_1_printed() {
    for fx in fixtures() {
        let (_dir, store) = fixture_copy_of(&fx);
        check(&store, "export.ndjson", &["export", "--format", "ndjson"]).await;
        check(
            &store,
            "export-all.ndjson",
            &["export", "--all", "--format", "ndjson"],
        )
        .await;
        check(&store, "export.csv", &["export", "--format", "csv"]).await;
    }
}

#[tokio::test]
async fn query_commits_prints_what_schema_1_printed() {
    for fx in fixtures() {
        let (_dir, store) = fixture_copy_of(&fx);
        check(
            &store,
            "commits-all.ndjson",
            &["query", "commits", "--all", "--format", "ndjson"],
        )
        .await;
        check(
            &store,
            "commits-limit-100.ndjson",
            &["query", "commits", "--format", "ndjson", "--limit", "100"],
        )
        .await;
        check(
            &store,
            "commits-repo.ndjson",
            &[
                "query",
                "commits",
                "--repo",
                "data-pipeline",
                "--limit",
                "50",
                "--format",
                "ndjson",
            ],
        )
        .await;
    }
}

#[tokio::test]
async fn filtered_commit_queries_print_what_schema_1_printed() {
    for fx in fixtures() {
        let (_dir, store) = fixture_copy_of(&fx);
        check(
            &store,
            "commits-author-since.ndjson",
            &[
                "query",
                "commits",
                "--author",
                "jane",
                "--since",
                "2024-03-01",
                "--limit",
                "50",
                "--format",
                "ndjson",
            ],
        )
        .await;
        // The upper bound falls inside the millisecond of three `clock` commits.
        check(
            &store,
            "commits-until-since.json",
            &[
                "query",
                "commits",
                "--until",
                "2024-03-01T09:37:07.123999999Z",
                "--since",
                "2024-02-25",
                "--format",
                "json",
            ],
        )
        .await;
        check(
            &store,
            "commits-grep.ndjson",
            &["query", "commits", "--grep", "retry", "--format", "ndjson"],
        )
        .await;
    }
}

#[tokio::test]
async fn query_authors_prints_what_schema_1_printed() {
    for fx in fixtures() {
        let (_dir, store) = fixture_copy_of(&fx);
        check(
            &store,
            "authors.ndjson",
            &["query", "authors", "--format", "ndjson"],
        )
        .await;
        check(
            &store,
            "authors-all.ndjson",
            &["query", "authors", "--all", "--format", "ndjson"],
        )
        .await;
        // The lower bound falls inside the millisecond of three `clock` commits.
        check(
            &store,
            "authors-since.ndjson",
            &[
                "query",
                "authors",
                "--since",
                "2024-03-01T09:37:07.1232Z",
                "--format",
                "ndjson",
            ],
        )
        .await;
        // A renamed repository (it was `auth-service`).
        check(
            &store,
            "authors-repo.ndjson",
            &[
                "query",
                "authors",
                "--repo",
                "identity-service",
                "--format",
                "ndjson",
            ],
        )
        .await;
    }
}

/// `query stats --format json` without `store_size_bytes`, parsed (the
/// binary prints the `repositories` map in no fixed key order).
fn stats_without_size(out: &[u8]) -> Value {
    let mut v: Value = serde_json::from_slice(out)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(out)));
    let rows = v.as_array_mut().expect("stats is a JSON array");
    assert_eq!(rows.len(), 1, "{rows:?}");
    for row in rows.iter_mut() {
        let fields = row.as_object_mut().expect("a stats row is an object");
        assert!(
            fields.remove("store_size_bytes").is_some(),
            "no store_size_bytes in {fields:?}"
        );
    }
    v
}

#[tokio::test]
async fn query_repos_and_stats_print_what_schema_1_printed() {
    for fx in fixtures() {
        let (_dir, store) = fixture_copy_of(&fx);
        check(
            &store,
            "repos.json",
            &["query", "repos", "--format", "json"],
        )
        .await;
        let got = run(&store, &["query", "stats", "--format", "json"]).await;
        assert_eq!(
            stats_without_size(&got),
            stats_without_size(&expected("stats.json")),
            "query stats (store_size_bytes aside)"
        );
    }
}

#[tokio::test]
async fn show_prints_what_schema_1_printed() {
    for fx in fixtures() {
        let (_dir, store) = fixture_copy_of(&fx);
        // In payments-api and its fork.
        check(
            &store,
            "show-forked.json",
            &[
                "show",
                "cc2065341fdc329cdd4bc35b751c64cdf18bf402",
                "--format",
                "json",
            ],
        )
        .await;
        // A web-app commit the force push left unreachable.
        check(&store, "show-prefix.txt", &["show", "820610e"]).await;
    }
}

#[tokio::test]
async fn tables_print_what_schema_1_printed() {
    for fx in fixtures() {
        let (_dir, store) = fixture_copy_of(&fx);
        check(
            &store,
            "commits-table.txt",
            &["query", "commits", "--format", "table", "--limit", "20"],
        )
        .await;
        check(
            &store,
            "authors-table.txt",
            &["query", "authors", "--format", "table"],
        )
        .await;
    }
}

#[test]
fn the_fixture_is_a_schema_1_store() {
    let (_dir, store) = fixture_copy();
    for name in ["conf", "db", "store-id"] {
        assert!(store.join(name).is_file(), "no {name} in the fixture");
    }
    assert!(
        !store.join("daemon.json").exists(),
        "the fixture holds a daemon.json"
    );
    let db = bbcrawl::store::sled_config(&store).open().unwrap();
    let schema = db.get(b"mschema").unwrap().expect("no mschema key");
    assert_eq!(schema.as_ref(), 1u32.to_be_bytes(), "schema version");
}

#[test]
fn the_copy_helper_copies_subdirectories() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let (src, dst) = (src.path(), dst.path().join("store"));
    std::fs::write(src.join("db"), b"db bytes").unwrap();
    std::fs::create_dir_all(src.join("blobs/1/2")).unwrap();
    std::fs::write(src.join("blobs/7"), b"blob 7").unwrap();
    std::fs::write(src.join("blobs/1/2/42"), b"blob 42").unwrap();
    std::fs::create_dir_all(src.join("blobs/empty")).unwrap();
    std::fs::create_dir_all(src.join("expected")).unwrap();
    std::fs::write(src.join("expected/out.ndjson"), b"{}").unwrap();
    std::fs::write(src.join("README.md"), b"# fixture").unwrap();

    copy_store(src, &dst);

    assert_eq!(std::fs::read(dst.join("db")).unwrap(), b"db bytes");
    assert_eq!(std::fs::read(dst.join("blobs/7")).unwrap(), b"blob 7");
    assert_eq!(std::fs::read(dst.join("blobs/1/2/42")).unwrap(), b"blob 42");
    assert!(dst.join("blobs/empty").is_dir());
    assert!(
        !dst.join("expected").exists(),
        "expected/ is not a store file"
    );
    assert!(
        !dst.join("README.md").exists(),
        "README.md is not a store file"
    );
}

/// The fixture copy's schema-1 records and schema version, read with sled
/// directly (never through bbcrawl, which would carry the migration on).
fn old_layout(store: &Path) -> (usize, Vec<u8>) {
    let db = bbcrawl::store::sled_config(store).open().unwrap();
    let records = db.scan_prefix(b"c").count();
    let schema = db
        .get(b"mschema")
        .unwrap()
        .map(|v| v.to_vec())
        .unwrap_or_default();
    (records, schema)
}

/// Starts `query stats` on `store` with the migration paused `pause_ms`
/// after each batch, waits for the log line holding `notice`, waits a
/// random time in `after` and kills it (`kill -9`) while it still runs;
/// returns the wait.
async fn kill_mid_migration(
    store: &Path,
    pause_ms: u64,
    notice: &str,
    after: std::ops::Range<u64>,
    kill: usize,
) -> u64 {
    use rand::Rng;
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_bbcrawl"));
    cmd.args(["--store", store.to_str().unwrap(), "query", "stats"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("BBCRAWL_TEST_MIGRATION_PAUSE_MS", pause_ms.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let started = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains(notice) {
                return true;
            }
        }
        false
    })
    .await
    .expect("no migration notice within 30 s");
    assert!(
        started,
        "kill {kill}: the run ended without announcing a migration"
    );
    let after = rand::thread_rng().gen_range(after);
    tokio::time::sleep(std::time::Duration::from_millis(after)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "kill {kill}: the migration ended before the kill"
    );
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    after
}

/// `kill -9` at three moments of the migration (each once it has begun, at
/// a random point), then a run to the end: the old store is untouched by
/// every killed run, and the finished one answers every question with the
/// bytes schema 1 printed — every commit once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_killed_three_times_ends_exact() {
    let (_dir, store) = fixture_copy();
    let (records, schema) = old_layout(&store);
    assert!(
        records > 3000 && schema == 1u32.to_be_bytes(),
        "{records} {schema:?}"
    );
    std::thread::sleep(std::time::Duration::from_millis(100));
    for kill in 1..=3 {
        // A pause after each block of 100, so the migration of this small
        // store lasts long enough to be killed in the middle.
        let after = kill_mid_migration(&store, 25, "migrating the store", 30..300, kill).await;
        let work = store.join("migrating-v2");
        assert!(
            work.is_dir() && !work.join("COMPLETE").exists(),
            "kill {kill} after {after} ms: no half-built copy"
        );
        assert_eq!(
            old_layout(&store),
            (records, schema.clone()),
            "kill {kill}: the old store changed"
        );
    }
    check(
        &store,
        "export-all.ndjson",
        &["export", "--all", "--format", "ndjson"],
    )
    .await;
    assert!(
        !store.join("migrating-v2").exists(),
        "the copy's directory is left"
    );
    for (name, args) in [
        ("export.ndjson", &["export", "--format", "ndjson"][..]),
        (
            "commits-all.ndjson",
            &["query", "commits", "--all", "--format", "ndjson"],
        ),
        (
            "authors.ndjson",
            &["query", "authors", "--format", "ndjson"],
        ),
        (
            "authors-all.ndjson",
            &["query", "authors", "--all", "--format", "ndjson"],
        ),
    ] {
        check(&store, name, args).await;
    }
    let stats = stats_without_size(&run(&store, &["query", "stats", "--format", "json"]).await);
    assert_eq!(stats, stats_without_size(&expected("stats.json")));
    let id = std::fs::read_to_string(fixture().join("store-id")).unwrap();
    assert_eq!(
        std::fs::read_to_string(store.join("store-id")).unwrap(),
        id,
        "the store id changed"
    );
}

/// The swap of a finished copy, interrupted at each step, is finished by
/// the next open: the copy's data, never the old store's, never none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_swap_is_finished_by_the_next_open() {
    // A finished migration, to take its files as "the complete copy".
    let (_done_dir, done) = fixture_copy();
    run(&done, &["query", "stats"]).await;
    std::thread::sleep(std::time::Duration::from_millis(100));
    let sled_files = |dir: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n == "conf" || n == "db" || n == "blobs" || n.starts_with("snap."))
            .collect();
        v.sort();
        v
    };
    for (step, moved) in [
        ("COMPLETE", 0usize),
        ("OLD_REMOVED", 0),
        ("OLD_REMOVED", 1),
        ("OLD_REMOVED", 2),
    ] {
        let (_dir, store) = fixture_copy();
        let work = store.join("migrating-v2");
        copy_tree(&done, &work, &["store-id", ".migration.lock"]);
        std::fs::write(work.join("COMPLETE"), b"").unwrap();
        if step == "OLD_REMOVED" {
            for f in sled_files(&store) {
                let p = store.join(&f);
                if p.is_dir() {
                    std::fs::remove_dir_all(p).unwrap()
                } else {
                    std::fs::remove_file(p).unwrap()
                }
            }
            std::fs::write(work.join("OLD_REMOVED"), b"").unwrap();
            for f in sled_files(&work).into_iter().take(moved) {
                std::fs::rename(work.join(&f), store.join(&f)).unwrap();
            }
        }
        check(
            &store,
            "export-all.ndjson",
            &["export", "--all", "--format", "ndjson"],
        )
        .await;
        assert!(
            !work.exists(),
            "{step}/{moved}: the copy's directory is left"
        );
        assert_eq!(sled_files(&store), sled_files(&done), "{step}/{moved}");
    }
}

/// A migrated store says so once, then opens as schema 2 without a word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migration_is_announced_once_and_an_older_bbcrawl_is_refused_after() {
    let (_dir, store) = fixture_copy();
    let args = ["--store", store.to_str().unwrap(), "query", "stats"];
    let first = bbcrawl(store.parent().unwrap(), &args, &[]).await;
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    let err = stderr(&first);
    assert!(
        err.contains("migrating the store") && err.contains("schema 1 to schema 4"),
        "{err}"
    );
    assert!(err.contains("store migrated to schema 4"), "{err}");
    let second = bbcrawl(store.parent().unwrap(), &args, &[]).await;
    assert_eq!(second.status.code(), Some(0), "{}", stderr(&second));
    assert!(!stderr(&second).contains("migrat"), "{}", stderr(&second));
    std::thread::sleep(std::time::Duration::from_millis(100));
    let db = bbcrawl::store::sled_config(&store).open().unwrap();
    let schema = db.get(b"mschema").unwrap().expect("no mschema key");
    // A bbcrawl that knows only an older schema refuses a store of schema 4.
    assert_eq!(schema.as_ref(), 4u32.to_be_bytes(), "schema version");
}

#[test]
fn the_second_fixture_is_a_schema_2_store() {
    let (_dir, store) = fixture_copy_of(&fixture2());
    let db = bbcrawl::store::sled_config(&store).open().unwrap();
    let schema = db.get(b"mschema").unwrap().expect("no mschema key");
    assert_eq!(schema.as_ref(), 2u32.to_be_bytes(), "schema version");
    // Blocks and their summaries, postings; no schema-1 record.
    for prefix in [b"b", b"s", b"p"] {
        assert!(db.scan_prefix(prefix).count() > 30, "{prefix:?}");
    }
    assert_eq!(db.scan_prefix(b"c").count(), 0);
}

/// Whether `value` ends with the store's seal for `key` (CRC-32 of key and
/// value, little-endian).
fn seal_holds(key: &[u8], value: &[u8]) -> bool {
    let Some(n) = value.len().checked_sub(4) else {
        return false;
    };
    let mut h = crc32fast::Hasher::new();
    h.update(key);
    h.update(&value[..n]);
    h.finalize().to_le_bytes() == value[n..]
}

/// Schema 2 → 3 seals every value in place, in batches that record the
/// last key sealed. `kill -9` three times in the middle: each time the
/// store is still schema 2, every value up to the recorded key sealed and
/// every one after it not; then a run to the end answers with the bytes
/// schema 1 printed, and `store check` verifies every checksum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealing_a_schema_2_store_killed_three_times_ends_exact() {
    let (_dir, store) = fixture_copy_of(&fixture2());
    let keys = bbcrawl::store::sled_config(&store).open().unwrap().len();
    assert!(keys > 150, "{keys} keys: too few to kill in the middle");
    std::thread::sleep(std::time::Duration::from_millis(100));
    let mut sealed_before = 0;
    for kill in 1..=3 {
        // 10 keys a batch, 60 ms after each.
        let after = kill_mid_migration(&store, 60, "schema 2 to schema 3", 150..400, kill).await;
        let db = bbcrawl::store::sled_config(&store).open().unwrap();
        assert_eq!(
            db.get(b"mschema").unwrap().unwrap().as_ref(),
            2u32.to_be_bytes()
        );
        let upto = db
            .get(b"msealed_upto")
            .unwrap()
            .unwrap_or_else(|| panic!("kill {kill} after {after} ms: no batch landed"));
        let mut sealed = 0;
        for kv in db.iter() {
            let (k, v) = kv.unwrap();
            if k.as_ref() == b"mschema" || k.as_ref() == b"msealed_upto" {
                continue;
            }
            let done = k <= upto;
            assert_eq!(
                seal_holds(&k, &v),
                done,
                "kill {kill}: {:?} (sealed up to {:?})",
                String::from_utf8_lossy(&k),
                String::from_utf8_lossy(&upto)
            );
            sealed += usize::from(done);
        }
        assert!(sealed > sealed_before, "kill {kill}: no progress");
        sealed_before = sealed;
        drop(db);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        sealed_before < keys,
        "sealed everything before the last kill"
    );
    check(
        &store,
        "export-all.ndjson",
        &["export", "--all", "--format", "ndjson"],
    )
    .await;
    check(&store, "export.csv", &["export", "--format", "csv"]).await;
    // Schema 4's feed, filled in at the same open: one `commit_stored` per
    // stored commit, seqs from 1.
    let feed = run(&store, &["export", "--changes"]).await;
    let all = expected("export-all.ndjson");
    assert_eq!(
        feed.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .count(),
        all.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count()
    );
    assert!(feed.starts_with(b"{\"feed\":1,\"seq\":1,\"kind\":\"commit_stored\""));
    let o = bbcrawl(
        store.parent().unwrap(),
        &["--store", store.to_str().unwrap(), "store", "check"],
        &[],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    std::thread::sleep(std::time::Duration::from_millis(100));
    let db = bbcrawl::store::sled_config(&store).open().unwrap();
    assert_eq!(
        db.get(b"mschema").unwrap().unwrap().as_ref(),
        4u32.to_be_bytes()
    );
    assert!(db.get(b"msealed_upto").unwrap().is_none());
}
