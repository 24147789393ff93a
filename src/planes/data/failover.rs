//! Stage 6, forward over the pool: the attempts one request makes over its deployment's backends.
//!
//! Each attempt goes to a backend picked by [`crate::state::pool::BackendPool::pick`] (best priority tier, smooth
//! weighted round robin, skipping backends that are cooling, ejected, without room in their own
//! buckets, or already tried for this request). What ends an attempt:
//! - a response that is not a 429 or a 5xx: it is the answer; the backend is healthy;
//! - a 429: the backend cools down for the time its headers name, its reservation is refunded,
//!   and the next backend is tried;
//! - a 5xx, a connect error, a first-byte timeout or a broken head: a failure toward the
//!   backend's circuit breaker, refunded, and the next backend is tried.
//!
//! Up to `max_attempts` attempts within the deployment's `deadline` (each gets at most
//! `first_byte_timeout`). Retries happen only before a response head is accepted, so a client
//! never sees bytes from two backends. When every attempt failed, the client gets the last
//! failure (a 5xx passes through as the backend sent it, metered; an error becomes 502/504).
//! When none failed but no backend could take the request (all throttled or out of room), the
//! client gets the gateway's own 429 with `retry-after-ms` set to the earliest time any backend
//! can take it; when all are ejected, a 503 with the time the first ejection ends.
//!
//! A deployment with one backend has nothing to fail over to: its backend's answers (429s and
//! 5xx included) pass through as they are, and it is never cooled down nor ejected (that would
//! only turn the backend's own answers into the gateway's refusals). Its own buckets, when it
//! has limits, still hold it to them.
//!
//! A deployment with one backend has nothing to fail over to: its backend's answers (429s and
//! 5xx included) pass through as they are, and it is never cooled down nor ejected (that would
//! only turn the backend's own answers into the gateway's refusals). Its own buckets, when it
//! has limits, still hold it to them.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode, request};
use hyper::body::Incoming;

use crate::core::api::ApiRoute;
use crate::core::pool::health::Change;
use crate::core::pool::retry_after::RetryHeaders;
use crate::core::worker::Worker;
use crate::planes::data::Gateway;
use crate::planes::data::error::ApiError;
use crate::planes::data::forward::client_headers;
use crate::planes::data::names;
use crate::state::deployment::Deployment;
use crate::state::pool::{Attempt, Availability, Outcome, PoolBackend, Waits};

/// The answer a backend gave, and the attempt that holds its slot and reservation.
pub struct Forwarded {
    pub response: Response<Incoming>,
    pub attempt: Attempt,
    pub backend: Arc<str>,
    pub attempts: u32,
}

/// No backend answered.
pub struct Failed {
    pub error: ApiError,
    pub attempts: u32,
}

/// A failed attempt kept as the request's answer if no later one does better.
enum LastFailure {
    /// A 5xx: passed through as the backend sent it.
    Answer(Forwarded),
    Error(ApiError),
}

