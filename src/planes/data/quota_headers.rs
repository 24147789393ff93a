//! Rate-limit response headers: the Azure OpenAI-style `x-ratelimit-*` set, `retry-after` /
//! `retry-after-ms` on 429, and the IETF structured fields (draft-ietf-httpapi-ratelimit-headers)
//! with one policy for requests and one for tokens:
//!
//! ```text
//! RateLimit-Policy: "requests";q=1000;w=60, "tokens";q=200000;w=60;qu="tokens"
//! RateLimit: "requests";r=999;t=1, "tokens";r=199000;t=5
//! ```
//! A consumer's request lists every policy that applies, the deployment's first (named as
//! above), then its own on the deployment (`grant-requests`, `grant-tokens`, and the period
//! quotas `grant-tokens-per-day`, `grant-tokens-per-month`, `grant-requests-per-day`, with `w` the
//! period's length in seconds), then its own over all its deployments (`consumer-tokens-per-day`,
//! ...). The `x-ratelimit-*` headers show the tightest per-minute level (the fewest tokens left),
//! and `x-ratelimit-remaining-quota-tokens` the fewest tokens left in any period quota.
//!
//! `t` is the number of seconds (rounded up) until that policy's quota resets: for a bucket
//! with room, until it is full again; on a 429, for a bucket without room for the request, until
//! it has room, which is what `retry-after` says for the request as a whole. The draft
//! (draft-ietf-httpapi-ratelimit-headers) defines `t` as the seconds until the quota units
//! "reset"; with a continuously refilled bucket the units a client needs are back at that time.

use http::{HeaderMap, HeaderName, HeaderValue};

use super::QuotaState;
use crate::core::quota::period::PeriodKind;
use crate::state::quota_store::ConsumerAdmission;

pub const LIMIT_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
pub const REMAINING_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-requests");
pub const LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
pub const REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");
pub const RETRY_AFTER_MS: HeaderName = HeaderName::from_static("retry-after-ms");
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub const REMAINING_QUOTA_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-quota-tokens");

/// Sets the quota headers every response of an authenticated request carries: `state` is the
/// binding level; `consumer`, for a consumer's request, every level it was admitted against.
pub fn set_quota_headers(headers: &mut HeaderMap, state: &QuotaState, consumer: Option<&ConsumerAdmission>) {
    headers.insert(LIMIT_REQUESTS, HeaderValue::from(state.limit_requests));
    headers.insert(REMAINING_REQUESTS, HeaderValue::from(state.remaining_requests));
    headers.insert(LIMIT_TOKENS, HeaderValue::from(state.limit_tokens));
    headers.insert(REMAINING_TOKENS, HeaderValue::from(state.remaining_tokens));
    if let Some(consumer) = consumer {
        set_consumer_policies(headers, consumer);
        return;
    }
    let policy = structured(&[
        Text(b"\"requests\";q="),
        Num(state.limit_requests),
        Text(b";w=60, \"tokens\";q="),
        Num(state.limit_tokens),
        Text(b";w=60;qu=\"tokens\""),
    ]);
    let current = structured(&[
        Text(b"\"requests\";r="),
        Num(state.remaining_requests),
        Text(b";t="),
        Num(ceil_seconds(state.requests_full_in_ns)),
        Text(b", \"tokens\";r="),
        Num(state.remaining_tokens),
        Text(b";t="),
        Num(ceil_seconds(state.tokens_full_in_ns)),
    ]);
    headers.insert(RATELIMIT_POLICY, policy);
    headers.insert(RATELIMIT, current);
}

