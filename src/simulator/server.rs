//! HTTP serving: our own accept loop with hyper's HTTP/1 connections, so a
//! fault can act below the handler (drop a connection without answering, cut
//! a body short); routing, authentication, rate limiting and the endpoints
//! (the hooks API's handlers live with the rest of webhooks, in `hooks.rs`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, AUTHORIZATION, HOST};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::content::Ctx;
use super::query::Filter;
use super::rng::mac;
use super::world::{hex, Repo, Resolved};
use super::{fields, lock, render, Fault, RequestRecord, RetryAfter, SimCredential, Simulator};

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// A running simulator server. Dropping it stops it too (the accept loop and
/// every connection watch the same shutdown signal).
pub struct SimServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl SimServer {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/2.0`
    pub fn api_url(&self) -> String {
        format!("http://{}/2.0", self.addr)
    }

    /// Stops accepting and closes connections.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

pub(super) fn serve(sim: Simulator, listener: TcpListener) -> std::io::Result<SimServer> {
    let addr = listener.local_addr()?;
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(accept_loop(sim, listener, addr, stop_rx));
    Ok(SimServer {
        addr,
        stop,
        task: Some(task),
    })
}

/// Resolves when shutdown was requested (or the server handle is gone).
async fn stopped(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

async fn accept_loop(
    sim: Simulator,
    listener: TcpListener,
    addr: SocketAddr,
    stop: watch::Receiver<bool>,
) {
    let stopping = stopped(stop.clone());
    tokio::pin!(stopping);
    loop {
        let stream = tokio::select! {
            _ = &mut stopping => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!(error = %e, "simulator accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let sim = sim.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            // A handler raises `kill` to drop the connection under hyper's feet.
            let kill = Arc::new(Notify::new());
            let k = Arc::clone(&kill);
            let svc = service_fn(move |req| handle(sim.clone(), Arc::clone(&k), addr, req));
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = kill.notified() => {}
                _ = stopped(stop) => {}
            }
        });
    }
}

/// Who a request authenticated as.
#[derive(Clone, Debug)]
pub(super) struct Auth {
    /// Token, e-mail or username: the log's `credential` and the rate-limit key.
    identity: String,
    kind: Kind,
    scopes: Vec<String>,
    pub(super) workspaces: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    AccessToken,
    ApiToken,
    AppPassword,
}

/// An answer before it becomes an HTTP response.
pub(super) struct Answer {
    pub(super) status: u16,
    content_type: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Bytes,
}

impl Answer {
    pub(super) fn json(status: u16, value: &Value) -> Answer {
        Answer {
            status,
            content_type: "application/json; charset=utf-8",
            headers: Vec::new(),
            body: Bytes::from(value.to_string()),
        }
    }

    /// A body already serialised.
    fn json_text(status: u16, body: String) -> Answer {
        Answer {
            status,
            content_type: "application/json; charset=utf-8",
            headers: Vec::new(),
            body: Bytes::from(body),
        }
    }

    /// Bitbucket's error envelope.
    pub(super) fn error(status: u16, message: &str, extra: Option<(&str, Value)>) -> Answer {
        let mut err = json!({"message": message});
        if let (Some((k, v)), Value::Object(m)) = (extra, &mut err) {
            m.insert(k.to_owned(), v);
        }
        Answer::json(status, &json!({"type": "error", "error": err}))
    }

    /// 204 No Content, as a deletion answers.
    pub(super) fn no_content() -> Answer {
        Answer {
            status: 204,
            content_type: "text/plain",
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    fn text(status: u16, content_type: &'static str, body: &str) -> Answer {
        Answer {
            status,
            content_type,
            headers: Vec::new(),
            body: Bytes::from(body.to_owned()),
        }
    }

    fn unauthorized(message: &str) -> Answer {
        let mut a = Answer::error(401, message, None);
        a.headers.push((
            "www-authenticate",
            "Basic realm=\"Bitbucket.org HTTP\"".to_owned(),
        ));
        a
    }

    fn rate_limited(retry_after: Option<String>) -> Answer {
        let mut a = Answer::text(
            429,
            "text/plain",
            "Rate limit for this resource has been exceeded",
        );
        if let Some(r) = retry_after {
            a.headers.push(("retry-after", r));
        }
        a
    }

    fn head(&self) -> hyper::http::response::Builder {
        let mut b = Response::builder()
            .status(StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
            .header("content-type", self.content_type);
        for (k, v) in &self.headers {
            if let Ok(v) = HeaderValue::from_str(v) {
                b = b.header(*k, v);
            }
        }
        b
    }

    fn into_response(self) -> Response<Body> {
        let body = Full::new(self.body.clone())
            .map_err(|never| match never {})
            .boxed_unsync();
        self.head().body(body).unwrap_or_else(|_| fallback())
    }

    /// 200 announcing the whole body's length but sending only half of it,
    /// then killing the connection: the client sees a truncated body.
    fn truncated(mut self, kill: Arc<Notify>) -> Response<Body> {
        self.status = 200;
        if self.body.len() < 2 {
            self.body = Bytes::from_static(b"{\"values\": []}");
        }
        let full_len = self.body.len();
        let part = self.body.slice(..full_len / 2);
        let first =
            futures::stream::once(async move { Ok::<_, std::io::Error>(Frame::data(part)) });
        let rest = futures::stream::once(async move {
            // Let hyper flush the first half before the connection goes.
            tokio::time::sleep(Duration::from_millis(50)).await;
            kill.notify_one();
            futures::future::pending::<Result<Frame<Bytes>, std::io::Error>>().await
        });
        let body = BodyExt::boxed_unsync(StreamBody::new(futures::StreamExt::chain(first, rest)));
        self.head()
            .header("content-length", full_len.to_string())
            .body(body)
            .unwrap_or_else(|_| fallback())
    }
}

/// A response that cannot fail to build (used if a header was unusable).
fn fallback() -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    r
}

/// The parts of a request the API logic needs.
pub(super) struct ApiRequest {
    pub(super) method: String,
    pub(super) path: String,
    /// Query pairs, then the form body's pairs for a POST that is not JSON.
    pub(super) params: Vec<(String, String)>,
    /// The raw body of a POST or PUT (at most 1 MiB; empty if longer).
    pub(super) body: Bytes,
    /// `http://host:port` as the client addressed us (for absolute links).
    pub(super) origin: String,
}

