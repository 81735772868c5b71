//! The simulator on its own: it must behave like the real Bitbucket API.

use std::time::Duration;

use bbcrawl::simulator::*;
use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::util::{branch_hashes, serve};

const TOKEN: &str = "t-access";
const WS: &str = "acme";

/// An empty simulator (no rate limit) with workspace `acme` and an access token for it.
fn sim_with(opts: SimOptions) -> Simulator {
    let sim = Simulator::new(opts);
    sim.add_workspace(WS);
    sim.add_credential(SimCredential::AccessToken {
        token: TOKEN.into(),
        scopes: vec!["repository".into()],
        workspaces: vec![WS.into()],
    });
    sim
}

fn sim() -> Simulator {
    sim_with(SimOptions {
        requests_per_hour: 0,
        ..SimOptions::default()
    })
}

struct Reply {
    status: u16,
    headers: HeaderMap,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
}

async fn send(req: reqwest::RequestBuilder) -> Reply {
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    Reply {
        status,
        headers,
        text,
    }
}

async fn get(url: &str) -> Reply {
    send(reqwest::Client::new().get(url).bearer_auth(TOKEN)).await
}

/// Follows `next` links from `url`, returning every page body.
async fn pages(url: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut next = Some(url.to_owned());
    while let Some(u) = next {
        let r = get(&u).await;
        assert_eq!(r.status, 200, "{u}: {}", r.text);
        let v = r.json();
        next = v.get("next").and_then(Value::as_str).map(str::to_owned);
        out.push(v);
        assert!(out.len() < 10_000, "runaway paging");
    }
    out
}

