//! The numerical methods of the Hessian's spectrum from Hessian-vector products
//! (docs/landscape.md, "Spectrum"), on flat vectors (every trainable parameter in one 1-D
//! tensor, [`crate::landscape::evaluator::Flat`]):
//!
//! - [`lanczos`]: m steps of Lanczos with full reorthogonalisation (each new vector is
//!   orthogonalised against the whole basis, twice), whose tridiagonal matrix T gives the top
//!   eigenvalues (Ritz values) and, with the basis, their vectors. The basis is allocated once
//!   (m vectors, on the device or on the CPU where it does not fit), so memory does not grow
//!   with the iterations; its state after every step can be saved and resumed.
//! - [`hutchinson`]: zᵀHz for a Rademacher probe z, whose mean over probes estimates trace(H);
//!   the same product restricted to a unit's parameters, z_uᵀ(Hz)_u, estimates the trace of
//!   that unit's diagonal block.
//! - [`quadrature`] / [`density`]: stochastic Lanczos quadrature (Ghorbani et al. 2019): a
//!   Lanczos run from a normalised probe gives nodes θᵢ (T's eigenvalues) and weights τᵢ (the
//!   squared first components of T's eigenvectors) whose Gaussian-broadened mixture, averaged
//!   over probes, estimates the eigenvalue density; Σ τᵢθᵢᵏ estimates the k-th moment tr(Hᵏ)/n.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// A Rademacher vector (±1) of `len` values from the stream keyed `key`
/// (lossbench_core::splitmix), on `device`.
pub fn rademacher(len: i64, key: u64, device: Device, kind: Kind) -> Tensor {
    let signs = lossbench_core::splitmix::signs(key, len as usize);
    Tensor::from_slice(&signs).to_kind(kind).to_device(device)
}

/// The state of a Lanczos run after `steps()` steps: T's coefficients and the basis so far.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Coefficients {
    /// α₀ … α_{k−1}: T's diagonal.
    pub alpha: Vec<f64>,
    /// β₀ … β_{k−1}: T's off-diagonal (β_{k−1} links to the next vector).
    pub beta: Vec<f64>,
}

impl Coefficients {
    pub fn steps(&self) -> usize {
        self.alpha.len()
    }

    /// T's eigenvalues (ascending) and eigenvectors (columns), in float64 on the CPU.
    pub fn eigen(&self) -> (Vec<f64>, Tensor) {
        let k = self.steps();
        let diagonal = Tensor::from_slice(&self.alpha);
        let off = Tensor::from_slice(&self.beta[..k.saturating_sub(1)]);
        let t = Tensor::diag(&diagonal, 0) + Tensor::diag(&off, 1) + Tensor::diag(&off, -1);
        let (values, vectors) = t.linalg_eigh("L");
        (
            Vec::<f64>::try_from(values).expect("float64 eigenvalues"),
            vectors,
        )
    }
}

/// A Lanczos run in progress: its basis (one row per vector, allocated for every step at the
/// `v / ‖v‖`: the basis vector a Lanczos step makes of its residual (also when a saved run is
/// resumed, so that it is the same vector to the bit).
pub fn unit_vector(v: &Tensor) -> Tensor {
    v / v.norm().double_value(&[])
}

/// start) and T's coefficients.
pub struct Lanczos {
    pub basis: Tensor,
    pub coefficients: Coefficients,
    /// The next vector, unnormalised (β_{k−1} q_k), kept between steps.
    residual: Tensor,
    steps: usize,
}

impl Lanczos {
    /// A run of up to `steps` steps from the start vector `start` (any length: normalised
    /// here), its basis on `basis_device`.
    pub fn new(start: &Tensor, steps: usize, basis_device: Device) -> Result<Lanczos> {
        let n = start.size()[0];
        let basis = crate::failure::catch(|| {
            Tensor::zeros([steps as i64, n], (start.kind(), basis_device))
        })
        .map_err(|c| {
            anyhow::anyhow!(
                "allocating the Lanczos basis ({steps} x {n}): {}",
                c.message()
            )
        })?;
        let residual = start.detach().copy();
        Ok(Lanczos {
            basis,
            coefficients: Coefficients::default(),
            residual,
            steps,
        })
    }

