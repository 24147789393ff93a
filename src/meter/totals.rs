//! A [`UsageSink`] that keeps running totals per deployment (served on the admin listener at
//! `GET /usage`) and logs nothing. Metrics and the durable ledger are further sinks.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::Serialize;

use super::{CountSource, UsageRecord, UsageSink};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DeploymentTotals {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub reported_requests: u64,
    pub estimated_requests: u64,
    pub rejected_requests: u64,
}

#[derive(Debug, Default)]
pub struct UsageTotals {
    by_deployment: Mutex<BTreeMap<String, DeploymentTotals>>,
}

impl UsageTotals {
    pub fn new() -> UsageTotals {
        UsageTotals::default()
    }

    pub fn snapshot(&self) -> BTreeMap<String, DeploymentTotals> {
        self.by_deployment.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

impl UsageSink for UsageTotals {
    fn record(&self, record: UsageRecord) {
        let Ok(mut map) = self.by_deployment.lock() else { return };
        let totals = match map.get_mut(record.deployment.name.as_str()) {
            Some(totals) => totals,
            None => map.entry(record.deployment.name.clone()).or_default(),
        };
        totals.requests += 1;
        totals.prompt_tokens += record.prompt_tokens;
        totals.completion_tokens += record.completion_tokens;
        totals.total_tokens += record.total_tokens;
        match record.source {
            CountSource::Reported => totals.reported_requests += 1,
            CountSource::Estimated => totals.estimated_requests += 1,
            CountSource::None => {}
        }
        if record.status == 429 {
            totals.rejected_requests += 1;
        }
    }
}
