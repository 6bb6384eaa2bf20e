//! `trainer`: trains a network with one loss (docs/training.md), explains it (docs/lrp.md), and
//! reports and times what it runs on (docs/cluster.md, docs/benchmarks.md).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use data_prep::logging::{self, LogFormat};
use lossbench::config::{self, DeviceChoice};
use lossbench::dist::Dist;
use lossbench::landscape::{BnMode, LandscapeKind};
use lossbench::run::Run;
use lossbench::run_info::{Identity, RunInfo, Status};
use lossbench::train::{EXIT_REQUEUE, Ending};

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Resume {
    Auto,
    Never,
}

#[derive(Subcommand)]
enum Command {
    /// Train one run (one job config, one seed).
    Train(TrainArgs),
    /// LRP heatmaps of any patches with a run's weights (docs/lrp.md).
    Explain(ExplainArgs),
    /// Loss landscape around a run's checkpoints: 1D / 2D surfaces, interpolation, sharpness
    /// (docs/landscape.md).
    Landscape(LandscapeArgs),
    /// Time the optimizer step on a run's data and print JSON (docs/benchmarks.md).
    Bench(BenchArgs),
    /// Print the libtorch, devices and memory this trainer sees, as JSON.
    Env,
}

#[derive(Args)]
struct ExplainArgs {
    /// The run folder.
    #[arg(long)]
    run: PathBuf,
    /// The epoch whose checkpoint to use (default: the best epoch).
    #[arg(long)]
    epoch: Option<u32>,
    /// Patch names (any split). Repeatable.
    #[arg(long = "patch", required = true)]
    patches: Vec<String>,
    /// BigEarthNet-19 class names (default: each patch's true and predicted classes). Repeatable.
    #[arg(long = "class")]
    classes: Vec<String>,
    /// Output folder: heatmaps.parquet and <patch>/<class>.png.
    #[arg(long)]
    out: PathBuf,
    /// The store (default: the run's run.data).
    #[arg(long)]
    data: Option<PathBuf>,
    /// epsilon-plus-flat | epsilon | alpha1-beta0 (default: the run's lrp.composite).
    #[arg(long)]
    composite: Option<lossbench::lrp::Composite>,
}

