use std::time::{Duration, Instant, SystemTime};

use prometheus::Registry;

use super::report::{GroupBy, summarize};
use super::*;
use crate::config::Config;
use crate::core::api::ApiRoute;
use crate::core::clock::{Clock, MonotonicClock};
use crate::core::keys::KeySlot;
use crate::core::meter::CountSource;
use crate::state::deployment::Deployment;
use crate::state::record::Outcome;
use crate::state::request_id::RequestId;

fn deployment() -> Arc<Deployment> {
    let text = r#"[[deployments]]
name = "dep"
model = "m"
backend = "http://127.0.0.1:1"
keys = ["sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"]
"#;
    let config = Config::parse(text, "t.toml", &|_| None).unwrap();
    let clock: Arc<dyn Clock> = Arc::new(MonotonicClock::new());
    Arc::new(Deployment::from_config(&config.deployments[0], &clock))
}

fn record(deployment: &Arc<Deployment>, tokens: u64, at: SystemTime) -> UsageRecord {
    UsageRecord {
        deployment: Arc::clone(deployment),
        key_slot: KeySlot::Secondary,
        consumer: None,
        admitted: true,
        route: ApiRoute::ChatCompletions,
        status: 200,
        outcome: Outcome::Completed,
        prompt_tokens: tokens,
        completion_tokens: 1,
        total_tokens: tokens + 1,
        source: CountSource::Reported,
        reserved_tokens: 100,
        estimated_prompt_tokens: tokens,
        request_id: RequestId::generate(),
        started_at: at,
        duration: Duration::from_micros(1500),
        limited_by: None,
        refusal: None,
        backend: None,
        attempts: 0,
        queued: None,
    }
}

fn metrics() -> Arc<Metrics> {
    Arc::new(Metrics::new(Registry::new()).unwrap())
}

fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap().lines().map(str::to_owned).collect()
}

#[test]
fn records_are_written_as_complete_json_lines_and_flushed_on_close() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.jsonl");
    let metrics = metrics();
    let ledger = Ledger::open(LedgerConfig::at(path.clone()), metrics.clone()).unwrap();
    let dep = deployment();
    for i in 0..2500 {
        ledger.append(record(&dep, i, SystemTime::now()));
    }
    ledger.close();
    let lines = lines(&path);
    assert_eq!(lines.len(), 2500);
    let first = line::LedgerLine::parse(&lines[0]).unwrap();
    assert_eq!((first.deployment.as_ref(), first.model.as_ref(), first.key_slot.as_ref()), ("dep", "m", "secondary"));
    assert_eq!(
        (first.meter.as_ref(), first.route.as_ref(), first.source.as_ref()),
        ("inference", "chat_completions", "reported")
    );
    assert_eq!(first.duration_ms, 1.5);
    assert!(first.time.ends_with('Z'));
    assert_eq!(metrics.ledger_records.get(), 2500);
}

#[test]
fn group_commit_syncs_within_the_interval_without_close() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.jsonl");
    let ledger = Ledger::open(LedgerConfig::at(path.clone()), metrics()).unwrap();
    ledger.append(record(&deployment(), 1, SystemTime::now()));
    // Not an assertion on time: wait (bounded) for the writer's interval sync to happen at all.
    let started = Instant::now();
    while lines(&path).is_empty() && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(lines(&path).len(), 1);
    ledger.flush();
    ledger.close();
}

#[test]
fn flush_records_queued_wake_the_sleeping_writer_to_sync() {
    // Appends do not wake the writer; with an hour's interval, only reaching `flush_records`
    // gets these synced before close.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.jsonl");
    let mut config = LedgerConfig::at(path.clone());
    config.flush_interval = Duration::from_secs(3600);
    config.flush_records = 3;
    let ledger = Ledger::open(config, metrics()).unwrap();
    let dep = deployment();
    for i in 0..3 {
        ledger.append(record(&dep, i, SystemTime::now()));
    }
    // Not an assertion on time: wait (bounded) for the sync to happen at all.
    let started = Instant::now();
    while lines(&path).len() < 3 && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(lines(&path).len(), 3, "three records reached flush_records and were synced without a flush");
    ledger.close();
}

#[test]
fn a_torn_last_line_is_cut_when_the_ledger_is_opened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.jsonl");
    let ledger = Ledger::open(LedgerConfig::at(path.clone()), metrics()).unwrap();
    let dep = deployment();
    for i in 0..3 {
        ledger.append(record(&dep, i, SystemTime::now()));
    }
    ledger.close();
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("{\"time\":\"2026-11-29T00:00:00Z\",\"deploym");
    std::fs::write(&path, &text).unwrap();
    let ledger = Ledger::open(LedgerConfig::at(path.clone()), metrics()).unwrap();
    ledger.append(record(&dep, 9, SystemTime::now()));
    ledger.close();
    let lines = lines(&path);
    assert_eq!(lines.len(), 4);
    for line in &lines {
        line::LedgerLine::parse(line).unwrap();
    }
}

#[test]
fn rotation_by_size_and_by_day_keeps_old_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.jsonl");
    let config = LedgerConfig { rotate_bytes: 2000, ..LedgerConfig::at(path.clone()) };
    let ledger = Ledger::open(config, metrics()).unwrap();
    let dep = deployment();
    for i in 0..30 {
        ledger.append(record(&dep, i, SystemTime::now()));
    }
    // A record from the next day starts a new file too.
    ledger.append(record(&dep, 1, SystemTime::now() + Duration::from_secs(86_400)));
    ledger.close();
    let files = report::ledger_files(&path).unwrap();
    assert!(files.len() >= 3, "{files:?}");
    let total: usize = files.iter().map(|f| lines(f).len()).sum();
    assert_eq!(total, 31);
    for file in &files[..files.len() - 1] {
        assert!(std::fs::metadata(file).unwrap().len() <= 2000 + 600, "{file:?}");
    }
    assert_eq!(lines(&path).len(), 1, "the new day's record is alone in the current file");
}

