//! The store on its own: idempotent page writes, reachability marking,
//! schema versions, locked and damaged stores.

use bbcrawl::record::RepoState;
use bbcrawl::record::{Author, CommitRecord};
use bbcrawl::store::{Store, StoreError};
use chrono::{DateTime, FixedOffset, TimeZone, Utc};

fn commit(hash: &str, parents: &[&str], date: &str) -> CommitRecord {
    CommitRecord {
        workspace: "acme".into(),
        repo: "svc".into(),
        repo_uuid: "{r1}".into(),
        branch: "main".into(),
        hash: format!("{hash:0<40}"),
        date: DateTime::<FixedOffset>::parse_from_rfc3339(date).unwrap(),
        author: Author {
            raw: Some("Jane <jane@acme.io>".into()),
            name: Some("Jane".into()),
            email: Some("jane@acme.io".into()),
            uuid: None,
            account_id: None,
            display_name: None,
        },
        committer: None,
        message: "m".into(),
        parents: parents.iter().map(|p| format!("{p:0<40}")).collect(),
        reachable: true,
    }
}

fn repo() -> RepoState {
    RepoState::new(
        "acme",
        "{r1}",
        "svc",
        "acme/svc",
        Utc.timestamp_opt(0, 0).unwrap(),
    )
}

#[test]
fn page_writes_are_idempotent_and_count_only_new_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let page = vec![
        commit("b", &["a"], "2024-01-02T00:00:00+00:00"),
        commit("a", &[], "2024-01-01T00:00:00+05:30"),
    ];
    let out = store.apply_page(&repo(), &page).unwrap();
    assert_eq!(out.new_commits, 2);
    let again = store.apply_page(&out.repo, &page).unwrap();
    assert_eq!(again.new_commits, 0);
    assert_eq!(again.repo.commits_stored, 2);
    assert_eq!(store.repo_commits("acme", "{r1}").count(), 2);
    let a = store
        .commit("acme", "{r1}", &format!("{:0<40}", "a"))
        .unwrap()
        .unwrap();
    assert_eq!(
        a.date.to_rfc3339(),
        "2024-01-01T00:00:00+05:30",
        "offset kept"
    );
    assert_eq!(store.repo("acme", "{r1}").unwrap().unwrap(), again.repo);
}

#[test]
fn commits_a_rewrite_orphaned_are_marked_unreachable_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    // a <- b <- c (old head); force push: a <- d (new head)
    let out = store
        .apply_page(
            &repo(),
            &[
                commit("c", &["b"], "2024-01-03T00:00:00Z"),
                commit("b", &["a"], "2024-01-02T00:00:00Z"),
                commit("a", &[], "2024-01-01T00:00:00Z"),
            ],
        )
        .unwrap();
    let out = store
        .apply_page(&out.repo, &[commit("d", &["a"], "2024-01-04T00:00:00Z")])
        .unwrap();
    let at = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
    let (saved, orphaned) = store
        .mark_reachability(&out.repo, &format!("{:0<40}", "d"), at)
        .unwrap();
    assert_eq!(orphaned, 2);
    assert_eq!(saved.commits_unreachable, 2);
    assert_eq!(saved.commits_stored, 4);
    let c = store
        .commit("acme", "{r1}", &format!("{:0<40}", "c"))
        .unwrap()
        .unwrap();
    assert!(!c.reachable);
    assert_eq!(c.unreachable_since, Some(at));
    assert!(
        store
            .commit("acme", "{r1}", &format!("{:0<40}", "a"))
            .unwrap()
            .unwrap()
            .reachable
    );
    // Re-marking is idempotent.
    let (_, again) = store
        .mark_reachability(&saved, &format!("{:0<40}", "d"), at)
        .unwrap();
    assert_eq!(again, 0);
}

#[test]
fn a_second_opener_gets_a_locked_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Store::open(dir.path()).unwrap();
    match Store::open(dir.path()) {
        Err(StoreError::Locked { .. }) => {}
        other => panic!("expected Locked, got {other:?}"),
    }
}

#[test]
fn a_store_from_a_newer_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = bbcrawl::store::sled_config(dir.path()).open().unwrap();
        db.insert(b"mschema", &99u32.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    // sled lets go of its file lock a few milliseconds after the last
    // handle is dropped: retry a `Locked` briefly, as `open_store` does.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let opened = loop {
        match Store::open(dir.path()) {
            Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => break other,
        }
    };
    match opened {
        Err(e @ StoreError::NewerSchema { found: 99, .. }) => {
            assert!(e.to_string().contains("upgrade bbcrawl"), "{e}");
        }
        other => panic!("expected NewerSchema, got {other:?}"),
    }
}

#[test]
fn a_damaged_store_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("conf"), b"\xff\xfe garbage").unwrap();
    std::fs::write(dir.path().join("db"), vec![0xAB; 4096]).unwrap();
    let result = std::panic::catch_unwind(|| Store::open(dir.path()).map(|_| ()));
    match result {
        Ok(Err(_)) => {}
        Ok(Ok(())) => panic!("garbage opened as a store"),
        Err(_) => panic!("opening a damaged store panicked"),
    }
}

/// A repository record saved from a copy older than the store's (the
/// crawler saw a page's write fail although the page was stored — its
/// flush failed on a full disk — and then saved the repository's status)
/// keeps the store's commit counts: they are kept by the writes of commits
/// only. (Found by the issue-14 soak: counts 4 below the records.)
#[test]
fn saving_a_stale_repository_record_keeps_the_store_s_counts() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let stale = repo();
    let page = vec![
        commit("b", &["a"], "2024-01-02T00:00:00+00:00"),
        commit("a", &[], "2024-01-01T00:00:00+00:00"),
    ];
    let out = store.apply_page(&stale, &page).unwrap();
    assert_eq!(out.repo.commits_stored, 2);
    let mut failed = out.repo.clone();
    failed.commits_stored = 0;
    failed.status = bbcrawl::record::RepoStatus::Failed;
    let saved = store.put_repo(&failed).unwrap();
    assert_eq!(saved.commits_stored, 2);
    let back = store.repo("acme", "{r1}").unwrap().unwrap();
    assert_eq!(back.status, bbcrawl::record::RepoStatus::Failed);
    assert_eq!(back.commits_stored, 2);
    assert!(store.check().unwrap().healthy());
}
