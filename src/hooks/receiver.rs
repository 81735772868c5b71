//! `POST /hooks/bitbucket`: the only path of the webhook listener.
//!
//! In this order, each step only for a delivery that passed the ones
//! before: the size (413 past [`MAX_BODY`], from `Content-Length` or while
//! reading), the signature over the raw bytes (401), the event (another
//! event than `repo:push`: 202, ignored), the JSON (400), the workspace
//! (404 unless configured), then duplicates (`X-Request-UUID`, or the same
//! body, seen before: 202, nothing more). What is left is handed to the
//! [`Scheduler`] and answered 202 at once.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use chrono::Utc;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::scheduler::{BranchMove, Offer, Push};
use super::secret::SignatureRefusal;
use super::{DeliverySeen, HookSecret, HookStatus, Scheduler, DELIVERIES, HOOK_PATH, MAX_BODY};

/// Request uuids and body digests remembered for duplicates.
const REMEMBERED: usize = 4096;

/// A body must arrive within this long (Bitbucket gives up after 10 s).
const BODY_DEADLINE: Duration = Duration::from_secs(10);

/// The receiver's state.
pub struct Receiver {
    secret: Arc<HookSecret>,
    /// Configured workspaces, lower case.
    workspaces: HashSet<String>,
    scheduler: Scheduler,
    recent: Mutex<Recent>,
    status: Arc<Mutex<HookStatus>>,
}

impl Receiver {
    /// A receiver for `workspaces`, checking with `secret`, handing pushes
    /// to `scheduler`, reporting to `status`.
    pub fn new(
        secret: Arc<HookSecret>,
        workspaces: &[String],
        scheduler: Scheduler,
        status: Arc<Mutex<HookStatus>>,
    ) -> Receiver {
        Receiver {
            secret,
            workspaces: workspaces.iter().map(|w| w.to_ascii_lowercase()).collect(),
            scheduler,
            recent: Mutex::new(Recent::default()),
            status,
        }
    }

    fn seen(&self, outcome: &'static str, signed: Option<(&str, &str)>) {
        metrics::counter!(DELIVERIES, "outcome" => outcome).increment(1);
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        *status.deliveries.entry(outcome.to_owned()).or_default() += 1;
        let seen = DeliverySeen {
            at: Utc::now(),
            outcome: outcome.to_owned(),
            request_uuid: signed
                .map(|(id, _)| id.to_owned())
                .filter(|s| !s.is_empty()),
            repository: signed.map(|(_, repo)| repo.to_owned()),
        };
        if signed.is_some() {
            status.last_accepted = Some(seen.clone());
        }
        status.last_delivery = Some(seen);
    }
}

/// The webhook listener's routes: only `POST /hooks/bitbucket`.
pub fn router(receiver: Arc<Receiver>) -> Router {
    Router::new()
        .route(HOOK_PATH, post(deliver))
        .fallback(|| async { answer(StatusCode::NOT_FOUND, "not_found", "no such path") })
        .with_state(receiver)
}

fn answer(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        serde_json::json!({"code": code, "message": message}).to_string(),
    )
        .into_response()
}

