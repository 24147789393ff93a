//! The model catalog as configured: `[[models]]`.

use super::BackendConfig;

/// A catalog model. Deployments name it by `id` without a version and always get `version`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogModel {
    pub id: String,
    pub version: String,
    /// When set, a project must subscribe to this offer before deploying the model.
    pub offer: Option<String>,
    /// The model's backends (one, or a pool); deployments of it through the admin API use them.
    pub backends: Vec<BackendConfig>,
    /// What its tokens cost, per 1,000,000.
    pub prices: Option<crate::core::billing::Prices>,
}

/// A backend CA file, read and checked when the configuration is loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendCa {
    pub path: std::path::PathBuf,
    pub pem: std::sync::Arc<[u8]>,
}

impl BackendCa {
    pub fn read(path: &str) -> Result<BackendCa, String> {
        let pem = std::fs::read(path).map_err(|e| format!("cannot read the CA file '{path}': {e}"))?;
        let roots = roots_of(&pem).map_err(|e| format!("the CA file '{path}' {e}"))?;
        if roots.is_empty() {
            return Err(format!("the CA file '{path}' holds no certificate"));
        }
        Ok(BackendCa { path: path.into(), pem: pem.into() })
    }

    pub fn roots(&self) -> rustls::RootCertStore {
        roots_of(&self.pem).unwrap_or_else(|_| rustls::RootCertStore::empty())
    }
}

fn roots_of(pem: &[u8]) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("is not valid PEM: {e}"))?;
        roots.add(cert).map_err(|e| format!("holds a certificate that cannot be a trust anchor: {e}"))?;
    }
    Ok(roots)
}

/// Why a model id cannot be used as written.
pub fn check_model_id(id: &str) -> Result<(), String> {
    if id.trim().is_empty() {
        return Err(
            "give a model id, e.g. \"azureml://registries/azureml-meta/models/Meta-Llama-3-8B-Instruct\"".into()
        );
    }
    if let Some((base, version)) = id.split_once("/versions/") {
        return Err(format!(
            "'{id}' names version {version}; deployments name a model without a version and always get the current one: use \"{base}\""
        ));
    }
    Ok(())
}
