//! Configuration: the TOML file (see `config/tollgate.example.toml`), validated once into [`Config`].
//!
//! Errors name the file, line, column and field, and say what to write instead. The hot path never
//! re-checks anything validated here.

mod backend_url;
pub mod billing;
mod catalog;
pub mod ledger;
pub mod metrics;
mod raw;
mod store;
mod validate;
mod validate_consumer;
mod validate_deployment;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use backend_url::BackendUrl;
pub use catalog::{BackendCa, CatalogModel, check_model_id};
use raw::RawConfig;
use toml::Spanned;
pub use validate_consumer::check_consumer_name;
pub use validate_deployment::{check_deployment_name, check_project_name};

use crate::config::ledger::LedgerConfig;
use crate::core::estimate::Tokenizer;
use crate::core::keys::KeyPair;
use crate::core::quota::Limits;
use crate::core::roles::AdminToken;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Non-streamed completions only send headers when the whole answer is ready, so this is generous.
pub const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(300);
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Completion reservation for requests without `max_tokens`: a typical long answer. Clients that
/// set `max_tokens` reserve exactly that; reconciliation returns what is not used.
pub const DEFAULT_MAX_TOKENS: u64 = 1024;
/// Upper bound for per-minute limits (a typo guard: 1e9 tokens a minute is far past any backend).
pub const MAX_PER_MINUTE: u64 = 1_000_000_000;
/// The project of deployments declared in the file without one.
pub const DEFAULT_PROJECT: &str = "default";

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub backend: BackendSettings,
    pub deployments: Vec<DeploymentConfig>,
    /// The model catalog (`[[models]]`).
    pub models: Vec<CatalogModel>,
    /// The usage ledger; `None` when the file has no `[ledger]` (usage is then not kept durably).
    pub ledger: Option<LedgerConfig>,
    /// `[limits]`: where quota buckets live (in process by default).
    pub store: StoreConfig,
    /// `[[consumers]]`: callers with their own keys and limits on deployments of the file.
    pub consumers: Vec<ConsumerConfig>,
    /// `[billing]`: the currency of prices and costs.
    pub billing: billing::BillingConfig,
    /// `[metrics]`: the detail `/metrics` keeps.
    pub metrics: metrics::MetricsConfig,
}

/// Most consumers one gateway holds (their names are metric labels: this bounds the series).
pub const MAX_CONSUMERS: usize = 10_000;
/// Most deployments one consumer may be granted.
pub const MAX_GRANTS: usize = 100;
/// Upper bound for period quotas (a typo guard: 10^13 tokens is far past any budget).
pub const MAX_PER_PERIOD: u64 = 10_000_000_000_000;

/// An application (or a person) of a project: its own two keys, and the deployments it may call.
#[derive(Clone, Debug, PartialEq)]
pub struct ConsumerConfig {
    pub name: String,
    pub project: String,
    pub keys: KeyPair,
    /// Quotas over all its deployments together, per UTC day and month.
    pub periods: crate::core::quota::period::PeriodLimits,
    pub grants: Vec<GrantConfig>,
}

/// One deployment a consumer may call, with the consumer's own limits there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantConfig {
    pub deployment: String,
    /// Its own per-minute buckets inside the deployment's (none: limited by the deployment alone).
    pub limits: Option<Limits>,
    pub periods: crate::core::quota::period::PeriodLimits,
}

