//! Per-sandbox guardrails: a rate limit, a concurrency budget and a circuit breaker on outbound
//! calls, so a runaway test is contained without touching baseline traffic.
//!
//! Baseline traffic never passes through guardrails. State is kept per sandbox, bounded by
//! [`GuardrailsBuilder::max_tracked`]: a sandbox at rest (full bucket, nothing in flight, no open
//! breaker) holds no information and is evicted first; when every tracked sandbox is busy, new
//! sandboxes are throttled rather than letting memory grow. A sandbox that comes to rest is
//! noticed at once when it gives back its last permit or call, else within 100 ms.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use prodbox_core::guardrails::{Guardrails, ThrottleReason};
//!
//! let guardrails = Guardrails::builder().rate(10.0, 2).max_concurrent(5).build();
//! let key = "pr-42".parse()?;
//! let first = guardrails.admit(&key)?;
//! let second = guardrails.admit(&key)?;
//! let third = guardrails.admit(&key).unwrap_err();
//! assert_eq!(third.reason, ThrottleReason::RateLimited);
//! assert!(third.retry_after <= Duration::from_millis(100));
//! // Other sandboxes have their own budget.
//! assert!(guardrails.admit(&"pr-7".parse()?).is_ok());
//! # drop((first, second));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::limits::DEFAULT_MAX_TRACKED_SANDBOXES;

/// The longest wait a guardrail asks for (and the longest a breaker stays open): a day.
const MAX_WAIT: Duration = Duration::from_secs(86_400);
use crate::sandbox::SandboxKey;

/// Why a sandbox was throttled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottleReason {
    /// Over its request rate.
    RateLimited,
    /// Over its concurrency budget.
    TooManyConcurrent,
    /// Every tracked sandbox is busy and no more can be tracked.
    Capacity,
    /// The circuit breaker for this destination is open.
    CircuitOpen,
}

impl ThrottleReason {
    /// A short stable name for audit events and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RateLimited => "rate_limited",
            Self::TooManyConcurrent => "too_many_concurrent",
            Self::Capacity => "guardrail_capacity",
            Self::CircuitOpen => "circuit_open",
        }
    }
}

/// A guardrail said no.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sandbox {sandbox} throttled ({}); retry after {} ms", reason.as_str(), retry_after.as_millis())]
pub struct Throttled {
    /// The sandbox.
    pub sandbox: SandboxKey,
    /// Which guardrail.
    pub reason: ThrottleReason,
    /// When trying again may succeed.
    pub retry_after: Duration,
}

#[derive(Debug, Clone)]
struct Config {
    rate: Option<(f64, u32)>,
    max_concurrent: Option<u32>,
    breaker: Option<(u32, Duration)>,
    max_tracked: usize,
}

/// Builds [`Guardrails`]. Every guardrail is off until set.
#[derive(Debug, Clone)]
pub struct GuardrailsBuilder {
    config: Config,
}

impl GuardrailsBuilder {
    /// At most `per_second` requests per second per sandbox, with bursts of `burst`.
    pub fn rate(mut self, per_second: f64, burst: u32) -> Self {
        if per_second > 0.0 && per_second.is_finite() {
            self.config.rate = Some((per_second, burst.max(1)));
        }
        self
    }

    /// At most `limit` requests of one sandbox in flight at once.
    pub fn max_concurrent(mut self, limit: u32) -> Self {
        self.config.max_concurrent = Some(limit.max(1));
        self
    }

    /// Opens a sandbox's breaker for a destination after `failures` consecutive failures, for
    /// `open_for`; then lets one trial call through.
    pub fn circuit_breaker(mut self, failures: u32, open_for: Duration) -> Self {
        self.config.breaker = Some((failures.max(1), open_for.min(MAX_WAIT)));
        self
    }

    /// Sandboxes tracked at once (default 10,000).
    pub fn max_tracked(mut self, limit: usize) -> Self {
        self.config.max_tracked = limit.max(1);
        self
    }

