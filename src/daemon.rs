//! `bbcrawl run`: the daemon (SPEC sections 3 and 7).
//!
//! - A sync pass at start, then one `interval` after the previous one
//!   ended (passes never overlap).
//! - One HTTP endpoint on `listen`, served on the same runtime:
//!   `GET /metrics`, `GET /healthz`, and the query API under `/api/v1/`
//!   (commits, repos, authors, stats, show, export), printing exactly what
//!   the CLI prints for the same format.
//! - The address file `<store>/daemon.json` (`{"addr":…,"pid":…}`), written
//!   atomically once listening and removed on a graceful stop, so that
//!   `query`, `show` and `export` can find the daemon that holds the store.
//! - Graceful stop: on the shutdown signal the pass's [`StopFlag`] is set,
//!   in-flight pages finish and the writer flushes (bounded by
//!   [`DRAIN_DEADLINE`]), the HTTP server stops, the address file goes.
//!
//! A pass that fails as a whole (401, 403, a listing that cannot be read)
//! is logged, counted, turns `/healthz` to 503, and the next interval tries
//! again.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::actors::{run_pass, PassError, PassObserver, PassOptions, PassSummary, StopFlag};
use crate::bitbucket::BitbucketClient;
use crate::output::{self, Format, OutputError, ShowFormat};
use crate::query::{self, CommitFilter, QueryError};
use crate::store::Store;
use crate::telemetry;

/// Name of the address file in the store directory.
pub const ADDRESS_FILE: &str = "daemon.json";

/// How long a stopping pass may take to finish its in-flight pages: what
/// is left of the 10 s SPEC promises once the server has stopped. A
/// request stuck behind a 429 pause or a long backoff is abandoned; pages
/// already written are safe (each is one atomic write) and the next run
/// resumes from the saved position.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(7);

/// How long in-flight HTTP responses (a long export) may take to finish
/// once the daemon stops.
const SERVER_DEADLINE: Duration = Duration::from_secs(2);

/// How often histograms are compacted (the recorder's upkeep).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Bytes gathered before a chunk of a streamed answer is sent.
const CHUNK: usize = 64 * 1024;

/// What `run` needs besides the client and the store.
pub struct DaemonOptions {
    /// Address of the HTTP endpoint (port 0 picks one; the address file
    /// holds the real one).
    pub listen: SocketAddr,
    /// Pause between the end of a pass and the start of the next.
    pub interval: Duration,
    /// What each pass covers.
    pub pass: PassOptions,
    /// Receives pass events (log lines per repository).
    pub observer: Arc<dyn PassObserver>,
}

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The configured address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The address file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    AddressFile {
        /// Its path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The signal handlers could not be installed.
    #[error("cannot watch for SIGTERM / SIGINT: {0}")]
    Signals(#[source] io::Error),
    /// A pass failed in a way no later pass can fix (an invalid glob).
    #[error(transparent)]
    Pass(PassError),
}

/// The content of the address file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonAddress {
    /// Where the HTTP endpoint listens.
    pub addr: SocketAddr,
    /// The daemon's process id.
    pub pid: u32,
}

