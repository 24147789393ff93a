//! Leases on the shared buckets (see [`crate::core::quota::lease`] for the bound and its proof):
//! the renewal script call, and the sweeper that gives back what expired leases hold.

use std::sync::{Arc, PoisonError, Weak};
use std::time::Duration;

use super::{RedisStore, StoreUnreachable, shared_buckets};
use crate::core::quota::lease::{Lease, Renewal, Sweep, Unused};
use crate::core::quota::{Buckets, Limits, QuotaState};

/// A lease the sweeper watches, with where what it holds goes back.
pub(super) struct ListedLease {
    lease: Arc<Lease>,
    deployment: Arc<str>,
    limits: Limits,
}

/// What a renewal call answered.
pub struct Renewed {
    pub admitted: bool,
    /// The shared buckets after it.
    pub buckets: Buckets,
    /// Granted beyond the renewing request's own request and tokens.
    pub requests: u64,
    pub tokens: u64,
}

/// The sweeper's tick: a quarter of the lease's life, between 10 and 250 ms. What an idle
/// replica holds is back at most a tick after its lease expires.
fn tick(lease_ttl: Duration) -> Duration {
    (lease_ttl / 4).clamp(Duration::from_millis(10), Duration::from_millis(250))
}

impl RedisStore {
    /// How long a lease is held before what is left goes back.
    pub fn lease_ttl(&self) -> Duration {
        self.settings.lease_ttl
    }

    /// How many replicas share the quota (`[limits] replicas`).
    pub fn replicas(&self) -> u64 {
        self.settings.replicas
    }

    pub fn now_ns(&self) -> u64 {
        self.clock.now_ns()
    }

    /// One round trip: a renewal (gives back what the lease held and asks for a new one, which
    /// admits the renewing request, of `tokens`, when the buckets hold it) or a top-up.
    pub async fn renew_lease(
        &self,
        deployment: &str,
        limits: Limits,
        tokens: u64,
        renewal: &Renewal,
    ) -> Result<Renewed, StoreUnreachable> {
        let mut invocation = self.lease_script.key(self.key(deployment));
        invocation
            .arg(limits.requests_per_minute)
            .arg(limits.tokens_per_minute)
            .arg(tokens)
            .arg(renewal.ask.requests)
            .arg(renewal.ask.tokens)
            .arg(renewal.unused.requests)
            .arg(renewal.unused.tokens)
            .arg(if renewal.admits { "1" } else { "0" });
        let (admitted, r, t, granted_requests, granted_tokens): (i64, i64, i64, i64, i64) =
            self.invoke("lease", &invocation).await?;
        let buckets = shared_buckets(limits, r, t);
        let (granted_requests, granted_tokens) = (granted_requests.max(0) as u64, granted_tokens.max(0) as u64);
        // A renewal's grant includes its request's own request and tokens.
        let (own_requests, own_tokens) = if renewal.admits { (1, tokens) } else { (0, 0) };
        Ok(Renewed {
            admitted: admitted == 1,
            buckets,
            requests: granted_requests.saturating_sub(own_requests),
            tokens: granted_tokens.saturating_sub(own_tokens),
        })
    }

    /// Holds what a renewal or top-up granted (listing the lease with the sweeper if it is not)
    /// and gives back what is beyond the lease's size; the headers' view.
    pub fn hold_grant(
        &self,
        lease: &Arc<Lease>,
        renewal: Renewal,
        renewed: &Renewed,
        deployment: &str,
        limits: Limits,
    ) -> QuotaState {
        let expires = self.clock.now_ns().saturating_add(self.settings.lease_ttl.as_nanos() as u64);
        let granted = renewal.granted(renewed.requests, renewed.tokens, renewed.buckets.state(), expires);
        if granted.unlisted {
            self.list_lease(lease, deployment, limits);
        }
        self.give_back(deployment, limits, granted.excess);
        granted.state
    }

    /// Tops `lease` up in the background (`top_up` from [`Lease::top_up`]).
    pub fn top_up(self: &Arc<Self>, lease: &Arc<Lease>, top_up: Renewal, deployment: &str, limits: Limits) {
        let (store, lease, deployment) = (Arc::clone(self), Arc::clone(lease), deployment.to_owned());
        tokio::spawn(async move {
            // Not answered: the store is marked down, and what is held goes on admitting.
            if let Ok(renewed) = store.renew_lease(&deployment, limits, 0, &top_up).await {
                store.hold_grant(&lease, top_up, &renewed, &deployment, limits);
            }
        });
    }

    /// Has the sweeper watch `lease` (just granted, and not watched yet).
    fn list_lease(&self, lease: &Arc<Lease>, deployment: &str, limits: Limits) {
        let listed = ListedLease { lease: Arc::clone(lease), deployment: Arc::from(deployment), limits };
        self.leases.lock().unwrap_or_else(PoisonError::into_inner).push(listed);
    }

    /// Queues what a lease held for the shared buckets (sent with the next reconciliation batch,
    /// whose numbering keeps it from being applied twice).
    fn give_back(&self, deployment: &str, limits: Limits, unused: Unused) {
        if !unused.is_empty() {
            let tokens = i64::try_from(unused.tokens).unwrap_or(i64::MAX);
            let requests = i64::try_from(unused.requests).unwrap_or(i64::MAX);
            self.reconcile_key(deployment, limits, tokens, requests);
        }
    }

    /// Gives back what expired leases hold (every lease, expired or not, with `all`: at
    /// shutdown) and stops watching them.
    pub(super) fn sweep(&self, all: bool) {
        let now = self.clock.now_ns();
        let mut back = Vec::new();
        self.leases.lock().unwrap_or_else(PoisonError::into_inner).retain(|listed| {
            let verdict = if all { Sweep::Unlist(listed.lease.give_back()) } else { listed.lease.expire(now) };
            match verdict {
                Sweep::Keep => true,
                Sweep::Unlist(unused) => {
                    back.push((Arc::clone(&listed.deployment), listed.limits, unused));
                    false
                }
            }
        });
        for (deployment, limits, unused) in back {
            self.give_back(&deployment, limits, unused);
        }
    }
}

/// Every tick, gives back what expired leases hold; ends with the store.
pub(super) async fn sweeper(store: Weak<RedisStore>) {
    let Some(period) = store.upgrade().map(|s| tick(s.settings.lease_ttl)) else { return };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(store) = store.upgrade() else { return };
        store.sweep(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweeper_ticks_at_a_quarter_of_the_lease_within_bounds() {
        assert_eq!(tick(Duration::from_secs(1)), Duration::from_millis(250));
        assert_eq!(tick(Duration::from_millis(200)), Duration::from_millis(50));
        assert_eq!(tick(Duration::from_millis(20)), Duration::from_millis(10));
        assert_eq!(tick(Duration::from_secs(60)), Duration::from_millis(250));
    }
}
