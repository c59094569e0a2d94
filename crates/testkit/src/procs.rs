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
pub fn env_for(settings: &model::Settings) -> Vec<(&'static str, String)> {
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
