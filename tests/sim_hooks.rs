//! The simulator's webhooks: the hooks API, and `repo:push` deliveries
//! shaped, signed and retried as Bitbucket Cloud sends them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use bbcrawl::simulator::*;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::util::{self, branch_hashes, serve, WS};

const SECRET: &str = "whsec-7f3a-simulated";
/// Access token allowed to manage hooks.
const HOOK_TOKEN: &str = "tok-hooks-webhook-scope";
/// API token that may read hooks but not change them.
const READER_EMAIL: &str = "reader@example.com";
const READER_TOKEN: &str = "ATATT-read-webhook";
/// A scripted status meaning: answer 200, but only after 3 s.
const SLOW: u16 = 1;
/// How long a test waits for deliveries (they take milliseconds).
const SETTLE: Duration = Duration::from_secs(20);

/// `util::world(0)` with repository `api` (20 commits) and credentials
/// that may manage hooks.
fn world() -> Simulator {
    let sim = util::world(0);
    sim.add_repo(WS, RepoSpec::new("api", 20));
    sim.add_credential(SimCredential::AccessToken {
        token: HOOK_TOKEN.into(),
        scopes: vec!["repository".into(), "webhook".into()],
        workspaces: vec![WS.into()],
    });
    sim.add_credential(SimCredential::ApiToken {
        email: READER_EMAIL.into(),
        token: READER_TOKEN.into(),
        scopes: vec!["read:webhook:bitbucket".into()],
        workspaces: vec![WS.into()],
    });
    sim
}

/// One request a receiver got.
#[derive(Clone, Debug)]
struct Received {
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("no {name} header"))
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a delivery body is JSON")
    }

    /// The one change of a `repo:push` payload.
    fn change(&self) -> Value {
        let v = self.json();
        let changes = v["push"]["changes"].as_array().unwrap();
        assert_eq!(changes.len(), 1, "{v}");
        changes[0].clone()
    }
}

#[derive(Default)]
struct Inbox {
    got: Mutex<Vec<Received>>,
    /// Statuses to answer, in order; 200 once it is empty.
    script: Mutex<VecDeque<u16>>,
}

/// A webhook receiver on an ephemeral port that records what it gets.
struct Receiver {
    url: String,
    inbox: Arc<Inbox>,
}

impl Receiver {
    fn got(&self) -> Vec<Received> {
        self.inbox.got.lock().unwrap().clone()
    }
}

async fn receive(State(inbox): State<Arc<Inbox>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    inbox.got.lock().unwrap().push(Received {
        headers,
        body: body.to_vec(),
    });
    let status = inbox.script.lock().unwrap().pop_front().unwrap_or(200);
    if status == SLOW {
        tokio::time::sleep(Duration::from_secs(3)).await;
        return StatusCode::OK;
    }
    StatusCode::from_u16(status).unwrap()
}

async fn receiver(script: &[u16]) -> Receiver {
    let inbox = Arc::new(Inbox::default());
    inbox.script.lock().unwrap().extend(script);
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(Arc::clone(&inbox));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Receiver { url, inbox }
}

async fn settled(sim: &Simulator) {
    assert!(
        sim.deliveries_settled(SETTLE).await,
        "deliveries still pending: {:?}",
        sim.deliveries()
    );
}

/// Checks `X-Hub-Signature` as a receiver must: HMAC-SHA256 of the raw body.
fn signature_ok(secret: &str, body: &[u8], header: &str) -> bool {
    let Some(hex) = header.strip_prefix("sha256=") else {
        return false;
    };
    if hex.len() != 64 || hex != hex.to_ascii_lowercase() {
        return false;
    }
    let bytes: Vec<u8> = (0..64)
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    mac.verify_slice(&bytes).is_ok()
}

fn hashes_of(commits: &Value) -> Vec<String> {
    commits
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["hash"].as_str().unwrap().to_owned())
        .collect()
}

fn bare(uuid: &str) -> String {
    uuid.trim_matches(|c| c == '{' || c == '}').to_owned()
}

struct Reply {
    status: u16,
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
    Reply {
        status,
        text: resp.text().await.unwrap(),
    }
}

/// A JSON request with the hook-managing token.
fn api(method: reqwest::Method, url: &str, body: Option<Value>) -> reqwest::RequestBuilder {
    let req = reqwest::Client::new()
        .request(method, url)
        .bearer_auth(HOOK_TOKEN);
    match body {
        Some(b) => req.json(&b),
        None => req,
    }
}

