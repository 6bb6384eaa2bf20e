//! Expected Hamming loss: the fraction of wrong labels in expectation under p = sigmoid(z),
//! mean_c [y (1 - p) + (1 - y) p]; the study's HAL made trainable.

use tch::Tensor;

pub(super) fn loss(z: &Tensor, y: &Tensor) -> Tensor {
    let p = z.sigmoid();
    super::mean_all(y * (1f64 - &p) + (1f64 - y) * p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approaches_the_hamming_loss_for_confident_logits() {
        let y = Tensor::from_slice(&[1.0f64, 0.0, 1.0, 0.0]).reshape([1, 4]);
        let z = Tensor::from_slice(&[50.0f64, 50.0, -50.0, -50.0]).reshape([1, 4]);
        // Two of four labels wrong.
        assert!((loss(&z, &y).double_value(&[]) - 0.5).abs() < 1e-12);
    }
}
