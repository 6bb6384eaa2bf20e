//! "Which loss is better, beyond the noise": for every two setups of an architecture, the
//! pooled paired bootstrap of their test difference (crate::compare::bootstrap) in macro mAP and
//! micro F1, as matrices whose cells are marked where the 95% interval excludes 0.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use anyhow::Result;

use super::page::{Page, escape};
use super::setups::Setups;
use crate::compare::bootstrap::{self, Difference, Metric, Pair, Scored};
use crate::results::{self, RunRow};

/// Each finished run of the setups with its scored predictions: setup → seed → outcome.
type Loaded = BTreeMap<String, BTreeMap<u64, Scored>>;

fn load(results: &Path, runs: &[RunRow], setups: &Setups) -> Result<Loaded> {
    let mut out = Loaded::new();
    let mut patches: Option<Vec<String>> = None;
    for r in runs.iter().filter(|r| r.status == "finished") {
        let Some(setup) = setups.of_run(&r.run_id) else {
            continue;
        };
        let p = results::predictions(results, &r.run_id)?;
        match &patches {
            Some(known) if *known != p.patches => {
                tracing::warn!(run = %r.run_id, "tested on other patches than the others: left out of the matrix");
                continue;
            }
            Some(_) => {}
            None => patches = Some(p.patches.clone()),
        }
        out.entry(setup.to_string())
            .or_default()
            .insert(r.seed, Scored::new(p.truth, &p.scores, p.decisions));
    }
    Ok(out)
}

/// The seed pairs of two setups: the seeds both have.
fn pairs<'a>(a: &'a BTreeMap<u64, Scored>, b: &'a BTreeMap<u64, Scored>) -> Vec<Pair<'a>> {
    a.iter()
        .filter_map(|(seed, sa)| {
            b.get(seed).map(|sb| Pair {
                seed: *seed,
                a: sa,
                b: sb,
            })
        })
        .collect()
}

pub fn section(
    page: &mut Page,
    results: &Path,
    runs: &[RunRow],
    setups: &Setups,
    resamples: usize,
) -> Result<()> {
    page.heading(3, "Which setup is better, beyond the noise?");
    let loaded = load(results, runs, setups)?;
    let order: Vec<&String> = setups
        .order
        .iter()
        .filter(|s| loaded.contains_key(*s))
        .collect();
    if order.len() < 2 {
        page.note("Fewer than two setups have finished runs: nothing to compare yet.");
        return Ok(());
    }
    // Every two setups with a shared seed, compared in one pass over the resamples (each run
    // scored once per resample, however many comparisons it is in).
    let mut cells_of = Vec::new();
    let mut comparisons = Vec::new();
    for i in 0..order.len() {
        for j in i + 1..order.len() {
            let p = pairs(&loaded[order[i]], &loaded[order[j]]);
            if !p.is_empty() {
                cells_of.push((i, j));
                comparisons.push(p);
            }
        }
    }
    let slices: Vec<&[Pair]> = comparisons.iter().map(Vec::as_slice).collect();
    let compared = bootstrap::compare_all(&slices, resamples, 0);
    let cells: BTreeMap<(usize, usize), Vec<Difference>> =
        cells_of.into_iter().zip(compared).collect();
    for metric in [Metric::MapMacro, Metric::MicroF1] {
        page.raw(&matrix(&order, &cells, metric));
    }
    let waiting: Vec<&str> = runs
        .iter()
        .filter(|r| r.status != "finished" && setups.of_run(&r.run_id).is_some())
        .map(|r| r.run_id.as_str())
        .collect();
    if !waiting.is_empty() {
        page.note(&format!(
            "Over finished runs only: {} run(s) of these setups are missing until they finish ({}).",
            waiting.len(),
            waiting.join(", ")
        ));
    }
    page.note(&format!(
        "Row − column on the test split, mean over the seeds both have, with the 95% interval of a paired bootstrap \
         over the test patches that also resamples the seeds ({resamples} resamples, seed 0; docs/results.md, \
         \"Comparing two jobs\"). Green: the row is better and the interval excludes 0; red: worse; grey: within \
         the noise. `collector compare --a JOB --b JOB` gives the per-seed detail."
    ));
    Ok(())
}

fn matrix(
    order: &[&String],
    cells: &BTreeMap<(usize, usize), Vec<Difference>>,
    metric: Metric,
) -> String {
    let mut html = format!(
        "<div class=wrap><table class=matrix><caption>{}: row − column</caption><thead><tr><th></th>",
        crate::compare::title(metric)
    );
    for s in order {
        let _ = write!(html, "<th>{}</th>", escape(s));
    }
    html.push_str("</tr></thead><tbody>");
    for i in 0..order.len() {
        let _ = write!(html, "<tr><td>{}</td>", escape(order[i]));
        for j in 0..order.len() {
            let d = if i < j {
                cells.get(&(i, j)).map(|d| pick(d, metric))
            } else {
                cells.get(&(j, i)).map(|d| negated(pick(d, metric)))
            };
            html.push_str(&match d {
                _ if i == j => "<td class=missing>·</td>".into(),
                None => "<td class=missing>no shared seed</td>".into(),
                Some(d) => {
                    let class = match (d.excludes_zero(), d.observed > 0.0) {
                        (true, true) => "up",
                        (true, false) => "down",
                        _ => "same",
                    };
                    let mark = if d.excludes_zero() { " *" } else { "" };
                    format!(
                        "<td class={class} title=\"{:.1}% of resamples favour the row\">{:+.3}{mark}<span class=ci>[{:+.3}, {:+.3}]</span></td>",
                        100.0 * d.a_better,
                        d.observed,
                        d.low,
                        d.high
                    )
                }
            });
        }
        html.push_str("</tr>");
    }
    html.push_str("</tbody></table></div>");
    html
}

fn pick(diffs: &[Difference], metric: Metric) -> Difference {
    *diffs
        .iter()
        .find(|d| d.metric == metric)
        .expect("every metric is compared")
}

/// B − A from A − B.
fn negated(d: Difference) -> Difference {
    Difference {
        metric: d.metric,
        observed: -d.observed,
        low: -d.high,
        high: -d.low,
        a_better: d.b_better,
        b_better: d.a_better,
    }
}
