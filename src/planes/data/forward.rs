//! Stage 6, forward: one attempt to one backend of the deployment's pool through its pooled
//! client ([`BackendClient`], held in the state layer), and the header rewriting around it. The
//! attempts over the pool (retries, failover) are in [`super::failover`].

use std::error::Error as _;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::{Method, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::core::api::ApiRoute;
use crate::core::worker::Worker;
use crate::planes::data::error::ApiError;
use crate::planes::data::names;
use crate::state::pool::PoolBackend;
pub use crate::state::upstream::BackendClient;

impl BackendClient {
    /// Sends one attempt to `backend` and waits (up to `timeout`) for the response head. The
    /// body is not read here. `headers` are the client's, as [`client_headers`] left them.
    #[allow(clippy::too_many_arguments)]
    pub async fn send(
        &self,
        deployment: &str,
        backend: &PoolBackend,
        route: ApiRoute,
        method: Method,
        query: Option<&str>,
        mut headers: HeaderMap,
        body: Bytes,
        worker: Worker,
        timeout: Duration,
    ) -> Result<Response<Incoming>, ApiError> {
        let uri = backend.url.uri_for(route.path(), query).map_err(|e| ApiError::BackendProtocol {
            deployment: deployment.to_owned(),
            reason: format!("cannot address backend '{}': {e}", backend.name),
        })?;
        if let Some(auth) = &backend.auth {
            headers.insert(names::API_KEY, auth.api_key.clone());
            headers.insert(header::AUTHORIZATION, auth.bearer.clone());
        }
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        let client = self.pool(backend.http2, worker);
        let response = tokio::time::timeout(timeout, client.request(request))
            .await
            .map_err(|_| ApiError::BackendTimeout {
                deployment: deployment.to_owned(),
                what: "send a response",
                timeout_ms: timeout.as_millis() as u64,
            })?
            .map_err(|e| self.classify(deployment, backend, e))?;
        let (mut head, body) = response.into_parts();
        strip_hop_by_hop(&mut head.headers);
        Ok(Response::from_parts(head, body))
    }

    fn classify(&self, deployment: &str, backend: &PoolBackend, error: hyper_util::client::legacy::Error) -> ApiError {
        let reason = format!("backend '{}': {}", backend.name, error_chain(&error));
        if error.is_connect() {
            if has_timed_out(&error) {
                ApiError::BackendTimeout {
                    deployment: deployment.to_owned(),
                    what: "accept a connection",
                    timeout_ms: self.connect_timeout().as_millis() as u64,
                }
            } else {
                ApiError::BackendUnreachable { deployment: deployment.to_owned(), reason }
            }
        } else {
            ApiError::BackendProtocol { deployment: deployment.to_owned(), reason }
        }
    }
}

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1). A `const`, not a
/// `static`: compared against constants the check below is ~800 instructions cheaper a request
/// (callgrind).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers, including those the `Connection` header lists.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Usually there are none: one pass over the few names present is cheaper than ten removes
    // (each a hash and a probe).
    if !headers.keys().any(|name| name == header::UPGRADE || HOP_BY_HOP.contains(name)) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in listed {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

/// Client headers as every backend should see them: no client key, no routing header, no
/// hop-by-hop headers, and the exact body length. Each attempt adds its backend's own key.
pub fn client_headers(headers: &mut HeaderMap, body_len: usize) {
    strip_hop_by_hop(headers);
    headers.remove(header::HOST);
    headers.remove(names::API_KEY);
    headers.remove(header::AUTHORIZATION);
    headers.remove(names::AZUREML_MODEL_DEPLOYMENT);
    if body_len > 0 || headers.contains_key(header::CONTENT_LENGTH) {
        headers.insert(header::CONTENT_LENGTH, http::HeaderValue::from(body_len));
    }
}

fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn has_timed_out(error: &hyper_util::client::legacy::Error) -> bool {
    let mut source = error.source();
    while let Some(cause) = source {
        if cause.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut) {
            return true;
        }
        source = cause.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn hop_by_hop_and_connection_listed_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret-hop"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert("extra-parameters", HeaderValue::from_static("pass-through"));
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-secret-hop").is_none());
        assert!(h.get(header::TRANSFER_ENCODING).is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert_eq!(h["extra-parameters"], "pass-through");
        for alone in [header::UPGRADE, HeaderName::from_static("keep-alive"), header::TE] {
            let mut h = HeaderMap::new();
            h.insert(alone.clone(), HeaderValue::from_static("x"));
            h.insert("extra-parameters", HeaderValue::from_static("pass-through"));
            strip_hop_by_hop(&mut h);
            assert!(h.get(&alone).is_none(), "{alone} goes without a Connection header");
            assert_eq!(h.len(), 1);
        }
    }
}
