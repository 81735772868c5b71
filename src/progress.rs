//! How `sync` shows what it is doing: a live progress line on a terminal
//! (repositories done / total, commits stored, requests used and budget,
//! rate, time to finish), one log line per repository otherwise, nothing
//! with `-q`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::actors::{PassEvent, PassObserver};
use crate::bitbucket::BitbucketClient;
use crate::human;
use crate::record::RepoStatus;

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

    /// An observer drawing with `mode`, shared; a live bar is also redrawn
    /// every second, so a wait (a 429 pause, a retry) shows while nothing
    /// else happens.
    pub fn start(mode: ProgressMode, client: BitbucketClient) -> Arc<SyncProgress> {
        let progress = Arc::new(SyncProgress::new(mode, client));
        if mode == ProgressMode::Bar {
            let weak = Arc::downgrade(&progress);
            // A plain thread: the bar must move even while the runtime's
            // one thread waits on the crawl. It ends with the observer.
            std::thread::spawn(move || loop {
                std::thread::sleep(Duration::from_secs(1));
                match weak.upgrade() {
                    Some(p) if !p.bar.as_ref().is_some_and(ProgressBar::is_finished) => {
                        p.redraw(true)
                    }
                    _ => break,
                }
            });
        }
        progress
    }

    /// The status text: commits, requests and budget, rate, time left, and
    /// what the crawl waits for (a rate-limit pause, a retried request).
    pub fn status(&self) -> String {
        let elapsed = self.started.elapsed().as_secs_f64().max(0.001);
        let commits = self.commits.load(Ordering::Relaxed);
        let stats = self.client.stats();
        let budget = self.client.budget_totals();
        let (used, limit) = (budget.used, budget.limit);
        let mut waits = String::new();
        if let Some(resume) = budget.first_resume.filter(|_| budget.all_paused()) {
            waits.push_str(&format!(
                ", rate limited: resuming in {}",
                human::duration(resume)
            ));
        }
        if let Some(n) = self.client.retrying() {
            let message: String = n.message.chars().take(80).collect();
            let message = crate::human::printable(&message);
            waits.push_str(&format!(
                ", retrying {} (attempt {} of {} failed: {message})",
                n.subject, n.attempt, n.attempts
            ));
        }
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
            },
        ) + &waits
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
                            crate::human::printable(o.error.as_deref().unwrap_or(""))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bitbucket::budget::Outcome;
    use crate::bitbucket::{ClientOptions, RetryBackoff};
    use crate::config::{Credential, Secret};

    fn client(api: &str) -> BitbucketClient {
        let mut opts = ClientOptions::new(
            url::Url::parse(api).unwrap(),
            vec![Credential::AccessToken {
                token: Secret::new("t"),
            }],
        );
        opts.max_retries = 1;
        opts.retry_backoff = RetryBackoff {
            initial: Duration::from_millis(500),
            max: Duration::from_millis(500),
        };
        BitbucketClient::new(opts).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn the_progress_line_shows_a_rate_limit_pause_and_when_it_ends() {
        let c = client("https://api.bitbucket.org/2.0");
        let p = SyncProgress::new(ProgressMode::Silent, c.clone());
        assert!(!p.status().contains("rate limited"), "{}", p.status());
        let budget = &c.budgets()[0];
        let pause = budget
            .acquire()
            .await
            .finish(Outcome::RateLimited(Some(Duration::from_secs(3600))));
        assert_eq!(pause, Some(Duration::from_secs(3600)));
        assert!(
            p.status().ends_with(", rate limited: resuming in 1h00m"),
            "{}",
            p.status()
        );
        tokio::time::advance(Duration::from_secs(1800)).await;
        assert!(
            p.status().ends_with(", rate limited: resuming in 30m00s"),
            "{}",
            p.status()
        );
        tokio::time::advance(Duration::from_secs(1800)).await;
        assert!(!p.status().contains("resuming"), "{}", p.status());
    }

    #[tokio::test]
    async fn the_progress_line_shows_a_request_being_retried_until_it_ends() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = client(&format!("http://127.0.0.1:{port}/2.0"));
        let p = SyncProgress::new(ProgressMode::Silent, c.clone());
        let listing = c.repositories("acme").unwrap();
        let task = tokio::spawn(listing.collect_all());
        let deadline = Instant::now() + Duration::from_secs(4);
        while c.retrying().is_none() {
            assert!(Instant::now() < deadline, "no retry notice");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let status = p.status();
        assert!(
            status.contains(", retrying acme (attempt 1 of 2 failed: connection failed"),
            "{status}"
        );
        // The request gives up after its retry: the notice goes with it.
        assert!(task.await.unwrap().is_err());
        assert_eq!(c.retrying(), None);
        assert!(!p.status().contains("retrying"), "{}", p.status());
    }
}
