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

/// Lines of a child's log kept from its start, and from its end.
const LOG_HEAD: usize = 200;
const LOG_TAIL: usize = 10_000;

/// A child's log as a test uses it: its first [`LOG_HEAD`] lines (the start-up) and its last
/// [`LOG_TAIL`], bounded however much it writes. Run as shipped (`RUST_LOG=info`), ingest-api logs a line
/// per request: a million lines in one bench scenario, which the bench held in memory until the end.
#[derive(Default)]
struct Log {
    head: Vec<String>,
    tail: std::collections::VecDeque<String>,
    left_out: u64,
}

impl Log {
    fn push(&mut self, line: String) {
        if self.head.len() < LOG_HEAD {
            self.head.push(line);
            return;
        }
        if self.tail.len() == LOG_TAIL {
            self.tail.pop_front();
            self.left_out += 1;
        }
        self.tail.push_back(line);
    }

    fn lines(&self) -> impl Iterator<Item = &String> {
        self.head.iter().chain(&self.tail)
    }

    fn text(&self) -> String {
        let mut text = self.head.join("\n");
        if self.left_out > 0 {
            text.push_str(&format!("\n… {} lines left out …", self.left_out));
        }
        for line in &self.tail {
            text.push('\n');
            text.push_str(line);
        }
        text
    }
}

/// One service binary running as a child process, its log kept for the test's failure message.
pub struct Service {
    pub name: &'static str,
    pub port: u16,
    child: Child,
    log: Arc<Mutex<Log>>,
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
        let log = Arc::new(Mutex::new(Log::default()));
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
                    log.lock().unwrap().text()
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
                let log = self.log.lock().unwrap().text();
                let _ = self.child.kill();
                panic!(
                    "{} did not exit within {limit:?} of SIGTERM; its log:\n{log}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The log: its first lines and its most recent ones (see [`Log`]).
    pub fn log(&self) -> String {
        self.log.lock().unwrap().text()
    }

    /// Waits up to `limit` for a log line containing `needle` (a test seam's marker, say).
    pub fn wait_for_log(&self, needle: &str, limit: Duration) {
        let what = format!("{} to log {needle:?}", self.name);
        wait_until(&what, limit, || {
            self.log.lock().unwrap().lines().any(|l| l.contains(needle))
        });
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_keeps_its_start_and_its_end_within_its_bound() {
        let mut log = Log::default();
        let total = LOG_HEAD + LOG_TAIL + 500;
        for n in 0..total {
            log.push(format!("line {n}"));
        }
        assert_eq!(log.lines().count(), LOG_HEAD + LOG_TAIL);
        let text = log.text();
        assert!(text.starts_with("line 0\n"));
        assert!(text.contains("\n… 500 lines left out …\n"));
        assert!(text.ends_with(&format!("line {}", total - 1)));
        assert!(!text.contains(&format!("line {LOG_HEAD}\n")));
    }
}
