//! The training loop: each epoch trains on the training split in a seeded order, evaluates the
//! validation split, appends one record to `epochs.jsonl` (synced) and checkpoints.
//!
//! Randomness derives from (seed, epoch, step, micro-batch) only: the data order from
//! (seed, epoch), dropout from all four, so results do not depend on where a run stopped.
//!
//! Data parallelism ([`crate::dist`]): a step of `batch_size` patches is cut into
//! `world_size × accumulate` micro-batches; rank r trains micro-batches `r·k .. (r+1)·k`, and
//! the gradients (each micro-batch's weighted by its share of the step) and the BatchNorm
//! running statistics are summed over ranks. One process with `accumulate = k·W` does the
//! same computation.

use std::fs;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tch::Tensor;

use crate::checkpoint;
use crate::data::{Batches, epoch_order};
use crate::eval::Evaluation;
use crate::records::{self, EpochRecord, StepTimes};
use crate::run::Run;

/// Exit code of a trainer stopped by SIGTERM or SIGUSR1 after checkpointing: the job should be
/// requeued and resumed (`--resume auto`). 75 is EX_TEMPFAIL, "try again later".
pub const EXIT_REQUEUE: u8 = 75;

/// How a call to [`Run::train`] ended.
pub enum Ending {
    /// Every epoch is trained.
    Finished(Vec<EpochRecord>),
    /// A stop was requested; training state is checkpointed.
    Stopped { epoch: u32, steps_into_epoch: u64 },
}

/// One optimizer step of an epoch: its micro-batches and this rank's share of them.
pub(crate) struct Step<'a> {
    pub epoch: u32,
    pub index: usize,
    pub micro: &'a [Vec<usize>],
    pub mine: std::ops::Range<usize>,
}

/// An epoch's steps, each a list of micro-batches, and which of them this rank trains.
pub(crate) struct EpochPlan {
    pub steps: Vec<Vec<Vec<usize>>>,
    rank: usize,
    accumulate: usize,
}

impl EpochPlan {
    /// This rank's micro-batches of a step, as indices among the step's.
    pub fn mine(&self, micro: &[Vec<usize>]) -> std::ops::Range<usize> {
        let k = self.accumulate;
        (self.rank * k).min(micro.len())..((self.rank + 1) * k).min(micro.len())
    }
}

/// What a step did.
pub(crate) struct StepDone {
    /// The step's loss summed over its patches (all ranks').
    pub loss_sum: f64,
    pub patches: usize,
    /// Some rank asked to stop.
    pub stop: bool,
    pub allreduce: Duration,
}

/// How one epoch's training ended.
enum EpochEnd {
    /// Mean loss, training images per second and where the time went, over the part of the
    /// epoch this process trained.
    Done {
        loss: f64,
        images_per_s: f64,
        times: StepTimes,
    },
    Stopped {
        steps: u64,
        loss_sum: f64,
    },
}

/// A well-mixed seed for torch's generator from several counters (splitmix64 steps).
fn stream_seed(parts: &[u64]) -> i64 {
    let mut h: u64 = 0x9E37_79B9_7F4A_7C15;
    for &p in parts {
        h = h.wrapping_add(p).wrapping_add(0x9E37_79B9_7F4A_7C15);
        h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        h ^= h >> 31;
    }
    (h >> 1) as i64
}

/// BatchNorm in training mode needs two patches in a batch: the variance of one value is
/// undefined (libtorch would put NaN into the running variance, where PyTorch raises).
pub const MIN_MICRO_BATCH: usize = 2;

/// The ranges of an epoch's order that make its steps: `batch_size` patches each; a last step
/// shorter than [`MIN_MICRO_BATCH`] joins the one before, so that no patch is left out.
fn step_ranges(len: usize, batch_size: usize) -> Vec<std::ops::Range<usize>> {
    let mut ranges: Vec<std::ops::Range<usize>> = (0..len)
        .step_by(batch_size)
        .map(|s| s..(s + batch_size).min(len))
        .collect();
    if ranges.len() > 1 && ranges.last().is_some_and(|r| r.len() < MIN_MICRO_BATCH) {
        let last = ranges.pop().expect("two ranges");
        ranges.last_mut().expect("one range").end = last.end;
    }
    ranges
}

