//! The HTTP client: authentication, paging, origin checks, body limits,
//! error classification and retries. Every request goes through one
//! [`RateBudget`] per credential and one concurrency limit.

use std::collections::HashSet;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use backoff::backoff::Backoff;
use backoff::ExponentialBackoffBuilder;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use url::Url;

use super::budget::{Outcome, RateBudget, RateLimitBackoff};
use super::error::ApiError;
use super::models::{
    Commit, ErrorBody, Page, Repository, COMMIT_FIELDS, REPOSITORY_FIELDS, REPOSITORY_FIELDS_ONE,
};
use crate::config::{self, Config, Credential};
use crate::telemetry;

/// Largest response body accepted (a commit page with long messages is a
/// few MiB at most; anything bigger is a broken or hostile server).
pub const BODY_LIMIT: usize = 32 * 1024 * 1024;

/// Characters kept literally in a path segment: RFC 3986 "unreserved".
/// Everything else, `/` included, is percent-encoded.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Backoff between retries of transient failures (5xx, timeouts, resets,
/// broken bodies). 429s are paced by the budget's gate instead.
#[derive(Clone, Debug)]
pub struct RetryBackoff {
    /// First delay.
    pub initial: Duration,
    /// Longest delay.
    pub max: Duration,
}

impl Default for RetryBackoff {
    fn default() -> Self {
        RetryBackoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

/// Everything the client needs; built from a [`Config`] or by hand in tests.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// API base, e.g. `https://api.bitbucket.org/2.0`.
    pub api_url: Url,
    /// One or more credentials; requests are spread across them.
    pub credentials: Vec<Credential>,
    /// Budget per credential.
    pub requests_per_hour: u32,
    /// Concurrent requests in total.
    pub max_in_flight: usize,
    /// `pagelen` for listings and commits.
    pub page_size: u32,
    /// TCP + TLS connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout (headers and body).
    pub request_timeout: Duration,
    /// Retries per request for transient failures (429 included).
    pub max_retries: u32,
    /// Delays between transient retries.
    pub retry_backoff: RetryBackoff,
    /// Gate pauses after 429s without `Retry-After`.
    pub rate_limit_backoff: RateLimitBackoff,
}

impl ClientOptions {
    /// Options from a validated configuration.
    pub fn from_config(cfg: &Config) -> ClientOptions {
        ClientOptions {
            api_url: cfg.api_url.clone(),
            credentials: cfg.credentials.clone(),
            requests_per_hour: cfg.requests_per_hour,
            max_in_flight: cfg.max_in_flight,
            page_size: cfg.page_size,
            connect_timeout: cfg.connect_timeout,
            request_timeout: cfg.request_timeout,
            max_retries: cfg.max_retries,
            retry_backoff: RetryBackoff::default(),
            rate_limit_backoff: RateLimitBackoff::default(),
        }
    }

    /// Defaults of SPEC section 2 for `api_url` and `credentials`.
    pub fn new(api_url: Url, credentials: Vec<Credential>) -> ClientOptions {
        ClientOptions {
            api_url,
            credentials,
            requests_per_hour: config::DEFAULT_REQUESTS_PER_HOUR,
            max_in_flight: config::DEFAULT_MAX_IN_FLIGHT,
            page_size: config::DEFAULT_PAGE_SIZE,
            connect_timeout: Duration::from_secs(config::DEFAULT_CONNECT_TIMEOUT_SECONDS),
            request_timeout: Duration::from_secs(config::DEFAULT_REQUEST_TIMEOUT_SECONDS),
            max_retries: config::DEFAULT_MAX_RETRIES,
            retry_backoff: RetryBackoff::default(),
            rate_limit_backoff: RateLimitBackoff::default(),
        }
    }
}

/// The Bitbucket API client. Cheap to clone; clones share budgets and the
/// concurrency limit.
#[derive(Clone)]
pub struct BitbucketClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    api: Url,
    credentials: Vec<(Credential, Arc<RateBudget>)>,
    in_flight: Semaphore,
    next_credential: AtomicUsize,
    opts: ClientOptions,
    stats: Counters,
    retries: RetryNotices,
}

/// A request that failed and is being retried, as the progress line and
/// the log tell it.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryNotice {
    /// `workspace/slug` of a repository's commits, `workspace` of a listing.
    pub subject: String,
    /// What failed (never a secret: URLs carry none).
    pub message: String,
    /// The attempt that failed (1 = the first).
    pub attempt: u32,
    /// Attempts allowed (`max_retries` + 1).
    pub attempts: u32,
    /// The wait before the next attempt.
    pub retry_in: Duration,
    /// When the attempt failed.
    pub at: tokio::time::Instant,
}

/// How often one subject's retries are logged at WARN.
const RETRY_LOG_EVERY: Duration = Duration::from_secs(60);

