//! Multi-label classification metrics from accumulated counts: precision, recall and F1 with
//! micro, macro, weighted and sample averaging, overall and per class, plus Hamming loss and
//! subset accuracy. Conventions of scikit-learn's `precision_recall_fscore_support` with
//! `zero_division=0`.
//!
//! Everything is a sum of integers, so results are exact whatever the batch order and can be
//! summed across ranks: per-class TP/FP/FN, and for sample averaging a histogram of the
//! per-patch (TP, FP, FN) triples, from which every per-patch score is recomputed.

use serde::{Deserialize, Serialize};

use crate::labels::NUM_CLASSES;

const SIDE: usize = NUM_CLASSES + 1;

/// Counts accumulated over a split (or a rank's part of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counts {
    pub true_pos: [u64; NUM_CLASSES],
    pub false_pos: [u64; NUM_CLASSES],
    pub false_neg: [u64; NUM_CLASSES],
    /// Patches with each per-patch (tp, fp, fn), indexed `(tp * SIDE + fp) * SIDE + fn`.
    pub per_patch: Vec<u64>,
    pub patches: u64,
}

impl Default for Counts {
    fn default() -> Self {
        Counts {
            true_pos: [0; NUM_CLASSES],
            false_pos: [0; NUM_CLASSES],
            false_neg: [0; NUM_CLASSES],
            per_patch: vec![0; SIDE * SIDE * SIDE],
            patches: 0,
        }
    }
}

/// Precision, recall and F1 under one averaging.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Prf {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Patches that truly carry the class.
    pub support: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub micro: Prf,
    pub macro_avg: Prf,
    pub weighted: Prf,
    pub samples: Prf,
    pub per_class: Vec<ClassMetrics>,
    pub hamming_loss: f64,
    pub subset_accuracy: f64,
    pub patches: u64,
}

fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

fn scores(tp: u64, fp: u64, fn_: u64) -> Prf {
    Prf {
        precision: ratio(tp, tp + fp),
        recall: ratio(tp, tp + fn_),
        f1: ratio(2 * tp, 2 * tp + fp + fn_),
    }
}

impl Counts {
    /// Adds a batch: `truth` and `pred` are row-major `[B, 19]` 0/1 values.
    pub fn add(&mut self, truth: &[u8], pred: &[u8]) {
        assert_eq!(truth.len(), pred.len());
        assert_eq!(truth.len() % NUM_CLASSES, 0);
        for (t_row, p_row) in truth.chunks(NUM_CLASSES).zip(pred.chunks(NUM_CLASSES)) {
            self.add_patch(t_row, p_row, 1);
        }
    }

    /// Adds one patch's 19 true and predicted labels `times` times (a bootstrap resample
    /// draws a patch several times).
    pub fn add_patch(&mut self, truth: &[u8], pred: &[u8], times: u64) {
        let (mut tp, mut fp, mut fn_) = (0, 0, 0);
        for c in 0..NUM_CLASSES {
            match (truth[c] != 0, pred[c] != 0) {
                (true, true) => {
                    tp += 1;
                    self.true_pos[c] += times;
                }
                (false, true) => {
                    fp += 1;
                    self.false_pos[c] += times;
                }
                (true, false) => {
                    fn_ += 1;
                    self.false_neg[c] += times;
                }
                (false, false) => {}
            }
        }
        self.per_patch[(tp * SIDE + fp) * SIDE + fn_] += times;
        self.patches += times;
    }

    pub fn merge(&mut self, other: &Counts) {
        for c in 0..NUM_CLASSES {
            self.true_pos[c] += other.true_pos[c];
            self.false_pos[c] += other.false_pos[c];
            self.false_neg[c] += other.false_neg[c];
        }
        for (a, b) in self.per_patch.iter_mut().zip(&other.per_patch) {
            *a += b;
        }
        self.patches += other.patches;
    }

    /// All counts as one flat vector (for an all-reduce), and back.
    pub fn to_flat(&self) -> Vec<u64> {
        let mut v = Vec::with_capacity(3 * NUM_CLASSES + self.per_patch.len() + 1);
        v.extend_from_slice(&self.true_pos);
        v.extend_from_slice(&self.false_pos);
        v.extend_from_slice(&self.false_neg);
        v.extend_from_slice(&self.per_patch);
        v.push(self.patches);
        v
    }

    pub fn from_flat(v: &[u64]) -> Counts {
        let n = NUM_CLASSES;
        let mut c = Counts::default();
        c.true_pos.copy_from_slice(&v[0..n]);
        c.false_pos.copy_from_slice(&v[n..2 * n]);
        c.false_neg.copy_from_slice(&v[2 * n..3 * n]);
        c.per_patch
            .copy_from_slice(&v[3 * n..3 * n + SIDE * SIDE * SIDE]);
        c.patches = v[3 * n + SIDE * SIDE * SIDE];
        c
    }