/// Where the quota buckets live.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
// One per configuration, read at start and reload, never on the request path: not worth a box.
#[allow(clippy::large_enum_variant)]
pub enum StoreConfig {
    /// In this process: each replica has its own buckets.
    #[default]
    Memory,
    /// In Redis, shared by every replica pointing at it.
    Redis(RedisStoreConfig),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisStoreConfig {
    /// The URL as written (`redis://`, `rediss://`, `redis+cluster://`, `redis+sentinel://`, ...);
    /// may hold a password, so it is never logged or printed.
    pub url: crate::core::secret::Secret,
    /// What kind of Redis it names.
    pub topology: RedisTopology,
    /// PEM roots that verify a `rediss://` server (instead of the system roots).
    pub ca_file: Option<PathBuf>,
    /// Prepended to every key (`<prefix>{<deployment>}`).
    pub key_prefix: String,
    pub on_error: OnStoreError,
    /// How many replicas share the quota: with `on_store_error = "local"` each holds limit / replicas.
    pub replicas: u64,
    /// Longest wait for one Redis round trip before it counts as a store error.
    pub timeout: Duration,
    /// How long a replica holds a lease before what is left goes back (`lease_ms`).
    pub lease_ttl: Duration,
    /// Leases for every deployment without its own `lease_*`: this percent of its limits.
    pub lease_percent: Option<u64>,
}

/// The kind of Redis the shared buckets live in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisTopology {
    /// One server: the URL itself.
    Single,
    /// A Redis Cluster, from these seed nodes (`redis[s]://[credentials@]host:port`, secret): the
    /// client learns the rest of the cluster from them and follows `MOVED`/`ASK` and failovers.
    Cluster { nodes: Vec<crate::core::secret::Secret> },
    /// A primary found through Sentinel: the Sentinels' addresses, the name they know the primary
    /// by, and how to reach it once found (`redis[s]://[credentials@]sentinel-primary/db`, secret;
    /// the host is replaced by the address the Sentinels give).
    Sentinel { sentinels: Vec<(String, u16)>, master: String, primary: crate::core::secret::Secret },
}

/// What admission does while the shared store cannot be reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnStoreError {
    /// Admit without a quota (availability first); usage is still metered and recorded.
    FailOpen,
    /// Refuse with 503 (quota first).
    FailClosed,
    /// In-process buckets holding each replica to limit / replicas.
    Local,
}

impl OnStoreError {
    pub fn as_str(self) -> &'static str {
        match self {
            OnStoreError::FailOpen => "fail-open",
            OnStoreError::FailClosed => "fail-closed",
            OnStoreError::Local => "local",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    pub limits: ClientLimits,
    /// The gateway's URL as clients reach it; `http://<listen address>` when unset.
    pub public_url: Option<String>,
    /// A TLS listener beside the plain one (`[server.tls]`).
    pub tls: Option<TlsSettings>,
    /// Worker threads, each a single-threaded runtime serving its connections start to end
    /// (default: one per core, [`default_workers`]).
    pub workers: usize,
    /// Write `Server-Timing: gw;dur=…, backend;dur=…` on forwarded answers (default on).
    pub server_timing: bool,
}

/// Most `server.workers`.
pub const MAX_WORKERS: u64 = 256;

/// One worker per core this process may run on (1 when that cannot be read).
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get).min(MAX_WORKERS as usize)
}

/// `[server.tls]`: where to listen with TLS and the PEM files to use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Clone, Debug)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Bearer tokens for the admin API (`[[admin.tokens]]`).
    pub tokens: Vec<AdminToken>,
    /// Where admin API changes are persisted; `None` keeps them in memory only.
    pub state_file: Option<PathBuf>,
    /// When set, `GET /metrics` needs `Authorization: Bearer` with this token (or an admin token).
    pub metrics_token: Option<crate::core::keys::KeyDigest>,
}

/// What a client connection may take, and how long shutdown waits for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientLimits {
    /// Time to receive a request's headers (slowloris); for HTTP/1.1 also how long an idle
    /// keep-alive connection waits for its next request.
    pub header_read_timeout: Duration,
    /// Time to receive a whole request body (408 past it).
    pub body_read_timeout: Duration,
    /// Largest request head (HTTP/1.1 read buffer, HTTP/2 header list); 431 past it.
    pub max_header_bytes: usize,
    /// Most request headers (HTTP/1.1); 431 past it.
    pub max_headers: usize,
    /// Most client connections at once; further ones wait to be accepted.
    pub max_connections: usize,
    /// After SIGTERM/SIGINT, how long in-flight requests and streams may run before they are cut
    /// (and accounted as such).
    pub shutdown_grace: Duration,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            header_read_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(60),
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_connections: 25_000,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Settings of the pooled client that talks to backends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSettings {
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub pool_idle_timeout: Duration,
    /// Longest silence between two chunks of a streamed response before it is ended.
    pub stream_idle_timeout: Duration,
    /// Longest time for a whole non-streamed response body.
    pub response_timeout: Duration,
    /// How many sets of pools a client keeps: one per data-plane worker (`server.workers`), so a
    /// worker's requests use connections that live on its own thread.
    pub workers: usize,
}

