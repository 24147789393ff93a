//! Reconciliation with the shared buckets: settled differences summed per deployment and sent in
//! the background as numbered batches, one pipeline each; a batch that failed or timed out is
//! sent again with its number (the script refuses a number it has applied).

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, Weak};
use std::time::Instant;

use redis::{ErrorKind, ServerErrorKind};

use super::connection::Connection;
use tokio::sync::oneshot;

use super::{PROBE_INTERVAL, RedisStore};
use crate::core::quota::Limits;
use crate::core::quota::period::Stamp;
use crate::state::consumer::ConsumerGrant;
use crate::state::deployment::Deployment;

/// Token differences per deployment name, with the limits to refill by.
pub(super) type Sums = HashMap<String, (Limits, i64, i64)>;

/// A consumer's settled differences on one key: its buckets on a deployment (tokens to give back,
/// negative to charge), or a period hash (tokens to charge in the day and the month they counted
/// in; a later day or month replaces an earlier one's, which has nothing left to change once
/// the period has moved on).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ConsumerSum {
    /// `requests`: requests given back (an admission undone on Redis Cluster).
    Bucket { limits: Limits, tokens: i64, requests: i64 },
    /// `day_requests`: requests of the day given back (an admission undone on Redis Cluster).
    Period { day: u64, month: u64, day_charge: i64, month_charge: i64, day_requests: i64, expire_at: u64 },
}

impl ConsumerSum {
    fn add(&mut self, more: ConsumerSum) {
        match (self, more) {
            (
                ConsumerSum::Bucket { limits, tokens, requests },
                ConsumerSum::Bucket { limits: newer, tokens: more, requests: more_requests },
            ) => {
                *limits = newer;
                *tokens = tokens.saturating_add(more);
                *requests = requests.saturating_add(more_requests);
            }
            (
                ConsumerSum::Period { day, month, day_charge, month_charge, day_requests, expire_at },
                ConsumerSum::Period {
                    day: d,
                    month: m,
                    day_charge: dc,
                    month_charge: mc,
                    day_requests: dq,
                    expire_at: e,
                },
            ) => {
                if d > *day {
                    (*day, *day_charge, *day_requests) = (d, dc, dq);
                } else if d == *day {
                    *day_charge = day_charge.saturating_add(dc);
                    *day_requests = day_requests.saturating_add(dq);
                }
                if m > *month {
                    (*month, *month_charge, *expire_at) = (m, mc, e);
                } else if m == *month {
                    *month_charge = month_charge.saturating_add(mc);
                }
            }
            (this, more) => *this = more,
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            ConsumerSum::Bucket { tokens, requests, .. } => *tokens == 0 && *requests == 0,
            ConsumerSum::Period { day_charge, month_charge, day_requests, .. } => {
                *day_charge == 0 && *month_charge == 0 && *day_requests == 0
            }
        }
    }
}

/// Consumers' differences by Redis key.
pub(super) type ConsumerSums = HashMap<Arc<str>, ConsumerSum>;

/// Settled differences not yet sent, summed per deployment (and per consumer key): memory is
/// bounded by the number of deployments and grants however long Redis is away (no queue of
/// individual settlements).
#[derive(Default)]
pub(super) struct Pending {
    pub(super) sums: Sums,
    pub(super) consumers: ConsumerSums,
    /// `flush()` callers waiting for what was pending when they asked to be sent.
    pub(super) waiting: Vec<oneshot::Sender<()>>,
}

impl RedisStore {
    /// Queues a settled reservation's difference for the reconciler.
    pub fn reconcile(&self, deployment: &Arc<Deployment>, reserved: u64, actual: u64) {
        let tokens =
            i64::try_from(reserved).unwrap_or(i64::MAX).saturating_sub(i64::try_from(actual).unwrap_or(i64::MAX));
        self.reconcile_key(&deployment.name, deployment.quota.limits(), tokens, 0);
    }

    /// Queues `tokens` (given back when positive, charged when negative) and `requests` (given
    /// back) for the buckets at `key` (a deployment's name, or a pool backend's `backend:{url}`).
    pub fn reconcile_key(&self, key: &str, limits: Limits, tokens: i64, requests: i64) {
        if tokens != 0 || requests != 0 {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            match pending.sums.get_mut(key) {
                Some(entry) => *entry = (limits, entry.1.saturating_add(tokens), entry.2.saturating_add(requests)),
                None => {
                    pending.sums.insert(key.to_owned(), (limits, tokens, requests));
                }
            }
            drop(pending);
            self.wake.notify_one();
        }
    }