#[test]
fn summaries_add_up_by_deployment_day_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.jsonl");
    let ledger = Ledger::open(LedgerConfig::at(path.clone()), metrics()).unwrap();
    let dep = deployment();
    let day = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_900_000);
    for i in 1..=10 {
        ledger.append(record(&dep, i, day));
    }
    ledger.close();
    let report = summarize(&path, None, None, GroupBy::Deployment).unwrap();
    let sums = &report.rows[&("dep".to_owned(), "inference".to_owned())];
    assert_eq!((sums.requests, sums.prompt_tokens, sums.completion_tokens, sums.total_tokens), (10, 55, 10, 65));
    let by_key = summarize(&path, None, None, GroupBy::Key).unwrap();
    assert!(by_key.rows.contains_key(&("dep/secondary".to_owned(), "inference".to_owned())));
    let since = report::parse_time("2099-01-01").unwrap();
    assert!(summarize(&path, Some(since), None, GroupBy::Day).unwrap().rows.is_empty());
    assert!(report::parse_time("yesterday").is_err());
}

/// Every line of the ledger and of the files set aside or rotated beside it.
fn all_lines(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_string_lossy().starts_with("usage.jsonl") {
            out.extend(lines(&path));
        }
    }
    out
}

fn request_ids(lines: &[String]) -> Vec<String> {
    let mut ids: Vec<String> =
        lines.iter().map(|l| line::LedgerLine::parse(l).unwrap().request_id.into_owned()).collect();
    ids.sort();
    ids
}

#[test]
fn a_failed_fdatasync_is_not_trusted_the_records_are_written_again_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.jsonl");
    let metrics = metrics();
    let faults = Arc::new(SyncFaults::default());
    let ledger =
        Ledger::open_with_faults(LedgerConfig::at(path.clone()), metrics.clone(), Some(faults.clone())).unwrap();
    let dep = deployment();
    let mut written = Vec::new();
    for i in 0..5 {
        let r = record(&dep, i, SystemTime::now());
        written.push(r.request_id.as_str().to_owned());
        ledger.append(r);
    }
    ledger.flush();
    // The next sync fails and, as a kernel may, the unsynced pages are gone (the fault cuts the
    // file back): a writer that simply syncs again would report them written and lose them.
    faults.fail_next(1);
    for i in 5..12 {
        let r = record(&dep, i, SystemTime::now());
        written.push(r.request_id.as_str().to_owned());
        ledger.append(r);
    }
    ledger.flush();
    // Twice in a row (the fresh file's first sync fails too): they wait in memory, then go out.
    faults.fail_next(2);
    for i in 12..20 {
        let r = record(&dep, i, SystemTime::now());
        written.push(r.request_id.as_str().to_owned());
        ledger.append(r);
    }
    ledger.flush();
    assert_eq!(metrics.ledger_records.get(), 12, "the last batch is not counted written: it is not on disk");
    ledger.flush();
    ledger.close();
    written.sort();
    assert_eq!(request_ids(&all_lines(dir.path())), written, "every record exactly once");
    assert_eq!(metrics.ledger_records.get(), 20);
    assert!(metrics.ledger_write_errors.get() >= 3);
    // The file set aside holds only what was synced into it; `tollgate usage` reads it too.
    let report = summarize(&path, None, None, GroupBy::Deployment).unwrap();
    assert_eq!(report.rows.values().map(|s| s.requests).sum::<u64>(), 20);
}

/// `time`'s own RFC 3339, which `line::format_time` writes by hand.
fn rfc3339_by_time(at: SystemTime) -> String {
    time::OffsetDateTime::from(at)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

#[test]
fn record_times_are_written_as_time_writes_rfc3339() {
    let epoch = SystemTime::UNIX_EPOCH;
    for (secs, nanos) in [
        (0, 0),
        (1_764_705_001, 0),
        (1_764_705_001, 100_000_000),
        (1_764_705_001, 123_456_789),
        (1_764_705_001, 1),
        (951_782_400, 10),
        (253_402_300_799, 999_999_999),
    ] {
        let at = epoch + Duration::new(secs, nanos);
        assert_eq!(line::format_time(at), rfc3339_by_time(at), "{secs}.{nanos:09}");
    }
    let before = epoch - Duration::new(86_400 * 365, 5_000);
    assert_eq!(line::format_time(before), rfc3339_by_time(before));
    // Past year 9999 (where `time`'s `From<SystemTime>` panics) it falls back, as before.
    let far = epoch + Duration::from_secs(253_402_300_800);
    assert_eq!(line::format_time(far), "1970-01-01T00:00:00Z");
}

proptest::proptest! {
    #[test]
    fn any_record_time_is_written_as_time_writes_rfc3339(secs in 0u64..253_402_300_800, nanos in 0u32..1_000_000_000, zeros in 0u32..9) {
        // Trailing zeros in the fraction are where the two could differ: make them common.
        let nanos = nanos - nanos % 10u32.pow(zeros);
        let at = SystemTime::UNIX_EPOCH + Duration::new(secs, nanos);
        proptest::prop_assert_eq!(line::format_time(at), rfc3339_by_time(at));
    }
}
