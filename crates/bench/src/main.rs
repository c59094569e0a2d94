//! `make bench`: every scenario of the benchmark, each figure beside the ceiling of the store underneath
//! it measured in the same run, printed as one table and written to `bench/results/latest.md`.
//!
//! `--quick` (`make bench QUICK=1`) runs every scenario at a tiny size: `make test` runs it once so the
//! benchmark never rots. Every figure is checked as it is measured (counts stored, delivered, acked); a
//! scenario whose check fails reports the failure instead of a number.
//!
//! A full run runs every scenario three times (`--runs N` chooses; a quick run once) and prints each
//! row's median run with the spread of its ratio (see [`runs`]).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod history;
mod machine;
mod report;
mod row;
mod runs;
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

const USAGE: &str = "usage: relay-bench [--quick] [--runs N] [--only SCENARIO]
  --quick          tiny sizes, one run of each scenario (< 1 min); also QUICK=1
  --runs N         runs of each scenario (default 3, or 1 with --quick); the table shows the median
  --only SCENARIO  one scenario, e.g. --only drain; its table goes to bench/results/only.md
The table is printed and written to bench/results/latest.md (quick.md for --quick, only.md for --only);
a full run adds bench/results/history/.";

/// What the command line asks for.
struct Args {
    quick: bool,
    /// Runs of each scenario: `--runs N`, by default 3 for a full run and 1 for a quick one.
    runs: usize,
    /// `--only <scenario>` (e.g. `--only drain`): one scenario, for working on it.
    only: Option<String>,
}

impl Args {
    fn parse() -> Result<Self, String> {
        let args: Vec<String> = std::env::args().collect();
        if args.iter().any(|a| a == "--help" || a == "-h") {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let mut rest = args.iter().skip(1);
        while let Some(arg) = rest.next() {
            match arg.as_str() {
                "--quick" => {}
                "--runs" | "--only" => {
                    rest.next();
                }
                other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
            }
        }
        let value = |flag: &str| {
            args.iter()
                .position(|a| a == flag)
                .map(|i| args.get(i + 1).cloned())
        };
        let quick =
            args.iter().any(|a| a == "--quick") || std::env::var("QUICK").is_ok_and(|v| v == "1");
        let runs = match value("--runs") {
            None => usize::from(!quick) * 2 + 1,
            Some(n) => n
                .and_then(|n| n.parse().ok())
                .filter(|&n| n > 0)
                .ok_or("--runs wants a number of runs, 1 or more")?,
        };
        let only = value("--only")
            .map(|o| o.ok_or("--only wants a scenario's name"))
            .transpose()?;
        if let Some(only) = &only {
            if !ALL.iter().any(|(name, _)| name == only) {
                let names: Vec<&str> = ALL.iter().map(|(name, _)| *name).collect();
                return Err(format!(
                    "no scenario `{only}`; the scenarios: {}",
                    names.join(", ")
                ));
            }
        }
        Ok(Self { quick, runs, only })
    }
}

type Scenario =
    fn(&scenarios::Env, Sizes) -> futures_util::future::BoxFuture<'_, anyhow::Result<Vec<Row>>>;

/// Every scenario, in the table's order.
const ALL: [(&str, Scenario); 9] = [
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

/// Runs the chosen scenarios `args.runs` times, as rounds of the whole table (so that a passing
/// disturbance on the machine lands in one run of a row rather than in all of them); each scenario's
/// databases and streams are dropped after each of its runs.
async fn run_all(env: &scenarios::Env, args: &Args, sizes: Sizes, report: &mut Report) {
    let started = Instant::now();
    let chosen: Vec<(&str, Scenario)> = ALL
        .into_iter()
        .filter(|(name, _)| args.only.as_deref().is_none_or(|o| o == *name))
        .collect();
    let mut results: Vec<Vec<anyhow::Result<Vec<Row>>>> =
        chosen.iter().map(|_| Vec::new()).collect();
    for round in 1..=args.runs {
        for ((name, run), runs) in chosen.iter().zip(&mut results) {
            progress(format!(
                "── {name}, run {round} of {} ({:.0} s so far)",
                args.runs,
                started.elapsed().as_secs_f64()
            ));
            let result = run(env, sizes).await;
            match &result {
                Ok(rows) => rows.iter().for_each(Row::progress),
                Err(e) => progress(format!("   {name} failed: {e:#}")),
            }
            runs.push(result);
            env.cleanup();
        }
    }
    for ((name, _), runs) in chosen.iter().zip(results) {
        report.add(name, runs);
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = match Args::parse() {
        Ok(args) => args,
        Err(e) => {
            progress(e);
            return std::process::ExitCode::from(2);
        }
    };
    let sizes = if args.quick {
        Sizes::quick()
    } else {
        Sizes::full()
    };
    let started = Instant::now();
    progress(format!(
        "{} run, {} run(s) of each scenario; services from {}",
        if args.quick { "quick" } else { "full" },
        args.runs,
        testkit::procs::bin_dir().display()
    ));
    raise_open_files();
    let env = scenarios::Env::new();
    let mut report = Report::new(machine::describe(&env.settings), sizes, args.runs);
    run_all(&env, &args, sizes, &mut report).await;
    let history = if args.quick {
        String::new()
    } else {
        history(&report, args.only.is_none())
    };
    let table = report.render(started.elapsed(), &history);
    println!("{table}");
    // A quick or partial run never replaces the committed table of the last full run.
    let file = match (args.quick, &args.only) {
        (true, _) => "quick.md",
        (false, Some(_)) => "only.md",
        (false, None) => "latest.md",
    };
    write_table(&table, file);
    if report.any_failed() {
        progress("a scenario failed its correctness check: see the table");
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}

/// `bench/results/<file>`.
fn write_table(table: &str, file: &str) {
    let path = results_dir().join(file);
    if let Err(e) =
        std::fs::create_dir_all(path.parent().unwrap()).and_then(|()| std::fs::write(&path, table))
    {
        progress(format!("cannot write {}: {e}", path.display()));
    } else {
        progress(format!("written to {}", path.display()));
    }
}

/// The "History" section of a full run; a complete one (every scenario) is also saved to it.
fn history(report: &Report, complete: bool) -> String {
    let dir = results_dir().join("history");
    let earlier = history::load(&dir);
    let this = history::Run::of(
        report.machine(),
        report.runs(),
        report.rows(),
        chrono::Utc::now(),
    );
    if complete {
        match history::save(&dir, &this) {
            Ok(path) => progress(format!("history: {}", path.display())),
            Err(e) => progress(format!(
                "cannot write the history to {}: {e}",
                dir.display()
            )),
        }
    }
    history::render(&earlier, &this)
}

/// `bench/results/` of this checkout.
fn results_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/results")
}
