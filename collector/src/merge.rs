//! `collector merge`: every run folder's records, test results and LRP snapshots become Parquet
//! tables under `results/<table>/*.parquet` (docs/results.md), read with DuckDB, polars or
//! pandas as one table per folder.
//!
//! Incremental: each output file is derived from a few input files, and `_manifest.json` keeps
//! the inputs' sizes and modification times; a file whose inputs did not change is not
//! rewritten. Every file is written under a temporary name and renamed, so readers never see a
//! half-written one. Runs still training contribute up to their last complete epoch; a torn or
//! invalid record line is skipped with a warning.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow_array::{
    ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMillisecondArray, UInt8Array,
    UInt32Array, UInt64Array,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::labels::BEN19;
use crate::metrics::{Metrics, Prf};
use crate::records::{self, EpochRecord, TestOutcome};
use crate::results::write_parquet;
use crate::run_info::{self, RunInfo};

pub const TABLES: [&str; 7] = [
    "runs",
    "epochs",
    "class_metrics",
    "test_metrics",
    "predictions",
    "lrp",
    "landscape",
];
const MANIFEST: &str = "_manifest.json";

/// What a merge did.
#[derive(Debug, Default)]
pub struct Summary {
    pub runs: usize,
    pub written: usize,
    pub unchanged: usize,
    /// Record lines skipped as torn or invalid.
    pub skipped_lines: usize,
}

/// Size and modification time of an input file.
fn fingerprint(path: &Path) -> Option<String> {
    let m = fs::metadata(path).ok()?;
    let mtime = m
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos();
    Some(format!("{}:{mtime}", m.len()))
}

/// Run folders: each argument is a run folder (it has `config.toml`) or holds run folders.
pub fn discover(roots: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut runs = Vec::new();
    for root in roots {
        if root.join("config.toml").is_file() {
            runs.push(root.clone());
            continue;
        }
        let entries = fs::read_dir(root).with_context(|| format!("reading {}", root.display()))?;
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("config.toml").is_file())
            .collect();
        found.sort();
        if found.is_empty() {
            tracing::warn!(folder = %root.display(), "no run folders (folders with config.toml) here");
        }
        runs.extend(found);
    }
    Ok(runs)
}

/// `<run>/landscape/<name>/blocks/*.parquet`: each landscape's name and block files, in order.
fn landscape_blocks(run: &Path) -> Result<Vec<(String, PathBuf)>> {
    let root = run.join("landscape");
    let entries = match fs::read_dir(&root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", root.display())),
    };
    let mut names: Vec<String> = Vec::new();
    for e in entries {
        let e = e.with_context(|| format!("reading {}", root.display()))?;
        if e.path().is_dir() {
            names.push(e.file_name().to_string_lossy().to_string());
        }
    }
    names.sort();
    let mut out = Vec::new();
    for name in names {
        for block in crate::results::table_files(&root.join(&name).join("blocks"))? {
            out.push((name.clone(), block));
        }
    }
    Ok(out)
}

/// Tables key runs by their folder name (`run_id`): two folders of one name would overwrite
/// each other's rows.
fn refuse_duplicate_names(dirs: &[PathBuf]) -> Result<()> {
    let mut seen: BTreeMap<std::ffi::OsString, &PathBuf> = BTreeMap::new();
    for dir in dirs {
        let name = dir.file_name().unwrap_or_default().to_os_string();
        if let Some(first) = seen.insert(name, dir) {
            anyhow::bail!(
                "two run folders have the name {:?}: {} and {}; tables key runs by folder name, so merge them \
                 into separate results folders (--out) or rename one",
                dir.file_name().unwrap_or_default(),
                first.display(),
                dir.display()
            );
        }
    }
    Ok(())
}

/// What the collector knows of one run folder.
struct RunFolder {
    dir: PathBuf,
    run_id: String,
    /// The job (the config file's name), the loss (`mix` for a mix), the network.
    job: String,
    loss: String,
    arch: String,
    /// The `[loss]` section as JSON: name and parameters, or the mix.
    loss_params: String,
    /// The store it trained on (`run.data`).
    data: String,
    seed: u64,
    planned_epochs: u64,
    config_hash: String,
    info: Option<RunInfo>,
    records: Vec<EpochRecord>,
    test: Option<TestOutcome>,
}

