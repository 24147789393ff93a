//! Every error the gateway answers itself, streaming pass-through order, and backends that fail.
//! After each error the gateway must still serve a normal request.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn still_serves(h: &Harness) {
    let url = h.url(&format!("/openai/deployments/{DEPLOYMENT}/chat/completions"));
    let reply = h.client.post(&url, &[("api-key", PRIMARY_KEY)], CHAT).await;
    assert_eq!(reply.status, StatusCode::OK, "gateway stopped serving: {}", reply.text());
}

#[tokio::test]
async fn unknown_deployments_get_404_however_named() {
    let h = Harness::start().await;
    let key = ("api-key", PRIMARY_KEY);
    let host = format!("no-such-dep.localhost:{}", h.addr().port());
    let replies = [
        h.client.post(&h.url("/openai/deployments/no-such-dep/chat/completions"), &[key], CHAT).await,
        h.client
            .post(&h.url("/models/chat/completions"), &[key, ("azureml-model-deployment", "no-such-dep")], CHAT)
            .await,
        h.client.post(&h.url("/v1/chat/completions"), &[key], r#"{"model":"no-such-dep","messages":[]}"#).await,
        // A host label that is no deployment, with a key that is nobody's either.
        h.client
            .post(
                &h.url("/chat/completions"),
                &[("api-key", "NotAKey0123456789abcdefghijklmno"), ("host", &host)],
                CHAT,
            )
            .await,
    ];
    for reply in replies {
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
        assert_eq!(reply.error_code(), "DeploymentNotFound");
        assert!(reply.text().contains("no-such-dep"));
    }
    // A host label that names nothing falls back to the key, like any request naming nothing.
    let reply = h.client.post(&h.url("/chat/completions"), &[key, ("host", &host)], CHAT).await;
    assert_eq!(reply.status, StatusCode::OK);
    // Naming nothing, with a key that is one deployment's, reaches that deployment (see
    // routing_and_auth.rs); with no key it is a 401 that reveals nothing.
    let reply = h.client.post(&h.url("/v1/chat/completions"), &[], CHAT).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.error_code(), "Unauthorized");
    still_serves(&h).await;
}

#[tokio::test]
async fn naming_nothing_with_a_key_of_several_deployments_is_a_400_that_says_how_to_name_one() {
    let h = Harness::with(Setup { more_deployments: twin_deployment(), ..Default::default() }).await;
    let key = ("api-key", PRIMARY_KEY);
    let reply = h.client.post(&h.url("/v1/chat/completions"), &[key], CHAT).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.error_code(), "DeploymentMissing");
    let reply = h.client.call(Method::GET, &h.url("/v1/info"), &[key], "").await;
    assert_eq!(reply.error_code(), "DeploymentMissing");
    // Naming one of them works, with the body or the header.
    let reply = h.client.post(&h.url("/v1/chat/completions"), &[key], r#"{"model":"twin","messages":[]}"#).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    still_serves(&h).await;
}

