//! The training recipe beyond the study's (docs/training.md, "Training recipes"): the optimizer
//! (Adam with L2 decay of the conv weights, as the study; or AdamW with decoupled decay), the
//! learning-rate schedule, augmentation, regularisation (dropout rate, drop-path, label
//! smoothing), and how the best epoch is chosen and training stopped early. Every default keeps
//! the study's recipe, and config files written before these keys read the same.

use serde::{Deserialize, Serialize};

/// `train.optimizer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Adam; `train.conv_weight_decay` is an L2 term of the conv weights' gradients.
    #[default]
    Adam,
    /// AdamW: `train.weight_decay` shrinks every weight by lr·decay per step, apart from the
    /// gradient (Loshchilov & Hutter), as `torch.optim.AdamW`.
    Adamw,
}

/// How the learning rate decays after the warm-up (`train.schedule.decay`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    #[default]
    Constant,
    /// Cosine from `train.lr` to `min_lr` over the steps after the warm-up, to the last epoch's
    /// end (PyTorch's `CosineAnnealingLR`).
    Cosine,
    /// × `gamma` every `step_epochs` epochs (PyTorch's `StepLR`).
    Step,
}

/// `[train.schedule]`: the learning rate of every optimizer step, a function of the step count
/// alone (so a resumed run continues it exactly).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Schedule {
    /// Optimizer steps of linear warm-up from `warmup_start × lr` to `lr` (PyTorch's `LinearLR`),
    /// then the decay.
    pub warmup_steps: u64,
    pub warmup_start: f64,
    pub decay: Decay,
    /// `cosine`: the floor.
    pub min_lr: f64,
    /// `step`: epochs between decays, and the factor.
    pub step_epochs: u32,
    pub gamma: f64,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            warmup_steps: 0,
            warmup_start: 0.001,
            decay: Decay::Constant,
            min_lr: 0.0,
            step_epochs: 30,
            gamma: 0.1,
        }
    }
}

impl Schedule {
    /// The learning rate of the optimizer step that follows `taken` steps, with `lr` the peak,
    /// `steps_per_epoch` and `epochs` the run's (the cosine's horizon).
    pub fn lr(&self, lr: f64, taken: u64, steps_per_epoch: u64, epochs: u32) -> f64 {
        let w = self.warmup_steps;
        if taken < w {
            // LinearLR: start factor, rising linearly to 1 at step w.
            let f = self.warmup_start + (1.0 - self.warmup_start) * taken as f64 / w as f64;
            return lr * f;
        }
        let t = taken - w;
        match self.decay {
            Decay::Constant => lr,
            Decay::Cosine => {
                let total = (steps_per_epoch * u64::from(epochs))
                    .saturating_sub(w)
                    .max(1);
                let t = t.min(total) as f64 / total as f64;
                self.min_lr + (lr - self.min_lr) * (1.0 + (std::f64::consts::PI * t).cos()) / 2.0
            }
            Decay::Step => {
                let every = steps_per_epoch * u64::from(self.step_epochs.max(1));
                lr * self.gamma.powi((t / every) as i32)
            }
        }
    }

    /// Value checks: `Err((key, why))` with the key under `train.schedule`.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if !(self.warmup_start > 0.0 && self.warmup_start <= 1.0) {
            return Err((
                "warmup_start",
                format!("must be in (0, 1], got {}", self.warmup_start),
            ));
        }
        if !(self.min_lr >= 0.0 && self.min_lr.is_finite()) {
            return Err(("min_lr", format!("must be 0 or more, got {}", self.min_lr)));
        }
        if self.decay == Decay::Step && !(self.gamma > 0.0 && self.gamma <= 1.0) {
            return Err(("gamma", format!("must be in (0, 1], got {}", self.gamma)));
        }
        if self.decay == Decay::Step && self.step_epochs == 0 {
            return Err(("step_epochs", "must be at least 1".into()));
        }
        Ok(())
    }
}

/// `[train.augment]`: random flips and 90° rotations of every band group at its native
/// resolution (the same transform for the three groups of a patch), drawn from (seed, epoch,
/// patch) alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Augment {
    /// Horizontal and vertical flips, each with probability 1/2.
    pub flips: bool,
    /// A rotation by 0, 90, 180 or 270 degrees, each with probability 1/4.
    pub rotations: bool,
}

