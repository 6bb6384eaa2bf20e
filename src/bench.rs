//! `trainer bench`: times the trainer's own optimizer step (the code `trainer train` runs) on a
//! run's data, for the comparisons with Python PyTorch in `make bench` and the GPU check
//! (docs/benchmarks.md). Steps are full batches of the seeded epoch orders, epoch after epoch.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use tch::{Device, Tensor};

use crate::run::Run;
use crate::train::Step;

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

impl Run {
    /// Runs `warmup + steps` optimizer steps from the run's current weights and times them.
    pub fn time_steps(&mut self, warmup: usize, steps: usize) -> Result<Timing> {
        let batch = self.config.train.batch_size;
        let count = warmup + steps;
        let (mut losses, mut seconds) = (Vec::new(), Vec::new());
        let mut epoch = 1;
        while losses.len() < count {
            let plan = self.plan_epoch(epoch);
            let mine = |m: &[Vec<usize>]| plan.mine(m);
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
                    self.train.split().len
                );
            }
            let lists = full.iter().flat_map(|(_, m)| m[mine(m)].to_vec()).collect();
            let mut batches = self.train.batches(lists, &self.loading)?;
            for &(index, micro) in &full {
                let started = Instant::now();
                let done = self.step(
                    Step {
                        epoch,
                        index,
                        micro,
                        mine: mine(micro),
                    },
                    &mut batches,
                    false,
                )?;
                // Reading the loss in `step` waits for the device: the time is the step's.
                seconds.push(started.elapsed().as_secs_f64());
                losses.push(done.loss_sum / done.patches as f64);
            }
            epoch += 1;
        }
        let timed: f64 = seconds[warmup..].iter().sum();
        Ok(Timing {
            device: format!("{:?}", self.device),
            arch: self.model.arch().name().into(),
            loss: self.loss.name().into(),
            batch,
            bf16: self.config.train.bf16,
            step_losses: losses,
            step_seconds: seconds,
            warmup,
            images_per_s: (steps * batch) as f64 / timed,
            torch: crate::device::TORCH_VERSION,
        })
    }

    /// Writes the first batch of epoch 1 (z-scored inputs `b10m`, `b20m`, `b60m` and `targets`,
    /// f32) as safetensors: the data the Python peer trains on.
    pub fn save_first_batch(&self, path: &Path) -> Result<()> {
        let plan = self.plan_epoch(1);
        let indices: Vec<usize> = plan
            .steps
            .first()
            .context("the training split is empty")?
            .concat();
        let mut batches = self.train.batches(vec![indices], &self.loading)?;
        let b = batches.next_batch().context("no batch")??;
        let cpu = |t: &Tensor| t.to_device(Device::Cpu);
        let named = [
            ("b10m", cpu(&b.inputs[0])),
            ("b20m", cpu(&b.inputs[1])),
            ("b60m", cpu(&b.inputs[2])),
            ("targets", cpu(&b.targets)),
        ];
        Tensor::write_safetensors(&named, path)
            .with_context(|| format!("writing {}", path.display()))
    }
}
