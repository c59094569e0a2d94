//! The table: each figure, the baseline measured in the same run, their ratio and the goal; with several
//! runs, the median run's and the spread of the ratios.

use std::fmt::Write;
use std::time::Duration;

use crate::machine::Machine;
use crate::runs::{self, Merged};
use crate::Sizes;

use crate::row::one_line;
pub use crate::row::Row;

pub struct Report {
    machine: Machine,
    sizes: Sizes,
    /// Runs of each scenario.
    runs: usize,
    rows: Vec<Merged>,
}

impl Report {
    pub fn new(machine: Machine, sizes: Sizes, runs: usize) -> Self {
        Self {
            machine,
            sizes,
            runs,
            rows: Vec::new(),
        }
    }

    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    pub fn runs(&self) -> usize {
        self.runs
    }

    pub fn rows(&self) -> &[Merged] {
        &self.rows
    }

    /// The rows of every run of `scenario` (a run that failed as a whole is an `Err`).
    pub fn add(&mut self, scenario: &str, runs: Vec<anyhow::Result<Vec<Row>>>) {
        self.rows.extend(runs::merge(scenario, runs));
    }

    pub fn any_failed(&self) -> bool {
        self.rows.iter().any(|m| m.row.failure.is_some())
    }

    /// The table, then `after` (the history), then the machine's details.
    pub fn render(&self, took: Duration, after: &str) -> String {
        let mut out = String::new();
        let kind = if self.sizes.quick {
            "quick (tiny sizes: checks the benchmark runs, not speed)"
        } else {
            "full"
        };
        let _ = writeln!(out, "## Relay benchmark — {kind}\n");
        let _ = writeln!(out, "Machine: {}\n", self.machine.headline());
        if self.runs > 1 {
            let _ = writeln!(
                out,
                "Each row: the median of {} runs, and the spread of its ratio ((max − min) / median; \
                 over {:.0}% is marked noisy).\n",
                self.runs,
                runs::NOISY * 100.0
            );
            let _ = writeln!(
                out,
                "| scenario | figure | Relay | baseline (same run) | ratio | spread | goal | met |"
            );
            let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
        } else {
            let _ = writeln!(
                out,
                "| scenario | figure | Relay | baseline (same run) | ratio | goal | met |"
            );
            let _ = writeln!(out, "|---|---|---|---|---|---|---|");
        }
        for m in &self.rows {
            let _ = writeln!(out, "{}", self.table_row(m));
        }
        out.push_str(after);
        let _ = writeln!(out, "\nMachine details:");
        for (k, v) in &self.machine.details {
            let _ = writeln!(out, "- {k}: {v}");
        }
        let _ = writeln!(out, "- run took: {:.0} s", took.as_secs_f64());
        let _ = writeln!(out, "\nReproduce: `make bench` (or `make bench QUICK=1`).");
        out
    }

    fn table_row(&self, m: &Merged) -> String {
        let r = &m.row;
        let (value, ratio) = match &r.failure {
            Some(f) => (format!("FAILED: {}", one_line(f)), "—".to_owned()),
            None => (
                r.value.clone(),
                r.ratio.map_or("—".into(), |x| format!("{x:.2}×")),
            ),
        };
        let met = match (r.failure.as_ref(), r.met) {
            (Some(_), _) => "✗ check failed",
            (None, Some(true)) => "✓",
            (None, Some(false)) => "✗",
            (None, None) => "—",
        };
        let spread = match m.spread {
            _ if self.runs < 2 => String::new(),
            Some(s) if m.noisy() => format!(" {:.0}% — noisy |", s * 100.0),
            Some(s) => format!(" {:.0}% |", s * 100.0),
            None => " — |".into(),
        };
        format!(
            "| {} | {} | {value} | {} | {ratio} |{spread} {} | {met} |",
            r.scenario, r.figure, r.baseline, r.goal
        )
    }
}

/// Microseconds as a short human figure.
pub fn us(v: u64) -> String {
    if v >= 10_000 {
        format!("{:.0} ms", v as f64 / 1000.0)
    } else if v >= 1000 {
        format!("{:.2} ms", v as f64 / 1000.0)
    } else {
        format!("{v} µs")
    }
}

pub fn latency_summary(h: &hdrhistogram::Histogram<u64>) -> String {
    format!(
        "p50 {} · p99 {} · p99.9 {}",
        us(h.value_at_quantile(0.5)),
        us(h.value_at_quantile(0.99)),
        us(h.value_at_quantile(0.999))
    )
}
