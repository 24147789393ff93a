//! `tollgate bench`: a load generator for any endpoint speaking the Model Inference API, with
//! the figures LLM-serving teams compare (TTFT, ITL, TPOT, tokens, goodput under an SLO).
//!
//! - **Arrivals** ([`arrivals`]): a closed loop (`--concurrency N`), a constant rate or a seeded
//!   Poisson process (`--rate R`, `--arrivals poisson`), or a replayed trace's timestamps. For an
//!   open loop, latency is measured from the *scheduled* start, so a server that stalls cannot
//!   hide the stall by slowing the sender (no coordinated omission).
//! - **Prompts** ([`workload`]): built-in mixes, shaped with token-length distributions, a body
//!   file, or a JSONL replay; every body is prepared before the run.
//! - **Measuring** ([`measure`]): one [`Sample`] per request; the report ([`report`]) takes
//!   percentiles of those started in the measured window (after the warm-up, before the
//!   cool-down) and rates from those finished in it.
//! - **Sweeps** (`sweep.rs`): the same run at rising rates until the target saturates; the knee
//!   is the highest rate that kept up (and met the SLO).
//! - Per-request CSV ([`csv`]), a self-contained HTML page of charts ([`html`]), and the deltas
//!   of two JSON reports ([`compare`]).

pub mod arrivals;
pub mod command;
pub mod compare;
pub mod csv;
pub mod html;
pub mod measure;
mod progress;
pub mod report;
pub mod slo;
pub mod stats;
mod sweep;
pub mod workload;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub use arrivals::Load;
pub use measure::Sample;
pub use report::Report;
pub use slo::{Slo, parse_duration};
pub use workload::{Dist, Mix, Prompts, Shape};

use report::{Header, Window};
use workload::Prepared;

/// How to load the target.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Root URL of the endpoint (`http://127.0.0.1:8080`).
    pub url: String,
    /// Sent as `api-key` and `Authorization: Bearer`.
    pub key: Option<String>,
    /// Extra headers on every request (`--header`), e.g. `x-ms-max-wait-ms`.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Call `/openai/deployments/{deployment}/...` instead of the root routes.
    pub deployment: Option<String>,
    pub prompts: Prompts,
    pub shape: Shape,
    pub load: Load,
    /// Seeds the Poisson schedule and the synthetic prompts.
    pub seed: u64,
    /// Stop scheduling after this long (each sweep step runs this long)...
    pub duration: Option<Duration>,
    /// ...or after this many requests, whichever comes first.
    pub requests: Option<u64>,
    /// Requests started before this are sent but not measured.
    pub warmup: Duration,
    /// Requests started in this last stretch are sent but not measured.
    pub cooldown: Duration,
    /// On 429, wait `retry-after-ms` and send again (counted once, as its final status).
    pub retry_429: bool,
    /// A request with no full answer by then counts as a transport error.
    pub timeout: Duration,
    pub slo: Option<Slo>,
    /// The share of requests (percent) that must meet the SLO for a sweep step to pass.
    pub slo_attainment: f64,
    /// Rates (or concurrencies, for a closed loop) to sweep; empty for one run.
    pub sweep: Vec<f64>,
}

impl BenchOptions {
    /// The defaults of the command: the short chat mix, 10 s, no warm-up.
    pub fn new(url: impl Into<String>, load: Load) -> BenchOptions {
        BenchOptions {
            url: url.into(),
            key: None,
            headers: Vec::new(),
            deployment: None,
            prompts: Prompts::Mix(Mix::ShortChat),
            shape: Shape::default(),
            load,
            seed: 1,
            duration: Some(Duration::from_secs(10)),
            requests: None,
            warmup: Duration::ZERO,
            cooldown: Duration::ZERO,
            retry_429: false,
            timeout: Duration::from_secs(60),
            slo: None,
            slo_attainment: 95.0,
            sweep: Vec::new(),
        }
    }
}