    /// Finishes the guardrails.
    pub fn build(self) -> Guardrails {
        Guardrails {
            inner: Arc::new(Inner {
                config: self.config,
                sandboxes: Mutex::new(Tracked::default()),
                released: Arc::new(AtomicBool::new(false)),
            }),
        }
    }
}

/// Per-sandbox guardrails, shared by clones.
#[derive(Clone)]
pub struct Guardrails {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    sandboxes: Mutex<Tracked>,
    /// Set whenever a permit or a call guard is given back: a tracked sandbox may have come to
    /// rest, so the next new sandbox at capacity looks for one to evict. Each state holds it too.
    released: Arc<AtomicBool>,
}

/// The longest a new sandbox at capacity is refused without a sweep: bounds how long a release
/// that raced with a sweep (seen busy, then given back) goes unnoticed.
const RECHECK: Duration = Duration::from_millis(100);

/// The tracked sandboxes, and when looking through them for one at rest can next succeed.
#[derive(Default)]
struct Tracked {
    map: HashMap<SandboxKey, Arc<State>>,
    /// Set by a sweep that left the map full: the earliest time a bucket it saw refills, or
    /// [`RECHECK`] after the sweep if sooner. Until then, and until a release, a new sandbox at
    /// capacity is refused without a sweep, so a flood of new keys costs one scan per release
    /// or refill instead of one per request. `None` whenever the map has room.
    full_until: Option<Instant>,
    /// Sweeps made, for tests.
    sweeps: u64,
}

struct State {
    /// The guardrails' `released` flag.
    released: Arc<AtomicBool>,
    /// Whether the last permit given back may leave this sandbox at rest: not under a rate
    /// limit, whose buckets a sweep times instead (so that requests, admitted or refused, do
    /// not each buy a sweep).
    rests_on_release: bool,
    in_flight: AtomicU32,
    bucket: Mutex<Bucket>,
    breakers: Mutex<HashMap<Box<str>, (Breaker, u64)>>,
}

impl State {
    /// Tells the guardrails a permit or call guard of this sandbox was given back.
    fn released(&self) {
        // Most releases find it set already: no write, no contended cache line.
        if !self.released.load(Ordering::Relaxed) {
            self.released.store(true, Ordering::Release);
        }
    }
}

/// Destinations whose breaker one sandbox keeps at once; past it, closed ones are forgotten and,
/// when none is, further destinations go unguarded rather than growing memory.
const MAX_DESTINATIONS: usize = 256;

struct Bucket {
    tokens: f64,
    refilled: Instant,
}

#[derive(Clone, Copy)]
enum Breaker {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { trial: bool },
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Guardrail state stays meaningful after a panic elsewhere; never propagate poison.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl fmt::Debug for Guardrails {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guardrails")
            .field("config", &self.inner.config)
            .field("tracked", &self.tracked())
            .finish()
    }
}

impl Guardrails {
    /// Starts building guardrails.
    pub fn builder() -> GuardrailsBuilder {
        GuardrailsBuilder {
            config: Config {
                rate: None,
                max_concurrent: None,
                breaker: None,
                max_tracked: DEFAULT_MAX_TRACKED_SANDBOXES,
            },
        }
    }

    /// How many sandboxes have state right now.
    pub fn tracked(&self) -> usize {
        lock(&self.inner.sandboxes).map.len()
    }

