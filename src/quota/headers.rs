//! Rate-limit response headers: the Azure OpenAI-style `x-ratelimit-*` set, `retry-after` /
//! `retry-after-ms` on 429, and the IETF structured fields (draft-ietf-httpapi-ratelimit-headers)
//! with one policy for requests and one for tokens:
//!
//! ```text
//! RateLimit-Policy: "requests";q=1000;w=60, "tokens";q=200000;w=60;qu="tokens"
//! RateLimit: "requests";r=999;t=1, "tokens";r=199000;t=5
//! ```
//! `t` is the number of seconds until that bucket is full again (rounded up).

use std::fmt::Write as _;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::QuotaState;

pub const LIMIT_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
pub const REMAINING_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-requests");
pub const LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
pub const REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");
pub const RETRY_AFTER_MS: HeaderName = HeaderName::from_static("retry-after-ms");
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// Sets the quota headers every response of an authenticated request carries.
pub fn set_quota_headers(headers: &mut HeaderMap, state: &QuotaState) {
    headers.insert(LIMIT_REQUESTS, HeaderValue::from(state.limit_requests));
    headers.insert(REMAINING_REQUESTS, HeaderValue::from(state.remaining_requests));
    headers.insert(LIMIT_TOKENS, HeaderValue::from(state.limit_tokens));
    headers.insert(REMAINING_TOKENS, HeaderValue::from(state.remaining_tokens));
    let mut policy = String::with_capacity(72);
    let _ = write!(
        policy,
        "\"requests\";q={};w=60, \"tokens\";q={};w=60;qu=\"tokens\"",
        state.limit_requests, state.limit_tokens
    );
    let mut current = String::with_capacity(64);
    let _ = write!(
        current,
        "\"requests\";r={};t={}, \"tokens\";r={};t={}",
        state.remaining_requests,
        ceil_seconds(state.requests_full_in_ns),
        state.remaining_tokens,
        ceil_seconds(state.tokens_full_in_ns)
    );
    if let Ok(value) = HeaderValue::from_str(&policy) {
        headers.insert(RATELIMIT_POLICY, value);
    }
    if let Ok(value) = HeaderValue::from_str(&current) {
        headers.insert(RATELIMIT, value);
    }
}

/// Sets `retry-after` (whole seconds, rounded up) and `retry-after-ms` (rounded up).
pub fn set_retry_after(headers: &mut HeaderMap, wait_ns: u64) {
    headers.insert(http::header::RETRY_AFTER, HeaderValue::from(ceil_seconds(wait_ns)));
    headers.insert(RETRY_AFTER_MS, HeaderValue::from(ceil_millis(wait_ns)));
}

pub fn ceil_seconds(ns: u64) -> u64 {
    ns.div_ceil(1_000_000_000)
}

pub fn ceil_millis(ns: u64) -> u64 {
    ns.div_ceil(1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_set_and_structured() {
        let state = QuotaState {
            limit_requests: 1000,
            remaining_requests: 999,
            limit_tokens: 200_000,
            remaining_tokens: 199_000,
            requests_full_in_ns: 60_000_000,
            tokens_full_in_ns: 300_000_001,
        };
        let mut h = HeaderMap::new();
        set_quota_headers(&mut h, &state);
        set_retry_after(&mut h, 1_000_000_001);
        assert_eq!(h["x-ratelimit-remaining-tokens"], "199000");
        assert_eq!(h["x-ratelimit-limit-requests"], "1000");
        assert_eq!(h["ratelimit-policy"], "\"requests\";q=1000;w=60, \"tokens\";q=200000;w=60;qu=\"tokens\"");
        assert_eq!(h["ratelimit"], "\"requests\";r=999;t=1, \"tokens\";r=199000;t=1");
        assert_eq!(h["retry-after"], "2");
        assert_eq!(h["retry-after-ms"], "1001");
    }
}
