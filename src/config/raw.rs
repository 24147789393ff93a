//! The configuration file as written: serde structs that reject unknown fields.
//!
//! Values that need more than a type check keep their span so that validation errors can name the
//! line they came from; [`super::Config`] is the validated form the gateway runs on.

use serde::Deserialize;
use toml::Spanned;

use crate::core::estimate::Tokenizer;
use crate::core::roles::Role;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub backend: RawBackend,
    #[serde(default)]
    pub deployments: Vec<Spanned<RawDeployment>>,
    pub ledger: Option<RawLedger>,
    #[serde(default)]
    pub models: Vec<Spanned<RawModel>>,
    /// `[limits]`: where the quota buckets live.
    pub limits: Option<RawLimits>,
    /// `[[consumers]]`: applications with their own keys and limits on a project's deployments.
    #[serde(default)]
    pub consumers: Vec<Spanned<RawConsumer>>,
    /// `[billing]`: the one currency prices and costs are in.
    pub billing: Option<RawBilling>,
    /// `[metrics]`: the detail `/metrics` keeps.
    pub metrics: Option<RawMetrics>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub deployments: Option<Spanned<String>>,
    pub full_detail: Option<Vec<Spanned<String>>>,
    pub consumers: Option<Spanned<String>>,
    pub backends: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBilling {
    pub currency: Option<Spanned<String>>,
    /// Where budget threshold crossings are POSTed.
    pub webhook_url: Option<Spanned<String>>,
    /// The environment variable holding the HMAC-SHA256 key the webhooks are signed with.
    pub webhook_secret_env: Option<Spanned<String>>,
    /// Attempts per webhook (default 8), and the wait before the second (doubling after).
    pub webhook_attempts: Option<Spanned<u64>>,
    pub webhook_retry_ms: Option<Spanned<u64>>,
    /// `[[billing.budgets]]`.
    #[serde(default)]
    pub budgets: Vec<Spanned<RawBudget>>,
}

/// A budget on one project, subscription or consumer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    pub name: Spanned<String>,
    pub project: Option<Spanned<String>>,
    /// `project/subscription`.
    pub subscription: Option<Spanned<String>>,
    /// `project/name`.
    pub consumer: Option<Spanned<String>>,
    pub monthly: Option<Spanned<RawAmount>>,
    pub daily: Option<Spanned<RawAmount>>,
    /// Percentages of the amount (default 50, 80, 100).
    pub thresholds: Option<Spanned<Vec<u64>>>,
    /// Refuse requests once the amount is spent (403 `BudgetExceeded`).
    #[serde(default)]
    pub hard: bool,
}

/// Prices per 1,000,000 tokens of each meter, in the `[billing]` currency.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrices {
    pub input: Spanned<RawAmount>,
    pub output: Spanned<RawAmount>,
}

