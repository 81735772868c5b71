//! Every metric bbcrawl exports (SPEC section 7), in one place: its name,
//! kind, unit, description and, for histograms, its buckets; and the
//! installation of the global Prometheus recorder that `bbcrawl run` renders
//! at `GET /metrics`.
//!
//! Conventions (vector's instrumentation habits): `bbcrawl_` prefix, base
//! units in the name (`_seconds`, `_bytes`), `_total` on counters, and only
//! bounded label values — never a repository, hash, author, URL or error
//! text. The `metrics` macros are no-ops until a recorder is installed, so
//! `sync`, `demo` and tests that do not install one pay nothing.
//!
//! Instrumentation sites, one each: the client's request loop
//! (`bitbucket::client`) for HTTP attempts, 429s, retries and backoff; the
//! repository actor for pages and commits fetched; the writer for commits
//! stored and write durations; [`crate::actors::WriterQueue`] for the queue
//! depth; the daemon after each pass and at each scrape for the gauges.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// `{endpoint,code}`: HTTP attempts sent to Bitbucket (every retry counts).
pub const HTTP_REQUESTS: &str = "bbcrawl_http_requests_total";
/// `{endpoint}`: time from sending an attempt to its whole body (or failure).
pub const HTTP_REQUEST_DURATION: &str = "bbcrawl_http_request_duration_seconds";
/// HTTP 429 answers.
pub const RATE_LIMITED: &str = "bbcrawl_rate_limited_total";
/// `{reason}`: attempts that were retries of a failed one.
pub const RETRIES: &str = "bbcrawl_retries_total";
/// Seconds requests waited before a retry.
pub const BACKOFF_SECONDS: &str = "bbcrawl_backoff_seconds_total";
/// Commit pages received.
pub const PAGES_FETCHED: &str = "bbcrawl_pages_fetched_total";
/// Commits received (stored before or not).
pub const COMMITS_FETCHED: &str = "bbcrawl_commits_fetched_total";
/// Commits stored that were not stored before.
pub const COMMITS_STORED: &str = "bbcrawl_commits_stored_total";
/// Time of one atomic page write.
pub const STORE_WRITE_DURATION: &str = "bbcrawl_store_write_duration_seconds";
/// `{result}`: sync passes finished.
pub const SYNC_PASSES: &str = "bbcrawl_sync_passes_total";
/// Commits in the store.
pub const STORE_COMMITS: &str = "bbcrawl_store_commits";
/// Bytes the store takes on disk.
pub const STORE_SIZE: &str = "bbcrawl_store_size_bytes";
/// Bytes free to bbcrawl on the store's filesystem.
pub const STORE_FREE: &str = "bbcrawl_store_free_bytes";
/// `{state}`: repositories by state.
pub const REPOS: &str = "bbcrawl_repos";
/// Wall time of the last pass.
pub const SYNC_DURATION: &str = "bbcrawl_sync_duration_seconds";
/// When the last pass that did not fail as a whole ended.
pub const LAST_SYNC_SUCCESS: &str = "bbcrawl_last_sync_success_timestamp_seconds";
/// 1 when the last pass failed as a whole.
pub const LAST_SYNC_FAILED: &str = "bbcrawl_last_sync_failed";
/// Request budget per hour, summed over credentials.
pub const RATELIMIT_LIMIT: &str = "bbcrawl_ratelimit_limit";
/// `{outcome}`: webhook deliveries received (see [`crate::hooks::OUTCOMES`]).
pub const HOOK_DELIVERIES: &str = crate::hooks::DELIVERIES;
/// `{result}`: walks a webhook triggered.
pub const HOOK_FETCHES: &str = crate::hooks::FETCHES;
/// From a webhook delivery's arrival to its commits stored.
pub const HOOK_PUSH_TO_STORED: &str = crate::hooks::PUSH_TO_STORED;
/// Requests left in the rolling hour, summed over credentials.
pub const RATELIMIT_REMAINING: &str = "bbcrawl_ratelimit_remaining_estimate";
/// Seconds until the longest 429 pause in force ends (0 when none).
pub const RATELIMIT_WAIT: &str = "bbcrawl_ratelimit_wait_seconds";
/// Pages handed to the writer and not yet acknowledged.
pub const WRITER_QUEUE_DEPTH: &str = "bbcrawl_writer_queue_depth";
/// `{version}`: always 1.
pub const BUILD_INFO: &str = "bbcrawl_build_info";
/// `{shard,shards}`: always 1; which shard of how many this instance crawls.
pub const SHARD_INFO: &str = "bbcrawl_shard_info";
/// Requests the endpoint's basic auth refused, by reason.
pub const HTTP_AUTH_FAILURES: &str = crate::daemon::AUTH_FAILURES;
/// TLS handshakes of the endpoint that failed.
pub const TLS_HANDSHAKE_FAILURES: &str = crate::web::listener::HANDSHAKE_FAILURES;
/// The values of `reason` on [`HTTP_AUTH_FAILURES`].
pub const AUTH_FAILURE_REASONS: [&str; 3] = ["missing", "wrong", "overloaded"];
/// Repositories the change gate skipped (unchanged, no audit due).
pub const REPOS_SKIPPED: &str = "bbcrawl_repos_skipped_total";
/// Repositories checked because their audit was due.
pub const AUDITS: &str = "bbcrawl_audits_total";
/// Audits that found a change the listing's `updated_on` had not announced.
pub const AUDIT_FOUND: &str = "bbcrawl_audit_found_changes_total";
/// Repositories whose first crawl is not finished.
pub const BACKFILL_REPOS: &str = "bbcrawl_backfill_repos";
/// Rough time to finish outstanding backfill at the current budget.
pub const BACKFILL_ETA: &str = "bbcrawl_backfill_eta_seconds";

