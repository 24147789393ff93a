//! The built-in mock backend: a real HTTP server speaking the Model Inference API like a Llama
//! serverless endpoint. The embedded demo forwards to it, tests and benchmarks use it as upstream.
//!
//! Behaviour is set by [`MockOptions`] (the `mock-backend` command's flags) and, per request, by
//! test-control headers that pass through the gateway untouched:
//! `x-mock-latency-ms`, `x-mock-completion-tokens`, `x-mock-tokens-per-second`,
//! `x-mock-status` (answer with that error status), `x-mock-die-after` (cut the connection after
//! that many streamed content chunks, or midway through a non-streamed body), `x-mock-echo`
//! `x-mock-stall-after` (stop sending, without closing, after that many streamed events, or
//! midway through a non-streamed body), `x-mock-no-usage` (answer without `usage`, streamed or
//! not), `x-mock-echo`
//! (add `x-mock-echo-query` and `x-mock-echo-headers`, the sorted names of the headers received, and `x-mock-echo-version`).
//!
//! With `requests_per_minute` / `tokens_per_minute` (`--requests-per-minute`,
//! `--tokens-per-minute`) it keeps its own quota like a serverless endpoint and answers 429 with
//! `retry-after-ms` past it; `fail_percent` (`--fail-percent`) answers that share of requests 500;
//! `max_concurrency` (`--max-concurrency`) works on that many requests at once, queueing the rest.
//!
//! Token counts are deterministic: a text counts `ceil(chars / 4)` tokens; a chat message adds 4
//! tokens of template, a chat prompt 3 more; an image counts 85.

mod body;
mod embeddings;
mod inference;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use body::MockBody;

use crate::core::clock::{Clock, MonotonicClock};
use crate::core::quota::{Denial, DeploymentQuota, Limits};

/// How the mock behaves unless a request's control headers say otherwise.
#[derive(Clone, Debug)]
pub struct MockOptions {
    pub model_name: String,
    /// Delay before the response head.
    pub latency: Duration,
    /// Pace of streamed chunks; 0 streams as fast as possible.
    pub tokens_per_second: u32,
    /// Length of every completion (before `max_tokens` cuts it).
    pub completion_tokens: u32,
    /// Whether the last streamed chunk carries `usage`.
    pub stream_usage: bool,
    /// When set, requests must present this key (`api-key` or Bearer).
    pub require_key: Option<String>,
    /// Serve HTTPS with this PEM certificate chain and key.
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Its own quota, as a serverless endpoint has: past it, 429 with `retry-after-ms`.
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    /// The share of requests (percent, spread evenly) answered 500.
    pub fail_percent: u8,
    /// At most this many requests are worked on at once (like a fixed number of replicas);
    /// the rest wait their turn. A slot is held until the answer's head (a streamed answer's
    /// events after it are not limited), so with `latency` it caps throughput at
    /// `max_concurrency / latency`.
    pub max_concurrency: Option<usize>,
    /// The clock of its quota (the real one when `None`; tests share a manual one).
    pub clock: Option<Arc<dyn Clock>>,
}

impl Default for MockOptions {
    fn default() -> Self {
        MockOptions {
            model_name: "Meta-Llama-3-8B-Instruct".into(),
            latency: Duration::ZERO,
            tokens_per_second: 0,
            completion_tokens: 16,
            stream_usage: true,
            require_key: None,
            tls: None,
            requests_per_minute: None,
            tokens_per_minute: None,
            fail_percent: 0,
            max_concurrency: None,
            clock: None,
        }
    }
}

/// The mock's own quota, kept like a serverless endpoint's: a request is refused with 429 when
/// the requests bucket is empty or the tokens bucket is in debt; an answer's tokens are charged
/// once it is made (so a long answer can take the bucket below zero, as the cloud's do).
#[derive(Debug)]
struct MockQuota {
    buckets: Option<DeploymentQuota>,
    fail_percent: u64,
    seen: AtomicU64,
}

