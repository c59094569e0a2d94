//! `make bench`: every scenario of the benchmark, each figure beside the ceiling of the store underneath
//! it measured in the same run, printed as one table and written to `bench/results/latest.md`.
//!
//! `--quick` (`make bench QUICK=1`) runs every scenario at a tiny size: `make test` runs it once so the
//! benchmark never rots. Every figure is checked as it is measured (counts stored, delivered, acked); a
//! scenario whose check fails reports the failure instead of a number.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod machine;
mod report;
mod scenarios;
mod ws;

use std::time::Instant;

use report::{Report, Row};

/// Sizes of one run.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub quick: bool,
    pub ingest_secs: u32,
    pub drain_rows: usize,
    pub e2e_rate: u32,
    pub e2e_secs: u32,
    pub fanout_clients: usize,
    pub fanout_rate: u32,
    pub fanout_secs: u32,
    pub idle_sockets: usize,
    pub read_rows: usize,
}

impl Sizes {
    fn full() -> Self {
        Self {
            quick: false,
            ingest_secs: 10,
            drain_rows: 1_000_000,
            e2e_rate: 1000,
            e2e_secs: 30,
            fanout_clients: 1000,
            fanout_rate: 1000,
            fanout_secs: 10,
            idle_sockets: 50_000,
            read_rows: 1_000_000,
        }
    }

    fn quick() -> Self {
        Self {
            quick: true,
            ingest_secs: 2,
            drain_rows: 5_000,
            e2e_rate: 200,
            e2e_secs: 2,
            fanout_clients: 20,
            fanout_rate: 100,
            fanout_secs: 2,
            idle_sockets: 200,
            read_rows: 5_000,
        }
    }
}

/// Open files the run needs: the idle-sockets row holds 50,000 client sockets here, and the gateway (which
/// inherits the limit) keeps one descriptor per connection.
const OPEN_FILES: u32 = 262_144;

/// Raises this process's open-files limit (soft and hard, which needs root for the hard one) so the
/// services it starts inherit it. `prlimit` rather than `setrlimit`, because the workspace forbids
/// `unsafe`. When it cannot, the socket rows report what the machine refused.
fn raise_open_files() {
    let ok = std::process::Command::new("prlimit")
        .arg("--pid")
        .arg(std::process::id().to_string())
        .arg(format!("--nofile={OPEN_FILES}:{OPEN_FILES}"))
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        progress(format!(
            "cannot raise the open-files limit to {OPEN_FILES}: the socket rows will say what was refused"
        ));
    }
}

pub fn progress(msg: impl std::fmt::Display) {
    eprintln!("bench: {msg}");
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let quick =
        std::env::args().any(|a| a == "--quick") || std::env::var("QUICK").is_ok_and(|v| v == "1");
    let sizes = if quick { Sizes::quick() } else { Sizes::full() };
    let started = Instant::now();
    progress(format!(
        "{} run; services from {}",
        if quick { "quick" } else { "full" },
        testkit::procs::bin_dir().display()
    ));
    raise_open_files();
    let env = scenarios::Env::new();
    let mut report = Report::new(machine::describe(&env.settings), sizes);
    type Scenario =
        fn(&scenarios::Env, Sizes) -> futures_util::future::BoxFuture<'_, anyhow::Result<Vec<Row>>>;
    let all: [(&str, Scenario); 9] = [
        ("ingest", |e, s| Box::pin(scenarios::ingest(e, s))),
        ("publish to channels", |e, s| {
            Box::pin(scenarios::publish_to_channels(e, s))
        }),
        ("drain", |e, s| Box::pin(scenarios::drain(e, s))),
        ("end to end", |e, s| Box::pin(scenarios::end_to_end(e, s))),
        ("fan-out", |e, s| Box::pin(scenarios::fan_out(e, s))),
        ("routing", |e, s| Box::pin(scenarios::routing(e, s))),
        ("idle sockets", |e, s| {
            Box::pin(scenarios::idle_sockets(e, s))
        }),
        ("read all", |e, s| Box::pin(scenarios::read_all(e, s))),
        ("cold start", |e, s| Box::pin(scenarios::cold_start(e, s))),
    ];
    // `--only <scenario>` (e.g. `--only drain`): one scenario, for working on it.
    let args: Vec<String> = std::env::args().collect();
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    for (name, run) in all {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        progress(format!(
            "── {name} ({:.0} s so far)",
            started.elapsed().as_secs_f64()
        ));
        match run(&env, sizes).await {
            Ok(rows) => rows.into_iter().for_each(|r| report.push(r)),
            Err(e) => report.push(Row::failed(name, format!("{e:#}"))),
        }
    }
    env.cleanup();
    let table = report.render(started.elapsed());
    println!("{table}");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../bench/results")
        .join(if quick { "quick.md" } else { "latest.md" });
    if let Err(e) =
        std::fs::create_dir_all(path.parent().unwrap()).and_then(|()| std::fs::write(&path, &table))
    {
        progress(format!("cannot write {}: {e}", path.display()));
    } else {
        progress(format!("written to {}", path.display()));
    }
    if report.any_failed() {
        progress("a scenario failed its correctness check: see the table");
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}