/// Splits one step's patches, in order, into at most `k` micro-batches whose sizes differ by
/// at most one, each of at least [`MIN_MICRO_BATCH`] patches (fewer micro-batches when the step
/// is too short for `k`).
fn micro_batches(step: &[usize], k: usize) -> Vec<Vec<usize>> {
    let count = k.min(step.len() / MIN_MICRO_BATCH).max(1);
    let (base, extra) = (step.len() / count, step.len() % count);
    let mut rest = step;
    (0..count)
        .map(|i| {
            let (head, tail) = rest.split_at(base + usize::from(i < extra));
            rest = tail;
            head.to_vec()
        })
        .collect()
}

impl Run {
    /// Trains the remaining epochs, appending each record to `epochs.jsonl` and checkpointing
    /// after it; stops early (with a checkpoint) when [`Run::stop`] is set.
    pub fn train(&mut self) -> Result<Ending> {
        let mut file = if self.dist.is_root() {
            Some(self.open_records()?)
        } else {
            None
        };
        let mut records = Vec::new();
        let mut steps_taken = 0;
        for epoch in self.progress.start_epoch..=self.config.train.epochs {
            let started = Instant::now();
            let (train_loss, images_per_s, time) =
                match self.train_epoch(epoch, &mut steps_taken)? {
                    EpochEnd::Done {
                        loss,
                        images_per_s,
                        times,
                    } => (loss, images_per_s, times),
                    EpochEnd::Stopped { steps, loss_sum } => {
                        self.save_checkpoint(epoch - 1, steps, loss_sum)?;
                        return Ok(Ending::Stopped {
                            epoch,
                            steps_into_epoch: steps,
                        });
                    }
                };
            let Evaluation {
                loss: val_loss,
                counts,
                ..
            } = self.evaluate(&self.val.clone(), false)?;
            if !val_loss.is_finite() {
                bail!(
                    "epoch {epoch}: the validation loss is {val_loss} (weights or BatchNorm statistics are not finite); the epoch is not checkpointed"
                );
            }
            let record = EpochRecord {
                epoch,
                train_loss,
                val_loss,
                lr: self.adam.lr,
                wall_s: started.elapsed().as_secs_f64(),
                images_per_s,
                data_wait_fraction: time.data_wait_s
                    / (time.compute_s + time.allreduce_s + time.data_wait_s),
                time,
                val: counts.metrics(),
            };
            if let Some(file) = &mut file {
                let path = self.dir.join(records::EPOCHS_FILE);
                writeln!(file, "{}", serde_json::to_string(&record)?)
                    .and_then(|()| file.flush())
                    .and_then(|()| file.sync_data())
                    .with_context(|| format!("appending to {}", path.display()))?;
            }
            tracing::info!(
                epoch,
                train_loss = format!("{train_loss:.4}"),
                val_loss = format!("{val_loss:.4}"),
                val_f1_samples = format!("{:.4}", record.val.samples.f1),
                images_per_s = format!("{:.0}", record.images_per_s),
                "epoch done"
            );
            let every = self.config.lrp.every;
            if self.dist.is_root() && every > 0 && epoch % every == 0 {
                self.probes.snapshot(self, epoch)?;
            }
            if record.val.samples.f1 > self.progress.best_f1 {
                self.progress.best_f1 = record.val.samples.f1;
                self.progress.best_epoch = epoch;
            }
            self.save_checkpoint(epoch, 0, 0.0)?;
            records.push(record);
            if self.stop_requested(steps_taken) && epoch < self.config.train.epochs {
                return Ok(Ending::Stopped {
                    epoch: epoch + 1,
                    steps_into_epoch: 0,
                });
            }
        }
        Ok(Ending::Finished(records))
    }

    fn stop_requested(&self, steps_taken: u64) -> bool {
        self.stop.load(Ordering::SeqCst) || self.stop_after_steps.is_some_and(|n| steps_taken >= n)
    }

    /// The steps of `epoch`: its seeded order cut into steps of micro-batches.
    pub(crate) fn plan_epoch(&self, epoch: u32) -> EpochPlan {
        let t = &self.config.train;
        let (k, rank, world) = (t.accumulate, self.dist.rank, self.dist.world_size);
        let order = epoch_order(self.train.split().len, self.config.run.seed, epoch);
        let steps = step_ranges(order.len(), t.batch_size)
            .into_iter()
            .map(|r| micro_batches(&order[r], world * k))
            .collect();
        EpochPlan {
            steps,
            rank,
            accumulate: k,
        }
    }

