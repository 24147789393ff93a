//! Validation of the raw file into [`Config`]: every check names the field and says what to write.

use std::net::SocketAddr;
use std::time::Duration;

use toml::Spanned;

use super::raw::{self, RawConfig};
use super::validate_deployment::{RawBackends, validate_backends, validate_deployment};
use super::*;
use crate::core::keys::KeyDigest;
use crate::core::roles::AdminToken;

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
        workers: match &raw.server.workers {
            None => default_workers(),
            Some(v) if *v.get_ref() == 0 || *v.get_ref() > MAX_WORKERS => {
                return Err(at.error(
                    v,
                    "server.workers",
                    format!("must be between 1 and {MAX_WORKERS} (leave it out for one per core)"),
                ));
            }
            Some(v) => *v.get_ref() as usize,
        },
        tls: match &raw.server.tls {
            None => None,
            Some(tls) => Some(TlsSettings {
                listen: socket_addr(at, tls.listen.as_ref(), "server.tls.listen", "127.0.0.1:8443")?,
                cert: PathBuf::from(tls.cert.get_ref()),
                key: PathBuf::from(tls.key.get_ref()),
            }),
        },
        server_timing: raw.server.server_timing.unwrap_or(true),
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
        workers: server.workers,
    };
    // A backend is one endpoint with one quota, whichever models and deployments send to it.
    let mut quotas = BackendQuotas::default();
    let models = validate_models(&raw.models, at, env, &mut quotas)?;
    let store = super::store::validate_store(raw.limits.as_ref(), at)?;
    let mut deployments: Vec<DeploymentConfig> = Vec::with_capacity(raw.deployments.len());
    let mut names = std::collections::HashSet::with_capacity(raw.deployments.len());
    for (index, spanned) in raw.deployments.iter().enumerate() {
        let deployment = validate_deployment(spanned.get_ref(), index, at, env, &backend, &models, &store)?;
        if !names.insert(deployment.name.to_ascii_lowercase()) {
            return Err(at.error(
                &spanned.get_ref().name,
                format!("deployments[{index}].name"),
                format!("deployment name '{}' is used twice; names are part of the URL and must be unique (case-insensitively)", deployment.name),
            ));
        }
        if let Some(why) = quotas.claim(&deployment.backends) {
            return Err(at.error(&spanned.get_ref().model, format!("deployments[{index}].backends"), why));
        }
        deployments.push(deployment);
    }
    let ledger = match &raw.ledger {
        None => None,
        Some(raw) => Some(validate_ledger(raw, at)?),
    };
    let consumers = super::validate_consumer::validate_consumers(&raw.consumers, at, &deployments)?;
    let billing = super::billing::validate_billing(raw.billing.as_ref(), at, env)?;
    let metrics = super::metrics::validate_metrics(raw.metrics.as_ref(), at)?;
    Ok(Config { server, admin, backend, deployments, models, ledger, store, consumers, billing, metrics })
}

/// Each backend URL's limits as first declared (one map, so a file of 10,000 deployments is
/// checked in one pass).
#[derive(Default)]
struct BackendQuotas(std::collections::HashMap<String, Option<Limits>>);

impl BackendQuotas {
    /// Records `backends`' limits; why not, when a URL was declared before with other limits.
    fn claim(&mut self, backends: &[BackendConfig]) -> Option<String> {
        let show = |l: Option<Limits>| {
            l.map_or("no limits".to_owned(), |l| {
                format!("{} requests and {} tokens a minute", l.requests_per_minute, l.tokens_per_minute)
            })
        };
        for b in backends {
            let before = *self.0.entry(b.url.to_string()).or_insert(b.limits);
            if before != b.limits {
                return Some(format!(
                    "backend '{}' has {} here but {} where it is declared before; it is one endpoint with one quota, so give it the same limits everywhere",
                    b.url,
                    show(b.limits),
                    show(before)
                ));
            }
        }
        None
    }
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

fn validate_models(
    raw: &[Spanned<raw::RawModel>],
    at: &Locator<'_>,
    env: &dyn Fn(&str) -> Option<String>,
    quotas: &mut BackendQuotas,
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
        let backends = validate_backends(
            at,
            &RawBackends {
                backend: m.backend.as_ref(),
                backends: m.backends.as_ref(),
                key_env: m.backend_key_env.as_ref(),
                http2: m.backend_http2,
                ca_file: m.backend_ca_file.as_ref(),
            },
            &format!("models[{index}]"),
            env,
        )?
        .ok_or_else(|| {
            at.error(&m.id, field("backend"), "give the model's `backend` URL, or a pool of [[models.backends]]")
        })?;
        if let Some(why) = quotas.claim(&backends) {
            return Err(at.error(&m.id, field("backends"), why));
        }
        models.push(CatalogModel {
            id: m.id.get_ref().clone(),
            version: m.version.get_ref().clone(),
            offer: m.offer.as_ref().map(|o| o.get_ref().clone()),
            backends,
            prices: super::billing::validate_prices(m.prices.as_ref(), at, &format!("models[{index}]"))?,
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

pub(super) fn socket_addr(
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

pub(super) fn at_default_error(field: &str) -> ConfigError {
    ConfigError {
        file: "(built-in)".into(),
        line: 0,
        column: 0,
        field: field.into(),
        message: "bad built-in default".into(),
    }
}

pub(super) fn per_minute(
    at: &Locator<'_>,
    value: &Option<Spanned<u64>>,
    field: &str,
    default: u64,
) -> Result<u64, ConfigError> {
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

pub(super) fn millis(
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
