//! A worker of a study (`tune run`): until the study has ended, it takes the study's lock, asks
//! [`crate::plan`] for the next work, writes what the plan changed, lets the lock go and does
//! the work: a trial trained up to its next rung, or a final run trained and tested, each by the
//! trainer as an ordinary run (`trainer train --resume auto`), so a killed worker's trial is
//! resumed from its checkpoint by whichever worker takes it next. A worker holds a lock of its
//! own (`<study>/workers/`) while it lives: the others tell by it whether its trial is still
//! being trained. SIGTERM or SIGUSR1 (a time limit, a preemption) are passed to the trainer,
//! which checkpoints; the worker then leaves its trial to the others and exits 75.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use lossbench_core::config::keys;
use lossbench_core::lock::{self, Lock, Mode};
use lossbench_core::records::{self, EpochRecord};
use lossbench_core::trial::{Report, Trial, TrialStatus};

use crate::plan::{self, Trials, Work, World};
use crate::study::Study;

/// The trainer's exit codes the worker tells apart (docs/training.md).
const EXIT_BUSY: i32 = 73;
const EXIT_REQUEUE: i32 = 75;

/// What a worker did.
#[derive(Debug, Default)]
pub struct Summary {
    pub trial_rungs: usize,
    pub final_runs: usize,
    /// Why it stopped before the study ended, its work left to the others.
    pub stopped: Option<Stopped>,
}

/// Why a worker stopped before the study ended; it exits 75 either way (docs/tuning.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// SIGTERM or SIGUSR1 to the worker, passed on to its trainer.
    Signal,
    /// The trainer stopped to be resumed without a signal to the worker: a full disk or quota
    /// (its run.json says which); another worker would meet the same.
    Trainer,
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stopped::Signal => "stopped by a signal",
            Stopped::Trainer => {
                "its trainer stopped to be resumed without a signal (a full disk or quota: its run.json says which)"
            }
        })
    }
}

/// A final run's id and job name.
pub fn final_id(loss: &str, tuned: bool, seed: u64) -> (String, String) {
    let kind = if tuned { "tuned" } else { "default" };
    (
        format!("{loss}-{kind}-seed{seed}"),
        format!("{loss}-{kind}"),
    )
}

/// Every trial of the study, by loss and index.
pub fn read_trials(study: &Study) -> Result<Trials> {
    let mut trials = Trials::new();
    let dir = study.trials_dir();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(trials);
    };
    for entry in entries.flatten() {
        if let Some(t) = Trial::read(&entry.path())? {
            trials.entry(t.loss.clone()).or_default().push(t);
        }
    }
    for ts in trials.values_mut() {
        ts.sort_by_key(|t| t.index);
        if let Some(gap) = ts.iter().enumerate().find(|(i, t)| t.index != *i as u32) {
            bail!(
                "{}: trial {} of {} is missing (trial {} is there): a trial folder was removed",
                dir.display(),
                gap.0,
                gap.1.loss,
                gap.1.index
            );
        }
    }
    Ok(trials)
}

/// Whether a live writer holds the lock file `path`.
fn held(path: &Path) -> bool {
    lock::inspect(path)
        .ok()
        .flatten()
        .is_some_and(|h| h.held_by_writer())
}

/// The study on disk, as the plan sees it.
struct Disk<'a> {
    study: &'a Study,
}

impl World for Disk<'_> {
    fn trained(&self, t: &Trial) -> bool {
        let run = self
            .study
            .trials_dir()
            .join(Study::trial_id(&t.loss, t.index));
        t.worker.as_deref().is_some_and(|w| held(Path::new(w))) || held(&run.join(".lock"))
    }

    fn final_taken(&self, loss: &str, tuned: bool, seed: u64) -> bool {
        let run = self.study.final_dir().join(final_id(loss, tuned, seed).0);
        let failed = lossbench_core::run_info::read(&run)
            .ok()
            .flatten()
            .is_some_and(|i| i.status == lossbench_core::run_info::Status::Failed);
        run.join(records::TEST_FILE).is_file() || failed || held(&run.join(".lock"))
    }
}

