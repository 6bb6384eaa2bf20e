//! The rows of the collector's tables from the run folders ([`super::folder`]), built against
//! the schemas of [`lossbench_core::schema`] so every file of a table has the same schema.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow_array::{
    ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMillisecondArray, UInt8Array,
    UInt32Array, UInt64Array,
};

use super::folder::Run;
use lossbench_core::labels::BEN19;
use lossbench_core::metrics::{ClassMetrics, Metrics, Prf};
use lossbench_core::ranking::{ClassRanking, Ranking};
use lossbench_core::records::{EpochRecord, TestOutcome};
use lossbench_core::schema::{self, RANKING_COLUMNS, TUNED_COLUMNS, Table};

fn strings<'a>(values: impl Iterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values))
}

fn floats(values: impl Iterator<Item = Option<f64>>) -> ArrayRef {
    Arc::new(Float64Array::from_iter(values))
}

/// run_id, job, loss, arch, seed: the first columns of every table, repeated over `n` rows.
pub fn run_columns<'a>(r: &Run, n: usize) -> Vec<(&'a str, ArrayRef)> {
    vec![
        ("run_id", strings(std::iter::repeat_n(r.run_id.as_str(), n))),
        ("job", strings(std::iter::repeat_n(r.job.as_str(), n))),
        ("loss", strings(std::iter::repeat_n(r.loss.as_str(), n))),
        ("arch", strings(std::iter::repeat_n(r.arch.as_str(), n))),
        (
            "seed",
            Arc::new(UInt64Array::from_iter_values(std::iter::repeat_n(
                r.seed, n,
            ))),
        ),
    ]
}

