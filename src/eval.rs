//! Evaluating a split in eval mode (validation every epoch, test at the end with the best
//! epoch's weights), exactly and identically on any number of ranks.

use anyhow::{Context, Result};
use tch::Device;

use crate::checkpoint;
use crate::data::Source;
use crate::labels::NUM_CLASSES;
use crate::metrics::Counts;
use crate::records::{self, TestOutcome};
use crate::run::Run;

/// A split's evaluation.
pub struct Evaluation {
    pub loss: f64,
    pub counts: Counts,
    /// With `keep`: every patch's logits and decisions, row-major `[N, 19]`, in split order.
    pub logits: Vec<f32>,
    pub decisions: Vec<u8>,
}

impl Run {
    /// Mean loss and metric counts over a split, in eval mode; with `keep`, also every patch's
    /// logits and decisions. Ranks evaluate alternate batches and sum their integer counts, so
    /// the metrics equal one process's exactly.
    pub fn evaluate(&self, source: &Source, keep: bool) -> Result<Evaluation> {
        let split = source.split().clone();
        let t = &self.config.train;
        let order: Vec<usize> = (0..split.len).collect();
        let (rank, world) = (self.dist.rank, self.dist.world_size);
        let lists: Vec<Vec<usize>> = order
            .chunks(t.batch_size)
            .skip(rank)
            .step_by(world)
            .map(<[usize]>::to_vec)
            .collect();
        let mut batches = source.batches(lists, &self.loading)?;
        let row = NUM_CLASSES;
        let (mut loss_sum, mut counts) = (0.0, Counts::default());
        // Kept rows are placed at their patch's position; ranks fill disjoint rows of zeros, so
        // summing over ranks gathers them exactly.
        let mut logits_all = vec![0f32; if keep { split.len * row } else { 0 }];
        let mut decisions_all = logits_all.clone();
        while let Some(batch) = batches.next_batch() {
            let batch = batch?;
            let (loss, logits, decided) = tch::no_grad(|| {
                let logits = self.forward(&batch.inputs, false);
                let loss = self
                    .loss
                    .compute(&logits, &self.to_device(&batch.targets))
                    .double_value(&[]);
                let decided = self
                    .loss
                    .decide(&logits)
                    .to_device(Device::Cpu)
                    .reshape([-1]);
                // Only the test evaluation keeps the logits: no device-to-host copy otherwise.
                let logits = keep.then(|| {
                    logits
                        .to_device(Device::Cpu)
                        .to_kind(tch::Kind::Float)
                        .reshape([-1])
                });
                (loss, logits, decided)
            });
            loss_sum += loss * batch.indices.len() as f64;
            let pred = Vec::<u8>::try_from(decided).context("reading decisions")?;
            let truth: Vec<u8> = batch
                .indices
                .iter()
                .flat_map(|&i| split.labels_of(i).iter().copied())
                .collect();
            counts.add(&truth, &pred);
            if let Some(logits) = logits {
                let rows = batch.indices[0] * row..(batch.indices[0] + batch.indices.len()) * row;
                logits.copy_data(&mut logits_all[rows.clone()], rows.len());
                decisions_all[rows]
                    .iter_mut()
                    .zip(&pred)
                    .for_each(|(d, &p)| *d = f32::from(p));
            }
        }
        let mut loss_sum = [loss_sum];
        self.dist.sum_f64(&mut loss_sum);
        let mut flat = counts.to_flat();
        self.dist.sum_u64(&mut flat);
        self.dist.sum_f32(&mut logits_all);
        self.dist.sum_f32(&mut decisions_all);
        Ok(Evaluation {
            loss: loss_sum[0] / split.len as f64,
            counts: Counts::from_flat(&flat),
            logits: logits_all,
            decisions: decisions_all.iter().map(|&d| d as u8).collect(),
        })
    }

    /// Evaluates the test split (streamed: it is read once) with the best validation epoch's
    /// weights; writes `test_metrics.json` and `test_predictions.parquet` into the run folder.
    pub fn test(&mut self) -> Result<TestOutcome> {
        let best = checkpoint::at_epoch(&self.dir, self.progress.best_epoch)?;
        self.restore_weights(&best)?;
        let split = self.test.clone();
        let e = self.evaluate(&Source::Stream(split.clone()), true)?;
        let outcome = TestOutcome {
            best_epoch: self.progress.best_epoch,
            loss: e.loss,
            metrics: e.counts.metrics(),
        };
        if !self.dist.is_root() {
            return Ok(outcome);
        }
        crate::results::write_atomically(
            &self.dir.join(records::TEST_FILE),
            &serde_json::to_vec_pretty(&outcome)?,
        )?;
        let predictions = self.dir.join("test_predictions.parquet");
        crate::results::write_predictions(
            &predictions,
            &split.names,
            &split.labels,
            &e.logits,
            &e.decisions,
        )?;
        Ok(outcome)
    }
}
