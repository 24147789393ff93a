//! Consumers end to end: their own keys and limits inside a deployment's quota, period quotas
//! (403 with the reset time, a new period admits again, a restart keeps the count from the
//! ledger), connections across projects, and what the ledger, `tollgate usage`, the headers and
//! the metrics say of them. Clocks are manual: every number is exact, nothing is timed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::sync::Arc;

use common::*;
use http::{Method, StatusCode};
use tollgate::core::api::ApiRoute;
use tollgate::core::clock::ManualClock;
use tollgate::core::estimate::{Tokenizer, estimate};

const BATCH_KEY: &str = "BatchConsumerKey0123456789abcdef";
const BATCH_SECONDARY: &str = "BatchConsumerKey2nd456789abcdefg";
const CHAT_KEY: &str = "ChatConsumerKey0123456789abcdefg";
const GUEST_KEY: &str = "GuestConsumerKey0123456789abcdef";

/// 2026-12-03T23:59:00Z: a minute before the day ends.
const LAST_MINUTE_OF_DEC_3: u64 = 1_796_342_340;

fn clock_at(unix: u64) -> Arc<ManualClock> {
    let clock = Arc::new(ManualClock::new(0));
    clock.set_unix_seconds(unix);
    clock
}

/// `batch` (own limit: `batch_grant`) and `chat` (the deployment's limits only) on the demo
/// deployment, and `guest` of project `partners` granted `other` (a connection).
fn consumers(batch_grant: &str, batch_consumer: &str) -> String {
    format!(
        r#"
[[consumers]]
name = "batch"
keys = ["{batch}", "{batch2}"]
{batch_consumer}
[[consumers.grants]]
deployment = "{DEPLOYMENT}"
{batch_grant}

[[consumers]]
name = "chat"
keys = ["{chat}"]
[[consumers.grants]]
deployment = "{DEPLOYMENT}"

[[consumers]]
name = "guest"
project = "partners"
keys = ["{guest}"]
[[consumers.grants]]
deployment = "other"
"#,
        batch = stored(BATCH_KEY),
        batch2 = stored(BATCH_SECONDARY),
        chat = stored(CHAT_KEY),
        guest = stored(GUEST_KEY),
    )
}

