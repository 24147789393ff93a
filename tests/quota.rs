//! Quotas end to end: bursts, token limits, exact retry times, reconciliation from `usage`,
//! streamed usage with and without a usage chunk, client disconnects, and concurrency.
//! Most tests freeze the buckets' clock (a manual clock) so numbers are exact, never timed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use common::*;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use tollgate::core::api::ApiRoute;
use tollgate::core::clock::ManualClock;
use tollgate::core::estimate::{Tokenizer, estimate};
use tollgate::process::mock_backend::MockOptions;

const KEY: (&str, &str) = ("api-key", PRIMARY_KEY);

fn frozen(deployment: &str) -> (Setup, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(0));
    (Setup { deployment: deployment.into(), clock: Some(clock.clone()), ..Default::default() }, clock)
}

fn chat_with(max_tokens: u64) -> String {
    format!(r#"{{"messages":[{{"role":"user","content":"Tell me about token buckets."}}],"max_tokens":{max_tokens}}}"#)
}

fn estimated_prompt(body: &str) -> u64 {
    estimate(ApiRoute::ChatCompletions, body.as_bytes(), Tokenizer::Bpe).unwrap().prompt_tokens
}

fn assert_429(reply: &Reply, limit: &str) {
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{}", reply.text());
    assert_eq!(reply.error_code(), "TooManyRequests");
    let message = reply.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("per minute") && message.contains(limit) && message.contains(DEPLOYMENT), "{message}");
    let ms = reply.number("retry-after-ms");
    assert!(ms > 0);
    assert_eq!(reply.number("retry-after"), ms.div_ceil(1000));
    assert!(message.contains(&format!("Retry after {ms} ms")), "{message}");
    for header in [
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
    ] {
        reply.number(header);
    }
    assert!(reply.header("ratelimit-policy").contains("\"requests\";q="));
    assert!(reply.header("ratelimit").contains("\"tokens\";r="));
}

#[tokio::test]
async fn a_burst_of_1100_admits_exactly_the_minute_on_a_frozen_clock() {
    // The clock does not move: no refill, so exactly the 1,000 of the first minute get in however
    // slowly the machine runs (a gateway without a quota would admit all 1,100).
    let (setup, _clock) = frozen("tokens_per_minute = 100000000");
    let h = Harness::with(setup).await;
    let mut tasks = Vec::new();
    for task in 0..32 {
        let (client, url) = (h.client.clone(), h.deployment_url("/chat/completions"));
        // 1,100 requests over 32 clients: 12 send 35, 20 send 34.
        let count = if task < 12 { 35 } else { 34 };
        tasks.push(tokio::spawn(async move {
            let mut replies = Vec::new();
            for _ in 0..count {
                replies.push(client.post(&url, &[KEY], CHAT).await);
            }
            replies
        }));
    }
    let mut replies = Vec::new();
    for task in tasks {
        replies.extend(task.await.unwrap());
    }
    assert_eq!(replies.len(), 1100);
    let ok = replies.iter().filter(|r| r.status == StatusCode::OK).count() as u64;
    assert_eq!(ok, 1000, "a fresh deployment bursts its whole minute, and not one more");
    for reply in replies.iter().filter(|r| r.status != StatusCode::OK) {
        assert_429(reply, "requests");
    }
}

#[tokio::test]
async fn exactly_the_minute_is_admitted_on_a_frozen_clock_with_exact_headers() {
    let (setup, _clock) = frozen("requests_per_minute = 10\ntokens_per_minute = 100000");
    let h = Harness::with(setup).await;
    let url = h.deployment_url("/chat/completions");
    for i in 0..10u64 {
        let reply = h.client.post(&url, &[KEY], &chat_with(10)).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.number("x-ratelimit-limit-requests"), 10);
        assert_eq!(reply.number("x-ratelimit-remaining-requests"), 9 - i);
        assert_eq!(reply.number("x-ratelimit-limit-tokens"), 100_000);
    }
    let reply = h.client.post(&url, &[KEY], &chat_with(10)).await;
    assert_429(&reply, "requests");
    // 10 a minute: the next one in exactly 6 s.
    assert_eq!(reply.number("retry-after-ms"), 6000);
    assert_eq!(reply.number("retry-after"), 6);
    assert_eq!(reply.number("x-ratelimit-remaining-requests"), 0);
    assert_eq!(reply.header("ratelimit-policy"), "\"requests\";q=10;w=60, \"tokens\";q=100000;w=60;qu=\"tokens\"");
}

