//! Period quotas: tokens per day, tokens per month, requests per day, over UTC calendar periods
//! (a day from 00:00 UTC, a month from the 1st, 00:00 UTC), the way APIM's `token-quota` with
//! `token-quota-period` works.
//!
//! Unlike the per-minute buckets nothing refills: usage adds up until the period ends, and then
//! starts again from zero. Admission reserves the estimate, reconciliation charges the real count
//! in its place (which may end above the quota: the next request is then refused until the
//! period ends). A request counts in the period it arrived in, as its ledger line does (`time`),
//! so usage rebuilt from the ledger agrees with what was counted live: a reconciliation that
//! arrives after its period ended changes nothing.

use std::sync::{Mutex, MutexGuard, PoisonError};

const SECONDS_PER_DAY: u64 = 86_400;

/// A consumer's (or a grant's) period quotas; `None` is no quota.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeriodLimits {
    pub tokens_per_day: Option<u64>,
    pub tokens_per_month: Option<u64>,
    pub requests_per_day: Option<u64>,
}

impl PeriodLimits {
    pub fn is_empty(&self) -> bool {
        self.tokens_per_day.is_none() && self.tokens_per_month.is_none() && self.requests_per_day.is_none()
    }
}

/// Which period quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeriodKind {
    TokensPerDay,
    TokensPerMonth,
    RequestsPerDay,
}

impl PeriodKind {
    pub const ALL: [PeriodKind; 3] = [PeriodKind::TokensPerDay, PeriodKind::TokensPerMonth, PeriodKind::RequestsPerDay];

    pub fn as_str(self) -> &'static str {
        match self {
            PeriodKind::TokensPerDay => "tokens_per_day",
            PeriodKind::TokensPerMonth => "tokens_per_month",
            PeriodKind::RequestsPerDay => "requests_per_day",
        }
    }

    /// `day` or `month`.
    pub fn period(self) -> &'static str {
        match self {
            PeriodKind::TokensPerDay | PeriodKind::RequestsPerDay => "day",
            PeriodKind::TokensPerMonth => "month",
        }
    }
}

/// The UTC day and month a moment falls in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// Days since 1970-01-01.
    pub day: u64,
    /// `year × 12 + month - 1`.
    pub month: u64,
    /// When the month began and ends (Unix seconds: the 1st of this and of the next month,
    /// 00:00 UTC).
    month_start: u64,
    month_end: u64,
}

impl Stamp {
    pub fn at(unix_seconds: u64) -> Stamp {
        let day = unix_seconds / SECONDS_PER_DAY;
        let (year, month) = year_month(day);
        let (next_year, next_month) = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
        Stamp {
            day,
            month: year * 12 + month - 1,
            month_start: days_from_civil(year, month).saturating_mul(SECONDS_PER_DAY),
            month_end: days_from_civil(next_year, next_month).saturating_mul(SECONDS_PER_DAY),
        }
    }

    /// When the day ends (Unix seconds: the next 00:00 UTC).
    pub fn day_end(&self) -> u64 {
        (self.day + 1) * SECONDS_PER_DAY
    }

    pub fn month_end(&self) -> u64 {
        self.month_end
    }

    pub fn month_start(&self) -> u64 {
        self.month_start
    }

    /// How long `kind`'s period is, in seconds (a day, or this month's days).
    pub fn length_of(&self, kind: PeriodKind) -> u64 {
        match kind {
            PeriodKind::TokensPerDay | PeriodKind::RequestsPerDay => SECONDS_PER_DAY,
            PeriodKind::TokensPerMonth => self.month_end.saturating_sub(self.month_start),
        }
    }

    /// When `kind`'s period ends.
    pub fn end_of(&self, kind: PeriodKind) -> u64 {
        match kind {
            PeriodKind::TokensPerDay | PeriodKind::RequestsPerDay => self.day_end(),
            PeriodKind::TokensPerMonth => self.month_end,
        }
    }
}

/// (year, month 1-12) of a day since the epoch, by `time`'s calendar.
fn year_month(day: u64) -> (u64, u64) {
    const UNIX_EPOCH_JULIAN_DAY: i64 = 2_440_588;
    match time::Date::from_julian_day(
        i64::try_from(day).unwrap_or(i64::MAX).saturating_add(UNIX_EPOCH_JULIAN_DAY) as i32
    ) {
        Ok(date) => (date.year().max(1970) as u64, u64::from(u8::from(date.month()))),
        // Past year 9999: one endless month (no configuration lives that long).
        Err(_) => (9999, 12),
    }
}

