//! Defects found by trying bbcrawl as a hostile server, a crash and a
//! careless user would (issue 11), each pinned through the real binary:
//! pushes during an interrupted first crawl, `next` cycles, endless
//! `Retry-After`, silent retries, stale daemon address files, exports over
//! special files, and read commands on directories that are not stores.

use std::path::Path;
use std::time::{Duration, Instant};

use bbcrawl::simulator::{RepoSpec, Simulator};

use crate::util::*;

/// Commits requests the simulator has answered for `ws/slug` so far.
fn commits_requests(sim: &Simulator, slug: &str) -> usize {
    let path = format!("/2.0/repositories/{WS}/{slug}/commits/");
    sim.requests()
        .iter()
        .filter(|r| r.path.starts_with(&path) && r.status == 200)
        .count()
}

/// Waits until the simulator has answered `n` commits pages of `slug`.
async fn wait_for_pages(sim: &Simulator, slug: &str, n: usize, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while commits_requests(sim, slug) < n {
        assert!(
            Instant::now() < deadline,
            "{slug}: {} of {n} pages served after 30 s\n{}",
            commits_requests(sim, slug),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// How a run is stopped in the middle of a first crawl.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// `kill -9` of `bbcrawl sync`.
    KillSync,
    /// SIGTERM to `bbcrawl sync`: it stops, flushes and exits 143.
    TermSync,
    /// SIGTERM to `bbcrawl run`: it stops, flushes and exits 0.
    TermRun,
}

fn signal(child: &tokio::process::Child, sig: &str) {
    let pid = child.id().expect("child still running").to_string();
    let ok = std::process::Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap();
    assert!(ok.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_pushed_while_a_first_crawl_was_interrupted_are_fetched_by_the_next_pass() {
    // Moments (pages of `big` served before the stop) from a fixed seed.
    let cases = [
        (Stop::KillSync, 2),
        (Stop::KillSync, 7),
        (Stop::KillSync, 13),
        (Stop::TermSync, 3),
        (Stop::TermSync, 11),
        (Stop::TermRun, 5),
    ];
    for (stop, pages) in cases {
        let sim = world(0);
        sim.add_repo(WS, RepoSpec::new("big", 2_500));
        sim.add_repo(WS, RepoSpec::new("small", 140));
        sim.set_latency(Duration::from_millis(3));
        let server = serve(&sim).await;
        let api = server.api_url();
        let (dir, store) = fresh_store();
        let log = dir.path().join("bbcrawl.log");
        let mut env = sync_env(&api, &store);
        let mut child = match stop {
            Stop::KillSync | Stop::TermSync => spawn_sync(&env, &log),
            Stop::TermRun => {
                env.push(("BBCRAWL_LISTEN".into(), "127.0.0.1:0".into()));
                spawn_bbcrawl(&["run"], &env, &log)
            }
        };
        wait_for_pages(&sim, "big", pages, &log).await;
        match stop {
            Stop::KillSync => child.kill().await.unwrap(),
            Stop::TermSync | Stop::TermRun => signal(&child, "-TERM"),
        }
        let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
            .await
            .expect("no exit within 15 s of the signal")
            .unwrap();
        let logs = std::fs::read_to_string(&log).unwrap_or_default();
        match stop {
            Stop::KillSync => {}
            Stop::TermSync => assert_eq!(status.code(), Some(143), "{stop:?}: {logs}"),
            Stop::TermRun => assert_eq!(status.code(), Some(0), "{stop:?}: {logs}"),
        }
        let big = stored_repo(&store, "big");
        assert!(
            big.head.is_none() && big.walk.as_ref().is_some_and(|w| w.pages > 0),
            "{stop:?} after {pages} pages: big is not mid-walk: {big:?}"
        );

        sim.push(WS, "big", 5);
        sim.push(WS, "small", 2);
        let out = sync(&store, &api, &[], &[]).await;
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}{}",
            stdout(&out),
            stderr(&out)
        );
        // Exactly one more pass: everything, the pushed commits included.
        assert_store_is_truth(&store, &sim);
        eprintln!(
            "{stop:?} after {pages} pages of big, 5 + 2 pushed: one pass made the store exact ({})",
            stdout(&out).trim()
        );
        // And the gate now has them as seen: the next pass skips both.
        let out = sync(&store, &api, &[], RARE_AUDITS).await;
        assert!(
            stdout(&out).contains("2 skipped unchanged"),
            "{}",
            stdout(&out)
        );
        assert_store_is_truth(&store, &sim);
    }
}
