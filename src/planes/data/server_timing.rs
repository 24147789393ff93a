//! The W3C `Server-Timing` header on every forwarded answer: what the gateway added before the
//! backend's response head and how long the backend took to it, in milliseconds,
//!
//! ```text
//! Server-Timing: gw;dur=0.042, backend;dur=13.100
//! ```
//!
//! `gw` is the time from the request's arrival to its forwarding plus the proxying of the head
//! (routing, authentication, reading the body, estimating, admission); `backend` is the time from
//! forwarding to the head, every attempt of a pool included. A backend's own `Server-Timing`
//! stays beside it. Written by hand with `itoa` (no `fmt` on the request path).

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

pub const SERVER_TIMING: HeaderName = HeaderName::from_static("server-timing");

/// Adds `gw;dur=…, backend;dur=…` to `headers`.
pub fn add(headers: &mut HeaderMap, gateway: Duration, backend: Duration) {
    let mut out = Vec::with_capacity(48);
    out.extend_from_slice(b"gw;dur=");
    millis(&mut out, gateway);
    out.extend_from_slice(b", backend;dur=");
    millis(&mut out, backend);
    // Only ASCII digits and the literals above: always a valid header value.
    if let Ok(value) = HeaderValue::from_maybe_shared(bytes::Bytes::from(out)) {
        headers.append(SERVER_TIMING, value);
    }
}

/// Milliseconds with three decimals (microsecond resolution).
fn millis(out: &mut Vec<u8>, d: Duration) {
    let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    let mut digits = itoa::Buffer::new();
    out.extend_from_slice(digits.format(micros / 1000).as_bytes());
    out.push(b'.');
    let fraction = micros % 1000;
    for unit in [100, 10, 1] {
        out.push(b'0' + (fraction / unit % 10) as u8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_milliseconds_with_three_decimals_beside_the_backends_own() {
        let mut headers = HeaderMap::new();
        headers.insert(SERVER_TIMING, HeaderValue::from_static("db;dur=5"));
        add(&mut headers, Duration::from_micros(42), Duration::from_micros(13_100_007));
        let all: Vec<&str> = headers.get_all(SERVER_TIMING).iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(all, ["db;dur=5", "gw;dur=0.042, backend;dur=13100.007"]);
    }
}
