//! Quotas shared through a primary found by Sentinel (`redis_url = "redis+sentinel://..."`): a
//! real primary, its replica and a Sentinel. The primary is killed under load: the gateway
//! decides by `on_store_error` meanwhile, finds the promoted replica through the Sentinel by
//! itself, and the quota holds, with every request in the ledger. And a primary and a Sentinel
//! that speak only TLS.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::load::{self, SteadyLoad};
use common::quota::{allowance, assert_shared_quota_holds};
use common::redis_server::{RedisServer, Sentinel};
use common::*;
use http::StatusCode;

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
    let load = SteadyLoad::start(&h.client, h.deployment_url("/chat/completions"), 2, Duration::from_millis(5));
    load.ran(20).await;
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
    load.ran(20).await;
    let statuses = load.stop().await;
    let elapsed = started.elapsed();
    let (answered, admitted) = load::answered_and_admitted(&statuses);
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

/// A primary and a Sentinel that speak only TLS (`rediss+sentinel://`, a private CA as
/// `redis_ca_file`): the gateway asks the Sentinel over TLS, reaches the primary it names over
/// TLS, and the shared bucket holds.
#[tokio::test]
async fn a_primary_and_a_sentinel_that_speak_only_tls_carry_the_shared_bucket() {
    let pem = tempfile::tempdir().unwrap();
    common::pki::write(pem.path(), &common::pki::pki("redis"));
    let Some(primary) = RedisServer::start_tls("a_sentinel_that_speaks_only_tls", pem.path()) else { return };
    let sentinel = Sentinel::start(&primary);
    let h = Harness::with(Setup {
        deployment: "requests_per_minute = 5".into(),
        limits: format!(
            "store = \"redis\"\nredis_url = \"rediss+sentinel://127.0.0.1:{}/main\"\nredis_ca_file = {:?}\n\
             key_prefix = \"sentinel-tls:\"\non_store_error = \"fail-closed\"",
            sentinel.port,
            pem.path().join("ca.pem").display().to_string()
        ),
        ..Setup::default()
    })
    .await;
    assert_shared_quota_holds(&h, 5, 8).await;
    let samples = parse_metrics(&h.admin_text("/metrics").await);
    assert_eq!(metric(&samples, "tollgate_quota_store_up", &[]), 1.0);
    assert_eq!(metric(&samples, "tollgate_quota_store_errors_total", &[]), 0.0, "a call failed");
    let key = format!("sentinel-tls:{{{DEPLOYMENT}}}");
    assert_eq!(primary.cli(&["EXISTS", &key]).unwrap().trim(), "1", "the bucket is on the primary");
}
