//! Backend pools end to end: real mock backends (in process, or as `tollgate mock-backend`
//! processes where one must die), a real gateway, a manual clock for the buckets and the
//! breaker so time moves only when the test says.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::StatusCode;
use tollgate::core::clock::{Clock, ManualClock};
use tollgate::core::pool::health::BASE_EJECTION_NS;
use tollgate::process::mock_backend::{MockBackend, MockOptions};

const POOL_KEY: &str = "PoolDeploymentKey0123456789abcde";

/// A pool deployment "pool" over `backends` (each a `[[deployments.backends]]` body), with
/// `extra` lines for the deployment (limits, attempts).
fn pool_deployment(extra: &str, backends: &[String]) -> String {
    let mut text = format!(
        "[[deployments]]\nname = \"pool\"\nmodel = \"azureml://registries/azureml-meta/models/Meta-Llama-3-8B-Instruct\"\nkeys = [\"{}\"]\nrequests_per_minute = 1000000\ntokens_per_minute = 1000000000\n{extra}\n",
        stored(POOL_KEY)
    );
    for backend in backends {
        text.push_str("[[deployments.backends]]\n");
        text.push_str(backend);
        text.push('\n');
    }
    text
}

async fn mocks(n: usize, options: MockOptions) -> Vec<MockBackend> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(MockBackend::start(([127, 0, 0, 1], 0).into(), options.clone()).await.unwrap());
    }
    out
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(1_000_000_000))
}

async fn pool_harness(deployment: String, clock: &Arc<ManualClock>, ledger: Option<std::path::PathBuf>) -> Harness {
    Harness::with(Setup { more_deployments: deployment, clock: Some(Arc::clone(clock)), ledger, ..Default::default() })
        .await
}

fn chat_url(h: &Harness) -> String {
    h.url("/openai/deployments/pool/chat/completions")
}

async fn metrics(h: &Harness) -> Vec<Sample> {
    let reply = h.client.call(http::Method::GET, &h.admin_url("/metrics"), &[], "").await;
    parse_metrics(&reply.text())
}

fn backend_metric(samples: &[Sample], name: &str, backend: &str, extra: &[(&str, &str)]) -> f64 {
    let mut labels = vec![("deployment", "pool"), ("backend", backend)];
    labels.extend_from_slice(extra);
    metric(samples, name, &labels)
}

#[tokio::test]
async fn weights_split_ten_thousand_requests_and_a_lower_tier_waits() {
    let backends = mocks(4, MockOptions::default()).await;
    let entries: Vec<String> = backends
        .iter()
        .zip([("1", "0"), ("2", "0"), ("5", "0"), ("1", "1")])
        .map(|(m, (weight, priority))| format!("url = \"{}\"\nweight = {weight}\npriority = {priority}", m.url()))
        .collect();
    let clock = clock();
    let h = pool_harness(pool_deployment("", &entries), &clock, None).await;
    let url = chat_url(&h);
    let total = 10_000u64;
    let mut tasks = Vec::new();
    for worker in 0..16u64 {
        let (client, url) = (h.client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut ok = 0u64;
            for _ in (worker..total).step_by(16) {
                let reply = client.post(&url, &[("api-key", POOL_KEY)], CHAT).await;
                assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
                ok += 1;
            }
            ok
        }));
    }
    let mut served = 0;
    for task in tasks {
        served += task.await.unwrap();
    }
    assert_eq!(served, total);
    let counts: Vec<u64> = backends.iter().map(|m| m.served("/chat/completions")).collect();
    assert_eq!(counts.iter().sum::<u64>(), total, "{counts:?}");
    for (count, weight) in counts.iter().take(3).zip([1u64, 2, 5]) {
        let expected = total * weight / 8;
        let off = (*count as f64 - expected as f64).abs() / expected as f64;
        assert!(off <= 0.03, "weight {weight}: {count} of {total}, expected {expected} (±3%): {counts:?}");
    }
    assert_eq!(counts[3], 0, "the priority-1 backend is used only when tier 0 is out: {counts:?}");
}

