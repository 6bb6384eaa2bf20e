//! The seven multi-label losses of the study (docs/training.md, "Losses"). Each takes logits
//! `[B, 19]` and 0/1 targets `[B, 19]` (any float kind), returns the batch mean as a scalar,
//! and has a decision rule logits → 0/1 labels (`[B, 19]`, uint8).

mod ce;
mod focal;
mod hamming;
mod huber;
mod ranking;
mod sparsemax;
mod wce;

use std::fmt;
use std::str::FromStr;

use tch::{Kind, Tensor};

pub use sparsemax::sparsemax;
pub use wce::positive_weights;

/// Names accepted in configs, in the study's order.
pub const NAMES: [&str; 7] = ["ce", "wce", "focal", "hamming", "huber", "sparsemax", "ranking"];

#[derive(Debug, Clone, PartialEq)]
pub enum Loss {
    /// Sigmoid cross-entropy.
    Ce,
    /// Cross-entropy with a positive weight per class ([`positive_weights`]).
    Wce { pos_weight: Vec<f64> },
    /// Focal loss; `alpha` weighs positives (and `1 - alpha` negatives) when set.
    Focal { gamma: f64, alpha: Option<f64> },
    /// Expected Hamming loss under the sigmoid probabilities.
    Hamming,
    /// Modified Huber loss on the raw scores.
    Huber,
    /// Multi-label sparsemax loss.
    Sparsemax,
    /// Pairwise ranking hinge, decided by thresholding the scores.
    Ranking { margin: f64, threshold: f64 },
}

impl Loss {
    pub fn name(&self) -> &'static str {
        match self {
            Loss::Ce => "ce",
            Loss::Wce { .. } => "wce",
            Loss::Focal { .. } => "focal",
            Loss::Hamming => "hamming",
            Loss::Huber => "huber",
            Loss::Sparsemax => "sparsemax",
            Loss::Ranking { .. } => "ranking",
        }
    }

    /// Batch mean of the loss (a scalar tensor that carries gradients).
    pub fn compute(&self, logits: &Tensor, targets: &Tensor) -> Tensor {
        let y = targets.to_kind(logits.kind());
        match self {
            Loss::Ce => ce::loss(logits, &y),
            Loss::Wce { pos_weight } => wce::loss(logits, &y, pos_weight),
            Loss::Focal { gamma, alpha } => focal::loss(logits, &y, *gamma, *alpha),
            Loss::Hamming => hamming::loss(logits, &y),
            Loss::Huber => huber::loss(logits, &y),
            Loss::Sparsemax => sparsemax::loss(logits, &y),
            Loss::Ranking { margin, .. } => ranking::loss(logits, &y, *margin),
        }
    }

    /// Predicted labels, 0/1 as uint8.
    pub fn decide(&self, logits: &Tensor) -> Tensor {
        let positive = match self {
            // p = sigmoid(z) >= 0.5  <=>  z >= 0.
            Loss::Ce | Loss::Wce { .. } | Loss::Focal { .. } | Loss::Hamming | Loss::Huber => logits.ge(0.0),
            Loss::Sparsemax => sparsemax(logits).gt(0.0),
            Loss::Ranking { threshold, .. } => logits.ge(*threshold),
        };
        positive.to_kind(Kind::Uint8)
    }
}

/// The study's defaults: focal gamma 2, ranking margin 1 and threshold 0, and W-CE weights of 1
/// until set from the training split with [`positive_weights`].
impl FromStr for Loss {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "ce" => Loss::Ce,
            "wce" => Loss::Wce { pos_weight: vec![1.0; data_prep::labels::NUM_CLASSES] },
            "focal" => Loss::Focal { gamma: 2.0, alpha: None },
            "hamming" => Loss::Hamming,
            "huber" => Loss::Huber,
            "sparsemax" => Loss::Sparsemax,
            "ranking" => Loss::Ranking { margin: 1.0, threshold: 0.0 },
            other => return Err(format!("unknown loss {other:?}; expected one of {}", NAMES.join(", "))),
        })
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
        (Tensor::from_slice(&z).reshape([batch, 19]), Tensor::from_slice(&y).reshape([batch, 19]))
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

    #[test]
    fn names_parse_and_round_trip() {
        for name in NAMES {
            assert_eq!(name.parse::<Loss>().unwrap().name(), name);
        }
        assert!("mse".parse::<Loss>().unwrap_err().contains("unknown loss"));
    }

    #[test]
    fn every_loss_is_nonnegative_finite_and_differentiable() {
        let (z, y) = testing::inputs(1, 6);
        for name in NAMES {
            let loss: Loss = name.parse().unwrap();
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
        assert_eq!(ones(Loss::Ce.decide(&z)), vec![0, 1, 1, 1]);
        assert_eq!(ones(Loss::Huber.decide(&z)), vec![0, 1, 1, 1]);
        assert_eq!(ones(Loss::Ranking { margin: 1.0, threshold: 1.0 }.decide(&z)), vec![0, 0, 0, 1]);
    }
}
