//! How `sync` shows what it is doing: a live progress line on a terminal
//! (repositories done / total, commits stored, requests used and budget,
//! rate, time to finish), one log line per repository otherwise, nothing
//! with `-q`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::actors::{PassEvent, PassObserver};
use crate::bitbucket::BitbucketClient;
use crate::store::RepoStatus;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// A live bar on stderr (a terminal).
    Bar,
    /// One log line per repository (not a terminal).
    Lines,
    /// Nothing (`-q`).
    Silent,
}

/// The `sync` observer.
pub struct SyncProgress {
    mode: ProgressMode,
    bar: Option<ProgressBar>,
    client: BitbucketClient,
    started: Instant,
    total: AtomicU64,
    done: AtomicU64,
    commits: AtomicU64,
    last_draw: Mutex<Instant>,
}

impl SyncProgress {
    /// An observer drawing with `mode`.
    pub fn new(mode: ProgressMode, client: BitbucketClient) -> SyncProgress {
        let bar = (mode == ProgressMode::Bar).then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{bar:30}] {pos}/{len} repositories  {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        SyncProgress {
            mode,
            bar,
            client,
            started: Instant::now(),
            total: AtomicU64::new(0),
            done: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            last_draw: Mutex::new(Instant::now() - Duration::from_secs(1)),
        }
    }

    /// The status text: commits, requests and budget, rate, time left.
    pub fn status(&self) -> String {
        let elapsed = self.started.elapsed().as_secs_f64().max(0.001);
        let commits = self.commits.load(Ordering::Relaxed);
        let stats = self.client.stats();
        let (used, limit) = self
            .client
            .budgets()
            .iter()
            .map(|b| b.snapshot())
            .fold((0usize, 0u64), |(u, l), s| {
                (u + s.used_in_window, l + u64::from(s.limit))
            });
        let done = self.done.load(Ordering::Relaxed);
        let total = self.total.load(Ordering::Relaxed);
        let eta = if done > 0 && total > done {
            let left = elapsed / done as f64 * (total - done) as f64;
            format!(", ~{:.0} s left", left)
        } else {
            String::new()
        };
        format!(
            "{commits} new commits, {} requests ({used}/{limit} of the hourly budget), {:.0} commits/s{eta}{}",
            stats.requests,
            commits as f64 / elapsed,
            if stats.rate_limited > 0 {
                format!(", {} rate limited", stats.rate_limited)
            } else {
                String::new()
            }
        )
    }

    /// Clears the bar before the summary is printed.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    fn redraw(&self, force: bool) {
        let Some(bar) = &self.bar else { return };
        let mut last = self.last_draw.lock().unwrap_or_else(|e| e.into_inner());
        if force || last.elapsed() >= Duration::from_millis(100) {
            *last = Instant::now();
            bar.set_message(self.status());
        }
    }
}

impl PassObserver for SyncProgress {
    fn event(&self, event: PassEvent<'_>) {
        match event {
            PassEvent::Listed { workspace, repos } => {
                let total = self.total.fetch_add(repos as u64, Ordering::Relaxed) + repos as u64;
                if let Some(bar) = &self.bar {
                    bar.set_length(total);
                }
                if self.mode == ProgressMode::Lines {
                    tracing::info!(workspace, repositories = repos, "listed");
                }
                self.redraw(true);
            }
            PassEvent::PageStored { new_commits, .. } => {
                self.commits.fetch_add(new_commits, Ordering::Relaxed);
                self.redraw(false);
            }
            PassEvent::RepoFinished(o) => {
                self.done.fetch_add(1, Ordering::Relaxed);
                if let Some(bar) = &self.bar {
                    bar.inc(1);
                    if o.status == RepoStatus::Failed {
                        bar.println(format!(
                            "failed: {}: {}",
                            o.full_name,
                            o.error.as_deref().unwrap_or("")
                        ));
                    }
                }
                if self.mode == ProgressMode::Lines {
                    if o.status == RepoStatus::Failed {
                        tracing::warn!(repo = %o.full_name, error = o.error.as_deref().unwrap_or(""), "failed");
                    } else {
                        tracing::info!(
                            repo = %o.full_name,
                            status = o.status.as_str(),
                            new_commits = o.new_commits,
                            pages = o.pages,
                            orphaned = o.orphaned,
                            events = o.events.len(),
                            "done"
                        );
                    }
                }
                self.redraw(true);
            }
        }
    }
}
