//! Webhooks: the hooks REST API, signed `repo:push` deliveries when the world
//! changes a ref, and the building blocks of forged deliveries.
//!
//! Facts followed (`shared/bitbucket-api.md`, "Webhooks"; Atlassian's docs):
//!
//! - **API.** Workspace hooks live under `/2.0/workspaces/{ws}/hooks`,
//!   repository hooks under `/2.0/repositories/{ws}/{slug}/hooks`; both list
//!   (paged, `pagelen` 10 by default), create (`POST`, 201), read, replace
//!   (`PUT`, 200) and delete (`DELETE`, 204) by `{uuid}`. A hook is rendered
//!   as a `webhook_subscription` with `secret_set`: a saved secret is never
//!   returned. Managing hooks needs the `webhook` scope (access tokens, app
//!   passwords) or `read:webhook:bitbucket` / `write:webhook:bitbucket` (API
//!   tokens); without it the answer is the same 403 as for a missing
//!   repository scope. These requests are logged and rate limited like
//!   every other.
//! - **Deliveries.** [`Simulator::push`], [`Simulator::push_quietly`],
//!   [`Simulator::force_push`], [`Simulator::add_branch`],
//!   [`Simulator::push_branch`], [`Simulator::delete_branch`] and
//!   [`Simulator::push_tag`] announce the ref they moved to every active
//!   hook of the workspace or repository subscribed to `repo:push`: one
//!   change with `old` / `new` (null for a created / deleted ref), `created`,
//!   `closed`, `forced`, and at most the 5 newest new commits (`truncated`
//!   when there were more), rendered by the same code that serves
//!   `GET …/commits`, so hashes, dates and messages agree with the API.
//!   Headers: `X-Event-Key: repo:push`, `X-Hook-UUID` and `X-Request-UUID`
//!   (without braces, as Bitbucket sends them), `X-Attempt-Number`,
//!   `X-Event-Time`, `User-Agent: Bitbucket-Webhooks/2.0`, and with a secret
//!   `X-Hub-Signature: sha256=<hex HMAC-SHA256 of the body>`.
//! - **Sending.** A change must never block or slow the code that made it
//!   (tests push from inside current-thread runtimes and from no runtime at
//!   all), so deliveries go through a channel to one background thread with
//!   its own tokio runtime, started at the first delivery and ended when the
//!   last [`Simulator`] handle is dropped (after finishing what is queued).
//!   Each hook has its own lane there, so its deliveries arrive in order.
//!   Each attempt times out after 10 s ([`Simulator::set_delivery_timeout`]
//!   shortens it); only 5xx answers, connection errors and timeouts are
//!   retried, at once, up to two more times, with the same `X-Request-UUID`.
//!   There is no replay. Payloads over 256 KB are not sent.
//! - **Observing and breaking it.** [`Simulator::deliveries`] is the log
//!   (one [`DeliveryRecord`] per hook and change, with every attempt);
//!   [`Simulator::settle_deliveries`] / [`Simulator::deliveries_settled`]
//!   wait until all finished; [`Simulator::lose_next_deliveries`] drops the
//!   next ones on purpose. [`Simulator::push_delivery`], [`Delivery`] and
//!   [`send_delivery`] build and send forged ones (bad signatures, replays,
//!   huge bodies, unknown workspaces) without changing the world.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use serde_json::{json, Map, Value};
use sha2::Sha256;
use tokio::sync::mpsc;

use super::content::{datetime, enc, user_json, Ctx, PEOPLE};
use super::rng::{mix, Rng};
use super::server::{
    invalid_page, pagelen, repo_not_found, scope_check, Answer, ApiRequest, Auth, Scope,
};
use super::world::{hex, Graph, Repo, BASE_TIME};
use super::{lock, Simulator};

/// Bitbucket's delivery timeout (per attempt).
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Payloads above this many bytes are not sent (Bitbucket: "may silently
/// fail to trigger").
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;

/// The first attempt and the two retries after a 5xx.
const ATTEMPTS: u32 = 3;

/// Commits a change lists at most; more sets `truncated`.
const COMMITS_PER_CHANGE: usize = 5;

/// The one event the simulator delivers.
const REPO_PUSH: &str = "repo:push";

/// Events a hook may subscribe to (Bitbucket Cloud's list); only
/// `repo:push` is ever delivered.
const KNOWN_EVENTS: &[&str] = &[
    "repo:push",
    "repo:fork",
    "repo:updated",
    "repo:commit_comment_created",
    "repo:commit_status_created",
    "repo:commit_status_updated",
    "repo:imported",
    "repo:deleted",
    "repo:transfer",
    "issue:created",
    "issue:updated",
    "issue:comment_created",
    "pullrequest:created",
    "pullrequest:updated",
    "pullrequest:approved",
    "pullrequest:unapproved",
    "pullrequest:fulfilled",
    "pullrequest:rejected",
    "pullrequest:changes_request_created",
    "pullrequest:changes_request_removed",
    "pullrequest:comment_created",
    "pullrequest:comment_updated",
    "pullrequest:comment_deleted",
    "pullrequest:comment_resolved",
    "pullrequest:comment_reopened",
    "project:updated",
];

/// Where payload links point before the simulator serves anywhere.
const DEFAULT_ORIGIN: &str = "https://bitbucket.org";

/// A webhook as the simulator stores it: the truth, secret included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimHook {
    /// Braced uuid, as the API renders it.
    pub uuid: String,
    /// Where deliveries go.
    pub url: String,
    /// Free text.
    pub description: String,
    /// Inactive hooks get no deliveries.
    pub active: bool,
    /// Subscribed events (`repo:push` is the one delivered).
    pub events: Vec<String>,
    /// The secret deliveries are signed with (the API never shows it).
    pub secret: Option<String>,
    /// `ws` for a workspace hook, `ws/slug` for a repository hook.
    pub subject: String,
    /// Stored and rendered; the simulator delivers over plain HTTP anyway.
    pub skip_cert_verification: bool,
}

