//! `tollgate bench compare A.json B.json`: two runs' figures side by side with the change from
//! A to B, so a change can be judged in one command.

use std::path::Path;

use super::Report;

pub fn load(path: &Path) -> Result<Report, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: not a `tollgate bench --json` report: {e}", path.display()))
}

/// The table: rates and counts, then p50 / p90 / p99 / mean of every figure both runs have.
pub fn table(a: &Report, b: &Report) -> String {
    let mut out = format!("{:<24} {:>12} {:>12} {:>12} {:>9}\n", "", "A", "B", "B - A", "change");
    let mut row = |name: String, x: f64, y: f64| {
        let change = if x == 0.0 { "-".to_owned() } else { format!("{:+.1}%", (y - x) / x * 100.0) };
        out.push_str(&format!("{name:<24} {x:>12.3} {y:>12.3} {:>+12.3} {change:>9}\n", y - x));
    };
    row("requests/s".into(), a.throughput_per_second, b.throughput_per_second);
    row("goodput/s".into(), a.goodput_per_second, b.goodput_per_second);
    row("output tokens/s".into(), a.output_tokens_per_second, b.output_tokens_per_second);
    row("requests measured".into(), a.requests_measured as f64, b.requests_measured as f64);
    let failed = |r: &Report| r.requests_measured.saturating_sub(r.status_2xx) as f64;
    row("failed".into(), failed(a), failed(b));
    if let (Some(x), Some(y)) = (a.slo_attainment_percent, b.slo_attainment_percent) {
        row("SLO met %".into(), x, y);
    }
    for ((name, x), (_, y)) in a.rows().into_iter().zip(b.rows()) {
        let (Some(x), Some(y)) = (x, y) else { continue };
        for p in ["p50", "p90", "p99", "mean"] {
            row(format!("{name} {p}"), x.get(p).unwrap_or(0.0), y.get(p).unwrap_or(0.0));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_and_changes() {
        let a = Report { throughput_per_second: 100.0, ..Report::default() };
        let mut b = Report { throughput_per_second: 120.0, ..Report::default() };
        b.latency_ms.p50 = 2.0;
        let table = table(&a, &b);
        let line = table.lines().find(|l| l.starts_with("requests/s")).unwrap_or_default();
        assert!(
            line.contains("100.000") && line.contains("120.000") && line.contains("+20.000") && line.contains("+20.0%"),
            "{line}"
        );
        let p50 = table.lines().find(|l| l.starts_with("latency ms p50")).unwrap_or_default();
        assert!(p50.trim_end().ends_with('-'), "{p50}");
        assert!(!table.contains("ttft"), "a figure neither run has is left out");
        // A report of an earlier version (no count, no p95) still reads.
        let old = r#"{"target":"t","latency_ms":{"p50":1.0,"p90":2.0,"p99":3.0,"p999":4.0,"max":5.0,"mean":1.5},"throughput_per_second":9.0}"#;
        let old: Report = serde_json::from_str(old).unwrap_or_default();
        assert_eq!((old.latency_ms.p99, old.throughput_per_second), (3.0, 9.0));
    }
}
