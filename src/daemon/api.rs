//! The HTTP endpoint of `bbcrawl run`: `GET /metrics`, `GET /healthz`, and
//! the query API under `/api/v1/`, where one handler turns the URL into a
//! [`Request`] and streams [`query::answer`] — the function the CLI calls on
//! its own store, so both print the same bytes. Every answer names the
//! daemon's process and store.

use std::io::{self, Write};
use std::sync::{Arc, RwLock};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures::StreamExt;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::mpsc;

use super::address::{PID_HEADER, STORE_ID_HEADER};
use super::health::{healthz, Health};
use crate::bitbucket::BitbucketClient;
use crate::query::output::OutputError;
use crate::query::{self, BadRequest, QueryError, Request, API_PREFIX};
use crate::store::Store;
use crate::telemetry;

/// Bytes gathered before a chunk of a streamed answer is sent.
const CHUNK: usize = 64 * 1024;

/// State shared by the HTTP handlers.
#[derive(Clone)]
pub(super) struct AppState {
    /// The token of admin requests (see `address`).
    pub(super) admin_token: Arc<String>,
    pub(super) store: Arc<Store>,
    pub(super) health: Arc<RwLock<Health>>,
    pub(super) metrics: PrometheusHandle,
    pub(super) client: BitbucketClient,
    /// The webhook receiver's status, when it runs.
    pub(super) hooks: Option<Arc<std::sync::Mutex<crate::hooks::HookStatus>>>,
    pub(super) web: Arc<WebState>,
}

/// The endpoint's security settings (see `web::Endpoint`).
pub(super) struct WebState {
    /// Basic auth, when configured.
    pub(super) auth: Option<Arc<crate::web::BasicAuth>>,
    /// `http_server_config.headers`.
    pub(super) headers: Vec<(header::HeaderName, header::HeaderValue)>,
    /// `/api/v1/*` served to everyone allowed in (else only to the CLI).
    pub(super) api: bool,
    /// `/healthz` without basic auth.
    pub(super) health_without_auth: bool,
}

impl AppState {
    pub(super) fn health(&self) -> std::sync::RwLockReadGuard<'_, Health> {
        // Writers only replace plain fields; a poisoned lock holds a
        // consistent value.
        self.health.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// The endpoint's routes.
pub(super) fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route(&format!("{API_PREFIX}/{{*question}}"), get(api))
        .route(ADMIN_BACKUP, axum::routing::post(backup))
        .route(ADMIN_HOOKS, get(hooks_status))
        .fallback(|| async { ApiFailure::from(BadRequest::NoSuchEndpoint) })
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .layer(axum::middleware::map_response_with_state(
            state.clone(),
            identify,
        ))
        .with_state(state)
}

/// Whether the request carries the local token of the daemon's address
/// file (the CLI of the store's owner), compared in constant time.
fn has_local_token(s: &AppState, headers: &header::HeaderMap) -> bool {
    use subtle::ConstantTimeEq;
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| bool::from(given.as_bytes().ct_eq(s.admin_token.as_bytes())))
}

/// Counts failed logins (`reason`: missing, wrong, overloaded).
pub const AUTH_FAILURES: &str = "bbcrawl_http_auth_failures_total";

/// Basic auth and the API switch, before any handler: the local token
/// passes both; `/healthz` skips basic auth with `health_without_auth`;
/// with `api = false`, `/api/v1/*` is not found for anyone else. A refusal
/// says nothing of the store.
async fn guard(
    State(s): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path();
    let local = has_local_token(&s, req.headers());
    if !local && !s.web.api && (path == API_PREFIX || path.starts_with(&format!("{API_PREFIX}/"))) {
        return ApiFailure::from(BadRequest::NoSuchEndpoint).into_response();
    }
    let exempt = local || (path == "/healthz" && s.web.health_without_auth);
    if let (Some(auth), false) = (&s.web.auth, exempt) {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        let verdict = auth.check(given).await;
        if let Some(reason) = verdict.reason() {
            metrics::counter!(AUTH_FAILURES, "reason" => reason).increment(1);
            let (status, message) = match verdict {
                crate::web::Verdict::Overloaded => (
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many login attempts at once; try again",
                ),
                _ => (StatusCode::UNAUTHORIZED, "unauthorized"),
            };
            let mut resp = ApiFailure::new(status, "unauthorized", message).into_response();
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"bbcrawl\", charset=\"UTF-8\""),
            );
            return resp;
        }
    }
    next.run(req).await
}

/// Names the store and the process on every answer, so the CLI can tell
/// this daemon from another that took over a stale address.
///
/// Also the security headers of every answer: no content sniffing, no
/// caching (answers hold commit data), then the web config's own.
async fn identify(State(s): State<AppState>, mut resp: Response) -> Response {
    let headers = resp.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    for (name, value) in &s.web.headers {
        headers.insert(name.clone(), value.clone());
    }
    if let Some(Ok(id)) = s.store.id().map(header::HeaderValue::from_str) {
        headers.insert(STORE_ID_HEADER, id);
    }
    headers.insert(PID_HEADER, header::HeaderValue::from(std::process::id()));
    resp
}

