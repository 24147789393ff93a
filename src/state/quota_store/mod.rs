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
use crate::core::quota::lease::Lease;
use crate::core::quota::period::{PeriodDenial, PeriodKind, PeriodState, PeriodUsage, Stamp};
use crate::core::quota::{
    Admitted, Buckets, Denial, DeploymentQuota, LevelDenial, Levels, LimitKind, Limits, QuotaState, admit_levels,
    rate_denial,
};
use crate::state::consumer::{Consumer, ConsumerGrant};
use crate::state::deployment::Deployment;
use crate::state::pool::PoolBackend;

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
    /// The owner's own in-process buckets (the deployment's, or a pool backend's).
    InProcess,
    /// The shared buckets in Redis.
    Shared(Arc<RedisStore>),
    /// This replica's lease on the shared buckets (the deployment's `lease`).
    Leased(Arc<RedisStore>),
    /// A `local` fallback bucket, while Redis was unreachable.
    Fallback(Arc<DeploymentQuota>),
    /// Admitted `fail-open` while Redis was unreachable: nothing to settle.
    Unenforced,
}

/// What an attempt took from its backend's own buckets (and settles or refunds there).
#[derive(Debug)]
pub enum BackendHold {
    /// The backend has no limits.
    None,
    /// Its in-process buckets.
    Memory(Arc<DeploymentQuota>),
    /// Its shared buckets in Redis, under this key, with these limits.
    Shared { store: Arc<RedisStore>, key: Arc<str>, limits: Limits },
    /// A `local` fallback bucket, while Redis was unreachable.
    Fallback(Arc<DeploymentQuota>),
}

/// Why a backend's own buckets refused an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendRefusal {
    /// Not now: they will hold it in this long.
    Wait { retry_after_ns: u64 },
    /// Never: the reservation is larger than the backend's whole token capacity.
    TooSmall,
}

impl BackendRefusal {
    /// In how long the buckets would hold the reservation; `None` for never.
    pub fn wait(self) -> Option<u64> {
        match self {
            BackendRefusal::Wait { retry_after_ns } => Some(retry_after_ns),
            BackendRefusal::TooSmall => None,
        }
    }
}

/// Why admission said no.
#[derive(Debug)]
pub enum Refusal {
    /// The deployment's buckets.
    Denied(Denial),
    /// A consumer's own per-minute buckets on the deployment (with every level as it is; boxed,
    /// so that the endpoint keys' `Result` stays small).
    GrantDenied(Denial, Box<ConsumerAdmission>),
    /// The deployment's buckets refused a consumer's request (with every level as it is).
    DeniedConsumer(Denial, Box<ConsumerAdmission>),
    /// A consumer's period quota: on this deployment (`consumer_wide` false), or over all its
    /// deployments (with every level as it is).
    PeriodExceeded { consumer_wide: bool, denial: PeriodDenial, levels: Box<ConsumerAdmission> },
    /// `fail-closed` while the shared store cannot be reached.
    StoreUnavailable,
}

/// What a consumer's admission took, beyond the deployment's buckets: for the headers, and the
/// periods the request counts in (for its reconciliation).
#[derive(Clone, Copy, Debug)]
pub struct ConsumerAdmission {
    pub deployment: Option<QuotaState>,
    pub grant: Option<QuotaState>,
    /// The grant's period quotas, then the consumer's.
    pub periods: [Option<PeriodState>; 2],
    pub stamp: Option<Stamp>,
    /// When it was admitted (Unix seconds), for the seconds until each period ends.
    pub now: u64,
}