/// Retry notices: the ones in progress (shown until the request ends) and
/// when each subject was last logged. Both maps hold one entry per
/// repository or workspace at most.
#[derive(Default)]
struct RetryNotices {
    state: std::sync::Mutex<RetryState>,
}

#[derive(Default)]
struct RetryState {
    current: std::collections::HashMap<String, RetryNotice>,
    logged: std::collections::HashMap<String, tokio::time::Instant>,
}

impl RetryNotices {
    fn lock(&self) -> std::sync::MutexGuard<'_, RetryState> {
        // Plain maps: a panic elsewhere cannot leave them inconsistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a notice; true when it should be logged loudly (its subject
    /// was not logged within [`RETRY_LOG_EVERY`]).
    fn note(&self, notice: RetryNotice) -> bool {
        let mut st = self.lock();
        let now = notice.at;
        let loud = st
            .logged
            .get(&notice.subject)
            .is_none_or(|t| now.saturating_duration_since(*t) >= RETRY_LOG_EVERY);
        if loud {
            st.logged.insert(notice.subject.clone(), now);
        }
        st.current.insert(notice.subject.clone(), notice);
        loud
    }

    /// The request for `url` ended (answered, or given up).
    fn settled(&self, url: &Url) {
        let mut st = self.lock();
        if !st.current.is_empty() {
            st.current.remove(&subject_of(url));
        }
    }

    fn latest(&self) -> Option<RetryNotice> {
        self.lock().current.values().max_by_key(|n| n.at).cloned()
    }
}

/// Running totals since the client was built.
#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    rate_limited: AtomicU64,
    retries: AtomicU64,
}

/// The credentials' rate budgets added up, at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BudgetTotals {
    /// Credentials.
    pub credentials: usize,
    /// Requests allowed per rolling hour (configured or announced).
    pub limit: u64,
    /// Requests sent within the last hour.
    pub used: u64,
    /// Requests left in the rolling hour (each credential's limit minus its
    /// use, never below zero).
    pub remaining: u64,
    /// Credentials paused after a 429.
    pub paused: usize,
    /// The longest pause left.
    pub longest_pause: Option<Duration>,
    /// When the first paused credential reopens.
    pub first_resume: Option<Duration>,
}

impl BudgetTotals {
    /// Every credential is paused: nothing goes out until the first reopens.
    pub fn all_paused(&self) -> bool {
        self.credentials > 0 && self.paused == self.credentials
    }
}

/// What the client has done so far, for progress and summaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientStats {
    /// HTTP requests sent (every attempt counts).
    pub requests: u64,
    /// 429 answers received.
    pub rate_limited: u64,
    /// Attempts that were retries.
    pub retries: u64,
}

impl std::fmt::Debug for BitbucketClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BitbucketClient")
            .field("api", &self.inner.api.as_str())
            .field("credentials", &self.inner.credentials.len())
            .finish()
    }
}

/// How one attempt failed, before retries are decided.
enum Failure {
    /// 429: pause the credential, then retry.
    RateLimited(Option<RetryAfter>),
    /// 5xx, timeout, reset, broken body: back off, then retry.
    Transient {
        message: String,
        /// No HTTP answer at all (DNS, TCP, TLS, timeout, reset).
        connection: bool,
        /// The request never reached the server (the connection could not
        /// be made): it cannot have counted against the rate limit.
        unsent: bool,
        retry_after: Option<RetryAfter>,
        /// The `reason` label of `bbcrawl_retries_total`.
        reason: &'static str,
    },
    /// Not worth retrying.
    Permanent(ApiError),
}

