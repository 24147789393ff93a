//! The usage ledger: the durable, append-only billing record (JSON lines), written by one
//! writer thread with group commit.
//!
//! - Every authenticated request appends one line ([`line::LedgerLine`]).
//! - The request path only queues the record (a bounded channel, never blocking). When the
//!   buffer is full the record is counted in `tollgate_ledger_records_dropped_total` and logged
//!   with its request id and counts: never silently lost.
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

use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

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
        let (queue, receiver) = mpsc::sync_channel(config.buffer_records.max(1));
        let thread_metrics = Arc::clone(&metrics);
        let thread_config = config.clone();
        let writer = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || writer::run(file, receiver, thread_config, thread_metrics))?;
        Ok(Ledger { queue, writer: Mutex::new(Some(writer)), metrics, config })
    }

    /// Queues a record; never blocks the request.
    pub fn append(&self, record: UsageRecord) {
        match self.queue.try_send(Message::Record(Box::new(record))) {
            Ok(()) => {}
            Err(TrySendError::Full(Message::Record(record)) | TrySendError::Disconnected(Message::Record(record))) => {
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
            let _ = done.recv();
        }
    }

    /// Flushes everything and stops the writer (at shutdown).
    pub fn close(&self) {
        let (ack, done) = mpsc::sync_channel(1);
        if self.queue.send(Message::Close(ack)).is_ok() {
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
