use super::*;
use std::sync::Mutex as StdMutex;

/// A writer tests can read back.
#[derive(Clone, Default)]
struct Captured(Arc<StdMutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// Formats every event with [`format_event`] at a fixed time.
struct Ours {
    format: LogFormat,
    out: Captured,
}

impl<S: Subscriber> Layer<S> for Ours {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut line = Vec::new();
        format_event(&mut line, self.format, SystemTime::UNIX_EPOCH, event.metadata(), |v| event.record(v));
        self.out.0.lock().unwrap().extend_from_slice(&line);
    }
}

fn emit() {
    tracing::info!(
        target: "tollgate::access",
        request_id = "f8cb3108-1d29-45e2-bb77-4126a763a8cd",
        deployment = "odd \"name\"\n\u{e9}",
        status = 200u16,
        delta = -3i64,
        streamed = true,
        duration_us = 4006u64,
    );
}

/// The same event through tracing-subscriber's formatter and ours.
fn both(format: LogFormat) -> (String, String) {
    let (theirs, ours) = (Captured::default(), Captured::default());
    let fmt = tracing_subscriber::fmt::layer().with_writer(theirs.clone()).with_ansi(false).without_time();
    let layer = Ours { format, out: ours.clone() };
    match format {
        LogFormat::Compact => {
            let subscriber = tracing_subscriber::registry().with(fmt.compact()).with(layer);
            tracing::subscriber::with_default(subscriber, emit);
        }
        LogFormat::Json => {
            let subscriber = tracing_subscriber::registry().with(fmt.json()).with(layer);
            tracing::subscriber::with_default(subscriber, emit);
        }
    }
    (theirs.text(), ours.text())
}

#[test]
fn the_compact_access_line_is_tracing_subscribers() {
    let (theirs, ours) = both(LogFormat::Compact);
    let ours = ours.strip_prefix("1970-01-01T00:00:00.000000Z").expect("the timestamp first");
    assert_eq!(ours.trim_start(), theirs.trim_start(), "ours:\n{ours}theirs:\n{theirs}");
    assert!(ours.starts_with("  INFO tollgate::access: request_id=\"f8cb"), "{ours}");
}

#[test]
fn the_json_access_line_is_tracing_subscribers() {
    let (theirs, ours) = both(LogFormat::Json);
    let theirs: serde_json::Value = serde_json::from_str(&theirs).unwrap();
    let mut ours: serde_json::Value = serde_json::from_str(&ours).unwrap();
    assert_eq!(ours["timestamp"], "1970-01-01T00:00:00.000000Z");
    ours.as_object_mut().unwrap().remove("timestamp");
    assert_eq!(ours, theirs);
    assert_eq!(ours["fields"]["deployment"], "odd \"name\"\n\u{e9}");
}

#[test]
fn timestamps_are_rfc3339_utc_with_microseconds() {
    let at = SystemTime::UNIX_EPOCH + Duration::from_micros(1_796_198_309_835_583);
    let mut line = Vec::new();
    timestamp(&mut line, at);
    let expected = time::OffsetDateTime::from(at)
        .format(&time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
        ))
        .unwrap();
    assert_eq!(String::from_utf8(line).unwrap(), expected);
    assert_eq!(expected, "2026-12-02T07:58:29.835583Z");
}

#[test]
fn every_line_comes_out_in_order_once_the_guard_drops() {
    let out = Captured::default();
    let (sink, guard) = BufferedSink::start(Box::new(out.clone()));
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let sink = sink.clone();
            std::thread::spawn(move || {
                for i in 0..50_000 {
                    sink.append(format!("{t} {i}\n").as_bytes(), false);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    drop(guard);
    let text = out.text();
    let mut next = [0u32; 2];
    for line in text.lines() {
        let (t, i) = line.split_once(' ').unwrap();
        let t: usize = t.parse().unwrap();
        assert_eq!(i.parse::<u32>().unwrap(), next[t], "thread {t}'s lines in order");
        next[t] += 1;
    }
    assert_eq!(next, [50_000, 50_000], "no line lost");
    // After the guard, a line is written at once by whoever logs it.
    sink.append(b"late\n", false);
    assert!(out.text().ends_with("late\n"));
}

#[test]
fn a_warning_is_written_without_waiting_for_the_buffer_to_fill() {
    let out = Captured::default();
    let (sink, guard) = BufferedSink::start(Box::new(out.clone()));
    sink.append(b"an access line\n", false);
    sink.append(b"a warning\n", true);
    // No time bound is asserted: only that it comes out while the gateway still runs.
    while !out.text().contains("a warning") {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(out.text(), "an access line\na warning\n", "in order, the earlier line with it");
    drop(guard);
}
