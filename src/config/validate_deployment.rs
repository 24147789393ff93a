//! Validation of `[[deployments]]` tables: names, models, backends and their keys (from the
//! environment, never the file), endpoint keys, limits.

use toml::Spanned;

use super::raw::{RawDeployment, RawPoolBackend};
use super::validate::{millis, per_minute};
use super::*;
use crate::core::keys::{KeyDigest, KeyPair};
use crate::core::quota::lease::LeaseSize;
use crate::core::quota::{DEFAULT_REQUESTS_PER_MINUTE, DEFAULT_TOKENS_PER_MINUTE, Limits};
use crate::core::secret::Secret;

pub(super) fn ca_file(
    at: &Locator<'_>,
    value: Option<&Spanned<String>>,
    field: String,
) -> Result<Option<BackendCa>, ConfigError> {
    match value {
        None => Ok(None),
        Some(path) => BackendCa::read(path.get_ref()).map(Some).map_err(|why| at.error(path, field, why)),
    }
}

pub(super) fn env_key(
    at: &Locator<'_>,
    var: Option<&Spanned<String>>,
    field: String,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Secret>, ConfigError> {
    match var {
        None => Ok(None),
        Some(var) => match env(var.get_ref()) {
            // Sent as `api-key: K` and `Authorization: Bearer K`: a value that cannot be a header
            // (a trailing newline is enough) would be dropped and the backend called without a key.
            Some(value) if !value.is_empty() && !sendable(&value) => Err(at.error(
                var,
                field,
                format!(
                    "environment variable '{}' holds a value that cannot be sent as a header (a trailing newline or another control character?); set it to the key alone",
                    var.get_ref()
                ),
            )),
            Some(value) if !value.is_empty() => Ok(Some(Secret::new(value))),
            _ => Err(at.error(
                var,
                field,
                format!("environment variable '{}' is not set (or empty); export it with the backend's key, or remove backend_key_env", var.get_ref()),
            )),
        },
    }
}

/// Whether a backend key can travel as both headers it is sent in.
fn sendable(key: &str) -> bool {
    http::HeaderValue::from_str(key).is_ok() && http::HeaderValue::from_str(&format!("Bearer {key}")).is_ok()
}

/// The backend fields of a deployment or a catalog model, as written.
pub(super) struct RawBackends<'a> {
    pub backend: Option<&'a Spanned<String>>,
    pub backends: Option<&'a Spanned<Vec<Spanned<RawPoolBackend>>>>,
    pub key_env: Option<&'a Spanned<String>>,
    pub http2: bool,
    pub ca_file: Option<&'a Spanned<String>>,
}

/// Most weight one backend can have (a typo guard; weights are relative).
const MAX_WEIGHT: u64 = 10_000;
/// Most priority tiers' number.
const MAX_PRIORITY: u64 = 1_000;

