//! The job configuration (docs/training.md, "Configuration"): the one typed schema of a run's
//! settings, without libtorch. The trainer loads it ([`load`]: a TOML file that may extend
//! another, then command-line overrides; unknown keys, wrong types and bad values are errors
//! naming the key and the file and line that set it) and turns it into runtime objects; the
//! collector, the tuner and a resume read a run folder's `config.toml` back through it
//! ([`crate::run_folder`]). Every default is written once, in these types; the digests and
//! the keys a resume may change ([`digest`]) are derived from them.

pub mod digest;
mod load;
pub mod loss;
pub mod recipe;
pub mod recorded;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use load::{ConfigError, Flag, Origin, Overrides, load, parse_override};

/// Keys other programs set on the trainer's command line (`--set KEY=VALUE`) or look for in
/// theirs: the tuner names its final runs' job, turns the trainer's early stopping off in its
/// trials and keeps the losses' own parameters out of its shared recipe.
pub mod keys {
    pub const JOB: &str = "run.job";
    pub const DATA: &str = "run.data";
    pub const EPOCHS: &str = "train.epochs";
    pub const PATIENCE: &str = "selection.patience";
    /// The section of a loss's parameters (`loss.gamma`).
    pub const LOSS_SECTION: &str = "loss";
}
pub use loss::{LossSpec, Mix, MixPart, SingleLoss};
use recipe::{Augment, Dropout, OptimizerKind, Schedule, Selection};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub run: RunSection,
    pub train: TrainSection,
    pub model: ModelSection,
    pub data: DataSection,
    pub loss: LossSpec,
    pub checkpoint: CheckpointSection,
    pub lrp: LrpSection,
    /// The best epoch and early stopping (docs/training.md, "Training recipes").
    #[serde(default)]
    pub selection: Selection,
    /// TensorBoard event files (docs/training.md, "Watching a run").
    #[serde(default)]
    pub tensorboard: TensorboardSection,
    /// Where the path keys were set (`run.data` → `jobs/base.toml:7`), for messages.
    #[serde(skip)]
    pub sources: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    pub seed: u64,
    /// The store written by data-prep.
    pub data: PathBuf,
    /// Folder holding one folder per run.
    pub out: PathBuf,
    /// Name of the job: the config file's stem unless set (`jobs/focal.toml` → `focal`).
    #[serde(default)]
    pub job: String,
    /// Name of the run folder; default `<job>-seed<seed>`, `<job>-<arch>-seed<seed>` for an
    /// architecture other than the K-Branch CNN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    pub device: DeviceChoice,
    /// Compute threads on the CPU; 0 = all cores.
    pub threads: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    pub epochs: u32,
    /// Patches per optimizer step (the global batch).
    pub batch_size: usize,
    /// Micro-batches per step; `batch_size` must be a multiple of it.
    pub accumulate: usize,
    pub lr: f64,
    /// L2 weight decay on the conv weights.
    pub conv_weight_decay: f64,
    pub loader_threads: usize,
    /// Batches read ahead of the one being computed.
    pub prefetch_batches: usize,
    /// bf16 autocast of the forward pass (CUDA only; an error on the CPU).
    pub bf16: bool,
    #[serde(default)]
    pub optimizer: OptimizerKind,
    /// AdamW's decoupled weight decay (every weight).
    #[serde(default)]
    pub weight_decay: f64,
    /// Targets y·(1 − ε) + ε/2 for the losses built on binary cross-entropy.
    #[serde(default)]
    pub label_smoothing: f64,
    #[serde(default)]
    pub schedule: Schedule,
    #[serde(default)]
    pub augment: Augment,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    pub arch: Arch,
    /// `true` (the network's own rates), `false` (none: device-equivalence checks) or a rate.
    pub dropout: Dropout,
    /// ResNet-50's stochastic depth: the last block's residual branch is dropped with this
    /// probability, earlier blocks' with linearly less.
    #[serde(default)]
    pub drop_path: f64,
}

/// Where the training and validation splits live while training (docs/training.md, "Resident
/// data").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Residency {
    /// Read from the store every epoch by the loader threads.
    Off,
    /// Decoded once into host memory (pinned when training on CUDA).
    Host,
    /// Decoded once into the training device's memory.
    Device,
    /// Device if it fits beside the model, else host if it fits in RAM, else off; per split.
    Auto,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    pub resident: Residency,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSection {
    /// Newest checkpoints kept besides the best one.
    pub keep_last: usize,
}

/// LRP snapshots during training (docs/lrp.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LrpSection {
    /// A snapshot after every this many epochs; 0 = none.
    pub every: u32,
    /// Probe patches picked from the validation split (rare classes first) when `patches` is empty.
    pub probes: usize,
    /// Probe patches by name, from any split.
    #[serde(default)]
    pub patches: Vec<String>,
    pub composite: Composite,
    /// ε of the epsilon rule.
    pub epsilon: f64,
}

