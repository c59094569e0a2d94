//! Several runs of a scenario made into one row each. A row's ratio is the median of its runs' ratios,
//! and the figures beside it (Relay, baseline, met) are those of the run that gave that median, so that
//! one row always reads as one real run; its spread, (max − min) / median of the ratios, says how far
//! to trust it. With an even number of runs the lower of the two middle runs stands for the row.

use crate::row::Row;

/// A spread above this marks the row as noisy.
pub const NOISY: f64 = 0.15;

/// One row of the table, from all the runs of its scenario.
pub struct Merged {
    /// The median run's row; its `failure` says which runs failed, when any did.
    pub row: Row,
    /// (max − min) / median of the runs' ratios; `None` with fewer than two ratios.
    pub spread: Option<f64>,
}

impl Merged {
    pub fn noisy(&self) -> bool {
        self.spread.is_some_and(|s| s > NOISY)
    }
}

/// The index of the median of `values` (the lower middle one of an even count); `None` when empty.
pub fn median_index(values: &[f64]) -> Option<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    order.get(values.len().saturating_sub(1) / 2).copied()
}

/// (max − min) / median of `values`; `None` with fewer than two, or when it is not a finite number.
pub fn spread(values: &[f64]) -> Option<f64> {
    if values.len() < 2 {
        return None;
    }
    let median = values[median_index(values)?];
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let spread = (max - min) / median.abs();
    spread.is_finite().then_some(spread)
}

/// The rows of `scenario` from each of its runs (a run that failed as a whole is an `Err`), one merged
/// row per figure, in the order they first appear. A figure that failed its check in any run, or is
/// missing from a run, shows the failure instead of a number.
pub fn merge(scenario: &str, runs: Vec<anyhow::Result<Vec<Row>>>) -> Vec<Merged> {
    let count = runs.len();
    let label = |run: usize| {
        if count > 1 {
            format!("run {} of {count}: ", run + 1)
        } else {
            String::new()
        }
    };
    let mut keys: Vec<String> = Vec::new();
    for row in runs.iter().flatten().flatten() {
        if !keys.contains(&row.key()) {
            keys.push(row.key());
        }
    }
    if keys.is_empty() {
        // Every run failed as a whole: one row with the first run's failure.
        let why = runs
            .iter()
            .enumerate()
            .find_map(|(i, r)| r.as_ref().err().map(|e| format!("{}{e:#}", label(i))))
            .unwrap_or_else(|| "no rows".into());
        return vec![Merged {
            row: Row::failed(scenario, "—", why),
            spread: None,
        }];
    }
    keys.iter()
        .map(|key| merge_one(key, &runs, &label))
        .collect()
}

/// The merged row of the figure `key`.
fn merge_one(
    key: &str,
    runs: &[anyhow::Result<Vec<Row>>],
    label: &dyn Fn(usize) -> String,
) -> Merged {
    let mut passed: Vec<&Row> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        match run {
            Err(e) => failures.push(format!("{}{e:#}", label(i))),
            Ok(rows) => match rows.iter().find(|r| r.key() == key) {
                Some(Row {
                    failure: Some(why), ..
                }) => failures.push(format!("{}{why}", label(i))),
                Some(row) => passed.push(row),
                None => failures.push(format!("{}the row is missing", label(i))),
            },
        }
    }
    // Every key comes from some run's row, so at least one run has it (failed or passed).
    let any = runs.iter().flatten().flatten().find(|r| r.key() == key);
    let ratios: Vec<f64> = passed.iter().filter_map(|r| r.ratio).collect();
    let mut row = if ratios.len() == passed.len() {
        median_index(&ratios).map(|i| passed[i].clone())
    } else {
        // A row without a ratio: the last run's figures.
        passed.last().map(|r| (*r).clone())
    }
    .or_else(|| any.cloned())
    .expect("the key comes from a row of some run");
    if !failures.is_empty() {
        row.failure = Some(failures.join("; "));
    }
    Merged {
        row,
        spread: spread(&ratios),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(figure: &str, ratio: f64, value: &str) -> Row {
        Row::new("s", figure, value.into()).baseline("b".into(), ratio)
    }

    #[test]
    fn the_median_of_an_odd_count_is_the_middle_value() {
        assert_eq!(median_index(&[3.0, 1.0, 2.0]), Some(2));
        assert_eq!(median_index(&[5.0]), Some(0));
        assert_eq!(median_index(&[]), None);
    }

    #[test]
    fn the_median_of_an_even_count_is_the_lower_middle_value() {
        assert_eq!(median_index(&[4.0, 1.0, 3.0, 2.0]), Some(3));
    }

    #[test]
    fn the_spread_is_the_range_over_the_median() {
        let s = spread(&[0.9, 1.0, 1.1]).unwrap();
        assert!((s - 0.2).abs() < 1e-9, "{s}");
        assert_eq!(spread(&[1.0]), None);
        assert_eq!(spread(&[0.0, 0.0, 1.0]), None);
    }

    #[test]
    fn a_merged_row_shows_the_median_run_and_its_spread() {
        let runs = vec![
            Ok(vec![row("f", 0.80, "run one")]),
            Ok(vec![row("f", 1.00, "run two")]),
            Ok(vec![row("f", 0.90, "run three")]),
        ];
        let merged = merge("s", runs);
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].row.value, "run three");
        assert_eq!(merged[0].row.ratio, Some(0.90));
        assert!((merged[0].spread.unwrap() - 0.2 / 0.9).abs() < 1e-9);
        assert!(merged[0].noisy());
    }

    #[test]
    fn a_row_that_failed_in_one_run_shows_that_failure() {
        let mut failed = row("f", 1.0, "x");
        failed.failure = Some("3 of 4 frames".into());
        let runs = vec![
            Ok(vec![row("f", 1.0, "a"), row("g", 1.0, "a")]),
            Ok(vec![failed, row("g", 1.0, "b")]),
            Err(anyhow::anyhow!("wrk is missing")),
        ];
        let merged = merge("s", runs);
        assert_eq!(merged.len(), 2);
        assert_eq!(
            merged[0].row.failure.as_deref(),
            Some("run 2 of 3: 3 of 4 frames; run 3 of 3: wrk is missing")
        );
        assert_eq!(
            merged[1].row.failure.as_deref(),
            Some("run 3 of 3: wrk is missing")
        );
    }

    #[test]
    fn a_scenario_that_failed_in_every_run_is_one_failed_row() {
        let merged = merge("s", vec![Err(anyhow::anyhow!("no psql"))]);
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].row.failure.as_deref(), Some("no psql"));
    }
}
