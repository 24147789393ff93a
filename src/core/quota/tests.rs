use std::sync::atomic::{AtomicU64, Ordering};

use super::*;
use crate::core::clock::ManualClock;
use proptest::prelude::*;

fn quota(requests: u64, tokens: u64) -> (DeploymentQuota, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(0));
    let q = DeploymentQuota::new(Limits { requests_per_minute: requests, tokens_per_minute: tokens }, clock.clone());
    (q, clock)
}

#[test]
fn admission_takes_both_or_neither() {
    let (q, _) = quota(10, 100);
    let state = q.admit(60).unwrap();
    assert_eq!((state.remaining_requests, state.remaining_tokens), (9, 40));
    // Not enough tokens: the request is not taken either.
    let Err(Denial::Exhausted { limit: LimitKind::Tokens, .. }) = q.admit(50) else { panic!() };
    assert_eq!(q.state().remaining_requests, 9);
    assert_eq!(q.state().remaining_tokens, 40);
}

#[test]
fn the_requests_limit_is_named_when_it_is_the_one_hit() {
    let (q, _) = quota(2, 1000);
    q.admit(1).unwrap();
    q.admit(1).unwrap();
    let Err(Denial::Exhausted { limit, retry_after_ns, state }) = q.admit(1) else { panic!() };
    assert_eq!(limit, LimitKind::Requests);
    assert_eq!(retry_after_ns, 30_000_000_000);
    assert_eq!(state.remaining_tokens, 998, "nothing taken");
}

#[test]
fn more_than_the_capacity_never_fits() {
    let (q, _) = quota(10, 100);
    assert_eq!(q.admit(101), Err(Denial::ExceedsCapacity { reserved: 101, capacity: 100 }));
    assert_eq!(q.state().remaining_requests, 10);
}

#[test]
fn retry_after_is_exact_for_this_request() {
    let (q, clock) = quota(1000, 200_000);
    q.admit(199_000).unwrap();
    let Err(Denial::Exhausted { retry_after_ns, .. }) = q.admit(5_000) else { panic!() };
    // 4,000 tokens missing at 200,000 per minute: 1.2 s.
    assert_eq!(retry_after_ns, 1_200_000_000);
    clock.advance_ns(retry_after_ns - 1);
    assert!(q.admit(5_000).is_err());
    clock.advance_ns(1);
    assert!(q.admit(5_000).is_ok());
}

#[test]
fn reconciliation_refunds_and_charges_debt() {
    let (q, clock) = quota(1000, 1000);
    q.admit(500).unwrap();
    q.reconcile(500, 100);
    assert_eq!(q.state().remaining_tokens, 900);
    q.reconcile(0, 2000);
    assert_eq!(q.state().remaining_tokens, 0, "headers never show negative");
    let Err(Denial::Exhausted { retry_after_ns, .. }) = q.admit(1) else { panic!() };
    // 1,100 tokens of debt plus 1 at 1,000 per minute.
    assert_eq!(retry_after_ns, 66_060_000_000);
    clock.advance_ns(retry_after_ns);
    assert!(q.admit(1).is_ok());
}

#[test]
fn a_refund_gives_back_the_request_and_its_tokens() {
    let (q, _) = quota(2, 100);
    q.admit(70).unwrap();
    q.refund(70);
    assert_eq!((q.state().remaining_requests, q.state().remaining_tokens), (2, 100));
    q.admit(70).unwrap();
    q.admit(30).unwrap();
    q.refund(30);
    assert_eq!((q.state().remaining_requests, q.state().remaining_tokens), (1, 30));
}

#[test]
fn the_wait_for_a_reservation_is_the_later_of_the_two_buckets() {
    let (q, clock) = quota(60, 600);
    assert_eq!(q.wait_ns_for(600), Some(0));
    assert_eq!(q.wait_ns_for(601), None);
    q.admit(600).unwrap();
    // 600 tokens a minute: 10 a second, so 20 tokens in 2 s; the request bucket has room.
    assert_eq!(q.wait_ns_for(20), Some(2_000_000_000));
    clock.advance_ms(1_000);
    assert_eq!(q.wait_ns_for(20), Some(1_000_000_000));
}

#[test]
fn new_limits_keep_the_level() {
    let (q, _) = quota(10, 100);
    q.admit(90).unwrap();
    q.set_limits(Limits { requests_per_minute: 20, tokens_per_minute: 1000 });
    let s = q.state();
    assert_eq!((s.limit_requests, s.remaining_requests, s.limit_tokens, s.remaining_tokens), (20, 9, 1000, 10));
}

