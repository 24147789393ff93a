//! The connection to the store's Redis, whatever kind it is (`limits.redis_url`):
//!
//! - **one server** (`redis://`, `rediss://`): a [`ConnectionManager`], one multiplexed
//!   connection that reconnects by itself;
//! - **a Redis Cluster** (`redis+cluster://`): the `redis` crate's cluster connection, which
//!   learns the slots from the seed nodes, sends each command to the primary of its key's slot,
//!   and follows `MOVED` (resharding, failover) and `ASK` (a slot being migrated) by itself;
//! - **Sentinel** (`redis+sentinel://`): the Sentinels are asked which server is the primary,
//!   and a [`ConnectionManager`] is made to it. After a failover the old primary refuses writes
//!   (or is gone): the call fails, the store drops the connection ([`Connector::follows_primary`])
//!   and the probe asks the Sentinels again.
//!
//! Every key of one script call shares a hash tag (`{<deployment>}`, see `RedisStore::key`), so
//! each call runs on one node. A pipeline must be one slot on a cluster, so commands of several
//! keys are sent as separate calls there, concurrently ([`Connection::send_all`]).

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    Client, Cmd, ConnectionAddr, IntoConnectionInfo, Pipeline, RedisFuture, RedisResult, TlsCertificates, Value,
};

use super::{PROBE_INTERVAL, StoreSetupError};
use crate::config::{RedisStoreConfig, RedisTopology};

/// How connections to the store are made.
pub(super) enum Connector {
    Single(Client),
    Cluster(ClusterClient),
    /// Locked while the Sentinels are asked (the client keeps what it learnt).
    Sentinel(tokio::sync::Mutex<SentinelClient>),
}

/// One multiplexed connection (cloned per call: a handle, not a new connection).
#[derive(Clone)]
pub(super) enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Connector {
    pub(super) fn new(settings: &RedisStoreConfig) -> Result<Connector, StoreSetupError> {
        let roots = match &settings.ca_file {
            None => None,
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|error| StoreSetupError::CaFile { path: path.display().to_string(), error })?,
            ),
        };
        let certificates = |root_cert: Vec<u8>| TlsCertificates { client_tls: None, root_cert: Some(root_cert) };
        let url_error = |e: redis::RedisError| StoreSetupError::Url(e.to_string());
        Ok(match &settings.topology {
            RedisTopology::Single => Connector::Single(
                match roots {
                    None => Client::open(settings.url.expose()),
                    Some(pem) => Client::build_with_tls(settings.url.expose(), certificates(pem)),
                }
                .map_err(url_error)?,
            ),
            RedisTopology::Cluster { nodes } => {
                let mut builder = ClusterClientBuilder::new(nodes.iter().map(|n| n.expose().to_owned()))
                    .connection_timeout(settings.timeout)
                    .response_timeout(settings.timeout)
                    // A call is bounded by `store_timeout_ms` anyway; redirects and refreshed
                    // slot maps are followed within it. A call while its slot migrates can meet
                    // `ASK` and then `MOVED` (tests/redis_cluster.rs saw two redirects exhaust a
                    // budget of 2), so allow 5.
                    .retries(5)
                    .min_retry_wait(10)
                    .max_retry_wait(100);
                if let Some(pem) = roots {
                    builder = builder.certs(certificates(pem));
                }
                Connector::Cluster(builder.build().map_err(url_error)?)
            }
            RedisTopology::Sentinel { sentinels, master, primary } => {
                let info = primary.expose().into_connection_info().map_err(url_error)?;
                let tls = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
                let addresses = sentinels.iter().map(|(host, port)| match tls {
                    false => ConnectionAddr::Tcp(host.clone(), *port),
                    true => {
                        ConnectionAddr::TcpTls { host: host.clone(), port: *port, insecure: false, tls_params: None }
                    }
                });
                let mut builder = SentinelClientBuilder::new(addresses, master, SentinelServerType::Master)
                    .map_err(url_error)?
                    .set_client_to_redis_db(info.redis_settings().db());
                if let Some(username) = info.redis_settings().username() {
                    builder = builder.set_client_to_redis_username(username);
                }
                if let Some(password) = info.redis_settings().password() {
                    builder = builder.set_client_to_redis_password(password);
                }
                if tls {
                    builder = builder
                        .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
                        .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
                    if let Some(pem) = roots {
                        builder = builder
                            .set_client_to_redis_certificates(certificates(pem.clone()))
                            .set_client_to_sentinel_certificates(certificates(pem));
                    }
                }
                Connector::Sentinel(tokio::sync::Mutex::new(builder.build().map_err(url_error)?))
            }
        })
    }

    /// A new connection (for Sentinel, to the primary the Sentinels name now).
    pub(super) async fn connect(&self, timeout: Duration) -> RedisResult<Connection> {
        let config = || {
            ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(1)
                .set_max_delay(PROBE_INTERVAL)
        };
        match self {
            Connector::Single(client) => {
                Ok(Connection::Single(ConnectionManager::new_with_config(client.clone(), config()).await?))
            }
            Connector::Cluster(client) => Ok(Connection::Cluster(client.get_async_connection().await?)),
            Connector::Sentinel(sentinel) => {
                let primary = sentinel.lock().await.async_get_client().await?;
                Ok(Connection::Single(ConnectionManager::new_with_config(primary, config()).await?))
            }
        }
    }

    pub(super) fn is_cluster(&self) -> bool {
        matches!(self, Connector::Cluster(_))
    }

    /// Whether a failed call should drop the connection, so that the next one asks where the
    /// primary is (Sentinel: the connection manager would reconnect to the old address).
    pub(super) fn follows_primary(&self) -> bool {
        matches!(self, Connector::Sentinel(_))
    }
}

