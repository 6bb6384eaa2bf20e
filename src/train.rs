//! The training loop, top to bottom: for each epoch, the optimizer steps over the training split
//! in its seeded order ([`crate::steps`], [`crate::step`]), the validation
//! ([`crate::eval`]), one record appended to `epochs.jsonl` (synced), an LRP snapshot
//! ([`crate::snapshot`]) and a checkpoint ([`crate::checkpoint`]).
//!
//! Randomness derives from (seed, epoch, step, micro-batch) only: the data order from
//! (seed, epoch), dropout from all four, so results do not depend on where a run stopped. A
//! stop request ([`crate::stop`]) checkpoints at the next step boundary; validation and the
//! snapshot of an epoch interrupted after its last step are left to the resumed attempt, which
//! records exactly what an undisturbed run records.

use std::fs;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::checkpoint;
use crate::eval::{Evaluation, Evaluator};
use crate::failure;
use crate::run::Run;
use crate::step::{At, Step};
use crate::steps::EpochPlan;
use crate::stop::Stop;
use crate::tensorboard::curves::Curves;
use lossbench_core::records::{self, EpochRecord, StepTimes};

/// How a call to [`train`] ended.
pub enum Ending {
    /// Every epoch is trained, or early stopping ended training (why, then).
    Finished {
        records: Vec<EpochRecord>,
        early_stop: Option<String>,
    },
    /// A stop was requested; training state is checkpointed.
    Stopped { epoch: u32, steps_into_epoch: u64 },
}

/// The training part of an epoch, over the steps this attempt trained.
struct Trained {
    /// Steps of the epoch done (all of them) and their summed loss (every patch's).
    steps: u64,
    loss_sum: f64,
    images_per_s: f64,
    times: StepTimes,
}

/// How one epoch's training ended.
enum EpochEnd {
    Done(Trained),
    Stopped { steps: u64, loss_sum: f64 },
}

/// Trains the remaining epochs, appending each record to `epochs.jsonl` and checkpointing
/// after it; stops early, with a checkpoint, when `stop` asks, and ends training when the
/// selection metric has not improved for `selection.patience` epochs.
pub fn train(run: &mut Run, stop: &Stop) -> Result<Ending> {
    let (mut file, mut curves) = open_outputs(run)?;
    let mut records = Vec::new();
    // A run that stopped early and was interrupted while testing resumes to its test; one
    // stopped after its rung epoch stays stopped.
    let last = run.progress.start_epoch - 1;
    if run.progress.skip_steps == 0 && last > 0 {
        match ends_after(run, stop, last, None) {
            Some(End::Early(why)) => {
                return Ok(Ending::Finished {
                    records,
                    early_stop: Some(why),
                });
            }
            Some(End::Stop) => {
                return Ok(Ending::Stopped {
                    epoch: last + 1,
                    steps_into_epoch: 0,
                });
            }
            None => {}
        }
    }
    let mut steps_taken = 0;
    for epoch in run.progress.start_epoch..=run.config.train.epochs {
        let started = Instant::now();
        if let Some(c) = curves.as_mut() {
            c.epoch_started();
        }
        let trained = train_epoch(run, epoch, stop, &mut steps_taken, curves.as_mut());
        let trained = match blame_a_replaced_store(run, trained)? {
            EpochEnd::Done(trained) => trained,
            EpochEnd::Stopped { steps, loss_sum } => {
                save_checkpoint(run, epoch - 1, steps, loss_sum, curves.as_mut())?;
                return Ok(Ending::Stopped {
                    epoch,
                    steps_into_epoch: steps,
                });
            }
        };
        let validated = blame_a_replaced_store(run, validate(run, epoch, stop, steps_taken))?;
        let Some(val) = validated else {
            save_checkpoint(
                run,
                epoch - 1,
                trained.steps,
                trained.loss_sum,
                curves.as_mut(),
            )?;
            return Ok(Ending::Stopped {
                epoch,
                steps_into_epoch: trained.steps,
            });
        };
        let record = epoch_record(run, epoch, &trained, &val, started.elapsed());
        finish_epoch(run, file.as_mut(), curves.as_mut(), &record)?;
        records.push(record);
        match ends_after(run, stop, epoch, Some(steps_taken)) {
            Some(End::Early(why)) => {
                tracing::info!("{why}");
                return Ok(Ending::Finished {
                    records,
                    early_stop: Some(why),
                });
            }
            Some(End::Stop) => {
                return Ok(Ending::Stopped {
                    epoch: epoch + 1,
                    steps_into_epoch: 0,
                });
            }
            None => {}
        }
    }
    Ok(Ending::Finished {
        records,
        early_stop: None,
    })
}

