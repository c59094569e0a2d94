//! wrk, the HTTP load generator the POST rows use: 64 connections for a given time, a Lua script that
//! prints the figures on one line, and a check that the stream grew by what was accepted.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context};

use crate::progress;

const WRK_SCRIPT: &str = r#"
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = BODY
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d %d %d\n", summary.requests, summary.duration, e.status,
    e.connect + e.read + e.write + e.timeout, latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"#;

/// A 200-byte JSON body, tagged with the row it is for.
pub(super) fn body_200(bench: &str) -> String {
    let prefix = format!(r#"{{"bench":"{bench}","pad":""#);
    let body = format!("{prefix}{}\"}}", super::pad(200 - prefix.len() - 2));
    debug_assert_eq!(body.len(), 200);
    body
}

/// A wrk script in a file of its own, removed when dropped.
pub(super) struct Script(PathBuf);

impl Script {
    /// [`WRK_SCRIPT`] posting `body`, with `extra` Lua after it.
    pub fn write(name: &str, body: &str, extra: &str) -> anyhow::Result<Self> {
        let path =
            std::env::temp_dir().join(format!("relay-wrk-{name}-{}.lua", std::process::id()));
        let text = WRK_SCRIPT.replace("BODY", &format!("{body:?}")) + extra;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// One wrk run's figures; latencies in µs.
pub(super) struct Wrk {
    pub rate: f64,
    /// Requests answered 2xx.
    pub accepted: u64,
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
}

/// wrk against `url` for `secs`; checks every answer was a 2xx and the stream grew by what was accepted.
pub(super) fn wrk(
    url: &str,
    script: &Path,
    secs: u32,
    redis: &mut redis::Connection,
    stream_key: &str,
) -> anyhow::Result<Wrk> {
    let before: u64 = redis::cmd("XLEN").arg(stream_key).query(redis)?;
    let run = run_wrk(url, script, secs)?;
    let accepted = run.accepted;
    // wrk stops with up to 64 requests in flight: those may be in the stream without a counted answer.
    // Give them a moment to land, so the next run's count starts from a settled stream.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let stored = redis::cmd("XLEN").arg(stream_key).query::<u64>(redis)? - before;
    ensure!(
        stored >= accepted && stored <= accepted + 64,
        "{accepted} accepted but {stored} entries in the stream"
    );
    Ok(run)
}

/// wrk against `url` for `secs`, 64 connections; fails unless every answer was a 2xx.
pub(super) fn run_wrk(url: &str, script: &Path, secs: u32) -> anyhow::Result<Wrk> {
    progress(format!("wrk: POST {url}, 64 connections, {secs} s"));
    let out = Command::new("wrk")
        .args([
            "-t2",
            "-c64",
            &format!("-d{secs}s"),
            "--timeout",
            "5s",
            "-s",
        ])
        .arg(script)
        .arg(url)
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let result: Vec<u64> = text
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .with_context(|| format!("no result from wrk: {text}"))?
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let [requests, duration_us, status_errors, socket_errors, p50, p99, p999] = result[..] else {
        bail!("unexpected wrk result: {text}")
    };
    let accepted = requests - status_errors;
    ensure!(
        status_errors == 0 && socket_errors == 0,
        "{status_errors} non-2xx answers, {socket_errors} socket errors"
    );
    Ok(Wrk {
        rate: accepted as f64 / (duration_us as f64 / 1e6),
        accepted,
        p50,
        p99,
        p999,
    })
}
