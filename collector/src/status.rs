//! `collector status RUNS`: a sweep on one screen (docs/cluster.md, "Watching a sweep"), one
//! line per run: its state, epoch k of N, last and best validation metrics, speed, time per
//! epoch, time left, SLURM job and node, and for a failed run why and which log to read; totals
//! at the bottom. States come from the run folders (`run.json`, the folder's lock, the records,
//! the test result) and the sweep's plan files (`OUT/.sweep/`); where `squeue` answers, from
//! SLURM too (queued, requeued, held). Nothing is needed but the run folders.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;
use serde::Serialize;

use crate::merge::folder::{self, Run};
use lossbench_core::records::EpochRecord;
use lossbench_core::run_info::Status;

/// A run's state on the board.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Running,
    Requeued,
    Held,
    Queued,
    Planned,
    /// Stopped by a signal (a `scancel`), checkpointed, not coming back by itself.
    Stopped,
    Failed,
    /// A tuning trial stopped early by successive halving (docs/tuning.md).
    Pruned,
    Finished,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Requeued => "requeued",
            State::Held => "held",
            State::Queued => "queued",
            State::Planned => "planned",
            State::Stopped => "stopped",
            State::Failed => "failed",
            State::Pruned => "pruned",
            State::Finished => "finished",
        }
    }
}

/// One line of the board.
#[derive(Debug, Clone, Serialize)]
pub struct Line {
    pub run_id: String,
    pub job: String,
    pub loss: String,
    pub arch: String,
    pub seed: Option<u64>,
    pub state: State,
    pub epoch: u32,
    pub epochs: u64,
    pub val_f1_samples: Option<f64>,
    pub val_map_macro: Option<f64>,
    pub best_map_macro: Option<f64>,
    pub images_per_s: Option<f64>,
    /// Mean seconds per epoch so far.
    pub epoch_s: Option<f64>,
    /// Seconds until the run is done at its pace so far.
    pub eta_s: Option<f64>,
    pub slurm_job: Option<String>,
    pub node: Option<String>,
    /// Why a failed, stopped or held run is so.
    pub reason: Option<String>,
    /// The log to read (the sweep's `OUT/logs/<job>_<task>.out`), when it exists.
    pub log: Option<String>,
    /// Ranks × hours of its attempts so far (GPU-hours on GPUs).
    pub device_hours: f64,
    /// Ranks × hours still to go at its pace so far.
    pub device_hours_left: f64,
}

/// The board: its lines and totals.
#[derive(Debug, Clone, Serialize)]
pub struct Board {
    pub lines: Vec<Line>,
    /// Runs per state.
    pub states: BTreeMap<String, usize>,
    pub device_hours: f64,
    pub device_hours_left: f64,
    /// Seconds until every run is done, if the running ones keep their pace and the rest run
    /// as many at once as run now.
    pub eta_s: Option<f64>,
}

/// What SLURM says of a job: its state, the reason it waits, the node it runs on.
struct Slurm {
    jobs: BTreeMap<String, (String, String, String)>,
}

impl Slurm {
    /// Every job `squeue` knows (none where it cannot be run).
    fn ask() -> Slurm {
        let out = Command::new("squeue")
            .args(["-h", "-t", "all", "-o", "%i|%T|%r|%N"])
            .stderr(Stdio::null())
            .output();
        let mut jobs = BTreeMap::new();
        if let Ok(out) = out
            && out.status.success()
        {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let f: Vec<&str> = line.split('|').collect();
                if let [id, state, reason, node] = f[..] {
                    jobs.insert(id.to_string(), (state.into(), reason.into(), node.into()));
                }
            }
        }
        Slurm { jobs }
    }

    fn state(&self, job: &str) -> Option<&(String, String, String)> {
        self.jobs.get(job)
    }

    /// The file a job writes its output to (`scontrol show job`'s `StdOut`), if it exists.
    fn log_of(job: &str) -> Option<String> {
        let out = Command::new("scontrol")
            .args(["show", "job", job])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let path = text
            .split_whitespace()
            .find_map(|f| f.strip_prefix("StdOut="))?
            .to_string();
        Path::new(&path).is_file().then_some(path)
    }
}

