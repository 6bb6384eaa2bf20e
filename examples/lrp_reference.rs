//! Explains given inputs with given weights, for tests/python/test_lrp_zennit.py, which runs
//! zennit on the same network and compares:
//!
//!   lrp_reference ARCH WEIGHTS.safetensors INPUTS.safetensors COMPOSITE EPSILON OUT.safetensors [f64]
//!
//! INPUTS holds `b10m`, `b20m`, `b60m` (float32, `[N, C, H, W]`) and `classes` (int64, `[N]`);
//! OUT gets the relevance `b10m`, `b20m`, `b60m` (in f64 with `f64`: the deep networks are
//! compared in double precision, where float32 rounding through 50 layers does not blur the
//! comparison), `combined` and the explained `logits`.

use anyhow::{Context, Result};
use lossbench::lrp::Explainer;
use lossbench_core::config::{Arch, Composite};
use tch::Tensor;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (precision, args) = match args.split_last() {
        Some((last, rest)) if last == "f64" => (tch::Kind::Double, rest),
        _ => (tch::Kind::Float, args.as_slice()),
    };
    let [arch, weights, inputs, composite, epsilon, out] = args else {
        anyhow::bail!("usage: lrp_reference ARCH WEIGHTS INPUTS COMPOSITE EPSILON OUT [f64]");
    };
    let arch: Arch = toml::Value::String(arch.clone())
        .try_into()
        .with_context(|| format!("unknown architecture {arch:?}"))?;
    let weights =
        Tensor::read_safetensors(weights).with_context(|| format!("reading {weights}"))?;
    let inputs = Tensor::read_safetensors(inputs).with_context(|| format!("reading {inputs}"))?;
    let get = |name: &str| {
        inputs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.shallow_clone())
            .context(name.to_string())
    };
    let explainer = Explainer::with_precision(
        &weights,
        arch,
        composite.parse::<Composite>().map_err(anyhow::Error::msg)?,
        epsilon.parse()?,
        precision,
    )?;
    let classes = Vec::<i64>::try_from(get("classes")?)?;
    let maps = explainer.explain(&[get("b10m")?, get("b20m")?, get("b60m")?], &classes)?;
    let stack = |f: &dyn Fn(&lossbench::lrp::Heatmap) -> Tensor| {
        Tensor::stack(&maps.iter().map(f).collect::<Vec<_>>(), 0)
    };
    let named = [
        ("b10m", stack(&|h| h.bands[0].shallow_clone())),
        ("b20m", stack(&|h| h.bands[1].shallow_clone())),
        ("b60m", stack(&|h| h.bands[2].shallow_clone())),
        ("combined", stack(&|h| h.combined.shallow_clone())),
        (
            "logits",
            Tensor::from_slice(&maps.iter().map(|h| h.logit).collect::<Vec<_>>()),
        ),
    ];
    Tensor::write_safetensors(&named, out)?;
    Ok(())
}
