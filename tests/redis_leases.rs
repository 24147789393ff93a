//! Leases on the shared buckets (`lease_requests` / `lease_tokens`): replicas admit from what
//! they lease, so Redis sees a call per lease rather than per request, and together they still
//! admit no more than the one quota; what an idle replica holds goes back when the lease expires
//! and at shutdown, and what a lease holds still admits while Redis is down. Real processes or
//! in-process gateways, a real `redis-server` on a free port.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::process::{self, Replicas};
use common::quota::{allowance, assert_rate_limited};
use common::redis_server::RedisServer;
use common::*;
use http::StatusCode;
use tollgate::core::clock::ManualClock;
use tollgate::process::mock_backend::{MockBackend, MockOptions};

fn limits(redis: &RedisServer, extra: &str) -> String {
    format!("store = \"redis\"\nredis_url = \"{}\"\nkey_prefix = \"test{}:\"\n{extra}", redis.url(), redis.port)
}

/// Script calls Redis has run (`EVALSHA`, and `EVAL` for a script it had to load).
fn script_calls(redis: &RedisServer) -> u64 {
    let stats = redis.command("INFO commandstats").expect("redis answers");
    stats
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| l.split("calls=").nth(1)?.split(',').next()?.parse::<u64>().ok())
        .sum()
}

/// The shared requests bucket's level (requests, fractional: the script keeps 1/60,000ths), as
/// last written; a missing hash is a full bucket.
fn requests_level(redis: &RedisServer, deployment: &str, full: u64) -> f64 {
    let reply = redis.command(&format!("HGET test{}:{{{deployment}}} r", redis.port)).expect("redis answers");
    // `$<len>\r\n<value>\r\n`, or `$-1` when there is no hash.
    match reply.lines().nth(1) {
        Some(value) => value.trim().parse::<f64>().unwrap() / 60_000.0,
        None => full as f64,
    }
}

/// `per_client` requests from each of four clients at each gateway, all at once.
async fn hammer(client: &Client, gateways: &[process::Gateway], per_client: usize) -> Vec<Reply> {
    let mut tasks = Vec::new();
    for gw in gateways {
        for _ in 0..4 {
            let (client, url) =
                (client.clone(), format!("http://{}/openai/deployments/leased/chat/completions", gw.addr));
            tasks.push(tokio::spawn(async move {
                let mut replies = Vec::with_capacity(per_client);
                for _ in 0..per_client {
                    replies.push(client.post(&url, &[("api-key", PRIMARY_KEY)], CHAT).await);
                }
                replies
            }));
        }
    }
    let mut replies = Vec::new();
    for task in tasks {
        replies.extend(task.await.unwrap());
    }
    replies
}

#[tokio::test]
async fn three_replicas_hammering_one_leased_deployment_admit_no_more_than_the_quota() {
    let Some(redis) = RedisServer::start("three_replicas_with_leases") else { return };
    let dir = tempfile::tempdir().unwrap();
    let mock = MockBackend::start(([127, 0, 0, 1], 0).into(), MockOptions::default()).await.unwrap();
    let tables = format!(
        "[limits]\n{}\n[[deployments]]\nname = \"leased\"\nmodel = \"m\"\nbackend = \"{}\"\nkeys = [\"{}\"]\n\
         requests_per_minute = 600\ntokens_per_minute = 10000000\nlease_requests = 20\n",
        limits(&redis, ""),
        mock.url(),
        stored(PRIMARY_KEY)
    );
    let replicas = Replicas::start(dir.path(), &tables).await;
    let gateways = &replicas.gateways;
    let client = Client::new();
    let started = Instant::now();

    // Within the quota (300 of 600 a minute): every request admitted, and Redis asked about one
    // lease of 20 rather than each request (a renewal in flight sends the replica's other
    // callers to Redis one by one meanwhile, so somewhat more than 300 / 20).
    let before = script_calls(&redis);
    let within = hammer(&client, gateways, 25).await;
    let calls = script_calls(&redis) - before;
    assert!(within.iter().all(|r| r.status == StatusCode::OK), "a request within the quota was refused");
    assert!(calls <= 300 / 3, "Redis ran {calls} script calls for 300 requests with leases of 20");

    // Then far past it: 720 more. A refused renewal is remembered until the refill alone would
    // hold a request, so the 429s do not each cost a call either.
    let before = script_calls(&redis);
    let past = hammer(&client, gateways, 60).await;
    let calls_past = script_calls(&redis) - before;
    let refused = past.iter().filter(|r| r.status != StatusCode::OK).count() as u64;
    let elapsed = started.elapsed();
    let mut admitted = 0;
    for reply in within.iter().chain(&past) {
        match reply.status {
            StatusCode::OK => admitted += 1,
            _ => assert_rate_limited(reply, "x-ratelimit-limit-requests", 600, "x-ratelimit-remaining-requests", 1),
        }
    }
    // No lease was held at the start, so the bound of `core::quota::lease` is the quota and its
    // refill alone (the README's bound adds replicas × lease for a window that starts with
    // leases held).
    let bound = allowance(600, elapsed);
    assert!(admitted <= bound, "3 replicas with leases admitted {admitted}; the quota allows {bound}");
    // The shared bucket ran dry (there were 429s), and at most a lease of 20 requests sits
    // unused in each replica: every other unit taken from it was admitted.
    assert!((admitted as usize) < within.len() + past.len(), "nothing was refused");
    assert!(admitted >= 600 - 3 * 20, "only {admitted} admitted: leases kept more than they hold");
    assert!(calls_past <= refused / 2, "Redis ran {calls_past} script calls for {refused} refusals");

    // Every request is in a ledger.
    assert_eq!(replicas.stop_and_count_ledger_lines(), within.len() + past.len());
}

