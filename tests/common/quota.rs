//! What a shared quota may admit, and what its 429s must say.

use std::time::Duration;

use http::StatusCode;

use super::Reply;

/// How many a bucket of `per_minute` can admit over `elapsed`: the full minute plus the refill.
pub fn allowance(per_minute: u64, elapsed: Duration) -> u64 {
    per_minute + (elapsed.as_secs_f64() * per_minute as f64 / 60.0).floor() as u64
}

/// A 429 from the shared buckets, checked header by header: the bucket that refused holds less
/// than the request needed (`needed`: 1 for requests, the reservation for tokens).
pub fn assert_rate_limited(reply: &Reply, limit_header: &str, limit: u64, remaining_header: &str, needed: u64) {
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{}", reply.text());
    assert_eq!(reply.error_code(), "TooManyRequests");
    assert_eq!(reply.header("x-ms-error-code"), "TooManyRequests");
    assert_eq!(reply.number(limit_header), limit, "{limit_header}");
    let remaining = reply.number(remaining_header);
    assert!(remaining < needed, "{remaining_header} {remaining} on a 429 for a request needing {needed}");
    let retry_ms = reply.number("retry-after-ms");
    assert!(retry_ms > 0 && retry_ms <= 60_000, "retry-after-ms {retry_ms}");
    assert_eq!(reply.number("retry-after"), retry_ms.div_ceil(1000));
    assert!(reply.header("ratelimit").contains("\"requests\";r="), "{}", reply.header("ratelimit"));
}
