//! `trainer`: trains a network with one loss (docs/training.md), explains it (docs/lrp.md), and
//! reports and times what it runs on (docs/cluster.md, docs/benchmarks.md).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use lossbench::config::{self, DeviceChoice};
use lossbench::dist::{self, Dist};
use lossbench::exit;
use lossbench::run::Run;
use lossbench::stop::Stop;
use lossbench::train::Ending;
use lossbench_core::logging::{self, LogFormat};
use lossbench_core::ranking::Ranking;
use lossbench_core::records::{EpochRecord, TestOutcome};
use lossbench_core::run_info::Status;

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
        use config::Origin::Flag;
        let path = |p: &PathBuf| toml::Value::String(p.display().to_string());
        let mut o: config::Overrides = Vec::new();
        if let Some(v) = self.seed {
            o.push((
                "run.seed".into(),
                toml::Value::Integer(v as i64),
                Flag("--seed"),
            ));
        }
        if let Some(v) = &self.data {
            o.push(("run.data".into(), path(v), Flag("--data")));
        }
        if let Some(v) = &self.out {
            o.push(("run.out".into(), path(v), Flag("--out")));
        }
        if let Some(v) = self.epochs {
            o.push((
                "train.epochs".into(),
                toml::Value::Integer(v as i64),
                Flag("--epochs"),
            ));
        }
        if let Some(v) = self.device {
            o.push((
                "run.device".into(),
                toml::Value::try_from(v)?,
                Flag("--device"),
            ));
        }
        if let Some(v) = &self.run_id {
            o.push((
                "run.run_id".into(),
                toml::Value::String(v.clone()),
                Flag("--run-id"),
            ));
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

/// `trainer train`: sets the run up, trains and tests it, and records each attempt's start,
/// end and reason in `run.json` (rank 0; a failure while setting up is recorded by
/// [`Run::open`]).
fn train(a: TrainArgs, dist: Dist, stop: Stop) -> Result<ExitCode> {
    let config = a.job.load()?;
    let mut run = Run::open(config, a.resume == Resume::Auto, dist)?;
    // A libtorch error outside the places that catch their own is still this run's failure.
    let outcome = lossbench::failure::catch(|| train_and_test(&mut run, &stop))
        .unwrap_or_else(|caught| Err(anyhow::anyhow!("internal error: {}", caught.message())));
    let (status, reason) = match &outcome {
        Ok(Outcome::Stopped) => (Status::Stopped, Some(stop.reason())),
        Ok(Outcome::Finished { early_stop }) => (Status::Finished, early_stop.clone()),
        Err(e) => (Status::Failed, Some(format!("{e:#}"))),
    };
    let recorded = run.record_end(status, reason);
    match (outcome, recorded) {
        (Err(e), Err(w)) => {
            tracing::error!("recording the failure in run.json: {w:#}");
            Err(e)
        }
        (outcome, recorded) => {
            recorded?;
            Ok(match outcome? {
                Outcome::Stopped => ExitCode::from(exit::REQUEUE),
                Outcome::Finished { .. } => ExitCode::SUCCESS,
            })
        }
    }
}

/// How an attempt ended, short of failing.
enum Outcome {
    /// Trained and tested; why training stopped before its last epoch, if it did.
    Finished { early_stop: Option<String> },
    /// A stop was requested: checkpointed, to be resumed.
    Stopped,
}

/// Trains the remaining epochs, then tests; prints a summary on rank 0.
fn train_and_test(run: &mut Run, stop: &Stop) -> Result<Outcome> {
    let root = run.dist.is_root();
    tracing::info!(
        run = %run.dir.display(), loss = %run.loss, arch = run.net.model.arch().name(),
        from_epoch = run.progress.start_epoch, ranks = run.dist.world_size,
        device = lossbench::device::name(run.net.device), "training"
    );
    let ending = lossbench::train::train(run, stop)?;
    run.data.log_memory(run.dist.rank);
    let (records, early_stop) = match ending {
        Ending::Finished {
            records,
            early_stop,
        } => (records, early_stop),
        Ending::Stopped {
            epoch,
            steps_into_epoch,
        } => {
            if root {
                println!(
                    "stopped at epoch {epoch}, step {steps_into_epoch} ({}); checkpointed in {}; \
                     rerun with --resume auto to continue",
                    stop.reason(),
                    run.dir.display()
                );
            }
            return Ok(Outcome::Stopped);
        }
    };
    let Some(test) = lossbench::final_test::test(run, stop)? else {
        if root {
            println!(
                "stopped while testing ({}); rerun with --resume auto",
                stop.reason()
            );
        }
        return Ok(Outcome::Stopped);
    };
    if root {
        print_summary(run, &records, &test, early_stop.as_deref());
    }
    Ok(Outcome::Finished { early_stop })
}

fn print_summary(run: &Run, records: &[EpochRecord], test: &TestOutcome, early_stop: Option<&str>) {
    println!(
        "{:>5} {:>11} {:>9} {:>13} {:>10} {:>10} {:>8}",
        "epoch", "train loss", "val loss", "val F1 sample", "F1 micro", "mAP macro", "img/s"
    );
    let map = |r: Option<&Ranking>| r.and_then(|r| r.map_macro).unwrap_or(f64::NAN);
    for r in records {
        println!(
            "{:>5} {:>11.4} {:>9.4} {:>13.4} {:>10.4} {:>10.4} {:>8.0}",
            r.epoch,
            r.train_loss,
            r.val_loss,
            r.val.samples.f1,
            r.val.micro.f1,
            map(r.val_ranking.as_ref()),
            r.images_per_s
        );
    }
    if let Some(why) = early_stop {
        println!("{why}");
    }
    let m = &test.metrics;
    println!(
        "test (weights of epoch {}): mAP macro {:.4}; F1 micro {:.4}, macro {:.4}, sample {:.4}; \
         precision sample {:.4}, recall sample {:.4}",
        test.best_epoch,
        map(test.ranking.as_ref()),
        m.micro.f1,
        m.macro_avg.f1,
        m.samples.f1,
        m.samples.precision,
        m.samples.recall
    );
    if let Some(t) = &test.tuned {
        let m = &t.metrics;
        println!(
            "  with per-class thresholds tuned on validation: F1 micro {:.4}, macro {:.4}, \
             sample {:.4}",
            m.micro.f1, m.macro_avg.f1, m.samples.f1
        );
    }
    println!("results in {}", run.dir.display());
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
        .unwrap_or_else(|caught| Err(anyhow::anyhow!("internal error: {}", caught.message())));
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