/// `backend` (one) or `[[...backends]]` (a pool), validated; `None` when neither is given.
/// `table` is `deployments[i]` or `models[i]`.
pub(super) fn validate_backends(
    at: &Locator<'_>,
    raw: &RawBackends<'_>,
    table: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Vec<BackendConfig>>, ConfigError> {
    let field = |name: &str| format!("{table}.{name}");
    let pool = match (raw.backend, raw.backends) {
        (None, None) => return Ok(None),
        (Some(url), None) => {
            let url = BackendUrl::parse(url.get_ref()).map_err(|why| at.error(url, field("backend"), why))?;
            return Ok(Some(vec![BackendConfig::single(
                url,
                env_key(at, raw.key_env, field("backend_key_env"), env)?,
                raw.http2,
                ca_file(at, raw.ca_file, field("backend_ca_file"))?,
            )]));
        }
        (Some(url), Some(_)) => {
            return Err(at.error(
                url,
                field("backend"),
                "give either `backend` (one backend) or [[backends]] (a pool), not both; move this URL into the pool",
            ));
        }
        (None, Some(pool)) => pool,
    };
    if let Some(var) = raw.key_env {
        return Err(at.error(
            var,
            field("backend_key_env"),
            "a pool names each backend's key: set `key_env` in its [[backends]] entry instead",
        ));
    }
    if let Some(path) = raw.ca_file {
        return Err(at.error(
            path,
            field("backend_ca_file"),
            "a pool names each backend's CA: set `ca_file` in its [[backends]] entry instead",
        ));
    }
    let entries = pool.get_ref();
    if entries.is_empty() || entries.len() > crate::core::pool::MAX_BACKENDS {
        return Err(at.error(
            pool,
            field("backends"),
            format!("give between 1 and {} backends", crate::core::pool::MAX_BACKENDS),
        ));
    }
    let mut out: Vec<BackendConfig> = Vec::with_capacity(entries.len());
    for (i, spanned) in entries.iter().enumerate() {
        let entry = spanned.get_ref();
        let field = |name: &str| format!("{table}.backends[{i}].{name}");
        let url = BackendUrl::parse(entry.url.get_ref()).map_err(|why| at.error(&entry.url, field("url"), why))?;
        if out.iter().any(|other| other.url == url) {
            return Err(at.error(&entry.url, field("url"), format!("backend '{url}' is listed twice in this pool; list each backend once and use `weight` for a larger share")));
        }
        let name = match &entry.name {
            None => url.to_string(),
            Some(name) => {
                let text = name.get_ref();
                if text.is_empty() || text.len() > 100 || !text.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(at.error(
                        name,
                        field("name"),
                        "a backend's name is 1 to 100 visible ASCII characters, no spaces (it becomes a metric label)",
                    ));
                }
                if out.iter().any(|other| *other.name == **text) {
                    return Err(at.error(
                        name,
                        field("name"),
                        format!("two backends of this pool are named '{text}'; give each its own name"),
                    ));
                }
                text.clone()
            }
        };
        let limits = match (&entry.requests_per_minute, &entry.tokens_per_minute) {
            (None, None) => None,
            (requests, tokens) => Some(Limits {
                requests_per_minute: per_minute(
                    at,
                    requests,
                    &field("requests_per_minute"),
                    crate::config::MAX_PER_MINUTE,
                )?,
                tokens_per_minute: per_minute(at, tokens, &field("tokens_per_minute"), crate::config::MAX_PER_MINUTE)?,
            }),
        };
        let bounded = |value: &Option<Spanned<u64>>, name: &str, low: u64, high: u64, default: u64| match value {
            None => Ok(default),
            Some(v) if *v.get_ref() < low || *v.get_ref() > high => {
                Err(at.error(v, field(name), format!("must be between {low} and {high}")))
            }
            Some(v) => Ok(*v.get_ref()),
        };
        out.push(BackendConfig {
            url,
            name: name.into(),
            key: env_key(at, entry.key_env.as_ref(), field("key_env"), env)?,
            http2: entry.http2,
            ca: ca_file(at, entry.ca_file.as_ref(), field("ca_file"))?.map(Box::new),
            limits,
            weight: bounded(&entry.weight, "weight", 1, MAX_WEIGHT, 1)? as u32,
            priority: bounded(&entry.priority, "priority", 0, MAX_PRIORITY, 0)? as u32,
        });
    }
    Ok(Some(out))
}

