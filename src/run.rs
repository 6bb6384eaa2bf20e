//! One run (one job config and seed) set up once, before anything is trained: the run folder
//! locked ([`crate::folder_lock`]), the store opened (and locked for reading), the data placed,
//! the loss, the network and its optimizer, and with `--resume auto` the state of the newest
//! valid checkpoint, after checking that this configuration may continue it
//! ([`crate::resume`]). The training loop ([`crate::train`]) runs on a [`Run`].

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use tch::Device;

use crate::checkpoint;
use crate::config::Config;
use crate::data::Splits;
use crate::dist::Dist;
use crate::losses::Loss;
use crate::model::Regularization;
use crate::network::Network;
use crate::resume::{self, ConfigChanged, Fingerprint};
use crate::snapshot::Probes;
use crate::step::Stepper;
use crate::steps::MIN_MICRO_BATCH;
use lossbench_core::layout::Split;
use lossbench_core::lock::{Lock, Mode};
use lossbench_core::run_info::ConfigChange;
use lossbench_core::store::Store;

/// Where training stands: what a checkpoint records besides the tensors.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// First epoch still to train (1 for a fresh run).
    pub start_epoch: u32,
    /// Steps of `start_epoch` already trained before a stop, and their summed loss.
    pub skip_steps: u64,
    pub partial_loss_sum: f64,
    /// Best epoch so far by the selection metric (`selection.metric`, signed so that higher is
    /// better), and its value.
    pub best_epoch: u32,
    pub best_score: f64,
}

impl Progress {
    const FRESH: Progress = Progress {
        start_epoch: 1,
        skip_steps: 0,
        partial_loss_sum: 0.0,
        best_epoch: 0,
        best_score: f64::NEG_INFINITY,
    };

    fn of(s: &checkpoint::State) -> Progress {
        Progress {
            start_epoch: s.epoch + 1,
            skip_steps: s.steps_into_next,
            partial_loss_sum: s.partial_loss_sum,
            best_epoch: s.best_epoch,
            best_score: s.best_score,
        }
    }
}

/// Everything a run needs, set up once from its config.
pub struct Run {
    pub config: Config,
    pub dir: PathBuf,
    pub dist: Dist,
    /// Open for the whole run: its shared lock keeps `convert --overwrite` away, and its
    /// identity is checked after every epoch.
    pub store: Store,
    pub data: Splits,
    pub loss: Loss,
    pub net: Network,
    pub stepper: Stepper,
    pub probes: Probes,
    pub progress: Progress,
    /// What produced this run's checkpoints: this configuration, ranks and store.
    pub fingerprint: Fingerprint,
    /// The keys this attempt changed against the checkpoint it resumed.
    pub changes: Vec<ConfigChange>,
    _lock: Option<Lock>,
}

/// A step is at most the training split: a larger `train.batch_size` is a mistake (the
/// study's 1024 on a small store), said before anything is written.
fn check_batch(config: &Config, store: &Store) -> Result<()> {
    let patches = store.attrs.splits[&Split::Train].patches;
    let batch = config.train.batch_size;
    if batch as u64 > patches {
        bail!(
            "train.batch_size = {batch} is larger than the training split of {} ({patches} \
             patches): an epoch would be one partial step. Use at most {patches} (--set \
             train.batch_size=N)",
            config.run.data.display()
        );
    }
    Ok(())
}

/// Checks that need neither the store nor the run folder.
fn check_shape(config: &Config, dist: &Dist, device: Device) -> Result<()> {
    let micro = dist.world_size * config.train.accumulate;
    if config.train.batch_size < MIN_MICRO_BATCH * micro {
        bail!(
            "train.batch_size = {} is smaller than {MIN_MICRO_BATCH} × world size × \
             train.accumulate = {}: every micro-batch needs {MIN_MICRO_BATCH} patches (BatchNorm)",
            config.train.batch_size,
            MIN_MICRO_BATCH * micro,
        );
    }
    if config.train.bf16 && device == Device::Cpu {
        bail!("train.bf16 = true needs a CUDA device (autocast does nothing on the CPU)");
    }
    Ok(())
}

