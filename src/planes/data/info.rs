//! `GET /info`: model metadata that clients (LangChain's `langchain-azure-ai`, the Azure SDK's
//! `get_model_info()`) fetch before chatting. It is not charged to the request bucket, and the
//! backend's answer is kept per deployment for [`INFO_TTL`] so that free calls cannot flood the
//! backend: one fetch at a time per deployment, later callers get the kept answer.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header, request};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::body::ProxyBody;
use std::sync::Arc;

use super::{Gateway, Trace, backend_error_kind};
use crate::core::api::ApiRoute;
use crate::core::clock::Clock;
use crate::planes::data::error::ApiError;
use crate::state::deployment::Deployment;
use crate::state::deployment::{InfoCache, Kept};
use crate::state::record::Outcome;

/// How long a backend's `/info` answer is served from memory.
pub const INFO_TTL: Duration = Duration::from_secs(10);
/// An `/info` answer is a few hundred bytes; anything past this is not metadata.
const MAX_INFO_BODY: usize = 64 * 1024;

impl Kept {
    fn response(&self, cached: bool) -> Response<ProxyBody> {
        let mut response = Response::new(ProxyBody::full(self.body.clone()));
        let headers = response.headers_mut();
        if let Some(value) = &self.content_type {
            headers.insert(header::CONTENT_TYPE, value.clone());
        }
        headers.insert("x-tollgate-info-cache", HeaderValue::from_static(if cached { "hit" } else { "miss" }));
        response
    }
}

impl InfoCache {
    /// The kept answer while fresh; otherwise `fetch` (the backend's response head), read whole
    /// within `body_timeout` and kept when it is a 200.
    pub async fn get_or_fetch<F>(
        &self,
        deployment: &str,
        clock: &dyn Clock,
        body_timeout: Duration,
        fetch: F,
    ) -> Result<Response<ProxyBody>, ApiError>
    where
        F: Future<Output = Result<Response<Incoming>, ApiError>>,
    {
        let mut slot = self.slot().lock().await;
        let now = clock.now_ns();
        if let Some(kept) = slot.as_ref().filter(|k| now.saturating_sub(k.at_ns) < INFO_TTL.as_nanos() as u64) {
            return Ok(kept.response(true));
        }
        let (head, body) = fetch.await?.into_parts();
        let read = Limited::new(body, MAX_INFO_BODY).collect();
        let body = match tokio::time::timeout(body_timeout, read).await {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) => {
                return Err(ApiError::BackendProtocol {
                    deployment: deployment.to_owned(),
                    reason: format!("its /info answer could not be read: {e}"),
                });
            }
            Err(_) => {
                return Err(ApiError::BackendTimeout {
                    deployment: deployment.to_owned(),
                    what: "send its /info answer",
                    timeout_ms: body_timeout.as_millis() as u64,
                });
            }
        };
        let kept = Kept { at_ns: now, content_type: head.headers.get(header::CONTENT_TYPE).cloned(), body };
        if head.status == StatusCode::OK {
            let response = kept.response(false);
            *slot = Some(kept);
            return Ok(response);
        }
        // Not kept: an error answer passes through as the backend gave it.
        let mut response = kept.response(false);
        *response.status_mut() = head.status;
        for name in ["x-ms-error-code", "retry-after", "retry-after-ms"] {
            if let Some(value) = head.headers.get(name) {
                response.headers_mut().insert(name, value.clone());
            }
        }
        Ok(response)
    }
}

impl Gateway {
    /// `GET /info` for an authenticated caller: the backend's answer, kept for
    /// [`INFO_TTL`]; no admission (the buckets are read for the headers only).
    pub(super) async fn info(
        &self,
        deployment: &Arc<Deployment>,
        parts: request::Parts,
        worker: crate::core::worker::Worker,
        trace: &mut Trace,
    ) -> Result<Response<ProxyBody>, ApiError> {
        // Through the pool like any request (reserving no tokens); the attempt ends with the head.
        let fetch = async {
            // Boxed: inside the cache's generic future, the attempts' state (~2 KiB) grew the
            // whole request future, which hyper moves three times a request (callgrind: +8k
            // instructions of memcpy a request, on every route).
            match Box::pin(self.forward_over_pool(deployment, ApiRoute::Info, parts, Bytes::new(), worker, 0)).await {
                Ok(forwarded) => {
                    forwarded.attempt.settle(0);
                    Ok(forwarded.response)
                }
                Err(failed) => Err(failed.error),
            }
        };
        let answer = deployment
            .info
            .get_or_fetch(&deployment.name, deployment.pool.clock().as_ref(), self.metering.limits.total, fetch)
            .await;
        trace.quota = self.quota.state(deployment).await;
        match answer {
            Ok(response) => {
                trace.outcome = Some(Outcome::Completed);
                Ok(response)
            }
            Err(error) => {
                if let Some(kind) = backend_error_kind(&error) {
                    self.metrics.backend_errors.with_label_values(&[deployment.counter_label(), kind]).inc();
                }
                trace.outcome = Some(Outcome::BackendFailed);
                Err(error)
            }
        }
    }
}
