//! Quotas shared through a primary found by Sentinel (`redis_url = "redis+sentinel://..."`): a
//! real primary, its replica and a Sentinel. The primary is killed under load: the gateway
//! decides by `on_store_error` meanwhile, finds the promoted replica through the Sentinel by
//! itself, and the quota holds, with every request in the ledger.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::redis_server::{RedisServer, Sentinel};
use common::*;
use http::StatusCode;

/// How many a bucket of `per_minute` can admit over `elapsed`: the full minute plus the refill.
fn allowance(per_minute: u64, elapsed: Duration) -> u64 {
    per_minute + (elapsed.as_secs_f64() * per_minute as f64 / 60.0).floor() as u64
}

#[tokio::test]
async fn a_primary_killed_under_load_is_replaced_through_sentinel_and_the_quota_holds() {
    let test = "a_primary_killed_under_load_is_replaced_through_sentinel";
    let Some(mut primary) = RedisServer::start(test) else { return };
    let replica = RedisServer::start_replica(test, &primary).unwrap();
    let sentinel = Sentinel::start(&primary);
    let ledger = tempfile::tempdir().unwrap().keep().join("usage.jsonl");
    const PER_MINUTE: u64 = 40;
    let h = Harness::with(Setup {
        deployment: format!("requests_per_minute = {PER_MINUTE}"),
        limits: format!(
            "store = \"redis\"\nredis_url = \"redis+sentinel://127.0.0.1:{}/main\"\nkey_prefix = \"sentinel:\"\non_store_error = \"local\"\nstore_timeout_ms = 200",
            sentinel.port
        ),
        ledger: Some(ledger.clone()),
        ..Setup::default()
    })
    .await;
    let metrics = || async { parse_metrics(&h.admin_text("/metrics").await) };
    assert_eq!(metric(&metrics().await, "tollgate_quota_store_up", &[]), 1.0);
    let started = Instant::now();

    // A steady load from two clients, all through the failover.
    let running = Arc::new(AtomicBool::new(true));
    let made = Arc::new(AtomicUsize::new(0));
    let load: Vec<_> = (0..2)
        .map(|_| {
            let (client, url, running, made) =
                (h.client.clone(), h.deployment_url("/chat/completions"), Arc::clone(&running), Arc::clone(&made));
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                while running.load(Ordering::Relaxed) {
                    let reply = client.try_post(&url, &[("api-key", PRIMARY_KEY)], CHAT).await;
                    statuses.push(reply.map(|r| r.status));
                    made.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                statuses
            })
        })
        .collect();
    let load_ran = || async {
        let target = made.load(Ordering::Relaxed) + 20;
        while made.load(Ordering::Relaxed) < target {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    load_ran().await;
    let key = format!("sentinel:{{{DEPLOYMENT}}}");
    assert_eq!(replica.command(&format!("EXISTS {key}")).unwrap().trim(), ":1", "replicated before the kill");
    primary.kill();

    // The Sentinel promotes the replica; the gateway finds it by itself.
    let mut promoted = false;
    for _ in 0..1000 {
        if sentinel.primary_port() == Some(replica.port) {
            promoted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(promoted, "the Sentinel never promoted the replica");
    let mut recovered = false;
    for _ in 0..500 {
        let samples = metrics().await;
        if metric(&samples, "tollgate_quota_store_up", &[]) == 1.0
            && metric(&samples, "tollgate_quota_store_recoveries_total", &[]) >= 1.0
        {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(recovered, "the gateway never used the promoted primary");
    load_ran().await;
    running.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();

    let (mut answered, mut admitted) = (0, 0);
    for task in load {
        for status in task.await.unwrap() {
            let status = status.expect("a request of the load got no HTTP answer");
            assert!([StatusCode::OK, StatusCode::TOO_MANY_REQUESTS].contains(&status), "unexpected {status}");
            answered += 1;
            admitted += u64::from(status == StatusCode::OK);
        }
    }
    // The shared bucket (replicated to the new primary), plus at most the local fallback's own
    // minute (limit / replicas, one replica here) while the store was away, plus what the old
    // primary took and had not yet sent to its replica when it died (asynchronous replication:
    // under this load, a few requests).
    let bound = 2 * allowance(PER_MINUTE, elapsed) + 5;
    assert!(admitted >= PER_MINUTE && admitted <= bound, "admitted {admitted} over the failover; bound {bound}");
    assert!(metric(&metrics().await, "tollgate_quota_store_fallbacks_total", &[("mode", "local")]) >= 1.0);
    // The buckets live on the promoted primary now.
    let reply = h.client.post(&h.deployment_url("/chat/completions"), &[("api-key", PRIMARY_KEY)], CHAT).await;
    assert!(reply.status == StatusCode::OK || reply.status == StatusCode::TOO_MANY_REQUESTS, "{}", reply.text());
    assert_eq!(replica.command(&format!("EXISTS {key}")).unwrap().trim(), ":1");
    assert!(replica.command("INFO replication").unwrap().contains("role:master"));
    // Nothing lost: every answered request is in the ledger once the gateway has stopped.
    let Harness { gateway, .. } = h;
    gateway.shutdown().await;
    let lines = std::fs::read_to_string(&ledger).unwrap().lines().count();
    assert_eq!(lines, answered + 1, "ledger lines vs answered requests");
}
