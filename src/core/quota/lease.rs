//! A replica's lease on a deployment's shared buckets: requests and tokens taken from them in one
//! round trip and then admitted from locally, so that a busy deployment costs its store one call
//! per lease instead of one per request (`lease_requests` / `lease_tokens`, `[limits] lease_ms`).
//!
//! The lease is arithmetic only; the store that grants and takes back leases is
//! `state::quota_store::redis`. The life of a lease:
//!
//! - **Local admission** ([`Lease::take`]): one request and its reservation out of what is held.
//! - **Renewal** ([`Lease::renew`]): a request the lease cannot hold (nothing held, too few
//!   tokens, or expired) takes what is left out of it and sends that back in the same call that
//!   asks for a new lease and admits the request.
//! - **Top-up** ([`Lease::top_up`]): a local admission that leaves less than half of what is
//!   wanted starts a call, in the background, for what the lease lacks of it; requests go on
//!   being admitted from what is held meanwhile, so a busy replica's requests never wait on
//!   Redis.
//! - **Size**: what is wanted follows use, up to `lease_requests` / `lease_tokens`: the request
//!   alone at first, doubled by a top-up or a lease that ran out before it expired, twice what
//!   was admitted after an expiry. A replica that rarely sees a deployment holds nothing of it.
//! - Only one renewal or top-up is in flight at a time; a request the lease cannot hold while
//!   one is goes to the store by itself, as without leases.
//! - **Refusal** ([`Lease::refused`]): a renewal the store refused leaves the buckets it saw
//!   with the lease, and requests are refused locally until their refill alone would hold
//!   `replicas` requests (at most the lease's size), so traffic past the quota does not cost the
//!   store a call per request either.
//! - **Settlement** ([`Lease::settle`]): a refund (reserved more than used) is held, up to the
//!   lease's size; a charge is taken from what is held as far as it goes. The rest goes to the
//!   shared buckets.
//! - **Expiry** ([`Lease::expire`]): once `lease_ms` has passed, what is held goes back to the
//!   shared buckets (by the store's sweeper, or by the next renewal).
//!
//! # The bound
//!
//! Claim: over any interval `[t0, t1]`, the requests (and reserved tokens) admitted by all the
//! replicas together are at most the shared bucket's capacity, plus its refill over the
//! interval, plus what the replicas held in leases at `t0`, which is at most `replicas × lease`.
//! From a start where no lease is held, as in a fresh deployment, the last term is zero: leases
//! then admit no more than one shared bucket alone would. (For tokens, real counts above their
//! reservations add debt on top, exactly as without leases.)
//!
//! Proof. Count units (requests, or tokens) in three places: the shared bucket's level `S`, the
//! replicas' leases `H` (the sum of what each holds), and the units admitted since `t0`, `A`.
//! Every way a unit moves keeps `A + S + H` from growing by more than the refill:
//! - the store admits a request without a lease: `S` down by one request and its reservation,
//!   `A` up by the same;
//! - a renewal: what the lease held goes back to `S` (`H` down, `S` up by at most the same: the
//!   bucket is capped at its capacity, so a unit can be lost, never made), then the grant moves
//!   from `S` to `H` and the request's own units from `H` to `A`. The grant never exceeds `S`,
//!   which never goes below zero by a grant. A top-up is the same without the first step;
//! - [`Lease::take`]: units from `H` to `A`, only what `H` has;
//! - a reply that never came (timeout, failover): what was sent back and what was granted are
//!   both forgotten. `H` loses them; `S` may or may not have them. Units are lost, never made;
//! - expiry: `H` to `S`, capped as above;
//! - settlement moves the difference between a reservation and the real count between `A` and
//!   `H` or `S`: a refund leaves `A` and a charge joins it, exactly as without leases (a charge
//!   that `H` cannot cover is debt in `S`, which later requests wait out);
//! - refill: `S` up, at most by the refill of the interval (capped at capacity).
//!
//! So `A(t1) ≤ S(t0) + H(t0) + refill - S(t1) - H(t1) ≤ capacity + refill + H(t0)`, as `H`
//! and `S` are never below zero (but for the tokens' debt, above). A replica holds one lease
//! per deployment, and never more than its size: a grant (a renewal's, after what was held went
//! back; or a top-up's, of what the lease lacked when it was asked) is held up to
//! `lease_requests` requests and `lease_tokens` tokens, any excess going back to `S`; a refund
//! is held up to `lease_tokens`. Hence `H(t0) ≤ replicas × lease`. ∎
//!
//! The price is the other way: units held by an idle replica are unavailable to the others for
//! at most `lease_ms` (plus the sweeper's tick), and units lost with a reply that never came
//! are back only with the refill, as if a request had used them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::{Buckets, Denial, LimitKind, Limits, QuotaState};

