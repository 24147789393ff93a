//! Prometheus metrics, registered once on a registry that is passed in (no globals).
//!
//! Names follow Prometheus conventions (base units, `_total` counters, `_seconds` histograms) and
//! label sets stay bounded: deployments (from the configuration), routes, status codes, limit
//! kinds. Never keys, never request ids.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;
use std::time::Duration;

use prometheus::core::{Collector, MetricVec, MetricVecBuilder};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::config::metrics::DeploymentDetail;
use crate::core::billing::Meter;
use crate::core::meter::CountSource;
use crate::core::pool::health::Status;
use crate::core::quota::period::PeriodKind;
use crate::core::quota::{LimitKind, QuotaState};
use crate::state::consumer::Consumer;
use crate::state::deployment::{Deployment, DeploymentTable};
use crate::state::pool::PoolBackend;
use crate::state::quota_store::PeriodReading;
use crate::state::record::{Outcome, UsageRecord};
use crate::state::scrape_gauges::GaugeFamily;

/// Latency buckets from 10 µs to 5 minutes, fine enough to see the gateway's own tens of
/// microseconds and wide enough for long completions.
const LATENCY_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];
/// Estimated / reported prompt tokens around 1.
const RATIO_BUCKETS: &[f64] = &[0.5, 0.75, 0.9, 0.95, 0.98, 1.0, 1.02, 1.05, 1.1, 1.25, 1.5, 2.0, 3.0];

pub struct Metrics {
    pub registry: Registry,
    /// The gateway-wide histograms' series, resolved once.
    wide: Histograms,
    pub requests: IntCounterVec,
    pub ratelimit_rejections: IntCounterVec,
    pub auth_failures: IntCounterVec,
    pub tokens: IntCounterVec,
    pub request_duration: HistogramVec,
    pub backend_first_byte: HistogramVec,
    pub overhead: HistogramVec,
    /// How long held requests waited, by how it ended.
    pub queue_wait: HistogramVec,
    pub open_connections: IntGauge,
    pub backend_errors: IntCounterVec,
    /// Per backend of a pool.
    pub backend_attempts: IntCounterVec,
    pub backend_ejections: IntCounterVec,
    pub retries: IntCounterVec,
    pub backend_health_checks: IntCounterVec,
    pub backend_state: IntGaugeVec,
    pub backend_inflight: IntGaugeVec,
    pub backend_ratelimit_remaining: IntGaugeVec,
    pub prompt_estimate_ratio: HistogramVec,
    pub ledger_records: IntCounter,
    pub ledger_dropped: IntCounter,
    pub ledger_write_errors: IntCounter,
    /// 1 while the shared quota store (Redis) answers, 0 while it does not; always 1 with the memory store.
    pub quota_store_up: IntGauge,
    pub quota_store_errors: IntCounterVec,
    pub quota_store_fallbacks: IntCounterVec,
    pub quota_store_recoveries: IntCounter,
    pub quota_store_duration: HistogramVec,
    /// Per consumer (`project/name`, bounded by [`crate::config::MAX_CONSUMERS`]) and deployment.
    pub consumer_requests: IntCounterVec,
    pub consumer_tokens: IntCounterVec,
    pub consumer_rejections: IntCounterVec,
    /// Share of each period quota used (read at scrape time).
    pub consumer_quota_used_ratio: prometheus::GaugeVec,
    pub consumer_quota_limit: IntGaugeVec,
    /// Cost in micro-units by project, subscription, meter and currency (bounded by the
    /// deployments: each has one project and at most one subscription).
    pub cost: IntCounterVec,
    /// Budgets (at most [`crate::config::billing::MAX_BUDGETS`]): thresholds reached, and the
    /// share spent (at scrape).
    pub budget_crossings: IntCounterVec,
    pub budget_spent_ratio: prometheus::GaugeVec,
    pub webhook_deliveries: IntCounterVec,
    /// Reloads of the configuration file (watcher, SIGHUP, `POST /reload`), by result.
    pub config_reloads: IntCounterVec,
    /// 1 when the last reload was applied (or none was tried), 0 when it was refused.
    pub config_last_reload_successful: IntGauge,
}

/// A deployment's buckets as read for a scrape: its own, and each pool backend's (in pool order;
/// `None` for a backend without limits, or for buckets a shared store cannot read now).
#[derive(Clone, Debug, Default)]
pub struct QuotaReading {
    pub deployment: Option<QuotaState>,
    pub backends: Vec<Option<QuotaState>>,
}

/// [`DeploymentSeries`] made on the deployment's first request: 224 bytes an idle deployment does
/// not keep (10,000 of them idle should cost little). A served one reads the box's pointer, in
/// a line the request reads anyway, where it read the series inline.
#[derive(Default)]
pub struct LazySeries(OnceLock<Box<DeploymentSeries>>);

