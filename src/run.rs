//! One run (one job config and seed) set up once: device, data (streamed or resident), loss,
//! model, optimizer, and, with `--resume auto`, the state of its newest valid checkpoint. The
//! training loop ([`crate::train`]) and the evaluation ([`crate::eval`]) work on a [`Run`].

use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result, bail};
use tch::nn::VarStore;
use tch::{Device, Tensor};

use crate::checkpoint;
use crate::config::Config;
use crate::data::resident::{self, Budget, Placement};
use crate::data::{Loading, Normalizer, ResidentSplit, Source};
use crate::dist::{Dist, GradientBuckets};
use crate::layout::Split;
use crate::losses::Loss;
use crate::model::Model;
use crate::optim::Adam;
use crate::run_info::DataPlacement;
use crate::snapshot::Probes;
use crate::store::{SplitData, Store};

/// Where training stands: what a checkpoint records besides the tensors.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// First epoch still to train (1 for a fresh run).
    pub start_epoch: u32,
    /// Steps of `start_epoch` already trained before a stop, and their summed loss.
    pub skip_steps: u64,
    pub partial_loss_sum: f64,
    /// Best epoch so far by validation F1 (sample average), and that F1.
    pub best_epoch: u32,
    pub best_f1: f64,
}

/// Everything a run needs, set up once from its config.
pub struct Run {
    pub config: Config,
    pub dir: PathBuf,
    pub device: Device,
    pub train: Source,
    pub val: Source,
    pub test: Arc<SplitData>,
    pub loading: Loading,
    pub loss: Loss,
    pub vs: VarStore,
    pub model: Model,
    pub adam: Adam,
    pub dist: Dist,
    pub grads: GradientBuckets,
    /// BatchNorm running statistics and counters: the variables without gradients, by name.
    pub bn_state: Vec<Tensor>,
    pub probes: Probes,
    pub progress: Progress,
    /// Set (by a signal handler) to stop after the current step with a checkpoint.
    pub stop: Arc<AtomicBool>,
    /// Stop (as on a signal) once this process has taken this many optimizer steps: a
    /// deterministic stand-in for a signal, for tests and checks.
    pub stop_after_steps: Option<u64>,
    /// Where the training and validation splits live, as recorded in `run.json`.
    pub placements: Vec<DataPlacement>,
}

/// The store's split `split`, checked against the store's own attributes.
fn open_split(store: &Store, split: Split) -> Result<Arc<SplitData>> {
    let data = store.split(split)?;
    if data.len == 0 {
        bail!(
            "{}: the {split} split is empty; training needs patches in every split",
            store.path.display()
        );
    }
    Ok(Arc::new(data))
}

/// Puts the training and validation splits where `data.resident` says (docs/training.md).
fn place_splits(
    config: &Config,
    device: Device,
    norm: &Normalizer,
    splits: [Arc<SplitData>; 2],
) -> Result<(Vec<Source>, Vec<DataPlacement>)> {
    let budget = Budget {
        host_available: crate::device::host_available(),
        gpu: match device {
            Device::Cuda(i) => crate::device::gpu_memory(i),
            _ => None,
        },
    };
    let lens: Vec<usize> = splits.iter().map(|s| s.len).collect();
    let plan = resident::plan(config.data.resident, device, &lens, budget)?;
    let mut sources = Vec::new();
    let mut placements = Vec::new();
    for (split, placement) in splits.into_iter().zip(plan) {
        let name = split.split.to_string();
        let (source, load_s) = match placement {
            Placement::Stream => (Source::Stream(split), 0.0),
            placement => {
                let r = ResidentSplit::load(
                    split,
                    norm,
                    placement,
                    device,
                    config.train.loader_threads,
                )?;
                let load_s = r.load_s;
                (Source::Resident(std::rc::Rc::new(r)), load_s)
            }
        };
        placements.push(DataPlacement {
            split: name,
            placement: format!("{placement:?}").to_lowercase(),
            load_s,
        });
        sources.push(source);
    }
    Ok((sources, placements))
}