impl ApiRequest {
    pub(super) fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, key: &str) -> Vec<&str> {
        self.params
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Form-urlencoded pairs (`+` decodes to a space, as on Bitbucket).
fn pairs(s: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(s).into_owned().collect()
}

async fn handle(
    sim: Simulator,
    kill: Arc<Notify>,
    local: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let method = parts.method.as_str().to_owned();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().map(str::to_owned);
    let auth = sim.authenticate(&parts.headers);
    let id = sim.log_start(
        &method,
        &path,
        &query,
        auth.as_ref().ok().map(|a| a.identity.clone()),
    );

    let mut params = query
        .as_deref()
        .map(|q| pairs(q.as_bytes()))
        .unwrap_or_default();
    let mut raw = Bytes::new();
    if method == "POST" || method == "PUT" {
        // Bounded: a test double must not be exhausted by a runaway client.
        if let Ok(collected) = Limited::new(body, 1 << 20).collect().await {
            raw = collected.to_bytes();
        }
        // Commit walks take their revisions as a form body; the hooks API
        // takes JSON, which is no form.
        let json = parts
            .headers
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if method == "POST" && !json {
            params.extend(pairs(&raw));
        }
    }
    let origin = parts
        .headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| format!("http://{h}"))
        .unwrap_or_else(|| format!("http://{local}"));
    let api = ApiRequest {
        method,
        path,
        params,
        body: raw,
        origin,
    };

    let latency = sim.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }

    let mut foreign = None;
    let mut truncate = false;
    match sim.next_fault(&api.path) {
        None => {}
        Some(Fault::Reset) => {
            kill.notify_one();
            // Never answer: the connection task drops the connection now.
            return futures::future::pending().await;
        }
        Some(Fault::Stall(d)) => tokio::time::sleep(d).await,
        Some(Fault::Status(code)) => return Ok(sim.finish(id, status_answer(code))),
        Some(Fault::MalformedJson) => {
            let a = Answer::text(
                200,
                "application/json",
                "{\"pagelen\": 30, \"values\": [{\"hash\": \"4f1c<html>upstream error</html>",
            );
            return Ok(sim.finish(id, a));
        }
        Some(Fault::RateLimited(ra)) => {
            let ra = ra.map(|r| match r {
                RetryAfter::Seconds(s) => s.to_string(),
                RetryAfter::HttpDate(d) => d,
            });
            return Ok(sim.finish(id, Answer::rate_limited(ra)));
        }
        Some(Fault::Truncated) => truncate = true,
        Some(Fault::ForeignNext(o)) => foreign = Some(o),
    }

    let answer = sim.respond(&api, auth, foreign.as_deref());
    if truncate {
        sim.log_status(id, 200);
        return Ok(answer.truncated(kill));
    }
    Ok(sim.finish(id, answer))
}

