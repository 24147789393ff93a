//! Request bodies in (bounded, read once) and response bodies out (streamed frame by frame).

use std::borrow::Cow;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, request};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Deserialize;

use crate::core::api::ApiRoute;
use crate::core::estimate::{self, Estimate, Tokenizer};
use crate::planes::data::error::ApiError;
use crate::planes::data::metered_body::BodyError;
use crate::planes::data::metered_body::MeteredBody;

/// A response body: either made by the gateway, or the backend's body passed through as it
/// arrives (and metered on the way).
#[expect(
    clippy::large_enum_variant,
    reason = "the metered variant is the common case; boxing it would allocate per request"
)]
pub enum ProxyBody {
    Full(Option<Bytes>),
    Backend(MeteredBody),
}

impl ProxyBody {
    pub fn full(bytes: Bytes) -> ProxyBody {
        ProxyBody::Full(Some(bytes))
    }
}

impl From<Bytes> for ProxyBody {
    fn from(bytes: Bytes) -> ProxyBody {
        ProxyBody::full(bytes)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            ProxyBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Backend(metered) => Pin::new(metered).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(bytes) => bytes.is_none(),
            ProxyBody::Backend(metered) => metered.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            ProxyBody::Backend(metered) => metered.size_hint(),
        }
    }
}

/// Reads a request body, refusing more than `limit` bytes (before reading, when `Content-Length`
/// says so). The body is read through `&mut` so that what a refusal leaves unread can still be
/// drained ([`drain_after_refusal`]).
pub async fn read_limited(headers: &HeaderMap, body: &mut Incoming, limit: usize) -> Result<Bytes, ApiError> {
    let mut declared = None;
    if let Some(length) = headers.get(http::header::CONTENT_LENGTH) {
        match length.to_str().ok().and_then(|s| s.parse::<u64>().ok()) {
            Some(n) if n > limit as u64 => return Err(ApiError::BodyTooLarge { limit }),
            Some(n) => declared = Some(n as usize),
            None => {
                return Err(ApiError::BodyRead { reason: "the Content-Length header is not a number".into() });
            }
        }
    }
    let mut first: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::BodyRead { reason: e.to_string() })?;
        let Ok(data) = frame.into_data() else { continue };
        len += data.len();
        if len > limit {
            return Err(ApiError::BodyTooLarge { limit });
        }
        // One frame is kept as it is; more are joined into one buffer sized from Content-Length
        // (at most 1 MiB ahead of what arrived: a declared length is not yet a body).
        match (&mut first, &mut joined) {
            (None, None) => first = Some(data),
            (Some(_), None) => {
                let ahead = declared.unwrap_or(len).min(len.saturating_add(PREALLOCATE_AT_MOST));
                let mut all = BytesMut::with_capacity(ahead.max(len));
                all.extend_from_slice(&first.take().unwrap_or_default());
                all.extend_from_slice(&data);
                joined = Some(all);
            }
            (_, Some(all)) => all.extend_from_slice(&data),
        }
    }
    Ok(match joined {
        Some(all) => all.freeze(),
        None => first.unwrap_or_default(),
    })
}

/// How far ahead of the bytes received a body buffer is allocated from `Content-Length`.
const PREALLOCATE_AT_MOST: usize = 1 << 20;

/// However small the body limit, this much of a refused HTTP/2 body is drained (more than the
/// flow-control windows a client may already have been given).
const DRAIN_AT_LEAST: usize = 64 << 20;

/// An HTTP/2 request refused before its body was read to the end: dropping the body now would
/// reset the stream (`CANCEL` before the answer is out, `NO_ERROR` after), and clients such as
/// curl then report no response at all. So the rest is read and thrown away in the background,
/// up to four times the body limit (at least 64 MiB) and for at most the body read timeout, as nginx does; only
/// a client that keeps sending past that gets the reset. HTTP/1.1 needs none of this: hyper
/// closes the connection after the answer.
pub fn drain_after_refusal(version: http::Version, mut body: Incoming, limit: usize, timeout: std::time::Duration) {
    if version != http::Version::HTTP_2 || body.is_end_stream() {
        return;
    }
    let budget = limit.saturating_mul(4).max(DRAIN_AT_LEAST);
    tokio::spawn(async move {
        let drain = async {
            let mut read = 0usize;
            while let Some(Ok(frame)) = body.frame().await {
                read += frame.data_ref().map_or(0, Bytes::len);
                if read > budget {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(timeout, drain).await;
    });
}

/// The few top-level body fields the gateway reads. Deserializing into this validates the whole
/// body as JSON in one pass without building a tree of the rest.
#[derive(Debug, Default, Deserialize)]
pub struct BodyFields<'a> {
    #[serde(borrow, default)]
    pub model: Option<Cow<'a, str>>,
}

impl<'a> BodyFields<'a> {
    pub fn parse(body: &'a [u8]) -> Result<BodyFields<'a>, ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::InvalidJson { reason: "the body is empty".into() });
        }
        serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson { reason: e.to_string() })
    }
}

/// Stage 4's estimate: in place for a short body, on the blocking pool for a long one (a
/// 100 KB prompt is ~1.7 ms of BPE counting, too long to hold a runtime worker).
pub(super) async fn estimate_off_worker(
    route: ApiRoute,
    body: &Bytes,
    tokenizer: Tokenizer,
) -> Result<Estimate, estimate::EstimateError> {
    if body.len() <= tokenizer.inline_limit() {
        return estimate::estimate(route, body, tokenizer);
    }
    let owned = body.clone();
    match tokio::task::spawn_blocking(move || estimate::estimate(route, &owned, tokenizer)).await {
        Ok(estimate) => estimate,
        Err(error) => {
            tracing::error!(%error, "the prompt estimate on the blocking pool did not finish; estimating in place");
            estimate::estimate(route, body, tokenizer)
        }
    }
}

impl super::Gateway {
    /// Reads the request body whole (bounded, timed). The body stays in `incoming` until it has
    /// been read to its end, so that a refused one can be drained after the answer (HTTP/2).
    pub(super) async fn read_body(
        &self,
        parts: &request::Parts,
        incoming: &mut Option<Incoming>,
    ) -> Result<Bytes, ApiError> {
        let Some(body) = incoming.as_mut() else { return Ok(Bytes::new()) };
        let read = read_limited(&parts.headers, body, self.max_body_bytes);
        let bytes = match tokio::time::timeout(self.body_read_timeout, read).await {
            Ok(result) => result?,
            Err(_) => return Err(ApiError::BodyTimeout { timeout_ms: self.body_read_timeout.as_millis() as u64 }),
        };
        *incoming = None;
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_and_the_rest_validated() {
        let f =
            BodyFields::parse(br#"{"messages":[{"role":"user","content":"x"}],"model":"dep","stream":true}"#).unwrap();
        assert_eq!(f.model.as_deref(), Some("dep"));
        let f = BodyFields::parse(br#"{"model":"d\u0065p","stream":null}"#).unwrap();
        assert_eq!(f.model.as_deref(), Some("dep"));
    }

    #[test]
    fn non_json_and_non_objects_are_rejected() {
        for bad in [&b""[..], b"  ", b"not json", b"[1,2]", b"{\"a\":1", b"{\"messages\":[}", b"\xff\xfe"] {
            assert!(matches!(BodyFields::parse(bad), Err(ApiError::InvalidJson { .. })), "{bad:?}");
        }
    }
}
