//! Per-request work on the hot path: routing, key check, admission, body estimation, and the
//! response scan. Numbers go into BENCHMARKS.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};
use http::Method;
use tollgate::core::api::ApiRoute;
use tollgate::core::clock::MonotonicClock;
use tollgate::core::estimate::{Tokenizer, estimate};
use tollgate::core::keys::{KeyDigest, KeyPair};
use tollgate::core::meter::sse::SseScanner;
use tollgate::core::quota::{DeploymentQuota, Limits};
use tollgate::planes::data::body::BodyFields;
use tollgate::planes::data::route::{host_label, route};

/// A chat body of about `target_len` bytes: a system prompt and alternating turns of prose.
fn chat_body(target_len: usize) -> Vec<u8> {
    let prose = "The quick brown fox jumps over the lazy dog while the gateway counts every token it sees. ";
    let mut messages = vec![serde_json::json!({"role": "system", "content": "You are a helpful assistant."})];
    let mut len = 0;
    let mut turn = 0;
    while len < target_len {
        let content = prose.repeat(3);
        len += content.len() + 40;
        let role = if turn % 2 == 0 { "user" } else { "assistant" };
        messages.push(serde_json::json!({"role": role, "content": content}));
        turn += 1;
    }
    serde_json::to_vec(&serde_json::json!({"model": "meta-llama3-8b-qwerty", "messages": messages, "max_tokens": 256}))
        .unwrap()
}

/// A streamed chat completion of `events` content chunks with usage on the last one.
fn sse_stream(events: usize) -> Vec<u8> {
    let mut out = String::new();
    let head =
        r#""id":"cmpl-1","object":"chat.completion.chunk","created":1718726686,"model":"Meta-Llama-3-8B-Instruct""#;
    for i in 0..events {
        out.push_str(&format!(
            "data: {{{head},\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" token{i}\"}},\"finish_reason\":null}}]}}\n\n"
        ));
    }
    out.push_str(&format!("data: {{{head},\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"stop\"}}],\"usage\":{{\"prompt_tokens\":19,\"completion_tokens\":{events},\"total_tokens\":{}}}}}\n\n", events + 19));
    out.push_str("data: [DONE]\n\n");
    out.into_bytes()
}

fn routing_and_keys(c: &mut Criterion) {
    c.bench_function("route /openai/deployments/{name}/chat/completions", |b| {
        b.iter(|| {
            route(black_box(&Method::POST), black_box("/openai/deployments/meta-llama3-8b-qwerty/chat/completions"))
        })
    });
    c.bench_function("host_label", |b| b.iter(|| host_label(black_box("meta-llama3-8b-qwerty.localhost:8080"))));
    let pair = KeyPair { primary: KeyDigest::of(b"primary"), secondary: Some(KeyDigest::of(b"secondary")) };
    c.bench_function("key check (sha256 + 2 constant-time compares)", |b| {
        b.iter(|| pair.check(black_box(b"SecondaryKey0123456789abcdefghij")))
    });
}

fn admission(c: &mut Criterion) {
    let limits = Limits { requests_per_minute: 1_000_000_000, tokens_per_minute: 1_000_000_000 };
    let quota = Arc::new(DeploymentQuota::new(limits, Arc::new(MonotonicClock::new())));
    c.bench_function("admission, uncontended", |b| b.iter(|| quota.admit(black_box(1)).is_ok()));
    c.bench_function("admission + reconcile, uncontended", |b| {
        b.iter(|| {
            let _ = quota.admit(black_box(100));
            quota.reconcile(100, black_box(40));
        })
    });
    c.bench_function("admission, 2 threads on one deployment", |b| {
        b.iter_custom(|iters| {
            let stop = Arc::new(AtomicBool::new(false));
            let other = {
                let (quota, stop) = (quota.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let _ = black_box(quota.admit(1));
                    }
                })
            };
            let start = Instant::now();
            for _ in 0..iters {
                let _ = black_box(quota.admit(1));
            }
            let elapsed = start.elapsed();
            stop.store(true, Ordering::Relaxed);
            other.join().unwrap();
            elapsed
        })
    });
}

fn estimation(c: &mut Criterion) {
    let mut group = c.benchmark_group("estimate chat body");
    for size in [1024, 100 * 1024] {
        let body = chat_body(size);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(format!("bpe, {} KB", size / 1024), |b| {
            b.iter(|| estimate(ApiRoute::ChatCompletions, black_box(&body), Tokenizer::Bpe).unwrap().prompt_tokens)
        });
        group.bench_function(format!("chars, {} KB", size / 1024), |b| {
            b.iter(|| estimate(ApiRoute::ChatCompletions, black_box(&body), Tokenizer::Chars).unwrap().prompt_tokens)
        });
        group.bench_function(format!("validation only (model/stream), {} KB", size / 1024), |b| {
            b.iter(|| BodyFields::parse(black_box(&body)).unwrap().model.is_some())
        });
    }
    group.finish();
}

fn response_scan(c: &mut Criterion) {
    let stream = sse_stream(200);
    let mut group = c.benchmark_group("SSE usage scan");
    group.throughput(Throughput::Bytes(stream.len() as u64));
    group.bench_function("200 events, whole", |b| {
        b.iter(|| {
            let mut scanner = SseScanner::new();
            scanner.feed(black_box(&stream));
            scanner.usage().unwrap().total_tokens
        })
    });
    group.bench_function("200 events, 64-byte chunks", |b| {
        b.iter(|| {
            let mut scanner = SseScanner::new();
            for chunk in stream.chunks(64) {
                scanner.feed(black_box(chunk));
            }
            scanner.usage().unwrap().total_tokens
        })
    });
    group.finish();
}

criterion_group!(hot_path, routing_and_keys, admission, estimation, response_scan);
criterion_main!(hot_path);
