//! The benchmark report: counts, throughput and latency percentiles, as a table or JSON.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::{BenchOptions, Load, Tally};

#[derive(Clone, Debug, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub target: String,
    pub mode: String,
    pub duration_seconds: f64,
    pub requests_sent: u64,
    pub status_2xx: u64,
    pub status_429: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    pub transport_errors: u64,
    pub retries_after_429: u64,
    pub throughput_per_second: f64,
    /// Successful requests per second.
    pub goodput_per_second: f64,
    /// Milliseconds.
    pub latency_ms: Percentiles,
    pub time_to_first_token_ms: Option<Percentiles>,
    pub tokens_per_second: Option<Percentiles>,
}

fn percentiles(h: &Histogram<u64>, scale: f64) -> Percentiles {
    let q = |p: f64| h.value_at_quantile(p) as f64 / scale;
    Percentiles {
        p50: q(0.5),
        p90: q(0.9),
        p99: q(0.99),
        p999: q(0.999),
        max: h.max() as f64 / scale,
        mean: h.mean() / scale,
    }
}

impl Report {
    pub(super) fn new(options: &BenchOptions, tally: &Tally, sent: u64, elapsed: Duration) -> Report {
        let seconds = elapsed.as_secs_f64().max(1e-9);
        let finished = tally.ok + tally.too_many + tally.client_errors + tally.server_errors + tally.transport_errors;
        Report {
            target: options.url.clone(),
            mode: match options.load {
                Load::Closed { concurrency } => format!("closed loop, {concurrency} concurrent"),
                Load::Open { rate } => format!("open loop, {rate} requests/s"),
            },
            duration_seconds: seconds,
            requests_sent: sent,
            status_2xx: tally.ok,
            status_429: tally.too_many,
            status_4xx: tally.client_errors,
            status_5xx: tally.server_errors,
            transport_errors: tally.transport_errors,
            retries_after_429: tally.retries,
            throughput_per_second: finished as f64 / seconds,
            goodput_per_second: tally.ok as f64 / seconds,
            latency_ms: percentiles(&tally.latency, 1000.0),
            time_to_first_token_ms: (!tally.first_token.is_empty()).then(|| percentiles(&tally.first_token, 1000.0)),
            tokens_per_second: (!tally.tokens_per_second.is_empty())
                .then(|| percentiles(&tally.tokens_per_second, 1.0)),
        }
    }

    pub fn table(&self) -> String {
        let mut out = format!(
            "target      {}\nmode        {}\nduration    {:.2} s\nrequests    {} sent: {} 2xx, {} 429, {} other 4xx, {} 5xx, {} transport errors ({} retries after 429)\nthroughput  {:.1} requests/s ({:.1} successful/s)\n",
            self.target,
            self.mode,
            self.duration_seconds,
            self.requests_sent,
            self.status_2xx,
            self.status_429,
            self.status_4xx,
            self.status_5xx,
            self.transport_errors,
            self.retries_after_429,
            self.throughput_per_second,
            self.goodput_per_second
        );
        let row = |name: &str, p: &Percentiles, unit: &str| {
            format!(
                "{name:<11} p50 {:.3} {unit}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3}\n",
                p.p50, p.p90, p.p99, p.p999, p.max, p.mean
            )
        };
        out.push_str(&row("latency", &self.latency_ms, "ms"));
        if let Some(p) = &self.time_to_first_token_ms {
            out.push_str(&row("first tok", p, "ms"));
        }
        if let Some(p) = &self.tokens_per_second {
            out.push_str(&row("tokens/s", p, ""));
        }
        out
    }
}