fn chat_body(max_tokens: u64) -> String {
    format!(r#"{{"messages":[{{"role":"user","content":"hello"}}],"max_tokens":{max_tokens}}}"#)
}

async fn ledger_of(h: Harness, path: &std::path::Path) -> Vec<serde_json::Value> {
    let Harness { gateway, .. } = h;
    gateway.shutdown().await;
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test]
async fn a_consumer_over_its_own_limit_gets_429_while_another_is_served_and_together_they_keep_the_deployment_limit() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("usage.jsonl");
    let h = Harness::with(Setup {
        deployment: "requests_per_minute = 100\ntokens_per_minute = 10000000".into(),
        tables: consumers("requests_per_minute = 30", ""),
        clock: Some(clock_at(LAST_MINUTE_OF_DEC_3 - 3600)),
        ledger: Some(ledger.clone()),
        ..Default::default()
    })
    .await;
    let url = h.deployment_url("/chat/completions");
    // The batch job takes its 30 of the frozen minute; the 31st is refused by its own limit.
    for i in 0..30u64 {
        let reply = h.client.post(&url, &[("api-key", BATCH_KEY)], CHAT).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        // Its own level is the tighter one: the headers show it.
        assert_eq!(reply.number("x-ratelimit-limit-requests"), 30);
        assert_eq!(reply.number("x-ratelimit-remaining-requests"), 29 - i);
    }
    let refused = h.client.post(&url, &[("authorization", &format!("Bearer {BATCH_SECONDARY}"))], CHAT).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS, "{}", refused.text());
    assert_eq!(refused.error_code(), "TooManyRequests");
    let message = refused.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("consumer 'default/batch'") && message.contains("30 requests per minute"), "{message}");
    assert_eq!(refused.number("retry-after-ms"), 2000, "30 a minute: the next in exactly 2 s");
    let policy = refused.header("ratelimit-policy");
    assert!(policy.starts_with("\"requests\";q=100;w=60, \"tokens\";q=10000000;w=60;qu=\"tokens\""), "{policy}");
    assert!(policy.contains("\"grant-requests\";q=30;w=60"), "{policy}");
    // The chat app beside it is served: the deployment still has room.
    for _ in 0..10 {
        let reply = h.client.post(&url, &[("api-key", CHAT_KEY)], CHAT).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.number("x-ratelimit-limit-requests"), 100, "chat has no limit of its own");
    }

    // 64 clients at once, half of each: the deployment has 60 of its 100 left, all for chat.
    let mut tasks = Vec::new();
    for task in 0..64 {
        let (client, url) = (h.client.clone(), url.clone());
        let key = if task % 2 == 0 { BATCH_KEY } else { CHAT_KEY };
        tasks.push(tokio::spawn(async move {
            let mut replies = Vec::new();
            for _ in 0..3 {
                replies.push((key, client.post(&url, &[("api-key", key)], CHAT).await));
            }
            replies
        }));
    }
    let mut replies = Vec::new();
    for task in tasks {
        replies.extend(task.await.unwrap());
    }
    let ok = |who: &str| replies.iter().filter(|(k, r)| *k == who && r.status == StatusCode::OK).count();
    assert_eq!(ok(BATCH_KEY), 0, "batch's own minute is used up");
    assert_eq!(ok(CHAT_KEY), 60, "chat gets exactly what the deployment has left");
    for (key, reply) in replies.iter().filter(|(_, r)| r.status != StatusCode::OK) {
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
        let message = reply.json()["error"]["message"].as_str().unwrap().to_owned();
        // batch is held by its own limit, chat by the deployment's.
        assert_eq!(message.contains("consumer 'default/batch'"), *key == BATCH_KEY, "{message}");
    }

    let lines = ledger_of(h, &ledger).await;
    let served = |who: &str| lines.iter().filter(|l| l["consumer"] == who && l["status"] == 200).count();
    assert_eq!(served("default/batch"), 30);
    assert_eq!(served("default/chat"), 70);
    assert_eq!(lines.iter().filter(|l| l["status"] == 200).count(), 100, "never more than the deployment's 100");
    assert_eq!(lines.len(), 30 + 1 + 10 + 192);
    let secondary = lines.iter().filter(|l| l["consumer"] == "default/batch" && l["key_slot"] == "secondary").count();
    assert_eq!(secondary, 1, "the consumer's key slot is recorded");
    assert!(lines.iter().all(|l| l["project"] == "default"));

    let output = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["usage", "--ledger", ledger.to_str().unwrap(), "--by", "consumer", "--json"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let rows = report["rows"].as_array().unwrap();
    let requests = |who: &str| rows.iter().find(|r| r["consumer"] == who).map(|r| r["requests"].as_u64().unwrap());
    assert_eq!(requests("default/batch"), Some(30 + 1 + 96));
    assert_eq!(requests("default/chat"), Some(10 + 96));
}

