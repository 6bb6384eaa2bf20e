//! Parquet files (zstd), written atomically and read back by the collector and by users with
//! DuckDB / polars / pandas. Their schemas are in [`crate::schema`].

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::files::{commit, temp_path};

/// Writes record batches of `schema` as a zstd Parquet file atomically (under a temporary
/// name, synced, then renamed, so a reader never sees a half-written file). No batches write
/// a file of zero rows that still carries the schema.
pub fn write_parquet(path: &Path, schema: &SchemaRef, batches: &[RecordBatch]) -> Result<()> {
    let tmp = temp_path(path);
    // No dictionary encoding: the bulk of every table is float lists (scores, relevance maps),
    // which dictionaries only inflate (by ~30% for heatmaps); zstd handles repeated strings.
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
        .set_dictionary_enabled(false)
        .build();
    let file = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let written = (|| -> Result<()> {
        let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(props))?;
        for batch in batches {
            writer.write(batch)?;
        }
        writer.close()?;
        Ok(())
    })();
    let written = written.with_context(|| format!("writing {}", tmp.display()));
    written.and_then(|()| commit(&tmp, path)).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
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
pub fn table_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = match fs::read_dir(dir) {
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
/// ([`crate::untrusted`]).
pub fn read_parquet(path: &Path, columns: Option<&[&str]>) -> Result<Vec<RecordBatch>> {
    let file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    crate::untrusted::contain_panics(path, || {
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
