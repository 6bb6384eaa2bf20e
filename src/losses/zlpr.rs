//! ZLPR, the multi-label "softmax + cross-entropy" of Su et al. (2022): per patch
//! log(1 + Σ_{negatives} e^{z}) + log(1 + Σ_{positives} e^{−z}), averaged over patches; each
//! term is a log-sum-exp over the class set with an extra 0 entry, which keeps it finite for
//! any logits. Labels are predicted where z > 0.

use tch::{Kind, Tensor};

/// log(1 + Σ_{j where mask} e^{x_j}) per row.
fn log1p_sum_exp(x: &Tensor, mask: &Tensor) -> Tensor {
    let masked = x.masked_fill(&mask.logical_not(), f64::NEG_INFINITY);
    Tensor::cat(&[masked, x.zeros_like().narrow(1, 0, 1)], 1).logsumexp([1i64].as_slice(), false)
}

pub(super) fn per_patch(z: &Tensor, y: &Tensor) -> Tensor {
    let positive = y.gt(0.5);
    log1p_sum_exp(z, &positive.logical_not()) + log1p_sum_exp(&-z, &positive)
}

pub(super) fn loss(z: &Tensor, y: &Tensor) -> Tensor {
    per_patch(z, y).mean(Kind::Double).to_kind(z.kind())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::losses::testing;

    #[test]
    fn matches_an_explicit_sum_and_stays_finite() {
        let (z, y) = testing::inputs(12, 4);
        let got = per_patch(&z, &y);
        for b in 0..4 {
            let (mut neg, mut pos) = (0.0, 0.0);
            for c in 0..19 {
                let v = z.double_value(&[b, c]);
                if y.double_value(&[b, c]) == 1.0 {
                    pos += (-v).exp()
                } else {
                    neg += v.exp()
                }
            }
            let want = (1.0 + neg).ln() + (1.0 + pos).ln();
            assert!((got.double_value(&[b]) - want).abs() < 1e-12);
        }
        testing::check_gradient(|x| loss(x, &y), &z);
        let huge = Tensor::from_slice(&[800.0f64, -800.0]).reshape([1, 2]);
        let wrong = Tensor::from_slice(&[0.0f64, 1.0]).reshape([1, 2]);
        assert!((loss(&huge, &wrong).double_value(&[]) - 1600.0).abs() < 1e-9);
    }
}