fn hashes(pages: &[Value]) -> Vec<String> {
    pages
        .iter()
        .flat_map(|p| p["values"].as_array().unwrap().iter())
        .map(|c| c["hash"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn listing_250_repos_over_three_pages() {
    let sim = sim();
    for i in 0..250 {
        sim.add_repo(WS, RepoSpec::new(&format!("repo-{i:03}"), 1));
    }
    let srv = serve(&sim).await;
    let pages = pages(&format!("{}/repositories/{WS}?pagelen=100", srv.api_url())).await;
    assert_eq!(pages.len(), 3);
    let sizes: Vec<usize> = pages
        .iter()
        .map(|p| p["values"].as_array().unwrap().len())
        .collect();
    assert_eq!(sizes, vec![100, 100, 50]);
    assert_eq!(pages[0]["size"], 250);
    assert_eq!(pages[2]["page"], 3);
    assert!(pages[2].get("next").is_none());
    let uuids: Vec<&str> = pages
        .iter()
        .flat_map(|p| p["values"].as_array().unwrap().iter())
        .map(|r| r["uuid"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = sim.repos(WS).into_iter().map(|r| r.uuid).collect();
    assert_eq!(uuids, expected);
    let first = &pages[0]["values"][0];
    assert_eq!(first["type"], "repository");
    assert_eq!(first["full_name"], "acme/repo-000");
    assert_eq!(first["mainbranch"]["name"], "main");
    assert!(first["size"].as_u64().unwrap() > 30_000);
    // Default page size 10; far above 100 is clamped.
    assert_eq!(
        get(&format!("{}/repositories/{WS}", srv.api_url()))
            .await
            .json()["values"]
            .as_array()
            .unwrap()
            .len(),
        10
    );
    let big = get(&format!("{}/repositories/{WS}?pagelen=500", srv.api_url()))
        .await
        .json();
    assert_eq!(big["pagelen"], 100);
}

#[tokio::test]
async fn commit_paging_returns_branch_commits_in_order() {
    let sim = sim();
    sim.add_repo(WS, RepoSpec::new("big", 1000));
    let srv = serve(&sim).await;
    let pages = pages(&format!(
        "{}/repositories/{WS}/big/commits/main?pagelen=100",
        srv.api_url()
    ))
    .await;
    assert_eq!(pages.len(), 10);
    for p in &pages {
        assert!(p["values"].as_array().unwrap().len() <= 100);
        assert!(p.get("size").is_none() && p.get("page").is_none() && p.get("previous").is_none());
        if let Some(next) = p.get("next") {
            let next = next.as_str().unwrap();
            assert!(
                next.starts_with(&srv.api_url()),
                "absolute next on own origin: {next}"
            );
            assert!(
                !next.contains("page=2"),
                "opaque token, not a page number: {next}"
            );
        }
    }
    let truth = sim.branch_commits(WS, "big");
    assert_eq!(
        hashes(&pages),
        truth.iter().map(|c| c.hash.clone()).collect::<Vec<_>>()
    );
    // Topological: every parent appears after its child.
    let pos: std::collections::HashMap<&str, usize> = truth
        .iter()
        .enumerate()
        .map(|(i, c)| (c.hash.as_str(), i))
        .collect();
    for (i, c) in truth.iter().enumerate() {
        for p in &c.parents {
            assert!(pos[p.as_str()] > i);
        }
    }
    assert!(truth.iter().any(|c| c.parents.len() == 2), "merges present");
    assert!(
        truth.windows(2).any(|w| w[1].date > w[0].date),
        "dates are not monotonic"
    );
    assert!(
        truth.iter().any(|c| c.date.offset().local_minus_utc() != 0),
        "some non-UTC offsets"
    );
    assert!(
        truth.iter().any(|c| c.author_user.is_none()),
        "some authors without account"
    );
    assert!(
        truth.iter().any(|c| c.committer_raw.is_none()),
        "some commits without committer"
    );
    assert!(
        truth.iter().any(|c| c.message.len() > 10_000),
        "some very long messages"
    );
    // Full payload by default; default pagelen 30.
    let first = get(&format!(
        "{}/repositories/{WS}/big/commits/main",
        srv.api_url()
    ))
    .await
    .json();
    assert_eq!(first["pagelen"], 30);
    assert_eq!(first["values"].as_array().unwrap().len(), 30);
    let c = &first["values"][0];
    assert_eq!(c["type"], "commit");
    assert_eq!(c["summary"]["markup"], "markdown");
    assert!(c["links"]["statuses"]["href"]
        .as_str()
        .unwrap()
        .starts_with("http://127.0.0.1:"));
    assert_eq!(c["repository"]["full_name"], "acme/big");
    assert_eq!(c["hash"].as_str().unwrap().len(), 40);
    // The single-commit endpoint.
    let one = get(&format!(
        "{}/repositories/{WS}/big/commit/{}",
        srv.api_url(),
        truth[5].hash
    ))
    .await;
    assert_eq!(one.json()["message"].as_str().unwrap(), truth[5].message);
}

#[tokio::test]
async fn exclude_old_head_returns_exactly_the_pushed_commits() {
    let sim = sim();
    sim.add_repo(WS, RepoSpec::new("r", 200));
    let srv = serve(&sim).await;
    let old = branch_hashes(&sim, WS, "r")[0].clone();
    let pushed = sim.push(WS, "r", 5);
    assert_eq!(pushed.len(), 5);
    assert_eq!(branch_hashes(&sim, WS, "r")[..5], pushed[..]);
    let url = format!(
        "{}/repositories/{WS}/r/commits/main?exclude={old}",
        srv.api_url()
    );
    assert_eq!(hashes(&pages(&url).await), pushed);
    // The same as a form POST.
    let r = send(
        reqwest::Client::new()
            .post(format!(
                "{}/repositories/{WS}/r/commits/main",
                srv.api_url()
            ))
            .bearer_auth(TOKEN)
            .form(&[("exclude", old.as_str())]),
    )
    .await;
    assert_eq!(hashes(&[r.json()]), pushed);
    // include= adds tips like `git log A B`: including the old head changes nothing.
    let url = format!(
        "{}/repositories/{WS}/r/commits/{}?include={old}&exclude={}",
        srv.api_url(),
        pushed[0],
        pushed[2]
    );
    assert_eq!(hashes(&pages(&url).await), pushed[..2].to_vec());
}

#[tokio::test]
async fn unknown_exclude_and_revision_answer_404() {
    let sim = sim();
    sim.add_repo(WS, RepoSpec::new("r", 10));
    let srv = serve(&sim).await;
    let bogus = "0123456789abcdef0123456789abcdef01234567";
    let r = get(&format!(
        "{}/repositories/{WS}/r/commits/main?exclude={bogus}",
        srv.api_url()
    ))
    .await;
    assert_eq!(r.status, 404);
    let v = r.json();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["message"], "Commit not found");
    assert_eq!(v["error"]["data"]["shas"][0], bogus);
    assert_eq!(
        get(&format!(
            "{}/repositories/{WS}/r/commits/nope",
            srv.api_url()
        ))
        .await
        .status,
        404
    );
    assert_eq!(
        get(&format!(
            "{}/repositories/{WS}/missing/commits/main",
            srv.api_url()
        ))
        .await
        .status,
        404
    );
    // Garbage or tampered page tokens are refused.
    let r = get(&format!(
        "{}/repositories/{WS}/r/commits/main?page=2",
        srv.api_url()
    ))
    .await;
    assert_eq!(
        (r.status, r.json()["error"]["message"].as_str()),
        (400, Some("Invalid page"))
    );
    let first = get(&format!(
        "{}/repositories/{WS}/r/commits/main?pagelen=3",
        srv.api_url()
    ))
    .await
    .json();
    let next = first["next"].as_str().unwrap();
    let tampered = format!("{}A{}", &next[..next.len() - 5], &next[next.len() - 4..]);
    let tampered = if tampered == next {
        format!("{next}x")
    } else {
        tampered
    };
    assert_eq!(get(&tampered).await.status, 400);
    assert_eq!(
        get(&format!("{}/nothing/here", srv.api_url())).await.status,
        404
    );
    assert_eq!(
        get(&format!("{}/workspaces", srv.api_url())).await.status,
        410
    );
    assert_eq!(
        get(&format!("{}/repositories", srv.api_url())).await.status,
        410
    );
}

#[tokio::test]
async fn fields_keep_only_remove_and_add() {
    let sim = sim();
    sim.add_repo(WS, RepoSpec::new("r", 50));
    let srv = serve(&sim).await;
    let base = format!(
        "{}/repositories/{WS}/r/commits/main?pagelen=10",
        srv.api_url()
    );
    let v = get(&format!("{base}&fields=values.hash,values.date,next"))
        .await
        .json();
    let keys: Vec<&String> = v["values"][0].as_object().unwrap().keys().collect();
    assert_eq!(keys, vec!["date", "hash"]);
    let next = v["next"].as_str().unwrap();
    assert!(
        next.contains("fields=values.hash%2Cvalues.date%2Cnext"),
        "{next}"
    );
    // Following next keeps the fields and the page size.
    let v2 = get(next).await.json();
    assert_eq!(v2["values"].as_array().unwrap().len(), 10);
    assert!(v2["values"][0].get("links").is_none());
    // Without `next` in the list the page loses its link.
    let v = get(&format!("{base}&fields=values.hash")).await.json();
    assert!(v.get("next").is_none());
    assert!(v["values"][0].get("summary").is_none());
    // Removal.
    let v = get(&format!("{base}&fields=-values.links,-values.summary"))
        .await
        .json();
    assert!(v["values"][0].get("links").is_none() && v["values"][0].get("summary").is_none());
    assert!(v["values"][0].get("message").is_some() && v.get("next").is_some());
    let v = get(&format!("{base}&fields=-values.links.*")).await.json();
    assert_eq!(v["values"][0]["links"], serde_json::json!({}));
    // Addition with %2B next to a keep-only list.
    let v = get(&format!("{base}&fields=values.hash,%2Bvalues.parents.hash"))
        .await
        .json();
    assert!(v["values"][0]["parents"].is_array());
    // The crawler's list on the repository listing.
    let url = format!(
        "{}/repositories/{WS}?fields={}",
        srv.api_url(),
        bbcrawl::bitbucket::models::REPOSITORY_FIELDS
    );
    let v = get(&url).await.json();
    assert_eq!(
        v["values"][0]["mainbranch"],
        serde_json::json!({"name": "main"})
    );
    assert!(v["values"][0].get("links").is_none() && v.get("size").is_none());
}

#[tokio::test]
async fn authentication_scopes_and_visibility() {
    let sim = sim();
    sim.add_workspace("other");
    sim.add_workspace("quiet");
    sim.add_repo("other", RepoSpec::new("x", 1));
    let all = vec![WS.to_owned(), "quiet".to_owned()];
    sim.add_credential(SimCredential::ApiToken {
        email: "dev@example.com".into(),
        token: "api-tok".into(),
        scopes: vec!["read:repository:bitbucket".into()],
        workspaces: all.clone(),
    });
    sim.add_credential(SimCredential::AppPassword {
        username: "dev".into(),
        password: "app-pw".into(),
        scopes: vec!["repository".into()],
        workspaces: all.clone(),
    });
    sim.add_credential(SimCredential::AccessToken {
        token: "noscope".into(),
        scopes: vec!["account".into()],
        workspaces: all.clone(),
    });
    sim.add_credential(SimCredential::ApiToken {
        email: "weak@example.com".into(),
        token: "weak".into(),
        scopes: vec!["read:account".into()],
        workspaces: all,
    });
    sim.add_repo(WS, RepoSpec::new("r", 3));
    let srv = serve(&sim).await;
    let url = format!("{}/repositories/{WS}", srv.api_url());
    let c = reqwest::Client::new();

    let r = send(c.get(&url)).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.headers["www-authenticate"],
        "Basic realm=\"Bitbucket.org HTTP\""
    );
    assert_eq!(r.json()["type"], "error");
    let r = send(c.get(&url).bearer_auth("api-tok")).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.json()["error"]["message"],
        "Token is invalid, expired, or not supported for this endpoint."
    );
    assert_eq!(
        send(c.get(&url).basic_auth("dev@example.com", Some("app-pw")))
            .await
            .status,
        401
    );
    assert_eq!(
        send(c.get(&url).basic_auth("dev", Some("wrong")))
            .await
            .status,
        401
    );

    let r = send(c.get(&url).basic_auth("dev@example.com", Some("api-tok"))).await;
    assert_eq!(r.status, 200);
    assert!(r.headers.get("x-ratelimit-limit").is_none());
    assert_eq!(
        send(c.get(&url).basic_auth("dev", Some("app-pw")))
            .await
            .status,
        200
    );

    let r = send(c.get(&url).bearer_auth("noscope")).await;
    assert_eq!(r.status, 403);
    let e = r.json();
    assert_eq!(
        e["error"]["message"],
        "Your credentials lack one or more required privilege scopes."
    );
    assert_eq!(
        e["error"]["detail"]["granted"],
        serde_json::json!(["account"])
    );
    assert_eq!(
        e["error"]["detail"]["required"],
        serde_json::json!(["repository"])
    );
    let r = send(c.get(&url).basic_auth("weak@example.com", Some("weak"))).await;
    assert_eq!(
        r.json()["error"]["detail"]["required"],
        serde_json::json!(["read:repository:bitbucket"])
    );

    // Invisible (exists, not granted) and non-existent workspaces both answer 404.
    assert_eq!(
        get(&format!("{}/repositories/other", srv.api_url()))
            .await
            .status,
        404
    );
    assert_eq!(
        get(&format!("{}/repositories/nowhere", srv.api_url()))
            .await
            .status,
        404
    );
    let r = send(
        c.get(format!("{}/repositories/quiet", srv.api_url()))
            .basic_auth("dev", Some("app-pw")),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["values"], serde_json::json!([]));
}

#[tokio::test]
async fn rate_limit_answers_429_in_text() {
    let sim = sim_with(SimOptions {
        requests_per_hour: 3,
        ..SimOptions::default()
    });
    sim.add_credential(SimCredential::ApiToken {
        email: "dev@example.com".into(),
        token: "api-tok".into(),
        scopes: vec!["read:repository:bitbucket".into()],
        workspaces: vec![WS.into()],
    });
    let srv = serve(&sim).await;
    let url = format!("{}/repositories/{WS}", srv.api_url());
    for i in 0..3 {
        let r = get(&url).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.headers["x-ratelimit-limit"], "3");
        assert!(r.headers.contains_key("x-ratelimit-resource"));
        let near = if i == 2 { "true" } else { "false" };
        assert_eq!(r.headers["x-ratelimit-nearlimit"], near);
    }
    let r = get(&url).await;
    assert_eq!(r.status, 429);
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert!(r.headers.get("retry-after").is_none());
    assert_eq!(r.text, "Rate limit for this resource has been exceeded");
    // 429s do not count; other credentials have their own allowance, without headers.
    let c = reqwest::Client::new();
    let r = send(c.get(&url).basic_auth("dev@example.com", Some("api-tok"))).await;
    assert_eq!(r.status, 200);
    assert!(
        r.headers.get("x-ratelimit-limit").is_none()
            && r.headers.get("x-ratelimit-nearlimit").is_none()
    );

    let sim = sim_with(SimOptions {
        requests_per_hour: 1,
        retry_after: Some(7),
        ..SimOptions::default()
    });
    let srv = serve(&sim).await;
    let url = format!("{}/repositories/{WS}", srv.api_url());
    assert_eq!(get(&url).await.status, 200);
    let r = get(&url).await;
    assert_eq!(
        (r.status, r.headers["retry-after"].to_str().unwrap()),
        (429, "7")
    );
}

#[tokio::test]
async fn injected_faults_are_seen_by_the_client() {
    let sim = sim();
    sim.add_repo(WS, RepoSpec::new("r", 100));
    sim.add_repo(WS, RepoSpec::new("r2", 1));
    let srv = serve(&sim).await;
    let url = format!("{}/repositories/{WS}/r/commits/main", srv.api_url());
    let c = reqwest::Client::new();

    sim.inject(Some("/commits/"), vec![Fault::Reset]);
    let err = c.get(&url).bearer_auth(TOKEN).send().await.unwrap_err();
    assert!(!err.is_timeout() && !err.is_status(), "{err:?}");

    sim.inject(None, vec![Fault::Truncated]);
    let resp = c.get(&url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.is_err());

    sim.inject(None, vec![Fault::MalformedJson]);
    let resp = c.get(&url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.json::<Value>().await.unwrap_err().is_decode());

    sim.inject(None, vec![Fault::Stall(Duration::from_millis(800))]);
    let err = c
        .get(&url)
        .bearer_auth(TOKEN)
        .timeout(Duration::from_millis(150))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");

    sim.inject(None, vec![Fault::Status(503), Fault::Status(404)]);
    let r = get(&url).await;
    assert_eq!(r.status, 503);
    assert!(r.text.contains("<html>"));
    let r = get(&url).await;
    assert_eq!((r.status, r.json()["type"].as_str()), (404, Some("error")));

    sim.inject(None, vec![Fault::RateLimited(Some(RetryAfter::Seconds(5)))]);
    let r = get(&url).await;
    assert_eq!(
        (r.status, r.headers["retry-after"].to_str().unwrap()),
        (429, "5")
    );

    sim.inject(None, vec![Fault::ForeignNext("http://127.0.0.1:9".into())]);
    let v = get(&url).await.json();
    assert!(v["next"]
        .as_str()
        .unwrap()
        .starts_with("http://127.0.0.1:9/2.0/repositories/acme/r/commits/main?"));

    sim.inject(None, vec![Fault::ForeignNext("http://127.0.0.1:9".into())]);
    let v = get(&format!("{}/repositories/{WS}?pagelen=1", srv.api_url()))
        .await
        .json();
    assert!(v["next"]
        .as_str()
        .unwrap()
        .starts_with("http://127.0.0.1:9/2.0/repositories/acme?"));

    // A path filter only consumes on matching requests.
    sim.inject(Some("/nomatch/"), vec![Fault::Status(500)]);
    assert_eq!(get(&url).await.status, 200);

    // Keep-alive works after all that, and the log knows each outcome.
    assert_eq!(get(&url).await.status, 200);
    let statuses: Vec<u16> = sim.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses[..3], [0, 200, 200]);
    assert!(statuses.contains(&503) && statuses.contains(&429));
}