/// The log of a run's SLURM job: the sweep's `<root>/logs/<job>_<task>.out`, else where SLURM
/// says the job writes.
fn log_of(job: &str, logs: &Path) -> Option<String> {
    let sweep = logs.join(format!("{job}.out"));
    match sweep.is_file() {
        true => Some(sweep.display().to_string()),
        false => Slurm::log_of(job),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The state of a run that has a folder, with its reason.
fn state_of(r: &Run, held: bool, slurm: &Slurm) -> (State, Option<String>) {
    if r.test.is_some() {
        return (State::Finished, None);
    }
    let last = r.attempts().last();
    let queued = last
        .and_then(|a| a.slurm_job.as_deref())
        .and_then(|j| slurm.state(j))
        .filter(|(s, _, _)| s == "PENDING");
    if let Some((_, reason, _)) = queued {
        let state = match reason.to_lowercase().contains("held") {
            true => State::Held,
            false => State::Requeued,
        };
        return (
            state,
            last.and_then(|a| a.reason.clone()).or(Some(reason.clone())),
        );
    }
    let reason = last.and_then(|a| a.reason.clone());
    match r.info.as_ref().map(|i| i.status) {
        _ if held => (State::Running, None),
        Some(Status::Running) => (
            State::Failed,
            Some("killed: ended without recording its end (SIGKILL, a lost node)".into()),
        ),
        Some(Status::Stopped) => (State::Stopped, reason),
        Some(Status::Failed | Status::Killed) => (State::Failed, reason),
        Some(Status::Finished) => (State::Finished, None),
        None => (State::Planned, None),
    }
}

/// The board line of a run folder.
fn line_of(r: &Run, slurm: &Slurm, logs: &Path) -> Line {
    let held = lossbench_core::lock::inspect(&r.dir.join(".lock"))
        .ok()
        .flatten()
        .is_some_and(|h| h.held_by_writer());
    let (state, reason) = state_of(r, held, slurm);
    let last: Option<&EpochRecord> = r.records.last();
    let map = |e: &EpochRecord| e.val_ranking.as_ref().and_then(|k| k.map_macro);
    let epoch_s = (!r.records.is_empty())
        .then(|| r.records.iter().map(|e| e.wall_s).sum::<f64>() / r.records.len() as f64);
    let epoch = last.map_or(0, |e| e.epoch);
    let left_epochs = r.planned_epochs.saturating_sub(u64::from(epoch)) as f64;
    let unfinished = !matches!(state, State::Finished | State::Failed | State::Pruned);
    let eta_s = epoch_s.filter(|_| unfinished).map(|s| s * left_epochs);
    let attempts = r.attempts();
    let ranks = attempts.last().map_or(1, |a| a.world_size) as f64;
    let device_hours = attempts
        .iter()
        .map(|a| {
            let end = a.ended_unix_ms.unwrap_or_else(now_ms);
            a.world_size as f64 * (end - a.started_unix_ms).max(0) as f64 / 3.6e6
        })
        .sum();
    let slurm_job = attempts.last().and_then(|a| a.slurm_job.clone());
    // Only runs that need reading about are looked up (one scontrol call each).
    let log = match state {
        State::Failed | State::Held | State::Stopped | State::Requeued => {
            slurm_job.as_deref().and_then(|j| log_of(j, logs))
        }
        _ => None,
    };
    Line {
        run_id: r.run_id.clone(),
        job: r.job.clone(),
        loss: r.loss.clone(),
        arch: r.arch.clone(),
        seed: Some(r.seed),
        state,
        epoch,
        epochs: r.planned_epochs,
        val_f1_samples: last.map(|e| e.val.samples.f1),
        val_map_macro: last.and_then(map),
        best_map_macro: r.records.iter().filter_map(map).reduce(f64::max),
        images_per_s: last.map(|e| e.images_per_s),
        epoch_s,
        eta_s,
        node: attempts.last().map(|a| a.host.clone()),
        slurm_job,
        reason,
        log,
        device_hours,
        device_hours_left: eta_s.map_or(0.0, |s| ranks * s / 3600.0),
    }
}

/// Runs a sweep planned but that have no folder yet: (run id, loss, arch, seed, array task).
fn planned(runs: &Path) -> Vec<(String, String, String, u64, Option<String>)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(runs.join(".sweep")) else {
        return out;
    };
    let mut plans: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    plans.sort();
    for plan in plans {
        let array = std::fs::read_to_string(plan.with_extension("array"))
            .ok()
            .map(|s| s.trim().to_string());
        let text = std::fs::read_to_string(&plan).unwrap_or_default();
        for (i, line) in text.lines().enumerate() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let [loss, arch, seed] = f[..] else { continue };
            let Ok(seed) = seed.parse() else { continue };
            let id = match arch {
                "kbranch" => format!("{loss}-seed{seed}"),
                _ => format!("{loss}-{arch}-seed{seed}"),
            };
            let task = array.as_ref().map(|a| format!("{a}_{i}"));
            out.push((id, loss.to_string(), arch.to_string(), seed, task));
        }
    }
    out
}

