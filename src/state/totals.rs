//! Running usage totals per deployment, served on the admin listener at
//! `GET /usage`. The counters live in each [`Deployment`](crate::state::deployment::Deployment) (atomics, no lock and no map lookup on
//! the request path); metrics and the durable ledger are further sinks.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use serde::Serialize;

use crate::core::meter::CountSource;
use crate::state::record::UsageRecord;

/// Running totals of one deployment: one cache line (aligned so, its `Arc`'s reference counts
/// sit in the line before), which every request of the deployment writes.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct UsageCounters {
    requests: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    total_tokens: AtomicU64,
    reported_requests: AtomicU64,
    estimated_requests: AtomicU64,
    rate_limited_requests: AtomicU64,
    /// Admitted requests not yet settled.
    pub inflight: AtomicI64,
}

const _: () = assert!(std::mem::size_of::<UsageCounters>() == 64, "one cache line");

/// A reading of [`UsageCounters`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DeploymentTotals {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub reported_requests: u64,
    pub estimated_requests: u64,
    pub rate_limited_requests: u64,
    pub inflight_requests: i64,
}

impl UsageCounters {
    pub fn read(&self) -> DeploymentTotals {
        // Requests first, with Acquire (paired with the Release increment in `add`): the tokens
        // of every request counted here are in the sums read after it.
        let requests = self.requests.load(Ordering::Acquire);
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DeploymentTotals {
            requests,
            prompt_tokens: get(&self.prompt_tokens),
            completion_tokens: get(&self.completion_tokens),
            total_tokens: get(&self.total_tokens),
            reported_requests: get(&self.reported_requests),
            estimated_requests: get(&self.estimated_requests),
            rate_limited_requests: get(&self.rate_limited_requests),
            inflight_requests: self.inflight.load(Ordering::Relaxed),
        }
    }
}

/// Adds a record to its deployment's [`UsageCounters`].
pub fn add(record: &UsageRecord) {
    let c = &record.deployment.usage;
    let add = |counter: &AtomicU64, n: u64| {
        counter.fetch_add(n, Ordering::Relaxed);
    };
    add(&c.prompt_tokens, record.prompt_tokens);
    add(&c.completion_tokens, record.completion_tokens);
    add(&c.total_tokens, record.total_tokens);
    match record.source {
        CountSource::Reported => add(&c.reported_requests, 1),
        CountSource::Estimated => add(&c.estimated_requests, 1),
        CountSource::None => {}
    }
    if record.status == 429 {
        add(&c.rate_limited_requests, 1);
    }
    // Last, so a reader that sees the request also sees its tokens.
    c.requests.fetch_add(1, Ordering::Release);
}
