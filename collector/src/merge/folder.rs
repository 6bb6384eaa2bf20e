//! What the collector merges of one run folder, read through the one reader of run folders
//! ([`lossbench_core::run_folder`]): the columns its configuration gives every table, its
//! setup's digest, `run.json`, its complete epoch records and its test outcome.

use std::path::{Path, PathBuf};

use anyhow::Result;

use lossbench_core::records::{EpochRecord, TestOutcome};
use lossbench_core::run_folder::RunFolder;
use lossbench_core::run_info::{self, RunInfo};

/// One run folder, as merged.
pub struct Run {
    pub dir: PathBuf,
    pub run_id: String,
    /// The job (the config file's name), the loss (`mix` for a mix), the network.
    pub job: String,
    pub loss: String,
    pub arch: String,
    /// The `[loss]` section as JSON: name and parameters, or the mix.
    pub loss_params: String,
    /// The store it trained on (`run.data`).
    pub data: String,
    pub seed: u64,
    pub planned_epochs: u64,
    pub config_hash: String,
    pub info: Option<RunInfo>,
    pub records: Vec<EpochRecord>,
    pub test: Option<TestOutcome>,
}

/// Reads a run folder; record lines that do not parse are counted into `skipped` and named
/// in warnings.
pub fn read_run(dir: &Path, skipped: &mut usize) -> Result<Run> {
    let folder = RunFolder::open(dir)?;
    let c = &folder.config;
    // run.json only describes the attempts: a damaged one is reported and the run still merged.
    let info = folder.info().unwrap_or_else(|e| {
        tracing::warn!("{e:#}; the run's status and attempts are unknown");
        None
    });
    let data = c.run.data.display().to_string();
    // The store's identity where an attempt recorded it, else its path.
    let store = info
        .as_ref()
        .and_then(|i| i.attempts.iter().rev().find_map(|a| a.store_id.clone()))
        .unwrap_or_else(|| data.clone());
    let read = folder.epochs()?;
    for line in &read.skipped_lines {
        tracing::warn!(run = %dir.display(), line, "skipping a torn or invalid record");
    }
    *skipped += read.skipped_lines.len();
    Ok(Run {
        dir: dir.to_path_buf(),
        job: c.run.job.clone(),
        loss: c.loss.name().to_string(),
        arch: c.model.arch.name().to_string(),
        loss_params: serde_json::to_string(&c.loss)?,
        data,
        seed: c.run.seed,
        planned_epochs: u64::from(c.train.epochs),
        config_hash: lossbench_core::config::digest::setup_digest(&folder.written, &store),
        info,
        records: read.records.into_iter().map(|(r, _)| r).collect(),
        test: folder.test()?,
        run_id: folder.run_id,
    })
}

impl Run {
    /// The best epoch so far: highest validation F1 (sample average), the first of ties.
    pub fn best_epoch(&self) -> Option<u32> {
        self.records
            .iter()
            .fold(None, |best: Option<&EpochRecord>, e| match best {
                Some(b) if b.val.samples.f1 >= e.val.samples.f1 => Some(b),
                _ => Some(e),
            })
            .map(|e| e.epoch)
    }

    /// The trainer's attempts, from `run.json`.
    pub fn attempts(&self) -> &[run_info::Attempt] {
        self.info
            .as_ref()
            .map(|i| i.attempts.as_slice())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn record(epoch: u32, f1: f64) -> EpochRecord {
        let mut val = lossbench_core::metrics::Counts::default().metrics();
        val.samples.f1 = f1;
        EpochRecord {
            epoch,
            train_loss: 1.0,
            val_loss: 1.0,
            lr: 1e-4,
            wall_s: 1.0,
            images_per_s: 1.0,
            data_wait_fraction: 0.0,
            time: Default::default(),
            val,
            val_ranking: None,
        }
    }

    #[test]
    fn config_hash_ignores_what_differs_between_seeds() {
        let a: toml::Table =
            toml::from_str("[run]\nseed = 1\nout = \"a\"\n[loss]\nname = \"ce\"").unwrap();
        let b: toml::Table = toml::from_str(
            "[run]\nseed = 2\nout = \"b\"\nrun_id = \"x\"\ndevice = \"cpu\"\n[loss]\nname = \"ce\"",
        )
        .unwrap();
        let c: toml::Table =
            toml::from_str("[run]\nseed = 1\nout = \"a\"\n[loss]\nname = \"focal\"").unwrap();
        let hash = |t: &toml::Table| lossbench_core::config::digest::setup_digest(t, "store-1");
        assert_eq!(hash(&a), hash(&b));
        assert_ne!(hash(&a), hash(&c));
        assert_eq!(hash(&a).len(), 16);
        // One store under two paths is one setup; another store is another.
        let moved: toml::Table = toml::from_str(
            "[run]\nseed = 1\nout = \"a\"\ndata = \"/x/s.zarr\"\n[loss]\nname = \"ce\"",
        )
        .unwrap();
        assert_eq!(hash(&a), hash(&moved));
        assert_ne!(
            hash(&a),
            lossbench_core::config::digest::setup_digest(&a, "store-2")
        );
    }

    #[test]
    fn a_run_folder_keeps_its_complete_records_only() {
        let dir = tempfile::tempdir().unwrap();
        // A run folder's config as the trainer writes it, of another job.
        let config = include_str!("../../../tests/data/old-run/focal-seed1/config.toml")
            .replace("seed = 1", "seed = 4")
            .replace("epochs = 2", "epochs = 9")
            .replace("job = \"focal\"", "job = \"huber\"")
            .replace("name = \"focal\"\ngamma = 2.0", "name = \"huber\"");
        fs::write(dir.path().join("config.toml"), config).unwrap();
        let record = |epoch: u32, f1: f64| serde_json::to_string(&record(epoch, f1)).unwrap();
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
        assert_eq!(r.best_epoch(), Some(2));
    }
}
