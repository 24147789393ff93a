//! A deployment's backends at run time: each one's address, key, client pools, own buckets,
//! health and in-flight count, and the round robin that picks the next attempt's backend
//! (the logic is in [`crate::core::pool`]; this holds it under its locks).
//!
//! A backend is one endpoint with one quota and one health, whichever deployments send to it:
//! its buckets and its health are kept per URL in a [`BackendRegistry`] that every table build
//! shares (two deployments over one endpoint cannot together send it more than its quota, and a
//! dead endpoint is dead for both). They carry across reloads, like a deployment's own buckets,
//! so a reload neither forgives a cooling or ejected backend nor refills its quota. With
//! `store = "redis"` the buckets live in Redis under `<prefix>{backend:<url>}`, shared by every
//! replica ([`QuotaStore::admit_backend`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use prometheus::IntCounter;

use crate::config::{BackendConfig, BackendSettings, BackendUrl};
use crate::core::clock::Clock;
use crate::core::pool::health::{Admission, Change, Health, Status};
use crate::core::pool::select::{Member, SmoothWeighted};
use crate::core::quota::{DeploymentQuota, Limits};
use crate::state::deployment::BackendAuth;
use crate::state::quota_store::{BackendHold, QuotaStore};
use crate::state::upstream::BackendClient;

/// One backend of a pool.
#[derive(Debug)]
pub struct PoolBackend {
    pub url: BackendUrl,
    /// How metrics, logs and the ledger name it.
    pub name: Arc<str>,
    /// Where its shared buckets are kept (`backend:{url}`).
    pub bucket_key: Arc<str>,
    pub auth: Option<BackendAuth>,
    pub http2: bool,
    /// The private CA's certificates its client was built with (a reload with the same ones
    /// keeps the client).
    pub ca: Option<Arc<[u8]>>,
    /// Pools for a backend behind a private CA; `None` uses the gateway's shared pools.
    pub client: Option<Arc<BackendClient>>,
    /// Its own limits and in-process buckets, when it has limits (shared per URL).
    pub quota: Option<Arc<DeploymentQuota>>,
    pub weight: u32,
    pub priority: u32,
    /// Shared per URL by every deployment sending to it.
    health: Arc<Mutex<Health>>,
    /// This deployment's view: requests in flight and metric series.
    local: Arc<Local>,
}

#[derive(Debug, Default)]
struct Local {
    inflight: AtomicI64,
    series: BackendSeries,
}

