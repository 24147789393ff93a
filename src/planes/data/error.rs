//! Per-request errors and the one place that turns them into the API's error JSON.
//!
//! Every rejection the gateway makes is an [`ApiError`]. Its status, error code and metric label are
//! exhaustive matches, so a new variant forces a decision about each. The body is always
//! `{"error":{"code","message","status"}}` with the same code in `x-ms-error-code`.

use http::{HeaderValue, Method, Response, StatusCode, header};

use crate::core::quota::period::PeriodKind;
use crate::core::quota::{LimitKind, QuotaState};
use crate::planes::data::body::ProxyBody;
use crate::planes::data::quota_headers::{ceil_millis, set_retry_after};
use crate::planes::respond::error_response;

fn rate_limited_message(
    deployment: &str,
    consumer: Option<&str>,
    limit: LimitKind,
    reserved: u64,
    retry_after_ns: u64,
    state: &QuotaState,
) -> String {
    let (per_minute, remaining) = match limit {
        LimitKind::Requests => (state.limit_requests, state.remaining_requests),
        LimitKind::Tokens => (state.limit_tokens, state.remaining_tokens),
    };
    let who = match consumer {
        None => format!("deployment '{deployment}' allows"),
        Some(consumer) => format!("consumer '{consumer}' may use, on deployment '{deployment}',"),
    };
    format!(
        "You have hit your assigned rate limit and your request need to be paced: {who} {per_minute} {kind} per minute and has {remaining} left; this request needs 1 request and {reserved} tokens. Retry after {ms} ms.",
        kind = limit.as_str(),
        ms = ceil_millis(retry_after_ns),
    )
}

fn queue_timeout_message(deployment: &str, waited_ms: u64, retry_after_ns: u64) -> String {
    let ms = ceil_millis(retry_after_ns);
    if waited_ms == 0 {
        format!(
            "the requests already waiting for deployment '{deployment}' need about {ms} ms of its rate limit's refill, longer than this request may wait (max_wait_ms, or x-ms-max-wait-ms); retry after {ms} ms"
        )
    } else {
        format!(
            "this request waited {waited_ms} ms for deployment '{deployment}' (the most it may wait: max_wait_ms or x-ms-max-wait-ms) and its rate limit still could not take it; retry after {ms} ms"
        )
    }
}

fn period_word(period: crate::state::budget::BudgetPeriod) -> &'static str {
    match period {
        crate::state::budget::BudgetPeriod::Daily => "daily",
        crate::state::budget::BudgetPeriod::Monthly => "monthly",
    }
}

fn quota_exceeded_message(scope: &str, kind: PeriodKind, limit: u64, used: u64, reset_unix: u64) -> String {
    let reset = std::time::UNIX_EPOCH + std::time::Duration::from_secs(reset_unix);
    let unit = match kind {
        PeriodKind::RequestsPerDay => "requests",
        PeriodKind::TokensPerDay | PeriodKind::TokensPerMonth => "tokens",
    };
    format!(
        "Quota exceeded: {scope} has used {used} of its {limit} {unit} this {period} (UTC); the quota resets at {at}. Retrying before then is refused the same way.",
        period = kind.period(),
        at = crate::state::ledger::line::format_time(reset),
    )
}