impl Run {
    /// Sets up a run as one rank of `dist`; with `resume`, continues from the newest valid
    /// checkpoint in its folder.
    pub fn open(config: Config, resume: bool, dist: Dist) -> Result<Self> {
        let device = crate::device::resolve(config.run.device, dist.local_rank)?;
        check_shape(&config, &dist, device)?;
        dist.set_compute_threads(config.run.threads);
        // The store first: a wrong path leaves no run folder behind.
        let store = Store::open(&config.run.data).with_context(|| {
            format!(
                "run.data = {} (from {})",
                config.run.data.display(),
                config.source("run.data")
            )
        })?;
        check_batch(&config, &store)?;
        let dir = config.run.out.join(config.run_id());
        let lock = crate::folder_lock::lock(&dir, Mode::Exclusive, "trainer train", &dist)?;
        let fingerprint = Fingerprint::of(&config, dist.world_size, &store.attrs.identity());
        let resumed = Self::checkpoint_to_resume(&dir, resume)?;
        let changes = match &resumed {
            Some(c) => Self::check_resume(&dir, c, &config, dist.world_size, &fingerprint.store)?,
            None => Vec::new(),
        };
        let data = Splits::open(&store, &config, device, &dist)?;
        let counts = &store.attrs.splits[&Split::Train];
        let loss = Loss::new(&config.loss, &counts.label_counts, counts.patches);
        let tests = data.test.clone();
        let probes = Probes::resolve(&config, [data.train.split(), data.val.split(), &tests])?;
        let m = &config.model;
        let reg = Regularization {
            dropout: m.dropout,
            drop_path: m.drop_path,
        };
        let net = Network::new(m.arch, config.run.seed, reg, device, config.train.bf16);
        let t = &config.train;
        let steps_per_epoch = crate::steps::steps_per_epoch(data.train.split().len, t.batch_size);
        let stepper = Stepper::new(&net, t, steps_per_epoch);
        let mut run = Run {
            config,
            dir,
            dist,
            store,
            data,
            loss,
            net,
            stepper,
            probes,
            progress: Progress::FRESH,
            fingerprint,
            changes,
            _lock: lock,
        };
        if let Some(c) = resumed {
            run.restore(c)?;
        }
        if run.dist.is_root() {
            run.write_resolved_config()?;
        }
        Ok(run)
    }

    /// The newest valid checkpoint when resuming; a run folder with checkpoints is refused
    /// without `resume`.
    fn checkpoint_to_resume(
        dir: &std::path::Path,
        resume: bool,
    ) -> Result<Option<checkpoint::Loaded>> {
        if !checkpoint::exists(dir)? {
            return Ok(None);
        }
        if !resume {
            bail!(
                "run folder {} already has checkpoints; pass --resume auto to continue it, or \
                 choose another --run-id",
                dir.display()
            );
        }
        let latest = checkpoint::latest(dir)?;
        if latest.is_none() {
            tracing::warn!(run = %dir.display(), "no usable checkpoint: starting from scratch");
        }
        Ok(latest)
    }

    /// The changes this configuration makes against the checkpoint's, if it may continue it.
    fn check_resume(
        dir: &std::path::Path,
        c: &checkpoint::Loaded,
        config: &Config,
        world: usize,
        store: &str,
    ) -> Result<Vec<ConfigChange>> {
        let path = dir.join("config.toml");
        let old = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| resume::OldConfig::parse(&t));
        let done = c.state.epoch;
        resume::check(
            c.state.fingerprint.as_ref(),
            old.as_ref(),
            config,
            world,
            store,
            done,
        )
        .map_err(|reasons| {
            ConfigChanged {
                run: dir.display().to_string(),
                checkpoint: c.dir.display().to_string(),
                reasons,
            }
            .into()
        })
    }

    fn restore(&mut self, c: checkpoint::Loaded) -> Result<()> {
        self.net.restore(&c.model, &c.dir)?;
        let adam = &mut self.stepper.adam;
        adam.load_state(&c.optimizer, c.state.optimizer_step)
            .with_context(|| format!("{}", c.dir.display()))?;
        self.progress = Progress::of(&c.state);
        tracing::info!(checkpoint = %c.dir.display(), epoch = c.state.epoch, "resuming");
        Ok(())
    }

    /// `config.toml` in the run folder: the merged config, plus what was derived from the data.
    fn write_resolved_config(&self) -> Result<()> {
        let mut text = toml::to_string(&self.config).context("serialising the config")?;
        if let Some(w) = self.loss.positive_weights() {
            text.push_str(&format!(
                "\n# W-CE positive weights from the training split, (N - n_c) / n_c, class order \
                 of the store:\n# {w:?}\n"
            ));
        }
        lossbench_core::files::write_atomically(&self.dir.join("config.toml"), text.as_bytes())
    }
}
