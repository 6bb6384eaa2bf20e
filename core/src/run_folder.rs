//! A run folder as every binary reads it (docs/results.md, "Run folders"): its configuration
//! (`config.toml`, read back through [`crate::config`]), `run.json` ([`crate::run_info`]), its
//! epoch records and test outcome ([`crate::records`]) and the store it trained on. The
//! trainer (resume, explain, landscapes), the collector and the tuner read run folders only
//! through it; what only the trainer writes and reads (checkpoints) stays the trainer's.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::config::{self, Config, keys};
use crate::records::{self, Records, TestOutcome};
use crate::run_info::{self, RunInfo};
use crate::store::Store;

/// The resolved configuration the trainer writes into every run folder.
pub const CONFIG_FILE: &str = "config.toml";

/// The folder of a run's LRP snapshots, one Parquet file per snapshot epoch (docs/lrp.md).
pub const SNAPSHOT_DIR: &str = "lrp";

/// The LRP snapshot of `epoch` in the run folder `dir`.
pub fn snapshot_file(dir: &Path, epoch: u32) -> PathBuf {
    dir.join(SNAPSHOT_DIR)
        .join(format!("epoch-{epoch:04}.parquet"))
}

/// The folder of a run's landscapes, one folder per landscape (docs/landscape.md).
const LANDSCAPE_DIR: &str = "landscape";
/// What defines a landscape, beside its blocks (written by `trainer landscape`).
pub const LANDSCAPE_SPEC_FILE: &str = "spec.json";
/// The folder of a landscape's blocks, one Parquet file each.
const BLOCKS_DIR: &str = "blocks";

/// The landscape `name` of the run folder `dir`.
pub fn landscape_dir(dir: &Path, name: &str) -> PathBuf {
    dir.join(LANDSCAPE_DIR).join(name)
}

/// The folder of the blocks of the landscape in `landscape`.
pub fn blocks_dir(landscape: &Path) -> PathBuf {
    landscape.join(BLOCKS_DIR)
}

/// Each landscape of the run folder `dir`: its name and folder, in name order.
pub fn landscapes(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let root = dir.join(LANDSCAPE_DIR);
    if !root.is_dir() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&root).with_context(|| format!("listing {}", root.display()))? {
        let path = entry
            .with_context(|| format!("listing {}", root.display()))?
            .path();
        if path.is_dir() {
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            out.push((name, path));
        }
    }
    out.sort();
    Ok(out)
}

/// The sizes of the training and validation subsets a landscape was evaluated on, from its
/// spec (the fields every kind's spec has).
pub fn landscape_subsets(landscape: &Path) -> Result<(usize, usize)> {
    #[derive(serde::Deserialize)]
    struct Subsets {
        train_rows: Vec<usize>,
        val_rows: Vec<usize>,
    }
    let path = landscape.join(LANDSCAPE_SPEC_FILE);
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let s: Subsets = serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: unreadable", path.display()))?;
    Ok((s.train_rows.len(), s.val_rows.len()))
}

/// A run folder and its configuration.
#[derive(Debug, Clone)]
pub struct RunFolder {
    pub dir: PathBuf,
    /// The folder's name: the run's id.
    pub run_id: String,
    /// `config.toml` as written (the digests of earlier versions' runs are of this).
    pub written: toml::Table,
    /// The configuration as this version reads it ([`config::recorded`]), `run.data`
    /// resolved where earlier versions recorded it relative ([`crate::paths::recorded`]).
    pub config: Config,
}

/// Whether `dir` is a run folder (it has a `config.toml`).
pub fn is_run_folder(dir: &Path) -> bool {
    dir.join(CONFIG_FILE).is_file()
}