/// After validation: the record appended, the LRP snapshot, the best epoch, the checkpoint.
/// Rank 0 writes; every write's outcome is agreed, so that a failure there (a full disk, a lost
/// lock) ends every rank at once instead of leaving them in the next step's all-reduce.
fn finish_epoch(
    run: &mut Run,
    file: Option<&mut fs::File>,
    mut curves: Option<&mut Curves>,
    record: &EpochRecord,
) -> Result<()> {
    // Nothing of an epoch is recorded when the store changed under it, or when another trainer
    // took the run folder over.
    run.dist.agree(run.store.check_unchanged())?;
    run.check_lock()?;
    let appended = match file {
        Some(file) => append_record(run, file, record),
        None => Ok(()),
    };
    run.dist.agree(appended)?;
    log_epoch(record);
    let step = run.stepper.adam.step;
    if let Some(c) = curves.as_deref_mut() {
        c.epoch(step, record);
    }
    let (epoch, every) = (record.epoch, run.config.lrp.every);
    let snapshot = if run.dist.is_root() && every > 0 && epoch.is_multiple_of(every) {
        let (r, lrp) = (&*run, &run.config.lrp);
        r.probes
            .snapshot(&r.net, &r.loss, &r.data.loading.norm, lrp, &r.dir, epoch)
    } else {
        Ok(Vec::new())
    };
    let rows = run.dist.agree(snapshot)?;
    if let Some(c) = curves.as_deref_mut() {
        c.heatmaps(step, &rows);
    }
    let score = run.config.selection.metric.score(record);
    if score > run.progress.best_score {
        run.progress.best_score = score;
        run.progress.best_epoch = epoch;
    }
    save_checkpoint(run, epoch, 0, 0.0, curves)
}

/// Rank 0's records file and TensorBoard curves (agreed: every rank learns a failure).
fn open_outputs(run: &Run) -> Result<(Option<fs::File>, Option<Curves>)> {
    let opened = match run.dist.is_root() {
        true => open_records(run).map(Some),
        false => Ok(None),
    };
    let file = run.dist.agree(opened)?;
    let curves = match run.dist.is_root() {
        true => open_curves(run),
        false => Ok(None),
    };
    Ok((file, run.dist.agree(curves)?))
}

/// The run's TensorBoard curves from the step its checkpoint reached (rank 0).
fn open_curves(run: &Run) -> Result<Option<Curves>> {
    let path = run.dir.join(lossbench_core::run_folder::CONFIG_FILE);
    let config =
        fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let (every, start) = (run.config.tensorboard.every, run.stepper.adam.step);
    Curves::open(&run.dir, every, start, &config)
}

/// Why training ends after an epoch.
enum End {
    /// A stop: after a tuning trial's rung epoch (`--stop-after-epoch`, the last one too: no
    /// test), or asked by a signal.
    Stop,
    /// Early stopping, and why.
    Early(String),
}

/// Whether training ends after `epoch` (checkpointed). `steps_taken` is this attempt's steps,
/// `None` before its first epoch: a signal is asked about only after an epoch it trained (the
/// ranks agree, so that a signal that reached one rank after the epoch's last step does not let
/// the others start the next).
fn ends_after(run: &Run, stop: &Stop, epoch: u32, steps_taken: Option<u64>) -> Option<End> {
    if stop.after_epoch(epoch) {
        return Some(End::Stop);
    }
    if let Some(why) = early_stop(run, epoch) {
        return Some(End::Early(why));
    }
    let more = epoch < run.config.train.epochs;
    let asked = steps_taken.is_some_and(|n| run.dist.any(stop.requested(n)) && more);
    asked.then_some(End::Stop)
}