/// The body a proxy or Bitbucket would send with an injected status.
fn status_answer(code: u16) -> Answer {
    let reason = StatusCode::from_u16(code)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    match code {
        429 => Answer::rate_limited(None),
        401 => Answer::unauthorized("Invalid credentials"),
        403 => Answer::error(
            403,
            "Your credentials lack one or more required privilege scopes.",
            Some(("detail", json!({"granted": [], "required": ["repository"]}))),
        ),
        500..=599 => Answer::text(
            code,
            "text/html",
            &format!("<html><head><title>{code} {reason}</title></head><body><h1>{code} {reason}</h1></body></html>"),
        ),
        _ => Answer::error(code, reason, None),
    }
}

impl Simulator {
    fn log_start(
        &self,
        method: &str,
        path: &str,
        query: &Option<String>,
        credential: Option<String>,
    ) -> u64 {
        let mut log = lock(&self.inner.log);
        let id = log.next_id;
        log.next_id += 1;
        log.records.push((
            id,
            RequestRecord {
                at: Instant::now(),
                method: method.to_owned(),
                path: path.to_owned(),
                query: query.clone(),
                credential,
                status: 0,
            },
        ));
        id
    }

    fn log_status(&self, id: u64, status: u16) {
        let mut log = lock(&self.inner.log);
        // Ids grow with arrival order, so the log is sorted by id.
        if let Ok(pos) = log.records.binary_search_by_key(&id, |(i, _)| *i) {
            log.records[pos].1.status = status;
        }
    }

    fn finish(&self, id: u64, answer: Answer) -> Response<Body> {
        self.log_status(id, answer.status);
        answer.into_response()
    }

    fn next_fault(&self, path: &str) -> Option<Fault> {
        let mut f = lock(&self.inner.faults);
        if let Some(pos) = f
            .queue
            .iter()
            .position(|(p, _)| p.as_deref().is_none_or(|p| path.contains(p)))
        {
            return f.queue.remove(pos).and_then(|(_, fault)| fault);
        }
        let rate = self.inner.opts.fault_rate;
        if rate > 0.0 && f.rng.chance(rate) {
            const KINDS: [u8; 7] = [0, 1, 2, 3, 4, 5, 6];
            return Some(match *f.rng.pick(&KINDS) {
                0 => Fault::Status(500),
                1 => Fault::Status(502),
                2 => Fault::Status(503),
                3 => Fault::Stall(Duration::from_secs(2)),
                4 => Fault::Reset,
                5 => Fault::Truncated,
                _ => Fault::MalformedJson,
            });
        }
        None
    }

