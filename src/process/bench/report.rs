//! The report of a run: counts by status and error code, rates over the measured window, and
//! percentiles of every per-request figure; as a table or JSON (which `bench compare` reads).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::measure::Sample;
use super::slo::Slo;
use super::stats::Summary;

/// The measured window, seconds from the start: requests *started* in it are the measured ones
/// (percentiles, counts). Requests *finished* in it make the rates, counted from the later of
/// its start and the run's first answer: before that first answer the target is filling up, and
/// counting that stretch would read low by a request's latency (a 20/s run of 1.3 s answers over
/// 25 s would read 18.9/s). Warm-up, cool-down and the drain after the last scheduled request
/// are outside it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Window {
    pub start: f64,
    pub end: f64,
}

impl Window {
    pub fn seconds(self) -> f64 {
        (self.end - self.start).max(1e-9)
    }

    fn started(self, s: &Sample) -> bool {
        s.scheduled >= self.start && s.scheduled < self.end
    }
}

/// Where the rates are counted: finishes in `(start, end]`.
#[derive(Clone, Copy, Debug)]
pub struct RateWindow {
    start: f64,
    end: f64,
}

impl RateWindow {
    pub fn of(window: Window, samples: &[Sample]) -> RateWindow {
        let first = samples.iter().map(Sample::finished).fold(f64::INFINITY, f64::min);
        RateWindow { start: window.start.max(first.min(window.end)), end: window.end }
    }

    pub fn counts(self, s: &Sample) -> bool {
        let at = s.finished();
        at > self.start && at <= self.end
    }

    /// Per second of the window; 0 when it is empty.
    pub fn rate(self, count: f64) -> f64 {
        if self.end > self.start { count / (self.end - self.start) } else { 0.0 }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Report {
    pub target: String,
    pub mode: String,
    /// The measured window's length.
    pub duration_seconds: f64,
    pub warmup_seconds: f64,
    pub cooldown_seconds: f64,
    pub requests_sent: u64,
    /// Requests started in the measured window; the counts below are theirs.
    pub requests_measured: u64,
    pub status_2xx: u64,
    pub status_429: u64,
    /// 4xx other than 429.
    pub status_4xx: u64,
    pub status_5xx: u64,
    /// No answer: connection failed, timed out, or the body broke off.
    pub transport_errors: u64,
    /// Failed requests by status and error code (`429 TooManyRequests`, `0 timeout after 60 s`).
    pub errors: BTreeMap<String, u64>,
    pub retries_after_429: u64,
    /// Time each retried request spent waiting on `retry-after-ms`.
    pub retry_wait_ms: Option<Summary>,
    /// Requests finished in the measured window, per second of it.
    pub throughput_per_second: f64,
    /// Successful requests (meeting the SLO when one is given) finished in the window, per second.
    pub goodput_per_second: f64,
    pub output_tokens_per_second: f64,
    pub input_tokens_per_second: f64,
    pub slo: Option<String>,
    /// The share of measured requests meeting the SLO.
    pub slo_attainment_percent: Option<f64>,
    /// End to end, from the scheduled start to the last byte.
    pub latency_ms: Summary,
    pub time_to_first_token_ms: Option<Summary>,
    /// Per output token, each request's first-to-last content time over its `usage` count.
    pub inter_token_latency_ms: Option<Summary>,
    /// Between reads that carried content, every gap of every measured request.
    pub inter_event_latency_ms: Option<Summary>,
    pub time_per_output_token_ms: Option<Summary>,
    /// Each request's stream pace (the inverse of its ITL).
    pub tokens_per_second: Option<Summary>,
    pub input_tokens: Option<Summary>,
    pub output_tokens: Option<Summary>,
    /// From `Server-Timing`: what the gateway added, and the backend's time to its head.
    pub gateway_ms: Option<Summary>,
    pub backend_ms: Option<Summary>,
    pub sweep: Option<Sweep>,
}

/// A series of runs at rising rates (or concurrencies).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sweep {
    /// `rate` or `concurrency`.
    pub over: String,
    pub steps: Vec<Step>,
    /// The highest value that met the target (kept up with the offered load, and the SLO).
    pub knee: Option<f64>,
    /// Why the sweep stopped.
    pub stopped: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub value: f64,
    /// Requests started in the window, per second of it.
    pub offered_per_second: f64,
    pub throughput_per_second: f64,
    pub goodput_per_second: f64,
    pub slo_attainment_percent: Option<f64>,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub ttft_p50_ms: Option<f64>,
    pub ttft_p99_ms: Option<f64>,
    pub met: bool,
    pub note: String,
}

pub struct Header<'a> {
    pub target: &'a str,
    pub mode: String,
    pub warmup: f64,
    pub cooldown: f64,
    pub slo: Option<Slo>,
}

