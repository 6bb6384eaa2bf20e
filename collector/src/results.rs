//! Columnar result files written by the trainer (Parquet, zstd), read back by the collector and
//! by users with DuckDB / polars / pandas. Schemas are documented in docs/training.md and docs/lrp.md.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow_array::builder::{FixedSizeListBuilder, Float32Builder, UInt8Builder};
use arrow_array::{
    ArrayRef, BooleanArray, Float32Array, RecordBatch, StringArray, UInt8Array, UInt32Array,
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use data_prep::layout::{BAND_COUNT, FULL_SIDE, VALUES_PER_PATCH};

use crate::labels::{BEN19, NUM_CLASSES};

/// `test_predictions.parquet`: one row per test patch, in split order, with columns
/// `patch` (string), `labels` (19 x uint8, the truth), `scores` (19 x float32, the logits) and
/// `decisions` (19 x uint8, the loss's decision rule applied to the scores). `labels`, `logits`
/// and `decisions` are row-major `[names.len(), 19]`.
pub fn write_predictions(
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
    for i in 0..names.len() {
        truth
            .values()
            .append_slice(&labels[i * NUM_CLASSES..(i + 1) * NUM_CLASSES]);
        truth.append(true);
        scores
            .values()
            .append_slice(&logits[i * NUM_CLASSES..(i + 1) * NUM_CLASSES]);
        scores.append(true);
        decided
            .values()
            .append_slice(&decisions[i * NUM_CLASSES..(i + 1) * NUM_CLASSES]);
        decided.append(true);
    }
    let batch = RecordBatch::try_from_iter([
        (
            "patch",
            Arc::new(StringArray::from_iter_values(names.iter())) as ArrayRef,
        ),
        ("labels", Arc::new(truth.finish()) as ArrayRef),
        ("scores", Arc::new(scores.finish()) as ArrayRef),
        ("decisions", Arc::new(decided.finish()) as ArrayRef),
    ])?;
    write_parquet(path, &[batch])
}

/// Writes record batches (one schema) as a zstd Parquet file atomically: under a temporary
/// name, synced, then renamed, so a reader never sees a half-written file.
pub fn write_parquet(path: &Path, batches: &[RecordBatch]) -> Result<()> {
    let schema = batches.first().context("nothing to write")?.schema();
    let tmp = temp_path(path);
    // No dictionary encoding: the bulk of every table is float lists (scores, relevance maps),
    // which dictionaries only inflate (by ~30% for heatmaps); zstd handles repeated strings.
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
        .set_dictionary_enabled(false)
        .build();
    let file = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let written = (|| -> Result<()> {
        let mut writer = ArrowWriter::try_new(file, schema, Some(props))?;
        for batch in batches {
            writer.write(batch)?;
        }
        writer.close()?;
        Ok(())
    })();
    written.with_context(|| format!("writing {}", tmp.display()))?;
    commit(&tmp, path)
}

/// Writes `bytes` to `path` atomically: under a temporary name, synced, then renamed, so the
/// file is whole or absent even after a crash, and readers never see half of it.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    commit(&tmp, path)
}

/// `<path>.tmp`, beside the file it becomes.
fn temp_path(path: &Path) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    name.into()
}

