//! Loss landscapes of an architecture's setups (docs/landscape.md): one quantity per chart,
//! each setup's 1D slice as its change from the checkpoint (α = 0) since the setups' losses
//! differ, 2D surfaces as filled contours on one colour scale with its colour bar, the
//! interpolation curves and the sharpness per checkpoint, the Hessian's spectrum
//! ([`super::spectrum`]); each caption names the checkpoint and the subsets' sizes (from the
//! landscape's `spec.json` in the run folder).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use anyhow::Result;

use super::page::{Page, escape, png_img};
use super::setups::Setups;
use super::vega::{self, Point};
use crate::columns::Columns;
use crate::results::RunRow;
use lossbench_core::schema::Table;
use lossbench_core::tables::read_table;

/// One landscape row, as the report uses it.
pub(super) struct Row {
    pub run_id: String,
    pub seed: u64,
    pub setup: String,
    name: String,
    kind: String,
    pub checkpoint: Option<u32>,
    pub point: u32,
    pub alpha: Option<f64>,
    beta: Option<f64>,
    pub unit: Option<String>,
    pub quantity: String,
    pub value: f64,
}

fn rows(results: &Path, setups: &Setups) -> Result<Vec<Row>> {
    let mut out = Vec::new();
    for b in read_table(&results.join(Table::Landscape.name()), None)? {
        let c = Columns::new("landscape", &b);
        for i in 0..c.rows() {
            let run_id = c.str("run_id", i)?;
            let Some(setup) = setups.of_run(&run_id) else {
                continue;
            };
            out.push(Row {
                setup: setup.to_string(),
                seed: c.u64("seed", i)?,
                run_id,
                name: c.str("name", i)?,
                kind: c.str("kind", i)?,
                checkpoint: c.opt_u32("checkpoint", i)?,
                point: c.u32("point", i)?,
                alpha: c.f64("alpha", i)?,
                beta: c.f64("beta", i)?,
                // Null (and absent in tables of earlier versions) where the row is no unit's.
                unit: c.opt_str("unit", i)?.filter(|u| !u.is_empty()),
                quantity: c.str("quantity", i)?,
                value: c.f64("value", i)?.unwrap_or(f64::NAN),
            });
        }
    }
    Ok(out)
}

/// Of one kind, per run: the rows of its first landscape by name.
fn first_per_run<'a>(rows: &'a [Row], kind: &str) -> Vec<&'a Row> {
    let mut first: BTreeMap<&str, &str> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.kind == kind) {
        let e = first.entry(&r.run_id).or_insert(&r.name);
        if r.name.as_str() < *e {
            *e = &r.name;
        }
    }
    rows.iter()
        .filter(|r| r.kind == kind && first.get(r.run_id.as_str()) == Some(&r.name.as_str()))
        .collect()
}

/// What the landscapes of `chosen` were computed on: checkpoint epochs and subset sizes.
pub(super) fn caption(chosen: &[&Row], runs: &[RunRow]) -> String {
    let mut seen: BTreeMap<(String, String), String> = BTreeMap::new();
    for r in chosen {
        let key = (r.run_id.clone(), r.name.clone());
        if seen.contains_key(&key) {
            continue;
        }
        let folder = runs
            .iter()
            .find(|x| x.run_id == r.run_id)
            .map(|x| x.folder.as_str())
            .unwrap_or("");
        let spec = Path::new(folder)
            .join("landscape")
            .join(&r.name)
            .join("spec.json");
        let sizes = std::fs::read(&spec)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .map(|s| {
                let n = |k: &str| s[k].as_array().map_or(0, Vec::len);
                format!(
                    "{} training / {} validation patches",
                    n("train_rows"),
                    n("val_rows")
                )
            })
            .unwrap_or_else(|| "subsets unknown (spec.json not readable)".into());
        let at = r
            .checkpoint
            .map_or(String::new(), |c| format!(" at epoch {c}"));
        seen.insert(key, format!("{}{at}, {sizes}", r.run_id));
    }
    seen.into_values().collect::<Vec<_>>().join("; ")
}

/// Curve points over `x` of the rows of `quantity`, per setup (mean and band over its runs),
/// each run's values minus its value at x = 0 when `relative`.
pub(super) fn points(
    chosen: &[&Row],
    quantity: &str,
    panel: &str,
    x: fn(&Row) -> Option<f64>,
    relative: bool,
) -> Vec<Point> {
    let mut at_zero: BTreeMap<&str, f64> = BTreeMap::new();
    if relative {
        for r in chosen
            .iter()
            .filter(|r| r.quantity == quantity && x(r) == Some(0.0))
        {
            at_zero.insert(&r.run_id, r.value);
        }
    }
    let mut values: BTreeMap<(&str, i64), (f64, Vec<f64>)> = BTreeMap::new();
    for r in chosen.iter().filter(|r| r.quantity == quantity) {
        let Some(xv) = x(r) else { continue };
        let base = if relative {
            match at_zero.get(r.run_id.as_str()) {
                Some(b) => *b,
                None => continue,
            }
        } else {
            0.0
        };
        let e = values
            .entry((&r.setup, (xv * 1e9).round() as i64))
            .or_insert((xv, Vec::new()));
        e.1.push(r.value - base);
    }
    values
        .into_iter()
        .map(|((s, _), (xv, v))| Point::of(s, panel, xv, &v))
        .collect()
}