pub(super) fn validate_deployment(
    raw: &RawDeployment,
    index: usize,
    at: &Locator<'_>,
    env: &dyn Fn(&str) -> Option<String>,
    backend: &BackendSettings,
    models: &[CatalogModel],
    store: &StoreConfig,
) -> Result<DeploymentConfig, ConfigError> {
    let field = |name: &str| format!("deployments[{index}].{name}");
    let name = raw.name.get_ref();
    if let Err(why) = check_deployment_name(name) {
        return Err(at.error(&raw.name, field("name"), why));
    }
    check_model_id(raw.model.get_ref()).map_err(|why| at.error(&raw.model, field("model"), why))?;
    let catalog = models.iter().find(|m| m.id == *raw.model.get_ref());
    let own = validate_backends(
        at,
        &RawBackends {
            backend: raw.backend.as_ref(),
            backends: raw.backends.as_ref(),
            key_env: raw.backend_key_env.as_ref(),
            http2: raw.backend_http2,
            ca_file: raw.backend_ca_file.as_ref(),
        },
        &format!("deployments[{index}]"),
        env,
    )?;
    let backends = match (own, catalog) {
        (Some(own), _) => own,
        (None, Some(model)) => {
            let mut inherited = model.backends.clone();
            // `backend_http2` / `backend_ca_file` on a deployment of a one-backend catalog
            // model apply to that backend, as before pools.
            if let [only] = inherited.as_mut_slice() {
                only.http2 |= raw.backend_http2;
                if let Some(ca) = ca_file(at, raw.backend_ca_file.as_ref(), field("backend_ca_file"))? {
                    only.ca = Some(Box::new(ca));
                }
            }
            inherited
        }
        (None, None) => {
            return Err(at.error(
                &raw.model,
                field("backend"),
                format!(
                    "model '{}' is not in [[models]]; add it to the catalog or give this deployment its own backend",
                    raw.model.get_ref()
                ),
            ));
        }
    };
    let project = match &raw.project {
        None => DEFAULT_PROJECT.to_owned(),
        Some(p) => {
            check_project_name(p.get_ref()).map_err(|why| at.error(p, field("project"), why))?;
            p.get_ref().clone()
        }
    };
    let keys = key_pair(at, &raw.keys, &format!("deployments[{index}]"))?;
    let first_byte_timeout =
        millis(at, &raw.first_byte_timeout_ms, &field("first_byte_timeout_ms"), backend.first_byte_timeout)?;
    let deadline = millis(at, &raw.deadline_ms, &field("deadline_ms"), first_byte_timeout)?;
    let health_check_interval = match &raw.health_check_interval_ms {
        None => None,
        Some(v) if *v.get_ref() < 10 || *v.get_ref() > 3_600_000 => {
            return Err(at.error(v, field("health_check_interval_ms"), "must be between 10 and 3600000 milliseconds"));
        }
        Some(v) => Some(Duration::from_millis(*v.get_ref())),
    };
    let max_attempts = match &raw.max_attempts {
        None => crate::core::pool::DEFAULT_MAX_ATTEMPTS,
        Some(v) if *v.get_ref() == 0 || *v.get_ref() > crate::core::pool::MAX_BACKENDS as u64 => {
            return Err(at.error(
                v,
                field("max_attempts"),
                format!(
                    "must be between 1 and {} (each attempt goes to another backend of the pool)",
                    crate::core::pool::MAX_BACKENDS
                ),
            ));
        }
        Some(v) => *v.get_ref() as u32,
    };
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
    let queue = queue_config(at, raw, &field, limits)?;
    let lease = lease_config(at, raw, &field, limits, store)?;
    Ok(DeploymentConfig {
        name: name.clone(),
        model: raw.model.get_ref().clone(),
        project,
        backends,
        keys,
        first_byte_timeout,
        max_attempts,
        deadline,
        health_check_interval,
        limits,
        default_max_tokens,
        tokenizer: raw.tokenizer.unwrap_or_default(),
        prices: match super::billing::validate_prices(raw.prices.as_ref(), at, &format!("deployments[{index}]"))? {
            Some(prices) => Some(prices),
            None => models.iter().find(|m| m.id == *raw.model.get_ref()).and_then(|m| m.prices),
        },
        queue,
        lease,
    })
}

