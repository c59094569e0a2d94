//! The table: each figure, the baseline measured in the same run, their ratio and the goal.

use std::fmt::Write;
use std::time::Duration;

use crate::machine::Machine;
use crate::Sizes;

pub struct Row {
    pub scenario: String,
    pub figure: String,
    pub value: String,
    pub baseline: String,
    pub ratio: Option<f64>,
    pub goal: String,
    /// `Some(true)` met, `Some(false)` missed, `None` no goal.
    pub met: Option<bool>,
    /// A failed correctness check: the row shows this instead of a number.
    pub failure: Option<String>,
}

impl Row {
    pub fn new(scenario: &str, figure: &str, value: String) -> Self {
        Self {
            scenario: scenario.into(),
            figure: figure.into(),
            value,
            baseline: "—".into(),
            ratio: None,
            goal: "—".into(),
            met: None,
            failure: None,
        }
    }

    pub fn baseline(mut self, baseline: String, ratio: f64) -> Self {
        self.baseline = baseline;
        self.ratio = Some(ratio);
        self
    }

    pub fn goal(mut self, goal: &str, met: bool) -> Self {
        self.goal = goal.into();
        self.met = Some(met);
        self
    }

    pub fn failed(scenario: &str, why: String) -> Self {
        let mut row = Self::new(scenario, "—", "FAILED".into());
        let one_line: String = why.split_whitespace().collect::<Vec<_>>().join(" ");
        row.failure = Some(one_line.chars().take(300).collect());
        row
    }
}

pub struct Report {
    machine: Machine,
    sizes: Sizes,
    rows: Vec<Row>,
}

impl Report {
    pub fn new(machine: Machine, sizes: Sizes) -> Self {
        Self {
            machine,
            sizes,
            rows: Vec::new(),
        }
    }

    pub fn push(&mut self, row: Row) {
        crate::progress(format!(
            "   {} · {}: {}{}",
            row.scenario,
            row.figure,
            row.value,
            row.failure
                .as_deref()
                .map(|f| format!(" — {f}"))
                .unwrap_or_default()
        ));
        self.rows.push(row);
    }

    pub fn any_failed(&self) -> bool {
        self.rows.iter().any(|r| r.failure.is_some())
    }

    pub fn render(&self, took: Duration) -> String {
        let mut out = String::new();
        let kind = if self.sizes.quick {
            "quick (tiny sizes: checks the benchmark runs, not speed)"
        } else {
            "full"
        };
        let _ = writeln!(out, "## Relay benchmark — {kind}\n");
        let _ = writeln!(out, "Machine: {}\n", self.machine.headline());
        let _ = writeln!(
            out,
            "| scenario | figure | Relay | baseline (same run) | ratio | goal | met |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|");
        for r in &self.rows {
            let ratio = r.ratio.map_or("—".into(), |x| format!("{x:.2}×"));
            let met = match (r.failure.as_ref(), r.met) {
                (Some(_), _) => "✗ check failed",
                (None, Some(true)) => "✓",
                (None, Some(false)) => "✗",
                (None, None) => "—",
            };
            let value = match &r.failure {
                Some(f) => format!("FAILED: {}", f.replace('|', "/")),
                None => r.value.clone(),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {value} | {} | {ratio} | {} | {met} |",
                r.scenario, r.figure, r.baseline, r.goal
            );
        }
        let _ = writeln!(out, "\nMachine details:");
        for (k, v) in &self.machine.details {
            let _ = writeln!(out, "- {k}: {v}");
        }
        let _ = writeln!(out, "- run took: {:.0} s", took.as_secs_f64());
        let _ = writeln!(out, "\nReproduce: `make bench` (or `make bench QUICK=1`).");
        out
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
