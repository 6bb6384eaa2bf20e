//! `trainer landscape` (docs/landscape.md): the loss landscape around a run's checkpoint.
//!
//! - `1d` / `2d`: θ + α·d₁ (+ β·d₂) on a grid, d₁, d₂ seeded filter-normalised Gaussian
//!   directions ([`directions`]);
//! - `interp`: (1 − t)·θ₀ + t·θ₁ between two checkpoints (Goodfellow et al., ICLR 2015);
//! - `sharpness`: the dominant Hessian eigenvalue of the training loss at each checkpoint the
//!   run kept ([`hessian`]).
//!
//! Each grid point is evaluated on a fixed, seeded subset of training patches (the run's loss
//! and every loss of the study, on the same logits) and of validation patches (F1 sample, micro,
//! macro, with the run's decision rule), dropout off, BatchNorm in eval mode (or with each
//! batch's statistics). Points are grouped in blocks; each block is written atomically to
//! `<run>/landscape/<name>/blocks/`, blocks are shared out over MPI ranks and SLURM array tasks,
//! and a rerun computes only the missing ones. The directions are saved beside them.

pub mod directions;
pub mod hessian;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray, UInt32Array, UInt64Array};
use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::checkpoint;
use crate::config::{self, Config};
use crate::data::resident::Placement;
use crate::data::{Normalizer, ResidentSplit};
use crate::dist::Dist;
use crate::losses::{Loss, LossSpec, STUDY_LOSSES, SingleLoss};
use crate::model::{Arch, Model, Regularization};
use crate::run_folder::RunFolder;
use crate::steps::epoch_order;
use lossbench_core::layout::Split;
use lossbench_core::lock::Mode;
use lossbench_core::metrics::Counts;
use lossbench_core::store::Store;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LandscapeKind {
    #[value(name = "1d")]
    #[serde(rename = "1d")]
    OneD,
    #[value(name = "2d")]
    #[serde(rename = "2d")]
    TwoD,
    Interp,
    Sharpness,
}

impl LandscapeKind {
    fn name(self) -> &'static str {
        match self {
            LandscapeKind::OneD => "1d",
            LandscapeKind::TwoD => "2d",
            LandscapeKind::Interp => "interp",
            LandscapeKind::Sharpness => "sharpness",
        }
    }
}

/// How BatchNorm normalises at a grid point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BnMode {
    /// The checkpoint's running statistics (as at validation).
    Eval,
    /// Each evaluation batch's own statistics, recomputed at every point.
    Batch,
}

/// Everything that defines a landscape; stored as `spec.json` and checked on a rerun.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    pub kind: LandscapeKind,
    /// The run folder and its checkpoint (for `interp`, the start).
    pub run: PathBuf,
    pub epoch: Option<u32>,
    /// `interp`'s end: a run folder and its epoch.
    pub to: Option<(PathBuf, u32)>,
    pub seed: u64,
    /// α (and β) from, to, points per axis; `interp`: t.
    pub range: (f64, f64),
    pub points: usize,
    pub include_bias_bn: bool,
    pub bn: BnMode,
    /// Rows of the training and validation splits in the subsets.
    pub train_rows: Vec<usize>,
    pub val_rows: Vec<usize>,
    pub batch: usize,
    /// Points per block; `sharpness`: the checkpoint epochs, one per block.
    pub block: usize,
    pub epochs: Vec<u32>,
    pub iterations: usize,
    pub tolerance: f64,
    pub data: PathBuf,
}

/// What `trainer landscape` is asked: its command-line flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Request {
    /// The run folder.
    #[arg(long)]
    pub run: PathBuf,
    /// The checkpoint's epoch (default: the best epoch); for `interp`, the start.
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
    run.join("landscape").join(name)
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
        (kind, _, _) => format!("{}{e}-seed{}", kind.name(), r.seed),
    }
}

fn best_epoch(run: &Path) -> Result<u32> {
    RunFolder::open(run)?.best_epoch()
}