impl Default for BackendSettings {
    fn default() -> Self {
        BackendSettings {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            first_byte_timeout: DEFAULT_FIRST_BYTE_TIMEOUT,
            pool_idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT,
            stream_idle_timeout: Duration::from_secs(60),
            response_timeout: Duration::from_secs(600),
            workers: 1,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct DeploymentConfig {
    pub name: String,
    pub model: String,
    /// The project the deployment belongs to (`default` for file deployments unless set).
    pub project: String,
    /// Where requests go: one backend, or a pool (at most [`crate::core::pool::MAX_BACKENDS`]).
    pub backends: Vec<BackendConfig>,
    pub keys: KeyPair,
    /// The longest one attempt waits for the backend's response head.
    pub first_byte_timeout: Duration,
    /// Attempts a request may make over the pool (a backend is tried at most once a request).
    pub max_attempts: u32,
    /// The longest a request waits for a response head, all attempts together.
    pub deadline: Duration,
    /// Active health checks of the pool's backends (`GET /info` this often), when set.
    pub health_check_interval: Option<Duration>,
    pub limits: Limits,
    /// Completion tokens reserved for a request that sets no `max_tokens`.
    pub default_max_tokens: u64,
    pub tokenizer: Tokenizer,
    /// What its tokens cost (no cost is written without prices).
    pub prices: Option<crate::core::billing::Prices>,
    /// Waiting for the buckets instead of a 429 (off unless `max_wait_ms` is set).
    pub queue: QueueConfig,
    /// Each replica's lease on the shared buckets (`store = "redis"` only; off when `None`).
    pub lease: Option<crate::core::quota::lease::LeaseSize>,
}

/// How a deployment's requests may wait for its buckets (`crate::state::admission_queue`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// The longest a request may wait instead of a 429 (`max_wait_ms`; zero: never).
    pub max_wait: Duration,
    /// At most this many requests wait at once (`max_queued_requests`)...
    pub max_requests: usize,
    /// ...reserving at most this many tokens together (`max_queued_tokens`).
    pub max_tokens: u64,
}

/// The most a request may be held (`max_wait_ms`): ten minutes.
pub const MAX_WAIT: Duration = Duration::from_secs(600);
pub const DEFAULT_MAX_QUEUED_REQUESTS: usize = 1_000;

impl QueueConfig {
    /// Off (today's 429s), with the caps a deployment of `limits` would get.
    pub fn off(limits: Limits) -> QueueConfig {
        QueueConfig {
            max_wait: Duration::ZERO,
            max_requests: DEFAULT_MAX_QUEUED_REQUESTS,
            max_tokens: limits.tokens_per_minute,
        }
    }
}

/// One backend of a deployment (or catalog model).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendConfig {
    pub url: BackendUrl,
    /// How metrics, logs and the ledger name it: the `name` given, or the URL (shared with the
    /// pools built from it).
    pub name: std::sync::Arc<str>,
    /// The key sent to the backend, read from the environment variable named in the file.
    pub key: Option<crate::core::secret::Secret>,
    /// Speak HTTP/2 to it (ALPN `h2`, or prior knowledge over plain TCP).
    pub http2: bool,
    /// A private CA its certificate is verified against (instead of the webpki roots); boxed,
    /// as few backends have one and every deployment's configuration is kept.
    pub ca: Option<Box<BackendCa>>,
    /// Its own quota, when it has one: tollgate never sends it more.
    pub limits: Option<Limits>,
    pub weight: u32,
    /// Lower first: a higher one is used only when every backend of the lower ones is out.
    pub priority: u32,
}

impl BackendConfig {
    /// The one-backend shorthand (`backend = "..."`).
    pub fn single(
        url: BackendUrl,
        key: Option<crate::core::secret::Secret>,
        http2: bool,
        ca: Option<BackendCa>,
    ) -> BackendConfig {
        BackendConfig {
            name: std::sync::Arc::from(url.to_string()),
            url,
            key,
            http2,
            ca: ca.map(Box::new),
            limits: None,
            weight: 1,
            priority: 0,
        }
    }
}

/// A configuration error, pointing at where in which file it is.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}:{column}: {field}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub field: String,
    pub message: String,
}