#[tokio::test]
async fn random_faults_follow_the_rate() {
    let sim = sim_with(SimOptions {
        requests_per_hour: 0,
        fault_rate: 1.0,
        ..SimOptions::default()
    });
    let srv = serve(&sim).await;
    let url = format!("{}/repositories/{WS}", srv.api_url());
    let c = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let mut failures = 0;
    for _ in 0..6 {
        match c.get(&url).bearer_auth(TOKEN).send().await {
            Ok(r) if r.status() == 200 => {
                if r.json::<Value>().await.is_err() {
                    failures += 1;
                }
            }
            _ => failures += 1,
        }
    }
    assert_eq!(failures, 6);
}

#[tokio::test]
async fn walk_in_progress_survives_pushes_and_force_pushes() {
    let sim = sim();
    sim.add_repo(WS, RepoSpec::new("r", 95));
    let srv = serve(&sim).await;
    let before = branch_hashes(&sim, WS, "r");
    let first = get(&format!(
        "{}/repositories/{WS}/r/commits/main?pagelen=30",
        srv.api_url()
    ))
    .await
    .json();
    sim.push(WS, "r", 3);
    let mut rest = pages(first["next"].as_str().unwrap()).await;
    rest.insert(0, first);
    assert_eq!(hashes(&rest), before);

    // Even a force push does not corrupt a walk already under way.
    let first = get(&format!(
        "{}/repositories/{WS}/r/commits/main?pagelen=40",
        srv.api_url()
    ))
    .await
    .json();
    let before = branch_hashes(&sim, WS, "r");
    let old_head = before[0].clone();
    let added = sim.force_push(WS, "r", 4, 2);
    let mut rest = pages(first["next"].as_str().unwrap()).await;
    rest.insert(0, first);
    assert_eq!(hashes(&rest), before);

    // But the old head is gone for new requests.
    let after = branch_hashes(&sim, WS, "r");
    assert_eq!(after[..2], added[..]);
    assert_eq!(after[2..], before[4..]);
    let r = get(&format!(
        "{}/repositories/{WS}/r/commits/main?exclude={old_head}",
        srv.api_url()
    ))
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["data"]["shas"][0], old_head.as_str());
    assert_eq!(
        get(&format!(
            "{}/repositories/{WS}/r/commits/{old_head}",
            srv.api_url()
        ))
        .await
        .status,
        404
    );
}

