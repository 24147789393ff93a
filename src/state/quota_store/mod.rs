//! Where admission takes from: the deployment's in-process buckets (`store = "memory"`, the
//! default), or buckets shared by every replica in Redis (`store = "redis"`, see [`redis`]).
//!
//! Admission answers with a [`Hold`]: what the reservation was taken from, so that
//! reconciliation settles against the same place even if the store went down (or came back) in
//! between. While Redis cannot be reached, `on_store_error` decides: admit without a quota
//! (`fail-open`), refuse with 503 (`fail-closed`), or use in-process buckets holding this replica
//! to limit / replicas (`local`).

pub mod redis;
pub mod scripts;

use std::sync::Arc;

use self::redis::RedisStore;
use crate::config::OnStoreError;
use crate::core::quota::{Denial, DeploymentQuota, LimitKind, QuotaState};
use crate::state::deployment::Deployment;

/// How long a `local` fallback refusal for a reservation larger than the replica's share asks
/// the client to wait: the share can never hold it, so the earliest it can be admitted is when
/// the shared buckets answer again, and the store is probed this often.
const LOCAL_SHARE_RETRY_NS: u64 = self::redis::PROBE_INTERVAL.as_nanos() as u64;

/// The quota store the gateway admits against.
#[derive(Clone)]
pub enum QuotaStore {
    Memory,
    Redis(Arc<RedisStore>),
}

/// What an admitted request's tokens were taken from (and are settled against).
#[derive(Debug)]
pub enum Hold {
    /// The deployment's own in-process buckets.
    Deployment,
    /// The shared buckets in Redis.
    Shared(Arc<RedisStore>),
    /// A `local` fallback bucket, while Redis was unreachable.
    Fallback(Arc<DeploymentQuota>),
    /// Admitted `fail-open` while Redis was unreachable: nothing to settle.
    Unenforced,
}

/// Why admission said no.
#[derive(Debug)]
pub enum Refusal {
    Denied(Denial),
    /// `fail-closed` while the shared store cannot be reached.
    StoreUnavailable,
}

impl QuotaStore {
    /// Takes one request and `tokens` from the deployment's buckets, or refuses.
    pub async fn admit(&self, deployment: &Deployment, tokens: u64) -> Result<(Option<QuotaState>, Hold), Refusal> {
        let store = match self {
            QuotaStore::Memory => {
                return match deployment.quota.admit(tokens) {
                    Ok(state) => Ok((Some(state), Hold::Deployment)),
                    Err(denial) => Err(Refusal::Denied(denial)),
                };
            }
            QuotaStore::Redis(store) => store,
        };
        let limits = deployment.quota.limits();
        if tokens > limits.tokens_per_minute {
            return Err(Refusal::Denied(Denial::ExceedsCapacity {
                reserved: tokens,
                capacity: limits.tokens_per_minute,
            }));
        }
        if store.is_up() {
            match store.admit(&deployment.name, limits, tokens).await {
                Ok(Ok(state)) => return Ok((Some(state), Hold::Shared(Arc::clone(store)))),
                Ok(Err(denial)) => return Err(Refusal::Denied(denial)),
                Err(redis::StoreUnreachable { .. }) => {} // counted and logged by the store: fall back below
            }
        }
        let mode = store.on_error();
        store.count_fallback(mode);
        match mode {
            OnStoreError::FailOpen => Ok((None, Hold::Unenforced)),
            OnStoreError::FailClosed => Err(Refusal::StoreUnavailable),
            OnStoreError::Local => {
                let local = store.local_quota(&deployment.name, limits);
                match local.admit(tokens) {
                    Ok(state) => Ok((Some(state), Hold::Fallback(local))),
                    // More than this replica's share, not more than the deployment's capacity:
                    // a wait, not a "never".
                    Err(Denial::ExceedsCapacity { .. }) => Err(Refusal::Denied(Denial::Exhausted {
                        limit: LimitKind::Tokens,
                        retry_after_ns: LOCAL_SHARE_RETRY_NS,
                        state: local.state(),
                    })),
                    Err(denial) => Err(Refusal::Denied(denial)),
                }
            }
        }
    }

    /// The deployment's buckets now, for headers and dashboards. `None` while a shared store
    /// cannot be read (there is then nothing true to report).
    pub async fn state(&self, deployment: &Deployment) -> Option<QuotaState> {
        match self {
            QuotaStore::Memory => Some(deployment.quota.state()),
            QuotaStore::Redis(store) => store.read(&deployment.name, deployment.quota.limits()).await,
        }
    }

    /// Flushes pending reconciliations (at shutdown).
    pub async fn flush(&self) {
        if let QuotaStore::Redis(store) = self {
            store.flush().await;
        }
    }
}

impl Hold {
    /// Refunds `reserved - actual` or charges `actual - reserved` where the reservation was taken.
    /// Never blocks: a shared store is reconciled in the background, batched per deployment.
    pub fn settle(&self, deployment: &Arc<Deployment>, reserved: u64, actual: u64) {
        match self {
            Hold::Deployment => deployment.quota.reconcile(reserved, actual),
            Hold::Fallback(local) => local.reconcile(reserved, actual),
            Hold::Shared(store) => store.reconcile(deployment, reserved, actual),
            Hold::Unenforced => {}
        }
    }
}
