//! The real binary with a configuration file: the ledger after SIGTERM (in-flight streams
//! drained first), after `kill -9` and a restart, and no key in logs, metrics or ledger.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::process::*;
use common::*;
use http::StatusCode;
use tollgate::process::mock_backend::{MockBackend, MockOptions};

fn write_config(dir: &Path, mock: &MockBackend, extra: &str) -> PathBuf {
    let config = format!(
        r#"[server]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[[deployments]]
name = "{DEPLOYMENT}"
model = "azureml://registries/azureml-meta/models/Meta-Llama-3-8B-Instruct"
backend = "{}"
keys = ["{}", "{}"]
{extra}
[ledger]
path = "{}"
flush_interval_ms = 50
"#,
        mock.url(),
        stored(PRIMARY_KEY),
        stored(SECONDARY_KEY),
        dir.join("usage.jsonl").display()
    );
    let path = dir.join("tollgate.toml");
    std::fs::write(&path, config).unwrap();
    path
}

fn ledger_lines(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("usage.jsonl")).unwrap_or_default().lines().map(str::to_owned).collect()
}

#[tokio::test]
async fn sigterm_drains_in_flight_streams_and_the_ledger_counts_every_request() {
    let dir = tempfile::tempdir().unwrap();
    let mock = MockBackend::start(([127, 0, 0, 1], 0).into(), MockOptions::default()).await.unwrap();
    let config = write_config(dir.path(), &mock, "requests_per_minute = 20");
    let gw = start(dir.path(), &config, &[], &[]).await;
    let client = Client::new();
    let url = format!("http://{}/openai/deployments/{DEPLOYMENT}/chat/completions", gw.addr);
    let mut authenticated = 0;
    for _ in 0..19 {
        assert_eq!(client.post(&url, &[("api-key", PRIMARY_KEY)], CHAT).await.status, StatusCode::OK);
        authenticated += 1;
    }
    // One slow stream in flight when SIGTERM arrives: it must finish, and be billed.
    // Its head is here: it is in flight.
    let headers = [("api-key", PRIMARY_KEY), ("x-mock-tokens-per-second", "20"), ("x-mock-completion-tokens", "10")];
    let response = client.send(http::Method::POST, &url, &headers, STREAM_CHAT).await;
    assert_eq!(response.status(), StatusCode::OK);
    let streaming = tokio::spawn(async move {
        use http_body_util::BodyExt;
        String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    });
    // The minute's 20 requests are used up: two rejections, recorded too.
    for _ in 0..2 {
        assert_eq!(client.post(&url, &[("api-key", PRIMARY_KEY)], CHAT).await.status, StatusCode::TOO_MANY_REQUESTS);
        authenticated += 1;
    }
    signal(&gw.child, "TERM");
    let text = streaming.await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "the stream was cut: {text}");
    authenticated += 1;
    let mut child = gw.child;
    assert!(child.wait().unwrap().success());
    let lines = ledger_lines(dir.path());
    assert_eq!(lines.len(), authenticated, "{lines:#?}");
    let records: Vec<serde_json::Value> = lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.iter().filter(|r| r["status"] == 429).count(), 2);
    let stream = records.iter().find(|r| r["completion_tokens"] == 10).expect("the drained stream is billed");
    assert_eq!(stream["outcome"], "completed");
    assert_eq!(stream["source"], "reported");
}

