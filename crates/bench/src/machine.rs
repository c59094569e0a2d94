//! What the run was measured on.

use std::process::Command;

fn run(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// The machine a run was measured on: CPU model and cores (printed at the top of the table, and what the
/// history compares runs by), and the rest (printed after it).
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    /// Relay's commit (`git rev-parse --short HEAD`), also among the details.
    pub commit: String,
    pub details: Vec<(String, String)>,
}

impl Machine {
    /// The line at the top of the table.
    pub fn headline(&self) -> String {
        format!("{}, {} cores", self.cpu, self.cores)
    }
}

pub fn describe(settings: &service::Settings) -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let redis_version = redis::Client::open(settings.redis_url.as_str())
        .and_then(|c| c.get_connection())
        .and_then(|mut c| redis::cmd("INFO").arg("server").query::<String>(&mut c))
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("redis_version:").map(str::to_owned))
        })
        .unwrap_or_else(|| "unknown".into());
    let pg_version = run(
        "psql",
        &[
            &store::url::with_database(&settings.database_url, "postgres"),
            "-tAc",
            "SHOW server_version",
        ],
    );
    let commit = run("git", &["rev-parse", "--short", "HEAD"]);
    let details = vec![
        (
            "date".into(),
            chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        ),
        (
            "memory".into(),
            run("sh", &["-c", "free -h | awk '/Mem:/ {print $2}'"]),
        ),
        ("kernel".into(), run("uname", &["-sr"])),
        ("Redis".into(), redis_version),
        ("PostgreSQL".into(), pg_version),
        (
            "Postgres TLS".into(),
            if settings.database_url.contains("sslmode=disable") {
                "off (sslmode=disable, as in docker-compose.yml; DATABASE_URL with an sslmode chooses)"
                    .into()
            } else {
                "as DATABASE_URL's sslmode says".into()
            },
        ),
        ("Relay".into(), commit.clone()),
    ];
    Machine {
        cpu,
        commit,
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        details,
    }
}
