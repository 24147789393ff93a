//! One ledger line: the billing record of one request, as JSON on a single `\n`-terminated line.

use std::borrow::Cow;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::core::utc;
use crate::state::record::UsageRecord;

/// The meter a record is billed under (the seed's cost view: inference, fine-tuning, ...).
pub const METER_INFERENCE: &str = "inference";

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct LedgerLine<'a> {
    /// When the request arrived, RFC 3339 UTC.
    #[serde(borrow)]
    pub time: Cow<'a, str>,
    #[serde(borrow)]
    pub deployment: Cow<'a, str>,
    #[serde(borrow)]
    pub model: Cow<'a, str>,
    #[serde(borrow)]
    pub key_slot: Cow<'a, str>,
    #[serde(borrow)]
    pub meter: Cow<'a, str>,
    #[serde(borrow)]
    pub route: Cow<'a, str>,
    pub status: u16,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// `reported` (the backend's usage), `estimated` (tollgate's count) or `none`.
    #[serde(borrow)]
    pub source: Cow<'a, str>,
    #[serde(borrow)]
    pub outcome: Cow<'a, str>,
    #[serde(borrow)]
    pub request_id: Cow<'a, str>,
    pub duration_ms: f64,
    pub reserved_tokens: u64,
    pub estimated_prompt_tokens: u64,
    /// The backend of the pool that answered (absent when none did, and for a deployment with
    /// one backend, which is then its backend).
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<Cow<'a, str>>,
    /// Attempts sent to backends (more than 1 after retries; 0 when none was sent).
    #[serde(default)]
    pub attempts: u32,
    /// How long the request waited for the deployment's rate limit (`max_wait_ms`), when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_ms: Option<f64>,
    /// The project of the deployment (which pays for the request).
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub project: Option<Cow<'a, str>>,
    /// The consumer that called, `project/name` (absent for the deployment's own keys).
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<Cow<'a, str>>,
    /// Whether the request was admitted (counted in the quotas); written for consumers' requests,
    /// whose period usage is rebuilt from the ledger at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admitted: Option<bool>,
    /// The subscription of the deployment's project it was billed to (absent when none).
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub subscription: Option<Cow<'a, str>>,
    /// The currency of `cost_micros` and `price_micros_per_million`.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<Cow<'a, str>>,
    /// What the request cost, per meter and in total, in micro-units of `currency` (absent when
    /// the deployment has no prices: it costs nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_micros: Option<LineCost>,
    /// The prices it was billed at (micro-units per 1,000,000 tokens), so a report of a past
    /// month never depends on today's prices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_micros_per_million: Option<LinePrices>,
}

/// A line's cost: each meter rounded half up to the micro-unit, and their sum.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LineCost {
    pub input: u64,
    pub output: u64,
    pub total: u64,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LinePrices {
    pub input: u64,
    pub output: u64,
}

/// RFC 3339 in UTC, the fraction without trailing zeros (`2026-12-02T19:50:01.1234Z`), exactly
/// as `time`'s `Rfc3339` writes it (a test compares the two), by [`utc`]: `time`'s formatter
/// cost ~2,300 instructions a record (callgrind), growing its buffer as it wrote; this ~950.
pub fn format_time(at: SystemTime) -> String {
    const OUT_OF_RANGE: &str = "1970-01-01T00:00:00Z";
    // Not `OffsetDateTime::from`, which panics past year 9999.
    let nanos = match at.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(since) => i128::try_from(since.as_nanos()).unwrap_or(i128::MAX),
        Err(before) => i128::try_from(before.duration().as_nanos()).map_or(i128::MIN, |n| -n),
    };
    let Ok(at) = OffsetDateTime::from_unix_timestamp_nanos(nanos) else { return OUT_OF_RANGE.to_owned() };
    let year = at.year();
    if !(0..=9999).contains(&year) {
        return OUT_OF_RANGE.to_owned();
    }
    let mut out = Vec::with_capacity(30);
    utc::push_date_time(&mut out, &at);
    let nanos = at.nanosecond();
    if nanos != 0 {
        let (mut fraction, mut width) = (nanos, 9);
        while fraction % 10 == 0 {
            fraction /= 10;
            width -= 1;
        }
        out.push(b'.');
        utc::push_padded(&mut out, fraction, width);
    }
    out.push(b'Z');
    String::from_utf8(out).unwrap_or_else(|_| OUT_OF_RANGE.to_owned())
}

impl<'a> LedgerLine<'a> {
    pub fn from_record(record: &'a UsageRecord) -> LedgerLine<'a> {
        LedgerLine {
            time: Cow::Owned(format_time(record.started_at)),
            deployment: Cow::Borrowed(&record.deployment.name),
            model: Cow::Borrowed(&record.deployment.model),
            key_slot: Cow::Borrowed(record.key_slot.as_str()),
            meter: Cow::Borrowed(METER_INFERENCE),
            route: Cow::Borrowed(record.route.label()),
            status: record.status,
            prompt_tokens: record.prompt_tokens,
            completion_tokens: record.completion_tokens,
            total_tokens: record.total_tokens,
            source: Cow::Borrowed(record.source.as_str()),
            outcome: Cow::Borrowed(record.outcome.as_str()),
            request_id: Cow::Borrowed(record.request_id.as_str()),
            duration_ms: (record.duration.as_secs_f64() * 1e6).round() / 1e3,
            reserved_tokens: record.reserved_tokens,
            estimated_prompt_tokens: record.estimated_prompt_tokens,
            backend: record.backend.as_deref().map(Cow::Borrowed),
            attempts: record.attempts,
            queued_ms: record.queued.map(|q| (q.as_secs_f64() * 1e6).round() / 1e3),
            project: Some(Cow::Borrowed(&record.deployment.project)),
            consumer: record.consumer.as_ref().map(|c| Cow::Borrowed(&*c.label)),
            admitted: record.consumer.as_ref().map(|_| record.admitted),
            subscription: record.deployment.subscription_name().map(Cow::Borrowed),
            currency: record.deployment.prices.map(|_| Cow::Borrowed(&*record.deployment.currency)),
            cost_micros: record.cost().map(|c| LineCost { input: c.input.0, output: c.output.0, total: c.total().0 }),
            price_micros_per_million: record
                .deployment
                .prices
                .map(|p| LinePrices { input: p.input.0, output: p.output.0 }),
        }
    }

    /// The UTC day of the record, `YYYY-MM-DD`.
    pub fn day(&self) -> &str {
        self.time.get(..10).unwrap_or("")
    }

    pub fn parse(line: &'a str) -> Result<LedgerLine<'a>, serde_json::Error> {
        serde_json::from_str(line)
    }
}
