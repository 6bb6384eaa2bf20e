//! The Arrow schema of every Parquet file lossbench writes, defined once: the files a trainer
//! writes into a run folder (test predictions, LRP snapshots and heatmaps, landscape blocks)
//! and the collector's tables (docs/results.md). Every writer builds its record batches with
//! [`batch`] against these schemas, so every file of one table has the same schema, column
//! types and nullability included, and DuckDB, polars or pyarrow read a table folder as one.

use std::sync::Arc;

use anyhow::{Result, bail};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::labels::NUM_CLASSES;
use crate::layout::{BAND_COUNT, FULL_SIDE, VALUES_PER_PATCH};

/// Values of a combined relevance map (120 x 120, row-major).
pub const MAP_VALUES: usize = FULL_SIDE * FULL_SIDE;

fn field(name: &str, data_type: DataType, nullable: bool) -> Field {
    Field::new(name, data_type, nullable)
}

/// A fixed-size list of `n` values, as arrow's builders make it (items named `item`, nullable).
fn list(item: DataType, n: usize) -> DataType {
    DataType::FixedSizeList(Arc::new(Field::new("item", item, true)), n as i32)
}

fn utf8(name: &str) -> Field {
    field(name, DataType::Utf8, false)
}

fn f64_null(name: &str) -> Field {
    field(name, DataType::Float64, true)
}

/// `test_predictions.parquet` in a run folder, one row per test patch in store order.
pub fn predictions() -> Vec<Field> {
    vec![
        utf8("patch"),
        field("labels", list(DataType::UInt8, NUM_CLASSES), false),
        field("scores", list(DataType::Float32, NUM_CLASSES), false),
        field("decisions", list(DataType::UInt8, NUM_CLASSES), false),
    ]
}

/// `lrp/epoch-NNNN.parquet` in a run folder: one row per probe patch and explained class.
pub fn lrp_snapshot() -> Vec<Field> {
    vec![
        field("epoch", DataType::UInt32, false),
        utf8("patch"),
        utf8("class"),
        field("class_index", DataType::UInt8, false),
        field("is_true", DataType::Boolean, false),
        field("is_predicted", DataType::Boolean, false),
        field("logit", DataType::Float32, false),
        field("map", list(DataType::Float32, MAP_VALUES), false),
        field("band_totals", list(DataType::Float32, BAND_COUNT), false),
    ]
}

/// `heatmaps.parquet` of `trainer explain`: a snapshot's columns and every band's map at its
/// native resolution (`bands`).
pub fn explained() -> Vec<Field> {
    let mut fields = lrp_snapshot();
    fields.push(field(
        "bands",
        list(DataType::Float32, VALUES_PER_PATCH),
        false,
    ));
    fields
}

/// `landscape/<name>/blocks/*.parquet` in a run folder: one row per grid point and quantity.
pub fn landscape_block() -> Vec<Field> {
    vec![
        utf8("name"),
        utf8("kind"),
        field("checkpoint", DataType::UInt32, true),
        utf8("other"),
        field("direction_seed", DataType::UInt64, false),
        field("point", DataType::UInt32, false),
        f64_null("alpha"),
        f64_null("beta"),
        // The layer or block of a per-layer spectrum value (null elsewhere).
        field("unit", DataType::Utf8, true),
        utf8("quantity"),
        f64_null("value"),
    ]
}

/// The columns every merged table starts with.
pub fn run_columns() -> Vec<Field> {
    vec![
        utf8("run_id"),
        utf8("job"),
        utf8("loss"),
        utf8("arch"),
        field("seed", DataType::UInt64, false),
    ]
}

/// The metric columns of `epochs` and `test_metrics` (null where a row has no metrics).
pub fn metric_columns() -> Vec<Field> {
    let mut fields = Vec::new();
    for avg in ["micro", "macro", "weighted", "samples"] {
        for m in ["precision", "recall", "f1"] {
            fields.push(f64_null(&format!("{avg}_{m}")));
        }
    }
    fields.push(f64_null("hamming_loss"));
    fields.push(f64_null("subset_accuracy"));
    fields.push(field("patches", DataType::UInt64, true));
    fields.extend(RANKING_COLUMNS.map(f64_null));
    fields
}

