//! The real binary against a second, deliberately different fake of the
//! Bitbucket API, written here from `shared/bitbucket-api.md` alone and not
//! sharing code with the simulator: numeric `page=N` links whose order of
//! parameters differs from ours (some relative: path and query in the
//! listing, query alone for one repository), pages of its own size whatever
//! `pagelen` says, `fields` ignored (full objects with unknown keys), no
//! `size` or `pagelen` in the envelope but `page`, a repository without
//! `slug`, one without the `mainbranch` key, one without `updated_on`, a branch with `/`, dates in `Z`,
//! with fractions, with offsets and without any, authors without accounts
//! and commits without committers, a `mainbranch` whose commits answer 404
//! naming the branch, an HTML 502 from a "proxy", a `text/plain` 429 with
//! `Retry-After`, and a 404 for an `exclude` a force push removed.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::util::*;

/// Items per page, whatever the client asks for.
const REPO_PAGE: usize = 2;
const COMMIT_PAGE: usize = 7;

struct FakeCommit {
    hash: String,
    date: String,
    raw: String,
    account: Option<&'static str>,
    committer: bool,
    message: String,
}

struct FakeRepo {
    uuid: String,
    slug: &'static str,
    send_slug: bool,
    branch: Option<&'static str>,
    updated_on: String,
    /// Oldest first; history is linear (each commit's parent is the one before).
    commits: Vec<FakeCommit>,
    /// Commits a force push removed: unknown to `exclude` from then on.
    gone: HashSet<String>,
    /// Whether the listing carries `updated_on`.
    send_updated: bool,
    /// `mainbranch` names a branch that has no ref yet (an empty repository
    /// as some servers report it): its commits answer 404 naming it.
    branch_missing: bool,
}

#[derive(Default)]
struct Fake {
    repos: Vec<FakeRepo>,
    /// Requests seen: method, path (raw) and query.
    log: Vec<(String, String, String)>,
    /// Paths (decoded) answered 502 once already.
    failed_once: HashSet<String>,
    commit_requests: usize,
    sent_429: bool,
    counter: u64,
}

impl Fake {
    fn make_commit(&mut self, repo: &str) -> FakeCommit {
        self.counter += 1;
        let n = self.counter;
        let hash = format!("{:040x}", 0x5eed_0000_0000_u64 + n * 7919);
        // Dates in three spellings, not monotonic.
        let minute = (n * 37) % 60;
        let date = match n % 4 {
            0 => format!("2024-05-{:02}T10:{minute:02}:00Z", 1 + n % 27),
            1 => format!("2024-05-{:02}T11:{minute:02}:07.250000+00:00", 1 + n % 27),
            2 => format!("2024-05-{:02}T15:{minute:02}:30+05:30", 1 + n % 27),
            // No offset at all, as `datetime.utcnow().isoformat()` writes it.
            _ => format!("2024-05-{:02}T09:{minute:02}:45.500000", 1 + n % 27),
        };
        let (raw, account) = match n % 4 {
            0 => ("Zoë Ångström <zoe@example.com>".to_owned(), Some("{0b1c}")),
            1 => ("ci-bot".to_owned(), None),
            2 => ("Jane Doe <jane@example.com>".to_owned(), Some("{9a8b}")),
            _ => ("Nobody <nobody@unknown.example>".to_owned(), None),
        };
        FakeCommit {
            hash,
            date,
            raw,
            account,
            committer: !n.is_multiple_of(5),
            message: format!("{repo}: change {n} ✓\n\nbody line with \"quotes\", commas\ttabs"),
        }
    }

    fn grow(&mut self, idx: usize, n: usize) {
        let slug = self.repos[idx].slug;
        for _ in 0..n {
            let c = self.make_commit(slug);
            self.repos[idx].commits.push(c);
        }
        self.counter += 1;
        self.repos[idx].updated_on =
            format!("2024-06-{:02}T12:00:00.123456+00:00", self.counter % 28 + 1);
    }

    fn new() -> Fake {
        let mut f = Fake::default();
        let specs: [(&str, bool, Option<&str>, usize); 7] = [
            ("alpha", true, Some("main"), 20),
            ("beta", false, Some("release/v1"), 9),
            ("gamma", true, None, 0),
            ("delta", true, Some("main"), 0),
            ("epsilon", true, Some("trunk"), 15),
            ("zeta", true, Some("main"), 0),
            ("eta", true, Some("main"), 3),
        ];
        for (i, (slug, send_slug, branch, n)) in specs.into_iter().enumerate() {
            f.repos.push(FakeRepo {
                uuid: format!("{{00000000-0000-4000-8000-00000000000{i}}}"),
                slug,
                send_slug,
                branch,
                updated_on: String::new(),
                commits: Vec::new(),
                gone: HashSet::new(),
                branch_missing: slug == "zeta",
                send_updated: slug != "eta",
            });
            f.grow(i, n);
        }
        f
    }