impl QuotaStore {
    /// Takes one request and `tokens` from a pool backend's own buckets (when it has limits).
    /// While Redis cannot be reached, `on_store_error` decides as for deployments: no limit
    /// (`fail-open`), refuse (`fail-closed`: the backend is skipped), or the replica's share
    /// (`local`).
    pub async fn admit_backend(&self, backend: &PoolBackend, tokens: u64) -> Result<BackendHold, BackendRefusal> {
        let Some(quota) = &backend.quota else { return Ok(BackendHold::None) };
        match self.admit_at(&backend.bucket_key, quota, tokens).await {
            Ok((_, Hold::InProcess)) => Ok(BackendHold::Memory(Arc::clone(quota))),
            Ok((_, Hold::Shared(store))) => {
                Ok(BackendHold::Shared { store, key: Arc::clone(&backend.bucket_key), limits: quota.limits() })
            }
            Ok((_, Hold::Fallback(local))) => Ok(BackendHold::Fallback(local)),
            // (`admit_at` takes no lease: a pool backend's buckets are not leased.)
            Ok((_, Hold::Unenforced | Hold::Leased(_))) => Ok(BackendHold::None),
            Err(Refusal::Denied(Denial::Exhausted { retry_after_ns, .. })) => {
                Err(BackendRefusal::Wait { retry_after_ns })
            }
            Err(Refusal::Denied(Denial::ExceedsCapacity { .. })) => Err(BackendRefusal::TooSmall),
            // `fail-closed`: this backend is skipped until the store answers again. (`admit_at`
            // answers no consumer refusals; were it to, the backend would be skipped as busy.)
            Err(
                Refusal::StoreUnavailable
                | Refusal::GrantDenied(..)
                | Refusal::DeniedConsumer(..)
                | Refusal::PeriodExceeded { .. },
            ) => Err(BackendRefusal::Wait { retry_after_ns: LOCAL_SHARE_RETRY_NS }),
        }
    }

    /// A pool backend's own buckets now (`None` without limits, or while a shared store
    /// cannot be read).
    pub async fn backend_state(&self, backend: &PoolBackend) -> Option<QuotaState> {
        let quota = backend.quota.as_ref()?;
        match self {
            QuotaStore::Memory => Some(quota.state()),
            QuotaStore::Redis(store) => store.read(&backend.bucket_key, quota.limits()).await,
        }
    }

    /// Takes one request and `tokens` from the deployment's buckets, or refuses. With a lease
    /// (`lease_requests` / `lease_tokens` and Redis), from what this replica holds of them when
    /// it can, and else with a renewal of the lease.
    pub async fn admit(&self, deployment: &Deployment, tokens: u64) -> Result<(Option<QuotaState>, Hold), Refusal> {
        if let (QuotaStore::Redis(store), Some(lease)) = (self, &deployment.lease) {
            if let Some(decided) = leased(store, deployment, lease, tokens).await {
                return decided;
            }
        }
        self.admit_at(&deployment.name, &deployment.quota, tokens).await
    }

