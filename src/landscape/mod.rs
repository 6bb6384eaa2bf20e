//! `trainer landscape` (docs/landscape.md): the loss landscape around a run's checkpoint.
//!
//! - `1d` / `2d`: θ + α·d₁ (+ β·d₂) on a grid, d₁, d₂ seeded filter-normalised Gaussian
//!   directions ([`directions`]);
//! - `interp`: (1 − t)·θ₀ + t·θ₁ between two checkpoints (Goodfellow et al., ICLR 2015);
//! - `sharpness`: the dominant Hessian eigenvalue of the training loss at each checkpoint the
//!   run kept ([`hessian`]);
//! - `spectrum`: the Hessian's top eigenvalues, trace, eigenvalue density and per-layer values
//!   at each checkpoint ([`spectrum`]).
//!
//! Each is evaluated on a fixed, seeded subset of training patches (the run's loss and every
//! loss of the study, on the same logits) and of validation patches (F1 sample, micro, macro,
//! with the run's decision rule), dropout off, BatchNorm in eval mode (or with each batch's
//! statistics) ([`evaluator`]). The work comes in blocks (grid points; for `spectrum`, probes
//! and layers), computed by one loop ([`blocks`]) whose clients are [`grid`] and [`spectrum`]:
//! each block is written atomically to `<run>/landscape/<name>/blocks/`, blocks are shared out
//! over MPI ranks and SLURM array tasks, and a rerun computes only the missing ones. Nothing is
//! written before the landscape is known to be computable (its checkpoints exist).

mod blocks;
pub mod directions;
mod evaluator;
mod grid;
pub mod hessian;
mod rows;
mod spec;
pub mod spectrum;
mod tensorboard;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

pub use spec::{Axes, BnMode, KindSpec, LandscapeKind, Spec};

use crate::checkpoint;
use crate::dist::Dist;
use crate::steps::epoch_order;
use evaluator::Evaluator;
use lossbench_core::config::Arch;
use lossbench_core::config::{self, Config};
use lossbench_core::layout::Split;
use lossbench_core::lock::Mode;
use lossbench_core::run_folder::RunFolder;
use lossbench_core::store::Store;

/// What `trainer landscape` is asked: its command-line flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Request {
    /// The run folder.
    #[arg(long)]
    pub run: PathBuf,
    /// The checkpoint's epoch (default: the best epoch; `sharpness` and `spectrum`: every
    /// checkpoint the run kept); for `interp`, the start.
    #[arg(long)]
    pub epoch: Option<u32>,
    #[arg(long, value_enum)]
    pub kind: LandscapeKind,
    /// `interp`: the other end's run folder (default: this run) ...
    #[arg(long)]
    pub to_run: Option<PathBuf>,
    /// ... and epoch (default: that run's best).
    #[arg(long)]
    pub to_epoch: Option<u32>,
    /// FROM:TO of α (and β); `interp`: of t (default -1:1; `interp` -0.5:1.5).
    #[arg(long, value_parser = parse_range, allow_hyphen_values = true)]
    pub range: Option<(f64, f64)>,
    /// Points per axis (default 51; `interp` 41); a 2D grid has points².
    #[arg(long)]
    pub points: Option<usize>,
    /// Seeds the directions, the power iteration's start and the patch subsets.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Training patches the losses are evaluated on (a seeded subset; default 2048, 1024 for
    /// vgg16: a default 2D landscape stays under 15 GPU-minutes, docs/landscape.md).
    #[arg(long)]
    pub train_patches: Option<usize>,
    /// Validation patches the F1 scores are evaluated on (a seeded subset; default as
    /// --train-patches).
    #[arg(long)]
    pub val_patches: Option<usize>,
    /// Patches per forward pass.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Grid points per block (the unit of work, of distribution and of restart).
    #[arg(long, default_value_t = 16)]
    pub block: usize,
    /// Give biases and BatchNorm parameters a direction too (the parameters themselves).
    #[arg(long)]
    pub include_bias_bn: bool,
    /// BatchNorm with the checkpoint's running statistics (`eval`) or each batch's (`batch`).
    #[arg(long, value_enum, default_value_t = BnMode::Eval)]
    pub bn: BnMode,
    /// `sharpness`: power iterations at most.
    #[arg(long, default_value_t = 50)]
    pub iterations: usize,
    #[command(flatten)]
    pub spectrum: spectrum::SpectrumArgs,
    /// The landscape's folder name under <run>/landscape/ (default from kind, epoch and seed).
    #[arg(long)]
    pub name: Option<String>,
    /// The store (default: the run's run.data).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Overrides the run's run.device.
    #[arg(long, value_enum)]
    pub device: Option<config::DeviceChoice>,
    /// K/N: this process is task K of N (a SLURM array; slurm/landscape.sh sets it).
    #[arg(long, value_parser = parse_task, default_value = "0/1")]
    pub task: (usize, usize),
    /// CPU compute threads per rank (default: the run's run.threads; 0 = the node's cores
    /// shared by its ranks).
    #[arg(long)]
    pub threads: Option<usize>,
}