impl BitbucketClient {
    /// Builds the client: rustls with verified certificates, the timeouts,
    /// and a redirect policy that never leaves the API origin.
    pub fn new(opts: ClientOptions) -> Result<BitbucketClient, ApiError> {
        let api = normalise_base(&opts.api_url);
        let origin = api.origin();
        let redirect = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.url().origin() == origin && attempt.previous().len() < 5 {
                attempt.follow()
            } else {
                attempt.stop()
            }
        });
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .https_only(api.scheme() == "https")
            .connect_timeout(opts.connect_timeout)
            .timeout(opts.request_timeout)
            .redirect(redirect)
            .user_agent(concat!("bbcrawl/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ApiError::Connection {
                origin: origin_string(&api),
                message: format!("cannot build the HTTP client: {e}"),
            })?;
        let credentials = opts
            .credentials
            .iter()
            .map(|c| {
                (
                    c.clone(),
                    RateBudget::new(opts.requests_per_hour, opts.rate_limit_backoff.clone()),
                )
            })
            .collect();
        Ok(BitbucketClient {
            inner: Arc::new(Inner {
                http,
                api,
                credentials,
                in_flight: Semaphore::new(opts.max_in_flight.max(1)),
                next_credential: AtomicUsize::new(0),
                opts,
                stats: Counters::default(),
                retries: RetryNotices::default(),
            }),
        })
    }

    /// The API base URL (no trailing slash).
    pub fn api_url(&self) -> &Url {
        &self.inner.api
    }

    /// Totals since the client was built.
    pub fn stats(&self) -> ClientStats {
        let c = &self.inner.stats;
        ClientStats {
            requests: c.requests.load(Ordering::Relaxed),
            rate_limited: c.rate_limited.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
        }
    }

    /// The options the client was built with.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.opts
    }

    /// The credentials' budgets added up (progress, pass planning, metrics
    /// and health all read this one sum).
    pub fn budget_totals(&self) -> BudgetTotals {
        let mut t = BudgetTotals::default();
        for (_, budget) in &self.inner.credentials {
            let s = budget.snapshot();
            let (limit, used) = (u64::from(s.limit), s.used_in_window as u64);
            t.credentials += 1;
            t.limit += limit;
            t.used += used;
            t.remaining += limit.saturating_sub(used);
            if let Some(pause) = s.resume_in {
                t.paused += 1;
                t.longest_pause = t.longest_pause.max(Some(pause));
                t.first_resume = Some(t.first_resume.map_or(pause, |p| p.min(pause)));
            }
        }
        t
    }

    /// The rate budget of each credential, in configuration order.
    pub fn budgets(&self) -> Vec<Arc<RateBudget>> {
        self.inner
            .credentials
            .iter()
            .map(|(_, b)| Arc::clone(b))
            .collect()
    }

    /// URL of the first page of a workspace's repository listing.
    pub fn repositories_url(&self, workspace: &str) -> Result<Url, ApiError> {
        let mut url = self.endpoint(&[("workspace", "repositories"), ("workspace", workspace)])?;
        url.query_pairs_mut()
            .append_pair("pagelen", &self.inner.opts.page_size.to_string())
            .append_pair("fields", REPOSITORY_FIELDS);
        Ok(url)
    }

    /// URL of the first page of the commits reachable from `branch` and not
    /// from any of `exclude` (`git log branch ^exclude…`).
    pub fn commits_url(
        &self,
        workspace: &str,
        slug: &str,
        branch: &str,
        exclude: &[String],
    ) -> Result<Url, ApiError> {
        let mut url = self.endpoint(&[
            ("workspace", "repositories"),
            ("workspace", workspace),
            ("repository", slug),
            ("repository", "commits"),
            ("branch", branch),
        ])?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("pagelen", &self.inner.opts.page_size.to_string());
            q.append_pair("fields", COMMIT_FIELDS);
            for hash in exclude {
                q.append_pair("exclude", hash);
            }
        }
        Ok(url)
    }

    /// Pages through a workspace's repositories.
    pub fn repositories(&self, workspace: &str) -> Result<Pager<Repository>, ApiError> {
        Ok(Pager::starting_at(
            self.clone(),
            self.repositories_url(workspace)?,
        ))
    }

    /// Pages through a default branch's commits, newest first.
    pub fn commits(
        &self,
        workspace: &str,
        slug: &str,
        branch: &str,
        exclude: &[String],
    ) -> Result<Pager<Commit>, ApiError> {
        Ok(Pager::starting_at(
            self.clone(),
            self.commits_url(workspace, slug, branch, exclude)?,
        ))
    }

    /// Resumes a walk at a saved `next` link (checked against the API origin).
    pub fn resume<T: DeserializeOwned>(&self, next: &str) -> Result<Pager<T>, ApiError> {
        let url = self.check_link(next)?;
        Ok(Pager::starting_at(self.clone(), url))
    }

    /// Parses a link from a response and refuses any origin but the API's.
    pub fn check_link(&self, link: &str) -> Result<Url, ApiError> {
        let url =
            Url::parse(link).map_err(|_| ApiError::InvalidUrl(link.chars().take(200).collect()))?;
        if url.origin() != self.inner.api.origin() {
            return Err(ApiError::ForeignOrigin {
                origin: origin_string(&url),
                api_origin: origin_string(&self.inner.api),
            });
        }
        Ok(url)
    }

    /// `api_url` + the given path segments, each validated and percent-encoded.
    fn endpoint(&self, segments: &[(&'static str, &str)]) -> Result<Url, ApiError> {
        let mut path = self.inner.api.as_str().trim_end_matches('/').to_owned();
        for (what, seg) in segments {
            // `.` and `..` would be resolved as dot-segments (even encoded);
            // a `/` in a workspace or slug would address another resource.
            if seg.is_empty()
                || *seg == "."
                || *seg == ".."
                || (*what != "branch" && seg.contains('/'))
            {
                return Err(ApiError::InvalidName {
                    what,
                    value: (*seg).to_owned(),
                });
            }
            path.push('/');
            path.extend(utf8_percent_encode(seg, SEGMENT));
        }
        Url::parse(&path).map_err(|_| ApiError::InvalidUrl(path))
    }

    /// GETs one page of a paged collection; its `next` link, if relative,
    /// made absolute against `url` (it is checked before it is followed).
    /// An empty `next` ends the collection; one that names the page itself
    /// is refused, since following it would never end.
    pub async fn get_page<T: DeserializeOwned>(&self, url: Url) -> Result<Page<T>, ApiError> {
        let mut page: Page<T> = self.get_json(url.clone()).await?;
        page.next = page
            .next
            .filter(|n| !n.trim().is_empty())
            .map(|n| resolve_link(&url, n));
        if page.next.as_deref() == Some(url.as_str()) {
            return Err(ApiError::InvalidUrl(format!(
                "`next` repeats the page it came from ({})",
                url.path()
            )));
        }
        Ok(page)
    }

    /// GETs `url` and decodes its JSON body as `T`, with budget, retries and
    /// classification: a body that does not decode as `T` (truncated,
    /// malformed, wrong shape) is transient and retried. `url` must already
    /// be on the API origin.
    pub async fn get_json<T: DeserializeOwned>(&self, url: Url) -> Result<T, ApiError> {
        self.request(Method::GET, url, None, |body| {
            serde_json::from_slice::<T>(body)
        })
        .await
    }

    /// Sends `body` as JSON with `method` (`POST`, `PUT`) to `url` and
    /// decodes the answer as `T`; budget, retries and classification as for
    /// [`BitbucketClient::get_json`]. Used by `hooks install` only: a crawl
    /// never writes.
    pub async fn send_json<T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: &serde_json::Value,
    ) -> Result<T, ApiError> {
        let body = bytes::Bytes::from(serde_json::to_vec(body).unwrap_or_default());
        self.request(method, url, Some(body), |b| serde_json::from_slice::<T>(b))
            .await
    }

    /// `DELETE url` (204, no body expected).
    pub async fn delete(&self, url: Url) -> Result<(), ApiError> {
        self.request(Method::DELETE, url, None, |_| Ok::<(), String>(()))
            .await
    }

    /// URL of one repository (`GET` gives its listing entry).
    pub fn repository_url(&self, workspace: &str, slug: &str) -> Result<Url, ApiError> {
        let mut url = self.endpoint(&[
            ("workspace", "repositories"),
            ("workspace", workspace),
            ("repository", slug),
        ])?;
        url.query_pairs_mut()
            .append_pair("fields", REPOSITORY_FIELDS_ONE);
        Ok(url)
    }

    /// URL of a workspace's webhooks, or of one of them (`uid`: its braced uuid).
    pub fn workspace_hooks_url(&self, workspace: &str, uid: Option<&str>) -> Result<Url, ApiError> {
        let mut segments = vec![
            ("workspace", "workspaces"),
            ("workspace", workspace),
            ("workspace", "hooks"),
        ];
        if let Some(uid) = uid {
            segments.push(("hook", uid));
        }
        self.endpoint(&segments)
    }

    /// Sends one logical request, retrying transient failures; its retry
    /// notice (if any) ends with it.
    async fn request<T, E: std::fmt::Display>(
        &self,
        method: Method,
        url: Url,
        body: Option<bytes::Bytes>,
        decode: impl Fn(&[u8]) -> Result<T, E>,
    ) -> Result<T, ApiError> {
        let result = self.attempts(method, url.clone(), body, decode).await;
        self.inner.retries.settled(&url);
        result
    }

    /// The attempts of one logical request.
    async fn attempts<T, E: std::fmt::Display>(
        &self,
        method: Method,
        url: Url,
        body: Option<bytes::Bytes>,
        decode: impl Fn(&[u8]) -> Result<T, E>,
    ) -> Result<T, ApiError> {
        let opts = &self.inner.opts;
        let mut backoff = ExponentialBackoffBuilder::new()
            .with_initial_interval(opts.retry_backoff.initial)
            .with_max_interval(opts.retry_backoff.max)
            .with_multiplier(2.0)
            .with_randomization_factor(0.5)
            .with_max_elapsed_time(None)
            .build();
        let mut attempt: u32 = 0;
        let endpoint = telemetry::endpoint_of(url.path());
        // Set after a 429: the next wait at the budget's gate is backoff.
        let mut after_rate_limit = false;
        loop {
            let (credential, budget) = self.pick_credential();
            let waiting = tokio::time::Instant::now();
            let permit = budget.acquire().await;
            if after_rate_limit {
                // Only the request that got the 429 counts its wait, so
                // concurrent waiters at the same gate are not summed.
                telemetry::backoff(waiting.elapsed());
                after_rate_limit = false;
            }
            // The semaphore bounds concurrency across all credentials; it is
            // never closed, so acquiring cannot fail.
            let slot = self.inner.in_flight.acquire().await;
            if permit.is_stale() {
                // A 429 closed the gate while this request queued for a
                // slot: it must not go out now, and its slot is given back.
                drop(slot);
                permit.cancel();
                continue;
            }
            attempt += 1;
            self.inner.stats.requests.fetch_add(1, Ordering::Relaxed);
            if attempt > 1 {
                self.inner.stats.retries.fetch_add(1, Ordering::Relaxed);
            }
            let result = self
                .attempt(endpoint, &method, &url, body.as_ref(), credential, &budget)
                .await
                .and_then(|body| {
                    decode(&body).map_err(|e| Failure::Transient {
                        message: format!("undecodable response body ({} bytes): {e}", body.len()),
                        connection: false,
                        unsent: false,
                        retry_after: None,
                        reason: "body",
                    })
                });
            drop(slot);
            let failure = match result {
                Ok(value) => {
                    permit.finish(Outcome::Answered);
                    return Ok(value);
                }
                Err(f) => f,
            };
            let retries_left = attempt <= opts.max_retries;
            match failure {
                Failure::Permanent(e) => {
                    permit.finish(Outcome::Answered);
                    return Err(e);
                }
                Failure::RateLimited(retry_after) => {
                    self.inner
                        .stats
                        .rate_limited
                        .fetch_add(1, Ordering::Relaxed);
                    metrics::counter!(telemetry::RATE_LIMITED).increment(1);
                    let closed = permit.finish(Outcome::RateLimited(retry_after.map(|r| r.wait)));
                    match closed {
                        // This 429 closed the gate: say for how long, once.
                        Some(pause) => {
                            let why = match retry_after {
                                Some(r) if r.capped => format!(
                                    "Retry-After asked for longer than the {} rolling window; capped",
                                    crate::human::duration(RETRY_AFTER_CAP)
                                ),
                                Some(_) => "as Retry-After asks".to_owned(),
                                None => "no Retry-After: backing off".to_owned(),
                            };
                            let until = chrono::Utc::now()
                                + chrono::Duration::from_std(pause).unwrap_or_default();
                            tracing::warn!(
                                path = url.path(),
                                attempt,
                                wait_seconds = pause.as_secs_f64(),
                                until = %until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                                "rate limited (429): every request with this credential waits {} ({why}), until {}",
                                crate::human::duration(pause),
                                until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                            );
                        }
                        None => tracing::debug!(
                            path = url.path(),
                            attempt,
                            "rate limited (429) while the credential was already pausing"
                        ),
                    }
                    if !retries_left {
                        return Err(ApiError::RetriesExhausted {
                            attempts: attempt,
                            last: "HTTP 429: rate limit exceeded".into(),
                        });
                    }
                    // The gate in the budget does the waiting.
                    metrics::counter!(telemetry::RETRIES, "reason" => "rate_limited").increment(1);
                    after_rate_limit = true;
                }
                Failure::Transient {
                    message,
                    connection,
                    unsent,
                    retry_after,
                    reason,
                } => {
                    permit.finish(if unsent {
                        Outcome::NotSent
                    } else if connection {
                        Outcome::NoAnswer
                    } else {
                        Outcome::Answered
                    });
                    if !retries_left {
                        return Err(if connection {
                            ApiError::Connection {
                                origin: origin_string(&self.inner.api),
                                message,
                            }
                        } else {
                            ApiError::RetriesExhausted {
                                attempts: attempt,
                                last: message,
                            }
                        });
                    }
                    let delay = retry_after
                        .map(|r| r.wait)
                        .or_else(|| backoff.next_backoff())
                        .unwrap_or(opts.retry_backoff.max);
                    self.notice_retry(&url, &message, attempt, delay);
                    metrics::counter!(telemetry::RETRIES, "reason" => reason).increment(1);
                    let sleeping = tokio::time::Instant::now();
                    tokio::time::sleep(delay).await;
                    telemetry::backoff(sleeping.elapsed());
                }
            }
        }
    }

    /// Says that `url` failed and will be retried: a WARN line (at most one
    /// per repository or listing per minute, so a long outage does not
    /// flood the log) and the notice the progress line shows.
    fn notice_retry(&self, url: &Url, message: &str, attempt: u32, delay: Duration) {
        let attempts = self.inner.opts.max_retries.saturating_add(1);
        let subject = subject_of(url);
        let loud = self.inner.retries.note(RetryNotice {
            subject: subject.clone(),
            message: message.to_owned(),
            attempt,
            attempts,
            retry_in: delay,
            at: tokio::time::Instant::now(),
        });
        if loud {
            tracing::warn!(
                subject = %subject,
                path = url.path(),
                attempt,
                attempts,
                retry_in_seconds = delay.as_secs_f64(),
                "{subject}: {message}; attempt {attempt} of {attempts} failed, retrying in {}",
                crate::human::duration(delay)
            );
        } else {
            tracing::debug!(subject = %subject, path = url.path(), attempt, ?delay, %message, "transient failure; retrying");
        }
    }

    /// The latest request still being retried, if any (for progress).
    pub fn retrying(&self) -> Option<RetryNotice> {
        self.inner.retries.latest()
    }

    /// Chooses the credential for the next request: spreads requests over
    /// credentials that are not paused, least used first.
    fn pick_credential(&self) -> (&Credential, Arc<RateBudget>) {
        let creds = &self.inner.credentials;
        let start = self.inner.next_credential.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<(usize, (bool, usize))> = None;
        for k in 0..creds.len() {
            let i = (start + k) % creds.len();
            let snap = creds[i].1.snapshot();
            let key = (snap.paused, snap.used_in_window);
            if best.is_none_or(|(_, b)| key < b) {
                best = Some((i, key));
            }
        }
        let i = best.map(|(i, _)| i).unwrap_or(0);
        (&creds[i].0, Arc::clone(&creds[i].1))
    }

    /// One HTTP exchange, classified and counted: every attempt that
    /// leaves this process is recorded here, once.
    async fn attempt(
        &self,
        endpoint: &'static str,
        method: &Method,
        url: &Url,
        body: Option<&bytes::Bytes>,
        credential: &Credential,
        budget: &RateBudget,
    ) -> Result<bytes::Bytes, Failure> {
        let started = tokio::time::Instant::now();
        let mut status = None;
        let result = self
            .exchange(method, url, body, credential, budget, &mut status)
            .await;
        telemetry::http_attempt(endpoint, status, started.elapsed().as_secs_f64());
        result
    }

    /// One HTTP exchange, classified; `status` is set when an answer came.
    async fn exchange(
        &self,
        method: &Method,
        url: &Url,
        body: Option<&bytes::Bytes>,
        credential: &Credential,
        budget: &RateBudget,
        status_seen: &mut Option<u16>,
    ) -> Result<bytes::Bytes, Failure> {
        let mut req = self.inner.http.request(method.clone(), url.clone());
        if let Some(body) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        // reqwest marks these Authorization headers sensitive, so they are
        // never printed by its Debug output or logs.
        let req = match credential {
            Credential::AccessToken { token } => req.bearer_auth(token.expose()),
            Credential::ApiToken { email, token } => req.basic_auth(email, Some(token.expose())),
            Credential::AppPassword { username, password } => {
                req.basic_auth(username, Some(password.expose()))
            }
        };
        let started = tokio::time::Instant::now();
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return Err(transport_failure(&e)),
        };
        let status = resp.status();
        *status_seen = Some(status.as_u16());
        let headers = resp.headers().clone();
        budget.observe_headers(
            header_u32(&headers, "x-ratelimit-limit"),
            header_str(&headers, "x-ratelimit-nearlimit").map(|v| v.eq_ignore_ascii_case("true")),
        );
        tracing::debug!(method = %method, path = url.path(), status = status.as_u16(), elapsed = ?started.elapsed(), "bitbucket answered");

        if status == StatusCode::TOO_MANY_REQUESTS {
            return Err(Failure::RateLimited(retry_after(&headers)));
        }
        if status.is_redirection() {
            let location = header_str(&headers, "location").unwrap_or("");
            let target = url.join(location).ok();
            return Err(Failure::Permanent(match target {
                Some(t) if t.origin() != self.inner.api.origin() => ApiError::ForeignOrigin {
                    origin: origin_string(&t),
                    api_origin: origin_string(&self.inner.api),
                },
                _ => ApiError::Rejected {
                    status: status.as_u16(),
                    message: "too many redirects".into(),
                },
            }));
        }
        let body = read_body(resp).await?;
        if status.is_success() {
            return Ok(body);
        }
        if status.is_server_error() {
            return Err(Failure::Transient {
                message: format!("HTTP {}", status.as_u16()),
                connection: false,
                unsent: false,
                retry_after: retry_after(&headers),
                reason: "server_error",
            });
        }
        Err(Failure::Permanent(client_error(status, &body)))
    }
}

