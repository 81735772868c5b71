//! Bitbucket `repo:push` webhooks (SPEC section 13): commits in the store
//! seconds after a push, polling kept as the safety net.
//!
//! - [`receiver`]: `POST /hooks/bitbucket` on its own listener
//!   (`hooks_listen`, off by default), so only this path needs to face the
//!   internet. Every delivery is refused (and counted) unless it is at most
//!   256 KB (413), signed with `hooks_secret_file` (`X-Hub-Signature`,
//!   HMAC-SHA256 of the raw body, checked in constant time before anything
//!   is parsed; 401), and for a configured workspace (404). A signed
//!   delivery is answered 202 at once; nothing in a refused one is looked
//!   at, so a forged delivery can never make bbcrawl send a request.
//! - [`scheduler`]: a push that moves a repository's **default branch**
//!   schedules one walk of it with `exclude=` its stored head (the same
//!   walk a pass makes, through the same client, budget, 429 gate, writer
//!   and repository lock — never two walks of one repository at once).
//!   Pushes to other branches, tags and branch deletions fetch nothing.
//!   Pushes to one repository within [`COALESCE`] make one walk, and one
//!   repository is walked at most once per [`MIN_GAP`]; a delivery whose
//!   pushed hash is already the stored head (a duplicate, a replay) fetches
//!   nothing. A push to a repository the store does not know (or knows
//!   under another slug, or as deleted) first reads its listing entry (one
//!   request), then crawls it as a pass would.
//! - [`listener`]: at most 256 connections at once, each closed after
//!   30 s, so idle or trickling clients cannot pile up on a listener that
//!   faces the internet.
//! - [`install`]: `bbcrawl hooks install` and `hooks status`.
//!
//! Passes and audits keep running: a delivery Bitbucket never sent (it has
//! no replay) is found by the next gated pass or audit.

pub mod install;
pub mod listener;
pub mod receiver;
pub mod scheduler;
pub mod secret;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use receiver::{router, Receiver};
pub use scheduler::{Scheduler, SchedulerOptions};
pub use secret::{HookSecret, SecretError};

/// The one path the receiver serves.
pub const HOOK_PATH: &str = "/hooks/bitbucket";

/// Deliveries larger than this are refused (413) unread: Bitbucket does not
/// send payloads over 256 KB at all.
pub const MAX_BODY: usize = 256 * 1024;

/// Pushes to one repository arriving within this long of the first make
/// one walk.
pub const COALESCE: Duration = Duration::from_millis(500);

/// One repository's webhook walks start at least this far apart.
pub const MIN_GAP: Duration = Duration::from_secs(1);

/// `{outcome}`: deliveries received, by what became of them.
pub const DELIVERIES: &str = "bbcrawl_hook_deliveries_total";
/// `{result}`: walks a webhook triggered.
pub const FETCHES: &str = "bbcrawl_hook_fetches_total";
/// From a delivery's arrival to its commits stored and flushed.
pub const PUSH_TO_STORED: &str = "bbcrawl_hook_push_to_stored_seconds";

/// The values of `outcome` on [`DELIVERIES`]: `accepted` (a default-branch
/// move scheduled or already stored), `ignored` (another branch, a tag, a
/// deletion, another event, a repository not crawled here), `duplicate`
/// (an `X-Request-UUID` or body seen before), then the refusals.
pub const OUTCOMES: [&str; 8] = [
    "accepted",
    "ignored",
    "duplicate",
    "unsigned",
    "bad_signature",
    "too_large",
    "unknown_workspace",
    "malformed",
];

/// The values of `result` on [`FETCHES`].
pub const FETCH_RESULTS: [&str; 2] = ["ok", "failed"];

/// Buckets of [`PUSH_TO_STORED`].
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0,
];

/// What the daemon knows of its webhooks, for `bbcrawl hooks status`
/// (`GET /admin/hooks` on the daemon; the last accepted delivery and walk
/// are also kept in the store).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HookStatus {
    /// The receiver's address (while a daemon serves it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listening: Option<String>,
    /// Deliveries since the daemon started, by outcome.
    #[serde(default)]
    pub deliveries: BTreeMap<String, u64>,
    /// The last delivery received, whatever became of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_delivery: Option<DeliverySeen>,
    /// The last signed delivery (kept in the store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_accepted: Option<DeliverySeen>,
    /// The last walk a webhook triggered (kept in the store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fetch: Option<FetchSeen>,
}

/// One delivery as seen. Only a signed delivery's own words (its request
/// uuid, repository) are kept: a refused one is only a time and a reason.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeliverySeen {
    /// When it arrived.
    pub at: DateTime<Utc>,
    /// What became of it (one of [`OUTCOMES`]).
    pub outcome: String,
    /// `X-Request-UUID` of a signed delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_uuid: Option<String>,
    /// `workspace/slug` of a signed delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
}

/// One webhook walk.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FetchSeen {
    /// When it ended.
    pub at: DateTime<Utc>,
    /// `workspace/slug`.
    pub repository: String,
    /// `ok` or `failed`.
    pub result: String,
    /// Commits it stored that were not stored before.
    pub new_commits: u64,
    /// From the first delivery it answered to its commits stored.
    pub seconds: f64,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
