//! Where a question is answered: the store itself, or — while `bbcrawl
//! run` holds it (sled allows one process) — the daemon whose address it
//! records in the store directory. The CLI builds one [`Request`] and asks
//! its [`Source`]; either way the bytes are [`query::answer`]'s: the
//! daemon's API prints json, ndjson, csv and text with that function, and a
//! table is rendered here from its json rows with the local table code.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::daemon::{read_address, DaemonAddress, PID_HEADER, STORE_ID_HEADER};
use crate::exit;
use crate::query::output::OutputError;
use crate::query::{self, Format, Request};
use crate::store::{Store, StoreError};

/// Where questions are answered.
pub enum Source {
    /// The store, opened by this process.
    Local(Box<Store>),
    /// The daemon holding the store.
    Daemon(Box<Daemon>),
}

/// Why a question got no answer.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The store could not be opened (missing, not a store, damaged).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The daemon holding the store did not answer, or refused.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// The local answer failed, or writing it did.
    #[error(transparent)]
    Output(#[from] OutputError),
}

impl SourceError {
    /// The exit code (SPEC section 9).
    pub fn exit_code(&self) -> u8 {
        match self {
            SourceError::Store(e) => e.exit_code(),
            SourceError::Remote(e) => e.exit_code(),
            SourceError::Output(e) => e.exit_code(),
        }
    }

    /// Whether printing stopped because the reader went away (`| head`).
    pub fn is_broken_pipe(&self) -> bool {
        let io = match self {
            SourceError::Output(OutputError::Io(e)) | SourceError::Remote(RemoteError::Io(e)) => e,
            _ => return false,
        };
        io.kind() == std::io::ErrorKind::BrokenPipe
    }
}

