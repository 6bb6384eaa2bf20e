//! Loss landscapes of an architecture's setups (docs/landscape.md): one quantity per chart,
//! each setup's 1D slice as its change from the checkpoint (α = 0) since the setups' losses
//! differ, 2D surfaces as filled contours on one colour scale with its colour bar, the
//! interpolation curves and the sharpness per checkpoint, the Hessian's spectrum
//! ([`spectrum`]); each caption names the checkpoint and the subsets' sizes (from the
//! landscape's `spec.json` in the run folder).

mod rows;
mod spectrum;

use std::fmt::Write;
use std::path::Path;

use anyhow::Result;

use super::page::{Page, escape, png_img};
use super::setups::Setups;
use super::vega;
use crate::results::RunRow;
use rows::{Row, caption, first_per_run, points, rows};

/// The landscapes section of one architecture.
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
    spectrum::section(page, &first_per_run(&rows, "spectrum"), runs, setups);
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