#[tokio::test]
async fn waiting_exactly_retry_after_ms_is_enough_and_one_ms_less_is_not() {
    let (setup, clock) = frozen("tokens_per_minute = 10000");
    let h = Harness::with(setup).await;
    let url = h.deployment_url("/chat/completions");
    // The first request really uses 5,000 completion tokens.
    let first = h.client.post(&url, &[KEY, ("x-mock-completion-tokens", "5000")], &chat_with(5000)).await;
    assert_eq!(first.status, StatusCode::OK);
    assert!(first.json()["usage"]["total_tokens"].as_u64().unwrap() > 5000);
    let big = chat_with(9000);
    let reply = h.client.post(&url, &[KEY], &big).await;
    assert_429(&reply, "tokens");
    let wait = reply.number("retry-after-ms");
    clock.advance_ms(wait - 1);
    let early = h.client.post(&url, &[KEY], &big).await;
    assert_eq!(early.status, StatusCode::TOO_MANY_REQUESTS, "admitted before retry-after-ms");
    assert_eq!(early.number("retry-after-ms"), 1);
    clock.advance_ms(1);
    let retried = h.client.post(&url, &[KEY], &big).await;
    assert_eq!(retried.status, StatusCode::OK, "{}", retried.text());
}

#[tokio::test]
async fn a_reservation_over_the_whole_capacity_is_400_not_429() {
    let (setup, _clock) = frozen("tokens_per_minute = 10000");
    let h = Harness::with(setup).await;
    let body = chat_with(20000);
    let reply = h.client.post(&h.deployment_url("/chat/completions"), &[KEY], &body).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.error_code(), "TokenLimitExceeded");
    let message = reply.json()["error"]["message"].as_str().unwrap().to_owned();
    let reserved = estimated_prompt(&body) + 20000;
    assert!(
        message.contains(&format!("reserves {reserved} tokens")) && message.contains("10000 tokens per minute"),
        "{message}"
    );
    assert!(reply.headers.get("retry-after").is_none());
    assert_eq!(reply.number("x-ratelimit-remaining-tokens"), 10000, "nothing was taken");
}

#[tokio::test]
async fn reconciliation_returns_the_unused_reservation() {
    let (setup, _clock) = frozen("tokens_per_minute = 100000");
    let h = Harness::with(setup).await;
    let url = h.deployment_url("/chat/completions");
    let body = chat_with(1000);
    let reserved = estimated_prompt(&body) + 1000;
    let first = h.client.post(&url, &[KEY], &body).await;
    assert_eq!(first.number("x-ratelimit-remaining-tokens"), 100_000 - reserved);
    let used1 = first.json()["usage"]["total_tokens"].as_u64().unwrap();
    assert!(used1 < reserved);
    let second = h.client.post(&url, &[KEY], &body).await;
    // The first request's unused tokens came back before the second was admitted.
    assert_eq!(second.number("x-ratelimit-remaining-tokens"), 100_000 - used1 - reserved);
    let used2 = second.json()["usage"]["total_tokens"].as_u64().unwrap();
    h.usage_after(2).await;
    assert_eq!(h.remaining_tokens().await, 100_000 - used1 - used2);
    let usage = h.usage_after(2).await;
    assert_eq!(usage["total_tokens"], used1 + used2);
    assert_eq!(usage["reported_requests"], 2);
}

#[tokio::test]
async fn streamed_usage_is_charged_from_the_last_chunk() {
    let (setup, _clock) = frozen("tokens_per_minute = 100000");
    let h = Harness::with(setup).await;
    let body = r#"{"messages":[{"role":"user","content":"Stream please."}],"stream":true,"max_tokens":500}"#;
    let reply = h.client.post(&h.deployment_url("/chat/completions"), &[KEY], body).await;
    assert_eq!(reply.status, StatusCode::OK);
    let text = reply.text();
    let last = text.lines().rfind(|l| l.contains("\"usage\"")).unwrap();
    let usage: serde_json::Value = serde_json::from_str(last.strip_prefix("data: ").unwrap()).unwrap();
    let total = usage["usage"]["total_tokens"].as_u64().unwrap();
    let recorded = h.usage_after(1).await;
    assert_eq!(recorded["total_tokens"], total);
    assert_eq!(recorded["reported_requests"], 1);
    assert_eq!(h.remaining_tokens().await, 100_000 - total);
}

