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
    // Whether the last pass failed on the store (a full disk): sled's error
    // is sticky, so the store is reopened before the next pass.
    let mut reopen = false;
    loop {
        let started = Instant::now();
        let floor = crate::store::disk_floor(opts.min_free_disk, largest_growth);
        let size_before = store.size_on_disk().unwrap_or(0);
        let free = {
            let store = Arc::clone(store);
            tokio::task::spawn_blocking(move || store.check_free(floor)).await
        };
        match free {
            Ok(Ok(free)) => metrics::gauge!(telemetry::STORE_FREE).set(free as f64),
            Ok(Err(e)) => {
                if let crate::store::StoreError::LowDisk { free, .. } = &e {
                    metrics::gauge!(telemetry::STORE_FREE).set(*free as f64);
                }
                record_pass(Err(e.into()), started.elapsed(), store, health).await;
                tokio::select! {
                    _ = tokio::time::sleep(opts.interval) => continue,
                    _ = stopped(stop_rx) => return,
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the store's free disk"),
        }
        if reopen {
            let s = Arc::clone(store);
            match tokio::task::spawn_blocking(move || s.reopen()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    record_pass(Err(e.into()), started.elapsed(), store, health).await;
                    tokio::select! {
                        _ = tokio::time::sleep(opts.interval) => continue,
                        _ = stopped(stop_rx) => return,
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot reopen the store"),
            }
        }
        let mut stop = stop_rx.clone();
        let (result, stopping) = match crawler
            .pass_until(opts.pass.clone(), async move { stopped(&mut stop).await })
            .await
        {
            PassEnd::Finished(r) => (r, *stop_rx.borrow()),
            PassEnd::Stopped((), r) => (r, true),
            PassEnd::Abandoned(()) => return,
        };
        reopen = match &result {
            Err(PassError::Store(StoreError::LowDisk { .. })) => false,
            Err(PassError::Store(_)) => true,
            Err(_) => false,
            Ok(summary) => summary
                .failures
                .iter()
                .any(|f| f.contains("store I/O error")),
        };
        record_pass(result, started.elapsed(), store, health).await;
        let grew = store
            .size_on_disk()
            .unwrap_or(0)
            .saturating_sub(size_before);
        largest_growth = largest_growth.max(grew);
        if stopping {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(opts.interval) => {}
            _ = stopped(stop_rx) => return,
        }
    }
}

/// Logs a pass, updates `/healthz` and the metrics. A pass that failed as
/// a whole is retried at the next interval: every such failure (401, 403, a
/// listing that cannot be read, the store) may go away.
async fn record_pass(
    result: Result<PassSummary, PassError>,
    elapsed: Duration,
    store: &Arc<Store>,
    health: &RwLock<Health>,
) {
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
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot read the store for its gauges"),
        Err(e) => tracing::warn!(error = %e, "cannot read the store for its gauges"),
    }
}

/// Store size, commits, repositories by state and outstanding backfill.
fn store_gauges(store: &Store) -> Result<(), crate::store::StoreError> {
    let totals = RepoTotals::of(&store.repos()?);
    metrics::gauge!(telemetry::BACKFILL_REPOS).set(totals.backfilling as f64);
    telemetry::BACKFILL_PAGES_ESTIMATE
        .store(totals.backfill_pages, std::sync::atomic::Ordering::Relaxed);
    for status in crate::record::RepoStatus::ALL {
        metrics::gauge!(telemetry::REPOS, "state" => status.as_str())
            .set(totals.count(status) as f64);
    }
    metrics::gauge!(telemetry::STORE_COMMITS).set(totals.commits as f64);
    metrics::gauge!(telemetry::STORE_SIZE).set(store.size_on_disk()? as f64);
    metrics::gauge!(telemetry::STORE_FREE).set(store.free_bytes()? as f64);
    Ok(())
}
