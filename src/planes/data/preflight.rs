//! Pre-flight: `POST …?dry-run=true` on any route that takes a body. The request is routed,
//! authenticated, read and estimated as usual, then answered (200, JSON) with whether it would
//! be admitted now, what it would reserve, and when it would fit, without taking anything from
//! the deployment's buckets or calling the backend. Pre-flights cost no quota; they take from the
//! deployment's own small bucket ([`DRY_RUNS_PER_MINUTE`]), so they cannot be used to flood it.
//!
//! It reads the deployment's level (in process, or the shared buckets in Redis) and its
//! budgets; for a consumer also its own buckets on the deployment and its period quotas on the
//! deployment and over all its deployments, from either store (`consumerLimitsChecked` is false
//! only when the shared store did not answer for them).
//!
//! ```json
//! {"dryRun": true, "deployment": "d", "admittedNow": false, "fits": true,
//!  "reservedTokens": 530, "estimatedPromptTokens": 40, "completionTokens": 490,
//!  "retryAfterMs": 212, "maxWaitMs": 5000, "wouldWait": true,
//!  "queued": {"requests": 3, "tokens": 1500},
//!  "limits": {"requestsPerMinute": 1000, "tokensPerMinute": 60000,
//!             "remainingRequests": 998, "remainingTokens": 318},
//!  "refusal": null, "consumerLimitsChecked": true}
//! ```

use std::time::Duration;

use http::Response;

use super::admit::{Reserve, ahead_ns, budget_refusal, refill_ns};
use super::auth::Caller;
use super::body::ProxyBody;
use super::error::ApiError;
use super::{Gateway, Trace};
use crate::core::quota::Denial;
use crate::core::quota::period::PeriodKind;
use crate::state::deployment::{DRY_RUNS_PER_MINUTE, Deployment};
use crate::state::quota_store::QuotaStore;
use crate::state::record::Outcome;

/// Whether the query asks for a pre-flight: `dry-run=true` (or `1`, or a bare `dry-run`).
pub fn asked(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&').any(|pair| matches!(pair.split_once('=').unwrap_or((pair, "true")), ("dry-run", "true" | "1")))
    })
}

/// When one request and `reserved` tokens fit buckets at `levels` (read from the shared store):
/// to a token's refill, since the store's levels are whole units of its own clock.
fn wait_from_levels(reserved: u64, levels: &crate::core::quota::QuotaState) -> u64 {
    let short = |need: u64, have: u64, per_minute: u64| refill_ns(need.saturating_sub(have), per_minute);
    short(1, levels.remaining_requests, levels.limit_requests).max(short(
        reserved,
        levels.remaining_tokens,
        levels.limit_tokens,
    ))
}