    /// Queues a consumer's settled reservation: `reserved - actual` back to its buckets on the
    /// deployment, and `actual - reserved` charged to its period quotas in the periods of `stamp`.
    pub fn reconcile_consumer(
        &self,
        deployment: &str,
        caller: &ConsumerGrant,
        stamp: Option<Stamp>,
        reserved: u64,
        actual: u64,
    ) {
        let back =
            i64::try_from(reserved).unwrap_or(i64::MAX).saturating_sub(i64::try_from(actual).unwrap_or(i64::MAX));
        if back == 0 {
            return;
        }
        let grant = caller.grant();
        let [grant_key, period_key] = self.grant_keys(deployment, caller);
        let mut entries: [Option<(&Arc<str>, ConsumerSum)>; 3] = [None, None, None];
        if let Some(quota) = &grant.quota {
            entries[0] = Some((grant_key, ConsumerSum::Bucket { limits: quota.limits(), tokens: back, requests: 0 }));
        }
        if let Some(stamp) = stamp {
            let period = ConsumerSum::Period {
                day: stamp.day,
                month: stamp.month,
                day_charge: -back,
                month_charge: -back,
                day_requests: 0,
                expire_at: super::period_expiry(stamp),
            };
            if grant.periods.is_some() {
                entries[1] = Some((period_key, period));
            }
            if caller.consumer.periods.is_some() {
                entries[2] = Some((self.consumer_key(&caller.consumer), period));
            }
        }
        for (key, sum) in entries.into_iter().flatten() {
            self.queue_sum(key, sum);
        }
    }

    /// Adds `sum` to what is pending for `key` and wakes the reconciler.
    pub(super) fn queue_sum(&self, key: &Arc<str>, sum: ConsumerSum) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        match pending.consumers.get_mut(key) {
            Some(entry) => entry.add(sum),
            None => {
                pending.consumers.insert(Arc::clone(key), sum);
            }
        }
        drop(pending);
        self.wake.notify_one();
    }

    /// Sends what is pending now, waiting (bounded) for it.
    pub async fn flush(&self) {
        self.sweep(true); // what leases hold goes back with this last batch
        let (done, wait) = oneshot::channel();
        self.pending.lock().unwrap_or_else(PoisonError::into_inner).waiting.push(done);
        self.wake.notify_one();
        let _ = tokio::time::timeout(self.settings.timeout * 4, wait).await;
    }

    /// What is pending, taken for a new batch, and who waits for it.
    fn take_pending(&self) -> (Batch, Vec<oneshot::Sender<()>>) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let batch =
            Batch { sums: std::mem::take(&mut pending.sums), consumers: std::mem::take(&mut pending.consumers) };
        (batch, std::mem::take(&mut pending.waiting))
    }

    /// Sends one batch of summed reconciliations, one script call per deployment, pipelined,
    /// each carrying this replica's id and the batch's sequence number. Calls answered `NOSCRIPT`
    /// (Redis restarted and lost its script cache) did not run: the script is loaded and exactly
    /// those are sent again. Returns false (keep the batch, and send it again with the same
    /// number) when Redis could not be reached or did not answer in time; Redis may have run it
    /// anyway, and then the script sees the number it recorded and does not apply it twice.
    pub(super) async fn send(&self, seq: u64, batch: &Batch) -> bool {
        let Some(connection) = self.connection.load_full() else { return false };
        let mut connection = Connection::clone(&connection);
        let deployments = batch.sums.iter().map(|(name, sum)| (self.key(name), Sent::Deployment(sum)));
        let consumers = batch.consumers.iter().map(|(key, sum)| (key.to_string(), Sent::Consumer(sum)));
        let all: Vec<(String, Sent<'_>)> = deployments.chain(consumers).collect();
        let mut todo: Vec<&(String, Sent<'_>)> = all.iter().collect();
        let started = Instant::now();
        for attempt in 0..2 {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for (key, sent) in &todo {
                let call = pipe.cmd("EVALSHA");
                // A consumer's buckets are reconciled as a deployment's.
                let (limits, tokens, requests) = match sent {
                    Sent::Deployment((limits, tokens, requests)) => (limits, *tokens, *requests),
                    Sent::Consumer(ConsumerSum::Bucket { limits, tokens, requests }) => (limits, *tokens, *requests),
                    Sent::Consumer(ConsumerSum::Period {
                        day,
                        month,
                        day_charge,
                        month_charge,
                        day_requests,
                        expire_at,
                    }) => {
                        call.arg(self.reconcile_period_script.get_hash())
                            .arg(1)
                            .arg(key)
                            .arg(*day)
                            .arg(*month)
                            .arg(*day_charge)
                            .arg(*month_charge)
                            .arg(&self.replica)
                            .arg(seq)
                            .arg(*expire_at)
                            .arg(*day_requests);
                        continue;
                    }
                };
                call.arg(self.reconcile_script.get_hash())
                    .arg(1)
                    .arg(key)
                    .arg(limits.requests_per_minute)
                    .arg(limits.tokens_per_minute)
                    .arg(tokens)
                    .arg(&self.replica)
                    .arg(seq)
                    .arg(requests);
            }
            let replies = match tokio::time::timeout(self.settings.timeout, connection.send_all(&pipe)).await {
                Ok(Ok(replies)) => replies,
                Ok(Err(error)) => {
                    self.failed("reconcile", &error.to_string());
                    return false;
                }
                Err(_) => {
                    self.failed("reconcile", "timed out");
                    return false;
                }
            };
            let mut again = Vec::new();
            for (entry, reply) in todo.into_iter().zip(replies) {
                match reply {
                    Err(error) if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) && attempt == 0 => {
                        again.push(entry);
                    }
                    Err(error) => {
                        // A script error is a bug, not an outage: counted and logged, not retried.
                        self.metrics.quota_store_errors.with_label_values(&["reconcile"]).inc();
                        tracing::error!(key = %entry.0, error = error.code().unwrap_or("?"), "quota store: reconcile script failed");
                    }
                    Ok(_) => {}
                }
            }
            if again.is_empty() {
                self.metrics
                    .quota_store_duration
                    .with_label_values(&["reconcile"])
                    .observe(started.elapsed().as_secs_f64());
                return true;
            }
            for script in [&self.reconcile_script, &self.reconcile_period_script] {
                let loaded =
                    tokio::time::timeout(self.settings.timeout, script.prepare_invoke().load_async(&mut connection))
                        .await;
                if !matches!(loaded, Ok(Ok(_))) {
                    self.failed("reconcile", "cannot load the script");
                    return false;
                }
            }
            todo = again;
        }
        true
    }
}