#[tokio::test]
async fn hooks_api_creates_lists_replaces_and_deletes_without_showing_secrets() {
    use reqwest::Method;
    let sim = world();
    let srv = serve(&sim).await;
    let hooks = format!("{}/workspaces/{WS}/hooks", srv.api_url());
    let body = json!({"description": "bbcrawl", "url": "https://example.com/hooks/bitbucket",
                      "active": true, "secret": SECRET, "events": ["repo:push"]});
    let r = send(api(Method::POST, &hooks, Some(body))).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert!(!r.text.contains(SECRET), "the secret is never returned");
    let created = r.json();
    let uuid = created["uuid"].as_str().unwrap().to_owned();
    assert!(uuid.starts_with('{') && uuid.ends_with('}') && uuid.len() == 38);
    assert_eq!(created["type"], "webhook_subscription");
    assert_eq!(created["subject_type"], "workspace");
    assert_eq!(created["subject"]["type"], "workspace");
    assert_eq!(created["subject"]["slug"], WS);
    assert!(created["subject"]["uuid"]
        .as_str()
        .unwrap()
        .starts_with('{'));
    assert_eq!(created["url"], "https://example.com/hooks/bitbucket");
    assert_eq!(created["active"], true);
    assert_eq!(created["events"], json!(["repo:push"]));
    assert_eq!(created["secret_set"], true);
    assert_eq!(created["skip_cert_verification"], false);
    assert!(created.get("secret").is_none());
    let at = created["created_at"].as_str().unwrap();
    assert!(at.starts_with("20") && at.ends_with('Z'), "{at}");
    // The simulator's truth keeps the secret.
    let truth = sim.hooks(WS);
    assert_eq!(truth.len(), 1);
    assert_eq!(truth[0].uuid, uuid);
    assert_eq!(truth[0].secret.as_deref(), Some(SECRET));
    assert_eq!(truth[0].subject, WS);

    // Read back by the percent-encoded braced uuid.
    let one = format!("{hooks}/{}", uuid.replace('{', "%7B").replace('}', "%7D"));
    let r = send(api(Method::GET, &one, None)).await;
    assert_eq!((r.status, r.json()), (200, created.clone()));

    // PUT replaces; a null secret removes it, a new one sets it.
    let put = json!({"description": "moved", "url": "https://example.com/v2", "active": false,
                     "events": ["repo:push", "repo:fork"], "secret": null});
    let r = send(api(Method::PUT, &one, Some(put))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(
        (&v["url"], &v["active"], &v["secret_set"], &v["description"]),
        (
            &json!("https://example.com/v2"),
            &json!(false),
            &json!(false),
            &json!("moved")
        )
    );
    assert_eq!(v["events"], json!(["repo:push", "repo:fork"]));
    assert_eq!(sim.hooks(WS)[0].secret, None);
    let r = send(api(Method::PUT, &one, Some(json!({"secret": "second"})))).await;
    assert_eq!(r.json()["secret_set"], true);
    assert!(!r.text.contains("second"));
    assert_eq!(sim.hooks(WS)[0].secret.as_deref(), Some("second"));
    assert_eq!(
        sim.hooks(WS)[0].url,
        "https://example.com/v2",
        "PUT keeps what it does not name"
    );

    // Paged like Bitbucket.
    for i in 0..2 {
        let b = json!({"url": format!("https://example.com/{i}"), "events": ["repo:push"]});
        assert_eq!(send(api(Method::POST, &hooks, Some(b))).await.status, 201);
    }
    let first = send(api(Method::GET, &format!("{hooks}?pagelen=2"), None))
        .await
        .json();
    assert_eq!(
        (first["size"].as_u64(), first["page"].as_u64()),
        (Some(3), Some(1))
    );
    assert_eq!(first["values"].as_array().unwrap().len(), 2);
    assert_eq!(first["values"][0]["uuid"], json!(uuid));
    let next = first["next"].as_str().unwrap().to_owned();
    let second = send(api(Method::GET, &next, None)).await.json();
    assert_eq!(second["values"].as_array().unwrap().len(), 1);
    assert!(second.get("next").is_none());
    assert_eq!(
        send(api(Method::GET, &hooks, None)).await.json()["pagelen"],
        10
    );

    // DELETE answers 204; the hook is gone.
    let r = send(api(Method::DELETE, &one, None)).await;
    assert_eq!(r.status, 204);
    assert_eq!(send(api(Method::GET, &one, None)).await.status, 404);
    assert_eq!(send(api(Method::DELETE, &one, None)).await.status, 404);
    assert_eq!(sim.hooks(WS).len(), 2);

    // Repository hooks: their own list, subject the repository.
    let repo_hooks = format!("{}/repositories/{WS}/api/hooks", srv.api_url());
    let b = json!({"url": "http://127.0.0.1:9/h", "events": ["repo:push"], "secret": SECRET});
    let r = send(api(Method::POST, &repo_hooks, Some(b))).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let v = r.json();
    assert_eq!(v["subject_type"], "repository");
    assert_eq!(v["subject"]["full_name"], "acme/api");
    assert_eq!(v["subject"]["uuid"], json!(sim.repos(WS)[0].uuid));
    let listed = send(api(Method::GET, &repo_hooks, None)).await.json();
    assert_eq!(listed["size"], 1);
    assert_eq!(send(api(Method::GET, &hooks, None)).await.json()["size"], 2);
    let rh = format!("{repo_hooks}/{}", v["uuid"].as_str().unwrap());
    assert_eq!(send(api(Method::GET, &rh, None)).await.status, 200);
    assert_eq!(
        send(api(
            Method::GET,
            &format!("{hooks}/{}", bare(v["uuid"].as_str().unwrap())),
            None
        ))
        .await
        .status,
        404,
        "a repository hook is not one of the workspace's"
    );
    assert!(sim.hooks(WS).iter().any(|h| h.subject == "acme/api"));

    // The cross-workspace listing still answers 410.
    let r = send(api(
        Method::GET,
        &format!("{}/workspaces", srv.api_url()),
        None,
    ))
    .await;
    assert_eq!(r.status, 410);
    // Hook requests are logged like every other.
    assert!(sim
        .requests()
        .iter()
        .any(|q| q.method == "DELETE" && q.path.ends_with("%7D") && q.status == 204));
}

#[tokio::test]
async fn hooks_api_needs_the_webhook_scope_a_visible_workspace_and_a_valid_body() {
    use reqwest::Method;
    let sim = world();
    let srv = serve(&sim).await;
    let hooks = format!("{}/workspaces/{WS}/hooks", srv.api_url());
    let good = json!({"url": "https://example.com/h", "events": ["repo:push"]});

    // The repository scope is not enough.
    let c = reqwest::Client::new();
    let r = send(c.get(&hooks).bearer_auth(util::TOKEN)).await;
    assert_eq!(r.status, 403);
    let e = r.json();
    assert_eq!(e["type"], "error");
    assert_eq!(
        e["error"]["message"],
        "Your credentials lack one or more required privilege scopes."
    );
    assert_eq!(e["error"]["detail"]["required"], json!(["webhook"]));
    let r = send(c.post(&hooks).bearer_auth(util::TOKEN).json(&good)).await;
    assert_eq!(r.status, 403);

    // An API token with the read scope lists but cannot create.
    let reader = || c.get(&hooks).basic_auth(READER_EMAIL, Some(READER_TOKEN));
    assert_eq!(send(reader()).await.status, 200);
    let r = send(
        c.post(&hooks)
            .basic_auth(READER_EMAIL, Some(READER_TOKEN))
            .json(&good),
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json()["error"]["detail"]["required"],
        json!(["write:webhook:bitbucket"])
    );
    let r = send(c.get(&hooks).basic_auth(util::EMAIL, Some(util::API_TOKEN))).await;
    assert_eq!(
        r.json()["error"]["detail"]["required"],
        json!(["read:webhook:bitbucket"])
    );

    // Invisible workspace, unknown repository.
    sim.add_workspace("other");
    for ws in ["other", "nowhere"] {
        let r = send(api(
            Method::GET,
            &format!("{}/workspaces/{ws}/hooks", srv.api_url()),
            None,
        ))
        .await;
        assert_eq!(r.status, 404);
        assert_eq!(
            r.json()["error"]["message"],
            format!("No workspace with identifier '{ws}'.")
        );
    }
    let r = send(api(
        Method::POST,
        &format!("{}/repositories/{WS}/ghost/hooks", srv.api_url()),
        Some(good.clone()),
    ))
    .await;
    assert_eq!(r.status, 404);

    // Bad bodies: 400 with Bitbucket's error envelope.
    let bad_json = api(Method::POST, &hooks, None)
        .header("content-type", "application/json")
        .body("{\"url\": ");
    let r = send(bad_json).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["type"], "error");
    for (body, field) in [
        (json!({"events": ["repo:push"]}), "url"),
        (json!({"url": "not a url", "events": ["repo:push"]}), "url"),
        (json!({"url": "https://example.com/h"}), "events"),
        (
            json!({"url": "https://example.com/h", "events": "repo:push"}),
            "events",
        ),
        (
            json!({"url": "https://example.com/h", "events": []}),
            "events",
        ),
        (
            json!({"url": "https://example.com/h", "events": ["repo:explode"]}),
            "events",
        ),
        (
            json!({"url": "https://example.com/h", "events": ["repo:push"], "secret": 7}),
            "secret",
        ),
    ] {
        let r = send(api(Method::POST, &hooks, Some(body.clone()))).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text);
        assert!(
            r.json()["error"]["fields"].get(field).is_some(),
            "{body}: {}",
            r.text
        );
    }
    assert!(sim.hooks(WS).is_empty(), "nothing was created");
}

