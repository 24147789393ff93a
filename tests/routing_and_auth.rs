//! Every route under every addressing mode, both key headers, both key slots, and what is
//! forwarded to the backend.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use http::{Method, StatusCode};
use serde_json::Value;

/// Body for each route; `model` is added for body addressing.
fn body_for(path: &str) -> &'static str {
    match path {
        "/chat/completions" => r#"{"messages":[{"role":"user","content":"Hello!"}]}"#,
        "/completions" => r#"{"prompt":"Once upon a time"}"#,
        "/embeddings" => r#"{"input":["first phrase","second phrase"]}"#,
        "/images/embeddings" => r#"{"input":[{"image":"data:image/png;base64,iVBORw0KGgo=","text":"a cat"}]}"#,
        _ => "",
    }
}

fn check_shape(path: &str, reply: &Reply) {
    assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text());
    let json = reply.json();
    match path {
        "/info" => assert_eq!(json["model_provider_name"], "Meta"),
        "/chat/completions" => {
            assert_eq!(json["object"], "chat.completion");
            assert!(json["usage"]["total_tokens"].as_u64().unwrap() > 0);
        }
        "/completions" => assert_eq!(json["object"], "text_completion"),
        "/embeddings" => assert_eq!(json["data"].as_array().unwrap().len(), 2),
        "/images/embeddings" => assert_eq!(json["data"].as_array().unwrap().len(), 1),
        other => panic!("unexpected {other}"),
    }
    let id = reply.header("x-request-id");
    assert_eq!(id.len(), 36);
    assert_eq!(reply.header("apim-request-id"), id);
}

#[tokio::test]
async fn every_route_under_every_addressing_mode() {
    let h = Harness::start().await;
    let key = [("api-key", PRIMARY_KEY)];
    for path in ["/info", "/chat/completions", "/completions", "/embeddings", "/images/embeddings"] {
        let method = if path == "/info" { Method::GET } else { Method::POST };
        let body = body_for(path);
        let q = "?api-version=2024-05-01-preview";

        // 1. host label
        let host = format!("{DEPLOYMENT}.localhost:{}", h.addr().port());
        let reply =
            h.client.call(method.clone(), &h.url(&format!("{path}{q}")), &[key[0], ("host", &host)], body).await;
        check_shape(path, &reply);

        // 2. /openai/deployments/{name}
        let url = h.url(&format!("/openai/deployments/{DEPLOYMENT}{path}{q}"));
        check_shape(path, &h.client.call(method.clone(), &url, &key, body).await);

        // 3a. /models and /v1 with the header
        for prefix in ["/models", "/v1"] {
            let url = h.url(&format!("{prefix}{path}{q}"));
            let reply =
                h.client.call(method.clone(), &url, &[key[0], ("azureml-model-deployment", DEPLOYMENT)], body).await;
            check_shape(path, &reply);
        }

        // 3b. /models and /v1 with the body's model (POST routes)
        if method == Method::POST {
            let mut json: Value = serde_json::from_str(body).unwrap();
            json["model"] = Value::from(DEPLOYMENT);
            for prefix in ["/models", "/v1"] {
                let url = h.url(&format!("{prefix}{path}{q}"));
                check_shape(path, &h.client.post(&url, &key, &json.to_string()).await);
            }
            // A root path with no usable host label falls back to the body too.
            check_shape(path, &h.client.post(&h.url(path), &key, &json.to_string()).await);
        }
    }
}

#[tokio::test]
async fn both_key_headers_and_both_key_slots() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("usage.jsonl");
    let h = Harness::with(Setup { ledger: Some(ledger.clone()), ..Default::default() }).await;
    let url = h.url(&format!("/openai/deployments/{DEPLOYMENT}/chat/completions"));
    for key in [PRIMARY_KEY, SECONDARY_KEY] {
        let bearer = format!("Bearer {key}");
        for headers in [
            vec![("api-key", key)],
            vec![("authorization", bearer.as_str())],
            vec![("api-key", key), ("authorization", bearer.as_str())],
        ] {
            let reply = h.client.post(&url, &headers, CHAT).await;
            assert_eq!(reply.status, StatusCode::OK, "{headers:?}: {}", reply.text());
        }
    }
    // Each request was authenticated by the slot of the key it sent (from the ledger).
    h.usage_after(6).await;
    h.gateway.ledger.as_ref().unwrap().flush();
    let slots: Vec<String> = std::fs::read_to_string(&ledger)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["key_slot"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(slots, ["primary", "primary", "primary", "secondary", "secondary", "secondary"]);
}

