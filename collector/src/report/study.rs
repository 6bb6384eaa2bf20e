//! The study's comparisons of one architecture's setups: the test metrics over seeds (Table 6.1
//! with mAP and Student-t intervals), the threshold effect, validation curves per epoch
//! (Fig. 6.2 with mAP and loss), and per-class test F1 and AP (Table 6.4) as a heatmap table.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use anyhow::{Result, bail};

use super::page::{Page, escape};
use super::setups::Setups;
use super::vega::{self, Point, Reference};
use crate::columns::Columns;
use crate::results::RunRow;
use crate::stats::{SeedSummary, summarise};
use lossbench_core::labels::BEN19;
use lossbench_core::schema::Table;
use lossbench_core::tables::read_table;

/// Rows of Table 6.1 and the threshold-free metrics: title, `test_metrics` column, whether
/// lower is better.
const TEST_ROWS: [(&str, &str, bool); 17] = [
    ("P micro", "micro_precision", false),
    ("P macro", "macro_precision", false),
    ("P sample", "samples_precision", false),
    ("R micro", "micro_recall", false),
    ("R macro", "macro_recall", false),
    ("R sample", "samples_recall", false),
    ("F1 micro", "micro_f1", false),
    ("F1 macro", "macro_f1", false),
    ("F1 sample", "samples_f1", false),
    ("F1 weighted", "weighted_f1", false),
    ("Hamming loss", "hamming_loss", true),
    ("subset accuracy", "subset_accuracy", false),
    ("mAP macro", "map_macro", false),
    ("mAP micro", "map_micro", false),
    ("AUC macro", "auc_macro", false),
    ("one-error", "one_error", true),
    ("LRAP", "lrap", false),
];

/// The F1s with the loss's own decision rule and with thresholds tuned on validation.
const TUNED: [(&str, &str, &str); 3] = [
    ("F1 micro", "micro_f1", "tuned_micro_f1"),
    ("F1 macro", "macro_f1", "tuned_macro_f1"),
    ("F1 sample", "samples_f1", "tuned_samples_f1"),
];

/// Setup → column → one value per run (runs without the value left out).
type PerSetup = BTreeMap<String, BTreeMap<String, Vec<f64>>>;

/// Each setup's test values of `columns`.
fn test_values(results: &Path, setups: &Setups, columns: &[&str]) -> Result<PerSetup> {
    let mut out = PerSetup::new();
    for b in read_table(&results.join(Table::TestMetrics.name()), None)? {
        let c = Columns::new("test_metrics", &b);
        for i in 0..c.rows() {
            let Some(setup) = setups.of_run(&c.str("run_id", i)?) else {
                continue;
            };
            let per = out.entry(setup.to_string()).or_default();
            for col in columns {
                per.entry(col.to_string())
                    .or_default()
                    .extend(c.f64(col, i)?);
            }
        }
    }
    Ok(out)
}

/// A cell of a summary: mean ± std, and the 95% interval below it.
fn summary_cell(s: &SeedSummary, best: bool) -> String {
    let class = if best { " class=best" } else { "" };
    match s.ci95 {
        Some((lo, hi)) => format!(
            "<td{class} data-v={}>{:.3} <span class=sd>± {:.3}</span><span class=ci>[{lo:.3}, {hi:.3}]</span></td>",
            s.mean, s.mean, s.std
        ),
        None => format!("<td{class} data-v={}>{:.3}</td>", s.mean, s.mean),
    }
}