#[tokio::test]
async fn streams_without_usage_are_counted_from_the_deltas() {
    let clock = Arc::new(ManualClock::new(0));
    let h = Harness::with(Setup {
        mock: MockOptions { stream_usage: false, completion_tokens: 40, ..Default::default() },
        deployment: "tokens_per_minute = 100000".into(),
        clock: Some(clock),
        ..Default::default()
    })
    .await;
    let body = r#"{"messages":[{"role":"user","content":"Stream please."}],"stream":true}"#;
    let reply = h.client.post(&h.deployment_url("/chat/completions"), &[KEY], body).await;
    assert!(!reply.text().contains("\"usage\""));
    let streamed = streamed_text(&reply.text());
    let completion = Tokenizer::Bpe.count(&streamed);
    let prompt = estimated_prompt(body);
    let recorded = h.usage_after(1).await;
    assert_eq!(recorded["completion_tokens"], completion);
    assert_eq!(recorded["prompt_tokens"], prompt);
    assert_eq!(recorded["estimated_requests"], 1);
    assert_eq!(h.remaining_tokens().await, 100_000 - prompt - completion);
}

#[tokio::test]
async fn a_client_leaving_mid_stream_is_charged_the_prompt_and_what_was_streamed() {
    let (setup, _clock) = frozen("tokens_per_minute = 100000");
    let h = Harness::with(setup).await;
    let body = r#"{"messages":[{"role":"user","content":"A long story."}],"stream":true}"#;
    let headers = [KEY, ("x-mock-tokens-per-second", "50"), ("x-mock-completion-tokens", "500")];
    let response = h.client.send(Method::POST, &h.deployment_url("/chat/completions"), &headers, body).await;
    let mut stream = response.into_body();
    let mut received = String::new();
    while received.matches("data: ").count() < 4 {
        let frame = stream.frame().await.unwrap().unwrap();
        received.push_str(&String::from_utf8_lossy(frame.data_ref().unwrap()));
    }
    drop(stream);
    let received_text = streamed_text(&received);
    let received_tokens = Tokenizer::Bpe.count(&received_text);
    let recorded = h.usage_after(1).await;
    let completion = recorded["completion_tokens"].as_u64().unwrap();
    assert!(received_tokens >= 2, "{received}");
    assert!(completion >= received_tokens, "at least what the client received ({received_tokens}): {recorded}");
    assert!(completion < 100, "not the whole completion: {recorded}");
    assert_eq!(recorded["prompt_tokens"], estimated_prompt(body));
    assert_eq!(h.remaining_tokens().await, 100_000 - estimated_prompt(body) - completion);
}

#[tokio::test]
async fn backend_failures_refund_the_tokens_but_count_the_request() {
    let (setup, _clock) = frozen("tokens_per_minute = 100000");
    let h = Harness::with(setup).await;
    let reply =
        h.client.post(&h.deployment_url("/chat/completions"), &[KEY, ("x-mock-status", "503")], &chat_with(1000)).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    h.usage_after(1).await;
    let quotas = h.admin("/quotas").await;
    assert_eq!(quotas[DEPLOYMENT]["remainingTokens"], 100_000);
    assert_eq!(quotas[DEPLOYMENT]["remainingRequests"], 999);
}

#[tokio::test]
async fn sixty_four_concurrent_clients_never_over_admit() {
    let (setup, _clock) = frozen("tokens_per_minute = 10000");
    let h = Harness::with(setup).await;
    let body = Arc::new(chat_with(100));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (client, url, body) = (h.client.clone(), h.deployment_url("/chat/completions"), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..12 {
                let reply = client.post(&url, &[KEY], &body).await;
                if reply.status == StatusCode::TOO_MANY_REQUESTS {
                    assert_429(&reply, "tokens");
                }
                statuses.push(reply.status);
            }
            statuses
        }));
    }
    let mut ok = 0u64;
    let mut limited = 0u64;
    for task in tasks {
        for status in task.await.unwrap() {
            match status {
                StatusCode::OK => ok += 1,
                StatusCode::TOO_MANY_REQUESTS => limited += 1,
                other => panic!("unexpected {other}"),
            }
        }
    }
    assert_eq!(ok + limited, 768);
    assert!(limited > 0, "the token limit must bind in this test");
    let usage = h.usage_after(768).await;
    let charged = usage["total_tokens"].as_u64().unwrap();
    // No refill on a frozen clock: everything charged fits in one minute's capacity.
    assert!(charged <= 10_000, "{charged} tokens charged");
    assert_eq!(h.remaining_tokens().await, 10_000 - charged);
    assert_eq!(usage["requests"], 768);
    assert_eq!(usage["reported_requests"], ok);
}

