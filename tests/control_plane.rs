//! The admin API end to end: roles, subscriptions and health, deployments and keys, bad input,
//! persistence across restarts, reloads, and zero failed requests while the state changes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::admin::*;
use common::*;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};

const LLAMA_8B: &str = "azureml://registries/azureml-meta/models/Meta-Llama-3-8B-Instruct";
const LLAMA_70B: &str = "azureml://registries/azureml-meta/models/Meta-Llama-3-70B-Instruct";
const PHI: &str = "azureml://registries/azureml/models/Phi-3-mini-4k-instruct";

fn tables() -> String {
    let mut out = format!(
        r#"[[models]]
id = "{LLAMA_8B}"
version = "3"
offer = "meta-llama-3"
backend = "{{mock}}"
[[models]]
id = "{LLAMA_70B}"
version = "2"
offer = "meta-llama-3"
backend = "{{mock}}"
[[models]]
id = "{PHI}"
version = "7"
backend = "{{mock}}"
"#
    );
    out.push_str(&token_tables());
    out
}

async fn start() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("usage.jsonl");
    std::mem::forget(dir);
    Harness::with(Setup { tables: tables(), ledger: Some(ledger), ..Default::default() }).await
}

#[tokio::test]
async fn every_role_against_every_action() {
    use Method as M;
    // (role, expected success for each step below)
    let table: [(&str, [bool; 15]); 4] = [
        ("owner", [true; 15]),
        ("contributor", [true, true, true, true, true, true, true, true, true, true, true, false, false, true, true]),
        (
            "ai-developer",
            [true, true, true, true, true, false, true, false, true, false, false, false, false, false, false],
        ),
        (
            "reader",
            [true, false, true, false, true, false, false, false, true, true, false, false, false, false, false],
        ),
    ];
    for (role, expected) in table {
        let h = start().await;
        let p = "/projects/team-a";
        let steps: Vec<Step> = vec![
            (M::GET, "/models".into(), None, None),
            (M::PUT, format!("{p}/subscriptions/llama"), Some(json!({"modelId": LLAMA_8B})), None),
            (M::GET, format!("{p}/subscriptions"), None, None),
            (M::PUT, format!("{p}/deployments/dep-1"), Some(json!({"modelId": LLAMA_8B})), None),
            (M::GET, format!("{p}/deployments/dep-1"), None, None),
            (M::PATCH, format!("{p}/deployments/dep-1"), Some(json!({"limits": {"requestsPerMinute": 50}})), None),
            (M::POST, format!("{p}/deployments/dep-1/listKeys"), None, None),
            (M::POST, format!("{p}/deployments/dep-1/regenerateKeys"), Some(json!({"keyType": "Secondary"})), None),
            (M::GET, format!("{p}/deployments/dep-1/usage"), None, None),
            (M::GET, "/tokens".into(), None, None),
            (M::POST, "/reload".into(), None, None),
            (M::PUT, "/tokens/extra".into(), Some(json!({"role": "reader"})), None),
            (
                M::DELETE,
                "/tokens/extra".into(),
                None,
                Some((M::PUT, "/tokens/extra".into(), Some(json!({"role": "reader"})))),
            ),
            (M::DELETE, format!("{p}/deployments/dep-1"), None, None),
            (M::DELETE, format!("{p}/subscriptions/llama"), None, None),
        ];
        h.role_steps(role, steps, &expected).await;
    }
}

#[tokio::test]
async fn ai_developers_are_confined_to_their_projects() {
    let h = start().await;
    let other = TOKENS.iter().find(|t| t.0 == "dev-b").unwrap().2;
    let reply =
        h.api(Method::PUT, "/projects/team-a/subscriptions/s", Some(other), Some(json!({"modelId": LLAMA_8B}))).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(reply.text().contains("team-a"));
    let reply =
        h.api(Method::PUT, "/projects/team-b/subscriptions/s", Some(other), Some(json!({"modelId": LLAMA_8B}))).await;
    assert_eq!(reply.status, StatusCode::CREATED);
}