async fn deliver(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Body) -> Response {
    let received = Instant::now();
    let too_large = || {
        answer(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "deliveries are at most 256 KB",
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        r.seen("too_large", None);
        return too_large();
    }
    let bytes =
        match tokio::time::timeout(BODY_DEADLINE, axum::body::to_bytes(body, MAX_BODY)).await {
            Ok(Ok(b)) => b,
            Ok(Err(_)) => {
                // Past the limit (a body without Content-Length), or a body cut
                // short: nothing to act on either way.
                r.seen("too_large", None);
                return too_large();
            }
            Err(_) => {
                r.seen("malformed", None);
                return answer(
                    StatusCode::REQUEST_TIMEOUT,
                    "timeout",
                    "the body did not arrive in time",
                );
            }
        };
    let signature = headers.get("x-hub-signature").map(|v| v.as_bytes());
    match r.secret.verify(signature, &bytes) {
        Ok(()) => {}
        Err(SignatureRefusal::Unsigned) => {
            r.seen("unsigned", None);
            return answer(
                StatusCode::UNAUTHORIZED,
                "unsigned",
                "X-Hub-Signature is required",
            );
        }
        Err(SignatureRefusal::BadSignature) => {
            r.seen("bad_signature", None);
            return answer(
                StatusCode::UNAUTHORIZED,
                "bad_signature",
                "X-Hub-Signature does not match",
            );
        }
    }

    // Signed: from here on the delivery is Bitbucket's.
    let request_uuid = header_text(&headers, "x-request-uuid");
    let event = header_text(&headers, "x-event-key");
    if event != "repo:push" {
        r.seen("ignored", Some((&request_uuid, "")));
        return answer(
            StatusCode::ACCEPTED,
            "ignored",
            "only repo:push is acted on",
        );
    }
    let payload: Payload = match serde_json::from_slice(&bytes) {
        Ok(p) => p,
        Err(_) => {
            r.seen("malformed", Some((&request_uuid, "")));
            return answer(
                StatusCode::BAD_REQUEST,
                "malformed",
                "not a repo:push payload",
            );
        }
    };
    let Some((workspace, slug)) = payload.repository.names() else {
        r.seen("malformed", Some((&request_uuid, "")));
        return answer(
            StatusCode::BAD_REQUEST,
            "malformed",
            "the repository has no usable full_name",
        );
    };
    let full_name = format!("{workspace}/{slug}");
    if !r.workspaces.contains(&workspace) {
        r.seen("unknown_workspace", Some((&request_uuid, &full_name)));
        return answer(
            StatusCode::NOT_FOUND,
            "unknown_workspace",
            "this workspace is not crawled here",
        );
    }
    let Some(uuid) = braced_uuid(&payload.repository.uuid) else {
        r.seen("malformed", Some((&request_uuid, &full_name)));
        return answer(
            StatusCode::BAD_REQUEST,
            "malformed",
            "the repository has no usable uuid",
        );
    };
    let fresh = {
        let mut recent = r.recent.lock().unwrap_or_else(|e| e.into_inner());
        let by_body = recent.insert(digest(b"body", &bytes));
        let by_id =
            request_uuid.is_empty() || recent.insert(digest(b"uuid", request_uuid.as_bytes()));
        by_body && by_id
    };
    if !fresh {
        r.seen("duplicate", Some((&request_uuid, &full_name)));
        return answer(StatusCode::ACCEPTED, "duplicate", "already received");
    }
    let moves: Vec<BranchMove> = payload
        .push
        .map(|p| p.changes)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|c| c.new)
        .filter(|n| n.kind == "branch")
        .filter_map(|n| {
            let hash = n.target?.hash.to_ascii_lowercase();
            let ok = !n.name.is_empty()
                && (7..=64).contains(&hash.len())
                && hash.bytes().all(|b| b.is_ascii_hexdigit());
            ok.then_some(BranchMove {
                branch: n.name,
                hash,
            })
        })
        .collect();
    let offer = if moves.is_empty() {
        Offer::Ignored
    } else {
        r.scheduler.offer(Push {
            workspace,
            uuid,
            slug,
            moves,
            received,
        })
    };
    let (outcome, message) = match offer {
        Offer::Scheduled => ("accepted", "the default branch will be fetched"),
        Offer::AlreadyStored => ("duplicate", "already stored"),
        Offer::Ignored => (
            "ignored",
            "nothing to fetch: not the default branch of a repository crawled here",
        ),
    };
    r.seen(outcome, Some((&request_uuid, &full_name)));
    tracing::debug!(repo = %full_name, request = %request_uuid, outcome, "webhook delivery");
    answer(StatusCode::ACCEPTED, outcome, message)
}

/// A header as text, at most 100 characters (shown by `hooks status`).
fn header_text(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().chars().take(100).collect())
        .unwrap_or_default()
}