impl RunFolder {
    /// Reads the folder's configuration; an error names the file (and the key it cannot read).
    pub fn open(dir: &Path) -> Result<RunFolder> {
        if !dir.is_dir() {
            bail!("run folder {} does not exist", dir.display());
        }
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "{} is not a run folder (no readable {CONFIG_FILE})",
                dir.display()
            )
        })?;
        let written: toml::Table =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        RunFolder::of(dir, written)
    }

    /// The run folder `dir` whose `config.toml` holds `written`.
    pub fn of(dir: &Path, written: toml::Table) -> Result<RunFolder> {
        let path = dir.join(CONFIG_FILE);
        let mut config = config::recorded::read(&written).map_err(|(key, why)| {
            anyhow::anyhow!(
                "{}: `{key}`: {why} (written by a version of lossbench this one cannot read)",
                path.display()
            )
        })?;
        if let Some(store) = crate::paths::recorded(dir, &written, "data") {
            if store.how != "recorded absolute" {
                tracing::info!(run = %dir.display(), store = %store.path.display(), "{}", store.how);
            }
            config.run.data = store.path;
            config.sources.insert(
                keys::DATA.into(),
                format!("{} ({})", path.display(), store.how),
            );
        }
        Ok(RunFolder {
            dir: dir.to_path_buf(),
            run_id: dir
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default(),
            written,
            config,
        })
    }

    /// `run.json`: the trainer's attempts (`None` before the first).
    pub fn info(&self) -> Result<Option<RunInfo>> {
        run_info::read(&self.dir)
    }

    /// The complete epoch records, and the lines that were torn or invalid.
    pub fn epochs(&self) -> Result<Records> {
        records::read_epochs(&self.dir.join(records::EPOCHS_FILE))
    }

    /// The test outcome, once the run was tested.
    pub fn test(&self) -> Result<Option<TestOutcome>> {
        records::read_test(&self.dir.join(records::TEST_FILE))
    }

    /// The store identity the run's last attempt recorded in `run.json`.
    pub fn store_of_last_attempt(&self) -> Option<String> {
        self.info()
            .ok()
            .flatten()
            .and_then(|i| i.attempts.last().and_then(|a| a.store_id.clone()))
    }

    /// Opens the run's store (`data`, else its `run.data`) and checks that it is `recorded`,
    /// the store the run trained on (its newest checkpoint's, else its last attempt's).
    pub fn store(&self, data: Option<&Path>, recorded: Option<String>) -> Result<Store> {
        let (path, origin) = match data {
            Some(p) => (crate::paths::absolute(p), "--data".to_string()),
            None => (
                self.config.run.data.clone(),
                format!(
                    "the run's run.data, from {}; --data points elsewhere",
                    self.config.source(keys::DATA)
                ),
            ),
        };
        let store =
            Store::open(&path).with_context(|| format!("opening the run's store ({origin})"))?;
        if let Some(recorded) = recorded.or_else(|| self.store_of_last_attempt())
            && recorded != store.attrs.identity()
        {
            bail!(
                "{} is not the store run {} trained on (its id is {}, the run recorded {recorded}); \
                 pass the run's store with --data",
                path.display(),
                self.dir.display(),
                store.attrs.identity()
            );
        }
        Ok(store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The collector finds a run's landscapes and their subsets as `trainer landscape` lays
    /// them out, whatever else a kind's spec holds.
    #[test]
    fn landscapes_and_their_subsets_are_found_where_the_trainer_puts_them() {
        let run = tempfile::tempdir().unwrap();
        assert!(landscapes(run.path()).unwrap().is_empty());
        for name in ["2d-epoch0002-seed0", "1d-epoch0002-seed0"] {
            let dir = landscape_dir(run.path(), name);
            std::fs::create_dir_all(blocks_dir(&dir)).unwrap();
            let spec = r#"{"kind": "2d", "epoch": 2, "range": [-1.0, 1.0], "points": 5,
                "block": 4, "include_bias_bn": false, "run": "/r", "seed": 0, "bn": "eval",
                "train_rows": [3, 7, 9], "val_rows": [1, 2], "batch": 8, "data": "/s.zarr"}"#;
            std::fs::write(dir.join(LANDSCAPE_SPEC_FILE), spec).unwrap();
        }
        let found = landscapes(run.path()).unwrap();
        let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["1d-epoch0002-seed0", "2d-epoch0002-seed0"]);
        assert_eq!(landscape_subsets(&found[0].1).unwrap(), (3, 2));
        let missing = landscape_subsets(&run.path().join("nothing")).unwrap_err();
        assert!(format!("{missing:#}").contains("spec.json"), "{missing:#}");
    }
}
