//! Basic auth for the daemon's endpoint, as the Prometheus exporter
//! toolkit does it (`basic_auth_users`: user → bcrypt hash):
//!
//! - a password is checked with bcrypt (the `bcrypt` crate) on the blocking
//!   pool, never on the threads that serve answers; an unknown user is
//!   checked against a stand-in hash of the same cost, so the time taken
//!   does not tell which users exist;
//! - a login that passed is remembered (by SHA-256 of user, password and
//!   hash — never the password itself), so Prometheus scraping every 15 s
//!   pays for bcrypt once, not each time (the toolkit caches too); the
//!   cache is bounded and forgets everything when it is full;
//! - one bcrypt runs at a time, and at most [`QUEUE`] wait: beyond that an
//!   attempt is refused at once (`Overloaded`), so a flood of wrong
//!   passwords costs one core at most and cannot queue the daemon's memory
//!   away, while logins already remembered never wait.
//!
//! Failures are counted in `bbcrawl_http_auth_failures_total{reason}`.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

/// Logins remembered before the cache starts afresh.
const CACHE_ENTRIES: usize = 256;

/// bcrypt checks that may wait for the one running.
pub const QUEUE: usize = 32;

/// What a request's credentials are worth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A configured user with the right password.
    Allowed,
    /// No `Authorization: Basic` header (or not one that decodes).
    Missing,
    /// An unknown user or a wrong password.
    Wrong,
    /// Too many checks waiting (a flood of attempts): refused unchecked.
    Overloaded,
}

impl Verdict {
    /// The `reason` label of a failure.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            Verdict::Allowed => None,
            Verdict::Missing => Some("missing"),
            Verdict::Wrong => Some("wrong"),
            Verdict::Overloaded => Some("overloaded"),
        }
    }
}

/// The `basic_auth_users` of a web config, ready to check requests.
pub struct BasicAuth {
    users: BTreeMap<String, String>,
    /// What an unknown user's password is checked against.
    stand_in: String,
    remembered: Mutex<HashSet<[u8; 32]>>,
    bcrypt: Arc<Semaphore>,
    waiting: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the hashes.
        f.debug_struct("BasicAuth")
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A bcrypt hash of a random password, of `cost`.
fn stand_in(cost: u32) -> String {
    use rand::Rng;
    let secret: [u8; 16] = rand::thread_rng().gen();
    bcrypt::hash(secret, cost.clamp(bcrypt::DEFAULT_COST.min(4), 31))
        .unwrap_or_else(|_| "$2b$10$invalidinvalidinvalidinvalidinvalidinvalidinvalidinva".into())
}

/// The cost of a bcrypt hash (`$2b$10$…` → 10).
fn cost_of(hash: &str) -> Option<u32> {
    hash.split('$').nth(2)?.parse().ok()
}

impl BasicAuth {
    /// Checks against `users` (user → bcrypt hash). `None` when there are
    /// none: no basic auth.
    pub fn new(users: &BTreeMap<String, String>) -> Option<BasicAuth> {
        if users.is_empty() {
            return None;
        }
        let cost = users
            .values()
            .filter_map(|h| cost_of(h))
            .max()
            .unwrap_or(bcrypt::DEFAULT_COST);
        Some(BasicAuth {
            users: users.clone(),
            stand_in: stand_in(cost),
            remembered: Mutex::new(HashSet::new()),
            bcrypt: Arc::new(Semaphore::new(1)),
            waiting: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Checks the `Authorization` header's value, if any.
    pub async fn check(&self, authorization: Option<&[u8]>) -> Verdict {
        let Some((user, password)) = authorization.and_then(parse_basic) else {
            return Verdict::Missing;
        };
        let known = self.users.get(&user);
        let hash = known.unwrap_or(&self.stand_in).clone();
        let key = fingerprint(&user, &password, &hash);
        if known.is_some() && self.remembers(&key) {
            return Verdict::Allowed;
        }
        use std::sync::atomic::Ordering;
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= QUEUE {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Verdict::Overloaded;
        }
        let permit = Arc::clone(&self.bcrypt).acquire_owned().await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        let Ok(permit) = permit else {
            return Verdict::Wrong;
        };
        let ok = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            bcrypt::verify(password.as_bytes(), &hash).unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        if ok && known.is_some() {
            self.remember(key);
            Verdict::Allowed
        } else {
            Verdict::Wrong
        }
    }

    fn remembers(&self, key: &[u8; 32]) -> bool {
        self.remembered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(key)
    }

    fn remember(&self, key: [u8; 32]) {
        let mut set = self.remembered.lock().unwrap_or_else(|e| e.into_inner());
        if set.len() >= CACHE_ENTRIES {
            set.clear();
        }
        set.insert(key);
    }
}

/// SHA-256 of user, password and hash, each length-prefixed.
fn fingerprint(user: &str, password: &str, hash: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [user, password, hash] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().into()
}

/// `Basic base64(user:password)` → (user, password).
fn parse_basic(value: &[u8]) -> Option<(String, String)> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(user: &str, password: &str) -> Vec<u8> {
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {b64}").into_bytes()
    }

    fn users() -> BTreeMap<String, String> {
        // Cost 4: the least bcrypt allows, so the tests stay fast.
        BTreeMap::from([("prometheus".to_owned(), bcrypt::hash("s3cret", 4).unwrap())])
    }

    #[tokio::test]
    async fn the_right_password_passes_and_is_remembered() {
        let auth = BasicAuth::new(&users()).unwrap();
        assert_eq!(
            auth.check(Some(&header("prometheus", "s3cret"))).await,
            Verdict::Allowed
        );
        assert_eq!(auth.remembered.lock().unwrap().len(), 1);
        assert_eq!(
            auth.check(Some(&header("prometheus", "s3cret"))).await,
            Verdict::Allowed
        );
        assert_eq!(auth.remembered.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn wrong_unknown_and_missing_are_refused_and_never_remembered() {
        let auth = BasicAuth::new(&users()).unwrap();
        assert_eq!(
            auth.check(Some(&header("prometheus", "S3cret"))).await,
            Verdict::Wrong
        );
        assert_eq!(
            auth.check(Some(&header("grafana", "s3cret"))).await,
            Verdict::Wrong
        );
        assert_eq!(auth.check(None).await, Verdict::Missing);
        assert_eq!(auth.check(Some(b"Bearer abc")).await, Verdict::Missing);
        assert_eq!(auth.check(Some(b"Basic !!!")).await, Verdict::Missing);
        assert!(auth.remembered.lock().unwrap().is_empty());
    }

    #[test]
    fn no_users_means_no_basic_auth() {
        assert!(BasicAuth::new(&BTreeMap::new()).is_none());
    }

    #[test]
    fn basic_headers_parse() {
        assert_eq!(
            parse_basic(&header("a", "b:c")),
            Some(("a".into(), "b:c".into()))
        );
        assert_eq!(parse_basic(b"basic YTpi"), Some(("a".into(), "b".into())));
        assert_eq!(parse_basic(b"Basic YWI="), None, "no colon");
    }

    #[test]
    fn the_cost_of_a_hash_is_read() {
        assert_eq!(cost_of("$2b$12$abc"), Some(12));
        assert_eq!(cost_of("plain"), None);
    }
}