/// Pages outstanding backfill is estimated to need (set after each pass,
/// turned into [`BACKFILL_ETA`] at scrape time with the current budget).
pub static BACKFILL_PAGES_ESTIMATE: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0);

/// The values of `endpoint`.
pub const ENDPOINTS: [&str; 2] = ["repositories", "commits"];
/// The values of `reason` on [`RETRIES`].
pub const RETRY_REASONS: [&str; 5] = [
    "rate_limited",
    "server_error",
    "timeout",
    "connection",
    "body",
];
/// The values of `result` on [`SYNC_PASSES`].
pub const PASS_RESULTS: [&str; 3] = ["ok", "partial", "failed"];

/// Buckets of [`HTTP_REQUEST_DURATION`]: from a fast local answer to the
/// default 60 s request timeout.
pub const HTTP_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Buckets of [`STORE_WRITE_DURATION`]: a page of 100 commits is usually
/// well under 10 ms; flushes stretch the tail.
pub const STORE_WRITE_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The kind of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution over buckets.
    Histogram,
}

/// One metric's definition.
#[derive(Debug, Clone, Copy)]
pub struct MetricDef {
    /// Full name.
    pub name: &'static str,
    /// Kind.
    pub kind: Kind,
    /// Unit.
    pub unit: Unit,
    /// The `# HELP` text.
    pub help: &'static str,
    /// Label names (their values are bounded; see the constants above).
    pub labels: &'static [&'static str],
}