/// TensorBoard event files of the run (`<run>/tensorboard/`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorboardSection {
    /// A point of the training curves every this many optimizer steps; 0 writes no event files.
    pub every: u64,
}

impl Default for TensorboardSection {
    fn default() -> Self {
        TensorboardSection { every: 10 }
    }
}

/// `model.arch`: the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    #[serde(rename = "kbranch")]
    KBranch,
    #[serde(rename = "resnet50")]
    ResNet50,
    Vgg16,
}

impl Arch {
    /// Every architecture, in the order reports show them.
    pub const ALL: [Arch; 3] = [Arch::KBranch, Arch::ResNet50, Arch::Vgg16];

    /// The name written in configs and tables.
    pub fn name(self) -> &'static str {
        match self {
            Arch::KBranch => "kbranch",
            Arch::ResNet50 => "resnet50",
            Arch::Vgg16 => "vgg16",
        }
    }

    /// Its title in reports.
    pub fn title(self) -> &'static str {
        match self {
            Arch::KBranch => "K-Branch CNN",
            Arch::ResNet50 => "ResNet-50",
            Arch::Vgg16 => "VGG-16-BN",
        }
    }

    /// The architecture of a table's `arch` name.
    pub fn named(name: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// `lrp.composite`: which LRP rule each layer gets (docs/lrp.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Composite {
    /// zennit's EpsilonPlusFlat: flat on each branch's first conv, z+ on the other convs,
    /// ε on the dense layers.
    EpsilonPlusFlat,
    /// ε on every layer.
    Epsilon,
    /// α1-β0 (the same as z+) on every layer.
    Alpha1Beta0,
}

impl std::str::FromStr for Composite {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "epsilon-plus-flat" => Composite::EpsilonPlusFlat,
            "epsilon" => Composite::Epsilon,
            "alpha1-beta0" => Composite::Alpha1Beta0,
            other => {
                return Err(format!(
                    "unknown LRP composite {other:?} (epsilon-plus-flat, epsilon, alpha1-beta0)"
                ));
            }
        })
    }
}

impl Config {
    /// The config as a TOML table (what a run folder's `config.toml` holds).
    pub fn table(&self) -> toml::Table {
        toml::Table::try_from(self).expect("a config serialises to a table")
    }

    /// Where `key` was set, for messages ("jobs/base.toml:7", "the command line (--data)").
    pub fn source(&self, key: &str) -> &str {
        self.sources
            .get(key)
            .map_or("a config file", String::as_str)
    }

    /// Value checks beyond types: `Err((key, why))`.
    pub(crate) fn check(&self) -> Result<(), (String, String)> {
        self.check_sections().map_err(|(k, m)| (k.to_string(), m))?;
        self.check_recipe().map_err(|(k, m)| (k.to_string(), m))?;
        let schedule = self.train.schedule.check();
        schedule.map_err(|(k, m)| (format!("train.schedule.{k}"), m))?;
        self.loss.check().map_err(|(k, m)| (format!("loss.{k}"), m))
    }

    /// The recipe's values, and the combinations that do not exist.
    fn check_recipe(&self) -> Result<(), (&'static str, String)> {
        let (t, m) = (&self.train, &self.model);
        let unit = |key, v: f64, top: f64| {
            if (0.0..top).contains(&v) {
                Ok(())
            } else {
                Err((key, format!("must be at least 0 and below {top}, got {v}")))
            }
        };
        unit("train.weight_decay", t.weight_decay, f64::INFINITY)?;
        unit("train.label_smoothing", t.label_smoothing, 0.5)?;
        unit("model.drop_path", m.drop_path, 1.0)?;
        if let Dropout::Rate(r) = m.dropout {
            unit("model.dropout", r, 1.0)?;
        }
        if t.weight_decay > 0.0 && t.optimizer == OptimizerKind::Adam {
            let why = "is AdamW's decoupled decay: set train.optimizer = \"adamw\", or use \
                       train.conv_weight_decay with Adam";
            return Err(("train.weight_decay", why.into()));
        }
        if m.drop_path > 0.0 && m.arch != Arch::ResNet50 {
            let why = format!(
                "drops residual branches, which only resnet50 has (not {})",
                m.arch.name()
            );
            return Err(("model.drop_path", why));
        }
        if t.label_smoothing > 0.0 && !self.loss.smoothable() {
            let why = format!(
                "is defined for the losses on binary cross-entropy ({}), not {}",
                loss::SMOOTHABLE.join(", "),
                self.loss.name()
            );
            return Err(("train.label_smoothing", why));
        }
        Ok(())
    }

