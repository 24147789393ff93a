//! Consumers through the admin API end to end: every role against every consumer action, keys
//! that work, rotate and stop, connections across projects (granted by the deployment's side,
//! revoked at once, usage under both projects), bad input refused with nothing half-applied,
//! and consumers that survive a restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::admin::*;
use common::*;
use http::{Method, StatusCode};
use serde_json::{Value, json};

const PHI: &str = "azureml://registries/azureml/models/Phi-3-mini-4k-instruct";
const FILE_CONSUMER_KEY: &str = "FileConsumerKey0123456789abcdefg";

fn tables() -> String {
    format!(
        r#"[[models]]
id = "{PHI}"
version = "7"
backend = "{{mock}}"

[[consumers]]
name = "from-file"
project = "team-a"
keys = ["{key}"]
[[consumers.grants]]
deployment = "{DEPLOYMENT}"
{tokens}"#,
        key = stored(FILE_CONSUMER_KEY),
        tokens = token_tables(),
    )
}

fn setup(ledger: Option<std::path::PathBuf>, admin: String) -> Setup {
    Setup { tables: tables(), ledger, admin, ..Default::default() }
}

async fn start() -> (Harness, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("usage.jsonl");
    std::mem::forget(dir);
    (Harness::with(setup(Some(ledger.clone()), String::new())).await, ledger)
}