/// Precision/recall/F1 of each averaging, Hamming loss, subset accuracy, patch count and the
/// ranking metrics, from optional metrics (null where a row has none).
fn metric_columns(
    metrics: &[Option<(&Metrics, Option<&Ranking>)>],
) -> Vec<(&'static str, ArrayRef)> {
    type Averaging = ([&'static str; 3], fn(&Metrics) -> Prf);
    let averagings: [Averaging; 4] = [
        (["micro_precision", "micro_recall", "micro_f1"], |m| m.micro),
        (["macro_precision", "macro_recall", "macro_f1"], |m| {
            m.macro_avg
        }),
        (
            ["weighted_precision", "weighted_recall", "weighted_f1"],
            |m| m.weighted,
        ),
        (["samples_precision", "samples_recall", "samples_f1"], |m| {
            m.samples
        }),
    ];
    let of = |f: &dyn Fn(&Metrics) -> f64| floats(metrics.iter().map(|m| m.map(|(m, _)| f(m))));
    let mut out: Vec<(&'static str, ArrayRef)> = Vec::new();
    for (names, pick) in averagings {
        out.push((names[0], of(&|m| pick(m).precision)));
        out.push((names[1], of(&|m| pick(m).recall)));
        out.push((names[2], of(&|m| pick(m).f1)));
    }
    out.push(("hamming_loss", of(&|m| m.hamming_loss)));
    out.push(("subset_accuracy", of(&|m| m.subset_accuracy)));
    let patches = metrics.iter().map(|m| m.map(|(m, _)| m.patches));
    out.push(("patches", Arc::new(UInt64Array::from_iter(patches))));
    let ranked = |f: fn(&Ranking) -> Option<f64>| {
        floats(metrics.iter().map(|m| m.and_then(|(_, r)| r.and_then(f))))
    };
    let measures: [fn(&Ranking) -> Option<f64>; 7] = [
        |r| r.map_macro,
        |r| r.map_micro,
        |r| r.auc_macro,
        |r| Some(r.one_error),
        |r| Some(r.coverage),
        |r| Some(r.ranking_loss),
        |r| Some(r.lrap),
    ];
    out.extend(
        RANKING_COLUMNS
            .into_iter()
            .zip(measures)
            .map(|(n, f)| (n, ranked(f))),
    );
    out
}

fn batch(table: Table, columns: Vec<(&'static str, ArrayRef)>) -> Result<RecordBatch> {
    schema::batch(&table.schema(), columns).with_context(|| format!("table {}", table.name()))
}

/// `epochs`: per epoch a `train` row (loss, speed, time breakdown) and a `validation` row
/// (loss and metrics).
pub fn epochs_table(r: &Run) -> Result<RecordBatch> {
    let rows: Vec<(&EpochRecord, bool)> = r
        .records
        .iter()
        .flat_map(|e| [(e, true), (e, false)])
        .collect();
    let train_only =
        |f: fn(&EpochRecord) -> f64| floats(rows.iter().map(move |(e, train)| train.then(|| f(e))));
    let mut columns = run_columns(r, rows.len());
    columns.push((
        "epoch",
        Arc::new(UInt32Array::from_iter_values(
            rows.iter().map(|(e, _)| e.epoch),
        )),
    ));
    columns.push((
        "split",
        strings(
            rows.iter()
                .map(|(_, train)| if *train { "train" } else { "validation" }),
        ),
    ));
    columns.push((
        "loss_value",
        floats(
            rows.iter()
                .map(|(e, train)| Some(if *train { e.train_loss } else { e.val_loss })),
        ),
    ));
    let validation: Vec<_> = rows
        .iter()
        .map(|(e, train)| (!train).then_some((&e.val, e.val_ranking.as_ref())))
        .collect();
    columns.extend(metric_columns(&validation));
    columns.push(("lr", train_only(|e| e.lr)));
    columns.push(("images_per_s", train_only(|e| e.images_per_s)));
    columns.push(("epoch_wall_s", train_only(|e| e.wall_s)));
    columns.push(("compute_s", train_only(|e| e.time.compute_s)));
    columns.push(("allreduce_s", train_only(|e| e.time.allreduce_s)));
    columns.push(("data_wait_s", train_only(|e| e.time.data_wait_s)));
    batch(Table::Epochs, columns)
}

/// `class_metrics`: per validation epoch, and for the test split at the best epoch, one row
/// per class.
pub fn class_metrics_table(r: &Run) -> Result<RecordBatch> {
    let mut sets: Vec<(u32, &str, &Metrics, Option<&Ranking>)> = r
        .records
        .iter()
        .map(|e| (e.epoch, "validation", &e.val, e.val_ranking.as_ref()))
        .collect();
    if let Some(t) = &r.test {
        sets.push((t.best_epoch, "test", &t.metrics, t.ranking.as_ref()));
    }
    type Row<'a> = (u32, &'a str, usize, &'a ClassMetrics, Option<ClassRanking>);
    let rows: Vec<Row> = sets
        .iter()
        .flat_map(|&(e, s, m, ranking)| {
            let ranked = move |c: usize| ranking.map(|r| r.per_class[c]);
            m.per_class
                .iter()
                .enumerate()
                .map(move |(c, cm)| (e, s, c, cm, ranked(c)))
        })
        .collect();
    let mut columns = run_columns(r, rows.len());
    columns.push((
        "epoch",
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.0))),
    ));
    columns.push(("split", strings(rows.iter().map(|r| r.1))));
    columns.push(("class", strings(rows.iter().map(|r| BEN19[r.2]))));
    columns.push((
        "class_index",
        Arc::new(UInt8Array::from_iter_values(rows.iter().map(|r| r.2 as u8))),
    ));
    columns.push((
        "precision",
        floats(rows.iter().map(|r| Some(r.3.precision))),
    ));
    columns.push(("recall", floats(rows.iter().map(|r| Some(r.3.recall)))));
    columns.push(("f1", floats(rows.iter().map(|r| Some(r.3.f1)))));
    columns.push((
        "support",
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|r| r.3.support),
        )),
    ));
    columns.push(("ap", floats(rows.iter().map(|r| r.4.and_then(|c| c.ap)))));
    columns.push(("auc", floats(rows.iter().map(|r| r.4.and_then(|c| c.auc)))));
    batch(Table::ClassMetrics, columns)
}

pub fn test_metrics_table(r: &Run, t: &TestOutcome) -> Result<RecordBatch> {
    let mut columns = run_columns(r, 1);
    columns.push((
        "best_epoch",
        Arc::new(UInt32Array::from_iter_values([t.best_epoch])),
    ));
    columns.push(("loss_value", floats([Some(t.loss)].into_iter())));
    columns.extend(metric_columns(&[Some((&t.metrics, t.ranking.as_ref()))]));
    let tuned = t.tuned.as_ref().map(|t| &t.metrics);
    let picks: [fn(&Metrics) -> f64; 3] = [|m| m.micro.f1, |m| m.macro_avg.f1, |m| m.samples.f1];
    for (name, pick) in TUNED_COLUMNS.into_iter().zip(picks) {
        columns.push((name, floats([tuned.map(pick)].into_iter())));
    }
    batch(Table::TestMetrics, columns)
}

