//! Sparsemax (Martins & Astudillo 2016) and its multi-label loss with target q = y / |y|:
//! L = -q·z + ½ Σ_{j∈S(z)} (z_j² - τ(z)²) + ½ |q|², whose gradient is sparsemax(z) - q.

use tch::{Kind, Tensor};

/// The threshold τ(z) per row `[B, 1]` and the support mask `[B, C]` (as z's kind).
fn threshold(z: &Tensor) -> (Tensor, Tensor) {
    let (sorted, _) = z.sort(1, true);
    let c = z.size()[1];
    let k = Tensor::arange_start(1, c + 1, (z.kind(), z.device())).unsqueeze(0);
    let cumulative = sorted.cumsum(1, z.kind());
    // k(z) = max{k : 1 + k z_(k) > Σ_{j≤k} z_(j)}.
    let in_support = (1f64 + &k * &sorted)
        .gt_tensor(&cumulative)
        .to_kind(z.kind());
    // The largest logit is always in the support (1 + z_(1) > z_(1)); in f32, 1 + z rounds to z
    // for |z| above 2^24, so the count is floored at 1 rather than trusted to find it.
    let support_size = in_support
        .sum_dim_intlist([1i64].as_slice(), true, z.kind())
        .clamp_min(1.0);
    let top_sum = cumulative.gather(1, &(support_size.to_kind(Kind::Int64) - 1), false);
    let tau = (top_sum - 1.0) / &support_size;
    let support = z.gt_tensor(&tau).to_kind(z.kind());
    (tau, support)
}

/// The Euclidean projection of each row of z onto the probability simplex.
pub fn sparsemax(z: &Tensor) -> Tensor {
    let (tau, _) = threshold(z);
    (z - tau).clamp_min(0.0)
}

pub(super) fn loss(z: &Tensor, y: &Tensor) -> Tensor {
    let q = y / y
        .sum_dim_intlist([1i64].as_slice(), true, z.kind())
        .clamp_min(1.0);
    let (tau, support) = threshold(z);
    let per_patch = -(&q * z).sum_dim_intlist([1i64].as_slice(), false, z.kind())
        + 0.5f64
            * ((z.square() - tau.square()) * support).sum_dim_intlist(
                [1i64].as_slice(),
                false,
                z.kind(),
            )
        + 0.5f64
            * q.square()
                .sum_dim_intlist([1i64].as_slice(), false, z.kind());
    per_patch.mean(z.kind())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::losses::testing;

    /// Sort-based reference projection written with plain floats.
    fn reference(z: &[f64]) -> Vec<f64> {
        let mut s = z.to_vec();
        s.sort_by(|a, b| b.partial_cmp(a).unwrap());
        let (mut cum, mut tau) = (0.0, 0.0);
        for (k, &v) in s.iter().enumerate() {
            cum += v;
            let k = (k + 1) as f64;
            if 1.0 + k * v > cum {
                tau = (cum - 1.0) / k;
            }
        }
        z.iter().map(|&v| (v - tau).max(0.0)).collect()
    }

    #[test]
    fn is_the_simplex_projection() {
        let (z, _) = testing::inputs(6, 7);
        let p = sparsemax(&z);
        for b in 0..7 {
            let row: Vec<f64> = (0..19).map(|c| z.double_value(&[b, c])).collect();
            let want = reference(&row);
            for c in 0..19 {
                assert!((p.double_value(&[b, c]) - want[c as usize]).abs() < 1e-12);
            }
            let sum: f64 = (0..19).map(|c| p.double_value(&[b, c])).sum();
            assert!((sum - 1.0).abs() < 1e-12);
        }
    }

    /// Logits far beyond f32's integer precision (a landscape point far from the checkpoint can
    /// reach them): finite values, not an out-of-range index. (f32 cannot resolve the projection
    /// there: z - τ rounds to 0.)
    #[test]
    fn huge_logits_give_finite_values() {
        let z = Tensor::from_slice(&[3e9f32, -1e9, 0.0, 2e9]).reshape([1, 4]);
        let p = Vec::<f32>::try_from(sparsemax(&z).reshape([-1])).unwrap();
        assert!(p.iter().all(|v| v.is_finite() && *v >= 0.0), "{p:?}");
        let y = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0]).reshape([1, 4]);
        assert!(loss(&z, &y).double_value(&[]).is_finite());
    }

    #[test]
    fn loss_is_zero_at_the_target_and_its_gradient_is_sparsemax_minus_q() {
        // z chosen so that sparsemax(z) = q = (½, ½, 0).
        let z = Tensor::from_slice(&[1.0f64, 1.0, -2.0]).reshape([1, 3]);
        let y = Tensor::from_slice(&[1.0f64, 1.0, 0.0]).reshape([1, 3]);
        assert!(loss(&z, &y).double_value(&[]).abs() < 1e-12);
        let (z, y) = testing::inputs(7, 3);
        assert!(loss(&z, &y).double_value(&[]) >= 0.0);
        let x = z.copy().set_requires_grad(true);
        loss(&x, &y).backward();
        let q = &y / y.sum_dim_intlist([1i64].as_slice(), true, Kind::Double);
        let expected = (sparsemax(&z) - q) / 3.0; // batch mean over 3 patches
        assert!(x.grad().allclose(&expected, 1e-10, 1e-12, false));
    }
}
