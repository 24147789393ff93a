//! Configuration: the TOML file (see `config/tollgate.example.toml`), validated once into [`Config`].
//!
//! Errors name the file, line, column and field, and say what to write instead. The hot path never
//! re-checks anything validated here.

mod backend_url;
mod raw;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

pub use backend_url::BackendUrl;
use raw::{RawConfig, RawDeployment};
use toml::Spanned;

use crate::estimate::Tokenizer;
use crate::keys::{KeyDigest, KeyPair};
use crate::ledger::LedgerConfig;
use crate::quota::{DEFAULT_REQUESTS_PER_MINUTE, DEFAULT_TOKENS_PER_MINUTE, Limits};

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

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub backend: BackendSettings,
    pub deployments: Vec<DeploymentConfig>,
    /// The usage ledger; `None` when the file has no `[ledger]` (usage is then not kept durably).
    pub ledger: Option<LedgerConfig>,
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
}

#[derive(Clone, Debug)]
pub struct AdminConfig {
    pub listen: SocketAddr,
}

/// Settings of the pooled client that talks to backends.
#[derive(Clone, Debug)]
pub struct BackendSettings {
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub pool_idle_timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct DeploymentConfig {
    pub name: String,
    pub model: String,
    pub backend: BackendUrl,
    /// The key sent to the backend, read from the environment variable named in the file.
    pub backend_key: Option<String>,
    pub keys: KeyPair,
    pub backend_http2: bool,
    pub first_byte_timeout: Duration,
    pub limits: Limits,
    /// Completion tokens reserved for a request that sets no `max_tokens`.
    pub default_max_tokens: u64,
    pub tokenizer: Tokenizer,
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
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            line: 0,
            column: 0,
            field: "(file)".into(),
            message: format!("cannot read the configuration file: {e}"),
        })?;
        Config::parse(&text, &path.display().to_string(), &|name| std::env::var(name).ok())
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
        validate(raw, &at, env)
    }
}

struct Locator<'a> {
    text: &'a str,
    file: &'a str,
}

impl Locator<'_> {
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rfind('\n').map_or(before.len(), |nl| before.len() - nl - 1) + 1;
        (line, column)
    }

    fn error<T>(&self, spanned: &Spanned<T>, field: impl Into<String>, message: impl Into<String>) -> ConfigError {
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

fn validate(raw: RawConfig, at: &Locator<'_>, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let server = ServerConfig {
        listen: socket_addr(at, raw.server.listen.as_ref(), "server.listen", DEFAULT_LISTEN)?,
        max_body_bytes: match &raw.server.max_body_bytes {
            None => DEFAULT_MAX_BODY_BYTES,
            Some(v) if *v.get_ref() == 0 || *v.get_ref() > 1 << 30 => {
                return Err(at.error(v, "server.max_body_bytes", "must be between 1 and 1073741824 (1 GiB)"));
            }
            Some(v) => *v.get_ref() as usize,
        },
    };
    let admin =
        AdminConfig { listen: socket_addr(at, raw.admin.listen.as_ref(), "admin.listen", DEFAULT_ADMIN_LISTEN)? };
    let backend = BackendSettings {
        connect_timeout: millis(
            at,
            &raw.backend.connect_timeout_ms,
            "backend.connect_timeout_ms",
            DEFAULT_CONNECT_TIMEOUT,
        )?,
        first_byte_timeout: millis(
            at,
            &raw.backend.first_byte_timeout_ms,
            "backend.first_byte_timeout_ms",
            DEFAULT_FIRST_BYTE_TIMEOUT,
        )?,
        pool_idle_timeout: millis(
            at,
            &raw.backend.pool_idle_timeout_ms,
            "backend.pool_idle_timeout_ms",
            DEFAULT_POOL_IDLE_TIMEOUT,
        )?,
    };
    let mut deployments: Vec<DeploymentConfig> = Vec::with_capacity(raw.deployments.len());
    for (index, spanned) in raw.deployments.iter().enumerate() {
        let deployment = validate_deployment(spanned.get_ref(), index, at, env, &backend)?;
        if deployments.iter().any(|d| d.name.eq_ignore_ascii_case(&deployment.name)) {
            return Err(at.error(
                &spanned.get_ref().name,
                format!("deployments[{index}].name"),
                format!("deployment name '{}' is used twice; names are part of the URL and must be unique (case-insensitively)", deployment.name),
            ));
        }
        deployments.push(deployment);
    }
    let ledger = match &raw.ledger {
        None => None,
        Some(raw) => Some(validate_ledger(raw, at)?),
    };
    Ok(Config { server, admin, backend, deployments, ledger })
}