/// Why a request was not served (or not served completely) by a backend.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "no deployment named '{name}' exists on this gateway; check the deployment name in the URL, the host name, the 'azureml-model-deployment' header or the body's 'model' field"
    )]
    DeploymentNotFound { name: String },
    #[error(
        "the request names no deployment: call /openai/deployments/{{name}}/..., use the host {{name}}.<gateway host>, or send the deployment name in the 'azureml-model-deployment' header or the body's 'model' field"
    )]
    DeploymentMissing,
    #[error(
        "no route {path}: supported routes are GET /info and POST /chat/completions, /completions, /embeddings, /images/embeddings (optionally under /openai/deployments/{{name}}, /models or /v1)"
    )]
    RouteNotFound { path: String },
    #[error("method {method} is not allowed on {route}; use {allowed}")]
    MethodNotAllowed { method: Method, route: &'static str, allowed: Method },
    #[error(
        "access denied due to a missing or invalid key for deployment '{deployment}': send one of the deployment's keys as 'api-key: <key>' or 'Authorization: Bearer <key>'"
    )]
    Unauthorized { deployment: String },
    #[error(
        "access denied due to a missing or invalid key: this request names no deployment (in the URL, the 'azureml-model-deployment' header or the body's 'model'), so it is found from the key, and this key is not one of any deployment's keys; send one as 'api-key: <key>' or 'Authorization: Bearer <key>'"
    )]
    KeyNotRecognized,
    #[error(
        "access denied: this key is consumer '{consumer}''s, which is not granted deployment '{deployment}' (or no longer is); ask an owner or contributor of the deployment's project to grant it, or call one of the consumer's deployments"
    )]
    NotGranted { consumer: String, deployment: String },
    #[error("{reason}")]
    InvalidHost { reason: &'static str },
    #[error("the request body is larger than this gateway's limit of {limit} bytes; send a smaller body")]
    BodyTooLarge { limit: usize },
    #[error("the request body did not arrive within {timeout_ms} ms; send the whole body promptly")]
    BodyTimeout { timeout_ms: u64 },
    #[error("the request body could not be read: {reason}")]
    BodyRead { reason: String },
    #[error("the request body must be a JSON object: {reason}")]
    InvalidJson { reason: String },
    #[error("{}", rate_limited_message(deployment, consumer.as_deref(), *limit, *reserved_tokens, *retry_after_ns, state))]
    RateLimited {
        deployment: String,
        /// The consumer whose own limit on the deployment was hit (`None`: the deployment's).
        consumer: Option<std::sync::Arc<str>>,
        limit: LimitKind,
        reserved_tokens: u64,
        retry_after_ns: u64,
        state: QuotaState,
    },
    /// A period quota (per UTC day or month) is used up.
    #[error("{}", quota_exceeded_message(scope, *kind, *limit, *used, *reset_unix))]
    QuotaExceeded { scope: String, kind: PeriodKind, limit: u64, used: u64, reset_unix: u64, retry_after_s: u64 },
    /// A hard budget is spent.
    #[error(
        "Budget exceeded: budget '{}' ({}) has spent {} {currency} of its {} {} {currency} {}; new requests are refused until it resets at {}.",
        spent.budget, scope, spent.spent, period_word(spent.period), spent.amount,
        if spent.period == crate::state::budget::BudgetPeriod::Daily { "this UTC day" } else { "this UTC month" },
        crate::state::ledger::report::format_unix(spent.reset_unix)
    )]
    BudgetExceeded {
        spent: Box<crate::state::budget::Exhausted>,
        scope: String,
        currency: std::sync::Arc<str>,
        retry_after_s: u64,
    },
    #[error(
        "this request reserves {reserved} tokens ({prompt} estimated for the prompt + {completion} for the completion) but {owner} allows {capacity} tokens per minute, so it can never be admitted: lower max_tokens or shorten the prompt"
    )]
    TokenLimitExceeded {
        /// Whose limit: `deployment 'd'`, or `consumer 'p/c' on deployment 'd'`.
        owner: String,
        reserved: u64,
        prompt: u64,
        completion: u64,
        capacity: u64,
    },
    #[error(
        "deployment '{deployment}' has as many requests waiting for its rate limit as it holds ({what}); retry after {} ms", ceil_millis(*retry_after_ns)
    )]
    QueueFull { deployment: String, what: String, retry_after_ns: u64 },
    #[error("{}", queue_timeout_message(deployment, *waited_ms, *retry_after_ns))]
    QueueTimeout { deployment: String, waited_ms: u64, retry_after_ns: u64 },
    #[error(
        "deployment '{deployment}' answers {per_minute} pre-flights (dry-run) per minute and has none left; retry after {} ms", ceil_millis(*retry_after_ns)
    )]
    DryRunsLimited { deployment: String, per_minute: u64, retry_after_ns: u64 },
    #[error("the gateway is shutting down and sent away the requests waiting for a rate limit; retry in a second")]
    ShuttingDown,
    #[error("header '{name}' {reason}")]
    InvalidHeader { name: &'static str, reason: String },
    #[error("{reason}")]
    DeploymentUnhealthy { reason: String },
    #[error(
        "the quota store of this gateway cannot be reached, and it is configured to refuse requests it cannot count (on_store_error = \"fail-closed\"); retry in a second"
    )]
    QuotaStoreUnavailable,
    #[error(
        "every backend of deployment '{deployment}' is at its own rate limit or cooling down after answering 429 ({backends} in its pool); retry after {} ms", ceil_millis(*retry_after_ns)
    )]
    BackendsBusy { deployment: String, backends: usize, retry_after_ns: u64 },
    #[error(
        "every backend of deployment '{deployment}' is out after repeated failures ({backends} in its pool, all ejected); retry after {} ms", ceil_millis(*retry_after_ns)
    )]
    BackendsUnavailable { deployment: String, backends: usize, retry_after_ns: u64 },
    #[error(
        "this request reserves {reserved} tokens but the largest backend of deployment '{deployment}' allows {capacity} tokens per minute, so no backend can ever take it: lower max_tokens or shorten the prompt"
    )]
    BackendCapacityExceeded { deployment: String, reserved: u64, capacity: u64 },
    #[error("the backend of deployment '{deployment}' could not be reached ({reason}); try again later")]
    BackendUnreachable { deployment: String, reason: String },
    #[error("the backend of deployment '{deployment}' did not {what} within {timeout_ms} ms; try again later")]
    BackendTimeout { deployment: String, what: &'static str, timeout_ms: u64 },
    #[error("the backend of deployment '{deployment}' failed: {reason}")]
    BackendProtocol { deployment: String, reason: String },
}

