//! The multi-label losses (docs/losses.md): the study's seven and the newer ones. Each takes
//! logits `[B, 19]` and 0/1 targets `[B, 19]` (any float kind), returns the batch mean as a
//! scalar, and has a decision rule logits → 0/1 labels (`[B, 19]`, uint8). Configs name them
//! through [`LossSpec`]; [`Loss::new`] resolves a spec with the training split's label counts.

mod asl;
mod ce;
mod focal;
mod hamming;
mod huber;
mod poly1;
mod ranking;
mod sparsemax;
mod wce;
mod zlpr;

use std::fmt;

use tch::{Kind, Tensor};

use lossbench_core::config::{LossSpec, SingleLoss};
pub use sparsemax::sparsemax;
pub use wce::positive_weights;

/// A loss ready to compute: its spec with what the data determines (W-CE's weights).
#[derive(Debug, Clone, PartialEq)]
pub enum Loss {
    Single {
        spec: SingleLoss,
        pos_weight: Vec<f64>,
    },
    /// Weighted parts; labels decided by part `decide_by`.
    Mix {
        parts: Vec<(f64, Loss)>,
        decide_by: usize,
    },
}

impl Loss {
    /// Resolves a spec; W-CE and the weighted focal loss take their positive weights from the
    /// training split's label counts ([`positive_weights`]).
    pub fn new(spec: &LossSpec, train_label_counts: &[u64], train_patches: u64) -> Loss {
        let single = |s: &SingleLoss| {
            let pos_weight = match s {
                SingleLoss::Wce | SingleLoss::WeightedFocal { .. } => {
                    positive_weights(train_label_counts, train_patches)
                }
                _ => Vec::new(),
            };
            Loss::Single {
                spec: s.clone(),
                pos_weight,
            }
        };
        match spec {
            LossSpec::Single(s) => single(s),
            LossSpec::Mix(m) => Loss::Mix {
                parts: m.mix.iter().map(|p| (p.weight, single(&p.loss))).collect(),
                decide_by: m
                    .decision
                    .as_ref()
                    .and_then(|d| m.mix.iter().position(|p| p.loss.name() == d))
                    .unwrap_or(0),
            },
        }
    }

    /// A loss with its default parameters and unit W-CE weights (tests, benchmarks).
    pub fn with_defaults(name: &str) -> Result<Loss, String> {
        let spec = SingleLoss::with_defaults(name)?;
        Ok(Loss::new(&LossSpec::Single(spec), &[], 0).with_unit_weights())
    }

    fn with_unit_weights(self) -> Loss {
        match self {
            Loss::Single { spec, pos_weight }
                if pos_weight.is_empty()
                    && matches!(spec, SingleLoss::Wce | SingleLoss::WeightedFocal { .. }) =>
            {
                Loss::Single {
                    spec,
                    pos_weight: vec![1.0; lossbench_core::labels::NUM_CLASSES],
                }
            }
            other => other,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Loss::Single { spec, .. } => spec.name(),
            Loss::Mix { .. } => "mix",
        }
    }

    /// W-CE's positive weights, where the loss uses them (first found in a mix).
    pub fn positive_weights(&self) -> Option<&[f64]> {
        match self {
            Loss::Single { pos_weight, .. } if !pos_weight.is_empty() => Some(pos_weight),
            Loss::Single { .. } => None,
            Loss::Mix { parts, .. } => parts.iter().find_map(|(_, l)| l.positive_weights()),
        }
    }

    /// Batch mean of the loss (a scalar tensor that carries gradients).
    pub fn compute(&self, logits: &Tensor, targets: &Tensor) -> Tensor {
        let y = targets.to_kind(logits.kind());
        let z = logits;
        match self {
            Loss::Mix { parts, .. } => {
                let mut total = parts[0].1.compute(z, &y) * parts[0].0;
                for (w, l) in &parts[1..] {
                    total += l.compute(z, &y) * *w;
                }
                total
            }
            Loss::Single { spec, pos_weight } => match *spec {
                SingleLoss::Ce => ce::loss(z, &y),
                SingleLoss::Wce => wce::loss(z, &y, pos_weight),
                SingleLoss::Focal { gamma, alpha } => focal::loss(
                    z,
                    &y,
                    gamma,
                    alpha.map_or(focal::Weighting::None, focal::Weighting::Alpha),
                ),
                SingleLoss::WeightedFocal { gamma } => {
                    focal::loss(z, &y, gamma, focal::Weighting::Positives(pos_weight))
                }
                SingleLoss::Hamming => hamming::loss(z, &y),
                SingleLoss::Huber => huber::loss(z, &y),
                SingleLoss::Sparsemax => sparsemax::loss(z, &y),
                SingleLoss::Ranking { margin, .. } => ranking::loss(z, &y, margin),
                SingleLoss::Asl {
                    gamma_pos,
                    gamma_neg,
                    clip,
                } => asl::loss(z, &y, gamma_pos, gamma_neg, clip),
                SingleLoss::Zlpr => zlpr::loss(z, &y),
                SingleLoss::Poly1 { epsilon } => poly1::loss(z, &y, epsilon),
            },
        }
    }

    /// Predicted labels, 0/1 as uint8.
    pub fn decide(&self, logits: &Tensor) -> Tensor {
        let spec = match self {
            Loss::Mix { parts, decide_by } => return parts[*decide_by].1.decide(logits),
            Loss::Single { spec, .. } => spec,
        };
        let positive = match *spec {
            // p = sigmoid(z) >= 0.5  <=>  z >= 0.
            SingleLoss::Ce
            | SingleLoss::Wce
            | SingleLoss::Focal { .. }
            | SingleLoss::WeightedFocal { .. }
            | SingleLoss::Hamming
            | SingleLoss::Huber
            | SingleLoss::Asl { .. }
            | SingleLoss::Poly1 { .. } => logits.ge(0.0),
            SingleLoss::Zlpr => logits.gt(0.0),
            SingleLoss::Sparsemax => sparsemax(logits).gt(0.0),
            SingleLoss::Ranking { threshold, .. } => logits.ge(threshold),
        };
        positive.to_kind(Kind::Uint8)
    }
}

