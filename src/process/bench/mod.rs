//! `tollgate bench`: a load generator for any endpoint speaking the Model Inference API.
//!
//! - **Closed loop** (`--concurrency N`): N workers, each sending its next request when the last
//!   one finished.
//! - **Open loop** (`--rate R`): requests start on a fixed schedule (`t0 + i / R`) whether or not
//!   earlier ones finished, and latency is measured from the *scheduled* start, so a server that
//!   stalls cannot hide the stall by slowing the sender (no coordinated omission).
//!
//! Latencies go into HdrHistograms (1 µs to 10 min, 3 significant digits); streamed requests also
//! record time to first token and tokens per second.

mod report;
mod workload;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub use report::Report;
pub use workload::Mix;

/// How to load the target.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Root URL of the endpoint (`http://127.0.0.1:8080`).
    pub url: String,
    /// Sent as `api-key` and `Authorization: Bearer`.
    pub key: Option<String>,
    /// Call `/openai/deployments/{deployment}/...` instead of the root routes.
    pub deployment: Option<String>,
    pub mix: Mix,
    /// A request body from a file, in place of the mix's bodies.
    pub body: Option<Bytes>,
    pub load: Load,
    /// Stop after this long...
    pub duration: Duration,
    /// ...or after this many requests, whichever comes first.
    pub requests: Option<u64>,
    /// On 429, wait `retry-after-ms` and send again (counted once, as its final status).
    pub retry_429: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Load {
    Closed { concurrency: usize },
    Open { rate: f64 },
}

/// What one request observed.
struct Sample {
    latency: Duration,
    first_token: Option<Duration>,
    tokens_per_second: Option<u64>,
    outcome: Outcome,
    retries: u64,
}

enum Outcome {
    Ok,
    TooMany,
    ClientError,
    ServerError,
    Transport,
}

/// What one worker (or the open-loop collector) observed.
struct Tally {
    latency: Histogram<u64>,
    first_token: Histogram<u64>,
    tokens_per_second: Histogram<u64>,
    ok: u64,
    too_many: u64,
    client_errors: u64,
    server_errors: u64,
    transport_errors: u64,
    retries: u64,
}

impl Tally {
    fn new() -> Tally {
        let h = || {
            Histogram::new_with_bounds(1, 600_000_000, 3)
                .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable_histogram()))
        };
        Tally {
            latency: h(),
            first_token: h(),
            tokens_per_second: h(),
            ok: 0,
            too_many: 0,
            client_errors: 0,
            server_errors: 0,
            transport_errors: 0,
            retries: 0,
        }
    }

    fn add(&mut self, sample: Sample) {
        self.retries += sample.retries;
        if let Outcome::Transport = sample.outcome {
            self.transport_errors += 1;
            return;
        }
        let _ = self.latency.record(micros(sample.latency));
        if let Some(ttft) = sample.first_token {
            let _ = self.first_token.record(micros(ttft));
        }
        if let Some(tps) = sample.tokens_per_second {
            let _ = self.tokens_per_second.record(tps.max(1));
        }
        match sample.outcome {
            Outcome::Ok => self.ok += 1,
            Outcome::TooMany => self.too_many += 1,
            Outcome::ClientError => self.client_errors += 1,
            Outcome::ServerError | Outcome::Transport => self.server_errors += 1,
        }
    }

    fn merge(&mut self, other: &Tally) {
        let _ = self.latency.add(&other.latency);
        let _ = self.first_token.add(&other.first_token);
        let _ = self.tokens_per_second.add(&other.tokens_per_second);
        self.ok += other.ok;
        self.too_many += other.too_many;
        self.client_errors += other.client_errors;
        self.server_errors += other.server_errors;
        self.transport_errors += other.transport_errors;
        self.retries += other.retries;
    }
}

#[expect(clippy::panic, reason = "3 significant digits are always valid for hdrhistogram")]
fn unreachable_histogram() -> Histogram<u64> {
    panic!("hdrhistogram rejected 3 significant digits")
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

struct Shared {
    client: HttpClient,
    options: BenchOptions,
    started: AtomicU64,
    stop: AtomicBool,
    /// Retries of 429s stop here; requests already started finish.
    deadline: Instant,
    progress: indicatif::ProgressBar,
}

/// Runs the load and returns the report.
pub async fn run(options: BenchOptions, show_progress: bool) -> Result<Report, String> {
    workload::check(&options)?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    let client = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(usize::MAX).build(connector);
    let progress = if show_progress {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let begun = Instant::now();
    let shared = Arc::new(Shared {
        client,
        options: options.clone(),
        started: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        deadline: begun + options.duration,
        progress,
    });
    let tally = match options.load {
        Load::Closed { concurrency } => closed_loop(&shared, concurrency.max(1)).await,
        Load::Open { rate } => open_loop(&shared, rate).await?,
    };
    let elapsed = begun.elapsed();
    shared.progress.finish_and_clear();
    Ok(Report::new(&options, &tally, shared.started.load(Ordering::Relaxed), elapsed))
}

/// Takes the next request number, or `None` once the run is over.
fn next_request(shared: &Shared, begun: Instant) -> Option<u64> {
    if shared.stop.load(Ordering::Relaxed) || begun.elapsed() >= shared.options.duration {
        return None;
    }
    let n = shared.started.fetch_add(1, Ordering::Relaxed);
    if shared.options.requests.is_some_and(|max| n >= max) {
        shared.started.fetch_sub(1, Ordering::Relaxed);
        shared.stop.store(true, Ordering::Relaxed);
        return None;
    }
    if n % 256 == 0 {
        shared.progress.set_message(format!("{n} requests sent, {:.0}s", begun.elapsed().as_secs_f64()));
    }
    Some(n)
}

async fn closed_loop(shared: &Arc<Shared>, concurrency: usize) -> Tally {
    let begun = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let shared = Arc::clone(shared);
            tokio::spawn(async move {
                let mut tally = Tally::new();
                while let Some(n) = next_request(&shared, begun) {
                    tally.add(one(&shared, n, Instant::now()).await);
                }
                tally
            })
        })
        .collect();
    let mut total = Tally::new();
    for worker in workers {
        if let Ok(tally) = worker.await {
            total.merge(&tally);
        }
    }
    total
}

