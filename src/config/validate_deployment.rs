//! Validation of `[[deployments]]` tables: names, models, backends and their keys (from the
//! environment, never the file), endpoint keys, limits.

use toml::Spanned;

use super::raw::RawDeployment;
use super::validate::{millis, per_minute};
use super::*;
use crate::core::keys::{KeyDigest, KeyPair};
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

pub(super) fn validate_deployment(
    raw: &RawDeployment,
    index: usize,
    at: &Locator<'_>,
    env: &dyn Fn(&str) -> Option<String>,
    backend: &BackendSettings,
    models: &[CatalogModel],
) -> Result<DeploymentConfig, ConfigError> {
    let field = |name: &str| format!("deployments[{index}].{name}");
    let name = raw.name.get_ref();
    if let Err(why) = check_deployment_name(name) {
        return Err(at.error(&raw.name, field("name"), why));
    }
    check_model_id(raw.model.get_ref()).map_err(|why| at.error(&raw.model, field("model"), why))?;
    let catalog = models.iter().find(|m| m.id == *raw.model.get_ref());
    let (backend_url, backend_key, catalog_http2, catalog_ca) = match (&raw.backend, catalog) {
        (Some(url), _) => (
            BackendUrl::parse(url.get_ref()).map_err(|why| at.error(url, field("backend"), why))?,
            env_key(at, raw.backend_key_env.as_ref(), field("backend_key_env"), env)?,
            false,
            None,
        ),
        (None, Some(model)) => {
            (model.backend.clone(), model.backend_key.clone(), model.backend_http2, model.backend_ca.clone())
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
        project,
        backend: backend_url,
        backend_key,
        keys: KeyPair { primary: digests[0], secondary: digests.get(1).copied() },
        backend_http2: raw.backend_http2 || catalog_http2,
        backend_ca: match ca_file(at, raw.backend_ca_file.as_ref(), field("backend_ca_file"))? {
            Some(ca) => Some(ca),
            None => catalog_ca,
        },
        first_byte_timeout,
        limits,
        default_max_tokens,
        tokenizer: raw.tokenizer.unwrap_or_default(),
    })
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