/// Signals this worker got (SIGTERM, SIGUSR1), to pass on to its trainer.
struct Signals(Arc<AtomicUsize>);

impl Signals {
    fn install() -> Result<Signals> {
        let flag = Arc::new(AtomicUsize::new(0));
        for s in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGUSR1] {
            signal_hook::flag::register_usize(s, flag.clone(), s as usize)?;
        }
        Ok(Signals(flag))
    }

    fn got(&self) -> Option<i32> {
        match self.0.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s as i32),
        }
    }
}

/// Runs a worker until the study has ended (or a signal stops it).
pub fn run(study: &Study, trainer: &Path) -> Result<Summary> {
    study.claim_folder()?;
    let signals = Signals::install()?;
    let workers = study.section.out.join("workers");
    std::fs::create_dir_all(&workers).with_context(|| format!("creating {}", workers.display()))?;
    let me_path = workers.join(format!(
        "{}-{}",
        lossbench_core::host::host_name(),
        std::process::id()
    ));
    let _me: Lock = lock::try_lock(&me_path, Mode::Exclusive, "tune worker")?;
    let me = me_path.display().to_string();
    let mut summary = Summary::default();
    let mut pause = Duration::from_millis(200);
    loop {
        if signals.got().is_some() {
            summary.stopped = Some(Stopped::Signal);
            return Ok(summary);
        }
        let work = plan_next(study, &me)?;
        match work {
            Work::Trial { loss, index, until } => {
                pause = Duration::from_millis(200);
                summary.stopped = train_trial(study, trainer, &signals, (&loss, index, until))?;
                summary.trial_rungs += 1;
                if summary.stopped.is_some() {
                    return Ok(summary);
                }
            }
            Work::Final { loss, tuned, seed } => {
                pause = Duration::from_millis(200);
                let trials = read_trials(study)?;
                let params = match tuned {
                    true => plan::best(&trials[&loss])
                        .map(|t| t.params.clone())
                        .unwrap_or_default(),
                    false => Default::default(),
                };
                let (id, job) = final_id(&loss, tuned, seed);
                tracing::info!(run = %id, "final run");
                let args = RunArgs {
                    loss: &loss,
                    out: &study.final_dir(),
                    id: &id,
                    job: &job,
                    seed,
                    params: &params,
                    until: None,
                };
                let code = train(study, trainer, &signals, &args)?;
                summary.final_runs += 1;
                summary.stopped = stopped(&signals, code);
                if summary.stopped.is_some() {
                    return Ok(summary);
                }
                if code != 0 && code != EXIT_BUSY {
                    tracing::warn!(run = %id, code, "the final run failed: its run.json says why");
                }
            }
            Work::Wait => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(10));
            }
            Work::Done => return Ok(summary),
        }
    }
}

/// Takes the study's lock, asks the plan for this worker's next work and writes what it changed.
fn plan_next(study: &Study, me: &str) -> Result<Work> {
    let _lock = lock::lock_waiting(
        &study.section.out.join(".lock"),
        Mode::Exclusive,
        "tune plan",
        |_| {},
    )?;
    let mut trials = read_trials(study)?;
    let mut changed = Vec::new();
    let work = plan::next_work(study, &mut trials, &Disk { study }, me, &mut changed);
    for (loss, index) in changed {
        let t = &mut trials.get_mut(&loss).expect("a changed trial's loss")[index as usize];
        if t.worker.as_deref() == Some(me) {
            t.host = Some(lossbench_core::host::host_name());
            t.slurm_job = lossbench_core::host::slurm_job();
        }
        t.write(&study.trials_dir().join(Study::trial_id(&loss, index)))?;
    }
    Ok(work)
}