#[tokio::test]
async fn after_kill_9_every_ledger_line_is_whole_and_was_served() {
    let dir = tempfile::tempdir().unwrap();
    let mock = MockBackend::start(([127, 0, 0, 1], 0).into(), MockOptions::default()).await.unwrap();
    let config = small_queue_config(dir.path(), &mock);
    let gw = start(dir.path(), &config, &[], &[]).await;
    let url = format!("http://{}/openai/deployments/{DEPLOYMENT}/chat/completions", gw.addr);
    let (served_tx, mut served_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let load: Vec<_> = (0..8)
        .map(|_| {
            let (url, served) = (url.clone(), served_tx.clone());
            tokio::spawn(async move {
                let client = Client::new();
                for _ in 0..100_000 {
                    let Some(reply) = client.try_post(&url, &[("api-key", PRIMARY_KEY)], CHAT).await else { return };
                    if reply.status == StatusCode::OK {
                        let _ = served.send(reply.header("x-request-id").to_owned());
                    }
                }
            })
        })
        .collect();
    drop(served_tx);
    // Let many batches reach the disk (several times the loss bound below), then kill without
    // warning.
    while ledger_lines(dir.path()).len() < 1000 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal(&gw.child, "KILL");
    let mut child = gw.child;
    let _ = child.wait();
    for task in load {
        task.await.unwrap();
    }
    let mut served = std::collections::HashSet::new();
    while let Ok(id) = served_rx.try_recv() {
        served.insert(id);
    }

    // The next start cuts a torn last line, if the kill left one.
    let gw = start(dir.path(), &config, &[], &[]).await;
    stop(gw);
    let lines = ledger_lines(dir.path());
    assert!(lines.len() >= 1000);
    for line in &lines {
        let record: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let id = record["request_id"].as_str().unwrap();
        assert!(served.contains(id), "the ledger holds a request that was never answered: {id}");
    }
    let raw = std::fs::read(dir.path().join("usage.jsonl")).unwrap();
    assert_eq!(raw.last(), Some(&b'\n'));
    // What is missing is what was not yet synced: at most the queue and one batch (a record is
    // queued before its response ends, so every served request was queued).
    let in_ledger: std::collections::HashSet<String> = lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["request_id"].as_str().unwrap().to_owned())
        .collect();
    let missing = served.iter().filter(|id| !in_ledger.contains(*id)).count();
    assert!(
        missing <= BUFFER_RECORDS + FLUSH_RECORDS,
        "{missing} of {} served requests are not in the ledger; at most {} may be (queue + batch)",
        served.len(),
        BUFFER_RECORDS + FLUSH_RECORDS
    );
}

/// The id of the thread of process `pid` named `name` (from `/proc/PID/task/*/comm`).
fn thread_named(pid: u32, name: &str) -> i32 {
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let entry = entry.unwrap();
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == name {
            return entry.file_name().to_string_lossy().parse().unwrap();
        }
    }
    panic!("process {pid} has no thread named {name}");
}

/// The state letter of a thread (`/proc/PID/task/TID/stat`, after the parenthesised name).
fn thread_state(pid: u32, tid: i32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).unwrap();
    stat.rsplit_once(") ").unwrap().1.chars().next().unwrap()
}

#[tokio::test]
async fn kill_9_with_the_ledger_writer_stalled_loses_at_most_the_queue_and_a_batch_and_logs_the_rest() {
    // The writer thread of the real binary is stopped with ptrace (the rest of the process runs
    // on), as a disk that hangs would stop it. Requests keep being served: their records fill
    // the queue, then are dropped, each counted and logged. Then kill -9.
    let dir = tempfile::tempdir().unwrap();
    let mock = MockBackend::start(([127, 0, 0, 1], 0).into(), MockOptions::default()).await.unwrap();
    let config = small_queue_config(dir.path(), &mock);
    let gw = start(dir.path(), &config, &["--log-format", "json"], &[]).await;
    let _reaper = Reaper(vec![gw.child.id()]);
    let client = Client::new();
    let url = format!("http://{}/openai/deployments/{DEPLOYMENT}/chat/completions", gw.addr);
    let mut served = Vec::new();
    let serve = async |served: &mut Vec<String>, n: usize| {
        for _ in 0..n {
            let reply = client.post(&url, &[("api-key", PRIMARY_KEY)], CHAT).await;
            assert_eq!(reply.status, StatusCode::OK);
            served.push(reply.header("x-request-id").to_owned());
        }
    };
    serve(&mut served, 100).await;
    while ledger_lines(dir.path()).len() < 100 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let pid = gw.child.id();
    let tid = thread_named(pid, "ledger-writer");
    let writer = nix::unistd::Pid::from_raw(tid);
    nix::sys::ptrace::seize(writer, nix::sys::ptrace::Options::empty()).unwrap();
    nix::sys::ptrace::interrupt(writer).unwrap();
    nix::sys::wait::waitpid(writer, Some(nix::sys::wait::WaitPidFlag::__WALL)).unwrap();
    assert_eq!(thread_state(pid, tid), 't', "the writer thread is stopped");

    const AFTER_STALL: usize = 3 * BUFFER_RECORDS;
    serve(&mut served, AFTER_STALL).await;
    let metrics = client.call(http::Method::GET, &format!("http://{}/metrics", gw.admin), &[], "").await.text();
    let dropped = metric(&parse_metrics(&metrics), "tollgate_ledger_records_dropped_total", &[]) as usize;
    // The queue holds at most BUFFER_RECORDS of the records made after the stall; the rest were
    // dropped.
    assert!(
        (AFTER_STALL - BUFFER_RECORDS..=AFTER_STALL).contains(&dropped),
        "{dropped} records dropped of {AFTER_STALL} served with the writer stopped"
    );
    signal(&gw.child, "KILL");
    // The stopped thread reports its end to us, its tracer, before the process can be reaped.
    let _ = nix::sys::wait::waitpid(writer, Some(nix::sys::wait::WaitPidFlag::__WALL));
    let mut child = gw.child;
    let _ = child.wait();
    let log = std::fs::read_to_string(&gw.log).unwrap();
    let logged: std::collections::HashSet<String> = log
        .lines()
        .filter(|l| l.contains("usage record not written"))
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["fields"]["request_id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(logged.len(), dropped, "every dropped record is logged, with its request id");

    let gw = start(dir.path(), &config, &[], &[]).await;
    stop(gw);
    let in_ledger: std::collections::HashSet<String> = ledger_lines(dir.path())
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["request_id"].as_str().unwrap().to_owned())
        .collect();
    let missing: Vec<&String> = served.iter().filter(|id| !in_ledger.contains(*id)).collect();
    let unlogged = missing.iter().filter(|id| !logged.contains(**id)).count();
    eprintln!(
        "served {}, in the ledger {}, dropped and logged {dropped}, missing unlogged {unlogged}",
        served.len(),
        in_ledger.len()
    );
    // The loss bound the README states: what was queued (BUFFER_RECORDS) and the batch in the
    // writer's hands (FLUSH_RECORDS); everything else missing was logged as dropped.
    assert!(
        unlogged <= BUFFER_RECORDS + FLUSH_RECORDS,
        "{unlogged} served requests are neither in the ledger nor logged as dropped (of {} missing)",
        missing.len()
    );
    assert!(missing.len() >= dropped, "a dropped record is in the ledger");
    assert!(in_ledger.len() >= 100, "what was synced before the stall is kept");
}