    /// A consumer's request: one request and `tokens` from the deployment's buckets, the
    /// consumer's own buckets there and its period quotas, all together or none (in one script
    /// with Redis). While Redis cannot be reached, `on_store_error` decides as for deployments;
    /// under `local` the per-minute levels are this replica's share and the period quotas are
    /// not enforced (a day's or month's quota cannot be split by replicas fairly; the ledger
    /// still has every request).
    pub async fn admit_consumer(
        &self,
        deployment: &Deployment,
        caller: &ConsumerGrant,
        tokens: u64,
        unix_seconds: u64,
    ) -> Result<(ConsumerAdmission, Hold, ConsumerHold), Refusal> {
        let view = |Admitted { buckets: [deployment, grant], stamp, periods }: Admitted| ConsumerAdmission {
            deployment,
            grant,
            periods,
            stamp,
            now: unix_seconds,
        };
        let in_process = |levels: Levels<'_>| match admit_levels(levels, tokens, unix_seconds) {
            Ok(admitted) => Ok(view(admitted)),
            Err(refused) => {
                let (denial, seen) = *refused;
                Err(refusal(denial, Box::new(view(seen))))
            }
        };
        let store = match self {
            QuotaStore::Memory => {
                return in_process(caller.levels(deployment)).map(|a| (a, Hold::InProcess, ConsumerHold::InProcess));
            }
            QuotaStore::Redis(store) => store,
        };
        let grant = caller.grant();
        for (level, quota) in [Some(&deployment.quota), grant.quota.as_ref()].into_iter().enumerate() {
            let capacity = quota.map_or(u64::MAX, |q| q.limits().tokens_per_minute);
            if tokens > capacity {
                let denial = Denial::ExceedsCapacity { reserved: tokens, capacity };
                let levels = Box::new(view(Admitted { buckets: [None, None], stamp: None, periods: [None, None] }));
                return Err(refusal(LevelDenial::Rate { level, denial }, levels));
            }
        }
        let stamp = Stamp::at(unix_seconds);
        if store.is_up() {
            // An unreachable store is counted and logged by the store: fall back below.
            if let Ok(reply) = store.admit_consumer(deployment, caller, tokens, stamp).await {
                return shared_reply(reply, tokens, stamp, unix_seconds, Arc::clone(store));
            }
        }
        let mode = store.on_error();
        store.count_fallback(mode);
        match mode {
            OnStoreError::FailOpen => {
                let nothing = view(Admitted { buckets: [None, None], stamp: None, periods: [None, None] });
                Ok((nothing, Hold::Unenforced, ConsumerHold::Unenforced))
            }
            OnStoreError::FailClosed => Err(Refusal::StoreUnavailable),
            OnStoreError::Local => {
                let local = store.local_quota(&deployment.name, deployment.quota.limits());
                let grant_local = grant.quota.as_ref().map(|q| {
                    let key = format!("{}:consumer:{}", deployment.name, caller.consumer.label);
                    store.local_quota(&key, q.limits())
                });
                let levels = Levels { buckets: [Some(&local), grant_local.as_deref()], periods: [None, None] };
                in_process(levels).map(|a| (a, Hold::Fallback(Arc::clone(&local)), ConsumerHold::Fallback(grant_local)))
            }
        }
    }

    /// Admission against the buckets `quota` holds the limits of: in process, or shared in
    /// Redis under `key` (a deployment's name, or a pool backend's `backend:{url}`).
    async fn admit_at(
        &self,
        key: &str,
        quota: &DeploymentQuota,
        tokens: u64,
    ) -> Result<(Option<QuotaState>, Hold), Refusal> {
        let store = match self {
            QuotaStore::Memory => {
                return match quota.admit(tokens) {
                    Ok(state) => Ok((Some(state), Hold::InProcess)),
                    Err(denial) => Err(Refusal::Denied(denial)),
                };
            }
            QuotaStore::Redis(store) => store,
        };
        let limits = quota.limits();
        if tokens > limits.tokens_per_minute {
            return Err(Refusal::Denied(Denial::ExceedsCapacity {
                reserved: tokens,
                capacity: limits.tokens_per_minute,
            }));
        }
        if store.is_up() {
            match store.admit(key, limits, tokens).await {
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
                let local = store.local_quota(key, limits);
                match local.admit(tokens) {
                    Ok(state) => Ok((Some(state), Hold::Fallback(local))),
                    // More than this replica's share, not more than the whole capacity:
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

    /// A consumer's own buckets on the deployment now (`None` without its own limits there, or
    /// while a shared store cannot be read).
    pub async fn grant_state(&self, deployment: &Deployment, caller: &ConsumerGrant) -> Option<QuotaState> {
        let quota = caller.grant().quota.as_ref()?;
        match self {
            QuotaStore::Memory => Some(quota.state()),
            QuotaStore::Redis(store) => store.read_grant(&deployment.name, caller, quota.limits()).await,
        }
    }

    /// A consumer's period quotas now, each grant's with such quotas and then the consumer-wide
    /// ones (from the shared store with Redis; `None` while it cannot be read).
    pub async fn consumer_periods(&self, consumer: &Arc<Consumer>) -> Option<Vec<PeriodReading>> {
        let now = consumer.clock.unix_seconds();
        let scopes = consumer
            .grants
            .iter()
            .filter_map(|g| Some((g.deployment.as_str(), g.periods.as_ref()?)))
            .chain(consumer.periods.as_ref().map(|p| ("*", p)));
        let usage: Vec<PeriodUsage> = match self {
            QuotaStore::Memory => scopes.clone().map(|(_, p)| p.usage(now)).collect(),
            QuotaStore::Redis(store) => store.read_periods(consumer, Stamp::at(now)).await?,
        };
        Some(
            scopes
                .zip(usage)
                .map(|((scope, p), usage)| PeriodReading {
                    scope: scope.to_owned(),
                    state: PeriodState { limits: p.limits(), usage },
                })
                .collect(),
        )
    }

    /// Flushes pending reconciliations (at shutdown).
    pub async fn flush(&self) {
        if let QuotaStore::Redis(store) = self {
            store.flush().await;
        }
    }
}

impl BackendHold {
    /// Charges the real count in place of the reservation.
    pub fn settle(&self, reserved: u64, actual: u64) {
        match self {
            BackendHold::None => {}
            BackendHold::Memory(quota) | BackendHold::Fallback(quota) => quota.reconcile(reserved, actual),
            BackendHold::Shared { store, key, limits } => store.reconcile_key(key, *limits, delta(reserved, actual), 0),
        }
    }

    /// Gives the request and its tokens back: the backend refused the attempt or never saw it.
    pub fn refund(&self, reserved: u64) {
        match self {
            BackendHold::None => {}
            BackendHold::Memory(quota) | BackendHold::Fallback(quota) => quota.refund(reserved),
            BackendHold::Shared { store, key, limits } => {
                store.reconcile_key(key, *limits, i64::try_from(reserved).unwrap_or(i64::MAX), 1)
            }
        }
    }
}

/// Where a consumer's own levels were taken from (the deployment's are in the request's
/// [`Hold`]), and so where they are settled.
/// One of a consumer's period quotas as read now: `scope` is the deployment of its grant, or `*`
/// for the quotas over all its deployments.
#[derive(Clone, Debug)]
pub struct PeriodReading {
    pub scope: String,
    pub state: PeriodState,
}

#[derive(Debug)]
pub enum ConsumerHold {
    /// The consumer's in-process buckets and period quotas.
    InProcess,
    /// Its keys in Redis.
    Shared(Arc<RedisStore>),
    /// A `local` fallback bucket for its grant (if it has limits there), while Redis was
    /// unreachable; period quotas were not taken.
    Fallback(Option<Arc<DeploymentQuota>>),
    /// Admitted `fail-open`: nothing to settle.
    Unenforced,
}

impl ConsumerHold {
    /// Charges the real count in place of the reservation on the consumer's levels.
    pub fn settle(&self, deployment: &str, caller: &ConsumerGrant, stamp: Option<Stamp>, reserved: u64, actual: u64) {
        match self {
            ConsumerHold::InProcess => caller.settle_in_process(stamp, reserved, actual),
            ConsumerHold::Shared(store) => store.reconcile_consumer(deployment, caller, stamp, reserved, actual),
            ConsumerHold::Fallback(local) => {
                if let Some(local) = local {
                    local.reconcile(reserved, actual);
                }
            }
            ConsumerHold::Unenforced => {}
        }
    }
}

/// Admission from the deployment's lease: locally from what it holds, or in the one round trip
/// that gives that back and takes a new lease. `None` leaves the decision to the store without
/// the lease: a renewal is already in flight (a request waits for no other), the request is
/// larger than the whole bucket, or the store cannot be reached (what the lease held still
/// admitted first: it was taken from the shared buckets already).
async fn leased(
    store: &Arc<RedisStore>,
    deployment: &Deployment,
    lease: &Arc<Lease>,
    tokens: u64,
) -> Option<Result<(Option<QuotaState>, Hold), Refusal>> {
    let limits = deployment.quota.limits();
    if let Some(taken) = lease.take(tokens, store.now_ns()) {
        if taken.low && store.is_up() {
            if let Some(top_up) = lease.top_up() {
                store.top_up(lease, top_up, &deployment.name, limits);
            }
        }
        return Some(Ok((Some(taken.state), Hold::Leased(Arc::clone(store)))));
    }
    if tokens > limits.tokens_per_minute || !store.is_up() {
        return None;
    }
    if let Some(denial) = lease.still_refused(tokens, store.now_ns()) {
        return Some(Err(Refusal::Denied(denial)));
    }
    let renewal = lease.renew(store.now_ns())?;
    // Not answered: what went back and what was granted are both forgotten (units lost until the
    // refill, never admitted twice), and the store, now marked down, decides below.
    let renewed = store.renew_lease(&deployment.name, limits, tokens, &renewal).await.ok()?;
    if !renewed.admitted {
        lease.refused(renewed.buckets, store.now_ns(), store.replicas());
        return Some(Err(Refusal::Denied(renewed.buckets.denial(tokens))));
    }
    let state = store.hold_grant(lease, renewal, &renewed, &deployment.name, limits);
    Some(Ok((Some(state), Hold::Leased(Arc::clone(store)))))
}

/// A refusal of a consumer's request by level.
fn refusal(denial: LevelDenial, levels: Box<ConsumerAdmission>) -> Refusal {
    match denial {
        LevelDenial::Rate { level: 0, denial } => Refusal::DeniedConsumer(denial, levels),
        LevelDenial::Rate { denial, .. } => Refusal::GrantDenied(denial, levels),
        LevelDenial::Period { level, denial } => Refusal::PeriodExceeded { consumer_wide: level == 1, denial, levels },
    }
}

/// The consumer admission script's answer as an admission or a refusal.
fn shared_reply(
    reply: redis::ConsumerReply,
    tokens: u64,
    stamp: Stamp,
    now: u64,
    store: Arc<RedisStore>,
) -> Result<(ConsumerAdmission, Hold, ConsumerHold), Refusal> {
    let buckets = [Some(&reply.deployment), reply.grant.as_ref()];
    let mut levels = ConsumerAdmission {
        deployment: Some(reply.deployment.state()),
        grant: reply.grant.as_ref().map(Buckets::state),
        periods: reply.periods,
        stamp: Some(stamp).filter(|_| reply.periods.iter().any(Option::is_some)),
        now,
    };
    match reply.status {
        1 => Ok((levels, Hold::Shared(Arc::clone(&store)), ConsumerHold::Shared(store))),
        2 | 3 => {
            let level = usize::from(reply.status == 3);
            let kind = match reply.exceeded {
                1 => PeriodKind::RequestsPerDay,
                2 => PeriodKind::TokensPerDay,
                _ => PeriodKind::TokensPerMonth,
            };
            let state = reply.periods[level];
            let (limit, used) = state
                .and_then(|s| s.each().find(|(k, ..)| *k == kind).map(|(_, limit, used, _)| (limit, used)))
                .unwrap_or((0, 0));
            let denial = PeriodDenial { kind, limit, used, reset_unix: stamp.end_of(kind) };
            Err(refusal(LevelDenial::Period { level, denial }, Box::new(levels)))
        }
        _ => match rate_denial(buckets, tokens) {
            Some((level, denial, states)) => {
                [levels.deployment, levels.grant] = states;
                Err(refusal(LevelDenial::Rate { level, denial }, Box::new(levels)))
            }
            // The script saw no room but the levels it read have it (cannot happen: both read
            // the same numbers); refused as the deployment's with no wait rather than admitted.
            None => {
                let state = reply.deployment.state();
                let denial = Denial::Exhausted { limit: LimitKind::Requests, retry_after_ns: 1_000_000, state };
                Err(refusal(LevelDenial::Rate { level: 0, denial }, Box::new(levels)))
            }
        },
    }
}

/// `reserved - actual` as a signed token difference.
fn delta(reserved: u64, actual: u64) -> i64 {
    i64::try_from(reserved).unwrap_or(i64::MAX).saturating_sub(i64::try_from(actual).unwrap_or(i64::MAX))
}

impl Hold {
    /// Refunds `reserved - actual` or charges `actual - reserved` where the reservation was taken.
    /// Never blocks: a shared store is reconciled in the background, batched per deployment.
    pub fn settle(&self, deployment: &Arc<Deployment>, reserved: u64, actual: u64) {
        match self {
            Hold::InProcess => deployment.quota.reconcile(reserved, actual),
            Hold::Fallback(local) => local.reconcile(reserved, actual),
            Hold::Shared(store) => store.reconcile(deployment, reserved, actual),
            Hold::Leased(store) => {
                let difference = delta(reserved, actual);
                let rest = deployment.lease.as_ref().map_or(difference, |lease| lease.settle(difference));
                store.reconcile_key(&deployment.name, deployment.quota.limits(), rest, 0);
            }
            Hold::Unenforced => {}
        }
    }
}