/// Reads `<store>/daemon.json`, if a daemon left one.
pub fn read_address(store_dir: &Path) -> Option<DaemonAddress> {
    let text = std::fs::read(store_dir.join(ADDRESS_FILE)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Removes an address file left by a daemon that did not stop gracefully
/// (`kill -9`, a crash). Call it only while holding the store: then no
/// daemon of this store is running, and the file can only mislead.
pub fn clear_stale_address(store_dir: &Path) {
    let path = store_dir.join(ADDRESS_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => {
            tracing::info!(path = %path.display(), "removed the address file a stopped daemon left behind")
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a stale address file")
        }
    }
}

/// Response header naming the store a daemon holds (its [`Store::id`]).
pub const STORE_ID_HEADER: &str = "x-bbcrawl-store-id";
/// Response header carrying the daemon's process id.
pub const PID_HEADER: &str = "x-bbcrawl-pid";

/// Writes the address file atomically: readers see no file or a whole one.
fn write_address(store_dir: &Path, addr: SocketAddr) -> Result<PathBuf, DaemonError> {
    let path = store_dir.join(ADDRESS_FILE);
    let err = |source: io::Error| DaemonError::AddressFile {
        path: path.clone(),
        source,
    };
    let body = serde_json::to_vec(&DaemonAddress {
        addr,
        pid: std::process::id(),
    })
    .map_err(|e| err(e.into()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".daemon-")
        .tempfile_in(store_dir)
        .map_err(err)?;
    tmp.write_all(&body).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(&path).map_err(|e| err(e.error))?;
    Ok(path)
}

/// The signal that asked a command to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGTERM (systemd, `kill`).
    Term,
    /// SIGINT (Ctrl-C).
    Int,
}

impl StopSignal {
    /// The exit code of a command it stopped (SPEC section 9: 128 + the
    /// signal's number, as a shell reports a process the signal killed).
    pub fn exit_code(self) -> u8 {
        match self {
            StopSignal::Term => 143,
            StopSignal::Int => 130,
        }
    }
}

/// Resolves when SIGTERM or SIGINT arrives, with which one.
pub fn shutdown_signal() -> Result<impl std::future::Future<Output = StopSignal> + Send, DaemonError>
{
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    Ok(async move {
        let (which, name) = tokio::select! {
            _ = term.recv() => (StopSignal::Term, "SIGTERM"),
            _ = int.recv() => (StopSignal::Int, "SIGINT"),
        };
        tracing::info!(signal = name, "stopping");
        which
    })
}

/// What `/healthz` reports.
#[derive(Debug, Default)]
struct Health {
    /// Passes ended (any result).
    passes: u64,
    /// The last pass that did not fail as a whole.
    last_pass: Option<PassSummary>,
    /// When such a pass last ended.
    last_success: Option<DateTime<Utc>>,
    /// Set while the last pass failed as a whole.
    failure: Option<PassFailure>,
}

/// A pass that failed as a whole.
#[derive(Debug, Clone, Serialize)]
struct PassFailure {
    /// When it ended.
    at: DateTime<Utc>,
    /// `invalid_credentials`, `invalid_permissions`, `no_resources`,
    /// `connection_failed`, `api_error`, `store_error` or `internal`.
    code: &'static str,
    /// The error chain, one line (never a secret: API errors carry none).
    message: String,
}

/// A short, stable code for a pass failure (the `verify` codes for API errors).
fn failure_code(e: &PassError) -> &'static str {
    match e {
        PassError::Api { source, .. } => {
            crate::verify::VerifyCode::of(source).map_or("api_error", |c| c.as_str())
        }
        PassError::Store(_) => "store_error",
        PassError::Internal(_) => "internal",
    }
}

/// State shared by the HTTP handlers.
#[derive(Clone)]
struct AppState {
    store: Arc<Store>,
    health: Arc<RwLock<Health>>,
    metrics: PrometheusHandle,
    client: BitbucketClient,
}

impl AppState {
    fn health(&self) -> std::sync::RwLockReadGuard<'_, Health> {
        // Writers only replace plain fields; a poisoned lock holds a
        // consistent value.
        self.health.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// Runs the daemon until `shutdown` resolves: passes every interval, the
/// HTTP endpoint, the address file. Must be called inside an actix
/// `System`. Returns after a graceful stop.
pub async fn run(
    client: BitbucketClient,
    store: Arc<Store>,
    opts: DaemonOptions,
    metrics: PrometheusHandle,
    shutdown: impl std::future::Future<Output = StopSignal> + Send + 'static,
) -> Result<(), DaemonError> {
    let (stop_tx, mut stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        // Nobody listening means everything already stopped.
        let _ = stop_tx.send(true);
        // Keep the sender alive: a dropped sender would read as "stop" too
        // early to some waiters and never to others.
        std::future::pending::<()>().await;
    });

    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|source| DaemonError::Listen {
            addr: opts.listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| DaemonError::Listen {
            addr: opts.listen,
            source,
        })?;
    let health = Arc::new(RwLock::new(Health::default()));
    let state = AppState {
        store: Arc::clone(&store),
        health: Arc::clone(&health),
        metrics: metrics.clone(),
        client: client.clone(),
    };
    let (server_stop_tx, server_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, router(state))
            .with_graceful_shutdown(async {
                let _ = server_stop_rx.await;
            })
            .await
    });
    let address_file = write_address(store.path(), addr)?;
    tracing::info!(%addr, "serving /metrics, /healthz and /api/v1 on http://{addr}");
    let upkeep = tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_EVERY);
        loop {
            tick.tick().await;
            metrics.run_upkeep();
        }
    });

    let result = passes(&client, &store, &opts, &health, &mut stop_rx).await;

    // Stop serving: in-flight answers get a moment to finish.
    let _ = server_stop_tx.send(());
    match tokio::time::timeout(SERVER_DEADLINE, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "the HTTP server ended with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "the HTTP server task failed"),
        Err(_) => tracing::warn!("HTTP answers still in flight were cut off"),
    }
    upkeep.abort();
    if let Err(e) = std::fs::remove_file(&address_file) {
        tracing::warn!(path = %address_file.display(), error = %e, "cannot remove the address file");
    }
    tracing::info!("stopped");
    result
}