impl Report {
    pub fn build(header: Header<'_>, samples: &[Sample], window: Window) -> Report {
        let seconds = window.seconds();
        let rates = RateWindow::of(window, samples);
        let measured: Vec<&Sample> = samples.iter().filter(|s| window.started(s)).collect();
        let finished: Vec<&Sample> = samples.iter().filter(|s| rates.counts(s)).collect();
        let meets = |s: &Sample| header.slo.map_or(s.ok(), |slo| slo.met(s));
        let collect = |f: &dyn Fn(&Sample) -> Option<f64>| -> Option<Summary> {
            let mut values: Vec<f64> = measured.iter().filter_map(|s| f(s)).collect();
            Summary::of(&mut values)
        };
        let mut report = Report {
            target: header.target.to_owned(),
            mode: header.mode,
            duration_seconds: seconds,
            warmup_seconds: header.warmup,
            cooldown_seconds: header.cooldown,
            requests_sent: samples.len() as u64,
            requests_measured: measured.len() as u64,
            throughput_per_second: rates.rate(finished.len() as f64),
            goodput_per_second: rates.rate(finished.iter().filter(|s| meets(s)).count() as f64),
            output_tokens_per_second: rates.rate(finished.iter().filter_map(|s| s.output_tokens).sum::<u64>() as f64),
            input_tokens_per_second: rates.rate(finished.iter().filter_map(|s| s.input_tokens).sum::<u64>() as f64),
            slo: header.slo.map(|slo| slo.describe()),
            slo_attainment_percent: header
                .slo
                .filter(|_| !measured.is_empty())
                .map(|slo| 100.0 * measured.iter().filter(|s| slo.met(s)).count() as f64 / measured.len() as f64),
            latency_ms: collect(&|s| Some(s.e2e_ms)).unwrap_or_default(),
            time_to_first_token_ms: collect(&|s| s.ttft_ms),
            inter_token_latency_ms: collect(&|s| s.itl_ms),
            time_per_output_token_ms: collect(&|s| s.tpot_ms),
            tokens_per_second: collect(&|s| s.tokens_per_second),
            input_tokens: collect(&|s| s.input_tokens.map(|t| t as f64)),
            output_tokens: collect(&|s| s.output_tokens.map(|t| t as f64)),
            gateway_ms: collect(&|s| s.gateway_ms),
            backend_ms: collect(&|s| s.backend_ms),
            retry_wait_ms: collect(&|s| (s.retries > 0).then_some(s.retry_wait_ms)),
            ..Report::default()
        };
        let mut gaps: Vec<f64> = measured.iter().flat_map(|s| s.gaps.iter().map(|g| f64::from(*g))).collect();
        report.inter_event_latency_ms = Summary::of(&mut gaps);
        for s in &measured {
            report.retries_after_429 += u64::from(s.retries);
            match s.status {
                200..=299 => report.status_2xx += 1,
                429 => report.status_429 += 1,
                400..=499 => report.status_4xx += 1,
                0 => report.transport_errors += 1,
                _ => report.status_5xx += 1,
            }
            if !s.ok() {
                let key = format!("{} {}", s.status, s.error.as_deref().unwrap_or(""));
                *report.errors.entry(key.trim_end().to_owned()).or_default() += 1;
            }
        }
        report
    }

    pub fn table(&self) -> String {
        let mut out = format!(
            "target      {}\nmode        {}\nwindow      {:.2} s measured ({:.2} s warm-up, {:.2} s cool-down)\n\
             requests    {} sent, {} measured: {} 2xx, {} 429, {} other 4xx, {} 5xx, {} transport errors ({} retries after 429)\n\
             throughput  {:.1} requests/s, goodput {:.1}/s{}\ntokens      {:.1} output/s, {:.1} input/s\n",
            self.target,
            self.mode,
            self.duration_seconds,
            self.warmup_seconds,
            self.cooldown_seconds,
            self.requests_sent,
            self.requests_measured,
            self.status_2xx,
            self.status_429,
            self.status_4xx,
            self.status_5xx,
            self.transport_errors,
            self.retries_after_429,
            self.throughput_per_second,
            self.goodput_per_second,
            match (&self.slo, self.slo_attainment_percent) {
                (Some(slo), Some(share)) => format!(" (SLO {slo}: {share:.1}% of requests met it)"),
                _ => String::new(),
            },
            self.output_tokens_per_second,
            self.input_tokens_per_second,
        );
        for (code, count) in &self.errors {
            out.push_str(&format!("error       {count} x {code}\n"));
        }
        out.push_str(&format!(
            "{:<16}{:>7} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}\n",
            "", "count", "p50", "p90", "p95", "p99", "p99.9", "max", "mean"
        ));
        for (name, summary) in self.rows() {
            if let Some(s) = summary {
                out.push_str(&format!(
                    "{name:<16}{:>7} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>10.3}\n",
                    s.count, s.p50, s.p90, s.p95, s.p99, s.p999, s.max, s.mean
                ));
            }
        }
        if let Some(sweep) = &self.sweep {
            out.push_str(&format!(
                "\nsweep over {}: {}\n{:>10} {:>10} {:>10} {:>10} {:>8} {:>10} {:>10}  met\n",
                sweep.over,
                sweep.stopped,
                sweep.over,
                "offered/s",
                "achieved/s",
                "goodput/s",
                "SLO %",
                "p50 ms",
                "p99 ms"
            ));
            for step in &sweep.steps {
                out.push_str(&format!(
                    "{:>10} {:>10.1} {:>10.1} {:>10.1} {:>8} {:>10.3} {:>10.3}  {}{}\n",
                    step.value,
                    step.offered_per_second,
                    step.throughput_per_second,
                    step.goodput_per_second,
                    step.slo_attainment_percent.map_or("-".into(), |p| format!("{p:.1}")),
                    step.latency_p50_ms,
                    step.latency_p99_ms,
                    if step.met { "yes" } else { "no" },
                    if step.note.is_empty() { String::new() } else { format!(" ({})", step.note) },
                ));
            }
            match sweep.knee {
                Some(knee) => out.push_str(&format!("knee        {knee} ({} meeting the target)\n", sweep.over)),
                None => out.push_str("knee        none: the first step already missed the target\n"),
            }
        }
        out
    }