impl std::ops::Deref for LazySeries {
    type Target = DeploymentSeries;
    fn deref(&self) -> &DeploymentSeries {
        self.0.get_or_init(Default::default)
    }
}

impl std::fmt::Debug for LazySeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazySeries").field("made", &self.0.get().is_some()).finish()
    }
}

/// A deployment's busiest series, each resolved on its first use and kept with the deployment:
/// a label lookup hashes every label value and probes a locked map (~170 instructions a label;
/// a request made seven lookups). Series that are not cached here (errors, 429s, other statuses)
/// are looked up as before.
#[derive(Default)]
pub struct DeploymentSeries {
    /// By route: `requests_total{code="200"}`.
    ok: [OnceLock<IntCounter>; ROUTES],
    /// Reported prompt and completion tokens.
    reported_prompt: OnceLock<IntCounter>,
    reported_completion: OnceLock<IntCounter>,
    /// `tollgate_cost_total` of its input and output meters.
    cost: OnceLock<[IntCounter; 2]>,
    /// Its own histograms, with full detail (others observe into [`Metrics`]'s gateway-wide
    /// ones, which every request of them shares: a hot cache line, not one of each deployment).
    histograms: Histograms,
}

/// The histograms a request observes, resolved on first use: a deployment's own (full detail)
/// or the gateway-wide ones (`deployment=""`).
#[derive(Default)]
pub struct Histograms {
    first_byte: OnceLock<Histogram>,
    overhead: OnceLock<Histogram>,
    /// By route: the request duration.
    durations: [OnceLock<Histogram>; ROUTES],
    estimate_ratio: OnceLock<Histogram>,
}

/// A consumer's busiest series on one of its deployments (served requests and their tokens),
/// resolved on first use and kept with its grant.
pub struct ConsumerSeries {
    ok: IntCounter,
    prompt: IntCounter,
    completion: IntCounter,
}

impl std::fmt::Debug for ConsumerSeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerSeries").finish_non_exhaustive()
    }
}

/// The routes [`DeploymentSeries`] keeps series for (by `ApiRoute as usize`).
const ROUTES: usize = 5;

impl std::fmt::Debug for DeploymentSeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeploymentSeries").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Histograms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histograms").finish_non_exhaustive()
    }
}

/// A metric could not be registered (a name clash: a programming error caught at start-up).
#[derive(Debug, thiserror::Error)]
#[error("cannot register metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

