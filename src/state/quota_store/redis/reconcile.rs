//! Reconciliation with the shared buckets: settled differences summed per deployment and sent in
//! the background as numbered batches, one pipeline each; a batch that failed or timed out is
//! sent again with its number (the script refuses a number it has applied).

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, Weak};
use std::time::Instant;

use redis::aio::ConnectionManager;
use redis::{ServerErrorKind, Value};
use tokio::sync::oneshot;

use super::{PROBE_INTERVAL, RedisStore};
use crate::core::quota::Limits;
use crate::state::deployment::Deployment;

/// Token differences per deployment name, with the limits to refill by.
pub(super) type Sums = HashMap<String, (Limits, i64, i64)>;

/// Settled differences not yet sent, summed per deployment: memory is bounded by the number of
/// deployments however long Redis is away (no queue of individual settlements).
#[derive(Default)]
pub(super) struct Pending {
    pub(super) sums: Sums,
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

    /// Sends what is pending now, waiting (bounded) for it.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        self.pending.lock().unwrap_or_else(PoisonError::into_inner).waiting.push(done);
        self.wake.notify_one();
        let _ = tokio::time::timeout(self.settings.timeout * 4, wait).await;
    }

    /// What is pending, taken for a new batch, and who waits for it.
    fn take_pending(&self) -> (Sums, Vec<oneshot::Sender<()>>) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        (std::mem::take(&mut pending.sums), std::mem::take(&mut pending.waiting))
    }

    /// Sends one batch of summed reconciliations, one script call per deployment, pipelined,
    /// each carrying this replica's id and the batch's sequence number. Calls answered `NOSCRIPT`
    /// (Redis restarted and lost its script cache) did not run: the script is loaded and exactly
    /// those are sent again. Returns false (keep the batch, and send it again with the same
    /// number) when Redis could not be reached or did not answer in time; Redis may have run it
    /// anyway, and then the script sees the number it recorded and does not apply it twice.
    pub(super) async fn send(&self, seq: u64, batch: &Sums) -> bool {
        let Some(connection) = self.connection.load_full() else { return false };
        let mut connection = ConnectionManager::clone(&connection);
        let mut todo: Vec<(&String, &(Limits, i64, i64))> = batch.iter().collect();
        let started = Instant::now();
        for attempt in 0..2 {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for (deployment, (limits, tokens, requests)) in &todo {
                pipe.cmd("EVALSHA")
                    .arg(self.reconcile_script.get_hash())
                    .arg(1)
                    .arg(self.key(deployment))
                    .arg(limits.requests_per_minute)
                    .arg(limits.tokens_per_minute)
                    .arg(*tokens)
                    .arg(&self.replica)
                    .arg(seq)
                    .arg(*requests);
            }
            let replies = match tokio::time::timeout(
                self.settings.timeout,
                pipe.query_async::<Vec<Value>>(&mut connection),
            )
            .await
            {
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
                    Value::ServerError(error) if error.kind() == Some(ServerErrorKind::NoScript) && attempt == 0 => {
                        again.push(entry);
                    }
                    Value::ServerError(error) => {
                        // A script error is a bug, not an outage: counted and logged, not retried.
                        self.metrics.quota_store_errors.with_label_values(&["reconcile"]).inc();
                        tracing::error!(deployment = %entry.0, error = error.code(), "quota store: reconcile script failed");
                    }
                    _ => {}
                }
            }
            if again.is_empty() {
                self.metrics
                    .quota_store_duration
                    .with_label_values(&["reconcile"])
                    .observe(started.elapsed().as_secs_f64());
                return true;
            }
            let loaded = tokio::time::timeout(
                self.settings.timeout,
                self.reconcile_script.prepare_invoke().load_async(&mut connection),
            )
            .await;
            if !matches!(loaded, Ok(Ok(_))) {
                self.failed("reconcile", "cannot load the script");
                return false;
            }
            todo = again;
        }
        true
    }
}

/// Sends what is pending in numbered batches (see [`RedisStore::send`]). A batch that failed is
/// kept as it is, number and all, and sent again (on the probe's rhythm) before anything newer:
/// differences settled meanwhile wait in `pending` for the next number.
pub(super) async fn reconciler(store: Weak<RedisStore>, wake: Arc<tokio::sync::Notify>) {
    let mut seq: u64 = 0;
    let mut in_flight: Option<(u64, Sums)> = None;
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    loop {
        {
            let Some(store) = store.upgrade() else { return };
            if in_flight.is_none() {
                let (mut sums, callers) = store.take_pending();
                waiting.extend(callers);
                sums.retain(|_, (_, tokens, requests)| *tokens != 0 || *requests != 0);
                if !sums.is_empty() {
                    seq += 1;
                    in_flight = Some((seq, sums));
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
