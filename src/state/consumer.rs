//! Consumers as the hot path reads them: who a consumer key belongs to, the deployments it may
//! call, and its own buckets and period quotas there. Built with the deployment table (and so
//! swapped with it); buckets and period usage carry over from the previous table by
//! `project/name` and deployment.

use std::sync::{Arc, OnceLock};

use crate::config::{ConsumerConfig, GrantConfig};
use crate::core::clock::Clock;
use crate::core::keys::{KeyDigest, KeyPair, KeySlot};
use crate::core::quota::period::{PeriodLimits, PeriodQuota, Stamp};
use crate::core::quota::{DeploymentQuota, Levels};
use crate::state::budget::Budget;
use crate::state::deployment::Deployment;

/// An application (or a person) of a project, with its own keys and limits.
#[derive(Debug)]
pub struct Consumer {
    pub name: String,
    pub project: String,
    /// `project/name`: how metrics, logs and the ledger name it.
    pub label: Arc<str>,
    pub keys: KeyPair,
    /// Its quotas over all its deployments, per UTC day and month.
    pub periods: Option<Arc<PeriodQuota>>,
    /// Sorted by deployment name.
    pub grants: Vec<Grant>,
    /// The granted deployments (sorted by name), for requests that name none.
    pub deployments: Vec<Arc<Deployment>>,
    /// Whose wall clock the period quotas follow.
    pub clock: Arc<dyn Clock>,
    /// Its period quotas' key in a shared store (made by the store on first use).
    pub store_key: OnceLock<Arc<str>>,
    /// The budgets watching it (usually none).
    pub budgets: Vec<Arc<Budget>>,
}

/// One deployment a consumer may call.
#[derive(Debug)]
pub struct Grant {
    pub deployment: String,
    /// Its own per-minute buckets there (none: limited by the deployment alone).
    pub quota: Option<Arc<DeploymentQuota>>,
    pub periods: Option<Arc<PeriodQuota>>,
    /// Its buckets' and period quotas' keys in a shared store (made by the store on first use).
    pub store_keys: OnceLock<[Arc<str>; 2]>,
    /// Its busiest metric series (made by the metrics on first use).
    pub series: OnceLock<crate::state::metrics::ConsumerSeries>,
}

/// A request's caller when it is a consumer: who, and which of its grants.
#[derive(Clone, Debug)]
pub struct ConsumerGrant {
    pub consumer: Arc<Consumer>,
    pub index: usize,
}

impl ConsumerGrant {
    pub fn grant(&self) -> &Grant {
        &self.consumer.grants[self.index]
    }

    /// Charges `actual` in place of `reserved` on the consumer's own in-process levels (the
    /// deployment's are settled by the request's hold), in the periods of `stamp`.
    pub fn settle_in_process(&self, stamp: Option<Stamp>, reserved: u64, actual: u64) {
        let grant = self.grant();
        if let Some(quota) = &grant.quota {
            quota.reconcile(reserved, actual);
        }
        if let Some(stamp) = stamp {
            for periods in [&grant.periods, &self.consumer.periods].into_iter().flatten() {
                periods.settle(stamp, reserved, actual);
            }
        }
    }

    /// Every level admission takes from for this caller on `deployment` (see
    /// [`crate::core::quota::admit_levels`] for the order).
    pub fn levels<'a>(&'a self, deployment: &'a Deployment) -> Levels<'a> {
        let grant = self.grant();
        Levels {
            buckets: [Some(&deployment.quota), grant.quota.as_deref()],
            periods: [grant.periods.as_deref(), self.consumer.periods.as_deref()],
        }
    }
}

