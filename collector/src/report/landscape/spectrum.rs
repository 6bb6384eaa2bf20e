//! The Hessian's spectrum of an architecture's setups (docs/landscape.md, "Spectrum"): the
//! eigenvalue densities at the latest epoch on one scale, the top eigenvalue, the trace and the
//! negative mass per epoch, and the per-unit traces at the latest epoch as grouped bars.

use std::collections::BTreeMap;

use super::rows::{Row, caption, points};
use crate::report::page::Page;
use crate::report::setups::Setups;
use crate::report::vega::{self, Point};
use crate::results::RunRow;

const DENSITY: &str = "log10 eigenvalue density";
/// Density values below this share of the largest are drawn at it: a log scale needs a floor.
const DENSITY_FLOOR: f64 = 1e-7;

pub(super) fn section(page: &mut Page, rows: &[&Row], runs: &[RunRow], setups: &Setups) {
    if rows.is_empty() {
        return;
    }
    page.heading(4, "Hessian spectrum of the training loss");
    // The top eigenvalue is rank 0's; the trace is the whole network's (no unit).
    let per_epoch: Vec<&Row> = rows
        .iter()
        .filter(|r| (r.quantity != "eigenvalue" || r.point == 0) && r.unit.is_none())
        .copied()
        .collect();
    let panels = ["top eigenvalue λ₁", "trace (Hutchinson)", "negative mass"];
    let mut pts = Vec::new();
    for (quantity, panel) in ["eigenvalue", "trace", "negative_mass"].iter().zip(panels) {
        pts.extend(points(
            &per_epoch,
            quantity,
            panel,
            |r| r.checkpoint.map(f64::from),
            false,
        ));
    }
    page.chart(
        vega::curves(&pts, &[], &panels, &setups.order, "epoch"),
        &format!(
            "Per checkpoint, mean and range over seeds; the trace's standard errors are in the landscape table \
             (quantity trace_se). {}",
            caption(rows, runs)
        ),
    );
    densities(page, rows, setups);
    unit_traces(page, rows, setups);
}

/// Each run's latest epoch with a summary (a trace).
fn latest<'a>(rows: &[&'a Row]) -> BTreeMap<&'a str, u32> {
    let mut out: BTreeMap<&str, u32> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.quantity == "trace") {
        if let Some(c) = r.checkpoint {
            let e = out.entry(&r.run_id).or_insert(c);
            *e = (*e).max(c);
        }
    }
    out
}

/// The density curves, one per setup (its smallest seed: the curves' grids differ between runs),
/// at that run's latest epoch, on one log scale.
fn densities(page: &mut Page, rows: &[&Row], setups: &Setups) {
    let latest = latest(rows);
    let mut first: BTreeMap<&str, (u64, &str)> = BTreeMap::new();
    for r in rows
        .iter()
        .filter(|r| latest.contains_key(r.run_id.as_str()))
    {
        let e = first.entry(&r.setup).or_insert((r.seed, &r.run_id));
        if r.seed < e.0 {
            *e = (r.seed, &r.run_id);
        }
    }
    let chosen: Vec<&Row> = rows
        .iter()
        .filter(|r| {
            r.quantity == "density"
                && first.get(r.setup.as_str()).map(|f| f.1) == Some(r.run_id.as_str())
                && r.checkpoint == latest.get(r.run_id.as_str()).copied()
        })
        .copied()
        .collect();
    let top = chosen.iter().map(|r| r.value).fold(0.0, f64::max);
    if chosen.is_empty() || top <= 0.0 {
        return;
    }
    let pts: Vec<Point> = chosen
        .iter()
        .filter_map(|r| {
            let v = r.value.max(top * DENSITY_FLOOR).log10();
            Some(Point::of(&r.setup, DENSITY, r.alpha?, &[v]))
        })
        .collect();
    let at: Vec<String> = first
        .values()
        .map(|(_, run)| format!("{run} at epoch {}", latest[run]))
        .collect();
    page.chart(
        vega::curves(&pts, &[], &[DENSITY], &setups.order, "eigenvalue"),
        &format!(
            "Stochastic Lanczos quadrature, Gaussian broadening; one scale for every setup (values under {DENSITY_FLOOR} \
             of the largest drawn at it), each setup's smallest seed: {}.",
            at.join("; ")
        ),
    );
}

/// The trace of each unit's diagonal block at each run's latest epoch, per setup.
fn unit_traces(page: &mut Page, rows: &[&Row], setups: &Setups) {
    let latest = latest(rows);
    let mut units: Vec<String> = Vec::new();
    let mut values: BTreeMap<(&str, &str), Vec<f64>> = BTreeMap::new();
    for r in rows.iter().filter(|r| {
        r.quantity == "layer_trace" && r.checkpoint == latest.get(r.run_id.as_str()).copied()
    }) {
        let Some(unit) = r.unit.as_deref() else {
            continue;
        };
        if !units.iter().any(|u| u == unit) {
            units.push(unit.to_string());
        }
        values.entry((&r.setup, unit)).or_default().push(r.value);
    }
    if values.is_empty() {
        return;
    }
    let pts: Vec<Point> = values
        .iter()
        .map(|((setup, unit), v)| Point::of(setup, unit, 0.0, v))
        .collect();
    page.chart(
        vega::bars(&pts, &units, &setups.order, "unit (layer or block)", "trace of its Hessian block"),
        "Per unit, the trace of its diagonal block of the Hessian (Hutchinson, the same probes as the whole \
         trace) at each run's latest epoch; mean over seeds, their range on hover.",
    );
}
