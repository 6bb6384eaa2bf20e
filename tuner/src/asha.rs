//! Successive halving's decisions, as Optuna's `SuccessiveHalvingPruner` makes them (with
//! `min_early_stopping_rate = 0` and no bootstrap count): rung r lies at epoch
//! `grace · reduction^r`; a trial reaching a rung is compared with every value reported at that
//! rung before it (its own included) and goes on if it is among the best ⌊n / reduction⌋ (the
//! best one while fewer than `reduction` have reported), else it is pruned there. Fed any
//! sequence of reports, [`Rungs`] decides what Optuna decides (tests/python/test_tuning.py
//! checks it against Optuna itself); the study feeds them in trial order ([`crate::plan`]), so
//! that its decisions do not depend on the number or the speed of its workers.

use serde::Deserialize;

/// Successive halving's settings (`[asha]` of the study file).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Halving {
    /// Epochs of the first rung.
    pub grace_epochs: u32,
    /// Each rung keeps about 1/reduction of the trials that reach it.
    pub reduction: u32,
    /// Epochs of a trial that is never pruned: the last rung.
    pub max_epochs: u32,
}

impl Halving {
    /// The epoch of rung `r`.
    pub fn rung_epoch(&self, r: u32) -> u32 {
        let e = u64::from(self.grace_epochs) * u64::from(self.reduction).pow(r);
        e.min(u64::from(self.max_epochs)) as u32
    }

    /// The last rung: the first that reaches `max_epochs`.
    pub fn last_rung(&self) -> u32 {
        (0..)
            .find(|&r| self.rung_epoch(r) >= self.max_epochs)
            .expect("rungs grow")
    }

    /// Settings that make no halving are errors naming the key.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.grace_epochs == 0 {
            return Err(("asha.grace_epochs", "must be at least 1".into()));
        }
        if self.reduction < 2 {
            return Err(("asha.reduction", "must be at least 2".into()));
        }
        if self.max_epochs < self.grace_epochs {
            return Err((
                "asha.max_epochs",
                format!("must be at least asha.grace_epochs = {}", self.grace_epochs),
            ));
        }
        Ok(())
    }
}

/// Whether a value reported at a rung goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Promote,
    Prune,
}

/// The values reported at each rung so far, higher is better.
#[derive(Debug, Clone, Default)]
pub struct Rungs {
    reduction: usize,
    values: Vec<Vec<f64>>,
}

impl Rungs {
    pub fn new(reduction: u32) -> Rungs {
        Rungs {
            reduction: reduction as usize,
            values: Vec::new(),
        }
    }

    /// Records `value` at rung `rung` and decides: the trial goes on if `value` is at least the
    /// ⌊n/reduction⌋-th best of the n values of the rung (the best while n < reduction). A NaN
    /// is pruned.
    pub fn report(&mut self, rung: u32, value: f64) -> Decision {
        let r = rung as usize;
        if self.values.len() <= r {
            self.values.resize(r + 1, Vec::new());
        }
        if value.is_nan() {
            return Decision::Prune;
        }
        let mut competing = self.values[r].clone();
        competing.push(value);
        self.values[r].push(value);
        let keep = (competing.len() / self.reduction).max(1);
        competing.sort_by(|a, b| b.total_cmp(a));
        if value >= competing[keep - 1] {
            Decision::Promote
        } else {
            Decision::Prune
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rungs_grow_by_the_reduction_up_to_the_largest() {
        let h = Halving {
            grace_epochs: 1,
            reduction: 3,
            max_epochs: 20,
        };
        assert_eq!(
            (0..5).map(|r| h.rung_epoch(r)).collect::<Vec<_>>(),
            [1, 3, 9, 20, 20]
        );
        assert_eq!(h.last_rung(), 3);
        assert!(Halving { reduction: 1, ..h }.check().is_err());
    }

    /// Optuna's SuccessiveHalvingPruner on interleaved report sequences (ties, NaNs):
    /// tests/data/optuna_asha.json, written by tests/python/gen_optuna_asha.py from Optuna
    /// itself (test_tuning.py checks it still says so). A report at step s is decided at every
    /// rung whose epoch s has reached, as Optuna does.
    #[test]
    fn decisions_are_optunas() {
        let data: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/data/optuna_asha.json")).unwrap();
        let mut decided = 0;
        for case in data["cases"].as_array().unwrap() {
            let (grace, reduction) = (
                case["grace"].as_u64().unwrap(),
                case["reduction"].as_u64().unwrap(),
            );
            let mut rungs = Rungs::new(reduction as u32);
            let mut current: std::collections::BTreeMap<u64, u32> = Default::default();
            for r in case["reports"].as_array().unwrap() {
                let (trial, epoch) = (r["trial"].as_u64().unwrap(), r["epoch"].as_u64().unwrap());
                let value = r["value"].as_f64().unwrap_or(f64::NAN);
                let rung = current.entry(trial).or_insert(0);
                let mut pruned = false;
                while epoch >= grace * reduction.pow(*rung) {
                    if rungs.report(*rung, value) == Decision::Prune {
                        pruned = true;
                        break;
                    }
                    *rung += 1;
                }
                assert_eq!(pruned, r["pruned"].as_bool().unwrap(), "{case}\nat {r}");
                decided += 1;
            }
        }
        assert!(decided > 600);
    }

    /// Three values at a rung of reduction 3: the first goes on (the best so far), the second
    /// only if better, and the third only if it is the best of the three.
    #[test]
    fn the_best_third_goes_on() {
        let mut r = Rungs::new(3);
        assert_eq!(r.report(0, 0.5), Decision::Promote);
        assert_eq!(r.report(0, 0.4), Decision::Prune);
        assert_eq!(r.report(0, 0.6), Decision::Promote);
        assert_eq!(r.report(0, 0.55), Decision::Prune);
        assert_eq!(r.report(0, f64::NAN), Decision::Prune);
        assert_eq!(r.report(0, 0.7), Decision::Promote);
        // Six values (the NaN is not one): the best two go on.
        assert_eq!(r.report(0, 0.58), Decision::Prune);
        assert_eq!(r.report(0, 0.65), Decision::Promote);
    }
}
