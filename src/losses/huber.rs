//! Modified Huber loss on the raw score z with t = 2y - 1: (max(0, 1 - t z))² for t z ≥ -1,
//! else -4 t z (linear, so that outliers do not dominate).

use tch::Tensor;

pub(super) fn elementwise(z: &Tensor, y: &Tensor) -> Tensor {
    let tz = z * (2f64 * y - 1.0);
    let quadratic = (1f64 - &tz).clamp_min(0.0).square();
    let linear = -4f64 * &tz;
    quadratic.where_self(&tz.ge(-1.0), &linear)
}

pub(super) fn loss(z: &Tensor, y: &Tensor) -> Tensor {
    super::mean_all(elementwise(z, y))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_join_continuously_with_equal_slope_at_minus_one() {
        let y = Tensor::from_slice(&[1.0f64]).reshape([1, 1]);
        let at = |z: f64| {
            elementwise(&Tensor::from_slice(&[z]).reshape([1, 1]), &y).double_value(&[0, 0])
        };
        let e = 1e-7;
        assert!((at(-1.0) - 4.0).abs() < 1e-12);
        assert!((at(-1.0 - e) - at(-1.0 + e)).abs() < 1e-5);
        let slope_left = (at(-1.0 - e) - at(-1.0 - 2.0 * e)) / e;
        let slope_right = (at(-1.0 + 2.0 * e) - at(-1.0 + e)) / e;
        assert!(
            (slope_left - slope_right).abs() < 1e-4,
            "{slope_left} vs {slope_right}"
        );
        assert_eq!(at(1.5), 0.0);
        assert!((at(0.0) - 1.0).abs() < 1e-12);
        assert!((at(-3.0) - 12.0).abs() < 1e-12);
    }
}
