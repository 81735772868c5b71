//! The API client against the simulator: paging, origin checks, error
//! classification and retries.

use std::time::Duration;

use bbcrawl::bitbucket::{ApiError, BitbucketClient};
use bbcrawl::simulator::{Fault, RepoSpec};

use crate::util::*;

#[tokio::test]
async fn repository_pager_returns_every_repository_over_three_pages() {
    let sim = world(0);
    for i in 0..250 {
        sim.add_repo(WS, RepoSpec::new(&format!("repo-{i:03}"), 1));
    }
    let server = serve(&sim).await;
    let repos = client(&server)
        .repositories(WS)
        .unwrap()
        .collect_all()
        .await
        .unwrap();

    let got: Vec<String> = repos.iter().map(|r| r.uuid.clone()).collect();
    let want: Vec<String> = sim.repos(WS).into_iter().map(|r| r.uuid).collect();
    assert_eq!(got, want);
    assert_eq!(repos.len(), 250);
    let listing: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|r| r.path == "/2.0/repositories/acme")
        .collect();
    assert_eq!(
        listing.len(),
        3,
        "250 repositories at pagelen=100 are 3 pages"
    );
    let first = listing[0].query.clone().unwrap_or_default();
    assert!(first.contains("pagelen=100"), "{first}");
    assert!(first.contains("fields="), "{first}");
}

#[tokio::test]
async fn commit_pager_returns_the_default_branch_exactly_in_order() {
    let sim = world(0);
    let mut spec = RepoSpec::new("payments-api", 1000);
    spec.merges = true;
    sim.add_repo(WS, spec);
    let server = serve(&sim).await;
    let c = client(&server);

    let commits = c
        .commits(WS, "payments-api", "main", &[])
        .unwrap()
        .collect_all()
        .await
        .unwrap();
    let got: Vec<String> = commits.iter().map(|c| c.hash.clone()).collect();
    assert_eq!(got, branch_hashes(&sim, WS, "payments-api"));
    assert!(
        commits.iter().any(|c| c.parents.len() == 2),
        "merges present"
    );
    let truth = sim.branch_commits(WS, "payments-api");
    assert_eq!(
        commits[0].message.as_deref(),
        Some(truth[0].message.as_str())
    );
    assert_eq!(commits[0].date, truth[0].date);

    let pages: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/commits/"))
        .collect();
    assert_eq!(pages.len(), 10, "1,000 commits at pagelen=100");
    let q = pages[0].query.clone().unwrap_or_default();
    assert!(q.contains("pagelen=100") && q.contains("fields="), "{q}");

    // Only what was pushed after the head comes back with exclude=head.
    let head = got[0].clone();
    let pushed = sim.push(WS, "payments-api", 5);
    let new = c
        .commits(WS, "payments-api", "main", &[head])
        .unwrap()
        .collect_all()
        .await
        .unwrap();
    let new: Vec<String> = new.into_iter().map(|c| c.hash).collect();
    assert_eq!(new, pushed);
}

#[tokio::test]
async fn branch_names_with_slashes_are_sent_as_one_segment() {
    let sim = world(0);
    let mut spec = RepoSpec::new("web", 30);
    spec.mainbranch = Some("release/2024".into());
    sim.add_repo(WS, spec);
    let server = serve(&sim).await;
    let got = client(&server)
        .commits(WS, "web", "release/2024", &[])
        .unwrap()
        .collect_all()
        .await
        .unwrap();
    assert_eq!(got.len(), 30);
    assert!(sim
        .requests()
        .iter()
        .any(|r| r.path.ends_with("/commits/release%2F2024")));
}

#[tokio::test]
async fn next_link_to_another_origin_is_refused_and_nothing_is_sent_there() {
    let sim = world(0);
    sim.add_repo(WS, RepoSpec::new("svc", 250));
    let server = serve(&sim).await;
    let elsewhere = world(0);
    let other = serve(&elsewhere).await;
    let origin = format!("http://{}", other.local_addr());
    sim.inject(Some("/commits/"), vec![Fault::ForeignNext(origin)]);

    let mut pager = client(&server).commits(WS, "svc", "main", &[]).unwrap();
    let first = pager.next_page().await.unwrap().unwrap();
    assert_eq!(first.values.len(), 100);
    let err = pager.next_page().await.unwrap_err();
    assert!(matches!(err, ApiError::ForeignOrigin { .. }), "{err:?}");
    // A resumed walk with a foreign saved link is refused too.
    let saved = first.next.unwrap();
    assert!(matches!(
        client(&server).resume::<serde_json::Value>(&saved),
        Err(ApiError::ForeignOrigin { .. })
    ));
    assert_eq!(
        elsewhere.requests().len(),
        0,
        "the other origin saw a request"
    );
}