    /// Resumes a run from saved coefficients and basis rows (`rows` = the steps done).
    pub fn resume(&mut self, coefficients: Coefficients, rows: &Tensor, residual: &Tensor) {
        let k = coefficients.steps() as i64;
        tch::no_grad(|| {
            self.basis.narrow(0, 0, k).copy_(rows);
        });
        self.residual = residual.detach().copy();
        self.coefficients = coefficients;
    }

    /// All steps taken, or the basis spans an invariant subspace (the next vector vanished).
    pub fn done(&self) -> bool {
        let c = &self.coefficients;
        let k = c.steps();
        let scale = c.alpha.iter().fold(0f64, |m, a| m.max(a.abs()));
        k >= self.steps || (k > 0 && c.beta[k - 1] <= 1e-10 * scale.max(f64::MIN_POSITIVE))
    }

    /// The basis rows computed so far.
    pub fn rows(&self) -> Tensor {
        self.basis.narrow(0, 0, self.coefficients.steps() as i64)
    }

    pub fn residual(&self) -> &Tensor {
        &self.residual
    }

    /// One step: q_k = residual / ‖residual‖, w = H q_k, α_k = q_kᵀw, w orthogonalised against
    /// the whole basis (twice), β_k = ‖w‖.
    pub fn step(&mut self, hvp: &dyn Fn(&Tensor) -> Tensor) {
        let k = self.coefficients.steps() as i64;
        let device = self.residual.device();
        let q = unit_vector(&self.residual);
        tch::no_grad(|| {
            self.basis.get(k).copy_(&q.to_device(self.basis.device()));
        });
        let mut w = hvp(&q).detach();
        let alpha = q.dot(&w).double_value(&[]);
        let rows = self.basis.narrow(0, 0, k + 1);
        for _ in 0..2 {
            let on_basis = w.to_device(self.basis.device());
            let coefficients = rows.mv(&on_basis);
            let projection = rows.tr().mv(&coefficients).to_device(device);
            // In place: w is this step's own tensor (detached above).
            w -= projection;
        }
        let beta = w.norm().double_value(&[]);
        self.coefficients.alpha.push(alpha);
        self.coefficients.beta.push(beta);
        self.residual = w;
    }

    /// The `k` largest Ritz values (descending) and their vectors (rows, unit length).
    pub fn top(&self, k: usize) -> (Vec<f64>, Tensor) {
        let (values, vectors) = self.coefficients.eigen();
        let m = values.len();
        let k = k.min(m);
        let picked: Vec<i64> = (0..k).map(|i| (m - 1 - i) as i64).collect();
        let index = Tensor::from_slice(&picked);
        let s = vectors.index_select(1, &index).to_kind(self.basis.kind());
        let ritz = s.tr().mm(&self.rows().to_device(Device::Cpu));
        (picked.iter().map(|&i| values[i as usize]).collect(), ritz)
    }
}

/// zᵀHz, and for each range of the flat vector (a unit's parameters) z_uᵀ(Hz)_u.
pub fn hutchinson(
    z: &Tensor,
    hvp: &dyn Fn(&Tensor) -> Tensor,
    units: &[Vec<std::ops::Range<i64>>],
) -> (f64, Vec<f64>) {
    let hz = hvp(z).detach();
    let product = z * &hz;
    let total = product.sum(Kind::Double).double_value(&[]);
    let per_unit = units
        .iter()
        .map(|ranges| {
            ranges
                .iter()
                .map(|r| {
                    product
                        .narrow(0, r.start, r.end - r.start)
                        .sum(Kind::Double)
                        .double_value(&[])
                })
                .sum()
        })
        .collect();
    (total, per_unit)
}

/// The quadrature nodes θᵢ and weights τᵢ of a finished Lanczos run from a normalised probe.
pub fn quadrature(coefficients: &Coefficients) -> Vec<(f64, f64)> {
    let (values, vectors) = coefficients.eigen();
    (0..values.len())
        .map(|i| {
            let first = vectors.double_value(&[0, i as i64]);
            (values[i], first * first)
        })
        .collect()
}

