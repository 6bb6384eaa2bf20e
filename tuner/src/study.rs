//! The study file (`jobs/tune.toml`, docs/tuning.md): where the study lives and what it trains
//! on, the recipe every trial shares, the budget (equal for every loss), successive halving, the
//! sampler and each loss's search space. Relative paths are the file's folder's; every mistake
//! is an error naming the file and the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use lossbench_core::config::{self, Origin, keys};

use crate::asha::Halving;
use crate::sampler::Sampler;
use crate::space::Space;

/// Validation metrics a study may select on (`epochs.jsonl`'s validation record).
pub const METRICS: [&str; 6] = [
    "map_macro",
    "map_micro",
    "f1_samples",
    "f1_micro",
    "f1_macro",
    "auc_macro",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudySection {
    /// The study folder: trials, final runs, the lock.
    pub out: PathBuf,
    /// The store every run trains on.
    pub data: PathBuf,
    /// The job configs (`<loss>.toml`); default: the study file's folder.
    #[serde(default)]
    pub jobs: Option<PathBuf>,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub sampler: Sampler,
    /// Trials of a loss drawn at random before TPE learns.
    #[serde(default = "defaults::startup")]
    pub startup_trials: usize,
    /// Trials of a loss trained at once at most: trial k learns from trials 0..=k−window, so
    /// that what it draws does not depend on how many workers run (docs/tuning.md).
    #[serde(default = "defaults::window")]
    pub window: u32,
    /// The validation metric selected on (higher is better).
    #[serde(default = "defaults::metric")]
    pub metric: String,
}

mod defaults {
    pub fn startup() -> usize {
        5
    }
    pub fn window() -> u32 {
        4
    }
    pub fn metric() -> String {
        lossbench_core::trial::DEFAULT_METRIC.into()
    }
    pub fn seeds() -> u64 {
        3
    }
}

/// The budget, the same for every loss.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Trials per loss.
    pub trials: u32,
    /// Epochs per loss in all (trials stop being started when the next could exceed it).
    #[serde(default)]
    pub epochs: Option<u32>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinalSection {
    /// Seeds each loss's best configuration and its defaults are trained and tested with.
    #[serde(default = "defaults::seeds")]
    pub seeds: u64,
}

impl Default for FinalSection {
    fn default() -> Self {
        FinalSection { seeds: 3 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    study: StudySection,
    budget: Budget,
    asha: Halving,
    /// Config keys every trial and final run shares (`"train.batch_size" = 32`).
    #[serde(default)]
    recipe: BTreeMap<String, toml::Value>,
    #[serde(default, rename = "final")]
    final_runs: FinalSection,
    /// Each loss's search space, by its job config's name.
    losses: BTreeMap<String, Space>,
}

/// A study, read and checked.
#[derive(Debug, Clone)]
pub struct Study {
    /// The study file, as given, and its bytes (a study folder belongs to one study).
    pub path: PathBuf,
    pub text: String,
    pub section: StudySection,
    pub budget: Budget,
    pub asha: Halving,
    pub recipe: BTreeMap<String, toml::Value>,
    pub final_runs: FinalSection,
    /// In the file's order.
    pub losses: Vec<(String, Space)>,
    pub jobs: PathBuf,
}

impl Study {
    pub fn load(path: &Path) -> Result<Study> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the study file {}", path.display()))?;
        let file: File = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.to_string().trim_end()))?;
        let base = lossbench_core::paths::absolute(path)
            .parent()
            .map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
        let at = |p: &Path| lossbench_core::paths::absolute_from(&base, p);
        let mut section = file.study;
        section.out = at(&section.out);
        section.data = at(&section.data);
        let jobs = section.jobs.as_deref().map_or_else(|| base.clone(), at);
        // The file's order of losses (a BTreeMap sorts them): as written.
        let order: Vec<String> = toml::from_str::<toml::Table>(&text)?
            .get("losses")
            .and_then(toml::Value::as_table)
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default();
        let mut spaces = file.losses;
        let losses = order
            .into_iter()
            .filter_map(|l| spaces.remove_entry(&l))
            .collect();
        let study = Study {
            path: path.to_path_buf(),
            text,
            section,
            budget: file.budget,
            asha: file.asha,
            recipe: file.recipe,
            final_runs: file.final_runs,
            losses,
            jobs,
        };
        study
            .check()
            .map_err(|(key, why)| anyhow::anyhow!("{}: `{key}`: {why}", path.display()))?;
        Ok(study)
    }

    fn check(&self) -> Result<(), (String, String)> {
        self.asha.check().map_err(|(k, m)| (k.to_string(), m))?;
        let metric = &self.section.metric;
        if metric.starts_with("test") {
            return Err((
                "study.metric".into(),
                format!(
                    "{metric}: trials never see the test split (selecting on it would fit the \
                     comparison to the test set); choose a validation metric: {}",
                    METRICS.join(", ")
                ),
            ));
        }
        if !METRICS.contains(&metric.as_str()) {
            return Err((
                "study.metric".into(),
                format!("{metric}: not one of {}", METRICS.join(", ")),
            ));
        }
        if self.budget.trials == 0 {
            return Err(("budget.trials".into(), "must be at least 1".into()));
        }
        if self.section.window == 0 {
            return Err(("study.window".into(), "must be at least 1".into()));
        }
        if self.losses.is_empty() {
            return Err(("losses".into(), "no loss to tune".into()));
        }
        for (loss, space) in &self.losses {
            if !self.jobs.join(format!("{loss}.toml")).is_file() {
                return Err((
                    format!("losses.{loss}"),
                    format!(
                        "no job config {}",
                        self.jobs.join(format!("{loss}.toml")).display()
                    ),
                ));
            }
            for (key, p) in space {
                p.check()
                    .map_err(|why| (format!("losses.{loss}.\"{key}\""), why))?;
                if self.recipe.contains_key(key) {
                    return Err((
                        format!("losses.{loss}.\"{key}\""),
                        "is in the shared recipe too: a key is either shared or tuned".into(),
                    ));
                }
            }
        }
        let loss_key = |k: &String| k.split('.').next() == Some(keys::LOSS_SECTION);
        if let Some(key) = self.recipe.keys().find(|k| loss_key(k)) {
            return Err((
                format!("recipe.\"{key}\""),
                "a loss parameter cannot be shared by every loss; tune it in [losses.<loss>]"
                    .into(),
            ));
        }
        self.check_against_jobs()
    }

    /// Each loss's job config with the recipe and its search space at its edges (every
    /// range's low ends together, then its high ends; each choice) must be a config the
    /// trainer accepts: a key it does not know, or a value it refuses, is this file's error
    /// now rather than every trial's failure later.
    fn check_against_jobs(&self) -> Result<(), (String, String)> {
        let named = |table: &str, key: &str, value: &toml::Value| {
            let origin = Origin::Named(format!("{table}.\"{key}\" = {value}"));
            (key.to_string(), value.clone(), origin)
        };
        for (loss, space) in &self.losses {
            let edges: Vec<(&String, Vec<toml::Value>)> =
                space.iter().map(|(k, p)| (k, p.edges())).collect();
            let most = edges.iter().map(|(_, e)| e.len()).max().unwrap_or(1);
            for i in 0..most {
                let mut overrides: Vec<_> = self
                    .recipe
                    .iter()
                    .map(|(k, v)| named("recipe", k, v))
                    .collect();
                let table = format!("losses.{loss}");
                overrides.extend(
                    edges
                        .iter()
                        .map(|(k, e)| named(&table, k, &e[i.min(e.len() - 1)])),
                );
                let job = self.jobs.join(format!("{loss}.toml"));
                config::load(&job, overrides).map_err(|e| (table.clone(), e.to_string()))?;
            }
        }
        Ok(())
    }

    /// The trials folder, the final runs' folder.
    pub fn trials_dir(&self) -> PathBuf {
        self.section.out.join("trials")
    }

    pub fn final_dir(&self) -> PathBuf {
        self.section.out.join("final")
    }

    /// A trial's run id.
    pub fn trial_id(loss: &str, index: u32) -> String {
        format!("{loss}-t{index:04}")
    }

    pub fn space(&self, loss: &str) -> &Space {
        &self
            .losses
            .iter()
            .find(|(l, _)| l == loss)
            .expect("a loss of the study")
            .1
    }

    /// Claims the study folder for this study file: a folder made by another study file is
    /// refused (two studies submitted into one folder must be the same study).
    pub fn claim_folder(&self) -> Result<()> {
        let out = &self.section.out;
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let copy = out.join(lossbench_core::trial::STUDY_FILE);
        if lossbench_core::files::create_new_atomically(&copy, self.text.as_bytes())? {
            return Ok(());
        }
        let there = std::fs::read_to_string(&copy)
            .with_context(|| format!("reading {}", copy.display()))?;
        if there != self.text {
            bail!(
                "{} belongs to another study ({} differs from {}): use another [study] out",
                out.display(),
                copy.display(),
                self.path.display()
            );
        }
        Ok(())
    }
}