/// The ranking metrics' columns ([`crate::ranking`]), null where a row has none.
pub const RANKING_COLUMNS: [&str; 7] = [
    "map_macro",
    "map_micro",
    "auc_macro",
    "one_error",
    "coverage",
    "ranking_loss",
    "lrap",
];

/// The collector's tables, in the order `collector merge` writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Runs,
    Epochs,
    ClassMetrics,
    TestMetrics,
    Predictions,
    Lrp,
    Landscape,
    TestSummary,
    Trials,
}

impl Table {
    pub const ALL: [Table; 9] = [
        Table::Runs,
        Table::Epochs,
        Table::ClassMetrics,
        Table::TestMetrics,
        Table::Predictions,
        Table::Lrp,
        Table::Landscape,
        Table::TestSummary,
        Table::Trials,
    ];

    /// The table's folder name under a results folder.
    pub fn name(self) -> &'static str {
        match self {
            Table::Runs => "runs",
            Table::Epochs => "epochs",
            Table::ClassMetrics => "class_metrics",
            Table::TestMetrics => "test_metrics",
            Table::Predictions => "predictions",
            Table::Lrp => "lrp",
            Table::Landscape => "landscape",
            Table::TestSummary => "test_summary",
            Table::Trials => "trials",
        }
    }

    /// The table's schema.
    pub fn schema(self) -> SchemaRef {
        let mut fields = match self {
            // One row per run, or per setup (runs of one config but their seeds).
            Table::Runs | Table::TestSummary | Table::Trials => Vec::new(),
            _ => run_columns(),
        };
        fields.extend(match self {
            Table::Runs => runs(),
            Table::Epochs => epochs(),
            Table::ClassMetrics => class_metrics(),
            Table::TestMetrics => test_metrics(),
            Table::Predictions => predictions(),
            Table::Lrp => lrp_snapshot(),
            Table::Landscape => landscape_block(),
            Table::TestSummary => test_summary(),
            Table::Trials => trials(),
        });
        Arc::new(Schema::new(fields))
    }
}

fn runs() -> Vec<Field> {
    let ms = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    let mut fields = run_columns();
    fields.extend([
        utf8("loss_params"),
        utf8("config_hash"),
        utf8("code_revision"),
        utf8("host"),
        field("world_size", DataType::UInt32, true),
        field("started", ms.clone(), true),
        field("ended", ms, true),
        utf8("status"),
        field("best_epoch", DataType::UInt32, true),
        field("epochs_done", DataType::UInt32, false),
        field("epochs_planned", DataType::UInt64, false),
        field("attempts", DataType::UInt32, false),
        f64_null("wall_s"),
        utf8("folder"),
        utf8("data"),
    ]);
    fields
}

/// Tuning trials (docs/tuning.md): one row per rung a trial reached (one with null rung,
/// epoch and value for a trial that reached none yet).
fn trials() -> Vec<Field> {
    let mut fields = run_columns();
    fields.extend([
        field("trial", DataType::UInt32, false),
        utf8("params"),
        utf8("status"),
        field("rung", DataType::UInt32, true),
        field("epoch", DataType::UInt32, true),
        utf8("metric"),
        f64_null("value"),
        field("pruned_at", DataType::UInt32, true),
        field("best", DataType::Boolean, false),
        field("worker", DataType::Utf8, true),
        field("host", DataType::Utf8, true),
        field("slurm_job", DataType::Utf8, true),
        field("seconds", DataType::Float64, false),
        field("reason", DataType::Utf8, true),
    ]);
    fields
}

fn test_summary() -> Vec<Field> {
    let mut fields: Vec<Field> = ["job", "loss", "arch", "config_hash", "metric"]
        .map(utf8)
        .into();
    fields.push(field("runs", DataType::UInt32, false));
    fields.push(field("mean", DataType::Float64, false));
    fields.push(field("std", DataType::Float64, false));
    fields.extend(["ci95_low", "ci95_high"].map(f64_null));
    fields
}