    /// Checks the `Authorization` header against the credentials.
    fn authenticate(&self, headers: &HeaderMap) -> Result<Auth, String> {
        const INVALID: &str = "Invalid credentials";
        let Some(value) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
            return Err("Authentication required".to_owned());
        };
        let world = self.world();
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            for c in &world.credentials {
                if let SimCredential::AccessToken {
                    token,
                    scopes,
                    workspaces,
                } = c
                {
                    if token == rest {
                        if world.revoked.contains(token) {
                            break;
                        }
                        return Ok(Auth {
                            identity: token.clone(),
                            kind: Kind::AccessToken,
                            scopes: scopes.clone(),
                            workspaces: workspaces.clone(),
                        });
                    }
                }
            }
            // Bitbucket gives this message for API tokens sent as Bearer and
            // for any other unknown bearer token.
            return Err(
                "Token is invalid, expired, or not supported for this endpoint.".to_owned(),
            );
        }
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err(INVALID.to_owned());
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| INVALID.to_owned())?;
        let (user, pass) = decoded.split_once(':').ok_or_else(|| INVALID.to_owned())?;
        for c in &world.credentials {
            match c {
                SimCredential::ApiToken {
                    email,
                    token,
                    scopes,
                    workspaces,
                } if email.eq_ignore_ascii_case(user) && token == pass => {
                    if world.revoked.contains(email) || world.revoked.contains(token) {
                        break;
                    }
                    return Ok(Auth {
                        identity: email.clone(),
                        kind: Kind::ApiToken,
                        scopes: scopes.clone(),
                        workspaces: workspaces.clone(),
                    });
                }
                // Exact username only: an e-mail in its place fails with 401.
                SimCredential::AppPassword {
                    username,
                    password,
                    scopes,
                    workspaces,
                } if username == user && password == pass => {
                    if world.revoked.contains(username) || world.revoked.contains(password) {
                        break;
                    }
                    return Ok(Auth {
                        identity: username.clone(),
                        kind: Kind::AppPassword,
                        scopes: scopes.clone(),
                        workspaces: workspaces.clone(),
                    });
                }
                _ => {}
            }
        }
        Err(INVALID.to_owned())
    }

    /// Authentication, rate limit and routing of one request.
    fn respond(
        &self,
        req: &ApiRequest,
        auth: Result<Auth, String>,
        foreign: Option<&str>,
    ) -> Answer {
        let auth = match auth {
            Ok(a) => a,
            Err(message) => return Answer::unauthorized(&message),
        };
        let mut rl_headers = Vec::new();
        let limit = self.inner.opts.requests_per_hour;
        if limit > 0 {
            let mut limits = lock(&self.inner.limits);
            let window = limits.entry(auth.identity.clone()).or_default();
            let over = !admit(
                window,
                Instant::now(),
                self.inner.opts.rate_window,
                limit as usize,
            );
            if auth.kind == Kind::AccessToken {
                let remaining = (limit as usize).saturating_sub(window.len());
                let near = remaining * 20 < limit as usize;
                // Bitbucket's header is per hour; with a shortened window
                // send the per-hour equivalent, so a client that adopts it
                // paces at the rate the window enforces.
                rl_headers.push((
                    "x-ratelimit-limit",
                    per_hour(limit, self.inner.opts.rate_window).to_string(),
                ));
                rl_headers.push(("x-ratelimit-resource", "api/repository".to_owned()));
                rl_headers.push(("x-ratelimit-nearlimit", near.to_string()));
            }
            if over {
                let mut a =
                    Answer::rate_limited(self.inner.opts.retry_after.map(|s| s.to_string()));
                a.headers.extend(rl_headers);
                return a;
            }
        }
        let mut answer = self.route(req, &auth, foreign);
        answer.headers.extend(rl_headers);
        answer
    }

    fn route(&self, req: &ApiRequest, auth: &Auth, foreign: Option<&str>) -> Answer {
        let not_found = || Answer::error(404, "Resource not found", None);
        let Some(rest) = req.path.strip_prefix("/2.0/") else {
            return not_found();
        };
        let mut segs: Vec<String> = rest
            .split('/')
            .map(|s| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .collect();
        if segs.last().is_some_and(String::is_empty) {
            segs.pop();
        }
        let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
        let get = req.method == "GET" || req.method == "HEAD";
        match segs.as_slice() {
            ["workspaces"] | ["user", "permissions", "workspaces"] | ["repositories"] => Answer::error(
                410,
                "This API is no longer available (CHANGE-2770). Use the workspace-scoped endpoints.",
                None,
            ),
            // Before the repository routes: hooks need the webhook scope, not the repository one.
            ["workspaces", ws, "hooks", rest @ ..] => self.hooks_api(req, auth, ws, None, rest),
            ["repositories", ws, slug, "hooks", rest @ ..] => {
                self.hooks_api(req, auth, ws, Some(slug), rest)
            }
            ["repositories", ws, tail @ ..] => {
                if let Some(denied) = scope_check(auth, Scope::ReadRepository) {
                    return denied;
                }
                let visible = auth.workspaces.iter().any(|w| w.eq_ignore_ascii_case(ws))
                    && self.world().workspace(ws).is_some();
                if !visible {
                    return Answer::error(404, &format!("No workspace with identifier '{ws}'."), None);
                }
                match tail {
                    [] if get => self.list_repos(req, ws, foreign),
                    [slug] if get => self.one_repo(req, ws, slug),
                    [slug, "commits"] if get || req.method == "POST" => {
                        self.commits(req, ws, slug, None, foreign)
                    }
                    [slug, "commits", rev @ ..] if get || req.method == "POST" => {
                        // An unencoded `/` in a branch name splits the segment; rejoin it.
                        self.commits(req, ws, slug, Some(rev.join("/")), foreign)
                    }
                    [slug, "commit", rev] if get => self.one_commit(req, ws, slug, rev),
                    _ => not_found(),
                }
            }
            _ => not_found(),
        }
    }

    fn list_repos(&self, req: &ApiRequest, ws: &str, foreign: Option<&str>) -> Answer {
        let pagelen = match pagelen(req, 10) {
            Ok(p) => p,
            Err(a) => return a,
        };
        let page = match req.param("page").map(str::parse::<usize>) {
            None => 1,
            Some(Ok(p)) if p >= 1 => p,
            _ => return invalid_page(),
        };
        let world = self.world();
        let Some(w) = world.workspace(ws) else {
            return Answer::error(404, &format!("No workspace with identifier '{ws}'."), None);
        };
        let filter = match req.param("q").map(Filter::parse) {
            None => None,
            Some(Some(f)) => Some(f),
            Some(None) => return Answer::error(400, "Invalid query", None),
        };
        let repos: Vec<&Repo> = w
            .repos
            .iter()
            .filter(|r| filter.as_ref().is_none_or(|f| f.matches(ws, r)))
            .collect();
        let total = repos.len();
        let start = (page - 1).saturating_mul(pagelen).min(total);
        let end = (start + pagelen).min(total);
        let values: Vec<Value> = repos[start..end]
            .iter()
            .map(|repo| {
                Ctx {
                    origin: &req.origin,
                    ws,
                    repo,
                }
                .repository(&w.uuid)
            })
            .collect();
        drop(world);
        let mut body = json!({"pagelen": pagelen, "size": total, "page": page, "values": values});
        let link = |p: usize| {
            let mut q = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in &req.params {
                if k != "page" {
                    q.append_pair(k, v);
                }
            }
            q.append_pair("page", &p.to_string());
            format!(
                "{}{}?{}",
                foreign.unwrap_or(&req.origin),
                req.path,
                q.finish()
            )
        };
        if let Value::Object(m) = &mut body {
            if end < total {
                m.insert("next".into(), json!(link(page + 1)));
            }
            if page > 1 {
                m.insert("previous".into(), json!(link(page - 1)));
            }
        }
        finish_page(body, req)
    }

    fn one_repo(&self, req: &ApiRequest, ws: &str, slug: &str) -> Answer {
        let world = self.world();
        let Some(w) = world.workspace(ws) else {
            return repo_not_found(ws, slug);
        };
        let Some(repo) = w.repos.iter().find(|r| r.slug == slug) else {
            return repo_not_found(ws, slug);
        };
        let v = Ctx {
            origin: &req.origin,
            ws,
            repo,
        }
        .repository(&w.uuid);
        drop(world);
        finish_page(v, req)
    }

    fn one_commit(&self, req: &ApiRequest, ws: &str, slug: &str, rev: &str) -> Answer {
        let mut world = self.world();
        let Some(repo) = world.repo_mut(ws, slug) else {
            return repo_not_found(ws, slug);
        };
        let idx = match repo.resolve(rev) {
            Resolved::Commit(i) | Resolved::Branch(Some(i)) => i,
            _ => return commit_not_found(&[rev]),
        };
        let v = Ctx {
            origin: &req.origin,
            ws,
            repo,
        }
        // One commit is small: build it whole and let `fields` cut it.
        .commit(&repo.graph, idx, &|_| true);
        drop(world);
        finish_page(v, req)
    }

    fn commits(
        &self,
        req: &ApiRequest,
        ws: &str,
        slug: &str,
        rev: Option<String>,
        foreign: Option<&str>,
    ) -> Answer {
        let pagelen = match pagelen(req, 30) {
            Ok(p) => p,
            Err(a) => return a,
        };
        let mut world = self.world();
        let Some(repo) = world.repo_mut(ws, slug) else {
            return repo_not_found(ws, slug);
        };
        let (tips, excludes, offset) = if let Some(token) = req.param("page") {
            let Some(state) = decode_token(self.inner.secret, token) else {
                return invalid_page();
            };
            if state.repo != repo.uuid {
                return invalid_page();
            }
            let map = |hs: &[String]| {
                hs.iter()
                    .map(|h| repo.any_commit(h))
                    .collect::<Option<Vec<u32>>>()
            };
            let (Some(t), Some(x)) = (map(&state.tips), map(&state.excludes)) else {
                return invalid_page();
            };
            (t, x, state.offset)
        } else {
            let mut tips = Vec::new();
            let mut excludes = Vec::new();
            let mut missing: Vec<&str> = Vec::new();
            let revs = rev.as_deref().into_iter().chain(req.all("include"));
            if rev.is_none() {
                tips = repo.all_tips();
            }
            for (list, names) in [
                (&mut tips, revs.collect::<Vec<_>>()),
                (&mut excludes, req.all("exclude")),
            ] {
                for name in names {
                    match repo.resolve(name) {
                        Resolved::Branch(t) => list.extend(t),
                        Resolved::Commit(i) => list.push(i),
                        Resolved::Unknown => missing.push(name),
                    }
                }
            }
            if !missing.is_empty() {
                return commit_not_found(&missing);
            }
            (tips, excludes, 0)
        };
        let walk = repo.walk(tips.clone(), excludes.clone());
        let start = offset.min(walk.len());
        let end = (start + pagelen).min(walk.len());
        let ctx = Ctx {
            origin: &req.origin,
            ws,
            repo,
        };
        let spec = req.param("fields");
        let items = lock(&self.inner.render).items(&ctx, &repo.graph, &walk[start..end], spec);
        let next = (end < walk.len()).then(|| {
            let hashes = |v: &[u32]| {
                v.iter()
                    .map(|&i| hex(&repo.graph.nodes[i as usize].hash))
                    .collect()
            };
            let state = TokenState {
                repo: repo.uuid.clone(),
                tips: hashes(&tips),
                excludes: hashes(&excludes),
                offset: end,
            };
            let mut q = url::form_urlencoded::Serializer::new(String::new());
            q.append_pair("pagelen", &pagelen.to_string());
            if let Some(f) = req.param("fields") {
                q.append_pair("fields", f);
            }
            q.append_pair("page", &encode_token(self.inner.secret, &state));
            format!(
                "{}{}?{}",
                foreign.unwrap_or(&req.origin),
                req.path,
                q.finish()
            )
        });
        drop(world);
        let mut skeleton = json!({"values": [], "pagelen": pagelen});
        if let (Some(n), Value::Object(m)) = (next, &mut skeleton) {
            m.insert("next".into(), json!(n));
        }
        Answer::json_text(200, render::page(skeleton, spec, &items))
    }
}

