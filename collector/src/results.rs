//! Reading a results folder written by `collector merge`: its runs and a run's test
//! predictions, for `collector compare` and `collector report`.

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::columns::Columns;
use lossbench_core::labels::NUM_CLASSES;
use lossbench_core::schema::Table;
use lossbench_core::tables::{read_parquet, read_table};

/// One row of the `runs` table.
#[derive(Debug, Clone)]
pub struct RunRow {
    pub run_id: String,
    pub job: String,
    pub loss: String,
    pub arch: String,
    pub seed: u64,
    pub config_hash: String,
    pub status: String,
    /// The `[loss]` table as JSON.
    pub loss_params: String,
    pub code_revision: String,
    pub best_epoch: Option<u32>,
    pub epochs_done: u32,
    pub epochs_planned: u64,
    pub attempts: u32,
    pub wall_s: Option<f64>,
    /// The run folder and the store it trained on.
    pub folder: String,
    pub data: String,
}

/// Refuses a folder that `collector merge` did not write.
pub fn check_merged(results: &Path) -> Result<()> {
    if !results.join(Table::Runs.name()).is_dir() {
        bail!(
            "{} holds no merged tables: run `collector merge --runs RUNS --out {}` first",
            results.display(),
            results.display()
        );
    }
    Ok(())
}

/// Every run of the `runs` table.
pub fn runs(results: &Path) -> Result<Vec<RunRow>> {
    check_merged(results)?;
    let mut out = Vec::new();
    for b in read_table(&results.join(Table::Runs.name()), None)? {
        let c = Columns::new("runs", &b);
        for i in 0..c.rows() {
            out.push(RunRow {
                run_id: c.str("run_id", i)?,
                job: c.job(i)?,
                loss: c.str("loss", i)?,
                arch: c.arch(i)?,
                seed: c.u64("seed", i)?,
                config_hash: c.str("config_hash", i)?,
                status: c.str("status", i)?,
                loss_params: c.str("loss_params", i)?,
                code_revision: c.str("code_revision", i)?,
                best_epoch: c.opt_u32("best_epoch", i)?,
                epochs_done: c.u32("epochs_done", i)?,
                epochs_planned: c.u64("epochs_planned", i)?,
                attempts: c.u32("attempts", i)?,
                wall_s: c.f64("wall_s", i)?,
                folder: c.str("folder", i)?,
                data: c.str("data", i)?,
            });
        }
    }
    Ok(out)
}

/// A run's test predictions, in test-split order; the others row-major `[patches, 19]`.
pub struct Predictions {
    pub patches: Vec<String>,
    pub truth: Vec<u8>,
    pub scores: Vec<f32>,
    pub decisions: Vec<u8>,
}

/// A run's test predictions (`predictions/<run_id>.parquet`).
pub fn predictions(results: &Path, run_id: &str) -> Result<Predictions> {
    let path = results
        .join(Table::Predictions.name())
        .join(format!("{run_id}.parquet"));
    if !path.is_file() {
        bail!(
            "run {run_id} has no test predictions in {} (it has not finished its test, or the \
             results folder was merged before it did: merge again)",
            path.display()
        );
    }
    let (mut names, mut truth, mut scores, mut decisions) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let columns = ["patch", "labels", "scores", "decisions"];
    for b in read_parquet(&path, Some(&columns)).with_context(|| path.display().to_string())? {
        let c = Columns::new("predictions", &b);
        for i in 0..c.rows() {
            names.push(c.str("patch", i)?);
            truth.extend(c.u8_list("labels", i, NUM_CLASSES)?);
            scores.extend(c.f32_list("scores", i, NUM_CLASSES)?);
            decisions.extend(c.u8_list("decisions", i, NUM_CLASSES)?);
        }
    }
    Ok(Predictions {
        patches: names,
        truth,
        scores,
        decisions,
    })
}