#[tokio::test]
async fn hooks_api_requests_count_against_the_rate_limit() {
    let sim = Simulator::new(SimOptions {
        requests_per_hour: 2,
        ..SimOptions::default()
    });
    sim.add_workspace(WS);
    sim.add_credential(SimCredential::AccessToken {
        token: HOOK_TOKEN.into(),
        scopes: vec!["webhook".into()],
        workspaces: vec![WS.into()],
    });
    let srv = serve(&sim).await;
    let hooks = format!("{}/workspaces/{WS}/hooks", srv.api_url());
    let statuses = [
        send(api(reqwest::Method::GET, &hooks, None)).await.status,
        send(api(reqwest::Method::GET, &hooks, None)).await.status,
        send(api(reqwest::Method::GET, &hooks, None)).await.status,
    ];
    assert_eq!(statuses, [200, 200, 429]);
    assert_eq!(sim.requests().len(), 3);
}

#[tokio::test]
async fn a_push_delivers_a_signed_payload_that_matches_the_api() {
    let sim = world();
    let srv = serve(&sim).await;
    let rx = receiver(&[]).await;
    let hook = sim.add_hook(WS, &rx.url, Some(SECRET));
    let old_tip = branch_hashes(&sim, WS, "api")[0].clone();
    let pushed = sim.push(WS, "api", 3);
    settled(&sim).await;

    let got = rx.got();
    assert_eq!(got.len(), 1);
    let d = &got[0];
    assert_eq!(d.header("content-type"), "application/json");
    assert_eq!(d.header("user-agent"), "Bitbucket-Webhooks/2.0");
    assert_eq!(d.header("x-event-key"), "repo:push");
    assert_eq!(d.header("x-hook-uuid"), bare(&hook));
    assert_eq!(d.header("x-attempt-number"), "1");
    assert!(httpdate::parse_http_date(d.header("x-event-time")).is_ok());
    let sig = d.header("x-hub-signature");
    assert!(signature_ok(SECRET, &d.body, sig), "{sig}");
    assert!(!signature_ok("other-secret", &d.body, sig));

    let v = d.json();
    let repo = &sim.repos(WS)[0];
    assert_eq!(v["repository"]["type"], "repository");
    assert_eq!(v["repository"]["full_name"], "acme/api");
    assert_eq!(v["repository"]["name"], "api");
    assert_eq!(v["repository"]["uuid"], json!(repo.uuid));
    assert_eq!(v["repository"]["workspace"]["slug"], WS);
    assert_eq!(v["repository"]["scm"], "git");
    assert_eq!(v["repository"]["is_private"], true);
    assert_eq!(v["repository"]["project"]["type"], "project");
    assert_eq!(
        v["repository"]["links"]["self"]["href"],
        format!("{}/repositories/{WS}/api", srv.api_url())
    );
    assert_eq!(v["actor"]["type"], "user");

    let c = d.change();
    assert_eq!(c["old"]["type"], "branch");
    assert_eq!(c["old"]["name"], "main");
    assert_eq!(c["old"]["target"]["hash"], json!(old_tip));
    assert_eq!(c["new"]["type"], "branch");
    assert_eq!(c["new"]["name"], "main");
    assert_eq!(c["new"]["target"]["hash"], json!(pushed[0]));
    assert_eq!(
        (&c["created"], &c["closed"], &c["forced"], &c["truncated"]),
        (&json!(false), &json!(false), &json!(false), &json!(false))
    );
    assert_eq!(hashes_of(&c["commits"]), pushed);
    // Each listed commit is the one the API serves.
    let truth = sim.branch_commits(WS, "api");
    for (listed, sim_commit) in c["commits"].as_array().unwrap().iter().zip(&truth) {
        assert_eq!(listed["type"], "commit");
        assert_eq!(listed["hash"], json!(sim_commit.hash));
        assert_eq!(listed["message"], json!(sim_commit.message));
        assert_eq!(listed["author"]["raw"], json!(sim_commit.author_raw));
        assert_eq!(listed["author"]["type"], "author");
        let date = chrono::DateTime::parse_from_rfc3339(listed["date"].as_str().unwrap()).unwrap();
        assert_eq!(date, sim_commit.date);
        assert!(listed["links"]["html"]["href"].is_string());
    }
    assert_eq!(c["new"]["target"]["message"], json!(truth[0].message));

    let log = sim.deliveries();
    assert_eq!(log.len(), 1);
    let rec = &log[0];
    assert_eq!(rec.request_uuid, d.header("x-request-uuid"));
    assert_eq!(rec.hook_uuid, hook);
    assert_eq!(rec.full_name, "acme/api");
    assert_eq!(rec.kind, DeliveryKind::Push);
    assert_eq!(rec.new_hash.as_deref(), Some(pushed[0].as_str()));
    assert_eq!(rec.final_status(), Some(200));
    assert_eq!(rec.attempts.len(), 1);
    assert!(rec.done && !rec.lost);
}

