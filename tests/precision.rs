//! Dates finer than a millisecond (issue 11): a commit Bitbucket dates
//! `…07.123456+02:00` is stored, and printed by `export`, `query`, `show`
//! and the daemon's query API, with those digits and that offset;
//! `--since`/`--until` compare whole instants and the newest-first order
//! holds inside one millisecond. A tiny fake of the API of our own, so the
//! simulator's outputs stay as they are.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::util::*;

/// One commit of the fake: its hash, the date as Bitbucket sends it, and
/// how our JSON (serde: `Z` for UTC) and text (csv, table, `show`) outputs
/// spell it.
struct Dated {
    hash: String,
    sent: &'static str,
    json: &'static str,
    text: &'static str,
}

fn hash(digit: char) -> String {
    std::iter::repeat_n(digit, 40).collect()
}

/// Oldest first (a linear history). Three commits share one millisecond
/// (09:37:07.123 UTC); their hashes ascend as their instants do, so an
/// order by millisecond then hash would list them oldest first.
fn history() -> Vec<Dated> {
    vec![
        Dated {
            hash: hash('4'),
            sent: "2024-05-01T12:00:00+00:00",
            json: "2024-05-01T12:00:00+00:00",
            text: "2024-05-01T12:00:00+00:00",
        },
        Dated {
            hash: hash('5'),
            sent: "2024-05-01T08:00:00.250000-07:00",
            json: "2024-05-01T08:00:00.250-07:00",
            text: "2024-05-01T08:00:00.250-07:00",
        },
        Dated {
            hash: hash('1'),
            sent: "2024-05-01T09:37:07.1231+00:00",
            json: "2024-05-01T09:37:07.123100+00:00",
            text: "2024-05-01T09:37:07.123100+00:00",
        },
        Dated {
            hash: hash('2'),
            sent: "2024-05-01T11:37:07.123456+02:00",
            json: "2024-05-01T11:37:07.123456+02:00",
            text: "2024-05-01T11:37:07.123456+02:00",
        },
        Dated {
            hash: hash('3'),
            sent: "2024-05-01T12:37:07.123999999+03:00",
            json: "2024-05-01T12:37:07.123999999+03:00",
            text: "2024-05-01T12:37:07.123999999+03:00",
        },
    ]
}

/// The commit dated `…07.123456+02:00`.
fn target() -> String {
    hash('2')
}

/// Newest first by instant: 15:00:00.25Z, 12:00:00Z, then the three in
/// 09:37:07.123 UTC from the latest.
fn newest_first() -> Vec<String> {
    ['5', '4', '3', '2', '1'].into_iter().map(hash).collect()
}

fn commit_json(c: &Dated, parent: Option<&Dated>) -> Value {
    json!({
        "type": "commit",
        "hash": c.hash,
        "date": c.sent,
        "author": {"type": "author", "raw": "Jane Doe <jane@example.com>"},
        "message": format!("change {}", &c.hash[..1]),
        "parents": parent.map(|p| vec![json!({"type": "commit", "hash": p.hash})]).unwrap_or_default(),
    })
}

/// The fake API: one repository, `clock`, whose `main` is [`history`].
async fn handle(State(commits): State<Arc<Vec<Dated>>>, req: Request) -> Response {
    let json_ok = |v: Value| {
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            v.to_string(),
        )
            .into_response()
    };
    let path = req.uri().path();
    if path == format!("/2.0/repositories/{WS}") {
        return json_ok(json!({"values": [{
            "type": "repository",
            "uuid": "{00000000-0000-4000-8000-0000000000c1}",
            "slug": "clock",
            "full_name": format!("{WS}/clock"),
            "mainbranch": {"type": "branch", "name": "main"},
            "updated_on": "2024-05-01T12:37:08.000001+00:00",
        }]}));
    }
    if path == format!("/2.0/repositories/{WS}/clock/commits/main") {
        let excluded: Vec<String> =
            url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                .filter(|(k, _)| k == "exclude")
                .map(|(_, v)| v.into_owned())
                .collect();
        // Newest first, down to the first excluded commit (linear history).
        let values: Vec<Value> = (0..commits.len())
            .rev()
            .take_while(|&i| !excluded.contains(&commits[i].hash))
            .map(|i| commit_json(&commits[i], i.checked_sub(1).map(|p| &commits[p])))
            .collect();
        return json_ok(json!({ "values": values }));
    }
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"type": "error", "error": {"message": "Resource not found"}}).to_string(),
    )
        .into_response()
}