/// The kill -9 tests' configuration: no quota in the way, and a small queue and batch, so that
/// the loss bounds are tight.
fn small_queue_config(dir: &Path, mock: &MockBackend) -> PathBuf {
    let config = write_config(dir, mock, "requests_per_minute = 1000000\ntokens_per_minute = 100000000");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "flush_interval_ms = 50",
        &format!("flush_interval_ms = 50\nflush_records = {FLUSH_RECORDS}\nbuffer_records = {BUFFER_RECORDS}"),
    );
    std::fs::write(&config, text).unwrap();
    config
}

/// The kill -9 tests' ledger: queue and batch sizes, which bound what a kill may lose.
const BUFFER_RECORDS: usize = 200;
const FLUSH_RECORDS: usize = 50;

#[tokio::test]
async fn no_key_appears_in_logs_metrics_or_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let mock = MockBackend::start(([127, 0, 0, 1], 0).into(), MockOptions::default()).await.unwrap();
    let config = write_config(dir.path(), &mock, "");
    let gw = start(dir.path(), &config, &["--log-format", "json"], &[("TOLLGATE_LOG", "debug")]).await;
    let client = Client::new();
    let url = format!("http://{}/openai/deployments/{DEPLOYMENT}/chat/completions", gw.addr);
    let wrong = "WrongKey0123456789abcdefghijklmn";
    let bearer = format!("Bearer {SECONDARY_KEY}");
    for headers in [[("api-key", PRIMARY_KEY)], [("authorization", bearer.as_str())], [("api-key", wrong)]] {
        client.post(&url, &headers, CHAT).await;
        client.post(&url, &headers, STREAM_CHAT).await;
    }
    let metrics = client.call(http::Method::GET, &format!("http://{}/metrics", gw.admin), &[], "").await.text();
    let log_path = gw.log.clone();
    stop(gw);
    let mut log = String::new();
    std::fs::File::open(&log_path).unwrap().read_to_string(&mut log).unwrap();
    let ledger = ledger_lines(dir.path()).join("\n");
    assert_eq!(ledger_lines(dir.path()).len(), 4);
    assert!(log.contains("tollgate::access"), "the access log is there: {log}");
    for key in [PRIMARY_KEY, SECONDARY_KEY, wrong] {
        for (what, text) in [("log", &log), ("metrics", &metrics), ("ledger", &ledger)] {
            assert!(!text.contains(key), "the {what} holds a key");
        }
    }
}

