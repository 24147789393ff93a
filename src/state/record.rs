//! The one accounting record each request yields, and where records go: the [`UsageSink`]
//! trait and the gateway's [`Recorder`].

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::core::api::ApiRoute;
use crate::core::keys::KeySlot;
use crate::core::meter::CountSource;
use crate::core::quota::LimitKind;
use crate::state::consumer::Consumer;
use crate::state::deployment::Deployment;
use crate::state::ledger::Ledger;
use crate::state::metrics::Metrics;
use crate::state::request_id::RequestId;
use crate::state::totals;

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The response was delivered whole.
    Completed,
    /// The gateway answered without reaching the backend (rejections, bad requests).
    Rejected,
    /// The backend failed before sending a response.
    BackendFailed,
    /// The backend broke off in the middle of the body.
    BackendBroke,
    /// The backend went silent (stream idle timeout) or took too long (response timeout); the
    /// gateway ended the response.
    BackendStalled,
    /// The client went away before the response was complete.
    ClientGone,
    /// A pre-flight (`?dry-run=true`): answered whether it would be admitted, nothing taken.
    DryRun,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Rejected => "rejected",
            Outcome::BackendFailed => "backend_failed",
            Outcome::BackendBroke => "backend_broke",
            Outcome::BackendStalled => "backend_stalled",
            Outcome::ClientGone => "client_gone",
            Outcome::DryRun => "dry_run",
        }
    }
}

/// One request's accounting record.
#[derive(Clone, Debug)]
pub struct UsageRecord {
    pub deployment: Arc<Deployment>,
    pub key_slot: KeySlot,
    /// The consumer that called, when it was a consumer's key (`key_slot` is then its key's).
    pub consumer: Option<Arc<Consumer>>,
    /// Whether the request was admitted (counted in the quotas' requests).
    pub admitted: bool,
    pub route: ApiRoute,
    pub status: u16,
    pub outcome: Outcome,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub source: CountSource,
    /// What admission reserved (0 when not admitted).
    pub reserved_tokens: u64,
    /// tollgate's own prompt estimate, kept beside reported counts to measure the estimator.
    pub estimated_prompt_tokens: u64,
    pub request_id: RequestId,
    /// Wall-clock time the request arrived.
    pub started_at: SystemTime,
    pub duration: Duration,
    /// For a 429: the limit that was hit.
    pub limited_by: Option<LimitKind>,
    /// Why a request that was never admitted was refused (the error's metric label:
    /// `rate_limited`, `quota_exceeded`, `budget_exceeded`, ...).
    pub refusal: Option<&'static str>,
    /// The backend of the pool that answered (`None` when none did, or the deployment has one).
    pub backend: Option<Arc<str>>,
    /// Attempts sent to backends (0 when none was sent).
    pub attempts: u32,
    /// How long it waited for the buckets (`max_wait_ms`), when it did.
    pub queued: Option<Duration>,
}

impl UsageRecord {
    /// What the request cost at its deployment's prices: its billed tokens, or nothing when it
    /// was refused before reaching a backend (and nothing without prices).
    pub fn cost(&self) -> Option<crate::core::billing::Cost> {
        let prices = self.deployment.prices?;
        Some(match self.outcome {
            Outcome::Rejected => crate::core::billing::Cost::default(),
            _ => prices.cost(self.prompt_tokens, self.completion_tokens),
        })
    }
}

/// Whatever records usage (totals, metrics, the ledger). Called once per finished request, on the
/// request's task: implementations must not block.
pub trait UsageSink: Send + Sync {
    fn record(&self, record: UsageRecord);
}

/// The [`UsageSink`] the gateway runs with: every record goes to the per-deployment totals, the
/// Prometheus metrics, the budgets watching it, the durable ledger (when configured) and one
/// access log line.
pub struct Recorder {
    pub metrics: Arc<Metrics>,
    pub ledger: Option<Arc<Ledger>>,
    /// Where budget threshold crossings go.
    pub alerts: Arc<crate::state::budget_alerts::BudgetAlerts>,
    /// With the shared store, budgets' spend is also charged there (in the background).
    pub shared: Option<Arc<crate::state::quota_store::redis::RedisStore>>,
}

impl Recorder {
    /// Charges the request's cost to the budgets watching its deployment and its consumer, in
    /// the periods it arrived in. Nothing to do without budgets.
    fn charge_budgets(&self, record: &UsageRecord) {
        let consumer = record.consumer.as_ref().map(|c| c.budgets.as_slice()).unwrap_or_default();
        if record.deployment.budgets.is_empty() && consumer.is_empty() {
            return;
        }
        let Some(cost) = record.cost().map(|c| c.total().0).filter(|c| *c > 0) else { return };
        let stamp = crate::core::quota::period::Stamp::at(crate::core::clock::unix_seconds(record.started_at));
        for budget in record.deployment.budgets.iter().chain(consumer) {
            if let Some(store) = &self.shared {
                store.charge_budget(budget, stamp, cost);
            }
            for crossing in budget.charge(stamp, cost) {
                self.alerts.crossed(crossing);
            }
        }
    }
}

impl UsageSink for Recorder {
    fn record(&self, record: UsageRecord) {
        totals::add(&record);
        self.metrics.observe(&record);
        self.charge_budgets(&record);
        tracing::info!(
            target: "tollgate::access",
            request_id = record.request_id.as_str(),
            deployment = record.deployment.name.as_str(),
            route = record.route.label(),
            key_slot = record.key_slot.as_str(),
            status = record.status,
            outcome = record.outcome.as_str(),
            prompt_tokens = record.prompt_tokens,
            completion_tokens = record.completion_tokens,
            total_tokens = record.total_tokens,
            source = record.source.as_str(),
            duration_us = record.duration.as_micros() as u64,
        );
        if let Some(ledger) = &self.ledger {
            ledger.append(record);
        }
    }
}