#[tokio::test]
async fn renames_and_deletions() {
    let sim = sim();
    let uuid = sim.add_repo(WS, RepoSpec::new("r", 20));
    sim.add_repo(WS, RepoSpec::new("gone", 5));
    let srv = serve(&sim).await;
    let api = srv.api_url();
    let updated = sim.repos(WS)[0].updated_on;

    sim.rename_default_branch(WS, "r", "release/2024");
    assert_eq!(
        get(&format!("{api}/repositories/{WS}/r/commits/main"))
            .await
            .status,
        404
    );
    let v = get(&format!(
        "{api}/repositories/{WS}/r/commits/release%2F2024?pagelen=100"
    ))
    .await
    .json();
    assert_eq!(hashes(&[v]), branch_hashes(&sim, WS, "r"));
    let listed = get(&format!("{api}/repositories/{WS}")).await.json();
    assert_eq!(listed["values"][0]["mainbranch"]["name"], "release/2024");
    let repo = &sim.repos(WS)[0];
    assert!(repo.updated_on > updated);
    assert_eq!(
        listed["values"][0]["updated_on"],
        repo.updated_on.format("%Y-%m-%dT%H:%M:%S%:z").to_string()
    );

    sim.rename_repo(WS, "r", "renamed");
    assert_eq!(
        get(&format!("{api}/repositories/{WS}/r/commits/release%2F2024"))
            .await
            .status,
        404
    );
    assert_eq!(
        get(&format!(
            "{api}/repositories/{WS}/renamed/commits/release%2F2024"
        ))
        .await
        .status,
        200
    );
    assert_eq!(sim.repos(WS)[0].uuid, uuid);

    // The listing's `q` filter sees `updated_on` move.
    let since = repo.updated_on.format("%Y-%m-%dT%H:%M:%S%:z").to_string();
    let q: String =
        url::form_urlencoded::byte_serialize(format!("updated_on>={since}").as_bytes()).collect();
    let v = get(&format!("{api}/repositories/{WS}?q={q}")).await.json();
    assert_eq!(
        (v["size"].as_u64(), v["values"][0]["slug"].as_str()),
        (Some(1), Some("renamed"))
    );
    assert_eq!(
        get(&format!("{api}/repositories/{WS}?q=bogus"))
            .await
            .status,
        400
    );

    sim.delete_repo(WS, "gone");
    let listed = get(&format!("{api}/repositories/{WS}")).await.json();
    assert_eq!(listed["size"], 1);
    assert_eq!(
        get(&format!("{api}/repositories/{WS}/gone/commits/main"))
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn request_log_records_what_arrived() {
    let sim = sim();
    sim.add_repo(WS, RepoSpec::new("web-app", 3));
    sim.add_branch(WS, "web-app", "feature/x", 2);
    let srv = serve(&sim).await;
    sim.clear_requests();
    let api = srv.api_url();
    let r = get(&format!(
        "{api}/repositories/{WS}/web%2Dapp/commits/feature%2Fx?pagelen=5"
    ))
    .await;
    assert_eq!(r.json()["values"].as_array().unwrap().len(), 5);
    send(reqwest::Client::new().get(format!("{api}/repositories/{WS}"))).await;
    let log = sim.requests();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].method, "GET");
    assert_eq!(
        log[0].path,
        "/2.0/repositories/acme/web%2Dapp/commits/feature%2Fx"
    );
    assert_eq!(log[0].query.as_deref(), Some("pagelen=5"));
    assert_eq!(log[0].credential.as_deref(), Some(TOKEN));
    assert_eq!(log[0].status, 200);
    assert_eq!((log[1].credential.as_deref(), log[1].status), (None, 401));
    assert!(log[1].at >= log[0].at);
    sim.clear_requests();
    assert!(sim.requests().is_empty());
}

