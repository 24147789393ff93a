//! `GET /v1/models`, `/openai/models` and one model under either: answered by the gateway from
//! the presented key's deployments.

use bytes::Bytes;
use http::{HeaderValue, Response};

use super::body::ProxyBody;
use super::{Gateway, auth, route};
use crate::planes::data::error::ApiError;
use crate::state::deployment::Deployment;

impl Gateway {
    /// `GET /v1/models` and `/openai/models`: the deployments the presented key may call, in the
    /// OpenAI list shape (the name is the `model` to send). Answered here, never forwarded or
    /// charged to a quota.
    pub(super) fn models(
        &self,
        headers: &http::HeaderMap,
        query: route::ModelsQuery<'_>,
    ) -> Result<Response<ProxyBody>, ApiError> {
        let table = self.deployments.load();
        let owners = auth::presented_digest(headers).map_or(&[][..], |d| table.for_key(&d));
        if owners.is_empty() {
            return Err(ApiError::KeyNotRecognized);
        }
        let model = |d: &Deployment| serde_json::json!({"id": d.name, "object": "model", "created": d.created_unix, "owned_by": d.project});
        let body = match query {
            route::ModelsQuery::List => {
                serde_json::json!({"object": "list", "data": owners.iter().map(|d| model(d)).collect::<Vec<_>>()})
            }
            route::ModelsQuery::One(id) => match owners.iter().find(|d| d.name == id) {
                Some(d) => model(d),
                None => return Err(ApiError::DeploymentNotFound { name: route::truncate(id, 100).to_owned() }),
            },
        };
        let mut response = Response::new(ProxyBody::full(Bytes::from(body.to_string())));
        response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        Ok(response)
    }
}
