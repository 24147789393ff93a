//! The request pipeline. Each stage lives in its own module; this one wires them in order:
//!
//! 1. **route** ([`route`]): method + path → API operation and addressing mode. Unknown path 404,
//!    wrong method 405.
//! 2. **find the deployment**: host label, `/openai/deployments/{name}`, `azureml-model-deployment`
//!    header, or the body's `model` (the body is read first only in that last case). Unknown 404.
//! 3. **authenticate** ([`auth`]): `api-key` or `Authorization: Bearer` against the deployment's two
//!    key digests, constant-time. Adds the key slot. 401.
//! 4. **read the body** ([`body`]): bounded by `server.max_body_bytes` (413), validated as a JSON
//!    object in one pass that also reads `model` and `stream` (400).
//! 5. **forward** ([`forward`]): pooled hyper client, client key and hop-by-hop headers removed,
//!    backend key set; waits for the response head up to the first-byte timeout (502/504).
//! 6. **stream back** ([`body::ProxyBody`]): the backend body passes through frame by frame; the
//!    response gets `x-request-id` / `apim-request-id`, and `x-ms-client-request-id` echoed.
//! 7. **record**: one access log line per request.

pub mod auth;
pub mod body;
pub mod forward;
pub mod request_id;
pub mod route;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, request};
use hyper::body::Incoming;

use crate::config::Config;
use crate::deployment::{Deployment, DeploymentTable};
use crate::error::ApiError;
use crate::keys::KeySlot;
use body::{BodyFields, ProxyBody};
use forward::BackendClient;
use request_id::RequestId;
use route::{Addressing, ApiRoute};

/// The data plane: everything a request needs, shared by all connections.
pub struct Gateway {
    deployments: DeploymentTable,
    backend: BackendClient,
    max_body_bytes: usize,
}

/// What the access log says about a request, filled in as it goes through the stages.
#[derive(Default)]
struct Trace {
    route: Option<ApiRoute>,
    deployment: Option<Arc<Deployment>>,
    key_slot: Option<KeySlot>,
}

impl Gateway {
    pub fn new(config: &Config) -> Gateway {
        Gateway {
            deployments: DeploymentTable::from_configs(&config.deployments),
            backend: BackendClient::new(&config.backend),
            max_body_bytes: config.server.max_body_bytes,
        }
    }

    pub fn deployments(&self) -> &DeploymentTable {
        &self.deployments
    }

    /// Serves one request. Never fails: every error becomes the API's error response.
    pub async fn handle(&self, request: Request<Incoming>) -> Response<ProxyBody> {
        let started = Instant::now();
        let request_id = RequestId::generate();
        let client_request_id = request.headers().get("x-ms-client-request-id").cloned();
        let mut trace = Trace::default();
        let (mut response, error_label) = match self.serve(request, &mut trace).await {
            Ok(response) => (response, None),
            Err(error) => {
                let label = error.metric_label();
                (error.into_response(), Some(label))
            }
        };
        let headers = response.headers_mut();
        headers.insert("x-request-id", request_id.header().clone());
        headers.insert("apim-request-id", request_id.header().clone());
        if let Some(id) = client_request_id {
            headers.entry("x-ms-client-request-id").or_insert(id);
        }
        tracing::info!(
            target: "tollgate::access",
            request_id = request_id.as_str(),
            deployment = trace.deployment.as_deref().map_or("-", |d| d.name.as_str()),
            route = trace.route.map_or("-", ApiRoute::label),
            key_slot = trace.key_slot.map_or("-", KeySlot::as_str),
            status = response.status().as_u16(),
            error = error_label.unwrap_or("-"),
            duration_us = started.elapsed().as_micros() as u64,
        );
        response
    }

    async fn serve(&self, request: Request<Incoming>, trace: &mut Trace) -> Result<Response<ProxyBody>, ApiError> {
        let (parts, incoming) = request.into_parts();
        let routed = route::route(&parts.method, parts.uri.path())?;
        trace.route = Some(routed.route);

        // Stage 2: the deployment, from the URL or headers when they name it, else from the body.
        let mut body: Option<Bytes> = None;
        let mut incoming = Some(incoming);
        let named = match routed.addressing {
            Addressing::Path(name) => Some(self.lookup(name)?),
            Addressing::Root => match host_of(&parts).and_then(route::host_label) {
                Some(label) => self.deployments.get(label).cloned(),
                None => None,
            },
            Addressing::Unified => None,
        };
        let deployment = match named {
            Some(d) => d,
            None => match parts.headers.get("azureml-model-deployment") {
                Some(value) => self.lookup(value.to_str().unwrap_or(""))?,
                None if routed.route.has_json_body() => {
                    let bytes = self.read_body(&parts, &mut incoming).await?;
                    let fields = BodyFields::parse(&bytes)?;
                    let found = match fields.model.as_deref() {
                        Some(model) => self.lookup(model)?,
                        None => return Err(self.missing_deployment(&parts)),
                    };
                    body = Some(bytes);
                    found
                }
                None => return Err(self.missing_deployment(&parts)),
            },
        };
        trace.deployment = Some(Arc::clone(&deployment));

        // Stage 3: authenticate before reading a body we have not read yet.
        trace.key_slot = Some(auth::authenticate(&deployment, &parts.headers)?);

        // Stage 4: the body, bounded and validated.
        let body = match body {
            Some(bytes) => bytes,
            None if routed.route.has_json_body() => {
                let bytes = self.read_body(&parts, &mut incoming).await?;
                BodyFields::parse(&bytes)?;
                bytes
            }
            None => Bytes::new(),
        };
        drop(incoming);

        // Stages 5 and 6: forward, and stream the answer back as it comes.
        let response = self.backend.forward(&deployment, routed.route, parts, body).await?;
        Ok(response.map(ProxyBody::Backend))
    }

    fn lookup(&self, name: &str) -> Result<Arc<Deployment>, ApiError> {
        self.deployments
            .get(name)
            .cloned()
            .ok_or_else(|| ApiError::DeploymentNotFound { name: route::truncate(name, 100).to_owned() })
    }

    /// No deployment was named: a host label that matched nothing is the likeliest typo to report.
    fn missing_deployment(&self, parts: &request::Parts) -> ApiError {
        match host_of(parts).and_then(route::host_label) {
            Some(label) => ApiError::DeploymentNotFound { name: route::truncate(label, 100).to_owned() },
            None => ApiError::DeploymentMissing,
        }
    }

    async fn read_body(&self, parts: &request::Parts, incoming: &mut Option<Incoming>) -> Result<Bytes, ApiError> {
        match incoming.take() {
            Some(body) => body::read_limited(&parts.headers, body, self.max_body_bytes).await,
            None => Ok(Bytes::new()),
        }
    }
}

/// The host the client addressed: the URI's authority (HTTP/2, absolute-form) or the `Host` header.
fn host_of(parts: &request::Parts) -> Option<&str> {
    parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| parts.headers.get(http::header::HOST).and_then(|h: &HeaderValue| h.to_str().ok()))
}
