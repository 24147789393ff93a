//! Time for the quota buckets, injected so tests move it instead of sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch of `at` (0 before it).
pub fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A monotonic clock in nanoseconds since an arbitrary start, and the wall clock beside it (for
/// what follows the calendar: the daily and monthly quotas).
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now_ns(&self) -> u64;

    /// The wall-clock time.
    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }

    /// Seconds since the Unix epoch, UTC (0 before it).
    fn unix_seconds(&self) -> u64 {
        unix_seconds(self.wall())
    }
}

/// The real clock: nanoseconds since the clock was made, from [`Instant`].
#[derive(Debug)]
pub struct MonotonicClock {
    start: Instant,
}

impl MonotonicClock {
    pub fn new() -> MonotonicClock {
        MonotonicClock { start: Instant::now() }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        MonotonicClock::new()
    }
}

impl Clock for MonotonicClock {
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

/// A clock that only moves when told to: for tests, and for replaying traffic. Its wall clock
/// moves with it: it starts at the real time (or the one [`set_unix_seconds`](Self::set_unix_seconds)
/// sets) and advances as the monotonic time does.
#[derive(Debug, Default)]
pub struct ManualClock {
    now: AtomicU64,
    /// Unix nanoseconds at monotonic time 0.
    wall_at_zero_ns: AtomicU64,
}

impl ManualClock {
    pub fn new(start_ns: u64) -> ManualClock {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        ManualClock { now: AtomicU64::new(start_ns), wall_at_zero_ns: AtomicU64::new(wall.saturating_sub(start_ns)) }
    }

    /// Sets the wall clock (the monotonic time does not move).
    pub fn set_unix_seconds(&self, seconds: u64) {
        let now = self.now.load(Ordering::SeqCst);
        self.wall_at_zero_ns.store(seconds.saturating_mul(1_000_000_000).saturating_sub(now), Ordering::SeqCst);
    }

    pub fn advance_ns(&self, ns: u64) {
        self.now.fetch_add(ns, Ordering::SeqCst);
    }

    pub fn advance_ms(&self, ms: u64) {
        self.advance_ns(ms * 1_000_000);
    }

    /// Sets the time, also backwards (the buckets must tolerate a clock that steps back).
    pub fn set_ns(&self, ns: u64) {
        self.now.store(ns, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ns(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }

    fn wall(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.wall_at_zero_ns.load(Ordering::SeqCst).saturating_add(self.now_ns()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manual_wall_clock_moves_with_the_monotonic_one() {
        let clock = ManualClock::new(5);
        clock.set_unix_seconds(1_000);
        assert_eq!(clock.unix_seconds(), 1_000);
        clock.advance_ms(2_500);
        assert_eq!(clock.unix_seconds(), 1_002);
        assert_eq!(clock.now_ns(), 2_500_000_005);
    }
}
