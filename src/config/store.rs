//! `[limits]`: where quota buckets live, validated.

use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::raw::RawLimits;
use super::{ConfigError, Locator, OnStoreError, RedisStoreConfig, RedisTopology, StoreConfig};
use crate::core::secret::Secret;

pub const DEFAULT_KEY_PREFIX: &str = "tollgate:quota:";
/// A Redis round trip on a LAN takes well under a millisecond; past this it counts as an outage.
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_millis(250);
/// How long a replica holds a lease: short, so that an idle replica's lease is soon back.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(1);
/// The largest lease, as a share of the limits: past half, two replicas could not both hold one.
pub const MAX_LEASE_PERCENT: u64 = 50;

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
            raw.lease_ms.as_ref().map(|v| (v.span(), "limits.lease_ms")),
            raw.lease_percent.as_ref().map(|v| (v.span(), "limits.lease_percent")),
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
            // The URL may hold a password: no message repeats it.
            let topology = parse_topology(v.get_ref()).map_err(|message| at.error(v, "limits.redis_url", message))?;
            (Secret::new(v.get_ref().clone()), topology)
        }
    };
    let (url, topology) = url;
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
    let lease_ttl = match &raw.lease_ms {
        None => DEFAULT_LEASE_TTL,
        Some(v) if *v.get_ref() < 10 || *v.get_ref() > 60_000 => {
            return Err(at.error(
                v,
                "limits.lease_ms",
                "must be between 10 and 60000 milliseconds (how long a replica holds a lease before giving back what is left)",
            ));
        }
        Some(v) => Duration::from_millis(*v.get_ref()),
    };
    let lease_percent = match &raw.lease_percent {
        None => None,
        Some(v) if *v.get_ref() == 0 || *v.get_ref() > MAX_LEASE_PERCENT => {
            return Err(at.error(
                v,
                "limits.lease_percent",
                format!("must be between 1 and {MAX_LEASE_PERCENT} (percent of each deployment's limits a replica leases at once); leave it out for no leases"),
            ));
        }
        Some(v) => Some(*v.get_ref()),
    };
    let ca_file = raw.redis_ca_file.as_ref().map(|v: &Spanned<String>| PathBuf::from(v.get_ref()));
    if ca_file.is_some() && !url.expose().starts_with("rediss") {
        if let Some(v) = &raw.redis_ca_file {
            return Err(at.error(
                v,
                "limits.redis_ca_file",
                "only used with TLS: a rediss://, rediss+cluster:// or rediss+sentinel:// redis_url",
            ));
        }
    }
    Ok(StoreConfig::Redis(RedisStoreConfig {
        url,
        topology,
        ca_file,
        key_prefix,
        on_error,
        replicas,
        timeout,
        lease_ttl,
        lease_percent,
    }))
}

const URL_FORMS: &str = "write redis://[user:password@]host[:port][/db] (rediss:// for TLS), \
    redis+cluster://[user:password@]host:port,host:port,... (seed nodes of a Redis Cluster), or \
    redis+sentinel://[user:password@]host:port,host:port,.../master-name[/db] (Sentinels and the name \
    of the primary they watch)";

/// The kind of Redis a `redis_url` names, from its scheme: one server, a cluster's seed nodes, or
/// the Sentinels watching a primary. Errors never repeat the URL (it may hold a password).
fn parse_topology(url: &str) -> Result<RedisTopology, String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!("is not a Redis URL; {URL_FORMS}"));
    };
    let (tls, kind) = match scheme {
        "redis" => (false, None),
        "rediss" => (true, None),
        "redis+cluster" => (false, Some(true)),
        "rediss+cluster" => (true, Some(true)),
        "redis+sentinel" => (false, Some(false)),
        "rediss+sentinel" => (true, Some(false)),
        _ => return Err(format!("unknown scheme '{scheme}://'; {URL_FORMS}")),
    };
    let Some(cluster) = kind else {
        return match redis::Client::open(url) {
            Ok(_) => Ok(RedisTopology::Single),
            Err(_) => Err(format!("is not a valid Redis URL; {URL_FORMS}")),
        };
    };
    // [user:password@]hosts[/path]; a password may hold '@', so the host list starts after the
    // last '@'.
    let (credentials, after) = match rest.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    let (hosts, path) = after.split_once('/').unwrap_or((after, ""));
    let hosts: Vec<&str> = hosts.split(',').map(str::trim).collect();
    if hosts.iter().any(|h| h.is_empty()) {
        return Err(format!("names an empty host (two commas, or none at all); {URL_FORMS}"));
    }
    let plain = if tls { "rediss" } else { "redis" };
    let node = |host: &str, path: &str| match credentials {
        Some(c) => format!("{plain}://{c}@{host}/{path}"),
        None => format!("{plain}://{host}/{path}"),
    };
    let mut addresses = Vec::with_capacity(hosts.len());
    for host in &hosts {
        let Some((name, port)) = host.rsplit_once(':').and_then(|(n, p)| Some((n, p.parse::<u16>().ok()?))) else {
            return Err(format!("host '{host}' names no port (write host:port for each); {URL_FORMS}"));
        };
        addresses.push((name.trim_start_matches('[').trim_end_matches(']').to_owned(), port));
    }
    if cluster {
        if !path.is_empty() {
            return Err("a Redis Cluster has only database 0: remove the path after the hosts".into());
        }
        let mut nodes = Vec::with_capacity(hosts.len());
        for host in &hosts {
            let url = node(host, "");
            if redis::Client::open(url.as_str()).is_err() {
                return Err(format!("node '{host}' is not a valid Redis address; {URL_FORMS}"));
            }
            nodes.push(Secret::new(url));
        }
        return Ok(RedisTopology::Cluster { nodes });
    }
    let (master, db) = path.split_once('/').unwrap_or((path, ""));
    if master.is_empty() {
        return Err(format!("names no primary: add the name the Sentinels know it by after the hosts; {URL_FORMS}"));
    }
    let db: i64 = match db {
        "" => 0,
        db => db.parse().map_err(|_| format!("database '{db}' is not a number; {URL_FORMS}"))?,
    };
    // The primary is reached with the credentials and database given; the Sentinels without.
    let primary = node("sentinel-primary", &db.to_string());
    if redis::Client::open(primary.as_str()).is_err() {
        return Err(format!("the credentials are not valid in a Redis URL; {URL_FORMS}"));
    }
    Ok(RedisTopology::Sentinel { sentinels: addresses, master: master.to_owned(), primary: Secret::new(primary) })
}