/// Every metric bbcrawl exports.
pub const METRICS: [MetricDef; 33] = [
    MetricDef { name: HTTP_REQUESTS, kind: Kind::Counter, unit: Unit::Count, labels: &["endpoint", "code"],
        help: "HTTP attempts sent to Bitbucket, every retry included, by endpoint and status code (`error` when no answer came)." },
    MetricDef { name: HTTP_REQUEST_DURATION, kind: Kind::Histogram, unit: Unit::Seconds, labels: &["endpoint"],
        help: "Time of one HTTP attempt, from sending to the end of the body or the failure." },
    MetricDef { name: RATE_LIMITED, kind: Kind::Counter, unit: Unit::Count, labels: &[],
        help: "HTTP 429 answers from Bitbucket." },
    MetricDef { name: RETRIES, kind: Kind::Counter, unit: Unit::Count, labels: &["reason"],
        help: "Requests retried, by the reason the previous attempt failed." },
    MetricDef { name: BACKOFF_SECONDS, kind: Kind::Counter, unit: Unit::Seconds, labels: &[],
        help: "Seconds requests waited before a retry: backoff sleeps after transient failures and waits at the credential's gate after a 429 (whole seconds of the exact total)." },
    MetricDef { name: PAGES_FETCHED, kind: Kind::Counter, unit: Unit::Count, labels: &[],
        help: "Pages of commits received." },
    MetricDef { name: COMMITS_FETCHED, kind: Kind::Counter, unit: Unit::Count, labels: &[],
        help: "Commits received, whether stored before or not." },
    MetricDef { name: COMMITS_STORED, kind: Kind::Counter, unit: Unit::Count, labels: &[],
        help: "Commits stored that were not in the store before." },
    MetricDef { name: STORE_WRITE_DURATION, kind: Kind::Histogram, unit: Unit::Seconds, labels: &[],
        help: "Time of one atomic store write of a page of commits and its saved position." },
    MetricDef { name: SYNC_PASSES, kind: Kind::Counter, unit: Unit::Count, labels: &["result"],
        help: "Sync passes finished: ok, partial (some repositories failed or the pass was stopped) or failed as a whole." },
    MetricDef { name: STORE_COMMITS, kind: Kind::Gauge, unit: Unit::Count, labels: &[],
        help: "Commits in the store (reachable or not), after the last pass." },
    MetricDef { name: STORE_SIZE, kind: Kind::Gauge, unit: Unit::Bytes, labels: &[],
        help: "Bytes the store takes on disk, after the last pass." },
    MetricDef { name: STORE_FREE, kind: Kind::Gauge, unit: Unit::Bytes, labels: &[],
        help: "Bytes free to bbcrawl on the store's filesystem, before and after each pass (a pass does not start below min_free_disk_mb)." },
    MetricDef { name: REPOS, kind: Kind::Gauge, unit: Unit::Count, labels: &["state"],
        help: "Repositories in the store by state, after the last pass." },
    MetricDef { name: SYNC_DURATION, kind: Kind::Gauge, unit: Unit::Seconds, labels: &[],
        help: "Wall time of the last sync pass." },
    MetricDef { name: LAST_SYNC_SUCCESS, kind: Kind::Gauge, unit: Unit::Seconds, labels: &[],
        help: "Unix time at which the last pass that did not fail as a whole ended." },
    MetricDef { name: LAST_SYNC_FAILED, kind: Kind::Gauge, unit: Unit::Count, labels: &[],
        help: "1 when the last sync pass failed as a whole (401, 403, listing failure), else 0." },
    MetricDef { name: RATELIMIT_LIMIT, kind: Kind::Gauge, unit: Unit::Count, labels: &[],
        help: "Requests allowed per rolling hour, summed over credentials." },
    MetricDef { name: RATELIMIT_REMAINING, kind: Kind::Gauge, unit: Unit::Count, labels: &[],
        help: "Estimated requests left in the rolling hour (limit minus used), summed over credentials." },
    MetricDef { name: RATELIMIT_WAIT, kind: Kind::Gauge, unit: Unit::Seconds, labels: &[],
        help: "Seconds until the longest rate-limit pause in force ends (after a 429: Retry-After, capped at one hour, or backoff); 0 when no credential is paused." },
    MetricDef { name: WRITER_QUEUE_DEPTH, kind: Kind::Gauge, unit: Unit::Count, labels: &[],
        help: "Pages handed to the writer and not yet acknowledged." },
    MetricDef { name: BUILD_INFO, kind: Kind::Gauge, unit: Unit::Count, labels: &["version"],
        help: "Always 1; the label carries the bbcrawl version." },
    MetricDef { name: SHARD_INFO, kind: Kind::Gauge, unit: Unit::Count, labels: &["shard", "shards"],
        help: "Always 1; the labels say which shard (from 0) of how many this instance crawls (shard = \"I/N\"); 0 of 1 when no shard is configured." },
    MetricDef { name: REPOS_SKIPPED, kind: Kind::Counter, unit: Unit::Count, labels: &[],
        help: "Repositories a pass did not ask for commits: unchanged in the listing and no audit due (or an audit deferred for budget)." },
    MetricDef { name: AUDITS, kind: Kind::Counter, unit: Unit::Count, labels: &[],
        help: "Repositories checked because their periodic audit was due." },
    MetricDef { name: AUDIT_FOUND, kind: Kind::Counter, unit: Unit::Count, labels: &[],
        help: "Audits that found a change the listing's updated_on had not announced." },
    MetricDef { name: BACKFILL_REPOS, kind: Kind::Gauge, unit: Unit::Count, labels: &[],
        help: "Repositories whose first crawl is not finished." },
    MetricDef { name: HTTP_AUTH_FAILURES, kind: Kind::Counter, unit: Unit::Count, labels: &["reason"],
        help: "Requests to the daemon's endpoint refused by basic auth: missing (no credentials), wrong (unknown user or wrong password), overloaded (too many checks waiting)." },
    MetricDef { name: TLS_HANDSHAKE_FAILURES, kind: Kind::Counter, unit: Unit::Count, labels: &[],
        help: "Connections to the daemon's TLS endpoint whose handshake failed or timed out (plain HTTP, an untrusted or missing client certificate, a scanner)." },
    MetricDef { name: BACKFILL_ETA, kind: Kind::Gauge, unit: Unit::Seconds, labels: &[],
        help: "Rough time to finish outstanding backfill at the current budget (each unfinished walk is assumed to need as many pages again as it has fetched)." },
    MetricDef { name: HOOK_DELIVERIES, kind: Kind::Counter, unit: Unit::Count, labels: &["outcome"],
        help: "Webhook deliveries received on hooks_listen: accepted (a default-branch push to fetch), ignored (another branch, a tag, a deletion, another event or repository), duplicate (seen before or already stored), or refused: unsigned, bad_signature (401), too_large (413), unknown_workspace (404), malformed (400)." },
    MetricDef { name: HOOK_FETCHES, kind: Kind::Counter, unit: Unit::Count, labels: &["result"],
        help: "Walks of a repository's default branch that webhooks triggered, by result (ok, failed: the next pass retries)." },
    MetricDef { name: HOOK_PUSH_TO_STORED, kind: Kind::Histogram, unit: Unit::Seconds, labels: &[],
        help: "Time from a webhook delivery's arrival to its commits stored and flushed (queryable)." },
];

