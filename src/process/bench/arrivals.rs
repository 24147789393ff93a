//! When requests start: a closed loop (each worker sends its next request when the last one
//! finished), a constant rate, a Poisson process (exponential gaps from a seeded generator, so a
//! run can be repeated exactly), or the timestamps of a replayed trace.

use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Exp};

/// How the target is loaded.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Load {
    /// This many requests in flight.
    Closed { concurrency: usize },
    /// Requests on a fixed schedule, `i / rate` seconds after the start.
    Constant { rate: f64 },
    /// Requests at exponential gaps averaging `1 / rate` seconds.
    Poisson { rate: f64 },
    /// Requests at the timestamps of the replayed file.
    Trace,
}

impl Load {
    pub fn describe(self) -> String {
        match self {
            Load::Closed { concurrency } => format!("closed loop, {concurrency} concurrent"),
            Load::Constant { rate } => format!("constant rate, {rate} requests/s"),
            Load::Poisson { rate } => format!("poisson, {rate} requests/s"),
            Load::Trace => "trace replay".into(),
        }
    }

    /// The same kind of load at another rate (or concurrency), for a sweep step.
    pub fn at(self, value: f64) -> Load {
        match self {
            Load::Closed { .. } => Load::Closed { concurrency: value.round().max(1.0) as usize },
            Load::Constant { .. } => Load::Constant { rate: value },
            Load::Poisson { .. } => Load::Poisson { rate: value },
            Load::Trace => Load::Trace,
        }
    }

    pub fn check(self) -> Result<(), String> {
        match self {
            Load::Constant { rate } | Load::Poisson { rate } if !(rate.is_finite() && rate > 0.0) => {
                Err(format!("--rate {rate}: it must be a positive number of requests per second"))
            }
            Load::Closed { concurrency: 0 } => Err("--concurrency must be at least 1".into()),
            _ => Ok(()),
        }
    }
}

/// The start offsets of an open-loop run, from the run's start.
pub enum Schedule {
    Constant { interval: f64, i: u64 },
    Poisson { gaps: Exp<f64>, rng: Box<StdRng>, at: f64 },
    Trace { at: std::sync::Arc<[f64]>, i: usize },
}

impl Schedule {
    /// `None` for a closed loop, which has no schedule.
    pub fn new(load: Load, seed: u64, trace: std::sync::Arc<[f64]>) -> Option<Schedule> {
        match load {
            Load::Closed { .. } => None,
            Load::Constant { rate } => Some(Schedule::Constant { interval: 1.0 / rate, i: 0 }),
            Load::Poisson { rate } => Some(Schedule::Poisson {
                gaps: Exp::new(rate).ok()?,
                rng: Box::new(StdRng::seed_from_u64(seed)),
                at: 0.0,
            }),
            Load::Trace => Some(Schedule::Trace { at: trace, i: 0 }),
        }
    }

    /// The next start offset; `None` when a trace has no more requests.
    pub fn next_offset(&mut self) -> Option<Duration> {
        let seconds = match self {
            Schedule::Constant { interval, i } => {
                let at = *interval * *i as f64;
                *i += 1;
                at
            }
            // The first request starts at once; each later one after an exponential gap.
            Schedule::Poisson { gaps, rng, at } => {
                let now = *at;
                *at += gaps.sample(rng.as_mut());
                now
            }
            Schedule::Trace { at, i } => {
                let next = *at.get(*i)?;
                *i += 1;
                next
            }
        };
        Some(Duration::from_secs_f64(seconds.max(0.0)))
    }
}

/// Pearson's chi-square statistic of inter-arrival `gaps` (seconds) against the exponential
/// distribution of `rate`, over `bins` equally likely bins.
pub fn exponential_chi_square(gaps: &[f64], rate: f64, bins: usize) -> f64 {
    let mut observed = vec![0u64; bins];
    for gap in gaps {
        // The exponential CDF maps a gap to [0, 1); equally likely bins are equal slices of it.
        let p = 1.0 - (-rate * gap).exp();
        observed[((p * bins as f64) as usize).min(bins - 1)] += 1;
    }
    let expected = gaps.len() as f64 / bins as f64;
    observed.iter().map(|&o| (o as f64 - expected).powi(2) / expected).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(load: Load, seed: u64, n: usize) -> Vec<f64> {
        let mut s = Schedule::new(load, seed, std::sync::Arc::from(Vec::new())).unwrap_or_else(|| unreachable!());
        (0..n).filter_map(|_| s.next_offset()).map(|d| d.as_secs_f64()).collect()
    }

    #[test]
    fn constant_rate_is_evenly_spaced() {
        let at = offsets(Load::Constant { rate: 4.0 }, 0, 5);
        assert_eq!(at, vec![0.0, 0.25, 0.5, 0.75, 1.0]);
    }

    #[test]
    fn poisson_gaps_fit_the_exponential_and_repeat_with_the_seed() {
        let at = offsets(Load::Poisson { rate: 50.0 }, 7, 20_001);
        let gaps: Vec<f64> = at.windows(2).map(|w| w[1] - w[0]).collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        assert!((mean - 0.02).abs() < 0.02 * 0.03, "mean gap {mean}");
        // 10 bins, 9 degrees of freedom: 27.88 is the 0.1% critical value.
        let chi = exponential_chi_square(&gaps, 50.0, 10);
        assert!(chi < 27.88, "chi-square {chi}");
        // A constant schedule is as far from exponential as it gets.
        let even: Vec<f64> = vec![0.02; 20_000];
        assert!(exponential_chi_square(&even, 50.0, 10) > 1000.0);
        assert_eq!(at[..50], offsets(Load::Poisson { rate: 50.0 }, 7, 50)[..]);
        assert_ne!(at[..50], offsets(Load::Poisson { rate: 50.0 }, 8, 50)[..]);
    }

    #[test]
    fn a_trace_ends_with_its_timestamps() {
        let mut s =
            Schedule::new(Load::Trace, 0, std::sync::Arc::from(vec![0.0, 1.5])).unwrap_or_else(|| unreachable!());
        assert_eq!(s.next_offset(), Some(Duration::ZERO));
        assert_eq!(s.next_offset(), Some(Duration::from_millis(1500)));
        assert_eq!(s.next_offset(), None);
    }

    #[test]
    fn rates_are_checked() {
        assert!(Load::Poisson { rate: 0.0 }.check().is_err());
        assert!(Load::Constant { rate: f64::NAN }.check().is_err());
        assert!(Load::Closed { concurrency: 0 }.check().is_err());
        assert_eq!(Load::Poisson { rate: 1.0 }.at(8.0), Load::Poisson { rate: 8.0 });
    }
}