#[tokio::test]
async fn subscriptions_gate_deployments_and_their_health() {
    let h = start().await;
    let p = "/projects/team-a";
    // Without a subscription to the offer: 409 naming what is missing.
    let reply = h
        .api(Method::PUT, &format!("{p}/deployments/llama8"), Some(token("owner")), Some(json!({"modelId": LLAMA_8B})))
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert!(reply.text().contains("meta-llama-3") && reply.text().contains("subscriptions"), "{}", reply.text());
    // A model without an offer needs none.
    let phi = h.owner(Method::PUT, &format!("{p}/deployments/phi"), Some(json!({"modelId": PHI}))).await;
    assert_eq!(phi.status, StatusCode::CREATED);

    let sub = h.owner(Method::PUT, &format!("{p}/subscriptions/meta"), Some(json!({"modelId": LLAMA_8B}))).await;
    assert_eq!(sub.status, StatusCode::CREATED);
    assert_eq!(sub.json()["properties"]["offer"], "meta-llama-3");
    let created = h.owner(Method::PUT, &format!("{p}/deployments/llama8"), Some(json!({"modelId": LLAMA_8B}))).await;
    assert_eq!(created.status, StatusCode::CREATED);
    let d = created.json();
    assert_eq!(d["properties"]["endpointState"], "Online");
    assert_eq!(d["properties"]["marketplaceSubscriptionId"], "/projects/team-a/subscriptions/meta");
    assert_eq!(d["properties"]["modelSettings"]["modelId"], LLAMA_8B);
    assert_eq!(d["properties"]["limits"]["tokensPerMinute"], 200_000);
    assert!(d["properties"]["inferenceEndpoint"]["uri"].as_str().unwrap().ends_with("/openai/deployments/llama8"));
    let key = d["keys"]["primaryKey"].as_str().unwrap().to_owned();
    assert_eq!(h.chat("llama8", &key).await, StatusCode::OK);
    // One subscription serves later deployments of the same offer in the project.
    assert_eq!(
        h.owner(Method::PUT, &format!("{p}/deployments/llama70"), Some(json!({"modelId": LLAMA_70B}))).await.status,
        StatusCode::CREATED
    );
    // One deployment per model per project; another project needs its own subscription.
    let again = h
        .api(
            Method::PUT,
            &format!("{p}/deployments/llama8-bis"),
            Some(token("owner")),
            Some(json!({"modelId": LLAMA_8B})),
        )
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert!(again.text().contains("one deployment per model per project"));
    let elsewhere = h
        .api(
            Method::PUT,
            "/projects/team-b/deployments/llama8-b",
            Some(token("owner")),
            Some(json!({"modelId": LLAMA_8B})),
        )
        .await;
    assert_eq!(elsewhere.status, StatusCode::CONFLICT);

    // Deleting the subscription makes its endpoints unhealthy: 503 saying why.
    h.owner(Method::DELETE, &format!("{p}/subscriptions/meta"), None).await;
    let d = h.owner(Method::GET, &format!("{p}/deployments/llama8"), None).await.json();
    assert_eq!(d["properties"]["endpointState"], "Unhealthy");
    let url = h.url("/openai/deployments/llama8/chat/completions");
    let reply = h.client.post(&url, &[("api-key", &key)], CHAT).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.error_code(), "ServiceUnavailable");
    assert!(reply.text().contains("subscription") && reply.text().contains("meta-llama-3"), "{}", reply.text());
    assert_eq!(
        h.chat("phi", phi.json()["keys"]["primaryKey"].as_str().unwrap()).await,
        StatusCode::OK,
        "other offers are unaffected"
    );
    // Subscribing again brings it back.
    h.owner(Method::PUT, &format!("{p}/subscriptions/meta-again"), Some(json!({"modelId": LLAMA_70B}))).await;
    assert_eq!(
        h.owner(Method::GET, &format!("{p}/deployments/llama8"), None).await.json()["properties"]["endpointState"],
        "Online"
    );
    assert_eq!(h.chat("llama8", &key).await, StatusCode::OK);
}

#[tokio::test]
async fn keys_list_regenerate_and_rotate_without_downtime() {
    let h = start().await;
    let p = "/projects/team-a";
    let created = h.owner(Method::PUT, &format!("{p}/deployments/phi"), Some(json!({"modelId": PHI}))).await.json();
    let listed = h.owner(Method::POST, &format!("{p}/deployments/phi/listKeys"), None).await.json();
    assert_eq!(created["keys"], listed);
    let (primary, secondary) =
        (listed["primaryKey"].as_str().unwrap().to_owned(), listed["secondaryKey"].as_str().unwrap().to_owned());
    assert_eq!(primary.len(), 32);
    assert_eq!(h.chat("phi", &primary).await, StatusCode::OK);
    assert_eq!(h.chat("phi", &secondary).await, StatusCode::OK);
    let regenerated = h
        .owner(Method::POST, &format!("{p}/deployments/phi/regenerateKeys"), Some(json!({"keyType": "Secondary"})))
        .await
        .json();
    let new_secondary = regenerated["secondaryKey"].as_str().unwrap();
    assert_ne!(new_secondary, secondary);
    assert_eq!(regenerated["primaryKey"], primary.as_str());
    assert_eq!(h.chat("phi", &secondary).await, StatusCode::UNAUTHORIZED, "the old key stops at once");
    assert_eq!(h.chat("phi", new_secondary).await, StatusCode::OK);
    assert_eq!(h.chat("phi", &primary).await, StatusCode::OK, "the other slot keeps working");
    // Usage per meter, from the ledger: the 4 authenticated calls (the old key's 401 is not billed).
    let usage = h.owner(Method::GET, &format!("{p}/deployments/phi/usage?since=2020-01-01"), None).await.json();
    assert_eq!(usage["deployment"], "phi");
    assert_eq!(usage["value"][0]["meter"], "inference");
    assert_eq!(usage["value"][0]["requests"], 4);
    assert!(usage["value"][0]["totalTokens"].as_u64().unwrap() > 0);
    let later = h.owner(Method::GET, &format!("{p}/deployments/phi/usage?since=2999-01-01"), None).await.json();
    assert_eq!(later["value"], json!([]));
    // Keys never appear in the deployment resource.
    let d = h.owner(Method::GET, &format!("{p}/deployments/phi"), None).await.text();
    assert!(!d.contains(&primary) && !d.contains(new_secondary));
    // File deployments keep digests only: their keys cannot be listed.
    let file = h
        .api(Method::POST, &format!("/projects/default/deployments/{DEPLOYMENT}/listKeys"), Some(token("owner")), None)
        .await;
    assert_eq!(file.status, StatusCode::CONFLICT);
    assert!(file.text().contains("configuration file"));
}

