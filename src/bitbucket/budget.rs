//! One request budget per credential, shared by every caller that uses the
//! credential.
//!
//! Bitbucket counts requests per credential over a rolling hour and answers
//! 429 past the limit; a 429 retried every few seconds only burns more of the
//! window. So the budget does three things:
//!
//! 1. **Paces** requests (a GCRA token bucket: a small burst, then one request
//!    every `3600 / limit` seconds) and enforces the rolling window exactly
//!    (never more than `limit` requests in any hour), adopting
//!    `X-RateLimit-Limit` when Bitbucket sends it and slowing down while it
//!    says `X-RateLimit-NearLimit: true`. While the limit is only the
//!    configured one (API tokens get no headers) the burst is at most 3 and the
//!    pace keeps 5 % spare, since nothing warns before the 429.
//! 2. Runs **one shared gate**: the first 429 closes it for every caller of
//!    the credential, for `Retry-After` or an exponential backoff with jitter.
//! 3. After the pause lets **one probe** request through; the others wait for
//!    its answer, then resume (or the gate closes again, for longer).
//!
//! All waiting uses `tokio::time`, so tests drive it with a paused clock.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use backoff::backoff::Backoff;
use backoff::{ExponentialBackoff, ExponentialBackoffBuilder};
use tokio::sync::Notify;
use tokio::time::Instant;

/// The rolling window Bitbucket counts requests over.
pub const WINDOW: Duration = Duration::from_secs(3600);

/// How the budget backs off after 429s that carry no `Retry-After`.
#[derive(Clone, Debug)]
pub struct RateLimitBackoff {
    /// First pause after a 429 (doubles with each consecutive 429).
    pub initial: Duration,
    /// Longest pause.
    pub max: Duration,
}

impl Default for RateLimitBackoff {
    fn default() -> Self {
        // The window rolls over an hour: seconds-long retries only burn it.
        RateLimitBackoff {
            initial: Duration::from_secs(30),
            max: Duration::from_secs(600),
        }
    }
}

/// A snapshot of a budget, for progress displays and metrics.
#[derive(Clone, Debug, PartialEq)]
pub struct BudgetSnapshot {
    /// The limit in force (configured or adopted from `X-RateLimit-Limit`).
    pub limit: u32,
    /// Requests sent within the last hour.
    pub used_in_window: usize,
    /// Whether the gate is closed after a 429.
    pub paused: bool,
    /// Number of 429 answers seen.
    pub rate_limited: u64,
    /// While the gate is closed after a 429: how long until it reopens
    /// (then one probe goes first). `None` when it is open.
    pub resume_in: Option<Duration>,
}

/// The per-credential budget. Cheap to share: wrap in an `Arc`.
#[derive(Debug)]
pub struct RateBudget {
    state: Mutex<State>,
    /// Woken when the gate opens or a probe finishes.
    gate_changed: Notify,
}

#[derive(Debug)]
struct State {
    limit: u32,
    near_limit: bool,
    /// Bitbucket confirmed the limit (`X-RateLimit-Limit`); until then it is
    /// the configured guess and nothing warns of the window filling up.
    confirmed: bool,
    /// GCRA "theoretical arrival time" of the next request.
    tat: Instant,
    /// Send times within the last hour, oldest first.
    sent: VecDeque<Instant>,
    /// When the gate reopens after a 429, if it is closed.
    paused_until: Option<Instant>,
    /// A probe is under way; everybody else waits for its answer.
    probing: bool,
    /// Bumped each time the gate closes; a 429 for a request issued before
    /// the current closure does not close it again.
    generation: u64,
    backoff: ExponentialBackoff,
    rate_limited: u64,
}

/// Leave to send one request, returned by [`RateBudget::acquire`]. Report the
/// answer with [`Permit::finish`]; dropping it unreported counts as "no
/// news" (a probe then hands its turn to the next caller).
#[derive(Debug)]
pub struct Permit {
    budget: Arc<RateBudget>,
    generation: u64,
    probe: bool,
    /// The send slot reserved for it in the rolling window.
    slot: Instant,
    finished: bool,
}

