//! Validation of the raw file into [`Config`]: every check names the field and says what to write.

use std::net::SocketAddr;
use std::time::Duration;

use toml::Spanned;

use super::raw::{self, RawConfig, RawDeployment};
use super::*;
use crate::core::keys::{KeyDigest, KeyPair};
use crate::core::quota::{DEFAULT_REQUESTS_PER_MINUTE, DEFAULT_TOKENS_PER_MINUTE, Limits};
use crate::core::roles::AdminToken;
use crate::core::secret::Secret;

pub(super) fn validate(
    raw: RawConfig,
    at: &Locator<'_>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let server = ServerConfig {
        listen: socket_addr(at, raw.server.listen.as_ref(), "server.listen", DEFAULT_LISTEN)?,
        max_body_bytes: match &raw.server.max_body_bytes {
            None => DEFAULT_MAX_BODY_BYTES,
            Some(v) if *v.get_ref() == 0 || *v.get_ref() > 1 << 30 => {
                return Err(at.error(v, "server.max_body_bytes", "must be between 1 and 1073741824 (1 GiB)"));
            }
            Some(v) => *v.get_ref() as usize,
        },
        limits: validate_limits(&raw.server, at)?,
        tls: match &raw.server.tls {
            None => None,
            Some(tls) => Some(TlsSettings {
                listen: socket_addr(at, tls.listen.as_ref(), "server.tls.listen", "127.0.0.1:8443")?,
                cert: PathBuf::from(tls.cert.get_ref()),
                key: PathBuf::from(tls.key.get_ref()),
            }),
        },
        public_url: match &raw.server.public_url {
            None => None,
            Some(v) => {
                let url = v.get_ref().trim_end_matches('/');
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(at.error(
                        v,
                        "server.public_url",
                        "must start with http:// or https://, e.g. \"https://gateway.example.com\"",
                    ));
                }
                Some(url.to_owned())
            }
        },
    };
    let admin = AdminConfig {
        listen: socket_addr(at, raw.admin.listen.as_ref(), "admin.listen", DEFAULT_ADMIN_LISTEN)?,
        tokens: validate_tokens(&raw.admin.tokens, at)?,
        state_file: raw.admin.state_file.as_ref().map(|p| PathBuf::from(p.get_ref())),
        metrics_token: match &raw.admin.metrics_token {
            None => None,
            Some(v) => {
                Some(KeyDigest::parse_stored(v.get_ref()).map_err(|why| at.error(v, "admin.metrics_token", why))?)
            }
        },
    };
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
        stream_idle_timeout: millis(
            at,
            &raw.backend.stream_idle_timeout_ms,
            "backend.stream_idle_timeout_ms",
            BackendSettings::default().stream_idle_timeout,
        )?,
        response_timeout: millis(
            at,
            &raw.backend.response_timeout_ms,
            "backend.response_timeout_ms",
            BackendSettings::default().response_timeout,
        )?,
    };
    let models = validate_models(&raw.models, at, env)?;
    let mut deployments: Vec<DeploymentConfig> = Vec::with_capacity(raw.deployments.len());
    for (index, spanned) in raw.deployments.iter().enumerate() {
        let deployment = validate_deployment(spanned.get_ref(), index, at, env, &backend, &models)?;
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
    let store = super::store::validate_store(raw.limits.as_ref(), at)?;
    Ok(Config { server, admin, backend, deployments, models, ledger, store })
}