#[tokio::test]
async fn a_seven_commit_push_lists_the_five_newest_and_says_truncated() {
    let sim = world();
    let rx = receiver(&[]).await;
    sim.add_hook(WS, &rx.url, Some(SECRET));
    let pushed = sim.push(WS, "api", 7);
    settled(&sim).await;
    let c = rx.got()[0].change();
    assert_eq!(c["truncated"], true);
    assert_eq!(hashes_of(&c["commits"]), pushed[..5].to_vec());
    assert_eq!(
        hashes_of(&c["commits"]),
        branch_hashes(&sim, WS, "api")[..5].to_vec()
    );
    // Exactly five is not truncated.
    sim.push(WS, "api", 5);
    settled(&sim).await;
    let c = rx.got()[1].change();
    assert_eq!(
        (
            c["truncated"].clone(),
            c["commits"].as_array().unwrap().len()
        ),
        (json!(false), 5)
    );
}

#[tokio::test]
async fn force_push_new_branch_deletion_and_tag_have_their_shapes() {
    let sim = world();
    let rx = receiver(&[]).await;
    sim.add_hook(WS, &rx.url, Some(SECRET));
    let before = branch_hashes(&sim, WS, "api");

    let forced = sim.force_push(WS, "api", 2, 1);
    let feature = sim.add_branch(WS, "api", "feature/x", 2);
    let more = sim.push_branch(WS, "api", "feature/x", 1);
    assert!(
        !sim.delete_branch(WS, "api", "main"),
        "the default branch stays"
    );
    assert!(!sim.delete_branch(WS, "api", "no-such-branch"));
    assert!(sim.delete_branch(WS, "api", "feature/x"));
    let fresh = sim.push_branch(WS, "api", "topic", 0);
    let tagged = sim.push_tag(WS, "api", "v1.0").unwrap();
    settled(&sim).await;

    let got = rx.got();
    let log = sim.deliveries();
    assert_eq!(got.len(), 6);
    let kinds: Vec<DeliveryKind> = log.iter().map(|r| r.kind).collect();
    use DeliveryKind::*;
    assert_eq!(kinds, [Force, Created, Push, Closed, Created, Tag]);
    // One hook's deliveries arrive in the order the changes happened.
    let uuids: Vec<&str> = got.iter().map(|d| d.header("x-request-uuid")).collect();
    let logged: Vec<&str> = log.iter().map(|r| r.request_uuid.as_str()).collect();
    assert_eq!(uuids, logged);

    let c = got[0].change();
    assert_eq!(c["forced"], true);
    assert_eq!(c["old"]["target"]["hash"], json!(before[0]));
    assert_eq!(c["new"]["target"]["hash"], json!(forced[0]));
    assert_eq!(hashes_of(&c["commits"]), forced);
    assert_eq!(branch_hashes(&sim, WS, "api")[0], forced[0]);

    let c = got[1].change();
    assert_eq!(c["old"], Value::Null);
    assert_eq!(
        (&c["created"], &c["closed"], &c["forced"]),
        (&json!(true), &json!(false), &json!(false))
    );
    assert_eq!(c["new"]["type"], "branch");
    assert_eq!(c["new"]["name"], "feature/x");
    assert_eq!(c["new"]["target"]["hash"], json!(feature[0]));
    assert_eq!(hashes_of(&c["commits"]), feature);

    let c = got[2].change();
    assert_eq!(c["old"]["target"]["hash"], json!(feature[0]));
    assert_eq!(c["new"]["target"]["hash"], json!(more[0]));
    assert_eq!(c["created"], false);
    assert_eq!(hashes_of(&c["commits"]), more);

    let c = got[3].change();
    assert_eq!(c["new"], Value::Null);
    assert_eq!((&c["closed"], &c["created"]), (&json!(true), &json!(false)));
    assert_eq!(c["old"]["name"], "feature/x");
    assert_eq!(c["old"]["target"]["hash"], json!(more[0]));
    assert_eq!(c["commits"], json!([]));
    assert_eq!(log[3].new_hash, None);

    // A branch created without commits of its own: on the default tip.
    assert!(fresh.is_empty());
    let c = got[4].change();
    assert_eq!(c["new"]["name"], "topic");
    assert_eq!(c["new"]["target"]["hash"], json!(forced[0]));
    assert_eq!(c["commits"], json!([]));

    let c = got[5].change();
    assert_eq!(c["new"]["type"], "tag");
    assert_eq!(c["new"]["name"], "v1.0");
    assert_eq!(c["new"]["target"]["hash"], json!(tagged));
    assert_eq!(tagged, forced[0]);
    assert_eq!(c["old"], Value::Null);
    for d in &got {
        assert!(signature_ok(SECRET, &d.body, d.header("x-hub-signature")));
    }
}

