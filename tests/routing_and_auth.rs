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
    let h = Harness::start().await;
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
    let mock = tollgate::mock_backend::MockOptions { require_key: Some("backend-secret".into()), ..Default::default() };
    let h = Harness::with(Setup {
        mock,
        deployment: "backend_key_env = \"LLAMA_BACKEND_KEY\"".into(),
        env: vec![("LLAMA_BACKEND_KEY", "backend-secret")],
        ..Default::default()
    })
    .await;
    let url = h.url(&format!("/openai/deployments/{DEPLOYMENT}/chat/completions"));
    for headers in [[("api-key", PRIMARY_KEY)], [("authorization", "Bearer SecondaryKey0123456789abcdefghij")]] {
        let reply = h.client.post(&url, &headers, CHAT).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
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
