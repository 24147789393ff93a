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

use super::json_scan::JsonAnswerScanner;
use super::sse::SseScanner;
use super::usage_chunk::{Rewritten, UsageChunk};
use super::{Counts, Outcome, Reservation};

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
}

impl MeteredBody {
    pub fn new(
        inner: Incoming,
        status: StatusCode,
        event_stream: bool,
        reservation: Reservation,
        limits: StreamLimits,
        usage_chunk: Option<UsageChunk>,
    ) -> MeteredBody {
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
        };
        if body.inner.is_end_stream() {
            body.settle(Outcome::Completed);
        }
        body
    }

    fn read(&mut self, data: &Bytes) {
        match &mut self.scan {
            Scan::Sse(scanner) => scanner.feed(data),
            Scan::Json(scanner) => scanner.feed(data),
        }
    }

    fn settle(&mut self, outcome: Outcome) {
        let Some(reservation) = self.reservation.take() else { return };
        let counts = self.counts(&reservation, outcome);
        reservation.settle(self.status.as_u16(), outcome, counts);
    }

    fn counts(&self, reservation: &Reservation, outcome: Outcome) -> Counts {
        let tokenizer = reservation.tokenizer();
        let prompt = reservation.facts().estimated_prompt_tokens;
        let success = self.status.is_success();
        match &self.scan {
            Scan::Sse(scanner) => match scanner.usage() {
                Some(usage) => Counts::reported(usage),
                None if success => Counts::estimated(prompt, tokenizer.count(scanner.completion())),
                None => Counts::NONE,
            },
            Scan::Json(scanner) => {
                // A cut body is not a whole answer: its usage is not trusted, nor its text.
                let completed = outcome == Outcome::Completed;
                match scanner.usage().filter(|_| completed) {
                    Some(usage) => Counts::reported(usage),
                    None if success => {
                        let text = if completed { scanner.completion() } else { String::new() };
                        Counts::estimated(prompt, tokenizer.count(&text))
                    }
                    None => Counts::NONE,
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
    /// The frame to send for `data`, after it was read: the usage chunk put in before `[DONE]`
    /// when the client asked for one and the backend sent none.
    fn with_usage_chunk(&mut self, data: &Bytes, last: bool) -> Option<Bytes> {
        let Scan::Sse(scanner) = &self.scan else { return None };
        let chunk = self.usage_chunk.as_mut()?;
        let (out, done) = if scanner.usage().is_some() {
            // The backend sent usage after all: nothing to add; give back what was held.
            let held = chunk.take_held();
            (held.map(|h| join(&[h, data.clone()])).map_or(Rewritten::Same(data.clone()), Rewritten::Changed), true)
        } else {
            let prompt = self.reservation.as_ref().map_or(0, |r| r.facts().estimated_prompt_tokens);
            let tokenizer = self.reservation.as_ref().map(Reservation::tokenizer);
            chunk.rewrite(data, || {
                let completion = tokenizer.map_or(0, |t| t.count(scanner.completion()));
                Counts::estimated(prompt, completion)
            })
        };
        let mut out = match out {
            Rewritten::Same(_) if !last => return None,
            Rewritten::Same(bytes) | Rewritten::Changed(bytes) => bytes,
        };
        if last {
            if let Some(held) = chunk.take_held() {
                out = join(&[out, held]);
            }
        }
        if done || last {
            self.usage_chunk = None;
        }
        Some(out)
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
                    if let Some(rewritten) = this.with_usage_chunk(&data, this.inner.is_end_stream()) {
                        *frame = Frame::data(rewritten);
                    }
                }
                if matches!(this.scan, Scan::Sse(_)) {
                    // A stream only has to keep moving; the idle clock restarts with every chunk.
                    let next = tokio::time::Instant::now() + this.limits.idle;
                    this.deadline.as_mut().reset(next);
                }
                if this.inner.is_end_stream() {
                    this.settle(Outcome::Completed);
                }
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