#[tokio::test]
async fn unknown_routes_404_and_wrong_methods_405() {
    let h = Harness::start().await;
    let key = [("api-key", PRIMARY_KEY)];
    let reply = h.client.post(&h.url(&format!("/openai/deployments/{DEPLOYMENT}/chat/complete")), &key, CHAT).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.error_code(), "NotFound");
    for (method, path, allow) in [
        (Method::GET, "/chat/completions", "POST"),
        (Method::PUT, "/embeddings", "POST"),
        (Method::POST, "/info", "GET"),
        (Method::DELETE, "/completions", "POST"),
    ] {
        let url = h.url(&format!("/openai/deployments/{DEPLOYMENT}{path}"));
        let reply = h.client.call(method, &url, &key, "").await;
        assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(reply.error_code(), "MethodNotAllowed");
        assert_eq!(reply.header("allow"), allow);
    }
    still_serves(&h).await;
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_declared_or_streamed() {
    let h = Harness::with(Setup { server: "max_body_bytes = 1024".into(), ..Default::default() }).await;
    let url = h.url(&format!("/openai/deployments/{DEPLOYMENT}/chat/completions"));
    let big = format!(r#"{{"messages":[{{"role":"user","content":"{}"}}]}}"#, "x".repeat(2000));
    let reply = h.client.post(&url, &[("api-key", PRIMARY_KEY)], &big).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.error_code(), "RequestEntityTooLarge");
    assert!(reply.text().contains("1024"));

    // Chunked, with no Content-Length: the limit is enforced while reading.
    let mut stream = tokio::net::TcpStream::connect(h.addr()).await.unwrap();
    let head = format!(
        "POST /openai/deployments/{DEPLOYMENT}/chat/completions HTTP/1.1\r\nhost: x\r\napi-key: {PRIMARY_KEY}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..4 {
        let chunk = "y".repeat(500);
        let _ = stream.write_all(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes()).await;
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("RequestEntityTooLarge"));

    // The body-addressed route reads the body before it knows the deployment: same limit.
    let reply = h.client.post(&h.url("/v1/chat/completions"), &[("api-key", PRIMARY_KEY)], &big).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    still_serves(&h).await;
}

#[tokio::test]
async fn bodies_that_are_not_json_objects_get_400() {
    let h = Harness::start().await;
    let url = h.url(&format!("/openai/deployments/{DEPLOYMENT}/chat/completions"));
    for body in [
        "",
        "hello",
        "[1,2,3]",
        r#"{"messages": ["#,
        "{\"a\":\u{0}}",
        r#"{"messages":"hello"}"#,
        r#"{"messages":[],"max_tokens":"many"}"#,
    ] {
        let reply = h.client.post(&url, &[("api-key", PRIMARY_KEY)], body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body:?}");
        assert_eq!(reply.error_code(), "InvalidJson");
    }
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let reply = h.client.post(&url, &[("api-key", PRIMARY_KEY)], &format!(r#"{{"messages":{deep}}}"#)).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    still_serves(&h).await;
}

#[tokio::test]
async fn unreachable_backend_is_502() {
    // A port that was just bound and released: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let more = format!(
        "[[deployments]]\nname = \"gone\"\nmodel = \"m\"\nbackend = \"http://{closed}\"\nkeys = [\"{}\"]\n",
        stored(PRIMARY_KEY)
    );
    let h = Harness::with(Setup { more_deployments: more, ..Default::default() }).await;
    let reply =
        h.client.post(&h.url("/openai/deployments/gone/chat/completions"), &[("api-key", PRIMARY_KEY)], CHAT).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.error_code(), "BadGateway");
    assert!(reply.text().contains("could not be reached"));
    still_serves(&h).await;
}

#[tokio::test]
async fn slow_backend_is_504_after_the_first_byte_timeout() {
    let h = Harness::with(Setup { deployment: "first_byte_timeout_ms = 200".into(), ..Default::default() }).await;
    let url = h.url(&format!("/openai/deployments/{DEPLOYMENT}/chat/completions"));
    let reply = h.client.post(&url, &[("api-key", PRIMARY_KEY), ("x-mock-latency-ms", "5000")], CHAT).await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(reply.error_code(), "GatewayTimeout");
    assert!(reply.text().contains("200 ms"), "{}", reply.text());
    still_serves(&h).await;
}

#[tokio::test]
async fn backend_errors_pass_through_with_their_status() {
    let h = Harness::start().await;
    let url = h.url(&format!("/openai/deployments/{DEPLOYMENT}/chat/completions"));
    for status in [429u16, 500, 503] {
        let reply =
            h.client.post(&url, &[("api-key", PRIMARY_KEY), ("x-mock-status", &status.to_string())], CHAT).await;
        assert_eq!(reply.status.as_u16(), status);
        assert_eq!(reply.error_code(), "MockError", "{}", reply.text());
        assert!(reply.headers.contains_key("x-request-id"));
    }
    still_serves(&h).await;
}

