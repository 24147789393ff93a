//! A deployment's backends at run time: each one's address, key, client pools, own buckets,
//! health and in-flight count, and the round robin that picks the next attempt's backend
//! (the logic is in [`crate::core::pool`]; this holds it under its locks).
//!
//! Health, buckets and in-flight counts carry across reloads for a backend whose URL stays in
//! the pool (like the deployment's own buckets), so a reload does not forgive a cooling or
//! ejected backend nor refill its quota.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use prometheus::IntCounter;

use crate::config::{BackendCa, BackendConfig, BackendSettings, BackendUrl};
use crate::core::clock::Clock;
use crate::core::pool::health::{Admission, Change, Health, Status};
use crate::core::pool::select::{Member, SmoothWeighted};
use crate::core::quota::{DeploymentQuota, QuotaState};
use crate::state::deployment::BackendAuth;
use crate::state::upstream::BackendClient;

/// One backend of a pool.
#[derive(Debug)]
pub struct PoolBackend {
    pub url: BackendUrl,
    /// How metrics, logs and the ledger name it.
    pub name: Arc<str>,
    pub auth: Option<BackendAuth>,
    pub http2: bool,
    pub ca: Option<BackendCa>,
    /// Pools for a backend behind a private CA; `None` uses the gateway's shared pools.
    pub client: Option<Arc<BackendClient>>,
    /// Its own buckets, when it has limits.
    pub quota: Option<Arc<DeploymentQuota>>,
    pub weight: u32,
    pub priority: u32,
    shared: Arc<Shared>,
}

/// What a backend keeps across reloads.
#[derive(Debug, Default)]
struct Shared {
    health: Mutex<Health>,
    inflight: AtomicI64,
    /// Attempts by result, resolved on first use (see [`crate::state::metrics::DeploymentSeries`]).
    series: BackendSeries,
}

/// A backend's busiest metric series.
#[derive(Default)]
pub struct BackendSeries {
    pub ok: OnceLock<IntCounter>,
}

impl std::fmt::Debug for BackendSeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendSeries").finish_non_exhaustive()
    }
}

impl PoolBackend {
    fn health(&self) -> MutexGuard<'_, Health> {
        // The critical sections cannot panic midway; a poisoned lock still holds consistent state.
        self.shared.health.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn status(&self, now_ns: u64) -> Status {
        self.health().status(now_ns)
    }

    pub fn inflight(&self) -> i64 {
        self.shared.inflight.load(Ordering::Relaxed)
    }

    pub fn series(&self) -> &BackendSeries {
        &self.shared.series
    }

    /// Its buckets now, when it has limits.
    pub fn quota_state(&self) -> Option<QuotaState> {
        self.quota.as_ref().map(|q| q.state())
    }
}

/// A deployment's backends (one or more) and the round robin over them.
#[derive(Debug)]
pub struct BackendPool {
    pub backends: Vec<PoolBackend>,
    members: Vec<Member>,
    selector: Mutex<SmoothWeighted>,
    clock: Arc<dyn Clock>,
}

/// The backend an attempt goes to, holding what it took: its in-flight slot, its buckets'
/// reservation and, for a probe, the probe slot. Dropped without an outcome (the client went
/// away), it gives them back.
#[must_use = "an attempt must report its outcome"]
#[derive(Debug)]
pub struct Attempt {
    pub index: usize,
    pub admission: Admission,
    /// Tokens reserved on the backend's own buckets (`None` when it has no limits).
    pub reserved: Option<u64>,
    shared: Arc<Shared>,
    quota: Option<Arc<DeploymentQuota>>,
    clock: Arc<dyn Clock>,
    /// The pool's only backend: its health is not tracked (there is nothing to fail over to).
    solo: bool,
    done: bool,
}

/// How an attempt ended, as far as the backend's health goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered (anything but a 429 or a 5xx): its reservation moves on with the response.
    Answered,
    /// 429, with the time it asked for (if it said).
    Throttled { retry_ns: Option<u64> },
    /// Connect error, 5xx, first-byte timeout, broken head.
    Failed,
}

impl BackendPool {
    /// The pool from its configuration, keeping what `previous` knew of backends still in it.
    pub fn build(
        configs: &[BackendConfig],
        previous: Option<&BackendPool>,
        clock: &Arc<dyn Clock>,
        settings: &BackendSettings,
    ) -> BackendPool {
        let backends: Vec<PoolBackend> = configs
            .iter()
            .map(|config| {
                // The same backend under the same name (its metric series carry the name).
                let before =
                    previous.and_then(|p| p.backends.iter().find(|b| b.url == config.url && *b.name == *config.name));
                // A private CA gets its own pools; the same CA as before keeps them (and their connections).
                let client = config.ca.as_ref().map(|ca| match before {
                    Some(b) if b.ca.as_ref() == Some(ca) => b
                        .client
                        .clone()
                        .unwrap_or_else(|| Arc::new(BackendClient::with_roots(settings, Some(ca.roots())))),
                    _ => Arc::new(BackendClient::with_roots(settings, Some(ca.roots()))),
                });
                let quota = config.limits.map(|limits| match before.and_then(|b| b.quota.as_ref()) {
                    Some(quota) => {
                        quota.set_limits(limits);
                        Arc::clone(quota)
                    }
                    None => Arc::new(DeploymentQuota::new(limits, Arc::clone(clock))),
                });
                PoolBackend {
                    url: config.url.clone(),
                    name: Arc::from(config.name.as_str()),
                    auth: config.key.as_ref().and_then(|k| BackendAuth::new(k.expose())),
                    http2: config.http2,
                    ca: config.ca.clone(),
                    client,
                    quota,
                    weight: config.weight,
                    priority: config.priority,
                    shared: before.map_or_else(Default::default, |b| Arc::clone(&b.shared)),
                }
            })
            .collect();
        let members = backends.iter().map(|b| Member { weight: b.weight, priority: b.priority }).collect();
        BackendPool {
            selector: Mutex::new(SmoothWeighted::new(backends.len())),
            backends,
            members,
            clock: Arc::clone(clock),
        }
    }

