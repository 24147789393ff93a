//! The admin API over HTTP: routes, bearer-token authentication, the role check, bounded JSON
//! bodies. Every route states its [`Action`]; `Role::allows` decides.
//!
//! | method | path | action |
//! |---|---|---|
//! | GET | `/models` | ReadCatalog |
//! | GET | `/projects/{p}/subscriptions` (and `/{name}`) | ReadSubscriptions |
//! | PUT | `/projects/{p}/subscriptions/{name}` | Subscribe |
//! | DELETE | `/projects/{p}/subscriptions/{name}` | Unsubscribe |
//! | GET | `/projects/{p}/subscriptions/{name}/costs?since=&until=&by=` | ReadUsage |
//! | GET | `/projects/{p}/deployments` (and `/{name}`) | ReadDeployments |
//! | PUT | `/projects/{p}/deployments/{name}` | Deploy |
//! | PATCH | `/projects/{p}/deployments/{name}` | UpdateDeployment |
//! | DELETE | `/projects/{p}/deployments/{name}` | DeleteDeployment |
//! | POST | `/projects/{p}/deployments/{name}/listKeys` | ListKeys |
//! | POST | `/projects/{p}/deployments/{name}/regenerateKeys` | RegenerateKeys |
//! | GET | `/projects/{p}/deployments/{name}/usage?since=&until=` | ReadUsage |
//! | GET | `/projects/{p}/deployments/{name}/grants` | ReadDeployments |
//! | PUT, DELETE | `/projects/{p}/deployments/{name}/grants/{consumerProject}/{consumer}` | Connect |
//! | GET | `/projects/{p}/consumers` (and `/{name}`) | ReadConsumers |
//! | PUT | `/projects/{p}/consumers/{name}` | PutConsumer (+ Connect in each other project granted) |
//! | DELETE | `/projects/{p}/consumers/{name}` | DeleteConsumer |
//! | POST | `/projects/{p}/consumers/{name}/listKeys` | ListKeys |
//! | POST | `/projects/{p}/consumers/{name}/regenerateKeys` | RegenerateKeys |
//! | GET | `/projects/{p}/consumers/{name}/usage?since=&until=` | ReadUsage |
//! | GET | `/tokens` | ReadTokens |
//! | PUT, DELETE | `/tokens/{name}` | ManageTokens |
//! | POST | `/reload[?force=true]` | Reload |

use super::paging::Page;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::AdminBody;
use super::ledger_reports;
use super::reload::ReloadError;
use super::{AdminError, ControlPlane};
use crate::core::roles::{Action, AdminToken};
use crate::planes::respond::error_response;
use crate::state::consumer::Consumer;
use crate::state::ledger::Ledger;
use crate::state::ledger::report::GroupBy;
use crate::state::quota_store::QuotaStore;

/// Admin request bodies are small.
const MAX_ADMIN_BODY: usize = 1 << 20;

/// A matched admin route.
enum Route {
    Models,
    Subscriptions { project: String },
    Subscription { project: String, name: String },
    SubscriptionCosts { project: String, name: String },
    Deployments { project: String },
    Deployment { project: String, name: String },
    DeploymentOp { project: String, name: String, op: String },
    Grants { project: String, name: String },
    Grant { project: String, name: String, consumer_project: String, consumer: String },
    Consumers { project: String },
    Consumer { project: String, name: String },
    ConsumerOp { project: String, name: String, op: String },
    Tokens,
    Token { name: String },
    Reload,
}