/// Why the recorder could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// A recorder is already installed, or a bucket list is invalid.
    #[error("cannot install the metrics recorder: {0}")]
    Install(#[from] metrics_exporter_prometheus::BuildError),
}

/// The Prometheus builder with bbcrawl's histogram buckets.
pub fn builder() -> Result<PrometheusBuilder, TelemetryError> {
    Ok(PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(HTTP_REQUEST_DURATION.into()), &HTTP_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full(STORE_WRITE_DURATION.into()),
            &STORE_WRITE_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full(HOOK_PUSH_TO_STORED.into()),
            &crate::hooks::LATENCY_BUCKETS,
        )?)
}

/// Installs the global recorder (no HTTP listener of its own: the daemon
/// serves `/metrics`), describes every metric and registers the ones whose
/// label values are known, at zero, so dashboards see them from the start.
/// Call [`PrometheusHandle::run_upkeep`] periodically.
pub fn install() -> Result<PrometheusHandle, TelemetryError> {
    let handle = builder()?.install_recorder()?;
    describe_and_register();
    Ok(handle)
}

/// Describes every metric of [`METRICS`] and registers the series whose
/// label values are all known in advance. Goes to the current recorder.
pub fn describe_and_register() {
    for m in METRICS {
        match m.kind {
            Kind::Counter => describe_counter!(m.name, m.unit, m.help),
            Kind::Gauge => describe_gauge!(m.name, m.unit, m.help),
            Kind::Histogram => describe_histogram!(m.name, m.unit, m.help),
        }
    }
    for name in [
        RATE_LIMITED,
        BACKOFF_SECONDS,
        PAGES_FETCHED,
        COMMITS_FETCHED,
        COMMITS_STORED,
        REPOS_SKIPPED,
        AUDITS,
        AUDIT_FOUND,
    ] {
        metrics::counter!(name).absolute(0);
    }
    for reason in RETRY_REASONS {
        metrics::counter!(RETRIES, "reason" => reason).absolute(0);
    }
    for reason in AUTH_FAILURE_REASONS {
        metrics::counter!(HTTP_AUTH_FAILURES, "reason" => reason).absolute(0);
    }
    metrics::counter!(TLS_HANDSHAKE_FAILURES).absolute(0);
    for outcome in crate::hooks::OUTCOMES {
        metrics::counter!(HOOK_DELIVERIES, "outcome" => outcome).absolute(0);
    }
    for result in crate::hooks::FETCH_RESULTS {
        metrics::counter!(HOOK_FETCHES, "result" => result).absolute(0);
    }
    for result in PASS_RESULTS {
        metrics::counter!(SYNC_PASSES, "result" => result).absolute(0);
    }
    // The values of `state` on [`REPOS`]: the repository statuses.
    for state in crate::record::RepoStatus::ALL {
        metrics::gauge!(REPOS, "state" => state.as_str()).set(0.0);
    }
    // (`STORE_FREE` is set before the first pass, within milliseconds.)
    for name in [
        STORE_COMMITS,
        STORE_SIZE,
        STORE_FREE,
        SYNC_DURATION,
        LAST_SYNC_SUCCESS,
        LAST_SYNC_FAILED,
    ] {
        metrics::gauge!(name).set(0.0);
    }
    for name in [
        RATELIMIT_LIMIT,
        RATELIMIT_REMAINING,
        RATELIMIT_WAIT,
        WRITER_QUEUE_DEPTH,
        BACKFILL_REPOS,
        BACKFILL_ETA,
    ] {
        metrics::gauge!(name).set(0.0);
    }
    // Histograms appear with their first sample; registering them empty
    // would render no buckets anyway.
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// Sets [`SHARD_INFO`] for this instance's shard: `shard="0",shards="1"`
/// without one (one shard of one crawls everything), so every instance has
/// the series and `count by (shards) (bbcrawl_shard_info)` can tell when a
/// shard is missing. Call once, after [`install`].
pub fn shard_info(shard: Option<crate::shard::Shard>) {
    let (index, count) = shard.map_or((0, 1), |s| (s.index(), s.count()));
    metrics::gauge!(SHARD_INFO, "shard" => index.to_string(), "shards" => count.to_string())
        .set(1.0);
}

/// The `endpoint` label of a Bitbucket URL path: `commits` for a commits
/// listing, `repositories` for everything else bbcrawl calls (listings).
pub fn endpoint_of(path: &str) -> &'static str {
    // `…/repositories/{workspace}/{slug}/commits/…`: looking at the segment
    // position keeps a workspace or slug named "commits" a listing.
    let segs: Vec<&str> = path.split('/').collect();
    let commits = segs
        .iter()
        .position(|s| *s == "repositories")
        .and_then(|i| segs.get(i + 3))
        .is_some_and(|s| *s == "commits");
    if commits {
        "commits"
    } else {
        "repositories"
    }
}

