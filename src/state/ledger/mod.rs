//! The usage ledger: the durable, append-only billing record (JSON lines), written by one
//! writer thread with group commit.
//!
//! - Every authenticated request appends one line ([`line::LedgerLine`]).
//! - The request path only queues the record (a bounded channel, never blocking). When the
//!   buffer is full the record is counted in `tollgate_ledger_records_dropped_total` and logged
//!   with its request id and counts: never silently lost.
//! - Queuing a record does not wake the writer: once it has a record to sync it sleeps until the
//!   sync is due, and only `flush_records` queued records (or a flush, or closing) wake it early.
//!   A wake-up per record was two `futex` calls and a thread switch per request, more than the
//!   line itself costs to write (`benches/syscalls.sh`).
//! - The writer batches lines and syncs them to disk (`fdatasync`) every `flush_interval_ms`
//!   (100 ms) or `flush_records` (1,000) records, whichever comes first; shutdown flushes all.
//! - After a crash (`kill -9`) what is missing is what was not yet synced: the batch being
//!   written and the records still queued behind it (up to `buffer_records`); a partial last line
//!   is cut when the ledger is next opened, so every line present is complete.
//! - A failed `fdatasync` is not retried as if nothing happened (the kernel may have dropped the
//!   pages and report the next sync a success): the unsynced lines, kept in memory, are written
//!   again to a fresh file and counted written only once a sync covering them succeeded.
//! - Rotation by size (`rotate_bytes`) or at the UTC day boundary: the file is renamed to
//!   `PATH.<UTC timestamp>` and kept; a new `PATH` starts.

pub mod line;
pub mod report;
mod writer;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, Thread};

use crate::state::metrics::Metrics;
use crate::state::record::UsageRecord;

use crate::config::ledger::LedgerConfig;

/// Makes the next syncs fail (tests of the writer's recovery).
#[derive(Debug, Default)]
pub struct SyncFaults(std::sync::atomic::AtomicU32);

impl SyncFaults {
    pub fn fail_next(&self, syncs: u32) {
        self.0.store(syncs, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether this sync is to fail (and one fewer will).
    fn take(&self) -> bool {
        self.0
            .fetch_update(std::sync::atomic::Ordering::SeqCst, std::sync::atomic::Ordering::SeqCst, |n| {
                n.checked_sub(1)
            })
            .is_ok()
    }
}

enum Message {
    Record(Box<UsageRecord>),
    /// Write and sync everything before this, then answer.
    Flush(SyncSender<()>),
    /// Flush, then stop.
    Close(SyncSender<()>),
}

/// A handle on the ledger writer.
pub struct Ledger {
    queue: SyncSender<Message>,
    /// Records appended and not yet synced (nor dropped) by the writer.
    pending: Arc<AtomicUsize>,
    /// How many queued records wake the writer before its sync is due.
    wake_at: usize,
    writer_thread: Thread,
    writer: Mutex<Option<JoinHandle<()>>>,
    metrics: Arc<Metrics>,
    pub config: LedgerConfig,
}

impl Ledger {
    /// Opens (or creates) the ledger, repairing a partial last line, and starts the writer.
    pub fn open(config: LedgerConfig, metrics: Arc<Metrics>) -> std::io::Result<Ledger> {
        Ledger::open_with_faults(config, metrics, None)
    }

    /// As [`open`](Self::open), with syncs that fail when `faults` says so (tests).
    pub fn open_with_faults(
        config: LedgerConfig,
        metrics: Arc<Metrics>,
        faults: Option<Arc<SyncFaults>>,
    ) -> std::io::Result<Ledger> {
        let file = writer::LedgerFile::open(&config)?.with_faults(faults);
        let capacity = config.buffer_records.max(1);
        let (queue, receiver) = mpsc::sync_channel(capacity);
        let pending = Arc::new(AtomicUsize::new(0));
        let writer_queue = writer::Queue::new(receiver, Arc::clone(&pending));
        let thread_metrics = Arc::clone(&metrics);
        let thread_config = config.clone();
        let writer = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || writer::run(file, writer_queue, thread_config, thread_metrics))?;
        // At `flush_records` (the sync it is for), or earlier when the buffer is smaller, so
        // that a burst does not find it full while the writer sleeps.
        let wake_at = config.flush_records.clamp(1, (capacity / 2).max(1));
        Ok(Ledger {
            queue,
            pending,
            wake_at,
            writer_thread: writer.thread().clone(),
            writer: Mutex::new(Some(writer)),
            metrics,
            config,
        })
    }

    /// Queues a record; never blocks the request.
    pub fn append(&self, record: UsageRecord) {
        // Counted before it is queued, so the writer never takes off more than was counted.
        let pending = self.pending.fetch_add(1, Ordering::Relaxed) + 1;
        match self.queue.try_send(Message::Record(Box::new(record))) {
            Ok(()) => {
                if pending == self.wake_at {
                    self.writer_thread.unpark();
                }
            }
            Err(TrySendError::Full(Message::Record(record)) | TrySendError::Disconnected(Message::Record(record))) => {
                self.pending.fetch_sub(1, Ordering::Relaxed);
                self.metrics.ledger_dropped.inc();
                tracing::error!(
                    request_id = record.request_id.as_str(),
                    deployment = record.deployment.name.as_str(),
                    total_tokens = record.total_tokens,
                    "ledger buffer full or writer stopped: usage record not written"
                );
            }
            Err(_) => {}
        }
    }

    /// Waits until everything queued so far is on disk.
    pub fn flush(&self) {
        let (ack, done) = mpsc::sync_channel(1);
        if self.queue.send(Message::Flush(ack)).is_ok() {
            self.writer_thread.unpark();
            let _ = done.recv();
        }
    }

    /// Flushes everything and stops the writer (at shutdown).
    pub fn close(&self) {
        let (ack, done) = mpsc::sync_channel(1);
        if self.queue.send(Message::Close(ack)).is_ok() {
            self.writer_thread.unpark();
            let _ = done.recv();
        }
        let handle = self.writer.lock().ok().and_then(|mut h| h.take());
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests;
