//! Poly-1 (Leng et al., ICLR 2022) on the per-class binary cross-entropy:
//! BCE + ε(1 − p_t), p_t = y p + (1 − y)(1 − p), averaged over patches and classes.

use tch::Tensor;

pub(super) fn loss(z: &Tensor, y: &Tensor, epsilon: f64) -> Tensor {
    let p = z.sigmoid();
    let pt = y * &p + (1f64 - y) * (1f64 - &p);
    super::mean_all(super::ce::elementwise(z, y) + epsilon * (1f64 - pt))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::losses::testing;

    #[test]
    fn is_ce_plus_epsilon_times_one_minus_pt() {
        let (z, y) = testing::inputs(13, 5);
        let ce = super::super::ce::loss(&z, &y).double_value(&[]);
        assert!((loss(&z, &y, 0.0).double_value(&[]) - ce).abs() < 1e-12);
        let t = |v: f64| Tensor::from_slice(&[v]).reshape([1, 1]);
        // z = 0: p = ½ whatever y, so Poly-1 = ln 2 + ε/2.
        assert!((loss(&t(0.0), &t(1.0), 2.0).double_value(&[]) - (2f64.ln() + 1.0)).abs() < 1e-12);
        testing::check_gradient(|x| loss(x, &y, 1.0), &z);
    }
}