    pub fn len(&self) -> usize {
        self.backends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    pub fn now_ns(&self) -> u64 {
        self.clock.now_ns()
    }

    /// The backend for the next attempt, skipping those in `tried` (a bit per backend), with
    /// `reserved` tokens and a request taken from its own buckets; `None` when no backend can
    /// take it now ([`BackendPool::earliest`] says when one can).
    pub fn pick(&self, tried: u64, reserved: u64) -> Option<Attempt> {
        let now = self.clock.now_ns();
        let mut excluded = tried;
        for (i, backend) in self.backends.iter().enumerate() {
            if excluded & (1 << i) == 0 && matches!(backend.health().admission(now), Admission::Wait { .. }) {
                excluded |= 1 << i;
            }
        }
        loop {
            let chosen = {
                let mut selector = self.selector.lock().unwrap_or_else(PoisonError::into_inner);
                selector.pick(&self.members, |i| excluded & (1 << i) == 0)
            };
            let i = chosen?;
            excluded |= 1 << i;
            let backend = &self.backends[i];
            if let Some(quota) = &backend.quota {
                if quota.admit(reserved).is_err() {
                    continue;
                }
            }
            let Some(admission) = backend.health().start(now) else {
                // Another request took the probe between the look and now.
                if let Some(quota) = &backend.quota {
                    quota.refund(reserved);
                }
                continue;
            };
            backend.shared.inflight.fetch_add(1, Ordering::Relaxed);
            return Some(Attempt {
                index: i,
                admission,
                reserved: backend.quota.as_ref().map(|_| reserved),
                shared: Arc::clone(&backend.shared),
                quota: backend.quota.clone(),
                clock: Arc::clone(&self.clock),
                solo: self.backends.len() == 1,
                done: false,
            });
        }
    }

    /// When the earliest backend not in `skip` can take an attempt reserving `reserved` tokens.
    /// `None` when every backend is skipped.
    pub fn earliest(&self, skip: u64, reserved: u64) -> Option<Availability> {
        let now = self.clock.now_ns();
        let mut best: Option<(u64, bool)> = None;
        let mut too_small: Option<u64> = None;
        for (i, backend) in self.backends.iter().enumerate() {
            if skip & (1 << i) != 0 {
                continue;
            }
            let health = backend.health();
            let ejected = health.status(now) == Status::Ejected;
            let mut at = match health.admission(now) {
                Admission::Wait { until_ns } => until_ns,
                Admission::Ready | Admission::Probe => now,
            };
            drop(health);
            if let Some(quota) = &backend.quota {
                match quota.wait_ns_for(reserved) {
                    Some(wait) => at = at.max(now.saturating_add(wait)),
                    None => {
                        too_small = Some(
                            too_small
                                .map_or(quota.limits().tokens_per_minute, |c| c.max(quota.limits().tokens_per_minute)),
                        );
                        continue;
                    }
                }
            }
            best = match best {
                Some((t, all_ejected)) => Some((t.min(at), all_ejected && ejected)),
                None => Some((at, ejected)),
            };
        }
        match (best, too_small) {
            (Some((at_ns, all_ejected)), _) => Some(Availability::At { in_ns: at_ns.saturating_sub(now), all_ejected }),
            (None, Some(capacity)) => Some(Availability::Never { capacity }),
            (None, None) => None,
        }
    }
}

/// When a backend of the pool can take the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Availability {
    /// In this long; `all_ejected` when every backend counted is ejected (not throttled).
    At { in_ns: u64, all_ejected: bool },
    /// Never: the reservation is larger than every backend's token capacity (the largest given).
    Never { capacity: u64 },
}

impl Attempt {
    /// Reports how the attempt ended. A backend that did not answer usefully gets its request
    /// and tokens back; one that answered keeps the reservation until [`Attempt::settle`]. The
    /// only backend of a pool keeps no health (it is never cooled down or ejected).
    pub fn report(&mut self, outcome: Outcome) -> Option<Change> {
        let now = self.clock.now_ns();
        let change = if self.solo {
            None
        } else {
            let mut health = self.shared.health.lock().unwrap_or_else(PoisonError::into_inner);
            match outcome {
                Outcome::Answered => health.succeeded(now),
                Outcome::Throttled { retry_ns } => health.throttled(now, retry_ns),
                Outcome::Failed => health.failed(now),
            }
        };
        if outcome != Outcome::Answered {
            self.give_back();
        }
        change
    }

    /// The response is over: its real token count replaces the reservation on the backend's
    /// buckets, and its in-flight slot is freed.
    pub fn settle(mut self, actual: u64) {
        if !std::mem::replace(&mut self.done, true) {
            if let (Some(quota), Some(reserved)) = (&self.quota, self.reserved) {
                quota.reconcile(reserved, actual);
            }
            self.shared.inflight.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn give_back(&mut self) {
        if !std::mem::replace(&mut self.done, true) {
            if let (Some(quota), Some(reserved)) = (&self.quota, self.reserved) {
                quota.refund(reserved);
            }
            self.shared.inflight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.done {
            // No outcome: the client went away while the attempt was out.
            self.shared.health.lock().unwrap_or_else(PoisonError::into_inner).abandoned(self.admission);
            self.give_back();
        }
    }
}