impl Connection {
    /// Sends the commands of `pipe` (made with `ignore_errors`) and gives each one's reply in
    /// order, a server error as `Err`; the outer `Err` when the store could not be reached. One
    /// pipeline (one round trip) on one server; on a cluster, whose pipelines must stay in one
    /// slot, one call per command, all sent at once.
    pub(super) async fn send_all(&mut self, pipe: &Pipeline) -> RedisResult<Vec<RedisResult<Value>>> {
        let replies: Vec<RedisResult<Value>> = match self {
            Connection::Single(connection) => {
                pipe.query_async::<Vec<Value>>(connection).await?.into_iter().map(Value::extract_error).collect()
            }
            Connection::Cluster(connection) => {
                let calls = pipe.cmd_iter().map(|cmd| {
                    let mut connection = connection.clone();
                    async move { cmd.query_async::<Value>(&mut connection).await }
                });
                futures_util::future::join_all(calls).await
            }
        };
        // A call refused for what it asked answers that call; one the store could not run now (a
        // lost node, a failover under way) fails them all, and the caller sends them again (each
        // call is idempotent: a reconciliation carries its batch's number).
        match replies.iter().find_map(|r| r.as_ref().err().filter(|e| !is_refusal(e))) {
            Some(error) => Err(error.clone()),
            None => Ok(replies),
        }
    }
}

/// Whether the server ran the call and refused it for what it asked (a script's error, a missing
/// script, keys of several slots), as opposed to not being able to run it now: no connection, a
/// slot moved or migrating, the cluster down, a primary that is now a replica (`READONLY`) or
/// loading its data.
pub(super) fn is_refusal(error: &redis::RedisError) -> bool {
    use redis::ServerErrorKind::*;
    match error.kind() {
        redis::ErrorKind::Server(kind) => {
            matches!(kind, ResponseError | ExecAbort | NoScript | CrossSlot | NoPerm | NotBusy | NoSub)
        }
        redis::ErrorKind::Extension => true,
        _ => false,
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(cmd, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}