/// The evaluation set-up: the network, the subsets in memory, the losses.
struct Evaluator {
    device: Device,
    vs: VarStore,
    model: Model,
    /// Every variable, by name (sorted): the model's, to overwrite at each point.
    vars: Vec<(String, Tensor)>,
    train: ResidentSplit,
    val: ResidentSplit,
    own: Loss,
    study: Vec<(&'static str, Loss)>,
    batch: usize,
    bn: BnMode,
}

impl Evaluator {
    fn new(
        config: &Config,
        spec: &Spec,
        device: Device,
        store: &Store,
        threads: usize,
    ) -> Result<Evaluator> {
        let norm = Normalizer::from_store(&store.attrs)?;
        let counts = &store.attrs.splits[&Split::Train];
        let own = Loss::new(&config.loss, &counts.label_counts, counts.patches);
        let study = STUDY_LOSSES
            .iter()
            .map(|&n| {
                let spec =
                    LossSpec::Single(SingleLoss::with_defaults(n).map_err(anyhow::Error::msg)?);
                Ok((n, Loss::new(&spec, &counts.label_counts, counts.patches)))
            })
            .collect::<Result<_>>()?;
        let load = |split: Split, rows: &[usize]| -> Result<ResidentSplit> {
            ResidentSplit::load_rows(
                Arc::new(store.split(split)?),
                rows,
                &norm,
                if device == Device::Cpu {
                    Placement::Host
                } else {
                    Placement::Device
                },
                device,
                threads,
            )
        };
        let (train, val) = (
            load(Split::Train, &spec.train_rows)?,
            load(Split::Validation, &spec.val_rows)?,
        );
        // Dropout off; BatchNorm per the spec.
        let mut vs = VarStore::new(Device::Cpu);
        let model = Model::new(
            &vs.root(),
            config.model.arch,
            config.run.seed,
            Regularization::OFF,
        );
        vs.set_device(device);
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Evaluator {
            device,
            vs,
            model,
            vars,
            train,
            val,
            own,
            study,
            batch: spec.batch,
            bn: spec.bn,
        })
    }

    /// Sets every variable from `values` (by name, the same order as `vars`).
    fn set(&self, values: &[Tensor]) {
        tch::no_grad(|| {
            for ((_, var), v) in self.vars.iter().zip(values) {
                let mut var = var.shallow_clone();
                var.copy_(v);
            }
        });
    }

    fn logits(&self, data: &ResidentSplit, rows: usize, grad: bool) -> Vec<(Tensor, Tensor)> {
        let positions: Vec<usize> = (0..rows).collect();
        positions
            .chunks(self.batch)
            .map(|idx| {
                let b = data.batch(idx);
                let run = || self.model.forward_t(&b.inputs, self.bn == BnMode::Batch);
                let logits = if grad { run() } else { tch::no_grad(run) };
                (logits, b.targets)
            })
            .collect()
    }

    /// The quantities at the current weights: losses on the training subset, F1 on the
    /// validation subset.
    fn quantities(&self, train_rows: usize, val_rows: usize) -> Result<Vec<(String, f64)>> {
        let (logits, targets): (Vec<Tensor>, Vec<Tensor>) = self
            .logits(&self.train, train_rows, false)
            .into_iter()
            .unzip();
        let (z, y) = (Tensor::cat(&logits, 0), Tensor::cat(&targets, 0));
        let mut out = vec![(
            "loss".to_string(),
            self.own.compute(&z, &y).double_value(&[]),
        )];
        for (name, loss) in &self.study {
            out.push((
                format!("loss:{name}"),
                loss.compute(&z, &y).double_value(&[]),
            ));
        }
        let mut counts = Counts::default();
        for (z, y) in self.logits(&self.val, val_rows, false) {
            let pred =
                Vec::<u8>::try_from(self.own.decide(&z).to_device(Device::Cpu).reshape([-1]))?;
            let truth =
                Vec::<u8>::try_from(y.to_device(Device::Cpu).to_kind(Kind::Uint8).reshape([-1]))?;
            counts.add(&truth, &pred);
        }
        let m = counts.metrics();
        out.extend([
            ("f1_samples".into(), m.samples.f1),
            ("f1_micro".into(), m.micro.f1),
            ("f1_macro".into(), m.macro_avg.f1),
        ]);
        Ok(out)
    }
}

