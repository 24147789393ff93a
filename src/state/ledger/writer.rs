//! The writer thread: appends lines, syncs in groups, rotates, and repairs a torn last line.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Instant, SystemTime};

use super::line::{LedgerLine, format_time};
use super::{LedgerConfig, Message, SyncFaults};
use crate::state::metrics::Metrics;

pub struct LedgerFile {
    path: PathBuf,
    out: BufWriter<File>,
    size: u64,
    /// How much of the file the last successful sync covered: all that is surely on disk.
    synced: u64,
    /// The lines written since then, kept until a sync covers them: after a failed `fdatasync`
    /// Linux may have dropped those pages and report a later sync as a success, so they are
    /// written again (to a fresh file) rather than trusted.
    pending: Vec<u8>,
    /// UTC day (`YYYY-MM-DD`) of the records in this file, for daily rotation.
    day: Option<String>,
    /// A sync failed since the last good one: this file is not trusted again; the pending lines
    /// go to a fresh one.
    suspect: bool,
    faults: Option<Arc<SyncFaults>>,
}

impl LedgerFile {
    pub fn open(config: &LedgerConfig) -> io::Result<LedgerFile> {
        if let Some(dir) = config.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new().create(true).read(true).append(true).open(&config.path)?;
        let cut = repair(&mut file)?;
        if cut > 0 {
            tracing::warn!(path = %config.path.display(), bytes = cut, "cut a partial last line left by a crash from the ledger");
        }
        let size = file.metadata()?.len();
        let day = last_day(&config.path);
        Ok(LedgerFile {
            path: config.path.clone(),
            out: BufWriter::with_capacity(64 * 1024, file),
            size,
            synced: size,
            pending: Vec::new(),
            day,
            suspect: false,
            faults: None,
        })
    }

    /// Fails syncs as told (tests): a failed sync also cuts the file back to what the last good
    /// one covered, as a kernel that dropped the dirty pages would leave it.
    pub fn with_faults(mut self, faults: Option<Arc<SyncFaults>>) -> LedgerFile {
        self.faults = faults;
        self
    }

    fn write(&mut self, line: &LedgerLine<'_>) -> io::Result<()> {
        // Into the pending lines directly (they are kept until a sync covers them anyway).
        let start = self.pending.len();
        if let Err(error) = serde_json::to_writer(&mut self.pending, line) {
            self.pending.truncate(start);
            return Err(io::Error::other(error));
        }
        self.pending.push(b'\n');
        let bytes = &self.pending[start..];
        if let Err(error) = self.out.write_all(bytes) {
            self.pending.truncate(start);
            return Err(error);
        }
        self.size += bytes.len() as u64;
        if self.day.is_none() {
            self.day = Some(line.day().to_owned());
        }
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        let result = self.try_sync();
        self.suspect = result.is_err();
        result
    }

    fn try_sync(&mut self) -> io::Result<()> {
        self.out.flush()?;
        if self.faults.as_ref().is_some_and(|f| f.take()) {
            let _ = self.out.get_ref().set_len(self.synced);
            return Err(io::Error::other("injected fdatasync failure"));
        }
        self.out.get_ref().sync_data()?;
        self.synced = self.size;
        self.pending.clear();
        // Keep room for an ordinary batch, not what a long outage piled up.
        if self.pending.capacity() > 4 << 20 {
            self.pending = Vec::new();
        }
        Ok(())
    }

    /// After a failed sync: cuts the file back to what the last good sync covered, puts it aside
    /// (`PATH.<UTC timestamp>.sync-failed`, read by `tollgate usage` like a rotated file), and
    /// writes the unsynced lines again to a fresh `PATH`, synced. On error the lines stay
    /// pending for the next try.
    fn rewrite_pending(&mut self) -> io::Result<PathBuf> {
        let aside = free_name(&self.path, ".sync-failed");
        std::fs::rename(&self.path, &aside)?;
        let fresh = OpenOptions::new().create(true).read(true).append(true).open(&self.path)?;
        // The old writer's buffer is dropped unwritten (into_parts does not flush).
        let old = std::mem::replace(&mut self.out, BufWriter::with_capacity(64 * 1024, fresh));
        let (old_file, _unwritten) = old.into_parts();
        if let Err(error) = old_file.set_len(self.synced).and_then(|()| old_file.sync_all()) {
            tracing::error!(%error, file = %aside.display(), "could not cut the set-aside ledger file back to its synced length; it may repeat some records of the new file");
        }
        self.out.write_all(&self.pending)?;
        self.size = self.pending.len() as u64;
        self.synced = 0;
        self.sync()?;
        sync_dir(&self.path);
        Ok(aside)
    }