/// Nanoseconds of backoff so far, process-wide: the source of
/// [`BACKOFF_SECONDS`].
static BACKOFF_NANOS: AtomicU64 = AtomicU64::new(0);

/// Adds time spent waiting before a retry to [`BACKOFF_SECONDS`].
///
/// `metrics` counters hold whole numbers, so the exact total is kept here
/// and the counter shows its whole seconds: sub-second waits add up
/// instead of being lost. `absolute` keeps the maximum, so concurrent
/// callers cannot make the counter go backwards.
pub fn backoff(waited: Duration) {
    let nanos = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
    let total = BACKOFF_NANOS
        .fetch_add(nanos, Ordering::Relaxed)
        .saturating_add(nanos);
    metrics::counter!(BACKOFF_SECONDS).absolute(total / 1_000_000_000);
}

/// Records one HTTP attempt: its status (`None` = no answer) and duration.
pub fn http_attempt(endpoint: &'static str, status: Option<u16>, seconds: f64) {
    let code = match status {
        Some(s) => status_label(s),
        None => "error".to_owned(),
    };
    metrics::counter!(HTTP_REQUESTS, "endpoint" => endpoint, "code" => code).increment(1);
    metrics::histogram!(HTTP_REQUEST_DURATION, "endpoint" => endpoint).record(seconds);
}

