//! Pairwise ranking hinge: Σ_{v ∉ y} Σ_{u ∈ y} max(0, α + z_v - z_u), normalised per patch by
//! |y| |ȳ| (0 for a patch with no positive or no negative label).

use tch::{Kind, Tensor};

pub(super) fn per_patch(z: &Tensor, y: &Tensor, margin: f64) -> Tensor {
    // pair[b, u, v] = α + z_v - z_u, counted where u is positive and v negative.
    let pair = (z.unsqueeze(1) - z.unsqueeze(2) + margin).clamp_min(0.0);
    let mask = y.unsqueeze(2) * (1f64 - y).unsqueeze(1);
    let total = (pair * &mask).sum_dim_intlist([1i64, 2].as_slice(), false, z.kind());
    let pairs = mask.sum_dim_intlist([1i64, 2].as_slice(), false, z.kind());
    total / pairs.clamp_min(1.0)
}

pub(super) fn loss(z: &Tensor, y: &Tensor, margin: f64) -> Tensor {
    per_patch(z, y, margin).mean(Kind::Double).to_kind(z.kind())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::losses::testing;

    #[test]
    fn matches_an_explicit_double_loop() {
        let (z, y) = testing::inputs(5, 4);
        let got = per_patch(&z, &y, 1.0);
        for b in 0..4 {
            let (mut sum, mut pairs) = (0.0, 0.0);
            for u in 0..19 {
                for v in 0..19 {
                    if y.double_value(&[b, u]) == 1.0 && y.double_value(&[b, v]) == 0.0 {
                        sum += (1.0 + z.double_value(&[b, v]) - z.double_value(&[b, u])).max(0.0);
                        pairs += 1.0;
                    }
                }
            }
            assert!((got.double_value(&[b]) - sum / pairs).abs() < 1e-12);
        }
    }

    #[test]
    fn zero_when_positives_lead_by_the_margin() {
        let z = Tensor::from_slice(&[3.0f64, 1.9, 0.5]).reshape([1, 3]);
        let y = Tensor::from_slice(&[1.0f64, 0.0, 0.0]).reshape([1, 3]);
        assert_eq!(loss(&z, &y, 1.0).double_value(&[]), 0.0);
        assert!(loss(&z, &y, 1.2).double_value(&[]) > 0.0);
    }
}