/// What a delivered change did to its ref.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeliveryKind {
    /// A branch moved forward (`forced: false`).
    Push,
    /// A branch moved to a commit that does not contain its old tip
    /// (`forced: true`).
    Force,
    /// A branch appeared (`old: null`, `created: true`).
    Created,
    /// A branch was deleted (`new: null`, `closed: true`, no commits).
    Closed,
    /// A tag was created or moved (`type: "tag"`).
    Tag,
}

/// One delivery: a change sent to one hook, with every attempt.
#[derive(Clone, Debug)]
pub struct DeliveryRecord {
    /// The `X-Request-UUID` header (no braces); the same on every attempt.
    pub request_uuid: String,
    /// The hook's braced uuid (the `X-Hook-UUID` header carries it without braces).
    pub hook_uuid: String,
    /// `workspace/slug` of the repository changed.
    pub full_name: String,
    /// What the change did.
    pub kind: DeliveryKind,
    /// The ref's new target (`None` for a deleted branch).
    pub new_hash: Option<String>,
    /// Status of each attempt (0 for a connection error or timeout) and how
    /// long it took.
    pub attempts: Vec<(u16, Duration)>,
    /// When the change happened.
    pub queued_at: Instant,
    /// Every attempt made (or the delivery was lost).
    pub done: bool,
    /// Never sent: lost on purpose ([`Simulator::lose_next_deliveries`]) or
    /// a payload over [`MAX_PAYLOAD_BYTES`].
    pub lost: bool,
}

impl DeliveryRecord {
    /// The status of the last attempt, if any was made.
    pub fn final_status(&self) -> Option<u16> {
        self.attempts.last().map(|(s, _)| *s)
    }
}

/// A delivery as sent on the wire: headers in order and the exact body.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Header names and values.
    pub headers: Vec<(String, String)>,
    /// The raw JSON body (what the signature covers).
    pub body: Vec<u8>,
}

impl Delivery {
    /// Signs the body with `secret`: sets `X-Hub-Signature`.
    pub fn signed(self, secret: &str) -> Delivery {
        let sig = hub_signature(secret, &self.body);
        self.with_header("X-Hub-Signature", &sig)
    }

    /// Sets a header, replacing any of the same name (case-insensitive).
    pub fn with_header(mut self, name: &str, value: &str) -> Delivery {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Removes a header (case-insensitive).
    pub fn without_header(mut self, name: &str) -> Delivery {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        self
    }

    /// Replaces the body (an existing signature then no longer matches).
    pub fn with_body(mut self, body: Vec<u8>) -> Delivery {
        self.body = body;
        self
    }

    /// A header's value (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `sha256=<lower-case hex>`: the `X-Hub-Signature` of `body` under `secret`.
pub fn hub_signature(secret: &str, body: &[u8]) -> String {
    // HMAC takes keys of any length, so this cannot fail.
    let digest = match <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()) {
        Ok(mut mac) => {
            mac.update(body);
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    };
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Sends one delivery to `url` (one POST, no retry, 10 s timeout); returns
/// the status, or what went wrong.
pub async fn send_delivery(url: &str, d: &Delivery) -> Result<u16, String> {
    let client = http_client().map_err(|e| e.to_string())?;
    let mut req = client
        .post(url)
        .timeout(DELIVERY_TIMEOUT)
        .body(d.body.clone());
    for (k, v) in &d.headers {
        req = req.header(k, v);
    }
    let resp = req.send().await.map_err(|e| e.to_string())?;
    Ok(resp.status().as_u16())
}

/// The client deliveries use: no proxy (the receiver is local), no
/// redirects (a 3xx is an answer, as for Bitbucket), a fresh connection per
/// attempt (a stale pooled one must not turn into a spurious retry).
fn http_client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .build()
}

/// Whom a stored hook belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Subject {
    /// Every repository of this workspace.
    Workspace(String),
    /// One repository, by uuid (survives renames); `slug` as last seen.
    Repository {
        ws: String,
        uuid: String,
        slug: String,
    },
}

impl Subject {
    fn ws(&self) -> &str {
        match self {
            Subject::Workspace(ws) | Subject::Repository { ws, .. } => ws,
        }
    }

    /// Same subject, ignoring the slug (which a rename may have changed).
    fn same(&self, other: &Subject) -> bool {
        match (self, other) {
            (Subject::Workspace(a), Subject::Workspace(b)) => a == b,
            (
                Subject::Repository { ws: a, uuid: u, .. },
                Subject::Repository { ws: b, uuid: v, .. },
            ) => a == b && u == v,
            _ => false,
        }
    }
}

#[derive(Clone, Debug)]
struct StoredHook {
    uuid: String,
    url: String,
    description: String,
    active: bool,
    events: Vec<String>,
    secret: Option<String>,
    subject: Subject,
    skip_cert_verification: bool,
    /// Simulated Unix seconds.
    created_at: i64,
}

impl StoredHook {
    /// Whether a change to repository `repo_uuid` of `ws` is delivered here.
    fn wants_push(&self, ws: &str, repo_uuid: &str) -> bool {
        self.active
            && self.events.iter().any(|e| e == REPO_PUSH)
            && match &self.subject {
                Subject::Workspace(w) => w == ws,
                Subject::Repository { ws: w, uuid, .. } => w == ws && uuid == repo_uuid,
            }
    }
}

/// A unit of work for the sending thread.
struct Job {
    /// Index into the delivery log.
    record: usize,
    /// The lane (deliveries of one hook go out in order).
    hook_uuid: String,
    url: String,
    /// Every header but `X-Attempt-Number`.
    headers: Vec<(String, String)>,
    body: Bytes,
    timeout: Duration,
}

/// Hooks and delivery settings (behind the simulator's `hooks` mutex).
pub(super) struct HookState {
    hooks: Vec<StoredHook>,
    /// Hook and request uuids: a stream of its own, so creating hooks does
    /// not change the histories of repositories created afterwards.
    rng: Rng,
    /// Deliveries still to drop on purpose.
    lose_next: usize,
    /// `http://host:port` of the last server started, for payload links.
    origin: Option<String>,
    timeout: Duration,
    /// Feeds the sending thread; started at the first delivery.
    sender: Option<mpsc::UnboundedSender<Job>>,
}

impl HookState {
    pub(super) fn new(seed: u64) -> HookState {
        HookState {
            hooks: Vec::new(),
            rng: Rng::new(seed ^ 0x400C_5EED),
            lose_next: 0,
            origin: None,
            timeout: DELIVERY_TIMEOUT,
            sender: None,
        }
    }

