//! What happens next in a study, decided from the trials' states alone, the same whoever asks
//! and whenever (docs/tuning.md, "Same outcome, any workers"):
//!
//! - **rung decisions in trial order**: trial k paused at rung r is promoted or pruned once every
//!   trial before it has reported at rung r or ended below it; its competitors are their values
//!   at rung r (successive halving as Optuna's pruner decides it fed the trials one after the
//!   other, [`crate::asha`]). The last rung completes a trial.
//! - **new trials in order**: trial k of a loss starts once trials 0..=k−window have ended, and
//!   its parameters are drawn from them; the budget (trials, and epochs in all) is checked
//!   against the ended trials, counting a trial not yet ended at its largest possible epochs.
//! - **final runs** once every loss's search has ended: its best trial's parameters and its
//!   defaults, with each seed.

use std::collections::BTreeMap;

use lossbench_core::trial::{Trial, TrialStatus};

use crate::asha::{Decision, Rungs};
use crate::sampler::{self, Observation};
use crate::study::Study;

/// The next piece of work.
#[derive(Debug, Clone, PartialEq)]
pub enum Work {
    /// Train a trial up to epoch `until` (its next rung), from its checkpoint if it has one.
    Trial {
        loss: String,
        index: u32,
        until: u32,
    },
    /// A final run: the loss's best configuration (`tuned`) or its defaults, with `seed`.
    Final {
        loss: String,
        tuned: bool,
        seed: u64,
    },
    /// Nothing to do now: others' work must end first.
    Wait,
    /// Nothing is left to do: every trial has ended and every final run is done or taken.
    Done,
}

/// Every loss's trials, by index.
pub type Trials = BTreeMap<String, Vec<Trial>>;

/// The highest rung a trial reported at, or none.
fn top_rung(t: &Trial) -> Option<u32> {
    t.reports.last().map(|r| r.rung)
}

fn value_at(t: &Trial, rung: u32) -> Option<f64> {
    t.reports.iter().find(|r| r.rung == rung).map(|r| r.value)
}

/// Decides the rung outcomes of one loss's paused trials that can be decided now; returns the
/// indices of the trials it changed.
pub fn settle(study: &Study, trials: &mut [Trial]) -> Vec<u32> {
    let last = study.asha.last_rung();
    let mut changed = Vec::new();
    for k in 0..trials.len() {
        let t = &trials[k];
        if t.status != TrialStatus::Paused {
            continue;
        }
        let Some(r) = top_rung(t) else { continue };
        if r >= last {
            trials[k].status = TrialStatus::Complete;
            changed.push(k as u32);
            continue;
        }
        let before = &trials[..k];
        let settled = before.iter().all(|j| {
            value_at(j, r).is_some()
                || (j.status.is_resolved() && top_rung(j).is_none_or(|x| x < r))
        });
        if !settled {
            continue;
        }
        let mut rungs = Rungs::new(study.asha.reduction);
        for v in before.iter().filter_map(|j| value_at(j, r)) {
            rungs.report(r, v);
        }
        let value = value_at(&trials[k], r).expect("a report at its top rung");
        let t = &mut trials[k];
        match rungs.report(r, value) {
            Decision::Promote => {
                t.status = TrialStatus::Running;
                t.rung = r + 1;
                t.worker = None;
            }
            Decision::Prune => {
                t.status = TrialStatus::Pruned;
                t.pruned_at = Some(r);
            }
        }
        changed.push(k as u32);
    }
    changed
}

/// The number of the next trial of a loss, if it may start now.
pub fn next_trial(study: &Study, trials: &[Trial]) -> Option<u32> {
    let k = trials.len() as u32;
    if k >= study.budget.trials {
        return None;
    }
    let window = study.section.window;
    if k >= window
        && !trials[..=(k - window) as usize]
            .iter()
            .all(|t| t.status.is_resolved())
    {
        return None;
    }
    if let Some(budget) = study.budget.epochs {
        let max = study.asha.max_epochs;
        let committed: u64 = trials
            .iter()
            .map(|t| match t.status.is_resolved() {
                true => u64::from(t.reports.last().map_or(0, |r| r.epoch)),
                false => u64::from(max),
            })
            .sum();
        if committed + u64::from(max) > u64::from(budget) {
            return None;
        }
    }
    Some(k)
}

/// Whether a loss's search has ended: no trial may start (now or later) and every trial ended.
pub fn search_ended(study: &Study, trials: &[Trial]) -> bool {
    trials.iter().all(|t| t.status.is_resolved()) && next_trial(study, trials).is_none()
}