/// What became of a request, as far as the budget cares.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Any answer that was not a 429 (the credential is not rate limited).
    Answered,
    /// HTTP 429, with the `Retry-After` delay when Bitbucket sent one.
    RateLimited(Option<Duration>),
    /// No answer at all (timeout, reset): says nothing about the limit.
    NoAnswer,
    /// The request never reached Bitbucket (the connection could not be
    /// made): its slot is given back to the rolling window.
    NotSent,
}

impl RateBudget {
    /// A budget of `requests_per_hour` for one credential.
    pub fn new(requests_per_hour: u32, backoff: RateLimitBackoff) -> Arc<RateBudget> {
        let backoff = ExponentialBackoffBuilder::new()
            .with_initial_interval(backoff.initial)
            .with_max_interval(backoff.max)
            .with_multiplier(2.0)
            // Jitter so that several processes sharing a credential do not
            // probe in lockstep.
            .with_randomization_factor(0.2)
            .with_max_elapsed_time(None)
            .build();
        Arc::new(RateBudget {
            state: Mutex::new(State {
                limit: requests_per_hour.max(1),
                near_limit: false,
                confirmed: false,
                tat: Instant::now(),
                sent: VecDeque::new(),
                paused_until: None,
                probing: false,
                generation: 0,
                backoff,
                rate_limited: 0,
            }),
            gate_changed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state half
        // updated in a way that matters more than stopping: recover it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until this credential may send one more request: the gate is
    /// open (or this caller is the probe), and pacing and the rolling window
    /// allow it.
    pub async fn acquire(self: &Arc<Self>) -> Permit {
        loop {
            // Register interest before checking, so a wake-up between the
            // check and the wait is not lost.
            let notified = self.gate_changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.decide() {
                Decision::Send {
                    slot,
                    generation,
                    probe,
                } => {
                    // Made before sleeping: if this caller is cancelled,
                    // dropping the permit hands a probe turn on.
                    let permit = self.permit(generation, probe, slot);
                    tokio::time::sleep_until(slot).await;
                    if !probe && self.closed_since(generation) {
                        // The gate closed while this caller waited for its
                        // slot: wait for the gate like everybody else. The
                        // slot was not used: it does not count in the window.
                        permit.cancel();
                        continue;
                    }
                    return permit;
                }
                Decision::WaitUntil(until) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => {}
                        _ = notified => {}
                    }
                }
                Decision::WaitForProbe => notified.await,
            }
        }
    }

    /// Under the lock: send now (at a reserved slot), or wait.
    fn decide(&self) -> Decision {
        let mut st = self.lock();
        let now = Instant::now();
        match st.paused_until {
            Some(until) if now < until => Decision::WaitUntil(until),
            Some(_) if st.probing => Decision::WaitForProbe,
            Some(_) => {
                st.probing = true;
                Decision::Send {
                    slot: st.reserve(now),
                    generation: st.generation,
                    probe: true,
                }
            }
            None => Decision::Send {
                slot: st.reserve(now),
                generation: st.generation,
                probe: false,
            },
        }
    }

    /// Forgets a reserved send slot that was never used.
    fn unreserve(&self, slot: Instant) {
        let mut st = self.lock();
        if let Some(pos) = st.sent.iter().rposition(|t| *t == slot) {
            st.sent.remove(pos);
        }
    }

    fn closed_since(&self, generation: u64) -> bool {
        let st = self.lock();
        st.paused_until.is_some() && st.generation != generation
    }

    fn permit(self: &Arc<Self>, generation: u64, probe: bool, slot: Instant) -> Permit {
        Permit {
            budget: Arc::clone(self),
            generation,
            probe,
            slot,
            finished: false,
        }
    }

    /// Adopts what Bitbucket says about the limit: `X-RateLimit-Limit` and
    /// `X-RateLimit-NearLimit`.
    pub fn observe_headers(&self, limit: Option<u32>, near_limit: Option<bool>) {
        let mut st = self.lock();
        if let Some(limit) = limit.filter(|l| *l > 0) {
            st.limit = limit;
            st.confirmed = true;
        }
        if let Some(near) = near_limit {
            st.near_limit = near;
        }
    }

    /// The current state, for progress and metrics.
    pub fn snapshot(&self) -> BudgetSnapshot {
        let mut st = self.lock();
        let now = Instant::now();
        st.expire(now);
        BudgetSnapshot {
            limit: st.limit,
            used_in_window: st.sent.len(),
            paused: st.paused_until.is_some_and(|u| now < u) || st.probing,
            rate_limited: st.rate_limited,
            resume_in: st
                .paused_until
                .filter(|u| now < *u)
                .map(|u| u.saturating_duration_since(now)),
        }
    }

    /// Applies an answer; returns the pause it started, if it closed the gate.
    fn finish(&self, generation: u64, probe: bool, outcome: Outcome) -> Option<Duration> {
        let mut st = self.lock();
        let mut closed = None;
        match outcome {
            Outcome::RateLimited(retry_after) => {
                st.rate_limited += 1;
                if probe || st.generation == generation {
                    // A fresh 429 (or the probe's): close the gate (again).
                    let pause = match retry_after {
                        Some(d) => d,
                        None => st
                            .backoff
                            .next_backoff()
                            .unwrap_or(Duration::from_secs(600)),
                    };
                    let now = Instant::now();
                    st.generation += 1;
                    st.paused_until = Some(now + pause);
                    // After the pause, no burst: the window is evidently
                    // full. The theoretical arrival time sits a whole burst
                    // tolerance past the pause, so the first request after it
                    // goes at its end and the rest one interval apart
                    // (`now + pause` alone would allow a full burst again).
                    st.tat = now + pause + st.interval() * (st.burst() - 1);
                    closed = Some(pause);
                }
                // Otherwise the request was sent before the current closure:
                // the gate already accounts for it.
                if probe {
                    st.probing = false;
                }
            }
            Outcome::Answered if probe => {
                st.probing = false;
                st.paused_until = None;
                st.backoff.reset();
                tracing::info!(
                    "rate-limit pause over: the probe request was answered; requests resume"
                );
            }
            Outcome::Answered => {
                if st.paused_until.is_none() {
                    st.backoff.reset();
                }
            }
            Outcome::NoAnswer | Outcome::NotSent => {
                if probe {
                    // Hand the probe to the next caller; the gate stays as is.
                    st.probing = false;
                }
            }
        }
        drop(st);
        self.gate_changed.notify_waiters();
        closed
    }
}

enum Decision {
    Send {
        slot: Instant,
        generation: u64,
        probe: bool,
    },
    WaitUntil(Instant),
    WaitForProbe,
}

impl State {
    /// Interval between requests at the current limit.
    fn interval(&self) -> Duration {
        let base = WINDOW / self.limit;
        if self.near_limit {
            base * 4
        } else if !self.confirmed {
            // A configured limit has no `NearLimit` feedback: pacing exactly
            // at it trips a 429 on the first timing jitter. Keep 5 % spare.
            base * 21 / 20
        } else {
            base
        }
    }

