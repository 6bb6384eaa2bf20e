//! Weighted cross-entropy: -[w_c y log p + (1-y) log(1-p)] with one positive weight per class,
//! w_c = (N - n_c) / n_c from the training split (N patches, n_c carrying class c; 1 for a class
//! no training patch carries), the ratio of negatives to positives, so that every class's
//! positives and negatives weigh the same in total.

use tch::Tensor;

pub fn positive_weights(label_counts: &[u64], patches: u64) -> Vec<f64> {
    label_counts
        .iter()
        .map(|&n| {
            if n == 0 {
                1.0
            } else {
                patches.saturating_sub(n) as f64 / n as f64
            }
        })
        .collect()
}

pub(super) fn loss(z: &Tensor, y: &Tensor, pos_weight: &[f64]) -> Tensor {
    let w = Tensor::from_slice(pos_weight)
        .to_kind(z.kind())
        .to_device(z.device());
    // -w y log sigmoid(z) - (1-y) log sigmoid(-z), with log sigmoid(±z) = -softplus(∓z).
    let softplus = |t: &Tensor| t.clamp_min(0.0) + (-t.abs()).exp().log1p();
    super::mean_all(&w * y * softplus(&-z) + (1f64 - y) * softplus(z))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::losses::testing;

    #[test]
    fn weights_are_negatives_over_positives() {
        assert_eq!(positive_weights(&[25, 100, 0], 100), vec![3.0, 0.0, 1.0]);
    }

    #[test]
    fn unit_weights_give_ce_and_weights_scale_positives() {
        let (z, y) = testing::inputs(3, 5);
        let ones = vec![1.0; 19];
        let ce = super::super::ce::loss(&z, &y).double_value(&[]);
        assert!((loss(&z, &y, &ones).double_value(&[]) - ce).abs() < 1e-12);
        let mut w = ones.clone();
        w[0] = 3.0; // class 0 is positive in every row of the test inputs
        let p0 = z.narrow(1, 0, 1).sigmoid();
        let extra = (-2f64 * p0.log()).sum(tch::Kind::Double).double_value(&[]) / (5.0 * 19.0);
        assert!((loss(&z, &y, &w).double_value(&[]) - ce - extra).abs() < 1e-12);
    }
}
