//! The process's log on stderr: every line goes through one buffered writer thread, and the
//! access log line (one per request, target `tollgate::access`) has its own formatter.
//!
//! Why not tracing-subscriber's formatter and writer alone: per request they cost ~16,700
//! instructions (a third of them styling field names through `nu-ansi-term`, even with colours
//! off, the rest `fmt` machinery) and one `write(2)` on the worker's thread (BENCHMARKS.md). The
//! access formatter writes the same line (`name="value"` / `name=123` after the timestamp, level
//! and target, or the same JSON object) with `itoa` into one buffer; the writer thread takes
//! what has gathered every [`FLUSH_INTERVAL`] (at once for warnings and errors, or past
//! [`FLUSH_BYTES`]) and writes it in one call, as nginx's `access_log ... buffer= flush=` does.
//! Every line goes through the same buffer, so lines stay in order. Past [`MAX_BUFFER`] a
//! logging thread waits for the writer (nothing is dropped). tracing-appender's non-blocking
//! writer was not used: it allocates per line and drops lines when full unless it blocks per line.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

use crate::core::utc;

/// The target of the access log's events.
pub const ACCESS_TARGET: &str = "tollgate::access";
/// Longest a line waits in the buffer.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(50);
/// The writer is woken once this much has gathered.
pub const FLUSH_BYTES: usize = 64 * 1024;
/// Past this a logging thread waits for the writer to catch up.
pub const MAX_BUFFER: usize = 8 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// `2026-12-02T07:58:29.835583Z  INFO target: name="value" name=1`
    Compact,
    /// `{"timestamp":"...","level":"INFO","fields":{...},"target":"..."}`
    Json,
}

/// Installs the process's subscriber: `filter` (an `EnvFilter` directive string, e.g. `info`),
/// lines to `out` through the buffered writer. Keep the guard until exit: dropping it writes out
/// what is buffered.
pub fn init(
    format: LogFormat,
    filter: tracing_subscriber::EnvFilter,
    ansi: bool,
    out: Box<dyn Write + Send>,
) -> LogGuard {
    let (sink, guard) = BufferedSink::start(out);
    let fmt = tracing_subscriber::fmt::layer().with_writer(sink.clone()).with_ansi(ansi);
    let others = filter_fn(|meta| meta.target() != ACCESS_TARGET);
    let access = AccessLayer { sink, format }.with_filter(filter_fn(|meta| meta.target() == ACCESS_TARGET));
    let registry = tracing_subscriber::registry().with(filter).with(access);
    let _ = match format {
        LogFormat::Compact => registry.with(fmt.compact().with_filter(others)).try_init(),
        LogFormat::Json => registry.with(fmt.json().with_filter(others)).try_init(),
    };
    guard
}

/// Where lines gather for the writer thread.
#[derive(Clone)]
pub struct BufferedSink {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the writer (urgent lines, a full buffer, closing).
    wake: Condvar,
    /// Wakes loggers waiting for room.
    drained: Condvar,
    out: Mutex<Box<dyn Write + Send>>,
}

#[derive(Default)]
struct State {
    buffer: Vec<u8>,
    urgent: bool,
    closed: bool,
}

