//! `collector merge`: every run folder's records, test results, LRP snapshots and landscapes
//! become Parquet tables under `results/<table>/*.parquet` (docs/results.md), read with
//! DuckDB, polars or pandas as one table per folder.
//!
//! - Incremental: each output file is derived from a few input files, and `_manifest.json`
//!   keeps the inputs' sizes and modification times; a file whose inputs did not change is not
//!   rewritten (unless the tables' schemas changed since, which rewrites them all).
//! - Safe beside other merges: a merge holds `results/.lock` exclusively (a second one waits,
//!   saying so), `collector report` shared; every file is written under a temporary name of its
//!   own and renamed, so readers never see a half-written one and a merge killed at any moment
//!   leaves the previous tables readable.
//! - Every table has a file of its schema and no rows (`_schema.parquet`), so queries of a
//!   table with no rows yet return no rows instead of failing.
//!
//! Runs still training contribute up to their last complete epoch; a torn or invalid record
//! line is skipped with a warning naming the file and line.

mod discover;
pub(crate) mod folder;
mod rows;
mod summary;
mod trials;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use arrow_array::RecordBatch;
use serde::{Deserialize, Serialize};

use lossbench_core::lock::{Lock, Mode};
use lossbench_core::records;
use lossbench_core::run_folder;
use lossbench_core::run_info;
use lossbench_core::schema::Table;
use lossbench_core::tables::write_parquet;
use lossbench_core::trial;

pub use discover::discover;

const MANIFEST: &str = "_manifest.json";
/// A table's file of no rows, holding its schema.
pub const SCHEMA_FILE: &str = "_schema.parquet";
/// The lock of a results folder.
pub const LOCK_FILE: &str = ".lock";

/// What a merge did.
#[derive(Debug, Default)]
pub struct Summary {
    pub runs: usize,
    pub written: usize,
    pub unchanged: usize,
    /// Record lines skipped as torn or invalid.
    pub skipped_lines: usize,
    /// Files of runs whose folders are gone, removed.
    pub removed: usize,
}