    pub fn metrics(&self) -> Metrics {
        let per_class: Vec<ClassMetrics> = (0..NUM_CLASSES)
            .map(|c| {
                let s = scores(self.true_pos[c], self.false_pos[c], self.false_neg[c]);
                ClassMetrics {
                    precision: s.precision,
                    recall: s.recall,
                    f1: s.f1,
                    support: self.true_pos[c] + self.false_neg[c],
                }
            })
            .collect();
        let (tp, fp, fn_): (u64, u64, u64) = (
            self.true_pos.iter().sum(),
            self.false_pos.iter().sum(),
            self.false_neg.iter().sum(),
        );
        let micro = scores(tp, fp, fn_);
        let mean = |f: &dyn Fn(&ClassMetrics) -> f64| {
            per_class.iter().map(f).sum::<f64>() / NUM_CLASSES as f64
        };
        let macro_avg = Prf {
            precision: mean(&|m| m.precision),
            recall: mean(&|m| m.recall),
            f1: mean(&|m| m.f1),
        };
        let support: u64 = per_class.iter().map(|m| m.support).sum();
        let weigh = |f: &dyn Fn(&ClassMetrics) -> f64| {
            if support == 0 {
                0.0
            } else {
                per_class
                    .iter()
                    .map(|m| f(m) * m.support as f64)
                    .sum::<f64>()
                    / support as f64
            }
        };
        let weighted = Prf {
            precision: weigh(&|m| m.precision),
            recall: weigh(&|m| m.recall),
            f1: weigh(&|m| m.f1),
        };
        let mut samples = Prf::default();
        let mut exact = 0u64;
        for tp in 0..SIDE {
            for fp in 0..SIDE {
                for fn_ in 0..SIDE {
                    let n = self.per_patch[(tp * SIDE + fp) * SIDE + fn_];
                    if n == 0 {
                        continue;
                    }
                    let s = scores(tp as u64, fp as u64, fn_ as u64);
                    samples.precision += s.precision * n as f64;
                    samples.recall += s.recall * n as f64;
                    samples.f1 += s.f1 * n as f64;
                    if fp == 0 && fn_ == 0 {
                        exact += n;
                    }
                }
            }
        }
        let patches = self.patches.max(1) as f64;
        samples.precision /= patches;
        samples.recall /= patches;
        samples.f1 /= patches;
        Metrics {
            micro,
            macro_avg,
            weighted,
            samples,
            per_class,
            hamming_loss: ratio(fp + fn_, self.patches * NUM_CLASSES as u64),
            subset_accuracy: ratio(exact, self.patches),
            patches: self.patches,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cases and the values scikit-learn computes for them, generated by
    /// tests/python/gen_sklearn_metrics.py (tests/python/test_sklearn_metrics.py checks the file
    /// is still what scikit-learn says).
    const SKLEARN: &str = include_str!("../../tests/data/sklearn_metrics.json");

    #[test]
    fn agree_with_scikit_learn() {
        let cases: serde_json::Value = serde_json::from_str(SKLEARN).unwrap();
        for case in cases.as_array().unwrap() {
            let flat = |k: &str| -> Vec<u8> {
                case[k]
                    .as_array()
                    .unwrap()
                    .iter()
                    .flat_map(|r| {
                        r.as_array()
                            .unwrap()
                            .iter()
                            .map(|v| v.as_u64().unwrap() as u8)
                    })
                    .collect()
            };
            let (truth, pred) = (flat("truth"), flat("pred"));
            // Batches of 3 in reverse order: the result must not depend on batching or order.
            let mut counts = Counts::default();
            let rows: Vec<usize> = (0..truth.len() / NUM_CLASSES).collect();
            for chunk in rows.chunks(3).rev() {
                let r = chunk[0] * NUM_CLASSES..(chunk[chunk.len() - 1] + 1) * NUM_CLASSES;
                counts.add(&truth[r.clone()], &pred[r]);
            }
            let m = counts.metrics();
            let close = |a: f64, b: &serde_json::Value, what: &str| {
                assert!(
                    (a - b.as_f64().unwrap()).abs() < 1e-12,
                    "{}: {what}: {a} vs {b}",
                    case["name"]
                );
            };
            for (avg, prf) in [
                ("micro", m.micro),
                ("macro", m.macro_avg),
                ("weighted", m.weighted),
                ("samples", m.samples),
            ] {
                close(prf.precision, &case[avg][0], &format!("{avg} precision"));
                close(prf.recall, &case[avg][1], &format!("{avg} recall"));
                close(prf.f1, &case[avg][2], &format!("{avg} f1"));
            }
            for c in 0..NUM_CLASSES {
                close(
                    m.per_class[c].precision,
                    &case["per_class"][0][c],
                    "class precision",
                );
                close(
                    m.per_class[c].recall,
                    &case["per_class"][1][c],
                    "class recall",
                );
                close(m.per_class[c].f1, &case["per_class"][2][c], "class f1");
                assert_eq!(
                    m.per_class[c].support,
                    case["per_class"][3][c].as_u64().unwrap()
                );
            }
            close(m.hamming_loss, &case["hamming_loss"], "hamming loss");
            close(
                m.subset_accuracy,
                &case["subset_accuracy"],
                "subset accuracy",
            );
        }
    }

    #[test]
    fn flat_round_trip_and_merge() {
        let mut a = Counts::default();
        a.add(&[1; 19], &[0; 19]);
        let mut b = Counts::default();
        b.add(&[0; 19], &[1; 19]);
        assert_eq!(Counts::from_flat(&a.to_flat()), a);
        a.merge(&b);
        assert_eq!(a.patches, 2);
        assert_eq!(a.metrics().hamming_loss, 1.0);
    }
}
