//! The admin listener: liveness, readiness, Prometheus metrics, usage totals and quota levels
//! (the control plane API hangs here later).

use super::paging::Page;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde_json::json;

use crate::core::quota::QuotaState;
use crate::core::roles::Action;
use crate::planes::control::AdminBody;
use crate::planes::control::{AdminError, ControlPlane, api};
use crate::planes::respond::error_response;
use crate::state::deployment::Deployment;
use crate::state::ledger::Ledger;
use crate::state::metrics::{Metrics, QuotaReading};
use crate::state::quota_store::QuotaStore;

/// What the admin routes read.
pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub quota: QuotaStore,
    pub control: Arc<ControlPlane>,
    pub ledger: Option<Arc<Ledger>>,
    /// False once shutdown has started.
    pub ready: Arc<std::sync::atomic::AtomicBool>,
}

const ROUTES: &str = "admin routes: GET /healthz, /readyz (no token), /metrics (no token unless [admin] metrics_token is set), /usage, /quotas, /budgets (any admin token, e.g. a reader's); the admin API (Authorization: Bearer <admin token>): /models, /projects/{project}/subscriptions[/{name}], /projects/{project}/deployments[/{name}[/listKeys|/regenerateKeys|/usage|/grants[/{consumerProject}/{consumer}]]], /projects/{project}/consumers[/{name}[/listKeys|/regenerateKeys|/usage]], /tokens[/{name}], /reload";

impl Admin {
    /// Answers one admin request.
    pub async fn handle(&self, request: Request<Incoming>) -> Response<AdminBody> {
        if let Some(reason) = crate::planes::respond::host_problem(request.version(), request.headers()) {
            return error_response(StatusCode::BAD_REQUEST, "InvalidHost", reason);
        }
        let path = request.uri().path();
        let known = matches!(path, "/healthz" | "/readyz" | "/metrics" | "/usage" | "/quotas" | "/budgets");
        if !known {
            if api::is_api_path(path) {
                return api::handle(&self.control, &self.quota, self.ledger.as_ref(), request).await;
            }
            return error_response(StatusCode::NOT_FOUND, "NotFound", ROUTES);
        }
        if request.method() != Method::GET {
            return error_response(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "admin routes take GET");
        }
        // Totals and quota levels say how each customer uses the gateway: an admin token is
        // needed (any role; a token confined to projects sees those). Metrics stay open for
        // scrapers unless a metrics token is configured.
        let token = match path {
            "/usage" | "/quotas" | "/budgets" => match api::authorize(&self.control, &request, Action::ReadUsage, None)
            {
                Ok(token) => Some(token),
                Err(error) => return api::error_reply(&error),
            },
            "/metrics" => {
                let presented = bearer(&request);
                let metrics_token = self.control.metrics_token_matches(presented);
                let admin_token = || presented.and_then(|p| self.control.authenticate(p)).is_some();
                if metrics_token == Some(false) && !admin_token() {
                    let error = AdminError::new(
                        StatusCode::UNAUTHORIZED,
                        "Unauthorized",
                        "/metrics needs 'Authorization: Bearer <token>' with the [admin] metrics_token (or an admin token)",
                    );
                    return api::error_reply(&error);
                }
                None
            }
            _ => None,
        };
        let visible = |d: &Deployment| token.as_ref().is_none_or(|t| t.may_use_project(&d.project));
        // `/usage` and `/quotas` come in pages of deployments by name, of one project if asked.
        let page = match path {
            "/usage" | "/quotas" => match Page::parse(request.uri().query().unwrap_or(""), true) {
                Ok(page) => page,
                Err(error) => return api::error_reply(&error),
            },
            _ => Page::default(),
        };
        let table = self.control.live().load_full();
        let (listed, next) = match path {
            "/usage" | "/quotas" => {
                let mut all: Vec<&Arc<Deployment>> = table
                    .iter()
                    .filter(|d| visible(d) && page.project.as_deref().is_none_or(|p| d.project == p))
                    .collect();
                all.sort_unstable_by(|a, b| a.name.cmp(&b.name));
                page.cut(all, |d| &d.name)
            }
            _ => (Vec::new(), None),
        };
        let paged = |mut response: Response<AdminBody>| {
            if let Some(link) = next
                .as_ref()
                .and_then(|t| HeaderValue::from_str(&format!("<{}>; rel=\"next\"", page.next_link(path, t))).ok())
            {
                response.headers_mut().insert(header::LINK, link);
            }
            response
        };
        match path {
            "/healthz" => json(r#"{"status":"ok"}"#.into()),
            "/readyz" if self.ready.load(std::sync::atomic::Ordering::SeqCst) => json(r#"{"status":"ready"}"#.into()),
            "/readyz" => error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "ShuttingDown",
                "this gateway is shutting down: route new traffic elsewhere",
            ),
            "/usage" => match self.usage(&listed) {
                Ok(body) => paged(json(body)),
                Err(error) => error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    &format!("the usage totals could not be written as JSON: {error}"),
                ),
            },
            "/metrics" => {
                let all: Vec<&Arc<Deployment>> = table.iter().collect();
                let states = self.quota_states(&all, true).await;
                let mut periods = Vec::with_capacity(table.consumers().len());
                if self.control.consumer_metrics() {
                    for consumer in table.consumers() {
                        periods.push(self.quota.consumer_periods(consumer).await);
                    }
                }
                let text = self.metrics.render(&table, &states, &periods);
                let mut response = Response::new(AdminBody::from(Bytes::from(text)));
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
                response
            }
            "/budgets" => json(self.budgets(token.as_ref())),
            _ => paged(json(self.quotas(&listed).await)),
        }
    }

