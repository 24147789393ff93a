//! Percentiles of what the requests measured: exact, from the sorted values (every request is
//! kept, so nothing is binned).

use serde::{Deserialize, Serialize};

/// p50 / p90 / p95 / p99 / p99.9 / max / mean of one metric, with the number of values.
/// Missing fields read as 0, so `bench compare` also reads reports of earlier versions.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Summary {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Summary {
    /// `None` when there are no values; sorts `values` in place.
    pub fn of(values: &mut [f64]) -> Option<Summary> {
        if values.is_empty() {
            return None;
        }
        values.sort_unstable_by(f64::total_cmp);
        let q = |p| quantile(values, p);
        Some(Summary {
            count: values.len() as u64,
            p50: q(0.5),
            p90: q(0.9),
            p95: q(0.95),
            p99: q(0.99),
            p999: q(0.999),
            max: values[values.len() - 1],
            mean: values.iter().sum::<f64>() / values.len() as f64,
        })
    }

    /// The value at `name` (`p50`, `p90`, `p95`, `p99`, `p999`, `max`, `mean`).
    pub fn get(&self, name: &str) -> Option<f64> {
        Some(match name {
            "p50" => self.p50,
            "p90" => self.p90,
            "p95" => self.p95,
            "p99" => self.p99,
            "p999" => self.p999,
            "max" => self.max,
            "mean" => self.mean,
            _ => return None,
        })
    }
}

/// Nearest-rank quantile of sorted, non-empty values: the smallest value with at least `p` of
/// them at or below it.
pub fn quantile(sorted: &[f64], p: f64) -> f64 {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Summary::of(&mut v).unwrap_or_default();
        assert_eq!((s.count, s.p50, s.p90, s.p99, s.p999, s.max), (100, 50.0, 90.0, 99.0, 100.0, 100.0));
        assert!((s.mean - 50.5).abs() < 1e-9);
        assert_eq!(Summary::of(&mut []), None);
        assert_eq!(Summary::of(&mut [7.0]).map(|s| (s.p50, s.p999)), Some((7.0, 7.0)));
    }

    proptest! {
        #[test]
        fn percentiles_are_ordered_and_within_the_values(mut v in prop::collection::vec(0.0f64..1e6, 1..300)) {
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let s = Summary::of(&mut v).unwrap_or_default();
            prop_assert!(lo <= s.p50 && s.p50 <= s.p90 && s.p90 <= s.p95 && s.p95 <= s.p99);
            prop_assert!(s.p99 <= s.p999 && s.p999 <= s.max && s.mean <= s.max && s.mean >= lo);
        }
    }
}
