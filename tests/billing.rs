//! Pay-per-token billing end to end: what known traffic costs, to the micro-unit, in the ledger,
//! `tollgate usage`, the subscription's cost resource and the metric; requests refused before
//! the backend cost nothing; a price change bills each request at the price of its own time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::sync::Arc;

use common::admin::*;
use common::*;
use http::{Method, StatusCode};
use serde_json::{Value, json};
use tollgate::core::clock::ManualClock;

const PHI: &str = "azureml://registries/azureml/models/Phi-3-mini-4k-instruct";

fn tables(input: &str, output: &str) -> String {
    format!(
        // The output price is a TOML float (read by its shortest decimal form); the input one a string.
        "[[models]]\nid = \"{PHI}\"\nversion = \"7\"\noffer = \"phi-3\"\nbackend = \"{{mock}}\"\nprices = {{ input = \"{input}\", output = {output} }}\n{}",
        token_tables()
    )
}

/// What `tokens` cost at `per_million` micro-units per 1,000,000, rounded half up: written out
/// here, not taken from the code under test.
fn by_hand(tokens: u64, per_million: u64) -> u64 {
    (tokens * per_million + 500_000) / 1_000_000
}

fn lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn run_usage(ledger: &std::path::Path, by: &str) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["usage", "--ledger", ledger.to_str().unwrap(), "--by", by, "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn known_traffic_costs_the_hand_computed_total_everywhere_and_a_new_price_bills_from_its_moment() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("usage.jsonl");
    let clock = Arc::new(ManualClock::new(0));
    let h = Harness::with(Setup {
        tables: tables("0.13", "0.52"),
        ledger: Some(ledger.clone()),
        clock: Some(clock),
        ..Default::default()
    })
    .await;
    h.owner(Method::PUT, "/projects/team-a/subscriptions/phi", Some(json!({"modelId": PHI}))).await;
    let created = h
        .owner(
            Method::PUT,
            "/projects/team-a/deployments/phi-a",
            Some(json!({"modelId": PHI, "limits": {"requestsPerMinute": 12}})),
        )
        .await;
    let key = created.json()["keys"]["primaryKey"].as_str().unwrap().to_owned();
    let url = h.url("/openai/deployments/phi-a/chat/completions");
    let bodies = [
        r#"{"messages":[{"role":"user","content":"hello"}],"max_tokens":7}"#,
        r#"{"messages":[{"role":"user","content":"a longer question with more words in it"}],"max_tokens":33}"#,
        r#"{"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"why?"}],"max_tokens":100}"#,
    ];
    for i in 0..6 {
        let reply = h.client.post(&url, &[("api-key", &key)], bodies[i % 3]).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }

    // The price changes (a reload of the file): later requests are billed at it.
    let text = std::fs::read_to_string(&h.config_path).unwrap();
    std::fs::write(&h.config_path, text.replace("input = \"0.13\"", "input = \"0.20\"")).unwrap();
    h.owner(Method::POST, "/reload", None).await;
    for i in 0..6 {
        let reply = h.client.post(&url, &[("api-key", &key)], bodies[i % 3]).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    // The 13th in the frozen minute is refused before the backend: it costs nothing.
    let refused = h.client.post(&url, &[("api-key", &key)], bodies[0]).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);

    // The subscription's cost resource flushes the ledger; then every line is checked by hand.
    let costs = h.owner(Method::GET, "/projects/team-a/subscriptions/phi/costs", None).await.json();
    let all = lines(&ledger);
    assert_eq!(all.len(), 13);
    let (mut input, mut output) = (0u64, 0u64);
    for (i, line) in all.iter().enumerate() {
        assert_eq!(line["subscription"], "phi");
        assert_eq!(line["currency"], "USD");
        let price_in = if i < 6 { 130_000 } else { 200_000 };
        assert_eq!(line["price_micros_per_million"], json!({"input": price_in, "output": 520_000}), "line {i}");
        let (p, c) = (line["prompt_tokens"].as_u64().unwrap(), line["completion_tokens"].as_u64().unwrap());
        let expected = if i == 12 {
            assert_eq!(line["status"], 429);
            json!({"input": 0, "output": 0, "total": 0})
        } else {
            assert!(p > 0 && c > 0, "{line}");
            json!({"input": by_hand(p, price_in), "output": by_hand(c, 520_000), "total": by_hand(p, price_in) + by_hand(c, 520_000)})
        };
        assert_eq!(line["cost_micros"], expected, "line {i}: {line}");
        input += expected["input"].as_u64().unwrap();
        output += expected["output"].as_u64().unwrap();
    }
    let total = input + output;
    assert!(total > 0);

    // The admin cost resource, by meter (the default) and by day.
    assert_eq!(costs["currency"], "USD");
    assert_eq!(costs["total"]["costMicros"], json!({"input": input, "output": output, "total": total}), "{costs}");
    assert_eq!(costs["total"]["requests"], 13);
    let meter = |name: &str| costs["value"].as_array().unwrap().iter().find(|r| r["meter"] == name).unwrap().clone();
    assert_eq!(meter("input")["costMicros"]["total"], input);
    assert_eq!(meter("output")["costMicros"]["total"], output);
    let by_day = h.owner(Method::GET, "/projects/team-a/subscriptions/phi/costs?by=deployment", None).await.json();
    assert_eq!(by_day["value"][0]["deployment"], "phi-a");
    assert_eq!(by_day["value"][0]["costMicros"]["total"], total);
    let bad = h.api(Method::GET, "/projects/team-a/subscriptions/phi/costs?by=week", Some(token("reader")), None).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.text());
    let missing = h.api(Method::GET, "/projects/team-a/subscriptions/nope/costs", Some(token("reader")), None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    // `tollgate usage`, by subscription and by meter.
    let report = run_usage(&ledger, "subscription");
    assert_eq!(report["rows"][0]["subscription"], "team-a/phi");
    assert_eq!(report["rows"][0]["cost_micros"], json!({"input": input, "output": output, "total": total}));
    assert_eq!(report["total"]["cost"], format!("{}.{:06}", total / 1_000_000, total % 1_000_000));
    let report = run_usage(&ledger, "meter");
    assert_eq!(report["total"]["requests"], 13, "a request is in both meters and counted once");
    assert_eq!(report["total"]["cost_micros"]["total"], total);
    let table = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["usage", "--ledger", ledger.to_str().unwrap(), "--by", "project", "--cost"])
        .output()
        .unwrap();
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(
        table.contains("cost (USD)") && table.contains(&format!("{}.{:06}", total / 1_000_000, total % 1_000_000)),
        "{table}"
    );

    // The metric, per meter, in micro-units.
    let samples = parse_metrics(&h.client.call(Method::GET, &h.admin_url("/metrics"), &[], "").await.text());
    let metered = |meter: &str| {
        metric(
            &samples,
            "tollgate_cost_total",
            &[("project", "team-a"), ("subscription", "phi"), ("meter", meter), ("currency", "USD")],
        )
    };
    assert_eq!((metered("input"), metered("output")), (input as f64, output as f64));
}