/// The `RateLimit` field as policy → (r, t).
fn ratelimit_field(reply: &Reply) -> std::collections::HashMap<String, (u64, u64)> {
    reply
        .header("ratelimit")
        .split(", ")
        .map(|item| {
            let mut parts = item.split(';');
            let name = parts.next().unwrap().trim_matches('"').to_owned();
            let mut r = None;
            let mut t = None;
            for p in parts {
                let (k, v) = p.split_once('=').unwrap();
                match k {
                    "r" => r = Some(v.parse().unwrap()),
                    "t" => t = Some(v.parse().unwrap()),
                    _ => {}
                }
            }
            (name, (r.unwrap(), t.unwrap()))
        })
        .collect()
}

#[tokio::test]
async fn on_a_429_the_ratelimit_reset_of_the_exhausted_policy_agrees_with_retry_after() {
    // Requests exhausted: 10 a minute, the 11th waits 6 s, and so does "requests";t.
    let (setup, _clock) = frozen("requests_per_minute = 10\ntokens_per_minute = 100000");
    let h = Harness::with(setup).await;
    let url = h.deployment_url("/chat/completions");
    for _ in 0..10 {
        assert_eq!(h.client.post(&url, &[KEY], &chat_with(10)).await.status, StatusCode::OK);
    }
    let reply = h.client.post(&url, &[KEY], &chat_with(10)).await;
    assert_429(&reply, "requests");
    let field = ratelimit_field(&reply);
    assert_eq!(reply.number("retry-after"), 6);
    assert_eq!(field["requests"], (0, 6), "{}", reply.header("ratelimit"));
    // The tokens policy had room: its t is when it is full again, and never over a minute.
    assert!(field["tokens"].1 <= 60);

    // Tokens exhausted (requests left): "tokens";t is when this request's tokens are there.
    let (setup, _clock) = frozen("tokens_per_minute = 10000");
    let h = Harness::with(setup).await;
    let url = h.deployment_url("/chat/completions");
    let first = h.client.post(&url, &[KEY, ("x-mock-completion-tokens", "5000")], &chat_with(5000)).await;
    assert_eq!(first.status, StatusCode::OK);
    let reply = h.client.post(&url, &[KEY], &chat_with(9000)).await;
    assert_429(&reply, "tokens");
    let field = ratelimit_field(&reply);
    assert_eq!(field["tokens"].1, reply.number("retry-after"), "{}", reply.header("ratelimit"));
    assert!(field["tokens"].1 > 1);
    assert_eq!(field["requests"].1, 1, "the requests policy has room; it is full again within a second");
}

#[tokio::test]
async fn info_is_not_charged_to_the_request_bucket_and_the_backend_is_asked_once_per_ttl() {
    let (setup, clock) = frozen("requests_per_minute = 2");
    let h = Harness::with(setup).await;
    let info = h.deployment_url("/info");
    for i in 0..10 {
        let reply = h.client.call(Method::GET, &info, &[KEY], "").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.json()["model_provider_name"], "Meta");
        assert_eq!(reply.number("x-ratelimit-remaining-requests"), 2, "call {i} took nothing");
        assert_eq!(reply.header("x-tollgate-info-cache"), if i == 0 { "miss" } else { "hit" });
    }
    assert_eq!(h.mock.served("/info"), 1, "nine answers came from the kept copy");
    // The two requests of the minute are still there for chat.
    let chat = h.deployment_url("/chat/completions");
    for _ in 0..2 {
        assert_eq!(h.client.post(&chat, &[KEY], CHAT).await.status, StatusCode::OK);
    }
    assert_eq!(h.client.post(&chat, &[KEY], CHAT).await.status, StatusCode::TOO_MANY_REQUESTS);
    // And /info still answers with the request bucket empty.
    assert_eq!(h.client.call(Method::GET, &info, &[KEY], "").await.status, StatusCode::OK);
    // After the TTL, one fetch again, however many ask at once (a slow backend holds them all).
    clock.advance_ms(tollgate::planes::data::info::INFO_TTL.as_millis() as u64);
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let (client, info) = (h.client.clone(), info.clone());
            tokio::spawn(async move {
                client.call(Method::GET, &info, &[KEY, ("x-mock-latency-ms", "200")], "").await.status
            })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(h.mock.served("/info"), 2);
    // Every call is metered as a request in the totals (10 + 1 + 20 /info, 3 chats).
    let usage = h.admin("/usage").await[DEPLOYMENT].clone();
    assert_eq!(usage["requests"], 34, "{usage}");
    assert_eq!(usage["rate_limited_requests"], 1, "{usage}");
}