#[derive(Args)]
struct LandscapeArgs {
    /// The run folder.
    #[arg(long)]
    run: PathBuf,
    /// The checkpoint's epoch (default: the best epoch); for `interp`, the start.
    #[arg(long)]
    epoch: Option<u32>,
    #[arg(long, value_enum)]
    kind: LandscapeKind,
    /// `interp`: the other end's run folder (default: this run) ...
    #[arg(long)]
    to_run: Option<PathBuf>,
    /// ... and epoch (default: that run's best).
    #[arg(long)]
    to_epoch: Option<u32>,
    /// FROM:TO of α (and β); `interp`: of t (default -1:1; `interp` -0.5:1.5).
    #[arg(long, value_parser = parse_range, allow_hyphen_values = true)]
    range: Option<(f64, f64)>,
    /// Points per axis (default 51; `interp` 41); a 2D grid has points².
    #[arg(long)]
    points: Option<usize>,
    /// Seeds the directions, the power iteration's start and the patch subsets.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Training patches the losses are evaluated on (a seeded subset; default 2048, 1024 for
    /// vgg16: a default 2D landscape stays under 15 GPU-minutes, docs/landscape.md).
    #[arg(long)]
    train_patches: Option<usize>,
    /// Validation patches the F1 scores are evaluated on (a seeded subset; default as
    /// --train-patches).
    #[arg(long)]
    val_patches: Option<usize>,
    /// Patches per forward pass.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Grid points per block (the unit of work, of distribution and of restart).
    #[arg(long, default_value_t = 16)]
    block: usize,
    /// Give biases and BatchNorm parameters a direction too (the parameters themselves).
    #[arg(long)]
    include_bias_bn: bool,
    /// BatchNorm with the checkpoint's running statistics (`eval`) or each batch's (`batch`).
    #[arg(long, value_enum, default_value_t = BnMode::Eval)]
    bn: BnMode,
    /// `sharpness`: power iterations at most.
    #[arg(long, default_value_t = 50)]
    iterations: usize,
    /// The landscape's folder name under <run>/landscape/ (default from kind, epoch and seed).
    #[arg(long)]
    name: Option<String>,
    /// The store (default: the run's run.data).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Overrides the run's run.device.
    #[arg(long, value_enum)]
    device: Option<DeviceChoice>,
    /// K/N: this process is task K of N (a SLURM array; slurm/landscape.sh sets it).
    #[arg(long, value_parser = parse_task, default_value = "0/1")]
    task: (usize, usize),
    /// CPU compute threads per rank (default: the run's run.threads; 0 = the node's cores
    /// shared by its ranks).
    #[arg(long)]
    threads: Option<usize>,
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

/// The job config and the flags that override its keys.
#[derive(Args)]
struct JobArgs {
    /// Job config, e.g. jobs/ce.toml.
    #[arg(long)]
    config: PathBuf,
    /// Overrides run.seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Overrides run.data (the store).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Overrides run.out (folder of run folders).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Overrides train.epochs.
    #[arg(long)]
    epochs: Option<u32>,
    /// Overrides run.device.
    #[arg(long, value_enum)]
    device: Option<DeviceChoice>,
    /// Overrides run.run_id (the run folder's name).
    #[arg(long)]
    run_id: Option<String>,
    /// Overrides any key: `--set train.batch_size=64` (the value is TOML). Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    job: JobArgs,
    /// `auto`: continue from the newest valid checkpoint in the run folder, if any; `never`:
    /// refuse to start when the run folder has checkpoints.
    #[arg(long, value_enum, default_value_t = Resume::Never)]
    resume: Resume,
    /// Stop as on SIGUSR1 (checkpoint, exit 75) after this many optimizer steps of this
    /// attempt: a deterministic interruption for tests and checks.
    #[arg(long, value_name = "N")]
    stop_after_steps: Option<u64>,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    job: JobArgs,
    /// Timed optimizer steps.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Untimed steps first (their losses are reported too).
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Also write the first batch (z-scored inputs and targets) as safetensors, for the
    /// Python peer (scripts/gpu/torch_peer.py).
    #[arg(long)]
    save_batch: Option<PathBuf>,
}

impl JobArgs {
    fn overrides(&self) -> Result<config::Overrides> {
        let path = |p: &PathBuf| toml::Value::String(p.display().to_string());
        let mut o: config::Overrides = Vec::new();
        if let Some(v) = self.seed {
            o.push(("run.seed".into(), toml::Value::Integer(v as i64)));
        }
        if let Some(v) = &self.data {
            o.push(("run.data".into(), path(v)));
        }
        if let Some(v) = &self.out {
            o.push(("run.out".into(), path(v)));
        }
        if let Some(v) = self.epochs {
            o.push(("train.epochs".into(), toml::Value::Integer(v as i64)));
        }
        if let Some(v) = self.device {
            o.push(("run.device".into(), toml::Value::try_from(v)?));
        }
        if let Some(v) = &self.run_id {
            o.push(("run.run_id".into(), toml::Value::String(v.clone())));
        }
        for item in &self.set {
            o.push(config::parse_override(item)?);
        }
        Ok(o)
    }

