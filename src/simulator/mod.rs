//! A faithful fake of the Bitbucket Cloud API subset bbcrawl uses, for the
//! demo, `simulate`, tests and benchmarks.
//!
//! It follows `shared/bitbucket-api.md`: a paged repository listing, commit
//! walks newest first with opaque signed `next` tokens, `include` / `exclude`,
//! `fields`, the three credential kinds with scopes, Bitbucket's error bodies,
//! a rolling one-hour rate limit (window length configurable) answering 429 in `text/plain`,
//! `X-RateLimit-*` headers for access tokens only, injectable transport
//! faults, and changes while it serves (pushes, force pushes, renames,
//! deletions). Everything is deterministic for a given seed: hashes, dates and
//! messages come from the simulator's own generator, and dates start at
//! 2024-01-01 instead of the wall clock.
//!
//! Webhooks ([`hooks`]): the workspace and repository hooks API
//! (`…/hooks`, webhook scope), and real-shaped, signed `repo:push`
//! deliveries whenever a change moves a ref ([`Simulator::push`],
//! [`Simulator::force_push`], [`Simulator::add_branch`],
//! [`Simulator::push_branch`], [`Simulator::delete_branch`],
//! [`Simulator::push_tag`]), sent from a background thread with Bitbucket's
//! timeout and 5xx retries, logged in [`Simulator::deliveries`]; plus lost
//! and forged deliveries for tests. Without a hook a change sends nothing.
//!
//! Files: `world.rs` the model (workspaces, repositories, commit arenas);
//! `content.rs` generated people, messages and JSON shapes; `server.rs`
//! HTTP, authentication, rate limit and the read endpoints; `hooks.rs`
//! webhooks; `render.rs` the commit-page cache; `fields.rs` partial
//! responses; `query.rs` the listing's `q=`; `rng.rs` the generator.

mod content;
mod fields;
pub mod hooks;
mod query;
mod render;
mod rng;
mod server;
mod world;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, FixedOffset};

use crate::bitbucket::models::User;
use content::{datetime, message, PEOPLE};
use hooks::RefChange;
use rng::{mix, Rng};
use world::{hex, Graph, Repo, Workspace, World, BASE_TIME, NO_COMMITTER};

pub use hooks::{
    hub_signature, send_delivery, Delivery, DeliveryKind, DeliveryRecord, SimHook,
    DELIVERY_TIMEOUT, MAX_PAYLOAD_BYTES,
};
pub use server::SimServer;

/// How the simulator behaves; see each field.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Seed of every generated hash, date, message and fault.
    pub seed: u64,
    /// Name of the generated workspace (`demo` only).
    pub workspace: String,
    /// Generated repositories in it (`demo` only), besides the special ones.
    pub repos: usize,
    /// Commits on a typical generated default branch; repositories vary around it.
    pub commits: usize,
    /// Requests allowed per credential within any `rate_window` (a rolling
    /// hour by default, as Bitbucket counts); 0 = unlimited.
    pub requests_per_hour: u32,
    /// Length of the rolling rate-limit window (default 3600 s, Bitbucket's
    /// hour). Tests shorten it so a tight limit recovers within seconds.
    pub rate_window: Duration,
    /// When set, 429s carry `Retry-After` with this many seconds (Bitbucket usually sends none).
    pub retry_after: Option<u64>,
    /// Probability (0..=1) that a request gets a random transient fault.
    pub fault_rate: f64,
    /// Added before every response.
    pub latency: Duration,
    /// Bound on the commit JSON kept rendered between requests (see
    /// [`Simulator::prerender`]); above it the cache starts over.
    pub render_cache_bytes: usize,
}

impl Default for SimOptions {
    fn default() -> SimOptions {
        SimOptions {
            seed: 1,
            workspace: "acme".to_owned(),
            repos: 12,
            commits: 300,
            requests_per_hour: 1000,
            rate_window: Duration::from_secs(3600),
            retry_after: None,
            fault_rate: 0.0,
            latency: Duration::ZERO,
            render_cache_bytes: render::DEFAULT_CACHE_BYTES,
        }
    }
}

