//! Quotas shared through a real Redis (`[limits] store = "redis"`): replicas never admit more
//! than the one quota between them, 429s carry the right headers, and each `on_store_error` mode
//! behaves as documented when Redis is killed mid-load and restarted, with the ledger complete.
//! Each test starts its own `redis-server` on a free port and skips only when none is installed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::load::SteadyLoad;
use common::process::Replicas;
use common::quota::{allowance, assert_rate_limited, assert_shared_quota_holds};
use common::redis_server::RedisServer;
use common::*;
use http::{Method, StatusCode};
use tollgate::process::mock_backend::{MockBackend, MockOptions};

fn limits(redis: &RedisServer, extra: &str) -> String {
    format!("store = \"redis\"\nredis_url = \"{}\"\nkey_prefix = \"test{}:\"\n{extra}", redis.url(), redis.port)
}

#[tokio::test]
async fn two_gateways_share_one_bucket_and_each_429_says_when() {
    let Some(redis) = RedisServer::start("two_gateways_share_one_bucket") else { return };
    let setup =
        || Setup { deployment: "requests_per_minute = 6".into(), limits: limits(&redis, ""), ..Setup::default() };
    let (a, b) = (Harness::with(setup()).await, Harness::with(setup()).await);
    let started = Instant::now();
    let mut admitted = 0;
    for i in 0..10 {
        let h = if i % 2 == 0 { &a } else { &b };
        let reply = h.client.post(&h.deployment_url("/chat/completions"), &[("api-key", PRIMARY_KEY)], CHAT).await;
        match reply.status {
            StatusCode::OK => {
                admitted += 1;
                assert_eq!(reply.number("x-ratelimit-limit-requests"), 6);
            }
            _ => assert_rate_limited(&reply, "x-ratelimit-limit-requests", 6, "x-ratelimit-remaining-requests", 1),
        }
    }
    let bound = allowance(6, started.elapsed());
    assert!(admitted >= 6 && admitted <= bound, "admitted {admitted} by two gateways, one quota allows {bound}");
    // Both gateways read the same buckets (the later read differs only by the refill since, and
    // by refunds still on their way).
    let (first, second) = (a.admin("/quotas").await[DEPLOYMENT].clone(), b.admin("/quotas").await[DEPLOYMENT].clone());
    assert_eq!((first["requestsPerMinute"].as_u64(), first["tokensPerMinute"].as_u64()), (Some(6), Some(200_000)));
    assert_eq!(first["requestsPerMinute"], second["requestsPerMinute"]);
    let tokens = |q: &serde_json::Value| q["remainingTokens"].as_u64().unwrap();
    assert!(tokens(&first) <= tokens(&second), "{first} then {second}");
    let requests = |q: &serde_json::Value| q["remainingRequests"].as_u64().unwrap();
    assert!(requests(&first) <= requests(&second), "{first} then {second}");
    // The key carries the prefix, and expires once the buckets would be full again.
    let ttl = redis.command(&format!("PTTL test{}:{{{DEPLOYMENT}}}", redis.port)).unwrap();
    let ttl: i64 = ttl.trim_start_matches(':').trim().parse().unwrap();
    assert!(ttl > 0 && ttl <= 61_000, "PTTL {ttl}");
}

#[tokio::test]
async fn rediss_with_a_private_ca_carries_the_shared_bucket_over_tls() {
    let pem = tempfile::tempdir().unwrap();
    common::pki::write(pem.path(), &common::pki::pki("redis"));
    let Some(redis) = RedisServer::start_tls("rediss_with_a_private_ca", pem.path()) else { return };
    let h = Harness::with(Setup {
        deployment: "requests_per_minute = 3".into(),
        limits: format!(
            "store = \"redis\"\nredis_url = \"rediss://localhost:{}\"\nredis_ca_file = {:?}\non_store_error = \"fail-closed\"",
            redis.port,
            pem.path().join("ca.pem").display().to_string()
        ),
        ..Setup::default()
    })
    .await;
    assert_shared_quota_holds(&h, 3, 5).await;
    let metrics = h.client.call(Method::GET, &format!("http://{}/metrics", h.gateway.admin_addr), &[], "").await;
    let samples = parse_metrics(&metrics.text());
    assert_eq!(metric(&samples, "tollgate_quota_store_up", &[]), 1.0);
    assert_eq!(metric(&samples, "tollgate_quota_store_fallbacks_total", &[("mode", "fail-closed")]), 0.0);
}