/// A finished run: the report and every request's sample (for `--csv` and `--html`).
pub struct Run {
    pub report: Report,
    pub samples: Vec<Sample>,
    /// The sweep step the report describes (0 outside a sweep).
    pub step: u32,
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// What the requests of one run (or sweep step) share.
struct Shared {
    client: HttpClient,
    options: BenchOptions,
    prepared: Arc<[Prepared]>,
    /// The key's two headers, `--header`s and the content type, built once.
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    step: u32,
    begun: Instant,
    started: AtomicU64,
    /// Set when `--requests` (or the trace) ran out.
    exhausted: AtomicBool,
    /// Retries of 429s stop here; requests already started finish.
    deadline: Instant,
    in_flight: AtomicU64,
}

/// Runs the load (or the sweep) and returns the report with every sample.
pub async fn run(options: BenchOptions, show_progress: bool) -> Result<Run, String> {
    check(&options)?;
    let root = options.url.trim_end_matches('/');
    let prepared: Arc<[Prepared]> =
        workload::prepare(&options.prompts, options.shape, options.deployment.as_deref(), options.seed)?
            .into_iter()
            .map(|mut p| {
                p.uri = format!("{root}{}", p.path).parse().map_err(|e| format!("--url '{root}{}': {e}", p.path))?;
                Ok(p)
            })
            .collect::<Result<Vec<_>, String>>()?
            .into();
    let progress = progress::Progress::new(show_progress);
    let client = client();
    if options.sweep.is_empty() {
        let (samples, window) = run_step(&client, &options, &prepared, options.load, 0, &progress).await?;
        progress.finish();
        let report = Report::build(header(&options, options.load), &samples, window);
        return Ok(Run { report, samples, step: 0 });
    }
    let run = sweep::run(&client, &options, &prepared, &progress).await;
    progress.finish();
    run
}

fn check(options: &BenchOptions) -> Result<(), String> {
    let url = options.url.as_str();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("--url '{url}' must start with http:// or https://"));
    }
    if let Some(d) = &options.deployment {
        crate::config::check_deployment_name(d).map_err(|e| format!("--deployment: {e}"))?;
    }
    options.load.check()?;
    let traced = matches!(&options.prompts, Prompts::Replay(lines) if lines.iter().all(|l| l.at.is_some()));
    if options.load == Load::Trace && !traced {
        return Err("--arrivals trace needs a --replay file whose lines all have a \"timestamp\"".into());
    }
    if options.duration.is_none() && options.requests.is_none() && options.load != Load::Trace {
        return Err("give --duration or --requests: the run needs an end".into());
    }
    if let Some(duration) = options.duration.filter(|d| options.warmup + options.cooldown >= *d) {
        return Err(format!(
            "--warmup {} s and --cooldown {} s leave nothing of --duration {} s to measure",
            options.warmup.as_secs_f64(),
            options.cooldown.as_secs_f64(),
            duration.as_secs_f64()
        ));
    }
    if options.sweep.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
        return Err("--sweep: every step must be a positive rate (or concurrency)".into());
    }
    if options.load == Load::Trace && !options.sweep.is_empty() {
        return Err("--sweep needs --rate or --concurrency arrivals, not a trace".into());
    }
    if !(0.0..=100.0).contains(&options.slo_attainment) {
        return Err("--slo-attainment is a percentage, 0 to 100".into());
    }
    Ok(())
}

fn client() -> HttpClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new()).pool_max_idle_per_host(usize::MAX).build(connector)
}

fn header(options: &BenchOptions, load: Load) -> Header<'_> {
    Header {
        target: &options.url,
        mode: load.describe(),
        warmup: options.warmup.as_secs_f64(),
        cooldown: options.cooldown.as_secs_f64(),
        slo: options.slo,
    }
}