fn validate_ledger(raw: &raw::RawLedger, at: &Locator<'_>) -> Result<LedgerConfig, ConfigError> {
    if raw.path.get_ref().trim().is_empty() {
        return Err(at.error(
            &raw.path,
            "ledger.path",
            "give the ledger file's path, e.g. \"/var/lib/tollgate/usage.jsonl\"",
        ));
    }
    let mut config = LedgerConfig::at(raw.path.get_ref().into());
    config.flush_interval = millis(at, &raw.flush_interval_ms, "ledger.flush_interval_ms", config.flush_interval)?;
    let count = |value: &Option<Spanned<u64>>, field: &str, default: u64, max: u64| match value {
        None => Ok(default),
        Some(v) if *v.get_ref() == 0 || *v.get_ref() > max => {
            Err(at.error(v, field, format!("must be between 1 and {max}")))
        }
        Some(v) => Ok(*v.get_ref()),
    };
    config.flush_records =
        count(&raw.flush_records, "ledger.flush_records", config.flush_records as u64, 1_000_000)? as usize;
    config.buffer_records =
        count(&raw.buffer_records, "ledger.buffer_records", config.buffer_records as u64, 10_000_000)? as usize;
    config.rotate_bytes = match &raw.rotate_bytes {
        None => config.rotate_bytes,
        Some(v) if *v.get_ref() != 0 && *v.get_ref() < 4096 => {
            return Err(at.error(v, "ledger.rotate_bytes", "must be 0 (never rotate by size) or at least 4096"));
        }
        Some(v) => *v.get_ref(),
    };
    config.rotate_daily = raw.rotate_daily.unwrap_or(config.rotate_daily);
    Ok(config)
}