    fn origin(&self) -> String {
        self.origin
            .clone()
            .unwrap_or_else(|| DEFAULT_ORIGIN.to_owned())
    }

    fn find(&self, subject: &Subject, uid: &str) -> Option<usize> {
        self.hooks
            .iter()
            .position(|h| h.subject.same(subject) && same_uuid(&h.uuid, uid))
    }
}

/// The delivery log, shared with the sending thread (which must not hold
/// the simulator itself, or dropping the last handle would never end it).
#[derive(Default)]
pub(super) struct DeliveryLog {
    records: Mutex<Vec<DeliveryRecord>>,
    /// Signalled whenever a delivery finishes.
    changed: Condvar,
}

impl DeliveryLog {
    /// Records one attempt; `last` finishes the delivery.
    fn attempt(&self, record: usize, status: u16, took: Duration, last: bool) {
        let mut records = lock(&self.records);
        if let Some(r) = records.get_mut(record) {
            r.attempts.push((status, took));
            r.done |= last;
        }
        drop(records);
        if last {
            self.changed.notify_all();
        }
    }
}

/// Which kind of ref a change moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RefKind {
    Branch,
    Tag,
}

/// A ref the world just moved, described by commit indices (the arena is
/// append-only, so they stay valid while the payload is built).
pub(super) struct RefChange {
    pub(super) kind: RefKind,
    pub(super) name: String,
    pub(super) old: Option<u32>,
    pub(super) new: Option<u32>,
    /// Commits the change brought, newest first (all of them; the payload
    /// lists at most five).
    pub(super) commits: Vec<u32>,
    pub(super) forced: bool,
}

impl RefChange {
    /// A branch moved from `old` to `new`; the commits appended to the arena
    /// since `before` are the ones it brought. `None` when nothing moved.
    pub(super) fn branch(
        name: &str,
        old: Option<u32>,
        new: Option<u32>,
        g: &Graph,
        before: usize,
    ) -> Option<RefChange> {
        if old == new {
            return None;
        }
        let forced = match (old, new) {
            (Some(o), Some(n)) => !is_ancestor(g, o, n),
            _ => false,
        };
        Some(RefChange {
            kind: RefKind::Branch,
            name: name.to_owned(),
            old,
            new,
            commits: (before..g.nodes.len()).rev().map(|i| i as u32).collect(),
            forced,
        })
    }

    fn delivery_kind(&self) -> DeliveryKind {
        match (self.kind, self.old, self.new) {
            (RefKind::Tag, _, _) => DeliveryKind::Tag,
            (_, _, None) => DeliveryKind::Closed,
            (_, None, _) => DeliveryKind::Created,
            _ if self.forced => DeliveryKind::Force,
            _ => DeliveryKind::Push,
        }
    }
}

/// Whether `a` is `b` or one of its ancestors. Parents have smaller indices
/// than their children, so nothing older than `a` needs visiting.
fn is_ancestor(g: &Graph, a: u32, b: u32) -> bool {
    let mut seen = HashSet::new();
    let mut stack = vec![b];
    while let Some(i) = stack.pop() {
        if i == a {
            return true;
        }
        if i < a || !seen.insert(i) {
            continue;
        }
        stack.extend_from_slice(g.nodes[i as usize].parents());
    }
    false
}

/// Braced or not, any case: the same uuid.
fn same_uuid(stored: &str, given: &str) -> bool {
    let bare = |s: &str| {
        s.trim_start_matches('{')
            .trim_end_matches('}')
            .to_ascii_lowercase()
    };
    bare(stored) == bare(given)
}

/// A uuid as webhook headers carry it: without braces.
fn unbraced(uuid: &str) -> String {
    uuid.trim_start_matches('{')
        .trim_end_matches('}')
        .to_owned()
}

/// A braced uuid derived from a label (stable for the same label).
fn derived_uuid(label: &str) -> String {
    let seed = label
        .bytes()
        .fold(0x9E37_79B9u64, |h, b| mix(h ^ u64::from(b)));
    Rng::new(seed).uuid()
}

