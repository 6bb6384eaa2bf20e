//! An optimizer's trajectory under a learning-rate schedule, for the comparison with PyTorch's
//! `torch.optim.Adam` / `AdamW` and its schedulers (tests/python/test_optim_torch.py):
//!
//!   optim_trace SPEC IN.safetensors OUT.safetensors
//!
//! SPEC (TOML): `optimizer` ("adam" or "adamw"), `lr` (the peak), `weight_decay` (AdamW's,
//! decoupled), `l2` (Adam's, added to the gradient), `steps_per_epoch`, `epochs`, and a
//! `[schedule]` table as `[train.schedule]` in a job. IN holds `w` (float32, the starting
//! parameter) and `grads` (`[steps, len(w)]`): the gradient of each step. OUT gets `w` after
//! every step (`[steps, len(w)]`) and `lr`, the learning rate each step used, in float64.

use anyhow::{Context, Result};
use lossbench::optim::Adam;
use lossbench_core::config::recipe::{OptimizerKind, Schedule};
use serde::Deserialize;
use tch::{Kind, Tensor};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    optimizer: OptimizerKind,
    lr: f64,
    #[serde(default)]
    weight_decay: f64,
    #[serde(default)]
    l2: f64,
    steps_per_epoch: u64,
    epochs: u32,
    #[serde(default)]
    schedule: Schedule,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [spec, input, out] = args.as_slice() else {
        anyhow::bail!("usage: optim_trace SPEC IN OUT");
    };
    let spec: Spec = toml::from_str(spec).with_context(|| format!("not a spec: {spec}"))?;
    let read = Tensor::read_safetensors(input).with_context(|| format!("reading {input}"))?;
    let get = |name: &str| {
        read.iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.shallow_clone())
            .context(name.to_string())
    };
    let w = get("w")?.copy().set_requires_grad(true);
    let grads = get("grads")?;
    let mut adam = Adam::new(vec![(w.shallow_clone(), spec.l2)], spec.lr);
    if spec.optimizer == OptimizerKind::Adamw {
        adam = adam.decoupled(spec.weight_decay);
    }
    let (mut trajectory, mut lrs) = (Vec::new(), Vec::new());
    for g in grads.unbind(0) {
        adam.zero_grad();
        // d/dw of <w, g> is g: the step's gradient, through the same backward pass as training.
        (&w * &g).sum(Kind::Float).backward();
        adam.lr = spec
            .schedule
            .lr(spec.lr, adam.step as u64, spec.steps_per_epoch, spec.epochs);
        adam.step();
        trajectory.push(w.detach().copy());
        lrs.push(adam.lr);
    }
    Tensor::write_safetensors(
        &[
            ("w", Tensor::stack(&trajectory, 0)),
            ("lr", Tensor::from_slice(&lrs)),
        ],
        out,
    )?;
    Ok(())
}