/// One point of the grid: its index and coordinates.
#[derive(Debug, Clone, Copy)]
struct Point {
    index: usize,
    alpha: Option<f64>,
    beta: Option<f64>,
    /// `sharpness`: the checkpoint's epoch.
    epoch: Option<u32>,
}

fn linspace((from, to): (f64, f64), n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![from];
    }
    (0..n)
        .map(|i| from + (to - from) * i as f64 / (n - 1) as f64)
        .collect()
}

fn grid(spec: &Spec) -> Vec<Point> {
    let axis = linspace(spec.range, spec.points);
    let point = |index, alpha, beta, epoch| Point {
        index,
        alpha,
        beta,
        epoch,
    };
    match spec.kind {
        LandscapeKind::OneD | LandscapeKind::Interp => axis
            .iter()
            .enumerate()
            .map(|(i, &a)| point(i, Some(a), None, None))
            .collect(),
        LandscapeKind::TwoD => (0..spec.points * spec.points)
            .map(|k| {
                point(
                    k,
                    Some(axis[k / spec.points]),
                    Some(axis[k % spec.points]),
                    None,
                )
            })
            .collect(),
        LandscapeKind::Sharpness => spec
            .epochs
            .iter()
            .enumerate()
            .map(|(i, &e)| point(i, None, None, Some(e)))
            .collect(),
    }
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

fn block_schema() -> arrow_schema::SchemaRef {
    lossbench_core::schema::of(lossbench_core::schema::landscape_block())
}

/// What one call of [`run`] did.
pub struct Outcome {
    pub folder: PathBuf,
    pub blocks: usize,
    pub computed: usize,
    pub already_done: usize,
}

/// Computes this worker's missing blocks of the landscape `r` asks for.
pub fn run(r: &Request, dist: &Dist) -> Result<Outcome> {
    let run_folder = RunFolder::open(&r.run)?;
    // Beside other landscapes of the run, never beside a training attempt (which prunes the
    // checkpoints read here).
    let _lock = crate::folder_lock::lock(&r.run, Mode::Shared, "trainer landscape", dist)?;
    let config = &run_folder.config;
    let store = run_folder.store(r.data.as_deref())?;
    let store_path = canonical(&store.path);
    let kind = r.kind;
    let epoch = match kind {
        LandscapeKind::Sharpness => None,
        _ => Some(match r.epoch {
            Some(e) => e,
            None => best_epoch(&r.run)?,
        }),
    };
    let to = match kind {
        LandscapeKind::Interp => {
            let to_run = canonical(r.to_run.as_ref().unwrap_or(&r.run));
            let to_epoch = match (r.to_epoch, &r.to_run) {
                (Some(e), _) => e,
                (None, Some(other)) => best_epoch(other)?,
                (None, None) => bail!(
                    "--kind interp: give the other end, --to-epoch (this run) or --to-run (another run's best epoch)"
                ),
            };
            Some((to_run, to_epoch))
        }
        _ => None,
    };
    let epochs = match kind {
        LandscapeKind::Sharpness => checkpoint::epochs(&r.run)?,
        _ => Vec::new(),
    };
    if kind == LandscapeKind::Sharpness && epochs.is_empty() {
        bail!("{}: no epoch checkpoint to measure", r.run.display());
    }
    let default_range = if kind == LandscapeKind::Interp {
        (-0.5, 1.5)
    } else {
        (-1.0, 1.0)
    };
    let default_points = if kind == LandscapeKind::Interp {
        41
    } else {
        51
    };
    let train_len = store.attrs.splits[&Split::Train].patches as usize;
    let val_len = store.attrs.splits[&Split::Validation].patches as usize;
    let spec = Spec {
        kind,
        // Canonical: `runs/x`, `./runs/x` and the absolute path ask for the same landscape.
        run: canonical(&r.run),
        epoch,
        to: to.clone(),
        seed: r.seed,
        range: r.range.unwrap_or(default_range),
        points: r.points.unwrap_or(default_points),
        include_bias_bn: r.include_bias_bn,
        bn: r.bn,
        train_rows: subset(
            train_len,
            r.train_patches
                .unwrap_or(default_patches(config.model.arch)),
            r.seed,
            0,
        ),
        val_rows: subset(
            val_len,
            r.val_patches.unwrap_or(default_patches(config.model.arch)),
            r.seed,
            1,
        ),
        batch: r.batch,
        block: if kind == LandscapeKind::Sharpness {
            1
        } else {
            r.block
        },
        epochs,
        iterations: r.iterations,
        tolerance: 1e-3,
        data: store_path,
    };
    if spec.points == 0
        || spec.block == 0
        || spec.batch == 0
        || spec.train_rows.is_empty()
        || spec.val_rows.is_empty()
    {
        bail!("--points, --block, --batch, --train-patches and --val-patches must be at least 1");
    }
    if !(spec.range.0.is_finite() && spec.range.1.is_finite() && spec.range.0 < spec.range.1) {
        bail!(
            "--range {}:{}: expected FROM:TO with FROM < TO",
            spec.range.0,
            spec.range.1
        );
    }
    let name = r.name.clone().unwrap_or_else(|| default_name(r, epoch));
    let dir = folder(&r.run, &name);
    let blocks_dir = dir.join("blocks");
    // The spec is written once (rank 0, task 0 first); a rerun must ask for the same landscape.
    let spec_path = dir.join("spec.json");
    fs::create_dir_all(&blocks_dir)
        .with_context(|| format!("creating {}", blocks_dir.display()))?;
    // Temporary files of workers killed mid-write.
    for folder in [&dir, &blocks_dir] {
        lossbench_core::files::remove_stale_temporaries(folder);
    }
    match fs::read(&spec_path) {
        Ok(bytes) => {
            let existing: Spec = serde_json::from_slice(&bytes)
                .with_context(|| format!("{}: unreadable", spec_path.display()))?;
            if existing != spec {
                bail!(
                    "{} holds another landscape ({}); choose another --name or remove it",
                    dir.display(),
                    spec_path.display()
                );
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Whoever comes first creates it; a writer of another spec that lost the race
            // finds it on its next start (the blocks it writes are checked against it).
            let bytes = serde_json::to_vec_pretty(&spec)?;
            if !lossbench_core::files::create_new_atomically(&spec_path, &bytes)? {
                let existing: Spec = serde_json::from_slice(&fs::read(&spec_path)?)
                    .with_context(|| format!("{}: unreadable", spec_path.display()))?;
                if existing != spec {
                    bail!(
                        "{} holds another landscape ({}); choose another --name or remove it",
                        dir.display(),
                        spec_path.display()
                    );
                }
            }
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", spec_path.display())),
    }

    let points = grid(&spec);
    let blocks: Vec<&[Point]> = points.chunks(spec.block).collect();
    let (task, tasks) = r.task;
    let workers = tasks * dist.world_size;
    let me = task * dist.world_size + dist.rank;
    let block_path = |b: usize| blocks_dir.join(format!("block-{b:05}.parquet"));
    let mine: Vec<usize> = (0..blocks.len()).filter(|b| b % workers == me).collect();
    let todo: Vec<usize> = mine
        .iter()
        .copied()
        .filter(|&b| !block_path(b).is_file())
        .collect();
    let outcome = Outcome {
        folder: dir.clone(),
        blocks: blocks.len(),
        computed: todo.len(),
        already_done: mine.len() - todo.len(),
    };
    if todo.is_empty() {
        return Ok(outcome);
    }

    let device = crate::device::resolve(r.device.unwrap_or(config.run.device), dist.local_rank)?;
    dist.set_compute_threads(r.threads.unwrap_or(config.run.threads));
    let eval = Evaluator::new(config, &spec, device, &store, config.train.loader_threads)?;
    let base = checkpoint_values(&r.run, epoch, &eval)?;
    let landscape = Landscape {
        spec: &spec,
        eval: &eval,
        base,
        name: &name,
        dirs: None,
        end: None,
    };
    let landscape = landscape.prepare(&dir, dist.is_root() && task == 0)?;
    let progress = lossbench_core::progress::bar_if(dist.is_root(), todo.len() as u64, "blocks");
    for b in todo {
        let rows = landscape.block(blocks[b])?;
        lossbench_core::tables::write_parquet(&block_path(b), &block_schema(), &[rows])?;
        progress.inc(1);
        tracing::info!(block = b, of = blocks.len(), "landscape block written");
    }
    progress.finish_and_clear();
    Ok(outcome)
}

/// The variables of a checkpoint on the evaluation device, in the evaluator's order.
fn checkpoint_values(run: &Path, epoch: Option<u32>, eval: &Evaluator) -> Result<Vec<Tensor>> {
    let Some(epoch) = epoch else {
        return Ok(Vec::new());
    };
    let c = checkpoint::at_epoch(run, epoch)?;
    checkpoint::copy_into(&eval.vars, &c.model, &c.dir)?;
    Ok(eval.vars.iter().map(|(_, t)| t.detach().copy()).collect())
}

/// A landscape being computed: the spec, the evaluator, the centre and its directions (or the
/// other end).
struct Landscape<'a> {
    spec: &'a Spec,
    eval: &'a Evaluator,
    base: Vec<Tensor>,
    name: &'a str,
    /// `1d` / `2d`: one or two directions, per variable (zero for buffers).
    dirs: Option<Vec<Vec<Tensor>>>,
    /// `interp`: the other checkpoint's variables.
    end: Option<Vec<Tensor>>,
}

impl<'a> Landscape<'a> {
    /// Draws the directions (seeded: the same on every worker and every rerun) and saves them
    /// once beside the blocks, or loads the other end.
    fn prepare(mut self, dir: &Path, writer: bool) -> Result<Landscape<'a>> {
        let spec = self.spec;
        match spec.kind {
            LandscapeKind::OneD | LandscapeKind::TwoD => {
                let count = if spec.kind == LandscapeKind::OneD {
                    1
                } else {
                    2
                };
                let trainable: Vec<(String, Tensor)> = self
                    .eval
                    .vars
                    .iter()
                    .zip(&self.base)
                    .filter(|((_, v), _)| v.requires_grad())
                    .map(|((n, _), b)| (n.clone(), b.to_device(Device::Cpu)))
                    .collect();
                let drawn = directions::draw(&trainable, spec.seed, count, spec.include_bias_bn);
                let path = dir.join("directions.safetensors");
                if writer && !path.is_file() {
                    let named: Vec<(String, Tensor)> = drawn
                        .iter()
                        .enumerate()
                        .flat_map(|(k, d)| {
                            d.iter()
                                .map(move |(n, t)| (format!("d{}/{n}", k + 1), t.shallow_clone()))
                        })
                        .collect();
                    // A temporary name of this writer's own: other tasks may save the same
                    // directions at the same moment.
                    let tmp = lossbench_core::files::temp_path(&path);
                    Tensor::write_safetensors(&named, &tmp)
                        .with_context(|| format!("writing {}", tmp.display()))?;
                    lossbench_core::files::commit(&tmp, &path)?;
                }
                // Per variable in the evaluator's order: the direction, or zero for buffers.
                let per_var = |d: &directions::Direction| -> Vec<Tensor> {
                    self.eval
                        .vars
                        .iter()
                        .map(|(n, v)| {
                            d.iter().find(|(m, _)| m == n).map_or_else(
                                || v.zeros_like(),
                                |(_, t)| t.to_device(self.eval.device),
                            )
                        })
                        .collect()
                };
                self.dirs = Some(drawn.iter().map(per_var).collect());
            }
            LandscapeKind::Interp => {
                let (run, epoch) = spec.to.as_ref().expect("interp has an end");
                self.end = Some(checkpoint_values(run, Some(*epoch), self.eval)?);
                // checkpoint_values set the model to the end: nothing else reads it before a point sets it.
            }
            LandscapeKind::Sharpness => {}
        }
        Ok(self)
    }

    /// The rows of one block: every quantity at every point.
    fn block(&self, points: &[Point]) -> Result<RecordBatch> {
        let spec = self.spec;
        let mut rows: Vec<(Point, String, f64)> = Vec::new();
        for &p in points {
            let values = match spec.kind {
                LandscapeKind::Sharpness => {
                    // Loading the checkpoint sets the model's variables to it.
                    checkpoint_values(&spec.run, p.epoch, self.eval)?;
                    let e = self.sharpness();
                    if !e.converged {
                        tracing::warn!(
                            epoch = p.epoch,
                            iterations = e.iterations,
                            "power iteration did not converge (raise --iterations)"
                        );
                    }
                    vec![
                        ("lambda_max".to_string(), e.value),
                        ("power_iterations".to_string(), e.iterations as f64),
                        (
                            "power_converged".to_string(),
                            f64::from(u8::from(e.converged)),
                        ),
                    ]
                }
                _ => {
                    self.eval.set(&self.weights_at(p));
                    self.eval
                        .quantities(spec.train_rows.len(), spec.val_rows.len())?
                }
            };
            rows.extend(values.into_iter().map(|(q, v)| (p, q, v)));
        }
        let other = spec
            .to
            .as_ref()
            .map(|(r, e)| format!("{}@{e}", r.display()))
            .unwrap_or_default();
        let n = rows.len();
        let columns: Vec<(&str, ArrayRef)> = vec![
            (
                "name",
                Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                    self.name, n,
                ))),
            ),
            (
                "kind",
                Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                    spec.kind.name(),
                    n,
                ))),
            ),
            (
                "checkpoint",
                Arc::new(UInt32Array::from_iter(
                    rows.iter().map(|(p, _, _)| p.epoch.or(spec.epoch)),
                )),
            ),
            (
                "other",
                Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                    other.as_str(),
                    n,
                ))),
            ),
            (
                "direction_seed",
                Arc::new(UInt64Array::from_iter_values(std::iter::repeat_n(
                    spec.seed, n,
                ))),
            ),
            (
                "point",
                Arc::new(UInt32Array::from_iter_values(
                    rows.iter().map(|(p, _, _)| p.index as u32),
                )),
            ),
            (
                "alpha",
                Arc::new(Float64Array::from_iter(
                    rows.iter().map(|(p, _, _)| p.alpha),
                )),
            ),
            (
                "beta",
                Arc::new(Float64Array::from_iter(rows.iter().map(|(p, _, _)| p.beta))),
            ),
            (
                "quantity",
                Arc::new(StringArray::from_iter_values(
                    rows.iter().map(|(_, q, _)| q.as_str()),
                )),
            ),
            (
                "value",
                Arc::new(Float64Array::from_iter_values(
                    rows.iter().map(|(_, _, v)| *v),
                )),
            ),
        ];
        lossbench_core::schema::batch(&block_schema(), columns)
    }

    /// The variables at a grid point.
    fn weights_at(&self, p: Point) -> Vec<Tensor> {
        let (a, b) = (p.alpha.unwrap_or(0.0), p.beta.unwrap_or(0.0));
        match (&self.dirs, &self.end) {
            (Some(d), _) => (0..self.base.len())
                .map(|i| {
                    let mut w = &self.base[i] + &d[0][i] * a;
                    if let Some(d2) = d.get(1) {
                        w += &d2[i] * b;
                    }
                    w
                })
                .collect(),
            (None, Some(end)) => self
                .base
                .iter()
                .zip(end)
                .map(|(s, e)| s * (1.0 - a) + e * a)
                .collect(),
            (None, None) => self.base.iter().map(Tensor::shallow_clone).collect(),
        }
    }

    /// The dominant Hessian eigenvalue of the run's loss on the training subset.
    fn sharpness(&self) -> hessian::Eigen {
        let eval = self.eval;
        let params: Vec<Tensor> = eval.vs.trainable_variables();
        let rows = self.spec.train_rows.len();
        let positions: Vec<usize> = (0..rows).collect();
        let batches: Vec<Vec<usize>> = positions
            .chunks(eval.batch)
            .map(<[usize]>::to_vec)
            .collect();
        let batch_loss = |b: usize| -> Tensor {
            let batch = eval.train.batch(&batches[b]);
            let logits = eval
                .model
                .forward_t(&batch.inputs, eval.bn == BnMode::Batch);
            // Each batch's mean, weighted by its share of the subset: their sum is the subset's loss.
            eval.own.compute(&logits, &batch.targets) * (batches[b].len() as f64 / rows as f64)
        };
        hessian::dominant_eigenvalue(
            &params,
            batches.len(),
            &batch_loss,
            self.spec.seed,
            self.spec.iterations,
            self.spec.tolerance,
        )
    }
}
