//! A run folder as `trainer explain` and `trainer landscape` read it: its resolved config,
//! its checkpoints, and its store, which must be the store the run trained on (the identity
//! its checkpoints and `run.json` record).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::checkpoint;
use crate::config::{self, Config};
use lossbench_core::store::Store;

pub struct RunFolder {
    pub dir: PathBuf,
    pub config: Config,
}

impl RunFolder {
    pub fn open(dir: &Path) -> Result<RunFolder> {
        if !dir.is_dir() {
            bail!("run folder {} does not exist", dir.display());
        }
        let path = dir.join("config.toml");
        let mut config = config::load(&path, Vec::new()).with_context(|| {
            format!(
                "{} is not a run folder (no readable config.toml)",
                dir.display()
            )
        })?;
        // Folders of earlier versions record the store's path as typed (lossbench_core::paths).
        let table: toml::Table = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| toml::from_str(&t).ok())
            .unwrap_or_default();
        if let Some(store) = lossbench_core::paths::recorded(dir, &table, "data") {
            if store.how != "recorded absolute" {
                tracing::info!(run = %dir.display(), store = %store.path.display(), "{}", store.how);
            }
            config.run.data = store.path;
            config.sources.insert(
                "run.data".into(),
                format!("{} ({})", path.display(), store.how),
            );
        }
        Ok(RunFolder {
            dir: dir.to_path_buf(),
            config,
        })
    }

    /// The epoch of the best checkpoint so far.
    pub fn best_epoch(&self) -> Result<u32> {
        Ok(checkpoint::latest(&self.dir)?
            .with_context(|| format!("{}: no checkpoint", self.dir.display()))?
            .state
            .best_epoch)
    }

    /// The store the run recorded last (its newest checkpoint's, else its last attempt's).
    fn recorded_store(&self) -> Result<Option<String>> {
        let from_checkpoint = checkpoint::latest(&self.dir)?
            .and_then(|c| c.state.fingerprint)
            .map(|f| f.store);
        let from_attempts = || {
            lossbench_core::run_info::read(&self.dir)
                .ok()
                .flatten()
                .and_then(|i| i.attempts.last().and_then(|a| a.store_id.clone()))
        };
        Ok(from_checkpoint.or_else(from_attempts))
    }

    /// Opens the run's store (`data`, else its `run.data`) and checks it is the one the run
    /// trained on.
    pub fn store(&self, data: Option<&Path>) -> Result<Store> {
        let (path, origin) = match data {
            Some(p) => (lossbench_core::paths::absolute(p), "--data".to_string()),
            None => (
                self.config.run.data.clone(),
                format!(
                    "the run's run.data, from {}; --data points elsewhere",
                    self.config.source("run.data")
                ),
            ),
        };
        let store =
            Store::open(&path).with_context(|| format!("opening the run's store ({origin})"))?;
        if let Some(recorded) = self.recorded_store()?
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