impl Gateway {
    pub(super) async fn preflight(
        &self,
        deployment: &Deployment,
        caller: &Caller,
        reserve: Reserve,
        now_unix: u64,
        asked_wait: Option<Duration>,
        trace: &mut Trace,
    ) -> Result<Response<ProxyBody>, ApiError> {
        if let Err(Denial::Exhausted { retry_after_ns, .. }) = deployment.dry_runs().admit(0) {
            return Err(ApiError::DryRunsLimited {
                deployment: deployment.name.clone(),
                per_minute: DRY_RUNS_PER_MINUTE,
                retry_after_ns,
            });
        }
        trace.outcome = Some(Outcome::DryRun);
        let reserved = reserve.total();
        let state = self.quota.state(deployment).await;
        let limits = deployment.quota.limits();
        let capacity = limits.tokens_per_minute;
        let (queued_requests, queued_tokens) = deployment.queue_depth();
        let busy = deployment.queue.as_ref().is_some_and(|q| q.busy());
        let refusal = budget_refusal(deployment, caller, now_unix).map(|e| (e.code(), e.to_string()));
        // When one request and the reservation fit the deployment's buckets: exact in process;
        // from the shared buckets' levels with Redis (to a token's refill).
        let wait_ns = match (&self.quota, &state) {
            _ if reserved > capacity => None,
            (QuotaStore::Memory, _) => deployment.quota.wait_ns_for(reserved),
            (QuotaStore::Redis(_), Some(s)) => Some(wait_from_levels(reserved, s)),
            (QuotaStore::Redis(_), None) => return Err(ApiError::QuotaStoreUnavailable),
        };
        // A consumer's own levels: its buckets on the deployment and its period quotas (either
        // store).
        let mut consumer_checked = true;
        let mut consumer_refusal: Option<(&'static str, String)> = None;
        let mut wait_ns = wait_ns;
        if let Some(grant) = &caller.consumer {
            if let Some(own) = &grant.grant().quota {
                let own_capacity = own.limits().tokens_per_minute;
                let own_wait = match &self.quota {
                    _ if reserved > own_capacity => Some(None),
                    QuotaStore::Memory => Some(own.wait_ns_for(reserved)),
                    QuotaStore::Redis(_) => {
                        self.quota.grant_state(deployment, grant).await.map(|s| Some(wait_from_levels(reserved, &s)))
                    }
                };
                match own_wait {
                    Some(Some(own_wait)) => wait_ns = wait_ns.map(|w| w.max(own_wait)),
                    Some(None) => {
                        wait_ns = None;
                        consumer_refusal = Some((
                            "TokenLimitExceeded",
                            format!(
                                "this request reserves {reserved} tokens but consumer '{}' may use {own_capacity} tokens per minute on deployment '{}', so it can never be admitted",
                                grant.consumer.label, deployment.name
                            ),
                        ));
                    }
                    None => consumer_checked = false, // the shared store did not answer
                }
            }
            match self.quota.consumer_periods(&grant.consumer).await {
                None => consumer_checked = false,
                Some(readings) => {
                    for reading in readings.iter().filter(|r| r.scope == deployment.name || r.scope == "*") {
                        for (kind, limit, used, _) in reading.state.each() {
                            let need = if kind == PeriodKind::RequestsPerDay { 1 } else { reserved };
                            if consumer_refusal.is_none() && used.saturating_add(need) > limit {
                                let scope = if reading.scope == "*" {
                                    "over all its deployments".to_owned()
                                } else {
                                    format!("on deployment '{}'", deployment.name)
                                };
                                consumer_refusal = Some((
                                    "QuotaExceeded",
                                    format!(
                                        "consumer '{}' has used {used} of its {limit} {} {scope}; this request needs {need} more",
                                        grant.consumer.label,
                                        kind.as_str()
                                    ),
                                ));
                            }
                        }
                    }
                }
            }
        }
        let refusal = refusal.or(consumer_refusal);
        // Behind requests already waiting, it would wait for them too.
        let wait_ns =
            wait_ns.map(|w| if busy { w.max(ahead_ns(deployment, (queued_requests, queued_tokens))) } else { w });
        let allowed = deployment.waiting_room().map_or(Duration::ZERO, |q| q.allowed_wait(asked_wait));
        let admitted_now = refusal.is_none() && wait_ns == Some(0) && !busy;
        let would_wait = refusal.is_none()
            && !admitted_now
            && wait_ns.is_some_and(|w| !allowed.is_zero() && Duration::from_nanos(w) <= allowed);
        let refusal = match (&refusal, wait_ns) {
            (Some((code, message)), _) => serde_json::json!({"code": code, "message": message}),
            (None, None) => serde_json::json!({"code": "TokenLimitExceeded", "message": format!(
                "this request reserves {reserved} tokens but deployment '{}' allows {capacity} tokens per minute, so it can never be admitted",
                deployment.name)}),
            (None, Some(_)) => serde_json::Value::Null,
        };
        let body = serde_json::json!({
            "dryRun": true,
            "deployment": deployment.name,
            "admittedNow": admitted_now,
            "fits": wait_ns.is_some(),
            "reservedTokens": reserved,
            "estimatedPromptTokens": reserve.prompt,
            "completionTokens": reserve.completion,
            "retryAfterMs": wait_ns.map(|w| w.div_ceil(1_000_000)),
            "maxWaitMs": allowed.as_millis() as u64,
            "wouldWait": would_wait,
            "queued": {"requests": queued_requests, "tokens": queued_tokens},
            "limits": {
                "requestsPerMinute": limits.requests_per_minute,
                "tokensPerMinute": limits.tokens_per_minute,
                "remainingRequests": state.map(|s| s.remaining_requests),
                "remainingTokens": state.map(|s| s.remaining_tokens),
            },
            "refusal": refusal,
            "consumerLimitsChecked": consumer_checked,
        });
        Ok(crate::planes::respond::json_response(body.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::asked;

    #[test]
    fn the_query_asks_for_a_dry_run() {
        for yes in ["dry-run=true", "a=1&dry-run=1", "dry-run", "api-version=2024-05-01-preview&dry-run=true"] {
            assert!(asked(Some(yes)), "{yes}");
        }
        for no in ["", "dry-run=false", "dryrun=true", "x=dry-run"] {
            assert!(!asked(Some(no)), "{no}");
        }
        assert!(!asked(None));
    }
}