/// A repository to create with [`Simulator::add_repo`].
#[derive(Clone, Debug)]
pub struct RepoSpec {
    /// URL slug (also its name).
    pub slug: String,
    /// Default branch; `None` = an empty repository (`mainbranch: null`).
    pub mainbranch: Option<String>,
    /// Commits reachable from the default branch; 0 with a branch = a branch
    /// without commits (its commits endpoint answers 200 with no values).
    pub commits: usize,
    /// Include merge commits (two parents) of short side branches.
    pub merges: bool,
}

impl RepoSpec {
    /// `commits` commits on `main`, with merges.
    pub fn new(slug: &str, commits: usize) -> RepoSpec {
        RepoSpec {
            slug: slug.to_owned(),
            mainbranch: Some("main".to_owned()),
            commits,
            merges: true,
        }
    }
}

/// A repository as the simulator sees it (the truth tests compare against).
#[derive(Clone, Debug)]
pub struct SimRepo {
    /// Braced uuid; survives renames.
    pub uuid: String,
    /// Current slug.
    pub slug: String,
    /// `workspace/slug`.
    pub full_name: String,
    /// Default branch, if any.
    pub mainbranch: Option<String>,
    /// Moves on pushes, force pushes, branch and repository renames.
    pub updated_on: DateTime<FixedOffset>,
}

/// A commit as the simulator sees it.
#[derive(Clone, Debug)]
pub struct SimCommit {
    /// 40 lowercase hex digits.
    pub hash: String,
    /// The date served (with its original offset).
    pub date: DateTime<FixedOffset>,
    /// `Name <email>`.
    pub author_raw: String,
    /// The author's account, when the e-mail matches one.
    pub author_user: Option<User>,
    /// `Name <email>` of the committer, when recorded.
    pub committer_raw: Option<String>,
    /// Full message.
    pub message: String,
    /// Parent hashes, first parent first.
    pub parents: Vec<String>,
}

/// A credential the simulator accepts. `workspaces` lists the workspaces it
/// can see; others answer 404, as Bitbucket does for invisible resources.
///
/// These are fake secrets of a test double, so `Debug` shows them.
#[derive(Clone, Debug)]
pub enum SimCredential {
    /// Repository/project/workspace access token: `Authorization: Bearer`.
    /// Needs scope "repository". Gets X-RateLimit-* headers.
    AccessToken {
        /// The bearer token.
        token: String,
        /// Granted scopes.
        scopes: Vec<String>,
        /// Visible workspaces.
        workspaces: Vec<String>,
    },
    /// Atlassian API token: Basic email:token. Needs
    /// "read:repository:bitbucket". No rate-limit headers.
    ApiToken {
        /// Atlassian account e-mail (the Basic username).
        email: String,
        /// The token (the Basic password).
        token: String,
        /// Granted scopes.
        scopes: Vec<String>,
        /// Visible workspaces.
        workspaces: Vec<String>,
    },
    /// Legacy app password: Basic username:password (an e-mail as username
    /// fails with 401). Needs "repository". No rate-limit headers.
    AppPassword {
        /// Bitbucket username.
        username: String,
        /// The app password.
        password: String,
        /// Granted scopes.
        scopes: Vec<String>,
        /// Visible workspaces.
        workspaces: Vec<String>,
    },
}

/// A transport or protocol fault to inject.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this status (5xx with an HTML body as a proxy would; 4xx
    /// with Bitbucket's JSON error body; 401 with `WWW-Authenticate`; 429 as text).
    Status(u16),
    /// Wait this long before sending headers, then answer normally.
    Stall(Duration),
    /// Close the connection without any response.
    Reset,
    /// 200 with a Content-Length larger than the bytes sent, then close.
    Truncated,
    /// 200 with a body that is not valid JSON.
    MalformedJson,
    /// A normal answer whose `next` link points to this other origin (e.g.
    /// "http://127.0.0.1:9999") with the same path and query.
    ForeignNext(String),
    /// 429 text/plain "Rate limit for this resource has been exceeded", with
    /// `Retry-After` if given.
    RateLimited(Option<RetryAfter>),
}