fn validate_deployment(
    raw: &RawDeployment,
    index: usize,
    at: &Locator<'_>,
    env: &dyn Fn(&str) -> Option<String>,
    backend: &BackendSettings,
) -> Result<DeploymentConfig, ConfigError> {
    let field = |name: &str| format!("deployments[{index}].{name}");
    let name = raw.name.get_ref();
    if let Err(why) = check_deployment_name(name) {
        return Err(at.error(&raw.name, field("name"), why));
    }
    if raw.model.get_ref().trim().is_empty() {
        return Err(at.error(
            &raw.model,
            field("model"),
            "must name the model, e.g. \"azureml://registries/azureml-meta/models/Meta-Llama-3-8B-Instruct\"",
        ));
    }
    let backend_url =
        BackendUrl::parse(raw.backend.get_ref()).map_err(|why| at.error(&raw.backend, field("backend"), why))?;
    let backend_key = match &raw.backend_key_env {
        None => None,
        Some(var) => match env(var.get_ref()) {
            Some(value) if !value.is_empty() => Some(value),
            _ => {
                return Err(at.error(
                    var,
                    field("backend_key_env"),
                    format!("environment variable '{}' is not set (or empty); export it with the backend's key, or remove backend_key_env", var.get_ref()),
                ));
            }
        },
    };
    let keys = raw.keys.get_ref();
    if keys.is_empty() || keys.len() > 2 {
        return Err(at.error(
            &raw.keys,
            field("keys"),
            "give one or two keys (primary, secondary) as \"sha256:<64 hex>\"; `tollgate keys generate` makes them",
        ));
    }
    let mut digests = Vec::with_capacity(2);
    for (i, key) in keys.iter().enumerate() {
        digests.push(
            KeyDigest::parse_stored(key.get_ref())
                .map_err(|why| at.error(key, format!("deployments[{index}].keys[{i}]"), why))?,
        );
    }
    if digests.len() == 2 && digests[0] == digests[1] {
        return Err(at.error(&raw.keys, field("keys"), "the primary and secondary keys are the same; give two different keys so one can be rotated while the other is used"));
    }
    let first_byte_timeout =
        millis(at, &raw.first_byte_timeout_ms, &field("first_byte_timeout_ms"), backend.first_byte_timeout)?;
    let limits = Limits {
        requests_per_minute: per_minute(
            at,
            &raw.requests_per_minute,
            &field("requests_per_minute"),
            DEFAULT_REQUESTS_PER_MINUTE,
        )?,
        tokens_per_minute: per_minute(
            at,
            &raw.tokens_per_minute,
            &field("tokens_per_minute"),
            DEFAULT_TOKENS_PER_MINUTE,
        )?,
    };
    let default_max_tokens = match &raw.default_max_tokens {
        None => DEFAULT_MAX_TOKENS.min(limits.tokens_per_minute),
        Some(v) if *v.get_ref() == 0 || *v.get_ref() > limits.tokens_per_minute => {
            return Err(at.error(
                v,
                field("default_max_tokens"),
                format!("must be between 1 and the deployment's tokens_per_minute ({}), or no request without max_tokens could ever be admitted", limits.tokens_per_minute),
            ));
        }
        Some(v) => *v.get_ref(),
    };
    Ok(DeploymentConfig {
        name: name.clone(),
        model: raw.model.get_ref().clone(),
        backend: backend_url,
        backend_key,
        keys: KeyPair { primary: digests[0], secondary: digests.get(1).copied() },
        backend_http2: raw.backend_http2,
        first_byte_timeout,
        limits,
        default_max_tokens,
        tokenizer: raw.tokenizer.unwrap_or_default(),
    })
}

/// The deployment name rule: `^[a-zA-Z][a-zA-Z0-9-]{0,51}$`.
pub fn check_deployment_name(name: &str) -> Result<(), String> {
    let bytes = name.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 52
        && bytes[0].is_ascii_alphabetic()
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "deployment name '{name}' is not valid: it must start with a letter and hold only letters, digits and '-', at most 52 characters"
        ))
    }
}

fn socket_addr(
    at: &Locator<'_>,
    value: Option<&Spanned<String>>,
    field: &str,
    default: &str,
) -> Result<SocketAddr, ConfigError> {
    match value {
        None => default.parse().map_err(|_| at_default_error(field)),
        Some(v) => v.get_ref().parse().map_err(|_| {
            at.error(
                v,
                field,
                format!("'{}' is not an address; write it as \"IP:port\", e.g. \"127.0.0.1:8080\"", v.get_ref()),
            )
        }),
    }
}

fn at_default_error(field: &str) -> ConfigError {
    ConfigError {
        file: "(built-in)".into(),
        line: 0,
        column: 0,
        field: field.into(),
        message: "bad built-in default".into(),
    }
}

fn per_minute(at: &Locator<'_>, value: &Option<Spanned<u64>>, field: &str, default: u64) -> Result<u64, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) if *v.get_ref() == 0 || *v.get_ref() > MAX_PER_MINUTE => Err(at.error(
            v,
            field,
            format!(
                "must be between 1 and {MAX_PER_MINUTE} per minute (a deployment with no quota would reject everything)"
            ),
        )),
        Some(v) => Ok(*v.get_ref()),
    }
}

fn millis(
    at: &Locator<'_>,
    value: &Option<Spanned<u64>>,
    field: &str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) if *v.get_ref() == 0 || *v.get_ref() > 24 * 3600 * 1000 => {
            Err(at.error(v, field, "must be between 1 and 86400000 milliseconds"))
        }
        Some(v) => Ok(Duration::from_millis(*v.get_ref())),
    }
}

#[cfg(test)]
mod tests;
