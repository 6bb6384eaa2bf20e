//! A loss's value and gradient on given logits and targets, for the comparison with timm
//! (tests/python/test_losses_timm.py):
//!
//!   loss_reference 'name = "asl"' IN.safetensors OUT.safetensors
//!
//! The first argument is a `[loss]` section (TOML). IN holds `logits` and `targets` (float64,
//! `[B, 19]`); OUT gets the batch-mean `value` (a scalar) and its `gradient` with respect to
//! the logits, in float64. W-CE weights, where the loss has them, are 1.

use anyhow::{Context, Result};
use lossbench::losses::Loss;
use lossbench_core::config::LossSpec;
use tch::Tensor;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [spec, input, out] = args.as_slice() else {
        anyhow::bail!("usage: loss_reference SPEC IN OUT");
    };
    let spec: LossSpec =
        toml::from_str(spec).with_context(|| format!("not a [loss] section: {spec}"))?;
    let loss = Loss::new(&spec, &[0; lossbench_core::labels::NUM_CLASSES], 0);
    let read = Tensor::read_safetensors(input).with_context(|| format!("reading {input}"))?;
    let get = |name: &str| {
        read.iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.shallow_clone())
            .context(name.to_string())
    };
    let logits = get("logits")?.set_requires_grad(true);
    let value = loss.compute(&logits, &get("targets")?);
    value.backward();
    Tensor::write_safetensors(
        &[("value", value.detach()), ("gradient", logits.grad())],
        out,
    )?;
    Ok(())
}