    fn needs_rotation(&self, config: &LedgerConfig, next_day: &str) -> bool {
        let by_size = config.rotate_bytes > 0 && self.size >= config.rotate_bytes;
        let by_day = config.rotate_daily && self.day.as_deref().is_some_and(|d| d != next_day);
        by_size || by_day
    }

    /// Syncs, renames the file to `PATH.<UTC timestamp>` and starts a new one.
    fn rotate(&mut self) -> io::Result<PathBuf> {
        self.sync()?;
        let target = free_name(&self.path, "");
        std::fs::rename(&self.path, &target)?;
        let file = OpenOptions::new().create(true).read(true).append(true).open(&self.path)?;
        sync_dir(&self.path);
        self.out = BufWriter::with_capacity(64 * 1024, file);
        self.size = 0;
        self.day = None;
        Ok(target)
    }
}

/// A name beside `path` for a file moved aside: `PATH.<UTC timestamp>[.n]<suffix>`, not taken.
fn free_name(path: &Path, suffix: &str) -> PathBuf {
    let stamp = format_time(SystemTime::now()).replace([':', '-'], "");
    let mut name = PathBuf::from(format!("{}.{stamp}{suffix}", path.display()));
    let mut n = 1;
    while name.exists() {
        name = PathBuf::from(format!("{}.{stamp}.{n}{suffix}", path.display()));
        n += 1;
    }
    name
}

/// Makes a rename and a new file in `path`'s directory durable (best effort).
fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(dir) = File::open(dir) {
            let _ = dir.sync_all();
        }
    }
}

/// Cuts everything after the last `\n` (a line torn by a crash). Returns the bytes cut.
fn repair(file: &mut File) -> io::Result<u64> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(0);
    }
    // Read backwards in blocks until a newline is found.
    let mut end = len;
    let mut block = vec![0u8; 64 * 1024];
    loop {
        let start = end.saturating_sub(block.len() as u64);
        let chunk = &mut block[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|b| *b == b'\n') {
            let keep = start + i as u64 + 1;
            if keep < len {
                file.set_len(keep)?;
                file.sync_data()?;
            }
            return Ok(len - keep);
        }
        if start == 0 {
            file.set_len(0)?;
            file.sync_data()?;
            return Ok(len);
        }
        end = start;
    }
}

/// The day of the last line of an existing ledger, if any (read from the file's tail).
fn last_day(path: &Path) -> Option<String> {
    let mut file = File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    let start = len.saturating_sub(64 * 1024);
    file.seek(SeekFrom::Start(start)).ok()?;
    let mut tail = String::new();
    file.read_to_string(&mut tail).ok()?;
    let last = tail.lines().next_back()?;
    LedgerLine::parse(last).ok().map(|l| l.day().to_owned())
}

/// The writer's end of the queue.
pub(super) struct Queue {
    messages: Receiver<Message>,
    /// Records appended and not yet synced, nor dropped (the senders wake the writer when it
    /// reaches their mark); the writer takes off what each sync covered.
    pending: Arc<AtomicUsize>,
    /// Records handled (written or dropped) since the last sync.
    taken: usize,
}

impl Queue {
    /// The next message. With nothing to sync, it waits for one (the first record after an idle
    /// spell wakes it); with records to sync, it takes what has queued and otherwise sleeps until
    /// the sync is due (`Timeout`), woken early by a flush, closing, or `flush_records` records.
    fn next(
        &self,
        oldest_unsynced: Option<Instant>,
        interval: std::time::Duration,
    ) -> Result<Message, RecvTimeoutError> {
        match oldest_unsynced {
            None => self.messages.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(since) => match self.messages.try_recv() {
                Ok(message) => Ok(message),
                Err(TryRecvError::Disconnected) => Err(RecvTimeoutError::Disconnected),
                Err(TryRecvError::Empty) => {
                    let wait = interval.saturating_sub(since.elapsed());
                    if !wait.is_zero() {
                        std::thread::park_timeout(wait);
                    }
                    Err(RecvTimeoutError::Timeout)
                }
            },
        }
    }

    pub(super) fn new(messages: Receiver<Message>, pending: Arc<AtomicUsize>) -> Queue {
        Queue { messages, pending, taken: 0 }
    }