/// `2024-01-05T10:00:00.000000Z`, as Bitbucket writes `created_at`.
fn created_at(secs: i64) -> String {
    datetime(secs, 0)
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

// ---------------------------------------------------------------------------
// Payloads
// ---------------------------------------------------------------------------

/// A commit as a `repo:push` payload shows it (the API's own rendering).
fn commit_json(ctx: &Ctx<'_>, idx: u32) -> Value {
    ctx.commit(&ctx.repo.graph, idx, &|k| {
        matches!(k, "date" | "author" | "message" | "parents" | "links")
    })
}

/// A branch or tag with its target.
fn ref_json(ctx: &Ctx<'_>, kind: RefKind, name: &str, idx: u32) -> Value {
    let (api, html, e) = (ctx.api_repo(), ctx.html_repo(), enc(name));
    let (type_name, plural, html_path) = match kind {
        RefKind::Branch => ("branch", "branches", "branch"),
        RefKind::Tag => ("tag", "tags", "commits/tag"),
    };
    let mut v = json!({
        "type": type_name,
        "name": name,
        "target": commit_json(ctx, idx),
        "links": {
            "self": {"href": format!("{api}/refs/{plural}/{e}")},
            "commits": {"href": format!("{api}/commits/{e}")},
            "html": {"href": format!("{html}/{html_path}/{e}")},
        },
    });
    if let (RefKind::Branch, Value::Object(m)) = (kind, &mut v) {
        m.insert(
            "merge_strategies".into(),
            json!(["merge_commit", "squash", "fast_forward"]),
        );
        m.insert("default_merge_strategy".into(), json!("merge_commit"));
    }
    v
}

/// The repository object of a webhook payload.
fn repository_json(ctx: &Ctx<'_>, ws_uuid: &str) -> Value {
    let (api, html, ws) = (ctx.api_repo(), ctx.html_repo(), ctx.ws);
    let origin = ctx.origin;
    let ews = enc(ws);
    json!({
        "type": "repository",
        "full_name": format!("{ws}/{}", ctx.repo.slug),
        "name": ctx.repo.name,
        "uuid": ctx.repo.uuid,
        "scm": "git",
        "website": null,
        "is_private": ctx.repo.is_private,
        "owner": {
            "type": "team", "display_name": ws, "username": ws, "uuid": ws_uuid,
            "links": {"html": {"href": format!("{origin}/{ews}/")}},
        },
        "workspace": {
            "type": "workspace", "slug": ws, "name": ws, "uuid": ws_uuid,
            "links": {
                "self": {"href": format!("{origin}/2.0/workspaces/{ews}")},
                "html": {"href": format!("{origin}/{ews}/")},
            },
        },
        "project": {
            "type": "project", "key": "PROJ", "name": "Default project",
            "uuid": derived_uuid(&format!("project {ws_uuid}")),
            "links": {
                "self": {"href": format!("{origin}/2.0/workspaces/{ews}/projects/PROJ")},
                "html": {"href": format!("{origin}/{ews}/workspace/projects/PROJ")},
            },
        },
        "links": {
            "self": {"href": api},
            "html": {"href": html},
            "avatar": {"href": format!("{html}/avatar/32")},
        },
    })
}

/// The whole `repo:push` payload for one change.
fn push_payload(ctx: &Ctx<'_>, ws_uuid: &str, change: &RefChange) -> Value {
    let (api, html) = (ctx.api_repo(), ctx.html_repo());
    let hash = |i: u32| hex(&ctx.repo.graph.nodes[i as usize].hash);
    let side = |idx: Option<u32>| match idx {
        Some(i) => ref_json(ctx, change.kind, &change.name, i),
        None => Value::Null,
    };
    let commits: Vec<Value> = change
        .commits
        .iter()
        .take(COMMITS_PER_CHANGE)
        .map(|&i| commit_json(ctx, i))
        .collect();
    let mut links = Map::new();
    match (change.old.map(hash), change.new.map(hash)) {
        (Some(o), Some(n)) => {
            links.insert(
                "html".into(),
                json!({"href": format!("{html}/branches/compare/{n}..{o}")}),
            );
            links.insert(
                "diff".into(),
                json!({"href": format!("{api}/diff/{n}..{o}")}),
            );
            links.insert(
                "commits".into(),
                json!({"href": format!("{api}/commits?include={n}&exclude={o}")}),
            );
        }
        (None, Some(n)) => {
            links.insert(
                "html".into(),
                json!({"href": format!("{html}/commits/{n}")}),
            );
            links.insert(
                "commits".into(),
                json!({"href": format!("{api}/commits?include={n}")}),
            );
        }
        _ => {}
    }
    let actor = PEOPLE[0]
        .user(0)
        .map(|u| user_json(ctx.origin, &u))
        .unwrap_or(Value::Null);
    json!({
        "push": {"changes": [{
            "old": side(change.old),
            "new": side(change.new),
            "created": change.old.is_none(),
            "closed": change.new.is_none(),
            "forced": change.forced,
            "truncated": change.commits.len() > COMMITS_PER_CHANGE,
            "commits": commits,
            "links": links,
        }]},
        "actor": actor,
        "repository": repository_json(ctx, ws_uuid),
    })
}

/// The headers of a delivery, without `X-Attempt-Number`.
fn delivery_headers(
    hook_uuid: &str,
    request_uuid: &str,
    secret: Option<&str>,
    body: &[u8],
) -> Vec<(String, String)> {
    let mut h: Vec<(String, String)> = [
        ("Content-Type", "application/json".to_owned()),
        ("User-Agent", "Bitbucket-Webhooks/2.0".to_owned()),
        ("X-Event-Key", REPO_PUSH.to_owned()),
        (
            "X-Event-Time",
            httpdate::fmt_http_date(std::time::SystemTime::now()),
        ),
        ("X-Hook-UUID", unbraced(hook_uuid)),
        ("X-Request-UUID", request_uuid.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    if let Some(s) = secret {
        h.push(("X-Hub-Signature".to_owned(), hub_signature(s, body)));
    }
    h
}

// ---------------------------------------------------------------------------
// Sending
// ---------------------------------------------------------------------------

/// Starts the sending thread; `None` if the thread cannot be started.
fn start_sender(log: Arc<DeliveryLog>) -> Option<mpsc::UnboundedSender<Job>> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("sim-webhooks".to_owned())
        .spawn(move || run_sender(rx, log))
        .ok()
        .map(|_| tx)
}

/// The sending thread: one lane (task) per hook, so a slow receiver delays
/// only its own deliveries, and a hook's deliveries stay in order. Ends when
/// the channel closes, after the lanes finish what they hold.
fn run_sender(mut rx: mpsc::UnboundedReceiver<Job>, log: Arc<DeliveryLog>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let Ok(runtime) = runtime else {
        // Nothing can be sent: fail every delivery at once rather than let
        // a test wait for it.
        while let Some(job) = rx.blocking_recv() {
            log.attempt(job.record, 0, Duration::ZERO, true);
        }
        return;
    };
    runtime.block_on(async move {
        let client = match http_client() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "simulator webhook client unavailable");
                while let Some(job) = rx.recv().await {
                    log.attempt(job.record, 0, Duration::ZERO, true);
                }
                return;
            }
        };
        let mut lanes: HashMap<String, mpsc::UnboundedSender<Job>> = HashMap::new();
        let mut tasks = Vec::new();
        while let Some(job) = rx.recv().await {
            let lane = lanes.entry(job.hook_uuid.clone()).or_insert_with(|| {
                let (tx, mut lane_rx) = mpsc::unbounded_channel::<Job>();
                let (client, log) = (client.clone(), Arc::clone(&log));
                tasks.push(tokio::spawn(async move {
                    while let Some(job) = lane_rx.recv().await {
                        deliver(&client, job, &log).await;
                    }
                }));
                tx
            });
            if let Err(mpsc::error::SendError(job)) = lane.send(job) {
                log.attempt(job.record, 0, Duration::ZERO, true);
            }
        }
        drop(lanes);
        for t in tasks {
            let _ = t.await;
        }
    });
}