#[tokio::test]
async fn bad_input_is_refused_with_what_to_fix_and_nothing_half_applied() {
    let h = start().await;
    let p = "/projects/team-a";
    let owner = token("owner");
    h.owner(Method::PUT, &format!("{p}/deployments/phi"), Some(json!({"modelId": PHI}))).await;
    let before = h.owner(Method::GET, &format!("{p}/deployments"), None).await.json();
    let cases: Vec<(Method, String, String, StatusCode, &str)> = vec![
        (
            Method::PUT,
            format!("{p}/deployments/x1"),
            "{not json".into(),
            StatusCode::BAD_REQUEST,
            "not what this endpoint takes",
        ),
        (
            Method::PUT,
            format!("{p}/deployments/x1"),
            json!({"modelId": PHI, "colour": 1}).to_string(),
            StatusCode::BAD_REQUEST,
            "unknown field `colour`",
        ),
        (
            Method::PUT,
            format!("{p}/deployments/9bad"),
            json!({"modelId": PHI}).to_string(),
            StatusCode::BAD_REQUEST,
            "must start with a letter",
        ),
        (
            Method::PUT,
            format!("{p}/deployments/x1"),
            json!({"modelId": format!("{PHI}/versions/7")}).to_string(),
            StatusCode::BAD_REQUEST,
            "without a version",
        ),
        (
            Method::PUT,
            format!("{p}/deployments/x1"),
            json!({"modelId": "azureml://nope"}).to_string(),
            StatusCode::NOT_FOUND,
            "not in the catalog",
        ),
        (
            Method::PUT,
            format!("/projects/team-b/deployments/{DEPLOYMENT}"),
            json!({"modelId": LLAMA_70B}).to_string(),
            StatusCode::CONFLICT,
            "taken",
        ),
        (
            Method::PUT,
            "/projects/team-b/deployments/PHI".into(),
            json!({"modelId": PHI}).to_string(),
            StatusCode::CONFLICT,
            "taken",
        ),
        (
            Method::PATCH,
            format!("{p}/deployments/phi"),
            json!({"limits": {"requestsPerMinute": 0}}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "between 1 and",
        ),
        (
            Method::PATCH,
            format!("{p}/deployments/phi"),
            json!({"limits": {"tokensPerMinute": 1u64 << 40}}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "between 1 and",
        ),
        (
            Method::PUT,
            format!("{p}/deployments/x2"),
            format!("{{\"modelId\":\"{}\"}}", "x".repeat(2 << 20)),
            StatusCode::PAYLOAD_TOO_LARGE,
            "limited",
        ),
        (
            Method::POST,
            format!("{p}/deployments/phi/regenerateKeys"),
            json!({"keyType": "Tertiary"}).to_string(),
            StatusCode::BAD_REQUEST,
            "unknown variant",
        ),
        (Method::GET, format!("{p}/deployments/nope"), String::new(), StatusCode::NOT_FOUND, "no deployment"),
        (
            Method::DELETE,
            "/projects/default/deployments/meta-llama3-8b-qwerty".into(),
            String::new(),
            StatusCode::CONFLICT,
            "configuration file",
        ),
        (Method::POST, format!("{p}/deployments"), String::new(), StatusCode::METHOD_NOT_ALLOWED, "takes GET"),
    ];
    for (method, path, body, status, says) in cases {
        let bearer = format!("Bearer {owner}");
        let reply = h
            .client
            .call(
                method.clone(),
                &format!("http://{}{path}", h.gateway.admin_addr),
                &[("authorization", &bearer)],
                &body,
            )
            .await;
        assert_eq!(reply.status, status, "{method} {path}: {}", reply.text());
        reply.error_code();
        assert!(reply.text().contains(says), "{method} {path}: {}", reply.text());
    }
    assert_eq!(
        h.owner(Method::GET, &format!("{p}/deployments"), None).await.json(),
        before,
        "nothing was half-applied"
    );
    assert_eq!(h.owner(Method::GET, "/projects/team-b/deployments", None).await.json()["value"], json!([]));
}

#[tokio::test]
async fn patched_limits_apply_at_once_and_keep_the_level() {
    let clock = Arc::new(tollgate::core::clock::ManualClock::new(0));
    let h = Harness::with(Setup { tables: tables(), clock: Some(clock), ..Default::default() }).await;
    let p = "/projects/team-a";
    let keys = h
        .owner(
            Method::PUT,
            &format!("{p}/deployments/phi"),
            Some(json!({"modelId": PHI, "limits": {"requestsPerMinute": 10}})),
        )
        .await
        .json()["keys"]
        .clone();
    let key = keys["primaryKey"].as_str().unwrap();
    for _ in 0..4 {
        assert_eq!(h.chat("phi", key).await, StatusCode::OK);
    }
    let d = h
        .owner(Method::PATCH, &format!("{p}/deployments/phi"), Some(json!({"limits": {"requestsPerMinute": 100}})))
        .await
        .json();
    assert_eq!(d["properties"]["limits"]["requestsPerMinute"], 100);
    let url = h.url("/openai/deployments/phi/chat/completions");
    let reply = h.client.post(&url, &[("api-key", key)], CHAT).await;
    assert_eq!(reply.number("x-ratelimit-limit-requests"), 100);
    assert_eq!(reply.number("x-ratelimit-remaining-requests"), 5, "6 of the old 10 were left: no free refill");
}

#[tokio::test]
async fn deleting_a_deployment_lets_in_flight_streams_finish_and_then_404s() {
    let h = start().await;
    let p = "/projects/team-a";
    let key = h.owner(Method::PUT, &format!("{p}/deployments/phi"), Some(json!({"modelId": PHI}))).await.json()["keys"]
        ["primaryKey"]
        .as_str()
        .unwrap()
        .to_owned();
    let url = h.url("/openai/deployments/phi/chat/completions");
    // The stream has begun (its head is here) when the deployment is deleted.
    let headers = [("api-key", key.as_str()), ("x-mock-tokens-per-second", "20"), ("x-mock-completion-tokens", "8")];
    let response = h.client.send(Method::POST, &url, &headers, STREAM_CHAT).await;
    assert_eq!(response.status(), StatusCode::OK);
    h.owner(Method::DELETE, &format!("{p}/deployments/phi"), None).await;
    assert_eq!(h.chat("phi", &key).await, StatusCode::NOT_FOUND);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn acknowledged_changes_survive_a_restart() {
    let state_dir = tempfile::tempdir().unwrap();
    let state = state_dir.path().join("state.json");
    let setup = || Setup {
        tables: tables(),
        admin: format!("state_file = {:?}", state.display().to_string()),
        ..Default::default()
    };
    let h = Harness::with(setup()).await;
    h.owner(Method::PUT, "/projects/team-a/subscriptions/meta", Some(json!({"modelId": LLAMA_8B}))).await;
    let keys = h
        .owner(Method::PUT, "/projects/team-a/deployments/llama8", Some(json!({"modelId": LLAMA_8B})))
        .await
        .json()["keys"]
        .clone();
    let token = h.owner(Method::PUT, "/tokens/ci", Some(json!({"role": "reader"}))).await.json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let Harness { gateway, .. } = h;
    gateway.shutdown().await;
    let text = std::fs::read_to_string(&state).unwrap();
    assert!(
        !text.contains(keys["primaryKey"].as_str().unwrap()) && !text.contains(&token),
        "no plain keys or tokens on disk"
    );

    let h = Harness::with(setup()).await;
    let listed = h.owner(Method::POST, "/projects/team-a/deployments/llama8/listKeys", None).await.json();
    assert_eq!(listed, keys);
    assert_eq!(h.chat("llama8", keys["primaryKey"].as_str().unwrap()).await, StatusCode::OK);
    assert_eq!(h.api(Method::GET, "/models", Some(&token), None).await.status, StatusCode::OK);
    assert_eq!(
        h.owner(Method::GET, "/projects/team-a/subscriptions", None).await.json()["value"].as_array().unwrap().len(),
        1
    );
}

#[tokio::test]
async fn reloading_the_file_applies_valid_changes_and_refuses_invalid_ones() {
    let h = start().await;
    let text = std::fs::read_to_string(&h.config_path).unwrap();
    let added = format!(
        "{text}\n[[deployments]]\nname = \"late\"\nmodel = \"{PHI}\"\nkeys = [\"{}\"]\nrequests_per_minute = 7\n",
        stored(OTHER_KEY)
    );
    std::fs::write(&h.config_path, &added).unwrap();
    let reply = h.owner(Method::POST, "/reload", None).await;
    assert_eq!(reply.json()["deployments"], 3);
    let url = h.url("/openai/deployments/late/chat/completions");
    let reply = h.client.post(&url, &[("api-key", OTHER_KEY)], CHAT).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.number("x-ratelimit-limit-requests"), 7);

    std::fs::write(&h.config_path, format!("{added}\nunknown_setting = 1\n")).unwrap();
    let reply = h.api(Method::POST, "/reload", Some(token("owner")), None).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(reply.text().contains("unknown_setting"), "{}", reply.text());
    let reply = h.client.post(&url, &[("api-key", OTHER_KEY)], CHAT).await;
    assert_eq!(reply.status, StatusCode::OK, "the running configuration stays");
    assert_eq!(reply.number("x-ratelimit-remaining-requests"), 5, "bucket levels are kept across reloads");
}

#[tokio::test]
async fn a_load_sees_no_failure_across_20_reloads_and_5_key_regenerations() {
    let h = start().await;
    let p = "/projects/team-a";
    let keys = h
        .owner(
            Method::PUT,
            &format!("{p}/deployments/phi"),
            Some(json!({"modelId": PHI, "limits": {"requestsPerMinute": 1000000, "tokensPerMinute": 100000000}})),
        )
        .await
        .json()["keys"]
        .clone();
    let primary = keys["primaryKey"].as_str().unwrap().to_owned();
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (client, stop, primary) = (h.client.clone(), stop.clone(), primary.clone());
            let urls = [
                h.url("/openai/deployments/phi/chat/completions"),
                h.url(&format!("/openai/deployments/{DEPLOYMENT}/chat/completions")),
            ];
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    statuses.push(client.post(&urls[0], &[("api-key", &primary)], CHAT).await.status);
                    statuses.push(client.post(&urls[1], &[("api-key", PRIMARY_KEY)], CHAT).await.status);
                }
                statuses
            })
        })
        .collect();
    for i in 0..20 {
        h.owner(Method::POST, "/reload", None).await;
        if i % 4 == 0 {
            h.owner(
                Method::POST,
                &format!("{p}/deployments/phi/regenerateKeys"),
                Some(json!({"keyType": "Secondary"})),
            )
            .await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for task in load {
        for status in task.await.unwrap() {
            assert_eq!(status, StatusCode::OK);
            total += 1;
        }
    }
    assert!(total > 40, "the load ran: {total} requests");
}

/// The demo deployment's chat, as a status (through a fresh connection each time is not needed).
async fn chat_status(h: &Harness, deployment: &str, key: &str) -> StatusCode {
    h.chat(deployment, key).await
}

/// Waits until the gateway has refused `n` reloads of its file.
async fn refused_reloads_reach(h: &Harness, n: u64) {
    for _ in 0..1000 {
        let samples = parse_metrics(&h.client.call(Method::GET, &h.admin_url("/metrics"), &[], "").await.text());
        if metric(&samples, "tollgate_config_reloads_total", &[("result", "refused")]) >= n as f64 {
            assert_eq!(metric(&samples, "tollgate_config_last_reload_successful", &[]), 0.0);
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the watcher never refused reload {n}");
}

#[tokio::test]
async fn a_config_file_written_in_place_is_never_loaded_half_written() {
    let h = start().await;
    let text = std::fs::read_to_string(&h.config_path).unwrap();
    assert_eq!(chat_status(&h, DEPLOYMENT, PRIMARY_KEY).await, StatusCode::OK);
    let before = h.owner(Method::GET, "/models", None).await;
    assert_eq!(before.status, StatusCode::OK);

    // As `cp` or an editor writing in place: truncate, stay empty a while, then half the file,
    // then the rest. Meanwhile every request and the owner's token keep working.
    // Cut where the second deployment starts: it parses, but without the tokens and one deployment.
    let cut = &text[..text.find("[[deployments]]\nname = \"other\"").unwrap()];
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (client, stop) = (h.client.clone(), stop.clone());
        let url = h.url(&format!("/openai/deployments/{DEPLOYMENT}/chat/completions"));
        let admin = format!("http://{}/models", h.gateway.admin_addr);
        let bearer = format!("Bearer {}", token("owner"));
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                seen.push(("chat", client.post(&url, &[("api-key", PRIMARY_KEY)], CHAT).await.status));
                seen.push(("admin", client.call(Method::GET, &admin, &[("authorization", &bearer)], "").await.status));
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            seen
        })
    };
    // Each stage stays until the watcher has read it (and refused it: the reload counter says so).
    std::fs::write(&h.config_path, "").unwrap();
    refused_reloads_reach(&h, 1).await;
    std::fs::write(&h.config_path, cut).unwrap();
    refused_reloads_reach(&h, 2).await;
    // The complete file, with one more deployment so that its arrival shows the watcher ran.
    let complete = format!(
        "{text}\n[[deployments]]\nname = \"late\"\nmodel = \"{PHI}\"\nkeys = [\"{}\"]\n",
        stored(SECONDARY_KEY)
    );
    std::fs::write(&h.config_path, &complete).unwrap();
    let mut arrived = false;
    for _ in 0..100 {
        if chat_status(&h, "late", SECONDARY_KEY).await == StatusCode::OK {
            arrived = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let seen = load.await.unwrap();
    assert!(arrived, "the watcher loaded the complete file");
    let samples = parse_metrics(&h.client.call(Method::GET, &h.admin_url("/metrics"), &[], "").await.text());
    assert_eq!(metric(&samples, "tollgate_config_reloads_total", &[("result", "refused")]), 2.0);
    assert_eq!(metric(&samples, "tollgate_config_reloads_total", &[("result", "applied")]), 1.0);
    assert_eq!(metric(&samples, "tollgate_config_last_reload_successful", &[]), 1.0);
    assert!(seen.len() > 20, "the load ran through the edit: {}", seen.len());
    for (what, status) in &seen {
        assert_eq!(*status, StatusCode::OK, "{what} failed while the file was being written");
    }
}

#[tokio::test]
async fn a_reload_that_would_remove_every_deployment_or_token_is_refused_unless_forced() {
    let h = start().await;
    let text = std::fs::read_to_string(&h.config_path).unwrap();
    // No deployments (the tokens stay).
    let start_of_deployments = text.find("[[deployments]]").unwrap();
    let start_of_tables = text.find("[[models]]").unwrap();
    let no_deployments = format!("{}{}", &text[..start_of_deployments], &text[start_of_tables..]);
    std::fs::write(&h.config_path, &no_deployments).unwrap();
    let reply = h.api(Method::POST, "/reload", Some(token("owner")), None).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    let message = reply.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("declares no deployments") && message.contains("force=true"), "{message}");
    assert_eq!(chat_status(&h, DEPLOYMENT, PRIMARY_KEY).await, StatusCode::OK, "nothing was changed");

    // No admin tokens (the deployments stay).
    let no_tokens = text.split("[[admin.tokens]]").next().unwrap();
    std::fs::write(&h.config_path, no_tokens).unwrap();
    let reply = h.api(Method::POST, "/reload", Some(token("owner")), None).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(reply.text().contains("no admin tokens"), "{}", reply.text());
    assert_eq!(h.api(Method::GET, "/models", Some(token("reader")), None).await.status, StatusCode::OK);

    // Forced, the deployments go.
    std::fs::write(&h.config_path, &no_deployments).unwrap();
    let reply = h.owner(Method::POST, "/reload?force=true", None).await;
    assert_eq!(reply.json()["deployments"], 0);
    assert_eq!(chat_status(&h, DEPLOYMENT, PRIMARY_KEY).await, StatusCode::NOT_FOUND);
    let reply = h.api(Method::POST, "/reload?forse=1", Some(token("owner")), None).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_deployment_that_leaves_for_one_bad_reload_comes_back_with_its_buckets_and_totals() {
    let h = start().await;
    let text = std::fs::read_to_string(&h.config_path).unwrap();
    for _ in 0..3 {
        assert_eq!(chat_status(&h, "other", OTHER_KEY).await, StatusCode::OK);
    }
    let usage = h.admin("/usage").await;
    let tokens_before = usage["other"]["total_tokens"].as_u64().unwrap();
    assert_eq!(usage["other"]["requests"], 3);
    // A file that lost the second deployment (cut, or a bad edit) but still parses.
    let other_at = text.find("[[deployments]]\nname = \"other\"").unwrap();
    let rest = &text[other_at..];
    let next_table = rest[1..].find("\n[").map(|i| i + 2).unwrap_or(rest.len());
    let without_other = format!("{}{}", &text[..other_at], &rest[next_table..]);
    std::fs::write(&h.config_path, &without_other).unwrap();
    h.owner(Method::POST, "/reload", None).await;
    assert_eq!(chat_status(&h, "other", OTHER_KEY).await, StatusCode::NOT_FOUND);
    std::fs::write(&h.config_path, &text).unwrap();
    h.owner(Method::POST, "/reload", None).await;
    let url = h.url("/openai/deployments/other/chat/completions");
    let reply = h.client.post(&url, &[("api-key", OTHER_KEY)], CHAT).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.number("x-ratelimit-remaining-requests") <= 996, "the bucket carried on: {reply:?}");
    let usage = h.admin("/usage").await;
    assert_eq!(usage["other"]["requests"], 4, "the totals carried on: {usage}");
    assert!(usage["other"]["total_tokens"].as_u64().unwrap() > tokens_before);
}

async fn phi_limits(h: &Harness) -> Value {
    h.owner(Method::GET, "/projects/team-a/deployments/phi", None).await.json()["properties"]["limits"].clone()
}

#[tokio::test]
async fn put_on_an_existing_deployment_needs_the_permission_to_change_limits_when_it_changes_them() {
    let h = start().await;
    let p = "/projects/team-a";
    let path = format!("{p}/deployments/phi");
    h.owner(Method::PUT, &path, Some(json!({"modelId": PHI}))).await;
    let huge = json!({"modelId": PHI, "limits": {"requestsPerMinute": 999999999, "tokensPerMinute": 999999999}});
    let same = json!({"modelId": PHI, "limits": {"requestsPerMinute": 1000, "tokensPerMinute": 200000}});
    // (role, may PUT limits that change them)
    for (role, allowed) in [("ai-developer", false), ("reader", false), ("contributor", true), ("owner", true)] {
        if allowed {
            // Back to the defaults first, so that this PUT changes them.
            h.owner(
                Method::PATCH,
                &path,
                Some(json!({"limits": {"requestsPerMinute": 1000, "tokensPerMinute": 200000}})),
            )
            .await;
        }
        let reply = h.api(Method::PUT, &path, Some(token(role)), Some(huge.clone())).await;
        if allowed {
            assert_eq!(reply.status, StatusCode::OK, "{role}: {}", reply.text());
            assert_eq!(phi_limits(&h).await["requestsPerMinute"], 999999999, "{role}");
        } else {
            assert_eq!(reply.status, StatusCode::FORBIDDEN, "{role}: {}", reply.text());
            let why = if role == "reader" { "(Deploy)" } else { "may not set a deployment's limits" };
            assert!(reply.text().contains(why), "{}", reply.text());
            assert_eq!(phi_limits(&h).await["requestsPerMinute"], 1000, "{role}: nothing was applied");
        }
    }
    // An ai-developer may PUT the limits a deployment already has (an idempotent PUT of what GET showed)...
    h.owner(Method::PATCH, &path, Some(json!({"limits": {"requestsPerMinute": 1000, "tokensPerMinute": 200000}})))
        .await;
    let reply = h.api(Method::PUT, &path, Some(token("ai-developer")), Some(same)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    // ... but not create a deployment with limits of its own choosing (that is a PATCH after a PUT).
    h.owner(Method::PUT, &format!("{p}/subscriptions/meta"), Some(json!({"modelId": LLAMA_8B}))).await;
    let create = json!({"modelId": LLAMA_8B, "limits": {"requestsPerMinute": 999999999}});
    let reply = h.api(Method::PUT, &format!("{p}/deployments/mine"), Some(token("ai-developer")), Some(create)).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
    let reply = h.api(Method::GET, &format!("{p}/deployments/mine"), Some(token("owner")), None).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "nothing was created");
    let reply = h
        .api(
            Method::PUT,
            &format!("{p}/deployments/mine"),
            Some(token("ai-developer")),
            Some(json!({"modelId": LLAMA_8B})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
}

/// A state writer that blocks until released (a disk that does not answer), then writes.
struct StuckDisk {
    released: std::sync::Mutex<bool>,
    wake: std::sync::Condvar,
    entered: AtomicBool,
}

impl tollgate::planes::control::StateWriter for StuckDisk {
    fn save(
        &self,
        state: &tollgate::planes::control::state::ControlState,
        path: &std::path::Path,
    ) -> std::io::Result<()> {
        self.entered.store(true, Ordering::SeqCst);
        let mut released = self.released.lock().unwrap();
        while !*released {
            released = self.wake.wait(released).unwrap();
        }
        state.save(path)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reads_and_the_data_plane_proceed_while_a_write_is_stuck_on_the_disk() {
    let disk = Arc::new(StuckDisk {
        released: std::sync::Mutex::new(false),
        wake: std::sync::Condvar::new(),
        entered: AtomicBool::new(false),
    });
    let h = Harness::with(Setup { tables: tables(), state_writer: Some(disk.clone()), ..Default::default() }).await;
    let release = {
        let disk = Arc::clone(&disk);
        move || {
            *disk.released.lock().unwrap() = true;
            disk.wake.notify_all();
        }
    };
    // Should the gateway be stuck, the test still ends: the disk gives way after 30 s, and the
    // checks below then see that they only passed after it did.
    let safety = {
        let release = release.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_secs(30));
            release();
        })
    };
    let admin = format!("http://{}", h.gateway.admin_addr);
    let owner = format!("Bearer {}", token("owner"));
    let write = {
        let (client, url, owner) =
            (h.client.clone(), format!("{admin}/projects/team-a/deployments/phi"), owner.clone());
        tokio::spawn(async move {
            client.call(Method::PUT, &url, &[("authorization", &owner)], &json!({"modelId": PHI}).to_string()).await
        })
    };
    while !disk.entered.load(Ordering::SeqCst) {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // Two more writes queue behind it (on the blocking pool, not on the runtime's workers).
    let more: Vec<_> = (0..2)
        .map(|i| {
            let (client, url, owner) =
                (h.client.clone(), format!("{admin}/projects/team-a/subscriptions/s{i}"), owner.clone());
            tokio::spawn(async move {
                client
                    .call(Method::PUT, &url, &[("authorization", &owner)], &json!({"modelId": LLAMA_8B}).to_string())
                    .await
            })
        })
        .collect();
    for _ in 0..5 {
        assert_eq!(h.api(Method::GET, "/models", Some(token("reader")), None).await.status, StatusCode::OK);
        assert_eq!(
            h.api(Method::GET, "/projects/team-a/deployments", Some(token("reader")), None).await.status,
            StatusCode::OK
        );
        assert_eq!(h.chat(DEPLOYMENT, PRIMARY_KEY).await, StatusCode::OK);
        assert!(h.admin("/usage").await[DEPLOYMENT]["requests"].as_u64().is_some());
    }
    assert!(!*disk.released.lock().unwrap(), "all of that was served while the write was stuck");
    assert!(!write.is_finished(), "the write waits for its disk");
    release();
    assert_eq!(write.await.unwrap().status, StatusCode::CREATED);
    for task in more {
        assert_eq!(task.await.unwrap().status, StatusCode::CREATED);
    }
    drop(safety);
}

/// `limits.maxWaitMs` on an API deployment: set at creation or by PATCH, shown by GET, bounded,
/// not a grant's; and its requests then wait instead of a 429.
#[tokio::test]
async fn an_api_deployment_can_let_its_requests_wait() {
    let h = start().await;
    let path = "/projects/team-a/deployments/phi";
    let body = json!({"modelId": PHI, "limits": {"tokensPerMinute": 60000, "maxWaitMs": 5000}});
    let created = h.owner(Method::PUT, path, Some(body)).await.json();
    assert_eq!(created["properties"]["limits"]["maxWaitMs"], 5000, "{created}");
    let key = created["keys"]["primaryKey"].as_str().unwrap().to_owned();
    // Spend the bucket, then a request that will fit waits for it.
    let url = h.url("/openai/deployments/phi/chat/completions");
    let spend = r#"{"messages":[{"role":"user","content":"Hi"}],"max_tokens":59900}"#;
    let reply = h.client.post(&url, &[("api-key", &key), ("x-mock-completion-tokens", "59900")], spend).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let small = r#"{"messages":[{"role":"user","content":"Hi"}],"max_tokens":490}"#;
    let reply = h.client.post(&url, &[("api-key", &key), ("x-mock-completion-tokens", "490")], small).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert!(reply.headers.contains_key("x-ms-queued-ms"), "{:?}", reply.headers);

    // PATCH turns it off; a PUT without it keeps what is set; bounds are checked.
    let patched = h.owner(Method::PATCH, path, Some(json!({"limits": {"maxWaitMs": 0}}))).await.json();
    assert_eq!(patched["properties"]["limits"]["maxWaitMs"], 0);
    assert_eq!(patched["properties"]["limits"]["tokensPerMinute"], 60000, "other limits kept");
    let reply = h.api(Method::PATCH, path, Some(token("owner")), Some(json!({"limits": {"maxWaitMs": 600001}}))).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", reply.text());
    assert!(reply.text().contains("maxWaitMs"));
    h.owner(Method::PATCH, path, Some(json!({"limits": {"maxWaitMs": 2000}}))).await;
    let again = h.owner(Method::PUT, path, Some(json!({"modelId": PHI}))).await.json();
    assert_eq!(again["properties"]["limits"]["maxWaitMs"], 2000);
    // File deployments show theirs (none here).
    let file = h.owner(Method::GET, &format!("/projects/default/deployments/{DEPLOYMENT}"), None).await.json();
    assert_eq!(file["properties"]["limits"]["maxWaitMs"], 0, "{file}");
}

/// `$top` / `$skipToken` pages: every deployment that exists throughout is listed exactly once,
/// while deployments are added between pages (before the token and after it).
#[tokio::test]
async fn pages_list_every_deployment_once_while_more_are_added() {
    let file = |name: &str| {
        format!(
            "[[deployments]]\nname = \"{name}\"\nmodel = \"m\"\nbackend = \"{{mock}}\"\nkeys = [\"{}\"]\nproject = \"fleet\"\n",
            stored(OTHER_KEY)
        )
    };
    let h = Harness::with(Setup {
        tables: tables(),
        more_deployments: (0..7).map(|i| file(&format!("p{i:02}"))).collect(),
        ..Default::default()
    })
    .await;
    let mock = h.mock.url();
    let add = |name: String| {
        let h = &h;
        let text = file(&name).replace("{mock}", &mock);
        async move {
            let mut config = std::fs::read_to_string(&h.config_path).unwrap();
            config.push_str(&text);
            std::fs::write(&h.config_path, config).unwrap();
            let report = h.owner(Method::POST, "/reload", None).await.json();
            // Only the new deployment is built; the others are carried over as they are.
            assert_eq!(report["rebuilt"], 1, "{report}");
        }
    };
    let mut seen: Vec<String> = Vec::new();
    let mut link = Some("/projects/fleet/deployments?$top=3".to_owned());
    let mut pages = 0;
    while let Some(path) = link {
        let page = h.owner(Method::GET, &path, None).await.json();
        let names: Vec<String> =
            page["value"].as_array().unwrap().iter().map(|d| d["name"].as_str().unwrap().into()).collect();
        assert!(names.len() <= 3, "{page}");
        seen.extend(names);
        add(format!("a{pages}")).await; // sorts before every token: never listed
        add(format!("z{pages}")).await; // after: listed once, on a later page
        pages += 1;
        link = page["nextLink"].as_str().map(str::to_owned);
        assert!(pages < 20, "pages never end: {seen:?}");
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), seen.len(), "listed twice: {seen:?}");
    for i in 0..7 {
        assert!(seen.contains(&format!("p{i:02}")), "p{i:02} missing: {seen:?}");
    }
    assert!(seen.iter().all(|n| !n.starts_with('a')), "{seen:?}");
    assert!(seen.contains(&"z0".to_owned()), "{seen:?}");

    // /quotas and /usage: one project's deployments, paged, the next page in a Link header.
    let mut quotas = Vec::new();
    let mut next = Some("/quotas?project=fleet&$top=4".to_owned());
    while let Some(path) = next {
        let reply = h.api(Method::GET, &path, Some(token("reader")), None).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let body = reply.json();
        assert!(body.as_object().unwrap().len() <= 4);
        quotas.extend(body.as_object().unwrap().keys().cloned());
        next = reply.headers.get("link").map(|l| {
            let l = l.to_str().unwrap();
            assert!(l.ends_with("; rel=\"next\""), "{l}");
            l[1..l.find('>').unwrap()].to_owned()
        });
    }
    let listed = h.owner(Method::GET, "/projects/fleet/deployments", None).await.json();
    let all: Vec<&str> = listed["value"].as_array().unwrap().iter().map(|d| d["name"].as_str().unwrap()).collect();
    assert_eq!(all.len(), 7 + 2 * pages, "{listed}");
    assert_eq!(quotas, all, "every fleet deployment once, in order, and no other project's");
    let usage = h.api(Method::GET, "/usage?project=default", Some(token("reader")), None).await.json();
    assert!(usage.get(DEPLOYMENT).is_some() && usage.get("p00").is_none(), "{usage}");
    let bad = h.api(Method::GET, "/projects/fleet/deployments?$top=5000", Some(token("reader")), None).await;
    assert_eq!((bad.status, bad.error_code().as_str()), (StatusCode::BAD_REQUEST, "BadRequest"));
    assert!(bad.text().contains("from 1 to 1000"), "{}", bad.text());
}