#[tokio::test]
async fn a_lower_tier_takes_over_when_the_first_is_out_of_its_own_quota() {
    let backends = mocks(2, MockOptions::default()).await;
    let entries = vec![
        format!("url = \"{}\"\nrequests_per_minute = 5\npriority = 0", backends[0].url()),
        format!("url = \"{}\"\npriority = 1", backends[1].url()),
    ];
    let clock = clock();
    let h = pool_harness(pool_deployment("", &entries), &clock, None).await;
    for _ in 0..8 {
        let reply = h.client.post(&chat_url(&h), &[("api-key", POOL_KEY)], CHAT).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    assert_eq!(backends[0].served("/chat/completions"), 5);
    assert_eq!(backends[1].served("/chat/completions"), 3);
    // A minute later the first tier has room again and takes the traffic back.
    clock.advance_ms(60_000);
    for _ in 0..5 {
        assert_eq!(h.client.post(&chat_url(&h), &[("api-key", POOL_KEY)], CHAT).await.status, StatusCode::OK);
    }
    assert_eq!(backends[0].served("/chat/completions"), 10);
    assert_eq!(backends[1].served("/chat/completions"), 3);
}

#[tokio::test]
async fn backend_quotas_keep_every_mock_under_its_limit_and_the_pool_serves_their_sum() {
    let clock = clock();
    let shared: Arc<dyn Clock> = clock.clone();
    let options = MockOptions { requests_per_minute: Some(60), clock: Some(shared), ..Default::default() };
    let backends = mocks(3, options).await;
    let entries: Vec<String> =
        backends.iter().map(|m| format!("url = \"{}\"\nrequests_per_minute = 60", m.url())).collect();
    let h = pool_harness(pool_deployment("", &entries), &clock, None).await;
    for minute in 1..=2u64 {
        let (mut ok, mut limited) = (0, 0);
        for _ in 0..200 {
            let reply = h.client.post(&chat_url(&h), &[("api-key", POOL_KEY)], CHAT).await;
            match reply.status {
                StatusCode::OK => ok += 1,
                StatusCode::TOO_MANY_REQUESTS => {
                    limited += 1;
                    assert_eq!(reply.error_code(), "TooManyRequests");
                    assert!(reply.text().contains("every backend"), "{}", reply.text());
                    // 60 a minute: the first backend has room for one more request in 1 s.
                    assert_eq!(reply.number("retry-after-ms"), 1000, "{:?}", reply.headers);
                }
                other => panic!("unexpected {other}: {}", reply.text()),
            }
        }
        assert_eq!((ok, limited), (180, 20), "minute {minute}: three backends of 60 a minute");
        for m in &backends {
            assert_eq!(m.served("/chat/completions"), 60 * minute);
            assert_eq!(m.throttled(), 0, "the gateway never sends a backend more than its quota");
        }
        clock.advance_ms(60_000);
    }
}

#[tokio::test]
async fn a_429_moves_traffic_off_the_backend_for_the_time_it_names_and_no_client_sees_it() {
    let clock = clock();
    let shared: Arc<dyn Clock> = clock.clone();
    // The first mock allows 3 requests a minute (one every 20 s), unknown to the gateway.
    let limited = MockBackend::start(
        ([127, 0, 0, 1], 0).into(),
        MockOptions { requests_per_minute: Some(3), clock: Some(shared), ..Default::default() },
    )
    .await
    .unwrap();
    let free = MockBackend::start(([127, 0, 0, 1], 0).into(), MockOptions::default()).await.unwrap();
    let entries = vec![format!("url = \"{}\"", limited.url()), format!("url = \"{}\"", free.url())];
    let h = pool_harness(pool_deployment("", &entries), &clock, None).await;
    for _ in 0..20 {
        let reply = h.client.post(&chat_url(&h), &[("api-key", POOL_KEY)], CHAT).await;
        assert_eq!(reply.status, StatusCode::OK, "no client sees a 429 while another backend has room");
    }
    assert_eq!(limited.served("/chat/completions"), 3);
    assert_eq!(limited.throttled(), 1, "after its 429 it cools down: it is not asked again");
    assert_eq!(free.served("/chat/completions"), 17);
    let samples = metrics(&h).await;
    let name = limited.url();
    assert_eq!(backend_metric(&samples, "tollgate_backend_state", &name, &[("state", "cooling")]), 1.0);
    assert_eq!(backend_metric(&samples, "tollgate_backend_attempts_total", &name, &[("result", "throttled")]), 1.0);
    assert_eq!(metric(&samples, "tollgate_retries_total", &[("deployment", "pool")]), 1.0);

    // It asked for 20 s (one request in 20 s): a moment before, it is still left alone.
    clock.advance_ms(19_999);
    for _ in 0..4 {
        assert_eq!(h.client.post(&chat_url(&h), &[("api-key", POOL_KEY)], CHAT).await.status, StatusCode::OK);
    }
    assert_eq!(limited.served("/chat/completions"), 3);
    clock.advance_ms(1);
    assert_eq!(backend_metric(&metrics(&h).await, "tollgate_backend_state", &name, &[("state", "healthy")]), 1.0);
    for _ in 0..3 {
        assert_eq!(h.client.post(&chat_url(&h), &[("api-key", POOL_KEY)], CHAT).await.status, StatusCode::OK);
        if limited.served("/chat/completions") == 4 {
            break;
        }
    }
    assert_eq!(limited.served("/chat/completions"), 4, "back in the rotation once its time is up");
}

#[tokio::test]
async fn when_every_backend_is_out_the_client_gets_the_gateways_429_with_the_earliest_time() {
    let clock = clock();
    let shared: Arc<dyn Clock> = clock.clone();
    // Each allows 60 a minute and the gateway does not know it: both answer 429 themselves.
    let options = MockOptions { requests_per_minute: Some(60), clock: Some(shared), ..Default::default() };
    let backends = mocks(2, options).await;
    let entries: Vec<String> = backends.iter().map(|m| format!("url = \"{}\"", m.url())).collect();
    let h = pool_harness(pool_deployment("", &entries), &clock, None).await;
    for _ in 0..120 {
        assert_eq!(h.client.post(&chat_url(&h), &[("api-key", POOL_KEY)], CHAT).await.status, StatusCode::OK);
    }
    let reply = h.client.post(&chat_url(&h), &[("api-key", POOL_KEY)], CHAT).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.error_code(), "TooManyRequests", "the gateway's own 429, not one backend's");
    assert!(reply.text().contains("2 in its pool"), "{}", reply.text());
    // Both said 1000 ms (one request a second): the earliest is 1000 ms away.
    assert_eq!(reply.number("retry-after-ms"), 1000);
    assert_eq!(backends.iter().map(MockBackend::throttled).sum::<u64>(), 2, "each asked once, then left alone");
    // While both cool down, nothing reaches them.
    let again = h.client.post(&chat_url(&h), &[("api-key", POOL_KEY)], CHAT).await;
    assert_eq!(again.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(backends.iter().map(MockBackend::throttled).sum::<u64>(), 2);
    clock.advance_ms(1_000);
    assert_eq!(h.client.post(&chat_url(&h), &[("api-key", POOL_KEY)], CHAT).await.status, StatusCode::OK);
}

#[tokio::test]
async fn retries_stop_at_max_attempts_and_every_refused_attempt_is_refunded() {
    let failing = MockOptions { fail_percent: 100, ..Default::default() };
    let backends = mocks(3, failing).await;
    let entries: Vec<String> = backends
        .iter()
        .map(|m| format!("url = \"{}\"\nrequests_per_minute = 10\ntokens_per_minute = 10000", m.url()))
        .collect();
    let clock = clock();
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("usage.jsonl");
    let h = pool_harness(pool_deployment("max_attempts = 2", &entries), &clock, Some(ledger.clone())).await;
    let reply = h.client.post(&chat_url(&h), &[("api-key", POOL_KEY)], CHAT).await;
    // The last attempt's 500 passes through as the backend sent it.
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(reply.error_code(), "InternalServerError");
    assert_eq!(backends.iter().map(MockBackend::failed).sum::<u64>(), 2, "two attempts, not three");
    let samples = metrics(&h).await;
    for m in &backends {
        // Every backend's own buckets are whole again: a failed attempt is refunded.
        let remaining = |limit: &str| {
            backend_metric(&samples, "tollgate_backend_ratelimit_remaining", &m.url(), &[("limit", limit)])
        };
        assert_eq!((remaining("requests"), remaining("tokens")), (10.0, 10_000.0));
        assert_eq!(backend_metric(&samples, "tollgate_backend_inflight_requests", &m.url(), &[]), 0.0);
    }
    let Harness { gateway, .. } = h;
    gateway.shutdown().await;
    let text = std::fs::read_to_string(&ledger).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(line["attempts"], 2, "{line}");
    assert_eq!(line["status"], 500, "{line}");
}

#[tokio::test]
async fn accounting_is_exact_after_a_retry_on_both_levels_of_buckets() {
    let failing =
        MockBackend::start(([127, 0, 0, 1], 0).into(), MockOptions { fail_percent: 100, ..Default::default() })
            .await
            .unwrap();
    let good = MockBackend::start(([127, 0, 0, 1], 0).into(), MockOptions::default()).await.unwrap();
    let entries = vec![
        format!("url = \"{}\"\nname = \"bad\"\nrequests_per_minute = 100\ntokens_per_minute = 100000", failing.url()),
        format!("url = \"{}\"\nname = \"good\"\nrequests_per_minute = 100\ntokens_per_minute = 100000", good.url()),
    ];
    let clock = clock();
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("usage.jsonl");
    let h = pool_harness(pool_deployment("", &entries), &clock, Some(ledger.clone())).await;
    let before = h.admin("/quotas").await["pool"]["remainingTokens"].as_u64().unwrap();
    // Equal weights: the round robin starts with the first backend, which fails; the second answers.
    let reply = h.client.post(&chat_url(&h), &[("api-key", POOL_KEY)], CHAT).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let total = reply.json()["usage"]["total_tokens"].as_u64().unwrap();
    assert_eq!((failing.failed(), good.served("/chat/completions")), (1, 1));
    // The settlement lands as the body ends, a moment after the client read it.
    for _ in 0..200 {
        if h.admin("/usage").await["pool"]["requests"].as_u64() == Some(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let after = h.admin("/quotas").await["pool"]["remainingTokens"].as_u64().unwrap();
    assert_eq!(before - after, total, "the deployment is charged once, the real count");
    let samples = metrics(&h).await;
    let remaining = |backend: &str, limit: &str| {
        backend_metric(&samples, "tollgate_backend_ratelimit_remaining", backend, &[("limit", limit)])
    };
    assert_eq!((remaining("bad", "requests"), remaining("bad", "tokens")), (100.0, 100_000.0));
    assert_eq!((remaining("good", "requests"), remaining("good", "tokens")), (99.0, (100_000 - total) as f64));
    let Harness { gateway, .. } = h;
    gateway.shutdown().await;
    let text = std::fs::read_to_string(&ledger).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!((line["backend"].as_str(), line["attempts"].as_u64()), (Some("good"), Some(2)), "{line}");
    assert_eq!(line["total_tokens"], total);
}

#[tokio::test]
async fn the_deadline_bounds_all_attempts_together() {
    let backends = mocks(4, MockOptions::default()).await;
    let entries: Vec<String> = backends.iter().map(|m| format!("url = \"{}\"", m.url())).collect();
    let deployment = pool_deployment("max_attempts = 10\nfirst_byte_timeout_ms = 300\ndeadline_ms = 450", &entries);
    let clock = clock();
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("usage.jsonl");
    let h = pool_harness(deployment, &clock, Some(ledger.clone())).await;
    // Every backend takes 2 s: an attempt of 300 ms, then one of the 150 ms left.
    let reply = h.client.post(&chat_url(&h), &[("api-key", POOL_KEY), ("x-mock-latency-ms", "2000")], CHAT).await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(reply.error_code(), "GatewayTimeout");
    assert!(reply.text().contains("deadline_ms") && reply.text().contains("450 ms"), "{}", reply.text());
    let Harness { gateway, .. } = h;
    gateway.shutdown().await;
    let text = std::fs::read_to_string(&ledger).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(line["attempts"], 2, "{line}");
    assert_eq!(line["outcome"], "backend_failed", "{line}");
}

/// A free port (bound, then released) for a mock process that must come back on it.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn spawn_mock(port: u16) -> std::process::Child {
    std::process::Command::new(process::BIN)
        .args(["mock-backend", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

async fn wait_listening(port: u16) {
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the mock on port {port} did not start");
}

#[tokio::test]
async fn a_killed_backend_fails_no_request_that_had_not_started_streaming_and_returns_after_restart() {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut children: Vec<std::process::Child> = ports.iter().map(|&p| spawn_mock(p)).collect();
    let _reaper = process::Reaper(children.iter().map(std::process::Child::id).collect());
    for &port in &ports {
        wait_listening(port).await;
    }
    let entries: Vec<String> =
        ports.iter().map(|p| format!("url = \"http://127.0.0.1:{p}\"\nname = \"m{p}\"")).collect();
    let clock = clock();
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("usage.jsonl");
    let h = pool_harness(pool_deployment("", &entries), &clock, Some(ledger.clone())).await;
    let url = chat_url(&h);
    let victim = format!("m{}", ports[1]);

    // Three slow streams (one lands on each backend), in flight when the backend dies.
    let mut streams = Vec::new();
    for _ in 0..3 {
        let (client, url) = (h.client.clone(), url.clone());
        let headers = [("api-key", POOL_KEY), ("x-mock-tokens-per-second", "20"), ("x-mock-completion-tokens", "40")];
        let response = client.send(http::Method::POST, &url, &headers, STREAM_CHAT).await;
        assert_eq!(response.status(), StatusCode::OK);
        streams.push(tokio::spawn(async move {
            use http_body_util::BodyExt as _;
            let mut body = response.into_body();
            let mut text = String::new();
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(frame) => {
                        if let Ok(data) = frame.into_data() {
                            text.push_str(&String::from_utf8_lossy(&data));
                        }
                    }
                    Err(_) => break,
                }
            }
            text.contains("data: [DONE]")
        }));
    }
    // Load from 8 clients, non-streamed; the victim is killed midway.
    let load = |n: usize| {
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (client, url) = (h.client.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                let mut statuses = Vec::new();
                for _ in 0..n {
                    statuses.push(client.post(&url, &[("api-key", POOL_KEY)], CHAT).await.status);
                }
                statuses
            }));
        }
        tasks
    };
    let before = load(25);
    tokio::time::sleep(Duration::from_millis(50)).await;
    children[1].kill().unwrap();
    children[1].wait().unwrap();
    let after = load(25);
    let mut statuses = Vec::new();
    for task in before.into_iter().chain(after) {
        statuses.extend(task.await.unwrap());
    }
    let failed: Vec<&StatusCode> = statuses.iter().filter(|s| **s != StatusCode::OK).collect();
    assert_eq!(failed.len(), 0, "{} of {} non-streamed requests failed: {failed:?}", failed.len(), statuses.len());
    let mut completed = 0;
    for stream in streams {
        completed += usize::from(stream.await.unwrap());
    }
    let samples = metrics(&h).await;
    assert_eq!(backend_metric(&samples, "tollgate_backend_state", &victim, &[("state", "ejected")]), 1.0);
    assert_eq!(backend_metric(&samples, "tollgate_backend_ejections_total", &victim, &[]), 1.0);

    // Back: restarted on its port; once the ejection is over, one probe closes the breaker.
    children[1] = spawn_mock(ports[1]);
    let _reaper_again = process::Reaper(vec![children[1].id()]);
    wait_listening(ports[1]).await;
    clock.advance_ns(BASE_EJECTION_NS);
    for _ in 0..30 {
        assert_eq!(h.client.post(&url, &[("api-key", POOL_KEY)], CHAT).await.status, StatusCode::OK);
    }
    let samples = metrics(&h).await;
    assert_eq!(backend_metric(&samples, "tollgate_backend_state", &victim, &[("state", "healthy")]), 1.0);
    let ok_on_victim = backend_metric(&samples, "tollgate_backend_attempts_total", &victim, &[("result", "ok")]);
    assert!(ok_on_victim >= 10.0, "back in the rotation: {ok_on_victim} answers");

    let Harness { gateway, .. } = h;
    gateway.shutdown().await;
    // The broken streams are exactly those the victim was serving, and the ledger says so.
    let text = std::fs::read_to_string(&ledger).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let broken: Vec<&serde_json::Value> = lines.iter().filter(|l| l["outcome"] == "backend_broke").collect();
    assert_eq!(broken.len(), 3 - completed, "broken streams: {broken:?}");
    assert!(broken.iter().all(|l| l["backend"] == victim.as_str()), "{broken:?}");
    println!("broken in-flight streams when the backend died: {} of 3", broken.len());
}

