//! A tuning trial's state (`trial.json` in its run folder, docs/tuning.md), written atomically by
//! the tuner's workers and read by every worker and by the collector (the `trials` table).
//! The run folder beside it is an ordinary one: checkpoints, resume, locks, records.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

pub const FILE: &str = "trial.json";

/// The copy of the study file a study folder keeps: the folder belongs to that study.
pub const STUDY_FILE: &str = "study.toml";

/// The validation metric a study selects on when its file names none.
pub const DEFAULT_METRIC: &str = "map_macro";

/// The metric the study whose trials lie in `trials_dir` selects on: `study.metric` of the
/// study file its folder (the one above) keeps.
pub fn study_metric(trials_dir: &Path) -> String {
    #[derive(Deserialize)]
    struct Copy {
        study: Section,
    }
    #[derive(Deserialize)]
    struct Section {
        metric: Option<String>,
    }
    trials_dir
        .parent()
        .and_then(|study| std::fs::read_to_string(study.join(STUDY_FILE)).ok())
        .and_then(|text| toml::from_str::<Copy>(&text).ok())
        .and_then(|c| c.study.metric)
        .unwrap_or_else(|| DEFAULT_METRIC.to_string())
}

/// Where a trial stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrialStatus {
    /// A worker trains it towards its next rung.
    Running,
    /// Trained to a rung; waiting for the decision to promote or prune it.
    Paused,
    /// Stopped by successive halving at a rung (its run folder can be resumed later).
    Pruned,
    /// Trained to the largest rung.
    Complete,
    /// Its training failed (the reason says why).
    Failed,
}

impl TrialStatus {
    pub fn name(self) -> &'static str {
        match self {
            TrialStatus::Running => "running",
            TrialStatus::Paused => "paused",
            TrialStatus::Pruned => "pruned",
            TrialStatus::Complete => "complete",
            TrialStatus::Failed => "failed",
        }
    }

    /// No more work for it.
    pub fn is_resolved(self) -> bool {
        matches!(
            self,
            TrialStatus::Pruned | TrialStatus::Complete | TrialStatus::Failed
        )
    }
}

/// One rung a trial reached: the epoch and the objective's value there.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub rung: u32,
    pub epoch: u32,
    pub value: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    /// The loss (job) it tunes, and its number among that loss's trials.
    pub loss: String,
    pub index: u32,
    /// Sampled values by config key (`loss.gamma`, `train.lr`), as TOML values.
    pub params: BTreeMap<String, toml::Value>,
    pub status: TrialStatus,
    /// The rung it is trained towards (`Running`), or reached.
    pub rung: u32,
    /// Its value at every rung reached.
    pub reports: Vec<Report>,
    /// The rung it was pruned at.
    #[serde(default)]
    pub pruned_at: Option<u32>,
    /// The worker training it (its lock file), the SLURM job and host, when it last changed.
    pub worker: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub slurm_job: Option<String>,
    /// Seconds of training so far (every attempt).
    #[serde(default)]
    pub seconds: f64,
    #[serde(default)]
    pub reason: Option<String>,
}

impl Trial {
    /// Its value at its highest rung reached.
    pub fn last(&self) -> Option<&Report> {
        self.reports.last()
    }

    pub fn read(dir: &Path) -> Result<Option<Trial>> {
        let path = dir.join(FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .with_context(|| format!("{}: not a trial.json", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        crate::files::write_atomically(&dir.join(FILE), &serde_json::to_vec_pretty(self)?)
    }
}
