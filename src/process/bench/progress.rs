//! The collector of samples and the live progress line on a terminal: elapsed time, the rate
//! achieved, requests in flight, errors, and p50 / p99 latency so far.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::mpsc::UnboundedReceiver;

use super::{Load, Sample, Shared};

pub struct Progress {
    bar: indicatif::ProgressBar,
}

/// How often the line is redrawn.
const EVERY: Duration = Duration::from_millis(250);

impl Progress {
    pub fn new(show: bool) -> Progress {
        let bar = if show {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.enable_steady_tick(Duration::from_millis(125));
            bar
        } else {
            indicatif::ProgressBar::hidden()
        };
        Progress { bar }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }

    /// Gathers every sample of a run until the senders are gone, updating the line.
    pub fn collect(
        &self,
        mut received: UnboundedReceiver<Sample>,
        shared: Arc<Shared>,
        load: Load,
    ) -> impl Future<Output = Vec<Sample>> + Send + 'static {
        let bar = self.bar.clone();
        async move {
            let mut samples = Vec::new();
            // Latency in µs, 1 µs to 10 min at 2 significant digits: cheap, and only for the line.
            let mut latency = Histogram::<u64>::new_with_bounds(1, 600_000_000, 2).ok();
            let (mut errors, mut drawn) = (0u64, Instant::now());
            let label = match (shared.step, &shared.options.sweep.is_empty()) {
                (step, false) => format!("step {} ({}) ", step + 1, load.describe()),
                _ => String::new(),
            };
            // Redrawn on a tick too, so a stalled target shows its requests piling up.
            let mut tick = tokio::time::interval(EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                let sample = tokio::select! {
                    sample = received.recv() => match sample {
                        Some(sample) => Some(sample),
                        None => break,
                    },
                    _ = tick.tick(), if !bar.is_hidden() => None,
                };
                if let Some(sample) = sample {
                    errors += u64::from(!sample.ok());
                    if let Some(h) = latency.as_mut() {
                        let _ = h.record((sample.e2e_ms * 1000.0).clamp(1.0, 6e8) as u64);
                    }
                    samples.push(sample);
                }
                if !bar.is_hidden() && drawn.elapsed() >= EVERY {
                    drawn = Instant::now();
                    let seconds = shared.begun.elapsed().as_secs_f64().max(1e-3);
                    let (p50, p99) = latency.as_ref().filter(|h| !h.is_empty()).map_or((0.0, 0.0), |h| {
                        (h.value_at_quantile(0.5) as f64 / 1000.0, h.value_at_quantile(0.99) as f64 / 1000.0)
                    });
                    bar.set_message(format!(
                        "{label}{seconds:.1} s  {:.1} req/s  {} in flight  {errors} errors  p50 {p50:.2} ms  p99 {p99:.2} ms",
                        samples.len() as f64 / seconds,
                        shared.in_flight.load(Ordering::Relaxed),
                    ));
                }
            }
            samples
        }
    }
}