    /// Trains one epoch (from step `skip_steps` on, after a mid-epoch stop).
    fn train_epoch(&mut self, epoch: u32, steps_taken: &mut u64) -> Result<EpochEnd> {
        let plan = self.plan_epoch(epoch);
        let (steps, mine) = (&plan.steps, |m: &[Vec<usize>]| plan.mine(m));
        let skip = std::mem::take(&mut self.progress.skip_steps) as usize;
        let mut loss_sum = std::mem::take(&mut self.progress.partial_loss_sum);
        let flat: Vec<Vec<usize>> = steps[skip..]
            .iter()
            .flat_map(|m| m[mine(m)].iter().cloned())
            .collect();
        let trained: usize = steps[skip..].iter().flatten().map(Vec::len).sum();
        let mut batches = self.train.batches(flat, &self.loading)?;
        let progress = data_prep::progress::bar_if(
            self.dist.is_root(),
            (steps.len() - skip) as u64,
            &format!("epoch {epoch} steps"),
        );
        let started = Instant::now();
        let mut allreduce = Duration::ZERO;
        for (s, micro) in steps.iter().enumerate().skip(skip) {
            let stop_after = self.stop_requested(*steps_taken + 1);
            let done = self.step(
                Step {
                    epoch,
                    index: s,
                    micro,
                    mine: mine(micro),
                },
                &mut batches,
                stop_after,
            )?;
            // The summed loss is every rank's: all of them stop here together.
            if !done.loss_sum.is_finite() {
                bail!(
                    "epoch {epoch}, step {}: the training loss is {} (training diverged); nothing of this epoch is checkpointed, \
                     a smaller train.lr may help",
                    s + 1,
                    done.loss_sum
                );
            }
            allreduce += done.allreduce;
            loss_sum += done.loss_sum;
            *steps_taken += 1;
            if self.adam.step == 1 {
                // The benchmark times launch → this line (docs/benchmarks.md).
                tracing::info!("first optimizer step done");
            }
            tracing::debug!(
                epoch,
                step = s + 1,
                loss = done.loss_sum / done.patches as f64,
                "step done"
            );
            progress.inc(1);
            // Every rank sees the same flag: a signal delivered to one rank stops them all.
            if done.stop && s + 1 < steps.len() {
                return Ok(EpochEnd::Stopped {
                    steps: s as u64 + 1,
                    loss_sum,
                });
            }
        }
        progress.finish_and_clear();
        let seconds = started.elapsed().as_secs_f64();
        let data_wait_s = batches.waited().as_secs_f64();
        let allreduce_s = allreduce.as_secs_f64();
        Ok(EpochEnd::Done {
            loss: loss_sum / self.train.split().len as f64,
            images_per_s: trained as f64 / seconds,
            times: StepTimes {
                compute_s: seconds - data_wait_s - allreduce_s,
                allreduce_s,
                data_wait_s,
            },
        })
    }

    /// One optimizer step: this rank's micro-batches forward and backward, the gradients and
    /// BatchNorm statistics summed over ranks, the Adam update. `stop` is this rank's stop
    /// request; the returned flag is every rank's, combined.
    pub(crate) fn step(
        &mut self,
        step: Step,
        batches: &mut Batches,
        stop: bool,
    ) -> Result<StepDone> {
        let (world, k) = (self.dist.world_size, self.config.train.accumulate);
        let seed = self.config.run.seed;
        let step_len: usize = step.micro.iter().map(Vec::len).sum();
        self.adam.zero_grad();
        // BatchNorm statistics must come out as for one process whatever the micro-batching:
        // each micro-batch updates them from the step's starting values, and the step keeps
        // the updates' average weighted by micro-batch size (summed over ranks).
        let bn_shared = world * k > 1;
        let bn_start: Vec<Tensor> = if bn_shared {
            self.bn_state.iter().map(Tensor::copy).collect()
        } else {
            Vec::new()
        };
        let mut bn_sum: Vec<Tensor> = bn_start.iter().map(Tensor::zeros_like).collect();
        // The step's summed loss stays on the device: one read per step, not per micro-batch.
        let mut step_loss = Tensor::zeros([], (tch::Kind::Double, self.device));
        for m in step.mine {
            let batch = batches.next_batch().context("the loader ended early")??;
            let share = batch.indices.len() as f64 / step_len as f64;
            if bn_shared {
                tch::no_grad(|| {
                    self.bn_state.iter_mut().zip(&bn_start).for_each(|(b, s)| {
                        b.copy_(s);
                    })
                });
            }
            tch::manual_seed(stream_seed(&[
                seed,
                step.epoch as u64,
                step.index as u64,
                m as u64,
            ]));
            let logits = self.forward(&batch.inputs, true);
            let loss = self.loss.compute(&logits, &self.to_device(&batch.targets));
            (&loss * share).backward();
            step_loss += loss.detach().to_kind(tch::Kind::Double) * batch.indices.len() as f64;
            if bn_shared {
                tch::no_grad(|| {
                    for (sum, b) in bn_sum.iter_mut().zip(&self.bn_state) {
                        if b.is_floating_point() {
                            *sum += b * share;
                        }
                    }
                });
            }
        }
        let sync = Instant::now();
        let mut shared = [step_loss.double_value(&[]), f64::from(u8::from(stop))];
        if world > 1 {
            self.grads.sum(&self.dist, self.adam.params());
            self.dist.sum_f64(&mut shared);
        }
        if bn_shared {
            self.dist.sum_tensors(&mut bn_sum);
            tch::no_grad(|| {
                for (b, s) in self
                    .bn_state
                    .iter_mut()
                    .zip(&bn_sum)
                    .filter(|(b, _)| b.is_floating_point())
                {
                    b.copy_(s);
                }
            });
        }
        let allreduce = if world > 1 {
            sync.elapsed()
        } else {
            Duration::ZERO
        };
        self.adam.step();
        Ok(StepDone {
            loss_sum: shared[0],
            patches: step_len,
            stop: shared[1] > 0.0,
            allreduce,
        })
    }