#[test]
fn concurrent_admissions_never_over_admit() {
    let (q, _) = quota(1000, 200_000);
    let q = Arc::new(q);
    let admitted = Arc::new(AtomicU64::new(0));
    let tokens = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let (q, admitted, tokens) = (q.clone(), admitted.clone(), tokens.clone());
            std::thread::spawn(move || {
                for j in 0..500u64 {
                    let want = 1 + (i * 37 + j * 11) % 700;
                    if q.admit(want).is_ok() {
                        admitted.fetch_add(1, Ordering::Relaxed);
                        tokens.fetch_add(want, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // The clock did not move: no refill, so the capacities bound everything.
    assert!(admitted.load(Ordering::Relaxed) <= 1000);
    assert!(tokens.load(Ordering::Relaxed) <= 200_000);
    let s = q.state();
    assert_eq!(s.remaining_requests, 1000 - admitted.load(Ordering::Relaxed));
    assert_eq!(s.remaining_tokens, 200_000 - tokens.load(Ordering::Relaxed));
}

proptest! {
    /// Any interleaving of admissions, reconciliations, clock moves (also backwards) and limit
    /// changes: the request bucket never admits more than its first minute plus what the limits
    /// in force refilled, a clock that steps back and returns refills nothing, and levels stay
    /// within the capacity in force. (Retry times are checked exactly in
    /// `bucket::tests::wait_ns_for_is_tight`.)
    #[test]
    fn admission_sequences(ops in proptest::collection::vec((0u8..5, 0u64..3_000_000_000, 0u64..3_000), 1..150)) {
        let (q, clock) = quota(100, 10_000);
        let mut now = 0u64;
        let mut admitted_requests = 0u64;
        let mut limits = Limits { requests_per_minute: 100, tokens_per_minute: 10_000 };
        // Requests refilled so far, in 1/60e9 of a request: the sum of elapsed ns x requests per
        // minute in force.
        let mut refilled: u128 = 0;
        for (op, dt, n) in ops {
            match op {
                0 => {
                    now += dt;
                    refilled += u128::from(dt) * u128::from(limits.requests_per_minute);
                    clock.set_ns(now);
                }
                1 => {
                    if q.admit(n).is_ok() {
                        admitted_requests += 1;
                    }
                }
                2 => q.reconcile(n, n / 2),
                3 => {
                    // The clock stepping back refills nothing, and coming back refills nothing either.
                    let before = q.state();
                    clock.set_ns(now.saturating_sub(dt));
                    let back = q.state();
                    prop_assert!(back.remaining_tokens <= before.remaining_tokens);
                    prop_assert!(back.remaining_requests <= before.remaining_requests);
                    clock.set_ns(now);
                    prop_assert_eq!(q.state().remaining_requests, before.remaining_requests);
                    prop_assert_eq!(q.state().remaining_tokens, before.remaining_tokens);
                }
                _ => {
                    // A limit change keeps the level (clamped to a lower capacity).
                    let before = q.state();
                    limits = Limits { requests_per_minute: 1 + n % 200, tokens_per_minute: 1 + dt % 20_000 };
                    q.set_limits(limits);
                    let after = q.state();
                    prop_assert_eq!(after.limit_requests, limits.requests_per_minute);
                    prop_assert_eq!(after.remaining_requests, before.remaining_requests.min(limits.requests_per_minute));
                }
            }
            let s = q.state();
            prop_assert!(s.remaining_requests <= limits.requests_per_minute);
            prop_assert!(s.remaining_tokens <= limits.tokens_per_minute);
            let bound = 100 + (refilled / 60_000_000_000) as u64;
            prop_assert!(admitted_requests <= bound, "{} admitted, at most {} refilled and the first minute", admitted_requests, bound);
        }
    }
}

mod levels {
    use super::*;
    use crate::core::quota::period::{PeriodKind, PeriodLimits, PeriodQuota};

    const NOW: u64 = 1_796_342_340; // 2026-12-03T23:59:00Z

    fn denied(levels: Levels<'_>, tokens: u64) -> (LevelDenial, Admitted) {
        *admit_levels(levels, tokens, NOW).expect_err("must be refused")
    }

    #[test]
    fn every_level_is_taken_together_or_none_is() {
        let (deployment, _) = quota(100, 10_000);
        let (grant, _) = quota(2, 10_000);
        let day = PeriodQuota::new(PeriodLimits { tokens_per_day: Some(250), ..Default::default() }, NOW);
        let levels = Levels { buckets: [Some(&deployment), Some(&grant)], periods: [Some(&day), None] };
        let admitted = admit_levels(levels, 100, NOW).unwrap();
        assert_eq!(admitted.buckets[0].unwrap().remaining_requests, 99);
        assert_eq!(admitted.buckets[1].unwrap().remaining_requests, 1);
        assert_eq!(admitted.periods[0].unwrap().usage.day_tokens, 100);
        // The day quota has 150 left: 200 does not fit, and nothing is taken anywhere.
        let (LevelDenial::Period { level: 0, denial }, seen) = denied(levels, 200) else { panic!() };
        assert_eq!((denial.kind, denial.used, denial.reset_unix), (PeriodKind::TokensPerDay, 100, NOW + 60));
        assert_eq!(seen.buckets[1].unwrap().remaining_requests, 1);
        assert_eq!(deployment.state().remaining_requests, 99);
        assert_eq!(grant.state().remaining_tokens, 9_900);
        admit_levels(levels, 100, NOW).unwrap();
        // The grant's two requests are used: refused by it, the deployment and the day untouched.
        let (LevelDenial::Rate { level: 1, denial: Denial::Exhausted { limit, retry_after_ns, .. } }, _) =
            denied(levels, 10)
        else {
            panic!()
        };
        assert_eq!((limit, retry_after_ns), (LimitKind::Requests, 30_000_000_000));
        assert_eq!(deployment.state().remaining_requests, 98);
        assert_eq!(day.usage(NOW).day_tokens, 200);
    }

    #[test]
    fn the_wait_is_until_every_level_has_room_and_the_longest_names_the_level() {
        let clock = Arc::new(ManualClock::new(0));
        let on = |r, t| DeploymentQuota::new(Limits { requests_per_minute: r, tokens_per_minute: t }, clock.clone());
        let (deployment, grant) = (on(60, 600), on(600, 60));
        let levels = Levels { buckets: [Some(&deployment), Some(&grant)], periods: [None, None] };
        admit_levels(levels, 60, NOW).unwrap();
        // Deployment: 540 tokens left, fine; grant: 0 of 60, refills 1 a second.
        let (LevelDenial::Rate { level, denial: Denial::Exhausted { retry_after_ns, .. } }, _) = denied(levels, 30)
        else {
            panic!()
        };
        assert_eq!((level, retry_after_ns), (1, 30_000_000_000));
        clock.advance_ns(29_999_999_999);
        assert!(admit_levels(levels, 30, NOW).is_err(), "a nanosecond early");
        clock.advance_ns(1);
        let admitted = admit_levels(levels, 30, NOW).unwrap();
        assert_eq!(admitted.buckets[1].unwrap().remaining_tokens, 0);
    }

    #[test]
    fn a_reservation_past_a_level_capacity_is_never_admissible() {
        let (deployment, _) = quota(10, 1_000);
        let (grant, _) = quota(10, 100);
        let levels = Levels { buckets: [Some(&deployment), Some(&grant)], periods: [None, None] };
        let (LevelDenial::Rate { level: 1, denial: Denial::ExceedsCapacity { capacity: 100, .. } }, _) =
            denied(levels, 101)
        else {
            panic!()
        };
    }

    proptest! {
        /// Over any sequence of admissions and reconciliations, a level never admits more
        /// requests than its capacity while the clock stands still, and the deployment level
        /// never admits more than the grant level lets through plus the endpoint callers.
        #[test]
        fn no_level_admits_past_its_limit(ops in proptest::collection::vec((0u64..50, 0u64..80, proptest::bool::ANY), 1..200)) {
            let (deployment, _) = quota(40, 1_000);
            let (grant, _) = quota(15, 300);
            let day = PeriodQuota::new(PeriodLimits { tokens_per_day: Some(700), requests_per_day: Some(25), ..Default::default() }, NOW);
            let levels = Levels { buckets: [Some(&deployment), Some(&grant)], periods: [Some(&day), None] };
            let (mut admitted, mut direct) = (0u64, 0u64);
            for (reserve, actual, via_grant) in ops {
                if via_grant {
                    if let Ok(a) = admit_levels(levels, reserve, NOW) {
                        admitted += 1;
                        grant.reconcile(reserve, actual);
                        deployment.reconcile(reserve, actual);
                        day.settle(a.stamp.unwrap(), reserve, actual);
                    }
                } else if deployment.admit(reserve).is_ok() {
                    direct += 1;
                }
            }
            prop_assert!(admitted <= 15);
            prop_assert!(admitted <= 25);
            prop_assert!(admitted + direct <= 40);
            prop_assert_eq!(day.usage(NOW).day_requests, admitted);
        }
    }
}