/// One delivery with Bitbucket's retries: a 5xx, a connection error or a
/// timeout is tried again at once, up to [`ATTEMPTS`] in all; anything else
/// (2xx, 3xx, 4xx) is final.
async fn deliver(client: &reqwest::Client, job: Job, log: &DeliveryLog) {
    for attempt in 1..=ATTEMPTS {
        let started = Instant::now();
        let mut req = client
            .post(&job.url)
            .timeout(job.timeout)
            .body(job.body.clone());
        for (k, v) in &job.headers {
            req = req.header(k, v);
        }
        req = req.header("X-Attempt-Number", attempt.to_string());
        let status = match req.send().await {
            Ok(resp) => resp.status().as_u16(),
            Err(_) => 0,
        };
        let retry = status == 0 || (500..600).contains(&status);
        let last = !retry || attempt == ATTEMPTS;
        log.attempt(job.record, status, started.elapsed(), last);
        if last {
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// The simulator's side
// ---------------------------------------------------------------------------

impl Simulator {
    fn hook_state(&self) -> std::sync::MutexGuard<'_, HookState> {
        lock(&self.inner.hooks)
    }

    /// Where payload links point: the address the simulator last served on.
    pub(super) fn set_hook_origin(&self, origin: String) {
        self.hook_state().origin = Some(origin);
    }

    /// Adds an active workspace hook for `repo:push` deliveries to `url`,
    /// signed with `secret` if given; returns its braced uuid.
    pub fn add_hook(&self, ws: &str, url: &str, secret: Option<&str>) -> String {
        let now = self.world().now;
        let mut st = self.hook_state();
        let uuid = st.rng.uuid();
        st.hooks.push(StoredHook {
            uuid: uuid.clone(),
            url: url.to_owned(),
            description: "bbcrawl".to_owned(),
            active: true,
            events: vec![REPO_PUSH.to_owned()],
            secret: secret.map(str::to_owned),
            subject: Subject::Workspace(ws.to_owned()),
            skip_cert_verification: false,
            created_at: now,
        });
        uuid
    }

    /// Every hook of workspace `ws` and of its repositories, in creation
    /// order, secrets included.
    pub fn hooks(&self, ws: &str) -> Vec<SimHook> {
        let slugs: HashMap<String, String> = self
            .world()
            .workspace(ws)
            .map(|w| {
                w.repos
                    .iter()
                    .map(|r| (r.uuid.clone(), r.slug.clone()))
                    .collect()
            })
            .unwrap_or_default();
        self.hook_state()
            .hooks
            .iter()
            .filter(|h| h.subject.ws() == ws)
            .map(|h| SimHook {
                uuid: h.uuid.clone(),
                url: h.url.clone(),
                description: h.description.clone(),
                active: h.active,
                events: h.events.clone(),
                secret: h.secret.clone(),
                subject: match &h.subject {
                    Subject::Workspace(w) => w.clone(),
                    Subject::Repository { ws, uuid, slug } => {
                        format!("{ws}/{}", slugs.get(uuid).unwrap_or(slug))
                    }
                },
                skip_cert_verification: h.skip_cert_verification,
            })
            .collect()
    }

    /// Every delivery so far (one per hook and change), in the order the
    /// changes happened.
    pub fn deliveries(&self) -> Vec<DeliveryRecord> {
        lock(&self.inner.deliveries.records).clone()
    }

    /// Blocks until every delivery queued so far is done (all its attempts
    /// made) or `timeout` passes; true if all are done. Blocks the calling
    /// thread: inside a runtime that also serves the receiver, use
    /// [`Simulator::deliveries_settled`].
    pub fn settle_deliveries(&self, timeout: Duration) -> bool {
        let log = &self.inner.deliveries;
        let deadline = Instant::now() + timeout;
        let mut records = lock(&log.records);
        loop {
            if records.iter().all(|r| r.done) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            records = match log.changed.wait_timeout(records, deadline - now) {
                Ok((g, _)) => g,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    /// [`Simulator::settle_deliveries`] for async code: waits on a blocking
    /// thread, so the runtime (and a receiver on it) keeps running. The
    /// timeout is wall-clock time, also under a paused tokio clock.
    pub async fn deliveries_settled(&self, timeout: Duration) -> bool {
        let sim = self.clone();
        tokio::task::spawn_blocking(move || sim.settle_deliveries(timeout))
            .await
            .unwrap_or(false)
    }

    /// The next `n` deliveries are never sent, only logged (`lost: true`):
    /// a delivery lost on purpose, for testing what polling must catch.
    pub fn lose_next_deliveries(&self, n: usize) {
        self.hook_state().lose_next += n;
    }

    /// Changes the per-attempt delivery timeout (Bitbucket's is 10 s) for
    /// deliveries queued from now on.
    pub fn set_delivery_timeout(&self, timeout: Duration) {
        self.hook_state().timeout = timeout;
    }

    /// Pushes `n` commits onto `branch` (created on the default branch's tip
    /// if absent; the default branch itself is [`Simulator::push`]); returns
    /// their hashes newest first.
    pub fn push_branch(&self, ws: &str, slug: &str, branch: &str, n: usize) -> Vec<String> {
        let is_main = self
            .world()
            .repo_mut(ws, slug)
            .is_some_and(|r| r.mainbranch.as_deref() == Some(branch));
        if is_main {
            return self.push(ws, slug, n);
        }
        self.change_ref(ws, slug, |repo| {
            let existing = repo.branches.get(branch).copied();
            let base = existing.unwrap_or_else(|| repo.main_tip());
            let old = existing.flatten();
            let before = repo.graph.nodes.len();
            let tip = repo.grow(base, n, false);
            repo.branches.insert(branch.to_owned(), tip);
            let change = RefChange::branch(branch, old, tip, &repo.graph, before);
            (super::new_hashes(&repo.graph, before), change)
        })
    }

    /// Deletes a branch other than the default one (its own commits then
    /// answer 404, as after a force push); false if there is no such branch
    /// or it is the default branch, which Bitbucket refuses to delete.
    pub fn delete_branch(&self, ws: &str, slug: &str, branch: &str) -> bool {
        let deletable = self.world().repo_mut(ws, slug).is_some_and(|r| {
            r.branches.contains_key(branch) && r.mainbranch.as_deref() != Some(branch)
        });
        if !deletable {
            return false;
        }
        self.change_ref(ws, slug, |repo| {
            let Some(old) = repo.branches.remove(branch) else {
                return (false, None);
            };
            repo.refresh_alive();
            let change = old.map(|o| RefChange {
                kind: RefKind::Branch,
                name: branch.to_owned(),
                old: Some(o),
                new: None,
                commits: Vec::new(),
                forced: false,
            });
            (true, change)
        })
    }

    /// Tags the default branch's tip with `tag` (moving the tag if it
    /// exists); returns the tagged hash, `None` without commits.
    pub fn push_tag(&self, ws: &str, slug: &str, tag: &str) -> Option<String> {
        let has_tip = self
            .world()
            .repo_mut(ws, slug)
            .is_some_and(|r| r.main_tip().is_some());
        if !has_tip {
            return None;
        }
        self.change_ref(ws, slug, |repo| {
            let Some(tip) = repo.main_tip() else {
                return (None, None);
            };
            let old = repo.tags.insert(tag.to_owned(), tip);
            let hash = Some(hex(&repo.graph.nodes[tip as usize].hash));
            let change = (old != Some(tip)).then(|| RefChange {
                kind: RefKind::Tag,
                name: tag.to_owned(),
                old,
                new: Some(tip),
                commits: Vec::new(),
                forced: false,
            });
            (hash, change)
        })
    }

    /// Runs a change that may move a ref (see `change`) and delivers it to
    /// the hooks. The default answer when the repository does not exist.
    pub(super) fn change_ref<R: Default>(
        &self,
        ws: &str,
        slug: &str,
        f: impl FnOnce(&mut Repo) -> (R, Option<RefChange>),
    ) -> R {
        let mut uuid = String::new();
        let Some((out, moved)) = self.change(ws, slug, |repo| {
            uuid = repo.uuid.clone();
            f(repo)
        }) else {
            return R::default();
        };
        if let Some(change) = moved {
            self.announce(ws, &uuid, &change);
        }
        out
    }

    /// Queues one delivery of `change` (to repository `repo_uuid` of `ws`)
    /// per interested hook. Costs one lock when no hook is configured.
    fn announce(&self, ws: &str, repo_uuid: &str, change: &RefChange) {
        let queued_at = Instant::now();
        let (targets, origin) = {
            let st = self.hook_state();
            let targets: Vec<StoredHook> = st
                .hooks
                .iter()
                .filter(|h| h.wants_push(ws, repo_uuid))
                .cloned()
                .collect();
            (targets, st.origin())
        };
        if targets.is_empty() {
            return;
        }
        let (payload, full_name, new_hash) = {
            let world = self.world();
            let Some(w) = world.workspace(ws) else {
                return;
            };
            let Some(repo) = w.repos.iter().find(|r| r.uuid == repo_uuid) else {
                return;
            };
            let ctx = Ctx {
                origin: &origin,
                ws,
                repo,
            };
            (
                push_payload(&ctx, &w.uuid, change),
                format!("{ws}/{}", repo.slug),
                change.new.map(|i| hex(&repo.graph.nodes[i as usize].hash)),
            )
        };
        let body = Bytes::from(payload.to_string());
        let kind = change.delivery_kind();
        let mut st = self.hook_state();
        for hook in targets {
            let request_uuid = unbraced(&st.rng.uuid());
            let lost = st.lose_next > 0 || body.len() > MAX_PAYLOAD_BYTES;
            if st.lose_next > 0 {
                st.lose_next -= 1;
            }
            let record = {
                let mut records = lock(&self.inner.deliveries.records);
                records.push(DeliveryRecord {
                    request_uuid: request_uuid.clone(),
                    hook_uuid: hook.uuid.clone(),
                    full_name: full_name.clone(),
                    kind,
                    new_hash: new_hash.clone(),
                    attempts: Vec::new(),
                    queued_at,
                    done: lost,
                    lost,
                });
                records.len() - 1
            };
            if lost {
                continue;
            }
            let job = Job {
                record,
                hook_uuid: hook.uuid.clone(),
                url: hook.url.clone(),
                headers: delivery_headers(&hook.uuid, &request_uuid, hook.secret.as_deref(), &body),
                body: body.clone(),
                timeout: st.timeout,
            };
            if st.sender.is_none() {
                st.sender = start_sender(Arc::clone(&self.inner.deliveries));
            }
            let refused = match &st.sender {
                Some(tx) => tx.send(job).err().map(|e| e.0.record),
                None => Some(record),
            };
            if let Some(r) = refused {
                self.inner.deliveries.attempt(r, 0, Duration::ZERO, true);
            }
        }
    }

    /// A well-formed, unsigned `repo:push` delivery for the current
    /// default-branch tip of `ws/slug` (its first parent as `old`, the tip as
    /// the one commit), addressed as from the first hook of that workspace
    /// (or a made-up hook uuid). Nothing is sent and nothing changes. For a
    /// repository the simulator does not have (or one without commits) the
    /// delivery describes a made-up repository of that name, which is what
    /// a forgery for an unknown workspace looks like.
    pub fn push_delivery(&self, ws: &str, slug: &str) -> Delivery {
        let (origin, hook_uuid, request_uuid) = {
            let mut st = self.hook_state();
            let hook = st
                .hooks
                .iter()
                .find(|h| h.subject.ws() == ws)
                .map(|h| h.uuid.clone());
            let request_uuid = unbraced(&st.rng.uuid());
            let hook_uuid = hook.unwrap_or_else(|| st.rng.uuid());
            (st.origin(), hook_uuid, request_uuid)
        };
        let tip_change = |repo: &Repo| -> Option<RefChange> {
            let branch = repo.mainbranch.clone()?;
            let tip = repo.main_tip()?;
            let old = repo.graph.nodes[tip as usize].parents().first().copied();
            Some(RefChange {
                kind: RefKind::Branch,
                name: branch,
                old,
                new: Some(tip),
                commits: vec![tip],
                forced: false,
            })
        };
        let payload = {
            let world = self.world();
            world.workspace(ws).and_then(|w| {
                let repo = w.repos.iter().find(|r| r.slug == slug)?;
                let change = tip_change(repo)?;
                let ctx = Ctx {
                    origin: &origin,
                    ws,
                    repo,
                };
                Some(push_payload(&ctx, &w.uuid, &change))
            })
        };
        let payload = payload.unwrap_or_else(|| {
            // A stand-in repository of that name with a short history.
            let label = format!("{ws}/{slug}");
            let rng = Rng::new(mix(label.len() as u64) ^ 0xF0_4C_ED);
            let mut repo = Repo::new(derived_uuid(&label), slug, rng, BASE_TIME);
            let tip = repo.grow(None, 2, false);
            repo.branches.insert("main".to_owned(), tip);
            repo.mainbranch = Some("main".to_owned());
            let ctx = Ctx {
                origin: &origin,
                ws,
                repo: &repo,
            };
            let ws_uuid = derived_uuid(&format!("workspace {ws}"));
            match tip_change(&repo) {
                Some(change) => push_payload(&ctx, &ws_uuid, &change),
                None => json!({"push": {"changes": []}}),
            }
        });
        let body = payload.to_string().into_bytes();
        let mut headers = delivery_headers(&hook_uuid, &request_uuid, None, &body);
        headers.push(("X-Attempt-Number".to_owned(), "1".to_owned()));
        Delivery { headers, body }
    }

    // -----------------------------------------------------------------------
    // The REST API
    // -----------------------------------------------------------------------

    /// `…/hooks[/{uid}]` of a workspace (`slug` None) or a repository.
    pub(super) fn hooks_api(
        &self,
        req: &ApiRequest,
        auth: &Auth,
        ws: &str,
        slug: Option<&str>,
        rest: &[&str],
    ) -> Answer {
        let read = req.method == "GET" || req.method == "HEAD";
        let need = if read {
            Scope::ReadWebhook
        } else {
            Scope::WriteWebhook
        };
        if let Some(denied) = scope_check(auth, need) {
            return denied;
        }
        let no_workspace =
            || Answer::error(404, &format!("No workspace with identifier '{ws}'."), None);
        if !auth.workspaces.iter().any(|w| w.eq_ignore_ascii_case(ws)) {
            return no_workspace();
        }
        let (subject, subject_json) = {
            let world = self.world();
            let Some(w) = world.workspace(ws) else {
                return no_workspace();
            };
            let origin = &req.origin;
            let ews = enc(ws);
            match slug {
                None => (
                    Subject::Workspace(ws.to_owned()),
                    json!({"type": "workspace", "slug": ws, "name": ws, "uuid": w.uuid,
                           "links": {"self": {"href": format!("{origin}/2.0/workspaces/{ews}")}}}),
                ),
                Some(slug) => {
                    let Some(repo) = w.repos.iter().find(|r| r.slug == slug) else {
                        return repo_not_found(ws, slug);
                    };
                    let ctx = Ctx { origin, ws, repo };
                    (
                        Subject::Repository {
                            ws: ws.to_owned(),
                            uuid: repo.uuid.clone(),
                            slug: slug.to_owned(),
                        },
                        json!({"type": "repository", "full_name": format!("{ws}/{slug}"),
                               "name": repo.name, "uuid": repo.uuid,
                               "links": {"self": {"href": ctx.api_repo()},
                                         "html": {"href": ctx.html_repo()}}}),
                    )
                }
            }
        };
        let base = match slug {
            None => format!("{}/2.0/workspaces/{}/hooks", req.origin, enc(ws)),
            Some(s) => format!(
                "{}/2.0/repositories/{}/{}/hooks",
                req.origin,
                enc(ws),
                enc(s)
            ),
        };
        let render = |h: &StoredHook| hook_json(h, &subject_json, &base);
        let not_found = || Answer::error(404, "Webhook not found", None);
        match (rest, req.method.as_str()) {
            ([], "GET" | "HEAD") => self.list_hooks(req, &subject, &render),
            ([], "POST") => {
                let fields = match HookFields::parse(&req.body, true) {
                    Ok(f) => f,
                    Err(a) => return a,
                };
                let now = self.world().now;
                let mut st = self.hook_state();
                let hook = StoredHook {
                    uuid: st.rng.uuid(),
                    url: fields.url.unwrap_or_default(),
                    description: fields.description.unwrap_or_default(),
                    active: fields.active.unwrap_or(true),
                    events: fields.events.unwrap_or_default(),
                    secret: fields.secret.flatten(),
                    subject,
                    skip_cert_verification: fields.skip_cert_verification.unwrap_or(false),
                    created_at: now,
                };
                let v = render(&hook);
                st.hooks.push(hook);
                Answer::json(201, &v)
            }
            ([uid], "GET" | "HEAD") => {
                let st = self.hook_state();
                match st.find(&subject, uid) {
                    Some(i) => Answer::json(200, &render(&st.hooks[i])),
                    None => not_found(),
                }
            }
            ([uid], "PUT") => {
                let fields = match HookFields::parse(&req.body, false) {
                    Ok(f) => f,
                    Err(a) => return a,
                };
                let mut st = self.hook_state();
                let Some(i) = st.find(&subject, uid) else {
                    return not_found();
                };
                let h = &mut st.hooks[i];
                if let Some(url) = fields.url {
                    h.url = url;
                }
                if let Some(d) = fields.description {
                    h.description = d;
                }
                if let Some(a) = fields.active {
                    h.active = a;
                }
                if let Some(e) = fields.events {
                    h.events = e;
                }
                if let Some(s) = fields.secret {
                    h.secret = s;
                }
                if let Some(s) = fields.skip_cert_verification {
                    h.skip_cert_verification = s;
                }
                Answer::json(200, &render(h))
            }
            ([uid], "DELETE") => {
                let mut st = self.hook_state();
                match st.find(&subject, uid) {
                    Some(i) => {
                        st.hooks.remove(i);
                        Answer::no_content()
                    }
                    None => not_found(),
                }
            }
            ([] | [_], _) => Answer::error(405, "Method not allowed", None),
            _ => Answer::error(404, "Resource not found", None),
        }
    }

    /// One page of a subject's hooks, paged like the repository listing.
    fn list_hooks(
        &self,
        req: &ApiRequest,
        subject: &Subject,
        render: &dyn Fn(&StoredHook) -> Value,
    ) -> Answer {
        let pagelen = match pagelen(req, 10) {
            Ok(p) => p,
            Err(a) => return a,
        };
        let page = match req.param("page").map(str::parse::<usize>) {
            None => 1,
            Some(Ok(p)) if p >= 1 => p,
            _ => return invalid_page(),
        };
        let values: Vec<Value> = self
            .hook_state()
            .hooks
            .iter()
            .filter(|h| h.subject.same(subject))
            .map(render)
            .collect();
        let total = values.len();
        let start = (page - 1).saturating_mul(pagelen).min(total);
        let end = (start + pagelen).min(total);
        let mut body = json!({"pagelen": pagelen, "size": total, "page": page,
                              "values": values[start..end]});
        let link = |p: usize| {
            let mut q = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in &req.params {
                if k != "page" {
                    q.append_pair(k, v);
                }
            }
            q.append_pair("page", &p.to_string());
            format!("{}{}?{}", req.origin, req.path, q.finish())
        };
        if let Value::Object(m) = &mut body {
            if end < total {
                m.insert("next".into(), json!(link(page + 1)));
            }
            if page > 1 {
                m.insert("previous".into(), json!(link(page - 1)));
            }
        }
        Answer::json(200, &body)
    }
}

/// A hook as the API renders it: never its secret, only `secret_set`.
fn hook_json(h: &StoredHook, subject: &Value, base: &str) -> Value {
    let subject_type = match h.subject {
        Subject::Workspace(_) => "workspace",
        Subject::Repository { .. } => "repository",
    };
    json!({
        "type": "webhook_subscription",
        "uuid": h.uuid,
        "url": h.url,
        "description": h.description,
        "subject_type": subject_type,
        "subject": subject,
        "active": h.active,
        "created_at": created_at(h.created_at),
        "events": h.events,
        "secret_set": h.secret.is_some(),
        "skip_cert_verification": h.skip_cert_verification,
        "links": {"self": {"href": format!("{base}/{}", enc(&h.uuid))}},
    })
}

/// The fields of a create (`POST`) or replace (`PUT`) body; `None` = absent.
#[derive(Default)]
struct HookFields {
    url: Option<String>,
    description: Option<String>,
    active: Option<bool>,
    events: Option<Vec<String>>,
    /// `Some(None)`: an explicit `null` (or empty) secret removes it.
    secret: Option<Option<String>>,
    skip_cert_verification: Option<bool>,
}

impl HookFields {
    /// Parses and validates a body; `create` makes `url` and `events`
    /// required. Errors are Bitbucket's 400 with the offending fields.
    fn parse(body: &[u8], create: bool) -> Result<HookFields, Answer> {
        let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(body) else {
            return Err(Answer::error(
                400,
                "Bad request",
                Some(("detail", json!("The request body must be a JSON object."))),
            ));
        };
        let mut errors = Map::new();
        let mut bad = |field: &str, msg: &str| {
            errors.insert(field.to_owned(), json!([msg]));
        };
        let mut f = HookFields::default();
        match obj.get("url") {
            None | Some(Value::Null) if create => bad("url", "This field is required."),
            None | Some(Value::Null) => {}
            Some(Value::String(u)) => match url::Url::parse(u) {
                Ok(p) if matches!(p.scheme(), "http" | "https") && p.host().is_some() => {
                    f.url = Some(u.clone());
                }
                _ => bad("url", "Enter a valid URL."),
            },
            Some(_) => bad("url", "Enter a valid URL."),
        }
        match obj.get("description") {
            None | Some(Value::Null) => {}
            Some(Value::String(d)) => f.description = Some(d.clone()),
            Some(_) => bad("description", "Must be a string."),
        }
        match obj.get("active") {
            None | Some(Value::Null) => {}
            Some(Value::Bool(a)) => f.active = Some(*a),
            Some(_) => bad("active", "Must be a boolean."),
        }
        match obj.get("skip_cert_verification") {
            None | Some(Value::Null) => {}
            Some(Value::Bool(s)) => f.skip_cert_verification = Some(*s),
            Some(_) => bad("skip_cert_verification", "Must be a boolean."),
        }
        match obj.get("secret") {
            None => {}
            Some(Value::Null) => f.secret = Some(None),
            Some(Value::String(s)) => f.secret = Some((!s.is_empty()).then(|| s.clone())),
            Some(_) => bad("secret", "Must be a string."),
        }
        match obj.get("events") {
            None | Some(Value::Null) if create => bad("events", "This field is required."),
            None | Some(Value::Null) => {}
            Some(Value::Array(list)) if !list.is_empty() => {
                let mut events: Vec<String> = Vec::new();
                for e in list {
                    match e.as_str() {
                        Some(s) if KNOWN_EVENTS.contains(&s) => {
                            if !events.iter().any(|x| x == s) {
                                events.push(s.to_owned());
                            }
                        }
                        Some(s) => {
                            bad("events", &format!("Invalid event: {s}"));
                            break;
                        }
                        None => {
                            bad("events", "Must be a list of event names.");
                            break;
                        }
                    }
                }
                f.events = Some(events);
            }
            Some(_) => bad("events", "Must be a non-empty list of event names."),
        }
        if errors.is_empty() {
            Ok(f)
        } else {
            Err(Answer::error(
                400,
                "Bad request",
                Some(("fields", Value::Object(errors))),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_in_lower_case_hex() {
        // RFC 4231, test case 2.
        assert_eq!(
            hub_signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn uuids_compare_with_or_without_braces() {
        assert!(same_uuid("{AB-cd}", "ab-CD"));
        assert!(!same_uuid("{ab}", "{ac}"));
        assert_eq!(unbraced("{x-y}"), "x-y");
    }
}
