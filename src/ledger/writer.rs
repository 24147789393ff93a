//! The writer thread: appends lines, syncs in groups, rotates, and repairs a torn last line.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Instant, SystemTime};

use super::line::{LedgerLine, format_time};
use super::{LedgerConfig, Message};
use crate::metrics::Metrics;

pub struct LedgerFile {
    path: PathBuf,
    out: BufWriter<File>,
    size: u64,
    /// UTC day (`YYYY-MM-DD`) of the records in this file, for daily rotation.
    day: Option<String>,
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
        Ok(LedgerFile { path: config.path.clone(), out: BufWriter::with_capacity(64 * 1024, file), size, day })
    }

    fn write(&mut self, line: &LedgerLine<'_>) -> io::Result<()> {
        let mut bytes = serde_json::to_vec(line).map_err(io::Error::other)?;
        bytes.push(b'\n');
        self.out.write_all(&bytes)?;
        self.size += bytes.len() as u64;
        if self.day.is_none() {
            self.day = Some(line.day().to_owned());
        }
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.out.flush()?;
        self.out.get_ref().sync_data()
    }

    fn needs_rotation(&self, config: &LedgerConfig, next_day: &str) -> bool {
        let by_size = config.rotate_bytes > 0 && self.size >= config.rotate_bytes;
        let by_day = config.rotate_daily && self.day.as_deref().is_some_and(|d| d != next_day);
        by_size || by_day
    }

    /// Syncs, renames the file to `PATH.<UTC timestamp>` and starts a new one.
    fn rotate(&mut self) -> io::Result<PathBuf> {
        self.sync()?;
        let stamp = format_time(SystemTime::now()).replace([':', '-'], "");
        let mut target = PathBuf::from(format!("{}.{stamp}", self.path.display()));
        let mut n = 1;
        while target.exists() {
            target = PathBuf::from(format!("{}.{stamp}.{n}", self.path.display()));
            n += 1;
        }
        std::fs::rename(&self.path, &target)?;
        let file = OpenOptions::new().create(true).read(true).append(true).open(&self.path)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Make the rename and the new file durable too.
            if let Ok(dir) = File::open(dir) {
                let _ = dir.sync_all();
            }
        }
        self.out = BufWriter::with_capacity(64 * 1024, file);
        self.size = 0;
        self.day = None;
        Ok(target)
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

pub fn run(mut file: LedgerFile, queue: Receiver<Message>, config: LedgerConfig, metrics: Arc<Metrics>) {
    let mut unsynced = 0usize;
    let mut oldest_unsynced: Option<Instant> = None;
    loop {
        let wait = match oldest_unsynced {
            Some(since) => config.flush_interval.saturating_sub(since.elapsed()),
            None => std::time::Duration::from_secs(3600),
        };
        let message = queue.recv_timeout(wait);
        let mut answer = None;
        let mut stop = false;
        match message {
            Ok(Message::Record(record)) => {
                let line = LedgerLine::from_record(&record);
                if file.needs_rotation(&config, line.day()) {
                    sync(&mut file, &mut unsynced, &mut oldest_unsynced, &metrics);
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
    match file.sync() {
        Ok(()) => metrics.ledger_records.inc_by(*unsynced as u64),
        Err(error) => {
            metrics.ledger_write_errors.inc();
            tracing::error!(%error, records = *unsynced, "ledger sync failed; will retry with the next batch");
            return;
        }
    }
    *unsynced = 0;
    *oldest = None;
}
