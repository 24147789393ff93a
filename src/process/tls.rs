//! TLS termination with rustls: TLS 1.2 and 1.3 only, ALPN `h2` and `http/1.1`, over the
//! certificate in use ([`CertStore`], state that reloads swap).

use std::sync::Arc;

pub use crate::state::certificate::{CertStore, TlsError};

/// The rustls server configuration over a [`CertStore`].
pub fn server_config(store: Arc<CertStore>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Setup)?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
