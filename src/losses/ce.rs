//! Sigmoid cross-entropy, mean over classes: -[y log p + (1-y) log(1-p)], p = sigmoid(z),
//! in the stable logits form max(z, 0) - z y + log(1 + exp(-|z|)).

use tch::Tensor;

pub(super) fn elementwise(z: &Tensor, y: &Tensor) -> Tensor {
    z.clamp_min(0.0) - z * y + (-z.abs()).exp().log1p()
}

pub(super) fn loss(z: &Tensor, y: &Tensor) -> Tensor {
    super::mean_all(elementwise(z, y))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::losses::testing;

    #[test]
    fn matches_the_probability_form_and_libtorch() {
        let (z, y) = testing::inputs(2, 8);
        let p = z.sigmoid();
        let direct = -(&y * p.log() + (1f64 - &y) * (1f64 - &p).log());
        assert!(elementwise(&z, &y).allclose(&direct, 1e-10, 1e-12, false));
        let torch =
            z.binary_cross_entropy_with_logits::<Tensor>(&y, None, None, tch::Reduction::Mean);
        assert!((loss(&z, &y).double_value(&[]) - torch.double_value(&[])).abs() < 1e-12);
    }

    #[test]
    fn stays_finite_for_huge_logits() {
        let z = Tensor::from_slice(&[1000.0f64, -1000.0]).reshape([1, 2]);
        let y = Tensor::from_slice(&[0.0f64, 1.0]).reshape([1, 2]);
        assert!((loss(&z, &y).double_value(&[]) - 1000.0).abs() < 1e-9);
    }
}
