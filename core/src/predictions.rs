//! `test_predictions.parquet` in a run folder: one row per test patch, in split order, with its
//! name, true labels, scores (the logits) and decisions (the loss's decision rule applied to
//! the scores); enough to recompute every test metric (schema: [`crate::schema::predictions`]).

use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use arrow_array::builder::{FixedSizeListBuilder, Float32Builder, UInt8Builder};
use arrow_array::{ArrayRef, StringArray};

use crate::labels::NUM_CLASSES;
use crate::schema;

/// The file's name in a run folder.
pub const FILE: &str = "test_predictions.parquet";

/// Writes the predictions of `names.len()` patches; `labels`, `logits` and `decisions` are
/// row-major `[names.len(), 19]`.
pub fn write(
    path: &Path,
    names: &[String],
    labels: &[u8],
    logits: &[f32],
    decisions: &[u8],
) -> Result<()> {
    let n = NUM_CLASSES as i32;
    let mut truth = FixedSizeListBuilder::new(UInt8Builder::new(), n);
    let mut scores = FixedSizeListBuilder::new(Float32Builder::new(), n);
    let mut decided = FixedSizeListBuilder::new(UInt8Builder::new(), n);
    for row in 0..names.len() {
        let r = row * NUM_CLASSES..(row + 1) * NUM_CLASSES;
        truth.values().append_slice(&labels[r.clone()]);
        truth.append(true);
        scores.values().append_slice(&logits[r.clone()]);
        scores.append(true);
        decided.values().append_slice(&decisions[r]);
        decided.append(true);
    }
    let schema = schema::of(schema::predictions());
    let batch = schema::batch(
        &schema,
        vec![
            (
                "patch",
                Arc::new(StringArray::from_iter_values(names)) as ArrayRef,
            ),
            ("labels", Arc::new(truth.finish())),
            ("scores", Arc::new(scores.finish())),
            ("decisions", Arc::new(decided.finish())),
        ],
    )?;
    crate::tables::write_parquet(path, &schema, &[batch])
}