async fn open_loop(shared: &Arc<Shared>, rate: f64) -> Result<Tally, String> {
    if !(rate.is_finite() && rate > 0.0) {
        return Err("--rate must be a positive number of requests per second".into());
    }
    let begun = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate);
    // Requests report to one collector: no per-request histograms, no lock.
    let (samples, mut collected) = tokio::sync::mpsc::unbounded_channel::<Sample>();
    let collector = tokio::spawn(async move {
        let mut tally = Tally::new();
        while let Some(sample) = collected.recv().await {
            tally.add(sample);
        }
        tally
    });
    let mut i: u32 = 0;
    while let Some(n) = next_request(shared, begun) {
        // The schedule is fixed in advance; a late start still counts from its scheduled time.
        let scheduled = begun + interval * i;
        i = i.saturating_add(1);
        tokio::time::sleep_until(scheduled.into()).await;
        let (shared, samples) = (Arc::clone(shared), samples.clone());
        tokio::spawn(async move {
            let _ = samples.send(one(&shared, n, scheduled).await);
        });
    }
    drop(samples);
    collector.await.map_err(|e| format!("the collector failed: {e}"))
}

/// Sends request `n` (retrying 429s when asked) and measures it from `scheduled`.
async fn one(shared: &Shared, n: u64, scheduled: Instant) -> Sample {
    let options = &shared.options;
    let (path, body, stream) = workload::request(options, n);
    let mut retries = 0;
    let failed = |retries| Sample {
        latency: scheduled.elapsed(),
        first_token: None,
        tokens_per_second: None,
        outcome: Outcome::Transport,
        retries,
    };
    loop {
        let mut request = Request::post(format!("{}{path}", options.url.trim_end_matches('/')));
        if let Some(key) = &options.key {
            request = request.header("api-key", key.as_str()).header("authorization", format!("Bearer {key}"));
        }
        let Ok(request) = request.header("content-type", "application/json").body(Full::new(body.clone())) else {
            return failed(retries);
        };
        let Ok(response) = shared.client.request(request).await else {
            return failed(retries);
        };
        let status = response.status();
        if status == StatusCode::TOO_MANY_REQUESTS && options.retry_429 && Instant::now() < shared.deadline {
            let wait = retry_after(response.headers().get("retry-after-ms"));
            let _ = response.into_body().collect().await;
            retries += 1;
            tokio::time::sleep(wait).await;
            continue;
        }
        let mut body = response.into_body();
        let mut first_token: Option<Duration> = None;
        let mut tokens = 0u64;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return failed(retries) };
            if let (true, Some(data)) = (stream, frame.data_ref()) {
                let content = count_content_events(data);
                if content > 0 && first_token.is_none() {
                    first_token = Some(scheduled.elapsed());
                }
                tokens += content;
            }
        }
        let latency = scheduled.elapsed();
        let tokens_per_second = first_token.and_then(|ttft| {
            let streaming = latency.saturating_sub(ttft).as_secs_f64();
            (streaming > 0.0 && tokens > 1).then(|| ((tokens - 1) as f64 / streaming).round() as u64)
        });
        let outcome = match status.as_u16() {
            200..=299 => Outcome::Ok,
            429 => Outcome::TooMany,
            400..=499 => Outcome::ClientError,
            _ => Outcome::ServerError,
        };
        return Sample { latency, first_token, tokens_per_second, outcome, retries };
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).clamp(1, 600_000_000)
}

fn retry_after(value: Option<&HeaderValue>) -> Duration {
    let ms = value.and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok()).unwrap_or(1000);
    Duration::from_millis(ms.min(120_000))
}

/// SSE events in a chunk that carry generated content (`"content":"` with something in it).
fn count_content_events(chunk: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(chunk);
    text.split("data: ").filter(|event| event.contains("\"content\":\"") && !event.contains("\"content\":\"\"")).count()
        as u64
}