/// The config without what differs between runs of one setup (seed, folder names), hashed: runs
/// with equal hashes differ only in their seed.
fn config_hash(config: &toml::Table) -> String {
    let mut c = config.clone();
    if let Some(toml::Value::Table(run)) = c.get_mut("run") {
        for key in ["seed", "run_id", "out"] {
            run.remove(key);
        }
    }
    let text = toml::to_string(&c).unwrap_or_default();
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn read_run(dir: &Path, skipped: &mut usize) -> Result<RunFolder> {
    let config_path = dir.join("config.toml");
    let text = fs::read_to_string(&config_path)
        .with_context(|| format!("reading {}", config_path.display()))?;
    let config: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", config_path.display()))?;
    let get = |section: &str, key: &str| config.get(section).and_then(|s| s.get(key)).cloned();
    let text_of =
        |section: &str, key: &str| get(section, key).and_then(|v| v.as_str().map(str::to_string));
    let loss_table = config
        .get("loss")
        .and_then(toml::Value::as_table)
        .with_context(|| format!("{}: no [loss] table", config_path.display()))?;
    let loss = match (
        loss_table.get("name").and_then(toml::Value::as_str),
        loss_table.contains_key("mix"),
    ) {
        (Some(name), _) => name.to_string(),
        (None, true) => "mix".to_string(),
        (None, false) => anyhow::bail!("{}: [loss] names no loss", config_path.display()),
    };
    let loss_params = serde_json::to_string(loss_table)?;
    // Runs written before jobs and architectures were recorded: the loss's job, the K-Branch CNN.
    let job = text_of("run", "job")
        .filter(|j| !j.is_empty())
        .unwrap_or_else(|| loss.clone());
    let arch = text_of("model", "arch").unwrap_or_else(|| "kbranch".to_string());
    let data = text_of("run", "data").unwrap_or_default();
    let seed = get("run", "seed")
        .and_then(|v| v.as_integer())
        .with_context(|| format!("{}: no integer run.seed", config_path.display()))?
        as u64;
    let planned_epochs = get("train", "epochs")
        .and_then(|v| v.as_integer())
        .unwrap_or(0) as u64;
    let run_id = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    // run.json only describes the attempts: a damaged one is reported and the run still merged.
    let info = run_info::read(dir).unwrap_or_else(|e| {
        tracing::warn!("{e:#}; the run's status and attempts are unknown");
        None
    });
    let epochs_path = dir.join(records::EPOCHS_FILE);
    let read = records::read_epochs(&epochs_path)?;
    for line in &read.skipped_lines {
        tracing::warn!(file = %epochs_path.display(), line, "skipping a torn or invalid record");
    }
    *skipped += read.skipped_lines.len();
    let records = read.records.into_iter().map(|(r, _)| r).collect();
    let test = records::read_test(&dir.join(records::TEST_FILE))?;
    Ok(RunFolder {
        dir: dir.to_path_buf(),
        run_id,
        job,
        loss,
        arch,
        loss_params,
        data,
        seed,
        planned_epochs,
        config_hash: config_hash(&config),
        info,
        records,
        test,
    })
}

fn strings<'a>(values: impl Iterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values))
}

fn floats(values: impl Iterator<Item = Option<f64>>) -> ArrayRef {
    Arc::new(Float64Array::from_iter(values))
}