impl MockQuota {
    fn new(options: &MockOptions) -> MockQuota {
        let buckets = (options.requests_per_minute.is_some() || options.tokens_per_minute.is_some()).then(|| {
            let clock = options.clock.clone().unwrap_or_else(|| Arc::new(MonotonicClock::new()));
            let unlimited = crate::config::MAX_PER_MINUTE;
            DeploymentQuota::new(
                Limits {
                    requests_per_minute: options.requests_per_minute.unwrap_or(unlimited),
                    tokens_per_minute: options.tokens_per_minute.unwrap_or(unlimited),
                },
                clock,
            )
        });
        MockQuota { buckets, fail_percent: u64::from(options.fail_percent.min(100)), seen: AtomicU64::new(0) }
    }

    /// `Err(wait_ns)` when the request is over the quota.
    fn admit(&self) -> Result<(), u64> {
        match &self.buckets {
            None => Ok(()),
            Some(buckets) => match buckets.admit(0) {
                Ok(_) => Ok(()),
                Err(Denial::Exhausted { retry_after_ns, .. }) => Err(retry_after_ns.max(1_000_000)),
                Err(Denial::ExceedsCapacity { .. }) => Err(60_000_000_000),
            },
        }
    }

    fn charge(&self, tokens: u64) {
        if let Some(buckets) = &self.buckets {
            buckets.reconcile(0, tokens);
        }
    }

    /// Whether this request is one of the `fail_percent` in a hundred, spread evenly.
    fn fails(&self) -> bool {
        if self.fail_percent == 0 {
            return false;
        }
        let n = self.seen.fetch_add(1, Ordering::Relaxed);
        (n + 1) * self.fail_percent / 100 > n * self.fail_percent / 100
    }
}

/// The routes the mock serves, in the order [`MockBackend::served`] counts them.
const ROUTES: [&str; 5] = ["/info", "/chat/completions", "/completions", "/embeddings", "/images/embeddings"];

/// How many requests each route has answered (for tests that check what reached the backend),
/// and how many were refused over the mock's quota or failed on purpose.
#[derive(Debug, Default)]
struct Served {
    routes: [AtomicU64; 5],
    throttled: AtomicU64,
    failed: AtomicU64,
}

