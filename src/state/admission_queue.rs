//! A deployment's waiting room: requests that do not fit its buckets now but will within the
//! wait they are allowed (`max_wait_ms`) queue here instead of getting a 429, and take turns by
//! [`FairQueue`] (deficit round robin over callers, weighted by reserved tokens). Only the
//! request whose turn it is tries the buckets, at the moment they will hold it; when admitted
//! it hands the turn on. The queue is bounded (`max_queued_requests`, `max_queued_tokens`: past
//! them a 429 at once), a request whose client goes away leaves it (its [`Ticket`] is dropped:
//! nothing was taken, nothing is released), and [`AdmissionQueue::close`] (shutdown) sends every
//! waiter away with a 503.
//!
//! One `std` mutex guards the ring; it is held for a few map operations, never across an await.
//! Requests of a deployment with nobody waiting read one atomic and go on.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

use crate::config::QueueConfig;
use crate::core::quota::fair::FairQueue;

/// Who a waiting request is, for fairness: a consumer, or one of the deployment's two keys.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CallerId {
    Key(u8),
    Consumer(Arc<str>),
}

#[derive(Debug)]
pub struct AdmissionQueue {
    inner: Mutex<Inner>,
    /// Requests queued (read without the lock by every request of the deployment).
    waiting: AtomicUsize,
    /// `max_wait` in nanoseconds, also read without the lock (zero for most deployments).
    max_wait_ns: AtomicU64,
    /// Set on shutdown, when `on_close` wakes every waiter. (Not a `watch` channel: that allocates
    /// ~400 bytes a deployment, and 10,000 idle deployments should cost little.)
    closing: AtomicBool,
    on_close: Notify,
}

#[derive(Debug)]
struct Inner {
    config: QueueConfig,
    fair: FairQueue<CallerId>,
    /// Each waiter's wake-up.
    turns: std::collections::HashMap<u64, Arc<Notify>>,
    /// The request whose turn it is.
    current: Option<u64>,
    next_id: u64,
}

/// Why a request could not queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Full {
    Requests(usize),
    Tokens(u64),
    /// The gateway is shutting down.
    Closed,
}

/// What a queued request waited for and got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closed {
    ShuttingDown,
}

