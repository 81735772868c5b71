//! The per-credential budget against the simulator, on a paused tokio
//! clock: the shared 429 gate, the single probe, `Retry-After`, pacing.
//! The simulator stamps requests with tokio's clock, so the timings below
//! are virtual and exact.

use std::time::{Duration, SystemTime};

use bbcrawl::bitbucket::BitbucketClient;
use bbcrawl::simulator::{Fault, RepoSpec, RequestRecord, RetryAfter, SimServer, Simulator};
use tokio::time::Instant;

use crate::util::*;

const LATENCY: Duration = Duration::from_secs(1);

/// Four repositories walked concurrently by four callers sharing one
/// credential; every answer takes one (virtual) second.
async fn four_walkers(sim: &Simulator, server: &SimServer) -> Vec<Vec<String>> {
    walkers(sim, server, 4).await
}

/// The same with at most `in_flight` requests under way.
async fn walkers(sim: &Simulator, server: &SimServer, in_flight: usize) -> Vec<Vec<String>> {
    let mut opts = options(server, vec![access_token()]);
    opts.max_in_flight = in_flight;
    opts.page_size = 10;
    opts.request_timeout = Duration::from_secs(3600);
    let client = BitbucketClient::new(opts).unwrap();
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let c = client.clone();
            tokio::spawn(async move {
                let commits = c
                    .commits(WS, &format!("r{i}"), "main", &[])
                    .unwrap()
                    .collect_all()
                    .await
                    .unwrap();
                commits.into_iter().map(|c| c.hash).collect::<Vec<_>>()
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    let _ = sim;
    out
}

fn latency_world() -> Simulator {
    let sim = world(0);
    for i in 0..4 {
        sim.add_repo(WS, RepoSpec::new(&format!("r{i}"), 80));
    }
    sim.set_latency(LATENCY);
    sim
}

/// Index of the first 429 in the log.
fn first_429(log: &[RequestRecord]) -> usize {
    log.iter()
        .position(|r| r.status == 429)
        .expect("no 429 was served")
}

#[tokio::test(start_paused = true)]
async fn a_429_pauses_every_caller_until_a_single_probe_succeeds() {
    let sim = latency_world();
    let server = serve(&sim).await;
    // Let a few pages through, then answer one request with 429.
    sim.inject_after(8, Some("/commits/"), vec![Fault::RateLimited(None)]);
    let got = four_walkers(&sim, &server).await;
    for (i, hashes) in got.iter().enumerate() {
        let want = branch_hashes(&sim, WS, &format!("r{i}"));
        assert_eq!(hashes, &want, "walk r{i} is exact after the pause");
    }

    let log = sim.requests();
    let k = first_429(&log);
    // The gate closes when the 429 answer arrives (arrival + latency).
    let closed = log[k].at + LATENCY;
    // Requests stamped exactly at `closed` left before the gate closed, in
    // the same virtual instant; everything later waited for the gate.
    let after: Vec<&RequestRecord> = log.iter().filter(|r| r.at > closed).collect();
    let probe = after[0];
    let pause = probe.at - closed;
    // 60 s initial backoff with ±20 % jitter.
    assert!(pause >= Duration::from_secs(47), "paused only {pause:?}");
    assert!(pause <= Duration::from_secs(73), "paused {pause:?}");
    // While the probe is out, nobody else sends.
    let during_probe = after.iter().filter(|r| r.at < probe.at + LATENCY).count();
    assert_eq!(during_probe, 1, "requests sent alongside the probe");
    // And afterwards the others resume.
    assert!(after.len() > 4);
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_closes_the_gate_again_for_longer() {
    let sim = latency_world();
    let server = serve(&sim).await;
    sim.inject_after(
        4,
        Some("/commits/"),
        vec![Fault::RateLimited(None), Fault::RateLimited(None)],
    );
    let start = Instant::now();
    // One request at a time, so the request after the first 429 is the probe.
    walkers(&sim, &server, 1).await;
    let log = sim.requests();
    let k = first_429(&log);
    let probe1 = log[k + 1..]
        .iter()
        .find(|r| r.at > log[k].at + LATENCY)
        .unwrap();
    assert_eq!(probe1.status, 429, "the probe was the second 429");
    let gap2 = log.iter().find(|r| r.at > probe1.at + LATENCY).unwrap().at - (probe1.at + LATENCY);
    assert!(
        gap2 >= Duration::from_secs(95),
        "second pause {gap2:?} should double"
    );
    assert!(Instant::now() - start < Duration::from_secs(3600));
}

async fn pause_for_retry_after(retry_after: RetryAfter) -> Duration {
    let sim = latency_world();
    let server = serve(&sim).await;
    sim.inject_after(
        2,
        Some("/commits/"),
        vec![Fault::RateLimited(Some(retry_after))],
    );
    four_walkers(&sim, &server).await;
    let log = sim.requests();
    let k = first_429(&log);
    let closed = log[k].at + LATENCY;
    log.iter().find(|r| r.at > closed).unwrap().at - closed
}

#[tokio::test(start_paused = true)]
async fn retry_after_in_seconds_is_honoured() {
    let pause = pause_for_retry_after(RetryAfter::Seconds(120)).await;
    assert!(
        pause >= Duration::from_secs(120) && pause < Duration::from_secs(122),
        "{pause:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_as_an_http_date_is_honoured() {
    let at = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(300));
    let pause = pause_for_retry_after(RetryAfter::HttpDate(at)).await;
    // HTTP dates have one-second resolution.
    assert!(
        pause >= Duration::from_secs(298) && pause <= Duration::from_secs(301),
        "{pause:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn requests_are_paced_within_requests_per_hour() {
    let sim = world(0);
    sim.add_repo(WS, RepoSpec::new("big", 600));
    let server = serve(&sim).await;
    let mut opts = options(&server, vec![access_token()]);
    opts.requests_per_hour = 40;
    opts.page_size = 10;
    opts.request_timeout = Duration::from_secs(7200);
    let c = BitbucketClient::new(opts).unwrap();
    let got = c
        .commits(WS, "big", "main", &[])
        .unwrap()
        .collect_all()
        .await
        .unwrap();
    assert_eq!(got.len(), 600);
    let times: Vec<Instant> = sim.requests().iter().map(|r| r.at).collect();
    assert_eq!(times.len(), 60);
    for (i, t) in times.iter().enumerate() {
        let in_hour = times[i..]
            .iter()
            .filter(|u| **u < *t + Duration::from_secs(3600))
            .count();
        assert!(
            in_hour <= 40,
            "{in_hour} requests in the hour from request {i}"
        );
    }
    // Paced, not bursted: the first ten are spread over minutes.
    assert!(
        times[9] - times[0] >= Duration::from_secs(5 * 60),
        "{:?}",
        times[9] - times[0]
    );
}

#[tokio::test(start_paused = true)]
async fn x_ratelimit_limit_replaces_the_configured_budget() {
    // The simulator sends X-RateLimit-Limit: 100 to access tokens.
    let sim = world(100);
    // 150 pages: more than the hour allows, so not adopting it means 429s.
    sim.add_repo(WS, RepoSpec::new("big", 1500));
    let server = serve(&sim).await;
    let mut opts = options(&server, vec![access_token()]);
    opts.requests_per_hour = 5000;
    opts.page_size = 10;
    opts.request_timeout = Duration::from_secs(7200);
    let c = BitbucketClient::new(opts).unwrap();
    c.commits(WS, "big", "main", &[])
        .unwrap()
        .collect_all()
        .await
        .unwrap();
    assert_eq!(c.budgets()[0].snapshot().limit, 100);
    assert!(
        sim.requests().iter().all(|r| r.status != 429),
        "the adopted limit was exceeded"
    );
}

#[tokio::test(start_paused = true)]
async fn requests_are_spread_across_credentials() {
    let sim = world(0);
    sim.add_repo(WS, RepoSpec::new("big", 400));
    let server = serve(&sim).await;
    let api = bbcrawl::config::Credential::ApiToken {
        email: EMAIL.into(),
        token: bbcrawl::config::Secret::new(API_TOKEN),
    };
    let mut opts = options(&server, vec![access_token(), api]);
    opts.page_size = 10;
    let c = BitbucketClient::new(opts).unwrap();
    c.commits(WS, "big", "main", &[])
        .unwrap()
        .collect_all()
        .await
        .unwrap();
    let log = sim.requests();
    let by_token = log
        .iter()
        .filter(|r| r.credential.as_deref() == Some(TOKEN))
        .count();
    let by_email = log
        .iter()
        .filter(|r| r.credential.as_deref() == Some(EMAIL))
        .count();
    assert_eq!(by_token + by_email, 40);
    assert!(by_token >= 15 && by_email >= 15, "{by_token} / {by_email}");
}
