//! Heap allocations per request on the gateway's path, counted by `dhat` as the global
//! allocator (exact counts, allocator-independent): the same short chat is sent N times straight
//! to the mock backend and N times through a gateway in front of it, all in this process; the
//! difference is what the gateway allocates per request (the client's and the mock's
//! allocations cancel out).
//!
//!   cargo bench --bench allocs [-- --requests 2000]
//!
//! Without `--bench` (as under `cargo test --all-targets`) it exits at once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout)]

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tollgate::config::Config;
use tollgate::process::mock_backend::{MockBackend, MockOptions};
use tollgate::process::runtime::RunningGateway;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const KEY: &str = "AllocsBenchKey0123456789abcdefgh";
const CHAT: &str = r#"{"messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello in one short sentence."}],"max_tokens":16}"#;

type Http = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

async fn send(client: &Http, url: &str) -> u16 {
    let request = Request::builder()
        .method(Method::POST)
        .uri(url)
        .header("content-type", "application/json")
        .header("api-key", KEY)
        .body(Full::new(Bytes::from_static(CHAT.as_bytes())));
    let Ok(request) = request else { return 0 };
    match client.request(request).await {
        Ok(response) => {
            let status = response.status().as_u16();
            let _ = response.into_body().collect().await;
            status
        }
        Err(_) => 0,
    }
}

/// Allocations (blocks, bytes) of `n` sequential requests to `url`.
async fn measure(client: &Http, url: &str, n: u64) -> (f64, f64) {
    for _ in 0..100 {
        send(client, url).await;
    }
    // Let background work of the warm-up (settling, reconciliation) finish first.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = dhat::HeapStats::get();
    let mut ok = 0;
    for _ in 0..n {
        ok += u64::from(send(client, url).await == 200);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = dhat::HeapStats::get();
    assert_eq!(ok, n, "every request must succeed ({url})");
    let blocks = (after.total_blocks - before.total_blocks) as f64 / n as f64;
    let bytes = (after.total_bytes - before.total_bytes) as f64 / n as f64;
    (blocks, bytes)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let n = args
        .iter()
        .position(|a| a == "--requests")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(2000);
    // As `tollgate serve` logs at its default level (the access log included), to nowhere.
    tracing_subscriber::fmt().with_env_filter("info").with_writer(std::io::sink).init();
    let _profiler = dhat::Profiler::builder().testing().build();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async move {
        let mock = MockBackend::start(([127, 0, 0, 1], 0).into(), MockOptions::default()).await.unwrap();
        let digest = tollgate::core::keys::KeyDigest::of(KEY.as_bytes()).to_stored();
        let dir = tempfile::tempdir().unwrap();
        let ledger = dir.path().join("usage.jsonl");
        let text = format!(
            "[ledger]\npath = {:?}\n[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[[deployments]]\nname = \"bench\"\nmodel = \"m\"\nbackend = \"{}\"\nkeys = [\"{digest}\"]\nrequests_per_minute = 1000000000\ntokens_per_minute = 1000000000\n",
            ledger.display().to_string(),
            mock.url()
        );
        let config = Config::parse(&text, "allocs.toml", &|_| None).unwrap();
        let gateway = RunningGateway::start(&config).await.unwrap();
        let client: Http = Client::builder(TokioExecutor::new()).build_http();
        let direct = format!("{}/chat/completions", mock.url());
        let through = format!("http://{}/openai/deployments/bench/chat/completions", gateway.gateway_addr);
        let (direct_blocks, direct_bytes) = measure(&client, &direct, n).await;
        let (through_blocks, through_bytes) = measure(&client, &through, n).await;
        println!("{n} short chats, sequential, one keep-alive connection each way");
        println!("  straight to the mock:   {direct_blocks:8.1} allocations, {direct_bytes:9.0} bytes per request");
        println!("  through the gateway:    {through_blocks:8.1} allocations, {through_bytes:9.0} bytes per request");
        println!(
            "  the gateway's own:      {:8.1} allocations, {:9.0} bytes per request",
            through_blocks - direct_blocks,
            through_bytes - direct_bytes
        );
        gateway.shutdown().await;
    });
}
