//! A Postgres cluster a test owns, to stop and start.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{free_port, temp_dir};

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