/// Polls the metrics until `check` holds (bounded): for changes made by background tasks.
async fn until(h: &Harness, what: &str, check: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
    for _ in 0..500 {
        let samples = metrics(h).await;
        if check(&samples) {
            return samples;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what} never happened");
}

#[tokio::test]
async fn health_checks_take_a_dead_backend_out_before_a_client_meets_it_and_put_it_back() {
    let alive = MockBackend::start(([127, 0, 0, 1], 0).into(), MockOptions::default()).await.unwrap();
    let doomed = MockBackend::start(([127, 0, 0, 1], 0).into(), MockOptions::default()).await.unwrap();
    let (doomed_addr, doomed_url) = (doomed.addr, doomed.url());
    let entries = vec![format!("url = \"{}\"", alive.url()), format!("url = \"{doomed_url}\"")];
    let clock = clock();
    let h = pool_harness(pool_deployment("health_check_interval_ms = 20", &entries), &clock, None).await;
    until(&h, "a first successful check of each backend", |s| {
        backend_metric(s, "tollgate_backend_health_checks_total", &doomed_url, &[("result", "ok")]) >= 1.0
    })
    .await;
    assert!(doomed.served("/info") >= 1, "the check is GET /info");
    doomed.stop().await;
    // No client request is sent meanwhile: the checks alone eject it.
    let samples = until(&h, "the ejection", |s| {
        backend_metric(s, "tollgate_backend_state", &doomed_url, &[("state", "ejected")]) == 1.0
    })
    .await;
    assert!(
        backend_metric(&samples, "tollgate_backend_health_checks_total", &doomed_url, &[("result", "connect")]) >= 5.0
    );
    for _ in 0..10 {
        assert_eq!(h.client.post(&chat_url(&h), &[("api-key", POOL_KEY)], CHAT).await.status, StatusCode::OK);
    }
    let samples = metrics(&h).await;
    assert_eq!(
        metric(&samples, "tollgate_retries_total", &[("deployment", "pool")]),
        0.0,
        "no client met the dead backend"
    );
    assert_eq!(alive.served("/chat/completions"), 10);
    // Back on its address: the next check that answers puts it back (the clock has not moved,
    // so this is the check, not the ejection running out).
    let back = MockBackend::start(doomed_addr, MockOptions::default()).await.unwrap();
    until(&h, "the return", |s| {
        backend_metric(s, "tollgate_backend_state", &doomed_url, &[("state", "healthy")]) == 1.0
    })
    .await;
    for _ in 0..10 {
        assert_eq!(h.client.post(&chat_url(&h), &[("api-key", POOL_KEY)], CHAT).await.status, StatusCode::OK);
    }
    assert_eq!(back.served("/chat/completions"), 5, "half the traffic again");
}