/// Days since the epoch of the 1st of `month` in `year`.
fn days_from_civil(year: u64, month: u64) -> u64 {
    let Ok(month) = time::Month::try_from(month as u8) else { return u64::MAX / SECONDS_PER_DAY };
    match time::Date::from_calendar_date(year.min(9999) as i32, month, 1) {
        Ok(date) => (i64::from(date.to_julian_day()) - 2_440_588).max(0) as u64,
        Err(_) => u64::MAX / SECONDS_PER_DAY,
    }
}

/// What was used in the current periods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeriodUsage {
    pub stamp: Stamp,
    pub day_tokens: u64,
    pub month_tokens: u64,
    pub day_requests: u64,
}

/// A period quota refused: `used` of `limit` in the period that ends at `reset_unix`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeriodDenial {
    pub kind: PeriodKind,
    pub limit: u64,
    pub used: u64,
    /// When the period ends (Unix seconds).
    pub reset_unix: u64,
}

/// A period quota's limits and usage, as the response headers and metrics report them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeriodState {
    pub limits: PeriodLimits,
    pub usage: PeriodUsage,
}

impl PeriodState {
    /// `(kind, limit, used, ends at)` of each quota that is set, in the order of
    /// [`PeriodKind::ALL`] (`used` may be past `limit`: the real count of the last request).
    pub fn each(&self) -> impl Iterator<Item = (PeriodKind, u64, u64, u64)> + '_ {
        let PeriodState { limits, usage } = self;
        [
            (PeriodKind::TokensPerDay, limits.tokens_per_day, usage.day_tokens),
            (PeriodKind::TokensPerMonth, limits.tokens_per_month, usage.month_tokens),
            (PeriodKind::RequestsPerDay, limits.requests_per_day, usage.day_requests),
        ]
        .into_iter()
        .filter_map(|(kind, limit, used)| limit.map(|l| (kind, l, used, usage.stamp.end_of(kind))))
    }

    /// The fewest tokens left in any token quota.
    pub fn remaining_tokens(&self) -> Option<u64> {
        self.each()
            .filter(|(kind, ..)| *kind != PeriodKind::RequestsPerDay)
            .map(|(_, limit, used, _)| limit.saturating_sub(used))
            .min()
    }
}

#[derive(Debug)]
struct Inner {
    limits: PeriodLimits,
    usage: PeriodUsage,
}

/// One owner's period quotas (a consumer's, or one of its grants').
#[derive(Debug)]
pub struct PeriodQuota {
    inner: Mutex<Inner>,
}

/// A [`PeriodQuota`] locked and brought up to the current periods (admission holds every level's
/// lock at once, see [`super::admit_levels`]).
pub struct PeriodGuard<'a> {
    inner: MutexGuard<'a, Inner>,
}

impl PeriodQuota {
    pub fn new(limits: PeriodLimits, unix_seconds: u64) -> PeriodQuota {
        let usage = PeriodUsage { stamp: Stamp::at(unix_seconds), day_tokens: 0, month_tokens: 0, day_requests: 0 };
        PeriodQuota { inner: Mutex::new(Inner { limits, usage }) }
    }

    /// Locks the quota with its usage in the periods of `unix_seconds` (a new day or month
    /// starts from zero).
    pub fn lock(&self, unix_seconds: u64) -> PeriodGuard<'_> {
        // The critical sections cannot panic midway; a poisoned lock still holds consistent state.
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        roll(&mut inner.usage, unix_seconds);
        PeriodGuard { inner }
    }

    /// Charges `actual` in place of `reserved`, in the periods the request arrived in (`stamp`,
    /// from admission); nothing when those have ended.
    pub fn settle(&self, stamp: Stamp, reserved: u64, actual: u64) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let usage = &mut inner.usage;
        let apply = |used: &mut u64| *used = used.saturating_sub(reserved).saturating_add(actual);
        if usage.stamp.day == stamp.day {
            apply(&mut usage.day_tokens);
        }
        if usage.stamp.month == stamp.month {
            apply(&mut usage.month_tokens);
        }
    }

    /// Adds usage that happened earlier in the current periods (rebuilt from the ledger at start).
    pub fn seed(&self, usage: PeriodUsage) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let current = &mut inner.usage;
        if current.stamp.month == usage.stamp.month {
            current.month_tokens = current.month_tokens.saturating_add(usage.month_tokens);
        }
        if current.stamp.day == usage.stamp.day {
            current.day_tokens = current.day_tokens.saturating_add(usage.day_tokens);
            current.day_requests = current.day_requests.saturating_add(usage.day_requests);
        }
    }

    /// Usage in the periods of `unix_seconds`.
    pub fn usage(&self, unix_seconds: u64) -> PeriodUsage {
        self.lock(unix_seconds).inner.usage
    }

    pub fn limits(&self) -> PeriodLimits {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).limits
    }

    /// New limits (a reload); usage so far is kept.
    pub fn set_limits(&self, limits: PeriodLimits) {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).limits = limits;
    }
}