/// A backend's busiest metric series (resolved once, see [`crate::state::metrics::DeploymentSeries`]).
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
        lock(&self.health)
    }

    pub fn status(&self, now_ns: u64) -> Status {
        self.health().status(now_ns)
    }

    /// Attempts in flight to it, counted for a backend of a pool of several (the only backend of
    /// a pool has its deployment's count, `UsageCounters::inflight`).
    pub fn inflight(&self) -> i64 {
        self.local.inflight.load(Ordering::Relaxed)
    }

    pub fn series(&self) -> &BackendSeries {
        &self.local.series
    }

    pub fn limits(&self) -> Option<Limits> {
        self.quota.as_ref().map(|q| q.limits())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The critical sections cannot panic midway; a poisoned lock still holds consistent state.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Each backend's health and buckets by URL, shared by the deployments of one table and carried
/// from the table before.
#[derive(Debug, Default)]
pub struct BackendRegistry {
    by_url: Mutex<HashMap<Arc<str>, Known>>,
}

#[derive(Debug, Clone)]
struct Known {
    /// The URL, shared by every pool backend at it (as the map's key, `backend:{url}`, is their
    /// `bucket_key`): a request clones its parts (a reference count) and hashes its authority
    /// (the connection pool's key), and at 10,000 deployments over one backend those are then
    /// one hot cache line, not a cold one of each deployment's own.
    url: BackendUrl,
    health: Arc<Mutex<Health>>,
    quota: Option<Arc<DeploymentQuota>>,
}

impl BackendRegistry {
    /// A registry that knows every backend of these pools (the table being replaced).
    pub fn seeded<'a>(pools: impl Iterator<Item = &'a BackendPool>) -> BackendRegistry {
        let mut by_url = HashMap::new();
        for pool in pools {
            for b in &pool.backends {
                by_url.entry(Arc::clone(&b.bucket_key)).or_insert_with(|| Known {
                    url: b.url.clone(),
                    health: Arc::clone(&b.health),
                    quota: b.quota.clone(),
                });
            }
        }
        BackendRegistry { by_url: Mutex::new(by_url) }
    }

    /// The bucket key (`backend:{url}`), health, buckets and shared URL of the backend at `url`,
    /// new when unknown; buckets follow `limits` (levels kept), or go when it has none.
    fn get(&self, url: &BackendUrl, limits: Option<Limits>, clock: &Arc<dyn Clock>) -> (Arc<str>, Known) {
        let key = format!("backend:{url}");
        let mut by_url = lock(&self.by_url);
        let bucket_key = by_url.get_key_value(key.as_str()).map_or_else(|| Arc::from(key), |(k, _)| Arc::clone(k));
        let known = by_url.entry(Arc::clone(&bucket_key)).or_insert_with(|| Known {
            url: url.clone(),
            health: Arc::default(),
            quota: None,
        });
        known.quota = match (limits, known.quota.take()) {
            (None, _) => None,
            (Some(limits), Some(quota)) => {
                if quota.limits() != limits {
                    quota.set_limits(limits);
                }
                Some(quota)
            }
            (Some(limits), None) => Some(Arc::new(DeploymentQuota::new(limits, Arc::clone(clock)))),
        };
        (bucket_key, known.clone())
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
    admission: Admission,
    hold: BackendHold,
    reserved: u64,
    /// What a backend of a pool of several keeps; `None` for the only backend of a pool, whose
    /// health is not tracked (there is nothing to fail over to) and whose in-flight count is its
    /// deployment's. (At 10,000 deployments each of these is a cold line, or a line two workers
    /// pass back and forth, a request would otherwise touch.)
    tracked: Option<Tracked>,
    done: bool,
}

#[derive(Debug)]
struct Tracked {
    health: Arc<Mutex<Health>>,
    local: Arc<Local>,
    clock: Arc<dyn Clock>,
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

/// What the picks of one request learnt of the backends' own buckets: for each backend whose
/// buckets refused, in how long they would take the reservation (`None`: never, too small).
/// Empty (no allocation) unless a bucket refused.
#[derive(Clone, Debug, Default)]
pub struct Waits {
    quota: Vec<(usize, Option<u64>)>,
}

impl Waits {
    fn get(&self, index: usize) -> Option<Option<u64>> {
        self.quota.iter().rev().find(|(i, _)| *i == index).map(|(_, wait)| *wait)
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

impl BackendPool {
    /// The pool from its configuration. Health and buckets come from `registry` (by URL); the
    /// in-flight count and metric series from `previous` (the same deployment before a reload),
    /// for a backend still there under the same name.
    pub fn build(
        configs: &[BackendConfig],
        previous: Option<&BackendPool>,
        registry: &BackendRegistry,
        clock: &Arc<dyn Clock>,
        settings: &BackendSettings,
    ) -> BackendPool {
        let backends: Vec<PoolBackend> = configs
            .iter()
            .map(|config| {
                let before =
                    previous.and_then(|p| p.backends.iter().find(|b| b.url == config.url && *b.name == *config.name));
                // A private CA gets its own pools; the same CA as before keeps them (and their connections).
                let client = config.ca.as_ref().map(|ca| match before {
                    Some(b) if b.ca.as_deref() == Some(&*ca.pem) => b
                        .client
                        .clone()
                        .unwrap_or_else(|| Arc::new(BackendClient::with_roots(settings, Some(ca.roots())))),
                    _ => Arc::new(BackendClient::with_roots(settings, Some(ca.roots()))),
                });
                let (bucket_key, known) = registry.get(&config.url, config.limits, clock);
                PoolBackend {
                    url: known.url,
                    name: Arc::clone(&config.name),
                    bucket_key,
                    auth: config.key.as_ref().and_then(|k| BackendAuth::new(k.expose())),
                    http2: config.http2,
                    ca: config.ca.as_ref().map(|ca| Arc::clone(&ca.pem)),
                    client,
                    quota: known.quota,
                    weight: config.weight,
                    priority: config.priority,
                    health: known.health,
                    local: before.map_or_else(Default::default, |b| Arc::clone(&b.local)),
                }
            })
            .collect();
        // One backend is never chosen between (see `pick`): no selector state to keep for it.
        let choices = if backends.len() > 1 { backends.as_slice() } else { &[] };
        let members = choices.iter().map(|b| Member { weight: b.weight, priority: b.priority }).collect();
        BackendPool {
            selector: Mutex::new(SmoothWeighted::new(choices.len())),
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

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The backend for the next attempt, skipping those in `tried` (a bit per backend), with
    /// `reserved` tokens and a request taken from its own buckets (in `store`); `None` when no
    /// backend can take it now. What the buckets said is kept in `waits` for
    /// [`BackendPool::earliest`].
    pub async fn pick(&self, tried: u64, reserved: u64, store: &QuotaStore, waits: &mut Waits) -> Option<Attempt> {
        if let [only] = self.backends.as_slice() {
            // One backend: no choice to make and no health kept (see `Attempt::report`).
            if tried != 0 {
                return None;
            }
            let hold = match store.admit_backend(only, reserved).await {
                Ok(hold) => hold,
                Err(refusal) => {
                    waits.quota.push((0, refusal.wait()));
                    return None;
                }
            };
            return Some(self.attempt(0, Admission::Ready, hold, reserved));
        }
        let now = self.clock.now_ns();
        let mut excluded = tried;
        for (i, backend) in self.backends.iter().enumerate() {
            if excluded & (1 << i) == 0 && matches!(backend.health().admission(now), Admission::Wait { .. }) {
                excluded |= 1 << i;
            }
        }
        loop {
            let i = lock(&self.selector).pick(&self.members, |i| excluded & (1 << i) == 0)?;
            excluded |= 1 << i;
            let backend = &self.backends[i];
            let hold = match store.admit_backend(backend, reserved).await {
                Ok(hold) => hold,
                Err(refusal) => {
                    waits.quota.push((i, refusal.wait()));
                    continue;
                }
            };
            let Some(admission) = backend.health().start(self.clock.now_ns()) else {
                // Another request took the probe between the look and now.
                hold.refund(reserved);
                continue;
            };
            return Some(self.attempt(i, admission, hold, reserved));
        }
    }

    fn attempt(&self, index: usize, admission: Admission, hold: BackendHold, reserved: u64) -> Attempt {
        let tracked = (self.backends.len() > 1).then(|| {
            let backend = &self.backends[index];
            backend.local.inflight.fetch_add(1, Ordering::Relaxed);
            Tracked {
                health: Arc::clone(&backend.health),
                local: Arc::clone(&backend.local),
                clock: Arc::clone(&self.clock),
            }
        });
        Attempt { index, admission, hold, reserved, tracked, done: false }
    }

    /// When the earliest backend not in `skip` can take the request, from its health and what
    /// its buckets said (`waits`). `None` when every backend is skipped.
    pub fn earliest(&self, skip: u64, waits: &Waits) -> Option<Availability> {
        let now = self.clock.now_ns();
        let mut best: Option<(u64, bool)> = None;
        let mut too_small: Option<u64> = None;
        for (i, backend) in self.backends.iter().enumerate() {
            if skip & (1 << i) != 0 {
                continue;
            }
            // The only backend of a pool keeps no health: only its buckets say when.
            let (mut at, ejected) = if self.backends.len() == 1 {
                (now, false)
            } else {
                let health = backend.health();
                let at = match health.admission(now) {
                    Admission::Wait { until_ns } => until_ns,
                    Admission::Ready | Admission::Probe => now,
                };
                (at, health.status(now) == Status::Ejected)
            };
            match waits.get(i) {
                None => {}
                Some(Some(wait)) => at = at.max(now.saturating_add(wait)),
                Some(None) => {
                    let capacity = backend.limits().map_or(0, |l| l.tokens_per_minute);
                    too_small = Some(too_small.map_or(capacity, |c| c.max(capacity)));
                    continue;
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

    /// An active health check's answer: a success closes the breaker at once (the backend is
    /// back), a failure counts toward ejection like a failed request. `None` for the only
    /// backend of a pool (it keeps no health).
    pub fn checked(&self, index: usize, ok: bool) -> Option<Change> {
        if self.backends.len() == 1 {
            return None;
        }
        let backend = self.backends.get(index)?;
        let now = self.clock.now_ns();
        let mut health = backend.health();
        if ok { health.succeeded(now) } else { health.failed(now) }
    }
}

impl Attempt {
    /// Reports how the attempt ended. A backend that did not answer usefully gets its request
    /// and tokens back; one that answered keeps the reservation until [`Attempt::settle`]. The
    /// only backend of a pool keeps no health (it is never cooled down or ejected).
    pub fn report(&mut self, outcome: Outcome) -> Option<Change> {
        let change = self.tracked.as_ref().and_then(|tracked| {
            let now = tracked.clock.now_ns();
            let mut health = lock(&tracked.health);
            match outcome {
                Outcome::Answered => health.succeeded(now),
                Outcome::Throttled { retry_ns } => health.throttled(now, retry_ns),
                Outcome::Failed => health.failed(now),
            }
        });
        if outcome != Outcome::Answered {
            self.give_back();
        }
        change
    }

    /// The response is over: its real token count replaces the reservation on the backend's
    /// buckets, and its in-flight slot is freed.
    pub fn settle(mut self, actual: u64) {
        if !std::mem::replace(&mut self.done, true) {
            self.hold.settle(self.reserved, actual);
            self.leave();
        }
    }

    fn give_back(&mut self) {
        if !std::mem::replace(&mut self.done, true) {
            self.hold.refund(self.reserved);
            self.leave();
        }
    }

    /// Frees its in-flight slot (a tracked backend's).
    fn leave(&self) {
        if let Some(tracked) = &self.tracked {
            tracked.local.inflight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.done {
            // No outcome: the client went away while the attempt was out.
            if let Some(tracked) = &self.tracked {
                lock(&tracked.health).abandoned(self.admission);
            }
            self.give_back();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::clock::ManualClock;

    fn pool(urls: &[&str], clock: &Arc<dyn Clock>) -> BackendPool {
        let configs: Vec<BackendConfig> = urls
            .iter()
            .map(|u| BackendConfig::single(BackendUrl::parse(u).unwrap_or_else(|e| panic!("{e}")), None, false, None))
            .collect();
        BackendPool::build(&configs, None, &BackendRegistry::default(), clock, &BackendSettings::default())
    }

    #[tokio::test]
    async fn only_a_pool_of_several_counts_attempts_in_flight_to_each_backend() {
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(0));
        let two = pool(&["http://a.example", "http://b.example"], &clock);
        let attempt = two.pick(0, 10, &QuotaStore::Memory, &mut Waits::default()).await.unwrap();
        let index = attempt.index;
        assert_eq!(two.backends[index].inflight(), 1);
        assert_eq!(two.backends[1 - index].inflight(), 0);
        attempt.settle(5);
        assert_eq!(two.backends[index].inflight(), 0);
        let gone = two.pick(0, 10, &QuotaStore::Memory, &mut Waits::default()).await.unwrap();
        let index = gone.index;
        drop(gone); // the client went away: the slot is freed too
        assert_eq!(two.backends[index].inflight(), 0);

        // The only backend is not tracked: its requests in flight are its deployment's.
        let one = pool(&["http://a.example"], &clock);
        let mut attempt = one.pick(0, 10, &QuotaStore::Memory, &mut Waits::default()).await.unwrap();
        assert_eq!(one.backends[0].inflight(), 0);
        assert_eq!(attempt.report(Outcome::Failed), None, "no health kept");
        assert_eq!(one.backends[0].status(0), Status::Healthy);
    }
}
