//! Stage 5, admit: one request and its reserved tokens taken from every level that applies, or
//! the refusal that says when (429) or until when (403) it cannot be.
//!
//! An endpoint key is limited by the deployment's buckets alone. A consumer key is limited by
//! those, its own buckets on the deployment and its period quotas, taken together (see
//! [`crate::core::quota::admit_levels`]).

use std::sync::Arc;

use super::auth::Caller;
use super::{Gateway, Trace};
use crate::core::quota::period::Stamp;
use crate::core::quota::{Denial, QuotaState};
use crate::planes::data::error::ApiError;
use crate::state::deployment::Deployment;
use crate::state::quota_store::{ConsumerAdmission, ConsumerHold, Hold, Refusal};

/// What admission took: where from, and for a consumer where its own levels were taken and
/// the periods its request counts in.
pub struct Taken {
    pub hold: Hold,
    pub consumer: Option<(ConsumerHold, Option<Stamp>)>,
}

/// The estimate's two parts, for the messages.
#[derive(Clone, Copy)]
pub struct Reserve {
    pub prompt: u64,
    pub completion: u64,
}

impl Reserve {
    pub fn total(self) -> u64 {
        self.prompt.saturating_add(self.completion)
    }
}

impl Gateway {
    /// Stage 5, for a request that arrived at `now_unix` (the periods it counts in). Fills `trace.quota` (the binding level's buckets, for the headers) and, for a
    /// consumer, `trace.consumer_quota`.
    pub(super) async fn admit(
        &self,
        deployment: &Arc<Deployment>,
        caller: &Caller,
        reserve: Reserve,
        now_unix: u64,
        trace: &mut Trace,
    ) -> Result<Taken, ApiError> {
        if let Some(refused) = budget_refusal(deployment, caller, now_unix) {
            return Err(refused);
        }
        let reserved = reserve.total();
        let consumer = caller.consumer.as_ref();
        let admitted = match consumer {
            None => self.quota.admit(deployment, reserved).await.map(|(state, hold)| {
                trace.quota = state;
                Taken { hold, consumer: None }
            }),
            Some(grant) => self.quota.admit_consumer(deployment, grant, reserved, now_unix).await.map(
                |(admission, hold, consumer_hold)| {
                    trace.quota = tightest(&admission);
                    trace.consumer_quota = Some(admission);
                    Taken { hold, consumer: Some((consumer_hold, admission.stamp)) }
                },
            ),
        };
        let refusal = match admitted {
            Ok(taken) => return Ok(taken),
            Err(refusal) => refusal,
        };
        let consumer_label = || consumer.map(|c| Arc::clone(&c.consumer.label));
        let owner = |own: bool| match consumer.filter(|_| own) {
            Some(c) => format!("consumer '{}' on deployment '{}'", c.consumer.label, deployment.name),
            None => format!("deployment '{}'", deployment.name),
        };
        let own = matches!(refusal, Refusal::GrantDenied(..));
        let denial = match refusal {
            Refusal::Denied(denial) => denial,
            Refusal::GrantDenied(denial, levels) | Refusal::DeniedConsumer(denial, levels) => {
                trace.consumer_quota = Some(*levels);
                denial
            }
            Refusal::PeriodExceeded { consumer_wide, denial, levels } => {
                trace.quota = tightest(&levels);
                trace.consumer_quota = Some(*levels);
                let label = consumer_label().unwrap_or_else(|| Arc::from("-"));
                return Err(ApiError::QuotaExceeded {
                    scope: if consumer_wide {
                        format!("consumer '{label}'")
                    } else {
                        format!("consumer '{label}' on deployment '{}'", deployment.name)
                    },
                    kind: denial.kind,
                    limit: denial.limit,
                    used: denial.used,
                    reset_unix: denial.reset_unix,
                    retry_after_s: denial.reset_unix.saturating_sub(now_unix).max(1),
                });
            }
            Refusal::StoreUnavailable => return Err(ApiError::QuotaStoreUnavailable),
        };
        Err(match denial {
            Denial::Exhausted { limit, retry_after_ns, state } => {
                trace.quota = Some(state);
                trace.limited_by = Some(limit);
                ApiError::RateLimited {
                    deployment: deployment.name.clone(),
                    consumer: consumer_label().filter(|_| own),
                    limit,
                    reserved_tokens: reserved,
                    retry_after_ns,
                    state,
                }
            }
            Denial::ExceedsCapacity { reserved, capacity } => {
                trace.quota = match &trace.consumer_quota {
                    Some(levels) => tightest(levels),
                    None => self.quota.state(deployment).await,
                };
                ApiError::TokenLimitExceeded {
                    owner: owner(own),
                    reserved,
                    prompt: reserve.prompt,
                    completion: reserve.completion,
                    capacity,
                }
            }
        })
    }
}

/// A hard budget over the deployment (its project or subscription) or the consumer that is
/// spent: 403 `BudgetExceeded` until its period ends. Nothing to check without budgets.
fn budget_refusal(deployment: &Deployment, caller: &Caller, now: u64) -> Option<ApiError> {
    let consumer = caller.consumer.as_ref().map(|c| c.consumer.budgets.as_slice()).unwrap_or_default();
    deployment.budgets.iter().chain(consumer).find_map(|budget| {
        let spent = budget.exhausted(now)?;
        Some(ApiError::BudgetExceeded {
            scope: budget.scope.label(),
            currency: Arc::clone(&deployment.currency),
            retry_after_s: spent.reset_unix.saturating_sub(now).max(1),
            spent: Box::new(spent),
        })
    })
}

/// What the `x-ratelimit-*` headers show: per dimension, the level with the fewest left (the
/// requests of one level and the tokens of another when each binds on its own; the deployment's
/// on a tie).
fn tightest(admission: &ConsumerAdmission) -> Option<QuotaState> {
    match (admission.deployment, admission.grant) {
        (Some(d), Some(g)) => {
            let mut out = d;
            if g.remaining_requests < d.remaining_requests {
                out.limit_requests = g.limit_requests;
                out.remaining_requests = g.remaining_requests;
                out.requests_full_in_ns = g.requests_full_in_ns;
            }
            if g.remaining_tokens < d.remaining_tokens {
                out.limit_tokens = g.limit_tokens;
                out.remaining_tokens = g.remaining_tokens;
                out.tokens_full_in_ns = g.tokens_full_in_ns;
            }
            Some(out)
        }
        (d, g) => d.or(g),
    }
}