impl Source {
    /// The store in `dir`, opened for reading (never created); when another
    /// process holds it, the daemon it records.
    pub fn open(dir: &Path) -> Result<Source, SourceError> {
        match Store::open_existing(dir) {
            Ok(store) => Ok(Source::Local(Box::new(store))),
            Err(StoreError::Locked { .. }) => Ok(Source::Daemon(Box::new(Daemon::locate(dir)?))),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes the Parquet file `req` asks for (`export` or `export
    /// --changes` in [`Format::Parquet`]) into `out`; returns `out` and, for
    /// the change feed, the last seq written. From the daemon the answer is
    /// fetched as NDJSON and written here (the API serves only text).
    pub async fn parquet<W: Write + Send>(
        &self,
        req: &Request,
        out: W,
    ) -> Result<(W, Option<u64>), SourceError> {
        use query::parquet::{self as pq, Table};
        use query::Question;
        let table = match req.question() {
            Question::Changes { .. } => Table::Changes,
            _ => Table::Commits,
        };
        match self {
            Source::Local(store) => Ok(match req.question() {
                Question::Export { all } => {
                    let (out, _) = pq::export(store, *all, out)?;
                    (out, None)
                }
                Question::Changes { after, limit, .. } => pq::changes(store, *after, *limit, out)?,
                _ => return Err(OutputError::NotText(Format::Parquet.name()).into()),
            }),
            Source::Daemon(daemon) => {
                let ndjson = req
                    .in_format(Format::Ndjson)
                    .map_err(|e| RemoteError::BadRequest(e.to_string()))?;
                let mut file = pq::FromNdjson::new(out, table)?;
                daemon.answer(&ndjson, &mut file).await?;
                Ok(file.finish()?)
            }
        }
    }

    /// Answers `req` into `out`, streaming.
    pub async fn answer(&self, req: &Request, out: &mut dyn Write) -> Result<(), SourceError> {
        match self {
            Source::Local(store) => query::answer(store, req, out)?,
            Source::Daemon(daemon) => daemon.answer(req, out).await?,
        }
        out.flush().map_err(OutputError::Io)?;
        Ok(())
    }

    /// Lets go of the source in a process that exits right after (see
    /// [`Store::close_at_exit`]).
    pub fn close_at_exit(self) {
        match self {
            Source::Local(store) => store.close_at_exit(),
            Source::Daemon(_) => {}
        }
    }
}

/// Why the daemon could not answer.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The store is locked and no daemon answers at the recorded address
    /// (or none was recorded): exit 7.
    #[error("the store at {store} is locked by another process{holder}, which does not answer; stop it or wait for it to finish")]
    NoAnswer {
        /// Store directory.
        store: String,
        /// Who holds it, when known.
        holder: String,
    },
    /// The daemon refused the question (a bad hash, a bad filter): exit 2.
    #[error("{0}")]
    BadRequest(String),
    /// Nothing matches (`show`): exit 1.
    #[error("{0}")]
    NotFound(String),
    /// The daemon failed to answer the question: exit 1.
    #[error("the daemon failed to answer: {0}")]
    Failed(String),
    /// Writing the answer failed (e.g. a closed pipe).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A daemon found through its address file.
pub struct Daemon {
    address: DaemonAddress,
    http: reqwest::Client,
    /// The store directory (its address file is read again after a
    /// certificate renewal).
    dir: std::path::PathBuf,
    store: String,
    /// The id of the store the CLI means (its `store-id` file).
    store_id: Option<String>,
}

#[derive(Deserialize)]
struct ApiError {
    #[serde(default)]
    code: String,
    #[serde(default)]
    error: String,
}

impl ApiError {
    /// The status and error of an answer that is not a success (its body
    /// as the message when it is not the API's JSON).
    async fn of(resp: reqwest::Response) -> (u16, ApiError) {
        let status = resp.status().as_u16();
        let body = resp.bytes().await.unwrap_or_default();
        let err = serde_json::from_slice(&body).unwrap_or(ApiError {
            code: String::new(),
            error: String::from_utf8_lossy(&body).into_owned(),
        });
        (status, err)
    }
}

impl Daemon {
    /// The daemon recorded in `store_dir`, if any (not yet contacted).
    pub fn locate(store_dir: &Path) -> Result<Daemon, RemoteError> {
        let store = store_dir.display().to_string();
        let Some(address) = read_address(store_dir) else {
            return Err(RemoteError::NoAnswer {
                store,
                holder: String::new(),
            });
        };
        let http = client_for(&address)?;
        Ok(Daemon {
            address,
            http,
            dir: store_dir.to_path_buf(),
            store,
            store_id: crate::store::read_id(store_dir),
        })
    }

    /// Whether the answer comes from the daemon of this store: the process
    /// the address file names, holding the store with this store's id. An
    /// address file left by a killed daemon may name a port that another
    /// process — another store's daemon — has since taken.
    fn is_ours(&self, resp: &reqwest::Response) -> bool {
        let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok());
        let pid_ok =
            header(PID_HEADER).and_then(|p| p.parse::<u32>().ok()) == Some(self.address.pid);
        let id_ok = match (&self.store_id, header(STORE_ID_HEADER)) {
            (Some(ours), Some(theirs)) => ours == theirs,
            _ => false,
        };
        pid_ok && id_ok
    }

    fn not_ours(&self) -> RemoteError {
        RemoteError::NoAnswer {
            store: self.store.clone(),
            holder: format!(
                " (its address file names pid {} at {}, but what answers there is not this store's daemon: the file is stale)",
                self.address.pid, self.address.addr
            ),
        }
    }

    fn no_answer(&self) -> RemoteError {
        RemoteError::NoAnswer {
            store: self.store.clone(),
            holder: format!(
                " (bbcrawl run, pid {}, at {})",
                self.address.pid, self.address.addr
            ),
        }
    }

    /// `https` when the daemon serves TLS.
    fn url(&self, path: &str) -> String {
        let scheme = match self.address.tls_cert {
            Some(_) => "https",
            None => "http",
        };
        format!("{scheme}://{}{path}", self.address.addr)
    }

    /// Sends `build(client, url)` with the local token; with TLS, once more
    /// after a failure if the daemon has recorded a renewed certificate
    /// meanwhile.
    async fn send(
        &self,
        path: &str,
        build: impl Fn(&reqwest::Client, String) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, RemoteError> {
        let with_token = |rb: reqwest::RequestBuilder, a: &DaemonAddress| match &a.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        };
        let first = with_token(build(&self.http, self.url(path)), &self.address)
            .send()
            .await;
        match first {
            Ok(resp) => Ok(resp),
            Err(_) if self.address.tls_cert.is_some() => {
                let fresh = read_address(&self.dir)
                    .filter(|a| a.pid == self.address.pid && a.tls_cert != self.address.tls_cert)
                    .ok_or_else(|| self.no_answer())?;
                let http = client_for(&fresh)?;
                let url = format!("https://{}{path}", fresh.addr);
                with_token(build(&http, url), &fresh)
                    .send()
                    .await
                    .map_err(|_| self.no_answer())
            }
            Err(_) => Err(self.no_answer()),
        }
    }

    async fn get(
        &self,
        path: &str,
        params: &[(String, String)],
    ) -> Result<reqwest::Response, RemoteError> {
        let resp = self
            .send(path, |http, url| http.get(url).query(params))
            .await?;
        if !self.is_ours(&resp) {
            return Err(self.not_ours());
        }
        if resp.status().is_success() {
            return Ok(resp);
        }
        let (status, err) = ApiError::of(resp).await;
        Err(match (status, err.code.as_str()) {
            (404 | 409, "unknown_hash" | "ambiguous_hash") => RemoteError::NotFound(err.error),
            (400, _) => RemoteError::BadRequest(err.error),
            _ => RemoteError::Failed(format!("HTTP {status}: {}", err.error)),
        })
    }

    /// Answers `req`: the daemon's bytes as they arrive, or for a table
    /// (which the API does not serve: it is for people) its json rows
    /// rendered here.
    pub async fn answer(&self, req: &Request, out: &mut dyn Write) -> Result<(), RemoteError> {
        if req.format() == Format::Table {
            let json = req
                .in_format(Format::Json)
                .map_err(|e| RemoteError::BadRequest(e.to_string()))?;
            let body = self
                .fetch(&json)
                .await?
                .bytes()
                .await
                .map_err(|e| RemoteError::Failed(e.to_string()))?;
            return query::table_from_json(req.question(), &body, req.width(), out).map_err(|e| {
                match e {
                    OutputError::Io(io) => RemoteError::Io(io),
                    other => RemoteError::Failed(other.to_string()),
                }
            });
        }
        let mut resp = self.fetch(req).await?;
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| RemoteError::Failed(e.to_string()))?
        {
            out.write_all(&chunk)?;
        }
        Ok(())
    }

