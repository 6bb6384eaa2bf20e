//! Filter-normalised random directions (Li et al., "Visualizing the Loss Landscape of Neural
//! Nets", NeurIPS 2018): d ~ N(0, I) shaped like the weights, then each output filter's slice
//! of d (an output channel of a conv, a row of a dense layer) scaled to the norm of the same
//! slice of the weights. Biases and BatchNorm parameters (the 1-D variables) get direction 0, or
//! with `include_bias_bn` the variable itself, as the reference code does.

use tch::{Kind, Tensor};

/// One direction: a tensor per trainable variable, by name, in the order given.
pub type Direction = Vec<(String, Tensor)>;

/// Draws `count` directions from torch's CPU generator seeded with `seed`: for each direction in
/// turn, one standard normal tensor per variable in the given (name-sorted) order, then
/// normalised filter by filter.
pub fn draw(
    weights: &[(String, Tensor)],
    seed: u64,
    count: usize,
    include_bias_bn: bool,
) -> Vec<Direction> {
    tch::manual_seed(seed as i64);
    (0..count)
        .map(|_| {
            weights
                .iter()
                .map(|(name, w)| {
                    let raw = Tensor::randn(w.size(), (Kind::Float, tch::Device::Cpu));
                    (name.clone(), normalise(&raw, w, include_bias_bn))
                })
                .collect()
        })
        .collect()
}

/// `raw` filter-normalised against `w`.
pub fn normalise(raw: &Tensor, w: &Tensor, include_bias_bn: bool) -> Tensor {
    let w = w.to_device(tch::Device::Cpu).to_kind(Kind::Float);
    if w.dim() <= 1 {
        return if include_bias_bn {
            w.copy()
        } else {
            w.zeros_like()
        };
    }
    let filters = w.size()[0];
    let norms = |t: &Tensor| {
        t.reshape([filters, -1])
            .norm_scalaropt_dim(2, [1i64].as_slice(), false)
    };
    let (wn, dn) = (norms(&w), norms(raw));
    let mut shape = vec![filters];
    shape.extend(std::iter::repeat_n(1, w.dim() - 1));
    // A filter of zero weights gets a zero direction (0 / |d| · d).
    raw * (wn / dn.clamp_min(1e-30)).reshape(&shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_filter_has_the_weights_norm_and_biases_stay_put() {
        let _rng = crate::torch_rng();
        let o = (Kind::Float, tch::Device::Cpu);
        tch::manual_seed(3);
        let weights = vec![
            (
                "a.conv.weight".to_string(),
                Tensor::randn([4, 3, 5, 5], o) * 0.3,
            ),
            ("a.conv.bias".to_string(), Tensor::randn([4], o)),
            ("head.weight".to_string(), Tensor::randn([19, 8], o)),
        ];
        let dirs = draw(&weights, 11, 2, false);
        assert_eq!(dirs.len(), 2);
        for d in &dirs {
            for ((name, w), (dname, dt)) in weights.iter().zip(d) {
                assert_eq!(name, dname);
                if w.dim() == 1 {
                    assert_eq!(dt.abs().sum(Kind::Double).double_value(&[]), 0.0);
                    continue;
                }
                for j in 0..w.size()[0] {
                    let (a, b) = (
                        w.get(j).norm().double_value(&[]),
                        dt.get(j).norm().double_value(&[]),
                    );
                    assert!((a - b).abs() <= 1e-5 * a, "{name} filter {j}: {a} vs {b}");
                }
            }
        }
        assert!(!dirs[0][0].1.equal(&dirs[1][0].1), "two directions differ");
        // The same seed draws the same directions; including biases copies them.
        assert!(draw(&weights, 11, 1, false)[0][2].1.equal(&dirs[0][2].1));
        assert!(draw(&weights, 11, 1, true)[0][1].1.equal(&weights[1].1));
    }
}
