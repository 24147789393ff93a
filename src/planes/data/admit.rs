//! Stage 5, admit: one request and its reserved tokens taken from every level that applies, or
//! the refusal that says when (429) or until when (403) it cannot be.
//!
//! An endpoint key is limited by the deployment's buckets alone. A consumer key is limited by
//! those, its own buckets on the deployment and its period quotas, taken together (see
//! [`crate::core::quota::admit_levels`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::auth::Caller;
use super::{Gateway, Trace};
use crate::core::quota::period::Stamp;
use crate::core::quota::{Denial, QuotaState};
use crate::planes::data::error::ApiError;
use crate::state::admission_queue::{AdmissionQueue, CallerId, Full, Ticket};
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
    /// Stage 5, for a request that arrived at `now_unix` (the periods it counts in). Fills
    /// `trace.quota` (the binding level's buckets, for the headers) and, for a consumer,
    /// `trace.consumer_quota`; `trace.queued` when it waited. `asked` is the request's own
    /// `x-ms-max-wait-ms`: with the deployment's `max_wait_ms` it sets how long the request may
    /// wait for the buckets instead of a 429 ([`crate::state::admission_queue`]).
    pub(super) async fn admit(
        &self,
        deployment: &Arc<Deployment>,
        caller: &Caller,
        reserve: Reserve,
        now_unix: u64,
        asked: Option<Duration>,
        trace: &mut Trace,
    ) -> Result<Taken, ApiError> {
        if let Some(refused) = budget_refusal(deployment, caller, now_unix) {
            return Err(refused);
        }
        let room = deployment.waiting_room().map(|queue| (queue, queue.allowed_wait(asked)));
        let Some((queue, allowed)) = room.filter(|(_, allowed)| !allowed.is_zero()) else {
            return match self.take(deployment, caller, reserve, now_unix, trace).await {
                Ok(taken) => Ok(taken),
                Err(refusal) => Err(self.refused(refusal, deployment, caller, reserve, now_unix, trace).await),
            };
        };
        let arrived = Instant::now();
        let deadline = arrived + allowed;
        let who = match &caller.consumer {
            Some(grant) => CallerId::Consumer(Arc::clone(&grant.consumer.label)),
            None => CallerId::Key(caller.key_slot as u8),
        };
        let mut ticket: Option<Ticket> = None;
        // Set once it is held (queued, or waiting for its own limit): observes the wait when
        // the request ends, however it ends (dropped with its client: `left`).
        let mut held: Option<Held> = None;
        let hold = |held: &mut Option<Held>| {
            held.get_or_insert_with(|| Held {
                metrics: Arc::clone(&self.metrics),
                deployment: Arc::clone(deployment),
                since: arrived,
                outcome: "left",
            });
        };
        let end = |held: &mut Option<Held>, outcome: &'static str| {
            if let Some(held) = held {
                held.outcome = outcome;
            }
        };
        let result = loop {
            // With requests already waiting, a new one lines up behind them instead of trying the
            // buckets first (it would take what refills for them).
            if ticket.is_none() && queue.busy() {
                match self.line_up(deployment, queue, &who, reserve, deadline) {
                    Ok(t) => ticket = Some(t),
                    Err(e) => {
                        end(&mut held, "refused");
                        break Err(e);
                    }
                }
                hold(&mut held);
            }
            if let Some(ticket) = &ticket {
                tokio::select! {
                    turn = ticket.turn() => if turn.is_err() {
                        end(&mut held, "shutdown");
                        break Err(ApiError::ShuttingDown);
                    },
                    () = tokio::time::sleep_until(deadline.into()) => {
                        end(&mut held, "timed_out");
                        break Err(self.timed_out(deployment, arrived));
                    }
                }
            }
            let refusal = match self.take(deployment, caller, reserve, now_unix, trace).await {
                Ok(taken) => {
                    if let Some(ticket) = ticket.take() {
                        ticket.admitted();
                    }
                    end(&mut held, "admitted");
                    break Ok(taken);
                }
                Err(refusal) => refusal,
            };
            let Some((wait_ns, own)) = wait_of(&refusal) else {
                end(&mut held, "refused");
                break Err(self.refused(refusal, deployment, caller, reserve, now_unix, trace).await);
            };
            let fits_at = Instant::now() + Duration::from_nanos(wait_ns);
            // Never in time: the 429 now, with the exact wait, rather than a pointless hold.
            if fits_at > deadline {
                end(&mut held, "refused");
                break Err(self.refused(refusal, deployment, caller, reserve, now_unix, trace).await);
            }
            hold(&mut held);
            if own {
                // Its own (consumer's) limit binds: it waits for that out of the line, so that
                // it holds nobody else up, and lines up again after.
                drop(ticket.take());
            } else if ticket.is_none() {
                match self.line_up(deployment, queue, &who, reserve, deadline) {
                    Ok(t) => ticket = Some(t),
                    Err(e) => {
                        end(&mut held, "refused");
                        break Err(e);
                    }
                }
            }
            // The buckets cannot hold it before `fits_at`: wait for then (holding its turn, if it
            // has it: it is the one to go next).
            tokio::select! {
                () = tokio::time::sleep_until(fits_at.into()) => {}
                () = queue.closed() => {
                    end(&mut held, "shutdown");
                    break Err(ApiError::ShuttingDown);
                }
            }
        };
        // Held, however it ended: the answer and its ledger line say for how long.
        if held.is_some() {
            trace.queued = Some(arrived.elapsed());
        }
        result
    }

    /// Joins the deployment's queue, unless the requests ahead cannot be through before
    /// `deadline` (then a 429 at once) or the queue is at its caps.
    fn line_up(
        &self,
        deployment: &Deployment,
        queue: &Arc<AdmissionQueue>,
        who: &CallerId,
        reserve: Reserve,
        deadline: Instant,
    ) -> Result<Ticket, ApiError> {
        let ahead = ahead_ns(deployment, queue.depth());
        if Instant::now() + Duration::from_nanos(ahead) > deadline {
            return Err(ApiError::QueueTimeout {
                deployment: deployment.name.clone(),
                waited_ms: 0,
                retry_after_ns: ahead,
            });
        }
        queue.enqueue(who.clone(), reserve.total()).map_err(|full| match full {
            Full::Closed => ApiError::ShuttingDown,
            Full::Requests(n) => ApiError::QueueFull {
                deployment: deployment.name.clone(),
                what: format!("max_queued_requests = {n}"),
                retry_after_ns: ahead,
            },
            Full::Tokens(n) => ApiError::QueueFull {
                deployment: deployment.name.clone(),
                what: format!("max_queued_tokens = {n}"),
                retry_after_ns: ahead,
            },
        })
    }

    fn timed_out(&self, deployment: &Deployment, arrived: Instant) -> ApiError {
        ApiError::QueueTimeout {
            deployment: deployment.name.clone(),
            waited_ms: arrived.elapsed().as_millis() as u64,
            retry_after_ns: ahead_ns(deployment, deployment.queue_depth()).max(1_000_000),
        }
    }

    /// One try at every level that applies; on success fills the trace's quota state.
    async fn take(
        &self,
        deployment: &Arc<Deployment>,
        caller: &Caller,
        reserve: Reserve,
        now_unix: u64,
        trace: &mut Trace,
    ) -> Result<Taken, Refusal> {
        let reserved = reserve.total();
        match caller.consumer.as_ref() {
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
        }
    }

    /// The refusal as the API's error, the trace filled for the headers.
    async fn refused(
        &self,
        refusal: Refusal,
        deployment: &Arc<Deployment>,
        caller: &Caller,
        reserve: Reserve,
        now_unix: u64,
        trace: &mut Trace,
    ) -> ApiError {
        let reserved = reserve.total();
        let consumer = caller.consumer.as_ref();
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
                return ApiError::QuotaExceeded {
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
                };
            }
            Refusal::StoreUnavailable => return ApiError::QuotaStoreUnavailable,
        };
        match denial {
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
        }
    }
}