async fn serve_fake() -> String {
    let app = axum::Router::new()
        .fallback(handle)
        .with_state(Arc::new(history()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app.into_make_service()).await;
    });
    format!("http://{addr}/2.0")
}

/// A store the real binary synced from the fake.
pub(crate) async fn crawled() -> (String, tempfile::TempDir, PathBuf) {
    let api = serve_fake().await;
    let (dir, store) = fresh_store();
    let out = sync(&store, &api, &[], RARE_AUDITS).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    (api, dir, store)
}

/// `bbcrawl --store STORE ARGS…`: its standard output (exit 0 asserted).
async fn ask(store: &Path, args: &[&str]) -> String {
    let mut all = vec!["--store", store.to_str().unwrap()];
    all.extend_from_slice(args);
    let o = bbcrawl(store.parent().unwrap(), &all, &[("COLUMNS", "200")]).await;
    assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
    stdout(&o)
}

/// Hashes and dates of a JSON array of commit records, in print order.
fn hashes_and_dates(records: &Value) -> Vec<(String, String)> {
    records
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {records}"))
        .iter()
        .map(|r| {
            (
                r["hash"].as_str().unwrap().to_owned(),
                r["date"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The fake's commits newest first, with their JSON spelling.
fn want_json(hashes: &[String]) -> Vec<(String, String)> {
    let by_hash: BTreeMap<String, &'static str> =
        history().into_iter().map(|c| (c.hash, c.json)).collect();
    hashes
        .iter()
        .map(|h| (h.clone(), by_hash[h].to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_millisecond_dates_print_with_the_digits_and_offset_bitbucket_sent() {
    let (_api, _dir, store) = crawled().await;
    let t = target();

    // export: one line per commit, each date as sent (same instant, same
    // offset, the fraction in groups of three digits).
    let mut exported: Vec<(String, String)> =
        parse_ndjson::<Value>(&ask(&store, &["export"]).await)
            .iter()
            .map(|r| {
                (
                    r["hash"].as_str().unwrap().to_owned(),
                    r["date"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
    exported.sort();
    let mut all = want_json(&newest_first());
    all.sort();
    assert_eq!(exported, all, "export");

    // query commits: the same dates, newest first by instant even inside
    // one millisecond.
    let q: Value =
        serde_json::from_str(&ask(&store, &["query", "commits", "--format", "json"]).await)
            .unwrap();
    assert_eq!(
        hashes_and_dates(&q),
        want_json(&newest_first()),
        "query commits"
    );

    // csv, table and show print the text spelling (`+00:00`, not `Z`).
    let csv = ask(&store, &["query", "commits", "--format", "csv"]).await;
    for c in history() {
        // The hash column, then the date column.
        let cells = format!(",{},{},", c.hash, c.text);
        assert!(csv.contains(&cells), "{cells} not in the csv:\n{csv}");
    }
    let table = ask(&store, &["query", "commits", "--format", "table"]).await;
    assert!(
        table.contains("2024-05-01T11:37:07.123456+02:00"),
        "{table}"
    );
    let shown: Value =
        serde_json::from_str(&ask(&store, &["show", &t, "--format", "json"]).await).unwrap();
    assert_eq!(
        hashes_and_dates(&shown),
        vec![(t.clone(), "2024-05-01T11:37:07.123456+02:00".to_owned())],
        "show --format json"
    );
    let text = ask(&store, &["show", &t]).await;
    assert!(
        text.lines()
            .any(|l| l.starts_with("date") && l.ends_with(" 2024-05-01T11:37:07.123456+02:00")),
        "show:\n{text}"
    );
}

/// The hashes `query commits --format json ARGS…` prints, in order.
async fn commit_hashes(store: &Path, args: Vec<&str>) -> Vec<String> {
    let mut all = vec!["query", "commits", "--format", "json"];
    all.extend(args);
    let v: Value = serde_json::from_str(&ask(store, &all).await).unwrap();
    hashes_and_dates(&v).into_iter().map(|(h, _)| h).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_and_until_compare_instants_finer_than_a_millisecond() {
    let (_api, _dir, store) = crawled().await;
    let hashes = |args: Vec<&'static str>| commit_hashes(&store, args);
    let h = |digits: &str| digits.chars().map(hash).collect::<Vec<_>>();
    // The target's own instant, in another offset: `--since` includes it.
    let at = "2024-05-01T09:37:07.123456Z";
    let just_after = "2024-05-01T10:37:07.123457+01:00";
    assert_eq!(hashes(vec!["--since", at]).await, h("5432"), "--since {at}");
    assert_eq!(
        hashes(vec!["--since", just_after]).await,
        h("543"),
        "--since {just_after}"
    );
    // `--until` excludes its own instant.
    assert_eq!(hashes(vec!["--until", at]).await, h("1"), "--until {at}");
    assert_eq!(
        hashes(vec!["--until", just_after]).await,
        h("21"),
        "--until {just_after}"
    );
    assert_eq!(
        hashes(vec!["--since", at, "--until", just_after]).await,
        h("2"),
        "the one-microsecond window"
    );
    // The author filter takes another index; the answer is the same.
    assert_eq!(
        hashes(vec![
            "--since", at, "--until", just_after, "--author", "jane"
        ])
        .await,
        h("2"),
        "with --author"
    );

    // query authors counts the same commits, whichever way it reads them.
    for extra in [vec![], vec!["--author", "jane"]] {
        let mut args = vec![
            "query", "authors", "--format", "json", "--since", at, "--until", just_after,
        ];
        args.extend(extra.iter().copied());
        let v: Value = serde_json::from_str(&ask(&store, &args).await).unwrap();
        assert_eq!(v.as_array().map(Vec::len), Some(1), "{args:?}: {v}");
        assert_eq!(v[0]["commits"], 1, "{args:?}: {v}");
    }
}

/// `bbcrawl run` on `store`, polled until its address file is written and
/// its first pass is over; killed when dropped.
async fn start_daemon(store: &Path, api: &str) -> (tokio::process::Child, String) {
    let dir = store.parent().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_bbcrawl"))
        .current_dir(dir)
        .arg("run")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("BBCRAWL_API_URL", api)
        .env("BBCRAWL_WORKSPACES", WS)
        .env("BITBUCKET_ACCESS_TOKEN", TOKEN)
        .env("BBCRAWL_STORE", store)
        .env("BBCRAWL_LISTEN", "127.0.0.1:0")
        .env("BBCRAWL_INTERVAL_SECONDS", "3600")
        .env("BBCRAWL_REQUESTS_PER_HOUR", "1000000")
        .env("BBCRAWL_AUDIT_INTERVAL_SECONDS", "31536000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("cannot start bbcrawl run");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(text) = std::fs::read_to_string(store.join("daemon.json")) {
            if let Ok(v) = serde_json::from_str::<Value>(&text) {
                let base = format!("http://{}", v["addr"].as_str().unwrap());
                if let Ok(r) = reqwest::get(format!("{base}/healthz")).await {
                    if r.status() == 200 {
                        return (child, base);
                    }
                }
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("bbcrawl run exited: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "the daemon was not healthy in 15 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_query_api_keeps_sub_millisecond_dates_and_bounds() {
    let (api, _dir, store) = crawled().await;
    let (_daemon, base) = start_daemon(&store, &api).await;
    let get = |path: String| {
        let url = format!("{base}{path}");
        async move {
            let r = reqwest::get(&url).await.unwrap();
            assert_eq!(r.status(), 200, "{url}");
            serde_json::from_str::<Value>(&r.text().await.unwrap()).unwrap()
        }
    };
    let t = target();
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let since = enc("2024-05-01T11:37:07.123456+02:00");
    let got = get(format!("/api/v1/commits?since={since}&format=json")).await;
    assert_eq!(
        hashes_and_dates(&got),
        want_json(
            &['5', '4', '3', '2']
                .into_iter()
                .map(hash)
                .collect::<Vec<_>>()
        ),
        "/api/v1/commits?since=…"
    );
    let shown = get(format!("/api/v1/show/{t}")).await;
    assert_eq!(
        hashes_and_dates(&shown),
        vec![(t.clone(), "2024-05-01T11:37:07.123456+02:00".to_owned())],
        "/api/v1/show"
    );
    // The CLI asks the daemon that holds the store, passing the bound on.
    let until = "2024-05-01T09:37:07.123457Z";
    let remote: Value = serde_json::from_str(
        &ask(
            &store,
            &["query", "commits", "--format", "json", "--until", until],
        )
        .await,
    )
    .unwrap();
    assert_eq!(
        hashes_and_dates(&remote),
        want_json(&[hash('2'), hash('1')]),
        "query commits --until {until} through the daemon"
    );
}