    fn check_sections(&self) -> Result<(), (&'static str, String)> {
        let t = &self.train;
        let positive = |key, v: f64| {
            if v > 0.0 && v.is_finite() {
                Ok(())
            } else {
                Err((key, format!("must be a positive number, got {v}")))
            }
        };
        let at_least_one = |key, v: usize| {
            if v >= 1 {
                Ok(())
            } else {
                Err((key, "must be at least 1".to_string()))
            }
        };
        if t.epochs == 0 {
            return Err(("train.epochs", "must be at least 1".into()));
        }
        at_least_one("train.batch_size", t.batch_size)?;
        at_least_one("train.accumulate", t.accumulate)?;
        if !t.batch_size.is_multiple_of(t.accumulate) {
            return Err((
                "train.accumulate",
                format!("must divide train.batch_size = {}", t.batch_size),
            ));
        }
        positive("train.lr", t.lr)?;
        if !(t.conv_weight_decay >= 0.0 && t.conv_weight_decay.is_finite()) {
            return Err((
                "train.conv_weight_decay",
                format!("must be 0 or more, got {}", t.conv_weight_decay),
            ));
        }
        at_least_one("train.loader_threads", t.loader_threads)?;
        at_least_one("train.prefetch_batches", t.prefetch_batches)?;
        at_least_one("checkpoint.keep_last", self.checkpoint.keep_last)?;
        if self.lrp.every > 0 && self.lrp.patches.is_empty() {
            at_least_one("lrp.probes", self.lrp.probes)?;
        }
        positive("lrp.epsilon", self.lrp.epsilon)?;
        if let Some(id) = &self.run.run_id
            && (id.is_empty() || id.contains(['/', '\\']) || id.starts_with('.'))
        {
            return Err((
                "run.run_id",
                format!("{id:?} is not usable as a folder name"),
            ));
        }
        Ok(())
    }

