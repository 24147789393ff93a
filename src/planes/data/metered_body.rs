//! The backend's response body on its way to the client: every frame passes through as it
//! arrives, and is read (not copied) by a scanner; the reservation is settled when the body ends,
//! breaks, or is dropped because the client went away.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Sleep;

use super::count::{CountJob, Counter};
use super::reconcile::Reservation;
use crate::core::meter::Counts;
use crate::core::meter::json_scan::JsonAnswerScanner;
use crate::core::meter::sse::SseScanner;
use crate::core::meter::usage_chunk::{Rewritten, UsageChunk};
use crate::state::record::Outcome;

enum Scan {
    Sse(SseScanner),
    /// Non-streamed: read as it passes for the top-level `usage` (any size, nothing buffered but
    /// the completion text, kept for answers that report no usage).
    Json(JsonAnswerScanner),
}

/// How long a backend body may take: `idle` between chunks of a stream, `total` for a whole
/// non-streamed body.
#[derive(Clone, Copy, Debug)]
pub struct StreamLimits {
    pub idle: Duration,
    pub total: Duration,
}

/// How response bodies are metered, shared by all of them.
#[derive(Clone)]
pub struct Metering {
    pub limits: StreamLimits,
    /// Where the completion text of answers without `usage` is counted.
    pub counter: Counter,
}

/// The frame with the `[DONE]` line, waiting for the count its usage chunk reports.
struct Splice {
    bytes: Bytes,
    at: usize,
    prompt: u64,
    job: CountJob,
}

/// What the usage chunk makes of a frame.
enum Chunked {
    Same,
    Replace(Bytes),
    /// The frame waits for a count ([`MeteredBody::splice`]).
    Wait,
}

/// What a settled body bills.
enum Bill {
    Counts(Counts),
    /// The prompt estimate and the count of this completion text.
    Text(String),
}

pub struct MeteredBody {
    inner: Incoming,
    scan: Scan,
    reservation: Option<Reservation>,
    status: StatusCode,
    limits: StreamLimits,
    /// When the backend has been silent (streams) or slow (whole bodies) for too long.
    deadline: Pin<Box<Sleep>>,
    /// Set once the gateway has ended the response itself.
    finished: bool,
    /// The client asked for a usage chunk (`stream_options.include_usage`) and none came yet.
    usage_chunk: Option<UsageChunk>,
    /// The frame with the `[DONE]` line while its usage chunk's count runs.
    splice: Option<Splice>,
    /// The completion tokens the usage chunk reported: what is billed.
    counted: Option<u64>,
    counter: Counter,
}

impl MeteredBody {
    pub fn new(
        inner: Incoming,
        status: StatusCode,
        event_stream: bool,
        reservation: Reservation,
        metering: &Metering,
        usage_chunk: Option<UsageChunk>,
    ) -> MeteredBody {
        let limits = metering.limits;
        let scan = if event_stream { Scan::Sse(SseScanner::new()) } else { Scan::Json(JsonAnswerScanner::new()) };
        let wait = if event_stream { limits.idle } else { limits.total };
        let deadline = Box::pin(tokio::time::sleep(wait));
        let usage_chunk = usage_chunk.filter(|_| event_stream && status.is_success());
        let mut body = MeteredBody {
            inner,
            scan,
            reservation: Some(reservation),
            status,
            limits,
            deadline,
            finished: false,
            usage_chunk,
            splice: None,
            counted: None,
            counter: metering.counter.clone(),
        };
        if body.inner.is_end_stream() {
            body.settle(Outcome::Completed);
        }
        body
    }

    fn read(&mut self, data: &Bytes) {
        match &mut self.scan {
            Scan::Sse(scanner) => scanner.feed(data),
            // An answer that is all in this frame (the usual short one) is parsed at once.
            Scan::Json(scanner) if self.inner.is_end_stream() => scanner.feed_whole(data),
            Scan::Json(scanner) => scanner.feed(data),
        }
    }

