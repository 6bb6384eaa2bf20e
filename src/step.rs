//! One optimizer step: this rank's micro-batches forward and backward (each micro-batch's loss
//! weighted by its share of the step), the gradients and BatchNorm statistics summed over
//! ranks, the optimizer's update. One process with `accumulate = k·W` computes what W ranks
//! with `accumulate = k` do (docs/training.md, "Data parallelism").
//!
//! The ranks agree on the step's outcome before they sum gradients: the summed loss, whether
//! any rank asked to stop, and whether any failed (a libtorch error caught at this step), so
//! that a failure or a signal on one rank ends every rank at the same step instead of leaving
//! the others blocked in an all-reduce.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use tch::Tensor;

use crate::data::Batches;
use crate::dist::{Dist, GradientBuckets};
use crate::failure::{self, Caught};
use crate::losses::Loss;
use crate::network::Network;
use crate::optim::Adam;
use crate::steps::stream_seed;
use lossbench_core::config::TrainSection;
use lossbench_core::config::recipe::{Augment, OptimizerKind, Schedule};

/// Where a step is: for seeding dropout and for messages.
#[derive(Debug, Clone, Copy)]
pub struct At {
    pub seed: u64,
    pub epoch: u32,
    /// The step's index in its epoch (0-based).
    pub index: usize,
}

/// One step's micro-batches and this rank's share of them.
pub struct Step<'a> {
    pub at: At,
    pub micro: &'a [Vec<usize>],
    pub mine: std::ops::Range<usize>,
}

/// What a step did.
pub struct StepDone {
    /// The step's loss summed over its patches (every rank's).
    pub loss_sum: f64,
    pub patches: usize,
    /// Some rank asked to stop.
    pub stop: bool,
    pub allreduce: Duration,
}

/// Why a step failed on some rank.
#[derive(Debug)]
pub enum StepFailure {
    /// This rank caught a libtorch error.
    Here(Caught),
    /// Another rank failed; this one did not.
    Elsewhere,
    /// Reading the batch failed.
    Data(anyhow::Error),
}

/// The optimizer and what a step needs besides the network: gradient buffers shared with the
/// other ranks, the BatchNorm statistics to combine, and the recipe's per-step parts (the
/// learning-rate schedule, augmentation, label smoothing).
pub struct Stepper {
    pub adam: Adam,
    grads: GradientBuckets,
    /// BatchNorm running statistics and counters: the variables without gradients, by name.
    bn_state: Vec<Tensor>,
    schedule: Schedule,
    /// The schedule's peak learning rate, and what its horizon needs.
    peak_lr: f64,
    steps_per_epoch: u64,
    epochs: u32,
    augment: Augment,
    label_smoothing: f64,
}

impl Stepper {
    /// The optimizer of `train.optimizer` over the network's trainable variables (sorted by
    /// name): Adam with the conv weights' L2 decay, or AdamW with every weight's decoupled decay.
    pub fn new(net: &Network, train: &TrainSection, steps_per_epoch: u64) -> Stepper {
        let l2 = match train.optimizer {
            OptimizerKind::Adam => train.conv_weight_decay,
            OptimizerKind::Adamw => 0.0,
        };
        let params = net.variables_by_name(true).into_iter().map(|(_, t)| {
            let decay = if crate::model::Model::decays(&t) {
                l2
            } else {
                0.0
            };
            (t, decay)
        });
        let mut adam = Adam::new(params.collect(), train.lr);
        if train.optimizer == OptimizerKind::Adamw {
            adam = adam.decoupled(train.weight_decay);
        }
        let grads = GradientBuckets::new(adam.params());
        let bn_state = net
            .variables_by_name(false)
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        Stepper {
            adam,
            grads,
            bn_state,
            schedule: train.schedule.clone(),
            peak_lr: train.lr,
            steps_per_epoch,
            epochs: train.epochs,
            augment: train.augment,
            label_smoothing: train.label_smoothing,
        }
    }

    /// The learning rate of the next optimizer step.
    pub fn next_lr(&self) -> f64 {
        let taken = self.adam.step as u64;
        self.schedule
            .lr(self.peak_lr, taken, self.steps_per_epoch, self.epochs)
    }

