//! Metrics after known traffic, the ledger against the traffic, and the shipped Prometheus and
//! Grafana files against a real Prometheus (Debian's `prometheus` package; `.ci/run` installs it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout)]

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::{Method, StatusCode};
use tollgate::core::clock::ManualClock;

const KEY: (&str, &str) = ("api-key", PRIMARY_KEY);

#[tokio::test]
async fn metrics_count_known_traffic_exactly() {
    let clock = Arc::new(ManualClock::new(0));
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let h = Harness::with(Setup {
        deployment: "requests_per_minute = 8".into(),
        more_deployments: format!(
            "[[deployments]]\nname = \"gone\"\nmodel = \"m\"\nbackend = \"http://{closed}\"\nkeys = [\"{}\"]\n",
            stored(PRIMARY_KEY)
        ),
        clock: Some(clock),
        ..Default::default()
    })
    .await;
    let url = h.deployment_url("/chat/completions");
    let (mut prompt, mut completion) = (0u64, 0u64);
    for i in 0..10 {
        let reply = h.client.post(&url, &[KEY], CHAT).await;
        if i < 8 {
            assert_eq!(reply.status, StatusCode::OK);
            prompt += reply.json()["usage"]["prompt_tokens"].as_u64().unwrap();
            completion += reply.json()["usage"]["completion_tokens"].as_u64().unwrap();
        } else {
            assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
        }
    }
    for _ in 0..3 {
        assert_eq!(h.client.post(&url, &[("api-key", "WrongKeyXYZ123")], CHAT).await.status, StatusCode::UNAUTHORIZED);
    }
    let gone = h.url("/openai/deployments/gone/chat/completions");
    assert_eq!(h.client.post(&gone, &[KEY], CHAT).await.status, StatusCode::BAD_GATEWAY);
    h.usage_after(10).await;

    let reply = h.client.call(http::Method::GET, &format!("http://{}/metrics", h.gateway.admin_addr), &[], "").await;
    assert!(reply.header("content-type").starts_with("text/plain; version=0.0.4"));
    let m = parse_metrics(&reply.text());
    let d = ("deployment", DEPLOYMENT);
    let chat = ("route", "chat_completions");
    assert_eq!(metric(&m, "tollgate_requests_total", &[d, chat, ("code", "200")]), 8.0);
    assert_eq!(metric(&m, "tollgate_requests_total", &[d, chat, ("code", "429")]), 2.0);
    assert_eq!(metric(&m, "tollgate_requests_total", &[d, chat, ("code", "401")]), 3.0);
    assert_eq!(metric(&m, "tollgate_requests_total", &[("deployment", "gone"), ("code", "502")]), 1.0);
    assert_eq!(metric(&m, "tollgate_ratelimit_rejections_total", &[d, ("limit", "requests")]), 2.0);
    assert_eq!(metric(&m, "tollgate_ratelimit_rejections_total", &[d, ("limit", "tokens")]), 0.0);
    assert_eq!(metric(&m, "tollgate_auth_failures_total", &[d]), 3.0);
    assert_eq!(metric(&m, "tollgate_tokens_total", &[d, ("kind", "prompt"), ("source", "reported")]), prompt as f64);
    assert_eq!(
        metric(&m, "tollgate_tokens_total", &[d, ("kind", "completion"), ("source", "reported")]),
        completion as f64
    );
    assert_eq!(metric(&m, "tollgate_tokens_total", &[d, ("source", "estimated")]), 0.0);
    assert_eq!(metric(&m, "tollgate_ratelimit_limit", &[d, ("limit", "requests")]), 8.0);
    assert_eq!(metric(&m, "tollgate_ratelimit_remaining", &[d, ("limit", "requests")]), 0.0);
    assert_eq!(metric(&m, "tollgate_ratelimit_limit", &[d, ("limit", "tokens")]), 200_000.0);
    assert_eq!(
        metric(&m, "tollgate_ratelimit_remaining", &[d, ("limit", "tokens")]),
        (200_000 - prompt - completion) as f64
    );
    assert_eq!(metric(&m, "tollgate_inflight_requests", &[d]), 0.0);
    assert_eq!(metric(&m, "tollgate_backend_errors_total", &[("deployment", "gone"), ("kind", "connect")]), 1.0);
    assert_eq!(metric(&m, "tollgate_request_duration_seconds_count", &[d, chat]), 10.0);
    assert_eq!(metric(&m, "tollgate_backend_first_byte_seconds_count", &[d]), 8.0);
    assert_eq!(metric(&m, "tollgate_overhead_seconds_count", &[d]), 8.0);
    assert_eq!(metric(&m, "tollgate_prompt_estimate_ratio_count", &[d]), 8.0);
    assert!(metric(&m, "tollgate_open_connections", &[]) >= 1.0);
    // Labels never carry keys or request ids.
    assert!(!reply.text().contains(PRIMARY_KEY) && !reply.text().contains("WrongKeyXYZ123"));
}