#[tokio::test]
async fn server_errors_are_retried_twice_more_with_the_same_request_uuid() {
    let sim = world();
    let rx = receiver(&[500, 502, 503, 503, 200]).await;
    sim.add_hook(WS, &rx.url, Some(SECRET));
    sim.push(WS, "api", 1);
    settled(&sim).await;
    sim.push(WS, "api", 1);
    settled(&sim).await;

    let got = rx.got();
    assert_eq!(got.len(), 5, "three attempts, then two");
    let attempts: Vec<&str> = got.iter().map(|d| d.header("x-attempt-number")).collect();
    assert_eq!(attempts, ["1", "2", "3", "1", "2"]);
    let log = sim.deliveries();
    for (d, rec) in got[..3].iter().zip(std::iter::repeat(&log[0])) {
        assert_eq!(d.header("x-request-uuid"), rec.request_uuid);
        assert_eq!(d.body, got[0].body, "a retry sends the same body");
    }
    assert_eq!(got[3].header("x-request-uuid"), log[1].request_uuid);
    assert_eq!(got[4].header("x-request-uuid"), log[1].request_uuid);
    assert_ne!(log[0].request_uuid, log[1].request_uuid);
    let statuses = |i: usize| -> Vec<u16> { log[i].attempts.iter().map(|a| a.0).collect() };
    assert_eq!(statuses(0), [500, 502, 503]);
    assert_eq!(statuses(1), [503, 200]);
}