    /// Settles the reservation; a completion text too long to count here is counted on the
    /// blocking pool, which settles it ([`Counter`]).
    fn settle(&mut self, outcome: Outcome) {
        let Some(reservation) = self.reservation.take() else { return };
        let status = self.status.as_u16();
        let prompt = reservation.facts().estimated_prompt_tokens;
        match self.bill(outcome, prompt) {
            Bill::Counts(counts) => reservation.settle(status, outcome, counts),
            Bill::Text(text) => self.counter.count_then(reservation.tokenizer(), text, move |completion| {
                reservation.settle(status, outcome, Counts::estimated(prompt, completion))
            }),
        }
    }

    fn bill(&mut self, outcome: Outcome, prompt: u64) -> Bill {
        let success = self.status.is_success();
        match &mut self.scan {
            Scan::Sse(scanner) => match scanner.usage() {
                Some(usage) => Bill::Counts(Counts::reported(usage)),
                None if !success => Bill::Counts(Counts::NONE),
                None => match self.counted {
                    Some(completion) => Bill::Counts(Counts::estimated(prompt, completion)),
                    None => Bill::Text(scanner.take_completion()),
                },
            },
            Scan::Json(scanner) => {
                // A cut body is not a whole answer: its usage is not trusted, nor its text.
                let completed = outcome == Outcome::Completed;
                match scanner.usage().filter(|_| completed) {
                    Some(usage) => Bill::Counts(Counts::reported(usage)),
                    None if !success => Bill::Counts(Counts::NONE),
                    None if completed => Bill::Text(scanner.completion()),
                    None => Bill::Counts(Counts::estimated(prompt, 0)),
                }
            }
        }
    }
}

fn join(chunks: &[Bytes]) -> Bytes {
    match chunks {
        [] => Bytes::new(),
        [one] => one.clone(),
        many => {
            let mut all = BytesMut::with_capacity(many.iter().map(Bytes::len).sum());
            for chunk in many {
                all.extend_from_slice(chunk);
            }
            all.freeze()
        }
    }
}

/// Why a backend body stopped early.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the backend body failed: {0}")]
    Backend(hyper::Error),
    #[error("the backend sent no more of a non-streamed response within {0:?}")]
    Stalled(Duration),
}

impl MeteredBody {
    /// The backend went silent. A stream ends cleanly with an SSE `error` event the client can
    /// read (and `[DONE]` is never sent); a whole body cannot be completed, so the connection is
    /// cut. Either way the tokens already streamed are charged.
    fn stalled(&mut self) -> Option<Result<Frame<Bytes>, BodyError>> {
        self.settle(Outcome::BackendStalled);
        self.finished = true;
        match self.scan {
            Scan::Sse(_) => {
                let message = format!(
                    "event: error\ndata: {{\"error\":{{\"code\":\"GatewayTimeout\",\"message\":\"the backend sent nothing for {} ms; tollgate ended the stream (the tokens streamed so far are billed)\",\"status\":504}}}}\n\n",
                    self.limits.idle.as_millis()
                );
                Some(Ok(Frame::data(Bytes::from(message))))
            }
            _ => Some(Err(BodyError::Stalled(self.limits.total))),
        }
    }
}

impl MeteredBody {
    /// What to send for `data`, after it was read: the usage chunk put in before `[DONE]` when
    /// the client asked for one and the backend sent none.
    fn with_usage_chunk(&mut self, data: &Bytes, last: bool) -> Chunked {
        let Scan::Sse(scanner) = &self.scan else { return Chunked::Same };
        let Some(chunk) = self.usage_chunk.as_mut() else { return Chunked::Same };
        let (out, done) = if scanner.usage().is_some() {
            // The backend sent usage after all: nothing to add; give back what was held.
            (chunk.take_held().map(|held| join(&[held, data.clone()])), true)
        } else {
            match chunk.rewrite(data) {
                Rewritten::Same => (None, false),
                Rewritten::Changed(bytes) => (Some(bytes), false),
                Rewritten::Done { bytes, at } => {
                    let (prompt, job) = match &self.reservation {
                        Some(r) => {
                            (r.facts().estimated_prompt_tokens, self.counter.count(r.tokenizer(), scanner.completion()))
                        }
                        None => (0, CountJob::Ready(0)),
                    };
                    self.splice = Some(Splice { bytes, at, prompt, job });
                    return Chunked::Wait;
                }
            }
        };
        self.chunk_frame(data, out, done, last)
    }

