//! Stages "reconcile" and "record": the reservation a request holds while it is in flight, the
//! response body that counts as it streams, and the one accounting record each request yields.
//!
//! A [`Reservation`] is made at admission and settled exactly once: when the response body ends,
//! when the backend breaks, when the client goes away (the body is dropped), or when the request
//! fails before reaching the backend. Settling charges the real usage to the tokens bucket (refund
//! or debt) and hands a [`UsageRecord`] to the [`UsageSink`].

pub mod count;
pub mod json_scan;
pub mod recorder;
pub mod sse;
pub mod totals;
pub mod usage;
pub mod usage_chunk;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use crate::deployment::Deployment;
use crate::estimate::Tokenizer;
use crate::gateway::request_id::RequestId;
use crate::gateway::route::ApiRoute;
use crate::keys::KeySlot;
use crate::quota::LimitKind;
use crate::quota::store::Hold;
pub use body::{MeteredBody, Metering, StreamLimits};
use usage::Usage;

pub mod body;

/// Where a record's token counts came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CountSource {
    /// The backend's `usage`.
    Reported,
    /// tollgate's own count (prompt estimate, completion counted from the streamed text).
    Estimated,
    /// Nothing was billed (rejected, or failed before any output).
    None,
}

impl CountSource {
    pub fn as_str(self) -> &'static str {
        match self {
            CountSource::Reported => "reported",
            CountSource::Estimated => "estimated",
            CountSource::None => "none",
        }
    }
}

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
        }
    }
}

/// One request's accounting record.
#[derive(Clone, Debug)]
pub struct UsageRecord {
    pub deployment: Arc<Deployment>,
    pub key_slot: KeySlot,
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
}

/// Whatever records usage (totals, metrics, the ledger). Called once per finished request, on the
/// request's task: implementations must not block.
pub trait UsageSink: Send + Sync {
    fn record(&self, record: UsageRecord);
}

/// What a request is, for its record.
#[derive(Clone)]
pub struct RequestFacts {
    pub deployment: Arc<Deployment>,
    pub key_slot: KeySlot,
    pub route: ApiRoute,
    pub request_id: RequestId,
    pub started: Instant,
    pub started_at: SystemTime,
    pub estimated_prompt_tokens: u64,
    pub limited_by: Option<LimitKind>,
}

impl RequestFacts {
    /// The record of a request that billed nothing.
    pub fn unbilled(&self, status: u16, outcome: Outcome) -> UsageRecord {
        self.record(status, outcome, Counts::NONE, 0)
    }

    fn record(&self, status: u16, outcome: Outcome, counts: Counts, reserved_tokens: u64) -> UsageRecord {
        UsageRecord {
            deployment: Arc::clone(&self.deployment),
            key_slot: self.key_slot,
            route: self.route,
            status,
            outcome,
            prompt_tokens: counts.prompt,
            completion_tokens: counts.completion,
            total_tokens: counts.total,
            source: counts.source,
            reserved_tokens,
            estimated_prompt_tokens: self.estimated_prompt_tokens,
            request_id: self.request_id.clone(),
            started_at: self.started_at,
            duration: self.started.elapsed(),
            limited_by: self.limited_by,
        }
    }
}

/// Billed token counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counts {
    pub prompt: u64,
    pub completion: u64,
    pub total: u64,
    pub source: CountSource,
}

impl Counts {
    pub const NONE: Counts = Counts { prompt: 0, completion: 0, total: 0, source: CountSource::None };

    pub fn reported(usage: Usage) -> Counts {
        Counts {
            prompt: usage.prompt_tokens,
            completion: usage.completion_tokens,
            total: usage.total_tokens,
            source: CountSource::Reported,
        }
    }

    pub fn estimated(prompt: u64, completion: u64) -> Counts {
        Counts { prompt, completion, total: prompt.saturating_add(completion), source: CountSource::Estimated }
    }
}

/// Tokens held for an admitted request until it is settled. Settles exactly once; dropping it
/// unsettled (the client went away before the response head) charges the prompt estimate.
#[must_use = "a reservation must be settled, or it is settled on drop as a client that went away"]
pub struct Reservation {
    facts: RequestFacts,
    reserved_tokens: u64,
    /// Where the tokens were taken from, and so where the difference is settled.
    hold: Hold,
    sink: Arc<dyn UsageSink>,
    settled: bool,
}

impl Reservation {
    pub fn new(facts: RequestFacts, reserved_tokens: u64, hold: Hold, sink: Arc<dyn UsageSink>) -> Reservation {
        facts.deployment.usage.inflight.fetch_add(1, Ordering::Relaxed);
        Reservation { facts, reserved_tokens, hold, sink, settled: false }
    }

    pub fn facts(&self) -> &RequestFacts {
        &self.facts
    }

    pub fn tokenizer(&self) -> Tokenizer {
        self.facts.deployment.tokenizer
    }

    /// Charges `counts` in place of the reservation and records the request.
    pub fn settle(mut self, status: u16, outcome: Outcome, counts: Counts) {
        self.finish(status, outcome, counts);
    }

    fn finish(&mut self, status: u16, outcome: Outcome, counts: Counts) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        self.hold.settle(&self.facts.deployment, self.reserved_tokens, counts.total);
        self.facts.deployment.usage.inflight.fetch_sub(1, Ordering::Relaxed);
        self.sink.record(self.facts.record(status, outcome, counts, self.reserved_tokens));
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            let prompt = self.facts.estimated_prompt_tokens;
            self.finish(499, Outcome::ClientGone, Counts::estimated(prompt, 0));
        }
    }
}
