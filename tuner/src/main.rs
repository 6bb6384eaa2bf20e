//! `tune`: a fair loss comparison (docs/tuning.md). `tune run jobs/tune.toml` is one worker of
//! the study (start as many as there are GPUs: slurm/tune.sh starts an array of them); it tunes
//! every loss with the same budget by successive halving, then trains and tests each loss's best
//! configuration and its defaults over seeds. `tune show` prints where the study stands.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use lossbench_core::logging::{self, LogFormat};
use tuner::study::Study;

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t)]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Work on the study until it has ended: trials, then the final runs. Any number of
    /// workers at once, on any nodes, killed and restarted at will.
    Run {
        /// The study file, e.g. jobs/tune.toml.
        study: PathBuf,
    },
    /// Where the study stands: per loss its trials, best configuration and epochs spent.
    Show { study: PathBuf },
    /// Print the study's folder (for scripts: slurm/tune.sh).
    Out { study: PathBuf },
}

/// Exit code of a worker stopped before the study ended, its work left to the others.
const EXIT_REQUEUE: u8 = 75;

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run { study } => {
            let study = Study::load(&study)?;
            let s = tuner::worker::run(&study, &tuner::worker::trainer_path())?;
            let stopped = s.stopped.map(|why| format!("; {why}")).unwrap_or_default();
            println!(
                "worker done: {} trial rung(s), {} final run(s){stopped}",
                s.trial_rungs, s.final_runs
            );
            if s.stopped.is_some() {
                return Ok(ExitCode::from(EXIT_REQUEUE));
            }
        }
        Command::Show { study } => {
            let study = Study::load(&study)?;
            print!("{}", tuner::worker::show(&study)?);
        }
        Command::Out { study } => println!("{}", Study::load(&study)?.section.out.display()),
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format, "info");
    match run(cli) {
        // The study's own files on a full disk: nothing decided is lost (each is written
        // atomically), so the worker is resumed like one whose trainer ran out of space.
        Err(e) if lossbench_core::files::is_out_of_space(&e) => {
            eprintln!("error: {e:#}\nfree space, then start the worker again");
            ExitCode::from(EXIT_REQUEUE)
        }
        result => logging::exit_code(result),
    }
}