fn roll(usage: &mut PeriodUsage, unix_seconds: u64) {
    let day = unix_seconds / SECONDS_PER_DAY;
    if day == usage.stamp.day {
        return;
    }
    let stamp = Stamp::at(unix_seconds);
    if stamp.month != usage.stamp.month {
        usage.month_tokens = 0;
    }
    usage.day_tokens = 0;
    usage.day_requests = 0;
    usage.stamp = stamp;
}

impl PeriodGuard<'_> {
    pub fn stamp(&self) -> Stamp {
        self.inner.usage.stamp
    }

    /// Why one request and `tokens` do not fit, if they do not. A quota already used up refuses
    /// every request; otherwise the reservation must fit in what is left.
    pub fn denial(&self, tokens: u64) -> Option<PeriodDenial> {
        let Inner { limits, usage } = &*self.inner;
        let checks = [
            (PeriodKind::RequestsPerDay, limits.requests_per_day, usage.day_requests, 1),
            (PeriodKind::TokensPerDay, limits.tokens_per_day, usage.day_tokens, tokens),
            (PeriodKind::TokensPerMonth, limits.tokens_per_month, usage.month_tokens, tokens),
        ];
        checks.into_iter().find_map(|(kind, limit, used, wanted)| {
            let limit = limit?;
            (used.saturating_add(wanted) > limit).then(|| PeriodDenial {
                kind,
                limit,
                used,
                reset_unix: usage.stamp.end_of(kind),
            })
        })
    }

    /// Takes one request and `tokens` (after [`denial`](Self::denial) said none).
    pub fn take(&mut self, tokens: u64) {
        let usage = &mut self.inner.usage;
        usage.day_requests = usage.day_requests.saturating_add(1);
        usage.day_tokens = usage.day_tokens.saturating_add(tokens);
        usage.month_tokens = usage.month_tokens.saturating_add(tokens);
    }

    /// What the headers report.
    pub fn state(&self) -> PeriodState {
        PeriodState { limits: self.inner.limits, usage: self.inner.usage }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-01-31T23:59:59Z.
    const JAN_31_LAST_SECOND: u64 = 1_769_903_999;

    #[test]
    fn stamps_follow_the_utc_calendar() {
        let stamp = Stamp::at(JAN_31_LAST_SECOND);
        assert_eq!(stamp.day_end(), JAN_31_LAST_SECOND + 1);
        assert_eq!(stamp.month_end(), JAN_31_LAST_SECOND + 1, "February starts at the next second");
        let february = Stamp::at(JAN_31_LAST_SECOND + 1);
        assert_eq!(february.month, stamp.month + 1);
        assert_eq!(february.month_end(), JAN_31_LAST_SECOND + 1 + 28 * SECONDS_PER_DAY, "2026 is no leap year");
        assert_eq!(february.length_of(PeriodKind::TokensPerMonth), 28 * SECONDS_PER_DAY);
        assert_eq!(stamp.length_of(PeriodKind::TokensPerMonth), 31 * SECONDS_PER_DAY);
        // December rolls into the next year.
        let december = Stamp::at(1_796_083_200); // 2026-12-01T00:00:00Z
        assert_eq!(december.month_end(), 1_798_761_600); // 2027-01-01T00:00:00Z
        assert_eq!(Stamp::at(1_798_761_600).month, december.month + 1);
        // A leap February.
        assert_eq!(Stamp::at(951_782_400).month_end(), 951_868_800); // 2000-02-29 → 2000-03-01
    }

    fn quota(limits: PeriodLimits, at: u64) -> PeriodQuota {
        PeriodQuota::new(limits, at)
    }

    #[test]
    fn a_day_quota_refuses_past_its_limit_and_starts_again_at_midnight() {
        let limits = PeriodLimits { tokens_per_day: Some(100), ..Default::default() };
        let q = quota(limits, JAN_31_LAST_SECOND - 100);
        let mut g = q.lock(JAN_31_LAST_SECOND - 100);
        assert_eq!(g.denial(60), None);
        g.take(60);
        let denial = g.denial(41).expect("60 + 41 > 100");
        assert_eq!(denial.kind, PeriodKind::TokensPerDay);
        assert_eq!((denial.limit, denial.used, denial.reset_unix), (100, 60, JAN_31_LAST_SECOND + 1));
        assert_eq!(g.denial(40), None, "exactly the limit fits");
        drop(g);
        assert_eq!(q.lock(JAN_31_LAST_SECOND + 1).denial(100), None, "a new day starts from zero");
    }

    #[test]
    fn reconciliation_charges_the_real_count_in_the_period_the_request_arrived() {
        let limits =
            PeriodLimits { tokens_per_day: Some(1_000), tokens_per_month: Some(5_000), requests_per_day: None };
        let q = quota(limits, JAN_31_LAST_SECOND - 10);
        let stamp = {
            let mut g = q.lock(JAN_31_LAST_SECOND - 10);
            g.take(500);
            g.stamp()
        };
        q.settle(stamp, 500, 120);
        let used = q.usage(JAN_31_LAST_SECOND);
        assert_eq!((used.day_tokens, used.month_tokens, used.day_requests), (120, 120, 1));
        // Debt: the real count above the reservation, past the quota.
        q.settle(stamp, 0, 2_000);
        assert_eq!(q.lock(JAN_31_LAST_SECOND).denial(0).map(|d| d.kind), Some(PeriodKind::TokensPerDay));
        // After the month ended, a late reconciliation of January changes February nothing.
        let _ = q.lock(JAN_31_LAST_SECOND + 1);
        q.settle(stamp, 0, 700);
        let feb = q.usage(JAN_31_LAST_SECOND + 1);
        assert_eq!((feb.day_tokens, feb.month_tokens), (0, 0));
    }

    #[test]
    fn requests_per_day_counts_admissions_and_the_month_outlives_the_day() {
        let limits = PeriodLimits { requests_per_day: Some(2), tokens_per_month: Some(300), tokens_per_day: None };
        let day1 = 1_796_083_200; // 2026-12-01
        let q = quota(limits, day1);
        for _ in 0..2 {
            let mut g = q.lock(day1);
            assert_eq!(g.denial(100), None);
            g.take(100);
        }
        let denial = q.lock(day1).denial(1).expect("two requests a day");
        assert_eq!((denial.kind, denial.reset_unix), (PeriodKind::RequestsPerDay, day1 + SECONDS_PER_DAY));
        let next_day = day1 + SECONDS_PER_DAY;
        let mut g = q.lock(next_day);
        let denial = g.denial(101).expect("200 of 300 used this month");
        assert_eq!((denial.kind, denial.used, denial.reset_unix), (PeriodKind::TokensPerMonth, 200, 1_798_761_600));
        assert_eq!(g.denial(100), None);
        g.take(100);
        assert_eq!(g.state().remaining_tokens(), Some(0));
        let each: Vec<_> = g.state().each().collect();
        assert_eq!(
            each,
            [
                (PeriodKind::TokensPerMonth, 300, 300, 1_798_761_600),
                (PeriodKind::RequestsPerDay, 2, 1, next_day + SECONDS_PER_DAY)
            ]
        );
    }

    #[test]
    fn seeding_adds_only_to_the_current_periods() {
        let limits =
            PeriodLimits { tokens_per_day: Some(1_000), tokens_per_month: Some(10_000), requests_per_day: Some(10) };
        let now = JAN_31_LAST_SECOND;
        let q = quota(limits, now);
        q.seed(PeriodUsage {
            stamp: Stamp::at(now - SECONDS_PER_DAY),
            day_tokens: 5,
            month_tokens: 5,
            day_requests: 1,
        });
        q.seed(PeriodUsage { stamp: Stamp::at(now), day_tokens: 7, month_tokens: 7, day_requests: 2 });
        let used = q.usage(now);
        assert_eq!((used.day_tokens, used.month_tokens, used.day_requests), (7, 12, 2));
    }
}
