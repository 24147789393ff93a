//! A backend's retry headers (`retry-after-ms`, `retry-after`, `x-ratelimit-reset-*`): no panic,
//! and a plain number of milliseconds reads as exactly that.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tollgate::core::pool::retry_after::RetryHeaders;

fuzz_target!(|data: &[u8]| {
    let quarter = data.len() / 4;
    let (a, rest) = data.split_at(quarter);
    let (b, rest) = rest.split_at(quarter.min(rest.len()));
    let (c, d) = rest.split_at(quarter.min(rest.len()));
    let _ = RetryHeaders { retry_after_ms: Some(a), retry_after: Some(b), reset_requests: Some(c), reset_tokens: Some(d) }
        .retry_ns();
    let _ = RetryHeaders { reset_tokens: Some(data), ..RetryHeaders::default() }.retry_ns();
    if let Some(ms) = std::str::from_utf8(data).ok().and_then(|t| t.parse::<u32>().ok()) {
        if data.iter().all(u8::is_ascii_digit) {
            let said = RetryHeaders { retry_after_ms: Some(data), ..RetryHeaders::default() }.retry_ns();
            assert_eq!(said, Some(u64::from(ms) * 1_000_000));
        }
    }
});