impl Config {
    /// Deployments declared as in `before` take `before`'s copies: a reload keeps the live
    /// deployments it finds unchanged, and their pools share `before`'s backend names and URLs,
    /// so the file's fresh copies of them would be a second copy of each (~90 bytes a deployment).
    pub fn share_unchanged(&mut self, before: &Config) {
        let old: std::collections::HashMap<&str, &DeploymentConfig> =
            before.deployments.iter().map(|d| (d.name.as_str(), d)).collect();
        for deployment in &mut self.deployments {
            if let Some(&same) = old.get(deployment.name.as_str()).filter(|&&o| o == deployment) {
                deployment.clone_from(same);
            }
        }
    }

    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            line: 0,
            column: 0,
            field: "(file)".into(),
            message: format!("cannot read the configuration file: {e}"),
        })?;
        // An editor or `cp` truncates a file before writing it: an empty file is that moment, not
        // a configuration (loading it would drop every deployment and admin token).
        if text.trim().is_empty() {
            return Err(ConfigError {
                file: path.display().to_string(),
                line: 0,
                column: 0,
                field: "(file)".into(),
                message: "the file is empty (was it being written?); a configuration declares at least [server] or \
                          [[deployments]] (see config/tollgate.example.toml)"
                    .into(),
            });
        }
        let mut config = Config::parse(&text, &path.display().to_string(), &|name| std::env::var(name).ok())?;
        let dir = path.parent().unwrap_or(Path::new("."));
        if let Some(tls) = config.server.tls.as_mut() {
            tls.cert = dir.join(&tls.cert);
            tls.key = dir.join(&tls.key);
        }
        if config.admin.state_file.is_none() {
            config.admin.state_file = Some(path.with_extension("state.json"));
        } else if let Some(state) = config.admin.state_file.as_mut().filter(|p| p.is_relative()) {
            *state = path.parent().unwrap_or(Path::new(".")).join(&*state);
        }
        Ok(config)
    }

    /// Validates configuration text; `env` looks up environment variables (injected so tests need not
    /// touch the process environment).
    pub fn parse(text: &str, file: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let at = Locator { text, file };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map(|s| at.line_col(s.start)).unwrap_or((0, 0));
            ConfigError {
                file: file.into(),
                line,
                column,
                field: field_of_toml_error(e.message(), text.lines().nth(line.saturating_sub(1))),
                message: e.message().trim().to_owned(),
            }
        })?;
        validate::validate(raw, &at, env)
    }
}

pub(crate) struct Locator<'a> {
    text: &'a str,
    file: &'a str,
}

impl Locator<'_> {
    pub(crate) fn line_col(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rfind('\n').map_or(before.len(), |nl| before.len() - nl - 1) + 1;
        (line, column)
    }

    pub(crate) fn error<T>(
        &self,
        spanned: &Spanned<T>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = self.line_col(spanned.span().start);
        ConfigError { file: self.file.into(), line, column, field: field.into(), message: message.into() }
    }
}

fn field_of_toml_error(message: &str, line: Option<&str>) -> String {
    // toml names unknown and missing keys in backticks ("unknown field `x`"); for a bad value,
    // the key is what stands before '=' on the offending line.
    let named = message.split('`').nth(1).filter(|_| message.contains(" field `"));
    if let Some(name) = named {
        return name.to_owned();
    }
    match line.and_then(|l| l.split_once('=')) {
        Some((key, _)) if !key.trim().is_empty() && !key.contains('[') => key.trim().to_owned(),
        _ => message.split('`').nth(1).unwrap_or("(syntax)").to_owned(),
    }
}

#[cfg(test)]
mod tests;