/// `model.dropout`: `true` the network's own dropout (the K-Branch CNN: 0.25 after its conv
/// blocks, 0.5 after its dense layers; VGG-16-BN: 0.5 in its classifier; ResNet-50: none),
/// `false` none, a number that rate wherever the network has dropout and, for ResNet-50,
/// before its classifier.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Dropout {
    Switch(bool),
    Rate(f64),
}

impl Dropout {
    /// The rate replacing a network's own `default` one (its head's, for a network without).
    pub fn rate(self, default: f64) -> f64 {
        match self {
            Dropout::Switch(true) => default,
            Dropout::Switch(false) => 0.0,
            Dropout::Rate(r) => r,
        }
    }
}

/// What model selection and early stopping watch (`selection.metric`), on the validation split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SelectMetric {
    /// F1, sample average: the study's.
    #[default]
    F1Samples,
    F1Micro,
    F1Macro,
    /// Macro mean average precision: reBEN's.
    MapMacro,
    MapMicro,
    /// The validation loss (lower is better).
    ValLoss,
}

impl SelectMetric {
    pub fn name(self) -> &'static str {
        match self {
            SelectMetric::F1Samples => "f1_samples",
            SelectMetric::F1Micro => "f1_micro",
            SelectMetric::F1Macro => "f1_macro",
            SelectMetric::MapMacro => "map_macro",
            SelectMetric::MapMicro => "map_micro",
            SelectMetric::ValLoss => "val_loss",
        }
    }

    /// The metric of an epoch's record, signed so that higher is better.
    pub fn score(self, r: &crate::records::EpochRecord) -> f64 {
        let ranked = |f: fn(&crate::ranking::Ranking) -> Option<f64>| {
            r.val_ranking
                .as_ref()
                .and_then(f)
                .unwrap_or(f64::NEG_INFINITY)
        };
        match self {
            SelectMetric::F1Samples => r.val.samples.f1,
            SelectMetric::F1Micro => r.val.micro.f1,
            SelectMetric::F1Macro => r.val.macro_avg.f1,
            SelectMetric::MapMacro => ranked(|k| k.map_macro),
            SelectMetric::MapMicro => ranked(|k| k.map_micro),
            SelectMetric::ValLoss => -r.val_loss,
        }
    }
}

/// `[selection]`: the best epoch (whose weights are tested) and early stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Selection {
    pub metric: SelectMetric,
    /// Stop after this many epochs without a better validation metric; 0 never stops early.
    pub patience: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_warm_up_then_decay() {
        let s = Schedule {
            warmup_steps: 10,
            decay: Decay::Cosine,
            min_lr: 0.1,
            ..Default::default()
        };
        assert!((s.lr(1.0, 0, 10, 3) - 0.001).abs() < 1e-12);
        assert!((s.lr(1.0, 5, 10, 3) - (0.001 + 0.999 * 0.5)).abs() < 1e-12);
        assert_eq!(s.lr(1.0, 10, 10, 3), 1.0);
        assert!(
            (s.lr(1.0, 20, 10, 3) - 0.55).abs() < 1e-12,
            "{}",
            s.lr(1.0, 20, 10, 3)
        );
        assert!((s.lr(1.0, 30, 10, 3) - 0.1).abs() < 1e-12);
        let step = Schedule {
            decay: Decay::Step,
            step_epochs: 2,
            gamma: 0.5,
            ..Default::default()
        };
        assert_eq!(
            [0, 19, 20, 40].map(|t| step.lr(1.0, t, 10, 9)),
            [1.0, 1.0, 0.5, 0.25]
        );
        assert_eq!(Schedule::default().lr(0.3, 1000, 10, 3), 0.3);
    }

    #[test]
    fn dropout_reads_as_a_switch_or_a_rate() {
        let read = |v: &str| {
            toml::from_str::<toml::Table>(&format!("d = {v}")).unwrap()["d"]
                .clone()
                .try_into::<Dropout>()
                .unwrap()
        };
        assert_eq!(read("true").rate(0.5), 0.5);
        assert_eq!(read("false").rate(0.5), 0.0);
        assert_eq!(read("0.15").rate(0.5), 0.15);
    }
}