    /// Burst allowed on top of the steady pace: at most 3 while the limit is
    /// unconfirmed (the window may already be in use by another process,
    /// and nothing would say so before the 429).
    fn burst(&self) -> u32 {
        if self.near_limit {
            1
        } else if !self.confirmed {
            // A couple of requests at once (a `verify`, a small listing)
            // need not wait; more would risk a window shared with others.
            (self.limit / 300).clamp(1, 3)
        } else {
            (self.limit / 20).clamp(1, 50)
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some(first) = self.sent.front() {
            if now.saturating_duration_since(*first) >= WINDOW {
                self.sent.pop_front();
            } else {
                break;
            }
        }
    }

    /// Reserves the next send slot and returns when it is.
    fn reserve(&mut self, now: Instant) -> Instant {
        let interval = self.interval();
        let tolerance = interval * (self.burst() - 1);
        let tat = self.tat.max(now);
        let mut slot = if tat > now + tolerance {
            tat - tolerance
        } else {
            now
        };
        // The rolling window: never more than `limit` in any hour.
        self.expire(now);
        let limit = self.limit as usize;
        if self.sent.len() >= limit {
            let idx = self.sent.len() - limit;
            slot = slot.max(self.sent[idx] + WINDOW);
        }
        self.tat = tat.max(slot) + interval;
        self.sent.push_back(slot);
        slot
    }
}

impl Permit {
    /// Whether this request is the single probe after a 429 pause.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// The request was not sent after all (the gate closed while it
    /// waited): its slot does not count in the window.
    pub fn cancel(self) {
        let _ = self.finish(Outcome::NotSent);
    }