/// What the `runs` table says of one run besides its folder's own fields.
struct Summary<'a> {
    r: &'a Run,
    status: &'static str,
    host: String,
    revision: String,
    world_size: Option<u32>,
    /// First attempt's start, latest attempt's end (Unix milliseconds).
    started: Option<i64>,
    ended: Option<i64>,
    best_epoch: Option<u32>,
    /// Summed wall time of the ended attempts.
    wall_s: Option<f64>,
}

impl<'a> Summary<'a> {
    fn of(r: &'a Run) -> Summary<'a> {
        let attempts = r.attempts();
        let status = match &r.info {
            Some(i) => i.status.name(),
            None if r.test.is_some() => "finished",
            None => "unknown",
        };
        let ended = attempts
            .iter()
            .filter_map(|a| Some((a.ended_unix_ms? - a.started_unix_ms) as f64));
        Summary {
            r,
            status,
            host: attempts.last().map(|a| a.host.clone()).unwrap_or_default(),
            revision: r
                .info
                .as_ref()
                .map(|i| i.code_revision.clone())
                .unwrap_or_default(),
            world_size: attempts.last().map(|a| a.world_size as u32),
            started: attempts.first().map(|a| a.started_unix_ms),
            ended: attempts.last().and_then(|a| a.ended_unix_ms),
            best_epoch: r.test.as_ref().map(|t| t.best_epoch).or(r.best_epoch()),
            wall_s: (!attempts.is_empty()).then(|| ended.sum::<f64>() / 1e3),
        }
    }
}

pub fn runs_table(runs: &[Run]) -> Result<RecordBatch> {
    let rows: Vec<Summary> = runs.iter().map(Summary::of).collect();
    let text = |f: for<'s> fn(&'s Summary<'s>) -> &'s str| strings(rows.iter().map(f));
    let u32s = |f: fn(&Summary) -> Option<u32>| -> ArrayRef {
        Arc::new(UInt32Array::from_iter(rows.iter().map(f)))
    };
    let time = |f: fn(&Summary) -> Option<i64>| -> ArrayRef {
        Arc::new(TimestampMillisecondArray::from_iter(rows.iter().map(f)).with_timezone("UTC"))
    };
    let columns: Vec<(&'static str, ArrayRef)> = vec![
        ("run_id", text(|s| &s.r.run_id)),
        ("job", text(|s| &s.r.job)),
        ("loss", text(|s| &s.r.loss)),
        ("arch", text(|s| &s.r.arch)),
        (
            "seed",
            Arc::new(UInt64Array::from_iter_values(runs.iter().map(|r| r.seed))),
        ),
        ("loss_params", text(|s| &s.r.loss_params)),
        ("config_hash", text(|s| &s.r.config_hash)),
        ("code_revision", text(|s| &s.revision)),
        ("host", text(|s| &s.host)),
        ("world_size", u32s(|s| s.world_size)),
        ("started", time(|s| s.started)),
        ("ended", time(|s| s.ended)),
        ("status", text(|s| s.status)),
        ("best_epoch", u32s(|s| s.best_epoch)),
        ("epochs_done", u32s(|s| Some(s.r.records.len() as u32))),
        (
            "epochs_planned",
            Arc::new(UInt64Array::from_iter_values(
                runs.iter().map(|r| r.planned_epochs),
            )),
        ),
        ("attempts", u32s(|s| Some(s.r.attempts().len() as u32))),
        ("wall_s", floats(rows.iter().map(|s| s.wall_s))),
        ("folder", text(|s| s.r.dir.to_str().unwrap_or_default())),
        ("data", text(|s| &s.r.data)),
    ];
    batch(Table::Runs, columns)
}

/// A Parquet file written by the trainer, with the run's columns put in front.
pub fn with_run_columns(r: &Run, source: &Path, table: Table) -> Result<Vec<RecordBatch>> {
    let target = table.schema();
    let own = &target.fields()[schema::run_columns().len()..];
    let mut out = Vec::new();
    for b in lossbench_core::tables::read_parquet(source, None)? {
        let mut columns = run_columns(r, b.num_rows());
        for field in own {
            // A column files of earlier versions lack (nullable, added since) reads as nulls.
            let column = match b.column_by_name(field.name()) {
                Some(c) => c.clone(),
                None if field.is_nullable() => {
                    arrow_array::new_null_array(field.data_type(), b.num_rows())
                }
                None => anyhow::bail!(
                    "{}: not a {} file (no column {})",
                    source.display(),
                    table.name(),
                    field.name()
                ),
            };
            columns.push((field.name().as_str(), column));
        }
        out.push(
            schema::batch(&target, columns)
                .with_context(|| format!("{}: not a {} file", source.display(), table.name()))?,
        );
    }
    Ok(out)
}