/// Table 6.1's layout with the threshold-free metrics: one column per setup.
pub fn test_table(page: &mut Page, results: &Path, runs: &[RunRow], setups: &Setups) -> Result<()> {
    let columns: Vec<&str> = TEST_ROWS.iter().map(|r| r.1).collect();
    let values = test_values(results, setups, &columns)?;
    page.heading(3, "Test metrics (Table 6.1 layout, with average precision)");
    let untested = unfinished_labels(runs, setups);
    if !untested.is_empty() {
        let list: Vec<&str> = untested.values().map(String::as_str).collect();
        page.note(&format!(
            "Finished runs only (n = their number): {} run(s) have no test yet: {}.",
            list.len(),
            list.join("; ")
        ));
    }
    let order: Vec<&String> = setups
        .order
        .iter()
        .filter(|s| values.contains_key(*s))
        .collect();
    if order.is_empty() {
        page.note("No run has finished its test yet.");
        return Ok(());
    }
    let mut html = String::from("<div class=wrap><table><thead><tr><th>metric</th>");
    for s in &order {
        let n = values[*s]["micro_f1"].len();
        let _ = write!(html, "<th>{} <span class=n>n={n}</span></th>", escape(s));
    }
    html.push_str("</tr></thead><tbody>");
    for (title, col, lower) in TEST_ROWS {
        let summaries: Vec<Option<SeedSummary>> =
            order.iter().map(|s| summarise(&values[*s][col])).collect();
        let means = summaries.iter().flatten().map(|s| s.mean);
        let best = if lower {
            means.fold(f64::INFINITY, f64::min)
        } else {
            means.fold(f64::NEG_INFINITY, f64::max)
        };
        let _ = write!(html, "<tr><td>{title}</td>");
        for s in &summaries {
            match s {
                Some(s) => html.push_str(&summary_cell(s, s.mean == best)),
                None => html.push_str("<td class=missing>–</td>"),
            }
        }
        html.push_str("</tr>");
    }
    html.push_str("</tbody></table></div>");
    page.raw(&html);
    page.note(
        "Mean ± standard deviation over seeds, and below it the 95% confidence interval of the mean \
         (Student's t with n − 1 degrees of freedom); a single run has neither. Best mean per row in bold \
         (lowest for the Hamming loss and one-error). Average precision is scikit-learn's, macro over the \
         classes with a positive patch. The study's figures: docs/study.md, Table 6.1.",
    );
    Ok(())
}

/// The F1 with the loss's own decision rule next to the F1 with per-class thresholds tuned on
/// validation.
pub fn threshold_effect(page: &mut Page, results: &Path, setups: &Setups) -> Result<()> {
    let columns: Vec<&str> = TUNED.iter().flat_map(|t| [t.1, t.2]).collect();
    let values = test_values(results, setups, &columns)?;
    let order: Vec<&String> = setups
        .order
        .iter()
        .filter(|s| {
            values
                .get(*s)
                .is_some_and(|v| !v["tuned_micro_f1"].is_empty())
        })
        .collect();
    page.heading(
        3,
        "The threshold effect: the loss's decision rule against thresholds tuned on validation",
    );
    if order.is_empty() {
        page.note("No run tested with tuned thresholds yet.");
        return Ok(());
    }
    let mut html = String::from("<table class=sortable><thead><tr><th>setup</th>");
    for (title, _, _) in TUNED {
        let _ = write!(
            html,
            "<th>{title}: own rule</th><th>tuned</th><th>gain</th>"
        );
    }
    html.push_str("</tr></thead><tbody>");
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    for s in order {
        let _ = write!(html, "<tr><td>{}</td>", escape(s));
        for (_, own, tuned) in TUNED {
            let (a, b) = (mean(&values[s][own]), mean(&values[s][tuned]));
            let class = if b - a > 0.005 {
                "up"
            } else if a - b > 0.005 {
                "down"
            } else {
                "same"
            };
            let _ = write!(
                html,
                "<td data-v={a}>{a:.3}</td><td data-v={b}>{b:.3}</td><td class={class} data-v={}>{:+.3}</td>",
                b - a,
                b - a
            );
        }
        html.push_str("</tr>");
    }
    html.push_str("</tbody></table>");
    page.raw(&html);
    page.note(
        "Test F1 (mean over seeds) with the loss's own decision rule (docs/losses.md) and with one threshold per \
         class chosen on the validation split to maximise that class's F1. A large gain means the loss ranks \
         patches well but cuts in the wrong place; the mAP (above) is free of either rule.",
    );
    Ok(())
}

