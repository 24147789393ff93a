//! The admin listener: liveness and readiness (the control plane API and metrics hang here later).

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use crate::error::error_response;
use crate::gateway::body::ProxyBody;

/// Answers one admin request.
pub async fn handle(request: Request<Incoming>) -> Response<ProxyBody> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/healthz") => json(StatusCode::OK, r#"{"status":"ok"}"#),
        (&Method::GET, "/readyz") => json(StatusCode::OK, r#"{"status":"ready"}"#),
        (_, "/healthz" | "/readyz") => error_response(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "use GET"),
        _ => error_response(StatusCode::NOT_FOUND, "NotFound", "admin routes: GET /healthz, GET /readyz"),
    }
}

fn json(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
