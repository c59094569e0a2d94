//! One row of the table: a figure, the baseline measured beside it in the same run, their ratio and the
//! goal, or the failed check that stands instead.

#[derive(Debug, Clone)]
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

    /// A row whose check failed: it shows `why` instead of a number.
    pub fn failed(scenario: &str, figure: &str, why: String) -> Self {
        let mut row = Self::new(scenario, figure, "FAILED".into());
        row.failure = Some(why);
        row
    }

    /// What names the row across runs and in the history: its scenario and figure, which hold no
    /// measured number.
    pub fn key(&self) -> String {
        format!("{} · {}", self.scenario, self.figure)
    }

    /// The line printed as the row is measured.
    pub fn progress(&self) {
        crate::progress(format!(
            "   {}: {}{}",
            self.key(),
            self.value,
            self.failure
                .as_deref()
                .map(|f| format!(" — {f}"))
                .unwrap_or_default()
        ));
    }
}

/// `why` on one line, at most 300 characters, with no `|` to break the table.
pub(crate) fn one_line(why: &str) -> String {
    let line = why.split_whitespace().collect::<Vec<_>>().join(" ");
    line.chars().take(300).collect::<String>().replace('|', "/")
}
