//! The report's tuning section (docs/tuning.md), from the `trials` table and the final runs
//! (`<loss>-tuned` and `<loss>-default` jobs): each loss's best validation value so far against
//! the epochs its trials trained, each tuned parameter against the value it reached, the test
//! results of each loss's defaults and its tuned configuration over seeds with the paired
//! bootstrap of their difference, and the sentence a reader wants: which ranking of the losses
//! survives tuning.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use anyhow::Result;

use super::page::{Page, escape};
use super::vega::{self, Point};
use crate::columns::Columns;
use crate::compare::bootstrap::{self, Difference, Metric, Pair, Scored};
use crate::results::{self, RunRow};
use crate::stats::{SeedSummary, summarise};
use lossbench_core::schema::Table;
use lossbench_core::tables::read_table;

/// One trial, at the highest rung it reached.
struct TrialRow {
    loss: String,
    trial: u32,
    params: serde_json::Map<String, serde_json::Value>,
    epoch: u32,
    value: f64,
    metric: String,
}

fn read_trials(results: &Path) -> Result<Vec<TrialRow>> {
    let mut top: BTreeMap<(String, u32), TrialRow> = BTreeMap::new();
    for b in read_table(&results.join(Table::Trials.name()), None)? {
        let c = Columns::new("trials", &b);
        for i in 0..c.rows() {
            let (Some(epoch), Some(value)) = (c.opt_u32("epoch", i)?, c.f64("value", i)?) else {
                continue;
            };
            let (loss, trial) = (c.str("loss", i)?, c.u32("trial", i)?);
            let params = serde_json::from_str(&c.str("params", i)?).unwrap_or_default();
            let row = TrialRow {
                loss: loss.clone(),
                trial,
                params,
                epoch,
                value,
                metric: c.str("metric", i)?,
            };
            match top.get(&(loss.clone(), trial)) {
                Some(t) if t.epoch >= epoch => {}
                _ => {
                    top.insert((loss, trial), row);
                }
            }
        }
    }
    Ok(top.into_values().collect())
}

/// The losses of the trials, in the order they first appear.
fn losses(trials: &[TrialRow]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for t in trials {
        if !out.contains(&t.loss) {
            out.push(t.loss.clone());
        }
    }
    out
}

pub fn section(page: &mut Page, results: &Path, runs: &[RunRow], resamples: usize) -> Result<()> {
    let trials = read_trials(results)?;
    if trials.is_empty() {
        return Ok(());
    }
    let order = losses(&trials);
    let metric = trials[0].metric.clone();
    page.heading(2, "Tuning: every loss with the same budget");
    budget_chart(page, &trials, &order, &metric);
    parameter_charts(page, &trials, &order, &metric);
    defaults_against_tuned(page, results, runs, &order, resamples)
}

/// Best validation value so far against the epochs all of a loss's trials trained, trials
/// taken in their order.
fn budget_chart(page: &mut Page, trials: &[TrialRow], order: &[String], metric: &str) {
    let panel = format!("best validation {metric} so far");
    let mut points = Vec::new();
    for loss in order {
        let (mut spent, mut best) = (0u32, f64::NEG_INFINITY);
        for t in trials.iter().filter(|t| &t.loss == loss) {
            spent += t.epoch;
            best = best.max(t.value);
            points.push(Point::of(loss, &panel, f64::from(spent), &[best]));
        }
    }
    page.chart(
        vega::curves(&points, &[], &[&panel], order, "epochs trained by the loss's trials"),
        "Each loss's best validation value so far against the epochs its trials have trained, trials in \
         their order: with the same budget, where each loss stands, and whether more would have helped.",
    );
}

