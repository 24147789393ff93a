//! The embedded default: what `tollgate serve` runs without `--config`. One demo deployment in
//! front of the built-in mock backend, with a key generated for this run.

use std::net::SocketAddr;

use crate::config::ledger::LedgerConfig;
use crate::config::{
    AdminConfig, BackendConfig, BackendSettings, BackendUrl, CatalogModel, ClientLimits, Config,
    DEFAULT_FIRST_BYTE_TIMEOUT, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_TOKENS, DEFAULT_PROJECT, DeploymentConfig,
    ServerConfig,
};
use crate::core::estimate::Tokenizer;
use crate::core::keys::{KeyDigest, KeyPair};
use crate::core::quota::Limits;
use crate::core::roles::{AdminToken, Role};

pub const DEMO_DEPLOYMENT: &str = "meta-llama3-8b-qwerty";
pub const DEMO_MODEL: &str = "azureml://registries/azureml-meta/models/Meta-Llama-3-8B-Instruct";
pub const API_VERSION: &str = "2024-05-01-preview";
/// The demo's usage ledger, in the working directory.
pub const DEMO_LEDGER: &str = "tollgate-usage.jsonl";

/// The demo's admin API state (subscriptions and deployments made through it), in the working directory.
pub const DEMO_STATE: &str = "tollgate-state.json";
/// The demo catalog's marketplace offer.
pub const DEMO_OFFER: &str = "meta-llama-3";
/// What the demo model's tokens cost (USD per 1,000,000: the serverless list price of Llama 3 8B).
pub const DEMO_PRICES: crate::core::billing::Prices = crate::core::billing::Prices {
    input: crate::core::billing::Micros(300_000),
    output: crate::core::billing::Micros(610_000),
};

/// The demo configuration: `key` is the plain demo key and `admin_token` the plain owner token
/// (only their digests are kept).
pub fn demo_config(
    listen: SocketAddr,
    admin_listen: SocketAddr,
    backend: BackendUrl,
    key: &str,
    admin_token: &str,
) -> Config {
    Config {
        server: ServerConfig {
            listen,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            limits: ClientLimits::default(),
            public_url: None,
            tls: None,
            workers: crate::config::default_workers(),
            server_timing: true,
        },
        admin: AdminConfig {
            listen: admin_listen,
            tokens: vec![AdminToken {
                name: "demo-owner".into(),
                role: Role::Owner,
                digest: KeyDigest::of(admin_token.as_bytes()),
                projects: None,
                from_file: true,
            }],
            state_file: Some(DEMO_STATE.into()),
            metrics_token: None,
        },
        models: vec![CatalogModel {
            id: DEMO_MODEL.into(),
            version: "3".into(),
            offer: Some(DEMO_OFFER.into()),
            backends: vec![BackendConfig::single(backend.clone(), None, false, None)],
            prices: Some(DEMO_PRICES),
        }],
        backend: BackendSettings { workers: crate::config::default_workers(), ..BackendSettings::default() },
        metrics: crate::config::metrics::MetricsConfig::standard(),
        deployments: vec![DeploymentConfig {
            name: DEMO_DEPLOYMENT.into(),
            model: DEMO_MODEL.into(),
            project: DEFAULT_PROJECT.into(),
            backends: vec![BackendConfig::single(backend, None, false, None)],
            keys: KeyPair { primary: KeyDigest::of(key.as_bytes()), secondary: None },
            first_byte_timeout: DEFAULT_FIRST_BYTE_TIMEOUT,
            max_attempts: crate::core::pool::DEFAULT_MAX_ATTEMPTS,
            deadline: DEFAULT_FIRST_BYTE_TIMEOUT,
            health_check_interval: None,
            limits: Limits::default(),
            default_max_tokens: DEFAULT_MAX_TOKENS,
            tokenizer: Tokenizer::default(),
            prices: Some(DEMO_PRICES),
            queue: crate::config::QueueConfig::off(Limits::default()),
            lease: None,
        }],
        ledger: Some(LedgerConfig::at(DEMO_LEDGER.into())),
        store: crate::config::StoreConfig::Memory,
        consumers: Vec::new(),
        billing: crate::config::billing::BillingConfig::default(),
    }
}

/// What the demo prints: where to call, with which key, and a `curl` line that works when pasted.
pub fn banner(gateway: SocketAddr, admin: SocketAddr, backend: &str, key: &str, admin_token: &str) -> String {
    let port = gateway.port();
    let endpoint = format!("http://{gateway}/openai/deployments/{DEMO_DEPLOYMENT}");
    format!(
        "tollgate {version}: embedded demo (no --config given)\n\
         \n  deployment: {DEMO_DEPLOYMENT} (in front of the built-in mock backend at {backend})\
         \n  endpoint:   {endpoint}\
         \n  host-style: http://{DEMO_DEPLOYMENT}.localhost:{port}   unified: http://{gateway}/models   openai: http://{gateway}/v1\
         \n  key:        {key}\
         \n  admin:      http://{admin}/healthz   metrics: http://{admin}/metrics\
         \n  admin API:  Authorization: Bearer {admin_token}   (owner; e.g. GET http://{admin}/models)\
         \n  ledger:     {DEMO_LEDGER} (usage records, in the working directory; `tollgate usage --ledger {DEMO_LEDGER}`)\
         \n\nTry it:\n  curl -sS '{endpoint}/chat/completions?api-version={API_VERSION}' -H 'api-key: {key}' \
         -H 'content-type: application/json' -d '{{\"messages\":[{{\"role\":\"user\",\"content\":\"Hello!\"}}]}}'\n",
        version = env!("CARGO_PKG_VERSION"),
    )
}
