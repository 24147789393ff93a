//! `[limits]`: where quota buckets live, validated.

use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::raw::RawLimits;
use super::{ConfigError, Locator, OnStoreError, RedisStoreConfig, StoreConfig};

pub const DEFAULT_KEY_PREFIX: &str = "tollgate:quota:";
/// A Redis round trip on a LAN takes well under a millisecond; past this it counts as an outage.
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_millis(250);

pub(super) fn validate_store(raw: Option<&RawLimits>, at: &Locator<'_>) -> Result<StoreConfig, ConfigError> {
    let Some(raw) = raw else { return Ok(StoreConfig::Memory) };
    // The `store = "redis"` line, when that is the store.
    let redis = match &raw.store {
        None => None,
        Some(v) => match v.get_ref().as_str() {
            "memory" => None,
            "redis" => Some(v),
            other => {
                return Err(at.error(
                    v,
                    "limits.store",
                    format!("unknown store '{other}': use \"memory\" or \"redis\""),
                ));
            }
        },
    };
    let Some(store) = redis else {
        // Redis settings without the Redis store are a mistake worth pointing at.
        let stray = [
            raw.redis_url.as_ref().map(|v| (v.span(), "limits.redis_url")),
            raw.redis_ca_file.as_ref().map(|v| (v.span(), "limits.redis_ca_file")),
            raw.key_prefix.as_ref().map(|v| (v.span(), "limits.key_prefix")),
            raw.on_store_error.as_ref().map(|v| (v.span(), "limits.on_store_error")),
            raw.replicas.as_ref().map(|v| (v.span(), "limits.replicas")),
            raw.store_timeout_ms.as_ref().map(|v| (v.span(), "limits.store_timeout_ms")),
        ];
        if let Some((span, field)) = stray.into_iter().flatten().next() {
            let (line, column) = at.line_col(span.start);
            return Err(ConfigError {
                file: at.file.into(),
                line,
                column,
                field: field.into(),
                message: "only used with store = \"redis\"; set it, or remove this line".into(),
            });
        }
        return Ok(StoreConfig::Memory);
    };
    let url = match &raw.redis_url {
        None => {
            return Err(at.error(
                store,
                "limits.redis_url",
                "store = \"redis\" needs redis_url, e.g. \"redis://127.0.0.1:6379\" (or rediss:// for TLS)",
            ));
        }
        Some(v) => {
            let url = v.get_ref();
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(at.error(v, "limits.redis_url", "must start with redis:// or rediss:// (TLS)"));
            }
            // The URL may hold a password: the message never repeats it.
            if redis::Client::open(url.as_str()).is_err() {
                return Err(at.error(
                    v,
                    "limits.redis_url",
                    "is not a valid Redis URL; write redis://[user:password@]host[:port][/db]",
                ));
            }
            crate::core::secret::Secret::new(url.clone())
        }
    };
    let key_prefix = match &raw.key_prefix {
        None => DEFAULT_KEY_PREFIX.to_owned(),
        Some(v)
            if v.get_ref().is_empty()
                || v.get_ref().len() > 128
                || v.get_ref().chars().any(|c| c.is_whitespace() || c == '{' || c == '}') =>
        {
            return Err(at.error(
                v,
                "limits.key_prefix",
                "must be 1 to 128 characters without spaces or braces (the braces after it are the keys' hash tags), e.g. \"tollgate:quota:\"",
            ));
        }
        Some(v) => v.get_ref().clone(),
    };
    let on_error = match &raw.on_store_error {
        None => OnStoreError::Local,
        Some(v) => match v.get_ref().as_str() {
            "fail-open" => OnStoreError::FailOpen,
            "fail-closed" => OnStoreError::FailClosed,
            "local" => OnStoreError::Local,
            other => {
                return Err(at.error(
                    v,
                    "limits.on_store_error",
                    format!("unknown mode '{other}': use \"fail-open\", \"fail-closed\" or \"local\""),
                ));
            }
        },
    };
    let replicas = match &raw.replicas {
        None => 1,
        Some(v) if *v.get_ref() == 0 || *v.get_ref() > 10_000 => {
            return Err(at.error(
                v,
                "limits.replicas",
                "must be between 1 and 10000 (how many gateways share the quota)",
            ));
        }
        Some(v) => *v.get_ref(),
    };
    let timeout = match &raw.store_timeout_ms {
        None => DEFAULT_STORE_TIMEOUT,
        Some(v) if *v.get_ref() == 0 || *v.get_ref() > 60_000 => {
            return Err(at.error(v, "limits.store_timeout_ms", "must be between 1 and 60000 milliseconds"));
        }
        Some(v) => Duration::from_millis(*v.get_ref()),
    };
    let ca_file = raw.redis_ca_file.as_ref().map(|v: &Spanned<String>| PathBuf::from(v.get_ref()));
    if ca_file.is_some() && !url.expose().starts_with("rediss://") {
        if let Some(v) = &raw.redis_ca_file {
            return Err(at.error(v, "limits.redis_ca_file", "only used with a rediss:// (TLS) redis_url"));
        }
    }
    Ok(StoreConfig::Redis(RedisStoreConfig { url, ca_file, key_prefix, on_error, replicas, timeout }))
}
