//! A service's `/metrics` as a test reads it: parsed with a Prometheus text-format parser, never matched
//! by substring.

use std::collections::BTreeSet;

/// One scrape of a `/metrics` endpoint.
pub struct Scrape(prometheus_parse::Scrape);

impl Scrape {
    pub fn parse(text: &str) -> Self {
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        Self(prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text format"))
    }

    /// The value of the counter or gauge `name` whose labels include `labels` (summed over the series
    /// that match; 0 when none does). For a histogram, its count of observations.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                prometheus_parse::Value::Histogram(buckets) => {
                    buckets.iter().map(|b| b.count).fold(0.0, f64::max)
                }
                prometheus_parse::Value::Summary(_) => 0.0,
            })
            .sum()
    }

    /// Every metric family the scrape documents (`# HELP`).
    pub fn families(&self) -> BTreeSet<String> {
        self.0.docs.keys().cloned().collect()
    }
}

/// Scrapes `base_url` + `/metrics`.
pub async fn scrape(base_url: &str) -> Scrape {
    let res = reqwest::get(format!("{base_url}/metrics")).await.unwrap();
    assert_eq!(res.status(), 200);
    Scrape::parse(&res.text().await.unwrap())
}

/// [`scrape`] from a plain thread.
pub fn scrape_blocking(base_url: &str) -> Scrape {
    let res = reqwest::blocking::get(format!("{base_url}/metrics")).unwrap();
    assert_eq!(res.status(), 200);
    Scrape::parse(&res.text().unwrap())
}