/// One batch: the deployments' (and pool backends') sums and the consumers'.
#[derive(Default)]
pub(super) struct Batch {
    sums: Sums,
    consumers: ConsumerSums,
}

impl Batch {
    fn retain_nonzero(&mut self) {
        self.sums.retain(|_, (_, tokens, requests)| *tokens != 0 || *requests != 0);
        self.consumers.retain(|_, sum| !sum.is_empty());
    }

    fn is_empty(&self) -> bool {
        self.sums.is_empty() && self.consumers.is_empty()
    }
}

/// What one call of a batch sends.
enum Sent<'a> {
    Deployment(&'a (Limits, i64, i64)),
    Consumer(&'a ConsumerSum),
}

/// Sends what is pending in numbered batches (see [`RedisStore::send`]). A batch that failed is
/// kept as it is, number and all, and sent again (on the probe's rhythm) before anything newer:
/// differences settled meanwhile wait in `pending` for the next number.
pub(super) async fn reconciler(store: Weak<RedisStore>, wake: Arc<tokio::sync::Notify>) {
    let mut seq: u64 = 0;
    let mut in_flight: Option<(u64, Batch)> = None;
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    loop {
        {
            let Some(store) = store.upgrade() else { return };
            if in_flight.is_none() {
                let (mut batch, callers) = store.take_pending();
                waiting.extend(callers);
                batch.retain_nonzero();
                if !batch.is_empty() {
                    seq += 1;
                    in_flight = Some((seq, batch));
                }
            } else {
                // Callers asking while a batch waits to be sent again are answered once it is
                // (what they wait for may be in it); newer sums stay pending for the next number.
                waiting.append(&mut store.pending.lock().unwrap_or_else(PoisonError::into_inner).waiting);
            }
            if let Some((number, batch)) = &in_flight {
                if store.is_up() && store.send(*number, batch).await {
                    in_flight = None;
                }
            }
            if in_flight.is_none() {
                for done in waiting.drain(..) {
                    let _ = done.send(());
                }
            }
        }
        // Wait for work; with a batch still to send (the store is down or slow) retry on the
        // probe's rhythm.
        let notified = wake.notified();
        if in_flight.is_some() || !waiting.is_empty() {
            let _ = tokio::time::timeout(PROBE_INTERVAL, notified).await;
        } else {
            notified.await;
        }
    }
}
