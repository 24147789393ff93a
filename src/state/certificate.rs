//! The TLS certificate in use: the chain and key read from PEM files, re-read on reload (SIGHUP,
//! a changed configuration file, `POST /reload`) without dropping connections: new handshakes
//! get the new certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Why a certificate and key cannot be used; says which file and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS certificate {}: {reason}", path.display())]
    ReadCertificate { path: PathBuf, reason: String },
    #[error("the TLS certificate {} is not valid PEM: {reason}", path.display())]
    InvalidPem { path: PathBuf, reason: String },
    #[error("the TLS certificate file {} holds no certificate", path.display())]
    NoCertificate { path: PathBuf },
    #[error("cannot read a private key from {}: {reason}", path.display())]
    ReadKey { path: PathBuf, reason: String },
    #[error("the private key in {} is not usable: {reason}", path.display())]
    UnusableKey { path: PathBuf, reason: String },
    #[error("the private key {} does not belong to the certificate {} ({reason})", key.display(), cert.display())]
    KeyMismatch { key: PathBuf, cert: PathBuf, reason: String },
    #[error("TLS set-up failed: {0}")]
    Setup(rustls::Error),
}

/// The certificate in use, swappable while connections are open.
#[derive(Debug)]
pub struct CertStore {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<CertifiedKey>,
}

impl CertStore {
    /// Reads and checks the certificate chain and key; the error says which file and what is wrong.
    pub fn open(cert: &Path, key: &Path) -> Result<CertStore, TlsError> {
        let loaded = load(cert, key)?;
        Ok(CertStore { cert: cert.to_owned(), key: key.to_owned(), current: ArcSwap::from_pointee(loaded) })
    }

    /// Re-reads the files; on error the current certificate stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        self.current.store(Arc::new(load(&self.cert, &self.key)?));
        Ok(())
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| TlsError::ReadCertificate { path: cert.to_owned(), reason: e.to_string() })?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::InvalidPem { path: cert.to_owned(), reason: e.to_string() })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { path: cert.to_owned() });
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError::ReadKey { path: key.to_owned(), reason: e.to_string() })?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&private)
        .map_err(|e| TlsError::UnusableKey { path: key.to_owned(), reason: e.to_string() })?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(|e| TlsError::KeyMismatch {
        key: key.to_owned(),
        cert: cert.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(certified)
}