/// Each tuned parameter against the validation value its trials reached.
fn parameter_charts(page: &mut Page, trials: &[TrialRow], order: &[String], metric: &str) {
    let mut keys: Vec<&String> = trials.iter().flat_map(|t| t.params.keys()).collect();
    keys.sort();
    keys.dedup();
    let points: Vec<vega::Dot> = trials
        .iter()
        .flat_map(|t| {
            t.params.iter().filter_map(move |(k, v)| {
                Some(vega::Dot {
                    series: t.loss.clone(),
                    panel: k.clone(),
                    x: v.as_f64()?,
                    y: t.value,
                    label: format!("{}-t{:04}, epoch {}", t.loss, t.trial, t.epoch),
                })
            })
        })
        .collect();
    let panels: Vec<&str> = keys.iter().map(|k| k.as_str()).collect();
    page.chart(
        vega::dots(&points, &panels, order, &format!("validation {metric}")),
        "Every trial's parameters against the validation value at the highest rung it reached (a trial \
         pruned early sits lower: it trained fewer epochs). Learning rates on a log axis.",
    );
}

/// The finished final runs of `job`, by seed.
fn finals<'r>(runs: &'r [RunRow], job: &str) -> BTreeMap<u64, &'r RunRow> {
    runs.iter()
        .filter(|r| r.job == job && r.status == "finished")
        .map(|r| (r.seed, r))
        .collect()
}

fn map_of(results: &Path) -> Result<BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    for b in read_table(&results.join(Table::TestMetrics.name()), None)? {
        let c = Columns::new("test_metrics", &b);
        for i in 0..c.rows() {
            if let Some(v) = c.f64("map_macro", i)? {
                out.insert(c.str("run_id", i)?, v);
            }
        }
    }
    Ok(out)
}

/// A loss's test macro mAP over seeds with its defaults and tuned, and whether they pair.
type FinalRow = (String, Option<SeedSummary>, Option<SeedSummary>, bool);

/// The finished final runs' scored predictions, by run id.
fn scored_finals(results: &Path, runs: &[RunRow]) -> Result<BTreeMap<String, Scored>> {
    let mut scored = BTreeMap::new();
    let finals = runs.iter().filter(|r| {
        r.status == "finished" && (r.job.ends_with("-tuned") || r.job.ends_with("-default"))
    });
    for r in finals {
        let p = results::predictions(results, &r.run_id)?;
        scored.insert(
            r.run_id.clone(),
            Scored::new(p.truth, &p.scores, p.decisions),
        );
    }
    Ok(scored)
}

/// Per loss its defaults' and its tuned configuration's test mAP, and the seed pairs of the two.
fn final_rows<'s>(
    runs: &[RunRow],
    maps: &BTreeMap<String, f64>,
    scored: &'s BTreeMap<String, Scored>,
    order: &[String],
) -> (Vec<FinalRow>, Vec<Vec<Pair<'s>>>) {
    let (mut rows, mut comparisons) = (Vec::new(), Vec::new());
    for loss in order {
        let (tuned, default) = (
            finals(runs, &format!("{loss}-tuned")),
            finals(runs, &format!("{loss}-default")),
        );
        let mean = |f: &BTreeMap<u64, &RunRow>| {
            let v: Vec<f64> = f
                .values()
                .filter_map(|r| maps.get(&r.run_id).copied())
                .collect();
            summarise(&v)
        };
        let pairs: Vec<Pair> = tuned
            .iter()
            .filter_map(|(seed, t)| {
                let d = default.get(seed)?;
                Some(Pair {
                    seed: *seed,
                    a: scored.get(&t.run_id)?,
                    b: scored.get(&d.run_id)?,
                })
            })
            .collect();
        rows.push((
            loss.clone(),
            mean(&default),
            mean(&tuned),
            !pairs.is_empty(),
        ));
        if !pairs.is_empty() {
            comparisons.push(pairs);
        }
    }
    (rows, comparisons)
}