#[tokio::test]
async fn include_usage_gets_a_usage_chunk_counted_by_the_gateway_when_the_backend_sends_none() {
    let h = Harness::with(Setup {
        mock: MockOptions { stream_usage: false, completion_tokens: 40, ..Default::default() },
        ..Default::default()
    })
    .await;
    let url = h.deployment_url("/chat/completions");
    let asked = r#"{"messages":[{"role":"user","content":"Stream please."}],"stream":true,"stream_options":{"include_usage":true}}"#;
    let reply = h.client.post(&url, &[KEY], asked).await;
    let text = reply.text();
    let events: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{text}");
    let usage: serde_json::Value = serde_json::from_str(events[events.len() - 2]).unwrap();
    assert_eq!(usage["choices"], serde_json::json!([]), "the chunk just before [DONE] is the usage chunk: {text}");
    assert_eq!(usage["object"], "chat.completion.chunk");
    assert_eq!(usage["x_tollgate"]["usage"], "estimated", "marked as counted by the gateway");
    assert!(text.ends_with("\n\ndata: [DONE]\n\n"), "{text}");
    // It says what was billed.
    let recorded = h.usage_after(1).await;
    assert_eq!(usage["usage"]["prompt_tokens"], recorded["prompt_tokens"]);
    assert_eq!(usage["usage"]["completion_tokens"], recorded["completion_tokens"]);
    assert_eq!(usage["usage"]["total_tokens"], recorded["total_tokens"]);
    assert_eq!(events.iter().filter(|e| e.contains("\"usage\"")).count(), 1);

    // Not asked: nothing added.
    let plain = r#"{"messages":[{"role":"user","content":"Stream please."}],"stream":true}"#;
    assert!(!h.client.post(&url, &[KEY], plain).await.text().contains("\"usage\""));
    let refused = r#"{"messages":[],"stream":true,"stream_options":{"include_usage":false}}"#;
    assert!(!h.client.post(&url, &[KEY], refused).await.text().contains("\"usage\""));
}

#[tokio::test]
async fn include_usage_with_a_backend_that_reports_usage_passes_the_backends_chunk_alone() {
    let h = Harness::start().await;
    let asked =
        r#"{"messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}"#;
    let text = h.client.post(&h.deployment_url("/chat/completions"), &[KEY], asked).await.text();
    assert_eq!(text.matches("\"usage\"").count(), 1, "{text}");
    assert!(!text.contains("x_tollgate"), "{text}");
}

#[tokio::test]
async fn a_non_streamed_answer_of_any_size_is_billed_by_its_usage() {
    let h = Harness::start().await;
    // 1,000 inputs of 1,024 dimensions: an answer of about 12 MB, its usage at the end.
    let inputs: Vec<&str> = vec!["hello world"; 1000];
    let body = serde_json::json!({"input": inputs, "dimensions": 1024}).to_string();
    let reply = h.client.post(&h.deployment_url("/embeddings"), &[KEY], &body).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body.len() > 8 << 20, "the answer is larger than the old 8 MiB scan limit: {}", reply.body.len());
    let reported = reply.json()["usage"]["total_tokens"].as_u64().unwrap();
    let recorded = h.usage_after(1).await;
    assert_eq!(recorded["reported_requests"], 1, "billed by the backend's usage, not estimated: {recorded}");
    assert_eq!(recorded["total_tokens"], reported);
}

