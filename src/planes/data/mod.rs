//! The request pipeline. Each stage lives in its own module; this one wires them in order:
//!
//! 0. **check the head**: exactly one `Host` on HTTP/1.1, never two (400 `InvalidHost`).
//!    `GET /v1/models` and `/openai/models` are answered here from the key's deployments.
//! 1. **route** ([`route`]): method + path → API operation and addressing mode. Unknown path 404,
//!    wrong method 405.
//! 2. **find the deployment** ([`find`]): host label, `/openai/deployments/{name}`, `azureml-model-deployment`
//!    header; when none names one, the presented key's digest is looked up in the table
//!    ([`DeploymentTable::for_key`]): a key that is nobody's is a 401 before any body byte is read;
//!    otherwise the body's `model` (read now) or, without one, the key's only deployment. 404 / 400.
//! 3. **authenticate** ([`auth`]): `api-key` or `Authorization: Bearer` against the deployment's two
//!    key digests, constant-time. Adds the key slot. 401. `GET /info` leaves the pipeline here
//!    ([`info`]): not admitted, answered from a copy kept for 10 s.
//! 4. **read the body** ([`body`]): bounded by `server.max_body_bytes` (413), validated as a JSON
//!    object in one pass that also reads `model` and `stream` (400).
//!    The same pass **estimates** the prompt tokens ([`crate::core::estimate`]).
//! 5. **admit** ([`crate::core::quota`]): one request and prompt + completion reservation taken from the
//!    deployment's two buckets together, or 429 with an exact `retry-after-ms` (400 when the
//!    reservation exceeds the whole capacity). Adds the quota state for the response headers and
//!    a [`Reservation`] that must be settled.
//! 6. **forward** ([`forward`]): pooled hyper client, client key and hop-by-hop headers removed,
//!    backend key set; waits for the response head up to the first-byte timeout (502/504, the
//!    reservation refunded).
//! 7. **stream back and reconcile** ([`metered_body::MeteredBody`]): the backend body passes
//!    through frame by frame while a scanner reads `usage` (or the streamed text); at the end, on a
//!    break or when the client goes away the reservation is settled to the real count. A client
//!    that asked for `include_usage` from a backend that sends none gets the gateway's usage chunk
//!    before `[DONE]` ([`crate::core::meter::usage_chunk`]).
//! 8. **record**: the [`UsageSink`] gets one record per authenticated request; one access log
//!    line per request. Responses get `x-request-id` / `apim-request-id`, the client's
//!    `x-ms-client-request-id` echoed, and the `x-ratelimit-*` / `RateLimit` headers. An HTTP/2
//!    body left unread by a refusal is drained in the background ([`body::drain_after_refusal`]).

pub mod admit;
pub mod auth;
pub mod body;
pub mod count;
pub mod error;
pub mod failover;
pub mod find;
pub mod forward;
pub mod health_check;
pub mod info;
pub mod metered_body;
pub mod models;
pub mod names;
pub mod preflight;
pub mod quota_headers;
pub mod reconcile;
pub mod route;
pub mod server_timing;

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;

use crate::config::Config;
use arc_swap::ArcSwap;

use crate::core::api::ApiRoute;
use crate::core::clock::Clock;
use crate::core::estimate::Estimate;
use crate::core::keys::KeySlot;
use crate::core::meter::Counts;
use crate::core::meter::usage_chunk::UsageChunk;
use crate::core::quota::{LimitKind, QuotaState};
use crate::core::worker::Worker;
use crate::planes::data::count::Counter;
use crate::planes::data::error::ApiError;
use crate::planes::data::metered_body::{MeteredBody, Metering, StreamLimits};
use crate::planes::data::quota_headers::set_quota_headers;
use crate::planes::data::reconcile::{RequestFacts, Reservation};
use crate::state::consumer::ConsumerGrant;
use crate::state::deployment::{Deployment, DeploymentTable, Health};
use crate::state::metrics::{Metrics, metric_status};
use crate::state::quota_store::{ConsumerAdmission, QuotaStore};
use crate::state::record::{Outcome, UsageSink};
use crate::state::request_id::RequestId;
use body::ProxyBody;
use forward::BackendClient;

