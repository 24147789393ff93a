//! Stage "admit": per-deployment quotas, a requests bucket and a tokens bucket taken together.
//!
//! Admission takes one request and the request's reserved tokens atomically (both or neither);
//! reconciliation later refunds or charges the difference to the real usage. The two buckets sit
//! under one mutex because they must change together; the critical section is a few integer
//! operations and is never held across an await (a lock-free pair would need a rollback protocol
//! that lets other requests see a half-taken state).

pub mod bucket;
pub mod fair;
pub mod lease;
pub mod period;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::core::clock::Clock;
use bucket::TokenBucket;
use period::{PeriodDenial, PeriodQuota, PeriodState, Stamp};

/// The seed's quota for every serverless deployment.
pub const DEFAULT_REQUESTS_PER_MINUTE: u64 = 1_000;
pub const DEFAULT_TOKENS_PER_MINUTE: u64 = 200_000;

/// A deployment's limits, per minute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub requests_per_minute: u64,
    pub tokens_per_minute: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { requests_per_minute: DEFAULT_REQUESTS_PER_MINUTE, tokens_per_minute: DEFAULT_TOKENS_PER_MINUTE }
    }
}

/// Which of the two limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitKind {
    Requests,
    Tokens,
}

impl LimitKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Requests => "requests",
            LimitKind::Tokens => "tokens",
        }
    }
}

/// The buckets as a response reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuotaState {
    pub limit_requests: u64,
    pub remaining_requests: u64,
    pub limit_tokens: u64,
    pub remaining_tokens: u64,
    /// Nanoseconds until each bucket is full again; in a [`Denial`], for a bucket without room for
    /// the request, until it has room (so `RateLimit`'s `t` agrees with `retry-after`).
    pub requests_full_in_ns: u64,
    pub tokens_full_in_ns: u64,
}

/// Why a request was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denial {
    /// Not now: `retry_after_ns` is exactly when both buckets will hold this request's reservation.
    Exhausted { limit: LimitKind, retry_after_ns: u64, state: QuotaState },
    /// Never: the reservation is larger than the tokens bucket's whole capacity.
    ExceedsCapacity { reserved: u64, capacity: u64 },
}

/// A deployment's two buckets, read together.
#[derive(Clone, Copy, Debug)]
pub struct Buckets {
    pub requests: TokenBucket,
    pub tokens: TokenBucket,
}

impl Buckets {
    /// What the response headers report.
    pub fn state(&self) -> QuotaState {
        state_of(self)
    }

    /// Why `tokens` (with one request) cannot be taken now, and when they could be.
    pub fn denial(&self, tokens: u64) -> Denial {
        let request_ok = self.requests.has(1);
        let tokens_ok = self.tokens.has(tokens);
        let wait_requests = self.requests.wait_ns_for(1).unwrap_or(u64::MAX);
        let wait_tokens = self.tokens.wait_ns_for(tokens).unwrap_or(u64::MAX);
        let limit = match (request_ok, tokens_ok) {
            (false, true) => LimitKind::Requests,
            (true, false) => LimitKind::Tokens,
            _ if wait_requests >= wait_tokens => LimitKind::Requests,
            _ => LimitKind::Tokens,
        };
        // For a bucket without room for this request, the headers' reset time (`t` of the IETF
        // `RateLimit` field) is when it will have room, so that it agrees with `retry-after`
        // rather than saying when the bucket is full again.
        let mut state = state_of(self);
        if !request_ok {
            state.requests_full_in_ns = wait_requests;
        }
        if !tokens_ok {
            state.tokens_full_in_ns = wait_tokens;
        }
        Denial::Exhausted { limit, retry_after_ns: wait_requests.max(wait_tokens), state }
    }
}

/// One deployment's two buckets.
#[derive(Debug)]
pub struct DeploymentQuota {
    buckets: Mutex<Buckets>,
    clock: Arc<dyn Clock>,
}