fn epochs() -> Vec<Field> {
    let mut fields = vec![
        field("epoch", DataType::UInt32, false),
        utf8("split"),
        f64_null("loss_value"),
    ];
    fields.extend(metric_columns());
    for name in [
        "lr",
        "images_per_s",
        "epoch_wall_s",
        "compute_s",
        "allreduce_s",
        "data_wait_s",
    ] {
        fields.push(f64_null(name));
    }
    fields
}

fn class_metrics() -> Vec<Field> {
    vec![
        field("epoch", DataType::UInt32, false),
        utf8("split"),
        utf8("class"),
        field("class_index", DataType::UInt8, false),
        f64_null("precision"),
        f64_null("recall"),
        f64_null("f1"),
        field("support", DataType::UInt64, false),
        f64_null("ap"),
        f64_null("auc"),
    ]
}

fn test_metrics() -> Vec<Field> {
    let mut fields = vec![
        field("best_epoch", DataType::UInt32, false),
        f64_null("loss_value"),
    ];
    fields.extend(metric_columns());
    fields.extend(TUNED_COLUMNS.map(f64_null));
    fields
}

/// The test metrics with per-class thresholds tuned on validation ([`crate::thresholds`]).
pub const TUNED_COLUMNS: [&str; 3] = ["tuned_micro_f1", "tuned_macro_f1", "tuned_samples_f1"];

/// A record batch of `schema` from named columns, which must be the schema's fields in order
/// with their types; an error names the column that differs.
pub fn batch(schema: &SchemaRef, columns: Vec<(&str, ArrayRef)>) -> Result<RecordBatch> {
    let fields = schema.fields();
    if columns.len() != fields.len() {
        let names: Vec<&str> = columns.iter().map(|(n, _)| *n).collect();
        bail!(
            "{} columns {names:?} for a schema of {}",
            columns.len(),
            fields.len()
        );
    }
    for ((name, array), f) in columns.iter().zip(fields.iter()) {
        if *name != f.name() || array.data_type() != f.data_type() {
            bail!(
                "column {name} ({}) where the schema has {} ({})",
                array.data_type(),
                f.name(),
                f.data_type()
            );
        }
    }
    let arrays = columns.into_iter().map(|(_, a)| a).collect();
    Ok(RecordBatch::try_new(schema.clone(), arrays)?)
}

/// A schema from fields.
pub fn of(fields: Vec<Field>) -> SchemaRef {
    Arc::new(Schema::new(fields))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Float64Array, StringArray};

    #[test]
    fn batches_follow_the_schema_whatever_the_nulls() {
        let schema = of(vec![utf8("a"), f64_null("b")]);
        let all_null: ArrayRef = Arc::new(Float64Array::from(vec![None, None]));
        let none_null: ArrayRef = Arc::new(Float64Array::from(vec![1.0, 2.0]));
        let a: ArrayRef = Arc::new(StringArray::from(vec!["x", "y"]));
        let one = batch(&schema, vec![("a", a.clone()), ("b", all_null)]).unwrap();
        let two = batch(&schema, vec![("a", a.clone()), ("b", none_null)]).unwrap();
        assert_eq!(one.schema(), two.schema());
        let e = batch(&schema, vec![("a", a.clone()), ("c", a.clone())]).unwrap_err();
        assert!(
            e.to_string()
                .contains("column c (Utf8) where the schema has b"),
            "{e}"
        );
        let nulls: ArrayRef = Arc::new(StringArray::from(vec![None, Some("y")]));
        let e = batch(&schema, vec![("a", nulls), ("b", a)]);
        assert!(e.is_err());
    }

    #[test]
    fn every_table_of_runs_starts_with_the_run_columns() {
        for t in Table::ALL.into_iter().filter(|t| *t != Table::TestSummary) {
            let names: Vec<String> = t
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect();
            assert_eq!(
                &names[..5],
                ["run_id", "job", "loss", "arch", "seed"],
                "{t:?}"
            );
            let unique: std::collections::BTreeSet<&String> = names.iter().collect();
            assert_eq!(unique.len(), names.len(), "{t:?} repeats a column");
        }
    }
}