/// What the trainer is asked to train.
struct RunArgs<'a> {
    loss: &'a str,
    out: &'a Path,
    id: &'a str,
    job: &'a str,
    seed: u64,
    params: &'a std::collections::BTreeMap<String, toml::Value>,
    /// Stop after this epoch (a trial's rung); `None` trains and tests the run.
    until: Option<u32>,
}

/// Runs the trainer on one run and returns its exit code; a signal to this worker is passed on.
fn train(study: &Study, trainer: &Path, signals: &Signals, a: &RunArgs) -> Result<i32> {
    let set = |k: &str, v: &toml::Value| format!("{k}={v}");
    let mut cmd = Command::new(trainer);
    cmd.arg("train")
        .arg("--config")
        .arg(study.jobs.join(format!("{}.toml", a.loss)))
        .arg("--data")
        .arg(&study.section.data)
        .arg("--out")
        .arg(a.out)
        .args([
            "--run-id",
            a.id,
            "--seed",
            &a.seed.to_string(),
            "--resume",
            "auto",
        ])
        .args(["--epochs", &study.asha.max_epochs.to_string()])
        .args(["--set", &set(keys::JOB, &toml::Value::String(a.job.into()))]);
    for (k, v) in study.recipe.iter().chain(a.params.iter()) {
        cmd.args(["--set", &set(k, v)]);
    }
    if let Some(until) = a.until {
        // Successive halving is the trials' early stopping; the trainer's own would end a
        // trial before its rung and test it.
        cmd.args(["--stop-after-epoch", &until.to_string()])
            .args(["--set", &format!("{}=0", keys::PATIENCE)]);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting the trainer {}", trainer.display()))?;
    let mut passed = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if let (Some(sig), false) = (signals.got(), passed) {
            // SAFETY: kill with a signal number to a child this process started.
            unsafe { libc::kill(child.id() as i32, sig) };
            passed = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Ok(status.code().unwrap_or(1))
}

/// The study's metric in an epoch's record.
fn metric(study: &Study, r: &EpochRecord) -> Option<f64> {
    let ranking = r.val_ranking.as_ref();
    match study.section.metric.as_str() {
        "map_macro" => ranking.and_then(|k| k.map_macro),
        "map_micro" => ranking.and_then(|k| k.map_micro),
        "auc_macro" => ranking.and_then(|k| k.auc_macro),
        "f1_samples" => Some(r.val.samples.f1),
        "f1_micro" => Some(r.val.micro.f1),
        "f1_macro" => Some(r.val.macro_avg.f1),
        _ => None,
    }
}

/// Whether this worker stops after its trainer exited with `code` short of its goal (a trial
/// stopped before its rung, a final run before its test).
fn stopped(signals: &Signals, code: i32) -> Option<Stopped> {
    match (signals.got(), code) {
        (Some(_), _) => Some(Stopped::Signal),
        (None, EXIT_REQUEUE) => Some(Stopped::Trainer),
        (None, _) => None,
    }
}

/// Trains a trial up to epoch `until` and records its report (or its failure) under the
/// study's lock; whether this worker stops (the trial is then left to the others).
fn train_trial(
    study: &Study,
    trainer: &Path,
    signals: &Signals,
    (loss, index, until): (&str, u32, u32),
) -> Result<Option<Stopped>> {
    let id = Study::trial_id(loss, index);
    let run = study.trials_dir().join(&id);
    let params = Trial::read(&run)?
        .with_context(|| format!("{}: no trial.json", run.display()))?
        .params;
    tracing::info!(trial = %id, until, "training");
    let started = Instant::now();
    let args = RunArgs {
        loss,
        out: &study.trials_dir(),
        id: &id,
        job: loss,
        seed: study.section.seed,
        params: &params,
        until: Some(until),
    };
    let code = train(study, trainer, signals, &args)?;
    let seconds = started.elapsed().as_secs_f64();
    let _lock = lock::lock_waiting(
        &study.section.out.join(".lock"),
        Mode::Exclusive,
        "tune record",
        |_| {},
    )?;
    let mut t = Trial::read(&run)?.with_context(|| format!("{}: no trial.json", run.display()))?;
    t.seconds += seconds;
    let reached = records::read_epochs(&run.join(records::EPOCHS_FILE))?
        .records
        .into_iter()
        .map(|(r, _)| r)
        .find(|r| r.epoch == until);
    let reached_rung = reached.is_some();
    match (code, reached) {
        (EXIT_REQUEUE | 0, Some(r)) => {
            let value = metric(study, &r).unwrap_or(f64::NAN);
            t.reports.retain(|x| x.rung != t.rung);
            t.reports.push(Report {
                rung: t.rung,
                epoch: until,
                value,
            });
            t.status = TrialStatus::Paused;
            t.worker = None;
        }
        // Stopped before its rung (a signal), or another trainer has it: left to whoever
        // takes it next. So is a trainer that ended otherwise while this worker was being
        // stopped: a requeue or scancel signals every process of the job step, and the job's
        // teardown (SLURM's PMIx server going away under MPI) may end it with any code; its
        // newest checkpoint is intact and the next attempt resumes from it.
        (EXIT_REQUEUE | EXIT_BUSY, _) => t.worker = None,
        (_, None) if signals.got().is_some() => {
            tracing::info!(trial = %id, code, "the trainer ended while this worker stops");
            t.worker = None;
        }
        (code, _) => {
            let reason = lossbench_core::run_info::read(&run)
                .ok()
                .flatten()
                .and_then(|i| i.attempts.last().and_then(|a| a.reason.clone()))
                .unwrap_or_else(|| format!("the trainer exited with {code}"));
            tracing::warn!(trial = %id, %reason, "trial failed");
            t.status = TrialStatus::Failed;
            t.reason = Some(reason);
            t.worker = None;
        }
    }
    t.write(&run)?;
    Ok(match reached_rung {
        true => signals.got().map(|_| Stopped::Signal),
        false => stopped(signals, code),
    })
}

/// The trainer beside this binary, unless `TRAINER` names one.
pub fn trainer_path() -> PathBuf {
    std::env::var_os("TRAINER").map_or_else(
        || {
            std::env::current_exe()
                .ok()
                .and_then(|e| e.parent().map(|p| p.join("trainer")))
                .unwrap_or_else(|| PathBuf::from("trainer"))
        },
        PathBuf::from,
    )
}

/// Where the study stands, as text: per loss its trials by status, the epochs they trained, and
/// its best configuration so far.
pub fn show(study: &Study) -> Result<String> {
    use std::fmt::Write;
    let trials = read_trials(study)?;
    let mut out = String::new();
    for (loss, _) in &study.losses {
        let ts = trials.get(loss).map_or(&[][..], Vec::as_slice);
        let count = |s: TrialStatus| ts.iter().filter(|t| t.status == s).count();
        let epochs: u32 = ts
            .iter()
            .map(|t| t.reports.last().map_or(0, |r| r.epoch))
            .sum();
        let _ = write!(
            out,
            "{loss}: {} trial(s) of {} ({} complete, {} pruned, {} failed, {} running or paused), {epochs} epoch(s) trained",
            ts.len(),
            study.budget.trials,
            count(TrialStatus::Complete),
            count(TrialStatus::Pruned),
            count(TrialStatus::Failed),
            count(TrialStatus::Running) + count(TrialStatus::Paused)
        );
        match plan::best(ts) {
            Some(b) => {
                let r = b.reports.last().expect("the best has a report");
                let params: Vec<String> =
                    b.params.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                let _ = writeln!(
                    out,
                    "; best {} (validation {} {:.4} at epoch {}): {}",
                    Study::trial_id(loss, b.index),
                    study.section.metric,
                    r.value,
                    r.epoch,
                    params.join(", ")
                );
            }
            None => out.push('\n'),
        }
    }
    Ok(out)
}