fn commit(tmp: &Path, path: &Path) -> Result<()> {
    fs::File::open(tmp)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", tmp.display()))?;
    fs::rename(tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// Every `*.parquet` file of a table folder (`results/<table>/`), in name order; only the named
/// top-level columns when `columns` is given. A missing folder is an empty table.
pub fn read_table(dir: &Path, columns: Option<&[&str]>) -> Result<Vec<RecordBatch>> {
    let mut out = Vec::new();
    for path in table_files(dir)? {
        out.extend(read_parquet(&path, columns)?);
    }
    Ok(out)
}

/// The `*.parquet` files of a table folder, in name order (none for a missing folder).
pub fn table_files(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut files: Vec<std::path::PathBuf> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    files.sort();
    Ok(files)
}

/// One Parquet file's record batches; only the named top-level columns when `columns` is given.
/// A damaged file is an error naming it, whatever the decoder makes of it
/// ([`data_prep::untrusted`]).
pub fn read_parquet(path: &Path, columns: Option<&[&str]>) -> Result<Vec<RecordBatch>> {
    let file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    data_prep::untrusted::contain_panics(path, || {
        let mut builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .with_context(|| format!("reading {}", path.display()))?;
        if let Some(names) = columns {
            let roots: Vec<usize> = builder
                .schema()
                .fields()
                .iter()
                .enumerate()
                .filter(|(_, f)| names.contains(&f.name().as_str()))
                .map(|(i, _)| i)
                .collect();
            let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
            builder = builder.with_projection(mask);
        }
        builder
            .build()
            .with_context(|| format!("reading {}", path.display()))?
            .map(|b| b.with_context(|| format!("reading {}", path.display())))
            .collect()
    })
}

/// Values per combined heatmap (120 x 120) and per full set of band maps (every band at its
/// native resolution).
pub const MAP_VALUES: usize = FULL_SIDE * FULL_SIDE;
pub const BAND_MAP_VALUES: usize = VALUES_PER_PATCH;
/// Per-band totals, in store order: b10m, b20m, b60m.
pub const BANDS: usize = BAND_COUNT;

/// One explained (patch, class).
pub struct HeatmapRow {
    pub epoch: u32,
    pub patch: String,
    pub class_index: u8,
    /// The patch carries the class / the model predicted it.
    pub is_true: bool,
    pub is_predicted: bool,
    pub logit: f32,
    /// Combined 120x120 map, row-major.
    pub map: Vec<f32>,
    pub band_totals: Vec<f32>,
    /// The per-band maps at native resolution, flattened b10m, b20m, b60m (`trainer explain` only).
    pub bands: Option<Vec<f32>>,
}

fn float_lists(
    rows: &[HeatmapRow],
    width: usize,
    values: impl Fn(&HeatmapRow) -> &[f32],
) -> ArrayRef {
    let mut b = FixedSizeListBuilder::with_capacity(
        Float32Builder::with_capacity(rows.len() * width),
        width as i32,
        rows.len(),
    );
    for r in rows {
        b.values().append_slice(values(r));
        b.append(true);
    }
    Arc::new(b.finish())
}

/// Heatmaps as Parquet (docs/lrp.md): `epoch`, `patch`, `class`, `class_index`, `is_true`,
/// `is_predicted`, `logit`, `map` (14,400 x float32), `band_totals` (12 x float32), and
/// `bands` (80,000 x float32) when every row has them.
pub fn write_heatmaps(path: &Path, rows: &[HeatmapRow]) -> Result<()> {
    let mut columns: Vec<(&str, ArrayRef)> = vec![
        (
            "epoch",
            Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.epoch))),
        ),
        (
            "patch",
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.patch.as_str()),
            )),
        ),
        (
            "class",
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| BEN19[r.class_index as usize]),
            )),
        ),
        (
            "class_index",
            Arc::new(UInt8Array::from_iter_values(
                rows.iter().map(|r| r.class_index),
            )),
        ),
        (
            "is_true",
            Arc::new(BooleanArray::from_iter(
                rows.iter().map(|r| Some(r.is_true)),
            )),
        ),
        (
            "is_predicted",
            Arc::new(BooleanArray::from_iter(
                rows.iter().map(|r| Some(r.is_predicted)),
            )),
        ),
        (
            "logit",
            Arc::new(Float32Array::from_iter_values(rows.iter().map(|r| r.logit))),
        ),
        ("map", float_lists(rows, MAP_VALUES, |r| &r.map)),
        ("band_totals", float_lists(rows, BANDS, |r| &r.band_totals)),
    ];
    if rows.iter().all(|r| r.bands.is_some()) {
        columns.push((
            "bands",
            float_lists(rows, BAND_MAP_VALUES, |r| {
                r.bands.as_deref().unwrap_or_default()
            }),
        ));
    }
    write_parquet(path, &[RecordBatch::try_from_iter(columns)?])
}
