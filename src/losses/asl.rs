//! Asymmetric loss (Ridnik et al., ICCV 2021): with p = sigmoid(z) and the shifted probability
//! p_m = max(p − m, 0) of the negatives,
//! L = −y (1−p)^γ⁺ log p − (1−y) p_m^γ⁻ log(1 − p_m), probabilities clamped to at least 1e-8
//! inside the logs as the reference implementation does. The reference (and timm's
//! `AsymmetricLossMultiLabel` with `reduction="sum"`) sums over patches and classes; here the
//! loss is averaged over both like every other loss, i.e. the sum divided by B·19.

use tch::Tensor;

/// The reference implementation's clamp inside the logs.
const LOG_CLAMP: f64 = 1e-8;

pub(super) fn elementwise(
    z: &Tensor,
    y: &Tensor,
    gamma_pos: f64,
    gamma_neg: f64,
    clip: f64,
) -> Tensor {
    let p = z.sigmoid();
    // 1 − p_m = min(1 − p + m, 1): the negatives' probability of being negative, shifted.
    let q = if clip > 0.0 {
        (1f64 - &p + clip).clamp_max(1.0)
    } else {
        1f64 - &p
    };
    let positive = y * p.clamp_min(LOG_CLAMP).log() * (1f64 - &p).pow_tensor_scalar(gamma_pos);
    let negative =
        (1f64 - y) * q.clamp_min(LOG_CLAMP).log() * (1f64 - &q).pow_tensor_scalar(gamma_neg);
    -(positive + negative)
}

pub(super) fn loss(z: &Tensor, y: &Tensor, gamma_pos: f64, gamma_neg: f64, clip: f64) -> Tensor {
    super::mean_all(elementwise(z, y, gamma_pos, gamma_neg, clip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::losses::testing;

    /// The closed form at single points, written with plain floats.
    #[test]
    fn matches_the_formula_and_reduces_to_ce_without_focusing_or_margin() {
        let closed = |z: f64, y: f64, gp: f64, gn: f64, m: f64| -> f64 {
            let p = 1.0 / (1.0 + (-z).exp());
            let pm = (p - m).max(0.0);
            -(y * (1.0 - p).powf(gp) * p.max(1e-8).ln()
                + (1.0 - y) * pm.powf(gn) * (1.0 - pm).max(1e-8).ln())
        };
        for &(z, y) in &[
            (-2.0, 0.0),
            (0.3, 0.0),
            (0.03, 0.0),
            (1.5, 1.0),
            (-0.7, 1.0),
        ] {
            let t = |v: f64| Tensor::from_slice(&[v]).reshape([1, 1]);
            let got = loss(&t(z), &t(y), 1.0, 4.0, 0.05).double_value(&[]);
            assert!(
                (got - closed(z, y, 1.0, 4.0, 0.05)).abs() < 1e-12,
                "z {z} y {y}"
            );
        }
        let (z, y) = testing::inputs(11, 5);
        let ce = super::super::ce::loss(&z, &y).double_value(&[]);
        assert!((loss(&z, &y, 0.0, 0.0, 0.0).double_value(&[]) - ce).abs() < 1e-12);
        // A negative whose probability is under the margin costs nothing.
        let low = Tensor::from_slice(&[-4.0f64]).reshape([1, 1]);
        assert_eq!(
            loss(&low, &Tensor::zeros_like(&low), 0.0, 4.0, 0.05).double_value(&[]),
            0.0
        );
        testing::check_gradient(|x| loss(x, &y, 1.0, 4.0, 0.05), &z);
    }
}