/// The density on `grid` of the nodes and weights of several probes (each probe's weights sum
/// to 1), broadened by Gaussians of width `sigma`, averaged over the probes.
pub fn density(probes: &[Vec<(f64, f64)>], grid: &[f64], sigma: f64) -> Vec<f64> {
    let norm = 1.0 / (sigma * (2.0 * std::f64::consts::PI).sqrt()) / probes.len().max(1) as f64;
    grid.iter()
        .map(|&t| {
            probes
                .iter()
                .flatten()
                .map(|&(theta, tau)| tau * (-(t - theta).powi(2) / (2.0 * sigma * sigma)).exp())
                .sum::<f64>()
                * norm
        })
        .collect()
}

/// Mean and standard error of values.
pub fn mean_se(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, f64::NAN);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

/// How many of the probes (in order) the trace estimate uses: the fewest, at least `min`,
/// whose standard error is within `tolerance` of the mean, else all of them (the budget).
/// Fixed by the probes' values alone, so however the probes were shared out the estimate is
/// the same.
pub fn probes_used(values: &[f64], min: usize, tolerance: f64) -> Option<usize> {
    (min.max(2)..=values.len()).find(|&p| {
        let (mean, se) = mean_se(&values[..p]);
        se <= tolerance * mean.abs()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::landscape::evaluator::Flat;

    /// A tiny network (192 parameters, tanh, cross-entropy, float64), its Hessian-vector product
    /// on flat vectors, and its Hessian built explicitly.
    struct Tiny {
        params: Vec<Tensor>,
        flat: Flat,
        x: Tensor,
        y: Tensor,
    }

    impl Tiny {
        fn new() -> Tiny {
            let o = (Kind::Double, Device::Cpu);
            tch::manual_seed(21);
            let w1 = (Tensor::randn([16, 8], o) * 0.5).set_requires_grad(true);
            let w2 = (Tensor::randn([4, 16], o) * 0.5).set_requires_grad(true);
            let x = Tensor::randn([30, 8], o);
            let y = Tensor::randint(4, [30], (Kind::Int64, Device::Cpu));
            let params = vec![w1, w2];
            Tiny {
                flat: Flat::of(&params),
                params,
                x,
                y,
            }
        }

        fn loss(&self) -> Tensor {
            self.x
                .matmul(&self.params[0].tr())
                .tanh()
                .matmul(&self.params[1].tr())
                .cross_entropy_for_logits(&self.y)
        }

        fn hvp(&self, v: &Tensor) -> Tensor {
            let grads = Tensor::run_backward(&[self.loss()], &self.params, true, true);
            let dot = grads
                .iter()
                .zip(self.flat.split(v))
                .map(|(g, v)| (g * v).sum(Kind::Double))
                .reduce(|a, b| a + b)
                .unwrap();
            self.flat
                .join(&Tensor::run_backward(&[dot], &self.params, false, false))
        }

        fn hessian(&self) -> Tensor {
            let n = self.flat.len;
            let rows: Vec<Tensor> = (0..n)
                .map(|i| {
                    self.hvp(&Tensor::zeros([n], (Kind::Double, Device::Cpu)).index_fill(
                        0,
                        &Tensor::from_slice(&[i]),
                        1.0,
                    ))
                })
                .collect();
            let h = Tensor::stack(&rows, 0);
            (&h + h.tr()) / 2.0
        }
    }

    #[test]
    fn lanczos_finds_the_top_eigenvalues_and_hutchinson_the_trace() {
        let _rng = crate::torch_rng();
        let tiny = Tiny::new();
        let h = tiny.hessian();
        let exact = Vec::<f64>::try_from(h.linalg_eigvalsh("L")).unwrap();
        let n = exact.len();
        let hvp = |v: &Tensor| tiny.hvp(v);
        let start = rademacher(n as i64, 3, Device::Cpu, Kind::Double);
        let mut run = Lanczos::new(&start, 80, Device::Cpu).unwrap();
        while !run.done() {
            run.step(&hvp);
        }
        let (top, vectors) = run.top(5);
        for (i, value) in top.iter().enumerate() {
            let want = exact[n - 1 - i];
            assert!(
                (value - want).abs() <= 1e-4 * want.abs(),
                "eigenvalue {i}: {value} vs {want}"
            );
            // Its Ritz vector is an eigenvector: ‖Hu − λu‖ small.
            let u = vectors.get(i as i64);
            let residual = (tiny.hvp(&u) - &u * *value).norm().double_value(&[]);
            assert!(residual < 1e-4 * value.abs(), "residual {residual}");
        }
        // Hutchinson: within 3 standard errors with 300 probes; exact with the basis vectors.
        let trace = h.trace().double_value(&[]);
        let values: Vec<f64> = (0..300)
            .map(|j| {
                hutchinson(
                    &rademacher(n as i64, 100 + j, Device::Cpu, Kind::Double),
                    &hvp,
                    &[],
                )
                .0
            })
            .collect();
        let (mean, se) = mean_se(&values);
        assert!((mean - trace).abs() <= 3.0 * se, "{mean} ± {se} vs {trace}");
        let basis: f64 = (0..n as i64)
            .map(|i| {
                let e = Tensor::zeros([n as i64], (Kind::Double, Device::Cpu)).index_fill(
                    0,
                    &Tensor::from_slice(&[i]),
                    1.0,
                );
                hutchinson(&e, &hvp, &[]).0
            })
            .sum();
        assert!(
            (basis - trace).abs() <= 1e-9 * trace.abs().max(1.0),
            "{basis} vs {trace}"
        );
        // Per unit: the two weight matrices' diagonal blocks add up to the whole trace.
        let units: Vec<Vec<std::ops::Range<i64>>> =
            tiny.flat.ranges().into_iter().map(|r| vec![r]).collect();
        let z = rademacher(n as i64, 7, Device::Cpu, Kind::Double);
        let (total, parts) = hutchinson(&z, &hvp, &units);
        assert!((parts.iter().sum::<f64>() - total).abs() <= 1e-9 * total.abs().max(1.0));
    }

    /// The density's first two moments are trace/n and trace(H²)/n within their estimation error,
    /// and it integrates to 1.
    #[test]
    fn quadrature_moments_match_the_hessian() {
        let _rng = crate::torch_rng();
        let tiny = Tiny::new();
        let h = tiny.hessian();
        let n = h.size()[0] as f64;
        let (m1, m2) = (
            h.trace().double_value(&[]) / n,
            h.mm(&h).trace().double_value(&[]) / n,
        );
        let hvp = |v: &Tensor| tiny.hvp(v);
        let probes: Vec<Vec<(f64, f64)>> = (0..40)
            .map(|j| {
                let mut run = Lanczos::new(
                    &rademacher(n as i64, 500 + j, Device::Cpu, Kind::Double),
                    30,
                    Device::Cpu,
                )
                .unwrap();
                while !run.done() {
                    run.step(&hvp);
                }
                quadrature(&run.coefficients)
            })
            .collect();
        let moment = |k: i32| -> Vec<f64> {
            probes
                .iter()
                .map(|p| p.iter().map(|(t, w)| w * t.powi(k)).sum())
                .collect()
        };
        for (k, want) in [(1, m1), (2, m2)] {
            let (mean, se) = mean_se(&moment(k));
            assert!(
                (mean - want).abs() <= 3.0 * se,
                "moment {k}: {mean} ± {se} vs {want}"
            );
        }
        let weights: Vec<f64> = probes
            .iter()
            .map(|p| p.iter().map(|(_, w)| w).sum())
            .collect();
        assert!(
            weights.iter().all(|w| (w - 1.0).abs() < 1e-9),
            "{weights:?}"
        );
        let (lo, hi) = (-1.0, 3.0);
        let grid: Vec<f64> = (0..4001)
            .map(|i| lo + (hi - lo) * i as f64 / 4000.0)
            .collect();
        let d = density(&probes, &grid, 0.02);
        let integral: f64 = d.iter().sum::<f64>() * (hi - lo) / 4000.0;
        assert!((integral - 1.0).abs() < 1e-2, "{integral}");
    }

    #[test]
    fn the_trace_uses_the_fewest_probes_that_meet_the_tolerance() {
        let values = [10.0, 10.2, 9.8, 10.1, 9.9, 30.0];
        assert_eq!(probes_used(&values, 3, 0.02), Some(3));
        assert_eq!(probes_used(&values, 3, 1e-9), None);
    }
}