#[tokio::test]
async fn sighup_reloads_the_configuration_file() {
    let dir = tempfile::tempdir().unwrap();
    let mock = MockBackend::start(([127, 0, 0, 1], 0).into(), MockOptions::default()).await.unwrap();
    let config = write_config(dir.path(), &mock, "");
    let gw = start(dir.path(), &config, &[], &[]).await;
    let client = Client::new();
    let url = format!("http://{}/openai/deployments/added-later/chat/completions", gw.addr);
    assert_eq!(client.post(&url, &[("api-key", OTHER_KEY)], CHAT).await.status, StatusCode::NOT_FOUND);
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "[ledger]",
        &format!(
            "[[deployments]]\nname = \"added-later\"\nmodel = \"m\"\nbackend = \"{}\"\nkeys = [\"{}\"]\n\n[ledger]",
            mock.url(),
            stored(OTHER_KEY)
        ),
    );
    std::fs::write(&config, text).unwrap();
    signal(&gw.child, "HUP");
    let mut status = StatusCode::NOT_FOUND;
    for _ in 0..500 {
        status = client.post(&url, &[("api-key", OTHER_KEY)], CHAT).await.status;
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, StatusCode::OK, "the new deployment is served after SIGHUP");
    stop(gw);
}

#[tokio::test]
async fn a_changed_configuration_file_is_reloaded_without_a_signal() {
    let dir = tempfile::tempdir().unwrap();
    let mock = MockBackend::start(([127, 0, 0, 1], 0).into(), MockOptions::default()).await.unwrap();
    let config = write_config(dir.path(), &mock, "requests_per_minute = 1000");
    let gw = start(dir.path(), &config, &[], &[]).await;
    let client = Client::new();
    let url = format!("http://{}/openai/deployments/{DEPLOYMENT}/chat/completions", gw.addr);
    let limit = |reply: &Reply| reply.header("x-ratelimit-limit-requests").to_owned();
    assert_eq!(limit(&client.post(&url, &[("api-key", PRIMARY_KEY)], CHAT).await), "1000");
    let text =
        std::fs::read_to_string(&config).unwrap().replace("requests_per_minute = 1000", "requests_per_minute = 500");
    std::fs::write(&config, text).unwrap();
    let mut seen = String::new();
    for _ in 0..500 {
        seen = limit(&client.post(&url, &[("api-key", PRIMARY_KEY)], CHAT).await);
        if seen == "500" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, "500", "the file change was picked up");
    stop(gw);
}

#[tokio::test]
async fn a_reload_compares_listeners_with_the_file_not_with_the_command_line_override() {
    let dir = tempfile::tempdir().unwrap();
    let token = "ProcessOwnerToken0123456789abcd";
    let config = dir.path().join("tollgate.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:1\"\n[admin]\nlisten = \"127.0.0.1:2\"\n[[admin.tokens]]\nname = \"ops\"\nrole = \"owner\"\ntoken = \"{}\"\n[[deployments]]\nname = \"d\"\nmodel = \"m\"\nbackend = \"http://127.0.0.1:9\"\nkeys = [\"{}\"]\n",
            stored(token),
            stored(PRIMARY_KEY)
        ),
    )
    .unwrap();
    let log = dir.path().join("tollgate.log");
    let mut child = std::process::Command::new(common::process::BIN)
        .args([
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _reaper = common::process::Reaper(vec![child.id()]);
    let mut admin = None;
    for _ in 0..3000 {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        admin = text
            .split("admin=")
            .nth(1)
            .and_then(|r| r.split([' ', '"']).next())
            .and_then(|a| a.parse::<std::net::SocketAddr>().ok());
        if admin.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let admin = admin.expect("the gateway started");
    let client = Client::new();
    let url = format!("http://{admin}/reload");
    let bearer = format!("Bearer {token}");
    let reply = client.call(http::Method::POST, &url, &[("authorization", &bearer)], "").await;
    assert_eq!(reply.status, http::StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["restartNeeded"], serde_json::json!([]), "the file's listeners did not change");
    // Now the file's gateway address changes: that is reported.
    let text = std::fs::read_to_string(&config).unwrap().replace("127.0.0.1:1", "127.0.0.1:3");
    std::fs::write(&config, text).unwrap();
    let reply = client.call(http::Method::POST, &url, &[("authorization", &bearer)], "").await;
    let needed = reply.json()["restartNeeded"].to_string();
    assert!(needed.contains("[server] listen changed from 127.0.0.1:1 to 127.0.0.1:3"), "{needed}");
    common::process::signal(&child, "TERM");
    assert!(child.wait().unwrap().success());
}
