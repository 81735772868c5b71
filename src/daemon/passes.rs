//! The pass loop of `bbcrawl run`: a pass at start, then one `interval`
//! after the previous one ended (passes never overlap), until stopped; each
//! pass logged, counted in the metrics and reported to `/healthz`.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::watch;

use super::health::{failure_code, Health};
use super::DaemonOptions;
use crate::actors::{Crawler, PassEnd, PassError, PassSummary};
use crate::record::RepoTotals;
use crate::store::{Store, StoreError};
use crate::telemetry;

/// Waits until the stop signal is set.
pub(super) async fn stopped(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|stop| *stop).await.is_err() {
        // The sender never goes away before sending (see `run`).
        std::future::pending::<()>().await;
    }
}

/// The pass loop: one pass, then `interval`, until stopped.
pub(super) async fn passes(
    crawler: &Crawler,
    store: &Arc<Store>,
    opts: &DaemonOptions,
    health: &RwLock<Health>,
    stop_rx: &mut watch::Receiver<bool>,
) {
    // The most the store grew in one pass: the automatic free-disk floor.
    let mut largest_growth = 0u64;
    loop {
        let started = Instant::now();
        let floor = crate::store::disk_floor(opts.min_free_disk, largest_growth);
        let ready = {
            let store = Arc::clone(store);
            tokio::task::spawn_blocking(move || before_pass(&store, floor)).await
        };
        let size_before = match ready {
            Ok(Ok(size)) => Some(size),
            Ok(Err(e)) => {
                record_pass(Err(e.into()), started.elapsed(), store, health).await;
                tokio::select! {
                    _ = tokio::time::sleep(opts.interval) => continue,
                    _ = stopped(stop_rx) => return,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot check the store before a pass");
                None
            }
        };
        let mut stop = stop_rx.clone();
        let (result, stopping) = match crawler
            .pass_until(opts.pass.clone(), async move { stopped(&mut stop).await })
            .await
        {
            PassEnd::Finished(r) => (r, *stop_rx.borrow()),
            PassEnd::Stopped((), r) => (r, true),
            PassEnd::Abandoned(()) => return,
        };
        let size_after = record_pass(result, started.elapsed(), store, health).await;
        if let (Some(before), Some(after)) = (size_before, size_after) {
            largest_growth = largest_growth.max(after.saturating_sub(before));
        }
        if stopping {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(opts.interval) => {}
            _ = stopped(stop_rx) => return,
        }
    }
}

/// Before a pass: the free disk (its gauge, and no pass below `floor`),
/// then a reopen of the store if sled failed an I/O since it was opened
/// (its error is sticky: a full disk). Returns the store's size.
fn before_pass(store: &Store, floor: u64) -> Result<u64, StoreError> {
    let checked = store.check_free(floor);
    if let Ok(free) | Err(StoreError::LowDisk { free, .. }) = &checked {
        metrics::gauge!(telemetry::STORE_FREE).set(*free as f64);
    }
    checked?;
    if store.needs_reopen() {
        store.reopen()?;
    }
    store.size_on_disk()
}

/// Logs a pass, updates `/healthz` and the metrics, and returns the
/// store's size as the gauges read it. A pass that failed as a whole is
/// retried at the next interval: every such failure (401, 403, a listing
/// that cannot be read, the store) may go away.
async fn record_pass(
    result: Result<PassSummary, PassError>,
    elapsed: Duration,
    store: &Arc<Store>,
    health: &RwLock<Health>,
) -> Option<u64> {
    let now = Utc::now();
    metrics::gauge!(telemetry::SYNC_DURATION).set(elapsed.as_secs_f64());
    {
        let mut h = health.write().unwrap_or_else(|e| e.into_inner());
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
                h.passed(summary, now);
            }
            Err(e) => {
                let code = failure_code(&e);
                tracing::error!(code, error = %e, "pass failed; retrying at the next interval");
                metrics::counter!(telemetry::SYNC_PASSES, "result" => "failed").increment(1);
                metrics::gauge!(telemetry::LAST_SYNC_FAILED).set(1.0);
                h.failed(&e, now);
            }
        }
    }
    let store = Arc::clone(store);
    match tokio::task::spawn_blocking(move || store_gauges(&store)).await {
        Ok(Ok(size)) => Some(size),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot read the store for its gauges");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the store for its gauges");
            None
        }
    }
}

/// Store size, free disk, commits, repositories by state and outstanding
/// backfill; returns the size.
fn store_gauges(store: &Store) -> Result<u64, StoreError> {
    let totals = RepoTotals::of(&store.repos()?);
    metrics::gauge!(telemetry::BACKFILL_REPOS).set(totals.backfilling as f64);
    telemetry::BACKFILL_PAGES_ESTIMATE
        .store(totals.backfill_pages, std::sync::atomic::Ordering::Relaxed);
    for status in crate::record::RepoStatus::ALL {
        metrics::gauge!(telemetry::REPOS, "state" => status.as_str())
            .set(totals.count(status) as f64);
    }
    metrics::gauge!(telemetry::STORE_COMMITS).set(totals.commits as f64);
    let size = store.size_on_disk()?;
    metrics::gauge!(telemetry::STORE_SIZE).set(size as f64);
    metrics::gauge!(telemetry::STORE_FREE).set(store.free_bytes()? as f64);
    Ok(size)
}
