//! `trainer bench`: times the trainer's own optimizer step (the code `trainer train` runs) on a
//! run's data, for the comparisons with Python PyTorch in `make bench` and the GPU check
//! (docs/benchmarks.md). Steps are full batches of the seeded epoch orders, epoch after epoch.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use tch::{Device, Tensor};

use crate::run::Run;
use crate::step::{At, Step};
use crate::steps::EpochPlan;

/// What a timed sequence of steps did.
#[derive(Debug, Serialize)]
pub struct Timing {
    pub device: String,
    pub arch: String,
    pub loss: String,
    pub batch: usize,
    pub bf16: bool,
    /// Mean loss of each step, warm-up steps first.
    pub step_losses: Vec<f64>,
    pub step_seconds: Vec<f64>,
    pub warmup: usize,
    /// Over the steps after the warm-up.
    pub images_per_s: f64,
    pub torch: &'static str,
}

fn plan(run: &Run, epoch: u32) -> EpochPlan {
    let t = &run.config.train;
    let world = (run.dist.rank, run.dist.world_size);
    let len = run.data.train.split().len;
    EpochPlan::new(
        len,
        run.config.run.seed,
        epoch,
        t.batch_size,
        world,
        t.accumulate,
    )
}

/// Runs `warmup + steps` optimizer steps from the run's current weights and times them.
pub fn time_steps(run: &mut Run, warmup: usize, steps: usize) -> Result<Timing> {
    let batch = run.config.train.batch_size;
    let count = warmup + steps;
    let (mut losses, mut seconds) = (Vec::new(), Vec::new());
    let mut epoch = 1;
    while losses.len() < count {
        let plan = plan(run, epoch);
        let full: Vec<(usize, &Vec<Vec<usize>>)> = plan
            .steps
            .iter()
            .enumerate()
            .filter(|(_, m)| m.iter().map(Vec::len).sum::<usize>() == batch)
            .take(count - losses.len())
            .collect();
        if full.is_empty() {
            bail!(
                "the training split has {} patches, fewer than train.batch_size = {batch}",
                run.data.train.split().len
            );
        }
        let lists = full
            .iter()
            .flat_map(|(_, m)| m[plan.mine(m)].to_vec())
            .collect();
        let mut batches = run.data.train.batches(lists, &run.data.loading)?;
        for &(index, micro) in &full {
            let started = Instant::now();
            let at = At {
                seed: run.config.run.seed,
                epoch,
                index,
            };
            let step = Step {
                at,
                micro,
                mine: plan.mine(micro),
            };
            let r = &mut *run;
            let done = r
                .stepper
                .step(&r.net, &r.loss, &r.dist, step, &mut batches, false)
                .map_err(|f| anyhow!("timing step {index} of epoch {epoch}: {f:?}"))?;
            // Reading the loss in `step` waits for the device: the time is the step's.
            seconds.push(started.elapsed().as_secs_f64());
            losses.push(done.loss_sum / done.patches as f64);
        }
        epoch += 1;
    }
    let timed: f64 = seconds[warmup..].iter().sum();
    Ok(Timing {
        device: format!("{:?}", run.net.device).to_lowercase(),
        arch: run.net.model.arch().name().into(),
        loss: run.loss.name().into(),
        batch,
        bf16: run.config.train.bf16,
        step_losses: losses,
        step_seconds: seconds,
        warmup,
        images_per_s: (steps * batch) as f64 / timed,
        torch: crate::device::TORCH_VERSION,
    })
}

/// Writes the first batch of epoch 1 (z-scored inputs `b10m`, `b20m`, `b60m` and `targets`,
/// f32) as safetensors: the data the Python peer trains on.
pub fn save_first_batch(run: &Run, path: &Path) -> Result<()> {
    let plan = plan(run, 1);
    let indices: Vec<usize> = plan
        .steps
        .first()
        .context("the training split is empty")?
        .concat();
    let mut batches = run.data.train.batches(vec![indices], &run.data.loading)?;
    let b = batches.next_batch().context("no batch")??;
    let cpu = |t: &Tensor| t.to_device(Device::Cpu);
    let named = [
        ("b10m", cpu(&b.inputs[0])),
        ("b20m", cpu(&b.inputs[1])),
        ("b60m", cpu(&b.inputs[2])),
        ("targets", cpu(&b.targets)),
    ];
    Tensor::write_safetensors(&named, path).with_context(|| format!("writing {}", path.display()))
}