    /// The frame after the usage chunk read it: bytes still held go out with the last frame.
    fn chunk_frame(&mut self, data: &Bytes, out: Option<Bytes>, done: bool, last: bool) -> Chunked {
        let held = if last { self.usage_chunk.as_mut().and_then(UsageChunk::take_held) } else { None };
        if done || last {
            self.usage_chunk = None;
        }
        match (out, held) {
            (None, None) => Chunked::Same,
            (Some(out), None) => Chunked::Replace(out),
            (None, Some(held)) => Chunked::Replace(join(&[data.clone(), held])),
            (Some(out), Some(held)) => Chunked::Replace(join(&[out, held])),
        }
    }

    /// The frame with the `[DONE]` line, once its usage chunk's count is there.
    fn splice(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let Some(splice) = self.splice.as_mut() else { return Poll::Ready(None) };
        let Poll::Ready(completion) = Pin::new(&mut splice.job).poll(cx) else { return Poll::Pending };
        let Some(Splice { bytes, at, prompt, .. }) = self.splice.take() else { return Poll::Ready(None) };
        self.counted = Some(completion);
        let spliced = match &self.usage_chunk {
            Some(chunk) => chunk.splice(&bytes, at, Counts::estimated(prompt, completion)),
            None => bytes.clone(),
        };
        let out = match self.chunk_frame(&spliced, None, true, self.inner.is_end_stream()) {
            Chunked::Replace(out) => out,
            Chunked::Same | Chunked::Wait => spliced,
        };
        self.after_data();
        Poll::Ready(Some(Ok(Frame::data(out))))
    }

    /// After a data frame: a stream's idle clock restarts; the end settles.
    fn after_data(&mut self) {
        if matches!(self.scan, Scan::Sse(_)) {
            // A stream only has to keep moving; the idle clock restarts with every chunk.
            let next = tokio::time::Instant::now() + self.limits.idle;
            self.deadline.as_mut().reset(next);
        }
        if self.inner.is_end_stream() {
            self.settle(Outcome::Completed);
        }
    }
}

impl Body for MeteredBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(None);
        }
        if this.splice.is_some() {
            return this.splice(cx);
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if polled.is_pending() && this.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(this.stalled());
        }
        let mut polled = polled;
        if this.usage_chunk.is_some() {
            if let Poll::Ready(None) = polled {
                // The stream ended with bytes held back (they were not the `[DONE]` line).
                if let Some(held) = this.usage_chunk.take().and_then(|mut c| c.take_held()) {
                    this.settle(Outcome::Completed);
                    this.finished = true;
                    return Poll::Ready(Some(Ok(Frame::data(held))));
                }
            }
        }
        match &mut polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.read(data);
                }
                if let Some(data) = frame.data_ref().cloned() {
                    match this.with_usage_chunk(&data, this.inner.is_end_stream()) {
                        Chunked::Same => {}
                        Chunked::Replace(bytes) => *frame = Frame::data(bytes),
                        Chunked::Wait => return this.splice(cx),
                    }
                }
                this.after_data();
            }
            Poll::Ready(Some(Err(_))) => this.settle(Outcome::BackendBroke),
            Poll::Ready(None) => this.settle(Outcome::Completed),
            Poll::Pending => {}
        }
        polled.map(|frame| frame.map(|result| result.map_err(BodyError::Backend)))
    }

    fn is_end_stream(&self) -> bool {
        self.finished || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        self.settle(Outcome::ClientGone);
    }
}