impl DeploymentQuota {
    /// Full buckets: a fresh deployment can burst its whole minute.
    pub fn new(limits: Limits, clock: Arc<dyn Clock>) -> DeploymentQuota {
        let now = clock.now_ns();
        DeploymentQuota {
            buckets: Mutex::new(Buckets {
                requests: TokenBucket::full(limits.requests_per_minute, now),
                tokens: TokenBucket::full(limits.tokens_per_minute, now),
            }),
            clock,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Buckets> {
        // The critical sections cannot panic midway; a poisoned lock still holds consistent state.
        self.buckets.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn refilled(&self) -> MutexGuard<'_, Buckets> {
        let now = self.clock.now_ns();
        let mut b = self.lock();
        b.requests.refill(now);
        b.tokens.refill(now);
        b
    }

    /// Takes one request and `tokens` together, or neither.
    pub fn admit(&self, tokens: u64) -> Result<QuotaState, Denial> {
        let mut b = self.refilled();
        let capacity = b.tokens.per_minute();
        if tokens > capacity {
            return Err(Denial::ExceedsCapacity { reserved: tokens, capacity });
        }
        if b.requests.has(1) && b.tokens.has(tokens) {
            b.requests.take(1);
            b.tokens.take(tokens);
            return Ok(state_of(&b));
        }
        Err(b.denial(tokens))
    }

    /// Settles a reservation: refunds `reserved - actual`, or charges `actual - reserved` (which
    /// may take the bucket below zero).
    pub fn reconcile(&self, reserved: u64, actual: u64) {
        let mut b = self.refilled();
        if actual < reserved {
            b.tokens.give(reserved - actual);
        } else {
            b.tokens.take(actual - reserved);
        }
    }

    /// Nanoseconds until one request and `tokens` fit (0 when they do now); `None` when they
    /// never can (more than the capacity).
    pub fn wait_ns_for(&self, tokens: u64) -> Option<u64> {
        let b = self.refilled();
        if tokens > b.tokens.per_minute() {
            return None;
        }
        Some(b.requests.wait_ns_for(1)?.max(b.tokens.wait_ns_for(tokens)?))
    }

    /// Gives back an admission whole, the request and its `reserved` tokens (an attempt a backend
    /// refused or never saw).
    pub fn refund(&self, reserved: u64) {
        let mut b = self.refilled();
        b.requests.give(1);
        b.tokens.give(reserved);
    }

    pub fn state(&self) -> QuotaState {
        state_of(&self.refilled())
    }

    pub fn limits(&self) -> Limits {
        let b = self.lock();
        Limits { requests_per_minute: b.requests.per_minute(), tokens_per_minute: b.tokens.per_minute() }
    }

    /// New limits, keeping the current levels (clamped to the new capacities): no free refill.
    pub fn set_limits(&self, limits: Limits) {
        let now = self.clock.now_ns();
        let mut b = self.lock();
        b.requests.set_per_minute(limits.requests_per_minute, now);
        b.tokens.set_per_minute(limits.tokens_per_minute, now);
    }
}

/// The levels one request is admitted against together: per-minute buckets (the deployment's,
/// then a consumer's grant's) and period quotas (the grant's, then the consumer's).
///
/// **Locks.** Admission holds every level's lock at once, taken in that order: a deployment's
/// buckets, a grant's buckets, a grant's period quota, a consumer's period quota. Each lock
/// belongs to one of these ranks only and every admission takes them by rank, so two admissions
/// can never wait on each other in a cycle; everything else takes one lock at a time.
#[derive(Clone, Copy, Default)]
pub struct Levels<'a> {
    pub buckets: [Option<&'a DeploymentQuota>; 2],
    pub periods: [Option<&'a PeriodQuota>; 2],
}

/// What admission over several levels took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admitted {
    /// Each bucket level after admission (as [`Levels::buckets`]).
    pub buckets: [Option<QuotaState>; 2],
    /// The periods the request counts in (when a period quota applies).
    pub stamp: Option<Stamp>,
    /// Each period level after admission (as [`Levels::periods`]).
    pub periods: [Option<PeriodState>; 2],
}

/// Why admission over several levels said no.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LevelDenial {
    /// A per-minute level (index into [`Levels::buckets`]): the one whose wait is longest, with
    /// the wait until every level holds the request.
    Rate { level: usize, denial: Denial },
    /// A period quota is used up (index into [`Levels::periods`]): retrying before it ends is
    /// pointless.
    Period { level: usize, denial: PeriodDenial },
}

/// Takes one request and `tokens` from every level together, or from none.
///
/// A reservation larger than a level's whole capacity is refused as never admissible (by the
/// first such level); then a used-up period quota; then, when a bucket lacks room, the level
/// whose wait is longest, with `retry_after_ns` the time until every level has room. A refusal
/// comes with every level as it is (nothing taken; the refusing bucket's reset time is when it
/// has room, as in [`Buckets::denial`]), for the headers that list every policy (boxed: a
/// refusal is the rare case, and the `Result` stays small).
pub fn admit_levels(
    levels: Levels<'_>,
    tokens: u64,
    unix_seconds: u64,
) -> Result<Admitted, Box<(LevelDenial, Admitted)>> {
    let mut buckets: [Option<MutexGuard<'_, Buckets>>; 2] = [None, None];
    for (slot, quota) in buckets.iter_mut().zip(levels.buckets) {
        *slot = quota.map(DeploymentQuota::refilled);
    }
    let mut periods = [None, None];
    for (slot, quota) in periods.iter_mut().zip(levels.periods) {
        *slot = quota.map(|q| q.lock(unix_seconds));
    }
    let mut seen = Admitted { buckets: [None, None], stamp: None, periods: [None, None] };
    for (out, b) in seen.buckets.iter_mut().zip(&buckets) {
        *out = b.as_ref().map(|b| state_of(b));
    }
    for (out, p) in seen.periods.iter_mut().zip(&periods) {
        if let Some(p) = p {
            seen.stamp = Some(p.stamp());
            *out = Some(p.state());
        }
    }
    for (level, b) in buckets.iter().enumerate() {
        if let Some(b) = b {
            let capacity = b.tokens.per_minute();
            if tokens > capacity {
                let denial = Denial::ExceedsCapacity { reserved: tokens, capacity };
                return Err(Box::new((LevelDenial::Rate { level, denial }, seen)));
            }
        }
    }
    for (level, p) in periods.iter().enumerate() {
        if let Some(denial) = p.as_ref().and_then(|p| p.denial(tokens)) {
            return Err(Box::new((LevelDenial::Period { level, denial }, seen)));
        }
    }
    if let Some((level, denial, states)) = rate_denial([buckets[0].as_deref(), buckets[1].as_deref()], tokens) {
        seen.buckets = states;
        return Err(Box::new((LevelDenial::Rate { level, denial }, seen)));
    }
    for (out, b) in seen.buckets.iter_mut().zip(buckets.iter_mut()) {
        if let Some(b) = b {
            b.requests.take(1);
            b.tokens.take(tokens);
            *out = Some(state_of(b));
        }
    }
    for (out, p) in seen.periods.iter_mut().zip(periods.iter_mut()) {
        if let Some(p) = p {
            p.take(tokens);
            *out = Some(p.state());
        }
    }
    Ok(seen)
}

/// When a bucket level lacks room for one request and `tokens`: the level whose wait is longest,
/// its denial with the wait until every level has room, and every level's state (a refusing
/// bucket's reset time is when it has room). `None` when every level has room.
pub fn rate_denial(levels: [Option<&Buckets>; 2], tokens: u64) -> Option<(usize, Denial, [Option<QuotaState>; 2])> {
    let mut states = levels.map(|b| b.map(state_of));
    let mut binding: Option<(usize, LimitKind, QuotaState, u64)> = None;
    let mut retry_after = 0;
    for (level, b) in levels.iter().enumerate() {
        let Some(b) = b else { continue };
        if b.requests.has(1) && b.tokens.has(tokens) {
            continue;
        }
        let Denial::Exhausted { limit, retry_after_ns, state } = b.denial(tokens) else { continue };
        states[level] = Some(state);
        retry_after = retry_after.max(retry_after_ns);
        if binding.is_none_or(|(.., longest)| retry_after_ns > longest) {
            binding = Some((level, limit, state, retry_after_ns));
        }
    }
    binding.map(|(level, limit, state, _)| {
        (level, Denial::Exhausted { limit, retry_after_ns: retry_after, state }, states)
    })
}

fn state_of(b: &Buckets) -> QuotaState {
    QuotaState {
        limit_requests: b.requests.per_minute(),
        remaining_requests: b.requests.remaining(),
        limit_tokens: b.tokens.per_minute(),
        remaining_tokens: b.tokens.remaining(),
        requests_full_in_ns: b.requests.ns_until_full(),
        tokens_full_in_ns: b.tokens.ns_until_full(),
    }
}

#[cfg(test)]
mod tests;
