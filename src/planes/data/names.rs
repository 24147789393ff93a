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