/// run_id, job, loss, arch, seed: the first columns of every table, repeated over `n` rows.
fn run_columns(r: &RunFolder, n: usize) -> Vec<(&'static str, ArrayRef)> {
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

/// Precision/recall/F1 of each averaging, Hamming loss, subset accuracy and patch count, from
/// optional metrics (null where a row has none).
fn metric_columns(metrics: &[Option<&Metrics>]) -> Vec<(&'static str, ArrayRef)> {
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
    let mut out: Vec<(&'static str, ArrayRef)> = Vec::new();
    for (names, pick) in averagings {
        out.push((
            names[0],
            floats(metrics.iter().map(|m| m.map(|m| pick(m).precision))),
        ));
        out.push((
            names[1],
            floats(metrics.iter().map(|m| m.map(|m| pick(m).recall))),
        ));
        out.push((
            names[2],
            floats(metrics.iter().map(|m| m.map(|m| pick(m).f1))),
        ));
    }
    out.push((
        "hamming_loss",
        floats(metrics.iter().map(|m| m.map(|m| m.hamming_loss))),
    ));
    out.push((
        "subset_accuracy",
        floats(metrics.iter().map(|m| m.map(|m| m.subset_accuracy))),
    ));
    out.push((
        "patches",
        Arc::new(UInt64Array::from_iter(
            metrics.iter().map(|m| m.map(|m| m.patches)),
        )),
    ));
    out
}

fn batch(columns: Vec<(&'static str, ArrayRef)>) -> Result<RecordBatch> {
    Ok(RecordBatch::try_from_iter(columns)?)
}

/// `epochs`: per epoch a `train` row (loss, speed, time breakdown) and a `validation` row
/// (loss and metrics).
fn epochs_table(r: &RunFolder) -> Result<RecordBatch> {
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
    columns.extend(metric_columns(
        &rows
            .iter()
            .map(|(e, train)| (!train).then_some(&e.val))
            .collect::<Vec<_>>(),
    ));
    columns.push(("lr", train_only(|e| e.lr)));
    columns.push(("images_per_s", train_only(|e| e.images_per_s)));
    columns.push(("epoch_wall_s", train_only(|e| e.wall_s)));
    columns.push(("compute_s", train_only(|e| e.time.compute_s)));
    columns.push(("allreduce_s", train_only(|e| e.time.allreduce_s)));
    columns.push(("data_wait_s", train_only(|e| e.time.data_wait_s)));
    batch(columns)
}

/// `class_metrics`: per validation epoch, and for the test split at the best epoch, one row
/// per class.
fn class_metrics_table(r: &RunFolder) -> Result<RecordBatch> {
    let mut sets: Vec<(u32, &str, &Metrics)> = r
        .records
        .iter()
        .map(|e| (e.epoch, "validation", &e.val))
        .collect();
    if let Some(t) = &r.test {
        sets.push((t.best_epoch, "test", &t.metrics));
    }
    let rows: Vec<(u32, &str, usize, &crate::metrics::ClassMetrics)> = sets
        .iter()
        .flat_map(|&(e, s, m)| {
            m.per_class
                .iter()
                .enumerate()
                .map(move |(c, cm)| (e, s, c, cm))
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
    batch(columns)
}

fn test_metrics_table(r: &RunFolder, t: &TestOutcome) -> Result<RecordBatch> {
    let mut columns = run_columns(r, 1);
    columns.push((
        "best_epoch",
        Arc::new(UInt32Array::from_iter_values([t.best_epoch])),
    ));
    columns.push(("loss_value", floats([Some(t.loss)].into_iter())));
    columns.extend(metric_columns(&[Some(&t.metrics)]));
    batch(columns)
}

/// The best epoch so far: highest validation F1 (sample average), the first of ties.
fn best_epoch(records: &[EpochRecord]) -> Option<u32> {
    records
        .iter()
        .fold(None, |best: Option<&EpochRecord>, e| match best {
            Some(b) if b.val.samples.f1 >= e.val.samples.f1 => Some(b),
            _ => Some(e),
        })
        .map(|e| e.epoch)
}

fn attempts(r: &RunFolder) -> &[run_info::Attempt] {
    r.info
        .as_ref()
        .map(|i| i.attempts.as_slice())
        .unwrap_or_default()
}

fn runs_table(runs: &[RunFolder]) -> Result<RecordBatch> {
    let status = |r: &RunFolder| match &r.info {
        Some(i) => serde_json::to_value(i.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        None if r.test.is_some() => "finished".into(),
        None => "unknown".into(),
    };
    let statuses: Vec<String> = runs.iter().map(status).collect();
    let hosts: Vec<String> = runs
        .iter()
        .map(|r| {
            attempts(r)
                .last()
                .map(|a| a.host.clone())
                .unwrap_or_default()
        })
        .collect();
    let revisions: Vec<String> = runs
        .iter()
        .map(|r| {
            r.info
                .as_ref()
                .map(|i| i.code_revision.clone())
                .unwrap_or_default()
        })
        .collect();
    let wall = |r: &RunFolder| -> Option<f64> {
        let a = attempts(r);
        (!a.is_empty()).then(|| {
            a.iter()
                .filter_map(|a| {
                    a.ended_unix_ms
                        .map(|e| (e - a.started_unix_ms) as f64 / 1e3)
                })
                .sum()
        })
    };
    let columns: Vec<(&'static str, ArrayRef)> = vec![
        ("run_id", strings(runs.iter().map(|r| r.run_id.as_str()))),
        ("job", strings(runs.iter().map(|r| r.job.as_str()))),
        ("loss", strings(runs.iter().map(|r| r.loss.as_str()))),
        ("arch", strings(runs.iter().map(|r| r.arch.as_str()))),
        (
            "seed",
            Arc::new(UInt64Array::from_iter_values(runs.iter().map(|r| r.seed))),
        ),
        (
            "loss_params",
            strings(runs.iter().map(|r| r.loss_params.as_str())),
        ),
        (
            "config_hash",
            strings(runs.iter().map(|r| r.config_hash.as_str())),
        ),
        (
            "code_revision",
            strings(revisions.iter().map(String::as_str)),
        ),
        ("host", strings(hosts.iter().map(String::as_str))),
        (
            "world_size",
            Arc::new(UInt32Array::from_iter(
                runs.iter()
                    .map(|r| attempts(r).last().map(|a| a.world_size as u32)),
            )),
        ),
        (
            "started",
            Arc::new(
                TimestampMillisecondArray::from_iter(
                    runs.iter()
                        .map(|r| attempts(r).first().map(|a| a.started_unix_ms)),
                )
                .with_timezone("UTC"),
            ),
        ),
        (
            "ended",
            Arc::new(
                TimestampMillisecondArray::from_iter(
                    runs.iter()
                        .map(|r| attempts(r).last().and_then(|a| a.ended_unix_ms)),
                )
                .with_timezone("UTC"),
            ),
        ),
        ("status", strings(statuses.iter().map(String::as_str))),
        (
            "best_epoch",
            Arc::new(UInt32Array::from_iter(runs.iter().map(|r| {
                r.test
                    .as_ref()
                    .map(|t| t.best_epoch)
                    .or(best_epoch(&r.records))
            }))),
        ),
        (
            "epochs_done",
            Arc::new(UInt32Array::from_iter_values(
                runs.iter().map(|r| r.records.len() as u32),
            )),
        ),
        (
            "epochs_planned",
            Arc::new(UInt64Array::from_iter_values(
                runs.iter().map(|r| r.planned_epochs),
            )),
        ),
        (
            "attempts",
            Arc::new(UInt32Array::from_iter_values(
                runs.iter().map(|r| attempts(r).len() as u32),
            )),
        ),
        ("wall_s", floats(runs.iter().map(wall))),
        (
            "folder",
            strings(runs.iter().map(|r| r.dir.to_str().unwrap_or_default())),
        ),
        ("data", strings(runs.iter().map(|r| r.data.as_str()))),
    ];
    batch(columns)
}

/// A Parquet file written by the trainer, with the run's columns put in front.
fn with_run_columns(r: &RunFolder, source: &Path) -> Result<Vec<RecordBatch>> {
    let mut out = Vec::new();
    for b in crate::results::read_parquet(source, None)? {
        let mut columns: Vec<(String, ArrayRef)> = run_columns(r, b.num_rows())
            .into_iter()
            .map(|(n, c)| (n.to_string(), c))
            .collect();
        columns.extend(
            b.schema()
                .fields()
                .iter()
                .zip(b.columns())
                .map(|(f, c)| (f.name().clone(), c.clone())),
        );
        out.push(RecordBatch::try_from_iter(columns)?);
    }
    Ok(out)
}

#[derive(Default, Serialize, Deserialize)]
struct Manifest {
    /// Output file (relative to the results folder) → fingerprints of its inputs.
    files: BTreeMap<String, String>,
}

struct Writer<'a> {
    out: &'a Path,
    manifest: Manifest,
    summary: Summary,
}

impl Writer<'_> {
    /// Writes `table/name.parquet` from `make()` unless its inputs are unchanged since the last merge.
    fn file(
        &mut self,
        table: &str,
        name: &str,
        inputs: &[&Path],
        make: impl FnOnce() -> Result<Vec<RecordBatch>>,
    ) -> Result<()> {
        let key = format!("{table}/{name}.parquet");
        let stamp: Vec<String> = inputs
            .iter()
            .map(|p| fingerprint(p).unwrap_or_else(|| "-".into()))
            .collect();
        let stamp = stamp.join(",");
        let path = self.out.join(&key);
        if self.manifest.files.get(&key) == Some(&stamp) && path.is_file() {
            self.summary.unchanged += 1;
            return Ok(());
        }
        let batches = make()?;
        if batches.iter().map(RecordBatch::num_rows).sum::<usize>() > 0 {
            write_parquet(&path, &batches)?;
            self.summary.written += 1;
        }
        self.manifest.files.insert(key, stamp);
        Ok(())
    }
}

/// Merges the run folders under `roots` into `out` (see the module docs).
pub fn merge(roots: &[PathBuf], out: &Path) -> Result<Summary> {
    for table in TABLES {
        fs::create_dir_all(out.join(table))
            .with_context(|| format!("creating {}", out.join(table).display()))?;
    }
    let manifest: Manifest = fs::read(out.join(MANIFEST))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut w = Writer {
        out,
        manifest,
        summary: Summary::default(),
    };
    let mut runs = Vec::new();
    let dirs = discover(roots)?;
    refuse_duplicate_names(&dirs)?;
    for dir in dirs {
        let r = read_run(&dir, &mut w.summary.skipped_lines)?;
        let (records, test) = (dir.join(records::EPOCHS_FILE), dir.join(records::TEST_FILE));
        w.file("epochs", &r.run_id, &[&records], || {
            Ok(vec![epochs_table(&r)?])
        })?;
        w.file("class_metrics", &r.run_id, &[&records, &test], || {
            Ok(vec![class_metrics_table(&r)?])
        })?;
        if let Some(t) = &r.test {
            w.file("test_metrics", &r.run_id, &[&test], || {
                Ok(vec![test_metrics_table(&r, t)?])
            })?;
            let predictions = dir.join("test_predictions.parquet");
            if predictions.is_file() {
                w.file("predictions", &r.run_id, &[&predictions], || {
                    with_run_columns(&r, &predictions)
                })?;
            }
        }
        // Snapshots of epochs whose record is complete (a snapshot follows its record).
        let last = r.records.last().map_or(0, |e| e.epoch);
        for epoch in 1..=last {
            let snapshot = dir.join("lrp").join(format!("epoch-{epoch:04}.parquet"));
            if snapshot.is_file() {
                w.file(
                    "lrp",
                    &format!("{}-epoch-{epoch:04}", r.run_id),
                    &[&snapshot],
                    || with_run_columns(&r, &snapshot),
                )?;
            }
        }
        // Landscape blocks (each written whole by `trainer landscape`).
        for (name, block) in landscape_blocks(&dir)? {
            let stem = block
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default();
            w.file(
                "landscape",
                &format!("{}-{name}-{stem}", r.run_id),
                &[&block],
                || with_run_columns(&r, &block),
            )?;
        }
        runs.push(r);
    }
    if !runs.is_empty() {
        let inputs: Vec<PathBuf> = runs
            .iter()
            .flat_map(|r| {
                [
                    "config.toml",
                    run_info::FILE,
                    records::EPOCHS_FILE,
                    records::TEST_FILE,
                ]
                .map(|f| r.dir.join(f))
            })
            .collect();
        let inputs: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
        w.file("runs", "runs", &inputs, || Ok(vec![runs_table(&runs)?]))?;
    }
    w.summary.runs = runs.len();
    crate::results::write_atomically(
        &out.join(MANIFEST),
        &serde_json::to_vec_pretty(&w.manifest)?,
    )?;
    Ok(w.summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_hash_ignores_what_differs_between_seeds() {
        let a: toml::Table =
            toml::from_str("[run]\nseed = 1\nout = \"a\"\n[loss]\nname = \"ce\"").unwrap();
        let b: toml::Table =
            toml::from_str("[run]\nseed = 2\nout = \"b\"\nrun_id = \"x\"\n[loss]\nname = \"ce\"")
                .unwrap();
        let c: toml::Table =
            toml::from_str("[run]\nseed = 1\nout = \"a\"\n[loss]\nname = \"focal\"").unwrap();
        assert_eq!(config_hash(&a), config_hash(&b));
        assert_ne!(config_hash(&a), config_hash(&c));
        assert_eq!(config_hash(&a).len(), 16);
    }

    #[test]
    fn a_run_folder_keeps_its_complete_records_only() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("config.toml"),
            "[run]\nseed = 4\n[train]\nepochs = 9\n[loss]\nname = \"huber\"\n",
        )
        .unwrap();
        let record = |epoch: u32, f1: f64| {
            serde_json::to_string(&crate::records::record(epoch, f1)).unwrap()
        };
        let text = format!(
            "{}\n{}\n{}\n{{\"epoch\": 4, \"tra",
            record(1, 0.2),
            record(2, 0.5),
            record(3, 0.5)
        );
        fs::write(dir.path().join("epochs.jsonl"), text).unwrap();
        let mut skipped = 0;
        let r = read_run(dir.path(), &mut skipped).unwrap();
        assert_eq!(skipped, 1);
        assert_eq!((r.loss.as_str(), r.seed, r.planned_epochs), ("huber", 4, 9));
        assert_eq!(
            r.records.iter().map(|e| e.epoch).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        // The first of equal best epochs, as the trainer keeps it.
        assert_eq!(best_epoch(&r.records), Some(2));
    }
}