/// The rolling window (`length`, an hour unless a test shortens it):
/// forgets arrivals at least `length` old, then admits (and records) `now`
/// unless `limit` requests remain in the window. Refused requests are not
/// recorded: Bitbucket does not count its 429s.
fn admit(
    window: &mut std::collections::VecDeque<Instant>,
    now: Instant,
    length: Duration,
    limit: usize,
) -> bool {
    while window
        .front()
        .is_some_and(|t| now.saturating_duration_since(*t) >= length)
    {
        window.pop_front();
    }
    if window.len() >= limit {
        return false;
    }
    window.push_back(now);
    true
}

/// `limit` requests per `window` as requests per hour (the window's rate).
fn per_hour(limit: u32, window: Duration) -> u64 {
    let ms = window.as_millis().max(1);
    (u128::from(limit) * 3_600_000 / ms).min(u128::from(u64::MAX)) as u64
}

/// What a request needs its credential to be allowed to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Scope {
    /// Read repositories and commits.
    ReadRepository,
    /// List and read webhooks.
    ReadWebhook,
    /// Create, change and delete webhooks.
    WriteWebhook,
}

/// The scope check: `repository` (`read:repository:bitbucket` for API
/// tokens) for repositories, `webhook` (`read:webhook:bitbucket` /
/// `write:webhook:bitbucket`) for hooks. `None` when granted; otherwise
/// Bitbucket's 403 naming the scope required.
pub(super) fn scope_check(auth: &Auth, need: Scope) -> Option<Answer> {
    let granted = |any: &[&str]| auth.scopes.iter().any(|s| any.contains(&s.as_str()));
    let (required, ok) = match (auth.kind, need) {
        // Broader scopes imply read access.
        (Kind::ApiToken, Scope::ReadRepository) => (
            "read:repository:bitbucket",
            granted(&[
                "read:repository:bitbucket",
                "write:repository:bitbucket",
                "admin:repository:bitbucket",
            ]),
        ),
        (Kind::ApiToken, Scope::ReadWebhook) => (
            "read:webhook:bitbucket",
            granted(&["read:webhook:bitbucket", "write:webhook:bitbucket"]),
        ),
        (Kind::ApiToken, Scope::WriteWebhook) => (
            "write:webhook:bitbucket",
            granted(&["write:webhook:bitbucket"]),
        ),
        (Kind::AccessToken | Kind::AppPassword, Scope::ReadRepository) => (
            "repository",
            auth.scopes
                .iter()
                .any(|s| s == "repository" || s.starts_with("repository:")),
        ),
        // One `webhook` scope reads and manages hooks.
        (Kind::AccessToken | Kind::AppPassword, Scope::ReadWebhook | Scope::WriteWebhook) => {
            ("webhook", granted(&["webhook"]))
        }
    };
    (!ok).then(|| {
        Answer::error(
            403,
            "Your credentials lack one or more required privilege scopes.",
            Some((
                "detail",
                json!({"granted": auth.scopes, "required": [required]}),
            )),
        )
    })
}

