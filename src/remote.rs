//! Asking a running daemon: while `bbcrawl run` holds the store (sled
//! allows one process), `query`, `show` and `export` send the same question
//! to the daemon's query API, whose address it records in the store
//! directory. The API answers with the CLI's own bytes for json, ndjson,
//! csv and text; a table is rendered here from the json rows, with the same
//! code as a local query.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::daemon::{read_address, DaemonAddress, PID_HEADER, STORE_ID_HEADER};
use crate::query::CommitFilter;

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
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            // The daemon is local: no proxy between us.
            .no_proxy()
            .build()
            .map_err(|e| RemoteError::Failed(e.to_string()))?;
        Ok(Daemon {
            address,
            http,
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

    async fn get(
        &self,
        path: &str,
        params: &[(String, String)],
    ) -> Result<reqwest::Response, RemoteError> {
        let url = format!("http://{}{}", self.address.addr, path);
        let resp = self
            .http
            .get(url)
            .query(params)
            .send()
            .await
            .map_err(|_| self.no_answer())?;
        if !self.is_ours(&resp) {
            return Err(self.not_ours());
        }
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let body = resp.bytes().await.unwrap_or_default();
        let err: ApiError = serde_json::from_slice(&body).unwrap_or(ApiError {
            code: String::new(),
            error: String::from_utf8_lossy(&body).into_owned(),
        });
        Err(match (status, err.code.as_str()) {
            (404 | 409, "unknown_hash" | "ambiguous_hash") => RemoteError::NotFound(err.error),
            (400, _) => RemoteError::BadRequest(err.error),
            _ => RemoteError::Failed(format!("HTTP {status}: {}", err.error)),
        })
    }

    /// Copies the answer's body to `out` as it arrives.
    pub async fn stream_to(
        &self,
        path: &str,
        params: &[(String, String)],
        out: &mut dyn Write,
    ) -> Result<(), RemoteError> {
        let mut resp = self.get(path, params).await?;
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| RemoteError::Failed(e.to_string()))?
        {
            out.write_all(&chunk)?;
        }
        out.flush()?;
        Ok(())
    }

    /// Fetches a json answer and decodes it.
    pub async fn json<T: DeserializeOwned>(
        &self,
        path: &str,
        params: &[(String, String)],
    ) -> Result<T, RemoteError> {
        let resp = self.get(path, params).await?;
        let body = resp
            .bytes()
            .await
            .map_err(|e| RemoteError::Failed(e.to_string()))?;
        serde_json::from_slice(&body)
            .map_err(|e| RemoteError::Failed(format!("undecodable answer: {e}")))
    }
}

/// The query parameters of a commit filter (the API's names are the CLI's flags).
pub fn filter_params(f: &CommitFilter) -> Vec<(String, String)> {
    let mut p = Vec::new();
    if let Some(w) = &f.workspace {
        p.push(("workspace".into(), w.clone()));
    }
    for r in &f.repos {
        p.push(("repo".into(), r.clone()));
    }
    if let Some(a) = &f.author {
        p.push(("author".into(), a.clone()));
    }
    if let Some(t) = f.since {
        p.push(("since".into(), t.to_rfc3339()));
    }
    if let Some(t) = f.until {
        p.push(("until".into(), t.to_rfc3339()));
    }
    if let Some(g) = &f.grep {
        p.push(("grep".into(), g.clone()));
    }
    if f.all {
        p.push(("all".into(), "true".into()));
    }
    if let Some(n) = f.limit {
        p.push(("limit".into(), n.to_string()));
    }
    p
}