fn parse_range(s: &str) -> Result<(f64, f64), String> {
    let (a, b) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected FROM:TO, e.g. -1:1"))?;
    let parse = |v: &str| v.trim().parse::<f64>().map_err(|e| format!("{v:?}: {e}"));
    Ok((parse(a)?, parse(b)?))
}

fn parse_task(s: &str) -> Result<(usize, usize), String> {
    let (k, n) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?}: expected K/N, e.g. 0/4"))?;
    let (k, n) = (
        k.parse::<usize>().map_err(|e| e.to_string())?,
        n.parse::<usize>().map_err(|e| e.to_string())?,
    );
    if n == 0 || k >= n {
        return Err(format!("{s:?}: K must be below N"));
    }
    Ok((k, n))
}

/// A path as it resolves now (itself when it does not exist).
fn canonical(p: &Path) -> PathBuf {
    p.canonicalize().unwrap_or_else(|_| p.to_path_buf())
}

/// Patches of each subset by default: a 2D landscape of 51 x 51 points then costs under 15
/// minutes on one GPU by the cost model of docs/landscape.md (VGG-16-BN's forward pass costs
/// 22 times the K-Branch CNN's, so it gets half).
pub fn default_patches(arch: Arch) -> usize {
    match arch {
        Arch::KBranch | Arch::ResNet50 => 2048,
        Arch::Vgg16 => 1024,
    }
}

/// Where a landscape lives: `<run>/landscape/<name>/`.
pub fn folder(run: &Path, name: &str) -> PathBuf {
    lossbench_core::run_folder::landscape_dir(run, name)
}

fn default_name(r: &Request, epoch: Option<u32>) -> String {
    let e = epoch.map_or(String::new(), |e| format!("-epoch{e:04}"));
    match (r.kind, &r.to_run, r.to_epoch) {
        (LandscapeKind::Interp, to, Some(te)) => {
            let other = to
                .as_ref()
                .and_then(|p| p.file_name())
                .map_or("self".into(), |n| n.to_string_lossy().to_string());
            format!("interp{e}-to-{other}-epoch{te:04}")
        }
        (LandscapeKind::Sharpness, _, _) => format!("sharpness-seed{}", r.seed),
        (LandscapeKind::Spectrum, _, _) => format!("spectrum{e}-seed{}", r.seed),
        (kind, _, _) => format!("{}{e}-seed{}", kind.name(), r.seed),
    }
}

/// The best epoch of the run folder `run` (an error names a folder that is not one).
fn best_epoch(run: &Path) -> Result<u32> {
    RunFolder::open(run)?;
    checkpoint::best_epoch(run)
}