    fn state(&self, key: &SandboxKey, now: Instant) -> Result<Arc<State>, Throttled> {
        let mut tracked = lock(&self.inner.sandboxes);
        if let Some(state) = tracked.map.get(key) {
            return Ok(Arc::clone(state));
        }
        let max = self.inner.config.max_tracked;
        let mut swept = None;
        if tracked.map.len() >= max {
            let released = self.inner.released.swap(false, Ordering::AcqRel);
            if released || tracked.full_until.is_none_or(|until| now >= until) {
                tracked.sweeps += 1;
                let mut next = now.checked_add(RECHECK).unwrap_or(now);
                tracked
                    .map
                    .retain(|_, state| match self.at_rest(state, now) {
                        Ok(()) => false,
                        Err(refilled_at) => {
                            next = refilled_at.map_or(next, |at| at.min(next));
                            true
                        }
                    });
                tracked.full_until = (tracked.map.len() >= max).then_some(next);
                swept = Some(next);
            }
            if tracked.map.len() >= max {
                return Err(Throttled {
                    sandbox: key.clone(),
                    reason: ThrottleReason::Capacity,
                    retry_after: Duration::from_secs(1),
                });
            }
        }
        // Room made by a sweep just now and filled by this sandbox (held by its caller): the
        // sweep's finding stands for the rest.
        tracked.full_until = swept.filter(|_| tracked.map.len() + 1 >= max);
        let burst = self.inner.config.rate.map_or(0.0, |(_, b)| f64::from(b));
        let state = Arc::new(State {
            released: Arc::clone(&self.inner.released),
            rests_on_release: self.inner.config.rate.is_none(),
            in_flight: AtomicU32::new(0),
            bucket: Mutex::new(Bucket {
                tokens: burst,
                refilled: now,
            }),
            breakers: Mutex::new(HashMap::new()),
        });
        tracked.map.insert(key.clone(), Arc::clone(&state));
        Ok(state)
    }

    /// `Ok` for a state that equals a fresh one (nothing is lost by forgetting it); otherwise
    /// when its bucket is full again, if that is all it waits for (a permit, a call guard or a
    /// breaker comes to rest only through a release, which sets `released`).
    fn at_rest(&self, state: &Arc<State>, now: Instant) -> Result<(), Option<Instant>> {
        // First: nobody else holds it. The map is locked, so no one can take it meanwhile, and
        // what is read below cannot change under the sweep.
        if Arc::strong_count(state) > 1 || state.in_flight.load(Ordering::Acquire) > 0 {
            return Err(None);
        }
        if let Some((rate, burst)) = self.inner.config.rate {
            let bucket = lock(&state.bucket);
            let missing = f64::from(burst) - bucket.tokens;
            let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
            if missing > elapsed * rate {
                let wait = Duration::try_from_secs_f64(missing / rate).unwrap_or(MAX_WAIT);
                return Err(Some(bucket.refilled.checked_add(wait).unwrap_or(now)));
            }
        }
        if lock(&state.breakers)
            .values()
            .all(|(b, _)| matches!(b, Breaker::Closed { failures: 0 }))
        {
            Ok(())
        } else {
            Err(None)
        }
    }

    /// Admits one inbound request of `sandbox`: the returned permit holds a concurrency slot
    /// until dropped (keep it until the response body has been sent).
    pub fn admit(&self, sandbox: &SandboxKey) -> Result<Permit, Throttled> {
        let now = Instant::now();
        let state = self.state(sandbox, now)?;
        let config = &self.inner.config;
        let throttled = |reason, retry_after| Throttled {
            sandbox: sandbox.clone(),
            reason,
            retry_after,
        };
        let in_flight = state.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        // From here the permit owns the slot and gives it back on every path.
        let permit = Permit { state };
        if let Some(limit) = config.max_concurrent
            && in_flight > limit
        {
            return Err(throttled(
                ThrottleReason::TooManyConcurrent,
                Duration::from_secs(1),
            ));
        }
        if let Some((rate, burst)) = config.rate {
            let mut bucket = lock(&permit.state.bucket);
            let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
            bucket.tokens = (bucket.tokens + elapsed * rate).min(f64::from(burst));
            bucket.refilled = now;
            if bucket.tokens < 1.0 {
                let wait = Duration::try_from_secs_f64((1.0 - bucket.tokens) / rate)
                    .unwrap_or(MAX_WAIT)
                    .min(MAX_WAIT);
                return Err(throttled(ThrottleReason::RateLimited, wait));
            }
            bucket.tokens -= 1.0;
        }
        Ok(permit)
    }