/// `GET` here with the address file's token: the webhook receiver's status
/// as JSON (`bbcrawl hooks status` while the daemon runs); `null` when the
/// daemon has no receiver.
pub const ADMIN_HOOKS: &str = "/admin/hooks";

async fn hooks_status(State(s): State<AppState>, headers: header::HeaderMap) -> Response {
    if !has_local_token(&s, &headers) {
        return (
            axum::http::StatusCode::UNAUTHORIZED,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::json!({"code": "unauthorized", "error": "admin requests need the token of the daemon's address file"}).to_string(),
        )
            .into_response();
    }
    let status = s
        .hooks
        .as_ref()
        .map(|h| h.lock().unwrap_or_else(|e| e.into_inner()).clone());
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string(&status).unwrap_or_default(),
    )
        .into_response()
}

/// `POST` here with `{"dest": "/absolute/dir"}` and the address file's
/// token as a bearer token: the daemon backs its store up to `dest`
/// (`bbcrawl store backup` while the daemon runs).
pub const ADMIN_BACKUP: &str = "/admin/backup";

/// `POST /admin/backup` (see [`ADMIN_BACKUP`]): the copy is made in the
/// daemon, between pages (the store's write gate), while it crawls.
async fn backup(
    State(s): State<AppState>,
    headers: header::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let answer = |status: u16, v: serde_json::Value| {
        (
            axum::http::StatusCode::from_u16(status).unwrap_or_default(),
            [(header::CONTENT_TYPE, "application/json")],
            v.to_string(),
        )
            .into_response()
    };
    if !has_local_token(&s, &headers) {
        return answer(
            401,
            serde_json::json!({"code": "unauthorized", "error": "admin requests need the token of the daemon's address file"}),
        );
    }
    let dest = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["dest"].as_str().map(std::path::PathBuf::from))
        .filter(|p| p.is_absolute());
    let Some(dest) = dest else {
        return answer(
            400,
            serde_json::json!({"code": "bad_request", "error": "give {\"dest\": \"/an/absolute/directory\"}"}),
        );
    };
    let store = Arc::clone(&s.store);
    match tokio::task::spawn_blocking(move || store.backup_to(&dest)).await {
        Ok(Ok(report)) => answer(200, serde_json::to_value(report).unwrap_or_default()),
        Ok(Err(e)) => answer(
            409,
            serde_json::json!({"code": "backup_failed", "error": e.to_string()}),
        ),
        Err(e) => answer(
            500,
            serde_json::json!({"code": "internal", "error": e.to_string()}),
        ),
    }
}

/// `GET /api/v1/…`: the question the URL asks, answered as the CLI would.
///
/// `changes?wait=N` long-polls: the answer waits until a change after
/// `after` is stored (or N seconds pass), then streams what there is.
async fn api(State(s): State<AppState>, uri: Uri) -> Result<Response, ApiFailure> {
    let req = Request::from_url(uri.path(), uri.query())?;
    if let crate::query::Question::Changes { after, wait, .. } = *req.question() {
        if wait > 0 {
            let mut head = s.store.feed_watch();
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(wait),
                head.wait_for(|seq| *seq > after),
            )
            .await;
        }
    }
    Ok(stream(s.store, req).await)
}

/// `GET /metrics`: refreshes the budget gauges, then renders.
async fn metrics_text(State(s): State<AppState>) -> Response {
    let budget = s.client.budget_totals();
    metrics::gauge!(telemetry::RATELIMIT_WAIT)
        .set(budget.longest_pause.unwrap_or_default().as_secs_f64());
    metrics::gauge!(telemetry::RATELIMIT_LIMIT).set(budget.limit as f64);
    let pages = telemetry::BACKFILL_PAGES_ESTIMATE.load(std::sync::atomic::Ordering::Relaxed);
    let eta = if budget.limit > 0 {
        pages as f64 * 3600.0 / budget.limit as f64
    } else {
        0.0
    };
    metrics::gauge!(telemetry::BACKFILL_ETA).set(eta);
    metrics::gauge!(telemetry::RATELIMIT_REMAINING).set(budget.remaining as f64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

/// A JSON answer with its status.
pub(super) fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
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
            // Never asked: `Request::from_url` serves no Parquet.
            e @ OutputError::NotText(_) => {
                ApiFailure::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string())
            }
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

impl From<BadRequest> for ApiFailure {
    fn from(e: BadRequest) -> ApiFailure {
        match e {
            BadRequest::NoSuchEndpoint => {
                ApiFailure::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            BadRequest::Invalid(message) => {
                ApiFailure::new(StatusCode::BAD_REQUEST, "bad_request", message)
            }
        }
    }
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

/// Answers `req` on the blocking pool (store reads block) and streams what
/// it writes. An error before the first chunk left becomes an error answer
/// with its status; a later one cuts the body off (the status line is
/// already sent), which a client sees as a truncated transfer.
async fn stream(store: Arc<Store>, req: Request) -> Response {
    let content_type = req.format().content_type();
    let (tx, mut rx) = mpsc::channel::<Piece>(4);
    let task = tokio::task::spawn_blocking(move || {
        let mut out = ChunkWriter {
            buf: Vec::with_capacity(CHUNK),
            tx: tx.clone(),
        };
        let result = query::answer(&store, &req, &mut out)
            .and_then(|()| out.send().map_err(OutputError::Io));
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