/// How much one lease takes from the shared buckets: `requests` requests and `tokens` tokens,
/// the renewing request's included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseSize {
    pub requests: u64,
    pub tokens: u64,
}

impl LeaseSize {
    /// `percent` of each of `limits` (rounded up; at least one of each).
    pub fn share(limits: Limits, percent: u64) -> LeaseSize {
        let part = |limit: u64| (u128::from(limit) * u128::from(percent)).div_ceil(100).max(1) as u64;
        LeaseSize { requests: part(limits.requests_per_minute), tokens: part(limits.tokens_per_minute) }
    }
}

/// One deployment's lease on one replica.
#[derive(Debug)]
pub struct Lease {
    held: Mutex<Held>,
    /// A renewal or top-up is in flight (at most one at a time).
    renewing: AtomicBool,
}

#[derive(Debug)]
struct Held {
    size: LeaseSize,
    /// Something is held (granted and not yet gone back).
    live: bool,
    requests: u64,
    tokens: u64,
    /// When what is held goes back (the clock's nanoseconds).
    expires_ns: u64,
    /// The shared buckets as the last grant left them (for the headers of local admissions).
    shared: QuotaState,
    /// Listed with the store's sweeper (which unlists it once it has gone back).
    listed: bool,
    /// The shared buckets as a refused renewal left them, as of then, and the requests they
    /// must hold again before the store is asked (see [`Lease::refused`]).
    refused: Option<(Buckets, u64)>,
    /// The requests a lease is asked for now, at most `size.requests` (see [`Lease::renew`]).
    want: u64,
    /// Requests admitted locally since the last renewal (top-ups included).
    used: u64,
}

/// Requests and tokens: what a lease held (to be given back), or asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unused {
    pub requests: u64,
    pub tokens: u64,
}

impl Unused {
    pub fn is_empty(&self) -> bool {
        self.requests == 0 && self.tokens == 0
    }
}

/// A local admission.
#[derive(Debug)]
pub struct Taken {
    /// The headers' view: the shared buckets as last seen, plus what is still held.
    pub state: QuotaState,
    /// Less than half the lease is left: time to top it up (in the background).
    pub low: bool,
}

/// The sweeper's verdict on a listed lease.
#[derive(Debug, PartialEq, Eq)]
pub enum Sweep {
    /// Still live: look again later.
    Keep,
    /// Gone back (or nothing held): unlist it, and give this back to the shared buckets.
    Unlist(Unused),
}

/// The one call for more in flight: a renewal (what the lease held goes back with it, and it
/// admits the request that could not be admitted locally), or a top-up (what is held stays; it
/// asks for what the lease lacks of its size). Dropped without [`Renewal::granted`], nothing
/// more is held (the reply did not come, or the store refused).
#[derive(Debug)]
pub struct Renewal {
    lease: Arc<Lease>,
    /// Sent back with the call.
    pub unused: Unused,
    /// Asked for (a renewal: the lease's size, the renewing request's own units included).
    pub ask: Unused,
    /// A renewal (a request is to be admitted with it), not a top-up.
    pub admits: bool,
}

/// A renewal's or top-up's grant, as held.
#[derive(Debug)]
pub struct Granted {
    /// The lease must be listed with the sweeper (it was not).
    pub unlisted: bool,
    /// The headers' view: the shared buckets as the grant left them, plus what is held.
    pub state: QuotaState,
    /// Granted beyond the lease's size (refunds held meanwhile, or a reload made it smaller):
    /// to be given back.
    pub excess: Unused,
}

