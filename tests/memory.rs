//! What deployments cost in memory (issue 21), counted exactly: `dhat` is this test binary's
//! allocator, so the live heap is read in bytes asked for (allocator rounding and pages not given
//! back are not in it; `benches/scale.sh` reads RSS). One gateway grows from one deployment to
//! 2,001 by a reload of its file, then serves every one of them, then reloads the same file and
//! then a file with one deployment changed.
//!
//! One test in this binary: the heap profiler is one per process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout)]

mod common;

use std::fmt::Write;
use std::path::Path;

use common::Client;
use tollgate::config::Config;
use tollgate::core::keys::KeyDigest;
use tollgate::process::mock_backend::{MockBackend, MockOptions};
use tollgate::process::runtime::{RunningGateway, StartOptions};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const MANY: usize = 2_001;
/// The goals of issue 21, per deployment.
const IDLE_BUDGET: u64 = 2_048;
const SERVED_BUDGET: u64 = 15_000;

fn key(i: usize) -> String {
    format!("MemoryKey{i:010}abcdefghijklm")
}

/// A file of `n` deployments, each with its own key; `tokens` is d0's tokens per minute.
fn config_text(n: usize, backend: &str, tokens: u64) -> String {
    let mut text = String::from("[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n");
    for i in 0..n {
        let digest = KeyDigest::of(key(i).as_bytes()).to_stored();
        let tpm = if i == 0 { tokens } else { 1_000_000_000 };
        let _ = write!(
            text,
            "[[deployments]]\nname = \"d{i}\"\nmodel = \"m\"\nbackend = \"{backend}\"\nkeys = [\"{digest}\"]\n\
             requests_per_minute = 1000000000\ntokens_per_minute = {tpm}\n"
        );
    }
    text
}

fn live_bytes() -> u64 {
    dhat::HeapStats::get().curr_bytes as u64
}

/// Reloads the file after writing `text` to it: the deployments it rebuilt, and the heap peak
/// so far. The file keeps its length and modification time, so that the gateway's file watcher
/// does not reload it once more while the heap is read.
fn reload(gateway: &RunningGateway, path: &Path, text: &str) -> (usize, u64) {
    let stamp = std::fs::metadata(path).unwrap();
    assert_eq!(stamp.len(), text.len() as u64);
    std::fs::write(path, text).unwrap();
    std::fs::File::options().write(true).open(path).unwrap().set_modified(stamp.modified().unwrap()).unwrap();
    let report = gateway.control.reload(false).unwrap();
    assert_eq!(report.deployments, text.matches("[[deployments]]").count());
    (report.rebuilt, dhat::HeapStats::get().max_bytes as u64)
}

#[test]
fn deployments_idle_served_and_reloaded_stay_within_their_memory_budget() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let mock = MockBackend::start(([127, 0, 0, 1], 0).into(), MockOptions::default()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        // The gateway starts on one deployment while its file already holds all of them (the
        // first reload reads them): see `reload`.
        let many = config_text(MANY, &mock.url(), 999_999_999);
        std::fs::write(&path, &many).unwrap();
        let one = config_text(1, &mock.url(), 1_000_000_000);
        let config = Config::parse(&one, "gateway.toml", &|_| None).unwrap();
        let options = StartOptions { config_path: Some(path.clone()), ..StartOptions::default() };
        let gateway = RunningGateway::start_with(&config, options).await.unwrap();
        drop(config);
        let client = Client::new();
        let call = |i: usize| {
            let url = format!("http://{}/openai/deployments/d{i}/chat/completions", gateway.gateway_addr);
            let key = key(i);
            let client = &client;
            async move {
                let reply =
                    client.post(&url, &[("api-key", &key)], r#"{"messages":[{"role":"user","content":"hi"}]}"#).await;
                assert_eq!(reply.status, http::StatusCode::OK, "d{i}: {}", reply.text());
            }
        };
        call(0).await;
        let with_one = live_bytes();

        // Idle: 2,000 more deployments, none called yet.
        let many = config_text(MANY, &mock.url(), 999_999_999);
        let (_, peak) = reload(&gateway, &path, &many);
        let idle = live_bytes();
        let per_idle = idle.saturating_sub(with_one) / (MANY as u64 - 1);

        // Served: every deployment has answered a request (its series, counters and pool state
        // are made then).
        for i in 0..MANY {
            call(i).await;
        }
        let served = live_bytes();
        let per_served = served.saturating_sub(with_one) / (MANY as u64 - 1);

        // Reloads: the same file, then one deployment changed. What stays is reused, and the
        // old table is gone once the reload returns.
        let (rebuilt, _) = reload(&gateway, &path, &many);
        assert_eq!(rebuilt, 0, "nothing changed");
        let after_unchanged = live_bytes();
        let (rebuilt, _) = reload(&gateway, &path, &config_text(MANY, &mock.url(), 999_999_998));
        assert_eq!(rebuilt, 1, "d0's limit changed");
        let after_changed = live_bytes();
        println!(
            "heap: {with_one} B with one deployment; {per_idle} B per idle deployment, {per_served} B per served one; \
             {idle} B idle (peak while the file of {MANY} was read: {peak} B); {served} B served, \
             {after_unchanged} B after an unchanged reload, {after_changed} B after one changed"
        );
        assert!(per_idle <= IDLE_BUDGET, "an idle deployment costs {per_idle} bytes (goal {IDLE_BUDGET})");
        assert!(per_served <= SERVED_BUDGET, "a served deployment costs {per_served} bytes (goal {SERVED_BUDGET})");
        // Not doubled: a reload keeps the deployments it finds unchanged (a few hundred bytes of
        // slack for what a reload itself leaves, such as its report in the metrics).
        let slack = served / 20;
        assert!(
            after_unchanged <= served + slack,
            "{after_unchanged} bytes after an unchanged reload, {served} before"
        );
        assert!(after_changed <= served + slack, "{after_changed} bytes after a reload of one change, {served} before");
        gateway.shutdown().await;
    });
}