/// `lease_requests` / `lease_tokens` (only with `store = "redis"`): each at most the limit;
/// one given, the other is the same share of its own limit; 0 turns leases off. Neither given:
/// `[limits] lease_percent` of the limits, if set.
fn lease_config(
    at: &Locator<'_>,
    raw: &RawDeployment,
    field: &dyn Fn(&str) -> String,
    limits: Limits,
    store: &StoreConfig,
) -> Result<Option<LeaseSize>, ConfigError> {
    let given = [
        (&raw.lease_requests, "lease_requests", limits.requests_per_minute),
        (&raw.lease_tokens, "lease_tokens", limits.tokens_per_minute),
    ];
    let StoreConfig::Redis(redis) = store else {
        if let Some((v, name, _)) = given.iter().find_map(|(v, n, l)| v.as_ref().map(|v| (v, *n, *l))) {
            return Err(at.error(v, field(name), "leases are on the shared buckets: only used with [limits] store = \"redis\"; set it, or remove this line"));
        }
        return Ok(None);
    };
    for (v, name, limit) in given {
        if let Some(v) = v {
            if *v.get_ref() > limit {
                return Err(at.error(
                    v,
                    field(name),
                    format!("must be at most the deployment's limit ({limit} a minute); 0 turns leases off"),
                ));
            }
            if name == "lease_requests" && *v.get_ref() == 1 {
                return Err(at.error(v, field(name), "a lease of one request costs a round trip per request, as no lease does: use at least 2, or 0 for no leases"));
            }
        }
    }
    let share = |given: u64, of: u64, other: u64| {
        (u128::from(given) * u128::from(other)).div_ceil(u128::from(of.max(1))).max(1) as u64
    };
    let requests = raw.lease_requests.as_ref().map(|v| *v.get_ref());
    let tokens = raw.lease_tokens.as_ref().map(|v| *v.get_ref());
    Ok(match (requests, tokens) {
        (Some(0), _) | (_, Some(0)) => None,
        (Some(r), Some(t)) => Some(LeaseSize { requests: r, tokens: t }),
        (Some(r), None) => {
            Some(LeaseSize { requests: r, tokens: share(r, limits.requests_per_minute, limits.tokens_per_minute) })
        }
        (None, Some(t)) => {
            Some(LeaseSize { requests: share(t, limits.tokens_per_minute, limits.requests_per_minute), tokens: t })
        }
        (None, None) => redis.lease_percent.map(|percent| LeaseSize::share(limits, percent)),
    }
    // A share of small limits may come to one request a lease, which saves nothing.
    .filter(|size| size.requests >= 2))
}

/// `max_wait_ms` (at most ten minutes), `max_queued_requests` (1 to 100,000, default 1,000) and
/// `max_queued_tokens` (at least 1, default a minute of the deployment's tokens).
fn queue_config(
    at: &Locator<'_>,
    raw: &RawDeployment,
    field: &dyn Fn(&str) -> String,
    limits: Limits,
) -> Result<QueueConfig, ConfigError> {
    let mut queue = QueueConfig::off(limits);
    if let Some(v) = &raw.max_wait_ms {
        let ms = *v.get_ref();
        if ms > crate::config::MAX_WAIT.as_millis() as u64 {
            return Err(at.error(v, field("max_wait_ms"), "must be at most 600000 (ten minutes); 0 turns waiting off"));
        }
        queue.max_wait = Duration::from_millis(ms);
    }
    if let Some(v) = &raw.max_queued_requests {
        let n = *v.get_ref();
        if n == 0 || n > 100_000 {
            return Err(at.error(v, field("max_queued_requests"), "must be between 1 and 100000"));
        }
        queue.max_requests = n as usize;
    }
    if let Some(v) = &raw.max_queued_tokens {
        if *v.get_ref() == 0 {
            return Err(at.error(v, field("max_queued_tokens"), "must be at least 1"));
        }
        queue.max_tokens = *v.get_ref();
    }
    Ok(queue)
}

/// `keys` of a deployment or consumer (`table` is `deployments[i]` or `consumers[i]`): one or two
/// different `sha256:` digests.
pub(super) fn key_pair(
    at: &Locator<'_>,
    raw: &Spanned<Vec<Spanned<String>>>,
    table: &str,
) -> Result<KeyPair, ConfigError> {
    let keys = raw.get_ref();
    if keys.is_empty() || keys.len() > 2 {
        return Err(at.error(
            raw,
            format!("{table}.keys"),
            "give one or two keys (primary, secondary) as \"sha256:<64 hex>\"; `tollgate keys generate` makes them",
        ));
    }
    let mut digests = Vec::with_capacity(2);
    for (i, key) in keys.iter().enumerate() {
        digests.push(
            KeyDigest::parse_stored(key.get_ref()).map_err(|why| at.error(key, format!("{table}.keys[{i}]"), why))?,
        );
    }
    if digests.len() == 2 && digests[0] == digests[1] {
        return Err(at.error(raw, format!("{table}.keys"), "the primary and secondary keys are the same; give two different keys so one can be rotated while the other is used"));
    }
    Ok(KeyPair { primary: digests[0], secondary: digests.get(1).copied() })
}

/// Project names: like deployment names, so they fit in URLs.
pub fn check_project_name(name: &str) -> Result<(), String> {
    check_deployment_name(name).map_err(|_| {
        format!("project name '{name}' is not valid: it must start with a letter and hold only letters, digits and '-', at most 52 characters")
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