    fn repo_json(&self, r: &FakeRepo, origin: &str) -> Value {
        let mut v = json!({
            "type": "repository",
            "uuid": r.uuid,
            "full_name": format!("{WS}/{}", r.slug),
            "name": r.slug.to_uppercase(),
            "is_private": true,
            "size": 33_280,
            "some_future_field": {"nested": [1, 2, 3]},
            "links": {"self": {"href": format!("{origin}/2.0/repositories/{WS}/{}", r.slug)}},
        });
        if r.send_slug {
            v["slug"] = json!(r.slug);
        }
        if r.send_updated {
            v["updated_on"] = json!(r.updated_on);
        }
        if let Some(b) = r.branch {
            v["mainbranch"] = json!({"type": "branch", "name": b});
        }
        v
    }

    fn commit_json(c: &FakeCommit, parent: Option<&FakeCommit>) -> Value {
        let mut author = json!({"type": "author", "raw": c.raw});
        if let Some(acc) = c.account {
            author["user"] = json!({
                "type": "user", "display_name": c.raw.split(" <").next(), "uuid": acc,
                "account_id": format!("5b{}", acc.trim_matches(|ch| ch == '{' || ch == '}')),
                "nickname": "nick", "links": {"avatar": {"href": "https://avatar.example/x"}},
            });
        }
        let mut v = json!({
            "type": "commit",
            "hash": c.hash,
            "date": c.date,
            "author": author,
            "message": c.message,
            "summary": {"type": "rendered", "raw": c.message, "markup": "markdown", "html": "<p>x</p>"},
            "parents": parent.map(|p| vec![json!({"type": "commit", "hash": p.hash, "links": {}})]).unwrap_or_default(),
            "links": {"self": {"href": "https://elsewhere.example/not-followed"}},
            "unknown_extra": null,
        });
        if c.committer {
            v["committer"] = json!({"type": "committer", "raw": "Git Hub <noreply@example.com>"});
        }
        v
    }
}

type Shared = Arc<Mutex<Fake>>;

fn json_response(status: StatusCode, v: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn not_found(message: &str, data: Option<Value>) -> Response {
    let mut err = json!({"message": message});
    if let Some(d) = data {
        err["data"] = d;
    }
    json_response(
        StatusCode::NOT_FOUND,
        &json!({"type": "error", "error": err}),
    )
}

/// `?page=N&rest…` as the next link, the page number first: absolute with
/// an origin, path and query with `origin` "", the query alone with "?".
fn next_link(origin: &str, path: &str, query: &[(String, String)], page: usize) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    q.append_pair("page", &page.to_string());
    for (k, v) in query.iter().filter(|(k, _)| k != "page") {
        q.append_pair(k, v);
    }
    match origin {
        "?" => format!("?{}", q.finish()),
        _ => format!("{origin}{path}?{}", q.finish()),
    }
}

