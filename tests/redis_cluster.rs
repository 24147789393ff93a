//! Quotas shared through a real Redis Cluster (`redis_url = "redis+cluster://..."`): three
//! `redis-server --cluster-enabled yes` on free ports joined by `redis-cli --cluster create`.
//! Every level of an admission (deployment, consumer, its period quotas, pool backends) is kept
//! in the slot of its hash tag, so no call is ever refused with `CROSSSLOT`, and the quotas hold
//! across gateways as on one server. Each test skips only when Redis is not installed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::load::{self, SteadyLoad};
use common::quota::{allowance, assert_shared_quota_holds};
use common::redis_server::RedisCluster;
use common::*;
use http::StatusCode;

async fn samples(h: &Harness) -> Vec<Sample> {
    parse_metrics(&h.admin_text("/metrics").await)
}

/// The store answered every call: no error of any operation (a `CROSSSLOT` would be one), no
/// fallback, and it is up.
fn assert_store_clean(m: &[Sample]) {
    let errors: Vec<&Sample> =
        m.iter().filter(|s| s.name == "tollgate_quota_store_errors_total" && s.value != 0.0).collect();
    assert!(errors.is_empty(), "store errors: {errors:?}");
    let fallbacks: f64 = m.iter().filter(|s| s.name == "tollgate_quota_store_fallbacks_total").map(|s| s.value).sum();
    assert_eq!(fallbacks, 0.0, "admissions fell back");
    assert_eq!(metric(m, "tollgate_quota_store_up", &[]), 1.0);
}