#[tokio::test]
async fn missing_wrong_and_foreign_keys_get_401() {
    let h = Harness::start().await;
    let url = h.url(&format!("/openai/deployments/{DEPLOYMENT}/chat/completions"));
    let other_bearer = format!("Bearer {OTHER_KEY}");
    let cases: Vec<Vec<(&str, &str)>> = vec![
        vec![],
        vec![("api-key", "wrong-key-0123456789abcdefghijkl")],
        vec![("authorization", "Bearer wrong-key")],
        vec![("authorization", PRIMARY_KEY)],
        vec![("api-key", "")],
        vec![("api-key", OTHER_KEY)],
        vec![("authorization", other_bearer.as_str())],
        // api-key wins over Bearer: a wrong api-key is not rescued by a right bearer.
        vec![("api-key", "wrong"), ("authorization", "Bearer PrimaryKey0123456789abcdefghijkl")],
    ];
    for headers in cases {
        let reply = h.client.post(&url, &headers, CHAT).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{headers:?}");
        assert_eq!(reply.error_code(), "Unauthorized");
        assert!(!reply.text().contains(PRIMARY_KEY) && !reply.text().contains("wrong-key"));
    }
    // The other deployment's key works on its own deployment.
    let url = h.url("/openai/deployments/other/chat/completions");
    assert_eq!(h.client.post(&url, &[("api-key", OTHER_KEY)], CHAT).await.status, StatusCode::OK);
}

#[tokio::test]
async fn query_and_extra_parameters_pass_through_keys_and_hop_headers_do_not() {
    let h = Harness::start().await;
    let url = h.url(&format!("/openai/deployments/{DEPLOYMENT}/chat/completions?api-version=2025-04-01&x=1"));
    let headers = [
        ("api-key", PRIMARY_KEY),
        ("authorization", "Bearer PrimaryKey0123456789abcdefghijkl"),
        ("extra-parameters", "pass-through"),
        ("x-ms-client-request-id", "client-id-42"),
        ("azureml-model-deployment", DEPLOYMENT),
        ("connection", "keep-alive, x-hop"),
        ("x-hop", "1"),
        ("x-mock-echo", "1"),
    ];
    let reply = h.client.post(&url, &headers, CHAT).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.header("x-mock-echo-query"), "api-version=2025-04-01&x=1");
    let seen: Vec<&str> = reply.header("x-mock-echo-headers").split(',').collect();
    for forwarded in ["extra-parameters", "x-ms-client-request-id", "content-length", "host"] {
        assert!(seen.contains(&forwarded), "{forwarded} missing from {seen:?}");
    }
    for dropped in ["api-key", "authorization", "azureml-model-deployment", "connection", "x-hop"] {
        assert!(!seen.contains(&dropped), "{dropped} was forwarded: {seen:?}");
    }
    assert_eq!(reply.header("x-ms-client-request-id"), "client-id-42");
}

