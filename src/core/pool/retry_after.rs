//! When a backend that answered 429 can be tried again, from its own headers:
//! `retry-after-ms` (milliseconds, the Model Inference API's and Azure OpenAI's), `retry-after`
//! (seconds; the HTTP-date form is not used by serverless endpoints and reads as "not said"), and
//! `x-ratelimit-reset-requests` / `x-ratelimit-reset-tokens` (seconds, or a duration such as
//! `6m0s` or `20ms` as OpenAI-style servers write it; the later of the two, as both buckets must
//! have room). The first present and readable in that order wins.

const NS_PER_MS: u64 = 1_000_000;
const NS_PER_S: u64 = 1_000_000_000;

/// The backend's headers, as raw values.
#[derive(Clone, Copy, Debug, Default)]
pub struct RetryHeaders<'a> {
    pub retry_after_ms: Option<&'a [u8]>,
    pub retry_after: Option<&'a [u8]>,
    pub reset_requests: Option<&'a [u8]>,
    pub reset_tokens: Option<&'a [u8]>,
}

impl RetryHeaders<'_> {
    /// Nanoseconds to wait, when the backend said.
    pub fn retry_ns(&self) -> Option<u64> {
        if let Some(ns) = self.retry_after_ms.and_then(|v| decimal_ns(v, NS_PER_MS)) {
            return Some(ns);
        }
        if let Some(ns) = self.retry_after.and_then(|v| decimal_ns(v, NS_PER_S)) {
            return Some(ns);
        }
        let requests = self.reset_requests.and_then(duration_ns);
        let tokens = self.reset_tokens.and_then(duration_ns);
        match (requests, tokens) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

/// `12`, `1.5`, ` 3 ` in `unit` nanoseconds; `None` for anything else (negative, empty, a date).
fn decimal_ns(value: &[u8], unit: u64) -> Option<u64> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    if !whole.bytes().all(|b| b.is_ascii_digit()) || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: u64 = if whole.is_empty() { 0 } else { whole.parse().ok()? };
    let mut ns = whole.saturating_mul(unit);
    let mut scale = unit;
    for digit in fraction.bytes().take(9) {
        scale /= 10;
        ns = ns.saturating_add(u64::from(digit - b'0') * scale);
    }
    Some(ns)
}

/// Seconds as a number, or a Go-style duration (`1h2m3.5s`, `6m0s`, `20ms`, `150us`).
fn duration_ns(value: &[u8]) -> Option<u64> {
    if let Some(ns) = decimal_ns(value, NS_PER_S) {
        return Some(ns);
    }
    let text = std::str::from_utf8(value).ok()?.trim();
    if text.is_empty() {
        return None;
    }
    let mut rest = text;
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if number_end == 0 {
            return None;
        }
        let (number, after) = rest.split_at(number_end);
        let unit_end = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_end);
        let unit_ns = match unit {
            "h" => 3_600 * NS_PER_S,
            "m" => 60 * NS_PER_S,
            "s" => NS_PER_S,
            "ms" => NS_PER_MS,
            "us" | "µs" => 1_000,
            "ns" => 1,
            _ => return None,
        };
        total = total.saturating_add(decimal_ns(number.as_bytes(), unit_ns)?);
        rest = next;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn headers<'a>(
        ms: Option<&'a str>,
        s: Option<&'a str>,
        req: Option<&'a str>,
        tok: Option<&'a str>,
    ) -> RetryHeaders<'a> {
        RetryHeaders {
            retry_after_ms: ms.map(str::as_bytes),
            retry_after: s.map(str::as_bytes),
            reset_requests: req.map(str::as_bytes),
            reset_tokens: tok.map(str::as_bytes),
        }
    }

    #[test]
    fn milliseconds_first_then_seconds_then_the_later_reset() {
        assert_eq!(headers(Some("1500"), Some("9"), None, None).retry_ns(), Some(1_500 * NS_PER_MS));
        assert_eq!(headers(Some("12.5"), None, None, None).retry_ns(), Some(12_500_000));
        assert_eq!(headers(None, Some("2"), Some("60"), None).retry_ns(), Some(2 * NS_PER_S));
        assert_eq!(headers(Some("soon"), Some("3"), None, None).retry_ns(), Some(3 * NS_PER_S));
        assert_eq!(headers(None, None, Some("1s"), Some("6m0s")).retry_ns(), Some(360 * NS_PER_S));
        assert_eq!(headers(None, None, Some("20ms"), None).retry_ns(), Some(20 * NS_PER_MS));
        assert_eq!(headers(None, None, None, Some("1h2m3.5s")).retry_ns(), Some(3_723_500 * NS_PER_MS));
        assert_eq!(headers(None, None, None, Some("7")).retry_ns(), Some(7 * NS_PER_S));
    }

    #[test]
    fn what_cannot_be_read_is_not_said() {
        assert_eq!(headers(None, Some("Wed, 21 Oct 2015 07:28:00 GMT"), None, None).retry_ns(), None);
        assert_eq!(headers(Some("-5"), None, None, None).retry_ns(), None);
        assert_eq!(headers(Some(""), Some("."), Some("3x"), Some("s")).retry_ns(), None);
        assert_eq!(RetryHeaders::default().retry_ns(), None);
    }

    proptest! {
        #[test]
        fn any_bytes_are_read_without_panicking(a in proptest::collection::vec(any::<u8>(), 0..24), b in "[0-9hmsu.]{0,12}") {
            let _ = headers(None, None, Some(&b), None).retry_ns();
            let h = RetryHeaders { retry_after_ms: Some(&a), retry_after: Some(&a), reset_requests: Some(&a), reset_tokens: Some(&a) };
            let _ = h.retry_ns();
        }

        #[test]
        fn whole_milliseconds_read_exactly(ms in 0u64..10_000_000) {
            let text = ms.to_string();
            prop_assert_eq!(headers(Some(&text), None, None, None).retry_ns(), Some(ms * NS_PER_MS));
        }
    }
}
