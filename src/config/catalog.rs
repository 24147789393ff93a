//! The model catalog as configured: `[[models]]`.

use super::BackendUrl;

/// A catalog model. Deployments name it by `id` without a version and always get `version`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogModel {
    pub id: String,
    pub version: String,
    /// When set, a project must subscribe to this offer before deploying the model.
    pub offer: Option<String>,
    pub backend: BackendUrl,
    pub backend_key: Option<String>,
    pub backend_http2: bool,
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