#[tokio::test]
async fn three_processes_hammered_together_admit_no_more_than_the_one_quota() {
    let Some(redis) = RedisServer::start("three_processes_hammered_together") else { return };
    let dir = tempfile::tempdir().unwrap();
    let mock = MockBackend::start(([127, 0, 0, 1], 0).into(), MockOptions::default()).await.unwrap();
    let deployment = |name: &str, rpm: u64, tpm: u64| {
        format!(
            "[[deployments]]\nname = \"{name}\"\nmodel = \"m\"\nbackend = \"{}\"\nkeys = [\"{}\"]\nrequests_per_minute = {rpm}\ntokens_per_minute = {tpm}\n",
            mock.url(),
            stored(PRIMARY_KEY)
        )
    };
    let tables = format!(
        "[limits]\n{}\n{}{}",
        limits(&redis, ""),
        deployment(DEPLOYMENT, 30, 1_000_000),
        deployment("tokens", 1_000_000, 900)
    );
    let replicas = Replicas::start(dir.path(), &tables).await;
    let gateways = &replicas.gateways;
    let client = Client::new();
    // 30 requests a minute for DEPLOYMENT; 900 tokens a minute for "tokens", where a request
    // reserves its prompt + max_tokens 60 and the mock answers 5 completion tokens.
    let token_body = r#"{"messages":[{"role":"user","content":"How many tokens?"}],"max_tokens":60}"#;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for gw in gateways {
        for _ in 0..3 {
            let (client, addr) = (client.clone(), gw.addr);
            tasks.push(tokio::spawn(async move {
                let mut replies = Vec::new();
                for _ in 0..12 {
                    let url = format!("http://{addr}/openai/deployments/{DEPLOYMENT}/chat/completions");
                    replies.push(("requests", client.post(&url, &[("api-key", PRIMARY_KEY)], CHAT).await));
                    let url = format!("http://{addr}/openai/deployments/tokens/chat/completions");
                    let headers = [("api-key", PRIMARY_KEY), ("x-mock-completion-tokens", "5")];
                    replies.push(("tokens", client.post(&url, &headers, token_body).await));
                }
                replies
            }));
        }
    }
    let mut replies = Vec::new();
    for task in tasks {
        replies.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed();
    let (mut admitted, mut limited) = (0, 0);
    for (deployment, reply) in &replies {
        match (*deployment, reply.status) {
            ("requests", StatusCode::OK) => admitted += 1,
            ("requests", _) => {
                limited += 1;
                assert_rate_limited(reply, "x-ratelimit-limit-requests", 30, "x-ratelimit-remaining-requests", 1);
            }
            (_, StatusCode::OK) => {}
            // A reservation is the prompt (about 10) + max_tokens 60: at most 80.
            _ => assert_rate_limited(reply, "x-ratelimit-limit-tokens", 900, "x-ratelimit-remaining-tokens", 80),
        }
    }
    let bound = allowance(30, elapsed);
    assert!(admitted >= 30 && admitted <= bound, "3 replicas admitted {admitted}; the one quota allows {bound}");
    assert_eq!(admitted + limited, 108);
    // Tokens: what was billed (reported usage, summed over the replicas) fits the one quota.
    let mut billed = 0;
    let mut token_admitted = 0;
    for gw in gateways {
        let (name, value) = reader_auth();
        let usage = client.call(Method::GET, &format!("http://{}/usage", gw.admin), &[(name, &value)], "").await.json();
        billed += usage["tokens"]["total_tokens"].as_u64().unwrap();
        token_admitted +=
            usage["tokens"]["requests"].as_u64().unwrap() - usage["tokens"]["rate_limited_requests"].as_u64().unwrap();
    }
    let token_bound = allowance(900, elapsed);
    assert!(token_admitted > 0 && billed <= token_bound, "billed {billed} tokens; the one quota allows {token_bound}");
    assert!(token_admitted < 108, "the tokens quota never refused anything");
    // Every request is in a ledger.
    assert_eq!(replicas.stop_and_count_ledger_lines(), replies.len());
}

