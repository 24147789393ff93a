//! The estimator against exact Llama 3 counts (`tests/estimator/reference.json`, made offline by
//! `tests/estimator/make_reference.mjs` with the `llama3-tokenizer-js` package).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout)]

use tollgate::core::api::ApiRoute;
use tollgate::core::estimate::{Tokenizer, estimate};

struct Case {
    name: String,
    reference: u64,
    body: String,
}

fn cases() -> Vec<Case> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/estimator/");
    let bodies: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}bodies.json")).unwrap()).unwrap();
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}reference.json")).unwrap()).unwrap();
    let bodies = bodies.as_array().unwrap();
    let reference = reference.as_array().unwrap();
    assert_eq!(bodies.len(), reference.len(), "regenerate reference.json after changing bodies.json");
    bodies
        .iter()
        .zip(reference)
        .map(|(b, r)| {
            assert_eq!(b["name"], r["name"]);
            Case {
                name: b["name"].as_str().unwrap().to_owned(),
                reference: r["llama3_prompt_tokens"].as_u64().unwrap(),
                body: b["body"].to_string(),
            }
        })
        .collect()
}

/// Ratios estimate / reference, printed as a table (`cargo test --test estimator_accuracy -- --nocapture`).
fn ratios(tokenizer: Tokenizer) -> Vec<(String, u64, u64, f64)> {
    let mut out = Vec::new();
    for case in cases() {
        let estimated = estimate(ApiRoute::ChatCompletions, case.body.as_bytes(), tokenizer).unwrap().prompt_tokens;
        let ratio = estimated as f64 / case.reference as f64;
        println!(
            "{:>6} {:<20} reference {:>6} estimate {:>6} ratio {:.3}",
            tokenizer.as_str(),
            case.name,
            case.reference,
            estimated,
            ratio
        );
        out.push((case.name, case.reference, estimated, ratio));
    }
    out
}

fn percentile(mut values: Vec<f64>, p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn bpe_estimates_stay_in_band() {
    let rows = ratios(Tokenizer::Bpe);
    let all: Vec<f64> = rows.iter().map(|r| r.3).collect();
    println!(
        "bpe: min {:.3} p50 {:.3} p90 {:.3} max {:.3}",
        percentile(all.clone(), 0.0),
        percentile(all.clone(), 0.5),
        percentile(all.clone(), 0.9),
        percentile(all.clone(), 1.0)
    );
    for (name, reference, estimated, ratio) in &rows {
        assert!((0.97..=1.75).contains(ratio), "{name}: estimate {estimated} vs Llama 3 {reference}");
    }
    // English, Latin-script languages, code, JSON and tools within 5%: Llama 3's vocabulary is
    // cl100k's there. Its 28k extra tokens serve other scripts, which cl100k over-counts (safe:
    // a larger reservation, refunded at reconciliation).
    for (name, reference, estimated, ratio) in rows.iter().filter(|r| !is_other_script(&r.0)) {
        assert!((0.97..=1.05).contains(ratio), "{name}: estimate {estimated} vs Llama 3 {reference}");
    }
}

#[test]
fn chars_heuristic_is_rougher_but_bounded() {
    let rows = ratios(Tokenizer::Chars);
    let all: Vec<f64> = rows.iter().map(|r| r.3).collect();
    println!(
        "chars: min {:.3} p50 {:.3} p90 {:.3} max {:.3}",
        percentile(all.clone(), 0.0),
        percentile(all.clone(), 0.5),
        percentile(all.clone(), 0.9),
        percentile(all.clone(), 1.0)
    );
    // What the README states (0.62 to 1.63, rounded to two places).
    for (name, reference, estimated, ratio) in &rows {
        assert!((0.615..=1.635).contains(ratio), "{name}: estimate {estimated} vs Llama 3 {reference}");
    }
}

fn is_other_script(name: &str) -> bool {
    ["russian", "chinese", "japanese", "korean", "arabic", "hindi"].iter().any(|l| name.starts_with(l))
}
