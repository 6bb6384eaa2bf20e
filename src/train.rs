//! The training loop: one run is one (loss, seed). Each epoch trains on the training split in a
//! seeded order, evaluates the validation split, and appends one record to `epochs.jsonl` in
//! the run folder (flushed and synced before the next epoch starts).
//!
//! Randomness derives from (seed, epoch, step, micro-batch) only: the data order from
//! (seed, epoch), dropout from all four, so results do not depend on where a run stopped.
//!
//! Data parallelism ([`Dist`]): a step of `batch_size` patches is cut into
//! `world_size × accumulate` micro-batches; rank r trains micro-batches `r·k .. (r+1)·k`, and
//! the gradients (each micro-batch's weighted by its share of the step) and the BatchNorm
//! running statistics are summed over ranks. One process with `accumulate = k·W` does the
//! same computation.

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::{Device, Tensor};

use crate::checkpoint;
use crate::config::{Config, DeviceChoice};
use crate::data::{Normalizer, Prefetcher, epoch_order};
use crate::dist::Dist;
use crate::layout::Split;
use crate::losses::Loss;
use crate::metrics::{Counts, Metrics};
use crate::model::KBranch;
use crate::optim::Adam;
use crate::results::write_atomically;
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
    Done { loss: f64, images_per_s: f64, times: StepTimes },
    Stopped { steps: u64, loss_sum: f64 },
}

/// Where one epoch's training time went on rank 0, seconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct StepTimes {
    /// Forward, backward and optimizer step.
    pub compute_s: f64,
    /// Summing gradients and BatchNorm statistics over ranks (0 for one process).
    pub allreduce_s: f64,
    /// Waiting for the loader's next batch.
    pub data_wait_s: f64,
}

/// A split's evaluation.
pub struct Evaluation {
    pub loss: f64,
    pub counts: Counts,
    pub logits: Vec<f32>,
    pub decisions: Vec<u8>,
}

/// `test_metrics.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TestOutcome {
    /// The epoch whose weights were tested (best validation F1, sample average).
    pub best_epoch: u32,
    pub loss: f64,
    pub metrics: Metrics,
}

/// One line of `epochs.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// The training time broken down (rank 0's).
    #[serde(default)]
    pub time: StepTimes,
    pub val: Metrics,
}

