//! The service binaries as child processes.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{signal, wait_until};

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