/// Three gateways on one cluster share a deployment's buckets, a consumer's own buckets on it,
/// and a consumer's daily quota over two deployments whose keys live on different nodes: each
/// level admits no more than it allows, with no store error.
#[tokio::test]
async fn three_gateways_on_a_cluster_share_every_level_without_crossslot() {
    let Some(cluster) = RedisCluster::start("three_gateways_on_a_cluster_share_every_level", 3) else { return };
    let prefix = format!("test{}:", cluster.nodes[0].port);
    // A second deployment whose keys are on another node than the first's.
    let first_node = cluster.node_of(&format!("{prefix}{{{DEPLOYMENT}}}")).port;
    let other = (0..100)
        .map(|i| format!("other-{i}"))
        .find(|name| cluster.node_of(&format!("{prefix}{{{name}}}")).port != first_node)
        .unwrap();
    const BATCH: &str = "ClusterBatchConsumerKey012345678";
    const DAILY: &str = "ClusterDailyConsumerKey012345678";
    const OTHER_KEY: &str = "ClusterOtherDeploymentKey0123456";
    let tables = format!(
        "[[consumers]]\nname = \"batch\"\nkeys = [\"{}\"]\n[[consumers.grants]]\ndeployment = \"{DEPLOYMENT}\"\nrequests_per_minute = 4\n\
         [[consumers]]\nname = \"daily\"\nkeys = [\"{}\"]\nrequests_per_day = 3\n[[consumers.grants]]\ndeployment = \"{DEPLOYMENT}\"\n[[consumers.grants]]\ndeployment = \"{other}\"\nrequests_per_minute = 10\nrequests_per_day = 50\n",
        stored(BATCH),
        stored(DAILY)
    );
    let setup = || Setup {
        deployment: "requests_per_minute = 10".into(),
        more_deployments: format!(
            "[[deployments]]\nname = \"{other}\"\nmodel = \"m\"\nbackend = \"{{mock}}\"\nkeys = [\"{}\"]\nrequests_per_minute = 10\n",
            stored(OTHER_KEY)
        ),
        tables: tables.clone(),
        limits: format!(
            "store = \"redis\"\nredis_url = \"{}\"\nkey_prefix = \"{prefix}\"\non_store_error = \"fail-closed\"",
            cluster.url()
        ),
        ..Setup::default()
    };
    let gateways = [Harness::with(setup()).await, Harness::with(setup()).await, Harness::with(setup()).await];
    let started = Instant::now();
    let call = |key: &'static str, deployment: String, n: usize| {
        let gateways = &gateways;
        async move {
            let (mut admitted, mut over_quota) = (0, 0);
            for i in 0..n {
                let h = &gateways[i % 3];
                let url = h.url(&format!("/openai/deployments/{deployment}/chat/completions"));
                let reply = h.client.post(&url, &[("api-key", key)], CHAT).await;
                match reply.status {
                    StatusCode::OK => admitted += 1,
                    StatusCode::TOO_MANY_REQUESTS => assert_eq!(reply.error_code(), "TooManyRequests"),
                    StatusCode::FORBIDDEN => {
                        assert_eq!(reply.error_code(), "QuotaExceeded", "{}", reply.text());
                        over_quota += 1;
                    }
                    other => panic!("unexpected {other}: {}", reply.text()),
                }
            }
            (admitted, over_quota)
        }
    };
    let (batch, _) = call(BATCH, DEPLOYMENT.into(), 9).await;
    // The daily quota is the consumer's over both deployments (its hash in a slot of its own).
    let (daily_first, refused_first) = call(DAILY, DEPLOYMENT.into(), 2).await;
    let (daily_other, refused_other) = call(DAILY, other.clone(), 4).await;
    let elapsed = started.elapsed();
    assert!(batch >= 4 && batch <= allowance(4, elapsed), "batch admitted {batch} with 4 a minute");
    assert_eq!(daily_first + daily_other, 3, "three a day over two deployments and three gateways");
    assert_eq!(refused_first + refused_other, 3, "the rest refused for the daily quota");
    // A request the consumer's daily quota refused gave back what the first call took from the
    // deployment's buckets (on the cluster the two are taken by two calls).
    let mut remaining = 0;
    for _ in 0..200 {
        remaining = gateways[0].admin("/quotas").await[&other]["remainingRequests"].as_u64().unwrap();
        if remaining >= 10 - daily_other {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        remaining >= 10 - daily_other && remaining <= 10 - daily_other + allowance(10, started.elapsed()) - 10,
        "{other}: {remaining} requests left after {daily_other} admitted and {refused_other} refused"
    );
    let (endpoint, _) = call(PRIMARY_KEY, DEPLOYMENT.into(), 12).await;
    let elapsed = started.elapsed();
    assert!(
        batch + daily_first + endpoint <= allowance(10, elapsed),
        "{batch} + {daily_first} + {endpoint} past the deployment's 10"
    );
    for h in &gateways {
        // Each gateway reads the shared count (over keys of several slots).
        let usage = h.admin("/projects/default/consumers/daily/usage").await;
        let quotas = usage["quotas"].as_array().unwrap();
        let own = quotas.iter().find(|q| q["scope"] == "*" && q["quota"] == "requests_per_day").unwrap();
        assert_eq!((own["used"].as_u64(), own["remaining"].as_u64()), (Some(3), Some(0)), "{usage}");
        // The grant's daily count took only what was admitted on it (the refused given back).
        let grant = quotas.iter().find(|q| q["scope"] == other.as_str() && q["quota"] == "requests_per_day").unwrap();
        assert_eq!(grant["used"].as_u64(), Some(daily_other), "{usage}");
        assert_store_clean(&samples(h).await);
    }
    // The keys are where their hash tags put them: the deployment's buckets and its consumers'
    // on its node.
    let key = format!("{prefix}{{{DEPLOYMENT}}}");
    let node = cluster.node_of(&key);
    assert_eq!(node.command(&format!("EXISTS {key}")).unwrap().trim(), ":1", "{key} on its node");
    let grant = format!("{key}:consumer:default/batch");
    assert_eq!(node.command(&format!("EXISTS {grant}")).unwrap().trim(), ":1", "{grant} beside it");
}