    fn load(&self) -> Result<config::Config> {
        Ok(config::load(&self.config, self.overrides()?)?)
    }
}

fn run(cli: Cli, dist: Dist) -> Result<ExitCode> {
    match cli.command {
        Command::Explain(a) => {
            let request = lossbench::explain::Request {
                run: a.run,
                epoch: a.epoch,
                patches: a.patches,
                classes: a.classes,
                out: a.out,
                data: a.data,
                composite: a.composite,
            };
            let n = lossbench::explain::explain(&request)?;
            println!(
                "{n} heatmap(s) in {} (heatmaps.parquet and <patch>/<class>.png)",
                request.out.display()
            );
        }
        Command::Landscape(a) => {
            let request = lossbench::landscape::Request {
                run: a.run,
                epoch: a.epoch,
                kind: a.kind,
                to_run: a.to_run,
                to_epoch: a.to_epoch,
                range: a.range,
                points: a.points,
                seed: a.seed,
                train_patches: a.train_patches,
                val_patches: a.val_patches,
                batch: a.batch,
                block: a.block,
                include_bias_bn: a.include_bias_bn,
                bn: a.bn,
                iterations: a.iterations,
                name: a.name,
                data: a.data,
                device: a.device,
                task: a.task,
                threads: a.threads,
            };
            let o = lossbench::landscape::run(&request, &dist)?;
            // Every worker says what it did: how the blocks were shared shows in the job's log.
            println!(
                "{}: {} block(s) in all; task {}/{} rank {}/{} computed {}, found {} of its share done",
                o.folder.display(),
                o.blocks,
                a.task.0,
                a.task.1,
                dist.rank,
                dist.world_size,
                o.computed,
                o.already_done
            );
        }
        Command::Env => println!(
            "{}",
            serde_json::to_string_pretty(&lossbench::device::Environment::probe())?
        ),
        Command::Bench(a) => {
            let mut config = a.job.load()?;
            // A bench leaves no run behind: its run folder is temporary.
            let scratch = tempfile::tempdir()?;
            config.run.out = scratch.path().to_path_buf();
            let mut run = Run::new(config, false, dist)?;
            if let Some(path) = &a.save_batch {
                run.save_first_batch(path)?;
            }
            let timing = run.time_steps(a.warmup, a.steps)?;
            println!("{}", serde_json::to_string(&timing)?);
        }
        Command::Train(a) => {
            let config = a.job.load()?;
            let mut run = Run::new(config, a.resume == Resume::Auto, dist)?;
            run.stop_after_steps = a.stop_after_steps;
            let mut info = if run.dist.is_root() {
                let c = &run.config;
                let id = Identity {
                    run_id: c.run_id(),
                    loss: c.loss.name().into(),
                    seed: c.run.seed,
                    code_revision: env!("LOSSBENCH_REVISION").into(),
                };
                Some(RunInfo::begin(
                    &run.dir,
                    id,
                    run.dist.world_size,
                    format!("{:?}", run.device),
                    run.placements.clone(),
                )?)
            } else {
                None
            };
            let outcome = train_and_test(&mut run);
            if let Some(info) = &mut info {
                let status = match &outcome {
                    Ok(code) if *code == ExitCode::from(EXIT_REQUEUE) => Status::Stopped,
                    Ok(_) => Status::Finished,
                    Err(_) => Status::Failed,
                };
                info.end(&run.dir, status)?;
            }
            return outcome;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Trains the remaining epochs, then tests; prints a summary on rank 0.
fn train_and_test(run: &mut Run) -> Result<ExitCode> {
    let root = run.dist.is_root();
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGUSR1] {
        signal_hook::flag::register(signal, run.stop.clone())?;
    }
    tracing::info!(
        run = %run.dir.display(), loss = %run.loss, arch = run.model.arch().name(), from_epoch = run.progress.start_epoch,
        ranks = run.dist.world_size, device = ?run.device, "training"
    );
    let records = match run.train()? {
        Ending::Finished(records) => records,
        Ending::Stopped { .. } if !root => return Ok(ExitCode::from(EXIT_REQUEUE)),
        Ending::Stopped {
            epoch,
            steps_into_epoch,
        } => {
            println!(
                "stopped at epoch {epoch}, step {steps_into_epoch}; checkpointed in {}; rerun with --resume auto to continue",
                run.dir.display()
            );
            return Ok(ExitCode::from(EXIT_REQUEUE));
        }
    };
    let test = run.test()?;
    if !root {
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:>5} {:>11} {:>9} {:>13} {:>10} {:>8}",
        "epoch", "train loss", "val loss", "val F1 sample", "F1 micro", "img/s"
    );
    for r in &records {
        println!(
            "{:>5} {:>11.4} {:>9.4} {:>13.4} {:>10.4} {:>8.0}",
            r.epoch, r.train_loss, r.val_loss, r.val.samples.f1, r.val.micro.f1, r.images_per_s
        );
    }
    let m = &test.metrics;
    println!(
        "test (weights of epoch {}): F1 micro {:.4}, macro {:.4}, sample {:.4}; precision sample {:.4}, recall sample {:.4}",
        test.best_epoch,
        m.micro.f1,
        m.macro_avg.f1,
        m.samples.f1,
        m.samples.precision,
        m.samples.recall
    );
    println!("results in {}", run.dir.display());
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let dist = match Dist::init() {
        Ok(d) => d,
        Err(e) => return logging::exit_code(Err(e)),
    };
    logging::init(cli.log_format, if dist.is_root() { "info" } else { "warn" });
    logging::exit_code(run(cli, dist))
}