/// Why training ends after `epoch`: the selection metric has not improved for
/// `selection.patience` epochs (the best epoch's checkpoint is kept and tested).
fn early_stop(run: &Run, epoch: u32) -> Option<String> {
    let s = run.config.selection;
    let since = epoch - run.progress.best_epoch;
    (s.patience > 0 && since >= s.patience && epoch < run.config.train.epochs).then(|| {
        format!(
            "early stopping after epoch {epoch}: validation {} has not improved for {since} \
             epoch(s) since epoch {} (selection.patience = {})",
            s.metric.name(),
            run.progress.best_epoch,
            s.patience
        )
    })
}

/// A failure while the store was replaced under the run (reading patches of another split
/// size, say) is reported as the replacement, its cause.
fn blame_a_replaced_store<T>(run: &Run, result: Result<T>) -> Result<T> {
    if result.is_err() {
        run.store.check_unchanged()?;
    }
    result
}

/// Trains one epoch (from step `skip_steps` on, after a mid-epoch stop).
fn train_epoch(
    run: &mut Run,
    epoch: u32,
    stop: &Stop,
    steps_taken: &mut u64,
    mut curves: Option<&mut Curves>,
) -> Result<EpochEnd> {
    let plan = epoch_plan(run, epoch);
    let skip = std::mem::take(&mut run.progress.skip_steps) as usize;
    let mut loss_sum = std::mem::take(&mut run.progress.partial_loss_sum);
    let trained: usize = plan.steps[skip..].iter().flatten().map(Vec::len).sum();
    let mut batches = run
        .data
        .train
        .batches(plan.my_batches(skip), &run.data.loading)?;
    let total = (plan.steps.len() - skip) as u64;
    let what = format!("epoch {epoch} steps");
    let progress = lossbench_core::progress::bar_if(run.dist.is_root(), total, &what);
    let started = Instant::now();
    let mut allreduce = Duration::ZERO;
    for (s, micro) in plan.steps.iter().enumerate().skip(skip) {
        let wants_stop = stop.requested(*steps_taken + 1);
        let at = At {
            seed: run.config.run.seed,
            epoch,
            index: s,
        };
        let step = Step {
            at,
            micro,
            mine: plan.mine(micro),
        };
        let r = &mut *run;
        let done = r
            .stepper
            .step(&r.net, &r.loss, &r.dist, step, &mut batches, wants_stop);
        let done = done.map_err(|f| f.agreed(&run.dist, &step_context(run, epoch, s, micro)))?;
        run.dist.together(check_finite(epoch, s, done.loss_sum))?;
        allreduce += done.allreduce;
        loss_sum += done.loss_sum;
        *steps_taken += 1;
        log_step(
            run,
            epoch,
            s,
            &done,
            curves.as_deref_mut(),
            batches.waited(),
        );
        progress.inc(1);
        // Every rank sees the same flag: a signal delivered to one rank stops them all, after
        // the epoch's last step too (its validation is then the resumed attempt's).
        if done.stop {
            return Ok(EpochEnd::Stopped {
                steps: s as u64 + 1,
                loss_sum,
            });
        }
    }
    progress.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let (data_wait_s, allreduce_s) = (batches.waited().as_secs_f64(), allreduce.as_secs_f64());
    let compute_s = (seconds - data_wait_s - allreduce_s).max(0.0);
    Ok(EpochEnd::Done(Trained {
        steps: plan.steps.len() as u64,
        loss_sum,
        images_per_s: if seconds > 0.0 {
            trained as f64 / seconds
        } else {
            0.0
        },
        times: StepTimes {
            compute_s,
            allreduce_s,
            data_wait_s,
        },
    }))
}