#[tokio::test]
async fn an_exhausted_period_quota_answers_403_until_the_day_ends_then_admits_again() {
    let clock = clock_at(LAST_MINUTE_OF_DEC_3);
    let h = Harness::with(Setup {
        tables: consumers("requests_per_day = 2", ""),
        clock: Some(Arc::clone(&clock)),
        ..Default::default()
    })
    .await;
    let url = h.deployment_url("/chat/completions");
    let key = [("api-key", BATCH_KEY)];
    for left in [1, 0] {
        let reply = h.client.post(&url, &key, CHAT).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert!(reply.header("ratelimit-policy").contains("\"grant-requests-per-day\";q=2;w=86400"));
        assert!(reply.header("ratelimit").contains(&format!("\"grant-requests-per-day\";r={left};t=60")));
    }
    let refused = h.client.post(&url, &key, CHAT).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.text());
    assert_eq!(refused.error_code(), "QuotaExceeded");
    let message = refused.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("2 of its 2 requests this day"), "{message}");
    assert!(message.contains("2026-12-04T00:00:00Z"), "the reset time is in the message: {message}");
    assert_eq!(refused.number("retry-after"), 60, "until midnight UTC, not a second");
    assert!(refused.headers.get("retry-after-ms").is_none(), "nothing to pace: no retry-after-ms");
    // The other consumer, and the deployment's own keys, are not held by batch's quota.
    assert_eq!(h.client.post(&url, &[("api-key", CHAT_KEY)], CHAT).await.status, StatusCode::OK);
    assert_eq!(h.client.post(&url, &[("api-key", PRIMARY_KEY)], CHAT).await.status, StatusCode::OK);
    // One second before midnight: still refused. At midnight: a new day.
    clock.advance_ms(59_000);
    assert_eq!(h.client.post(&url, &key, CHAT).await.status, StatusCode::FORBIDDEN);
    clock.advance_ms(1_000);
    assert_eq!(h.client.post(&url, &key, CHAT).await.status, StatusCode::OK);
    let metrics = h.client.call(Method::GET, &h.admin_url("/metrics"), &[], "").await.text();
    assert!(
        metrics.contains(&format!(
            "tollgate_consumer_rejections_total{{consumer=\"default/batch\",deployment=\"{DEPLOYMENT}\",reason=\"quota_exceeded\"}} 2"
        )),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "tollgate_consumer_quota_used_ratio{{consumer=\"default/batch\",quota=\"requests_per_day\",scope=\"{DEPLOYMENT}\"}} 0.5"
    )));
}

#[tokio::test]
async fn a_monthly_token_quota_counts_real_usage_and_survives_a_restart_through_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("usage.jsonl");
    let clock = clock_at(LAST_MINUTE_OF_DEC_3 - 86_400);
    let setup = || Setup {
        tables: consumers("", "tokens_per_month = 1000"),
        clock: Some(Arc::clone(&clock)),
        ledger: Some(ledger.clone()),
        ..Default::default()
    };
    let h = Harness::with(setup()).await;
    let url = h.deployment_url("/chat/completions");
    let key = ("api-key", BATCH_KEY);
    // The mock answers with exactly this many completion tokens; usage, not the reservation, counts.
    let mut used = 0;
    for _ in 0..2 {
        let reply = h.client.post(&url, &[key, ("x-mock-completion-tokens", "300")], &chat_body(400)).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        used += reply.json()["usage"]["total_tokens"].as_u64().unwrap();
    }
    assert!(used > 600 && used < 700, "{used}");
    let left = h.client.post(&url, &[key, ("x-mock-completion-tokens", "1")], &chat_body(1)).await;
    // At admission the quota holds the reservation (the prompt's estimate and max_tokens).
    let reserved =
        estimate(ApiRoute::ChatCompletions, chat_body(1).as_bytes(), Tokenizer::Bpe).unwrap().prompt_tokens + 1;
    assert_eq!(left.number("x-ratelimit-remaining-quota-tokens"), 1000 - used - reserved);
    let left_after = 1000 - used - left.json()["usage"]["total_tokens"].as_u64().unwrap();
    assert!(left.header("ratelimit-policy").contains("\"consumer-tokens-per-month\";q=1000;w=2678400;qu=\"tokens\""));
    let lines = ledger_of(h, &ledger).await;
    assert_eq!(lines.len(), 3);

    // A restart in the middle of the month: the count comes back from the ledger.
    let h = Harness::with(setup()).await;
    let url = h.deployment_url("/chat/completions");
    let too_big = h.client.post(&url, &[key], &chat_body(left_after)).await;
    assert_eq!(too_big.status, StatusCode::FORBIDDEN, "{}", too_big.text());
    assert_eq!(too_big.error_code(), "QuotaExceeded");
    let message = too_big.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains(&format!("has used {} of its 1000 tokens this month", 1000 - left_after)), "{message}");
    assert!(message.contains("2027-01-01T00:00:00Z"), "the month ends with December: {message}");
    let fits = h.client.post(&url, &[key, ("x-mock-completion-tokens", "1")], &chat_body(1)).await;
    assert_eq!(fits.status, StatusCode::OK, "{}", fits.text());
}