/// Kills Redis under a steady load and restarts it, for one `on_store_error` mode; returns what
/// the load saw while Redis was down, after checking what holds in every mode.
async fn outage(mut redis: RedisServer, mode: &str, extra: &str, deployment: &str) -> Vec<Reply> {
    let ledger = tempfile::tempdir().unwrap().keep().join("usage.jsonl");
    let h = Harness::with(Setup {
        deployment: deployment.into(),
        limits: limits(&redis, &format!("on_store_error = \"{mode}\"\nstore_timeout_ms = 200\n{extra}")),
        ledger: Some(ledger.clone()),
        ..Setup::default()
    })
    .await;
    let metrics = || async {
        parse_metrics(
            &h.client.call(Method::GET, &format!("http://{}/metrics", h.gateway.admin_addr), &[], "").await.text(),
        )
    };
    assert_eq!(metric(&metrics().await, "tollgate_quota_store_up", &[]), 1.0);

    // A steady load from two clients, all through the outage.
    let load = SteadyLoad::start(&h.client, h.deployment_url("/chat/completions"), 2, Duration::from_millis(5));
    load.ran(20).await;
    redis.kill();
    let mut down = Vec::new();
    for _ in 0..6 {
        down.push(h.client.post(&h.deployment_url("/chat/completions"), &[("api-key", PRIMARY_KEY)], CHAT).await);
    }
    let samples = metrics().await;
    assert_eq!(metric(&samples, "tollgate_quota_store_up", &[]), 0.0);
    // Whichever call met the dead Redis first (an admission or a batch of reconciliations).
    assert!(metric(&samples, "tollgate_quota_store_errors_total", &[]) >= 1.0);
    assert!(metric(&samples, "tollgate_quota_store_fallbacks_total", &[("mode", mode)]) >= 6.0);
    redis.restart();
    let mut recovered = false;
    for _ in 0..500 {
        if metric(&metrics().await, "tollgate_quota_store_up", &[]) == 1.0 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(recovered, "the gateway never saw Redis come back");
    assert_eq!(metric(&metrics().await, "tollgate_quota_store_recoveries_total", &[]), 1.0);
    load.ran(20).await;
    let mut answered = 0;
    for status in load.stop().await {
        let status = status.expect("a request of the load got no HTTP answer");
        let expected = [StatusCode::OK, StatusCode::TOO_MANY_REQUESTS, StatusCode::SERVICE_UNAVAILABLE];
        assert!(expected.contains(&status), "{mode}: unexpected {status}");
        if mode != "fail-closed" {
            assert_ne!(status, StatusCode::SERVICE_UNAVAILABLE, "{mode} never refuses for the store");
        }
        answered += 1;
    }
    // After recovery the shared bucket is used again: its key exists in the restarted Redis.
    let reply = h.client.post(&h.deployment_url("/chat/completions"), &[("api-key", PRIMARY_KEY)], CHAT).await;
    assert!(reply.status == StatusCode::OK || reply.status == StatusCode::TOO_MANY_REQUESTS);
    let exists = redis.command(&format!("EXISTS test{}:{{{DEPLOYMENT}}}", redis.port)).unwrap();
    assert_eq!(exists.trim(), ":1", "no shared bucket after recovery");
    // Nothing lost: every answered request is in the ledger once the gateway has stopped.
    let authenticated = answered + down.len() + 1;
    let Harness { gateway, .. } = h;
    gateway.shutdown().await;
    let lines = std::fs::read_to_string(&ledger).unwrap().lines().count();
    assert_eq!(lines, authenticated, "{mode}: ledger lines vs answered requests");
    down
}

#[tokio::test]
async fn fail_open_admits_without_a_quota_while_redis_is_down() {
    let Some(redis) = RedisServer::start("fail_open") else { return };
    let down = outage(redis, "fail-open", "", "requests_per_minute = 100000").await;
    for reply in &down {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        // No quota was consulted, so none is reported.
        assert!(reply.headers.get("x-ratelimit-remaining-requests").is_none());
    }
}

#[tokio::test]
async fn fail_closed_refuses_with_503_while_redis_is_down() {
    let Some(redis) = RedisServer::start("fail_closed") else { return };
    let down = outage(redis, "fail-closed", "", "requests_per_minute = 100000").await;
    for reply in &down {
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{}", reply.text());
        assert_eq!(reply.error_code(), "ServiceUnavailable");
        assert_eq!(reply.header("x-ms-error-code"), "ServiceUnavailable");
        assert_eq!(reply.header("retry-after"), "1");
        assert!(reply.json()["error"]["message"].as_str().unwrap().contains("fail-closed"));
    }
}

#[tokio::test]
async fn local_holds_each_replica_to_its_share_while_redis_is_down() {
    let Some(redis) = RedisServer::start("local") else { return };
    // A requests quota of 8 shared by 4 replicas: while Redis is down this one holds a share of 2
    // (the load, running all along, competes for it).
    let started = Instant::now();
    let down = outage(redis, "local", "replicas = 4", "requests_per_minute = 8").await;
    let admitted = down.iter().filter(|r| r.status == StatusCode::OK).count() as u64;
    let bound = allowance(2, started.elapsed());
    assert!(admitted <= bound, "local share of 8 / 4 replicas admitted {admitted} of 6 (allowed {bound})");
    for reply in down.iter().filter(|r| r.status != StatusCode::OK) {
        assert_rate_limited(reply, "x-ratelimit-limit-requests", 2, "x-ratelimit-remaining-requests", 1);
    }
}

/// The scripts' arithmetic at the largest limit the configuration accepts (10^9 a minute), made
/// deterministic by setting the buckets' time in the future (no refill can happen): levels are
/// exact integers in 1/60,000 units, written back without rounding.
#[test]
fn the_scripts_are_exact_at_the_largest_limits() {
    use tollgate::state::quota_store::scripts;
    let Some(redis) = RedisServer::start("the_scripts_are_exact_at_the_largest_limits") else { return };
    let mut con = redis::Client::open(redis.url()).unwrap().get_connection().unwrap();
    let (admit, reconcile) = (redis::Script::new(&scripts::admit()), redis::Script::new(&scripts::reconcile()));
    const U: i64 = 60_000;
    const LIMIT: i64 = 1_000_000_000;
    let freeze = |con: &mut redis::Connection| {
        let () = redis::cmd("HSET").arg("k").arg("at").arg("99999999999999").query(con).unwrap();
    };
    let full = (LIMIT * U).to_string();
    let () = redis::cmd("HSET").arg("k").arg("r").arg(&full).arg("t").arg(&full).query(&mut con).unwrap();
    let run = |con: &mut redis::Connection, script: &redis::Script, args: &[i64]| -> Vec<i64> {
        freeze(con);
        let mut invocation = script.key("k");
        for arg in args {
            invocation.arg(*arg);
        }
        // Reconciliations carry a replica id and a batch number: each call here a new batch.
        if args.len() == 3 {
            invocation.arg("test-replica").arg(redis::cmd("INCR").arg("seq").query::<i64>(con).unwrap());
        }
        match invocation.invoke::<redis::Value>(con).unwrap() {
            redis::Value::Array(items) => items.into_iter().map(|v| redis::from_redis_value(v).unwrap()).collect(),
            other => vec![redis::from_redis_value(other).unwrap()],
        }
    };
    let level = |con: &mut redis::Connection, field: &str| -> String {
        redis::cmd("HGET").arg("k").arg(field).query(con).unwrap()
    };
    // Take all but one token: the level is exactly one token (60,000 units).
    assert_eq!(run(&mut con, &admit, &[LIMIT, LIMIT, LIMIT - 1, 1]), vec![1, (LIMIT - 1) * U, U]);
    assert_eq!(level(&mut con, "r"), ((LIMIT - 1) * U).to_string(), "no exponent, no rounding");
    // Two tokens do not fit: refused, nothing taken.
    assert_eq!(run(&mut con, &admit, &[LIMIT, LIMIT, 2, 1]), vec![0, (LIMIT - 1) * U, U]);
    // A charge of 5 more than reserved goes into debt; a read changes nothing.
    run(&mut con, &reconcile, &[LIMIT, LIMIT, -5]);
    assert_eq!(run(&mut con, &admit, &[LIMIT, LIMIT, 0, 0]), vec![0, (LIMIT - 1) * U, -4 * U]);
    // A refund never fills past capacity.
    run(&mut con, &reconcile, &[LIMIT, LIMIT, 2 * LIMIT]);
    assert_eq!(level(&mut con, "t"), full);
    // Lower limits clamp the levels (no free refill past the new capacity).
    assert_eq!(run(&mut con, &admit, &[10, 10, 0, 0]), vec![0, 10 * U, 10 * U]);
    // A batch sent again (same replica, same number) is not applied twice; a newer one is, and
    // another replica's numbers are its own.
    let charge = |con: &mut redis::Connection, replica: &str, seq: i64| -> i64 {
        freeze(con);
        reconcile.key("k").arg(10).arg(10).arg(-1).arg(replica).arg(seq).invoke::<i64>(con).unwrap()
    };
    assert_eq!(charge(&mut con, "a", 1), 1);
    assert_eq!(charge(&mut con, "a", 1), 0, "the same batch again changes nothing");
    assert_eq!(charge(&mut con, "a", 2), 1);
    assert_eq!(charge(&mut con, "b", 1), 1);
    assert_eq!(level(&mut con, "t"), (7 * U).to_string(), "three charges of one token, not four");
}

/// Redis's clock in milliseconds (what the scripts use).
fn redis_time_ms(redis: &RedisServer) -> i64 {
    let reply = redis.command("TIME").unwrap();
    let numbers: Vec<i64> = reply.lines().filter_map(|l| l.parse().ok()).collect();
    numbers[0] * 1000 + numbers[1] / 1000
}

/// A TCP proxy in front of Redis whose answers can be held back: Redis runs what it gets at
/// once, but while `slow` is set its replies reach the gateway only after 300 ms (past
/// `store_timeout_ms`): a Redis that is slow to answer, not down.
async fn slow_answering_proxy(redis_port: u16, slow: Arc<AtomicBool>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", redis_port)).await else { continue };
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            tokio::spawn(async move { tokio::io::copy(&mut client_read, &mut server_write).await });
            let slow = Arc::clone(&slow);
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = server_read.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    if slow.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    if client_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

/// A reconciliation whose answer comes after `store_timeout_ms` was run by Redis all the same;
/// the gateway sends it again once Redis answers in time, and the script must not apply it
/// twice. The bucket level afterwards is the one computed by hand: capacity - what the request
/// used, plus at most the refill since the request started.
#[tokio::test]
async fn a_reconciliation_that_timed_out_but_ran_is_not_applied_twice() {
    let Some(redis) = RedisServer::start("a_reconciliation_that_timed_out_but_ran") else { return };
    const TPM: i64 = 200;
    const U: i64 = 60_000;
    let slow = Arc::new(AtomicBool::new(false));
    let proxy = slow_answering_proxy(redis.port, Arc::clone(&slow)).await;
    let h = Harness::with(Setup {
        limits: format!(
            "store = \"redis\"\nredis_url = \"redis://127.0.0.1:{proxy}\"\nkey_prefix = \"test{}:\"\nstore_timeout_ms = 100",
            redis.port
        ),
        deployment: format!("tokens_per_minute = {TPM}\ndefault_max_tokens = 1"),
        ..Setup::default()
    })
    .await;
    let before_ms = redis_time_ms(&redis);
    // A first request, settled normally: Redis has the reconcile script from now on (a call that
    // only gets NOSCRIPT never ran, and proves nothing).
    let warm = h.client.post(&h.deployment_url("/chat/completions"), &[("api-key", PRIMARY_KEY)], CHAT).await;
    let warm_used = warm.json()["usage"]["total_tokens"].as_i64().unwrap();
    h.gateway.gateway.quota_store().flush().await;
    // Admitted with a reservation of prompt + 1; the stream uses prompt + 40, so its settlement
    // is a charge, sent when the stream ends, while Redis's answers are slow.
    let headers = [("api-key", PRIMARY_KEY), ("x-mock-completion-tokens", "40"), ("x-mock-tokens-per-second", "200")];
    let response = h.client.send(Method::POST, &h.deployment_url("/chat/completions"), &headers, STREAM_CHAT).await;
    assert_eq!(response.status(), StatusCode::OK);
    slow.store(true, Ordering::SeqCst);
    let text =
        String::from_utf8(http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes().to_vec())
            .unwrap();
    let usage: serde_json::Value = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v.get("usage").is_some_and(|u| !u.is_null()))
        .unwrap()["usage"]
        .clone();
    let used = usage["total_tokens"].as_i64().unwrap();
    let metrics_url = format!("http://{}/metrics", h.gateway.admin_addr);
    let samples = || async { parse_metrics(&h.client.call(Method::GET, &metrics_url, &[], "").await.text()) };
    let mut timed_out = false;
    for _ in 0..500 {
        if metric(&samples().await, "tollgate_quota_store_errors_total", &[("op", "reconcile")]) >= 1.0 {
            timed_out = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(timed_out, "the reconciliation's answer came too late");
    // Redis answers in time again: the probe brings the store back and the batch is sent again.
    slow.store(false, Ordering::SeqCst);
    let mut recovered = false;
    for _ in 0..500 {
        if metric(&samples().await, "tollgate_quota_store_recoveries_total", &[]) >= 1.0 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(recovered, "the store recovered");
    h.gateway.gateway.quota_store().flush().await;
    let key = format!("test{}:{{{DEPLOYMENT}}}", redis.port);
    let reply = redis.command(&format!("HMGET {key} t at")).unwrap();
    let fields: Vec<i64> = reply.lines().filter_map(|l| l.parse().ok()).collect();
    let (level, at) = (fields[0], fields[1]);
    let floor = (TPM - warm_used - used) * U;
    let refill_bound = (at - before_ms) * TPM;
    assert!(
        level >= floor && level <= floor + refill_bound,
        "tokens level {level} (units of 1/{U}): by hand {floor} plus at most {refill_bound} of refill (a second charge would take {} more)",
        (used - 11) * U
    );
}

/// `retry-after-ms` from the shared buckets is exact: with the bucket's time set in the future
/// (Redis refills nothing), the wait is the deficit over the rate, to the millisecond.
#[tokio::test]
async fn retry_after_from_the_shared_buckets_is_exact() {
    let Some(redis) = RedisServer::start("retry_after_from_the_shared_buckets_is_exact") else { return };
    let h = Harness::with(Setup {
        deployment: "requests_per_minute = 6\ntokens_per_minute = 6000".into(),
        limits: limits(&redis, ""),
        ..Setup::default()
    })
    .await;
    const U: i64 = 60_000;
    let key = format!("test{}:{{{DEPLOYMENT}}}", redis.port);
    let url = h.deployment_url("/chat/completions");
    // No request left: one comes back in 60 s / 6 = 10 s.
    redis.command(&format!("HSET {key} r 0 t {} at 99999999999999", 6000 * U)).unwrap();
    let reply = h.client.post(&url, &[("api-key", PRIMARY_KEY)], CHAT).await;
    assert_rate_limited(&reply, "x-ratelimit-limit-requests", 6, "x-ratelimit-remaining-requests", 1);
    assert_eq!(reply.number("retry-after-ms"), 10_000);
    assert_eq!(reply.number("retry-after"), 10);
    // Requests left, 5 tokens: a reservation of R waits (R - 5) tokens at 100 tokens a second.
    redis.command(&format!("HSET {key} r {} t {} at 99999999999999", 6 * U, 5 * U)).unwrap();
    let body = r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":100}"#;
    let reply = h.client.post(&url, &[("api-key", PRIMARY_KEY)], body).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    let reserved = 100
        + tollgate::core::estimate::estimate(
            tollgate::core::api::ApiRoute::ChatCompletions,
            body.as_bytes(),
            tollgate::core::estimate::Tokenizer::Bpe,
        )
        .unwrap()
        .prompt_tokens;
    assert_eq!(reply.number("retry-after-ms"), (reserved - 5) * 10, "{} tokens at 100/s", reserved - 5);
}

/// The `local` fallback's `retry-after-ms` is exact too (its own bucket, on the injected clock),
/// and a reservation larger than the replica's share waits for the next probe of Redis.
#[tokio::test]
async fn retry_after_from_the_local_fallback_is_exact() {
    let Some(mut redis) = RedisServer::start("retry_after_from_the_local_fallback_is_exact") else { return };
    let clock = Arc::new(tollgate::core::clock::ManualClock::new(0));
    let h = Harness::with(Setup {
        deployment: "requests_per_minute = 8\ntokens_per_minute = 4000".into(),
        limits: limits(&redis, "on_store_error = \"local\"\nreplicas = 4\nstore_timeout_ms = 200"),
        clock: Some(clock),
        ..Setup::default()
    })
    .await;
    let url = h.deployment_url("/chat/completions");
    redis.kill();
    // The share is 8 / 4 = 2 requests a minute: two are admitted, the third waits 30 s exactly.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(h.client.post(&url, &[("api-key", PRIMARY_KEY)], r#"{"messages":[],"max_tokens":10}"#).await);
    }
    assert_eq!(statuses[0].status, StatusCode::OK, "{}", statuses[0].text());
    assert_eq!(statuses[1].status, StatusCode::OK);
    assert_eq!(statuses[2].status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(statuses[2].number("retry-after-ms"), 30_000);
    // 4000 / 4 = 1000 tokens for this replica: 2000 can never fit in the share, only in the
    // shared buckets, which are asked again at the next probe (250 ms).
    let big = r#"{"messages":[],"max_tokens":2000}"#;
    let reply = h.client.post(&url, &[("api-key", PRIMARY_KEY)], big).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.number("retry-after-ms"), 250);
}

#[tokio::test]
async fn two_gateways_share_each_pool_backends_own_buckets() {
    let Some(redis) = RedisServer::start("two_gateways_share_each_pool_backends_own_buckets") else { return };
    // Two backends that each take 6 requests a minute (one every 10 s) and refuse the rest.
    let options = MockOptions { requests_per_minute: Some(6), ..Default::default() };
    let east = MockBackend::start(([127, 0, 0, 1], 0).into(), options.clone()).await.unwrap();
    let west = MockBackend::start(([127, 0, 0, 1], 0).into(), options).await.unwrap();
    let pool = format!(
        "[[deployments]]\nname = \"pool\"\nmodel = \"azureml://registries/azureml-meta/models/Meta-Llama-3-8B-Instruct\"\nkeys = [\"{}\"]\n[[deployments.backends]]\nurl = \"{}\"\nrequests_per_minute = 6\n[[deployments.backends]]\nurl = \"{}\"\nrequests_per_minute = 6\n",
        stored(OTHER_KEY),
        east.url(),
        west.url()
    );
    let setup = || Setup { more_deployments: pool.clone(), limits: limits(&redis, ""), ..Setup::default() };
    let (a, b) = (Harness::with(setup()).await, Harness::with(setup()).await);
    let started = Instant::now();
    let (mut admitted, mut refused) = (0, 0);
    for i in 0..30 {
        let h = if i % 2 == 0 { &a } else { &b };
        let reply =
            h.client.post(&h.url("/openai/deployments/pool/chat/completions"), &[("api-key", OTHER_KEY)], CHAT).await;
        match reply.status {
            StatusCode::OK => admitted += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                refused += 1;
                assert_eq!(reply.error_code(), "TooManyRequests");
                assert!(reply.text().contains("every backend"), "the gateway's own 429: {}", reply.text());
                let retry_ms = reply.number("retry-after-ms");
                assert!(retry_ms > 0 && retry_ms <= 10_000, "retry-after-ms {retry_ms}");
            }
            other => panic!("unexpected {other}: {}", reply.text()),
        }
    }
    let bound = 2 * allowance(6, started.elapsed());
    assert!(admitted >= 12 && admitted <= bound, "admitted {admitted}, the two backends allow {bound} together");
    assert_eq!(admitted + refused, 30);
    // Two replicas, one quota per backend: neither backend was ever sent more than it takes.
    assert_eq!((east.throttled(), west.throttled()), (0, 0));
    let key = format!("test{}:{{backend:{}}}", redis.port, east.url());
    let ttl = redis.command(&format!("PTTL {key}")).unwrap();
    assert!(ttl.trim_start_matches(':').trim().parse::<i64>().unwrap() > 0, "{key}: PTTL {ttl}");
    let quotas = a.admin("/quotas").await;
    let backends = quotas["pool"]["backends"].as_array().unwrap().clone();
    assert_eq!(backends.len(), 2, "{quotas}");
    assert!(
        backends.iter().all(|b| b["requestsPerMinute"] == 6 && b["remainingRequests"].as_u64() == Some(0)),
        "{quotas}"
    );
}

/// Three gateways on one Redis share a consumer's own buckets, its period quota and the
/// deployment's buckets: together they admit no more than each level allows.
#[tokio::test]
async fn three_gateways_share_consumer_buckets_and_period_quotas() {
    let Some(redis) = RedisServer::start("three_gateways_share_consumer_buckets_and_period_quotas") else { return };
    const BATCH: &str = "RedisBatchConsumerKey0123456789a";
    const DAILY: &str = "RedisDailyConsumerKey0123456789a";
    let consumers = format!(
        "[[consumers]]\nname = \"batch\"\nkeys = [\"{}\"]\n[[consumers.grants]]\ndeployment = \"{DEPLOYMENT}\"\nrequests_per_minute = 4\n[[consumers]]\nname = \"daily\"\nkeys = [\"{}\"]\nrequests_per_day = 3\n[[consumers.grants]]\ndeployment = \"{DEPLOYMENT}\"\n",
        stored(BATCH),
        stored(DAILY)
    );
    let setup = || Setup {
        deployment: "requests_per_minute = 10".into(),
        tables: consumers.clone(),
        limits: limits(&redis, ""),
        ..Setup::default()
    };
    let gateways = [Harness::with(setup()).await, Harness::with(setup()).await, Harness::with(setup()).await];
    let started = Instant::now();
    let ok = |key: &str, n: usize| {
        let gateways = &gateways;
        let key = key.to_owned();
        async move {
            let mut admitted = 0;
            for i in 0..n {
                let h = &gateways[i % 3];
                let reply = h.client.post(&h.deployment_url("/chat/completions"), &[("api-key", &key)], CHAT).await;
                match reply.status {
                    StatusCode::OK => admitted += 1,
                    StatusCode::TOO_MANY_REQUESTS | StatusCode::FORBIDDEN => {
                        reply.error_code();
                    }
                    other => panic!("unexpected {other}: {}", reply.text()),
                }
            }
            admitted
        }
    };
    let batch = ok(BATCH, 9).await;
    let daily = ok(DAILY, 6).await;
    let endpoint = ok(PRIMARY_KEY, 9).await;
    let elapsed = started.elapsed();
    assert!(batch >= 4 && batch <= allowance(4, elapsed), "batch admitted {batch} with 4 a minute");
    assert_eq!(daily, 3, "three a day, over three gateways");
    assert!(
        batch + daily + endpoint <= allowance(10, elapsed),
        "{batch} + {daily} + {endpoint} past the deployment's 10"
    );
    // Every gateway reports the shared count (each admitted only some of the three itself).
    for h in &gateways {
        let usage = h.admin("/projects/default/consumers/daily/usage").await;
        let quota = &usage["quotas"][0];
        assert_eq!((quota["scope"].as_str(), quota["quota"].as_str()), (Some("*"), Some("requests_per_day")));
        assert_eq!((quota["used"].as_u64(), quota["remaining"].as_u64()), (Some(3), Some(0)), "{usage}");
        let text = h.client.call(Method::GET, &h.admin_url("/metrics"), &[], "").await.text();
        let ratio = metric(
            &parse_metrics(&text),
            "tollgate_consumer_quota_used_ratio",
            &[("consumer", "default/daily"), ("scope", "*"), ("quota", "requests_per_day")],
        );
        assert_eq!(
            ratio,
            1.0,
            "{}",
            text.lines().filter(|l| l.contains("consumer_quota")).collect::<Vec<_>>().join("\n")
        );
    }
    // A gateway started now (a restart: nothing in its memory) finds the day's count in Redis.
    let restarted = Harness::with(setup()).await;
    let reply =
        restarted.client.post(&restarted.deployment_url("/chat/completions"), &[("api-key", DAILY)], CHAT).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
    assert_eq!(reply.error_code(), "QuotaExceeded");
    // The consumer-wide period hash expires only after the month.
    let ttl = redis.command(&format!("TTL test{}:{{consumer:default/daily}}:period", redis.port)).unwrap();
    let ttl: i64 = ttl.trim_start_matches(':').trim().parse().unwrap();
    assert!(ttl > 86_400, "TTL {ttl}");
}

#[tokio::test]
async fn gateways_share_a_budgets_spend_and_send_each_threshold_once() {
    let Some(redis) = RedisServer::start("gateways_share_a_budgets_spend_and_send_each_threshold_once") else { return };
    let receiver = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = receiver.local_addr().unwrap().port();
    let received = common::webhooks::receive(receiver);
    let billing = format!(
        "[billing]\nwebhook_url = \"http://127.0.0.1:{port}/hooks\"\nwebhook_secret_env = \"HOOK_SECRET\"\n[[billing.budgets]]\nname = \"shared-cap\"\nproject = \"default\"\nmonthly = \"0.002\"\nhard = true\n"
    );
    let setup = || Setup {
        deployment: "prices = { input = \"1\", output = \"2\" }\nrequests_per_minute = 100000".into(),
        tables: billing.clone(),
        limits: limits(&redis, ""),
        env: vec![("HOOK_SECRET", "secret")],
        ..Setup::default()
    };
    let (a, b) = (Harness::with(setup()).await, Harness::with(setup()).await);
    // A spends the budget on its own.
    let mut served = 0;
    loop {
        let reply = a.client.post(&a.deployment_url("/chat/completions"), &[("api-key", PRIMARY_KEY)], CHAT).await;
        if reply.status == StatusCode::FORBIDDEN {
            assert_eq!(reply.error_code(), "BudgetExceeded");
            break;
        }
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        served += 1;
        assert!(served < 1000, "never refused");
    }
    // B takes in A's spend from Redis (read every second) and refuses too, without a request of its own.
    let mut seen = 0;
    for _ in 0..500 {
        seen = b.admin("/budgets").await["shared-cap"]["periods"][0]["spentMicros"].as_u64().unwrap();
        if seen >= 2_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(seen >= 2_000, "B saw {seen}");
    let reply = b.client.post(&b.deployment_url("/chat/completions"), &[("api-key", PRIMARY_KEY)], CHAT).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
    // A gateway started now refuses from its first request.
    let c = Harness::with(setup()).await;
    let reply = c.client.post(&c.deployment_url("/chat/completions"), &[("api-key", PRIMARY_KEY)], CHAT).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
    // Both A and B reached the three thresholds; each webhook was sent once (A claimed them).
    async fn webhooks(h: &Harness, result: &str) -> f64 {
        let text = h.admin_text("/metrics").await;
        metric(&parse_metrics(&text), "tollgate_budget_webhooks_total", &[("result", result)])
    }
    for _ in 0..500 {
        if webhooks(&a, "delivered").await + webhooks(&b, "sent_by_another_replica").await >= 6.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(webhooks(&a, "delivered").await, 3.0);
    assert_eq!(webhooks(&b, "sent_by_another_replica").await, 3.0);
    assert_eq!(received.lock().unwrap().len(), 3, "one webhook per threshold across the gateways");
    assert_eq!(webhooks(&c, "sent_by_another_replica").await + webhooks(&c, "delivered").await, 0.0, "C only started");
}

/// Two replicas with `max_wait_ms` on one shared bucket: each queues its own callers and tries
/// the shared buckets at the time they will hold its turn's request; every request is admitted
/// after waiting, and together they never take more than the one quota allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_queue_their_own_callers_and_never_over_admit_the_shared_bucket() {
    let Some(redis) = RedisServer::start("two_replicas_queue") else { return };
    let setup = || Setup {
        deployment: "tokens_per_minute = 60000\nrequests_per_minute = 100000\nmax_wait_ms = 20000".into(),
        limits: limits(&redis, ""),
        ..Setup::default()
    };
    let (a, b) = (Arc::new(Harness::with(setup()).await), Arc::new(Harness::with(setup()).await));
    let started = Instant::now();
    let chat = |max: u64| format!(r#"{{"messages":[{{"role":"user","content":"Hi"}}],"max_tokens":{max}}}"#);
    let send = |h: Arc<Harness>, max: u64| async move {
        let tokens = max.to_string();
        let headers = [("api-key", PRIMARY_KEY), ("x-mock-completion-tokens", tokens.as_str())];
        h.client.post(&h.deployment_url("/chat/completions"), &headers, &chat(max)).await
    };
    // One request spends the whole shared bucket.
    let drained = send(Arc::clone(&a), 59_900).await;
    assert_eq!(drained.status, StatusCode::OK, "{}", drained.text());
    let tasks: Vec<_> = (0..6).map(|i| tokio::spawn(send(Arc::clone(if i % 2 == 0 { &a } else { &b }), 490))).collect();
    let mut used = 59_900;
    for task in tasks {
        let reply = task.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert!(reply.headers.contains_key("x-ms-queued-ms"), "each waited: {:?}", reply.headers);
        used += 490;
    }
    let bound = allowance(60_000, started.elapsed());
    assert!(used <= bound, "{used} completion tokens admitted; one shared quota allows {bound}");
    // And both replicas queued (each its own callers).
    for h in [&a, &b] {
        let samples = parse_metrics(&h.admin_text("/metrics").await);
        let admitted = metric(&samples, "tollgate_queue_wait_seconds_count", &[("outcome", "admitted")]);
        assert_eq!(admitted, 3.0);
    }
}

#[tokio::test]
async fn a_pre_flight_reads_a_consumers_own_buckets_from_redis() {
    let Some(redis) = RedisServer::start("a_pre_flight_reads_a_consumers_own_buckets_from_redis") else { return };
    const APP: &str = "RedisPreflightConsumerKey0123456";
    let consumers = format!(
        "[[consumers]]\nname = \"app\"\nkeys = [\"{}\"]\n[[consumers.grants]]\ndeployment = \"{DEPLOYMENT}\"\nrequests_per_minute = 2\n",
        stored(APP)
    );
    let setup = || Setup {
        deployment: "requests_per_minute = 100".into(),
        tables: consumers.clone(),
        limits: limits(&redis, ""),
        ..Setup::default()
    };
    let (spender, asker) = (Harness::with(setup()).await, Harness::with(setup()).await);
    let dry_run = |h: &Harness| h.deployment_url("/chat/completions?dry-run=true");
    let before = asker.client.post(&dry_run(&asker), &[("api-key", APP)], CHAT).await.json();
    assert_eq!(
        (before["admittedNow"].as_bool(), before["consumerLimitsChecked"].as_bool()),
        (Some(true), Some(true)),
        "{before}"
    );
    for _ in 0..2 {
        let reply = spender.client.post(&spender.deployment_url("/chat/completions"), &[("api-key", APP)], CHAT).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    // The other replica has admitted nothing for the consumer: what it says comes from Redis.
    let after = asker.client.post(&dry_run(&asker), &[("api-key", APP)], CHAT).await.json();
    assert_eq!(
        (after["admittedNow"].as_bool(), after["fits"].as_bool(), after["consumerLimitsChecked"].as_bool()),
        (Some(false), Some(true), Some(true)),
        "{after}"
    );
    assert!(after["refusal"].is_null(), "{after}");
    // Two a minute: the next request refills in up to 30 s. The deployment itself has room.
    let retry_ms = after["retryAfterMs"].as_u64().unwrap();
    assert!(retry_ms > 0 && retry_ms <= 30_000, "{after}");
    assert!(after["limits"]["remainingRequests"].as_u64().unwrap() >= 97, "{after}");
    // And the real request is refused as the pre-flight said.
    let real = asker.client.post(&asker.deployment_url("/chat/completions"), &[("api-key", APP)], CHAT).await;
    assert_eq!(real.status, StatusCode::TOO_MANY_REQUESTS, "{}", real.text());
}
