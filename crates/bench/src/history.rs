//! The history under the table: every complete full run leaves its rows in `bench/results/history/`,
//! one JSON file per run named `<UTC date-time>-<commit>.json` (one file each, rather than one appended
//! file, so that runs committed on two branches never conflict, and a run known to be bad is removed by
//! deleting its file); the table then shows, for each row, the ratios of the last five full runs on the
//! same machine (CPU model and cores), oldest first and this run last, so a regression shows as a row
//! whose ratios fall. Quick runs neither read nor write it: their tiny sizes are not comparable.

use std::fmt::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::machine::Machine;
use crate::runs::Merged;

/// Runs shown, this one included.
pub const SHOWN: usize = 5;

/// One full run as the history keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// When the run ended, RFC 3339 in UTC.
    pub date: String,
    /// Relay's commit (short).
    pub commit: String,
    pub cpu: String,
    pub cores: usize,
    /// Runs of each scenario the rows are the median of.
    pub runs: usize,
    pub rows: Vec<RunRow>,
}

/// One row of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRow {
    pub scenario: String,
    pub figure: String,
    /// The median ratio; `None` for a row that failed its check or has no baseline.
    pub ratio: Option<f64>,
    pub spread: Option<f64>,
    pub met: Option<bool>,
    pub failed: bool,
}

impl Run {
    pub fn of(
        machine: &Machine,
        runs: usize,
        rows: &[Merged],
        date: chrono::DateTime<chrono::Utc>,
    ) -> Self {
        Self {
            date: date.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            commit: machine.commit.clone(),
            cpu: machine.cpu.clone(),
            cores: machine.cores,
            runs,
            rows: rows
                .iter()
                .map(|m| RunRow {
                    scenario: m.row.scenario.clone(),
                    figure: m.row.figure.clone(),
                    ratio: m.row.ratio.filter(|_| m.row.failure.is_none()),
                    spread: m.spread,
                    met: m.row.met,
                    failed: m.row.failure.is_some(),
                })
                .collect(),
        }
    }

    /// `20261204T074200Z-504bea3.json`: names sort in time order.
    pub fn file_name(&self) -> String {
        let stamp: String = self
            .date
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect();
        format!("{stamp}-{}.json", self.commit)
    }

    fn same_machine(&self, other: &Run) -> bool {
        self.cpu == other.cpu && self.cores == other.cores
    }

    fn ratio_of(&self, scenario: &str, figure: &str) -> String {
        match self
            .rows
            .iter()
            .find(|r| r.scenario == scenario && r.figure == figure)
        {
            None => "—".into(),
            Some(r) if r.failed => "failed".into(),
            Some(r) => r.ratio.map_or("—".into(), |x| format!("{x:.2}×")),
        }
    }

    /// The column heading: `12-04 07:42 504bea3`.
    fn heading(&self) -> String {
        let when = self.date.get(5..16).unwrap_or(&self.date).replace('T', " ");
        format!("{when} {}", self.commit)
    }
}

/// Every run in `dir`, oldest first; files that do not parse are skipped with a note.
pub fn load(dir: &Path) -> Vec<Run> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    paths
        .iter()
        .filter_map(|p| {
            let run = std::fs::read_to_string(p)
                .map_err(anyhow::Error::from)
                .and_then(|text| Ok(serde_json::from_str::<Run>(&text)?));
            run.map_err(|e| crate::progress(format!("history: skipping {}: {e}", p.display())))
                .ok()
        })
        .collect()
}

/// Writes `run` into `dir` as a file of its own.
pub fn save(dir: &Path, run: &Run) -> anyhow::Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(run.file_name());
    std::fs::write(&path, serde_json::to_string_pretty(run)? + "\n")?;
    Ok(path)
}

/// The "History" section: for each row of `this`, its ratio in the last runs of `earlier` on the same
/// machine and in `this`, oldest first.
pub fn render(earlier: &[Run], this: &Run) -> String {
    let mut shown: Vec<&Run> = earlier.iter().filter(|r| r.same_machine(this)).collect();
    shown.drain(..shown.len().saturating_sub(SHOWN - 1));
    shown.push(this);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n### History\n\nThe ratio of each row in the last {} full runs on this machine ({}, {} cores), oldest \
         first, this run last (`bench/results/history/`):\n",
        shown.len(),
        this.cpu,
        this.cores
    );
    let headings: Vec<String> = shown.iter().map(|r| r.heading()).collect();
    let _ = writeln!(out, "| scenario | figure | {} |", headings.join(" | "));
    let _ = writeln!(out, "|---|---|{}", "---|".repeat(shown.len()));
    for row in &this.rows {
        let ratios: Vec<String> = shown
            .iter()
            .map(|r| r.ratio_of(&row.scenario, &row.figure))
            .collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            row.scenario,
            row.figure,
            ratios.join(" | ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(date: &str, commit: &str, cpu: &str, ratio: Option<f64>) -> Run {
        Run {
            date: date.into(),
            commit: commit.into(),
            cpu: cpu.into(),
            cores: 2,
            runs: 3,
            rows: vec![RunRow {
                scenario: "ingest".into(),
                figure: "POST/s".into(),
                ratio,
                spread: Some(0.04),
                met: Some(false),
                failed: ratio.is_none(),
            }],
        }
    }

    #[test]
    fn file_names_sort_in_time_order_and_name_the_commit() {
        let r = run("2026-12-04T07:42:05Z", "504bea3", "x", Some(1.0));
        assert_eq!(r.file_name(), "20261204T074205Z-504bea3.json");
    }

    #[test]
    fn a_saved_run_loads_back_and_a_broken_file_is_skipped() {
        let dir = std::env::temp_dir().join(format!("relay-history-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let older = run("2026-12-01T10:00:00Z", "aaaaaaa", "x", Some(0.8));
        let newer = run("2026-12-02T10:00:00Z", "bbbbbbb", "x", None);
        save(&dir, &newer).unwrap();
        save(&dir, &older).unwrap();
        std::fs::write(dir.join("20261203T000000Z-broken.json"), "{").unwrap();
        assert_eq!(load(&dir), vec![older, newer]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_history_shows_the_last_five_runs_on_this_machine_oldest_first() {
        let mut earlier: Vec<Run> = (1..=6)
            .map(|day| {
                run(
                    &format!("2026-12-0{day}T10:00:00Z"),
                    &format!("c{day}"),
                    "x",
                    Some(f64::from(day) / 10.0),
                )
            })
            .collect();
        earlier.insert(3, run("2026-12-03T11:00:00Z", "other", "y", Some(9.0)));
        earlier[5].rows[0].failed = true;
        let this = run("2026-12-07T10:00:00Z", "c7", "x", Some(0.7));
        let text = render(&earlier, &this);
        assert!(
            text.contains("| scenario | figure | 12-03 10:00 c3 | 12-04 10:00 c4 | 12-05 10:00 c5 | 12-06 10:00 c6 | 12-07 10:00 c7 |"),
            "{text}"
        );
        assert!(
            text.contains("| ingest | POST/s | 0.30× | 0.40× | failed | 0.60× | 0.70× |"),
            "{text}"
        );
        assert!(!text.contains("9.00×"), "another machine's run: {text}");
    }

    #[test]
    fn a_first_run_has_a_history_of_one() {
        let this = run("2026-12-07T10:00:00Z", "c7", "x", Some(0.7));
        let text = render(&[], &this);
        assert!(text.contains("| ingest | POST/s | 0.70× |"), "{text}");
    }
}
