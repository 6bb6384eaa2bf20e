//! Adam and AdamW, written out so that their whole state (moments, step count) is ours to
//! checkpoint and identical on every rank: p ← p − lr · m̂ / (√v̂ + ε), with m̂, v̂ the
//! bias-corrected moments of the gradient g + λ p, where λ is the parameter's L2 weight decay
//! (Adam: the conv weights'); AdamW first shrinks every parameter, p ← p · (1 − lr · wd), and
//! adds nothing to the gradient (decoupled weight decay, as `torch.optim.AdamW`). The learning
//! rate is set before each step by the schedule (lossbench_core::config::recipe).

use tch::{Kind, Tensor};

pub struct Adam {
    pub lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    /// Steps taken so far.
    pub step: i64,
    params: Vec<Tensor>,
    /// Each parameter's weight decay λ as a 0-dim tensor on its device (made once: a CPU scalar
    /// copied to a GPU at every step would wait for the device each time), `None` without decay.
    decay: Vec<Option<Tensor>>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// AdamW's decoupled weight decay of every parameter (0 for Adam).
    decoupled: f64,
}

impl Adam {
    /// `params`: the trainable variables with their weight decay, in a fixed order.
    pub fn new(params: Vec<(Tensor, f64)>, lr: f64) -> Self {
        let m = params.iter().map(|(p, _)| p.zeros_like()).collect();
        let v = params.iter().map(|(p, _)| p.zeros_like()).collect();
        let (params, decay) = params
            .into_iter()
            .map(|(p, lambda)| {
                let decay =
                    (lambda != 0.0).then(|| Tensor::from(lambda as f32).to_device(p.device()));
                (p, decay)
            })
            .unzip();
        Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step: 0,
            params,
            decay,
            m,
            v,
            decoupled: 0.0,
        }
    }

    /// AdamW: `weight_decay` shrinks every parameter by lr·weight_decay per step, apart from
    /// its gradient.
    pub fn decoupled(mut self, weight_decay: f64) -> Self {
        self.decoupled = weight_decay;
        self
    }

    /// The parameters, in the order given to [`Adam::new`].
    pub fn params(&self) -> &[Tensor] {
        &self.params
    }

    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.zero_grad();
        }
    }

    /// One update from the gradients accumulated in the parameters.
    pub fn step(&mut self) {
        self.step += 1;
        let c1 = 1.0 - self.beta1.powi(self.step as i32);
        let c2 = 1.0 - self.beta2.powi(self.step as i32);
        tch::no_grad(|| {
            for i in 0..self.params.len() {
                let p = &mut self.params[i];
                let mut g = p.grad();
                if !g.defined() {
                    continue;
                }
                if self.decoupled > 0.0 {
                    let _ = p.g_mul_scalar_(1.0 - self.lr * self.decoupled);
                }
                if let Some(decay) = &self.decay[i] {
                    // g + λp in one pass, without a temporary.
                    let _ = g.addcmul_(p, decay);
                }
                // In place, as PyTorch's single-tensor Adam: seven passes over the parameter (eight
                // with weight decay) and two temporaries, whatever its size.
                let _ = self.m[i].lerp_(&g, 1.0 - self.beta1);
                let _ = self.v[i].lerp_(&g.square(), 1.0 - self.beta2);
                let step_size = self.lr / c1;
                // p − step·m/(√v/√c2 + ε) as one addcdiv, the denominator scaled by −1/step:
                // √v · (−1/(step·√c2)) − ε/step.
                let mut denom = self.v[i].sqrt();
                let _ = denom
                    .g_mul_scalar_(-1.0 / (step_size * c2.sqrt()))
                    .g_add_scalar_(-self.eps / step_size);
                let _ = p.addcdiv_(&self.m[i], &denom);
            }
        });
    }

    /// The moment tensors, named `m.<i>` / `v.<i>` in parameter order, for checkpoints.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let named = |prefix: &str, ts: &[Tensor]| -> Vec<(String, Tensor)> {
            ts.iter()
                .enumerate()
                .map(|(i, t)| (format!("{prefix}.{i}"), t.shallow_clone()))
                .collect()
        };
        let mut s = named("m", &self.m);
        s.extend(named("v", &self.v));
        s
    }

    /// Restores moments saved by [`Adam::state`] and the step count, after checking that they
    /// are the moments of these parameters (count and shapes).
    pub fn load_state(&mut self, state: &[(String, Tensor)], step: i64) -> anyhow::Result<()> {
        let get = |name: String| -> anyhow::Result<&Tensor> {
            state
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, t)| t)
                .ok_or_else(|| anyhow::anyhow!("the optimizer state lacks {name}"))
        };
        if state.len() != 2 * self.params.len() {
            anyhow::bail!(
                "the optimizer state holds {} tensors, this model's optimizer {}: it was written for another model",
                state.len(),
                2 * self.params.len()
            );
        }
        for i in 0..self.params.len() {
            for name in [format!("m.{i}"), format!("v.{i}")] {
                let t = get(name.clone())?;
                if t.size() != self.m[i].size() {
                    anyhow::bail!(
                        "optimizer state {name} has shape {:?}, parameter {i} has {:?}: it was written for another model",
                        t.size(),
                        self.m[i].size()
                    );
                }
            }
        }
        tch::no_grad(|| -> anyhow::Result<()> {
            for i in 0..self.params.len() {
                let device = self.m[i].device();
                self.m[i].copy_(
                    &get(format!("m.{i}"))?
                        .to_kind(Kind::Float)
                        .to_device(device),
                );
                self.v[i].copy_(
                    &get(format!("v.{i}"))?
                        .to_kind(Kind::Float)
                        .to_device(device),
                );
            }
            Ok(())
        })?;
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::{self, OptimizerConfig};

    /// A few steps on a small least-squares problem: the same trajectory as libtorch's Adam.
    #[test]
    fn matches_libtorch_adam() {
        let x = Tensor::from_slice(&[0.5f32, -1.0, 2.0, 0.25, 1.5, -0.75]).reshape([3, 2]);
        let target = Tensor::from_slice(&[1.0f32, -2.0, 0.5]).reshape([3, 1]);
        let run = |ours: bool| -> Vec<f32> {
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let w = vs.root().var("w", &[2, 1], nn::Init::Const(0.3));
            let loss_of = |w: &Tensor| (x.matmul(w) - &target).square().mean(Kind::Float);
            if ours {
                let mut adam = Adam::new(vec![(w.shallow_clone(), 0.0)], 0.05);
                for _ in 0..25 {
                    adam.zero_grad();
                    loss_of(&w).backward();
                    adam.step();
                }
            } else {
                let mut opt = nn::Adam::default().build(&vs, 0.05).unwrap();
                for _ in 0..25 {
                    opt.backward_step(&loss_of(&w));
                }
            }
            Vec::<f32>::try_from(w.reshape([-1])).unwrap()
        };
        let (a, b) = (run(true), run(false));
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn state_round_trips() {
        let w = Tensor::ones([3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let mut a = Adam::new(vec![(w.shallow_clone(), 0.1)], 0.01);
        (&w * &w).sum(Kind::Float).backward();
        a.step();
        let saved: Vec<(String, Tensor)> =
            a.state().into_iter().map(|(n, t)| (n, t.copy())).collect();
        let w2 = Tensor::ones([3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let mut b = Adam::new(vec![(w2, 0.1)], 0.01);
        b.load_state(&saved, a.step).unwrap();
        assert_eq!(b.step, 1);
        for ((_, x), (_, y)) in a.state().iter().zip(b.state().iter()) {
            assert!(x.equal(y));
        }
        let w3 = Tensor::ones([4], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let e = Adam::new(vec![(w3, 0.1)], 0.01)
            .load_state(&saved, 1)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("optimizer state m.0 has shape [3], parameter 0 has [4]"),
            "{e}"
        );
    }
}