/// A step's summed loss must be finite; it is every rank's, so all of them stop here together.
fn check_finite(epoch: u32, index: usize, loss_sum: f64) -> Result<()> {
    if !loss_sum.is_finite() {
        bail!(
            "epoch {epoch}, step {}: the training loss is {loss_sum} (training diverged); nothing \
             of this epoch is checkpointed, a smaller train.lr may help",
            index + 1
        );
    }
    Ok(())
}

/// The steps of `epoch` and this rank's share of them.
fn epoch_plan(run: &Run, epoch: u32) -> EpochPlan {
    let t = &run.config.train;
    let len = run.data.train.split().len;
    let ranks = (run.dist.rank, run.dist.world_size);
    EpochPlan::new(
        len,
        run.config.run.seed,
        epoch,
        t.batch_size,
        ranks,
        t.accumulate,
    )
}

/// The step in the log, and in the TensorBoard curves; `waited` is the epoch's data wait so far.
fn log_step(
    run: &Run,
    epoch: u32,
    index: usize,
    done: &crate::step::StepDone,
    curves: Option<&mut Curves>,
    waited: Duration,
) {
    let adam = &run.stepper.adam;
    if adam.step == 1 {
        // The benchmark times launch → this line (docs/benchmarks.md).
        tracing::info!("first optimizer step done");
    }
    let loss = done.loss_sum / done.patches as f64;
    tracing::debug!(epoch, step = index + 1, loss, "step done");
    if let Some(c) = curves {
        c.step(adam.step, loss, adam.lr, done.patches, waited);
    }
}

/// What a step was doing, for the message of a libtorch error caught in it.
fn step_context(run: &Run, epoch: u32, index: usize, micro: &[Vec<usize>]) -> failure::Context {
    let t = &run.config.train;
    let largest = micro.iter().map(Vec::len).max().unwrap_or(0);
    failure::Context {
        run: run.dir.display().to_string(),
        doing: format!("in epoch {epoch}, step {}", index + 1),
        batch: format!(
            "batch {} in micro-batches of up to {largest} patches: {} rank(s) × train.accumulate = {}",
            t.batch_size, run.dist.world_size, t.accumulate
        ),
        device: run.net.device,
        advice: format!(
            "Raise train.accumulate (to {} halves the micro-batches; a resume may change it only with \
             the number of ranks, keeping their product), or with data.resident = \"device\" use \
             \"host\" to free the GPU memory the data takes.",
            t.accumulate * 2
        ),
    }
}

/// The validation split evaluated with the current weights; `None` when a stop was requested
/// during it.
fn validate(run: &Run, epoch: u32, stop: &Stop, steps_taken: u64) -> Result<Option<Evaluation>> {
    let evaluator = evaluator(run, format!("validating after epoch {epoch}"));
    let Some(val) = evaluator.evaluate(&run.data.val, false, &|| stop.requested(steps_taken))?
    else {
        return Ok(None);
    };
    let finite = match val.loss.is_finite() {
        true => Ok(Some(val)),
        false => Err(anyhow!(
            "epoch {epoch}: the validation loss is {} (weights or BatchNorm statistics are not \
             finite); the epoch is not checkpointed",
            val.loss
        )),
    };
    // The loss is summed over the ranks: every rank fails here alike.
    run.dist.together(finite)
}

/// An evaluator of the run's network, forward passes of one micro-batch's size.
pub fn evaluator(run: &Run, doing: String) -> Evaluator<'_> {
    let t = &run.config.train;
    let batch = (t.batch_size / (run.dist.world_size * t.accumulate)).max(1);
    Evaluator {
        net: &run.net,
        loss: &run.loss,
        dist: &run.dist,
        loading: &run.data.loading,
        batch,
        context: failure::Context {
            run: run.dir.display().to_string(),
            doing,
            batch: format!("forward passes of {batch} patches"),
            device: run.net.device,
            advice:
                "Raise train.accumulate (with the number of ranks, keeping their product, on a \
                     resume): evaluation batches are one micro-batch."
                    .into(),
        },
    }
}