/// The seeded subset: the first `n` rows of a permutation of the split (in row order).
fn subset(len: usize, n: usize, seed: u64, salt: u32) -> Vec<usize> {
    let mut rows: Vec<usize> = epoch_order(len, seed, u32::MAX - salt)
        .into_iter()
        .take(n.min(len))
        .collect();
    rows.sort_unstable();
    rows
}

/// What one call of [`run`] did.
pub struct Outcome {
    pub folder: PathBuf,
    pub blocks: usize,
    pub computed: usize,
    pub already_done: usize,
}

/// The checkpoint epoch of a landscape (none for `sharpness` and `spectrum` over every kept
/// checkpoint).
fn centre_epoch(r: &Request) -> Result<Option<u32>> {
    Ok(match (r.kind, r.epoch) {
        (LandscapeKind::Sharpness, _) | (LandscapeKind::Spectrum, None) => None,
        (_, Some(e)) => Some(e),
        (_, None) => Some(best_epoch(&r.run)?),
    })
}

/// `interp`'s other end, checked to exist.
fn other_end(r: &Request) -> Result<Option<(PathBuf, u32)>> {
    if r.kind != LandscapeKind::Interp {
        return Ok(None);
    }
    let to_run = canonical(r.to_run.as_ref().unwrap_or(&r.run));
    let to_epoch = match (r.to_epoch, &r.to_run) {
        (Some(e), _) => e,
        (None, Some(other)) => best_epoch(other)?,
        (None, None) => bail!(
            "--kind interp: give the other end, --to-epoch (this run) or --to-run (another run's best epoch)"
        ),
    };
    checkpoint::at_epoch(&to_run, to_epoch)?;
    Ok(Some((to_run, to_epoch)))
}

/// The checkpoints a landscape reads, each checked to exist (an epoch that does not is an
/// error listing those that do, before anything is written).
fn checkpoint_epochs(r: &Request, epoch: Option<u32>) -> Result<Vec<u32>> {
    if let Some(e) = epoch {
        checkpoint::at_epoch(&r.run, e)?;
    }
    let every_kept = matches!(r.kind, LandscapeKind::Sharpness)
        || (r.kind == LandscapeKind::Spectrum && epoch.is_none());
    if !every_kept {
        return Ok(Vec::new());
    }
    let epochs = checkpoint::epochs(&r.run)?;
    if epochs.is_empty() {
        bail!("{}: no epoch checkpoint to measure", r.run.display());
    }
    Ok(epochs)
}

/// The landscape `r` asks for, checked.
fn plan(r: &Request, config: &Config, store: &Store) -> Result<Spec> {
    let kind = r.kind;
    let epoch = centre_epoch(r)?;
    let to = other_end(r)?;
    let mut epochs = checkpoint_epochs(r, epoch)?;
    if kind == LandscapeKind::Spectrum && epochs.is_empty() {
        epochs = epoch.into_iter().collect();
    }
    let interp = kind == LandscapeKind::Interp;
    let train_len = store.attrs.splits[&Split::Train].patches as usize;
    let val_len = store.attrs.splits[&Split::Validation].patches as usize;
    let patches = default_patches(config.model.arch);
    let range = r
        .range
        .unwrap_or(if interp { (-0.5, 1.5) } else { (-1.0, 1.0) });
    let points = r.points.unwrap_or(if interp { 41 } else { 51 });
    let (train_rows, val_rows) = (
        subset(train_len, r.train_patches.unwrap_or(patches), r.seed, 0),
        subset(val_len, r.val_patches.unwrap_or(patches), r.seed, 1),
    );
    if points == 0 || r.block == 0 || r.batch == 0 || train_rows.is_empty() || val_rows.is_empty() {
        bail!("--points, --block, --batch, --train-patches and --val-patches must be at least 1");
    }
    if !(range.0.is_finite() && range.1.is_finite() && range.0 < range.1) {
        bail!(
            "--range {}:{}: expected FROM:TO with FROM < TO",
            range.0,
            range.1
        );
    }
    let axes = || -> Result<Axes> {
        Ok(Axes {
            epoch: epoch.context("a grid has a checkpoint")?,
            range,
            points,
            block: r.block,
        })
    };
    let include_bias_bn = r.include_bias_bn;
    let of = match kind {
        LandscapeKind::OneD => KindSpec::OneD {
            axes: axes()?,
            include_bias_bn,
        },
        LandscapeKind::TwoD => KindSpec::TwoD {
            axes: axes()?,
            include_bias_bn,
        },
        LandscapeKind::Interp => KindSpec::Interp {
            axes: axes()?,
            to: to.context("interp has an end")?,
        },
        LandscapeKind::Sharpness => KindSpec::Sharpness {
            epochs,
            iterations: r.iterations,
            tolerance: 1e-3,
        },
        LandscapeKind::Spectrum => KindSpec::Spectrum {
            epochs,
            include_bias_bn,
            spectrum: r.spectrum.spec()?,
        },
    };
    Ok(Spec {
        of,
        // Canonical: `runs/x`, `./runs/x` and the absolute path ask for the same landscape.
        run: canonical(&r.run),
        seed: r.seed,
        bn: r.bn,
        train_rows,
        val_rows,
        batch: r.batch,
        data: canonical(&store.path),
    })
}

