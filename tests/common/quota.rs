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

/// `n` chats to the harness's deployment, whose requests quota of `per_minute` lives in the
/// shared store: at least the quota and at most its allowance admitted, every other one a 429
/// from the shared buckets.
pub async fn assert_shared_quota_holds(h: &super::Harness, per_minute: u64, n: usize) {
    let started = std::time::Instant::now();
    let mut replies = Vec::with_capacity(n);
    for _ in 0..n {
        replies.push(
            h.client
                .post(&h.deployment_url("/chat/completions"), &[("api-key", super::PRIMARY_KEY)], super::CHAT)
                .await,
        );
    }
    let admitted = replies.iter().filter(|r| r.status == StatusCode::OK).count() as u64;
    let bound = allowance(per_minute, started.elapsed());
    assert!(admitted >= per_minute && admitted <= bound, "admitted {admitted} of {n} with a quota of {per_minute}");
    for reply in replies.iter().filter(|r| r.status != StatusCode::OK) {
        assert_rate_limited(reply, "x-ratelimit-limit-requests", per_minute, "x-ratelimit-remaining-requests", 1);
    }
}