/// The pages one walk through a paged collection has fetched. A `next`
/// link only ever leads forward; one that leads back to any page already
/// fetched (A → B → A, from a broken proxy or cache) would be followed for
/// ever, burning the hourly budget, so it is refused before it is sent.
/// Memory grows with the walk's pages (one URL each), which a walk holds
/// for one pass.
#[derive(Debug, Default)]
pub struct VisitedPages {
    seen: HashSet<String>,
}

impl VisitedPages {
    /// Records `url` as fetched by this walk; refuses it if it already was.
    pub fn visit(&mut self, url: &Url) -> Result<(), ApiError> {
        if self.seen.insert(url.as_str().to_owned()) {
            Ok(())
        } else {
            Err(ApiError::LinkCycle {
                path: url.path().to_owned(),
                pages: self.seen.len(),
            })
        }
    }

    /// Forgets every page (the walk starts again from the top).
    pub fn clear(&mut self) {
        self.seen.clear();
    }
}

/// A paged collection, followed through its `next` links. Each page is
/// returned whole, with its `next` link, so a caller can checkpoint it.
pub struct Pager<T> {
    client: BitbucketClient,
    next: Option<String>,
    visited: VisitedPages,
    _item: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> Pager<T> {
    fn starting_at(client: BitbucketClient, url: Url) -> Pager<T> {
        Pager {
            client,
            next: Some(url.into()),
            visited: VisitedPages::default(),
            _item: PhantomData,
        }
    }

    /// The link the next call will fetch, if any.
    pub fn next_link(&self) -> Option<&str> {
        self.next.as_deref()
    }

    /// Fetches the next page; `None` after the last. A `next` link to
    /// another origin is refused here, before anything is sent. On an error
    /// the pager stays where it was, so the call can be repeated.
    pub async fn next_page(&mut self) -> Result<Option<Page<T>>, ApiError> {
        let Some(link) = self.next.clone() else {
            return Ok(None);
        };
        let url = self.client.check_link(&link)?;
        self.visited.visit(&url)?;
        let page: Page<T> = match self.client.get_page(url.clone()).await {
            Ok(page) => page,
            Err(e) => {
                // Not fetched after all: repeating the call may fetch it.
                self.visited.seen.remove(url.as_str());
                return Err(e);
            }
        };
        self.next = page.next.clone();
        Ok(Some(page))
    }

    /// Every remaining item.
    pub async fn collect_all(mut self) -> Result<Vec<T>, ApiError> {
        let mut all = Vec::new();
        while let Some(page) = self.next_page().await? {
            all.extend(page.values);
        }
        Ok(all)
    }
}

/// A `next` link as an absolute URL. Bitbucket sends absolute links; a
/// relative one (from a proxy or another implementation of the API) is
/// resolved against the page that carried it, as a browser would. Where it
/// points is checked before it is followed, like any other link.
fn resolve_link(page_url: &Url, link: String) -> String {
    match Url::parse(&link) {
        Ok(_) => link,
        Err(url::ParseError::RelativeUrlWithoutBase) => {
            page_url.join(&link).map(String::from).unwrap_or(link)
        }
        Err(_) => link,
    }
}

/// `api_url` without a trailing slash, so segments can be appended.
fn normalise_base(api: &Url) -> Url {
    let mut u = api.clone();
    let trimmed = u.path().trim_end_matches('/').to_owned();
    u.set_path(&trimmed);
    u.set_query(None);
    u.set_fragment(None);
    u
}

/// `scheme://host:port` of a URL, for messages (never a path or query).
/// A URL without a web origin (`javascript:`, `file:`, `data:`) is named
/// by its scheme: its origin would print as `null`.
pub fn origin_string(url: &Url) -> String {
    let origin = url.origin();
    if origin.is_tuple() {
        origin.ascii_serialization()
    } else {
        format!("a {}: URL", url.scheme())
    }
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

fn header_u32(h: &HeaderMap, name: &str) -> Option<u32> {
    header_str(h, name).and_then(|v| v.parse().ok())
}

/// Longest `Retry-After` honoured: the rolling window is an hour.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(3600);

/// `Retry-After` in seconds or as an HTTP date, capped at
/// `RETRY_AFTER_CAP` (one hour): waiting longer than the rolling window cannot be
/// what the limit needs, and a broken server must not stall bbcrawl for
/// ever.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    asked_retry_after(value, now).map(|d| d.min(RETRY_AFTER_CAP))
}

/// `Retry-After` as asked, before the cap (saturating far beyond it).
fn asked_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        Some(Duration::from_secs(secs))
    } else if let Some(secs) = value
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
    {
        // Not HTTP's form, but some servers send decimal seconds.
        Some(Duration::from_secs_f64(secs.min(1e12)))
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        Some(at.duration_since(now).unwrap_or(Duration::ZERO))
    }
}