pub fn section(page: &mut Page, results: &Path, runs: &[RunRow], setups: &Setups) -> Result<()> {
    let rows = rows(results, setups)?;
    page.heading(3, "Loss landscapes (docs/landscape.md)");
    if rows.is_empty() {
        page.note("No landscapes yet (trainer landscape).");
        return Ok(());
    }
    slices(page, &first_per_run(&rows, "1d"), runs, setups);
    surfaces(page, &first_per_run(&rows, "2d"), setups, runs)?;
    let interp = first_per_run(&rows, "interp");
    if !interp.is_empty() {
        page.heading(
            4,
            "Interpolation: (1 − t)·θ₀ + t·θ₁ between two checkpoints",
        );
        let pts = points(&interp, "loss", "own loss", |r| r.alpha, false);
        page.chart(
            vega::curves(&pts, &[], &["own loss"], &setups.order, "t"),
            &caption(&interp, runs),
        );
    }
    let sharp = first_per_run(&rows, "sharpness");
    if !sharp.is_empty() {
        page.heading(
            4,
            "Sharpness: the dominant Hessian eigenvalue of the training loss per checkpoint",
        );
        let pts = points(
            &sharp,
            "lambda_max",
            "λ_max",
            |r| r.checkpoint.map(f64::from),
            false,
        );
        page.chart(
            vega::curves(&pts, &[], &["λ_max"], &setups.order, "epoch"),
            &caption(&sharp, runs),
        );
    }
    super::spectrum::section(page, &first_per_run(&rows, "spectrum"), runs, setups);
    Ok(())
}

/// 1D slices: each setup's own loss as its change from α = 0, validation F1, and the losses
/// computed for every run (`loss:<name>`).
fn slices(page: &mut Page, one: &[&Row], runs: &[RunRow], setups: &Setups) {
    if one.is_empty() {
        return;
    }
    let mut pts = points(
        one,
        "loss",
        "own loss: change from α = 0",
        |r| r.alpha,
        true,
    );
    pts.extend(points(
        one,
        "f1_samples",
        "validation F1 (sample)",
        |r| r.alpha,
        false,
    ));
    let mut panels = vec!["own loss: change from α = 0", "validation F1 (sample)"];
    // The same loss for every run, where the landscapes computed it (`loss:<name>`).
    let mut shared: Vec<String> = one
        .iter()
        .filter(|r| r.quantity.starts_with("loss:"))
        .map(|r| r.quantity.clone())
        .collect();
    shared.sort();
    shared.dedup();
    let titles: Vec<String> = shared
        .iter()
        .map(|q| format!("{}: change from α = 0", &q[5..]))
        .collect();
    for (q, t) in shared.iter().zip(&titles) {
        pts.extend(points(one, q, t, |r| r.alpha, true));
    }
    panels.extend(titles.iter().map(String::as_str));
    page.heading(4, "1D: θ + α·d");
    page.chart(
        vega::curves(&pts, &[], &panels, &setups.order, "α (filter-normalised units)"),
        &format!(
            "Each setup's loss as its change from the checkpoint (the setups' losses differ, so their values do not \
             compare), and validation F1; mean and range over seeds. {}",
            caption(one, runs)
        ),
    );
}

/// 2D surfaces of the loss, one per setup (its smallest seed), on one colour scale.
fn surfaces(page: &mut Page, two: &[&Row], setups: &Setups, runs: &[RunRow]) -> Result<()> {
    if two.is_empty() {
        return Ok(());
    }
    let losses: Vec<&&Row> = two.iter().filter(|r| r.quantity == "loss").collect();
    // log10 of the loss where every value is positive: the surfaces span decades.
    let log = losses.iter().all(|r| r.value > 0.0);
    let scaled = |v: f64| if log { v.log10() } else { v };
    let (lo, hi) = losses
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), r| {
            (a.min(scaled(r.value)), b.max(scaled(r.value)))
        });
    page.heading(4, "2D: θ + α·d₁ + β·d₂ (α left to right, β bottom to top)");
    let mut html = String::from("<table><tr>");
    let mut shown = Vec::new();
    for setup in &setups.order {
        let first_run = losses
            .iter()
            .filter(|r| &r.setup == setup)
            .min_by_key(|r| r.seed);
        let Some(run) = first_run.map(|r| r.run_id.as_str()) else {
            continue;
        };
        let mut cells: Vec<(f64, f64, f64)> = losses
            .iter()
            .filter(|r| r.run_id == run)
            .filter_map(|r| Some((r.alpha?, r.beta?, scaled(r.value))))
            .collect();
        cells.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
        let n = (cells.len() as f64).sqrt().round() as usize;
        let cell = if n >= 2 && n * n == cells.len() {
            let values: Vec<f64> = cells.iter().map(|c| c.2).collect();
            let png = lossbench_core::images::contour_png(&values, n, lo, hi, 12, 180)?;
            png_img(&png, 180, 180, &format!("{setup}, 2D landscape"))
        } else {
            format!(
                "<span class=missing>{} of the grid's points so far</span>",
                cells.len()
            )
        };
        let _ = write!(html, "<td>{}<br>{cell}</td>", escape(setup));
        shown.extend(two.iter().filter(|r| r.run_id == run).copied());
    }
    let bar = lossbench_core::images::bands_bar_png(12, 360, 14)?;
    let _ = write!(
        html,
        "</tr></table><p class=note>{lo:.3} {} {hi:.3} ({} of the loss)</p>",
        png_img(&bar, 360, 14, "colour scale"),
        if log { "log10" } else { "the value" }
    );
    page.raw(&html);
    page.note(&format!(
        "One colour scale for every setup (the bar: 12 bands of viridis, dark = low), each setup's smallest seed. {}",
        caption(&shown, runs)
    ));
    Ok(())
}