impl Gateway {
    /// Sends the request to the deployment's pool, retrying as the module says, and returns the
    /// first useful response head (its body unread).
    pub(super) async fn forward_over_pool(
        &self,
        deployment: &Arc<Deployment>,
        route: ApiRoute,
        parts: request::Parts,
        body: Bytes,
        worker: Worker,
        reserved: u64,
    ) -> Result<Forwarded, Failed> {
        let pool = &deployment.pool;
        let started = Instant::now();
        let request::Parts { method, uri, mut headers, .. } = parts;
        client_headers(&mut headers, body.len());
        let query = uri.query();
        // Cloned only while another attempt may follow (never for a one-backend deployment).
        let mut headers = Some(headers);
        let (mut tried, mut failed, mut attempts) = (0u64, 0u64, 0u32);
        let mut last_failure: Option<LastFailure> = None;
        let mut waits = Waits::default();
        while attempts < deployment.max_attempts {
            let left = deployment.deadline.saturating_sub(started.elapsed());
            if left.is_zero() {
                break;
            }
            let Some(mut attempt) = pool.pick(tried, reserved, &self.quota, &mut waits).await else { break };
            let bit = 1u64 << attempt.index;
            let backend = &pool.backends[attempt.index];
            tried |= bit;
            attempts += 1;
            if attempts > 1 {
                self.metrics.retries.with_label_values(&[deployment.counter_label()]).inc();
            }
            let another = attempts < deployment.max_attempts && (tried.count_ones() as usize) < pool.len();
            let sent_headers = if another { headers.clone() } else { headers.take() }.unwrap_or_default();
            let client = backend.client.as_deref().unwrap_or(&self.backend);
            // The first attempt gets the whole deadline (not less the microseconds spent here).
            let left = if attempts == 1 { deployment.deadline } else { left };
            let timeout = left.min(deployment.first_byte_timeout);
            let sent = client
                .send(
                    &deployment.name,
                    backend,
                    route,
                    method.clone(),
                    query,
                    sent_headers,
                    body.clone(),
                    worker,
                    timeout,
                )
                .await;
            let sent = match sent {
                // Cut short by the deadline, not by its own first-byte timeout: say so.
                Err(ApiError::BackendTimeout { what: "send a response", .. })
                    if timeout < deployment.first_byte_timeout =>
                {
                    Err(ApiError::BackendTimeout {
                        deployment: deployment.name.clone(),
                        what: "answer, over all attempts (the deployment's deadline_ms),",
                        timeout_ms: deployment.deadline.as_millis() as u64,
                    })
                }
                sent => sent,
            };
            match sent {
                Ok(response) if response.status() == StatusCode::TOO_MANY_REQUESTS => {
                    let retry_ns = retry_headers(response.headers()).retry_ns();
                    let change = attempt.report(Outcome::Throttled { retry_ns });
                    self.observe_attempt(deployment, backend, "throttled", change);
                    if pool.len() == 1 {
                        // One backend: nothing to fail over to, so its own answer passes through.
                        let backend = Arc::clone(&backend.name);
                        last_failure = Some(LastFailure::Answer(Forwarded { response, attempt, backend, attempts }));
                    }
                }
                Ok(response) if response.status().is_server_error() => {
                    failed |= bit;
                    let change = attempt.report(Outcome::Failed);
                    self.observe_attempt(deployment, backend, "server_error", change);
                    let backend = Arc::clone(&backend.name);
                    last_failure = Some(LastFailure::Answer(Forwarded { response, attempt, backend, attempts }));
                }
                Ok(response) => {
                    let change = attempt.report(Outcome::Answered);
                    self.observe_attempt(deployment, backend, "ok", change);
                    return Ok(Forwarded { response, attempt, backend: Arc::clone(&backend.name), attempts });
                }
                Err(error) => {
                    failed |= bit;
                    let change = attempt.report(Outcome::Failed);
                    self.observe_attempt(deployment, backend, attempt_error_kind(&error), change);
                    last_failure = Some(LastFailure::Error(error));
                }
            }
        }
        match last_failure {
            Some(LastFailure::Answer(mut forwarded)) => {
                forwarded.attempts = attempts;
                return Ok(forwarded);
            }
            Some(LastFailure::Error(error)) => return Err(Failed { error, attempts }),
            None => {}
        }
        let name = deployment.name.clone();
        let error = match pool.earliest(failed, &waits) {
            Some(Availability::At { in_ns, all_ejected: true }) => ApiError::BackendsUnavailable {
                deployment: name,
                backends: pool.len(),
                retry_after_ns: in_ns.max(1_000_000),
            },
            Some(Availability::At { in_ns, all_ejected: false }) => {
                ApiError::BackendsBusy { deployment: name, backends: pool.len(), retry_after_ns: in_ns.max(1_000_000) }
            }
            Some(Availability::Never { capacity }) => {
                ApiError::BackendCapacityExceeded { deployment: name, reserved, capacity }
            }
            // Every backend failed this request (counted above), or the deadline passed first.
            None => ApiError::BackendTimeout {
                deployment: name,
                what: "answer, over all attempts (the deployment's deadline_ms),",
                timeout_ms: deployment.deadline.as_millis() as u64,
            },
        };
        Err(Failed { error, attempts })
    }

    fn observe_attempt(&self, deployment: &Deployment, backend: &PoolBackend, result: &str, change: Option<Change>) {
        // Per-backend series are for pools: a one-backend deployment's attempts are its
        // requests (`tollgate_requests_total`, `tollgate_backend_errors_total`).
        if deployment.pool.len() > 1 {
            self.metrics.observe_attempt(deployment, backend, result);
        }
        self.observe_change(deployment, backend, change);
    }

    /// One log line (and the ejection count) for a backend's change of state.
    pub(super) fn observe_change(&self, deployment: &Deployment, backend: &PoolBackend, change: Option<Change>) {
        let Some(change) = change else { return };
        if let Some(ns) = change.ejected_for_ns {
            self.metrics
                .backend_ejections
                .with_label_values(&[deployment.counter_label(), deployment.backend_label(&backend.name)])
                .inc();
            tracing::warn!(
                deployment = deployment.name.as_str(),
                backend = &*backend.name,
                from = change.from.as_str(),
                to = change.to.as_str(),
                ejected_ms = ns / 1_000_000,
                "backend ejected after repeated failures"
            );
        } else {
            tracing::info!(
                deployment = deployment.name.as_str(),
                backend = &*backend.name,
                from = change.from.as_str(),
                to = change.to.as_str(),
                "backend state changed"
            );
        }
    }
}

/// The backend's own word on when to come back after a 429.
fn retry_headers(headers: &HeaderMap) -> RetryHeaders<'_> {
    RetryHeaders {
        retry_after_ms: headers.get(crate::planes::data::quota_headers::RETRY_AFTER_MS).map(|v| v.as_bytes()),
        retry_after: headers.get(http::header::RETRY_AFTER).map(|v| v.as_bytes()),
        reset_requests: headers.get(names::X_RATELIMIT_RESET_REQUESTS).map(|v| v.as_bytes()),
        reset_tokens: headers.get(names::X_RATELIMIT_RESET_TOKENS).map(|v| v.as_bytes()),
    }
}

/// The `result` label of a failed attempt.
pub(super) fn attempt_error_kind(error: &ApiError) -> &'static str {
    match error {
        ApiError::BackendUnreachable { .. } => "connect",
        ApiError::BackendTimeout { .. } => "timeout",
        _ => "protocol",
    }
}