/// A held request's wait, observed in `tollgate_queue_wait_seconds` when it ends.
struct Held {
    metrics: Arc<crate::state::metrics::Metrics>,
    deployment: Arc<Deployment>,
    since: Instant,
    outcome: &'static str,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.metrics
            .queue_wait
            .with_label_values(&[self.deployment.detail_label(), self.outcome])
            .observe(self.since.elapsed().as_secs_f64());
    }
}

/// In how long the buckets will hold the request, and whether the binding level is the
/// consumer's own (its grant's buckets) rather than the deployment's; `None` when waiting
/// cannot help (too large for the buckets, a period quota, the store down).
fn wait_of(refusal: &Refusal) -> Option<(u64, bool)> {
    match refusal {
        Refusal::Denied(Denial::Exhausted { retry_after_ns, .. })
        | Refusal::DeniedConsumer(Denial::Exhausted { retry_after_ns, .. }, _) => Some((*retry_after_ns, false)),
        Refusal::GrantDenied(Denial::Exhausted { retry_after_ns, .. }, _) => Some((*retry_after_ns, true)),
        _ => None,
    }
}

/// How long the deployment's buckets take to refill what the requests queued reserve: the
/// earliest a request lining up behind them could be admitted.
pub(super) fn ahead_ns(deployment: &Deployment, (requests, tokens): (usize, u64)) -> u64 {
    let limits = deployment.quota.limits();
    refill_ns(requests as u64, limits.requests_per_minute).max(refill_ns(tokens, limits.tokens_per_minute))
}

/// How long a bucket of `per_minute` takes to refill `count` units.
pub(super) fn refill_ns(count: u64, per_minute: u64) -> u64 {
    u64::try_from(u128::from(count) * 60_000_000_000 / u128::from(per_minute.max(1))).unwrap_or(u64::MAX)
}

/// A hard budget over the deployment (its project or subscription) or the consumer that is
/// spent: 403 `BudgetExceeded` until its period ends. Nothing to check without budgets.
pub(super) fn budget_refusal(deployment: &Deployment, caller: &Caller, now: u64) -> Option<ApiError> {
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