    /// Asks the daemon to back its store up to `dest` (absolute), with the
    /// token of its address file; the copy is made in the daemon, between
    /// pages.
    pub async fn backup(&self, dest: &Path) -> Result<crate::store::BackupReport, RemoteError> {
        if self.address.token.is_none() {
            return Err(RemoteError::Failed(
                "the daemon holding the store does not take backup requests (an older bbcrawl); stop it to back the store up".into(),
            ));
        }
        let body = serde_json::json!({ "dest": dest });
        let resp = self
            .send(crate::daemon::ADMIN_BACKUP, |http, url| {
                http.post(url).json(&body)
            })
            .await?;
        self.admin_answer(resp, "backup").await
    }

    /// An admin request's JSON answer, from this daemon only; a refusal
    /// is `what: <its error>`.
    async fn admin_answer<T: serde::de::DeserializeOwned>(
        &self,
        resp: reqwest::Response,
        what: &str,
    ) -> Result<T, RemoteError> {
        if !self.is_ours(&resp) {
            return Err(self.not_ours());
        }
        if resp.status().is_success() {
            return resp
                .json()
                .await
                .map_err(|e| RemoteError::Failed(e.to_string()));
        }
        let (_, err) = ApiError::of(resp).await;
        Err(RemoteError::Failed(format!("{what}: {}", err.error)))
    }

    /// The daemon's webhook receiver status (`None`: it has none).
    pub async fn hooks_status(&self) -> Result<Option<crate::hooks::HookStatus>, RemoteError> {
        let resp = self
            .send(crate::daemon::ADMIN_HOOKS, |http, url| http.get(url))
            .await?;
        self.admin_answer(resp, "webhook status").await
    }

    async fn fetch(&self, req: &Request) -> Result<reqwest::Response, RemoteError> {
        let (path, params) = req.to_url();
        self.get(&path, &params).await
    }
}

/// The HTTP client for the daemon at `address`: no proxy (it is local);
/// with TLS, trusting exactly the certificate it recorded (it is reached
/// by IP, so no name would match).
fn client_for(address: &DaemonAddress) -> Result<reqwest::Client, RemoteError> {
    let mut b = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .no_proxy();
    if address.tls_cert.is_some() {
        let der = address.tls_cert_der().ok_or_else(|| {
            RemoteError::Failed("the daemon's address file holds an unreadable certificate".into())
        })?;
        b = b.use_preconfigured_tls(crate::web::tls::pinned_client_config_with(
            der,
            address.local_client().as_ref(),
        ));
    }
    b.build().map_err(|e| RemoteError::Failed(e.to_string()))
}

impl RemoteError {
    /// The exit code (SPEC section 9).
    pub fn exit_code(&self) -> u8 {
        match self {
            RemoteError::NoAnswer { .. } => exit::LOCKED,
            RemoteError::BadRequest(_) => exit::USAGE,
            RemoteError::NotFound(_) | RemoteError::Failed(_) | RemoteError::Io(_) => exit::RUNTIME,
        }
    }
}