#[tokio::test]
async fn the_backend_key_from_the_environment_is_sent_instead_of_the_clients() {
    let mock = tollgate::process::mock_backend::MockOptions {
        require_key: Some("backend-secret".into()),
        ..Default::default()
    };
    let h = Harness::with(Setup {
        mock,
        deployment: "backend_key_env = \"LLAMA_BACKEND_KEY\"".into(),
        env: vec![("LLAMA_BACKEND_KEY", "backend-secret")],
        ..Default::default()
    })
    .await;
    let url = h.url(&format!("/openai/deployments/{DEPLOYMENT}/chat/completions"));
    for headers in [
        vec![("api-key", PRIMARY_KEY), ("x-mock-echo", "1")],
        vec![("authorization", "Bearer SecondaryKey0123456789abcdefghij"), ("x-mock-echo", "1")],
        vec![
            ("api-key", PRIMARY_KEY),
            ("authorization", "Bearer SecondaryKey0123456789abcdefghij"),
            ("x-mock-echo", "1"),
        ],
    ] {
        let reply = h.client.post(&url, &headers, CHAT).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        // Both key headers reached the backend carrying its key, neither the client's.
        assert_eq!(reply.header("x-mock-echo-keys"), "api-key=required,authorization=required", "{headers:?}");
    }
    // The other deployment has no backend key configured: the mock refuses it, and the gateway
    // passes the backend's 401 through as it is.
    let url = h.url("/openai/deployments/other/chat/completions");
    assert_eq!(h.client.post(&url, &[("api-key", OTHER_KEY)], CHAT).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn http2_from_clients_and_to_backends() {
    let h = Harness::with(Setup { deployment: "backend_http2 = true".into(), ..Default::default() }).await;
    let client = Client::http2();
    for name in [DEPLOYMENT, "other"] {
        let key = if name == DEPLOYMENT { PRIMARY_KEY } else { OTHER_KEY };
        let url = h.url(&format!("/openai/deployments/{name}/chat/completions"));
        let reply = client.post(&url, &[("api-key", key), ("x-mock-echo", "1")], CHAT).await;
        assert_eq!(reply.status, StatusCode::OK, "{name}: {}", reply.text());
        assert_eq!(reply.json()["object"], "chat.completion");
        let backend_version = if name == DEPLOYMENT { "HTTP/2" } else { "HTTP/1.1" };
        assert_eq!(reply.header("x-mock-echo-version"), backend_version);
    }
}

#[tokio::test]
async fn a_request_that_names_no_deployment_is_served_by_the_one_its_key_belongs_to() {
    let h = Harness::start().await;
    // What azure-ai-inference's get_model_info() sends on the /models and /v1 endpoints: no body,
    // no header, only the key.
    for path in ["/models/info", "/v1/info", "/info"] {
        for key in [("api-key", PRIMARY_KEY), ("authorization", "Bearer OtherDeploymentKey0123456789abcd")] {
            let reply = h.client.call(Method::GET, &h.url(path), &[key], "").await;
            check_shape("/info", &reply);
        }
    }
    // A body without `model` goes to the key's deployment too, and is billed to it.
    let reply = h.client.post(&h.url("/v1/chat/completions"), &[("api-key", OTHER_KEY)], CHAT).await;
    check_shape("/chat/completions", &reply);
    let usage = h.admin("/usage").await;
    assert_eq!(usage["other"]["requests"], 4, "3 /info and 1 chat: {usage}");
    assert_eq!(usage[DEPLOYMENT]["requests"], 3, "{usage}");
    // The body's `model` still decides when given: another deployment's name with this key is a 401.
    let body = format!(r#"{{"model":"{DEPLOYMENT}","messages":[{{"role":"user","content":"hi"}}]}}"#);
    let reply = h.client.post(&h.url("/v1/chat/completions"), &[("api-key", OTHER_KEY)], &body).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(reply.text().contains(DEPLOYMENT), "{}", reply.text());
    // A key that is nobody's learns nothing about which deployments exist.
    for key in [&[("api-key", "NotAKey0123456789abcdefghijklmno")][..], &[]] {
        let reply = h.client.call(Method::GET, &h.url("/v1/info"), key, "").await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_eq!(reply.error_code(), "Unauthorized");
        assert!(!reply.text().contains(DEPLOYMENT) && !reply.text().contains("other"), "{}", reply.text());
    }
}

/// Sends a request head announcing a large body and no body bytes, and reads the status line.
async fn status_without_sending_the_body(addr: std::net::SocketAddr, path: &str, key: Option<&str>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let key = key.map(|k| format!("api-key: {k}\r\n")).unwrap_or_default();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 10000000\r\n{key}\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or("").to_owned()
}

#[tokio::test]
async fn requests_without_a_valid_key_are_refused_before_their_body_is_read() {
    // The body timeout is what such a request would get if the gateway waited for its body.
    let h = Harness::with(Setup { server: "body_read_timeout_ms = 2000".into(), ..Default::default() }).await;
    for path in ["/v1/chat/completions", "/models/embeddings", "/chat/completions"] {
        for key in [None, Some("NotAKey0123456789abcdefghijklmno")] {
            let status = status_without_sending_the_body(h.addr(), path, key).await;
            assert_eq!(status, "HTTP/1.1 401 Unauthorized", "{path} with {key:?}");
        }
    }
    // A valid key is read as before (the gateway waits for the body, here in vain).
    let status = status_without_sending_the_body(h.addr(), "/v1/chat/completions", Some(PRIMARY_KEY)).await;
    assert_eq!(status, "HTTP/1.1 408 Request Timeout");
}

#[tokio::test]
async fn v1_models_lists_the_deployments_the_key_may_call() {
    let h = Harness::with(Setup { more_deployments: twin_deployment(), ..Default::default() }).await;
    for path in ["/v1/models", "/openai/models?api-version=2024-10-21"] {
        let reply = h.client.call(Method::GET, &h.url(path), &[("api-key", PRIMARY_KEY)], "").await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text());
        let json = reply.json();
        assert_eq!(json["object"], "list");
        let ids: Vec<&str> = json["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
        assert_eq!(ids, [DEPLOYMENT, "twin"], "{json}");
        assert_eq!(json["data"][0]["object"], "model");
        assert!(json["data"][0]["created"].as_u64().unwrap() > 1_700_000_000);
        let reply =
            h.client.call(Method::GET, &h.url(path), &[("authorization", &format!("Bearer {OTHER_KEY}"))], "").await;
        let ids: Vec<Value> = reply.json()["data"].as_array().unwrap().iter().map(|m| m["id"].clone()).collect();
        assert_eq!(ids, ["other"]);
    }
    let one = h.client.call(Method::GET, &h.url("/v1/models/twin"), &[("api-key", PRIMARY_KEY)], "").await;
    assert_eq!(one.json()["id"], "twin");
    // Another key's deployment is not found, the same as one that does not exist.
    let theirs = h.client.call(Method::GET, &h.url("/v1/models/other"), &[("api-key", PRIMARY_KEY)], "").await;
    assert_eq!(theirs.status, StatusCode::NOT_FOUND);
    assert_eq!(theirs.error_code(), "DeploymentNotFound");
    let none = h.client.call(Method::GET, &h.url("/v1/models"), &[], "").await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert_eq!(none.error_code(), "Unauthorized");
    let post = h.client.call(Method::POST, &h.url("/v1/models"), &[("api-key", PRIMARY_KEY)], "{}").await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(post.error_code(), "MethodNotAllowed");
    // Listing models is not charged to any quota.
    let usage = h.admin("/usage").await;
    assert_eq!(usage[DEPLOYMENT]["requests"], 0, "{usage}");
}

#[tokio::test]
async fn the_mock_answers_base64_embeddings_n_choices_and_tool_calls_through_the_gateway() {
    use base64::Engine as _;
    let h = Harness::start().await;
    let key = [("api-key", PRIMARY_KEY)];
    let url = |path: &str| h.deployment_url(path);
    let floats = h.client.post(&url("/embeddings"), &key, r#"{"input":["a"]}"#).await.json();
    let encoded =
        h.client.post(&url("/embeddings"), &key, r#"{"input":["a"],"encoding_format":"base64"}"#).await.json();
    let bytes =
        base64::engine::general_purpose::STANDARD.decode(encoded["data"][0]["embedding"].as_str().unwrap()).unwrap();
    let decoded: Vec<f64> = bytes.chunks(4).map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect();
    let expected: Vec<f64> =
        floats["data"][0]["embedding"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(decoded.len(), 16);
    for (d, e) in decoded.iter().zip(&expected) {
        assert!((d - e).abs() < 1e-6, "{decoded:?} vs {expected:?}");
    }
    let bad = h.client.post(&url("/embeddings"), &key, r#"{"input":["a"],"encoding_format":"int8"}"#).await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);

    // n choices, billed as n completions.
    let reply = h
        .client
        .post(&url("/chat/completions"), &key, r#"{"messages":[{"role":"user","content":"hi"}],"n":3,"max_tokens":4}"#)
        .await
        .json();
    assert_eq!(reply["choices"].as_array().unwrap().len(), 3);
    assert_eq!(reply["choices"][2]["index"], 2);
    assert_eq!(reply["usage"]["completion_tokens"], 12);

    // Tools: a call to the named tool, with its required arguments, streamed or not.
    let tools = r#""tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}]"#;
    let body = format!(r#"{{"messages":[{{"role":"user","content":"weather?"}}],{tools}}}"#);
    let reply = h.client.post(&url("/chat/completions"), &key, &body).await.json();
    let choice = &reply["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["tool_calls"][0]["function"]["name"], "get_weather");
    assert_eq!(choice["message"]["tool_calls"][0]["function"]["arguments"], r#"{"city":"mock"}"#);
    let body = format!(r#"{{"messages":[{{"role":"user","content":"weather?"}}],"stream":true,{tools}}}"#);
    let text = h.client.post(&url("/chat/completions"), &key, &body).await.text();
    assert!(text.contains(r#""tool_calls":[{"function":{"arguments":"","name":"get_weather"},"id":"call_"#), "{text}");
    assert!(text.contains(r#""tool_calls":[{"function":{"arguments":"{\"city\":\"mock\"}"},"index":0}]"#), "{text}");
    assert!(text.contains(r#""finish_reason":"tool_calls""#), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"));
}
