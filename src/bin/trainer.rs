//! `trainer`: trains a network with one loss (docs/training.md), explains it (docs/lrp.md), and
//! reports and times what it runs on (docs/cluster.md, docs/benchmarks.md).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use lossbench::attempt::{self, Outcome};
use lossbench::dist::{self, Dist};
use lossbench::exit;
use lossbench::run::Run;
use lossbench::stop::Stop;
use lossbench_core::config::{self, DeviceChoice, Flag};
use lossbench_core::logging::{self, LogFormat};

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
    Explain(lossbench::explain::Request),
    /// Loss landscape around a run's checkpoints: 1D / 2D surfaces, interpolation, sharpness
    /// (docs/landscape.md).
    Landscape(lossbench::landscape::Request),
    /// Time the optimizer step on a run's data and print JSON (docs/benchmarks.md).
    Bench(BenchArgs),
    /// Print the libtorch, devices and memory this trainer sees, as JSON.
    Env,
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
    /// Stop after epoch N's checkpoint (exit 75), before the next epoch or the test: a tuning
    /// trial's rung (docs/tuning.md). `--resume auto` continues it.
    #[arg(long, value_name = "N")]
    stop_after_epoch: Option<u32>,
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
        let flags = [
            self.seed.map(Flag::Seed),
            self.data.clone().map(Flag::Data),
            self.out.clone().map(Flag::Out),
            self.epochs.map(Flag::Epochs),
            self.device.map(Flag::Device),
            self.run_id.clone().map(Flag::RunId),
        ];
        let mut o: config::Overrides = flags
            .into_iter()
            .flatten()
            .map(Flag::into_override)
            .collect();
        for item in &self.set {
            o.push(config::parse_override(item)?);
        }
        Ok(o)
    }

    fn load(&self) -> Result<config::Config> {
        Ok(config::load(&self.config, self.overrides()?)?)
    }
}

fn run(cli: Cli, dist: Dist, stop: Option<Stop>) -> Result<ExitCode> {
    match cli.command {
        Command::Explain(request) => {
            let (n, epoch) = lossbench::explain::explain(&request, &dist)?;
            println!(
                "{n} heatmap(s) of epoch {epoch} in {} (heatmaps.parquet and <patch>/<class>.png)",
                request.out.display()
            );
        }
        Command::Landscape(request) => {
            let o = lossbench::landscape::run(&request, &dist)?;
            // Every worker says what it did: how the blocks were shared shows in the job's log.
            let (task, tasks) = request.task;
            println!(
                "{}: {} block(s) in all; task {task}/{tasks} rank {}/{} computed {}, found {} of \
                 its share done",
                o.folder.display(),
                o.blocks,
                dist.rank,
                dist.world_size,
                o.computed,
                o.already_done
            );
        }
        Command::Env => {
            let env = lossbench::device::Environment::probe();
            println!("{}", serde_json::to_string_pretty(&env)?);
        }
        Command::Bench(a) => {
            let mut config = a.job.load()?;
            // A bench leaves no run behind: its run folder is temporary.
            let scratch = tempfile::tempdir()?;
            config.run.out = scratch.path().to_path_buf();
            let mut run = Run::open(config, false, dist)?;
            if let Some(path) = &a.save_batch {
                lossbench::bench::save_first_batch(&run, path)?;
            }
            let timing = lossbench::bench::time_steps(&mut run, a.warmup, a.steps)?;
            println!("{}", serde_json::to_string(&timing)?);
        }
        Command::Train(a) => return train(a, dist, stop.expect("installed for train")),
    }
    Ok(ExitCode::SUCCESS)
}

/// `trainer train`: one attempt ([`attempt::run`]); a stopped attempt exits for requeueing.
fn train(a: TrainArgs, dist: Dist, stop: Stop) -> Result<ExitCode> {
    let config = a.job.load()?;
    Ok(
        match attempt::run(config, a.resume == Resume::Auto, dist, &stop)? {
            Outcome::Stopped => ExitCode::from(exit::REQUEUE),
            Outcome::Finished { .. } => ExitCode::SUCCESS,
        },
    )
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    lossbench::failure::install_hook();
    // A trainer catches SIGTERM and SIGUSR1 from its first moment (MPI's start-up and the
    // run's set-up can take minutes): a signal then stops the run at its first step, with a
    // checkpoint, instead of killing one rank.
    let stop = match &cli.command {
        Command::Train(a) => match Stop::install(a.stop_after_steps, a.stop_after_epoch) {
            Ok(stop) => Some(stop),
            Err(e) => return logging::exit_code(Err(e)),
        },
        _ => None,
    };
    let dist = match Dist::init(exit::code) {
        Ok(d) => d,
        Err(e) => return logging::exit_code(Err(e)),
    };
    logging::init(cli.log_format, if dist.is_root() { "info" } else { "warn" });
    let world = dist.world_size;
    let result = lossbench::failure::catch(|| run(cli, dist, stop))
        .unwrap_or_else(|caught| Err(caught.internal("trainer", "outside a run")));
    match result {
        Ok(code) => {
            dist::finalize();
            code
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            let code = exit::code(&e);
            if lossbench_core::files::is_out_of_space(&e) {
                eprintln!(
                    "the disk or the quota is full: the newest checkpoint is intact; free space, \
                     then resume with --resume auto (exit {code})"
                );
            }
            // A failure the other ranks do not know of leaves them in a collective call until
            // the job's time limit: end them all now.
            if world > 1 && !dist::failure_agreed() {
                eprintln!(
                    "error: this rank failed alone: aborting every rank (MPI_Abort, exit {code})"
                );
                dist::abort(code);
            }
            dist::finalize();
            ExitCode::from(code)
        }
    }
}