    /// Whether the gate closed after this permit was handed out (a 429 came
    /// back meanwhile): the request must not be sent; acquire a new permit.
    /// Never true for the probe.
    pub fn is_stale(&self) -> bool {
        !self.probe && self.budget.closed_since(self.generation)
    }

    /// Reports the answer to the budget. Returns the pause a 429 started
    /// when this answer closed the gate (a 429 to a request sent before the
    /// gate last closed does not close it again).
    pub fn finish(mut self, outcome: Outcome) -> Option<Duration> {
        self.finished = true;
        if outcome == Outcome::NotSent {
            self.budget.unreserve(self.slot);
        }
        self.budget.finish(self.generation, self.probe, outcome)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self
                .budget
                .finish(self.generation, self.probe, Outcome::NoAnswer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn paces_within_the_hourly_limit() {
        let b = RateBudget::new(60, RateLimitBackoff::default());
        let start = Instant::now();
        let mut times = Vec::new();
        for _ in 0..130 {
            let p = b.acquire().await;
            times.push(Instant::now() - start);
            p.finish(Outcome::Answered);
        }
        // Any rolling hour holds at most 60 sends.
        for (i, t) in times.iter().enumerate() {
            let in_window = times[i..].iter().filter(|u| **u < *t + WINDOW).count();
            assert!(
                in_window <= 60,
                "{in_window} requests within an hour from {t:?}"
            );
        }
        // And the pace is steady, not a burst followed by an hour's wait.
        assert!(times[10] >= Duration::from_secs(60 * 8));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_permit_does_not_count_in_the_window() {
        let b = RateBudget::new(1000, RateLimitBackoff::default());
        b.acquire().await.finish(Outcome::Answered);
        b.acquire().await.cancel();
        assert_eq!(b.snapshot().used_in_window, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn near_limit_slows_the_pace_fourfold() {
        let b = RateBudget::new(3600, RateLimitBackoff::default());
        // Use up the burst, then time ten steady requests.
        for _ in 0..60 {
            b.acquire().await.finish(Outcome::Answered);
        }
        let t0 = Instant::now();
        for _ in 0..10 {
            b.acquire().await.finish(Outcome::Answered);
        }
        let normal = Instant::now() - t0;
        b.observe_headers(None, Some(true));
        let t1 = Instant::now();
        for _ in 0..10 {
            b.acquire().await.finish(Outcome::Answered);
        }
        let slowed = Instant::now() - t1;
        assert!(
            normal >= Duration::from_secs(9) && normal <= Duration::from_secs(11),
            "{normal:?}"
        );
        assert!(slowed >= normal * 3, "{slowed:?} vs {normal:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn no_burst_after_a_rate_limit_pause() {
        // 3600/h: one request a second, a burst of 50 when fresh.
        let b = RateBudget::new(3600, RateLimitBackoff::default());
        b.acquire()
            .await
            .finish(Outcome::RateLimited(Some(Duration::from_secs(10))));
        tokio::time::sleep(Duration::from_secs(10)).await;
        let probe = b.acquire().await;
        assert!(probe.is_probe());
        probe.finish(Outcome::Answered);
        let t0 = Instant::now();
        for _ in 0..10 {
            b.acquire().await.finish(Outcome::Answered);
        }
        let took = Instant::now() - t0;
        assert!(
            took >= Duration::from_secs(9),
            "burst after the pause: {took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_probe_hands_its_turn_on() {
        let b = RateBudget::new(3600, RateLimitBackoff::default());
        b.acquire()
            .await
            .finish(Outcome::RateLimited(Some(Duration::from_secs(5))));
        tokio::time::sleep(Duration::from_secs(6)).await;
        let probe = b.acquire().await;
        assert!(probe.is_probe());
        drop(probe);
        let next = tokio::time::timeout(Duration::from_secs(60), b.acquire())
            .await
            .expect("gate stuck");
        assert!(next.is_probe());
    }
}