impl From<crate::core::estimate::EstimateError> for ApiError {
    fn from(error: crate::core::estimate::EstimateError) -> ApiError {
        ApiError::InvalidJson { reason: error.reason }
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::DeploymentNotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::DeploymentMissing => StatusCode::BAD_REQUEST,
            ApiError::RouteNotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::KeyNotRecognized => StatusCode::UNAUTHORIZED,
            ApiError::NotGranted { .. } => StatusCode::UNAUTHORIZED,
            ApiError::InvalidHost { .. } => StatusCode::BAD_REQUEST,
            ApiError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::BodyRead { .. } => StatusCode::BAD_REQUEST,
            ApiError::InvalidJson { .. } => StatusCode::BAD_REQUEST,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::QuotaExceeded { .. } | ApiError::BudgetExceeded { .. } => StatusCode::FORBIDDEN,
            ApiError::TokenLimitExceeded { .. } => StatusCode::BAD_REQUEST,
            ApiError::QueueFull { .. } | ApiError::QueueTimeout { .. } | ApiError::DryRunsLimited { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::InvalidHeader { .. } => StatusCode::BAD_REQUEST,
            ApiError::DeploymentUnhealthy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::QuotaStoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BackendsBusy { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::BackendsUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BackendCapacityExceeded { .. } => StatusCode::BAD_REQUEST,
            ApiError::BackendUnreachable { .. } => StatusCode::BAD_GATEWAY,
            ApiError::BackendTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ApiError::BackendProtocol { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// The API error code, sent in the body and in `x-ms-error-code`.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::DeploymentNotFound { .. } => "DeploymentNotFound",
            ApiError::DeploymentMissing => "DeploymentMissing",
            ApiError::RouteNotFound { .. } => "NotFound",
            ApiError::MethodNotAllowed { .. } => "MethodNotAllowed",
            ApiError::Unauthorized { .. } => "Unauthorized",
            ApiError::KeyNotRecognized => "Unauthorized",
            ApiError::NotGranted { .. } => "Unauthorized",
            ApiError::InvalidHost { .. } => "InvalidHost",
            ApiError::BodyTooLarge { .. } => "RequestEntityTooLarge",
            ApiError::BodyTimeout { .. } => "RequestTimeout",
            ApiError::BodyRead { .. } => "InvalidRequestBody",
            ApiError::InvalidJson { .. } => "InvalidJson",
            ApiError::RateLimited { .. } => "TooManyRequests",
            ApiError::QuotaExceeded { .. } => "QuotaExceeded",
            ApiError::BudgetExceeded { .. } => "BudgetExceeded",
            ApiError::TokenLimitExceeded { .. } => "TokenLimitExceeded",
            ApiError::QueueFull { .. } | ApiError::QueueTimeout { .. } | ApiError::DryRunsLimited { .. } => {
                "TooManyRequests"
            }
            ApiError::ShuttingDown => "ServiceUnavailable",
            ApiError::InvalidHeader { .. } => "InvalidHeader",
            ApiError::DeploymentUnhealthy { .. } => "ServiceUnavailable",
            ApiError::QuotaStoreUnavailable => "ServiceUnavailable",
            ApiError::BackendsBusy { .. } => "TooManyRequests",
            ApiError::BackendsUnavailable { .. } => "ServiceUnavailable",
            ApiError::BackendCapacityExceeded { .. } => "TokenLimitExceeded",
            ApiError::BackendUnreachable { .. } => "BadGateway",
            ApiError::BackendTimeout { .. } => "GatewayTimeout",
            ApiError::BackendProtocol { .. } => "BadGateway",
        }
    }

    /// A bounded label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ApiError::DeploymentNotFound { .. } => "deployment_not_found",
            ApiError::DeploymentMissing => "deployment_missing",
            ApiError::RouteNotFound { .. } => "route_not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::Unauthorized { .. } => "unauthorized",
            ApiError::KeyNotRecognized => "unauthorized",
            ApiError::NotGranted { .. } => "not_granted",
            ApiError::InvalidHost { .. } => "invalid_host",
            ApiError::BodyTooLarge { .. } => "body_too_large",
            ApiError::BodyTimeout { .. } => "body_timeout",
            ApiError::BodyRead { .. } => "body_read",
            ApiError::InvalidJson { .. } => "invalid_json",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::QuotaExceeded { .. } => "quota_exceeded",
            ApiError::BudgetExceeded { .. } => "budget_exceeded",
            ApiError::TokenLimitExceeded { .. } => "token_limit_exceeded",
            ApiError::QueueFull { .. } => "queue_full",
            ApiError::QueueTimeout { .. } => "queue_timeout",
            ApiError::DryRunsLimited { .. } => "dry_runs_limited",
            ApiError::ShuttingDown => "shutting_down",
            ApiError::InvalidHeader { .. } => "invalid_header",
            ApiError::DeploymentUnhealthy { .. } => "deployment_unhealthy",
            ApiError::QuotaStoreUnavailable => "quota_store_unavailable",
            ApiError::BackendsBusy { .. } => "backends_busy",
            ApiError::BackendsUnavailable { .. } => "backends_unavailable",
            ApiError::BackendCapacityExceeded { .. } => "backend_capacity_exceeded",
            ApiError::BackendUnreachable { .. } => "backend_connect",
            ApiError::BackendTimeout { .. } => "backend_timeout",
            ApiError::BackendProtocol { .. } => "backend_protocol",
        }
    }

