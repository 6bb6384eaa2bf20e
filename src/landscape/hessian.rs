//! Sharpness: the dominant eigenvalue of the Hessian of the training loss, by power iteration
//! on Hessian-vector products (Pearlmutter: Hv = ∇(∇L · v), one double backward through the
//! network per product). Power iteration finds the eigenvalue of largest magnitude, which is the
//! largest one near a minimum of the loss, where trained checkpoints are.

use tch::{Kind, Tensor};

/// The outcome of a power iteration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Eigen {
    pub value: f64,
    pub iterations: usize,
    /// The relative change of the last iteration was under the tolerance.
    pub converged: bool,
}

/// Hv, summed over the batches of the loss: `batch_loss(b)` is batch b's share of the loss
/// (scalar, with its graph), for b in 0..batches.
pub fn hessian_vector(
    params: &[Tensor],
    batches: usize,
    batch_loss: &dyn Fn(usize) -> Tensor,
    v: &[Tensor],
) -> Vec<Tensor> {
    let mut sum: Vec<Tensor> = params.iter().map(Tensor::zeros_like).collect();
    for b in 0..batches {
        let grads = Tensor::run_backward(&[batch_loss(b)], params, true, true);
        let dot = grads
            .iter()
            .zip(v)
            .map(|(g, v)| (g * v).sum(g.kind()))
            .reduce(|a, b| a + b)
            .expect("parameters");
        let hv = Tensor::run_backward(&[dot], params, false, false);
        for (s, h) in sum.iter_mut().zip(hv) {
            *s += h;
        }
    }
    sum
}

fn norm(v: &[Tensor]) -> f64 {
    v.iter()
        .map(|t| t.square().sum(Kind::Double).double_value(&[]))
        .sum::<f64>()
        .sqrt()
}

/// Power iteration from a random start (torch's generator seeded with `seed`), until the
/// eigenvalue changes by less than `tolerance` relative or `max_iterations` are done.
pub fn dominant_eigenvalue(
    params: &[Tensor],
    batches: usize,
    batch_loss: &dyn Fn(usize) -> Tensor,
    seed: u64,
    max_iterations: usize,
    tolerance: f64,
) -> Eigen {
    tch::manual_seed(seed as i64);
    let mut v: Vec<Tensor> = params
        .iter()
        .map(|p| Tensor::randn(p.size(), (p.kind(), p.device())))
        .collect();
    let n = norm(&v);
    v.iter_mut().for_each(|t| *t /= n);
    let mut value = 0.0;
    for i in 1..=max_iterations {
        let hv = hessian_vector(params, batches, batch_loss, &v);
        let next: f64 = hv
            .iter()
            .zip(&v)
            .map(|(h, v)| (h * v).sum(Kind::Double).double_value(&[]))
            .sum();
        let n = norm(&hv);
        if n == 0.0 {
            return Eigen {
                value: 0.0,
                iterations: i,
                converged: true,
            };
        }
        v = hv.into_iter().map(|h| h / n).collect();
        let converged = (next - value).abs() <= tolerance * next.abs();
        value = next;
        if converged {
            return Eigen {
                value,
                iterations: i,
                converged: true,
            };
        }
    }
    Eigen {
        value,
        iterations: max_iterations,
        converged: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny network (192 parameters, tanh, cross-entropy): power iteration against the
    /// eigenvalues of its Hessian built row by row.
    #[test]
    fn agrees_with_the_explicit_hessian_of_a_tiny_model() {
        let _rng = crate::torch_rng();
        let o = (Kind::Double, tch::Device::Cpu);
        tch::manual_seed(21);
        let w1 = (Tensor::randn([16, 8], o) * 0.5).set_requires_grad(true);
        let w2 = (Tensor::randn([4, 16], o) * 0.5).set_requires_grad(true);
        let x = Tensor::randn([30, 8], o);
        let y = Tensor::randint(4, [30], (Kind::Int64, tch::Device::Cpu));
        let params = [w1.shallow_clone(), w2.shallow_clone()];
        // Two batches of 15, each weighted by its share.
        let loss = |b: usize| -> Tensor {
            let (xb, yb) = (
                x.narrow(0, 15 * b as i64, 15),
                y.narrow(0, 15 * b as i64, 15),
            );
            xb.matmul(&w1.tr())
                .tanh()
                .matmul(&w2.tr())
                .cross_entropy_for_logits(&yb)
                * 0.5
        };
        let found = dominant_eigenvalue(&params, 2, &loss, 5, 500, 1e-7);
        assert!(found.converged, "{found:?}");
        // The explicit Hessian: one double backward per parameter.
        let full = loss(0) + loss(1);
        let grads = Tensor::run_backward(&[full], &params, true, true);
        let g = Tensor::cat(
            &grads.iter().map(|t| t.reshape([-1])).collect::<Vec<_>>(),
            0,
        );
        let n = g.size()[0];
        assert_eq!(n, 192);
        let rows: Vec<Tensor> = (0..n)
            .map(|i| {
                let h = Tensor::run_backward(&[g.get(i)], &params, true, false);
                Tensor::cat(&h.iter().map(|t| t.reshape([-1])).collect::<Vec<_>>(), 0)
            })
            .collect();
        let hessian = Tensor::stack(&rows, 0);
        let sym = (&hessian + hessian.tr()) / 2.0;
        let eig = sym.linalg_eigvalsh("L");
        let dominant = eig.abs().argmax(0, false).int64_value(&[]);
        let want = eig.double_value(&[dominant]);
        assert!(
            (found.value - want).abs() <= 1e-3 * want.abs(),
            "power iteration {} vs eigvalsh {want}",
            found.value
        );
    }
}