/// The shared requests bucket once no call has changed it for 200 ms (background top-ups done).
async fn settled_level(redis: &RedisServer) -> f64 {
    let mut last = requests_level(redis, DEPLOYMENT, 60);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = requests_level(redis, DEPLOYMENT, 60);
        if now == last {
            return now;
        }
        last = now;
    }
}

/// Polls the shared requests bucket until it is above `level` (a lease given back), for at most
/// ten seconds; the level then.
async fn level_above(redis: &RedisServer, level: f64) -> f64 {
    let mut now = requests_level(redis, DEPLOYMENT, 60);
    for _ in 0..500 {
        if now > level {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        now = requests_level(redis, DEPLOYMENT, 60);
    }
    now
}

async fn admit_all(h: &Harness, n: usize) {
    for i in 0..n {
        let reply = h.client.post(&h.deployment_url("/chat/completions"), &[("api-key", PRIMARY_KEY)], CHAT).await;
        assert_eq!(reply.status, StatusCode::OK, "request {i}: {}", reply.text());
    }
}

#[tokio::test]
async fn an_idle_replicas_lease_goes_back_when_it_expires_and_at_shutdown() {
    let Some(redis) = RedisServer::start("lease_expiry") else { return };
    let clock = Arc::new(ManualClock::new(0));
    let h = Harness::with(Setup {
        deployment: "requests_per_minute = 60\nlease_requests = 30".into(),
        limits: limits(&redis, "lease_ms = 1000"),
        clock: Some(Arc::clone(&clock)),
        ..Setup::default()
    })
    .await;
    // A first lease is the request alone: the shared bucket has 59 (and what Redis's clock
    // refilled since, a request a second), and so do the headers.
    let reply = h.client.post(&h.deployment_url("/chat/completions"), &[("api-key", PRIMARY_KEY)], CHAT).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.number("x-ratelimit-remaining-requests"), 59);
    // Used faster than it expires, the lease grows (doubled at each top-up, up to 30).
    admit_all(&h, 20).await;
    let leased = settled_level(&redis).await;
    // (What Redis's clock refilled meanwhile only makes the level higher: `held` is at least this.)
    let held = 60.0 - 21.0 - leased;
    assert!(held >= 4.0, "the replica holds {held:.2} requests after 21 in a row (bucket at {leased})");

    // Not expired yet by the gateway's clock: nothing goes back (the sweeper ticks every 250 ms
    // of real time; two ticks pass).
    clock.advance_ms(999);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(requests_level(&redis, DEPLOYMENT, 60), leased, "a live lease was given back");
    // Expired: what is held goes back by the next tick, all of it.
    clock.advance_ms(1);
    let back = level_above(&redis, leased).await;
    assert!(back >= 60.0 - 21.0, "after the lease expired the bucket is at {back}: not all of it came back");

    // Five more take a new lease (twice what the last one admitted), then a graceful stop:
    // what it holds goes back before the gateway exits.
    admit_all(&h, 5).await;
    let before_stop = settled_level(&redis).await;
    assert!(before_stop <= 60.0 - 26.0 - 3.0, "no lease held before the stop (bucket at {before_stop})");
    let Harness { gateway, .. } = h;
    gateway.shutdown().await;
    let after = requests_level(&redis, DEPLOYMENT, 60);
    assert!(after >= 60.0 - 26.0, "the lease held at shutdown was not given back ({before_stop} → {after})");
}

#[tokio::test]
async fn what_a_lease_holds_still_admits_while_redis_is_down() {
    let Some(mut redis) = RedisServer::start("lease_outage") else { return };
    let h = Harness::with(Setup {
        deployment: "requests_per_minute = 60\nlease_requests = 30".into(),
        limits: limits(&redis, "on_store_error = \"fail-closed\"\nlease_ms = 60000\nstore_timeout_ms = 200"),
        clock: Some(Arc::new(ManualClock::new(0))),
        ..Setup::default()
    })
    .await;
    admit_all(&h, 20).await;
    settled_level(&redis).await;
    redis.kill();
    // What the lease holds was taken from the shared bucket already: admitted (with
    // `fail-closed` nothing else could be); once it is used up, 503.
    let url = h.deployment_url("/chat/completions");
    let mut from_the_lease = 0;
    let last = loop {
        let reply = h.client.post(&url, &[("api-key", PRIMARY_KEY)], CHAT).await;
        if reply.status != StatusCode::OK || from_the_lease > 30 {
            break reply;
        }
        from_the_lease += 1;
    };
    assert!((1..=30).contains(&from_the_lease), "{from_the_lease} admitted from a lease of at most 30");
    assert_eq!(last.status, StatusCode::SERVICE_UNAVAILABLE, "{}", last.text());
    assert_eq!(last.error_code(), "ServiceUnavailable");
}