/// A `Retry-After` value.
#[derive(Clone, Debug)]
pub enum RetryAfter {
    /// Delay in seconds.
    Seconds(u64),
    /// An HTTP date, sent as given.
    HttpDate(String),
}

/// One request the simulator received.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    /// Arrival time on tokio's clock (virtual under a paused test clock).
    pub at: tokio::time::Instant,
    /// HTTP method.
    pub method: String,
    /// Raw path as received (percent-encoding kept).
    pub path: String,
    /// Raw query string.
    pub query: Option<String>,
    /// The token / e-mail / username that authenticated it; None if unauthenticated.
    pub credential: Option<String>,
    /// Status sent (0 for a reset or a connection dropped before headers).
    pub status: u16,
}

/// The request log; records carry ids so a status can be filled in after
/// the answer even if the log was cleared meanwhile.
#[derive(Default)]
struct Log {
    next_id: u64,
    records: Vec<(u64, RequestRecord)>,
}

/// Queued and random faults.
struct Faults {
    /// `None` entries let one matching request through untouched
    /// ([`Simulator::inject_after`]).
    queue: VecDeque<(Option<String>, Option<Fault>)>,
    rng: Rng,
}

/// Shared state behind a [`Simulator`] handle.
struct Inner {
    opts: SimOptions,
    world: Mutex<World>,
    log: Mutex<Log>,
    faults: Mutex<Faults>,
    /// Latency added before every answer, in nanoseconds (changeable while serving).
    latency_nanos: std::sync::atomic::AtomicU64,
    /// Per-credential arrival times of served requests in the last `rate_window`.
    limits: Mutex<HashMap<String, VecDeque<tokio::time::Instant>>>,
    /// Commit JSON already rendered (locked after `world` when both are held).
    render: Mutex<render::RenderCache>,
    /// Key signing page tokens; derived from the seed so tokens survive a
    /// restart of a simulator with the same seed.
    secret: u64,
    /// Webhooks and delivery settings (never locked while `world` is held).
    hooks: Mutex<hooks::HookState>,
    /// Every delivery; shared with the thread that sends them.
    deliveries: Arc<hooks::DeliveryLog>,
}

/// Locks a mutex, ignoring poisoning: every critical section leaves the
/// state consistent before anything that could panic, and a test double
/// should keep answering after one failed test thread.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The simulator: cheap to clone, `Send + Sync`; all clones share one world.
#[derive(Clone)]
pub struct Simulator {
    inner: Arc<Inner>,
}

/// Repository names for generated worlds (numbered when there are more repositories).
const REPO_NAMES: [&str; 24] = [
    "payments-api",
    "web-app",
    "mobile-ios",
    "mobile-android",
    "data-pipeline",
    "auth-service",
    "infra-terraform",
    "design-system",
    "search-indexer",
    "billing-worker",
    "docs-site",
    "analytics-etl",
    "notification-hub",
    "gateway",
    "ml-models",
    "cli-tools",
    "config-repo",
    "legacy-monolith",
    "email-templates",
    "feature-flags",
    "load-tests",
    "sdk-python",
    "sdk-go",
    "status-page",
];

const LANGUAGES: [&str; 6] = ["rust", "python", "typescript", "go", "java", "kotlin"];