impl Lease {
    pub fn new(size: LeaseSize) -> Lease {
        Lease {
            held: Mutex::new(Held {
                size,
                live: false,
                requests: 0,
                tokens: 0,
                expires_ns: 0,
                shared: QuotaState::default(),
                listed: false,
                refused: None,
                want: 1,
                used: 0,
            }),
            renewing: AtomicBool::new(false),
        }
    }

    /// A reload's size: used from the next grant.
    pub fn set_size(&self, size: LeaseSize) {
        self.lock().size = size;
    }

    pub fn size(&self) -> LeaseSize {
        self.lock().size
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One request and `tokens` out of what is held, if it holds them and has not expired.
    pub fn take(&self, tokens: u64, now_ns: u64) -> Option<Taken> {
        let mut held = self.lock();
        if !held.live || now_ns >= held.expires_ns || held.requests == 0 || held.tokens < tokens {
            return None;
        }
        held.requests -= 1;
        held.tokens -= tokens;
        held.used += 1;
        let low = held.requests * 2 < held.want || held.tokens * 2 < tokens_for(held.size, held.want);
        Some(Taken { state: view(&held), low })
    }

    fn begin(self: &Arc<Self>) -> bool {
        !self.renewing.swap(true, Ordering::Acquire)
    }

    /// The store refused a renewal: its buckets (`shared`, refilling from `now_ns`) are kept, so
    /// that the lease refuses locally ([`Lease::still_refused`]) until their refill alone would
    /// hold `replicas` requests (at most the lease's size), instead of asking again. Waiting for
    /// one request each, replicas that all see traffic past the quota would each ask every time
    /// one refills, one winning and the others refused; waiting for `replicas`, about one asks
    /// per request the bucket refills, and it takes what refilled (a replica alone loses
    /// nothing: it takes them all). Other replicas' give-backs and refunds are not seen
    /// meanwhile: at worst a request is refused that the store would have admitted, within the
    /// wait the refusal tells the client.
    pub fn refused(&self, shared: Buckets, now_ns: u64, replicas: u64) {
        let snapshot = Buckets { requests: shared.requests.as_of(now_ns), tokens: shared.tokens.as_of(now_ns) };
        let mut held = self.lock();
        let wait_for = replicas.clamp(1, held.size.requests.max(1));
        held.refused = Some((snapshot, wait_for));
    }

    /// The refusal to answer now, while the shared buckets as last refused (with their refill
    /// since) would not hold what [`Lease::refused`] waits for and `tokens`; `None` (and the
    /// refusal forgotten) once they would: then it is the store's to decide.
    pub fn still_refused(&self, tokens: u64, now_ns: u64) -> Option<Denial> {
        let mut held = self.lock();
        let (mut buckets, wait_for) = held.refused?;
        buckets.requests.refill(now_ns);
        buckets.tokens.refill(now_ns);
        if buckets.requests.has(wait_for) && buckets.tokens.has(tokens) {
            held.refused = None;
            return None;
        }
        drop(held);
        let mut denial = buckets.denial(tokens);
        if let Denial::Exhausted { limit, retry_after_ns, state } = &mut denial {
            let requests_in = buckets.requests.wait_ns_for(wait_for).unwrap_or(u64::MAX);
            if requests_in > 0 {
                // (The reset of the requests bucket is when it holds what is waited for.)
                state.requests_full_in_ns = requests_in;
                if requests_in > *retry_after_ns {
                    (*limit, *retry_after_ns) = (LimitKind::Requests, requests_in);
                }
            }
        }
        Some(denial)
    }

    /// Starts a renewal, unless a call for more is in flight: what is held comes out (to go
    /// back with it). The lease asked for follows this replica's use, up to the lease's size:
    /// one that ran out before it expired is doubled; else it is twice what the last one
    /// admitted, its top-ups included (at least the renewing request alone). So a replica that sees a deployment
    /// rarely holds nothing of it (nothing to give back, no unused units), and a busy one
    /// reaches the full size within a few renewals.
    pub fn renew(self: &Arc<Self>, now_ns: u64) -> Option<Renewal> {
        if !self.begin() {
            return None;
        }
        let mut held = self.lock();
        let ran_out = held.live && now_ns < held.expires_ns;
        let size = held.size.requests.max(1);
        held.want = if ran_out { held.want.saturating_mul(2) } else { held.used.saturating_mul(2) }.clamp(1, size);
        held.used = 0;
        let unused = take_unused(&mut held);
        let ask = Unused { requests: held.want, tokens: tokens_for(held.size, held.want) };
        drop(held);
        Some(Renewal { lease: Arc::clone(self), unused, ask, admits: true })
    }

    /// Starts a top-up, unless a call for more is in flight or nothing is held. A lease half
    /// used before it expired is used faster than it is asked for: what is wanted is doubled
    /// (up to the size, see [`Lease::renew`]), and the top-up asks for what the lease lacks of
    /// it, of the requests, of the tokens, or both, whichever is under half. (Tokens only when
    /// they are low: most of a reservation usually comes back with its settlement, and a lease
    /// topped up meanwhile would have to send those refunds on to the store.)
    pub fn top_up(self: &Arc<Self>) -> Option<Renewal> {
        if !self.begin() {
            return None;
        }
        let mut held = self.lock();
        if held.live {
            held.want = held.want.saturating_mul(2).min(held.size.requests.max(1));
        }
        let lacks = |held: u64, want: u64| if held * 2 < want { want - held } else { 0 };
        let ask = Unused {
            requests: lacks(held.requests, held.want),
            tokens: lacks(held.tokens, tokens_for(held.size, held.want)),
        };
        let live = held.live;
        drop(held);
        let renewal = Renewal { lease: Arc::clone(self), unused: Unused::default(), ask, admits: false };
        // (Dropped here when there is nothing to ask for: the flag is cleared.)
        (live && !ask.is_empty()).then_some(renewal)
    }

    /// What it holds now (expired or not: until it has gone back, it is not the store's).
    pub fn held(&self) -> Unused {
        let held = self.lock();
        if held.live { Unused { requests: held.requests, tokens: held.tokens } } else { Unused::default() }
    }

    /// A settled request's `reserved - actual` (`delta`; negative: a charge), as far as the lease
    /// takes it; the rest (to go to the shared buckets) is returned. A refund is held up to the
    /// lease's size of tokens, a charge comes out of what is held.
    pub fn settle(&self, delta: i64) -> i64 {
        let mut held = self.lock();
        if !held.live || delta == 0 {
            return delta;
        }
        if delta > 0 {
            let room = held.size.tokens.saturating_sub(held.tokens);
            let kept = room.min(delta as u64);
            held.tokens += kept;
            delta - kept as i64
        } else {
            let owed = delta.unsigned_abs();
            let paid = owed.min(held.tokens);
            held.tokens -= paid;
            -((owed - paid) as i64)
        }
    }

    /// For the sweeper: once expired, what is held comes out to go back.
    pub fn expire(&self, now_ns: u64) -> Sweep {
        let mut held = self.lock();
        if held.live && now_ns < held.expires_ns {
            return Sweep::Keep;
        }
        held.listed = false;
        Sweep::Unlist(take_unused(&mut held))
    }

    /// At shutdown: everything held comes out to go back, expired or not.
    pub fn give_back(&self) -> Unused {
        let mut held = self.lock();
        held.listed = false;
        take_unused(&mut held)
    }
}

/// The tokens of a lease of `want` requests: the same share of the lease's tokens (rounded up).
fn tokens_for(size: LeaseSize, want: u64) -> u64 {
    if want >= size.requests {
        return size.tokens;
    }
    (u128::from(size.tokens) * u128::from(want)).div_ceil(u128::from(size.requests.max(1))) as u64
}

fn take_unused(held: &mut Held) -> Unused {
    let unused = if held.live { Unused { requests: held.requests, tokens: held.tokens } } else { Unused::default() };
    held.live = false;
    held.requests = 0;
    held.tokens = 0;
    unused
}

impl Renewal {
    /// The store granted `requests` and `tokens` (beyond a renewing request's own) and left its
    /// buckets as `shared`: held (up to the lease's size) until `expires_ns`.
    pub fn granted(self, requests: u64, tokens: u64, shared: QuotaState, expires_ns: u64) -> Granted {
        let mut held = self.lease.lock();
        let size = held.size;
        let (all_requests, all_tokens) = (held.requests.saturating_add(requests), held.tokens.saturating_add(tokens));
        held.live = true;
        held.requests = all_requests.min(size.requests);
        held.tokens = all_tokens.min(size.tokens);
        held.expires_ns = expires_ns;
        held.shared = shared;
        held.refused = None;
        let excess = Unused { requests: all_requests - held.requests, tokens: all_tokens - held.tokens };
        let unlisted = !std::mem::replace(&mut held.listed, true);
        Granted { unlisted, state: view(&held), excess }
    }
}

impl Drop for Renewal {
    fn drop(&mut self) {
        self.lease.renewing.store(false, Ordering::Release);
    }
}

/// The shared buckets as last seen plus what is held (capped at the limits).
fn view(held: &Held) -> QuotaState {
    let mut state = held.shared;
    state.remaining_requests = state.remaining_requests.saturating_add(held.requests).min(state.limit_requests);
    state.remaining_tokens = state.remaining_tokens.saturating_add(held.tokens).min(state.limit_tokens);
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: LeaseSize = LeaseSize { requests: 10, tokens: 1_000 };

    fn shared() -> QuotaState {
        QuotaState {
            limit_requests: 100,
            remaining_requests: 50,
            limit_tokens: 10_000,
            remaining_tokens: 5_000,
            ..Default::default()
        }
    }

    fn lease() -> Arc<Lease> {
        Arc::new(Lease::new(SIZE))
    }

    /// A renewal at time 0 and its grant.
    fn granted(lease: &Arc<Lease>, requests: u64, tokens: u64, expires_ns: u64) -> Granted {
        lease.renew(0).expect("no call in flight").granted(requests, tokens, shared(), expires_ns)
    }

    /// Renewals that ran out until the lease asked for is its whole size, then a grant.
    fn grown(lease: &Arc<Lease>, requests: u64, tokens: u64, expires_ns: u64) -> Granted {
        for _ in 0..5 {
            granted(lease, 0, 0, expires_ns);
        }
        let renewal = lease.renew(0).expect("no call in flight");
        assert_eq!(renewal.ask, Unused { requests: 10, tokens: 1_000 });
        renewal.granted(requests, tokens, shared(), expires_ns)
    }

    #[test]
    fn the_lease_asked_for_doubles_when_it_ran_out_and_follows_use_after_it_expired() {
        let lease = lease();
        let ask = |lease: &Arc<Lease>, now_ns: u64| {
            let renewal = lease.renew(now_ns).expect("no call in flight");
            let ask = renewal.ask;
            renewal.granted(ask.requests - 1, ask.tokens, shared(), now_ns + 1_000);
            ask
        };
        assert_eq!(ask(&lease, 0), Unused { requests: 1, tokens: 100 }, "a first lease: the request alone");
        assert_eq!(ask(&lease, 10), Unused { requests: 2, tokens: 200 }, "ran out before it expired: doubled");
        assert_eq!(ask(&lease, 20).requests, 4);
        assert_eq!(ask(&lease, 30).requests, 8);
        assert_eq!(ask(&lease, 40), Unused { requests: 10, tokens: 1_000 }, "at most the size");
        assert!(lease.take(1, 50).is_some() && lease.take(1, 50).is_some());
        assert_eq!(ask(&lease, 5_000).requests, 4, "expired having admitted 2: twice that");
        assert_eq!(ask(&lease, 10_000).requests, 1, "expired unused: the request alone");
        let renewal = lease.renew(20_000).expect("no call in flight");
        assert_eq!(renewal.ask.requests, 1);
        renewal.granted(0, 0, shared(), 21_000);
        assert_eq!(lease.held(), Unused::default(), "a rarely used lease holds nothing");
    }

    #[test]
    fn a_lease_admits_what_it_holds_and_no_more() {
        let lease = lease();
        assert!(lease.take(1, 0).is_none(), "nothing held yet");
        assert!(granted(&lease, 2, 300, 1_000).unlisted, "the first grant lists it with the sweeper");
        let taken = lease.take(100, 10).expect("held");
        assert_eq!((taken.state.remaining_requests, taken.state.remaining_tokens), (51, 5_200), "shared plus held");
        assert!(lease.take(250, 10).is_none(), "200 tokens left");
        assert!(lease.take(200, 10).is_some());
        assert!(lease.take(0, 10).is_none(), "no request left");
    }

    #[test]
    fn an_expired_lease_admits_nothing_and_goes_back_whole() {
        let lease = lease();
        granted(&lease, 5, 500, 1_000);
        assert_eq!(lease.expire(999), Sweep::Keep);
        assert!(lease.take(1, 1_000).is_none(), "expired");
        assert_eq!(lease.expire(1_000), Sweep::Unlist(Unused { requests: 5, tokens: 500 }));
        assert_eq!(lease.expire(2_000), Sweep::Unlist(Unused::default()), "nothing twice");
        assert!(granted(&lease, 1, 1, 3_000).unlisted, "unlisted: the next grant lists it again");
        assert!(!granted(&lease, 1, 1, 3_000).unlisted, "still listed");
    }

    #[test]
    fn one_call_for_more_at_a_time_and_a_renewal_sends_back_what_was_held() {
        let lease = lease();
        granted(&lease, 4, 400, 1_000);
        let renewal = lease.renew(10).expect("none in flight");
        assert_eq!(renewal.unused, Unused { requests: 4, tokens: 400 });
        assert!(lease.renew(10).is_none() && lease.top_up().is_none(), "one in flight");
        assert!(lease.take(1, 10).is_none(), "what was held is on its way back");
        drop(renewal); // no reply: nothing held, and the next may renew
        let again = lease.renew(10).expect("the failed one is over");
        assert_eq!(again.unused, Unused::default(), "what went with the lost call is not sent twice");
    }

    #[test]
    fn a_low_lease_is_topped_up_to_its_size_while_it_goes_on_admitting() {
        let lease = lease();
        grown(&lease, 6, 1_000, 1_000);
        assert!(!lease.take(10, 0).expect("held").low, "5 of 10 requests left");
        let taken = lease.take(10, 0).expect("held");
        assert!(taken.low, "4 of 10 requests left");
        let top_up = lease.top_up().expect("none in flight");
        // The tokens are not low (980 of 1,000): only requests are asked for.
        assert_eq!((top_up.unused, top_up.ask), (Unused::default(), Unused { requests: 6, tokens: 0 }));
        assert!(lease.take(10, 0).is_some(), "what is held still admits during a top-up");
        // 3 and 970 held now: 9 and 40 more would pass the size.
        let grant = top_up.granted(9, 40, shared(), 2_000);
        assert_eq!(grant.excess, Unused { requests: 2, tokens: 10 }, "beyond the size: given back");
        assert_eq!(lease.give_back(), Unused { requests: 10, tokens: 1_000 });
        assert!(lease.top_up().is_none(), "nothing held: a renewal's to do, not a top-up's");
        assert!(lease.renew(0).is_some(), "and the declined top-up left no call in flight");
        grown(&lease, 9, 400, 3_000);
        let top_up = lease.top_up().expect("none in flight");
        assert_eq!(top_up.ask, Unused { requests: 0, tokens: 600 }, "tokens low, requests not");
    }

    #[test]
    fn a_refusal_is_answered_locally_until_the_refill_alone_would_hold_the_request() {
        use crate::core::quota::bucket::{SCALE, TokenBucket};
        let lease = lease();
        assert!(lease.still_refused(1, 0).is_none(), "nothing refused yet");
        // 60 requests a minute (one a second): half a request left; 1,000 tokens a minute: 100.
        let shared = Buckets {
            requests: TokenBucket::at_level(60, SCALE / 2),
            tokens: TokenBucket::at_level(1_000, 100 * SCALE),
        };
        lease.refused(shared, 1_000_000_000, 1);
        let Some(Denial::Exhausted { retry_after_ns, .. }) = lease.still_refused(1, 1_200_000_000) else {
            panic!("half a request and 0.2 s of refill: still refused");
        };
        assert_eq!(retry_after_ns, 300_000_000, "the rest of the half request's refill");
        // 0.5 s later a request has refilled, but the tokens only to 108.
        assert!(lease.still_refused(500, 1_500_000_000).is_some(), "500 tokens are not there yet");
        assert!(lease.still_refused(100, 1_500_000_000).is_none(), "100 are: the store's to decide");
        assert!(lease.still_refused(500, 1_500_000_000).is_none(), "and the refusal is forgotten");
        lease.refused(shared, 0, 1);
        granted(&lease, 1, 1, 10);
        assert!(lease.still_refused(1, 10).is_none(), "a grant forgets the refusal");
    }

    #[test]
    fn a_top_up_doubles_what_is_wanted() {
        let lease = lease();
        granted(&lease, 0, 0, 1_000); // a first lease: the request alone
        lease.renew(10).expect("none in flight").granted(1, 100, shared(), 1_000); // ran out: 2
        let taken = lease.take(50, 20).expect("held");
        assert!(taken.low, "nothing left of 2");
        let top_up = lease.top_up().expect("none in flight");
        assert_eq!(top_up.ask, Unused { requests: 4, tokens: 350 }, "4 wanted now, of 400 tokens");
    }

    #[test]
    fn a_refusal_among_replicas_waits_for_as_many_requests_as_there_are_replicas() {
        use crate::core::quota::bucket::TokenBucket;
        let lease = lease(); // 10 requests a lease
        // 60 requests a minute, none left.
        let shared = Buckets {
            requests: TokenBucket::at_level(60, 0),
            tokens: TokenBucket::at_level(1_000, 1_000 * crate::core::quota::bucket::SCALE),
        };
        lease.refused(shared, 0, 3);
        let Some(Denial::Exhausted { limit, retry_after_ns, state }) = lease.still_refused(1, 1_500_000_000) else {
            panic!("1.5 requests refilled of the 3 waited for: still refused");
        };
        assert_eq!((limit, retry_after_ns), (LimitKind::Requests, 1_500_000_000), "until 3 have refilled");
        assert_eq!(state.requests_full_in_ns, 1_500_000_000, "RateLimit's reset agrees with retry-after");
        assert!(lease.still_refused(1, 3_000_000_000).is_none(), "3 refilled: the store's to decide");
        lease.refused(shared, 0, 50);
        assert!(lease.still_refused(1, 9_999_999_999).is_some(), "at most the lease's size: 10");
        assert!(lease.still_refused(1, 10_000_000_000).is_none());
    }

    #[test]
    fn a_grant_is_held_up_to_the_lease_size_only() {
        let lease = lease();
        let granted = granted(&lease, 50, 50_000, 1_000);
        assert_eq!(granted.excess, Unused { requests: 40, tokens: 49_000 });
        assert_eq!(lease.give_back(), Unused { requests: 10, tokens: 1_000 });
    }

    #[test]
    fn refunds_are_held_up_to_the_size_and_charges_come_out_of_what_is_held() {
        let lease = lease();
        assert_eq!(lease.settle(70), 70, "nothing held: all to the shared buckets");
        granted(&lease, 1, 900, 1_000);
        assert_eq!(lease.settle(70), 0);
        assert_eq!(lease.settle(70), 40, "held up to 1,000 tokens");
        assert_eq!(lease.settle(-600), 0);
        assert_eq!(lease.settle(-600), -200, "400 held, 200 owed to the shared buckets");
        assert_eq!(lease.give_back(), Unused { requests: 1, tokens: 0 });
    }

    #[test]
    fn a_share_rounds_up_and_is_at_least_one() {
        let limits = Limits { requests_per_minute: 1_000, tokens_per_minute: 200_000 };
        assert_eq!(LeaseSize::share(limits, 1), LeaseSize { requests: 10, tokens: 2_000 });
        let small = Limits { requests_per_minute: 3, tokens_per_minute: 150 };
        assert_eq!(LeaseSize::share(small, 1), LeaseSize { requests: 1, tokens: 2 });
    }
}
