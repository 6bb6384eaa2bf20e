//! The `test_summary` table: each setup's test metrics over its seeds (mean, std, Student-t
//! 95% interval; [`crate::stats`]), from the finished runs of a merge.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Result;
use arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray, UInt32Array};

use super::folder::Run;
use crate::stats::{SeedSummary, summarise};
use lossbench_core::records::TestOutcome;
use lossbench_core::schema::Table;

type Pick = fn(&TestOutcome) -> Option<f64>;
/// job, loss, arch, config hash, metric, summary.
type Row<'a> = (
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    &'static str,
    SeedSummary,
);

/// The summarised metrics: their `test_metrics` column and how to read them from an outcome.
const METRICS: [(&str, Pick); 19] = [
    ("micro_precision", |t| Some(t.metrics.micro.precision)),
    ("micro_recall", |t| Some(t.metrics.micro.recall)),
    ("micro_f1", |t| Some(t.metrics.micro.f1)),
    ("macro_precision", |t| Some(t.metrics.macro_avg.precision)),
    ("macro_recall", |t| Some(t.metrics.macro_avg.recall)),
    ("macro_f1", |t| Some(t.metrics.macro_avg.f1)),
    ("samples_precision", |t| Some(t.metrics.samples.precision)),
    ("samples_recall", |t| Some(t.metrics.samples.recall)),
    ("samples_f1", |t| Some(t.metrics.samples.f1)),
    ("weighted_f1", |t| Some(t.metrics.weighted.f1)),
    ("hamming_loss", |t| Some(t.metrics.hamming_loss)),
    ("subset_accuracy", |t| Some(t.metrics.subset_accuracy)),
    ("map_macro", |t| {
        t.ranking.as_ref().and_then(|r| r.map_macro)
    }),
    ("map_micro", |t| {
        t.ranking.as_ref().and_then(|r| r.map_micro)
    }),
    ("auc_macro", |t| {
        t.ranking.as_ref().and_then(|r| r.auc_macro)
    }),
    ("tuned_micro_f1", |t| {
        t.tuned.as_ref().map(|x| x.metrics.micro.f1)
    }),
    ("tuned_macro_f1", |t| {
        t.tuned.as_ref().map(|x| x.metrics.macro_avg.f1)
    }),
    ("tuned_samples_f1", |t| {
        t.tuned.as_ref().map(|x| x.metrics.samples.f1)
    }),
    ("loss_value", |t| Some(t.loss)),
];

/// One row per (setup, metric) over the runs with a test outcome.
pub fn test_summary_table(runs: &[Run]) -> Result<RecordBatch> {
    let mut setups: BTreeMap<(&str, &str, &str, &str), Vec<&TestOutcome>> = BTreeMap::new();
    for r in runs {
        if let Some(t) = &r.test {
            let key = (
                r.arch.as_str(),
                r.job.as_str(),
                r.config_hash.as_str(),
                r.loss.as_str(),
            );
            setups.entry(key).or_default().push(t);
        }
    }
    let mut rows: Vec<Row> = Vec::new();
    for ((arch, job, hash, loss), outcomes) in &setups {
        for (metric, pick) in METRICS {
            let values: Vec<f64> = outcomes.iter().filter_map(|t| pick(t)).collect();
            if let Some(s) = summarise(&values) {
                rows.push((*job, *loss, *arch, *hash, metric, s));
            }
        }
    }
    let text = |f: for<'r> fn(&'r Row<'_>) -> &'r str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
    };
    let float = |f: fn(&SeedSummary) -> Option<f64>| -> ArrayRef {
        Arc::new(Float64Array::from_iter(rows.iter().map(|r| f(&r.5))))
    };
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("job", text(|r| r.0)),
        ("loss", text(|r| r.1)),
        ("arch", text(|r| r.2)),
        ("config_hash", text(|r| r.3)),
        ("metric", text(|r| r.4)),
        (
            "runs",
            Arc::new(UInt32Array::from_iter_values(
                rows.iter().map(|r| r.5.runs as u32),
            )),
        ),
        ("mean", float(|s| Some(s.mean))),
        ("std", float(|s| Some(s.std))),
        ("ci95_low", float(|s| s.ci95.map(|c| c.0))),
        ("ci95_high", float(|s| s.ci95.map(|c| c.1))),
    ];
    lossbench_core::schema::batch(&Table::TestSummary.schema(), columns)
}
