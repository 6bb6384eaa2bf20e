//! The training loop: one run is one (loss, seed). Each epoch trains on the training split in a
//! seeded order, evaluates the validation split, and appends one record to `epochs.jsonl` in
//! the run folder (flushed and synced before the next epoch starts).
//!
//! Randomness derives from (seed, epoch, step, micro-batch) only: the data order from
//! (seed, epoch), dropout from all four, so results do not depend on where a run stopped.

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use tch::nn::VarStore;
use tch::{Device, Tensor};

use crate::checkpoint;
use crate::config::{Config, DeviceChoice};
use crate::data::{Normalizer, Prefetcher, epoch_order};
use crate::layout::Split;
use crate::losses::Loss;
use crate::metrics::{Counts, Metrics};
use crate::model::KBranch;
use crate::optim::Adam;
use crate::store::{SplitData, Store};

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

/// How one epoch's training ended.
enum EpochEnd {
    /// Training images per second and the share of time spent waiting for data, over the part
    /// of the epoch this process trained.
    Done { loss: f64, images_per_s: f64, wait_fraction: f64 },
    Stopped { steps: u64, loss_sum: f64 },
}

/// A split's evaluation.
pub struct Evaluation {
    pub loss: f64,
    pub counts: Counts,
    pub logits: Vec<f32>,
    pub decisions: Vec<u8>,
}

/// `test_metrics.json`.
#[derive(Debug, Clone, Serialize)]
pub struct TestOutcome {
    /// The epoch whose weights were tested (best validation F1, sample average).
    pub best_epoch: u32,
    pub loss: f64,
    pub metrics: Metrics,
}

fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    fs::File::open(&tmp)?.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("renaming {}", tmp.display()))
}

/// One line of `epochs.jsonl`.
#[derive(Debug, Clone, Serialize)]
pub struct EpochRecord {
    pub epoch: u32,
    pub train_loss: f64,
    pub val_loss: f64,
    pub lr: f64,
    /// Training and validation, seconds.
    pub wall_s: f64,
    /// Training images per second.
    pub images_per_s: f64,
    /// Share of the training time spent waiting for the next batch.
    pub data_wait_fraction: f64,
    pub val: Metrics,
}

