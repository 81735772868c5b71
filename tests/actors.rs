//! The actors through the library: isolation of a panicking repository,
//! and the bound on the writer's queue.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use bbcrawl::actors::{run_pass, PassEvent, PassObserver, PassOptions, PassSummary};
use bbcrawl::bitbucket::{BitbucketClient, ClientOptions};
use bbcrawl::demo::BackgroundSimulator;
use bbcrawl::record::RepoStatus;
use bbcrawl::simulator::{RepoSpec, Simulator};
use bbcrawl::store::Store;

use crate::util::*;

/// Panics while storing the first page of `victim`.
struct PanicsOn(&'static str);

impl PassObserver for PanicsOn {
    fn event(&self, event: PassEvent<'_>) {
        if let PassEvent::PageStored { full_name, .. } = event {
            if full_name.ends_with(self.0) {
                panic!("test: a bug while crawling {full_name}");
            }
        }
    }
}

fn pass(
    sim: Simulator,
    store: &std::path::Path,
    observer: Arc<dyn PassObserver>,
    concurrency: usize,
) -> (PassSummary, Arc<Store>) {
    let server = BackgroundSimulator::start(sim).unwrap();
    let mut opts = ClientOptions::new(
        url::Url::parse(server.api_url()).unwrap(),
        vec![access_token()],
    );
    opts.requests_per_hour = 1_000_000;
    let client = BitbucketClient::new(opts).unwrap();
    let store = Arc::new(Store::open(store).unwrap());
    let pass = PassOptions {
        workspaces: vec![WS.into()],
        concurrency,
        ..PassOptions::default()
    };
    let system = actix::System::new();
    let summary = system
        .block_on(run_pass(
            client,
            Arc::clone(&store),
            pass,
            observer,
            Arc::new(AtomicBool::new(false)),
        ))
        .unwrap();
    (summary, store)
}

#[test]
fn a_panic_in_one_repository_does_not_stop_the_others() {
    let sim = world(0);
    for slug in ["alpha", "bravo", "charlie", "delta"] {
        sim.add_repo(WS, RepoSpec::new(slug, 250));
    }
    let dir = tempfile::tempdir().unwrap();
    let (summary, store) = pass(sim.clone(), dir.path(), Arc::new(PanicsOn("bravo")), 2);
    assert_eq!(summary.repos, 4);
    assert_eq!(summary.failed, 1, "{summary:?}");
    assert_eq!(summary.ok, 3);
    assert!(
        summary.failures[0].contains("bravo"),
        "{:?}",
        summary.failures
    );
    for r in store.repos().unwrap() {
        if r.slug == "bravo" {
            continue;
        }
        assert_eq!(r.status, RepoStatus::Ok);
        assert_eq!(
            r.commits_stored as usize,
            sim.branch_commits(WS, &r.slug).len()
        );
    }
}

#[test]
fn the_writer_queue_never_holds_more_than_one_page_per_repository_actor() {
    let sim = world(0);
    for i in 0..12 {
        sim.add_repo(WS, RepoSpec::new(&format!("r{i}"), 600));
    }
    let dir = tempfile::tempdir().unwrap();
    let (summary, _) = pass(sim, dir.path(), Arc::new(bbcrawl::actors::Quiet), 3);
    assert_eq!(summary.ok, 12);
    assert!(summary.writer_queue_peak >= 1);
    assert!(
        summary.writer_queue_peak <= 3,
        "peak {} with 3 actors",
        summary.writer_queue_peak
    );
}