    /// A record taken from the queue was written or dropped.
    fn handled(&mut self) {
        self.taken += 1;
    }

    /// After a sync attempt: when it left nothing unsynced, the records taken so far are no
    /// longer pending (after a failed one they still are, and it is retried).
    fn synced(&mut self, unsynced: usize) {
        if unsynced == 0 {
            self.pending.fetch_sub(std::mem::take(&mut self.taken), Ordering::Relaxed);
        }
    }
}

pub(super) fn run(mut file: LedgerFile, mut queue: Queue, config: LedgerConfig, metrics: Arc<Metrics>) {
    let mut unsynced = 0usize;
    let mut oldest_unsynced: Option<Instant> = None;
    loop {
        let message = queue.next(oldest_unsynced, config.flush_interval);
        let mut answer = None;
        let mut stop = false;
        match message {
            Ok(Message::Record(record)) if unsynced >= config.buffer_records.max(1) => {
                // Syncs keep failing and this many records wait in memory: stop taking more,
                // loudly, rather than grow without bound.
                metrics.ledger_dropped.inc();
                tracing::error!(
                    request_id = record.request_id.as_str(),
                    deployment = record.deployment.name.as_str(),
                    total_tokens = record.total_tokens,
                    waiting = unsynced,
                    "ledger cannot sync: usage record not written"
                );
                queue.handled();
            }
            Ok(Message::Record(record)) => {
                let line = LedgerLine::from_record(&record);
                if file.needs_rotation(&config, line.day()) {
                    sync(&mut file, &mut unsynced, &mut oldest_unsynced, &metrics);
                    queue.synced(unsynced);
                }
                // Only a file whose lines are all synced is rotated.
                if unsynced == 0 && file.needs_rotation(&config, line.day()) {
                    match file.rotate() {
                        Ok(to) => tracing::info!(rotated_to = %to.display(), "ledger rotated"),
                        Err(error) => {
                            metrics.ledger_write_errors.inc();
                            tracing::error!(%error, "ledger rotation failed; writing on to the current file");
                        }
                    }
                }
                match file.write(&line) {
                    Ok(()) => {
                        unsynced += 1;
                        oldest_unsynced.get_or_insert_with(Instant::now);
                    }
                    Err(error) => {
                        metrics.ledger_write_errors.inc();
                        tracing::error!(%error, request_id = line.request_id.as_ref(), "ledger write failed");
                    }
                }
                queue.handled();
            }
            Ok(Message::Flush(ack)) => answer = Some(ack),
            Ok(Message::Close(ack)) => {
                answer = Some(ack);
                stop = true;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => stop = true,
        }
        let due = oldest_unsynced.is_some_and(|since| since.elapsed() >= config.flush_interval);
        if unsynced >= config.flush_records || due || answer.is_some() || stop {
            sync(&mut file, &mut unsynced, &mut oldest_unsynced, &metrics);
            queue.synced(unsynced);
        }
        if let Some(ack) = answer {
            let _ = ack.send(());
        }
        if stop {
            return;
        }
    }
}

fn sync(file: &mut LedgerFile, unsynced: &mut usize, oldest: &mut Option<Instant>, metrics: &Metrics) {
    if *unsynced == 0 && oldest.is_none() {
        return;
    }
    // A file whose sync once failed is never trusted again: straight to a fresh one.
    let synced = if file.suspect { Err(io::Error::other("an earlier sync of this file failed")) } else { file.sync() };
    match synced {
        Ok(()) => metrics.ledger_records.inc_by(*unsynced as u64),
        Err(error) => {
            metrics.ledger_write_errors.inc();
            tracing::error!(
                %error,
                records = *unsynced,
                "ledger fdatasync failed: the records since the last good sync may not be on disk; writing them again to a fresh file"
            );
            match file.rewrite_pending() {
                Ok(aside) => {
                    tracing::warn!(records = *unsynced, set_aside = %aside.display(), "ledger records written again and synced");
                    metrics.ledger_records.inc_by(*unsynced as u64);
                }
                Err(error) => {
                    metrics.ledger_write_errors.inc();
                    tracing::error!(
                        %error,
                        records = *unsynced,
                        "ledger records NOT on disk: kept in memory and written again at the next sync; check the disk"
                    );
                    return;
                }
            }
        }
    }
    *unsynced = 0;
    *oldest = None;
}