impl Metrics {
    pub fn new(registry: Registry) -> Result<Metrics, MetricsError> {
        let counter = |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, MetricsError> {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| -> Result<IntGaugeVec, MetricsError> {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let ratio = |name: &str, help: &str, labels: &[&str]| -> Result<prometheus::GaugeVec, MetricsError> {
            let g = prometheus::GaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let histogram =
            |name: &str, help: &str, labels: &[&str], buckets: &[f64]| -> Result<HistogramVec, MetricsError> {
                let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), labels)?;
                registry.register(Box::new(h.clone()))?;
                Ok(h)
            };
        let single = |name: &str, help: &str| -> Result<IntCounter, MetricsError> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let open_connections =
            IntGauge::new("tollgate_open_connections", "Client connections open on the gateway listener.")?;
        registry.register(Box::new(open_connections.clone()))?;
        let quota_store_up = IntGauge::new(
            "tollgate_quota_store_up",
            "1 while the shared quota store (Redis) answers, 0 while it does not (always 1 with the memory store).",
        )?;
        quota_store_up.set(1);
        registry.register(Box::new(quota_store_up.clone()))?;
        let config_last_reload_successful = IntGauge::new(
            "tollgate_config_last_reload_successful",
            "1 when the last reload of the configuration file was applied (or none was tried), 0 when it was refused.",
        )?;
        config_last_reload_successful.set(1);
        registry.register(Box::new(config_last_reload_successful.clone()))?;
        Ok(Metrics {
            wide: Histograms::default(),
            config_last_reload_successful,
            config_reloads: counter(
                "tollgate_config_reloads_total",
                "Reloads of the configuration file (file watcher, SIGHUP, POST /reload), by result (applied, refused).",
                &["result"],
            )?,
            quota_store_up,
            quota_store_errors: counter(
                "tollgate_quota_store_errors_total",
                "Failed or timed-out round trips to the shared quota store, by operation (admit, lease, reconcile, read, connect).",
                &["op"],
            )?,
            quota_store_fallbacks: counter(
                "tollgate_quota_store_fallbacks_total",
                "Requests decided without the shared quota store, by on_store_error mode (fail-open, fail-closed, local).",
                &["mode"],
            )?,
            quota_store_recoveries: single(
                "tollgate_quota_store_recoveries_total",
                "Times the shared quota store answered again after an outage.",
            )?,
            quota_store_duration: histogram(
                "tollgate_quota_store_duration_seconds",
                "Round trips to the shared quota store, by operation (admit, lease, read, reconcile).",
                &["op"],
                LATENCY_BUCKETS,
            )?,
            requests: counter(
                "tollgate_requests_total",
                "Requests that reached a deployment, by route and final status code.",
                &["deployment", "route", "code"],
            )?,
            ratelimit_rejections: counter(
                "tollgate_ratelimit_rejections_total",
                "Requests answered 429 because a quota bucket lacked room, by the limit that was hit.",
                &["deployment", "limit"],
            )?,
            auth_failures: counter(
                "tollgate_auth_failures_total",
                "Requests to a deployment with a missing or wrong key.",
                &["deployment"],
            )?,
            tokens: counter(
                "tollgate_tokens_total",
                "Tokens billed, by kind (prompt, completion) and source (reported by the backend, estimated by tollgate).",
                &["deployment", "kind", "source"],
            )?,
            request_duration: histogram(
                "tollgate_request_duration_seconds",
                "Time from a request's arrival to the end of its response body.",
                &["deployment", "route"],
                LATENCY_BUCKETS,
            )?,
            backend_first_byte: histogram(
                "tollgate_backend_first_byte_seconds",
                "Time from forwarding a request to the backend's response head.",
                &["deployment"],
                LATENCY_BUCKETS,
            )?,
            overhead: histogram(
                "tollgate_overhead_seconds",
                "Time tollgate itself adds before the response head: routing, body read, estimation, admission, proxying (request time to head minus the backend's time to first byte).",
                &["deployment"],
                LATENCY_BUCKETS,
            )?,
            queue_wait: histogram(
                "tollgate_queue_wait_seconds",
                "How long requests held for a deployment's rate limit waited, by outcome: admitted, timed_out (429 at its max wait), refused (429 once it could no longer fit in time), left (the client went away), shutdown (503).",
                &["deployment", "outcome"],
                LATENCY_BUCKETS,
            )?,
            open_connections,
            backend_attempts: counter(
                "tollgate_backend_attempts_total",
                "Attempts sent to each backend of a deployment's pool, by result (ok, throttled, server_error, connect, timeout, protocol).",
                &["deployment", "backend", "result"],
            )?,
            backend_ejections: counter(
                "tollgate_backend_ejections_total",
                "Times a backend was taken out of its pool by the circuit breaker (repeated failures, or a failed probe).",
                &["deployment", "backend"],
            )?,
            backend_health_checks: counter(
                "tollgate_backend_health_checks_total",
                "Active health checks (GET /info) of pool backends, by result (ok, server_error, bad_status, connect, timeout, protocol).",
                &["deployment", "backend", "result"],
            )?,
            retries: counter(
                "tollgate_retries_total",
                "Attempts beyond a request's first (sent to another backend after a 429, a 5xx or a failure).",
                &["deployment"],
            )?,
            backend_state: gauge(
                "tollgate_backend_state",
                "1 for each backend's current state (healthy, cooling after a 429, ejected by the circuit breaker), 0 for the others.",
                &["deployment", "backend", "state"],
            )?,
            backend_inflight: gauge(
                "tollgate_backend_inflight_requests",
                "Requests each backend is serving now (from the attempt until its response ends).",
                &["deployment", "backend"],
            )?,
            backend_ratelimit_remaining: gauge(
                "tollgate_backend_ratelimit_remaining",
                "What is left in the own buckets of a backend with limits (requests, tokens).",
                &["deployment", "backend", "limit"],
            )?,
            backend_errors: counter(
                "tollgate_backend_errors_total",
                "Backend failures by kind: connect, timeout, protocol (including streams broken midway).",
                &["deployment", "kind"],
            )?,
            prompt_estimate_ratio: histogram(
                "tollgate_prompt_estimate_ratio",
                "Estimated / reported prompt tokens, per response that reported usage.",
                &["deployment"],
                RATIO_BUCKETS,
            )?,
            ledger_records: single("tollgate_ledger_records_total", "Usage records written to the ledger.")?,
            ledger_dropped: single(
                "tollgate_ledger_records_dropped_total",
                "Usage records that could not be queued because the ledger buffer was full (each is also logged).",
            )?,
            ledger_write_errors: single(
                "tollgate_ledger_write_errors_total",
                "Failed writes or syncs of the ledger file.",
            )?,
            consumer_requests: counter(
                "tollgate_consumer_requests_total",
                "Requests of a consumer (project/name) on a deployment, by status code.",
                &["consumer", "deployment", "code"],
            )?,
            consumer_tokens: counter(
                "tollgate_consumer_tokens_total",
                "Tokens billed to a consumer on a deployment (reported or estimated), by kind.",
                &["consumer", "deployment", "kind"],
            )?,
            consumer_rejections: counter(
                "tollgate_consumer_rejections_total",
                "Requests of a consumer refused by a limit: rate_limited (429, a per-minute level), quota_exceeded (403, a period quota) or budget_exceeded (403, a hard budget).",
                &["consumer", "deployment", "reason"],
            )?,
            consumer_quota_used_ratio: ratio(
                "tollgate_consumer_quota_used_ratio",
                "Share of a consumer's period quota used in the current UTC period (1 = used up): scope is a deployment (the consumer's quota there) or * (over all its deployments).",
                &["consumer", "scope", "quota"],
            )?,
            cost: counter(
                "tollgate_cost_total",
                "What requests cost, in micro-units of the currency (1000000 = 1 USD), by the deployment's project, its subscription (empty when none) and meter (input / output tokens): exact integers up to 2^53.",
                &["project", "subscription", "meter", "currency"],
            )?,
            budget_crossings: counter(
                "tollgate_budget_threshold_crossings_total",
                "Budget thresholds reached, by budget, period (daily / monthly) and threshold (percent).",
                &["budget", "period", "threshold"],
            )?,
            budget_spent_ratio: ratio(
                "tollgate_budget_spent_ratio",
                "Share of a budget's amount spent in the current UTC day or month (1 = spent; a hard budget then refuses requests).",
                &["budget", "period"],
            )?,
            webhook_deliveries: counter(
                "tollgate_budget_webhooks_total",
                "Budget webhooks: delivered, retried (an attempt failed), failed (every attempt did) or dropped (queue full).",
                &["result"],
            )?,
            consumer_quota_limit: gauge(
                "tollgate_consumer_quota_limit",
                "A consumer's period quota (tokens or requests per UTC day or month).",
                &["consumer", "scope", "quota"],
            )?,
            registry,
        })
    }

    /// After a new table is published: removes the series of deployments that left it or whose
    /// `[metrics]` detail changed (they start again as the new detail says), and of consumers
    /// that left it, so a scrape holds only what exists. One pass over each family's series, and
    /// only when something left or changed.
    pub fn forget(&self, before: &DeploymentTable, after: &DeploymentTable) {
        let deployments: HashSet<&str> = before
            .iter()
            .filter(|d| after.get(&d.name).is_none_or(|now| now.metric_detail != d.metric_detail))
            .map(|d| d.name.as_str())
            .collect();
        let staying: HashSet<&str> = after.consumers().iter().map(|c| &*c.label).collect();
        let consumers: HashSet<&str> =
            before.consumers().iter().map(|c| &*c.label).filter(|c| !staying.contains(c)).collect();
        if !deployments.is_empty() {
            for vec in [
                &self.requests as &dyn Forget,
                &self.ratelimit_rejections,
                &self.auth_failures,
                &self.tokens,
                &self.request_duration,
                &self.backend_first_byte,
                &self.overhead,
                &self.queue_wait,
                &self.backend_errors,
                &self.backend_attempts,
                &self.backend_ejections,
                &self.retries,
                &self.backend_health_checks,
                &self.backend_state,
                &self.backend_inflight,
                &self.backend_ratelimit_remaining,
                &self.prompt_estimate_ratio,
                &self.consumer_requests,
                &self.consumer_tokens,
                &self.consumer_rejections,
            ] {
                vec.forget("deployment", &deployments);
            }
            self.consumer_quota_used_ratio.forget("scope", &deployments);
            self.consumer_quota_limit.forget("scope", &deployments);
        }
        if !consumers.is_empty() {
            for vec in [
                &self.consumer_requests as &dyn Forget,
                &self.consumer_tokens,
                &self.consumer_rejections,
                &self.consumer_quota_used_ratio,
                &self.consumer_quota_limit,
            ] {
                vec.forget("consumer", &consumers);
            }
        }
        if after.iter().next().is_some_and(|d| !d.metric_detail.consumers) {
            self.consumer_quota_used_ratio.reset();
            self.consumer_quota_limit.reset();
        }
    }

    /// Counts one reload of the configuration file.
    pub fn observe_reload(&self, applied: bool) {
        self.config_reloads.with_label_values(&[if applied { "applied" } else { "refused" }]).inc();
        self.config_last_reload_successful.set(i64::from(applied));
    }

    /// The histograms `deployment`'s requests observe: its own with full detail, else the
    /// gateway-wide ones.
    fn histograms<'a>(&'a self, deployment: &'a Deployment) -> &'a Histograms {
        if deployment.metric_detail.deployment == DeploymentDetail::Full {
            &deployment.series.histograms
        } else {
            &self.wide
        }
    }

    /// `tollgate_backend_first_byte_seconds` and `tollgate_overhead_seconds` of a forwarded request.
    pub fn observe_forwarded(&self, deployment: &Deployment, first_byte: Duration, overhead: Duration) {
        let name = deployment.detail_label();
        let series = self.histograms(deployment);
        series
            .first_byte
            .get_or_init(|| self.backend_first_byte.with_label_values(&[name]))
            .observe(first_byte.as_secs_f64());
        series.overhead.get_or_init(|| self.overhead.with_label_values(&[name])).observe(overhead.as_secs_f64());
    }

    /// Counts one attempt sent to a backend of a pool, by its result.
    pub fn observe_attempt(&self, deployment: &Deployment, backend: &PoolBackend, result: &str) {
        let labels = [deployment.counter_label(), deployment.backend_label(&backend.name), result];
        if result == "ok" {
            backend.series().ok.get_or_init(|| self.backend_attempts.with_label_values(&labels)).inc();
        } else {
            self.backend_attempts.with_label_values(&labels).inc();
        }
    }

    /// Counts one finished, authenticated request.
    pub fn observe(&self, record: &UsageRecord) {
        let series: &DeploymentSeries = &record.deployment.series; // made once here, not at each use
        let deployment = record.deployment.counter_label();
        let detail = record.deployment.detail_label();
        let route = record.route.label();
        let duration = record.duration.as_secs_f64();
        let histograms = self.histograms(&record.deployment);
        let at = record.route as usize;
        match series.ok.get(at).zip(histograms.durations.get(at)).filter(|_| record.status == 200) {
            Some((requests, durations)) => {
                requests.get_or_init(|| self.requests.with_label_values(&[deployment, route, "200"])).inc();
                durations.get_or_init(|| self.request_duration.with_label_values(&[detail, route])).observe(duration);
            }
            None => {
                self.requests.with_label_values(&[deployment, route, metric_status(record.status)]).inc();
                self.request_duration.with_label_values(&[detail, route]).observe(duration);
            }
        }
        match record.outcome {
            Outcome::BackendBroke => self.backend_errors.with_label_values(&[deployment, "protocol"]).inc(),
            Outcome::BackendStalled => self.backend_errors.with_label_values(&[deployment, "timeout"]).inc(),
            _ => {}
        }
        if let Some(limit) = record.limited_by {
            self.ratelimit_rejections.with_label_values(&[deployment, limit.as_str()]).inc();
        }
        if let Some(consumer) = record.consumer.as_ref().filter(|_| record.deployment.metric_detail.consumers) {
            self.observe_consumer(consumer, record);
        }
        if let Some(cost) = record.cost().filter(|c| c.total().0 > 0) {
            let d = &record.deployment;
            let [input, output] = series.cost.get_or_init(|| {
                let subscription = d.subscription_name().unwrap_or("");
                let labels = |meter: Meter| [d.project.as_str(), subscription, meter.as_str(), &*d.currency];
                [
                    self.cost.with_label_values(&labels(Meter::Input)),
                    self.cost.with_label_values(&labels(Meter::Output)),
                ]
            });
            input.inc_by(cost.input.0);
            output.inc_by(cost.output.0);
        }
        let source = match record.source {
            CountSource::Reported => "reported",
            CountSource::Estimated => "estimated",
            CountSource::None => return,
        };
        let reported = record.source == CountSource::Reported;
        if record.deployment.metric_detail.deployment == DeploymentDetail::Summary {
            // One series of the prompt and completion tokens together (the split is kept with
            // full detail, and gateway-wide with deployments = "off").
            let tokens = record.prompt_tokens + record.completion_tokens;
            if tokens > 0 {
                let total = || self.tokens.with_label_values(&[deployment, "total", source]);
                if reported { series.reported_prompt.get_or_init(total).inc_by(tokens) } else { total().inc_by(tokens) }
            }
        } else {
            self.observe_token_split(record, deployment, source);
        }
        if record.source == CountSource::Reported && record.prompt_tokens > 0 && record.estimated_prompt_tokens > 0 {
            let ratio = record.estimated_prompt_tokens as f64 / record.prompt_tokens as f64;
            histograms
                .estimate_ratio
                .get_or_init(|| self.prompt_estimate_ratio.with_label_values(&[detail]))
                .observe(ratio);
        }
    }

    /// `tollgate_tokens_total` by kind (prompt, completion).
    fn observe_token_split(&self, record: &UsageRecord, deployment: &str, source: &'static str) {
        let series: &DeploymentSeries = &record.deployment.series; // made once here, not at each use
        let reported = record.source == CountSource::Reported;
        for (kind, tokens, cached) in [
            ("prompt", record.prompt_tokens, &series.reported_prompt),
            ("completion", record.completion_tokens, &series.reported_completion),
        ] {
            // A series appears with its first tokens (none for a zero).
            if tokens == 0 {
                continue;
            }
            if reported {
                cached.get_or_init(|| self.tokens.with_label_values(&[deployment, kind, source])).inc_by(tokens);
            } else {
                self.tokens.with_label_values(&[deployment, kind, source]).inc_by(tokens);
            }
        }
    }

    /// A consumer's request: its requests, tokens and refusals.
    fn observe_consumer(&self, consumer: &Consumer, record: &UsageRecord) {
        let deployment = record.deployment.name.as_str();
        let label = &*consumer.label;
        // A served request's series are resolved once per grant (as a deployment's are).
        let series = consumer.grant(deployment).map(|g| {
            g.series.get_or_init(|| ConsumerSeries {
                ok: self.consumer_requests.with_label_values(&[label, deployment, "200"]),
                prompt: self.consumer_tokens.with_label_values(&[label, deployment, "prompt"]),
                completion: self.consumer_tokens.with_label_values(&[label, deployment, "completion"]),
            })
        });
        match series {
            Some(series) if record.status == 200 => {
                series.ok.inc();
                series.prompt.inc_by(record.prompt_tokens);
                series.completion.inc_by(record.completion_tokens);
                return;
            }
            _ => {}
        }
        self.consumer_requests.with_label_values(&[label, deployment, metric_status(record.status)]).inc();
        let reason = match record.refusal {
            Some(why @ ("rate_limited" | "quota_exceeded" | "budget_exceeded")) => Some(why),
            _ => None,
        };
        if let Some(reason) = reason {
            self.consumer_rejections.with_label_values(&[label, deployment, reason]).inc();
        }
        for (kind, tokens) in [("prompt", record.prompt_tokens), ("completion", record.completion_tokens)] {
            if tokens > 0 {
                self.consumer_tokens.with_label_values(&[label, deployment, kind]).inc_by(tokens);
            }
        }
    }

    /// The consumers' period quota gauges, from `readings` (one per consumer of the table, in
    /// order; `None` while a shared store cannot be read, which removes that consumer's gauges
    /// rather than report stale usage).
    fn render_consumers(&self, deployments: &DeploymentTable, readings: &[Option<Vec<PeriodReading>>]) {
        for (consumer, reading) in deployments.consumers().iter().zip(readings) {
            let label = &*consumer.label;
            match reading {
                Some(reading) => {
                    for r in reading {
                        for (kind, limit, used, _) in r.state.each() {
                            let labels = [label, r.scope.as_str(), kind.as_str()];
                            self.consumer_quota_limit.with_label_values(&labels).set(clamp(limit));
                            self.consumer_quota_used_ratio.with_label_values(&labels).set(used as f64 / limit as f64);
                        }
                    }
                }
                None => {
                    let scopes = consumer.grants.iter().map(|g| g.deployment.as_str()).chain(std::iter::once("*"));
                    for scope in scopes {
                        for kind in PeriodKind::ALL {
                            let _ = self.consumer_quota_used_ratio.remove_label_values(&[label, scope, kind.as_str()]);
                        }
                    }
                }
            }
        }
    }

    /// The text exposition, with the quota gauges from `states` (read from the buckets now, one
    /// per deployment of the table, in order; `None` while a shared store cannot be read, which
    /// removes that deployment's gauges rather than report stale levels).
    pub fn render(
        &self,
        deployments: &DeploymentTable,
        readings: &[QuotaReading],
        consumers: &[Option<Vec<PeriodReading>>],
    ) -> String {
        // The deployments' own gauges, from the table (see `scrape_gauges`); in-flight requests
        // of deployments without full detail are counted together.
        let mut limit_family =
            GaugeFamily::new("tollgate_ratelimit_limit", "Quota per minute of each bucket (requests, tokens).");
        let mut remaining_family = GaugeFamily::new(
            "tollgate_ratelimit_remaining",
            "What each bucket holds now (never negative), read at scrape time.",
        );
        let mut inflight_family =
            GaugeFamily::new("tollgate_inflight_requests", "Admitted requests whose response has not finished.");
        let mut queue_family = GaugeFamily::new(
            "tollgate_queue_depth",
            "Requests waiting for a deployment's rate limit (unit=requests) and the tokens they reserve (unit=tokens), read at scrape time; only deployments with max_wait_ms.",
        );
        let mut shared_inflight = None::<i64>;
        for (deployment, reading) in deployments.iter().zip(readings) {
            let name = deployment.counter_label();
            let detail = deployment.metric_detail.deployment;
            let inflight = deployment.usage.inflight.load(std::sync::atomic::Ordering::Relaxed);
            if detail == DeploymentDetail::Full {
                inflight_family.sample(&[("deployment", name)], inflight);
            } else {
                *shared_inflight.get_or_insert(0) += inflight;
            }
            if detail == DeploymentDetail::Off {
                continue;
            }
            let limits = deployment.quota.limits();
            for (limit, per_minute) in
                [(LimitKind::Requests, limits.requests_per_minute), (LimitKind::Tokens, limits.tokens_per_minute)]
            {
                limit_family.sample(&[("deployment", name), ("limit", limit.as_str())], clamp(per_minute));
            }
            // None while a shared store cannot be read: no level rather than a stale one.
            if let (DeploymentDetail::Full, Some(state)) = (detail, reading.deployment) {
                for (limit, remaining) in
                    [(LimitKind::Requests, state.remaining_requests), (LimitKind::Tokens, state.remaining_tokens)]
                {
                    remaining_family.sample(&[("deployment", name), ("limit", limit.as_str())], clamp(remaining));
                }
            }
            if let Some(queue) = deployment.waiting_room() {
                let (requests, tokens) = queue.depth();
                queue_family.sample(&[("deployment", name), ("unit", "requests")], clamp(requests as u64));
                queue_family.sample(&[("deployment", name), ("unit", "tokens")], clamp(tokens));
            }
            if !deployment.metric_detail.backends {
                continue;
            }
            let now = deployment.pool.now_ns();
            for (i, backend) in deployment.pool.backends.iter().enumerate() {
                let label = &*backend.name;
                // A one-backend deployment keeps no health and its in-flight count is the
                // deployment's: no series for them (10,000 deployments would add 40,000).
                if deployment.pool.len() > 1 {
                    let status = backend.status(now);
                    for each in Status::ALL {
                        self.backend_state
                            .with_label_values(&[name, label, each.as_str()])
                            .set(i64::from(each == status));
                    }
                    self.backend_inflight.with_label_values(&[name, label]).set(backend.inflight());
                }
                for limit in [LimitKind::Requests, LimitKind::Tokens] {
                    let remaining = reading.backends.get(i).copied().flatten().map(|state| match limit {
                        LimitKind::Requests => state.remaining_requests,
                        LimitKind::Tokens => state.remaining_tokens,
                    });
                    let labels = [name, label, limit.as_str()];
                    match remaining {
                        Some(remaining) => {
                            self.backend_ratelimit_remaining.with_label_values(&labels).set(clamp(remaining))
                        }
                        None => {
                            let _ = self.backend_ratelimit_remaining.remove_label_values(&labels);
                        }
                    }
                }
            }
        }
        if let Some(inflight) = shared_inflight {
            inflight_family.sample(&[("deployment", "")], inflight);
        }
        self.render_consumers(deployments, consumers);
        for budget in deployments.budgets() {
            for (period, amount, spent, _) in budget.state(budget.clock.unix_seconds()) {
                self.budget_spent_ratio
                    .with_label_values(&[&*budget.name, period.as_str()])
                    .set(spent.0 as f64 / amount.0 as f64);
            }
        }
        let mut out = Vec::new();
        if TextEncoder::new().encode(&self.registry.gather(), &mut out).is_err() {
            return String::new();
        }
        let mut text = String::from_utf8(out).unwrap_or_default();
        for family in [limit_family, remaining_family, inflight_family, queue_family] {
            family.finish(&mut text);
        }
        text
    }
}

/// A metric family whose series can be removed by one label's value.
trait Forget {
    fn forget(&self, label: &str, values: &HashSet<&str>);
}

impl<B: MetricVecBuilder> Forget for MetricVec<B> {
    fn forget(&self, label: &str, values: &HashSet<&str>) {
        for family in self.collect() {
            for metric in family.get_metric() {
                let labels = metric.get_label();
                if labels.iter().any(|l| l.name() == label && values.contains(l.value())) {
                    let all: HashMap<&str, &str> = labels.iter().map(|l| (l.name(), l.value())).collect();
                    let _ = self.remove(&all);
                }
            }
        }
    }
}

fn clamp(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Status codes as static label values (no allocation per request).
pub fn metric_status(status: u16) -> &'static str {
    const EXACT: [(u16, &str); 16] = [
        (200, "200"),
        (201, "201"),
        (204, "204"),
        (400, "400"),
        (401, "401"),
        (403, "403"),
        (404, "404"),
        (408, "408"),
        (413, "413"),
        (422, "422"),
        (429, "429"),
        (499, "499"),
        (500, "500"),
        (502, "502"),
        (503, "503"),
        (504, "504"),
    ];
    if let Some((_, label)) = EXACT.iter().find(|(code, _)| *code == status) {
        return label;
    }
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::api::ApiRoute;

    #[test]
    fn every_route_has_a_cached_series_slot() {
        for route in [
            ApiRoute::Info,
            ApiRoute::ChatCompletions,
            ApiRoute::Completions,
            ApiRoute::Embeddings,
            ApiRoute::ImageEmbeddings,
        ] {
            assert!((route as usize) < ROUTES, "{route:?}");
        }
    }

    /// A deployment called "cached" at `detail`, after two forwarded requests and three
    /// finished ones (200, 200, 201) of 10 prompt tokens each: the exposition.
    fn exported(detail: DeploymentDetail) -> String {
        let metrics = Metrics::new(Registry::new()).unwrap();
        let text = "[[deployments]]\nname = \"cached\"\nmodel = \"m\"\nbackend = \"http://127.0.0.1:1\"\nkeys = [\"sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824\"]\n";
        let config = crate::config::Config::parse(text, "t.toml", &|_| None).unwrap();
        let clock: std::sync::Arc<dyn crate::core::clock::Clock> =
            std::sync::Arc::new(crate::core::clock::MonotonicClock::new());
        let mut deployment = Deployment::from_config(&config.deployments[0], &clock);
        deployment.metric_detail.deployment = detail;
        for _ in 0..2 {
            metrics.observe_forwarded(&deployment, Duration::from_millis(1), Duration::from_micros(5));
        }
        let deployment = std::sync::Arc::new(deployment);
        for status in [200, 200, 201] {
            metrics.observe(&UsageRecord {
                deployment: std::sync::Arc::clone(&deployment),
                key_slot: crate::core::keys::KeySlot::Primary,
                consumer: None,
                admitted: true,
                route: ApiRoute::ChatCompletions,
                status,
                outcome: Outcome::Completed,
                prompt_tokens: 10,
                completion_tokens: 0,
                total_tokens: 10,
                source: CountSource::Reported,
                reserved_tokens: 20,
                estimated_prompt_tokens: 10,
                request_id: crate::state::request_id::RequestId::generate(),
                started_at: std::time::SystemTime::now(),
                duration: Duration::from_millis(2),
                limited_by: None,
                refusal: None,
                backend: None,
                attempts: 0,
                queued: None,
            });
        }
        metrics.render(&DeploymentTable::default(), &[], &[])
    }

    #[test]
    fn cached_series_are_the_registered_ones() {
        let text = exported(DeploymentDetail::Full);
        assert!(text.contains("tollgate_backend_first_byte_seconds_count{deployment=\"cached\"} 2"), "{text}");
        let requests = |code: &str| {
            format!("tollgate_requests_total{{code=\"{code}\",deployment=\"cached\",route=\"chat_completions\"}}")
        };
        assert!(text.contains(&format!("{} 2", requests("200"))), "{text}");
        assert!(text.contains(&format!("{} 1", requests("201"))), "{text}");
        assert!(
            text.contains(
                "tollgate_request_duration_seconds_count{deployment=\"cached\",route=\"chat_completions\"} 3"
            ),
            "{text}"
        );
        assert!(
            text.contains("tollgate_tokens_total{deployment=\"cached\",kind=\"prompt\",source=\"reported\"} 30"),
            "{text}"
        );
        assert!(!text.contains("kind=\"completion\""), "no series for zero tokens: {text}");
        assert!(text.contains("tollgate_overhead_seconds_count{deployment=\"cached\"} 2"), "{text}");
    }

    #[test]
    fn a_summary_keeps_the_counters_and_counts_the_histograms_gateway_wide() {
        let text = exported(DeploymentDetail::Summary);
        let requests = "tollgate_requests_total{code=\"200\",deployment=\"cached\",route=\"chat_completions\"} 2";
        assert!(text.contains(requests), "{text}");
        assert!(
            text.contains("tollgate_tokens_total{deployment=\"cached\",kind=\"total\",source=\"reported\"} 30"),
            "{text}"
        );
        assert!(text.contains("tollgate_backend_first_byte_seconds_count{deployment=\"\"} 2"), "{text}");
        assert!(
            text.contains("tollgate_request_duration_seconds_count{deployment=\"\",route=\"chat_completions\"} 3"),
            "{text}"
        );
        assert!(text.contains("tollgate_prompt_estimate_ratio_count{deployment=\"\"} 3"), "{text}");
        let own: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("deployment=\"cached\"") && !l.starts_with("tollgate_requests_total"))
            .filter(|l| !l.starts_with("tollgate_tokens_total"))
            .collect();
        assert!(own.is_empty(), "only counters of its own: {own:?}");
    }

    #[test]
    fn off_counts_everything_gateway_wide() {
        let text = exported(DeploymentDetail::Off);
        assert!(!text.contains("deployment=\"cached\""), "{text}");
        let requests = "tollgate_requests_total{code=\"200\",deployment=\"\",route=\"chat_completions\"} 2";
        assert!(text.contains(requests), "{text}");
        assert!(
            text.contains("tollgate_tokens_total{deployment=\"\",kind=\"prompt\",source=\"reported\"} 30"),
            "{text}"
        );
    }
}