/// A status code as a label value. Bounded: anything outside 100..=599
/// (a hostile server cannot invent values) is `error`.
fn status_label(status: u16) -> String {
    match status {
        100..=599 => status.to_string(),
        _ => "error".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn every_registered_metric_is_described_with_its_type() {
        let recorder = builder().unwrap().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe_and_register();
            shard_info(None);
            http_attempt("commits", Some(200), 0.01);
            http_attempt("repositories", None, 0.01);
            metrics::histogram!(STORE_WRITE_DURATION).record(0.001);
            metrics::histogram!(HOOK_PUSH_TO_STORED).record(0.4);
        });
        let text = handle.render();
        let help: BTreeSet<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# HELP "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        let types: BTreeSet<(&str, &str)> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_once(' '))
            .collect();
        let names: BTreeSet<&str> = METRICS.iter().map(|m| m.name).collect();
        assert_eq!(help, names, "HELP lines vs the metric list:\n{text}");
        for m in METRICS {
            let kind = match m.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            };
            assert!(types.contains(&(m.name, kind)), "{} {kind}\n{text}", m.name);
            assert_eq!(
                m.kind == Kind::Counter,
                m.name.ends_with("_total"),
                "{}",
                m.name
            );
        }
        // Every sample belongs to a described family.
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| names.contains(f)))
                .unwrap_or(name);
            assert!(names.contains(family), "undescribed sample {line}");
        }
        assert!(
            text.contains(r#"bbcrawl_http_requests_total{endpoint="commits",code="200"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"code="error""#), "{text}");
        assert!(
            text.contains(r#"bbcrawl_shard_info{shard="0",shards="1"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn shard_info_names_the_configured_shard() {
        let recorder = builder().unwrap().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            shard_info(Some(crate::shard::Shard::new(2, 4).unwrap()));
        });
        let text = handle.render();
        let samples: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .collect();
        assert_eq!(
            samples,
            [r#"bbcrawl_shard_info{shard="2",shards="4"} 1"#],
            "{text}"
        );
    }

    #[test]
    fn status_labels_are_three_digits_or_error() {
        assert_eq!(status_label(200), "200");
        assert_eq!(status_label(429), "429");
        assert_eq!(status_label(599), "599");
        assert_eq!(status_label(100), "100");
        assert_eq!(status_label(600), "error");
        assert_eq!(status_label(42), "error");
    }

    #[test]
    fn endpoints_are_classified_by_path() {
        assert_eq!(endpoint_of("/2.0/repositories/acme"), "repositories");
        assert_eq!(
            endpoint_of("/2.0/repositories/acme/web/commits/main"),
            "commits"
        );
        assert_eq!(endpoint_of("/2.0/repositories/commits"), "repositories");
        assert_eq!(
            endpoint_of("/2.0/repositories/acme/commits/commits/x"),
            "commits"
        );
    }
}
