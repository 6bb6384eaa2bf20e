//! One run (one job config and seed) set up once, before anything is trained: the run folder
//! locked ([`crate::folder_lock`]), the store opened (and locked for reading), the data placed,
//! the loss, the network and its optimizer, and with `--resume auto` the state of the newest
//! valid checkpoint, after checking that this configuration may continue it
//! ([`crate::resume`]). The training loop ([`crate::train`]) runs on a [`Run`].

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use tch::Device;

use crate::checkpoint;
use crate::data::Splits;
use crate::dist::Dist;
use crate::failure;
use crate::losses::Loss;
use crate::model::Regularization;
use crate::network::Network;
use crate::resume::{self, ConfigChanged, Fingerprint};
use crate::snapshot::Probes;
use crate::step::Stepper;
use crate::steps::MIN_MICRO_BATCH;
use lossbench_core::config::{Config, keys};
use lossbench_core::layout::Split;
use lossbench_core::lock::{Lock, Mode};
use lossbench_core::run_folder::RunFolder;
use lossbench_core::run_info::{ConfigChange, Identity, RunInfo, Start, Status};
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
    /// `run.json`, on rank 0: this attempt is its last.
    pub info: Option<RunInfo>,
    lock: Option<Lock>,
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

/// A file of [`RESERVE_BYTES`] in the run folder, made when an attempt starts and given up when
/// the disk is full, so that `run.json` can still record why the attempt failed.
pub const RESERVE: &str = ".reserve";
const RESERVE_BYTES: u64 = 1 << 20;