/// Defaults against tuned per loss (test macro mAP over seeds, the paired bootstrap of the
/// difference), and the two rankings.
fn defaults_against_tuned(
    page: &mut Page,
    results: &Path,
    runs: &[RunRow],
    order: &[String],
    resamples: usize,
) -> Result<()> {
    page.heading(3, "Defaults against tuned, on the test split");
    let maps = map_of(results)?;
    let scored = scored_finals(results, runs)?;
    let (rows, comparisons) = final_rows(runs, &maps, &scored, order);
    if rows.iter().all(|r| r.1.is_none() && r.2.is_none()) {
        page.note("No final run has tested yet (`tune run` trains them once every loss's search has ended).");
        return Ok(());
    }
    let slices: Vec<&[Pair]> = comparisons.iter().map(Vec::as_slice).collect();
    let mut compared = bootstrap::compare_all(&slices, resamples, 0).into_iter();
    let mut html = String::from(
        "<div class=wrap><table><thead><tr><th>loss</th><th>defaults: test mAP</th><th>tuned: test mAP</th>\
         <th>tuned − defaults, paired bootstrap</th></tr></thead><tbody>",
    );
    let cell = |s: &Option<SeedSummary>| match s {
        Some(s) => format!("{:.4} ± {:.4} (n={})", s.mean, s.std, s.runs),
        None => "–".into(),
    };
    for (loss, d, t, paired) in &rows {
        let diff = paired
            .then(|| compared.next().map(|ds| pick(&ds)))
            .flatten();
        let diff = diff.map_or("–".into(), |d: Difference| {
            let mark = if d.excludes_zero() { " *" } else { "" };
            format!("{:+.4} [{:+.4}, {:+.4}]{mark}", d.observed, d.low, d.high)
        });
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(loss),
            cell(d),
            cell(t),
            diff
        );
    }
    html.push_str("</tbody></table></div>");
    page.raw(&html);
    page.note(&format!(
        "Each loss's defaults (its job config) and its best trial's configuration, trained with the same seeds and \
         the shared recipe, tested once. Intervals: 95% paired bootstrap over the test patches and seeds ({resamples} \
         resamples); * where it excludes 0."
    ));
    page.raw(&format!(
        "<p><b>{}</b></p>",
        escape(&ranking_sentence(&rows))
    ));
    Ok(())
}

fn pick(diffs: &[Difference]) -> Difference {
    *diffs
        .iter()
        .find(|d| d.metric == Metric::MapMacro)
        .expect("every metric is compared")
}

/// "With their defaults the losses rank A > B > C by test macro mAP; tuned with the same
/// budget, B > A > C: tuning changes the order of A and B."
fn ranking_sentence(
    rows: &[(
        String,
        Option<crate::stats::SeedSummary>,
        Option<crate::stats::SeedSummary>,
        bool,
    )],
) -> String {
    let ranked = |k: usize| -> Vec<&str> {
        let mut v: Vec<(&str, f64)> = rows
            .iter()
            .filter_map(|r| {
                let s = if k == 1 { &r.1 } else { &r.2 };
                s.as_ref().map(|s| (r.0.as_str(), s.mean))
            })
            .collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v.into_iter().map(|(l, _)| l).collect()
    };
    let (defaults, tuned) = (ranked(1), ranked(2));
    if defaults.len() < 2 || tuned.len() < 2 {
        return "Too few losses have tested final runs to rank them.".into();
    }
    let changed: Vec<String> = tuned
        .iter()
        .enumerate()
        .flat_map(|(i, a)| tuned[i + 1..].iter().map(move |b| (*a, *b)))
        .filter(|(a, b)| {
            let pos = |l: &str| defaults.iter().position(|x| *x == l);
            matches!((pos(a), pos(b)), (Some(x), Some(y)) if x > y)
        })
        .map(|(a, b)| format!("{a} and {b}"))
        .collect();
    let verdict = match changed.is_empty() {
        true => "the ranking survives tuning.".to_string(),
        false => format!("tuning changes the order of {}.", changed.join("; ")),
    };
    format!(
        "With their defaults the losses rank {} by test macro mAP; tuned with the same budget, {}: {verdict} \
         The comparison matrix above says which of these differences exceed the noise.",
        defaults.join(" > "),
        tuned.join(" > ")
    )
}
