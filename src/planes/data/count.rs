//! Counting the tokens of answers that report no usage, off the runtime's workers when the text
//! is long.
//!
//! A BPE count runs at about 60 MiB/s: a 1 MiB completion is ~17 ms, during which a runtime
//! worker would serve nobody else. Texts up to [`Tokenizer::inline_limit`] (well under 100 µs
//! of counting) are counted in place; longer ones on tokio's blocking pool. The jobs are counted
//! so that shutdown waits for them ([`Counter::idle`]) before it writes out the ledger: a record
//! whose count is still running is not lost.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::core::estimate::Tokenizer;

/// Hands long counts to the blocking pool and knows how many are running. Cheap to clone.
#[derive(Clone, Default)]
pub struct Counter {
    jobs: Arc<Jobs>,
}

#[derive(Default)]
struct Jobs {
    running: AtomicUsize,
    idle: Notify,
}

/// One job's share of [`Jobs::running`], given back however the job ends (a panic included).
struct Running(Arc<Jobs>);

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Counter {
    pub fn new() -> Counter {
        Counter::default()
    }

    /// The runtime to hand a count of `len` bytes to, when it is too long to make here.
    fn pool(tokenizer: Tokenizer, len: usize) -> Option<tokio::runtime::Handle> {
        if len <= tokenizer.inline_limit() {
            return None;
        }
        tokio::runtime::Handle::try_current().ok()
    }

    /// Counts `text` and calls `then` with the count: here when the text is short (or there is
    /// no runtime to hand it to), on the blocking pool otherwise.
    pub fn count_then(&self, tokenizer: Tokenizer, text: String, then: impl FnOnce(u64) + Send + 'static) {
        let Some(handle) = Counter::pool(tokenizer, text.len()) else { return then(tokenizer.count(&text)) };
        let running = self.enter();
        handle.spawn_blocking(move || {
            let _running = running;
            then(tokenizer.count(&text));
        });
    }

    /// The count of `text`, as a future: ready at once for a short text (counted in place, not
    /// copied); a long one is copied to the blocking pool.
    pub fn count(&self, tokenizer: Tokenizer, text: &str) -> CountJob {
        let Some(handle) = Counter::pool(tokenizer, text.len()) else { return CountJob::Ready(tokenizer.count(text)) };
        let running = self.enter();
        let text = text.to_owned();
        CountJob::Running(handle.spawn_blocking(move || {
            let _running = running;
            tokenizer.count(&text)
        }))
    }

    fn enter(&self) -> Running {
        self.jobs.running.fetch_add(1, Ordering::AcqRel);
        Running(Arc::clone(&self.jobs))
    }

    /// How many counts are running on the blocking pool.
    pub fn running(&self) -> usize {
        self.jobs.running.load(Ordering::Acquire)
    }

    /// Resolves once no count is running (at once when none is).
    pub async fn idle(&self) {
        loop {
            let notified = self.jobs.idle.notified();
            tokio::pin!(notified);
            // Registered before the check, so a job ending in between still wakes us.
            notified.as_mut().enable();
            if self.running() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// A count in progress.
pub enum CountJob {
    Ready(u64),
    Running(JoinHandle<u64>),
}

impl Future for CountJob {
    type Output = u64;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u64> {
        match self.get_mut() {
            CountJob::Ready(n) => Poll::Ready(*n),
            CountJob::Running(handle) => match Pin::new(handle).poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(n)) => Poll::Ready(n),
                Poll::Ready(Err(error)) => {
                    // Only a panic in the tokenizer or a runtime shutting down mid-count gets
                    // here; the caller bills what it knows without the completion.
                    tracing::error!(%error, "a token count on the blocking pool did not finish; the completion is billed as 0 tokens");
                    Poll::Ready(0)
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::thread::ThreadId;

    use super::*;

    fn long_text() -> String {
        "Hello world! ".repeat(Tokenizer::Bpe.inline_limit() / 13 + 1)
    }

    #[tokio::test]
    async fn a_short_text_is_counted_in_place_and_a_long_one_on_another_thread() {
        // A current-thread runtime: its only worker is this thread.
        let here = std::thread::current().id();
        let counter = Counter::new();
        let (tx, rx) = mpsc::channel::<(u64, ThreadId)>();
        let short = "Hello world!".to_owned();
        let tx_short = tx.clone();
        counter.count_then(Tokenizer::Bpe, short, move |n| {
            tx_short.send((n, std::thread::current().id())).unwrap();
        });
        let (n, thread) = rx.recv().unwrap();
        assert_eq!((n, thread), (3, here));

        let long = long_text();
        let expected = Tokenizer::Bpe.count(&long);
        counter.count_then(Tokenizer::Bpe, long, move |n| {
            tx.send((n, std::thread::current().id())).unwrap();
        });
        counter.idle().await;
        let (n, thread) = rx.recv().unwrap();
        assert_eq!(n, expected);
        assert_ne!(thread, here, "a long text is counted off the runtime's worker");
        assert_eq!(counter.running(), 0);
    }

    #[tokio::test]
    async fn the_future_form_counts_the_same() {
        let counter = Counter::new();
        let long = long_text();
        let expected = Tokenizer::Bpe.count(&long);
        let job = counter.count(Tokenizer::Bpe, &long);
        assert!(matches!(job, CountJob::Running(_)));
        assert_eq!(job.await, expected);
        let job = counter.count(Tokenizer::Chars, "abcde");
        assert!(matches!(job, CountJob::Ready(2)));
        assert_eq!(job.await, 2);
    }

    #[tokio::test]
    async fn idle_waits_for_every_running_count() {
        let counter = Counter::new();
        let (release, hold) = mpsc::channel::<()>();
        let (done, finished) = mpsc::channel::<u64>();
        counter.count_then(Tokenizer::Bpe, long_text(), move |n| {
            hold.recv().unwrap();
            done.send(n).unwrap();
        });
        assert_eq!(counter.running(), 1);
        let idle = counter.idle();
        tokio::pin!(idle);
        // Not idle while the job is held...
        assert!(futures_poll_once(idle.as_mut()).await.is_pending());
        release.send(()).unwrap();
        // ...and idle once it has handed over its count.
        idle.await;
        assert!(finished.try_recv().is_ok(), "idle came before the job's callback ended");
    }

    #[test]
    fn without_a_runtime_the_count_is_made_in_place() {
        let here = std::thread::current().id();
        let (tx, rx) = mpsc::channel();
        Counter::new().count_then(Tokenizer::Bpe, long_text(), move |_| tx.send(std::thread::current().id()).unwrap());
        assert_eq!(rx.recv().unwrap(), here);
    }

    /// Polls a future once.
    async fn futures_poll_once<F: Future + Unpin>(future: F) -> Poll<F::Output> {
        let mut future = future;
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut future).poll(cx))).await
    }
}
