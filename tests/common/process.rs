//! The real `tollgate` binary as a child process: start it on a configuration file (reading the
//! bound addresses from its log), signal it, stop it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

pub struct Gateway {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub log: PathBuf,
}

/// Starts `tollgate serve --config` and reads the bound addresses from its log.
pub async fn start(dir: &Path, config: &Path, args: &[&str], env: &[(&str, &str)]) -> Gateway {
    let log = dir.join(format!("tollgate-{}.log", rand_suffix()));
    let mut child = Command::new(BIN)
        .args(args)
        .args(["serve", "--config", config.to_str().unwrap()])
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    for _ in 0..3000 {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let find = |name: &str| {
            text.split(&format!("{name}="))
                .nth(1)
                .or_else(|| text.split(&format!("\"{name}\":\"")).nth(1))
                .and_then(|rest| rest.split([' ', '"']).next().and_then(|a| a.parse::<SocketAddr>().ok()))
        };
        if let (Some(addr), Some(admin)) = (find("gateway"), find("admin")) {
            return Gateway { child, addr, admin, log };
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("tollgate did not start: {}", std::fs::read_to_string(&log).unwrap_or_default());
}

pub fn rand_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

pub fn signal(child: &Child, name: &str) {
    assert!(Command::new("kill").args([&format!("-{name}"), &child.id().to_string()]).status().unwrap().success());
}

/// SIGTERM, and a clean exit.
pub fn stop(gw: Gateway) {
    signal(&gw.child, "TERM");
    let mut child = gw.child;
    assert!(child.wait().unwrap().success(), "tollgate did not exit cleanly after SIGTERM");
}

/// Kills these processes (by pid) when dropped: a failing test leaves no gateway running.
pub struct Reaper(pub Vec<u32>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in &self.0 {
            // Already gone after a clean stop: nothing to do, and the error is expected.
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).stderr(Stdio::null()).status();
        }
    }
}

/// Replicas "a", "b" and "c": gateway processes on one configuration, `tables` (its `[limits]`
/// and `[[deployments]]`), each with its own ledger, `<dir>/<name>.jsonl`, and the reader token.
pub struct Replicas {
    pub gateways: Vec<Gateway>,
    dir: PathBuf,
    _reaper: Reaper,
}

pub const REPLICAS: [&str; 3] = ["a", "b", "c"];

impl Replicas {
    pub async fn start(dir: &Path, tables: &str) -> Replicas {
        let mut gateways = Vec::new();
        for name in REPLICAS {
            let ledger = dir.join(format!("{name}.jsonl"));
            let config = format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{tables}\n[ledger]\npath = {:?}\nflush_interval_ms = 50\n{}",
                ledger.display().to_string(),
                super::reader_token_table()
            );
            let path = dir.join(format!("{name}.toml"));
            std::fs::write(&path, config).unwrap();
            gateways.push(start(dir, &path, &[], &[]).await);
        }
        let _reaper = Reaper(gateways.iter().map(|g| g.child.id()).collect());
        Replicas { gateways, dir: dir.to_owned(), _reaper }
    }

    /// Stops each (a clean exit after SIGTERM) and counts the lines their ledgers hold.
    pub fn stop_and_count_ledger_lines(self) -> usize {
        let mut lines = 0;
        for (gw, name) in self.gateways.into_iter().zip(REPLICAS) {
            stop(gw);
            lines += std::fs::read_to_string(self.dir.join(format!("{name}.jsonl"))).unwrap().lines().count();
        }
        lines
    }
}