    /// Rank 0 writes the checkpoint; every rank waits for it, so any may read it next.
    fn save_checkpoint(
        &self,
        epoch: u32,
        steps_into_next: u64,
        partial_loss_sum: f64,
    ) -> Result<()> {
        if !self.dist.is_root() {
            self.dist.barrier();
            return Ok(());
        }
        let p = &self.progress;
        let state = checkpoint::State {
            epoch,
            steps_into_next,
            partial_loss_sum,
            optimizer_step: self.adam.step,
            best_epoch: p.best_epoch,
            best_f1: p.best_f1,
            crc32: [0, 0],
        };
        let saved = checkpoint::save(
            &self.dir,
            &self.named_variables(),
            &self.adam.state(),
            state,
            self.config.checkpoint.keep_last,
        );
        self.dist.barrier();
        saved
    }

    /// Records of epochs before `start_epoch` survive a resume; later ones (an epoch recorded
    /// but killed before its checkpoint) are dropped, since that epoch is trained again. A
    /// records file that cannot be read stops the run: its history is never rewritten empty.
    fn open_records(&self) -> Result<fs::File> {
        let path = self.dir.join(records::EPOCHS_FILE);
        let kept: String = records::read_epochs(&path)?
            .records
            .into_iter()
            .filter(|(r, _)| r.epoch < self.progress.start_epoch)
            .map(|(_, line)| format!("{line}\n"))
            .collect();
        crate::results::write_atomically(&path, kept.as_bytes())?;
        fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micro_batches_cover_the_step_in_order_with_two_patches_at_least() {
        let step: Vec<usize> = (0..10).collect();
        assert_eq!(
            micro_batches(&step, 3),
            vec![vec![0, 1, 2, 3], vec![4, 5, 6], vec![7, 8, 9]]
        );
        assert_eq!(
            micro_batches(&step[..5], 4),
            vec![vec![0, 1, 2], vec![3, 4]]
        );
        assert_eq!(micro_batches(&step[..3], 2), vec![vec![0, 1, 2]]);
        assert_eq!(micro_batches(&step[..1], 2), vec![vec![0]]);
        for len in 2..60 {
            for k in 1..9 {
                let m = micro_batches(
                    &step.iter().copied().cycle().take(len).collect::<Vec<_>>(),
                    k,
                );
                assert!(
                    m.len() <= k && m.iter().all(|b| b.len() >= MIN_MICRO_BATCH),
                    "{len} patches, k = {k}: {m:?}"
                );
                assert_eq!(m.iter().map(Vec::len).sum::<usize>(), len);
            }
        }
    }

    #[test]
    fn a_last_step_of_one_patch_joins_the_step_before() {
        assert_eq!(step_ranges(17, 8), vec![0..8, 8..17]);
        assert_eq!(step_ranges(18, 8), vec![0..8, 8..16, 16..18]);
        assert_eq!(step_ranges(16, 8), vec![0..8, 8..16]);
        assert_eq!(step_ranges(1, 8), vec![0..1]);
    }

    #[test]
    fn stream_seeds_differ_per_counter() {
        let a = stream_seed(&[1, 2, 3, 0]);
        assert_eq!(a, stream_seed(&[1, 2, 3, 0]));
        assert!(a >= 0);
        for other in [[1, 2, 3, 1], [1, 2, 4, 0], [1, 3, 3, 0], [2, 2, 3, 0]] {
            assert_ne!(a, stream_seed(&other));
        }
    }
}