async fn handle(State(fake): State<Shared>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let raw_query = req.uri().query().unwrap_or("").to_owned();
    let origin = format!(
        "http://{}",
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("127.0.0.1")
    );
    let query: Vec<(String, String)> = url::form_urlencoded::parse(raw_query.as_bytes())
        .into_owned()
        .collect();
    let param = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let mut f = fake.lock().unwrap();
    f.log
        .push((req.method().to_string(), path.clone(), raw_query.clone()));
    if req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(&format!("Bearer {TOKEN}"))
    {
        return (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                "Basic realm=\"Bitbucket.org HTTP\"",
            )],
            "",
        )
            .into_response();
    }
    let segs: Vec<String> = path
        .split('/')
        .skip(1)
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let page: usize = param("page").and_then(|p| p.parse().ok()).unwrap_or(1);
    match segs
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["2.0", "repositories", ws] if *ws == WS => {
            let all: Vec<Value> = f.repos.iter().map(|r| f.repo_json(r, &origin)).collect();
            let start = (page - 1) * REPO_PAGE;
            let mut body = json!({
                "page": page,
                "values": all.iter().skip(start).take(REPO_PAGE).collect::<Vec<_>>(),
            });
            if start + REPO_PAGE < all.len() {
                body["next"] = json!(next_link("", &path, &query, page + 1));
            }
            json_response(StatusCode::OK, &body)
        }
        ["2.0", "repositories", ws, slug, "commits", rev] if *ws == WS => {
            f.commit_requests += 1;
            // A proxy's HTML 502, once per path.
            if f.failed_once.insert(format!("{slug}/{rev}")) && *slug == "alpha" {
                return (
                    StatusCode::BAD_GATEWAY,
                    [(header::CONTENT_TYPE, "text/html")],
                    "<html><body><h1>502 Bad Gateway</h1></body></html>",
                )
                    .into_response();
            }
            if f.commit_requests == 4 && !f.sent_429 {
                f.sent_429 = true;
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    [
                        (header::CONTENT_TYPE, "text/plain"),
                        (header::RETRY_AFTER, "1"),
                    ],
                    "Rate limit for this resource has been exceeded",
                )
                    .into_response();
            }
            let Some(repo) = f.repos.iter().find(|r| r.slug == *slug) else {
                return not_found("Repository not found", None);
            };
            if repo.branch != Some(rev) || repo.branch_missing {
                return not_found("Commit not found", Some(json!({"shas": [rev]})));
            }
            // Newest first, stopping at an excluded commit (linear history).
            let mut stop = None;
            for (k, v) in &query {
                if k == "exclude" {
                    if repo.gone.contains(v) {
                        return not_found("Commit not found", Some(json!({"shas": [v]})));
                    }
                    match repo.commits.iter().position(|c| &c.hash == v) {
                        Some(p) => stop = Some(stop.map_or(p, |s: usize| s.max(p))),
                        None => return not_found("Commit not found", Some(json!({"shas": [v]}))),
                    }
                }
            }
            let from = stop.map_or(0, |p| p + 1);
            let walk: Vec<usize> = (from..repo.commits.len()).rev().collect();
            let start = (page - 1) * COMMIT_PAGE;
            let values: Vec<Value> = walk
                .iter()
                .skip(start)
                .take(COMMIT_PAGE)
                .map(|&i| {
                    let parent = i.checked_sub(1).map(|p| &repo.commits[p]);
                    Fake::commit_json(&repo.commits[i], parent)
                })
                .collect();
            let mut body = json!({"page": page, "values": values});
            if start + COMMIT_PAGE < walk.len() {
                // beta's links are relative to the page, the others absolute.
                let base = if *slug == "beta" {
                    "?"
                } else {
                    origin.as_str()
                };
                body["next"] = json!(next_link(base, &path, &query, page + 1));
            }
            json_response(StatusCode::OK, &body)
        }
        _ => not_found("Resource not found", None),
    }
}

async fn serve_fake(fake: Shared) -> String {
    let app = axum::Router::new().fallback(handle).with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app.into_make_service()).await;
    });
    format!("http://{addr}/2.0")
}

/// What the fake holds: (repository slug, hash) → (date, reachable).
fn truth(f: &Fake) -> BTreeMap<(String, String), (String, bool)> {
    let mut out = BTreeMap::new();
    for r in &f.repos {
        for c in &r.commits {
            out.insert((r.slug.to_owned(), c.hash.clone()), (c.date.clone(), true));
        }
    }
    out
}

fn stored(store: &std::path::Path) -> BTreeMap<(String, String), (String, bool)> {
    let records = store_records(store);
    let mut out = BTreeMap::new();
    for r in &records {
        let dup = out.insert(
            (r.repo.clone(), r.hash.clone()),
            (r.date.to_rfc3339(), r.reachable),
        );
        assert!(dup.is_none(), "stored twice: {} {}", r.repo, r.hash);
    }
    out
}

/// The same instant and offset, whatever the spelling (`Z`, fractions; no
/// offset means UTC).
fn same_date(a: &str, b: &str) -> bool {
    let parse = bbcrawl::bitbucket::models::dates::parse;
    let (a, b) = (parse(a).unwrap(), parse(b).unwrap());
    a == b && a.offset() == b.offset()
}

fn assert_matches(store: &std::path::Path, want: &BTreeMap<(String, String), (String, bool)>) {
    let got = stored(store);
    let keys =
        |m: &BTreeMap<(String, String), (String, bool)>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        keys(&got),
        keys(want),
        "stored commits differ from the fake's"
    );
    for (k, (date, reachable)) in want {
        let (gd, gr) = &got[k];
        assert!(same_date(gd, date), "{k:?}: stored {gd}, fake {date}");
        assert_eq!(gr, reachable, "{k:?} reachable");
    }
}

