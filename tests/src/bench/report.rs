//! The benchmark's report: each figure's samples per mode across the repeats, printed as a
//! table of medians, min–max and ratios to the baseline mode, and as JSON.
use std::collections::BTreeMap;

use super::median;

/// One measured quantity.
#[derive(Debug, Clone, Copy)]
pub struct Figure {
    /// Its name in the JSON.
    pub key: &'static str,
    /// Its name in the table, with the unit.
    pub label: &'static str,
    /// Whether a ratio to the baseline means something (not for the proxies' own costs,
    /// which the baseline does not have).
    pub ratio: bool,
}

/// Samples of every figure, by mode; the first mode is the baseline ratios refer to.
#[derive(Debug)]
pub struct Report {
    modes: Vec<&'static str>,
    figures: Vec<Figure>,
    samples: BTreeMap<(&'static str, &'static str), Vec<f64>>,
}

impl Report {
    /// A report on `modes` whose figures print in the order of `figures` (any other recorded
    /// figure after them).
    pub fn new(modes: &[&'static str], figures: &[Figure]) -> Self {
        Self { modes: modes.to_vec(), figures: figures.to_vec(), samples: BTreeMap::new() }
    }

    /// Adds one sample of `figure` in `mode`.
    pub fn record(&mut self, mode: &'static str, figure: Figure, value: f64) {
        if !self.figures.iter().any(|known| known.key == figure.key) {
            self.figures.push(figure);
        }
        self.samples.entry((figure.key, mode)).or_default().push(value);
    }

    fn median_of(&self, figure: &str, mode: &str) -> Option<f64> {
        self.samples
            .get(&(figure, mode))
            .filter(|values| !values.is_empty())
            .map(|values| median(values.clone()))
    }

    /// The table: a row per figure, a column per mode, each cell `median [min–max]` and, where
    /// the baseline has a non-zero figure, `(×ratio)`.
    pub fn table(&self) -> String {
        let mut out = format!("{:<36}", "figure");
        for mode in &self.modes {
            out += &format!(" {mode:>34}");
        }
        out.push('\n');
        let recorded = self
            .figures
            .iter()
            .filter(|figure| self.modes.iter().any(|mode| self.samples.contains_key(&(figure.key, *mode))));
        for figure in recorded {
            out += &format!("{:<36}", figure.label);
            let baseline = self.modes.first().and_then(|mode| self.median_of(figure.key, mode));
            for mode in &self.modes {
                let cell = match self.samples.get(&(figure.key, mode)) {
                    None => "—".to_owned(),
                    Some(values) => {
                        let (lo, hi) =
                            values.iter().fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
                        let mid = median(values.clone());
                        let ratio = baseline
                            .filter(|base| {
                                figure.ratio && *base > 0.0 && Some(*mode) != self.modes.first().copied()
                            })
                            .map(|base| format!(" ×{:.2}", mid / base))
                            .unwrap_or_default();
                        format!("{} [{}–{}]{ratio}", short(mid), short(lo), short(hi))
                    }
                };
                out += &format!(" {cell:>34}");
            }
            out.push('\n');
        }
        out
    }

    /// `mode`'s medians divided by `other`'s, a row per figure both have (costs included): above
    /// 1, `mode` has more of it.
    pub fn ratios(&self, mode: &str, other: &str) -> String {
        let mut out = String::new();
        for figure in &self.figures {
            let (Some(value), Some(base)) =
                (self.median_of(figure.key, mode), self.median_of(figure.key, other))
            else {
                continue;
            };
            let ratio = if base > 0.0 { format!("×{:.2}", value / base) } else { "—".to_owned() };
            out += &format!("{:<44} {ratio:>8}\n", figure.label);
        }
        out
    }

    /// `{"figures": {key: {"label", "modes": {mode: {"median", "samples"}}}}}`.
    pub fn json(&self) -> serde_json::Value {
        let figures: serde_json::Map<String, serde_json::Value> = self
            .figures
            .iter()
            .map(|figure| {
                let modes: serde_json::Map<String, serde_json::Value> = self
                    .modes
                    .iter()
                    .filter_map(|mode| {
                        let values = self.samples.get(&(figure.key, mode))?;
                        let entry =
                            serde_json::json!({ "median": median(values.clone()), "samples": values });
                        Some((mode.to_string(), entry))
                    })
                    .collect();
                (figure.key.to_owned(), serde_json::json!({ "label": figure.label, "modes": modes }))
            })
            .collect();
        serde_json::json!({ "figures": figures })
    }
}

/// Three significant digits, without exponents.
fn short(value: f64) -> String {
    match value.abs() {
        v if v >= 100.0 => format!("{value:.0}"),
        v if v >= 10.0 => format!("{value:.1}"),
        v if v >= 1.0 => format!("{value:.2}"),
        _ => format!("{value:.3}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: Figure = Figure { key: "rate", label: "rate /s", ratio: true };
    const COST: Figure = Figure { key: "cost", label: "cost", ratio: false };

    #[test]
    fn cells_give_median_range_and_ratio_to_the_baseline() {
        let mut report = Report::new(&["direct", "mesh"], &[RATE, COST]);
        for (direct, mesh) in [(100.0, 40.0), (120.0, 60.0), (110.0, 50.0)] {
            report.record("direct", RATE, direct);
            report.record("mesh", RATE, mesh);
            report.record("direct", COST, 1.0);
            report.record("mesh", COST, 2.0);
        }
        let table = report.table();
        assert!(table.contains("110 [100–120]"), "{table}");
        assert!(table.contains("50.0 [40.0–60.0] ×0.45"), "{table}");
        assert!(table.contains("2.00 [2.00–2.00]\n"), "no ratio for a proxy's own cost: {table}");
        assert_eq!(report.json()["figures"]["rate"]["modes"]["mesh"]["median"], 50.0);
    }

    #[test]
    fn ratios_divide_one_modes_medians_by_anothers_costs_included() {
        let mut report = Report::new(&["mesh", "other"], &[RATE, COST]);
        for (mesh, other) in [(40.0, 20.0), (60.0, 30.0), (50.0, 25.0)] {
            report.record("mesh", RATE, mesh);
            report.record("other", RATE, other);
            report.record("mesh", COST, 3.0);
        }
        report.record("other", COST, 0.0);
        let ratios = report.ratios("mesh", "other");
        assert_eq!(ratios.lines().count(), 2, "{ratios}");
        assert!(
            ratios.lines().next().is_some_and(|line| line.starts_with("rate /s") && line.ends_with("×2.00"))
        );
        assert!(ratios.lines().nth(1).is_some_and(|line| line.starts_with("cost") && line.ends_with("—")));
        assert!(report.ratios("mesh", "absent").is_empty());
    }
}