impl Simulator {
    /// An empty world (no workspaces, no credentials); tests build it up.
    pub fn new(opts: SimOptions) -> Simulator {
        let world = World::new(opts.seed);
        let faults = Faults {
            queue: VecDeque::new(),
            rng: Rng::new(opts.seed ^ 0xFA17_FA17),
        };
        let secret = mix(opts.seed ^ 0x0070_CE5E_C2E7);
        let latency_nanos = u64::try_from(opts.latency.as_nanos()).unwrap_or(u64::MAX);
        let cache = render::RenderCache::new(opts.render_cache_bytes);
        let opts_seed = opts.seed;
        Simulator {
            inner: Arc::new(Inner {
                opts,
                world: Mutex::new(world),
                log: Mutex::new(Log::default()),
                latency_nanos: std::sync::atomic::AtomicU64::new(latency_nanos),
                faults: Mutex::new(faults),
                limits: Mutex::new(HashMap::new()),
                render: Mutex::new(cache),
                secret,
                hooks: Mutex::new(hooks::HookState::new(opts_seed)),
                deliveries: Arc::default(),
            }),
        }
    }

    /// The demo world: `opts.workspace` with `opts.repos` generated
    /// repositories of varied sizes around `opts.commits`, plus special ones
    /// (default branch `release/2024`, `mainbranch: null`, a branch without
    /// commits, an unmerged feature branch, a fork sharing history), and the
    /// default credentials (`sim-access-token`, API token `dev@example.com` /
    /// `sim-api-token`, app password `sim-user` / `sim-app-password`, and the
    /// scope-less access token `sim-noscope-token`).
    pub fn demo(opts: SimOptions) -> Simulator {
        let ws = opts.workspace.clone();
        let (n, typical, seed) = (opts.repos, opts.commits, opts.seed);
        let sim = Simulator::new(opts);
        sim.add_workspace(&ws);
        let mut rng = Rng::new(seed ^ 0xDE30);
        // Sizes vary around `commits`: a few large, several small.
        const FACTORS: [f64; 8] = [1.0, 0.5, 2.0, 0.1, 1.0, 3.0, 0.25, 1.5];
        let mut first = None;
        for i in 0..n {
            let base = REPO_NAMES[i % REPO_NAMES.len()];
            let slug = if i < REPO_NAMES.len() {
                base.to_owned()
            } else {
                format!("{base}-{}", i / REPO_NAMES.len() + 1)
            };
            let factor = FACTORS[rng.below(FACTORS.len() as u64) as usize];
            let commits = ((typical as f64 * factor).round() as usize).max(1);
            sim.add_repo(&ws, RepoSpec::new(&slug, commits));
            first.get_or_insert(slug);
        }
        let small = (typical / 4).max(5);
        sim.add_repo(
            &ws,
            RepoSpec {
                slug: "release-tools".to_owned(),
                mainbranch: Some("release/2024".to_owned()),
                commits: small,
                merges: true,
            },
        );
        sim.add_repo(
            &ws,
            RepoSpec {
                slug: "empty-repo".to_owned(),
                mainbranch: None,
                commits: 0,
                merges: false,
            },
        );
        sim.add_repo(
            &ws,
            RepoSpec {
                slug: "no-commits".to_owned(),
                mainbranch: Some("main".to_owned()),
                commits: 0,
                merges: false,
            },
        );
        sim.add_repo(&ws, RepoSpec::new("feature-work", small));
        sim.add_branch(&ws, "feature-work", "feature/unmerged", 5);
        let source = first.unwrap_or_else(|| {
            sim.add_repo(&ws, RepoSpec::new("upstream", small));
            "upstream".to_owned()
        });
        sim.fork_repo(&ws, &source, &format!("{source}-fork"));
        sim.push(&ws, &format!("{source}-fork"), 2);

        for cred in default_credentials(&ws) {
            sim.add_credential(cred);
        }
        sim
    }

