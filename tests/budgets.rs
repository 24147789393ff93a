//! Budgets end to end: thresholds reached send one signed webhook each (to a real receiver in
//! the test, and again once a receiver that was down comes back), a hard budget refuses with 403
//! `BudgetExceeded` within the stated overshoot under 64 concurrent clients and admits again in
//! the next month, and spend survives a restart through the ledger.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use common::webhooks::{receive, wait_for};
use common::*;
use hmac::{Hmac, Mac};
use http::StatusCode;
use serde_json::Value;
use tollgate::core::clock::ManualClock;

const SECRET: &str = "webhook-signing-key-for-tests";
/// 2026-12-03T12:00:00Z.
const DEC_3_NOON: u64 = 1_796_299_200;
/// 1 micro-unit per input token, 2 per output token.
const PRICES: &str = "prices = { input = \"1\", output = \"2\" }";

fn billing(port: u16, budget: &str) -> String {
    format!(
        "[billing]\nwebhook_url = \"http://127.0.0.1:{port}/hooks\"\nwebhook_secret_env = \"HOOK_SECRET\"\nwebhook_retry_ms = 50\n[[billing.budgets]]\n{budget}\n"
    )
}

fn setup(tables: String, clock: Arc<ManualClock>, ledger: Option<std::path::PathBuf>) -> Setup {
    Setup {
        deployment: format!("{PRICES}\nrequests_per_minute = 100000\ntokens_per_minute = 100000000"),
        tables,
        env: vec![("HOOK_SECRET", SECRET)],
        clock: Some(clock),
        ledger,
        ..Default::default()
    }
}

fn clock_at(unix: u64) -> Arc<ManualClock> {
    let clock = Arc::new(ManualClock::new(0));
    clock.set_unix_seconds(unix);
    clock
}

fn verify(headers: &http::HeaderMap, body: &[u8]) -> Value {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(headers["x-tollgate-signature"], expected.as_str(), "signed with the secret");
    let document: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(headers["x-tollgate-delivery"], document["id"].as_str().unwrap());
    document
}

#[tokio::test]
async fn each_threshold_sends_one_signed_webhook_and_a_receiver_that_was_down_gets_it_when_back() {
    // The receiver is down at first: its port is taken from a listener dropped at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let budget = "name = \"default-monthly\"\nproject = \"default\"\nmonthly = \"0.0005\"";
    let h = Harness::with(setup(billing(port, budget), clock_at(DEC_3_NOON), None)).await;
    let url = h.deployment_url("/chat/completions");
    let mut served = 0;
    // Each request costs a few dozen micro-units: 500 are spent within a few dozen requests.
    while metric(&parse_metrics(&h.admin_text("/metrics").await), "tollgate_budget_threshold_crossings_total", &[])
        < 3.0
    {
        let reply = h.client.post(&url, &[("api-key", PRIMARY_KEY)], CHAT).await;
        assert_eq!(reply.status, StatusCode::OK, "a soft budget never refuses, and nobody waits on the webhook");
        served += 1;
        assert!(served < 1000, "the budget was never spent");
    }
    for _ in 0..5 {
        assert_eq!(h.client.post(&url, &[("api-key", PRIMARY_KEY)], CHAT).await.status, StatusCode::OK);
    }
    let samples = parse_metrics(&h.admin_text("/metrics").await);
    assert_eq!(metric(&samples, "tollgate_budget_threshold_crossings_total", &[]), 3.0, "once each");
    for threshold in ["50", "80", "100"] {
        let labels = [("budget", "default-monthly"), ("period", "monthly"), ("threshold", threshold)];
        assert_eq!(metric(&samples, "tollgate_budget_threshold_crossings_total", &labels), 1.0);
    }
    assert!(metric(&samples, "tollgate_budget_spent_ratio", &[("budget", "default-monthly")]) >= 1.0);

    // Now the receiver comes up: the retries reach it.
    let received = receive(tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap());
    let got = wait_for(&received, 3).await;
    let mut thresholds: Vec<u64> = got
        .iter()
        .map(|(headers, body)| {
            let document = verify(headers, body);
            assert_eq!(document["type"], "budget.threshold_reached");
            assert_eq!(document["budget"], "default-monthly");
            assert_eq!(document["scope"], "project:default");
            assert_eq!(document["period"], "monthly");
            assert_eq!(document["periodStart"], "2026-12-01T00:00:00Z");
            assert_eq!(document["resetsAt"], "2027-01-01T00:00:00Z");
            assert_eq!(document["amountMicros"], 500);
            assert_eq!(document["currency"], "USD");
            document["thresholdPercent"].as_u64().unwrap()
        })
        .collect();
    thresholds.sort();
    assert_eq!(thresholds, [50, 80, 100]);
    let samples = parse_metrics(&h.admin_text("/metrics").await);
    assert!(metric(&samples, "tollgate_budget_webhooks_total", &[("result", "retried")]) >= 1.0);
    assert_eq!(metric(&samples, "tollgate_budget_webhooks_total", &[("result", "delivered")]), 3.0);
}