pub(super) fn pagelen(req: &ApiRequest, default: usize) -> Result<usize, Answer> {
    match req.param("pagelen").map(str::parse::<usize>) {
        None => Ok(default),
        // Clamped like the documented maximum (Bitbucket sometimes answers
        // 500 after a long delay instead; clamping keeps the double usable).
        Some(Ok(p)) => Ok(p.clamp(1, 100)),
        Some(Err(_)) => Err(Answer::error(400, "Invalid pagelen", None)),
    }
}

pub(super) fn invalid_page() -> Answer {
    Answer::error(400, "Invalid page", None)
}

pub(super) fn repo_not_found(ws: &str, slug: &str) -> Answer {
    Answer::error(404, &format!("Repository {ws}/{slug} not found"), None)
}

fn commit_not_found(shas: &[&str]) -> Answer {
    Answer::error(
        404,
        "Commit not found",
        Some(("data", json!({"shas": shas}))),
    )
}

fn finish_page(body: Value, req: &ApiRequest) -> Answer {
    let body = match req.param("fields") {
        Some(spec) => fields::apply(body, spec),
        None => body,
    };
    Answer::json(200, &body)
}

/// Where a commit walk stands: the resolved tips and excludes (hashes, so a
/// push after the walk started cannot shift it) and the offset into it.
struct TokenState {
    repo: String,
    tips: Vec<String>,
    excludes: Vec<String>,
    offset: usize,
}

