//! One request, measured: status and error code, time to first token, the gaps between the
//! reads that carried content, token counts from `usage`, the time spent waiting on 429s, and
//! the gateway's and backend's shares from `Server-Timing`.

use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde::Serialize;

use super::Shared;
use super::workload::Prepared;
use crate::core::estimate::Tokenizer;
use crate::core::meter::sse::SseScanner;
use crate::core::meter::usage::Answer;

/// What one request observed. Times are milliseconds; `scheduled` is seconds from the start.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Sample {
    /// The sweep step (0 outside a sweep).
    pub step: u32,
    /// The request's number in the run.
    pub request: u64,
    /// When it was due (its scheduled start for an open loop), seconds from the run's start.
    pub scheduled: f64,
    /// 0 when no answer came (connection failed, timed out, or the body broke off).
    pub status: u16,
    /// `x-ms-error-code` (or the error JSON's `code`), or what went wrong on the way.
    pub error: Option<String>,
    pub stream: bool,
    /// End to end, from `scheduled` to the body's last byte (429 waits included).
    pub e2e_ms: f64,
    /// To the first read with generated content (streamed answers).
    pub ttft_ms: Option<f64>,
    /// From the first content to the last, per output token after the first (`usage`'s count).
    pub itl_ms: Option<f64>,
    /// `(e2e - ttft) / (output tokens - 1)`, as vLLM's benchmark defines it.
    pub tpot_ms: Option<f64>,
    /// Output tokens per second of the request's stream: the inverse of `itl_ms`.
    pub tokens_per_second: Option<f64>,
    pub input_tokens: Option<u64>,
    /// From `usage`; counted with cl100k from the streamed text when the answer has none.
    pub output_tokens: Option<u64>,
    /// 429s retried before the final answer, and the time spent waiting on `retry-after-ms`.
    pub retries: u32,
    pub retry_wait_ms: f64,
    /// `Server-Timing` `gw` and `backend` durations of the final answer.
    pub gateway_ms: Option<f64>,
    pub backend_ms: Option<f64>,
    /// Gaps between reads that carried content (ms), pooled into the ITL distribution.
    #[serde(skip)]
    pub gaps: Vec<f32>,
}