/// Every policy of a consumer's request, in `RateLimit-Policy` and `RateLimit`.
fn set_consumer_policies(headers: &mut HeaderMap, admission: &ConsumerAdmission) {
    let mut policy = Vec::with_capacity(256);
    let mut current = Vec::with_capacity(256);
    let mut digits = itoa::Buffer::new();
    let mut add = |name: &str, quota: u64, window: u64, tokens: bool, remaining: u64, reset_s: u64| {
        for (out, first) in [(&mut policy, None), (&mut current, Some(()))] {
            if !out.is_empty() {
                out.extend_from_slice(b", ");
            }
            out.push(b'"');
            out.extend_from_slice(name.as_bytes());
            out.push(b'"');
            if first.is_none() {
                out.extend_from_slice(b";q=");
                out.extend_from_slice(digits.format(quota).as_bytes());
                out.extend_from_slice(b";w=");
                out.extend_from_slice(digits.format(window).as_bytes());
                if tokens {
                    out.extend_from_slice(b";qu=\"tokens\"");
                }
            } else {
                out.extend_from_slice(b";r=");
                out.extend_from_slice(digits.format(remaining).as_bytes());
                out.extend_from_slice(b";t=");
                out.extend_from_slice(digits.format(reset_s).as_bytes());
            }
        }
    };
    for (names, state) in
        [(["requests", "tokens"], admission.deployment), (["grant-requests", "grant-tokens"], admission.grant)]
    {
        if let Some(s) = state {
            add(names[0], s.limit_requests, 60, false, s.remaining_requests, ceil_seconds(s.requests_full_in_ns));
            add(names[1], s.limit_tokens, 60, true, s.remaining_tokens, ceil_seconds(s.tokens_full_in_ns));
        }
    }
    let mut fewest: Option<u64> = None;
    for (consumer_wide, state) in [(false, admission.periods[0]), (true, admission.periods[1])] {
        let Some(state) = state else { continue };
        for (kind, limit, used, ends) in state.each() {
            let left = limit.saturating_sub(used);
            let tokens = kind != PeriodKind::RequestsPerDay;
            let window = state.usage.stamp.length_of(kind);
            add(period_policy(consumer_wide, kind), limit, window, tokens, left, ends.saturating_sub(admission.now));
            if tokens {
                fewest = Some(fewest.map_or(left, |f| f.min(left)));
            }
        }
    }
    for (name, bytes) in [(RATELIMIT_POLICY, policy), (RATELIMIT, current)] {
        if let Ok(value) = HeaderValue::from_maybe_shared(bytes::Bytes::from(bytes)) {
            headers.insert(name, value);
        }
    }
    if let Some(fewest) = fewest {
        headers.insert(REMAINING_QUOTA_TOKENS, HeaderValue::from(fewest));
    }
}

/// A period quota's policy name: the grant's on the deployment, or the consumer's over all its
/// deployments (static, so a consumer's headers format no names).
fn period_policy(consumer_wide: bool, kind: PeriodKind) -> &'static str {
    match (consumer_wide, kind) {
        (false, PeriodKind::TokensPerDay) => "grant-tokens-per-day",
        (false, PeriodKind::TokensPerMonth) => "grant-tokens-per-month",
        (false, PeriodKind::RequestsPerDay) => "grant-requests-per-day",
        (true, PeriodKind::TokensPerDay) => "consumer-tokens-per-day",
        (true, PeriodKind::TokensPerMonth) => "consumer-tokens-per-month",
        (true, PeriodKind::RequestsPerDay) => "consumer-requests-per-day",
    }
}

/// One piece of a structured header value: literal bytes or a number.
enum Piece<'a> {
    Text(&'a [u8]),
    Num(u64),
}
use Piece::{Num, Text};

/// Joins the pieces into one header value: one allocation, no `fmt` machinery (which cost
/// more than the rest of the header work together in a callgrind profile of the hot path).
fn structured(pieces: &[Piece<'_>]) -> HeaderValue {
    let mut out = Vec::with_capacity(96);
    let mut digits = itoa::Buffer::new();
    for piece in pieces {
        match piece {
            Piece::Text(text) => out.extend_from_slice(text),
            Piece::Num(n) => out.extend_from_slice(digits.format(*n).as_bytes()),
        }
    }
    // Only ASCII digits and the literals above: always a valid header value.
    HeaderValue::from_maybe_shared(bytes::Bytes::from(out)).unwrap_or_else(|_| HeaderValue::from_static(""))
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
        set_quota_headers(&mut h, &state, None);
        set_retry_after(&mut h, 1_000_000_001);
        assert_eq!(h["x-ratelimit-remaining-tokens"], "199000");
        assert_eq!(h["x-ratelimit-limit-requests"], "1000");
        assert_eq!(h["ratelimit-policy"], "\"requests\";q=1000;w=60, \"tokens\";q=200000;w=60;qu=\"tokens\"");
        assert_eq!(h["ratelimit"], "\"requests\";r=999;t=1, \"tokens\";r=199000;t=1");
        assert_eq!(h["retry-after"], "2");
        assert_eq!(h["retry-after-ms"], "1001");
    }
}