/// A `Retry-After` header as bbcrawl honours it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct RetryAfter {
    /// The wait honoured (at most [`RETRY_AFTER_CAP`]).
    wait: Duration,
    /// Asked for longer than the cap.
    capped: bool,
}

fn retry_after(h: &HeaderMap) -> Option<RetryAfter> {
    let asked =
        header_str(h, "retry-after").and_then(|v| asked_retry_after(v, SystemTime::now()))?;
    Some(RetryAfter {
        wait: asked.min(RETRY_AFTER_CAP),
        capped: asked > RETRY_AFTER_CAP,
    })
}

/// What a request is about, for retry notices: `workspace/slug` for a
/// repository's commits, `workspace` for a listing (one line per minute
/// each, whatever page or attempt).
fn subject_of(url: &Url) -> String {
    let segs: Vec<&str> = url
        .path_segments()
        .map(Iterator::collect)
        .unwrap_or_default();
    match segs.iter().position(|s| *s == "repositories") {
        Some(i) => segs[i + 1..]
            .iter()
            .take(2)
            .map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy())
            .collect::<Vec<_>>()
            .join("/"),
        None => url.path().to_owned(),
    }
}

fn transport_failure(e: &reqwest::Error) -> Failure {
    // reqwest's message names the URL (no credentials are ever in it).
    let (what, reason) = if e.is_timeout() {
        ("timed out", "timeout")
    } else if e.is_connect() {
        ("connection failed", "connection")
    } else if e.is_body() || e.is_decode() {
        ("response body broken", "body")
    } else {
        ("request failed", "connection")
    };
    let mut message = format!("{what}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(&format!(": {s}"));
        source = s.source();
    }
    Failure::Transient {
        message,
        connection: true,
        unsent: e.is_connect(),
        retry_after: None,
        reason,
    }
}

