//! Finding the patches of a BigEarthNet archive and reading their metadata, for both on-disk
//! formats: v1.0 (one folder per patch with a `_labels_metadata.json`) and v2.0 (tile folders
//! plus one `metadata.parquet`).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use arrow_array::{Array, BooleanArray, LargeStringArray, ListArray, RecordBatch, StringArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rayon::prelude::*;
use serde::Deserialize;

use lossbench_core::labels::{self, LabelVector};
use lossbench_core::layout::Split;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ArchiveFormat {
    V1,
    V2,
}

impl std::fmt::Display for ArchiveFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ArchiveFormat::V1 => "BigEarthNet-S2 v1.0",
            ArchiveFormat::V2 => "BigEarthNet v2.0",
        })
    }
}

/// One patch as its metadata describes it; its pixels are read later.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchRecord {
    pub name: String,
    /// Folder holding `<name>_<band>.tif`.
    pub dir: PathBuf,
    pub labels: LabelVector,
    /// From v2.0's metadata; v1.0 uses the official CSV lists instead.
    pub snow: bool,
    pub cloud: bool,
    /// From v2.0's `split` column.
    pub split: Option<Split>,
}

impl PatchRecord {
    pub fn band_path(&self, band: &str) -> PathBuf {
        self.dir.join(format!("{}_{band}.tif", self.name))
    }
}

/// A patch that cannot be used, with the file at fault and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub patch: String,
    pub file: PathBuf,
    pub reason: String,
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "patch {}: {}: {}",
            self.patch,
            self.file.display(),
            self.reason
        )
    }
}

#[derive(Debug)]
pub struct Archive {
    pub format: ArchiveFormat,
    /// The folder that holds the patch folders (v1.0) or `metadata.parquet` (v2.0).
    pub root: PathBuf,
    pub patches: Vec<PatchRecord>,
    /// Patches whose metadata is unusable.
    pub rejects: Vec<Reject>,
    /// Whether the metadata carried snow / cloud flags (v2.0 does; the torchgeo fixture does not).
    pub has_exclusion_flags: bool,
}

/// The folder of v1.0 patches in the official archive.
pub const V1_FOLDER: &str = "BigEarthNet-v1.0";

/// Decides the format of `path`: v2.0 if a `metadata.parquet` is there, else v1.0. For v1.0 the
/// patch folders may sit in `path` itself or in its `BigEarthNet-v1.0` subfolder.
pub fn detect(path: &Path) -> Result<(ArchiveFormat, PathBuf)> {
    if !path.is_dir() {
        bail!(
            "archive folder {} does not exist or is not a folder",
            path.display()
        );
    }
    if path.join(V2_METADATA).is_file() {
        return Ok((ArchiveFormat::V2, path.to_path_buf()));
    }
    let nested = path.join(V1_FOLDER);
    if nested.is_dir() {
        return Ok((ArchiveFormat::V1, nested));
    }
    Ok((ArchiveFormat::V1, path.to_path_buf()))
}

pub fn open(path: &Path, format: Option<ArchiveFormat>) -> Result<Archive> {
    let (detected, root) = detect(path)?;
    match format.unwrap_or(detected) {
        ArchiveFormat::V1 => open_v1(&root),
        ArchiveFormat::V2 => open_v2(path),
    }
}

#[derive(Deserialize)]
struct V1Metadata {
    labels: Vec<String>,
}

/// The name of a v1.0 patch's metadata file.
pub fn v1_metadata_file(patch: &str) -> String {
    format!("{patch}_labels_metadata.json")
}

/// The 19-class labels of a v1.0 `_labels_metadata.json`; the error is the reason to reject it.
pub fn v1_labels(json: &[u8]) -> Result<LabelVector, String> {
    let meta: V1Metadata =
        serde_json::from_slice(json).map_err(|e| format!("malformed JSON: {e}"))?;
    labels::from_corine_names(meta.labels.iter().map(String::as_str))
        .map_err(|bad| format!("unknown label {bad:?} (not one of the 43 CORINE classes)"))
}

