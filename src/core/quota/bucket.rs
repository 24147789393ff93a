//! Token-bucket arithmetic, exact: no floating point, no rounding drift.
//!
//! A bucket of capacity `C` per minute refills continuously at `C / 60 s`. The level is kept in
//! *scaled units* of `1 / 60e9` of a unit (a token or a request), so that `elapsed_ns × C` is the
//! exact refill in scaled units and taking `n` units subtracts `n × 60e9`. Levels may go below
//! zero (debt from reconciliation); later requests then wait for the refill.

/// Scaled units per whole unit: nanoseconds in a minute.
pub const SCALE: i128 = 60_000_000_000;

/// One bucket's state. Not thread-safe by itself: [`super::DeploymentQuota`] holds two under one lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenBucket {
    /// Capacity (and refill) per minute, in whole units.
    per_minute: u64,
    /// Current level in scaled units; at most `per_minute × SCALE`, may be negative.
    level: i128,
    /// When `level` was last brought up to date.
    updated_ns: u64,
}

impl TokenBucket {
    /// A full bucket.
    pub fn full(per_minute: u64, now_ns: u64) -> TokenBucket {
        TokenBucket { per_minute, level: capacity_scaled(per_minute), updated_ns: now_ns }
    }

    /// A bucket at a known level (scaled units), e.g. as the shared store reports it.
    pub fn at_level(per_minute: u64, level: i128) -> TokenBucket {
        TokenBucket { per_minute, level: level.min(capacity_scaled(per_minute)), updated_ns: 0 }
    }

    /// The same level, as of `now_ns` (it refills from then).
    pub fn as_of(self, now_ns: u64) -> TokenBucket {
        TokenBucket { updated_ns: now_ns, ..self }
    }

    pub fn per_minute(&self) -> u64 {
        self.per_minute
    }

    /// Brings the level up to `now_ns`. A clock that steps back adds nothing (and never removes).
    pub fn refill(&mut self, now_ns: u64) {
        if now_ns > self.updated_ns {
            let elapsed = (now_ns - self.updated_ns) as i128;
            let capacity = capacity_scaled(self.per_minute);
            // Saturating: a long idle period cannot overflow and never fills past capacity.
            self.level = capacity.min(self.level.saturating_add(elapsed.saturating_mul(self.per_minute as i128)));
            self.updated_ns = now_ns;
        }
    }

    /// Whether `units` can be taken now (after [`refill`](Self::refill)).
    pub fn has(&self, units: u64) -> bool {
        self.level >= units as i128 * SCALE
    }

    /// Takes `units` (no check: callers check first, or charge debt on purpose).
    pub fn take(&mut self, units: u64) {
        self.level = self.level.saturating_sub(units as i128 * SCALE);
    }

    /// Returns `units` (a refund), never past capacity.
    pub fn give(&mut self, units: u64) {
        self.level = capacity_scaled(self.per_minute).min(self.level.saturating_add(units as i128 * SCALE));
    }

    /// Whole units available now, never negative (what `x-ratelimit-remaining-*` shows).
    pub fn remaining(&self) -> u64 {
        if self.level <= 0 { 0 } else { (self.level / SCALE) as u64 }
    }

    /// Nanoseconds until the level reaches `units` (0 when it already has). `None` when it never
    /// can (more than the capacity, or an empty bucket that never refills).
    pub fn wait_ns_for(&self, units: u64) -> Option<u64> {
        if units > self.per_minute {
            return None;
        }
        let deficit = units as i128 * SCALE - self.level;
        if deficit <= 0 {
            return Some(0);
        }
        // ceil(deficit / per_minute): refill is per_minute scaled units per nanosecond.
        let rate = self.per_minute as i128;
        if rate == 0 {
            return None;
        }
        Some(u64::try_from((deficit + rate - 1) / rate).unwrap_or(u64::MAX))
    }

    /// Nanoseconds until the bucket is full again.
    pub fn ns_until_full(&self) -> u64 {
        self.wait_ns_for(self.per_minute).unwrap_or(0)
    }

    /// New capacity; the current level is kept (clamped to the new capacity): no free refill.
    pub fn set_per_minute(&mut self, per_minute: u64, now_ns: u64) {
        self.refill(now_ns);
        self.per_minute = per_minute;
        self.level = self.level.min(capacity_scaled(per_minute));
    }
}