/// Stops the writer thread when dropped, after it has written everything out.
pub struct LogGuard {
    sink: BufferedSink,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        {
            let mut state = self.sink.lock();
            state.closed = true;
            self.sink.shared.wake.notify_one();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl BufferedSink {
    /// The sink and the guard of its writer thread (or, when no thread can be started, a sink
    /// that writes each line itself).
    pub fn start(out: Box<dyn Write + Send>) -> (BufferedSink, LogGuard) {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            drained: Condvar::new(),
            out: Mutex::new(out),
        });
        let sink = BufferedSink { shared };
        let writer = sink.clone();
        let thread = std::thread::Builder::new().name("tollgate-log".into()).spawn(move || writer.run()).ok();
        if thread.is_none() {
            sink.lock().closed = true;
        }
        (sink.clone(), LogGuard { sink, thread })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds one line (or part of one). `urgent` lines are written out at once.
    pub fn append(&self, bytes: &[u8], urgent: bool) {
        let mut state = self.lock();
        while state.buffer.len() > MAX_BUFFER && !state.closed {
            state = self.shared.drained.wait(state).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        if state.closed {
            // No writer any more (after the guard, or it could not start): write it ourselves.
            drop(state);
            self.write_out(bytes);
            return;
        }
        let below = state.buffer.len() < FLUSH_BYTES;
        state.buffer.extend_from_slice(bytes);
        if urgent || (below && state.buffer.len() >= FLUSH_BYTES) {
            state.urgent = true;
            self.shared.wake.notify_one();
        }
    }

    fn write_out(&self, bytes: &[u8]) {
        let mut out = self.shared.out.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = out.write_all(bytes);
        let _ = out.flush();
    }

    /// The writer thread: takes what has gathered and writes it in one call.
    fn run(&self) {
        let mut spare = Vec::new();
        loop {
            let mut state = self.lock();
            if !state.urgent && !state.closed {
                state = match self.shared.wake.wait_timeout(state, FLUSH_INTERVAL) {
                    Ok((state, _)) => state,
                    Err(poisoned) => poisoned.into_inner().0,
                };
            }
            let closed = state.closed;
            state.urgent = false;
            std::mem::swap(&mut state.buffer, &mut spare);
            drop(state);
            self.shared.drained.notify_all();
            if !spare.is_empty() {
                self.write_out(&spare);
                // Keep a buffer of ordinary size for the next round, not a burst's.
                if spare.capacity() > 4 * FLUSH_BYTES {
                    spare = Vec::new();
                } else {
                    spare.clear();
                }
            }
            if closed {
                return;
            }
        }
    }
}

/// What tracing-subscriber's formatter writes through: one append per `write` call.
pub struct SinkWriter<'a> {
    sink: &'a BufferedSink,
    urgent: bool,
}

impl Write for SinkWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.sink.append(bytes, self.urgent);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BufferedSink {
    type Writer = SinkWriter<'a>;

    fn make_writer(&'a self) -> SinkWriter<'a> {
        SinkWriter { sink: self, urgent: true }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> SinkWriter<'a> {
        SinkWriter { sink: self, urgent: *meta.level() <= Level::WARN }
    }
}

/// Formats the access log's events (see the module's comment for why by hand).
struct AccessLayer {
    sink: BufferedSink,
    format: LogFormat,
}

thread_local! {
    /// Each logging thread's line, reused: a fresh one was an allocation per request.
    static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl<S: Subscriber> Layer<S> for AccessLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let write = |line: &mut Vec<u8>| {
            line.clear();
            format_event(line, self.format, SystemTime::now(), event.metadata(), |visit| event.record(visit));
            self.sink.append(line, *event.metadata().level() <= Level::WARN);
        };
        // A thread's line is in use only if formatting a field logged (or the thread is ending):
        // then a line of its own.
        let reused = LINE.try_with(|line| match line.try_borrow_mut() {
            Ok(mut line) => {
                write(&mut line);
                if line.capacity() > 64 * 1024 {
                    *line = Vec::new();
                }
                true
            }
            Err(_) => false,
        });
        if reused != Ok(true) {
            write(&mut Vec::new());
        }
    }
}

/// One event as a line: `record` visits its fields.
fn format_event(
    line: &mut Vec<u8>,
    format: LogFormat,
    now: SystemTime,
    meta: &tracing::Metadata<'_>,
    record: impl FnOnce(&mut dyn Visit),
) {
    let level = level_str(*meta.level());
    match format {
        LogFormat::Compact => {
            timestamp(line, now);
            // The level right-aligned in five columns after a space, as tracing-subscriber does.
            line.extend_from_slice(&b"  "[..6 - level.len()]);
            line.extend_from_slice(level.as_bytes());
            line.push(b' ');
            line.extend_from_slice(meta.target().as_bytes());
            line.push(b':');
            record(&mut Fields { line, format, first: true });
        }
        LogFormat::Json => {
            line.extend_from_slice(b"{\"timestamp\":\"");
            timestamp(line, now);
            line.extend_from_slice(b"\",\"level\":\"");
            line.extend_from_slice(level.as_bytes());
            line.extend_from_slice(b"\",\"fields\":{");
            record(&mut Fields { line, format, first: true });
            line.extend_from_slice(b"},\"target\":");
            json_str(line, meta.target());
            line.push(b'}');
        }
    }
    line.push(b'\n');
}

fn level_str(level: Level) -> &'static str {
    match level {
        Level::TRACE => "TRACE",
        Level::DEBUG => "DEBUG",
        Level::INFO => "INFO",
        Level::WARN => "WARN",
        Level::ERROR => "ERROR",
    }
}