fn route(path: &str) -> Option<Route> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let owned = |s: &str| s.to_owned();
    Some(match parts.as_slice() {
        ["models"] => Route::Models,
        ["tokens"] => Route::Tokens,
        ["tokens", name] => Route::Token { name: owned(name) },
        ["reload"] => Route::Reload,
        ["projects", p, "subscriptions"] => Route::Subscriptions { project: owned(p) },
        ["projects", p, "subscriptions", n] => Route::Subscription { project: owned(p), name: owned(n) },
        ["projects", p, "subscriptions", n, "costs"] => Route::SubscriptionCosts { project: owned(p), name: owned(n) },
        ["projects", p, "deployments"] => Route::Deployments { project: owned(p) },
        ["projects", p, "deployments", n] => Route::Deployment { project: owned(p), name: owned(n) },
        ["projects", p, "deployments", n, op @ ("listKeys" | "regenerateKeys" | "usage")] => {
            Route::DeploymentOp { project: owned(p), name: owned(n), op: owned(op) }
        }
        ["projects", p, "deployments", n, "grants"] => Route::Grants { project: owned(p), name: owned(n) },
        ["projects", p, "deployments", n, "grants", cp, c] => {
            Route::Grant { project: owned(p), name: owned(n), consumer_project: owned(cp), consumer: owned(c) }
        }
        ["projects", p, "consumers"] => Route::Consumers { project: owned(p) },
        ["projects", p, "consumers", n] => Route::Consumer { project: owned(p), name: owned(n) },
        ["projects", p, "consumers", n, op @ ("listKeys" | "regenerateKeys" | "usage")] => {
            Route::ConsumerOp { project: owned(p), name: owned(n), op: owned(op) }
        }
        _ => return None,
    })
}

/// The action a method on a route performs, or the methods the route allows.
fn action(route: &Route, method: &Method) -> Result<Action, &'static str> {
    use Action::*;
    match (route, method.as_str()) {
        (Route::Models, "GET") => Ok(ReadCatalog),
        (Route::Models, _) => Err("GET"),
        (Route::Subscriptions { .. }, "GET") => Ok(ReadSubscriptions),
        (Route::Subscriptions { .. }, _) => Err("GET"),
        (Route::Subscription { .. }, "GET") => Ok(ReadSubscriptions),
        (Route::Subscription { .. }, "PUT") => Ok(Subscribe),
        (Route::Subscription { .. }, "DELETE") => Ok(Unsubscribe),
        (Route::Subscription { .. }, _) => Err("GET, PUT, DELETE"),
        (Route::SubscriptionCosts { .. }, "GET") => Ok(ReadUsage),
        (Route::SubscriptionCosts { .. }, _) => Err("GET"),
        (Route::Deployments { .. }, "GET") => Ok(ReadDeployments),
        (Route::Deployments { .. }, _) => Err("GET"),
        (Route::Deployment { .. }, "GET") => Ok(ReadDeployments),
        (Route::Deployment { .. }, "PUT") => Ok(Deploy),
        (Route::Deployment { .. }, "PATCH") => Ok(UpdateDeployment),
        (Route::Deployment { .. }, "DELETE") => Ok(DeleteDeployment),
        (Route::Deployment { .. }, _) => Err("GET, PUT, PATCH, DELETE"),
        (Route::DeploymentOp { op, .. }, "POST") if op == "listKeys" => Ok(ListKeys),
        (Route::DeploymentOp { op, .. }, "POST") if op == "regenerateKeys" => Ok(RegenerateKeys),
        (Route::DeploymentOp { op, .. }, "GET") if op == "usage" => Ok(ReadUsage),
        (Route::DeploymentOp { op, .. }, _) if op == "usage" => Err("GET"),
        (Route::DeploymentOp { .. }, _) => Err("POST"),
        (Route::Grants { .. }, "GET") => Ok(ReadDeployments),
        (Route::Grants { .. }, _) => Err("GET"),
        (Route::Grant { .. }, "PUT" | "DELETE") => Ok(Connect),
        (Route::Grant { .. }, _) => Err("PUT, DELETE"),
        (Route::Consumers { .. }, "GET") => Ok(ReadConsumers),
        (Route::Consumers { .. }, _) => Err("GET"),
        (Route::Consumer { .. }, "GET") => Ok(ReadConsumers),
        (Route::Consumer { .. }, "PUT") => Ok(PutConsumer),
        (Route::Consumer { .. }, "DELETE") => Ok(DeleteConsumer),
        (Route::Consumer { .. }, _) => Err("GET, PUT, DELETE"),
        (Route::ConsumerOp { op, .. }, "POST") if op == "listKeys" => Ok(ListKeys),
        (Route::ConsumerOp { op, .. }, "POST") if op == "regenerateKeys" => Ok(RegenerateKeys),
        (Route::ConsumerOp { op, .. }, "GET") if op == "usage" => Ok(ReadUsage),
        (Route::ConsumerOp { op, .. }, _) if op == "usage" => Err("GET"),
        (Route::ConsumerOp { .. }, _) => Err("POST"),
        (Route::Tokens, "GET") => Ok(ReadTokens),
        (Route::Tokens, _) => Err("GET"),
        (Route::Token { .. }, "PUT" | "DELETE") => Ok(ManageTokens),
        (Route::Token { .. }, _) => Err("PUT, DELETE"),
        (Route::Reload, "POST") => Ok(Reload),
        (Route::Reload, _) => Err("POST"),
    }
}

