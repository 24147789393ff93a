//! Per-request work the gateway does before forwarding: routing, key check, body validation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};
use http::Method;
use tollgate::gateway::body::BodyFields;
use tollgate::gateway::route::{host_label, route};
use tollgate::keys::{KeyDigest, KeyPair};

fn chat_body(target_len: usize) -> Vec<u8> {
    let mut messages = Vec::new();
    let mut len = 0;
    while len < target_len {
        let content = "The quick brown fox jumps over the lazy dog. ".repeat(4);
        len += content.len() + 40;
        messages.push(serde_json::json!({"role": "user", "content": content}));
    }
    serde_json::to_vec(&serde_json::json!({"model": "meta-llama3-8b-qwerty", "messages": messages, "max_tokens": 256}))
        .unwrap()
}

fn benches(c: &mut Criterion) {
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
    let mut group = c.benchmark_group("body validation");
    for size in [1024, 100 * 1024] {
        let body = chat_body(size);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(format!("{} KB chat body", size / 1024), |b| {
            b.iter(|| BodyFields::parse(black_box(&body)).unwrap().stream)
        });
    }
    group.finish();
}

criterion_group!(hot_path, benches);
criterion_main!(hot_path);