/// Validation curves per epoch: F1 (sample), macro mAP and loss, mean and band over seeds.
/// Labels of the setups' runs that have not finished (still training, stopped or failed): each
/// drawn as a curve of its own, never averaged with the finished seeds as if it were complete.
fn unfinished_labels(runs: &[RunRow], setups: &Setups) -> BTreeMap<String, String> {
    runs.iter()
        .filter(|r| r.status != "finished")
        .filter_map(|r| {
            let setup = setups.of_run(&r.run_id)?;
            let label = format!(
                "{setup} · seed {} ({}, epoch {}/{})",
                r.seed, r.status, r.epochs_done, r.epochs_planned
            );
            Some((r.run_id.clone(), label))
        })
        .collect()
}

pub fn curves(
    page: &mut Page,
    results: &Path,
    runs: &[RunRow],
    setups: &Setups,
    f1_threshold: f64,
) -> Result<()> {
    let unfinished = unfinished_labels(runs, setups);
    const PANELS: [(&str, &str); 3] = [
        ("validation F1 (sample)", "samples_f1"),
        ("validation mAP (macro)", "map_macro"),
        ("validation loss", "loss_value"),
    ];
    // (setup, panel, epoch) → values over seeds.
    let mut values: BTreeMap<(String, usize, u32), Vec<f64>> = BTreeMap::new();
    for b in read_table(&results.join(Table::Epochs.name()), None)? {
        let c = Columns::new("epochs", &b);
        for i in 0..c.rows() {
            if c.str("split", i)? != "validation" {
                continue;
            }
            let run_id = c.str("run_id", i)?;
            let Some(setup) = setups.of_run(&run_id) else {
                continue;
            };
            let series = unfinished.get(&run_id).map_or(setup, String::as_str);
            let epoch = c.u32("epoch", i)?;
            for (k, (_, col)) in PANELS.iter().enumerate() {
                if let Some(v) = c.f64(col, i)? {
                    values
                        .entry((series.to_string(), k, epoch))
                        .or_default()
                        .push(v);
                }
            }
        }
    }
    page.heading(
        3,
        "Validation curves per epoch (Fig. 6.2, with mAP and loss)",
    );
    if values.is_empty() {
        page.note("No epoch recorded yet.");
        return Ok(());
    }
    let points: Vec<Point> = values
        .iter()
        .map(|((s, k, e), v)| Point::of(s, PANELS[*k].0, f64::from(*e), v))
        .collect();
    let reference = Reference {
        panel: PANELS[0].0.into(),
        y: f1_threshold,
        label: format!("F1 = {f1_threshold} (--f1-threshold)"),
    };
    let panels: Vec<&str> = PANELS.iter().map(|p| p.0).collect();
    let mut order = setups.order.clone();
    order.extend(unfinished.values().cloned());
    let mut caption = "Mean over the finished seeds (line) and the range from the lowest to the highest \
         (band); each panel's y axis fits its data. Hover for values, click a legend entry to show one \
         setup, drag or scroll to zoom the epochs."
        .to_string();
    if !unfinished.is_empty() {
        caption += &format!(
            " {} run(s) that have not finished (training, stopped or failed) are drawn alone, \
             labelled with their state and epoch, and left out of their setup's mean.",
            unfinished.len()
        );
    }
    page.chart(
        vega::curves(&points, &[reference], &panels, &order, "epoch"),
        &caption,
    );
    first_epochs(page, &points, &setups.order, f1_threshold);
    Ok(())
}