impl Sample {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// Seconds from the start to the last byte.
    pub fn finished(&self) -> f64 {
        self.scheduled + self.e2e_ms / 1000.0
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Sends `prepared` (retrying 429s when asked) and measures it from `scheduled`.
pub(super) async fn one(shared: &Shared, prepared: &Prepared, request: u64, scheduled: Instant) -> Sample {
    let base = Sample {
        step: shared.step,
        request,
        scheduled: scheduled.saturating_duration_since(shared.begun).as_secs_f64(),
        stream: prepared.stream,
        ..Sample::default()
    };
    let timeout = shared.options.timeout;
    match tokio::time::timeout(timeout, attempt(shared, prepared, scheduled, base.clone())).await {
        Ok(sample) => sample,
        Err(_) => Sample {
            e2e_ms: ms(scheduled.elapsed()),
            error: Some(format!("timeout after {} s", timeout.as_secs_f64())),
            ..base
        },
    }
}

async fn attempt(shared: &Shared, prepared: &Prepared, scheduled: Instant, mut sample: Sample) -> Sample {
    let options = &shared.options;
    let failed = |mut sample: Sample, why: String| {
        sample.e2e_ms = ms(scheduled.elapsed());
        sample.status = 0;
        sample.error = Some(why);
        sample
    };
    loop {
        let mut request = Request::post(prepared.uri.clone());
        for (name, value) in &shared.headers {
            request = request.header(name, value);
        }
        let request = match request.body(Full::new(prepared.body.clone())) {
            Ok(request) => request,
            Err(e) => return failed(sample, format!("request: {e}")),
        };
        let response = match shared.client.request(request).await {
            Ok(response) => response,
            Err(e) => return failed(sample, transport_error(&e)),
        };
        let status = response.status();
        if status == StatusCode::TOO_MANY_REQUESTS && options.retry_429 && Instant::now() < shared.deadline {
            let wait = retry_after(response.headers().get("retry-after-ms"));
            let _ = response.into_body().collect().await;
            sample.retries += 1;
            let waited = Instant::now();
            tokio::time::sleep(wait).await;
            sample.retry_wait_ms += ms(waited.elapsed());
            continue;
        }
        sample.status = status.as_u16();
        (sample.gateway_ms, sample.backend_ms) = server_timing(response.headers());
        let error_code = response.headers().get("x-ms-error-code").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let streamed = prepared.stream && status.is_success();
        let mut body = response.into_body();
        let mut scanner = SseScanner::new();
        let mut whole = Vec::new();
        let mut first: Option<Instant> = None;
        let mut last: Option<Instant> = None;
        while let Some(frame) = body.frame().await {
            let frame = match frame {
                Ok(frame) => frame,
                Err(e) => {
                    let at = format!("the body broke off after status {}: {e}", status.as_u16());
                    return failed(sample, at);
                }
            };
            let Some(data) = frame.data_ref() else { continue };
            if !streamed {
                whole.extend_from_slice(data);
                continue;
            }
            // The scanner keeps the streamed text (counted only when no usage comes); a read
            // that grew it carried content.
            let before = scanner.completion().len();
            scanner.feed(data);
            if scanner.completion().len() > before {
                let now = Instant::now();
                match last {
                    None => first = Some(now),
                    Some(previous) => sample.gaps.push(ms(now - previous) as f32),
                }
                last = Some(now);
            }
        }
        let done = Instant::now();
        sample.e2e_ms = ms(done - scheduled);
        if !status.is_success() {
            sample.error = error_code.or_else(|| body_error_code(&whole)).or_else(|| Some(status.as_u16().to_string()));
            return sample;
        }
        let usage = if streamed { scanner.usage() } else { Answer::parse(&whole).and_then(|a| a.usage()) };
        sample.input_tokens = usage.map(|u| u.prompt_tokens);
        sample.output_tokens = match usage {
            Some(u) => Some(u.completion_tokens),
            None if streamed => Some(Tokenizer::Bpe.count(scanner.completion())),
            None => None,
        };
        if let (Some(first), Some(last)) = (first, last) {
            let ttft = first - scheduled;
            sample.ttft_ms = Some(ms(ttft));
            let output = sample.output_tokens.unwrap_or(0);
            if output > 1 {
                let tokens = (output - 1) as f64;
                sample.tpot_ms = Some((ms(done - scheduled) - ms(ttft)) / tokens);
                // Content in one read has no measurable pace; it needs two reads apart.
                if last > first {
                    let itl = ms(last - first) / tokens;
                    sample.itl_ms = Some(itl);
                    sample.tokens_per_second = Some(1000.0 / itl);
                }
            }
        }
        return sample;
    }
}

fn transport_error(error: &hyper_util::client::legacy::Error) -> String {
    if error.is_connect() { "connect failed".into() } else { "connection failed".into() }
}

/// The `code` of the API's error JSON, when there is no `x-ms-error-code`.
fn body_error_code(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Error {
        code: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Envelope {
        error: Error,
    }
    serde_json::from_slice::<Envelope>(body).ok()?.error.code
}

pub fn retry_after(value: Option<&HeaderValue>) -> Duration {
    let ms = value.and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok()).unwrap_or(1000);
    Duration::from_millis(ms.min(120_000))
}

/// `gw` and `backend` durations (ms) from every `Server-Timing` header.
pub fn server_timing(headers: &HeaderMap) -> (Option<f64>, Option<f64>) {
    let (mut gateway, mut backend) = (None, None);
    for value in headers.get_all("server-timing") {
        let Ok(value) = value.to_str() else { continue };
        for metric in value.split(',') {
            let mut parts = metric.split(';').map(str::trim);
            let name = parts.next().unwrap_or("");
            let duration =
                parts.find_map(|p| p.strip_prefix("dur=")).and_then(|d| d.trim_matches('"').parse::<f64>().ok());
            match name {
                "gw" => gateway = duration.or(gateway),
                "backend" => backend = duration.or(backend),
                _ => {}
            }
        }
    }
    (gateway, backend)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_timing_is_read_from_every_header() {
        let mut headers = HeaderMap::new();
        headers.append("server-timing", HeaderValue::from_static("cache;desc=\"hit\", gw;dur=0.042"));
        headers.append("server-timing", HeaderValue::from_static("backend;dur=13.1;desc=x, db;dur=2"));
        assert_eq!(server_timing(&headers), (Some(0.042), Some(13.1)));
        assert_eq!(server_timing(&HeaderMap::new()), (None, None));
        let mut odd = HeaderMap::new();
        odd.append("server-timing", HeaderValue::from_static("gw;dur=x, backend"));
        assert_eq!(server_timing(&odd), (None, None));
    }

    #[test]
    fn error_codes_come_from_the_error_json() {
        assert_eq!(
            body_error_code(br#"{"error":{"code":"Unauthorized","message":"m"}}"#).as_deref(),
            Some("Unauthorized")
        );
        assert_eq!(body_error_code(b"<html>"), None);
        assert_eq!(retry_after(Some(&HeaderValue::from_static("250"))), Duration::from_millis(250));
        assert_eq!(retry_after(None), Duration::from_secs(1));
    }
}