/// Makes the run folder's reserve (rank 0); a disk too full for it fails the start.
fn make_reserve(dir: &std::path::Path) -> Result<()> {
    let path = dir.join(RESERVE);
    let file =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    // SAFETY: fallocate on a descriptor this File owns.
    let r = unsafe {
        libc::posix_fallocate(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            0,
            RESERVE_BYTES as i64,
        )
    };
    if r != 0 {
        let e = std::io::Error::from_raw_os_error(r);
        // A file system without fallocate: the reserve is written.
        if r != libc::EOPNOTSUPP && r != libc::EINVAL {
            return Err(e).with_context(|| format!("reserving {}", path.display()));
        }
        std::fs::write(&path, vec![0u8; RESERVE_BYTES as usize])
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// What [`Run::open`] has checked and taken before it loads anything: the store, the run
/// folder's lock, the checkpoint to resume and what this attempt changes against it.
struct Opened {
    device: Device,
    store: Store,
    dir: PathBuf,
    lock: Option<Lock>,
    fingerprint: Fingerprint,
    resumed: Option<checkpoint::Loaded>,
    changes: Vec<ConfigChange>,
}

/// Records the start of this attempt in `run.json` (rank 0), before anything is loaded.
fn begin_attempt(config: &Config, dist: &Dist, o: &Opened) -> Result<RunInfo> {
    let id = Identity {
        run_id: config.run_id(),
        loss: config.loss.name().into(),
        seed: config.run.seed,
        code_revision: env!("LOSSBENCH_REVISION").into(),
    };
    let start = Start {
        world_size: dist.world_size,
        device: crate::device::name(o.device),
        data: Vec::new(),
        store_id: o.fingerprint.store.clone(),
        config_changes: o.changes.clone(),
    };
    for change in &o.changes {
        tracing::info!(%change, "configuration changed on resume");
    }
    RunInfo::begin(&o.dir, id, start)
}

impl Run {
    /// Sets up a run as one rank of `dist`; with `resume`, continues from the newest valid
    /// checkpoint in its folder. The ranks agree after each part that may fail on some of them
    /// only, so that a failure anywhere ends every rank with the same exit code; once the run
    /// folder is locked, rank 0 records the attempt in `run.json`, and any later failure there.
    pub fn open(config: Config, resume: bool, dist: Dist) -> Result<Self> {
        let opened = Self::check_and_lock(&config, resume, &dist)?;
        let info = if dist.is_root() {
            Some(make_reserve(&opened.dir).and_then(|()| begin_attempt(&config, &dist, &opened)))
        } else {
            None
        };
        let mut info = dist.agree(info.transpose())?;
        let dir = opened.dir.clone();
        let built = Self::load(config, dist, opened);
        match built {
            Ok(mut run) => {
                let placed = match &mut info {
                    Some(i) => i.placed(&run.dir, run.data.placements.clone()),
                    None => Ok(()),
                };
                run.info = info;
                run.dist.agree(placed)?;
                Ok(run)
            }
            Err(e) => {
                if let Some(info) = &mut info {
                    let reason = Some(format!("{e:#}"));
                    if lossbench_core::files::is_out_of_space(&e) {
                        let _ = std::fs::remove_file(dir.join(RESERVE));
                    }
                    if let Err(w) = info.end(&dir, Status::Failed, reason) {
                        tracing::error!("recording the failure in run.json: {w:#}");
                    }
                }
                Err(e)
            }
        }
    }

    /// The checks that write nothing, then the run folder's lock and the checkpoint to resume.
    fn check_and_lock(config: &Config, resume: bool, dist: &Dist) -> Result<Opened> {
        let checked = (|| {
            let device = crate::device::resolve(config.run.device, dist.local_rank)?;
            check_shape(config, dist, device)?;
            dist.set_compute_threads(config.run.threads);
            // The store first: a wrong path leaves no run folder behind.
            let store = Store::open(&config.run.data).with_context(|| {
                format!(
                    "run.data = {} (from {})",
                    config.run.data.display(),
                    config.source(keys::DATA)
                )
            })?;
            check_batch(config, &store)?;
            Ok((device, store))
        })();
        let (device, store) = dist.agree(checked)?;
        let dir = config.run.out.join(config.run_id());
        let lock = crate::folder_lock::lock(&dir, Mode::Exclusive, "trainer train", dist)?;
        let fingerprint = Fingerprint::of(config, dist.world_size, &store.attrs.identity());
        // The lock holder repairs what a killed checkpoint write left, then every rank reads.
        let recovered = match dist.is_root() {
            true => checkpoint::recover(&dir),
            false => Ok(()),
        };
        dist.agree(recovered)?;
        let resumed = (|| {
            let resumed = Self::checkpoint_to_resume(&dir, resume)?;
            let changes = match &resumed {
                Some(c) => {
                    Self::check_resume(&dir, c, config, dist.world_size, &fingerprint.store)?
                }
                None => Vec::new(),
            };
            Ok((resumed, changes))
        })();
        let (resumed, changes) = dist.agree(resumed)?;
        Ok(Opened {
            device,
            store,
            dir,
            lock,
            fingerprint,
            resumed,
            changes,
        })
    }

    /// Loads the data, builds the loss and the network, restores the checkpoint and writes the
    /// resolved config; libtorch's errors (memory running out on one rank's GPU or host) are
    /// caught and agreed like any other.
    fn load(config: Config, dist: Dist, o: Opened) -> Result<Self> {
        let device = o.device;
        let (shown, batch) = (
            o.dir.display().to_string(),
            format!("train.batch_size {}", config.train.batch_size),
        );
        let guard = |doing: &str| failure::Context {
            run: shown.clone(),
            doing: doing.to_string(),
            batch: batch.clone(),
            device,
            advice: "Use data.resident = \"off\" (or \"host\" instead of \"device\") to \
                     free the memory the data takes, or ask for more memory per rank."
                .into(),
        };
        let data = Splits::open(&o.store, &config, device, &dist, &guard("loading the data"))?;
        let counts = &o.store.attrs.splits[&Split::Train];
        let loss = Loss::new(&config.loss, &counts.label_counts, counts.patches);
        let tests = data.test.clone();
        let probes = Probes::resolve(&config, [data.train.split(), data.val.split(), &tests])?;
        let m = &config.model;
        let reg = Regularization {
            dropout: m.dropout,
            drop_path: m.drop_path,
        };
        let (seed, t) = (config.run.seed, &config.train);
        let steps_per_epoch = crate::steps::steps_per_epoch(data.train.split().len, t.batch_size);
        let built = failure::catch(|| {
            let net = Network::new(m.arch, seed, reg, device, t.bf16);
            let stepper = Stepper::new(&net, t, steps_per_epoch);
            (net, stepper)
        })
        .map_err(|c| guard("building the network and its optimizer").error(c));
        let (net, stepper) = dist.agree(built)?;
        let mut run = Run {
            config,
            dir: o.dir,
            dist,
            store: o.store,
            data,
            loss,
            net,
            stepper,
            probes,
            progress: Progress::FRESH,
            fingerprint: o.fingerprint,
            changes: o.changes,
            info: None,
            lock: o.lock,
        };
        if let Some(c) = o.resumed {
            let restored = failure::catch(|| run.restore(c))
                .unwrap_or_else(|caught| Err(guard("restoring the checkpoint").error(caught)));
            run.dist.agree(restored)?;
        }
        let written = match run.dist.is_root() {
            true => run.write_resolved_config(),
            false => Ok(()),
        };
        run.dist.agree(written)?;
        Ok(run)
    }

    /// Fails when this attempt's lock of the run folder was taken over by another trainer (its
    /// lease judged expired): nothing more may be written then. Checked before each write that
    /// must not be doubled (records, checkpoints); agreed between the ranks.
    pub fn check_lock(&self) -> Result<()> {
        self.dist.agree(self.lock_held())
    }

    /// [`Run::check_lock`] on this rank alone (rank 0 before its own writes).
    pub fn lock_held(&self) -> Result<()> {
        match &self.lock {
            Some(lock) => Ok(lock.check()?),
            None => Ok(()),
        }
    }

    /// Rank 0 records the end of this attempt in `run.json`. When the disk is full, the run
    /// folder's reserve ([`RESERVE`]) is given up first, so that the failure is recorded.
    pub fn record_end(&mut self, status: Status, reason: Option<String>) -> Result<()> {
        let Some(info) = &mut self.info else {
            return Ok(());
        };
        let recorded = info.end(&self.dir, status, reason.clone());
        if recorded
            .as_ref()
            .is_err_and(lossbench_core::files::is_out_of_space)
        {
            let _ = std::fs::remove_file(self.dir.join(RESERVE));
            return info.end(&self.dir, status, reason);
        }
        recorded
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
        let old = RunFolder::open(dir).ok();
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
        let path = self.dir.join(lossbench_core::run_folder::CONFIG_FILE);
        lossbench_core::files::write_atomically(&path, text.as_bytes())
    }
}
