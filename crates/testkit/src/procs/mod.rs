//! Processes for fault tests and the benchmark: real `redis-server` and Postgres instances that a test
//! owns (so it can kill them), and the real service binaries as child processes (so a test can SIGKILL or
//! SIGTERM them).
//!
//! The binaries are found in `RELAY_BIN_DIR`, or beside the running executable (`target/<profile>/`, also
//! for test executables in `target/<profile>/deps/`): `cargo build --bins` (or `--release`) puts them there.
//!
//! One file each: `redis_server` ([`OwnRedis`]), `postgres` ([`OwnPostgres`]), `cluster` ([`OwnCluster`]),
//! `binaries` ([`Service`]); here, what they share and the environment a service is started with.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

mod binaries;
mod cluster;
mod postgres;
mod redis_server;

pub use binaries::{bin_dir, bin_path, run_to_exit, Service};
pub use cluster::{ClusterNode, OwnCluster};
pub use postgres::OwnPostgres;
pub use redis_server::OwnRedis;

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