fn epoch_record(
    run: &Run,
    epoch: u32,
    t: &Trained,
    val: &Evaluation,
    wall: Duration,
) -> EpochRecord {
    let time = t.times;
    let busy = time.compute_s + time.allreduce_s + time.data_wait_s;
    let started = Instant::now();
    let ranking = val.ranking(run.data.val.split());
    // Their cost per epoch is a benchmark's (docs/benchmarks.md, "Ranking metrics").
    tracing::debug!(
        epoch,
        seconds = started.elapsed().as_secs_f64(),
        "ranking metrics computed"
    );
    EpochRecord {
        epoch,
        train_loss: t.loss_sum / run.data.train.split().len as f64,
        val_loss: val.loss,
        lr: run.stepper.adam.lr,
        wall_s: wall.as_secs_f64(),
        images_per_s: t.images_per_s,
        data_wait_fraction: if busy > 0.0 {
            time.data_wait_s / busy
        } else {
            0.0
        },
        time,
        val: val.counts.metrics(),
        val_ranking: Some(ranking),
    }
}

fn append_record(run: &Run, file: &mut fs::File, record: &EpochRecord) -> Result<()> {
    let path = run.dir.join(records::EPOCHS_FILE);
    writeln!(file, "{}", serde_json::to_string(record)?)
        .and_then(|()| file.flush())
        .and_then(|()| file.sync_data())
        .with_context(|| format!("appending to {}", path.display()))
}

fn log_epoch(record: &EpochRecord) {
    tracing::info!(
        epoch = record.epoch,
        train_loss = format!("{:.4}", record.train_loss),
        val_loss = format!("{:.4}", record.val_loss),
        val_f1_samples = format!("{:.4}", record.val.samples.f1),
        images_per_s = format!("{:.0}", record.images_per_s),
        "epoch done"
    );
}

/// Rank 0 writes the checkpoint; every rank learns its outcome (and so waits for it, so any
/// may read it next).
fn save_checkpoint(
    run: &Run,
    epoch: u32,
    steps_into_next: u64,
    partial_loss_sum: f64,
    curves: Option<&mut Curves>,
) -> Result<()> {
    run.check_lock()?;
    if !run.dist.is_root() {
        return run.dist.agree(Ok(()));
    }
    let p = &run.progress;
    let state = checkpoint::State {
        epoch,
        steps_into_next,
        partial_loss_sum,
        optimizer_step: run.stepper.adam.step,
        best_epoch: p.best_epoch,
        best_score: p.best_score,
        crc32: [0, 0],
        bytes: None,
        fingerprint: Some(run.fingerprint.clone()),
    };
    if let Some(c) = curves {
        c.checkpoint();
    }
    let (model, optimizer) = (run.net.named_variables(), run.stepper.adam.state());
    let saved = checkpoint::save(
        &run.dir,
        &model,
        &optimizer,
        state,
        run.config.checkpoint.keep_last,
    );
    run.dist.agree(saved)
}

/// Records of epochs before `start_epoch` survive a resume; later ones (an epoch recorded but
/// killed before its checkpoint) are dropped, since that epoch is trained again. Lines that do
/// not parse are kept aside in `epochs.rejected.jsonl` with a warning naming them, never
/// dropped silently; a records file that cannot be read stops the run.
fn open_records(run: &Run) -> Result<fs::File> {
    let path = run.dir.join(records::EPOCHS_FILE);
    let read = records::read_epochs(&path)?;
    if !read.skipped_lines.is_empty() {
        let aside = run.dir.join(records::REJECTED_FILE);
        records::keep_aside(&path, &read.skipped_lines, &aside)?;
        tracing::warn!(
            file = %path.display(),
            lines = ?read.skipped_lines,
            kept_in = %aside.display(),
            "record lines that do not parse (torn by a crash, or edited) are kept aside"
        );
    }
    let kept: String = read
        .records
        .into_iter()
        .filter(|(r, _)| r.epoch < run.progress.start_epoch)
        .map(|(_, line)| format!("{line}\n"))
        .collect();
    lossbench_core::files::write_atomically(&path, kept.as_bytes())?;
    fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))
}