#[tokio::test]
async fn client_errors_and_redirects_are_final() {
    let sim = world();
    let rx = receiver(&[404, 401, 302]).await;
    sim.add_hook(WS, &rx.url, Some(SECRET));
    for _ in 0..3 {
        sim.push(WS, "api", 1);
    }
    settled(&sim).await;
    assert_eq!(rx.got().len(), 3);
    let finals: Vec<Vec<u16>> = sim
        .deliveries()
        .iter()
        .map(|r| r.attempts.iter().map(|a| a.0).collect())
        .collect();
    assert_eq!(finals, [vec![404], vec![401], vec![302]]);
}

#[tokio::test]
async fn unreachable_and_slow_receivers_are_retried() {
    let sim = world();
    sim.add_hook(
        WS,
        &format!("http://127.0.0.1:{}/hook", util::free_port()),
        None,
    );
    sim.push(WS, "api", 1);
    settled(&sim).await;
    let rec = &sim.deliveries()[0];
    assert_eq!(
        rec.attempts.iter().map(|a| a.0).collect::<Vec<_>>(),
        [0, 0, 0]
    );
    assert!(rec.done);

    let sim = world();
    let rx = receiver(&[SLOW, 200]).await;
    sim.set_delivery_timeout(Duration::from_millis(300));
    sim.add_hook(WS, &rx.url, None);
    sim.push(WS, "api", 1);
    settled(&sim).await;
    let rec = &sim.deliveries()[0];
    assert_eq!(
        rec.attempts.iter().map(|a| a.0).collect::<Vec<_>>(),
        [0, 200]
    );
    assert!(rec.attempts[0].1 >= Duration::from_millis(300));
    assert!(rec.attempts[0].1 < Duration::from_secs(3), "{rec:?}");
    assert_eq!(rx.got().len(), 2);
}

