//! The `trials` table (docs/results.md, docs/tuning.md): the tuning trials among the merged run
//! folders (those with a `trial.json`), one row per rung each reached, with its parameters,
//! status and where it was pruned; `best` marks each loss's best trial (the highest rung
//! reached, then the highest value there, as the tuner picks it).

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Result;
use arrow_array::{
    ArrayRef, BooleanArray, Float64Array, RecordBatch, StringArray, UInt32Array, UInt64Array,
};

use lossbench_core::schema::Table;
use lossbench_core::trial::{Report, Trial, TrialStatus};

use super::folder::Run;

/// Each loss's best trial (run id), as the tuner picks it: the highest rung reached, then the
/// highest value there.
fn best_of<'a>(trials: &'a [(&Run, Trial)]) -> BTreeMap<&'a str, &'a str> {
    let mut best: BTreeMap<&str, (&str, (u32, f64))> = BTreeMap::new();
    for (r, t) in trials
        .iter()
        .filter(|(_, t)| t.status != TrialStatus::Failed)
    {
        let id = r.run_id.as_str();
        if let Some(r) = t.reports.last() {
            let score = (r.rung, r.value);
            let better = best.get(t.loss.as_str()).is_none_or(|(_, b)| {
                score.0 > b.0 || (score.0 == b.0 && score.1.total_cmp(&b.1).is_gt())
            });
            if better {
                best.insert(&t.loss, (id, score));
            }
        }
    }
    best.into_iter().map(|(loss, (id, _))| (loss, id)).collect()
}

/// A trial's parameters as a JSON object.
fn params_json(t: &Trial) -> String {
    let json: serde_json::Map<String, serde_json::Value> = t
        .params
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::to_value(v).unwrap_or_default()))
        .collect();
    serde_json::Value::Object(json).to_string()
}

/// One row of the table: a trial's run folder, the trial and one of its reports (none for a
/// trial without any).
type Row<'a> = (&'a Run, &'a Trial, Option<&'a Report>);

/// The trials table of `trials` (each trial's run folder and trial), with the study's metric.
pub fn trials_table(trials: &[(&Run, Trial)], metric: &str) -> Result<RecordBatch> {
    let best = best_of(trials);
    let rows: Vec<Row> = trials
        .iter()
        .flat_map(|(run, t)| {
            let first = t.reports.is_empty().then_some(None);
            first
                .into_iter()
                .chain(t.reports.iter().map(Some))
                .map(move |r| (*run, t, r))
        })
        .collect();
    let text = |f: &dyn Fn(&Row) -> String| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
    };
    let maybe = |f: &dyn Fn(&Trial) -> Option<String>| -> ArrayRef {
        Arc::new(StringArray::from_iter(rows.iter().map(|(_, t, _)| f(t))))
    };
    let count = |f: &dyn Fn(&Row) -> Option<u32>| -> ArrayRef {
        Arc::new(UInt32Array::from_iter(rows.iter().map(f)))
    };
    let real = |f: &dyn Fn(&Row) -> Option<f64>| -> ArrayRef {
        Arc::new(Float64Array::from_iter(rows.iter().map(f)))
    };
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("run_id", text(&|(run, _, _)| run.run_id.clone())),
        ("job", text(&|(run, _, _)| run.job.clone())),
        ("loss", text(&|(_, t, _)| t.loss.clone())),
        ("arch", text(&|(run, _, _)| run.arch.clone())),
        (
            "seed",
            Arc::new(UInt64Array::from_iter_values(
                rows.iter().map(|(run, _, _)| run.seed),
            )),
        ),
        ("trial", count(&|(_, t, _)| Some(t.index))),
        ("params", text(&|(_, t, _)| params_json(t))),
        ("status", text(&|(_, t, _)| t.status.name().to_string())),
        ("rung", count(&|(_, _, r)| r.map(|r| r.rung))),
        ("epoch", count(&|(_, _, r)| r.map(|r| r.epoch))),
        ("metric", text(&|_| metric.to_string())),
        ("value", real(&|(_, _, r)| r.map(|r| r.value))),
        ("pruned_at", count(&|(_, t, _)| t.pruned_at)),
        (
            "best",
            Arc::new(BooleanArray::from_iter(rows.iter().map(|(run, t, _)| {
                Some(best.get(t.loss.as_str()) == Some(&run.run_id.as_str()))
            }))),
        ),
        ("worker", maybe(&|t| t.worker.clone())),
        ("host", maybe(&|t| t.host.clone())),
        ("slurm_job", maybe(&|t| t.slurm_job.clone())),
        ("seconds", real(&|(_, t, _)| Some(t.seconds))),
        ("reason", maybe(&|t| t.reason.clone())),
    ];
    lossbench_core::schema::batch(&Table::Trials.schema(), columns)
}