    /// The error as the API's JSON response.
    pub fn into_response(self) -> Response<ProxyBody> {
        let status = self.status();
        let mut response = error_response(status, self.code(), &self.to_string());
        match &self {
            ApiError::MethodNotAllowed { allowed, .. } => {
                if let Ok(value) = HeaderValue::from_str(allowed.as_str()) {
                    response.headers_mut().insert(header::ALLOW, value);
                }
            }
            ApiError::RateLimited { retry_after_ns, .. } => set_retry_after(response.headers_mut(), *retry_after_ns),
            ApiError::QuotaStoreUnavailable | ApiError::ShuttingDown => {
                set_retry_after(response.headers_mut(), 1_000_000_000)
            }
            ApiError::QueueFull { retry_after_ns, .. }
            | ApiError::QueueTimeout { retry_after_ns, .. }
            | ApiError::DryRunsLimited { retry_after_ns, .. } => {
                set_retry_after(response.headers_mut(), *retry_after_ns)
            }
            // Whole seconds until the period ends: no `retry-after-ms` (nothing to pace).
            ApiError::QuotaExceeded { retry_after_s, .. } | ApiError::BudgetExceeded { retry_after_s, .. } => {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_s));
            }
            ApiError::BackendsBusy { retry_after_ns, .. } | ApiError::BackendsUnavailable { retry_after_ns, .. } => {
                set_retry_after(response.headers_mut(), *retry_after_ns)
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn error_body_has_code_message_status_and_header() {
        let response = ApiError::BodyTooLarge { limit: 10 }.into_response();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(response.headers()["x-ms-error-code"], "RequestEntityTooLarge");
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["error"]["code"], "RequestEntityTooLarge");
        assert_eq!(json["error"]["status"], 413);
        assert!(json["error"]["message"].as_str().unwrap().contains("10 bytes"));
    }

    #[tokio::test]
    async fn messages_with_quotes_stay_valid_json() {
        let response = ApiError::DeploymentNotFound { name: "a\"b\\c".into() }.into_response();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert!(json["error"]["message"].as_str().unwrap().contains("a\"b\\c"));
    }

    #[test]
    fn method_not_allowed_sets_allow() {
        let response =
            ApiError::MethodNotAllowed { method: Method::GET, route: "/chat/completions", allowed: Method::POST }
                .into_response();
        assert_eq!(response.headers()[header::ALLOW], "POST");
    }
}