/// One run at `load`: every request's sample, and the measured window.
async fn run_step(
    client: &HttpClient,
    options: &BenchOptions,
    prepared: &Arc<[Prepared]>,
    load: Load,
    step: u32,
    progress: &progress::Progress,
) -> Result<(Vec<Sample>, Window), String> {
    let begun = Instant::now();
    let duration = options.duration.unwrap_or(Duration::MAX);
    let shared = Arc::new(Shared {
        client: client.clone(),
        options: options.clone(),
        prepared: Arc::clone(prepared),
        headers: request_headers(options)?,
        step,
        begun,
        started: AtomicU64::new(0),
        exhausted: AtomicBool::new(false),
        deadline: begun.checked_add(duration).unwrap_or(begun + Duration::from_secs(86_400 * 365)),
        in_flight: AtomicU64::new(0),
    });
    let (samples, received) = tokio::sync::mpsc::unbounded_channel::<Sample>();
    let collector = tokio::spawn(progress.collect(received, Arc::clone(&shared), load));
    match load {
        Load::Closed { concurrency } => {
            let workers: Vec<_> = (0..concurrency)
                .map(|_| {
                    let (shared, samples) = (Arc::clone(&shared), samples.clone());
                    tokio::spawn(async move {
                        while begun.elapsed() < duration {
                            let Some(n) = next_request(&shared) else { break };
                            let sample = send(&shared, n, Instant::now()).await;
                            let _ = samples.send(sample);
                        }
                    })
                })
                .collect();
            for worker in workers {
                let _ = worker.await;
            }
        }
        open => {
            let trace: Arc<[f64]> = prepared.iter().filter_map(|p| p.at).collect();
            let seed = options.seed.wrapping_add(u64::from(step));
            let mut schedule = arrivals::Schedule::new(open, seed, trace)
                .ok_or_else(|| format!("cannot schedule {}", open.describe()))?;
            loop {
                let Some(offset) = schedule.next_offset() else {
                    shared.exhausted.store(true, Ordering::Relaxed);
                    break;
                };
                if offset >= duration {
                    break;
                }
                let Some(n) = next_request(&shared) else { break };
                // The schedule is fixed in advance; a late start still counts from its time.
                let scheduled = begun + offset;
                tokio::time::sleep_until(scheduled.into()).await;
                let (shared, samples) = (Arc::clone(&shared), samples.clone());
                tokio::spawn(async move {
                    let sample = send(&shared, n, scheduled).await;
                    let _ = samples.send(sample);
                });
            }
        }
    }
    drop(samples);
    let samples = collector.await.map_err(|e| format!("the collector failed: {e}"))?;
    let exhausted = shared.exhausted.load(Ordering::Relaxed) || options.duration.is_none();
    let window = window(options, &samples, exhausted)?;
    Ok((samples, window))
}

/// The headers every request carries: the key (as `api-key` and Bearer), `--header`s, the JSON
/// content type.
fn request_headers(options: &BenchOptions) -> Result<Vec<(http::HeaderName, http::HeaderValue)>, String> {
    let mut headers = Vec::with_capacity(options.headers.len() + 3);
    if let Some(key) = &options.key {
        let value =
            |v: String| http::HeaderValue::try_from(v).map_err(|_| "--key is not a valid header value".to_owned());
        headers.push((http::HeaderName::from_static("api-key"), value(key.clone())?));
        headers.push((http::header::AUTHORIZATION, value(format!("Bearer {key}"))?));
    }
    headers.extend(options.headers.iter().cloned());
    headers.push((http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json")));
    Ok(headers)
}

/// Sends request `n`, counted in flight while it runs.
async fn send(shared: &Shared, n: u64, scheduled: Instant) -> Sample {
    shared.in_flight.fetch_add(1, Ordering::Relaxed);
    let prepared = &shared.prepared[(n % shared.prepared.len() as u64) as usize];
    let sample = measure::one(shared, prepared, n, scheduled).await;
    shared.in_flight.fetch_sub(1, Ordering::Relaxed);
    sample
}

/// Takes the next request number, or `None` once `--requests` (or the trace) ran out.
fn next_request(shared: &Shared) -> Option<u64> {
    if shared.exhausted.load(Ordering::Relaxed) {
        return None;
    }
    let n = shared.started.fetch_add(1, Ordering::Relaxed);
    let requests = shared.options.requests;
    let limit = match shared.options.load {
        Load::Trace => Some(requests.map_or(shared.prepared.len() as u64, |r| r.min(shared.prepared.len() as u64))),
        _ => requests,
    };
    if limit.is_some_and(|max| n >= max) {
        shared.started.fetch_sub(1, Ordering::Relaxed);
        shared.exhausted.store(true, Ordering::Relaxed);
        return None;
    }
    Some(n)
}

/// The measured window: from the warm-up's end to the cool-down's start. A run that ran out of
/// requests (or trace) before its duration measures to its last answer: nothing is left to
/// drain. A run that reached its duration measures to it: the drain after is not counted.
fn window(options: &BenchOptions, samples: &[Sample], exhausted: bool) -> Result<Window, String> {
    let end = match options.duration {
        Some(duration) if !exhausted => duration.as_secs_f64(),
        _ => samples.iter().map(Sample::finished).fold(0.0, f64::max),
    };
    let window = Window { start: options.warmup.as_secs_f64(), end: end - options.cooldown.as_secs_f64() };
    if window.end <= window.start {
        return Err(format!(
            "the run ended after {end:.3} s, before its warm-up ({} s) and cool-down ({} s) left anything to measure",
            options.warmup.as_secs_f64(),
            options.cooldown.as_secs_f64()
        ));
    }
    Ok(window)
}