    /// The run's folder name.
    pub fn run_id(&self) -> String {
        self.run
            .run_id
            .clone()
            .unwrap_or_else(|| match self.model.arch {
                Arch::KBranch => format!("{}-seed{}", self.run.job, self.run.seed),
                arch => format!("{}-{}-seed{}", self.run.job, arch.name(), self.run.seed),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::recipe::{Decay, SelectMetric};
    use super::*;
    use std::path::Path;

    fn jobs() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../jobs")
    }

    #[test]
    fn every_shipped_job_loads_with_the_study_defaults() {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(jobs()).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_stem().unwrap().to_string_lossy().to_string();
            // The base layer, and tuning studies (docs/tuning.md), are not jobs.
            if name == "base" || name.starts_with("tune") {
                continue;
            }
            let c = load(&path, vec![]).unwrap();
            if name == "reben" {
                let t = &c.train;
                assert_eq!(
                    (t.batch_size, t.lr, t.epochs, t.weight_decay),
                    (512, 1e-3, 100, 0.01)
                );
                assert_eq!(
                    (t.optimizer, t.schedule.decay, t.schedule.warmup_steps),
                    (OptimizerKind::Adamw, Decay::Cosine, 1000)
                );
                assert_eq!(
                    (c.model.arch, c.model.dropout, c.model.drop_path),
                    (Arch::ResNet50, Dropout::Rate(0.15), 0.15)
                );
                assert_eq!(
                    (c.selection.metric, c.selection.patience),
                    (SelectMetric::MapMacro, 5)
                );
                assert!(t.augment.flips && !t.augment.rotations);
                continue;
            }
            assert_eq!(
                (c.train.batch_size, c.train.lr, c.train.epochs),
                (1024, 1e-4, 80)
            );
            assert_eq!(
                (c.model.arch, c.data.resident),
                (Arch::KBranch, Residency::Auto)
            );
            assert_eq!(c.run_id(), format!("{name}-seed0"));
            names.push((name, c.loss.name()));
        }
        // The study's seven are there, each job named after its loss.
        for &loss in loss::STUDY_LOSSES {
            assert!(
                names.iter().any(|(n, l)| n == loss && *l == loss),
                "{names:?}"
            );
        }
    }

    /// The keys added after run folders were first written digest as absent at their
    /// defaults ([`digest`]): the study's jobs must leave them there.
    #[test]
    fn added_keys_default_as_the_digest_assumes() {
        let c = load(&jobs().join("ce.toml"), vec![]).unwrap();
        let flat = digest::flatten(&c.table());
        let added = digest::added_with_defaults();
        assert_eq!(added.len(), 14);
        for (key, default) in added {
            let value = flat.iter().find(|(k, _)| k == key).map(|(_, v)| v);
            assert_eq!(value, Some(default), "{key}");
        }
    }

    fn set(item: &str) -> (String, toml::Value, Origin) {
        parse_override(item).unwrap()
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn job_with(extra: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(jobs().join("base.toml"), dir.path().join("base.toml")).unwrap();
        let p = write(
            dir.path(),
            "job.toml",
            &format!("base = \"base.toml\"\n\n[loss]\nname = \"focal\"\n{extra}"),
        );
        (dir, p)
    }

    #[test]
    fn errors_name_the_key_file_and_line() {
        let (_d, p) = job_with("\n[train]\nlrr = 0.1\n");
        let e = load(&p, vec![]).unwrap_err().to_string();
        assert!(
            e.contains("job.toml:7: `train.lrr`: unknown field `lrr`"),
            "{e}"
        );

        let (_d, p) = job_with("\n[train]\nepochs = \"many\"\n");
        let e = load(&p, vec![]).unwrap_err().to_string();
        assert!(
            e.contains("job.toml:7") && e.contains("train.epochs"),
            "{e}"
        );

        let (_d, p) = job_with("\n[train]\nlr = -1.0\n");
        let e = load(&p, vec![]).unwrap_err().to_string();
        assert!(
            e.contains("job.toml:7") && e.contains("train.lr") && e.contains("positive"),
            "{e}"
        );

        let (_d, p) = job_with("alpha = 1.5\n");
        let e = load(&p, vec![]).unwrap_err().to_string();
        assert!(
            e.contains("job.toml:5") && e.contains("loss.alpha") && e.contains("between 0 and 1"),
            "{e}"
        );

        let (_d, p) = job_with("gama = 3\n");
        let e = load(&p, vec![]).unwrap_err().to_string();
        assert!(
            e.contains(
                "job.toml:5: `loss.gama`: unknown field `gama`, expected `gamma` or `alpha`"
            ),
            "{e}"
        );

        let (_d, p) = job_with("");
        let e = load(&p, vec![set("train.accumulate=3")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("the command line (--set train.accumulate=3): `train.accumulate`"),
            "{e}"
        );
        // A key the config does not have, set on the command line: blamed on it, not the file.
        let e = load(&p, vec![set("foo.bar=1")]).unwrap_err().to_string();
        assert!(
            e.starts_with("the command line (--set foo.bar=1): `foo`: unknown field `foo`"),
            "{e}"
        );
        let e = parse_override("train.batch_size=99999999999999999999")
            .unwrap_err()
            .to_string();
        assert!(e.contains("out of range"), "{e}");

        let (d, _) = job_with("");
        let p = write(
            d.path(),
            "bad.toml",
            "base = \"base.toml\"\n[loss]\nname = \"mse\"\n",
        );
        let e = load(&p, vec![]).unwrap_err().to_string();
        assert!(
            e.contains("bad.toml:3: `loss.name`: unknown variant `mse`, expected one of `ce`"),
            "{e}"
        );

        let p = write(d.path(), "syntax.toml", "[train\n");
        let e = load(&p, vec![]).unwrap_err().to_string();
        assert!(e.contains("syntax.toml") && e.contains("line 1"), "{e}");
    }

    #[test]
    fn overrides_win_and_name_the_run() {
        let (_d, p) = job_with("");
        let c = load(&p, vec![set("run.seed=4"), set("train.epochs=2")]).unwrap();
        assert_eq!(
            (c.run.seed, c.train.epochs, c.run.job.as_str()),
            (4, 2, "job")
        );
        assert_eq!(c.run_id(), "job-seed4");
        let c = load(&p, vec![set("model.arch=\"resnet50\"")]).unwrap();
        assert_eq!(c.run_id(), "job-resnet50-seed0");
        let c = load(&p, vec![set("loss.gamma=3.0")]).unwrap();
        assert_eq!(
            c.loss,
            LossSpec::Single(SingleLoss::Focal {
                gamma: 3.0,
                alpha: None
            })
        );
    }

    /// Overrides through a value that is not a table are errors naming it, never panics.
    #[test]
    fn overrides_through_values_are_refused() {
        let (_d, p) = job_with("");
        for (overrides, key, says) in [
            (
                vec![set("train.lr.x=1")],
                "train.lr.x",
                "`train.lr` is not a table (its value is of type float)",
            ),
            (
                vec![set("run=1"), set("run.seed=2")],
                "run.seed",
                "`run` is not a table (its value is of type integer)",
            ),
            (vec![set("train..lr=1")], "train..lr", "not a dotted key"),
        ] {
            let e = load(&p, overrides).unwrap_err().to_string();
            assert!(
                e.contains("the command line") && e.contains(key) && e.contains(says),
                "{e}"
            );
        }
    }
}
