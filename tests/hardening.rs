//! Hostile clients and failing backends: timeouts and limits, hostile bytes, stalled streams,
//! and shutdown. After each, the gateway still serves a normal request.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: (&str, &str) = ("api-key", PRIMARY_KEY);

async fn still_serves(h: &Harness) {
    let reply = h.client.post(&h.deployment_url("/chat/completions"), &[KEY], CHAT).await;
    assert_eq!(reply.status, StatusCode::OK, "the gateway stopped serving: {}", reply.text());
}

/// Sends raw bytes on a new connection and reads what comes back until the server closes it
/// (bounded, so a broken server fails the test instead of hanging it).
async fn raw(h: &Harness, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(h.addr()).await.unwrap();
    let _ = stream.write_all(bytes).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

fn head(extra: &str) -> String {
    format!(
        "POST /openai/deployments/{DEPLOYMENT}/chat/completions HTTP/1.1\r\nhost: x\r\napi-key: {PRIMARY_KEY}\r\n{extra}"
    )
}

/// How long a test waits for the gateway to act on a 300 ms setting: far longer than the
/// setting (no timing is measured), and well below hyper's own 30 s default, so a setting the
/// gateway ignored would fail the test rather than pass on hyper's default.
const WELL_BEFORE_HYPERS_DEFAULT: Duration = Duration::from_secs(10);

fn limits(server: &str) -> Setup {
    Setup { server: server.into(), ..Default::default() }
}

#[tokio::test]
async fn slowloris_headers_are_cut_off() {
    let h = Harness::with(limits("header_read_timeout_ms = 300")).await;
    let mut stream = TcpStream::connect(h.addr()).await.unwrap();
    stream.write_all(b"POST /chat/completions HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(WELL_BEFORE_HYPERS_DEFAULT, stream.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "the connection was not closed");
    still_serves(&h).await;
}

#[tokio::test]
async fn a_connection_that_never_sends_a_byte_is_closed_after_the_header_timeout() {
    let h = Harness::with(limits("header_read_timeout_ms = 300")).await;
    let mut stream = TcpStream::connect(h.addr()).await.unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(WELL_BEFORE_HYPERS_DEFAULT, stream.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "a silent connection was kept open past the header read timeout");
    still_serves(&h).await;
}

#[tokio::test]
async fn slow_and_endless_bodies_get_408() {
    let h = Harness::with(limits("body_read_timeout_ms = 300")).await;
    let answer =
        raw(&h, format!("{}content-length: 100\r\nconnection: close\r\n\r\n{{\"messages\":", head("")).as_bytes())
            .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("RequestTimeout") && answer.contains("x-ms-error-code"), "{answer}");
    let answer = raw(
        &h,
        format!("{}transfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\n{{\"mes\r\n", head("")).as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "a chunked body that never ends: {answer}");
    still_serves(&h).await;
}

#[tokio::test]
async fn oversized_heads_and_too_many_headers_get_431() {
    let h = Harness::with(limits("max_header_bytes = 8192\nmax_headers = 20")).await;
    let big = format!("x-big: {}\r\n", "a".repeat(20_000));
    let answer = raw(&h, format!("{}{big}content-length: 2\r\n\r\n{{}}", head("")).as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    let many: String = (0..50).map(|i| format!("x-h{i}: v\r\n")).collect();
    let answer = raw(&h, format!("{}{many}content-length: 2\r\n\r\n{{}}", head("")).as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    still_serves(&h).await;
}

#[tokio::test]
async fn connections_past_the_cap_wait_for_a_free_slot() {
    let h = Harness::with(limits("max_connections = 2")).await;
    let first = TcpStream::connect(h.addr()).await.unwrap();
    let second = TcpStream::connect(h.addr()).await.unwrap();
    let url = h.deployment_url("/chat/completions");
    let client = Client::new();
    let third = tokio::spawn(async move { client.post(&url, &[KEY], CHAT).await.status });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!third.is_finished(), "a third connection was served past the cap of two");
    drop(first);
    let status =
        tokio::time::timeout(Duration::from_secs(30), third).await.expect("the waiting connection was never served");
    assert_eq!(status.unwrap(), StatusCode::OK);
    drop(second);
}

#[tokio::test]
async fn hostile_requests_get_clear_4xx_and_the_next_request_is_served() {
    let h = Harness::start().await;
    let url = h.deployment_url("/chat/completions");
    let deep = format!("{{\"messages\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
    // Invalid UTF-8 cannot travel in a Rust string: `invalid_utf8_bodies_are_refused` sends it raw.
    let bodies: Vec<(String, &str)> = vec![
        (deep, "InvalidJson"),
        (r#"{"messages":[],"max_tokens":1e400}"#.into(), "InvalidJson"),
        (r#"{"messages":[],"max_tokens":99999999999999999999999}"#.into(), "InvalidJson"),
        (r#"{"messages":[],"max_tokens":1,"max_tokens":150000}"#.into(), "InvalidJson"),
        ("\u{0}\u{1}\u{2}".into(), "InvalidJson"),
    ];
    for (body, code) in bodies {
        let reply = h.client.post(&url, &[KEY], &body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body:.60}");
        assert_eq!(reply.error_code(), code);
        still_serves(&h).await;
    }
    let dup = h.client.post(&url, &[KEY], r#"{"messages":[],"max_tokens":1,"max_tokens":150000}"#).await;
    assert!(dup.text().contains("duplicate field `max_tokens`"), "{}", dup.text());
    // Bytes hyper refuses before the gateway sees a request: a clear 400 and a closed connection.
    let answer = raw(&h, format!("{}x-nul: a\0b\r\ncontent-length: 2\r\n\r\n{{}}", head("")).as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    still_serves(&h).await;
    let answer =
        raw(&h, format!("{}content-length: 99999999999999999\r\nconnection: close\r\n\r\n{{}}", head("")).as_bytes())
            .await;
    assert!(answer.starts_with("HTTP/1.1 413") && answer.contains("RequestEntityTooLarge"), "{answer}");
    still_serves(&h).await;
}

#[tokio::test]
async fn invalid_utf8_bodies_are_refused() {
    let h = Harness::start().await;
    let body = b"{\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\"}]}";
    let request = format!("{}content-length: {}\r\nconnection: close\r\n\r\n", head(""), body.len());
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    let answer = raw(&h, &bytes).await;
    assert!(answer.starts_with("HTTP/1.1 400") && answer.contains("InvalidJson"), "{answer}");
    still_serves(&h).await;
}

#[tokio::test]
async fn a_stalled_stream_ends_cleanly_with_an_error_event_and_is_billed_for_what_was_sent() {
    let h = Harness::with(Setup { backend: "stream_idle_timeout_ms = 300".into(), ..Default::default() }).await;
    let headers = [KEY, ("x-mock-stall-after", "4"), ("x-mock-completion-tokens", "20")];
    let response = h.stream(&headers).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.expect("the stream ends cleanly, not with a broken connection");
    let text = String::from_utf8(body.to_bytes().to_vec()).unwrap();
    assert!(text.contains("event: error\ndata: {\"error\":{\"code\":\"GatewayTimeout\""), "{text}");
    assert!(!text.contains("[DONE]"));
    let usage = h.usage_after(1).await;
    assert_eq!(usage["completion_tokens"], Tokenizer::Bpe.count("Hello from the"), "{usage}");
    assert_eq!(usage["estimated_requests"], 1);
    let metrics = parse_metrics(
        &h.client.call(Method::GET, &format!("http://{}/metrics", h.gateway.admin_addr), &[], "").await.text(),
    );
    assert_eq!(metric(&metrics, "tollgate_backend_errors_total", &[("kind", "timeout")]), 1.0);
    still_serves(&h).await;
}

use tollgate::core::estimate::Tokenizer;

#[tokio::test]
async fn a_stalled_whole_body_is_cut_after_the_response_timeout() {
    let h = Harness::with(Setup { backend: "response_timeout_ms = 300".into(), ..Default::default() }).await;
    let response = h
        .client
        .send(Method::POST, &h.deployment_url("/chat/completions"), &[KEY, ("x-mock-stall-after", "0")], CHAT)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.into_body().collect().await.is_err(), "the client must see the body break");
    still_serves(&h).await;
}

#[tokio::test]
async fn shutdown_turns_unready_drains_then_cuts_at_the_grace_period_and_accounts() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("usage.jsonl");
    let h = Harness::with(Setup {
        server: "shutdown_grace_ms = 500".into(),
        ledger: Some(ledger.clone()),
        ..Default::default()
    })
    .await;
    let admin = h.gateway.admin_addr;
    let headers = [KEY, ("x-mock-tokens-per-second", "10"), ("x-mock-completion-tokens", "1000")];
    let response = h.stream(&headers).await;
    let mut body = response.into_body();
    body.frame().await.unwrap().unwrap();
    let reader = tokio::spawn(async move {
        let mut broken = false;
        while let Some(frame) = body.frame().await {
            if frame.is_err() {
                broken = true;
                break;
            }
        }
        broken
    });
    let client = h.client.clone();
    let Harness { gateway, mock, .. } = h;
    let shutdown = tokio::spawn(gateway.shutdown());
    let mut ready = StatusCode::OK;
    for _ in 0..500 {
        ready = client.call(Method::GET, &format!("http://{admin}/readyz"), &[], "").await.status;
        if ready != StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(ready, StatusCode::SERVICE_UNAVAILABLE, "/readyz turns unready at the start of shutdown");
    assert_eq!(client.call(Method::GET, &format!("http://{admin}/healthz"), &[], "").await.status, StatusCode::OK);
    shutdown.await.unwrap();
    assert!(reader.await.unwrap(), "the stream running past the grace period was cut");
    let text = std::fs::read_to_string(&ledger).unwrap();
    let record: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(record["outcome"], "client_gone");
    assert!(record["completion_tokens"].as_u64().unwrap() >= 1, "{record}");
    drop(mock);
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_after_the_header_timeout() {
    let h = Harness::with(limits("header_read_timeout_ms = 300")).await;
    let mut stream = TcpStream::connect(h.addr()).await.unwrap();
    let body = r#"{"messages":[{"role":"user","content":"hi"}]}"#;
    let request = format!("{}content-length: {}\r\n\r\n{body}", head(""), body.len());
    stream.write_all(request.as_bytes()).await.unwrap();
    // The response comes, then the idle connection is closed by the gateway.
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(WELL_BEFORE_HYPERS_DEFAULT, stream.read_to_end(&mut answer)).await;
    assert!(closed.is_ok(), "the idle keep-alive connection was never closed");
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn a_backend_that_never_accepts_is_504_after_the_connect_timeout() {
    // A listener whose accept queue is full and never drained: new connections hang in SYN.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        if let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
            fillers.push(stream);
        }
    }
    let more = format!(
        "[[deployments]]\nname = \"stuck\"\nmodel = \"m\"\nbackend = \"http://{addr}\"\nkeys = [\"{}\"]\n",
        stored(PRIMARY_KEY)
    );
    let h = Harness::with(Setup {
        backend: "connect_timeout_ms = 300".into(),
        more_deployments: more,
        ..Default::default()
    })
    .await;
    let reply = h.client.post(&h.url("/openai/deployments/stuck/chat/completions"), &[KEY], CHAT).await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT, "{}", reply.text());
    assert_eq!(reply.error_code(), "GatewayTimeout");
    assert!(reply.text().contains("accept a connection within 300 ms"), "{}", reply.text());
    still_serves(&h).await;
    drop((listener, fillers));
}

/// A request head with these Host lines, to `addr`, read until the server closes.
async fn with_hosts(addr: std::net::SocketAddr, version: &str, path: &str, hosts: &[&str]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let hosts: String = hosts.iter().map(|h| format!("host: {h}\r\n")).collect();
    let head = format!("GET {path} {version}\r\n{hosts}api-key: {PRIMARY_KEY}\r\nconnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn http11_requests_without_a_host_or_with_two_are_400() {
    let h = Harness::start().await;
    let info = format!("/openai/deployments/{DEPLOYMENT}/info");
    for addr in [h.addr(), h.gateway.admin_addr] {
        let path = if addr == h.addr() { info.as_str() } else { "/healthz" };
        for hosts in [&[][..], &["a.example", "b.example"]] {
            let answer = with_hosts(addr, "HTTP/1.1", path, hosts).await;
            assert!(answer.starts_with("HTTP/1.1 400"), "{hosts:?}: {answer}");
            assert!(answer.contains("x-ms-error-code: InvalidHost") && answer.contains("Host header"), "{answer}");
        }
        let answer = with_hosts(addr, "HTTP/1.1", path, &["127.0.0.1"]).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        // HTTP/1.0 may leave Host out.
        let answer = with_hosts(addr, "HTTP/1.0", path, &[]).await;
        assert!(answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    still_serves(&h).await;
}
