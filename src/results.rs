//! Columnar result files written by the trainer (Parquet, zstd), read back by the collector and
//! by users with DuckDB / polars / pandas. Schemas are documented in docs/training.md.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow_array::builder::{FixedSizeListBuilder, Float32Builder, UInt8Builder};
use arrow_array::{ArrayRef, RecordBatch, StringArray};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::labels::NUM_CLASSES;
use crate::store::SplitData;

/// `test_predictions.parquet`: one row per test patch, in split order, with columns
/// `patch` (string), `labels` (19 x uint8, the truth), `scores` (19 x float32, the logits) and
/// `decisions` (19 x uint8, the loss's decision rule applied to the scores).
pub fn write_predictions(path: &Path, split: &SplitData, logits: &[f32], decisions: &[u8]) -> Result<()> {
    let n = NUM_CLASSES as i32;
    let mut labels = FixedSizeListBuilder::new(UInt8Builder::new(), n);
    let mut scores = FixedSizeListBuilder::new(Float32Builder::new(), n);
    let mut decided = FixedSizeListBuilder::new(UInt8Builder::new(), n);
    for i in 0..split.len {
        labels.values().append_slice(split.labels_of(i));
        labels.append(true);
        scores.values().append_slice(&logits[i * NUM_CLASSES..(i + 1) * NUM_CLASSES]);
        scores.append(true);
        decided.values().append_slice(&decisions[i * NUM_CLASSES..(i + 1) * NUM_CLASSES]);
        decided.append(true);
    }
    let batch = RecordBatch::try_from_iter([
        ("patch", Arc::new(StringArray::from_iter_values(split.names.iter())) as ArrayRef),
        ("labels", Arc::new(labels.finish()) as ArrayRef),
        ("scores", Arc::new(scores.finish()) as ArrayRef),
        ("decisions", Arc::new(decided.finish()) as ArrayRef),
    ])?;
    let tmp = path.with_extension("parquet.tmp");
    let props = WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?)).build();
    let file = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(props))?;
    writer.write(&batch)?;
    writer.close()?;
    fs::File::open(&tmp)?.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("renaming {}", tmp.display()))?;
    Ok(())
}
