//! The pooled HTTP clients to backends each deployment (or the gateway's default) holds: one
//! speaking HTTP/1.1, one HTTP/2 only. The data plane's forward stage sends through them.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::BackendSettings;
use crate::core::worker::Worker;

pub type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Keep-alive connection pools to backends: one speaking HTTP/1.1, one speaking HTTP/2 only (for
/// `backend_http2 = true`: ALPN `h2` over TLS, prior knowledge h2c over plain TCP).
impl std::fmt::Debug for BackendClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendClient").field("connect_timeout", &self.connect_timeout).finish_non_exhaustive()
    }
}

pub struct BackendClient {
    /// One pair of pools per data-plane worker (HTTP/1.1 negotiated, HTTP/2 only): a worker's
    /// requests go through connections whose tasks run on that worker's own thread.
    pools: Vec<Pools>,
    connect_timeout: Duration,
}

struct Pools {
    negotiated: HttpsClient,
    http2_only: HttpsClient,
}

impl BackendClient {
    /// Pools that verify `https` backends against the webpki roots.
    pub fn new(settings: &BackendSettings) -> BackendClient {
        BackendClient::with_roots(settings, None)
    }

    /// Pools that verify `https` backends against `roots` (a private CA) instead.
    pub fn with_roots(settings: &BackendSettings, roots: Option<rustls::RootCertStore>) -> BackendClient {
        let pools = (0..settings.workers.max(1))
            .map(|_| Pools {
                negotiated: build(settings, false, roots.clone()),
                http2_only: build(settings, true, roots.clone()),
            })
            .collect();
        BackendClient { pools, connect_timeout: settings.connect_timeout }
    }

    /// The pool a deployment's requests go through on `worker`.
    pub fn pool(&self, http2_only: bool, worker: Worker) -> &HttpsClient {
        let pools = &self.pools[worker.0 % self.pools.len()];
        if http2_only { &pools.http2_only } else { &pools.negotiated }
    }

    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }
}

fn build(settings: &BackendSettings, http2_only: bool, roots: Option<rustls::RootCertStore>) -> HttpsClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(settings.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let custom = roots.and_then(|roots| {
        match rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions() {
            Ok(builder) => Some(builder.with_root_certificates(roots).with_no_client_auth()),
            Err(error) => {
                tracing::error!(%error, "cannot use the backend's CA; verifying against the webpki roots");
                None
            }
        }
    });
    let tls = match custom {
        Some(config) => hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config),
        None => hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots(),
    };
    // ALPN offers exactly what the pool speaks: `backend_http2` chooses HTTP/2, otherwise HTTP/1.1.
    let connector = if http2_only {
        tls.https_or_http().enable_http2().wrap_connector(http)
    } else {
        tls.https_or_http().enable_http1().wrap_connector(http)
    };
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(settings.pool_idle_timeout)
        .http2_only(http2_only)
        .build(connector)
}