    /// Asks the circuit breaker of `sandbox` for `destination` whether an outbound call may go
    /// out. Report the call's outcome on the returned guard.
    pub fn outbound(
        &self,
        sandbox: &SandboxKey,
        destination: &str,
    ) -> Result<CallGuard, Throttled> {
        let Some((_, open_for)) = self.inner.config.breaker else {
            return Ok(CallGuard { target: None });
        };
        let now = Instant::now();
        let state = self.state(sandbox, now)?;
        let generation = {
            let mut breakers = lock(&state.breakers);
            if breakers.len() >= MAX_DESTINATIONS && !breakers.contains_key(destination) {
                breakers.retain(|_, (b, _)| !matches!(b, Breaker::Closed { failures: 0 }));
                if breakers.len() >= MAX_DESTINATIONS {
                    return Ok(CallGuard { target: None });
                }
            }
            let (breaker, generation) = breakers
                .entry(destination.into())
                .or_insert((Breaker::Closed { failures: 0 }, 0));
            match *breaker {
                Breaker::Closed { .. } => {}
                Breaker::Open { until } if now < until => {
                    return Err(Throttled {
                        sandbox: sandbox.clone(),
                        reason: ThrottleReason::CircuitOpen,
                        retry_after: until - now,
                    });
                }
                Breaker::Open { .. } | Breaker::HalfOpen { trial: false } => {
                    *breaker = Breaker::HalfOpen { trial: true };
                }
                Breaker::HalfOpen { trial: true } => {
                    return Err(Throttled {
                        sandbox: sandbox.clone(),
                        reason: ThrottleReason::CircuitOpen,
                        retry_after: open_for,
                    });
                }
            }
            *generation
        };
        Ok(CallGuard {
            target: Some((self.clone(), state, destination.into(), generation)),
        })
    }

    fn record(&self, state: &State, destination: &str, generation: u64, success: Option<bool>) {
        let Some((threshold, open_for)) = self.inner.config.breaker else {
            return;
        };
        let mut breakers = lock(&state.breakers);
        let Some((breaker, current)) = breakers.get_mut(destination) else {
            return;
        };
        // A call let through before the breaker last changed says nothing about it now: a
        // success from before it opened must not close it.
        if *current != generation {
            return;
        }
        let next = match (*breaker, success) {
            (Breaker::Closed { .. }, Some(true)) => Breaker::Closed { failures: 0 },
            (Breaker::HalfOpen { .. }, Some(true)) => {
                *current += 1;
                Breaker::Closed { failures: 0 }
            }
            (Breaker::Closed { failures }, Some(false)) if failures + 1 < threshold => {
                Breaker::Closed {
                    failures: failures + 1,
                }
            }
            (_, Some(false)) => {
                *current += 1;
                let now = Instant::now();
                Breaker::Open {
                    until: now.checked_add(open_for).unwrap_or(now),
                }
            }
            // Cancelled before an outcome: a half-open trial slot is given back.
            (Breaker::HalfOpen { .. }, None) => Breaker::HalfOpen { trial: false },
            (other, _) => other,
        };
        *breaker = next;
    }
}

/// Holds one concurrency slot of a sandbox; dropping it gives the slot back.
#[must_use = "the slot is released when the permit is dropped"]
pub struct Permit {
    state: Arc<State>,
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit").finish_non_exhaustive()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        // A refused admission (over the concurrency budget) leaves others in flight: no signal.
        let last = self.state.in_flight.fetch_sub(1, Ordering::AcqRel) == 1;
        if last && self.state.rests_on_release {
            self.state.released();
        }
    }
}

/// One outbound call let through by a circuit breaker; report how it went.
#[must_use = "report the outcome with `success` or `failure`"]
pub struct CallGuard {
    target: Option<(Guardrails, Arc<State>, Box<str>, u64)>,
}

impl fmt::Debug for CallGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallGuard").finish_non_exhaustive()
    }
}

impl CallGuard {
    /// The call succeeded.
    pub fn success(mut self) {
        self.finish(Some(true));
    }

    /// The call failed (an error or a server error).
    pub fn failure(mut self) {
        self.finish(Some(false));
    }