impl Run {
    /// Sets up a run as one rank of `dist`; with `resume`, continues from the newest valid
    /// checkpoint in its folder.
    pub fn new(config: Config, resume: bool, dist: Dist) -> Result<Self> {
        let device = crate::device::resolve(config.run.device, dist.local_rank)?;
        let micro = dist.world_size * config.train.accumulate;
        if config.train.batch_size < crate::train::MIN_MICRO_BATCH * micro {
            bail!(
                "train.batch_size = {} is smaller than {} × world size × train.accumulate = {}: every micro-batch needs {} \
                 patches (BatchNorm)",
                config.train.batch_size,
                crate::train::MIN_MICRO_BATCH,
                crate::train::MIN_MICRO_BATCH * micro,
                crate::train::MIN_MICRO_BATCH
            );
        }
        if config.train.bf16 && device == Device::Cpu {
            bail!("train.bf16 = true needs a CUDA device (autocast does nothing on the CPU)");
        }
        dist.set_compute_threads(config.run.threads);
        let store = Store::open(&config.run.data)?;
        let [train, val, test] = Split::ALL.map(|s| open_split(&store, s));
        let (train, val, test) = (train?, val?, test?);
        if train.len < crate::train::MIN_MICRO_BATCH {
            bail!(
                "{}: the training split has {} patch(es); BatchNorm needs at least {} per batch",
                config.run.data.display(),
                train.len,
                crate::train::MIN_MICRO_BATCH
            );
        }
        let norm = Arc::new(Normalizer::from_store(&store.attrs)?);
        let counts = &store.attrs.splits[&Split::Train];
        let loss = Loss::new(&config.loss, &counts.label_counts, counts.patches);
        let probes = Probes::resolve(&config, [&train, &val, &test])?;
        let dir = config.run.out.join(config.run_id());
        fs::create_dir_all(&dir)
            .with_context(|| format!("creating run folder {}", dir.display()))?;

        // Initialised on the CPU, so the weights are the seed's on any device.
        let mut vs = VarStore::new(Device::Cpu);
        let model = Model::new(
            &vs.root(),
            config.model.arch,
            config.run.seed,
            config.model.dropout,
        );
        vs.set_device(device);
        let by_name = |trainable: bool| {
            let mut v: Vec<(String, Tensor)> = vs
                .variables()
                .into_iter()
                .filter(|(_, t)| t.requires_grad() == trainable)
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let decay = config.train.conv_weight_decay;
        let params = by_name(true).into_iter().map(|(_, t)| {
            let d = if Model::decays(&t) { decay } else { 0.0 };
            (t, d)
        });
        let adam = Adam::new(params.collect(), config.train.lr);
        let grads = GradientBuckets::new(adam.params());
        let bn_state = by_name(false).into_iter().map(|(_, t)| t).collect();

        let (mut sources, placements) = place_splits(&config, device, &norm, [train, val])?;
        let val = sources.pop().expect("two sources");
        let train = sources.pop().expect("two sources");
        let loading = Loading {
            norm,
            ahead: config.train.prefetch_batches,
            threads: config.train.loader_threads,
        };
        let progress = Progress {
            start_epoch: 1,
            skip_steps: 0,
            partial_loss_sum: 0.0,
            best_epoch: 0,
            best_f1: -1.0,
        };
        let mut run = Run {
            config,
            dir,
            device,
            train,
            val,
            test,
            loading,
            loss,
            vs,
            model,
            adam,
            dist,
            grads,
            bn_state,
            probes,
            progress,
            stop: Arc::new(AtomicBool::new(false)),
            stop_after_steps: None,
            placements,
        };
        if checkpoint::exists(&run.dir)? {
            if !resume {
                bail!(
                    "run folder {} already has checkpoints; pass --resume auto to continue it, or choose another --run-id",
                    run.dir.display()
                );
            }
            match checkpoint::latest(&run.dir)? {
                Some(c) => run.restore(c)?,
                None => {
                    tracing::warn!(run = %run.dir.display(), "no usable checkpoint: starting from scratch")
                }
            }
        }
        if run.dist.is_root() {
            run.write_resolved_config()?;
        }
        Ok(run)
    }

    /// Every variable (weights and BatchNorm statistics), sorted by name.
    pub fn named_variables(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The model's current weights, on the CPU, by name.
    pub fn weights(&self) -> Vec<(String, Tensor)> {
        self.named_variables()
            .into_iter()
            .map(|(n, t)| (n, t.detach().to_device(Device::Cpu)))
            .collect()
    }

    pub fn restore_weights(&mut self, c: &checkpoint::Loaded) -> Result<()> {
        checkpoint::copy_into(&self.named_variables(), &c.model, &c.dir)
    }

    fn restore(&mut self, c: checkpoint::Loaded) -> Result<()> {
        self.restore_weights(&c)?;
        self.adam
            .load_state(&c.optimizer, c.state.optimizer_step)
            .with_context(|| format!("{}", c.dir.display()))?;
        let s = &c.state;
        self.progress = Progress {
            start_epoch: s.epoch + 1,
            skip_steps: s.steps_into_next,
            partial_loss_sum: s.partial_loss_sum,
            best_epoch: s.best_epoch,
            best_f1: s.best_f1,
        };
        tracing::info!(checkpoint = %c.dir.display(), epoch = s.epoch, "resuming");
        Ok(())
    }

    /// `config.toml` in the run folder: the merged config, plus what was derived from the data.
    fn write_resolved_config(&self) -> Result<()> {
        let mut text = toml::to_string(&self.config).context("serialising the config")?;
        if let Some(w) = self.loss.positive_weights() {
            text.push_str(&format!(
                "\n# W-CE positive weights from the training split, (N - n_c) / n_c, class order of the store:\n# {w:?}\n"
            ));
        }
        crate::results::write_atomically(&self.dir.join("config.toml"), text.as_bytes())
    }

    /// Moves a batch tensor to the compute device: on CUDA through pinned memory with a
    /// non-blocking copy, so the transfer overlaps the compute already queued.
    pub fn to_device(&self, t: &Tensor) -> Tensor {
        match self.device {
            device if t.device() == device => t.shallow_clone(),
            device => t
                .pin_memory(device)
                .to_device_(device, t.kind(), true, false),
        }
    }

    /// The model's logits, under bf16 autocast when configured (CUDA only).
    pub fn forward(&self, inputs: &[Tensor; 3], train: bool) -> Tensor {
        let x = [
            self.to_device(&inputs[0]),
            self.to_device(&inputs[1]),
            self.to_device(&inputs[2]),
        ];
        let run = || self.model.forward_t(&x, train);
        if self.config.train.bf16 {
            tch::autocast(true, run).to_kind(tch::Kind::Float)
        } else {
            run()
        }
    }
}