#[tokio::test]
async fn the_ledger_holds_one_line_per_authenticated_request_and_usage_sums_it() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("usage.jsonl");
    let clock = Arc::new(ManualClock::new(0));
    let h = Harness::with(Setup {
        deployment: "requests_per_minute = 5".into(),
        clock: Some(clock),
        ledger: Some(ledger.clone()),
        ..Default::default()
    })
    .await;
    let url = h.deployment_url("/chat/completions");
    let mut total = 0;
    let mut ids = Vec::new();
    for i in 0..7 {
        let key = if i % 2 == 0 { KEY } else { ("authorization", "Bearer SecondaryKey0123456789abcdefghij") };
        let reply = h.client.post(&url, &[key], CHAT).await;
        if reply.status == StatusCode::OK {
            total += reply.json()["usage"]["total_tokens"].as_u64().unwrap();
        }
        ids.push(reply.header("x-request-id").to_owned());
    }
    h.client.post(&url, &[("api-key", "wrong")], CHAT).await;
    h.usage_after(7).await;
    let Harness { gateway, .. } = h;
    gateway.shutdown().await;

    let text = std::fs::read_to_string(&ledger).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 7, "one line per authenticated request, none for the wrong key");
    for (line, id) in lines.iter().zip(&ids) {
        assert_eq!(line["request_id"], id.as_str());
        assert_eq!(line["deployment"], DEPLOYMENT);
        assert_eq!(line["meter"], "inference");
    }
    assert_eq!(lines.iter().filter(|l| l["status"] == 429).count(), 2);
    assert_eq!(lines.iter().filter(|l| l["key_slot"] == "secondary").count(), 3);
    assert!(!text.contains(PRIMARY_KEY) && !text.contains("SecondaryKey0123"));

    let output = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["usage", "--ledger", ledger.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let row = &report["rows"][0];
    assert_eq!((row["deployment"].as_str(), row["meter"].as_str()), (Some(DEPLOYMENT), Some("inference")));
    assert_eq!(row["requests"], 7);
    assert_eq!(row["total_tokens"], total);
    let by_key = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["usage", "--ledger", ledger.to_str().unwrap(), "--by", "key"])
        .output()
        .unwrap();
    let table = String::from_utf8(by_key.stdout).unwrap();
    assert!(
        table.contains(&format!("{DEPLOYMENT}/primary")) && table.contains(&format!("{DEPLOYMENT}/secondary")),
        "{table}"
    );
}

