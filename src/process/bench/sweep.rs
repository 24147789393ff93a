//! A sweep: the run repeated at each rate (or concurrency, for a closed loop) of `--sweep`, in
//! order, until a step misses the target:
//!
//! - an open loop misses when fewer than 90% of the offered requests per second come back
//!   successful within the window (the target fell behind, or refused with 429s);
//! - a closed loop misses when more concurrency brought less than 10% more throughput than the
//!   last step that passed (the target saturated);
//! - either misses when more than 5% of its requests failed, or when fewer than
//!   `--slo-attainment` percent met the SLO.
//!
//! The knee is the highest value that passed. The report is the knee step's (the first step's
//! when none passed), with the table of steps beside it.

use std::sync::Arc;

use super::report::{RateWindow, Step, Sweep};
use super::workload::Prepared;
use super::{BenchOptions, HttpClient, Load, Report, Run, Sample, header, run_step};

pub async fn run(
    client: &HttpClient,
    options: &BenchOptions,
    prepared: &Arc<[Prepared]>,
    progress: &super::progress::Progress,
) -> Result<Run, String> {
    let over = if matches!(options.load, Load::Closed { .. }) { "concurrency" } else { "rate" };
    let mut sweep = Sweep { over: over.into(), ..Sweep::default() };
    let mut all: Vec<Sample> = Vec::new();
    let mut reports: Vec<Report> = Vec::new();
    let mut best_throughput: Option<f64> = None;
    for (i, &value) in options.sweep.iter().enumerate() {
        let load = options.load.at(value);
        let step = u32::try_from(i).unwrap_or(u32::MAX);
        let (samples, window) = run_step(client, options, prepared, load, step, progress).await?;
        let report = Report::build(header(options, load), &samples, window);
        let offered = report.requests_measured as f64 / report.duration_seconds;
        let rates = RateWindow::of(window, &samples);
        let succeeded = rates.rate(samples.iter().filter(|s| s.ok() && rates.counts(s)).count() as f64);
        let failed = report.requests_measured - report.status_2xx;
        let mut notes = Vec::new();
        match options.load {
            Load::Closed { .. } => {
                if let Some(best) = best_throughput.filter(|best| report.throughput_per_second < best * 1.1) {
                    notes
                        .push(format!("throughput {:.1}/s is not 10% above {best:.1}/s", report.throughput_per_second));
                }
            }
            _ => {
                if succeeded < 0.9 * offered {
                    notes.push(format!("{succeeded:.1} successful/s of {offered:.1} offered"));
                }
            }
        }
        if failed as f64 > 0.05 * report.requests_measured as f64 {
            notes.push(format!("{failed} of {} requests failed", report.requests_measured));
        }
        if let Some(share) = report.slo_attainment_percent.filter(|share| *share < options.slo_attainment) {
            notes.push(format!("{share:.1}% met the SLO, under {}%", options.slo_attainment));
        }
        let met = notes.is_empty();
        if met {
            sweep.knee = Some(value);
            best_throughput = Some(report.throughput_per_second);
        }
        let percentile = |s: &Option<super::stats::Summary>, f: fn(&super::stats::Summary) -> f64| s.as_ref().map(f);
        sweep.steps.push(Step {
            value,
            offered_per_second: offered,
            throughput_per_second: report.throughput_per_second,
            goodput_per_second: report.goodput_per_second,
            slo_attainment_percent: report.slo_attainment_percent,
            latency_p50_ms: report.latency_ms.p50,
            latency_p99_ms: report.latency_ms.p99,
            ttft_p50_ms: percentile(&report.time_to_first_token_ms, |s| s.p50),
            ttft_p99_ms: percentile(&report.time_to_first_token_ms, |s| s.p99),
            met,
            note: notes.join("; "),
        });
        all.extend(samples);
        reports.push(report);
        if !met {
            sweep.stopped = format!("stopped at {over} {value}: it missed the target");
            break;
        }
    }
    if sweep.stopped.is_empty() {
        sweep.stopped = "every step met the target".into();
    }
    let knee_step = sweep.steps.iter().rposition(|s| s.met).unwrap_or(0);
    let mut report = reports.swap_remove(knee_step);
    report.sweep = Some(sweep);
    Ok(Run { report, samples: all, step: u32::try_from(knee_step).unwrap_or(0) })
}