/// Waits until the stop signal is set.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|stop| *stop).await.is_err() {
        // The sender never goes away before sending (see `run`).
        std::future::pending::<()>().await;
    }
}

/// The pass loop: one pass, then `interval`, until stopped.
async fn passes(
    client: &BitbucketClient,
    store: &Arc<Store>,
    opts: &DaemonOptions,
    health: &RwLock<Health>,
    stop_rx: &mut watch::Receiver<bool>,
) -> Result<(), DaemonError> {
    loop {
        // A fresh flag per pass: a 401 sets it to end that pass only.
        let stop: StopFlag = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let pass = run_pass(
            client.clone(),
            Arc::clone(store),
            opts.pass.clone(),
            Arc::clone(&opts.observer),
            Arc::clone(&stop),
        );
        tokio::pin!(pass);
        let (result, stopping) = tokio::select! {
            r = &mut pass => (r, *stop_rx.borrow()),
            _ = stopped(stop_rx) => {
                tracing::info!("stopping the pass: in-flight pages finish, the writer flushes");
                stop.store(true, Ordering::Relaxed);
                match tokio::time::timeout(DRAIN_DEADLINE, &mut pass).await {
                    Ok(r) => (r, true),
                    Err(_) => {
                        tracing::warn!(
                            "the pass did not stop within {DRAIN_DEADLINE:?}; flushing what was stored and leaving"
                        );
                        let store = Arc::clone(store);
                        match tokio::task::spawn_blocking(move || store.flush()).await {
                            Ok(Ok(_)) => {}
                            Ok(Err(e)) => tracing::error!(error = %e, "final flush failed"),
                            Err(e) => tracing::error!(error = %e, "final flush failed"),
                        }
                        return Ok(());
                    }
                }
            }
        };
        let fatal = record_pass(result, started.elapsed(), store, health).await;
        if let Some(e) = fatal {
            return Err(DaemonError::Pass(e));
        }
        if stopping {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(opts.interval) => {}
            _ = stopped(stop_rx) => return Ok(()),
        }
    }
}

/// Logs a pass, updates `/healthz` and the metrics. Returns the error if
/// no later pass can succeed.
async fn record_pass(
    result: Result<PassSummary, PassError>,
    elapsed: Duration,
    store: &Arc<Store>,
    health: &RwLock<Health>,
) -> Option<PassError> {
    let now = Utc::now();
    metrics::gauge!(telemetry::SYNC_DURATION).set(elapsed.as_secs_f64());
    let fatal = None;
    {
        let mut h = health.write().unwrap_or_else(|e| e.into_inner());
        h.passes += 1;
        match result {
            Ok(summary) => {
                let outcome = if summary.failed > 0 || summary.interrupted {
                    "partial"
                } else {
                    "ok"
                };
                tracing::info!(
                    result = outcome,
                    // Every wanted repository, crawled or skipped by the
                    // gate (a quiet pass crawls none but covers them all).
                    repositories = summary.repos + summary.skipped + summary.audits_deferred,
                    crawled = summary.repos,
                    skipped = summary.skipped + summary.audits_deferred,
                    ok = summary.ok,
                    empty = summary.empty,
                    failed = summary.failed,
                    deleted = summary.deleted,
                    new_commits = summary.new_commits,
                    requests = summary.requests,
                    rate_limited = summary.rate_limited,
                    duration_seconds = summary.duration_seconds,
                    interrupted = summary.interrupted,
                    "pass finished"
                );
                metrics::counter!(telemetry::SYNC_PASSES, "result" => outcome).increment(1);
                metrics::gauge!(telemetry::LAST_SYNC_FAILED).set(0.0);
                metrics::gauge!(telemetry::LAST_SYNC_SUCCESS)
                    .set(now.timestamp_millis() as f64 / 1000.0);
                h.last_pass = Some(summary);
                h.last_success = Some(now);
                h.failure = None;
            }
            Err(e) => {
                let code = failure_code(&e);
                tracing::error!(code, error = %e, "pass failed; retrying at the next interval");
                metrics::counter!(telemetry::SYNC_PASSES, "result" => "failed").increment(1);
                metrics::gauge!(telemetry::LAST_SYNC_FAILED).set(1.0);
                h.failure = Some(PassFailure {
                    at: now,
                    code,
                    message: e.to_string(),
                });
            }
        }
    }
    let store = Arc::clone(store);
    match tokio::task::spawn_blocking(move || store_gauges(&store)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot read the store for its gauges"),
        Err(e) => tracing::warn!(error = %e, "cannot read the store for its gauges"),
    }
    fatal
}