/// Computes this worker's missing blocks of the landscape `r` asks for.
pub fn run(r: &Request, dist: &Dist) -> Result<Outcome> {
    let run_folder = RunFolder::open(&r.run)?;
    // Beside other landscapes of the run, never beside a training attempt (which prunes the
    // checkpoints read here).
    let _lock = crate::folder_lock::lock(&r.run, Mode::Shared, "trainer landscape", dist)?;
    let config = &run_folder.config;
    let store = run_folder.store(r.data.as_deref(), checkpoint::recorded_store(&r.run)?)?;
    let spec = plan(r, config, &store)?;
    let name = r
        .name
        .clone()
        .unwrap_or_else(|| default_name(r, spec.centre().or(r.epoch)));
    let dir = folder(&r.run, &name);
    blocks::check_existing(&dir, &spec)?;
    let (task, tasks) = r.task;
    let worker = Worker {
        index: task * dist.world_size + dist.rank,
        count: tasks * dist.world_size,
        writes_shared: dist.is_root() && task == 0,
    };
    let device = crate::device::resolve(r.device.unwrap_or(config.run.device), dist.local_rank)?;
    dist.set_compute_threads(r.threads.unwrap_or(config.run.threads));
    let setup = Setup {
        spec: &spec,
        config,
        store: &store,
        device,
        dir: &dir,
        name: &name,
    };
    let outcome = match spec.kind() {
        LandscapeKind::Spectrum => spectrum::run(&setup, &worker),
        _ => blocks::run(
            &dir,
            &spec,
            &worker,
            &mut grid::Grid::new(&setup, worker.writes_shared),
        ),
    }?;
    // The worker that finds the landscape complete plots it in the run's TensorBoard.
    let blocks =
        lossbench_core::tables::table_files(&lossbench_core::run_folder::blocks_dir(&dir))?;
    if config.tensorboard.every > 0 && blocks.len() == outcome.blocks {
        tensorboard::write(&r.run, &name, &blocks)?;
    }
    Ok(outcome)
}

/// Which share of the work this process does.
pub struct Worker {
    /// This worker's number, of `count` (array tasks x MPI ranks).
    pub index: usize,
    pub count: usize,
    /// Writes what is written once (the directions).
    pub writes_shared: bool,
}

/// Everything a landscape's computation needs.
pub struct Setup<'a> {
    pub spec: &'a Spec,
    pub config: &'a Config,
    pub store: &'a Store,
    pub device: tch::Device,
    pub dir: &'a Path,
    pub name: &'a str,
}

impl Setup<'_> {
    fn evaluator(&self) -> Result<Evaluator> {
        Evaluator::new(
            self.config,
            self.spec,
            self.device,
            self.store,
            self.config.train.loader_threads,
        )
    }
}
