//! The admin listener: liveness, readiness, Prometheus metrics, usage totals and quota levels
//! (the control plane API hangs here later).

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde_json::json;

use crate::control::{ControlPlane, api};
use crate::deployment::DeploymentTable;
use crate::error::error_response;
use crate::gateway::Gateway;
use crate::gateway::body::ProxyBody;
use crate::ledger::Ledger;
use crate::quota::QuotaState;

/// What the admin routes read.
pub struct Admin {
    pub gateway: Arc<Gateway>,
    pub control: Arc<ControlPlane>,
    pub ledger: Option<Arc<Ledger>>,
    /// False once shutdown has started.
    pub ready: Arc<std::sync::atomic::AtomicBool>,
}

const ROUTES: &str = "admin routes: GET /healthz, /readyz, /metrics, /usage, /quotas (no token); the admin API (Authorization: Bearer <admin token>): /models, /projects/{project}/subscriptions[/{name}], /projects/{project}/deployments[/{name}[/listKeys|/regenerateKeys|/usage]], /tokens[/{name}], /reload";

impl Admin {
    /// Answers one admin request.
    pub async fn handle(&self, request: Request<Incoming>) -> Response<ProxyBody> {
        let path = request.uri().path();
        let known = matches!(path, "/healthz" | "/readyz" | "/metrics" | "/usage" | "/quotas");
        if !known {
            if api::is_api_path(path) {
                return api::handle(&self.control, self.ledger.as_ref(), request).await;
            }
            return error_response(StatusCode::NOT_FOUND, "NotFound", ROUTES);
        }
        if request.method() != Method::GET {
            return error_response(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "admin routes take GET");
        }
        match path {
            "/healthz" => json(r#"{"status":"ok"}"#.into()),
            "/readyz" if self.ready.load(std::sync::atomic::Ordering::SeqCst) => json(r#"{"status":"ready"}"#.into()),
            "/readyz" => error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "ShuttingDown",
                "this gateway is shutting down: route new traffic elsewhere",
            ),
            "/usage" => json(self.usage()),
            "/metrics" => {
                let table = self.gateway.deployments();
                let states = self.quota_states(&table).await;
                let text = self.gateway.metrics().render(&table, &states);
                let mut response = Response::new(ProxyBody::full(Bytes::from(text)));
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
                response
            }
            _ => json(self.quotas().await),
        }
    }

    /// Each deployment's usage totals since start.
    fn usage(&self) -> String {
        let table = self.gateway.deployments();
        let totals: std::collections::BTreeMap<&str, _> =
            table.iter().map(|d| (d.name.as_str(), d.usage.read())).collect();
        serde_json::to_string(&totals).unwrap_or_default()
    }

    /// Each deployment's buckets now (from the shared store with `store = "redis"`; `None` for a
    /// deployment whose buckets cannot be read while the store is down).
    async fn quota_states(&self, table: &DeploymentTable) -> Vec<Option<QuotaState>> {
        let mut states = Vec::with_capacity(table.len());
        for deployment in table.iter() {
            states.push(self.gateway.quota_store().state(deployment).await);
        }
        states
    }

    /// Each deployment's buckets now: limits and what remains (null while they cannot be read).
    async fn quotas(&self) -> String {
        let table = self.gateway.deployments();
        let states = self.quota_states(&table).await;
        let mut out = serde_json::Map::new();
        for (deployment, state) in table.iter().zip(states) {
            let value = match state {
                Some(s) => json!({
                    "requestsPerMinute": s.limit_requests, "remainingRequests": s.remaining_requests,
                    "tokensPerMinute": s.limit_tokens, "remainingTokens": s.remaining_tokens,
                }),
                None => serde_json::Value::Null,
            };
            out.insert(deployment.name.clone(), value);
        }
        serde_json::Value::Object(out).to_string()
    }
}

fn json(body: String) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(Bytes::from(body)));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