#[tokio::test]
async fn demo_world_special_repositories() {
    let opts = SimOptions {
        repos: 3,
        commits: 40,
        ..SimOptions::default()
    };
    let sim = Simulator::demo(opts);
    let srv = serve(&sim).await;
    let api = srv.api_url();
    let c = reqwest::Client::new();
    let get = |u: String| send(c.get(u).bearer_auth("sim-access-token"));
    let repos = sim.repos("acme");
    assert_eq!(repos.len(), 3 + 5);
    let listed = get(format!("{api}/repositories/acme?pagelen=100"))
        .await
        .json();
    let empty = listed["values"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["slug"] == "empty-repo")
        .unwrap();
    assert!(empty["mainbranch"].is_null());
    assert!(empty["size"].as_u64().unwrap() > 30_000);
    let r = get(format!("{api}/repositories/acme/empty-repo/commits")).await;
    assert_eq!(
        (r.status, r.json()["values"].as_array().unwrap().len()),
        (200, 0)
    );
    let r = get(format!("{api}/repositories/acme/no-commits/commits/main")).await;
    assert_eq!(
        (r.status, r.json()["values"].as_array().unwrap().len()),
        (200, 0)
    );
    let r = get(format!(
        "{api}/repositories/acme/release-tools/commits/release%2F2024?pagelen=100"
    ))
    .await;
    assert_eq!(
        hashes(&[r.json()]),
        sim.branch_commits("acme", "release-tools")
            .iter()
            .map(|c| c.hash.clone())
            .collect::<Vec<_>>()
    );
    // All branches differ from the default branch where a feature branch is unmerged.
    let main = get(format!(
        "{api}/repositories/acme/feature-work/commits/main?pagelen=100"
    ))
    .await
    .json();
    let all = get(format!(
        "{api}/repositories/acme/feature-work/commits?pagelen=100"
    ))
    .await
    .json();
    assert_eq!(hashes(&[all]).len(), hashes(&[main]).len() + 5);
    // The fork shares its history with its source.
    let src = &repos[0].slug;
    let fork = sim.branch_commits("acme", &format!("{src}-fork"));
    let upstream = branch_hashes(&sim, "acme", src);
    assert_eq!(fork.len(), upstream.len() + 2);
    assert_eq!(fork[2].hash, upstream[0]);
    // Default credentials.
    let r = send(
        c.get(format!("{api}/repositories/acme"))
            .basic_auth("dev@example.com", Some("sim-api-token")),
    )
    .await;
    assert_eq!(r.status, 200);
    let r = send(
        c.get(format!("{api}/repositories/acme"))
            .basic_auth("sim-user", Some("sim-app-password")),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        send(
            c.get(format!("{api}/repositories/acme"))
                .bearer_auth("sim-noscope-token")
        )
        .await
        .status,
        403
    );
    srv.shutdown().await;
    assert!(reqwest::Client::new()
        .get(format!("{api}/repositories/acme"))
        .send()
        .await
        .is_err());
}

