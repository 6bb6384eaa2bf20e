//! The landscape table's rows as the report reads them, and what the landscape and spectrum
//! charts share: the rows of a kind per run, the curve points per setup, the captions.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;

use crate::columns::Columns;
use crate::report::setups::Setups;
use crate::report::vega::Point;
use crate::results::RunRow;
use lossbench_core::run_folder;
use lossbench_core::schema::Table;
use lossbench_core::tables::read_table;

/// One landscape row, as the report uses it.
pub struct Row {
    pub run_id: String,
    pub seed: u64,
    pub setup: String,
    name: String,
    kind: String,
    pub checkpoint: Option<u32>,
    pub point: u32,
    pub alpha: Option<f64>,
    pub beta: Option<f64>,
    pub unit: Option<String>,
    pub quantity: String,
    pub value: f64,
}

pub fn rows(results: &Path, setups: &Setups) -> Result<Vec<Row>> {
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
pub fn first_per_run<'a>(rows: &'a [Row], kind: &str) -> Vec<&'a Row> {
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
pub fn caption(chosen: &[&Row], runs: &[RunRow]) -> String {
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
        let landscape = run_folder::landscape_dir(Path::new(folder), &r.name);
        let sizes = match run_folder::landscape_subsets(&landscape) {
            Ok((train, val)) => format!("{train} training / {val} validation patches"),
            Err(_) => format!(
                "subsets unknown ({} not readable)",
                run_folder::LANDSCAPE_SPEC_FILE
            ),
        };
        let at = r
            .checkpoint
            .map_or(String::new(), |c| format!(" at epoch {c}"));
        seen.insert(key, format!("{}{at}, {sizes}", r.run_id));
    }
    seen.into_values().collect::<Vec<_>>().join("; ")
}

/// Curve points over `x` of the rows of `quantity`, per setup (mean and band over its runs),
/// each run's values minus its value at x = 0 when `relative`.
pub fn points(
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
