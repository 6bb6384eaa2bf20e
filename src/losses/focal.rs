//! Focal loss (Lin et al. 2017): -α_t (1 - p_t)^γ log p_t, p_t = p if y = 1 else 1 - p, with
//! α_t = α for positives and 1 - α for negatives when α is set (else 1). The weighted focal
//! loss (the study's proposed combination with W-CE) multiplies the positive terms by W-CE's
//! per-class weights instead.

use tch::Tensor;

/// What scales each element's focal term.
pub(super) enum Weighting<'a> {
    None,
    /// α for positives, 1 − α for negatives.
    Alpha(f64),
    /// One weight per class for the positives (W-CE's), 1 for the negatives.
    Positives(&'a [f64]),
}

pub(super) fn loss(z: &Tensor, y: &Tensor, gamma: f64, weighting: Weighting) -> Tensor {
    let signed = z * (2f64 * y - 1.0);
    let log_pt = signed.log_sigmoid();
    let pt = signed.sigmoid();
    let mut l = -(1f64 - pt).pow_tensor_scalar(gamma) * log_pt;
    match weighting {
        Weighting::None => {}
        Weighting::Alpha(a) => l *= a * y + (1.0 - a) * (1f64 - y),
        Weighting::Positives(w) => {
            let w = Tensor::from_slice(w)
                .to_kind(z.kind())
                .to_device(z.device());
            l *= w * y + (1f64 - y);
        }
    }
    super::mean_all(l)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::losses::testing;

    /// Study Table 4.2: the CE/FL ratio at γ = 2 is 1/(1 - p_t)², e.g. 4 at p_t = 0.5 and 100 at 0.9.
    #[test]
    fn ratio_to_ce_matches_table_4_2() {
        for (pt, ratio) in [
            (0.1f64, 1.0 / 0.81),
            (0.5, 4.0),
            (0.9, 100.0),
            (0.968, 976.5625),
        ] {
            let z = Tensor::from_slice(&[(pt / (1.0 - pt)).ln()]).reshape([1, 1]);
            let y = Tensor::from_slice(&[1.0f64]).reshape([1, 1]);
            let ce = super::super::ce::loss(&z, &y).double_value(&[]);
            let fl = loss(&z, &y, 2.0, Weighting::None).double_value(&[]);
            assert!(
                (ce / fl - ratio).abs() < 1e-6 * ratio,
                "p_t {pt}: {} vs {ratio}",
                ce / fl
            );
            // And the table's CE column, written with log10.
            if pt == 0.9 {
                assert!((ce / std::f64::consts::LN_10 - 0.045757).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn gamma_zero_is_ce_and_alpha_weighs_classes() {
        let (z, y) = testing::inputs(4, 5);
        let ce = super::super::ce::loss(&z, &y).double_value(&[]);
        assert!((loss(&z, &y, 0.0, Weighting::None).double_value(&[]) - ce).abs() < 1e-12);
        let half = loss(&z, &y, 2.0, Weighting::Alpha(0.5)).double_value(&[]);
        assert!((2.0 * half - loss(&z, &y, 2.0, Weighting::None).double_value(&[])).abs() < 1e-12);
        testing::check_gradient(|x| loss(x, &y, 2.0, Weighting::Alpha(0.25)), &z);
    }

    /// With γ = 0 the weighted focal loss is W-CE; the weights scale the positive terms only.
    #[test]
    fn positive_weights_give_wce_at_gamma_zero() {
        let (z, y) = testing::inputs(14, 5);
        let w: Vec<f64> = (0..19).map(|c| 0.5 + c as f64 / 7.0).collect();
        let wce = super::super::wce::loss(&z, &y, &w).double_value(&[]);
        assert!(
            (loss(&z, &y, 0.0, Weighting::Positives(&w)).double_value(&[]) - wce).abs() < 1e-12
        );
        testing::check_gradient(|x| loss(x, &y, 2.0, Weighting::Positives(&w)), &z);
    }
}
