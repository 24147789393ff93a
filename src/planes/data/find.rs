//! Stage 2, find the deployment: from the URL (`/openai/deployments/{name}`), the host label or
//! the `azureml-model-deployment` header when they name it; else from the presented key's digest
//! (`DeploymentTable::for_key`): a key that is nobody's is refused before a byte of the body is
//! read, and only then the body's `model` (or, without one, the key's only deployment) decides.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, request};

use super::body::BodyFields;
use super::route::{self, Addressing};
use super::{Gateway, Trace, auth};
use crate::core::api::ApiRoute;
use crate::core::keys::KeyDigest;
use crate::planes::data::error::ApiError;
use crate::state::deployment::{Deployment, DeploymentTable};

/// What stage 2 found: the deployment, the presented key's digest when it was computed (stage 3
/// does not compute it again), and the body when it was read for its `model`.
pub struct Found {
    pub deployment: Arc<Deployment>,
    pub digest: Option<KeyDigest>,
    pub body: Option<Bytes>,
}

/// How the deployment was found before any body is read.
enum Lookup {
    /// Named by the URL, the host or the header.
    Named(Arc<Deployment>),
    /// Named by nothing; the key is some deployment's: this one when it is exactly one's.
    ByKey(Option<Arc<Deployment>>),
}

impl Gateway {
    /// Stage 2. The table guard is dropped before any await.
    pub(super) async fn find_deployment(
        &self,
        parts: &request::Parts,
        addressing: Addressing<'_>,
        route: ApiRoute,
        trace: &mut Trace,
    ) -> Result<Found, ApiError> {
        let mut body: Option<Bytes> = None;
        let mut digest = None;
        let found = {
            let table = self.deployments.load();
            let named = match addressing {
                Addressing::Path(name) => Some(lookup(&table, name)?),
                Addressing::Root => match host_of(parts).and_then(route::host_label) {
                    Some(label) => table.get(label).cloned(),
                    None => None,
                },
                Addressing::Unified => None,
            };
            match named {
                Some(d) => Lookup::Named(d),
                None => match parts.headers.get(super::names::AZUREML_MODEL_DEPLOYMENT) {
                    Some(value) => Lookup::Named(lookup(&table, value.to_str().unwrap_or(""))?),
                    None => {
                        digest = auth::presented_digest(&parts.headers);
                        match digest.as_ref().map_or(&[][..], |d| table.for_key(d)) {
                            // Nothing names a deployment and the key is nobody's: refused before
                            // a byte of the body is read (no unauthenticated buffering).
                            [] => return Err(self.unnamed_refusal(parts)),
                            [only] => Lookup::ByKey(Some(Arc::clone(only))),
                            _ => Lookup::ByKey(None),
                        }
                    }
                },
            }
        };
        let deployment = match found {
            Lookup::Named(deployment) => deployment,
            // Found by the key: the body's `model` decides when given, else the key's only one.
            Lookup::ByKey(only) => {
                let model = if route.has_json_body() {
                    let bytes = self.read_body(parts, &mut trace.unread).await?;
                    let model =
                        BodyFields::parse(&bytes)?.model.map(|m| lookup(&self.deployments.load(), &m)).transpose()?;
                    body = Some(bytes);
                    model
                } else {
                    None
                };
                match (model, only) {
                    (Some(found), _) => found,
                    (None, Some(only)) => only,
                    (None, None) => return Err(ApiError::DeploymentMissing),
                }
            }
        };
        Ok(Found { deployment, digest, body })
    }

    /// Nothing named a deployment and the key identified none: a host label that matched nothing
    /// is the likeliest typo to report; otherwise the key is what is wrong (or missing).
    fn unnamed_refusal(&self, parts: &request::Parts) -> ApiError {
        match host_of(parts).and_then(route::host_label) {
            Some(label) => ApiError::DeploymentNotFound { name: route::truncate(label, 100).to_owned() },
            None => ApiError::KeyNotRecognized,
        }
    }
}

fn lookup(table: &DeploymentTable, name: &str) -> Result<Arc<Deployment>, ApiError> {
    table.get(name).cloned().ok_or_else(|| ApiError::DeploymentNotFound { name: route::truncate(name, 100).to_owned() })
}

/// The host the client addressed: the URI's authority (HTTP/2, absolute-form) or the `Host` header.
fn host_of(parts: &request::Parts) -> Option<&str> {
    parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| parts.headers.get(http::header::HOST).and_then(|h: &HeaderValue| h.to_str().ok()))
}
