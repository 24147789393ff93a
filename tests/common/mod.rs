//! Shared set-up for end-to-end tests: a real mock backend and a real gateway on port 0, and a
//! small HTTP client.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod admin;
pub mod load;
pub mod pki;
pub mod process;
pub mod quota;
pub mod redis_server;
pub mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tollgate::config::Config;
use tollgate::core::clock::ManualClock;
use tollgate::core::keys::KeyDigest;
use tollgate::process::mock_backend::{MockBackend, MockOptions};
use tollgate::process::runtime::RunningGateway;

pub const DEPLOYMENT: &str = "meta-llama3-8b-qwerty";
pub const PRIMARY_KEY: &str = "PrimaryKey0123456789abcdefghijkl";
pub const SECONDARY_KEY: &str = "SecondaryKey0123456789abcdefghij";
pub const OTHER_KEY: &str = "OtherDeploymentKey0123456789abcd";

/// Whether an outside program a test needs (`redis-server`, `promtool`, ...) is installed. With
/// `CI` set a missing one fails the test: CI installs them, and a skip there would hide a missing
/// install step. Elsewhere the test is skipped and the skip is recorded in
/// `target/test-skips.txt`, which `scripts/test` prints at the end of its summary.
pub fn tool_installed(test: &str, tool: &str, package: &str) -> bool {
    if std::process::Command::new(tool).arg("--version").output().is_ok() {
        return true;
    }
    let why = format!("{test}: `{tool}` is not installed (Debian package `{package}`)");
    if std::env::var_os("CI").is_some() {
        panic!("{why}, and CI is set: .ci/run must install it");
    }
    eprintln!("SKIPPED {why}");
    let log = concat!(env!("CARGO_MANIFEST_DIR"), "/target/test-skips.txt");
    if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
        use std::io::Write as _;
        let _ = writeln!(file, "{why}");
    }
    false
}

/// A reader admin token every harness has: `/usage` and `/quotas` need one.
pub const READER_TOKEN: &str = "HarnessReaderToken0123456789abc";

/// The `[[admin.tokens]]` table for [`READER_TOKEN`].
pub fn reader_token_table() -> String {
    format!("[[admin.tokens]]\nname = \"harness-reader\"\nrole = \"reader\"\ntoken = \"{}\"\n", stored(READER_TOKEN))
}

/// The `authorization` header with [`READER_TOKEN`].
pub fn reader_auth() -> (&'static str, String) {
    ("authorization", format!("Bearer {READER_TOKEN}"))
}

/// A second deployment, "twin", that shares [`PRIMARY_KEY`] with the demo deployment (for
/// requests a key alone cannot place).
pub fn twin_deployment() -> String {
    format!(
        "[[deployments]]\nname = \"twin\"\nmodel = \"azureml://registries/azureml/models/Phi-3-mini-4k-instruct\"\nbackend = \"{{mock}}\"\nkeys = [\"{}\"]\n",
        stored(PRIMARY_KEY)
    )
}

pub fn stored(key: &str) -> String {
    KeyDigest::of(key.as_bytes()).to_stored()
}

/// A gateway in front of a mock backend, both on ephemeral ports.
pub struct Harness {
    pub gateway: RunningGateway,
    pub mock: MockBackend,
    pub client: Client,
    /// The configuration file the gateway was started from (it reloads it).
    pub config_path: std::path::PathBuf,
    pub dir: Arc<tempfile::TempDir>,
}

/// What can be changed from the default test configuration.
#[derive(Default)]
pub struct Setup {
    pub mock: MockOptions,
    /// Extra lines for `[server]`.
    pub server: String,
    /// Extra lines for `[backend]`.
    pub backend: String,
    /// Extra lines for the demo deployment's table.
    pub deployment: String,
    /// Extra `[[deployments]]` tables; `{mock}` is replaced by the mock's URL.
    pub more_deployments: String,
    /// Environment variables visible to the config.
    pub env: Vec<(&'static str, &'static str)>,
    /// A manual clock for the quota buckets (the real clock when `None`).
    pub clock: Option<Arc<ManualClock>>,
    /// Where the usage ledger goes (no ledger when `None`).
    pub ledger: Option<std::path::PathBuf>,
    /// Extra lines for `[admin]`.
    pub admin: String,
    /// Extra top-level tables (`[[models]]`, `[[admin.tokens]]`).
    pub tables: String,
    /// Lines for a `[limits]` table (none when empty).
    pub limits: String,
    /// How the admin state is written (the file when `None`).
    pub state_writer: Option<Arc<dyn tollgate::planes::control::StateWriter>>,
}

