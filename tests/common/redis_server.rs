//! A real `redis-server` on a free port, owned by a test: started, killed, restarted on the same
//! port. Tests that need one skip (saying why) only when no `redis-server` binary exists; CI
//! installs Debian's.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    /// TLS only (`--tls-port`), with these PEM files: cert, key, CA.
    tls: Option<[String; 3]>,
    /// A node of a Redis Cluster (`--cluster-enabled yes`, its `nodes.conf` in `dir`).
    cluster: bool,
}

impl RedisServer {
    /// A fresh server, or `None` (with the reason printed) when `redis-server` is not installed.
    pub fn start(test: &str) -> Option<RedisServer> {
        if !super::tool_installed(test, "redis-server", "redis-server") {
            return None;
        }
        let mut server =
            RedisServer { child: None, port: 0, dir: tempfile::tempdir().unwrap(), tls: None, cluster: false };
        server.start_on_a_free_port();
        Some(server)
    }

    /// A server that speaks only TLS, with `cert.pem`, `key.pem` and `ca.pem` from `pem_dir`.
    pub fn start_tls(test: &str, pem_dir: &std::path::Path) -> Option<RedisServer> {
        let mut server = RedisServer::start(test)?;
        let file = |name: &str| pem_dir.join(name).display().to_string();
        server.tls = Some([file("cert.pem"), file("key.pem"), file("ca.pem")]);
        server.start_on_a_free_port();
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `kill -9`: no shutdown, no save.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// redis-server cannot be given port 0 (that disables TCP), so a free port is picked and may
    /// be taken by another test's server meanwhile: then another is tried.
    fn start_on_a_free_port(&mut self) {
        for _ in 0..10 {
            self.port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            if self.try_start() {
                return;
            }
        }
        panic!("redis-server could not be started on a free port");
    }

    /// Starts again on the same port, empty (no persistence), and waits until it answers.
    pub fn restart(&mut self) {
        assert!(self.try_start(), "redis-server could not start again on port {} (taken meanwhile?)", self.port);
    }

    /// Starts this server's redis-server on `self.port`; true once it answers and is ours (a
    /// server of another test on the same port does not count).
    fn try_start(&mut self) -> bool {
        self.kill();
        let port = self.port.to_string();
        let mut command = Command::new("redis-server");
        command.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
        command.args(["--dir", self.dir.path().to_str().unwrap()]);
        if self.cluster {
            command.args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]);
            command.args(["--cluster-node-timeout", "1000"]);
        }
        match &self.tls {
            None => command.args(["--port", &port]),
            Some([cert, key, ca]) => command
                .args(["--port", "0", "--tls-port", &port, "--tls-auth-clients", "no"])
                .args(["--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-cert-file", ca]),
        };
        self.child = Some(command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
        let pid = self.child.as_ref().map(Child::id).unwrap_or_default();
        for _ in 0..1000 {
            if self.child.as_mut().is_none_or(|c| !matches!(c.try_wait(), Ok(None))) {
                return false; // ours exited: the port was taken
            }
            let ready = match self.tls {
                None => self
                    .command("INFO server")
                    .is_some_and(|r| r.lines().any(|l| l.trim() == format!("process_id:{pid}"))),
                // Plain commands cannot be sent; ours is alive and the port listens.
                Some(_) => TcpStream::connect(("127.0.0.1", self.port)).is_ok(),
            };
            if ready {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Sends one inline command, returns the raw reply (`None` when Redis cannot be reached).
    pub fn command(&self, command: &str) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        stream.write_all(format!("{command}\r\n").as_bytes()).ok()?;
        let mut reply = vec![0u8; 64 * 1024];
        let n = stream.read(&mut reply).ok()?;
        Some(String::from_utf8_lossy(&reply[..n]).into_owned())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A real Redis Cluster of `primaries` nodes on free ports, made with `redis-cli --cluster create`
/// (the slots split evenly), owned by a test.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// A fresh cluster, once every node says `cluster_state:ok`; `None` (with the reason printed)
    /// when `redis-server` or `redis-cli` is not installed.
    pub fn start(test: &str, primaries: usize) -> Option<RedisCluster> {
        if !super::tool_installed(test, "redis-server", "redis-server")
            || !super::tool_installed(test, "redis-cli", "redis-tools")
        {
            return None;
        }
        let nodes: Vec<RedisServer> = (0..primaries)
            .map(|_| {
                let mut node =
                    RedisServer { child: None, port: 0, dir: tempfile::tempdir().unwrap(), tls: None, cluster: true };
                node.start_on_a_free_port();
                node
            })
            .collect();
        let cluster = RedisCluster { nodes };
        let made = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(cluster.addresses())
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap();
        assert!(made.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&made.stdout));
        for _ in 0..1000 {
            let ok = cluster
                .nodes
                .iter()
                .all(|n| n.command("CLUSTER INFO").is_some_and(|info| info.contains("cluster_state:ok")));
            if ok {
                return Some(cluster);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the cluster did not come up");
    }

    pub fn addresses(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect()
    }

    /// `redis+cluster://` with every node as a seed.
    pub fn url(&self) -> String {
        format!("redis+cluster://{}", self.addresses().join(","))
    }

    /// The node that holds `key`'s slot.
    pub fn node_of(&self, key: &str) -> &RedisServer {
        let slot = self.nodes[0].command(&format!("CLUSTER KEYSLOT {key}")).unwrap();
        let slot: u16 = slot.trim_start_matches(':').trim().parse().unwrap();
        let shards = self.nodes[0].command("CLUSTER NODES").unwrap();
        for line in shards.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let Some(address) = fields.get(1) else { continue };
            let port: u16 = address.split(['@', ':']).nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
            let holds = fields.iter().skip(8).any(|range| match range.split_once('-') {
                Some((a, b)) => a.parse::<u16>().is_ok_and(|a| a <= slot) && b.parse::<u16>().is_ok_and(|b| slot <= b),
                None => range.parse::<u16>() == Ok(slot),
            });
            if holds {
                return self.nodes.iter().find(|n| n.port == port).unwrap();
            }
        }
        panic!("no node holds slot {slot}");
    }
}