    /// The percentile rows, named as in the table (ms unless the name says otherwise).
    pub fn rows(&self) -> Vec<(&'static str, Option<&Summary>)> {
        vec![
            ("latency ms", Some(&self.latency_ms)),
            ("ttft ms", self.time_to_first_token_ms.as_ref()),
            ("itl ms/token", self.inter_token_latency_ms.as_ref()),
            ("itl ms/event", self.inter_event_latency_ms.as_ref()),
            ("tpot ms", self.time_per_output_token_ms.as_ref()),
            ("stream tokens/s", self.tokens_per_second.as_ref()),
            ("input tokens", self.input_tokens.as_ref()),
            ("output tokens", self.output_tokens.as_ref()),
            ("gateway ms", self.gateway_ms.as_ref()),
            ("backend ms", self.backend_ms.as_ref()),
            ("429 wait ms", self.retry_wait_ms.as_ref()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(scheduled: f64, e2e_ms: f64, status: u16) -> Sample {
        Sample { scheduled, e2e_ms, status, output_tokens: Some(10), ..Sample::default() }
    }

    #[test]
    fn rates_count_only_the_window_and_percentiles_only_its_requests() {
        // One request a second for 10 s; each takes 500 ms. Warm-up 2 s, window to 8 s.
        let samples: Vec<Sample> = (0..10).map(|i| sample(f64::from(i), 500.0, 200)).collect();
        let header = || Header { target: "t", mode: "m".into(), warmup: 2.0, cooldown: 2.0, slo: None };
        let r = Report::build(header(), &samples, Window { start: 2.0, end: 8.0 });
        assert_eq!((r.requests_sent, r.requests_measured, r.status_2xx), (10, 6, 6));
        // Finished in (2, 8]: the ones started at 2..=7 (the one started at 1 ended at 1.5).
        assert!((r.throughput_per_second - 1.0).abs() < 1e-9, "{r:?}");
        assert!((r.output_tokens_per_second - 10.0).abs() < 1e-9);
        assert_eq!(r.latency_ms.count, 6);
        // Without a warm-up, the rates start at the first answer (0.5 s): 8 finished in (0.5, 8].
        let r = Report::build(header(), &samples, Window { start: 0.0, end: 8.0 });
        assert!((r.throughput_per_second - 7.0 / 7.5).abs() < 1e-9, "{r:?}");
    }

    #[test]
    fn errors_are_counted_by_status_and_code_and_goodput_follows_the_slo() {
        let mut samples = vec![sample(0.0, 100.0, 200), sample(0.1, 900.0, 200), sample(0.2, 5.0, 429)];
        samples[2].error = Some("TooManyRequests".into());
        samples.push(Sample { error: Some("connect failed".into()), ..sample(0.3, 1.0, 0) });
        samples.push(sample(0.2, 100.0, 200));
        let slo = Slo::parse("e2e=500ms").ok();
        let header = Header { target: "t", mode: "m".into(), warmup: 0.0, cooldown: 0.0, slo };
        let r = Report::build(header, &samples, Window { start: 0.0, end: 1.0 });
        assert_eq!((r.status_2xx, r.status_429, r.transport_errors), (3, 1, 1));
        assert_eq!(r.errors.get("429 TooManyRequests"), Some(&1));
        assert_eq!(r.errors.get("0 connect failed"), Some(&1));
        // Rates count from the first answer (0.1 s) to 1 s: of those, one 200 within 500 ms.
        assert!((r.goodput_per_second - 1.0 / 0.9).abs() < 1e-9, "{r:?}");
        assert_eq!(r.slo_attainment_percent, Some(40.0));
        let json = serde_json::to_string(&r).unwrap_or_default();
        let back: Report = serde_json::from_str(&json).unwrap_or_default();
        assert_eq!(back, r);
        assert!(r.table().contains("1 x 429 TooManyRequests"));
    }
}
