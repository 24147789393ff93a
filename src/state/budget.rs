//! Budgets as the hot path reads them: what a project, subscription or consumer has spent in the
//! current UTC day and month, the thresholds crossed, and whether a hard budget refuses new
//! requests. Built with the deployment table; spend carries over reloads by budget name.
//!
//! Spend is charged when a request's record is made (its real cost), so a hard budget is checked
//! against what finished requests cost: the requests in flight when it is crossed are served and
//! charged, and that is how far a hard cap can be overshot.

use std::sync::{Arc, Mutex, PoisonError};

use crate::config::billing::{BudgetConfig, BudgetScope};
use crate::core::billing::{Micros, thresholds_reached};
use crate::core::clock::Clock;
use crate::core::quota::period::Stamp;

/// A budget's period: a UTC calendar day or month.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BudgetPeriod {
    Daily,
    Monthly,
}

impl BudgetPeriod {
    pub const ALL: [BudgetPeriod; 2] = [BudgetPeriod::Daily, BudgetPeriod::Monthly];

    pub fn as_str(self) -> &'static str {
        match self {
            BudgetPeriod::Daily => "daily",
            BudgetPeriod::Monthly => "monthly",
        }
    }

    /// When the period that `stamp` is in began and ends (Unix seconds).
    pub fn bounds(self, stamp: Stamp) -> (u64, u64) {
        match self {
            BudgetPeriod::Daily => (stamp.day_end() - 86_400, stamp.day_end()),
            BudgetPeriod::Monthly => (stamp.month_start(), stamp.month_end()),
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Spend {
    /// The day and month (as [`Stamp`] numbers them) the sums are of.
    day: u64,
    month: u64,
    day_spent: u64,
    month_spent: u64,
    /// How many thresholds each sum has reached (they are ascending).
    day_reached: usize,
    month_reached: usize,
}

/// A threshold a charge reached.
#[derive(Clone, Debug)]
pub struct Crossing {
    pub budget: Arc<Budget>,
    pub period: BudgetPeriod,
    pub threshold: u16,
    pub amount: Micros,
    pub spent: Micros,
    /// The period's bounds (Unix seconds).
    pub starts: u64,
    pub ends: u64,
}

/// A hard budget that is spent.
#[derive(Clone, Debug)]
pub struct Exhausted {
    pub budget: Arc<str>,
    pub period: BudgetPeriod,
    pub amount: Micros,
    pub spent: Micros,
    pub reset_unix: u64,
}

#[derive(Debug)]
pub struct Budget {
    pub name: Arc<str>,
    pub scope: BudgetScope,
    pub daily: Option<Micros>,
    pub monthly: Option<Micros>,
    pub thresholds: Vec<u16>,
    pub hard: bool,
    spend: Mutex<Spend>,
    /// Whose wall clock its periods follow.
    pub clock: Arc<dyn Clock>,
    /// Its spend's key in a shared store (made by the store on first use).
    pub store_key: std::sync::OnceLock<Arc<str>>,
}

impl Budget {
    /// A budget from its configuration; with `previous` (the same name before a reload) its
    /// spend carries on.
    pub fn build(config: &BudgetConfig, previous: Option<&Budget>, clock: &Arc<dyn Clock>) -> Budget {
        let spend = previous.map(|p| *p.lock()).unwrap_or_default();
        let budget = Budget {
            name: Arc::from(config.name.as_str()),
            scope: config.scope.clone(),
            daily: config.daily,
            monthly: config.monthly,
            thresholds: config.thresholds.clone(),
            hard: config.hard,
            spend: Mutex::new(spend),
            clock: Arc::clone(clock),
            store_key: std::sync::OnceLock::new(),
        };
        // Thresholds or amounts may have changed: what is reached now is not a new crossing.
        {
            let mut spend = budget.lock();
            spend.day_reached = budget.reached(BudgetPeriod::Daily, spend.day_spent);
            spend.month_reached = budget.reached(BudgetPeriod::Monthly, spend.month_spent);
        }
        budget
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Spend> {
        self.spend.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn amount(&self, period: BudgetPeriod) -> Option<Micros> {
        match period {
            BudgetPeriod::Daily => self.daily,
            BudgetPeriod::Monthly => self.monthly,
        }
    }

    fn reached(&self, period: BudgetPeriod, spent: u64) -> usize {
        self.amount(period).map_or(0, |amount| thresholds_reached(amount, spent, &self.thresholds))
    }

    /// Whether it watches requests of a deployment of `project` (depending on `subscription`,
    /// a `/projects/p/subscriptions/s` id).
    pub fn watches_deployment(&self, project: &str, subscription: Option<&str>) -> bool {
        match &self.scope {
            BudgetScope::Project(p) => p == project,
            BudgetScope::Subscription { project: p, name } => {
                p == project && subscription.and_then(|s| s.rsplit('/').next()) == Some(name.as_str())
            }
            BudgetScope::Consumer(_) => false,
        }
    }

    /// The sums in `stamp`'s periods, started again when a period has turned.
    fn roll(spend: &mut Spend, stamp: Stamp) {
        if stamp.day > spend.day {
            (spend.day, spend.day_spent, spend.day_reached) = (stamp.day, 0, 0);
        }
        if stamp.month > spend.month {
            (spend.month, spend.month_spent, spend.month_reached) = (stamp.month, 0, 0);
        }
    }

    /// Adds a request's cost in the periods of `stamp` (when it arrived; a period that has since
    /// ended is not charged) and returns the thresholds it reached.
    pub fn charge(self: &Arc<Self>, stamp: Stamp, micros: u64) -> Vec<Crossing> {
        let mut crossings = self.charge_period(stamp, BudgetPeriod::Daily, micros);
        crossings.extend(self.charge_period(stamp, BudgetPeriod::Monthly, micros));
        crossings
    }

    fn charge_period(self: &Arc<Self>, stamp: Stamp, only: BudgetPeriod, micros: u64) -> Vec<Crossing> {
        let mut crossings = Vec::new();
        if micros == 0 {
            return crossings;
        }
        let mut guard = self.lock();
        let spend = &mut *guard;
        Budget::roll(spend, stamp);
        for period in [only] {
            let (current, spent, reached) = match period {
                BudgetPeriod::Daily => (spend.day == stamp.day, &mut spend.day_spent, &mut spend.day_reached),
                BudgetPeriod::Monthly => (spend.month == stamp.month, &mut spend.month_spent, &mut spend.month_reached),
            };
            if !current {
                continue;
            }
            *spent = spent.saturating_add(micros);
            let Some(amount) = self.amount(period) else { continue };
            let now = thresholds_reached(amount, *spent, &self.thresholds);
            let (starts, ends) = period.bounds(stamp);
            for &threshold in &self.thresholds[*reached..now.max(*reached)] {
                crossings.push(Crossing {
                    budget: Arc::clone(self),
                    period,
                    threshold,
                    amount,
                    spent: Micros(*spent),
                    starts,
                    ends,
                });
            }
            *reached = now.max(*reached);
        }
        crossings
    }

    /// The shared spend read from the store (every replica's, this one's sent so far): the sums
    /// become the larger of the two, and the thresholds that reaches are returned as crossings.
    pub fn absorb(self: &Arc<Self>, stamp: Stamp, day_spent: u64, month_spent: u64) -> Vec<Crossing> {
        let (day_more, month_more) = {
            let mut spend = self.lock();
            Budget::roll(&mut spend, stamp);
            let day_more = if spend.day == stamp.day { day_spent.saturating_sub(spend.day_spent) } else { 0 };
            let month_more = if spend.month == stamp.month { month_spent.saturating_sub(spend.month_spent) } else { 0 };
            (day_more, month_more)
        };
        // The difference is other replicas' spend: charged like a request's, per period.
        let mut crossings = Vec::new();
        if day_more > 0 {
            crossings.extend(self.charge_period(stamp, BudgetPeriod::Daily, day_more));
        }
        if month_more > 0 {
            crossings.extend(self.charge_period(stamp, BudgetPeriod::Monthly, month_more));
        }
        crossings
    }

    /// Spend counted before this process started (rebuilt from the ledger): thresholds it
    /// reached are not crossed again.
    pub fn seed(&self, stamp: Stamp, day_spent: u64, month_spent: u64) {
        let mut spend = self.lock();
        Budget::roll(&mut spend, stamp);
        spend.day_spent = spend.day_spent.saturating_add(day_spent);
        spend.month_spent = spend.month_spent.saturating_add(month_spent);
        spend.day_reached = self.reached(BudgetPeriod::Daily, spend.day_spent);
        spend.month_reached = self.reached(BudgetPeriod::Monthly, spend.month_spent);
    }

    /// What is spent in the periods of `now` (Unix seconds): `(period, amount, spent, ends)`
    /// for each period the budget has an amount for.
    pub fn state(&self, now: u64) -> Vec<(BudgetPeriod, Micros, Micros, u64)> {
        let stamp = Stamp::at(now);
        let spend = self.lock();
        let mut out = Vec::with_capacity(2);
        for period in BudgetPeriod::ALL {
            let Some(amount) = self.amount(period) else { continue };
            let spent = match period {
                BudgetPeriod::Daily if spend.day == stamp.day => spend.day_spent,
                BudgetPeriod::Monthly if spend.month == stamp.month => spend.month_spent,
                _ => 0,
            };
            out.push((period, amount, Micros(spent), period.bounds(stamp).1));
        }
        out
    }

    /// For a hard budget: the period whose amount is spent at `now`, if one is (no allocation:
    /// this runs at every admission under the budget).
    pub fn exhausted(&self, now: u64) -> Option<Exhausted> {
        if !self.hard {
            return None;
        }
        let stamp = Stamp::at(now);
        let spend = *self.lock();
        BudgetPeriod::ALL.into_iter().find_map(|period| {
            let amount = self.amount(period)?;
            let spent = match period {
                BudgetPeriod::Daily if spend.day == stamp.day => spend.day_spent,
                BudgetPeriod::Monthly if spend.month == stamp.month => spend.month_spent,
                _ => 0,
            };
            (spent >= amount.0).then(|| Exhausted {
                budget: Arc::clone(&self.name),
                period,
                amount,
                spent: Micros(spent),
                reset_unix: period.bounds(stamp).1,
            })
        })
    }
}

/// Budgets by name from their configuration, spend carried from `previous`.
pub fn build_budgets(configs: &[BudgetConfig], previous: &[Arc<Budget>], clock: &Arc<dyn Clock>) -> Vec<Arc<Budget>> {
    configs
        .iter()
        .map(|c| Arc::new(Budget::build(c, previous.iter().find(|p| *p.name == *c.name).map(|p| &**p), clock)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(daily: Option<u64>, monthly: Option<u64>, hard: bool) -> Arc<Budget> {
        Arc::new(Budget::build(
            &BudgetConfig {
                name: "b".into(),
                scope: BudgetScope::Project("p".into()),
                daily: daily.map(Micros),
                monthly: monthly.map(Micros),
                thresholds: vec![50, 80, 100],
                hard,
            },
            None,
            &clock(),
        ))
    }

    fn clock() -> Arc<dyn Clock> {
        Arc::new(crate::core::clock::ManualClock::new(0))
    }

    const DEC_3: u64 = 1_796_342_340; // 2026-12-03T23:59:00Z

    #[test]
    fn each_threshold_is_crossed_once_per_period_and_a_new_period_starts_from_zero() {
        let b = budget(Some(1_000), Some(10_000), true);
        let today = Stamp::at(DEC_3);
        assert!(b.charge(today, 400).is_empty());
        let crossed: Vec<(BudgetPeriod, u16)> = b.charge(today, 500).iter().map(|c| (c.period, c.threshold)).collect();
        assert_eq!(crossed, [(BudgetPeriod::Daily, 50), (BudgetPeriod::Daily, 80)]);
        assert!(b.exhausted(DEC_3).is_none());
        let crossed: Vec<u16> = b.charge(today, 100).iter().map(|c| c.threshold).collect();
        assert_eq!(crossed, [100]);
        let spent = b.exhausted(DEC_3).unwrap();
        assert_eq!((spent.period, spent.spent, spent.reset_unix), (BudgetPeriod::Daily, Micros(1_000), DEC_3 + 60));
        assert!(b.charge(today, 5_000).iter().all(|c| c.period == BudgetPeriod::Monthly), "no daily threshold again");
        // The next day: the daily sum starts again; a late record of yesterday is not charged to it.
        let tomorrow = Stamp::at(DEC_3 + 120);
        assert!(b.exhausted(DEC_3 + 120).is_none());
        assert!(b.charge(tomorrow, 100).is_empty());
        b.charge(today, 10_000);
        assert_eq!(b.state(DEC_3 + 120)[0].2, Micros(100));
    }

    #[test]
    fn seeded_spend_crosses_nothing_and_a_soft_budget_never_refuses() {
        let b = budget(None, Some(1_000), false);
        b.seed(Stamp::at(DEC_3), 0, 900);
        let crossed: Vec<u16> = b.charge(Stamp::at(DEC_3), 200).iter().map(|c| c.threshold).collect();
        assert_eq!(crossed, [100], "50 and 80 were reached before the restart");
        assert!(b.exhausted(DEC_3).is_none(), "soft");
        let again = Arc::new(Budget::build(
            &BudgetConfig {
                name: "b".into(),
                scope: BudgetScope::Project("p".into()),
                daily: None,
                monthly: Some(Micros(1_000)),
                thresholds: vec![50, 80, 100],
                hard: true,
            },
            Some(&b),
            &clock(),
        ));
        assert_eq!(again.exhausted(DEC_3).unwrap().spent, Micros(1_100), "spend carried over a reload");
    }
}