/// The compute device; each rank on a node takes its own GPU (`local_rank` modulo the GPUs
/// it sees, so `CUDA_VISIBLE_DEVICES` set per task by SLURM also works).
pub fn resolve_device(choice: DeviceChoice, local_rank: usize) -> Result<Device> {
    let gpu = || Device::Cuda(local_rank % tch::Cuda::device_count().max(1) as usize);
    Ok(match choice {
        DeviceChoice::Cpu => Device::Cpu,
        DeviceChoice::Auto if tch::Cuda::is_available() => gpu(),
        DeviceChoice::Auto => Device::Cpu,
        DeviceChoice::Cuda if tch::Cuda::is_available() => gpu(),
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

/// Gradient buffers summed over ranks hold at most this many floats (64 MiB): few calls, each
/// large enough to run at the network's bandwidth.
const BUCKET_FLOATS: i64 = 16 << 20;

/// Parameter indices grouped, in order, into buckets of at most [`BUCKET_FLOATS`].
fn buckets(params: &[Tensor]) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = vec![Vec::new()];
    let mut filled = 0;
    for (i, p) in params.iter().enumerate() {
        let n = p.numel() as i64;
        if filled + n > BUCKET_FLOATS && filled > 0 {
            out.push(Vec::new());
            filled = 0;
        }
        out.last_mut().expect("one bucket at least").push(i);
        filled += n;
    }
    out
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
    pub dist: Dist,
    /// Parameter indices of each gradient buffer summed over ranks.
    buckets: Vec<Vec<usize>>,
    bucket_buffers: Vec<Vec<f32>>,
    /// BatchNorm running statistics and counters: the variables without gradients.
    bn_state: Vec<Tensor>,
    /// The patches explained by each LRP snapshot: their split and indices.
    probes: (Arc<SplitData>, Vec<usize>),
}

/// The LRP probe patches: the configured names (looked up in validation, test, then training),
/// or the default pick from the validation split.
fn resolve_probes(config: &Config, splits: [&Arc<SplitData>; 3]) -> Result<(Arc<SplitData>, Vec<usize>)> {
    let [train, val, test] = splits;
    let names = &config.lrp.patches;
    if names.is_empty() {
        return Ok((val.clone(), crate::lrp::pick_probes(&val.labels, config.lrp.probes)));
    }
    for split in [val, test, train] {
        let found: Vec<Option<usize>> = names.iter().map(|n| split.names.iter().position(|m| m == n)).collect();
        if found.iter().all(Option::is_some) {
            return Ok((split.clone(), found.into_iter().flatten().collect()));
        }
    }
    bail!("lrp.patches: the patches {names:?} are not all in one split of {}", config.run.data.display())
}

impl Run {
    /// Sets up a run as one rank of `dist`; with `resume`, continues from the newest valid
    /// checkpoint in its folder.
    pub fn new(config: Config, resume: bool, dist: Dist) -> Result<Self> {
        let device = resolve_device(config.run.device, dist.local_rank)?;
        let micro = dist.world_size * config.train.accumulate;
        if config.train.batch_size < micro {
            bail!(
                "train.batch_size = {} is smaller than world size × train.accumulate = {micro}: every rank needs a micro-batch",
                config.train.batch_size
            );
        }
        if config.train.bf16 && device == Device::Cpu {
            bail!("train.bf16 = true needs a CUDA device (autocast does nothing on the CPU)");
        }
        // Ranks on one node share its cores.
        let threads = match config.run.threads {
            0 if dist.local_size > 1 => {
                std::thread::available_parallelism().map_or(1, |n| n.get()).div_ceil(dist.local_size)
            }
            n => n,
        };
        if threads > 0 {
            tch::set_num_threads(threads as i32);
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
        let buckets = buckets(adam.params());
        let bucket_buffers = vec![Vec::new(); buckets.len()];
        let mut bn_state: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| !t.requires_grad()).collect();
        bn_state.sort_by(|a, b| a.0.cmp(&b.0));
        let bn_state = bn_state.into_iter().map(|(_, t)| t).collect();
        let probes = resolve_probes(&config, [&train, &val, &test])?;
        let mut run = Run { config, dir, device, train, val, test, norm, loss, vs, model, adam, start_epoch: 1,
            skip_steps: 0, partial_loss_sum: 0.0, best_epoch: 0, best_f1: -1.0, stop: Arc::new(AtomicBool::new(false)),
            dist, buckets, bucket_buffers, bn_state, probes };
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
        if run.dist.is_root() {
            run.write_resolved_config()?;
        }
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

    /// Sums this step's gradients over ranks, in a few large buffers; each buffer's sum runs
    /// while the next one is copied from the device.
    fn sum_gradients(&mut self) {
        let params = self.adam.params();
        let buckets = &self.buckets;
        // Defined on every rank: each trains at least one micro-batch in the first step
        // (batch_size ≥ world_size × accumulate), and zero_grad keeps gradients defined.
        let grad = |p: usize| {
            let g = params[p].grad();
            assert!(g.defined(), "parameter {p} has no gradient");
            g
        };
        self.dist.sum_buffers_overlapped(&mut self.bucket_buffers, |i, buffer| {
            let flat = Tensor::cat(&buckets[i].iter().map(|&p| grad(p).reshape([-1])).collect::<Vec<_>>(), 0);
            let flat = flat.to_device(Device::Cpu);
            let n = flat.numel();
            buffer.resize(n, 0.0);
            flat.copy_data(buffer, n);
        });
        tch::no_grad(|| {
            for (bucket, sums) in buckets.iter().zip(&self.bucket_buffers) {
                let flat = Tensor::from_slice(sums).to_device(self.device);
                let mut offset = 0;
                for &p in bucket {
                    let mut g = grad(p);
                    let n = g.numel() as i64;
                    g.copy_(&flat.narrow(0, offset, n).view_as(&g));
                    offset += n;
                }
            }
        });
    }

    /// Trains one epoch (from step `skip_steps` on, after a mid-epoch stop).
    fn train_epoch(&mut self, epoch: u32) -> Result<EpochEnd> {
        let t = &self.config.train;
        let seed = self.config.run.seed;
        let (k, rank, world) = (t.accumulate, self.dist.rank, self.dist.world_size);
        let order = epoch_order(self.train.len, seed, epoch);
        let steps: Vec<Vec<Vec<usize>>> = order.chunks(t.batch_size).map(|s| micro_batches(s, world * k)).collect();
        // This rank's micro-batches of a step, with their indices among the step's.
        let mine = |micro: &[Vec<usize>]| (rank * k).min(micro.len())..((rank + 1) * k).min(micro.len());
        let skip = std::mem::take(&mut self.skip_steps) as usize;
        let mut loss_sum = std::mem::take(&mut self.partial_loss_sum);
        let flat: Vec<Vec<usize>> = steps[skip..].iter().flat_map(|m| m[mine(m)].iter().cloned()).collect();
        let trained: usize = steps[skip..].iter().flatten().map(Vec::len).sum();
        let mut loader = Prefetcher::start(self.train.clone(), self.norm.clone(), flat, t.prefetch_batches, t.loader_threads)?;
        let progress = data_prep::progress::bar_if(self.dist.is_root(), (steps.len() - skip) as u64, &format!("epoch {epoch} steps"));
        // BatchNorm statistics must come out as for one process whatever the micro-batching:
        // each micro-batch updates them from the step's starting values, and the step keeps
        // the updates' average weighted by micro-batch size (summed over ranks).
        let bn_shared = world * k > 1;
        let started = Instant::now();
        let mut allreduce = std::time::Duration::ZERO;
        for (s, micro) in steps.iter().enumerate().skip(skip) {
            let step_len: usize = micro.iter().map(Vec::len).sum();
            self.adam.zero_grad();
            let bn_start: Vec<Tensor> = if bn_shared { self.bn_state.iter().map(Tensor::copy).collect() } else { Vec::new() };
            let mut bn_sum: Vec<Tensor> = bn_start.iter().map(Tensor::zeros_like).collect();
            let mut step_loss = 0.0;
            for m in mine(micro) {
                let batch = loader.next_batch().context("the loader ended early")??;
                let share = batch.indices.len() as f64 / step_len as f64;
                if bn_shared {
                    tch::no_grad(|| self.bn_state.iter_mut().zip(&bn_start).for_each(|(b, s)| { b.copy_(s); }));
                }
                tch::manual_seed(stream_seed(&[seed, epoch as u64, s as u64, m as u64]));
                let logits = self.forward(&batch.inputs, true);
                let loss = self.loss.compute(&logits, &self.to_device(&batch.targets));
                (&loss * share).backward();
                step_loss += loss.double_value(&[]) * batch.indices.len() as f64;
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
            let mut shared = [step_loss, f64::from(u8::from(self.stop.load(Ordering::SeqCst)))];
            if world > 1 {
                self.sum_gradients();
                self.dist.sum_f64(&mut shared);
            }
            if bn_shared {
                self.set_bn_state(&bn_sum);
            }
            if world > 1 {
                allreduce += sync.elapsed();
            }
            loss_sum += shared[0];
            self.adam.step();
            if self.adam.step == 1 {
                // The benchmark times launch → this line (docs/benchmarks.md).
                tracing::info!("first optimizer step done");
            }
            progress.inc(1);
            // Every rank sees the same flag: a signal delivered to one rank stops them all.
            if shared[1] > 0.0 && s + 1 < steps.len() {
                return Ok(EpochEnd::Stopped { steps: s as u64 + 1, loss_sum });
            }
        }
        progress.finish_and_clear();
        let seconds = started.elapsed().as_secs_f64();
        let data_wait_s = loader.waited.as_secs_f64();
        let allreduce_s = allreduce.as_secs_f64();
        Ok(EpochEnd::Done {
            loss: loss_sum / self.train.len as f64,
            images_per_s: trained as f64 / seconds,
            times: StepTimes { compute_s: seconds - data_wait_s - allreduce_s, allreduce_s, data_wait_s },
        })
    }

    /// Sets the floating-point BatchNorm statistics to `sums` summed over ranks.
    fn set_bn_state(&mut self, sums: &[Tensor]) {
        let floats: Vec<(usize, Tensor)> =
            sums.iter().enumerate().filter(|(_, t)| t.is_floating_point()).map(|(i, t)| (i, t.to_device(Device::Cpu).reshape([-1]))).collect();
        let mut flat: Vec<f32> = floats.iter().flat_map(|(_, t)| Vec::<f32>::try_from(t).expect("f32 BatchNorm statistics")).collect();
        self.dist.sum_f32(&mut flat);
        let flat = Tensor::from_slice(&flat).to_device(self.device);
        let mut offset = 0;
        tch::no_grad(|| {
            for (i, t) in floats {
                let n = t.numel() as i64;
                let shape = self.bn_state[i].size();
                self.bn_state[i].copy_(&flat.narrow(0, offset, n).reshape(shape));
                offset += n;
            }
        });
    }

    /// Rank 0 writes the checkpoint; every rank waits for it, so any may read it next.
    fn save_checkpoint(&self, epoch: u32, steps_into_next: u64, partial_loss_sum: f64) -> Result<()> {
        if !self.dist.is_root() {
            self.dist.barrier();
            return Ok(());
        }
        let state = checkpoint::State {
            epoch,
            steps_into_next,
            partial_loss_sum,
            optimizer_step: self.adam.step,
            best_epoch: self.best_epoch,
            best_f1: self.best_f1,
            crc32: [0, 0],
        };
        let saved = checkpoint::save(&self.dir, &self.named_variables(), &self.adam.state(), state, self.config.checkpoint.keep_last);
        self.dist.barrier();
        saved
    }

    /// Mean loss and metric counts over a split, in eval mode; with `keep`, also every patch's
    /// logits and decisions (row-major `[N, 19]`, in split order). Ranks evaluate alternate
    /// batches and sum their integer counts, so the metrics equal one process's exactly.
    pub fn evaluate(&self, split: &Arc<SplitData>, keep: bool) -> Result<Evaluation> {
        let t = &self.config.train;
        let order: Vec<usize> = (0..split.len).collect();
        let (rank, world) = (self.dist.rank, self.dist.world_size);
        let batches: Vec<Vec<usize>> =
            order.chunks(t.batch_size).skip(rank).step_by(world).map(<[usize]>::to_vec).collect();
        let mut loader = Prefetcher::start(split.clone(), self.norm.clone(), batches, t.prefetch_batches, t.loader_threads)?;
        let row = crate::labels::NUM_CLASSES;
        let (mut loss_sum, mut counts) = (0.0, Counts::default());
        // Kept rows are placed at their patch's position; ranks fill disjoint rows of zeros, so
        // summing over ranks gathers them exactly.
        let mut logits_all = vec![0f32; if keep { split.len * row } else { 0 }];
        let mut decisions_all = logits_all.clone();
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
            loss_sum += loss * batch.indices.len() as f64;
            let pred = Vec::<u8>::try_from(decided).context("reading decisions")?;
            let truth: Vec<u8> = batch.indices.iter().flat_map(|&i| split.labels_of(i).iter().copied()).collect();
            counts.add(&truth, &pred);
            if let Some(logits) = logits {
                let rows = batch.indices[0] * row..(batch.indices[0] + batch.indices.len()) * row;
                logits.copy_data(&mut logits_all[rows.clone()], rows.len());
                decisions_all[rows].iter_mut().zip(&pred).for_each(|(d, &p)| *d = f32::from(p));
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

    /// Evaluates the test split with the best validation epoch's weights; writes
    /// `test_metrics.json` and `test_predictions.parquet` into the run folder.
    pub fn test(&mut self) -> Result<TestOutcome> {
        let best = checkpoint::at_epoch(&self.dir, self.best_epoch)?;
        self.restore_weights(&best)?;
        let split = self.test.clone();
        let e = self.evaluate(&split, true)?;
        let outcome = TestOutcome { best_epoch: self.best_epoch, loss: e.loss, metrics: e.counts.metrics() };
        if !self.dist.is_root() {
            return Ok(outcome);
        }
        let json = self.dir.join("test_metrics.json");
        write_atomically(&json, &serde_json::to_vec_pretty(&outcome)?)?;
        crate::results::write_predictions(&self.dir.join("test_predictions.parquet"), &split, &e.logits, &e.decisions)?;
        Ok(outcome)
    }

    /// The model's current weights, on the CPU, by name.
    pub fn weights(&self) -> Vec<(String, Tensor)> {
        self.named_variables().into_iter().map(|(n, t)| (n, t.detach().to_device(Device::Cpu))).collect()
    }

    /// Writes `lrp/epoch-NNNN.parquet`: the probe patches explained for their true and
    /// predicted classes with the current weights.
    fn lrp_snapshot(&self, epoch: u32) -> Result<()> {
        let (split, indices) = &self.probes;
        if indices.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let batch = crate::data::read_batch(split, &self.norm, indices)?;
        let predicted = tch::no_grad(|| self.loss.decide(&self.forward(&batch.inputs, false)).to_device(Device::Cpu).reshape([-1]));
        let predicted = Vec::<u8>::try_from(predicted).context("reading decisions")?;
        let truth: Vec<u8> = indices.iter().flat_map(|&i| split.labels_of(i).iter().copied()).collect();
        let names: Vec<String> = indices.iter().map(|&i| split.names[i].clone()).collect();
        let lrp = &self.config.lrp;
        let explainer = crate::lrp::Explainer::new(&self.weights(), lrp.composite, lrp.epsilon)?;
        let patches = crate::lrp::Patches { inputs: &batch.inputs, names: &names, truth: &truth, predicted: &predicted };
        let rows = crate::lrp::explain_patches(&explainer, &patches, None, epoch, false)?;
        let dir = self.dir.join("lrp");
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        crate::results::write_heatmaps(&dir.join(format!("epoch-{epoch:04}.parquet")), &rows)?;
        tracing::info!(epoch, maps = rows.len(), seconds = format!("{:.1}", started.elapsed().as_secs_f64()), "LRP snapshot written");
        Ok(())
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
        write_atomically(&path, kept.iter().map(|l| format!("{l}\n")).collect::<String>().as_bytes())?;
        fs::OpenOptions::new().append(true).open(&path).with_context(|| format!("opening {}", path.display()))
    }

    /// Trains the remaining epochs, appending each record to `epochs.jsonl` and checkpointing
    /// after it; stops early (with a checkpoint) when [`Run::stop`] is set.
    pub fn train(&mut self) -> Result<Ending> {
        let mut file = if self.dist.is_root() { Some(self.open_records()?) } else { None };
        let mut records = Vec::new();
        for epoch in self.start_epoch..=self.config.train.epochs {
            let started = Instant::now();
            let (train_loss, images_per_s, time) = match self.train_epoch(epoch)? {
                EpochEnd::Done { loss, images_per_s, times } => (loss, images_per_s, times),
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
                data_wait_fraction: time.data_wait_s / (time.compute_s + time.allreduce_s + time.data_wait_s),
                time,
                val: counts.metrics(),
            };
            if let Some(file) = &mut file {
                writeln!(file, "{}", serde_json::to_string(&record)?)?;
                file.flush()?;
                file.sync_data()?;
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
                self.lrp_snapshot(epoch)?;
            }
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
