//! A service-level objective from the command line (`--slo ttft=200ms,itl=50ms,e2e=5s`): a
//! request meets it when it succeeded and each figure given is at or under its bound. Goodput
//! is the rate of requests that meet it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::measure::Sample;

/// Bounds in milliseconds; a bound not given is not checked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Slo {
    pub ttft_ms: Option<f64>,
    pub itl_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
    pub e2e_ms: Option<f64>,
}

impl Slo {
    pub fn parse(text: &str) -> Result<Slo, String> {
        let mut slo = Slo::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, bound) = part
                .split_once('=')
                .ok_or_else(|| format!("--slo '{part}': write it like ttft=200ms,itl=50ms,e2e=5s"))?;
            let bound = parse_duration(bound).map_err(|e| format!("--slo {name}: {e}"))?.as_secs_f64() * 1000.0;
            let slot = match name.trim() {
                "ttft" => &mut slo.ttft_ms,
                "itl" => &mut slo.itl_ms,
                "tpot" => &mut slo.tpot_ms,
                "e2e" => &mut slo.e2e_ms,
                other => return Err(format!("--slo '{other}': the figures are ttft, itl, tpot and e2e")),
            };
            *slot = Some(bound);
        }
        if slo == Slo::default() {
            return Err("--slo: give at least one bound, like ttft=200ms".into());
        }
        Ok(slo)
    }

    /// Whether `sample` succeeded within every bound. A non-streamed answer's first token comes
    /// with its body, so its TTFT is its end-to-end latency; an answer of one token has no ITL.
    pub fn met(&self, sample: &Sample) -> bool {
        let within = |bound: Option<f64>, value: Option<f64>| match (bound, value) {
            (Some(bound), Some(value)) => value <= bound,
            _ => true,
        };
        sample.ok()
            && within(self.ttft_ms, sample.ttft_ms.or(Some(sample.e2e_ms)))
            && within(self.itl_ms, sample.itl_ms)
            && within(self.tpot_ms, sample.tpot_ms)
            && within(self.e2e_ms, Some(sample.e2e_ms))
    }

    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (name, bound) in
            [("ttft", self.ttft_ms), ("itl", self.itl_ms), ("tpot", self.tpot_ms), ("e2e", self.e2e_ms)]
        {
            if let Some(b) = bound {
                parts.push(format!("{name}<={b}ms"));
            }
        }
        parts.join(",")
    }
}

/// `30s`, `500ms`, `2m`, `1.5s`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("'{text}': write it like 30s, 500ms or 2m");
    let text = text.trim();
    let (number, unit) = text.find(|c: char| !c.is_ascii_digit() && c != '.').map_or((text, "s"), |i| text.split_at(i));
    let value: f64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "us" | "µs" => value / 1e6,
        "ms" => value / 1000.0,
        "s" | "" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_parse_in_any_unit() {
        let slo = Slo::parse("ttft=200ms,itl=50ms, e2e=5s").unwrap_or_default();
        assert_eq!((slo.ttft_ms, slo.itl_ms, slo.tpot_ms, slo.e2e_ms), (Some(200.0), Some(50.0), None, Some(5000.0)));
        assert_eq!(slo.describe(), "ttft<=200ms,itl<=50ms,e2e<=5000ms");
        for bad in ["", "ttft", "ttft=fast", "speed=1s", "ttft=-1s"] {
            assert!(Slo::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("3 weeks").is_err());
    }

    #[test]
    fn a_request_meets_it_only_when_it_succeeded_within_every_bound() {
        let slo = Slo::parse("ttft=100ms,itl=10ms").unwrap_or_default();
        let good = Sample { status: 200, e2e_ms: 400.0, ttft_ms: Some(90.0), itl_ms: Some(9.0), ..Sample::default() };
        assert!(slo.met(&good));
        assert!(!slo.met(&Sample { itl_ms: Some(11.0), ..good.clone() }));
        assert!(!slo.met(&Sample { ttft_ms: Some(101.0), ..good.clone() }));
        assert!(!slo.met(&Sample { status: 429, ..good.clone() }));
        // Not streamed: the whole answer is the first token.
        assert!(!slo.met(&Sample { ttft_ms: None, itl_ms: None, ..good.clone() }));
        assert!(slo.met(&Sample { ttft_ms: None, itl_ms: None, e2e_ms: 80.0, ..good }));
    }
}