impl fmt::Display for Loss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Mean over classes and patches of an elementwise loss `[B, C]`.
fn mean_all(elementwise: Tensor) -> Tensor {
    elementwise.mean(elementwise.kind())
}

#[cfg(test)]
pub(crate) mod testing {
    use tch::Tensor;

    /// Random logits (scale 3) and 0/1 targets with at least one positive and one negative per
    /// row, in f64, from a local generator (torch's global one is shared by concurrent tests).
    pub fn inputs(seed: u64, batch: i64) -> (Tensor, Tensor) {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n = (batch * 19) as usize;
        let z: Vec<f64> = (0..n).map(|_| (rng.random::<f64>() - 0.5) * 6.0).collect();
        let y: Vec<f64> = (0..n)
            .map(|i| match i % 19 {
                0 => 1.0,
                1 => 0.0,
                _ => (rng.random::<f64>() < 0.3) as u8 as f64,
            })
            .collect();
        (
            Tensor::from_slice(&z).reshape([batch, 19]),
            Tensor::from_slice(&y).reshape([batch, 19]),
        )
    }

    /// Checks autograd's gradient of `f` at `z` against central finite differences (f64).
    pub fn check_gradient(f: impl Fn(&Tensor) -> Tensor, z: &Tensor) {
        let x = z.detach().copy().set_requires_grad(true);
        f(&x).backward();
        let grad = x.grad();
        let h = 1e-6;
        let n = z.numel() as i64;
        let flat = z.detach().reshape([-1]);
        for i in 0..n {
            let bump = |d: f64| {
                let v = flat.copy();
                let _ = v.get(i).fill_(flat.double_value(&[i]) + d);
                f(&v.reshape(z.size())).double_value(&[])
            };
            let numeric = (bump(h) - bump(-h)) / (2.0 * h);
            let analytic = grad.reshape([-1]).double_value(&[i]);
            assert!(
                (numeric - analytic).abs() <= 1e-6 + 1e-4 * analytic.abs(),
                "element {i}: autograd {analytic} vs finite differences {numeric}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lossbench_core::config::{Mix, MixPart};

    #[test]
    fn every_loss_is_nonnegative_finite_and_differentiable() {
        let (z, y) = testing::inputs(1, 6);
        for name in lossbench_core::config::loss::NAMES {
            let loss = Loss::with_defaults(name).unwrap();
            assert_eq!(loss.name(), name);
            let value = loss.compute(&z, &y).double_value(&[]);
            assert!(value.is_finite() && value >= 0.0, "{name}: {value}");
            testing::check_gradient(|x| loss.compute(x, &y), &z);
            let d = loss.decide(&z);
            assert_eq!(d.size(), vec![6, 19]);
            assert_eq!(d.kind(), Kind::Uint8);
        }
    }

    #[test]
    fn threshold_rules_follow_their_losses() {
        let z = Tensor::from_slice(&[-1.0f64, -0.0, 0.5, 2.0]).reshape([1, 4]);
        let ones = |t: Tensor| Vec::<u8>::try_from(t.reshape([-1])).unwrap();
        let loss = |name: &str| Loss::with_defaults(name).unwrap();
        assert_eq!(ones(loss("ce").decide(&z)), vec![0, 1, 1, 1]);
        assert_eq!(ones(loss("huber").decide(&z)), vec![0, 1, 1, 1]);
        assert_eq!(ones(loss("zlpr").decide(&z)), vec![0, 0, 1, 1]);
        let ranking = Loss::Single {
            spec: SingleLoss::Ranking {
                margin: 1.0,
                threshold: 1.0,
            },
            pos_weight: Vec::new(),
        };
        assert_eq!(ones(ranking.decide(&z)), vec![0, 0, 0, 1]);
    }

    /// A mix is the weighted sum of its parts; its labels follow the chosen part's rule.
    #[test]
    fn mixes_weigh_their_parts_and_decide_by_one() {
        let (z, y) = testing::inputs(15, 4);
        let spec: LossSpec = toml::from_str::<toml::Value>(
            "mix = [{ name = \"focal\", weight = 0.25 }, { name = \"sparsemax\", weight = 2 }]\ndecision = \"sparsemax\"",
        )
        .unwrap()
        .try_into()
        .unwrap();
        let mix = Loss::new(&spec, &[], 0);
        let want = 0.25
            * Loss::with_defaults("focal")
                .unwrap()
                .compute(&z, &y)
                .double_value(&[])
            + 2.0
                * Loss::with_defaults("sparsemax")
                    .unwrap()
                    .compute(&z, &y)
                    .double_value(&[]);
        assert!((mix.compute(&z, &y).double_value(&[]) - want).abs() < 1e-12);
        assert!(
            mix.decide(&z)
                .equal(&Loss::with_defaults("sparsemax").unwrap().decide(&z))
        );
        testing::check_gradient(|x| mix.compute(x, &y), &z);
        // W-CE inside a mix takes the split's weights.
        let spec = LossSpec::Mix(Mix {
            mix: vec![MixPart {
                weight: 1.0,
                loss: SingleLoss::Wce,
            }],
            decision: None,
        });
        assert_eq!(
            Loss::new(&spec, &[1, 3], 4).positive_weights(),
            Some(&[3.0, 1.0 / 3.0][..])
        );
    }
}