fn capacity_scaled(per_minute: u64) -> i128 {
    per_minute as i128 * SCALE
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MINUTE: u64 = 60_000_000_000;

    #[test]
    fn a_fresh_bucket_bursts_its_minute_then_refills_continuously() {
        let mut b = TokenBucket::full(1000, 0);
        assert!(b.has(1000));
        b.take(1000);
        assert_eq!(b.remaining(), 0);
        assert!(!b.has(1));
        // 1000 per minute: one every 60 ms.
        b.refill(59_999_999);
        assert!(!b.has(1));
        b.refill(60_000_000);
        assert!(b.has(1));
        assert_eq!(b.remaining(), 1);
        b.refill(10 * MINUTE);
        assert_eq!(b.remaining(), 1000);
    }

    #[test]
    fn wait_is_exact() {
        let mut b = TokenBucket::full(200_000, 0);
        b.take(200_000);
        assert_eq!(b.wait_ns_for(1), Some(300_000));
        assert_eq!(b.wait_ns_for(200_000), Some(MINUTE));
        assert_eq!(b.wait_ns_for(200_001), None);
        let mut odd = TokenBucket::full(7, 0);
        odd.take(7);
        let wait = odd.wait_ns_for(1).unwrap();
        odd.refill(wait - 1);
        assert!(!odd.has(1));
        odd.refill(wait);
        assert!(odd.has(1));
    }

    #[test]
    fn debt_and_refunds() {
        let mut b = TokenBucket::full(100, 0);
        b.take(150);
        assert_eq!(b.remaining(), 0);
        assert_eq!(b.wait_ns_for(1), Some(MINUTE * 51 / 100));
        b.give(1000);
        assert_eq!(b.remaining(), 100, "a refund never overfills");
    }

    #[test]
    fn capacity_changes_keep_the_level() {
        let mut b = TokenBucket::full(100, 0);
        b.take(90);
        b.set_per_minute(1000, 0);
        assert_eq!(b.remaining(), 10, "raising the limit gives no free refill");
        b.set_per_minute(5, 0);
        assert_eq!(b.remaining(), 5, "lowering it clamps");
    }

    #[test]
    fn a_clock_stepping_back_changes_nothing() {
        let mut b = TokenBucket::full(100, MINUTE);
        b.take(100);
        b.refill(0);
        assert_eq!(b.remaining(), 0);
        b.refill(MINUTE + MINUTE / 100);
        assert_eq!(b.remaining(), 1);
    }

    proptest! {
        /// Over any sequence of takes and refills, what was taken never exceeds the capacity plus
        /// the refill over the elapsed time.
        #[test]
        fn never_admits_more_than_capacity_plus_refill(
            per_minute in 1u64..1_000_000,
            steps in proptest::collection::vec((0u64..2_000_000_000, 1u64..5_000), 1..200),
        ) {
            let mut b = TokenBucket::full(per_minute, 0);
            let mut now = 0u64;
            let mut taken: u128 = 0;
            for (dt, units) in steps {
                now += dt;
                b.refill(now);
                if b.has(units) {
                    b.take(units);
                    taken += units as u128;
                }
                // capacity + floor(refill) over [0, now]
                let bound = per_minute as u128 + (now as u128 * per_minute as u128) / MINUTE as u128;
                prop_assert!(taken <= bound, "taken {taken} > bound {bound}");
                prop_assert!(b.remaining() <= per_minute);
            }
        }

        /// Waiting exactly `wait_ns_for(n)` always makes room for `n`, and one nanosecond less does not.
        #[test]
        fn wait_ns_for_is_tight(per_minute in 1u64..10_000_000, taken in 0u64..20_000_000, want in 1u64..10_000_000) {
            prop_assume!(want <= per_minute);
            let mut b = TokenBucket::full(per_minute, 0);
            b.take(taken);
            let wait = b.wait_ns_for(want).unwrap();
            let mut later = b;
            later.refill(wait);
            prop_assert!(later.has(want));
            if wait > 0 {
                let mut earlier = b;
                earlier.refill(wait - 1);
                prop_assert!(!earlier.has(want));
            }
        }

        /// Take then give back the same amount restores the level exactly (below capacity).
        #[test]
        fn refunds_are_exact(per_minute in 1u64..1_000_000, first in 0u64..1_000_000, second in 0u64..1_000_000) {
            let mut b = TokenBucket::full(per_minute, 0);
            b.take(first);
            let before = b;
            b.take(second);
            b.give(second);
            prop_assert_eq!(b, before);
        }
    }
}