fn project_of(route: &Route) -> Option<&str> {
    match route {
        Route::Subscriptions { project }
        | Route::Subscription { project, .. }
        | Route::SubscriptionCosts { project, .. }
        | Route::Deployments { project }
        | Route::Deployment { project, .. }
        | Route::DeploymentOp { project, .. }
        | Route::Grants { project, .. }
        | Route::Grant { project, .. }
        | Route::Consumers { project }
        | Route::Consumer { project, .. }
        | Route::ConsumerOp { project, .. } => Some(project),
        _ => None,
    }
}

/// Whether a path belongs to the admin API.
pub fn is_api_path(path: &str) -> bool {
    route(path).is_some()
}

/// An admin error as the API's error JSON (with `WWW-Authenticate: Bearer` on a 401).
pub(crate) fn error_reply(error: &AdminError) -> Response<AdminBody> {
    let mut response = error_response(error.status, error.code, &error.message);
    if error.status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

/// Serves one admin API request.
pub async fn handle(
    control: &Arc<ControlPlane>,
    quota: &QuotaStore,
    ledger: Option<&Arc<Ledger>>,
    request: Request<Incoming>,
) -> Response<AdminBody> {
    match serve(control, quota, ledger, request).await {
        Ok((status, body)) => json_response(status, &body),
        Err(error) => error_reply(&error),
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<AdminBody> {
    let mut response = Response::new(AdminBody::from(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

pub(crate) fn authorize(
    control: &ControlPlane,
    request: &Request<Incoming>,
    action: Action,
    project: Option<&str>,
) -> Result<AdminToken, AdminError> {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes)
        .and_then(|v| v.strip_prefix(b"Bearer ").or_else(|| v.strip_prefix(b"bearer ")))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            AdminError::new(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "the admin API needs 'Authorization: Bearer <admin token>'",
            )
        })?;
    let token = control
        .authenticate(presented)
        .ok_or_else(|| AdminError::new(StatusCode::UNAUTHORIZED, "Unauthorized", "the admin token is not valid"))?;
    permit(&token, action)?;
    if let Some(project) = project.filter(|_| action.is_project_scoped()) {
        if !token.may_use_project(project) {
            return Err(AdminError::new(
                StatusCode::FORBIDDEN,
                "Forbidden",
                format!("admin token '{}' may not act in project '{project}'", token.name),
            ));
        }
    }
    Ok(token)
}

/// Runs a change of the control plane (building the table, fsyncing the state file) on the
/// blocking pool, so that a slow disk stalls no runtime worker.
async fn blocking<T: Send + 'static>(
    control: &Arc<ControlPlane>,
    change: impl FnOnce(&ControlPlane) -> Result<T, AdminError> + Send + 'static,
) -> Result<T, AdminError> {
    let control = Arc::clone(control);
    tokio::task::spawn_blocking(move || change(&control))
        .await
        .map_err(|e| AdminError::internal(format!("the change was not made: {e}")))?
}

/// Whether the token's role may do `action`: 403 naming the role and the action when not.
fn permit(token: &AdminToken, action: Action) -> Result<(), AdminError> {
    if token.role.allows(action) {
        return Ok(());
    }
    Err(AdminError::new(
        StatusCode::FORBIDDEN,
        "Forbidden",
        format!("admin token '{}' has role '{}', which may not do this ({action:?})", token.name, token.role.as_str()),
    ))
}

async fn json_body<T: DeserializeOwned>(body: Incoming) -> Result<T, AdminError> {
    let bytes = match Limited::new(body, MAX_ADMIN_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(AdminError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                format!("admin request bodies are limited to {MAX_ADMIN_BODY} bytes"),
            ));
        }
        Err(e) => return Err(AdminError::bad_request(format!("the body could not be read: {e}"))),
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| AdminError::bad_request(format!("the body is not what this endpoint takes: {e}")))
}