/// Removes an output file; one already gone is fine.
fn remove_output(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// Locks a results folder: `merge` exclusively, readers shared; waits (saying so) for a
/// holder of the other kind. A lock that cannot be created (a read-only results folder, for a
/// reader) leaves a reader unprotected, with a note; a merge needs it.
pub fn lock_results(out: &Path, mode: Mode, purpose: &str) -> Result<Option<Lock>> {
    use lossbench_core::lock::{LockError, lock_waiting};
    let waiting = |e: &LockError| tracing::info!("waiting: {e}");
    match lock_waiting(&out.join(LOCK_FILE), mode, purpose, waiting) {
        Ok(lock) => Ok(Some(lock)),
        Err(e @ LockError::Io { .. }) if mode == Mode::Shared => {
            tracing::info!("{e}: reading without a lock");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// A run folder's path as the manifest records it.
fn absolute(dir: &Path) -> PathBuf {
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// Size and modification time of an input file.
fn fingerprint(path: &Path) -> Option<String> {
    let m = fs::metadata(path).ok()?;
    let since = m
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    Some(format!("{}:{}", m.len(), since.as_nanos()))
}

/// The digest of every table's schema: a change rewrites every file.
fn schema_digest() -> String {
    let text: String = Table::ALL
        .iter()
        .map(|t| format!("{:?}", t.schema()))
        .collect();
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{hash:016x}")
}

#[derive(Default, Serialize, Deserialize)]
struct Manifest {
    /// The schemas the files were written with ([`schema_digest`]).
    #[serde(default)]
    schemas: String,
    /// Output file (relative to the results folder) → fingerprints of its inputs.
    files: BTreeMap<String, String>,
    /// Output file → the run folder it was made from (absent for the tables of all runs, and
    /// in manifests written before it).
    #[serde(default)]
    sources: BTreeMap<String, PathBuf>,
}

/// The run's input files whose fingerprints are taken before the run is read: a file that
/// changes while a merge reads it is then seen as changed by the next merge, never recorded
/// as read in a state it was not read in.
const RUN_INPUTS: [&str; 5] = [
    lossbench_core::run_folder::CONFIG_FILE,
    run_info::FILE,
    records::EPOCHS_FILE,
    records::TEST_FILE,
    lossbench_core::predictions::FILE,
];

struct Writer<'a> {
    out: &'a Path,
    manifest: Manifest,
    summary: Summary,
    /// Fingerprints taken before reading ([`RUN_INPUTS`]), by path.
    stamps: BTreeMap<PathBuf, String>,
    /// Output files this merge wrote or found unchanged.
    touched: std::collections::BTreeSet<String>,
    /// The run folder whose files are being written.
    source: Option<PathBuf>,
}

impl Writer<'_> {
    /// Writes `table/name.parquet` from `make()` unless its inputs are unchanged since the last
    /// merge.
    fn file(
        &mut self,
        table: Table,
        name: &str,
        inputs: &[&Path],
        make: impl FnOnce() -> Result<Vec<RecordBatch>>,
    ) -> Result<()> {
        let key = format!("{}/{name}.parquet", table.name());
        let stamp: Vec<String> = inputs
            .iter()
            .map(|p| {
                let taken = self.stamps.get(*p).cloned();
                taken
                    .or_else(|| fingerprint(p))
                    .unwrap_or_else(|| "-".into())
            })
            .collect();
        let stamp = stamp.join(",");
        let path = self.out.join(&key);
        self.touched.insert(key.clone());
        match &self.source {
            Some(dir) => self.manifest.sources.insert(key.clone(), dir.clone()),
            None => self.manifest.sources.remove(&key),
        };
        if self.manifest.files.get(&key) == Some(&stamp) && path.is_file() {
            self.summary.unchanged += 1;
            return Ok(());
        }
        let batches = make()?;
        if batches.iter().map(RecordBatch::num_rows).sum::<usize>() > 0 {
            write_parquet(&path, &table.schema(), &batches)?;
            self.summary.written += 1;
        } else {
            remove_output(&path)?;
        }
        self.manifest.files.insert(key, stamp);
        Ok(())
    }

    /// The `trials` table of the runs with a `trial.json` (tuning trials, docs/tuning.md).
    fn trials(&mut self, runs: &[folder::Run]) -> Result<()> {
        let trial_files: Vec<PathBuf> = runs
            .iter()
            .map(|r| r.dir.join(trial::FILE))
            .filter(|p| p.is_file())
            .collect();
        let inputs: Vec<&Path> = trial_files.iter().map(PathBuf::as_path).collect();
        self.file(Table::Trials, "trials", &inputs, || {
            let mut found = Vec::new();
            for r in runs {
                if let Some(t) = trial::Trial::read(&r.dir)? {
                    found.push((r, t));
                }
            }
            let first = trial_files.first().and_then(|f| f.parent()?.parent());
            let metric = first.map_or(trial::DEFAULT_METRIC.into(), trial::study_metric);
            Ok(vec![trials::trials_table(&found, &metric)?])
        })
    }

    /// Removes the files of runs that are gone (their folder deleted, to redo them, say) and
    /// files of merged runs that this merge no longer makes (snapshots of epochs a redone run
    /// has not reached); files of runs that still exist but were not merged this time stay.
    fn remove_vanished(&mut self, merged: &[PathBuf]) -> Result<()> {
        let vanished: Vec<String> = self
            .manifest
            .sources
            .iter()
            .filter(|(key, dir)| {
                !self.touched.contains(*key)
                    && (merged.contains(dir) || !lossbench_core::run_folder::is_run_folder(dir))
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in vanished {
            remove_output(&self.out.join(&key))?;
            self.manifest.files.remove(&key);
            self.manifest.sources.remove(&key);
            self.summary.removed += 1;
        }
        Ok(())
    }

    /// Every table of one run folder but `runs`.
    fn run(&mut self, r: &folder::Run) -> Result<()> {
        let dir = &r.dir;
        let (records, test) = (dir.join(records::EPOCHS_FILE), dir.join(records::TEST_FILE));
        self.file(Table::Epochs, &r.run_id, &[&records], || {
            Ok(vec![rows::epochs_table(r)?])
        })?;
        self.file(Table::ClassMetrics, &r.run_id, &[&records, &test], || {
            Ok(vec![rows::class_metrics_table(r)?])
        })?;
        if let Some(t) = &r.test {
            self.file(Table::TestMetrics, &r.run_id, &[&test], || {
                Ok(vec![rows::test_metrics_table(r, t)?])
            })?;
            let predictions = dir.join(lossbench_core::predictions::FILE);
            if predictions.is_file() {
                self.file(Table::Predictions, &r.run_id, &[&predictions], || {
                    rows::with_run_columns(r, &predictions, Table::Predictions)
                })?;
            }
        }
        // Snapshots of epochs whose record is complete (a snapshot follows its record).
        let last = r.records.last().map_or(0, |e| e.epoch);
        for epoch in 1..=last {
            let snapshot = run_folder::snapshot_file(dir, epoch);
            if snapshot.is_file() {
                let name = format!("{}-epoch-{epoch:04}", r.run_id);
                self.file(Table::Lrp, &name, &[&snapshot], || {
                    rows::with_run_columns(r, &snapshot, Table::Lrp)
                })?;
            }
        }
        // Landscape blocks (each written whole by `trainer landscape`).
        for (name, block) in discover::landscape_blocks(dir)? {
            let stem = block.file_stem().map(|s| s.to_string_lossy().to_string());
            let file = format!("{}-{name}-{}", r.run_id, stem.unwrap_or_default());
            self.file(Table::Landscape, &file, &[&block], || {
                rows::with_run_columns(r, &block, Table::Landscape)
            })?;
        }
        Ok(())
    }
}

/// Creates the table folders, removes temporary files of killed merges, and writes each
/// table's schema file where it is missing or the schemas changed.
fn prepare_tables(out: &Path, schemas_changed: bool) -> Result<()> {
    for table in Table::ALL {
        let dir = out.join(table.name());
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        lossbench_core::files::remove_stale_temporaries(&dir);
        let empty = dir.join(SCHEMA_FILE);
        if schemas_changed || !empty.is_file() {
            write_parquet(&empty, &table.schema(), &[])?;
        }
    }
    Ok(())
}

/// Merges the run folders under `roots` into `out` (see the module docs).
pub fn merge(roots: &[PathBuf], out: &Path) -> Result<Summary> {
    // Every argument is checked before anything is written.
    let dirs = discover(roots)?;
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let _lock = lock_results(out, Mode::Exclusive, "collector merge")?;
    let manifest_path = out.join(MANIFEST);
    let manifest: Manifest = match fs::read(&manifest_path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(file = %manifest_path.display(), "unreadable ({e}): every file is rewritten");
            Manifest::default()
        }),
        Err(_) => Manifest::default(),
    };
    let schemas = schema_digest();
    let schemas_changed = manifest.schemas != schemas;
    prepare_tables(out, schemas_changed)?;
    let manifest = if schemas_changed {
        Manifest {
            schemas,
            ..Default::default()
        }
    } else {
        manifest
    };
    let mut w = Writer {
        out,
        manifest,
        summary: Summary::default(),
        stamps: BTreeMap::new(),
        touched: Default::default(),
        source: None,
    };
    let mut runs = Vec::new();
    for dir in &dirs {
        for file in RUN_INPUTS {
            let path = dir.join(file);
            let stamp = fingerprint(&path).unwrap_or_else(|| "-".into());
            w.stamps.insert(path, stamp);
        }
        let r = folder::read_run(dir, &mut w.summary.skipped_lines)?;
        w.source = Some(absolute(dir));
        w.run(&r)?;
        runs.push(r);
    }
    w.source = None;
    let inputs: Vec<PathBuf> = runs
        .iter()
        .flat_map(|r| {
            [
                lossbench_core::run_folder::CONFIG_FILE,
                run_info::FILE,
                records::EPOCHS_FILE,
                records::TEST_FILE,
            ]
            .map(|f| r.dir.join(f))
        })
        .collect();
    let inputs: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
    w.file(Table::Runs, "runs", &inputs, || {
        Ok(vec![rows::runs_table(&runs)?])
    })?;
    w.file(Table::TestSummary, "test_summary", &inputs, || {
        Ok(vec![summary::test_summary_table(&runs)?])
    })?;
    w.trials(&runs)?;
    let merged: Vec<PathBuf> = dirs.iter().map(|d| absolute(d)).collect();
    w.remove_vanished(&merged)?;
    w.summary.runs = runs.len();
    lossbench_core::files::write_atomically(
        &manifest_path,
        &serde_json::to_vec_pretty(&w.manifest)?,
    )?;
    Ok(w.summary)
}