#[tokio::test]
async fn lost_deliveries_are_logged_and_never_sent() {
    let sim = world();
    let rx = receiver(&[]).await;
    sim.add_hook(WS, &rx.url, Some(SECRET));
    sim.lose_next_deliveries(1);
    let lost = sim.push(WS, "api", 2);
    let sent = sim.push(WS, "api", 1);
    settled(&sim).await;
    let log = sim.deliveries();
    assert_eq!(log.len(), 2);
    assert!(log[0].lost && log[0].done && log[0].attempts.is_empty());
    assert_eq!(log[0].new_hash.as_deref(), Some(lost[0].as_str()));
    assert!(!log[1].lost);
    let got = rx.got();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].header("x-request-uuid"), log[1].request_uuid);
    let c = got[0].change();
    assert_eq!(c["new"]["target"]["hash"], json!(sent[0]));
    // The lost push shows only as the old tip of the next one.
    assert_eq!(c["old"]["target"]["hash"], json!(lost[0]));
}

#[tokio::test]
async fn nothing_is_delivered_without_an_interested_hook() {
    use reqwest::Method;
    let sim = world();
    sim.add_repo(WS, RepoSpec::new("web", 5));
    let srv = serve(&sim).await;
    let rx = receiver(&[]).await;
    sim.push(WS, "api", 2);
    sim.force_push(WS, "api", 1, 1);
    sim.add_branch(WS, "api", "b", 1);
    assert!(sim.deliveries().is_empty(), "no hooks, no deliveries");

    // Another workspace's hook, an inactive one, one for other events, one
    // for another repository: none of them hears a push to `api`.
    sim.add_hook("elsewhere", &rx.url, None);
    let post = |path: &str, body: Value| {
        api(
            Method::POST,
            &format!("{}/{path}", srv.api_url()),
            Some(body),
        )
    };
    let ws_hooks = format!("workspaces/{WS}/hooks");
    for body in [
        json!({"url": rx.url, "events": ["repo:push"], "active": false}),
        json!({"url": rx.url, "events": ["repo:fork", "pullrequest:created"]}),
    ] {
        assert_eq!(send(post(&ws_hooks, body)).await.status, 201);
    }
    let web = json!({"url": rx.url, "events": ["repo:push"]});
    assert_eq!(
        send(post(&format!("repositories/{WS}/web/hooks"), web))
            .await
            .status,
        201
    );
    sim.push(WS, "api", 1);
    sim.push_quietly(WS, "api", 0);
    assert!(sim.deliveries().is_empty());

    // A repository hook on `api` and a workspace hook both hear it; without
    // a secret there is no signature header.
    let api_hook = json!({"url": rx.url, "events": ["repo:push"]});
    assert_eq!(
        send(post(&format!("repositories/{WS}/api/hooks"), api_hook))
            .await
            .status,
        201
    );
    sim.add_hook(WS, &rx.url, None);
    sim.push_quietly(WS, "api", 1);
    settled(&sim).await;
    assert_eq!(sim.deliveries().len(), 2);
    let got = rx.got();
    assert_eq!(got.len(), 2);
    assert!(got
        .iter()
        .all(|d| d.headers.get("x-hub-signature").is_none()));
    assert_ne!(got[0].header("x-hook-uuid"), got[1].header("x-hook-uuid"));
}

