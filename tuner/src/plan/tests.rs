use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use super::*;
use crate::asha::Halving;
use crate::sampler::Sampler;
use crate::space::{Param, Scale};
use crate::study::{Budget, FinalSection, StudySection};

fn study(window: u32, trials: u32, epochs: Option<u32>) -> Study {
    let range = |low, high, scale| Param::Range {
        low,
        high,
        scale,
        integer: false,
    };
    let space = |extra: Option<(&str, Param)>| {
        let mut s = BTreeMap::from([("train.lr".to_string(), range(1e-4, 1e-1, Scale::Log))]);
        if let Some((k, p)) = extra {
            s.insert(k.to_string(), p);
        }
        s
    };
    Study {
        path: PathBuf::from("tune.toml"),
        text: String::new(),
        section: StudySection {
            out: PathBuf::from("out"),
            data: PathBuf::from("store.zarr"),
            jobs: None,
            seed: 3,
            sampler: Sampler::Tpe,
            startup_trials: 3,
            window,
            metric: "map_macro".into(),
        },
        budget: Budget { trials, epochs },
        asha: Halving {
            grace_epochs: 1,
            reduction: 3,
            max_epochs: 9,
        },
        recipe: BTreeMap::new(),
        final_runs: FinalSection { seeds: 2 },
        losses: vec![
            ("ce".into(), space(None)),
            (
                "focal".into(),
                space(Some(("loss.gamma", range(0.0, 5.0, Scale::Linear)))),
            ),
        ],
        jobs: PathBuf::from("jobs"),
    }
}

/// A trial's validation value after `epoch` epochs: better near lr = 1e-2 (and γ = 2), and
/// growing with the epochs.
fn value(t: &Trial, epoch: u32) -> f64 {
    let lr = t.params["train.lr"].as_float().unwrap().log10();
    let gamma = t
        .params
        .get("loss.gamma")
        .and_then(toml::Value::as_float)
        .unwrap_or(2.0);
    0.8 - 0.05 * (lr + 2.0).powi(2) - 0.02 * (gamma - 2.0).powi(2) + 0.01 * f64::from(epoch)
}

struct Sim {
    busy: BTreeSet<String>,
    finals: BTreeSet<(String, bool, u64)>,
}

impl World for Sim {
    fn trained(&self, t: &Trial) -> bool {
        t.worker.as_ref().is_some_and(|w| self.busy.contains(w))
    }
    fn final_taken(&self, loss: &str, tuned: bool, seed: u64) -> bool {
        self.finals.contains(&(loss.to_string(), tuned, seed))
    }
}

/// Runs a whole study with `workers` workers that finish their work in a random order and
/// are killed now and then (their work taken over), as `seed` draws; the trials at the end.
fn simulate(study: &Study, workers: usize, seed: u64, kills: bool) -> Trials {
    let mut rng = seed;
    let mut next = || {
        rng = lossbench_core::splitmix::mix(rng);
        rng
    };
    let mut trials = Trials::new();
    let mut sim = Sim {
        busy: BTreeSet::new(),
        finals: BTreeSet::new(),
    };
    let mut running: Vec<(String, Work)> = Vec::new();
    let mut generation = 0;
    for _ in 0..100_000 {
        // Idle workers ask for work.
        for w in 0..workers {
            let name = format!("w{w}-{generation}");
            if running
                .iter()
                .any(|(n, _)| n.starts_with(&format!("w{w}-")))
            {
                continue;
            }
            let mut changed = Vec::new();
            match next_work(study, &mut trials, &sim, &name, &mut changed) {
                Work::Wait => {}
                Work::Done if running.is_empty() => return trials,
                Work::Done => {}
                Work::Final { loss, tuned, seed } => {
                    sim.finals.insert((loss, tuned, seed));
                }
                work => {
                    sim.busy.insert(name.clone());
                    running.push((name, work));
                }
            }
        }
        if running.is_empty() {
            continue;
        }
        // One running piece of work ends (or its worker is killed).
        let i = (next() % running.len() as u64) as usize;
        let (name, work) = running.remove(i);
        sim.busy.remove(&name);
        generation += 1;
        if kills && next() % 5 == 0 {
            continue; // killed: the trial stays running under a worker that is gone
        }
        if let Work::Trial { loss, index, until } = work {
            let t = &mut trials.get_mut(&loss).unwrap()[index as usize];
            let v = value(t, until);
            t.reports.push(lossbench_core::trial::Report {
                rung: t.rung,
                epoch: until,
                value: v,
            });
            t.status = TrialStatus::Paused;
        }
    }
    panic!("the study did not end");
}

fn outcome(trials: &Trials) -> Vec<String> {
    trials
        .values()
        .flatten()
        .map(|t| {
            let params: Vec<String> = t.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!(
                "{}-{} {:?} {:?} {:?} {}",
                t.loss,
                t.index,
                t.status,
                t.pruned_at,
                t.reports,
                params.join(" ")
            )
        })
        .collect()
}

/// One worker, or eight finishing in random orders and killed now and then: the same trials,
/// parameters, promotions and prunes, hence the same best trial.
#[test]
fn the_outcome_does_not_depend_on_the_workers() {
    let s = study(4, 12, None);
    let alone = simulate(&s, 1, 0, false);
    assert_eq!(alone.values().map(Vec::len).sum::<usize>(), 24);
    for seed in 0..6 {
        let crowd = simulate(&s, 8, seed, true);
        assert_eq!(outcome(&crowd), outcome(&alone), "seed {seed}");
    }
    // Successive halving did prune, and completed some trials.
    let statuses: Vec<TrialStatus> = alone.values().flatten().map(|t| t.status).collect();
    assert!(statuses.contains(&TrialStatus::Pruned) && statuses.contains(&TrialStatus::Complete));
    assert!(best(&alone["focal"]).is_some());
}

/// The epochs budget is never exceeded, and is what limits the trials.
#[test]
fn the_epochs_budget_is_kept_exactly() {
    let s = study(2, 100, Some(40));
    for seed in 0..4 {
        let trials = simulate(&s, 4, seed, seed % 2 == 1);
        for ts in trials.values() {
            let spent: u32 = ts
                .iter()
                .map(|t| t.reports.last().map_or(0, |r| r.epoch))
                .sum();
            assert!(spent <= 40, "{spent} epochs");
            assert!(ts.len() < 100);
        }
        assert_eq!(outcome(&trials), outcome(&simulate(&s, 1, 0, false)));
    }
}