impl Consumer {
    /// A consumer from its configuration, over the table's `deployments` (a grant of one that is
    /// not there is left out). With `previous` (the same `project/name` before a reload) its
    /// buckets and period usage carry on, limits updated.
    pub fn build(
        config: &ConsumerConfig,
        deployments: &dyn Fn(&str) -> Option<Arc<Deployment>>,
        previous: Option<&Consumer>,
        clock: &Arc<dyn Clock>,
        budgets: &[Arc<Budget>],
    ) -> Consumer {
        let periods = period_quota(config.periods, previous.and_then(|p| p.periods.as_ref()), clock);
        let mut grants: Vec<Grant> = Vec::with_capacity(config.grants.len());
        let mut granted: Vec<Arc<Deployment>> = Vec::with_capacity(config.grants.len());
        for g in &config.grants {
            let Some(deployment) = deployments(&g.deployment) else { continue };
            let before = previous.and_then(|p| p.grant(&g.deployment));
            grants.push(Grant::build(g, before, clock));
            granted.push(deployment);
        }
        grants.sort_by(|a, b| a.deployment.cmp(&b.deployment));
        granted.sort_by(|a, b| a.name.cmp(&b.name));
        let label = format!("{}/{}", config.project, config.name);
        let budgets = budgets
            .iter()
            .filter(|b| matches!(&b.scope, crate::config::billing::BudgetScope::Consumer(c) if *c == label))
            .cloned()
            .collect();
        Consumer {
            budgets,
            label: Arc::from(label),
            name: config.name.clone(),
            project: config.project.clone(),
            keys: config.keys.clone(),
            periods,
            grants,
            deployments: granted,
            clock: Arc::clone(clock),
            store_key: OnceLock::new(),
        }
    }

    /// Its grant on `deployment`, if it has one.
    pub fn grant(&self, deployment: &str) -> Option<&Grant> {
        self.grant_index(deployment).map(|i| &self.grants[i])
    }

    pub fn grant_index(&self, deployment: &str) -> Option<usize> {
        self.grants.binary_search_by(|g| g.deployment.as_str().cmp(deployment)).ok()
    }

    /// Which of its keys this digest is.
    pub fn check_digest(&self, digest: &KeyDigest) -> Option<KeySlot> {
        self.keys.check_digest(digest)
    }
}

impl Grant {
    fn build(config: &GrantConfig, previous: Option<&Grant>, clock: &Arc<dyn Clock>) -> Grant {
        let quota = config.limits.map(|limits| match previous.and_then(|p| p.quota.as_ref()) {
            Some(quota) => {
                quota.set_limits(limits);
                Arc::clone(quota)
            }
            None => Arc::new(DeploymentQuota::new(limits, Arc::clone(clock))),
        });
        Grant {
            deployment: config.deployment.clone(),
            quota,
            periods: period_quota(config.periods, previous.and_then(|p| p.periods.as_ref()), clock),
            store_keys: OnceLock::new(),
            series: OnceLock::new(),
        }
    }
}

fn period_quota(
    limits: PeriodLimits,
    previous: Option<&Arc<PeriodQuota>>,
    clock: &Arc<dyn Clock>,
) -> Option<Arc<PeriodQuota>> {
    if limits.is_empty() {
        return None;
    }
    Some(match previous {
        Some(quota) => {
            quota.set_limits(limits);
            Arc::clone(quota)
        }
        None => Arc::new(PeriodQuota::new(limits, clock.unix_seconds())),
    })
}

/// Adds usage counted before this process started (rebuilt from the ledger, by `project/name`
/// and deployment) to the consumers' period quotas: on the grant of that deployment, and over
/// all the consumer's deployments (also those it is no longer granted: they were used).
pub fn seed_periods(
    consumers: &[Arc<Consumer>],
    sums: &std::collections::HashMap<(String, String), crate::state::ledger::report::PeriodSums>,
    now_unix: u64,
) {
    let stamp = Stamp::at(now_unix);
    let usage = |s: &crate::state::ledger::report::PeriodSums| crate::core::quota::period::PeriodUsage {
        stamp,
        day_tokens: s.day_tokens,
        month_tokens: s.month_tokens,
        day_requests: s.day_requests,
    };
    for consumer in consumers {
        let mut all = crate::state::ledger::report::PeriodSums::default();
        for ((label, deployment), sums) in sums.iter().filter(|((label, _), _)| **label == *consumer.label) {
            debug_assert_eq!(label.as_str(), &*consumer.label);
            all.day_tokens += sums.day_tokens;
            all.month_tokens += sums.month_tokens;
            all.day_requests += sums.day_requests;
            if let Some(periods) = consumer.grant(deployment).and_then(|g| g.periods.as_ref()) {
                periods.seed(usage(sums));
            }
        }
        if let Some(periods) = &consumer.periods {
            periods.seed(usage(&all));
        }
    }
}