#[test]
fn a_push_outside_any_runtime_is_delivered_and_settles_blocking() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let rx = rt.block_on(receiver(&[]));
    let sim = world();
    sim.add_hook(WS, &rx.url, Some(SECRET));
    let pushed = sim.push(WS, "api", 1);
    assert!(sim.settle_deliveries(SETTLE));
    let got = rx.got();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].change()["new"]["target"]["hash"], json!(pushed[0]));
}

#[tokio::test(flavor = "current_thread")]
async fn many_pushes_to_one_hook_arrive_in_order() {
    let sim = world();
    let rx = receiver(&[]).await;
    sim.add_hook(WS, &rx.url, Some(SECRET));
    let pushed: Vec<String> = (0..12).map(|_| sim.push(WS, "api", 1)[0].clone()).collect();
    settled(&sim).await;
    let seen: Vec<String> = rx
        .got()
        .iter()
        .map(|d| {
            d.change()["new"]["target"]["hash"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(seen, pushed);
}

#[tokio::test]
async fn forged_deliveries_are_built_from_parts_without_touching_the_world() {
    let sim = world();
    let rx = receiver(&[]).await;
    let hook = sim.add_hook(WS, &rx.url, Some(SECRET));
    let truth = branch_hashes(&sim, WS, "api");

    let d = sim.push_delivery(WS, "api");
    assert_eq!(d.header("X-Hub-Signature"), None, "unsigned until signed");
    assert_eq!(d.header("x-event-key"), Some("repo:push"));
    assert_eq!(d.header("X-Hook-UUID"), Some(bare(&hook).as_str()));
    let v: Value = serde_json::from_slice(&d.body).unwrap();
    let c = &v["push"]["changes"][0];
    assert_eq!(c["new"]["target"]["hash"], json!(truth[0]));
    assert_eq!(c["old"]["target"]["hash"], json!(truth[1]));
    assert_eq!(hashes_of(&c["commits"]), truth[..1].to_vec());
    assert_eq!(v["repository"]["uuid"], json!(sim.repos(WS)[0].uuid));

    let signed = d.clone().signed(SECRET);
    let sig = signed.header("x-hub-signature").unwrap().to_owned();
    assert!(signature_ok(SECRET, &signed.body, &sig));
    assert_eq!(sig, hub_signature(SECRET, &d.body));
    assert_eq!(send_delivery(&rx.url, &signed).await, Ok(200));
    // A replayed request uuid with another body, a bad signature, 1 MB.
    let replay = signed
        .clone()
        .with_body(b"{\"push\":{}}".to_vec())
        .with_header("X-Request-UUID", signed.header("x-request-uuid").unwrap());
    let bad = d.clone().signed("wrong-secret");
    let huge = d.clone().with_body(vec![b' '; 1 << 20]).signed(SECRET);
    for forged in [&replay, &bad, &huge] {
        assert_eq!(send_delivery(&rx.url, forged).await, Ok(200));
    }
    let got = rx.got();
    assert_eq!(got.len(), 4);
    assert_eq!(got[0].body, signed.body, "sent byte for byte");
    assert_eq!(got[0].header("x-hub-signature"), sig);
    assert!(!signature_ok(
        SECRET,
        &got[1].body,
        got[1].header("x-hub-signature")
    ));
    assert_eq!(
        got[1].header("x-request-uuid"),
        got[0].header("x-request-uuid")
    );
    assert!(!signature_ok(
        SECRET,
        &got[2].body,
        got[2].header("x-hub-signature")
    ));
    assert_eq!(got[3].body.len(), 1 << 20);
    assert!(signature_ok(
        SECRET,
        &got[3].body,
        got[3].header("x-hub-signature")
    ));

    // A repository the simulator does not have: still a well-formed payload.
    let ghost = sim.push_delivery("ghost-ws", "nowhere");
    let v: Value = serde_json::from_slice(&ghost.body).unwrap();
    assert_eq!(v["repository"]["full_name"], "ghost-ws/nowhere");
    assert_eq!(v["repository"]["workspace"]["slug"], "ghost-ws");
    assert_eq!(
        v["push"]["changes"][0]["new"]["target"]["hash"]
            .as_str()
            .map(str::len),
        Some(40)
    );
    assert_eq!(
        send_delivery(&format!("http://127.0.0.1:{}/", util::free_port()), &ghost)
            .await
            .map_err(|_| "refused"),
        Err("refused")
    );

    // Nothing changed and nothing was logged as a delivery.
    assert_eq!(branch_hashes(&sim, WS, "api"), truth);
    assert!(sim.deliveries().is_empty());
}
