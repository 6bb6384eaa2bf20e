//! What the collector reads of one run folder: its resolved config (job, loss and parameters,
//! network, seed, store), `run.json`, its complete epoch records and its test outcome.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use lossbench_core::records::{self, EpochRecord, TestOutcome};
use lossbench_core::run_info::{self, RunInfo};

/// What the collector knows of one run folder.
pub struct RunFolder {
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
pub fn read_run(dir: &Path, skipped: &mut usize) -> Result<RunFolder> {
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
    // Absolute, also for folders of earlier versions that recorded it as typed.
    let data = lossbench_core::paths::recorded(dir, &config, "data")
        .map(|r| r.path.display().to_string())
        .unwrap_or_default();
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
    // The store's identity where an attempt recorded it, else its path.
    let store = info
        .as_ref()
        .and_then(|i| i.attempts.iter().rev().find_map(|a| a.store_id.clone()))
        .unwrap_or_else(|| data.clone());
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
        config_hash: lossbench_core::config_digest::setup_digest(&config, &store),
        info,
        records,
        test,
    })
}

impl RunFolder {
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
        let hash = |t: &toml::Table| lossbench_core::config_digest::setup_digest(t, "store-1");
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
            lossbench_core::config_digest::setup_digest(&a, "store-2")
        );
    }

    #[test]
    fn a_run_folder_keeps_its_complete_records_only() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("config.toml"),
            "[run]\nseed = 4\n[train]\nepochs = 9\n[loss]\nname = \"huber\"\n",
        )
        .unwrap();
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