impl Served {
    fn count(&self, path: &str) {
        if let Some(i) = ROUTES.iter().position(|r| *r == path) {
            self.routes[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A running mock backend.
pub struct MockBackend {
    pub addr: SocketAddr,
    scheme: &'static str,
    served: Arc<Served>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl MockBackend {
    /// Binds `addr` (port 0 for any free port) and serves until stopped or dropped.
    pub async fn start(addr: SocketAddr, options: MockOptions) -> std::io::Result<MockBackend> {
        let tls = match &options.tls {
            None => None,
            Some((cert, key)) => {
                let store =
                    Arc::new(crate::state::certificate::CertStore::open(cert, key).map_err(std::io::Error::other)?);
                Some(tokio_rustls::TlsAcceptor::from(
                    crate::process::server::tls_config(store).map_err(std::io::Error::other)?,
                ))
            }
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let quota = Arc::new(MockQuota::new(&options));
        let slots = options.max_concurrency.map(|n| Arc::new(tokio::sync::Semaphore::new(n.max(1))));
        let options = Arc::new(options);
        let served = Arc::new(Served::default());
        let counter = Arc::clone(&served);
        let handler = move |request: Request<Incoming>, _worker: crate::process::workers::Worker| {
            let options = Arc::clone(&options);
            let quota = Arc::clone(&quota);
            let served = Arc::clone(&counter);
            let slots = slots.clone();
            async move {
                // Closed only when the mock stops; then the request goes on without a slot.
                let _slot = match &slots {
                    Some(slots) => Arc::clone(slots).acquire_owned().await.ok(),
                    None => None,
                };
                if let Err(wait_ns) = quota.admit() {
                    served.throttled.fetch_add(1, Ordering::Relaxed);
                    return throttled(wait_ns);
                }
                if quota.fails() {
                    served.failed.fetch_add(1, Ordering::Relaxed);
                    return error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "InternalServerError",
                        "the mock backend failed this request on purpose (--fail-percent)",
                    );
                }
                served.count(request.uri().path());
                let response = handle(&options, request).await;
                if let Some(inference::Charged(tokens)) = response.extensions().get::<inference::Charged>() {
                    quota.charge(*tokens);
                }
                response
            }
        };
        let serve_options =
            crate::process::server::ServeOptions { tls, ..crate::process::server::ServeOptions::default() };
        let task = tokio::spawn(crate::process::server::serve(listener, handler, serve_options, stopped));
        Ok(MockBackend { addr, scheme, served, stop, task })
    }

    /// How many requests for `path` (`/info`, `/chat/completions`, ...) reached the mock.
    pub fn served(&self, path: &str) -> u64 {
        ROUTES.iter().position(|r| *r == path).map_or(0, |i| self.served_at(i))
    }

    fn served_at(&self, i: usize) -> u64 {
        self.served.routes[i].load(Ordering::Relaxed)
    }

    /// Requests refused with 429 over the mock's own quota.
    pub fn throttled(&self) -> u64 {
        self.served.throttled.load(Ordering::Relaxed)
    }

    /// Requests failed with 500 by `fail_percent`.
    pub fn failed(&self) -> u64 {
        self.served.failed.load(Ordering::Relaxed)
    }

    /// The root URL to configure as a deployment's `backend`.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// Stops accepting and waits for open connections to finish.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Per-request behaviour: the options, overridden by control headers.
#[derive(Clone, Debug)]
struct Behaviour {
    latency: Duration,
    tokens_per_second: u32,
    completion_tokens: u32,
    stream_usage: bool,
    /// Whether a non-streamed answer carries `usage`.
    body_usage: bool,
    die_after: Option<u32>,
    stall_after: Option<u32>,
}

impl Behaviour {
    fn new(options: &MockOptions, headers: &HeaderMap) -> Behaviour {
        let number = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        Behaviour {
            latency: number("x-mock-latency-ms").map_or(options.latency, Duration::from_millis),
            tokens_per_second: number("x-mock-tokens-per-second").map_or(options.tokens_per_second, |n| n as u32),
            completion_tokens: number("x-mock-completion-tokens")
                .map_or(options.completion_tokens, |n| n.min(100_000) as u32),
            stream_usage: options.stream_usage && !headers.contains_key("x-mock-no-usage"),
            body_usage: !headers.contains_key("x-mock-no-usage"),
            die_after: number("x-mock-die-after").map(|n| n as u32),
            stall_after: number("x-mock-stall-after").map(|n| n as u32),
        }
    }
}

async fn handle(options: &MockOptions, request: Request<Incoming>) -> Response<MockBody> {
    let (parts, incoming) = request.into_parts();
    if let Some(required) = &options.require_key {
        let presented =
            parts.headers.get("api-key").map(HeaderValue::as_bytes).or_else(|| {
                parts.headers.get(header::AUTHORIZATION).and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            });
        if presented != Some(required.as_bytes()) {
            return error(StatusCode::UNAUTHORIZED, "Unauthorized", "the mock backend wants its key");
        }
    }
    let behaviour = Behaviour::new(options, &parts.headers);
    let echo = parts.headers.contains_key("x-mock-echo").then(|| echo_headers(&parts));
    let parts_version = parts.version;
    let parts_headers = parts.headers.clone();
    if let Some(status) =
        parts.headers.get("x-mock-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u16>().ok())
    {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        tokio::time::sleep(behaviour.latency).await;
        return error(status, "MockError", "the mock backend was asked to fail");
    }
    let body = match incoming.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return error(StatusCode::BAD_REQUEST, "InvalidRequestBody", "the body could not be read");
        }
    };
    let response = match (&parts.method, parts.uri.path()) {
        (&Method::GET, "/info") => Ok(json_response(inference::info(options))),
        (&Method::POST, "/chat/completions") => inference::chat(options, &behaviour, &body),
        (&Method::POST, "/completions") => inference::completions(options, &behaviour, &body),
        (&Method::POST, "/embeddings") => embeddings::embeddings(options, &body).map(json_response),
        (&Method::POST, "/images/embeddings") => embeddings::image_embeddings(options, &body).map(json_response),
        (_, "/info" | "/chat/completions" | "/completions" | "/embeddings" | "/images/embeddings") => {
            Err((StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "wrong method".to_owned()))
        }
        _ => Err((StatusCode::NOT_FOUND, "NotFound", "no such route".to_owned())),
    };
    tokio::time::sleep(behaviour.latency).await;
    let mut response = match response {
        Ok(mut response) => {
            if let (Some(_), MockBody::Full(Some(bytes))) = (behaviour.stall_after, response.body_mut()) {
                // A non-streamed body that stops halfway and never ends.
                let full_len = bytes.len();
                let half = bytes.slice(..full_len / 2);
                *response.body_mut() = MockBody::Stalled(Some(half));
                response.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(full_len));
            } else if let (Some(_), MockBody::Full(Some(bytes))) = (behaviour.die_after, response.body_mut()) {
                // A non-streamed body cut short: announce the full length, send half, then fail.
                let full_len = bytes.len();
                let half = bytes.slice(..full_len / 2);
                *response.body_mut() = MockBody::truncated(half);
                response.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(full_len));
            }
            response
        }
        Err((status, code, message)) => error(status, code, &message),
    };
    if let Some((query, names)) = echo {
        if let Some(required) = &options.require_key {
            response.headers_mut().insert("x-mock-echo-keys", key_echo(&parts_headers, required));
        }
        response.headers_mut().insert("x-mock-echo-query", query);
        response.headers_mut().insert("x-mock-echo-headers", names);
        response.headers_mut().insert("x-mock-echo-version", HeaderValue::from_static(version_name(parts_version)));
    }
    response
}

/// For `x-mock-echo` with a required key: what each key header carried, as
/// `api-key=<required|other|absent>,authorization=<...>` (never the keys themselves).
fn key_echo(headers: &HeaderMap, required: &str) -> HeaderValue {
    let what = |value: Option<&[u8]>| match value {
        None => "absent",
        Some(v) if v == required.as_bytes() => "required",
        Some(_) => "other",
    };
    let api_key = what(headers.get("api-key").map(HeaderValue::as_bytes));
    let bearer =
        what(headers.get(header::AUTHORIZATION).map(|v| v.as_bytes().strip_prefix(b"Bearer ").unwrap_or(v.as_bytes())));
    HeaderValue::from_str(&format!("api-key={api_key},authorization={bearer}")).unwrap_or(HeaderValue::from_static(""))
}

fn version_name(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_11 => "HTTP/1.1",
        _ => "other",
    }
}

/// The query string and the sorted names of the headers a request arrived with.
fn echo_headers(parts: &http::request::Parts) -> (HeaderValue, HeaderValue) {
    let mut names: Vec<&str> = parts.headers.keys().map(|k| k.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let query = HeaderValue::from_str(parts.uri.query().unwrap_or("")).unwrap_or(HeaderValue::from_static(""));
    let names = HeaderValue::from_str(&names.join(",")).unwrap_or(HeaderValue::from_static(""));
    (query, names)
}

fn json_response(body: Bytes) -> Response<MockBody> {
    let mut response = Response::new(MockBody::Full(Some(body)));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A serverless endpoint's 429: the error JSON, `retry-after-ms` and `retry-after`.
fn throttled(wait_ns: u64) -> Response<MockBody> {
    let ms = wait_ns.div_ceil(1_000_000);
    let mut response = error(
        StatusCode::TOO_MANY_REQUESTS,
        "TooManyRequests",
        &format!("the mock backend is over its own rate limit; retry after {ms} ms"),
    );
    response.headers_mut().insert("retry-after-ms", HeaderValue::from(ms));
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(wait_ns.div_ceil(1_000_000_000)));
    response
}

fn error(status: StatusCode, code: &'static str, message: &str) -> Response<MockBody> {
    let body = serde_json::json!({"error": {"code": code, "message": message, "status": status.as_u16()}});
    let mut response = json_response(Bytes::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert("x-ms-error-code", HeaderValue::from_static(code));
    response
}
