//! `--csv FILE`: one row per request, every figure of its [`Sample`] (empty where it has none).

use std::path::Path;

use super::Sample;

pub fn write(path: &Path, samples: &[Sample]) -> Result<(), String> {
    let failed = |e: &dyn std::fmt::Display| format!("--csv {}: {e}", path.display());
    let mut out = ::csv::Writer::from_path(path).map_err(|e| failed(&e))?;
    for sample in samples {
        out.serialize(sample).map_err(|e| failed(&e))?;
    }
    out.flush().map_err(|e| failed(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_row_per_request_with_a_header() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        let path = dir.path().join("r.csv");
        let samples = vec![
            Sample { request: 0, status: 200, e2e_ms: 1.5, ttft_ms: Some(0.5), ..Sample::default() },
            Sample { request: 1, status: 429, error: Some("Too, \"many\"".into()), ..Sample::default() },
        ];
        write(&path, &samples).unwrap_or_else(|e| unreachable!("{e}"));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("step,request,scheduled,status,error,stream,e2e_ms,ttft_ms"), "{}", lines[0]);
        assert!(lines[1].starts_with("0,0,0.0,200,,false,1.5,0.5"), "{}", lines[1]);
        assert!(lines[2].contains("\"Too, \"\"many\"\"\""), "{}", lines[2]);
    }
}