/// The data plane: everything a request needs, shared by all connections.
pub struct Gateway {
    /// Published by the control plane; swapped whole on every change, read without a lock.
    deployments: Arc<ArcSwap<DeploymentTable>>,
    backend: BackendClient,
    /// The active health checks' own pools (they run on the main runtime, not on a worker's).
    health_client: BackendClient,
    max_body_bytes: usize,
    /// Write `Server-Timing` on forwarded answers.
    server_timing: bool,
    body_read_timeout: std::time::Duration,
    metering: Metering,
    sink: Arc<dyn UsageSink>,
    metrics: Arc<Metrics>,
    quota: QuotaStore,
    /// The wall clock requests are stamped with (their ledger time, the periods they count in).
    clock: Arc<dyn Clock>,
}

/// What is known about a request so far, filled in as it goes through the stages.
#[derive(Default)]
struct Trace {
    route: Option<ApiRoute>,
    deployment: Option<Arc<Deployment>>,
    key_slot: Option<KeySlot>,
    /// The consumer calling, when it is a consumer's key.
    consumer: Option<ConsumerGrant>,
    estimated_prompt_tokens: u64,
    /// The binding level's buckets after admission (or at the denial), for the response headers.
    quota: Option<QuotaState>,
    /// A consumer's levels after admission, for the headers that list every policy.
    consumer_quota: Option<ConsumerAdmission>,
    /// A reservation was made: it records the request when settled.
    reserved: bool,
    /// The limit a 429 was for.
    limited_by: Option<LimitKind>,
    /// How a request that was never admitted ended, when not a rejection (`/info` is served
    /// without admission).
    outcome: Option<Outcome>,
    /// The request body while not read to its end (a refusal may come before or midway).
    unread: Option<Incoming>,
    /// How long it was held waiting for the buckets, when it was (`x-ms-queued-ms`).
    queued: Option<std::time::Duration>,
}

impl Gateway {
    pub fn new(
        config: &Config,
        deployments: Arc<ArcSwap<DeploymentTable>>,
        sink: Arc<dyn UsageSink>,
        metrics: Arc<Metrics>,
        quota: QuotaStore,
        clock: Arc<dyn Clock>,
    ) -> Gateway {
        crate::core::estimate::Tokenizer::Bpe.warm_up();
        Gateway {
            deployments,
            backend: BackendClient::new(&config.backend),
            health_client: BackendClient::new(&crate::config::BackendSettings { workers: 1, ..config.backend.clone() }),
            max_body_bytes: config.server.max_body_bytes,
            server_timing: config.server.server_timing,
            body_read_timeout: config.server.limits.body_read_timeout,
            metering: Metering {
                limits: StreamLimits {
                    idle: config.backend.stream_idle_timeout,
                    total: config.backend.response_timeout,
                },
                counter: Counter::new(),
            },
            sink,
            metrics,
            quota,
            clock,
        }
    }

    /// Where the completion text of answers without `usage` is counted (shutdown waits for it).
    pub fn counter(&self) -> &Counter {
        &self.metering.counter
    }

    /// Where admission takes from.
    pub fn quota_store(&self) -> &QuotaStore {
        &self.quota
    }

