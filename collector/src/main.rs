//! `collector`: merges run folders into Parquet tables and renders the comparison report
//! (docs/results.md).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use collector::{compare, merge, report};
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

#[derive(Subcommand)]
enum Command {
    /// Merge run folders into results/<table>/*.parquet; only what changed is rewritten.
    Merge {
        /// Run folders, or folders holding run folders. Repeatable.
        #[arg(long, required = true, num_args = 1..)]
        runs: Vec<PathBuf>,
        /// The results folder.
        #[arg(long, default_value = "results")]
        out: PathBuf,
    },
    /// Render report/index.html from merged tables.
    Report {
        /// The results folder written by `collector merge`.
        #[arg(long, default_value = "results")]
        results: PathBuf,
        #[arg(long, default_value = "report")]
        out: PathBuf,
        /// Validation F1 (sample average) whose first epoch per loss the report lists.
        #[arg(long, default_value_t = 0.55)]
        f1_threshold: f64,
        /// Patch of the LRP grid (default: a probe patch every loss has snapshots of).
        #[arg(long)]
        lrp_patch: Option<String>,
        /// Class of the LRP grid (default: a true class of the patch).
        #[arg(long)]
        lrp_class: Option<String>,
        /// Epochs (rows) of the LRP grid at most, spread over the run.
        #[arg(long, default_value_t = 6)]
        lrp_epochs: usize,
        /// Bootstrap resamples of the comparison matrix.
        #[arg(long, default_value_t = 1000)]
        resamples: usize,
    },
    /// Is job A better than job B beyond the noise? Test metrics over seeds and the paired
    /// bootstrap of their differences over the test patches (docs/results.md).
    Compare {
        /// Job A: a job name (`run.job`), or JOB@HASH for one of its configurations.
        #[arg(long)]
        a: String,
        /// Job B.
        #[arg(long)]
        b: String,
        /// The results folder written by `collector merge`.
        #[arg(long, default_value = "results")]
        results: PathBuf,
        /// Bootstrap resamples.
        #[arg(long, default_value_t = collector::compare::DEFAULT_RESAMPLES)]
        resamples: usize,
        /// Seed of the resampling.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// A sweep on one screen: one line per run (state, epoch, metrics, speed, time left, SLURM
    /// job and node, why a run failed), totals at the bottom (docs/cluster.md).
    Status {
        /// Run folders, or folders holding run folders (a sweep's OUT). Repeatable.
        #[arg(required = true, num_args = 1..)]
        runs: Vec<PathBuf>,
        /// Redraw every SECONDS until interrupted.
        #[arg(long, value_name = "SECONDS")]
        watch: Option<f64>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Who holds the lock of a run folder, a results folder or a store (docs/reliability.md):
    /// prints the live holder; exit 0 when a live writer holds it, 3 when only live readers do,
    /// 1 when it is free, 2 when it cannot be told. For scripts (slurm/sweep.sh).
    Holder {
        /// A run folder, a results folder (their `.lock`), or a store (`<store>.lock`).
        path: PathBuf,
    },
}

/// `collector holder`'s exit codes.
const HELD_BY_WRITER: u8 = 0;
const FREE: u8 = 1;
const HELD_BY_READERS: u8 = 3;

const UNKNOWN: u8 = 2;

fn holder(path: &std::path::Path) -> ExitCode {
    let lock = if path.join("zarr.json").is_file() {
        lossbench_core::store::lock_path(path)
    } else {
        path.join(".lock")
    };
    let code = match lossbench_core::lock::inspect(&lock) {
        Err(e) => {
            eprintln!("error: cannot tell who holds {}: {e}", lock.display());
            UNKNOWN
        }
        Ok(None) => FREE,
        Ok(Some(held)) => {
            println!("{held}");
            if held.held_by_writer() {
                HELD_BY_WRITER
            } else {
                HELD_BY_READERS
            }
        }
    };
    ExitCode::from(code)
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Merge { runs, out } => {
            let s = merge::merge(&runs, &out)?;
            println!(
                "merged {} run(s) into {}: {} file(s) written, {} unchanged, {} of runs that are \
                 gone removed, {} torn record line(s) skipped",
                s.runs,
                out.display(),
                s.written,
                s.unchanged,
                s.removed,
                s.skipped_lines
            );
        }
        Command::Report {
            results,
            out,
            f1_threshold,
            lrp_patch,
            lrp_class,
            lrp_epochs,
            resamples,
        } => {
            let options = report::Options {
                f1_threshold,
                lrp_patch,
                lrp_class,
                lrp_epochs,
                resamples,
            };
            let path = report::render(&results, &out, &options)?;
            println!("report: {}", path.display());
        }
        Command::Compare {
            a,
            b,
            results,
            resamples,
            seed,
            json,
        } => {
            let c = compare::compare(&results, &a, &b, resamples, seed)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&c)?);
            } else {
                print!("{}", c.text());
            }
        }
        Command::Holder { path } => return Ok(holder(&path)),
        Command::Status { runs, watch, json } => loop {
            let board = collector::status::board(&runs)?;
            let text = match json {
                true => serde_json::to_string_pretty(&board)? + "\n",
                false => board.text(),
            };
            match watch {
                // Clear the screen and draw it again.
                Some(seconds) => {
                    print!("\x1b[2J\x1b[H{text}");
                    std::thread::sleep(std::time::Duration::from_secs_f64(seconds.max(0.5)));
                }
                None => {
                    print!("{text}");
                    break;
                }
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format, "info");
    logging::exit_code(run(cli))
}