async fn read_body(mut resp: reqwest::Response) -> Result<bytes::Bytes, Failure> {
    if resp.content_length().is_some_and(|l| l > BODY_LIMIT as u64) {
        return Err(Failure::Permanent(ApiError::BodyTooLarge {
            limit: BODY_LIMIT,
        }));
    }
    let mut buf = bytes::BytesMut::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > BODY_LIMIT {
                    return Err(Failure::Permanent(ApiError::BodyTooLarge {
                        limit: BODY_LIMIT,
                    }));
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(buf.freeze()),
            Err(e) => {
                return Err(Failure::Transient {
                    message: format!("response body broken: {e}"),
                    connection: false,
                    unsent: false,
                    retry_after: None,
                    reason: if e.is_timeout() { "timeout" } else { "body" },
                })
            }
        }
    }
}

/// Maps a 4xx answer to its error, decoding Bitbucket's error body leniently.
pub(crate) fn client_error(status: StatusCode, body: &[u8]) -> ApiError {
    let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
    let message = match &parsed {
        Some(b) if !b.error.message.is_empty() => b.error.message.clone(),
        _ => {
            let text = String::from_utf8_lossy(body);
            let text: String = text.trim().chars().take(200).collect();
            if text.is_empty() {
                status.canonical_reason().unwrap_or("error").to_owned()
            } else {
                text
            }
        }
    };
    match status.as_u16() {
        401 => ApiError::InvalidCredentials { message },
        403 => ApiError::InvalidPermissions {
            message,
            granted: parsed.as_ref().and_then(|b| b.error.granted_scopes()),
            required: parsed.as_ref().and_then(|b| b.error.required_scopes()),
        },
        404 => ApiError::NotFound {
            message,
            shas: parsed
                .as_ref()
                .and_then(|b| b.error.shas())
                .unwrap_or_default(),
        },
        s => ApiError::Rejected { status: s, message },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(90))
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("999999", now), Some(RETRY_AFTER_CAP));
        assert_eq!(
            parse_retry_after("1.5", now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_retry_after("1e9", now), Some(RETRY_AFTER_CAP));
        assert_eq!(parse_retry_after("-3", now), None);
        assert_eq!(parse_retry_after("NaN", now), None);
    }

    #[test]
    fn relative_next_links_resolve_against_their_page() {
        let page =
            Url::parse("https://api.bitbucket.org/2.0/repositories/acme?pagelen=100").unwrap();
        let abs = "https://api.bitbucket.org/2.0/repositories/acme?page=xyz".to_owned();
        assert_eq!(resolve_link(&page, abs.clone()), abs);
        assert_eq!(
            resolve_link(&page, "/2.0/repositories/acme?page=2".into()),
            "https://api.bitbucket.org/2.0/repositories/acme?page=2"
        );
        assert_eq!(
            resolve_link(&page, "?page=3&pagelen=100".into()),
            "https://api.bitbucket.org/2.0/repositories/acme?page=3&pagelen=100"
        );
        // A scheme-relative link to another host resolves there, and is
        // then refused by the origin check like an absolute one.
        let other = resolve_link(&page, "//evil.example/2.0/x".into());
        assert_eq!(other, "https://evil.example/2.0/x");
        let c = BitbucketClient::new(ClientOptions::new(
            Url::parse("https://api.bitbucket.org/2.0/").unwrap(),
            Vec::new(),
        ))
        .unwrap();
        assert!(c.check_link(&other).is_err());
    }

    #[test]
    fn path_segments_are_encoded_and_dot_segments_refused() {
        let c = BitbucketClient::new(ClientOptions::new(
            Url::parse("https://api.bitbucket.org/2.0/").unwrap(),
            vec![],
        ))
        .unwrap();
        let u = c
            .commits_url("acme", "web app", "release/2024", &[])
            .unwrap();
        assert_eq!(
            u.path(),
            "/2.0/repositories/acme/web%20app/commits/release%2F2024"
        );
        for bad in [".", "..", "a/b", ""] {
            assert!(matches!(
                c.commits_url("acme", bad, "main", &[]),
                Err(ApiError::InvalidName { .. })
            ));
        }
        assert!(c
            .check_link("https://evil.example/2.0/repositories/acme")
            .is_err());
        assert!(c.check_link("http://api.bitbucket.org/2.0/x").is_err());
        assert!(c
            .check_link("https://api.bitbucket.org:443/2.0/x?page=abc")
            .is_ok());
    }
}
