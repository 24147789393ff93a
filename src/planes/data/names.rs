//! Header names the data plane reads or writes on every request, built once: a `&str` name is
//! parsed and hashed again at each use (~300 instructions; BENCHMARKS.md).

use http::HeaderName;

pub const API_KEY: HeaderName = HeaderName::from_static("api-key");
pub const AZUREML_MODEL_DEPLOYMENT: HeaderName = HeaderName::from_static("azureml-model-deployment");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const APIM_REQUEST_ID: HeaderName = HeaderName::from_static("apim-request-id");
pub const X_MS_CLIENT_REQUEST_ID: HeaderName = HeaderName::from_static("x-ms-client-request-id");
/// What a backend that answered 429 may say about when to come back (besides `retry-after(-ms)`).
pub const X_RATELIMIT_RESET_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-reset-requests");
pub const X_RATELIMIT_RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");
/// A request's own limit on how long it may wait for the buckets (milliseconds, at most the
/// deployment's `max_wait_ms`; 0: answer 429 at once). Azure's `x-ms-` prefix, as its other
/// request headers have.
pub const X_MS_MAX_WAIT_MS: HeaderName = HeaderName::from_static("x-ms-max-wait-ms");
/// On an answer that waited for the buckets: how long, in milliseconds.
pub const X_MS_QUEUED_MS: HeaderName = HeaderName::from_static("x-ms-queued-ms");

/// `x-ms-max-wait-ms`, when given; a value that is not a whole number of milliseconds is the
/// caller's mistake (400).
pub fn max_wait(headers: &http::HeaderMap) -> Result<Option<std::time::Duration>, super::error::ApiError> {
    let Some(value) = headers.get(X_MS_MAX_WAIT_MS) else { return Ok(None) };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|ms| Some(std::time::Duration::from_millis(ms)))
        .ok_or_else(|| super::error::ApiError::InvalidHeader {
            name: "x-ms-max-wait-ms",
            reason: "must be a whole number of milliseconds (0 for no wait)".into(),
        })
}
