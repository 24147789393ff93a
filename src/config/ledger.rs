//! `[ledger]`: where and how the usage ledger is written.

use std::path::PathBuf;
use std::time::Duration;

/// Ledger settings (`[ledger]` in the configuration).
#[derive(Clone, Debug, PartialEq)]
pub struct LedgerConfig {
    pub path: PathBuf,
    pub flush_interval: Duration,
    pub flush_records: usize,
    /// Rotate when the file reaches this size (0: never by size).
    pub rotate_bytes: u64,
    /// Rotate when the UTC day changes.
    pub rotate_daily: bool,
    /// Records that may wait for the writer before new ones are dropped (and counted).
    pub buffer_records: usize,
}

impl LedgerConfig {
    pub fn at(path: PathBuf) -> LedgerConfig {
        LedgerConfig {
            path,
            flush_interval: Duration::from_millis(100),
            flush_records: 1000,
            rotate_bytes: 256 * 1024 * 1024,
            rotate_daily: true,
            buffer_records: 100_000,
        }
    }
}