impl AdmissionQueue {
    pub fn new(config: QueueConfig) -> AdmissionQueue {
        AdmissionQueue {
            inner: Mutex::new(Inner {
                fair: FairQueue::new(1),
                config,
                turns: std::collections::HashMap::new(),
                current: None,
                next_id: 0,
            }),
            waiting: AtomicUsize::new(0),
            max_wait_ns: AtomicU64::new(nanos(config.max_wait)),
            closing: AtomicBool::new(false),
            on_close: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A reload's new settings; requests already queued keep their place.
    pub fn set_config(&self, config: QueueConfig) {
        self.lock().config = config;
        self.max_wait_ns.store(nanos(config.max_wait), Ordering::Relaxed);
    }

    pub fn config(&self) -> QueueConfig {
        self.lock().config
    }

    /// Whether the deployment lets requests wait at all (one atomic load).
    pub fn waits(&self) -> bool {
        self.max_wait_ns.load(Ordering::Relaxed) > 0
    }

    /// The longest a request may wait: its own ask (`x-ms-max-wait-ms`), at most the deployment's.
    pub fn allowed_wait(&self, asked: Option<Duration>) -> Duration {
        let most = Duration::from_nanos(self.max_wait_ns.load(Ordering::Relaxed));
        asked.map_or(most, |asked| asked.min(most))
    }

    /// Whether requests are waiting (then a new one queues behind them instead of trying first).
    pub fn busy(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) > 0
    }

    /// Requests queued and the tokens they reserve.
    pub fn depth(&self) -> (usize, u64) {
        let inner = self.lock();
        (inner.fair.len(), inner.fair.tokens())
    }

    /// Queues a request of `caller` reserving `tokens`.
    pub fn enqueue(self: &Arc<Self>, caller: CallerId, tokens: u64) -> Result<Ticket, Full> {
        if self.is_closed() {
            return Err(Full::Closed);
        }
        let mut inner = self.lock();
        let config = inner.config;
        if inner.fair.len() >= config.max_requests {
            return Err(Full::Requests(config.max_requests));
        }
        if inner.fair.tokens().saturating_add(tokens) > config.max_tokens {
            return Err(Full::Tokens(config.max_tokens));
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let turn = Arc::new(Notify::new());
        inner.turns.insert(id, Arc::clone(&turn));
        inner.fair.push(caller, id, tokens);
        self.waiting.store(inner.fair.len(), Ordering::Relaxed);
        if inner.current.is_none() {
            advance(&mut inner);
        }
        Ok(Ticket { queue: Arc::clone(self), id, turn, done: false })
    }

    /// Shutdown: nobody new queues, and every waiter is woken to leave with a 503.
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.on_close.notify_waiters();
    }

    pub fn is_closed(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Resolves once the queue is closed (at once when it already is).
    pub async fn closed(&self) {
        let notified = self.on_close.notified();
        let mut notified = std::pin::pin!(notified);
        // Registered before the flag is read: a `close` between the two still wakes it.
        notified.as_mut().enable();
        if !self.is_closed() {
            notified.await;
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Gives the turn to the request at the head of the fair order and wakes it.
fn advance(inner: &mut Inner) {
    inner.current = inner.fair.head();
    if let Some(turn) = inner.current.and_then(|id| inner.turns.get(&id)) {
        turn.notify_one();
    }
}

/// A queued request's place. Dropped unused (timed out, client gone, refused), it leaves the
/// queue and hands the turn on if it had it.
#[derive(Debug)]
pub struct Ticket {
    queue: Arc<AdmissionQueue>,
    id: u64,
    turn: Arc<Notify>,
    done: bool,
}

impl Ticket {
    /// Waits until it is this request's turn to try the buckets.
    pub async fn turn(&self) -> Result<(), Closed> {
        loop {
            if self.queue.is_closed() {
                return Err(Closed::ShuttingDown);
            }
            if self.queue.lock().current == Some(self.id) {
                return Ok(());
            }
            tokio::select! {
                () = self.turn.notified() => {}
                () = self.queue.closed() => {}
            }
        }
    }

    /// The request was admitted on its turn: it leaves, its tokens counted to its caller, and
    /// the next request's turn begins.
    pub fn admitted(mut self) {
        self.leave(true);
    }

    fn leave(&mut self, served: bool) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let mut inner = self.queue.lock();
        if served {
            inner.fair.served(self.id);
        } else {
            inner.fair.remove(self.id);
        }
        inner.turns.remove(&self.id);
        self.queue.waiting.store(inner.fair.len(), Ordering::Relaxed);
        if inner.current == Some(self.id) || inner.current.is_none() {
            advance(&mut inner);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.leave(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(max_requests: usize, max_tokens: u64) -> Arc<AdmissionQueue> {
        Arc::new(AdmissionQueue::new(QueueConfig { max_wait: Duration::from_secs(5), max_requests, max_tokens }))
    }

    async fn has_turn(ticket: &Ticket) -> bool {
        tokio::time::timeout(Duration::from_millis(20), ticket.turn()).await.is_ok()
    }

    #[tokio::test]
    async fn turns_pass_in_fair_order_and_a_dropped_ticket_hands_its_turn_on() {
        let q = queue(10, 10_000);
        let heavy: Vec<Ticket> =
            (0..3).map(|_| q.enqueue(CallerId::Key(0), 100)).collect::<Result<_, _>>().unwrap_or_default();
        let light = q.enqueue(CallerId::Key(1), 100).unwrap_or_else(|_| unreachable!());
        assert!(q.busy());
        assert_eq!(q.depth(), (4, 400));
        assert!(has_turn(&heavy[0]).await);
        assert!(!has_turn(&light).await && !has_turn(&heavy[1]).await);
        let mut heavy = heavy.into_iter();
        if let Some(first) = heavy.next() {
            first.admitted();
        }
        // The light caller's visit comes next, not the heavy caller's second request.
        assert!(has_turn(&light).await);
        drop(light); // its client went away
        let second = heavy.next().unwrap_or_else(|| unreachable!());
        assert!(has_turn(&second).await);
        drop(second);
        let third = heavy.next().unwrap_or_else(|| unreachable!());
        third.admitted();
        assert!(!q.busy());
        assert_eq!(q.depth(), (0, 0));
    }

    #[tokio::test]
    async fn the_caps_bound_it_and_closing_sends_everyone_away() {
        let q = queue(2, 150);
        let a = q.enqueue(CallerId::Key(0), 100).unwrap_or_else(|_| unreachable!());
        assert_eq!(q.enqueue(CallerId::Key(0), 60).err(), Some(Full::Tokens(150)));
        let b = q.enqueue(CallerId::Consumer(Arc::from("c")), 50).unwrap_or_else(|_| unreachable!());
        assert_eq!(q.enqueue(CallerId::Key(1), 1).err(), Some(Full::Requests(2)));
        q.close();
        assert_eq!(a.turn().await, Err(Closed::ShuttingDown));
        assert_eq!(b.turn().await, Err(Closed::ShuttingDown));
        assert_eq!(q.enqueue(CallerId::Key(1), 1).err(), Some(Full::Closed));
        assert_eq!(q.allowed_wait(Some(Duration::from_secs(60))), Duration::from_secs(5));
        assert_eq!(q.allowed_wait(Some(Duration::from_millis(10))), Duration::from_millis(10));
    }
}