/// RFC 3339 in UTC with microseconds (`2026-12-02T07:58:29.835583Z`), as tracing-subscriber
/// writes it.
fn timestamp(line: &mut Vec<u8>, now: SystemTime) {
    let at = time::OffsetDateTime::from(now);
    utc::push_date_time(line, &at);
    line.push(b'.');
    utc::push_padded(line, at.microsecond(), 6);
    line.push(b'Z');
}

/// A string needs no escaping, in Rust's `Debug` or in JSON.
fn plain(value: &str) -> bool {
    value.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

fn json_str(line: &mut Vec<u8>, value: &str) {
    if plain(value) {
        line.push(b'"');
        line.extend_from_slice(value.as_bytes());
        line.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *line, value);
    }
}

/// An event's fields: compact `name="value"` (strings as `Debug` writes them), `name=123`, a
/// message without its name; or JSON `"name":"value"`, `"name":123`, comma-separated.
struct Fields<'a> {
    line: &'a mut Vec<u8>,
    format: LogFormat,
    first: bool,
}

impl Fields<'_> {
    fn name(&mut self, field: &Field) {
        match self.format {
            LogFormat::Compact => {
                self.line.push(b' ');
                self.line.extend_from_slice(field.name().as_bytes());
                self.line.push(b'=');
            }
            LogFormat::Json => {
                if !self.first {
                    self.line.push(b',');
                }
                self.first = false;
                json_str(self.line, field.name());
                self.line.push(b':');
            }
        }
    }

    fn number(&mut self, field: &Field, value: impl itoa::Integer) {
        self.name(field);
        self.line.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        match self.format {
            LogFormat::Compact if field.name() == "message" => {
                self.line.push(b' ');
                self.line.extend_from_slice(value.as_bytes());
            }
            LogFormat::Compact => {
                self.name(field);
                if plain(value) {
                    self.line.push(b'"');
                    self.line.extend_from_slice(value.as_bytes());
                    self.line.push(b'"');
                } else {
                    let mut text = String::new();
                    let _ = write!(text, "{value:?}");
                    self.line.extend_from_slice(text.as_bytes());
                }
            }
            LogFormat::Json => {
                self.name(field);
                json_str(self.line, value);
            }
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.number(field, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.number(field, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.name(field);
        self.line.extend_from_slice(if value { b"true" } else { b"false" });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match self.format {
            LogFormat::Compact => {
                let mut text = String::new();
                if field.name() == "message" {
                    let _ = write!(text, " {value:?}");
                } else {
                    let _ = write!(text, " {}={value:?}", field.name());
                }
                self.line.extend_from_slice(text.as_bytes());
            }
            LogFormat::Json => {
                self.name(field);
                json_str(self.line, &format!("{value:?}"));
            }
        }
    }
}

#[cfg(test)]
mod tests;