#[tokio::test]
async fn a_consumer_key_finds_its_deployment_alone_and_is_refused_where_it_is_not_granted() {
    let h = Harness::with(Setup { tables: consumers("", ""), ..Default::default() }).await;
    // `/v1/models` lists what the key may call; a body `model` or nothing names the deployment.
    let models = h.client.call(Method::GET, &h.url("/v1/models"), &[("api-key", GUEST_KEY)], "").await;
    assert_eq!(models.status, StatusCode::OK, "{}", models.text());
    let ids: Vec<String> =
        models.json()["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids, ["other"]);
    let by_model = h
        .client
        .post(
            &h.url("/v1/chat/completions"),
            &[("api-key", GUEST_KEY)],
            r#"{"model":"other","messages":[{"role":"user","content":"hi"}]}"#,
        )
        .await;
    assert_eq!(by_model.status, StatusCode::OK, "{}", by_model.text());
    let info = h.client.call(Method::GET, &h.url("/models/info"), &[("api-key", GUEST_KEY)], "").await;
    assert_eq!(info.status, StatusCode::OK, "its one deployment answers /info: {}", info.text());
    // A deployment it is not granted: 401, saying so.
    let refused = h.client.post(&h.deployment_url("/chat/completions"), &[("api-key", GUEST_KEY)], CHAT).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused.error_code(), "Unauthorized");
    let message = refused.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("consumer 'partners/guest'") && message.contains(DEPLOYMENT), "{message}");
    // The deployment's own keys work exactly as before.
    assert_eq!(
        h.client.post(&h.deployment_url("/chat/completions"), &[("api-key", PRIMARY_KEY)], CHAT).await.status,
        StatusCode::OK
    );
}

const OWNER_TOKEN: &str = "ConsumersOwnerToken0123456789abc";

fn owner_table() -> String {
    format!("[[admin.tokens]]\nname = \"owner\"\nrole = \"owner\"\ntoken = \"{}\"\n", stored(OWNER_TOKEN))
}

async fn reload(h: &Harness) {
    let auth = format!("Bearer {OWNER_TOKEN}");
    let reply = h.client.call(Method::POST, &h.admin_url("/reload"), &[("authorization", &auth)], "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

#[tokio::test]
async fn a_reload_keeps_a_consumer_bucket_and_removing_its_grant_stops_its_key_at_once() {
    let h = Harness::with(Setup {
        deployment: "requests_per_minute = 100".into(),
        tables: format!("{}\n{}", consumers("requests_per_minute = 5", ""), owner_table()),
        clock: Some(clock_at(LAST_MINUTE_OF_DEC_3 - 3600)),
        ..Default::default()
    })
    .await;
    let url = h.deployment_url("/chat/completions");
    for _ in 0..3 {
        assert_eq!(h.client.post(&url, &[("api-key", BATCH_KEY)], CHAT).await.status, StatusCode::OK);
    }
    // A reload that changes nothing of batch keeps its bucket: 1 left after this one, not 4.
    let text = std::fs::read_to_string(&h.config_path).unwrap();
    std::fs::write(&h.config_path, format!("{text}\n# touched\n")).unwrap();
    reload(&h).await;
    let reply = h.client.post(&url, &[("api-key", BATCH_KEY)], CHAT).await;
    assert_eq!(reply.number("x-ratelimit-remaining-requests"), 1, "{:?}", reply.headers);

    // The grant moves to `other`: batch's key stops on the demo deployment at once.
    let moved =
        text.replacen(&format!("deployment = \"{DEPLOYMENT}\"\nrequests_per_minute = 5"), "deployment = \"other\"", 1);
    assert_ne!(moved, text);
    std::fs::write(&h.config_path, moved).unwrap();
    reload(&h).await;
    let refused = h.client.post(&url, &[("api-key", BATCH_KEY)], CHAT).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{}", refused.text());
    let other = h.url("/openai/deployments/other/chat/completions");
    assert_eq!(h.client.post(&other, &[("api-key", BATCH_KEY)], CHAT).await.status, StatusCode::OK);
    // The others are untouched.
    assert_eq!(h.client.post(&url, &[("api-key", CHAT_KEY)], CHAT).await.status, StatusCode::OK);
}
