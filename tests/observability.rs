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

/// Known traffic on the demo deployment (8 a minute): 8 served, 2 refused (429), 3 with a wrong
/// key; one request to "gone", whose backend is closed (502). `metrics` is the `[metrics]`
/// table. The scrape, its samples, and the prompt and completion tokens served.
async fn known_traffic(metrics: &str) -> (Harness, String, Vec<Sample>, u64, u64) {
    let clock = Arc::new(ManualClock::new(0));
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let h = Harness::with(Setup {
        deployment: "requests_per_minute = 8".into(),
        more_deployments: format!(
            "[[deployments]]\nname = \"gone\"\nmodel = \"m\"\nbackend = \"http://{closed}\"\nkeys = [\"{}\"]\n",
            stored(PRIMARY_KEY)
        ),
        tables: metrics.into(),
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
    let text = reply.text();
    // Labels never carry keys or request ids.
    assert!(!text.contains(PRIMARY_KEY) && !text.contains("WrongKeyXYZ123"));
    let samples = parse_metrics(&text);
    (h, text, samples, prompt, completion)
}

/// The counters every detail level keeps per deployment (`deployment`: its label).
fn assert_counters(m: &[Sample], deployment: &str, gone: &str) {
    let d = ("deployment", deployment);
    let chat = ("route", "chat_completions");
    assert_eq!(metric(m, "tollgate_requests_total", &[d, chat, ("code", "200")]), 8.0);
    assert_eq!(metric(m, "tollgate_requests_total", &[d, chat, ("code", "429")]), 2.0);
    assert_eq!(metric(m, "tollgate_requests_total", &[d, chat, ("code", "401")]), 3.0);
    assert_eq!(metric(m, "tollgate_requests_total", &[("deployment", gone), ("code", "502")]), 1.0);
    assert_eq!(metric(m, "tollgate_ratelimit_rejections_total", &[d, ("limit", "requests")]), 2.0);
    assert_eq!(metric(m, "tollgate_ratelimit_rejections_total", &[d, ("limit", "tokens")]), 0.0);
    assert_eq!(metric(m, "tollgate_auth_failures_total", &[d]), 3.0);
    assert_eq!(metric(m, "tollgate_backend_errors_total", &[("deployment", gone), ("kind", "connect")]), 1.0);
    assert!(metric(m, "tollgate_open_connections", &[]) >= 1.0);
}

#[tokio::test]
async fn metrics_count_known_traffic_exactly_with_full_detail() {
    let (_h, _, m, prompt, completion) = known_traffic("[metrics]\ndeployments = \"full\"\n").await;
    assert_counters(&m, DEPLOYMENT, "gone");
    let d = ("deployment", DEPLOYMENT);
    let chat = ("route", "chat_completions");
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
    assert_eq!(sample_count(&m, "tollgate_inflight_requests", &[d]), 1);
    assert_eq!(metric(&m, "tollgate_request_duration_seconds_count", &[d, chat]), 10.0);
    assert_eq!(metric(&m, "tollgate_backend_first_byte_seconds_count", &[d]), 8.0);
    assert_eq!(metric(&m, "tollgate_overhead_seconds_count", &[d]), 8.0);
    assert_eq!(metric(&m, "tollgate_prompt_estimate_ratio_count", &[d]), 8.0);
}

#[tokio::test]
async fn by_default_a_deployment_keeps_its_counters_and_limits_and_the_histograms_are_gateway_wide() {
    let (_h, text, m, prompt, completion) = known_traffic("").await;
    assert_counters(&m, DEPLOYMENT, "gone");
    let d = ("deployment", DEPLOYMENT);
    let everyone = ("deployment", "");
    let chat = ("route", "chat_completions");
    assert_eq!(
        metric(&m, "tollgate_tokens_total", &[d, ("kind", "total"), ("source", "reported")]),
        (prompt + completion) as f64
    );
    assert_eq!(sample_count(&m, "tollgate_tokens_total", &[d]), 1, "one token series");
    assert_eq!(metric(&m, "tollgate_ratelimit_limit", &[d, ("limit", "requests")]), 8.0);
    assert_eq!(metric(&m, "tollgate_ratelimit_limit", &[d, ("limit", "tokens")]), 200_000.0);
    assert_eq!(sample_count(&m, "tollgate_ratelimit_remaining", &[]), 0, "levels only with full detail");
    // Histograms and in-flight counts of every deployment, together.
    assert_eq!(metric(&m, "tollgate_request_duration_seconds_count", &[everyone, chat]), 11.0);
    assert_eq!(metric(&m, "tollgate_backend_first_byte_seconds_count", &[everyone]), 8.0);
    assert_eq!(metric(&m, "tollgate_overhead_seconds_count", &[everyone]), 8.0);
    assert_eq!(metric(&m, "tollgate_prompt_estimate_ratio_count", &[everyone]), 8.0);
    assert_eq!(sample_count(&m, "tollgate_inflight_requests", &[]), 1);
    assert_eq!(sample_count(&m, "tollgate_inflight_requests", &[everyone]), 1);
    let own = m.iter().filter(|s| s.labels.get("deployment").map(String::as_str) == Some(DEPLOYMENT)).count();
    // requests 200/429/401, the 429s by limit, the 401s, one token series, two limits.
    assert_eq!(own, 3 + 1 + 1 + 1 + 2, "{text}");
}

#[tokio::test]
async fn with_deployments_off_everything_is_counted_gateway_wide() {
    let (_h, text, m, prompt, _) = known_traffic("[metrics]\ndeployments = \"off\"\nfull_detail = [\"gone\"]\n").await;
    assert!(!text.contains(&format!("deployment=\"{DEPLOYMENT}\"")), "{text}");
    let everyone = ("deployment", "");
    let chat = ("route", "chat_completions");
    assert_eq!(metric(&m, "tollgate_requests_total", &[everyone, chat, ("code", "200")]), 8.0);
    assert_eq!(metric(&m, "tollgate_tokens_total", &[everyone, ("kind", "prompt")]), prompt as f64);
    assert_eq!(sample_count(&m, "tollgate_ratelimit_limit", &[everyone]), 0);
    // `full_detail` names one deployment that keeps everything of its own.
    let gone = ("deployment", "gone");
    assert_eq!(metric(&m, "tollgate_requests_total", &[gone, ("code", "502")]), 1.0);
    assert_eq!(metric(&m, "tollgate_request_duration_seconds_count", &[gone]), 1.0);
    assert_eq!(metric(&m, "tollgate_ratelimit_remaining", &[gone, ("limit", "requests")]), 999.0);
}

#[tokio::test]
async fn a_deleted_deployments_series_leave_the_scrape_and_a_detail_change_applies_on_reload() {
    let (h, _, m, _, _) = known_traffic(&common::admin::token_tables()).await;
    assert_counters(&m, DEPLOYMENT, "gone");
    // "gone" leaves the file, and the demo deployment gets full detail.
    let text = std::fs::read_to_string(&h.config_path).unwrap();
    let start = text.find("[[deployments]]\nname = \"gone\"").unwrap();
    let end = start + text[start..].find("keys = ").unwrap();
    let end = end + text[end..].find('\n').unwrap() + 1;
    let text = format!("{}{}\n[metrics]\nfull_detail = [\"{DEPLOYMENT}\"]\n", &text[..start], &text[end..]);
    std::fs::write(&h.config_path, text).unwrap();
    h.owner(Method::POST, "/reload", None).await;
    let scrape = h.admin_text("/metrics").await;
    assert!(!scrape.contains("deployment=\"gone\""), "{scrape}");
    let m = parse_metrics(&scrape);
    let d = ("deployment", DEPLOYMENT);
    // Its series started again at the new detail: the summary's counters are gone with it...
    assert_eq!(sample_count(&m, "tollgate_tokens_total", &[d, ("kind", "total")]), 0, "{scrape}");
    assert_eq!(sample_count(&m, "tollgate_requests_total", &[d]), 0, "{scrape}");
    // ...and its levels are there now.
    assert_eq!(metric(&m, "tollgate_ratelimit_remaining", &[d, ("limit", "requests")]), 0.0);
    assert_eq!(
        h.client
            .post(&h.url("/openai/deployments/other/chat/completions"), &[("api-key", OTHER_KEY)], CHAT)
            .await
            .status,
        StatusCode::OK
    );
    let m = parse_metrics(&h.admin_text("/metrics").await);
    assert_eq!(metric(&m, "tollgate_requests_total", &[("deployment", "other"), ("code", "200")]), 1.0);
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
    let Some(sample) = found else {
        let _ = prometheus.kill();
        panic!("Prometheus never returned tollgate_requests_total");
    };
    assert_eq!(sample["metric"]["deployment"], DEPLOYMENT);
    assert_eq!(sample["metric"]["job"], "tollgate");
    assert_eq!(sample["value"][1], "1");
    // Every traffic, quota and latency panel of the shipped dashboard answers for the demo
    // deployment at the default metrics detail (the others need 429s, errors, consumers, prices
    // or full detail, none of which this traffic has).
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{root}/config/grafana/tollgate-quotas.json")).unwrap())
            .unwrap();
    let mut unanswered = Vec::new();
    for panel in dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| [1, 2, 4, 5, 6, 7].contains(&p["id"].as_u64().unwrap()))
    {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            if expr.contains("ratelimit_remaining") || expr.contains("backend_errors") {
                continue;
            }
            let expr = expr.replace("$deployment", DEPLOYMENT);
            let mut answered = false;
            for _ in 0..100 {
                let url = format!("http://127.0.0.1:{port}/api/v1/query?query={}", percent_encode(&expr));
                if let Some(reply) = h.client.try_get(&url).await.filter(|r| r.status == StatusCode::OK) {
                    if reply.json()["data"]["result"].as_array().is_some_and(|r| !r.is_empty()) {
                        answered = true;
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            if !answered {
                unanswered.push(expr);
            }
        }
    }
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    assert!(unanswered.is_empty(), "dashboard queries without an answer: {unanswered:#?}");
}

/// A query string's value, percent-encoded (PromQL has braces, quotes and spaces).
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
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