async fn serve(
    control: &Arc<ControlPlane>,
    quota: &QuotaStore,
    ledger: Option<&Arc<Ledger>>,
    request: Request<Incoming>,
) -> Result<(StatusCode, Value), AdminError> {
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or("").to_owned();
    let route = route(&path).ok_or_else(|| AdminError::not_found(format!("no admin route {path}")))?;
    let action = action(&route, request.method()).map_err(|allowed| {
        AdminError::new(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", format!("{path} takes {allowed}"))
    })?;
    let token = authorize(control, &request, action, project_of(&route))?;
    let method = request.method().clone();
    let body = request.into_body();
    let ok = |v: Value| Ok((StatusCode::OK, v));
    match (route, action) {
        (Route::Models, _) => ok(control.catalog_json(&Page::parse(&query, false)?)),
        (Route::Subscriptions { project }, _) => ok(control.subscriptions_json(&project, &Page::parse(&query, false)?)),
        (Route::SubscriptionCosts { project, name }, _) => {
            control.subscription_json(&project, &name)?;
            ok(ledger_reports::subscription_costs(ledger, &project, &name, &query).await?)
        }
        (Route::Subscription { project, name }, Action::ReadSubscriptions) => {
            ok(control.subscription_json(&project, &name)?)
        }
        (Route::Subscription { project, name }, Action::Subscribe) => {
            let body = json_body(body).await?;
            let (created, value) = blocking(control, move |c| c.subscribe(&project, &name, body)).await?;
            Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, value))
        }
        (Route::Subscription { project, name }, _) => {
            let (p, n) = (project.clone(), name.clone());
            blocking(control, move |c| c.unsubscribe(&p, &n)).await?;
            ok(json!({"deleted": format!("/projects/{project}/subscriptions/{name}")}))
        }
        (Route::Deployments { project }, _) => ok(control.deployments_json(&project, &Page::parse(&query, false)?)),
        (Route::Deployment { project, name }, Action::ReadDeployments) => {
            ok(control.deployment_json(&*control.deployment_in(&project, &name)?))
        }
        (Route::Deployment { project, name }, Action::Deploy) => {
            // PUT with limits that change them is a PATCH in effect: the same permission applies.
            let may_change_limits = permit(&token, Action::UpdateDeployment).map_err(|_| {
                AdminError::new(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    format!(
                        "admin token '{}' has role '{}', which may not set a deployment's limits (UpdateDeployment); PUT without 'limits', or ask an owner or contributor",
                        token.name,
                        token.role.as_str()
                    ),
                )
            });
            let body = json_body(body).await?;
            let (created, value) =
                blocking(control, move |c| c.deploy(&project, &name, body, may_change_limits)).await?;
            Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, value))
        }
        (Route::Deployment { project, name }, Action::UpdateDeployment) => {
            let body = json_body(body).await?;
            ok(blocking(control, move |c| c.patch_limits(&project, &name, body)).await?)
        }
        (Route::Deployment { project, name }, _) => {
            let (p, n) = (project.clone(), name.clone());
            blocking(control, move |c| c.delete_deployment(&p, &n)).await?;
            ok(json!({"deleted": format!("/projects/{project}/deployments/{name}")}))
        }
        (Route::DeploymentOp { project, name, .. }, Action::ListKeys) => ok(control.list_keys(&project, &name)?),
        (Route::DeploymentOp { project, name, .. }, Action::RegenerateKeys) => {
            let body = json_body(body).await?;
            ok(blocking(control, move |c| c.regenerate_keys(&project, &name, body)).await?)
        }
        (Route::DeploymentOp { project, name, .. }, _) => {
            control.deployment_in(&project, &name)?;
            ok(ledger_reports::usage(ledger, GroupBy::Deployment, &name, &query).await?)
        }
        (Route::Grants { project, name }, _) => ok(control.grants_json(&project, &name)?),
        (Route::Grant { project, name, consumer_project, consumer }, _) if method == Method::PUT => {
            let body = json_body(body).await?;
            let (created, value) =
                blocking(control, move |c| c.put_grant(&project, &name, &consumer_project, &consumer, body)).await?;
            Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, value))
        }
        (Route::Grant { project, name, consumer_project, consumer }, _) => {
            let id = format!("/projects/{project}/deployments/{name}/grants/{consumer_project}/{consumer}");
            blocking(control, move |c| c.delete_grant(&project, &name, &consumer_project, &consumer)).await?;
            ok(json!({"deleted": id}))
        }
        (Route::Consumers { project }, _) => ok(control.consumers_json(&project, &Page::parse(&query, false)?)),
        (Route::Consumer { project, name }, Action::ReadConsumers) => ok(control.consumer_json(&project, &name)?),
        (Route::Consumer { project, name }, Action::PutConsumer) => {
            let body = json_body(body).await?;
            let (created, value) = blocking(control, move |c| c.put_consumer(&project, &name, body, &token)).await?;
            Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, value))
        }
        (Route::Consumer { project, name }, _) => {
            let (p, n) = (project.clone(), name.clone());
            blocking(control, move |c| c.delete_consumer(&p, &n)).await?;
            ok(json!({"deleted": format!("/projects/{project}/consumers/{name}")}))
        }
        (Route::ConsumerOp { project, name, .. }, Action::ListKeys) => ok(control.list_consumer_keys(&project, &name)?),
        (Route::ConsumerOp { project, name, .. }, Action::RegenerateKeys) => {
            let body = json_body(body).await?;
            ok(blocking(control, move |c| c.regenerate_consumer_keys(&project, &name, body)).await?)
        }
        (Route::ConsumerOp { project, name, .. }, _) => {
            let consumer = control.live_consumer(&project, &name)?;
            let label = consumer.label.to_string();
            let mut answer = json!({"consumer": label, "quotas": periods_json(quota, &consumer).await});
            answer["value"] = match ledger {
                Some(_) => ledger_reports::usage(ledger, GroupBy::Consumer, &label, &query).await?["value"].take(),
                None => Value::Null,
            };
            ok(answer)
        }
        (Route::Tokens, _) => ok(control.tokens_json(&Page::parse(&query, false)?)),
        (Route::Token { name }, _) if method == Method::PUT => {
            let body = json_body(body).await?;
            Ok((StatusCode::CREATED, blocking(control, move |c| c.put_token(&name, body)).await?))
        }
        (Route::Token { name }, _) => {
            let n = name.clone();
            blocking(control, move |c| c.delete_token(&n)).await?;
            ok(json!({"deleted": format!("/tokens/{name}")}))
        }
        (Route::Reload, _) => {
            let force = match query.as_str() {
                "" | "force=false" => false,
                "force=true" | "force" => true,
                other => {
                    return Err(AdminError::bad_request(format!(
                        "unknown query '{other}': /reload takes only force=true"
                    )));
                }
            };
            let control = Arc::clone(control);
            match tokio::task::spawn_blocking(move || control.reload(force)).await {
                Ok(Ok(report)) => ok(report.to_json()),
                Ok(Err(why @ ReloadError::NoFile)) => Err(AdminError::conflict(why.to_string())),
                Ok(Err(why @ ReloadError::Tls(_))) => Err(AdminError::unprocessable(why.to_string())),
                Ok(Err(why)) => Err(AdminError::unprocessable(format!("the configuration was not reloaded: {why}"))),
                Err(e) => Err(AdminError::internal(e.to_string())),
            }
        }
    }
}

/// A consumer's period quotas now: limit, used and when each starts again (`null` while a
/// shared store cannot be read).
async fn periods_json(quota: &QuotaStore, consumer: &Arc<Consumer>) -> Value {
    let Some(readings) = quota.consumer_periods(consumer).await else { return Value::Null };
    let list: Vec<Value> = readings
        .iter()
        .flat_map(|r| {
            r.state.each().map(move |(kind, limit, used, ends)| {
                json!({"scope": &*r.scope, "quota": kind.as_str(), "limit": limit, "used": used,
                       "remaining": limit.saturating_sub(used), "resetsAt": crate::state::ledger::report::format_unix(ends)})
            })
        })
        .collect();
    Value::Array(list)
}