#[test]
fn same_seed_same_world_different_seed_different_hashes() {
    let world = |seed| {
        let sim = Simulator::demo(SimOptions {
            seed,
            repos: 4,
            commits: 60,
            ..SimOptions::default()
        });
        sim.repos("acme")
            .iter()
            .map(|r| {
                let commits: Vec<(String, String, String)> = sim
                    .branch_commits("acme", &r.slug)
                    .into_iter()
                    .map(|c| (c.hash, c.date.to_rfc3339(), c.message))
                    .collect();
                (r.uuid.clone(), r.slug.clone(), r.updated_on, commits)
            })
            .collect::<Vec<_>>()
    };
    let a = world(7);
    assert_eq!(a, world(7));
    let b = world(8);
    assert_ne!(a[0].0, b[0].0);
    assert_ne!(a[0].3[0].0, b[0].3[0].0);
    assert!(a[0].3.iter().all(|c| c.0.len() == 40
        && c.0
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())));
}

#[test]
fn large_branch_pages_without_rewalking() {
    let sim = sim();
    sim.add_repo(WS, RepoSpec::new("huge", 100_000));
    let t = std::time::Instant::now();
    let all = sim.branch_commits(WS, "huge");
    assert_eq!(all.len(), 100_000);
    let _ = sim.branch_commits(WS, "huge");
    // Generous for debug builds: it is the cached walk that keeps it fast.
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}