fn digest(kind: &[u8], bytes: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(kind);
    h.update(bytes);
    h.finalize().into()
}

/// The repository uuid as the store keys it: braced, lower case. Bitbucket
/// sends it braced; a bare one is accepted too. Anything else is refused.
fn braced_uuid(uuid: &str) -> Option<String> {
    let bare = uuid
        .strip_prefix('{')
        .and_then(|u| u.strip_suffix('}'))
        .unwrap_or(uuid);
    let ok = bare.len() == 36 && bare.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    ok.then(|| format!("{{{}}}", bare.to_ascii_lowercase()))
}

/// The last [`REMEMBERED`] keys.
#[derive(Default)]
struct Recent {
    set: HashSet<[u8; 32]>,
    order: VecDeque<[u8; 32]>,
}

impl Recent {
    /// Whether `key` is new (it is remembered from now on).
    fn insert(&mut self, key: [u8; 32]) -> bool {
        if !self.set.insert(key) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

/// The parts of a `repo:push` payload bbcrawl reads.
#[derive(Deserialize)]
struct Payload {
    repository: PayloadRepo,
    #[serde(default)]
    push: Option<PayloadPush>,
}

#[derive(Deserialize)]
struct PayloadRepo {
    uuid: String,
    #[serde(default)]
    full_name: Option<String>,
}

impl PayloadRepo {
    /// Workspace (lower case) and slug, from `full_name`.
    fn names(&self) -> Option<(String, String)> {
        let (ws, slug) = self.full_name.as_deref()?.split_once('/')?;
        let usable =
            |s: &str| !s.is_empty() && s != "." && s != ".." && !s.contains('/') && s.len() <= 200;
        (usable(ws) && usable(slug)).then(|| (ws.to_ascii_lowercase(), slug.to_owned()))
    }
}

#[derive(Deserialize)]
struct PayloadPush {
    #[serde(default)]
    changes: Vec<PayloadChange>,
}

#[derive(Deserialize)]
struct PayloadChange {
    #[serde(default)]
    new: Option<PayloadRef>,
}

#[derive(Deserialize)]
struct PayloadRef {
    #[serde(rename = "type")]
    kind: String,
    name: String,
    #[serde(default)]
    target: Option<PayloadTarget>,
}

#[derive(Deserialize)]
struct PayloadTarget {
    hash: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_keys_are_bounded() {
        let mut r = Recent::default();
        for i in 0..(REMEMBERED as u32 + 10) {
            assert!(r.insert(digest(b"uuid", &i.to_be_bytes())));
        }
        assert_eq!(r.set.len(), REMEMBERED);
        assert!(!r.insert(digest(b"uuid", &(REMEMBERED as u32).to_be_bytes())));
        assert!(r.insert(digest(b"uuid", &0u32.to_be_bytes())));
    }

    #[test]
    fn names_and_uuids_are_checked() {
        let repo = |f: &str| PayloadRepo {
            uuid: String::new(),
            full_name: Some(f.into()),
        };
        assert_eq!(
            repo("Acme/web").names(),
            Some(("acme".into(), "web".into()))
        );
        assert_eq!(repo("acme/..").names(), None);
        assert_eq!(repo("acme").names(), None);
        assert_eq!(repo("acme/a/b").names(), None);
        let braced = Some("{0b9e5f4c-1d2e-4f3a-8b7c-6d5e4f3a2b1c}".to_owned());
        assert_eq!(
            braced_uuid("{0B9E5F4C-1D2E-4F3A-8B7C-6D5E4F3A2B1C}"),
            braced
        );
        assert_eq!(braced_uuid("0b9e5f4c-1d2e-4f3a-8b7c-6d5e4f3a2b1c"), braced);
        assert_eq!(braced_uuid("{../../etc/passwd-xxxxxxxxxxxxxxxxxxxx}"), None);
        assert_eq!(braced_uuid("{0b9e5f4c}"), None);
    }
}