/// The board of the run folders under `roots` (each a run folder or a folder of them).
pub fn board(roots: &[PathBuf]) -> Result<Board> {
    let slurm = Slurm::ask();
    let mut lines = Vec::new();
    for root in roots {
        let runs = crate::merge::discover(std::slice::from_ref(root)).unwrap_or_default();
        let logs = root.join("logs");
        let mut skipped = 0;
        for dir in &runs {
            match folder::read_run(dir, &mut skipped) {
                Ok(r) => lines.push(line_of(&r, &slurm, &logs)),
                Err(e) => tracing::warn!("{}: {e:#}", dir.display()),
            }
        }
        for (id, loss, arch, seed, task) in planned(root) {
            if lines.iter().any(|l: &Line| l.run_id == id) {
                continue;
            }
            // A task that ended without a run folder failed before it could make one (a
            // config its job cannot load, a store it cannot open): its log says why.
            let (state, reason) = match task.as_deref().and_then(|t| slurm.state(t)) {
                Some((s, _, _)) if s == "PENDING" => (State::Queued, None),
                Some((s, _, _)) if s != "RUNNING" && s != "COMPLETING" => (
                    State::Failed,
                    Some(format!("its task ended {s} before making the run folder")),
                ),
                _ => (State::Planned, None),
            };
            let log = task.as_deref().and_then(|t| log_of(t, &logs));
            lines.push(Line {
                run_id: id,
                job: loss.clone(),
                loss,
                arch,
                seed: Some(seed),
                state,
                epoch: 0,
                epochs: 0,
                val_f1_samples: None,
                val_map_macro: None,
                best_map_macro: None,
                images_per_s: None,
                epoch_s: None,
                eta_s: None,
                slurm_job: task,
                node: None,
                reason,
                log,
                device_hours: 0.0,
                device_hours_left: 0.0,
            });
        }
    }
    lines.sort_by(|a, b| {
        (a.state, crate::report::natural_key(&a.run_id))
            .cmp(&(b.state, crate::report::natural_key(&b.run_id)))
    });
    Ok(totals(lines))
}

fn totals(lines: Vec<Line>) -> Board {
    let mut states = BTreeMap::new();
    for l in &lines {
        *states.entry(l.state.name().to_string()).or_insert(0) += 1;
    }
    let running = lines.iter().filter(|l| l.state == State::Running).count();
    let known: Vec<f64> = lines
        .iter()
        .filter_map(|l| l.epoch_s.map(|s| s * l.epochs as f64))
        .collect();
    let mean_run = (!known.is_empty()).then(|| known.iter().sum::<f64>() / known.len() as f64);
    // Waiting runs take a whole run each; all the work shared by the slots running now.
    let waiting = lines
        .iter()
        .filter(|l| {
            matches!(
                l.state,
                State::Queued | State::Planned | State::Requeued | State::Held
            )
        })
        .filter(|l| l.eta_s.is_none())
        .count();
    let work: f64 = lines.iter().filter_map(|l| l.eta_s).sum::<f64>()
        + mean_run.map_or(0.0, |m| m * waiting as f64);
    let eta_s = (work > 0.0 || waiting == 0).then(|| work / running.max(1) as f64);
    Board {
        device_hours: lines.iter().map(|l| l.device_hours).sum(),
        device_hours_left: lines.iter().map(|l| l.device_hours_left).sum(),
        eta_s: eta_s.filter(|_| mean_run.is_some() || waiting == 0),
        states,
        lines,
    }
}

/// `3h 05m`, `12m 30s`, `45s`.
pub fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, sec) => format!("{m}m {sec:02}s"),
        (h, m, _) => format!("{h}h {m:02}m"),
    }
}

impl Board {
    /// The board as text for a terminal.
    pub fn text(&self) -> String {
        let mut out = format!(
            "{:<28} {:<9} {:>9} {:>7} {:>7} {:>8} {:>7} {:>8} {:>9}  {:<12} {}\n",
            "run",
            "state",
            "epoch",
            "val F1",
            "mAP",
            "best mAP",
            "img/s",
            "s/epoch",
            "left",
            "SLURM job",
            "node"
        );
        let opt = |v: Option<f64>, digits: usize| v.map_or("-".into(), |v| format!("{v:.digits$}"));
        for l in &self.lines {
            let epoch = match l.epochs {
                0 => "-".to_string(),
                n => format!("{}/{n}", l.epoch),
            };
            let _ = writeln!(
                out,
                "{:<28} {:<9} {:>9} {:>7} {:>7} {:>8} {:>7} {:>8} {:>9}  {:<12} {}",
                l.run_id,
                l.state.name(),
                epoch,
                opt(l.val_f1_samples, 3),
                opt(l.val_map_macro, 3),
                opt(l.best_map_macro, 3),
                opt(l.images_per_s, 0),
                opt(l.epoch_s, 0),
                l.eta_s.map_or("-".into(), duration),
                l.slurm_job.as_deref().unwrap_or("-"),
                l.node.as_deref().unwrap_or("-")
            );
        }
        let counts: Vec<String> = self
            .states
            .iter()
            .map(|(s, n)| format!("{n} {s}"))
            .collect();
        let _ = writeln!(
            out,
            "\n{} run(s): {}; device-hours (ranks x hours) spent {:.1}, left about {:.1}; the sweep \
             done in about {}",
            self.lines.len(),
            counts.join(", "),
            self.device_hours,
            self.device_hours_left,
            self.eta_s.map_or("? (no epoch timed yet)".into(), duration)
        );
        for l in self.lines.iter().filter(|l| l.reason.is_some()) {
            let log = l
                .log
                .as_ref()
                .map_or(String::new(), |p| format!(" (log: {p})"));
            let _ = writeln!(
                out,
                "{} {}: {}{log}",
                l.state.name(),
                l.run_id,
                l.reason.as_deref().unwrap_or_default()
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(duration(45.2), "45s");
        assert_eq!(duration(750.0), "12m 30s");
        assert_eq!(duration(3.0 * 3600.0 + 300.0), "3h 05m");
    }
}
