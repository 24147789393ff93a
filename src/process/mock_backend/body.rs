//! Response bodies of the mock backend: whole, cut short on purpose, or streamed from a task.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

/// How long a dying backend waits after its last bytes, so they reach the wire before it dies.
pub const DEATH_DELAY: std::time::Duration = std::time::Duration::from_millis(50);

#[derive(Debug)]
pub enum MockBody {
    Full(Option<Bytes>),
    /// Sends the bytes, then fails a moment later (after they were flushed): the server aborts
    /// the connection mid-body.
    Truncated(Option<Bytes>, Pin<Box<tokio::time::Sleep>>),
    /// Sends the bytes, then nothing more, ever (a stalled backend).
    Stalled(Option<Bytes>),
    /// Server-sent events produced by a task; an `Err` aborts the connection.
    Stream(mpsc::Receiver<Result<Bytes, std::io::Error>>),
}

impl MockBody {
    pub fn truncated(bytes: Bytes) -> MockBody {
        MockBody::Truncated(Some(bytes), Box::pin(tokio::time::sleep(DEATH_DELAY)))
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            MockBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            MockBody::Truncated(bytes, death) => match bytes.take() {
                Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                None => {
                    death.as_mut().poll(cx).map(|()| Some(Err(std::io::Error::other("mock backend died mid-body"))))
                }
            },
            MockBody::Stalled(bytes) => match bytes.take() {
                Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                None => Poll::Pending,
            },
            MockBody::Stream(rx) => rx.poll_recv(cx).map(|item| item.map(|r| r.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, MockBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            MockBody::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            _ => SizeHint::default(),
        }
    }
}