/// Store size, commits and repositories by state.
fn store_gauges(store: &Store) -> Result<(), crate::store::StoreError> {
    let mut states: HashMap<&'static str, u64> = HashMap::new();
    let mut commits = 0u64;
    let (mut backfilling, mut backfill_pages) = (0u64, 0u64);
    for r in store.repos()? {
        *states.entry(r.status.as_str()).or_insert(0) += 1;
        commits += r.commits_stored;
        if let (Some(walk), None) = (&r.walk, &r.head) {
            // Bitbucket does not say how long a branch is: a walk that took
            // N pages is assumed to need about N more.
            backfilling += 1;
            backfill_pages += walk.pages.max(1);
        }
    }
    metrics::gauge!(telemetry::BACKFILL_REPOS).set(backfilling as f64);
    telemetry::BACKFILL_PAGES_ESTIMATE.store(backfill_pages, std::sync::atomic::Ordering::Relaxed);
    for state in telemetry::REPO_STATES {
        let n = states.get(state).copied().unwrap_or(0);
        metrics::gauge!(telemetry::REPOS, "state" => state).set(n as f64);
    }
    metrics::gauge!(telemetry::STORE_COMMITS).set(commits as f64);
    metrics::gauge!(telemetry::STORE_SIZE).set(store.size_on_disk()? as f64);
    Ok(())
}

// ---------------------------------------------------------------------------
// The HTTP endpoint.

fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/api/v1/commits", get(api_commits))
        .route("/api/v1/repos", get(api_repos))
        .route("/api/v1/authors", get(api_authors))
        .route("/api/v1/stats", get(api_stats))
        .route("/api/v1/show/{hash}", get(api_show))
        .route("/api/v1/export", get(api_export))
        .fallback(|| async {
            ApiFailure::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .layer(axum::middleware::map_response_with_state(
            state.clone(),
            identify,
        ))
        .with_state(state)
}

/// Names the store and the process on every answer, so the CLI can tell
/// this daemon from another that took over a stale address.
async fn identify(State(s): State<AppState>, mut resp: Response) -> Response {
    let headers = resp.headers_mut();
    if let Some(Ok(id)) = s.store.id().map(header::HeaderValue::from_str) {
        headers.insert(STORE_ID_HEADER, id);
    }
    headers.insert(PID_HEADER, header::HeaderValue::from(std::process::id()));
    resp
}

/// The credentials' rate-limit pauses now.
struct RateLimitWait {
    /// Credentials paused after a 429.
    paused: usize,
    /// Credentials in all.
    credentials: usize,
    /// The longest pause left.
    longest: Option<Duration>,
    /// When the first paused credential reopens.
    shortest: Option<Duration>,
}

fn rate_limit_wait(client: &BitbucketClient) -> RateLimitWait {
    let pauses: Vec<Duration> = client
        .budgets()
        .iter()
        .filter_map(|b| b.snapshot().resume_in)
        .collect();
    RateLimitWait {
        paused: pauses.len(),
        credentials: client.budgets().len(),
        longest: pauses.iter().max().copied(),
        shortest: pauses.iter().min().copied(),
    }
}

/// `GET /metrics`: refreshes the budget gauges, then renders.
async fn metrics_text(State(s): State<AppState>) -> Response {
    let (limit, remaining) =
        s.client
            .budgets()
            .iter()
            .map(|b| b.snapshot())
            .fold((0u64, 0u64), |(l, r), snap| {
                let left = u64::from(snap.limit).saturating_sub(snap.used_in_window as u64);
                (l + u64::from(snap.limit), r + left)
            });
    let wait = rate_limit_wait(&s.client).longest.unwrap_or_default();
    metrics::gauge!(telemetry::RATELIMIT_WAIT).set(wait.as_secs_f64());
    metrics::gauge!(telemetry::RATELIMIT_LIMIT).set(limit as f64);
    let pages = telemetry::BACKFILL_PAGES_ESTIMATE.load(std::sync::atomic::Ordering::Relaxed);
    let eta = if limit > 0 {
        pages as f64 * 3600.0 / limit as f64
    } else {
        0.0
    };
    metrics::gauge!(telemetry::BACKFILL_ETA).set(eta);
    metrics::gauge!(telemetry::RATELIMIT_REMAINING).set(remaining as f64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

/// `GET /healthz`. While a credential is paused after a 429, `rate_limit`
/// says how many are and when the first resumes; `waiting` is true when
/// all are, so the pass is waiting on the limit. The status is unchanged
/// (still 200: waiting is what the limit needs, not a failure).
async fn healthz(State(s): State<AppState>) -> Response {
    let wait = rate_limit_wait(&s.client);
    let rate_limit = (wait.paused > 0).then(|| {
        let resume_in = wait.shortest.unwrap_or_default();
        let until = Utc::now() + chrono::Duration::from_std(resume_in).unwrap_or_default();
        serde_json::json!({
            "waiting": wait.paused == wait.credentials,
            "credentials_paused": wait.paused,
            "credentials": wait.credentials,
            "resume_in_seconds": resume_in.as_secs(),
            "resume_at": until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        })
    });
    let h = s.health();
    let (status, mut body) = match &h.failure {
        Some(f) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({
                "status": "failed",
                "error": f,
                "last_pass": h.last_pass,
                "last_success": h.last_success,
            }),
        ),
        None => (
            StatusCode::OK,
            serde_json::json!({
                "status": if h.passes == 0 { "starting" } else { "ok" },
                "last_pass": h.last_pass,
                "last_success": h.last_success,
            }),
        ),
    };
    if let (Some(r), Some(obj)) = (rate_limit, body.as_object_mut()) {
        obj.insert("rate_limit".into(), r);
    }
    json_response(status, &body)
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{body}\n"),
    )
        .into_response()
}

/// An error answer: `{"code": …, "error": …}` with its status.
#[derive(Debug)]
struct ApiFailure {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiFailure {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiFailure {
        ApiFailure {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad(message: impl Into<String>) -> ApiFailure {
        ApiFailure::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        json_response(
            self.status,
            &serde_json::json!({"code": self.code, "error": self.message}),
        )
    }
}

impl From<OutputError> for ApiFailure {
    fn from(e: OutputError) -> ApiFailure {
        match e {
            OutputError::Io(e) => {
                ApiFailure::new(StatusCode::INTERNAL_SERVER_ERROR, "io_error", e.to_string())
            }
            OutputError::Query(e) => e.into(),
        }
    }
}

impl From<QueryError> for ApiFailure {
    fn from(e: QueryError) -> ApiFailure {
        let (status, code) = match &e {
            QueryError::BadHash(_) => (StatusCode::BAD_REQUEST, "bad_hash"),
            QueryError::UnknownHash(_) => (StatusCode::NOT_FOUND, "unknown_hash"),
            QueryError::AmbiguousHash { .. } => (StatusCode::CONFLICT, "ambiguous_hash"),
            QueryError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "store_error"),
        };
        ApiFailure::new(status, code, e.to_string())
    }
}

/// Query parameters, checked against the names an endpoint takes.
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(raw: Option<&str>, allowed: &[&str]) -> Result<Params, ApiFailure> {
        let pairs: Vec<(String, String)> =
            url::form_urlencoded::parse(raw.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
        for (k, _) in &pairs {
            if !allowed.contains(&k.as_str()) {
                return Err(ApiFailure::bad(format!(
                    "unknown parameter {k:?}; this endpoint takes: {}",
                    allowed.join(", ")
                )));
            }
        }
        Ok(Params(pairs))
    }

    /// Every value of a repeatable parameter.
    fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The value of a parameter given at most once.
    fn one(&self, name: &str) -> Result<Option<String>, ApiFailure> {
        let mut values = self.all(name);
        if values.len() > 1 {
            return Err(ApiFailure::bad(format!(
                "parameter {name:?} given more than once"
            )));
        }
        Ok(values.pop())
    }

    /// A flag: absent = false; `all`, `all=`, `all=true`, `all=1` = true.
    fn flag(&self, name: &str) -> Result<bool, ApiFailure> {
        match self.one(name)?.as_deref() {
            None => Ok(false),
            Some("" | "true" | "1" | "yes") => Ok(true),
            Some("false" | "0" | "no") => Ok(false),
            Some(v) => Err(ApiFailure::bad(format!("{name}={v:?}: give true or false"))),
        }
    }

    fn time(&self, name: &str) -> Result<Option<DateTime<Utc>>, ApiFailure> {
        self.one(name)?
            .map(|v| query::parse_time(&v).map_err(|e| ApiFailure::bad(format!("{name}: {e}"))))
            .transpose()
    }

    fn filter(&self) -> Result<CommitFilter, ApiFailure> {
        let limit = match self.one("limit")? {
            None => None,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if n >= 1 => Some(n),
                _ => {
                    return Err(ApiFailure::bad(format!(
                        "limit={v:?}: give a whole number of 1 or more"
                    )))
                }
            },
        };
        Ok(CommitFilter {
            workspace: self.one("workspace")?,
            repos: self.all("repo"),
            author: self.one("author")?,
            since: self.time("since")?,
            until: self.time("until")?,
            grep: self.one("grep")?,
            all: self.flag("all")?,
            limit,
        })
    }

    /// `format` among `choices` (the first is the default).
    fn format(&self, choices: &[(&str, Format)]) -> Result<Format, ApiFailure> {
        match self.one("format")? {
            None => Ok(choices[0].1),
            Some(v) => choices
                .iter()
                .find(|(name, _)| *name == v)
                .map(|(_, f)| *f)
                .ok_or_else(|| {
                    let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
                    ApiFailure::bad(format!("format={v:?}: give one of {}", names.join(", ")))
                }),
        }
    }
}

const QUERY_FORMATS: [(&str, Format); 3] = [
    ("json", Format::Json),
    ("ndjson", Format::Ndjson),
    ("csv", Format::Csv),
];
const EXPORT_FORMATS: [(&str, Format); 2] = [("ndjson", Format::Ndjson), ("csv", Format::Csv)];
const FILTER_PARAMS: [&str; 9] = [
    "workspace",
    "repo",
    "author",
    "since",
    "until",
    "grep",
    "all",
    "limit",
    "format",
];

fn content_type(format: Format) -> &'static str {
    match format {
        Format::Json => "application/json",
        Format::Ndjson => "application/x-ndjson",
        Format::Csv => "text/csv; charset=utf-8",
        Format::Table => "text/plain; charset=utf-8",
    }
}

/// The filter and format of `commits` and `authors`.
fn filter_query(raw: Option<&str>) -> Result<(query::CommitFilter, Format), ApiFailure> {
    let p = Params::parse(raw, &FILTER_PARAMS)?;
    Ok((p.filter()?, p.format(&QUERY_FORMATS)?))
}

/// `GET /api/v1/commits`: `query commits`.
async fn api_commits(
    State(s): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiFailure> {
    let (filter, format) = filter_query(raw.as_deref())?;
    Ok(stream(s.store, content_type(format), move |store, out| {
        let rows = query::commits(store, &filter)?;
        output::write_rows(out, format, usize::MAX, rows)
    })
    .await)
}

/// `GET /api/v1/repos`: `query repos`.
async fn api_repos(
    State(s): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiFailure> {
    let parsed = Params::parse(raw.as_deref(), &["workspace", "format"])
        .and_then(|p| Ok((p.one("workspace")?, p.format(&QUERY_FORMATS)?)));
    let (workspace, format) = parsed?;
    Ok(stream(s.store, content_type(format), move |store, out| {
        let rows = query::repos(store, workspace.as_deref())?;
        output::write_rows(out, format, usize::MAX, rows.into_iter().map(Ok))
    })
    .await)
}

/// `GET /api/v1/authors`: `query authors`.
async fn api_authors(
    State(s): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiFailure> {
    let (filter, format) = filter_query(raw.as_deref())?;
    Ok(stream(s.store, content_type(format), move |store, out| {
        let rows = query::authors(store, &filter)?;
        output::write_rows(out, format, usize::MAX, rows.into_iter().map(Ok))
    })
    .await)
}

/// `GET /api/v1/stats`: `query stats`.
async fn api_stats(
    State(s): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiFailure> {
    let format =
        Params::parse(raw.as_deref(), &["format"]).and_then(|p| p.format(&QUERY_FORMATS))?;
    Ok(stream(s.store, content_type(format), move |store, out| {
        let stats = query::stats(store)?;
        output::write_stats(out, format, usize::MAX, stats)
    })
    .await)
}

/// `GET /api/v1/show/{hash}?format=json|text` (default json): `show`.
async fn api_show(
    State(s): State<AppState>,
    UrlPath(hash): UrlPath<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiFailure> {
    let parsed = Params::parse(raw.as_deref(), &["format"]).and_then(|p| {
        Ok(match p.one("format")?.as_deref() {
            None | Some("json") => ShowFormat::Json,
            Some("text") => ShowFormat::Text,
            Some(v) => return Err(ApiFailure::bad(format!("format={v:?}: give json or text"))),
        })
    });
    let format = parsed?;
    let ct = match format {
        ShowFormat::Json => "application/json",
        ShowFormat::Text => "text/plain; charset=utf-8",
    };
    Ok(stream(s.store, ct, move |store, out| {
        let records = query::show(store, &hash)?;
        output::write_show(out, format, &records)
    })
    .await)
}

/// `GET /api/v1/export?all=&format=ndjson|csv` (default ndjson): `export`,
/// streamed.
async fn api_export(
    State(s): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiFailure> {
    let parsed = Params::parse(raw.as_deref(), &["all", "format"])
        .and_then(|p| Ok((p.flag("all")?, p.format(&EXPORT_FORMATS)?)));
    let (all, format) = parsed?;
    Ok(stream(s.store, content_type(format), move |store, out| {
        let rows = query::export(store, all)?;
        output::write_rows(out, format, usize::MAX, rows)
    })
    .await)
}

/// What the blocking writer sends to the response body.
enum Piece {
    Bytes(Bytes),
    Failed(ApiFailure),
}

/// A `Write` that sends what it is given to the response in chunks. The
/// channel is small, so a slow client slows the store scan instead of
/// filling memory; a client that went away ends the scan (BrokenPipe).
struct ChunkWriter {
    buf: Vec<u8>,
    tx: mpsc::Sender<Piece>,
}

impl ChunkWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Piece::Bytes(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the HTTP client went away"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        // The output functions flush once at the end; chunks go out when
        // full or when the job is done, not per flush.
        Ok(())
    }
}

/// Runs `job` on the blocking pool (store reads block) and streams what it
/// writes. An error before the first chunk left becomes an error answer
/// with its status; a later one cuts the body off (the status line is
/// already sent), which a client sees as a truncated transfer.
async fn stream<F>(store: Arc<Store>, content_type: &'static str, job: F) -> Response
where
    F: FnOnce(&Store, &mut ChunkWriter) -> Result<(), OutputError> + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<Piece>(4);
    let task = tokio::task::spawn_blocking(move || {
        let mut out = ChunkWriter {
            buf: Vec::with_capacity(CHUNK),
            tx: tx.clone(),
        };
        let result = job(&store, &mut out).and_then(|()| out.send().map_err(OutputError::Io));
        if let Err(e) = result {
            let gone = matches!(&e, OutputError::Io(io) if io.kind() == io::ErrorKind::BrokenPipe);
            if !gone {
                tracing::warn!(error = %e, "query API answer failed");
                let _ = tx.blocking_send(Piece::Failed(e.into()));
            }
        }
    });
    let first = match rx.recv().await {
        // Every sender is gone, so the job has ended: nothing to print,
        // unless it panicked.
        None => match task.await {
            Ok(()) => Bytes::new(),
            Err(e) => {
                return ApiFailure::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    format!("the query failed: {e}"),
                )
                .into_response()
            }
        },
        Some(Piece::Failed(e)) => return e.into_response(),
        Some(Piece::Bytes(b)) => b,
    };
    let rest = futures::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Some(Piece::Bytes(b)) => Some((Ok(b), rx)),
            Some(Piece::Failed(e)) => Some((Err(io::Error::other(e.message)), rx)),
            None => None,
        }
    });
    let body = futures::stream::once(async move { Ok::<Bytes, io::Error>(first) }).chain(rest);
    (
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(body),
    )
        .into_response()
}