/// The costs of the ledger's lines (micro-units).
fn costs(path: &std::path::Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|l| l["cost_micros"]["total"].as_u64().unwrap_or(0))
        .collect()
}

#[tokio::test]
async fn a_hard_budget_stops_64_clients_within_the_requests_in_flight_and_admits_again_next_month() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("usage.jsonl");
    let receiver = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = receiver.local_addr().unwrap().port();
    let _received = receive(receiver);
    let budget = "name = \"team-cap\"\nproject = \"default\"\nmonthly = \"0.002\"\nhard = true";
    let clock = clock_at(DEC_3_NOON);
    let h = Harness::with(setup(billing(port, budget), Arc::clone(&clock), Some(ledger.clone()))).await;
    let url = h.deployment_url("/chat/completions");
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (client, url) = (h.client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut served = 0u32;
            loop {
                let reply = client.post(&url, &[("api-key", PRIMARY_KEY)], CHAT).await;
                match reply.status {
                    StatusCode::OK => served += 1,
                    StatusCode::FORBIDDEN => return (served, reply),
                    other => panic!("{other}: {}", reply.text()),
                }
                assert!(served < 1000, "never refused");
            }
        }));
    }
    let (mut refusal, mut served) = (None, 0u64);
    for task in tasks {
        let (n, reply) = task.await.unwrap();
        served += u64::from(n);
        refusal = Some(reply);
    }
    // Every record is in (a record lands a moment after its client read the answer).
    h.usage_after(served + 64).await;
    let refusal = refusal.unwrap();
    assert_eq!(refusal.error_code(), "BudgetExceeded");
    let message = refusal.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("budget 'team-cap' (project:default)")
            && message.contains("of its monthly 0.002000 USD")
            && message.contains("2027-01-01T00:00:00Z"),
        "{message}"
    );
    assert_eq!(refusal.number("retry-after"), 1_798_761_600 - DEC_3_NOON, "seconds to the 1st of January");

    // Overshoot: at most the requests in flight when it was crossed (64 clients: 63 others).
    let budgets = h.admin("/budgets").await;
    let month = &budgets["team-cap"]["periods"][0];
    assert_eq!((month["period"].as_str(), month["amountMicros"].as_u64()), (Some("monthly"), Some(2_000)), "{budgets}");
    assert_eq!(month["remainingMicros"], 0);
    assert_eq!(month["resetsAt"], "2027-01-01T00:00:00Z");
    let shown = month["spentMicros"].as_u64().unwrap();
    let Harness { gateway, .. } = h;
    gateway.shutdown().await;
    let lines = costs(&ledger);
    let spent: u64 = lines.iter().sum();
    let most = *lines.iter().max().unwrap();
    assert!(spent >= 2_000, "spent {spent}");
    assert_eq!(shown, spent, "/budgets shows what the ledger says was spent");
    assert!(spent < 2_000 + 64 * most, "spent {spent}: more than the budget and 64 requests of at most {most}");

    // A restart in the month keeps the spend (from the ledger): still refused.
    let h = Harness::with(setup(billing(port, budget), Arc::clone(&clock), Some(ledger.clone()))).await;
    let reply = h.client.post(&h.deployment_url("/chat/completions"), &[("api-key", PRIMARY_KEY)], CHAT).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
    // January: the month's spend starts again.
    clock.set_unix_seconds(1_798_761_600 + 60);
    let reply = h.client.post(&h.deployment_url("/chat/completions"), &[("api-key", PRIMARY_KEY)], CHAT).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}