pub fn resolve_device(choice: DeviceChoice) -> Result<Device> {
    Ok(match choice {
        DeviceChoice::Cpu => Device::Cpu,
        DeviceChoice::Auto => Device::cuda_if_available(),
        DeviceChoice::Cuda if tch::Cuda::is_available() => Device::Cuda(0),
        DeviceChoice::Cuda => bail!("run.device = \"cuda\" but libtorch finds no CUDA device (is LIBTORCH a CUDA build?)"),
    })
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

/// Splits one step's patches into at most `k` micro-batches of near-equal size.
fn micro_batches(step: &[usize], k: usize) -> Vec<Vec<usize>> {
    step.chunks(step.len().div_ceil(k)).map(<[usize]>::to_vec).collect()
}

/// Everything a run needs, set up once from its config.
pub struct Run {
    pub config: Config,
    pub dir: PathBuf,
    device: Device,
    train: Arc<SplitData>,
    val: Arc<SplitData>,
    test: Arc<SplitData>,
    norm: Arc<Normalizer>,
    pub loss: Loss,
    vs: VarStore,
    model: KBranch,
    adam: Adam,
    /// First epoch still to train (1 for a fresh run).
    pub start_epoch: u32,
    /// Steps of `start_epoch` already trained before a stop, and their summed loss.
    skip_steps: u64,
    partial_loss_sum: f64,
    best_epoch: u32,
    best_f1: f64,
    /// Set (by a signal handler) to stop after the current step with a checkpoint.
    pub stop: Arc<AtomicBool>,
}

impl Run {
    /// Sets up a run; with `resume`, continues from the newest valid checkpoint in its folder.
    pub fn new(config: Config, resume: bool) -> Result<Self> {
        let device = resolve_device(config.run.device)?;
        if config.train.bf16 && device == Device::Cpu {
            bail!("train.bf16 = true needs a CUDA device (autocast does nothing on the CPU)");
        }
        if config.run.threads > 0 {
            tch::set_num_threads(config.run.threads as i32);
        }
        let store = Store::open(&config.run.data)?;
        let train = Arc::new(store.split(Split::Train)?);
        let val = Arc::new(store.split(Split::Validation)?);
        let test = Arc::new(store.split(Split::Test)?);
        if train.len == 0 || val.len == 0 || test.len == 0 {
            bail!("{}: the training, validation and test splits must not be empty", config.run.data.display());
        }
        let norm = Arc::new(Normalizer::from_store(&store.attrs)?);
        let info = &store.attrs.splits[&Split::Train];
        let loss = config.loss(&info.label_counts, info.patches);
        let dir = config.run.out.join(config.run_id());
        fs::create_dir_all(&dir).with_context(|| format!("creating run folder {}", dir.display()))?;

        let vs = VarStore::new(device);
        let model = KBranch::new(&vs.root(), config.run.seed);
        let mut named: Vec<(String, Tensor)> =
            vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let decay = config.train.conv_weight_decay;
        let params = named
            .into_iter()
            .map(|(name, t)| (t, if KBranch::is_conv_weight(&name) { decay } else { 0.0 }))
            .collect();
        let adam = Adam::new(params, config.train.lr);
        let mut run = Run { config, dir, device, train, val, test, norm, loss, vs, model, adam, start_epoch: 1,
            skip_steps: 0, partial_loss_sum: 0.0, best_epoch: 0, best_f1: -1.0, stop: Arc::new(AtomicBool::new(false)) };
        if checkpoint::exists(&run.dir)? {
            if !resume {
                bail!(
                    "run folder {} already has checkpoints; pass --resume auto to continue it, or choose another --run-id",
                    run.dir.display()
                );
            }
            match checkpoint::latest(&run.dir)? {
                Some(c) => run.restore(c)?,
                None => tracing::warn!(run = %run.dir.display(), "no usable checkpoint: starting from scratch"),
            }
        }
        run.write_resolved_config()?;
        Ok(run)
    }

    fn named_variables(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn restore_weights(&mut self, c: &checkpoint::Loaded) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            for (name, mut var) in self.named_variables() {
                let saved = c.model.iter().find(|(n, _)| *n == name).map(|(_, t)| t);
                let saved = saved.with_context(|| format!("{}: the checkpoint lacks {name}", c.dir.display()))?;
                var.copy_(&saved.to_device(self.device));
            }
            Ok(())
        })
    }

    fn restore(&mut self, c: checkpoint::Loaded) -> Result<()> {
        self.restore_weights(&c)?;
        self.adam.load_state(&c.optimizer, c.state.optimizer_step)?;
        self.start_epoch = c.state.epoch + 1;
        self.skip_steps = c.state.steps_into_next;
        self.partial_loss_sum = c.state.partial_loss_sum;
        self.best_epoch = c.state.best_epoch;
        self.best_f1 = c.state.best_f1;
        tracing::info!(checkpoint = %c.dir.display(), epoch = c.state.epoch, "resuming");
        Ok(())
    }

    /// `config.toml` in the run folder: the merged config, plus what was derived from the data.
    fn write_resolved_config(&self) -> Result<()> {
        let mut text = toml::to_string(&self.config).context("serialising the config")?;
        if let Loss::Wce { pos_weight } = &self.loss {
            text.push_str(&format!(
                "\n# W-CE positive weights from the training split, (N - n_c) / n_c, class order of the store:\n# {pos_weight:?}\n"
            ));
        }
        let path = self.dir.join("config.toml");
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// Moves a loader tensor to the compute device: on CUDA through pinned memory with a
    /// non-blocking copy, so the transfer overlaps the compute already queued.
    fn to_device(&self, t: &Tensor) -> Tensor {
        match self.device {
            Device::Cpu => t.shallow_clone(),
            device => t.pin_memory(device).to_device_(device, t.kind(), true, false),
        }
    }

    /// The model's logits, under bf16 autocast when configured (CUDA only).
    fn forward(&self, inputs: &[Tensor; 3], train: bool) -> Tensor {
        let [x10, x20, x60] = inputs;
        let run = || self.model.forward_t(&self.to_device(x10), &self.to_device(x20), &self.to_device(x60), train);
        if self.config.train.bf16 { tch::autocast(true, run).to_kind(tch::Kind::Float) } else { run() }
    }

    /// Trains one epoch (from step `skip_steps` on, after a mid-epoch stop).
    fn train_epoch(&mut self, epoch: u32) -> Result<EpochEnd> {
        let t = &self.config.train;
        let seed = self.config.run.seed;
        let order = epoch_order(self.train.len, seed, epoch);
        let steps: Vec<Vec<Vec<usize>>> = order.chunks(t.batch_size).map(|s| micro_batches(s, t.accumulate)).collect();
        let skip = std::mem::take(&mut self.skip_steps) as usize;
        let mut loss_sum = std::mem::take(&mut self.partial_loss_sum);
        let flat: Vec<Vec<usize>> = steps[skip..].iter().flatten().cloned().collect();
        let trained: usize = flat.iter().map(Vec::len).sum();
        let mut loader = Prefetcher::start(self.train.clone(), self.norm.clone(), flat, t.prefetch_batches, t.loader_threads)?;
        let progress = data_prep::progress::bar((steps.len() - skip) as u64, &format!("epoch {epoch} steps"));
        let started = Instant::now();
        for (s, micro) in steps.iter().enumerate().skip(skip) {
            let step_len: usize = micro.iter().map(Vec::len).sum();
            self.adam.zero_grad();
            for (m, _) in micro.iter().enumerate() {
                let batch = loader.next_batch().context("the loader ended early")??;
                tch::manual_seed(stream_seed(&[seed, epoch as u64, s as u64, m as u64]));
                let logits = self.forward(&batch.inputs, true);
                let loss = self.loss.compute(&logits, &self.to_device(&batch.targets));
                let n = batch.indices.len() as f64;
                (&loss * (n / step_len as f64)).backward();
                loss_sum += loss.double_value(&[]) * n;
            }
            self.adam.step();
            if self.adam.step == 1 {
                // The benchmark times launch → this line (docs/benchmarks.md).
                tracing::info!("first optimizer step done");
            }
            progress.inc(1);
            if self.stop.load(Ordering::SeqCst) && s + 1 < steps.len() {
                return Ok(EpochEnd::Stopped { steps: s as u64 + 1, loss_sum });
            }
        }
        progress.finish_and_clear();
        let seconds = started.elapsed().as_secs_f64();
        Ok(EpochEnd::Done {
            loss: loss_sum / self.train.len as f64,
            images_per_s: trained as f64 / seconds,
            wait_fraction: loader.waited.as_secs_f64() / seconds,
        })
    }

    fn save_checkpoint(&self, epoch: u32, steps_into_next: u64, partial_loss_sum: f64) -> Result<()> {
        let state = checkpoint::State {
            epoch,
            steps_into_next,
            partial_loss_sum,
            optimizer_step: self.adam.step,
            best_epoch: self.best_epoch,
            best_f1: self.best_f1,
            crc32: [0, 0],
        };
        checkpoint::save(&self.dir, &self.named_variables(), &self.adam.state(), state, self.config.checkpoint.keep_last)
    }

    /// Mean loss and metric counts over a split, in eval mode; with `keep`, also every patch's
    /// logits and decisions (row-major `[N, 19]`, in split order).
    pub fn evaluate(&self, split: &Arc<SplitData>, keep: bool) -> Result<Evaluation> {
        let t = &self.config.train;
        let order: Vec<usize> = (0..split.len).collect();
        let batches: Vec<Vec<usize>> = order.chunks(t.batch_size).map(<[usize]>::to_vec).collect();
        let mut loader = Prefetcher::start(split.clone(), self.norm.clone(), batches, t.prefetch_batches, t.loader_threads)?;
        let mut e = Evaluation { loss: 0.0, counts: Counts::default(), logits: Vec::new(), decisions: Vec::new() };
        while let Some(batch) = loader.next_batch() {
            let batch = batch?;
            let (loss, logits, decided) = tch::no_grad(|| {
                let logits = self.forward(&batch.inputs, false);
                let loss = self.loss.compute(&logits, &self.to_device(&batch.targets)).double_value(&[]);
                let decided = self.loss.decide(&logits).to_device(Device::Cpu).reshape([-1]);
                // Only the test evaluation keeps the logits: no device-to-host copy otherwise.
                let logits = keep.then(|| logits.to_device(Device::Cpu).to_kind(tch::Kind::Float).reshape([-1]));
                (loss, logits, decided)
            });
            e.loss += loss * batch.indices.len() as f64;
            let pred = Vec::<u8>::try_from(decided).context("reading decisions")?;
            let truth: Vec<u8> = batch.indices.iter().flat_map(|&i| split.labels_of(i).iter().copied()).collect();
            e.counts.add(&truth, &pred);
            if let Some(logits) = logits {
                e.logits.extend(Vec::<f32>::try_from(logits).context("reading logits")?);
                e.decisions.extend(pred);
            }
        }
        e.loss /= split.len as f64;
        Ok(e)
    }

    /// Evaluates the test split with the best validation epoch's weights; writes
    /// `test_metrics.json` and `test_predictions.parquet` into the run folder.
    pub fn test(&mut self) -> Result<TestOutcome> {
        let best = checkpoint::at_epoch(&self.dir, self.best_epoch)?;
        self.restore_weights(&best)?;
        let split = self.test.clone();
        let e = self.evaluate(&split, true)?;
        let outcome = TestOutcome { best_epoch: self.best_epoch, loss: e.loss, metrics: e.counts.metrics() };
        let json = self.dir.join("test_metrics.json");
        write_atomically(&json, &serde_json::to_vec_pretty(&outcome)?)?;
        crate::results::write_predictions(&self.dir.join("test_predictions.parquet"), &split, &e.logits, &e.decisions)?;
        Ok(outcome)
    }

    /// Records of epochs before `start_epoch` survive a resume; later ones (an epoch recorded
    /// but killed before its checkpoint) are dropped, since that epoch is trained again.
    fn open_records(&self) -> Result<fs::File> {
        let path = self.dir.join("epochs.jsonl");
        let kept: Vec<String> = match fs::read_to_string(&path) {
            Ok(text) => text
                .lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v["epoch"].as_u64())
                        .is_some_and(|e| e < self.start_epoch as u64)
                })
                .map(str::to_string)
                .collect(),
            Err(_) => Vec::new(),
        };
        let tmp = self.dir.join("epochs.jsonl.tmp");
        fs::write(&tmp, kept.iter().map(|l| format!("{l}\n")).collect::<String>())?;
        fs::rename(&tmp, &path)?;
        fs::OpenOptions::new().append(true).open(&path).with_context(|| format!("opening {}", path.display()))
    }

    /// Trains the remaining epochs, appending each record to `epochs.jsonl` and checkpointing
    /// after it; stops early (with a checkpoint) when [`Run::stop`] is set.
    pub fn train(&mut self) -> Result<Ending> {
        let mut file = self.open_records()?;
        let mut records = Vec::new();
        for epoch in self.start_epoch..=self.config.train.epochs {
            let started = Instant::now();
            let (train_loss, images_per_s, data_wait_fraction) = match self.train_epoch(epoch)? {
                EpochEnd::Done { loss, images_per_s, wait_fraction } => (loss, images_per_s, wait_fraction),
                EpochEnd::Stopped { steps, loss_sum } => {
                    self.save_checkpoint(epoch - 1, steps, loss_sum)?;
                    return Ok(Ending::Stopped { epoch, steps_into_epoch: steps });
                }
            };
            let val = self.val.clone();
            let Evaluation { loss: val_loss, counts, .. } = self.evaluate(&val, false)?;
            let record = EpochRecord {
                epoch,
                train_loss,
                val_loss,
                lr: self.adam.lr,
                wall_s: started.elapsed().as_secs_f64(),
                images_per_s,
                data_wait_fraction,
                val: counts.metrics(),
            };
            writeln!(file, "{}", serde_json::to_string(&record)?)?;
            file.flush()?;
            file.sync_data()?;
            tracing::info!(
                epoch,
                train_loss = format!("{train_loss:.4}"),
                val_loss = format!("{val_loss:.4}"),
                val_f1_samples = format!("{:.4}", record.val.samples.f1),
                images_per_s = format!("{:.0}", record.images_per_s),
                "epoch done"
            );
            if record.val.samples.f1 > self.best_f1 {
                self.best_f1 = record.val.samples.f1;
                self.best_epoch = epoch;
            }
            self.save_checkpoint(epoch, 0, 0.0)?;
            records.push(record);
            if self.stop.load(Ordering::SeqCst) && epoch < self.config.train.epochs {
                return Ok(Ending::Stopped { epoch: epoch + 1, steps_into_epoch: 0 });
            }
        }
        Ok(Ending::Finished(records))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micro_batches_cover_the_step_in_order() {
        let step: Vec<usize> = (0..10).collect();
        let m = micro_batches(&step, 3);
        assert_eq!(m, vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]);
        assert_eq!(micro_batches(&step[..2], 4), vec![vec![0], vec![1]]);
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
