//! Evaluating a split in eval mode (validation every epoch, test at the end with the best
//! epoch's weights), exactly and identically on any number of ranks: ranks evaluate alternate
//! batches and sum their integer counts, so the metrics equal one process's.
//!
//! A stop signal is honoured between batches (the ranks agree on it after each batch), so that
//! a time limit's signal arriving during a long validation does not wait for its end.

use anyhow::{Context, Result};
use tch::Device;

use crate::data::{Loading, Source};
use crate::dist::Dist;
use crate::failure;
use crate::losses::Loss;
use crate::network::Network;
use lossbench_core::labels::NUM_CLASSES;
use lossbench_core::metrics::Counts;
use lossbench_core::ranking::Ranking;

/// A split's evaluation.
pub struct Evaluation {
    pub loss: f64,
    pub counts: Counts,
    /// Every patch's logits, row-major `[N, 19]`, in split order (for the ranking metrics).
    pub logits: Vec<f32>,
    /// With `keep`: every patch's decisions, likewise.
    pub decisions: Vec<u8>,
}

impl Evaluation {
    /// The ranking metrics of the logits against the split's labels.
    pub fn ranking(&self, split: &lossbench_core::store::SplitData) -> Ranking {
        lossbench_core::ranking::ranking(&self.logits, &split.labels)
    }
}

/// What evaluating needs: the network, its loss, the ranks, the loader.
pub struct Evaluator<'a> {
    pub net: &'a Network,
    pub loss: &'a Loss,
    pub dist: &'a Dist,
    pub loading: &'a Loading,
    /// Patches per forward pass on each rank.
    pub batch: usize,
    /// For the messages of caught libtorch errors.
    pub context: failure::Context,
}

impl Evaluator<'_> {
    /// Mean loss, metric counts and every patch's logits over a split, in eval mode; with
    /// `keep`, also every patch's decisions. `stop` is polled after each batch: `None` when a rank asked to
    /// stop before the end.
    pub fn evaluate(
        &self,
        source: &Source,
        keep: bool,
        stop: &dyn Fn() -> bool,
    ) -> Result<Option<Evaluation>> {
        let split = source.split().clone();
        let order: Vec<usize> = (0..split.len).collect();
        let (rank, world) = (self.dist.rank, self.dist.world_size);
        let lists: Vec<Vec<usize>> = order
            .chunks(self.batch)
            .skip(rank)
            .step_by(world)
            .map(<[usize]>::to_vec)
            .collect();
        // Every rank goes through as many rounds as the rank with the most batches.
        let rounds = order.chunks(self.batch).len().div_ceil(world);
        let mut batches = source.batches(lists, self.loading)?;
        let (mut loss_sum, mut counts) = (0.0, Counts::default());
        // Kept rows are placed at their patch's position; ranks fill disjoint rows of zeros, so
        // summing over ranks gathers them exactly.
        let mut logits_all = vec![0f32; split.len * NUM_CLASSES];
        let mut decisions_all = vec![0f32; if keep { split.len * NUM_CLASSES } else { 0 }];
        for _ in 0..rounds {
            let done = match batches.next_batch() {
                Some(batch) => batch.and_then(|batch| {
                    let (loss, logits, decided) = failure::catch(|| self.forward(&batch))
                        .map_err(|c| self.context.error(c))?;
                    loss_sum += loss * batch.indices.len() as f64;
                    let pred = Vec::<u8>::try_from(decided).context("reading decisions")?;
                    let truth: Vec<u8> = batch
                        .indices
                        .iter()
                        .flat_map(|&i| split.labels_of(i).iter().copied())
                        .collect();
                    counts.add(&truth, &pred);
                    let first = batch.indices[0] * NUM_CLASSES;
                    let rows = first..first + batch.indices.len() * NUM_CLASSES;
                    logits.copy_data(&mut logits_all[rows.clone()], rows.len());
                    if keep {
                        for (d, &p) in decisions_all[rows].iter_mut().zip(&pred) {
                            *d = f32::from(p);
                        }
                    }
                    Ok(())
                }),
                None => Ok(()),
            };
            // The ranks agree after every batch: a failure or a stop on one ends them all here.
            let mut flags = [u64::from(stop()), u64::from(done.is_err())];
            self.dist.sum_u64(&mut flags);
            if flags[1] > 0 {
                // Every rank learns the failing rank's error and exit code.
                let mine =
                    done.with_context(|| format!("{}: {}", self.context.run, self.context.doing));
                self.dist.agree(mine)?;
                anyhow::bail!("{}: a rank failed {}", self.context.run, self.context.doing);
            }
            if flags[0] > 0 {
                return Ok(None);
            }
        }
        let mut loss_sum = [loss_sum];
        self.dist.sum_f64(&mut loss_sum);
        let mut flat = counts.to_flat();
        self.dist.sum_u64(&mut flat);
        self.dist.sum_f32(&mut logits_all);
        self.dist.sum_f32(&mut decisions_all);
        Ok(Some(Evaluation {
            loss: loss_sum[0] / split.len as f64,
            counts: Counts::from_flat(&flat),
            logits: logits_all,
            decisions: decisions_all.iter().map(|&d| d as u8).collect(),
        }))
    }

    /// A batch's loss, its logits on the CPU and its decisions.
    fn forward(&self, batch: &crate::data::Batch) -> (f64, tch::Tensor, tch::Tensor) {
        tch::no_grad(|| {
            let logits = self.net.forward(&batch.inputs, false);
            let targets = self.net.to_device(&batch.targets);
            let loss = self.loss.compute(&logits, &targets).double_value(&[]);
            let decided = self
                .loss
                .decide(&logits)
                .to_device(Device::Cpu)
                .reshape([-1]);
            let logits = logits
                .to_device(Device::Cpu)
                .to_kind(tch::Kind::Float)
                .reshape([-1]);
            (loss, logits, decided)
        })
    }
}
