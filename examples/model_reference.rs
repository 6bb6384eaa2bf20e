//! A freshly initialised network and its eval-mode logits, for the comparison with torchvision
//! (tests/python/test_models_torchvision.py): BatchNorm statistics are set to non-trivial values
//! first, so that the comparison covers them.
//!
//!   model_reference ARCH SEED INPUTS.safetensors WEIGHTS.safetensors LOGITS.safetensors
//!
//! INPUTS holds `b10m`, `b20m`, `b60m` (float32, `[N, C, H, W]`); WEIGHTS gets every variable
//! by its (torchvision) name; LOGITS gets `logits` `[N, 19]`.

use anyhow::{Context, Result};
use lossbench::model::{Model, Regularization};
use lossbench_core::config::Arch;
use tch::{Device, Tensor, nn};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [arch, seed, inputs, weights, logits] = args.as_slice() else {
        anyhow::bail!("usage: model_reference ARCH SEED INPUTS WEIGHTS LOGITS");
    };
    let arch: Arch = toml::Value::String(arch.clone())
        .try_into()
        .with_context(|| format!("unknown architecture {arch:?}"))?;
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Model::new(&vs.root(), arch, seed.parse()?, Regularization::OWN);
    tch::no_grad(|| {
        for (name, mut t) in vs.variables() {
            if name.ends_with("running_mean") {
                let _ = t.uniform_(-0.3, 0.3);
            } else if name.ends_with("running_var") {
                let _ = t.uniform_(0.5, 2.0);
            }
        }
    });
    let read = Tensor::read_safetensors(inputs).with_context(|| format!("reading {inputs}"))?;
    let get = |name: &str| {
        read.iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.shallow_clone())
            .context(name.to_string())
    };
    let x = [get("b10m")?, get("b20m")?, get("b60m")?];
    let out = tch::no_grad(|| model.forward_t(&x, false));
    let named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    Tensor::write_safetensors(&named, weights)?;
    Tensor::write_safetensors(&[("logits", out)], logits)?;
    Ok(())
}
