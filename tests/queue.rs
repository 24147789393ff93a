//! Waiting instead of 429 (`max_wait_ms`, `x-ms-max-wait-ms`): requests that will fit the
//! buckets within their wait are held and admitted in a fair order; the queue is bounded; a
//! client that leaves takes nothing; shutdown sends the waiting away with 503.
//!
//! These run on the real clock: the deployment allows 60,000 tokens a minute (1,000 a second),
//! one request drains the bucket, and each later request reserves ~500 tokens (~0.5 s of refill).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;

const TOKENS_PER_MINUTE: u64 = 60_000;
/// A request reserving ~500 tokens, and a mock told to answer all of its `max_tokens` (so the
/// reservation is spent, not refunded).
const SMALL: &str = r#"{"messages":[{"role":"user","content":"Hi"}],"max_tokens":490}"#;

fn setup(extra: &str) -> Setup {
    Setup {
        deployment: format!("tokens_per_minute = {TOKENS_PER_MINUTE}\nrequests_per_minute = 100000\n{extra}"),
        ..Default::default()
    }
}

/// Spends the whole tokens bucket with one request (the mock answers 59,900 tokens).
async fn drain(h: &Harness) {
    let body = r#"{"messages":[{"role":"user","content":"Hi"}],"max_tokens":59900}"#;
    let reply = h
        .client
        .post(
            &h.deployment_url("/chat/completions"),
            &[("api-key", PRIMARY_KEY), ("x-mock-completion-tokens", "59900")],
            body,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

async fn small(h: &Harness, key: &str, extra: &[(&str, &str)]) -> Reply {
    let mut headers = vec![("api-key", key), ("x-mock-completion-tokens", "490")];
    headers.extend_from_slice(extra);
    h.client.post(&h.deployment_url("/chat/completions"), &headers, SMALL).await
}

async fn queued_requests(h: &Harness) -> f64 {
    let samples = parse_metrics(&h.admin_text("/metrics").await);
    metric(&samples, "tollgate_queue_depth", &[("deployment", DEPLOYMENT), ("unit", "requests")])
}

/// Polls until `n` requests wait in the queue.
async fn until_queued(h: &Harness, n: f64) {
    for _ in 0..2000 {
        if queued_requests(h).await >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("{n} requests never queued: {}", queued_requests(h).await);
}

#[tokio::test]
async fn a_request_that_will_fit_waits_instead_of_429_and_one_that_cannot_is_told_at_once() {
    let h = Harness::with(setup("max_wait_ms = 5000")).await;
    drain(&h).await;
    let reply = small(&h, PRIMARY_KEY, &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert!(reply.number("x-ms-queued-ms") < 5000, "held, then admitted");

    // Its own limit of 0 ms: today's 429, not held (the bucket is empty again).
    let now = small(&h, PRIMARY_KEY, &[("x-ms-max-wait-ms", "0")]).await;
    assert_eq!(now.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(now.error_code(), "TooManyRequests");
    assert!(now.headers.get("x-ms-queued-ms").is_none());
    assert!(now.number("retry-after-ms") > 1);
    // 1 ms is less than the refill it needs: the exact 429 at once, nothing waited.
    let short = small(&h, PRIMARY_KEY, &[("x-ms-max-wait-ms", "1")]).await;
    assert_eq!(short.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(short.headers.get("x-ms-queued-ms").is_none());
    let bad = small(&h, PRIMARY_KEY, &[("x-ms-max-wait-ms", "soon")]).await;
    assert_eq!((bad.status, bad.error_code().as_str()), (StatusCode::BAD_REQUEST, "InvalidHeader"));
    assert!(bad.text().contains("x-ms-max-wait-ms"));

    let samples = parse_metrics(&h.admin_text("/metrics").await);
    // Waits are a histogram: gateway-wide unless the deployment has full metrics detail.
    let admitted = [("outcome", "admitted")];
    assert_eq!(metric(&samples, "tollgate_queue_wait_seconds_count", &admitted), 1.0);
}

/// One key bursts ten requests, the other sends two after: alternating turns admit the light
/// key's two among the next few, where first come, first served would put them after all ten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bursting_key_does_not_hold_a_light_one_behind_it_and_nothing_is_over_admitted() {
    let ledger = tempfile::tempdir().unwrap();
    let path = ledger.path().join("usage.jsonl");
    let h = Arc::new(Harness::with(Setup { ledger: Some(path.clone()), ..setup("max_wait_ms = 10000") }).await);
    let began = Instant::now();
    drain(&h).await;
    let order = burst_then_light(&h, &[PRIMARY_KEY], 10, SECONDARY_KEY).await;
    let second_light = order.iter().rposition(|n| *n == "light").unwrap();
    assert!(second_light <= 5, "the light key's second request came {second_light}th: {order:?}");

    // Nothing over-admitted: what the admitted requests used never passes a minute's tokens
    // plus the refill since the start.
    let lines = wait_for_lines(&path, 13).await;
    let used: u64 = lines.iter().filter(|l| l["status"] == 200).map(|l| l["total_tokens"].as_u64().unwrap()).sum();
    let bound = TOKENS_PER_MINUTE + (began.elapsed().as_secs_f64() * TOKENS_PER_MINUTE as f64 / 60.0) as u64;
    assert!(used <= bound, "{used} tokens used, at most {bound} allowed");
    assert_eq!(lines.iter().filter(|l| l["queued_ms"].is_number()).count(), 12, "the ledger records each wait");
}

/// The issue's form: one key offers ten requests for each of the other's, against a quota that
/// serves far fewer. The light key asks for less than its fair half, so each of its requests is
/// admitted within one refill interval (one request's worth) of arriving: at most the request
/// whose turn it already is and one heavy turn go first, however many heavy requests wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_sending_ten_times_the_others_rate_gets_no_more_than_its_fair_share_first() {
    let h = Arc::new(Harness::with(setup("max_wait_ms = 60000")).await);
    drain(&h).await;
    let admitted = Arc::new(std::sync::Mutex::new(Vec::<&'static str>::new()));
    let spawn = |key: &'static str, name: &'static str| {
        let (h, admitted) = (Arc::clone(&h), Arc::clone(&admitted));
        tokio::spawn(async move {
            let reply = small(&h, key, &[]).await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
            admitted.lock().unwrap().push(name);
        })
    };
    let mut heavy = Vec::new();
    for round in 0..3 {
        // Ten more heavy requests, and then one light one, queued behind them.
        let before = queued_requests(&h).await;
        heavy.extend((0..10).map(|_| spawn(PRIMARY_KEY, "heavy")));
        until_queued(&h, before + 10.0 - 1.0).await;
        let seen = admitted.lock().unwrap().len();
        spawn(SECONDARY_KEY, "light").await.unwrap();
        let order = admitted.lock().unwrap().clone();
        let heavy_first = order[seen..].iter().filter(|n| **n == "heavy").count();
        assert!(heavy_first <= 2, "round {round}: {heavy_first} heavy requests went before the light one: {order:?}");
    }
    assert!(queued_requests(&h).await >= 20.0, "the heavy key stayed backlogged throughout");
    for task in heavy {
        task.abort();
    }
}

/// Sends `heavy` small requests on `heavy_keys` (in turn) and, once all but one queue, two on
/// `light_key`; every answer must be a 200. The order the answers came in: `heavy` or `light`.
async fn burst_then_light(
    h: &Arc<Harness>,
    heavy_keys: &[&'static str],
    heavy: usize,
    light_key: &'static str,
) -> Vec<&'static str> {
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let spawn = |key: &'static str, name: &'static str| {
        let (h, order) = (Arc::clone(h), Arc::clone(&order));
        tokio::spawn(async move {
            let reply = small(&h, key, &[]).await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
            order.lock().unwrap().push(name);
        })
    };
    let heavy: Vec<_> = (0..heavy).map(|i| spawn(heavy_keys[i % heavy_keys.len()], "heavy")).collect();
    until_queued(h, (heavy.len() - 1) as f64).await;
    let light: Vec<_> = (0..2).map(|_| spawn(light_key, "light")).collect();
    for task in heavy.into_iter().chain(light) {
        task.await.unwrap();
    }
    order.lock().unwrap().clone()
}

async fn wait_for_lines(path: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    for _ in 0..500 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        if lines.len() >= n {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the ledger did not get {n} lines");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_is_bounded_and_a_client_that_leaves_takes_nothing() {
    let h = Arc::new(Harness::with(setup("max_wait_ms = 10000\nmax_queued_requests = 2")).await);
    drain(&h).await;
    // A client that goes away while queued.
    let leaver = {
        let h = Arc::clone(&h);
        tokio::spawn(async move { small(&h, PRIMARY_KEY, &[]).await })
    };
    until_queued(&h, 1.0).await;
    let waiter = {
        let h = Arc::clone(&h);
        tokio::spawn(async move { small(&h, SECONDARY_KEY, &[]).await })
    };
    until_queued(&h, 2.0).await;
    let full = small(&h, PRIMARY_KEY, &[]).await;
    assert_eq!((full.status, full.error_code().as_str()), (StatusCode::TOO_MANY_REQUESTS, "TooManyRequests"));
    assert!(full.text().contains("max_queued_requests = 2"), "{}", full.text());
    assert!(full.number("retry-after-ms") > 0);
    leaver.abort();
    let _ = leaver.await;
    let reply = waiter.await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    // The one that left was never admitted: nothing recorded for it, nothing taken.
    for _ in 0..500 {
        let samples = parse_metrics(&h.admin_text("/metrics").await);
        if metric(&samples, "tollgate_queue_wait_seconds_count", &[("outcome", "left")]) == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let samples = parse_metrics(&h.admin_text("/metrics").await);
    assert_eq!(metric(&samples, "tollgate_queue_wait_seconds_count", &[("outcome", "left")]), 1.0);
    assert_eq!(queued_requests(&h).await, 0.0);
    let usage = h.usage_after(2).await;
    assert_eq!(usage["requests"], 3, "drain, the waiter and the 429; not the one that left: {usage}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_the_waiting_away_with_503_and_retry_after() {
    let h = Harness::with(setup("max_wait_ms = 60000")).await;
    drain(&h).await;
    let url = h.deployment_url("/chat/completions");
    let client = h.client.clone();
    // Reserving 30,000 tokens: half a minute of refill.
    let body = r#"{"messages":[{"role":"user","content":"Hi"}],"max_tokens":30000}"#;
    let waiting = tokio::spawn(async move { client.post(&url, &[("api-key", PRIMARY_KEY)], body).await });
    until_queued(&h, 1.0).await;
    let Harness { gateway, mock, .. } = h;
    let shutdown = tokio::spawn(gateway.shutdown());
    let reply = waiting.await.unwrap();
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{}", reply.text());
    assert_eq!(reply.error_code(), "ServiceUnavailable");
    assert!(reply.text().contains("shutting down"));
    assert_eq!(reply.number("retry-after"), 1);
    assert!(reply.headers.contains_key("x-ms-queued-ms"), "a refusal after waiting says how long too");
    // The drain ends without waiting for the half minute the request would have needed.
    shutdown.await.unwrap();
    drop(mock);
}

#[tokio::test]
async fn a_pre_flight_says_whether_and_when_without_taking_anything_and_is_itself_limited() {
    let h = Harness::with(setup("max_wait_ms = 5000")).await;
    drain(&h).await;
    let served = h.mock.served("/chat/completions");
    let before = h.remaining_tokens().await;
    let url = h.deployment_url("/chat/completions?dry-run=true");
    let reply = h.client.post(&url, &[("api-key", PRIMARY_KEY)], SMALL).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let json = reply.json();
    assert_eq!(json["dryRun"], true);
    assert_eq!(
        (json["admittedNow"].as_bool(), json["fits"].as_bool(), json["wouldWait"].as_bool()),
        (Some(false), Some(true), Some(true)),
        "{json}"
    );
    assert_eq!(json["completionTokens"], 490);
    assert_eq!(json["reservedTokens"].as_u64().unwrap(), 490 + json["estimatedPromptTokens"].as_u64().unwrap());
    let retry = json["retryAfterMs"].as_u64().unwrap();
    assert!(retry > 0 && retry <= 1000, "{json}");
    assert_eq!(json["refusal"], serde_json::Value::Null);
    // Nothing taken, nothing sent.
    assert!(h.remaining_tokens().await >= before);
    assert_eq!(h.mock.served("/chat/completions"), served);
    // Its own wait of 0: it would not wait.
    let zero = h.client.post(&url, &[("api-key", PRIMARY_KEY), ("x-ms-max-wait-ms", "0")], SMALL).await.json();
    assert_eq!((zero["wouldWait"].as_bool(), zero["maxWaitMs"].as_u64()), (Some(false), Some(0)));
    // Never fits: more than the whole minute.
    let huge = r#"{"messages":[{"role":"user","content":"Hi"}],"max_tokens":70000}"#;
    let never = h.client.post(&url, &[("api-key", PRIMARY_KEY)], huge).await.json();
    assert_eq!(
        (never["fits"].as_bool(), never["refusal"]["code"].as_str()),
        (Some(false), Some("TokenLimitExceeded")),
        "{never}"
    );
    assert_eq!(never["retryAfterMs"], serde_json::Value::Null);
    // A wrong key is still a 401.
    assert_eq!(h.client.post(&url, &[("api-key", "wrong")], SMALL).await.status, StatusCode::UNAUTHORIZED);

    // The other deployment has room: admitted now. Pre-flights are limited per deployment.
    let other = h.url("/openai/deployments/other/chat/completions?dry-run=1");
    let now = h.client.post(&other, &[("api-key", OTHER_KEY)], SMALL).await.json();
    assert_eq!((now["admittedNow"].as_bool(), now["retryAfterMs"].as_u64()), (Some(true), Some(0)), "{now}");
    let mut limited = None;
    for _ in 0..700 {
        let reply = h.client.post(&other, &[("api-key", OTHER_KEY)], SMALL).await;
        if reply.status != StatusCode::OK {
            limited = Some(reply);
            break;
        }
    }
    let limited = limited.expect("pre-flights are limited");
    assert_eq!((limited.status, limited.error_code().as_str()), (StatusCode::TOO_MANY_REQUESTS, "TooManyRequests"));
    assert!(limited.text().contains("pre-flights"), "{}", limited.text());
    assert!(limited.number("retry-after-ms") > 0);
    let usage = h.admin("/usage").await;
    assert_eq!(usage["other"]["total_tokens"].as_u64(), Some(0), "pre-flights bill nothing: {usage}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_the_queue_ahead_would_keep_past_its_wait_is_told_at_once() {
    let h = Arc::new(Harness::with(setup("max_wait_ms = 10000")).await);
    drain(&h).await;
    // Ahead: a request reserving ~2,000 tokens (two seconds of refill) waits its turn.
    let ahead = {
        let h = Arc::clone(&h);
        tokio::spawn(async move {
            let body = r#"{"messages":[{"role":"user","content":"Hi"}],"max_tokens":2000}"#;
            let headers = [("api-key", PRIMARY_KEY), ("x-mock-completion-tokens", "2000")];
            h.client.post(&h.deployment_url("/chat/completions"), &headers, body).await
        })
    };
    until_queued(&h, 1.0).await;
    let told = small(&h, SECONDARY_KEY, &[("x-ms-max-wait-ms", "300")]).await;
    assert_eq!((told.status, told.error_code().as_str()), (StatusCode::TOO_MANY_REQUESTS, "TooManyRequests"));
    assert!(told.text().contains("already waiting"), "{}", told.text());
    assert!(told.number("retry-after-ms") >= 300);
    assert!(told.headers.get("x-ms-queued-ms").is_none());
    assert_eq!(ahead.await.unwrap().status, StatusCode::OK);
}

/// Consumers are the callers that take turns: a consumer bursting over both its keys is one
/// caller, so a light consumer still alternates with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_take_turns_as_one_caller_each_whatever_keys_they_use() {
    const HEAVY: [&str; 2] = ["HeavyConsumerKey0123456789abcdef", "HeavyConsumerKey2nd456789abcdefg"];
    const LIGHT: &str = "LightConsumerKey0123456789abcdef";
    let tables = format!(
        "[[consumers]]\nname = \"heavy\"\nkeys = [\"{}\", \"{}\"]\n[[consumers.grants]]\ndeployment = \"{DEPLOYMENT}\"\n\
         [[consumers]]\nname = \"light\"\nkeys = [\"{}\"]\n[[consumers.grants]]\ndeployment = \"{DEPLOYMENT}\"\n",
        stored(HEAVY[0]),
        stored(HEAVY[1]),
        stored(LIGHT)
    );
    let h = Arc::new(Harness::with(Setup { tables, ..setup("max_wait_ms = 10000") }).await);
    drain(&h).await;
    let order = burst_then_light(&h, &HEAVY, 8, LIGHT).await;
    let second_light = order.iter().rposition(|n| *n == "light").unwrap();
    // Alternating with one heavy caller: by position 5 at the latest. Were its two keys two
    // callers, the light one would get a third of the turns and come later.
    assert!(second_light <= 5, "the light consumer's second request came {second_light}th: {order:?}");
}

/// A consumer's pre-flight reads its own levels too: its buckets on the deployment and its
/// period quotas.
#[tokio::test]
async fn a_consumers_pre_flight_reads_its_own_limits() {
    const APP: &str = "AppConsumerKey0123456789abcdefgh";
    let tables = format!(
        "[[consumers]]\nname = \"app\"\nkeys = [\"{}\"]\nrequests_per_day = 1\n[[consumers.grants]]\ndeployment = \"{DEPLOYMENT}\"\ntokens_per_minute = 1000\n",
        stored(APP)
    );
    let h = Harness::with(Setup { tables, ..setup("max_wait_ms = 5000") }).await;
    let url = h.deployment_url("/chat/completions?dry-run=true");
    let large = r#"{"messages":[{"role":"user","content":"Hi"}],"max_tokens":2000}"#;
    let json = h.client.post(&url, &[("api-key", APP)], large).await.json();
    assert_eq!(
        (json["fits"].as_bool(), json["refusal"]["code"].as_str()),
        (Some(false), Some("TokenLimitExceeded")),
        "{json}"
    );
    assert!(json["refusal"]["message"].as_str().unwrap().contains("consumer 'default/app'"), "{json}");
    assert_eq!((json["admittedNow"].as_bool(), json["consumerLimitsChecked"].as_bool()), (Some(false), Some(true)));
    let first = h.client.post(&url, &[("api-key", APP)], SMALL).await.json();
    assert_eq!((first["admittedNow"].as_bool(), first["refusal"].is_null()), (Some(true), true), "{first}");
    // Its one request of the day, for real; then the pre-flight says the day is used up.
    let real = h.client.post(&h.deployment_url("/chat/completions"), &[("api-key", APP)], SMALL).await;
    assert_eq!(real.status, StatusCode::OK, "{}", real.text());
    let json = h.client.post(&url, &[("api-key", APP)], SMALL).await.json();
    assert_eq!(
        (json["admittedNow"].as_bool(), json["refusal"]["code"].as_str()),
        (Some(false), Some("QuotaExceeded")),
        "{json}"
    );
}