fn open_v1(root: &Path) -> Result<Archive> {
    let mut dirs: Vec<(String, PathBuf)> = Vec::new();
    for entry in
        fs::read_dir(root).with_context(|| format!("listing archive folder {}", root.display()))?
    {
        let entry = entry.with_context(|| format!("listing archive folder {}", root.display()))?;
        if entry.file_type()?.is_dir() {
            let name = entry.file_name().to_string_lossy().into_owned();
            dirs.push((name, entry.path()));
        }
    }
    if dirs.is_empty() {
        bail!(
            "no patch folders in {}: expected BigEarthNet-S2 v1.0 (<patch>/<patch>_B02.tif ...) \
             or v2.0 (metadata.parquet + BigEarthNet-S2/)",
            root.display()
        );
    }
    dirs.sort();
    let results: Vec<Result<PatchRecord, Reject>> = dirs
        .into_par_iter()
        .map(|(name, dir)| {
            let file = dir.join(v1_metadata_file(&name));
            let reject = |reason: String| Reject {
                patch: name.clone(),
                file: file.clone(),
                reason,
            };
            let text = match fs::read(&file) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(reject("missing labels metadata file".into()));
                }
                Err(e) => return Err(reject(format!("cannot read: {e}"))),
            };
            let labels = v1_labels(&text).map_err(reject)?;
            Ok(PatchRecord {
                name: name.clone(),
                dir,
                labels,
                snow: false,
                cloud: false,
                split: None,
            })
        })
        .collect();
    let (patches, rejects) = partition(results);
    Ok(Archive {
        format: ArchiveFormat::V1,
        root: root.to_path_buf(),
        patches,
        rejects,
        has_exclusion_flags: false,
    })
}

fn partition(results: Vec<Result<PatchRecord, Reject>>) -> (Vec<PatchRecord>, Vec<Reject>) {
    let mut patches = Vec::with_capacity(results.len());
    let mut rejects = Vec::new();
    for r in results {
        match r {
            Ok(p) => patches.push(p),
            Err(r) => rejects.push(r),
        }
    }
    (patches, rejects)
}

/// The tile folder of a v2.0 patch: its id without the last two `_` fields.
pub fn v2_tile_of(patch_id: &str) -> Option<&str> {
    let mut cut = patch_id.rsplitn(3, '_');
    let _v = cut.next()?;
    let _h = cut.next()?;
    cut.next()
}

fn open_v2(root: &Path) -> Result<Archive> {
    let s2 = root.join(V2_FOLDER);
    if !s2.is_dir() {
        bail!(
            "{} has metadata.parquet but no {V2_FOLDER} folder",
            root.display()
        );
    }
    let metadata = read_v2_metadata(&root.join(V2_METADATA), &s2)?;
    Ok(Archive {
        format: ArchiveFormat::V2,
        root: root.to_path_buf(),
        patches: metadata.patches,
        rejects: metadata.rejects,
        has_exclusion_flags: metadata.has_exclusion_flags,
    })
}

/// The folder of v2.0 patches and the metadata file beside it.
pub const V2_FOLDER: &str = "BigEarthNet-S2";
pub const V2_METADATA: &str = "metadata.parquet";

/// What v2.0's `metadata.parquet` says: the patches (sorted by name; their folders under `s2`),
/// rows it cannot use, and whether it carries the snow / cloud flags.
pub struct V2Metadata {
    pub patches: Vec<PatchRecord>,
    pub rejects: Vec<Reject>,
    pub has_exclusion_flags: bool,
}

pub fn read_v2_metadata(meta_path: &Path, s2: &Path) -> Result<V2Metadata> {
    let file =
        fs::File::open(meta_path).with_context(|| format!("opening {}", meta_path.display()))?;
    lossbench_core::untrusted::contain_panics(meta_path, || {
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .with_context(|| format!("{}: not a readable parquet file", meta_path.display()))?
            .build()
            .with_context(|| format!("reading {}", meta_path.display()))?;
        let mut results = Vec::new();
        let mut has_flags = true;
        for batch in reader {
            let batch = batch.with_context(|| format!("reading {}", meta_path.display()))?;
            let cols = V2Columns::from_batch(&batch)
                .with_context(|| format!("{}", meta_path.display()))?;
            has_flags &= cols.snow.is_some() && cols.cloud.is_some();
            for row in 0..batch.num_rows() {
                results.push(cols.record(row, s2, meta_path));
            }
        }
        let (mut patches, rejects) = partition(results);
        patches.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(w) = patches.windows(2).find(|w| w[0].name == w[1].name) {
            bail!(
                "{}: patch {} appears more than once",
                meta_path.display(),
                w[0].name
            );
        }
        Ok(V2Metadata {
            patches,
            rejects,
            has_exclusion_flags: has_flags,
        })
    })
}

struct V2Columns<'a> {
    id: StrColumn<'a>,
    labels: &'a ListArray,
    split: StrColumn<'a>,
    snow: Option<&'a BooleanArray>,
    cloud: Option<&'a BooleanArray>,
}

enum StrColumn<'a> {
    Small(&'a StringArray),
    Large(&'a LargeStringArray),
}

impl StrColumn<'_> {
    fn get(&self, row: usize) -> Option<&str> {
        match self {
            StrColumn::Small(a) => (!a.is_null(row)).then(|| a.value(row)),
            StrColumn::Large(a) => (!a.is_null(row)).then(|| a.value(row)),
        }
    }
}

