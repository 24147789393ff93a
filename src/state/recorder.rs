//! The [`UsageSink`] the gateway runs with: every record goes to the per-deployment totals, the
//! Prometheus metrics, the durable ledger (when configured) and one access log line.

use std::sync::Arc;

use crate::state::ledger::Ledger;
use crate::state::metrics::Metrics;
use crate::state::record::{UsageRecord, UsageSink};
use crate::state::totals;

pub struct Recorder {
    pub metrics: Arc<Metrics>,
    pub ledger: Option<Arc<Ledger>>,
}

impl UsageSink for Recorder {
    fn record(&self, record: UsageRecord) {
        totals::add(&record);
        self.metrics.observe(&record);
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