/// The completion text of a streamed answer, from its content deltas.
fn streamed_text(text: &str) -> String {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn long_answers_without_usage_are_counted_exactly_however_they_come() {
    // 3,000 tokens of text is ~16 KB, past what is counted on a runtime worker: these counts
    // run on the blocking pool (`planes::data::count`) and must bill the same as a count in place.
    let (setup, _clock) = frozen("tokens_per_minute = 1000000");
    let h = Harness::with(setup).await;
    let url = h.deployment_url("/chat/completions");
    let headers = [KEY, ("x-mock-no-usage", "1"), ("x-mock-completion-tokens", "3000")];
    let mut billed = 0;

    // A long prompt too: estimated on the blocking pool, the same as in place.
    let whole = format!(r#"{{"messages":[{{"role":"user","content":"{}"}}]}}"#, "A long question. ".repeat(600));
    assert!(whole.len() > Tokenizer::Bpe.inline_limit());
    let whole = whole.as_str();
    let reply = h.client.post(&url, &headers, whole).await;
    assert_eq!(reply.status, StatusCode::OK);
    let answer = reply.json();
    assert!(answer.get("usage").is_none(), "the mock sent no usage: {answer}");
    let text = answer["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.len() > Tokenizer::Bpe.inline_limit(), "{}", text.len());
    let recorded = h.usage_after(1).await;
    assert_eq!(recorded["completion_tokens"], Tokenizer::Bpe.count(text));
    assert_eq!(recorded["prompt_tokens"], estimated_prompt(whole));
    billed += estimated_prompt(whole) + Tokenizer::Bpe.count(text);

    let streamed = r#"{"messages":[{"role":"user","content":"A long stream."}],"stream":true}"#;
    let reply = h.client.post(&url, &headers, streamed).await;
    let text = streamed_text(&reply.text());
    assert!(text.len() > Tokenizer::Bpe.inline_limit());
    let recorded = h.usage_after(2).await;
    let first = recorded["completion_tokens"].as_u64().unwrap() - (billed - estimated_prompt(whole));
    assert_eq!(first, Tokenizer::Bpe.count(&text));
    billed += estimated_prompt(streamed) + Tokenizer::Bpe.count(&text);
    assert_eq!(recorded["total_tokens"], billed);

    // With a usage chunk: the frame with `[DONE]` waits for the count, and the chunk says what
    // is billed.
    let asked = r#"{"messages":[{"role":"user","content":"A long stream."}],"stream":true,"stream_options":{"include_usage":true}}"#;
    let reply = h.client.post(&url, &headers, asked).await;
    let body = reply.text();
    assert!(body.ends_with("\n\ndata: [DONE]\n\n"), "{}", &body[body.len().saturating_sub(300)..]);
    let events: Vec<&str> = body.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    let chunk: serde_json::Value = serde_json::from_str(events[events.len() - 2]).unwrap();
    assert_eq!(chunk["x_tollgate"]["usage"], "estimated", "{chunk}");
    let completion = Tokenizer::Bpe.count(&streamed_text(&body));
    assert_eq!(chunk["usage"]["completion_tokens"], completion);
    assert_eq!(chunk["usage"]["prompt_tokens"], estimated_prompt(asked));
    billed += estimated_prompt(asked) + completion;
    let recorded = h.usage_after(3).await;
    assert_eq!(recorded["total_tokens"], billed, "{recorded}");
    assert_eq!(recorded["estimated_requests"], 3);
    assert_eq!(h.remaining_tokens().await, 1_000_000 - billed);
}

#[tokio::test]
async fn shutdown_waits_for_counts_still_running_and_the_ledger_has_them() {
    // Answers of 16 x 100,000 tokens without usage (~9 MB of text, ~150 ms of counting each) are
    // counted on the blocking pool after the client has them; shutdown starts at once and must
    // wait for those counts before it writes out the ledger.
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("usage.jsonl");
    let h = Harness::with(Setup {
        ledger: Some(ledger.clone()),
        deployment: "tokens_per_minute = 10000000".into(),
        ..Default::default()
    })
    .await;
    let body = r#"{"messages":[{"role":"user","content":"The longest answer."}],"max_tokens":100000,"n":16}"#;
    let headers = [KEY, ("x-mock-no-usage", "1"), ("x-mock-completion-tokens", "100000")];
    let mut replies = Vec::new();
    for _ in 0..2 {
        let reply = h.client.post(&h.deployment_url("/chat/completions"), &headers, body).await;
        assert_eq!(reply.status, StatusCode::OK);
        replies.push(reply);
    }
    // Shut down before anything else (reading the answers here takes longer than the counts).
    let Harness { gateway, .. } = h;
    gateway.shutdown().await;
    let expected = replies.iter().map(|reply| {
        let answer = reply.json();
        let text: String =
            answer["choices"].as_array().unwrap().iter().map(|c| c["message"]["content"].as_str().unwrap()).collect();
        (reply.header("x-request-id").to_owned(), Tokenizer::Bpe.count(&text))
    });
    let text = std::fs::read_to_string(&ledger).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "every answer has its line: {text}");
    for (id, completion) in expected {
        let line = lines.iter().find(|l| l["request_id"] == id.as_str()).unwrap();
        assert_eq!(line["completion_tokens"], completion, "{line}");
        assert_eq!(line["source"], "estimated");
    }
}