#[tokio::test]
async fn promtool_finds_nothing_wrong_with_a_scrape_under_load() {
    if !tool_installed("promtool_finds_nothing_wrong_with_a_scrape_under_load", "promtool", "prometheus") {
        return;
    }
    let h = Harness::start().await;
    let url = h.deployment_url("/chat/completions");
    let load: Vec<_> = (0..8)
        .map(|_| {
            let (client, url) = (h.client.clone(), url.clone());
            tokio::spawn(async move {
                for i in 0..40 {
                    let body = if i % 3 == 0 { STREAM_CHAT } else { CHAT };
                    client.post(&url, &[KEY], body).await;
                }
            })
        })
        .collect();
    let mut scrapes = Vec::new();
    for _ in 0..3 {
        let reply =
            h.client.call(http::Method::GET, &format!("http://{}/metrics", h.gateway.admin_addr), &[], "").await;
        scrapes.push(reply.text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for task in load {
        task.await.unwrap();
    }
    for scrape in scrapes {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scrape.txt");
        std::fs::write(&path, &scrape).unwrap();
        let output =
            Command::new("sh").arg("-c").arg(format!("promtool check metrics < {}", path.display())).output().unwrap();
        assert!(
            output.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(said.trim().is_empty(), "promtool reported: {said}");
    }
}

#[test]
fn the_shipped_rules_pass_promtool_and_the_dashboard_uses_real_metrics() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{root}/config/grafana/tollgate-quotas.json")).unwrap())
            .unwrap();
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 30);
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(variables.iter().any(|v| v["type"] == "datasource" && v["name"] == "datasource"));
    let known = [
        "tollgate_requests_total",
        "tollgate_ratelimit_rejections_total",
        "tollgate_tokens_total",
        "tollgate_ratelimit_limit",
        "tollgate_ratelimit_remaining",
        "tollgate_request_duration_seconds_bucket",
        "tollgate_overhead_seconds_bucket",
        "tollgate_backend_first_byte_seconds_bucket",
        "tollgate_prompt_estimate_ratio_bucket",
        "tollgate_inflight_requests",
        "tollgate_open_connections",
        "tollgate_backend_errors_total",
        "tollgate_consumer_tokens_total",
        "tollgate_consumer_quota_used_ratio",
        "tollgate_consumer_rejections_total",
        "tollgate_cost_total",
        "tollgate_budget_spent_ratio",
    ];
    assert!(
        variables.iter().any(|v| v["name"] == "consumer"
            && v["query"]["query"] == "label_values(tollgate_consumer_requests_total, consumer)"),
        "a consumer variable"
    );
    let titles: Vec<&str> =
        dashboard["panels"].as_array().unwrap().iter().map(|p| p["title"].as_str().unwrap()).collect();
    assert!(titles.contains(&"Top consumers: tokens per minute"), "{titles:?}");
    assert!(titles.contains(&"Spend per day, by subscription"), "{titles:?}");
    for panel in dashboard["panels"].as_array().unwrap() {
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{}", panel["title"]);
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let names: Vec<&str> = expr
                .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("tollgate_"))
                .collect();
            assert!(!names.is_empty(), "{expr}");
            for name in names {
                assert!(known.contains(&name), "dashboard uses unknown metric {name}");
            }
        }
    }
    if !tool_installed("the_shipped_rules_pass_promtool", "promtool", "prometheus") {
        return;
    }
    let promtool = |args: &[&str]| {
        let output = Command::new("promtool").args(args).output().unwrap();
        assert!(
            output.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    };
    promtool(&["check", "rules", &format!("{root}/config/prometheus/tollgate-rules.yml")]);
    // The consumer quota alerts fire when they should (and not before).
    promtool(&["test", "rules", &format!("{root}/config/prometheus/tollgate-rules-test.yml")]);
    promtool(&["check", "config", &format!("{root}/config/prometheus/prometheus.yml")]);
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_gateway() {
    if !tool_installed("a_real_prometheus_scrapes_the_gateway", "prometheus", "prometheus") {
        return;
    }
    let h = Harness::start().await;
    assert_eq!(h.client.post(&h.deployment_url("/chat/completions"), &[KEY], CHAT).await.status, StatusCode::OK);
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::fs::read_to_string(format!("{root}/config/prometheus/prometheus.yml")).unwrap();
    let config = shipped
        .replace("127.0.0.1:9090", &h.gateway.admin_addr.to_string())
        .replace("scrape_interval: 15s", "scrape_interval: 1s")
        .replace("evaluation_interval: 15s", "evaluation_interval: 1s");
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    std::fs::copy(format!("{root}/config/prometheus/tollgate-rules.yml"), dir.path().join("tollgate-rules.yml"))
        .unwrap();
    // Port 0, held by Prometheus itself: it logs the address it got.
    let log = dir.path().join("prometheus.log");
    let mut prometheus = Command::new("prometheus")
        .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg("--web.listen-address=127.0.0.1:0")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut port = None;
    for _ in 0..1500 {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        port = text
            .lines()
            .filter(|l| l.contains("msg=\"Listening on\""))
            .find_map(|l| l.split("address=127.0.0.1:").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|p| p.parse::<u16>().ok());
        if port.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let Some(port) = port else {
        let _ = prometheus.kill();
        panic!("Prometheus never said where it listens: {}", std::fs::read_to_string(&log).unwrap_or_default());
    };
    let query = format!("http://127.0.0.1:{port}/api/v1/query?query=tollgate_requests_total");
    let mut found = None;
    for _ in 0..300 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Some(response) = h.client.try_get(&query).await else { continue };
        if response.status != StatusCode::OK {
            continue;
        }
        let json = response.json();
        if let Some(first) = json["data"]["result"].as_array().and_then(|r| r.first()).cloned() {
            found = Some(first);
            break;
        }
    }
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    let sample = found.expect("Prometheus never returned tollgate_requests_total");
    assert_eq!(sample["metric"]["deployment"], DEPLOYMENT);
    assert_eq!(sample["metric"]["job"], "tollgate");
    assert_eq!(sample["value"][1], "1");
}

#[tokio::test]
async fn usage_and_quotas_need_an_admin_token_and_metrics_may_need_one() {
    let metrics_token = "MetricsScrapeToken0123456789abc";
    let dev = "ProjectDevToken0123456789abcdef";
    let h = Harness::with(Setup {
        admin: format!("metrics_token = \"{}\"", stored(metrics_token)),
        tables: format!(
            "[[admin.tokens]]\nname = \"dev\"\nrole = \"ai-developer\"\nprojects = [\"team-a\"]\ntoken = \"{}\"\n",
            stored(dev)
        ),
        ..Default::default()
    })
    .await;
    let admin = |path: &str| format!("http://{}{path}", h.gateway.admin_addr);
    for path in ["/usage", "/quotas"] {
        let reply = h.client.call(Method::GET, &admin(path), &[], "").await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(reply.error_code(), "Unauthorized");
        assert_eq!(reply.header("www-authenticate"), "Bearer");
        let reply = h.client.call(Method::GET, &admin(path), &[("authorization", "Bearer wrong")], "").await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{path}");
        let json = h.admin(path).await;
        assert!(json.get(DEPLOYMENT).is_some(), "a reader sees every deployment: {json}");
        // A token confined to a project sees only that project's deployments (the file's are in "default").
        let reply = h.client.call(Method::GET, &admin(path), &[("authorization", &format!("Bearer {dev}"))], "").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.json(), serde_json::json!({}), "{path}");
    }
    let reply = h.client.call(Method::GET, &admin("/metrics"), &[], "").await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(reply.text().contains("metrics_token"), "{}", reply.text());
    for token in [metrics_token, READER_TOKEN] {
        let reply =
            h.client.call(Method::GET, &admin("/metrics"), &[("authorization", &format!("Bearer {token}"))], "").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(reply.text().contains("tollgate_open_connections"), "{}", reply.text());
    }
    // Without a metrics token, /metrics is open (Prometheus scrapes it as it is).
    let open = Harness::start().await;
    let url = format!("http://{}/metrics", open.gateway.admin_addr);
    assert_eq!(open.client.call(Method::GET, &url, &[], "").await.status, StatusCode::OK);
}