impl Harness {
    pub async fn start() -> Harness {
        Harness::with(Setup::default()).await
    }

    pub async fn with(setup: Setup) -> Harness {
        let mock = MockBackend::start(([127, 0, 0, 1], 0).into(), setup.mock.clone()).await.unwrap();
        let text = format!(
            r#"[server]
listen = "127.0.0.1:0"
{server}
[admin]
listen = "127.0.0.1:0"
{admin}
[backend]
{backend}
[[deployments]]
name = "{DEPLOYMENT}"
model = "azureml://registries/azureml-meta/models/Meta-Llama-3-8B-Instruct"
backend = "{mock}"
keys = ["{primary}", "{secondary}"]
{deployment}
[[deployments]]
name = "other"
model = "azureml://registries/azureml-meta/models/Meta-Llama-3-70B-Instruct"
backend = "{mock}"
keys = ["{other}"]
{more}
{tables}
{reader}
"#,
            server = setup.server,
            admin = setup.admin,
            backend = setup.backend,
            deployment = setup.deployment,
            mock = mock.url(),
            primary = stored(PRIMARY_KEY),
            secondary = stored(SECONDARY_KEY),
            other = stored(OTHER_KEY),
            more = setup.more_deployments.replace("{mock}", &mock.url()),
            tables = setup.tables.replace("{mock}", &mock.url()),
            reader = reader_token_table(),
        );
        let text = if setup.limits.is_empty() { text } else { format!("{text}\n[limits]\n{}\n", setup.limits) };
        let text = match &setup.ledger {
            Some(path) => format!("{text}\n[ledger]\npath = {:?}\n", path.display().to_string()),
            None => text,
        };
        let env = setup.env.clone();
        let lookup = move |name: &str| env.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned());
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let config_path = dir.path().join("tollgate.toml");
        std::fs::write(&config_path, &text).unwrap();
        let mut config = Config::parse(&text, "tollgate.toml", &lookup).unwrap();
        if config.admin.state_file.is_none() {
            config.admin.state_file = Some(dir.path().join("tollgate.state.json"));
        }
        let clock: Arc<dyn tollgate::core::clock::Clock> = match setup.clock {
            Some(clock) => clock,
            None => Arc::new(tollgate::core::clock::MonotonicClock::new()),
        };
        let options = tollgate::process::runtime::StartOptions {
            clock,
            config_path: Some(config_path.clone()),
            file_listen: None,
            state_writer: setup.state_writer.clone(),
        };
        let gateway = RunningGateway::start_with(&config, options).await.unwrap();
        Harness { gateway, mock, client: Client::new(), config_path, dir }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.gateway.gateway_addr, path)
    }

    pub fn addr(&self) -> SocketAddr {
        self.gateway.gateway_addr
    }

    /// A URL on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway.admin_addr)
    }

    pub fn deployment_url(&self, path: &str) -> String {
        self.url(&format!("/openai/deployments/{DEPLOYMENT}{path}"))
    }

    /// Sends [`STREAM_CHAT`] to the demo deployment; the body is still streaming.
    pub async fn stream(&self, headers: &[(&str, &str)]) -> http::Response<Incoming> {
        self.client.send(Method::POST, &self.deployment_url("/chat/completions"), headers, STREAM_CHAT).await
    }

    /// `GET` on the admin listener without a token, as text (`/metrics`).
    pub async fn admin_text(&self, path: &str) -> String {
        self.client.call(Method::GET, &self.admin_url(path), &[], "").await.text()
    }

    /// `GET` on the admin listener, as JSON.
    pub async fn admin(&self, path: &str) -> serde_json::Value {
        let (name, value) = reader_auth();
        let url = format!("http://{}{path}", self.gateway.admin_addr);
        let reply = self.client.call(Method::GET, &url, &[(name, &value)], "").await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text());
        reply.json()
    }

    /// The demo deployment's usage totals, once `requests` requests have been recorded (records of
    /// streamed responses land when their body ends, a moment after the client read it).
    pub async fn usage_after(&self, requests: u64) -> serde_json::Value {
        for _ in 0..1000 {
            let usage = self.admin("/usage").await;
            if usage[DEPLOYMENT]["requests"].as_u64().unwrap_or(0) >= requests {
                return usage[DEPLOYMENT].clone();
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("fewer than {requests} requests were recorded: {}", self.admin("/usage").await);
    }

    pub async fn remaining_tokens(&self) -> u64 {
        self.admin("/quotas").await[DEPLOYMENT]["remainingTokens"].as_u64().unwrap()
    }
}

/// A response read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn number(&self, name: &str) -> u64 {
        self.header(name).parse().unwrap_or_else(|_| panic!("{name} is not a number: {self:?}"))
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(|v| v.to_str().unwrap()).unwrap_or_else(|| panic!("no header {name}: {self:?}"))
    }

    /// Asserts the API's error shape and returns its code.
    pub fn error_code(&self) -> String {
        let json = self.json();
        let code = json["error"]["code"].as_str().unwrap_or_else(|| panic!("no error code: {json}")).to_owned();
        assert_eq!(json["error"]["status"], self.status.as_u16(), "{json}");
        assert!(json["error"]["message"].as_str().is_some_and(|m| m.len() > 20), "{json}");
        assert_eq!(self.header("x-ms-error-code"), code);
        code
    }
}