/// A cluster of three primaries with a replica each; the primary holding the deployment's slot
/// is killed under load. The gateway decides by `on_store_error` meanwhile, follows the
/// promoted replica by itself (the slot map is learnt again), and the quota holds, with every
/// request in the ledger.
#[tokio::test]
async fn a_cluster_primary_killed_under_load_is_followed_to_its_replica() {
    let Some(mut cluster) = RedisCluster::start_with_replicas("a_cluster_primary_killed_under_load", 3, 1) else {
        return;
    };
    let prefix = format!("test{}:", cluster.nodes[0].port);
    let key = format!("{prefix}{{{DEPLOYMENT}}}");
    let ledger = tempfile::tempdir().unwrap().keep().join("usage.jsonl");
    const PER_MINUTE: u64 = 40;
    let h = Harness::with(Setup {
        deployment: format!("requests_per_minute = {PER_MINUTE}"),
        limits: format!(
            "store = \"redis\"\nredis_url = \"{}\"\nkey_prefix = \"{prefix}\"\non_store_error = \"local\"\nstore_timeout_ms = 200",
            cluster.url()
        ),
        ledger: Some(ledger.clone()),
        ..Setup::default()
    })
    .await;
    let started = Instant::now();
    let load = SteadyLoad::start(&h.client, h.deployment_url("/chat/completions"), 2, Duration::from_millis(5));
    load.ran(20).await;
    let old = cluster.primary_of(&key).unwrap();
    cluster.nodes[old].kill();
    let mut promoted = None;
    for _ in 0..1000 {
        promoted = cluster.primary_of(&key).filter(|&p| p != old);
        if promoted.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let Some(promoted) = promoted else {
        let live = cluster.nodes.iter().find(|n| n.command("PING").is_some()).unwrap();
        panic!("no replica took the slot over: {}", live.command("CLUSTER NODES").unwrap_or_default());
    };
    // The gateway admits from the cluster again by itself: a stretch of load with no fallback.
    let fallbacks =
        || async { metric(&samples(&h).await, "tollgate_quota_store_fallbacks_total", &[("mode", "local")]) };
    let mut settled = false;
    for _ in 0..100 {
        let before = fallbacks().await;
        load.ran(20).await;
        if fallbacks().await == before && metric(&samples(&h).await, "tollgate_quota_store_up", &[]) == 1.0 {
            settled = true;
            break;
        }
    }
    assert!(settled, "the gateway kept falling back after the failover");
    let statuses = load.stop().await;
    let elapsed = started.elapsed();
    let (answered, admitted) = load::answered_and_admitted(&statuses);
    // The shared bucket, plus at most the local fallback's own minute while the slot had no
    // primary, plus what the dead primary had not yet sent its replica (a few requests).
    let bound = 2 * allowance(PER_MINUTE, elapsed) + 5;
    assert!(admitted >= PER_MINUTE && admitted <= bound, "admitted {admitted} over the failover; bound {bound}");
    let node = &cluster.nodes[promoted];
    assert_eq!(node.command(&format!("EXISTS {key}")).unwrap().trim(), ":1", "the buckets on the promoted node");
    let Harness { gateway, .. } = h;
    gateway.shutdown().await;
    let lines = std::fs::read_to_string(&ledger).unwrap().lines().count();
    assert_eq!(lines, answered, "ledger lines vs answered requests");
}

/// The deployment's slot is migrated to another node under load (`ASK` while it moves, `MOVED`
/// after): the client follows both, so no admission fails (the store is `fail-closed`: one
/// would be a 503) and the quota holds exactly as on one node.
#[tokio::test]
async fn a_slot_migrated_under_load_is_followed_with_no_failed_admission() {
    let Some(cluster) = RedisCluster::start("a_slot_migrated_under_load", 3) else { return };
    let prefix = format!("test{}:", cluster.nodes[0].port);
    let key = format!("{prefix}{{{DEPLOYMENT}}}");
    const PER_MINUTE: u64 = 40;
    let h = Harness::with(Setup {
        deployment: format!("requests_per_minute = {PER_MINUTE}"),
        limits: format!(
            "store = \"redis\"\nredis_url = \"{}\"\nkey_prefix = \"{prefix}\"\non_store_error = \"fail-closed\"",
            cluster.url()
        ),
        ..Setup::default()
    })
    .await;
    let started = Instant::now();
    let load = SteadyLoad::start(&h.client, h.deployment_url("/chat/completions"), 2, Duration::from_millis(2));
    load.ran(20).await;
    // Move the slot as `redis-cli --cluster reshard` does, a step at a time under the load.
    let (from, to) = {
        let from = cluster.primary_of(&key).unwrap();
        (from, (from + 1) % 3)
    };
    let (src, dst) = (&cluster.nodes[from], &cluster.nodes[to]);
    let id =
        |n: &common::redis_server::RedisServer| n.command("CLUSTER MYID").unwrap().lines().nth(1).unwrap().to_owned();
    let (src_id, dst_id) = (id(src), id(dst));
    let slot = src.command(&format!("CLUSTER KEYSLOT {key}")).unwrap().trim_start_matches(':').trim().to_owned();
    let ok = |reply: Option<String>| assert!(reply.as_deref().is_some_and(|r| r.starts_with("+OK")), "{reply:?}");
    ok(dst.command(&format!("CLUSTER SETSLOT {slot} IMPORTING {src_id}")));
    ok(src.command(&format!("CLUSTER SETSLOT {slot} MIGRATING {dst_id}")));
    load.ran(20).await; // new keys of the slot are asked for on the destination now (ASK)
    ok(src.command(&format!("MIGRATE 127.0.0.1 {} {key} 0 5000", dst.port)));
    load.ran(20).await; // the key is on the destination, the slot still the source's (ASK)
    for node in &cluster.nodes {
        ok(node.command(&format!("CLUSTER SETSLOT {slot} NODE {dst_id}")));
    }
    load.ran(40).await; // the slot is the destination's (MOVED)
    let statuses = load.stop().await;
    let elapsed = started.elapsed();
    let (_, admitted) = load::answered_and_admitted(&statuses);
    assert!(
        admitted >= PER_MINUTE && admitted <= allowance(PER_MINUTE, elapsed),
        "admitted {admitted} while the slot moved; the quota allows {}",
        allowance(PER_MINUTE, elapsed)
    );
    assert_eq!(dst.command(&format!("EXISTS {key}")).unwrap().trim(), ":1", "the buckets moved with the slot");
    assert_eq!(cluster.primary_of(&key), Some(to));
    let m = samples(&h).await;
    assert_eq!(
        metric(&m, "tollgate_quota_store_fallbacks_total", &[("mode", "fail-closed")]),
        0.0,
        "no admission failed"
    );
}

/// A cluster that speaks only TLS (`rediss+cluster://`, its nodes' certificates from a private
/// CA given as `redis_ca_file`): the shared bucket holds over it as over plain TCP.
#[tokio::test]
async fn a_tls_cluster_carries_the_shared_bucket() {
    let pem = tempfile::tempdir().unwrap();
    common::pki::write(pem.path(), &common::pki::pki("redis"));
    let Some(cluster) = RedisCluster::start_tls("a_tls_cluster_carries_the_shared_bucket", 3, pem.path()) else {
        return;
    };
    let h = Harness::with(Setup {
        deployment: "requests_per_minute = 3".into(),
        limits: format!(
            "store = \"redis\"\nredis_url = \"rediss+cluster://{}\"\nredis_ca_file = {:?}\non_store_error = \"fail-closed\"",
            cluster.addresses().join(","),
            pem.path().join("ca.pem").display().to_string()
        ),
        ..Setup::default()
    })
    .await;
    assert_shared_quota_holds(&h, 3, 5).await;
    assert_store_clean(&samples(&h).await);
}

/// Leases on a cluster: the lease script and the give-backs touch only the deployment's key, so
/// three gateways lease from one slot with no store error, and give back what they hold when
/// they stop.
#[tokio::test]
async fn leases_on_a_cluster_take_and_give_back_in_the_deployments_slot() {
    let Some(cluster) = RedisCluster::start("leases_on_a_cluster", 3) else { return };
    let prefix = format!("test{}:", cluster.nodes[0].port);
    let key = format!("{prefix}{{{DEPLOYMENT}}}");
    let level = || {
        let reply = cluster.node_of(&key).command(&format!("HGET {key} r")).unwrap();
        reply.lines().nth(1).unwrap().trim().parse::<f64>().unwrap() / 60_000.0
    };
    let setup = || Setup {
        deployment: "requests_per_minute = 60\nlease_requests = 20".into(),
        limits: format!(
            "store = \"redis\"\nredis_url = \"{}\"\nkey_prefix = \"{prefix}\"\non_store_error = \"fail-closed\"\nlease_ms = 60000",
            cluster.url()
        ),
        ..Setup::default()
    };
    let gateways = [Harness::with(setup()).await, Harness::with(setup()).await, Harness::with(setup()).await];
    for i in 0..30 {
        let h = &gateways[i % 3];
        let reply = h.client.post(&h.deployment_url("/chat/completions"), &[("api-key", PRIMARY_KEY)], CHAT).await;
        assert_eq!(reply.status, StatusCode::OK, "request {i}: {}", reply.text());
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // the last top-ups
    for h in &gateways {
        assert_store_clean(&samples(h).await);
    }
    // The leases grew with use (10 requests each): some of the bucket is held. (What Redis's
    // clock refilled meanwhile only makes the level higher: `held` is at least this.)
    let held = 60.0 - 30.0 - level();
    assert!(held >= 3.0, "the gateways hold {held:.2} requests after 30");
    for h in gateways {
        h.gateway.shutdown().await;
    }
    // Leases of a minute: only the stops gave back what they held, and all of it is back.
    let after = level();
    assert!(after >= 30.0, "bucket at {after} after 30 requests: leases not given back at shutdown");
}