    fn world(&self) -> MutexGuard<'_, World> {
        lock(&self.inner.world)
    }

    /// Adds an empty workspace (no-op if it exists).
    pub fn add_workspace(&self, ws: &str) {
        let mut world = self.world();
        if world.workspace(ws).is_none() {
            let uuid = world.next_rng().uuid();
            world.workspaces.push(Workspace {
                name: ws.to_owned(),
                uuid,
                repos: Vec::new(),
            });
        }
    }

    /// Adds a repository with a generated default-branch history; returns its
    /// braced uuid. Creates the workspace if needed; a repository with the
    /// same slug is replaced (as delete + create).
    pub fn add_repo(&self, ws: &str, spec: RepoSpec) -> String {
        self.add_workspace(ws);
        let mut world = self.world();
        let mut rng = world.next_rng();
        let uuid = rng.uuid();
        let start = BASE_TIME + rng.below(30 * 86_400) as i64;
        let language = *rng.pick(&LANGUAGES);
        let mut repo = Repo::new(uuid.clone(), &spec.slug, rng, start);
        repo.language = language;
        if let Some(branch) = spec.mainbranch {
            let tip = repo.grow(None, spec.commits, spec.merges);
            repo.branches.insert(branch.clone(), tip);
            repo.mainbranch = Some(branch);
        }
        repo.updated_on = repo.clock + 60 + repo.rng.below(3600) as i64;
        world.now = world.now.max(repo.updated_on);
        if let Some(w) = world.workspace_mut(ws) {
            w.repos.retain(|r| r.slug != spec.slug);
            w.repos.push(repo);
        }
        uuid
    }

    /// Adds a branch with `n` new commits on top of the default branch's tip
    /// (not merged anywhere); returns their hashes newest first. Makes
    /// `GET …/commits` (all branches) differ from the default branch.
    /// Hooks get a `created` change (or a move, if the branch existed).
    pub fn add_branch(&self, ws: &str, slug: &str, name: &str, n: usize) -> Vec<String> {
        self.change_ref(ws, slug, |repo| {
            let old = repo.branches.get(name).copied().flatten();
            let base = repo.main_tip();
            let before = repo.graph.nodes.len();
            let tip = repo.grow(base, n, false);
            repo.branches.insert(name.to_owned(), tip);
            let change = RefChange::branch(name, old, tip, &repo.graph, before);
            (new_hashes(&repo.graph, before), change)
        })
    }

    /// Copies a repository under a new slug with a new uuid, sharing its
    /// history (same commit hashes in both), like a fork. Returns the new uuid.
    pub fn fork_repo(&self, ws: &str, source: &str, new_slug: &str) -> Option<String> {
        let mut world = self.world();
        let mut rng = world.next_rng();
        let w = world.workspace_mut(ws)?;
        let src = w.repos.iter().find(|r| r.slug == source)?;
        let uuid = rng.uuid();
        let mut repo = Repo::new(uuid.clone(), new_slug, rng, src.created_on);
        repo.mainbranch = src.mainbranch.clone();
        repo.branches = src.branches.clone();
        repo.graph = Arc::clone(&src.graph); // copy-on-write on the fork's first push
        repo.clock = src.clock;
        repo.updated_on = src.updated_on;
        repo.language = src.language;
        w.repos.retain(|r| r.slug != new_slug);
        w.repos.push(repo);
        Some(uuid)
    }

    /// Runs a change on one repository and moves its `updated_on` (and the
    /// simulated clock) forward. `None` if the repository does not exist.
    fn change<R>(&self, ws: &str, slug: &str, f: impl FnOnce(&mut Repo) -> R) -> Option<R> {
        let mut world = self.world();
        let now = world.now;
        // Indices, not the slug, find the repository again: `f` may rename it.
        let wi = world.workspaces.iter().position(|w| w.name == ws)?;
        let ri = world.workspaces[wi]
            .repos
            .iter()
            .position(|r| r.slug == slug)?;
        let repo = &mut world.workspaces[wi].repos[ri];
        // New commits are dated after everything that happened so far.
        repo.clock = repo.clock.max(now);
        let out = f(repo);
        let clock = repo.clock;
        let t = world.tick(clock);
        world.workspaces[wi].repos[ri].updated_on = t;
        Some(out)
    }

    /// Pushes `n` new commits on the default branch (first-parent line);
    /// returns their hashes newest first. Empty for a repository without a
    /// default branch. Hooks get a `repo:push` delivery.
    pub fn push(&self, ws: &str, slug: &str, n: usize) -> Vec<String> {
        self.change_ref(ws, slug, |repo| {
            let Some(branch) = repo.mainbranch.clone() else {
                return (Vec::new(), None);
            };
            let before = repo.graph.nodes.len();
            let old = repo.branches.get(&branch).copied().flatten();
            let tip = repo.grow(old, n, false);
            repo.branches.insert(branch.clone(), tip);
            let change = RefChange::branch(&branch, old, tip, &repo.graph, before);
            (new_hashes(&repo.graph, before), change)
        })
    }

    /// Pushes like [`Simulator::push`] but leaves the repository's
    /// `updated_on` where it was. Bitbucket does not document that pushes
    /// move `updated_on`; this is the case bbcrawl's audit exists for.
    pub fn push_quietly(&self, ws: &str, slug: &str, n: usize) -> Vec<String> {
        let before = self.world().repo_mut(ws, slug).map(|r| r.updated_on);
        let pushed = self.push(ws, slug, n);
        if let (Some(t), Some(r)) = (before, self.world().repo_mut(ws, slug)) {
            r.updated_on = t;
        }
        pushed
    }

    /// Force push: drops the newest `drop` commits of the default branch
    /// (first-parent steps) and adds `add` new ones on the remaining tip;
    /// returns the new hashes newest first. Dropped commits then answer 404
    /// when named in a revision, `include` or `exclude`. Hooks get a change
    /// with `forced: true` when commits were dropped.
    pub fn force_push(&self, ws: &str, slug: &str, drop: usize, add: usize) -> Vec<String> {
        self.change_ref(ws, slug, |repo| {
            let Some(branch) = repo.mainbranch.clone() else {
                return (Vec::new(), None);
            };
            let old = repo.branches.get(&branch).copied().flatten();
            let mut tip = old;
            for _ in 0..drop {
                tip = tip.and_then(|t| repo.graph.nodes[t as usize].parents().first().copied());
            }
            let before = repo.graph.nodes.len();
            let tip = repo.grow(tip, add, false);
            repo.branches.insert(branch.clone(), tip);
            repo.refresh_alive();
            let change = RefChange::branch(&branch, old, tip, &repo.graph, before);
            (new_hashes(&repo.graph, before), change)
        })
    }

    /// Renames the default branch (mainbranch.name changes; the old branch
    /// name then answers 404).
    pub fn rename_default_branch(&self, ws: &str, slug: &str, new_name: &str) {
        self.change(ws, slug, |repo| {
            if let Some(old) = repo.mainbranch.take() {
                let tip = repo.branches.remove(&old).flatten();
                repo.branches.insert(new_name.to_owned(), tip);
                repo.mainbranch = Some(new_name.to_owned());
            }
        });
    }

    /// Renames a repository's slug (uuid unchanged; the old slug answers 404).
    pub fn rename_repo(&self, ws: &str, old_slug: &str, new_slug: &str) {
        self.change(ws, old_slug, |repo| {
            repo.slug = new_slug.to_owned();
            repo.name = new_slug.to_owned();
        });
    }

    /// Deletes a repository (absent from the listing; its URLs answer 404).
    pub fn delete_repo(&self, ws: &str, slug: &str) {
        let mut world = self.world();
        let Some(w) = world.workspace_mut(ws) else {
            return;
        };
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut w.repos)
            .into_iter()
            .partition(|r| r.slug == slug);
        w.repos = kept;
        world
            .deleted
            .extend(gone.into_iter().map(|r| (ws.to_owned(), r)));
    }

    /// Brings back a repository [`Simulator::delete_repo`] deleted (same
    /// uuid, same history).
    pub fn restore_repo(&self, ws: &str, slug: &str) {
        let mut world = self.world();
        let Some(i) = world
            .deleted
            .iter()
            .position(|(w, r)| w == ws && r.slug == slug)
        else {
            return;
        };
        let (_, repo) = world.deleted.remove(i);
        if let Some(w) = world.workspace_mut(ws) {
            w.repos.push(repo);
        }
    }

    /// Adds a credential.
    pub fn add_credential(&self, cred: SimCredential) {
        self.world().credentials.push(cred);
    }

    /// Makes a credential invalid (every request with it answers 401, as
    /// for a revoked token) or valid again, while serving. `secret_or_user`
    /// is the access token, or the e-mail / username or the token /
    /// password of a Basic credential.
    pub fn set_credential_valid(&self, secret_or_user: &str, valid: bool) {
        let mut world = self.world();
        if valid {
            world.revoked.remove(secret_or_user);
        } else {
            world.revoked.insert(secret_or_user.to_owned());
        }
    }

    /// Repositories of a workspace in listing order.
    pub fn repos(&self, ws: &str) -> Vec<SimRepo> {
        let world = self.world();
        let Some(w) = world.workspace(ws) else {
            return Vec::new();
        };
        w.repos
            .iter()
            .map(|r| SimRepo {
                uuid: r.uuid.clone(),
                slug: r.slug.clone(),
                full_name: format!("{ws}/{}", r.slug),
                mainbranch: r.mainbranch.clone(),
                updated_on: datetime(r.updated_on, 0),
            })
            .collect()
    }

    /// The commits reachable from the default branch, in exactly the order
    /// `GET …/commits/{mainbranch}` serves them (newest first, topological).
    pub fn branch_commits(&self, ws: &str, slug: &str) -> Vec<SimCommit> {
        let mut world = self.world();
        let Some(repo) = world.repo_mut(ws, slug) else {
            return Vec::new();
        };
        let tip = repo.main_tip();
        let walk = repo.walk(tip.into_iter().collect(), Vec::new());
        walk.iter().map(|&i| sim_commit(&repo.graph, i)).collect()
    }

    /// Queues faults: each of the next requests whose path contains
    /// `path_contains` (None = any request) consumes one fault, in order.
    pub fn inject(&self, path_contains: Option<&str>, faults: Vec<Fault>) {
        let mut f = lock(&self.inner.faults);
        for fault in faults {
            f.queue
                .push_back((path_contains.map(str::to_owned), Some(fault)));
        }
    }

    /// Like [`Simulator::inject`], but the first `n` matching requests pass
    /// untouched before the faults apply.
    pub fn inject_after(&self, n: usize, path_contains: Option<&str>, faults: Vec<Fault>) {
        let mut f = lock(&self.inner.faults);
        for _ in 0..n {
            f.queue.push_back((path_contains.map(str::to_owned), None));
        }
        for fault in faults {
            f.queue
                .push_back((path_contains.map(str::to_owned), Some(fault)));
        }
    }

    /// Changes the latency added before every answer.
    pub fn set_latency(&self, latency: Duration) {
        self.inner.latency_nanos.store(
            u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// The latency added before every answer.
    pub fn latency(&self) -> Duration {
        Duration::from_nanos(
            self.inner
                .latency_nanos
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Every request received so far, in arrival order (including ones
    /// answered with faults or errors).
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.inner.log)
            .records
            .iter()
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// Renders every commit of every repository ahead of time as a client at
    /// `origin` (e.g. `http://127.0.0.1:8080`, what its `Host` header names)
    /// asking with `fields` will see it, within
    /// [`SimOptions::render_cache_bytes`]. Benchmarks call it before the
    /// clock starts so the simulator costs the crawler little CPU; answers
    /// are the same with or without it. Returns the bytes cached.
    pub fn prerender(&self, origin: &str, fields: Option<&str>) -> usize {
        let world = lock(&self.inner.world);
        let mut cache = lock(&self.inner.render);
        for ws in &world.workspaces {
            for repo in &ws.repos {
                let ctx = content::Ctx {
                    origin,
                    ws: &ws.name,
                    repo,
                };
                let all: Vec<u32> = (0..repo.graph.nodes.len() as u32).collect();
                for chunk in all.chunks(1000) {
                    cache.items(&ctx, &repo.graph, chunk, fields);
                }
            }
        }
        cache.bytes()
    }

    /// Forgets the request log.
    pub fn clear_requests(&self) {
        lock(&self.inner.log).records.clear();
    }

    /// Serves on an already-bound listener (tests pass 127.0.0.1:0). Returns
    /// once the server task is spawned.
    pub async fn serve(&self, listener: tokio::net::TcpListener) -> std::io::Result<SimServer> {
        let server = server::serve(self.clone(), listener)?;
        // Webhook payloads link to the API as this server serves it.
        self.set_hook_origin(format!("http://{}", server.local_addr()));
        Ok(server)
    }
}

/// Hashes of the commits appended since `before`, newest first.
fn new_hashes(g: &Graph, before: usize) -> Vec<String> {
    g.nodes[before..]
        .iter()
        .rev()
        .map(|n| hex(&n.hash))
        .collect()
}

fn sim_commit(g: &Graph, idx: u32) -> SimCommit {
    let n = &g.nodes[idx as usize];
    let author = n.author as usize % PEOPLE.len();
    SimCommit {
        hash: hex(&n.hash),
        date: datetime(n.time, n.offset_min),
        author_raw: PEOPLE[author].raw(),
        author_user: PEOPLE[author].user(author),
        committer_raw: (n.committer != NO_COMMITTER)
            .then(|| PEOPLE[n.committer as usize % PEOPLE.len()].raw()),
        message: message(n),
        parents: n
            .parents()
            .iter()
            .map(|&p| hex(&g.nodes[p as usize].hash))
            .collect(),
    }
}

/// The credentials of the demo world (fake secrets, simulator only).
fn default_credentials(ws: &str) -> Vec<SimCredential> {
    let wss = vec![ws.to_owned()];
    vec![
        SimCredential::AccessToken {
            token: "sim-access-token".to_owned(),
            scopes: vec!["repository".to_owned()],
            workspaces: wss.clone(),
        },
        SimCredential::ApiToken {
            email: "dev@example.com".to_owned(),
            token: "sim-api-token".to_owned(),
            scopes: vec!["read:repository:bitbucket".to_owned()],
            workspaces: wss.clone(),
        },
        SimCredential::AppPassword {
            username: "sim-user".to_owned(),
            password: "sim-app-password".to_owned(),
            scopes: vec!["repository".to_owned()],
            workspaces: wss.clone(),
        },
        SimCredential::AccessToken {
            token: "sim-noscope-token".to_owned(),
            scopes: vec!["account".to_owned()],
            workspaces: wss,
        },
    ]
}

/// `bbcrawl simulate`: serves the demo world on `listen` and prints how to
/// use it, then serves until Ctrl-C.
pub async fn run_simulate(opts: SimOptions, listen: std::net::SocketAddr) -> std::io::Result<()> {
    let ws = opts.workspace.clone();
    let sim = Simulator::demo(opts);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let server = sim.serve(listener).await?;
    let repos = sim.repos(&ws).len();
    // Printing these secrets is intended: they only open this fake server.
    println!("bbcrawl simulator (fake Bitbucket Cloud API; credentials below are simulator-only)");
    println!("api_url:   {}", server.api_url());
    println!("workspace: {ws} ({repos} repositories)");
    println!("credentials:");
    println!("  access token (Bearer):          sim-access-token");
    println!("  Atlassian API token (Basic):    dev@example.com / sim-api-token");
    println!("  app password (Basic, legacy):   sim-user / sim-app-password");
    println!("  access token without scope:     sim-noscope-token  (answers 403)");
    println!("example:");
    println!(
        "  curl -H 'Authorization: Bearer sim-access-token' '{}/repositories/{ws}?pagelen=5'",
        server.api_url()
    );
    println!("Press Ctrl-C to stop.");
    tokio::signal::ctrl_c().await?;
    server.shutdown().await;
    Ok(())
}