#[tokio::test]
async fn another_fake_with_its_own_quirks_is_crawled_exactly() {
    let fake: Shared = Arc::new(Mutex::new(Fake::new()));
    let api = serve_fake(Arc::clone(&fake)).await;
    let (_dir, store) = fresh_store();

    let out = sync(&store, &api, &[], RARE_AUDITS).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let want = truth(&fake.lock().unwrap());
    assert_eq!(want.len(), 20 + 9 + 15 + 3);
    assert_matches(&store, &want);

    // Repository records: the slug from `full_name`, the branch with `/`,
    // a missing `mainbranch` meaning no commits (and no commit request).
    let repos = store_repos(&store);
    let beta = repos.iter().find(|r| r.uuid.ends_with("01}")).unwrap();
    assert_eq!(beta.slug, "beta");
    let status = |slug: &str| {
        repos
            .iter()
            .find(|r| r.slug == slug)
            .map(|r| r.status)
            .unwrap()
    };
    // No mainbranch, an empty branch, and a mainbranch without a ref yet
    // (404 naming the revision) are all empty — not deleted, not failed.
    for slug in ["gamma", "delta", "zeta"] {
        assert_eq!(status(slug), bbcrawl::record::RepoStatus::Empty, "{slug}");
    }
    assert!(stdout(&out).contains("0 deleted"), "{}", stdout(&out));
    {
        let f = fake.lock().unwrap();
        assert!(f.sent_429, "the 429 was never triggered");
        assert!(
            !f.log.iter().any(|(_, p, _)| p.contains("/gamma/")),
            "a repository without mainbranch has no commits to ask for"
        );
        assert!(
            f.log
                .iter()
                .any(|(_, p, _)| p.contains("/beta/commits/release%2Fv1")),
            "the branch is one percent-encoded segment: {:?}",
            f.log
        );
    }

    // `verify` reads the same listing (paging it: no `size` to count by,
    // relative links) and one page of commits.
    let v = bbcrawl(
        store.parent().unwrap(),
        &["verify", "--format", "json"],
        &[
            ("BBCRAWL_API_URL", api.as_str()),
            ("BBCRAWL_WORKSPACES", WS),
            ("BITBUCKET_ACCESS_TOKEN", TOKEN),
            ("BBCRAWL_REQUESTS_PER_HOUR", "1000000"),
        ],
    )
    .await;
    assert_eq!(v.status.code(), Some(0), "{}{}", stdout(&v), stderr(&v));
    let v: Value = serde_json::from_str(stdout(&v).trim()).unwrap();
    assert_eq!(v["ok"], json!(true));
    assert_eq!(v["workspaces"][0]["repositories"], json!(7));

    // Pushes: only the new commits are fetched, by `exclude`. eta's listing
    // has no `updated_on`, so nothing announces its push: it is checked on
    // every pass anyway.
    {
        let mut f = fake.lock().unwrap();
        f.grow(0, 5);
        f.grow(6, 2);
        f.log.clear();
    }
    let out = sync(&store, &api, &[], RARE_AUDITS).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let want = truth(&fake.lock().unwrap());
    assert_matches(&store, &want);
    {
        let f = fake.lock().unwrap();
        let alpha: Vec<_> = f
            .log
            .iter()
            .filter(|(_, p, _)| p.contains("/alpha/commits/"))
            .collect();
        assert!(
            !alpha.is_empty() && alpha.iter().all(|(_, _, q)| q.contains("exclude=")),
            "{alpha:?}"
        );
        assert!(
            !f.log.iter().any(|(_, p, _)| p.contains("/epsilon/")),
            "unchanged repositories are skipped"
        );
    }

    // A force push: the old head is gone (`exclude` answers 404), so the
    // crawler walks again; the dropped commits stay stored, unreachable.
    let dropped: Vec<String> = {
        let mut f = fake.lock().unwrap();
        let eps = &mut f.repos[4];
        let dropped: Vec<FakeCommit> = eps.commits.split_off(12);
        let hashes: Vec<String> = dropped.iter().map(|c| c.hash.clone()).collect();
        eps.gone.extend(hashes.iter().cloned());
        f.grow(4, 4);
        hashes
    };
    let out = sync(&store, &api, &[], RARE_AUDITS).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let mut want = truth(&fake.lock().unwrap());
    let got = stored(&store);
    for h in &dropped {
        let key = ("epsilon".to_owned(), h.clone());
        let (date, _) = got
            .get(&key)
            .expect("a force-pushed-away commit stays stored")
            .clone();
        want.insert(key, (date, false));
    }
    assert_matches(&store, &want);

    // And the CLI reads it back: every commit once, dates with their offsets.
    let store_s = store.to_string_lossy().into_owned();
    let q = bbcrawl(
        store.parent().unwrap(),
        &["query", "commits", "--format", "ndjson", "--limit", "1000"],
        &[("BBCRAWL_STORE", store_s.as_str())],
    )
    .await;
    assert_eq!(q.status.code(), Some(0), "{}", stderr(&q));
    let lines: Vec<Value> = parse_ndjson(&stdout(&q));
    let reachable = want.values().filter(|(_, r)| *r).count();
    assert_eq!(
        lines.len(),
        reachable,
        "without --all only reachable commits"
    );
    let offset_kept = lines
        .iter()
        .any(|l| l["date"].as_str().is_some_and(|d| d.ends_with("+05:30")));
    assert!(offset_kept, "a +05:30 date lost its offset");
}