#[tokio::test]
async fn streamed_events_reach_the_client_before_the_backend_finishes() {
    let h = Harness::start().await;
    // Five events, one every 300 ms: the backend needs well over a second to finish.
    let headers = [("api-key", PRIMARY_KEY), ("x-mock-tokens-per-second", "3"), ("x-mock-completion-tokens", "4")];
    let response = h.stream(&headers).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let mut frames: Vec<String> = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            frames.push(String::from_utf8(data.to_vec()).unwrap());
        }
    }
    // The first frame carries the first event, and only it: the gateway did not wait for the rest.
    assert!(frames[0].starts_with("data: {") && frames[0].contains("\"role\":\"assistant\""), "{frames:?}");
    assert!(!frames[0].contains("[DONE]") && !frames[0].contains("finish_reason\":\"stop"), "{frames:?}");
    assert!(frames.len() >= 3, "events arrived together: {frames:?}");
    let all = frames.concat();
    assert_eq!(all.matches("data: ").count(), 7, "role + 4 tokens + last + [DONE]: {all}");
    assert!(all.ends_with("data: [DONE]\n\n"));
    assert!(all.contains("\"usage\""));
}

#[tokio::test]
async fn a_backend_dying_mid_stream_cuts_the_client_stream_and_nothing_else() {
    let h = Harness::start().await;
    let url = h.url(&format!("/openai/deployments/{DEPLOYMENT}/chat/completions"));
    let headers = [("api-key", PRIMARY_KEY), ("x-mock-die-after", "2"), ("x-mock-completion-tokens", "10")];
    let response = h.stream(&headers).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut received = String::new();
    let mut failed = false;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => received.push_str(&String::from_utf8_lossy(&frame.into_data().unwrap_or_default())),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "the client must see the stream break, not a clean end: {received}");
    assert!(received.contains("\"role\":\"assistant\""));
    assert!(!received.contains("[DONE]"));

    // Non-streamed: the backend announces a length and dies halfway.
    let headers = [("api-key", PRIMARY_KEY), ("x-mock-die-after", "0")];
    let response = h.client.send(Method::POST, &url, &headers, CHAT).await;
    assert!(response.into_body().collect().await.is_err());
    still_serves(&h).await;
}

#[tokio::test]
async fn admin_health_endpoints() {
    let h = Harness::start().await;
    for path in ["/healthz", "/readyz"] {
        let reply = h.client.call(Method::GET, &format!("http://{}{path}", h.gateway.admin_addr), &[], "").await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    let reply = h.client.call(Method::GET, &format!("http://{}/nope", h.gateway.admin_addr), &[], "").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.error_code(), "NotFound");
}

#[tokio::test]
async fn server_timing_splits_the_gateways_time_from_the_backends_over_http1_and_http2() {
    let h = Harness::start().await;
    for client in [Client::new(), Client::http2()] {
        let url = h.deployment_url("/chat/completions");
        let reply = client.post(&url, &[("api-key", PRIMARY_KEY), ("x-mock-latency-ms", "30")], CHAT).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let timing = reply.header("server-timing").to_owned();
        let dur = |name: &str| -> f64 {
            let part = timing
                .split(", ")
                .find(|p| p.starts_with(&format!("{name};dur=")))
                .unwrap_or_else(|| panic!("{timing}"));
            part.split_once("dur=").unwrap().1.parse().unwrap()
        };
        // The mock waited 30 ms before its head: that is the backend's time, not the gateway's.
        assert!(dur("backend") >= 30.0, "{timing}");
        assert!(dur("gw") >= 0.0, "{timing}");
    }
    // It can be turned off.
    let h = Harness::with(Setup { server: "server_timing = false".into(), ..Default::default() }).await;
    let reply = h.client.post(&h.deployment_url("/chat/completions"), &[("api-key", PRIMARY_KEY)], CHAT).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.headers.get("server-timing").is_none());
}