fn validate_limits(raw: &raw::RawServer, at: &Locator<'_>) -> Result<ClientLimits, ConfigError> {
    let d = ClientLimits::default();
    let count = |value: &Option<Spanned<u64>>, field: &str, default: usize, min: u64, max: u64| match value {
        None => Ok(default),
        Some(v) if *v.get_ref() < min || *v.get_ref() > max => {
            Err(at.error(v, field, format!("must be between {min} and {max}")))
        }
        Some(v) => Ok(*v.get_ref() as usize),
    };
    Ok(ClientLimits {
        header_read_timeout: millis(
            at,
            &raw.header_read_timeout_ms,
            "server.header_read_timeout_ms",
            d.header_read_timeout,
        )?,
        body_read_timeout: millis(at, &raw.body_read_timeout_ms, "server.body_read_timeout_ms", d.body_read_timeout)?,
        max_header_bytes: count(&raw.max_header_bytes, "server.max_header_bytes", d.max_header_bytes, 8192, 16 << 20)?,
        max_headers: count(&raw.max_headers, "server.max_headers", d.max_headers, 8, 10_000)?,
        max_connections: count(&raw.max_connections, "server.max_connections", d.max_connections, 1, 10_000_000)?,
        shutdown_grace: millis(at, &raw.shutdown_grace_ms, "server.shutdown_grace_ms", d.shutdown_grace)?,
    })
}

fn ca_file(at: &Locator<'_>, value: Option<&Spanned<String>>, field: String) -> Result<Option<BackendCa>, ConfigError> {
    match value {
        None => Ok(None),
        Some(path) => BackendCa::read(path.get_ref()).map(Some).map_err(|why| at.error(path, field, why)),
    }
}

fn env_key(
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

fn validate_models(
    raw: &[Spanned<raw::RawModel>],
    at: &Locator<'_>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<CatalogModel>, ConfigError> {
    let mut models: Vec<CatalogModel> = Vec::with_capacity(raw.len());
    for (index, spanned) in raw.iter().enumerate() {
        let m = spanned.get_ref();
        let field = |name: &str| format!("models[{index}].{name}");
        check_model_id(m.id.get_ref()).map_err(|why| at.error(&m.id, field("id"), why))?;
        if models.iter().any(|other| other.id == *m.id.get_ref()) {
            return Err(at.error(&m.id, field("id"), format!("model '{}' is listed twice", m.id.get_ref())));
        }
        if m.version.get_ref().trim().is_empty() {
            return Err(at.error(&m.version, field("version"), "give the model's current version, e.g. \"3\""));
        }
        if let Some(offer) = m.offer.as_ref().filter(|o| o.get_ref().trim().is_empty()) {
            return Err(at.error(
                offer,
                field("offer"),
                "an offer needs a name; remove the field if the model needs no subscription",
            ));
        }
        models.push(CatalogModel {
            id: m.id.get_ref().clone(),
            version: m.version.get_ref().clone(),
            offer: m.offer.as_ref().map(|o| o.get_ref().clone()),
            backend: BackendUrl::parse(m.backend.get_ref())
                .map_err(|why| at.error(&m.backend, field("backend"), why))?,
            backend_key: env_key(at, m.backend_key_env.as_ref(), field("backend_key_env"), env)?,
            backend_http2: m.backend_http2,
            backend_ca: ca_file(at, m.backend_ca_file.as_ref(), field("backend_ca_file"))?,
        });
    }
    Ok(models)
}

fn validate_tokens(raw: &[Spanned<raw::RawAdminToken>], at: &Locator<'_>) -> Result<Vec<AdminToken>, ConfigError> {
    let mut tokens: Vec<AdminToken> = Vec::with_capacity(raw.len());
    for (index, spanned) in raw.iter().enumerate() {
        let t = spanned.get_ref();
        let field = |name: &str| format!("admin.tokens[{index}].{name}");
        if t.name.get_ref().trim().is_empty() || tokens.iter().any(|o| o.name == *t.name.get_ref()) {
            return Err(at.error(&t.name, field("name"), "each admin token needs a unique name"));
        }
        let digest =
            KeyDigest::parse_stored(t.token.get_ref()).map_err(|why| at.error(&t.token, field("token"), why))?;
        tokens.push(AdminToken {
            name: t.name.get_ref().clone(),
            role: *t.role.get_ref(),
            digest,
            projects: t.projects.clone(),
            from_file: true,
        });
    }
    Ok(tokens)
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