    /// Every budget the token may see (a token confined to projects sees theirs): its scope, and
    /// per period its amount, what is spent and when it resets (micro-units of the currency).
    fn budgets(&self, token: Option<&crate::core::roles::AdminToken>) -> String {
        use crate::config::billing::BudgetScope;
        let table = self.control.live().load_full();
        let mut out = serde_json::Map::new();
        for budget in table.budgets() {
            let project = match &budget.scope {
                BudgetScope::Project(p) => p.as_str(),
                BudgetScope::Subscription { project, .. } => project.as_str(),
                BudgetScope::Consumer(label) => label.split_once('/').map_or(label.as_str(), |(p, _)| p),
            };
            if token.is_some_and(|t| !t.may_use_project(project)) {
                continue;
            }
            let periods: Vec<serde_json::Value> = budget
                .state(budget.clock.unix_seconds())
                .into_iter()
                .map(|(period, amount, spent, ends)| {
                    json!({"period": period.as_str(), "amountMicros": amount.0, "spentMicros": spent.0,
                           "remainingMicros": amount.0.saturating_sub(spent.0),
                           "resetsAt": crate::state::ledger::report::format_unix(ends)})
                })
                .collect();
            out.insert(
                budget.name.to_string(),
                json!({"scope": budget.scope.label(), "hard": budget.hard, "thresholds": budget.thresholds, "periods": periods}),
            );
        }
        serde_json::Value::Object(out).to_string()
    }

    /// The usage totals since start of `deployments` (a page, by name).
    fn usage(&self, deployments: &[&Arc<Deployment>]) -> Result<String, serde_json::Error> {
        let totals: std::collections::BTreeMap<&str, _> =
            deployments.iter().map(|d| (d.name.as_str(), d.usage.read())).collect();
        serde_json::to_string(&totals)
    }

    /// Each deployment's buckets now (from the shared store with `store = "redis"`; `None` for a
    /// deployment whose buckets cannot be read while the store is down). `for_metrics`: only
    /// what `/metrics` exports (a deployment's levels with full detail, its backends' when
    /// backends are kept), so a scrape of 10,000 deployments in Redis is not 10,000 round trips.
    async fn quota_states(&self, deployments: &[&Arc<Deployment>], for_metrics: bool) -> Vec<QuotaReading> {
        use crate::config::metrics::DeploymentDetail;
        let mut states = Vec::with_capacity(deployments.len());
        for deployment in deployments {
            let detail = deployment.metric_detail;
            let mut backends = Vec::with_capacity(deployment.pool.len());
            if !for_metrics || (detail.backends && detail.deployment != DeploymentDetail::Off) {
                for backend in &deployment.pool.backends {
                    backends.push(self.quota.backend_state(backend).await);
                }
            }
            let own = if !for_metrics || detail.deployment == DeploymentDetail::Full {
                self.quota.state(deployment).await
            } else {
                None
            };
            states.push(QuotaReading { deployment: own, backends });
        }
        states
    }

    /// The buckets of `deployments` (a page, by name) now: limits and what remains (null while
    /// they cannot be read).
    async fn quotas(&self, deployments: &[&Arc<Deployment>]) -> String {
        let states = self.quota_states(deployments, false).await;
        let mut out = serde_json::Map::new();
        let now = |d: &Deployment| d.pool.now_ns();
        for (deployment, reading) in deployments.iter().zip(states) {
            let value = match reading.deployment {
                Some(s) => {
                    let at = now(deployment);
                    // The only backend of a pool is not counted apart: its requests are the deployment's.
                    let solo = deployment.pool.len() == 1;
                    let inflight = |b: &crate::state::pool::PoolBackend| {
                        if solo {
                            deployment.usage.inflight.load(std::sync::atomic::Ordering::Relaxed)
                        } else {
                            b.inflight()
                        }
                    };
                    let backends: Vec<serde_json::Value> = deployment
                        .pool
                        .backends
                        .iter()
                        .zip(&reading.backends)
                        .map(|(b, state)| {
                            let mut entry = json!({
                                "name": &*b.name, "url": b.url.to_string(), "state": b.status(at).as_str(),
                                "inflight": inflight(b), "weight": b.weight, "priority": b.priority,
                            });
                            if let (Some(limits), Some(entry)) = (b.limits(), entry.as_object_mut()) {
                                entry.insert("requestsPerMinute".into(), limits.requests_per_minute.into());
                                entry.insert("tokensPerMinute".into(), limits.tokens_per_minute.into());
                                let remaining = |pick: fn(&QuotaState) -> u64| state.as_ref().map(pick);
                                entry.insert("remainingRequests".into(), remaining(|s| s.remaining_requests).into());
                                entry.insert("remainingTokens".into(), remaining(|s| s.remaining_tokens).into());
                            }
                            entry
                        })
                        .collect();
                    json!({
                        "requestsPerMinute": s.limit_requests, "remainingRequests": s.remaining_requests,
                        "tokensPerMinute": s.limit_tokens, "remainingTokens": s.remaining_tokens,
                        "backends": backends,
                    })
                }
                None => serde_json::Value::Null,
            };
            out.insert(deployment.name.clone(), value);
        }
        serde_json::Value::Object(out).to_string()
    }
}

/// The bearer token of a request, if any.
fn bearer(request: &Request<Incoming>) -> Option<&[u8]> {
    let value = request.headers().get(header::AUTHORIZATION)?.as_bytes();
    let token = value.strip_prefix(b"Bearer ").or_else(|| value.strip_prefix(b"bearer "))?.trim_ascii();
    (!token.is_empty()).then_some(token)
}

fn json(body: String) -> Response<AdminBody> {
    let mut response = Response::new(AdminBody::from(Bytes::from(body)));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
