//! One attempt of `trainer train`, from set-up to test: the run set up ([`crate::run`]), its
//! remaining epochs trained ([`crate::train`]), the test ([`crate::final_test`]), a summary
//! printed on rank 0, and the attempt's end recorded in `run.json` whatever happened, a
//! libtorch panic included (as a typed [`crate::failure::Internal`]).

use anyhow::Result;

use crate::dist::Dist;
use crate::run::Run;
use crate::stop::Stop;
use crate::train::Ending;
use lossbench_core::config::Config;
use lossbench_core::ranking::Ranking;
use lossbench_core::records::{EpochRecord, TestOutcome};
use lossbench_core::run_info::Status;

/// Sets the run up, trains and tests it, and records the attempt's start, end and reason in
/// `run.json` (rank 0; a failure while setting up is recorded by [`Run::open`]).
pub fn run(config: Config, resume: bool, dist: Dist, stop: &Stop) -> Result<Outcome> {
    let mut run = Run::open(config, resume, dist)?;
    // A libtorch error outside the places that catch their own is still this run's failure.
    let outcome =
        crate::failure::catch(|| train_and_test(&mut run, stop)).unwrap_or_else(|caught| {
            Err(caught.internal(&run.dir.display().to_string(), "training or testing"))
        });
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
            outcome
        }
    }
}

/// How an attempt ended, short of failing.
pub enum Outcome {
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
        device = crate::device::name(run.net.device), "training"
    );
    let ending = crate::train::train(run, stop)?;
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
    let Some(test) = crate::final_test::test(run, stop)? else {
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
