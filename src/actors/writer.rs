//! The writer: the single owner of store writes, on its own thread.
//!
//! It runs on a one-thread `SyncArbiter`, so blocking sled calls (writes
//! and `flush()`) never stall the async crawl, and there is exactly one
//! writer: sled 0.34's `flush_async` must not run concurrently (it can
//! deadlock), so flushing is a blocking call made here only, on a cadence
//! and whenever asked (before a pass reports done).

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, Handler, Message, SyncContext};

use crate::record::CommitRecord;
use crate::record::RepoState;
use crate::store::{PageOutcome, Store, StoreError};
use crate::telemetry;

/// How often the writer flushes while pages keep coming.
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// The writer actor.
pub struct Writer {
    store: Arc<Store>,
    last_flush: Instant,
    dirty: bool,
}

impl Writer {
    /// A writer over `store`.
    pub fn new(store: Arc<Store>) -> Writer {
        Writer {
            store,
            last_flush: Instant::now(),
            dirty: false,
        }
    }

    fn wrote(&mut self) -> Result<(), StoreError> {
        self.dirty = true;
        if self.last_flush.elapsed() >= FLUSH_EVERY {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        if self.dirty {
            self.store.flush()?;
            self.dirty = false;
        }
        self.last_flush = Instant::now();
        Ok(())
    }
}

impl Actor for Writer {
    type Context = SyncContext<Self>;

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        if let Err(e) = self.flush() {
            tracing::error!(error = %e, "final flush failed");
        }
    }
}

/// Stores one page of commits together with the repository's saved
/// position, atomically. Answers the repository as stored.
#[derive(Message)]
#[rtype(result = "Result<PageOutcome, StoreError>")]
pub struct WritePage {
    /// The repository with its walk advanced past this page.
    pub repo: RepoState,
    /// The page's commits.
    pub commits: Vec<CommitRecord>,
}

impl Handler<WritePage> for Writer {
    type Result = Result<PageOutcome, StoreError>;

    fn handle(&mut self, msg: WritePage, _ctx: &mut Self::Context) -> Self::Result {
        let started = Instant::now();
        let out = self.store.apply_page(&msg.repo, &msg.commits)?;
        metrics::histogram!(telemetry::STORE_WRITE_DURATION)
            .record(started.elapsed().as_secs_f64());
        // Counted here, where the store said which commits were new.
        metrics::counter!(telemetry::COMMITS_STORED).increment(out.new_commits);
        tracing::trace!(repo = %msg.repo.full_name, new = out.new_commits, elapsed = ?started.elapsed(), "page stored");
        self.wrote()?;
        Ok(out)
    }
}

/// Ends a full walk at `head`: re-marks reachability and saves the
/// repository. Answers the repository as stored and the commits orphaned.
#[derive(Message)]
#[rtype(result = "Result<(RepoState, u64), StoreError>")]
pub struct MarkReachable {
    /// The repository, its walk finished.
    pub repo: RepoState,
    /// The new head.
    pub head: String,
}

impl Handler<MarkReachable> for Writer {
    type Result = Result<(RepoState, u64), StoreError>;

    fn handle(&mut self, msg: MarkReachable, _ctx: &mut Self::Context) -> Self::Result {
        let out = self
            .store
            .mark_reachability(&msg.repo, &msg.head, chrono::Utc::now())?;
        self.wrote()?;
        Ok(out)
    }
}

/// Saves a repository record on its own.
#[derive(Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct PutRepo(pub RepoState);

impl Handler<PutRepo> for Writer {
    type Result = Result<(), StoreError>;

    fn handle(&mut self, msg: PutRepo, _ctx: &mut Self::Context) -> Self::Result {
        self.store.put_repo(&msg.0)?;
        self.wrote()
    }
}

/// Saves a meta document (e.g. the last pass summary).
#[derive(Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct PutMeta {
    /// Meta key.
    pub key: &'static [u8],
    /// JSON document.
    pub value: serde_json::Value,
}

impl Handler<PutMeta> for Writer {
    type Result = Result<(), StoreError>;

    fn handle(&mut self, msg: PutMeta, _ctx: &mut Self::Context) -> Self::Result {
        self.store.put_meta(msg.key, &msg.value)?;
        self.wrote()
    }
}

/// Flushes everything to disk now.
#[derive(Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct Flush;

impl Handler<Flush> for Writer {
    type Result = Result<(), StoreError>;

    fn handle(&mut self, _msg: Flush, _ctx: &mut Self::Context) -> Self::Result {
        self.flush()
    }
}