fn str_column<'a>(batch: &'a RecordBatch, name: &str) -> Result<StrColumn<'a>> {
    let col = batch
        .column_by_name(name)
        .with_context(|| format!("missing column `{name}`"))?;
    if let Some(a) = col.as_any().downcast_ref::<StringArray>() {
        return Ok(StrColumn::Small(a));
    }
    if let Some(a) = col.as_any().downcast_ref::<LargeStringArray>() {
        return Ok(StrColumn::Large(a));
    }
    bail!(
        "column `{name}` is {}, expected a string column",
        col.data_type()
    )
}

fn bool_column<'a>(batch: &'a RecordBatch, name: &str) -> Result<Option<&'a BooleanArray>> {
    match batch.column_by_name(name) {
        None => Ok(None),
        Some(col) => col
            .as_any()
            .downcast_ref::<BooleanArray>()
            .map(Some)
            .with_context(|| format!("column `{name}` is {}, expected bool", col.data_type())),
    }
}

impl<'a> V2Columns<'a> {
    fn from_batch(batch: &'a RecordBatch) -> Result<Self> {
        let labels_col = batch
            .column_by_name("labels")
            .context("missing column `labels`")?;
        let labels = labels_col
            .as_any()
            .downcast_ref::<ListArray>()
            .with_context(|| {
                format!(
                    "column `labels` is {}, expected list<string>",
                    labels_col.data_type()
                )
            })?;
        Ok(V2Columns {
            id: str_column(batch, "patch_id")?,
            labels,
            split: str_column(batch, "split")?,
            snow: bool_column(batch, "contains_seasonal_snow")?,
            cloud: bool_column(batch, "contains_cloud_or_shadow")?,
        })
    }

    fn record(&self, row: usize, s2: &Path, meta_path: &Path) -> Result<PatchRecord, Reject> {
        let name = self.id.get(row).unwrap_or_default().to_string();
        let reject = |reason: String| Reject {
            patch: name.clone(),
            file: meta_path.to_path_buf(),
            reason,
        };
        if name.is_empty() {
            return Err(reject(format!("row {row}: empty patch_id")));
        }
        let tile = v2_tile_of(&name)
            .ok_or_else(|| reject("patch_id has no <tile>_<h>_<v> form".into()))?;
        let dir = s2.join(tile).join(&name);
        let list = self.labels.value(row);
        let names = list
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| reject("labels are not strings".into()))?;
        let labels = labels::from_ben19_names(names.iter().flatten())
            .map_err(|bad| reject(format!("unknown label {bad:?} (not one of the 19 classes)")))?;
        let split_name = self.split.get(row).unwrap_or_default();
        let split = Split::parse(split_name).ok_or_else(|| {
            reject(format!(
                "unknown split {split_name:?} (expected train, validation or test)"
            ))
        })?;
        let flag =
            |col: Option<&BooleanArray>| col.is_some_and(|c| !c.is_null(row) && c.value(row));
        Ok(PatchRecord {
            name,
            dir,
            labels,
            snow: flag(self.snow),
            cloud: flag(self.cloud),
            split: Some(split),
        })
    }
}

/// Reads a one-name-per-line list (official snow / cloud / split CSVs): no header, LF or CRLF,
/// and the two-column `s2_name,s1_name` form, of which the first column is the patch.
pub fn read_name_list(path: &Path) -> Result<Vec<String>> {
    let text =
        fs::read_to_string(path).with_context(|| format!("reading list {}", path.display()))?;
    let mut names = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r').trim();
        if line.is_empty() {
            continue;
        }
        let name = line.split(',').next().unwrap_or_default().trim();
        if name.is_empty() || name.contains(char::is_whitespace) {
            bail!("{}:{}: not a patch name: {line:?}", path.display(), i + 1);
        }
        names.push(name.to_string());
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_tile_is_the_id_without_its_grid_position() {
        assert_eq!(
            v2_tile_of("S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_75_43"),
            Some("S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP")
        );
        assert_eq!(v2_tile_of("nounderscore"), None);
    }

    #[test]
    fn name_lists_accept_crlf_and_two_columns() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.csv");
        fs::write(&p, "A_1_2\r\nB_3_4,S1_x\r\n\r\n").unwrap();
        assert_eq!(read_name_list(&p).unwrap(), vec!["A_1_2", "B_3_4"]);
        fs::write(&p, "A_1_2\nhas space\n").unwrap();
        let err = read_name_list(&p).unwrap_err().to_string();
        assert!(err.contains("l.csv:2"), "{err}");
    }
}
