//! The responses both listeners answer with: the API's error JSON (`{"error":{"code","message",
//! "status"}}` with `x-ms-error-code`, made here and nowhere else) and JSON bodies.

use std::fmt::Write as _;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

/// Builds `{"error":{"code","message","status"}}` with `x-ms-error-code`. The only place the error JSON is made.
pub fn error_response<B: From<Bytes>>(status: StatusCode, code: &'static str, message: &str) -> Response<B> {
    let mut body = String::with_capacity(64 + code.len() + message.len());
    body.push_str("{\"error\":{\"code\":");
    push_json_string(&mut body, code);
    body.push_str(",\"message\":");
    push_json_string(&mut body, message);
    let _ = write!(body, ",\"status\":{}}}}}", status.as_u16());
    let mut response = Response::new(B::from(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert("x-ms-error-code", HeaderValue::from_static(code));
    response
}

fn push_json_string(out: &mut String, value: &str) {
    // serde_json escapes correctly; writing a &str to a String cannot fail.
    match serde_json::to_string(value) {
        Ok(quoted) => out.push_str(&quoted),
        Err(_) => out.push_str("\"\""),
    }
}

/// A 200 with a JSON body.
pub fn json_response<B: From<Bytes>>(body: String) -> Response<B> {
    let mut response = Response::new(B::from(Bytes::from(body)));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// RFC 9112 §3.2: an HTTP/1.1 request carries exactly one `Host`; none at all, or two, is a 400
/// (`InvalidHost`, on both listeners). HTTP/1.0 may omit it and HTTP/2 names the authority in
/// `:authority`, but neither may send two. The problem, when there is one.
pub fn host_problem(version: http::Version, headers: &http::HeaderMap) -> Option<&'static str> {
    let mut hosts = headers.get_all(http::header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => {
            Some("the request has more than one Host header; send exactly one (RFC 9112, section 3.2)")
        }
        (None, _) if version == http::Version::HTTP_11 => {
            Some("an HTTP/1.1 request needs a Host header (RFC 9112, section 3.2); send the gateway's host name")
        }
        _ => None,
    }
}
