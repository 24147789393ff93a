//! Stage "reconcile": the reservation a request holds while it is in flight.
//!
//! A [`Reservation`] is made at admission and settled exactly once: when the response body ends,
//! when the backend breaks, when the client goes away (the body is dropped), or when the request
//! fails before reaching the backend. Settling charges the real usage to the tokens bucket (refund
//! or debt) and hands a [`UsageRecord`] to the [`UsageSink`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use crate::core::api::ApiRoute;
use crate::core::estimate::Tokenizer;
use crate::core::keys::KeySlot;
use crate::core::meter::Counts;
use crate::core::quota::LimitKind;
use crate::core::quota::period::Stamp;
use crate::state::consumer::ConsumerGrant;
use crate::state::deployment::Deployment;
use crate::state::pool::Attempt;
use crate::state::quota_store::{ConsumerHold, Hold};
use crate::state::record::{Outcome, UsageRecord, UsageSink};
use crate::state::request_id::RequestId;

/// What a request is, for its record.
#[derive(Clone)]
pub struct RequestFacts {
    pub deployment: Arc<Deployment>,
    pub key_slot: KeySlot,
    /// The consumer calling (and its grant), when it is a consumer's key.
    pub consumer: Option<ConsumerGrant>,
    pub route: ApiRoute,
    pub request_id: RequestId,
    pub started: Instant,
    pub started_at: SystemTime,
    pub estimated_prompt_tokens: u64,
    pub limited_by: Option<LimitKind>,
    /// How long it waited for the buckets, when it did.
    pub queued: Option<std::time::Duration>,
}

impl RequestFacts {
    /// The record of a request that billed nothing.
    pub fn unbilled(&self, status: u16, outcome: Outcome) -> UsageRecord {
        self.record(status, outcome, Counts::NONE, None)
    }

    /// The record; `admitted` is what an admitted request held: its reservation, the pool's
    /// backend that answered, the attempts made (`None`: never admitted).
    fn record(&self, status: u16, outcome: Outcome, counts: Counts, admitted: Option<Admitted>) -> UsageRecord {
        let Admitted { reserved_tokens, backend, attempts } = admitted.clone().unwrap_or_default();
        UsageRecord {
            deployment: Arc::clone(&self.deployment),
            key_slot: self.key_slot,
            consumer: self.consumer.as_ref().map(|c| Arc::clone(&c.consumer)),
            admitted: admitted.is_some(),
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
            refusal: None,
            backend,
            attempts,
            queued: self.queued,
        }
    }
}

/// What an admitted request's record says of its admission.
#[derive(Clone, Default)]
struct Admitted {
    reserved_tokens: u64,
    backend: Option<Arc<str>>,
    attempts: u32,
}

/// Tokens held for an admitted request until it is settled. Settles exactly once; dropping it
/// unsettled (the client went away before the response head) charges the prompt estimate.
#[must_use = "a reservation must be settled, or it is settled on drop as a client that went away"]
pub struct Reservation {
    facts: RequestFacts,
    reserved_tokens: u64,
    /// Where the tokens were taken from, and so where the difference is settled.
    hold: Hold,
    /// Where a consumer's own levels were taken, and the periods its request counts in.
    consumer: Option<(ConsumerHold, Option<Stamp>)>,
    sink: Arc<dyn UsageSink>,
    settled: bool,
    /// The pool's backend that answered, holding its in-flight slot and its own buckets'
    /// reservation (settled with the same count).
    served: Option<(Attempt, Option<Arc<str>>)>,
    attempts: u32,
}

impl Reservation {
    pub fn new(
        facts: RequestFacts,
        reserved_tokens: u64,
        hold: Hold,
        consumer: Option<(ConsumerHold, Option<Stamp>)>,
        sink: Arc<dyn UsageSink>,
    ) -> Reservation {
        facts.deployment.usage.inflight.fetch_add(1, Ordering::Relaxed);
        Reservation { facts, reserved_tokens, hold, consumer, sink, settled: false, served: None, attempts: 0 }
    }

    /// The response comes from this backend (`None`: the deployment's only one, which the
    /// record need not name), after `attempts` attempts.
    pub fn served_by(&mut self, attempt: Attempt, backend: Option<Arc<str>>, attempts: u32) {
        self.served = Some((attempt, backend));
        self.attempts = attempts;
    }

    /// Attempts made when none answered.
    pub fn attempted(&mut self, attempts: u32) {
        self.attempts = attempts;
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
        if let (Some(caller), Some((hold, stamp))) = (&self.facts.consumer, &self.consumer) {
            hold.settle(&self.facts.deployment.name, caller, *stamp, self.reserved_tokens, counts.total);
        }
        self.facts.deployment.usage.inflight.fetch_sub(1, Ordering::Relaxed);
        let backend = self.served.take().and_then(|(attempt, name)| {
            attempt.settle(counts.total);
            name
        });
        let admitted = Admitted { reserved_tokens: self.reserved_tokens, backend, attempts: self.attempts };
        self.sink.record(self.facts.record(status, outcome, counts, Some(admitted)));
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