/// An amount as written: `"0.30"` (exact), `2` or `0.3` (a TOML float, read by its shortest
/// decimal form).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawAmount {
    Text(String),
    Whole(u64),
    Float(f64),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConsumer {
    pub name: Spanned<String>,
    pub project: Option<Spanned<String>>,
    pub keys: Spanned<Vec<Spanned<String>>>,
    /// Period quotas over all of the consumer's deployments (UTC calendar days and months).
    pub tokens_per_day: Option<Spanned<u64>>,
    pub tokens_per_month: Option<Spanned<u64>>,
    pub requests_per_day: Option<Spanned<u64>>,
    /// The deployments it may call (`[[consumers.grants]]`).
    #[serde(default)]
    pub grants: Vec<Spanned<RawGrant>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGrant {
    pub deployment: Spanned<String>,
    /// The consumer's own per-minute limits on this deployment (at most the deployment's).
    pub requests_per_minute: Option<Spanned<u64>>,
    pub tokens_per_minute: Option<Spanned<u64>>,
    pub tokens_per_day: Option<Spanned<u64>>,
    pub tokens_per_month: Option<Spanned<u64>>,
    pub requests_per_day: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub store: Option<Spanned<String>>,
    pub redis_url: Option<Spanned<String>>,
    pub redis_ca_file: Option<Spanned<String>>,
    pub key_prefix: Option<Spanned<String>>,
    pub on_store_error: Option<Spanned<String>>,
    pub replicas: Option<Spanned<u64>>,
    pub store_timeout_ms: Option<Spanned<u64>>,
    /// How long a replica holds a lease on a deployment's shared buckets (default 1000).
    pub lease_ms: Option<Spanned<u64>>,
    /// Leases for every deployment: this percent of its limits (off when absent).
    pub lease_percent: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub id: Spanned<String>,
    pub version: Spanned<String>,
    pub offer: Option<Spanned<String>>,
    /// One backend (the shorthand); or `backends`, a pool.
    pub backend: Option<Spanned<String>>,
    pub backends: Option<Spanned<Vec<Spanned<RawPoolBackend>>>>,
    pub backend_key_env: Option<Spanned<String>>,
    #[serde(default)]
    pub backend_http2: bool,
    pub backend_ca_file: Option<Spanned<String>>,
    /// What its tokens cost (deployments of it through the admin API are billed so).
    pub prices: Option<Spanned<RawPrices>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdminToken {
    pub name: Spanned<String>,
    pub role: Spanned<Role>,
    pub token: Spanned<String>,
    pub projects: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLedger {
    pub path: Spanned<String>,
    pub flush_interval_ms: Option<Spanned<u64>>,
    pub flush_records: Option<Spanned<u64>>,
    pub rotate_bytes: Option<Spanned<u64>>,
    pub rotate_daily: Option<bool>,
    pub buffer_records: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<Spanned<String>>,
    pub max_body_bytes: Option<Spanned<u64>>,
    /// The gateway's URL as clients reach it (for `inferenceEndpoint.uri`).
    pub public_url: Option<Spanned<String>>,
    pub header_read_timeout_ms: Option<Spanned<u64>>,
    pub body_read_timeout_ms: Option<Spanned<u64>>,
    pub max_header_bytes: Option<Spanned<u64>>,
    pub max_headers: Option<Spanned<u64>>,
    pub max_connections: Option<Spanned<u64>>,
    pub shutdown_grace_ms: Option<Spanned<u64>>,
    /// Worker threads serving connections (default: one per core).
    pub workers: Option<Spanned<u64>>,
    /// `Server-Timing` on forwarded answers (default true).
    pub server_timing: Option<bool>,
    pub tls: Option<RawTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub listen: Option<Spanned<String>>,
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<Spanned<String>>,
    #[serde(default)]
    pub tokens: Vec<Spanned<RawAdminToken>>,
    /// Where changes made through the admin API are kept (default: beside the config file).
    pub state_file: Option<Spanned<String>>,
    /// `sha256:` digest of a bearer token that `GET /metrics` then requires (open when unset).
    pub metrics_token: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub connect_timeout_ms: Option<Spanned<u64>>,
    pub first_byte_timeout_ms: Option<Spanned<u64>>,
    pub pool_idle_timeout_ms: Option<Spanned<u64>>,
    pub stream_idle_timeout_ms: Option<Spanned<u64>>,
    pub response_timeout_ms: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDeployment {
    pub name: Spanned<String>,
    pub model: Spanned<String>,
    pub project: Option<Spanned<String>>,
    /// Absent when `model` names a catalog entry, whose backend is then used.
    pub backend: Option<Spanned<String>>,
    /// A pool of backends instead of one (`[[deployments.backends]]`).
    pub backends: Option<Spanned<Vec<Spanned<RawPoolBackend>>>>,
    /// Attempts a request may make over the pool's backends (default 3).
    pub max_attempts: Option<Spanned<u64>>,
    /// Longest wait for a response head, all attempts together (default: first_byte_timeout_ms).
    pub deadline_ms: Option<Spanned<u64>>,
    /// Active health checks of the pool's backends: `GET /info` this often (off when absent).
    pub health_check_interval_ms: Option<Spanned<u64>>,
    pub backend_key_env: Option<Spanned<String>>,
    pub backend_ca_file: Option<Spanned<String>>,
    pub keys: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub backend_http2: bool,
    pub first_byte_timeout_ms: Option<Spanned<u64>>,
    pub requests_per_minute: Option<Spanned<u64>>,
    pub tokens_per_minute: Option<Spanned<u64>>,
    pub default_max_tokens: Option<Spanned<u64>>,
    pub tokenizer: Option<Tokenizer>,
    /// What its tokens cost; left out, the catalog model's of the same id (if any).
    pub prices: Option<Spanned<RawPrices>>,
    /// Hold a request that does not fit the buckets for up to this long instead of a 429.
    pub max_wait_ms: Option<Spanned<u64>>,
    pub max_queued_requests: Option<Spanned<u64>>,
    pub max_queued_tokens: Option<Spanned<u64>>,
    /// A replica's lease on the shared buckets (with `store = "redis"`): requests and tokens
    /// per lease; one given, the other is the same share of its limit; 0 turns leases off.
    pub lease_requests: Option<Spanned<u64>>,
    pub lease_tokens: Option<Spanned<u64>>,
}

/// One backend of a pool: `[[deployments.backends]]` or `[[models.backends]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPoolBackend {
    pub url: Spanned<String>,
    /// How metrics, logs and the ledger name it (default: the URL).
    pub name: Option<Spanned<String>>,
    pub key_env: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
    #[serde(default)]
    pub http2: bool,
    /// The backend's own quota: never sent more than it accepts.
    pub requests_per_minute: Option<Spanned<u64>>,
    pub tokens_per_minute: Option<Spanned<u64>>,
    pub weight: Option<Spanned<u64>>,
    pub priority: Option<Spanned<u64>>,
}