    /// Runs one step; `stop` is this rank's stop request, the returned flag every rank's.
    pub fn step(
        &mut self,
        net: &Network,
        loss: &Loss,
        dist: &Dist,
        step: Step,
        batches: &mut Batches,
        stop: bool,
    ) -> Result<StepDone, StepFailure> {
        let world_micro = step.micro.len();
        let step_len: usize = step.micro.iter().map(Vec::len).sum();
        self.adam.zero_grad();
        // BatchNorm statistics must come out as for one process whatever the micro-batching:
        // each micro-batch updates them from the step's starting values, and the step keeps
        // the updates' average weighted by micro-batch size (summed over ranks).
        let bn_shared = dist.world_size > 1 || world_micro > 1;
        let local = self.local(net, loss, &step, batches, step_len, bn_shared);
        let sync = Instant::now();
        let (loss_sum, failed) = match &local {
            Ok((loss_sum, _)) => (*loss_sum, false),
            Err(_) => (0.0, true),
        };
        let mut shared = [
            loss_sum,
            f64::from(u8::from(stop)),
            f64::from(u8::from(failed)),
        ];
        dist.sum_f64(&mut shared);
        if shared[2] > 0.0 {
            return Err(match local {
                Err(e) => e,
                Ok(_) => StepFailure::Elsewhere,
            });
        }
        let (_, bn_sum) = local.expect("no rank failed");
        if dist.world_size > 1 {
            self.grads.sum(dist, self.adam.params());
        }
        if let Some(mut bn_sum) = bn_sum {
            dist.sum_tensors(&mut bn_sum);
            tch::no_grad(|| {
                for (b, s) in self.bn_state.iter_mut().zip(&bn_sum) {
                    if b.is_floating_point() {
                        b.copy_(s);
                    }
                }
            });
        }
        let allreduce = if dist.world_size > 1 {
            sync.elapsed()
        } else {
            Duration::ZERO
        };
        self.adam.lr = self.next_lr();
        self.adam.step();
        Ok(StepDone {
            loss_sum: shared[0],
            patches: step_len,
            stop: shared[1] > 0.0,
            allreduce,
        })
    }

    /// This rank's micro-batches: the summed loss and, when BatchNorm statistics are shared,
    /// their weighted sum over the micro-batches.
    fn local(
        &mut self,
        net: &Network,
        loss: &Loss,
        step: &Step,
        batches: &mut Batches,
        step_len: usize,
        bn_shared: bool,
    ) -> Result<(f64, Option<Vec<Tensor>>), StepFailure> {
        let bn_start: Vec<Tensor> = if bn_shared {
            self.bn_state.iter().map(Tensor::copy).collect()
        } else {
            Vec::new()
        };
        let mut bn_sum: Vec<Tensor> = bn_start.iter().map(Tensor::zeros_like).collect();
        // The step's summed loss stays on the device: one read per step, not per micro-batch.
        let mut step_loss = Tensor::zeros([], (tch::Kind::Double, net.device));
        let At { seed, epoch, index } = step.at;
        for m in step.mine.clone() {
            let mut batch = batches
                .next_batch()
                .context("the loader ended early")
                .and_then(|b| b)
                .map_err(StepFailure::Data)?;
            let share = batch.indices.len() as f64 / step_len as f64;
            let patches = batch.indices.len() as f64;
            failure::catch(|| {
                if bn_shared {
                    tch::no_grad(|| {
                        for (b, s) in self.bn_state.iter_mut().zip(&bn_start) {
                            b.copy_(s);
                        }
                    });
                }
                crate::augment::apply(&mut batch.inputs, &batch.indices, self.augment, seed, epoch);
                tch::manual_seed(stream_seed(&[seed, epoch as u64, index as u64, m as u64]));
                let logits = net.forward(&batch.inputs, true);
                let eps = self.label_smoothing;
                let targets = net.to_device(&batch.targets);
                let targets = if eps > 0.0 {
                    targets * (1.0 - eps) + eps / 2.0
                } else {
                    targets
                };
                let value = loss.compute(&logits, &targets);
                (&value * share).backward();
                step_loss += value.detach().to_kind(tch::Kind::Double) * patches;
                if bn_shared {
                    tch::no_grad(|| {
                        for (sum, b) in bn_sum.iter_mut().zip(&self.bn_state) {
                            if b.is_floating_point() {
                                *sum += b * share;
                            }
                        }
                    });
                }
            })
            .map_err(StepFailure::Here)?;
        }
        let loss_sum = failure::catch(|| step_loss.double_value(&[])).map_err(StepFailure::Here)?;
        Ok((loss_sum, bn_shared.then_some(bn_sum)))
    }
}

impl StepFailure {
    /// The error every rank reports, agreed between them ([`Dist::agree`]): the failing rank's
    /// own, with the run and step it happened at; [`crate::dist::PeerFailed`] with its message
    /// on the others. Every rank of a failed step calls it.
    pub fn agreed(self, dist: &Dist, context: &crate::failure::Context) -> anyhow::Error {
        let mine = match self {
            StepFailure::Here(caught) => Err(context.error(caught)),
            StepFailure::Data(e) => Err(e.context(format!("{}: {}", context.run, context.doing))),
            StepFailure::Elsewhere => Ok(()),
        };
        match dist.agree(mine) {
            Err(e) => e,
            Ok(()) => anyhow!("{}: a rank failed {}", context.run, context.doing),
        }
    }
}