#[tokio::test]
async fn transient_faults_are_retried_and_the_result_is_still_exact() {
    let sim = world(0);
    sim.add_repo(WS, RepoSpec::new("svc", 500));
    let server = serve(&sim).await;
    let mut opts = options(&server, vec![access_token()]);
    opts.request_timeout = Duration::from_millis(700);
    let c = BitbucketClient::new(opts).unwrap();
    sim.inject(
        Some("/commits/"),
        vec![
            Fault::Status(500),
            Fault::Status(502),
            Fault::Status(503),
            Fault::Stall(Duration::from_secs(3)),
            Fault::Reset,
            Fault::Truncated,
            Fault::MalformedJson,
        ],
    );
    let got = c
        .commits(WS, "svc", "main", &[])
        .unwrap()
        .collect_all()
        .await
        .unwrap();
    let got: Vec<String> = got.into_iter().map(|c| c.hash).collect();
    assert_eq!(got, branch_hashes(&sim, WS, "svc"));
    let commit_requests = sim
        .requests()
        .iter()
        .filter(|r| r.path.contains("/commits/"))
        .count();
    assert_eq!(commit_requests, 5 + 7, "5 pages plus one retry per fault");
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let sim = world(0);
    sim.add_repo(WS, RepoSpec::new("svc", 10));
    let server = serve(&sim).await;
    let c = client(&server);
    for (status, check) in [
        (
            400u16,
            (|e: &ApiError| matches!(e, ApiError::Rejected { status: 400, .. }))
                as fn(&ApiError) -> bool,
        ),
        (401, |e| matches!(e, ApiError::InvalidCredentials { .. })),
        (403, |e| matches!(e, ApiError::InvalidPermissions { .. })),
        (404, |e| matches!(e, ApiError::NotFound { .. })),
    ] {
        sim.clear_requests();
        sim.inject(Some("/commits/"), vec![Fault::Status(status)]);
        let err = c
            .commits(WS, "svc", "main", &[])
            .unwrap()
            .collect_all()
            .await
            .unwrap_err();
        assert!(check(&err), "{status}: {err:?}");
        assert_eq!(sim.requests().len(), 1, "HTTP {status} was retried");
    }
}

#[tokio::test]
async fn retries_stop_after_max_retries() {
    let sim = world(0);
    sim.add_repo(WS, RepoSpec::new("svc", 10));
    let server = serve(&sim).await;
    let mut opts = options(&server, vec![access_token()]);
    opts.max_retries = 3;
    let c = BitbucketClient::new(opts).unwrap();
    sim.inject(Some("/commits/"), vec![Fault::Status(503); 10]);
    let err = c
        .commits(WS, "svc", "main", &[])
        .unwrap()
        .collect_all()
        .await
        .unwrap_err();
    assert!(
        matches!(err, ApiError::RetriesExhausted { attempts: 4, .. }),
        "{err:?}"
    );
    assert_eq!(sim.requests().len(), 4);
}

#[tokio::test]
async fn unknown_excluded_head_is_a_not_found_with_the_hash() {
    let sim = world(0);
    sim.add_repo(WS, RepoSpec::new("svc", 20));
    let server = serve(&sim).await;
    let head = branch_hashes(&sim, WS, "svc")[0].clone();
    sim.force_push(WS, "svc", 3, 2);
    let err = client(&server)
        .commits(WS, "svc", "main", std::slice::from_ref(&head))
        .unwrap()
        .collect_all()
        .await
        .unwrap_err();
    match err {
        ApiError::NotFound { shas, .. } => assert_eq!(shas, vec![head]),
        other => panic!("expected 404, got {other:?}"),
    }
}
