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
    /// More arguments (`--replicaof host port`).
    args: Vec<String>,
}

impl RedisServer {
    /// A fresh server, or `None` (with the reason printed) when `redis-server` is not installed.
    pub fn start(test: &str) -> Option<RedisServer> {
        if !super::tool_installed(test, "redis-server", "redis-server") {
            return None;
        }
        let mut server = RedisServer {
            child: None,
            port: 0,
            dir: tempfile::tempdir().unwrap(),
            tls: None,
            cluster: false,
            args: Vec::new(),
        };
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

    /// A fresh server replicating `primary` (`--replicaof`), once its link to it is up.
    pub fn start_replica(test: &str, primary: &RedisServer) -> Option<RedisServer> {
        let mut server = RedisServer::start(test)?;
        server.args = vec!["--replicaof".into(), "127.0.0.1".into(), primary.port.to_string()];
        server.start_on_a_free_port();
        for _ in 0..1000 {
            if server.command("INFO replication").is_some_and(|r| r.contains("master_link_status:up")) {
                return Some(server);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the replica never linked to its primary");
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
        command.args(&self.args);
        if self.cluster {
            command.args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]);
            command.args(["--cluster-node-timeout", "1000"]);
        }
        match &self.tls {
            None => command.args(["--port", &port]),
            Some([cert, key, ca]) => command
                .args(["--port", "0", "--tls-port", &port, "--tls-auth-clients", "no"])
                .args(["--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-cert-file", ca])
                .args(["--tls-cluster", if self.cluster { "yes" } else { "no" }]),
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

    /// `redis-cli` against this server (over TLS, trusting its CA, when it speaks only TLS):
    /// its output, `None` when it failed.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let mut cli = Command::new("redis-cli");
        cli.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some([_, _, ca]) = &self.tls {
            cli.args(["--tls", "--cacert", ca]);
        }
        let out = cli.args(args).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
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
        RedisCluster::start_with_replicas(test, primaries, 0)
    }

    /// A cluster of `primaries` with `replicas` replicas each (a replica takes over its primary's
    /// slots a second after the primary stops answering).
    pub fn start_with_replicas(test: &str, primaries: usize, replicas: usize) -> Option<RedisCluster> {
        RedisCluster::make(test, primaries, replicas, None)
    }

    /// A cluster of `primaries` that speaks only TLS (clients and the cluster bus), with
    /// `cert.pem`, `key.pem` and `ca.pem` from `pem_dir`.
    pub fn start_tls(test: &str, primaries: usize, pem_dir: &std::path::Path) -> Option<RedisCluster> {
        RedisCluster::make(test, primaries, 0, Some(pem_dir))
    }

    fn make(test: &str, primaries: usize, replicas: usize, pem_dir: Option<&std::path::Path>) -> Option<RedisCluster> {
        if !super::tool_installed(test, "redis-server", "redis-server")
            || !super::tool_installed(test, "redis-cli", "redis-tools")
        {
            return None;
        }
        let nodes: Vec<RedisServer> = (0..primaries * (1 + replicas))
            .map(|_| {
                let mut node = RedisServer {
                    child: None,
                    port: 0,
                    dir: tempfile::tempdir().unwrap(),
                    tls: pem_dir.map(|dir| {
                        let file = |name: &str| dir.join(name).display().to_string();
                        [file("cert.pem"), file("key.pem"), file("ca.pem")]
                    }),
                    cluster: true,
                    args: Vec::new(),
                };
                node.start_on_a_free_port();
                node
            })
            .collect();
        let cluster = RedisCluster { nodes };
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create").args(cluster.addresses());
        create.args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"]);
        if let Some(dir) = pem_dir {
            create.args(["--tls", "--cacert", &dir.join("ca.pem").display().to_string()]);
        }
        let made = create.output().unwrap();
        assert!(made.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&made.stdout));
        for _ in 0..1000 {
            // Up, and every replica has its primary's data (else it would not take over).
            let ok = cluster.nodes.iter().all(|n| {
                n.cli(&["CLUSTER", "INFO"]).is_some_and(|info| info.contains("cluster_state:ok"))
                    && n.cli(&["INFO", "replication"])
                        .is_some_and(|r| r.contains("role:master") || r.contains("master_link_status:up"))
            });
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

    /// The primary that holds `key`'s slot, as the first node that answers sees it (`None`
    /// while no live primary holds it).
    pub fn primary_of(&self, key: &str) -> Option<usize> {
        let live = self.nodes.iter().find(|n| n.command("PING").is_some())?;
        let slot = live.command(&format!("CLUSTER KEYSLOT {key}"))?;
        let slot: u16 = slot.trim_start_matches(':').trim().parse().ok()?;
        let shards = live.command("CLUSTER NODES")?;
        for line in shards.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(address), Some(flags)) = (fields.get(1), fields.get(2)) else { continue };
            if !flags.contains("master") || flags.contains("fail") {
                continue;
            }
            let port: u16 = address.split(['@', ':']).nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
            let holds = fields.iter().skip(8).any(|range| match range.split_once('-') {
                Some((a, b)) => a.parse::<u16>().is_ok_and(|a| a <= slot) && b.parse::<u16>().is_ok_and(|b| slot <= b),
                None => range.parse::<u16>() == Ok(slot),
            });
            if holds {
                return self.nodes.iter().position(|n| n.port == port);
            }
        }
        None
    }

    /// The node that holds `key`'s slot.
    pub fn node_of(&self, key: &str) -> &RedisServer {
        &self.nodes[self.primary_of(key).expect("no node holds the slot")]
    }
}

/// A real Sentinel (`redis-server sentinel.conf --sentinel`) on a free port, watching `primary`
/// as `main` with a quorum of one: it fails over 1 s after the primary stops answering. Over
/// TLS only, with the primary's certificates, when the primary speaks only TLS.
pub struct Sentinel {
    child: Child,
    pub port: u16,
    tls: Option<[String; 3]>,
    _dir: tempfile::TempDir,
}

impl Sentinel {
    pub fn start(primary: &RedisServer) -> Sentinel {
        for _ in 0..10 {
            let dir = tempfile::tempdir().unwrap();
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let conf = dir.path().join("sentinel.conf");
            let listen = match &primary.tls {
                None => format!("port {port}\n"),
                Some([cert, key, ca]) => format!(
                    "port 0\ntls-port {port}\ntls-cert-file {cert}\ntls-key-file {key}\ntls-ca-cert-file {ca}\n\
                     tls-auth-clients no\ntls-replication yes\n"
                ),
            };
            std::fs::write(
                &conf,
                format!(
                    "{listen}bind 127.0.0.1\ndir {dir}\nsentinel monitor main 127.0.0.1 {primary} 1\n\
                     sentinel down-after-milliseconds main 1000\nsentinel failover-timeout main 5000\n",
                    dir = dir.path().display(),
                    primary = primary.port
                ),
            )
            .unwrap();
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut sentinel = Sentinel { child, port, tls: primary.tls.clone(), _dir: dir };
            for _ in 0..500 {
                if !matches!(sentinel.child.try_wait(), Ok(None)) {
                    break; // the port was taken
                }
                if sentinel.primary_port() == Some(primary.port) {
                    return sentinel;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            // (Dropped: killed, and another port is tried.)
        }
        panic!("no Sentinel could be started");
    }

    /// The port of the primary this Sentinel names now.
    pub fn primary_port(&self) -> Option<u16> {
        let reply = self.ask("SENTINEL get-master-addr-by-name main")?;
        reply.lines().filter_map(|l| l.trim().parse::<u16>().ok()).next()
    }

    fn ask(&self, command: &str) -> Option<String> {
        if let Some([_, _, ca]) = &self.tls {
            let out = Command::new("redis-cli")
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "--tls", "--cacert", ca])
                .args(command.split(' '))
                .output()
                .ok()?;
            return out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned());
        }
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        stream.write_all(format!("{command}\r\n").as_bytes()).ok()?;
        let mut reply = vec![0u8; 4096];
        let n = stream.read(&mut reply).ok()?;
        Some(String::from_utf8_lossy(&reply[..n]).into_owned())
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
