//! Processes for fault tests and the benchmark: real `redis-server` and Postgres instances that a test
//! owns (so it can kill them), and the real service binaries as child processes (so a test can SIGKILL or
//! SIGTERM them).
//!
//! The binaries are found in `RELAY_BIN_DIR`, or beside the running executable (`target/<profile>/`, also
//! for test executables in `target/<profile>/deps/`): `cargo build --bins` (or `--release`) puts them there.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("relay-{what}-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Sends `signal` (e.g. "TERM", "KILL", "STOP", "CONT") to `pid`.
pub fn signal(pid: u32, signal: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{signal} {pid} failed");
}

pub fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `redis-server` of the test's own, with an append-only file (`appendfsync always`: an acknowledged
/// write survives a crash).
pub struct OwnRedis {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl OwnRedis {
    pub fn start() -> Self {
        let mut redis = Self {
            port: free_port(),
            dir: temp_dir("redis"),
            child: None,
        };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (again) on the same port and data directory.
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (Debian: apt-get install redis-server)");
        self.child = Some(child);
        let url = self.url();
        wait_until("redis-server to answer", Duration::from_secs(10), || {
            redis::Client::open(url.as_str())
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok()
        });
    }

    /// SIGKILL: a crash, not a clean shutdown.
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.crash();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A throwaway Postgres cluster of the test's own (runs as `postgres` when the test runs as root, since
/// Postgres refuses root).
pub struct OwnPostgres {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
}

fn pg_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions.pop().expect(
        "Postgres server binaries under /usr/lib/postgresql (Debian: apt-get install postgresql)",
    )
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// A Postgres tool (`initdb`, `pg_ctl`) on the cluster in `dir`.
fn pg_tool(bin: &Path, tool: &str, dir: &Path) -> Command {
    let mut cmd = as_postgres(&bin.join(tool));
    cmd.arg("-D").arg(dir.join("data"));
    cmd
}

/// Runs `cmd` to its end; fails the test with its stderr unless it succeeded.
fn run_ok(what: &str, cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl OwnPostgres {
    pub fn start() -> Self {
        let dir = temp_dir("pg");
        if is_root() {
            Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&dir)
                .status()
                .unwrap();
        }
        let bin = pg_bin();
        run_ok(
            "initdb",
            pg_tool(&bin, "initdb", &dir).args(["-U", "postgres", "--auth=trust", "--no-sync"]),
        );
        let pg = Self {
            port: free_port(),
            dir,
            bin,
        };
        pg.restart();
        pg
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    pub fn restart(&self) {
        run_ok(
            "pg_ctl start",
            pg_tool(&self.bin, "pg_ctl", &self.dir)
                .arg("-l")
                .arg(self.dir.join("log"))
                .args(["-w", "-t", "30", "-o"])
                .arg(format!(
                    "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
                    self.port,
                    self.dir.display()
                ))
                .arg("start"),
        );
    }

    /// A fast shutdown: clients are disconnected, the server goes away.
    pub fn stop(&self) {
        let _ = pg_tool(&self.bin, "pg_ctl", &self.dir)
            .args(["-m", "fast", "-w", "stop"])
            .output();
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where the service binaries are.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("RELAY_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap();
    // target/<profile>/deps/<test-exe> → target/<profile>
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().unwrap().to_owned()
    } else {
        dir.to_owned()
    }
}

pub fn bin_path(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} not found: build the services first (cargo build --bins; make test does)",
        path.display()
    );
    path
}

/// Runs service `name` with `args` and nothing but `env` in its environment, and waits for it to exit (a
/// service that refuses to start, or `--help`).
pub fn run_to_exit(name: &str, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    std::process::Command::new(bin_path(name))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// One service binary running as a child process, its log kept for the test's failure message.
pub struct Service {
    pub name: &'static str,
    pub port: u16,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Service {
    /// Starts the binary `name` from [`bin_dir`] with `env` and waits until it logs its address and is
    /// ready.
    pub fn start(name: &'static str, env: &[(&str, String)]) -> Self {
        Self::start_program(name, &bin_path(name), env)
    }

    /// [`Service::start`] with the binary at `program` (e.g. a test's `CARGO_BIN_EXE_<name>`).
    pub fn start_program(name: &'static str, program: &Path, env: &[(&str, String)]) -> Self {
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env("RUST_LOG", "info")
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split(" on 127.0.0.1:").nth(1) {
                    if let Ok(port) = rest.split_whitespace().next().unwrap_or("").parse::<u16>() {
                        let _ = tx.send(port);
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                panic!(
                    "{name} did not start; its log:\n{}",
                    log.lock().unwrap().join("\n")
                )
            });
        let service = Self {
            name,
            port,
            child,
            log,
        };
        service.wait_ready();
        service
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A blocking `GET` of `path` on the service.
    pub fn get(&self, path: &str) -> reqwest::blocking::Response {
        reqwest::blocking::get(format!("{}{path}", self.url())).unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn wait_ready(&self) {
        let url = format!("{}/readyz", self.url());
        wait_until(
            &format!("{} to be ready", self.name),
            Duration::from_secs(30),
            || {
                reqwest::blocking::get(&url)
                    .map(|r| r.status().is_success())
                    .unwrap_or(false)
            },
        );
    }

    /// SIGKILL, as a crash or an OOM kill would.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then the exit code (within `limit`).
    pub fn terminate(mut self, limit: Duration) -> Option<i32> {
        signal(self.child.id(), "TERM");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                let log = self.log.lock().unwrap().join("\n");
                let _ = self.child.kill();
                panic!(
                    "{} did not exit within {limit:?} of SIGTERM; its log:\n{log}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits up to `limit` for a log line containing `needle` (a test seam's marker, say).
    pub fn wait_for_log(&self, needle: &str, limit: Duration) {
        let what = format!("{} to log {needle:?}", self.name);
        wait_until(&what, limit, || {
            self.log.lock().unwrap().iter().any(|l| l.contains(needle))
        });
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `env` with each of `extra` set, replacing a value `env` already has.
pub fn with_env<'a>(
    env: &[(&'a str, String)],
    extra: &[(&'a str, &str)],
) -> Vec<(&'a str, String)> {
    let mut env = env.to_vec();
    for (k, v) in extra {
        env.retain(|(key, _)| key != k);
        env.push((*k, (*v).to_owned()));
    }
    env
}

/// Resident and peak resident memory (`VmRSS`, `VmHWM`) of a process in KiB; zeros once it is gone.
pub fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The environment for one test's (or benchmark scenario's) services: its own stream and database, OS-chosen ports.
pub fn env_for(settings: &service::Settings) -> Vec<(&'static str, String)> {
    vec![
        ("REDIS_URL", settings.redis_url.clone()),
        ("DATABASE_URL", settings.database_url.clone()),
        ("STREAM_KEY", settings.stream_key.clone()),
        ("CONSUMER_NAME", settings.consumer_name.clone()),
        ("INGEST_ADDR", "127.0.0.1:0".into()),
        ("GATEWAY_ADDR", "127.0.0.1:0".into()),
        ("PERSISTER_ADDR", "127.0.0.1:0".into()),
        ("PERSISTER_BLOCK_MS", "200".into()),
        ("REDIS_TIMEOUT_MS", "1000".into()),
    ]
}

/// One node of an [`OwnCluster`].
pub struct ClusterNode {
    pub port: u16,
    /// The cluster bus port (set explicitly: the default, port + 10000, may be taken or out of range).
    bus_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl ClusterNode {
    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--cluster-port", &self.bus_port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", ""])
            .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
            .args(["--cluster-config-file", "nodes.conf"])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            // A replica's first sync starts at once (the default waits 5 s for more replicas to join it).
            .args(["--repl-diskless-sync-delay", "0"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("log"))
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (Debian: apt-get install redis-server)");
        self.child = Some(child);
        let url = format!("redis://127.0.0.1:{}", self.port);
        wait_until("a cluster node to answer", Duration::from_secs(10), || {
            redis::Client::open(url.as_str())
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok()
        });
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A plain connection to this node alone (no redirections followed).
    pub fn connection(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(format!("redis://127.0.0.1:{}", self.port))?.get_connection()
    }
}

/// A Redis Cluster of the test's own: three primaries and three replicas, each a `redis-server` with an
/// append-only file fsynced on every write, a node timeout of one second (so a failover takes seconds),
/// all killed on drop.
pub struct OwnCluster {
    pub nodes: Vec<ClusterNode>,
}

impl OwnCluster {
    pub fn start() -> Self {
        let mut nodes: Vec<ClusterNode> = (0..6)
            .map(|_| ClusterNode {
                port: free_port(),
                bus_port: free_port(),
                dir: temp_dir("cluster"),
                child: None,
            })
            .collect();
        for node in &mut nodes {
            node.spawn();
        }
        let cluster = Self { nodes };
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(
                cluster
                    .nodes
                    .iter()
                    .map(|n| format!("127.0.0.1:{}", n.port)),
            )
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli (Debian: apt-get install redis-tools)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        cluster.wait_ok(Duration::from_secs(30));
        cluster
    }

    /// `REDIS_URL` for Relay: every node as a seed.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    /// A cluster connection (following redirections) for test set-up and checks.
    pub fn connection(&self) -> redis::cluster::ClusterConnection {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect();
        redis::cluster::ClusterClientBuilder::new(seeds)
            .connection_timeout(Duration::from_secs(2))
            .response_timeout(Duration::from_secs(5))
            .build()
            .and_then(|c| c.get_connection())
            .expect("connect to the cluster")
    }

    /// Waits until every running node says `cluster_state:ok` and every replica has synced with its
    /// primary (a replica that never synced refuses to be promoted: its data would be arbitrarily old).
    pub fn wait_ok(&self, limit: Duration) {
        wait_until(
            "the cluster to be ok and its replicas synced",
            limit,
            || {
                self.nodes.iter().filter(|n| n.child.is_some()).all(|n| {
                    let Ok(mut c) = n.connection() else {
                        return false;
                    };
                    let ok = redis::cmd("CLUSTER")
                        .arg("INFO")
                        .query::<String>(&mut c)
                        .is_ok_and(|info| info.contains("cluster_state:ok"));
                    let synced = redis::cmd("INFO")
                        .arg("replication")
                        .query::<String>(&mut c)
                        .is_ok_and(|info| {
                            info.contains("role:master") || info.contains("master_link_status:up")
                        });
                    ok && synced
                })
            },
        );
    }

    /// The index of the node serving `key`'s slot as primary, as the running nodes see it (None while
    /// they disagree or none is known).
    pub fn primary_of(&self, key: &str) -> Option<usize> {
        let slot: u16 = self
            .nodes
            .iter()
            .filter(|n| n.child.is_some())
            .find_map(|n| {
                let mut c = n.connection().ok()?;
                redis::cmd("CLUSTER")
                    .arg("KEYSLOT")
                    .arg(key)
                    .query(&mut c)
                    .ok()
            })?;
        let mut seen = None;
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            let nodes: String = node
                .connection()
                .and_then(|mut c| redis::cmd("CLUSTER").arg("NODES").query(&mut c))
                .ok()?;
            let port = nodes.lines().find_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                let serves = f.len() > 8
                    && f[2].contains("master")
                    && !f[2].contains("fail")
                    && f[8..].iter().any(|range| {
                        let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                        matches!((lo.parse::<u16>(), hi.parse::<u16>()), (Ok(lo), Ok(hi)) if lo <= slot && slot <= hi)
                    });
                serves.then(|| f[1].split([':', '@']).nth(1)?.parse::<u16>().ok())?
            })?;
            let index = self.nodes.iter().position(|n| n.port == port)?;
            if seen.is_some_and(|s| s != index) {
                return None;
            }
            seen = Some(index);
        }
        seen
    }

    /// `CLUSTER NODES` as each running node sees it: for a failure message.
    pub fn describe(&self) -> String {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| {
                let view = n
                    .connection()
                    .and_then(|mut c| redis::cmd("CLUSTER").arg("NODES").query::<String>(&mut c))
                    .unwrap_or_else(|e| e.to_string());
                let log = std::fs::read_to_string(n.dir.join("log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("node {}:\n{view}\nlog:\n{}", n.port, tail.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The index of a replica of the primary at `primary`.
    pub fn replica_of(&self, primary: usize) -> usize {
        let mut conn = self.nodes[primary].connection().unwrap();
        let id: String = redis::cmd("CLUSTER").arg("MYID").query(&mut conn).unwrap();
        let replicas: Vec<String> = redis::cmd("CLUSTER")
            .arg("REPLICAS")
            .arg(&id)
            .query(&mut conn)
            .unwrap();
        let port: u16 = replicas
            .first()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|a| a.split([':', '@']).nth(1))
            .and_then(|p| p.parse().ok())
            .expect("the primary has a replica");
        self.nodes.iter().position(|n| n.port == port).unwrap()
    }

    /// SIGKILL of one node: a crash.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Starts a killed node again on its port, data and `nodes.conf`: it rejoins the cluster (a former
    /// primary whose slots moved comes back as a replica of the node that took them).
    pub fn restart(&mut self, index: usize) {
        self.nodes[index].spawn();
    }

    /// Sends `sig` (STOP, CONT) to a running node.
    pub fn signal(&self, index: usize, sig: &str) {
        signal(self.nodes[index].pid().expect("the node runs"), sig);
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                // A node left stopped (SIGSTOP) by a failed test dies of SIGKILL all the same.
                let _ = child.kill();
                let _ = child.wait();
            }
            let _ = std::fs::remove_dir_all(&node.dir);
        }
    }
}