#[derive(Clone)]
pub struct Client {
    inner: HyperClient<HttpConnector, Full<Bytes>>,
}

impl Client {
    pub fn new() -> Client {
        Client { inner: HyperClient::builder(TokioExecutor::new()).build_http() }
    }

    pub fn http2() -> Client {
        Client { inner: HyperClient::builder(TokioExecutor::new()).http2_only(true).build_http() }
    }

    /// Sends a request and returns the response with its body still streaming.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> http::Response<Incoming> {
        let mut request = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
        self.inner.request(request).await.unwrap()
    }

    /// Sends a request and reads the whole response.
    pub async fn call(&self, method: Method, url: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        let response = self.send(method, url, headers, body).await;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Reply { status: parts.status, headers: parts.headers, body }
    }

    /// As [`call`](Self::call), but `None` when the server cannot be reached.
    pub async fn try_get(&self, url: &str) -> Option<Reply> {
        let request = Request::builder().uri(url).body(Full::new(Bytes::new())).unwrap();
        let response = self.inner.request(request).await.ok()?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.ok()?.to_bytes();
        Some(Reply { status: parts.status, headers: parts.headers, body })
    }

    /// A POST that gives `None` when the server is gone (for tests that kill it).
    pub async fn try_post(&self, url: &str, headers: &[(&str, &str)], body: &str) -> Option<Reply> {
        let mut request = Request::builder().method(Method::POST).uri(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = self.inner.request(request.body(Full::new(Bytes::from(body.to_owned()))).unwrap()).await.ok()?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.ok()?.to_bytes();
        Some(Reply { status: parts.status, headers: parts.headers, body })
    }

    pub async fn post(&self, url: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        self.call(Method::POST, url, headers, body).await
    }
}

/// A short streamed chat request.
pub const STREAM_CHAT: &str = r#"{"messages":[{"role":"user","content":"hi"}],"stream":true}"#;

pub const CHAT: &str =
    r#"{"messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Hello!"}]}"#;

/// One sample of a Prometheus text exposition.
#[derive(Debug)]
pub struct Sample {
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the sample lines of a text exposition (comments skipped).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut map = std::collections::BTreeMap::new();
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap();
            map.insert(k.trim_start_matches(',').to_owned(), v.trim_matches('"').to_owned());
        }
        out.push(Sample { name: name.to_owned(), labels: map, value: value.parse().unwrap() });
    }
    out
}

/// The sum of the samples named `name` whose labels include all of `labels`.
pub fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .map(|s| s.value)
        .sum()
}

/// How many samples are named `name` with labels including all of `labels` (series, for a
/// gauge or counter).
pub fn sample_count(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> usize {
    samples
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .count()
}