fn keys(reply: &Reply) -> (String, String) {
    let json = reply.json();
    (json["keys"]["primaryKey"].as_str().unwrap().to_owned(), json["keys"]["secondaryKey"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn every_role_against_every_consumer_action() {
    use Method as M;
    let table: [(&str, [bool; 10]); 4] = [
        ("owner", [true; 10]),
        ("contributor", [true; 10]),
        ("ai-developer", [true, true, true, true, false, true, true, false, false, false]),
        ("reader", [false, true, true, false, false, true, true, false, false, false]),
    ];
    for (role, expected) in table {
        let (h, _) = start().await;
        h.owner(M::PUT, "/projects/team-a/deployments/dep-a", Some(json!({"modelId": PHI}))).await;
        h.owner(M::PUT, "/projects/team-b/consumers/guest", Some(json!({}))).await;
        let c = "/projects/team-a/consumers/app";
        let grant = "/projects/team-a/deployments/dep-a/grants/team-b/guest";
        let app = json!({"grants": [{"deployment": "dep-a", "limits": {"requestsPerMinute": 10}}]});
        let steps: Vec<Step> = vec![
            (M::PUT, c.into(), Some(app.clone()), None),
            (M::GET, "/projects/team-a/consumers".into(), None, None),
            (M::GET, c.into(), None, None),
            (M::POST, format!("{c}/listKeys"), None, None),
            (M::POST, format!("{c}/regenerateKeys"), Some(json!({"keyType": "Primary"})), None),
            (M::GET, format!("{c}/usage"), None, None),
            (M::GET, "/projects/team-a/deployments/dep-a/grants".into(), None, None),
            (M::PUT, grant.into(), Some(json!({"limits": {"tokensPerMinute": 1000}})), None),
            (M::DELETE, grant.into(), None, Some((M::PUT, grant.into(), Some(json!({}))))),
            (M::DELETE, c.into(), None, None),
        ];
        h.role_steps(role, steps, &expected).await;
    }
    // A token confined to team-b acts on no consumer of team-a.
    let (h, _) = start().await;
    let dev_b = TOKENS.iter().find(|t| t.0 == "dev-b").unwrap().2;
    let reply = h.api(Method::PUT, "/projects/team-a/consumers/app", Some(dev_b), Some(json!({}))).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
    assert!(reply.text().contains("team-a"), "{}", reply.text());
    let reply = h.api(Method::PUT, "/projects/team-b/consumers/app", Some(dev_b), Some(json!({}))).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
}

#[tokio::test]
async fn consumer_keys_call_their_grants_rotate_without_downtime_and_stop_when_deleted() {
    let (h, _) = start().await;
    let c = "/projects/default/consumers/app";
    // How long requests may wait is the deployment's setting, not a grant's.
    let waiting = json!({"grants": [{"deployment": DEPLOYMENT, "limits": {"maxWaitMs": 100}}]});
    let refused = h.api(Method::PUT, c, Some(token("owner")), Some(waiting)).await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", refused.text());
    assert!(refused.text().contains("maxWaitMs is a deployment's setting"), "{}", refused.text());
    let body = json!({"grants": [{"deployment": DEPLOYMENT, "limits": {"requestsPerMinute": 5}}]});
    let created = h.owner(Method::PUT, c, Some(body.clone())).await;
    assert_eq!(created.status, StatusCode::CREATED);
    let (primary, secondary) = keys(&created);
    let grant = &created.json()["properties"]["grants"][0];
    assert_eq!(grant["project"], "default");
    assert_eq!(grant["limits"]["requestsPerMinute"], 5);
    assert_eq!(grant["active"], true);
    // Its own limit binds: the headers show 5.
    let url = h.deployment_url("/chat/completions");
    let reply = h.client.post(&url, &[("api-key", &primary)], CHAT).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.number("x-ratelimit-limit-requests"), 5);
    // Not granted `other`: 401 naming the consumer.
    let reply =
        h.client.post(&h.url("/openai/deployments/other/chat/completions"), &[("api-key", &primary)], CHAT).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text());
    assert!(reply.text().contains("default/app"), "{}", reply.text());
    // PUT again replaces the grants and keeps the keys (200, no keys in the answer).
    let replaced = h.owner(Method::PUT, c, Some(body)).await;
    assert_eq!(replaced.status, StatusCode::OK);
    assert!(replaced.json().get("keys").is_none());
    assert_eq!(h.chat(DEPLOYMENT, &primary).await, StatusCode::OK);

    // Rotation: the secondary carries on while the primary changes.
    let rotated = h.owner(Method::POST, &format!("{c}/regenerateKeys"), Some(json!({"keyType": "Primary"}))).await;
    let new_primary = rotated.json()["primaryKey"].as_str().unwrap().to_owned();
    assert_ne!(new_primary, primary);
    assert_eq!(rotated.json()["secondaryKey"], secondary.as_str());
    assert_eq!(h.chat(DEPLOYMENT, &primary).await, StatusCode::UNAUTHORIZED, "the old primary stops at once");
    assert_eq!(h.chat(DEPLOYMENT, &new_primary).await, StatusCode::OK);
    assert_eq!(h.chat(DEPLOYMENT, &secondary).await, StatusCode::OK);
    let listed = h.owner(Method::POST, &format!("{c}/listKeys"), None).await.json();
    assert_eq!(listed, json!({"primaryKey": new_primary, "secondaryKey": secondary}));

    h.owner(Method::DELETE, c, None).await;
    assert_eq!(h.chat(DEPLOYMENT, &new_primary).await, StatusCode::UNAUTHORIZED);
    assert_eq!(h.api(Method::GET, c, Some(token("reader")), None).await.status, StatusCode::NOT_FOUND);
    // Made again under the same name, it has new keys: the deleted ones stay dead.
    let again = h.owner(Method::PUT, c, Some(json!({"grants": [{"deployment": DEPLOYMENT}]}))).await;
    let (fresh, _) = keys(&again);
    assert_ne!(fresh, new_primary);
    assert_eq!(h.chat(DEPLOYMENT, &secondary).await, StatusCode::UNAUTHORIZED);
    assert_eq!(h.chat(DEPLOYMENT, &fresh).await, StatusCode::OK);
}

#[tokio::test]
async fn a_connection_is_granted_by_the_deployments_project_shows_under_both_and_stops_at_once_when_revoked() {
    let (h, ledger) = start().await;
    h.owner(Method::PUT, "/projects/team-b/deployments/dep-b", Some(json!({"modelId": PHI}))).await;
    let (key, _) = keys(&h.owner(Method::PUT, "/projects/team-a/consumers/app", Some(json!({}))).await);
    assert_eq!(h.chat("dep-b", &key).await, StatusCode::UNAUTHORIZED, "no grant yet");

    // The consumer's own project cannot take another project's deployment by itself...
    let connect = json!({"grants": [{"project": "team-b", "deployment": "dep-b"}]});
    let reply = h.api(Method::PUT, "/projects/team-a/consumers/app", Some(token("ai-developer")), Some(connect)).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
    assert!(reply.text().contains("project 'team-b'"), "{}", reply.text());
    let grants = &h.owner(Method::GET, "/projects/team-a/consumers/app", None).await.json()["properties"]["grants"];
    assert_eq!(grants, &json!([]), "nothing half-applied");
    // ...nor can an ai-developer of the deployment's project grant it (that takes a contributor).
    let dev_b = TOKENS.iter().find(|t| t.0 == "dev-b").unwrap().2;
    let path = "/projects/team-b/deployments/dep-b/grants/team-a/app";
    let reply = h.api(Method::PUT, path, Some(dev_b), Some(json!({}))).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());

    let reply =
        h.api(Method::PUT, path, Some(token("contributor")), Some(json!({"limits": {"requestsPerMinute": 3}}))).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let grant = &reply.json()["properties"]["grants"][0];
    assert_eq!((grant["project"].as_str(), grant["active"].as_bool()), (Some("team-b"), Some(true)));
    let url = h.url("/openai/deployments/dep-b/chat/completions");
    let reply = h.client.post(&url, &[("api-key", &key)], CHAT).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.number("x-ratelimit-limit-requests"), 3, "the grant's own limit");
    let listed = h.owner(Method::GET, "/projects/team-b/deployments/dep-b/grants", None).await.json();
    assert_eq!(listed["value"][0]["consumer"], "/projects/team-a/consumers/app");
    assert_eq!(listed["value"][0]["connection"], true);
    // The consumer's own project may keep the connection as it is when it replaces the consumer.
    let keep = json!({"grants": [{"project": "team-b", "deployment": "dep-b", "limits": {"requestsPerMinute": 3}}]});
    let reply = h.api(Method::PUT, "/projects/team-a/consumers/app", Some(token("ai-developer")), Some(keep)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());

    // The usage shows under the consumer's project and the deployment's, which pays.
    let usage = h.owner(Method::GET, "/projects/team-a/consumers/app/usage", None).await.json();
    assert_eq!(usage["consumer"], "team-a/app");
    assert_eq!(usage["value"][0]["requests"], 1, "{usage}");
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["usage", "--ledger", ledger.to_str().unwrap(), "--by", "project", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let requests = |project: &str| -> u64 {
        report["rows"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["project"] == project)
            .map(|r| r["requests"].as_u64().unwrap())
            .sum()
    };
    assert_eq!((requests("team-a"), requests("team-b")), (1, 1), "{report}");

    // Revoked: the key stops on dep-b with the change.
    h.api(Method::DELETE, path, Some(token("contributor")), None).await;
    assert_eq!(h.chat("dep-b", &key).await, StatusCode::UNAUTHORIZED);
    let reply = h.api(Method::DELETE, path, Some(token("contributor")), None).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.text());
    // A deployment deleted takes its grants with it: made again, it is not granted.
    h.owner(Method::PUT, path, Some(json!({}))).await;
    h.owner(Method::DELETE, "/projects/team-b/deployments/dep-b", None).await;
    h.owner(Method::PUT, "/projects/team-b/deployments/dep-b", Some(json!({"modelId": PHI}))).await;
    assert_eq!(h.chat("dep-b", &key).await, StatusCode::UNAUTHORIZED);
    let grants = &h.owner(Method::GET, "/projects/team-a/consumers/app", None).await.json()["properties"]["grants"];
    assert_eq!(grants, &json!([]));
}