fn encode_token(secret: u64, s: &TokenState) -> String {
    let payload = format!(
        "{}|{}|{}|{}",
        s.repo,
        s.tips.join(","),
        s.excludes.join(","),
        s.offset
    );
    let mut bytes = payload.into_bytes();
    let sig = mac(secret, &bytes);
    bytes.extend_from_slice(&sig);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn decode_token(secret: u64, token: &str) -> Option<TokenState> {
    let bytes = URL_SAFE_NO_PAD.decode(token.trim_end_matches('=')).ok()?;
    if bytes.len() < 16 {
        return None;
    }
    let (payload, sig) = bytes.split_at(bytes.len() - 16);
    if mac(secret, payload) != sig {
        return None;
    }
    let text = std::str::from_utf8(payload).ok()?;
    let mut parts = text.split('|');
    let repo = parts.next()?.to_owned();
    let list = |s: &str| -> Vec<String> {
        s.split(',')
            .filter(|h| !h.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let tips = list(parts.next()?);
    let excludes = list(parts.next()?);
    let offset = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some(TokenState {
        repo,
        tips,
        excludes,
        offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_tampering() {
        let s = TokenState {
            repo: "{r}".into(),
            tips: vec!["a".repeat(40)],
            excludes: vec![],
            offset: 30,
        };
        let t = encode_token(7, &s);
        let d = decode_token(7, &t).expect("valid token decodes");
        assert_eq!((d.repo.as_str(), d.offset, d.tips.len()), ("{r}", 30, 1));
        assert!(decode_token(8, &t).is_none());
        let mut tampered = t.into_bytes();
        tampered[3] = if tampered[3] == b'A' { b'B' } else { b'A' };
        assert!(decode_token(7, &String::from_utf8(tampered).unwrap()).is_none());
        assert!(decode_token(7, "2").is_none());
    }

    #[test]
    fn rate_window_rolls_over_an_hour() {
        let hour = Duration::from_secs(3600);
        let mut w = std::collections::VecDeque::new();
        let t0 = Instant::now();
        assert!(admit(&mut w, t0, hour, 2));
        assert!(admit(&mut w, t0 + Duration::from_secs(1800), hour, 2));
        assert!(!admit(&mut w, t0 + Duration::from_secs(3599), hour, 2));
        assert_eq!(w.len(), 2, "refusals are not counted");
        assert!(admit(&mut w, t0 + Duration::from_secs(3600), hour, 2));
        assert!(!admit(&mut w, t0 + Duration::from_secs(3700), hour, 2));
        assert!(admit(&mut w, t0 + Duration::from_secs(5400), hour, 2));
    }

    #[test]
    fn rate_window_length_is_configurable() {
        let len = Duration::from_secs(3);
        let mut w = std::collections::VecDeque::new();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        assert!(admit(&mut w, t0, len, 2));
        assert!(admit(&mut w, t0 + ms(1000), len, 2));
        assert!(!admit(&mut w, t0 + ms(2999), len, 2), "full until 3 s pass");
        assert!(
            admit(&mut w, t0 + ms(3000), len, 2),
            "the first one rolled out"
        );
        assert!(!admit(&mut w, t0 + ms(3999), len, 2));
        assert!(admit(&mut w, t0 + ms(4000), len, 2));
        assert_eq!(
            super::super::SimOptions::default().rate_window,
            Duration::from_secs(3600)
        );
    }

    #[test]
    fn the_limit_header_is_per_hour() {
        assert_eq!(per_hour(1000, Duration::from_secs(3600)), 1000);
        assert_eq!(per_hour(120, Duration::from_secs(20)), 21_600);
        assert_eq!(per_hour(3, Duration::from_secs(3600)), 3);
    }

    #[test]
    fn enc_escapes_slash() {
        use super::super::content::enc;
        assert_eq!(enc("release/2024"), "release%2F2024");
    }
}