    /// The current deployment table, owned (callers may hold it across awaits: the admin
    /// listener reads the shared store for each deployment).
    pub fn deployments(&self) -> Arc<DeploymentTable> {
        self.deployments.load_full()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Shutdown: every deployment's waiting requests are answered 503, and none queue again.
    pub fn close_queues(&self) {
        for deployment in self.deployments.load().iter() {
            if let Some(queue) = &deployment.queue {
                queue.close();
            }
        }
    }

    /// Serves one request. Never fails: every error becomes the API's error response.
    /// `worker` is the data-plane worker the connection is served on (its backend pools are used).
    pub async fn handle(&self, request: Request<Incoming>, worker: Worker) -> Response<ProxyBody> {
        let started = Instant::now();
        let started_at = self.clock.wall();
        let request_id = RequestId::generate();
        let client_request_id = request.headers().get(names::X_MS_CLIENT_REQUEST_ID).cloned();
        let version = request.version();
        let mut trace = Trace::default();
        let (mut response, error_label) =
            match self.serve(request, worker, &request_id, (started, started_at), &mut trace).await {
                Ok(response) => (response, None),
                Err(error) => {
                    let label = error.metric_label();
                    (error.into_response(), Some(label))
                }
            };
        let headers = response.headers_mut();
        headers.insert(names::X_REQUEST_ID, request_id.header().clone());
        headers.insert(names::APIM_REQUEST_ID, request_id.header().clone());
        if let Some(id) = client_request_id {
            headers.entry(names::X_MS_CLIENT_REQUEST_ID).or_insert(id);
        }
        if let Some(state) = &trace.quota {
            set_quota_headers(headers, state, trace.consumer_quota.as_ref());
        }
        if let Some(queued) = trace.queued {
            headers.insert(names::X_MS_QUEUED_MS, http::HeaderValue::from(queued.as_millis() as u64));
        }
        if let Some(body) = trace.unread.take() {
            body::drain_after_refusal(version, body, self.max_body_bytes, self.body_read_timeout);
        }
        let status = response.status().as_u16();
        match (trace.reserved, &trace.deployment, trace.key_slot, trace.route) {
            // Admitted: the reservation records the request when it settles.
            (true, ..) => {}
            // Authenticated but never admitted (bad body, 429, ...): recorded here.
            (false, Some(deployment), Some(key_slot), Some(route)) => {
                let facts = RequestFacts {
                    deployment: Arc::clone(deployment),
                    key_slot,
                    consumer: trace.consumer.take(),
                    route,
                    request_id: request_id.clone(),
                    started,
                    started_at,
                    estimated_prompt_tokens: trace.estimated_prompt_tokens,
                    limited_by: trace.limited_by,
                    queued: trace.queued,
                };
                let mut record = facts.unbilled(status, trace.outcome.unwrap_or(Outcome::Rejected));
                record.refusal = error_label;
                self.sink.record(record);
            }
            // Not authenticated: no usage record, only metrics and the access log.
            _ => {
                if let (Some(deployment), Some(route)) = (&trace.deployment, trace.route) {
                    let name = deployment.counter_label();
                    self.metrics.requests.with_label_values(&[name, route.label(), metric_status(status)]).inc();
                    if status == 401 {
                        self.metrics.auth_failures.with_label_values(&[name]).inc();
                    }
                } else if status == 401 {
                    // A key that is nobody's on a request that named no deployment.
                    self.metrics.auth_failures.with_label_values(&["-"]).inc();
                }
                tracing::info!(
                    target: "tollgate::access",
                    request_id = request_id.as_str(),
                    deployment = trace.deployment.as_deref().map_or("-", |d| d.name.as_str()),
                    route = trace.route.map_or("-", ApiRoute::label),
                    status,
                    error = error_label.unwrap_or("-"),
                    duration_us = started.elapsed().as_micros() as u64,
                );
            }
        }
        response
    }

    async fn serve(
        &self,
        request: Request<Incoming>,
        worker: Worker,
        request_id: &RequestId,
        (started, started_at): (Instant, SystemTime),
        trace: &mut Trace,
    ) -> Result<Response<ProxyBody>, ApiError> {
        let (parts, incoming) = request.into_parts();
        trace.unread = Some(incoming);
        route::check_host(parts.version, &parts.headers)?;
        if let Some(query) = route::models_query(&parts.method, parts.uri.path())? {
            return self.models(&parts.headers, query);
        }
        let routed = route::route(&parts.method, parts.uri.path())?;
        let route = routed.route;
        trace.route = Some(route);

        // Stage 2: the deployment ([`find`]).
        let find::Found { deployment, digest, body } =
            self.find_deployment(&parts, routed.addressing, route, trace).await?;
        trace.deployment = Some(Arc::clone(&deployment));

        // Stage 3: authenticate before reading a body we have not read yet.
        let caller = auth::authenticate(&deployment, &parts.headers, digest, || self.deployments.load())?;
        trace.key_slot = Some(caller.key_slot);
        trace.consumer.clone_from(&caller.consumer);
        if let Health::Unhealthy(reason) = &deployment.health {
            return Err(ApiError::DeploymentUnhealthy { reason: reason.clone() });
        }
        // Read before the body, so that a bad value costs no body read; and only where waiting
        // is on (elsewhere the header means nothing, and looking it up costs ~300 instructions).
        let asked = if deployment.waiting_room().is_some() { names::max_wait(&parts.headers)? } else { None };

        // `/info` is metadata: not charged to the quota, answered from a short-lived copy.
        if route == ApiRoute::Info {
            trace.unread = None;
            return self.info(&deployment, parts, worker, trace).await;
        }

        // Stage 4: the body, bounded, validated and estimated in one pass.
        let body = match body {
            Some(bytes) => bytes,
            None if route.has_json_body() => self.read_body(&parts, &mut trace.unread).await?,
            None => Bytes::new(),
        };
        trace.unread = None;
        let estimate = if route.has_json_body() {
            body::estimate_off_worker(route, &body, deployment.tokenizer).await?
        } else {
            Estimate::default()
        };
        trace.estimated_prompt_tokens = estimate.prompt_tokens;

        // Stage 5: admission ([`admit`]).
        let completion = estimate.completion_reservation(route, deployment.default_max_tokens);
        let reserve = admit::Reserve { prompt: estimate.prompt_tokens, completion };
        let reserved = reserve.total();
        let now_unix = crate::core::clock::unix_seconds(started_at);
        if preflight::asked(parts.uri.query()) {
            return self.preflight(&deployment, &caller, reserve, now_unix, asked, trace).await;
        }
        let admit::Taken { hold, consumer } = self.admit(&deployment, &caller, reserve, now_unix, asked, trace).await?;
        let facts = RequestFacts {
            deployment: Arc::clone(&deployment),
            key_slot: caller.key_slot,
            consumer: caller.consumer,
            route,
            request_id: request_id.clone(),
            started,
            started_at,
            estimated_prompt_tokens: estimate.prompt_tokens,
            limited_by: None,
            queued: trace.queued,
        };
        let mut reservation = Reservation::new(facts, reserved, hold, consumer, Arc::clone(&self.sink));
        trace.reserved = true;

        // Stages 6 and 7: forward over the pool, and stream the answer back as it comes, metering it.
        let forwarded = Instant::now();
        match self.forward_over_pool(&deployment, route, parts, body, worker, reserved).await {
            Ok(failover::Forwarded { mut response, attempt, backend, attempts }) => {
                // A pool's ledger line names the backend; a one-backend deployment's needs not.
                let named = (deployment.pool.len() > 1).then_some(backend);
                reservation.served_by(attempt, named, attempts);
                let first_byte = forwarded.elapsed();
                let overhead = started.elapsed().saturating_sub(first_byte);
                let name = deployment.name.as_str();
                self.metrics.observe_forwarded(&deployment, first_byte, overhead);
                if self.server_timing {
                    server_timing::add(response.headers_mut(), overhead, first_byte);
                }
                let status = response.status();
                let event_stream = response
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
                let usage_chunk = match route {
                    _ if !(estimate.stream && estimate.include_usage) => None,
                    ApiRoute::ChatCompletions => Some("chat.completion.chunk"),
                    ApiRoute::Completions => Some("text_completion"),
                    _ => None,
                }
                .map(|object| UsageChunk::new(object, name, request_id.as_str()));
                Ok(response.map(|b| {
                    ProxyBody::Backend(MeteredBody::new(
                        b,
                        status,
                        event_stream,
                        reservation,
                        &self.metering,
                        usage_chunk,
                    ))
                }))
            }
            Err(failover::Failed { error, attempts }) => {
                let kind = backend_error_kind(&error);
                if let Some(kind) = kind {
                    self.metrics.backend_errors.with_label_values(&[deployment.counter_label(), kind]).inc();
                }
                reservation.attempted(attempts);
                let outcome = if kind.is_some() { Outcome::BackendFailed } else { Outcome::Rejected };
                reservation.settle(error.status().as_u16(), outcome, Counts::NONE);
                Err(error)
            }
        }
    }
}

/// The `kind` label of `tollgate_backend_errors_total` for a failed forward; `None` when the
/// pool refused it without a failure (all busy, too small).
fn backend_error_kind(error: &ApiError) -> Option<&'static str> {
    match error {
        ApiError::BackendUnreachable { .. } => Some("connect"),
        ApiError::BackendTimeout { .. } => Some("timeout"),
        ApiError::BackendsBusy { .. } | ApiError::BackendCapacityExceeded { .. } => None,
        ApiError::BackendsUnavailable { .. } => Some("unavailable"),
        _ => Some("protocol"),
    }
}