/// The parameters of trial `index` of `loss`, learnt from the trials 0..=index−window.
pub fn draw(
    study: &Study,
    loss: &str,
    trials: &[Trial],
    index: u32,
) -> BTreeMap<String, toml::Value> {
    let space = study.space(loss);
    let seen_up_to = (index + 1).saturating_sub(study.section.window) as usize;
    let seen: Vec<Observation> = trials[..seen_up_to.min(trials.len())]
        .iter()
        .filter_map(|t| {
            let last = t.reports.last()?;
            let points = t
                .params
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), space.get(k)?.point(v)?)))
                .collect();
            Some(Observation {
                points,
                score: (last.rung, last.value),
            })
        })
        .collect();
    let s = &study.section;
    sampler::draw(
        s.sampler,
        space,
        (s.seed, loss, index),
        s.startup_trials,
        &seen,
    )
}

/// What the plan needs to know beyond the trials' states.
pub trait World {
    /// Whether a live worker trains this (running) trial.
    fn trained(&self, t: &Trial) -> bool;
    /// Whether a final run is done (tested, or failed), or a live trainer trains it.
    fn final_taken(&self, loss: &str, tuned: bool, seed: u64) -> bool;
}

/// The next work for a worker (`me`), after settling what can be settled; trials it changes or
/// creates are marked in `changed` (loss, index), for the caller to write.
pub fn next_work(
    study: &Study,
    trials: &mut Trials,
    world: &dyn World,
    me: &str,
    changed: &mut Vec<(String, u32)>,
) -> Work {
    for (loss, ts) in trials.iter_mut() {
        changed.extend(settle(study, ts).into_iter().map(|k| (loss.clone(), k)));
    }
    // Trials to go on with: promoted ones, and those whose worker is gone.
    for (loss, ts) in trials.iter_mut() {
        if let Some(t) = ts
            .iter_mut()
            .find(|t| t.status == TrialStatus::Running && !world.trained(t))
        {
            t.worker = Some(me.to_string());
            changed.push((loss.clone(), t.index));
            let until = study.asha.rung_epoch(t.rung);
            return Work::Trial {
                loss: loss.clone(),
                index: t.index,
                until,
            };
        }
    }
    // A new trial, of the loss with the fewest so far (the study file's order on ties).
    let order: Vec<&String> = study.losses.iter().map(|(l, _)| l).collect();
    let mut candidates: Vec<(usize, usize, &String)> = order
        .iter()
        .enumerate()
        .map(|(i, l)| (trials.get(*l).map_or(0, Vec::len), i, *l))
        .collect();
    candidates.sort();
    for (_, _, loss) in candidates {
        let ts = trials.entry(loss.clone()).or_default();
        let Some(index) = next_trial(study, ts) else {
            continue;
        };
        let params = draw(study, loss, ts, index);
        ts.push(Trial {
            loss: loss.clone(),
            index,
            params,
            status: TrialStatus::Running,
            rung: 0,
            reports: Vec::new(),
            pruned_at: None,
            worker: Some(me.to_string()),
            host: None,
            slurm_job: None,
            seconds: 0.0,
            reason: None,
        });
        changed.push((loss.clone(), index));
        return Work::Trial {
            loss: loss.clone(),
            index,
            until: study.asha.rung_epoch(0),
        };
    }
    let ended = order
        .iter()
        .all(|l| trials.get(*l).is_some_and(|ts| search_ended(study, ts)));
    if !ended {
        return Work::Wait;
    }
    next_final(study, trials, world)
}

/// The first final run nobody has done or is doing, else [`Work::Done`].
fn next_final(study: &Study, trials: &Trials, world: &dyn World) -> Work {
    for (loss, _) in &study.losses {
        let has_best = trials.get(loss).and_then(|ts| best(ts)).is_some();
        for seed in 0..study.final_runs.seeds {
            for tuned in [true, false].into_iter().filter(|&t| !t || has_best) {
                if !world.final_taken(loss, tuned, seed) {
                    return Work::Final {
                        loss: loss.to_string(),
                        tuned,
                        seed,
                    };
                }
            }
        }
    }
    Work::Done
}

/// A loss's best trial: the highest rung reached, then the highest value there.
pub fn best(trials: &[Trial]) -> Option<&Trial> {
    trials
        .iter()
        .filter(|t| t.status != TrialStatus::Failed)
        .filter_map(|t| t.reports.last().map(|r| (t, r)))
        .max_by(|(_, a), (_, b)| a.rung.cmp(&b.rung).then(a.value.total_cmp(&b.value)))
        .map(|(t, _)| t)
}

#[cfg(test)]
mod tests;