#[tokio::test]
async fn bad_consumer_input_is_refused_with_what_to_fix_and_nothing_half_applied() {
    let (h, _) = start().await;
    let c = "/projects/default/consumers/app";
    let (key, _) = keys(&h.owner(Method::PUT, c, Some(json!({"grants": [{"deployment": DEPLOYMENT}]}))).await);
    let before = h.owner(Method::GET, c, None).await.json();
    let grant = |extra: Value| {
        let mut g = json!({"deployment": DEPLOYMENT});
        g.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        json!({"grants": [{"deployment": "other"}, g]})
    };
    let cases: Vec<(&str, Value, StatusCode, &str)> = vec![
        (c, json!({"grants": [{"deployment": "nope"}]}), StatusCode::UNPROCESSABLE_ENTITY, "has no deployment 'nope'"),
        (
            c,
            grant(json!({"limits": {"requestsPerMinute": 2000}})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "grants[1].limits.requestsPerMinute is 2000, more than deployment",
        ),
        (
            c,
            json!({"grants": [{"deployment": "other"}, {"deployment": "other"}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "granted twice",
        ),
        (c, grant(json!({"quotas": {"tokensPerDay": 0}})), StatusCode::UNPROCESSABLE_ENTITY, "tokensPerDay must be"),
        (c, json!({"quotas": {"tokensPerYear": 5}}), StatusCode::BAD_REQUEST, "tokensPerYear"),
        (c, json!({"grants": [{"deployment": "other", "surprise": 1}]}), StatusCode::BAD_REQUEST, "surprise"),
        ("/projects/default/consumers/APP", json!({}), StatusCode::CONFLICT, "has consumer 'app'"),
        ("/projects/team-a/consumers/From-File", json!({}), StatusCode::CONFLICT, "configuration file"),
        ("/projects/default/consumers/bad%20name", json!({}), StatusCode::BAD_REQUEST, "name"),
    ];
    for (path, body, status, says) in cases {
        let reply = h.api(Method::PUT, path, Some(token("owner")), Some(body.clone())).await;
        assert_eq!(reply.status, status, "{path} {body}: {}", reply.text());
        assert!(reply.json()["error"]["message"].as_str().unwrap().contains(says), "{body}: {}", reply.text());
        assert!(!reply.header("x-ms-error-code").is_empty());
    }
    assert_eq!(h.owner(Method::GET, c, None).await.json(), before, "the consumer is as it was");
    assert_eq!(h.chat(DEPLOYMENT, &key).await, StatusCode::OK);
    assert_eq!(h.chat("other", &key).await, StatusCode::UNAUTHORIZED, "no grant of 'other' slipped in");
    let listed = h.owner(Method::GET, "/projects/default/consumers", None).await.json();
    assert_eq!(listed["value"].as_array().unwrap().len(), 1, "{listed}");
    // A file consumer is read here and changed in the file.
    let file = h.owner(Method::GET, "/projects/team-a/consumers/from-file", None).await.json();
    assert_eq!(file["properties"]["declaredIn"], "configuration");
    for (method, op) in [(Method::POST, "listKeys"), (Method::DELETE, "")] {
        let path = format!("/projects/team-a/consumers/from-file/{op}");
        let reply = h.api(method, path.trim_end_matches('/'), Some(token("owner")), None).await;
        assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.text());
    }
    assert_eq!(h.chat(DEPLOYMENT, FILE_CONSUMER_KEY).await, StatusCode::OK);
}

#[tokio::test]
async fn api_consumers_and_their_keys_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let admin = format!("state_file = {:?}", dir.path().join("state.json").display().to_string());
    let h = Harness::with(setup(None, admin.clone())).await;
    let body = json!({"quotas": {"tokensPerMonth": 1000000}, "grants": [{"deployment": DEPLOYMENT}]});
    let created = h.owner(Method::PUT, "/projects/default/consumers/app", Some(body)).await;
    let (key, _) = keys(&created);
    let Harness { gateway, .. } = h;
    gateway.shutdown().await;
    let text = std::fs::read_to_string(dir.path().join("state.json")).unwrap();
    assert!(text.contains("\"consumers\"") && !text.contains(&key), "kept, without the plain key");

    let h = Harness::with(setup(None, admin)).await;
    assert_eq!(h.chat(DEPLOYMENT, &key).await, StatusCode::OK);
    let listed = h.owner(Method::POST, "/projects/default/consumers/app/listKeys", None).await.json();
    assert_eq!(listed, created.json()["keys"]);
    let usage = h.owner(Method::GET, "/projects/default/consumers/app/usage", None).await.json();
    let quota = &usage["quotas"][0];
    assert_eq!((quota["scope"].as_str(), quota["quota"].as_str()), (Some("*"), Some("tokens_per_month")), "{usage}");
    assert_eq!(quota["limit"], 1_000_000);
    assert!(quota["used"].as_u64().unwrap() > 0, "{usage}");
    assert_eq!(usage["value"], Value::Null, "no ledger here");
}