#[tokio::test]
async fn bad_prices_are_refused_with_the_field_and_what_to_write() {
    for (prices, says) in [
        ("{ input = \"0.1234567\", output = \"1\" }", "more than six decimals"),
        ("{ input = \"-1\", output = \"1\" }", "not an amount"),
        ("{ input = \"1\" }", "output"),
        ("{ input = \"1\", output = \"1\", cached = \"1\" }", "cached"),
    ] {
        let text = format!(
            "[[deployments]]\nname = \"d\"\nmodel = \"m\"\nbackend = \"http://127.0.0.1:1\"\nkeys = [\"{}\"]\nprices = {prices}\n",
            stored(PRIMARY_KEY)
        );
        let error = tollgate::config::Config::parse(&text, "t.toml", &|_| None).unwrap_err().to_string();
        assert!(error.contains("t.toml:6") && error.contains(says), "{prices}: {error}");
    }
    for (budget, says) in [
        ("name = \"b\"\nproject = \"p\"\nconsumer = \"p/c\"\nmonthly = \"1\"", "exactly one of"),
        ("name = \"b\"\nproject = \"p\"", "monthly"),
        ("name = \"b\"\nproject = \"p\"\nmonthly = \"0\"", "zero"),
        ("name = \"b\"\nproject = \"p\"\nmonthly = \"1\"\nthresholds = [80, 50]", "ascending"),
        ("name = \"b\"\nsubscription = \"nosub\"\nmonthly = \"1\"", "project/subscription"),
        ("name = \"b b\"\nproject = \"p\"\nmonthly = \"1\"", "letters"),
    ] {
        let text = format!("[billing]\n[[billing.budgets]]\n{budget}\n");
        let error = tollgate::config::Config::parse(&text, "t.toml", &|_| None).unwrap_err().to_string();
        assert!(error.contains("billing.budgets[0]") && error.contains(says), "{budget}: {error}");
    }
    let text = "[billing]\nwebhook_url = \"https://hooks.example.com/x\"\nwebhook_secret_env = \"UNSET_SECRET\"\n";
    let error = tollgate::config::Config::parse(text, "t.toml", &|_| None).unwrap_err().to_string();
    assert!(error.contains("UNSET_SECRET") && error.contains("not set"), "{error}");
    let text = "[billing]\ncurrency = \"dollars\"\n";
    let error = tollgate::config::Config::parse(text, "t.toml", &|_| None).unwrap_err().to_string();
    assert!(error.contains("billing.currency") && error.contains("ISO 4217"), "{error}");
}

#[tokio::test]
async fn a_stream_the_client_cuts_costs_what_was_billed_and_a_refusal_costs_nothing() {
    use http_body_util::BodyExt;
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("usage.jsonl");
    let h = Harness::with(Setup {
        deployment: "prices = { input = \"0.30\", output = \"0.61\" }".into(),
        ledger: Some(ledger.clone()),
        ..Default::default()
    })
    .await;
    let headers = [("api-key", PRIMARY_KEY), ("x-mock-tokens-per-second", "200"), ("x-mock-completion-tokens", "1000")];
    let mut body = h.stream(&headers).await.into_body();
    for _ in 0..5 {
        body.frame().await.unwrap().unwrap();
    }
    drop(body);
    // A request without a valid body is refused before the backend.
    let refused = h.client.post(&h.deployment_url("/chat/completions"), &[("api-key", PRIMARY_KEY)], "{").await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    h.usage_after(2).await;
    h.admin(&format!("/projects/default/deployments/{DEPLOYMENT}/usage")).await; // flushes the ledger
    let all = lines(&ledger);
    let cut = all.iter().find(|l| l["outcome"] == "client_gone").expect("the cut stream's line");
    let (p, c) = (cut["prompt_tokens"].as_u64().unwrap(), cut["completion_tokens"].as_u64().unwrap());
    assert!(p > 0 && c > 0 && c < 1000, "billed the prompt and what was streamed: {cut}");
    let expected = json!({"input": by_hand(p, 300_000), "output": by_hand(c, 610_000), "total": by_hand(p, 300_000) + by_hand(c, 610_000)});
    assert_eq!(cut["cost_micros"], expected, "{cut}");
    let bad = all.iter().find(|l| l["status"] == 400).expect("the refusal's line");
    assert_eq!(bad["cost_micros"], json!({"input": 0, "output": 0, "total": 0}), "{bad}");
}