/// Per setup: the first epoch whose mean validation F1 reaches the threshold, and the best
/// F1 and mAP.
fn first_epochs(page: &mut Page, points: &[Point], order: &[String], threshold: f64) {
    let mut html = format!(
        "<table class=sortable><thead><tr><th>setup</th><th>first epoch with validation F1 ≥ {threshold}</th>\
         <th>best validation F1</th><th>best validation mAP</th></tr></thead><tbody>"
    );
    for s in order {
        let of = |panel: &'static str| {
            points
                .iter()
                .filter(move |p| &p.setup == s && p.panel.contains(panel))
        };
        let first = of("F1").find(|p| p.mean >= threshold).map(|p| p.x);
        let best = |panel: &'static str| of(panel).map(|p| p.mean).fold(f64::NAN, f64::max);
        let (f1, map) = (best("F1"), best("mAP"));
        let first_cell = match first {
            Some(e) => format!("<td data-v={e}>{e}</td>"),
            None => "<td data-v=1e9 class=missing>not reached</td>".into(),
        };
        let num = |v: f64| {
            if v.is_nan() {
                "<td class=missing>–</td>".into()
            } else {
                format!("<td data-v={v}>{v:.3}</td>")
            }
        };
        let _ = write!(
            html,
            "<tr><td>{}</td>{first_cell}{}{}</tr>",
            escape(s),
            num(f1),
            num(map)
        );
    }
    html.push_str("</tbody></table>");
    page.raw(&html);
}

/// Per-class test F1 and AP, classes by setups, each cell shaded by its value.
pub fn classes(page: &mut Page, results: &Path, setups: &Setups) -> Result<()> {
    // (setup, class) → (F1 per run, AP per run); the support per class.
    let mut cells: BTreeMap<(String, usize), (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    let mut support = [0u64; BEN19.len()];
    for b in read_table(&results.join(Table::ClassMetrics.name()), None)? {
        let c = Columns::new("class_metrics", &b);
        for i in 0..c.rows() {
            if c.str("split", i)? != "test" {
                continue;
            }
            let Some(setup) = setups.of_run(&c.str("run_id", i)?) else {
                continue;
            };
            let k = c.u8("class_index", i)? as usize;
            if k >= BEN19.len() {
                bail!(
                    "table class_metrics: class_index {k} is not one of the {} classes",
                    BEN19.len()
                );
            }
            let cell = cells.entry((setup.to_string(), k)).or_default();
            cell.0.extend(c.f64("f1", i)?);
            cell.1.extend(c.f64("ap", i)?);
            support[k] = c.u64("support", i)?;
        }
    }
    page.heading(3, "Per-class test F1 and average precision (Table 6.4)");
    let order: Vec<&String> = setups
        .order
        .iter()
        .filter(|s| cells.keys().any(|(x, _)| x == *s))
        .collect();
    if order.is_empty() {
        page.note("No run has finished its test yet.");
        return Ok(());
    }
    let mut html = String::from(
        "<div class=wrap><table class=sortable><thead><tr><th>class</th><th>test support</th>",
    );
    for s in &order {
        let _ = write!(html, "<th>{} F1</th><th>AP</th>", escape(s));
    }
    html.push_str("</tr></thead><tbody>");
    for (k, class) in BEN19.iter().enumerate() {
        let _ = write!(
            html,
            "<tr><td>{}</td><td data-v={}>{}</td>",
            escape(class),
            support[k],
            support[k]
        );
        for s in &order {
            let (f1, ap) = cells.get(&((*s).clone(), k)).cloned().unwrap_or_default();
            html.push_str(&shaded(&f1));
            html.push_str(&shaded(&ap));
        }
        html.push_str("</tr>");
    }
    html.push_str("</tbody></table></div>");
    page.raw(&html);
    page.note(
        "Mean over seeds (± standard deviation where several), each cell shaded from white (0) to blue (1). Click a \
         header to sort. A class without test positives has no AP.",
    );
    Ok(())
}

/// A cell shaded white (0) to blue (1) by the mean of `values`.
fn shaded(values: &[f64]) -> String {
    match summarise(values) {
        None => "<td class=missing>–</td>".into(),
        Some(s) => {
            let t = s.mean.clamp(0.0, 1.0);
            let (r, g) = ((255.0 - 180.0 * t) as u8, (255.0 - 120.0 * t) as u8);
            let ink = if t > 0.7 { "color:#fff;" } else { "" };
            let spread = if s.runs > 1 {
                format!(" <span class=sd>±{:.2}</span>", s.std)
            } else {
                String::new()
            };
            format!(
                "<td data-v={} style=\"{ink}background:rgb({r},{g},255)\">{:.2}{spread}</td>",
                s.mean, s.mean
            )
        }
    }
}