    fn finish(&mut self, outcome: Option<bool>) {
        if let Some((guardrails, state, destination, generation)) = self.target.take() {
            guardrails.record(&state, &destination, generation, outcome);
            // Given back first, so that a sweep seeing the signal sees it unheld.
            let released = Arc::clone(&state.released);
            drop(state);
            released.store(true, Ordering::Release);
        }
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.finish(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guardrails with only a circuit breaker.
    fn breaker(failures: u32, open_for: Duration) -> Guardrails {
        Guardrails::builder()
            .circuit_breaker(failures, open_for)
            .build()
    }

    fn key(s: &str) -> SandboxKey {
        s.parse().unwrap()
    }

    #[test]
    fn concurrency_budget_is_released_with_the_permit() {
        let g = Guardrails::builder().max_concurrent(2).build();
        let a = g.admit(&key("a")).unwrap();
        let _b = g.admit(&key("a")).unwrap();
        let err = g.admit(&key("a")).unwrap_err();
        assert_eq!(err.reason, ThrottleReason::TooManyConcurrent);
        assert!(g.admit(&key("b")).is_ok(), "other sandboxes unaffected");
        drop(a);
        assert!(g.admit(&key("a")).is_ok());
    }

    #[test]
    fn breaker_opens_after_failures_and_half_opens() {
        let g = breaker(2, Duration::from_millis(0));
        let k = key("a");
        g.outbound(&k, "billing").unwrap().failure();
        g.outbound(&k, "billing").unwrap().failure();
        // Open for 0 ms: the next call is the half-open trial, a second one is refused.
        let trial = g.outbound(&k, "billing").unwrap();
        let refused = g.outbound(&k, "billing").unwrap_err();
        assert_eq!(refused.reason, ThrottleReason::CircuitOpen);
        trial.success();
        assert!(g.outbound(&k, "billing").is_ok());
        assert!(g.outbound(&k, "orders").is_ok(), "per destination");

        let g = breaker(1, Duration::from_secs(3600));
        g.outbound(&k, "billing").unwrap().failure();
        let err = g.outbound(&k, "billing").unwrap_err();
        assert!(err.retry_after > Duration::from_secs(3000));
        assert!(g.outbound(&key("b"), "billing").is_ok(), "per sandbox");
    }

    #[test]
    fn a_success_from_before_the_breaker_opened_does_not_close_it() {
        let g = breaker(1, Duration::from_secs(3600));
        let k = key("a");
        let slow = g.outbound(&k, "billing").unwrap();
        g.outbound(&k, "billing").unwrap().failure();
        slow.success();
        assert_eq!(
            g.outbound(&k, "billing").unwrap_err().reason,
            ThrottleReason::CircuitOpen
        );
    }

    #[test]
    fn hostile_durations_do_not_panic() {
        let g = Guardrails::builder()
            .rate(1e-30, 1)
            .circuit_breaker(1, Duration::MAX)
            .build();
        let k = key("a");
        let _first = g.admit(&k).unwrap();
        assert!(g.admit(&k).unwrap_err().retry_after <= MAX_WAIT);
        g.outbound(&k, "x").unwrap().failure();
        assert!(g.outbound(&k, "x").is_err());
    }

    #[test]
    fn tracked_state_is_bounded() {
        let g = Guardrails::builder()
            .max_concurrent(1)
            .max_tracked(100)
            .build();
        for i in 0..10_000 {
            let _permit = g.admit(&key(&format!("k{i}"))).unwrap();
        }
        assert!(g.tracked() <= 100, "{}", g.tracked());

        // Every tracked sandbox busy: a new one is throttled, not tracked.
        let held: Vec<_> = (0..100)
            .map(|i| g.admit(&key(&format!("busy{i}"))).unwrap())
            .collect();
        let err = g.admit(&key("one-more")).unwrap_err();
        assert_eq!(err.reason, ThrottleReason::Capacity);
        drop(held);
        assert!(g.admit(&key("one-more")).is_ok());
    }

    fn sweeps(g: &Guardrails) -> u64 {
        lock(&g.inner.sandboxes).sweeps
    }

    /// Asks for the state of a new sandbox at `now`, as `admit` does: `true` if it is tracked.
    fn track(g: &Guardrails, name: &str, now: Instant) -> bool {
        g.state(&key(name), now).is_ok()
    }

    #[test]
    fn a_flood_of_new_sandboxes_at_capacity_scans_once_per_release() {
        let g = Guardrails::builder()
            .max_concurrent(1)
            .max_tracked(100)
            .build();
        let mut held: Vec<_> = (0..100)
            .map(|i| g.admit(&key(&format!("busy{i}"))).unwrap())
            .collect();
        let t0 = Instant::now();
        assert_eq!(sweeps(&g), 0);
        for i in 0..1_000 {
            assert!(!track(&g, &format!("new{i}"), t0));
        }
        assert_eq!(sweeps(&g), 1, "one scan for a thousand refusals");
        // Tracked sandboxes are still served without a scan; a refused admission of one of
        // them (over its budget) releases nothing.
        let refused = g.admit(&key("busy0")).unwrap_err();
        assert_eq!(refused.reason, ThrottleReason::TooManyConcurrent);
        assert!(!track(&g, "new-after-refusal", t0));
        assert_eq!(sweeps(&g), 1);

        // A release: the next new sandbox looks again, and takes the freed place.
        held.pop();
        let _kept = g.state(&key("after-release"), t0).unwrap();
        assert_eq!(sweeps(&g), 2);
        assert_eq!(g.tracked(), 100);
        // Full again, nothing released since: that scan's finding stands, no new one ...
        for i in 0..100 {
            assert!(!track(&g, &format!("later{i}"), t0));
        }
        assert_eq!(sweeps(&g), 2);
        // ... until RECHECK has passed since, however a release went.
        assert!(!track(
            &g,
            "almost",
            t0 + RECHECK - Duration::from_millis(1)
        ));
        assert_eq!(sweeps(&g), 2);
        assert!(!track(&g, "rechecked", t0 + RECHECK));
        assert_eq!(sweeps(&g), 3);
    }

    #[test]
    fn rate_limited_sandboxes_are_looked_at_again_when_their_buckets_refill() {
        // 20 per second, bursts of 1: an empty bucket is full again after 50 ms.
        let g = Guardrails::builder().rate(20.0, 1).max_tracked(10).build();
        for i in 0..10 {
            drop(g.admit(&key(&format!("r{i}"))).unwrap());
        }
        // Every bucket emptied at the same made-up instant, so that nothing here depends on
        // how fast this machine runs.
        let t0 = Instant::now() + Duration::from_secs(1);
        for state in lock(&g.inner.sandboxes).map.values() {
            *lock(&state.bucket) = Bucket {
                tokens: 0.0,
                refilled: t0,
            };
        }
        assert!(!track(&g, "new0", t0));
        assert_eq!(sweeps(&g), 1);
        for (i, at) in [0, 10, 49].into_iter().enumerate() {
            assert!(!track(
                &g,
                &format!("new{}", i + 1),
                t0 + Duration::from_millis(at)
            ));
        }
        assert_eq!(sweeps(&g), 1, "no scan before a bucket can refill");
        assert!(track(&g, "refilled", t0 + Duration::from_millis(50)));
        assert_eq!(sweeps(&g), 2);
        assert!(g.tracked() <= 10);
    }

    #[test]
    fn a_finished_call_guard_lets_its_sandbox_be_evicted() {
        let g = Guardrails::builder()
            .circuit_breaker(3, Duration::from_secs(60))
            .max_tracked(1)
            .build();
        let call = g.outbound(&key("caller"), "billing").unwrap();
        let t0 = Instant::now();
        assert!(
            !track(&g, "new0", t0),
            "a call in progress keeps its sandbox"
        );
        assert!(!track(&g, "new1", t0));
        assert_eq!(sweeps(&g), 1);
        call.success();
        assert!(track(&g, "new2", t0));
        assert_eq!(sweeps(&g), 2);
    }
}
