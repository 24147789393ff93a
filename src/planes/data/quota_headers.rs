//! Rate-limit response headers: the Azure OpenAI-style `x-ratelimit-*` set, `retry-after` /
//! `retry-after-ms` on 429, and the IETF structured fields (draft-ietf-httpapi-ratelimit-headers)
//! with one policy for requests and one for tokens:
//!
//! ```text
//! RateLimit-Policy: "requests";q=1000;w=60, "tokens";q=200000;w=60;qu="tokens"
//! RateLimit: "requests";r=999;t=1, "tokens";r=199000;t=5
//! ```
//! `t` is the number of seconds (rounded up) until that policy's quota resets: for a bucket
//! with room, until it is full again; on a 429, for a bucket without room for the request, until
//! it has room, which is what `retry-after` says for the request as a whole. The draft
//! (draft-ietf-httpapi-ratelimit-headers) defines `t` as the seconds until the quota units
//! "reset"; with a continuously refilled bucket the units a client needs are back at that time.

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
